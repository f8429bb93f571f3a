//! The share repair of a recovery (docs/lifecycle.md, "Recovery", step 2), coordinated by the new
//! device: the provider and the recovery cosigner are the helpers and rebuild this device's share
//! at the wallet's current epoch (`cosigner_protocol::repair`). This device is the participant:
//! it runs the protocol's receiver engine ([`RepairReceiver`], the counterpart of the helper
//! engine each cosigner runs) and relays every message to the party it is for through each
//! cosigner's [`Courier`]: every helper key to every helper, each sealed delta only to the helper
//! it is sealed to, our HPKE key with the request for each sigma. Relaying shows us nothing of
//! the helpers' shares: each delta is sealed to its recipient's key (announced signed by that
//! helper's share) and signed by its sender's share, so we can neither read nor replace one.

use cosigner_protocol::auth::P256Signer;
use cosigner_protocol::party::{DEVICE, PROVIDER, RECOVERY};
use cosigner_protocol::repair::engine::{RepairMessage, RepairReceiver};
use cosigner_protocol::wire::{KeyRole, RepairParams, Request, Response, WalletId, WalletInfo};
use frost_core::keys::{KeyPackage, PublicKeyPackage};
use serde_bytes::ByteBuf;

use crate::coordinator::{Peer, Start, call_all, from_peer, sealed_to, start_all};
use crate::courier::Courier;
use crate::wallet::{Suite, authorized_all, unexpected};
use crate::{ClientError, Result};

/// Repairs this device's share of `wallet_id` at `info.epoch` with the provider and the recovery
/// cosigner as helpers, each asked to start by a request signed with the (pending) device key.
/// The result is checked against `pkp`: its verifying share is this device's there.
///
/// Errors: a cosigner's refusal or an unexpected answer, or a protocol failure (a culprit, a
/// share that does not match the public key package): nothing is kept, the cosigners' repair
/// state expires.
pub fn repair_share(
    provider: &mut dyn Courier,
    recovery: &mut dyn Courier,
    wallet_id: WalletId,
    info: &WalletInfo,
    pkp: &PublicKeyPackage<Suite>,
    device_key: &dyn P256Signer,
) -> Result<KeyPackage<Suite>> {
    let params = RepairParams {
        wallet_id,
        ciphersuite: info.ciphersuite.clone(),
        epoch: info.epoch,
        helpers: vec![PROVIDER, RECOVERY],
        participant: DEVICE,
    };
    let mut peers = crate::coordinator::cosigner_peers([provider, recovery]);
    // Only the session the device key authorized may continue a cosigner's repair: the sigmas
    // sealed to our HPKE key go to whoever holds that key.
    let mut start = |peers: &mut [Peer<'_>]| {
        let requests = peers
            .iter()
            .map(|peer| Request::RepairStart {
                params: params.clone(),
                me: peer.party,
            })
            .collect();
        authorized_all(peers, (wallet_id, KeyRole::Device, device_key), requests)
    };
    run(&params, pkp, info.min_signers, &mut peers, &mut start)
}

/// Runs one repair of `params.participant`'s share (this device) with the `peers` as helpers:
/// `start` asks each to start, then the relay carries helper keys, deltas and sigmas until the
/// receiver holds the repaired share, checked against `pkp` and `min_signers`. Each step asks
/// every helper at once (`call_all`): no helper's request of a step waits for another's answer
/// of that step.
///
/// Errors: as [`repair_share`].
pub fn run(
    params: &RepairParams,
    pkp: &PublicKeyPackage<Suite>,
    min_signers: u16,
    peers: &mut [Peer<'_>],
    start: &mut Start<'_>,
) -> Result<KeyPackage<Suite>> {
    let mut rng = rand_core::OsRng;
    let (mut receiver, _) = RepairReceiver::<Suite>::start(params, pkp, min_signers, &mut rng)?;
    let participant_key = ByteBuf::from(receiver.participant_key());

    // 1. Every helper's key, each checked by the receiver against its helper's verifying share
    //    (a cosigner answering a key its share did not sign is named here).
    let mut helper_keys = Vec::with_capacity(peers.len());
    let answers = start_all(peers, start)?;
    for (peer, answer) in peers.iter().zip(answers) {
        let key = match answer? {
            Response::RepairKey { hpke_public_key } => hpke_public_key,
            other => return Err(unexpected("RepairKey", &other)),
        };
        receiver.absorb(&RepairMessage::HelperKey {
            from: peer.party,
            key: key.to_vec(),
        })?;
        helper_keys.push((peer.party, key));
    }

    // 2. Every helper's deltas, each sealed to one other helper.
    let mut deltas = Vec::new();
    let requests = peers
        .iter()
        .map(|_| Request::RepairDeltas {
            wallet_id: params.wallet_id,
            helper_keys: helper_keys.clone(),
        })
        .collect();
    let answers = call_all(peers, requests);
    for (peer, answer) in peers.iter().zip(answers) {
        match answer? {
            Response::RepairDeltas { deltas: theirs } => {
                for delta in &theirs {
                    from_peer(peer.party, delta.from, "delta")?;
                }
                deltas.extend(theirs);
            }
            other => return Err(unexpected("RepairDeltas", &other)),
        }
    }

    // 3. Each helper's deltas to it and our HPKE key; its sigma, sealed to us.
    let requests = peers
        .iter()
        .map(|peer| Request::RepairSigma {
            wallet_id: params.wallet_id,
            deltas: sealed_to(&deltas, peer.party).collect(),
            participant_key: participant_key.clone(),
        })
        .collect();
    let answers = call_all(peers, requests);
    for (peer, answer) in peers.iter().zip(answers) {
        match answer? {
            Response::RepairSigma { sigma } => {
                from_peer(peer.party, sigma.from, "sigma")?;
                receiver.absorb(&RepairMessage::Sigma(sigma))?;
            }
            other => return Err(unexpected("RepairSigma", &other)),
        }
    }

    if !receiver.advance()? {
        return Err(ClientError::Unexpected(format!(
            "the repair still waits for {}",
            receiver.waiting()
        )));
    }
    Ok(receiver.into_key_package()?)
}
