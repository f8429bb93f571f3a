//! The one core of every key-making ceremony: [`crate::dkg`] (a new wallet) and
//! [`crate::refresh`] (new shares of the same key) are this state machine with another
//! [`KeygenParams`], the way frost's `keys::refresh` reuses its `keys::dkg`. What the core adds to
//! frost's rounds, once for both:
//!
//! * **Confidential round 2.** Each round-2 package is a secret share; it is sealed with HPKE
//!   ([`crate::hpke`], RFC 9180) to a key its recipient broadcast in round 1, and bound by the AAD
//!   to wallet, (epoch,) sender, recipient and the round-1 transcript.
//! * **Broadcast.** KeyGen assumes every party sees the same round-1 messages; our coordinator is a
//!   relay that could show each party different ones (frost issue 577). Every party hashes the
//!   round-1 transcript and binds the hash into every round-2 AAD, so two parties with different
//!   views cannot open each other's packages. The confirmation round then compares transcript
//!   and public key package across all parties: an [`Output`] exists only once every party's
//!   confirmation matches ours, so no party activates a key another one failed.
//! * **Domain separation.** Each ceremony has its own tags ([`KeygenParams::TAGS`]); a refresh
//!   also binds the epoch it refreshes. A message of one ceremony never fits another.
//!
//! ```text
//! start ──► Round1 ──handle_round1(all round-1 msgs)──► Round2 ──handle_round2(sealed to us, …)
//!   │ Round1Message    │ Vec<SealedPackage>                       │ Confirmation
//!   ▼                  ▼                                          ▼
//!  broadcast       one per other party             Round3 ──handle_confirmations(all)──► Output
//! ```
//!
//! Each step consumes the state: a failed step ends the ceremony, and a new one starts from
//! [`start`] with fresh secrets. Secrets (frost's round secrets, the HPKE key, the key package)
//! zeroize on drop and never appear in `Debug`.
//!
//! Culprits: round-1 messages carry no signature and base-mode HPKE does not authenticate the
//! sender, so a [`ProtocolError::Culprit`] names the party whose message, *as relayed*, was bad. A
//! relay can make an honest party look guilty, never make a bad key look good.

pub mod exchange;
pub(crate) mod transcript;
pub(crate) mod vss;

use std::collections::BTreeMap;

use frost_core::keys::dkg::{round1, round2};
use frost_core::keys::{KeyPackage, PublicKeyPackage};
use frost_core::{Ciphersuite, Identifier};
use rand_core::{CryptoRng, RngCore};
use serde_bytes::ByteBuf;
use zeroize::Zeroizing;

pub use transcript::{Tags, public_key_package_hash, round2_aad, round2_info, transcript_hash};

use crate::dkg::common;
use crate::error::{ProtocolError, Result};
use crate::hpke::{self, HpkeSecretKey};
use crate::id::Epoch;
use crate::id::PartyId;
use crate::wire::{Confirmation, DkgParams, RefreshParams, Round1Message, SealedPackage, WalletId};

/// frost's round-1 and round-2 outputs: a secret and the packages to send.
type Round2Out<C> = (
    round2::SecretPackage<C>,
    BTreeMap<Identifier<C>, round2::Package<C>>,
);

/// What distinguishes one key-making ceremony from another: its parameters' type, its domain tags
/// and frost's functions for rounds 1 and 2. Implemented by [`DkgParams`] and [`RefreshParams`].
pub trait KeygenParams: Clone + std::fmt::Debug + sealed::Sealed {
    /// The ceremony's name in errors ("DKG", "refresh").
    const NAME: &'static str;
    /// Domain tags of its transcript, HPKE `info` and AAD.
    const TAGS: Tags;
    /// The wallet.
    fn wallet_id(&self) -> &WalletId;
    /// The FROST ciphersuite's `ID`.
    fn ciphersuite(&self) -> &str;
    /// The threshold.
    fn min_signers(&self) -> u16;
    /// Every party.
    fn parties(&self) -> &[PartyId];
    /// The epoch a refresh refreshes (bound into transcript, `info` and AAD); `None` for a DKG.
    fn epoch(&self) -> Option<Epoch>;
    /// The same parameters with `parties` (sorted).
    fn with_parties(&self, parties: Vec<PartyId>) -> Self;
    /// Coefficients of a round-1 commitment at threshold `min_signers`: a DKG commits to all `t`,
    /// a refresh polynomial's constant term is zero and not committed (`t - 1`).
    fn coefficients(min_signers: u16) -> usize;
    /// frost's round 1.
    fn part1<C: Ciphersuite, R: RngCore + CryptoRng>(
        id: Identifier<C>,
        max_signers: u16,
        min_signers: u16,
        rng: R,
    ) -> std::result::Result<(round1::SecretPackage<C>, round1::Package<C>), frost_core::Error<C>>;
    /// frost's round 2.
    fn part2<C: Ciphersuite>(
        secret: round1::SecretPackage<C>,
        round1: &BTreeMap<Identifier<C>, round1::Package<C>>,
    ) -> std::result::Result<Round2Out<C>, frost_core::Error<C>>;
    /// What a party brings into round 2 besides the packages: nothing for a DKG, its current
    /// share and public key package for a refresh.
    type Old<C: Ciphersuite>;
    /// Refuses, before any message is sent, what a party brings that cannot fit the ceremony.
    fn check_old<C: Ciphersuite>(params: &Self, me: PartyId, old: &Self::Old<C>) -> Result<()>;
    /// Round 2 of this ceremony: opens the packages sealed to us and derives the new key.
    fn round3<C: Ciphersuite>(
        state: Round2<C, Self>,
        packages: &[SealedPackage],
        old: &Self::Old<C>,
    ) -> Result<(Round3<C, Self>, Confirmation)>;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for crate::wire::DkgParams {}
    impl Sealed for crate::wire::RefreshParams {}
}

/// The accessors every parameter type shares (same field names in the wire structs).
macro_rules! common_accessors {
    () => {
        fn wallet_id(&self) -> &WalletId {
            &self.wallet_id
        }
        fn ciphersuite(&self) -> &str {
            &self.ciphersuite
        }
        fn min_signers(&self) -> u16 {
            self.min_signers
        }
        fn parties(&self) -> &[PartyId] {
            &self.parties
        }
        fn with_parties(&self, parties: Vec<PartyId>) -> Self {
            Self {
                parties,
                ..self.clone()
            }
        }
    };
}

impl KeygenParams for DkgParams {
    const NAME: &'static str = "DKG";
    const TAGS: Tags = Tags {
        transcript: b"cosigner dkg transcript v1",
        round2_info: b"cosigner dkg round2 v1",
        round2_aad: b"cosigner dkg round2 aad v1",
    };
    common_accessors!();
    fn epoch(&self) -> Option<Epoch> {
        None
    }
    fn coefficients(min_signers: u16) -> usize {
        usize::from(min_signers)
    }
    fn part1<C: Ciphersuite, R: RngCore + CryptoRng>(
        id: Identifier<C>,
        max_signers: u16,
        min_signers: u16,
        rng: R,
    ) -> std::result::Result<(round1::SecretPackage<C>, round1::Package<C>), frost_core::Error<C>>
    {
        frost_core::keys::dkg::part1(id, max_signers, min_signers, rng)
    }
    fn part2<C: Ciphersuite>(
        secret: round1::SecretPackage<C>,
        round1: &BTreeMap<Identifier<C>, round1::Package<C>>,
    ) -> std::result::Result<Round2Out<C>, frost_core::Error<C>> {
        frost_core::keys::dkg::part2(secret, round1)
    }
    type Old<C: Ciphersuite> = ();
    fn check_old<C: Ciphersuite>(_: &Self, _: PartyId, _: &()) -> Result<()> {
        Ok(())
    }
    fn round3<C: Ciphersuite>(
        state: Round2<C, Self>,
        packages: &[SealedPackage],
        _: &(),
    ) -> Result<(Round3<C, Self>, Confirmation)> {
        state.handle_round2(packages)
    }
}

impl KeygenParams for RefreshParams {
    const NAME: &'static str = "refresh";
    const TAGS: Tags = Tags {
        transcript: b"cosigner refresh transcript v1",
        round2_info: b"cosigner refresh round2 v1",
        round2_aad: b"cosigner refresh round2 aad v1",
    };
    common_accessors!();
    fn epoch(&self) -> Option<Epoch> {
        Some(self.from_epoch)
    }
    fn coefficients(min_signers: u16) -> usize {
        usize::from(min_signers).saturating_sub(1)
    }
    fn part1<C: Ciphersuite, R: RngCore + CryptoRng>(
        id: Identifier<C>,
        max_signers: u16,
        min_signers: u16,
        rng: R,
    ) -> std::result::Result<(round1::SecretPackage<C>, round1::Package<C>), frost_core::Error<C>>
    {
        frost_core::keys::refresh::refresh_dkg_part1(id, max_signers, min_signers, rng)
    }
    fn part2<C: Ciphersuite>(
        secret: round1::SecretPackage<C>,
        round1: &BTreeMap<Identifier<C>, round1::Package<C>>,
    ) -> std::result::Result<Round2Out<C>, frost_core::Error<C>> {
        frost_core::keys::refresh::refresh_dkg_part2(secret, round1)
    }
    type Old<C: Ciphersuite> = (KeyPackage<C>, PublicKeyPackage<C>);
    fn check_old<C: Ciphersuite>(
        params: &Self,
        me: PartyId,
        (key_package, public_key_package): &Self::Old<C>,
    ) -> Result<()> {
        crate::refresh::check_old_shares(params, me, key_package, public_key_package)
    }
    fn round3<C: Ciphersuite>(
        state: Round2<C, Self>,
        packages: &[SealedPackage],
        (key_package, public_key_package): &Self::Old<C>,
    ) -> Result<(Round3<C, Self>, Confirmation)> {
        state.handle_round2(packages, key_package, public_key_package)
    }
}

/// Round 1 done: our broadcast is out, we wait for everyone's.
pub struct Round1<C: Ciphersuite, P: KeygenParams> {
    params: P,
    me: PartyId,
    /// frost's round-1 secret (our polynomial); zeroizes on drop.
    secret: round1::SecretPackage<C>,
    /// Round-2 packages to us are sealed to this key.
    hpke_secret: HpkeSecretKey,
    /// What we broadcast, to check that the relay did not alter it.
    message: Round1Message,
}

/// Round 2 done: our sealed packages are out, we wait for the ones sealed to us.
pub struct Round2<C: Ciphersuite, P: KeygenParams> {
    params: P,
    me: PartyId,
    /// frost's round-2 secret; zeroizes on drop.
    secret: round2::SecretPackage<C>,
    hpke_secret: HpkeSecretKey,
    /// The other parties' round-1 packages, by identifier, as frost's round 3 needs them.
    round1_packages: BTreeMap<Identifier<C>, round1::Package<C>>,
    transcript_hash: [u8; 32],
}

/// Round 3 done: we hold a key, not usable until every party confirmed the same one.
pub struct Round3<C: Ciphersuite, P: KeygenParams> {
    params: P,
    me: PartyId,
    key_package: KeyPackage<C>,
    public_key_package: PublicKeyPackage<C>,
    transcript_hash: [u8; 32],
    confirmation: Confirmation,
}

/// The result every party confirmed.
///
/// `key_package` holds our signing share: seal it before storing it anywhere, and never send it.
pub struct Output<C: Ciphersuite> {
    /// Our long-lived share and the group key (zeroizes on drop). For `frost-secp256k1-tr` the group
    /// key is already the BIP-341 tweaked output key Q.
    pub key_package: KeyPackage<C>,
    /// The group key and every party's verifying share: public, identical at every party.
    pub public_key_package: PublicKeyPackage<C>,
    /// The transcript hash every party confirmed.
    pub transcript_hash: [u8; 32],
}

/// Checks the parameters for party `me` and returns them with the parties sorted.
pub(crate) fn validate_params<C: Ciphersuite, P: KeygenParams>(
    params: &P,
    me: PartyId,
) -> Result<P> {
    if params.ciphersuite() != C::ID {
        return Err(ProtocolError::Ciphersuite {
            actual: params.ciphersuite().to_owned(),
        });
    }
    let parties = common::normalize_parties(params.parties(), "party set")?;
    let bad = |reason: String| ProtocolError::Params { reason };
    let min = params.min_signers();
    if min < 2 {
        return Err(bad(format!(
            "threshold {min} is below 2: one party alone could sign"
        )));
    }
    if usize::from(min) > parties.len() {
        return Err(bad(format!(
            "threshold {min} exceeds the {} parties",
            parties.len()
        )));
    }
    if !parties.contains(&me) {
        return Err(bad(format!(
            "party {me} is not in the party set {parties:?}"
        )));
    }
    Ok(params.with_parties(parties))
}

/// Starts a ceremony as party `me`: frost's round 1 (our secret polynomial, its commitment and,
/// for a DKG, the proof of knowledge of its constant term) and a fresh HPKE key pair for this
/// ceremony. Returns the state and our round-1 broadcast, which must reach every party unchanged.
///
/// `params.parties` may come in any order; the state keeps them sorted.
pub fn start<C: Ciphersuite, P: KeygenParams>(
    params: &P,
    me: PartyId,
    rng: &mut (impl CryptoRng + RngCore),
) -> Result<(Round1<C, P>, Round1Message)> {
    let params = validate_params::<C, P>(params, me)?;
    let id = me.identifier::<C>()?;
    let max_signers = u16::try_from(params.parties().len()).map_err(|_| ProtocolError::Params {
        reason: "too many parties".into(),
    })?;
    let (secret, package) = P::part1(id, max_signers, params.min_signers(), &mut *rng)
        .map_err(|e| common::frost_error(e, params.parties(), &round_name::<P>(1)))?;
    let package = package.serialize().map_err(|e| ProtocolError::Frost {
        reason: format!("serializing our {} round-1 package: {e}", P::NAME),
    })?;
    let (hpke_secret, hpke_public_key) = hpke::generate_keypair(rng);
    let message = Round1Message {
        from: me,
        package: ByteBuf::from(package),
        hpke_public_key: ByteBuf::from(hpke_public_key),
    };
    let state = Round1 {
        params,
        me,
        secret,
        hpke_secret,
        message: message.clone(),
    };
    Ok((state, message))
}

fn round_name<P: KeygenParams>(round: u8) -> String {
    format!("{} round {round}", P::NAME)
}

impl<C: Ciphersuite, P: KeygenParams> Round1<C, P> {
    /// The ceremony's parameters (parties sorted).
    pub fn params(&self) -> &P {
        &self.params
    }

    /// Our party number.
    pub fn me(&self) -> PartyId {
        self.me
    }

    /// Our round-1 broadcast (to send it again if the transport lost it).
    pub fn round1_message(&self) -> &Round1Message {
        &self.message
    }

    /// Takes every party's round-1 message (ours included), checks them, runs frost's round 2
    /// (for a DKG: verify each proof of knowledge; then evaluate our polynomial at each other
    /// party) and seals each resulting share to its recipient.
    ///
    /// Errors: a missing, duplicated or unknown sender ([`ProtocolError::UnexpectedMessage`]); our
    /// own message altered ([`ProtocolError::Disagreement`]); a package that does not decode, has
    /// the wrong number of coefficients, a bad proof of knowledge or a bad HPKE key
    /// ([`ProtocolError::Culprit`] naming its sender).
    pub fn handle_round1(
        self,
        round1: &[Round1Message],
        rng: &mut (impl CryptoRng + RngCore),
    ) -> Result<(Round2<C, P>, Vec<SealedPackage>)> {
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
            params.parties(),
            "one round-1 message from each party",
        )?;
        if by_sender.get(&me).copied() != Some(&message) {
            return Err(ProtocolError::Disagreement {
                reason: format!(
                    "the {} round-1 message relayed as party {me}'s (ours) is not the one we sent",
                    P::NAME
                ),
            });
        }
        let mut round1_packages = BTreeMap::new();
        for (&from, msg) in by_sender.iter().filter(|(from, _)| **from != me) {
            let package = decode_round1::<C, P>(&params, from, msg, &message)?;
            round1_packages.insert(from.identifier::<C>()?, package);
        }

        let transcript_hash = transcript_hash(&params, by_sender.values().copied());
        // KeyGen round 2 step 1 (after round 1 step 5 for a DKG: every proof of knowledge): our
        // share f_me(ℓ) for every other party ℓ. A bad proof names its sender.
        let (secret, outgoing) = P::part2(secret, &round1_packages)
            .map_err(|e| common::frost_error(e, params.parties(), &round_name::<P>(2)))?;
        let sealed = seal_all(&params, me, &transcript_hash, &by_sender, &outgoing, rng)?;
        // `outgoing` (our shares for the others) zeroizes here, as KeyGen round 2 step 1 asks.
        drop(outgoing);

        let state = Round2 {
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

/// Decodes and checks another party's round-1 message against ours.
fn decode_round1<C: Ciphersuite, P: KeygenParams>(
    params: &P,
    from: PartyId,
    msg: &Round1Message,
    ours: &Round1Message,
) -> Result<round1::Package<C>> {
    let culprit = |reason: String| ProtocolError::Culprit {
        party: from,
        reason,
    };
    let name = P::NAME;
    // Same suite, same threshold: every round-1 package has exactly our package's length
    // (fixed-size elements, a fixed number of coefficients). Checking it first bounds the decoding
    // work a relayed message can cause, and refuses another ceremony's package early.
    if msg.package.len() != ours.package.len() {
        return Err(culprit(format!(
            "its {name} round-1 package is {} bytes, ours is {} (a message of another ceremony (a DKG \
             or a refresh), or another threshold)",
            msg.package.len(),
            ours.package.len()
        )));
    }
    let package = common::decode_canonical(
        &msg.package,
        round1::Package::<C>::deserialize,
        round1::Package::<C>::serialize,
    )
    .map_err(|e| culprit(format!("its {name} round-1 package {e}")))?;
    // KeyGen round 1 step 3: the commitment has exactly the expected coefficients. frost checks
    // it too, but without naming the sender.
    let coefficients = package
        .commitment()
        .serialize()
        .map_err(|e| culprit(format!("its {name} round-1 commitment: {e}")))?
        .len();
    let expected = P::coefficients(params.min_signers());
    if coefficients != expected {
        return Err(culprit(format!(
            "its {name} round-1 commitment has {coefficients} coefficients, expected {expected} \
             for threshold {}",
            params.min_signers()
        )));
    }
    if msg.hpke_public_key.len() != hpke::PUBLIC_KEY_LEN {
        return Err(culprit(format!(
            "its HPKE public key is {} bytes, expected {}",
            msg.hpke_public_key.len(),
            hpke::PUBLIC_KEY_LEN
        )));
    }
    Ok(package)
}

/// Seals each of our round-2 packages to its recipient's round-1 HPKE key.
fn seal_all<C: Ciphersuite, P: KeygenParams>(
    params: &P,
    me: PartyId,
    transcript_hash: &[u8; 32],
    round1: &BTreeMap<PartyId, &Round1Message>,
    outgoing: &BTreeMap<Identifier<C>, round2::Package<C>>,
    rng: &mut (impl CryptoRng + RngCore),
) -> Result<Vec<SealedPackage>> {
    let mut sealed = Vec::with_capacity(outgoing.len());
    for (id, package) in outgoing {
        let to = common::party_of(id, params.parties()).ok_or_else(|| ProtocolError::Frost {
            reason: "frost produced a package for an unknown identifier".into(),
        })?;
        let recipient_key = round1
            .get(&to)
            .map(|m| m.hpke_public_key.as_slice())
            .ok_or_else(|| ProtocolError::Frost {
                reason: format!("no round-1 message from party {to}"),
            })?;
        let plaintext = Zeroizing::new(package.serialize().map_err(|e| ProtocolError::Frost {
            reason: format!("serializing our round-2 package for party {to}: {e}"),
        })?);
        let package = seal_package(
            params,
            me,
            to,
            transcript_hash,
            recipient_key,
            &plaintext,
            rng,
        )
        .map_err(|e| {
            ProtocolError::culprit(to, format!("cannot seal to its HPKE public key: {e}"))
        })?;
        sealed.push(package);
    }
    Ok(sealed)
}

/// Seals a serialized `round2::Package` from `from` to `to`, exactly as [`Round1::handle_round1`]
/// does: HPKE base mode to the recipient's round-1 key, `info` = [`round2_info`], AAD =
/// [`round2_aad`]. Honest parties never need to call it; it is public for tests and tools that
/// must build a package by hand.
pub fn seal_package<P: KeygenParams>(
    params: &P,
    from: PartyId,
    to: PartyId,
    transcript_hash: &[u8; 32],
    recipient_public_key: &[u8],
    package: &[u8],
    rng: &mut (impl CryptoRng + RngCore),
) -> Result<SealedPackage> {
    let info = round2_info(params);
    let aad = aad_of(params, from, to, transcript_hash);
    let (enc, ciphertext) = hpke::seal(recipient_public_key, &info, &aad, package, rng)?;
    Ok(SealedPackage {
        from,
        to,
        enc: ByteBuf::from(enc),
        ciphertext: ByteBuf::from(ciphertext),
    })
}

fn aad_of<P: KeygenParams>(
    params: &P,
    from: PartyId,
    to: PartyId,
    transcript_hash: &[u8; 32],
) -> Vec<u8> {
    round2_aad(
        &P::TAGS,
        params.wallet_id(),
        params.epoch(),
        from,
        to,
        transcript_hash,
    )
}

/// What round 2 opened: the round secrets and the packages sealed to us, ready for frost's
/// round 3 (a DKG's `part3`, a refresh's `refresh_dkg_shares`).
pub(crate) struct Opened<C: Ciphersuite, P: KeygenParams> {
    pub(crate) params: P,
    pub(crate) me: PartyId,
    pub(crate) secret: round2::SecretPackage<C>,
    pub(crate) round1_packages: BTreeMap<Identifier<C>, round1::Package<C>>,
    pub(crate) round2_packages: BTreeMap<Identifier<C>, round2::Package<C>>,
    pub(crate) transcript_hash: [u8; 32],
}

impl<C: Ciphersuite, P: KeygenParams> Round2<C, P> {
    /// The ceremony's parameters (parties sorted).
    pub fn params(&self) -> &P {
        &self.params
    }

    /// Our party number.
    pub fn me(&self) -> PartyId {
        self.me
    }

    /// The round-1 transcript hash as we saw it (public).
    pub fn transcript_hash(&self) -> &[u8; 32] {
        &self.transcript_hash
    }

    /// Opens the packages sealed to us, one from each other party, and decodes them; `check`
    /// runs on each (sender, package) before it is accepted (a refresh's Feldman check). The HPKE
    /// key is dropped (zeroized) here: nothing more is sealed to it.
    ///
    /// Errors: a missing, duplicated, unknown-sender or misaddressed package
    /// ([`ProtocolError::UnexpectedMessage`]); a package that does not open or does not decode
    /// ([`ProtocolError::Culprit`] naming the sender).
    pub(crate) fn open(
        self,
        packages: &[SealedPackage],
        check: impl Fn(
            PartyId,
            &round1::Package<C>,
            &round2::Package<C>,
        ) -> std::result::Result<(), String>,
    ) -> Result<Opened<C, P>> {
        let Self {
            params,
            me,
            secret,
            hpke_secret,
            round1_packages,
            transcript_hash,
        } = self;
        let by_sender = one_from_each_other(
            packages,
            params.parties(),
            me,
            "one sealed round-2 package from each other party",
        )?;
        let info = round2_info(&params);
        let mut round2_packages = BTreeMap::new();
        for (&from, sealed) in &by_sender {
            let package =
                open_one::<C, P>(&params, me, &info, &hpke_secret, &transcript_hash, sealed)?;
            let sender = from.identifier::<C>()?;
            let commitment = round1_packages
                .get(&sender)
                .ok_or_else(|| ProtocolError::Frost {
                    reason: format!("no round-1 package from party {from}"),
                })?;
            check(from, commitment, &package).map_err(|reason| {
                ProtocolError::culprit(from, format!("its {} round-2 package: {reason}", P::NAME))
            })?;
            round2_packages.insert(sender, package);
        }
        Ok(Opened {
            params,
            me,
            secret,
            round1_packages,
            round2_packages,
            transcript_hash,
        })
    }
}

/// The packages sealed to `me`, by sender: exactly one from each other party of `parties` (our
/// own never leaves us). Shared with the share repair's deltas ([`crate::repair`]).
///
/// Errors ([`ProtocolError::UnexpectedMessage`], `expected` saying what we take): a package from
/// a stranger or from us, two from one party, none from one.
pub(crate) fn one_from_each_other<'a>(
    packages: &'a [SealedPackage],
    parties: &[PartyId],
    me: PartyId,
    expected: &'static str,
) -> Result<BTreeMap<PartyId, &'a SealedPackage>> {
    let others: Vec<PartyId> = parties.iter().copied().filter(|p| *p != me).collect();
    common::one_per_party(packages, |p| p.from, &others, expected)
}

/// Opens and decodes one package sealed to `me`.
fn open_one<C: Ciphersuite, P: KeygenParams>(
    params: &P,
    me: PartyId,
    info: &[u8],
    hpke_secret: &HpkeSecretKey,
    transcript_hash: &[u8; 32],
    sealed: &SealedPackage,
) -> Result<round2::Package<C>> {
    let from = sealed.from;
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
    let aad = aad_of(params, from, me, transcript_hash);
    let plaintext =
        hpke::open(hpke_secret, info, &aad, &sealed.enc, &sealed.ciphertext).map_err(|e| {
            culprit(format!(
                "its {} round-2 package does not open ({e}): altered in transit, sealed to \
                 another key, from another wallet, epoch or ceremony, or its sender saw a \
                 different round-1 transcript",
                P::NAME
            ))
        })?;
    common::decode_canonical(
        &plaintext,
        round2::Package::<C>::deserialize,
        round2::Package::<C>::serialize,
    )
    .map_err(|e| culprit(format!("its {} round-2 package {e}", P::NAME)))
}

impl<C: Ciphersuite, P: KeygenParams> Opened<C, P> {
    /// Builds round 3 from the key frost's round 3 derived: checks that our key package is in
    /// the public key package with the parties and threshold of the ceremony, and makes our
    /// confirmation.
    pub(crate) fn confirm(
        self,
        key_package: KeyPackage<C>,
        public_key_package: PublicKeyPackage<C>,
    ) -> Result<(Round3<C, P>, Confirmation)> {
        let Self {
            params,
            me,
            transcript_hash,
            ..
        } = self;
        let id = me.identifier::<C>()?;
        if *key_package.identifier() != id
            || public_key_package.verifying_shares().get(&id) != Some(key_package.verifying_share())
            || public_key_package.verifying_shares().len() != params.parties().len()
            || public_key_package.min_signers() != Some(params.min_signers())
        {
            return Err(ProtocolError::Frost {
                reason: format!(
                    "the {} derived key package does not match its public key package",
                    P::NAME
                ),
            });
        }
        let confirmation = Confirmation {
            from: me,
            transcript_hash: ByteBuf::from(transcript_hash.to_vec()),
            public_key_package_hash: ByteBuf::from(
                public_key_package_hash(&public_key_package)?.to_vec(),
            ),
        };
        let state = Round3 {
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

impl<C: Ciphersuite, P: KeygenParams> Round3<C, P> {
    /// The ceremony's parameters (parties sorted).
    pub fn params(&self) -> &P {
        &self.params
    }

    /// Our party number.
    pub fn me(&self) -> PartyId {
        self.me
    }

    /// Our confirmation (to send it again if the transport lost it).
    pub fn confirmation(&self) -> &Confirmation {
        &self.confirmation
    }

    /// The new key package, not yet confirmed by the others: store it (sealed) as *prepared*,
    /// never use it before [`Round3::handle_confirmations`] succeeded.
    pub fn key_package(&self) -> &KeyPackage<C> {
        &self.key_package
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
    /// naming the parties). The key is then dropped (zeroized): it never becomes active.
    pub fn handle_confirmations(self, confirmations: &[Confirmation]) -> Result<Output<C>> {
        check_confirmations::<P>(
            self.params.parties(),
            self.me,
            &self.confirmation,
            confirmations,
        )?;
        Ok(Output {
            key_package: self.key_package,
            public_key_package: self.public_key_package,
            transcript_hash: self.transcript_hash,
        })
    }
}

/// Exactly one confirmation per party, ours unchanged, all equal to ours: the confirmation round
/// of every key-making ceremony, also run on a commit made from stored prepared state and by a
/// cosigner checking confirmations before it gives up its ceremony state for them.
///
/// Errors: as [`Round3::handle_confirmations`].
pub fn check_confirmations<P: KeygenParams>(
    parties: &[PartyId],
    me: PartyId,
    ours: &Confirmation,
    confirmations: &[Confirmation],
) -> Result<()> {
    let by_sender = common::one_per_party(
        confirmations,
        |c| c.from,
        parties,
        "one confirmation from each party",
    )?;
    let name = P::NAME;
    if by_sender.get(&me).copied() != Some(ours) {
        return Err(ProtocolError::Disagreement {
            reason: format!(
                "the {name} confirmation relayed as party {me}'s (ours) is not the one we sent"
            ),
        });
    }
    let differing = |field: fn(&Confirmation) -> &ByteBuf| -> Vec<PartyId> {
        by_sender
            .values()
            .filter(|c| field(c) != field(ours))
            .map(|c| c.from)
            .collect()
    };
    let other_transcript = differing(|c| &c.transcript_hash);
    if !other_transcript.is_empty() {
        return Err(ProtocolError::Disagreement {
            reason: format!(
                "parties {other_transcript:?} saw a different {name} round-1 transcript than \
                 party {me} (the round-1 broadcast was not consistent)"
            ),
        });
    }
    let other_key = differing(|c| &c.public_key_package_hash);
    if !other_key.is_empty() {
        return Err(ProtocolError::Disagreement {
            reason: format!(
                "parties {other_key:?} derived a different {name} public key package than party \
                 {me}"
            ),
        });
    }
    Ok(())
}

// Debug prints who and where, never a secret: frost's secret packages, the HPKE key and the key
// package are left out.

impl<C: Ciphersuite, P: KeygenParams> std::fmt::Debug for Round1<C, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Round1")
            .field("ceremony", &P::NAME)
            .field("params", &self.params)
            .field("me", &self.me)
            .field("secret", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl<C: Ciphersuite, P: KeygenParams> std::fmt::Debug for Round2<C, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Round2")
            .field("ceremony", &P::NAME)
            .field("params", &self.params)
            .field("me", &self.me)
            .field("transcript_hash", &hex::encode(self.transcript_hash))
            .field("secret", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl<C: Ciphersuite, P: KeygenParams> std::fmt::Debug for Round3<C, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Round3")
            .field("ceremony", &P::NAME)
            .field("params", &self.params)
            .field("me", &self.me)
            .field("transcript_hash", &hex::encode(self.transcript_hash))
            .field("key_package", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl<C: Ciphersuite> std::fmt::Debug for Output<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Output")
            .field("key_package", &"<redacted>")
            .field("public_key_package", &self.public_key_package)
            .field("transcript_hash", &hex::encode(self.transcript_hash))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;
    use crate::id::pid;

    fn dkg() -> DkgParams {
        DkgParams {
            wallet_id: WalletId([7; 16]),
            ciphersuite: crate::wire::SUITE_SECP256K1_TR.into(),
            min_signers: 2,
            parties: vec![pid(1), pid(2), pid(3)],
        }
    }

    fn refresh(from_epoch: Epoch) -> RefreshParams {
        let d = dkg();
        RefreshParams {
            wallet_id: d.wallet_id,
            ciphersuite: d.ciphersuite,
            min_signers: d.min_signers,
            parties: d.parties,
            from_epoch,
        }
    }

    fn msg(from: PartyId, package: &[u8], key: &[u8]) -> Round1Message {
        Round1Message {
            from,
            package: ByteBuf::from(package.to_vec()),
            hpke_public_key: ByteBuf::from(key.to_vec()),
        }
    }

    #[test]
    fn transcript_is_order_independent_and_unambiguous() {
        let p = dkg();
        let a = [msg(pid(1), b"ab", b"c"), msg(pid(2), b"d", b"e")];
        let b = [msg(pid(2), b"d", b"e"), msg(pid(1), b"ab", b"c")];
        assert_eq!(transcript_hash(&p, &a), transcript_hash(&p, &b));
        // Moving a byte across a field boundary changes the hash.
        let shifted = [msg(pid(1), b"a", b"bc"), msg(pid(2), b"d", b"e")];
        assert_ne!(transcript_hash(&p, &a), transcript_hash(&p, &shifted));
        let mut other_wallet = p.clone();
        other_wallet.wallet_id = WalletId([8; 16]);
        assert_ne!(transcript_hash(&p, &a), transcript_hash(&other_wallet, &a));
        let mut other_threshold = p.clone();
        other_threshold.min_signers = 3;
        assert_ne!(
            transcript_hash(&p, &a),
            transcript_hash(&other_threshold, &a)
        );
    }

    #[test]
    fn domains_and_epochs_separate() {
        let a = [msg(pid(1), b"ab", b"c"), msg(pid(2), b"d", b"e")];
        assert_ne!(
            transcript_hash(&dkg(), &a),
            transcript_hash(&refresh(Epoch(0)), &a)
        );
        assert_ne!(
            transcript_hash(&refresh(Epoch(4)), &a),
            transcript_hash(&refresh(Epoch(5)), &a)
        );
        assert_ne!(round2_info(&dkg()), round2_info(&refresh(Epoch(0))));
        assert!(round2_info(&dkg()).starts_with(b"cosigner dkg round2 v1FROST-secp256k1"));
        let t = [1; 32];
        let w = WalletId([2; 16]);
        let d = DkgParams::TAGS;
        let r = RefreshParams::TAGS;
        assert_ne!(
            round2_aad(&d, &w, None, pid(2), pid(3), &t),
            round2_aad(&d, &w, None, pid(3), pid(2), &t)
        );
        assert_ne!(
            round2_aad(&d, &w, None, pid(2), pid(3), &t),
            round2_aad(&d, &WalletId([3; 16]), None, pid(2), pid(3), &t)
        );
        assert_ne!(
            round2_aad(&r, &w, Some(Epoch(0)), pid(2), pid(3), &t),
            round2_aad(&r, &w, Some(Epoch(1)), pid(2), pid(3), &t)
        );
        assert_ne!(
            round2_aad(&r, &w, Some(Epoch(0)), pid(2), pid(3), &t),
            round2_aad(&d, &w, None, pid(2), pid(3), &t)
        );
    }
}
