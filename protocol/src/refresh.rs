//! Proactive refresh: every party re-randomizes its share, the group key and the threshold stay.
//!
//! The DKG-style refresh of frost (`keys::refresh::refresh_dkg_*`): each party deals a random
//! polynomial with a zero constant term, and adds the shares it receives to its old share. The
//! sum of zero-polynomials is zero at 0, so the group key does not change; the shares do, and a
//! share of the old epoch no longer combines with one of the new epoch. The rounds are
//! [`crate::keygen`]'s, exactly as for the DKG:
//!
//! * **Confidential round 2**: each share is sealed with HPKE to its recipient's round-1 key, the
//!   AAD binding wallet, the epoch being refreshed, sender, recipient and the round-1 transcript.
//! * **Confirmation round**: every party compares transcript and new public key package; a
//!   [`RefreshOutput`] exists only once every party confirmed the same ones.
//! * **Domain separation**: the transcript, `info` and AAD use the refresh's own tags
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

use frost_core::Ciphersuite;
use frost_core::keys::{KeyPackage, PublicKeyPackage};
use rand_core::{CryptoRng, RngCore};

use crate::dkg::common;
use crate::error::{ProtocolError, Result};
use crate::id::Epoch;
use crate::id::PartyId;
pub use crate::keygen::{round2_info, seal_package, transcript_hash};

use crate::keygen::{self, KeygenParams, vss};
use crate::wire::{Confirmation, RefreshParams, Round1Message, SealedPackage, WalletId};

/// Round 1 done: our broadcast is out, we wait for everyone's.
pub type RefreshRound1<C> = keygen::Round1<C, RefreshParams>;
/// Round 2 done: our sealed packages are out, we wait for the ones sealed to us.
pub type RefreshRound2<C> = keygen::Round2<C, RefreshParams>;
/// Round 3 done: we hold the new share, not usable until every party confirmed the same result.
pub type RefreshRound3<C> = keygen::Round3<C, RefreshParams>;
/// The result of a refresh every party confirmed: our share of epoch `from_epoch + 1`, same
/// identifier, group key and threshold as before.
pub type RefreshOutput<C> = keygen::Output<C>;

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
    me: PartyId,
    old_key_package: &KeyPackage<C>,
    old_public_key_package: &PublicKeyPackage<C>,
) -> Result<()> {
    let params = keygen::validate_params::<C, _>(params, me)?;
    let bad = |reason: String| ProtocolError::Params { reason };
    let id = me.identifier::<C>()?;
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
        if !shares.contains_key(&party.identifier::<C>()?) {
            return Err(bad(format!("party {party} is not a member of this wallet")));
        }
    }
    if shares.len() != params.parties.len() {
        // Some member is not in the refresh: name it (party numbers are small; this search only
        // runs on the error path).
        let missing = PartyId::range(1, u16::MAX).find(|p| {
            !params.parties.contains(p)
                && p.identifier::<C>().is_ok_and(|id| shares.contains_key(&id))
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

/// Starts a refresh as party `me` ([`keygen::start`]): frost's `refresh_dkg_part1` (a random
/// polynomial with a zero constant term) and a fresh HPKE key pair.
pub fn start<C: Ciphersuite>(
    params: &RefreshParams,
    me: PartyId,
    rng: &mut (impl CryptoRng + RngCore),
) -> Result<(RefreshRound1<C>, Round1Message)> {
    keygen::start(params, me, rng)
}

/// HPKE AAD of the refresh round-2 package from `from` to `to` ([`keygen::round2_aad`], binding
/// the epoch being refreshed).
pub fn round2_aad(
    wallet_id: &WalletId,
    from_epoch: Epoch,
    from: PartyId,
    to: PartyId,
    transcript_hash: &[u8; 32],
) -> Vec<u8> {
    keygen::round2_aad(
        &RefreshParams::TAGS,
        wallet_id,
        Some(from_epoch),
        from,
        to,
        transcript_hash,
    )
}

impl<C: Ciphersuite> RefreshRound2<C> {
    /// Takes the packages sealed to us, one from each other party, opens them, checks each share
    /// against its sender's commitment (naming a bad sender, which frost does not), adds them to
    /// our old share (frost `refresh_dkg_shares`) and returns the confirmation to send to every
    /// party. The old share and public key package are checked first ([`check_old_shares`]).
    ///
    /// Errors: as the DKG's round 2; a result that changed the group key, the party set or the
    /// threshold ([`ProtocolError::Disagreement`]).
    pub fn handle_round2(
        self,
        packages: &[SealedPackage],
        old_key_package: &KeyPackage<C>,
        old_public_key_package: &PublicKeyPackage<C>,
    ) -> Result<(RefreshRound3<C>, Confirmation)> {
        let me = self.me();
        check_old_shares(self.params(), me, old_key_package, old_public_key_package)?;
        let id = me.identifier::<C>()?;
        let opened = self.open(packages, |_, round1, round2| {
            vss::check_refresh_share(round2.signing_share(), round1.commitment(), id)
        })?;
        let (key_package, public_key_package) = frost_core::keys::refresh::refresh_dkg_shares(
            &opened.secret,
            &opened.round1_packages,
            &opened.round2_packages,
            old_public_key_package.clone(),
            old_key_package.clone(),
        )
        .map_err(|e| common::frost_error(e, &opened.params.parties, "refresh round 3"))?;
        check_unchanged(
            &opened.params,
            &key_package,
            &public_key_package,
            old_public_key_package,
        )?;
        opened.confirm(key_package, public_key_package)
    }
}

/// A refresh changes shares only: the group key, the party set and the threshold stay.
fn check_unchanged<C: Ciphersuite>(
    params: &RefreshParams,
    key_package: &KeyPackage<C>,
    public_key_package: &PublicKeyPackage<C>,
    old_public_key_package: &PublicKeyPackage<C>,
) -> Result<()> {
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
    Ok(())
}

/// Checks every party's confirmations against `ours`, as [`RefreshRound3::handle_confirmations`]
/// does, for a commit made from a stored prepared refresh (after a restart, or rolled forward
/// from another session) rather than from the in-memory round-3 state.
///
/// Errors: as [`RefreshRound3::handle_confirmations`].
pub fn check_commit(
    parties: &[PartyId],
    me: PartyId,
    ours: &Confirmation,
    confirmations: &[Confirmation],
) -> Result<()> {
    keygen::check_confirmations::<RefreshParams>(parties, me, ours, confirmations)
}
