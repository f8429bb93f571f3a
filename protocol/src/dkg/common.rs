//! Helpers shared by the DKG and signing ceremonies: party numbers and FROST identifiers, message
//! sets with exactly one message per party, strict decoding of FROST's compact encoding, and the
//! mapping of FROST's errors (with their culprits) to [`ProtocolError`].

use std::collections::BTreeMap;

use frost_core::{Ciphersuite, Identifier};
use zeroize::Zeroizing;

use crate::error::{ProtocolError, Result};
use crate::id::PartyId;

/// Most parties a ceremony accepts. FROST itself allows up to 65535; a wallet has a handful, and
/// the cap bounds the work a malformed request can cause.
pub const MAX_PARTIES: usize = 255;

/// The party number of a FROST identifier, among `parties`.
pub(crate) fn party_of<C: Ciphersuite>(id: &Identifier<C>, parties: &[PartyId]) -> Option<PartyId> {
    parties
        .iter()
        .copied()
        .find(|p| p.identifier::<C>().is_ok_and(|candidate| candidate == *id))
}

/// Checks a set of party numbers (non-zero, distinct, at most [`MAX_PARTIES`]) and returns it
/// sorted, so that every party hashes and iterates it in the same order.
pub(crate) fn normalize_parties(parties: &[PartyId], what: &str) -> Result<Vec<PartyId>> {
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
    // (Party 0 cannot be spelled: `PartyId` refuses it where it is decoded or parsed.)
    if let Some(dup) = sorted
        .windows(2)
        .find(|w| w.first() == w.get(1))
        .and_then(|pair| pair.first())
    {
        return Err(params(format!("the {what} lists party {dup} twice")));
    }
    Ok(sorted)
}

/// Indexes `items` by sender, requiring exactly one from each of `expected`: a missing, duplicated
/// or unexpected sender is an error naming that sender. These are faults of whoever assembled the
/// list (the coordinator), not of the sender, so they are not [`ProtocolError::Culprit`]s.
pub(crate) fn one_per_party<'a, T>(
    items: &'a [T],
    sender: impl Fn(&T) -> PartyId,
    expected_senders: &[PartyId],
    expected: &'static str,
) -> Result<BTreeMap<PartyId, &'a T>> {
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
    parties: &[PartyId],
    context: &str,
) -> ProtocolError {
    let culprits: Vec<PartyId> = error
        .culprits()
        .iter()
        .filter_map(|id| party_of(id, parties))
        .collect();
    match culprits.as_slice() {
        [] => ProtocolError::Frost {
            reason: format!("{context}: {error}"),
        },
        [party] => ProtocolError::culprit(*party, format!("{context}: {error}")),
        [party, ..] => ProtocolError::culprit(
            *party,
            format!("{context}: {error} (culprits: parties {culprits:?})"),
        ),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;
    use crate::id::pid;
    use frost_secp256k1_tr::Secp256K1Sha256TR as Tr;

    #[test]
    fn party_sets_are_checked_and_sorted() {
        assert_eq!(
            normalize_parties(&[pid(3), pid(1), pid(2)], "set").unwrap(),
            vec![1, 2, 3]
        );
        assert!(normalize_parties(&[], "set").is_err());
        assert!(normalize_parties(&[pid(2), pid(1), pid(2)], "set").is_err());
        let too_many: Vec<PartyId> = PartyId::range(1, 256).collect();
        assert!(normalize_parties(&too_many, "set").is_err());
        let most: Vec<PartyId> = PartyId::range(1, 255).collect();
        assert_eq!(normalize_parties(&most, "set").unwrap().len(), 255);
    }

    #[test]
    fn identifiers_map_back_to_parties() {
        let id = pid(300).identifier::<Tr>().unwrap();
        assert_eq!(party_of(&id, &[pid(1), pid(2), pid(300)]), Some(pid(300)));
        assert_eq!(party_of(&id, &[pid(1), pid(2), pid(3)]), None);
    }

    #[test]
    fn one_message_per_party() {
        let items = [pid(2), pid(1), pid(3)];
        let ok = one_per_party(&items, |m| *m, &[pid(1), pid(2), pid(3)], "x").unwrap();
        assert_eq!(ok.keys().copied().collect::<Vec<_>>(), vec![1, 2, 3]);
        let p = |ns: &[u16]| ns.iter().map(|n| pid(*n)).collect::<Vec<_>>();
        for bad in [p(&[1, 2]), p(&[1, 2, 2, 3]), p(&[1, 2, 3, 4]), vec![]] {
            assert!(matches!(
                one_per_party(&bad, |m| *m, &[pid(1), pid(2), pid(3)], "x"),
                Err(ProtocolError::UnexpectedMessage { .. })
            ));
        }
    }
}
