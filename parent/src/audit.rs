//! `cosigner-parent audit verify`: check the enclave's hash-chained, signed audit log as this
//! parent stores it. The audit key must come from an attested session (`cosigner status` prints
//! it from the attestation document), never from the host itself.

use std::path::Path;

use cosigner_protocol::audit::{AUDIT_PREFIX, AuditFault, verify_log};

use crate::store::{SqliteStore, Store};

/// The result of a successful verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditReport {
    /// Number of entries.
    pub entries: u64,
    /// SHA-256 of the last entry (hex).
    pub head: String,
}

/// Why verification failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// The database could not be read.
    #[error("cannot read the store: {0}")]
    Store(String),
    /// The key is not a P-256 public key in hex.
    #[error("--key: {0}")]
    Key(String),
    /// The log is broken.
    #[error("audit log broken: {0}")]
    Broken(#[from] AuditFault),
}

/// Verifies every `audit/` record of the database at `path` under `key_hex`.
pub fn verify_database(path: &Path, key_hex: &str) -> Result<AuditReport, AuditError> {
    let key = hex::decode(key_hex).map_err(|e| AuditError::Key(e.to_string()))?;
    cosigner_protocol::auth::normalise_public_key(&key)
        .map_err(|e| AuditError::Key(e.to_string()))?;
    let store = SqliteStore::open(path).map_err(|e| AuditError::Store(e.to_string()))?;
    let keys = store
        .list_prefix(AUDIT_PREFIX)
        .map_err(|e| AuditError::Store(e.to_string()))?;
    let mut records = Vec::with_capacity(keys.len());
    for k in &keys {
        records.push(
            store
                .get(k)
                .map_err(|e| AuditError::Store(e.to_string()))?
                .unwrap_or_default(),
        );
    }
    let (entries, head) = verify_log(&records, &key)?;
    Ok(AuditReport {
        entries,
        head: hex::encode(head),
    })
}
