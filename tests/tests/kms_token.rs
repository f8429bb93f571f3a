//! `cosigner-kms` against a real SoftHSM token. Run with `cargo nextest run` (one process per test):
//! each test gets its own SoftHSM directory and PKCS#11 context.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::PathBuf;

use cosigner_kms::{KmsError, P384SigningKey, Pin, Token};
use cosigner_tests::pkcs11::{
    SO_PIN, USER_PIN, assert_cannot_loosen, assert_generated_on_token, assert_label_error,
    assert_value_unreadable, destroy_objects, find_key, planted_key_template, raw_session,
    softhsm_for_this_process as softhsm, token_for_this_process,
};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass};
use p384::ecdsa::signature::Verifier;
use p384::ecdsa::signature::hazmat::PrehashVerifier;
use p384::ecdsa::{Signature, VerifyingKey};
use sha2::{Digest, Sha384};

const LABEL: &str = "cosigner-test";
const KEY: &str = "attestation-p384";
/// A token or key label nothing has.
const MISSING: &str = "no-such-label";

fn init_token(module: &std::path::Path) -> Token {
    cosigner_tests::pkcs11::init_token(module, LABEL)
}

fn verify(key: &P384SigningKey, msg: &[u8], sig: &[u8; 96]) {
    let vk = VerifyingKey::from_sec1_bytes(key.public_key_sec1()).unwrap();
    let sig = Signature::from_slice(sig).unwrap();
    vk.verify(msg, &sig).unwrap();
}

#[test]
fn init_then_open_again_while_logged_in_succeeds() {
    let (_hsm, module, first) = token_for_this_process(LABEL);
    assert_eq!(first.label(), LABEL);
    // The token is logged in through `first`: the second C_Login answers
    // CKR_USER_ALREADY_LOGGED_IN, which is success.
    let second = Token::open(&module, LABEL, &Pin::new(USER_PIN)).unwrap();
    assert_eq!(second.label(), LABEL);
    assert_eq!(first.slot(), second.slot());
}

#[test]
fn wrong_pin_is_bad_pin() {
    let (_hsm, module) = softhsm();
    // Dropping the token closes its login session, the last one: the token is logged out again.
    drop(init_token(&module));
    let err = Token::open(&module, LABEL, &Pin::new("not-the-pin")).unwrap_err();
    assert!(matches!(err, KmsError::BadPin), "{err:?}");
    Token::open(&module, LABEL, &Pin::new(USER_PIN)).unwrap();
}

#[test]
fn unknown_token_label_is_token_not_found() {
    let (_hsm, module, _token) = token_for_this_process(LABEL);
    let err = Token::open(&module, MISSING, &Pin::new(USER_PIN)).unwrap_err();
    assert_label_error(&err, "TokenNotFound", MISSING);
}

#[test]
fn init_twice_with_the_same_label_is_token_exists() {
    let (_hsm, module, token) = token_for_this_process(LABEL);
    let err = Token::init(&module, LABEL, &Pin::new(SO_PIN), &Pin::new(USER_PIN)).unwrap_err();
    assert_label_error(&err, "TokenExists", LABEL);
    // Another label still gets a slot of its own.
    let other = Token::init(&module, "other", &Pin::new(SO_PIN), &Pin::new(USER_PIN)).unwrap();
    assert_ne!(other.slot(), token.slot());
}

#[test]
fn token_labels_that_do_not_survive_padding_are_refused() {
    let (_hsm, module) = softhsm();
    for label in ["", "trailing-blank ", &"x".repeat(33)] {
        let err = Token::init(&module, label, &Pin::new(SO_PIN), &Pin::new(USER_PIN)).unwrap_err();
        assert!(matches!(err, KmsError::InvalidLabel { .. }), "{err:?}");
    }
    // Exactly 32 bytes fits.
    let label = "y".repeat(32);
    let token = Token::init(&module, &label, &Pin::new(SO_PIN), &Pin::new(USER_PIN)).unwrap();
    assert_eq!(token.label(), label);
}

#[test]
fn p384_signature_verifies_with_the_p384_crate() {
    let (_hsm, _, token) = token_for_this_process(LABEL);
    let key = token.generate_p384_signing_key(KEY).unwrap();
    assert_eq!(key.label(), KEY);
    let public = key.public_key_sec1();
    assert_eq!(public.len(), 97);
    assert_eq!(public[0], 0x04);

    let msg = b"attestation document to be signed";
    let sig = key.sign_sha384(msg).unwrap();
    verify(&key, msg, &sig);

    // The prehash entry point signs the digest itself.
    let digest: [u8; 48] = Sha384::digest(msg).into();
    let sig2 = key.sign_prehash(&digest).unwrap();
    let vk = VerifyingKey::from_sec1_bytes(public).unwrap();
    vk.verify_prehash(&digest, &Signature::from_slice(&sig2).unwrap())
        .unwrap();
    // ECDSA is randomised: two signatures of the same digest differ.
    assert_ne!(sig, sig2);

    // A signature over another message does not verify.
    let vk_sig = Signature::from_slice(&sig).unwrap();
    assert!(vk.verify(b"another message", &vk_sig).is_err());
}

#[test]
fn duplicate_key_label_is_key_exists() {
    let (_hsm, _, token) = token_for_this_process(LABEL);
    let first = token.generate_p384_signing_key(KEY).unwrap();
    let err = token.generate_p384_signing_key(KEY).unwrap_err();
    assert_label_error(&err, "KeyExists", KEY);
    // The existing key is untouched.
    let again = token.p384_signing_key(KEY).unwrap();
    assert_eq!(again.public_key_sec1(), first.public_key_sec1());
}

#[test]
fn unknown_key_label_is_key_not_found() {
    let (_hsm, _, token) = token_for_this_process(LABEL);
    let err = token.p384_signing_key(MISSING).unwrap_err();
    assert_label_error(&err, "KeyNotFound", MISSING);
}

#[test]
fn generated_key_is_sensitive_and_never_extractable() {
    let (_hsm, _, token) = token_for_this_process(LABEL);
    let key = token.generate_p384_signing_key(KEY).unwrap();
    assert_generated_on_token(key.protection().unwrap());
}

#[test]
fn an_existing_signing_key_that_can_leave_the_token_is_refused() {
    let (_hsm, module, token) = token_for_this_process(LABEL);
    // A P-384 pair made behind cosigner-kms's back with an extractable, non-sensitive private
    // key, as a careless import would leave it.
    let ctx = cosigner_kms::context(&module).unwrap();
    let session = ctx.open_rw_session(token.slot()).unwrap();
    let id = [0x11; 16];
    let mut private = planted_key_template(KEY, &id, false, true);
    private.push(Attribute::Sign(true));
    session
        .generate_key_pair(
            &cryptoki::mechanism::Mechanism::EccKeyPairGen,
            &[
                Attribute::Token(true),
                Attribute::Verify(true),
                Attribute::EcParams(cosigner_kms::P384_EC_PARAMS.to_vec()),
                Attribute::Label(KEY.as_bytes().to_vec()),
                Attribute::Id(id.to_vec()),
            ],
            &private,
        )
        .unwrap();
    let err = token.p384_signing_key(KEY).unwrap_err();
    assert!(
        matches!(
            &err,
            KmsError::KeyNotProtected {
                label,
                what: "P-384 private key",
                sensitive: false,
                extractable: true,
            } if label == KEY
        ),
        "{err:?}"
    );
}

#[test]
fn private_key_value_cannot_be_read_through_pkcs11() {
    let (_hsm, module, token) = token_for_this_process(LABEL);
    let _key = token.generate_p384_signing_key(KEY).unwrap();

    // Go around cosigner-kms: a raw session on the (logged-in) token, as any code in the process
    // could open.
    let session = raw_session(&module, &token, false);
    let private = find_key(&session, ObjectClass::PRIVATE_KEY, KeyType::EC, KEY);

    // C_GetAttributeValue answers CKR_ATTRIBUTE_SENSITIVE for CKA_VALUE, so reading it yields
    // nothing ...
    let attrs = assert_value_unreadable(&session, private, &[AttributeType::Sign], "private key");
    assert!(attrs.contains(&Attribute::Sign(true)));
    // ... and the key cannot be loosened after the fact: the key is not modifiable (so no
    // CKA_DERIVE for ECDH) nor copyable.
    assert_cannot_loosen(&session, private, &[Attribute::Derive(true)]);
}

#[test]
fn key_is_found_again_from_a_fresh_open_and_another_thread() {
    let (_hsm, module) = softhsm();
    let public = {
        let token = init_token(&module);
        let key = token.generate_p384_signing_key(KEY).unwrap();
        key.public_key_sec1().to_vec()
    };

    let token = Token::open(&module, LABEL, &Pin::new(USER_PIN)).unwrap();
    let key = token.p384_signing_key(KEY).unwrap();
    assert_eq!(key.public_key_sec1(), public.as_slice());
    verify(
        &key,
        b"same thread",
        &key.sign_sha384(b"same thread").unwrap(),
    );

    // A new thread opens its own session and finds the key handle itself.
    let threads: Vec<_> = (0..4)
        .map(|i| {
            let key = key.clone();
            std::thread::spawn(move || {
                let msg = format!("thread {i}");
                for _ in 0..10 {
                    let sig = key.sign_sha384(msg.as_bytes()).unwrap();
                    verify(&key, msg.as_bytes(), &sig);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn signing_after_the_key_is_destroyed_fails_cleanly() {
    let (_hsm, module, token) = token_for_this_process(LABEL);
    let key = token.generate_p384_signing_key(KEY).unwrap();
    key.sign_sha384(b"before").unwrap();

    // Destroy the private key behind cosigner-kms's back: the cached handle goes stale.
    let session = raw_session(&module, &token, true);
    let classes = [ObjectClass::PRIVATE_KEY, ObjectClass::PUBLIC_KEY];
    destroy_objects(&session, &classes, KEY);
    let err = key.sign_sha384(b"after").unwrap_err();
    assert!(matches!(err, KmsError::KeyNotFound { .. }), "{err:?}");

    // A new key under the same label is picked up by a fresh lookup.
    let new_key = token.generate_p384_signing_key(KEY).unwrap();
    assert_ne!(new_key.public_key_sec1(), key.public_key_sec1());
    verify(&new_key, b"new", &new_key.sign_sha384(b"new").unwrap());
}

#[test]
fn pin_from_file_trims_one_newline_and_refuses_empty() {
    let (hsm, module) = softhsm();
    let dir = hsm.dir();
    let so = dir.join("so.pin");
    let user = dir.join("user.pin");
    std::fs::write(&so, format!("{SO_PIN}\n")).unwrap();
    std::fs::write(&user, format!("{USER_PIN}\r\n")).unwrap();
    let token = Token::init(
        &module,
        LABEL,
        &Pin::from_file(&so).unwrap(),
        &Pin::from_file(&user).unwrap(),
    )
    .unwrap();
    drop(token);
    // The PINs on the token are the ones without the newline.
    Token::open(&module, LABEL, &Pin::new(USER_PIN)).unwrap();

    for (name, contents) in [("empty", ""), ("newline-only", "\n"), ("crlf-only", "\r\n")] {
        let path = dir.join(name);
        std::fs::write(&path, contents).unwrap();
        let err = Pin::from_file(&path).unwrap_err();
        assert!(matches!(err, KmsError::PinSource { .. }), "{name}: {err:?}");
    }
    let err = Pin::from_file(&dir.join("missing")).unwrap_err();
    assert!(matches!(err, KmsError::PinSource { .. }), "{err:?}");
    let bad = dir.join("not-utf8");
    std::fs::write(&bad, [0xff, 0xfe, b'\n']).unwrap();
    assert!(matches!(
        Pin::from_file(&bad).unwrap_err(),
        KmsError::PinSource { .. }
    ));
}

#[test]
fn pin_from_env_refuses_missing_variable() {
    let (_hsm, _module) = softhsm();
    let err = Pin::from_env("COSIGNER_TEST_SURELY_UNSET_PIN_VARIABLE").unwrap_err();
    assert!(
        matches!(&err, KmsError::PinSource { source_name, .. } if source_name == "$COSIGNER_TEST_SURELY_UNSET_PIN_VARIABLE"),
        "{err:?}"
    );
    // install_env_for_this_process set SOFTHSM2_CONF: a present, non-empty variable is accepted.
    Pin::from_env("SOFTHSM2_CONF").unwrap();
}

#[test]
fn pin_debug_is_redacted() {
    let pin = Pin::new("123456-secret");
    let shown = format!("{pin:?}");
    assert_eq!(shown, "Pin(<redacted>)");
    assert_eq!(format!("{pin:#?}"), "Pin(<redacted>)");
}

#[test]
fn a_second_module_in_the_same_process_is_refused() {
    let (_hsm, module, _token) = token_for_this_process(LABEL);
    let other = PathBuf::from("/usr/lib/other-pkcs11-module.so");
    let err = cosigner_kms::context(&other).unwrap_err();
    assert!(
        matches!(&err, KmsError::ModuleMismatch { requested, .. } if requested == &other),
        "{err:?}"
    );
    // The loaded one is still handed out.
    cosigner_kms::context(&module).unwrap();
}
