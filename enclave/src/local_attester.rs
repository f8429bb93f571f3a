//! `cosigner-enclave local-attester init|attest|show`.
//!
//! PINs come from a file (`--pin-file`) or the environment (`COSIGNER_PKCS11_PIN`,
//! `COSIGNER_PKCS11_SO_PIN`), never from the command line where `ps` would show them.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context, bail};
use clap::Subcommand;
use cosigner_attestation::local::{self, Lifetimes, LocalAttester};
use cosigner_attestation::{AttestRequest, Attester};
use cosigner_kms::{Pin, Token};

/// Environment variable holding the token's user PIN when `--pin-file` is not given.
const PIN_ENV: &str = "COSIGNER_PKCS11_PIN";
/// Environment variable holding the token's security-officer PIN when `--so-pin-file` is not given.
const SO_PIN_ENV: &str = "COSIGNER_PKCS11_SO_PIN";

/// Local attester subcommands.
#[derive(Debug, Subcommand)]
pub enum LocalAttesterCommand {
    /// Initialise a new PKCS#11 token, generate the operator root and attestation keys in it, and
    /// write `attester.toml`, `root.pem` (pin this) and `attester.pem` into DIR.
    Init {
        /// Directory for the attester's public files (created if missing).
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Label of the token to create.
        #[arg(long, value_name = "LABEL", default_value = "cosigner-attester")]
        token_label: String,
        /// The PKCS#11 module.
        #[arg(long, value_name = "PATH", env = "COSIGNER_PKCS11_MODULE", default_value = cosigner_kms::DEFAULT_SOFTHSM_MODULE)]
        module: PathBuf,
        /// File holding the user PIN to set (default: $COSIGNER_PKCS11_PIN).
        #[arg(long, value_name = "FILE")]
        pin_file: Option<PathBuf>,
        /// File holding the security-officer PIN to set (default: $COSIGNER_PKCS11_SO_PIN).
        #[arg(long, value_name = "FILE")]
        so_pin_file: Option<PathBuf>,
        /// Lifetime of the attestation key's certificate, in days.
        #[arg(long, value_name = "DAYS", default_value_t = 365, value_parser = clap::value_parser!(u64).range(1..=3650))]
        leaf_days: u64,
    },
    /// Produce a fresh attestation document.
    Attest {
        /// The attester's directory (from `init`).
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// File holding the token's user PIN (default: $COSIGNER_PKCS11_PIN).
        #[arg(long, value_name = "FILE")]
        pin_file: Option<PathBuf>,
        /// Nonce to bind (at most 512 bytes).
        #[arg(long, value_name = "HEX", value_parser = parse_hex)]
        nonce: Option<Hex>,
        /// User data to bind (at most 512 bytes).
        #[arg(long, value_name = "HEX", value_parser = parse_hex)]
        user_data: Option<Hex>,
        /// Public key to bind (1 to 1024 bytes).
        #[arg(long, value_name = "HEX", value_parser = parse_hex)]
        public_key: Option<Hex>,
        /// Where to write the document (COSE_Sign1 bytes).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}

/// A byte string given in hex (a newtype, so clap takes it as one value, not a list of bytes).
#[derive(Debug, Clone)]
pub struct Hex(Vec<u8>);

fn parse_hex(s: &str) -> Result<Hex, String> {
    hex::decode(s).map(Hex).map_err(|e| format!("not hex: {e}"))
}

fn pin(file: Option<&Path>, env: &str) -> anyhow::Result<Pin> {
    Ok(match file {
        Some(path) => Pin::from_file(path)?,
        None => Pin::from_env(env).with_context(|| format!("give a PIN file or set {env}"))?,
    })
}

/// Runs a local attester subcommand.
pub fn run(cmd: LocalAttesterCommand) -> anyhow::Result<()> {
    match cmd {
        LocalAttesterCommand::Init {
            dir,
            token_label,
            module,
            pin_file,
            so_pin_file,
            leaf_days,
        } => {
            if dir.join(local::CONFIG_FILE).exists() {
                bail!("{} already holds an attester", dir.display());
            }
            let user_pin = pin(pin_file.as_deref(), PIN_ENV)?;
            let so_pin = pin(so_pin_file.as_deref(), SO_PIN_ENV)?;
            let token = Token::init(&module, &token_label, &so_pin, &user_pin)?;
            let lifetimes = Lifetimes {
                leaf: std::time::Duration::from_secs(leaf_days * 24 * 60 * 60),
                ..Lifetimes::default()
            };
            let made = local::provision(&dir, &module, &token, SystemTime::now(), lifetimes)?;
            println!(
                "{}",
                serde_json::json!({
                    "dir": dir,
                    "token_label": made.config.token_label,
                    "module_id": made.config.module_id,
                    "root": made.root_path,
                    "root_sha256": made.root.sha256_fingerprint(),
                })
            );
            Ok(())
        }
        LocalAttesterCommand::Attest {
            dir,
            pin_file,
            nonce,
            user_data,
            public_key,
            out,
        } => {
            let pin = pin(pin_file.as_deref(), PIN_ENV)?;
            let attester = LocalAttester::load(&dir, &pin)?;
            let request = AttestRequest {
                nonce: nonce.map(|h| h.0),
                user_data: user_data.map(|h| h.0),
                public_key: public_key.map(|h| h.0),
            };
            let document = attester.attest(&request)?;
            std::fs::write(&out, &document)
                .with_context(|| format!("cannot write {}", out.display()))?;
            Ok(())
        }
    }
}
