//! What the enclave keeps per wallet, sealed, in the parent's store:
//!
//! ```text
//! wallet/<id>/state/<sha256>   WalletState: parties, current epoch, registered keys, revocations
//! wallet/<id>/share/e<n>       ShareRecord: this enclave's KeyPackage and the PublicKeyPackage at epoch n
//! wallet/<id>/prepared/e<n>/<transcript>  PreparedRecord: a refresh to epoch n, not yet committed
//! dao/<id>/state/<sha256>      DaoState: invitation, policy, spend history, completed requests
//! dao/<id>/share/p<p>/e<n>     ShareRecord of the provider's party p of a DAO wallet
//! ```
//!
//! Shares are bound (AAD) to wallet, party and epoch. The state is additionally anchored: the
//! SHA-256 of the current sealed state blob sits in a token object ([`Anchor`]) that the host
//! cannot roll back, and the blob is stored under that digest. Serving an older state (one where
//! a since-revoked key was still valid, or an older epoch current) is refused: the enclave reads
//! only the blob the anchor names.
//!
//! The anchor's compare-and-swap is the one commit point of a state change: the new blob is
//! written under its own digest first (nothing reads it yet), then the anchor moves from the old
//! digest to the new one, then the old blob is deleted. A crash between any two steps leaves the
//! old or the new state, never a window in which both load; a write whose anchor step failed
//! ambiguously is resolved by reading the anchor back, and unresolved it is reported as failed
//! only if the anchor still names the old state.

use cosigner_kms::{SealContext, Sealer};
use cosigner_protocol::dao::Invitation;
use cosigner_protocol::id::Epoch;
use cosigner_protocol::id::PartyId;
use cosigner_protocol::policy::PastSpend;
use cosigner_protocol::wire::{Confirmation, DkgParams, ErrorKind, WalletId};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use sha2::{Digest, Sha256};
use zeroize::Zeroize;

use super::Failure;
use super::anchor::{Anchor, AnchorError};
use crate::store::BlobStore;

// Every record kind is sealed under a purpose of its own (part of the AAD), so a blob of one kind
// can never be opened as another: a DAO provider share moved into a personal wallet's slot (same
// wallet id, party and epoch) fails to open, and so does a prepared share served as a committed one.
const STATE_PURPOSE: &str = "cosigner-wallet-state";
const SHARE_PURPOSE: &str = "cosigner-share";
const PREPARED_PURPOSE: &str = "cosigner-prepared-share";
const DAO_SHARE_PURPOSE: &str = "cosigner-dao-share";
/// A threshold ECDSA share (an Ethereum wallet's): its own purpose, so no FROST share record can
/// be made to open as one, nor the reverse.
const ECDSA_SHARE_PURPOSE: &str = "cosigner-ecdsa-share";

/// A wallet's lifecycle state.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WalletState {
    /// The DKG parameters (parties, threshold, suite).
    pub params: DkgParams,
    /// Our party number.
    pub party: PartyId,
    /// The epoch in use.
    pub current_epoch: Epoch,
    /// Older epochs still kept (until every party confirmed the current one).
    pub retained_epochs: Vec<Epoch>,
    /// An epoch prepared by a refresh, not yet committed.
    pub prepared_epoch: Option<Epoch>,
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
    /// At the recovery cosigner: the provider's audit key registered at creation, under which
    /// it requires the provider's receipt before committing a refreshed epoch.
    #[serde(default)]
    pub provider_key: Option<ByteBuf>,
    /// At the provider: the recovery cosigner's audit key registered at creation, under which it
    /// requires the recovery cosigner's signed confirmation before committing a refresh
    /// (`super::peer`). Left out of the record when absent, so records made before it read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_cosigner_key: Option<ByteBuf>,
    /// At the provider: its receipt for the current epoch's commit.
    #[serde(default)]
    pub commit_receipt: Option<ByteBuf>,
    /// Threshold ECDSA: parties a signature failed DKLs23's checks with in a way that leaks a
    /// secret bit (`ProtocolError::Excluded`): never signed with again at this epoch. Left out
    /// of the record when empty, so records made before it read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excluded: Vec<PartyId>,
}

/// One epoch's share.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShareRecord {
    /// The epoch.
    pub epoch: Epoch,
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

fn state_prefix(id: &WalletId) -> String {
    format!("wallet/{}/state/", id.to_hex())
}

fn share_key(id: &WalletId, epoch: Epoch) -> String {
    format!("wallet/{}/share/e{epoch:020}", id.to_hex())
}

fn anchor_label(id: &WalletId) -> String {
    format!("cosigner-anchor/{}", id.to_hex())
}

/// How often a read retries when a writer moved the anchor under it.
const LOAD_ATTEMPTS: usize = 8;

fn anchor_failure(e: AnchorError) -> Failure {
    match e {
        AnchorError::Conflict { .. } => Failure::new(
            ErrorKind::Busy,
            format!("{e}: another write of this wallet came first; try again"),
        ),
        AnchorError::Integrity { .. } => Failure::new(ErrorKind::Integrity, e.to_string()),
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

/// Where a kind of anchored state lives: its blobs under `prefix` + their digest, the anchor
/// `label` naming the current one, sealed under `ctx`.
struct StateSlot {
    prefix: String,
    label: String,
    ctx: SealContext,
}

impl StateSlot {
    /// A personal wallet's state.
    fn personal(id: &WalletId) -> Self {
        Self::new(state_prefix(id), anchor_label(id), STATE_PURPOSE, id)
    }

    /// A DAO wallet's state.
    fn dao(id: &WalletId) -> Self {
        Self::new(
            dao_state_prefix(id),
            dao_anchor_label(id),
            DAO_STATE_PURPOSE,
            id,
        )
    }

    /// The state's AAD binds the wallet; the party is inside the state (and checked there), so
    /// opening does not depend on knowing it first.
    fn new(prefix: String, label: String, purpose: &'static str, id: &WalletId) -> Self {
        let ctx = SealContext {
            purpose,
            wallet_id: id.0,
            party: 0,
            epoch: 0,
        };
        Self { prefix, label, ctx }
    }
}

/// Where one share lives: its store key, the purpose it is sealed under, and what its absence is
/// called.
struct ShareSlot {
    purpose: &'static str,
    key: String,
    missing: String,
}

impl ShareSlot {
    /// A personal wallet's share of `epoch`.
    fn personal(id: &WalletId, epoch: Epoch) -> Self {
        Self {
            purpose: SHARE_PURPOSE,
            key: share_key(id, epoch),
            missing: format!("the share of epoch {epoch} is missing"),
        }
    }

    /// A threshold ECDSA wallet's share of `epoch` (the personal store key: a wallet is of one
    /// scheme).
    fn ecdsa(id: &WalletId, epoch: Epoch) -> Self {
        Self {
            purpose: ECDSA_SHARE_PURPOSE,
            key: share_key(id, epoch),
            missing: format!("the share of epoch {epoch} is missing"),
        }
    }

    /// The share of the provider's `party` of a DAO wallet at `epoch`.
    fn dao(id: &WalletId, party: PartyId, epoch: Epoch) -> Self {
        Self {
            purpose: DAO_SHARE_PURPOSE,
            key: dao_share_key(id, party, epoch),
            missing: format!("the share of party {party} at epoch {epoch} is missing"),
        }
    }
}

/// Sealed persistence of wallet records.
pub struct Records<'a> {
    /// Seals and opens.
    pub sealer: &'a dyn Sealer,
    /// The parent's store.
    pub store: &'a dyn BlobStore,
    /// Freshness anchors.
    pub anchor: &'a dyn Anchor,
    /// Anchored blobs already opened.
    pub opened: &'a Opened,
}

/// Most anchored blobs kept opened (one per wallet state or DAO state), and most plaintext bytes
/// kept: the oldest half goes when either is reached.
const MAX_OPENED: usize = 4096;
const MAX_OPENED_BYTES: usize = 64 << 20;

/// The plaintext of the anchored blobs this enclave opened, by anchor label, with the digest of
/// the blob it came from. A read still fetches the blob and checks its digest against the anchor
/// (a blob the host altered, deleted or rolled back is refused at that read, as without this);
/// only the unsealing of those exact bytes, which the enclave sealed and anchored itself and
/// which open to the same plaintext every time, is not repeated.
#[derive(Default)]
pub struct Opened(std::sync::Mutex<OpenedMap>);

type OpenedMap = std::collections::HashMap<String, ([u8; 32], zeroize::Zeroizing<Vec<u8>>, u64)>;

impl std::fmt::Debug for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0.lock().map(|m| m.len()).unwrap_or(0);
        write!(f, "Opened({n} kept)")
    }
}

impl Opened {
    /// The plaintext of the blob with `digest` under `label`, if kept.
    fn get(&self, label: &str, digest: &[u8; 32]) -> Option<zeroize::Zeroizing<Vec<u8>>> {
        let map = self.0.lock().ok()?;
        let (kept, plain, _) = map.get(label)?;
        (kept == digest).then(|| plain.clone())
    }

    fn keep(&self, label: &str, digest: [u8; 32], plain: zeroize::Zeroizing<Vec<u8>>) {
        let Ok(mut map) = self.0.lock() else {
            return;
        };
        let bytes: usize = map.values().map(|(_, p, _)| p.len()).sum();
        if (map.len() >= MAX_OPENED && !map.contains_key(label))
            || bytes.saturating_add(plain.len()) > MAX_OPENED_BYTES
        {
            // Drop the older half (by insertion order): bounded memory, no per-read bookkeeping.
            let mut ages: Vec<u64> = map.values().map(|(_, _, n)| *n).collect();
            ages.sort_unstable();
            let cut = ages.get(ages.len() / 2).copied().unwrap_or(u64::MAX);
            map.retain(|_, (_, _, n)| *n >= cut);
        }
        let next = map.values().map(|(_, _, n)| *n).max().map_or(0, |n| n + 1);
        map.insert(label.to_owned(), (digest, plain, next));
    }
}

impl Records<'_> {
    fn seal<T: Serialize>(&self, ctx: &SealContext, value: &T) -> Result<Vec<u8>, Failure> {
        let mut plain = Vec::new();
        ciborium::ser::into_writer(value, &mut plain).map_err(internal)?;
        let sealed = self.sealer.seal(ctx, &plain);
        plain.zeroize();
        sealed.map_err(|e| internal(format!("sealing: {e}")))
    }

    /// Opens a blob sealed by [`Records::seal`] under `ctx`; any failure is an integrity failure
    /// of wallet `id`'s records.
    fn open<T: serde::de::DeserializeOwned>(
        &self,
        id: &WalletId,
        ctx: &SealContext,
        blob: &[u8],
    ) -> Result<T, Failure> {
        let plain = self.sealer.open(ctx, blob).map_err(|e| integrity(id, e))?;
        ciborium::de::from_reader(plain.as_slice()).map_err(|e| integrity(id, e))
    }

    /// Whether any record of this wallet exists (state or anchor).
    pub fn exists(&self, id: &WalletId) -> Result<bool, Failure> {
        self.any_state(&StateSlot::personal(id))
    }

    fn any_state(&self, slot: &StateSlot) -> Result<bool, Failure> {
        Ok(self
            .anchor
            .read(&slot.label)
            .map_err(anchor_failure)?
            .is_some()
            || !self.store.list(&slot.prefix).map_err(internal)?.is_empty())
    }

    /// Writes the state, moving the anchor with it (see the module docs).
    pub fn save_state(&self, id: &WalletId, state: &WalletState) -> Result<(), Failure> {
        self.save_anchored(&StateSlot::personal(id), state)
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
        let state: WalletState = self.load_anchored(id, &StateSlot::personal(id))?;
        if state.params.wallet_id != *id {
            return Err(integrity(id, "it names another wallet"));
        }
        Ok(state)
    }

    /// Seals `value` under the slot's `ctx`, stores it under its `prefix` + its digest and moves
    /// the anchor `label` to that digest (compare-and-swap on the generation read first), then
    /// deletes the blob it replaced.
    ///
    /// The caller holds the wallet's writer lock (one writer per wallet); a writer that is not
    /// alone fails at the swap with nothing committed ([`ErrorKind::Busy`]). A failure is
    /// reported only when the anchor does not name the new state: an ambiguous backend failure
    /// of the swap is resolved by reading the anchor back.
    fn save_anchored<T: Serialize>(&self, slot: &StateSlot, value: &T) -> Result<(), Failure> {
        self.save_anchored_with(slot, value, Vec::new())
    }

    /// [`Records::save_anchored`], storing the blobs `with` in the same write as the value (one
    /// `put_many`: one transaction and one sync at the parent), before the anchor moves.
    fn save_anchored_with<T: Serialize>(
        &self,
        slot: &StateSlot,
        value: &T,
        with: Vec<(String, Vec<u8>)>,
    ) -> Result<(), Failure> {
        let StateSlot { prefix, label, ctx } = slot;
        let blob = self.seal(ctx, value)?;
        let digest: [u8; 32] = Sha256::digest(&blob).into();
        let before = self.anchor.read(label).map_err(anchor_failure)?;
        let key = format!("{prefix}{}", hex::encode(digest));
        let expected = before.as_ref().map(|v| v.generation);
        let mut blobs = with;
        blobs.push((key.clone(), blob));
        let written = if self.anchor.carries_blobs() {
            // The blobs go in the anchor's own write (one sync at the parent, not two).
            self.anchor.write_carrying(label, expected, &digest, blobs)
        } else {
            match blobs.as_slice() {
                [(key, blob)] => self.store.put(key, blob),
                entries => self.store.put_many(entries),
            }
            .map_err(internal)?;
            self.anchor.write(label, expected, &digest)
        };
        let committed = match written {
            Ok(_) => true,
            Err(AnchorError::Conflict { .. }) => false,
            // Did the swap happen? Ask the anchor itself (the cache dropped its entry).
            Err(e) => match self.anchor.read(label) {
                Ok(Some(now)) if now.value.as_slice() == digest => true,
                _ => {
                    return Err(internal(format!("state not written: {e}")));
                }
            },
        };
        if !committed {
            let _ = self.store.delete(&key);
            return Err(Failure::new(
                ErrorKind::Busy,
                "another write of this wallet came first; try again",
            ));
        }
        if let Some(old) = before.filter(|v| v.value.as_slice() != digest) {
            // Unreferenced from now on; a blob left behind by a failed delete is never read.
            self.store
                .discard(vec![format!("{prefix}{}", hex::encode(&old.value))]);
        }
        Ok(())
    }

    /// Reads the blob the slot's anchor `label` names under its `prefix`. Never writes. If the blob is
    /// missing and the anchor moved meanwhile (a writer deleted the state it replaced), the read
    /// is repeated, so a reader never mistakes a concurrent write for a rollback.
    fn load_anchored<T: serde::de::DeserializeOwned>(
        &self,
        id: &WalletId,
        slot: &StateSlot,
    ) -> Result<T, Failure> {
        let StateSlot { prefix, label, ctx } = slot;
        for _ in 0..LOAD_ATTEMPTS {
            let Some(anchor) = self.anchor.read(label).map_err(anchor_failure)? else {
                return Err(if self.store.list(prefix).map_err(internal)?.is_empty() {
                    Failure::new(ErrorKind::NotFound, format!("unknown wallet {id}"))
                } else {
                    integrity(id, "this enclave's token holds no anchor for it")
                });
            };
            let key = format!("{prefix}{}", hex::encode(&anchor.value));
            let Some(blob) = self.store.get(&key).map_err(internal)? else {
                let again = self.anchor.read(label).map_err(anchor_failure)?;
                if again.as_ref().map(|v| v.generation) != Some(anchor.generation) {
                    continue;
                }
                return Err(integrity(
                    id,
                    "it is not the current state (the host no longer serves the current one: \
                     deleted or rolled back)",
                ));
            };
            let digest: [u8; 32] = Sha256::digest(&blob).into();
            if anchor.value.as_slice() != digest {
                return Err(integrity(
                    id,
                    "it is not the current state (replaced or altered by the host)",
                ));
            }
            let plain = match self.opened.get(label, &digest) {
                Some(plain) => plain,
                None => {
                    let plain = self.sealer.open(ctx, &blob).map_err(|e| integrity(id, e))?;
                    self.opened.keep(label, digest, plain.clone());
                    plain
                }
            };
            return ciborium::de::from_reader(plain.as_slice()).map_err(|e| integrity(id, e));
        }
        Err(Failure::new(
            ErrorKind::Busy,
            format!("wallet {id} is being written: try again"),
        ))
    }

    fn share_ctx(
        purpose: &'static str,
        id: &WalletId,
        party: PartyId,
        epoch: Epoch,
    ) -> SealContext {
        SealContext {
            purpose,
            wallet_id: id.0,
            party: party.get(),
            epoch: epoch.get(),
        }
    }

    /// Stores one epoch's share.
    pub fn save_share(
        &self,
        id: &WalletId,
        party: PartyId,
        share: &ShareRecord,
    ) -> Result<(), Failure> {
        self.seal_share(&ShareSlot::personal(id, share.epoch), id, party, share)
    }

    /// Stores one epoch's share (threshold ECDSA if `ecdsa`) and the state naming it in one
    /// write, then moves the state's anchor: [`Records::save_share`] and
    /// [`Records::save_state`] for one sync at the parent instead of two.
    pub fn save_share_and_state(
        &self,
        id: &WalletId,
        share: &ShareRecord,
        ecdsa: bool,
        state: &WalletState,
    ) -> Result<(), Failure> {
        let slot = if ecdsa {
            ShareSlot::ecdsa(id, share.epoch)
        } else {
            ShareSlot::personal(id, share.epoch)
        };
        let ctx = Self::share_ctx(slot.purpose, id, state.party, share.epoch);
        let blob = self.seal(&ctx, share)?;
        self.save_anchored_with(&StateSlot::personal(id), state, vec![(slot.key, blob)])
    }

    /// Seals `share` (bound to `id`, `party` and its epoch) and stores it in `slot`.
    fn seal_share(
        &self,
        slot: &ShareSlot,
        id: &WalletId,
        party: PartyId,
        share: &ShareRecord,
    ) -> Result<(), Failure> {
        let ctx = Self::share_ctx(slot.purpose, id, party, share.epoch);
        let blob = self.seal(&ctx, share)?;
        self.store.put(&slot.key, &blob).map_err(internal)
    }

    /// Reads one epoch's threshold ECDSA share.
    pub fn load_ecdsa_share(
        &self,
        id: &WalletId,
        party: PartyId,
        epoch: Epoch,
    ) -> Result<ShareRecord, Failure> {
        self.open_share(&ShareSlot::ecdsa(id, epoch), id, party, epoch)
    }

    /// Reads one epoch's share.
    pub fn load_share(
        &self,
        id: &WalletId,
        party: PartyId,
        epoch: Epoch,
    ) -> Result<ShareRecord, Failure> {
        self.open_share(&ShareSlot::personal(id, epoch), id, party, epoch)
    }

    /// Reads and opens the share blob in `slot`, bound to `id`, `party` and `epoch`.
    fn open_share(
        &self,
        slot: &ShareSlot,
        id: &WalletId,
        party: PartyId,
        epoch: Epoch,
    ) -> Result<ShareRecord, Failure> {
        let blob = self
            .store
            .get(&slot.key)
            .map_err(internal)?
            .ok_or_else(|| integrity(id, &slot.missing))?;
        let ctx = Self::share_ctx(slot.purpose, id, party, epoch);
        let share: ShareRecord = self.open(id, &ctx, &blob)?;
        if share.epoch != epoch {
            return Err(integrity(id, "share of another epoch"));
        }
        Ok(share)
    }

    /// Discards the shares of retired `epochs` ([`BlobStore::discard`]: the state no longer
    /// names them, and a retired epoch never comes back).
    pub fn discard_shares(&self, id: &WalletId, epochs: &[Epoch]) {
        self.store
            .discard(epochs.iter().map(|e| share_key(id, *e)).collect());
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
    pub from_epoch: Epoch,
    /// Our own confirmation of the ceremony (transcript and public key package hashes).
    pub confirmation: Confirmation,
    /// Started by a recovering device's pending key: committing it makes that key current.
    pub recovery: bool,
    /// The key that started it (for a recovery, only that key may commit it).
    pub started_by: ByteBuf,
}

/// Most prepared refreshes kept per wallet, epoch and starting key. A device's are never
/// evicted (one committed at the other cosigner must stay reachable): beyond, its new refreshes
/// are refused. A recovering device's key replaces its own older ones instead (its client rolls
/// every commit forward before it starts another refresh), so failed recovery attempts cannot
/// use the slots up, and nobody else's records count against it.
pub const MAX_PREPARED: usize = 4;

fn prepared_prefix(id: &WalletId, epoch: Epoch) -> String {
    format!("wallet/{}/prepared/e{epoch:020}/", id.to_hex())
}

/// The starting key's slot: a short hash of the key.
fn starter_tag(started_by: &[u8]) -> String {
    hex::encode(Sha256::digest(started_by).get(..8).unwrap_or_default())
}

impl Records<'_> {
    /// Stores a prepared refresh within its starting key's [`MAX_PREPARED`] slots.
    pub fn save_prepared(
        &self,
        id: &WalletId,
        party: PartyId,
        prepared: &PreparedRecord,
    ) -> Result<(), Failure> {
        let epoch = prepared.share.epoch;
        let mine = format!(
            "{}{}-",
            prepared_prefix(id, epoch),
            starter_tag(&prepared.started_by)
        );
        let key = format!(
            "{mine}{}",
            hex::encode(&prepared.confirmation.transcript_hash)
        );
        let existing: Vec<String> = self
            .prepared_keys(id, epoch)?
            .into_iter()
            .filter(|k| k.starts_with(&mine) && *k != key)
            .collect();
        if existing.len() >= MAX_PREPARED {
            if !prepared.recovery {
                return Err(Failure::bad(format!(
                    "wallet {id} has {MAX_PREPARED} unfinished refreshes to epoch {epoch} from \
                     this key: finish one (run the refresh again) or recover"
                )));
            }
            for old in existing.iter().skip(MAX_PREPARED - 1) {
                self.store.delete(old).map_err(internal)?;
            }
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
        party: PartyId,
        epoch: Epoch,
        transcript_hash: &[u8],
    ) -> Result<Option<PreparedRecord>, Failure> {
        let suffix = format!("-{}", hex::encode(transcript_hash));
        let Some(key) = self
            .prepared_keys(id, epoch)?
            .into_iter()
            .find(|k| k.ends_with(&suffix))
        else {
            return Ok(None);
        };
        let Some(blob) = self.store.get(&key).map_err(internal)? else {
            return Ok(None);
        };
        let prepared: PreparedRecord = self.open(
            id,
            &Self::share_ctx(PREPARED_PURPOSE, id, party, epoch),
            &blob,
        )?;
        if prepared.share.epoch != epoch
            || prepared.confirmation.transcript_hash.as_slice() != transcript_hash
        {
            return Err(integrity(id, "prepared share of another refresh"));
        }
        Ok(Some(prepared))
    }

    /// Discards every prepared refresh to `epoch` once a refresh to it committed (none can
    /// commit any more, and none to it is prepared again: the epoch moved past it).
    pub fn discard_prepared(&self, id: &WalletId, epoch: Epoch) -> Result<(), Failure> {
        self.store.discard(self.prepared_keys(id, epoch)?);
        Ok(())
    }

    fn prepared_keys(&self, id: &WalletId, epoch: Epoch) -> Result<Vec<String>, Failure> {
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
    pub provider_parties: Vec<PartyId>,
    /// Share epoch.
    pub epoch: Epoch,
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
    /// Members a threshold ECDSA signature named as cheating in a way DKLs23 says must end all
    /// signing with them (a failed selective-failure check: each such failure may leak a bit of
    /// our OT secrets, eprint 2023/765 §5). They sign with the provider never again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excluded: Vec<PartyId>,
    /// The hash of the refresh proposal that made the current epoch: founded again (its
    /// `Refreshed` may never have reached the mailbox), the refresh is announced as done again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_refresh: Option<ByteBuf>,
}

fn dao_state_prefix(id: &WalletId) -> String {
    format!("dao/{}/state/", id.to_hex())
}

fn dao_share_key(id: &WalletId, party: PartyId, epoch: Epoch) -> String {
    format!("dao/{}/share/p{party:05}/e{epoch:020}", id.to_hex())
}

fn dao_anchor_label(id: &WalletId) -> String {
    format!("cosigner-anchor/dao/{}", id.to_hex())
}

impl Records<'_> {
    /// Whether a DAO wallet (state or anchor) exists.
    pub fn dao_exists(&self, id: &WalletId) -> Result<bool, Failure> {
        self.any_state(&StateSlot::dao(id))
    }

    /// Writes a DAO wallet's state (anchored like a personal wallet's).
    pub fn save_dao_state(&self, id: &WalletId, state: &DaoState) -> Result<(), Failure> {
        self.save_anchored(&StateSlot::dao(id), state)
    }

    /// Reads a DAO wallet's state, refusing anything but the anchored one.
    pub fn load_dao_state(&self, id: &WalletId) -> Result<DaoState, Failure> {
        let state: DaoState = self.load_anchored(id, &StateSlot::dao(id))?;
        if state.invitation.topic().ok() != Some(cosigner_protocol::mailbox::Topic(id.0)) {
            return Err(integrity(id, "it names another wallet"));
        }
        Ok(state)
    }

    /// Stores the share of one of the provider's parties of a DAO wallet.
    pub fn save_dao_share(
        &self,
        id: &WalletId,
        party: PartyId,
        share: &ShareRecord,
    ) -> Result<(), Failure> {
        self.seal_share(&ShareSlot::dao(id, party, share.epoch), id, party, share)
    }

    /// Deletes one epoch's share of one of the provider's parties of a DAO wallet.
    pub fn delete_dao_share(
        &self,
        id: &WalletId,
        party: PartyId,
        epoch: Epoch,
    ) -> Result<(), Failure> {
        self.store
            .delete(&dao_share_key(id, party, epoch))
            .map_err(internal)
    }

    /// Reads the share of one of the provider's parties of a DAO wallet.
    pub fn load_dao_share(
        &self,
        id: &WalletId,
        party: PartyId,
        epoch: Epoch,
    ) -> Result<ShareRecord, Failure> {
        self.open_share(&ShareSlot::dao(id, party, epoch), id, party, epoch)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::service::anchor::{InsecureMemoryAnchor, Versioned};
    use crate::store::MemoryStore;
    use cosigner_kms::SEAL_KEY_ID_LEN;
    use zeroize::Zeroizing;

    /// Party `n`, where `n` is a literal known not to be 0.
    fn pid(n: u16) -> cosigner_protocol::id::PartyId {
        cosigner_protocol::id::PartyId::new(n).unwrap()
    }

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

    /// Fails the `n`th write (0-based): before it takes effect, or after (`lands`), as a
    /// token that wrote the object and then lost the answer.
    struct FlakyAnchor {
        inner: InsecureMemoryAnchor,
        writes: std::sync::atomic::AtomicUsize,
        fail_at: usize,
        lands: bool,
    }

    impl Anchor for FlakyAnchor {
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
            if n != self.fail_at {
                return self.inner.write(label, expected, value);
            }
            if self.lands {
                self.inner.write(label, expected, value)?;
            }
            Err(AnchorError::Backend {
                label: label.into(),
                reason: "lost".into(),
            })
        }
    }

    /// Records over a test store and anchor, sealed by [`ContextSealer`].
    fn records<'a>(store: &'a MemoryStore, anchor: &'a dyn Anchor) -> Records<'a> {
        Records {
            sealer: &ContextSealer,
            store,
            anchor,
            opened: Box::leak(Box::default()),
        }
    }

    /// A fresh store and anchor, and one cache of opened state across its records.
    #[derive(Default)]
    struct Fixture {
        store: MemoryStore,
        anchor: InsecureMemoryAnchor,
        opened: Opened,
    }

    impl Fixture {
        fn records(&self) -> Records<'_> {
            Records {
                sealer: &ContextSealer,
                store: &self.store,
                anchor: &self.anchor,
                opened: &self.opened,
            }
        }

        /// The one blob the store holds: its key and bytes.
        fn only_blob(&self) -> (String, Vec<u8>) {
            let keys = self.store.list("").unwrap();
            assert_eq!(keys.len(), 1, "{keys:?}");
            let key = keys.into_iter().next().unwrap();
            let blob = self.store.get(&key).unwrap().unwrap();
            (key, blob)
        }

        /// A fixture holding `id`'s state at epoch 0.
        fn saved(id: WalletId) -> (Self, WalletId) {
            let fixture = Self::default();
            fixture
                .records()
                .save_state(&id, &state(id, Epoch(0)))
                .unwrap();
            (fixture, id)
        }
    }

    fn state(id: WalletId, epoch: Epoch) -> WalletState {
        WalletState {
            params: DkgParams {
                wallet_id: id,
                ciphersuite: "FROST-secp256k1-SHA256-TR-v1".into(),
                min_signers: 2,
                parties: vec![pid(1), pid(2), pid(3)],
            },
            party: pid(2),
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
            provider_key: None,
            recovery_cosigner_key: None,
            commit_receipt: None,
            excluded: Vec::new(),
        }
    }

    /// State already opened (and kept opened) is fetched and checked against the anchor at every
    /// read all the same: the host altering its blob, or serving an older one in its place, is
    /// refused at the next read.
    #[test]
    fn opened_state_is_still_checked_at_every_read() {
        let (f, id) = Fixture::saved(WalletId([6; 16]));
        let (_, old) = f.only_blob();
        f.records().save_state(&id, &state(id, Epoch(1))).unwrap();
        assert_eq!(f.records().load_state(&id).unwrap().current_epoch, Epoch(1));
        assert_eq!(format!("{:?}", f.opened), "Opened(1 kept)");
        let (key, current) = f.only_blob();
        let mut flipped = current.clone();
        if let Some(byte) = flipped.last_mut() {
            *byte ^= 1;
        }
        for served in [flipped, old] {
            f.store.put(&key, &served).unwrap();
            let err = f.records().load_state(&id).unwrap_err();
            assert_eq!(err.0.kind, ErrorKind::Integrity, "{err:?}");
        }
        f.store.put(&key, &current).unwrap();
        assert_eq!(f.records().load_state(&id).unwrap().current_epoch, Epoch(1));
    }

    /// A state write whose anchor step fails is reported failed exactly when the old state is
    /// still the one that loads, and succeeded when the new one does; never both loadable.
    #[test]
    fn an_anchor_write_that_fails_is_reported_exactly_as_it_landed() {
        let id = WalletId([5; 16]);
        for lands in [false, true] {
            let anchor = FlakyAnchor {
                inner: InsecureMemoryAnchor::default(),
                writes: 0.into(),
                fail_at: 1,
                lands,
            };
            let store = MemoryStore::default();
            let records = records(&store, &anchor);
            records.save_state(&id, &state(id, Epoch(0))).unwrap();
            let update = records.save_state(&id, &state(id, Epoch(1)));
            let loaded = records.load_state(&id).unwrap();
            assert_eq!(update.is_ok(), lands, "{update:?}");
            assert_eq!(loaded.current_epoch, Epoch(u64::from(lands)));
            // Whatever happened, exactly one state blob is referenced and the next write works.
            records.save_state(&id, &state(id, Epoch(7))).unwrap();
            assert_eq!(records.load_state(&id).unwrap().current_epoch, Epoch(7));
        }
    }

    /// A crash after the new blob was stored but before the anchor moved leaves the old state.
    #[test]
    fn a_crash_before_the_anchor_moves_leaves_the_old_state() {
        let (fixture, id) = Fixture::saved(WalletId([8; 16]));
        let (store, records) = (&fixture.store, fixture.records());
        // The "crashed" write: a sealed blob of epoch 3 stored, the anchor untouched.
        let blob = records
            .seal(&StateSlot::personal(&id).ctx, &state(id, Epoch(3)))
            .unwrap();
        let digest: [u8; 32] = Sha256::digest(&blob).into();
        store
            .put(
                &format!("{}{}", state_prefix(&id), hex::encode(digest)),
                &blob,
            )
            .unwrap();
        assert_eq!(records.load_state(&id).unwrap().current_epoch, Epoch(0));
    }

    /// An older state blob served by the host is refused; a conflicting anchor writer gets Busy.
    #[test]
    fn a_rolled_back_blob_is_refused_and_a_stale_writer_is_busy() {
        let (fixture, id) = Fixture::saved(WalletId([6; 16]));
        let (store, anchor, records) = (&fixture.store, &fixture.anchor, fixture.records());
        let old = store.list(&state_prefix(&id)).unwrap().pop().unwrap();
        let old_blob = store.get(&old).unwrap().unwrap();
        records.save_state(&id, &state(id, Epoch(1))).unwrap();
        // The host brings the old blob back and serves it under the current key.
        let current = store.list(&state_prefix(&id)).unwrap().pop().unwrap();
        store.put(&old, &old_blob).unwrap();
        assert_eq!(records.load_state(&id).unwrap().current_epoch, Epoch(1));
        store.put(&current, &old_blob).unwrap();
        let refused = records.load_state(&id).unwrap_err();
        assert_eq!(refused.0.kind, ErrorKind::Integrity);
        store.delete(&current).unwrap();
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
        let fixture = Fixture::default();
        let (store, records) = (&fixture.store, fixture.records());
        let share = ShareRecord {
            epoch: Epoch(0),
            key_package: ByteBuf::from(vec![1; 4]),
            public_key_package: ByteBuf::from(vec![2; 4]),
        };
        records.save_dao_share(&id, pid(2), &share).unwrap();
        let blob = store
            .get(&dao_share_key(&id, pid(2), Epoch(0)))
            .unwrap()
            .unwrap();
        store.put(&share_key(&id, Epoch(0)), &blob).unwrap();
        let refused = records.load_share(&id, pid(2), Epoch(0)).err().unwrap();
        assert_eq!(refused.0.kind, ErrorKind::Integrity);
        // And the other way round.
        records.save_share(&id, pid(2), &share).unwrap();
        let blob = store.get(&share_key(&id, Epoch(0))).unwrap().unwrap();
        store
            .put(&dao_share_key(&id, pid(2), Epoch(0)), &blob)
            .unwrap();
        assert!(records.load_dao_share(&id, pid(2), Epoch(0)).is_err());
    }
}
