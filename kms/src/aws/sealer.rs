//! [`KmsSealer`]: envelope encryption under an AWS KMS key, the data keys delivered to the enclave
//! through KMS's `Recipient` (attestation-gated) mechanism.
//!
//! # Seal
//!
//! 1. A fresh attestation document whose `public_key` is this process's RSA-2048 recipient key
//!    ([`RecipientKey`]), from the [`RecipientAttester`].
//! 2. `GenerateDataKey{KeyId, KeySpec: AES_256, EncryptionContext, Recipient}`: KMS checks the
//!    document (signature, and the key policy's `kms:RecipientAttestation:*` conditions) and
//!    answers `CiphertextBlob` (the data key under the KMS key) and `CiphertextForRecipient` (the
//!    data key encrypted to the document's public key), no plaintext.
//! 3. The enclave opens `CiphertextForRecipient` ([`super::cms`]): a 32-byte data key.
//! 4. AES-256-GCM of the plaintext under the data key, 96-bit random IV, AAD =
//!    [`seal_aad`]`(KMS_SEAL_FORMAT_VERSION, key_id, ctx)` — the same AAD encoding as every
//!    cosigner sealer. The data key is zeroized.
//!
//! # Open
//!
//! `Decrypt{KeyId, CiphertextBlob, EncryptionContext, Recipient}` → `CiphertextForRecipient` →
//! data key → AES-GCM open. KMS refuses a `CiphertextBlob` made under another key
//! (`IncorrectKeyException`) or with another encryption context (`InvalidCiphertextException`);
//! both, and a GCM tag that does not verify, are [`KmsError::Unseal`].
//!
//! # Blob format (version [`KMS_SEAL_FORMAT_VERSION`] = 2)
//!
//! ```text
//! version (1) = 2 ‖ key_id (32) ‖ len(CiphertextBlob) (2, big-endian) ‖ CiphertextBlob
//!   ‖ iv (12) ‖ ciphertext ‖ tag (16)
//! ```
//!
//! Version and key id are checked before KMS is asked, like the PKCS#11 sealer's (version 1) blobs.
//!
//! # Encryption context
//!
//! KMS binds (and logs in CloudTrail, in clear) the encryption context: `cosigner:format` = `2`,
//! `cosigner:purpose`, `cosigner:wallet` (hex), `cosigner:party`, `cosigner:epoch` — the
//! [`SealContext`] again, so KMS itself refuses to hand out one blob's data key for another's
//! context, and the audit trail shows which wallet's secret was opened.
//!
//! # Key id and the choice of KMS key
//!
//! [`Sealer::key_id`] is SHA-256 over the domain tag `"cosigner-kms-key-id-v1"` and the configured
//! key (both length-prefixed). The credentials come from the (untrusted) parent, so the key must
//! name its account: with a bare key id or an `alias/…` name KMS would resolve it in whatever
//! account the credentials belong to, and a parent with its own account could hand out a key it
//! can decrypt with. The enclave configuration therefore takes key ARNs only, every request names
//! the key, and every answer's `KeyId` is checked against it ([`KmsError::AwsKeyMismatch`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::client::{KmsClient, Recipient};
use super::cms::RecipientKey;
use crate::error::{KmsError, Result};
use crate::sealer::{SEAL_IV_LEN, SEAL_KEY_ID_LEN, SEAL_TAG_LEN, SealContext, Sealer, seal_aad};

/// Format version of blobs sealed by [`KmsSealer`] (the PKCS#11 sealer writes version 1).
pub const KMS_SEAL_FORMAT_VERSION: u8 = 2;
/// Longest `CiphertextBlob` accepted (KMS's limit for ciphertexts is 6144 bytes).
pub const MAX_CIPHERTEXT_BLOB_LEN: usize = 6144;
/// Length of a data key (AES-256).
const DATA_KEY_LEN: usize = 32;
/// Domain tag of the key id hash.
const KEY_ID_DOMAIN: &str = "cosigner-kms-key-id-v1";
/// Fixed part of a blob: version, key id, blob length, IV, tag.
const FIXED_LEN: usize = 1 + SEAL_KEY_ID_LEN + 2 + SEAL_IV_LEN + SEAL_TAG_LEN;

/// Produces attestation documents binding a given public key (DER SubjectPublicKeyInfo) as their
/// `public_key`: in the enclave, the NSM through `cosigner_attestation::Attester`. KMS requires the
/// document to be fresh, so one is asked for per request.
pub trait RecipientAttester: Send + Sync {
    /// A new attestation document with `public_key` bound.
    fn attest_public_key(&self, public_key: &[u8]) -> std::result::Result<Vec<u8>, String>;
}

impl<F> RecipientAttester for F
where
    F: Fn(&[u8]) -> std::result::Result<Vec<u8>, String> + Send + Sync,
{
    fn attest_public_key(&self, public_key: &[u8]) -> std::result::Result<Vec<u8>, String> {
        self(public_key)
    }
}

/// How the data key gets from KMS to the sealer.
enum Delivery {
    /// Encrypted to the recipient key in an attestation document (production).
    Recipient {
        attester: Arc<dyn RecipientAttester>,
        key: RecipientKey,
    },
    /// In clear inside the (TLS) answer: only for KMS-compatible servers that do not implement
    /// `Recipient`. The key policy cannot then require an attested enclave.
    InsecurePlaintext,
}

/// A [`Sealer`] using AWS KMS envelope encryption (module docs). `Send + Sync`.
pub struct KmsSealer {
    client: KmsClient,
    key: String,
    key_id: [u8; SEAL_KEY_ID_LEN],
    delivery: Delivery,
}

impl std::fmt::Debug for KmsSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KmsSealer")
            .field("client", &self.client)
            .field("key", &self.key)
            .field("key_id", &hex::encode(self.key_id))
            .field(
                "recipient",
                &matches!(self.delivery, Delivery::Recipient { .. }),
            )
            .finish()
    }
}

impl KmsSealer {
    /// A sealer under the KMS key `key` (an ARN in production, see the module docs), receiving its
    /// data keys through `Recipient` with a fresh RSA-2048 key and documents from `attester`.
    pub fn new(client: KmsClient, key: &str, attester: Arc<dyn RecipientAttester>) -> Result<Self> {
        Self::with_recipient_key(client, key, attester, RecipientKey::generate()?)
    }

    /// Like [`KmsSealer::new`] with a given recipient key.
    pub fn with_recipient_key(
        client: KmsClient,
        key: &str,
        attester: Arc<dyn RecipientAttester>,
        recipient_key: RecipientKey,
    ) -> Result<Self> {
        check_key(key)?;
        Ok(Self {
            client,
            key_id: key_id(key),
            key: key.to_owned(),
            delivery: Delivery::Recipient {
                attester,
                key: recipient_key,
            },
        })
    }

    /// A sealer that takes data keys **in clear** from KMS's answer, for KMS-compatible test
    /// servers (moto) that do not implement `Recipient`.
    ///
    /// # Security
    /// Never in an enclave: without `Recipient` the key policy cannot require an attested image, so
    /// anyone with the credentials can decrypt the data keys.
    pub fn insecure_without_recipient(client: KmsClient, key: &str) -> Result<Self> {
        check_key(key)?;
        Ok(Self {
            client,
            key_id: key_id(key),
            key: key.to_owned(),
            delivery: Delivery::InsecurePlaintext,
        })
    }

    /// The KMS key as configured.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The recipient public key (DER SubjectPublicKeyInfo), if data keys come through `Recipient`.
    pub fn recipient_public_key(&self) -> Option<&[u8]> {
        match &self.delivery {
            Delivery::Recipient { key, .. } => Some(key.public_key_der()),
            Delivery::InsecurePlaintext => None,
        }
    }

    /// Runs `call` with the `Recipient` to send (a fresh document), then extracts the data key
    /// from `CiphertextForRecipient` or, without a recipient, from the plaintext.
    fn data_key(
        &self,
        operation: &'static str,
        call: impl FnOnce(Option<Recipient<'_>>) -> Result<KeyAnswer>,
    ) -> Result<Zeroizing<[u8; DATA_KEY_LEN]>> {
        let answer = match &self.delivery {
            Delivery::Recipient { attester, key } => {
                let document = attester
                    .attest_public_key(key.public_key_der())
                    .map_err(|reason| KmsError::RecipientAttestation { reason })?;
                let answer = call(Some(Recipient {
                    attestation_document: &document,
                }))?;
                check_answer_key(&self.key, &answer.key_id)?;
                if answer.plaintext.as_ref().is_some_and(|p| !p.is_empty()) {
                    return Err(KmsError::AwsResponse {
                        operation,
                        reason: "a plaintext key although a Recipient was given".to_owned(),
                    });
                }
                let cfr = answer
                    .ciphertext_for_recipient
                    .ok_or_else(|| KmsError::AwsResponse {
                        operation,
                        reason: "no CiphertextForRecipient although a Recipient was given (a \
                                 KMS-compatible server without Recipient support?)"
                            .to_owned(),
                    })?;
                key.open(&cfr)?
            }
            Delivery::InsecurePlaintext => {
                let answer = call(None)?;
                check_answer_key(&self.key, &answer.key_id)?;
                answer.plaintext.ok_or_else(|| KmsError::AwsResponse {
                    operation,
                    reason: "no Plaintext".to_owned(),
                })?
            }
        };
        let mut key = Zeroizing::new([0u8; DATA_KEY_LEN]);
        if answer.len() != DATA_KEY_LEN {
            return Err(KmsError::AwsResponse {
                operation,
                reason: format!(
                    "a data key of {} bytes, expected {DATA_KEY_LEN}",
                    answer.len()
                ),
            });
        }
        key.copy_from_slice(&answer);
        Ok(key)
    }
}

/// What the sealer needs from either KMS answer.
struct KeyAnswer {
    key_id: String,
    plaintext: Option<Zeroizing<Vec<u8>>>,
    ciphertext_for_recipient: Option<Vec<u8>>,
}

impl Sealer for KmsSealer {
    fn seal(&self, ctx: &SealContext, plaintext: &[u8]) -> Result<Vec<u8>> {
        let context = encryption_context(ctx);
        let mut blob_out = None;
        let data_key = self.data_key("GenerateDataKey", |recipient| {
            let out = self
                .client
                .generate_data_key(&self.key, &context, recipient)?;
            blob_out = Some(out.ciphertext_blob);
            Ok(KeyAnswer {
                key_id: out.key_id,
                plaintext: out.plaintext,
                ciphertext_for_recipient: out.ciphertext_for_recipient,
            })
        })?;
        let blob = blob_out.unwrap_or_default();
        let blob_len = u16::try_from(blob.len())
            .ok()
            .filter(|l| (1..=MAX_CIPHERTEXT_BLOB_LEN).contains(&usize::from(*l)))
            .ok_or_else(|| KmsError::AwsResponse {
                operation: "GenerateDataKey",
                reason: format!("a CiphertextBlob of {} bytes", blob.len()),
            })?;
        let mut iv = [0u8; SEAL_IV_LEN];
        aws_lc_rs::rand::fill(&mut iv).map_err(|_| KmsError::AwsConfig {
            reason: "no randomness for the GCM IV".to_owned(),
        })?;
        let aad = seal_aad(KMS_SEAL_FORMAT_VERSION, &self.key_id, ctx);
        let key = gcm_key(&data_key)?;
        let mut out = Vec::with_capacity(FIXED_LEN + blob.len() + plaintext.len());
        out.push(KMS_SEAL_FORMAT_VERSION);
        out.extend_from_slice(&self.key_id);
        out.extend_from_slice(&blob_len.to_be_bytes());
        out.extend_from_slice(&blob);
        out.extend_from_slice(&iv);
        let start = out.len();
        out.extend_from_slice(plaintext);
        let mut in_out = out.split_off(start);
        let sealed = key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(iv),
            Aad::from(&aad),
            &mut in_out,
        );
        if sealed.is_err() {
            zeroize::Zeroize::zeroize(&mut in_out);
            return Err(KmsError::AwsConfig {
                reason: "AES-GCM encryption failed".to_owned(),
            });
        }
        out.extend_from_slice(&in_out);
        Ok(out)
    }

    fn open(&self, ctx: &SealContext, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        let parsed = parse(sealed, &self.key_id)?;
        let context = encryption_context(ctx);
        let data_key = self
            .data_key("Decrypt", |recipient| {
                let out =
                    self.client
                        .decrypt(&self.key, parsed.ciphertext_blob, &context, recipient)?;
                Ok(KeyAnswer {
                    key_id: out.key_id,
                    plaintext: out.plaintext,
                    ciphertext_for_recipient: out.ciphertext_for_recipient,
                })
            })
            .map_err(kms_verdict)?;
        let aad = seal_aad(KMS_SEAL_FORMAT_VERSION, &self.key_id, ctx);
        let key = gcm_key(&data_key)?;
        let mut in_out = Zeroizing::new(parsed.ciphertext_and_tag.to_vec());
        let len = key
            .open_in_place(
                Nonce::assume_unique_for_key(parsed.iv),
                Aad::from(&aad),
                &mut in_out,
            )
            .map_err(|_| KmsError::Unseal {
                reason: "authentication failed (AES-GCM tag): blob altered, foreign, or sealed \
                         for another context"
                    .to_owned(),
            })?
            .len();
        in_out.truncate(len);
        Ok(in_out)
    }

    fn key_id(&self) -> [u8; SEAL_KEY_ID_LEN] {
        self.key_id
    }
}

/// KMS's refusals that are a verdict on the blob (not on the service's health) become
/// [`KmsError::Unseal`].
fn kms_verdict(e: KmsError) -> KmsError {
    match e {
        KmsError::AwsError {
            ref error_type,
            ref message,
            ..
        } if matches!(
            error_type.as_str(),
            "InvalidCiphertextException" | "IncorrectKeyException"
        ) =>
        {
            KmsError::Unseal {
                reason: format!(
                    "KMS refused the data key ({error_type}: {message}): blob altered, foreign, \
                     or sealed for another context"
                ),
            }
        }
        other => other,
    }
}

fn gcm_key(data_key: &[u8; DATA_KEY_LEN]) -> Result<LessSafeKey> {
    UnboundKey::new(&AES_256_GCM, data_key)
        .map(LessSafeKey::new)
        .map_err(|_| KmsError::AwsConfig {
            reason: "AES-256-GCM key setup failed".to_owned(),
        })
}

/// The KMS encryption context of a seal context (module docs).
pub fn encryption_context(ctx: &SealContext) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "cosigner:format".to_owned(),
            KMS_SEAL_FORMAT_VERSION.to_string(),
        ),
        ("cosigner:purpose".to_owned(), ctx.purpose.to_owned()),
        ("cosigner:wallet".to_owned(), hex::encode(ctx.wallet_id)),
        ("cosigner:party".to_owned(), ctx.party.to_string()),
        ("cosigner:epoch".to_owned(), ctx.epoch.to_string()),
    ])
}

/// The sealer key id of a KMS key name.
pub fn key_id(key: &str) -> [u8; SEAL_KEY_ID_LEN] {
    let mut h = Sha256::new();
    for field in [KEY_ID_DOMAIN.as_bytes(), key.as_bytes()] {
        h.update(u32::try_from(field.len()).unwrap_or(u32::MAX).to_be_bytes());
        h.update(field);
    }
    h.finalize().into()
}

fn check_key(key: &str) -> Result<()> {
    if key.is_empty() || key.len() > 2048 || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(KmsError::AwsConfig {
            reason: format!("{key:?} is not a KMS key id, alias or ARN"),
        });
    }
    Ok(())
}

/// The parts of a KMS key ARN: (partition, region, account, resource).
fn arn_parts(arn: &str) -> Option<(&str, &str, &str, &str)> {
    let rest = arn.strip_prefix("arn:")?;
    let mut parts = rest.splitn(5, ':');
    let partition = parts.next()?;
    if parts.next()? != "kms" {
        return None;
    }
    let region = parts.next()?;
    let account = parts.next()?;
    let resource = parts.next()?;
    Some((partition, region, account, resource))
}

/// True if `key` is a KMS key ARN or alias ARN (names its partition, region and account).
pub fn is_key_arn(key: &str) -> bool {
    arn_parts(key).is_some_and(|(p, r, a, res)| {
        !p.is_empty()
            && !r.is_empty()
            && a.len() == 12
            && a.bytes().all(|b| b.is_ascii_digit())
            && (res.starts_with("key/") || res.starts_with("alias/"))
            && res.len() > 6
    })
}

/// Checks KMS's `KeyId` against the configured key: equal for a key ARN, same partition, region
/// and account for an alias ARN, ending in `key/ID` for a bare key id; an alias name alone cannot
/// be checked (the enclave configuration does not allow one).
fn check_answer_key(configured: &str, answered: &str) -> Result<()> {
    let ok = match (arn_parts(configured), arn_parts(answered)) {
        (Some((p, r, a, res)), Some((p2, r2, a2, res2))) => {
            if res.starts_with("alias/") {
                (p, r, a) == (p2, r2, a2) && res2.starts_with("key/")
            } else {
                configured == answered
            }
        }
        (None, Some((_, _, _, res2))) => {
            configured.starts_with("alias/") || res2.strip_prefix("key/") == Some(configured)
        }
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(KmsError::AwsKeyMismatch {
            expected: configured.to_owned(),
            actual: answered.to_owned(),
        })
    }
}

struct Parsed<'a> {
    ciphertext_blob: &'a [u8],
    iv: [u8; SEAL_IV_LEN],
    ciphertext_and_tag: &'a [u8],
}

fn parse<'a>(sealed: &'a [u8], expected_key_id: &[u8; SEAL_KEY_ID_LEN]) -> Result<Parsed<'a>> {
    let too_short = || KmsError::SealedBlobTooShort {
        len: sealed.len(),
        min: FIXED_LEN + 1,
    };
    let (&version, rest) = sealed.split_first().ok_or_else(too_short)?;
    if version != KMS_SEAL_FORMAT_VERSION {
        return Err(KmsError::SealedBlobVersion {
            expected: KMS_SEAL_FORMAT_VERSION,
            actual: version,
        });
    }
    if sealed.len() < FIXED_LEN + 1 {
        return Err(too_short());
    }
    let (key_id, rest) = rest
        .split_at_checked(SEAL_KEY_ID_LEN)
        .ok_or_else(too_short)?;
    let key_id: [u8; SEAL_KEY_ID_LEN] = key_id.try_into().map_err(|_| too_short())?;
    if &key_id != expected_key_id {
        return Err(KmsError::SealedBlobKeyMismatch {
            expected: *expected_key_id,
            actual: key_id,
        });
    }
    let (len, rest) = rest.split_at_checked(2).ok_or_else(too_short)?;
    let len = usize::from(u16::from_be_bytes(len.try_into().map_err(|_| too_short())?));
    if len == 0 || len > MAX_CIPHERTEXT_BLOB_LEN {
        return Err(KmsError::Unseal {
            reason: format!("sealed blob names a {len}-byte KMS ciphertext"),
        });
    }
    let (ciphertext_blob, rest) = rest.split_at_checked(len).ok_or_else(too_short)?;
    let (iv, ciphertext_and_tag) = rest.split_at_checked(SEAL_IV_LEN).ok_or_else(too_short)?;
    if ciphertext_and_tag.len() < SEAL_TAG_LEN {
        return Err(too_short());
    }
    Ok(Parsed {
        ciphertext_blob,
        iv: iv.try_into().map_err(|_| too_short())?,
        ciphertext_and_tag,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    const ARN: &str = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";

    #[test]
    fn answer_keys_are_checked() {
        check_answer_key(ARN, ARN).unwrap();
        assert!(check_answer_key(ARN, &ARN.replace("111122223333", "444455556666")).is_err());
        let alias = "arn:aws:kms:eu-west-1:111122223333:alias/cosigner";
        check_answer_key(alias, ARN).unwrap();
        assert!(check_answer_key(alias, &ARN.replace("111122223333", "444455556666")).is_err());
        check_answer_key("1234abcd-12ab-34cd-56ef-1234567890ab", ARN).unwrap();
        assert!(check_answer_key("1234abcd", ARN).is_err());
        assert!(check_answer_key(ARN, "not an arn").is_err());
    }

    #[test]
    fn arns_are_recognised() {
        assert!(is_key_arn(ARN));
        assert!(is_key_arn(
            "arn:aws:kms:eu-west-1:111122223333:alias/cosigner"
        ));
        assert!(!is_key_arn("alias/cosigner"));
        assert!(!is_key_arn("1234abcd-12ab-34cd-56ef-1234567890ab"));
        assert!(!is_key_arn("arn:aws:s3:eu-west-1:111122223333:key/x"));
        assert!(!is_key_arn("arn:aws:kms:eu-west-1:1111:key/x"));
    }

    #[test]
    fn blobs_are_checked_before_kms_is_asked() {
        let kid = key_id(ARN);
        let mut blob = vec![KMS_SEAL_FORMAT_VERSION];
        blob.extend(kid);
        blob.extend(3u16.to_be_bytes());
        blob.extend([7, 7, 7]);
        blob.extend([0u8; SEAL_IV_LEN + SEAL_TAG_LEN]);
        let p = parse(&blob, &kid).unwrap();
        assert_eq!(p.ciphertext_blob, &[7, 7, 7]);
        assert!(matches!(
            parse(&[], &kid),
            Err(KmsError::SealedBlobTooShort { .. })
        ));
        assert!(matches!(
            parse(&[1], &kid),
            Err(KmsError::SealedBlobVersion { actual: 1, .. })
        ));
        assert!(matches!(
            parse(&blob, &key_id("other")),
            Err(KmsError::SealedBlobKeyMismatch { .. })
        ));
        for cut in 1..blob.len() {
            assert!(parse(&blob[..cut], &kid).is_err(), "{cut}");
        }
        let mut long = blob.clone();
        long[33..35].copy_from_slice(&u16::MAX.to_be_bytes());
        assert!(parse(&long, &kid).is_err());
    }

    #[test]
    fn context_and_key_id_are_pinned() {
        let ctx = SealContext::new("frost-key-package", [0xab; 16], 2, 7);
        let c = encryption_context(&ctx);
        assert_eq!(c["cosigner:wallet"], "ab".repeat(16));
        assert_eq!(c["cosigner:party"], "2");
        assert_eq!(c["cosigner:epoch"], "7");
        assert_eq!(c["cosigner:format"], "2");
        assert_ne!(key_id("a"), key_id("b"));
    }
}
