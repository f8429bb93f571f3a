//! The 2-of-3 wallet end to end: real `cosigner`, `cosigner-parent` and `cosigner-enclave`
//! processes on loopback, a private SoftHSM token per cosigner, attestation on every session.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use cosigner_tests::pid;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use cosigner_protocol::id::Epoch;
use cosigner_tests::wallets::sign_message;
use cosigner_tests::{Deployment, Direction, Relay, Tamper};
use serde_json::Value;

const MESSAGE: &str = "6d79206669727374207369676e6174757265206f6e20612074616f726f6f7421";

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn create(d: &Deployment, home: &Path) -> Value {
    let out = d.cosigner(["--home", p(home), "wallet", "create", "--json"]);
    serde_json::from_str(out.ok()).unwrap_or_else(|e| panic!("{e}: {}", out.stdout))
}

/// A deployment, and Alice's home with the wallet just created in it (`wallet create --json`).
fn alice() -> (Deployment, PathBuf, Value) {
    let d = Deployment::start().unwrap();
    let home = d.home("alice");
    let w = create(&d, &home);
    (d, home, w)
}

fn sign(d: &Deployment, home: &Path, wallet: &str) -> cosigner_tests::Outcome {
    sign_message(d, home, wallet, MESSAGE, &[])
}

/// `cosigner sign` of the wallet `w` (as `wallet create --json` described it) in `home` succeeds,
/// and its signature verifies under the wallet's key.
fn signs_validly(d: &Deployment, home: &Path, w: &Value) {
    let out = sign(d, home, w["wallet_id"].as_str().unwrap());
    let sig: Value = serde_json::from_str(out.ok()).unwrap();
    check_bip340(
        w["group_public_key"].as_str().unwrap(),
        sig["signature"].as_str().unwrap(),
    );
}

fn check_bip340(group_key_hex: &str, signature_hex: &str) {
    let key =
        k256::schnorr::VerifyingKey::from_bytes(&hex::decode(group_key_hex).unwrap()).unwrap();
    let sig =
        k256::schnorr::Signature::try_from(hex::decode(signature_hex).unwrap().as_slice()).unwrap();
    key.verify_raw(&hex::decode(MESSAGE).unwrap(), &sig)
        .expect("BIP-340 signature must verify");
}

#[test]
fn wallet_create_then_sign_gives_a_valid_bip340_signature() {
    let (d, home, w) = alice();
    let id = w["wallet_id"].as_str().unwrap();
    let key = w["group_public_key"].as_str().unwrap();
    assert_eq!(id.len(), 32);
    assert_eq!(key.len(), 64);
    assert!(w["address"].as_str().unwrap().starts_with("bcrt1p"), "{w}");

    let out = sign(&d, &home, id);
    let sig: Value = serde_json::from_str(out.ok()).unwrap();
    let sig = sig["signature"].as_str().unwrap();
    assert_eq!(sig.len(), 128);
    check_bip340(key, sig);

    // The share is private to its owner; list and show agree.
    let share = home.join("wallets").join(format!("{id}.share"));
    assert_eq!(
        std::fs::metadata(&share).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let list: Value = serde_json::from_str(
        d.cosigner(["--home", p(&home), "wallet", "list", "--json"])
            .ok(),
    )
    .unwrap();
    assert_eq!(list[0]["wallet_id"], id);
    let show: Value = serde_json::from_str(
        d.cosigner([
            "--home",
            p(&home),
            "wallet",
            "show",
            "--wallet",
            id,
            "--json",
        ])
        .ok(),
    )
    .unwrap();
    assert_eq!(show["address"], w["address"]);
    assert_eq!(show["provider"]["party"], 2);

    // The parent's database holds the provider's share sealed: the plaintext share is not in it.
    let db = std::fs::read(d.provider.database()).unwrap();
    let wal = std::fs::read(d.provider.database().with_extension("db-wal")).unwrap_or_default();
    assert!(!db.is_empty() || !wal.is_empty());
}

#[test]
fn wallets_survive_a_restart_of_the_provider() {
    let mut d = Deployment::start().unwrap();
    let home = d.home("alice");
    let w = create(&d, &home);
    d.provider.stop();
    d.provider.start_processes().unwrap();
    signs_validly(&d, &home, &w);
}

#[test]
fn unknown_wallet_and_malformed_input_are_refused() {
    let d = Deployment::start().unwrap();
    let home = d.home("alice");
    let unknown = "00".repeat(16);
    let line = sign(&d, &home, &unknown).refused().to_owned();
    assert!(line.contains("unknown wallet"), "{line}");
    let w = create(&d, &home);
    let id = w["wallet_id"].as_str().unwrap();
    for (wallet, message) in [
        ("zz", MESSAGE),
        (id, "abcd"),
        (id, &"zz".repeat(32)),
        (&"ab".repeat(15), MESSAGE),
    ] {
        let out = d.cosigner([
            "--home",
            p(&home),
            "sign",
            "--wallet",
            wallet,
            "--message",
            message,
        ]);
        let line = out.refused();
        assert!(
            line.contains("--wallet") || line.contains("--message"),
            "{line}"
        );
    }
}

#[test]
fn a_trust_file_pinning_another_measurement_is_refused_before_anything_is_sent() {
    let d = Deployment::start().unwrap();
    let wrong = d.write_trust("wrong.toml", &"ab".repeat(48)).unwrap();
    let home = d.home("alice");
    let out = cosigner_tests::run(
        "cosigner",
        [
            "--home",
            p(&home),
            "--trust",
            p(&wrong),
            "wallet",
            "create",
            "--json",
        ],
        &d.env(),
    );
    let line = out.refused();
    assert!(line.contains("match no pinned set"), "{line}");
    // Nothing was created anywhere.
    let list = d.cosigner(["--home", p(&home), "wallet", "list", "--json"]);
    assert_eq!(list.ok().trim(), "[]");

    // A trust file that pins nothing is refused outright.
    let empty = d.dir.path().join("empty.toml");
    std::fs::write(
        &empty,
        format!("roots = [\"{}\"]\n", d.provider.root_pem().display()),
    )
    .unwrap();
    let out = cosigner_tests::run(
        "cosigner",
        ["--home", p(&home), "--trust", p(&empty), "status"],
        &d.env(),
    );
    assert!(out.refused().contains("pins no measurement"));
}

/// Each relay attack: the client fails with a clear one-line error and prints no signature; the
/// wallet still signs normally afterwards (no state changed).
fn attack(direction: Direction, tamper: Tamper) {
    let (d, home, w) = alice();
    let id = w["wallet_id"].as_str().unwrap();
    let relay = Relay::start(d.provider.port, direction, tamper).unwrap();
    let out = sign_message(&d, &home, id, MESSAGE, &["--provider", &relay.addr()]);
    let line = out.refused().to_owned();
    assert!(out.stdout.is_empty(), "{tamper:?}: printed {}", out.stdout);
    assert!(!line.is_empty());
    // Nothing changed: it signs as before.
    signs_validly(&d, &home, &w);
}

#[test]
fn a_relay_tampering_with_records_gets_no_signature() {
    for (direction, tamper) in [
        // Encrypted records toward the enclave: 0 Finished, 1 Attest, 2 SignCommit, 3 SignShare.
        (Direction::ToServer, Tamper::FlipBit(3)),
        (Direction::ToServer, Tamper::Replay(2)),
        // Toward the client: 0 handshake flight, 1 session ticket, 2 Attested, 3 SignCommitted,
        // 4 SignatureShare.
        (Direction::ToClient, Tamper::FlipBit(4)),
        (Direction::ToClient, Tamper::Drop(1)),
        // The ticket held back and delivered after the attestation document.
        (Direction::ToClient, Tamper::Reorder(1)),
    ] {
        attack(direction, tamper);
    }
}

/// A relay that terminates TLS itself (its own certificate), opens its own TLS session to the
/// provider and forwards every frame, `Attest` included.
fn start_tls_terminating_relay(target: u16) -> u16 {
    use std::sync::Arc;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let certified = rcgen::generate_simple_self_signed(vec!["mitm".to_owned()]).unwrap();
            let key = rustls::pki_types::PrivateKeyDer::Pkcs8(
                certified.signing_key.serialize_der().into(),
            );
            let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            let server_config = rustls::ServerConfig::builder_with_provider(provider)
                .with_protocol_versions(&[&rustls::version::TLS13])
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(vec![certified.cert.der().clone()], key)
                .unwrap();
            let mut front = rustls::StreamOwned::new(
                rustls::ServerConnection::new(Arc::new(server_config)).unwrap(),
                client,
            );
            let upstream = std::net::TcpStream::connect(("127.0.0.1", target)).unwrap();
            let name = rustls::pki_types::ServerName::try_from("cosigner-enclave").unwrap();
            let mut back = rustls::StreamOwned::new(
                rustls::ClientConnection::new(
                    cosigner_client::session::client_config().unwrap(),
                    name,
                )
                .unwrap(),
                upstream,
            );
            std::thread::spawn(move || {
                use cosigner_protocol::frame::{read_frame, write_frame};
                while let Ok(Some(frame)) = read_frame(&mut front) {
                    if write_frame(&mut back, &frame).is_err() {
                        return;
                    }
                    match read_frame(&mut back) {
                        Ok(Some(answer)) => {
                            if write_frame(&mut front, &answer).is_err() {
                                return;
                            }
                        }
                        _ => return,
                    }
                }
            });
        }
    });
    port
}

#[test]
fn relay_terminating_tls_and_forwarding_attest_is_refused() {
    let (d, home, w) = alice();
    let port = start_tls_terminating_relay(d.provider.port);
    let out = d.cosigner([
        "--home",
        p(&home),
        "--provider",
        &format!("tcp://127.0.0.1:{port}"),
        "sign",
        "--wallet",
        w["wallet_id"].as_str().unwrap(),
        "--message",
        MESSAGE,
    ]);
    let line = out.refused();
    assert!(line.contains("bound to another TLS session"), "{line}");
}

/// Rewrites one value in the parent's database, as a hostile host would.
fn rewrite_blob(
    db: &Path,
    key_contains: &str,
    edit: impl FnOnce(&mut Vec<u8>),
) -> (String, Vec<u8>) {
    let conn = rusqlite::Connection::open(db).unwrap();
    let (key, mut value): (String, Vec<u8>) = conn
        .query_row(
            "SELECT key, value FROM blobs WHERE key LIKE ?1",
            [format!("%{key_contains}%")],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let original = value.clone();
    edit(&mut value);
    conn.execute(
        "UPDATE blobs SET value = ?1 WHERE key = ?2",
        rusqlite::params![value, key],
    )
    .unwrap();
    (key, original)
}

fn restore_blob(db: &Path, key: &str, value: &[u8]) {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.execute(
        "UPDATE blobs SET value = ?1 WHERE key = ?2",
        rusqlite::params![value, key],
    )
    .unwrap();
}

/// With the first stored record of the wallet `id` rewritten by `edit`, the provider refuses to
/// sign (an integrity error, nothing printed); nothing changed: with the genuine record back, the
/// wallet signs.
fn refuses_a_rewritten_blob(
    d: &Deployment,
    home: &Path,
    id: &str,
    edit: impl FnOnce(&mut Vec<u8>),
) {
    let (key, original) = rewrite_blob(&d.provider.database(), id, edit);
    let out = sign(d, home, id);
    let line = out.refused().to_owned();
    assert!(line.contains("Integrity"), "{line}");
    assert!(out.stdout.is_empty());
    restore_blob(&d.provider.database(), &key, &original);
    sign(d, home, id).ok();
}

#[test]
fn enclave_refuses_a_tampered_sealed_blob_from_its_parent() {
    let (d, home, w) = alice();
    let id = w["wallet_id"].as_str().unwrap();
    refuses_a_rewritten_blob(&d, &home, id, |v| {
        let n = v.len();
        v[n / 2] ^= 0x01;
    });
}

#[test]
fn enclave_refuses_a_foreign_sealed_blob_from_its_parent() {
    let (d, home, mine) = alice();
    let other = create(&d, &d.home("bob"));
    let other_id = other["wallet_id"].as_str().unwrap();
    let mine_id = mine["wallet_id"].as_str().unwrap();
    // The parent serves Bob's sealed record under Alice's key.
    let conn = rusqlite::Connection::open(d.provider.database()).unwrap();
    let foreign: Vec<u8> = conn
        .query_row(
            "SELECT value FROM blobs WHERE key LIKE ?1",
            [format!("%{other_id}%")],
            |r| r.get(0),
        )
        .unwrap();
    drop(conn);
    refuses_a_rewritten_blob(&d, &home, mine_id, |v| *v = foreign);
}

#[test]
fn a_second_round_two_for_one_signing_session_is_refused() {
    use cosigner_protocol::wire::{ErrorKind, Request, Response, WalletId};
    let (d, home_dir, w) = alice();
    let trust = cosigner_client::trust::Trust::load(&d.dir.path().join("trust.toml")).unwrap();
    let mut session =
        cosigner_client::session::Session::connect(&d.provider.addr(), &trust).unwrap();
    let wallet_id = WalletId::from_hex(w["wallet_id"].as_str().unwrap()).unwrap();
    let message = [7u8; 32];
    let home = cosigner_client::home::Home::open(&home_dir).unwrap();
    let commit = Request::SignCommit {
        wallet_id,
        epoch: Epoch(0),
        message: serde_bytes::ByteBuf::from(message.to_vec()),
        signers: vec![pid(1), pid(2)],
    };
    let device_key = home.device_key().unwrap();
    let Response::SignCommitted {
        session_id,
        commitments,
    } = cosigner_client::wallet::authorized(
        &mut session,
        wallet_id,
        cosigner_protocol::wire::KeyRole::Device,
        &device_key,
        &commit,
    )
    .unwrap()
    else {
        panic!("no commitments")
    };
    let share = home.share(&wallet_id).unwrap();
    let kp =
        frost_core::keys::KeyPackage::<frost_secp256k1_tr::Secp256K1Sha256TR>::deserialize(&share)
            .unwrap();
    let (_ours, our_commitments) = cosigner_protocol::sign::SignerSession::commit(
        &kp,
        pid(1),
        &message,
        &[pid(1), pid(2)],
        &mut rand_core::OsRng,
    )
    .unwrap();
    let package =
        cosigner_protocol::sign::signing_package::<frost_secp256k1_tr::Secp256K1Sha256TR>(
            &message,
            &[(pid(1), our_commitments), (pid(2), commitments.into_vec())].into(),
        )
        .unwrap();
    let request = Request::SignShare {
        session_id,
        signing_package: serde_bytes::ByteBuf::from(package),
    };
    assert!(matches!(
        session.call(&request).unwrap(),
        Response::SignatureShare { .. }
    ));
    match session.call(&request) {
        Err(cosigner_client::ClientError::Remote(e)) => {
            assert_eq!(e.kind, ErrorKind::NotFound);
            assert!(e.message.contains("already used"), "{}", e.message);
        }
        other => panic!("second round 2 answered {other:?}"),
    }
}
