//! Ethereum wallets through the enclave service and the client's own ceremonies (in process, real
//! SoftHSM tokens): the threshold ECDSA DKG among this device and both cosigners, transactions
//! signed by the device with the provider and executed by py-evm, and what the provider refuses.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use cosigner_client::ClientError;
use cosigner_client::eth::{self, EthCreated};
use cosigner_client::home::Home;
use cosigner_client::wallet;
use cosigner_enclave::service::RefreshPolicy;
use cosigner_eth::TxRequest;
use cosigner_protocol::ecdsa::sign as ecdsa_sign;
use cosigner_protocol::id::Epoch;
use cosigner_protocol::party::{DEVICE, PROVIDER};
use cosigner_protocol::wire::{ErrorKind, KeyRole, Request, Response, SessionId, WalletId};
use cosigner_tests::couriers::{Cut, HoldCommit, is_commit};
use cosigner_tests::ecdsa::{
    SKIP_LINE, SKIP_TOKEN_LINE, TESTER_CHAIN_ID, TokenJob, python_available, run_in_evm,
    run_with_token, token_address, vyper_available,
};
use cosigner_tests::in_process::{Cosigners, Enclave, InProcess, tempfile};
use serde_bytes::ByteBuf;

const ETH: u128 = 1_000_000_000_000_000_000;
const BOB: &str = "0x000000000000000000000000000000000000b0b0";

fn cosigners() -> Cosigners {
    Cosigners::start()
}

fn create(c: &Cosigners, home: &Home, dir: &std::path::Path) -> EthCreated {
    create_with(c, home, dir, None).unwrap()
}

fn create_with(
    c: &Cosigners,
    home: &Home,
    dir: &std::path::Path,
    policy: Option<&str>,
) -> Result<EthCreated, ClientError> {
    let mut provider_session = c.provider.session();
    let mut recovery_session = c.recovery.session();
    eth::create(
        home,
        &mut InProcess::new(&c.provider.service, &mut provider_session),
        &mut InProcess::new(&c.recovery.service, &mut recovery_session),
        &dir.join("recovery.key"),
        None,
        policy,
    )
}

/// Both cosigners, a device home and the Ethereum wallet it created with them.
struct Owned {
    c: Cosigners,
    home: Home,
    created: EthCreated,
    _dir: tempfile::TempDir,
}

fn owned() -> Owned {
    let c = cosigners();
    let dir = tempfile::tempdir().unwrap();
    let home = Home::open(dir.path()).unwrap();
    let created = create(&c, &home, dir.path());
    Owned {
        c,
        home,
        created,
        _dir: dir,
    }
}

fn payment(nonce: u64, wei: u128) -> TxRequest {
    TxRequest::from_json(&format!(
        r#"{{"chainId":{TESTER_CHAIN_ID},"nonce":{nonce},"to":"{BOB}","value":"{wei}","gas":21000,
            "maxFeePerGas":"2000000000","maxPriorityFeePerGas":"1000000000"}}"#
    ))
    .unwrap()
}

#[test]
fn an_ethereum_wallet_is_made_by_three_parties_and_its_transactions_execute() {
    let Owned {
        c,
        home,
        created,
        _dir,
    } = owned();
    let wallet = created.wallet;
    assert!(wallet.address.starts_with("0x") && wallet.address.len() == 42);
    assert!(created.recovery_key_path.as_ref().unwrap().exists());
    // Both cosigners hold the same public key as this device.
    for enclave in [&c.provider, &c.recovery] {
        let mut session = enclave.session();
        match enclave.call(
            &mut session,
            Request::GetWallet {
                wallet_id: wallet.wallet_id,
            },
        ) {
            Response::Wallet { wallet: info } => {
                assert_eq!(
                    info.group_public_key.as_slice(),
                    wallet.public_key_bytes().unwrap()
                );
                assert_eq!(
                    info.ciphersuite,
                    cosigner_protocol::wire::SUITE_SECP256K1_ECDSA
                );
            }
            other => panic!("{other:?}"),
        }
    }
    let mut session = c.provider.session();
    let mut courier = InProcess::new(&c.provider.service, &mut session);
    let mut signed = Vec::new();
    for (nonce, wei) in [(0, 3 * ETH), (1, ETH)] {
        let s = eth::sign(&home, &mut courier, wallet.wallet_id, payment(nonce, wei)).unwrap();
        assert_eq!(s.from, wallet.address);
        assert!(
            s.receipt.is_none(),
            "an in-process cosigner has no attestation document to keep"
        );
        signed.push(cosigner_eth::SignedTx {
            raw: s.raw_tx,
            hash: s.tx_hash,
        });
    }
    // The provider logged each signature before releasing it.
    let log = c.provider.store.all();
    let entries = log.iter().filter(|(k, _)| k.starts_with("audit/")).count();
    assert!(
        entries >= 3,
        "creation and two signatures are in the audit log ({entries})"
    );
    if !python_available() {
        println!("{SKIP_LINE}");
        return;
    }
    let report = run_in_evm(&wallet.address, 10 * ETH, &signed).unwrap();
    assert_eq!(report.senders, vec![wallet.address.clone(); 2]);
    assert_eq!(report.receipts, vec![1, 1]);
    assert_eq!(report.balances[&BOB.to_lowercase()], (4 * ETH).to_string());
}

/// Sends `EthSignStart` for `payload` as the device would, its own round 1 included.
fn start_request(home: &Home, wallet_id: WalletId, payload: Vec<u8>) -> Request {
    let wallet = home.eth_wallet(&wallet_id).unwrap();
    let key = home.ecdsa_key(&wallet).unwrap();
    let nonce = [7u8; 32];
    let signers = [DEVICE, PROVIDER];
    let id = ecdsa_sign::sign_id(&wallet_id, &signers, &nonce);
    // DKLs23 binds each message to the digest: the one the provider will compute, where it can.
    let hash = cosigner_eth::UnsignedTx::from_signing_payload(&payload)
        .map_or([0; 32], |t| t.signing_hash());
    let (_, round1) = ecdsa_sign::start(&key, &signers, id, hash).unwrap();
    Request::EthSignStart {
        wallet_id,
        epoch: Epoch(0),
        tx: ByteBuf::from(payload),
        signers: signers.to_vec(),
        nonce: ByteBuf::from(nonce.to_vec()),
        round1,
    }
}

fn remote_kind(result: Result<Response, ClientError>) -> ErrorKind {
    match result {
        Err(ClientError::Remote(e)) => e.kind,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn the_provider_refuses_what_it_cannot_read_and_sessions_it_did_not_open() {
    let Owned {
        c,
        home,
        created,
        _dir,
    } = owned();
    let id = created.wallet.wallet_id;
    let device = home.device_key().unwrap();
    let mut session = c.provider.session();
    let mut courier = InProcess::new(&c.provider.service, &mut session);
    // Not a transaction; a legacy one without a chain id; a Bitcoin signing request.
    let legacy_no_chain = hex::decode(
        "e9098504a817c800825208943535353535353535353535353535353535353535880de0b6b3a764000080",
    )
    .unwrap();
    for payload in [b"a digest, not a transaction".to_vec(), legacy_no_chain] {
        let request = start_request(&home, id, payload);
        let answer = wallet::authorized(&mut courier, id, KeyRole::Device, &device, &request);
        assert_eq!(remote_kind(answer), ErrorKind::BadRequest);
    }
    let frost = Request::SignCommit {
        wallet_id: id,
        epoch: Epoch(0),
        message: ByteBuf::from(vec![0; 32]),
        signers: vec![DEVICE, PROVIDER],
    };
    let answer = wallet::authorized(&mut courier, id, KeyRole::Device, &device, &frost);
    assert_eq!(remote_kind(answer), ErrorKind::BadRequest);
    // Unsigned, an EthSignStart is refused before anything is read.
    let bare = start_request(&home, id, payment(0, 1).tx.signing_payload());
    assert!(matches!(
        remote_kind(courier_call(&mut courier, &bare)),
        ErrorKind::BadRequest
    ));
    // A session is finished only once, and only on its own connection.
    let request = start_request(&home, id, payment(0, 1).tx.signing_payload());
    let Response::EthSignRound {
        session_id, round2, ..
    } = wallet::authorized(&mut courier, id, KeyRole::Device, &device, &request).unwrap()
    else {
        panic!("no EthSignRound");
    };
    let mut other_session = c.provider.session();
    let mut other = InProcess::new(&c.provider.service, &mut other_session);
    let finish = Request::EthSignFinish {
        session_id,
        round2: round2.clone(),
        round3: round2,
    };
    assert_eq!(
        remote_kind(courier_call(&mut other, &finish)),
        ErrorKind::Unauthorized
    );
    // Our garbage round messages end the session; it cannot be tried again.
    assert!(courier_call(&mut courier, &finish).is_err());
    assert_eq!(
        remote_kind(courier_call(&mut courier, &finish)),
        ErrorKind::NotFound
    );
    let unknown = Request::EthSignFinish {
        session_id: SessionId([9; 16]),
        round2: start_round(&home, id),
        round3: start_round(&home, id),
    };
    assert_eq!(
        remote_kind(courier_call(&mut courier, &unknown)),
        ErrorKind::NotFound
    );
}

fn start_round(home: &Home, id: WalletId) -> cosigner_protocol::ecdsa::sign::EcdsaSignMessage {
    match start_request(home, id, Vec::new()) {
        Request::EthSignStart { round1, .. } => round1,
        _ => unreachable!(),
    }
}

fn courier_call(courier: &mut InProcess<'_>, request: &Request) -> Result<Response, ClientError> {
    use cosigner_client::courier::Courier;
    courier.call(request)
}

/// The device's round 1 with bytes of its OT-extension matrix flipped: a selective-failure probe
/// (whether the provider accepts reveals bits of its OT secret, eprint 2023/765 §5).
fn probing_start(home: &Home, wallet_id: WalletId, payload: Vec<u8>) -> Request {
    let mut request = start_request(home, wallet_id, payload);
    if let Request::EthSignStart { round1, .. } = &mut request {
        let mut parts: Vec<dkls23::protocols::signing::TransmitPhase1to2> =
            postcard::from_bytes(&round1.body).unwrap();
        // Every column: the check fails unless every probed bit of the secret is 0.
        for column in parts[0].mul_transmit.u.iter_mut() {
            for b in column.iter_mut() {
                *b ^= 0xa5;
            }
        }
        round1.body = ByteBuf::from(postcard::to_allocvec(&parts).unwrap());
    }
    request
}

/// The device of `home` sends the provider a selective-failure probe, which excludes it.
fn probe_and_be_excluded(c: &Cosigners, home: &Home, id: WalletId) {
    let device = home.device_key().unwrap();
    let mut session = c.provider.session();
    let mut courier = InProcess::new(&c.provider.service, &mut session);
    let probe = probing_start(home, id, payment(0, 1).tx.signing_payload());
    let answer = wallet::authorized(&mut courier, id, KeyRole::Device, &device, &probe);
    assert_eq!(remote_kind(answer), ErrorKind::Unauthorized);
}

#[test]
fn a_device_whose_message_fails_the_ot_check_is_excluded_for_good() {
    let Owned {
        c,
        home,
        created,
        _dir,
    } = owned();
    let id = created.wallet.wallet_id;
    probe_and_be_excluded(&c, &home, id);
    // No second question: an honest request is refused too, on a new session, and the exclusion
    // is in the audit log.
    let mut again = c.provider.session();
    let mut courier = InProcess::new(&c.provider.service, &mut again);
    match eth::sign(&home, &mut courier, id, payment(0, 1)) {
        Err(ClientError::Remote(e)) => {
            assert_eq!(e.kind, ErrorKind::Unauthorized);
            assert!(e.message.contains("excluded"), "{}", e.message);
        }
        other => panic!("{other:?}"),
    }
    let entries = audit_decisions(&c.provider);
    assert!(
        entries
            .iter()
            .any(|d| d.starts_with("refused: party 1 excluded")),
        "{entries:?}"
    );
    // Nor is it refreshed: new OT setups would let it probe again (DKLs23 bans it from refreshes
    // as from signatures).
    let mut recovery_session = c.recovery.session();
    let mut recovery = InProcess::new(&c.recovery.service, &mut recovery_session);
    match eth::refresh(&home, &mut courier, &mut recovery, id) {
        Err(ClientError::Remote(e)) => {
            assert_eq!(e.kind, ErrorKind::Unauthorized);
            assert!(e.message.contains("excluded"), "{}", e.message);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_recovery_credential_suspends_a_stolen_phones_key_and_can_give_it_back() {
    let Owned {
        c,
        home,
        created,
        _dir,
    } = owned();
    let id = created.wallet.wallet_id;
    let recovery_key =
        cosigner_client::home::read_p256_key(created.recovery_key_path.as_ref().unwrap()).unwrap();
    let new_phone = p256::ecdsa::SigningKey::random(&mut rand_core::OsRng);
    let mut session = c.provider.session();
    let mut courier = InProcess::new(&c.provider.service, &mut session);
    let suspend = Request::RecoverStart {
        wallet_id: id,
        new_device_key: ByteBuf::from(cosigner_protocol::auth::public_key_bytes(&new_phone)),
    };
    let answer = wallet::authorized(&mut courier, id, KeyRole::Recovery, &recovery_key, &suspend);
    assert!(
        matches!(
            answer,
            Ok(Response::RecoverApproved {
                completed: false,
                ..
            })
        ),
        "{answer:?}"
    );
    match eth::sign(&home, &mut courier, id, payment(0, 1)) {
        Err(ClientError::Remote(e)) => assert_eq!(e.kind, ErrorKind::Unauthorized, "{}", e.message),
        other => panic!("the suspended device key signed: {other:?}"),
    }
    let cancel = Request::RecoverCancel { wallet_id: id };
    wallet::authorized(&mut courier, id, KeyRole::Recovery, &recovery_key, &cancel).unwrap();
    eth::sign(&home, &mut courier, id, payment(0, 1)).unwrap();
}

/// Every audit decision of `enclave`, in order, each record checked under its audit key.
fn audit_decisions(enclave: &Enclave) -> Vec<String> {
    let key = enclave.service.audit_public_key();
    enclave
        .store
        .all()
        .into_iter()
        .filter(|(k, _)| k.starts_with("audit/"))
        .enumerate()
        .filter_map(|(i, (_, v))| {
            cosigner_protocol::audit::open_record(&v, &key, i as u64 + 1).ok()
        })
        .map(|(entry, _)| entry.decision)
        .collect()
}

#[test]
fn probes_sent_at_once_ask_the_question_once() {
    let Owned {
        c,
        home,
        created,
        _dir,
    } = owned();
    let id = created.wallet.wallet_id;
    let device = home.device_key().unwrap();
    let probes: Vec<Request> = (0..4)
        .map(|n| probing_start(&home, id, payment(n, 1).tx.signing_payload()))
        .collect();
    std::thread::scope(|scope| {
        for probe in &probes {
            let (c, device) = (&c, &device);
            scope.spawn(move || {
                let mut session = c.provider.session();
                let mut courier = InProcess::new(&c.provider.service, &mut session);
                let answer = wallet::authorized(&mut courier, id, KeyRole::Device, device, probe);
                assert_eq!(remote_kind(answer), ErrorKind::Unauthorized);
            });
        }
    });
    // One probe ran DKLs23's check and was excluded; the others were refused before it.
    let decisions = audit_decisions(&c.provider);
    let ran = decisions
        .iter()
        .filter(|d| d.starts_with("refused: party 1 excluded"))
        .count();
    assert_eq!(ran, 1, "{decisions:?}");
}

#[test]
fn a_flood_of_signing_sessions_fills_only_its_own_wallets_quota() {
    let Owned {
        c,
        home,
        created,
        _dir,
    } = owned();
    let id = created.wallet.wallet_id;
    let device = home.device_key().unwrap();
    let mut session = c.provider.session();
    let mut courier = InProcess::new(&c.provider.service, &mut session);
    let mut open = 0;
    for n in 0..6 {
        let request = start_request(&home, id, payment(n, 1).tx.signing_payload());
        match wallet::authorized(&mut courier, id, KeyRole::Device, &device, &request) {
            Ok(Response::EthSignRound { .. }) => open += 1,
            other => assert_eq!(remote_kind(other), ErrorKind::Busy),
        }
    }
    assert_eq!(open, 4, "four sessions per wallet, then busy");
    // Another wallet of the same provider still signs.
    let other_dir = tempfile::tempdir().unwrap();
    let other_home = Home::open(other_dir.path()).unwrap();
    let other = create(&c, &other_home, other_dir.path()).wallet.wallet_id;
    eth::sign(&other_home, &mut courier, other, payment(0, 1)).unwrap();
}

#[test]
fn an_anonymous_flood_of_ethereum_dkgs_fills_only_its_own_quota() {
    let c = cosigners();
    let start = |session: &mut cosigner_enclave::service::SessionState, n: u8| {
        let params = cosigner_protocol::wire::DkgParams {
            wallet_id: WalletId([n; 16]),
            ciphersuite: cosigner_protocol::wire::SUITE_SECP256K1_ECDSA.into(),
            min_signers: 2,
            parties: vec![DEVICE, PROVIDER, cosigner_protocol::party::RECOVERY],
        };
        let request = Request::DkgStart {
            params,
            me: PROVIDER,
            enrollment: None,
        };
        // The recovery cosigner's creation is open (no enrollment): the flooder's target.
        c.recovery.call(session, request)
    };
    let mut flooder = c.recovery.session();
    let answers: Vec<Response> = (1..=6).map(|n| start(&mut flooder, n)).collect();
    let started = answers
        .iter()
        .filter(|r| matches!(r, Response::EcdsaDkgHello { .. }))
        .count();
    assert_eq!(started, 4, "{answers:?}");
    assert!(
        answers
            .iter()
            .skip(4)
            .all(|r| matches!(r, Response::Error(e) if e.kind == ErrorKind::Busy))
    );
    // An honest client on another session still starts one.
    let mut honest = c.recovery.session();
    assert!(matches!(
        start(&mut honest, 9),
        Response::EcdsaDkgHello { .. }
    ));
}

/// The token every policy test deploys (tests/py/token.vy): 6 decimals, a million minted.
const TOKEN_UNIT: u128 = 1_000_000;

fn token_job() -> TokenJob {
    TokenJob {
        supply: 1_000_000 * TOKEN_UNIT,
        watch: vec![BOB.to_string()],
    }
}

/// A personal policy: 1 ETH and 100 TKN per rolling day, nothing else.
fn daily_policy(token: &str) -> String {
    format!(
        r#"
        [[token]]
        symbol = "TKN"
        address = "{token}"
        decimals = 6
        [[rule]]
        name = "daily"
        velocity = {{ window_hours = 24, limit = "1 ETH" }}
        approvals = 1
        [[rule]]
        name = "daily-tkn"
        asset = "tkn"
        velocity = {{ window_hours = 24, limit = "100 TKN" }}
        approvals = 1
        "#
    )
}

fn token_transfer(token: &str, nonce: u64, to: &str, amount: u128) -> TxRequest {
    let data = format!(
        "0xa9059cbb{:0>64}{amount:064x}",
        to.trim_start_matches("0x")
    );
    TxRequest::from_json(&format!(
        r#"{{"chainId":{TESTER_CHAIN_ID},"nonce":{nonce},"to":"{token}","value":"0","gas":100000,
            "maxFeePerGas":"2000000000","maxPriorityFeePerGas":"1000000000","data":"{data}"}}"#
    ))
    .unwrap()
}

fn call_of(nonce: u64, to: &str, data: &str) -> TxRequest {
    TxRequest::from_json(&format!(
        r#"{{"chainId":{TESTER_CHAIN_ID},"nonce":{nonce},"to":"{to}","value":"0","gas":100000,
            "maxFeePerGas":"2000000000","maxPriorityFeePerGas":"1000000000","data":"{data}"}}"#
    ))
    .unwrap()
}

fn refused_kind(result: Result<eth::EthSigned, ClientError>) -> ErrorKind {
    match result {
        Err(ClientError::Remote(e)) => e.kind,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn the_policy_values_ether_and_tokens_in_the_enclave_and_the_evm_agrees() {
    if !vyper_available() {
        println!("{SKIP_TOKEN_LINE}");
        return;
    }
    let c = cosigners();
    let dir = tempfile::tempdir().unwrap();
    let home = Home::open(dir.path()).unwrap();
    // The token's address does not depend on who holds it (CREATE: deployer and nonce).
    let token = token_address(BOB, &token_job()).unwrap();
    let created = create_with(&c, &home, dir.path(), Some(&daily_policy(&token))).unwrap();
    let w = created.wallet;
    let id = w.wallet_id;
    let mut session = c.provider.session();
    let mut courier = InProcess::new(&c.provider.service, &mut session);
    let mut sign = |request: TxRequest| eth::sign(&home, &mut courier, id, request);
    let mut signed = Vec::new();
    // 0.5 ETH and its fee fit the day's 1 ETH; another 0.5 ETH does not.
    signed.push(sign(payment(0, ETH / 2)).unwrap());
    assert_eq!(
        refused_kind(sign(payment(1, ETH / 2))),
        ErrorKind::Unauthorized
    );
    // Tokens count on their own limit: 60 TKN, then 50 more is over 100, 40 more is not.
    signed.push(sign(token_transfer(&token, 1, BOB, 60 * TOKEN_UNIT)).unwrap());
    assert_eq!(
        refused_kind(sign(token_transfer(&token, 2, BOB, 50 * TOKEN_UNIT))),
        ErrorKind::Unauthorized
    );
    signed.push(sign(token_transfer(&token, 2, BOB, 40 * TOKEN_UNIT)).unwrap());
    // A call nobody can value, and a token the table does not know, are refused.
    for call in [
        call_of(3, BOB, "0x12345678"),
        token_transfer(BOB, 3, &token, 1),
    ] {
        assert_eq!(refused_kind(sign(call)), ErrorKind::Unauthorized);
    }
    let decisions = audit_decisions(&c.provider);
    assert!(
        decisions
            .iter()
            .any(|d| d.starts_with("refused: no rule matches: a call of")),
        "{decisions:?}"
    );
    // The EVM runs what was signed: BOB holds 0.5 ETH and 100 TKN.
    let txs: Vec<_> = signed
        .iter()
        .map(|s| cosigner_eth::SignedTx {
            raw: s.raw_tx.clone(),
            hash: s.tx_hash,
        })
        .collect();
    let report = run_with_token(&w.address.to_lowercase(), 2 * ETH, &txs, &token_job()).unwrap();
    assert_eq!(report.token.as_deref(), Some(token.as_str()));
    assert_eq!(report.receipts, vec![1, 1, 1]);
    assert_eq!(report.balances[&BOB.to_lowercase()], (ETH / 2).to_string());
    assert_eq!(
        report.token_balances[&BOB.to_lowercase()],
        (100 * TOKEN_UNIT).to_string()
    );
    // The recovery credential lifts the limit; the device key alone cannot.
    let recovery_key =
        cosigner_client::home::read_p256_key(created.recovery_key_path.as_ref().unwrap()).unwrap();
    let larger = daily_policy(&token).replace("\"1 ETH\"", "\"10 ETH\"");
    let mut recovery_session = c.recovery.session();
    let mut recovery = InProcess::new(&c.recovery.service, &mut recovery_session);
    let mut session = c.provider.session();
    let mut courier = InProcess::new(&c.provider.service, &mut session);
    cosigner_client::psbt_sign::set_policy(
        &home,
        &mut courier,
        &mut recovery,
        id,
        &recovery_key,
        Some(&larger),
    )
    .unwrap();
    eth::sign(&home, &mut courier, id, payment(3, ETH / 2)).unwrap();
}

#[test]
fn two_spends_each_within_the_limit_but_not_together_sign_once() {
    let c = cosigners();
    let dir = tempfile::tempdir().unwrap();
    let home = Home::open(dir.path()).unwrap();
    let token = "0x00000000000000000000000000000000000000aa";
    let created = create_with(&c, &home, dir.path(), Some(&daily_policy(token))).unwrap();
    let id = created.wallet.wallet_id;
    let barrier = std::sync::Barrier::new(2);
    let outcomes: Vec<bool> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..2)
            .map(|n| {
                let (c, home, barrier) = (&c, &home, &barrier);
                scope.spawn(move || {
                    let mut session = c.provider.session();
                    let mut courier = InProcess::new(&c.provider.service, &mut session);
                    barrier.wait();
                    eth::sign(home, &mut courier, id, payment(n, 6 * ETH / 10)).is_ok()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(
        outcomes.iter().filter(|ok| **ok).count(),
        1,
        "exactly one of two 0.6 ETH spends fits 1 ETH a day: {outcomes:?}"
    );
}

#[test]
fn a_policy_the_enclave_could_not_apply_is_refused_at_creation() {
    let c = cosigners();
    let dir = tempfile::tempdir().unwrap();
    let home = Home::open(dir.path()).unwrap();
    // Bitcoin units, an unknown asset, a policy naming someone other than the owner.
    for policy in [
        "[[rule]]\nname = \"r\"\nbelow = \"1 BTC\"\napprovals = 1",
        "[[rule]]\nname = \"r\"\nasset = \"dai\"\napprovals = 1",
        "[[rule]]\nname = \"r\"\napprovals = 1\napprovers = [\"mallory\"]",
    ] {
        assert!(matches!(
            create_with(&c, &home, dir.path(), Some(policy)),
            Err(ClientError::Protocol(_))
        ));
    }
    assert!(home.eth_wallets().unwrap().is_empty());
}

/// `EthSignStart` for `payload` at `epoch` with `key` as the device's share.
fn start_with(
    key: &cosigner_protocol::ecdsa::EcdsaKey,
    wallet_id: WalletId,
    epoch: Epoch,
    payload: Vec<u8>,
) -> Request {
    let nonce = [8u8; 32];
    let signers = [DEVICE, PROVIDER];
    let id = ecdsa_sign::sign_id(&wallet_id, &signers, &nonce);
    let hash = cosigner_eth::UnsignedTx::from_signing_payload(&payload)
        .unwrap()
        .signing_hash();
    let (_, round1) = ecdsa_sign::start(key, &signers, id, hash).unwrap();
    Request::EthSignStart {
        wallet_id,
        epoch,
        tx: ByteBuf::from(payload),
        signers: signers.to_vec(),
        nonce: ByteBuf::from(nonce.to_vec()),
        round1,
    }
}

#[test]
fn a_refresh_keeps_the_address_and_a_stolen_old_share_signs_nothing() {
    let Owned {
        c,
        home,
        created,
        _dir,
    } = owned();
    let w = created.wallet;
    let id = w.wallet_id;
    let stolen = home.ecdsa_key(&w).unwrap();
    let mut provider_session = c.provider.session();
    let mut provider = InProcess::new(&c.provider.service, &mut provider_session);
    let mut recovery_session = c.recovery.session();
    let mut recovery = InProcess::new(&c.recovery.service, &mut recovery_session);
    let first = eth::sign(&home, &mut provider, id, payment(0, ETH)).unwrap();
    let refreshed = eth::refresh(&home, &mut provider, &mut recovery, id).unwrap();
    assert_eq!(refreshed.epoch, Epoch(1));
    assert_eq!(refreshed.address, w.address, "the address stays");
    assert_eq!(home.eth_wallet(&id).unwrap(), refreshed);
    let fresh = home.ecdsa_key(&refreshed).unwrap();
    assert_ne!(
        fresh.public_share(),
        stolen.public_share(),
        "the device's share moved"
    );
    let second = eth::sign(&home, &mut provider, id, payment(1, ETH)).unwrap();
    assert_eq!(second.from, w.address);
    // Both cosigners are at epoch 1 with the same public key, and hold nothing of epoch 0.
    for enclave in [&c.provider, &c.recovery] {
        let mut session = enclave.session();
        match enclave.call(&mut session, Request::GetWallet { wallet_id: id }) {
            Response::Wallet { wallet } => {
                assert_eq!(wallet.epoch, Epoch(1));
                assert_eq!(
                    wallet.group_public_key.as_slice(),
                    w.public_key_bytes().unwrap()
                );
            }
            other => panic!("{other:?}"),
        }
    }
    // A thief's copy of the old share: its epoch is gone, and at the new epoch it signs nothing
    // (and is not mistaken for a probe: the wallet still signs after).
    let device = home.device_key().unwrap();
    let payload = payment(2, 1).tx.signing_payload();
    for epoch in [Epoch(0), Epoch(1)] {
        let request = start_with(&stolen, id, epoch, payload.clone());
        let answer = wallet::authorized(&mut provider, id, KeyRole::Device, &device, &request);
        assert!(answer.is_err(), "epoch {epoch}: {answer:?}");
    }
    let third = eth::sign(&home, &mut provider, id, payment(2, ETH)).unwrap();
    // Refreshed again, and the EVM runs all three transactions from the one address.
    assert_eq!(
        eth::refresh(&home, &mut provider, &mut recovery, id)
            .unwrap()
            .epoch,
        Epoch(2)
    );
    if !python_available() {
        println!("{SKIP_LINE}");
        return;
    }
    let txs: Vec<_> = [first, second, third]
        .into_iter()
        .map(|s| cosigner_eth::SignedTx {
            raw: s.raw_tx,
            hash: s.tx_hash,
        })
        .collect();
    let report = run_in_evm(&w.address, 5 * ETH, &txs).unwrap();
    assert_eq!(report.senders, vec![w.address.clone(); 3]);
    assert_eq!(report.receipts, vec![1, 1, 1]);
}

#[test]
fn a_refresh_stopped_after_the_providers_commit_is_finished_by_running_it_again() {
    let Owned {
        c,
        home,
        created,
        _dir,
    } = owned();
    let id = created.wallet.wallet_id;
    let old = home.ecdsa_key(&created.wallet).unwrap();
    let mut provider_session = c.provider.session();
    let mut provider = InProcess::new(&c.provider.service, &mut provider_session);
    let mut recovery_session = c.recovery.session();
    let mut recovery = Cut {
        inner: InProcess::new(&c.recovery.service, &mut recovery_session),
        cut: Box::new(is_commit),
    };
    // The provider commits epoch 1; the recovery cosigner never hears of it; this device keeps
    // the prepared share and still holds epoch 0.
    assert!(eth::refresh(&home, &mut provider, &mut recovery, id).is_err());
    assert_eq!(home.eth_wallet(&id).unwrap().epoch, Epoch(0));
    assert_eq!(home.eth_prepared(&id).unwrap().len(), 1);
    // Run again (the same home): the recovery cosigner is rolled forward on the provider's
    // receipt and this device switches to the prepared share.
    recovery.cut = Box::new(|_| false);
    let done = eth::refresh(&home, &mut provider, &mut recovery, id).unwrap();
    assert_eq!(done.epoch, Epoch(1));
    assert!(home.eth_prepared(&id).unwrap().is_empty());
    eth::sign(&home, &mut provider, id, payment(0, 1)).unwrap();
    // The session that committed is gone, yet epoch 0 is retired: a copy of the old share (and
    // of the device key, which a refresh keeps) signs nothing at it.
    let device = home.device_key().unwrap();
    let request = start_with(&old, id, Epoch(0), payment(1, 1).tx.signing_payload());
    let answer = wallet::authorized(&mut provider, id, KeyRole::Device, &device, &request);
    assert!(answer.is_err(), "{answer:?}");
    // And the next refresh starts from there.
    assert_eq!(
        eth::refresh(&home, &mut provider, &mut recovery, id)
            .unwrap()
            .epoch,
        Epoch(2)
    );
}

#[test]
fn the_providers_refresh_demand_counts_ethereum_signatures_and_a_refresh_meets_it() {
    let demanding = RefreshPolicy {
        after: None,
        after_signatures: Some(2),
    };
    let c = Cosigners::with_provider_policy(demanding);
    let home_dir = tempfile::tempdir().unwrap();
    let home = Home::open(home_dir.path()).unwrap();
    let id = create(&c, &home, home_dir.path()).wallet.wallet_id;
    let mut provider_session = c.provider.session();
    let mut provider = InProcess::new(&c.provider.service, &mut provider_session);
    for nonce in 0..2 {
        eth::sign(&home, &mut provider, id, payment(nonce, 1)).unwrap();
    }
    match eth::sign(&home, &mut provider, id, payment(2, 1)) {
        Err(ClientError::Remote(e)) => {
            assert!(e.message.contains("refresh required"), "{}", e.message)
        }
        other => panic!("{other:?}"),
    }
    let mut recovery_session = c.recovery.session();
    let mut recovery = InProcess::new(&c.recovery.service, &mut recovery_session);
    eth::refresh(&home, &mut provider, &mut recovery, id).unwrap();
    eth::sign(&home, &mut provider, id, payment(2, 1)).unwrap();
}

#[test]
fn a_lost_phone_is_recovered_onto_a_new_one_and_the_old_share_and_key_are_dead() {
    let Owned {
        c,
        home,
        created,
        _dir,
    } = owned();
    let w = created.wallet;
    let id = w.wallet_id;
    let old_share = home.ecdsa_key(&w).unwrap();
    let old_device = home.device_key().unwrap();
    let recovery_key =
        cosigner_client::home::read_p256_key(created.recovery_key_path.as_ref().unwrap()).unwrap();
    let mut provider_session = c.provider.session();
    let mut provider = InProcess::new(&c.provider.service, &mut provider_session);
    let mut recovery_session = c.recovery.session();
    let mut recovery = InProcess::new(&c.recovery.service, &mut recovery_session);
    let before = eth::sign(&home, &mut provider, id, payment(0, ETH)).unwrap();
    // The new phone: a new home, nothing of the wallet in it.
    let new_dir = tempfile::tempdir().unwrap();
    let new_home = Home::open(new_dir.path()).unwrap();
    let recovered =
        eth::recover(&new_home, &mut provider, &mut recovery, id, &recovery_key).unwrap();
    assert_eq!(recovered.address, w.address, "the same account");
    assert_eq!(recovered.epoch, Epoch(1));
    let after = eth::sign(&new_home, &mut provider, id, payment(1, ETH)).unwrap();
    assert_eq!(after.from, w.address);
    // Run again: nothing to do, the same wallet.
    assert_eq!(
        eth::recover(&new_home, &mut provider, &mut recovery, id, &recovery_key).unwrap(),
        recovered
    );
    // The lost phone (a thief holding it): its key is revoked, its share of no epoch in use.
    match eth::sign(&home, &mut provider, id, payment(2, 1)) {
        Err(ClientError::Remote(e)) => assert_eq!(e.kind, ErrorKind::Unauthorized, "{}", e.message),
        other => panic!("the old phone signed: {other:?}"),
    }
    let payload = payment(2, 1).tx.signing_payload();
    let request = start_with(&old_share, id, Epoch(1), payload);
    assert!(wallet::authorized(&mut provider, id, KeyRole::Device, &old_device, &request).is_err());
    // And the new phone refreshes on its own later.
    assert_eq!(
        eth::refresh(&new_home, &mut provider, &mut recovery, id)
            .unwrap()
            .epoch,
        Epoch(2)
    );
    if !python_available() {
        println!("{SKIP_LINE}");
        return;
    }
    let txs: Vec<_> = [before, after]
        .into_iter()
        .map(|s| cosigner_eth::SignedTx {
            raw: s.raw_tx,
            hash: s.tx_hash,
        })
        .collect();
    let report = run_in_evm(&w.address, 3 * ETH, &txs).unwrap();
    assert_eq!(report.senders, vec![w.address.clone(); 2]);
    assert_eq!(report.receipts, vec![1, 1]);
}

#[test]
fn an_excluded_device_is_replaced_by_a_recovery() {
    let Owned {
        c,
        home,
        created,
        _dir,
    } = owned();
    let id = created.wallet.wallet_id;
    probe_and_be_excluded(&c, &home, id);
    let mut provider_session = c.provider.session();
    let mut provider = InProcess::new(&c.provider.service, &mut provider_session);
    // The probing phone is out for good; the owner recovers onto a new phone, which signs.
    let recovery_key =
        cosigner_client::home::read_p256_key(created.recovery_key_path.as_ref().unwrap()).unwrap();
    let mut recovery_session = c.recovery.session();
    let mut recovery = InProcess::new(&c.recovery.service, &mut recovery_session);
    let new_dir = tempfile::tempdir().unwrap();
    let new_home = Home::open(new_dir.path()).unwrap();
    eth::recover(&new_home, &mut provider, &mut recovery, id, &recovery_key).unwrap();
    eth::sign(&new_home, &mut provider, id, payment(0, 1)).unwrap();
}

#[test]
fn a_refresh_commit_held_back_past_a_second_refresh_still_leaves_the_device_its_share() {
    let Owned {
        c,
        home,
        created,
        _dir,
    } = owned();
    let id = created.wallet.wallet_id;
    let mut provider_session = c.provider.session();
    let mut provider = HoldCommit::new(InProcess::new(&c.provider.service, &mut provider_session));
    let mut recovery_session = c.recovery.session();
    let mut recovery = InProcess::new(&c.recovery.service, &mut recovery_session);
    // Refresh A: its commit is held back. Refresh B: A's commit lands first, so B's cannot.
    assert!(eth::refresh(&home, &mut provider, &mut recovery, id).is_err());
    assert!(eth::refresh(&home, &mut provider, &mut recovery, id).is_err());
    assert_eq!(
        home.eth_prepared(&id).unwrap().len(),
        2,
        "A's share kept beside B's"
    );
    // Run again: the cosigners are at A's epoch, and this device still has A's share.
    let done = eth::refresh(&home, &mut provider, &mut recovery, id).unwrap();
    assert_eq!(done.epoch, Epoch(1));
    eth::sign(&home, &mut provider.inner, id, payment(0, 1)).unwrap();
}
