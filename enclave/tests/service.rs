//! The enclave's service in one process, with real backends: a private SoftHSM token for sealing
//! and freshness anchors, a local attester in the same token, and an in-memory blob store the test
//! can read and tamper with (it plays the untrusted parent). The client's own ceremonies
//! (`cosigner_client::wallet`, `cosigner_client::coordinator`) run through an in-process courier
//! (`cosigner_tests::in_process`): this device is party 1, the service under test party 2 (the
//! provider), a second in-process service party 3 (the recovery cosigner). What the client would
//! never send (malformed, replayed, out-of-order or foreign requests) is sent by hand.
//!
//! Run with `cargo nextest run` (one process per test, one SoftHSM per test).

#![cfg(feature = "local-attester")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use cosigner_attestation::{Expectations, verify};
use cosigner_client::address::{Network, p2tr_address, x_only};
use cosigner_client::coordinator::{self, Confirmed, Peer};
use cosigner_client::home::{Home, WalletFile, read_p256_key};
use cosigner_client::wallet::{self as client, CoSigner, CreateOptions};
use cosigner_enclave::service::anchor::TokenAnchor;
use cosigner_enclave::service::audit::verify_stored;
use cosigner_enclave::service::partition::{DEFAULT_PARTITIONS, PartitionedAnchor};
use cosigner_enclave::service::{RefreshPolicy, Service, SessionState};
use cosigner_enclave::store::{BlobStore, MemoryStore, StoreError};
use cosigner_kms::{SEAL_FORMAT_VERSION, SEAL_KEY_ID_LEN, Sealer};
use cosigner_protocol::auth::{
    P256Signer, public_key_bytes, registration_digest, registration_digest_with, request_digest,
    sign_digest,
};
use cosigner_protocol::id::Epoch;
use cosigner_protocol::id::PartyId;
use cosigner_protocol::sign::{SignerSession, aggregate, signing_package};
use cosigner_protocol::wire::{
    self, DkgParams, ErrorKind, KeyRole, Registration, Request, Response, Round1Message,
    SUITE_SECP256K1_TR, SessionId, WalletId, WalletInfo,
};
use cosigner_tests::in_process::{
    Cosigners, Enclave, InProcess, SEALING_KEY, SharedStore, attested, init_token, random,
};
use cosigner_tests::in_process::{cosigner_client, tempfile};
use cosigner_tests::{SoftHsm, softhsm_module};
use frost_core::keys::{KeyPackage, PublicKeyPackage};
use p256::ecdsa::SigningKey;
use rand_core::OsRng;
use serde_bytes::ByteBuf;
use tempfile::TempDir;

type Suite = frost_secp256k1_tr::Secp256K1Sha256TR;

const PARTIES: [PartyId; 3] = [PartyId::DEVICE, PartyId::PROVIDER, PartyId::RECOVERY];
const PROVIDER: PartyId = PartyId::PROVIDER;
const MESSAGE: &[u8; 32] = b"sighash of a taproot key spend!!";
const ANOTHER_MESSAGE: &[u8; 32] = b"another sighash, another spend!!";

// ---------------------------------------------------------------------------------------------
// Harness

/// Another enclave's view of a host: the wallet records are the shared store's, everything else
/// (that enclave's own audit key and log) is its own.
struct WalletsOnly {
    shared: SharedStore,
    own: MemoryStore,
}

impl WalletsOnly {
    fn store(&self, key: &str) -> &dyn BlobStore {
        if key.starts_with("wallet/") {
            &self.shared
        } else {
            &self.own
        }
    }
}

impl BlobStore for WalletsOnly {
    fn put(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.store(key).put(key, value)
    }
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.store(key).get(key)
    }
    fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.store(key).delete(key)
    }
    fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        self.store(prefix).list(prefix)
    }
}

/// The provider under test (its fields reached through `Deref`: `h.service`, `h.store`, …) and
/// the recovery cosigner, each with its own token of one SoftHSM.
struct Harness {
    _hsm: SoftHsm,
    module: PathBuf,
    provider: Enclave,
    recovery: Enclave,
}

impl std::ops::Deref for Harness {
    type Target = Enclave;
    fn deref(&self) -> &Enclave {
        &self.provider
    }
}

impl Harness {
    fn new() -> Self {
        Self::with_policy(RefreshPolicy::default())
    }

    /// The provider runs under `policy`.
    fn with_policy(policy: RefreshPolicy) -> Self {
        let Cosigners {
            hsm,
            provider,
            recovery,
        } = Cosigners::with_provider_policy(policy);
        Self {
            _hsm: hsm,
            module: softhsm_module(),
            provider,
            recovery,
        }
    }

    /// A new harness, a session attested to its provider, and a wallet created over it.
    fn with_wallet() -> (Self, SessionState, Wallet) {
        Self::with_wallet_made(create_wallet)
    }

    /// A new harness, a session attested to its provider, and the wallet `make` creates over it.
    fn with_wallet_made(
        make: impl FnOnce(&Harness, &mut SessionState) -> Wallet,
    ) -> (Self, SessionState, Wallet) {
        let h = Self::new();
        let mut session = h.session();
        let wallet = make(&h, &mut session);
        (h, session, wallet)
    }
}

fn attest(nonce: [u8; 32]) -> Request {
    Request::Attest {
        nonce: ByteBuf::from(nonce.to_vec()),
    }
}

/// The kind of a refusal; panics on any other response.
fn refused(response: Response) -> ErrorKind {
    match response {
        Response::Error(e) => e.kind,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn params(wallet_id: WalletId) -> DkgParams {
    DkgParams {
        wallet_id,
        ciphersuite: SUITE_SECP256K1_TR.to_owned(),
        min_signers: 2,
        parties: PARTIES.to_vec(),
    }
}

/// `DkgRound2`, `DkgRound3` and `DkgConfirm` of `wallet_id`, empty (a stranger registering).
fn dkg_rounds(wallet_id: WalletId) -> [Request; 3] {
    let stranger = SigningKey::random(&mut OsRng);
    [
        Request::DkgRound2 {
            wallet_id,
            round1: Vec::new(),
        },
        Request::DkgRound3 {
            wallet_id,
            packages: Vec::new(),
        },
        Request::DkgConfirm {
            wallet_id,
            confirmations: Vec::new(),
            registration: registration(&wallet_id, &[0; 32], &stranger, &stranger),
            confirmation_signatures: Vec::new(),
        },
    ]
}

fn dkg_start(wallet_id: WalletId) -> Request {
    Request::DkgStart {
        params: params(wallet_id),
        me: PROVIDER,
        enrollment: None,
    }
}

/// The provider's round-1 answer to a `DkgStart` sent by hand.
fn started(response: Response) -> Round1Message {
    match response {
        Response::DkgRound1 { message } => message,
        other => panic!("DkgStart: {other:?}"),
    }
}

/// A wallet as the client ends up with it: its home (this device's share and key), the
/// recovery credential, and what the provider says of it.
struct Wallet {
    id: WalletId,
    home: Home,
    _dir: TempDir,
    /// This device's (party 1's) key package.
    share: KeyPackage<Suite>,
    public: PublicKeyPackage<Suite>,
    info: WalletInfo,
    device: cosigner_client::store::DeviceKey,
    recovery: SigningKey,
}

impl Wallet {
    /// The wallet `id` the client kept in `home`, as the provider describes it over `session`.
    fn kept(
        h: &Harness,
        session: &mut SessionState,
        (dir, home): (TempDir, Home),
        id: WalletId,
        recovery: SigningKey,
    ) -> Self {
        let file = home.wallet(&id).unwrap();
        let public = file.public_key_package.serialize().unwrap();
        let info = match get_wallet(h, session, id) {
            Response::Wallet { wallet } => wallet,
            other => panic!("GetWallet: {other:?}"),
        };
        assert_eq!(
            info.public_key_package.as_ref(),
            public.as_slice(),
            "the service stored another public key package than the client derived"
        );
        Self {
            id,
            share: KeyPackage::deserialize(&home.share(&id).unwrap()).unwrap(),
            public: PublicKeyPackage::deserialize(&public).unwrap(),
            info,
            device: home.device_key().unwrap(),
            recovery,
            home,
            _dir: dir,
        }
    }

    /// This wallet's own key for `role`.
    fn key(&self, role: KeyRole) -> &dyn P256Signer {
        match role {
            KeyRole::Device => &self.device,
            KeyRole::Recovery => &self.recovery,
        }
    }

    /// `inner` wrapped in `Authorized`, signed by this wallet's device key over `challenge`.
    fn device_wrap(&self, challenge: &[u8], inner: &Request) -> Request {
        wrap(self.id, challenge, KeyRole::Device, &self.device, inner)
    }
}

/// A new client home in a temporary directory.
fn new_home() -> (TempDir, Home) {
    let dir = tempfile::tempdir().unwrap();
    let home = Home::open(dir.path()).unwrap();
    (dir, home)
}

/// A wallet created by the client (`wallet::create_with`): the provider over `session`, the
/// recovery service over a session of its own.
fn create_wallet_with(
    h: &Harness,
    session: &mut SessionState,
    options: &CreateOptions<'_>,
) -> Result<Wallet, cosigner_client::ClientError> {
    let (dir, home) = new_home();
    let recovery_key = dir.path().join("recovery.key");
    let mut recovery_session = h.recovery.session();
    let created = client::create_with(
        &home,
        &mut InProcess::new(&h.service, session),
        &mut InProcess::new(&h.recovery.service, &mut recovery_session),
        Network::Regtest,
        &recovery_key,
        options,
    )?;
    let id = created.wallet.wallet_id;
    let recovery = read_p256_key(&recovery_key).unwrap();
    Ok(Wallet::kept(h, session, (dir, home), id, recovery))
}

/// A 2-of-3 wallet among this device (1), the provider (2) and the recovery service (3).
fn create_wallet(h: &Harness, session: &mut SessionState) -> Wallet {
    create_wallet_with(h, session, &CreateOptions::default()).unwrap()
}

/// A 2-of-3 wallet created by the client with `policy` (registered, bound to both keys'
/// signatures); the client's error as text.
fn create_policy_wallet(
    h: &Harness,
    session: &mut SessionState,
    policy: &str,
) -> Result<Wallet, String> {
    let options = CreateOptions {
        policy: Some(policy),
        enrollment: None,
    };
    create_wallet_with(h, session, &options).map_err(|e| e.to_string())
}

/// The DKG of `params` run by the client's coordinator: this device is party 1, the provider
/// (party `provider`) answers over `session`, the recovery service is the remaining party. A
/// provider that already answered a `DkgStart` sent by hand is given its `provider_round1`.
fn run_dkg(
    h: &Harness,
    session: &mut SessionState,
    params: &DkgParams,
    provider: PartyId,
    provider_round1: Option<Round1Message>,
) -> Confirmed {
    let recovery = *params
        .parties
        .iter()
        .find(|p| ![pid(1), provider].contains(*p))
        .unwrap();
    let mut recovery_session = h.recovery.session();
    let mut provider_courier = InProcess::new(&h.service, session);
    let mut recovery_courier = InProcess::new(&h.recovery.service, &mut recovery_session);
    let mut peers = [
        Peer {
            party: provider,
            courier: &mut provider_courier,
        },
        Peer {
            party: recovery,
            courier: &mut recovery_courier,
        },
    ];
    let mut start = |peers: &mut [Peer<'_>]| {
        peers
            .iter_mut()
            .map(|peer| match &provider_round1 {
                Some(message) if peer.party == provider => Ok(Response::DkgRound1 {
                    message: message.clone(),
                }),
                _ => peer.courier.call(&Request::DkgStart {
                    params: params.clone(),
                    me: peer.party,
                    enrollment: None,
                }),
            })
            .collect()
    };
    coordinator::run(params, pid(1), (), &mut peers, &mut start, &mut |_| {}).unwrap()
}

type Register<'a> = dyn Fn(&WalletId, &[u8], &dyn P256Signer, &SigningKey) -> Registration + 'a;

/// [`run_dkg`], then the `DkgConfirm` carrying the registration `register` makes, sent by hand to
/// the provider (a refusal is its message) and then to the recovery service; the client's home
/// then holds the wallet as `wallet create` would have left it.
fn finish_dkg_registering(
    h: &Harness,
    session: &mut SessionState,
    params: &DkgParams,
    provider: PartyId,
    provider_round1: Option<Round1Message>,
    register: &Register<'_>,
) -> Result<Wallet, String> {
    let Confirmed {
        output,
        confirmations,
        signatures,
    } = run_dkg(h, session, params, provider, provider_round1);
    let (dir, home) = new_home();
    let recovery = SigningKey::random(&mut OsRng);
    let mut registration = register(
        &params.wallet_id,
        &output.transcript_hash,
        &home.device_key().unwrap(),
        &recovery,
    );
    // Both cosigners' attested keys, as the client registers them (a test's own stay).
    let key_of = |party: PartyId| match party == provider {
        true => h.service.audit_public_key(),
        false => h.recovery.service.audit_public_key(),
    };
    let keys = [PartyId::PROVIDER, PartyId::RECOVERY].map(|p| ByteBuf::from(key_of(p)));
    let [provider_key, recovery_key] = keys;
    registration.provider_key.get_or_insert(provider_key);
    registration
        .recovery_cosigner_key
        .get_or_insert(recovery_key);
    let confirm = Request::DkgConfirm {
        wallet_id: params.wallet_id,
        confirmations,
        registration,
        confirmation_signatures: signatures,
    };
    match h.call(session, confirm.clone()) {
        Response::DkgDone { .. } => {}
        Response::Error(e) => return Err(e.message),
        other => panic!("DkgConfirm: {other:?}"),
    }
    let mut recovery_session = h.recovery.session();
    match h.recovery.call(&mut recovery_session, confirm) {
        Response::DkgDone { .. } => {}
        other => panic!("DkgConfirm at the recovery service: {other:?}"),
    }
    let file = wallet_file(params, &output.public_key_package);
    let share = output.key_package.serialize().unwrap();
    home.save_wallet(&file, &share).unwrap();
    Ok(Wallet::kept(
        h,
        session,
        (dir, home),
        params.wallet_id,
        recovery,
    ))
}

/// [`finish_dkg_registering`] with the honest [`registration`].
fn finish_dkg(
    h: &Harness,
    session: &mut SessionState,
    params: &DkgParams,
    provider: PartyId,
    provider_round1: Option<Round1Message>,
) -> Wallet {
    finish_dkg_registering(h, session, params, provider, provider_round1, &registration).unwrap()
}

/// A new wallet whose `DkgConfirm` carries the registration `register` makes.
fn create_wallet_registering(
    h: &Harness,
    session: &mut SessionState,
    register: &Register<'_>,
) -> Result<Wallet, String> {
    let params = params(WalletId(random()));
    finish_dkg_registering(h, session, &params, PROVIDER, None, register)
}

/// The wallet file the client writes for party 1 of `params` on regtest.
fn wallet_file(params: &DkgParams, public: &PublicKeyPackage<Suite>) -> WalletFile {
    let xonly = x_only(&public.verifying_key().serialize().unwrap()).unwrap();
    WalletFile {
        wallet_id: params.wallet_id,
        ciphersuite: params.ciphersuite.clone(),
        group_public_key: xonly,
        address: p2tr_address(&xonly, Network::Regtest).unwrap(),
        network: Network::Regtest,
        party: pid(1),
        min_signers: params.min_signers,
        parties: params.parties.clone(),
        epoch: Epoch(0),
        public_key_package: public.clone(),
        dao: None,
    }
}

fn registration(
    wallet_id: &WalletId,
    transcript_hash: &[u8],
    device: &dyn P256Signer,
    recovery: &SigningKey,
) -> Registration {
    let (device_key, recovery_key) = (public_key_bytes(device), public_key_bytes(recovery));
    let digest = registration_digest(wallet_id, transcript_hash, &device_key, &recovery_key);
    Registration {
        device_signature: ByteBuf::from(sign_digest(device, &digest).unwrap().to_vec()),
        recovery_signature: ByteBuf::from(sign_digest(recovery, &digest).unwrap().to_vec()),
        device_key: ByteBuf::from(device_key),
        recovery_key: ByteBuf::from(recovery_key),
        policy: None,
        network: None,
        provider_key: None,
        recovery_cosigner_key: None,
    }
}

/// A registration with a spending policy on regtest, both keys signing over it.
fn registration_with_policy(
    policy: &str,
) -> impl Fn(&WalletId, &[u8], &dyn P256Signer, &SigningKey) -> Registration + '_ {
    move |wallet_id, transcript_hash, device, recovery| {
        let (device_key, recovery_key) = (public_key_bytes(device), public_key_bytes(recovery));
        let digest = registration_digest_with(
            wallet_id,
            transcript_hash,
            &device_key,
            &recovery_key,
            Some(policy),
            Some("regtest"),
        );
        Registration {
            policy: Some(policy.to_owned()),
            network: Some("regtest".to_owned()),
            device_signature: ByteBuf::from(sign_digest(device, &digest).unwrap().to_vec()),
            recovery_signature: ByteBuf::from(sign_digest(recovery, &digest).unwrap().to_vec()),
            ..registration(wallet_id, transcript_hash, device, recovery)
        }
    }
}

fn challenge(service: &Service, session: &mut SessionState, wallet_id: WalletId) -> Vec<u8> {
    match service.handle(session, Request::Challenge { wallet_id }) {
        Response::Challenge { challenge } => challenge.into_vec(),
        other => panic!("Challenge: {other:?}"),
    }
}

/// `inner` wrapped in `Authorized`: signed by `key` as `role` over `challenge`.
fn wrap(
    wallet_id: WalletId,
    challenge: &[u8],
    role: KeyRole,
    key: &dyn P256Signer,
    inner: &Request,
) -> Request {
    let bytes = wire::encode(inner).unwrap();
    let digest = request_digest(&wallet_id, challenge, &bytes);
    Request::Authorized {
        wallet_id,
        role,
        signature: ByteBuf::from(sign_digest(key, &digest).unwrap().to_vec()),
        request: ByteBuf::from(bytes),
    }
}

/// `inner` over a fresh challenge of this session, signed by `key` as `role`.
fn authorized(
    service: &Service,
    session: &mut SessionState,
    wallet_id: WalletId,
    role: KeyRole,
    key: &dyn P256Signer,
    inner: &Request,
) -> Response {
    let challenge = challenge(service, session, wallet_id);
    service.handle(session, wrap(wallet_id, &challenge, role, key, inner))
}

/// `inner` over a fresh challenge of `service`, signed by `wallet`'s own key for `role`.
fn by_own_key(
    service: &Service,
    session: &mut SessionState,
    wallet: &Wallet,
    role: KeyRole,
    inner: &Request,
) -> Response {
    authorized(service, session, wallet.id, role, wallet.key(role), inner)
}

/// `inner` over a fresh challenge, signed by `wallet`'s device key.
fn by_device(
    h: &Harness,
    session: &mut SessionState,
    wallet: &Wallet,
    inner: &Request,
) -> Response {
    by_own_key(&h.service, session, wallet, KeyRole::Device, inner)
}

/// `inner` over a fresh challenge, signed by `wallet`'s recovery credential.
fn by_recovery(
    h: &Harness,
    session: &mut SessionState,
    wallet: &Wallet,
    inner: &Request,
) -> Response {
    by_own_key(&h.service, session, wallet, KeyRole::Recovery, inner)
}

fn sign_commit_request(wallet_id: WalletId, message: &[u8], signers: &[PartyId]) -> Request {
    Request::SignCommit {
        wallet_id,
        epoch: Epoch(0),
        message: ByteBuf::from(message.to_vec()),
        signers: signers.to_vec(),
    }
}

/// `SignCommit` for `signers`, authorized by the device key; the session id and the service's
/// commitments.
fn sign_commit(
    h: &Harness,
    session: &mut SessionState,
    wallet: &Wallet,
    message: &[u8],
    signers: &[PartyId],
) -> Result<(SessionId, Vec<u8>), ErrorKind> {
    let request = sign_commit_request(wallet.id, message, signers);
    committed(by_device(h, session, wallet, &request))
}

fn committed(response: Response) -> Result<(SessionId, Vec<u8>), ErrorKind> {
    match response {
        Response::SignCommitted {
            session_id,
            commitments,
        } => Ok((session_id, commitments.into_vec())),
        Response::Error(e) => Err(e.kind),
        other => panic!("SignCommit: {other:?}"),
    }
}

fn sign_share(
    h: &Harness,
    session: &mut SessionState,
    session_id: &SessionId,
    package: &[u8],
) -> Result<Vec<u8>, ErrorKind> {
    match h.call(
        session,
        Request::SignShare {
            session_id: *session_id,
            signing_package: ByteBuf::from(package.to_vec()),
        },
    ) {
        Response::SignatureShare { share } => Ok(share.into_vec()),
        Response::Error(e) => Err(e.kind),
        other => panic!("SignShare: {other:?}"),
    }
}

/// Signs `message` with the client (`wallet::sign`): this device and the provider over `session`;
/// returns the verified signature.
fn sign_with(
    h: &Harness,
    session: &mut SessionState,
    wallet: &Wallet,
    message: &[u8; 32],
) -> Vec<u8> {
    let mut provider = InProcess::new(&h.service, session);
    client::sign(&wallet.home, &mut provider, wallet.id, message)
        .unwrap()
        .to_vec()
}

/// Signs `message` with the client, this device and the recovery service under the recovery
/// credential (the pair that signs when the provider is unreachable).
fn sign_with_recovery(h: &Harness, wallet: &Wallet, message: &[u8; 32]) -> Vec<u8> {
    let mut session = h.recovery.session();
    let mut recovery = InProcess::new(&h.recovery.service, &mut session);
    let cosigner = CoSigner::Recovery(&wallet.recovery);
    client::sign_with_receipt(&wallet.home, &mut recovery, cosigner, wallet.id, message)
        .unwrap()
        .signature
        .to_vec()
}

/// Opens a session for [1, 2] on `MESSAGE`; party 1's own session and both commitments.
fn open_session(
    h: &Harness,
    session: &mut SessionState,
    wallet: &Wallet,
) -> (SessionId, SignerSession<Suite>, BTreeMap<PartyId, Vec<u8>>) {
    let (session_id, provider) =
        sign_commit(h, session, wallet, MESSAGE, &[pid(1), pid(2)]).unwrap();
    let (ours, our_commitments) = SignerSession::<Suite>::commit(
        &wallet.share,
        pid(1),
        MESSAGE,
        &[pid(1), pid(2)],
        &mut OsRng,
    )
    .unwrap();
    let commitments = BTreeMap::from([(pid(1), our_commitments), (PROVIDER, provider)]);
    (session_id, ours, commitments)
}

fn get_wallet(h: &Harness, session: &mut SessionState, wallet_id: WalletId) -> Response {
    h.call(session, Request::GetWallet { wallet_id })
}

fn get_wallet_refusal(h: &Harness, session: &mut SessionState, wallet_id: WalletId) -> ErrorKind {
    refused(get_wallet(h, session, wallet_id))
}

/// A response as a result: the refusal's kind, or the response.
fn outcome(response: Response) -> Result<Response, ErrorKind> {
    match response {
        Response::Error(e) => Err(e.kind),
        other => Ok(other),
    }
}

/// A `SignCommit` of `wallet` for [1, 2] is refused as `Integrity` (the host tampered).
fn assert_no_commit(h: &Harness, session: &mut SessionState, wallet: &Wallet, what: &str) {
    let result = sign_commit(h, session, wallet, MESSAGE, &[pid(1), pid(2)]);
    assert_refused(result, &[ErrorKind::Integrity], what);
}

fn assert_refused(
    result: Result<impl std::fmt::Debug, ErrorKind>,
    allowed: &[ErrorKind],
    what: &str,
) {
    match result {
        Ok(v) => panic!("{what}: expected a refusal, got {v:?}"),
        Err(kind) => assert!(allowed.contains(&kind), "{what}: {kind:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Attest first

#[test]
fn every_request_before_attest_is_refused_and_changes_nothing() {
    let h = Harness::new();
    let mut session = SessionState::new(random());
    let wallet_id = WalletId(random());
    let stranger = SigningKey::random(&mut OsRng);
    let before_attest = [dkg_start(wallet_id)]
        .into_iter()
        .chain(dkg_rounds(wallet_id))
        .chain([
            Request::Challenge { wallet_id },
            wrap(
                wallet_id,
                &[0; 32],
                KeyRole::Device,
                &stranger,
                &sign_commit_request(wallet_id, MESSAGE, &[pid(1), pid(2)]),
            ),
            sign_commit_request(wallet_id, MESSAGE, &[pid(1), pid(2)]),
            Request::SignShare {
                session_id: SessionId([0; 16]),
                signing_package: ByteBuf::new(),
            },
            Request::GetWallet { wallet_id },
        ]);
    let stored = h.store.all();
    for request in before_attest {
        let name = request.name();
        assert_eq!(
            refused(h.call(&mut session, request)),
            ErrorKind::BadRequest,
            "{name} before Attest"
        );
    }
    // A refused Attest (short nonce) does not open the session either.
    let short = Request::Attest {
        nonce: ByteBuf::from(vec![1; 31]),
    };
    assert_eq!(refused(h.call(&mut session, short)), ErrorKind::BadRequest);
    assert_eq!(
        refused(h.call(&mut session, dkg_start(wallet_id))),
        ErrorKind::BadRequest
    );
    // Another session's Attest does not open this one.
    let _other = h.session();
    assert_eq!(
        refused(h.call(&mut session, dkg_start(wallet_id))),
        ErrorKind::BadRequest
    );
    assert_eq!(
        h.store.all(),
        stored,
        "a refused request wrote to the store"
    );

    // After Attest, the same DKG runs from the start: the refused DkgStart left no ceremony behind.
    assert!(matches!(
        h.call(&mut session, attest(random())),
        Response::Attested { .. }
    ));
    let provider_round1 = started(h.call(&mut session, dkg_start(wallet_id)));
    let wallet = finish_dkg(
        &h,
        &mut session,
        &params(wallet_id),
        PROVIDER,
        Some(provider_round1),
    );
    sign_with(&h, &mut session, &wallet, MESSAGE);
}

#[test]
fn attest_binds_the_nonce_the_session_and_the_audit_key() {
    let h = Harness::new();
    let binding: [u8; 32] = random();
    let nonce: [u8; 32] = random();
    let mut session = SessionState::new(binding);
    let document = match h.call(&mut session, attest(nonce)) {
        Response::Attested { document } => document.into_vec(),
        other => panic!("Attest: {other:?}"),
    };
    let expect = Expectations {
        nonce: Some(nonce.to_vec()),
        user_data: Some(binding.to_vec()),
        public_key: Some(h.service.audit_public_key()),
        max_age: Some(Duration::from_secs(60)),
        ..Expectations::default()
    };
    let verified = verify(&document, &h.root, SystemTime::now(), &expect).unwrap();
    assert!(!verified.debug);
    assert_eq!(verified.doc.nonce.as_deref(), Some(nonce.as_slice()));
    assert_eq!(verified.doc.user_data.as_deref(), Some(binding.as_slice()));

    // Not under another nonce, nor another session's binding.
    for (nonce, user_data) in [
        (random::<32>().to_vec(), binding.to_vec()),
        (nonce.to_vec(), random::<32>().to_vec()),
    ] {
        let other = Expectations {
            nonce: Some(nonce),
            user_data: Some(user_data),
            ..Expectations::default()
        };
        assert!(verify(&document, &h.root, SystemTime::now(), &other).is_err());
    }

    // A nonce of any other length is refused, on a fresh session as on an attested one.
    for len in [0, 1, 16, 31, 33, 64, 512, 513] {
        for mut session in [SessionState::new(random()), h.session()] {
            let response = h.call(
                &mut session,
                Request::Attest {
                    nonce: ByteBuf::from(vec![7; len]),
                },
            );
            assert_eq!(refused(response), ErrorKind::BadRequest, "nonce of {len}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// DKG and signing

#[test]
fn dkg_and_signing_through_the_service_give_a_valid_signature() {
    let (h, mut session, wallet) = Harness::with_wallet();
    assert_eq!(wallet.info.wallet_id, wallet.id);
    assert_eq!(wallet.info.party, PROVIDER);
    assert_eq!(wallet.info.min_signers, 2);
    assert_eq!(wallet.info.parties, PARTIES);
    assert_eq!(wallet.info.epoch, Epoch(0));
    assert_eq!(wallet.info.ciphersuite, SUITE_SECP256K1_TR);

    let signature = sign_with(&h, &mut session, &wallet, MESSAGE);
    assert_eq!(signature.len(), 64);
    let signature = frost_core::Signature::<Suite>::deserialize(&signature).unwrap();
    wallet
        .public
        .verifying_key()
        .verify(MESSAGE, &signature)
        .unwrap();
    // The recovery pair (this device and the recovery cosigner) signs too; the provider signs
    // another message, and a second signature needs a second session.
    sign_with_recovery(&h, &wallet, ANOTHER_MESSAGE);
    sign_with(&h, &mut session, &wallet, ANOTHER_MESSAGE);
    sign_with(&h, &mut session, &wallet, MESSAGE);

    // GetWallet, from another session, returns what the DKG returned.
    let mut other = h.session();
    match get_wallet(&h, &mut other, wallet.id) {
        Response::Wallet { wallet: info } => {
            assert_eq!(info, wallet.info);
            assert_eq!(
                info.group_public_key.as_ref(),
                wallet
                    .public
                    .verifying_key()
                    .serialize()
                    .unwrap()
                    .as_slice()
            );
        }
        other => panic!("GetWallet: {other:?}"),
    }
    assert_eq!(
        get_wallet_refusal(&h, &mut other, WalletId(random())),
        ErrorKind::NotFound
    );
    // Every use of the share is in the audit log, which verifies under the attested key.
    let entries = verify_stored(&h.store, &h.service.audit_public_key()).unwrap();
    assert!(entries >= 4, "{entries} audit entries");
}

#[test]
fn dkg_start_for_an_existing_wallet_is_refused() {
    let (h, mut session, wallet) = Harness::with_wallet();
    let stored = h.store.all();
    assert_eq!(
        refused(h.call(&mut session, dkg_start(wallet.id))),
        ErrorKind::BadRequest
    );
    assert_eq!(
        h.store.all(),
        stored,
        "the refused DkgStart changed the store"
    );
    match get_wallet(&h, &mut session, wallet.id) {
        Response::Wallet { wallet: info } => assert_eq!(info, wallet.info),
        other => panic!("GetWallet: {other:?}"),
    }
    sign_with(&h, &mut session, &wallet, MESSAGE);
}

#[test]
fn a_second_dkg_start_for_a_running_ceremony_is_refused() {
    let h = Harness::new();
    let mut first = h.session();
    let mut second = h.session();
    let wallet_id = WalletId(random());
    let provider_round1 = started(h.call(&mut first, dkg_start(wallet_id)));
    // Refused as busy (retryable), never replacing the ceremony in flight.
    for session in [&mut first, &mut second] {
        assert_eq!(
            refused(h.call(session, dkg_start(wallet_id))),
            ErrorKind::Busy
        );
    }
    // The refused starts did not replace the running ceremony: it finishes with its round 1.
    let wallet = finish_dkg(
        &h,
        &mut first,
        &params(wallet_id),
        PROVIDER,
        Some(provider_round1),
    );
    sign_with(&h, &mut first, &wallet, MESSAGE);
    sign_with_recovery(&h, &wallet, MESSAGE);
}

#[test]
fn dkg_rounds_without_a_start_are_not_found() {
    let h = Harness::new();
    let mut session = h.session();
    let wallet_id = WalletId(random());
    let stored = h.store.all();
    for request in dkg_rounds(wallet_id) {
        let name = request.name();
        assert_eq!(
            refused(h.call(&mut session, request)),
            ErrorKind::NotFound,
            "{name}"
        );
    }
    assert_eq!(h.store.all(), stored);
}

// ---------------------------------------------------------------------------------------------
// Who may sign

#[test]
fn sign_commit_outside_authorized_is_refused() {
    let (h, mut session, wallet) = Harness::with_wallet();
    let bare = sign_commit_request(wallet.id, MESSAGE, &[pid(1), pid(2)]);
    assert_eq!(refused(h.call(&mut session, bare)), ErrorKind::BadRequest);
    // Nor nested: an Authorized request inside Authorized.
    let inner = sign_commit_request(wallet.id, MESSAGE, &[pid(1), pid(2)]);
    let challenge = challenge(&h.service, &mut session, wallet.id);
    let nested = wallet.device_wrap(&challenge, &inner);
    let response = by_device(&h, &mut session, &wallet, &nested);
    assert_eq!(refused(response), ErrorKind::Unauthorized);
}

#[test]
fn a_challenge_authorizes_one_request_only() {
    let (h, mut session, wallet) = Harness::with_wallet();
    let other_wallet = create_wallet(&h, &mut session);
    let inner = sign_commit_request(wallet.id, MESSAGE, &[pid(1), pid(2)]);

    // Without a challenge.
    let unchallenged = wallet.device_wrap(&[0; 32], &inner);
    assert_eq!(
        refused(h.call(&mut session, unchallenged)),
        ErrorKind::Unauthorized
    );

    // Once, not twice.
    let challenge_1 = challenge(&h.service, &mut session, wallet.id);
    let request = wallet.device_wrap(&challenge_1, &inner);
    committed(h.call(&mut session, request.clone())).unwrap();
    assert_eq!(
        committed(h.call(&mut session, request.clone())).unwrap_err(),
        ErrorKind::Unauthorized
    );
    // Not on another session, even one that holds a challenge of its own.
    let mut other = h.session();
    let _ = challenge(&h.service, &mut other, wallet.id);
    assert_eq!(
        committed(h.call(&mut other, request)).unwrap_err(),
        ErrorKind::Unauthorized
    );

    // A challenge for another wallet does not authorize this one.
    let challenge_2 = challenge(&h.service, &mut session, other_wallet.id);
    let request = wallet.device_wrap(&challenge_2, &inner);
    assert_eq!(
        committed(h.call(&mut session, request)).unwrap_err(),
        ErrorKind::Unauthorized
    );
    // A newer challenge replaces an older one.
    let older = challenge(&h.service, &mut session, wallet.id);
    let _newer = challenge(&h.service, &mut session, wallet.id);
    let request = wallet.device_wrap(&older, &inner);
    assert_eq!(
        committed(h.call(&mut session, request)).unwrap_err(),
        ErrorKind::Unauthorized
    );
    // The inner request names another wallet than the one authorized.
    let elsewhere = sign_commit_request(other_wallet.id, MESSAGE, &[pid(1), pid(2)]);
    let response = by_device(&h, &mut session, &wallet, &elsewhere);
    assert_eq!(committed(response).unwrap_err(), ErrorKind::BadRequest);
    // Still usable the honest way.
    sign_with(&h, &mut session, &wallet, MESSAGE);
}

#[test]
fn only_the_registered_device_key_may_sign() {
    let (h, mut session, wallet) = Harness::with_wallet();
    let other_wallet = create_wallet(&h, &mut session);
    let stranger = SigningKey::random(&mut OsRng);
    let inner = sign_commit_request(wallet.id, MESSAGE, &[pid(1), pid(2)]);
    for (role, key, who) in [
        (
            KeyRole::Device,
            &stranger as &dyn P256Signer,
            "a stranger's key",
        ),
        (
            KeyRole::Device,
            &other_wallet.device,
            "another wallet's device key",
        ),
        (
            KeyRole::Device,
            &wallet.recovery,
            "the recovery credential as device",
        ),
        (
            KeyRole::Recovery,
            &wallet.recovery,
            "the recovery credential",
        ),
        (
            KeyRole::Recovery,
            &wallet.device,
            "the device key as recovery",
        ),
    ] {
        let response = authorized(&h.service, &mut session, wallet.id, role, key, &inner);
        assert_eq!(
            committed(response).unwrap_err(),
            ErrorKind::Unauthorized,
            "{who}"
        );
    }
    // A signature over other bytes than the request sent.
    let challenge = challenge(&h.service, &mut session, wallet.id);
    let mut request = wallet.device_wrap(&challenge, &inner);
    if let Request::Authorized { request: bytes, .. } = &mut request {
        *bytes = ByteBuf::from(
            wire::encode(&sign_commit_request(wallet.id, b"other", &[pid(1), pid(2)])).unwrap(),
        );
    }
    assert_eq!(
        committed(h.call(&mut session, request)).unwrap_err(),
        ErrorKind::Unauthorized
    );
    // The refusals are logged, and the log still verifies.
    verify_stored(&h.store, &h.service.audit_public_key()).unwrap();
    sign_with(&h, &mut session, &wallet, MESSAGE);
}

#[test]
fn signing_without_the_provider_or_below_the_threshold_is_refused() {
    assert_signer_sets_refused(&[
        &[pid(1), pid(3)],
        &[pid(2)],
        &[],
        &[pid(2), pid(2)],
        &[pid(1), pid(1), pid(3)],
    ]);
}

#[test]
fn signing_with_a_party_outside_the_wallet_is_refused() {
    assert_signer_sets_refused(&[
        &[pid(2), pid(4)],
        &[pid(1), pid(2), pid(4)],
        &[pid(2), pid(9)],
    ]);
}

/// A new wallet's provider refuses a `SignCommit` for each of `sets`.
fn assert_signer_sets_refused(sets: &[&[PartyId]]) {
    let (h, mut session, wallet) = Harness::with_wallet();
    for signers in sets {
        assert_refused(
            sign_commit(&h, &mut session, &wallet, MESSAGE, signers),
            &[ErrorKind::BadRequest, ErrorKind::Ceremony],
            &format!("signers {signers:?}"),
        );
    }
}

#[test]
fn a_wallet_where_the_service_is_a_high_numbered_party_stays_usable() {
    let h = Harness::new();
    let mut session = h.session();
    let params = DkgParams {
        parties: vec![pid(1), pid(300), pid(3)],
        ..params(WalletId(random()))
    };
    let start = Request::DkgStart {
        params: params.clone(),
        me: pid(300),
        enrollment: None,
    };
    let provider_round1 = started(h.call(&mut session, start));
    let wallet = finish_dkg(&h, &mut session, &params, pid(300), Some(provider_round1));
    match get_wallet(&h, &mut session, wallet.id) {
        Response::Wallet { wallet: info } => assert_eq!(info, wallet.info),
        other => panic!("GetWallet: {other:?}"),
    }
}

#[test]
fn a_signing_package_that_differs_from_the_commitment_gets_no_share() {
    let (h, mut session, wallet) = Harness::with_wallet();
    let refusals = [ErrorKind::BadRequest, ErrorKind::Ceremony];

    // Another message than the one committed to.
    let (session_id, _, commitments) = open_session(&h, &mut session, &wallet);
    let package = signing_package::<Suite>(b"pay the attacker", &commitments).unwrap();
    assert_refused(
        sign_share(&h, &mut session, &session_id, &package),
        &refusals,
        "another message",
    );
    // The refusal consumed the session: the right package gets nothing either.
    let package = signing_package::<Suite>(MESSAGE, &commitments).unwrap();
    assert_eq!(
        sign_share(&h, &mut session, &session_id, &package).unwrap_err(),
        ErrorKind::NotFound
    );

    // Another signer set than the one committed to (party 3 added).
    let (session_id, _, mut commitments) = open_session(&h, &mut session, &wallet);
    // (Party 3's nonces drawn from this device's share: the service cannot tell whose they are.)
    let (_, third) = frost_core::round1::commit(wallet.share.signing_share(), &mut OsRng);
    commitments.insert(pid(3), third.serialize().unwrap());
    let package = signing_package::<Suite>(MESSAGE, &commitments).unwrap();
    assert_refused(
        sign_share(&h, &mut session, &session_id, &package),
        &refusals,
        "another signer set",
    );

    // The provider's commitment replaced by the one of another of its sessions.
    let (session_id, _, mut commitments) = open_session(&h, &mut session, &wallet);
    let (_, _, other_session) = open_session(&h, &mut session, &wallet);
    commitments.insert(PROVIDER, other_session[&PROVIDER].clone());
    let package = signing_package::<Suite>(MESSAGE, &commitments).unwrap();
    assert_refused(
        sign_share(&h, &mut session, &session_id, &package),
        &refusals,
        "a replaced commitment",
    );

    // Garbage.
    let (session_id, _, _) = open_session(&h, &mut session, &wallet);
    assert_refused(
        sign_share(&h, &mut session, &session_id, b"not a signing package"),
        &[ErrorKind::BadRequest],
        "garbage",
    );
}

#[test]
fn a_signing_session_gives_one_share_only() {
    let (h, mut session, wallet) = Harness::with_wallet();
    let (session_id, ours, commitments) = open_session(&h, &mut session, &wallet);
    let package = signing_package::<Suite>(MESSAGE, &commitments).unwrap();
    let share = sign_share(&h, &mut session, &session_id, &package).unwrap();
    // The same request again, and from another session: no second share from the same nonces.
    assert_eq!(
        sign_share(&h, &mut session, &session_id, &package).unwrap_err(),
        ErrorKind::NotFound
    );
    let mut other = h.session();
    assert_eq!(
        sign_share(&h, &mut other, &session_id, &package).unwrap_err(),
        ErrorKind::NotFound
    );
    // The one share is good.
    let our_share = ours.sign(&wallet.share, &package).unwrap();
    let shares = BTreeMap::from([(pid(1), our_share), (PROVIDER, share)]);
    aggregate::<Suite>(&package, &shares, &wallet.public).unwrap();

    // Unknown session ids. (Ids of the wrong length do not decode: `wire`'s tests.)
    assert_eq!(
        sign_share(&h, &mut session, &SessionId(random::<16>()), &package).unwrap_err(),
        ErrorKind::NotFound
    );
}

// ---------------------------------------------------------------------------------------------
// The store: sealed records, and a parent that tampers with them

#[test]
fn the_store_holds_only_records_sealed_under_the_token() {
    let (h, mut session, wallet) = Harness::with_wallet();
    sign_with(&h, &mut session, &wallet, MESSAGE);
    let public = wallet.public.serialize().unwrap();
    let group = wallet.public.verifying_key().serialize().unwrap();

    let stored = h.store.all();
    let prefix = format!("wallet/{}/", wallet.id.to_hex());
    let records: Vec<&(String, Vec<u8>)> = stored
        .iter()
        .filter(|(k, _)| k.starts_with(&prefix))
        .collect();
    assert!(records.len() >= 2, "a state and a share: {stored:?}");
    for (key, value) in &stored {
        // Not even the public parts of a wallet are readable anywhere in the store.
        assert!(!value.windows(group.len()).any(|w| w == group), "{key}");
        assert!(!value.windows(public.len()).any(|w| w == public), "{key}");
        if key.starts_with("audit/") {
            continue; // signed, public by design
        }
        if key.starts_with("anchors/") {
            // The anchors' hash trees (docs/architecture.md, "Several instances"): hashes of
            // labels, generations and state digests (already the state blobs' names), held
            // to the token's roots by digest, not secret.
            continue;
        }
        assert_eq!(value[0], SEAL_FORMAT_VERSION, "{key}");
        assert_eq!(value[1..1 + SEAL_KEY_ID_LEN], h.sealer.key_id(), "{key}");
        if key.starts_with("wallet/") {
            assert!(value.len() > 100, "{key}: {} bytes", value.len());
        }
    }

    // The wallet records behind another token's sealing key (same key label): nothing opens,
    // whether that enclave trusts this token's anchors or has its own.
    let other_token = init_token(&h.module, "elsewhere").unwrap();
    let other_sealer = other_token
        .aes_sealing_key_or_generate(SEALING_KEY)
        .unwrap();
    assert_ne!(other_sealer.key_id(), h.sealer.key_id());
    let elsewhere_with = |anchor: cosigner_kms::Token| {
        Service::new(
            Box::new(h.attester().unwrap()),
            Box::new(other_sealer.clone()),
            Box::new(WalletsOnly {
                shared: h.store.clone(),
                own: MemoryStore::default(),
            }),
            // Anchors laid out as every enclave lays them out: partition roots on the token,
            // their trees in the (shared) store.
            Box::new(
                PartitionedAnchor::new(
                    TokenAnchor(anchor),
                    h.store.clone(),
                    DEFAULT_PARTITIONS,
                    false,
                )
                .unwrap(),
            ),
            RefreshPolicy::default(),
        )
    };
    // With this token's anchors, the other enclave does not even start: this token anchored an
    // audit key that store does not hold (a wrong or tampered database).
    let refused_start = elsewhere_with(h.token.clone()).unwrap_err();
    assert!(refused_start.contains("audit key"), "{refused_start}");
    let elsewhere = elsewhere_with(other_token).unwrap();
    let mut foreign = attested(&elsewhere);
    let get = elsewhere.handle(
        &mut foreign,
        Request::GetWallet {
            wallet_id: wallet.id,
        },
    );
    assert_eq!(refused(get), ErrorKind::Integrity);
    let inner = sign_commit_request(wallet.id, MESSAGE, &[pid(1), pid(2)]);
    let commit = by_own_key(&elsewhere, &mut foreign, &wallet, KeyRole::Device, &inner);
    assert_eq!(refused(commit), ErrorKind::Integrity);
    // The wallet records were not touched; the original service still signs.
    for (key, value) in &records {
        assert_eq!(&h.store.value(key), value, "{key}");
    }
    sign_with(&h, &mut session, &wallet, MESSAGE);
}

#[test]
fn a_record_moved_to_another_wallet_is_refused() {
    let h = Harness::new();
    let mut session = h.session();
    let first = create_wallet(&h, &mut session);
    let second = create_wallet(&h, &mut session);

    // The first wallet's `part` record in place of the second's: where each is, and what the
    // second's was.
    let move_over = |part: &str| {
        let (from, to) = (
            h.store.key_of(&first.id, part),
            h.store.key_of(&second.id, part),
        );
        let was = h.store.value(&to);
        h.store.put(&to, &h.store.value(&from)).unwrap();
        (from, to, was)
    };

    // The first wallet's share in place of the second's: the second cannot sign.
    let (first_share, second_share, second_share_blob) = move_over("/share/");
    assert_no_commit(&h, &mut session, &second, "a share moved to another wallet");
    h.store.put(&second_share, &second_share_blob).unwrap();

    // The first wallet's state in place of the second's.
    let (first_state, second_state, second_state_blob) = move_over("/state");
    assert_eq!(
        get_wallet_refusal(&h, &mut session, second.id),
        ErrorKind::Integrity
    );
    assert_no_commit(&h, &mut session, &second, "a state moved to another wallet");
    h.store.put(&second_state, &second_state_blob).unwrap();

    // Under a wallet id that never existed.
    let unknown = WalletId(random());
    for key in [&first_state, &first_share] {
        let moved = key.replace(&first.id.to_hex(), &unknown.to_hex());
        h.store.put(&moved, &h.store.value(key)).unwrap();
    }
    assert_eq!(
        get_wallet_refusal(&h, &mut session, unknown),
        ErrorKind::Integrity
    );

    // Back in place, both wallets work; the first was never affected.
    sign_with(&h, &mut session, &second, MESSAGE);
    sign_with(&h, &mut session, &first, MESSAGE);
}

#[test]
fn a_flipped_bit_in_a_record_is_refused() {
    let (h, mut session, wallet) = Harness::with_wallet();
    for part in ["/state", "/share/"] {
        let key = h.store.key_of(&wallet.id, part);
        let blob = h.store.value(&key);
        // Version, key id, IV, ciphertext, tag.
        let positions = [
            0,
            1,
            SEAL_KEY_ID_LEN,
            1 + SEAL_KEY_ID_LEN,
            50,
            blob.len() / 2,
            blob.len() - 17,
            blob.len() - 1,
        ];
        let mut tampered_blobs: Vec<Vec<u8>> = Vec::new();
        for position in positions {
            for bit in [0x01u8, 0x80] {
                let mut tampered = blob.clone();
                tampered[position] ^= bit;
                tampered_blobs.push(tampered);
            }
        }
        // Truncated, extended, emptied.
        tampered_blobs.push(blob[..blob.len() - 1].to_vec());
        tampered_blobs.push([blob.as_slice(), &[0]].concat());
        tampered_blobs.push(blob[..20].to_vec());
        tampered_blobs.push(Vec::new());
        for tampered in tampered_blobs {
            h.store.put(&key, &tampered).unwrap();
            if part == "/state" {
                assert_eq!(
                    get_wallet_refusal(&h, &mut session, wallet.id),
                    ErrorKind::Integrity,
                    "{key}"
                );
            }
            assert_no_commit(&h, &mut session, &wallet, &format!("{key} tampered"));
        }
        h.store.put(&key, &blob).unwrap();
    }

    // The share tampered between the two signing rounds: the open session signs with the key
    // package it unsealed (and checked) at its commitment, never re-reading the record; the next
    // commitment finds the record damaged and opens nothing.
    let key = h.store.key_of(&wallet.id, "/share/");
    let blob = h.store.value(&key);
    let (session_id, _, commitments) = open_session(&h, &mut session, &wallet);
    let package = signing_package::<Suite>(MESSAGE, &commitments).unwrap();
    let mut tampered = blob.clone();
    tampered[60] ^= 1;
    h.store.put(&key, &tampered).unwrap();
    sign_share(&h, &mut session, &session_id, &package).unwrap();
    assert_eq!(
        sign_commit(&h, &mut session, &wallet, MESSAGE, &[pid(1), pid(2)]).unwrap_err(),
        ErrorKind::Integrity
    );
    h.store.put(&key, &blob).unwrap();
    assert_eq!(
        sign_share(&h, &mut session, &session_id, &package).unwrap_err(),
        ErrorKind::NotFound
    );
    sign_with(&h, &mut session, &wallet, MESSAGE);
}

#[test]
fn a_deleted_record_is_refused() {
    let (h, mut session, wallet) = Harness::with_wallet();
    // A wallet that never existed is NotFound; one whose records the host dropped is not: the
    // token's anchor says it exists, so a missing state is the host's doing (Integrity).
    assert_eq!(
        get_wallet_refusal(&h, &mut session, WalletId(random())),
        ErrorKind::NotFound
    );
    let share = h.store.key_of(&wallet.id, "/share/");
    let share_blob = h.store.value(&share);
    h.store.delete(&share).unwrap();
    assert_no_commit(&h, &mut session, &wallet, "share deleted");
    h.store.put(&share, &share_blob).unwrap();

    let state = h.store.key_of(&wallet.id, "/state");
    h.store.delete(&state).unwrap();
    assert_refused(
        outcome(get_wallet(&h, &mut session, wallet.id)),
        &[ErrorKind::Integrity],
        "state deleted",
    );
    assert_no_commit(&h, &mut session, &wallet, "state deleted");
    // And a DKG cannot recreate it over the dropped one.
    assert_eq!(
        refused(h.call(&mut session, dkg_start(wallet.id))),
        ErrorKind::BadRequest
    );
}

#[test]
fn a_rolled_back_state_is_refused() {
    // A signature limit makes every signature rewrite the state (its counter).
    let h = Harness::with_policy(RefreshPolicy {
        after: None,
        after_signatures: Some(1000),
    });
    let mut session = h.session();
    let wallet = create_wallet(&h, &mut session);
    // State blobs are stored under their digest; the anchor names the current one.
    let old_key = h.store.key_of(&wallet.id, "/state");
    let old = h.store.value(&old_key);
    sign_with(&h, &mut session, &wallet, MESSAGE);
    let state = h.store.key_of(&wallet.id, "/state");
    let new = h.store.value(&state);
    assert_ne!(old, new, "signing did not rewrite the state");
    // The host serves the older (validly sealed) state in the current one's place: refused.
    h.store.put(&state, &old).unwrap();
    assert_eq!(
        get_wallet_refusal(&h, &mut session, wallet.id),
        ErrorKind::Integrity
    );
    assert_no_commit(&h, &mut session, &wallet, "rolled back state");
    // Or brings the older one back under its own name and drops the current one: refused too.
    h.store.delete(&state).unwrap();
    h.store.put(&old_key, &old).unwrap();
    assert_eq!(
        get_wallet_refusal(&h, &mut session, wallet.id),
        ErrorKind::Integrity
    );
    h.store.delete(&old_key).unwrap();
    h.store.put(&state, &new).unwrap();
    sign_with(&h, &mut session, &wallet, MESSAGE);
}

// ---------------------------------------------------------------------------------------------
// Personal wallets with a spending policy: PSBTs only, valued by the service

/// 0.01 BTC per rolling 24 hours, fee included.
const DAILY: &str = r#"
[[rule]]
name = "daily"
velocity = { window_hours = 24, limit = 1_000_000 }
approvals = 1
"#;

fn output_key(wallet: &Wallet) -> [u8; 32] {
    let sec1 = wallet.public.verifying_key().serialize().unwrap();
    sec1[1..33].try_into().unwrap()
}

/// A PSBT signing session opened at the service (party 1 is the other signer).
struct OpenPsbt {
    psbt: Vec<u8>,
    session_id: SessionId,
    ours: Vec<SignerSession<Suite>>,
    packages: Vec<Vec<u8>>,
}

/// `SignPsbtCommit` with party 1's commitments; the refusal's message on failure.
fn psbt_commit(
    h: &Harness,
    session: &mut SessionState,
    wallet: &Wallet,
    spend: &cosigner_tests::bitcoin_tx::Spend,
) -> Result<OpenPsbt, String> {
    use cosigner_protocol::psbt;
    let bytes = psbt::decode_psbt_file(spend.psbt_base64.as_bytes()).unwrap();
    // Ours may fail (a PSBT the service must refuse too): then it is sent unchecked.
    let summary = psbt::analyze(
        &bytes,
        &psbt::OwnKeys::root_only(&output_key(wallet)).unwrap(),
        psbt::Network::Regtest,
    );
    let request = Request::SignPsbtCommit {
        wallet_id: wallet.id,
        epoch: Epoch(0),
        psbt: ByteBuf::from(bytes.clone()),
        signers: vec![pid(1), PROVIDER],
    };
    let (session_id, theirs, evaluation) = match by_device(h, session, wallet, &request) {
        Response::PsbtCommitted {
            session_id,
            commitments,
            evaluation,
        } => (session_id, commitments, evaluation),
        Response::Error(e) => return Err(e.message),
        other => panic!("SignPsbtCommit: {other:?}"),
    };
    let summary = summary.expect("the service committed to a PSBT this device refuses");
    assert_eq!(evaluation.value_leaving, summary.value_leaving);
    assert_eq!(evaluation.txid, summary.txid);
    assert_eq!(theirs.len(), summary.sighashes.len());
    let key = &wallet.share;
    let mut ours = Vec::new();
    let mut packages = Vec::new();
    for (sighash, provider) in summary.sighashes.iter().zip(theirs) {
        let (s, c) =
            SignerSession::<Suite>::commit(key, pid(1), sighash, &[pid(1), PROVIDER], &mut OsRng)
                .unwrap();
        ours.push(s);
        let commitments = BTreeMap::from([(pid(1), c), (PROVIDER, provider.into_vec())]);
        packages.push(signing_package::<Suite>(sighash, &commitments).unwrap());
    }
    Ok(OpenPsbt {
        psbt: bytes,
        session_id,
        ours,
        packages,
    })
}

/// `SignPsbtShare`, then aggregation and finalization: the transaction's hex.
fn psbt_release(
    h: &Harness,
    session: &mut SessionState,
    wallet: &Wallet,
    open: OpenPsbt,
) -> Result<String, String> {
    let shares = match h.call(
        session,
        Request::SignPsbtShare {
            session_id: open.session_id,
            signing_packages: open.packages.iter().cloned().map(ByteBuf::from).collect(),
        },
    ) {
        Response::PsbtShares { shares, .. } => shares,
        Response::Error(e) => return Err(e.message),
        other => panic!("SignPsbtShare: {other:?}"),
    };
    let key = &wallet.share;
    let mut signatures = Vec::new();
    for ((ours, package), provider) in open.ours.into_iter().zip(&open.packages).zip(shares) {
        let share = ours.sign(key, package).unwrap();
        let all = BTreeMap::from([(pid(1), share), (PROVIDER, provider.into_vec())]);
        let signature = aggregate::<Suite>(package, &all, &wallet.public).unwrap();
        signatures.push(<[u8; 64]>::try_from(signature.as_slice()).unwrap());
    }
    let (_, tx) = cosigner_protocol::psbt::finalize(
        &open.psbt,
        &cosigner_protocol::psbt::OwnKeys::root_only(&output_key(wallet)).unwrap(),
        &signatures,
    )
    .unwrap();
    Ok(hex::encode(tx))
}

/// A PSBT signed by hand ([`psbt_commit`], [`psbt_release`]): for what the real client would
/// never send (a PSBT its own reading refuses).
fn sign_psbt(
    h: &Harness,
    session: &mut SessionState,
    wallet: &Wallet,
    spend: &cosigner_tests::bitcoin_tx::Spend,
) -> Result<String, String> {
    let open = psbt_commit(h, session, wallet, spend)?;
    psbt_release(h, session, wallet, open)
}

/// Signs `spend` with the client (`psbt_sign::sign_psbt`): this device and the provider over
/// `session`; the transaction's hex.
fn client_signs_psbt(
    h: &Harness,
    session: &mut SessionState,
    wallet: &Wallet,
    spend: &cosigner_tests::bitcoin_tx::Spend,
) -> Result<String, cosigner_client::ClientError> {
    let psbt = cosigner_protocol::psbt::decode_psbt_file(spend.psbt_base64.as_bytes()).unwrap();
    let mut provider = InProcess::new(&h.service, session);
    let signed =
        cosigner_client::psbt_sign::sign_psbt(&wallet.home, &mut provider, wallet.id, &psbt)?;
    Ok(hex::encode(signed.tx))
}

/// The service's refusal of a spend its wallet's policy does not allow, as the client reports
/// it. A policy refusal has no kind of its own (it is a `BadRequest`): the reason names it.
fn refused_by_policy(result: Result<String, cosigner_client::ClientError>) {
    match result {
        Err(cosigner_client::ClientError::Remote(e)) => {
            assert_eq!(e.kind, ErrorKind::BadRequest, "{e:?}");
            assert!(e.message.contains("no rule matches"), "{e:?}");
        }
        other => panic!("the policy let it through: {other:?}"),
    }
}

/// A 2-input, 2-output spend: `leaving` satoshis leave (10 000 of them the fee).
fn spend_of(wallet: &Wallet, leaving: u64) -> cosigner_tests::bitcoin_tx::Spend {
    use cosigner_tests::bitcoin_tx;
    bitcoin_tx::payment(
        &hex::encode(output_key(wallet)),
        &[leaving, 700_000],
        leaving - 10_000,
        700_000,
    )
    .unwrap()
}

#[test]
fn a_policy_wallet_signs_psbts_within_its_daily_limit_only() {
    let (h, mut session, wallet) =
        Harness::with_wallet_made(|h, session| create_policy_wallet(h, session, DAILY).unwrap());

    let first = spend_of(&wallet, 600_000);
    let tx = client_signs_psbt(&h, &mut session, &wallet, &first).unwrap();
    cosigner_tests::bitcoin_tx::verify_consensus(&tx, &first.prevouts).unwrap();

    // 600 000 + 500 000 would exceed the rolling 1 000 000.
    refused_by_policy(client_signs_psbt(
        &h,
        &mut session,
        &wallet,
        &spend_of(&wallet, 500_000),
    ));
    // Exactly up to the limit still passes.
    let last = spend_of(&wallet, 400_000);
    let tx = client_signs_psbt(&h, &mut session, &wallet, &last).unwrap();
    cosigner_tests::bitcoin_tx::verify_consensus(&tx, &last.prevouts).unwrap();

    // A raw digest cannot be valued: refused, whatever it is.
    match by_device(
        &h,
        &mut session,
        &wallet,
        &sign_commit_request(wallet.id, MESSAGE, &[pid(1), pid(2)]),
    ) {
        Response::Error(e) => assert!(
            e.message.contains("this wallet has a policy: sign a PSBT"),
            "{e:?}"
        ),
        other => panic!("a raw SignCommit was answered: {other:?}"),
    }
    // A PSBT that does not spend the wallet's own output is refused before any commitment. The
    // client refuses it on its own reading and never sends it: played by hand, as a hostile
    // client would.
    let another = create_wallet(&h, &mut session);
    let foreign = cosigner_tests::bitcoin_tx::build(
        &hex::encode(output_key(&another)),
        &[10_000],
        &[(cosigner_tests::bitcoin_tx::Pay::Change, 5_000)],
    )
    .unwrap();
    let refused = sign_psbt(&h, &mut session, &wallet, &foreign).unwrap_err();
    assert!(refused.contains("PSBT"), "{refused}");
    // Every decision is in the audit log, which verifies.
    verify_stored(&h.store, &h.service.audit_public_key()).unwrap();
}

#[test]
fn the_same_transaction_claiming_other_amounts_is_judged_again() {
    use cosigner_tests::bitcoin_tx::{self, Pay};
    let (h, mut session, wallet) =
        Harness::with_wallet_made(|h, session| create_policy_wallet(h, session, DAILY).unwrap());
    // 510 000 sat leave (fee 10 000): within the day's 1 000 000, signed and remembered.
    let low = bitcoin_tx::build(
        &hex::encode(output_key(&wallet)),
        &[510_000],
        &[(Pay::To(bitcoin_tx::foreign_address()), 500_000)],
    )
    .unwrap();
    client_signs_psbt(&h, &mut session, &wallet, &low).unwrap();
    // The same transaction (same txid) whose input claims 1 600 000: 1 600 000 leave, which the
    // day no longer allows. Signed before, but not this: judged again, and refused.
    let high = bitcoin_tx::claiming(&low, 0, 1_600_000).unwrap();
    refused_by_policy(client_signs_psbt(&h, &mut session, &wallet, &high));
    // The first again is a retry: not judged (or counted) twice.
    client_signs_psbt(&h, &mut session, &wallet, &low).unwrap();
}

#[test]
fn two_open_sessions_cannot_together_exceed_the_limit() {
    let (h, mut session, wallet) =
        Harness::with_wallet_made(|h, session| create_policy_wallet(h, session, DAILY).unwrap());
    // Played by hand: the client commits and releases one PSBT at a time, never two sessions
    // open at once released out of order, nor a release from another connection.
    // Both fit on their own when committed...
    let a = psbt_commit(&h, &mut session, &wallet, &spend_of(&wallet, 600_000)).unwrap();
    let b = psbt_commit(&h, &mut session, &wallet, &spend_of(&wallet, 600_000)).unwrap();
    // ...another connection cannot release them...
    let mut other = h.session();
    let stolen = match h.call(
        &mut other,
        Request::SignPsbtShare {
            session_id: a.session_id,
            signing_packages: a.packages.iter().cloned().map(ByteBuf::from).collect(),
        },
    ) {
        Response::Error(e) => e.message,
        other => panic!("another session released shares: {other:?}"),
    };
    assert!(stolen.contains("another connection"), "{stolen}");
    // ...the first is released and recorded; the second, evaluated again, no longer fits.
    psbt_release(&h, &mut session, &wallet, a).unwrap();
    let b_id = b.session_id;
    let packages: Vec<ByteBuf> = b.packages.iter().cloned().map(ByteBuf::from).collect();
    let why = psbt_release(&h, &mut session, &wallet, b).unwrap_err();
    assert!(why.contains("no rule matches"), "{why}");
    // Its nonces are gone with it.
    assert_eq!(
        refused(h.call(
            &mut session,
            Request::SignPsbtShare {
                session_id: b_id,
                signing_packages: packages,
            },
        )),
        ErrorKind::NotFound
    );
}

#[test]
fn only_the_recovery_credential_changes_a_personal_policy() {
    let (h, mut session, wallet) =
        Harness::with_wallet_made(|h, session| create_policy_wallet(h, session, DAILY).unwrap());
    let big = spend_of(&wallet, 1_500_000);
    refused_by_policy(client_signs_psbt(&h, &mut session, &wallet, &big));
    let remove = Request::SetPolicy {
        wallet_id: wallet.id,
        policy: None,
    };
    // The device key (a thief's phone) cannot lift its own limit.
    match by_device(&h, &mut session, &wallet, &remove) {
        Response::Error(e) => assert_eq!(e.kind, ErrorKind::Unauthorized, "{e:?}"),
        other => panic!("the device key changed the policy: {other:?}"),
    }
    refused_by_policy(client_signs_psbt(&h, &mut session, &wallet, &big));
    // The offline recovery credential can.
    assert_eq!(
        by_recovery(&h, &mut session, &wallet, &remove),
        Response::Done
    );
    let tx = client_signs_psbt(&h, &mut session, &wallet, &big).unwrap();
    cosigner_tests::bitcoin_tx::verify_consensus(&tx, &big.prevouts).unwrap();
    // Without a policy, raw digests are signed again.
    sign_with(&h, &mut session, &wallet, MESSAGE);
    // Put back, the limit counts the spend made meanwhile.
    let restore = Request::SetPolicy {
        wallet_id: wallet.id,
        policy: Some(DAILY.to_owned()),
    };
    assert_eq!(
        by_recovery(&h, &mut session, &wallet, &restore),
        Response::Done
    );
    refused_by_policy(client_signs_psbt(
        &h,
        &mut session,
        &wallet,
        &spend_of(&wallet, 20_000),
    ));
}

#[test]
fn the_policy_is_bound_to_the_registration_and_must_parse() {
    let h = Harness::new();
    let mut session = h.session();
    // The host swaps the policy after the device signed the registration: refused.
    let loose = DAILY.replace("1_000_000", "100_000_000_000");
    let swapped = create_wallet_registering(&h, &mut session, &|w, t, d, r| {
        let mut reg = registration_with_policy(DAILY)(w, t, d, r);
        reg.policy = Some(loose.clone());
        reg
    })
    .err()
    .unwrap();
    assert!(swapped.contains("registration signature"), "{swapped}");
    // ...or drops it: refused too.
    let dropped = create_wallet_registering(&h, &mut session, &|w, t, d, r| {
        let mut reg = registration_with_policy(DAILY)(w, t, d, r);
        reg.policy = None;
        reg
    })
    .err()
    .unwrap();
    assert!(dropped.contains("registration signature"), "{dropped}");
    // A policy naming someone other than the owner does not parse.
    let stranger = "[[rule]]\nname = \"x\"\napprovals = 1\napprovers = [\"bob\"]\n";
    let bad = create_wallet_registering(&h, &mut session, &registration_with_policy(stranger))
        .err()
        .unwrap();
    assert!(bad.contains("bob"), "{bad}");
}

/// Party `n`, where `n` is a literal known not to be 0.
fn pid(n: u16) -> cosigner_protocol::id::PartyId {
    cosigner_protocol::id::PartyId::new(n).unwrap()
}
