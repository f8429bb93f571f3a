//! `make bench`: the end-to-end wallet figures, as one JSON line.
//!
//! * `inprocess_sign_ms_p50`: FROST-tr 2-of-3 signing with every party in this process
//!   (2 commitments, signing package, 2 shares, aggregate + verify): the floor;
//! * `e2e_sign_ms_p50`: `cosigner_client::wallet::sign` against the release binaries on loopback,
//!   the attested session already open (parent relay, TLS, the key package kept unsealed by the
//!   enclave, the audit entry and its receipt, one round trip in steady state (`SignNow` on the
//!   commitment the previous answer handed out), client-side BIP-340 and receipt verification);
//! * `round_trips_per_sign`: requests per signature in steady state, as the client's session
//!   counts them;
//! * `ratio` = e2e / in-process (goal ≤ 1.5);
//! * `psbt_sign_ms_p50`: `cosigner_client::psbt_sign::sign_psbt` of a 2-input, 2-output PSBT for
//!   a wallet with a velocity policy, session open (the device's and the enclave's PSBT analysis,
//!   policy evaluation with the spend history, two FROST signatures, the spend recorded and
//!   anchored, finalization);
//! * `psbt_derived_sign_ms_p50`: the same for a PSBT whose two inputs spend a derived address
//!   (`m/0/7`) without BIP-32 labels: the worst case, where the device and the enclave each find
//!   the key by deriving the first 100 children of both keychains, then sign with the child's
//!   key packages;
//! * `signs_per_sec`: 4 concurrent clients, each with its own session and wallet, for 3 seconds;
//! * `session_setup_ms_p50`: TCP + TLS 1.3 + attestation produced and verified;
//! * `dkg_ms_p50`: `wallet create` with both sessions already open;
//! * `dkg_inprocess_ms_p50`: the same DKG with all three parties in this process, on the engine;
//! * `refresh_ms_p50`: a full refresh (A, B, C; commit and finalize), sessions open;
//! * `recover_ms_p50`: a lost-phone recovery onto a new device home (approval by both cosigners,
//!   repair, refresh, revocation), sessions open;
//! * `eth_dkg_ms_p50` / `eth_dkg_inprocess_ms_p50`: an Ethereum wallet's threshold ECDSA DKG
//!   (`cosigner_client::eth::create`, both sessions open) / the same state machines with all
//!   three parties in this process;
//! * `eth_sign_ms_p50` / `eth_sign_inprocess_ms_p50`: an EIP-1559 transaction signed by the device
//!   and the provider (`cosigner_client::eth::sign`, session open: challenge, two DKLs23 round
//!   trips, the enclave's decoding and audit entry, the client's checks) / the same two signers'
//!   rounds in this process;
//! * `eth_refresh_ms_p50`: an Ethereum wallet's refresh (DKLs23's complete refresh among all
//!   three, the two-phase commit and the finalize; sessions open);
//! * `client_sign_cpu_ms` / `client_dkg_cpu_ms`: the CPU time the client (this thread) spends per
//!   signature / per wallet creation, the cosigners' excluded: what a phone's CPU pays, from which
//!   its time can be estimated (a phone core is a few times slower than this machine's);
//! * `ffi_library_bytes_stripped`: the phone library (`libcosigner_ffi.so`, release, stripped)
//!   for this machine's target.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use cosigner_tests::pid;
use std::time::{Duration, Instant};

use cosigner_client::address::Network;
use cosigner_client::home::Home;
use cosigner_client::session::Session;
use cosigner_client::trust::Trust;
use cosigner_client::{psbt_sign, wallet};
use cosigner_protocol::keygen::exchange::Exchange;
use cosigner_protocol::signing::Signing;
use cosigner_protocol::wire::{DkgParams, SUITE_SECP256K1_TR, WalletId};
use cosigner_tests::Deployment;
use cosigner_tests::bench::{cpu_ms_per_run, time};

type Suite = frost_secp256k1_tr::Secp256K1Sha256TR;

/// A 2-of-3 DKG on the key-making engine, all three parties in one holder (they feed each other).
fn inprocess_dkg() -> Vec<cosigner_protocol::keygen::Output<Suite>> {
    let mut rng = rand_core::OsRng;
    let params = DkgParams {
        wallet_id: WalletId([1; 16]),
        ciphersuite: SUITE_SECP256K1_TR.into(),
        min_signers: 2,
        parties: vec![pid(1), pid(2), pid(3)],
    };
    let locals = vec![(pid(1), ()), (pid(2), ()), (pid(3), ())];
    let (mut dkg, _) = Exchange::<Suite, DkgParams>::start(&params, locals, &mut rng).unwrap();
    dkg.advance(&mut rng).unwrap();
    dkg.into_outputs()
        .unwrap()
        .into_iter()
        .map(|(_, output)| output)
        .collect()
}

fn inprocess_sign() -> f64 {
    let mut rng = rand_core::OsRng;
    let outputs = inprocess_dkg();
    let message = [9u8; 32];
    // Both parties in one engine: commitments, the package, both shares and the aggregate, as a
    // coordinator and a cosigner compute them (without the network between them).
    time(300, || {
        let locals = vec![
            (pid(1), outputs[0].key_package.clone()),
            (pid(2), outputs[1].key_package.clone()),
        ];
        let (mut signing, _) =
            Signing::<Suite>::start(locals, &[pid(1), pid(2)], vec![message.to_vec()], &mut rng)
                .unwrap();
        signing.advance().unwrap();
        signing.signatures(&outputs[0].public_key_package).unwrap();
    })
}

fn main() {
    let inprocess = inprocess_sign();
    let dkg_inprocess = time(30, || {
        inprocess_dkg();
    });

    let d = Deployment::start().unwrap();
    let trust = Trust::load(&d.dir.path().join("trust.toml")).unwrap();
    let home = Home::open(&d.home("bench")).unwrap();
    let provider_addr = d.provider.addr();
    let recovery_addr = d.recovery.addr();

    let session_setup = time(100, || {
        Session::connect(&provider_addr, &trust).unwrap();
    });

    let mut provider = Session::connect(&provider_addr, &trust).unwrap();
    let mut recovery = Session::connect(&recovery_addr, &trust).unwrap();
    let mut last = None;
    let home_dir = d.home("bench");
    let mut counter = 0u32;
    let mut first_id = String::new();
    let mut created = Vec::new();
    let dkg_ms = time(30, || {
        let out = home_dir.join(format!("recovery-{counter}.key"));
        counter += 1;
        let wallet = wallet::create(&home, &mut provider, &mut recovery, Network::Regtest, &out)
            .unwrap()
            .wallet;
        created.push(wallet.wallet_id);
        last = Some(wallet);
        if first_id.is_empty() {
            first_id = last
                .as_ref()
                .map(|w: &cosigner_client::home::WalletFile| w.wallet_id.to_hex())
                .unwrap_or_default();
        }
    });
    let last = last.unwrap();
    let id = last.wallet_id;
    // The client's own CPU (this thread: the DKG rounds, TLS, the attestation checks, the
    // home's sealing): what a phone pays, cosigners' time excluded.
    let client_dkg_cpu = cpu_ms_per_run(10, || {
        let out = home_dir.join(format!("recovery-{counter}.key"));
        counter += 1;
        let w = wallet::create(&home, &mut provider, &mut recovery, Network::Regtest, &out);
        created.push(w.unwrap().wallet.wallet_id);
    });

    let message = [7u8; 32];
    let e2e = time(300, || {
        wallet::sign(&home, &mut provider, id, &message).unwrap();
    });
    let signs = 100;
    let before = provider.round_trips();
    for _ in 0..signs {
        wallet::sign(&home, &mut provider, id, &message).unwrap();
    }
    let round_trips_per_sign = (provider.round_trips() - before) as f64 / f64::from(signs);
    let client_sign_cpu = cpu_ms_per_run(300, || {
        wallet::sign(&home, &mut provider, id, &message).unwrap();
    });

    // A wallet with a policy (a limit no bench reaches: every spend is evaluated and recorded).
    let policy = "[[rule]]\nname = \"daily\"\nvelocity = { window_hours = 24, limit = 2_100_000_000_000_000 }\napprovals = 1\n";
    let policed = wallet::create_with_policy(
        &home,
        &mut provider,
        &mut recovery,
        Network::Regtest,
        &home_dir.join("recovery-policed.key"),
        Some(policy),
    )
    .unwrap()
    .wallet;
    let psbt =
        cosigner_tests::bitcoin_tx::two_input_psbt(&hex::encode(policed.group_public_key)).unwrap();
    let policed_id = policed.wallet_id;
    let psbt_ms = time(100, || {
        psbt_sign::sign_psbt(&home, &mut provider, policed_id, &psbt).unwrap();
    });
    let (child, _) = cosigner_client::address::child_address(
        &policed,
        cosigner_protocol::hd::Keychain::Receive,
        7,
    )
    .unwrap();
    let derived =
        cosigner_tests::bitcoin_tx::two_input_psbt(&hex::encode(child.output_key)).unwrap();
    let psbt_derived_ms = time(50, || {
        psbt_sign::sign_psbt(&home, &mut provider, policed_id, &derived).unwrap();
    });

    let clients = 4;
    let window = Duration::from_secs(3);
    let total: usize = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..clients)
            .map(|i| {
                let (trust, home, addr) = (&trust, &home, &provider_addr);
                let id = created[i];
                scope.spawn(move || {
                    let mut s = Session::connect(addr, trust).unwrap();
                    let start = Instant::now();
                    let mut n = 0;
                    while start.elapsed() < window {
                        wallet::sign(home, &mut s, id, &message).unwrap();
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    let signs_per_sec = total as f64 / window.as_secs_f64();

    let refresh_ms = time(20, || {
        wallet::refresh(&home, &mut provider, &mut recovery, id, &mut |_| {}).unwrap();
    });
    // Recovery: each run moves the wallet to a new device home, with the same credential.
    let recovery_key = cosigner_client::home::read_p256_key(&home_dir.join("recovery-0.key")).ok();
    let recover_ms = match (recovery_key, WalletId::from_hex(&first_id)) {
        (Some(key), Ok(first)) => {
            let mut n = 0u32;
            time(10, || {
                let h = Home::open(&d.home(&format!("recovered-{n}"))).unwrap();
                n += 1;
                wallet::recover(
                    &h,
                    &mut provider,
                    &mut recovery,
                    first,
                    &key,
                    Network::Regtest,
                )
                .unwrap();
            })
        }
        _ => f64::NAN,
    };

    let eth = eth_figures(&d, &home, &mut provider, &mut recovery);

    let round = |x: f64| (x * 1000.0).round() / 1000.0;
    println!(
        "{}",
        serde_json::json!({
            "inprocess_sign_ms_p50": round(inprocess),
            "e2e_sign_ms_p50": round(e2e),
            "psbt_sign_ms_p50": round(psbt_ms),
            "psbt_derived_sign_ms_p50": round(psbt_derived_ms),
            "ratio": round(e2e / inprocess),
            "round_trips_per_sign": round(round_trips_per_sign),
            "signs_per_sec": signs_per_sec.round(),
            "concurrent_clients": clients,
            "session_setup_ms_p50": round(session_setup),
            "dkg_ms_p50": round(dkg_ms),
            "dkg_inprocess_ms_p50": round(dkg_inprocess),
            "refresh_ms_p50": round(refresh_ms),
            "recover_ms_p50": round(recover_ms),
            "eth_dkg_ms_p50": round(eth.dkg),
            "eth_dkg_inprocess_ms_p50": round(eth.dkg_inprocess),
            "eth_sign_ms_p50": round(eth.sign),
            "eth_sign_inprocess_ms_p50": round(eth.sign_inprocess),
            "eth_refresh_ms_p50": round(eth.refresh),
            "client_sign_cpu_ms": round(client_sign_cpu),
            "client_dkg_cpu_ms": round(client_dkg_cpu),
            "ffi_library_bytes_stripped": ffi_library_size(),
        })
    );
}

/// The phone library's size on this target: the release `libcosigner_ffi.so` (`make bench`
/// builds it) stripped of symbols as an app bundles it; `null` when it was not built.
fn ffi_library_size() -> Option<u64> {
    let library = cosigner_tests::bin("cosigner").with_file_name("libcosigner_ffi.so");
    let stripped = std::env::temp_dir().join(format!("libcosigner_ffi-{}.so", std::process::id()));
    let status = std::process::Command::new("strip")
        .arg("-o")
        .arg(&stripped)
        .arg(&library)
        .status()
        .ok()?;
    let size = status
        .success()
        .then(|| std::fs::metadata(&stripped).ok().map(|m| m.len()))
        .flatten();
    let _ = std::fs::remove_file(&stripped);
    size
}

/// The Ethereum wallets' figures.
struct EthFigures {
    dkg: f64,
    dkg_inprocess: f64,
    sign: f64,
    sign_inprocess: f64,
    refresh: f64,
}

fn eth_figures(
    d: &Deployment,
    home: &Home,
    provider: &mut Session,
    recovery: &mut Session,
) -> EthFigures {
    use cosigner_tests::ecdsa;
    let dkg_inprocess = time(10, || {
        ecdsa::dkg(WalletId([2; 16]), 2, 3).unwrap();
    });
    let keys = ecdsa::dkg(WalletId([2; 16]), 2, 3).unwrap();
    let tx = cosigner_eth::TxRequest::from_json(
        r#"{"chainId":1,"nonce":0,"to":"0x000000000000000000000000000000000000b0b0","value":"1",
            "gas":21000,"maxFeePerGas":"2000000000","maxPriorityFeePerGas":"1000000000"}"#,
    )
    .unwrap();
    let sign_inprocess = time(100, || {
        ecdsa::sign(&[&keys[0].key, &keys[1].key], tx.tx.signing_hash()).unwrap();
    });
    let mut n = 0u32;
    let mut id = None;
    let dkg = time(10, || {
        let out = d.home("bench").join(format!("eth-recovery-{n}.key"));
        n += 1;
        let created =
            cosigner_client::eth::create(home, provider, recovery, &out, None, None).unwrap();
        id = Some(created.wallet.wallet_id);
    });
    let id = id.unwrap();
    let sign = time(100, || {
        cosigner_client::eth::sign(home, provider, id, tx.clone()).unwrap();
    });
    let refresh = time(5, || {
        cosigner_client::eth::refresh(home, provider, recovery, id).unwrap();
    });
    EthFigures {
        dkg,
        dkg_inprocess,
        sign,
        sign_inprocess,
        refresh,
    }
}
