//! `make bench`: the attestation figures.
//!
//! * verify a real AWS Nitro document (COSE ES384 signature + 4-certificate chain + checks);
//!   goal ≤ 2 ms on the 2-core reference machine;
//! * produce a document with the local attester, the token's P-384 signature included.
//!
//! A plain timing harness (median of per-iteration times after a warm-up), not a test. The local
//! attester part needs `SOFTHSM2_CONF` pointing at a private SoftHSM config (`make bench` makes one).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cosigner_attestation::local::{self, Lifetimes, LocalAttester};
use cosigner_attestation::{AttestRequest, Expectations, PinnedRoot, parse_unverified, verify};
use cosigner_kms::{Pin, Token};

/// The timing harness `make bench` shares with the workspace's other benches.
#[path = "../../tests/src/bench.rs"]
#[allow(dead_code)]
mod bench;
use bench::measure;

fn bench_verify_real() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/nitro");
    let Ok(bytes) = std::fs::read(dir.join("real-2022-10-13.cose")) else {
        println!("verify real AWS document: skipped (../shared/fixtures absent)");
        return;
    };
    let root =
        PinnedRoot::from_pem(&std::fs::read(dir.join("aws-nitro-root-g1.pem")).unwrap()).unwrap();
    let (_, doc) = parse_unverified(&bytes).unwrap();
    let at = UNIX_EPOCH + Duration::from_millis(doc.timestamp + 1000);
    let expect = Expectations {
        pcrs: [(0, doc.pcrs[&0].clone())].into(),
        nonce: doc.nonce.clone(),
        ..Default::default()
    };
    measure(
        "verify a real AWS Nitro document (goal <= 2 ms)",
        500,
        || {
            black_box(verify(black_box(&bytes), &root, at, &expect).unwrap());
        },
    );
    measure(
        "  of which: parse only (CBOR + AWS field limits)",
        2000,
        || {
            black_box(parse_unverified(black_box(&bytes)).unwrap());
        },
    );
}

fn bench_local_attester() {
    if std::env::var_os("SOFTHSM2_CONF").is_none() {
        println!(
            "local attester: skipped (set SOFTHSM2_CONF to a private SoftHSM config; make bench does)"
        );
        return;
    }
    let module = std::env::var_os("COSIGNER_PKCS11_MODULE").map_or_else(
        || PathBuf::from(cosigner_kms::DEFAULT_SOFTHSM_MODULE),
        PathBuf::from,
    );
    let dir = std::env::temp_dir().join(format!("cosigner-bench-{}", std::process::id()));
    let label = format!("bench-{}", std::process::id());
    let pin = Pin::new("bench-user-pin");
    let token = Token::init(&module, &label, &Pin::new("bench-so-pin"), &pin).unwrap();
    local::provision(
        &dir,
        &module,
        &token,
        SystemTime::now(),
        Lifetimes::default(),
    )
    .unwrap();
    let attester = LocalAttester::load_measured(&dir, &pin, &[7; 48]).unwrap();
    let root = PinnedRoot::from_der(attester.root_der()).unwrap();
    let request = AttestRequest {
        nonce: Some(vec![1; 32]),
        user_data: Some(vec![2; 32]),
        public_key: None,
    };
    measure(
        "local attester: produce a document (SoftHSM P-384 sign)",
        300,
        || {
            black_box(attester.attest_at(&request, SystemTime::now()).unwrap());
        },
    );
    let doc = attester.attest_at(&request, SystemTime::now()).unwrap();
    measure("verify a local attester document", 500, || {
        black_box(verify(&doc, &root, SystemTime::now(), &Expectations::default()).unwrap());
    });
    let _ = std::fs::remove_dir_all(&dir);
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this once as a smoke test.
    bench_verify_real();
    bench_local_attester();
}
