//! Share repair: helpers rebuild a lost share (the user's phone) for its party, without any of
//! them, or the coordinator, learning it or their own shares leaking.
//!
//! frost's Repairable Threshold Scheme (`keys::repairable`, Laing–Stinson, eprint 2017/1155):
//! each helper `i` splits `ζ_i·s_i` (its share times its Lagrange coefficient for the participant)
//! into random *deltas*, one per helper; each helper sums the deltas it receives into a *sigma*;
//! the participant sums the sigmas into its share. The deltas and sigmas are secret, and this
//! module carries them end to end encrypted (HPKE, [`crate::hpke`]) through the coordinator.
//!
//! ```text
//! helper:      helper_start ──(helper key)──► coordinator collects every helper's key
//! helper:      RepairHelper1::deltas(all keys) ──(deltas, each sealed to one other helper)──►
//! helper:      RepairHelper2::sigma(deltas to us) ──(sigma, sealed to the participant)──►
//! participant: participant_start ──(HPKE key)── … RepairParticipant::finish(all sigmas) ──► KeyPackage
//! ```
//!
//! These rounds take each step's inputs all at once. [`engine`] runs them as values that absorb
//! messages in any order and say what they wait for, like the key-making and signing engines
//! ([`crate::keygen::exchange`], [`crate::signing`]): a helper's [`engine::RepairHelper`] (the
//! enclave's repair table) and the participant's [`engine::RepairReceiver`] (the recovering
//! device). The engines keep one message per sender and step and name a sender of two different
//! ones; every check below stays in the rounds.
//!
//! What frost leaves to us, and this module guards:
//!
//! * **The result is unchecked** (docs/lifecycle.md, "Recovery"): `repair_share_part3` returns whatever the sigmas sum
//!   to. [`RepairParticipant::finish`] accepts the share only if its verifying share is the one the
//!   public key package lists for the participant, under the same group key.
//! * **The coordinator is the participant.** In a recovery the new device coordinates, and
//!   whoever holds the recovery credential is entitled to the participant's share, not to the
//!   helpers'. A delta is a share of `ζ_i·s_i`: a coordinator that could read the deltas of one
//!   helper, or choose the ones it receives, would compute `s_i` (and with the repaired share,
//!   the whole key). So:
//!   - a helper's key is *signed with its share* ([`helper_start`] returns the HPKE public key
//!     followed by a Schnorr signature by the helper's signing share over the key and the repair
//!     parameters); every helper checks every other helper's key against the verifying share in
//!     its own public key package before sealing anything to it. A coordinator that substitutes a
//!     key is refused; it cannot sign for a share it does not hold.
//!   - every delta is *signed* by its sender's share over the sealed bytes and checked by its
//!     recipient, so the coordinator cannot replace a delta with one of its choice (HPKE base
//!     mode alone would let anyone seal to a recipient).
//!   - a helper's delta to itself never leaves it.
//!   - the AAD binds wallet, epoch, participant, sender, recipient and the hash of (parameters,
//!     helper keys): a package relayed elsewhere, or sealed under another view of the repair,
//!     does not open.
//!
//! The sigmas are sealed to the participant's HPKE key, which the helpers cannot authenticate
//! themselves: the caller must (the enclave takes it from a request signed by the pending device
//! key). A bad sigma makes the final check fail.
//!
//! A repair rebuilds the share of the **current** epoch and needs every helper to use its share of
//! that same epoch (`params.epoch`; the enclave checks it). Follow it with a refresh: the lost
//! device's copy of the share is still valid until then.

mod context;
pub mod engine;
#[cfg(test)]
mod golden_tests;

use std::collections::BTreeMap;
use std::marker::PhantomData;

use frost_core::keys::repairable::{self, Delta, Sigma};
use frost_core::keys::{KeyPackage, PublicKeyPackage, VerifyingShare};
use frost_core::{Ciphersuite, Field, Group, Identifier};
use rand_core::{CryptoRng, RngCore};
use serde_bytes::ByteBuf;
use zeroize::Zeroizing;

use crate::dkg::common;
use crate::error::{ProtocolError, Result};
use crate::hpke::{self, HpkeSecretKey};
use crate::id::PartyId;
use crate::keygen::one_from_each_other;
use crate::redact::redacted_debug;
use crate::wire::{RepairParams, SealedPackage};

use context::Kind;

/// A helper after [`helper_start`]: its key is out, it waits for every helper's key.
pub struct RepairHelper1<C: Ciphersuite> {
    params: RepairParams,
    me: PartyId,
    hpke_secret: HpkeSecretKey,
    /// Our helper key as we sent it: HPKE public key ‖ signature.
    helper_key: Vec<u8>,
    /// Our verifying share: [`RepairHelper1::deltas`] must get the same key package.
    verifying_share: VerifyingShare<C>,
    /// The wallet's public key package at `params.epoch` (public).
    public_key_package: PublicKeyPackage<C>,
}

/// A helper after [`RepairHelper1::deltas`]: its deltas are out, it waits for the ones sealed to it.
pub struct RepairHelper2<C: Ciphersuite> {
    params: RepairParams,
    me: PartyId,
    hpke_secret: HpkeSecretKey,
    context_hash: [u8; 32],
    /// Our delta to ourselves, serialized; it never leaves this state.
    own_delta: Zeroizing<Vec<u8>>,
    public_key_package: PublicKeyPackage<C>,
}

/// The party whose share is repaired, waiting for the sigmas.
pub struct RepairParticipant<C: Ciphersuite> {
    params: RepairParams,
    hpke_secret: HpkeSecretKey,
    suite: PhantomData<fn() -> C>,
}

/// Checks the parameters and returns them with the helpers sorted.
fn validate_params<C: Ciphersuite>(params: &RepairParams) -> Result<RepairParams> {
    if params.ciphersuite != C::ID {
        return Err(ProtocolError::Ciphersuite {
            actual: params.ciphersuite.clone(),
        });
    }
    let helpers = common::normalize_parties(&params.helpers, "helper set")?;
    params.participant.identifier::<C>()?;
    if helpers.contains(&params.participant) {
        return Err(ProtocolError::Params {
            reason: format!(
                "party {} cannot help repair its own share: the participant must not be a helper",
                params.participant
            ),
        });
    }
    if helpers.len() < 2 {
        return Err(ProtocolError::Params {
            reason: format!(
                "{} helper(s): a repair needs at least the threshold, and every threshold is at \
                 least 2",
                helpers.len()
            ),
        });
    }
    Ok(RepairParams {
        helpers,
        ..params.clone()
    })
}

/// Checks the helper count against the threshold and that helpers and participant are members.
fn check_against_wallet<C: Ciphersuite>(
    params: &RepairParams,
    public_key_package: &PublicKeyPackage<C>,
    min_signers: u16,
) -> Result<()> {
    if public_key_package.min_signers() != Some(min_signers) {
        return Err(ProtocolError::Params {
            reason: format!(
                "threshold {min_signers}, but the public key package says {:?}",
                public_key_package.min_signers()
            ),
        });
    }
    if params.helpers.len() < usize::from(min_signers) {
        return Err(ProtocolError::Params {
            reason: format!(
                "{} helpers are below the threshold of {min_signers}",
                params.helpers.len()
            ),
        });
    }
    for party in params.helpers.iter().chain([&params.participant]) {
        if !public_key_package
            .verifying_shares()
            .contains_key(&party.identifier::<C>()?)
        {
            return Err(ProtocolError::Params {
                reason: format!("party {party} is not a member of this wallet"),
            });
        }
    }
    Ok(())
}

/// Starts helping as helper `me`, with our share of epoch `params.epoch` and the wallet's public
/// key package at that epoch. Draws an HPKE key pair for this repair and returns our *helper
/// key*: the HPKE public key (32 bytes) followed by a signature by our signing share over it and
/// the repair parameters. The coordinator hands every helper's key to every helper.
///
/// Errors ([`ProtocolError::Params`]): bad parameters (the participant among the helpers, fewer
/// helpers than the threshold, a non-member), `me` not a helper, or a key package that is not
/// `me`'s or not of this public key package.
pub fn helper_start<C: Ciphersuite>(
    params: &RepairParams,
    me: PartyId,
    key_package: &KeyPackage<C>,
    public_key_package: &PublicKeyPackage<C>,
    rng: &mut (impl CryptoRng + RngCore),
) -> Result<(RepairHelper1<C>, Vec<u8>)> {
    let params = validate_params::<C>(params)?;
    if !params.helpers.contains(&me) {
        return Err(ProtocolError::Params {
            reason: format!("party {me} is not in the helper set {:?}", params.helpers),
        });
    }
    let id = me.identifier::<C>()?;
    if *key_package.identifier() != id {
        return Err(ProtocolError::Params {
            reason: format!("the key package is not party {me}'s"),
        });
    }
    if public_key_package.verifying_key() != key_package.verifying_key()
        || public_key_package.verifying_shares().get(&id) != Some(key_package.verifying_share())
    {
        return Err(ProtocolError::Params {
            reason: format!("party {me}'s key package does not belong to the public key package"),
        });
    }
    check_against_wallet(&params, public_key_package, *key_package.min_signers())?;

    let (hpke_secret, hpke_public_key) = hpke::generate_keypair(rng);
    let message = context::helper_key_message(&params, me, &hpke_public_key);
    let signature = context::sign_with_share(key_package, &message, rng)?;
    let mut helper_key = hpke_public_key;
    helper_key.extend_from_slice(&signature);
    let state = RepairHelper1 {
        params,
        me,
        hpke_secret,
        helper_key: helper_key.clone(),
        verifying_share: *key_package.verifying_share(),
        public_key_package: public_key_package.clone(),
    };
    Ok((state, helper_key))
}

/// Splits a helper key into its HPKE public key and its signature.
fn split_helper_key(helper_key: &[u8]) -> std::result::Result<(&[u8], &[u8]), String> {
    helper_key
        .split_at_checked(hpke::PUBLIC_KEY_LEN)
        .ok_or_else(|| {
            format!(
                "its helper key is {} bytes, shorter than an HPKE public key",
                helper_key.len()
            )
        })
}

/// Checks `helper`'s key: an HPKE public key followed by a signature over it and the repair's
/// parameters by `helper`'s share in `public_key_package`. Returns the HPKE public key.
///
/// Errors: malformed, or not signed by that share ([`ProtocolError::Culprit`] naming `helper`).
fn check_helper_key<'k, C: Ciphersuite>(
    params: &RepairParams,
    public_key_package: &PublicKeyPackage<C>,
    helper: PartyId,
    key: &'k [u8],
) -> Result<&'k [u8]> {
    let culprit = |reason: String| ProtocolError::Culprit {
        party: helper,
        reason,
    };
    let (hpke_key, signature) = split_helper_key(key).map_err(culprit)?;
    let message = context::helper_key_message(params, helper, hpke_key);
    context::verify_by_share(public_key_package, helper, &message, signature).map_err(|e| {
        culprit(format!(
            "its helper key is not vouched for by its share: {e} (substituted by the \
             coordinator?)"
        ))
    })?;
    Ok(hpke_key)
}

/// Exactly one key per helper, as a map must carry it.
fn check_key_set(params: &RepairParams, helper_keys: &BTreeMap<PartyId, Vec<u8>>) -> Result<()> {
    if let Some(stranger) = helper_keys.keys().find(|p| !params.helpers.contains(p)) {
        return Err(ProtocolError::UnexpectedMessage {
            expected: "one key from each helper",
            actual: format!("a key from party {stranger}, who is not a helper"),
        });
    }
    if let Some(missing) = params.helpers.iter().find(|p| !helper_keys.contains_key(p)) {
        return Err(ProtocolError::UnexpectedMessage {
            expected: "one key from each helper",
            actual: format!("no key from helper {missing}"),
        });
    }
    Ok(())
}

impl<C: Ciphersuite> RepairHelper1<C> {
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
        &self.helper_key
    }

    /// Takes every helper's key (ours included, unchanged), checks each other helper's signature
    /// against its verifying share, runs frost `repair_share_part1` with our share (the same key
    /// package as at [`helper_start`]) and seals each delta to its helper, signed with our share.
    /// Our delta to ourselves stays here. Returns one package per other helper.
    ///
    /// Errors: a missing or extra key ([`ProtocolError::UnexpectedMessage`]); ours altered
    /// ([`ProtocolError::Disagreement`]); another helper's key malformed or not signed by its
    /// share ([`ProtocolError::Culprit`] naming it); another key package
    /// ([`ProtocolError::Params`]).
    pub fn deltas(
        self,
        key_package: &KeyPackage<C>,
        helper_keys: &BTreeMap<PartyId, Vec<u8>>,
        rng: &mut (impl CryptoRng + RngCore),
    ) -> Result<(RepairHelper2<C>, Vec<SealedPackage>)> {
        let Self {
            params,
            me,
            hpke_secret,
            helper_key,
            verifying_share,
            public_key_package,
        } = self;
        let id = me.identifier::<C>()?;
        if *key_package.identifier() != id || *key_package.verifying_share() != verifying_share {
            return Err(ProtocolError::Params {
                reason: "the key package is not the one the repair was started with".into(),
            });
        }
        check_key_set(&params, helper_keys)?;
        if helper_keys.get(&me) != Some(&helper_key) {
            return Err(ProtocolError::Disagreement {
                reason: format!(
                    "the helper key relayed as party {me}'s (ours) is not the one we sent"
                ),
            });
        }
        let mut recipients = BTreeMap::new();
        for (&helper, key) in helper_keys.iter().filter(|(h, _)| **h != me) {
            let hpke_key = check_helper_key(&params, &public_key_package, helper, key)?;
            recipients.insert(helper, hpke_key);
        }

        let context_hash = context::context_hash(&params, helper_keys);
        let helper_ids: Vec<Identifier<C>> = params
            .helpers
            .iter()
            .map(|p| p.identifier::<C>())
            .collect::<Result<_>>()?;
        let participant = params.participant.identifier::<C>()?;
        let mut deltas = repairable::repair_share_part1(&helper_ids, key_package, rng, participant)
            .map_err(|e| common::frost_error(e, &params.helpers, "repair part 1"))?;

        let result = seal_deltas(
            &params,
            me,
            key_package,
            &recipients,
            &deltas,
            &context_hash,
            rng,
        );
        wipe(deltas.values_mut());
        let (own_delta, sealed) = result?;

        let state = RepairHelper2 {
            params,
            me,
            hpke_secret,
            context_hash,
            own_delta,
            public_key_package,
        };
        Ok((state, sealed))
    }
}

/// Seals and signs each delta to its helper; returns our own delta (serialized) and the packages.
fn seal_deltas<C: Ciphersuite>(
    params: &RepairParams,
    me: PartyId,
    key_package: &KeyPackage<C>,
    recipients: &BTreeMap<PartyId, &[u8]>,
    deltas: &BTreeMap<Identifier<C>, Delta<C>>,
    context_hash: &[u8; 32],
    rng: &mut (impl CryptoRng + RngCore),
) -> Result<(Zeroizing<Vec<u8>>, Vec<SealedPackage>)> {
    let info = context::info(params);
    let mut own_delta = None;
    let mut sealed = Vec::with_capacity(recipients.len());
    for (id, delta) in deltas {
        let to = common::party_of(id, &params.helpers).ok_or_else(|| ProtocolError::Frost {
            reason: "frost produced a delta for an unknown identifier".into(),
        })?;
        let plaintext = Zeroizing::new(delta.serialize());
        if to == me {
            own_delta = Some(plaintext);
            continue;
        }
        let recipient_key = recipients.get(&to).ok_or_else(|| ProtocolError::Frost {
            reason: format!("no key for helper {to}"),
        })?;
        let aad = context::aad(params, Kind::Delta, me, to, context_hash);
        let (enc, mut ciphertext) = hpke::seal(recipient_key, &info, &aad, &plaintext, rng)
            .map_err(|e| {
                ProtocolError::culprit(to, format!("cannot seal to its HPKE public key: {e}"))
            })?;
        let signature = context::sign_with_share(
            key_package,
            &context::delta_message(&aad, &enc, &ciphertext),
            rng,
        )?;
        ciphertext.extend_from_slice(&signature);
        sealed.push(SealedPackage {
            from: me,
            to,
            enc: ByteBuf::from(enc),
            ciphertext: ByteBuf::from(ciphertext),
        });
    }
    let own_delta = own_delta.ok_or_else(|| ProtocolError::Frost {
        reason: "frost produced no delta for ourselves".into(),
    })?;
    Ok((own_delta, sealed))
}

impl<C: Ciphersuite> RepairHelper2<C> {
    /// The repair's parameters (helpers sorted).
    pub fn params(&self) -> &RepairParams {
        &self.params
    }

    /// Our party number.
    pub fn me(&self) -> PartyId {
        self.me
    }

    /// Takes the deltas sealed to us, exactly one from each *other* helper (ours never left us),
    /// checks each sender's signature and opens it, sums them with ours (frost
    /// `repair_share_part2`) and seals the resulting sigma to the participant's HPKE public key.
    ///
    /// `participant_key` must be authenticated by the caller (it decides who gets the share).
    ///
    /// Errors: a missing, duplicated, unknown-sender or misaddressed delta
    /// ([`ProtocolError::UnexpectedMessage`]); a delta that is not signed by its sender's share,
    /// does not open or does not decode ([`ProtocolError::Culprit`] naming the sender); a
    /// malformed participant key ([`ProtocolError::Params`]).
    pub fn sigma(
        self,
        deltas: &[SealedPackage],
        participant_key: &[u8],
        rng: &mut (impl CryptoRng + RngCore),
    ) -> Result<SealedPackage> {
        let Self {
            params,
            me,
            hpke_secret,
            context_hash,
            own_delta,
            public_key_package,
        } = self;
        if participant_key.len() != hpke::PUBLIC_KEY_LEN {
            return Err(ProtocolError::Params {
                reason: format!(
                    "the participant's HPKE public key is {} bytes, expected {}",
                    participant_key.len(),
                    hpke::PUBLIC_KEY_LEN
                ),
            });
        }
        let by_sender = one_from_each_other(
            deltas,
            &params.helpers,
            me,
            "one sealed delta from each other helper",
        )?;

        let info = context::info(&params);
        let sealed_len = context::sealed_scalar_len::<C>();
        let mut received: Vec<Delta<C>> = Vec::with_capacity(params.helpers.len());
        let mut opened = Ok(());
        for (&from, sealed) in &by_sender {
            match open_delta(
                &params,
                me,
                from,
                sealed,
                &hpke_secret,
                &info,
                sealed_len,
                &context_hash,
                &public_key_package,
            ) {
                Ok(delta) => received.push(delta),
                Err(e) => {
                    opened = Err(e);
                    break;
                }
            }
        }
        let own = Delta::<C>::deserialize(&own_delta).map_err(|e| ProtocolError::Frost {
            reason: format!("our own delta: {e}"),
        });
        let sigma = match (opened, own) {
            (Ok(()), Ok(own)) => {
                received.push(own);
                Ok(repairable::repair_share_part2(&received))
            }
            (Err(e), _) | (_, Err(e)) => Err(e),
        };
        wipe(received.iter_mut());
        drop(own_delta);
        let mut sigma = sigma?;
        let plaintext = Zeroizing::new(sigma.serialize());
        wipe_sigma(&mut sigma);
        let aad = context::aad(&params, Kind::Sigma, me, params.participant, &context_hash);
        let (enc, ciphertext) =
            hpke::seal(participant_key, &info, &aad, &plaintext, rng).map_err(|e| {
                ProtocolError::Params {
                    reason: format!("cannot seal to the participant's HPKE public key: {e}"),
                }
            })?;
        Ok(SealedPackage {
            from: me,
            to: params.participant,
            enc: ByteBuf::from(enc),
            ciphertext: ByteBuf::from(ciphertext),
        })
    }
}

/// Refuses a sealed `what` ("delta", "sigma") addressed to another party than `to`, whoever relays
/// it: it is not ours to open and counts for nothing ([`ProtocolError::UnexpectedMessage`],
/// `expected` saying what we take). The engines ([`engine`]) check it as a message arrives, the
/// rounds again before opening.
pub(crate) fn check_addressed(
    sealed: &SealedPackage,
    what: &str,
    to: PartyId,
    expected: &'static str,
) -> Result<()> {
    if sealed.to == to {
        return Ok(());
    }
    Err(ProtocolError::UnexpectedMessage {
        expected,
        actual: format!(
            "a {what} from party {} addressed to party {}",
            sealed.from, sealed.to
        ),
    })
}

/// Checks, opens and decodes the delta `from` sent us.
#[allow(clippy::too_many_arguments)]
fn open_delta<C: Ciphersuite>(
    params: &RepairParams,
    me: PartyId,
    from: PartyId,
    sealed: &SealedPackage,
    hpke_secret: &HpkeSecretKey,
    info: &[u8],
    sealed_len: usize,
    context_hash: &[u8; 32],
    public_key_package: &PublicKeyPackage<C>,
) -> Result<Delta<C>> {
    check_addressed(sealed, "delta", me, "deltas addressed to us")?;
    let culprit = |reason: String| ProtocolError::culprit(from, reason);
    let (ciphertext, signature) =
        sealed
            .ciphertext
            .split_at_checked(sealed_len)
            .ok_or_else(|| {
                culprit(format!(
                    "its delta is {} bytes, too short for a sealed scalar and a signature",
                    sealed.ciphertext.len()
                ))
            })?;
    let aad = context::aad(params, Kind::Delta, from, me, context_hash);
    context::verify_by_share(
        public_key_package,
        from,
        &context::delta_message(&aad, &sealed.enc, ciphertext),
        signature,
    )
    .map_err(|e| culprit(format!("its delta is not signed by its share: {e}")))?;
    let plaintext = hpke::open(hpke_secret, info, &aad, &sealed.enc, ciphertext)
        .map_err(|e| culprit(format!("its delta does not open ({e})")))?;
    common::decode_canonical(&plaintext, Delta::<C>::deserialize, |d: &Delta<C>| {
        Ok(d.serialize())
    })
    .map_err(|e| culprit(format!("its delta {e}")))
}

/// Starts the participant's side: an HPKE key pair for this repair. Returns the state and the
/// public key, which the coordinator gives every helper for its sigma (authenticated: the helpers
/// seal a share of the wallet to it).
///
/// Errors: bad parameters ([`ProtocolError::Params`], [`ProtocolError::Ciphersuite`]).
pub fn participant_start<C: Ciphersuite>(
    params: &RepairParams,
    rng: &mut (impl CryptoRng + RngCore),
) -> Result<(RepairParticipant<C>, Vec<u8>)> {
    let params = validate_params::<C>(params)?;
    let (hpke_secret, hpke_public_key) = hpke::generate_keypair(rng);
    Ok((
        RepairParticipant {
            params,
            hpke_secret,
            suite: PhantomData,
        },
        hpke_public_key,
    ))
}

impl<C: Ciphersuite> RepairParticipant<C> {
    /// The repair's parameters (helpers sorted).
    pub fn params(&self) -> &RepairParams {
        &self.params
    }

    /// Takes the helper keys exactly as the helpers got them, one sigma from each helper, the
    /// wallet's public key package at `params.epoch` and its threshold; opens the sigmas, sums
    /// them (frost `repair_share_part3`) and returns the repaired key package only if its
    /// verifying share is the participant's in `public_key_package`, under its group key.
    ///
    /// Errors: a threshold above the helper count or unlike the package's
    /// ([`ProtocolError::Params`]); a missing or extra key or sigma
    /// ([`ProtocolError::UnexpectedMessage`]); a sigma that does not open or decode
    /// ([`ProtocolError::Culprit`] naming its sender); a repaired share that is not the
    /// participant's ([`ProtocolError::Disagreement`]: "repaired share does not match the public
    /// key package").
    pub fn finish(
        self,
        helper_keys: &BTreeMap<PartyId, Vec<u8>>,
        sigmas: &[SealedPackage],
        public_key_package: &PublicKeyPackage<C>,
        min_signers: u16,
    ) -> Result<KeyPackage<C>> {
        let Self {
            params,
            hpke_secret,
            suite: _,
        } = self;
        check_against_wallet(&params, public_key_package, min_signers)?;
        check_key_set(&params, helper_keys)?;
        let context_hash = context::context_hash(&params, helper_keys);
        let by_sender = common::one_per_party(
            sigmas,
            |s| s.from,
            &params.helpers,
            "one sealed sigma from each helper",
        )?;
        let info = context::info(&params);
        let mut received: Vec<Sigma<C>> = Vec::with_capacity(by_sender.len());
        let mut opened = Ok(());
        for (&from, sealed) in &by_sender {
            match open_sigma(&params, from, sealed, &hpke_secret, &info, &context_hash) {
                Ok(sigma) => received.push(sigma),
                Err(e) => {
                    opened = Err(e);
                    break;
                }
            }
        }
        let participant = params.participant.identifier::<C>()?;
        let repaired = opened.and_then(|()| {
            repairable::repair_share_part3(&received, participant, public_key_package)
                .map_err(|e| common::frost_error(e, &params.helpers, "repair part 3"))
        });
        received.iter_mut().for_each(wipe_sigma);
        drop(hpke_secret);
        let key_package = repaired?;

        // frost does not check the result (docs/lifecycle.md, "Recovery").
        if public_key_package.verifying_shares().get(&participant)
            != Some(key_package.verifying_share())
            || key_package.verifying_key() != public_key_package.verifying_key()
            || *key_package.min_signers() != min_signers
            || *key_package.identifier() != participant
        {
            return Err(ProtocolError::Disagreement {
                reason: format!(
                    "repaired share does not match the public key package: party {}'s verifying \
                     share differs (a helper used a share of another epoch or wallet, or sent a \
                     bad value)",
                    params.participant
                ),
            });
        }
        Ok(key_package)
    }
}

/// Opens and decodes the sigma `from` sent the participant.
fn open_sigma<C: Ciphersuite>(
    params: &RepairParams,
    from: PartyId,
    sealed: &SealedPackage,
    hpke_secret: &HpkeSecretKey,
    info: &[u8],
    context_hash: &[u8; 32],
) -> Result<Sigma<C>> {
    check_addressed(
        sealed,
        "sigma",
        params.participant,
        "sigmas addressed to the participant",
    )?;
    let culprit = |reason: String| ProtocolError::culprit(from, reason);
    let aad = context::aad(params, Kind::Sigma, from, params.participant, context_hash);
    let plaintext =
        hpke::open(hpke_secret, info, &aad, &sealed.enc, &sealed.ciphertext).map_err(|e| {
            culprit(format!(
                "its sigma does not open ({e}): altered in transit, or sealed under other helper \
                 keys or parameters"
            ))
        })?;
    common::decode_canonical(&plaintext, Sigma::<C>::deserialize, |s: &Sigma<C>| {
        Ok(s.serialize())
    })
    .map_err(|e| culprit(format!("its sigma {e}")))
}

/// The serialization of the scalar zero.
fn zero_scalar<C: Ciphersuite>() -> Vec<u8> {
    let zero = <<C::Group as Group>::Field as Field>::zero();
    <<C::Group as Group>::Field as Field>::serialize(&zero)
        .as_ref()
        .to_vec()
}

/// Overwrites deltas with zero. frost's `Delta` is `Copy` and not `Zeroize`; this is the best we
/// can do for the copies we hold.
fn wipe<'a, C: Ciphersuite + 'a>(deltas: impl IntoIterator<Item = &'a mut Delta<C>>) {
    if let Ok(zero) = Delta::<C>::deserialize(&zero_scalar::<C>()) {
        for d in deltas {
            *d = zero;
            std::hint::black_box(&*d);
        }
    }
}

/// Overwrites a sigma with zero (see [`wipe`]).
fn wipe_sigma<C: Ciphersuite>(sigma: &mut Sigma<C>) {
    if let Ok(zero) = Sigma::<C>::deserialize(&zero_scalar::<C>()) {
        *sigma = zero;
        std::hint::black_box(&*sigma);
    }
}

// Debug prints who and where, never a secret.

redacted_debug! {
    RepairHelper1<C: Ciphersuite> |s| {
        params: s.params,
        me: s.me,
    } hides [hpke_secret]
}

redacted_debug! {
    RepairHelper2<C: Ciphersuite> |s| {
        params: s.params,
        me: s.me,
        context_hash: hex::encode(s.context_hash),
    } hides [own_delta]
}

redacted_debug! {
    RepairParticipant<C: Ciphersuite> |s| {
        params: s.params,
    } hides [hpke_secret]
}

/// Parameters of the repair's unit tests: helpers 3 and 2 (listed unsorted, as a caller may list
/// them) rebuild party 1's share of wallet `[wallet; 16]` at epoch `epoch`.
#[cfg(test)]
fn test_params(wallet: u8, epoch: u64) -> RepairParams {
    use crate::id::pid;
    RepairParams {
        wallet_id: crate::wire::WalletId([wallet; 16]),
        ciphersuite: crate::wire::SUITE_SECP256K1_TR.into(),
        epoch: crate::id::Epoch(epoch),
        helpers: vec![pid(3), pid(2)],
        participant: pid(1),
    }
}
