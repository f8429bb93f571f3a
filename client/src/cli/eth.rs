//! `cosigner wallet create --chain ethereum` and `cosigner sign --eth-tx` (docs/ethereum.md).

use std::path::{Path, PathBuf};

use cosigner_client::eth;
use cosigner_client::home::{EthWalletFile, Home};
use cosigner_eth::TxRequest;
use cosigner_protocol::wire::WalletId;
use serde_json::json;

use super::Globals;
use super::attestation::emit;
use super::wallet::{
    connect_provider, cosigners, home, keep_recovery_key, read_file, recovery_key_path, trust,
};

/// The chain a wallet is created for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Chain {
    /// Bitcoin Taproot (FROST, BIP-340).
    #[default]
    Bitcoin,
    /// Ethereum and EVM chains (threshold ECDSA, DKLs23).
    Ethereum,
}

/// The largest `--eth-tx` file read: a transaction request is a few hundred bytes of JSON plus
/// its call data.
const MAX_TX_FILE: u64 = 1 << 20;

/// `cosigner wallet create --chain ethereum`.
pub(super) fn create(
    g: &Globals,
    recovery_key_out: Option<PathBuf>,
    enrollment: Option<Vec<u8>>,
    policy: Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    let home = home(g)?;
    let trust = trust(g)?;
    let (mut provider, mut recovery) = cosigners(g, &trust)?;
    let out = recovery_key_path(g, recovery_key_out.as_deref())?;
    let created = eth::create(
        &home,
        &mut provider,
        &mut recovery,
        &out,
        enrollment.as_deref(),
        policy.as_deref(),
    )?;
    let w = created.wallet;
    // This device's copy, for `wallet show` offline; the cosigners hold the one in force.
    home.save_local_policy(&w.wallet_id, policy.as_deref())?;
    if recovery_key_out.is_none()
        && let Some(path) = &created.recovery_key_path
    {
        keep_recovery_key(path, &w.wallet_id)?;
    }
    if json {
        emit(&json!({ "wallet_id": w.wallet_id.to_hex(), "address": w.address, "chain": "ethereum" }).to_string())
    } else {
        emit(&format!("wallet {}\naddress {}", w.wallet_id, w.address))
    }
}

/// `cosigner sign --eth-tx FILE`: the transaction (an `eth_signTransaction` object) signed by
/// this device and the provider.
pub(super) fn sign(
    g: &Globals,
    home: &Home,
    id: WalletId,
    path: &Path,
    (request_out, timeout): (Option<&Path>, u64),
    json: bool,
) -> anyhow::Result<()> {
    let w = home.eth_wallet(&id)?; // unknown wallet: fail before any network traffic
    let request = read_request(path)?;
    eth::check_from(&w, &request)
        .map_err(|e| anyhow::anyhow!("transaction file {}: {e}", path.display()))?;
    show_tx(&w, &request);
    if w.dao.is_some() {
        return super::dao::sign_treasury(g, home, &w, &request, request_out, timeout, json);
    }
    if request_out.is_some() {
        anyhow::bail!("--request-out is for DAO wallets; wallet {id} is a personal wallet");
    }
    let trust = trust(g)?;
    let mut provider = connect_provider(g, &trust)?;
    let signed = eth::sign(home, &mut provider, id, request)?;
    let tx_hash = format!("0x{}", hex::encode(signed.tx_hash));
    let raw_tx = format!("0x{}", hex::encode(&signed.raw_tx));
    if json {
        // The receipt proves which measured code co-signed this transaction (`cosigner receipt
        // verify`).
        emit(&json!({ "tx_hash": tx_hash, "raw_tx": raw_tx, "from": signed.from, "receipt": signed.receipt }).to_string())
    } else {
        emit(&format!("{tx_hash}\n{raw_tx}"))
    }
}

/// `cosigner refresh` of an Ethereum wallet: new shares at all three parties, the same address.
pub(super) fn refresh(g: &Globals, home: &Home, id: WalletId, json: bool) -> anyhow::Result<()> {
    home.eth_wallet(&id)?; // unknown wallet: fail before any network traffic
    let trust = trust(g)?;
    let (mut provider, mut recovery) = cosigners(g, &trust)?;
    let w = eth::refresh(home, &mut provider, &mut recovery, id)?;
    epoch_out(&w, json, "refreshed to epoch")
}

/// What `refresh` and `recover` print for an Ethereum wallet: the wallet at its new epoch.
pub(super) fn epoch_out(w: &EthWalletFile, json: bool, what: &str) -> anyhow::Result<()> {
    if json {
        emit(
            &json!({ "wallet_id": w.wallet_id.to_hex(), "address": w.address, "epoch": w.epoch })
                .to_string(),
        )
    } else {
        emit(&format!(
            "wallet {} ({}) {what} {}",
            w.wallet_id, w.address, w.epoch
        ))
    }
}

fn read_request(path: &Path) -> anyhow::Result<TxRequest> {
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    if size > MAX_TX_FILE {
        anyhow::bail!(
            "transaction file {}: larger than {MAX_TX_FILE} bytes",
            path.display()
        );
    }
    let bytes = read_file("transaction file", path)?;
    let text = String::from_utf8(bytes)
        .map_err(|_| anyhow::anyhow!("transaction file {}: not UTF-8 text", path.display()))?;
    TxRequest::from_json(&text)
        .map_err(|e| anyhow::anyhow!("transaction file {}: {e}", path.display()))
}

/// What this device reads in the transaction, on stderr before it signs.
fn show_tx(w: &EthWalletFile, request: &TxRequest) {
    let tx = &request.tx;
    let to = tx.to().map_or("a new contract".to_owned(), |a| {
        cosigner_eth::checksummed(&a)
    });
    eprintln!(
        "transaction from {} on chain {}, nonce {}: {} wei to {to}, fee at most {} wei",
        w.address,
        tx.chain_id(),
        tx.nonce(),
        tx.value(),
        tx.max_fee()
    );
    match cosigner_eth::Valuation::of(tx).map(|v| v.call) {
        Ok(cosigner_eth::Call::Erc20 { token, op }) => {
            eprintln!(
                "  calls token {}: {op:?}",
                cosigner_eth::checksummed(&token)
            );
        }
        Ok(cosigner_eth::Call::Unknown { selector: Some(s) }) => {
            eprintln!("  calls function 0x{} of the recipient", hex::encode(s));
        }
        Ok(_) => {}
        Err(e) => eprintln!("  {e}"),
    }
}

/// One Ethereum wallet as `wallet list --json` shows it.
pub(super) fn wallet_json(w: &EthWalletFile) -> serde_json::Value {
    json!({
        "wallet_id": w.wallet_id.to_hex(),
        "chain": "ethereum",
        "address": w.address,
        "public_key": w.public_key,
        "epoch": w.epoch,
        "min_signers": w.min_signers,
        "parties": w.parties,
    })
}

/// `cosigner wallet show` of an Ethereum wallet: this device's record, and the provider's view
/// (its party, epoch, and whether it holds the same key) when it answers.
pub(super) fn show(g: &Globals, home: &Home, id: WalletId, json: bool) -> anyhow::Result<()> {
    let w = home.eth_wallet(&id)?;
    let mut out = match wallet_json(&w) {
        serde_json::Value::Object(map) => map,
        _ => serde_json::Map::new(),
    };
    let view = trust(g)
        .and_then(|t| connect_provider(g, &t))
        .map_err(|e| e.to_string())
        .and_then(|mut s| {
            cosigner_client::wallet::provider_view(&mut s, id).map_err(|e| e.to_string())
        });
    match view {
        Ok(info) => {
            let same = info.group_public_key.as_slice() == w.public_key_bytes()?.as_slice();
            out.insert("source".into(), json!("cosigner"));
            out.insert(
                "provider".into(),
                json!({ "party": info.party, "epoch": info.epoch, "same_key": same }),
            );
        }
        Err(reason) => {
            out.insert("source".into(), json!("local"));
            out.insert("offline_reason".into(), json!(reason));
        }
    }
    // The policy this device registered (or last set); an empty text is a policy known to be
    // none. The cosigners hold the one in force.
    let policy = home.local_policy(&id)?;
    out.insert("policy_known".into(), json!(policy.is_some()));
    out.insert(
        "policy".into(),
        match policy {
            Some(text) if !text.is_empty() => json!({
                "text": text,
                "origin": "this device (the policy it registered or last set)",
            }),
            _ => serde_json::Value::Null,
        },
    );
    if json {
        return emit(&serde_json::Value::Object(out).to_string());
    }
    emit(&format!(
        "wallet {} (ethereum)\naddress {}\nparties {:?}, {} to sign\n{}",
        w.wallet_id,
        w.address,
        w.parties,
        w.min_signers,
        match out.get("provider") {
            Some(p) => format!("provider: {p}"),
            None => format!(
                "offline: from local files ({})",
                out.get("offline_reason")
                    .map(ToString::to_string)
                    .unwrap_or_default()
            ),
        }
    ))
}
