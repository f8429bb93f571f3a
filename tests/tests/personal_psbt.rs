//! Personal 2-of-3 wallets signing PSBTs end to end: real `cosigner`, `cosigner-parent` and
//! `cosigner-enclave` processes, a wallet created with the shipped personal policy (0.1 BTC per
//! rolling 24 hours at the provider), every produced transaction checked under Bitcoin's
//! consensus rules (libbitcoinconsensus, spending the PSBT's prevouts).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use std::path::{Path, PathBuf};

use cosigner_tests::bitcoin_tx::{self, Pay, Spend};
use cosigner_tests::wallets::{self, TestWallet, p};
use cosigner_tests::{Deployment, Outcome};
use serde_json::Value;

/// The shipped example: `daily`, 10 000 000 sat per rolling 24 hours, fee included.
fn personal_policy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/policies/personal.toml")
}

struct Personal {
    d: Deployment,
    w: TestWallet,
}

fn create(policy: Option<&Path>) -> Personal {
    let d = Deployment::start().unwrap();
    let extra = match policy {
        Some(policy) => vec!["--policy", p(policy)],
        None => vec![],
    };
    let w = wallets::create_with(&d, "owner", &extra);
    Personal { d, w }
}

impl Personal {
    fn sign(&self, tag: &str, spend: &Spend) -> Outcome {
        let file = self.d.dir.path().join(format!("{tag}.psbt"));
        std::fs::write(&file, &spend.psbt_base64).unwrap();
        self.d.cosigner([
            "--home",
            p(&self.w.home),
            "sign",
            "--wallet",
            &self.w.id,
            "--psbt",
            p(&file),
            "--json",
        ])
    }

    /// `cosigner sign --message` (a raw 32-byte message, no PSBT).
    fn sign_message(&self) -> Outcome {
        wallets::sign(&self.d, &self.w.home, &self.w.id)
    }

    /// `wallet set-policy` with the recovery credential and the given change.
    fn set_policy(&self, change: &[&str]) -> Outcome {
        let mut args = vec![
            "--home",
            p(&self.w.home),
            "wallet",
            "set-policy",
            "--wallet",
            &self.w.id,
            "--recovery-key",
            p(&self.w.recovery_key),
        ];
        args.extend(change);
        self.d.cosigner(&args)
    }

    /// Signs and checks the transaction under consensus rules; returns the device's summary.
    fn signed(&self, tag: &str, spend: &Spend) -> String {
        let out = self.sign(tag, spend);
        let v: Value = serde_json::from_str(out.ok())
            .unwrap_or_else(|e| panic!("{e}: {:?} {:?}", out.stdout, out.stderr));
        let txid = v["txid"].as_str().unwrap();
        let tx = v["tx_hex"].as_str().unwrap();
        assert_eq!(txid.len(), 64);
        bitcoin_tx::verify_consensus(tx, &spend.prevouts).expect("valid under consensus rules");
        let decoded: bitcoin::Transaction =
            bitcoin::consensus::deserialize(&hex::decode(tx).unwrap()).unwrap();
        assert_eq!(decoded.compute_txid().to_string(), txid);
        self.receipt_says(out.ok(), &format!("signed {txid}"));
        // The signed PSBT (`"psbt"`): every input's BIP-371 key signature, finalized by hand
        // into exactly the transaction printed.
        let psbt = v["psbt"].as_str().unwrap();
        assert_eq!(bitcoin_tx::finalized_by_hand(psbt).unwrap(), tx);
        out.stderr
    }

    /// The receipt in `sign --json`'s output checks offline against the trust file, as the
    /// provider's record of this spend.
    fn receipt_says(&self, signed_json: &str, decision: &str) {
        let file = self.d.dir.path().join("signed.json");
        std::fs::write(&file, signed_json).unwrap();
        let trust = self.d.dir.path().join("trust.toml");
        let checked = self.d.cosigner([
            "receipt",
            "verify",
            "--receipt",
            p(&file),
            "--trust",
            p(&trust),
            "--json",
        ]);
        let c: Value = serde_json::from_str(checked.ok()).unwrap();
        assert_eq!(c["action"], "sign-psbt", "{c}");
        assert_eq!(c["wallet"], self.w.id.as_str(), "{c}");
        let said = c["decision"].as_str().unwrap_or_default();
        assert!(said.starts_with(decision), "{said}");
    }

    /// Signing is refused: exit code 1, no panic, the reason on the last stderr line.
    fn refused(&self, tag: &str, spend: &Spend) -> String {
        let out = self.sign(tag, spend);
        assert_eq!(out.code, Some(1), "expected a refusal: {out:?}");
        assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
        assert!(out.stdout.is_empty(), "{}", out.stdout);
        out.stderr
    }

    /// A 2-input, 2-output spend of which `leaving` satoshis leave (10 000 of them the fee).
    fn spend(&self, leaving: u64) -> Spend {
        bitcoin_tx::payment(
            &self.w.key,
            &[leaving, 3_000_000],
            leaving - 10_000,
            3_000_000,
        )
        .unwrap()
    }
}

#[test]
fn personal_daily_limit_signs_under_it_and_refuses_the_spend_that_would_exceed_it() {
    let w = create(Some(&personal_policy()));

    // 0.06 BTC leave (fee included): within the rolling 0.1 BTC.
    let first = w.spend(6_000_000);
    let summary = w.signed("first", &first);
    assert!(
        summary.contains("6000000 sat leave the wallet (fee 10000 sat, change 3000000 sat)"),
        "the device shows its own reading: {summary}"
    );
    assert!(summary.contains("rule \"daily\""), "{summary}");

    // 0.05 more would make 0.11 BTC in 24 hours: refused with the policy's reason.
    let over = w.refused("over", &w.spend(5_000_000));
    assert!(
        over.contains("refused by the wallet's policy: no rule matches: 5000000 sat leaving"),
        "{over}"
    );
    // A refusal uses none of the allowance: 0.04 BTC makes exactly 0.1 and passes.
    w.signed("rest", &w.spend(4_000_000));
    // Now even a small one is over.
    let small = w.refused("small", &w.spend(20_000));
    assert!(small.contains("no rule matches"), "{small}");
}

#[test]
fn raw_message_signing_is_refused_for_a_wallet_with_a_policy() {
    let w = create(Some(&personal_policy()));
    let out = w.sign_message();
    let line = out.refused();
    assert!(
        line.contains("this wallet has a policy: sign a PSBT"),
        "{line}"
    );
    // The same wallet still signs PSBTs.
    w.signed("after", &w.spend(1_000_000));
}

#[test]
fn a_foreign_output_disguised_as_change_is_judged_by_the_real_value_leaving() {
    let w = create(Some(&personal_policy()));
    // 0.01 BTC to someone, and 0.5 BTC to another foreign script labelled (BIP-371) with the
    // wallet's own key as if it were change: 0.51 BTC (+ fee) really leave.
    let spend = bitcoin_tx::build(
        &w.w.key,
        &[60_000_000],
        &[
            (Pay::To(bitcoin_tx::foreign_address()), 1_000_000),
            (Pay::To(bitcoin_tx::foreign_address()), 50_000_000),
            (Pay::Change, 9_000_000 - 10_000),
        ],
    )
    .unwrap();
    let disguised = bitcoin_tx::disguise_as_change(&spend, 1, &w.w.key).unwrap();
    let stderr = w.refused("disguised", &disguised);
    assert!(
        stderr.contains("51010000 sat leave the wallet"),
        "the device's own summary shows the real value: {stderr}"
    );
    assert!(
        stderr.contains("no rule matches: 51010000 sat leaving to 2 destinations"),
        "the provider judged the real value: {stderr}"
    );
    // Honest change is change: 0.01 BTC + fee leave, within the limit.
    let honest =
        bitcoin_tx::payment(&w.w.key, &[60_000_000], 1_000_000, 59_000_000 - 10_000).unwrap();
    let summary = w.signed("honest", &honest);
    assert!(
        summary.contains("1010000 sat leave the wallet"),
        "{summary}"
    );
}

#[test]
fn a_wallet_without_a_policy_signs_psbts_and_messages() {
    let w = create(None);
    let spend = w.spend(50_000_000);
    let summary = w.signed("big", &spend);
    assert!(summary.contains("no policy"), "{summary}");
    w.sign_message().ok();

    // `--psbt-out`: the signed PSBT written for other wallet software, as base64 text.
    let spend = w.spend(20_000_000);
    let file = w.d.dir.path().join("out.psbt");
    std::fs::write(&file, &spend.psbt_base64).unwrap();
    let signed = w.d.dir.path().join("signed.psbt");
    let out = w.d.cosigner([
        "--home",
        p(&w.w.home),
        "sign",
        "--wallet",
        &w.w.id,
        "--psbt",
        p(&file),
        "--psbt-out",
        p(&signed),
    ]);
    let tx = out.ok().lines().nth(1).unwrap().to_owned();
    let written = std::fs::read_to_string(&signed).unwrap();
    assert_eq!(bitcoin_tx::finalized_by_hand(written.trim()).unwrap(), tx);
    bitcoin_tx::verify_consensus(&tx, &spend.prevouts).expect("valid under consensus rules");
}

#[test]
fn only_the_recovery_credential_lifts_the_limit() {
    let w = create(Some(&personal_policy()));
    let big = w.spend(20_000_000);
    assert!(w.refused("big", &big).contains("no rule matches"));
    // A policy that does not parse for this wallet is refused before anything is sent.
    let bad = w.d.dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[[rule]]\nname = \"x\"\napprovals = 1\napprovers = [\"mallory\"]\n",
    )
    .unwrap();
    let line = w.set_policy(&["--policy", p(&bad)]).refused().to_owned();
    assert!(line.contains("mallory"), "{line}");
    // With the offline credential: the limit is lifted at both cosigners...
    let out = w.set_policy(&["--remove", "--json"]);
    let v: Value = serde_json::from_str(out.ok()).unwrap();
    assert_eq!(v["policy"], Value::Bool(false));
    w.signed("big-after", &big);
    // ...and put back, counting the spend made meanwhile.
    w.set_policy(&["--policy", p(&personal_policy())]).ok();
    assert!(
        w.refused("tiny", &w.spend(20_000))
            .contains("no rule matches")
    );
}

/// The same transaction signed three times (a retry, a second device run) counts once toward
/// the daily limit: 0.06 BTC three times is still 0.06, so 0.04 more is allowed.
#[test]
fn signing_the_same_transaction_again_does_not_count_it_again() {
    let w = create(Some(&personal_policy()));
    let spend = w.spend(6_000_000);
    for round in 0..3 {
        w.signed(&format!("same-{round}"), &spend);
    }
    w.signed("rest", &w.spend(4_000_000));
    let over = w.refused("over", &w.spend(20_000));
    assert!(over.contains("no rule matches"), "{over}");
}
