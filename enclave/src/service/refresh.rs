//! Refresh (`cosigner_protocol::refresh`): new shares of the same key, two-phase so that an
//! interruption leaves the wallet usable at the old or the new epoch (docs/lifecycle.md,
//! "Refresh"). Rounds 1–3 prepare a sealed record; the commit works from that record, from any
//! session and after a restart.

use cosigner_protocol::auth::{commit_receipt_digest, verify_digest};
use cosigner_protocol::ecdsa::EcdsaPublic;
use cosigner_protocol::ecdsa::dkg::{self as ecdsa_dkg, EcdsaDkg, EcdsaDkgParams, RoundOutput};
use cosigner_protocol::id::Epoch;
use cosigner_protocol::id::PartyId;
use cosigner_protocol::keygen::exchange::{Exchange, Message};
use cosigner_protocol::party;
use cosigner_protocol::refresh;
use cosigner_protocol::wire::{
    Confirmation, RefreshParams, Response, Round1Message, SealedPackage, WalletId,
};
use serde_bytes::ByteBuf;

use super::authorized::{Actor, Role};
use super::dkg::{EcdsaRelayed, round1_relayed, round2_relayed};
use super::failure::{Failure, Outcome, internal, lock};
use super::peer::check_signed_confirmation;
use super::records::{PreparedRecord, ShareRecord, WalletState};
use super::table::ConnectionId;
use super::table::{Claim, Pending};
use super::{Service, Suite, info, is_ecdsa, now_ms, share_keys, sorted};

/// Where a refresh is.
pub(super) enum RefreshStage {
    /// Rounds 1 and 2: this cosigner's party in the key-making engine (the same one a DAO's
    /// refresh runs on), holding the current share it refreshes.
    Running(Box<Exchange<Suite, RefreshParams>>),
    /// Rounds 0–3 of a threshold ECDSA wallet's refresh (`ecdsa::dkg::start_refresh`) from
    /// epoch `from`, holding our current share.
    Ecdsa { dkg: Box<EcdsaDkg>, from: Epoch },
    /// Prepared and stored (`records::PreparedRecord`): the commit works from the stored record;
    /// this marker only keeps the ceremony owned until it commits or expires.
    Prepared,
}

/// Whether two confirmation lists hold the same confirmations (in any order); never for empty.
fn confirmations_equal(a: &[Confirmation], b: &[Confirmation]) -> bool {
    if a.is_empty() || a.len() != b.len() {
        return false;
    }
    b.iter().all(|c| a.contains(c))
}

/// A refresh commit, as signed by the device: what it commits and the provider's receipt.
pub(super) struct Commit<'a> {
    pub(super) confirmations: &'a [Confirmation],
    pub(super) provider_receipt: Option<&'a [u8]>,
    /// The cosigners' signatures over their confirmations (`super::peer`).
    pub(super) signatures: &'a [(PartyId, ByteBuf)],
}

impl Service {
    pub(super) fn refresh_start(
        &self,
        owner: ConnectionId,
        state: WalletState,
        actor: &Actor,
        params: RefreshParams,
        me: PartyId,
        digest: &[u8],
    ) -> Outcome {
        let wallet_id = state.params.wallet_id;
        if actor.role == Role::PendingDevice && state.pending_device_key.is_none() {
            return Err(Failure::denied("no recovery in progress"));
        }
        // From the current epoch only (an interrupted refresh is rolled forward, not redone from
        // an older epoch: that could commit a second refresh to one epoch).
        if params.from_epoch != state.current_epoch {
            return Err(Failure::bad(format!(
                "refresh from epoch {} refused: current epoch is {}",
                params.from_epoch, state.current_epoch
            )));
        }
        if me != state.party
            || params.ciphersuite != state.params.ciphersuite
            || params.parties != sorted(&state.params.parties)
            || params.min_signers != state.params.min_signers
        {
            return Err(Failure::bad(
                "a refresh must keep every party, the threshold and the scheme of the wallet",
            ));
        }
        // Refused as busy before the share is unsealed: a refusal costs no token operation.
        let recovery = actor.role == Role::PendingDevice;
        let claim = Claim::new(owner, actor.key.clone(), recovery);
        self.refreshes.admits(&wallet_id, &claim)?;
        if is_ecdsa(&state) {
            return self.ecdsa_refresh_start(&state, actor, &params, claim, digest);
        }
        let old = self
            .records()
            .load_share(&wallet_id, state.party, params.from_epoch)?;
        let (next, first) = Exchange::start(
            &params,
            vec![(me, share_keys(&old)?)],
            &mut rand_core::OsRng,
        )?;
        let Some(Message::Round1(message)) = first.into_iter().next() else {
            return Err(internal("the refresh produced no round-1 message"));
        };
        let stage = RefreshStage::Running(Box::new(next));
        self.begin_refresh(wallet_id, stage, claim, actor, digest)?;
        Ok(Response::RefreshRound1 { message })
    }

    /// Puts a started refresh in the table (refused if another session's refresh got in since),
    /// then logs it.
    fn begin_refresh(
        &self,
        wallet_id: WalletId,
        stage: RefreshStage,
        claim: Claim,
        actor: &Actor,
        digest: &[u8],
    ) -> Result<(), Failure> {
        self.refreshes.put(wallet_id, Pending { stage, claim })?;
        self.log(
            &wallet_id,
            "refresh-start",
            &actor.label(),
            digest,
            "allowed",
        )?;
        Ok(())
    }

    /// `RefreshStart` of a threshold ECDSA wallet: our current share into the refresh engine,
    /// our hello out.
    fn ecdsa_refresh_start(
        &self,
        state: &WalletState,
        actor: &Actor,
        params: &RefreshParams,
        claim: Claim,
        digest: &[u8],
    ) -> Outcome {
        let wallet_id = state.params.wallet_id;
        // DKLs23 requires a party that failed an OT check to be kept out of every later refresh
        // as well as every signature: new OT setups would let it probe again. A recovery
        // replaces an excluded device: its refresh (by the new device's key) is the remedy.
        let replaced =
            actor.role == Role::PendingDevice && state.excluded.iter().all(|p| *p == party::DEVICE);
        if !state.excluded.is_empty() && !replaced {
            let names: Vec<String> = state.excluded.iter().map(ToString::to_string).collect();
            return Err(Failure::denied(format!(
                "party {} is excluded from this wallet: it cannot be refreshed (a recovery or a \
                 new wallet is needed)",
                names.join(", ")
            )));
        }
        let key = self.ecdsa_key(state, params.from_epoch)?;
        let public = EcdsaPublic::from_bytes(&state.public_key_package)
            .map_err(|e| internal(format!("stored public key: {e}")))?;
        let ecdsa_params = EcdsaDkgParams {
            wallet_id,
            threshold: params.min_signers,
            parties: params.parties.clone(),
        };
        let (dkg, hello) = ecdsa_dkg::start_refresh(
            ecdsa_params,
            key,
            public,
            params.from_epoch,
            &mut rand_core::OsRng,
        )?;
        let stage = RefreshStage::Ecdsa {
            dkg: Box::new(dkg),
            from: params.from_epoch,
        };
        self.begin_refresh(wallet_id, stage, claim, actor, digest)?;
        Ok(Response::EcdsaDkgHello { hello })
    }

    /// A round of session `owner`'s threshold ECDSA refresh of `wallet_id`: the relayed hellos
    /// or round messages in, our next message out; after round 3 the new share is stored
    /// prepared and our signed confirmation answered, as a FROST refresh's round 3 does.
    pub(super) fn ecdsa_refresh_relay(
        &self,
        owner: ConnectionId,
        wallet_id: WalletId,
        relayed: EcdsaRelayed<'_>,
    ) -> Outcome {
        self.refreshes.step(&wallet_id, &owner, |stage, claim| {
            let RefreshStage::Ecdsa { mut dkg, from } = stage else {
                return Err(Failure::bad(format!(
                    "wallet {wallet_id}'s refresh is not a threshold ECDSA one in progress"
                )));
            };
            let mut rng = rand_core::OsRng;
            let output = match relayed {
                EcdsaRelayed::Hellos(hellos) => {
                    RoundOutput::Next(dkg.handle_hellos(hellos, &mut rng)?)
                }
                EcdsaRelayed::Round(messages) => dkg.handle_round(messages, &mut rng)?,
            };
            match output {
                RoundOutput::Next(message) => Ok((
                    Some(RefreshStage::Ecdsa { dkg, from }),
                    Response::EcdsaDkgRound { message },
                )),
                RoundOutput::Confirm(_) => {
                    let confirmation = self.prepare_ecdsa_refresh(&wallet_id, *dkg, from, claim)?;
                    let signature = Some(self.sign_confirmation(&wallet_id, &confirmation)?);
                    let answer = Response::RefreshRound3 {
                        confirmation,
                        signature,
                    };
                    Ok((Some(RefreshStage::Prepared), answer))
                }
            }
        })
    }

    /// The refreshed threshold ECDSA share, stored prepared (as [`Self::prepare_refresh`]).
    fn prepare_ecdsa_refresh(
        &self,
        wallet_id: &WalletId,
        dkg: EcdsaDkg,
        from: Epoch,
        claim: &Claim,
    ) -> Result<Confirmation, Failure> {
        let state = self.records().load_state(wallet_id)?;
        // A refresh of epoch `from` that another commit overtook can never commit: refused now.
        if state.current_epoch != from {
            return Err(Failure::bad(format!(
                "the refresh from epoch {from} was overtaken: current epoch is {}",
                state.current_epoch
            )));
        }
        let (output, confirmation) = dkg.into_unconfirmed()?;
        let public = EcdsaPublic::of(&output);
        let share = ShareRecord {
            epoch: from.saturating_next(),
            key_package: ByteBuf::from(output.key.to_secret_bytes()?.to_vec()),
            public_key_package: ByteBuf::from(public.to_bytes()?),
        };
        self.store_prepared(wallet_id, state.party, share, from, confirmation, claim)
    }

    /// Stores a refresh's new share as prepared, with what its commit checks; answers our
    /// confirmation.
    fn store_prepared(
        &self,
        wallet_id: &WalletId,
        party: PartyId,
        share: ShareRecord,
        from: Epoch,
        confirmation: Confirmation,
        claim: &Claim,
    ) -> Result<Confirmation, Failure> {
        let prepared = PreparedRecord {
            share,
            from_epoch: from,
            confirmation: confirmation.clone(),
            recovery: claim.recovery,
            started_by: ByteBuf::from(claim.key.clone()),
        };
        let _guard = self.writer(wallet_id)?;
        self.records().save_prepared(wallet_id, party, &prepared)?;
        Ok(confirmation)
    }

    pub(super) fn refresh_round2(
        &self,
        owner: ConnectionId,
        wallet_id: WalletId,
        round1: &[Round1Message],
    ) -> Outcome {
        self.refresh_running(owner, wallet_id, |mut exchange, _| {
            let packages = round1_relayed(&mut exchange, round1)?;
            let answer = Response::RefreshRound2 { packages };
            Ok((RefreshStage::Running(exchange), answer))
        })
    }

    pub(super) fn refresh_round3(
        &self,
        owner: ConnectionId,
        wallet_id: WalletId,
        packages: &[SealedPackage],
    ) -> Outcome {
        self.refresh_running(owner, wallet_id, |exchange, claim| {
            let confirmation = self.prepare_refresh(&wallet_id, *exchange, packages, claim)?;
            let signature = Some(self.sign_confirmation(&wallet_id, &confirmation)?);
            let answer = Response::RefreshRound3 {
                confirmation,
                signature,
            };
            Ok((RefreshStage::Prepared, answer))
        })
    }

    /// A step of session `owner`'s refresh of `wallet_id` while its engine runs (rounds 2 and 3;
    /// a prepared refresh only commits).
    fn refresh_running(
        &self,
        owner: ConnectionId,
        wallet_id: WalletId,
        step: impl FnOnce(
            Box<Exchange<Suite, RefreshParams>>,
            &Claim,
        ) -> Result<(RefreshStage, Response), Failure>,
    ) -> Outcome {
        self.refreshes.step(&wallet_id, &owner, |stage, claim| {
            let exchange = match stage {
                RefreshStage::Running(exchange) => exchange,
                RefreshStage::Ecdsa { .. } => {
                    return Err(Failure::bad(
                        "this is a threshold ECDSA refresh: its rounds are EcdsaRefreshRound",
                    ));
                }
                RefreshStage::Prepared => {
                    return Err(Failure::bad(
                        "the refresh is prepared: it waits for the commit",
                    ));
                }
            };
            let (next, answer) = step(exchange, claim)?;
            Ok((Some(next), answer))
        })
    }

    /// Round 3: the new share, prepared, not yet in use: stored sealed with our confirmation, so
    /// the commit can come after a restart or from another session (rolling a refresh forward
    /// that committed at the other cosigner). A recovery may keep more than a device refresh.
    fn prepare_refresh(
        &self,
        wallet_id: &WalletId,
        mut exchange: Exchange<Suite, RefreshParams>,
        packages: &[SealedPackage],
        claim: &Claim,
    ) -> Result<Confirmation, Failure> {
        let state = self.records().load_state(wallet_id)?;
        let from = exchange.params().from_epoch;
        round2_relayed(&mut exchange, packages)?;
        let unconfirmed = exchange.unconfirmed();
        let Some((_, next)) = unconfirmed.first() else {
            return Err(internal("the refresh derived no share"));
        };
        let confirmation = next.confirmation().clone();
        let share = ShareRecord {
            epoch: from.saturating_next(),
            key_package: ByteBuf::from(next.key_package().serialize().map_err(internal)?),
            public_key_package: ByteBuf::from(
                next.public_key_package().serialize().map_err(internal)?,
            ),
        };
        self.store_prepared(wallet_id, state.party, share, from, confirmation, claim)
    }

    /// Commits a prepared refresh: from the sealed prepared record that matches our confirmation
    /// among `confirmations`, so it works from any session and after a restart. Idempotent: the
    /// same confirmations again, once committed, answer the same success.
    pub(super) fn refresh_commit(
        &self,
        owner: ConnectionId,
        state: WalletState,
        actor: &Actor,
        commit: &Commit<'_>,
        digest: &[u8],
    ) -> Outcome {
        let wallet_id = state.params.wallet_id;
        let confirmations = commit.confirmations;
        if confirmations_equal(&state.commit_confirmations, confirmations) {
            return Ok(Response::RefreshCommitted {
                wallet: info(wallet_id, &state)?,
            });
        }
        let prepared = self.committable(&state, actor, confirmations)?;
        drop(state);
        let new_epoch = prepared.share.epoch;
        let _guard = self.writer(&wallet_id)?;
        let mut state = self.records().load_state(&wallet_id)?;
        if confirmations_equal(&state.commit_confirmations, confirmations) {
            return Ok(Response::RefreshCommitted {
                wallet: info(wallet_id, &state)?,
            });
        }
        let receipt_digest = self.check_commit_now(&state, actor, &prepared, commit)?;
        let ecdsa = is_ecdsa(&state);
        let action = self.advance_epoch(&mut state, &prepared, confirmations, &receipt_digest)?;
        self.records()
            .save_share_and_state(&wallet_id, &prepared.share, ecdsa, &state)?;
        // A new epoch, and after a recovery a revoked key: nothing unsealed of before stays.
        self.keys.forget(&wallet_id)?;
        // Committed. The other prepared refreshes to this epoch can never commit now.
        let _ = self.records().discard_prepared(&wallet_id, new_epoch);
        self.refreshes.remove(&wallet_id)?;
        lock(&self.committed_by)?.insert(wallet_id, (owner, new_epoch));
        self.log(
            &wallet_id,
            action,
            &actor.label(),
            digest,
            &format!("allowed: epoch {new_epoch}"),
        )?;
        Ok(Response::RefreshCommitted {
            wallet: info(wallet_id, &state)?,
        })
    }

    /// The prepared refresh that `confirmations` commit, if `actor` may commit it: a recovery's
    /// refresh is committed by the recovering device only; a device refresh by the device, or
    /// rolled forward by the recovering device (it only completes what every party already
    /// computed and confirmed).
    fn committable(
        &self,
        state: &WalletState,
        actor: &Actor,
        confirmations: &[Confirmation],
    ) -> Result<PreparedRecord, Failure> {
        let me = state.party;
        let ours = confirmations
            .iter()
            .find(|c| c.from == me)
            .ok_or_else(|| Failure::bad(format!("no confirmation from party {me} (us)")))?;
        let prepared = self.find_prepared(state, &ours.transcript_hash)?;
        refresh::check_commit(
            &sorted(&state.params.parties),
            me,
            &prepared.confirmation,
            confirmations,
        )?;
        let may = match actor.role {
            Role::PendingDevice if prepared.recovery => {
                prepared.started_by.as_slice() == actor.key.as_slice()
            }
            Role::Device | Role::PendingDevice => !prepared.recovery,
            Role::Recovery => false,
        };
        if !may {
            return Err(Failure::denied(
                "this refresh must be committed by the key of the recovery that started it",
            ));
        }
        Ok(prepared)
    }

    /// The checks of a commit against the state re-read under the writer lock; answers the
    /// digest of the commit receipt.
    fn check_commit_now(
        &self,
        state: &WalletState,
        actor: &Actor,
        prepared: &PreparedRecord,
        commit: &Commit<'_>,
    ) -> Result<[u8; 32], Failure> {
        // Strictly forward: one commit per epoch, from the current one.
        if prepared.from_epoch != state.current_epoch {
            return Err(Failure::bad(format!(
                "refresh from epoch {} can no longer commit: current epoch is {}",
                prepared.from_epoch, state.current_epoch
            )));
        }
        let receipt_digest = commit_receipt_digest(
            &state.params.wallet_id,
            prepared.share.epoch,
            &prepared.confirmation.transcript_hash,
            &prepared.confirmation.public_key_package_hash,
        );
        // The recovery cosigner follows the provider: it commits only the refresh the provider
        // committed to this epoch, so the two never hold shares of different refreshes.
        if let Some(provider_key) = &state.provider_key {
            let receipt = commit.provider_receipt.ok_or_else(|| {
                Failure::denied("the provider's receipt for this commit is missing")
            })?;
            verify_digest(provider_key, &receipt_digest, receipt).map_err(|_| {
                Failure::denied("the provider's receipt is not for this refresh of this wallet")
            })?;
        }
        // The provider commits only what the recovery cosigner really confirmed: no client can
        // play its part and leave it behind at this epoch.
        if let Some(key) = &state.recovery_cosigner_key {
            check_signed_confirmation(
                &state.params.wallet_id,
                party::RECOVERY,
                key,
                commit.confirmations,
                commit.signatures,
            )?;
        }
        // Re-checked under the lock: a recovery started or restarted with another key, or a
        // suspension, that landed since the first check.
        if prepared.recovery
            && state.pending_device_key.as_ref().map(|k| k.as_slice())
                != Some(prepared.started_by.as_slice())
        {
            return Err(Failure::denied(
                "the recovery that started this refresh is no longer the one in progress",
            ));
        }
        if actor.role == Role::Device && !actor.still_authorized(state) {
            return Err(Failure::denied("this device key is suspended or revoked"));
        }
        Ok(receipt_digest)
    }

    /// Makes the prepared epoch current in `state` (not saved); answers the audit action.
    fn advance_epoch(
        &self,
        state: &mut WalletState,
        prepared: &PreparedRecord,
        confirmations: &[Confirmation],
        receipt_digest: &[u8; 32],
    ) -> Result<&'static str, Failure> {
        let new_epoch = prepared.share.epoch;
        // Keep every older epoch still stored until RefreshFinalize: a party that did not commit
        // yet still signs with it.
        let mut retained: Vec<Epoch> = state
            .retained_epochs
            .iter()
            .copied()
            .filter(|e| *e < new_epoch)
            .collect();
        if state.current_epoch < new_epoch && !retained.contains(&state.current_epoch) {
            retained.push(state.current_epoch);
        }
        retained.sort_unstable();
        state.retained_epochs = retained;
        state.current_epoch = new_epoch;
        state.prepared_epoch = None;
        state.public_key_package = prepared.share.public_key_package.clone();
        state.epoch_started_ms = now_ms();
        state.signatures = 0;
        state.commit_confirmations = confirmations.to_vec();
        state.commit_receipt = if state.party == party::PROVIDER {
            let signature = self.audit.sign_digest(receipt_digest).map_err(internal)?;
            Some(ByteBuf::from(signature.to_vec()))
        } else {
            None
        };
        if !prepared.recovery {
            return Ok("refresh");
        }
        // The recovery completes: the new device's key replaces the old one, which is revoked,
        // and an exclusion of the old device (threshold ECDSA) ends with it.
        state.pending_device_key = None;
        state.excluded.retain(|p| *p != party::DEVICE);
        let old = std::mem::replace(&mut state.device_key, prepared.started_by.clone());
        state.revoked_keys.push(old);
        Ok("recover")
    }

    /// The prepared refresh of this wallet whose transcript hashed to `transcript_hash`: to the
    /// epoch after the current one.
    fn find_prepared(
        &self,
        state: &WalletState,
        transcript_hash: &[u8],
    ) -> Result<PreparedRecord, Failure> {
        let wallet_id = state.params.wallet_id;
        if let Some(p) = self.records().load_prepared(
            &wallet_id,
            state.party,
            state.current_epoch.saturating_next(),
            transcript_hash,
        )? {
            return Ok(p);
        }
        Err(Failure::not_found(format!(
            "no prepared refresh of wallet {wallet_id} matches these confirmations"
        )))
    }

    pub(super) fn refresh_finalize(
        &self,
        owner: ConnectionId,
        wallet_id: WalletId,
        epoch: Epoch,
    ) -> Outcome {
        if lock(&self.committed_by)?.get(&wallet_id) != Some(&(owner, epoch)) {
            return Err(Failure::denied(
                "only the session that committed this epoch may finalize it (or the device key, \
                 inside Authorized)",
            ));
        }
        self.retire_older_epochs(wallet_id, epoch)
    }

    /// `RefreshFinalize` inside `Authorized` by the device key (from any session): the device
    /// switched to `epoch`, so the older epochs go. Only the registered device key (a recovering
    /// key finalizes once its refresh made it the device key).
    pub(super) fn refresh_finalize_signed(
        &self,
        state: &WalletState,
        actor: &Actor,
        epoch: Epoch,
        digest: &[u8],
    ) -> Outcome {
        let wallet_id = state.params.wallet_id;
        if actor.role != Role::Device {
            return Err(Failure::denied("only the device key finalizes an epoch"));
        }
        // Nothing to retire: answered without a write (clients finalize after every success).
        if state.retained_epochs.is_empty() && epoch == state.current_epoch {
            return Ok(Response::Done);
        }
        let answer = self.retire_older_epochs(wallet_id, epoch)?;
        self.log(
            &wallet_id,
            "refresh-finalize",
            &actor.label(),
            digest,
            &format!("allowed: epoch {epoch}"),
        )?;
        Ok(answer)
    }

    /// Deletes every epoch of `wallet_id` older than `epoch`, which must be the current one.
    fn retire_older_epochs(&self, wallet_id: WalletId, epoch: Epoch) -> Outcome {
        let _guard = self.writer(&wallet_id)?;
        let mut state = self.records().load_state(&wallet_id)?;
        if epoch != state.current_epoch {
            return Err(Failure::bad(format!(
                "cannot finalize epoch {epoch}: current epoch is {}",
                state.current_epoch
            )));
        }
        // The state first: once it no longer lists an epoch, its share is never read again.
        let old = std::mem::take(&mut state.retained_epochs);
        self.records().save_state(&wallet_id, &state)?;
        self.records().discard_shares(&wallet_id, &old);
        // Open signing sessions of the retired epochs hold their unsealed key packages: they go
        // with the shares.
        self.signs
            .drop_where(&wallet_id, |s| old.contains(&s.epoch()))?;
        self.psbts
            .drop_where(&wallet_id, |s| old.contains(&s.epoch()))?;
        self.eth_signs
            .drop_where(&wallet_id, |s| old.contains(&s.epoch()))?;
        self.keys.forget(&wallet_id)?;
        Ok(Response::Done)
    }
}
