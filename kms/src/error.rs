//! Errors of the key custody layer, and the one place where PKCS#11 return values become them.
//!
//! PKCS#11 v2.40 §5.1 ("Function return values") lists the `CKR_*` codes; only the few a caller can
//! act on get a variant of their own (wrong PIN, locked PIN, missing login). Everything else is
//! reported as [`KmsError::Pkcs11`] with the failing operation and the code's name.

use std::path::PathBuf;

use cryptoki::error::{Error as CkError, RvError};

/// Everything that can go wrong between cosigner and a PKCS#11 token.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KmsError {
    /// The PKCS#11 module (shared library) could not be loaded.
    #[error("cannot load PKCS#11 module {path}: {reason}")]
    ModuleLoad {
        /// Path of the module that was asked for.
        path: PathBuf,
        /// What the loader said.
        reason: String,
    },
    /// This process already initialised a different PKCS#11 module (one context per process).
    #[error(
        "PKCS#11 module {loaded} is already loaded in this process; cannot also load {requested}"
    )]
    ModuleMismatch {
        /// The module this process initialised first.
        loaded: PathBuf,
        /// The module that was asked for now.
        requested: PathBuf,
    },
    /// No initialised token carries this label.
    #[error("no PKCS#11 token labelled {label:?}")]
    TokenNotFound {
        /// The label looked for.
        label: String,
    },
    /// A token with this label already exists; refusing to create a second one.
    #[error("a PKCS#11 token labelled {label:?} already exists")]
    TokenExists {
        /// The label asked for.
        label: String,
    },
    /// More than one token carries this label, so the label does not identify a token.
    #[error("{count} PKCS#11 tokens are labelled {label:?}")]
    TokenAmbiguous {
        /// The label looked for.
        label: String,
        /// How many tokens carry it.
        count: usize,
    },
    /// A token or key label is unusable (empty, too long, padded with blanks).
    #[error("invalid label {label:?}: {reason}")]
    InvalidLabel {
        /// The label given.
        label: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// Every slot already holds an initialised token.
    #[error("no slot with an uninitialised token is available")]
    NoFreeSlot,
    /// No key of the kind asked for (P-384 private key, AES sealing key) carries this label.
    #[error("no key labelled {label:?} on the token")]
    KeyNotFound {
        /// The key label looked for.
        label: String,
    },
    /// A key of the kind asked for with this label already exists on the token.
    #[error("a key labelled {label:?} already exists on the token")]
    KeyExists {
        /// The key label asked for.
        label: String,
    },
    /// Several objects match the label, so it does not identify one key.
    #[error("{count} {what} objects are labelled {label:?}")]
    KeyAmbiguous {
        /// The key label looked for.
        label: String,
        /// Which kind of object was looked for (private, public or secret key).
        what: &'static str,
        /// How many objects matched.
        count: usize,
    },
    /// The key exists but is not what the caller needs (e.g. not on P-384).
    #[error("key {label:?} is unusable: {reason}")]
    WrongKey {
        /// The key label.
        label: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A key found on the token (not one this build just generated) could leave it: it is not
    /// `CKA_SENSITIVE`, or it is `CKA_EXTRACTABLE` (PKCS#11 v2.40 Base §4.9, §4.10). It is refused
    /// rather than used: whoever could read or wrap it out could sign or unseal without the token.
    #[error(
        "key {label:?} ({what}) can leave the token (CKA_SENSITIVE = {sensitive}, \
         CKA_EXTRACTABLE = {extractable}): refusing it; replace it by a key generated on the \
         token with CKA_SENSITIVE = true and CKA_EXTRACTABLE = false"
    )]
    KeyNotProtected {
        /// The key label.
        label: String,
        /// Which kind of key (AES sealing key, P-384 private key).
        what: &'static str,
        /// Its `CKA_SENSITIVE`: must be true.
        sensitive: bool,
        /// Its `CKA_EXTRACTABLE`: must be false.
        extractable: bool,
    },
    /// The token refused the PIN (`CKR_PIN_INCORRECT`).
    #[error("the token refused the PIN")]
    BadPin,
    /// The token locked the PIN after too many wrong attempts (`CKR_PIN_LOCKED`).
    #[error("the PIN is locked on the token")]
    PinLocked,
    /// A PIN could not be read from its source (file, environment variable).
    #[error("cannot read PIN from {source_name}: {reason}")]
    PinSource {
        /// Where the PIN was to come from (a path or `$VAR`).
        source_name: String,
        /// What went wrong.
        reason: String,
    },
    /// A session on the token is not logged in as the user although it should be.
    #[error("session on token {label:?} is not logged in as user")]
    NotLoggedIn {
        /// The token label.
        label: String,
    },
    /// Any other failure reported by the PKCS#11 module.
    #[error("PKCS#11 {operation} failed: {reason}")]
    Pkcs11 {
        /// What cosigner was doing (usually the `C_*` function).
        operation: &'static str,
        /// The return value's name or the binding's error.
        reason: String,
    },
    /// The token returned a public key that is not a P-384 uncompressed SEC1 point.
    #[error("bad public key from token: {reason}")]
    BadPublicKey {
        /// What is wrong with it.
        reason: String,
    },
    /// The token returned a signature of the wrong length.
    #[error("token returned a {got}-byte signature, expected {expected}")]
    BadSignature {
        /// Expected length in bytes.
        expected: usize,
        /// Length the token returned.
        got: usize,
    },
    /// A sealed blob is shorter than the smallest one the format allows; the token was not asked.
    #[error("sealed blob is {len} bytes, shorter than the {min}-byte minimum")]
    SealedBlobTooShort {
        /// Length of the blob given.
        len: usize,
        /// Smallest valid length (header and tag, empty plaintext).
        min: usize,
    },
    /// A sealed blob carries a format version this build does not open; the token was not asked.
    #[error("sealed blob has format version {actual}, this build opens version {expected}")]
    SealedBlobVersion {
        /// The version this build writes and reads.
        expected: u8,
        /// The version in the blob.
        actual: u8,
    },
    /// A sealed blob names another sealing key (another token, key or deployment); the token was
    /// not asked.
    #[error(
        "sealed blob was sealed under key id {}, this sealer's key id is {}",
        hex::encode(actual),
        hex::encode(expected)
    )]
    SealedBlobKeyMismatch {
        /// This sealer's key id.
        expected: [u8; 32],
        /// The key id in the blob.
        actual: [u8; 32],
    },
    /// The token refused to open a sealed blob: the AEAD tag did not verify under this key and
    /// context. The blob was altered, comes from elsewhere, or was sealed for another wallet,
    /// party, epoch or purpose.
    #[error("cannot unseal: {reason}")]
    Unseal {
        /// What failed, with the token's return code.
        reason: String,
    },
    /// AWS credentials are missing, unreadable or malformed (their values are never included).
    #[error("AWS credentials: {reason}")]
    AwsCredentials {
        /// What is wrong.
        reason: String,
    },
    /// A KMS request cannot be made from the settings given (region, key id, header values).
    #[error("AWS KMS configuration: {reason}")]
    AwsConfig {
        /// What is wrong.
        reason: String,
    },
    /// The connection to KMS failed: connect, TLS handshake or certificate, read, write, timeout.
    #[error("AWS KMS {operation}: connection failed: {reason}")]
    AwsTransport {
        /// The KMS operation (`GenerateDataKey`, `Decrypt`, …).
        operation: &'static str,
        /// What failed.
        reason: String,
    },
    /// KMS refused the request: its HTTP status and AWS error type (`__type`, e.g.
    /// `AccessDeniedException`, `IncorrectKeyException`, `InvalidSignatureException`).
    #[error("AWS KMS {operation} refused (HTTP {status}, {error_type}): {message}")]
    AwsError {
        /// The KMS operation.
        operation: &'static str,
        /// The HTTP status code.
        status: u16,
        /// The AWS error type, without its namespace.
        error_type: String,
        /// AWS's message, truncated and stripped of control characters.
        message: String,
    },
    /// KMS's answer could not be understood: bad HTTP, too large, not JSON, bad base64, a field
    /// missing or of the wrong size.
    #[error("AWS KMS {operation}: unusable response: {reason}")]
    AwsResponse {
        /// The KMS operation.
        operation: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// KMS answered for another key than the one this sealer is configured with.
    #[error("AWS KMS answered for key {actual:?}, expected {expected:?}")]
    AwsKeyMismatch {
        /// The configured key.
        expected: String,
        /// The key KMS named.
        actual: String,
    },
    /// A `CiphertextForRecipient` (CMS EnvelopedData) could not be parsed or opened.
    #[error("CiphertextForRecipient: {reason}")]
    Recipient {
        /// What is wrong with it.
        reason: String,
    },
    /// No attestation document could be produced for a KMS `Recipient`.
    #[error("attestation document for KMS: {reason}")]
    RecipientAttestation {
        /// What the attester said.
        reason: String,
    },
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, KmsError>;

/// The `CKR_*` code carried by a cryptoki error, if it is one.
pub(crate) fn rv(e: &CkError) -> Option<RvError> {
    match e {
        CkError::Pkcs11(rv, _) => Some(*rv),
        _ => None,
    }
}

/// Maps a cryptoki error to a [`KmsError`]. This is the only place that does so.
pub(crate) fn pkcs11(operation: &'static str, e: CkError) -> KmsError {
    match e {
        CkError::Pkcs11(RvError::PinIncorrect, _) => KmsError::BadPin,
        CkError::Pkcs11(RvError::PinLocked, _) => KmsError::PinLocked,
        CkError::Pkcs11(rv, function) => KmsError::Pkcs11 {
            operation,
            reason: format!("C_{function:?} returned {}", ckr_name(rv)),
        },
        CkError::LibraryLoading(err) => KmsError::Pkcs11 {
            operation,
            reason: format!("library loading: {err}"),
        },
        other => KmsError::Pkcs11 {
            operation,
            reason: other.to_string(),
        },
    }
}

/// Maps a failed `C_Decrypt` of a sealed blob to [`KmsError::Unseal`] when the code says the
/// data was refused, and to [`KmsError::Pkcs11`] (through [`pkcs11`]) when the token itself failed.
///
/// Tokens report a GCM tag that does not verify in different ways: SoftHSM answers
/// `CKR_GENERAL_ERROR`, others `CKR_ENCRYPTED_DATA_INVALID`, `CKR_FUNCTION_FAILED` or, in PKCS#11
/// v3.0, `CKR_AEAD_DECRYPT_FAILED` (0x35, unknown to the binding). All of them mean "this blob does
/// not open here". Codes that say the token or session is unwell (device error, out of memory,
/// session closed) are not a verdict on the blob and stay [`KmsError::Pkcs11`], so an operator is
/// not told a blob was tampered with when the HSM was down.
pub(crate) fn unseal(e: CkError) -> KmsError {
    let refused = match &e {
        CkError::Pkcs11(rv, _) => match rv {
            RvError::GeneralError
            | RvError::FunctionFailed
            | RvError::EncryptedDataInvalid
            | RvError::EncryptedDataLenRange
            | RvError::DataInvalid
            | RvError::DataLenRange
            | RvError::SignatureInvalid => Some(ckr_name(*rv)),
            // CKR_AEAD_DECRYPT_FAILED, PKCS#11 v3.0 §5.1.
            RvError::UnknownErrorCode(0x35) => Some("CKR_AEAD_DECRYPT_FAILED".to_owned()),
            _ => None,
        },
        _ => None,
    };
    match refused {
        Some(code) => KmsError::Unseal {
            reason: format!(
                "authentication failed (C_Decrypt returned {code}): blob altered, foreign, or \
                 sealed for another context"
            ),
        },
        None => pkcs11("C_Decrypt", e),
    }
}

/// `PinIncorrect` -> `CKR_PIN_INCORRECT`, the name operators search for.
fn ckr_name(rv: RvError) -> String {
    match rv {
        RvError::VendorDefined(code) => return format!("CKR_VENDOR_DEFINED({code:#x})"),
        RvError::UnknownErrorCode(code) => return format!("unknown CKR {code:#x}"),
        _ => {}
    }
    let camel = format!("{rv:?}");
    let mut out = String::from("CKR");
    for c in camel.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ckr_names_follow_the_spec_spelling() {
        assert_eq!(ckr_name(RvError::PinIncorrect), "CKR_PIN_INCORRECT");
        assert_eq!(
            ckr_name(RvError::ObjectHandleInvalid),
            "CKR_OBJECT_HANDLE_INVALID"
        );
        assert_eq!(ckr_name(RvError::GeneralError), "CKR_GENERAL_ERROR");
    }

    #[test]
    fn decrypt_refusals_are_unseal_and_token_failures_are_not() {
        use cryptoki::context::Function;
        for refused in [
            RvError::GeneralError,
            RvError::EncryptedDataInvalid,
            RvError::FunctionFailed,
            RvError::UnknownErrorCode(0x35),
        ] {
            let e = unseal(CkError::Pkcs11(refused, Function::Decrypt));
            assert!(matches!(e, KmsError::Unseal { .. }), "{refused:?}: {e:?}");
        }
        let e = unseal(CkError::Pkcs11(RvError::GeneralError, Function::Decrypt));
        assert!(e.to_string().contains("CKR_GENERAL_ERROR"), "{e}");
        for failed in [
            RvError::DeviceError,
            RvError::DeviceMemory,
            RvError::HostMemory,
        ] {
            let e = unseal(CkError::Pkcs11(failed, Function::Decrypt));
            assert!(
                matches!(
                    e,
                    KmsError::Pkcs11 {
                        operation: "C_Decrypt",
                        ..
                    }
                ),
                "{failed:?}: {e:?}"
            );
        }
    }
}
