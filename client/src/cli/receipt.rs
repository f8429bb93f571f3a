//! `cosigner receipt`: check a signature's receipt offline.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use cosigner_client::receipt::{Receipt, verify_receipt};
use cosigner_client::trust::Trust;
use serde_json::{Value, json};

use super::attestation::emit;

/// What `cosigner receipt` does.
#[derive(Debug, Subcommand)]
pub enum ReceiptCommand {
    /// Check a receipt (the `receipt` of `sign --json`, or that whole output) against a trust
    /// file, offline: the attestation document it carries chains to a pinned root with allowed
    /// measurements, and the audit entry is signed by the key the document binds. Prints what
    /// was signed, by which enclave, when (exit 1 and one line if it does not hold).
    Verify(VerifyArgs),
}

/// `cosigner receipt verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The receipt (JSON).
    #[arg(long, value_name = "FILE")]
    receipt: PathBuf,
    /// The trust file to check it against (pinned roots and measurements).
    #[arg(long, value_name = "FILE")]
    trust: PathBuf,
    /// Print one JSON line.
    #[arg(long)]
    json: bool,
}

/// Runs `cosigner receipt …`.
pub fn run(cmd: ReceiptCommand) -> anyhow::Result<()> {
    match cmd {
        ReceiptCommand::Verify(args) => verify(&args),
    }
}

fn verify(args: &VerifyArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.receipt).map_err(|e| {
        anyhow::anyhow!(
            "receipt file {}: {}",
            args.receipt.display(),
            cosigner_client::io_reason(&e)
        )
    })?;
    let receipt = parse(&text)
        .map_err(|e| anyhow::anyhow!("receipt file {}: {e}", args.receipt.display()))?;
    let trust = Trust::load(&args.trust)?;
    let checked = verify_receipt(&receipt, &trust)?;
    let entry = &checked.entry;
    if args.json {
        return emit(
            &json!({
                "valid": true,
                "wallet": entry.wallet_id,
                "action": entry.action,
                "message": entry.digest,
                "decision": entry.decision,
                "time_ms": entry.time_ms,
                "seq": entry.seq,
                "module_id": checked.module_id,
                "audit_key": hex::encode(&checked.key),
            })
            .to_string(),
        );
    }
    emit(&format!(
        "valid: {} of {} for wallet {} ({}), entry {} at {} ms, by enclave {}",
        entry.action,
        entry.digest,
        entry.wallet_id,
        entry.decision,
        entry.seq,
        entry.time_ms,
        checked.module_id
    ))
}

/// A receipt object, or a `sign --json` line holding one under `receipt`.
fn parse(text: &str) -> Result<Receipt, String> {
    let value: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let value = match value.get("receipt") {
        Some(inner) => inner.clone(),
        None => value,
    };
    serde_json::from_value(value).map_err(|e| format!("not a receipt: {e}"))
}
