//! Wallet creation gated by operator enrollment tokens, end to end: a provider in `token` mode
//! (the recovery cosigner stays open), real `cosigner` processes.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use cosigner_protocol::auth::public_key_bytes;
use cosigner_protocol::enrollment::EnrollmentToken;
use cosigner_tests::{Deployment, Outcome};
use p256::ecdsa::SigningKey;
use serde_json::Value;

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

struct Gated {
    d: Deployment,
    operator: SigningKey,
}

fn gated() -> Gated {
    let operator = SigningKey::random(&mut rand_core::OsRng);
    let config = format!(
        "\n[enrollment]\nmode = \"token\"\noperator_key = \"{}\"\n",
        hex::encode(public_key_bytes(&operator))
    );
    Gated {
        d: Deployment::start_with(&config).unwrap(),
        operator,
    }
}

impl Gated {
    fn device_key(&self, home: &Path) -> Vec<u8> {
        let out = self.d.cosigner(["--home", p(home), "device-key", "--json"]);
        let v: Value = serde_json::from_str(out.ok()).unwrap();
        hex::decode(v["device_key"].as_str().unwrap()).unwrap()
    }

    fn token_file(&self, name: &str, device_key: &[u8], expires_ms: u64) -> std::path::PathBuf {
        let token = EnrollmentToken::issue(&self.operator, device_key, expires_ms).unwrap();
        let path = self.d.dir.path().join(name);
        std::fs::write(&path, token.to_text()).unwrap();
        path
    }

    fn create(&self, home: &Path, token: Option<&Path>) -> Outcome {
        let out_key = self.d.dir.path().join(format!(
            "{}.recovery",
            home.file_name().unwrap().to_str().unwrap()
        ));
        let mut extra = vec!["--recovery-key-out", p(&out_key)];
        if let Some(t) = token {
            extra.extend(["--enrollment-token", p(t)]);
        }
        cosigner_tests::wallets::create_in(&self.d, home, &extra)
    }
}

#[test]
fn a_gated_provider_refuses_wallet_creation_without_a_valid_token_and_accepts_an_enrolled_device() {
    let g = gated();
    let home = g.d.home("alice");
    let device = g.device_key(&home);

    // No token: refused before any work, with a clear one-line reason.
    let line = g.create(&home, None).refused().to_owned();
    assert!(line.contains("enrollment token"), "{line}");

    // Expired: refused.
    let expired = g.token_file("expired.token", &device, now_ms() - 1000);
    let line = g.create(&home, Some(&expired)).refused().to_owned();
    assert!(line.contains("enrollment token"), "{line}");

    // Signed by someone other than the operator: refused.
    let forger = Gated {
        d: Deployment::start().unwrap(),
        operator: SigningKey::random(&mut rand_core::OsRng),
    };
    let forged = forger.token_file("forged.token", &device, now_ms() + 3_600_000);
    let line = g.create(&home, Some(&forged)).refused().to_owned();
    assert!(line.contains("enrollment token"), "{line}");

    // A token for another device: the registration must name the enrolled key.
    let bob = g.d.home("bob");
    let bobs = g.token_file("bob.token", &g.device_key(&bob), now_ms() + 3_600_000);
    let line = g.create(&home, Some(&bobs)).refused().to_owned();
    assert!(line.contains("enrollment token"), "{line}");

    // The enrolled device creates its wallet, and it signs.
    let good = g.token_file("alice.token", &device, now_ms() + 3_600_000);
    let w: Value = serde_json::from_str(g.create(&home, Some(&good)).ok()).unwrap();
    let id = w["wallet_id"].as_str().unwrap();
    g.d.cosigner([
        "--home",
        p(&home),
        "sign",
        "--wallet",
        id,
        "--message",
        "3333333333333333333333333333333333333333333333333333333333333333",
        "--json",
    ])
    .ok();
}

#[test]
fn a_malformed_token_file_is_refused_by_the_client_in_one_line() {
    let g = gated();
    let home = g.d.home("alice");
    let junk = g.d.dir.path().join("junk.token");
    std::fs::write(&junk, "cosigner-enrollment-v1:zz").unwrap();
    let out = g.create(&home, Some(&junk));
    assert_eq!(out.code, Some(1), "{out:?}");
    assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
    assert!(!out.stderr.contains("panicked"));
}
