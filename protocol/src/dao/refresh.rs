//! A DAO's share refresh over the mailbox: every key holder (a member's device, or the provider
//! with its several parties) runs one [`DaoRefresh`] that absorbs the topic's signed messages in
//! any order and advances its parties' refresh rounds ([`crate::refresh`]) when their inputs are
//! complete. Same group key, same threshold, same parties (nobody is evicted); the shares of epoch
//! `from_epoch + 1` replace those of `from_epoch`.
//!
//! A member proposes it with a [`RefreshProposal`] (its hash is the topic). Every party ends with
//! a new share only once every party confirmed the same transcript and public key package; each
//! holder then stores its new shares as *prepared* and posts a [`DaoMessage::Committed`]. The
//! provider makes the new epoch current (and deletes its old shares) once every party committed,
//! and says so with [`DaoMessage::Refreshed`]; a member replaces its old share only then. Until
//! that moment every holder still has its old share, so a refresh that stops half-way leaves the
//! wallet signing with the old epoch.
//!
//! What the mailbox cannot do to it: as for the DKG ([`super::dkg`]), a message is accepted only
//! from the key owning its party, a party sending two different round-1 messages, packages or
//! confirmations is named, replays are ignored, and an inconsistent broadcast makes the refresh
//! fail, never produce shares two parties disagree on.

use std::collections::BTreeSet;

use frost_core::Ciphersuite;
use frost_core::keys::{KeyPackage, PublicKeyPackage};
use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use super::dkg::check_owner;
use super::{DaoMessage, Layout, tagged_hash, truncate};
use crate::error::{ProtocolError, Result};
use crate::id::Epoch;
use crate::id::PartyId;
use crate::keygen::exchange::{Exchange, Message, Step, Waiting};
use crate::mailbox::Topic;
use crate::refresh::RefreshOutput;
use crate::wire::{self, RefreshParams, WalletId};

/// A member's proposal to refresh every share of a DAO wallet; its hash is the topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefreshProposal {
    /// The wallet.
    pub wallet_id: WalletId,
    /// The epoch being refreshed (the provider refuses any but the current one).
    pub from_epoch: Epoch,
    /// The proposing member's party.
    pub proposer: PartyId,
    /// When it was made (ms since the Unix epoch); the provider refuses old proposals.
    pub created_ms: u64,
    /// 16 random bytes.
    pub nonce: ByteBuf,
}

impl RefreshProposal {
    /// SHA-256 over a domain tag and the proposal's encoding.
    pub fn hash(&self) -> Result<[u8; 32]> {
        Ok(tagged_hash(
            b"cosigner/dao/refresh/v1",
            &wire::encode_identity(self)?,
        ))
    }

    /// The topic: the hash's first 16 bytes.
    pub fn topic(&self) -> Result<Topic> {
        Ok(Topic(truncate(&self.hash()?)))
    }

    /// The refresh parameters of `layout`'s wallet: every party, the threshold unchanged.
    ///
    /// Errors ([`ProtocolError::Params`]): the proposal is for another wallet.
    pub fn params(&self, layout: &Layout) -> Result<RefreshParams> {
        if self.wallet_id != layout.wallet_id {
            return Err(ProtocolError::Params {
                reason: format!(
                    "the refresh is for wallet {}, not {}",
                    self.wallet_id, layout.wallet_id
                ),
            });
        }
        Ok(RefreshParams {
            wallet_id: layout.wallet_id,
            ciphersuite: layout.params.ciphersuite.clone(),
            min_signers: layout.params.min_signers,
            parties: layout.params.parties.clone(),
            from_epoch: self.from_epoch,
        })
    }
}

/// The parties that said they stored their new shares of a refresh from `from_epoch` as prepared
/// ([`DaoMessage::Committed`]): the second phase of either scheme's DAO refresh.
#[derive(Debug)]
pub(super) struct Commitments {
    from_epoch: Epoch,
    committed: BTreeSet<PartyId>,
}

impl Commitments {
    pub(super) fn new(from_epoch: Epoch) -> Self {
        Self {
            from_epoch,
            committed: BTreeSet::new(),
        }
    }

    /// Takes `sender`'s commitment of `parties` to `epoch`; returns whether it was new.
    ///
    /// Errors ([`ProtocolError::Culprit`]): a party `sender` does not hold, or another epoch
    /// than the refresh makes.
    pub(super) fn absorb(
        &mut self,
        layout: &Layout,
        sender: &[u8],
        parties: &[PartyId],
        epoch: Epoch,
    ) -> Result<bool> {
        let expected = self.from_epoch.saturating_next();
        let mut new = false;
        for &party in parties {
            check_owner(layout, sender, party, "commitment")?;
            if epoch != expected {
                return Err(ProtocolError::culprit(
                    party,
                    format!("it committed epoch {epoch}, this refresh makes epoch {expected}"),
                ));
            }
            new |= self.committed.insert(party);
        }
        Ok(new)
    }

    /// Our commitment of `ours`, recorded: the message to post.
    pub(super) fn ours(&mut self, ours: Vec<PartyId>) -> DaoMessage {
        self.committed.extend(ours.iter().copied());
        DaoMessage::Committed {
            parties: ours,
            epoch: self.from_epoch.saturating_next(),
        }
    }

    /// The epoch refreshed.
    pub(super) fn refreshed_epoch(&self) -> Epoch {
        self.from_epoch
    }

    /// Whether `party` committed.
    pub(super) fn has(&self, party: &PartyId) -> bool {
        self.committed.contains(party)
    }

    /// The parties of `all` that have not committed.
    pub(super) fn missing(&self, all: &[PartyId]) -> Vec<PartyId> {
        all.iter().copied().filter(|p| !self.has(p)).collect()
    }
}

/// The share one party holds now: its key package and the wallet's public key package.
pub type OldShare<C> = (PartyId, KeyPackage<C>, PublicKeyPackage<C>);

/// A party's current key package and public key package.
type Current<C> = (KeyPackage<C>, PublicKeyPackage<C>);

/// The confirmed new shares of one key holder, by party.
pub type NewShares<C> = Vec<(PartyId, RefreshOutput<C>)>;

/// One key holder's side of a DAO refresh.
pub struct DaoRefresh<C: Ciphersuite> {
    layout: Layout,
    exchange: Exchange<C, RefreshParams>,
    /// Parties that said they stored their new share as prepared.
    committed: Commitments,
}

impl<C: Ciphersuite> std::fmt::Debug for DaoRefresh<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DaoRefresh")
            .field("wallet_id", &self.layout.wallet_id)
            .field("from_epoch", &self.from_epoch())
            .field("locals", &self.exchange.parties())
            .field("waiting_for", &self.waiting_for())
            .finish_non_exhaustive()
    }
}

impl<C: Ciphersuite> DaoRefresh<C> {
    /// Starts `proposal`'s refresh for every party `key` holds in `layout`, with their current
    /// shares `old` (exactly one per party `key` holds); returns the round-1 messages to post.
    ///
    /// Errors ([`ProtocolError::Params`]): `key` holds no party, `old` does not cover exactly
    /// its parties, a share does not fit the refresh ([`crate::refresh::check_old_shares`]:
    /// another wallet, threshold or party set).
    pub fn start(
        layout: Layout,
        proposal: &RefreshProposal,
        key: &[u8],
        old: Vec<OldShare<C>>,
        rng: &mut (impl CryptoRng + RngCore),
    ) -> Result<(Self, Vec<DaoMessage>)> {
        let params = proposal.params(&layout)?;
        let parties = layout.parties_of(key);
        if parties.is_empty() {
            return Err(ProtocolError::Params {
                reason: "this key is neither a member nor the provider of the wallet".into(),
            });
        }
        let mut old: Vec<(PartyId, Current<C>)> =
            old.into_iter().map(|(p, k, pkp)| (p, (k, pkp))).collect();
        old.sort_by_key(|(p, _)| *p);
        if !old.iter().map(|(p, _)| *p).eq(parties.iter().copied()) {
            return Err(ProtocolError::Params {
                reason: format!(
                    "the current shares given are of parties {:?}, this key holds {parties:?}",
                    old.iter().map(|(p, _)| *p).collect::<Vec<_>>()
                ),
            });
        }
        let (exchange, first) = Exchange::start(&params, old, rng)?;
        let refresh = Self {
            layout,
            exchange,
            committed: Commitments::new(proposal.from_epoch),
        };
        Ok((refresh, first.into_iter().map(post).collect()))
    }

    /// The wallet's layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The epoch being refreshed (the new shares are of `from_epoch + 1`).
    pub fn from_epoch(&self) -> Epoch {
        self.exchange.params().from_epoch
    }

    /// Our parties.
    pub fn parties(&self) -> Vec<PartyId> {
        self.exchange.parties()
    }

    /// Takes one verified message from `sender` (the envelope's signer). Returns whether it was
    /// new. Messages of other kinds are ignored.
    ///
    /// Errors: the sender does not own the party it speaks for, sent two different messages for
    /// the same step ([`ProtocolError::Culprit`]), or commits another epoch than this refresh's.
    pub fn absorb(&mut self, sender: &[u8], message: &DaoMessage) -> Result<bool> {
        let (inner, what) = match message {
            DaoMessage::Round1(m) => (Message::Round1(m.clone()), "refresh round-1 message"),
            DaoMessage::Round2(p) => (Message::Round2(p.clone()), "refresh package"),
            DaoMessage::Confirm(c) => (Message::Confirmation(c.clone()), "refresh confirmation"),
            DaoMessage::Committed { parties, epoch } => {
                return self.committed.absorb(&self.layout, sender, parties, *epoch);
            }
            _ => return Ok(false),
        };
        check_owner(&self.layout, sender, inner.from(), what)?;
        self.exchange.absorb(&inner, what)
    }

    /// Advances every local party whose inputs are complete; returns the messages to post.
    ///
    /// Errors: a round fails (the refresh is over; the old epoch stays, propose a new one).
    pub fn advance(&mut self, rng: &mut (impl CryptoRng + RngCore)) -> Result<Vec<DaoMessage>> {
        Ok(self.exchange.advance(rng)?.into_iter().map(post).collect())
    }

    /// Whether every local party holds its new share (every party confirmed the same result).
    pub fn is_done(&self) -> bool {
        self.exchange.is_done()
    }

    /// Our new shares (prepared: store them, sealed, under epoch `from_epoch + 1`, but do not use
    /// them before [`DaoRefresh::all_committed`] and the provider's [`DaoMessage::Refreshed`]).
    ///
    /// Errors: called before [`DaoRefresh::is_done`] ([`ProtocolError::UnexpectedMessage`]).
    pub fn new_shares(&self) -> Result<Vec<(PartyId, &RefreshOutput<C>)>> {
        self.exchange.outputs()
    }

    /// Our commitment, once [`DaoRefresh::is_done`] and our new shares are stored as prepared:
    /// post it. Records our parties as committed.
    ///
    /// Errors: called before the end ([`ProtocolError::UnexpectedMessage`]).
    pub fn commit(&mut self) -> Result<DaoMessage> {
        self.new_shares()?;
        Ok(self.committed.ours(self.parties()))
    }

    /// Whether every party of the wallet committed the new epoch.
    pub fn all_committed(&self) -> bool {
        self.committed
            .missing(&self.exchange.params().parties)
            .is_empty()
    }

    /// What we still wait for: the exchange's step and missing parties, or once it is done, the
    /// parties that have not committed the new epoch.
    pub fn waiting(&self) -> Waiting {
        let waiting = self.exchange.waiting();
        if waiting.step != Step::Done {
            return waiting;
        }
        Waiting {
            step: Step::Done,
            parties: self.committed.missing(&self.exchange.params().parties),
        }
    }

    /// What we still wait for, as a progress line.
    pub fn waiting_for(&self) -> String {
        let waiting = self.waiting();
        match waiting.step {
            Step::Done => format!(
                "commitments of epoch {} from parties {:?}",
                self.from_epoch().saturating_next(),
                waiting.parties
            ),
            _ => format!("refresh {waiting}"),
        }
    }

    /// The confirmed new shares, one per local party, once [`DaoRefresh::is_done`].
    ///
    /// Errors: called before the end ([`ProtocolError::UnexpectedMessage`]).
    pub fn into_outputs(self) -> Result<(Layout, NewShares<C>)> {
        Ok((self.layout, self.exchange.into_outputs()?))
    }
}

/// The mailbox message carrying one of our exchange's messages.
fn post(message: Message) -> DaoMessage {
    match message {
        Message::Round1(m) => DaoMessage::Round1(m),
        Message::Round2(p) => DaoMessage::Round2(p),
        Message::Confirmation(c) => DaoMessage::Confirm(c),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;
    use crate::dao::dkg::tests::run_dkg;
    use crate::dao::tests::keys;
    use crate::id::pid;
    use frost_core::Identifier;
    use rand_core::OsRng;
    use std::collections::BTreeMap;

    type Tr = frost_secp256k1_tr::Secp256K1Sha256TR;

    fn proposal(layout: &Layout) -> RefreshProposal {
        RefreshProposal {
            wallet_id: layout.wallet_id,
            from_epoch: Epoch(0),
            proposer: pid(1),
            created_ms: 1,
            nonce: ByteBuf::from(vec![3; 16]),
        }
    }

    type Shares = BTreeMap<PartyId, (KeyPackage<Tr>, PublicKeyPackage<Tr>)>;

    /// Runs a refresh of every holder's shares through a shuffled in-memory "mailbox", commits
    /// included; returns the new shares by party.
    fn run_refresh(holders: &[(Vec<u8>, Layout, Shares)]) -> Shares {
        let p = proposal(&holders[0].1);
        let mut refreshes: Vec<(Vec<u8>, DaoRefresh<Tr>)> = Vec::new();
        let mut mailbox: Vec<(Vec<u8>, DaoMessage)> = Vec::new();
        for (pk, layout, shares) in holders {
            let old = shares
                .iter()
                .map(|(p, (k, pkp))| (*p, k.clone(), pkp.clone()))
                .collect();
            let (r, out) =
                DaoRefresh::<Tr>::start(layout.clone(), &p, pk, old, &mut OsRng).unwrap();
            mailbox.extend(out.into_iter().map(|m| (pk.clone(), m)));
            refreshes.push((pk.clone(), r));
        }
        let mut rounds = 0;
        while !refreshes.iter().all(|(_, r)| r.all_committed()) {
            rounds += 1;
            assert!(rounds < 20, "refresh did not converge");
            let snapshot = mailbox.clone();
            for (pk, r) in refreshes.iter_mut() {
                for (sender, m) in snapshot.iter().rev() {
                    r.absorb(sender, m).unwrap();
                }
                let mut out = r.advance(&mut OsRng).unwrap();
                if r.is_done() && !r.committed.has(&r.parties()[0]) {
                    out.push(r.commit().unwrap());
                }
                mailbox.extend(out.into_iter().map(|m| (pk.clone(), m)));
            }
        }
        let mut new = BTreeMap::new();
        for (_, r) in refreshes {
            let (_, outputs) = r.into_outputs().unwrap();
            for (p, o) in outputs {
                new.insert(p, (o.key_package, o.public_key_package));
            }
        }
        new
    }

    /// Signs `msg` with the given key packages (FROST rounds 1 and 2, then aggregation).
    fn sign(
        keys: &[KeyPackage<Tr>],
        pkp: &PublicKeyPackage<Tr>,
        msg: &[u8],
    ) -> std::result::Result<frost_core::Signature<Tr>, frost_core::Error<Tr>> {
        let mut nonces = BTreeMap::new();
        let mut commitments = BTreeMap::new();
        for k in keys {
            let (n, c) = frost_core::round1::commit(k.signing_share(), &mut OsRng);
            nonces.insert(*k.identifier(), n);
            commitments.insert(*k.identifier(), c);
        }
        let package = frost_core::SigningPackage::new(commitments, msg);
        let mut shares: BTreeMap<Identifier<Tr>, _> = BTreeMap::new();
        for k in keys {
            let share = frost_core::round2::sign(&package, &nonces[k.identifier()], k)?;
            shares.insert(*k.identifier(), share);
        }
        frost_core::aggregate(&package, &shares, pkp)
    }

    fn setup() -> (Vec<(Vec<u8>, Layout, Shares)>, Shares) {
        let members = keys(5);
        let provider = keys(1).pop().unwrap();
        let mut all = BTreeMap::new();
        let holders: Vec<(Vec<u8>, Layout, Shares)> = run_dkg(&members, &provider)
            .into_iter()
            .map(|(pk, layout, outputs)| {
                let shares: Shares = outputs
                    .into_iter()
                    .map(|(p, o)| (p, (o.key_package, o.public_key_package)))
                    .collect();
                all.extend(shares.clone());
                (pk, layout, shares)
            })
            .collect();
        (holders, all)
    }

    #[test]
    fn five_members_and_a_weighted_provider_refresh_to_the_same_key_and_new_shares_sign() {
        let (holders, old) = setup();
        let new = run_refresh(&holders);
        assert_eq!(new.len(), 8);
        let group = *old[&pid(1)].1.verifying_key();
        let new_pkp = new[&pid(1)].1.clone();
        for (party, (k, pkp)) in &new {
            assert_eq!(pkp.verifying_key(), &group, "same group key");
            assert_eq!(pkp, &new_pkp, "every party has the same public key package");
            assert_ne!(
                k.signing_share(),
                old[party].0.signing_share(),
                "party {party}'s share changed"
            );
        }
        // Members 1, 3, 5 and the provider's three parties: threshold 6.
        let signers: Vec<KeyPackage<Tr>> = [1, 3, 5, 6, 7, 8]
            .iter()
            .map(|p| new[&pid(*p)].0.clone())
            .collect();
        let sig = sign(&signers, &new_pkp, b"after the refresh").unwrap();
        group.verify(b"after the refresh", &sig).unwrap();

        // Member 1's old share no longer combines with the new shares.
        let mut mixed = signers.clone();
        mixed[0] = old[&pid(1)].0.clone();
        assert!(sign(&mixed, &new_pkp, b"mixed").is_err());
        // Nor with the old public key package.
        assert!(sign(&mixed, &old[&pid(1)].1, b"mixed").is_err());
    }

    #[test]
    fn owners_epochs_and_equivocation_are_checked() {
        let (holders, _) = setup();
        let layout = holders[0].1.clone();
        let p = proposal(&layout);
        let start = |i: usize| {
            let (pk, layout, shares) = &holders[i];
            let old = shares
                .iter()
                .map(|(p, (k, pkp))| (*p, k.clone(), pkp.clone()))
                .collect();
            DaoRefresh::<Tr>::start(layout.clone(), &p, pk, old, &mut OsRng).unwrap()
        };
        let (mut r0, _) = start(0);
        let (_r1, out1) = start(1);
        let pk0 = holders[0].0.clone();
        let pk1 = holders[1].0.clone();
        // Who a refused message names.
        let named = |result: Result<bool>| match result {
            Err(ProtocolError::Culprit { party, .. }) => party,
            other => panic!("expected a culprit, got {other:?}"),
        };
        // Member 2's round 1 signed by member 1's key: refused, naming party 2.
        assert_eq!(named(r0.absorb(&pk0, &out1[0])), pid(2));
        assert!(r0.absorb(&pk1, &out1[0]).unwrap());
        assert!(!r0.absorb(&pk1, &out1[0]).unwrap());
        let (_again, other) = start(1);
        assert_eq!(named(r0.absorb(&pk1, &other[0])), pid(2));
        // A commitment of another epoch, and the provider's parties committed by a member.
        for (party, epoch) in [(pid(2), Epoch(2)), (pid(6), Epoch(1))] {
            let committed = DaoMessage::Committed {
                parties: vec![party],
                epoch,
            };
            assert_eq!(named(r0.absorb(&pk1, &committed)), party);
        }
        // Shares of another party than the key holds: refused.
        let (pk, layout, _) = &holders[0];
        let wrong = holders[1]
            .2
            .iter()
            .map(|(p, (k, pkp))| (*p, k.clone(), pkp.clone()))
            .collect();
        assert!(DaoRefresh::<Tr>::start(layout.clone(), &p, pk, wrong, &mut OsRng).is_err());
        // No commitment before the end.
        assert!(r0.commit().is_err());
    }
}
