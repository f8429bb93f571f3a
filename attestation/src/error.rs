//! The one error type of this crate.
//!
//! Verification errors are ordered like the checks of [`crate::verify`]; [`AttestationError::check`]
//! names the check that failed, so a caller (and the `cosigner attestation verify` command) can say
//! exactly which step refused a document.

use crate::emulated::EmulatedPart;

/// Everything that can go wrong while reading, verifying or producing an attestation document.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttestationError {
    /// The document is larger than any real NSM document may be.
    #[error("document is {actual} bytes, more than the {max}-byte limit")]
    TooLarge {
        /// The limit in bytes.
        max: usize,
        /// The size of the input.
        actual: usize,
    },
    /// The bytes are not the CBOR structure of a COSE_Sign1 attestation document.
    #[error("malformed document: {reason}")]
    Malformed {
        /// What was wrong, with the CBOR path where it is known.
        reason: String,
    },
    /// A payload field is missing, has the wrong type, or breaks the limits AWS documents.
    #[error("field `{field}`: {reason}")]
    Field {
        /// The payload field.
        field: &'static str,
        /// What was wrong with it.
        reason: String,
    },
    /// The payload's `digest` is not SHA384, the only one the NSM uses.
    #[error("digest is {actual:?}, expected \"SHA384\"")]
    Digest {
        /// The digest named by the document.
        actual: String,
    },
    /// The COSE signature is not a valid ES384 signature by the leaf certificate's key.
    #[error("COSE ES384 signature does not verify under the leaf certificate: {reason}")]
    Signature {
        /// Why the signature was refused.
        reason: String,
    },
    /// The pinned root certificate could not be used as a trust anchor.
    #[error("pinned root certificate: {reason}")]
    Root {
        /// Why the root was refused.
        reason: String,
    },
    /// The leaf does not chain to the pinned root through `cabundle[1..]` at the validation time.
    #[error("certificate chain: {reason}")]
    Chain {
        /// Why the chain was refused (expired, unknown issuer, bad constraints, ...).
        reason: String,
    },
    /// The document is dated after the validation time by more than the allowed clock skew.
    #[error(
        "timestamp {timestamp_ms} ms is after the validation time {validation_ms} ms by more than \
         the allowed clock skew of {max_clock_skew_ms} ms"
    )]
    FromTheFuture {
        /// The document's timestamp (milliseconds since the Unix epoch).
        timestamp_ms: u64,
        /// The validation time (milliseconds since the Unix epoch).
        validation_ms: u64,
        /// How far ahead of the validation time a document may be dated.
        max_clock_skew_ms: u64,
    },
    /// The document is older than the maximum age allowed.
    #[error("document is {age_ms} ms old, more than the maximum age of {max_age_ms} ms")]
    TooOld {
        /// Its age at the validation time.
        age_ms: u64,
        /// The maximum age allowed.
        max_age_ms: u64,
    },
    /// PCR0, PCR1 and PCR2 are all zero: the enclave runs in debug mode, and its memory is readable.
    #[error("debug-mode document (PCR0, PCR1 and PCR2 are all zero) refused")]
    DebugMode,
    /// An expected PCR differs from the document's.
    #[error("PCR{index} is {actual}, expected {expected}")]
    Pcr {
        /// The PCR index.
        index: u8,
        /// The expected value, lowercase hex.
        expected: String,
        /// The document's value, lowercase hex, or `absent`.
        actual: String,
    },
    /// An expected `nonce`, `user_data` or `public_key` differs from the document's.
    #[error("{field} is {actual}, expected {expected}")]
    Mismatch {
        /// `nonce`, `user_data` or `public_key`.
        field: &'static str,
        /// The expected value, lowercase hex.
        expected: String,
        /// The document's value, lowercase hex, or `absent`.
        actual: String,
    },
    /// Checked only by [`crate::verify_emulated_unsigned`], in place of the signature and the
    /// chain: the document is not in the exact unsigned shape QEMU's emulated NSM writes (a
    /// signed document, or anything else). Never raised by [`crate::verify`].
    #[error(
        "not QEMU's unsigned emulated-NSM shape: {part} is {found}, expected {}",
        .part.expected()
    )]
    NotEmulated {
        /// The part that differs.
        part: EmulatedPart,
        /// What the document has there (hex when short, else its length).
        found: String,
    },
    /// An attestation request breaks the NSM's limits.
    #[error("attestation request: {reason}")]
    Request {
        /// What was wrong.
        reason: String,
    },
    /// The attester (NSM or local token) failed to produce a document.
    #[error("attester: {reason}")]
    Attester {
        /// What failed.
        reason: String,
    },
    /// Creating or loading the local attester's certificates failed.
    #[error("local attester PKI: {reason}")]
    Pki {
        /// What failed.
        reason: String,
    },
    /// The PKCS#11 token refused an operation.
    #[cfg(feature = "local-attester")]
    #[error(transparent)]
    Kms(#[from] cosigner_kms::KmsError),
}

impl AttestationError {
    /// The name of the check that failed, stable for scripts and logs.
    pub fn check(&self) -> &'static str {
        match self {
            Self::TooLarge { .. } | Self::Malformed { .. } | Self::Field { .. } => "structure",
            Self::Digest { .. } => "digest",
            Self::Signature { .. } => "signature",
            Self::Root { .. } => "root",
            Self::Chain { .. } => "chain",
            Self::FromTheFuture { .. } | Self::TooOld { .. } => "timestamp",
            Self::NotEmulated { .. } => "emulated",
            Self::DebugMode => "debug",
            Self::Pcr { .. } => "pcr",
            Self::Mismatch { field, .. } => field,
            Self::Request { .. } => "request",
            Self::Attester { .. } => "attester",
            Self::Pki { .. } => "pki",
            #[cfg(feature = "local-attester")]
            Self::Kms(_) => "token",
        }
    }

    pub(crate) fn malformed(reason: impl Into<String>) -> Self {
        Self::Malformed {
            reason: reason.into(),
        }
    }

    pub(crate) fn field(field: &'static str, reason: impl Into<String>) -> Self {
        Self::Field {
            field,
            reason: reason.into(),
        }
    }
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, AttestationError>;
