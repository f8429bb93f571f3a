//! What the enclave keeps per wallet, sealed, in the parent's store:
//!
//! ```text
//! wallet/<id>/state          WalletState: parties, current epoch, registered keys, revocations
//! wallet/<id>/share/e<n>     ShareRecord: this enclave's KeyPackage and the PublicKeyPackage at epoch n
//! dao/<id>/state             DaoState: invitation, policy, spend history, completed requests
//! dao/<id>/share/p<p>/e<n>   ShareRecord of the provider's party p of a DAO wallet
//! ```
//!
//! Shares are bound (AAD) to wallet, party and epoch. The state is additionally anchored: its
//! SHA-256 sits in a token object ([`Anchor`]) that the host cannot roll back, so serving an older
//! state (one where a since-revoked key was still valid, or an older epoch current) is refused.
//! Updates are crash-safe: the anchor first records the new digest as *pending*, then the blob is
//! written, then the pending digest becomes current; a blob matching either is accepted.

use cosigner_kms::{SealContext, Sealer};
use cosigner_protocol::dao::Invitation;
use cosigner_protocol::policy::PastSpend;
use cosigner_protocol::wire::{Confirmation, DkgParams, ErrorKind, WalletId};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use sha2::{Digest, Sha256};
use zeroize::Zeroize;

use super::Failure;
use super::anchor::{Anchor, AnchorError, Versioned};
use crate::store::BlobStore;

// Every record kind is sealed under a purpose of its own (part of the AAD), so a blob of one kind
// can never be opened as another: a DAO provider share moved into a personal wallet's slot (same
// wallet id, party and epoch) fails to open, and so does a prepared share served as a committed one.
const STATE_PURPOSE: &str = "cosigner-wallet-state";
const SHARE_PURPOSE: &str = "cosigner-share";
const PREPARED_PURPOSE: &str = "cosigner-prepared-share";
const DAO_SHARE_PURPOSE: &str = "cosigner-dao-share";

/// A wallet's lifecycle state.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WalletState {
    /// The DKG parameters (parties, threshold, suite).
    pub params: DkgParams,
    /// Our party number.
    pub party: u16,
    /// The epoch in use.
    pub current_epoch: u64,
    /// Older epochs still kept (until every party confirmed the current one).
    pub retained_epochs: Vec<u64>,
    /// An epoch prepared by a refresh, not yet committed.
    pub prepared_epoch: Option<u64>,
    /// The device key (SEC1 compressed P-256).
    pub device_key: ByteBuf,
    /// The recovery credential.
    pub recovery_key: ByteBuf,
    /// A new device's key while a recovery is in progress.
    pub pending_device_key: Option<ByteBuf>,
    /// Keys that may never be used again.
    pub revoked_keys: Vec<ByteBuf>,
    /// The current epoch's public key package.
    pub public_key_package: ByteBuf,
    /// When the current epoch began (ms since the epoch).
    pub epoch_started_ms: u64,
    /// Signatures made since the current epoch began (persisted only when a limit is set).
    pub signatures: u64,
    /// The spending policy (TOML; its one member `owner` is the device key), set at creation;
    /// only the recovery credential may change it (`super::psbt`). `None`: no policy.
    #[serde(default)]
    pub policy: Option<String>,
    /// The wallet's network name, for rendering addresses (`None`: created before policies).
    #[serde(default)]
    pub network: Option<String>,
    /// Spends signed through PSBTs, for velocity rules (recorded before the shares leave).
    #[serde(default)]
    pub history: Vec<PastSpend>,
    /// The confirmations under which the current epoch was committed (empty at creation): shown
    /// to clients so a cosigner that missed the commit can be rolled forward to the same epoch.
    #[serde(default)]
    pub commit_confirmations: Vec<Confirmation>,
    /// Transactions signed through PSBTs (txid, ms), so a retried or repeated signature of the
    /// same transaction is not counted again (one transaction can be mined once).
    #[serde(default)]
    pub signed_txids: Vec<(String, u64)>,
}

/// One epoch's share.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShareRecord {
    /// The epoch.
    pub epoch: u64,
    /// Our KeyPackage (frost serialization).
    pub key_package: ByteBuf,
    /// The PublicKeyPackage of that epoch.
    pub public_key_package: ByteBuf,
}

impl Drop for ShareRecord {
    fn drop(&mut self) {
        self.key_package.zeroize();
    }
}

fn state_key(id: &WalletId) -> String {
    format!("wallet/{}/state", id.to_hex())
}

fn share_key(id: &WalletId, epoch: u64) -> String {
    format!("wallet/{}/share/e{epoch:020}", id.to_hex())
}

fn anchor_label(id: &WalletId) -> String {
    format!("cosigner-anchor/{}", id.to_hex())
}

/// How often a read retries when a writer moved the anchor under it.
const LOAD_ATTEMPTS: usize = 8;

/// An anchor's generation, current digest and pending digest (if a write is in progress).
fn split_anchor(anchor: Option<&Versioned>) -> (Option<u64>, [u8; 32], Option<[u8; 32]>) {
    let Some(v) = anchor else {
        return (None, [0; 32], None);
    };
    let digest =
        |r: std::ops::Range<usize>| v.value.get(r).and_then(|d| <[u8; 32]>::try_from(d).ok());
    let pending = digest(32..64).filter(|d| *d != [0; 32]);
    (
        Some(v.generation),
        digest(0..32).unwrap_or([0; 32]),
        pending,
    )
}

fn anchor_failure(e: AnchorError) -> Failure {
    match e {
        AnchorError::Conflict { .. } => Failure::new(
            ErrorKind::Busy,
            format!("{e}: another write of this wallet came first; try again"),
        ),
        other => internal(other),
    }
}

fn internal(e: impl std::fmt::Display) -> Failure {
    Failure::new(ErrorKind::Internal, e.to_string())
}

fn integrity(id: &WalletId, what: impl std::fmt::Display) -> Failure {
    Failure::new(
        ErrorKind::Integrity,
        format!("stored state of wallet {id} refused: {what}"),
    )
}

/// Sealed persistence of wallet records.
pub struct Records<'a> {
    /// Seals and opens.
    pub sealer: &'a dyn Sealer,
    /// The parent's store.
    pub store: &'a dyn BlobStore,
    /// Freshness anchors.
    pub anchor: &'a dyn Anchor,
}

impl Records<'_> {
    fn seal<T: Serialize>(&self, ctx: &SealContext, value: &T) -> Result<Vec<u8>, Failure> {
        let mut plain = Vec::new();
        ciborium::ser::into_writer(value, &mut plain).map_err(internal)?;
        let sealed = self.sealer.seal(ctx, &plain);
        plain.zeroize();
        sealed.map_err(|e| internal(format!("sealing: {e}")))
    }

    /// The state's AAD binds the wallet; the party is inside the state (and checked there), so
    /// opening does not depend on knowing it first.
    fn state_ctx(id: &WalletId) -> SealContext {
        SealContext {
            purpose: STATE_PURPOSE,
            wallet_id: id.0,
            party: 0,
            epoch: 0,
        }
    }

    /// Whether any record of this wallet exists (state or anchor).
    pub fn exists(&self, id: &WalletId) -> Result<bool, Failure> {
        Ok(self.store.get(&state_key(id)).map_err(internal)?.is_some()
            || self
                .anchor
                .read(&anchor_label(id))
                .map_err(anchor_failure)?
                .is_some())
    }

    /// Writes the state, moving the anchor with it (pending, write, current).
    pub fn save_state(&self, id: &WalletId, state: &WalletState) -> Result<(), Failure> {
        self.save_anchored(
            &state_key(id),
            &anchor_label(id),
            &Self::state_ctx(id),
            state,
        )
    }

    /// The generation of the wallet's state anchor (`None`: no anchor): it moves with every
    /// state write, so an unchanged generation means an unchanged state. A memory read once the
    /// anchor is cached.
    pub fn state_generation(&self, id: &WalletId) -> Result<Option<u64>, Failure> {
        Ok(self
            .anchor
            .read(&anchor_label(id))
            .map_err(anchor_failure)?
            .map(|v| v.generation))
    }

    /// Reads the state, refusing anything but the anchored one.
    pub fn load_state(&self, id: &WalletId) -> Result<WalletState, Failure> {
        let state: WalletState =
            self.load_anchored(id, &state_key(id), &anchor_label(id), &Self::state_ctx(id))?;
        if state.params.wallet_id != *id {
            return Err(integrity(id, "it names another wallet"));
        }
        Ok(state)
    }

    /// Seals `value` under `ctx` to `key`, moving the anchor `label` with it: the new digest is
    /// first recorded as pending, then the blob written, then the digest made current.
    ///
    /// The caller holds the wallet's writer lock (one writer per wallet); every anchor write is a
    /// compare-and-swap on the generation read here, so a writer that is not alone fails with
    /// nothing written ([`ErrorKind::Busy`]). The base of the new anchor is what is *stored* now:
    /// after a write that crashed between the blob and the anchor, that is the pending digest.
    /// A failure is reported only when nothing committed: once the blob is written the new state
    /// is what loads, so a failure of the last anchor step is left for the next write to finish.
    fn save_anchored<T: Serialize>(
        &self,
        key: &str,
        label: &str,
        ctx: &SealContext,
        value: &T,
    ) -> Result<(), Failure> {
        let blob = self.seal(ctx, value)?;
        let digest: [u8; 32] = Sha256::digest(&blob).into();
        let anchor = self.anchor.read(label).map_err(anchor_failure)?;
        let stored = self
            .store
            .get(key)
            .map_err(internal)?
            .map(|b| <[u8; 32]>::from(Sha256::digest(&b)));
        let (generation, current, pending) = split_anchor(anchor.as_ref());
        let base = match (stored, pending) {
            (Some(s), Some(p)) if s == p => p,
            _ => current,
        };
        let generation = self
            .anchor
            .write(label, generation, &[&base[..], &digest].concat())
            .map_err(anchor_failure)?;
        self.store.put(key, &blob).map_err(internal)?;
        // Committed: a blob matching the pending digest loads. Finishing is an optimisation.
        let _ = self
            .anchor
            .write(label, Some(generation), &[&digest[..], &[0u8; 32]].concat());
        Ok(())
    }

    /// Reads the blob at `key`, refusing anything but the one anchored at `label`. Never writes:
    /// a pending digest is accepted as it is (the next writer, under the wallet's lock, finishes
    /// it). The anchor is read before and after the blob; if it moved meanwhile (a concurrent
    /// writer), the read is repeated, so a reader never mistakes a write in progress for a
    /// rollback.
    fn load_anchored<T: serde::de::DeserializeOwned>(
        &self,
        id: &WalletId,
        key: &str,
        label: &str,
        ctx: &SealContext,
    ) -> Result<T, Failure> {
        for _ in 0..LOAD_ATTEMPTS {
            let before = self.anchor.read(label).map_err(anchor_failure)?;
            let blob = self.store.get(key).map_err(internal)?;
            let after = self.anchor.read(label).map_err(anchor_failure)?;
            if before.as_ref().map(|v| v.generation) != after.as_ref().map(|v| v.generation) {
                continue;
            }
            let Some(blob) = blob else {
                return Err(match after {
                    Some(_) => integrity(id, "the host no longer serves it"),
                    None => Failure::new(ErrorKind::NotFound, format!("unknown wallet {id}")),
                });
            };
            if after.is_none() {
                return Err(integrity(id, "this enclave's token holds no anchor for it"));
            }
            let digest: [u8; 32] = Sha256::digest(&blob).into();
            let (_, current, pending) = split_anchor(after.as_ref());
            if current != digest && pending != Some(digest) {
                return Err(integrity(
                    id,
                    "it is not the current state (rolled back, replaced or altered by the host)",
                ));
            }
            let plain = self.sealer.open(ctx, &blob).map_err(|e| integrity(id, e))?;
            return ciborium::de::from_reader(plain.as_slice()).map_err(|e| integrity(id, e));
        }
        Err(Failure::new(
            ErrorKind::Busy,
            format!("wallet {id} is being written: try again"),
        ))
    }

    fn share_ctx(purpose: &'static str, id: &WalletId, party: u16, epoch: u64) -> SealContext {
        SealContext {
            purpose,
            wallet_id: id.0,
            party,
            epoch,
        }
    }

    /// Stores one epoch's share.
    pub fn save_share(
        &self,
        id: &WalletId,
        party: u16,
        share: &ShareRecord,
    ) -> Result<(), Failure> {
        let blob = self.seal(
            &Self::share_ctx(SHARE_PURPOSE, id, party, share.epoch),
            share,
        )?;
        self.store
            .put(&share_key(id, share.epoch), &blob)
            .map_err(internal)
    }

    /// Reads one epoch's share.
    pub fn load_share(
        &self,
        id: &WalletId,
        party: u16,
        epoch: u64,
    ) -> Result<ShareRecord, Failure> {
        self.open_share(
            SHARE_PURPOSE,
            id,
            &share_key(id, epoch),
            party,
            epoch,
            format!("the share of epoch {epoch} is missing"),
        )
    }

    /// Reads and opens the share blob at `key`, bound to `id`, `party` and `epoch`.
    fn open_share(
        &self,
        purpose: &'static str,
        id: &WalletId,
        key: &str,
        party: u16,
        epoch: u64,
        missing: String,
    ) -> Result<ShareRecord, Failure> {
        let blob = self
            .store
            .get(key)
            .map_err(internal)?
            .ok_or_else(|| integrity(id, missing))?;
        let plain = self
            .sealer
            .open(&Self::share_ctx(purpose, id, party, epoch), &blob)
            .map_err(|e| integrity(id, e))?;
        let share: ShareRecord =
            ciborium::de::from_reader(plain.as_slice()).map_err(|e| integrity(id, e))?;
        if share.epoch != epoch {
            return Err(integrity(id, "share of another epoch"));
        }
        Ok(share)
    }

    /// Deletes one epoch's share.
    pub fn delete_share(&self, id: &WalletId, epoch: u64) -> Result<(), Failure> {
        self.store.delete(&share_key(id, epoch)).map_err(internal)
    }
}

/// A personal wallet's refreshed share after rounds 1–3, not yet committed, with what its commit
/// checks: kept sealed in the store (not only in memory), so the commit can come from another
/// session or after a restart — a refresh that committed at one cosigner can always be rolled
/// forward at the other.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreparedRecord {
    /// The new share (its `epoch` is `from_epoch + 1`).
    pub share: ShareRecord,
    /// The epoch refreshed from.
    pub from_epoch: u64,
    /// Our own confirmation of the ceremony (transcript and public key package hashes).
    pub confirmation: Confirmation,
    /// Started by a recovering device's pending key: committing it makes that key current.
    pub recovery: bool,
    /// The key that started it (for a recovery, only that key may commit it).
    pub started_by: ByteBuf,
}

/// Most prepared refreshes kept per wallet and epoch: beyond, a new refresh is refused until one
/// is committed (never evicted: a refresh committed at the other cosigner must stay reachable).
pub const MAX_PREPARED: usize = 4;

fn prepared_prefix(id: &WalletId, epoch: u64) -> String {
    format!("wallet/{}/prepared/e{epoch:020}/", id.to_hex())
}

fn prepared_key(id: &WalletId, epoch: u64, transcript_hash: &[u8]) -> String {
    format!(
        "{}{}",
        prepared_prefix(id, epoch),
        hex::encode(transcript_hash)
    )
}

impl Records<'_> {
    /// Stores a prepared refresh, refusing more than [`MAX_PREPARED`] for one epoch (twice that
    /// for a recovery's refresh, so a device that filled the slots cannot block a recovery).
    pub fn save_prepared(
        &self,
        id: &WalletId,
        party: u16,
        prepared: &PreparedRecord,
        recovery: bool,
    ) -> Result<(), Failure> {
        let epoch = prepared.share.epoch;
        let key = prepared_key(id, epoch, &prepared.confirmation.transcript_hash);
        let existing = self.prepared_keys(id, epoch)?;
        let limit = if recovery {
            2 * MAX_PREPARED
        } else {
            MAX_PREPARED
        };
        if !existing.contains(&key) && existing.len() >= limit {
            return Err(Failure::new(
                ErrorKind::Busy,
                format!(
                    "wallet {id} has {MAX_PREPARED} unfinished refreshes to epoch {epoch}: commit \
                     one (or recover) first"
                ),
            ));
        }
        let blob = self.seal(
            &Self::share_ctx(PREPARED_PURPOSE, id, party, epoch),
            prepared,
        )?;
        self.store.put(&key, &blob).map_err(internal)
    }

    /// The prepared refresh to `epoch` whose transcript hashed to `transcript_hash`, if stored.
    pub fn load_prepared(
        &self,
        id: &WalletId,
        party: u16,
        epoch: u64,
        transcript_hash: &[u8],
    ) -> Result<Option<PreparedRecord>, Failure> {
        let Some(blob) = self
            .store
            .get(&prepared_key(id, epoch, transcript_hash))
            .map_err(internal)?
        else {
            return Ok(None);
        };
        let plain = self
            .sealer
            .open(&Self::share_ctx(PREPARED_PURPOSE, id, party, epoch), &blob)
            .map_err(|e| integrity(id, e))?;
        let prepared: PreparedRecord =
            ciborium::de::from_reader(plain.as_slice()).map_err(|e| integrity(id, e))?;
        if prepared.share.epoch != epoch
            || prepared.confirmation.transcript_hash.as_slice() != transcript_hash
        {
            return Err(integrity(id, "prepared share of another refresh"));
        }
        Ok(Some(prepared))
    }

    /// Deletes every prepared refresh to `epoch`.
    pub fn delete_prepared(&self, id: &WalletId, epoch: u64) -> Result<(), Failure> {
        for key in self.prepared_keys(id, epoch)? {
            self.store.delete(&key).map_err(internal)?;
        }
        Ok(())
    }

    fn prepared_keys(&self, id: &WalletId, epoch: u64) -> Result<Vec<String>, Failure> {
        self.store
            .list(&prepared_prefix(id, epoch))
            .map_err(internal)
    }
}

const DAO_STATE_PURPOSE: &str = "cosigner-dao-state";

/// A DAO wallet's state (see `super::dao`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaoState {
    /// The invitation the wallet was created from (members, provider key, network, first policy).
    pub invitation: Invitation,
    /// The policy in force (TOML text).
    pub policy: String,
    /// Bumped on each policy change.
    pub policy_version: u64,
    /// The smallest tier fixed at creation (the provider's weight depends on it).
    pub min_approvals: u16,
    /// The provider's parties.
    pub provider_parties: Vec<u16>,
    /// Share epoch.
    pub epoch: u64,
    /// The group's PublicKeyPackage (frost serialization).
    pub public_key_package: ByteBuf,
    /// Spends signed, for velocity rules.
    pub history: Vec<PastSpend>,
    /// Requests signed recently (hash, ms), so a replayed request is not signed twice.
    pub completed: Vec<(ByteBuf, u64)>,
    /// Transactions signed (txid, ms): a new request for a transaction already signed does not
    /// count its spend again (one transaction can be mined once).
    #[serde(default)]
    pub signed_txids: Vec<(String, u64)>,
}

fn dao_state_key(id: &WalletId) -> String {
    format!("dao/{}/state", id.to_hex())
}

fn dao_share_key(id: &WalletId, party: u16, epoch: u64) -> String {
    format!("dao/{}/share/p{party:05}/e{epoch:020}", id.to_hex())
}

fn dao_anchor_label(id: &WalletId) -> String {
    format!("cosigner-anchor/dao/{}", id.to_hex())
}

impl Records<'_> {
    fn dao_state_ctx(id: &WalletId) -> SealContext {
        SealContext {
            purpose: DAO_STATE_PURPOSE,
            wallet_id: id.0,
            party: 0,
            epoch: 0,
        }
    }

    /// Whether a DAO wallet (state or anchor) exists.
    pub fn dao_exists(&self, id: &WalletId) -> Result<bool, Failure> {
        Ok(self
            .store
            .get(&dao_state_key(id))
            .map_err(internal)?
            .is_some()
            || self
                .anchor
                .read(&dao_anchor_label(id))
                .map_err(anchor_failure)?
                .is_some())
    }

    /// Writes a DAO wallet's state (anchored like a personal wallet's).
    pub fn save_dao_state(&self, id: &WalletId, state: &DaoState) -> Result<(), Failure> {
        self.save_anchored(
            &dao_state_key(id),
            &dao_anchor_label(id),
            &Self::dao_state_ctx(id),
            state,
        )
    }

    /// Reads a DAO wallet's state, refusing anything but the anchored one.
    pub fn load_dao_state(&self, id: &WalletId) -> Result<DaoState, Failure> {
        let state: DaoState = self.load_anchored(
            id,
            &dao_state_key(id),
            &dao_anchor_label(id),
            &Self::dao_state_ctx(id),
        )?;
        if state.invitation.topic().ok() != Some(id.0) {
            return Err(integrity(id, "it names another wallet"));
        }
        Ok(state)
    }

    /// Stores the share of one of the provider's parties of a DAO wallet.
    pub fn save_dao_share(
        &self,
        id: &WalletId,
        party: u16,
        share: &ShareRecord,
    ) -> Result<(), Failure> {
        let blob = self.seal(
            &Self::share_ctx(DAO_SHARE_PURPOSE, id, party, share.epoch),
            share,
        )?;
        self.store
            .put(&dao_share_key(id, party, share.epoch), &blob)
            .map_err(internal)
    }

    /// Deletes one epoch's share of one of the provider's parties of a DAO wallet.
    pub fn delete_dao_share(&self, id: &WalletId, party: u16, epoch: u64) -> Result<(), Failure> {
        self.store
            .delete(&dao_share_key(id, party, epoch))
            .map_err(internal)
    }

    /// Reads the share of one of the provider's parties of a DAO wallet.
    pub fn load_dao_share(
        &self,
        id: &WalletId,
        party: u16,
        epoch: u64,
    ) -> Result<ShareRecord, Failure> {
        self.open_share(
            DAO_SHARE_PURPOSE,
            id,
            &dao_share_key(id, party, epoch),
            party,
            epoch,
            format!("the share of party {party} at epoch {epoch} is missing"),
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::service::anchor::InsecureMemoryAnchor;
    use crate::store::MemoryStore;
    use cosigner_kms::SEAL_KEY_ID_LEN;
    use zeroize::Zeroizing;

    /// Binds the context by prefixing it (no secrecy: these tests are about which blob loads).
    struct ContextSealer;

    fn tag(aad: &SealContext) -> Vec<u8> {
        let mut t = Vec::new();
        ciborium::ser::into_writer(&(aad.purpose, aad.wallet_id, aad.party, aad.epoch), &mut t)
            .unwrap();
        let digest: [u8; 32] = Sha256::digest(&t).into();
        digest.to_vec()
    }

    impl Sealer for ContextSealer {
        fn seal(&self, aad: &SealContext, plaintext: &[u8]) -> cosigner_kms::Result<Vec<u8>> {
            Ok([tag(aad).as_slice(), plaintext].concat())
        }

        fn open(
            &self,
            aad: &SealContext,
            sealed: &[u8],
        ) -> cosigner_kms::Result<Zeroizing<Vec<u8>>> {
            match sealed.split_at_checked(32) {
                Some((t, rest)) if t == tag(aad).as_slice() => Ok(Zeroizing::new(rest.to_vec())),
                _ => Err(cosigner_kms::KmsError::Unseal {
                    reason: "context mismatch".into(),
                }),
            }
        }

        fn key_id(&self) -> [u8; SEAL_KEY_ID_LEN] {
            [0; SEAL_KEY_ID_LEN]
        }
    }

    /// Fails the `n`th write (0-based) and every later one: a crash at that step.
    struct CrashingAnchor {
        inner: InsecureMemoryAnchor,
        writes: std::sync::atomic::AtomicUsize,
        crash_at: usize,
    }

    impl Anchor for CrashingAnchor {
        fn read(&self, label: &str) -> Result<Option<Versioned>, AnchorError> {
            self.inner.read(label)
        }

        fn write(
            &self,
            label: &str,
            expected: Option<u64>,
            value: &[u8],
        ) -> Result<u64, AnchorError> {
            let n = self
                .writes
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if n >= self.crash_at {
                return Err(AnchorError::Backend {
                    label: label.into(),
                    reason: "crashed".into(),
                });
            }
            self.inner.write(label, expected, value)
        }
    }

    fn state(id: WalletId, epoch: u64) -> WalletState {
        WalletState {
            params: DkgParams {
                wallet_id: id,
                ciphersuite: "FROST-secp256k1-SHA256-TR-v1".into(),
                min_signers: 2,
                parties: vec![1, 2, 3],
            },
            party: 2,
            current_epoch: epoch,
            retained_epochs: Vec::new(),
            prepared_epoch: None,
            device_key: ByteBuf::from(vec![2; 33]),
            recovery_key: ByteBuf::from(vec![3; 33]),
            pending_device_key: None,
            revoked_keys: Vec::new(),
            public_key_package: ByteBuf::from(vec![1; 8]),
            epoch_started_ms: 0,
            signatures: 0,
            policy: None,
            network: None,
            history: Vec::new(),
            commit_confirmations: Vec::new(),
            signed_txids: Vec::new(),
        }
    }

    /// A crash between any two steps of an anchored write (before the first anchor write, after
    /// it, after the blob, after the last) leaves a wallet that loads, at the old or the new
    /// state, and the next write succeeds.
    #[test]
    fn a_crash_between_any_two_steps_of_a_state_write_leaves_a_wallet_that_loads() {
        let id = WalletId([5; 16]);
        // Writes: creation = 2 anchor writes; the update = 2 more (pending, current).
        for crash_at in 2..=4 {
            let anchor = CrashingAnchor {
                inner: InsecureMemoryAnchor::default(),
                writes: 0.into(),
                crash_at,
            };
            let store = MemoryStore::default();
            let records = Records {
                sealer: &ContextSealer,
                store: &store,
                anchor: &anchor,
            };
            records.save_state(&id, &state(id, 0)).unwrap();
            let update = records.save_state(&id, &state(id, 1));
            let loaded = records.load_state(&id).unwrap();
            match crash_at {
                // Nothing committed: reported, old state.
                2 => {
                    assert!(update.is_err());
                    assert_eq!(loaded.current_epoch, 0);
                }
                // Blob written, last anchor step lost: committed, not reported, new state.
                _ => {
                    assert!(update.is_ok(), "{crash_at}: {update:?}");
                    assert_eq!(loaded.current_epoch, 1);
                }
            }
            // The "restarted" enclave writes on from there.
            let fresh = Records {
                sealer: &ContextSealer,
                store: &store,
                anchor: &anchor.inner,
            };
            fresh.save_state(&id, &state(id, 7)).unwrap();
            assert_eq!(fresh.load_state(&id).unwrap().current_epoch, 7);
        }
    }

    /// An older state blob served by the host is refused; a conflicting anchor writer gets Busy.
    #[test]
    fn a_rolled_back_blob_is_refused_and_a_stale_writer_is_busy() {
        let id = WalletId([6; 16]);
        let anchor = InsecureMemoryAnchor::default();
        let store = MemoryStore::default();
        let records = Records {
            sealer: &ContextSealer,
            store: &store,
            anchor: &anchor,
        };
        records.save_state(&id, &state(id, 0)).unwrap();
        let old = store.get(&state_key(&id)).unwrap().unwrap();
        records.save_state(&id, &state(id, 1)).unwrap();
        store.put(&state_key(&id), &old).unwrap();
        let refused = records.load_state(&id).unwrap_err();
        assert_eq!(refused.0.kind, ErrorKind::Integrity);
        // Someone else moved the anchor between our read and our write.
        let label = anchor_label(&id);
        let current = anchor.read(&label).unwrap().unwrap();
        anchor
            .write(&label, Some(current.generation), &current.value)
            .unwrap();
        let stale = anchor.write(&label, Some(current.generation), &current.value);
        assert!(matches!(stale, Err(AnchorError::Conflict { .. })));
        assert_eq!(anchor_failure(stale.unwrap_err()).0.kind, ErrorKind::Busy);
    }

    /// A DAO provider share moved (by the parent) into a personal wallet's share slot — same
    /// wallet id, party and epoch — does not open: each record kind has its own sealing purpose.
    #[test]
    fn a_dao_share_moved_into_a_personal_slot_does_not_open() {
        let id = WalletId([7; 16]);
        let anchor = InsecureMemoryAnchor::default();
        let store = MemoryStore::default();
        let records = Records {
            sealer: &ContextSealer,
            store: &store,
            anchor: &anchor,
        };
        let share = ShareRecord {
            epoch: 0,
            key_package: ByteBuf::from(vec![1; 4]),
            public_key_package: ByteBuf::from(vec![2; 4]),
        };
        records.save_dao_share(&id, 2, &share).unwrap();
        let blob = store.get(&dao_share_key(&id, 2, 0)).unwrap().unwrap();
        store.put(&share_key(&id, 0), &blob).unwrap();
        let refused = records.load_share(&id, 2, 0).err().unwrap();
        assert_eq!(refused.0.kind, ErrorKind::Integrity);
        // And the other way round.
        records.save_share(&id, 2, &share).unwrap();
        let blob = store.get(&share_key(&id, 0)).unwrap().unwrap();
        store.put(&dao_share_key(&id, 2, 0), &blob).unwrap();
        assert!(records.load_dao_share(&id, 2, 0).is_err());
    }
}
