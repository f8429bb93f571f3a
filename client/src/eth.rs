//! Ethereum wallets (docs/ethereum.md): a threshold ECDSA key made by the DKG among this device
//! (party 1, Shard A) and both cosigners, no party ever holding it, and transactions signed by
//! this device with the provider. The provider reads and values each transaction itself and
//! signs the digest it computed; this device checks that the signature both sides assembled is
//! the wallet's, over the transaction it asked for.

use cosigner_protocol::auth::P256Signer;
use std::path::PathBuf;

use cosigner_eth::{TxRequest, checksummed};
use cosigner_protocol::ProtocolError;
use cosigner_protocol::ecdsa::dkg::{
    self, EcdsaDkgOutput, EcdsaDkgParams, EcdsaHello, RoundOutput,
};
use cosigner_protocol::ecdsa::sign::{self, EcdsaSignMessage};
use cosigner_protocol::ecdsa::{EcdsaKey, EcdsaPublic};
use cosigner_protocol::id::PartyId;
use cosigner_protocol::party::{DEVICE, PROVIDER, RECOVERY};
use cosigner_protocol::policy::Chain;
use cosigner_protocol::wire::{
    Confirmation, DkgParams, KeyRole, RefreshParams, RepairParams, Request, Response,
    SUITE_SECP256K1_ECDSA, WalletId,
};
use p256::ecdsa::SigningKey;
use serde_bytes::ByteBuf;

use crate::coordinator::{self, Peer, call_all, check_signed, from_peer};
use crate::courier::Courier;
use crate::error::{ClientError, Result};
use crate::home::{EthWalletFile, Home, RecoveryKeyOut};
use crate::receipt::{Expected, Receipt, receipt_of};
use crate::wallet::{self, never_registered, random, registration, unexpected, unknown_at};

/// The network name an Ethereum wallet is registered with.
pub const ETHEREUM: &str = cosigner_protocol::policy::NETWORK_ETHEREUM;
/// The audit action of an Ethereum signature.
pub const SIGN_ETH: &str = "sign-eth";

/// An Ethereum wallet made here, and where its recovery credential went.
#[derive(Debug, Clone)]
pub struct EthCreated {
    /// The wallet.
    pub wallet: EthWalletFile,
    /// The recovery credential's file; `None` when kept sealed in the home.
    pub recovery_key_path: Option<PathBuf>,
}

/// Creates a 2-of-3 Ethereum wallet: this device (A), the provider (B) and the recovery
/// cosigner (C), registering this device's key, a new recovery credential (written to
/// `recovery_key_out`, never overwritten) and the spending `policy` (an Ethereum policy whose one
/// member is `owner`, this device; both cosigners enforce it). Nothing is registered with any cosigner before this
/// home holds the share, the wallet file and the credential.
pub fn create<'a>(
    home: &Home,
    provider: &mut dyn Courier,
    recovery: &mut dyn Courier,
    recovery_key_out: impl Into<RecoveryKeyOut<'a>>,
    enrollment: Option<&[u8]>,
    policy: Option<&str>,
) -> Result<EthCreated> {
    let recovery_key_out = recovery_key_out.into();
    recovery_key_out.check()?;
    if let Some(text) = policy {
        crate::psbt_sign::check_policy(home, Chain::Ethereum, text)?;
    }
    let wallet_id = WalletId(random()?);
    let params = DkgParams {
        wallet_id,
        ciphersuite: SUITE_SECP256K1_ECDSA.to_owned(),
        min_signers: 2,
        parties: vec![DEVICE, PROVIDER, RECOVERY],
    };
    let mut peers = coordinator::cosigner_peers([&mut *provider, &mut *recovery]);
    let made = run_dkg(&params, &mut peers, enrollment)?;
    let recovery_key = SigningKey::random(&mut rand_core::OsRng);
    let attested = [provider.attested_key(), recovery.attested_key()];
    let registration = registration(
        home,
        &recovery_key,
        &wallet_id,
        &made.output.transcript_hash,
        policy,
        ETHEREUM,
        attested,
    )?;
    let confirm = Request::DkgConfirm {
        wallet_id,
        confirmations: made.confirmations,
        registration,
        confirmation_signatures: made.signatures,
    };
    let wallet = EthWalletFile::new(wallet_id, &made.output.public_key, &params.parties, 2)?;
    recovery_key_out.write(home, &wallet_id, &recovery_key)?;
    if let Err(e) = home.save_eth_wallet(&wallet, &made.output.key) {
        recovery_key_out.discard(home, &wallet_id);
        return Err(e);
    }
    if let Err(e) = confirm_at(provider, &confirm, &wallet) {
        if never_registered(&e) && unknown_at(provider, wallet_id) {
            recovery_key_out.discard(home, &wallet_id);
            let _ = home.forget_eth_wallet(&wallet_id);
        }
        return Err(e);
    }
    confirm_at(recovery, &confirm, &wallet).map_err(|e| {
        ClientError::Input(format!(
            "wallet {wallet_id} is registered at the provider, not at the recovery cosigner \
             ({e}); it signs, but cannot be recovered until it is"
        ))
    })?;
    Ok(EthCreated {
        wallet,
        recovery_key_path: recovery_key_out.path(),
    })
}

/// Refreshes Ethereum wallet `wallet_id` at all three parties: new shares of the same key (the
/// address stays), the epoch up by one, every old share useless (docs/ethereum.md, "Refresh").
/// Two-phase like a Bitcoin wallet's refresh (docs/lifecycle.md): the new share is kept prepared
/// here before any cosigner commits; the provider commits first, then the recovery cosigner on
/// its receipt, then this device switches and both cosigners drop the old epoch. Run again after
/// an interruption, it finishes a refresh that committed (or rolls the lagging cosigner forward).
pub fn refresh(
    home: &Home,
    provider: &mut dyn Courier,
    recovery: &mut dyn Courier,
    wallet_id: WalletId,
) -> Result<EthWalletFile> {
    let wallet = home.eth_wallet(&wallet_id)?;
    let device_key = home.device_key()?;
    let aligned = wallet::roll_forward(provider, recovery, wallet_id, &device_key)?;
    let view = &aligned.provider;
    let public = EcdsaPublic::from_bytes(&view.public_key_package)?;
    if public.public_key.as_slice() != wallet.public_key_bytes()? {
        return Err(ClientError::Protocol(ProtocolError::Disagreement {
            reason: "the cosigners hold another public key for this wallet".into(),
        }));
    }
    if view.epoch > wallet.epoch {
        // Finished here; the session that committed is gone, so the device key finalizes.
        let done = finish_refresh(home, &wallet, view.epoch, &public)?;
        wallet::finalize_signed(provider, recovery, wallet_id, done.epoch, &device_key)?;
        return Ok(done);
    }
    if view.epoch != wallet.epoch {
        return Err(ClientError::Input(format!(
            "this device holds epoch {} of wallet {wallet_id}, the cosigners epoch {}",
            wallet.epoch, view.epoch
        )));
    }
    // A finalize an earlier run did not get to (its connection dropped after the switch): the
    // old epoch must not stay signable while this refresh runs.
    wallet::finalize_signed(provider, recovery, wallet_id, wallet.epoch, &device_key)?;
    let key = home.ecdsa_key(&wallet)?;
    refresh_with(home, provider, recovery, &wallet, key, public, &aligned)
}

/// Refreshes `wallet` from this device's share `key` (a hollow one during a recovery) and the
/// cosigners' public side `public`, at the epoch both cosigners are at (`aligned`): the rounds,
/// the two-phase commit (prepared share kept here first), the switch and the finalize. The
/// device key signs as whatever the cosigners hold it for (the device's, or during a recovery
/// the pending one, whose refresh completes the recovery).
fn refresh_with(
    home: &Home,
    provider: &mut dyn Courier,
    recovery: &mut dyn Courier,
    wallet: &EthWalletFile,
    key: EcdsaKey,
    public: EcdsaPublic,
    aligned: &wallet::Aligned,
) -> Result<EthWalletFile> {
    let wallet_id = wallet.wallet_id;
    let device_key = home.device_key()?;
    wallet::check_cosigner_identities(provider, recovery, aligned)?;
    let params = RefreshParams {
        wallet_id,
        ciphersuite: SUITE_SECP256K1_ECDSA.to_owned(),
        min_signers: wallet.min_signers,
        parties: wallet.parties.clone(),
        from_epoch: wallet.epoch,
    };
    let ecdsa_params = EcdsaDkgParams {
        wallet_id,
        threshold: wallet.min_signers,
        parties: wallet.parties.clone(),
    };
    let (local, hello) = dkg::start_refresh(
        ecdsa_params,
        key,
        public,
        wallet.epoch,
        &mut rand_core::OsRng,
    )?;
    let mut hellos = vec![hello];
    let couriers: [(&mut dyn Courier, PartyId); 2] =
        [(&mut *provider, PROVIDER), (&mut *recovery, RECOVERY)];
    for (courier, me) in couriers {
        let start = Request::RefreshStart {
            params: params.clone(),
            me,
        };
        match wallet::authorized_retrying(courier, wallet_id, KeyRole::Device, &device_key, &start)?
        {
            Response::EcdsaDkgHello { hello } => {
                from_peer(me, hello.from, "hello")?;
                hellos.push(hello);
            }
            other => return Err(unexpected("EcdsaDkgHello", &other)),
        }
    }
    let made = {
        let mut peers = coordinator::cosigner_peers([&mut *provider, &mut *recovery]);
        exchange(Ceremony::Refresh, wallet_id, local, &hellos, &mut peers)?
    };
    // Kept before any cosigner commits: if this process dies after a commit, the next run finds
    // the new share here and finishes instead of losing it.
    home.add_eth_prepared(&wallet_id, &made.output.key)?;
    let mut commit = Request::RefreshCommit {
        wallet_id,
        confirmations: made.confirmations,
        provider_receipt: None,
        confirmation_signatures: made.signatures,
    };
    let ask = |courier: &mut dyn Courier, commit: &Request| match wallet::authorized_retrying(
        courier,
        wallet_id,
        KeyRole::Device,
        &device_key,
        commit,
    )? {
        Response::RefreshCommitted { wallet } => Ok(wallet),
        other => Err(unexpected("RefreshCommitted", &other)),
    };
    // The provider first: its receipt is what the recovery cosigner commits on.
    let committed = ask(provider, &commit)?;
    if let Request::RefreshCommit {
        provider_receipt, ..
    } = &mut commit
    {
        provider_receipt.clone_from(&committed.receipt);
    }
    ask(recovery, &commit)?;
    let public = EcdsaPublic::from_bytes(&committed.public_key_package)?;
    let new_wallet = finish_refresh(home, wallet, committed.epoch, &public)?;
    wallet::finalize_signed(provider, recovery, wallet_id, new_wallet.epoch, &device_key)?;
    Ok(new_wallet)
}

/// Recovers this (new) device's share of Ethereum wallet `wallet_id` with the recovery
/// credential (docs/ethereum.md, "Recovery"): both cosigners suspend the old device key and hold
/// this device's as pending; each hands this device its repair term (over its own attested
/// session; no cosigner learns the share); the terms make a hollow share of the device's Shamir
/// point; and a complete refresh of all three parties, authorized by this device's key, makes it
/// a working share, retires every old one (the lost phone's included) and makes this device's
/// key the wallet's. Run again after an interruption, it finishes the job.
pub fn recover(
    home: &Home,
    provider: &mut dyn Courier,
    recovery: &mut dyn Courier,
    wallet_id: WalletId,
    recovery_key: &dyn P256Signer,
) -> Result<EthWalletFile> {
    let device_key = home.device_key()?;
    let new_device = cosigner_protocol::auth::public_key_bytes(&device_key);
    let completed =
        wallet::recover_start(provider, recovery, wallet_id, recovery_key, &new_device)?;
    let aligned = wallet::roll_forward(provider, recovery, wallet_id, &device_key)?;
    let view = &aligned.provider;
    if view.ciphersuite != SUITE_SECP256K1_ECDSA {
        return Err(ClientError::Input(format!(
            "wallet {wallet_id} is not an Ethereum wallet: recover it without --chain ethereum"
        )));
    }
    let public = EcdsaPublic::from_bytes(&view.public_key_package)?;
    let fresh = EthWalletFile {
        epoch: view.epoch,
        ..EthWalletFile::new(
            wallet_id,
            &public.public_key,
            &view.parties,
            view.min_signers,
        )?
    };
    // Done before (every success path finalizes again: a finalize an earlier run lost must not
    // leave the epoch of the lost phone's share signable).
    let held = home
        .eth_wallet(&wallet_id)
        .ok()
        .filter(|held| held.epoch == view.epoch && holds(home, held, &public));
    // Or our refresh committed (at both, or at the provider and `roll_forward` brought the
    // recovery cosigner along): finished from the share this home kept.
    let kept = home
        .eth_prepared(&wallet_id)?
        .iter()
        .any(|key| public.is_share_of(DEVICE, key));
    let done = match held {
        Some(held) => Some(held),
        None if kept || completed => Some(finish_refresh(home, &fresh, view.epoch, &public)?),
        None => None,
    };
    if let Some(done) = done {
        wallet::finalize_signed(provider, recovery, wallet_id, done.epoch, &device_key)?;
        return Ok(done);
    }
    let params = RepairParams {
        wallet_id,
        ciphersuite: SUITE_SECP256K1_ECDSA.to_owned(),
        epoch: view.epoch,
        helpers: vec![PROVIDER, RECOVERY],
        participant: DEVICE,
    };
    let mut terms: Vec<zeroize::Zeroizing<Vec<u8>>> = Vec::new();
    let helpers: [(&mut dyn Courier, PartyId); 2] =
        [(&mut *provider, PROVIDER), (&mut *recovery, RECOVERY)];
    for (courier, me) in helpers {
        let ask = Request::RepairStart {
            params: params.clone(),
            me,
        };
        match wallet::authorized_retrying(courier, wallet_id, KeyRole::Device, &device_key, &ask)? {
            Response::EcdsaRepairTerm { term } => {
                terms.push(zeroize::Zeroizing::new(term.into_vec()))
            }
            other => return Err(unexpected("EcdsaRepairTerm", &other)),
        }
    }
    let hollow =
        cosigner_protocol::ecdsa::repair::assemble(&public, view.min_signers, DEVICE, &terms)?;
    refresh_with(home, provider, recovery, &fresh, hollow, public, &aligned)
}

/// Whether this home's share of `wallet` is the device's share of `public`.
fn holds(home: &Home, wallet: &EthWalletFile, public: &EcdsaPublic) -> bool {
    home.ecdsa_key(wallet)
        .is_ok_and(|key| public.is_share_of(wallet.party, &key))
}

/// Makes this home's prepared share the current one of `wallet` at `epoch` (the cosigners
/// committed it; `public` is the wallet's public side they hold), checking it is this device's
/// share of that epoch.
fn finish_refresh(
    home: &Home,
    wallet: &EthWalletFile,
    epoch: cosigner_protocol::id::Epoch,
    public: &EcdsaPublic,
) -> Result<EthWalletFile> {
    let wallet_id = wallet.wallet_id;
    let lost = || {
        ClientError::Input(format!(
            "the cosigners committed epoch {epoch} of wallet {wallet_id}, and this home holds no \
             share of it (the refresh's share was lost): the wallet needs a recovery"
        ))
    };
    // The committed refresh's share among those kept: its public share is ours in `public`.
    let key = home
        .eth_prepared(&wallet_id)?
        .into_iter()
        .find(|key| public.is_share_of(wallet.party, key))
        .ok_or_else(lost)?;
    let new_wallet = EthWalletFile {
        epoch,
        ..wallet.clone()
    };
    home.replace_eth_share(&new_wallet, &key)?;
    home.remove_prepared_share(&wallet_id)?;
    Ok(new_wallet)
}

/// What the DKG leaves this device: its output and what the cosigners' `DkgConfirm` carries.
struct Made {
    output: EcdsaDkgOutput,
    confirmations: Vec<Confirmation>,
    signatures: Vec<(PartyId, ByteBuf)>,
}

/// The threshold ECDSA DKG with this device as party 1 and `peers` (both cosigners, working at
/// once each round).
fn run_dkg(params: &DkgParams, peers: &mut [Peer<'_>], enrollment: Option<&[u8]>) -> Result<Made> {
    let wallet_id = params.wallet_id;
    let mut rng = rand_core::OsRng;
    let (local, hello) = dkg::start(EcdsaDkgParams::of(params), DEVICE, &mut rng)?;
    let starts = peers
        .iter()
        .map(|p| Request::DkgStart {
            params: params.clone(),
            me: p.party,
            enrollment: enrollment.map(|t| ByteBuf::from(t.to_vec())),
        })
        .collect();
    let mut hellos = vec![hello];
    hellos.extend(ask_all(peers, starts, |peer, answer| match answer {
        Response::EcdsaDkgHello { hello } => {
            from_peer(peer.party, hello.from, "hello")?;
            Ok(hello)
        }
        other => Err(unexpected("EcdsaDkgHello", &other)),
    })?);
    exchange(Ceremony::Dkg, wallet_id, local, &hellos, peers)
}

/// Which ceremony [`exchange`] relays: the requests and the last answer differ, the rounds not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ceremony {
    Dkg,
    Refresh,
}

impl Ceremony {
    fn hellos(self, wallet_id: WalletId, hellos: &[EcdsaHello]) -> Request {
        let hellos = hellos.to_vec();
        match self {
            Ceremony::Dkg => Request::EcdsaDkgHellos { wallet_id, hellos },
            Ceremony::Refresh => Request::EcdsaRefreshHellos { wallet_id, hellos },
        }
    }

    fn round(self, wallet_id: WalletId, messages: Vec<dkg::EcdsaRound>) -> Request {
        match self {
            Ceremony::Dkg => Request::EcdsaDkgRound {
                wallet_id,
                messages,
            },
            Ceremony::Refresh => Request::EcdsaRefreshRound {
                wallet_id,
                messages,
            },
        }
    }

    /// A cosigner's confirmation and its signature, from its last answer.
    fn confirmation(self, answer: Response) -> Result<(Confirmation, Option<ByteBuf>)> {
        match (self, answer) {
            (
                Ceremony::Dkg,
                Response::DkgRound3 {
                    confirmation,
                    signature,
                },
            )
            | (
                Ceremony::Refresh,
                Response::RefreshRound3 {
                    confirmation,
                    signature,
                },
            ) => Ok((confirmation, signature)),
            (Ceremony::Dkg, other) => Err(unexpected("DkgRound3", &other)),
            (Ceremony::Refresh, other) => Err(unexpected("RefreshRound3", &other)),
        }
    }
}

/// Rounds 1–3 and the confirmations of a DKG or refresh whose hellos (ours and the peers') are
/// in, this device being `local`.
fn exchange(
    kind: Ceremony,
    wallet_id: WalletId,
    mut local: dkg::EcdsaDkg,
    hellos: &[EcdsaHello],
    peers: &mut [Peer<'_>],
) -> Result<Made> {
    let mut rng = rand_core::OsRng;
    let mut round = vec![local.handle_hellos(hellos, &mut rng)?];
    let requests = peers
        .iter()
        .map(|_| kind.hellos(wallet_id, hellos))
        .collect();
    round.extend(relay_round(peers, requests)?);
    for _ in 1..3 {
        let RoundOutput::Next(ours) = local.handle_round(&round, &mut rng)? else {
            return Err(ClientError::Unexpected(
                "the ceremony confirmed early".into(),
            ));
        };
        let requests = round_requests(kind, wallet_id, peers, &round);
        round = vec![ours];
        round.extend(relay_round(peers, requests)?);
    }
    let RoundOutput::Confirm(ours) = local.handle_round(&round, &mut rng)? else {
        return Err(ClientError::Unexpected(
            "the ceremony did not end after round 3".into(),
        ));
    };
    let requests = round_requests(kind, wallet_id, peers, &round);
    let theirs = ask_all(peers, requests, |peer, answer| {
        let (confirmation, signature) = kind.confirmation(answer)?;
        from_peer(peer.party, confirmation.from, "confirmation")?;
        let signature = check_signed(&wallet_id, peer, &confirmation, signature)?;
        Ok((confirmation, signature.map(|s| (peer.party, s))))
    })?;
    let mut confirmations = vec![ours];
    let mut signatures = Vec::new();
    for (confirmation, signature) in theirs {
        confirmations.push(confirmation);
        signatures.extend(signature);
    }
    let output = local.handle_confirmations(&confirmations)?;
    Ok(Made {
        output,
        confirmations,
        signatures,
    })
}

/// Each peer's copy of a round: every party's message with only the sealed parts addressed to
/// that peer (a round-3 part is ~140 KB; the others' are no use to it).
fn round_requests(
    kind: Ceremony,
    wallet_id: WalletId,
    peers: &[Peer<'_>],
    round: &[dkg::EcdsaRound],
) -> Vec<Request> {
    peers
        .iter()
        .map(|peer| {
            let messages = round
                .iter()
                .map(|m| dkg::EcdsaRound {
                    sealed: m
                        .sealed
                        .iter()
                        .filter(|s| s.to == peer.party)
                        .cloned()
                        .collect(),
                    ..m.clone()
                })
                .collect();
            kind.round(wallet_id, messages)
        })
        .collect()
}

/// Sends each peer its request: their next round's messages.
fn relay_round(peers: &mut [Peer<'_>], requests: Vec<Request>) -> Result<Vec<dkg::EcdsaRound>> {
    ask_all(peers, requests, |peer, answer| match answer {
        Response::EcdsaDkgRound { message } => {
            from_peer(peer.party, message.from, "round message")?;
            Ok(message)
        }
        other => Err(unexpected("EcdsaDkgRound", &other)),
    })
}

/// Sends each peer its request, the cosigners working at once (`coordinator::call_all`), and
/// reads each answer with `read`, in peer order.
fn ask_all<T>(
    peers: &mut [Peer<'_>],
    requests: Vec<Request>,
    read: impl Fn(&Peer<'_>, Response) -> Result<T>,
) -> Result<Vec<T>> {
    let answers = call_all(peers, requests);
    peers
        .iter()
        .zip(answers)
        .map(|(peer, answer)| read(peer, answer?))
        .collect()
}

/// Sends `DkgConfirm` to a cosigner and checks it stored our public key.
fn confirm_at(session: &mut dyn Courier, confirm: &Request, wallet: &EthWalletFile) -> Result<()> {
    match session.call(confirm)? {
        Response::DkgDone { wallet: info }
            if info.group_public_key.as_slice() == wallet.public_key_bytes()? =>
        {
            Ok(())
        }
        Response::DkgDone { .. } => Err(ClientError::Protocol(
            cosigner_protocol::ProtocolError::Disagreement {
                reason: "a cosigner stored another public key".into(),
            },
        )),
        other => Err(unexpected("DkgDone", &other)),
    }
}

/// A transaction signed: what to broadcast, and the provider's receipt.
#[derive(Debug, Clone)]
pub struct EthSigned {
    /// The signed transaction (EIP-2718 encoding).
    pub raw_tx: Vec<u8>,
    /// Its hash.
    pub tx_hash: [u8; 32],
    /// The sender: the wallet's address.
    pub from: String,
    /// The provider's receipt (its audit entry of this signature, under its attested key).
    pub receipt: Option<Receipt>,
}

/// Refuses a transaction request whose `from` is not `wallet`'s address.
pub fn check_from(wallet: &EthWalletFile, request: &TxRequest) -> Result<()> {
    match request.from {
        Some(from) if checksummed(&from) != wallet.address => Err(ClientError::Input(format!(
            "the transaction's from ({}) is not wallet {}'s address {}",
            checksummed(&from),
            wallet.wallet_id,
            wallet.address
        ))),
        _ => Ok(()),
    }
}

/// Signs `request` (an `eth_signTransaction` object) with wallet `wallet_id`: this device and the
/// provider, two round trips.
pub fn sign(
    home: &Home,
    provider: &mut dyn Courier,
    wallet_id: WalletId,
    request: TxRequest,
) -> Result<EthSigned> {
    let wallet = home.eth_wallet(&wallet_id)?;
    check_from(&wallet, &request)?;
    let key = home.ecdsa_key(&wallet)?;
    let tx = request.tx;
    let hash = tx.signing_hash();
    let nonce: [u8; 32] = random()?;
    let signers = [DEVICE, PROVIDER];
    let id = sign::sign_id(&wallet_id, &signers, &nonce);
    let (mut signing, round1) = sign::start(&key, &signers, id, hash)?;
    let start = Request::EthSignStart {
        wallet_id,
        epoch: wallet.epoch,
        tx: ByteBuf::from(tx.signing_payload()),
        signers: signers.to_vec(),
        nonce: ByteBuf::from(nonce.to_vec()),
        round1,
    };
    let device_key = home.device_key()?;
    let answer =
        wallet::authorized_retrying(provider, wallet_id, KeyRole::Device, &device_key, &start)?;
    let Response::EthSignRound {
        session_id,
        round1: theirs1,
        round2: theirs2,
    } = answer
    else {
        return Err(unexpected("EthSignRound", &answer));
    };
    for m in [&theirs1, &theirs2] {
        from_peer(PROVIDER, m.from, "signing message")?;
    }
    let round2 = signing.round2(&key, &[theirs1])?;
    let round3 = signing.round3(&key, &[theirs2])?;
    let finish = Request::EthSignFinish {
        session_id,
        round2,
        round3,
    };
    let (theirs3, raw_tx, tx_hash, record) = match provider.call(&finish)? {
        Response::EthSigned {
            round3,
            raw_tx,
            tx_hash,
            receipt,
        } => (round3, raw_tx, tx_hash, receipt),
        other => return Err(unexpected("EthSigned", &other)),
    };
    from_peer(PROVIDER, theirs3.from, "signing message")?;
    // Assembled and verified against the wallet's key here too: the provider's transaction must
    // be byte for byte the one this device signs.
    let signature = finish_signature(signing, &key, theirs3)?;
    let signed = tx
        .into_signed(&signature)
        .map_err(|e| ClientError::Unexpected(e.to_string()))?;
    if signed.raw != raw_tx.as_slice() || signed.hash.as_slice() != tx_hash.as_slice() {
        return Err(ClientError::Unexpected(
            "the provider's signed transaction is not the one this device assembled".into(),
        ));
    }
    let expected = Expected {
        wallet_id: &wallet_id,
        action: SIGN_ETH,
        digest: &signed.hash,
        decision: "allowed",
    };
    let receipt = receipt_of(&*provider, &record, &expected)?;
    Ok(EthSigned {
        raw_tx: signed.raw,
        tx_hash: signed.hash,
        from: wallet.address,
        receipt,
    })
}

fn finish_signature(
    signing: sign::EcdsaSigning,
    key: &cosigner_protocol::ecdsa::EcdsaKey,
    theirs: EcdsaSignMessage,
) -> Result<cosigner_eth::RecoverableSignature> {
    let s = signing.finish(key, &[theirs])?;
    Ok(cosigner_eth::RecoverableSignature {
        r: s.r,
        s: s.s,
        y_parity: s.y_odd,
    })
}
