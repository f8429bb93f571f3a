//! The ceremonies this device coordinates: wallet creation (DKG among A, B, C) and signing (A + B).

use std::collections::BTreeMap;

use cosigner_protocol::party::{DEVICE, PROVIDER, RECOVERY};
use cosigner_protocol::wire::{
    Confirmation, DkgParams, Request, Response, Round1Message, SUITE_SECP256K1_TR, SealedPackage,
    WalletId, WalletInfo,
};
use cosigner_protocol::{dkg, sign};
use frost_core::keys::{KeyPackage, PublicKeyPackage};
use serde_bytes::ByteBuf;

use crate::address::{Network, p2tr_address, x_only};
use crate::error::{ClientError, Result};
use crate::home::{Home, WalletFile};
use crate::session::Session;

/// The suite wallets use.
pub type Suite = frost_secp256k1_tr::Secp256K1Sha256TR;

fn unexpected(what: &str, got: &Response) -> ClientError {
    ClientError::Unexpected(format!("expected {what}, got {got:?}"))
}

/// Creates a 2-of-3 wallet: this device (A), the provider (B) and the recovery cosigner (C).
pub fn create(
    home: &Home,
    provider: &mut Session,
    recovery: &mut Session,
    network: Network,
) -> Result<WalletFile> {
    let mut id = [0u8; 16];
    {
        use rand_core::RngCore;
        rand_core::OsRng
            .try_fill_bytes(&mut id)
            .map_err(|e| ClientError::Unexpected(e.to_string()))?;
    }
    let wallet_id = WalletId(id);
    let params = DkgParams {
        wallet_id,
        ciphersuite: SUITE_SECP256K1_TR.to_owned(),
        min_signers: 2,
        parties: vec![DEVICE, PROVIDER, RECOVERY],
    };
    let mut rng = rand_core::OsRng;

    // Round 1: everyone's broadcast, relayed by us to everyone (ours included).
    let (a1, m_a) = dkg::start::<Suite>(&params, DEVICE, &mut rng)?;
    let mut round1: Vec<Round1Message> = vec![m_a];
    for (session, me) in [(&mut *provider, PROVIDER), (&mut *recovery, RECOVERY)] {
        match session.call(&Request::DkgStart {
            params: params.clone(),
            me,
        })? {
            Response::DkgRound1 { message } => round1.push(message),
            other => return Err(unexpected("DkgRound1", &other)),
        }
    }

    // Round 2: sealed packages; we only relay B's and C's to each other.
    let (a2, mut packages) = a1.handle_round1(&round1, &mut rng)?;
    for session in [&mut *provider, &mut *recovery] {
        match session.call(&Request::DkgRound2 {
            wallet_id,
            round1: round1.clone(),
        })? {
            Response::DkgRound2 { packages: theirs } => packages.extend(theirs),
            other => return Err(unexpected("DkgRound2", &other)),
        }
    }
    let to = |party: u16| -> Vec<SealedPackage> {
        packages.iter().filter(|p| p.to == party).cloned().collect()
    };

    // Round 3: each party derives its share and reports what it saw.
    let (a3, c_a) = a2.handle_round2(&to(DEVICE))?;
    let mut confirmations: Vec<Confirmation> = vec![c_a];
    for (session, me) in [(&mut *provider, PROVIDER), (&mut *recovery, RECOVERY)] {
        match session.call(&Request::DkgRound3 {
            wallet_id,
            packages: to(me),
        })? {
            Response::DkgRound3 { confirmation } => confirmations.push(confirmation),
            other => return Err(unexpected("DkgRound3", &other)),
        }
    }

    // Confirmation: the wallet exists only if all three agree.
    let output = a3.handle_confirmations(&confirmations)?;
    let ours = output
        .public_key_package
        .serialize()
        .map_err(|e| ClientError::Unexpected(e.to_string()))?;
    for session in [&mut *provider, &mut *recovery] {
        match session.call(&Request::DkgConfirm {
            wallet_id,
            confirmations: confirmations.clone(),
        })? {
            Response::DkgDone { wallet }
                if wallet.public_key_package.as_ref() == ours.as_slice() => {}
            Response::DkgDone { .. } => {
                return Err(ClientError::Protocol(
                    cosigner_protocol::ProtocolError::Disagreement {
                        reason: "a cosigner stored another public key package".into(),
                    },
                ));
            }
            other => return Err(unexpected("DkgDone", &other)),
        }
    }

    let group = output
        .public_key_package
        .verifying_key()
        .serialize()
        .map_err(|e| ClientError::Unexpected(e.to_string()))?;
    let xonly = x_only(&group)?;
    let wallet = WalletFile {
        wallet_id: wallet_id.to_hex(),
        ciphersuite: params.ciphersuite.clone(),
        group_public_key: hex::encode(xonly),
        address: p2tr_address(&xonly, network)?,
        network: network.name().to_owned(),
        party: DEVICE,
        min_signers: params.min_signers,
        parties: params.parties.clone(),
        epoch: 0,
        public_key_package: hex::encode(&ours),
    };
    let share = zeroize::Zeroizing::new(
        output
            .key_package
            .serialize()
            .map_err(|e| ClientError::Unexpected(e.to_string()))?,
    );
    home.save_wallet(&wallet, &share)?;
    Ok(wallet)
}

/// Signs a 32-byte message with this device and the provider; returns the verified 64-byte
/// BIP-340 signature.
pub fn sign(
    home: &Home,
    provider: &mut Session,
    wallet_id: WalletId,
    message: &[u8; 32],
) -> Result<[u8; 64]> {
    let wallet = home.wallet(&wallet_id)?;
    let share = home.share(&wallet_id)?;
    let key_package = KeyPackage::<Suite>::deserialize(&share)
        .map_err(|e| ClientError::Input(format!("this device's share of {wallet_id}: {e}")))?;
    let pkp_bytes = hex::decode(&wallet.public_key_package)
        .map_err(|e| ClientError::Input(format!("wallet file: {e}")))?;
    let public_key_package = PublicKeyPackage::<Suite>::deserialize(&pkp_bytes)
        .map_err(|e| ClientError::Input(format!("wallet file: {e}")))?;
    let signers = [DEVICE, PROVIDER];

    let (session_id, provider_commitments) = match provider.call(&Request::SignCommit {
        wallet_id,
        message: ByteBuf::from(message.to_vec()),
        signers: signers.to_vec(),
    })? {
        Response::SignCommitted {
            session_id,
            commitments,
        } => (session_id, commitments),
        other => return Err(unexpected("SignCommitted", &other)),
    };
    let (ours, our_commitments) = sign::SignerSession::<Suite>::commit(
        &key_package,
        DEVICE,
        message,
        &signers,
        &mut rand_core::OsRng,
    )?;
    let commitments = BTreeMap::from([
        (DEVICE, our_commitments),
        (PROVIDER, provider_commitments.into_vec()),
    ]);
    let package = sign::signing_package::<Suite>(message, &commitments)?;
    let provider_share = match provider.call(&Request::SignShare {
        session_id,
        signing_package: ByteBuf::from(package.clone()),
    })? {
        Response::SignatureShare { share } => share.into_vec(),
        other => return Err(unexpected("SignatureShare", &other)),
    };
    let our_share = ours.sign(&key_package, &package)?;
    let shares = BTreeMap::from([(DEVICE, our_share), (PROVIDER, provider_share)]);
    let signature = sign::aggregate::<Suite>(&package, &shares, &public_key_package)?;
    let signature: [u8; 64] = signature
        .try_into()
        .map_err(|_| ClientError::Unexpected("signature is not 64 bytes".into()))?;
    verify_bip340(&wallet.group_public_key, message, &signature)?;
    Ok(signature)
}

/// Checks a BIP-340 signature with libsecp-independent code (k256), not FROST's own verifier.
pub fn verify_bip340(x_only_hex: &str, message: &[u8; 32], signature: &[u8; 64]) -> Result<()> {
    let key = hex::decode(x_only_hex).map_err(|e| ClientError::Input(e.to_string()))?;
    let key = k256::schnorr::VerifyingKey::from_bytes(&key)
        .map_err(|e| ClientError::Input(format!("group key: {e}")))?;
    let sig = k256::schnorr::Signature::try_from(signature.as_slice())
        .map_err(|e| ClientError::Unexpected(format!("signature: {e}")))?;
    key.verify_raw(message, &sig).map_err(|_| {
        ClientError::Unexpected("aggregated signature does not verify (BIP-340)".into())
    })
}

/// Public facts from the provider, for `wallet show`.
pub fn provider_view(provider: &mut Session, wallet_id: WalletId) -> Result<WalletInfo> {
    match provider.call(&Request::GetWallet { wallet_id })? {
        Response::Wallet { wallet } => Ok(wallet),
        other => Err(unexpected("Wallet", &other)),
    }
}
