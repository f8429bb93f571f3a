//! Proactive refresh: every party re-randomizes its share, the group key and the threshold stay.
//!
//! The DKG-style refresh of frost (`keys::refresh::refresh_dkg_*`): each party deals a random
//! polynomial with a zero constant term, and adds the shares it receives to its old share. The
//! sum of zero-polynomials is zero at 0, so the group key does not change; the shares do, and a
//! share of the old epoch no longer combines with one of the new epoch. This module wraps it
//! exactly like [`crate::dkg`] wraps the DKG:
//!
//! * **Confidential round 2**: each share is sealed with HPKE to its recipient's round-1 key, the
//!   AAD binding wallet, the epoch being refreshed, sender, recipient and the round-1 transcript.
//! * **Confirmation round**: every party compares transcript and new public key package; a
//!   [`RefreshOutput`] exists only once every party confirmed the same ones.
//! * **Domain separation**: the transcript, `info` and AAD use their own tags
//!   ([`transcript_hash`], [`round2_info`], [`round2_aad`]) and bind `from_epoch`, so a DKG message,
//!   or one of a refresh of another epoch, never fits. (A DKG round-1 package is also one
//!   coefficient longer than a refresh one, and is refused for that first.)
//!
//! What frost leaves to us and this module guards (docs/lifecycle.md, "Refresh"):
//!
//! * **Eviction.** `refresh_dkg_shares` run by a subset of the parties silently drops the others
//!   from the new public key package. [`RefreshRound2::handle_round2`] (and [`check_old_shares`],
//!   to refuse early) requires the party set to be exactly the wallet's.
//! * **Threshold.** A refresh cannot change it: the parameters' threshold must be the old one.
//! * **Group key.** The new public key package must carry the old group key, and every party must
//!   confirm it.
//!
//! ```text
//! start ──► RefreshRound1 ──handle_round1(all)──► RefreshRound2 ──handle_round2(sealed to us, old key)
//!   │ Round1Message          │ Vec<SealedPackage>                      │ Confirmation
//!   ▼                        ▼                                         ▼
//!  broadcast             one per other party        RefreshRound3 ──handle_confirmations(all)──► RefreshOutput
//! ```
//!
//! Delete the old share only after every party committed the new epoch (the enclave's
//! `RefreshFinalize`): until then some party may still sign with the old one.

mod transcript;
mod vss;

use std::collections::BTreeMap;

use frost_core::Ciphersuite;
use frost_core::keys::dkg::{round1, round2};
use frost_core::keys::{KeyPackage, PublicKeyPackage};
use rand_core::{CryptoRng, RngCore};
use serde_bytes::ByteBuf;
use zeroize::Zeroizing;

pub use transcript::{round2_aad, round2_info, transcript_hash};

use crate::dkg::common;
use crate::dkg::public_key_package_hash;
use crate::error::{ProtocolError, Result};
use crate::hpke::{self, HpkeSecretKey};
use crate::wire::{Confirmation, RefreshParams, Round1Message, SealedPackage};

/// Round 1 done: our broadcast is out, we wait for everyone's.
pub struct RefreshRound1<C: Ciphersuite> {
    params: RefreshParams,
    me: u16,
    /// frost's round-1 secret (our zero-constant polynomial); zeroizes on drop.
    secret: round1::SecretPackage<C>,
    hpke_secret: HpkeSecretKey,
    message: Round1Message,
}

/// Round 2 done: our sealed packages are out, we wait for the ones sealed to us.
pub struct RefreshRound2<C: Ciphersuite> {
    params: RefreshParams,
    me: u16,
    /// frost's round-2 secret; zeroizes on drop.
    secret: round2::SecretPackage<C>,
    hpke_secret: HpkeSecretKey,
    round1_packages: BTreeMap<frost_core::Identifier<C>, round1::Package<C>>,
    transcript_hash: [u8; 32],
}

/// Round 3 done: we hold the new share, not usable until every party confirmed the same result.
pub struct RefreshRound3<C: Ciphersuite> {
    params: RefreshParams,
    me: u16,
    key_package: KeyPackage<C>,
    public_key_package: PublicKeyPackage<C>,
    transcript_hash: [u8; 32],
    confirmation: Confirmation,
}

/// The result of a refresh every party confirmed: the share of epoch `from_epoch + 1`.
///
/// `key_package` holds our new signing share: seal it before storing it, never send it.
pub struct RefreshOutput<C: Ciphersuite> {
    /// Our new share; same identifier, group key and threshold as before (zeroizes on drop).
    pub key_package: KeyPackage<C>,
    /// The new verifying shares and the unchanged group key: public, identical at every party.
    pub public_key_package: PublicKeyPackage<C>,
    /// The transcript hash every party confirmed.
    pub transcript_hash: [u8; 32],
}

/// Checks the parameters for party `me` and returns them with the parties sorted.
fn validate_params<C: Ciphersuite>(params: &RefreshParams, me: u16) -> Result<RefreshParams> {
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
    Ok(RefreshParams {
        parties,
        ..params.clone()
    })
}

/// Checks that party `me`'s current share and public key package are the ones `params` refreshes:
/// the key package is `me`'s and agrees with the public key package, the threshold is unchanged,
/// and the party set is exactly the wallet's (a refresh never evicts anyone, docs/lifecycle.md).
///
/// [`RefreshRound2::handle_round2`] runs it; callers may run it before [`start`] to refuse a bad
/// refresh before any message is sent.
///
/// Errors ([`ProtocolError::Params`]): "refresh must include every party: missing N", a party
/// that is not a member, a changed threshold, a key package of another party or another wallet.
pub fn check_old_shares<C: Ciphersuite>(
    params: &RefreshParams,
    me: u16,
    old_key_package: &KeyPackage<C>,
    old_public_key_package: &PublicKeyPackage<C>,
) -> Result<()> {
    let params = validate_params::<C>(params, me)?;
    let bad = |reason: String| ProtocolError::Params { reason };
    let id = common::identifier::<C>(me)?;
    if *old_key_package.identifier() != id {
        return Err(bad(format!("the current key package is not party {me}'s")));
    }
    if *old_key_package.min_signers() != params.min_signers {
        return Err(bad(format!(
            "a refresh cannot change the threshold: it is {}, the refresh asks for {}",
            old_key_package.min_signers(),
            params.min_signers
        )));
    }
    if old_public_key_package.min_signers() != Some(params.min_signers) {
        return Err(bad(format!(
            "a refresh cannot change the threshold: the public key package says {:?}, the \
             refresh asks for {}",
            old_public_key_package.min_signers(),
            params.min_signers
        )));
    }
    if old_public_key_package.verifying_key() != old_key_package.verifying_key()
        || old_public_key_package.verifying_shares().get(&id)
            != Some(old_key_package.verifying_share())
    {
        return Err(bad(format!(
            "party {me}'s current key package does not belong to the public key package"
        )));
    }
    let shares = old_public_key_package.verifying_shares();
    for party in &params.parties {
        if !shares.contains_key(&common::identifier::<C>(*party)?) {
            return Err(bad(format!("party {party} is not a member of this wallet")));
        }
    }
    if shares.len() != params.parties.len() {
        // Some member is not in the refresh: name it (party numbers are small; this search only
        // runs on the error path).
        let missing = (1..=u16::MAX).find(|p| {
            !params.parties.contains(p)
                && common::identifier::<C>(*p).is_ok_and(|id| shares.contains_key(&id))
        });
        return Err(bad(match missing {
            Some(p) => format!(
                "refresh must include every party: missing {p} (a refresh of a subset would \
                 evict it)"
            ),
            None => "refresh must include every party: the wallet has members the refresh \
                     leaves out"
                .into(),
        }));
    }
    Ok(())
}

/// Starts a refresh of epoch `params.from_epoch` as party `me`: frost `refresh_dkg_part1` (a
/// random polynomial with a zero constant term and its commitment, without the identity) and a
/// fresh HPKE key pair for this refresh. Returns the state and our round-1 broadcast.
pub fn start<C: Ciphersuite>(
    params: &RefreshParams,
    me: u16,
    rng: &mut (impl CryptoRng + RngCore),
) -> Result<(RefreshRound1<C>, Round1Message)> {
    let params = validate_params::<C>(params, me)?;
    let id = common::identifier::<C>(me)?;
    let max_signers = u16::try_from(params.parties.len()).map_err(|_| ProtocolError::Params {
        reason: "too many parties".into(),
    })?;
    let (secret, package) = frost_core::keys::refresh::refresh_dkg_part1(
        id,
        max_signers,
        params.min_signers,
        &mut *rng,
    )
    .map_err(|e| common::frost_error(e, &params.parties, "refresh round 1"))?;
    let package = package.serialize().map_err(|e| ProtocolError::Frost {
        reason: format!("serializing our refresh round-1 package: {e}"),
    })?;
    let (hpke_secret, hpke_public_key) = hpke::generate_keypair(rng);
    let message = Round1Message {
        from: me,
        package: ByteBuf::from(package),
        hpke_public_key: ByteBuf::from(hpke_public_key),
    };
    let state = RefreshRound1 {
        params,
        me,
        secret,
        hpke_secret,
        message: message.clone(),
    };
    Ok((state, message))
}

impl<C: Ciphersuite> RefreshRound1<C> {
    /// The refresh's parameters (parties sorted).
    pub fn params(&self) -> &RefreshParams {
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

    /// Takes every party's round-1 message (ours included), checks them, runs frost
    /// `refresh_dkg_part2` (our polynomial at each other party) and seals each share to its
    /// recipient.
    ///
    /// Errors: a missing, duplicated or unknown sender ([`ProtocolError::UnexpectedMessage`]); our
    /// own message altered ([`ProtocolError::Disagreement`]); a package that does not decode, has
    /// the wrong number of coefficients (a DKG round-1 package, another threshold) or a bad HPKE
    /// key ([`ProtocolError::Culprit`] naming its sender).
    pub fn handle_round1(
        self,
        round1: &[Round1Message],
        rng: &mut (impl CryptoRng + RngCore),
    ) -> Result<(RefreshRound2<C>, Vec<SealedPackage>)> {
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
            "one refresh round-1 message from each party",
        )?;
        if by_sender.get(&me).copied() != Some(&message) {
            return Err(ProtocolError::Disagreement {
                reason: format!(
                    "the refresh round-1 message relayed as party {me}'s (ours) is not the one we \
                     sent"
                ),
            });
        }

        let mut round1_packages = BTreeMap::new();
        for (&from, msg) in by_sender.iter().filter(|(from, _)| **from != me) {
            let culprit = |reason: String| ProtocolError::Culprit {
                party: from,
                reason,
            };
            // Same suite and threshold: every refresh round-1 package has our package's length. A
            // DKG round-1 package has one coefficient more and is refused here.
            if msg.package.len() != message.package.len() {
                return Err(culprit(format!(
                    "its refresh round-1 package is {} bytes, ours is {} (a DKG message, or \
                     another threshold)",
                    msg.package.len(),
                    message.package.len()
                )));
            }
            let package = common::decode_canonical(
                &msg.package,
                round1::Package::<C>::deserialize,
                round1::Package::<C>::serialize,
            )
            .map_err(|e| culprit(format!("its refresh round-1 package {e}")))?;
            // The commitment leaves out the (identity) constant term: t - 1 coefficients.
            let coefficients = package
                .commitment()
                .serialize()
                .map_err(|e| culprit(format!("its refresh commitment: {e}")))?
                .len();
            let expected = usize::from(params.min_signers).saturating_sub(1);
            if coefficients != expected {
                return Err(culprit(format!(
                    "its refresh commitment has {coefficients} coefficients, expected {expected} \
                     for threshold {}",
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
        let (secret, outgoing) =
            frost_core::keys::refresh::refresh_dkg_part2(secret, &round1_packages)
                .map_err(|e| common::frost_error(e, &params.parties, "refresh round 2"))?;

        let mut sealed = Vec::with_capacity(outgoing.len());
        for (id, package) in &outgoing {
            let to = common::party_of(id, &params.parties).ok_or_else(|| ProtocolError::Frost {
                reason: "frost produced a refresh package for an unknown identifier".into(),
            })?;
            let recipient_key = by_sender
                .get(&to)
                .map(|m| m.hpke_public_key.as_slice())
                .ok_or_else(|| ProtocolError::Frost {
                    reason: format!("no refresh round-1 message from party {to}"),
                })?;
            let plaintext =
                Zeroizing::new(package.serialize().map_err(|e| ProtocolError::Frost {
                    reason: format!("serializing our refresh package for party {to}: {e}"),
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
        drop(outgoing);

        let state = RefreshRound2 {
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

/// Seals a serialized refresh `round2::Package` from `from` to `to`, exactly as
/// [`RefreshRound1::handle_round1`] does (HPKE base mode, `info` = [`round2_info`], AAD =
/// [`round2_aad`]). Public for tests and tools that must build a package by hand.
pub fn seal_package(
    params: &RefreshParams,
    from: u16,
    to: u16,
    transcript_hash: &[u8; 32],
    recipient_public_key: &[u8],
    package: &[u8],
    rng: &mut (impl CryptoRng + RngCore),
) -> Result<SealedPackage> {
    let info = round2_info(params);
    let aad = round2_aad(
        &params.wallet_id,
        params.from_epoch,
        from,
        to,
        transcript_hash,
    );
    let (enc, ciphertext) = hpke::seal(recipient_public_key, &info, &aad, package, rng)?;
    Ok(SealedPackage {
        from,
        to,
        enc: ByteBuf::from(enc),
        ciphertext: ByteBuf::from(ciphertext),
    })
}

impl<C: Ciphersuite> RefreshRound2<C> {
    /// The refresh's parameters (parties sorted).
    pub fn params(&self) -> &RefreshParams {
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

    /// Takes the packages sealed to us (one from each other party) and our share of epoch
    /// `from_epoch` with its public key package; opens and checks each package against its
    /// sender's commitment, derives the new share (frost `refresh_dkg_shares`) and returns the
    /// confirmation to send to every party.
    ///
    /// The new share is not usable yet: [`RefreshRound3::handle_confirmations`] decides.
    ///
    /// Errors: the old share does not fit the refresh ([`check_old_shares`]:
    /// [`ProtocolError::Params`]); a missing, duplicated, unknown-sender or misaddressed package
    /// ([`ProtocolError::UnexpectedMessage`]); a package that does not open (altered, from another
    /// epoch, wallet or ceremony), does not decode or does not match its sender's commitment
    /// ([`ProtocolError::Culprit`] naming the sender); a result with another group key or party
    /// set ([`ProtocolError::Disagreement`]).
    pub fn handle_round2(
        self,
        packages: &[SealedPackage],
        old_key_package: &KeyPackage<C>,
        old_public_key_package: &PublicKeyPackage<C>,
    ) -> Result<(RefreshRound3<C>, Confirmation)> {
        let Self {
            params,
            me,
            secret,
            hpke_secret,
            round1_packages,
            transcript_hash,
        } = self;
        check_old_shares(&params, me, old_key_package, old_public_key_package)?;
        let id = common::identifier::<C>(me)?;

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
            "one sealed refresh package from each other party",
        )?;

        let info = round2_info(&params);
        let mut round2_packages = BTreeMap::new();
        for (&from, sealed) in &by_sender {
            if sealed.to != me {
                return Err(ProtocolError::UnexpectedMessage {
                    expected: "refresh packages addressed to us",
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
            let aad = round2_aad(
                &params.wallet_id,
                params.from_epoch,
                from,
                me,
                &transcript_hash,
            );
            let plaintext = hpke::open(&hpke_secret, &info, &aad, &sealed.enc, &sealed.ciphertext)
                .map_err(|e| {
                    culprit(format!(
                        "its refresh package does not open ({e}): altered in transit, sealed to \
                         another key, from another epoch or ceremony, or its sender saw a \
                         different round-1 transcript"
                    ))
                })?;
            let package = common::decode_canonical(
                &plaintext,
                round2::Package::<C>::deserialize,
                round2::Package::<C>::serialize,
            )
            .map_err(|e| culprit(format!("its refresh package {e}")))?;
            let sender = common::identifier::<C>(from)?;
            let commitment = round1_packages
                .get(&sender)
                .map(|p| p.commitment())
                .ok_or_else(|| ProtocolError::Frost {
                    reason: format!("no refresh round-1 package from party {from}"),
                })?;
            vss::check_refresh_share(package.signing_share(), commitment, id)
                .map_err(|e| culprit(format!("its refresh package: {e}")))?;
            round2_packages.insert(sender, package);
        }

        let (key_package, public_key_package) = frost_core::keys::refresh::refresh_dkg_shares(
            &secret,
            &round1_packages,
            &round2_packages,
            old_public_key_package.clone(),
            old_key_package.clone(),
        )
        .map_err(|e| common::frost_error(e, &params.parties, "refresh round 3"))?;
        drop(round2_packages);
        drop(secret);
        drop(hpke_secret);

        // What frost does not promise to check: same group key, same members, same threshold, and
        // our new share is the one the new public key package lists for us.
        let disagreement = |reason: &str| ProtocolError::Disagreement {
            reason: reason.into(),
        };
        if public_key_package.verifying_key() != old_public_key_package.verifying_key()
            || key_package.verifying_key() != old_public_key_package.verifying_key()
        {
            return Err(disagreement("the refresh changed the group key"));
        }
        if !public_key_package
            .verifying_shares()
            .keys()
            .eq(old_public_key_package.verifying_shares().keys())
        {
            return Err(disagreement("the refresh changed the set of parties"));
        }
        if public_key_package.min_signers() != Some(params.min_signers)
            || *key_package.min_signers() != params.min_signers
        {
            return Err(disagreement("the refresh changed the threshold"));
        }
        if *key_package.identifier() != id
            || public_key_package.verifying_shares().get(&id) != Some(key_package.verifying_share())
        {
            return Err(ProtocolError::Frost {
                reason: "the refreshed key package does not match the refreshed public key package"
                    .into(),
            });
        }

        let public_key_package_hash = public_key_package_hash(&public_key_package)?;
        let confirmation = Confirmation {
            from: me,
            transcript_hash: ByteBuf::from(transcript_hash.to_vec()),
            public_key_package_hash: ByteBuf::from(public_key_package_hash.to_vec()),
        };
        let state = RefreshRound3 {
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

impl<C: Ciphersuite> RefreshRound3<C> {
    /// The refresh's parameters (parties sorted).
    pub fn params(&self) -> &RefreshParams {
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

    /// The new share, not yet confirmed by the others: store it (sealed) as *prepared*, never use
    /// it before [`RefreshRound3::handle_confirmations`] succeeded.
    pub fn key_package(&self) -> &KeyPackage<C> {
        &self.key_package
    }

    /// The new public key package, not yet confirmed by the others.
    pub fn public_key_package(&self) -> &PublicKeyPackage<C> {
        &self.public_key_package
    }

    /// Takes every party's confirmation (ours included) and returns the new share only if all of
    /// them match ours: same transcript, same public key package.
    ///
    /// Errors: a missing, duplicated or unknown sender ([`ProtocolError::UnexpectedMessage`]);
    /// our own confirmation altered, or any party's differing ([`ProtocolError::Disagreement`]
    /// naming the parties). The new share is then dropped (zeroized); the old epoch stays.
    pub fn handle_confirmations(self, confirmations: &[Confirmation]) -> Result<RefreshOutput<C>> {
        check_confirmations(
            &self.params.parties,
            self.me,
            &self.confirmation,
            confirmations,
        )?;
        Ok(RefreshOutput {
            key_package: self.key_package,
            public_key_package: self.public_key_package,
            transcript_hash: self.transcript_hash,
        })
    }
}

/// Checks every party's confirmations against `ours`, as [`RefreshRound3::handle_confirmations`]
/// does, for a commit made from a stored prepared refresh (after a restart, or rolled forward
/// from another session) rather than from the in-memory round-3 state.
///
/// Errors: as [`RefreshRound3::handle_confirmations`].
pub fn check_commit(
    parties: &[u16],
    me: u16,
    ours: &Confirmation,
    confirmations: &[Confirmation],
) -> Result<()> {
    check_confirmations(parties, me, ours, confirmations)
}

/// Exactly one confirmation per party, ours unchanged, all equal to ours.
fn check_confirmations(
    parties: &[u16],
    me: u16,
    ours: &Confirmation,
    confirmations: &[Confirmation],
) -> Result<()> {
    let by_sender = common::one_per_party(
        confirmations,
        |c| c.from,
        parties,
        "one refresh confirmation from each party",
    )?;
    if by_sender.get(&me).copied() != Some(ours) {
        return Err(ProtocolError::Disagreement {
            reason: format!(
                "the refresh confirmation relayed as party {me}'s (ours) is not the one we sent"
            ),
        });
    }
    let other_transcript: Vec<u16> = by_sender
        .values()
        .filter(|c| c.transcript_hash != ours.transcript_hash)
        .map(|c| c.from)
        .collect();
    if !other_transcript.is_empty() {
        return Err(ProtocolError::Disagreement {
            reason: format!(
                "parties {other_transcript:?} saw a different refresh round-1 transcript than \
                 party {me} (the round-1 broadcast was not consistent)"
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
                "parties {other_key:?} derived a different refreshed public key package than \
                 party {me}"
            ),
        });
    }
    Ok(())
}

// Debug prints who and where, never a secret.

impl<C: Ciphersuite> std::fmt::Debug for RefreshRound1<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RefreshRound1")
            .field("params", &self.params)
            .field("me", &self.me)
            .field("secret", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl<C: Ciphersuite> std::fmt::Debug for RefreshRound2<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RefreshRound2")
            .field("params", &self.params)
            .field("me", &self.me)
            .field("transcript_hash", &hex::encode(self.transcript_hash))
            .field("secret", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl<C: Ciphersuite> std::fmt::Debug for RefreshRound3<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RefreshRound3")
            .field("params", &self.params)
            .field("me", &self.me)
            .field("transcript_hash", &hex::encode(self.transcript_hash))
            .field("key_package", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl<C: Ciphersuite> std::fmt::Debug for RefreshOutput<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RefreshOutput")
            .field("key_package", &"<redacted>")
            .field("public_key_package", &self.public_key_package)
            .field("transcript_hash", &hex::encode(self.transcript_hash))
            .finish()
    }
}
