//! The Feldman check of one refresh share against its sender's commitment, so that a bad share
//! names its sender (frost's `refresh_dkg_shares` checks the same equation but reports no culprit).
//!
//! A refresh polynomial has a zero constant term, and its round-1 commitment leaves the identity
//! out: the commitment carries `φ_1 … φ_{t-1}`, and the share `f(i)` for party `i` must satisfy
//! `f(i)·G = Σ_{k=1}^{t-1} i^k · φ_k`.

use frost_core::keys::{
    CoefficientCommitment, SigningShare, VerifiableSecretSharingCommitment, VerifyingShare,
};
use frost_core::{Ciphersuite, Field, Group, Identifier, Scalar};

/// Checks `share` (sent to `recipient`) against the sender's refresh `commitment`. All inputs
/// but the share are public; the share is only mapped to its public image `f(i)·G`.
pub(crate) fn check_refresh_share<C: Ciphersuite>(
    share: &SigningShare<C>,
    commitment: &VerifiableSecretSharingCommitment<C>,
    recipient: Identifier<C>,
) -> std::result::Result<(), String> {
    let x = identifier_scalar(recipient)?;
    let coefficients = commitment
        .serialize()
        .map_err(|e| format!("its commitment does not serialize: {e}"))?;
    let mut expected = <C::Group as Group>::identity();
    let mut power = x;
    for bytes in coefficients {
        let phi = CoefficientCommitment::<C>::deserialize(&bytes)
            .map_err(|e| format!("its commitment has a bad coefficient: {e}"))?
            .value();
        expected = expected + phi * power;
        power = power * x;
    }
    let actual = VerifyingShare::<C>::from(*share)
        .serialize()
        .map_err(|_| "its share is zero".to_string())?;
    let expected = <C::Group as Group>::serialize(&expected)
        .map_err(|_| "its share does not match its commitment".to_string())?;
    if actual.as_slice() != expected.as_ref() {
        return Err("its share does not match its commitment (Feldman check)".into());
    }
    Ok(())
}

/// The scalar `i` of an identifier (public).
fn identifier_scalar<C: Ciphersuite>(id: Identifier<C>) -> std::result::Result<Scalar<C>, String> {
    let bytes = id.serialize();
    let serialization =
        <<C::Group as Group>::Field as Field>::Serialization::try_from(bytes.as_slice())
            .map_err(|_| "identifier of unexpected length".to_string())?;
    <<C::Group as Group>::Field as Field>::deserialize(&serialization)
        .map_err(|e| format!("identifier is not a scalar: {e:?}"))
}
