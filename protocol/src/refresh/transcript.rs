//! What binds a refresh together: its transcript hash and the HPKE context of its sealed round-2
//! packages. The same construction as the DKG's (`dkg::transcript`), under distinct domain tags
//! and with the epoch being refreshed in every hash and AAD: a DKG message, or a message of a
//! refresh of another epoch or wallet, never fits.
//!
//! Everything hashed is length-prefixed (u64, big-endian) or fixed-size, so two different
//! transcripts never encode to the same bytes.

use sha2::{Digest, Sha256};

use crate::wire::{RefreshParams, Round1Message, WalletId};

/// Domain tag of the refresh transcript hash.
const TRANSCRIPT_TAG: &[u8] = b"cosigner refresh transcript v1";
/// Prefix of the HPKE `info` of refresh round-2 packages.
const ROUND2_INFO_TAG: &[u8] = b"cosigner refresh round2 v1";
/// Domain tag of the HPKE AAD of refresh round-2 packages.
const ROUND2_AAD_TAG: &[u8] = b"cosigner refresh round2 aad v1";

/// SHA-256 of the refresh transcript: the domain tag, the parameters (ciphersuite, wallet,
/// threshold, parties in ascending order, the epoch being refreshed) and every round-1 message in
/// ascending order of sender (sender, frost package, HPKE public key).
///
/// The confirmation round compares it, for the same reason as the DKG's: round 1 assumes a
/// broadcast channel that our relaying coordinator does not provide.
pub fn transcript_hash(params: &RefreshParams, round1: &[Round1Message]) -> [u8; 32] {
    hash_transcript(params, round1)
}

pub(crate) fn hash_transcript<'a>(
    params: &RefreshParams,
    round1: impl IntoIterator<Item = &'a Round1Message>,
) -> [u8; 32] {
    let mut parties = params.parties.clone();
    parties.sort_unstable();
    let mut messages: Vec<&Round1Message> = round1.into_iter().collect();
    messages.sort_by_key(|m| m.from);

    let mut h = Sha256::new();
    put(&mut h, TRANSCRIPT_TAG);
    put(&mut h, params.ciphersuite.as_bytes());
    put(&mut h, &params.wallet_id.0);
    h.update(params.min_signers.to_be_bytes());
    let encoded_parties: Vec<u8> = parties.iter().flat_map(|p| p.to_be_bytes()).collect();
    put(&mut h, &encoded_parties);
    h.update(params.from_epoch.to_be_bytes());
    h.update((messages.len() as u64).to_be_bytes());
    for m in messages {
        h.update(m.from.to_be_bytes());
        put(&mut h, &m.package);
        put(&mut h, &m.hpke_public_key);
    }
    h.finalize().into()
}

/// HPKE `info` of refresh round-2 packages:
/// `"cosigner refresh round2 v1" || ciphersuite ID || wallet id || from_epoch (u64 BE)`.
///
/// RFC 9180 §5.1: `info` enters the key schedule. The wallet id and the epoch are fixed-size and
/// last, so the concatenation is unambiguous.
pub fn round2_info(params: &RefreshParams) -> Vec<u8> {
    let mut info = Vec::with_capacity(ROUND2_INFO_TAG.len() + params.ciphersuite.len() + 16 + 8);
    info.extend_from_slice(ROUND2_INFO_TAG);
    info.extend_from_slice(params.ciphersuite.as_bytes());
    info.extend_from_slice(&params.wallet_id.0);
    info.extend_from_slice(&params.from_epoch.to_be_bytes());
    info
}

/// HPKE AAD of the refresh round-2 package from `from` to `to`: tag, wallet id, the epoch being
/// refreshed, sender, recipient and the transcript hash. A package redirected to another
/// recipient, replayed from another wallet, epoch or ceremony (a DKG included), or sealed by a
/// party that saw another round 1, fails to open.
pub fn round2_aad(
    wallet_id: &WalletId,
    from_epoch: u64,
    from: u16,
    to: u16,
    transcript_hash: &[u8; 32],
) -> Vec<u8> {
    let mut aad = Vec::with_capacity(8 + ROUND2_AAD_TAG.len() + 16 + 8 + 4 + 32);
    aad.extend_from_slice(&(ROUND2_AAD_TAG.len() as u64).to_be_bytes());
    aad.extend_from_slice(ROUND2_AAD_TAG);
    aad.extend_from_slice(&wallet_id.0);
    aad.extend_from_slice(&from_epoch.to_be_bytes());
    aad.extend_from_slice(&from.to_be_bytes());
    aad.extend_from_slice(&to.to_be_bytes());
    aad.extend_from_slice(transcript_hash);
    aad
}

fn put(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u64).to_be_bytes());
    h.update(bytes);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;
    use crate::wire::DkgParams;
    use serde_bytes::ByteBuf;

    fn params() -> RefreshParams {
        RefreshParams {
            wallet_id: WalletId([7; 16]),
            ciphersuite: crate::wire::SUITE_SECP256K1_TR.into(),
            min_signers: 2,
            parties: vec![1, 2, 3],
            from_epoch: 4,
        }
    }

    fn msg(from: u16, package: &[u8], key: &[u8]) -> Round1Message {
        Round1Message {
            from,
            package: ByteBuf::from(package.to_vec()),
            hpke_public_key: ByteBuf::from(key.to_vec()),
        }
    }

    #[test]
    fn transcript_binds_the_epoch_and_differs_from_the_dkg() {
        let p = params();
        let a = [msg(1, b"ab", b"c"), msg(2, b"d", b"e")];
        let b = [msg(2, b"d", b"e"), msg(1, b"ab", b"c")];
        assert_eq!(transcript_hash(&p, &a), transcript_hash(&p, &b));
        let mut next = p.clone();
        next.from_epoch = 5;
        assert_ne!(transcript_hash(&p, &a), transcript_hash(&next, &a));
        let dkg = DkgParams {
            wallet_id: p.wallet_id,
            ciphersuite: p.ciphersuite.clone(),
            min_signers: p.min_signers,
            parties: p.parties.clone(),
        };
        assert_ne!(
            transcript_hash(&p, &a),
            crate::dkg::transcript_hash(&dkg, &a)
        );
        assert_ne!(round2_info(&p), crate::dkg::round2_info(&dkg));
    }

    #[test]
    fn aad_binds_direction_epoch_and_protocol() {
        let t = [1; 32];
        let w = WalletId([2; 16]);
        assert_ne!(round2_aad(&w, 0, 2, 3, &t), round2_aad(&w, 0, 3, 2, &t));
        assert_ne!(round2_aad(&w, 0, 2, 3, &t), round2_aad(&w, 1, 2, 3, &t));
        assert_ne!(
            round2_aad(&w, 0, 2, 3, &t),
            crate::dkg::round2_aad(&w, 2, 3, &t)
        );
    }
}
