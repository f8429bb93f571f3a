//! Sealing: authenticated encryption of secrets (FROST key packages) that are stored outside the
//! trust boundary, with the parent.
//!
//! The parent keeps every sealed blob and may alter, drop, swap or replay any of them. Sealing makes
//! each blob useless anywhere but where it belongs: it is AES-256-GCM under a key that never leaves
//! the token, and the GCM additional authenticated data (AAD) says *what* the blob is, so a blob
//! stored for one wallet, party, epoch or purpose does not open as another's.
//!
//! # Blob format (version 1)
//!
//! ```text
//! version (1 byte, = SEAL_FORMAT_VERSION)
//! key_id  (32 bytes, Sealer::key_id() of the sealing key)
//! iv      (12 bytes, the GCM IV the encryption used)
//! ciphertext || tag  (plaintext length + 16 bytes: the 128-bit GCM tag is the last 16)
//! ```
//!
//! The version and key id are read before the token is asked anything: a blob of another version,
//! or sealed under another key, is refused with [`KmsError::SealedBlobVersion`] or
//! [`KmsError::SealedBlobKeyMismatch`], which name the cause exactly; a blob shorter than
//! [`SEAL_MIN_LEN`] is [`KmsError::SealedBlobTooShort`]. Both fields are also inside the AAD, so
//! editing them in the blob does not help an attacker either.
//!
//! # AAD
//!
//! [`seal_aad`]: a canonical encoding in which every field is a 4-byte big-endian length followed
//! by its bytes, in this order: the domain tag `"cosigner-seal-v1"`, the version (1 byte), the key
//! id (32), the purpose (UTF-8), the wallet id (16), the party (2, big-endian) and the epoch (8,
//! big-endian). Length prefixes make the encoding injective: no two contexts share an AAD.
//!
//! # IV
//!
//! A fresh 96-bit IV per seal, drawn from the token (`C_GenerateRandom`). Some HSMs (AWS
//! CloudHSM) ignore the caller's IV, choose one themselves and write it back into
//! `CK_GCM_PARAMS.pIv`; the IV stored in the blob is therefore read back from the mechanism's
//! parameters *after* `C_Encrypt`, never assumed to be the one passed in. With random 96-bit IVs,
//! NIST SP 800-38D §8.3 bounds one key to 2^32 seals; cosigner seals a handful of blobs per wallet
//! and epoch, far below that.
//!
//! # Key
//!
//! An AES-256 secret key generated on the token (`CKM_AES_KEY_GEN`, PKCS#11 v2.40 Current
//! Mechanisms §2.8.3): token object, private, sensitive, not extractable, not modifiable, not
//! copyable, usable to encrypt and decrypt only (no wrap, unwrap, derive, sign). Its
//! [`Sealer::key_id`] is the SHA-256 of the token label, the key label and the key's `CKA_ID`
//! (length-prefixed, under the domain tag `"cosigner-seal-key-id-v1"`): it names the key without
//! revealing anything about it, and changes if the key is replaced by another with the same label.
//!
//! Decryption failures: SoftHSM reports a GCM tag that does not verify as `CKR_GENERAL_ERROR`, other
//! tokens in other ways; all of them become [`KmsError::Unseal`] (see `error::unseal`).
//!
//! Threading: the same per-thread sessions and handle cache as [`crate::P384SigningKey`]: a seal
//! costs `C_GenerateRandom` + `C_EncryptInit` + two `C_Encrypt` (length, then data), no lookup.

use std::fmt;

use cryptoki::error::RvError;
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass};
use cryptoki::types::Ulong;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::error::{KmsError, Result, rv, unseal};
use crate::p384::{KeyProtection, TokenKey};
use crate::session::{Ck, Fail, with_session};
use crate::token::Token;

/// Format version of sealed blobs written by this build (the first byte of every blob).
pub const SEAL_FORMAT_VERSION: u8 = 1;
/// Domain tag at the start of every AAD: separates cosigner's seals from any other use of the key.
pub const SEAL_DOMAIN: &str = "cosigner-seal-v1";
/// Length of a sealing key id.
pub const SEAL_KEY_ID_LEN: usize = 32;
/// Length of the GCM IV stored in a blob (96 bits, the length GCM is designed for).
pub const SEAL_IV_LEN: usize = 12;
/// Length of the GCM tag at the end of a blob (128 bits).
pub const SEAL_TAG_LEN: usize = 16;
/// Length of the clear header: version, key id, IV.
pub const SEAL_HEADER_LEN: usize = 1 + SEAL_KEY_ID_LEN + SEAL_IV_LEN;
/// Shortest valid blob: the header and the tag of an empty plaintext.
pub const SEAL_MIN_LEN: usize = SEAL_HEADER_LEN + SEAL_TAG_LEN;

/// Domain tag of the key id hash.
const KEY_ID_DOMAIN: &str = "cosigner-seal-key-id-v1";
/// AES-256 key length in bytes (`CKA_VALUE_LEN`).
const AES_256_KEY_LEN: usize = 32;
/// Length of the random `CKA_ID` given to a new sealing key.
const CKA_ID_LEN: u32 = 16;

/// Seals secrets for storage outside the trust boundary. AEAD: the AAD binds what the blob is.
///
/// Implementations must refuse to open a blob under any [`SealContext`] other than the one it was
/// sealed with, and any blob sealed under another key.
pub trait Sealer: Send + Sync {
    /// Encrypts `plaintext` for `aad`; returns the self-describing blob (format in the module
    /// docs).
    fn seal(&self, aad: &SealContext, plaintext: &[u8]) -> Result<Vec<u8>>;

    /// Decrypts a blob made by [`Sealer::seal`] with the same key and context. The plaintext is
    /// zeroized when dropped.
    fn open(&self, aad: &SealContext, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>>;

    /// Identifies the sealing key; written into, and bound by, every blob.
    fn key_id(&self) -> [u8; SEAL_KEY_ID_LEN];
}

/// What a sealed blob is: bound as AAD so a blob cannot be swapped for another wallet's, party's
/// or epoch's, nor for a blob of another purpose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealContext {
    /// What the plaintext is, e.g. `"frost-key-package"`.
    pub purpose: &'static str,
    /// The wallet it belongs to.
    pub wallet_id: [u8; 16],
    /// The party whose secret it is.
    pub party: u16,
    /// The share epoch (0 at creation, +1 per refresh).
    pub epoch: u64,
}

impl SealContext {
    /// A context.
    pub const fn new(purpose: &'static str, wallet_id: [u8; 16], party: u16, epoch: u64) -> Self {
        Self {
            purpose,
            wallet_id,
            party,
            epoch,
        }
    }
}

/// The AAD of a blob of format `version`, sealed under `key_id`, for `ctx` (encoding in the module
/// docs). Every [`Sealer`] backend uses this encoding.
pub fn seal_aad(version: u8, key_id: &[u8; SEAL_KEY_ID_LEN], ctx: &SealContext) -> Vec<u8> {
    let mut aad = Vec::with_capacity(128);
    for field in [
        SEAL_DOMAIN.as_bytes(),
        &[version],
        key_id,
        ctx.purpose.as_bytes(),
        &ctx.wallet_id,
        &ctx.party.to_be_bytes(),
        &ctx.epoch.to_be_bytes(),
    ] {
        put_field(&mut aad, field);
    }
    aad
}

/// Appends `field` with its 4-byte big-endian length. Fields longer than 4 GiB cannot occur (the
/// purpose is a `&'static str` in the program, the rest are fixed-size); their length saturates.
fn put_field(out: &mut Vec<u8>, field: &[u8]) {
    let len = u32::try_from(field.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(field);
}

/// A blob's parts, after the checks that need no token.
struct Parsed<'a> {
    iv: [u8; SEAL_IV_LEN],
    ciphertext_and_tag: &'a [u8],
}

/// Splits a blob and checks version, length and key id, in that order (a blob of another version
/// may have another layout, so its length says nothing).
fn parse<'a>(sealed: &'a [u8], expected_key_id: &[u8; SEAL_KEY_ID_LEN]) -> Result<Parsed<'a>> {
    let too_short = || KmsError::SealedBlobTooShort {
        len: sealed.len(),
        min: SEAL_MIN_LEN,
    };
    let (&version, rest) = sealed.split_first().ok_or_else(too_short)?;
    if version != SEAL_FORMAT_VERSION {
        return Err(KmsError::SealedBlobVersion {
            expected: SEAL_FORMAT_VERSION,
            actual: version,
        });
    }
    if sealed.len() < SEAL_MIN_LEN {
        return Err(too_short());
    }
    let (key_id, rest) = rest
        .split_at_checked(SEAL_KEY_ID_LEN)
        .ok_or_else(too_short)?;
    let (iv, ciphertext_and_tag) = rest.split_at_checked(SEAL_IV_LEN).ok_or_else(too_short)?;
    let key_id: [u8; SEAL_KEY_ID_LEN] = key_id.try_into().map_err(|_| too_short())?;
    if &key_id != expected_key_id {
        return Err(KmsError::SealedBlobKeyMismatch {
            expected: *expected_key_id,
            actual: key_id,
        });
    }
    Ok(Parsed {
        iv: iv.try_into().map_err(|_| too_short())?,
        ciphertext_and_tag,
    })
}

/// How an ambiguous AES key lookup names the key.
const AES_KEY_KIND: &str = "AES secret key";

/// [`Sealer`] backed by an AES-256 key on a PKCS#11 token (`CKM_AES_GCM`, 96-bit IV, 128-bit tag).
/// Cheap to clone; `Send + Sync`.
#[derive(Clone)]
pub struct Pkcs11Sealer {
    key: TokenKey,
    key_id: [u8; SEAL_KEY_ID_LEN],
}

impl Token {
    /// Generates an AES-256 sealing key labelled `label` on the token, with a random `CKA_ID`: a
    /// token object, private, sensitive, not extractable, not modifiable, not copyable, that can
    /// only encrypt and decrypt.
    ///
    /// Fails with [`KmsError::KeyExists`] if an AES key with this label exists, and refuses (and
    /// destroys) the key if the token did not apply the protection asked for.
    pub fn generate_aes_sealing_key(&self, label: &str) -> Result<Pkcs11Sealer> {
        let existing = aes_key_template(label);
        crate::p384::generate_labelled(self, label, &existing, CKA_ID_LEN, |ts, id| {
            // Kept in the token: in particular nobody can later turn on CKA_WRAP or CKA_DERIVE.
            let mut template = aes_key_template(label);
            template.extend(crate::p384::kept_in_token());
            template.extend([
                Attribute::ValueLen(Ulong::from(32)),
                Attribute::Encrypt(true),
                Attribute::Decrypt(true),
                Attribute::Wrap(false),
                Attribute::Unwrap(false),
                Attribute::Derive(false),
                Attribute::Sign(false),
                Attribute::Verify(false),
                Attribute::Id(id.clone()),
            ]);
            let key = ts
                .session
                .generate_key(&Mechanism::AesKeyGen, &template)
                .ck("C_GenerateKey")?;
            let checked = crate::p384::check_generated(ts, key, "secret key", label);
            crate::p384::destroy_unless_ok(ts, &[key], checked)?;
            ts.remember(label, &id, key);
            Ok(Pkcs11Sealer::new(self.clone(), label, id))
        })
    }

    /// Finds the AES sealing key labelled `label`. [`KmsError::KeyNotFound`] if there is none,
    /// [`KmsError::WrongKey`] if it is not a 256-bit key that may encrypt and decrypt,
    /// [`KmsError::KeyNotProtected`] if it is not `CKA_SENSITIVE` or is `CKA_EXTRACTABLE`.
    ///
    /// # Security
    /// A key already on the token may not be one [`Token::generate_aes_sealing_key`] made: one
    /// imported by hand, or generated by another tool with the token's defaults, may be readable
    /// or wrappable. Sealed blobs are only as secret as this key, so such a key is refused here,
    /// at start, before anything is sealed with it ([`KeyProtection::cannot_leave_token`] says why
    /// `CKA_ALWAYS_SENSITIVE` and `CKA_NEVER_EXTRACTABLE` are not required;
    /// [`Pkcs11Sealer::protection`] reports them).
    pub fn aes_sealing_key(&self, label: &str) -> Result<Pkcs11Sealer> {
        crate::p384::check_key_label(label)?;
        with_session(self, |ts| {
            let s = &ts.session;
            let key = crate::p384::only_one(
                s.find_objects(&aes_key_template(label))
                    .ck("C_FindObjects")?,
                label,
                AES_KEY_KIND,
            )?;
            let attrs = s
                .get_attributes(
                    key,
                    &[
                        AttributeType::Id,
                        AttributeType::ValueLen,
                        AttributeType::Encrypt,
                        AttributeType::Decrypt,
                    ],
                )
                .ck("C_GetAttributeValue")?;
            let (mut id, mut len, mut encrypt, mut decrypt) = (None, None, false, false);
            for attr in attrs {
                match attr {
                    Attribute::Id(v) => id = Some(v),
                    Attribute::ValueLen(v) => len = Some(usize::from(v)),
                    Attribute::Encrypt(v) => encrypt = v,
                    Attribute::Decrypt(v) => decrypt = v,
                    _ => {}
                }
            }
            let wrong = |reason: String| {
                Fail::Kms(KmsError::WrongKey {
                    label: label.to_owned(),
                    reason,
                })
            };
            let id = id.ok_or_else(|| wrong("the key has no CKA_ID".into()))?;
            if len != Some(AES_256_KEY_LEN) {
                return Err(wrong(format!(
                    "not an AES-256 key (CKA_VALUE_LEN {len:?}, expected {AES_256_KEY_LEN})"
                )));
            }
            if !(encrypt && decrypt) {
                return Err(wrong("the key may not both encrypt and decrypt".into()));
            }
            crate::p384::require_protected(ts, key, label, "AES sealing key")?;
            ts.remember(label, &id, key);
            Ok(Pkcs11Sealer::new(self.clone(), label, id))
        })
    }

    /// The AES sealing key labelled `label`, generated first if the token has none.
    ///
    /// If another process generates the key at the same moment, the one that lost the race finds
    /// the winner's key.
    pub fn aes_sealing_key_or_generate(&self, label: &str) -> Result<Pkcs11Sealer> {
        match self.aes_sealing_key(label) {
            Err(KmsError::KeyNotFound { .. }) => match self.generate_aes_sealing_key(label) {
                Err(KmsError::KeyExists { .. }) => self.aes_sealing_key(label),
                other => other,
            },
            other => other,
        }
    }
}

impl Pkcs11Sealer {
    fn new(token: Token, label: &str, id: Vec<u8>) -> Self {
        let key_id = key_id(token.label(), label, &id);
        Self {
            key: TokenKey::new(token, label, id, aes_key_template, AES_KEY_KIND),
            key_id,
        }
    }

    /// The key's `CKA_LABEL`.
    pub fn label(&self) -> &str {
        &self.key.label
    }

    /// The token holding the key.
    pub fn token(&self) -> &Token {
        &self.key.token
    }

    /// Reads the key's protection attributes from the token.
    pub fn protection(&self) -> Result<KeyProtection> {
        with_session(&self.key.token, |ts| {
            self.key.with_handle(ts, |handle| {
                crate::p384::read_protection(ts, handle, "secret key")
            })
        })
    }
}

impl Sealer for Pkcs11Sealer {
    fn seal(&self, aad: &SealContext, plaintext: &[u8]) -> Result<Vec<u8>> {
        let aad = seal_aad(SEAL_FORMAT_VERSION, &self.key_id, aad);
        let (iv, ciphertext) = with_session(&self.key.token, |ts| {
            self.key.with_handle(ts, |handle| {
                let mut iv = [0u8; SEAL_IV_LEN];
                ts.session
                    .generate_random_slice(&mut iv)
                    .ck("C_GenerateRandom")?;
                let params = GcmParams::new(&mut iv, &aad, tag_bits()).ck("CK_GCM_PARAMS")?;
                let ciphertext = ts
                    .session
                    .encrypt(&Mechanism::AesGcm(params), handle, plaintext)
                    .ck("C_Encrypt")?;
                // `params` pointed into `iv`; a token that picks the IV itself wrote it there.
                Ok((iv, ciphertext))
            })
        })?;
        if ciphertext.len() != plaintext.len() + SEAL_TAG_LEN {
            return Err(KmsError::Pkcs11 {
                operation: "C_Encrypt",
                reason: format!(
                    "AES-GCM returned {} bytes for {} bytes of plaintext; expected ciphertext and \
                     a {SEAL_TAG_LEN}-byte tag",
                    ciphertext.len(),
                    plaintext.len()
                ),
            });
        }
        let mut blob = Vec::with_capacity(SEAL_HEADER_LEN + ciphertext.len());
        blob.push(SEAL_FORMAT_VERSION);
        blob.extend_from_slice(&self.key_id);
        blob.extend_from_slice(&iv);
        blob.extend_from_slice(&ciphertext);
        Ok(blob)
    }

    fn open(&self, aad: &SealContext, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        let parsed = parse(sealed, &self.key_id)?;
        let aad = seal_aad(SEAL_FORMAT_VERSION, &self.key_id, aad);
        let plaintext = with_session(&self.key.token, |ts| {
            self.key.with_handle(ts, |handle| {
                let mut iv = parsed.iv;
                let params = GcmParams::new(&mut iv, &aad, tag_bits()).ck("CK_GCM_PARAMS")?;
                match ts.session.decrypt(
                    &Mechanism::AesGcm(params),
                    handle,
                    parsed.ciphertext_and_tag,
                ) {
                    Ok(plaintext) => Ok(Zeroizing::new(plaintext)),
                    // Stale handles and dead sessions are retried by `with_key` and
                    // `with_session`; anything else is the token's verdict on the blob.
                    Err(e) if retried(rv(&e)) => Err(Fail::Ck("C_Decrypt", e)),
                    Err(e) => Err(Fail::Kms(unseal(e))),
                }
            })
        })?;
        Ok(plaintext)
    }

    fn key_id(&self) -> [u8; SEAL_KEY_ID_LEN] {
        self.key_id
    }
}

impl fmt::Debug for Pkcs11Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkcs11Sealer")
            .field("token", &self.key.token.label())
            .field("label", &self.key.label)
            .field("key_id", &hex::encode(self.key_id))
            .finish()
    }
}

/// The GCM tag length as `CK_GCM_PARAMS.ulTagBits` wants it (`CK_ULONG`, platform-sized).
fn tag_bits() -> Ulong {
    Ulong::from(128)
}

/// Return codes on which a failed `C_Decrypt` is retried rather than judged: the cached handle went
/// stale ([`Fail::is_stale_handle`]) or the session died (the codes `session::with_session`
/// replaces the session on).
fn retried(code: Option<RvError>) -> bool {
    matches!(
        code,
        Some(
            RvError::ObjectHandleInvalid
                | RvError::KeyHandleInvalid
                | RvError::SessionHandleInvalid
                | RvError::SessionClosed
                | RvError::DeviceRemoved
                | RvError::TokenNotPresent
        )
    )
}

/// SHA-256 over the domain tag, the token label, the key label and the `CKA_ID`, each
/// length-prefixed.
fn key_id(token_label: &str, key_label: &str, cka_id: &[u8]) -> [u8; SEAL_KEY_ID_LEN] {
    let mut input = Vec::with_capacity(128);
    for field in [
        KEY_ID_DOMAIN.as_bytes(),
        token_label.as_bytes(),
        key_label.as_bytes(),
        cka_id,
    ] {
        put_field(&mut input, field);
    }
    Sha256::digest(&input).into()
}

/// Search template for the token's AES secret keys labelled `label`.
fn aes_key_template(label: &str) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Label(label.as_bytes().to_vec()),
    ]
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    const CTX: SealContext = SealContext::new("frost-key-package", [0xab; 16], 2, 7);

    #[test]
    fn aad_encoding_is_pinned() {
        let aad = seal_aad(1, &[0x11; 32], &CTX);
        let mut expected = Vec::new();
        expected.extend([0, 0, 0, 16]);
        expected.extend(b"cosigner-seal-v1");
        expected.extend([0, 0, 0, 1, 1]);
        expected.extend([0, 0, 0, 32]);
        expected.extend([0x11; 32]);
        expected.extend([0, 0, 0, 17]);
        expected.extend(b"frost-key-package");
        expected.extend([0, 0, 0, 16]);
        expected.extend([0xab; 16]);
        expected.extend([0, 0, 0, 2, 0, 2]);
        expected.extend([0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 7]);
        assert_eq!(aad, expected);
    }

    #[test]
    fn every_context_field_changes_the_aad() {
        let base = seal_aad(1, &[0; 32], &CTX);
        let variants = [
            seal_aad(2, &[0; 32], &CTX),
            seal_aad(1, &[1; 32], &CTX),
            seal_aad(
                1,
                &[0; 32],
                &SealContext {
                    purpose: "frost-key-packagf",
                    ..CTX
                },
            ),
            seal_aad(
                1,
                &[0; 32],
                &SealContext {
                    wallet_id: [0xac; 16],
                    ..CTX
                },
            ),
            seal_aad(1, &[0; 32], &SealContext { party: 3, ..CTX }),
            seal_aad(1, &[0; 32], &SealContext { epoch: 8, ..CTX }),
        ];
        for v in variants {
            assert_ne!(v, base);
        }
    }

    #[test]
    fn blobs_are_checked_before_the_token_is_asked() {
        let key_id = [5u8; 32];
        let mut blob = vec![SEAL_FORMAT_VERSION];
        blob.extend(key_id);
        blob.extend([0u8; SEAL_IV_LEN + SEAL_TAG_LEN]);
        assert!(parse(&blob, &key_id).is_ok());

        assert!(matches!(
            parse(&[], &key_id),
            Err(KmsError::SealedBlobTooShort { len: 0, .. })
        ));
        assert!(matches!(
            parse(&blob[..SEAL_MIN_LEN - 1], &key_id),
            Err(KmsError::SealedBlobTooShort { .. })
        ));
        let mut other_version = blob.clone();
        other_version[0] = 2;
        assert!(matches!(
            parse(&other_version, &key_id),
            Err(KmsError::SealedBlobVersion {
                expected: 1,
                actual: 2
            })
        ));
        assert!(matches!(
            parse(&[9], &key_id),
            Err(KmsError::SealedBlobVersion { actual: 9, .. })
        ));
        let err = parse(&blob, &[6u8; 32]).err().unwrap();
        assert!(
            matches!(err, KmsError::SealedBlobKeyMismatch { actual, .. } if actual == key_id),
            "{err:?}"
        );
    }

    #[test]
    fn key_ids_separate_their_inputs() {
        let a = key_id("token", "key", &[1, 2]);
        assert_eq!(a, key_id("token", "key", &[1, 2]));
        assert_ne!(a, key_id("tokenk", "ey", &[1, 2]));
        assert_ne!(a, key_id("token", "key", &[1, 3]));
        assert_ne!(a, key_id("token2", "key", &[1, 2]));
    }
}
