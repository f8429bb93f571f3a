//! The signing engine: one key holder's side of a threshold signature over one or more messages
//! (one message, or one sighash per input of a PSBT), as a value that absorbs messages in any
//! order and says what it waits for: the signing counterpart of [`crate::keygen::exchange`].
//!
//! ```text
//! start ──► our Commitments ─┐                       ┌─► our Shares ──► (every share) signatures
//!                            ├─ every signer's ──► packages (we coordinate)
//! absorb Commitments ────────┘   or absorb Packages (another coordinates, we only sign)
//! ```
//!
//! It is built on [`crate::sign`], which keeps the FROST rules (RFC 9591 §5): a nonce signs at
//! most once (each [`SignerSession`] is consumed by its one signature, even when the package is
//! refused), a session signs only the message and signer set it committed to with its own
//! commitment unchanged, and a bad share names its signer. The engine adds what a ceremony of
//! several messages and several parties needs: exactly one set of commitments and one set of
//! shares per signer, one per message, a signer that sends two different sets named as the
//! culprit, and packages that either it builds itself from everyone's commitments or takes from
//! a coordinator, never both.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use frost_core::keys::{KeyPackage, PublicKeyPackage};
use frost_core::round1::SigningCommitments;
use frost_core::{Ciphersuite, SigningPackage};
use rand_core::{CryptoRng, RngCore};

use crate::dkg::common;
use crate::error::{ProtocolError, Result};
use crate::id::PartyId;
use crate::keygen::exchange::insert_once;
use crate::sign::{self, Precommitment, SignerSession};

/// Most messages one ceremony signs (a PSBT's inputs): bounds the work a request can cause.
pub const MAX_MESSAGES: usize = 1024;

/// What the parties of a signature send each other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignMessage {
    /// A signer's serialized `SigningCommitments`, one per message, in message order.
    Commitments {
        /// The signer.
        party: PartyId,
        /// One per message.
        commitments: Vec<Vec<u8>>,
    },
    /// The coordinator's serialized `SigningPackage`s, one per message: what a signer that does
    /// not coordinate receives instead of the other signers' commitments.
    Packages(Vec<Vec<u8>>),
    /// A signer's serialized `SignatureShare`s, one per message.
    Shares {
        /// The signer.
        party: PartyId,
        /// One per message.
        shares: Vec<Vec<u8>>,
    },
}

/// The one value (a commitment, or a share) the first message of `out` carries: what one local
/// party sends for a signature of one message. `None` for packages or another count.
pub fn single_value(out: Vec<SignMessage>) -> Option<Vec<u8>> {
    match out.into_iter().next()? {
        SignMessage::Commitments { commitments: v, .. } | SignMessage::Shares { shares: v, .. }
            if v.len() == 1 =>
        {
            v.into_iter().next()
        }
        _ => None,
    }
}

/// Where a signature stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignStep {
    /// Waiting for commitments (or the coordinator's packages).
    Commitments,
    /// Packages known: waiting for signature shares.
    Shares,
    /// Every share is in.
    Done,
}

/// What the engine waits for: the step, and the parties it waits for there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignWaiting {
    /// The step.
    pub step: SignStep,
    /// Who has not sent what the step needs.
    pub parties: Vec<PartyId>,
}

/// Between 1 and [`MAX_MESSAGES`] messages.
fn check_count(messages: &[Vec<u8>]) -> Result<()> {
    if messages.is_empty() || messages.len() > MAX_MESSAGES {
        return Err(ProtocolError::Params {
            reason: format!(
                "{} messages to sign: between 1 and {MAX_MESSAGES}",
                messages.len()
            ),
        });
    }
    Ok(())
}

/// One local party's key packages and, until it signs, its sessions: one of each per message (a
/// PSBT's inputs may spend different children of the wallet's key, `crate::hd`).
type Local<C> = (Vec<KeyPackage<C>>, Option<Vec<SignerSession<C>>>);

/// One local party before its sessions are bound: its key packages and precommitments, one of
/// each per message.
type Drawn<C> = (PartyId, Vec<KeyPackage<C>>, Vec<Precommitment<C>>);

/// One party's sessions and its serialized commitments, one of each per message.
type Committed<C> = (Vec<SignerSession<C>>, Vec<Vec<u8>>);

/// One key holder's side of a signature (see the module documentation).
pub struct Signing<C: Ciphersuite> {
    messages: Vec<Vec<u8>>,
    /// Sorted.
    signers: Vec<PartyId>,
    /// Our parties: their key packages and, until they sign, their sessions (one per message).
    local: BTreeMap<PartyId, Local<C>>,
    commitments: BTreeMap<PartyId, Vec<Vec<u8>>>,
    /// `commitments` decoded (and checked canonical), each set once, when it arrived: the
    /// packages are built from these.
    decoded_commitments: BTreeMap<PartyId, Vec<SigningCommitments<C>>>,
    /// The packages serialized: a coordinator's as received, or ours once asked for
    /// ([`Signing::packages`]; a signature between two parties never needs them).
    packages: OnceLock<Vec<Vec<u8>>>,
    /// The packages decoded, once: built here, or decoded from a coordinator's at first use.
    decoded: Option<Vec<SigningPackage<C>>>,
    shares: BTreeMap<PartyId, Vec<Vec<u8>>>,
    /// Why signing failed: final (a local party's sessions are gone), said on every later call.
    failed: Option<String>,
}

impl<C: Ciphersuite> Signing<C> {
    /// Opens a signature of `messages` by `signers`, for our parties `locals`: draws their nonces
    /// and returns their commitments to send.
    ///
    /// Errors ([`ProtocolError::Params`]): no message or more than [`MAX_MESSAGES`]; a local
    /// party that is not a signer, does not hold its key package, or a signer set below the
    /// threshold ([`SignerSession::commit`]).
    pub fn start(
        locals: Vec<(PartyId, KeyPackage<C>)>,
        signers: &[PartyId],
        messages: Vec<Vec<u8>>,
        rng: &mut (impl CryptoRng + RngCore),
    ) -> Result<(Self, Vec<SignMessage>)> {
        check_count(&messages)?;
        let n = messages.len();
        let locals = locals
            .into_iter()
            .map(|(party, key_package)| (party, vec![key_package; n]))
            .collect();
        Self::start_each(locals, signers, messages, rng)
    }

    /// As [`Signing::start`], each local party with one key package per message (in message
    /// order): a PSBT whose inputs spend different children of the wallet's key signs each input
    /// with that child's key package (`crate::hd::key_packages_for`).
    ///
    /// Errors: as [`Signing::start`]; a key package count that is not the message count
    /// ([`ProtocolError::Params`]).
    pub fn start_each(
        locals: Vec<(PartyId, Vec<KeyPackage<C>>)>,
        signers: &[PartyId],
        messages: Vec<Vec<u8>>,
        rng: &mut (impl CryptoRng + RngCore),
    ) -> Result<(Self, Vec<SignMessage>)> {
        check_count(&messages)?;
        let locals = locals
            .into_iter()
            .map(|(party, key_packages)| {
                one_per_message(key_packages.len(), messages.len(), || {
                    format!("key packages of party {party}")
                })?;
                let drawn = key_packages
                    .iter()
                    .map(|key_package| Precommitment::new(key_package, party, rng).map(|(p, _)| p))
                    .collect::<Result<Vec<_>>>()?;
                Ok((party, key_packages, drawn))
            })
            .collect::<Result<Vec<_>>>()?;
        Self::open(locals, signers, messages)
    }

    /// As [`Signing::start`], with nonces drawn before the messages were known: each local
    /// party's `precommitments` (one per message, in message order) are bound to the messages
    /// and the signer set now, and used once like any session.
    ///
    /// Errors: as [`Signing::start`]; a precommitment count that is not the message count, or
    /// one of another party ([`ProtocolError::Params`]).
    pub fn start_precommitted(
        locals: Vec<(PartyId, KeyPackage<C>, Vec<Precommitment<C>>)>,
        signers: &[PartyId],
        messages: Vec<Vec<u8>>,
    ) -> Result<(Self, Vec<SignMessage>)> {
        check_count(&messages)?;
        let n = messages.len();
        let locals = locals
            .into_iter()
            .map(|(party, key_package, drawn)| (party, vec![key_package; n], drawn))
            .collect();
        Self::open(locals, signers, messages)
    }

    /// As [`Signing::start_precommitted`], each local party with one key package per message
    /// (in message order), as [`Signing::start_each`] has: a DAO member's nonces drawn with its
    /// approval, bound once the provider names the signer set (`crate::dao::sign`).
    ///
    /// Errors: as [`Signing::start_precommitted`]; a key package count that is not the message
    /// count ([`ProtocolError::Params`]).
    pub fn start_precommitted_each(
        locals: Vec<Drawn<C>>,
        signers: &[PartyId],
        messages: Vec<Vec<u8>>,
    ) -> Result<(Self, Vec<SignMessage>)> {
        check_count(&messages)?;
        for (party, key_packages, _) in &locals {
            one_per_message(key_packages.len(), messages.len(), || {
                format!("key packages of party {party}")
            })?;
        }
        Self::open(locals, signers, messages)
    }

    fn open(
        locals: Vec<Drawn<C>>,
        signers: &[PartyId],
        messages: Vec<Vec<u8>>,
    ) -> Result<(Self, Vec<SignMessage>)> {
        let signers = common::normalize_parties(signers, "signer set")?;
        let mut signing = Self {
            messages,
            signers,
            local: BTreeMap::new(),
            commitments: BTreeMap::new(),
            decoded_commitments: BTreeMap::new(),
            packages: OnceLock::new(),
            decoded: None,
            shares: BTreeMap::new(),
            failed: None,
        };
        let mut out = Vec::with_capacity(locals.len());
        for (party, key_packages, precommitments) in locals {
            let (sessions, commitments) = signing.bind(party, precommitments)?;
            let decoded = sessions.iter().map(|s| *s.signing_commitments()).collect();
            signing.decoded_commitments.insert(party, decoded);
            signing.local.insert(party, (key_packages, Some(sessions)));
            signing.commitments.insert(party, commitments.clone());
            out.push(SignMessage::Commitments { party, commitments });
        }
        Ok((signing, out))
    }

    fn bind(&self, party: PartyId, precommitments: Vec<Precommitment<C>>) -> Result<Committed<C>> {
        one_per_message(precommitments.len(), self.messages.len(), || {
            format!("precommitments of party {party}")
        })?;
        let mut sessions = Vec::with_capacity(self.messages.len());
        let mut commitments = Vec::with_capacity(self.messages.len());
        for (precommitment, message) in precommitments.into_iter().zip(&self.messages) {
            if precommitment.me() != party {
                return Err(ProtocolError::Params {
                    reason: format!(
                        "a precommitment of party {} given as party {party}'s",
                        precommitment.me()
                    ),
                });
            }
            commitments.push(precommitment.commitments()?);
            sessions.push(precommitment.bind(message, &self.signers)?);
        }
        Ok((sessions, commitments))
    }

    /// Takes one message; returns whether it was new (a repeat of the same one is not).
    ///
    /// Errors: a sender that is not a remote signer, or the wrong count
    /// ([`ProtocolError::UnexpectedMessage`]); a signer that sent two different sets, or a set
    /// with a commitment that does not decode canonically (nothing is kept of it)
    /// ([`ProtocolError::Culprit`]); packages from two coordinators that differ
    /// ([`ProtocolError::Disagreement`]).
    pub fn absorb(&mut self, message: &SignMessage) -> Result<bool> {
        match message {
            SignMessage::Commitments { party, commitments } => {
                self.check_sender(*party, commitments.len(), "commitments")?;
                if self.commitments.contains_key(party) {
                    // The same set again is no news; another is equivocation.
                    return insert_once(
                        &mut self.commitments,
                        *party,
                        commitments,
                        *party,
                        "commitments",
                    );
                }
                // Each commitment decodes before anything is kept: a bad set changes nothing.
                let decoded = decode_set(*party, commitments)?;
                self.decoded_commitments.insert(*party, decoded);
                self.commitments.insert(*party, commitments.clone());
                Ok(true)
            }
            SignMessage::Packages(packages) => self.take_packages(packages),
            SignMessage::Shares { party, shares } => {
                self.check_sender(*party, shares.len(), "signature shares")?;
                insert_once(&mut self.shares, *party, shares, *party, "signature shares")
            }
        }
    }

    fn check_sender(&self, party: PartyId, count: usize, what: &'static str) -> Result<()> {
        let unexpected = |actual: String| ProtocolError::UnexpectedMessage {
            expected: "one set from each other signer, one per message",
            actual,
        };
        if !self.signers.contains(&party) || self.local.contains_key(&party) {
            return Err(unexpected(format!(
                "{what} from party {party}, who is not another signer"
            )));
        }
        if count != self.messages.len() {
            return Err(unexpected(format!(
                "{count} {what} from party {party} for {} messages",
                self.messages.len()
            )));
        }
        Ok(())
    }

    fn take_packages(&mut self, packages: &[Vec<u8>]) -> Result<bool> {
        if packages.len() != self.messages.len() {
            return Err(ProtocolError::UnexpectedMessage {
                expected: "one signing package per message",
                actual: format!(
                    "{} packages for {} messages",
                    packages.len(),
                    self.messages.len()
                ),
            });
        }
        let disagree = || ProtocolError::Disagreement {
            reason: "two different sets of signing packages for one signature".into(),
        };
        match self.packages() {
            Some(known) if known == packages => Ok(false),
            Some(_) => Err(disagree()),
            // Packages built here that could not be serialized differ from any received.
            None if self.decoded.is_some() => Err(disagree()),
            None => {
                self.packages.get_or_init(|| packages.to_vec());
                Ok(true)
            }
        }
    }

    /// Moves on as far as what was absorbed allows: builds the packages once every signer's
    /// commitments are in (when no coordinator sent them), then signs them with our parties'
    /// sessions (each used once). Returns our shares to send.
    ///
    /// Errors: a coordinator's package that does not decode ([`ProtocolError::Encoding`]) or that
    /// differs from what our sessions committed to ([`ProtocolError::SessionMismatch`]): the
    /// sessions are gone either way. (Commitments were decoded when they were absorbed.)
    pub fn advance(&mut self) -> Result<Vec<SignMessage>> {
        if let Some(reason) = &self.failed {
            return Err(ProtocolError::SessionMismatch {
                reason: format!("this signature already failed: {reason}"),
            });
        }
        let out = self.advance_once();
        if let Err(e) = &out {
            self.failed = Some(e.to_string());
        }
        out
    }

    fn advance_once(&mut self) -> Result<Vec<SignMessage>> {
        if !self.built()
            && self
                .signers
                .iter()
                .all(|p| self.decoded_commitments.contains_key(p))
        {
            self.decoded = Some(self.build_packages()?);
        }
        if self.decoded.is_none() {
            let Some(packages) = self.packages.get() else {
                return Ok(Vec::new());
            };
            self.decoded = Some(decode_packages(packages)?);
        }
        let Some(packages) = &self.decoded else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for (party, (key_packages, sessions)) in &mut self.local {
            let Some(sessions) = sessions.take() else {
                continue;
            };
            let shares = sessions
                .into_iter()
                .zip(packages)
                .zip(key_packages.iter())
                .map(|((session, package), key)| session.sign_package(key, package))
                .collect::<Result<Vec<_>>>()?;
            self.shares.insert(*party, shares.clone());
            out.push(SignMessage::Shares {
                party: *party,
                shares,
            });
        }
        Ok(out)
    }

    fn build_packages(&self) -> Result<Vec<SigningPackage<C>>> {
        self.messages
            .iter()
            .enumerate()
            .map(|(i, message)| {
                let commitments = self
                    .decoded_commitments
                    .iter()
                    .filter_map(|(p, set)| set.get(i).map(|c| (*p, *c)))
                    .collect();
                sign::package_of::<C>(message, &commitments)
            })
            .collect()
    }

    /// Whether the packages are known: built here, or received from a coordinator.
    fn built(&self) -> bool {
        self.decoded.is_some() || self.packages.get().is_some()
    }

    /// What the engine waits for.
    pub fn waiting(&self) -> SignWaiting {
        let missing = |have: &BTreeMap<PartyId, Vec<Vec<u8>>>| -> Vec<PartyId> {
            self.signers
                .iter()
                .filter(|p| !have.contains_key(p))
                .copied()
                .collect()
        };
        if !self.built() {
            return SignWaiting {
                step: SignStep::Commitments,
                parties: missing(&self.commitments),
            };
        }
        let parties = missing(&self.shares);
        let step = if parties.is_empty() {
            SignStep::Done
        } else {
            SignStep::Shares
        };
        SignWaiting { step, parties }
    }

    /// Replaces `party`'s commitments before any package is built: a signer that restarted lost
    /// the nonces of its first set, and a package must not carry them. Whoever decides that this
    /// is a replacement and not equivocation (a coordinator that bounds them) calls this instead
    /// of [`Signing::absorb`].
    ///
    /// Errors: after the packages ([`ProtocolError::UnexpectedMessage`]), or what `absorb`
    /// refuses of the sender, the count and the encoding (the old set stays).
    pub fn replace_commitments(&mut self, party: PartyId, commitments: &[Vec<u8>]) -> Result<()> {
        self.check_sender(party, commitments.len(), "commitments")?;
        if self.built() {
            return Err(ProtocolError::UnexpectedMessage {
                expected: "replaced commitments before the signing packages",
                actual: format!("commitments of party {party} replaced after the packages"),
            });
        }
        let decoded = decode_set(party, commitments)?;
        self.decoded_commitments.insert(party, decoded);
        self.commitments.insert(party, commitments.to_vec());
        Ok(())
    }

    /// The signature shares `party` sent (or one of our parties made), one per message.
    pub fn shares(&self, party: PartyId) -> Option<&[Vec<u8>]> {
        self.shares.get(&party).map(Vec::as_slice)
    }

    /// The commitments `party` sent (or, for one of ours, that we sent), one per message.
    pub fn commitments(&self, party: PartyId) -> Option<&[Vec<u8>]> {
        self.commitments.get(&party).map(Vec::as_slice)
    }

    /// The signing packages, once built or received (serialized at the first call for packages
    /// built here). `None` also for built packages frost could not serialize, which cannot
    /// happen for commitments that decoded (they are never the identity).
    pub fn packages(&self) -> Option<&[Vec<u8>]> {
        if let Some(packages) = self.packages.get() {
            return Some(packages);
        }
        let encoded = self
            .decoded
            .as_ref()?
            .iter()
            .map(sign::encode_package)
            .collect::<Result<Vec<_>>>()
            .ok()?;
        Some(self.packages.get_or_init(|| encoded))
    }

    /// The signatures, one per message, once every share is in: aggregated and checked against
    /// `public_key_package` ([`sign::aggregate`]; a bad share names its signer).
    pub fn signatures(&self, public_key_package: &PublicKeyPackage<C>) -> Result<Vec<Vec<u8>>> {
        self.signatures_by(|_| Some(public_key_package))
    }

    /// [`Signing::signatures`], message `i`'s checked against `public_key_packages[i]` (a
    /// signature opened with [`Signing::start_each`]).
    ///
    /// Errors: as [`Signing::signatures`]; a count that is not the message count
    /// ([`ProtocolError::Params`]).
    pub fn signatures_each(
        &self,
        public_key_packages: &[PublicKeyPackage<C>],
    ) -> Result<Vec<Vec<u8>>> {
        one_per_message(public_key_packages.len(), self.messages.len(), || {
            "public key packages".into()
        })?;
        self.signatures_by(|i| public_key_packages.get(i))
    }

    fn signatures_by<'a>(
        &self,
        public_key_package: impl Fn(usize) -> Option<&'a PublicKeyPackage<C>>,
    ) -> Result<Vec<Vec<u8>>>
    where
        C: 'a,
    {
        let waiting = self.waiting();
        if waiting.step != SignStep::Done {
            return Err(not_done(&waiting));
        }
        let decoded = match (&self.decoded, self.packages.get()) {
            (Some(decoded), _) => std::borrow::Cow::Borrowed(decoded),
            (None, Some(packages)) => std::borrow::Cow::Owned(decode_packages(packages)?),
            (None, None) => return Err(not_done(&waiting)),
        };
        decoded
            .iter()
            .enumerate()
            .map(|(i, package)| {
                let public_key_package =
                    public_key_package(i).ok_or_else(|| ProtocolError::Params {
                        reason: format!("no public key package for message {i}"),
                    })?;
                sign::aggregate_package::<C>(package, &nth(&self.shares, i), public_key_package)
            })
            .collect()
    }
}

/// One key package per message.
/// `count` things (named by `what`) for `messages` messages: one per message, or a
/// [`ProtocolError::Params`] naming both counts.
pub(crate) fn one_per_message(
    count: usize,
    messages: usize,
    what: impl FnOnce() -> String,
) -> Result<()> {
    if count != messages {
        return Err(ProtocolError::Params {
            reason: format!("{count} {} for {messages} messages", what()),
        });
    }
    Ok(())
}

/// `party`'s commitments, one per message, decoded and checked canonical
/// ([`sign::decode_commitments`]: a bad one names `party`).
pub(crate) fn decode_set<C: Ciphersuite>(
    party: PartyId,
    commitments: &[Vec<u8>],
) -> Result<Vec<SigningCommitments<C>>> {
    commitments
        .iter()
        .map(|c| sign::decode_commitments(party, c))
        .collect()
}

fn decode_packages<C: Ciphersuite>(packages: &[Vec<u8>]) -> Result<Vec<SigningPackage<C>>> {
    packages.iter().map(|p| sign::decode_package(p)).collect()
}

fn not_done(waiting: &SignWaiting) -> ProtocolError {
    ProtocolError::UnexpectedMessage {
        expected: "every signature share",
        actual: format!(
            "still waiting ({:?}) for {:?}",
            waiting.step, waiting.parties
        ),
    }
}

/// Every party's value for message `i` (commitments or shares are one per message).
fn nth(by_party: &BTreeMap<PartyId, Vec<Vec<u8>>>, i: usize) -> BTreeMap<PartyId, Vec<u8>> {
    by_party
        .iter()
        .filter_map(|(p, values)| values.get(i).map(|v| (*p, v.clone())))
        .collect()
}

impl<C: Ciphersuite> std::fmt::Debug for Signing<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signing")
            .field("messages", &self.messages.len())
            .field("signers", &self.signers)
            .field("local", &self.local.keys().collect::<Vec<_>>())
            .field("waiting", &self.waiting())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
