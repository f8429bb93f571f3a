//! QEMU's emulated NSM (hw/virtio/virtio-nsm.c, QEMU 10.0): its unsigned documents pass
//! `verify_emulated_unsigned` with every other check intact, and only there; signed documents
//! never pass it.
//!
//! The documents are written byte for byte as QEMU writes them (`support/qemu_nsm.rs`) and pinned
//! in `tests/golden/qemu_nsm.txt`; `support/qemu-nsm-crosscheck.sh QEMU_SOURCE_DIR` compiles
//! QEMU's own functions against libcbor and checks that they write exactly the pinned bytes. A
//! changed vector means the helper no longer writes what QEMU 10.0 writes: run that script before
//! regenerating with `GOLDEN_UPDATE=1 cargo nextest run --locked -p cosigner-attestation
//! -E 'test(golden)'`.
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
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cosigner_attestation::{
    AttestationDoc, AttestationError, EmulatedPart, Expectations, PinnedRoot,
    parse_emulated_unsigned, parse_unverified, verify, verify_emulated_unsigned,
};
use qemu_nsm::{QEMU_MODULE_ID, QemuAttestation};

/// 2025-06-15 15:06:40 UTC, whole seconds as QEMU writes them.
const TIME_MS: u64 = 1_750_000_000_000;
const NONCE: [u8; 32] = [0x11; 32];
const USER_DATA: [u8; 32] = [0x22; 32];

fn public_key() -> Vec<u8> {
    [&[0x04][..], &[0x33; 64][..]].concat()
}

/// A booted EIF's attestation, as the enclave asks for it (nonce, TLS binding, audit key).
fn attestation() -> QemuAttestation {
    QemuAttestation {
        public_key: Some(public_key()),
        user_data: Some(USER_DATA.to_vec()),
        nonce: Some(NONCE.to_vec()),
        ..QemuAttestation::booted(TIME_MS, &[0xa0; 48], &[0xb0; 48], &[0xc0; 48])
    }
}

/// What a client requires of [`attestation`]: its PCR0..2, its nonce, binding and key, fresh.
fn expectations() -> Expectations {
    let pcrs = attestation().pcrs;
    Expectations {
        pcrs: (0..=2u8).map(|i| (i, pcrs[&i].clone())).collect(),
        nonce: Some(NONCE.to_vec()),
        user_data: Some(USER_DATA.to_vec()),
        public_key: Some(public_key()),
        max_age: Some(Duration::from_secs(300)),
        ..Default::default()
    }
}

/// A second after the document was made.
fn soon() -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(TIME_MS + 1_000)
}

/// The pinned golden vectors, by name.
fn golden_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/qemu_nsm.txt")
}

fn pinned() -> BTreeMap<String, Vec<u8>> {
    let text = std::fs::read_to_string(golden_path()).unwrap_or_default();
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (name, hex_text) = l.split_once(' ').expect("`name hex`");
            (name.to_owned(), hex::decode(hex_text.trim()).expect("hex"))
        })
        .collect()
}

/// The vectors this build writes: (name, comment, bytes).
fn vectors() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    vec![
        (
            "qemu.attested",
            "a booted EIF's document binding a nonce, user data and a public key \
             (PCR0..2 extended with 48 bytes of a0, b0, c0)",
            attestation().document(),
        ),
        (
            "qemu.bare",
            "the same NSM asked for nothing: public_key, user_data and nonce are null",
            QemuAttestation::booted(TIME_MS, &[0xa0; 48], &[0xb0; 48], &[0xc0; 48]).document(),
        ),
    ]
}

fn golden(name: &str) -> Vec<u8> {
    pinned()
        .remove(name)
        .unwrap_or_else(|| panic!("{name} is not pinned in {}", golden_path().display()))
}

fn part_of<T: std::fmt::Debug>(result: Result<T, AttestationError>) -> EmulatedPart {
    match result {
        Err(AttestationError::NotEmulated { part, .. }) => part,
        other => panic!("expected NotEmulated, got {other:?}"),
    }
}

#[test]
fn golden_qemu_documents_are_what_the_helper_writes() {
    if std::env::var_os("GOLDEN_UPDATE").is_some() {
        let mut text = String::from(
            "# Documents of QEMU 10.0's emulated NSM (hw/virtio/virtio-nsm.c), written by\n\
             # attestation/tests/support/qemu_nsm.rs. Generated: do not edit by hand.\n\
             # QEMU's own code writes the same bytes (tests/support/qemu-nsm-crosscheck.sh).\n\
             # A changed line means the helper no longer writes what QEMU writes: see\n\
             # attestation/tests/emulated_nsm.rs.\n",
        );
        for (name, comment, bytes) in vectors() {
            text.push_str(&format!("\n# {comment}\n{name} {}\n", hex::encode(bytes)));
        }
        std::fs::write(golden_path(), text).unwrap();
        return;
    }
    let pinned = pinned();
    for (name, _, bytes) in vectors() {
        assert_eq!(
            pinned.get(name).map(hex::encode),
            Some(hex::encode(&bytes)),
            "{name} differs from {} (see this file's header)",
            golden_path().display()
        );
    }
    assert_eq!(
        pinned.len(),
        vectors().len(),
        "a pinned vector is no longer written"
    );
}

#[test]
fn golden_document_has_qemu_libcbor_layout() {
    let doc = golden("qemu.attested");
    // Array(4), bstr(3) {1: -1}, map(0), then the payload as a bstr of a 2-byte length.
    assert_eq!(doc[..7], [0x84, 0x43, 0xa1, 0x01, 0x20, 0xa0, 0x59]);
    let payload_len = usize::from(u16::from_be_bytes([doc[7], doc[8]]));
    let payload = &doc[9..9 + payload_len];
    // The 64 zero bytes of "signature" end it.
    assert_eq!(
        doc[9 + payload_len..],
        [&[0x58, 0x40][..], &[0; 64][..]].concat()
    );
    // Map(9) whose first key is module_id; the timestamp in libcbor's full 8-byte width.
    assert_eq!(payload[..11], *b"\xa9\x69module_id");
    let timestamp = [&b"\x69timestamp\x1b"[..], &TIME_MS.to_be_bytes()[..]].concat();
    assert!(payload.windows(timestamp.len()).any(|w| w == timestamp));
    // A null where the NSM was asked for nothing.
    let bare = golden("qemu.bare");
    assert!(bare.ends_with(&[&b"\x65nonce\xf6\x58\x40"[..], &[0; 64][..]].concat()));
}

#[test]
fn golden_document_is_accepted_by_the_emulated_path() {
    let verified =
        verify_emulated_unsigned(&golden("qemu.attested"), soon(), &expectations()).unwrap();
    assert!(!verified.debug);
    let doc = &verified.doc;
    assert_eq!(doc.module_id, QEMU_MODULE_ID);
    assert_eq!(doc.digest, "SHA384");
    assert_eq!(doc.timestamp, TIME_MS);
    assert_eq!(doc.pcrs, attestation().pcrs);
    assert_eq!(doc.pcrs.len(), 16);
    assert!((3..16).all(|i| doc.pcrs[&i] == [0; 48]));
    assert_eq!(doc.certificate, [0; 64]);
    assert_eq!(doc.cabundle, [vec![0; 64]]);
    assert_eq!(doc.nonce.as_deref(), Some(&NONCE[..]));
    assert_eq!(doc.user_data.as_deref(), Some(&USER_DATA[..]));
    assert_eq!(doc.public_key, Some(public_key()));

    let bare =
        verify_emulated_unsigned(&golden("qemu.bare"), soon(), &Expectations::default()).unwrap();
    assert_eq!((bare.doc.nonce, bare.doc.public_key), (None, None));
}

#[test]
fn emulated_document_with_a_wrong_pcr_is_refused() {
    let mut expect = expectations();
    expect.pcrs.insert(2, vec![0xc0; 48]);
    let err = verify_emulated_unsigned(&attestation().document(), soon(), &expect).unwrap_err();
    assert!(
        matches!(err, AttestationError::Pcr { index: 2, .. }),
        "{err:?}"
    );

    // An unlocked (absent) PCR is no match either.
    let mut expect = expectations();
    expect.pcrs.insert(16, vec![0; 48]);
    let err = verify_emulated_unsigned(&attestation().document(), soon(), &expect).unwrap_err();
    assert!(
        matches!(err, AttestationError::Pcr { index: 16, .. }),
        "{err:?}"
    );
}

#[test]
fn emulated_document_with_a_wrong_nonce_binding_or_key_is_refused() {
    let document = attestation().document();
    for (field, set) in [
        (
            "nonce",
            (|e: &mut Expectations| e.nonce = Some(vec![0x12; 32])) as fn(&mut _),
        ),
        ("user_data", |e| e.user_data = Some(vec![0x23; 32])),
        ("public_key", |e| e.public_key = Some(vec![0x04; 65])),
    ] {
        let mut expect = expectations();
        set(&mut expect);
        let err = verify_emulated_unsigned(&document, soon(), &expect).unwrap_err();
        assert!(
            matches!(err, AttestationError::Mismatch { field: f, .. } if f == field),
            "{field}: {err:?}"
        );
    }
    // A document without a nonce when one is expected.
    let mut bare = attestation();
    bare.nonce = None;
    let err = verify_emulated_unsigned(&bare.document(), soon(), &expectations()).unwrap_err();
    assert!(
        matches!(
            err,
            AttestationError::Mismatch { field: "nonce", ref actual, .. } if actual == "absent"
        ),
        "{err:?}"
    );
}

#[test]
fn emulated_document_too_old_or_from_the_future_is_refused() {
    let document = attestation().document();
    let late = UNIX_EPOCH + Duration::from_millis(TIME_MS) + Duration::from_secs(301);
    let err = verify_emulated_unsigned(&document, late, &expectations()).unwrap_err();
    assert!(matches!(err, AttestationError::TooOld { .. }), "{err:?}");

    let early = UNIX_EPOCH + Duration::from_millis(TIME_MS) - Duration::from_secs(301);
    let err = verify_emulated_unsigned(&document, early, &expectations()).unwrap_err();
    assert!(
        matches!(err, AttestationError::FromTheFuture { .. }),
        "{err:?}"
    );
    // Within the default skew it passes, as under `verify`.
    let ahead = UNIX_EPOCH + Duration::from_millis(TIME_MS) - Duration::from_secs(299);
    verify_emulated_unsigned(&document, ahead, &expectations()).unwrap();
}

#[test]
fn emulated_debug_document_is_refused_unless_allowed() {
    let mut debug = attestation();
    for i in 0..=2 {
        debug.pcrs.insert(i, vec![0; 48]);
    }
    let mut expect = expectations();
    expect.pcrs.clear();
    let err = verify_emulated_unsigned(&debug.document(), soon(), &expect).unwrap_err();
    assert!(matches!(err, AttestationError::DebugMode), "{err:?}");
    expect.allow_debug = true;
    let verified = verify_emulated_unsigned(&debug.document(), soon(), &expect).unwrap();
    assert!(verified.debug);
}

#[test]
fn emulated_document_with_another_digest_is_refused() {
    let document = attestation().document();
    // "SHA384" → "SHA256": same length, so only the value changes.
    let at = document.windows(6).position(|w| w == b"SHA384").unwrap();
    let mut other = document.clone();
    other[at + 3..at + 6].copy_from_slice(b"256");
    let err = verify_emulated_unsigned(&other, soon(), &expectations()).unwrap_err();
    assert!(matches!(err, AttestationError::Digest { .. }), "{err:?}");
}

#[test]
fn qemu_document_is_refused_by_verify() {
    let root = PinnedRoot::from_pem(qemu_nsm::AWS_ROOT_PEM.as_bytes()).unwrap();
    for document in [golden("qemu.attested"), golden("qemu.bare")] {
        let err = verify(&document, &root, soon(), &expectations()).unwrap_err();
        assert!(matches!(err, AttestationError::Malformed { .. }), "{err:?}");
        assert_eq!(err.check(), "structure");
        let err = parse_unverified(&document).unwrap_err();
        assert!(matches!(err, AttestationError::Malformed { .. }), "{err:?}");
    }
}

#[test]
fn real_aws_documents_are_refused_by_the_emulated_path() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/nitro");
    for name in ["real-2022-10-13.cose", "real-debug-2022-10-12.cose"] {
        let Ok(bytes) = std::fs::read(dir.join(name)) else {
            eprintln!("skipping {name}: ../shared/fixtures/nitro is not present in this clone");
            continue;
        };
        let (_, doc) = parse_unverified(&bytes).unwrap();
        let at = UNIX_EPOCH + Duration::from_millis(doc.timestamp + 1_000);
        let expect = Expectations {
            allow_debug: true,
            ..Default::default()
        };
        assert_eq!(
            part_of(verify_emulated_unsigned(&bytes, at, &expect)),
            EmulatedPart::ProtectedHeader,
            "{name}"
        );
    }
}

/// A signed document whose payload is QEMU's (zero certificate, zero cabundle): the header and
/// the signature are what tell them apart, and either alone is refused.
#[test]
fn qemu_payload_with_a_signature_is_refused_by_the_emulated_path() {
    use cosigner_attestation::cose::{CoseSign1, es384_protected_header};
    use p384::ecdsa::signature::Signer;
    use p384::ecdsa::{Signature, SigningKey};

    let key = SigningKey::random(&mut rand::thread_rng());
    let payload = attestation().payload();
    let protected = es384_protected_header().unwrap();
    let mut cose = CoseSign1 {
        protected,
        payload,
        signature: Vec::new(),
    };
    let signature: Signature = key.sign(&cose.to_be_signed().unwrap());
    cose.signature = signature.to_bytes().to_vec();
    assert_eq!(
        part_of(verify_emulated_unsigned(
            &cose.encode().unwrap(),
            soon(),
            &expectations()
        )),
        EmulatedPart::ProtectedHeader
    );
    // QEMU's header over a real signature.
    cose.protected = vec![0xa1, 0x01, 0x20];
    assert_eq!(
        part_of(verify_emulated_unsigned(
            &cose.encode().unwrap(),
            soon(),
            &expectations()
        )),
        EmulatedPart::Signature
    );
    // An unsigned document claiming a real-looking certificate.
    let doc = AttestationDoc {
        certificate: vec![0x30; 300],
        ..parse_emulated_unsigned(&attestation().document())
            .unwrap()
            .1
    };
    cose.payload = doc.encode().unwrap();
    cose.signature = vec![0; 64];
    assert_eq!(
        part_of(verify_emulated_unsigned(
            &cose.encode().unwrap(),
            soon(),
            &expectations()
        )),
        EmulatedPart::Certificate
    );
}

/// A local attester's document (signed in a SoftHSM token, chained to its operator root) passes
/// `verify` and is refused by the emulated path. Needs SoftHSM (`make deps`); run with nextest
/// (one process per test: PKCS#11 reads its configuration once per process).
#[test]
#[allow(unsafe_code)]
fn local_attester_document_is_refused_by_the_emulated_path() {
    use cosigner_attestation::AttestRequest;
    use cosigner_attestation::local::{self, Lifetimes, LocalAttester};
    use cosigner_kms::{DEFAULT_SOFTHSM_MODULE, Pin, Token};

    let module = std::env::var_os("COSIGNER_PKCS11_MODULE")
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_SOFTHSM_MODULE), PathBuf::from);
    let dir = std::env::temp_dir().join(format!("cosigner-emulated-nsm-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("tokens")).unwrap();
    let conf = dir.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            dir.join("tokens").display()
        ),
    )
    .unwrap();
    // SAFETY: set before any PKCS#11 call and before any thread of this test; nextest runs each
    // test in its own process, so nothing else reads the environment meanwhile.
    unsafe { std::env::set_var("SOFTHSM2_CONF", &conf) };

    let pin = Pin::new("user-pin-1");
    let token = Token::init(&module, "attester", &Pin::new("so-pin-1"), &pin).unwrap();
    let now = SystemTime::now();
    let made = local::provision(
        &dir.join("attester"),
        &module,
        &token,
        now,
        Lifetimes::default(),
    )
    .unwrap();
    let attester = LocalAttester::load_measured(&dir.join("attester"), &pin, &[7; 48]).unwrap();
    let request = AttestRequest {
        nonce: Some(NONCE.to_vec()),
        user_data: Some(USER_DATA.to_vec()),
        public_key: Some(public_key()),
    };
    let document = attester.attest_at(&request, now).unwrap();
    let expect = Expectations {
        pcrs: [(0, vec![7; 48])].into(),
        nonce: Some(NONCE.to_vec()),
        ..Default::default()
    };
    verify(&document, &made.root, now, &expect).unwrap();
    assert_eq!(
        part_of(verify_emulated_unsigned(&document, now, &expect)),
        EmulatedPart::ProtectedHeader
    );
    let _ = std::fs::remove_dir_all(&dir);
}
