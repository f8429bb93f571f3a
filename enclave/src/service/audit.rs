//! The enclave side of the audit log (format in `cosigner_protocol::audit`).
//!
//! The audit key is a P-256 key made inside the enclave on first start, kept sealed by the parent
//! like a share, and bound into every attestation document (`public_key`), so verifiers get it over
//! an attested session. Appends are group-committed in order ([`Queue`]); the head continues from
//! the last stored entry, which must verify under our key.

use std::collections::HashMap;
use std::sync::{Condvar, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use cosigner_kms::{SealContext, Sealer};
use cosigner_protocol::audit::{
    AUDIT_PREFIX, AuditEntry, AuditRecord, audit_key_in, audit_prefix, encode_entry, entry_hash,
    verify_log,
};
use cosigner_protocol::auth::public_key_bytes;
use cosigner_protocol::wire::MAX_PUT_MANY;
use p256::ecdsa::SigningKey;
use serde_bytes::ByteBuf;
use zeroize::Zeroizing;

use crate::store::BlobStore;

const AUDIT_KEY_BLOB: &str = "enclave/audit-key";
/// The anchor holding the sealed audit key's SHA-256.
const AUDIT_KEY_ANCHOR: &str = "cosigner-anchor/audit-key";
const AUDIT_KEY_PURPOSE: &str = "cosigner-audit-key";

/// The signed, hash-chained log.
pub struct AuditLog {
    key: SigningKey,
    /// The same key in aws-lc-rs, which signs an order of magnitude faster than pure Rust; an
    /// entry is appended on every signature, so this is on the signing path.
    fast: aws_lc_rs::signature::EcdsaKeyPair,
    /// The last durable entry's sequence number and hash: moved only by a write that stored.
    head: Mutex<(u64, [u8; 32])>,
    /// Where this instance's chain lives (`cosigner_protocol::audit::audit_prefix`).
    prefix: String,
    /// Entries waiting for the next write (group commit).
    queue: Mutex<Queue>,
    /// Signalled after every write.
    written: Condvar,
}

/// Group commit: appenders queue their entries; whoever finds no write in progress writes every
/// queued entry in one store write (one transaction, one sync at the parent) and hands each
/// appender its outcome. Concurrent signatures share a sync instead of waiting for one each, and
/// no appender returns before its entry is durable (nothing signed that the log lacks).
#[derive(Default)]
struct Queue {
    /// Entries not numbered or chained yet (`seq` and `prev` are set by the write).
    waiting: Vec<(u64, AuditEntry)>,
    writing: bool,
    done: HashMap<u64, Result<Vec<u8>, String>>,
    next: u64,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("public_key", &hex::encode(self.public_key()))
            .finish_non_exhaustive()
    }
}

fn context() -> SealContext {
    SealContext {
        purpose: AUDIT_KEY_PURPOSE,
        wallet_id: [0; 16],
        party: 0,
        epoch: 0,
    }
}

impl AuditLog {
    /// Loads (or creates on first start) the audit key and finds the head of the log.
    ///
    /// The sealed key's digest is anchored (`anchor`, like wallet states): the audit key is also
    /// the provider's identity the recovery cosigner checks commit receipts against, so a host
    /// that deletes or swaps the blob must not make this enclave silently start over with a new
    /// key (refreshes would then never commit at the recovery cosigner again). With the blob
    /// gone but the anchor there, the enclave refuses to start.
    pub fn open(
        sealer: &dyn Sealer,
        store: &dyn BlobStore,
        anchor: &dyn crate::service::anchor::Anchor,
    ) -> Result<Self, String> {
        Self::open_instance(sealer, store, anchor, 0)
    }

    /// [`AuditLog::open`] for enclave instance `instance`: the same audit key, this instance's
    /// own chain.
    pub fn open_instance(
        sealer: &dyn Sealer,
        store: &dyn BlobStore,
        anchor: &dyn crate::service::anchor::Anchor,
        instance: u32,
    ) -> Result<Self, String> {
        use sha2::Digest as _;
        let anchored = anchor.read(AUDIT_KEY_ANCHOR).map_err(|e| e.to_string())?;
        let stored = store.get(AUDIT_KEY_BLOB).map_err(|e| e.to_string())?;
        match (&anchored, &stored) {
            (Some(a), Some(blob))
                if a.value.as_slice() != <[u8; 32]>::from(sha2::Sha256::digest(blob)) =>
            {
                return Err("the stored audit key is not the one this enclave anchored \
                            (replaced by the host)"
                    .into());
            }
            (Some(_), None) => {
                return Err(
                    "the audit key this enclave anchored is missing from the store \
                            (deleted by the host, or the wrong database): refusing to make a \
                            new one"
                        .into(),
                );
            }
            _ => {}
        }
        let key = match stored {
            Some(blob) => {
                let secret = sealer
                    .open(&context(), &blob)
                    .map_err(|e| format!("audit key: {e}"))?;
                SigningKey::from_slice(&secret).map_err(|e| format!("audit key: {e}"))?
            }
            None => {
                let key = SigningKey::random(&mut rand_core::OsRng);
                let secret = Zeroizing::new(key.to_bytes().to_vec());
                let blob = sealer
                    .seal(&context(), &secret)
                    .map_err(|e| format!("audit key: {e}"))?;
                store
                    .put(AUDIT_KEY_BLOB, &blob)
                    .map_err(|e| e.to_string())?;
                key
            }
        };
        if anchored.is_none() {
            // First start (or a store from before the anchor): anchor the key in use now.
            let blob = store
                .get(AUDIT_KEY_BLOB)
                .map_err(|e| e.to_string())?
                .ok_or("the audit key vanished from the store")?;
            anchor
                .write(AUDIT_KEY_ANCHOR, None, &sha2::Sha256::digest(&blob))
                .map_err(|e| format!("anchoring the audit key: {e}"))?;
        }
        let public = key.verifying_key().to_encoded_point(false);
        let fast = aws_lc_rs::signature::EcdsaKeyPair::from_private_key_and_public_key(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &Zeroizing::new(key.to_bytes().to_vec()),
            public.as_bytes(),
        )
        .map_err(|e| format!("audit key: {e}"))?;
        let log = Self {
            key,
            fast,
            head: Mutex::new((0, [0; 32])),
            prefix: audit_prefix(instance),
            queue: Mutex::new(Queue::default()),
            written: Condvar::new(),
        };
        let keys = store.list(&log.prefix).map_err(|e| e.to_string())?;
        if let Some(last) = keys.last() {
            let raw = store
                .get(last)
                .map_err(|e| e.to_string())?
                .ok_or("audit tail vanished")?;
            let record: AuditRecord =
                ciborium::de::from_reader(raw.as_slice()).map_err(|e| e.to_string())?;
            let entry: AuditEntry =
                ciborium::de::from_reader(record.entry.as_slice()).map_err(|e| e.to_string())?;
            // The tail alone must be ours; the whole chain is checked by `audit verify`.
            let hash = entry_hash(&record.entry);
            cosigner_protocol::auth::verify_digest(&log.public_key(), &hash, &record.signature)
                .map_err(|_| {
                    "the audit log's last entry is not signed by this enclave".to_owned()
                })?;
            if let Ok(mut head) = log.head.lock() {
                *head = (entry.seq, hash);
            }
        }
        Ok(log)
    }

    /// The audit key (SEC1 compressed), bound into attestation documents.
    pub fn public_key(&self) -> Vec<u8> {
        public_key_bytes(&self.key)
    }

    /// Signs a mailbox envelope with the same key: the enclave's attested identity towards DAO
    /// members (the envelope digest is domain-separated from audit entries).
    pub fn seal_envelope(
        &self,
        topic: cosigner_protocol::mailbox::Topic,
        body: Vec<u8>,
    ) -> Result<cosigner_protocol::mailbox::Envelope, String> {
        cosigner_protocol::mailbox::Envelope::seal(&self.key, topic, body)
            .map_err(|e| e.to_string())
    }

    /// Signs a 32-byte digest (a commit receipt, `auth::commit_receipt_digest`: domain-separated
    /// from audit entries and envelopes).
    pub fn sign_digest(&self, digest: &[u8; 32]) -> Result<[u8; 64], String> {
        cosigner_protocol::auth::sign_digest(&self.key, digest).map_err(|e| e.to_string())
    }

    /// Appends an entry and answers its stored record (`AuditRecord`, CBOR: the entry and our
    /// signature), which is also the receipt a client may keep. Returns once the entry is
    /// durable, written together with whatever other appenders queued meanwhile ([`Queue`]).
    /// Failing to log fails the operation: no unlogged share use.
    pub fn append(
        &self,
        store: &dyn BlobStore,
        wallet_id: &str,
        action: &str,
        actor: &str,
        digest: &[u8],
        decision: &str,
    ) -> Result<Vec<u8>, String> {
        let poisoned = |_| "audit lock poisoned".to_owned();
        let mut queue = self.queue.lock().map_err(poisoned)?;
        let ticket = queue.next;
        queue.next = queue.next.wrapping_add(1);
        let draft = AuditEntry {
            seq: 0,
            prev: ByteBuf::new(),
            time_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            wallet_id: wallet_id.to_owned(),
            action: action.to_owned(),
            actor: actor.to_owned(),
            digest: hex::encode(digest),
            decision: decision.to_owned(),
        };
        queue.waiting.push((ticket, draft));
        loop {
            if let Some(outcome) = queue.done.remove(&ticket) {
                return outcome;
            }
            if queue.writing {
                queue = self.written.wait(queue).map_err(poisoned)?;
                continue;
            }
            queue.writing = true;
            let take = queue.waiting.len().min(MAX_PUT_MANY);
            let batch: Vec<(u64, AuditEntry)> = queue.waiting.drain(..take).collect();
            drop(queue);
            let outcomes = self.write(store, batch);
            queue = self.queue.lock().map_err(poisoned)?;
            queue.writing = false;
            queue.done.extend(outcomes);
            self.written.notify_all();
        }
    }

    /// One write: `batch` numbered and chained after the head, signed, and stored at once; the
    /// head moves only when the store took it all. Every appender of the batch gets its record,
    /// or the one failure.
    fn write(
        &self,
        store: &dyn BlobStore,
        mut batch: Vec<(u64, AuditEntry)>,
    ) -> Vec<(u64, Result<Vec<u8>, String>)> {
        let mut stored = || -> Result<Vec<(String, Vec<u8>)>, String> {
            let mut head = self.head.lock().map_err(|_| "audit lock poisoned")?;
            let (mut seq, mut prev) = *head;
            let mut records = Vec::with_capacity(batch.len());
            for (_, entry) in &mut batch {
                seq += 1;
                entry.seq = seq;
                entry.prev = ByteBuf::from(prev.to_vec());
                let (record, hash) = self.sign_entry(entry)?;
                records.push((audit_key_in(&self.prefix, seq), record));
                prev = hash;
            }
            store.put_many(&records).map_err(|e| e.to_string())?;
            *head = (seq, prev);
            Ok(records)
        };
        match stored() {
            Ok(records) => batch
                .iter()
                .zip(records)
                .map(|((ticket, _), (_, record))| (*ticket, Ok(record)))
                .collect(),
            Err(e) => batch
                .iter()
                .map(|(ticket, _)| (*ticket, Err(e.clone())))
                .collect(),
        }
    }

    /// `entry` signed: its record and its hash.
    fn sign_entry(&self, entry: &AuditEntry) -> Result<(Vec<u8>, [u8; 32]), String> {
        let bytes = encode_entry(entry).map_err(|e| e.to_string())?;
        let hash = entry_hash(&bytes);
        // ECDSA-SHA256 over the entry = ECDSA over SHA-256(entry) = what `verify_log` checks.
        let raw = self
            .fast
            .sign(&aws_lc_rs::rand::SystemRandom::new(), &bytes)
            .map_err(|e| format!("audit signature: {e}"))?;
        let signature =
            p256::ecdsa::Signature::from_slice(raw.as_ref()).map_err(|e| e.to_string())?;
        // Low-S, one spelling per signature (verify_log refuses high-S).
        let signature = signature.normalize_s().unwrap_or(signature).to_bytes();
        let mut record = Vec::new();
        ciborium::ser::into_writer(
            &AuditRecord {
                entry: ByteBuf::from(bytes),
                signature: ByteBuf::from(signature.to_vec()),
            },
            &mut record,
        )
        .map_err(|e| e.to_string())?;
        Ok((record, hash))
    }
}

/// Verifies a whole stored log (for tests and tooling running next to the enclave).
pub fn verify_stored(store: &dyn BlobStore, audit_key: &[u8]) -> Result<u64, String> {
    let keys = store.list(AUDIT_PREFIX).map_err(|e| e.to_string())?;
    let mut records = Vec::new();
    for k in keys {
        records.push(
            store
                .get(&k)
                .map_err(|e| e.to_string())?
                .unwrap_or_default(),
        );
    }
    verify_log(&records, audit_key)
        .map(|(n, _)| n)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::atomic::{AtomicUsize, Ordering};

    use cosigner_kms::{SEAL_KEY_ID_LEN, SealContext};

    use super::*;
    use crate::service::anchor::InsecureMemoryAnchor;
    use crate::store::{MemoryStore, StoreError};

    /// Seals nothing (the audit key in the clear): only the log is under test here.
    struct PlainSealer;

    impl Sealer for PlainSealer {
        fn seal(&self, _: &SealContext, plaintext: &[u8]) -> cosigner_kms::Result<Vec<u8>> {
            Ok(plaintext.to_vec())
        }
        fn open(&self, _: &SealContext, sealed: &[u8]) -> cosigner_kms::Result<Zeroizing<Vec<u8>>> {
            Ok(Zeroizing::new(sealed.to_vec()))
        }
        fn key_id(&self) -> [u8; SEAL_KEY_ID_LEN] {
            [0; SEAL_KEY_ID_LEN]
        }
    }

    /// Counts writes.
    #[derive(Default)]
    struct Counting {
        inner: MemoryStore,
        writes: AtomicUsize,
    }

    impl BlobStore for Counting {
        fn put(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
            self.writes.fetch_add(1, Ordering::SeqCst);
            self.inner.put(key, value)
        }
        fn put_many(&self, entries: &[(String, Vec<u8>)]) -> Result<(), StoreError> {
            self.writes.fetch_add(1, Ordering::SeqCst);
            entries.iter().try_for_each(|(k, v)| self.inner.put(k, v))
        }
        fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
            self.inner.get(key)
        }
        fn delete(&self, key: &str) -> Result<(), StoreError> {
            self.inner.delete(key)
        }
        fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
            self.inner.list(prefix)
        }
    }

    #[test]
    fn concurrent_appends_share_writes_and_leave_one_unbroken_chain() {
        let store = Counting::default();
        let log = AuditLog::open(&PlainSealer, &store, &InsecureMemoryAnchor::default()).unwrap();
        let writes_before = store.writes.load(Ordering::SeqCst);
        let (threads, each) = (4u8, 50u8);
        let records: Vec<Vec<u8>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let (log, store) = (&log, &store);
                    s.spawn(move || {
                        (0..each)
                            .map(|i| {
                                log.append(store, "00", "sign", "-", &[t, i], "allowed")
                                    .unwrap()
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        });
        let total = u64::from(threads) * u64::from(each);
        // Every appender got its own entry back, durable and numbered once.
        let mut seqs: Vec<u64> = records
            .iter()
            .map(|r| {
                cosigner_protocol::audit::open_record(r, &log.public_key(), 1)
                    .unwrap()
                    .0
                    .seq
            })
            .collect();
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=total).collect::<Vec<_>>());
        assert_eq!(
            verify_stored(&store.inner, &log.public_key()).unwrap(),
            total
        );
        // Never more writes than entries (how many are shared depends on timing).
        let writes = store.writes.load(Ordering::SeqCst) - writes_before;
        assert!(
            writes as u64 <= total,
            "{writes} writes for {total} entries"
        );
    }
}
