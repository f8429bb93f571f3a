//! Ethereum wallets through the real binaries (`cosigner`, `cosigner-enclave`, `cosigner-parent`
//! over TLS with attestation): `wallet create --chain ethereum --json` prints the wallet id and an
//! EIP-55 address, `sign --eth-tx FILE --json` prints a transaction eth-account attributes to that
//! address and py-evm executes, with a receipt; bad input is refused in one line, changing nothing.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use cosigner_tests::Deployment;
use cosigner_tests::ecdsa::{SKIP_LINE, TESTER_CHAIN_ID, python_available, run_in_evm};
use cosigner_tests::wallets::p;
use std::path::{Path, PathBuf};

use cosigner_tests::Outcome;
use serde_json::Value;

const ETH: u128 = 1_000_000_000_000_000_000;
const BOB: &str = "0x000000000000000000000000000000000000b0b0";

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap()
}

/// `cosigner sign --wallet ID --eth-tx FILE --json` in `home`.
fn sign_eth(d: &Deployment, home: &Path, id: &str, file: &Path) -> Outcome {
    d.cosigner([
        "--home",
        p(home),
        "sign",
        "--wallet",
        id,
        "--eth-tx",
        p(file),
        "--json",
    ])
}

/// A file `name` in the deployment's directory holding `text`.
fn file(d: &Deployment, name: &str, text: &str) -> PathBuf {
    let path = d.dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn create_and_sign_an_ethereum_transaction_with_the_cli() {
    let mut d = Deployment::start().unwrap();
    let home = d.home("eve");
    let recovery_key = d.dir.path().join("eve-recovery.key");
    let out = d.cosigner([
        "--home",
        p(&home),
        "wallet",
        "create",
        "--chain",
        "ethereum",
        "--json",
        "--recovery-key-out",
        p(&recovery_key),
    ]);
    let created = json(out.ok());
    let id = created["wallet_id"].as_str().unwrap().to_owned();
    let address = created["address"].as_str().unwrap().to_owned();
    assert_eq!(address.len(), 42);
    assert_ne!(address.to_lowercase(), address, "EIP-55 mixed case");
    let list = json(
        d.cosigner(["--home", p(&home), "wallet", "list", "--json"])
            .ok(),
    );
    assert_eq!(list[0]["address"], address.as_str());
    assert_eq!(list[0]["chain"], "ethereum");
    let shown = json(
        d.cosigner([
            "--home",
            p(&home),
            "wallet",
            "show",
            "--wallet",
            &id,
            "--json",
        ])
        .ok(),
    );
    assert_eq!(shown["address"], address.as_str());
    assert_eq!(shown["source"], "cosigner");
    assert_eq!(shown["provider"]["same_key"], true);

    let tx_text = format!(
        r#"{{"from":"{address}","chainId":"{TESTER_CHAIN_ID:#x}","nonce":"0x0","to":"{BOB}",
            "value":"{}","gas":"0x5208","maxFeePerGas":"0x77359400","maxPriorityFeePerGas":"0x3b9aca00"}}"#,
        2 * ETH
    );
    let tx_file = file(&d, "tx.json", &tx_text);
    let signed = json(sign_eth(&d, &home, &id, &tx_file).ok());
    let raw = signed["raw_tx"].as_str().unwrap();
    assert!(signed["tx_hash"].as_str().unwrap().starts_with("0x"));
    assert_eq!(signed["from"], address.as_str());
    assert!(
        signed["receipt"]["record"].is_string(),
        "a receipt under the attested key"
    );

    // Refused in one line, before anything is signed: a message for an Ethereum wallet, a
    // transaction from another account, a malformed file.
    let refused = d.cosigner([
        "--home",
        p(&home),
        "sign",
        "--wallet",
        &id,
        "--message",
        &"11".repeat(32),
    ]);
    assert!(
        refused.refused().contains("Ethereum wallet"),
        "{}",
        refused.refused()
    );
    let other_from = file(&d, "other.json", &tx_text.replace(&address, BOB));
    let bad = file(
        &d,
        "bad.json",
        r#"{"chainId":1,"nonce":0,"gas":21000,"gasPrice":1,"to":"0x12"}"#,
    );
    for (path, says) in [(&other_from, "not wallet"), (&bad, "to")] {
        let refused = sign_eth(&d, &home, &id, path);
        assert!(refused.refused().contains(says), "{}", refused.refused());
        assert_eq!(refused.refused().trim().lines().count(), 1);
    }

    // A wallet created with a policy (1 ETH a day): the enclave refuses 2 ETH, in one line.
    let frank = d.home("frank");
    // The example policy, pinned to the test chain instead of mainnet.
    let example = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/policies/personal-eth.toml"),
    )
    .unwrap();
    let pinned = example.replace(
        "chain_ids = [1]",
        &format!("chain_ids = [{TESTER_CHAIN_ID}]"),
    );
    assert_ne!(pinned, example);
    let policy = file(&d, "personal-eth.toml", &pinned);
    let limited = json(
        d.cosigner([
            "--home",
            p(&frank),
            "wallet",
            "create",
            "--chain",
            "ethereum",
            "--policy",
            p(&policy),
            "--recovery-key-out",
            p(&d.dir.path().join("frank-recovery.key")),
            "--json",
        ])
        .ok(),
    );
    let limited_id = limited["wallet_id"].as_str().unwrap();
    let shown = json(
        d.cosigner([
            "--home",
            p(&frank),
            "wallet",
            "show",
            "--wallet",
            limited_id,
            "--json",
        ])
        .ok(),
    );
    assert_eq!(shown["policy_known"], true, "{shown}");
    let limited_tx = file(
        &d,
        "limited.json",
        &tx_text.replace(&address, limited["address"].as_str().unwrap()),
    );
    // This device's reading of the transaction comes first on stderr, then the one-line refusal.
    let refused = sign_eth(&d, &frank, limited_id, &limited_tx);
    assert_eq!(refused.code, Some(1), "{}", refused.stderr);
    let lines: Vec<&str> = refused.stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{}", refused.stderr);
    assert!(
        lines[0].starts_with("transaction from"),
        "{}",
        refused.stderr
    );
    assert!(
        lines[1].contains("refused by the wallet's policy: no rule matches: 2.000042 ETH"),
        "{}",
        refused.stderr
    );

    // The provider restarts: the wallet (sealed share, anchored state) is still there and signs
    // the next transaction.
    d.provider.stop();
    d.provider.start_processes().unwrap();
    let next = file(
        &d,
        "tx1.json",
        &tx_text.replace(r#""nonce":"0x0""#, r#""nonce":"0x1""#),
    );
    let raw_again = json(sign_eth(&d, &home, &id, &next).ok())["raw_tx"]
        .as_str()
        .unwrap()
        .to_owned();

    // A refresh: the same address at epoch 1, and the wallet still signs (a third transaction).
    let refreshed = json(
        d.cosigner(["--home", p(&home), "refresh", "--wallet", &id, "--json"])
            .ok(),
    );
    assert_eq!(refreshed["epoch"], 1);
    assert_eq!(refreshed["address"], address.as_str());
    let third = file(
        &d,
        "tx2.json",
        &tx_text.replace(r#""nonce":"0x0""#, r#""nonce":"0x2""#),
    );
    let raw_third = json(sign_eth(&d, &home, &id, &third).ok())["raw_tx"]
        .as_str()
        .unwrap()
        .to_owned();

    // The phone is lost: a new one recovers the wallet with the recovery credential, the same
    // account at epoch 2; the old phone is refused in one line.
    let new_phone = d.home("eve-new");
    let recovered = json(
        d.cosigner([
            "--home",
            p(&new_phone),
            "recover",
            "--wallet",
            &id,
            "--recovery-key",
            p(&recovery_key),
            "--json",
        ])
        .ok(),
    );
    assert_eq!(recovered["address"], address.as_str());
    assert_eq!(recovered["epoch"], 2);
    let fourth = file(
        &d,
        "tx3.json",
        &tx_text.replace(r#""nonce":"0x0""#, r#""nonce":"0x3""#),
    );
    let old_phone = sign_eth(&d, &home, &id, &fourth);
    assert_eq!(old_phone.code, Some(1), "{}", old_phone.stderr);
    assert!(
        old_phone.stderr.contains("revoked") || old_phone.stderr.contains("Unauthorized"),
        "{}",
        old_phone.stderr
    );
    let raw_fourth = json(sign_eth(&d, &new_phone, &id, &fourth).ok())["raw_tx"]
        .as_str()
        .unwrap()
        .to_owned();

    if !python_available() {
        println!("{SKIP_LINE}");
        return;
    }
    let txs: Vec<_> = [
        raw,
        raw_again.as_str(),
        raw_third.as_str(),
        raw_fourth.as_str(),
    ]
    .iter()
    .map(|r| cosigner_eth::SignedTx {
        raw: hex::decode(&r[2..]).unwrap(),
        hash: [0; 32],
    })
    .collect();
    let report = run_in_evm(&address, 9 * ETH, &txs).unwrap();
    assert_eq!(report.senders, vec![address.clone(); 4]);
    assert_eq!(report.receipts, vec![1, 1, 1, 1]);
    assert_eq!(report.balances[&BOB.to_lowercase()], (8 * ETH).to_string());
}
