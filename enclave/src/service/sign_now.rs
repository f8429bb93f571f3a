//! One-round signing (`SignNow`): one round trip per signature in steady state.
//!
//! With every `SignedNow` answer the enclave hands its client the next single-use commitment
//! for that wallet ([`NextCommitment`]): nonces drawn now, before the message is known (RFC 9591
//! §5.1 allows commitments ahead of time), kept in this session's memory only, never sealed or
//! stored, gone when the session ends or the enclave restarts. The client's next request carries
//! the message, its own fresh commitment and the device's signature over the commitment's id as
//! its challenge (`Request::Precommitted`); the enclave takes the commitment out of the session
//! *before* anything else, so it is used at most once whatever happens (a bad signature, a
//! refusal, a crash and a retry: the retry names a commitment that is gone and falls back).
//! Without a commitment (the first signature after connecting, or after a restart) a `SignNow`
//! inside `Authorized` draws fresh nonces: two round trips (`Challenge`, then the request).
//!
//! The enclave builds the signing package itself from the message and both commitments and
//! signs it at once: binding factors cover the message and every commitment (RFC 9591 §4.4),
//! so a client that knew our commitment before choosing its own and the message gains nothing,
//! and our session signs only the message and signer set of the request.

use std::time::{Duration, Instant};

use cosigner_protocol::id::{Epoch, PartyId};
use cosigner_protocol::sign::Precommitment;
use cosigner_protocol::signing::{SignMessage, Signing, single_value};
use cosigner_protocol::wire::{NextCommitment, Response, WalletId};
use frost_core::keys::KeyPackage;
use serde_bytes::ByteBuf;

use super::authorized::{Actor, SignNow};
use super::failure::{Failure, Outcome, internal};
use super::records::WalletState;
use super::{Service, Suite, random};

/// Most precommitments one session holds (one per wallet; the oldest goes first).
pub(super) const MAX_PRECOMMITMENTS: usize = 8;

/// How long a commitment stays usable: a session idle for longer keeps no nonces.
pub(super) const PRECOMMITMENT_TTL: Duration = Duration::from_secs(600);

/// Length of a precommitment's id (it is also a challenge).
pub(super) const PRECOMMITMENT_ID_LEN: usize = 32;

/// A commitment handed to this session's client, its nonces in memory only.
pub(super) struct Held {
    id: [u8; PRECOMMITMENT_ID_LEN],
    made: Instant,
    wallet_id: WalletId,
    epoch: Epoch,
    precommitment: Precommitment<Suite>,
}

impl Held {
    /// Its id: the challenge the request using it is signed over.
    pub(super) fn id(&self) -> &[u8; PRECOMMITMENT_ID_LEN] {
        &self.id
    }

    /// The epoch it was drawn for.
    pub(super) fn epoch(&self) -> Epoch {
        self.epoch
    }
}

/// A session's precommitments, at most one per wallet.
#[derive(Default)]
pub struct Precommitments(Vec<Held>);

impl std::fmt::Debug for Precommitments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Precommitments({} held)", self.0.len())
    }
}

impl Precommitments {
    /// Takes the precommitment `id` of `wallet_id` out of the session: whatever follows, it is
    /// never used again.
    pub(super) fn take(&mut self, wallet_id: &WalletId, id: &[u8]) -> Result<Held, Failure> {
        self.0.retain(|h| h.made.elapsed() < PRECOMMITMENT_TTL);
        let at = self
            .0
            .iter()
            .position(|h| h.wallet_id == *wallet_id && h.id.as_slice() == id)
            .ok_or_else(|| {
                Failure::not_found(
                    "no such commitment on this session (used, replaced, expired, or the \
                     enclave restarted): sign without one",
                )
            })?;
        Ok(self.0.remove(at))
    }

    /// Keeps `held`, replacing the wallet's previous one (its nonces are dropped, zeroized).
    pub(super) fn keep(&mut self, held: Held) {
        self.0.retain(|h| h.wallet_id != held.wallet_id);
        if self.0.len() >= MAX_PRECOMMITMENTS {
            self.0.remove(0);
        }
        self.0.push(held);
    }
}

/// The other signer of a personal wallet's signature: the signer set is us and one other party.
pub(super) fn other_signer(state: &WalletState, signers: &[PartyId]) -> Result<PartyId, Failure> {
    match signers {
        [a, b] if *a == state.party && *b != state.party => Ok(*b),
        [a, b] if *b == state.party && *a != state.party => Ok(*a),
        _ => Err(Failure::bad(format!(
            "one-round signing takes two signers, this cosigner (party {}) and the client's \
             party; got {signers:?}",
            state.party
        ))),
    }
}

/// What a `SignNow` runs with besides the request.
pub(super) struct Now<'a> {
    pub(super) state: WalletState,
    pub(super) actor: Actor,
    pub(super) generation: Option<u64>,
    /// The commitment the request uses (`Precommitted`), or none (drawn now).
    pub(super) held: Option<Held>,
    /// Where the next commitment goes.
    pub(super) store: &'a mut Precommitments,
}

impl Service {
    /// `SignNow`: checks, the audit entry, our share, and the next commitment.
    pub(super) fn sign_now(&self, now: Now<'_>, request: SignNow) -> Outcome {
        let Now {
            mut state,
            actor,
            mut generation,
            held,
            store,
        } = now;
        let SignNow {
            wallet_id,
            epoch,
            message,
            signers,
            commitments,
        } = request;
        self.check_sign_request(&state, &actor, epoch, &message, &signers)?;
        let other = other_signer(&state, &signers)?;
        if let Some(held) = held.as_ref().filter(|h| h.epoch != epoch) {
            return Err(Failure::bad(format!(
                "the commitment used is for epoch {}, the request signs at epoch {epoch}",
                held.epoch
            )));
        }
        let party = state.party;
        let key = self.key_of(wallet_id, party, epoch)?;
        let precommitment = match held {
            Some(held) => held.precommitment,
            None => Precommitment::new(&key, party, &mut rand_core::OsRng)?.0,
        };
        let locals = vec![(party, key.clone(), vec![precommitment])];
        let (mut signing, ours) =
            Signing::start_precommitted(locals, &signers, vec![message.to_vec()])?;
        // The client's commitment decodes (on arrival in the engine) before anything is counted
        // or logged.
        signing.absorb(&SignMessage::Commitments {
            party: other,
            commitments: vec![commitments.to_vec()],
        })?;
        self.count_signature(&mut state, &actor, epoch, &message, &mut generation)?;
        // As at a two-round release: a recovery or refresh that landed since the authorization
        // stops this signature (the anchor's generation moved).
        if self.records().state_generation(&wallet_id)? != generation {
            self.recheck_signer(&wallet_id, &actor, epoch)?;
        }
        // Durable before our share leaves the enclave: nothing signed that the log lacks. This
        // thread writes the entry (it mostly waits for the store's fsync) while another computes
        // our share and draws the next commitment; both stay here until the entry is durable.
        // Should the share fail after the entry was written (the commitments decoded above, so
        // only a frost fault could), the log records an authorized signature that was not
        // released: it may overstate, never understate.
        let key = &key;
        let (signed, logged) = alongside(
            move || (signing.advance(), draw(wallet_id, party, epoch, key)),
            || self.log(&wallet_id, "sign", &actor.label(), &message, "allowed"),
        );
        let (share, next) = signed?;
        let receipt = logged?;
        let share =
            single_value(share?).ok_or_else(|| internal("the signing engine signed nothing"))?;
        let (held, next) = next?;
        store.keep(held);
        Ok(Response::SignedNow {
            commitments: ByteBuf::from(
                single_value(ours)
                    .ok_or_else(|| internal("the signing engine committed nothing"))?,
            ),
            share: ByteBuf::from(share),
            receipt: ByteBuf::from(receipt),
            next: Some(next),
        })
    }
}

/// Runs `compute` on another thread while `write` runs on this one (a durable write, which mostly
/// waits for the store's fsync): both results, `compute`'s an internal failure if it panicked.
pub(super) fn alongside<T: Send, W>(
    compute: impl FnOnce() -> T + Send,
    write: impl FnOnce() -> W,
) -> (Result<T, Failure>, W) {
    std::thread::scope(|scope| {
        let computing = scope.spawn(compute);
        let written = write();
        let computed = computing
            .join()
            .map_err(|_| internal("the signing thread panicked"));
        (computed, written)
    })
}

/// Draws the next commitment of `wallet_id` for a session: the nonces to keep there, and what
/// the client is told.
pub(super) fn draw(
    wallet_id: WalletId,
    party: PartyId,
    epoch: Epoch,
    key: &KeyPackage<Suite>,
) -> Result<(Held, NextCommitment), Failure> {
    let (precommitment, commitments) = Precommitment::new(key, party, &mut rand_core::OsRng)?;
    let id = random::<PRECOMMITMENT_ID_LEN>()?;
    let next = NextCommitment {
        id: ByteBuf::from(id.to_vec()),
        wallet_id,
        epoch,
        commitments: ByteBuf::from(commitments),
    };
    let held = Held {
        id,
        made: Instant::now(),
        wallet_id,
        epoch,
        precommitment,
    };
    Ok((held, next))
}
