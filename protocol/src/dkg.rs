//! Distributed key generation: the KeyGen of the FROST paper (Komlo–Goldberg 2020, Figure 1, as
//! frost's `keys::dkg` implements it) as an IO-free state machine. RFC 9591 leaves key generation
//! out of scope (its Appendix C only describes a trusted dealer); what KeyGen leaves to the
//! application, and this module adds:
//!
//! * **Confidential round 2.** Each round-2 package is a secret share; it is sealed with HPKE
//!   ([`crate::hpke`], RFC 9180) to a key its recipient broadcast in round 1, and bound by the AAD
//!   to wallet, sender, recipient and the round-1 transcript.
//! * **Broadcast.** KeyGen assumes every party sees the same round-1 messages; our coordinator is a
//!   relay that could show each party different ones (frost issue 577). Every party hashes the
//!   round-1 transcript and binds the hash into every round-2 AAD, so two parties with different
//!   views cannot open each other's packages: the split shows in round 2 already. The
//!   confirmation round then compares transcript and public key package across all parties, and
//!   makes everyone wait for everyone: a [`DkgOutput`] exists only once every party's
//!   confirmation matches ours, so no party activates a wallet that another one failed.
//!
//! ```text
//! start ──► DkgRound1 ──handle_round1(all round-1 msgs)──► DkgRound2 ──handle_round2(sealed to us)
//!   │ Round1Message        │ Vec<SealedPackage>                          │ Confirmation
//!   ▼                      ▼                                             ▼
//!  broadcast           one per other party                 DkgRound3 ──handle_confirmations(all)──► DkgOutput
//! ```
//!
//! Each step consumes the state: a failed step ends the ceremony, and a new one starts from
//! [`start`] with fresh secrets. Secrets (frost's round secrets, the HPKE key, the key package)
//! zeroize on drop and never appear in `Debug`.
//!
//! Culprits: round-1 messages carry no signature and base-mode HPKE does not authenticate the
//! sender, so a [`ProtocolError::Culprit`] names the party whose message, *as relayed*, was bad. A
//! relay can make an honest party look guilty, never make a bad key look good.

pub(crate) mod common;
mod transcript;

use std::collections::BTreeMap;

use frost_core::Ciphersuite;
use frost_core::keys::dkg::{round1, round2};
use frost_core::keys::{KeyPackage, PublicKeyPackage};
use rand_core::{CryptoRng, RngCore};
use serde_bytes::ByteBuf;
use zeroize::Zeroizing;

pub use common::MAX_PARTIES;
pub use transcript::{public_key_package_hash, round2_aad, round2_info, transcript_hash};

use crate::error::{ProtocolError, Result};
use crate::hpke::{self, HpkeSecretKey};
use crate::wire::{Confirmation, DkgParams, Round1Message, SealedPackage};

/// Round 1 done: our broadcast is out, we wait for everyone's.
pub struct DkgRound1<C: Ciphersuite> {
    params: DkgParams,
    me: u16,
    /// frost's round-1 secret (our polynomial); zeroizes on drop.
    secret: round1::SecretPackage<C>,
    /// Round-2 packages to us are sealed to this key.
    hpke_secret: HpkeSecretKey,
    /// What we broadcast, to check that the relay did not alter it.
    message: Round1Message,
}

/// Round 2 done: our sealed packages are out, we wait for the ones sealed to us.
pub struct DkgRound2<C: Ciphersuite> {
    params: DkgParams,
    me: u16,
    /// frost's round-2 secret (our share of our own polynomial); zeroizes on drop.
    secret: round2::SecretPackage<C>,
    hpke_secret: HpkeSecretKey,
    /// The other parties' round-1 packages, by identifier, as part3 needs them.
    round1_packages: BTreeMap<frost_core::Identifier<C>, round1::Package<C>>,
    transcript_hash: [u8; 32],
}

/// Round 3 done: we have a key, but it is not usable until every party confirmed the same one.
pub struct DkgRound3<C: Ciphersuite> {
    params: DkgParams,
    me: u16,
    key_package: KeyPackage<C>,
    public_key_package: PublicKeyPackage<C>,
    transcript_hash: [u8; 32],
    confirmation: Confirmation,
}

/// The result of a DKG that every party confirmed.
///
/// `key_package` holds our signing share: seal it before storing it anywhere, and never send it.
pub struct DkgOutput<C: Ciphersuite> {
    /// Our long-lived share and the group key (zeroizes on drop). For `frost-secp256k1-tr` the group
    /// key is already the BIP-341 tweaked output key Q.
    pub key_package: KeyPackage<C>,
    /// The group key and every party's verifying share: public, identical at every party.
    pub public_key_package: PublicKeyPackage<C>,
    /// The transcript hash every party confirmed.
    pub transcript_hash: [u8; 32],
}

/// Checks the parameters for party `me` and returns them with the parties sorted.
fn validate_params<C: Ciphersuite>(params: &DkgParams, me: u16) -> Result<DkgParams> {
    if params.ciphersuite != C::ID {
        return Err(ProtocolError::Ciphersuite {
            actual: params.ciphersuite.clone(),
        });
    }
    let parties = common::normalize_parties(&params.parties, "party set")?;
    if params.min_signers < 2 {
        return Err(ProtocolError::Params {
            reason: format!(
                "threshold {} is below 2: one party alone could sign",
                params.min_signers
            ),
        });
    }
    if usize::from(params.min_signers) > parties.len() {
        return Err(ProtocolError::Params {
            reason: format!(
                "threshold {} exceeds the {} parties",
                params.min_signers,
                parties.len()
            ),
        });
    }
    if !parties.contains(&me) {
        return Err(ProtocolError::Params {
            reason: format!("party {me} is not in the party set {parties:?}"),
        });
    }
    Ok(DkgParams {
        parties,
        ..params.clone()
    })
}

/// Starts a DKG as party `me`: runs KeyGen round 1 (frost `part1`: our secret polynomial, its
/// commitment and the proof of knowledge of its constant term) and draws a fresh HPKE key pair for
/// this ceremony. Returns the state and our round-1 broadcast, which must reach every party
/// unchanged.
///
/// `params.parties` may come in any order; the state keeps them sorted ([`DkgRound1::params`]).
pub fn start<C: Ciphersuite>(
    params: &DkgParams,
    me: u16,
    rng: &mut (impl CryptoRng + RngCore),
) -> Result<(DkgRound1<C>, Round1Message)> {
    let params = validate_params::<C>(params, me)?;
    let id = common::identifier::<C>(me)?;
    let max_signers = u16::try_from(params.parties.len()).map_err(|_| ProtocolError::Params {
        reason: "too many parties".into(),
    })?;
    let (secret, package) =
        frost_core::keys::dkg::part1(id, max_signers, params.min_signers, &mut *rng)
            .map_err(|e| common::frost_error(e, &params.parties, "DKG round 1"))?;
    let package = package.serialize().map_err(|e| ProtocolError::Frost {
        reason: format!("serializing our round-1 package: {e}"),
    })?;
    let (hpke_secret, hpke_public_key) = hpke::generate_keypair(rng);
    let message = Round1Message {
        from: me,
        package: ByteBuf::from(package),
        hpke_public_key: ByteBuf::from(hpke_public_key),
    };
    let state = DkgRound1 {
        params,
        me,
        secret,
        hpke_secret,
        message: message.clone(),
    };
    Ok((state, message))
}

impl<C: Ciphersuite> DkgRound1<C> {
    /// The ceremony's parameters (parties sorted).
    pub fn params(&self) -> &DkgParams {
        &self.params
    }

    /// Our party number.
    pub fn me(&self) -> u16 {
        self.me
    }

    /// Our round-1 broadcast (to send it again if the transport lost it).
    pub fn round1_message(&self) -> &Round1Message {
        &self.message
    }

    /// Takes every party's round-1 message (ours included), checks them, runs KeyGen round 2
    /// (frost `part2`: verify each proof of knowledge, evaluate our polynomial at each other party)
    /// and seals each resulting share to its recipient.
    ///
    /// Errors: a missing, duplicated or unknown sender ([`ProtocolError::UnexpectedMessage`]); our
    /// own message altered ([`ProtocolError::Disagreement`]); a package that does not decode, has
    /// the wrong threshold, a bad proof of knowledge or a bad HPKE key
    /// ([`ProtocolError::Culprit`] naming its sender).
    pub fn handle_round1(
        self,
        round1: &[Round1Message],
        rng: &mut (impl CryptoRng + RngCore),
    ) -> Result<(DkgRound2<C>, Vec<SealedPackage>)> {
        let Self {
            params,
            me,
            secret,
            hpke_secret,
            message,
        } = self;
        let by_sender = common::one_per_party(
            round1,
            |m| m.from,
            &params.parties,
            "one round-1 message from each party",
        )?;
        if by_sender.get(&me).copied() != Some(&message) {
            return Err(ProtocolError::Disagreement {
                reason: format!(
                    "the round-1 message relayed as party {me}'s (ours) is not the one we sent"
                ),
            });
        }

        let mut round1_packages = BTreeMap::new();
        for (&from, msg) in by_sender.iter().filter(|(from, _)| **from != me) {
            let culprit = |reason: String| ProtocolError::Culprit {
                party: from,
                reason,
            };
            // Same suite, same threshold: every round-1 package has exactly our package's length
            // (fixed-size elements, t coefficients). Checking it first bounds the decoding work a
            // relayed message can cause.
            if msg.package.len() != message.package.len() {
                return Err(culprit(format!(
                    "its round-1 package is {} bytes, ours is {}",
                    msg.package.len(),
                    message.package.len()
                )));
            }
            let package = common::decode_canonical(
                &msg.package,
                round1::Package::<C>::deserialize,
                round1::Package::<C>::serialize,
            )
            .map_err(|e| culprit(format!("its round-1 package {e}")))?;
            // KeyGen round 1 step 3: the commitment has exactly t coefficients. frost checks it too,
            // but without naming the sender.
            let coefficients = package
                .commitment()
                .serialize()
                .map_err(|e| culprit(format!("its round-1 commitment: {e}")))?
                .len();
            if coefficients != usize::from(params.min_signers) {
                return Err(culprit(format!(
                    "its round-1 commitment has {coefficients} coefficients, the threshold is {}",
                    params.min_signers
                )));
            }
            if msg.hpke_public_key.len() != hpke::PUBLIC_KEY_LEN {
                return Err(culprit(format!(
                    "its HPKE public key is {} bytes, expected {}",
                    msg.hpke_public_key.len(),
                    hpke::PUBLIC_KEY_LEN
                )));
            }
            round1_packages.insert(common::identifier::<C>(from)?, package);
        }

        let transcript_hash = transcript::hash_transcript(&params, by_sender.values().copied());
        // KeyGen round 1 step 5 (verify every proof of knowledge) and round 2 step 1 (our share
        // f_me(ℓ) for every other party ℓ). A bad proof names its sender.
        let (secret, outgoing) = frost_core::keys::dkg::part2(secret, &round1_packages)
            .map_err(|e| common::frost_error(e, &params.parties, "DKG round 2"))?;

        let mut sealed = Vec::with_capacity(outgoing.len());
        for (id, package) in &outgoing {
            let to = common::party_of(id, &params.parties).ok_or_else(|| ProtocolError::Frost {
                reason: "frost produced a package for an unknown identifier".into(),
            })?;
            let recipient_key = by_sender
                .get(&to)
                .map(|m| m.hpke_public_key.as_slice())
                .ok_or_else(|| ProtocolError::Frost {
                    reason: format!("no round-1 message from party {to}"),
                })?;
            let plaintext =
                Zeroizing::new(package.serialize().map_err(|e| ProtocolError::Frost {
                    reason: format!("serializing our round-2 package for party {to}: {e}"),
                })?);
            let package = seal_package(
                &params,
                me,
                to,
                &transcript_hash,
                recipient_key,
                &plaintext,
                rng,
            )
            .map_err(|e| ProtocolError::Culprit {
                party: to,
                reason: format!("cannot seal to its HPKE public key: {e}"),
            })?;
            sealed.push(package);
        }
        // `outgoing` (our shares for the others) zeroizes here, as KeyGen round 2 step 1 asks.
        drop(outgoing);

        let state = DkgRound2 {
            params,
            me,
            secret,
            hpke_secret,
            round1_packages,
            transcript_hash,
        };
        Ok((state, sealed))
    }
}

/// Seals a serialized `round2::Package` from `from` to `to`, exactly as [`DkgRound1::handle_round1`]
/// does: HPKE base mode to the recipient's round-1 key, `info` = [`round2_info`], AAD =
/// [`round2_aad`]. Honest parties never need to call it; it is public for tests and tools that
/// must build a package by hand.
pub fn seal_package(
    params: &DkgParams,
    from: u16,
    to: u16,
    transcript_hash: &[u8; 32],
    recipient_public_key: &[u8],
    package: &[u8],
    rng: &mut (impl CryptoRng + RngCore),
) -> Result<SealedPackage> {
    let info = round2_info(params);
    let aad = round2_aad(&params.wallet_id, from, to, transcript_hash);
    let (enc, ciphertext) = hpke::seal(recipient_public_key, &info, &aad, package, rng)?;
    Ok(SealedPackage {
        from,
        to,
        enc: ByteBuf::from(enc),
        ciphertext: ByteBuf::from(ciphertext),
    })
}

impl<C: Ciphersuite> DkgRound2<C> {
    /// The ceremony's parameters (parties sorted).
    pub fn params(&self) -> &DkgParams {
        &self.params
    }

    /// Our party number.
    pub fn me(&self) -> u16 {
        self.me
    }

    /// The round-1 transcript hash as we saw it (public).
    pub fn transcript_hash(&self) -> &[u8; 32] {
        &self.transcript_hash
    }

    /// Takes the packages sealed to us, one from each other party, opens and verifies them
    /// (KeyGen round 2 step 2, frost `part3`), derives our key share, and returns the confirmation
    /// to send to every party.
    ///
    /// Errors: a missing, duplicated, unknown-sender or misaddressed package
    /// ([`ProtocolError::UnexpectedMessage`]); a package that does not open, does not decode or
    /// carries a share inconsistent with its sender's commitment ([`ProtocolError::Culprit`]
    /// naming the sender).
    pub fn handle_round2(self, packages: &[SealedPackage]) -> Result<(DkgRound3<C>, Confirmation)> {
        let Self {
            params,
            me,
            secret,
            hpke_secret,
            round1_packages,
            transcript_hash,
        } = self;
        let others: Vec<u16> = params
            .parties
            .iter()
            .copied()
            .filter(|p| *p != me)
            .collect();
        let by_sender = common::one_per_party(
            packages,
            |p| p.from,
            &others,
            "one sealed round-2 package from each other party",
        )?;

        let info = round2_info(&params);
        let mut round2_packages = BTreeMap::new();
        for (&from, sealed) in &by_sender {
            if sealed.to != me {
                return Err(ProtocolError::UnexpectedMessage {
                    expected: "round-2 packages addressed to us",
                    actual: format!(
                        "a package from party {from} addressed to party {}",
                        sealed.to
                    ),
                });
            }
            let culprit = |reason: String| ProtocolError::Culprit {
                party: from,
                reason,
            };
            let aad = round2_aad(&params.wallet_id, from, me, &transcript_hash);
            let plaintext = hpke::open(&hpke_secret, &info, &aad, &sealed.enc, &sealed.ciphertext)
                .map_err(|e| {
                    culprit(format!(
                        "its round-2 package does not open ({e}): altered in transit, sealed to \
                         another key, or its sender saw a different round-1 transcript"
                    ))
                })?;
            let package = common::decode_canonical(
                &plaintext,
                round2::Package::<C>::deserialize,
                round2::Package::<C>::serialize,
            )
            .map_err(|e| culprit(format!("its round-2 package {e}")))?;
            round2_packages.insert(common::identifier::<C>(from)?, package);
        }

        // KeyGen round 2 steps 2-4: check each share against its sender's commitment (a bad one
        // names the sender), sum them into our signing share, derive the group key.
        let (key_package, public_key_package) =
            frost_core::keys::dkg::part3(&secret, &round1_packages, &round2_packages)
                .map_err(|e| common::frost_error(e, &params.parties, "DKG round 3"))?;
        // The received shares are summed into ours; delete them (KeyGen round 2 step 3).
        drop(round2_packages);
        drop(secret);
        drop(hpke_secret);

        let id = common::identifier::<C>(me)?;
        if public_key_package.verifying_shares().get(&id) != Some(key_package.verifying_share())
            || public_key_package.verifying_shares().len() != params.parties.len()
            || public_key_package.min_signers() != Some(params.min_signers)
        {
            return Err(ProtocolError::Frost {
                reason: "the derived key package does not match the public key package".into(),
            });
        }

        let public_key_package_hash = public_key_package_hash(&public_key_package)?;
        let confirmation = Confirmation {
            from: me,
            transcript_hash: ByteBuf::from(transcript_hash.to_vec()),
            public_key_package_hash: ByteBuf::from(public_key_package_hash.to_vec()),
        };
        let state = DkgRound3 {
            params,
            me,
            key_package,
            public_key_package,
            transcript_hash,
            confirmation: confirmation.clone(),
        };
        Ok((state, confirmation))
    }
}

impl<C: Ciphersuite> DkgRound3<C> {
    /// The ceremony's parameters (parties sorted).
    pub fn params(&self) -> &DkgParams {
        &self.params
    }

    /// Our party number.
    pub fn me(&self) -> u16 {
        self.me
    }

    /// Our confirmation (to send it again if the transport lost it).
    pub fn confirmation(&self) -> &Confirmation {
        &self.confirmation
    }

    /// The public key package we derived, not yet confirmed by the others: show it, don't use it.
    pub fn public_key_package(&self) -> &PublicKeyPackage<C> {
        &self.public_key_package
    }

    /// Takes every party's confirmation (ours included) and returns the key only if all of them
    /// match ours: same transcript, same public key package.
    ///
    /// Errors: a missing, duplicated or unknown sender ([`ProtocolError::UnexpectedMessage`]);
    /// our own confirmation altered, or any party's differing ([`ProtocolError::Disagreement`]
    /// naming the parties). The key is then dropped (zeroized): the wallet never becomes active.
    pub fn handle_confirmations(self, confirmations: &[Confirmation]) -> Result<DkgOutput<C>> {
        let by_sender = common::one_per_party(
            confirmations,
            |c| c.from,
            &self.params.parties,
            "one confirmation from each party",
        )?;
        if by_sender.get(&self.me).copied() != Some(&self.confirmation) {
            return Err(ProtocolError::Disagreement {
                reason: format!(
                    "the confirmation relayed as party {}'s (ours) is not the one we sent",
                    self.me
                ),
            });
        }
        let ours = &self.confirmation;
        let other_transcript: Vec<u16> = by_sender
            .values()
            .filter(|c| c.transcript_hash != ours.transcript_hash)
            .map(|c| c.from)
            .collect();
        if !other_transcript.is_empty() {
            return Err(ProtocolError::Disagreement {
                reason: format!(
                    "parties {other_transcript:?} saw a different round-1 transcript than party {} \
                     (the round-1 broadcast was not consistent)",
                    self.me
                ),
            });
        }
        let other_key: Vec<u16> = by_sender
            .values()
            .filter(|c| c.public_key_package_hash != ours.public_key_package_hash)
            .map(|c| c.from)
            .collect();
        if !other_key.is_empty() {
            return Err(ProtocolError::Disagreement {
                reason: format!(
                    "parties {other_key:?} derived a different public key package than party {}",
                    self.me
                ),
            });
        }
        Ok(DkgOutput {
            key_package: self.key_package,
            public_key_package: self.public_key_package,
            transcript_hash: self.transcript_hash,
        })
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
        me: u16,
        /// The confirmed key.
        output: Box<DkgOutput<C>>,
    },
}

impl<C: Ciphersuite> DkgState<C> {
    /// Starts a DKG ([`start`]) and wraps the first state.
    pub fn start(
        params: &DkgParams,
        me: u16,
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
                let (params, me) = (s.params.clone(), s.me);
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
    pub fn me(&self) -> u16 {
        match self {
            Self::AwaitingRound1(s) => s.me,
            Self::AwaitingRound2(s) => s.me,
            Self::AwaitingConfirmations(s) => s.me,
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

// Debug prints who and where, never a secret: frost's secret packages, the HPKE key and the key
// package are left out.

impl<C: Ciphersuite> std::fmt::Debug for DkgRound1<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DkgRound1")
            .field("params", &self.params)
            .field("me", &self.me)
            .field("secret", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl<C: Ciphersuite> std::fmt::Debug for DkgRound2<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DkgRound2")
            .field("params", &self.params)
            .field("me", &self.me)
            .field("transcript_hash", &hex::encode(self.transcript_hash))
            .field("secret", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl<C: Ciphersuite> std::fmt::Debug for DkgRound3<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DkgRound3")
            .field("params", &self.params)
            .field("me", &self.me)
            .field("transcript_hash", &hex::encode(self.transcript_hash))
            .field("key_package", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl<C: Ciphersuite> std::fmt::Debug for DkgOutput<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DkgOutput")
            .field("key_package", &"<redacted>")
            .field("public_key_package", &self.public_key_package)
            .field("transcript_hash", &hex::encode(self.transcript_hash))
            .finish()
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
