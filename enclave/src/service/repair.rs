//! Repair of a lost device's share during a recovery (`cosigner_protocol::repair`, frost's
//! repairable scheme): this cosigner is a helper, authorized by the recovering device's key. The
//! table holds the protocol's repair engine (`repair::engine::RepairHelper`, the same one any
//! other helper runs); each request feeds it what it carries and advances it one step.

use cosigner_protocol::ecdsa::repair as ecdsa_repair;
use cosigner_protocol::id::PartyId;
use cosigner_protocol::party;
use cosigner_protocol::repair::engine::{RepairHelper, RepairMessage, RepairStep};
use cosigner_protocol::wire::{RepairParams, Response, SealedPackage, WalletId};
use serde_bytes::ByteBuf;

use super::authorized::Actor;
use super::failure::{Failure, Outcome, internal};
use super::records::WalletState;
use super::table::ConnectionId;
use super::table::{Claim, Pending};
use super::{Service, Suite, is_ecdsa, share_keys};

/// A repair in progress: this cosigner's helper in the repair engine.
pub(super) type RepairStage = Box<RepairHelper<Suite>>;

/// Feeds what one request relayed to `helper`, which must be at one of `steps`, and advances it;
/// it must then be past them (the request carried everything the step needs).
fn relay(
    helper: &mut RepairHelper<Suite>,
    steps: &[RepairStep],
    what: &str,
    messages: impl IntoIterator<Item = RepairMessage>,
) -> Result<Vec<RepairMessage>, Failure> {
    if !steps.contains(&helper.step()) {
        return Err(Failure::bad(format!("repair is not waiting for {what}")));
    }
    for message in messages {
        helper.absorb(&message)?;
    }
    let out = helper.advance(&mut rand_core::OsRng)?;
    if steps.contains(&helper.step()) {
        return Err(Failure::bad(format!(
            "the repair still waits for {}",
            helper.waiting()
        )));
    }
    Ok(out)
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
        if is_ecdsa(&state) {
            return self.ecdsa_repair_term(&state, actor, &params, digest);
        }
        let share = self
            .records()
            .load_share(&wallet_id, state.party, state.current_epoch)?;
        let (kp, pkp) = share_keys(&share)?;
        let (helper, _) = RepairHelper::start(&params, me, &kp, &pkp, &mut rand_core::OsRng)?;
        let hpke_public_key = ByteBuf::from(helper.helper_key());
        self.log(&wallet_id, "repair", &actor.label(), digest, "allowed")?;
        self.repairs.put(
            wallet_id,
            Pending {
                stage: Box::new(helper),
                claim: Claim::new(owner, actor.key.clone(), true),
            },
        )?;
        Ok(Response::RepairKey { hpke_public_key })
    }

    /// A threshold ECDSA wallet's repair: our term of the device's share, for the recovering
    /// device's key (the actor: the pending key the recovery credential registered) and no one
    /// else; one answer, nothing kept. The helpers are both cosigners, the target the device.
    fn ecdsa_repair_term(
        &self,
        state: &WalletState,
        actor: &Actor,
        params: &RepairParams,
        digest: &[u8],
    ) -> Outcome {
        let wallet_id = state.params.wallet_id;
        let mut helpers: Vec<PartyId> = state
            .params
            .parties
            .iter()
            .copied()
            .filter(|p| *p != party::DEVICE)
            .collect();
        helpers.sort_unstable();
        let mut asked = params.helpers.clone();
        asked.sort_unstable();
        if params.participant != party::DEVICE || asked != helpers {
            return Err(Failure::bad(format!(
                "an Ethereum wallet's repair rebuilds party {} from parties {helpers:?}",
                party::DEVICE
            )));
        }
        let key = self.ecdsa_key(state, state.current_epoch)?;
        let id = ecdsa_repair::repair_id(&wallet_id, state.current_epoch, &actor.key);
        let term = ecdsa_repair::term(&key, &helpers, party::DEVICE, &id)?;
        self.log(&wallet_id, "repair", &actor.label(), digest, "allowed")?;
        Ok(Response::EcdsaRepairTerm {
            term: ByteBuf::from(term),
        })
    }

    pub(super) fn repair_deltas(
        &self,
        owner: ConnectionId,
        wallet_id: WalletId,
        helper_keys: &[(PartyId, ByteBuf)],
    ) -> Outcome {
        self.repairs.step(&wallet_id, &owner, |mut helper, _| {
            let keys = helper_keys
                .iter()
                .map(|(from, key)| RepairMessage::HelperKey {
                    from: *from,
                    key: key.to_vec(),
                });
            let out = relay(&mut helper, &[RepairStep::HelperKeys], "helper keys", keys)?;
            let deltas = out
                .into_iter()
                .map(|m| match m {
                    RepairMessage::Delta(delta) => Ok(delta),
                    other => Err(internal(format!(
                        "the repair answered {other:?} for deltas"
                    ))),
                })
                .collect::<Result<Vec<SealedPackage>, Failure>>()?;
            Ok((Some(helper), Response::RepairDeltas { deltas }))
        })
    }

    pub(super) fn repair_sigma(
        &self,
        owner: ConnectionId,
        wallet_id: WalletId,
        deltas: &[SealedPackage],
        participant_key: &[u8],
    ) -> Outcome {
        self.repairs.step(&wallet_id, &owner, |mut helper, _| {
            // The participant's key comes with the session the pending device key authorized
            // (`RepairStart`): whoever holds it is entitled to the share (docs/lifecycle.md,
            // "Recovery").
            let participant = RepairMessage::ParticipantKey {
                from: helper.params().participant,
                key: participant_key.to_vec(),
            };
            let messages = std::iter::once(participant)
                .chain(deltas.iter().cloned().map(RepairMessage::Delta));
            let steps = [RepairStep::Deltas, RepairStep::ParticipantKey];
            let out = relay(&mut helper, &steps, "deltas", messages)?;
            let Some(RepairMessage::Sigma(sigma)) = out.into_iter().next() else {
                return Err(internal("the repair ended without our sigma"));
            };
            // The repair is over: nothing goes back into the table.
            Ok((None, Response::RepairSigma { sigma }))
        })
    }
}
