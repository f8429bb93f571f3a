//! Producers of attestation documents.

use crate::document::{MAX_PUBLIC_KEY_LEN, MAX_USER_DATA_LEN, debug_bound};
use crate::error::{AttestationError, Result};

/// What the caller asks the attester to bind into a document.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct AttestRequest {
    /// A verifier's nonce (freshness), at most 512 bytes.
    pub nonce: Option<Vec<u8>>,
    /// Data to bind (for cosigner: the TLS session's exporter value), at most 512 bytes.
    pub user_data: Option<Vec<u8>>,
    /// A public key to bind, 1 to 1024 bytes.
    pub public_key: Option<Vec<u8>>,
}

impl std::fmt::Debug for AttestRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("AttestRequest");
        debug_bound(&mut d, &self.nonce, &self.user_data, &self.public_key);
        d.finish()
    }
}

impl AttestRequest {
    /// Checks the NSM's limits, so both attesters refuse the same requests.
    pub fn validate(&self) -> Result<()> {
        for (name, value, min, max) in [
            ("nonce", &self.nonce, 0, MAX_USER_DATA_LEN),
            ("user_data", &self.user_data, 0, MAX_USER_DATA_LEN),
            ("public_key", &self.public_key, 1, MAX_PUBLIC_KEY_LEN),
        ] {
            if let Some(v) = value
                && (v.len() < min || v.len() > max)
            {
                return Err(AttestationError::Request {
                    reason: format!("{name} is {} bytes, allowed {min}..={max}", v.len()),
                });
            }
        }
        Ok(())
    }
}

/// Something that produces signed attestation documents about the running code.
pub trait Attester: Send + Sync {
    /// Produces a fresh COSE_Sign1 document binding `request`.
    fn attest(&self, request: &AttestRequest) -> Result<Vec<u8>>;

    /// A short name for logs: `nitro` or `local`.
    fn kind(&self) -> &'static str;
}
