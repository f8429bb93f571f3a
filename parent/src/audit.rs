//! `cosigner-parent audit verify`: check the enclave's hash-chained, signed audit log as this
//! parent stores it. The audit key must come from an attested session (`cosigner status` prints
//! it from the attestation document), never from the host itself.

use std::path::Path;

use cosigner_protocol::audit::{AUDIT_PREFIX, AuditFault, audit_prefix, verify_log};

use crate::store::{SqliteStore, Store};

/// The result of a successful verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditReport {
    /// Number of entries, over every chain.
    pub entries: u64,
    /// SHA-256 of the last entry of instance 0's chain (hex), or of the first chain there is.
    pub head: String,
    /// Each enclave instance's chain.
    pub chains: Vec<ChainReport>,
}

/// One enclave instance's chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainReport {
    /// The instance (0: the only one, or the first of a deployment from before instances).
    pub instance: u32,
    /// Its entries.
    pub entries: u64,
    /// SHA-256 of its last entry (hex).
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

/// Verifies every audit chain of the database at `path` under `key_hex`: instance 0's under
/// `audit/` and each further enclave instance's under `audit-iK/`
/// (`cosigner_protocol::audit::audit_prefix`), each a whole chain from its first entry.
pub fn verify_database(path: &Path, key_hex: &str) -> Result<AuditReport, AuditError> {
    let key = audit_key(key_hex)?;
    let store = SqliteStore::open(path).map_err(|e| AuditError::Store(e.to_string()))?;
    verify_store(&store, &key)
}

/// [`verify_database`] on the store a parent's configuration names (SQLite or PostgreSQL).
pub fn verify_configured(config: &crate::Config, key_hex: &str) -> Result<AuditReport, AuditError> {
    let key = audit_key(key_hex)?;
    let mut config = config.clone();
    // The audit log only: the mailbox's tables are not opened.
    config.mailbox_listen = None;
    let (store, _) =
        crate::store::open_for(&config).map_err(|e| AuditError::Store(e.to_string()))?;
    verify_store(store.as_ref(), &key)
}

fn audit_key(key_hex: &str) -> Result<Vec<u8>, AuditError> {
    let key = hex::decode(key_hex).map_err(|e| AuditError::Key(e.to_string()))?;
    cosigner_protocol::auth::normalise_public_key(&key)
        .map_err(|e| AuditError::Key(e.to_string()))?;
    Ok(key)
}

/// Verifies every audit chain `store` holds under `key` (SEC1).
pub fn verify_store(store: &dyn Store, key: &[u8]) -> Result<AuditReport, AuditError> {
    let keys = store
        .list_prefix("audit")
        .map_err(|e| AuditError::Store(e.to_string()))?;
    let mut chains: std::collections::BTreeMap<u32, Vec<String>> = Default::default();
    for k in keys {
        if let Some(instance) = chain_of(&k) {
            chains.entry(instance).or_default().push(k);
        }
    }
    let mut report = AuditReport {
        entries: 0,
        head: String::new(),
        chains: Vec::new(),
    };
    for (instance, keys) in chains {
        let mut records = Vec::with_capacity(keys.len());
        for k in &keys {
            records.push(
                store
                    .get(k)
                    .map_err(|e| AuditError::Store(e.to_string()))?
                    .unwrap_or_default(),
            );
        }
        let (entries, head) = verify_log(&records, key)?;
        report.entries += entries;
        if instance == 0 || report.head.is_empty() {
            report.head = hex::encode(head);
        }
        report.chains.push(ChainReport {
            instance,
            entries,
            head: hex::encode(head),
        });
    }
    Ok(report)
}

/// The instance whose chain `key` belongs to: `audit/…` is instance 0's, `audit-iK/…` instance
/// K's; any other key is none.
fn chain_of(key: &str) -> Option<u32> {
    if key.starts_with(AUDIT_PREFIX) {
        return Some(0);
    }
    let rest = key.strip_prefix("audit-i")?;
    let (number, _) = rest.split_once('/')?;
    let instance: u32 = number.parse().ok()?;
    // Only the canonical spelling (no leading zeros) names a chain.
    (instance > 0 && key.starts_with(&audit_prefix(instance))).then_some(instance)
}

#[cfg(test)]
mod tests {
    use super::chain_of;

    #[test]
    fn chains_are_told_apart_by_their_prefix() {
        assert_eq!(chain_of("audit/00000000000000000001"), Some(0));
        assert_eq!(chain_of("audit-i2/00000000000000000001"), Some(2));
        assert_eq!(chain_of("audit-i02/00000000000000000001"), None);
        assert_eq!(chain_of("audit-i0/00000000000000000001"), None);
        assert_eq!(chain_of("audit-ix/1"), None);
        assert_eq!(chain_of("auditor/1"), None);
    }
}
