//! `cosigner wallet create|list|show` and `cosigner sign`.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use cosigner_client::address::Network;
use cosigner_client::home::{Home, WalletFile};
use cosigner_client::session::Session;
use cosigner_client::trust::Trust;
use cosigner_client::wallet;
use cosigner_protocol::wire::WalletId;
use serde_json::json;

use super::Globals;
use super::attestation::emit;

/// Wallet subcommands.
#[derive(Debug, Subcommand)]
pub enum WalletCommand {
    /// Create a 2-of-3 wallet by DKG among this device, the provider and the recovery cosigner.
    Create {
        /// Print one JSON line.
        #[arg(long)]
        json: bool,
    },
    /// List this device's wallets.
    List {
        /// Print one JSON line.
        #[arg(long)]
        json: bool,
    },
    /// Show one wallet (and, with a provider configured, the provider's view of it).
    Show {
        /// The wallet id (32 hex digits).
        #[arg(long, value_name = "ID")]
        wallet: String,
        /// Print one JSON line.
        #[arg(long)]
        json: bool,
    },
}

/// `cosigner sign`.
#[derive(Debug, Args)]
pub struct SignArgs {
    /// The wallet id (32 hex digits).
    #[arg(long, value_name = "ID")]
    wallet: String,
    /// The 32-byte message (sighash), 64 hex digits.
    #[arg(long, value_name = "HEX32")]
    message: String,
    /// Print one JSON line.
    #[arg(long)]
    json: bool,
}

fn home(g: &Globals) -> anyhow::Result<Home> {
    let dir: PathBuf = g
        .home
        .clone()
        .context("give --home DIR (or set COSIGNER_HOME)")?;
    Ok(Home::open(&dir)?)
}

fn trust(g: &Globals) -> anyhow::Result<Trust> {
    let path = g
        .trust
        .clone()
        .context("give --trust FILE (or set COSIGNER_TRUST)")?;
    Ok(Trust::load(&path)?)
}

fn connect(addr: Option<&String>, flag: &str, env: &str, trust: &Trust) -> anyhow::Result<Session> {
    let addr = addr.with_context(|| format!("give --{flag} ADDR (or set {env})"))?;
    Ok(Session::connect(addr, trust)?)
}

fn wallet_id(s: &str) -> anyhow::Result<WalletId> {
    WalletId::from_hex(s).map_err(|_| anyhow::anyhow!("--wallet {s:?}: expected 32 hex digits"))
}

fn wallet_json(w: &WalletFile) -> serde_json::Value {
    json!({
        "wallet_id": w.wallet_id,
        "group_public_key": w.group_public_key,
        "address": w.address,
        "network": w.network,
        "epoch": w.epoch,
        "min_signers": w.min_signers,
        "parties": w.parties,
    })
}

/// Runs a wallet subcommand.
pub fn run(g: &Globals, cmd: WalletCommand) -> anyhow::Result<()> {
    match cmd {
        WalletCommand::Create { json } => {
            let network: Network = g.network.parse()?;
            let home = home(g)?;
            let trust = trust(g)?;
            let mut provider =
                connect(g.provider.as_ref(), "provider", "COSIGNER_PROVIDER", &trust)?;
            let mut recovery =
                connect(g.recovery.as_ref(), "recovery", "COSIGNER_RECOVERY", &trust)?;
            let w = wallet::create(&home, &mut provider, &mut recovery, network)?;
            if json {
                emit(
                    &json!({
                        "wallet_id": w.wallet_id,
                        "group_public_key": w.group_public_key,
                        "address": w.address,
                    })
                    .to_string(),
                )
            } else {
                emit(&format!(
                    "wallet {}\naddress {}\ngroup key (x-only) {}",
                    w.wallet_id, w.address, w.group_public_key
                ))
            }
        }
        WalletCommand::List { json } => {
            let wallets = home(g)?.wallets()?;
            if json {
                let list: Vec<_> = wallets.iter().map(wallet_json).collect();
                emit(&serde_json::Value::Array(list).to_string())
            } else {
                for w in &wallets {
                    emit(&format!("{} {}", w.wallet_id, w.address))?;
                }
                Ok(())
            }
        }
        WalletCommand::Show { wallet, json } => {
            let id = wallet_id(&wallet)?;
            let w = home(g)?.wallet(&id)?;
            let mut out = wallet_json(&w);
            if let Some(addr) = &g.provider {
                let trust = trust(g)?;
                let mut provider = Session::connect(addr, &trust)?;
                let view = wallet::provider_view(&mut provider, id)?;
                if let Some(obj) = out.as_object_mut() {
                    obj.insert(
                        "provider".into(),
                        json!({ "party": view.party, "epoch": view.epoch }),
                    );
                }
            }
            if json {
                emit(&out.to_string())
            } else {
                emit(&serde_json::to_string_pretty(&out)?)
            }
        }
    }
}

/// `cosigner sign`.
pub fn sign(g: &Globals, args: SignArgs) -> anyhow::Result<()> {
    let id = wallet_id(&args.wallet)?;
    let message: [u8; 32] = hex::decode(&args.message)
        .ok()
        .and_then(|m| m.try_into().ok())
        .ok_or_else(|| anyhow::anyhow!("--message: expected 64 hex digits (32 bytes)"))?;
    let home = home(g)?;
    home.wallet(&id)?; // unknown wallet: fail before any network traffic
    let trust = trust(g)?;
    let mut provider = connect(g.provider.as_ref(), "provider", "COSIGNER_PROVIDER", &trust)?;
    let signature = wallet::sign(&home, &mut provider, id, &message)?;
    if args.json {
        emit(&json!({ "signature": hex::encode(signature) }).to_string())
    } else {
        emit(&hex::encode(signature))
    }
}

/// `cosigner status`: one JSON line with each cosigner's verified attestation.
pub fn status(g: &Globals) -> anyhow::Result<()> {
    let trust = trust(g)?;
    let mut out = serde_json::Map::new();
    for (name, addr) in [("provider", &g.provider), ("recovery", &g.recovery)] {
        let Some(addr) = addr else { continue };
        let session = Session::connect(addr, &trust)?;
        let doc = &session.attestation().doc;
        out.insert(
            name.into(),
            json!({
                "address": addr,
                "module_id": doc.module_id,
                "timestamp": doc.timestamp,
                "pcr0": doc.pcrs.get(&0).map(hex::encode),
            }),
        );
    }
    if out.is_empty() {
        anyhow::bail!(
            "no cosigner configured: give --provider/--recovery (or COSIGNER_PROVIDER/COSIGNER_RECOVERY)"
        );
    }
    emit(&serde_json::Value::Object(out).to_string())
}
