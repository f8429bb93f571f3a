//! The repair engines: a helper's side ([`RepairHelper`]) and the participant's side
//! ([`RepairReceiver`]) of a share repair, as values that absorb messages in any order and say
//! what they wait for: the repair counterpart of [`crate::keygen::exchange`] and
//! [`crate::signing`], whatever carries the messages (the enclave's requests, a coordinator).
//!
//! ```text
//! helper:   start ──► our HelperKey ─┐
//!                                    ├─ every helper's key ──► our Deltas (one to each other helper)
//!           absorb HelperKeys ───────┘
//!           absorb Deltas to us (one from each other helper) + ParticipantKey ──► our Sigma
//! receiver: start ──► ParticipantKey;  absorb every HelperKey and every Sigma ──► KeyPackage
//! ```
//!
//! The engines add no cryptography: each step runs a round of [`super`]
//! ([`super::RepairHelper1::deltas`], [`super::RepairHelper2::sigma`],
//! [`super::RepairParticipant::finish`]), and those keep every check of the repair (signed helper
//! keys, signed deltas, the AAD binding, the repaired share against the public key package). What
//! the engines add is what a relay in any order needs:
//!
//! * one message per sender and step: the first is kept, the same one again is harmless, a
//!   different second one names its sender ([`ProtocolError::Culprit`]: equivocation), so a
//!   relay cannot swap a message once it was seen;
//! * a helper key is checked against its helper's verifying share as it arrives: a substituted
//!   key is refused and does not take the helper's place, and two different keys that pass are
//!   that helper's own equivocation (only its share signs);
//! * a message from a stranger, or addressed to someone else, is refused and counts for nothing;
//! * messages for a later step are kept until that step runs;
//! * a failed step ends the repair for good: the rounds consume their secrets.
//!
//! Who may speak for a party is the caller's check, as for the other engines. The participant's
//! HPKE key in particular is vouched for by nothing in the repair: whoever hands it to a helper
//! decides who gets the share (the enclave takes it from the session the pending device key
//! authorized; docs/lifecycle.md, "Recovery").

use std::collections::BTreeMap;

use frost_core::Ciphersuite;
use frost_core::keys::{KeyPackage, PublicKeyPackage};
use rand_core::{CryptoRng, RngCore};

use super::{
    RepairHelper1, RepairHelper2, RepairParticipant, check_addressed, check_against_wallet,
    check_helper_key, helper_start, participant_start,
};
use crate::error::{ProtocolError, Result};
use crate::hpke;
use crate::id::PartyId;
use crate::keygen::exchange::insert_once;
use crate::redact::{REDACTED, redacted_debug};
use crate::wire::{RepairParams, SealedPackage};

/// One message of a repair, to send or absorbed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RepairMessage {
    /// A helper's key for this repair: its HPKE public key followed by its share's signature over
    /// it and the parameters ([`super::helper_start`]). For every helper and the participant.
    HelperKey {
        /// The helper.
        from: PartyId,
        /// HPKE public key ‖ signature.
        key: Vec<u8>,
    },
    /// The participant's HPKE public key for this repair, to which each helper seals its sigma.
    /// For every helper, which must get it from someone entitled to the share.
    ParticipantKey {
        /// The participant.
        from: PartyId,
        /// The HPKE public key.
        key: Vec<u8>,
    },
    /// A delta sealed (and signed) by one helper to another.
    Delta(SealedPackage),
    /// A helper's sigma, sealed to the participant.
    Sigma(SealedPackage),
}

impl RepairMessage {
    /// The party that sent it.
    pub fn from(&self) -> PartyId {
        match self {
            Self::HelperKey { from, .. } | Self::ParticipantKey { from, .. } => *from,
            Self::Delta(p) | Self::Sigma(p) => p.from,
        }
    }

    /// The one party it is for (a sealed delta or sigma), or `None` for a key every party gets.
    pub fn to(&self) -> Option<PartyId> {
        match self {
            Self::HelperKey { .. } | Self::ParticipantKey { .. } => None,
            Self::Delta(p) | Self::Sigma(p) => Some(p.to),
        }
    }
}

/// Where a repair engine stands, for progress lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RepairStep {
    /// Waiting for every helper's key.
    HelperKeys,
    /// A helper waiting for the deltas sealed to it.
    Deltas,
    /// A helper waiting for the participant's HPKE key.
    ParticipantKey,
    /// The participant waiting for the sigmas.
    Sigmas,
    /// A helper sent its sigma; the participant holds its repaired share.
    Done,
    /// A step failed; the repair is over.
    Failed,
}

/// What a repair engine waits for: its step and the parties whose message it still lacks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepairWaiting {
    /// The step.
    pub step: RepairStep,
    /// Parties still missing for that step (empty when done or failed).
    pub parties: Vec<PartyId>,
}

impl std::fmt::Display for RepairWaiting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.step {
            RepairStep::HelperKeys => "helper keys",
            RepairStep::Deltas => "deltas",
            RepairStep::ParticipantKey => "the participant's HPKE key",
            RepairStep::Sigmas => "sigmas",
            RepairStep::Done => return f.write_str("nothing (done)"),
            RepairStep::Failed => return f.write_str("nothing (failed)"),
        };
        write!(f, "{what} from parties {:?}", self.parties)
    }
}

fn unexpected(expected: &'static str, actual: String) -> ProtocolError {
    ProtocolError::UnexpectedMessage { expected, actual }
}

fn already_failed(reason: &str) -> ProtocolError {
    ProtocolError::Params {
        reason: format!("this repair already failed: {reason}"),
    }
}

/// Parties of `all` for which `have` is false.
fn missing(all: &[PartyId], have: impl Fn(&PartyId) -> bool) -> Vec<PartyId> {
    all.iter().filter(|p| !have(p)).copied().collect()
}

enum HelperStage<C: Ciphersuite> {
    Keys(Box<RepairHelper1<C>>),
    Deltas(Box<RepairHelper2<C>>),
    Done,
}

/// One helper's side of a repair (see the module documentation).
pub struct RepairHelper<C: Ciphersuite> {
    /// Helpers sorted.
    params: RepairParams,
    me: PartyId,
    /// Our share, until our deltas are out (frost's `KeyPackage` zeroizes on drop).
    key_package: Option<KeyPackage<C>>,
    /// The wallet's public key package at `params.epoch`: helper keys are checked against it.
    public_key_package: PublicKeyPackage<C>,
    /// `None` only after a failure.
    stage: Option<HelperStage<C>>,
    /// Every helper's key, ours included.
    helper_keys: BTreeMap<PartyId, Vec<u8>>,
    /// Deltas sealed to us, by sender.
    deltas: BTreeMap<PartyId, SealedPackage>,
    participant_key: Option<Vec<u8>>,
    failed: Option<String>,
}

impl<C: Ciphersuite> RepairHelper<C> {
    /// Starts helping as helper `me` with our share of epoch `params.epoch` and the wallet's
    /// public key package at that epoch ([`super::helper_start`]); returns our helper key to send
    /// to every helper and the participant.
    ///
    /// Errors: as [`super::helper_start`] (bad parameters, `me` not a helper, a key package that
    /// is not `me`'s or not of this public key package).
    pub fn start(
        params: &RepairParams,
        me: PartyId,
        key_package: &KeyPackage<C>,
        public_key_package: &PublicKeyPackage<C>,
        rng: &mut (impl CryptoRng + RngCore),
    ) -> Result<(Self, Vec<RepairMessage>)> {
        let (state, key) = helper_start(params, me, key_package, public_key_package, rng)?;
        let helper = Self {
            params: state.params().clone(),
            me,
            key_package: Some(key_package.clone()),
            public_key_package: public_key_package.clone(),
            stage: Some(HelperStage::Keys(Box::new(state))),
            helper_keys: BTreeMap::from([(me, key.clone())]),
            deltas: BTreeMap::new(),
            participant_key: None,
            failed: None,
        };
        Ok((helper, vec![RepairMessage::HelperKey { from: me, key }]))
    }

    /// The repair's parameters (helpers sorted).
    pub fn params(&self) -> &RepairParams {
        &self.params
    }

    /// Our party number.
    pub fn me(&self) -> PartyId {
        self.me
    }

    /// Our helper key (to send it again if the transport lost it).
    pub fn helper_key(&self) -> &[u8] {
        self.helper_keys.get(&self.me).map_or(&[], Vec::as_slice)
    }

    /// Takes one message; returns whether it was new (the same one again is not).
    ///
    /// Errors, leaving the engine as it was: a sender that is not a helper (or for the
    /// participant's key, not the participant), a delta from us or not addressed to us, a sigma
    /// (for the participant only), a participant key of the wrong length
    /// ([`ProtocolError::UnexpectedMessage`]); a relayed copy of our own key that differs from it
    /// ([`ProtocolError::Disagreement`]); another helper's key that is malformed or not signed by
    /// its share, or a second, different message of the same sender and step
    /// ([`ProtocolError::Culprit`] naming the sender).
    pub fn absorb(&mut self, message: &RepairMessage) -> Result<bool> {
        match message {
            RepairMessage::HelperKey { from, key } => self.absorb_helper_key(*from, key),
            RepairMessage::ParticipantKey { from, key } => self.absorb_participant_key(*from, key),
            RepairMessage::Delta(delta) => self.absorb_delta(delta),
            RepairMessage::Sigma(sigma) => Err(unexpected(
                "helper keys, deltas and the participant's key",
                format!(
                    "a sigma from party {} to party {}: helpers take none",
                    sigma.from, sigma.to
                ),
            )),
        }
    }

    fn absorb_helper_key(&mut self, from: PartyId, key: &[u8]) -> Result<bool> {
        if !self.params.helpers.contains(&from) {
            return Err(unexpected(
                "one key from each helper",
                format!("a key from party {from}, who is not a helper"),
            ));
        }
        if from == self.me {
            if self.helper_key() == key {
                return Ok(false);
            }
            return Err(ProtocolError::Disagreement {
                reason: format!(
                    "the helper key relayed as party {from}'s (ours) is not the one we sent"
                ),
            });
        }
        check_helper_key(&self.params, &self.public_key_package, from, key)?;
        insert_once(
            &mut self.helper_keys,
            from,
            &key.to_vec(),
            from,
            "helper key",
        )
    }

    fn absorb_participant_key(&mut self, from: PartyId, key: &[u8]) -> Result<bool> {
        let participant = self.params.participant;
        if from != participant {
            return Err(unexpected(
                "the participant's HPKE key",
                format!("an HPKE key from party {from}, who is not the participant {participant}"),
            ));
        }
        if key.len() != hpke::PUBLIC_KEY_LEN {
            return Err(unexpected(
                "the participant's HPKE key",
                format!(
                    "an HPKE key of {} bytes from the participant, expected {}",
                    key.len(),
                    hpke::PUBLIC_KEY_LEN
                ),
            ));
        }
        match &self.participant_key {
            Some(known) if known.as_slice() == key => Ok(false),
            Some(_) => Err(ProtocolError::culprit(
                participant,
                "it sent two different versions of its HPKE key",
            )),
            None => {
                self.participant_key = Some(key.to_vec());
                Ok(true)
            }
        }
    }

    fn absorb_delta(&mut self, delta: &SealedPackage) -> Result<bool> {
        let expected = "one delta to us from each other helper";
        if !self.params.helpers.contains(&delta.from) || delta.from == self.me {
            return Err(unexpected(
                expected,
                format!(
                    "a delta from party {}, who is not another helper (ours never leaves us)",
                    delta.from
                ),
            ));
        }
        check_addressed(delta, "delta", self.me, expected)?;
        insert_once(&mut self.deltas, delta.from, delta, delta.from, "delta")
    }

    /// Moves on as far as what was absorbed allows: our deltas once every helper's key is here,
    /// then our sigma once the delta of every other helper and the participant's key are here.
    /// Returns the messages to send (each delta to its helper, the sigma to the participant).
    ///
    /// Errors: a round fails ([`super::RepairHelper1::deltas`], [`super::RepairHelper2::sigma`]:
    /// a culprit, a disagreement); the repair is then over and says so on every later call.
    pub fn advance(&mut self, rng: &mut (impl CryptoRng + RngCore)) -> Result<Vec<RepairMessage>> {
        if let Some(reason) = &self.failed {
            return Err(already_failed(reason));
        }
        let mut out = Vec::new();
        loop {
            match self.step_once(rng) {
                Ok(Some(messages)) => out.extend(messages),
                Ok(None) => return Ok(out),
                Err(e) => {
                    self.failed = Some(e.to_string());
                    self.stage = None;
                    self.key_package = None;
                    return Err(e);
                }
            }
        }
    }

    /// Runs the next round if its inputs are complete.
    fn step_once(
        &mut self,
        rng: &mut (impl CryptoRng + RngCore),
    ) -> Result<Option<Vec<RepairMessage>>> {
        if !self.waiting().parties.is_empty() {
            return Ok(None);
        }
        match self.stage.take() {
            Some(HelperStage::Keys(state)) => {
                let key_package = self
                    .key_package
                    .take()
                    .ok_or_else(|| ProtocolError::Params {
                        reason: "our share is gone before our deltas".into(),
                    })?;
                let (next, sealed) = state.deltas(&key_package, &self.helper_keys, rng)?;
                drop(key_package);
                self.stage = Some(HelperStage::Deltas(Box::new(next)));
                Ok(Some(sealed.into_iter().map(RepairMessage::Delta).collect()))
            }
            Some(HelperStage::Deltas(state)) => {
                let Some(participant_key) = &self.participant_key else {
                    self.stage = Some(HelperStage::Deltas(state));
                    return Ok(None);
                };
                let deltas: Vec<SealedPackage> = self.deltas.values().cloned().collect();
                let sigma = state.sigma(&deltas, participant_key, rng)?;
                self.stage = Some(HelperStage::Done);
                Ok(Some(vec![RepairMessage::Sigma(sigma)]))
            }
            other => {
                self.stage = other;
                Ok(None)
            }
        }
    }

    /// The step we are at.
    pub fn step(&self) -> RepairStep {
        self.waiting().step
    }

    /// Whether our sigma is out.
    pub fn is_done(&self) -> bool {
        matches!(self.stage, Some(HelperStage::Done))
    }

    /// What we still wait for.
    pub fn waiting(&self) -> RepairWaiting {
        let (step, parties) = match &self.stage {
            None => (RepairStep::Failed, Vec::new()),
            Some(HelperStage::Done) => (RepairStep::Done, Vec::new()),
            Some(HelperStage::Keys(_)) => (
                RepairStep::HelperKeys,
                missing(&self.params.helpers, |p| self.helper_keys.contains_key(p)),
            ),
            Some(HelperStage::Deltas(_)) => {
                let deltas = missing(&self.params.helpers, |p| {
                    *p == self.me || self.deltas.contains_key(p)
                });
                if deltas.is_empty() && self.participant_key.is_none() {
                    (RepairStep::ParticipantKey, vec![self.params.participant])
                } else {
                    (RepairStep::Deltas, deltas)
                }
            }
        };
        RepairWaiting { step, parties }
    }
}

enum ReceiverStage<C: Ciphersuite> {
    Waiting(Box<RepairParticipant<C>>),
    Done(KeyPackage<C>),
}

/// The participant's side of a repair: the device whose share is rebuilt (see the module
/// documentation).
pub struct RepairReceiver<C: Ciphersuite> {
    /// Helpers sorted.
    params: RepairParams,
    public_key_package: PublicKeyPackage<C>,
    min_signers: u16,
    participant_key: Vec<u8>,
    /// `None` only after a failure.
    stage: Option<ReceiverStage<C>>,
    /// Every helper's key, exactly as the helpers got them (bound into every sigma's AAD).
    helper_keys: BTreeMap<PartyId, Vec<u8>>,
    /// Sigmas, by sender.
    sigmas: BTreeMap<PartyId, SealedPackage>,
    failed: Option<String>,
}

impl<C: Ciphersuite> RepairReceiver<C> {
    /// Starts the participant's side ([`super::participant_start`]) against the wallet's public
    /// key package at `params.epoch` and its threshold; returns our HPKE key to send to every
    /// helper (authenticated by the caller: the helpers seal a share of the wallet to it).
    ///
    /// Errors ([`ProtocolError::Params`], [`ProtocolError::Ciphersuite`]): bad parameters, a
    /// threshold unlike the package's or above the helper count, a helper or participant that
    /// is not a member of the wallet.
    pub fn start(
        params: &RepairParams,
        public_key_package: &PublicKeyPackage<C>,
        min_signers: u16,
        rng: &mut (impl CryptoRng + RngCore),
    ) -> Result<(Self, Vec<RepairMessage>)> {
        let (state, key) = participant_start::<C>(params, rng)?;
        check_against_wallet(state.params(), public_key_package, min_signers)?;
        let receiver = Self {
            params: state.params().clone(),
            public_key_package: public_key_package.clone(),
            min_signers,
            participant_key: key.clone(),
            stage: Some(ReceiverStage::Waiting(Box::new(state))),
            helper_keys: BTreeMap::new(),
            sigmas: BTreeMap::new(),
            failed: None,
        };
        let from = receiver.params.participant;
        Ok((receiver, vec![RepairMessage::ParticipantKey { from, key }]))
    }

    /// The repair's parameters (helpers sorted).
    pub fn params(&self) -> &RepairParams {
        &self.params
    }

    /// Our HPKE public key for this repair (to send it again if the transport lost it).
    pub fn participant_key(&self) -> &[u8] {
        &self.participant_key
    }

    /// Takes one message; returns whether it was new (the same one again is not).
    ///
    /// Errors, leaving the engine as it was: a sender that is not a helper, a sigma not
    /// addressed to us, a delta (sealed between helpers) ([`ProtocolError::UnexpectedMessage`]);
    /// a relayed copy of our own key that differs from it ([`ProtocolError::Disagreement`]); a
    /// helper key that is malformed or not signed by its share, or a second, different message of
    /// the same sender and step ([`ProtocolError::Culprit`] naming the sender).
    pub fn absorb(&mut self, message: &RepairMessage) -> Result<bool> {
        let participant = self.params.participant;
        match message {
            RepairMessage::HelperKey { from, key } => {
                if !self.params.helpers.contains(from) {
                    return Err(unexpected(
                        "one key from each helper",
                        format!("a key from party {from}, who is not a helper"),
                    ));
                }
                check_helper_key(&self.params, &self.public_key_package, *from, key)?;
                insert_once(&mut self.helper_keys, *from, key, *from, "helper key")
            }
            RepairMessage::ParticipantKey { from, .. } if *from != participant => Err(unexpected(
                "helper keys and sigmas",
                format!("an HPKE key from party {from}, who is not the participant {participant}"),
            )),
            RepairMessage::ParticipantKey { key, .. } if *key == self.participant_key => Ok(false),
            RepairMessage::ParticipantKey { .. } => Err(ProtocolError::Disagreement {
                reason: format!(
                    "the HPKE key relayed as ours (party {participant}'s) is not the one we sent"
                ),
            }),
            RepairMessage::Sigma(sigma) => {
                let expected = "one sigma to us from each helper";
                if !self.params.helpers.contains(&sigma.from) {
                    return Err(unexpected(
                        expected,
                        format!("a sigma from party {}, who is not a helper", sigma.from),
                    ));
                }
                check_addressed(sigma, "sigma", participant, expected)?;
                insert_once(&mut self.sigmas, sigma.from, sigma, sigma.from, "sigma")
            }
            RepairMessage::Delta(delta) => Err(unexpected(
                "helper keys and sigmas",
                format!(
                    "a delta from party {} to party {}: it is sealed between helpers",
                    delta.from, delta.to
                ),
            )),
        }
    }

    /// Repairs our share once every helper's key and sigma are here
    /// ([`super::RepairParticipant::finish`]: opened, summed and checked against the public key
    /// package). Returns whether the share is repaired.
    ///
    /// Errors: a sigma that does not open or decode ([`ProtocolError::Culprit`] naming its
    /// sender), a repaired share that is not ours ([`ProtocolError::Disagreement`]); the repair is
    /// then over and says so on every later call.
    pub fn advance(&mut self) -> Result<bool> {
        if let Some(reason) = &self.failed {
            return Err(already_failed(reason));
        }
        let ready = self.waiting().parties.is_empty();
        let Some(ReceiverStage::Waiting(state)) = self.stage.take_if(|_| ready) else {
            return Ok(self.is_done());
        };
        let sigmas: Vec<SealedPackage> = self.sigmas.values().cloned().collect();
        match state.finish(
            &self.helper_keys,
            &sigmas,
            &self.public_key_package,
            self.min_signers,
        ) {
            Ok(key_package) => {
                self.stage = Some(ReceiverStage::Done(key_package));
                Ok(true)
            }
            Err(e) => {
                self.failed = Some(e.to_string());
                Err(e)
            }
        }
    }

    /// Whether our share is repaired.
    pub fn is_done(&self) -> bool {
        matches!(self.stage, Some(ReceiverStage::Done(_)))
    }

    /// The step we are at.
    pub fn step(&self) -> RepairStep {
        self.waiting().step
    }

    /// What we still wait for.
    pub fn waiting(&self) -> RepairWaiting {
        let (step, parties) = match &self.stage {
            None => (RepairStep::Failed, Vec::new()),
            Some(ReceiverStage::Done(_)) => (RepairStep::Done, Vec::new()),
            Some(ReceiverStage::Waiting(_)) => {
                let keys = missing(&self.params.helpers, |p| self.helper_keys.contains_key(p));
                if keys.is_empty() {
                    let sigmas = missing(&self.params.helpers, |p| self.sigmas.contains_key(p));
                    (RepairStep::Sigmas, sigmas)
                } else {
                    (RepairStep::HelperKeys, keys)
                }
            }
        };
        RepairWaiting { step, parties }
    }

    /// Our repaired share, checked against the public key package.
    ///
    /// Errors: before [`RepairReceiver::advance`] repaired it
    /// ([`ProtocolError::UnexpectedMessage`]).
    pub fn into_key_package(mut self) -> Result<KeyPackage<C>> {
        match self.stage.take() {
            Some(ReceiverStage::Done(key_package)) => Ok(key_package),
            _ => Err(unexpected(
                "a finished repair",
                format!("a repair still waiting for {}", self.waiting()),
            )),
        }
    }
}

// Debug prints who and where, never a secret.

redacted_debug! {
    RepairHelper<C: Ciphersuite> |s| {
        params: s.params,
        me: s.me,
        key_package: s.key_package.as_ref().map(|_| REDACTED),
        waiting: s.waiting(),
    } hides []
}

redacted_debug! {
    RepairReceiver<C: Ciphersuite> |s| {
        params: s.params,
        waiting: s.waiting(),
    } hides [secrets]
}

#[cfg(test)]
mod tests;
