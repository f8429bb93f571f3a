//! Helpers shared by the DKG and signing ceremonies: party numbers and FROST identifiers, message
//! sets with exactly one message per party, strict decoding of FROST's compact encoding, and the
//! mapping of FROST's errors (with their culprits) to [`ProtocolError`].

use std::collections::BTreeMap;

use frost_core::{Ciphersuite, Identifier};
use zeroize::Zeroizing;

use crate::error::{ProtocolError, Result};

/// Most parties a ceremony accepts. FROST itself allows up to 65535; a wallet has a handful, and
/// the cap bounds the work a malformed request can cause.
pub const MAX_PARTIES: usize = 255;

/// The FROST identifier of party `party`: the scalar `party` (RFC 9591 §5: each participant has
/// a distinct non-zero scalar identifier; frost maps the integer `i` to the scalar `i`).
pub(crate) fn identifier<C: Ciphersuite>(party: u16) -> Result<Identifier<C>> {
    Identifier::try_from(party).map_err(|_| ProtocolError::Params {
        reason: format!("party number {party} is not a valid FROST identifier (it must be 1..)"),
    })
}

/// The party number of a FROST identifier, among `parties`.
pub(crate) fn party_of<C: Ciphersuite>(id: &Identifier<C>, parties: &[u16]) -> Option<u16> {
    parties
        .iter()
        .copied()
        .find(|p| Identifier::<C>::try_from(*p).is_ok_and(|candidate| candidate == *id))
}

/// Checks a set of party numbers (non-zero, distinct, at most [`MAX_PARTIES`]) and returns it
/// sorted, so that every party hashes and iterates it in the same order.
pub(crate) fn normalize_parties(parties: &[u16], what: &str) -> Result<Vec<u16>> {
    let params = |reason: String| ProtocolError::Params { reason };
    if parties.is_empty() {
        return Err(params(format!("the {what} is empty")));
    }
    if parties.len() > MAX_PARTIES {
        return Err(params(format!(
            "the {what} has {} parties, more than the {MAX_PARTIES} allowed",
            parties.len()
        )));
    }
    let mut sorted = parties.to_vec();
    sorted.sort_unstable();
    if sorted.first() == Some(&0) {
        return Err(params(format!(
            "the {what} contains party 0; party numbers start at 1"
        )));
    }
    if let Some(pair) = sorted.windows(2).find(|w| w.first() == w.get(1)) {
        let dup = pair.first().copied().unwrap_or_default();
        return Err(params(format!("the {what} lists party {dup} twice")));
    }
    Ok(sorted)
}

/// Indexes `items` by sender, requiring exactly one from each of `expected`: a missing, duplicated
/// or unexpected sender is an error naming that sender. These are faults of whoever assembled the
/// list (the coordinator), not of the sender, so they are not [`ProtocolError::Culprit`]s.
pub(crate) fn one_per_party<'a, T>(
    items: &'a [T],
    sender: impl Fn(&T) -> u16,
    expected_senders: &[u16],
    expected: &'static str,
) -> Result<BTreeMap<u16, &'a T>> {
    let unexpected = |actual: String| ProtocolError::UnexpectedMessage { expected, actual };
    let mut by_sender = BTreeMap::new();
    for item in items {
        let from = sender(item);
        if !expected_senders.contains(&from) {
            return Err(unexpected(format!(
                "a message from party {from}, who has none to send here"
            )));
        }
        if by_sender.insert(from, item).is_some() {
            return Err(unexpected(format!("two messages from party {from}")));
        }
    }
    if let Some(missing) = expected_senders
        .iter()
        .find(|p| !by_sender.contains_key(*p))
    {
        return Err(unexpected(format!("no message from party {missing}")));
    }
    Ok(by_sender)
}

/// Decodes a FROST value from its compact encoding and insists that the bytes are exactly its
/// re-encoding. frost's decoder (postcard) ignores trailing bytes; we hash and compare messages
/// byte for byte, so one value must have exactly one accepted encoding. The re-encoding is
/// zeroized: for round-2 packages it is a secret share.
pub(crate) fn decode_canonical<C: Ciphersuite, T>(
    bytes: &[u8],
    decode: impl FnOnce(&[u8]) -> std::result::Result<T, frost_core::Error<C>>,
    encode: impl FnOnce(&T) -> std::result::Result<Vec<u8>, frost_core::Error<C>>,
) -> std::result::Result<T, String> {
    let value = decode(bytes).map_err(|e| format!("does not decode: {e}"))?;
    let again = Zeroizing::new(encode(&value).map_err(|e| format!("does not re-encode: {e}"))?);
    if again.as_slice() != bytes {
        return Err("is not in canonical form (trailing or altered bytes)".into());
    }
    Ok(value)
}

/// Maps a FROST error to ours: when frost names culprits (`Error::culprits()`: a bad proof of
/// knowledge, secret share or signature share) and we know their party numbers, the first one is
/// the [`ProtocolError::Culprit`] and all are named in the reason.
pub(crate) fn frost_error<C: Ciphersuite>(
    error: frost_core::Error<C>,
    parties: &[u16],
    context: &str,
) -> ProtocolError {
    let culprits: Vec<u16> = error
        .culprits()
        .iter()
        .filter_map(|id| party_of(id, parties))
        .collect();
    match culprits.as_slice() {
        [] => ProtocolError::Frost {
            reason: format!("{context}: {error}"),
        },
        [party] => ProtocolError::Culprit {
            party: *party,
            reason: format!("{context}: {error}"),
        },
        [party, ..] => ProtocolError::Culprit {
            party: *party,
            reason: format!("{context}: {error} (culprits: parties {culprits:?})"),
        },
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;
    use frost_secp256k1_tr::Secp256K1Sha256TR as Tr;

    #[test]
    fn party_sets_are_checked_and_sorted() {
        assert_eq!(normalize_parties(&[3, 1, 2], "set").unwrap(), vec![1, 2, 3]);
        assert!(normalize_parties(&[], "set").is_err());
        assert!(normalize_parties(&[0, 1], "set").is_err());
        assert!(normalize_parties(&[2, 1, 2], "set").is_err());
        let too_many: Vec<u16> = (1..=256).collect();
        assert!(normalize_parties(&too_many, "set").is_err());
        let most: Vec<u16> = (1..=255).collect();
        assert_eq!(normalize_parties(&most, "set").unwrap().len(), 255);
    }

    #[test]
    fn identifiers_map_back_to_parties() {
        let id = identifier::<Tr>(300).unwrap();
        assert_eq!(party_of(&id, &[1, 2, 300]), Some(300));
        assert_eq!(party_of(&id, &[1, 2, 3]), None);
        assert!(identifier::<Tr>(0).is_err());
    }

    #[test]
    fn one_message_per_party() {
        let ok = one_per_party(&[2u16, 1, 3], |m| *m, &[1, 2, 3], "x").unwrap();
        assert_eq!(ok.keys().copied().collect::<Vec<_>>(), vec![1, 2, 3]);
        for bad in [&[1u16, 2][..], &[1, 2, 2, 3], &[1, 2, 3, 4], &[]] {
            assert!(matches!(
                one_per_party(bad, |m| *m, &[1, 2, 3], "x"),
                Err(ProtocolError::UnexpectedMessage { .. })
            ));
        }
    }
}
