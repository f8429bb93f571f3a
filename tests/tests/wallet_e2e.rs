//! The 2-of-3 wallet end to end: real `cosigner`, `cosigner-parent` and `cosigner-enclave`
//! processes on loopback, a private SoftHSM token per cosigner, attestation on every session.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

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

fn sign(d: &Deployment, home: &Path, wallet: &str) -> cosigner_tests::Outcome {
    d.cosigner([
        "--home",
        p(home),
        "sign",
        "--wallet",
        wallet,
        "--message",
        MESSAGE,
        "--json",
    ])
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
    let d = Deployment::start().unwrap();
    let home = d.home("alice");
    let w = create(&d, &home);
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
    let out = sign(&d, &home, w["wallet_id"].as_str().unwrap());
    let sig: Value = serde_json::from_str(out.ok()).unwrap();
    check_bip340(
        w["group_public_key"].as_str().unwrap(),
        sig["signature"].as_str().unwrap(),
    );
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
    let d = Deployment::start().unwrap();
    let home = d.home("alice");
    let w = create(&d, &home);
    let id = w["wallet_id"].as_str().unwrap();
    let relay = Relay::start(d.provider.port, direction, tamper).unwrap();
    let out = d.cosigner([
        "--home",
        p(&home),
        "--provider",
        &relay.addr(),
        "sign",
        "--wallet",
        id,
        "--message",
        MESSAGE,
        "--json",
    ]);
    let line = out.refused().to_owned();
    assert!(out.stdout.is_empty(), "{tamper:?}: printed {}", out.stdout);
    assert!(!line.is_empty());
    let again = sign(&d, &home, id);
    let sig: Value = serde_json::from_str(again.ok()).unwrap();
    check_bip340(
        w["group_public_key"].as_str().unwrap(),
        sig["signature"].as_str().unwrap(),
    );
}

#[test]
fn relay_flipping_a_bit_toward_the_enclave_gets_no_signature() {
    // Encrypted records toward the enclave: 0 Finished, 1 Attest, 2 SignCommit, 3 SignShare.
    attack(Direction::ToServer, Tamper::FlipBit(3));
}

#[test]
fn relay_flipping_a_bit_toward_the_client_gets_no_signature() {
    attack(Direction::ToClient, Tamper::FlipBit(5));
}

#[test]
fn relay_replaying_a_record_gets_no_signature() {
    attack(Direction::ToServer, Tamper::Replay(2));
}

#[test]
fn relay_dropping_a_record_gets_no_signature() {
    attack(Direction::ToClient, Tamper::Drop(1));
}

#[test]
fn relay_reordering_records_gets_no_signature() {
    attack(Direction::ToClient, Tamper::Reorder(0));
}
