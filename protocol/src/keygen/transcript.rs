//! What binds a DKG or a refresh together: the transcript hash every party confirms, and the HPKE
//! context strings that tie each sealed round-2 package to its wallet, epoch, sender, recipient
//! and transcript. One construction for both ceremonies; each has its own domain tags
//! ([`Tags`]) and a refresh also binds the epoch it refreshes, so a message of one ceremony, or of
//! a refresh of another epoch or wallet, never fits another.
//!
//! Everything hashed is length-prefixed (u64, big-endian) or fixed-size, so two different
//! transcripts never encode to the same bytes.

use frost_core::Ciphersuite;
use frost_core::keys::PublicKeyPackage;
use sha2::{Digest, Sha256};

use super::KeygenParams;
use crate::error::{ProtocolError, Result};
use crate::id::Epoch;
use crate::id::PartyId;
use crate::wire::{Round1Message, WalletId};

/// The domain tags of one ceremony kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tags {
    /// Domain tag of the transcript hash.
    pub transcript: &'static [u8],
    /// Prefix of the HPKE `info` of round-2 packages.
    pub round2_info: &'static [u8],
    /// Domain tag of the HPKE AAD of round-2 packages.
    pub round2_aad: &'static [u8],
}

/// SHA-256 of the transcript: the domain tag, the parameters (ciphersuite, wallet, threshold,
/// parties in ascending order, then the epoch being refreshed for a refresh) and every round-1
/// message in ascending order of sender (sender, frost package, HPKE public key).
///
/// This is what the confirmation round compares: the FROST paper's KeyGen assumes a broadcast
/// channel for round 1 (frost issue 577; RFC 9591 Appendix C likewise makes participants abort
/// unless they share one view of the VSS commitment), and a relay could otherwise show each party a
/// different round 1.
pub fn transcript_hash<'a, P: KeygenParams>(
    params: &P,
    round1: impl IntoIterator<Item = &'a Round1Message>,
) -> [u8; 32] {
    let mut parties = params.parties().to_vec();
    parties.sort_unstable();
    let mut messages: Vec<&Round1Message> = round1.into_iter().collect();
    messages.sort_by_key(|m| m.from);

    let mut h = Sha256::new();
    put(&mut h, P::TAGS.transcript);
    put(&mut h, params.ciphersuite().as_bytes());
    put(&mut h, &params.wallet_id().0);
    h.update(params.min_signers().to_be_bytes());
    let encoded_parties: Vec<u8> = parties.iter().flat_map(|p| p.to_be_bytes()).collect();
    put(&mut h, &encoded_parties);
    if let Some(epoch) = params.epoch() {
        h.update(epoch.to_be_bytes());
    }
    h.update((messages.len() as u64).to_be_bytes());
    for m in messages {
        h.update(m.from.to_be_bytes());
        put(&mut h, &m.package);
        put(&mut h, &m.hpke_public_key);
    }
    h.finalize().into()
}

/// HPKE `info` for round-2 packages: tag || ciphersuite ID || wallet id (|| epoch, u64 BE, for a
/// refresh).
///
/// RFC 9180 §5.1: `info` enters the key schedule, so a package sealed for one ceremony context
/// (protocol, suite, wallet, epoch) does not open in another. The wallet id and the epoch are
/// fixed-size and last, so the concatenation is unambiguous.
pub fn round2_info<P: KeygenParams>(params: &P) -> Vec<u8> {
    hpke_info(
        P::TAGS.round2_info,
        params.ciphersuite(),
        params.wallet_id(),
        params.epoch(),
    )
}

/// HPKE AAD of the round-2 package from `from` to `to`: tag, wallet id, (the epoch being
/// refreshed,) sender, recipient and the transcript hash (RFC 9180 §5.2: authenticated, not
/// encrypted). A relay that redirects a package to another recipient, replays it into another
/// wallet, epoch or ceremony, or shows the two parties different round-1 messages, makes it fail
/// to open.
pub fn round2_aad(
    tags: &Tags,
    wallet_id: &WalletId,
    epoch: Option<Epoch>,
    from: PartyId,
    to: PartyId,
    transcript_hash: &[u8; 32],
) -> Vec<u8> {
    let (from, to) = (from.to_be_bytes(), to.to_be_bytes());
    hpke_aad(
        tags.round2_aad,
        wallet_id,
        epoch,
        &[&from, &to, transcript_hash],
    )
}

/// SHA-256 of frost's serialization of a `PublicKeyPackage`.
pub fn public_key_package_hash<C: Ciphersuite>(
    public_key_package: &PublicKeyPackage<C>,
) -> Result<[u8; 32]> {
    let bytes = public_key_package
        .serialize()
        .map_err(|e| ProtocolError::Frost {
            reason: format!("serializing the public key package: {e}"),
        })?;
    Ok(Sha256::digest(&bytes).into())
}

/// The HPKE `info` of every sealed package of our ceremonies (DKG, refresh, repair): `tag ||
/// ciphersuite ID || wallet id (|| epoch, u64 BE)`. RFC 9180 §5.1: `info` enters the key schedule.
/// The tag is a constant per ceremony; the wallet id and the epoch are fixed-size and last, so
/// the concatenation is unambiguous.
pub(crate) fn hpke_info(
    tag: &[u8],
    suite: &str,
    wallet_id: &WalletId,
    epoch: Option<Epoch>,
) -> Vec<u8> {
    let mut info = Vec::with_capacity(tag.len() + suite.len() + 16 + 8);
    info.extend_from_slice(tag);
    info.extend_from_slice(suite.as_bytes());
    info.extend_from_slice(&wallet_id.0);
    if let Some(epoch) = epoch {
        info.extend_from_slice(&epoch.to_be_bytes());
    }
    info
}

/// The HPKE AAD of every sealed package of our ceremonies: the length-prefixed tag, the wallet id,
/// (the epoch,) then fixed-size `fields` (parties, a transcript or context hash) in order
/// (RFC 9180 §5.2: authenticated, not encrypted).
pub(crate) fn hpke_aad(
    tag: &[u8],
    wallet_id: &WalletId,
    epoch: Option<Epoch>,
    fields: &[&[u8]],
) -> Vec<u8> {
    let mut aad = Vec::with_capacity(8 + tag.len() + 16 + 8 + 40);
    push(&mut aad, tag);
    aad.extend_from_slice(&wallet_id.0);
    if let Some(epoch) = epoch {
        aad.extend_from_slice(&epoch.to_be_bytes());
    }
    for field in fields {
        aad.extend_from_slice(field);
    }
    aad
}

/// Hashes `bytes` length-prefixed (u64, big-endian).
pub(crate) fn put(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u64).to_be_bytes());
    h.update(bytes);
}

/// Appends `bytes` length-prefixed (u64, big-endian).
pub(crate) fn push(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
    out.extend_from_slice(bytes);
}
