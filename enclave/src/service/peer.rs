//! The other cosigner of a personal wallet, as this one knows it: its attested audit key,
//! registered at creation, and its signatures over its ceremony confirmations.
//!
//! The client relays every DKG and refresh message between the two cosigners (they never talk to
//! each other), so a cosigner cannot tell from the relay whether the other one really took part.
//! Each cosigner therefore signs its confirmation (`auth::confirmation_digest`) with the audit
//! key its attestation document binds, and the provider commits a refresh only with the recovery
//! cosigner's confirmation signed under the key registered at creation: a client holding the
//! device key cannot play the recovery cosigner's part and leave it behind at an old epoch
//! (docs/lifecycle.md, "Races and precedence"). The recovery cosigner needs no such check on a
//! refresh: it commits only with the provider's receipt (`auth::commit_receipt_digest`).

use cosigner_protocol::auth::{confirmation_digest, normalise_public_key, verify_digest};
use cosigner_protocol::id::PartyId;
use cosigner_protocol::party;
use cosigner_protocol::wire::{Confirmation, Registration, WalletId};
use serde_bytes::ByteBuf;

use super::Service;
use super::failure::{Failure, internal};

/// The other cosigner of a personal wallet's party `me`, if `me` is a cosigner.
fn other_cosigner(me: PartyId) -> Option<PartyId> {
    match me {
        party::PROVIDER => Some(party::RECOVERY),
        party::RECOVERY => Some(party::PROVIDER),
        _ => None,
    }
}

/// The key a registration names for `party`'s audit key, if any.
fn registered_for(registration: &Registration, party: PartyId) -> Option<&ByteBuf> {
    match party {
        party::PROVIDER => registration.provider_key.as_ref(),
        party::RECOVERY => registration.recovery_cosigner_key.as_ref(),
        _ => None,
    }
}

impl Service {
    /// Our signature over our confirmation, for the other cosigner.
    pub(super) fn sign_confirmation(
        &self,
        wallet_id: &WalletId,
        confirmation: &Confirmation,
    ) -> Result<ByteBuf, Failure> {
        let digest = confirmation_digest(wallet_id, confirmation);
        let signature = self.audit.sign_digest(&digest).map_err(internal)?;
        Ok(ByteBuf::from(signature.to_vec()))
    }

    /// At creation, as party `me`: the registration must name both cosigners' keys (a wallet
    /// without them could be refreshed by a client playing the other cosigner's part, and
    /// nothing registers them later), the one for us must be our own audit key, and the one for
    /// the other cosigner must have signed that cosigner's confirmation. Answers the other
    /// cosigner's key (kept in the wallet's state).
    pub(super) fn creation_peer_key(
        &self,
        wallet_id: &WalletId,
        me: PartyId,
        registration: &Registration,
        confirmed: (&[Confirmation], &[(PartyId, ByteBuf)]),
    ) -> Result<Option<ByteBuf>, Failure> {
        let (confirmations, signatures) = confirmed;
        // The confirmations are already checked to be one per party of the wallet: without
        // one from the other cosigner's party, the wallet has no such party.
        let Some(peer) = other_cosigner(me).filter(|p| confirmations.iter().any(|c| c.from == *p))
        else {
            return Ok(None);
        };
        let missing = |party: PartyId| {
            Failure::bad(format!(
                "the registration names no attested key for party {party}: both cosigners' keys \
                 are registered at creation"
            ))
        };
        let ours = registered_for(registration, me).ok_or_else(|| missing(me))?;
        if normalise_public_key(ours)? != self.audit.public_key() {
            return Err(Failure::bad(format!(
                "the key registered for party {me} (us) is not this cosigner's attested key"
            )));
        }
        let key = registered_for(registration, peer).ok_or_else(|| missing(peer))?;
        let key = ByteBuf::from(normalise_public_key(key)?);
        check_signed_confirmation(wallet_id, peer, &key, confirmations, signatures)?;
        Ok(Some(key))
    }
}

/// `party`'s confirmation among `confirmations` must carry, in `signatures`, a signature under
/// `key` over `auth::confirmation_digest`: proof that the cosigner holding that key reached
/// this very confirmation, not a client playing its part.
pub(super) fn check_signed_confirmation(
    wallet_id: &WalletId,
    party: PartyId,
    key: &[u8],
    confirmations: &[Confirmation],
    signatures: &[(PartyId, ByteBuf)],
) -> Result<(), Failure> {
    let confirmation = confirmations
        .iter()
        .find(|c| c.from == party)
        .ok_or_else(|| Failure::bad(format!("no confirmation from party {party}")))?;
    let mut theirs = signatures.iter().filter(|(p, _)| *p == party);
    let (Some((_, signature)), None) = (theirs.next(), theirs.next()) else {
        return Err(Failure::denied(format!(
            "party {party}'s confirmation must come with exactly one signature by its attested \
             key: relay the one that cosigner answered"
        )));
    };
    verify_digest(
        key,
        &confirmation_digest(wallet_id, confirmation),
        signature,
    )
    .map_err(|_| {
        Failure::denied(format!(
            "party {party}'s confirmation is not signed by the key registered for it at \
             creation: that cosigner did not take part in this ceremony"
        ))
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use cosigner_protocol::auth::{public_key_bytes, sign_digest};
    use cosigner_protocol::wire::ErrorKind;
    use p256::ecdsa::SigningKey;
    use rand_core::OsRng;

    use super::*;

    const WALLET: WalletId = WalletId([7; 16]);

    fn confirmation(from: PartyId) -> Confirmation {
        Confirmation {
            from,
            transcript_hash: ByteBuf::from(vec![1; 32]),
            public_key_package_hash: ByteBuf::from(vec![2; 32]),
        }
    }

    fn signed(key: &SigningKey, c: &Confirmation) -> ByteBuf {
        let signature = sign_digest(key, &confirmation_digest(&WALLET, c)).unwrap();
        ByteBuf::from(signature.to_vec())
    }

    fn kind(r: Result<(), Failure>) -> Option<ErrorKind> {
        r.err().map(|f| f.0.kind)
    }

    #[test]
    fn only_the_registered_keys_signature_of_that_very_confirmation_passes() {
        let (c, b) = (
            SigningKey::random(&mut OsRng),
            SigningKey::random(&mut OsRng),
        );
        let registered = public_key_bytes(&c);
        let confirmations = [confirmation(party::PROVIDER), confirmation(party::RECOVERY)];
        let check = |signatures: &[(PartyId, ByteBuf)]| {
            check_signed_confirmation(
                &WALLET,
                party::RECOVERY,
                &registered,
                &confirmations,
                signatures,
            )
        };
        let good = signed(&c, &confirmations[1]);
        assert!(check(&[(party::RECOVERY, good.clone())]).is_ok());
        let refused = [
            vec![],
            // Another key, or the right key over the other cosigner's confirmation.
            vec![(party::RECOVERY, signed(&b, &confirmations[1]))],
            vec![(party::RECOVERY, signed(&c, &confirmations[0]))],
            // Filed under another party, or twice.
            vec![(party::PROVIDER, good.clone())],
            vec![(party::RECOVERY, good.clone()), (party::RECOVERY, good)],
        ];
        for signatures in refused {
            assert_eq!(kind(check(&signatures)), Some(ErrorKind::Unauthorized));
        }
        // No confirmation from that party at all: a malformed commit.
        let only_ours = [confirmation(party::PROVIDER)];
        let missing =
            check_signed_confirmation(&WALLET, party::RECOVERY, &registered, &only_ours, &[]);
        assert_eq!(kind(missing), Some(ErrorKind::BadRequest));
    }
}
