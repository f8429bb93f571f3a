//! Untrusted bytes never panic the decoder or the verifier: random inputs, and random mutations
//! of real and synthetic documents, all end in `Ok` or a precise error. (`make fuzz` runs the
//! coverage-guided version of this; this test keeps a deterministic slice of it in CI.) The path
//! for QEMU's unsigned documents reads the same inputs, a QEMU document among the seeds.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

#[path = "support/qemu_nsm.rs"]
mod qemu_nsm;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, UNIX_EPOCH};

use cosigner_attestation::cose::{CoseSign1, es384_protected_header};
use cosigner_attestation::{
    AttestationDoc, Expectations, PinnedRoot, parse_emulated_unsigned, parse_unverified, verify,
    verify_emulated_unsigned,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn seeds() -> (Vec<Vec<u8>>, Option<PinnedRoot>) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/nitro");
    let mut docs = Vec::new();
    for name in ["real-2022-10-13.cose", "real-debug-2022-10-12.cose"] {
        if let Ok(bytes) = std::fs::read(dir.join(name)) {
            docs.push(bytes);
        }
    }
    if docs.is_empty() {
        eprintln!("../shared/fixtures absent: mutating synthetic documents only");
    }
    let synthetic = AttestationDoc {
        module_id: "m".into(),
        digest: "SHA384".into(),
        timestamp: 1,
        pcrs: BTreeMap::from([(0, vec![1; 48])]),
        certificate: vec![0x30; 10],
        cabundle: vec![vec![0x30; 10], vec![0x30; 3]],
        public_key: Some(vec![4; 65]),
        user_data: Some(vec![]),
        nonce: None,
    };
    docs.push(
        CoseSign1 {
            protected: es384_protected_header().unwrap(),
            payload: synthetic.encode().unwrap(),
            signature: vec![0; 96],
        }
        .encode()
        .unwrap(),
    );
    docs.push(
        qemu_nsm::QemuAttestation {
            nonce: Some(vec![1; 32]),
            ..qemu_nsm::QemuAttestation::booted(1_665_651_483_000, &[1; 48], &[2; 48], &[3; 48])
        }
        .document(),
    );
    let root = std::fs::read(dir.join("aws-nitro-root-g1.pem"))
        .ok()
        .map(|pem| PinnedRoot::from_pem(&pem).unwrap());
    (docs, root)
}

fn mutate(rng: &mut StdRng, mut bytes: Vec<u8>) -> Vec<u8> {
    for _ in 0..rng.gen_range(1..=4) {
        if bytes.is_empty() {
            bytes.push(rng.r#gen());
            continue;
        }
        let at = rng.gen_range(0..bytes.len());
        match rng.gen_range(0..6) {
            0 => bytes[at] ^= 1 << rng.gen_range(0..8),
            1 => bytes[at] = rng.r#gen(),
            2 => bytes.truncate(at),
            3 => bytes.insert(at, rng.r#gen()),
            4 => {
                bytes.remove(at);
            }
            _ => {
                // CBOR lengths live in the first bytes of each item: hit them with extremes.
                bytes[at] = *[0x00, 0x1b, 0x3b, 0x5b, 0x7b, 0x9b, 0xbb, 0xff]
                    .get(rng.gen_range(0..8))
                    .unwrap();
            }
        }
    }
    bytes
}

#[test]
fn random_and_mutated_documents_never_panic() {
    let (docs, root) = seeds();
    let mut rng = StdRng::seed_from_u64(0x00c0_5167);
    let at = UNIX_EPOCH + Duration::from_secs(1_665_651_483);
    let signed_parts = |bytes: &[u8]| {
        CoseSign1::decode(bytes)
            .ok()
            .map(|c| (c.protected, c.payload, c.signature))
    };
    let originals: Vec<_> = docs.iter().map(|d| signed_parts(d)).collect();
    let mut accepted_mutants = 0;
    for i in 0..3000 {
        let input = if i % 10 == 0 {
            let len = rng.gen_range(0..2048);
            (0..len).map(|_| rng.r#gen()).collect()
        } else {
            let base = docs[i % docs.len()].clone();
            mutate(&mut rng, base)
        };
        let _ = parse_unverified(&input);
        let _ = parse_emulated_unsigned(&input);
        let _ = verify_emulated_unsigned(&input, at, &Expectations::default());
        if let Some(root) = &root
            && verify(&input, root, at, &Expectations::default()).is_ok()
            && !originals.contains(&signed_parts(&input))
        {
            accepted_mutants += 1;
        }
    }
    // A mutant may still verify only if its signed parts are the original ones (a CBOR tag added,
    // say); changing anything signed must never leave a document valid.
    assert_eq!(accepted_mutants, 0);
}

#[test]
fn oversized_input_is_refused_before_decoding() {
    let err = parse_unverified(&vec![0x84; 16 * 1024 + 1]).unwrap_err();
    assert_eq!(err.check(), "structure");
    assert!(err.to_string().contains("16384"), "{err}");
}
