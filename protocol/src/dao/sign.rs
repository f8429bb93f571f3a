//! Signing a PSBT with a DAO wallet over the mailbox.
//!
//! ```text
//! requester ── SignRequest ─────────────────────────────► all (topic = request hash)
//! provider  ── Evaluation (sighashes, value, rule, k) ──► all     (or Refused)
//! members   ── Commitments (round 0, one per input)
//!              + Approval (request, own sighashes) ────► provider  (the requester's included)
//! provider  ── SignerSet (round r: first k approvers + provider's parties) ► all
//!              + SigningPackages (round r, one per input), when every chosen member committed
//! chosen    ── Shares (round r, one per input) ─────────► provider
//! provider  ── Signed (txid, tx) ───────────────────────► all
//! ```
//!
//! # One round once the approvals are in
//!
//! A member draws its nonces for round 0 when it approves and posts their commitments just before
//! the approval ([`MemberSigner::approve_committed`]; RFC 9591 §5.1 lets commitments be made before
//! the signer set and the message are fixed, and binding factors cover the message and every
//! signer's commitment, §4.4). When the approval that completes the rule arrives, the provider
//! names the signer set and, having every chosen member's commitments already, builds and posts
//! the signing packages with it: the chosen members answer their shares and the provider
//! aggregates. Members not chosen drop their nonces unused. A chosen member whose round-0
//! commitments the provider does not hold yet (delivered later, or a member that approved
//! without them) commits as before, after the signer set; a member whose process stopped after
//! approving lost its nonces, and the rounds below take over. (A mailbox that delivers a
//! restarted member's two round-0 sets in the reverse of their posting order makes the old set
//! win: the round then waits until that member runs again, whose new commitments start the next
//! round. Only a mailbox that reorders one sender's envelopes can cause it, and such a mailbox
//! can stall any ceremony by withholding them.)
//!
//! The provider is the coordinator because it is the one party every signature needs: it counts
//! approvals against the rule it evaluated itself from the PSBT, and only then commits. A member
//! signs only the sighashes it computed itself from the PSBT it was shown, only with the signer
//! set the provider announced, once ([`SignerSession`]); an approval binds the request hash (so
//! the exact PSBT) and the sighashes, so it cannot be used for another PSBT. Nonces live in these
//! values, in memory only.
//!
//! # Rounds: a chosen member that stops costs nothing
//!
//! A member's process may stop after it committed (its nonces die with it; they are never
//! written down, so a restored file can never replay one). When it runs again it reads the topic,
//! sees the signer set, and commits with fresh nonces:
//!
//! * if the provider has not yet built the signing packages of the round, the new commitments
//!   *replace* the old ones, which were never in any package (an old set, once replaced, is never
//!   taken back, whatever order the mailbox delivers them in);
//! * if the packages went out with the old commitments and the member's shares are not in, the
//!   round cannot finish: the provider starts round `r + 1` with a new [`DaoMessage::SignerSet`],
//!   drawing **fresh** nonces for its own parties, and every chosen member commits again. The
//!   provider's nonces of round `r` were consumed by the one package set of round `r`;
//! * if the member's shares of the round are already in, the new commitments are stale and
//!   ignored.
//!
//! So every provider nonce signs at most one signing package, and a member's nonce likewise (a
//! member signs a package only if it carries the commitment of the nonces it holds, and consumes
//! them doing so). A member "restarting" to obtain a second package gains nothing: the provider's
//! signature shares never leave the enclave (only the aggregate does, over the sighash every
//! approver approved), the request is signed and counted once, and at most [`MAX_ROUNDS`] rounds
//! run before the request is refused.

use std::collections::{BTreeMap, BTreeSet};

use frost_core::Ciphersuite;
use frost_core::keys::{KeyPackage, PublicKeyPackage};
use rand_core::{CryptoRng, RngCore};
use serde_bytes::ByteBuf;

use super::quorum::Quorum;
use super::{Approval, DaoMessage, Evaluation, Layout, hash32, sighashes_digest};
use crate::error::{ProtocolError, Result};
use crate::id::PartyId;
use crate::sign::Precommitment;
use crate::signing::{SignMessage, SignStep, Signing, decode_set};

/// Most signing rounds of one request (rounds `0..MAX_ROUNDS`).
pub const MAX_ROUNDS: u32 = 8;

/// Most commitment sets one member may replace within a round.
const MAX_REPLACEMENTS: usize = 16;

fn bufs(v: Vec<Vec<u8>>) -> Vec<ByteBuf> {
    v.into_iter().map(ByteBuf::from).collect()
}

fn same_request(ours: &[u8; 32], theirs: &[u8]) -> bool {
    theirs == ours.as_slice()
}

/// A member's message of a signing round (its commitments or its shares), for `request`: the
/// member's party and the round. The provider's [`Coordinator`] and every member's [`Tally`] read
/// both the same way.
fn round_message(request: &[u8; 32], message: &DaoMessage) -> Option<(PartyId, u32)> {
    match message {
        DaoMessage::Commitments {
            request: theirs,
            party,
            round,
            ..
        }
        | DaoMessage::Shares {
            request: theirs,
            party,
            round,
            ..
        } if same_request(request, theirs) => Some((*party, *round)),
        _ => None,
    }
}

/// Whether the serialized signing `package` carries `commitment` (serialized) for `party`.
/// Anything that does not decode carries nothing.
fn carries<C: Ciphersuite>(package: &[u8], party: PartyId, commitment: &[u8]) -> bool {
    crate::sign::commitment_in::<C>(package, party).is_some_and(|c| c == commitment)
}

/// Where a member's signing stands.
enum Stage<C: Ciphersuite> {
    /// Approved; waiting for the signer set. With the nonces drawn at approval (one per input,
    /// in memory only), whose commitments went out with the approval for round 0.
    Approved(Option<Vec<Precommitment<C>>>),
    /// Chosen and committed; waiting for the signing packages: our side of the signature on
    /// the signing engine, one message per input (its sessions hold the nonces; a package must
    /// carry exactly the commitments it sent).
    Committed(Box<Signing<C>>),
    /// Shares sent; waiting for the transaction.
    Shared,
    /// Not chosen (enough others approved first); waiting for the transaction.
    Bystander,
    /// Signed.
    Done {
        /// Its txid.
        txid: String,
        /// The transaction.
        tx: Vec<u8>,
    },
}

/// A member's side of one signing request.
pub struct MemberSigner<C: Ciphersuite> {
    request: [u8; 32],
    party: PartyId,
    provider_key: Vec<u8>,
    sighashes: Vec<[u8; 32]>,
    expected_txid: String,
    /// The signing round our stage belongs to.
    round: u32,
    /// Signer sets of rounds below this are ignored (a newer one was seen).
    floor: u32,
    stage: Stage<C>,
}

impl<C: Ciphersuite> std::fmt::Debug for MemberSigner<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemberSigner")
            .field("request", &hex::encode(self.request))
            .field("party", &self.party)
            .field("round", &self.round)
            .field("stage", &self.stage_name())
            .finish_non_exhaustive()
    }
}

impl<C: Ciphersuite> MemberSigner<C> {
    /// Approves `request` as `party`, binding the sighashes we computed ourselves from the PSBT
    /// and the txid we expect. Returns the signer and the approval to post.
    pub fn approve(
        request: [u8; 32],
        party: PartyId,
        provider_key: Vec<u8>,
        sighashes: Vec<[u8; 32]>,
        expected_txid: String,
    ) -> (Self, DaoMessage) {
        let approval = DaoMessage::Approval(Approval {
            request: ByteBuf::from(request.to_vec()),
            party,
            sighashes: ByteBuf::from(sighashes_digest(&request, &sighashes).to_vec()),
        });
        (
            Self {
                request,
                party,
                provider_key,
                sighashes,
                expected_txid,
                round: 0,
                floor: 0,
                stage: Stage::Approved(None),
            },
            approval,
        )
    }

    /// As [`MemberSigner::approve`], with this member's nonces for signing round 0 drawn now
    /// (`key_packages`: one per input, in input order, as [`MemberSigner::handle`] takes them).
    /// Returns the signer and what to post, in order: our round-0 commitments, then the approval
    /// (whoever delivers the approval that completes the rule to the provider has delivered our
    /// commitments before it, so the packages can go out with the signer set). Once
    /// the approvals are in, the provider can send the signing packages with the signer set
    /// (one round: packages out, shares back; module documentation). The nonces live in this
    /// value only; not chosen, or chosen for a later round, we drop them unused.
    ///
    /// Errors: a key package count that is not the input count, or a key package `party` does
    /// not hold ([`ProtocolError::Params`]).
    pub fn approve_committed(
        request: [u8; 32],
        party: PartyId,
        provider_key: Vec<u8>,
        sighashes: Vec<[u8; 32]>,
        expected_txid: String,
        key_packages: &[KeyPackage<C>],
        rng: &mut (impl CryptoRng + RngCore),
    ) -> Result<(Self, Vec<DaoMessage>)> {
        crate::signing::one_per_message(key_packages.len(), sighashes.len(), || {
            "key packages".into()
        })?;
        let (nonces, commitments): (Vec<_>, Vec<_>) = key_packages
            .iter()
            .map(|key_package| Precommitment::new(key_package, party, rng))
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .unzip();
        let (mut signer, approval) =
            Self::approve(request, party, provider_key, sighashes, expected_txid);
        signer.stage = Stage::Approved(Some(nonces));
        let early = DaoMessage::Commitments {
            request: ByteBuf::from(request.to_vec()),
            party,
            commitments: bufs(commitments),
            round: 0,
        };
        Ok((signer, vec![early, approval]))
    }

    fn stage_name(&self) -> &'static str {
        match self.stage {
            Stage::Approved(_) => "waiting for the other approvals",
            Stage::Committed(_) => "waiting for the signing packages",
            Stage::Shared => "waiting for the signed transaction",
            Stage::Bystander => "not in the signer set; waiting for the signed transaction",
            Stage::Done { .. } => "signed",
        }
    }

    /// What we wait for, for progress messages.
    pub fn waiting_for(&self) -> &'static str {
        self.stage_name()
    }

    /// The signed transaction `(txid, tx)` once the provider published it.
    pub fn outcome(&self) -> Option<(&str, &[u8])> {
        match &self.stage {
            Stage::Done { txid, tx } => Some((txid, tx)),
            _ => None,
        }
    }

    /// Whether we were chosen to sign.
    pub fn chosen(&self) -> bool {
        matches!(self.stage, Stage::Committed(_) | Stage::Shared)
    }

    /// The signing round we are in.
    pub fn round(&self) -> u32 {
        self.round
    }

    /// Looks ahead over a batch of verified messages before [`MemberSigner::handle`] takes them
    /// one by one: signer sets older than the newest the provider announced in it are then
    /// skipped, so a member catching up on a topic commits once, for the current round, instead
    /// of once per round it missed.
    pub fn look_ahead<'a>(&mut self, batch: impl IntoIterator<Item = (&'a [u8], &'a DaoMessage)>) {
        for (sender, message) in batch {
            if sender != self.provider_key.as_slice() {
                continue;
            }
            if let DaoMessage::SignerSet { request, round, .. } = message
                && same_request(&self.request, request)
            {
                self.floor = self.floor.max(*round);
            }
        }
    }

    /// Takes one verified message from `sender`; returns what to post. Messages of the provider
    /// are accepted only from the provider's key; other messages are ignored.
    ///
    /// Errors: the provider refused ([`ProtocolError::Refused`]); a signing package that does not
    /// match what we approved ([`ProtocolError::SessionMismatch`]); a published transaction that
    /// is not the one we approved ([`ProtocolError::Disagreement`]).
    pub fn handle(
        &mut self,
        sender: &[u8],
        message: &DaoMessage,
        key_packages: &[KeyPackage<C>],
        rng: &mut (impl CryptoRng + RngCore),
    ) -> Result<Vec<DaoMessage>> {
        if sender != self.provider_key.as_slice() {
            return Ok(Vec::new());
        }
        match message {
            DaoMessage::Refused { request, reason } if same_request(&self.request, request) => {
                Err(ProtocolError::Refused {
                    reason: reason.clone(),
                })
            }
            DaoMessage::SignerSet {
                request,
                parties,
                round,
            } if same_request(&self.request, request) => {
                self.signer_set(parties, *round, key_packages, rng)
            }
            DaoMessage::SigningPackages {
                request,
                packages,
                round,
            } if same_request(&self.request, request) && *round == self.round => {
                self.packages(packages)
            }
            DaoMessage::Signed { request, txid, tx } if same_request(&self.request, request) => {
                if *txid != self.expected_txid {
                    return Err(ProtocolError::Disagreement {
                        reason: format!(
                            "the provider published transaction {txid}, we approved {}",
                            self.expected_txid
                        ),
                    });
                }
                self.stage = Stage::Done {
                    txid: txid.clone(),
                    tx: tx.to_vec(),
                };
                Ok(Vec::new())
            }
            _ => Ok(Vec::new()),
        }
    }

    fn signer_set(
        &mut self,
        parties: &[PartyId],
        round: u32,
        key_packages: &[KeyPackage<C>],
        rng: &mut (impl CryptoRng + RngCore),
    ) -> Result<Vec<DaoMessage>> {
        let first_of_round = round > self.round || matches!(self.stage, Stage::Approved(_));
        if matches!(self.stage, Stage::Done { .. })
            || round < self.round.max(self.floor)
            || !first_of_round
        {
            return Ok(Vec::new());
        }
        // A new round (or our first): whatever we held for an older round is dropped; its nonces
        // were used at most once already and are never used again. Nonces drawn at approval
        // serve round 0 only (their commitments went out as round 0's).
        let early = match &mut self.stage {
            Stage::Approved(early) if round == 0 => early.take(),
            _ => None,
        };
        self.round = round;
        if !parties.contains(&self.party) {
            self.stage = Stage::Bystander;
            return Ok(Vec::new());
        }
        let messages = self.sighashes.iter().map(|s| s.to_vec()).collect();
        if let Some(early) = early {
            // Our commitments are in the topic already: the provider builds the packages with
            // them as soon as it holds them (with the signer set, or when they reach it).
            let locals = vec![(self.party, key_packages.to_vec(), early)];
            let (signing, _) = Signing::start_precommitted_each(locals, parties, messages)?;
            self.stage = Stage::Committed(Box::new(signing));
            return Ok(Vec::new());
        }
        let locals = vec![(self.party, key_packages.to_vec())];
        let (signing, _) = Signing::start_each(locals, parties, messages, rng)?;
        let commitments = signing
            .commitments(self.party)
            .map(<[Vec<u8>]>::to_vec)
            .unwrap_or_default();
        self.stage = Stage::Committed(Box::new(signing));
        Ok(vec![DaoMessage::Commitments {
            request: ByteBuf::from(self.request.to_vec()),
            party: self.party,
            commitments: bufs(commitments),
            round,
        }])
    }

    fn packages(&mut self, packages: &[ByteBuf]) -> Result<Vec<DaoMessage>> {
        let Stage::Committed(signing) = &self.stage else {
            return Ok(Vec::new());
        };
        let commitments = signing.commitments(self.party).unwrap_or_default();
        if packages.len() != commitments.len() {
            return Err(ProtocolError::SessionMismatch {
                reason: format!(
                    "{} signing packages for {} inputs",
                    packages.len(),
                    commitments.len()
                ),
            });
        }
        // Packages built before our process restarted carry the commitments of nonces we no
        // longer have: not ours to sign. Our new commitments make the provider replace the old
        // ones or start a new round; the sessions are kept for that.
        if !packages
            .iter()
            .zip(commitments)
            .all(|(p, c)| carries::<C>(p, self.party, c))
        {
            return Ok(Vec::new());
        }
        let Stage::Committed(mut signing) = std::mem::replace(&mut self.stage, Stage::Shared)
        else {
            return Ok(Vec::new());
        };
        // Each session checks its message (our own sighash), the signer set and our commitment,
        // and is used up whatever the outcome.
        signing.absorb(&SignMessage::Packages(
            packages.iter().map(|p| p.to_vec()).collect(),
        ))?;
        let shares = match signing.advance()?.into_iter().next() {
            Some(SignMessage::Shares { shares, .. }) => shares,
            _ => Vec::new(),
        };
        Ok(vec![DaoMessage::Shares {
            request: ByteBuf::from(self.request.to_vec()),
            party: self.party,
            shares: bufs(shares),
            round: self.round,
        }])
    }
}

/// The provider's side of one signing request: counts approvals, picks the signer set, commits
/// with its parties, builds the packages, signs and aggregates; starts a new round when a chosen
/// member lost the nonces the packages were built with.
pub struct Coordinator<C: Ciphersuite> {
    request: [u8; 32],
    sighashes: Vec<[u8; 32]>,
    /// The approvals and rejections of the request, under the rule evaluated.
    quorum: Quorum,
    provider_parties: Vec<PartyId>,
    /// The current signing round.
    round: u32,
    /// A chosen member lost its nonces after this round's packages went out: the next
    /// [`Coordinator::advance`] starts a new round.
    restart: bool,
    signers: Option<Vec<PartyId>>,
    /// This round's signature on the signing engine, from the signer set on: the provider's
    /// parties are its local parties (their sessions sign the one package set of the round), the
    /// chosen members its remote signers.
    signing: Option<Box<Signing<C>>>,
    /// Commitments a member replaced in this round: never taken back.
    replaced: BTreeMap<PartyId, BTreeSet<Vec<Vec<u8>>>>,
    /// Approvers' commitments of this round that came before its signer set (posted with their
    /// approvals): a chosen member's go into the round's signature when the set is chosen, so
    /// the packages can go out with it.
    early: BTreeMap<PartyId, Vec<Vec<u8>>>,
    signatures: Option<Vec<[u8; 64]>>,
}

impl<C: Ciphersuite> std::fmt::Debug for Coordinator<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator")
            .field("request", &hex::encode(self.request))
            .field("quorum", &self.quorum)
            .field("round", &self.round)
            .field("signers", &self.signers)
            .finish_non_exhaustive()
    }
}

impl<C: Ciphersuite> Coordinator<C> {
    /// A coordinator for `request`, whose rule needs `approvals_needed` approvals among
    /// `approvers` (member party → device key).
    ///
    /// Errors: fewer approvers than needed ([`ProtocolError::Params`]).
    pub fn new(
        request: [u8; 32],
        sighashes: Vec<[u8; 32]>,
        approvals_needed: u16,
        approvers: BTreeMap<PartyId, Vec<u8>>,
        provider_parties: Vec<PartyId>,
    ) -> Result<Self> {
        let digest = sighashes_digest(&request, &sighashes);
        Ok(Self {
            quorum: Quorum::new(request, approvers, approvals_needed, digest)?,
            request,
            sighashes,
            provider_parties,
            round: 0,
            restart: false,
            signers: None,
            signing: None,
            replaced: BTreeMap::new(),
            early: BTreeMap::new(),
            signatures: None,
        })
    }

    /// Starts at signing round `round` instead of 0: for a coordinator founded again (after the
    /// provider restarted) on a topic that already holds rounds up to `round - 1`, whose nonces
    /// died with the provider's memory.
    ///
    /// Errors: `round` is not below [`MAX_ROUNDS`] ([`ProtocolError::Params`]).
    pub fn starting_at(mut self, round: u32) -> Result<Self> {
        if round >= MAX_ROUNDS {
            return Err(too_many_rounds());
        }
        self.round = round;
        Ok(self)
    }

    /// An earlier instance of this coordinator (before the provider restarted) took part in
    /// signing round `round`, with nonces that are gone: if that is this round or a later one,
    /// the next [`Coordinator::advance`] opens the round after it, before the signature is made.
    /// So a coordinator founded again at a round whose packages an earlier instance already
    /// sent (its messages missing from the founding delivery) never builds a second package set
    /// for that round with the members' commitments of it.
    pub fn skip_past(&mut self, round: u32) {
        if self.signatures.is_none() && round >= self.round {
            self.round = round;
            self.restart = true;
        }
    }

    /// The approvals and rejections so far.
    pub fn quorum(&self) -> &Quorum {
        &self.quorum
    }

    /// Approvals received so far, in arrival order.
    pub fn approvals(&self) -> &[PartyId] {
        self.quorum.approvals()
    }

    /// Rejections received so far, by party, with their reasons.
    pub fn rejections(&self) -> &BTreeMap<PartyId, Option<String>> {
        self.quorum.rejections()
    }

    /// Whether the rule's approvals can no longer be reached: the approvers that did not reject
    /// are fewer than it needs (before the signer set is chosen; a chosen set approved).
    pub fn is_dead(&self) -> bool {
        self.signers.is_none() && self.quorum.is_dead()
    }

    /// The chosen signer set, once enough approvals are in.
    pub fn signers(&self) -> Option<&[PartyId]> {
        self.signers.as_deref()
    }

    /// The current signing round.
    pub fn round(&self) -> u32 {
        self.round
    }

    fn check_count(&self, party: PartyId, n: usize, what: &str) -> Result<()> {
        if n == self.sighashes.len() {
            Ok(())
        } else {
            Err(ProtocolError::culprit(
                party,
                format!("{n} {what} for {} inputs", self.sighashes.len()),
            ))
        }
    }

    /// Whether a message of `round` from `party` belongs to the current round: `Ok(false)` for an
    /// older round (stale: ignored), an error for a round not announced yet.
    fn current_round(&self, party: PartyId, round: u32, what: &str) -> Result<bool> {
        if round > self.round {
            return Err(ProtocolError::culprit(
                party,
                format!(
                    "it sent {what} for signing round {round}, the current round is {}",
                    self.round
                ),
            ));
        }
        Ok(round == self.round && !self.restart)
    }

    /// Takes one verified message from `sender`. Returns whether it changed anything.
    ///
    /// Errors (the message is refused, the request goes on): an approval for another request or
    /// other sighashes, from a non-approver or under another key; commitments or shares from a
    /// party outside the signer set, for a round not announced, or with the wrong count
    /// ([`ProtocolError::Culprit`]).
    pub fn absorb(&mut self, sender: &[u8], message: &DaoMessage) -> Result<bool> {
        let (party, round) = match message {
            DaoMessage::Approval(_) | DaoMessage::Reject(_) => {
                return self.quorum.absorb(sender, message);
            }
            other => match round_message(&self.request, other) {
                Some(of) => of,
                None => return Ok(false),
            },
        };
        let what = match message {
            DaoMessage::Shares { .. } => "signature shares",
            _ => "commitments",
        };
        self.quorum.check_member(sender, party, what)?;
        if !self.current_round(party, round, what)? {
            return Ok(false);
        }
        match message {
            DaoMessage::Commitments { commitments, .. } => {
                self.commit(party, commitments.iter().map(|c| c.to_vec()).collect())
            }
            DaoMessage::Shares { shares, .. } => self.take_shares(party, shares),
            _ => Ok(false),
        }
    }

    /// A chosen member's signature shares of the current round, for the packages built with its
    /// commitments.
    fn take_shares(&mut self, party: PartyId, shares: &[ByteBuf]) -> Result<bool> {
        let packaged = |s: &Signing<C>| s.packages().is_some() && s.commitments(party).is_some();
        if !self.signing.as_deref().is_some_and(packaged) {
            return Err(ProtocolError::culprit(
                party,
                "it sent shares without a signing package for it",
            ));
        }
        self.check_count(party, shares.len(), "signature shares")?;
        let Some(signing) = self.signing.as_mut() else {
            return Ok(false);
        };
        if signing.shares(party).is_some() {
            return Ok(false);
        }
        signing.absorb(&SignMessage::Shares {
            party,
            shares: shares.iter().map(|s| s.to_vec()).collect(),
        })
    }

    /// A chosen member's commitments of the current round: the first set, a replacement (the
    /// member restarted before any package used its old set), or the sign that the round cannot
    /// finish (the packages went out with a set whose nonces the member no longer has).
    fn commit(&mut self, party: PartyId, value: Vec<Vec<u8>>) -> Result<bool> {
        let Some(signers) = &self.signers else {
            return self.commit_early(party, value);
        };
        if !signers.contains(&party) {
            // An approver's commitments posted with its approval, when others completed the
            // rule first: its nonces are dropped unused on its side.
            return Ok(false);
        }
        self.check_count(party, value.len(), "commitments")?;
        let Some(signing) = self.signing.as_mut() else {
            return Err(ProtocolError::culprit(
                party,
                "it committed before the signer set was chosen",
            ));
        };
        let existing = signing.commitments(party);
        if known_set(&self.replaced, party, existing, &value) {
            return Ok(false);
        }
        let Some(old) = existing.map(<[Vec<u8>]>::to_vec) else {
            return signing.absorb(&SignMessage::Commitments {
                party,
                commitments: value,
            });
        };
        if signing.packages().is_some() {
            if signing.shares(party).is_some() {
                // Its shares of this round are in: the old nonces did their job.
                return Ok(false);
            }
            self.restart = true;
            return Ok(true);
        }
        // A malformed set is refused before the old one is retired: the engine keeps the old.
        decode_set::<C>(party, &value)?;
        retire_set(&mut self.replaced, party, old)?;
        signing.replace_commitments(party, &value)?;
        Ok(true)
    }

    /// An approver's commitments before the round's signer set: kept for the set (a later set
    /// of the same approver replaces it: its process restarted and the old nonces are gone;
    /// a set once replaced is never taken back). Each commitment must decode, so a bad one is
    /// refused here, not when the packages are built.
    fn commit_early(&mut self, party: PartyId, value: Vec<Vec<u8>>) -> Result<bool> {
        self.check_count(party, value.len(), "commitments")?;
        decode_set::<C>(party, &value)?;
        let current = self.early.get(&party).map(Vec::as_slice);
        if known_set(&self.replaced, party, current, &value) {
            return Ok(false);
        }
        if let Some(old) = current.map(<[Vec<u8>]>::to_vec) {
            retire_set(&mut self.replaced, party, old)?;
        }
        self.early.insert(party, value);
        Ok(true)
    }

    /// Whether [`Coordinator::advance`] will use the provider's key packages now.
    pub fn needs_keys(&self) -> bool {
        if self.signatures.is_some() {
            return false;
        }
        // Only the signer set draws on them: the round's signature keeps them from then on.
        self.restart || (self.signers.is_none() && self.quorum.is_reached())
    }

    /// Drops everything of the current round and opens the next. The provider's sessions of the
    /// round were consumed by its one package set; the next round draws fresh nonces.
    fn next_round(&mut self) -> Result<()> {
        let next = self.round.saturating_add(1);
        if next >= MAX_ROUNDS {
            return Err(too_many_rounds());
        }
        self.round = next;
        self.restart = false;
        self.signers = None;
        self.signing = None;
        self.replaced.clear();
        self.early.clear();
        Ok(())
    }

    /// Advances as far as the messages allow: starts a new round if a chosen member lost its
    /// nonces after the packages went out; picks the signer set once enough approvals are in (and
    /// commits with the provider's parties, fresh nonces); builds the signing packages once every
    /// chosen member committed (and signs with the provider's parties); aggregates once every
    /// share is in. `keys` are the provider's key packages by party, one per input (each
    /// input's key: the wallet's own or a child's, `crate::hd::key_packages_for`; needed when
    /// [`needs_keys`] says so); `public_key_packages` check each input's shares likewise.
    ///
    /// Errors: a share that does not verify (the culprit named); more than [`MAX_ROUNDS`] rounds
    /// ([`ProtocolError::Refused`]).
    ///
    /// [`needs_keys`]: Coordinator::needs_keys
    pub fn advance(
        &mut self,
        keys: &BTreeMap<PartyId, Vec<KeyPackage<C>>>,
        public_key_packages: &[PublicKeyPackage<C>],
        rng: &mut (impl CryptoRng + RngCore),
    ) -> Result<Vec<DaoMessage>> {
        if self.is_dead() {
            return Err(ProtocolError::Refused {
                reason: format!(
                    "rejected by parties {:?}: the rule needs {} approvals among {} approvers",
                    self.quorum.rejections().keys().collect::<Vec<_>>(),
                    self.quorum.needed(),
                    self.quorum.approver_count()
                ),
            });
        }
        let mut out = Vec::new();
        if self.restart && self.signatures.is_none() {
            self.next_round()?;
        }
        if self.signers.is_none() && self.quorum.is_reached() {
            out.push(self.choose_signers(keys, rng)?);
        }
        let Some(signing) = self.signing.as_mut() else {
            return Ok(out);
        };
        // Every signer committed: the engine builds the packages and the provider's parties sign
        // them at once (their sessions of the round are used by this one set).
        let had_packages = signing.packages().is_some();
        signing.advance()?;
        if let (false, Some(packages)) = (had_packages, signing.packages()) {
            out.push(DaoMessage::SigningPackages {
                request: ByteBuf::from(self.request.to_vec()),
                packages: bufs(packages.to_vec()),
                round: self.round,
            });
        }
        if self.signatures.is_none() && signing.waiting().step == SignStep::Done {
            self.signatures = Some(signatures_64(signing, public_key_packages)?);
        }
        Ok(out)
    }

    /// The signer set of this round: the first approvals the rule needs, in arrival order, and
    /// the provider's parties, which commit now with fresh nonces.
    fn choose_signers(
        &mut self,
        keys: &BTreeMap<PartyId, Vec<KeyPackage<C>>>,
        rng: &mut (impl CryptoRng + RngCore),
    ) -> Result<DaoMessage> {
        let mut signers: Vec<PartyId> = self
            .quorum
            .approvals()
            .iter()
            .take(usize::from(self.quorum.needed()))
            .copied()
            .collect();
        signers.extend(&self.provider_parties);
        signers.sort_unstable();
        let locals = self
            .provider_parties
            .iter()
            .map(|&party| Ok((party, provider_key(keys, party)?.clone())))
            .collect::<Result<Vec<_>>>()?;
        let messages = self.sighashes.iter().map(|s| s.to_vec()).collect();
        let (mut signing, _) = Signing::start_each(locals, &signers, messages, rng)?;
        // Chosen members that committed with their approval: the packages need nothing more
        // from them ([`Coordinator::advance`] builds them at once if every chosen member did).
        for (party, commitments) in std::mem::take(&mut self.early) {
            if signers.contains(&party) {
                signing.absorb(&SignMessage::Commitments { party, commitments })?;
            }
        }
        self.signing = Some(Box::new(signing));
        let message = DaoMessage::SignerSet {
            request: ByteBuf::from(self.request.to_vec()),
            parties: signers.clone(),
            round: self.round,
        };
        self.signers = Some(signers);
        Ok(message)
    }

    /// The aggregated signatures (one per input, BIP-340), once every share is in.
    pub fn signatures(&self) -> Option<&[[u8; 64]]> {
        self.signatures.as_deref()
    }

    /// The member parties in the signer set of the current round.
    pub fn chosen_members(&self) -> Vec<PartyId> {
        self.signers
            .as_ref()
            .map(|s| {
                s.iter()
                    .filter(|p| !self.provider_parties.contains(p))
                    .copied()
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The round's signatures, one per input, as 64-byte BIP-340 signatures.
fn signatures_64<C: Ciphersuite>(
    signing: &Signing<C>,
    public_key_packages: &[PublicKeyPackage<C>],
) -> Result<Vec<[u8; 64]>> {
    signing
        .signatures_each(public_key_packages)?
        .into_iter()
        .map(|sig| {
            <[u8; 64]>::try_from(sig.as_slice()).map_err(|_| ProtocolError::Frost {
                reason: format!("signature of {} bytes, expected 64", sig.len()),
            })
        })
        .collect()
}

/// How a signing request ended, as its topic says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TallyEnd {
    /// The provider published the transaction with this txid.
    Signed(String),
    /// The provider refused the request, for this reason.
    Refused(String),
}

/// Where a signing request stands as a member reads its topic: who approved, who rejected, who
/// is still missing, how it ended. For progress lines and `cosigner dao requests`; it decides
/// nothing (the provider does). It counts only what it can check: the provider's messages from
/// the provider's key, an approval or rejection from the approver it names, an approval of the
/// sighashes the provider evaluated, commitments and shares from a chosen member's key.
#[derive(Debug, Clone)]
pub struct Tally {
    request: [u8; 32],
    provider_key: Vec<u8>,
    /// Approvals and rejections under the evaluated rule.
    quorum: Quorum,
    round: u32,
    /// Chosen members of `round` (the provider's parties left out).
    chosen: Vec<PartyId>,
    committed: BTreeSet<PartyId>,
    /// Approvers' commitments of a round whose signer set was not seen yet (posted with their
    /// approvals), by round: they count once the set names them.
    early: BTreeSet<(u32, PartyId)>,
    shared: BTreeSet<PartyId>,
    end: Option<TallyEnd>,
    /// An Ethereum treasury's signing (its hellos count as commitments, its last messages as
    /// shares; `dao::ecdsa`).
    ecdsa: bool,
}

impl Tally {
    /// A tally of `request` (its hash) under the provider's `evaluation`, for the wallet `layout`.
    ///
    /// Errors: the evaluation names an approver who is not a member, or a malformed sighash
    /// ([`ProtocolError::Encoding`], [`ProtocolError::Params`]).
    pub fn new(request: [u8; 32], layout: &Layout, evaluation: &Evaluation) -> Result<Self> {
        let mut approvers = BTreeMap::new();
        for &party in &evaluation.approvers {
            let key = layout
                .members
                .iter()
                .find(|(p, _)| *p == party)
                .map(|(_, m)| m.device_key.clone())
                .ok_or_else(|| ProtocolError::Params {
                    reason: format!("the evaluation names party {party}, not a member"),
                })?;
            approvers.insert(party, key);
        }
        let sighashes = evaluation
            .sighashes
            .iter()
            .map(|s| hash32(s, "a sighash"))
            .collect::<Result<Vec<_>>>()?;
        let digest = sighashes_digest(&request, &sighashes);
        Ok(Self {
            request,
            provider_key: layout.provider_key.clone(),
            quorum: Quorum::new(request, approvers, evaluation.approvals, digest)?,
            round: 0,
            chosen: Vec::new(),
            committed: BTreeSet::new(),
            early: BTreeSet::new(),
            ecdsa: false,
            shared: BTreeSet::new(),
            end: None,
        })
    }

    fn is_approver(&self, sender: &[u8], party: PartyId) -> bool {
        self.quorum.check_member(sender, party, "message").is_ok()
    }

    /// Takes one verified message from `sender`; returns whether the tally changed.
    pub fn absorb(&mut self, sender: &[u8], message: &DaoMessage) -> bool {
        if sender == self.provider_key.as_slice() {
            return self.absorb_provider(message);
        }
        match message {
            // What the provider would refuse does not count here either.
            DaoMessage::Approval(_) | DaoMessage::Reject(_) => {
                self.quorum.absorb(sender, message).unwrap_or(false)
            }
            other => match round_message(&self.request, other).or_else(|| self.ecdsa_step(other)) {
                Some((party, round))
                    if round == self.round
                        && self.chosen.contains(&party)
                        && self.is_approver(sender, party) =>
                {
                    let done = match message {
                        DaoMessage::Commitments { .. } | DaoMessage::EcdsaSignHello { .. } => {
                            &mut self.committed
                        }
                        _ => &mut self.shared,
                    };
                    done.insert(party)
                }
                Some((party, round))
                    if matches!(message, DaoMessage::Commitments { .. })
                        && (round > self.round || self.chosen.is_empty())
                        && round < MAX_ROUNDS
                        && self.is_approver(sender, party) =>
                {
                    self.early.insert((round, party))
                }
                _ => false,
            },
        }
    }

    /// A treasury signer's hello or last message of this request: its party and round (and the
    /// tally speaks of treasury signing from then on).
    fn ecdsa_step(&mut self, message: &DaoMessage) -> Option<(PartyId, u32)> {
        let of = match message {
            DaoMessage::EcdsaSignHello {
                request,
                round,
                hello,
            } if same_request(&self.request, request) => Some((hello.from, *round)),
            DaoMessage::EcdsaSignPart {
                request,
                round,
                part,
            } if same_request(&self.request, request) && part.step == 3 => {
                Some((part.from, *round))
            }
            _ => None,
        };
        self.ecdsa |= of.is_some();
        of
    }

    fn absorb_provider(&mut self, message: &DaoMessage) -> bool {
        match message {
            DaoMessage::SignerSet {
                request,
                parties,
                round,
            } if same_request(&self.request, request)
                && (*round > self.round || self.chosen.is_empty()) =>
            {
                self.round = *round;
                self.chosen = parties
                    .iter()
                    .copied()
                    .filter(|p| self.quorum.is_approver(*p))
                    .collect();
                self.committed = self
                    .early
                    .iter()
                    .filter(|(r, p)| r == round && self.chosen.contains(p))
                    .map(|(_, p)| *p)
                    .collect();
                self.early.retain(|(r, _)| r > round);
                self.shared.clear();
                true
            }
            DaoMessage::Signed { request, txid, .. } if same_request(&self.request, request) => {
                self.end = Some(TallyEnd::Signed(txid.clone()));
                true
            }
            DaoMessage::Refused { request, reason }
                if same_request(&self.request, request)
                    && !matches!(self.end, Some(TallyEnd::Signed(_))) =>
            {
                self.end = Some(TallyEnd::Refused(reason.clone()));
                true
            }
            _ => false,
        }
    }

    /// Approving parties, in arrival order.
    pub fn approvals(&self) -> &[PartyId] {
        self.quorum.approvals()
    }

    /// Rejecting parties with their reasons.
    pub fn rejections(&self) -> &BTreeMap<PartyId, Option<String>> {
        self.quorum.rejections()
    }

    /// Approvals the rule needs (the requester's included).
    pub fn needed(&self) -> u16 {
        self.quorum.needed()
    }

    /// How it ended, if it did.
    pub fn end(&self) -> Option<&TallyEnd> {
        self.end.as_ref()
    }

    /// Whether the approvers that did not reject can no longer reach the rule's approvals.
    pub fn is_dead(&self) -> bool {
        self.quorum.is_dead()
    }

    /// Whether the signing stage started (enough approvals, a signer set announced).
    pub fn signing(&self) -> bool {
        !self.chosen.is_empty()
    }

    /// The signing round the topic is in.
    pub fn round(&self) -> u32 {
        self.round
    }

    /// Member parties the request waits for now: approvers who neither approved nor rejected
    /// while approvals are missing; then chosen members whose commitments, then shares, of the
    /// current round are missing. Empty when it ended or waits for the provider only.
    pub fn missing(&self) -> Vec<PartyId> {
        if self.end.is_some() || self.is_dead() {
            return Vec::new();
        }
        if !self.quorum.is_reached() {
            return self.quorum.missing();
        }
        let waiting: Vec<PartyId> = self
            .chosen
            .iter()
            .copied()
            .filter(|p| !self.committed.contains(p))
            .collect();
        if !waiting.is_empty() {
            return waiting;
        }
        self.chosen
            .iter()
            .copied()
            .filter(|p| !self.shared.contains(p))
            .collect()
    }

    /// What the request waits for, naming members with `name` (for progress lines).
    pub fn describe(&self, name: &dyn Fn(PartyId) -> String) -> String {
        let names = |parties: &[PartyId]| parties.iter().map(|p| name(*p)).collect::<Vec<_>>();
        let list = |parties: &[PartyId]| names(parties).join(", ");
        let needed = self.quorum.needed();
        let approved = format!(
            "{} of {needed} approvals",
            self.quorum.approvals().len().min(usize::from(needed)),
        );
        let rejected = if self.quorum.rejections().is_empty() {
            String::new()
        } else {
            let who: Vec<PartyId> = self.quorum.rejections().keys().copied().collect();
            format!("; rejected by {}", list(&who))
        };
        match &self.end {
            Some(TallyEnd::Signed(txid)) => return format!("signed: transaction {txid}"),
            Some(TallyEnd::Refused(reason)) => return format!("refused: {reason}"),
            None => {}
        }
        if self.is_dead() {
            return format!("{approved}{rejected}: the rule's approvals can no longer be reached");
        }
        let missing = self.missing();
        if !self.quorum.is_reached() {
            return format!("{approved}{rejected}; waiting for {}", list(&missing));
        }
        if !self.signing() {
            return format!("{approved}; waiting for the provider to choose the signers");
        }
        let step = match (
            self.ecdsa,
            self.chosen.iter().all(|p| self.committed.contains(p)),
        ) {
            (false, true) => "signature shares",
            (false, false) => "nonce commitments",
            (true, true) => "last signing messages",
            (true, false) => "signing keys (hellos)",
        };
        if missing.is_empty() {
            return format!(
                "{approved}; signing (round {}): waiting for the provider",
                self.round
            );
        }
        format!(
            "{approved}; signing (round {}): waiting for the {step} of {}",
            self.round,
            list(&missing)
        )
    }
}

/// A member's commitments already seen: its `current` set again (a duplicate), or a set it
/// replaced, delivered late (never taken back: its nonces are gone).
fn known_set(
    replaced: &BTreeMap<PartyId, BTreeSet<Vec<Vec<u8>>>>,
    party: PartyId,
    current: Option<&[Vec<u8>]>,
    value: &[Vec<u8>],
) -> bool {
    current == Some(value) || replaced.get(&party).is_some_and(|old| old.contains(value))
}

/// Retires `party`'s replaced set `old` for good, at most [`MAX_REPLACEMENTS`] times a round.
fn retire_set(
    replaced: &mut BTreeMap<PartyId, BTreeSet<Vec<Vec<u8>>>>,
    party: PartyId,
    old: Vec<Vec<u8>>,
) -> Result<()> {
    let retired = replaced.entry(party).or_default();
    if retired.len() >= MAX_REPLACEMENTS {
        return Err(ProtocolError::culprit(
            party,
            format!("it replaced its commitments more than {MAX_REPLACEMENTS} times"),
        ));
    }
    retired.insert(old);
    Ok(())
}

fn provider_key<C: Ciphersuite>(
    keys: &BTreeMap<PartyId, Vec<KeyPackage<C>>>,
    party: PartyId,
) -> Result<&Vec<KeyPackage<C>>> {
    keys.get(&party).ok_or_else(|| ProtocolError::Params {
        reason: format!("the provider's key package for party {party} is missing"),
    })
}

fn too_many_rounds() -> ProtocolError {
    ProtocolError::Refused {
        reason: format!(
            "the signing was restarted {MAX_ROUNDS} times (chosen members kept losing their \
             nonces): request it again"
        ),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;
    use crate::auth::public_key_bytes;
    use crate::dao::dkg::Outputs;
    use crate::dao::tests::keys;
    use crate::dao::{MAX_REJECTION_REASON, Rejection};
    use crate::id::pid;
    use crate::sign::{SignerSession, commitment_in, signing_package};
    use rand_core::OsRng;

    type Tr = frost_secp256k1_tr::Secp256K1Sha256TR;

    struct Dao {
        members: Vec<p256::ecdsa::SigningKey>,
        provider: p256::ecdsa::SigningKey,
        outputs: Vec<(Vec<u8>, Outputs<Tr>)>,
    }

    fn dao() -> Dao {
        let members = keys(5);
        let provider = keys(1).pop().unwrap();
        let results = crate::dao::dkg::tests::run_dkg(&members, &provider);
        Dao {
            members,
            provider,
            outputs: results.into_iter().map(|(k, _, o)| (k, o)).collect(),
        }
    }

    /// The request every test signs.
    const REQUEST: [u8; 32] = [9; 32];

    // The engines with one key package for every input (the wallet's own key): what the tests
    // sign with, as the DAO did before children.
    impl MemberSigner<Tr> {
        fn handle_one_key(
            &mut self,
            sender: &[u8],
            message: &DaoMessage,
            key_package: &KeyPackage<Tr>,
            rng: &mut OsRng,
        ) -> Result<Vec<DaoMessage>> {
            let each = vec![key_package.clone(); self.sighashes.len()];
            self.handle(sender, message, &each, rng)
        }
    }

    impl Coordinator<Tr> {
        fn advance_one_key(
            &mut self,
            keys: &BTreeMap<PartyId, KeyPackage<Tr>>,
            public_key_package: &PublicKeyPackage<Tr>,
            rng: &mut OsRng,
        ) -> Result<Vec<DaoMessage>> {
            let n = self.sighashes.len();
            let keys = keys.iter().map(|(p, k)| (*p, vec![k.clone(); n])).collect();
            self.advance(&keys, &vec![public_key_package.clone(); n], rng)
        }
    }

    /// The coordinator of [`REQUEST`] (one input, sighash `[1; 32]`), needing 3 approvals.
    fn coordinator(d: &Dao) -> Coordinator<Tr> {
        coordinator_of(d, vec![[1; 32]], 3)
    }

    /// The coordinator of [`REQUEST`] for `sighashes`, needing `needed` approvals; the provider's
    /// parties are 6, 7 and 8.
    fn coordinator_of(d: &Dao, sighashes: Vec<[u8; 32]>, needed: u16) -> Coordinator<Tr> {
        Coordinator::<Tr>::new(
            REQUEST,
            sighashes,
            needed,
            approvers(d),
            vec![pid(6), pid(7), pid(8)],
        )
        .unwrap()
    }

    /// The provider's key packages, by party.
    fn provider_keys(d: &Dao) -> BTreeMap<PartyId, KeyPackage<Tr>> {
        d.outputs[5]
            .1
            .iter()
            .map(|(p, o)| (*p, o.key_package.clone()))
            .collect()
    }

    /// Checks `signatures` of `sighashes` under the wallet's group key.
    fn verify(d: &Dao, signatures: &[[u8; 64]], sighashes: &[[u8; 32]]) {
        let vk = *d.outputs[0].1[0].1.public_key_package.verifying_key();
        for (sig, msg) in signatures.iter().zip(sighashes) {
            let sig = frost_core::Signature::<Tr>::deserialize(sig).unwrap();
            vk.verify(msg, &sig).unwrap();
        }
    }

    fn approvers(d: &Dao) -> BTreeMap<PartyId, Vec<u8>> {
        d.members
            .iter()
            .enumerate()
            .map(|(i, k)| (pid(i as u16 + 1), public_key_bytes(k)))
            .collect()
    }

    /// Runs a signing of `sighashes` with `approving` members (party numbers) and a rule needing
    /// `needed`; returns the signatures, or None when the coordinator never got there.
    fn run(
        d: &Dao,
        sighashes: Vec<[u8; 32]>,
        needed: u16,
        approving: &[PartyId],
    ) -> Option<Vec<[u8; 64]>> {
        let provider_pk = public_key_bytes(&d.provider);
        let mut coord = coordinator_of(d, sighashes.clone(), needed);
        let provider_keys = provider_keys(d);
        let pkp = d.outputs[5].1[0].1.public_key_package.clone();
        let mut signers = Vec::new();
        let mut bus: Vec<(Vec<u8>, DaoMessage)> = Vec::new();
        for &p in approving {
            let (s, approval) = MemberSigner::<Tr>::approve(
                REQUEST,
                p,
                provider_pk.clone(),
                sighashes.clone(),
                "txid".into(),
            );
            bus.push((public_key_bytes(&d.members[usize::from(p) - 1]), approval));
            signers.push((p, s));
        }
        for _ in 0..6 {
            for (sender, m) in std::mem::take(&mut bus) {
                coord.absorb(&sender, &m).unwrap();
                for (p, s) in signers.iter_mut() {
                    let kp = &d.outputs[usize::from(*p) - 1].1[0].1.key_package;
                    let out = s.handle_one_key(&sender, &m, kp, &mut OsRng).unwrap();
                    let pk = public_key_bytes(&d.members[usize::from(*p) - 1]);
                    bus.extend(out.into_iter().map(|m| (pk.clone(), m)));
                }
            }
            let out = coord
                .advance_one_key(&provider_keys, &pkp, &mut OsRng)
                .unwrap();
            bus.extend(out.into_iter().map(|m| (provider_pk.clone(), m)));
        }
        coord.signatures().map(<[_]>::to_vec)
    }

    #[test]
    fn three_approvals_sign_two_inputs_and_the_signatures_verify() {
        let d = dao();
        let sighashes = vec![[1u8; 32], [2u8; 32]];
        let sigs = run(&d, sighashes.clone(), 3, &[pid(2), pid(4), pid(5)]).expect("signed");
        verify(&d, &sigs, &sighashes);
    }

    #[test]
    fn two_approvals_do_not_reach_a_three_approval_rule() {
        let d = dao();
        assert!(run(&d, vec![[1u8; 32]], 3, &[pid(1), pid(2)]).is_none());
        // Four approvals where the rule needs four: signed with 4 members + provider (7 > t).
        assert!(run(&d, vec![[1u8; 32]], 4, &[pid(1), pid(2), pid(3), pid(5)]).is_some());
        assert!(run(&d, vec![[1u8; 32]], 5, &[pid(1), pid(2), pid(3), pid(5)]).is_none());
        assert!(
            run(
                &d,
                vec![[1u8; 32]],
                5,
                &[pid(1), pid(2), pid(3), pid(4), pid(5)]
            )
            .is_some()
        );
    }

    #[test]
    fn an_approval_for_another_request_or_psbt_is_refused() {
        let d = dao();
        let pk = public_key_bytes(&d.members[0]);
        let mut coord = coordinator(&d);
        // Same request, other sighashes (another PSBT's).
        let (_, other_psbt) =
            MemberSigner::<Tr>::approve([9; 32], pid(1), vec![], vec![[2; 32]], String::new());
        assert!(matches!(
            coord.absorb(&pk, &other_psbt),
            Err(ProtocolError::Culprit { party, .. }) if party == pid(1)
        ));
        // Another request.
        let (_, other_request) =
            MemberSigner::<Tr>::approve([8; 32], pid(1), vec![], vec![[1; 32]], String::new());
        assert!(coord.absorb(&pk, &other_request).is_err());
        // Party 2's approval signed by party 1's key.
        let (_, as_two) =
            MemberSigner::<Tr>::approve([9; 32], pid(2), vec![], vec![[1; 32]], String::new());
        assert!(coord.absorb(&pk, &as_two).is_err());
        // The right one counts once.
        let (_, good) =
            MemberSigner::<Tr>::approve([9; 32], pid(1), vec![], vec![[1; 32]], String::new());
        assert!(coord.absorb(&pk, &good).unwrap());
        assert!(!coord.absorb(&pk, &good).unwrap());
        assert_eq!(coord.approvals(), &[1]);
    }

    #[test]
    fn a_member_refuses_a_package_for_another_message_and_a_foreign_transaction() {
        let d = dao();
        let provider_pk = public_key_bytes(&d.provider);
        let kp = &d.outputs[0].1[0].1.key_package;
        let (mut s, _) = MemberSigner::<Tr>::approve(
            [9; 32],
            pid(1),
            provider_pk.clone(),
            vec![[1; 32]],
            "good".into(),
        );
        let set = DaoMessage::SignerSet {
            request: ByteBuf::from(vec![9; 32]),
            parties: vec![pid(1), pid(2), pid(3), pid(6), pid(7), pid(8)],
            round: 0,
        };
        // From someone else than the provider: ignored.
        assert!(
            s.handle_one_key(&public_key_bytes(&d.members[1]), &set, kp, &mut OsRng)
                .unwrap()
                .is_empty()
        );
        let out = s
            .handle_one_key(&provider_pk, &set, kp, &mut OsRng)
            .unwrap();
        let DaoMessage::Commitments { commitments, .. } = &out[0] else {
            panic!()
        };
        // A package over another message, with our commitment: refused.
        let mut c = BTreeMap::new();
        c.insert(pid(1), commitments[0].to_vec());
        for p in [2, 3, 6, 7, 8].map(pid) {
            let kp = if p.get() <= 5 {
                d.outputs[usize::from(p) - 1].1[0].1.key_package.clone()
            } else {
                d.outputs[5].1[usize::from(p) - 6].1.key_package.clone()
            };
            let (_, cp) = SignerSession::<Tr>::commit(
                &kp,
                p,
                &[1; 32],
                &[pid(1), pid(2), pid(3), pid(6), pid(7), pid(8)],
                &mut OsRng,
            )
            .unwrap();
            c.insert(p, cp);
        }
        let bad = signing_package::<Tr>(&[2; 32], &c).unwrap();
        let msg = DaoMessage::SigningPackages {
            request: ByteBuf::from(vec![9; 32]),
            packages: vec![ByteBuf::from(bad)],
            round: 0,
        };
        assert!(matches!(
            s.handle_one_key(&provider_pk, &msg, kp, &mut OsRng),
            Err(ProtocolError::SessionMismatch { .. })
        ));
        // A published transaction other than the approved one.
        let signed = DaoMessage::Signed {
            request: ByteBuf::from(vec![9; 32]),
            txid: "evil".into(),
            tx: ByteBuf::new(),
        };
        assert!(matches!(
            s.handle_one_key(&provider_pk, &signed, kp, &mut OsRng),
            Err(ProtocolError::Disagreement { .. })
        ));
    }

    /// A small in-memory signing: the coordinator, members by party, and the messages in flight.
    struct Bench<'a> {
        d: &'a Dao,
        request: [u8; 32],
        sighashes: Vec<[u8; 32]>,
        coord: Coordinator<Tr>,
        provider_keys: BTreeMap<PartyId, KeyPackage<Tr>>,
        /// Every message ever posted, in order (the mailbox), with its sender.
        mailbox: Vec<(Vec<u8>, DaoMessage)>,
        /// How far the coordinator has read the mailbox.
        read: usize,
    }

    impl<'a> Bench<'a> {
        fn new(d: &'a Dao, needed: u16, sighashes: Vec<[u8; 32]>) -> Self {
            Self {
                d,
                request: REQUEST,
                coord: coordinator_of(d, sighashes.clone(), needed),
                sighashes,
                provider_keys: provider_keys(d),
                mailbox: Vec::new(),
                read: 0,
            }
        }

        fn member_key(&self, party: PartyId) -> Vec<u8> {
            public_key_bytes(&self.d.members[usize::from(party) - 1])
        }

        fn key_package(&self, party: PartyId) -> &KeyPackage<Tr> {
            &self.d.outputs[usize::from(party) - 1].1[0].1.key_package
        }

        /// A member process starting (or starting again): approves, posts the approval.
        fn member(&mut self, party: PartyId) -> MemberSigner<Tr> {
            let (s, approval) = MemberSigner::<Tr>::approve(
                self.request,
                party,
                public_key_bytes(&self.d.provider),
                self.sighashes.clone(),
                "txid".into(),
            );
            self.mailbox.push((self.member_key(party), approval));
            s
        }

        /// A member process starting (or starting again) that approves with its round-0
        /// commitments: posts both.
        fn member_committed(&mut self, party: PartyId) -> MemberSigner<Tr> {
            let each = vec![self.key_package(party).clone(); self.sighashes.len()];
            let (s, out) = MemberSigner::<Tr>::approve_committed(
                self.request,
                party,
                public_key_bytes(&self.d.provider),
                self.sighashes.clone(),
                "txid".into(),
                &each,
                &mut OsRng,
            )
            .unwrap();
            let key = self.member_key(party);
            self.mailbox
                .extend(out.into_iter().map(|m| (key.clone(), m)));
            s
        }

        /// The names of the messages posted from `from` on, by sender (`"provider"` or the
        /// member's party).
        fn posted_since(&self, from: usize) -> Vec<(String, &'static str)> {
            let provider = public_key_bytes(&self.d.provider);
            self.mailbox[from..]
                .iter()
                .map(|(k, m)| {
                    let who = if *k == provider {
                        "provider".to_owned()
                    } else {
                        let i = self
                            .d
                            .members
                            .iter()
                            .position(|s| public_key_bytes(s) == *k);
                        format!("{}", i.map_or(0, |i| i + 1))
                    };
                    (who, m.name())
                })
                .collect()
        }

        /// Members 1, 2 and 3 approve, and the provider picks them for round 0's signer set.
        fn three_approved(&mut self) -> [MemberSigner<Tr>; 3] {
            let members = [pid(1), pid(2), pid(3)].map(|p| self.member(p));
            self.provider();
            members
        }

        /// The coordinator reads what is new in the mailbox and advances; its messages are posted.
        fn provider(&mut self) {
            let pkp = self.d.outputs[5].1[0].1.public_key_package.clone();
            for (sender, m) in &self.mailbox[self.read..] {
                let _ = self.coord.absorb(sender, m);
            }
            let out = self
                .coord
                .advance_one_key(&self.provider_keys, &pkp, &mut OsRng)
                .unwrap();
            let pk = public_key_bytes(&self.d.provider);
            self.mailbox
                .extend(out.into_iter().map(|m| (pk.clone(), m)));
            self.read = self.mailbox.len();
        }

        /// A member reads the mailbox from `from` (a restarted process reads from 0) and posts
        /// what it answers; returns where it stopped reading.
        fn run_member(&mut self, s: &mut MemberSigner<Tr>, party: PartyId, from: usize) -> usize {
            let batch = self.mailbox[from..].to_vec();
            s.look_ahead(batch.iter().map(|(k, m)| (k.as_slice(), m)));
            let kp = self.key_package(party).clone();
            for (sender, m) in &batch {
                let out = s.handle_one_key(sender, m, &kp, &mut OsRng).unwrap();
                let pk = self.member_key(party);
                self.mailbox
                    .extend(out.into_iter().map(|m| (pk.clone(), m)));
            }
            from + batch.len()
        }

        /// Members 1, 2 and 3 (read from `at`) and the provider take turns three times.
        fn three_rounds(&mut self, members: [&mut MemberSigner<Tr>; 3], mut at: [usize; 3]) {
            let mut members = members;
            for _ in 0..3 {
                for (i, (m, at)) in members.iter_mut().zip(&mut at).enumerate() {
                    *at = self.run_member(m, pid(i as u16 + 1), *at);
                }
                self.provider();
            }
        }

        fn verify(&self) {
            let sigs = self.coord.signatures().expect("signed");
            verify(self.d, sigs, &self.sighashes);
        }

        /// The provider's commitments (party 6) in every signing package posted so far, by round.
        fn provider_commitments(&self) -> Vec<(u32, Vec<u8>)> {
            let in_round = |(_, m): &(Vec<u8>, DaoMessage)| match m {
                DaoMessage::SigningPackages {
                    packages, round, ..
                } => Some((*round, commitment_in::<Tr>(&packages[0], pid(6))?)),
                _ => None,
            };
            self.mailbox.iter().filter_map(in_round).collect()
        }
    }

    #[test]
    fn approvals_with_commitments_sign_in_one_round_once_the_rule_is_met() {
        let d = dao();
        let mut b = Bench::new(&d, 3, vec![[1u8; 32], [2u8; 32]]);
        let mut members: Vec<_> = [1, 2, 3, 4]
            .map(|p| (pid(p), b.member_committed(pid(p))))
            .into();
        let approved = b.mailbox.len();
        b.provider();
        // The signer set and the packages together: nothing more was asked of the members.
        let names: Vec<_> = b
            .posted_since(approved)
            .into_iter()
            .map(|(_, n)| n)
            .collect();
        assert_eq!(names, ["SignerSet", "SigningPackages"]);
        let packaged = b.mailbox.len();
        for (party, m) in &mut members {
            b.run_member(m, *party, 0);
        }
        // The chosen members (the first three approvers) answer their shares only; the fourth
        // is a bystander and posts nothing.
        let answers = b.posted_since(packaged);
        let expected: Vec<(String, &str)> =
            ["1", "2", "3"].map(|p| (p.to_owned(), "Shares")).into();
        assert_eq!(answers, expected);
        assert!(!members[3].1.chosen());
        b.provider();
        b.verify();
        assert_eq!(b.coord.round(), 0);
        assert_eq!(b.provider_commitments().len(), 1, "one package set");
        // The bystander's commitments delivered again: ignored, not a fault.
        let (key, late) = b.mailbox[..approved]
            .iter()
            .find(|(_, m)| matches!(m, DaoMessage::Commitments { party, .. } if *party == pid(4)))
            .cloned()
            .unwrap();
        assert!(!b.coord.absorb(&key, &late).unwrap());
    }

    #[test]
    fn early_commitments_replaced_by_a_restart_are_never_taken_back() {
        let d = dao();
        let mut b = Bench::new(&d, 3, vec![[1u8; 32]]);
        let mut m1 = b.member_committed(pid(1));
        let mut m2 = b.member_committed(pid(2));
        let lost_at = b.mailbox.len();
        drop(b.member_committed(pid(3)));
        let lost = b.mailbox[lost_at].clone();
        assert!(matches!(lost.1, DaoMessage::Commitments { round: 0, .. }));
        // Member 3's process stopped and runs again before the provider read anything: a
        // duplicate approval and new commitments.
        let mut m3 = b.member_committed(pid(3));
        b.provider();
        assert!(
            !b.coord.absorb(&lost.0, &lost.1).unwrap(),
            "replaced: never back"
        );
        b.run_member(&mut m1, pid(1), 0);
        b.run_member(&mut m2, pid(2), 0);
        b.run_member(&mut m3, pid(3), 0);
        b.provider();
        b.verify();
        assert_eq!(b.provider_commitments().len(), 1, "one round");
    }

    #[test]
    fn early_commitments_lost_after_the_packages_start_a_new_round() {
        let d = dao();
        let mut b = Bench::new(&d, 3, vec![[1u8; 32]]);
        let mut m1 = b.member_committed(pid(1));
        let mut m2 = b.member_committed(pid(2));
        drop(b.member_committed(pid(3)));
        b.provider(); // signer set and packages of round 0, with member 3's lost commitments
        let at1 = b.run_member(&mut m1, pid(1), 0);
        let at2 = b.run_member(&mut m2, pid(2), 0);
        // Member 3 runs again: its new round-0 commitments cannot be in the packages.
        let mut m3 = b.member_committed(pid(3));
        let at3 = b.run_member(&mut m3, pid(3), 0);
        b.provider();
        assert_eq!(b.coord.round(), 1);
        b.three_rounds([&mut m1, &mut m2, &mut m3], [at1, at2, at3]);
        b.verify();
        let provider = b.provider_commitments();
        assert_eq!(provider.len(), 2, "one package set per round");
        assert_ne!(provider[0].1, provider[1].1, "round 1 drew fresh nonces");
    }

    #[test]
    fn a_coordinator_founded_again_skips_past_a_round_an_earlier_instance_took_part_in() {
        let d = dao();
        let mut b = Bench::new(&d, 3, vec![[1u8; 32]]);
        let mut members = [1, 2, 3].map(|p| b.member_committed(pid(p)));
        b.provider(); // round 0: signer set and packages, by the first instance
        let [m1, m2, m3] = &mut members;
        b.run_member(m1, pid(1), 0);
        // The provider restarts; the new instance is founded at round 0 (the delivery that
        // founded it lacked its earlier messages) and reads the topic.
        b.coord = coordinator_of(&d, vec![[1u8; 32]], 3);
        b.read = 0;
        b.provider();
        // Its own round-0 messages show up later: it moves past round 0.
        b.coord.skip_past(0);
        b.provider();
        assert_eq!(b.coord.round(), 1);
        b.three_rounds([m1, m2, m3], [0, 0, 0]);
        b.verify();
        let rounds: Vec<u32> = b.provider_commitments().iter().map(|(r, _)| *r).collect();
        assert_eq!(*rounds.last().unwrap(), 1, "signed in round 1: {rounds:?}");
        // Skipping a round below the current one, or after the signature, changes nothing.
        b.coord.skip_past(0);
        assert_eq!(b.coord.round(), 1);
    }

    #[test]
    fn early_commitments_that_do_not_decode_or_count_are_refused() {
        let d = dao();
        let mut coord = coordinator_of(&d, vec![[1u8; 32], [2u8; 32]], 3);
        let key = public_key_bytes(&d.members[0]);
        let commitments = |v: Vec<Vec<u8>>| DaoMessage::Commitments {
            request: ByteBuf::from(REQUEST.to_vec()),
            party: pid(1),
            commitments: bufs(v),
            round: 0,
        };
        let bad = coord.absorb(&key, &commitments(vec![vec![1; 66], vec![2; 66]]));
        assert!(matches!(bad, Err(ProtocolError::Culprit { party, .. }) if party == pid(1)));
        let (_, real) =
            Precommitment::<Tr>::new(&d.outputs[0].1[0].1.key_package, pid(1), &mut OsRng).unwrap();
        let short = coord.absorb(&key, &commitments(vec![real.clone()]));
        assert!(matches!(short, Err(ProtocolError::Culprit { .. })));
        // Under another member's key: refused too.
        let other = public_key_bytes(&d.members[1]);
        assert!(
            coord
                .absorb(&other, &commitments(vec![real.clone(), real.clone()]))
                .is_err()
        );
        assert!(
            coord
                .absorb(&key, &commitments(vec![real.clone(), real]))
                .unwrap()
        );
    }

    #[test]
    fn a_member_restarted_before_the_packages_replaces_its_commitments() {
        let d = dao();
        let mut b = Bench::new(&d, 3, vec![[1u8; 32], [2u8; 32]]);
        // Signer set {1, 2, 3} + provider, round 0.
        let [mut m1, mut m2, mut m3] = b.three_approved();
        let mut at1 = b.run_member(&mut m1, pid(1), 0);
        let at2 = b.run_member(&mut m2, pid(2), 0);
        let old = b.mailbox.len();
        // Member 3 commits, and its process stops before the provider read anything.
        b.run_member(&mut m3, pid(3), 0);
        let lost = b.mailbox[old..].to_vec();
        assert!(matches!(
            lost[0].1,
            DaoMessage::Commitments { party, .. } if party == pid(3)
        ));
        drop(m3);
        // Member 3 runs again: new approval (a duplicate), new nonces, new commitments.
        let mut m3 = b.member(pid(3));
        let mut at3 = b.run_member(&mut m3, pid(3), 0);
        b.provider(); // old set, then the replacement: the packages carry the new one
        assert_eq!(b.coord.round(), 0);
        // The old set delivered again late: never taken back.
        assert!(!b.coord.absorb(&lost[0].0, &lost[0].1).unwrap());
        at1 = b.run_member(&mut m1, pid(1), at1);
        let _ = b.run_member(&mut m2, pid(2), at2);
        at3 = b.run_member(&mut m3, pid(3), at3);
        b.provider();
        b.verify();
        assert_eq!(b.provider_commitments().len(), 1, "one package set");
        let _ = (at1, at3);
    }

    #[test]
    fn a_member_restarted_after_the_packages_gets_a_new_round_with_fresh_provider_nonces() {
        let d = dao();
        let mut b = Bench::new(&d, 3, vec![[1u8; 32]]);
        let [mut m1, mut m2, mut m3] = b.three_approved();
        let mut at1 = b.run_member(&mut m1, pid(1), 0);
        let mut at2 = b.run_member(&mut m2, pid(2), 0);
        b.run_member(&mut m3, pid(3), 0);
        b.provider(); // packages of round 0
        // Members 1 and 2 sign round 0; member 3's process stops before it signs.
        at1 = b.run_member(&mut m1, pid(1), at1);
        at2 = b.run_member(&mut m2, pid(2), at2);
        drop(m3);
        b.provider();
        assert!(b.coord.signatures().is_none());
        // Member 3 again: it reads the whole topic, commits anew for round 0, and does not sign
        // the round-0 packages (they carry its lost commitments).
        let mut m3 = b.member(pid(3));
        let at3 = b.run_member(&mut m3, pid(3), 0);
        assert!(
            !b.mailbox
                .iter()
                .any(|(_, m)| matches!(m, DaoMessage::Shares { party, .. } if *party == pid(3))),
            "no share over a package without our commitment"
        );
        b.provider(); // round 1: a new signer set, fresh provider commitments
        assert_eq!(b.coord.round(), 1);
        b.three_rounds([&mut m1, &mut m2, &mut m3], [at1, at2, at3]);
        b.verify();
        let provider = b.provider_commitments();
        assert_eq!(provider.len(), 2, "one package set per round: {provider:?}");
        assert_eq!((provider[0].0, provider[1].0), (0, 1));
        assert_ne!(provider[0].1, provider[1].1, "round 1 drew fresh nonces");
        // Shares of round 0 arriving now change nothing.
        for (sender, m) in b.mailbox.clone() {
            if matches!(m, DaoMessage::Shares { round: 0, .. }) {
                assert!(!b.coord.absorb(&sender, &m).unwrap());
            }
        }
    }

    #[test]
    fn a_member_whose_shares_are_in_cannot_restart_the_round_and_rounds_are_bounded() {
        let d = dao();
        let mut b = Bench::new(&d, 3, vec![[1u8; 32]]);
        let [mut m1, mut m2, mut m3] = b.three_approved();
        b.run_member(&mut m1, pid(1), 0);
        b.run_member(&mut m2, pid(2), 0);
        let at3 = b.run_member(&mut m3, pid(3), 0);
        b.provider();
        b.run_member(&mut m3, pid(3), at3); // member 3 signed round 0
        b.provider();
        // Member 3 restarts: its new commitments are stale (its shares are in).
        let mut again = b.member(pid(3));
        b.run_member(&mut again, pid(3), 0);
        b.provider();
        assert_eq!(b.coord.round(), 0);

        // A member restarting after every package set: at most MAX_ROUNDS rounds, then refused.
        let mut c = Bench::new(&d, 3, vec![[1u8; 32]]);
        for p in PartyId::range(1, 3) {
            c.member(p);
        }
        c.provider();
        let pkp = d.outputs[5].1[0].1.public_key_package.clone();
        let mut refused = None;
        for _ in 0..=MAX_ROUNDS {
            let round = c.coord.round();
            for p in PartyId::range(1, 3) {
                let mut s = c.member(p);
                c.run_member(&mut s, p, 0);
            }
            c.provider(); // packages of `round`
            let mut s = c.member(pid(1));
            let kp = c.key_package(pid(1)).clone();
            let set = DaoMessage::SignerSet {
                request: ByteBuf::from(c.request.to_vec()),
                parties: c.coord.signers().unwrap().to_vec(),
                round,
            };
            let out = s
                .handle_one_key(&public_key_bytes(&d.provider), &set, &kp, &mut OsRng)
                .unwrap();
            c.coord.absorb(&c.member_key(pid(1)), &out[0]).unwrap();
            match c.coord.advance_one_key(&c.provider_keys, &pkp, &mut OsRng) {
                Ok(out) => {
                    let pk = public_key_bytes(&d.provider);
                    c.mailbox.extend(out.into_iter().map(|m| (pk.clone(), m)));
                    c.read = c.mailbox.len();
                }
                Err(e) => {
                    refused = Some(e);
                    break;
                }
            }
        }
        assert!(
            matches!(refused, Some(ProtocolError::Refused { .. })),
            "{refused:?}"
        );
        assert_eq!(c.coord.round(), MAX_ROUNDS - 1);
    }

    #[test]
    fn a_member_catching_up_commits_only_for_the_newest_round_and_future_rounds_are_refused() {
        let d = dao();
        let provider_pk = public_key_bytes(&d.provider);
        let kp = d.outputs[0].1[0].1.key_package.clone();
        let (mut s, _) = MemberSigner::<Tr>::approve(
            [9; 32],
            pid(1),
            provider_pk.clone(),
            vec![[1; 32]],
            "t".into(),
        );
        let set = |round| DaoMessage::SignerSet {
            request: ByteBuf::from(vec![9; 32]),
            parties: vec![pid(1), pid(2), pid(3), pid(6), pid(7), pid(8)],
            round,
        };
        let batch = [(provider_pk.clone(), set(0)), (provider_pk.clone(), set(2))];
        s.look_ahead(batch.iter().map(|(k, m)| (k.as_slice(), m)));
        let mut out = Vec::new();
        for (k, m) in &batch {
            out.extend(s.handle_one_key(k, m, &kp, &mut OsRng).unwrap());
        }
        assert_eq!(out.len(), 1);
        assert!(matches!(out[0], DaoMessage::Commitments { round: 2, .. }));
        // Round 0 again: ignored; round 2 again: ignored (already committed).
        assert!(
            s.handle_one_key(&provider_pk, &set(0), &kp, &mut OsRng)
                .unwrap()
                .is_empty()
        );
        assert!(
            s.handle_one_key(&provider_pk, &set(2), &kp, &mut OsRng)
                .unwrap()
                .is_empty()
        );
        // The coordinator refuses commitments for a round it has not announced.
        let mut coord = coordinator(&d);
        assert!(matches!(
            coord.absorb(&public_key_bytes(&d.members[0]), &out[0]),
            Err(ProtocolError::Culprit { party, .. }) if party == pid(1)
        ));
        assert!(
            Coordinator::<Tr>::new(
                [9; 32],
                vec![[1; 32]],
                3,
                approvers(&d),
                vec![pid(6), pid(7), pid(8)]
            )
            .unwrap()
            .starting_at(MAX_ROUNDS)
            .is_err()
        );
    }
    fn reject(party: PartyId) -> DaoMessage {
        DaoMessage::Reject(Rejection {
            request: ByteBuf::from(vec![9; 32]),
            party,
            reason: Some("no".into()),
        })
    }

    #[test]
    fn rejections_count_against_the_rule_and_a_dead_request_is_refused() {
        let d = dao();
        let pk = |p: PartyId| public_key_bytes(&d.members[usize::from(p) - 1]);
        let approval = |p: PartyId| {
            MemberSigner::<Tr>::approve([9; 32], p, vec![], vec![[1; 32]], String::new()).1
        };
        let mut coord = coordinator(&d);
        // An approval stands: its maker cannot reject afterwards.
        assert!(coord.absorb(&pk(pid(1)), &approval(pid(1))).unwrap());
        assert!(matches!(
            coord.absorb(&pk(pid(1)), &reject(pid(1))),
            Err(ProtocolError::Culprit { party, .. }) if party == pid(1)
        ));
        // A rejection under another member's key is refused; the right one counts once, and
        // stands: its maker cannot approve afterwards.
        assert!(coord.absorb(&pk(pid(3)), &reject(pid(2))).is_err());
        assert!(coord.absorb(&pk(pid(2)), &reject(pid(2))).unwrap());
        assert!(!coord.absorb(&pk(pid(2)), &reject(pid(2))).unwrap());
        assert!(coord.absorb(&pk(pid(2)), &approval(pid(2))).is_err());
        let long = DaoMessage::Reject(Rejection {
            request: ByteBuf::from(vec![9; 32]),
            party: pid(3),
            reason: Some("x".repeat(MAX_REJECTION_REASON + 1)),
        });
        assert!(coord.absorb(&pk(pid(3)), &long).is_err());
        // Five approvers, one rejection: three approvals are still possible.
        assert!(!coord.is_dead());
        coord.absorb(&pk(pid(3)), &reject(pid(3))).unwrap();
        assert!(!coord.is_dead(), "approvers 1, 4, 5 are left");
        coord.absorb(&pk(pid(4)), &reject(pid(4))).unwrap();
        assert!(coord.is_dead());
        let pkp = d.outputs[5].1[0].1.public_key_package.clone();
        assert!(matches!(
            coord.advance_one_key(&BTreeMap::new(), &pkp, &mut OsRng),
            Err(ProtocolError::Refused { .. })
        ));
        assert_eq!(coord.rejections().len(), 3);
    }

    #[test]
    fn a_tally_names_who_is_missing_and_counts_only_what_it_can_check() {
        let members = keys(5);
        let provider = keys(1).pop().unwrap();
        let layout = crate::dao::tests::invitation(&members, &provider)
            .layout()
            .unwrap();
        let pk = |p: PartyId| public_key_bytes(&members[usize::from(p) - 1]);
        let evaluation = Evaluation {
            request: ByteBuf::from(vec![9; 32]),
            sighashes: vec![ByteBuf::from(vec![1; 32])],
            value_leaving: 1,
            fee: 0,
            destinations: Vec::new(),
            rule: "small".into(),
            approvals: 3,
            approvers: vec![pid(1), pid(2), pid(3), pid(4), pid(5)],
            leaving: Vec::new(),
        };
        let mut t = Tally::new([9; 32], &layout, &evaluation).unwrap();
        let name = |p: PartyId| layout.name_of(p).unwrap().to_owned();
        let approval = |p: PartyId, sighash: [u8; 32]| {
            MemberSigner::<Tr>::approve([9; 32], p, vec![], vec![sighash], String::new()).1
        };
        assert!(t.absorb(&pk(pid(1)), &approval(pid(1), [1; 32])));
        // Under another key, or of other sighashes: not counted.
        assert!(!t.absorb(&pk(pid(3)), &approval(pid(2), [1; 32])));
        assert!(!t.absorb(&pk(pid(2)), &approval(pid(2), [2; 32])));
        assert!(t.absorb(&pk(pid(2)), &reject(pid(2))));
        assert_eq!(t.missing(), vec![3, 4, 5]);
        assert_eq!(
            t.describe(&name),
            "1 of 3 approvals; rejected by bob; waiting for carol, dave, eve"
        );
        assert!(t.absorb(&pk(pid(3)), &reject(pid(3))));
        assert!(!t.is_dead());
        assert!(t.absorb(&pk(pid(4)), &reject(pid(4))));
        assert!(t.is_dead());
        assert!(t.missing().is_empty());
        // The provider's word only from the provider.
        let signed = DaoMessage::Signed {
            request: ByteBuf::from(vec![9; 32]),
            txid: "t".into(),
            tx: ByteBuf::new(),
        };
        assert!(!t.absorb(&pk(pid(1)), &signed));
        assert!(t.absorb(&public_key_bytes(&provider), &signed));
        assert_eq!(t.end(), Some(&TallyEnd::Signed("t".into())));

        // Signing: the chosen members' commitments, then shares.
        let mut t = Tally::new([9; 32], &layout, &evaluation).unwrap();
        for p in [1, 2, 3].map(pid) {
            t.absorb(&pk(p), &approval(p, [1; 32]));
        }
        let set = DaoMessage::SignerSet {
            request: ByteBuf::from(vec![9; 32]),
            parties: vec![pid(1), pid(2), pid(3), pid(6), pid(7), pid(8)],
            round: 0,
        };
        assert!(t.absorb(&public_key_bytes(&provider), &set));
        let committed = DaoMessage::Commitments {
            request: ByteBuf::from(vec![9; 32]),
            party: pid(2),
            commitments: Vec::new(),
            round: 0,
        };
        assert!(t.absorb(&pk(pid(2)), &committed));
        assert_eq!(t.missing(), vec![1, 3]);
        assert!(
            t.describe(&name)
                .contains("nonce commitments of alice, carol")
        );

        // Commitments posted with the approvals count once the signer set names their member;
        // a member not chosen, or another member's key, does not count.
        let mut t = Tally::new([9; 32], &layout, &evaluation).unwrap();
        let early = |p: PartyId| DaoMessage::Commitments {
            request: ByteBuf::from(vec![9; 32]),
            party: p,
            commitments: Vec::new(),
            round: 0,
        };
        for p in [1, 2, 3, 4].map(pid) {
            t.absorb(&pk(p), &approval(p, [1; 32]));
        }
        assert!(t.absorb(&pk(pid(1)), &early(pid(1))));
        assert!(t.absorb(&pk(pid(3)), &early(pid(3))));
        assert!(t.absorb(&pk(pid(4)), &early(pid(4))));
        assert!(!t.absorb(&pk(pid(5)), &early(pid(2))));
        assert!(t.absorb(&public_key_bytes(&provider), &set));
        assert_eq!(t.missing(), vec![2]);
        assert!(t.describe(&name).contains("nonce commitments of bob"));
    }
}
