//! The ceremonies this device coordinates: wallet creation (DKG among A, B, C), signing (A + B),
//! refresh (A, B, C re-share at a new epoch) and recovery (B and C repair A's share onto a new
//! device, then everyone refreshes and the old device key is revoked).

use cosigner_protocol::auth::P256Signer;
use std::sync::Arc;

use cosigner_protocol::auth::{
    public_key_bytes, registration_digest_with, sign_digest, sign_request,
};
use cosigner_protocol::hd;
use cosigner_protocol::id::Epoch;
use cosigner_protocol::id::PartyId;
use cosigner_protocol::party::{DEVICE, PROVIDER, RECOVERY};
use cosigner_protocol::psbt::{OwnKeys, SpendSummary};
use cosigner_protocol::signing::{SignMessage, Signing, single_value};
use cosigner_protocol::wire::{
    self, DkgParams, ErrorKind, KeyRole, NextCommitment, RefreshParams, Registration, Request,
    Response, SUITE_SECP256K1_TR, WalletId, WalletInfo,
};
use frost_core::keys::{KeyPackage, PublicKeyPackage};
use p256::ecdsa::SigningKey;
use serde_bytes::ByteBuf;

use crate::address::{Network, p2tr_address, x_only};
use crate::coordinator::{self, Confirmed, KeygenRequests, Progress};
use crate::courier::Courier;
use crate::error::{ClientError, Result};
use crate::home::{Home, RecoveryKeyOut, WalletFile};
use crate::receipt::{Expected, Receipt, receipt_of};

/// The suite wallets use.
pub type Suite = frost_secp256k1_tr::Secp256K1Sha256TR;

pub(crate) fn unexpected(what: &str, got: &Response) -> ClientError {
    ClientError::Unexpected(format!("expected {what}, got {got:?}"))
}

fn internal(e: impl std::fmt::Display) -> ClientError {
    ClientError::Unexpected(e.to_string())
}

/// How often a request refused as busy (another session's ceremony or a concurrent write of the
/// same wallet; `ErrorKind::Busy`) is sent again, and the first pause between tries.
const BUSY_TRIES: u32 = 6;
const BUSY_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);

/// Runs `call` again while the cosigner answers busy (retryable, nothing changed), with a
/// doubling pause; any other answer is returned as it is.
fn retrying_busy<T>(mut call: impl FnMut() -> Result<T>) -> Result<T> {
    let mut pause = BUSY_PAUSE;
    for _ in 1..BUSY_TRIES {
        match call() {
            Err(ClientError::Remote(e)) if e.kind.is_retryable() => {
                std::thread::sleep(pause);
                pause = pause.saturating_mul(2);
            }
            other => return other,
        }
    }
    call()
}

/// [`authorized`], sent again while the cosigner answers busy (a fresh challenge each time).
pub fn authorized_retrying(
    session: &mut dyn Courier,
    wallet_id: WalletId,
    role: KeyRole,
    key: &dyn P256Signer,
    inner: &Request,
) -> Result<Response> {
    retrying_busy(|| authorized(session, wallet_id, role, key, inner))
}

/// [`authorized_retrying`], signed over `challenge` (the session's, asked earlier: see
/// [`challenges_meanwhile`]) when there is one, which saves the challenge's round trip. A
/// cosigner that answers busy, or refuses the signature (the challenge expired while an
/// earlier step took long), is asked again with fresh challenges: the requests sent so are
/// idempotent (a commit answers its success again).
pub(crate) fn authorized_under(
    session: &mut dyn Courier,
    (wallet_id, role, key): (WalletId, KeyRole, &dyn P256Signer),
    inner: &Request,
    challenge: Option<ByteBuf>,
) -> Result<Response> {
    if let Some(challenge) = challenge {
        match signed_call(
            session,
            (wallet_id, role, key),
            inner,
            Under::Challenge(&challenge),
            &mut || {},
        ) {
            Err(ClientError::Remote(e))
                if e.kind.is_retryable()
                    || e.kind == cosigner_protocol::wire::ErrorKind::Unauthorized => {}
            other => return other,
        }
    }
    authorized_retrying(session, wallet_id, role, key, inner)
}

/// A challenge of each cosigner for `wallet_id`, asked of both at once while `meanwhile` runs
/// (the requests are on the wire, the answers not yet read), for authorized requests that go
/// one after the other later ([`authorized_under`]). A cosigner that did not give one gets
/// `None` (its request then asks again).
pub(crate) fn challenges_meanwhile(
    provider: &mut dyn Courier,
    recovery: &mut dyn Courier,
    wallet_id: WalletId,
    meanwhile: &mut dyn FnMut(),
) -> [Option<ByteBuf>; 2] {
    let ask = Request::Challenge { wallet_id };
    let mut both = coordinator::cosigner_peers([provider, recovery]);
    let mut challenges =
        coordinator::call_all_meanwhile(&mut both, vec![ask.clone(), ask], meanwhile)
            .into_iter()
            .map(|answer| match answer {
                Ok(Response::Challenge { challenge }) => Some(challenge),
                _ => None,
            });
    [challenges.next().flatten(), challenges.next().flatten()]
}

/// [`authorized_retrying`] at several cosigners at once (`requests[i]` to `peers[i]`): their
/// challenges in one round ([`coordinator::call_all`]), then the signed requests in another.
/// A peer that answers busy is asked again on its own (a fresh challenge each time); if a
/// challenge fails, nothing else was sent and each peer is asked on its own, one after the other.
pub(crate) fn authorized_all(
    peers: &mut [coordinator::Peer<'_>],
    (wallet_id, role, key): (WalletId, KeyRole, &dyn P256Signer),
    requests: Vec<Request>,
) -> Vec<Result<Response>> {
    let asks = peers
        .iter()
        .map(|_| Request::Challenge { wallet_id })
        .collect();
    let challenges = coordinator::call_all(peers, asks)
        .into_iter()
        .map(|answer| match answer {
            Ok(Response::Challenge { challenge }) => Some(challenge),
            _ => None,
        })
        .collect();
    authorized_all_under(peers, (wallet_id, role, key), requests, challenges, false)
}

/// The second round of [`authorized_all`]: `requests[i]` signed over `challenges[i]`, sent to
/// `peers[i]` at once; without a challenge for every peer, each is asked on its own. `prefetched`:
/// the challenges were asked earlier (see [`challenges_meanwhile`]), so a refusal of the
/// signature (one expired meanwhile) is asked again, as busy answers are.
pub(crate) fn authorized_all_under(
    peers: &mut [coordinator::Peer<'_>],
    (wallet_id, role, key): (WalletId, KeyRole, &dyn P256Signer),
    requests: Vec<Request>,
    challenges: Vec<Option<ByteBuf>>,
    prefetched: bool,
) -> Vec<Result<Response>> {
    let signed: Vec<Option<Request>> = challenges
        .into_iter()
        .zip(&requests)
        .map(|(challenge, inner)| {
            let challenge = challenge?;
            authorized_request((wallet_id, role, key), inner, Under::Challenge(&challenge)).ok()
        })
        .collect();
    if signed.len() != requests.len() || !signed.iter().all(Option::is_some) {
        return peers
            .iter_mut()
            .zip(&requests)
            .map(|(peer, inner)| authorized_retrying(peer.courier, wallet_id, role, key, inner))
            .collect();
    }
    let mut answers = coordinator::call_all(peers, signed.into_iter().flatten().collect());
    for ((peer, answer), inner) in peers.iter_mut().zip(&mut answers).zip(&requests) {
        let again = matches!(answer, Err(ClientError::Remote(e))
            if e.kind.is_retryable()
                || (prefetched && e.kind == cosigner_protocol::wire::ErrorKind::Unauthorized));
        if again {
            *answer = authorized_retrying(peer.courier, wallet_id, role, key, inner);
        }
    }
    answers
}

/// Sends `inner` signed by `key` (as `role`) over a fresh challenge of this session.
pub fn authorized(
    session: &mut dyn Courier,
    wallet_id: WalletId,
    role: KeyRole,
    key: &dyn P256Signer,
    inner: &Request,
) -> Result<Response> {
    let challenge = match session.call(&Request::Challenge { wallet_id })? {
        Response::Challenge { challenge } => challenge,
        other => return Err(unexpected("Challenge", &other)),
    };
    signed_call(
        session,
        (wallet_id, role, key),
        inner,
        Under::Challenge(&challenge),
        &mut || {},
    )
}

/// What an authorized request's signature is made over: a fresh challenge of the session, or
/// the id of one of the cosigner's commitments.
enum Under<'a> {
    Challenge(&'a [u8]),
    Precommitment(&'a [u8]),
}

/// Sends `inner` signed by `key` (as `role`, for `wallet_id`) over `under`, running `meanwhile`
/// while the cosigner answers.
fn signed_call(
    session: &mut dyn Courier,
    (wallet_id, role, key): (WalletId, KeyRole, &dyn P256Signer),
    inner: &Request,
    under: Under<'_>,
    meanwhile: &mut dyn FnMut(),
) -> Result<Response> {
    let request = authorized_request((wallet_id, role, key), inner, under)?;
    session.call_overlapped(&request, meanwhile)
}

/// `inner` signed by `key` (as `role`, for `wallet_id`) over `under`, as it is sent.
fn authorized_request(
    (wallet_id, role, key): (WalletId, KeyRole, &dyn P256Signer),
    inner: &Request,
    under: Under<'_>,
) -> Result<Request> {
    let bytes = wire::encode(inner)?;
    let (Under::Challenge(challenge) | Under::Precommitment(challenge)) = under;
    let signature = ByteBuf::from(sign_request(key, &wallet_id, challenge, &bytes)?.to_vec());
    let request = ByteBuf::from(bytes);
    Ok(match under {
        Under::Challenge(_) => Request::Authorized {
            wallet_id,
            role,
            signature,
            request,
        },
        Under::Precommitment(id) => Request::Precommitted {
            wallet_id,
            role,
            precommitment: ByteBuf::from(id.to_vec()),
            signature,
            request,
        },
    })
}

/// Sends `inner` signed by `key` over the cosigner's commitment `under` (one round trip, running
/// `meanwhile` while the cosigner answers) or, without one, over a fresh challenge (two).
fn signed_once(
    courier: &mut dyn Courier,
    (wallet_id, role, key): (WalletId, KeyRole, &dyn P256Signer),
    inner: &Request,
    under: Option<&[u8]>,
    meanwhile: &mut dyn FnMut(),
) -> Result<Response> {
    match under {
        Some(id) => signed_call(
            courier,
            (wallet_id, role, key),
            inner,
            Under::Precommitment(id),
            meanwhile,
        ),
        None => authorized(courier, wallet_id, role, key, inner),
    }
}

/// Where `create` put the recovery credential.
#[derive(Debug, Clone)]
pub struct Created {
    /// The wallet.
    pub wallet: WalletFile,
    /// The recovery credential's file; `None` when it is kept sealed in the home
    /// ([`RecoveryKeyOut::Sealed`], [`Home::recovery_key`]).
    pub recovery_key_path: Option<std::path::PathBuf>,
}

/// Creates a 2-of-3 wallet: this device (A), the provider (B) and the recovery cosigner (C).
/// Registers this device's key and a new recovery credential, written to `recovery_key_out`
/// (a file's path, or [`RecoveryKeyOut::Sealed`]). Finishes instead a creation an earlier run
/// left unconfirmed ([`create_with`]).
pub fn create<'a>(
    home: &Home,
    provider: &mut dyn Courier,
    recovery: &mut dyn Courier,
    network: Network,
    recovery_key_out: impl Into<RecoveryKeyOut<'a>>,
) -> Result<Created> {
    create_with_policy(home, provider, recovery, network, recovery_key_out, None)
}

/// [`create`] with a spending policy (TOML, see `cosigner_protocol::policy`; its one member is
/// `owner`, this device). The policy and the network are registered with both cosigners inside
/// what both keys sign, so nobody in between can swap them; from then on the cosigners sign
/// only PSBTs the policy allows, and the device key alone can never change it.
pub fn create_with_policy<'a>(
    home: &Home,
    provider: &mut dyn Courier,
    recovery: &mut dyn Courier,
    network: Network,
    recovery_key_out: impl Into<RecoveryKeyOut<'a>>,
    policy: Option<&str>,
) -> Result<Created> {
    create_with(
        home,
        provider,
        recovery,
        network,
        recovery_key_out,
        &CreateOptions {
            policy,
            enrollment: None,
        },
    )
}

/// What a wallet is created with, beyond the defaults.
#[derive(Debug, Clone, Copy, Default)]
pub struct CreateOptions<'a> {
    /// A spending policy (see [`create_with_policy`]).
    pub policy: Option<&'a str>,
    /// The operator's enrollment token (bytes), for a provider that requires one.
    pub enrollment: Option<&'a [u8]>,
}

/// The journal of a creation whose registration was sent but not confirmed by both cosigners:
/// rerunning `wallet create` finishes it (`DIR/wallets/<id>.creating`).
const CREATING: &str = "creating";

#[derive(serde::Serialize, serde::Deserialize)]
struct CreationJournal {
    /// Where the recovery credential was written: a file, or (`None`) sealed in the home.
    recovery_key_out: Option<std::path::PathBuf>,
    /// The `DkgConfirm` request, CBOR (hex).
    confirm: String,
}

/// [`create`] with [`CreateOptions`]. Idempotent and resumable: nothing is registered with any
/// cosigner before this home holds the share, the wallet file and the recovery credential, and
/// a creation whose confirmation did not reach both cosigners is finished by the next call
/// (which returns that wallet instead of making a new one).
pub fn create_with<'a>(
    home: &Home,
    provider: &mut dyn Courier,
    recovery: &mut dyn Courier,
    network: Network,
    recovery_key_out: impl Into<RecoveryKeyOut<'a>>,
    options: &CreateOptions<'_>,
) -> Result<Created> {
    create_observed(
        home,
        provider,
        recovery,
        network,
        recovery_key_out.into(),
        options,
        &mut |_| {},
    )
}

/// The steps of a wallet creation, reported to an observer (tests interrupt it at each one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateStep {
    /// Every party sent its round-1 broadcast.
    Round1,
    /// Every party sent its sealed packages.
    Round2,
    /// Every party confirmed the same transcript and key.
    Round3,
    /// This home holds the share, the wallet file, the recovery credential and the journal.
    Kept,
    /// The provider registered the wallet.
    ProviderRegistered,
    /// The recovery cosigner registered the wallet.
    RecoveryRegistered,
}

/// The registration of a new wallet's keys: the device key and the recovery credential, each
/// signing this wallet's DKG transcript, its policy and network, and the provider's attested key.
pub(crate) fn registration(
    home: &Home,
    recovery_key: &dyn P256Signer,
    wallet_id: &WalletId,
    transcript_hash: &[u8; 32],
    policy: Option<&str>,
    network: &str,
    attested: [Option<&[u8]>; 2],
) -> Result<Registration> {
    let [provider_key, recovery_cosigner_key] = attested;
    let device_key = home.device_key()?;
    let (device_pub, recovery_pub) = (
        public_key_bytes(&device_key),
        public_key_bytes(recovery_key),
    );
    let digest = registration_digest_with(
        wallet_id,
        transcript_hash,
        &device_pub,
        &recovery_pub,
        policy,
        Some(network),
    );
    Ok(Registration {
        device_key: ByteBuf::from(device_pub),
        recovery_key: ByteBuf::from(recovery_pub),
        device_signature: ByteBuf::from(sign_digest(&device_key, &digest)?.to_vec()),
        recovery_signature: ByteBuf::from(sign_digest(recovery_key, &digest)?.to_vec()),
        policy: policy.map(str::to_owned),
        network: Some(network.to_owned()),
        // The provider's attested audit key: the recovery cosigner will commit refreshed epochs
        // only with the provider's receipt under it.
        provider_key: provider_key.map(|k| ByteBuf::from(k.to_vec())),
        // And the recovery cosigner's: the provider will commit refreshes only with the recovery
        // cosigner's confirmation signed under it.
        recovery_cosigner_key: recovery_cosigner_key.map(|k| ByteBuf::from(k.to_vec())),
    })
}

/// Refuses a creation before any ceremony: a policy the cosigners would refuse, or a recovery
/// credential file that exists (never overwritten).
fn check_creation(home: &Home, policy: Option<&str>, out: RecoveryKeyOut<'_>) -> Result<()> {
    if let Some(text) = policy {
        crate::psbt_sign::check_policy(home, cosigner_protocol::policy::Chain::Bitcoin, text)?;
    }
    out.check()
}

/// Runs a key-making ceremony (`coordinator::run`) with this device as its first party and the
/// two cosigners of a personal wallet, `[provider, recovery]`, as the peers.
fn with_cosigners<P: KeygenRequests>(
    params: &P,
    old: P::Old<Suite>,
    [provider, recovery]: [&mut dyn Courier; 2],
    start: &mut coordinator::Start<'_>,
    progress: &mut dyn FnMut(Progress),
) -> Result<Confirmed> {
    let mut peers = coordinator::cosigner_peers([provider, recovery]);
    coordinator::run(params, DEVICE, old, &mut peers, start, progress)
}

fn create_step(progress: Progress) -> CreateStep {
    match progress {
        Progress::Round1 => CreateStep::Round1,
        Progress::Round2 => CreateStep::Round2,
        _ => CreateStep::Round3,
    }
}

fn refresh_step(progress: Progress) -> RefreshStep {
    match progress {
        Progress::Round1 => RefreshStep::Round1,
        Progress::Round2 => RefreshStep::Round2,
        _ => RefreshStep::Round3,
    }
}

/// [`create_with`], reporting each step to `observe`.
pub fn create_observed(
    home: &Home,
    provider: &mut dyn Courier,
    recovery: &mut dyn Courier,
    network: Network,
    recovery_key_out: RecoveryKeyOut<'_>,
    options: &CreateOptions<'_>,
    observe: &mut dyn FnMut(CreateStep),
) -> Result<Created> {
    if let Some(created) = finish_creation(home, provider, recovery)? {
        return Ok(created);
    }
    let policy = options.policy;
    check_creation(home, policy, recovery_key_out)?;
    let id: [u8; 16] = random()?;
    let wallet_id = WalletId(id);
    let params = DkgParams {
        wallet_id,
        ciphersuite: SUITE_SECP256K1_TR.to_owned(),
        min_signers: 2,
        parties: vec![DEVICE, PROVIDER, RECOVERY],
    };
    let mut rng = rand_core::OsRng;
    let enrollment = options.enrollment.map(|t| ByteBuf::from(t.to_vec()));
    let mut start = |peers: &mut [coordinator::Peer<'_>]| {
        let requests = peers
            .iter()
            .map(|peer| Request::DkgStart {
                params: params.clone(),
                me: peer.party,
                enrollment: enrollment.clone(),
            })
            .collect();
        coordinator::call_all(peers, requests)
    };
    let confirmed = with_cosigners(
        &params,
        (),
        [&mut *provider, &mut *recovery],
        &mut start,
        &mut |p| observe(create_step(p)),
    )?;
    let output = &confirmed.output;
    let recovery_key = SigningKey::random(&mut rng);
    let registration = registration(
        home,
        &recovery_key,
        &wallet_id,
        &output.transcript_hash,
        policy,
        network.name(),
        [provider.attested_key(), recovery.attested_key()],
    )?;
    let confirm = Request::DkgConfirm {
        wallet_id,
        confirmations: confirmed.confirmations.clone(),
        registration,
        confirmation_signatures: confirmed.signatures.clone(),
    };
    // Everything this device must keep is durable before any cosigner registers the wallet: a
    // full disk or a kill here leaves nothing registered (the cosigners' DKG state expires).
    let wallet = wallet_file(
        wallet_id,
        DEVICE,
        &params.parties,
        params.min_signers,
        Epoch(0),
        &output.public_key_package,
        network,
    )?;
    let share = zeroize::Zeroizing::new(output.key_package.serialize().map_err(internal)?);
    keep_creation(
        home,
        &wallet,
        &share,
        &recovery_key,
        recovery_key_out,
        &confirm,
    )?;
    observe(CreateStep::Kept);
    // The provider first: if it refuses outright, nobody registered anything and nothing is
    // kept; once it registered, the journal stays until the recovery cosigner did too. (Not both
    // at once: a provider that fails while the recovery cosigner registers would leave a wallet
    // only the recovery cosigner knows, which a rerun can neither finish nor safely forget.)
    if let Err(e) = confirm_at(provider, &confirm, &wallet) {
        if never_registered(&e) && unknown_at(provider, wallet_id) {
            discard_creation(home, &wallet_id, recovery_key_out);
        }
        return Err(e);
    }
    observe(CreateStep::ProviderRegistered);
    confirm_at(recovery, &confirm, &wallet).map_err(|e| unfinished(home, wallet_id, e))?;
    observe(CreateStep::RecoveryRegistered);
    home.remove_journal(&wallet_id, CREATING)?;
    Ok(Created {
        wallet,
        recovery_key_path: recovery_key_out.path(),
    })
}

/// Keeps what this device needs of a new wallet (recovery credential, wallet file and share, the
/// creation journal with the `DkgConfirm` to send) before any cosigner registers it; on a
/// failure, leaves nothing behind that would refuse a retry.
fn keep_creation(
    home: &Home,
    wallet: &WalletFile,
    share: &[u8],
    recovery_key: &SigningKey,
    recovery_key_out: RecoveryKeyOut<'_>,
    confirm: &Request,
) -> Result<()> {
    let wallet_id = wallet.wallet_id;
    let journal = CreationJournal {
        recovery_key_out: recovery_key_out.path(),
        confirm: hex::encode(wire::encode(confirm)?),
    };
    let kept = recovery_key_out
        .write(home, &wallet_id, recovery_key)
        .and_then(|()| home.save_wallet(wallet, share))
        .and_then(|()| {
            let bytes = serde_json::to_vec(&journal).map_err(internal)?;
            home.save_journal(&wallet_id, CREATING, &bytes)
        });
    if kept.is_err() {
        discard_creation(home, &wallet_id, recovery_key_out);
    }
    kept
}

/// Removes what a creation kept (credential, wallet files, journal), best effort: only when no
/// cosigner registered the wallet.
fn discard_creation(home: &Home, wallet_id: &WalletId, recovery_key_out: RecoveryKeyOut<'_>) {
    recovery_key_out.discard(home, wallet_id);
    let _ = home.forget_wallet(wallet_id);
    let _ = home.remove_journal(wallet_id, CREATING);
}

/// Sends `DkgConfirm` to a cosigner (it answers the same `DkgDone` again if it already
/// registered the wallet) and checks it stored our public key package.
fn confirm_at(session: &mut dyn Courier, confirm: &Request, wallet: &WalletFile) -> Result<()> {
    let ours = wallet.public_key_package.serialize().map_err(internal)?;
    match session.call(confirm)? {
        Response::DkgDone { wallet } if wallet.public_key_package.as_ref() == ours.as_slice() => {
            Ok(())
        }
        Response::DkgDone { .. } => Err(ClientError::Protocol(
            cosigner_protocol::ProtocolError::Disagreement {
                reason: "a cosigner stored another public key package".into(),
            },
        )),
        other => Err(unexpected("DkgDone", &other)),
    }
}

/// Whether `session`'s cosigner answers that it does not know `wallet_id` at all (not a
/// connection failure, which proves nothing).
pub(crate) fn unknown_at(session: &mut dyn Courier, wallet_id: WalletId) -> bool {
    use cosigner_protocol::wire::ErrorKind;
    matches!(
        provider_view(session, wallet_id),
        Err(ClientError::Remote(w)) if w.kind == ErrorKind::NotFound
    )
}

/// Whether the provider's answer to a `DkgConfirm` proves it did not register the wallet (it
/// refused the registration, or holds no such DKG): only then may the home's files go. Any other
/// failure (integrity, internal, connection) may hide a registration.
pub(crate) fn never_registered(e: &ClientError) -> bool {
    use cosigner_protocol::wire::ErrorKind;
    matches!(e, ClientError::Remote(w) if matches!(w.kind, ErrorKind::NotFound | ErrorKind::BadRequest | ErrorKind::Unauthorized))
}

/// The error of a creation the provider registered but the recovery cosigner did not (yet):
/// retryable by running `wallet create` again, unless the recovery cosigner lost the DKG.
fn unfinished(home: &Home, wallet_id: WalletId, e: ClientError) -> ClientError {
    match e {
        ClientError::Remote(w) if w.kind == cosigner_protocol::wire::ErrorKind::NotFound => {
            let _ = home.remove_journal(&wallet_id, CREATING);
            ClientError::Input(format!(
                "wallet {wallet_id} is registered at the provider but the recovery cosigner no \
                 longer holds its DKG ({}): it cannot be finished; create a new wallet",
                w.message
            ))
        }
        ClientError::Remote(w) => ClientError::Input(format!(
            "wallet {wallet_id} is registered at the provider, not yet at the recovery \
             cosigner ({w}): run `cosigner wallet create` again to finish it"
        )),
        other => other,
    }
}

/// Finishes a creation an earlier run left unconfirmed (see [`CREATING`]). `None`: none.
fn finish_creation(
    home: &Home,
    provider: &mut dyn Courier,
    recovery: &mut dyn Courier,
) -> Result<Option<Created>> {
    let Some((wallet_id, bytes)) = home.journals(CREATING)?.into_iter().next() else {
        return Ok(None);
    };
    let journal: CreationJournal = serde_json::from_slice(&bytes)
        .map_err(|e| ClientError::Input(format!("creation journal of {wallet_id}: {e}")))?;
    let confirm: Request = hex::decode(&journal.confirm)
        .map_err(internal)
        // Written by this or an earlier wire version: a journal outlives an upgrade.
        .and_then(|b| Ok(wire::decode_stored(&b)?))?;
    let wallet = home.wallet(&wallet_id)?;
    let created = Some(Created {
        wallet: wallet.clone(),
        recovery_key_path: journal.recovery_key_out.clone(),
    });
    // Whoever already holds the wallet is not asked again (its DkgDone may just have been lost,
    // and the wallet may have moved on since): only a cosigner that does not know it is.
    let known = |session: &mut dyn Courier| provider_view(session, wallet_id).is_ok();
    if !known(provider)
        && let Err(e) = confirm_at(provider, &confirm, &wallet)
    {
        if never_registered(&e) && unknown_at(provider, wallet_id) {
            // Never registered, and can no longer be (the provider lost the DKG): nothing to
            // finish; this run creates a new wallet instead.
            discard_creation(
                home,
                &wallet_id,
                RecoveryKeyOut::of(journal.recovery_key_out.as_ref()),
            );
            return Ok(None);
        }
        return Err(e);
    }
    if !known(recovery) {
        confirm_at(recovery, &confirm, &wallet).map_err(|e| unfinished(home, wallet_id, e))?;
    }
    home.remove_journal(&wallet_id, CREATING)?;
    Ok(created)
}

pub(crate) fn random<const N: usize>() -> Result<[u8; N]> {
    use rand_core::RngCore;
    let mut out = [0u8; N];
    rand_core::OsRng
        .try_fill_bytes(&mut out)
        .map_err(internal)?;
    Ok(out)
}

/// The public file of a wallet where this device holds `party`.
pub(crate) fn wallet_file(
    wallet_id: WalletId,
    party: PartyId,
    parties: &[PartyId],
    min_signers: u16,
    epoch: Epoch,
    pkp: &PublicKeyPackage<Suite>,
    network: Network,
) -> Result<WalletFile> {
    let group = pkp.verifying_key().serialize().map_err(internal)?;
    let xonly = x_only(&group)?;
    Ok(WalletFile {
        wallet_id,
        ciphersuite: SUITE_SECP256K1_TR.to_owned(),
        group_public_key: xonly,
        address: p2tr_address(&xonly, network)?,
        network,
        party,
        min_signers,
        parties: parties.to_vec(),
        epoch,
        public_key_package: pkp.clone(),
        dao: None,
    })
}

fn load(
    home: &Home,
    wallet_id: &WalletId,
) -> Result<(WalletFile, KeyPackage<Suite>, PublicKeyPackage<Suite>)> {
    let wallet = home.wallet(wallet_id)?;
    let (key_package, public_key_package) = keys(home, wallet_id, &wallet)?;
    Ok((wallet, key_package, public_key_package))
}

/// This device's share of `wallet` and the wallet's public key package.
fn keys(
    home: &Home,
    wallet_id: &WalletId,
    wallet: &WalletFile,
) -> Result<(KeyPackage<Suite>, PublicKeyPackage<Suite>)> {
    Ok((
        home.key_package(wallet_id)?,
        wallet.public_key_package.clone(),
    ))
}

/// A PSBT signed in one round: a BIP-340 signature per input (checked), the cosigner's reading of
/// the PSBT and its receipt of the spend.
pub(crate) struct PsbtSignedNow {
    pub(crate) signatures: Vec<[u8; 64]>,
    pub(crate) evaluation: cosigner_protocol::wire::PsbtEvaluation,
    pub(crate) receipt: ByteBuf,
}

/// The two parties of a personal wallet's signature: this device (its share) and a cosigner
/// (`them`): [`TwoParty::sign_now`] for a message, [`TwoParty::sign_psbt_now`] for a PSBT.
pub(crate) struct TwoParty {
    /// The wallet signed with.
    pub(crate) wallet: WalletFile,
    key_package: KeyPackage<Suite>,
    public_key_package: PublicKeyPackage<Suite>,
    them: PartyId,
}

impl TwoParty {
    /// This device's keys of `wallet` (`wallet_id`), signing with `cosigner`.
    pub(crate) fn new(
        home: &Home,
        wallet_id: &WalletId,
        wallet: WalletFile,
        cosigner: &CoSigner<'_>,
    ) -> Result<Self> {
        let (key_package, public_key_package) = keys(home, wallet_id, &wallet)?;
        Ok(Self {
            wallet,
            key_package,
            public_key_package,
            them: cosigner.party(),
        })
    }

    /// The signers, this device first.
    pub(crate) fn signers(&self) -> [PartyId; 2] {
        [DEVICE, self.them]
    }
}

/// A signature and the cosigner's receipt for it.
#[derive(Debug, Clone)]
pub struct Signed {
    /// The BIP-340 signature, verified.
    pub signature: [u8; 64],
    /// The cosigner's signed audit entry of it with its attestation document (checked against
    /// the attested key), when the courier attested one.
    pub receipt: Option<Receipt>,
}

impl TwoParty {
    /// Signs one message with the cosigner (`SignNow`): one round trip when it handed out a
    /// commitment on this courier, two otherwise (a fresh challenge first). A commitment the
    /// cosigner no longer holds (used, replaced, a restart) falls back to two, with fresh nonces
    /// of ours: ours are never sent twice.
    pub(crate) fn sign_now(
        &self,
        courier: &mut dyn Courier,
        authorizer: (KeyRole, &dyn P256Signer),
        message: &[u8; 32],
    ) -> Result<Signed> {
        let wallet_id = self.wallet.wallet_id;
        if let Some(next) = courier.take_commitment(&wallet_id, self.wallet.epoch) {
            match self.one_round(courier, authorizer, message, Some(next)) {
                Err(ClientError::Remote(e)) if e.kind == ErrorKind::NotFound => {}
                other => return other,
            }
        }
        self.one_round(courier, authorizer, message, None)
    }

    fn one_round(
        &self,
        courier: &mut dyn Courier,
        (role, key): (KeyRole, &dyn P256Signer),
        message: &[u8; 32],
        used: Option<NextCommitment>,
    ) -> Result<Signed> {
        let wallet_id = self.wallet.wallet_id;
        let (mut signing, ours) = Signing::<Suite>::start(
            vec![(DEVICE, self.key_package.clone())],
            &self.signers(),
            vec![message.to_vec()],
            &mut rand_core::OsRng,
        )?;
        let request = Request::SignNow {
            wallet_id,
            epoch: self.wallet.epoch,
            message: ByteBuf::from(message.to_vec()),
            signers: self.signers().to_vec(),
            commitments: ByteBuf::from(
                single_value(ours)
                    .ok_or_else(|| internal("the signing engine committed nothing"))?,
            ),
        };
        // With the cosigner's commitment known ahead, the signing package is too: our share is
        // computed while the cosigner computes its own.
        let mut early = None;
        if let Some(next) = &used {
            signing.absorb(&SignMessage::Commitments {
                party: self.them,
                commitments: vec![next.commitments.to_vec()],
            })?;
        }
        let ahead = used.is_some();
        let mut meanwhile = || {
            if ahead {
                early = Some(signing.advance().map(drop));
            }
        };
        let under = used.as_ref().map(|n| n.id.as_slice());
        let answer = signed_once(
            courier,
            (wallet_id, role, key),
            &request,
            under,
            &mut meanwhile,
        )?;
        let Response::SignedNow {
            commitments,
            share,
            receipt,
            next,
        } = answer
        else {
            return Err(unexpected("SignedNow", &answer));
        };
        if used.is_some_and(|u| u.commitments != commitments) {
            return Err(ClientError::Unexpected(
                "the cosigner signed with another commitment than the one it handed out".into(),
            ));
        }
        if let Some(next) = next.filter(|n| n.wallet_id == wallet_id) {
            courier.keep_commitment(next);
        }
        match early {
            Some(advanced) => advanced?,
            None => {
                signing.absorb(&SignMessage::Commitments {
                    party: self.them,
                    commitments: vec![commitments.into_vec()],
                })?;
                signing.advance()?;
            }
        }
        signing.absorb(&SignMessage::Shares {
            party: self.them,
            shares: vec![share.into_vec()],
        })?;
        let signatures = signing.signatures(&self.public_key_package)?;
        let signature = self
            .verified(signatures, &[*message])?
            .pop()
            .unwrap_or([0; 64]);
        let expected = Expected {
            wallet_id: &wallet_id,
            action: "sign",
            digest: message,
            decision: "allowed",
        };
        let receipt = receipt_of(&*courier, &receipt, &expected)?;
        Ok(Signed { signature, receipt })
    }

    /// Signs every input of `psbt` (its `sighashes`, in input order) with the cosigner in one
    /// round trip (`SignPsbtNow` under the cosigner's commitment handed out on this courier;
    /// two round trips, a challenge first, without one). The cosigner evaluates the PSBT and its
    /// policy, records the spend and answers its commitments and shares at once.
    pub(crate) fn sign_psbt_now(
        &self,
        courier: &mut dyn Courier,
        authorizer: (KeyRole, &dyn P256Signer),
        psbt: &[u8],
        read: (&SpendSummary, &OwnKeys),
    ) -> Result<PsbtSignedNow> {
        let wallet_id = self.wallet.wallet_id;
        if let Some(next) = courier.take_commitment(&wallet_id, self.wallet.epoch) {
            match self.psbt_round(courier, authorizer, psbt, read, Some(&next.id)) {
                Err(ClientError::Remote(e)) if e.kind == ErrorKind::NotFound => {}
                other => return other,
            }
        }
        self.psbt_round(courier, authorizer, psbt, read, None)
    }

    fn psbt_round(
        &self,
        courier: &mut dyn Courier,
        (role, key): (KeyRole, &dyn P256Signer),
        psbt: &[u8],
        (summary, keys): (&SpendSummary, &OwnKeys),
        under: Option<&[u8]>,
    ) -> Result<PsbtSignedNow> {
        let wallet_id = self.wallet.wallet_id;
        let sighashes = &summary.sighashes;
        let paths = &summary.input_paths;
        let messages = sighashes.iter().map(|h| h.to_vec()).collect();
        // Each input is signed with the key package of the key it spends (the wallet's own, or a
        // child's: `cosigner_protocol::hd`), as the provider does from its own reading.
        let key_packages = hd::key_packages_for(&wallet_id, &self.key_package, paths)?;
        let (mut signing, ours) = Signing::<Suite>::start_each(
            vec![(DEVICE, key_packages)],
            &self.signers(),
            messages,
            &mut rand_core::OsRng,
        )?;
        let Some(SignMessage::Commitments { commitments, .. }) = ours.into_iter().next() else {
            return Err(internal("the signing engine committed nothing"));
        };
        let request = Request::SignPsbtNow {
            wallet_id,
            epoch: self.wallet.epoch,
            psbt: ByteBuf::from(psbt.to_vec()),
            signers: self.signers().to_vec(),
            commitments: commitments.into_iter().map(ByteBuf::from).collect(),
        };
        let answer = signed_once(courier, (wallet_id, role, key), &request, under, &mut || {})?;
        let Response::SignedPsbtNow {
            commitments,
            shares,
            evaluation,
            receipt,
            next,
        } = answer
        else {
            return Err(unexpected("SignedPsbtNow", &answer));
        };
        if let Some(next) = next.filter(|n| n.wallet_id == wallet_id) {
            courier.keep_commitment(next);
        }
        let bytes = |v: Vec<ByteBuf>| v.into_iter().map(ByteBuf::into_vec).collect();
        signing.absorb(&SignMessage::Commitments {
            party: self.them,
            commitments: bytes(commitments),
        })?;
        signing.advance()?;
        signing.absorb(&SignMessage::Shares {
            party: self.them,
            shares: bytes(shares),
        })?;
        let public = hd::public_key_packages_for(&wallet_id, &self.public_key_package, paths)?;
        let signatures = signing
            .signatures_each(&public)?
            .into_iter()
            .zip(sighashes.iter().zip(paths))
            .map(|(signature, (sighash, path))| {
                let key = keys.output_key(*path)?.serialize();
                verified_with(&key, signature, sighash)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(PsbtSignedNow {
            signatures,
            evaluation,
            receipt,
        })
    }

    /// The 64-byte signatures, each checked by an independent BIP-340 verifier.
    fn verified(&self, signatures: Vec<Vec<u8>>, messages: &[[u8; 32]]) -> Result<Vec<[u8; 64]>> {
        signatures
            .into_iter()
            .zip(messages)
            .map(|(signature, message)| {
                verified_with(&self.wallet.group_public_key, signature, message)
            })
            .collect()
    }
}

/// A 64-byte signature of `message` by `key` (x-only), checked by an independent BIP-340
/// verifier.
fn verified_with(key: &[u8; 32], signature: Vec<u8>, message: &[u8; 32]) -> Result<[u8; 64]> {
    let signature: [u8; 64] = signature
        .try_into()
        .map_err(|_| internal("signature is not 64 bytes"))?;
    verify_bip340(key, message, &signature)?;
    Ok(signature)
}

/// Which cosigner signs with this device, and under which key.
#[derive(Debug, Clone, Copy)]
pub enum CoSigner<'a> {
    /// The provider, authorized by this device's key (the everyday case).
    Provider,
    /// The recovery cosigner, authorized by the offline recovery credential (the provider is
    /// unreachable): it never co-signs on the device key alone.
    Recovery(&'a SigningKey),
}

impl CoSigner<'_> {
    /// The cosigner's party number.
    pub fn party(&self) -> PartyId {
        match self {
            Self::Provider => PROVIDER,
            Self::Recovery(_) => RECOVERY,
        }
    }

    /// The key and role that authorize the request.
    pub(crate) fn authorizer(&self, home: &Home) -> Result<(KeyRole, Arc<dyn P256Signer>)> {
        Ok(match self {
            Self::Provider => (KeyRole::Device, Arc::new(home.device_key()?)),
            Self::Recovery(key) => (KeyRole::Recovery, Arc::new((*key).clone())),
        })
    }
}

/// Signs a 32-byte message with this device and the provider; returns the verified 64-byte
/// BIP-340 signature.
pub fn sign(
    home: &Home,
    provider: &mut dyn Courier,
    wallet_id: WalletId,
    message: &[u8; 32],
) -> Result<[u8; 64]> {
    sign_with_receipt(home, provider, CoSigner::Provider, wallet_id, message).map(|s| s.signature)
}

/// Signs a 32-byte message with this device and `cosigner` (reached through `provider`): the
/// verified signature and the cosigner's receipt. One round trip per signature once
/// the cosigner handed out a commitment on this courier (every answer carries the next one),
/// two for the first.
pub fn sign_with_receipt(
    home: &Home,
    provider: &mut dyn Courier,
    cosigner: CoSigner<'_>,
    wallet_id: WalletId,
    message: &[u8; 32],
) -> Result<Signed> {
    let two = TwoParty::new(home, &wallet_id, home.wallet(&wallet_id)?, &cosigner)?;
    let (role, authorizer) = cosigner.authorizer(home)?;
    two.sign_now(provider, (role, &authorizer), message)
}

/// Checks a BIP-340 signature with code independent of FROST's own verifier (k256).
pub fn verify_bip340(x_only: &[u8; 32], message: &[u8; 32], signature: &[u8; 64]) -> Result<()> {
    let key = k256::schnorr::VerifyingKey::from_bytes(x_only)
        .map_err(|e| ClientError::Input(format!("group key: {e}")))?;
    let sig = k256::schnorr::Signature::try_from(signature.as_slice())
        .map_err(|e| internal(format!("signature: {e}")))?;
    key.verify_raw(message, &sig)
        .map_err(|_| internal("aggregated signature does not verify (BIP-340)"))
}

/// Public facts from a cosigner.
pub fn provider_view(provider: &mut dyn Courier, wallet_id: WalletId) -> Result<WalletInfo> {
    match provider.call(&Request::GetWallet { wallet_id })? {
        Response::Wallet { wallet } => Ok(wallet),
        other => Err(unexpected("Wallet", &other)),
    }
}

/// What the provider and the recovery cosigner each say of the wallet.
fn views(
    provider: &mut dyn Courier,
    recovery: &mut dyn Courier,
    wallet_id: WalletId,
) -> Result<(WalletInfo, WalletInfo)> {
    let ask = Request::GetWallet { wallet_id };
    let mut both = crate::coordinator::cosigner_peers([provider, recovery]);
    let mut views = crate::coordinator::call_all(&mut both, vec![ask.clone(), ask])
        .into_iter()
        .map(|answer| match answer? {
            Response::Wallet { wallet } => Ok(wallet),
            other => Err(unexpected("Wallet", &other)),
        });
    match (views.next(), views.next()) {
        (Some(provider), Some(recovery)) => Ok((provider?, recovery?)),
        _ => Err(internal("two cosigners asked, fewer answers")),
    }
}

/// The steps of a refresh, reported to an observer (tests interrupt a refresh at each one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshStep {
    /// Every party sent its round-1 broadcast.
    Round1,
    /// Every party sent its sealed packages.
    Round2,
    /// Every party prepared its new share and confirmed.
    Round3,
    /// The provider committed the new epoch.
    ProviderCommitted,
    /// The recovery cosigner committed the new epoch.
    RecoveryCommitted,
    /// This device switched to the new share.
    DeviceCommitted,
    /// Older shares were deleted everywhere.
    Finalized,
}

/// Refreshes every party's share to the next epoch (same group key and address). Every party must
/// take part: a refresh never evicts anyone. The old epoch stays usable until all have committed.
pub fn refresh(
    home: &Home,
    provider: &mut dyn Courier,
    recovery: &mut dyn Courier,
    wallet_id: WalletId,
    observe: &mut dyn FnMut(RefreshStep),
) -> Result<WalletFile> {
    let (wallet, key_package, pkp) = load(home, &wallet_id)?;
    // A refresh that committed at the cosigners before this device switched over (a crash or a
    // kill after the commits) is finished, not redone.
    let device_key = home.device_key()?;
    let aligned = roll_forward(provider, recovery, wallet_id, &device_key)?;
    if let Some(done) = resume(home, &wallet, &aligned.provider)? {
        // The session that committed is gone: the device key finalizes, so the retired epoch
        // cannot sign on at the cosigners.
        finalize_signed(provider, recovery, wallet_id, done.epoch, &device_key)?;
        return Ok(done);
    }
    let old = (key_package, pkp);
    refresh_from(
        home,
        [provider, recovery],
        wallet,
        old,
        &aligned,
        observe,
        None,
    )
}

/// `RefreshFinalize` of `epoch` at both cosigners, signed by the device key (from any session):
/// every older epoch is deleted there. Idempotent.
pub(crate) fn finalize_signed(
    provider: &mut dyn Courier,
    recovery: &mut dyn Courier,
    wallet_id: WalletId,
    epoch: Epoch,
    device_key: &dyn P256Signer,
) -> Result<()> {
    let finalize = Request::RefreshFinalize { wallet_id, epoch };
    let both: [&mut dyn Courier; 2] = [provider, recovery];
    for courier in both {
        match authorized_retrying(courier, wallet_id, KeyRole::Device, device_key, &finalize)? {
            Response::Done => {}
            other => return Err(unexpected("Done", &other)),
        }
    }
    Ok(())
}

/// Finishes, on this device's side, a refresh that committed at the cosigners (brought to one
/// epoch by [`roll_forward`], which answered `view`): if this home holds the prepared share of
/// that very epoch (its verifying share is in the committed public key package), it becomes the
/// current share. `None`: nothing to finish.
fn resume(home: &Home, wallet: &WalletFile, view: &WalletInfo) -> Result<Option<WalletFile>> {
    let wallet_id = wallet.wallet_id;
    if view.epoch <= wallet.epoch {
        return Ok(None);
    }
    let pkp = PublicKeyPackage::<Suite>::deserialize(&view.public_key_package)
        .map_err(|e| internal(format!("cosigner's public key package: {e}")))?;
    // The committed refresh's share among those kept (a later refresh may have kept its own).
    let Some(prepared) = home
        .prepared_shares(&wallet_id)?
        .into_iter()
        .find(|share| belongs(share, &pkp))
    else {
        return Ok(None);
    };
    Ok(Some(switch_share(
        home, wallet, view.epoch, &pkp, &prepared,
    )?))
}

/// Makes `share` this device's share of `wallet` at `epoch` (the refreshed key package `pkp`),
/// refusing a refresh that changed the group key, and drops the prepared copy.
fn switch_share(
    home: &Home,
    wallet: &WalletFile,
    epoch: Epoch,
    pkp: &PublicKeyPackage<Suite>,
    share: &[u8],
) -> Result<WalletFile> {
    let new_wallet = switched_wallet(wallet, epoch, pkp)?;
    keep_switch(home, &new_wallet, share)?;
    Ok(new_wallet)
}

/// A device switch that failed while (or after) the cosigners dropped the old epoch: the error,
/// saying how it is finished. Until then this device cannot sign (its old epoch is gone at the
/// cosigners); its new share is safe in the `.prepared` record, which a rerun promotes.
fn switch_unfinished(e: ClientError) -> ClientError {
    match e {
        ClientError::Home { path, reason } => ClientError::Home {
            path,
            reason: format!(
                "{reason}; the refresh is committed and this device's new share is kept: free \
                 the home and run `cosigner refresh` again to finish it"
            ),
        },
        other => other,
    }
}

/// `wallet`'s record at `epoch` with the refreshed key package `pkp`, refusing a refresh that
/// changed the group key.
fn switched_wallet(
    wallet: &WalletFile,
    epoch: Epoch,
    pkp: &PublicKeyPackage<Suite>,
) -> Result<WalletFile> {
    let new_wallet = wallet_file(
        wallet.wallet_id,
        wallet.party,
        &wallet.parties,
        wallet.min_signers,
        epoch,
        pkp,
        wallet.network,
    )?;
    if new_wallet.group_public_key != wallet.group_public_key && !wallet.group_public_key.is_empty()
    {
        return Err(internal("the refresh changed the group key"));
    }
    Ok(new_wallet)
}

/// Writes `new_wallet` and its `share` over the current ones, then drops the prepared copy.
fn keep_switch(home: &Home, new_wallet: &WalletFile, share: &[u8]) -> Result<()> {
    home.replace_share(new_wallet, share)?;
    home.remove_prepared_share(&new_wallet.wallet_id)
}

/// Refuses to refresh when a cosigner no longer attests the key registered with the other one at
/// creation: the recovery cosigner would refuse every commit receipt the provider signs, or the
/// provider every confirmation the recovery cosigner signs, and the refresh could never finish.
pub(crate) fn check_cosigner_identities(
    provider: &dyn Courier,
    recovery: &dyn Courier,
    aligned: &Aligned,
) -> Result<()> {
    let registered = aligned.recovery.provider_key.clone();
    check_identity(
        "provider",
        provider.attested_key(),
        registered,
        "recovery cosigner",
    )?;
    let registered = aligned.provider.recovery_cosigner_key.clone();
    check_identity(
        "recovery cosigner",
        recovery.attested_key(),
        registered,
        "provider",
    )?;
    Ok(())
}

/// `attested` (what cosigner `who` attests now) must be the key `holder` registered for it.
fn check_identity(
    who: &str,
    attested: Option<&[u8]>,
    registered: Option<ByteBuf>,
    holder: &str,
) -> Result<()> {
    match registered {
        Some(key) if Some(key.as_slice()) != attested => Err(ClientError::Protocol(
            cosigner_protocol::ProtocolError::Disagreement {
                reason: format!(
                    "the {who} attests key {} but the {holder} holds the wallet under {who} key \
                     {}: not refreshing (the commit could not be completed); the {who} must \
                     restore its audit key",
                    attested.map(hex::encode).unwrap_or_default(),
                    hex::encode(&key)
                ),
            },
        )),
        _ => Ok(()),
    }
}

/// Brings the two cosigners to the same epoch: one that missed the commit of the other's
/// current epoch (a client killed between the two commits, or a recovery that froze the wallet
/// between them) commits its stored prepared share with the other's confirmations. Returns the
/// cosigners' views; fails if they still differ.
pub(crate) fn roll_forward(
    provider: &mut dyn Courier,
    recovery: &mut dyn Courier,
    wallet_id: WalletId,
    device_key: &dyn P256Signer,
) -> Result<Aligned> {
    let (mut b, mut c) = views(provider, recovery, wallet_id)?;
    if b.epoch != c.epoch {
        let (leader, lagging) = if b.epoch > c.epoch {
            (&b, &mut *recovery as &mut dyn Courier)
        } else {
            (&c, &mut *provider as &mut dyn Courier)
        };
        // The provider leads (the recovery cosigner commits only with its receipt); a wallet
        // registered before receipts may have either ahead.
        // The lagging one is the recovery cosigner (the provider commits first): it commits on
        // the provider's receipt, not on confirmation signatures.
        let commit = Request::RefreshCommit {
            wallet_id,
            confirmations: leader.confirmations.clone(),
            provider_receipt: leader.receipt.clone(),
            confirmation_signatures: Vec::new(),
        };
        match authorized_retrying(lagging, wallet_id, KeyRole::Device, device_key, &commit)? {
            Response::RefreshCommitted { .. } => {}
            other => return Err(unexpected("RefreshCommitted", &other)),
        }
        (b, c) = views(provider, recovery, wallet_id)?;
    }
    if b.epoch != c.epoch || b.public_key_package != c.public_key_package {
        return Err(ClientError::Protocol(
            cosigner_protocol::ProtocolError::Disagreement {
                reason: format!(
                    "the provider (epoch {}) and the recovery cosigner (epoch {}) describe the \
                     wallet differently",
                    b.epoch, c.epoch
                ),
            },
        ));
    }
    Ok(Aligned {
        provider: b,
        recovery: c,
    })
}

/// What the two cosigners say of a wallet once they are at one epoch ([`roll_forward`]).
pub(crate) struct Aligned {
    pub(crate) provider: WalletInfo,
    pub(crate) recovery: WalletInfo,
}

/// Refreshes `wallet` from `old` (this device's share and the public key package of its epoch)
/// to the next epoch at all three parties.
fn refresh_from(
    home: &Home,
    [provider, recovery]: [&mut dyn Courier; 2],
    wallet: WalletFile,
    old: (KeyPackage<Suite>, PublicKeyPackage<Suite>),
    aligned: &Aligned,
    observe: &mut dyn FnMut(RefreshStep),
    mut challenges: Option<[Option<ByteBuf>; 2]>,
) -> Result<WalletFile> {
    let wallet_id = wallet.wallet_id;
    let device_key = home.device_key()?;
    check_cosigner_identities(provider, recovery, aligned)?;
    let params = RefreshParams {
        wallet_id,
        ciphersuite: wallet.ciphersuite.clone(),
        min_signers: wallet.min_signers,
        parties: wallet.parties.clone(),
        from_epoch: wallet.epoch,
    };
    let mut start = |peers: &mut [coordinator::Peer<'_>]| {
        let requests = peers
            .iter()
            .map(|peer| Request::RefreshStart {
                params: params.clone(),
                me: peer.party,
            })
            .collect();
        let signer = (wallet_id, KeyRole::Device, &device_key as &dyn P256Signer);
        match challenges.take() {
            // Asked while the caller wrote its share (a recovery): one round less.
            Some(asked) => authorized_all_under(peers, signer, requests, asked.to_vec(), true),
            None => authorized_all(peers, signer, requests),
        }
    };
    let confirmed = with_cosigners(
        &params,
        old,
        [&mut *provider, &mut *recovery],
        &mut start,
        &mut |p| observe(refresh_step(p)),
    )?;
    let output = &confirmed.output;
    // Kept before any cosigner commits: if this process dies after a commit, the next run finds
    // the new share here and finishes (see `resume`) instead of losing it.
    let prepared = zeroize::Zeroizing::new(output.key_package.serialize().map_err(internal)?);
    // Both commits' challenges are asked while the share is written.
    let mut saved = Ok(());
    let [provider_challenge, recovery_challenge] =
        challenges_meanwhile(&mut *provider, &mut *recovery, wallet_id, &mut || {
            saved = home.save_prepared_share(&wallet_id, &prepared);
        });
    saved?;
    let signer: (WalletId, KeyRole, &dyn P256Signer) = (wallet_id, KeyRole::Device, &device_key);
    // The provider first: its receipt for the commit is what the recovery cosigner commits on.
    let mut commit = Request::RefreshCommit {
        wallet_id,
        confirmations: confirmed.confirmations.clone(),
        provider_receipt: None,
        confirmation_signatures: confirmed.signatures.clone(),
    };
    let receipt = match authorized_under(provider, signer, &commit, provider_challenge)? {
        Response::RefreshCommitted { wallet } => wallet.receipt,
        other => return Err(unexpected("RefreshCommitted", &other)),
    };
    observe(RefreshStep::ProviderCommitted);
    if let Request::RefreshCommit {
        provider_receipt, ..
    } = &mut commit
    {
        *provider_receipt = receipt;
    }
    match authorized_under(recovery, signer, &commit, recovery_challenge)? {
        Response::RefreshCommitted { .. } => observe(RefreshStep::RecoveryCommitted),
        other => return Err(unexpected("RefreshCommitted", &other)),
    }
    // Both cosigners hold the new epoch: they drop the old one while this device switches over.
    // The new share has been durable here (the prepared copy) since before the first commit, so
    // a switch that fails, or a process that dies, after the cosigners dropped the old epoch
    // loses nothing: the next run promotes that copy (`resume`). Until then this device cannot
    // sign (its home still names the dropped epoch), which `switch_unfinished` says.
    let new_wallet = switched_wallet(
        &wallet,
        params.from_epoch.saturating_next(),
        &output.public_key_package,
    )?;
    let finalize = Request::RefreshFinalize {
        wallet_id,
        epoch: new_wallet.epoch,
    };
    let mut switched = Err(internal("the device's switch did not run"));
    let mut both = coordinator::cosigner_peers([&mut *provider, &mut *recovery]);
    let requests = vec![finalize.clone(), finalize];
    let answers = coordinator::call_all_meanwhile(&mut both, requests, &mut || {
        switched = keep_switch(home, &new_wallet, &prepared);
        if switched.is_ok() {
            observe(RefreshStep::DeviceCommitted);
        }
    });
    switched.map_err(switch_unfinished)?;
    for answer in answers {
        match answer? {
            Response::Done => {}
            other => return Err(unexpected("Done", &other)),
        }
    }
    observe(RefreshStep::Finalized);
    Ok(new_wallet)
}

/// Recovers this (new) device's share of `wallet_id` with the recovery credential: the provider
/// and the recovery cosigner approve (each checks the credential), repair the share onto this
/// device (deltas sealed end to end), then all three refresh to a new epoch, which makes the new
/// device key current and revokes the old one.
///
/// The recovery credential wins races: its `RecoverStart` suspends the registered device key at
/// both cosigners before anything else, so a thief holding the old phone can neither sign nor
/// refresh from then on. Idempotent and resumable: running it again (in the same home) after a
/// failure or a kill at any point finishes the job — a cosigner that missed a commit is rolled
/// forward, a refresh that committed is finished from the share kept in the home.
pub fn recover(
    home: &Home,
    provider: &mut dyn Courier,
    recovery: &mut dyn Courier,
    wallet_id: WalletId,
    recovery_key: &dyn P256Signer,
    network: Network,
) -> Result<WalletFile> {
    recover_observed(
        home,
        provider,
        recovery,
        wallet_id,
        recovery_key,
        network,
        &mut |_| {},
    )
}

/// The steps of a recovery, reported to an observer (tests interrupt a recovery at each one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecoverStep {
    /// Both cosigners suspended the old device key and hold the new one as pending.
    Frozen,
    /// Both cosigners are at one epoch.
    Aligned,
    /// This device holds the repaired share at that epoch.
    Repaired,
    /// A step of the recovery's refresh.
    Refresh(RefreshStep),
}

/// [`recover`], reporting each step to `observe`.
pub fn recover_observed(
    home: &Home,
    provider: &mut dyn Courier,
    recovery: &mut dyn Courier,
    wallet_id: WalletId,
    recovery_key: &dyn P256Signer,
    network: Network,
    observe: &mut dyn FnMut(RecoverStep),
) -> Result<WalletFile> {
    let device_key = home.device_key()?;
    let new_device = public_key_bytes(&device_key);
    // 1. Both cosigners check the recovery credential, register the new device key as pending
    //    and suspend the old one (again harmlessly, on a retry).
    let completed = recover_start(provider, recovery, wallet_id, recovery_key, &new_device)?;
    observe(RecoverStep::Frozen);
    // 2. One epoch at both cosigners; a recovery refresh of ours that committed before an
    //    earlier run died is finished from the share this home kept.
    let aligned = roll_forward(provider, recovery, wallet_id, &device_key)?;
    let info = &aligned.provider;
    observe(RecoverStep::Aligned);
    let pkp = PublicKeyPackage::<Suite>::deserialize(&info.public_key_package)
        .map_err(|e| internal(format!("provider's public key package: {e}")))?;
    if let Ok(held) = home.wallet(&wallet_id) {
        // Done before, or committed and finished from the kept share: either way finalized
        // again (a finalize an earlier run lost must not leave the old phone's epoch signable).
        let done = match resume(home, &held, info)? {
            Some(done) => Some(done),
            None if completed
                && held.epoch == info.epoch
                && holds_share(home, &wallet_id, &pkp) =>
            {
                Some(held)
            }
            None => None,
        };
        if let Some(done) = done {
            finalize_signed(provider, recovery, wallet_id, done.epoch, &device_key)?;
            return Ok(done);
        }
    }
    if completed {
        return Err(ClientError::Input(format!(
            "the recovery of wallet {wallet_id} onto this device key completed, but this home \
             does not hold the new share (was it finished from another home?)"
        )));
    }
    // 3. Our share at the current epoch: repaired by B and C, or kept from an earlier attempt.
    let key_package = match home.wallet(&wallet_id) {
        Ok(held) if held.epoch == info.epoch && holds_share(home, &wallet_id, &pkp) => {
            let share = home.share(&wallet_id)?;
            (
                KeyPackage::<Suite>::deserialize(&share).map_err(internal)?,
                None,
            )
        }
        _ => {
            let key_package = crate::repair::repair_share(
                provider,
                recovery,
                wallet_id,
                info,
                &pkp,
                &device_key,
            )?;
            let wallet = wallet_file(
                wallet_id,
                DEVICE,
                &info.parties,
                info.min_signers,
                info.epoch,
                &pkp,
                network,
            )?;
            let share = zeroize::Zeroizing::new(key_package.serialize().map_err(internal)?);
            // The refresh's challenges are asked while the repaired share is written.
            let mut kept = Ok(());
            let asked =
                challenges_meanwhile(&mut *provider, &mut *recovery, wallet_id, &mut || {
                    kept = home.replace_share(&wallet, &share);
                });
            kept?;
            (key_package, Some(asked))
        }
    };
    let (key_package, challenges) = key_package;
    observe(RecoverStep::Repaired);
    // 4. Refresh to a new epoch: the old device's share goes stale, its key is revoked.
    let wallet = home.wallet(&wallet_id)?;
    let observe = &mut |step| observe(RecoverStep::Refresh(step));
    let old = (key_package, pkp);
    refresh_from(
        home,
        [provider, recovery],
        wallet,
        old,
        &aligned,
        observe,
        challenges,
    )
}

/// `RecoverStart` at both cosigners with the recovery credential: each suspends the registered
/// device key and holds `new_device` as pending (again harmlessly, on a retry). Answers whether
/// both say this recovery already completed.
pub(crate) fn recover_start(
    provider: &mut dyn Courier,
    recovery: &mut dyn Courier,
    wallet_id: WalletId,
    recovery_key: &dyn P256Signer,
    new_device: &[u8],
) -> Result<bool> {
    let start = Request::RecoverStart {
        wallet_id,
        new_device_key: ByteBuf::from(new_device.to_vec()),
    };
    let mut completed = true;
    // Both at once: each suspends the registered device key on its own, neither waits for the
    // other's answer.
    let mut both = coordinator::cosigner_peers([provider, recovery]);
    let key = (wallet_id, KeyRole::Recovery, recovery_key);
    for answer in authorized_all(&mut both, key, vec![start.clone(), start]) {
        match answer? {
            Response::RecoverApproved { completed: c, .. } => completed &= c,
            other => return Err(unexpected("RecoverApproved", &other)),
        }
    }
    Ok(completed)
}

/// Cancels a recovery in progress at both cosigners, with the recovery credential: the pending
/// device key is dropped and the registered device key may act again. Idempotent.
pub fn cancel_recovery(
    provider: &mut dyn Courier,
    recovery: &mut dyn Courier,
    wallet_id: WalletId,
    recovery_key: &dyn P256Signer,
) -> Result<()> {
    // A recovery that already committed at one cosigner is finished, not cancelled: cancelling
    // at the other would leave the two with different device keys.
    let (b, c) = views(provider, recovery, wallet_id)?;
    if b.epoch != c.epoch {
        return Err(ClientError::Input(format!(
            "a cosigner already committed a refresh of wallet {wallet_id} (epochs {} and {}): \
             finish the recovery with `cosigner recover` instead of cancelling it",
            b.epoch, c.epoch
        )));
    }
    let cancel = Request::RecoverCancel { wallet_id };
    for session in [provider as &mut dyn Courier, recovery] {
        match authorized_retrying(session, wallet_id, KeyRole::Recovery, recovery_key, &cancel)? {
            Response::Done => {}
            other => return Err(unexpected("Done", &other)),
        }
    }
    Ok(())
}

/// Whether this home's share of `wallet_id` belongs to `pkp`.
fn holds_share(home: &Home, wallet_id: &WalletId, pkp: &PublicKeyPackage<Suite>) -> bool {
    home.share(wallet_id)
        .is_ok_and(|share| belongs(&share, pkp))
}

/// Whether `share` (a serialized key package) belongs to `pkp`: its verifying share is there
/// and the group key is the same.
fn belongs(share: &[u8], pkp: &PublicKeyPackage<Suite>) -> bool {
    let Ok(kp) = KeyPackage::<Suite>::deserialize(share) else {
        return false;
    };
    pkp.verifying_shares().get(kp.identifier()) == Some(kp.verifying_share())
        && pkp.verifying_key() == kp.verifying_key()
}
