//! Repair of a lost device's share during a recovery (`cosigner_protocol::repair`, frost's
//! repairable scheme): this cosigner is a helper, authorized by the recovering device's key.

use std::collections::BTreeMap;

use cosigner_protocol::id::PartyId;
use cosigner_protocol::repair::{self, RepairHelper1, RepairHelper2};
use cosigner_protocol::wire::{RepairParams, Response, SealedPackage, WalletId};
use serde_bytes::ByteBuf;

use super::authorized::Actor;
use super::failure::{Failure, Outcome};
use super::records::WalletState;
use super::table::ConnectionId;
use super::table::{Claim, Pending};
use super::{Service, Suite, key_package, share_keys};

/// Where a repair is.
pub(super) enum RepairStage {
    Started(Box<RepairHelper1<Suite>>),
    Deltas(Box<RepairHelper2<Suite>>),
}

impl Service {
    pub(super) fn repair_start(
        &self,
        owner: ConnectionId,
        state: WalletState,
        actor: &Actor,
        params: RepairParams,
        me: PartyId,
        digest: &[u8],
    ) -> Outcome {
        let wallet_id = state.params.wallet_id;
        if params.epoch != state.current_epoch
            || me != state.party
            || params.ciphersuite != state.params.ciphersuite
        {
            return Err(Failure::bad(
                "repair parameters do not match this wallet's current epoch",
            ));
        }
        let share = self
            .records()
            .load_share(&wallet_id, state.party, state.current_epoch)?;
        let (kp, pkp) = share_keys(&share)?;
        let (next, hpke_public_key) =
            repair::helper_start::<Suite>(&params, me, &kp, &pkp, &mut rand_core::OsRng)?;
        self.log(&wallet_id, "repair", &actor.label(), digest, "allowed")?;
        self.repairs.put(
            wallet_id,
            Pending {
                stage: RepairStage::Started(Box::new(next)),
                claim: Claim::new(owner, actor.key.clone(), true),
            },
        )?;
        Ok(Response::RepairKey {
            hpke_public_key: ByteBuf::from(hpke_public_key),
        })
    }

    pub(super) fn repair_deltas(
        &self,
        owner: ConnectionId,
        wallet_id: WalletId,
        helper_keys: &[(PartyId, ByteBuf)],
    ) -> Outcome {
        self.repairs.step(&wallet_id, &owner, |stage, _| {
            let RepairStage::Started(helper) = stage else {
                return Err(Failure::bad("repair is not waiting for helper keys"));
            };
            let state = self.records().load_state(&wallet_id)?;
            let share = self
                .records()
                .load_share(&wallet_id, state.party, state.current_epoch)?;
            let kp = key_package(&share)?;
            let keys: BTreeMap<PartyId, Vec<u8>> =
                helper_keys.iter().map(|(p, k)| (*p, k.to_vec())).collect();
            if keys.len() != helper_keys.len() {
                return Err(Failure::bad("a helper appears twice"));
            }
            let (next, deltas) = helper.deltas(&kp, &keys, &mut rand_core::OsRng)?;
            Ok((
                Some(RepairStage::Deltas(Box::new(next))),
                Response::RepairDeltas { deltas },
            ))
        })
    }

    pub(super) fn repair_sigma(
        &self,
        owner: ConnectionId,
        wallet_id: WalletId,
        deltas: &[SealedPackage],
        participant_key: &[u8],
    ) -> Outcome {
        self.repairs.step(&wallet_id, &owner, |stage, _| {
            let RepairStage::Deltas(helper) = stage else {
                return Err(Failure::bad("repair is not waiting for deltas"));
            };
            let sigma = helper.sigma(deltas, participant_key, &mut rand_core::OsRng)?;
            // The repair is over: nothing goes back into the table.
            Ok((None, Response::RepairSigma { sigma }))
        })
    }
}
