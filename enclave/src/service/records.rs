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
use cosigner_protocol::wire::{DkgParams, ErrorKind, WalletId};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use sha2::{Digest, Sha256};
use zeroize::Zeroize;

use super::Failure;
use super::anchor::Anchor;
use crate::store::BlobStore;

const STATE_PURPOSE: &str = "cosigner-wallet-state";
const SHARE_PURPOSE: &str = "cosigner-share";

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
                .map_err(internal)?
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
    fn save_anchored<T: Serialize>(
        &self,
        key: &str,
        label: &str,
        ctx: &SealContext,
        value: &T,
    ) -> Result<(), Failure> {
        let blob = self.seal(ctx, value)?;
        let digest: [u8; 32] = Sha256::digest(&blob).into();
        let current = self
            .anchor
            .read(label)
            .map_err(internal)?
            .and_then(|v| v.get(..32).map(<[u8]>::to_vec))
            .unwrap_or_else(|| vec![0; 32]);
        self.anchor
            .write(label, &[current.as_slice(), &digest].concat())
            .map_err(internal)?;
        self.store.put(key, &blob).map_err(internal)?;
        self.anchor
            .write(label, &[&digest[..], &[0u8; 32]].concat())
            .map_err(internal)
    }

    /// Reads the blob at `key`, refusing anything but the one anchored at `label`.
    fn load_anchored<T: serde::de::DeserializeOwned>(
        &self,
        id: &WalletId,
        key: &str,
        label: &str,
        ctx: &SealContext,
    ) -> Result<T, Failure> {
        let anchor = self.anchor.read(label).map_err(internal)?;
        let Some(blob) = self.store.get(key).map_err(internal)? else {
            return Err(match anchor {
                Some(_) => integrity(id, "the host no longer serves it"),
                None => Failure::new(ErrorKind::NotFound, format!("unknown wallet {id}")),
            });
        };
        let Some(anchor) = anchor else {
            return Err(integrity(id, "this enclave's token holds no anchor for it"));
        };
        let digest: [u8; 32] = Sha256::digest(&blob).into();
        let (current, pending) = (anchor.get(..32), anchor.get(32..64));
        if current != Some(&digest[..]) {
            if pending != Some(&digest[..]) {
                return Err(integrity(
                    id,
                    "it is not the current state (rolled back, replaced or altered by the host)",
                ));
            }
            // A write that crashed between the blob and the anchor: finish it.
            self.anchor
                .write(label, &[&digest[..], &[0u8; 32]].concat())
                .map_err(internal)?;
        }
        let plain = self.sealer.open(ctx, &blob).map_err(|e| integrity(id, e))?;
        ciborium::de::from_reader(plain.as_slice()).map_err(|e| integrity(id, e))
    }

    fn share_ctx(id: &WalletId, party: u16, epoch: u64) -> SealContext {
        SealContext {
            purpose: SHARE_PURPOSE,
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
        let blob = self.seal(&Self::share_ctx(id, party, share.epoch), share)?;
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
            .open(&Self::share_ctx(id, party, epoch), &blob)
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
                .map_err(internal)?
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
        let blob = self.seal(&Self::share_ctx(id, party, share.epoch), share)?;
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
            id,
            &dao_share_key(id, party, epoch),
            party,
            epoch,
            format!("the share of party {party} at epoch {epoch} is missing"),
        )
    }
}
