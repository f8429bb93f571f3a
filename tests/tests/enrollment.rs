//! Wallet enrollment as processes: `cosigner-parent enrollment keygen` / `issue` (the operator's
//! tools), the enclave's `[enrollment]` configuration refusals at start, and a token-mode provider
//! gating `cosigner wallet create`.
//!
//! The last group runs against the enclave's DkgStart/DkgConfirm check and the client's
//! `wallet create --enrollment-token FILE` (more of those in enrollment_dkg.rs).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use cosigner_protocol::enrollment::{EnrollmentToken, TEXT_PREFIX};
use cosigner_tests::{Deployment, Outcome, run};
use p256::ecdsa::SigningKey;
use serde_json::Value;

const DAY_MS: u64 = 86_400_000;

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn now_ms() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

fn parent<const N: usize>(args: [&str; N]) -> Outcome {
    run("cosigner-parent", args, &[])
}

/// The arguments of `cosigner-parent enrollment issue`: a token for `device_hex` signed with the
/// key in `operator`, valid `days`, then `extra`.
fn issue_args<'a>(
    operator: &'a Path,
    device_hex: &'a str,
    days: &'a str,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec![
        "enrollment",
        "issue",
        "--operator-key",
        p(operator),
        "--device-key",
        device_hex,
        "--expires-in-days",
        days,
    ];
    args.extend(extra);
    args
}

fn issue(operator: &Path, device_hex: &str, days: &str, extra: &[&str]) -> Outcome {
    run(
        "cosigner-parent",
        issue_args(operator, device_hex, days, extra),
        &[],
    )
}

fn tempdir() -> tempfile::TempDir {
    tempfile::TempDir::with_prefix("cosigner-enrollment-").unwrap()
}

/// `keygen --json` into `dir/name`; returns the key file and the printed public key (hex).
fn keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    let path = dir.join(name);
    let out = parent(["enrollment", "keygen", "--out", p(&path), "--json"]);
    let json: Value = serde_json::from_str(out.ok().trim()).unwrap();
    let key = json["operator_key"].as_str().unwrap().to_owned();
    (path, key)
}

fn read_key(path: &Path) -> SigningKey {
    use p256::pkcs8::DecodePrivateKey;
    SigningKey::from_pkcs8_pem(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn device_key() -> (SigningKey, String) {
    let key = SigningKey::random(&mut rand_core::OsRng);
    let public = hex::encode(key.verifying_key().to_encoded_point(true).as_bytes());
    (key, public)
}

#[test]
fn keygen_writes_a_private_key_once_and_prints_its_public_half() {
    let dir = tempdir();
    let (path, public) = keygen(dir.path(), "operator.pem");
    assert_eq!(public.len(), 66, "SEC1 compressed, hex: {public}");
    assert!(public.starts_with("02") || public.starts_with("03"));
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let pem = std::fs::read_to_string(&path).unwrap();
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"), "{pem}");
    let key = read_key(&path);
    assert_eq!(
        hex::encode(EnrollmentToken::operator_public_key(&key)),
        public
    );
    // The key file is never replaced: a second keygen to the same path is refused, the key kept.
    let line = parent(["enrollment", "keygen", "--out", p(&path)])
        .refused()
        .to_owned();
    assert!(line.contains("refusing to overwrite"), "{line}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), pem);
    // A dangling symbolic link is not followed to create the key elsewhere.
    let link = dir.path().join("link.pem");
    std::os::unix::fs::symlink(dir.path().join("elsewhere.pem"), &link).unwrap();
    parent(["enrollment", "keygen", "--out", p(&link)]).refused();
    assert!(!dir.path().join("elsewhere.pem").exists());
    // Without --json: the bare hex, for `$(…)` in scripts.
    let out = parent([
        "enrollment",
        "keygen",
        "--out",
        p(&dir.path().join("second.pem")),
    ]);
    let bare = out.ok().trim().to_owned();
    assert_eq!(bare.len(), 66);
    assert_ne!(bare, public, "a new key each time");
    // A directory that does not exist: one line.
    parent([
        "enrollment",
        "keygen",
        "--out",
        p(&dir.path().join("missing/operator.pem")),
    ])
    .refused();
}

#[test]
fn issue_signs_a_token_for_one_device_until_its_expiry() {
    let dir = tempdir();
    let (operator, public) = keygen(dir.path(), "operator.pem");
    let operator_key = hex::decode(&public).unwrap();
    let (device, device_hex) = device_key();

    let before = now_ms();
    let out = issue(&operator, &device_hex, "30", &[]);
    let text = out.ok().trim().to_owned();
    let after = now_ms();
    assert!(text.starts_with(TEXT_PREFIX), "{text}");
    let token = EnrollmentToken::from_text(&text).unwrap();
    assert_eq!(hex::encode(&token.device_key), device_hex);
    assert!(
        (before + 30 * DAY_MS..=after + 30 * DAY_MS).contains(&token.expires_ms),
        "expires {} not 30 days after {before}..{after}",
        token.expires_ms
    );
    token.verify(&operator_key, after).unwrap();
    assert!(token.verify(&operator_key, token.expires_ms).is_err());
    // Another operator's key does not accept it.
    let (_, stranger) = device_key();
    assert!(
        token
            .verify(&hex::decode(stranger).unwrap(), after)
            .is_err()
    );

    // The uncompressed spelling of the device key gives a token for the same (compressed) key;
    // --out writes the text, --json prints the details.
    let uncompressed = hex::encode(device.verifying_key().to_encoded_point(false).as_bytes());
    let file = dir.path().join("device.token");
    let out = issue(
        &operator,
        &uncompressed,
        "1",
        &["--out", p(&file), "--json"],
    );
    let json: Value = serde_json::from_str(out.ok().trim()).unwrap();
    let written = std::fs::read_to_string(&file).unwrap();
    assert_eq!(json["token"].as_str().unwrap(), written.trim());
    assert_eq!(json["device_key"].as_str().unwrap(), device_hex);
    let token = EnrollmentToken::from_text(&written).unwrap();
    assert_eq!(json["expires_ms"].as_u64().unwrap(), token.expires_ms);
    assert_eq!(hex::encode(&token.device_key), device_hex);
    token.verify(&operator_key, now_ms()).unwrap();
    // --out without --json prints nothing.
    let quiet = issue(&operator, &device_hex, "1", &["--out", p(&file)]);
    assert_eq!(quiet.ok(), "");
    EnrollmentToken::from_text(&std::fs::read_to_string(&file).unwrap()).unwrap();
}

#[test]
fn bad_issue_inputs_are_one_line_refusals() {
    let dir = tempdir();
    let (operator, public) = keygen(dir.path(), "operator.pem");
    let (_, device_hex) = device_key();
    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "hello\n").unwrap();
    let missing = dir.path().join("missing.pem");
    let mut not_a_point = "ff".repeat(33);
    not_a_point.replace_range(0..2, "02");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--device-key", "zz"], "--device-key"),
        (vec!["--device-key", ""], "--device-key"),
        (vec!["--device-key", "02abcd"], "not a P-256 public key"),
        (vec!["--device-key", &not_a_point], "not a P-256 public key"),
        (vec!["--expires-in-days", "0"], "--expires-in-days"),
        (vec!["--expires-in-days", "-3"], "--expires-in-days"),
        (vec!["--expires-in-days", "3651"], "--expires-in-days"),
        (vec!["--expires-in-days", "soon"], "--expires-in-days"),
        (vec!["--operator-key", p(&missing)], "--operator-key"),
        (
            vec!["--operator-key", p(&not_pem)],
            "not a P-256 PKCS#8 PEM key",
        ),
        (vec!["--operator-key", p(dir.path())], "--operator-key"),
        // The operator key is read from a file, never taken inline: its hex is no file name.
        (vec!["--operator-key", &public], "--operator-key"),
    ];
    for (change, why) in cases {
        let mut args = issue_args(&operator, &device_hex, "7", &[]);
        let at = args.iter().position(|a| *a == change[0]).unwrap();
        args[at + 1] = change[1];
        let out = run("cosigner-parent", &args, &[]);
        let line = out.refused();
        assert!(line.contains(why), "{change:?}: {line}");
        assert!(out.stdout.is_empty(), "{change:?}: {}", out.stdout);
    }
    // Missing flags are usage errors (exit 2), not refusals.
    let usage = parent(["enrollment", "issue", "--operator-key", p(&operator)]);
    assert_eq!(usage.code, Some(2), "{usage:?}");
}

#[test]
fn the_enclave_refuses_to_start_with_an_inconsistent_enrollment_section() {
    let dir = tempdir();
    let (_, public) = keygen(dir.path(), "operator.pem");
    let d = dir.path().display();
    let base = format!(
        "listen = \"unix:{d}/enclave.sock\"\nstore = \"unix:{d}/store.sock\"\n[token]\n\
         label = \"enrollment-test\"\n[attester]\nkind = \"nitro\"\n"
    );
    for (section, why) in [
        ("mode = \"token\"\n", "needs operator_key"),
        (
            "mode = \"token\"\noperator_key = \"02abcd\"\n",
            "not a SEC1 P-256",
        ),
        ("mode = \"closed\"\n", "expected \"open\" or \"token\""),
        (
            &format!("operator_key = \"{public}\"\n") as &str,
            "mode is \"open\"",
        ),
    ] {
        let config = dir.path().join("enclave.toml");
        std::fs::write(&config, format!("{base}[enrollment]\n{section}")).unwrap();
        let out = run("cosigner-enclave", ["run", "--config", p(&config)], &[]);
        assert_eq!(out.code, Some(1), "{section}: {out:?}");
        let lines: Vec<&str> = out.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{section}: {}", out.stderr);
        assert!(lines[0].contains(why), "{section}: {}", lines[0]);
        assert!(lines[0].contains("[enrollment]"), "{}", lines[0]);
    }
    // The key keygen printed is what the configuration takes.
    let text = format!("{base}[enrollment]\nmode = \"token\"\noperator_key = \"{public}\"\n");
    let config = cosigner_enclave::config::Config::parse(&text).unwrap();
    assert_eq!(
        config.enrollment_operator_key(),
        Some(hex::decode(&public).unwrap())
    );
}

// ---------------------------------------------------------------------------------------------
// A token-mode provider: the enclave's check (`Config::enrollment_operator_key` into the
// service) and `cosigner wallet create --enrollment-token FILE`.
// ---------------------------------------------------------------------------------------------

/// A deployment whose provider requires tokens signed by a fresh operator key (the recovery
/// cosigner stays open, as in `make up`).
struct Gated {
    deployment: Deployment,
    operator: PathBuf,
    _keys: tempfile::TempDir,
}

impl Gated {
    fn start() -> Self {
        let keys = tempdir();
        let (operator, public) = keygen(keys.path(), "operator.pem");
        let deployment = Deployment::start_with(&format!(
            "\n[enrollment]\nmode = \"token\"\noperator_key = \"{public}\"\n"
        ))
        .unwrap();
        Self {
            deployment,
            operator,
            _keys: keys,
        }
    }

    /// The device key of a client home (created by `device-key`).
    fn device_key(&self, home: &Path) -> String {
        let out = self
            .deployment
            .cosigner(["--home", p(home), "device-key", "--json"]);
        let json: Value = serde_json::from_str(out.ok().trim()).unwrap();
        json["device_key"].as_str().unwrap().to_owned()
    }

    /// A token for `device_hex`, issued by the CLI, in a file.
    fn issue(&self, device_hex: &str, name: &str) -> PathBuf {
        let file = self.deployment.dir.path().join(name);
        issue(&self.operator, device_hex, "1", &["--out", p(&file)]).ok();
        file
    }

    fn create(&self, home: &Path, token: Option<&Path>) -> Outcome {
        let token: Vec<&str> = token
            .map(|t| vec!["--enrollment-token", p(t)])
            .unwrap_or_default();
        cosigner_tests::wallets::create_in(&self.deployment, home, &token)
    }

    /// Rows in the provider's blob store: a refused DkgStart must leave none behind.
    fn provider_blobs(&self) -> i64 {
        let db = rusqlite::Connection::open_with_flags(
            self.deployment.provider.database(),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        db.query_row("SELECT count(*) FROM blobs", [], |r| r.get(0))
            .unwrap()
    }
}

#[test]
fn a_token_mode_provider_creates_wallets_only_for_enrolled_devices() {
    let gated = Gated::start();
    let alice = gated.deployment.home("alice");
    let alice_key = gated.device_key(&alice);
    let blobs = gated.provider_blobs();

    // No token: refused, and nothing stored.
    let line = gated.create(&alice, None).refused().to_owned();
    assert!(line.contains("enrollment"), "{line}");
    assert_eq!(
        gated.provider_blobs(),
        blobs,
        "a refused DkgStart left state"
    );

    // Bob's token does not enroll Carol's device. The enclave learns the device key only at
    // DkgConfirm, so this refusal comes after the DKG rounds; Carol's own home is used so that
    // what it leaves behind (an unfinished creation) does not concern Alice's attempts below.
    let bob = gated.deployment.home("bob");
    let bob_token = gated.issue(&gated.device_key(&bob), "bob.token");
    let carol = gated.deployment.home("carol");
    gated.device_key(&carol);
    let line = gated.create(&carol, Some(&bob_token)).refused().to_owned();
    assert!(line.contains("enrollment"), "{line}");

    // A token from another operator key.
    let other_dir = tempdir();
    let (other_operator, _) = keygen(other_dir.path(), "other.pem");
    let forged = gated.deployment.dir.path().join("forged.token");
    let token = EnrollmentToken::issue(
        &read_key(&other_operator),
        &hex::decode(&alice_key).unwrap(),
        now_ms() + DAY_MS,
    )
    .unwrap();
    std::fs::write(&forged, token.to_text()).unwrap();
    let line = gated.create(&alice, Some(&forged)).refused().to_owned();
    assert!(line.contains("enrollment"), "{line}");

    // An expired token from the right operator.
    let expired = gated.deployment.dir.path().join("expired.token");
    let token = EnrollmentToken::issue(
        &read_key(&gated.operator),
        &hex::decode(&alice_key).unwrap(),
        now_ms() - 1,
    )
    .unwrap();
    std::fs::write(&expired, token.to_text()).unwrap();
    let line = gated.create(&alice, Some(&expired)).refused().to_owned();
    assert!(line.contains("expired"), "{line}");
    assert_eq!(
        gated.provider_blobs(),
        blobs,
        "refused DkgStarts left state"
    );

    // Alice's own token: the wallet is created, and signs.
    let alice_token = gated.issue(&alice_key, "alice.token");
    let out = gated.create(&alice, Some(&alice_token));
    let wallet: Value = serde_json::from_str(out.ok().trim()).unwrap();
    let wallet_id = wallet["wallet_id"].as_str().unwrap();
    gated
        .deployment
        .cosigner([
            "--home",
            p(&alice),
            "sign",
            "--wallet",
            wallet_id,
            "--message",
            &"ab".repeat(32),
            "--json",
        ])
        .ok();
}
