//! The key-making ceremony of one key holder, as one value that absorbs messages in any order and
//! says what it waits for: the engine under the DAO's DKG and refresh ([`crate::dao::dkg`],
//! [`crate::dao::refresh`]), whatever carries the messages.
//!
//! A holder may own several parties (the provider of a DAO wallet holds its weighted parties); an
//! [`Exchange`] runs the [`super::Round1`] → [`super::Round2`] → [`super::Round3`] → [`Output`]
//! rounds of each of them and feeds its own parties' messages to each other. Who may speak for a
//! party (the envelope's signer) is the caller's check; the exchange keeps the first message of
//! each party and step and names a party that sends a different second one (equivocation), so a
//! replay is harmless and a relay cannot swap a message once it was seen.

use std::collections::BTreeMap;

use frost_core::Ciphersuite;
use rand_core::{CryptoRng, RngCore};

use super::{KeygenParams, Output, Round1, Round2, Round3, public_key_package_hash};
use crate::error::{ProtocolError, Result};
use crate::id::PartyId;
use crate::wire::{Confirmation, Round1Message, SealedPackage};

/// One message of a key-making ceremony, to post or absorbed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A party's round-1 broadcast.
    Round1(Round1Message),
    /// A round-2 package sealed from one party to another.
    Round2(SealedPackage),
    /// A party's confirmation.
    Confirmation(Confirmation),
}

impl Message {
    /// The party that sent it.
    pub fn from(&self) -> PartyId {
        match self {
            Self::Round1(m) => m.from,
            Self::Round2(p) => p.from,
            Self::Confirmation(c) => c.from,
        }
    }
}

/// Where an exchange stands, for progress lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Step {
    /// Waiting for round-1 messages.
    Round1,
    /// Waiting for the round-2 packages sealed to our parties.
    Round2,
    /// Waiting for confirmations.
    Confirmations,
    /// Every party confirmed the same result.
    Done,
    /// A round failed; the ceremony is over.
    Failed,
}

/// What an exchange waits for: its step and the parties whose message it still lacks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    /// The step.
    pub step: Step,
    /// Parties still missing for that step (empty when done or failed).
    pub parties: Vec<PartyId>,
}

impl std::fmt::Display for Waiting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.step {
            Step::Round1 => "round-1 messages",
            Step::Round2 => "round-2 packages",
            Step::Confirmations => "confirmations",
            Step::Done => return f.write_str("nothing (done)"),
            Step::Failed => return f.write_str("nothing (failed)"),
        };
        write!(f, "{what} from parties {:?}", self.parties)
    }
}

enum Stage<C: Ciphersuite, P: KeygenParams> {
    Round1(Round1<C, P>),
    Round2(Round2<C, P>),
    Round3(Round3<C, P>),
    Done(Output<C>),
}

/// One key holder's side of a key-making ceremony.
pub struct Exchange<C: Ciphersuite, P: KeygenParams> {
    params: P,
    /// Our parties and their stages (`None` only after a failure).
    locals: BTreeMap<PartyId, Option<Stage<C, P>>>,
    /// What each of our parties brings into round 2 ([`KeygenParams::Old`]).
    old: BTreeMap<PartyId, P::Old<C>>,
    round1: BTreeMap<PartyId, Round1Message>,
    /// Packages sealed to one of our parties, by (from, to).
    round2: BTreeMap<(PartyId, PartyId), SealedPackage>,
    confirmations: BTreeMap<PartyId, Confirmation>,
    failed: Option<String>,
}

impl<C: Ciphersuite, P: KeygenParams> std::fmt::Debug for Exchange<C, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exchange")
            .field("ceremony", &P::NAME)
            .field("params", &self.params)
            .field("locals", &self.locals.keys().collect::<Vec<_>>())
            .field("waiting", &self.waiting())
            .finish_non_exhaustive()
    }
}

impl<C: Ciphersuite, P: KeygenParams> Exchange<C, P> {
    /// Starts the ceremony for each of our parties with what it brings (`locals`: for a refresh,
    /// its current share); returns the round-1 messages to post.
    ///
    /// Errors: no parties, or round 1 fails for one of them.
    pub fn start(
        params: &P,
        locals: Vec<(PartyId, P::Old<C>)>,
        rng: &mut (impl CryptoRng + RngCore),
    ) -> Result<(Self, Vec<Message>)> {
        if locals.is_empty() {
            return Err(ProtocolError::Params {
                reason: "this key holds no party of the ceremony".into(),
            });
        }
        let mut exchange = Self {
            params: params.clone(),
            locals: BTreeMap::new(),
            old: BTreeMap::new(),
            round1: BTreeMap::new(),
            round2: BTreeMap::new(),
            confirmations: BTreeMap::new(),
            failed: None,
        };
        let mut out = Vec::new();
        for (party, old) in locals {
            P::check_old(params, party, &old)?;
            let (state, message) = super::start::<C, P>(params, party, rng)?;
            exchange.locals.insert(party, Some(Stage::Round1(state)));
            exchange.old.insert(party, old);
            exchange.round1.insert(party, message.clone());
            out.push(Message::Round1(message));
        }
        Ok((exchange, out))
    }

    /// The ceremony's parameters.
    pub fn params(&self) -> &P {
        &self.params
    }

    /// Our parties.
    pub fn parties(&self) -> Vec<PartyId> {
        self.locals.keys().copied().collect()
    }

    /// Whether `party` is one of ours.
    pub fn holds(&self, party: PartyId) -> bool {
        self.locals.contains_key(&party)
    }

    /// Takes one message whose sender the caller checked owns `message.from()`. Returns whether it
    /// was new; a package sealed to a party we do not hold is ignored.
    ///
    /// Errors: a sender or recipient that is not a party of the ceremony, or a package to its own
    /// sender ([`ProtocolError::UnexpectedMessage`]); a second, different message of the same
    /// party and step ([`ProtocolError::Culprit`]: equivocation).
    pub fn absorb(&mut self, message: &Message, what: &str) -> Result<bool> {
        self.check_parties(message, what)?;
        match message {
            Message::Round1(m) => insert_once(&mut self.round1, m.from, m, m.from, what),
            Message::Round2(p) if self.locals.contains_key(&p.to) => {
                insert_once(&mut self.round2, (p.from, p.to), p, p.from, what)
            }
            Message::Round2(_) => Ok(false),
            Message::Confirmation(c) => {
                insert_once(&mut self.confirmations, c.from, c, c.from, what)
            }
        }
    }

    /// A message's sender (and a package's recipient) must be parties of the ceremony, and a
    /// package goes from one party to another: otherwise it would count towards a step's inputs
    /// and end the ceremony when that step runs.
    fn check_parties(&self, message: &Message, what: &str) -> Result<()> {
        let parties = self.params.parties();
        let unknown = |party: PartyId| ProtocolError::UnexpectedMessage {
            expected: "a message from a party of the ceremony",
            actual: format!("a {what} from or to party {party}, who is not one"),
        };
        let from = message.from();
        if !parties.contains(&from) {
            return Err(unknown(from));
        }
        if let Message::Round2(p) = message {
            if !parties.contains(&p.to) {
                return Err(unknown(p.to));
            }
            if p.to == p.from {
                return Err(ProtocolError::UnexpectedMessage {
                    expected: "a package from one party to another",
                    actual: format!("a {what} from party {from} to itself"),
                });
            }
        }
        Ok(())
    }

    /// Advances every local party whose inputs are complete; returns the messages to post.
    ///
    /// Errors: a round fails; the exchange is then over and says so on every later call.
    pub fn advance(&mut self, rng: &mut (impl CryptoRng + RngCore)) -> Result<Vec<Message>> {
        if let Some(reason) = &self.failed {
            return Err(ProtocolError::Params {
                reason: format!("this {} already failed: {reason}", P::NAME),
            });
        }
        let mut out = Vec::new();
        // Loop: our own parties feed each other (a provider's packages to its other parties).
        loop {
            let mut progressed = false;
            for party in self.parties() {
                match self.step_party(party, rng) {
                    Ok(Some(messages)) => {
                        progressed = true;
                        out.extend(messages);
                    }
                    Ok(None) => {}
                    Err(e) => {
                        self.failed = Some(e.to_string());
                        return Err(e);
                    }
                }
            }
            if !progressed {
                return Ok(out);
            }
        }
    }

    /// Moves `party` one round on if its inputs are complete.
    fn step_party(
        &mut self,
        party: PartyId,
        rng: &mut (impl CryptoRng + RngCore),
    ) -> Result<Option<Vec<Message>>> {
        if !self.ready(party) {
            return Ok(None);
        }
        let Some(stage) = self.locals.get_mut(&party).and_then(Option::take) else {
            return Ok(None);
        };
        let (next, out) = match stage {
            Stage::Round1(s) => {
                let round1: Vec<Round1Message> = self.round1.values().cloned().collect();
                let (s, packages) = s.handle_round1(&round1, rng)?;
                for p in &packages {
                    if self.locals.contains_key(&p.to) {
                        self.round2.insert((p.from, p.to), p.clone());
                    }
                }
                let out = packages.into_iter().map(Message::Round2).collect();
                (Stage::Round2(s), out)
            }
            Stage::Round2(s) => {
                let old = self.old.get(&party).ok_or_else(|| ProtocolError::Params {
                    reason: format!("nothing to bring into round 2 for party {party}"),
                })?;
                let (s, confirmation) = P::round3(s, &self.sealed_to(party), old)?;
                self.confirmations.insert(party, confirmation.clone());
                (Stage::Round3(s), vec![Message::Confirmation(confirmation)])
            }
            Stage::Round3(s) => {
                let all: Vec<Confirmation> = self.confirmations.values().cloned().collect();
                (Stage::Done(s.handle_confirmations(&all)?), Vec::new())
            }
            done @ Stage::Done(_) => (done, Vec::new()),
        };
        if let Some(slot) = self.locals.get_mut(&party) {
            *slot = Some(next);
        }
        Ok(Some(out))
    }

    fn ready(&self, party: PartyId) -> bool {
        let all = self.params.parties().len();
        match self.locals.get(&party) {
            Some(Some(Stage::Round1(_))) => self.round1.len() == all,
            Some(Some(Stage::Round2(_))) => {
                self.round2.keys().filter(|(_, to)| *to == party).count() + 1 == all
            }
            Some(Some(Stage::Round3(_))) => self.confirmations.len() == all,
            _ => false,
        }
    }

    fn sealed_to(&self, party: PartyId) -> Vec<SealedPackage> {
        self.round2
            .iter()
            .filter(|((_, to), _)| *to == party)
            .map(|(_, p)| p.clone())
            .collect()
    }

    /// Our parties whose result is derived but not yet confirmed by every party (round 3), with
    /// their key package, public key package and confirmation: to store as *prepared* in a
    /// two-phase commit, or to show, never to use.
    pub fn unconfirmed(&self) -> Vec<(PartyId, &Round3<C, P>)> {
        self.locals
            .iter()
            .filter_map(|(party, s)| match s {
                Some(Stage::Round3(r)) => Some((*party, r)),
                _ => None,
            })
            .collect()
    }

    /// The step our parties are at (the first one's, when a holder's parties differ).
    pub fn step(&self) -> Step {
        match self.locals.values().flatten().next() {
            Some(Stage::Round1(_)) => Step::Round1,
            Some(Stage::Round2(_)) => Step::Round2,
            Some(Stage::Round3(_)) => Step::Confirmations,
            Some(Stage::Done(_)) => Step::Done,
            None => Step::Failed,
        }
    }

    /// Whether every local party finished (every party confirmed the same result).
    pub fn is_done(&self) -> bool {
        self.locals
            .values()
            .all(|s| matches!(s, Some(Stage::Done(_))))
    }

    /// SHA-256 of the confirmed public key package, once [`Exchange::is_done`].
    pub fn public_key_package_hash(&self) -> Option<[u8; 32]> {
        match self.outputs().ok()?.first() {
            Some((_, output)) => public_key_package_hash(&output.public_key_package).ok(),
            None => None,
        }
    }

    /// What we still wait for.
    pub fn waiting(&self) -> Waiting {
        let missing = |have: &dyn Fn(PartyId) -> bool| -> Vec<PartyId> {
            let all = self.params.parties().iter().copied();
            all.filter(|p| !have(*p)).collect()
        };
        let step = self.step();
        let parties = match step {
            Step::Round1 => missing(&|p| self.round1.contains_key(&p)),
            Step::Round2 => {
                missing(&|p| self.holds(p) || self.round2.keys().any(|(from, _)| *from == p))
            }
            Step::Confirmations => missing(&|p| self.confirmations.contains_key(&p)),
            _ => Vec::new(),
        };
        Waiting { step, parties }
    }

    /// Our confirmed results, one per local party.
    ///
    /// Errors: called before [`Exchange::is_done`] ([`ProtocolError::UnexpectedMessage`]).
    pub fn outputs(&self) -> Result<Vec<(PartyId, &Output<C>)>> {
        self.locals
            .iter()
            .map(|(party, s)| match s {
                Some(Stage::Done(o)) => Ok((*party, o)),
                _ => Err(not_finished::<P>(*party)),
            })
            .collect()
    }

    /// Our confirmed results, one per local party, by value.
    ///
    /// Errors: as [`Exchange::outputs`].
    pub fn into_outputs(self) -> Result<Vec<(PartyId, Output<C>)>> {
        self.locals
            .into_iter()
            .map(|(party, s)| match s {
                Some(Stage::Done(o)) => Ok((party, o)),
                _ => Err(not_finished::<P>(party)),
            })
            .collect()
    }
}

fn not_finished<P: KeygenParams>(party: PartyId) -> ProtocolError {
    ProtocolError::UnexpectedMessage {
        expected: "a finished ceremony",
        actual: format!("party {party} has not finished the {}", P::NAME),
    }
}

/// Keeps the first message per key; a different second one is equivocation by `party`.
pub(crate) fn insert_once<K: Ord, V: Clone + PartialEq>(
    map: &mut BTreeMap<K, V>,
    key: K,
    value: &V,
    party: PartyId,
    what: &str,
) -> Result<bool> {
    match map.get(&key) {
        Some(existing) if existing == value => Ok(false),
        Some(_) => Err(ProtocolError::culprit(
            party,
            format!("it sent two different versions of its {what}"),
        )),
        None => {
            map.insert(key, value.clone());
            Ok(true)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;
    use crate::id::Epoch;
    use crate::id::pid;
    use crate::wire::{DkgParams, RefreshParams, WalletId};
    use rand_core::OsRng;

    type Tr = frost_secp256k1_tr::Secp256K1Sha256TR;

    fn params(parties: Vec<PartyId>, min_signers: u16) -> DkgParams {
        DkgParams {
            wallet_id: WalletId([9; 16]),
            ciphersuite: crate::wire::SUITE_SECP256K1_TR.into(),
            min_signers,
            parties,
        }
    }

    /// Runs every holder to the end, each round's messages delivered to everyone in reverse order
    /// (any order works: the exchange waits until a step's inputs are complete).
    fn run<P: KeygenParams>(holders: &mut [Exchange<Tr, P>], mut posted: Vec<Message>) {
        for _ in 0..8 {
            let batch = std::mem::take(&mut posted);
            for holder in holders.iter_mut() {
                for m in batch.iter().rev() {
                    holder.absorb(m, "message").unwrap();
                }
            }
            for holder in holders.iter_mut() {
                posted.extend(holder.advance(&mut OsRng).unwrap());
            }
            if holders.iter().all(Exchange::is_done) {
                return;
            }
        }
        panic!("the exchange did not finish");
    }

    fn dkg(groups: &[&[PartyId]], min_signers: u16) -> Vec<Exchange<Tr, DkgParams>> {
        let all: Vec<PartyId> = groups.iter().flat_map(|g| g.iter().copied()).collect();
        let p = params(all, min_signers);
        let mut holders = Vec::new();
        let mut posted = Vec::new();
        for group in groups {
            let locals = group.iter().map(|party| (*party, ())).collect();
            let (holder, first) = Exchange::<Tr, _>::start(&p, locals, &mut OsRng).unwrap();
            posted.extend(first);
            holders.push(holder);
        }
        run(&mut holders, posted);
        holders
    }

    #[test]
    fn holders_of_several_parties_agree_on_one_key() {
        // A provider holding three weighted parties and two members holding one each.
        let holders = dkg(&[&[pid(1)], &[pid(2)], &[pid(3), pid(4), pid(5)]], 3);
        let key = holders[0].outputs().unwrap()[0]
            .1
            .public_key_package
            .clone();
        for holder in &holders {
            for (_, output) in holder.outputs().unwrap() {
                assert_eq!(output.public_key_package, key);
            }
            assert_eq!(holder.waiting().step, Step::Done);
            assert!(holder.public_key_package_hash().is_some());
        }
        assert_eq!(holders[2].parties(), vec![3, 4, 5]);
    }

    #[test]
    fn a_refresh_keeps_the_key_through_the_same_engine() {
        let old = dkg(&[&[pid(1)], &[pid(2)], &[pid(3)]], 2);
        let refresh = RefreshParams {
            wallet_id: WalletId([9; 16]),
            ciphersuite: crate::wire::SUITE_SECP256K1_TR.into(),
            min_signers: 2,
            parties: vec![pid(1), pid(2), pid(3)],
            from_epoch: Epoch(0),
        };
        let mut holders = Vec::new();
        let mut posted = Vec::new();
        for holder in old {
            let (party, output) = holder.into_outputs().unwrap().pop().unwrap();
            let locals = vec![(party, (output.key_package, output.public_key_package))];
            let (holder, first) = Exchange::<Tr, _>::start(&refresh, locals, &mut OsRng).unwrap();
            posted.extend(first);
            holders.push(holder);
        }
        run(&mut holders, posted);
        let keys: Vec<_> = holders
            .iter()
            .map(|h| *h.outputs().unwrap()[0].1.public_key_package.verifying_key())
            .collect();
        assert!(keys.windows(2).all(|w| w[0] == w[1]));
    }

    #[test]
    fn a_second_different_message_names_its_sender_and_a_replay_is_ignored() {
        let p = params(vec![pid(1), pid(2)], 2);
        let (mut one, first) =
            Exchange::<Tr, _>::start(&p, vec![(pid(1), ())], &mut OsRng).unwrap();
        let (_, theirs) = Exchange::<Tr, _>::start(&p, vec![(pid(2), ())], &mut OsRng).unwrap();
        let (_, other) = Exchange::<Tr, _>::start(&p, vec![(pid(2), ())], &mut OsRng).unwrap();
        assert!(
            !one.absorb(&first[0], "round-1 message").unwrap(),
            "our own, already known"
        );
        assert!(one.absorb(&theirs[0], "round-1 message").unwrap());
        assert!(
            !one.absorb(&theirs[0], "round-1 message").unwrap(),
            "a replay"
        );
        assert!(matches!(
            one.absorb(&other[0], "round-1 message"),
            Err(ProtocolError::Culprit { party, .. }) if party == pid(2)
        ));
    }

    #[test]
    fn it_says_who_it_waits_for_and_ignores_packages_for_others() {
        let p = params(vec![pid(1), pid(2), pid(3)], 2);
        let (mut one, _) = Exchange::<Tr, _>::start(&p, vec![(pid(1), ())], &mut OsRng).unwrap();
        assert_eq!(
            one.waiting(),
            Waiting {
                step: Step::Round1,
                parties: vec![pid(2), pid(3)]
            }
        );
        assert!(
            one.advance(&mut OsRng).unwrap().is_empty(),
            "nothing to do yet"
        );
        let package = SealedPackage {
            from: pid(2),
            to: pid(3),
            enc: serde_bytes::ByteBuf::from(vec![0; 32]),
            ciphertext: serde_bytes::ByteBuf::from(vec![0; 48]),
        };
        assert!(!one.absorb(&Message::Round2(package), "package").unwrap());
        assert_eq!(one.step(), Step::Round1);
        assert!(one.unconfirmed().is_empty());
        assert!(one.outputs().is_err());
    }

    #[test]
    fn messages_from_or_to_strangers_and_packages_to_oneself_are_refused() {
        let p = params(vec![pid(1), pid(2), pid(3)], 2);
        let (mut one, _) = Exchange::<Tr, _>::start(&p, vec![(pid(1), ())], &mut OsRng).unwrap();
        let (_, stranger) = Exchange::<Tr, _>::start(
            &params(vec![pid(1), pid(9)], 2),
            vec![(pid(9), ())],
            &mut OsRng,
        )
        .unwrap();
        let package = |from, to| {
            Message::Round2(SealedPackage {
                from,
                to,
                enc: serde_bytes::ByteBuf::from(vec![0; 32]),
                ciphertext: serde_bytes::ByteBuf::from(vec![0; 48]),
            })
        };
        for bad in [
            stranger[0].clone(),
            package(pid(9), pid(1)),
            package(pid(2), pid(9)),
            package(pid(1), pid(1)),
        ] {
            assert!(
                matches!(
                    one.absorb(&bad, "message"),
                    Err(ProtocolError::UnexpectedMessage { .. })
                ),
                "{bad:?}"
            );
        }
        assert_eq!(one.waiting().parties, vec![2, 3], "nothing counted");
    }

    #[test]
    fn a_failed_round_ends_the_exchange_for_good() {
        let p = params(vec![pid(1), pid(2)], 2);
        let (mut one, _) = Exchange::<Tr, _>::start(&p, vec![(pid(1), ())], &mut OsRng).unwrap();
        // Party 2's round-1 message with a package that does not decode.
        let bad = Round1Message {
            from: pid(2),
            package: serde_bytes::ByteBuf::from(vec![0; 8]),
            hpke_public_key: serde_bytes::ByteBuf::from(vec![0; 32]),
        };
        one.absorb(&Message::Round1(bad), "round-1 message")
            .unwrap();
        assert!(matches!(
            one.advance(&mut OsRng),
            Err(ProtocolError::Culprit { party, .. }) if party == pid(2)
        ));
        assert!(one.advance(&mut OsRng).is_err());
        assert_eq!(one.waiting().step, Step::Failed);
    }
}
