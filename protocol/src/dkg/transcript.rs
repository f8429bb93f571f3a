//! What binds a DKG together: the transcript hash every party confirms, and the HPKE context
//! strings that tie each sealed round-2 package to its wallet, sender, recipient and transcript.
//!
//! Everything hashed is length-prefixed (u64, big-endian) or fixed-size, so two different
//! transcripts never encode to the same bytes.

use frost_core::Ciphersuite;
use frost_core::keys::PublicKeyPackage;
use sha2::{Digest, Sha256};

use crate::error::{ProtocolError, Result};
use crate::wire::{DkgParams, Round1Message, WalletId};

/// Domain tag of the transcript hash.
const TRANSCRIPT_TAG: &[u8] = b"cosigner dkg transcript v1";
/// Prefix of the HPKE `info` of round-2 packages.
const ROUND2_INFO_TAG: &[u8] = b"cosigner dkg round2 v1";
/// Domain tag of the HPKE AAD of round-2 packages.
const ROUND2_AAD_TAG: &[u8] = b"cosigner dkg round2 aad v1";

/// SHA-256 of the DKG transcript: the domain tag, the parameters (ciphersuite, wallet, threshold,
/// parties in ascending order) and every round-1 message in ascending order of sender (sender,
/// frost package, HPKE public key).
///
/// This is what the confirmation round compares: the FROST paper's KeyGen assumes a broadcast
/// channel for round 1 (frost issue 577; RFC 9591 Appendix C likewise makes participants abort
/// unless they share one view of the VSS commitment), and a relay could otherwise show each party a
/// different round 1.
pub fn transcript_hash(params: &DkgParams, round1: &[Round1Message]) -> [u8; 32] {
    hash_transcript(params, round1)
}

pub(crate) fn hash_transcript<'a>(
    params: &DkgParams,
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
    h.update((messages.len() as u64).to_be_bytes());
    for m in messages {
        h.update(m.from.to_be_bytes());
        put(&mut h, &m.package);
        put(&mut h, &m.hpke_public_key);
    }
    h.finalize().into()
}

/// HPKE `info` for round-2 packages: `"cosigner dkg round2 v1" || ciphersuite ID || wallet id`.
///
/// RFC 9180 §5.1: `info` enters the key schedule, so a package sealed for one ceremony context
/// (protocol, suite, wallet) does not open in another. The wallet id is fixed-size and last, so
/// the concatenation is unambiguous.
pub fn round2_info(params: &DkgParams) -> Vec<u8> {
    let mut info = Vec::with_capacity(ROUND2_INFO_TAG.len() + params.ciphersuite.len() + 16);
    info.extend_from_slice(ROUND2_INFO_TAG);
    info.extend_from_slice(params.ciphersuite.as_bytes());
    info.extend_from_slice(&params.wallet_id.0);
    info
}

/// HPKE AAD of the round-2 package from `from` to `to`: tag, wallet id, sender, recipient and the
/// transcript hash (RFC 9180 §5.2: authenticated, not encrypted). A relay that redirects a
/// package to another recipient, replays it into another wallet or ceremony, or shows the two
/// parties different round-1 messages, makes it fail to open.
pub fn round2_aad(wallet_id: &WalletId, from: u16, to: u16, transcript_hash: &[u8; 32]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(8 + ROUND2_AAD_TAG.len() + 16 + 4 + 32);
    aad.extend_from_slice(&(ROUND2_AAD_TAG.len() as u64).to_be_bytes());
    aad.extend_from_slice(ROUND2_AAD_TAG);
    aad.extend_from_slice(&wallet_id.0);
    aad.extend_from_slice(&from.to_be_bytes());
    aad.extend_from_slice(&to.to_be_bytes());
    aad.extend_from_slice(transcript_hash);
    aad
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

fn put(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u64).to_be_bytes());
    h.update(bytes);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;
    use serde_bytes::ByteBuf;

    fn params() -> DkgParams {
        DkgParams {
            wallet_id: WalletId([7; 16]),
            ciphersuite: crate::wire::SUITE_SECP256K1_TR.into(),
            min_signers: 2,
            parties: vec![1, 2, 3],
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
    fn transcript_is_order_independent_and_unambiguous() {
        let p = params();
        let a = [msg(1, b"ab", b"c"), msg(2, b"d", b"e")];
        let b = [msg(2, b"d", b"e"), msg(1, b"ab", b"c")];
        assert_eq!(transcript_hash(&p, &a), transcript_hash(&p, &b));
        // Moving a byte across a field boundary changes the hash.
        let shifted = [msg(1, b"a", b"bc"), msg(2, b"d", b"e")];
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
    fn aad_binds_direction() {
        let t = [1; 32];
        let w = WalletId([2; 16]);
        assert_ne!(round2_aad(&w, 2, 3, &t), round2_aad(&w, 3, 2, &t));
        assert_ne!(
            round2_aad(&w, 2, 3, &t),
            round2_aad(&WalletId([3; 16]), 2, 3, &t)
        );
        assert!(round2_info(&params()).starts_with(b"cosigner dkg round2 v1FROST-secp256k1"));
    }
}
