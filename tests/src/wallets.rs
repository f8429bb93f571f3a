//! Personal wallets through the real `cosigner` binary, for process-level tests: create one,
//! sign a message (checking the BIP-340 signature independently), refresh.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::{Deployment, Outcome};

/// The message the tests sign (a 32-byte sighash, hex).
pub const MESSAGE: &str = "1111111111111111111111111111111111111111111111111111111111111111";

/// A path as the `&str` a command line takes (test paths are UTF-8).
pub fn p(path: &Path) -> &str {
    path.to_str().unwrap_or_default()
}

/// A wallet created by [`create`].
#[derive(Debug, Clone)]
pub struct TestWallet {
    /// Its id (hex).
    pub id: String,
    /// Its x-only group key (hex).
    pub key: String,
    /// The client home holding it.
    pub home: PathBuf,
    /// Where its recovery credential was written.
    pub recovery_key: PathBuf,
}

/// `cosigner wallet create` in the home `name`, the recovery credential beside the homes.
///
/// # Panics
/// If the creation fails (this is for tests).
pub fn create(d: &Deployment, name: &str) -> TestWallet {
    create_with(d, name, &[])
}

/// A started [`Deployment`] with Alice's wallet in it ([`create`] in the home `alice`).
///
/// # Panics
/// If the deployment does not start or the wallet cannot be created.
pub fn deployment_with_alice() -> (Deployment, TestWallet) {
    let d = match Deployment::start() {
        Ok(d) => d,
        Err(e) => panic!("starting the deployment: {e:#}"),
    };
    let w = create(&d, "alice");
    (d, w)
}

/// [`create`] with `extra` arguments to `wallet create` (`--policy FILE`, say).
///
/// # Panics
/// If the creation fails (this is for tests).
pub fn create_with(d: &Deployment, name: &str, extra: &[&str]) -> TestWallet {
    let home = d.home(name);
    let recovery_key = d.dir.path().join(format!("{name}-recovery.key"));
    let mut args = vec!["--recovery-key-out", p(&recovery_key)];
    args.extend(extra);
    let out = create_in(d, &home, &args);
    let w: Value = serde_json::from_str(out.ok()).unwrap_or_default();
    let field = |name: &str| {
        w.get(name)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    TestWallet {
        id: field("wallet_id"),
        key: field("group_public_key"),
        home,
        recovery_key,
    }
}

/// `cosigner --home HOME wallet create --json` with `extra` arguments, as it came out (it may be
/// refused).
pub fn create_in(d: &Deployment, home: &Path, extra: &[&str]) -> Outcome {
    let mut args = vec!["--home", p(home), "wallet", "create", "--json"];
    args.extend(extra);
    d.cosigner(&args)
}

/// `cosigner sign --message MESSAGE` with the wallet `id` of `home`.
pub fn sign(d: &Deployment, home: &Path, id: &str) -> Outcome {
    sign_with(d, home, id, &[])
}

/// [`sign`] with `extra` arguments (`--with-recovery-key FILE`, say).
pub fn sign_with(d: &Deployment, home: &Path, id: &str, extra: &[&str]) -> Outcome {
    sign_message(d, home, id, MESSAGE, extra)
}

/// `cosigner sign --message MESSAGE_HEX` with the wallet `id` of `home` and `extra` arguments.
pub fn sign_message(
    d: &Deployment,
    home: &Path,
    id: &str,
    message_hex: &str,
    extra: &[&str],
) -> Outcome {
    let mut args = vec![
        "--home",
        p(home),
        "sign",
        "--wallet",
        id,
        "--message",
        message_hex,
        "--json",
    ];
    args.extend(extra);
    d.cosigner(&args)
}

/// Signs with `home` and checks the signature against the wallet's key with k256 (independent
/// of FROST's own verifier).
///
/// # Panics
/// If signing fails or the signature does not verify.
pub fn signs(d: &Deployment, home: &Path, w: &TestWallet) {
    verifies(w, &sign(d, home, &w.id));
}

/// Checks the signature of a successful `sign --json` against `w`'s key with k256 (independent
/// of FROST's own verifier).
///
/// # Panics
/// If signing failed or the signature does not verify.
pub fn verifies(w: &TestWallet, out: &Outcome) {
    let sig: Value = serde_json::from_str(out.ok()).unwrap_or_default();
    let verified = (|| -> anyhow::Result<()> {
        let key = k256::schnorr::VerifyingKey::from_bytes(&hex::decode(&w.key)?)?;
        let sig = k256::schnorr::Signature::try_from(
            hex::decode(
                sig.get("signature")
                    .and_then(Value::as_str)
                    .unwrap_or_default(),
            )?
            .as_slice(),
        )?;
        key.verify_raw(&hex::decode(MESSAGE)?, &sig)?;
        Ok(())
    })();
    assert!(verified.is_ok(), "signature does not verify: {verified:?}");
}

/// `cosigner refresh` of the wallet `id` in `home`.
pub fn refresh(d: &Deployment, home: &Path, id: &str) -> Outcome {
    d.cosigner(["--home", p(home), "refresh", "--wallet", id, "--json"])
}

/// `cosigner recover` of `w` into `home` under its recovery credential.
pub fn recover(d: &Deployment, home: &Path, w: &TestWallet) -> Outcome {
    d.cosigner([
        "--home",
        p(home),
        "recover",
        "--wallet",
        &w.id,
        "--recovery-key",
        p(&w.recovery_key),
        "--json",
    ])
}

/// `cosigner wallet show --json` of the wallet `id` in `home`.
pub fn show(d: &Deployment, home: &Path, id: &str) -> Outcome {
    d.cosigner([
        "--home",
        p(home),
        "wallet",
        "show",
        "--wallet",
        id,
        "--json",
    ])
}
