//! `cosigner status`: every configured cosigner, reachable or not, attested or not (and why not).
//!
//! The report is one JSON object keyed by cosigner (`provider`, `recovery`), each with
//! `address`, `configured`, `reachable`, `attested`, `error` (one line, or null) and, once
//! attested, what its verified document says: `module_id`, `timestamp` (ms), `pcr0`,
//! `audit_key`. It is printed with `--json`, and also without it when stdout is not a terminal
//! (scripts written before `--json` read it); a terminal gets one line per cosigner. The exit
//! code is 1 if any configured cosigner is unreachable or refused, after the report.

use clap::Args;
use cosigner_client::ClientError;
use cosigner_client::session::Session;
use serde_json::{Value, json};

use super::Globals;
use super::attestation::emit;
use super::show::at;
use super::wallet::trust;

/// `cosigner status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print one JSON object (also what a pipe gets without this flag).
    #[arg(long)]
    json: bool,
}

/// One cosigner's line of the report.
fn probe(addr: Option<&String>, trust: &cosigner_client::trust::Trust) -> Value {
    let Some(addr) = addr else {
        return json!({ "address": null, "configured": false, "reachable": false,
                       "attested": false, "error": null });
    };
    match Session::connect(addr, trust) {
        Ok(session) => {
            let doc = &session.attestation().doc;
            json!({
                "address": addr,
                "configured": true,
                "reachable": true,
                "attested": true,
                "error": null,
                "module_id": doc.module_id,
                "timestamp": doc.timestamp,
                "pcr0": doc.pcrs.get(&0).map(hex::encode),
                "pcr1": doc.pcrs.get(&1).map(hex::encode),
                "pcr2": doc.pcrs.get(&2).map(hex::encode),
                // QEMU's unsigned document accepted under `emulated_nsm = true`: proves nothing.
                "emulated_nsm": cosigner_attestation::parse_emulated_unsigned(
                    session.raw_attestation()
                ).is_ok(),
                "audit_key": doc.public_key.as_ref().map(hex::encode),
            })
        }
        Err(e) => json!({
            "address": addr,
            "configured": true,
            // A connection failure is the only one before the cosigner answered.
            "reachable": !matches!(e, ClientError::Connection { .. }),
            "attested": false,
            "error": cosigner_client::one_line(&e.to_string()),
        }),
    }
}

/// The terminal's line for one cosigner.
fn line(name: &str, v: &Value) -> String {
    let addr = at(v, "address").as_str().unwrap_or("-");
    if at(v, "configured") != true {
        return format!(
            "{name}: not configured (--{name} ADDR or COSIGNER_{})",
            name.to_uppercase()
        );
    }
    if at(v, "attested") == true {
        let short = |key: &str| {
            v[key].as_str().map_or_else(
                || "none".to_owned(),
                |s| s.chars().take(16).collect::<String>() + "…",
            )
        };
        return format!(
            "{name} {addr}: attested (module {}, PCR0 {}, audit key {})",
            at(v, "module_id").as_str().unwrap_or("?"),
            short("pcr0"),
            short("audit_key"),
        );
    }
    let state = if at(v, "reachable") == true {
        "reachable, NOT attested"
    } else {
        "unreachable"
    };
    format!(
        "{name} {addr}: {state}: {}",
        at(v, "error").as_str().unwrap_or("")
    )
}

/// `cosigner status`.
pub fn status(g: &Globals, args: &StatusArgs) -> anyhow::Result<()> {
    if g.provider.is_none() && g.recovery.is_none() {
        anyhow::bail!(
            "no cosigner configured: give --provider/--recovery (or COSIGNER_PROVIDER/COSIGNER_RECOVERY)"
        );
    }
    let trust = trust(g)?;
    let cosigners = [("provider", &g.provider), ("recovery", &g.recovery)];
    let mut report = serde_json::Map::new();
    for (name, addr) in cosigners {
        report.insert(name.into(), probe(addr.as_ref(), &trust));
    }
    use std::io::IsTerminal;
    if args.json || !std::io::stdout().is_terminal() {
        emit(&Value::Object(report.clone()).to_string())?;
    } else {
        for (name, v) in &report {
            emit(&line(name, v))?;
        }
    }
    let failed: Vec<String> = report
        .iter()
        .filter(|(_, v)| at(v, "configured") == true && at(v, "attested") != true)
        .map(|(name, v)| format!("{name}: {}", at(v, "error").as_str().unwrap_or("refused")))
        .collect();
    if failed.is_empty() {
        return Ok(());
    }
    anyhow::bail!("{}", failed.join("; "))
}
