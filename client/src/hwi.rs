//! Bitcoin Core's external signer interface (`bitcoind -signer=cosigner-hwi`): the HWI command
//! line that Core runs to list signers, import their descriptors, show an address and sign a
//! PSBT (Bitcoin Core's doc/external-signer.md), answered by a cosigner home.
//!
//! Each personal Bitcoin wallet of the home is one "device", named by its extended key's
//! fingerprint (`cosigner_protocol::hd`): `enumerate` lists them, `--fingerprint` picks one.
//! Core calls:
//!
//! ```text
//! cosigner-hwi enumerate                                              -> [{"fingerprint", ...}]
//! cosigner-hwi --fingerprint FP --chain C getdescriptors --account 0  -> {"receive", "internal"}
//! cosigner-hwi --fingerprint FP --chain C displayaddress --desc DESC  -> {"address"}
//! cosigner-hwi --stdin --fingerprint FP --chain C   (stdin: "signtx <base64 PSBT>") -> {"psbt"}
//! ```
//!
//! Signing goes through the provider as `cosigner sign --psbt` does (its policy applies; each
//! input signed with its child's key); the answer is the PSBT with every input's
//! `PSBT_IN_TAP_KEY_SIG`, which Core finalizes. This module holds the answers; the binary
//! (`src/bin/cosigner-hwi.rs`) reads the command line and the environment.

use cosigner_protocol::psbt::{self as btc};
use cosigner_protocol::wire::WalletId;
use serde_json::{Value, json};

use crate::address::{Network, p2tr_address, wallet_xpub};
use crate::courier::Courier;
use crate::error::{ClientError, Result};
use crate::home::{Home, WalletFile};

/// The `model` every signer reports.
pub const MODEL: &str = "cosigner";

/// The wallets this home can sign for as an external signer: personal Bitcoin wallets (a DAO
/// wallet signs through its members, an Ethereum wallet is not Bitcoin), all of them or the one
/// `only` names.
pub fn signers(home: &Home, only: Option<&WalletId>) -> Result<Vec<WalletFile>> {
    Ok(home
        .wallets()?
        .into_iter()
        .filter(|w| w.dao.is_none())
        .filter(|w| only.is_none_or(|id| w.wallet_id == *id))
        .collect())
}

/// `enumerate`: one entry per signer, HWI's fields.
pub fn enumerate(home: &Home, only: Option<&WalletId>) -> Result<Value> {
    let entries = signers(home, only)?
        .iter()
        .map(|w| {
            Ok(json!({
                "type": MODEL,
                "model": MODEL,
                "label": w.wallet_id.to_hex(),
                "fingerprint": hex::encode(wallet_xpub(w)?.fingerprint()),
                "needs_pin_sent": false,
                "needs_passphrase_sent": false,
            }))
        })
        .collect::<Result<Vec<Value>>>()?;
    Ok(Value::Array(entries))
}

/// The signer `fingerprint` names, checked against the network Core runs on (`--chain`: main,
/// test, testnet4, signet, regtest; every Core with external signers passes it).
pub fn select(
    home: &Home,
    only: Option<&WalletId>,
    fingerprint: &str,
    chain: &str,
) -> Result<WalletFile> {
    let mut found = Vec::new();
    for w in signers(home, only)? {
        if hex::encode(wallet_xpub(&w)?.fingerprint()) == fingerprint.to_ascii_lowercase() {
            found.push(w);
        }
    }
    if found.len() > 1 {
        return Err(ClientError::Input(format!(
            "{} wallets here have fingerprint {fingerprint}: choose one with COSIGNER_HWI_WALLET",
            found.len()
        )));
    }
    let wallet = found.pop().ok_or_else(|| {
        ClientError::Input(format!(
            "no wallet here has fingerprint {fingerprint:?} (cosigner-hwi enumerate lists them)"
        ))
    })?;
    let expected = match chain {
        "main" => Network::Bitcoin,
        "test" | "testnet4" | "signet" | "testnet" => Network::Testnet,
        "regtest" => Network::Regtest,
        other => {
            return Err(ClientError::Input(format!(
                "--chain {other:?}: main, test, testnet4, signet or regtest"
            )));
        }
    };
    if expected != wallet.network {
        return Err(ClientError::Input(format!(
            "wallet {} is on {}, Bitcoin Core runs on {chain}",
            wallet.wallet_id,
            wallet.network.name()
        )));
    }
    Ok(wallet)
}

/// `getdescriptors --account N`: the wallet's receive and change descriptors. A cosigner wallet
/// has one account, 0 (its children are non-hardened: there is no account level to derive).
pub fn descriptors(wallet: &WalletFile, account: u32) -> Result<Value> {
    if account != 0 {
        return Err(ClientError::Input(format!(
            "--account {account}: a cosigner wallet has one account, 0"
        )));
    }
    let d = wallet_xpub(wallet)?.descriptors();
    Ok(json!({ "receive": [d.receive], "internal": [d.change] }))
}

/// `displayaddress --desc DESC`: the address of the child the descriptor names, after checking
/// that it names this wallet's key (its fingerprint, and its extended key or the child's key).
pub fn display_address(wallet: &WalletFile, descriptor: &str) -> Result<Value> {
    let child = wallet_xpub(wallet)?.child_of_descriptor(descriptor)?;
    let address = p2tr_address(&child.output_key, wallet.network)?;
    Ok(json!({ "address": address }))
}

/// `signtx <psbt>`: the PSBT (base64) signed by this device and the provider, every input's
/// `PSBT_IN_TAP_KEY_SIG` set (base64). The provider refuses what the wallet's policy does not
/// allow; an input that is not the wallet's is refused before anything is sent.
pub fn sign(
    home: &Home,
    provider: &mut dyn Courier,
    wallet: &WalletFile,
    psbt_base64: &str,
) -> Result<Value> {
    let psbt = btc::decode_psbt_file(psbt_base64.as_bytes())?;
    let signed = crate::psbt_sign::sign_psbt(home, provider, wallet.wallet_id, &psbt)?;
    Ok(json!({ "psbt": btc::to_base64(&signed.psbt) }))
}
