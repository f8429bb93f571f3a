//! Fixtures shared by the unit tests of the ceremony engines (signing, repair).

#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::collections::BTreeMap;

use frost_core::keys::{IdentifierList, KeyPackage, PublicKeyPackage};
use rand_core::OsRng;

use crate::id::PartyId;

/// The unit tests' ciphersuite: BIP-340 Taproot, the wallets'.
pub(crate) type Tr = frost_secp256k1_tr::Secp256K1Sha256TR;

/// A dealer's 2-of-3 keys of parties 1, 2, 3 (frost's trusted dealer: these tests need keys, not
/// a key generation) and their public key package.
pub(crate) fn dealer_keys() -> (BTreeMap<PartyId, KeyPackage<Tr>>, PublicKeyPackage<Tr>) {
    let (shares, pkp) =
        frost_core::keys::generate_with_dealer::<Tr, _>(3, 2, IdentifierList::Default, &mut OsRng)
            .unwrap();
    let mut out = BTreeMap::new();
    for p in PartyId::range(1, 3) {
        let share = &shares[&p.identifier::<Tr>().unwrap()];
        out.insert(p, KeyPackage::try_from(share.clone()).unwrap());
    }
    (out, pkp)
}
