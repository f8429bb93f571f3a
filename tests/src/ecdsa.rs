//! Threshold ECDSA keys made and used in memory through the protocol's state machines
//! (`cosigner_protocol::ecdsa`), and the independent Ethereum software that checks what they sign
//! (`tests/py/eth_evm.py`: eth-account and py-evm from PyPI).

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use cosigner_eth::{RecoverableSignature, SignedTx, UnsignedTx};
use cosigner_protocol::ecdsa::EcdsaKey;
use cosigner_protocol::ecdsa::dkg::{self, EcdsaDkgOutput, EcdsaDkgParams, RoundOutput};
use cosigner_protocol::ecdsa::sign::{self, EcdsaSignMessage};
use cosigner_protocol::id::PartyId;
use cosigner_protocol::wire::WalletId;
use rand::rngs::OsRng;

/// eth-tester's chain id (its py-evm backend's default).
pub const TESTER_CHAIN_ID: u64 = 131_277_322_940_537;

/// The line a test prints when it skips for want of the Python packages.
pub const SKIP_LINE: &str = "SKIPPED: eth-account or eth-tester[py-evm] is not installed \
    (`make deps` installs them from PyPI)";

/// True if `python3` can import eth-account and eth-tester with py-evm.
pub fn python_available() -> bool {
    Command::new("python3")
        .args(["-c", "import eth_account, eth_tester, eth"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A `threshold`-of-`n` key made by the DKG, every party's output.
pub fn dkg(wallet_id: WalletId, threshold: u16, n: u16) -> Result<Vec<EcdsaDkgOutput>> {
    let parties: Vec<PartyId> = (1..=n).map(PartyId::new).collect::<Result<_, _>>()?;
    let params = EcdsaDkgParams {
        wallet_id,
        threshold,
        parties: parties.clone(),
    };
    let mut states = Vec::new();
    let mut hellos = Vec::new();
    for party in &parties {
        let (state, hello) = dkg::start(params.clone(), *party, &mut OsRng)?;
        states.push(state);
        hellos.push(hello);
    }
    let mut round = Vec::new();
    for state in &mut states {
        round.push(state.handle_hellos(&hellos, &mut OsRng)?);
    }
    let mut confirmations = Vec::new();
    while !round.is_empty() {
        let mut next = Vec::new();
        for state in &mut states {
            match state.handle_round(&round, &mut OsRng)? {
                RoundOutput::Next(message) => next.push(message),
                RoundOutput::Confirm(confirmation) => confirmations.push(confirmation),
            }
        }
        round = next;
    }
    Ok(states
        .into_iter()
        .map(|s| s.handle_confirmations(&confirmations))
        .collect::<Result<_, _>>()?)
}

/// `hash` signed by exactly `keys` (threshold many), every signer's rounds in turn.
pub fn sign(keys: &[&EcdsaKey], hash: [u8; 32]) -> Result<RecoverableSignature> {
    let signers: Vec<PartyId> = keys.iter().map(|k| k.party()).collect();
    let mut nonce = [0u8; 32];
    rand::RngCore::fill_bytes(&mut OsRng, &mut nonce);
    let id = sign::sign_id(&WalletId([0; 16]), &signers, &nonce);
    let mut sessions = Vec::new();
    let mut messages = Vec::new();
    for key in keys {
        let (session, message) = sign::start(key, &signers, id.clone(), hash)?;
        sessions.push(session);
        messages.push(message);
    }
    let others = |all: &[EcdsaSignMessage], me: PartyId| -> Vec<EcdsaSignMessage> {
        all.iter().filter(|m| m.from != me).cloned().collect()
    };
    let mut round2 = Vec::new();
    for (session, key) in sessions.iter_mut().zip(keys) {
        round2.push(session.round2(key, &others(&messages, key.party()))?);
    }
    let mut round3 = Vec::new();
    for (session, key) in sessions.iter_mut().zip(keys) {
        round3.push(session.round3(key, &others(&round2, key.party()))?);
    }
    let mut signature = None;
    for (session, key) in sessions.into_iter().zip(keys) {
        let s = session.finish(key, &others(&round3, key.party()))?;
        if signature.is_some_and(|first| first != s) {
            bail!("signers assembled different signatures");
        }
        signature = Some(s);
    }
    let s = signature.context("no signers")?;
    Ok(RecoverableSignature {
        r: s.r,
        s: s.s,
        y_parity: s.y_odd,
    })
}

/// `tx` signed by `keys`.
pub fn sign_tx(keys: &[&EcdsaKey], tx: UnsignedTx) -> Result<SignedTx> {
    let signature = sign(keys, tx.signing_hash())?;
    Ok(tx.into_signed(&signature)?)
}

/// What `tests/py/eth_evm.py` reports.
#[derive(Debug, serde::Deserialize)]
pub struct EvmReport {
    /// The sender eth-account recovered from each transaction.
    pub senders: Vec<String>,
    /// Each transaction's receipt status (1: executed).
    pub receipts: Vec<u64>,
    /// Balances (wei, decimal) of the funded account and every recipient, by lowercase address.
    pub balances: std::collections::BTreeMap<String, String>,
    /// The ERC-20 token deployed for the run, if one was.
    #[serde(default)]
    pub token: Option<String>,
    /// Its balances (base units, decimal) of the funded account and the watched ones.
    #[serde(default)]
    pub token_balances: std::collections::BTreeMap<String, String>,
}

/// An ERC-20 token (tests/py/token.vy, compiled by vyper) deployed before the transactions,
/// its whole `supply` held by the funded account.
#[derive(Debug, Clone)]
pub struct TokenJob {
    /// Token base units minted to the funded account.
    pub supply: u128,
    /// Further accounts whose token balance the report gives.
    pub watch: Vec<String>,
}

/// The line a test prints when it skips for want of the vyper compiler.
pub const SKIP_TOKEN_LINE: &str =
    "SKIPPED: the vyper compiler is not installed (`make deps` installs it from PyPI)";

/// True if `python3` can import the vyper compiler (and the packages of [`python_available`]).
pub fn vyper_available() -> bool {
    python_available()
        && Command::new("python3")
            .args(["-c", "import vyper"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}

/// Runs `txs` in eth-tester's EVM with `address` funded with `fund_wei` at genesis.
pub fn run_in_evm(address: &str, fund_wei: u128, txs: &[SignedTx]) -> Result<EvmReport> {
    run_job(&evm_job(address, fund_wei, txs, None))
}

/// [`run_in_evm`] with `token` deployed first.
pub fn run_with_token(
    address: &str,
    fund_wei: u128,
    txs: &[SignedTx],
    token: &TokenJob,
) -> Result<EvmReport> {
    run_job(&evm_job(address, fund_wei, txs, Some(token)))
}

/// The address `token` will have in a run for `address` (every run deploys it the same way).
pub fn token_address(address: &str, token: &TokenJob) -> Result<String> {
    let mut job = evm_job(address, 0, &[], Some(token));
    if let Some(fields) = job.as_object_mut() {
        fields.insert("deploy_only".into(), serde_json::Value::Bool(true));
    }
    let report = run_job(&job)?;
    report.token.context("no token address")
}

fn evm_job(
    address: &str,
    fund_wei: u128,
    txs: &[SignedTx],
    token: Option<&TokenJob>,
) -> serde_json::Value {
    let token = token.map(|token| {
        serde_json::json!({
            "supply": token.supply.to_string(),
            "watch": token.watch,
        })
    });
    let mut job = serde_json::json!({
        "address": address,
        "fund_wei": fund_wei.to_string(),
        "txs": txs.iter().map(|t| format!("0x{}", hex::encode(&t.raw))).collect::<Vec<_>>(),
    });
    if let (Some(token), Some(fields)) = (token, job.as_object_mut()) {
        fields.insert("token".into(), token);
    }
    job
}

fn run_job(job: &serde_json::Value) -> Result<EvmReport> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("py/eth_evm.py");
    let mut child = Command::new("python3")
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("python3")?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(job.to_string().as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "eth_evm.py failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The deploy-only answer has the token alone.
    let mut value: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    if let Some(fields) = value.as_object_mut() {
        for (key, empty) in [
            ("senders", serde_json::json!([])),
            ("receipts", serde_json::json!([])),
            ("balances", serde_json::json!({})),
        ] {
            fields.entry(key).or_insert(empty);
        }
    }
    Ok(serde_json::from_value(value)?)
}
