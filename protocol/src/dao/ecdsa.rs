//! An Ethereum treasury's ceremonies over the mailbox: the threshold ECDSA DKG
//! ([`crate::ecdsa::dkg`]) and DKLs23 signing ([`crate::ecdsa::sign`]) among the members and the
//! provider's weighted parties ([`super::weights`]), carried by [`DaoMessage`]s.
//!
//! ```text
//! DKG (attempt a)   every party ── EcdsaDkgHello (HPKE key) ──────────────────────► all
//!                   every party ── EcdsaDkgPart step 1..3 (broadcast + sealed parts) ► all
//!                   every party ── DkgConfirm ─► all;  members ── DkgStored ─► provider ── Activated
//! signing (round r) provider ── SignerSet (its parties + the first approvers) ──────► all
//!                   every signer ── EcdsaSignHello (fresh HPKE key) ──────────────────► all
//!                   every signer ── EcdsaSignPart step 1, 2 (sealed parts), 3 (broadcast)
//!                   provider ── Signed (the signed transaction) ─────────────────────► all
//! ```
//!
//! DKLs23 assumes private point-to-point channels; the mailbox is not one, so every part
//! addressed to one party is sealed to it with HPKE (RFC 9180) under a key it announced for this
//! ceremony alone, the AAD binding wallet, ceremony, step, sender and recipient. A round-3 DKG
//! message carries a base-OT setup for every other party (about 140 KB each), so a message is
//! cut into pieces ([`EcdsaPart`]) that each fit an envelope; every piece repeats the broadcast,
//! and two pieces of one message with different broadcasts are equivocation.
//!
//! DKLs23 signs with exactly `threshold` parties: the provider's `w` parties and the first
//! `threshold − w` (the policy's smallest tier) approving members. A larger tier's further
//! approvals are counted by the provider before it chooses the signer set ([`EcdsaCoordinator`]),
//! exactly as for Bitcoin wallets. Signing secrets (HPKE keys, DKLs23 sessions) live in these
//! values only; a signer that lost them makes the provider open round `r + 1` with fresh ones.

use std::collections::BTreeMap;

use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use super::dkg::{check_member, check_owner, insert_once};
use super::quorum::Quorum;
use super::refresh::{Commitments, DaoRefresh, RefreshProposal};
use super::sign::MAX_ROUNDS;
use super::{DaoMessage, Layout, sighashes_digest};
use crate::ecdsa::dkg::{self as edkg, EcdsaDkg, EcdsaDkgOutput, EcdsaDkgParams, EcdsaHello};
use crate::ecdsa::sign::{self as esign, EcdsaSignMessage, EcdsaSigning, RecoverableSignature};
use crate::ecdsa::{EcdsaKey, EcdsaPublic, tagged};
use crate::error::{ProtocolError, Result};
use crate::hpke::{self, HpkeSecretKey};
use crate::id::{Epoch, PartyId};
use crate::wire::{Confirmation, SealedPackage, WalletId};

/// Most sealed bytes one piece carries: with the broadcast and the envelope's own fields it stays
/// well under `mailbox::MAX_ENVELOPE` (512 KiB).
const PIECE_BUDGET: usize = 320 * 1024;

const TAG_SIGN_INFO: &str = "cosigner/dao-ecdsa-sign/v1/hpke-info";
const TAG_SIGN_AAD: &str = "cosigner/dao-ecdsa-sign/v1/hpke-aad";
const TAG_SIGN_NONCE: &str = "cosigner/dao-ecdsa-sign/v1/nonce";

/// (A piece of) one party's message of one step of a threshold ECDSA ceremony.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EcdsaPart {
    /// Sender.
    pub from: PartyId,
    /// The step: 1 to 3.
    pub step: u8,
    /// The step's broadcast part (the same in every piece of the message).
    pub broadcast: ByteBuf,
    /// Some of the sealed point-to-point parts, each to one other party.
    pub sealed: Vec<SealedPackage>,
}

/// `from`'s message of `step` in pieces that each fit an envelope (at least one piece).
fn pieces(from: PartyId, step: u8, broadcast: &[u8], sealed: Vec<SealedPackage>) -> Vec<EcdsaPart> {
    let piece = |sealed| EcdsaPart {
        from,
        step,
        broadcast: ByteBuf::from(broadcast.to_vec()),
        sealed,
    };
    let mut out = Vec::new();
    let (mut current, mut size) = (Vec::new(), 0usize);
    for s in sealed {
        let len = s.ciphertext.len() + s.enc.len() + 16;
        if !current.is_empty() && size + len > PIECE_BUDGET {
            out.push(piece(std::mem::take(&mut current)));
            size = 0;
        }
        size += len;
        current.push(s);
    }
    out.push(piece(current));
    out
}

/// One party's message of one step, as gathered from its pieces: the broadcast and the sealed
/// parts addressed to our local parties.
#[derive(Default)]
struct Gathered {
    broadcast: Option<ByteBuf>,
    sealed: BTreeMap<PartyId, SealedPackage>,
}

/// The pieces of every party's messages, kept only for our local parties.
#[derive(Default)]
struct Gather {
    steps: BTreeMap<(u8, PartyId), Gathered>,
}

impl Gather {
    /// Takes one piece. Errors: a broadcast differing from another piece's, a sealed part naming
    /// another sender, or a second different part for the same recipient (the sender named).
    fn absorb(&mut self, part: &EcdsaPart, locals: &[PartyId]) -> Result<bool> {
        let from = part.from;
        let entry = self.steps.entry((part.step, from)).or_default();
        let mut changed = false;
        match &entry.broadcast {
            Some(b) if *b != part.broadcast => {
                return Err(ProtocolError::culprit(
                    from,
                    format!("two different broadcasts of its step-{} message", part.step),
                ));
            }
            Some(_) => {}
            None => {
                entry.broadcast = Some(part.broadcast.clone());
                changed = true;
            }
        }
        for s in &part.sealed {
            if s.from != from {
                return Err(ProtocolError::culprit(
                    from,
                    "a sealed part names another sender",
                ));
            }
            if locals.contains(&s.to) && s.to != from {
                changed |= insert_once(&mut entry.sealed, s.to, s, from, "sealed part")?;
            }
        }
        Ok(changed)
    }

    /// Whether `local` has every party's message of `step` (with its sealed part, if `sealed`).
    fn complete(&self, step: u8, parties: &[PartyId], local: PartyId, sealed: bool) -> bool {
        parties.iter().all(|p| {
            self.steps.get(&(step, *p)).is_some_and(|g| {
                g.broadcast.is_some() && (!sealed || *p == local || g.sealed.contains_key(&local))
            })
        })
    }

    /// Every party's message of `step` as `local` reads it: the broadcast and its sealed part.
    fn view(&self, step: u8, local: PartyId) -> Vec<(PartyId, ByteBuf, Option<SealedPackage>)> {
        self.steps
            .iter()
            .filter(|((s, _), _)| *s == step)
            .map(|((_, from), g)| {
                (
                    *from,
                    g.broadcast.clone().unwrap_or_default(),
                    g.sealed.get(&local).cloned(),
                )
            })
            .collect()
    }

    /// Forgets every step below `step` (all our parties are past them).
    fn drop_below(&mut self, step: u8) {
        self.steps.retain(|(s, _), _| *s >= step);
    }

    /// The parties whose message of `step` `local` still lacks.
    fn missing(&self, step: u8, parties: &[PartyId], local: PartyId, sealed: bool) -> Vec<PartyId> {
        parties
            .iter()
            .copied()
            .filter(|p| !self.complete(step, &[*p], local, sealed))
            .collect()
    }
}

/// One local party of a DKG: its state machine, the step whose messages it waits for (0: hellos,
/// 1–3: rounds, 4: confirmations, 5: done) and its output.
struct DkgLocal {
    dkg: Option<EcdsaDkg>,
    step: u8,
    output: Option<EcdsaDkgOutput>,
    confirmation: Option<Confirmation>,
}

/// One holder's side of an Ethereum treasury's DKG over the mailbox (a member's one party, or the
/// provider's weighted parties), in attempt `attempt` of the invitation's DKG. The same interface
/// as [`super::dkg::DaoDkg`].
pub struct EcdsaDaoDkg {
    layout: Layout,
    attempt: u32,
    parties: Vec<PartyId>,
    locals: BTreeMap<PartyId, DkgLocal>,
    hellos: BTreeMap<PartyId, EcdsaHello>,
    gather: Gather,
    confirmations: BTreeMap<PartyId, Confirmation>,
    stored: BTreeMap<PartyId, ByteBuf>,
}

impl std::fmt::Debug for EcdsaDaoDkg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EcdsaDaoDkg")
            .field("wallet_id", &self.layout.wallet_id)
            .field("attempt", &self.attempt)
            .field("locals", &self.locals.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl EcdsaDaoDkg {
    /// Starts attempt `attempt` of the DKG of `layout` as the holder of `key`: its parties'
    /// hellos, to post.
    ///
    /// Errors: `key` holds no party of the layout, the layout is not threshold ECDSA, or too
    /// many attempts ([`ProtocolError::Params`]).
    pub fn start_attempt(
        layout: Layout,
        key: &[u8],
        attempt: u32,
        rng: &mut (impl CryptoRng + RngCore),
    ) -> Result<(Self, Vec<DaoMessage>)> {
        if attempt >= super::dkg::MAX_ATTEMPTS {
            return Err(ProtocolError::Params {
                reason: format!(
                    "the DKG of this invitation was restarted {attempt} times, at most {} \
                     attempts run: make a new invitation",
                    super::dkg::MAX_ATTEMPTS
                ),
            });
        }
        if !layout.is_ecdsa() {
            return Err(ProtocolError::Params {
                reason: "not an Ethereum treasury's invitation".into(),
            });
        }
        let ours = layout.parties_of(key);
        if ours.is_empty() {
            return Err(ProtocolError::Params {
                reason: "this key is neither a member nor the provider of the invitation".into(),
            });
        }
        let params = EcdsaDkgParams::of(&layout.params);
        let mut dkg = Self::empty(layout, attempt);
        let mut out = Vec::new();
        for party in ours {
            let (state, hello) = edkg::start(params.clone(), party, rng)?;
            out.push(dkg.add_local(state, hello));
        }
        Ok((dkg, out))
    }

    /// No local party yet.
    fn empty(layout: Layout, attempt: u32) -> Self {
        Self {
            parties: EcdsaDkgParams::of(&layout.params).parties,
            layout,
            attempt,
            locals: BTreeMap::new(),
            hellos: BTreeMap::new(),
            gather: Gather::default(),
            confirmations: BTreeMap::new(),
            stored: BTreeMap::new(),
        }
    }

    /// Adds a local party's started ceremony; returns its hello, to post.
    fn add_local(&mut self, state: EcdsaDkg, hello: EcdsaHello) -> DaoMessage {
        let party = hello.from;
        self.hellos.insert(party, hello.clone());
        self.locals.insert(
            party,
            DkgLocal {
                dkg: Some(state),
                step: 0,
                output: None,
                confirmation: None,
            },
        );
        DaoMessage::EcdsaDkgHello {
            attempt: self.attempt,
            hello,
        }
    }

    /// The layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The attempt this DKG is.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    fn local_parties(&self) -> Vec<PartyId> {
        self.locals.keys().copied().collect()
    }

    /// Takes one verified message from `sender`. Returns whether it changed anything; messages of
    /// other attempts and ceremonies are ignored.
    ///
    /// Errors: a message for a party `sender` does not hold, equivocation, a confirmation for
    /// another invitation (the message is refused; the DKG goes on).
    pub fn absorb(&mut self, sender: &[u8], message: &DaoMessage) -> Result<bool> {
        if message.dkg_attempt() != Some(self.attempt) {
            return Ok(false);
        }
        match message {
            DaoMessage::EcdsaDkgHello { hello, .. } => {
                check_owner(&self.layout, sender, hello.from, "hello")?;
                insert_once(&mut self.hellos, hello.from, hello, hello.from, "hello")
            }
            DaoMessage::EcdsaDkgPart { part, .. } => {
                check_owner(&self.layout, sender, part.from, "round message")?;
                if !(1..=3).contains(&part.step) {
                    return Err(ProtocolError::culprit(part.from, "a DKG step beyond 3"));
                }
                let locals = self.local_parties();
                self.gather.absorb(part, &locals)
            }
            DaoMessage::DkgConfirm {
                confirmation: c,
                invitation,
                ..
            } => {
                if invitation.as_slice() != self.layout.invitation_hash {
                    return Err(ProtocolError::Disagreement {
                        reason: format!(
                            "party {} confirmed a DKG for another invitation (same wallet id)",
                            c.from
                        ),
                    });
                }
                check_owner(&self.layout, sender, c.from, "confirmation")?;
                insert_once(&mut self.confirmations, c.from, c, c.from, "confirmation")
            }
            DaoMessage::DkgStored {
                party,
                public_key_package,
                ..
            } => {
                check_member(&self.layout, sender, *party, "stored notice")?;
                let key = *party;
                insert_once(
                    &mut self.stored,
                    key,
                    public_key_package,
                    key,
                    "stored notice",
                )
            }
            _ => Ok(false),
        }
    }

    /// Whether `message` is a member's request for a new attempt of this one (see
    /// [`super::dkg::DaoDkg::is_retry`]).
    pub fn is_retry(&self, sender: &[u8], message: &DaoMessage) -> Result<bool> {
        match message {
            DaoMessage::DkgRetry { attempt, party } if *attempt == self.attempt => {
                check_member(&self.layout, sender, *party, "restart request")?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Advances every local party as far as the messages allow; returns what to post. A local
    /// party's messages to another local party are taken at once.
    ///
    /// Errors: a round that fails (the culprit named where one is known); the DKG cannot finish.
    pub fn advance(&mut self, rng: &mut (impl CryptoRng + RngCore)) -> Result<Vec<DaoMessage>> {
        let mut out = Vec::new();
        loop {
            let mut progressed = false;
            for party in self.local_parties() {
                progressed |= self.step_local(party, &mut out, rng)?;
            }
            if !progressed {
                break;
            }
        }
        let lowest = self.locals.values().map(|l| l.step).min().unwrap_or(0);
        self.gather.drop_below(lowest.min(4));
        Ok(out)
    }

    fn step_local(
        &mut self,
        party: PartyId,
        out: &mut Vec<DaoMessage>,
        rng: &mut (impl CryptoRng + RngCore),
    ) -> Result<bool> {
        let step = self.locals.get(&party).map_or(5, |l| l.step);
        let attempt = self.attempt;
        match step {
            0 if self.hellos.len() == self.parties.len() => {
                let hellos: Vec<EcdsaHello> = self.hellos.values().cloned().collect();
                let message = self.local_dkg(party)?.handle_hellos(&hellos, rng)?;
                self.post_round(party, message, out)?;
            }
            1..=3 if self.gather.complete(step, &self.parties, party, true) => {
                let messages = self.round_view(step, party);
                match self.local_dkg(party)?.handle_round(&messages, rng)? {
                    edkg::RoundOutput::Next(message) => self.post_round(party, message, out)?,
                    edkg::RoundOutput::Confirm(c) => {
                        self.confirmations.insert(party, c.clone());
                        out.push(DaoMessage::DkgConfirm {
                            confirmation: c.clone(),
                            invitation: ByteBuf::from(self.layout.invitation_hash.to_vec()),
                            attempt,
                        });
                        let local = self.local_mut(party)?;
                        local.confirmation = Some(c);
                        local.step = 4;
                    }
                }
            }
            4 if self.confirmations.len() == self.parties.len() => {
                let all: Vec<Confirmation> = self.confirmations.values().cloned().collect();
                let local = self.local_mut(party)?;
                let dkg = local
                    .dkg
                    .take()
                    .ok_or_else(|| unexpected("a finished DKG"))?;
                local.output = Some(dkg.handle_confirmations(&all)?);
                local.step = 5;
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Every party's message of round `step` as `local` reads it.
    fn round_view(&self, step: u8, local: PartyId) -> Vec<edkg::EcdsaRound> {
        self.gather
            .view(step, local)
            .into_iter()
            .map(|(from, broadcast, sealed)| edkg::EcdsaRound {
                from,
                round: step,
                broadcast,
                sealed: sealed.into_iter().collect(),
            })
            .collect()
    }

    /// Posts `party`'s round message in pieces, and takes its parts to our other parties now.
    fn post_round(
        &mut self,
        party: PartyId,
        message: edkg::EcdsaRound,
        out: &mut Vec<DaoMessage>,
    ) -> Result<()> {
        let locals = self.local_parties();
        let step = message.round;
        for part in pieces(party, step, &message.broadcast, message.sealed) {
            self.gather.absorb(&part, &locals)?;
            out.push(DaoMessage::EcdsaDkgPart {
                attempt: self.attempt,
                part,
            });
        }
        self.local_mut(party)?.step = step;
        Ok(())
    }

    fn local_mut(&mut self, party: PartyId) -> Result<&mut DkgLocal> {
        self.locals
            .get_mut(&party)
            .ok_or_else(|| unexpected("a party that is not ours"))
    }

    fn local_dkg(&mut self, party: PartyId) -> Result<&mut EcdsaDkg> {
        self.local_mut(party)?
            .dkg
            .as_mut()
            .ok_or_else(|| unexpected("a finished DKG"))
    }

    /// Whether every local party has its share, confirmed by every party.
    pub fn is_done(&self) -> bool {
        self.locals.values().all(|l| l.output.is_some())
    }

    /// The confirmed public side's hash (what [`DaoMessage::DkgStored`] carries), once done.
    pub fn public_key_package_hash(&self) -> Option<[u8; 32]> {
        if !self.is_done() {
            return None;
        }
        let c = self.locals.values().find_map(|l| l.confirmation.as_ref())?;
        c.public_key_package_hash.as_slice().try_into().ok()
    }

    /// A member's notice that its share is stored.
    ///
    /// Errors: not done, or this is the provider's DKG.
    pub fn stored_notice(&self) -> Result<DaoMessage> {
        let hash = self
            .public_key_package_hash()
            .ok_or_else(|| unexpected("a notice before the DKG finished"))?;
        match self.local_parties().as_slice() {
            [party] if !self.layout.provider_parties.contains(party) => Ok(DaoMessage::DkgStored {
                attempt: self.attempt,
                party: *party,
                public_key_package: ByteBuf::from(hash.to_vec()),
            }),
            parties => Err(unexpected(&format!(
                "parties {parties:?} storing their shares"
            ))),
        }
    }

    /// Whether every member said it stored the confirmed key. Errors: one stored another.
    pub fn all_stored(&self) -> Result<bool> {
        super::dkg::all_stored(&self.layout, &self.stored, self.public_key_package_hash())
    }

    /// What this holder waits for, naming the parties.
    pub fn waiting_for(&self) -> String {
        let Some((party, step)) = self
            .locals
            .iter()
            .map(|(p, l)| (*p, l.step))
            .min_by_key(|x| x.1)
        else {
            return "nothing".into();
        };
        let missing = match step {
            0 => self
                .parties
                .iter()
                .copied()
                .filter(|p| !self.hellos.contains_key(p))
                .collect(),
            1..=3 => self.gather.missing(step, &self.parties, party, true),
            4 => self
                .parties
                .iter()
                .copied()
                .filter(|p| !self.confirmations.contains_key(p))
                .collect(),
            _ => {
                let members = self.layout.members.iter().map(|(p, _)| *p);
                let unstored: Vec<PartyId> =
                    members.filter(|p| !self.stored.contains_key(p)).collect();
                return format!("members {unstored:?} to store their shares");
            }
        };
        let what = [
            "hellos",
            "round-1 messages",
            "round-2 messages",
            "round-3 messages",
        ]
        .get(usize::from(step))
        .copied()
        .unwrap_or("confirmations");
        format!("{what} of parties {missing:?}")
    }

    /// Our parties' confirmed shares, once [`Self::is_done`].
    ///
    /// Errors: not done.
    fn outputs(&self) -> Result<Vec<(PartyId, &EcdsaDkgOutput)>> {
        self.locals
            .iter()
            .map(|(party, local)| {
                let output = local.output.as_ref();
                Ok((
                    *party,
                    output.ok_or_else(|| unexpected("outputs before the DKG finished"))?,
                ))
            })
            .collect()
    }

    /// The shares of our parties, with the layout.
    ///
    /// Errors: not done.
    pub fn into_outputs(self) -> Result<(Layout, Vec<(PartyId, EcdsaDkgOutput)>)> {
        let mut outputs = Vec::new();
        for (party, local) in self.locals {
            let output = local
                .output
                .ok_or_else(|| unexpected("outputs before the DKG finished"))?;
            outputs.push((party, output));
        }
        Ok((self.layout, outputs))
    }
}

/// One holder's side of an Ethereum treasury's share refresh over the mailbox: DKLs23's complete
/// refresh ([`edkg::start_refresh`]) of every party's share, carried as the DKG is
/// ([`EcdsaDaoDkg`], attempt 0, in the proposal's topic), then the two-phase commit of
/// [`super::refresh::DaoRefresh`]: every holder stores its new shares as *prepared* and posts
/// [`DaoMessage::Committed`]; the provider makes the new epoch current once every party
/// committed ([`DaoMessage::Refreshed`]), and only then does a member switch. The key and the
/// address stay; a refresh that stops half-way leaves every holder with its old share.
#[derive(Debug)]
pub struct EcdsaDaoRefresh {
    dkg: EcdsaDaoDkg,
    committed: Commitments,
}

impl EcdsaDaoRefresh {
    /// Starts `proposal`'s refresh for every party `key` holds in `layout`, from their current
    /// shares `old` (exactly one per party `key` holds) of the wallet whose public side is
    /// `public`; returns the hellos to post.
    ///
    /// Errors ([`ProtocolError::Params`]): the layout is not a treasury's or the proposal another
    /// wallet's, `key` holds no party, `old` does not cover exactly its parties, or a share is
    /// not of `public`'s key and threshold.
    pub fn start(
        layout: Layout,
        proposal: &RefreshProposal,
        key: &[u8],
        mut old: Vec<EcdsaKey>,
        public: &EcdsaPublic,
        rng: &mut (impl CryptoRng + RngCore),
    ) -> Result<(Self, Vec<DaoMessage>)> {
        proposal.params(&layout)?;
        old.sort_by_key(EcdsaKey::party);
        if !layout.is_ecdsa() {
            return Err(ProtocolError::Params {
                reason: "not an Ethereum treasury".into(),
            });
        }
        let ours = layout.parties_of(key);
        let given: Vec<PartyId> = old.iter().map(EcdsaKey::party).collect();
        if ours.is_empty() || given != ours {
            return Err(ProtocolError::Params {
                reason: format!(
                    "the current shares given are of parties {given:?}, this key holds {ours:?}"
                ),
            });
        }
        let params = EcdsaDkgParams::of(&layout.params);
        let mut dkg = EcdsaDaoDkg::empty(layout, 0);
        let mut out = Vec::new();
        for key in old {
            let (state, hello) = edkg::start_refresh(
                params.clone(),
                key,
                public.clone(),
                proposal.from_epoch,
                rng,
            )?;
            out.push(dkg.add_local(state, hello));
        }
        let refresh = Self {
            dkg,
            committed: Commitments::new(proposal.from_epoch),
        };
        Ok((refresh, out))
    }

    /// The wallet's layout.
    pub fn layout(&self) -> &Layout {
        self.dkg.layout()
    }

    /// The epoch being refreshed (the new shares are of `from_epoch + 1`).
    pub fn from_epoch(&self) -> Epoch {
        self.committed.refreshed_epoch()
    }

    /// Our parties.
    pub fn parties(&self) -> Vec<PartyId> {
        self.dkg.local_parties()
    }

    /// Takes one verified message from `sender`; returns whether it was new. Messages of other
    /// kinds are ignored.
    ///
    /// Errors: as [`EcdsaDaoDkg::absorb`], and a commitment for a party `sender` does not hold
    /// or of another epoch than this refresh makes.
    pub fn absorb(&mut self, sender: &[u8], message: &DaoMessage) -> Result<bool> {
        match message {
            DaoMessage::EcdsaDkgHello { .. }
            | DaoMessage::EcdsaDkgPart { .. }
            | DaoMessage::DkgConfirm { .. } => self.dkg.absorb(sender, message),
            DaoMessage::Committed { parties, epoch } => {
                self.committed
                    .absorb(self.dkg.layout(), sender, parties, *epoch)
            }
            _ => Ok(false),
        }
    }

    /// Advances every local party as far as the messages allow; returns what to post.
    ///
    /// Errors: a round fails (the refresh is over; the old epoch stays, propose a new one).
    pub fn advance(&mut self, rng: &mut (impl CryptoRng + RngCore)) -> Result<Vec<DaoMessage>> {
        self.dkg.advance(rng)
    }

    /// Whether every local party holds its new share, confirmed by every party.
    pub fn is_done(&self) -> bool {
        self.dkg.is_done()
    }

    /// Our new shares (prepared: store them under epoch `from_epoch + 1`, but do not use them
    /// before every party committed and the provider said [`DaoMessage::Refreshed`]).
    ///
    /// Errors: not done.
    pub fn new_shares(&self) -> Result<Vec<(PartyId, &EcdsaDkgOutput)>> {
        self.dkg.outputs()
    }

    /// Our commitment, once done and our new shares are stored as prepared: post it.
    ///
    /// Errors: called before the end.
    pub fn commit(&mut self) -> Result<DaoMessage> {
        self.new_shares()?;
        Ok(self.committed.ours(self.parties()))
    }

    /// Whether every party of the wallet committed the new epoch.
    pub fn all_committed(&self) -> bool {
        self.committed.missing(&self.dkg.parties).is_empty()
    }

    /// What we still wait for, as a progress line.
    pub fn waiting_for(&self) -> String {
        if !self.is_done() {
            return format!("refresh {}", self.dkg.waiting_for());
        }
        let missing = self.committed.missing(&self.dkg.parties);
        format!(
            "commitments of epoch {} from parties {missing:?}",
            self.committed.refreshed_epoch().saturating_next()
        )
    }
}

/// A DAO wallet's share refresh of either scheme: FROST for a Bitcoin wallet
/// ([`DaoRefresh`]), threshold ECDSA for an Ethereum treasury ([`EcdsaDaoRefresh`]).
#[derive(Debug)]
pub enum AnyRefresh {
    /// A Bitcoin wallet's.
    Frost(Box<DaoRefresh<Tr>>),
    /// An Ethereum treasury's.
    Ecdsa(Box<EcdsaDaoRefresh>),
}

/// `$e` on whichever scheme's value `$self` (an [`AnyRefresh`] or [`AnyDkg`], named by `$any`)
/// holds, bound to `$x`.
macro_rules! either {
    ($any:ident, $self:expr, $x:ident => $e:expr) => {
        match $self {
            $any::Frost($x) => $e,
            $any::Ecdsa($x) => $e,
        }
    };
}

impl AnyRefresh {
    /// The epoch being refreshed.
    pub fn from_epoch(&self) -> Epoch {
        either!(AnyRefresh, self, r => r.from_epoch())
    }

    /// Our parties.
    pub fn parties(&self) -> Vec<PartyId> {
        either!(AnyRefresh, self, r => r.parties())
    }

    /// Takes one verified message (see [`DaoRefresh::absorb`]).
    pub fn absorb(&mut self, sender: &[u8], message: &DaoMessage) -> Result<bool> {
        either!(AnyRefresh, self, r => r.absorb(sender, message))
    }

    /// Advances; returns what to post.
    pub fn advance(&mut self, rng: &mut (impl CryptoRng + RngCore)) -> Result<Vec<DaoMessage>> {
        either!(AnyRefresh, self, r => r.advance(rng))
    }

    /// Whether our new shares are made and confirmed.
    pub fn is_done(&self) -> bool {
        either!(AnyRefresh, self, r => r.is_done())
    }

    /// Our commitment (see [`DaoRefresh::commit`]).
    pub fn commit(&mut self) -> Result<DaoMessage> {
        either!(AnyRefresh, self, r => r.commit())
    }

    /// Whether every party committed the new epoch.
    pub fn all_committed(&self) -> bool {
        either!(AnyRefresh, self, r => r.all_committed())
    }

    /// What we wait for.
    pub fn waiting_for(&self) -> String {
        either!(AnyRefresh, self, r => r.waiting_for())
    }
}

fn unexpected(what: &str) -> ProtocolError {
    ProtocolError::UnexpectedMessage {
        expected: "the next step of an Ethereum treasury's ceremony",
        actual: what.to_string(),
    }
}

/// One local signer: its HPKE key of the round, its DKLs23 session, and the step whose messages it
/// waits for (0: hellos, 1–2: the point-to-point rounds, 3: the broadcasts; it sent its last).
struct SignLocal {
    hpke: HpkeSecretKey,
    session: Option<EcdsaSigning>,
    step: u8,
}

/// The signing of one request's digest, in one signing round, by one holder's parties (a chosen
/// member's one, or the provider's): hellos, two sealed point-to-point rounds, a broadcast.
pub struct EcdsaDaoSigning {
    wallet_id: WalletId,
    request: [u8; 32],
    round: u32,
    signers: Vec<PartyId>,
    sign_id: Vec<u8>,
    digest: [u8; 32],
    locals: BTreeMap<PartyId, SignLocal>,
    hellos: BTreeMap<PartyId, EcdsaHello>,
    gather: Gather,
    /// Whether our parties' last broadcasts stay here ([`Self::withholding_last`]).
    withhold_last: bool,
    /// Tests play a cheating signer by changing its messages before they are sealed.
    #[cfg(test)]
    tamper: Option<fn(&mut EcdsaSignMessage)>,
}

impl std::fmt::Debug for EcdsaDaoSigning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EcdsaDaoSigning")
            .field("request", &hex::encode(self.request))
            .field("round", &self.round)
            .field("signers", &self.signers)
            .finish_non_exhaustive()
    }
}

impl EcdsaDaoSigning {
    /// Starts signing `digest` for `request` in `round` with the signer set `signers`, for our
    /// parties `locals`: their hellos, to post.
    pub fn start(
        wallet_id: WalletId,
        request: [u8; 32],
        round: u32,
        signers: &[PartyId],
        locals: &[PartyId],
        digest: [u8; 32],
        rng: &mut (impl CryptoRng + RngCore),
    ) -> Result<(Self, Vec<DaoMessage>)> {
        let mut signers = signers.to_vec();
        signers.sort_unstable();
        signers.dedup();
        let nonce = tagged(TAG_SIGN_NONCE, &[&request, &round.to_be_bytes()]);
        let mut signing = Self {
            sign_id: esign::sign_id(&wallet_id, &signers, &nonce),
            wallet_id,
            request,
            round,
            signers,
            digest,
            locals: BTreeMap::new(),
            hellos: BTreeMap::new(),
            gather: Gather::default(),
            withhold_last: false,
            #[cfg(test)]
            tamper: None,
        };
        let mut out = Vec::new();
        for &party in locals {
            if !signing.signers.contains(&party) {
                return Err(ProtocolError::Params {
                    reason: format!("party {party} is not in the signer set"),
                });
            }
            let (hpke, public) = hpke::generate_keypair(rng);
            let hello = EcdsaHello {
                from: party,
                hpke_public_key: ByteBuf::from(public),
            };
            signing.hellos.insert(party, hello.clone());
            out.push(DaoMessage::EcdsaSignHello {
                request: ByteBuf::from(request.to_vec()),
                round,
                hello,
            });
            signing.locals.insert(
                party,
                SignLocal {
                    hpke,
                    session: None,
                    step: 0,
                },
            );
        }
        Ok((signing, out))
    }

    /// The signing round.
    pub fn round(&self) -> u32 {
        self.round
    }

    /// Keeps our parties' step-3 broadcasts instead of posting them: whoever holds every signer's
    /// step-3 broadcast can finish the signature, so the provider, which must judge and record the
    /// spend before the signature exists anywhere else, finishes it alone ([`Self::finish`]) and
    /// publishes only the signed transaction.
    pub fn withholding_last(mut self) -> Self {
        self.withhold_last = true;
        self
    }

    /// The signer set.
    pub fn signers(&self) -> &[PartyId] {
        &self.signers
    }

    fn local_parties(&self) -> Vec<PartyId> {
        self.locals.keys().copied().collect()
    }

    /// The hello `party` announced in this round, if any.
    pub fn hello_of(&self, party: PartyId) -> Option<&EcdsaHello> {
        self.hellos.get(&party)
    }

    /// Takes a signer's hello or piece of this round (its sender checked by the caller).
    ///
    /// Errors: a party outside the signer set, a step beyond 3, equivocation.
    pub fn absorb(&mut self, message: &DaoMessage) -> Result<bool> {
        match message {
            DaoMessage::EcdsaSignHello { hello, .. } => {
                self.check_signer(hello.from)?;
                insert_once(&mut self.hellos, hello.from, hello, hello.from, "hello")
            }
            DaoMessage::EcdsaSignPart { part, .. } => {
                self.check_signer(part.from)?;
                if !(1..=3).contains(&part.step) {
                    return Err(ProtocolError::culprit(part.from, "a signing step beyond 3"));
                }
                let locals = self.local_parties();
                self.gather.absorb(part, &locals)
            }
            _ => Ok(false),
        }
    }

    fn check_signer(&self, party: PartyId) -> Result<()> {
        if self.signers.contains(&party) {
            Ok(())
        } else {
            Err(ProtocolError::culprit(party, "it is not in the signer set"))
        }
    }

    /// Advances our parties as far as the messages allow, with their keys; returns what to post.
    ///
    /// Errors: a message that does not open or verify (the culprit named).
    pub fn advance(
        &mut self,
        keys: &BTreeMap<PartyId, &EcdsaKey>,
        rng: &mut (impl CryptoRng + RngCore),
    ) -> Result<Vec<DaoMessage>> {
        let mut out = Vec::new();
        loop {
            let mut progressed = false;
            for party in self.local_parties() {
                let key = keys
                    .get(&party)
                    .ok_or_else(|| unexpected("signing without the party's key"))?;
                progressed |= self.step_local(party, key, &mut out, rng)?;
            }
            if !progressed {
                break;
            }
        }
        Ok(out)
    }

    fn step_local(
        &mut self,
        party: PartyId,
        key: &EcdsaKey,
        out: &mut Vec<DaoMessage>,
        rng: &mut (impl CryptoRng + RngCore),
    ) -> Result<bool> {
        let step = self.locals.get(&party).map_or(4, |l| l.step);
        let message = match step {
            0 if self.hellos.len() == self.signers.len() => {
                let (session, first) =
                    esign::start(key, &self.signers, self.sign_id.clone(), self.digest)?;
                self.local_mut(party)?.session = Some(session);
                first
            }
            1 | 2 if self.gather.complete(step, &self.signers, party, true) => {
                let received = self.opened(step, party)?;
                let local = self.local_mut(party)?;
                let session = local
                    .session
                    .as_mut()
                    .ok_or_else(|| unexpected("a signing step without a session"))?;
                if step == 1 {
                    session.round2(key, &received)?
                } else {
                    session.round3(key, &received)?
                }
            }
            _ => return Ok(false),
        };
        self.post(party, message, out, rng)?;
        Ok(true)
    }

    /// The sealed parts of `step` addressed to `local`, opened.
    fn opened(&self, step: u8, local: PartyId) -> Result<Vec<EcdsaSignMessage>> {
        let secret = &self
            .locals
            .get(&local)
            .ok_or_else(|| unexpected("a party that is not ours"))?
            .hpke;
        let mut out = Vec::new();
        for (from, _, sealed) in self.gather.view(step, local) {
            if from == local {
                continue;
            }
            let sealed = sealed.ok_or_else(|| unexpected("a missing sealed part"))?;
            let aad = self.aad(step, from, local);
            let body = hpke::open(secret, &self.info(), &aad, &sealed.enc, &sealed.ciphertext)
                .map_err(|e| {
                    ProtocolError::culprit(from, format!("step-{step} part does not open: {e}"))
                })?;
            out.push(EcdsaSignMessage {
                from,
                round: step,
                body: ByteBuf::from(body.to_vec()),
            });
        }
        Ok(out)
    }

    /// Posts `party`'s message of the next step: sealed per recipient (steps 1, 2) or broadcast
    /// (step 3); its parts to our other parties are taken at once.
    fn post(
        &mut self,
        party: PartyId,
        #[cfg_attr(not(test), allow(unused_mut))] mut message: EcdsaSignMessage,
        out: &mut Vec<DaoMessage>,
        rng: &mut (impl CryptoRng + RngCore),
    ) -> Result<()> {
        #[cfg(test)]
        if let Some(tamper) = self.tamper {
            tamper(&mut message);
        }
        let step = message.round;
        let (broadcast, sealed) = if step == 3 {
            (message.body.to_vec(), Vec::new())
        } else {
            let mut sealed = Vec::new();
            for (to, piece) in esign::split(&message)? {
                let hello = self
                    .hellos
                    .get(&to)
                    .ok_or_else(|| unexpected("a signer without a hello"))?;
                let aad = self.aad(step, party, to);
                let (enc, ciphertext) =
                    hpke::seal(&hello.hpke_public_key, &self.info(), &aad, &piece.body, rng)?;
                sealed.push(SealedPackage {
                    from: party,
                    to,
                    enc: ByteBuf::from(enc),
                    ciphertext: ByteBuf::from(ciphertext),
                });
            }
            (Vec::new(), sealed)
        };
        let locals = self.local_parties();
        for part in pieces(party, step, &broadcast, sealed) {
            self.gather.absorb(&part, &locals)?;
            if step == 3 && self.withhold_last {
                // Kept: with every signer's last broadcast, anyone can finish the signature.
                continue;
            }
            out.push(DaoMessage::EcdsaSignPart {
                request: ByteBuf::from(self.request.to_vec()),
                round: self.round,
                part,
            });
        }
        self.local_mut(party)?.step = step;
        Ok(())
    }

    /// Whether every one of our parties sent its last message.
    pub fn is_sent(&self) -> bool {
        self.locals.values().all(|l| l.step >= 3)
    }

    /// Once every signer's step-3 broadcast is in: the signature, finished by our lowest party
    /// (with its key).
    ///
    /// Errors: a broadcast that does not verify (the culprit named where known).
    pub fn finish(
        &mut self,
        keys: &BTreeMap<PartyId, &EcdsaKey>,
    ) -> Result<Option<RecoverableSignature>> {
        let Some(party) = self.local_parties().first().copied() else {
            return Ok(None);
        };
        if !self.is_sent() || !self.gather.complete(3, &self.signers, party, false) {
            return Ok(None);
        }
        let key = keys
            .get(&party)
            .ok_or_else(|| unexpected("finishing without the party's key"))?;
        let others: Vec<EcdsaSignMessage> = self
            .gather
            .view(3, party)
            .into_iter()
            .filter(|(from, _, _)| *from != party)
            .map(|(from, body, _)| EcdsaSignMessage {
                from,
                round: 3,
                body,
            })
            .collect();
        let local = self
            .locals
            .get_mut(&party)
            .ok_or_else(|| unexpected("a party that is not ours"))?;
        let session = local
            .session
            .take()
            .ok_or_else(|| unexpected("a finished signature"))?;
        session.finish(key, &others).map(Some)
    }

    /// The signers whose message of the step our parties wait for.
    pub fn waiting_for(&self) -> Vec<PartyId> {
        let Some((party, step)) = self
            .locals
            .iter()
            .map(|(p, l)| (*p, l.step))
            .min_by_key(|x| x.1)
        else {
            return Vec::new();
        };
        match step {
            0 => self
                .signers
                .iter()
                .copied()
                .filter(|p| !self.hellos.contains_key(p))
                .collect(),
            1..=3 => self.gather.missing(step, &self.signers, party, step < 3),
            _ => Vec::new(),
        }
    }

    fn local_mut(&mut self, party: PartyId) -> Result<&mut SignLocal> {
        self.locals
            .get_mut(&party)
            .ok_or_else(|| unexpected("a party that is not ours"))
    }

    fn info(&self) -> Vec<u8> {
        tagged(TAG_SIGN_INFO, &[self.wallet_id.as_slice()]).to_vec()
    }

    fn aad(&self, step: u8, from: PartyId, to: PartyId) -> Vec<u8> {
        tagged(
            TAG_SIGN_AAD,
            &[
                &self.sign_id,
                &self.request,
                &self.round.to_be_bytes(),
                &[step],
                &from.get().to_be_bytes(),
                &to.get().to_be_bytes(),
            ],
        )
        .to_vec()
    }
}

/// The request a signing message belongs to and its round, with the sender's party.
fn sign_message_of(request: &[u8; 32], message: &DaoMessage) -> Option<(PartyId, u32)> {
    match message {
        DaoMessage::EcdsaSignHello {
            request: theirs,
            round,
            hello,
        } if theirs.as_slice() == request => Some((hello.from, *round)),
        DaoMessage::EcdsaSignPart {
            request: theirs,
            round,
            part,
        } if theirs.as_slice() == request => Some((part.from, *round)),
        _ => None,
    }
}

/// The provider's side of an Ethereum treasury's signing request: it counts approvals of the
/// digest it computed itself, chooses the signer set (its parties and the first approvers), signs
/// with its parties and finishes the signature. A chosen member that lost its state (a second,
/// different hello in the round) makes it open the next round, with fresh secrets.
pub struct EcdsaCoordinator {
    wallet_id: WalletId,
    request: [u8; 32],
    digest: [u8; 32],
    quorum: Quorum,
    provider_parties: Vec<PartyId>,
    threshold: u16,
    round: u32,
    restart: bool,
    /// How often each member made the request open a new round (0: it was replaced for silence).
    restarts: BTreeMap<PartyId, u32>,
    /// The time the caller last gave ([`Self::replace_silent`]), and when the round's signer set
    /// was chosen (ms).
    clock: u64,
    round_started: u64,
    signing: Option<EcdsaDaoSigning>,
    signature: Option<RecoverableSignature>,
}

impl std::fmt::Debug for EcdsaCoordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EcdsaCoordinator")
            .field("request", &hex::encode(self.request))
            .field("round", &self.round)
            .field("signing", &self.signing)
            .finish_non_exhaustive()
    }
}

impl EcdsaCoordinator {
    /// A coordinator for `request` whose transaction's signing hash is `digest`, needing
    /// `approvals_needed` among `approvers`, on the wallet of `layout`.
    ///
    /// Errors: fewer approvers than needed, or fewer approvers than the signer set needs
    /// ([`ProtocolError::Params`]).
    pub fn new(
        layout: &Layout,
        request: [u8; 32],
        digest: [u8; 32],
        approvals_needed: u16,
        approvers: BTreeMap<PartyId, Vec<u8>>,
    ) -> Result<Self> {
        let threshold = layout.params.min_signers;
        let members_signing = usize::from(threshold).saturating_sub(layout.provider_parties.len());
        if usize::from(approvals_needed) < members_signing {
            return Err(ProtocolError::Params {
                reason: format!(
                    "the rule needs {approvals_needed} approvals; signing needs {members_signing} \
                     members"
                ),
            });
        }
        let quorum_digest = sighashes_digest(&request, &[digest]);
        Ok(Self {
            wallet_id: layout.wallet_id,
            quorum: Quorum::new(request, approvers, approvals_needed, quorum_digest)?,
            request,
            digest,
            provider_parties: layout.provider_parties.clone(),
            threshold,
            round: 0,
            restart: false,
            restarts: BTreeMap::new(),
            clock: 0,
            round_started: 0,
            signing: None,
            signature: None,
        })
    }

    /// Starts at signing round `round` (founded again after a restart, see
    /// [`super::sign::Coordinator::starting_at`]).
    pub fn starting_at(mut self, round: u32) -> Result<Self> {
        if round >= MAX_ROUNDS {
            return Err(too_many_rounds());
        }
        self.round = round;
        Ok(self)
    }

    /// The approvals and rejections so far.
    pub fn quorum(&self) -> &Quorum {
        &self.quorum
    }

    /// The current signing round.
    pub fn round(&self) -> u32 {
        self.round
    }

    /// An earlier instance of this coordinator (before the provider restarted) took part in
    /// signing round `round`, with secrets that are gone: if that is this round or a later one,
    /// the next [`Self::advance`] opens the round after it, before the signature is made.
    pub fn skip_past(&mut self, round: u32) {
        if self.signature.is_none() && round >= self.round {
            self.round = round;
            self.restart = true;
        }
    }

    /// Whether the rule's approvals can no longer be reached (before a signer set is chosen).
    pub fn is_dead(&self) -> bool {
        self.signing.is_none() && self.quorum.is_dead()
    }

    /// The member parties signing in the current round.
    pub fn chosen_members(&self) -> Vec<PartyId> {
        self.signing
            .as_ref()
            .map(|s| {
                s.signers()
                    .iter()
                    .filter(|p| !self.provider_parties.contains(p))
                    .copied()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Takes one verified message from `sender`. Returns whether it changed anything.
    ///
    /// Errors (the message is refused, the request goes on): approvals of other digests, signing
    /// messages from non-signers, for rounds not announced, or under another key.
    pub fn absorb(&mut self, sender: &[u8], message: &DaoMessage) -> Result<bool> {
        if matches!(message, DaoMessage::Approval(_) | DaoMessage::Reject(_)) {
            return self.quorum.absorb(sender, message);
        }
        let Some((party, round)) = sign_message_of(&self.request, message) else {
            return Ok(false);
        };
        if self.provider_parties.contains(&party) {
            // Our own parties' messages are taken when made; a copy signed by anyone else is not ours.
            return Ok(false);
        }
        self.quorum.check_member(sender, party, "signing message")?;
        if round > self.round {
            return Err(ProtocolError::culprit(
                party,
                format!("signing round {round}, the current round is {}", self.round),
            ));
        }
        if round < self.round || self.restart {
            return Ok(false);
        }
        let Some(signing) = self.signing.as_mut() else {
            return Err(ProtocolError::culprit(
                party,
                "it signed before the signer set",
            ));
        };
        if let DaoMessage::EcdsaSignHello { hello, .. } = message
            && signing.hello_of(party).is_some_and(|h| h != hello)
        {
            // A second, different hello: the member's process lost its round secrets. Each
            // member may cost the request this few rounds; the next round prefers approvers
            // that did not restart, so one member cannot keep a request from being signed.
            let restarts = self.restarts.entry(party).or_default();
            if *restarts >= MAX_MEMBER_RESTARTS {
                return Err(ProtocolError::culprit(
                    party,
                    format!("it restarted signing {MAX_MEMBER_RESTARTS} times already"),
                ));
            }
            *restarts += 1;
            self.restart = true;
            return Ok(true);
        }
        signing.absorb(message)
    }

    /// With the time now (ms): if the round's signer set was chosen more than [`SILENT_MS`] ago
    /// and chosen members still owe their messages while approvers that were not chosen could
    /// take their places, the next [`Self::advance`] opens a new round in which the silent ones
    /// come last. Returns them. A member that approved and went away cannot hold a request until
    /// it expires while others wait to sign.
    pub fn replace_silent(&mut self, now_ms: u64) -> Vec<PartyId> {
        self.clock = now_ms;
        let Some(signing) = self.signing.as_ref() else {
            return Vec::new();
        };
        if self.restart
            || self.signature.is_some()
            || now_ms.saturating_sub(self.round_started) < SILENT_MS
        {
            return Vec::new();
        }
        let chosen = self.chosen_members();
        let silent: Vec<PartyId> = signing
            .waiting_for()
            .into_iter()
            .filter(|p| chosen.contains(p))
            .collect();
        let spare = self
            .quorum
            .approvals()
            .iter()
            .any(|p| !chosen.contains(p) && !self.restarts.contains_key(p));
        if silent.is_empty() || !spare {
            return Vec::new();
        }
        for party in &silent {
            self.restarts.entry(*party).or_insert(0);
        }
        self.restart = true;
        silent
    }

    /// Whether [`Self::advance`] will use the provider's keys now.
    pub fn needs_keys(&self) -> bool {
        self.signature.is_none() && (self.signing.is_some() || self.quorum.is_reached())
    }

    /// Advances as far as the messages allow: a new round if a chosen member lost its state, the
    /// signer set once enough approvals are in, the provider's parties' steps, and the signature
    /// once every signer's last step is in. `keys` are the provider's shares by party.
    ///
    /// Errors: the request is dead or ran out of rounds ([`ProtocolError::Refused`]); a signer's
    /// message that does not verify.
    pub fn advance(
        &mut self,
        keys: &BTreeMap<PartyId, &EcdsaKey>,
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
        if self.signature.is_some() {
            return Ok(out);
        }
        if self.restart {
            self.round = self.round.saturating_add(1);
            if self.round >= MAX_ROUNDS {
                return Err(too_many_rounds());
            }
            self.restart = false;
            self.signing = None;
        }
        if self.signing.is_none() && self.quorum.is_reached() {
            out.extend(self.choose_signers(rng)?);
        }
        let Some(signing) = self.signing.as_mut() else {
            return Ok(out);
        };
        out.extend(signing.advance(keys, rng)?);
        self.signature = signing.finish(keys)?;
        Ok(out)
    }

    fn choose_signers(&mut self, rng: &mut (impl CryptoRng + RngCore)) -> Result<Vec<DaoMessage>> {
        let members = usize::from(self.threshold).saturating_sub(self.provider_parties.len());
        // The first approvers, those that never restarted this request first.
        let approvals = self.quorum.approvals();
        let steady = approvals.iter().filter(|p| !self.restarts.contains_key(p));
        let restarted = approvals.iter().filter(|p| self.restarts.contains_key(p));
        let mut signers: Vec<PartyId> = steady.chain(restarted).take(members).copied().collect();
        signers.extend(&self.provider_parties);
        signers.sort_unstable();
        let (signing, hellos) = EcdsaDaoSigning::start(
            self.wallet_id,
            self.request,
            self.round,
            &signers,
            &self.provider_parties,
            self.digest,
            rng,
        )?;
        self.signing = Some(signing.withholding_last());
        self.round_started = self.clock;
        let mut out = vec![DaoMessage::SignerSet {
            request: ByteBuf::from(self.request.to_vec()),
            parties: signers,
            round: self.round,
        }];
        out.extend(hellos);
        Ok(out)
    }

    /// The signature, once made.
    pub fn signature(&self) -> Option<&RecoverableSignature> {
        self.signature.as_ref()
    }

    /// The signers whose messages the current round waits for.
    pub fn waiting_for(&self) -> Vec<PartyId> {
        self.signing
            .as_ref()
            .map(EcdsaDaoSigning::waiting_for)
            .unwrap_or_default()
    }
}

/// How long a chosen member may owe its messages before another approver takes its place
/// ([`EcdsaCoordinator::replace_silent`]).
pub const SILENT_MS: u64 = 60_000;

/// Rounds one member may make a request open by restarting (see [`EcdsaCoordinator::absorb`]).
const MAX_MEMBER_RESTARTS: u32 = 2;

fn too_many_rounds() -> ProtocolError {
    ProtocolError::Refused {
        reason: format!("signers stopped mid-signature {MAX_ROUNDS} times; make a new request"),
    }
}

/// A member's side of an Ethereum treasury's signing request, after it approved: it follows the
/// provider's newest signer set and, when chosen, signs the digest it computed itself.
pub struct EcdsaMember {
    layout: Layout,
    wallet_id: WalletId,
    request: [u8; 32],
    party: PartyId,
    provider_key: Vec<u8>,
    signers_needed: usize,
    digest: [u8; 32],
    /// Signer sets of rounds below this are ignored.
    floor: u32,
    signing: Option<EcdsaDaoSigning>,
}

impl std::fmt::Debug for EcdsaMember {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EcdsaMember")
            .field("request", &hex::encode(self.request))
            .field("party", &self.party)
            .field("signing", &self.signing)
            .finish_non_exhaustive()
    }
}

impl EcdsaMember {
    /// Member `party` of the wallet of `layout`, signing `digest` (computed by itself from the
    /// request's transaction) for `request`.
    pub fn new(layout: &Layout, request: [u8; 32], party: PartyId, digest: [u8; 32]) -> Self {
        Self {
            layout: layout.clone(),
            wallet_id: layout.wallet_id,
            request,
            party,
            provider_key: layout.provider_key.clone(),
            signers_needed: usize::from(layout.params.min_signers),
            digest,
            floor: 0,
            signing: None,
        }
    }

    /// Starts at signing round `round`: this member's process posted a hello in an earlier
    /// round whose secrets died with it, so it joins only newer rounds.
    pub fn from_round(mut self, round: u32) -> Self {
        self.floor = round;
        self
    }

    /// What a member whose process lost its secrets of round `round` (it posted a hello there,
    /// but not its last step) posts: a new hello for that round, whose key nobody keeps. The
    /// parts the others sealed to its old key can never be opened, so the round cannot finish;
    /// the new hello tells the provider so, and it opens the next round. This member then joins
    /// only newer rounds.
    pub fn lost_round(&mut self, round: u32, rng: &mut (impl CryptoRng + RngCore)) -> DaoMessage {
        let (_, public) = hpke::generate_keypair(rng);
        self.floor = self.floor.max(round.saturating_add(1));
        DaoMessage::EcdsaSignHello {
            request: ByteBuf::from(self.request.to_vec()),
            round,
            hello: EcdsaHello {
                from: self.party,
                hpke_public_key: ByteBuf::from(public),
            },
        }
    }

    /// Whether this member is signing in the current round.
    pub fn chosen(&self) -> bool {
        self.signing.is_some()
    }

    /// Takes a batch of verified messages (in mailbox order); returns what to post. A signer
    /// set from the provider naming this member in a round at least the floor starts (or
    /// restarts) its signing with fresh secrets.
    ///
    /// Errors: a signer's message that does not verify (the culprit named).
    pub fn handle(
        &mut self,
        key: &EcdsaKey,
        batch: &[(Vec<u8>, DaoMessage)],
        rng: &mut (impl CryptoRng + RngCore),
    ) -> Result<Vec<DaoMessage>> {
        let mut out = Vec::new();
        for (sender, message) in batch {
            if let DaoMessage::SignerSet {
                request,
                parties,
                round,
            } = message
                && *sender == self.provider_key
                && request.as_slice() == self.request
                && *round >= self.floor
                && self.signing.as_ref().is_none_or(|s| *round > s.round())
            {
                self.floor = *round;
                self.signing = None;
                if parties.contains(&self.party) && parties.len() == self.signers_needed {
                    let (signing, hellos) = EcdsaDaoSigning::start(
                        self.wallet_id,
                        self.request,
                        *round,
                        parties,
                        &[self.party],
                        self.digest,
                        rng,
                    )?;
                    self.signing = Some(signing);
                    out.extend(hellos);
                }
            }
        }
        let started = !out.is_empty();
        let Some(signing) = self.signing.as_mut() else {
            return Ok(out);
        };
        for (sender, message) in batch {
            let Some((party, round)) = sign_message_of(&self.request, message) else {
                continue;
            };
            if round != signing.round() || party == self.party {
                continue;
            }
            // Each party's messages under its holder's key (the provider's for its parties). A
            // peer's equivocation is not ours to judge (the provider opens a new round on it):
            // its second message is left out here rather than ending this member's signing.
            if check_owner(&self.layout, sender, party, "signing message").is_err() {
                continue;
            }
            let _ = signing.absorb(message);
        }
        if started {
            // A new round's hello goes out before any step of the round runs (the next call).
            return Ok(out);
        }
        let keys = BTreeMap::from([(self.party, key)]);
        out.extend(signing.advance(&keys, rng)?);
        Ok(out)
    }
}

/// The FROST suite of Bitcoin DAO wallets.
type Tr = frost_secp256k1_tr::Secp256K1Sha256TR;

/// A DAO wallet's DKG of either scheme, as its invitation's suite says: FROST for a Bitcoin
/// wallet ([`super::dkg::DaoDkg`]), threshold ECDSA for an Ethereum treasury ([`EcdsaDaoDkg`]).
#[derive(Debug)]
pub enum AnyDkg {
    /// A Bitcoin wallet's.
    Frost(Box<super::dkg::DaoDkg<Tr>>),
    /// An Ethereum treasury's.
    Ecdsa(Box<EcdsaDaoDkg>),
}

/// What [`AnyDkg`] makes: our parties' shares.
#[derive(Debug)]
pub enum AnyOutputs {
    /// FROST key packages.
    Frost(super::dkg::Outputs<Tr>),
    /// Threshold ECDSA shares.
    Ecdsa(Vec<(PartyId, EcdsaDkgOutput)>),
}

impl AnyDkg {
    /// Starts attempt `attempt` of the DKG of `layout`'s scheme as the holder of `key`.
    pub fn start_attempt(
        layout: Layout,
        key: &[u8],
        attempt: u32,
        rng: &mut (impl CryptoRng + RngCore),
    ) -> Result<(Self, Vec<DaoMessage>)> {
        if layout.is_ecdsa() {
            let (d, out) = EcdsaDaoDkg::start_attempt(layout, key, attempt, rng)?;
            Ok((Self::Ecdsa(Box::new(d)), out))
        } else {
            let (d, out) = super::dkg::DaoDkg::start_attempt(layout, key, attempt, rng)?;
            Ok((Self::Frost(Box::new(d)), out))
        }
    }

    /// The layout.
    pub fn layout(&self) -> &Layout {
        either!(AnyDkg, self, d => d.layout())
    }

    /// The attempt.
    pub fn attempt(&self) -> u32 {
        either!(AnyDkg, self, d => d.attempt())
    }

    /// Takes one verified message (see [`super::dkg::DaoDkg::absorb`]).
    pub fn absorb(&mut self, sender: &[u8], message: &DaoMessage) -> Result<bool> {
        either!(AnyDkg, self, d => d.absorb(sender, message))
    }

    /// Whether `message` asks for a new attempt.
    pub fn is_retry(&self, sender: &[u8], message: &DaoMessage) -> Result<bool> {
        either!(AnyDkg, self, d => d.is_retry(sender, message))
    }

    /// Advances; returns what to post.
    pub fn advance(&mut self, rng: &mut (impl CryptoRng + RngCore)) -> Result<Vec<DaoMessage>> {
        either!(AnyDkg, self, d => d.advance(rng))
    }

    /// Whether our shares are made and confirmed.
    pub fn is_done(&self) -> bool {
        either!(AnyDkg, self, d => d.is_done())
    }

    /// Whether every member stored the confirmed key.
    pub fn all_stored(&self) -> Result<bool> {
        either!(AnyDkg, self, d => d.all_stored())
    }

    /// A member's notice that its share is stored.
    pub fn stored_notice(&self) -> Result<DaoMessage> {
        either!(AnyDkg, self, d => d.stored_notice())
    }

    /// What we wait for.
    pub fn waiting_for(&self) -> String {
        either!(AnyDkg, self, d => d.waiting_for())
    }

    /// Our shares, with the layout.
    pub fn into_outputs(self) -> Result<(Layout, AnyOutputs)> {
        match self {
            Self::Frost(d) => d.into_outputs().map(|(l, o)| (l, AnyOutputs::Frost(o))),
            Self::Ecdsa(d) => d.into_outputs().map(|(l, o)| (l, AnyOutputs::Ecdsa(o))),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;
    use crate::auth::public_key_bytes;
    use crate::dao::Approval;
    use crate::dao::tests::{invitation, keys};
    use crate::id::pid;
    use crate::wire::SUITE_SECP256K1_ECDSA;
    use rand_core::OsRng;

    type Mail = Vec<(Vec<u8>, DaoMessage)>;

    /// A treasury of three members whose smallest tier is 2 approvals: the provider holds
    /// w = 2 parties (4 and 5), the threshold is 4 of 5.
    fn treasury() -> (
        Vec<p256::ecdsa::SigningKey>,
        p256::ecdsa::SigningKey,
        Layout,
    ) {
        let members = keys(3);
        let provider = keys(1).pop().unwrap();
        let mut inv = invitation(&members, &provider);
        inv.ciphersuite = SUITE_SECP256K1_ECDSA.into();
        inv.network = "ethereum".into();
        inv.policy = "[[rule]]\nname = \"small\"\nbelow = \"10 ETH\"\napprovals = 2\n\
                      [[rule]]\nname = \"large\"\napprovals = 3\n"
            .into();
        let layout = inv.layout().unwrap();
        assert_eq!(layout.params.min_signers, 4);
        assert_eq!(layout.provider_parties, vec![pid(4), pid(5)]);
        (members, provider, layout)
    }

    /// Runs the DKG through a mailbox every holder reads in full, in order.
    fn run_dkg(holders: &mut [(Vec<u8>, EcdsaDaoDkg)], mail: &mut Mail) {
        for _ in 0..12 {
            if holders.iter().all(|(_, d)| d.is_done()) {
                return;
            }
            let snapshot = mail.clone();
            for (key, dkg) in holders.iter_mut() {
                for (sender, m) in &snapshot {
                    dkg.absorb(sender, m).unwrap();
                }
                let out = dkg.advance(&mut OsRng).unwrap();
                mail.extend(out.into_iter().map(|m| (key.clone(), m)));
            }
        }
        panic!(
            "the DKG did not converge: {:?}",
            holders
                .iter()
                .map(|(_, d)| d.waiting_for())
                .collect::<Vec<_>>()
        );
    }

    /// The treasury's DKG run to the end: every holder's key, and every party's share.
    fn made_treasury() -> (Vec<Vec<u8>>, Layout, Vec<(PartyId, EcdsaDkgOutput)>) {
        let (members, provider, layout) = treasury();
        let keys_of: Vec<Vec<u8>> = members
            .iter()
            .chain(std::iter::once(&provider))
            .map(public_key_bytes)
            .collect();
        let mut mail: Mail = Vec::new();
        let mut holders = Vec::new();
        for key in &keys_of {
            let (d, out) = EcdsaDaoDkg::start_attempt(layout.clone(), key, 0, &mut OsRng).unwrap();
            mail.extend(out.into_iter().map(|m| (key.clone(), m)));
            holders.push((key.clone(), d));
        }
        run_dkg(&mut holders, &mut mail);
        let outputs = holders
            .into_iter()
            .flat_map(|(_, d)| d.into_outputs().unwrap().1)
            .collect();
        (keys_of, layout, outputs)
    }

    #[test]
    fn a_treasury_refreshes_to_the_same_key_and_its_old_shares_sign_with_nobody() {
        use crate::ecdsa::tests::{recover, sign_between};
        let (keys_of, layout, old) = made_treasury();
        let public = EcdsaPublic::of(&old[0].1);
        let proposal = RefreshProposal {
            wallet_id: layout.wallet_id,
            from_epoch: crate::id::Epoch(0),
            proposer: pid(1),
            created_ms: 1,
            nonce: ByteBuf::from(vec![3; 16]),
        };
        let mut mail: Mail = Vec::new();
        let mut holders: Vec<(Vec<u8>, EcdsaDaoRefresh)> = Vec::new();
        for key in &keys_of {
            let mine: Vec<EcdsaKey> = layout
                .parties_of(key)
                .iter()
                .map(|p| {
                    let (_, o) = old.iter().find(|(q, _)| q == p).unwrap();
                    EcdsaKey::from_secret_bytes(&o.key.to_secret_bytes().unwrap()).unwrap()
                })
                .collect();
            let (r, out) =
                EcdsaDaoRefresh::start(layout.clone(), &proposal, key, mine, &public, &mut OsRng)
                    .unwrap();
            mail.extend(out.into_iter().map(|m| (key.clone(), m)));
            holders.push((key.clone(), r));
        }
        // A share of another party than the key holds is refused.
        let theirs = EcdsaKey::from_secret_bytes(&old[1].1.key.to_secret_bytes().unwrap());
        assert!(
            EcdsaDaoRefresh::start(
                layout.clone(),
                &proposal,
                &keys_of[0],
                vec![theirs.unwrap()],
                &public,
                &mut OsRng
            )
            .is_err()
        );
        for _ in 0..16 {
            if holders.iter().all(|(_, r)| r.all_committed()) {
                break;
            }
            let snapshot = mail.clone();
            for (key, r) in holders.iter_mut() {
                for (sender, m) in snapshot.iter().rev() {
                    r.absorb(sender, m).unwrap();
                }
                let mut out = r.advance(&mut OsRng).unwrap();
                if r.is_done() && !r.committed.has(&r.parties()[0]) {
                    out.push(r.commit().unwrap());
                }
                mail.extend(out.into_iter().map(|m| (key.clone(), m)));
            }
        }
        assert!(holders.iter().all(|(_, r)| r.all_committed()));
        // A commitment of another epoch, or of the provider's party by a member, is named.
        for (party, epoch) in [(pid(2), Epoch(2)), (pid(4), Epoch(1))] {
            let committed = DaoMessage::Committed {
                parties: vec![party],
                epoch,
            };
            assert!(matches!(
                holders[0].1.absorb(&keys_of[1], &committed),
                Err(ProtocolError::Culprit { party: p, .. }) if p == party
            ));
        }
        let new: BTreeMap<PartyId, &EcdsaDkgOutput> = holders
            .iter()
            .flat_map(|(_, r)| r.new_shares().unwrap())
            .collect();
        let new_public = EcdsaPublic::of(new[&pid(1)]);
        assert_eq!(
            new_public.public_key, public.public_key,
            "the address stays"
        );
        assert_ne!(new_public.public_shares, public.public_shares);
        let hash = [0x24; 32];
        let signers: Vec<&EcdsaKey> = [1, 2, 4, 5].iter().map(|p| &new[&pid(*p)].key).collect();
        let sig = sign_between(&signers, hash).unwrap();
        assert_eq!(recover(&sig, &hash), public.public_key.to_vec());
        // Member 1's old share signs with none of the new ones.
        let mut mixed = signers.clone();
        mixed[0] = &old[0].1.key;
        assert!(sign_between(&mixed, hash).is_err());
    }

    fn approval(request: [u8; 32], digest: [u8; 32], party: u16) -> DaoMessage {
        DaoMessage::Approval(Approval {
            request: ByteBuf::from(request.to_vec()),
            party: pid(party),
            sighashes: ByteBuf::from(sighashes_digest(&request, &[digest]).to_vec()),
        })
    }

    #[test]
    fn a_treasury_is_made_signs_with_a_restarted_member_and_names_a_probing_one() {
        let (members, provider, layout) = treasury();
        let keys_of: Vec<Vec<u8>> = members
            .iter()
            .chain(std::iter::once(&provider))
            .map(public_key_bytes)
            .collect();
        let mut mail: Mail = Vec::new();
        let mut holders: Vec<(Vec<u8>, EcdsaDaoDkg)> = Vec::new();
        for key in &keys_of {
            let (d, out) = EcdsaDaoDkg::start_attempt(layout.clone(), key, 0, &mut OsRng).unwrap();
            mail.extend(out.into_iter().map(|m| (key.clone(), m)));
            holders.push((key.clone(), d));
        }
        // A member cannot speak for another party.
        let forged = mail
            .iter()
            .find(|(k, _)| *k == keys_of[1])
            .unwrap()
            .1
            .clone();
        assert!(matches!(
            holders[0].1.absorb(&keys_of[0], &forged),
            Err(ProtocolError::Culprit { party, .. }) if party == pid(2)
        ));
        run_dkg(&mut holders, &mut mail);
        // Members store and say so; the provider sees all stored.
        for (key, dkg) in holders.iter().take(3) {
            mail.push((key.clone(), dkg.stored_notice().unwrap()));
        }
        let snapshot = mail.clone();
        let provider_dkg = &mut holders[3].1;
        for (sender, m) in &snapshot {
            provider_dkg.absorb(sender, m).unwrap();
        }
        assert!(provider_dkg.all_stored().unwrap());
        let outputs: Vec<(PartyId, EcdsaDkgOutput)> = holders
            .into_iter()
            .flat_map(|(_, d)| d.into_outputs().unwrap().1)
            .collect();
        let public = outputs[0].1.public_key.clone();
        assert!(outputs.iter().all(|(_, o)| o.public_key == public));
        let key = |p: u16| &outputs.iter().find(|(q, _)| *q == pid(p)).unwrap().1.key;

        // A request needing 3 approvals: the signer set is the provider's two parties and the
        // first two approvers; member 3's approval counts but it does not sign.
        let (request, digest) = ([5u8; 32], [6u8; 32]);
        let approvers: BTreeMap<PartyId, Vec<u8>> = (1..=3)
            .map(|p| (pid(p), keys_of[usize::from(p) - 1].clone()))
            .collect();
        let mut coordinator =
            EcdsaCoordinator::new(&layout, request, digest, 3, approvers).unwrap();
        let provider_keys = BTreeMap::from([(pid(4), key(4)), (pid(5), key(5))]);
        for p in [2u16, 1] {
            coordinator
                .absorb(&keys_of[usize::from(p) - 1], &approval(request, digest, p))
                .unwrap();
        }
        assert!(
            coordinator
                .advance(&provider_keys, &mut OsRng)
                .unwrap()
                .is_empty()
        );
        coordinator
            .absorb(&keys_of[2], &approval(request, digest, 3))
            .unwrap();
        let mut mail: Mail = coordinator
            .advance(&provider_keys, &mut OsRng)
            .unwrap()
            .into_iter()
            .map(|m| (keys_of[3].clone(), m))
            .collect();
        assert_eq!(coordinator.chosen_members(), vec![pid(1), pid(2)]);
        let mut member1 = EcdsaMember::new(&layout, request, pid(1), digest);
        let mut member2 = EcdsaMember::new(&layout, request, pid(2), digest);
        let mut member3 = EcdsaMember::new(&layout, request, pid(3), digest);
        // Member 2 posts its hello, then its process stops: a new process posts another.
        let first = member2.handle(key(2), &mail, &mut OsRng).unwrap();
        assert_eq!(first.len(), 1);
        mail.extend(first.into_iter().map(|m| (keys_of[1].clone(), m)));
        let mut member2 = EcdsaMember::new(&layout, request, pid(2), digest);
        let lost = member2.lost_round(0, &mut OsRng);
        mail.push((keys_of[1].clone(), lost));
        let mut seen = 0;
        for _ in 0..16 {
            if coordinator.signature().is_some() {
                break;
            }
            let snapshot = mail.clone();
            for (i, member) in [&mut member1, &mut member2, &mut member3]
                .into_iter()
                .enumerate()
            {
                let out = member
                    .handle(key(i as u16 + 1), &snapshot, &mut OsRng)
                    .unwrap();
                mail.extend(out.into_iter().map(|m| (keys_of[i].clone(), m)));
            }
            for (sender, m) in &mail[seen..] {
                let _ = coordinator.absorb(sender, m);
            }
            seen = mail.len();
            let out = coordinator.advance(&provider_keys, &mut OsRng).unwrap();
            mail.extend(out.into_iter().map(|m| (keys_of[3].clone(), m)));
        }
        // Round 1 prefers the approvers that did not restart: members 1 and 3.
        assert!(member3.chosen());
        assert_eq!(coordinator.chosen_members(), vec![pid(1), pid(3)]);
        assert_eq!(
            coordinator.round(),
            1,
            "the restarted member made a new round"
        );
        let signature = coordinator.signature().expect("signed");
        assert_eq!(crate::ecdsa::tests::recover(signature, &digest), public);
        // The provider's last broadcasts never left it: nobody else could finish the signature
        // before the provider judged and recorded the spend.
        let provider_last = |(k, m): &(Vec<u8>, DaoMessage)| {
            *k == keys_of[3]
                && matches!(m, DaoMessage::EcdsaSignPart { part, .. } if part.step == 3)
        };
        assert!(!mail.iter().any(provider_last));

        // Member 1 probes the provider's OT secrets (its round-1 multiplication message
        // altered, a selective-failure attack, eprint 2023/765 §5): DKLs23's check names it as
        // to be excluded, which the provider records (enclave/src/service/dao/eth_sign.rs).
        let (request, digest) = ([7u8; 32], [8u8; 32]);
        let approvers: BTreeMap<PartyId, Vec<u8>> = (1..=3)
            .map(|p| (pid(p), keys_of[usize::from(p) - 1].clone()))
            .collect();
        let mut coordinator =
            EcdsaCoordinator::new(&layout, request, digest, 2, approvers).unwrap();
        for p in [1u16, 2] {
            coordinator
                .absorb(&keys_of[usize::from(p) - 1], &approval(request, digest, p))
                .unwrap();
        }
        let mut mail: Mail = coordinator
            .advance(&provider_keys, &mut OsRng)
            .unwrap()
            .into_iter()
            .map(|m| (keys_of[3].clone(), m))
            .collect();
        let mut prober = EcdsaMember::new(&layout, request, pid(1), digest);
        let mut honest = EcdsaMember::new(&layout, request, pid(2), digest);
        let hello = prober.handle(key(1), &mail, &mut OsRng).unwrap();
        mail.extend(hello.into_iter().map(|m| (keys_of[0].clone(), m)));
        prober.signing.as_mut().unwrap().tamper = Some(probe);
        let mut seen = 0;
        let excluded = (0..8).find_map(|_| {
            let snapshot = mail.clone();
            for (i, member) in [(0, &mut prober), (1, &mut honest)] {
                let out = member
                    .handle(key(i as u16 + 1), &snapshot, &mut OsRng)
                    .unwrap();
                mail.extend(out.into_iter().map(|m| (keys_of[i].clone(), m)));
            }
            for (sender, m) in &mail[seen..] {
                let _ = coordinator.absorb(sender, m);
            }
            seen = mail.len();
            match coordinator.advance(&provider_keys, &mut OsRng) {
                Ok(out) => {
                    mail.extend(out.into_iter().map(|m| (keys_of[3].clone(), m)));
                    None
                }
                Err(e) => Some(e),
            }
        });
        assert!(
            matches!(excluded, Some(ProtocolError::Excluded { party, .. }) if party == pid(1)),
            "{excluded:?}"
        );
        assert!(coordinator.signature().is_none());

        // Member 2 approves first, is chosen, and goes silent; once SILENT_MS passed, member 3
        // (who approved too) takes its place in round 1.
        let (request, digest) = ([9u8; 32], [10u8; 32]);
        let approvers: BTreeMap<PartyId, Vec<u8>> = (1..=3)
            .map(|p| (pid(p), keys_of[usize::from(p) - 1].clone()))
            .collect();
        let mut coordinator =
            EcdsaCoordinator::new(&layout, request, digest, 2, approvers).unwrap();
        assert!(coordinator.replace_silent(1_000).is_empty());
        for p in [2u16, 1, 3] {
            coordinator
                .absorb(&keys_of[usize::from(p) - 1], &approval(request, digest, p))
                .unwrap();
        }
        let mut mail: Mail = coordinator
            .advance(&provider_keys, &mut OsRng)
            .unwrap()
            .into_iter()
            .map(|m| (keys_of[3].clone(), m))
            .collect();
        assert_eq!(coordinator.chosen_members(), vec![pid(1), pid(2)]);
        let mut members = [
            (0, EcdsaMember::new(&layout, request, pid(1), digest)),
            (2, EcdsaMember::new(&layout, request, pid(3), digest)),
        ];
        let step =
            |mail: &mut Mail, members: &mut [(usize, EcdsaMember)], c: &mut EcdsaCoordinator| {
                let snapshot = mail.clone();
                for (i, member) in members.iter_mut() {
                    let out = member
                        .handle(key(*i as u16 + 1), &snapshot, &mut OsRng)
                        .unwrap();
                    mail.extend(out.into_iter().map(|m| (keys_of[*i].clone(), m)));
                }
                for (sender, m) in snapshot.iter().chain(mail.iter()) {
                    let _ = c.absorb(sender, m);
                }
                let out = c.advance(&provider_keys, &mut OsRng).unwrap();
                mail.extend(out.into_iter().map(|m| (keys_of[3].clone(), m)));
            };
        step(&mut mail, &mut members, &mut coordinator);
        assert!(
            coordinator.replace_silent(1_000 + SILENT_MS - 1).is_empty(),
            "not yet"
        );
        assert_eq!(
            coordinator.replace_silent(1_000 + SILENT_MS + 1),
            vec![pid(2)]
        );
        for _ in 0..12 {
            if coordinator.signature().is_some() {
                break;
            }
            step(&mut mail, &mut members, &mut coordinator);
        }
        assert_eq!(coordinator.round(), 1);
        assert_eq!(coordinator.chosen_members(), vec![pid(1), pid(3)]);
        let signature = coordinator
            .signature()
            .expect("signed without the silent member");
        assert_eq!(crate::ecdsa::tests::recover(signature, &digest), public);
    }

    /// A selective-failure probe: every byte of the round-1 OT-extension matrix flipped.
    fn probe(message: &mut EcdsaSignMessage) {
        if message.round != 1 {
            return;
        }
        let mut parts: Vec<dkls23::protocols::signing::TransmitPhase1to2> =
            postcard::from_bytes(&message.body).unwrap();
        for part in &mut parts {
            for column in part.mul_transmit.u.iter_mut() {
                for b in column.iter_mut() {
                    *b ^= 0xa5;
                }
            }
        }
        message.body = ByteBuf::from(postcard::to_allocvec(&parts).unwrap());
    }

    #[test]
    fn pieces_fit_an_envelope_and_repeat_the_broadcast() {
        let sealed = |to: u16| SealedPackage {
            from: pid(1),
            to: pid(to),
            enc: ByteBuf::from(vec![1; 32]),
            ciphertext: ByteBuf::from(vec![2; 150 * 1024]),
        };
        let parts = pieces(pid(1), 3, b"b", (2..=8).map(sealed).collect());
        assert_eq!(parts.len(), 4);
        for p in &parts {
            assert_eq!(p.broadcast.as_slice(), b"b");
            let envelope = DaoMessage::EcdsaDkgPart {
                attempt: 0,
                part: p.clone(),
            };
            assert!(envelope.encode().unwrap().len() < crate::mailbox::MAX_ENVELOPE - 4096);
        }
        assert_eq!(pieces(pid(1), 3, b"b", Vec::new()).len(), 1);
        // A second piece with another broadcast is equivocation.
        let mut gather = Gather::default();
        gather.absorb(&parts[0], &[pid(2)]).unwrap();
        let mut other = parts[1].clone();
        other.broadcast = ByteBuf::from(b"c".to_vec());
        assert!(matches!(
            gather.absorb(&other, &[pid(2)]),
            Err(ProtocolError::Culprit { party, .. }) if party == pid(1)
        ));
    }
}
