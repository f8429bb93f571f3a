//! An Ethereum treasury on a member's device: requesting a transaction's signature, approving
//! one and taking part in its threshold ECDSA signing over the mailbox
//! (`cosigner_protocol::dao::ecdsa`). The request carries the unsigned transaction; every member
//! decodes and values it itself, approves the signing hash it computed, and checks that what the
//! provider publishes is exactly that transaction signed by the treasury's key.

use cosigner_eth::{SignedTx, TxRequest, UnsignedTx, Valuation};
use cosigner_protocol::dao::ecdsa::{EcdsaDaoRefresh, EcdsaMember};
use cosigner_protocol::ecdsa::{EcdsaKey, EcdsaPublic};
use k256::ecdsa::{RecoveryId, Signature, VerifyingKey};

use super::*;

/// The DAO facts of an Ethereum treasury this device holds, and its invitation.
pub fn treasury_info(wallet: &EthWalletFile) -> Result<(&DaoInfo, Invitation)> {
    let info = wallet.member()?.info;
    Ok((info, invitation_of(info)?))
}

/// Makes and signs a request to sign `request`'s transaction with an Ethereum treasury.
///
/// Errors: the transaction is not from the treasury's address, or does not value (malformed
/// token call data).
pub fn request(
    home: &Home,
    wallet: &EthWalletFile,
    request: &TxRequest,
) -> Result<(SignRequest, Envelope)> {
    treasury_info(wallet)?;
    crate::eth::check_from(wallet, request)?;
    Valuation::of(&request.tx).map_err(|e| input(format!("transaction: {e}")))?;
    let signing = SignRequest {
        wallet_id: wallet.wallet_id,
        psbt: ByteBuf::from(request.tx.signing_payload()),
        requester: wallet.party,
        created_ms: now_ms(),
        nonce: ByteBuf::from(random16()?),
    };
    found(home, signing)
}

/// The transaction a request carries, decoded strictly.
pub fn transaction_of(request: &SignRequest) -> Result<UnsignedTx> {
    UnsignedTx::from_signing_payload(&request.psbt)
        .map_err(|e| input(format!("the request's transaction: {e}")))
}

/// The provider's evaluation must be of the signing hash this device computed.
pub fn check_evaluation(tx: &UnsignedTx, evaluation: &Evaluation) -> Result<()> {
    let ours = tx.signing_hash();
    if evaluation.sighashes.as_slice() != [serde_bytes::ByteBuf::from(ours.to_vec())] {
        return Err(ClientError::Unexpected(
            "the provider computed another signing hash than this device: not approving".into(),
        ));
    }
    Ok(())
}

/// What the provider published must be exactly `tx` signed by the treasury's key: the raw
/// transaction opens to `tx`, its signature recovers to the wallet's public key, and `tx_hash`
/// is its hash.
pub fn check_published(
    wallet: &EthWalletFile,
    tx: &UnsignedTx,
    tx_hash: &str,
    raw: &[u8],
) -> Result<()> {
    let disagree = |reason: String| {
        ClientError::Protocol(cosigner_protocol::ProtocolError::Disagreement { reason })
    };
    let (published, signature) =
        SignedTx::open(raw).map_err(|e| disagree(format!("the published transaction: {e}")))?;
    if published != *tx {
        return Err(disagree(
            "the provider published another transaction than the one requested".into(),
        ));
    }
    let sig = Signature::from_scalars(signature.r, signature.s)
        .map_err(|e| disagree(format!("the published signature: {e}")))?;
    let id = RecoveryId::new(signature.y_parity, false);
    let key = VerifyingKey::recover_from_prehash(&tx.signing_hash(), &sig, id)
        .map_err(|e| disagree(format!("the published signature: {e}")))?;
    if key.to_encoded_point(false).as_bytes() != wallet.public_key_bytes()?.as_slice() {
        return Err(disagree(
            "the published transaction is not signed by the treasury's key".into(),
        ));
    }
    let hash = format!("0x{}", hex::encode(cosigner_eth::keccak256(raw)));
    if hash != tx_hash {
        return Err(disagree(format!(
            "the provider named the transaction {tx_hash}, it hashes to {hash}"
        )));
    }
    Ok(())
}

/// The newest signing round this device posted a hello in, and whether it also sent its last
/// step there: a process run again after one of those stopped knows which round's secrets it
/// lost.
fn our_last_round(backlog: &[Envelope], me: &[u8], hash: &[u8; 32]) -> Option<(u32, bool)> {
    let mut hello = None;
    let mut last = None;
    for e in backlog.iter().filter(|e| e.sender == me) {
        match DaoMessage::decode(&e.body) {
            Ok(DaoMessage::EcdsaSignHello { request, round, .. }) if request.as_slice() == hash => {
                hello = hello.max(Some(round));
            }
            Ok(DaoMessage::EcdsaSignPart {
                request,
                round,
                part,
            }) if request.as_slice() == hash && part.step == 3 => last = last.max(Some(round)),
            _ => {}
        }
    }
    hello.map(|r| (r, last == Some(r)))
}

/// Approves a request of an Ethereum treasury and takes part in its signing (when chosen) until
/// the provider publishes the transaction, checked ([`check_published`]). Returns
/// `(tx_hash, raw_tx)`.
///
/// Run again after its process stopped, it finishes: the approval is posted again (a duplicate),
/// and if this device was chosen in a round it had not finished, it joins with fresh secrets
/// (the provider opens a new round).
#[allow(clippy::too_many_arguments)]
pub fn approve_and_sign(
    home: &Home,
    wallet: &EthWalletFile,
    courier: &mut Courier,
    request: &SignRequest,
    tx: &UnsignedTx,
    evaluation: &Evaluation,
    backlog: Vec<Envelope>,
    timeout: Duration,
) -> Result<(String, Vec<u8>)> {
    let (info, invitation) = treasury_info(wallet)?;
    let layout = invitation.layout()?;
    let provider_key = info.provider_key()?;
    let hash = request.hash()?;
    check_evaluation(tx, evaluation)?;
    let digest = tx.signing_hash();
    let share: EcdsaKey = home.ecdsa_key(wallet)?;
    let key = home.device_key()?;
    let me = public_key_bytes(&key);
    courier.send(
        &key,
        &DaoMessage::Approval(Approval {
            request: ByteBuf::from(hash.to_vec()),
            party: wallet.party,
            sighashes: ByteBuf::from(
                cosigner_protocol::dao::sighashes_digest(&hash, &[digest]).to_vec(),
            ),
        }),
    )?;
    let mut member = EcdsaMember::new(&layout, hash, wallet.party, digest);
    match our_last_round(&backlog, &me, &hash) {
        // Our part of that round is done: only a newer round needs us.
        Some((round, true)) => member = member.from_round(round.saturating_add(1)),
        // Its secrets died with the process: say so, so the provider opens the next round.
        Some((round, false)) => {
            let lost = member.lost_round(round, &mut rand_core::OsRng);
            courier.send(&key, &lost)?;
        }
        None => {}
    }
    let mut watch = SignWatch::new(hash, layout, evaluation)?;
    let mut pace = Pace::new(timeout);
    let mut pending = backlog;
    loop {
        let fresh = courier.poll()?;
        let progressed = !fresh.is_empty() || !pending.is_empty();
        pending.extend(fresh);
        let batch: Vec<(Envelope, DaoMessage)> = std::mem::take(&mut pending)
            .into_iter()
            .filter_map(|e| DaoMessage::decode(&e.body).ok().map(|m| (e, m)))
            .collect();
        if let Some((tx_hash, raw)) = signed_in(batch.iter().map(|(e, _)| e), &provider_key, &hash)
        {
            check_published(wallet, tx, &tx_hash, &raw)?;
            return Ok((tx_hash, raw));
        }
        if let Some(reason) = refused_in(&batch, &provider_key, &hash) {
            return Err(refused(&reason));
        }
        watch.absorb(&batch, courier)?;
        let messages: Vec<(Vec<u8>, DaoMessage)> = batch
            .into_iter()
            .map(|(e, m)| (e.sender.to_vec(), m))
            .collect();
        for out in member.handle(&share, &messages, &mut rand_core::OsRng)? {
            courier.send(&key, &out)?;
        }
        let state = format!(
            "(rule {:?} needs {} approvals): {}",
            evaluation.rule,
            evaluation.approvals,
            watch.line()
        );
        pace.wait(progressed, &state, courier)?;
    }
}

/// The provider's refusal of request `hash` in `batch`, if any.
fn refused_in(
    batch: &[(Envelope, DaoMessage)],
    provider_key: &[u8],
    hash: &[u8; 32],
) -> Option<String> {
    batch.iter().find_map(|(e, m)| match m {
        DaoMessage::Refused { request, reason }
            if e.sender == provider_key && request.as_slice() == hash =>
        {
            Some(reason.clone())
        }
        _ => None,
    })
}

/// Takes part in the refresh `proposal` of treasury `wallet` (its founding `envelope` is posted
/// again) until every party committed the new epoch and the provider made it current: DKLs23's
/// complete refresh over the mailbox (`cosigner_protocol::dao::ecdsa::EcdsaDaoRefresh`). The new
/// share is kept prepared first and replaces the current one only then; the address stays.
/// Returns the updated wallet file.
pub fn run_treasury_refresh(
    home: &Home,
    wallet: &EthWalletFile,
    courier: &mut Courier,
    proposal: &RefreshProposal,
    envelope: &Envelope,
    timeout: Duration,
    progress: &mut dyn FnMut(&str),
) -> Result<EthWalletFile> {
    let member = wallet.member()?;
    let (layout, provider_key) = refresh_checks(member, wallet.epoch, courier, proposal)?;
    let public = wallet.public_side()?;
    let key = home.device_key()?;
    let share = home.ecdsa_key(wallet)?;
    let (refresh, first) = EcdsaDaoRefresh::start(
        layout,
        proposal,
        &public_key_bytes(&key),
        vec![share],
        &public,
        &mut rand_core::OsRng,
    )?;
    let watch = RefreshWatch::of(home, proposal, &provider_key, &key)?;
    let refresh = AnyRefresh::Ecdsa(Box::new(refresh));
    let AnyRefresh::Ecdsa(refresh) =
        watch.drive(courier, envelope, &first, refresh, timeout, progress)?
    else {
        return Err(scheme_changed());
    };
    let (_, output) = refresh
        .new_shares()?
        .into_iter()
        .next()
        .ok_or_else(|| ClientError::Unexpected("the refresh produced no share".into()))?;
    let new_public = EcdsaPublic::of(output);
    if new_public.public_key != public.public_key {
        return Err(ClientError::Unexpected(
            "the refreshed key differs from the treasury's".into(),
        ));
    }
    let mut new_wallet = EthWalletFile {
        epoch: watch.epoch,
        ..wallet.clone()
    };
    new_wallet.set_public_side(&new_public)?;
    home.replace_eth_share(&new_wallet, &output.key)?;
    home.remove_prepared_share(&member.wallet_id)?;
    Ok(new_wallet)
}
