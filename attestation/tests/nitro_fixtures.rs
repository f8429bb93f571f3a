//! The verifier against real AWS Nitro attestation documents (`../shared/fixtures/nitro/`).
//!
//! The documents' certificates expired long ago: each verifies at its own timestamp. Where the
//! shared fixtures are absent (someone else's clone), every test says so and passes vacuously.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cosigner_attestation::cose::CoseSign1;
use cosigner_attestation::{AttestationDoc, AttestationError, Expectations, PinnedRoot, verify};

struct Fixture {
    bytes: Vec<u8>,
    doc: AttestationDoc,
}

fn fixtures_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/nitro");
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!("skipping: ../shared/fixtures/nitro is not present in this clone");
        None
    }
}

fn load(name: &str) -> Option<(Fixture, PinnedRoot)> {
    let dir = fixtures_dir()?;
    let bytes = std::fs::read(dir.join(name)).unwrap();
    let root =
        PinnedRoot::from_pem(&std::fs::read(dir.join("aws-nitro-root-g1.pem")).unwrap()).unwrap();
    let (_, doc) = cosigner_attestation::parse_unverified(&bytes).unwrap();
    Some((Fixture { bytes, doc }, root))
}

/// One second after the document was made: inside every certificate's validity.
fn own_time(doc: &AttestationDoc) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(doc.timestamp) + Duration::from_secs(1)
}

const REAL: &str = "real-2022-10-13.cose";
const DEBUG: &str = "real-debug-2022-10-12.cose";

#[test]
fn aws_root_fingerprint_is_the_published_one() {
    let Some((_, root)) = load(REAL) else { return };
    assert_eq!(
        root.sha256_fingerprint(),
        "641a0321a3e244efe456463195d606317ed7cdcc3c1756e09893f3c68f79bb5b"
    );
}

#[test]
fn real_document_verifies_at_its_own_time() {
    let Some((f, root)) = load(REAL) else { return };
    let expect = Expectations {
        pcrs: [(0, f.doc.pcrs[&0].clone())].into(),
        nonce: f.doc.nonce.clone(),
        max_age: Some(Duration::from_secs(60)),
        ..Default::default()
    };
    let verified = verify(&f.bytes, &root, own_time(&f.doc), &expect).unwrap();
    assert!(!verified.debug);
    assert_eq!(
        verified.doc.module_id,
        "i-020b6af9246d90e92-enc0183d09086c24190"
    );
    assert_eq!(verified.doc.timestamp, 1_665_651_482_136);
    assert_eq!(verified.doc.nonce.as_ref().map(Vec::len), Some(256));
    assert!(hex::encode(&verified.doc.pcrs[&0]).starts_with("f4d48b81a460c991"));
}

#[test]
fn real_document_is_refused_today_because_its_chain_expired() {
    let Some((f, root)) = load(REAL) else { return };
    let err = verify(&f.bytes, &root, SystemTime::now(), &Expectations::default()).unwrap_err();
    assert_eq!(err.check(), "chain", "{err}");
    assert!(err.to_string().contains("expired"), "{err}");
}

/// The default expectations but for the clock skew allowed.
fn skew(max_clock_skew: Duration) -> Expectations {
    Expectations {
        max_clock_skew,
        ..Default::default()
    }
}

/// `err` refuses a document from the future under a skew of `max_ms` milliseconds.
fn assert_from_the_future(err: &AttestationError, max_ms: u64) {
    assert!(
        matches!(err, AttestationError::FromTheFuture { max_clock_skew_ms, .. } if *max_clock_skew_ms == max_ms),
        "{err}"
    );
}

#[test]
fn real_document_from_a_second_ahead_verifies_within_the_clock_skew_only() {
    let Some((f, root)) = load(REAL) else { return };
    // A verifier whose clock is a second behind the NSM's: inside the leaf's validity (issued
    // three seconds before the document), but before the timestamp.
    let at = UNIX_EPOCH + Duration::from_millis(f.doc.timestamp - 1000);
    let verified = verify(&f.bytes, &root, at, &Expectations::default()).unwrap();
    assert_eq!(verified.doc.timestamp, f.doc.timestamp);
    // Without skew it is refused, as a document from the future.
    let err = verify(&f.bytes, &root, at, &skew(Duration::ZERO)).unwrap_err();
    assert_from_the_future(&err, 0);
    assert_eq!(err.check(), "timestamp", "{err}");
}

#[test]
fn real_document_from_beyond_the_clock_skew_is_refused() {
    let Some((f, root)) = load(REAL) else { return };
    // Ten minutes behind: the chain is checked at most five minutes ahead of the verifier's
    // time, when this leaf (issued three seconds before the document) was not yet valid; with a
    // skew wide enough for the chain, the timestamp check refuses it.
    let at = UNIX_EPOCH + Duration::from_millis(f.doc.timestamp - 600_000);
    let err = verify(&f.bytes, &root, at, &Expectations::default()).unwrap_err();
    assert_eq!(err.check(), "chain", "{err}");
    assert!(err.to_string().contains("not yet valid"), "{err}");
    let err = verify(&f.bytes, &root, at, &skew(Duration::from_secs(599))).unwrap_err();
    assert_from_the_future(&err, 599_000);
    verify(&f.bytes, &root, at, &skew(Duration::from_secs(600))).unwrap();
}

#[test]
fn real_document_is_refused_when_older_than_the_maximum_age() {
    let Some((f, root)) = load(REAL) else { return };
    let at = UNIX_EPOCH + Duration::from_millis(f.doc.timestamp) + Duration::from_secs(600);
    let expect = Expectations {
        max_age: Some(Duration::from_secs(300)),
        ..Default::default()
    };
    let err = verify(&f.bytes, &root, at, &expect).unwrap_err();
    assert!(matches!(err, AttestationError::TooOld { .. }), "{err}");
}

#[test]
fn real_document_is_refused_under_another_root() {
    let Some((f, _)) = load(REAL) else { return };
    let other = PinnedRoot::from_der(&another_root()).unwrap();
    let err = verify(&f.bytes, &other, own_time(&f.doc), &Expectations::default()).unwrap_err();
    assert_eq!(err.check(), "chain", "{err}");
}

/// A P-384 root CA that is not AWS's, valid 2020..2040.
fn another_root() -> Vec<u8> {
    use der::Encode;
    use std::str::FromStr;
    use x509_cert::builder::{Builder, CertificateBuilder, Profile};
    let key = p384::ecdsa::SigningKey::random(&mut rand::thread_rng());
    let validity = x509_cert::time::Validity {
        not_before: x509_cert::time::Time::try_from(
            UNIX_EPOCH + Duration::from_secs(1_577_836_800),
        )
        .unwrap(),
        not_after: x509_cert::time::Time::try_from(UNIX_EPOCH + Duration::from_secs(2_208_988_800))
            .unwrap(),
    };
    let spki = x509_cert::spki::SubjectPublicKeyInfoOwned::from_key(*key.verifying_key()).unwrap();
    let builder = CertificateBuilder::new(
        Profile::Root,
        x509_cert::serial_number::SerialNumber::from(7u32),
        validity,
        x509_cert::name::Name::from_str("CN=Not AWS Nitro root").unwrap(),
        spki,
        &key,
    )
    .unwrap();
    builder
        .build::<p384::ecdsa::DerSignature>()
        .unwrap()
        .to_der()
        .unwrap()
}

#[test]
fn real_document_with_wrong_pcr_or_nonce_is_refused() {
    let Some((f, root)) = load(REAL) else { return };
    let at = own_time(&f.doc);
    let pcr = Expectations {
        pcrs: [(0, vec![0xaa; 48])].into(),
        ..Default::default()
    };
    let err = verify(&f.bytes, &root, at, &pcr).unwrap_err();
    assert!(
        matches!(err, AttestationError::Pcr { index: 0, .. }),
        "{err}"
    );
    let missing = Expectations {
        pcrs: [(20, vec![0; 48])].into(),
        ..Default::default()
    };
    assert_eq!(
        verify(&f.bytes, &root, at, &missing).unwrap_err().check(),
        "pcr"
    );
    let nonce = Expectations {
        nonce: Some(vec![1, 2, 3]),
        ..Default::default()
    };
    assert_eq!(
        verify(&f.bytes, &root, at, &nonce).unwrap_err().check(),
        "nonce"
    );
    let user_data = Expectations {
        user_data: Some(vec![1]),
        ..Default::default()
    };
    assert_eq!(
        verify(&f.bytes, &root, at, &user_data).unwrap_err().check(),
        "user_data"
    );
}

/// Flips one bit of `part` inside the signed document and re-encodes the COSE structure.
fn tamper(bytes: &[u8], edit: impl FnOnce(&mut CoseSign1, &mut AttestationDoc)) -> Vec<u8> {
    let mut cose = CoseSign1::decode(bytes).unwrap();
    let mut doc = AttestationDoc::decode(&cose.payload).unwrap();
    let before = doc.clone();
    edit(&mut cose, &mut doc);
    if doc != before {
        cose.payload = doc.encode().unwrap();
    }
    cose.encode().unwrap()
}

#[test]
fn real_document_re_encodes_to_the_same_bytes() {
    // Our encoder writes exactly what the NSM wrote: the basis of the local attester's format.
    let Some((f, _)) = load(REAL) else { return };
    let cose = CoseSign1::decode(&f.bytes).unwrap();
    assert_eq!(f.doc.encode().unwrap(), cose.payload);
    assert_eq!(cose.encode().unwrap(), f.bytes);
}

#[test]
fn real_document_with_any_byte_changed_is_refused() {
    let Some((f, root)) = load(REAL) else { return };
    let at = own_time(&f.doc);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("payload byte", tamper(&f.bytes, |c, _| c.payload[40] ^= 1)),
        (
            "signature byte",
            tamper(&f.bytes, |c, _| c.signature[10] ^= 1),
        ),
        (
            "nonce",
            tamper(&f.bytes, |_, d| d.nonce.as_mut().unwrap()[0] ^= 1),
        ),
        (
            "pcr",
            tamper(&f.bytes, |_, d| d.pcrs.get_mut(&0).unwrap()[0] ^= 1),
        ),
        (
            "leaf byte",
            tamper(&f.bytes, |_, d| {
                let n = d.certificate.len();
                d.certificate[n - 20] ^= 1;
            }),
        ),
        (
            "cabundle byte",
            tamper(&f.bytes, |_, d| {
                let n = d.cabundle[2].len();
                d.cabundle[2][n - 20] ^= 1;
            }),
        ),
        (
            "cabundle entry removed",
            tamper(&f.bytes, |_, d| {
                d.cabundle.remove(2);
            }),
        ),
        ("timestamp", tamper(&f.bytes, |_, d| d.timestamp -= 1)),
    ];
    for (what, bytes) in cases {
        let err = verify(&bytes, &root, at, &Expectations::default()).expect_err(what);
        // Every change to signed bytes is caught by the signature or the chain, never later.
        assert!(
            matches!(err.check(), "signature" | "chain" | "structure"),
            "{what}: {err}"
        );
    }
}

#[test]
fn a_changed_root_in_cabundle_0_is_ignored() {
    // cabundle[0] is not used: swapping it does not matter, the pinned root decides.
    let Some((f, root)) = load(REAL) else { return };
    let at = own_time(&f.doc);
    let swapped = tamper(&f.bytes, |_, d| d.cabundle[0] = d.cabundle[1].clone());
    // The payload changed, so the signature fails: the point is it is not trusted either way.
    assert!(verify(&swapped, &root, at, &Expectations::default()).is_err());
}

#[test]
fn debug_document_is_refused_unless_allowed() {
    let Some((f, root)) = load(DEBUG) else { return };
    let at = own_time(&f.doc);
    let err = verify(&f.bytes, &root, at, &Expectations::default()).unwrap_err();
    assert!(matches!(err, AttestationError::DebugMode), "{err}");
    let allow = Expectations {
        allow_debug: true,
        user_data: f.doc.user_data.clone(),
        public_key: f.doc.public_key.clone(),
        ..Default::default()
    };
    let verified = verify(&f.bytes, &root, at, &allow).unwrap();
    assert!(verified.debug);
    assert!(verified.doc.user_data.is_some() && verified.doc.public_key.is_some());
}
