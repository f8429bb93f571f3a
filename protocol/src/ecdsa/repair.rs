//! Repair of a lost device's threshold ECDSA share during a recovery (`dkls23::protocols::repair`):
//! the cosigners (at least the threshold of *helpers*) each compute a masked term for the target
//! party; only the sum of every helper's term is the target's share, so no helper learns it, and
//! the terms reach the target only, each over its helper's attested session. The target
//! assembles a *hollow* share: the right Shamir point of the same key, but no OT setups or
//! zero-sharing seeds, so it cannot sign until a complete refresh of all parties
//! ([`super::dkg::start_refresh`]) rebuilds them and moves every share — which the recovery does
//! at once, retiring the lost device's share.
//!
//! Who may receive the terms is the caller's responsibility: the enclave answers them only to the
//! recovering device's key, registered by the recovery credential (docs/ethereum.md,
//! "Recovery").

use dkls23::protocols::repair::{RepairTerm, repair_assemble};
use dkls23::protocols::{Parameters, PartyIndex};
use k256::Secp256k1;

use super::engine::package;
use super::{EcdsaKey, EcdsaPublic, decode_part, encode_part, index_of, tagged};
use crate::error::{ProtocolError, Result};
use crate::id::{Epoch, PartyId};
use crate::wire::WalletId;

const TAG_REPAIR: &str = "cosigner/ecdsa-repair/v1/id";

/// The repair id every helper uses for one recovery: the wallet, the epoch whose shares help and
/// the recovering device's key, so terms for another recovery never share a mask.
pub fn repair_id(wallet_id: &WalletId, epoch: Epoch, new_device_key: &[u8]) -> Vec<u8> {
    tagged(
        TAG_REPAIR,
        &[wallet_id.as_slice(), &epoch.0.to_be_bytes(), new_device_key],
    )
    .to_vec()
}

/// Our term (as helper `key.party()`, with `helpers`, sorted) for repairing `target`'s share:
/// send it to the target only.
pub fn term(
    key: &EcdsaKey,
    helpers: &[PartyId],
    target: PartyId,
    repair_id: &[u8],
) -> Result<Vec<u8>> {
    let indices = indices(helpers)?;
    let term = key
        .party
        .repair_term(&indices, index_of(target)?, repair_id)
        .map_err(|e| ProtocolError::Params {
            reason: format!("repair: {e}"),
        })?;
    encode_part(&term)
}

/// The target's hollow share from every helper's term, checked against the wallet's public
/// side: it must be `target`'s public share of `public`'s key.
pub fn assemble(
    public: &EcdsaPublic,
    threshold: u16,
    target: PartyId,
    terms: &[impl AsRef<[u8]>],
) -> Result<EcdsaKey> {
    let share_count = u8::try_from(public.public_shares.len()).ok();
    let threshold = u8::try_from(threshold).ok();
    let parameters = share_count
        .zip(threshold)
        .and_then(|(n, t)| Parameters::new(t, n).ok())
        .ok_or_else(|| ProtocolError::Params {
            reason: "repair: invalid threshold or party count".into(),
        })?;
    let package = package(public, parameters)?;
    let terms: Vec<RepairTerm<Secp256k1>> = terms
        .iter()
        .map(|t| decode_part(t.as_ref()))
        .collect::<Result<_>>()?;
    let party =
        repair_assemble(&package, index_of(target)?, &terms, |_| String::new()).map_err(|e| {
            ProtocolError::Disagreement {
                reason: format!("the helpers' repair terms do not make our share: {e}"),
            }
        })?;
    Ok(EcdsaKey { party })
}

fn indices(parties: &[PartyId]) -> Result<Vec<PartyIndex>> {
    let mut out: Vec<PartyIndex> = parties
        .iter()
        .map(|p| index_of(*p))
        .collect::<Result<_>>()?;
    out.sort_unstable();
    Ok(out)
}
