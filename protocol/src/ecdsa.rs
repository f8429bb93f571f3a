//! Threshold ECDSA over secp256k1 (Ethereum accounts): DKLs23 ([eprint 2023/765], its DKG from
//! [eprint 2023/602] Protocol 9.1) through the `dkls23` crate, in IO-free state machines shaped like
//! the FROST ones ([`crate::keygen`]): [`dkg`] makes a key no party ever holds, [`sign`] makes an
//! ordinary ECDSA signature with a recovery id, two parties at a time.
//!
//! What this module adds to `dkls23`, as [`crate::keygen`] does to frost:
//!
//! * **Confidential point-to-point messages.** DKLs23 assumes private channels between parties;
//!   ours run through a relay (the client coordinates the cosigners). Every message addressed to
//!   one party is sealed to it with HPKE ([`crate::hpke`], RFC 9180) under a key it broadcast first,
//!   bound by the AAD to the wallet, the round, sender, recipient and the transcript so far.
//! * **Broadcast.** The transcript (parameters, HPKE keys, every broadcast part) is hashed by every
//!   party; a confirmation round compares transcripts and public keys, so no party activates a key
//!   another one did not get.
//! * **Typed ids and errors.** Parties are [`PartyId`]s (DKLs23's indices are the same numbers);
//!   `dkls23`'s aborts become [`ProtocolError`]s naming the culprit where one is known.
//!
//! [eprint 2023/765]: https://eprint.iacr.org/2023/765
//! [eprint 2023/602]: https://eprint.iacr.org/2023/602

/// The threshold ECDSA DKG.
pub mod dkg;
mod engine;
pub mod repair;
/// Threshold ECDSA signing.
pub mod sign;
#[cfg(test)]
pub(crate) mod tests;

use std::collections::BTreeMap;
use std::fmt;

use dkls23::protocols::{Abort, AbortKind, PartyIndex};
use dkls23::secp256k1::Party;
use serde::{Serialize, de::DeserializeOwned};
use serde_bytes::ByteBuf;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::error::{ProtocolError, Result};
use crate::id::PartyId;
use crate::wire::WalletId;

/// One party's threshold ECDSA key share: its Shamir point, the pairwise multiplication (OT)
/// setups and zero-sharing seeds DKLs23 signs with. Secret: zeroized on drop (by `dkls23`'s `Party`),
/// never in `Debug`.
pub struct EcdsaKey {
    party: Party,
}

impl fmt::Debug for EcdsaKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EcdsaKey")
            .field("party", &self.party.party_index.as_u8())
            .field("threshold", &self.party.parameters.threshold)
            .field("share_count", &self.party.parameters.share_count)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl EcdsaKey {
    /// Whose share this is.
    pub fn party(&self) -> PartyId {
        // dkls23 indices are 1..=255 and every one is a party number; the fallback is unreachable.
        PartyId::new(u16::from(self.party.party_index.as_u8())).unwrap_or(PartyId::DEVICE)
    }

    /// The group's public key, SEC1 uncompressed (65 bytes).
    pub fn public_key(&self) -> Vec<u8> {
        uncompressed(&self.party.pk)
    }

    /// This party's public share (its Shamir point times the generator), SEC1 uncompressed: what
    /// the wallet's [`EcdsaPublic::public_shares`] lists for it.
    pub fn public_share(&self) -> Vec<u8> {
        let point = k256::ProjectivePoint::GENERATOR * self.party.poly_point;
        uncompressed(&point.to_affine())
    }

    /// The threshold.
    pub fn threshold(&self) -> u16 {
        u16::from(self.party.parameters.threshold)
    }

    /// Serialized for sealing at rest; the buffer zeroizes on drop.
    pub fn to_secret_bytes(&self) -> Result<Zeroizing<Vec<u8>>> {
        encode_part(&self.party).map(Zeroizing::new)
    }

    /// Reads what [`Self::to_secret_bytes`] wrote.
    pub fn from_secret_bytes(bytes: &[u8]) -> Result<Self> {
        let party: Party = decode_part(bytes)?;
        Ok(Self { party })
    }
}

/// The public side of a threshold ECDSA wallet: the group key and every party's public share
/// (SEC1 uncompressed), as a cosigner keeps it in the wallet's state and reports it
/// (`WalletInfo::public_key_package` of a wallet of `wire::SUITE_SECP256K1_ECDSA`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EcdsaPublic {
    /// The group key: the account's public key.
    pub public_key: ByteBuf,
    /// Each party's public share.
    pub public_shares: BTreeMap<PartyId, ByteBuf>,
}

impl EcdsaPublic {
    /// What a DKG made public.
    pub fn of(output: &dkg::EcdsaDkgOutput) -> Self {
        Self {
            public_key: ByteBuf::from(output.public_key.clone()),
            public_shares: output
                .public_shares
                .iter()
                .map(|(p, s)| (*p, ByteBuf::from(s.clone())))
                .collect(),
        }
    }

    /// Encoded (postcard).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        encode_part(self)
    }

    /// Decoded, checking the group key is a 65-byte uncompressed point on the curve.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let public: Self = decode_part(bytes)?;
        use k256::elliptic_curve::sec1::FromSec1Point;
        let point = k256::Sec1Point::from_bytes(&public.public_key)
            .ok()
            .filter(|p| !p.is_compressed() && !p.is_identity());
        let on_curve =
            point.is_some_and(|p| bool::from(k256::AffinePoint::from_sec1_point(&p).is_some()));
        if !on_curve {
            return Err(ProtocolError::encoding(
                "threshold ECDSA public key is not an uncompressed point",
            ));
        }
        Ok(public)
    }

    /// Whether `key` is a share of this wallet's key.
    pub fn holds(&self, key: &EcdsaKey) -> bool {
        key.public_key() == self.public_key.as_slice()
    }

    /// Whether `key` is `party`'s share of this wallet at the epoch this public side is of: the
    /// wallet's key, and the public share listed for `party`.
    pub fn is_share_of(&self, party: PartyId, key: &EcdsaKey) -> bool {
        self.holds(key)
            && self.public_shares.get(&party).map(|s| s.as_slice())
                == Some(key.public_share().as_slice())
    }
}

/// A SEC1 point on secp256k1 (not the identity).
fn point(bytes: &[u8]) -> Result<k256::AffinePoint> {
    use k256::elliptic_curve::sec1::FromSec1Point;
    let encoded = k256::Sec1Point::from_bytes(bytes)
        .map_err(|_| ProtocolError::encoding("not a SEC1 point"))?;
    Option::from(k256::AffinePoint::from_sec1_point(&encoded))
        .filter(|p: &k256::AffinePoint| *p != k256::AffinePoint::IDENTITY)
        .ok_or_else(|| ProtocolError::encoding("not a point of secp256k1"))
}

/// SEC1 uncompressed encoding of a point.
fn uncompressed(point: &k256::AffinePoint) -> Vec<u8> {
    use k256::elliptic_curve::sec1::ToSec1Point;
    point.to_sec1_point(false).as_bytes().to_vec()
}

/// DKLs23's index of `party` (the same number; DKLs23 indices are 1..=255).
fn index_of(party: PartyId) -> Result<PartyIndex> {
    u8::try_from(party.get())
        .ok()
        .and_then(|n| PartyIndex::new(n).ok())
        .ok_or_else(|| ProtocolError::Params {
            reason: format!("party {party} is beyond the 255 parties threshold ECDSA allows"),
        })
}

/// The party DKLs23 numbers `index`.
fn party_of(index: PartyIndex) -> Result<PartyId> {
    PartyId::new(u16::from(index.as_u8()))
}

/// A `dkls23` abort as our error: [`ProtocolError::Excluded`] where `dkls23` says the
/// counterparty must be banned (continuing to sign with it would let it extract our key), a
/// culprit when it names one other than us.
fn from_abort(me: PartyId, abort: &Abort) -> ProtocolError {
    let reason = abort.description();
    if let AbortKind::BanCounterparty(index) = abort.kind {
        let party = party_of(index).unwrap_or(me);
        return ProtocolError::Excluded { party, reason };
    }
    match party_of(abort.index) {
        Ok(party) if party != me => ProtocolError::culprit(party, reason),
        _ => ProtocolError::Params { reason },
    }
}

/// One `dkls23` part in postcard, the encoding `dkls23` gives its own messages.
fn encode_part<T: Serialize>(part: &T) -> Result<Vec<u8>> {
    postcard::to_allocvec(part).map_err(ProtocolError::encoding)
}

/// One `dkls23` part from postcard, with nothing trailing it.
fn decode_part<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    let (part, rest) = postcard::take_from_bytes(bytes).map_err(ProtocolError::encoding)?;
    if !rest.is_empty() {
        return Err(ProtocolError::encoding(
            "trailing bytes after a threshold ECDSA message",
        ));
    }
    Ok(part)
}

/// SHA-256 over length-prefixed parts, under a domain tag.
pub(crate) fn tagged(tag: &str, parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in std::iter::once(tag.as_bytes()).chain(parts.iter().copied()) {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    h.finalize().into()
}

/// The DKLs23 session id every party of a ceremony on `wallet_id` derives alike.
fn session_id(tag: &str, wallet_id: &WalletId, threshold: u16, parties: &[PartyId]) -> Vec<u8> {
    let numbers: Vec<u8> = parties.iter().flat_map(|p| p.get().to_be_bytes()).collect();
    tagged(
        tag,
        &[wallet_id.as_slice(), &threshold.to_be_bytes(), &numbers],
    )
    .to_vec()
}
