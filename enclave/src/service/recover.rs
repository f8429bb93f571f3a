//! Recovery under the recovery credential (docs/lifecycle.md, "Recovery" and "Races and
//! precedence"): the new device's key becomes pending, which suspends the registered device key
//! at once; the recovery's refresh (`refresh`) makes it the device key and revokes the old one.

use cosigner_protocol::auth::normalise_public_key;
use cosigner_protocol::wire::{Response, WalletId};
use serde_bytes::ByteBuf;

use super::Service;
use super::authorized::Actor;
use super::failure::{Failure, Outcome};
use super::records::WalletState;

impl Service {
    /// `RecoverStart` under the recovery credential: registers the new device key as pending,
    /// which at once suspends the registered device key, and drops the device's ceremonies and
    /// signing sessions in flight. Idempotent: the same new key again changes nothing, and once
    /// the recovery completed (the key is the device key) the answer says so.
    pub(super) fn recover_start(
        &self,
        state: WalletState,
        actor: &Actor,
        new_device_key: &[u8],
        digest: &[u8],
    ) -> Outcome {
        let wallet_id = state.params.wallet_id;
        drop(state);
        let key = normalise_public_key(new_device_key)?;
        let _guard = self.writer(&wallet_id)?;
        let mut state = self.records().load_state(&wallet_id)?;
        if state.device_key.as_slice() == key && state.pending_device_key.is_none() {
            return Ok(Response::RecoverApproved {
                epoch: state.current_epoch,
                completed: true,
            });
        }
        if key == state.recovery_key.as_slice()
            || key == state.device_key.as_slice()
            || state.revoked_keys.iter().any(|k| k.as_slice() == key)
        {
            return Err(Failure::bad("the new device key must be a fresh key"));
        }
        if state.pending_device_key.as_ref().map(|k| k.as_slice()) != Some(key.as_slice()) {
            state.pending_device_key = Some(ByteBuf::from(key.clone()));
            self.records().save_state(&wallet_id, &state)?;
            self.log(
                &wallet_id,
                "recover-start",
                &actor.label(),
                digest,
                &format!("allowed: new device {}", hex::encode(&key)),
            )?;
        }
        self.preempt(&wallet_id, &key)?;
        Ok(Response::RecoverApproved {
            epoch: state.current_epoch,
            completed: false,
        })
    }

    /// Drops what is in flight for `wallet_id` but not the recovery of `recovering` (the new
    /// device's key): the device's refresh, repairs for another key, every signing session.
    fn preempt(&self, wallet_id: &WalletId, recovering: &[u8]) -> Result<(), Failure> {
        self.refreshes
            .drop_unless_recovering(wallet_id, recovering)?;
        self.repairs.drop_unless_recovering(wallet_id, recovering)?;
        self.signs.drop_wallet(wallet_id)?;
        self.psbts.drop_wallet(wallet_id)?;
        self.eth_signs.drop_wallet(wallet_id)?;
        self.keys.forget(wallet_id)?;
        Ok(())
    }

    /// `RecoverCancel` under the recovery credential: the pending key is dropped and the
    /// registered device key acts again (the owner found the phone).
    pub(super) fn recover_cancel(
        &self,
        wallet_id: &WalletId,
        actor: &Actor,
        digest: &[u8],
    ) -> Outcome {
        let _guard = self.writer(wallet_id)?;
        let mut state = self.records().load_state(wallet_id)?;
        if let Some(pending) = state.pending_device_key.take() {
            self.records().save_state(wallet_id, &state)?;
            self.preempt(wallet_id, &[])?;
            self.log(
                wallet_id,
                "recover-cancel",
                &actor.label(),
                digest,
                &format!("allowed: pending device {}", hex::encode(&pending)),
            )?;
        }
        Ok(Response::Done)
    }
}
