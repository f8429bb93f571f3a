//! Distributed key generation: the KeyGen of the FROST paper (Komlo–Goldberg 2020, Figure 1, as
//! frost's `keys::dkg` implements it) as an IO-free state machine. RFC 9591 leaves key generation
//! out of scope (its Appendix C only describes a trusted dealer). The rounds, the confidential
//! round 2, the transcript and the confirmation round are [`crate::keygen`]'s, shared with the
//! refresh; this module is the DKG's flavour of it: [`DkgParams`], its domain tags, frost's
//! `part1`/`part2`/`part3`, and [`DkgState`] for callers that keep one value per ceremony.
//!
//! ```text
//! start ──► DkgRound1 ──handle_round1(all round-1 msgs)──► DkgRound2 ──handle_round2(sealed to us)
//!   │ Round1Message        │ Vec<SealedPackage>                          │ Confirmation
//!   ▼                      ▼                                             ▼
//!  broadcast           one per other party                 DkgRound3 ──handle_confirmations(all)──► DkgOutput
//! ```

pub(crate) mod common;

use frost_core::Ciphersuite;
use rand_core::{CryptoRng, RngCore};

pub use crate::keygen::{public_key_package_hash, round2_info, seal_package, transcript_hash};
pub use common::MAX_PARTIES;

use crate::error::{ProtocolError, Result};
use crate::id::PartyId;
use crate::keygen;
use crate::wire::{Confirmation, DkgParams, Round1Message, SealedPackage, WalletId};

/// Round 1 done: our broadcast is out, we wait for everyone's.
pub type DkgRound1<C> = keygen::Round1<C, DkgParams>;
/// Round 2 done: our sealed packages are out, we wait for the ones sealed to us.
pub type DkgRound2<C> = keygen::Round2<C, DkgParams>;
/// Round 3 done: we have a key, but it is not usable until every party confirmed the same one.
pub type DkgRound3<C> = keygen::Round3<C, DkgParams>;
/// The result of a DKG that every party confirmed.
pub type DkgOutput<C> = keygen::Output<C>;

/// Starts a DKG as party `me` ([`keygen::start`]): KeyGen round 1 (our secret polynomial, its
/// commitment and the proof of knowledge of its constant term) and a fresh HPKE key pair.
pub fn start<C: Ciphersuite>(
    params: &DkgParams,
    me: PartyId,
    rng: &mut (impl CryptoRng + RngCore),
) -> Result<(DkgRound1<C>, Round1Message)> {
    keygen::start(params, me, rng)
}

/// HPKE AAD of the DKG round-2 package from `from` to `to` ([`keygen::round2_aad`]).
pub fn round2_aad(
    wallet_id: &WalletId,
    from: PartyId,
    to: PartyId,
    transcript_hash: &[u8; 32],
) -> Vec<u8> {
    keygen::round2_aad(
        &<DkgParams as keygen::KeygenParams>::TAGS,
        wallet_id,
        None,
        from,
        to,
        transcript_hash,
    )
}

impl<C: Ciphersuite> DkgRound2<C> {
    /// Takes the packages sealed to us, one from each other party, opens and verifies them
    /// (KeyGen round 2 step 2, frost `part3`), derives our key share, and returns the confirmation
    /// to send to every party.
    ///
    /// Errors: a missing, duplicated, unknown-sender or misaddressed package
    /// ([`ProtocolError::UnexpectedMessage`]); a package that does not open, does not decode or
    /// carries a share inconsistent with its sender's commitment ([`ProtocolError::Culprit`]
    /// naming the sender).
    pub fn handle_round2(self, packages: &[SealedPackage]) -> Result<(DkgRound3<C>, Confirmation)> {
        // frost's part3 checks each share against its sender's commitment and names culprits.
        let opened = self.open(packages, |_, _, _| Ok(()))?;
        // KeyGen round 2 steps 2-4: check each share, sum them into our signing share, derive the
        // group key. The received shares and the round secrets drop (zeroize) right after.
        let (key_package, public_key_package) = frost_core::keys::dkg::part3(
            &opened.secret,
            &opened.round1_packages,
            &opened.round2_packages,
        )
        .map_err(|e| common::frost_error(e, &opened.params.parties, "DKG round 3"))?;
        opened.confirm(key_package, public_key_package)
    }
}

/// An input to [`DkgState::handle`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DkgInput {
    /// Every party's round-1 message.
    Round1(Vec<Round1Message>),
    /// The round-2 packages sealed to us.
    Round2(Vec<SealedPackage>),
    /// Every party's confirmation.
    Confirmations(Vec<Confirmation>),
}

impl DkgInput {
    fn name(&self) -> &'static str {
        match self {
            Self::Round1(_) => "round-1 messages",
            Self::Round2(_) => "round-2 packages",
            Self::Confirmations(_) => "confirmations",
        }
    }
}

/// What [`DkgState::handle`] produced, to relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DkgOutputMessage {
    /// Our sealed round-2 packages, one per other party.
    Round2(Vec<SealedPackage>),
    /// Our confirmation, for every party.
    Confirmation(Confirmation),
    /// Every party confirmed: the state is [`DkgState::Done`]; nothing to send.
    Done,
}

/// A participant's DKG as one value, for callers that keep `handle(state, message)` loops
/// (rustls style). Wraps the typed rounds; a wrong input for the state is an error that ends the
/// ceremony, like any other.
pub enum DkgState<C: Ciphersuite> {
    /// Waiting for every round-1 message.
    AwaitingRound1(DkgRound1<C>),
    /// Waiting for the round-2 packages sealed to us.
    AwaitingRound2(DkgRound2<C>),
    /// Waiting for every confirmation.
    AwaitingConfirmations(DkgRound3<C>),
    /// Finished and confirmed.
    Done {
        /// The ceremony's parameters (parties sorted).
        params: DkgParams,
        /// Our party number.
        me: PartyId,
        /// The confirmed key.
        output: Box<DkgOutput<C>>,
    },
}

impl<C: Ciphersuite> DkgState<C> {
    /// Starts a DKG ([`start`]) and wraps the first state.
    pub fn start(
        params: &DkgParams,
        me: PartyId,
        rng: &mut (impl CryptoRng + RngCore),
    ) -> Result<(Self, Round1Message)> {
        let (state, message) = start(params, me, rng)?;
        Ok((Self::AwaitingRound1(state), message))
    }

    /// Advances the ceremony by one input.
    pub fn handle(
        self,
        input: DkgInput,
        rng: &mut (impl CryptoRng + RngCore),
    ) -> Result<(Self, DkgOutputMessage)> {
        match (self, input) {
            (Self::AwaitingRound1(s), DkgInput::Round1(messages)) => {
                let (s, packages) = s.handle_round1(&messages, rng)?;
                Ok((Self::AwaitingRound2(s), DkgOutputMessage::Round2(packages)))
            }
            (Self::AwaitingRound2(s), DkgInput::Round2(packages)) => {
                let (s, confirmation) = s.handle_round2(&packages)?;
                Ok((
                    Self::AwaitingConfirmations(s),
                    DkgOutputMessage::Confirmation(confirmation),
                ))
            }
            (Self::AwaitingConfirmations(s), DkgInput::Confirmations(confirmations)) => {
                let (params, me) = (s.params().clone(), s.me());
                let output = Box::new(s.handle_confirmations(&confirmations)?);
                Ok((Self::Done { params, me, output }, DkgOutputMessage::Done))
            }
            (state, input) => Err(ProtocolError::UnexpectedMessage {
                expected: state.expects(),
                actual: input.name().into(),
            }),
        }
    }

    /// What the state waits for.
    pub fn expects(&self) -> &'static str {
        match self {
            Self::AwaitingRound1(_) => "round-1 messages",
            Self::AwaitingRound2(_) => "round-2 packages",
            Self::AwaitingConfirmations(_) => "confirmations",
            Self::Done { .. } => "nothing (the DKG is finished)",
        }
    }

    /// The ceremony's parameters (parties sorted).
    pub fn params(&self) -> &DkgParams {
        match self {
            Self::AwaitingRound1(s) => s.params(),
            Self::AwaitingRound2(s) => s.params(),
            Self::AwaitingConfirmations(s) => s.params(),
            Self::Done { params, .. } => params,
        }
    }

    /// Our party number.
    pub fn me(&self) -> PartyId {
        match self {
            Self::AwaitingRound1(s) => s.me(),
            Self::AwaitingRound2(s) => s.me(),
            Self::AwaitingConfirmations(s) => s.me(),
            Self::Done { me, .. } => *me,
        }
    }

    /// The confirmed result, once [`DkgState::Done`].
    pub fn into_output(self) -> Option<DkgOutput<C>> {
        match self {
            Self::Done { output, .. } => Some(*output),
            _ => None,
        }
    }
}

impl<C: Ciphersuite> std::fmt::Debug for DkgState<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::AwaitingRound1(s) => f.debug_tuple("AwaitingRound1").field(s).finish(),
            Self::AwaitingRound2(s) => f.debug_tuple("AwaitingRound2").field(s).finish(),
            Self::AwaitingConfirmations(s) => {
                f.debug_tuple("AwaitingConfirmations").field(s).finish()
            }
            Self::Done { params, me, output } => f
                .debug_struct("Done")
                .field("params", params)
                .field("me", me)
                .field("output", output)
                .finish(),
        }
    }
}
