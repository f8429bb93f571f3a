//! The `enrollment` subcommand of `cosigner-parent`: the operator's tools for a cosigner run with
//! `[enrollment] mode = "token"` (docs/deployment.md, "Wallet enrollment").
//!
//! * `keygen --out FILE` makes the operator key (P-256, PKCS#8 PEM, mode 0600) and prints its
//!   public half, which goes into the enclave's `[enrollment] operator_key`;
//! * `issue --operator-key FILE --device-key HEX --expires-in-days N` signs a token that lets
//!   that one device key create wallets until the expiry.
//!
//! They live in the parent's binary because that is the operator's tool on the host; nothing here
//! runs in the relay. The operator key is a secret: it is only ever read from a file (never from
//! the command line, where other users' `ps` sees it), and is best kept off the parent instance.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Subcommand;
use cosigner_protocol::enrollment::EnrollmentToken;
use p256::ecdsa::SigningKey;
use p256::elliptic_curve::zeroize::Zeroizing;

/// Longest validity `issue` accepts: ten years. A token cannot be revoked short of changing the
/// operator key, so it should not outlive the operator's plans for it.
pub const MAX_DAYS: u64 = 3650;

/// Largest operator key file read (a P-256 PKCS#8 PEM is about 240 bytes).
const MAX_KEY_FILE: u64 = 16 * 1024;

const MS_PER_DAY: u64 = 86_400_000;

/// `cosigner-parent enrollment …`
#[derive(Debug, Subcommand)]
pub enum EnrollmentCommand {
    /// Make a new operator key (P-256, PKCS#8 PEM, mode 0600; an existing file is never
    /// overwritten) and print its public key, the enclave's `[enrollment] operator_key`.
    Keygen {
        /// Where to write the private key.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Print `{"operator_key":"<hex>"}` rather than the bare hex.
        #[arg(long)]
        json: bool,
    },
    /// Sign an enrollment token letting one device key create wallets until it expires; prints
    /// the token text (`cosigner-enrollment-v1:…`) unless --out is given.
    Issue {
        /// The operator key file from `keygen` (a secret: read from the file, never given inline).
        #[arg(long, value_name = "FILE")]
        operator_key: PathBuf,
        /// The device's P-256 public key, hex, as `cosigner device-key` prints it.
        #[arg(long, value_name = "HEX")]
        device_key: String,
        /// Days from now until the token expires (1 to 3650).
        // Hyphen values taken, so that "-3" gets this flag's message rather than a usage error.
        #[arg(long, value_name = "N", allow_hyphen_values = true)]
        expires_in_days: String,
        /// Write the token text to this file (replaced if it exists: a token is not a secret).
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Print `{"token","device_key","expires_ms"}` as one JSON line.
        #[arg(long)]
        json: bool,
    },
}

/// Runs an `enrollment` subcommand; errors are one line.
pub fn run(command: EnrollmentCommand) -> anyhow::Result<()> {
    match command {
        EnrollmentCommand::Keygen { out, json } => {
            let key = SigningKey::random(&mut rand_core::OsRng);
            write_operator_key(&out, &key)?;
            let public = hex::encode(EnrollmentToken::operator_public_key(&key));
            if json {
                emit(&serde_json::json!({ "operator_key": public }).to_string())
            } else {
                emit(&public)
            }
        }
        EnrollmentCommand::Issue {
            operator_key,
            device_key,
            expires_in_days,
            out,
            json,
        } => {
            let days = parse_days(&expires_in_days)?;
            let device_key = parse_device_key(&device_key)?;
            let operator = read_operator_key(&operator_key)?;
            let expires_ms = now_ms()?
                .checked_add(days * MS_PER_DAY)
                .context("expiry overflows")?;
            let token = EnrollmentToken::issue(&operator, &device_key, expires_ms)
                .map_err(anyhow::Error::msg)?;
            let text = token.to_text();
            if let Some(path) = &out {
                std::fs::write(path, format!("{text}\n"))
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
            if json {
                emit(
                    &serde_json::json!({
                        "token": text,
                        "device_key": hex::encode(&token.device_key),
                        "expires_ms": token.expires_ms,
                    })
                    .to_string(),
                )
            } else if out.is_none() {
                emit(&text)
            } else {
                Ok(())
            }
        }
    }
}

fn parse_days(text: &str) -> anyhow::Result<u64> {
    match text.trim().parse::<u64>() {
        Ok(days) if (1..=MAX_DAYS).contains(&days) => Ok(days),
        _ => anyhow::bail!(
            "--expires-in-days {text:?}: expected a whole number of days, 1 to {MAX_DAYS}"
        ),
    }
}

fn parse_device_key(text: &str) -> anyhow::Result<Vec<u8>> {
    let bytes = hex::decode(text.trim())
        .map_err(|e| anyhow::anyhow!("--device-key {text:?} is not hex: {e}"))?;
    // The same check `issue` makes, here to name the flag.
    cosigner_protocol::auth::normalise_public_key(&bytes).map_err(|_| {
        anyhow::anyhow!(
            "--device-key {text:?} is not a P-256 public key (SEC1 hex, as `cosigner device-key` \
             prints it)"
        )
    })
}

fn now_ms() -> anyhow::Result<u64> {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("the clock is before 1970")?;
    u64::try_from(since.as_millis()).context("the clock is past the year 500 million")
}

fn emit(line: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}")
        .and_then(|()| stdout.flush())
        .context("cannot write to stdout")
}

/// Writes `key` as PKCS#8 PEM to a new file at `path`, mode 0600 whatever the umask.
fn write_operator_key(path: &Path, key: &SigningKey) -> anyhow::Result<()> {
    use p256::pkcs8::EncodePrivateKey;
    let pem = key
        .to_pkcs8_pem(p256::pkcs8::LineEnding::LF)
        .map_err(|e| anyhow::anyhow!("cannot encode the operator key: {e}"))?;
    // create_new is O_CREAT|O_EXCL: an existing file, or a symbolic link planted at the name,
    // is refused rather than overwritten or followed.
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => anyhow::anyhow!(
                "{} already exists: refusing to overwrite a key",
                path.display()
            ),
            _ => anyhow::anyhow!("cannot create {}: {e}", path.display()),
        })?;
    let written = file
        // open(2)'s mode is filtered by the umask: set it again on the descriptor.
        .set_permissions(std::fs::Permissions::from_mode(0o600))
        .and_then(|()| file.write_all(pem.as_bytes()))
        .and_then(|()| file.sync_all());
    if let Err(e) = written {
        // No partial key left behind: a rerun would refuse to overwrite it.
        let _ = std::fs::remove_file(path);
        anyhow::bail!("cannot write {}: {e}", path.display());
    }
    Ok(())
}

/// Reads an operator key written by `keygen`.
fn read_operator_key(path: &Path) -> anyhow::Result<SigningKey> {
    use p256::pkcs8::DecodePrivateKey;
    let meta = std::fs::metadata(path)
        .map_err(|e| anyhow::anyhow!("--operator-key {}: {e}", path.display()))?;
    if !meta.is_file() || meta.len() > MAX_KEY_FILE {
        anyhow::bail!(
            "--operator-key {}: not a key file (expected the PEM `cosigner-parent enrollment \
             keygen` wrote)",
            path.display()
        );
    }
    let pem = Zeroizing::new(
        std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("--operator-key {}: {e}", path.display()))?,
    );
    SigningKey::from_pkcs8_pem(&pem).map_err(|e| {
        anyhow::anyhow!(
            "--operator-key {}: not a P-256 PKCS#8 PEM key: {e}",
            path.display()
        )
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn days_and_device_keys_are_checked() {
        assert_eq!(parse_days("30").unwrap(), 30);
        assert_eq!(parse_days(" 1\n").unwrap(), 1);
        for bad in ["0", "-1", "3651", "1.5", "", "ten"] {
            assert!(parse_days(bad).is_err(), "{bad}");
        }
        let key = SigningKey::random(&mut rand_core::OsRng);
        let compressed = EnrollmentToken::operator_public_key(&key);
        let uncompressed = key.verifying_key().to_encoded_point(false);
        assert_eq!(
            parse_device_key(&hex::encode(uncompressed.as_bytes())).unwrap(),
            compressed
        );
        for bad in ["", "zz", "02", &"ff".repeat(33)] {
            assert!(parse_device_key(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn keys_round_trip_private_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("operator.pem");
        let key = SigningKey::random(&mut rand_core::OsRng);
        write_operator_key(&path, &key).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(read_operator_key(&path).unwrap(), key);
        let other = SigningKey::random(&mut rand_core::OsRng);
        let e = write_operator_key(&path, &other).unwrap_err().to_string();
        assert!(e.contains("refusing to overwrite"), "{e}");
        assert_eq!(read_operator_key(&path).unwrap(), key);
    }
}
