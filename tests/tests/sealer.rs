//! `cosigner_kms::Pkcs11Sealer` against a real SoftHSM token: sealed blobs open only under the
//! same key and the same context, and every byte of a blob is covered. Run with `cargo nextest run`
//! (one process per test, one SoftHSM per test).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::Path;

use cosigner_kms::{
    KmsError, Pin, Pkcs11Sealer, SEAL_FORMAT_VERSION, SEAL_HEADER_LEN, SEAL_IV_LEN,
    SEAL_KEY_ID_LEN, SEAL_MIN_LEN, SEAL_TAG_LEN, SealContext, Sealer, Token,
};
use cosigner_tests::SoftHsm;
use cosigner_tests::pkcs11::{
    USER_PIN, assert_cannot_loosen, assert_generated_on_token, assert_label_error,
    assert_value_unreadable, destroy_objects, find, find_key, init_token, planted_key_template,
    raw_session, softhsm_for_this_process as softhsm, token_for_this_process,
};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass};

const LABEL: &str = "cosigner-test";
const OTHER_LABEL: &str = "cosigner-other";
const KEY: &str = "seal-aes256";
const SECRET: &[u8] = b"a FROST key package: 136 bytes in real life, secret in every life";

const CTX: SealContext = SealContext::new("frost-key-package", [0x42; 16], 2, 0);

fn sealer(module: &Path) -> (Token, Pkcs11Sealer) {
    let token = init_token(module, LABEL);
    let sealer = token.generate_aes_sealing_key(KEY).unwrap();
    (token, sealer)
}

/// This test's SoftHSM (keep it), a token with a fresh sealing key, and [`SECRET`] sealed under
/// [`CTX`] by that key.
fn sealed_secret() -> (SoftHsm, Token, Pkcs11Sealer, Vec<u8>) {
    let (hsm, module) = softhsm();
    let (token, sealer) = sealer(&module);
    let blob = sealer.seal(&CTX, SECRET).unwrap();
    (hsm, token, sealer, blob)
}

fn assert_unseal(result: cosigner_kms::Result<zeroize::Zeroizing<Vec<u8>>>, what: &str) {
    match result {
        Err(KmsError::Unseal { reason }) => {
            assert!(reason.contains("authentication failed"), "{what}: {reason}");
        }
        Err(other) => panic!("{what}: expected Unseal, got {other:?}"),
        Ok(_) => panic!("{what}: the blob opened"),
    }
}

#[test]
fn seal_then_open_round_trips() {
    let (_hsm, _token, sealer, blob) = sealed_secret();
    assert_eq!(blob.len(), SEAL_HEADER_LEN + SECRET.len() + SEAL_TAG_LEN);
    assert_eq!(blob[0], SEAL_FORMAT_VERSION);
    assert_eq!(blob[1..1 + SEAL_KEY_ID_LEN], sealer.key_id());
    // The plaintext does not appear in the blob.
    assert!(!blob.windows(16).any(|w| w == &SECRET[..16]));
    assert_eq!(sealer.open(&CTX, &blob).unwrap().as_slice(), SECRET);

    // A fresh IV per seal: the same plaintext seals to different blobs, both open.
    let again = sealer.seal(&CTX, SECRET).unwrap();
    assert_ne!(
        blob[1 + SEAL_KEY_ID_LEN..SEAL_HEADER_LEN],
        again[1 + SEAL_KEY_ID_LEN..SEAL_HEADER_LEN]
    );
    assert_ne!(blob, again);
    assert_eq!(sealer.open(&CTX, &again).unwrap().as_slice(), SECRET);

    // The empty plaintext is a valid (tag-only) blob.
    let empty = sealer.seal(&CTX, b"").unwrap();
    assert_eq!(empty.len(), SEAL_MIN_LEN);
    assert!(sealer.open(&CTX, &empty).unwrap().is_empty());
}

#[test]
fn changing_any_context_field_makes_open_fail() {
    let (_hsm, _token, sealer, blob) = sealed_secret();
    let others = [
        (
            "purpose",
            SealContext {
                purpose: "frost-public-key-package",
                ..CTX
            },
        ),
        (
            "wallet id",
            SealContext {
                wallet_id: [0x43; 16],
                ..CTX
            },
        ),
        ("party", SealContext { party: 3, ..CTX }),
        ("epoch", SealContext { epoch: 1, ..CTX }),
    ];
    for (field, ctx) in others {
        assert_unseal(sealer.open(&ctx, &blob), field);
    }
    // The right context still opens it.
    assert_eq!(sealer.open(&CTX, &blob).unwrap().as_slice(), SECRET);
}

#[test]
fn a_flipped_bit_in_any_region_makes_open_fail() {
    let (_hsm, _token, sealer, blob) = sealed_secret();
    let iv_at = 1 + SEAL_KEY_ID_LEN;
    let tag_at = blob.len() - SEAL_TAG_LEN;

    let flipped = |at: usize, bit: u8| {
        let mut b = blob.clone();
        b[at] ^= 1 << bit;
        b
    };

    // Version and key id are checked before the token is asked, with precise errors.
    let err = sealer.open(&CTX, &flipped(0, 1)).unwrap_err();
    assert!(
        matches!(
            err,
            KmsError::SealedBlobVersion {
                expected: SEAL_FORMAT_VERSION,
                actual: 3
            }
        ),
        "{err:?}"
    );
    for at in [1, 17, iv_at - 1] {
        let err = sealer.open(&CTX, &flipped(at, 0)).unwrap_err();
        assert!(
            matches!(err, KmsError::SealedBlobKeyMismatch { expected, .. } if expected == sealer.key_id()),
            "key id byte {at}: {err:?}"
        );
    }
    // IV, ciphertext and tag: the token's GCM check refuses.
    for at in [iv_at, iv_at + SEAL_IV_LEN - 1] {
        assert_unseal(sealer.open(&CTX, &flipped(at, 7)), &format!("iv byte {at}"));
    }
    for at in [SEAL_HEADER_LEN, SEAL_HEADER_LEN + 10, tag_at - 1] {
        assert_unseal(
            sealer.open(&CTX, &flipped(at, 3)),
            &format!("ciphertext byte {at}"),
        );
    }
    for at in [tag_at, blob.len() - 1] {
        assert_unseal(
            sealer.open(&CTX, &flipped(at, 5)),
            &format!("tag byte {at}"),
        );
    }
    // A byte appended or the tag cut short.
    let mut longer = blob.clone();
    longer.push(0);
    assert_unseal(sealer.open(&CTX, &longer), "byte appended");
    assert_unseal(sealer.open(&CTX, &blob[..blob.len() - 1]), "byte removed");
    // After all that, the session is still usable.
    assert_eq!(sealer.open(&CTX, &blob).unwrap().as_slice(), SECRET);
}

#[test]
fn truncated_and_empty_blobs_are_too_short() {
    let (_hsm, _token, sealer, blob) = sealed_secret();
    for len in [0, 1, SEAL_HEADER_LEN, SEAL_MIN_LEN - 1] {
        let err = sealer.open(&CTX, &blob[..len]).unwrap_err();
        assert!(
            matches!(err, KmsError::SealedBlobTooShort { len: l, min: SEAL_MIN_LEN } if l == len),
            "{len}: {err:?}"
        );
    }
    // Long enough for the format, but the ciphertext and tag are cut: the tag check fails.
    assert_unseal(sealer.open(&CTX, &blob[..SEAL_MIN_LEN]), "cut to minimum");
}

#[test]
fn a_blob_sealed_by_another_tokens_key_is_a_key_id_mismatch() {
    let (_hsm, module) = softhsm();
    let (_token, sealer) = sealer(&module);
    let other_token = init_token(&module, OTHER_LABEL);
    // Same key label, another token: another key and another key id.
    let other = other_token.generate_aes_sealing_key(KEY).unwrap();
    assert_ne!(other.key_id(), sealer.key_id());

    let foreign = other.seal(&CTX, SECRET).unwrap();
    let err = sealer.open(&CTX, &foreign).unwrap_err();
    assert!(
        matches!(
            err,
            KmsError::SealedBlobKeyMismatch { expected, actual }
                if expected == sealer.key_id() && actual == other.key_id()
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains(&hex::encode(other.key_id())),
        "{err}"
    );

    // Rewriting the key id to ours gets past the precheck, not past the tag.
    let mut relabelled = foreign.clone();
    relabelled[1..1 + SEAL_KEY_ID_LEN].copy_from_slice(&sealer.key_id());
    assert_unseal(
        sealer.open(&CTX, &relabelled),
        "foreign blob with our key id",
    );
    // Each opens its own.
    assert_eq!(other.open(&CTX, &foreign).unwrap().as_slice(), SECRET);
}

#[test]
fn sealing_key_is_sensitive_and_its_value_cannot_be_read() {
    let (_hsm, module) = softhsm();
    let (token, sealer) = sealer(&module);
    assert_generated_on_token(sealer.protection().unwrap());

    // Go around cosigner-kms: a raw session on the logged-in token, as any code in the process
    // could open.
    let session = raw_session(&module, &token, true);
    let key = find_key(&session, ObjectClass::SECRET_KEY, KeyType::AES, KEY);
    let also = [
        AttributeType::ValueLen,
        AttributeType::Token,
        AttributeType::Private,
        AttributeType::Encrypt,
        AttributeType::Decrypt,
        AttributeType::Wrap,
        AttributeType::Unwrap,
        AttributeType::Derive,
        AttributeType::Sign,
        AttributeType::Modifiable,
        AttributeType::Copyable,
    ];
    let attrs = assert_value_unreadable(&session, key, &also, "sealing key");
    for expected in [
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Encrypt(true),
        Attribute::Decrypt(true),
        Attribute::Wrap(false),
        Attribute::Unwrap(false),
        Attribute::Derive(false),
        Attribute::Sign(false),
        Attribute::Modifiable(false),
        Attribute::Copyable(false),
    ] {
        assert!(attrs.contains(&expected), "{expected:?} not in {attrs:?}");
    }
    assert!(
        attrs
            .iter()
            .any(|a| matches!(a, Attribute::ValueLen(l) if usize::from(*l) == 32)),
        "{attrs:?}"
    );
    // The key cannot be loosened after the fact, nor copied.
    let also = [Attribute::Wrap(true), Attribute::Derive(true)];
    assert_cannot_loosen(&session, key, &also);
}

#[test]
fn sealing_key_is_found_again_after_reopening_the_token() {
    let (_hsm, module) = softhsm();
    let (key_id, blob) = {
        let (_token, sealer) = sealer(&module);
        (sealer.key_id(), sealer.seal(&CTX, SECRET).unwrap())
    };
    // Every Token is gone: the token is logged out. Open it again, as a restarted process would.
    let token = Token::open(&module, LABEL, &Pin::new(USER_PIN)).unwrap();
    let sealer = token.aes_sealing_key(KEY).unwrap();
    assert_eq!(sealer.key_id(), key_id);
    assert_eq!(sealer.label(), KEY);
    assert_eq!(sealer.open(&CTX, &blob).unwrap().as_slice(), SECRET);
    // `_or_generate` finds it too rather than making a second one.
    let same = token.aes_sealing_key_or_generate(KEY).unwrap();
    assert_eq!(same.key_id(), key_id);
}

#[test]
fn key_lookup_errors_are_precise() {
    let (_hsm, _, token) = token_for_this_process(LABEL);
    let err = token.aes_sealing_key(KEY).unwrap_err();
    assert_label_error(&err, "KeyNotFound", KEY);
    let err = token.aes_sealing_key("").unwrap_err();
    assert!(matches!(err, KmsError::InvalidLabel { .. }), "{err:?}");

    let made = token.aes_sealing_key_or_generate(KEY).unwrap();
    let err = token.generate_aes_sealing_key(KEY).unwrap_err();
    assert_label_error(&err, "KeyExists", KEY);
    assert_eq!(token.aes_sealing_key(KEY).unwrap().key_id(), made.key_id());

    // A P-384 key under the same label is not an AES key and does not get in the way.
    token.generate_p384_signing_key("p384-and-aes").unwrap();
    let err = token.aes_sealing_key("p384-and-aes").unwrap_err();
    assert!(matches!(err, KmsError::KeyNotFound { .. }), "{err:?}");
    let aes = token.generate_aes_sealing_key("p384-and-aes").unwrap();
    assert_eq!(
        aes.open(&CTX, &aes.seal(&CTX, SECRET).unwrap())
            .unwrap()
            .as_slice(),
        SECRET
    );
}

/// Generates an AES-256 key labelled `label` behind cosigner-kms's back (as an operator's tool
/// might), with the given `CKA_SENSITIVE` and `CKA_EXTRACTABLE`, and otherwise what a sealing key
/// needs (`CKA_ID`, encrypt and decrypt), so only its protection is wrong.
fn plant_aes_key(module: &Path, token: &Token, label: &str, sensitive: bool, extractable: bool) {
    let mut template = planted_key_template(label, &[0x5e; 16], sensitive, extractable);
    template.extend([
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::ValueLen(cryptoki::types::Ulong::from(32)),
        Attribute::Encrypt(true),
        Attribute::Decrypt(true),
    ]);
    raw_session(module, token, true)
        .generate_key(&cryptoki::mechanism::Mechanism::AesKeyGen, &template)
        .unwrap();
}

#[test]
fn an_existing_sealing_key_that_can_leave_the_token_is_refused() {
    let (_hsm, module, token) = token_for_this_process(LABEL);
    // (sensitive, extractable): readable and wrappable, wrappable only, readable only.
    for (n, (sensitive, extractable)) in [(false, true), (true, true), (false, false)]
        .into_iter()
        .enumerate()
    {
        let label = format!("{KEY}-{n}");
        plant_aes_key(&module, &token, &label, sensitive, extractable);
        // Both ways the enclave may take at start refuse it, naming the attributes; the second
        // does not quietly generate another key beside it either.
        for err in [
            token.aes_sealing_key(&label).unwrap_err(),
            token.aes_sealing_key_or_generate(&label).unwrap_err(),
        ] {
            match &err {
                KmsError::KeyNotProtected {
                    label: l,
                    what,
                    sensitive: s,
                    extractable: e,
                } => {
                    assert_eq!(l, &label);
                    assert_eq!(*what, "AES sealing key");
                    assert_eq!((*s, *e), (sensitive, extractable));
                }
                other => panic!("{label}: expected KeyNotProtected, got {other:?}"),
            }
            assert!(err.to_string().contains("can leave the token"), "{err}");
        }
        let session = raw_session(&module, &token, false);
        let keys = find(
            &session,
            &[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::Label(label.as_bytes().to_vec()),
            ],
        );
        assert_eq!(keys.len(), 1, "{label}: a second key was generated");
    }
    // The same attributes set right (but by another tool, so CKA_ALWAYS_SENSITIVE and
    // CKA_NEVER_EXTRACTABLE are whatever that tool made them) are accepted and seal.
    plant_aes_key(&module, &token, "planted-ok", true, false);
    let sealer = token.aes_sealing_key("planted-ok").unwrap();
    assert!(sealer.protection().unwrap().cannot_leave_token());
    let blob = sealer.seal(&CTX, SECRET).unwrap();
    assert_eq!(sealer.open(&CTX, &blob).unwrap().as_slice(), SECRET);
}

#[test]
fn opening_after_the_key_is_destroyed_fails_cleanly() {
    let (_hsm, module) = softhsm();
    let (token, sealer) = sealer(&module);
    let blob = sealer.seal(&CTX, SECRET).unwrap();
    let session = raw_session(&module, &token, true);
    destroy_objects(&session, &[ObjectClass::SECRET_KEY], KEY);
    // The cached handle is stale: the key is looked up again, and is not there.
    let err = sealer.open(&CTX, &blob).unwrap_err();
    assert!(matches!(err, KmsError::KeyNotFound { .. }), "{err:?}");
    let err = sealer.seal(&CTX, SECRET).unwrap_err();
    assert!(matches!(err, KmsError::KeyNotFound { .. }), "{err:?}");
}

#[test]
fn four_threads_seal_and_open_concurrently() {
    let (_hsm, module) = softhsm();
    let (_token, sealer) = sealer(&module);
    let threads: Vec<_> = (0..4u16)
        .map(|t| {
            let sealer = sealer.clone();
            std::thread::spawn(move || {
                let mut blobs = Vec::new();
                for i in 0..25u64 {
                    let ctx = SealContext::new("frost-key-package", [t as u8; 16], t, i);
                    let secret = format!("thread {t} secret {i}").into_bytes();
                    let blob = sealer.seal(&ctx, &secret).unwrap();
                    assert_eq!(sealer.open(&ctx, &blob).unwrap().as_slice(), secret);
                    blobs.push((ctx, secret, blob));
                }
                blobs
            })
        })
        .collect();
    let all: Vec<_> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    assert_eq!(all.len(), 100);
    // Blobs sealed on other threads (other sessions) open on this one; none under another context.
    for (ctx, secret, blob) in &all {
        assert_eq!(
            sealer.open(ctx, blob).unwrap().as_slice(),
            secret.as_slice()
        );
    }
    let (ctx, _, blob) = &all[0];
    let wrong = SealContext {
        epoch: ctx.epoch + 1,
        ..ctx.clone()
    };
    assert_unseal(sealer.open(&wrong, blob), "other epoch");
}
