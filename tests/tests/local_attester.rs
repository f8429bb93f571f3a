//! The local attester in process, against a private SoftHSM token per test (run with nextest).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use std::time::{Duration, SystemTime};

use cosigner_attestation::cose::CoseSign1;
use cosigner_attestation::local::{self, Lifetimes, LocalAttester};
use cosigner_attestation::{
    AttestRequest, AttestationDoc, AttestationError, Attester, Expectations, PinnedRoot,
    parse_unverified, verify,
};
use cosigner_kms::{Pin, Token};
use cosigner_tests::{SoftHsm, softhsm_module};
use sha2::{Digest, Sha384};

struct Setup {
    hsm: SoftHsm,
    token: Token,
    attester: LocalAttester,
    root: PinnedRoot,
}

fn setup() -> Setup {
    let hsm = SoftHsm::new().unwrap();
    hsm.install_env_for_this_process();
    let pin = Pin::new("user-pin-1");
    let token = Token::init(&softhsm_module(), "attester", &Pin::new("so-pin-1"), &pin).unwrap();
    let dir = hsm.dir().join("attester");
    let made = local::provision(
        &dir,
        &softhsm_module(),
        &token,
        SystemTime::now(),
        Lifetimes::default(),
    )
    .unwrap();
    let attester = LocalAttester::load(&dir, &pin).unwrap();
    Setup {
        hsm,
        token,
        attester,
        root: made.root,
    }
}

fn request() -> AttestRequest {
    AttestRequest {
        nonce: Some(vec![0x11; 32]),
        user_data: Some(vec![0x22; 32]),
        public_key: Some(vec![0x33; 65]),
    }
}

#[test]
fn document_verifies_under_the_operator_root_with_pinned_pcr0() {
    let s = setup();
    let doc = s.attester.attest(&request()).unwrap();
    let exe = std::env::current_exe().unwrap();
    let pcr0 = Sha384::digest(std::fs::read(exe).unwrap()).to_vec();
    let expect = Expectations {
        pcrs: [(0, pcr0.clone()), (2, pcr0)].into(),
        nonce: Some(vec![0x11; 32]),
        user_data: Some(vec![0x22; 32]),
        public_key: Some(vec![0x33; 65]),
        max_age: Some(Duration::from_secs(60)),
        allow_debug: false,
        max_clock_skew: Duration::ZERO,
    };
    let verified = verify(&doc, &s.root, SystemTime::now(), &expect).unwrap();
    assert!(!verified.debug);
    assert!(verified.doc.module_id.starts_with("local-"));
    assert_eq!(verified.doc.pcrs.len(), 16);
    assert_eq!(verified.doc.pcrs[&1], vec![0; 48]);
    assert_eq!(
        verified.doc.pcrs[&4],
        Sha384::digest(&verified.doc.certificate).to_vec()
    );
}

#[test]
fn document_is_refused_under_the_aws_root() {
    let s = setup();
    let doc = s.attester.attest(&request()).unwrap();
    let Some(fixtures) = cosigner_tests::shared_fixtures() else {
        eprintln!("skipping: ../shared/fixtures not present");
        return;
    };
    let aws =
        PinnedRoot::from_pem(&std::fs::read(fixtures.join("nitro/aws-nitro-root-g1.pem")).unwrap())
            .unwrap();
    let err = verify(&doc, &aws, SystemTime::now(), &Expectations::default()).unwrap_err();
    assert_eq!(err.check(), "chain", "{err}");
}

#[test]
fn document_has_exactly_the_nsm_format() {
    let s = setup();
    let bytes = s.attester.attest(&request()).unwrap();
    // Untagged COSE_Sign1 array of 4 whose protected header is the NSM's a1 01 38 22.
    assert_eq!(bytes[0], 0x84);
    let cose = CoseSign1::decode(&bytes).unwrap();
    assert_eq!(cose.protected, [0xa1, 0x01, 0x38, 0x22]);
    // The payload re-encodes byte for byte: canonical, the NSM's field order, nulls for absent.
    let doc = AttestationDoc::decode(&cose.payload).unwrap();
    assert_eq!(doc.encode().unwrap(), cose.payload);
    let plain = s.attester.attest(&AttestRequest::default()).unwrap();
    let (_, plain) = parse_unverified(&plain).unwrap();
    assert_eq!(
        (plain.nonce, plain.user_data, plain.public_key),
        (None, None, None)
    );
    assert_eq!(plain.digest, "SHA384");
    assert_eq!(plain.cabundle.len(), 1);
}

#[test]
fn attestation_and_root_keys_cannot_be_read_out_of_the_token() {
    let s = setup();
    for label in [local::ATTESTATION_KEY_LABEL, local::ROOT_KEY_LABEL] {
        let key = s.token.p384_signing_key(label).unwrap();
        let p = key.protection().unwrap();
        assert!(p.sensitive && !p.extractable, "{label}: {p:?}");
        assert!(p.always_sensitive && p.never_extractable, "{label}: {p:?}");
    }
    // Ask the token directly for CKA_VALUE of every private key: it must refuse.
    use cryptoki::object::{Attribute, AttributeInfo, AttributeType, ObjectClass};
    let ctx = cosigner_kms::context(&softhsm_module()).unwrap();
    let session = ctx.open_ro_session(s.token.slot()).unwrap();
    let keys = session
        .find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY)])
        .unwrap();
    assert_eq!(keys.len(), 2);
    for key in keys {
        let info = session
            .get_attribute_info(key, &[AttributeType::Value])
            .unwrap();
        assert!(matches!(info[0], AttributeInfo::Sensitive), "{info:?}");
        let values = session
            .get_attributes(key, &[AttributeType::Value])
            .unwrap();
        assert!(values.is_empty(), "the token returned a private key value");
    }
}

#[test]
fn requests_over_the_nsm_limits_are_refused() {
    let s = setup();
    for request in [
        AttestRequest {
            nonce: Some(vec![0; 513]),
            ..Default::default()
        },
        AttestRequest {
            user_data: Some(vec![0; 513]),
            ..Default::default()
        },
        AttestRequest {
            public_key: Some(vec![]),
            ..Default::default()
        },
        AttestRequest {
            public_key: Some(vec![0; 1025]),
            ..Default::default()
        },
    ] {
        assert!(matches!(
            s.attester.attest(&request),
            Err(AttestationError::Request { .. })
        ));
    }
    // The limits themselves are accepted.
    let max = AttestRequest {
        nonce: Some(vec![1; 512]),
        user_data: Some(vec![2; 512]),
        public_key: Some(vec![3; 1024]),
    };
    let doc = s.attester.attest(&max).unwrap();
    verify(&doc, &s.root, SystemTime::now(), &Expectations::default()).unwrap();
}

/// A verifier whose clock is behind the attester's: `doc_ahead` is how far the document's
/// timestamp is after the validation time.
fn verify_ahead(
    s: &Setup,
    doc_ahead: Duration,
    expect: &Expectations,
) -> Result<(), AttestationError> {
    let now = SystemTime::now();
    let doc = s.attester.attest_at(&request(), now + doc_ahead).unwrap();
    verify(&doc, &s.root, now, expect).map(|_| ())
}

#[test]
fn documents_from_a_clock_ahead_verify_within_the_default_skew() {
    let s = setup();
    let expect = Expectations {
        max_age: Some(Duration::from_secs(60)),
        ..Default::default()
    };
    assert_eq!(
        expect.max_clock_skew,
        cosigner_attestation::DEFAULT_MAX_CLOCK_SKEW
    );
    assert_eq!(expect.max_clock_skew, Duration::from_secs(300));
    // A second ahead (the phone a second slow) and four minutes ahead both verify, max_age on.
    verify_ahead(&s, Duration::from_secs(1), &expect).unwrap();
    verify_ahead(&s, Duration::from_secs(4 * 60), &expect).unwrap();
    // Ten minutes ahead is refused, naming the check and the skew.
    let err = verify_ahead(&s, Duration::from_secs(10 * 60), &expect).unwrap_err();
    assert!(
        matches!(
            err,
            AttestationError::FromTheFuture {
                max_clock_skew_ms: 300_000,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(err.check(), "timestamp", "{err}");
    assert!(err.to_string().contains("clock skew of 300000 ms"), "{err}");
}

#[test]
fn clock_skew_bound_is_exact_and_configurable() {
    let s = setup();
    let now = SystemTime::now();
    let doc = s.attester.attest_at(&request(), now).unwrap();
    let skew = |secs: u64| Expectations {
        max_clock_skew: Duration::from_secs(secs),
        ..Default::default()
    };
    // The timestamp has millisecond resolution: verify at exactly skew, and 1 ms beyond it.
    let (_, parsed) = parse_unverified(&doc).unwrap();
    let doc_time = SystemTime::UNIX_EPOCH + Duration::from_millis(parsed.timestamp);
    let at_bound = doc_time - Duration::from_secs(30);
    verify(&doc, &s.root, at_bound, &skew(30)).unwrap();
    let err = verify(
        &doc,
        &s.root,
        at_bound - Duration::from_millis(1),
        &skew(30),
    )
    .unwrap_err();
    assert!(
        matches!(err, AttestationError::FromTheFuture { .. }),
        "{err}"
    );
    // No skew: even a millisecond ahead is refused (the old behaviour, still available).
    let err = verify(&doc, &s.root, doc_time - Duration::from_millis(1), &skew(0)).unwrap_err();
    assert!(
        matches!(err, AttestationError::FromTheFuture { .. }),
        "{err}"
    );
    verify(&doc, &s.root, doc_time, &skew(0)).unwrap();
}

#[test]
fn clock_skew_never_lengthens_the_maximum_age() {
    let s = setup();
    let now = SystemTime::now();
    let expect = Expectations {
        max_age: Some(Duration::from_secs(60)),
        ..Default::default()
    };
    // 60 s old: accepted; 61 s old: refused as before, whatever the (forward) skew.
    let doc = s
        .attester
        .attest_at(&request(), now - Duration::from_secs(60))
        .unwrap();
    verify(&doc, &s.root, now, &expect).unwrap();
    let doc = s
        .attester
        .attest_at(&request(), now - Duration::from_secs(61))
        .unwrap();
    let err = verify(&doc, &s.root, now, &expect).unwrap_err();
    assert!(
        matches!(err, AttestationError::TooOld { max_age_ms: 60_000, age_ms } if age_ms >= 61_000),
        "{err}"
    );
    // A document from the future counts as brand new, not as "negative age" wrapping around.
    let doc = s
        .attester
        .attest_at(&request(), now + Duration::from_secs(240))
        .unwrap();
    verify(&doc, &s.root, now, &expect).unwrap();
}

#[test]
fn document_is_refused_after_the_attester_certificate_expires() {
    let s = setup();
    let doc = s.attester.attest(&request()).unwrap();
    let later = SystemTime::now() + Duration::from_secs(2 * 365 * 24 * 60 * 60);
    let err = verify(&doc, &s.root, later, &Expectations::default()).unwrap_err();
    assert_eq!(err.check(), "chain", "{err}");
}

#[test]
fn a_certificate_that_does_not_match_the_token_key_is_refused_at_load() {
    let s = setup();
    let dir = s.hsm.dir().join("attester");
    // Put the root certificate where the attester's should be.
    std::fs::copy(dir.join(local::ROOT_FILE), dir.join(local::LEAF_FILE)).unwrap();
    let err = LocalAttester::load(&dir, &Pin::new("user-pin-1")).unwrap_err();
    assert_eq!(err.check(), "pki", "{err}");
}

#[test]
fn provisioning_twice_into_one_directory_is_refused() {
    let s = setup();
    let dir = s.hsm.dir().join("attester");
    let err = local::provision(
        &dir,
        &softhsm_module(),
        &s.token,
        SystemTime::now(),
        Lifetimes::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("refusing to overwrite"), "{err}");
}
