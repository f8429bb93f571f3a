//! Raw-digest signing (`SignCommit`, `SignShare`) on the signing engine
//! (`cosigner_protocol::signing`): one FROST session per request, its nonces in memory only and
//! used once.

use std::time::Duration;

use cosigner_protocol::id::Epoch;
use cosigner_protocol::id::PartyId;
use cosigner_protocol::signing::{SignMessage, Signing};
use cosigner_protocol::wire::{Response, SessionId, WalletId};
use serde_bytes::ByteBuf;

use super::authorized::Actor;
use super::failure::{Failure, Outcome, internal};
use super::records::WalletState;
use super::table;
use super::{Service, Suite, key_package, now_ms, random};
use frost_core::keys::KeyPackage;

/// An open signing session.
pub(super) struct PendingSign {
    wallet_id: WalletId,
    epoch: Epoch,
    /// The key that authorized the commitment: re-checked when the share is released.
    actor: Actor,
    /// The state anchor's generation when it was authorized: unchanged at release means the
    /// state is unchanged (no revocation, suspension or refresh since), so no reload is needed.
    generation: Option<u64>,
    /// This cosigner's side of the signature on the signing engine: its key package (unsealed
    /// once, at the commitment; zeroized when the session ends) and its single-use nonces.
    signing: Signing<Suite>,
}

impl PendingSign {
    /// The epoch whose share it signs with.
    pub(super) fn epoch(&self) -> Epoch {
        self.epoch
    }
}

/// Opens this cosigner's side of a signature of `messages` by `signers` with `share` (its party
/// in `state`): the engine and our commitments, one per message.
pub(super) fn open_signing(
    state: &WalletState,
    key: KeyPackage<Suite>,
    signers: &[PartyId],
    messages: Vec<Vec<u8>>,
) -> Result<(Signing<Suite>, Vec<Vec<u8>>), Failure> {
    let keys = vec![key; messages.len()];
    open_signing_each(state, keys, signers, messages)
}

/// [`open_signing`] with one key package per message (a PSBT whose inputs spend different
/// children of the wallet's key).
pub(super) fn open_signing_each(
    state: &WalletState,
    keys: Vec<KeyPackage<Suite>>,
    signers: &[PartyId],
    messages: Vec<Vec<u8>>,
) -> Result<(Signing<Suite>, Vec<Vec<u8>>), Failure> {
    let locals = vec![(state.party, keys)];
    let (signing, out) = Signing::start_each(locals, signers, messages, &mut rand_core::OsRng)?;
    match out.into_iter().next() {
        Some(SignMessage::Commitments { commitments, .. }) => Ok((signing, commitments)),
        _ => Err(internal("the signing engine committed nothing")),
    }
}

/// Signs the coordinator's `packages` (one per message) with an open signature's single-use
/// sessions: our shares, one per message. The sessions are used up whatever the outcome.
pub(super) fn sign_packages(
    signing: &mut Signing<Suite>,
    packages: Vec<Vec<u8>>,
) -> Result<Vec<Vec<u8>>, Failure> {
    signing.absorb(&SignMessage::Packages(packages))?;
    match signing.advance()?.into_iter().next() {
        Some(SignMessage::Shares { shares, .. }) => Ok(shares),
        _ => Err(internal("the signing engine signed nothing")),
    }
}

/// Whether `epoch` still has a share in `state` (current, or retained until finalized).
pub(super) fn epoch_in_use(state: &WalletState, epoch: Epoch) -> bool {
    epoch == state.current_epoch || state.retained_epochs.contains(&epoch)
}

fn too_many(wallet_id: &WalletId, open: usize) -> String {
    format!("wallet {wallet_id} has {open} signing sessions open: finish or let them expire")
}

impl Service {
    /// Our (`party`'s) key package of `wallet_id` at `epoch`, from the cache of unsealed ones
    /// (`keys`), unsealed on a miss.
    pub(super) fn key_of(
        &self,
        wallet_id: WalletId,
        party: PartyId,
        epoch: Epoch,
    ) -> Result<KeyPackage<Suite>, Failure> {
        self.keys.get(wallet_id, party, epoch, || {
            key_package(&self.records().load_share(&wallet_id, party, epoch)?)
        })
    }

    pub(super) fn sign_commit(
        &self,
        mut state: WalletState,
        actor: Actor,
        mut generation: Option<u64>,
        epoch: Epoch,
        message: &[u8],
        signers: &[PartyId],
    ) -> Outcome {
        let wallet_id = state.params.wallet_id;
        self.check_sign_request(&state, &actor, epoch, message, signers)?;
        // The quota first: a refused session must not count a signature or log one as allowed.
        let open = self.signs.open(&wallet_id)?;
        if open >= table::MAX_SIGNS_PER_WALLET {
            return Err(Failure::busy(too_many(&wallet_id, open)));
        }
        self.count_signature(&mut state, &actor, epoch, message, &mut generation)?;
        // The two-round path reads (and checks) the share record at every commitment.
        let share = self.records().load_share(&wallet_id, state.party, epoch)?;
        let key = key_package(&share)?;
        let (signing, commitments) = open_signing(&state, key, signers, vec![message.to_vec()])?;
        let commitments = commitments.into_iter().next().unwrap_or_default();
        self.log(&wallet_id, "sign", &actor.label(), message, "allowed")?;
        let session_id = SessionId(random::<16>()?);
        let pending = PendingSign {
            wallet_id,
            epoch,
            actor,
            generation,
            signing,
        };
        self.signs.insert(session_id, wallet_id, pending, |open| {
            too_many(&wallet_id, open)
        })?;
        Ok(Response::SignCommitted {
            session_id,
            commitments: ByteBuf::from(commitments),
        })
    }

    /// The signer set and the epoch of a `SignCommit`, and the provider's refresh demand by age.
    pub(super) fn check_sign_request(
        &self,
        state: &WalletState,
        actor: &Actor,
        epoch: Epoch,
        message: &[u8],
        signers: &[PartyId],
    ) -> Result<(), Failure> {
        let wallet_id = state.params.wallet_id;
        let refuse = |why: &str| {
            self.refused(&wallet_id, "sign", &actor.label(), message, why);
        };
        if let Some(stranger) = signers.iter().find(|s| !state.params.parties.contains(s)) {
            refuse("refused: signer outside the wallet");
            return Err(Failure::bad(format!(
                "party {stranger} is not a party of wallet {wallet_id}"
            )));
        }
        if !epoch_in_use(state, epoch) {
            refuse("refused: stale epoch");
            return Err(Failure::bad(format!(
                "epoch {epoch} is not in use (current epoch {}): this share was refreshed away",
                state.current_epoch
            )));
        }
        Ok(())
    }

    /// The provider's refresh demands (`[policy]` of the enclave's config): refused once the
    /// epoch is too old; with a limit on signatures, the signature is counted in the anchored
    /// state (under the writer lock, re-read: no lost count), and `generation` becomes the
    /// anchor's new one, since the state the session is checked against is then our own write.
    pub(super) fn count_signature(
        &self,
        state: &mut WalletState,
        actor: &Actor,
        epoch: Epoch,
        message: &[u8],
        generation: &mut Option<u64>,
    ) -> Result<(), Failure> {
        let wallet_id = state.params.wallet_id;
        let refuse = |why: &str| {
            self.refused(&wallet_id, "sign", &actor.label(), message, why);
        };
        let age = Duration::from_millis(now_ms().saturating_sub(state.epoch_started_ms));
        if let Some(limit) = self.policy.after
            && age > limit
        {
            refuse("refused: refresh required (age)");
            return Err(Failure::bad(format!(
                "refresh required: the shares are {} s old, the policy allows {} s",
                age.as_secs(),
                limit.as_secs()
            )));
        }
        let Some(limit) = self.policy.after_signatures else {
            return Ok(());
        };
        let over = |state: &WalletState| {
            Failure::bad(format!(
                "refresh required: {} signatures in this epoch, the policy allows {limit}",
                state.signatures
            ))
        };
        if state.signatures >= limit {
            refuse("refused: refresh required (signatures)");
            return Err(over(state));
        }
        let _guard = self.writer(&wallet_id)?;
        // Re-read under the lock: a concurrent signature's count must not be lost, and a
        // suspension or revocation that landed meanwhile must stop this one.
        *state = self.records().load_state(&wallet_id)?;
        if !actor.still_authorized(state) || !epoch_in_use(state, epoch) {
            return Err(Failure::denied(
                "the key or epoch of this request is no longer valid (a recovery or refresh \
                 landed meanwhile)",
            ));
        }
        if state.signatures >= limit {
            return Err(over(state));
        }
        state.signatures += 1;
        self.records().save_state(&wallet_id, state)?;
        // Our own write: the state we just saved is the one to compare against.
        *generation = self.records().state_generation(&wallet_id)?;
        Ok(())
    }

    pub(super) fn sign_share(&self, session_id: &SessionId, signing_package: &[u8]) -> Outcome {
        // Removed before use: whatever happens next, this session's nonces are never used again.
        let pending = self.signs.take(session_id, |_| Ok(()))?;
        // Checked again now, not only at SignCommit: a revocation, a recovery started, or a
        // refresh that retired the epoch since then stops this signature too. Any such change
        // moved the state's anchor; if it did not move, the state is the one authorized.
        if self.records().state_generation(&pending.wallet_id)? != pending.generation {
            self.recheck_signer(&pending.wallet_id, &pending.actor, pending.epoch)?;
        }
        let mut signing = pending.signing;
        let shares = sign_packages(&mut signing, vec![signing_package.to_vec()])?;
        let share = shares.into_iter().next().unwrap_or_default();
        Ok(Response::SignatureShare {
            share: ByteBuf::from(share),
        })
    }

    /// Whether the key and epoch of a signature are still valid in the current state.
    pub(super) fn recheck_signer(
        &self,
        wallet_id: &WalletId,
        actor: &Actor,
        epoch: Epoch,
    ) -> Result<(), Failure> {
        let state = self.records().load_state(wallet_id)?;
        if !actor.still_authorized(&state) {
            return Err(Failure::denied(
                "the key that opened this signing session is no longer authorized (revoked or \
                 suspended by a recovery)",
            ));
        }
        if !epoch_in_use(&state, epoch) {
            return Err(Failure::bad(format!(
                "epoch {epoch} is no longer in use: refreshed since the commitments"
            )));
        }
        Ok(())
    }
}
