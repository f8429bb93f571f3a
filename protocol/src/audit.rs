//! The audit log: every use of a share, hash-chained and signed by the enclave, kept by the parent.
//!
//! Entry `n` holds the SHA-256 of entry `n-1`'s bytes, so removing, altering or reordering an
//! entry breaks the chain, and each entry is signed (P-256, r‖s) by the enclave's audit key, whose
//! public key the enclave binds into its attestation documents (`public_key`), so a verifier learns
//! it over an attested session rather than from the host. Stored under `audit/<seq, 20 digits>`.

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use sha2::{Digest, Sha256};

use crate::auth::verify_message;
use crate::error::{ProtocolError, Result};

/// Store key prefix of audit records.
pub const AUDIT_PREFIX: &str = "audit/";

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditEntry {
    /// 1, 2, 3, … without gaps.
    pub seq: u64,
    /// SHA-256 of the previous entry's bytes (zeros for the first).
    pub prev: ByteBuf,
    /// When (milliseconds since the Unix epoch, enclave clock).
    pub time_ms: u64,
    /// The wallet, hex (empty when none).
    pub wallet_id: String,
    /// `create`, `sign`, `refresh`, `recover`, `repair`, `revoke`, …
    pub action: String,
    /// Who asked: `device:<key hex>`, `recovery:<key hex>`, or `-`.
    pub actor: String,
    /// What was asked, hex (the message for `sign`, the request digest otherwise).
    pub digest: String,
    /// `allowed`, or `refused: <reason>`.
    pub decision: String,
}

/// An entry as stored: its exact bytes and the enclave's signature over their hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditRecord {
    /// CBOR of the [`AuditEntry`].
    pub entry: ByteBuf,
    /// P-256 signature (r‖s) over `SHA-256(entry)`.
    pub signature: ByteBuf,
}

/// The store key of entry `seq`.
pub fn audit_key(seq: u64) -> String {
    format!("{AUDIT_PREFIX}{seq:020}")
}

/// Where enclave instance `instance`'s log lives: [`AUDIT_PREFIX`] for instance 0 (the only one
/// before several instances existed), `audit-iN/` for the others. Each instance keeps its own
/// chain under the shared audit key, so instances never contend for one head.
pub fn audit_prefix(instance: u32) -> String {
    if instance == 0 {
        AUDIT_PREFIX.to_owned()
    } else {
        format!("audit-i{instance}/")
    }
}

/// The store key of entry `seq` of the chain under `prefix` ([`audit_prefix`]).
pub fn audit_key_in(prefix: &str, seq: u64) -> String {
    format!("{prefix}{seq:020}")
}

/// Encodes an entry.
pub fn encode_entry(entry: &AuditEntry) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    ciborium::ser::into_writer(entry, &mut out).map_err(ProtocolError::encoding)?;
    Ok(out)
}

/// SHA-256 of an entry's bytes: what the next entry's `prev` holds and what is signed.
pub fn entry_hash(entry_bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(entry_bytes).into()
}

/// Why a log does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuditFault {
    /// A record or entry does not decode.
    #[error("record {position}: malformed: {reason}")]
    Malformed {
        /// Position in the log (1-based).
        position: u64,
        /// Why.
        reason: String,
    },
    /// The signature does not verify under the audit key.
    #[error("entry {seq}: signature does not verify (altered or forged)")]
    Signature {
        /// The entry's sequence number.
        seq: u64,
    },
    /// A sequence number is missing or out of order.
    #[error(
        "entry at position {position} has sequence number {actual}, expected {expected} (removed or reordered)"
    )]
    Sequence {
        /// Position in the log (1-based).
        position: u64,
        /// Expected sequence number.
        expected: u64,
        /// Found.
        actual: u64,
    },
    /// `prev` does not hash the previous entry.
    #[error("entry {seq}: does not chain to the entry before it (removed, altered or reordered)")]
    Chain {
        /// The entry's sequence number.
        seq: u64,
    },
}

/// Decodes one CBOR value that must fill `bytes` exactly.
fn strict<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> std::result::Result<T, String> {
    let mut reader = bytes;
    let value = ciborium::de::from_reader(&mut reader).map_err(|e| e.to_string())?;
    if !reader.is_empty() {
        return Err(format!("{} trailing bytes", reader.len()));
    }
    Ok(value)
}

/// Opens one signed record (a stored one, or a receipt) at `position` in its log: decoded
/// strictly, signed low-S by `audit_key`. Returns its entry and the entry's hash.
///
/// Errors: [`AuditFault::Malformed`], [`AuditFault::Signature`].
pub fn open_record(
    raw: &[u8],
    audit_key: &[u8],
    position: u64,
) -> std::result::Result<(AuditEntry, [u8; 32]), AuditFault> {
    let malformed = |reason: String| AuditFault::Malformed { position, reason };
    let record: AuditRecord = strict(raw).map_err(malformed)?;
    let entry: AuditEntry = strict(&record.entry).map_err(malformed)?;
    // One record, one spelling: low-S signatures only (the enclave signs low-S).
    let low_s = p256::ecdsa::Signature::from_slice(&record.signature)
        .map(|s| s.normalize_s().is_none())
        .unwrap_or(false);
    let hash = entry_hash(&record.entry);
    // ECDSA-SHA256 over the entry's bytes is ECDSA over `hash`: the statement the enclave signed.
    if !low_s || verify_message(audit_key, &record.entry, &record.signature).is_err() {
        return Err(AuditFault::Signature { seq: entry.seq });
    }
    Ok((entry, hash))
}

/// Verifies records in store-key order; returns the number of entries and the head hash.
pub fn verify_log(
    records: &[Vec<u8>],
    audit_key: &[u8],
) -> std::result::Result<(u64, [u8; 32]), AuditFault> {
    let mut prev = [0u8; 32];
    let mut count = 0u64;
    for (i, raw) in records.iter().enumerate() {
        let position = i as u64 + 1;
        let (entry, hash) = open_record(raw, audit_key, position)?;
        if entry.seq != position {
            return Err(AuditFault::Sequence {
                position,
                expected: position,
                actual: entry.seq,
            });
        }
        if entry.prev.as_slice() != prev {
            return Err(AuditFault::Chain { seq: entry.seq });
        }
        prev = hash;
        count = position;
    }
    Ok((count, prev))
}
