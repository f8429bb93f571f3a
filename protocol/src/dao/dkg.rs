//! A DAO's DKG over the mailbox: each holder of a key (a member's device, or the provider with its
//! several parties) runs one [`DaoDkg`] that absorbs the signed messages of the topic in any order
//! and advances its parties' [`DkgState`]s when their inputs are complete.
//!
//! What the mailbox cannot do to it: a message is accepted only from the key that owns its party
//! (the invitation fixes the owners), so nobody speaks for another; a party that sends two
//! different round-1 messages or confirmations is named (equivocation); replays are ignored. A
//! mailbox that shows parties different messages makes the DKG fail at round 2 or at the
//! confirmation round ([`crate::dkg`]); it never produces a key two parties disagree on.
//!
//! # Attempts, and why a stopped member costs nothing
//!
//! Round secrets (frost's secret packages, the HPKE key round-2 packages are sealed to) live in
//! memory only and are used once. A member whose process stops mid-DKG therefore cannot go on:
//! when it runs again it sees its own round-1 message in the topic, and asks for a new attempt
//! ([`DaoMessage::DkgRetry`]). The provider, the one party every member listens to, starts attempt
//! `n + 1` ([`DaoMessage::DkgAttempt`]) with fresh secrets, and every holder drops what it had of
//! attempt `n` and starts again. Every DKG message names its attempt; a message of another
//! attempt is ignored, so nothing of an abandoned attempt can leak into the next one. At most
//! [`MAX_ATTEMPTS`] attempts run per invitation (a member restarting forever only delays).
//!
//! Once its key is confirmed a member first stores its share, then says so
//! ([`DaoMessage::DkgStored`]); the provider stores its own shares and activates the wallet only
//! when every member did. So a member stopped after the confirmation finds its share on disk when
//! it runs again, and an active wallet never lacks a member's share because a process stopped.

use std::collections::BTreeMap;

use frost_core::Ciphersuite;
use rand_core::{CryptoRng, RngCore};
use serde_bytes::ByteBuf;

use super::{DaoMessage, Layout};
use crate::dkg::DkgOutput;
use crate::error::{ProtocolError, Result};
use crate::id::PartyId;
use crate::keygen::exchange::{Exchange, Message, Step, Waiting};
use crate::wire::DkgParams;

pub(crate) use crate::keygen::exchange::insert_once;

/// The confirmed shares of one key holder, by party.
pub type Outputs<C> = Vec<(PartyId, DkgOutput<C>)>;

/// Most attempts of one invitation's DKG (attempts `0..MAX_ATTEMPTS`).
pub const MAX_ATTEMPTS: u32 = 8;

/// One key holder's side of one attempt of a DAO DKG.
pub struct DaoDkg<C: Ciphersuite> {
    layout: Layout,
    attempt: u32,
    exchange: Exchange<C, DkgParams>,
    /// Member parties that stored their share of this attempt, with the public key package hash
    /// they stored.
    stored: BTreeMap<PartyId, ByteBuf>,
}

impl<C: Ciphersuite> std::fmt::Debug for DaoDkg<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DaoDkg")
            .field("wallet_id", &self.layout.wallet_id)
            .field("attempt", &self.attempt)
            .field("locals", &self.exchange.parties())
            .field("waiting_for", &self.waiting_for())
            .finish_non_exhaustive()
    }
}

impl<C: Ciphersuite> DaoDkg<C> {
    /// Starts the first attempt of the DKG for every party `key` holds in `layout`; returns the
    /// round-1 messages to post.
    ///
    /// Errors: `key` holds no party ([`ProtocolError::Params`]), or round 1 fails.
    pub fn start(
        layout: Layout,
        key: &[u8],
        rng: &mut (impl CryptoRng + RngCore),
    ) -> Result<(Self, Vec<DaoMessage>)> {
        Self::start_attempt(layout, key, 0, rng)
    }

    /// Starts attempt `attempt` of the DKG (fresh round secrets: nothing of an earlier attempt
    /// is reused); returns the round-1 messages to post.
    ///
    /// Errors: `key` holds no party, or `attempt` is not below [`MAX_ATTEMPTS`]
    /// ([`ProtocolError::Params`]); round 1 fails.
    pub fn start_attempt(
        layout: Layout,
        key: &[u8],
        attempt: u32,
        rng: &mut (impl CryptoRng + RngCore),
    ) -> Result<(Self, Vec<DaoMessage>)> {
        if attempt >= MAX_ATTEMPTS {
            return Err(ProtocolError::Params {
                reason: format!(
                    "the DKG of this invitation was restarted {attempt} times, at most \
                     {MAX_ATTEMPTS} attempts run: make a new invitation"
                ),
            });
        }
        let parties = layout.parties_of(key);
        if parties.is_empty() {
            return Err(ProtocolError::Params {
                reason: "this key is neither a member nor the provider of the invitation".into(),
            });
        }
        let locals = parties.into_iter().map(|p| (p, ())).collect();
        let (exchange, first) = Exchange::start(&layout.params, locals, rng)?;
        let dkg = Self {
            layout,
            attempt,
            exchange,
            stored: BTreeMap::new(),
        };
        let out = first.into_iter().map(|m| dkg.post(m)).collect();
        Ok((dkg, out))
    }

    /// The layout this DKG creates.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// This DKG's attempt.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The mailbox message carrying one of our exchange's messages.
    fn post(&self, message: Message) -> DaoMessage {
        let attempt = self.attempt;
        match message {
            Message::Round1(message) => DaoMessage::DkgRound1 { attempt, message },
            Message::Round2(package) => DaoMessage::DkgRound2 { attempt, package },
            Message::Confirmation(confirmation) => DaoMessage::DkgConfirm {
                confirmation,
                invitation: ByteBuf::from(self.layout.invitation_hash.to_vec()),
                attempt,
            },
        }
    }

    /// Takes one verified message from `sender` (the envelope's signer). Returns whether it was
    /// new. Messages of other kinds or of another attempt are ignored.
    ///
    /// Errors: the sender does not own the party it speaks for, or sent two different messages
    /// for the same step ([`ProtocolError::Culprit`]).
    pub fn absorb(&mut self, sender: &[u8], message: &DaoMessage) -> Result<bool> {
        if message.dkg_attempt() != Some(self.attempt) {
            return Ok(false);
        }
        let (inner, what) = match message {
            DaoMessage::DkgRound1 { message: m, .. } => {
                (Message::Round1(m.clone()), "round-1 message")
            }
            DaoMessage::DkgRound2 { package: p, .. } => {
                (Message::Round2(p.clone()), "round-2 package")
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
                (Message::Confirmation(c.clone()), "confirmation")
            }
            DaoMessage::DkgStored {
                party,
                public_key_package,
                ..
            } => {
                check_member(&self.layout, sender, *party, "stored notice")?;
                let (map, key) = (&mut self.stored, *party);
                return insert_once(map, key, public_key_package, key, "stored notice");
            }
            _ => return Ok(false),
        };
        check_owner(&self.layout, sender, inner.from(), what)?;
        self.exchange.absorb(&inner, what)
    }

    /// Whether `message` from `sender` is a member's valid request to restart this attempt
    /// ([`DaoMessage::DkgRetry`] naming this attempt, signed by the member it names). A request
    /// for an older attempt is stale (`false`).
    ///
    /// Errors: signed by another key than the member's ([`ProtocolError::Culprit`]).
    pub fn is_retry(&self, sender: &[u8], message: &DaoMessage) -> Result<bool> {
        match message {
            DaoMessage::DkgRetry { attempt, party } if *attempt == self.attempt => {
                check_member(&self.layout, sender, *party, "restart request")?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Advances every local party whose inputs are complete; returns the messages to post.
    ///
    /// Errors: a round fails (the DKG is over; start again with a new invitation).
    pub fn advance(&mut self, rng: &mut (impl CryptoRng + RngCore)) -> Result<Vec<DaoMessage>> {
        let out = self.exchange.advance(rng)?;
        Ok(out.into_iter().map(|m| self.post(m)).collect())
    }

    /// Whether every local party finished (every party of the wallet confirmed the same key).
    pub fn is_done(&self) -> bool {
        self.exchange.is_done()
    }

    /// SHA-256 of the confirmed public key package, once [`DaoDkg::is_done`].
    pub fn public_key_package_hash(&self) -> Option<[u8; 32]> {
        self.exchange.public_key_package_hash()
    }

    /// A member's notice that it stored its share of this attempt (post it only once the share
    /// is on disk).
    ///
    /// Errors: the DKG is not finished, or this holder is not exactly one member
    /// ([`ProtocolError::UnexpectedMessage`]).
    pub fn stored_notice(&self) -> Result<DaoMessage> {
        let hash = self
            .public_key_package_hash()
            .ok_or(ProtocolError::UnexpectedMessage {
                expected: "a finished DKG",
                actual: "a notice that the share is stored".into(),
            })?;
        let parties = self.exchange.parties();
        match parties.as_slice() {
            [party] if !self.layout.provider_parties.contains(party) => Ok(DaoMessage::DkgStored {
                attempt: self.attempt,
                party: *party,
                public_key_package: ByteBuf::from(hash.to_vec()),
            }),
            _ => Err(ProtocolError::UnexpectedMessage {
                expected: "a member's DKG",
                actual: format!("parties {parties:?} storing their shares"),
            }),
        }
    }

    /// Whether the DKG is finished and every member stored its share of the confirmed key: only
    /// then may the provider activate the wallet.
    ///
    /// Errors: a member stored another key than the confirmed one
    /// ([`ProtocolError::Disagreement`]).
    pub fn all_stored(&self) -> Result<bool> {
        all_stored(&self.layout, &self.stored, self.public_key_package_hash())
    }

    /// What we still wait for: the exchange's step and missing parties, or once it is done, the
    /// members that have not said they stored their share.
    pub fn waiting(&self) -> Waiting {
        let waiting = self.exchange.waiting();
        if waiting.step != Step::Done {
            return waiting;
        }
        let members = self.layout.members.iter().map(|(p, _)| *p);
        Waiting {
            step: Step::Done,
            parties: members.filter(|p| !self.stored.contains_key(p)).collect(),
        }
    }

    /// What we still wait for, as a progress line.
    pub fn waiting_for(&self) -> String {
        let waiting = self.waiting();
        match waiting.step {
            Step::Done => format!("members {:?} to store their shares", waiting.parties),
            _ => waiting.to_string(),
        }
    }

    /// The confirmed results, one per local party, once [`DaoDkg::is_done`].
    ///
    /// Errors: called before the end ([`ProtocolError::UnexpectedMessage`]).
    pub fn into_outputs(self) -> Result<(Layout, Outputs<C>)> {
        Ok((self.layout, self.exchange.into_outputs()?))
    }
}

/// Checks that `sender` owns `party` in `layout` (the invitation fixes the owners).
/// Whether every member of `layout` said (in `stored`) it stored the key whose public side
/// hashes to `ours` (`None`: not confirmed yet). Errors: one stored another.
pub(super) fn all_stored(
    layout: &Layout,
    stored: &BTreeMap<PartyId, ByteBuf>,
    ours: Option<[u8; 32]>,
) -> Result<bool> {
    let Some(ours) = ours else {
        return Ok(false);
    };
    for (party, _) in &layout.members {
        match stored.get(party) {
            None => return Ok(false),
            Some(theirs) if theirs.as_slice() == ours.as_slice() => {}
            Some(_) => {
                return Err(ProtocolError::Disagreement {
                    reason: format!("party {party} stored another key than the confirmed one"),
                });
            }
        }
    }
    Ok(true)
}

pub(super) fn check_owner(
    layout: &Layout,
    sender: &[u8],
    party: PartyId,
    what: &str,
) -> Result<()> {
    match layout.owner_of(party) {
        Some(owner) if owner == sender => Ok(()),
        Some(_) => Err(ProtocolError::culprit(
            party,
            format!("a {what} for it was signed by another key"),
        )),
        None => Err(ProtocolError::UnexpectedMessage {
            expected: "a message from a party of the wallet",
            actual: format!("{what} from unknown party {party}"),
        }),
    }
}

/// Checks that `sender` owns `party` and that it is a member's, not the provider's.
pub(super) fn check_member(
    layout: &Layout,
    sender: &[u8],
    party: PartyId,
    what: &str,
) -> Result<()> {
    if layout.provider_parties.contains(&party) {
        return Err(ProtocolError::culprit(
            party,
            format!("a {what} is a member's, not the provider's"),
        ));
    }
    check_owner(layout, sender, party, what)
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;
    use crate::auth::public_key_bytes;
    use crate::dao::tests::{invitation, keys};
    use crate::id::pid;
    use rand_core::OsRng;

    type Tr = frost_secp256k1_tr::Secp256K1Sha256TR;

    /// Runs a whole DKG in memory, messages delivered in a shuffled order through a "mailbox".
    pub(crate) fn run_dkg(
        members: &[p256::ecdsa::SigningKey],
        provider: &p256::ecdsa::SigningKey,
    ) -> Vec<(Vec<u8>, Layout, Outputs<Tr>)> {
        let inv = invitation(members, provider);
        let mut holders: Vec<(Vec<u8>, DaoDkg<Tr>)> = Vec::new();
        let mut mailbox: Vec<(Vec<u8>, DaoMessage)> = Vec::new();
        for key in members.iter().chain(std::iter::once(provider)) {
            let pk = public_key_bytes(key);
            let (d, out) = DaoDkg::<Tr>::start(inv.layout().unwrap(), &pk, &mut OsRng).unwrap();
            mailbox.extend(out.into_iter().map(|m| (pk.clone(), m)));
            holders.push((pk, d));
        }
        let mut rounds = 0;
        while !holders.iter().all(|(_, d)| d.is_done()) {
            rounds += 1;
            assert!(rounds < 20, "DKG did not converge");
            let snapshot = mailbox.clone();
            for (_, d) in holders.iter_mut() {
                for (sender, m) in snapshot.iter().rev() {
                    d.absorb(sender, m).unwrap();
                }
                let out = d.advance(&mut OsRng).unwrap();
                let pk = holders_key(d);
                mailbox.extend(out.into_iter().map(|m| (pk.clone(), m)));
            }
        }
        holders
            .into_iter()
            .map(|(pk, d)| {
                let (layout, outputs) = d.into_outputs().unwrap();
                (pk, layout, outputs)
            })
            .collect()
    }

    fn holders_key(d: &DaoDkg<Tr>) -> Vec<u8> {
        let first = d.exchange.parties()[0];
        d.layout.owner_of(first).unwrap().to_vec()
    }

    #[test]
    fn five_members_and_a_weighted_provider_agree_on_one_key() {
        let members = keys(5);
        let provider = keys(1).pop().unwrap();
        let results = run_dkg(&members, &provider);
        let group = *results[0].2[0].1.public_key_package.verifying_key();
        for (_, _, outputs) in &results {
            for (_, o) in outputs {
                assert_eq!(o.public_key_package.verifying_key(), &group);
                assert_eq!(*o.key_package.min_signers(), 6);
            }
        }
        // The provider holds three parties, members one each.
        assert_eq!(results[5].2.len(), 3);
        assert!(results[..5].iter().all(|(_, _, o)| o.len() == 1));
    }

    #[test]
    fn a_member_cannot_speak_for_another_and_equivocation_is_named() {
        let members = keys(5);
        let provider = keys(1).pop().unwrap();
        let inv = invitation(&members, &provider);
        let pk0 = public_key_bytes(&members[0]);
        let pk1 = public_key_bytes(&members[1]);
        let (mut d0, out0) = DaoDkg::<Tr>::start(inv.layout().unwrap(), &pk0, &mut OsRng).unwrap();
        let (_d1, out1) = DaoDkg::<Tr>::start(inv.layout().unwrap(), &pk1, &mut OsRng).unwrap();
        // Member 1's round 1 signed by member 0's key: refused, naming party 2.
        let err = d0.absorb(&pk0, &out1[0]).unwrap_err();
        assert!(
            matches!(err, ProtocolError::Culprit { party, .. } if party == pid(2)),
            "{err}"
        );
        // The right sender: accepted once; replay ignored.
        assert!(d0.absorb(&pk1, &out1[0]).unwrap());
        assert!(!d0.absorb(&pk1, &out1[0]).unwrap());
        // A second, different round 1 from party 2: equivocation.
        let (_again, other) = DaoDkg::<Tr>::start(inv.layout().unwrap(), &pk1, &mut OsRng).unwrap();
        let err = d0.absorb(&pk1, &other[0]).unwrap_err();
        assert!(
            matches!(err, ProtocolError::Culprit { party, .. } if party == pid(2)),
            "{err}"
        );
        // Our own message replayed to us: not new.
        assert!(!d0.absorb(&pk0, &out0[0]).unwrap());
        // A confirmation for another invitation colliding on the wallet id: refused.
        let forged = DaoMessage::DkgConfirm {
            confirmation: crate::wire::Confirmation {
                from: pid(2),
                transcript_hash: ByteBuf::from(vec![0; 32]),
                public_key_package_hash: ByteBuf::from(vec![0; 32]),
            },
            invitation: ByteBuf::from(vec![1; 32]),
            attempt: 0,
        };
        assert!(matches!(
            d0.absorb(&pk1, &forged),
            Err(ProtocolError::Disagreement { .. })
        ));
        // A stranger's key holds no party.
        let stranger = public_key_bytes(&keys(1)[0]);
        assert!(DaoDkg::<Tr>::start(inv.layout().unwrap(), &stranger, &mut OsRng).is_err());
    }

    #[test]
    fn a_member_that_lost_its_state_gets_a_new_attempt_and_activation_waits_for_stored_shares() {
        let members = keys(3);
        let provider = keys(1).pop().unwrap();
        let mut inv = invitation(&members, &provider);
        inv.policy = "[[rule]]\nname = \"two\"\napprovals = 2\n".into();
        let layout = || inv.layout().unwrap();
        let ppk = public_key_bytes(&provider);
        let pks: Vec<Vec<u8>> = members.iter().map(public_key_bytes).collect();
        let mut mailbox: Vec<(Vec<u8>, DaoMessage)> = Vec::new();
        let (mut prov, out) = DaoDkg::<Tr>::start(layout(), &ppk, &mut OsRng).unwrap();
        mailbox.extend(out.into_iter().map(|m| (ppk.clone(), m)));
        let mut holders: Vec<DaoDkg<Tr>> = Vec::new();
        for pk in &pks {
            let (d, out) = DaoDkg::<Tr>::start(layout(), pk, &mut OsRng).unwrap();
            mailbox.extend(out.into_iter().map(|m| (pk.clone(), m)));
            holders.push(d);
        }
        // Member 3's process stops after round 1: its state is gone. Running again, it asks
        // for a new attempt; a stranger's or a stale request does nothing.
        holders.pop();
        let retry = DaoMessage::DkgRetry {
            attempt: 0,
            party: pid(3),
        };
        assert!(prov.is_retry(&pks[2], &retry).unwrap());
        assert!(
            prov.is_retry(&pks[0], &retry).is_err(),
            "signed by member 1"
        );
        let stale = DaoMessage::DkgRetry {
            attempt: 7,
            party: pid(3),
        };
        assert!(!prov.is_retry(&pks[2], &stale).unwrap());
        // The provider starts attempt 1; everyone drops attempt 0 and starts again.
        let (p1, out) = DaoDkg::<Tr>::start_attempt(layout(), &ppk, 1, &mut OsRng).unwrap();
        prov = p1;
        mailbox.push((ppk.clone(), DaoMessage::DkgAttempt { attempt: 1 }));
        mailbox.extend(out.into_iter().map(|m| (ppk.clone(), m)));
        holders.clear();
        for pk in &pks {
            let (d, out) = DaoDkg::<Tr>::start_attempt(layout(), pk, 1, &mut OsRng).unwrap();
            mailbox.extend(out.into_iter().map(|m| (pk.clone(), m)));
            holders.push(d);
        }
        for _ in 0..6 {
            let snapshot = mailbox.clone();
            for (i, d) in holders.iter_mut().enumerate() {
                for (sender, m) in &snapshot {
                    // Attempt-0 messages are ignored, not equivocation.
                    d.absorb(sender, m).unwrap();
                }
                let out = d.advance(&mut OsRng).unwrap();
                mailbox.extend(out.into_iter().map(|m| (pks[i].clone(), m)));
            }
            for (sender, m) in &snapshot {
                prov.absorb(sender, m).unwrap();
            }
            let out = prov.advance(&mut OsRng).unwrap();
            mailbox.extend(out.into_iter().map(|m| (ppk.clone(), m)));
        }
        assert!(prov.is_done() && holders.iter().all(DaoDkg::is_done));
        // Done, but not activatable until every member stored its share.
        assert!(!prov.all_stored().unwrap());
        let notices: Vec<DaoMessage> = holders.iter().map(|d| d.stored_notice().unwrap()).collect();
        assert!(
            prov.stored_notice().is_err(),
            "the provider sends no notice"
        );
        // A notice signed by another member: refused.
        assert!(prov.absorb(&pks[0], &notices[1]).is_err());
        for (i, n) in notices.iter().enumerate().take(2) {
            assert!(prov.absorb(&pks[i], n).unwrap());
        }
        assert!(!prov.all_stored().unwrap());
        // A member storing another key is a disagreement.
        let mut other = notices[2].clone();
        if let DaoMessage::DkgStored {
            public_key_package, ..
        } = &mut other
        {
            *public_key_package = ByteBuf::from(vec![0; 32]);
        }
        assert!(prov.absorb(&pks[2], &notices[2]).unwrap());
        assert!(prov.all_stored().unwrap());
        assert!(prov.absorb(&pks[2], &other).is_err(), "equivocation");
        let group = *holders[0].public_key_package_hash().as_ref().unwrap();
        assert_eq!(prov.public_key_package_hash(), Some(group));
        // Attempts are bounded.
        assert!(DaoDkg::<Tr>::start_attempt(layout(), &ppk, MAX_ATTEMPTS, &mut OsRng).is_err());
    }
}
