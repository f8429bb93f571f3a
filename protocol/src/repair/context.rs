//! What binds a repair together: the context hash of (parameters, helper keys), the HPKE context
//! of sealed deltas and sigmas, and the messages a helper signs with its share (its helper key,
//! its sealed deltas).
//!
//! Everything hashed or signed is length-prefixed (u64, big-endian) or fixed-size.

use frost_core::keys::{KeyPackage, PublicKeyPackage};
use frost_core::{Ciphersuite, Field, Group, Signature, SigningKey, VerifyingKey};
use rand_core::{CryptoRng, RngCore};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::dkg::common;
use crate::error::{ProtocolError, Result};
use crate::hpke;
use crate::id::PartyId;
use crate::keygen::transcript::{hpke_aad, hpke_info, push, put};
use crate::wire::RepairParams;

const CONTEXT_TAG: &[u8] = b"cosigner repair context v1";
const INFO_TAG: &[u8] = b"cosigner repair v1";
const DELTA_AAD_TAG: &[u8] = b"cosigner repair delta aad v1";
const SIGMA_AAD_TAG: &[u8] = b"cosigner repair sigma aad v1";
const HELPER_KEY_TAG: &[u8] = b"cosigner repair helper key v1";
const DELTA_SIGNATURE_TAG: &[u8] = b"cosigner repair delta signature v1";

/// Which repair value a sealed package carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Helper to helper (`repair_share_part1` output).
    Delta,
    /// Helper to participant (`repair_share_part2` output).
    Sigma,
}

/// SHA-256 of the repair's context: parameters (helpers sorted) and every helper's key, by
/// helper. Bound into every AAD, so parties that were shown different helper keys (or different
/// parameters) cannot open each other's packages.
pub(crate) fn context_hash(
    params: &RepairParams,
    helper_keys: &std::collections::BTreeMap<PartyId, Vec<u8>>,
) -> [u8; 32] {
    let mut h = Sha256::new();
    put(&mut h, CONTEXT_TAG);
    put_params(&mut h, params);
    h.update((helper_keys.len() as u64).to_be_bytes());
    for (helper, key) in helper_keys {
        h.update(helper.to_be_bytes());
        put(&mut h, key);
    }
    h.finalize().into()
}

/// HPKE `info`: `"cosigner repair v1" || ciphersuite ID || wallet id || epoch (u64 BE)`.
pub(crate) fn info(params: &RepairParams) -> Vec<u8> {
    hpke_info(
        INFO_TAG,
        &params.ciphersuite,
        &params.wallet_id,
        Some(params.epoch),
    )
}

/// HPKE AAD of a delta or sigma from `from` to `to`: tag (per kind), wallet, epoch, participant,
/// sender, recipient, context hash.
pub(crate) fn aad(
    params: &RepairParams,
    kind: Kind,
    from: PartyId,
    to: PartyId,
    context: &[u8; 32],
) -> Vec<u8> {
    let tag = match kind {
        Kind::Delta => DELTA_AAD_TAG,
        Kind::Sigma => SIGMA_AAD_TAG,
    };
    let (participant, from, to) = (
        params.participant.to_be_bytes(),
        from.to_be_bytes(),
        to.to_be_bytes(),
    );
    hpke_aad(
        tag,
        &params.wallet_id,
        Some(params.epoch),
        &[&participant, &from, &to, context],
    )
}

/// What helper `helper` signs with its share to vouch for its HPKE key in this repair.
pub(crate) fn helper_key_message(
    params: &RepairParams,
    helper: PartyId,
    hpke_public_key: &[u8],
) -> Vec<u8> {
    let mut h = Vec::new();
    push(&mut h, HELPER_KEY_TAG);
    push_params(&mut h, params);
    h.extend_from_slice(&helper.to_be_bytes());
    push(&mut h, hpke_public_key);
    h
}

/// What a helper signs with its share over a sealed delta: the AAD (which names sender,
/// recipient and context), `enc` and the HPKE ciphertext.
pub(crate) fn delta_message(aad: &[u8], enc: &[u8], ciphertext: &[u8]) -> Vec<u8> {
    let mut m = Vec::new();
    push(&mut m, DELTA_SIGNATURE_TAG);
    push(&mut m, aad);
    push(&mut m, enc);
    push(&mut m, ciphertext);
    m
}

/// A Schnorr signature (the suite's single-key signature) by our signing share over `message`.
///
/// A helper proves with it that it holds the share behind its verifying share in the public key
/// package; nobody else (the coordinator included) can produce it.
pub(crate) fn sign_with_share<C: Ciphersuite>(
    key_package: &KeyPackage<C>,
    message: &[u8],
    rng: &mut (impl CryptoRng + RngCore),
) -> Result<Vec<u8>> {
    let bytes = Zeroizing::new(key_package.signing_share().serialize());
    let key = SigningKey::<C>::deserialize(&bytes).map_err(|e| ProtocolError::Frost {
        reason: format!("our signing share is not a signing key: {e}"),
    })?;
    key.sign(&mut *rng, message)
        .serialize()
        .map_err(|e| ProtocolError::Frost {
            reason: format!("serializing our signature: {e}"),
        })
}

/// Checks `signature` over `message` by the share of `party` listed in `public_key_package`.
pub(crate) fn verify_by_share<C: Ciphersuite>(
    public_key_package: &PublicKeyPackage<C>,
    party: PartyId,
    message: &[u8],
    signature: &[u8],
) -> std::result::Result<(), String> {
    let id = party.identifier::<C>().map_err(|e| e.to_string())?;
    let share = public_key_package
        .verifying_shares()
        .get(&id)
        .ok_or_else(|| format!("party {party} is not in the public key package"))?;
    let key = share
        .serialize()
        .and_then(|bytes| VerifyingKey::<C>::deserialize(&bytes))
        .map_err(|e| format!("its verifying share is not a key: {e}"))?;
    let signature = common::decode_canonical(
        signature,
        Signature::<C>::deserialize,
        Signature::<C>::serialize,
    )
    .map_err(|e| format!("its signature {e}"))?;
    key.verify(message, &signature)
        .map_err(|_| "its signature does not verify against its verifying share".into())
}

/// Length of a serialized scalar of the suite (delta and sigma plaintexts).
pub(crate) fn scalar_len<C: Ciphersuite>() -> usize {
    let zero = <<C::Group as Group>::Field as Field>::zero();
    <<C::Group as Group>::Field as Field>::serialize(&zero)
        .as_ref()
        .len()
}

/// Length of the HPKE ciphertext of a delta or sigma.
pub(crate) fn sealed_scalar_len<C: Ciphersuite>() -> usize {
    scalar_len::<C>() + hpke::TAG_LEN
}

fn put_params(h: &mut Sha256, params: &RepairParams) {
    let mut bytes = Vec::new();
    push_params(&mut bytes, params);
    h.update(bytes);
}

fn push_params(out: &mut Vec<u8>, params: &RepairParams) {
    let mut helpers = params.helpers.clone();
    helpers.sort_unstable();
    push(out, params.ciphersuite.as_bytes());
    out.extend_from_slice(&params.wallet_id.0);
    out.extend_from_slice(&params.epoch.to_be_bytes());
    out.extend_from_slice(&params.participant.to_be_bytes());
    let encoded: Vec<u8> = helpers.iter().flat_map(|p| p.to_be_bytes()).collect();
    push(out, &encoded);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use crate::id::pid;
    use std::collections::BTreeMap;

    use super::*;
    use crate::id::Epoch;

    fn params() -> RepairParams {
        crate::repair::test_params(7, 3)
    }

    #[test]
    fn context_binds_params_and_keys() {
        let p = params();
        let keys = BTreeMap::from([(pid(2), vec![1; 32]), (pid(3), vec![2; 32])]);
        let base = context_hash(&p, &keys);
        let mut sorted = p.clone();
        sorted.helpers = vec![pid(2), pid(3)];
        assert_eq!(base, context_hash(&sorted, &keys));
        let mut other_epoch = p.clone();
        other_epoch.epoch = Epoch(4);
        assert_ne!(base, context_hash(&other_epoch, &keys));
        let mut other_participant = p.clone();
        other_participant.participant = pid(4);
        assert_ne!(base, context_hash(&other_participant, &keys));
        let swapped = BTreeMap::from([(pid(2), vec![2; 32]), (pid(3), vec![1; 32])]);
        assert_ne!(base, context_hash(&p, &swapped));
    }

    #[test]
    fn aad_separates_kinds_and_directions() {
        let p = params();
        let c = [9; 32];
        assert_ne!(
            aad(&p, Kind::Delta, pid(2), pid(3), &c),
            aad(&p, Kind::Sigma, pid(2), pid(3), &c)
        );
        assert_ne!(
            aad(&p, Kind::Delta, pid(2), pid(3), &c),
            aad(&p, Kind::Delta, pid(3), pid(2), &c)
        );
        assert_ne!(
            helper_key_message(&p, pid(2), &[1; 32]),
            helper_key_message(&p, pid(3), &[1; 32])
        );
    }
}
