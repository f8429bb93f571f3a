//! `cosigner wallet create|list|show|set-policy|descriptor`, `cosigner address` and `cosigner sign`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};
use cosigner_client::address::Network;
use cosigner_client::home::{Home, WalletFile};
use cosigner_client::session::Session;
use cosigner_client::trust::Trust;
use cosigner_client::{psbt_sign, wallet};
use cosigner_protocol::hd::Keychain;
use cosigner_protocol::wire::WalletId;
use serde_json::json;

use super::Globals;
use super::attestation::emit;
use super::eth::Chain;

/// Wallet subcommands.
#[derive(Debug, Subcommand)]
pub enum WalletCommand {
    /// Create a 2-of-3 wallet by DKG among this device, the provider and the recovery cosigner.
    Create {
        /// Where to write the recovery credential (a P-256 key to keep offline). Default:
        /// HOME/wallets/<id>.recovery.key, with a warning to move it.
        #[arg(long, value_name = "FILE")]
        recovery_key_out: Option<PathBuf>,
        /// A spending policy (TOML; its one member is `owner`, this device), enforced by the
        /// provider and the recovery cosigner: they then sign only PSBTs it allows. The device
        /// key alone can never change it (`wallet set-policy` needs the recovery credential).
        #[arg(long, value_name = "FILE")]
        policy: Option<PathBuf>,
        /// The operator's enrollment token (a file holding `cosigner-enrollment-v1:…`, issued by
        /// `cosigner-parent enrollment issue` for this device's key), for a provider that
        /// requires one.
        #[arg(long, value_name = "FILE")]
        enrollment_token: Option<PathBuf>,
        /// The chain: `bitcoin` (Taproot, FROST) or `ethereum` (an account, threshold ECDSA).
        #[arg(long, value_enum, default_value_t)]
        chain: Chain,
        /// Print one JSON line.
        #[arg(long)]
        json: bool,
    },
    /// Replace or remove a wallet's spending policy at both cosigners, authorized by the
    /// offline recovery credential (the device key alone cannot).
    SetPolicy {
        /// The wallet id (32 hex digits).
        #[arg(long, value_name = "ID")]
        wallet: String,
        /// The recovery credential written by `wallet create`.
        #[arg(long, value_name = "FILE")]
        recovery_key: PathBuf,
        /// The new policy (TOML).
        #[arg(long, value_name = "FILE", required_unless_present = "remove")]
        policy: Option<PathBuf>,
        /// Remove the policy instead: the cosigners sign whatever the device asks again.
        #[arg(long, conflicts_with = "policy")]
        remove: bool,
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
    /// Print a Bitcoin wallet's output descriptors (BIP-386 `tr()` over its extended public key,
    /// with key origin and checksum): receive, change, and both as one multipath descriptor,
    /// importable as watch-only into Bitcoin Core (`importdescriptors`) or BDK.
    Descriptor {
        /// The wallet id (32 hex digits).
        #[arg(long, value_name = "ID")]
        wallet: String,
        /// Print one JSON line: `{"receive","change","multipath"}` (and `xpub`, `fingerprint`).
        #[arg(long)]
        json: bool,
    },
}

/// `cosigner address`.
#[derive(Debug, Args)]
pub struct AddressArgs {
    /// The wallet id (32 hex digits).
    #[arg(long, value_name = "ID")]
    wallet: String,
    /// A change address (`m/1/*`) instead of a receive address (`m/0/*`).
    #[arg(long)]
    change: bool,
    /// This index on the chain; without it, the next one this device has not handed out.
    #[arg(long, value_name = "N")]
    index: Option<u32>,
    /// Print one JSON line: `{"address","index","derivation","output_key"}`.
    #[arg(long)]
    json: bool,
}

/// `cosigner refresh`.
#[derive(Debug, Args)]
pub struct RefreshArgs {
    /// The wallet id (32 hex digits).
    #[arg(long, value_name = "ID")]
    wallet: String,
    /// Print one JSON line.
    #[arg(long)]
    json: bool,
}

/// `cosigner recover`.
#[derive(Debug, Args)]
pub struct RecoverArgs {
    /// The wallet id (32 hex digits).
    #[arg(long, value_name = "ID")]
    wallet: String,
    /// The recovery credential written by `wallet create`.
    #[arg(long, value_name = "FILE")]
    recovery_key: PathBuf,
    /// Cancel a recovery in progress instead (the old phone was found): both cosigners drop the
    /// pending device key and the registered device key may act again.
    #[arg(long)]
    cancel: bool,
    /// Print one JSON line.
    #[arg(long)]
    json: bool,
}

/// `cosigner sign`.
#[derive(Debug, Args)]
pub struct SignArgs {
    /// The wallet id (32 hex digits).
    #[arg(long, value_name = "ID")]
    wallet: String,
    /// Sign with the recovery cosigner instead of the provider (the provider is unreachable),
    /// authorized by the offline recovery credential in FILE: the recovery cosigner never
    /// co-signs on the device key alone.
    #[arg(long, value_name = "FILE")]
    with_recovery_key: Option<PathBuf>,
    /// A 32-byte message (sighash), 64 hex digits: only for wallets without a policy.
    #[arg(
        long,
        value_name = "HEX32",
        conflicts_with_all = ["psbt", "eth_tx"],
        required_unless_present_any = ["psbt", "eth_tx"]
    )]
    message: Option<String>,
    /// Ethereum wallets: a transaction as `eth_signTransaction` takes it (JSON: `chainId`,
    /// `nonce`, `to`, `value`, `data`, `gas`, and `gasPrice` or `maxFeePerGas` and
    /// `maxPriorityFeePerGas`); prints `tx_hash` and `raw_tx` (signed, RLP, broadcastable).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["psbt", "with_recovery_key"])]
    eth_tx: Option<PathBuf>,
    /// A PSBT (base64 or binary) spending the wallet's Taproot outputs (its own address or
    /// derived ones, `cosigner address`); prints the signed transaction.
    #[arg(long, value_name = "FILE")]
    psbt: Option<PathBuf>,
    /// With --psbt: also write the PSBT with every input's `PSBT_IN_TAP_KEY_SIG` set (BIP-371,
    /// base64, not finalized) to FILE, for wallet software that combines and finalizes PSBTs
    /// itself; `--json` adds it as `"psbt"` either way.
    #[arg(long, value_name = "FILE", requires = "psbt")]
    psbt_out: Option<PathBuf>,
    /// DAO wallets (with --psbt, or --eth-tx for an Ethereum treasury): where to write the
    /// request the other members approve.
    #[arg(long, value_name = "FILE")]
    request_out: Option<PathBuf>,
    /// DAO wallets: give up after this many seconds without enough approvals.
    #[arg(long, value_name = "SECS", default_value_t = 600)]
    timeout: u64,
    /// Print one JSON line.
    #[arg(long)]
    json: bool,
}

pub(super) fn home(g: &Globals) -> anyhow::Result<Home> {
    let dir: PathBuf = g
        .home
        .clone()
        .context("give --home DIR (or set COSIGNER_HOME)")?;
    Ok(Home::open(&dir)?)
}

pub(super) fn trust(g: &Globals) -> anyhow::Result<Trust> {
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

/// A session with the provider.
pub(super) fn connect_provider(g: &Globals, trust: &Trust) -> anyhow::Result<Session> {
    connect(g.provider.as_ref(), "provider", "COSIGNER_PROVIDER", trust)
}

/// Sessions with both cosigners of a personal wallet: the provider and the recovery cosigner.
pub(super) fn cosigners(g: &Globals, trust: &Trust) -> anyhow::Result<(Session, Session)> {
    Ok((
        connect(g.provider.as_ref(), "provider", "COSIGNER_PROVIDER", trust)?,
        connect(g.recovery.as_ref(), "recovery", "COSIGNER_RECOVERY", trust)?,
    ))
}

pub(super) fn wallet_id(s: &str) -> anyhow::Result<WalletId> {
    WalletId::from_hex(s).map_err(|_| anyhow::anyhow!("--wallet {s:?}: expected 32 hex digits"))
}

pub(super) fn wallet_json(w: &WalletFile) -> serde_json::Value {
    json!({
        "wallet_id": w.wallet_id.to_hex(),
        "group_public_key": hex::encode(w.group_public_key),
        "address": w.address,
        "network": w.network.name(),
        "epoch": w.epoch,
        "min_signers": w.min_signers,
        "parties": w.parties,
    })
}

/// Runs a wallet subcommand.
pub fn run(g: &Globals, cmd: WalletCommand) -> anyhow::Result<()> {
    match cmd {
        WalletCommand::Create {
            chain: Chain::Ethereum,
            recovery_key_out,
            policy,
            enrollment_token,
            json,
        } => {
            let policy = policy.as_deref().map(read_policy).transpose()?;
            let home = home(g)?;
            let enrollment = enrollment_token
                .map(|t| read_enrollment_token(&t, &home))
                .transpose()?;
            super::eth::create(g, recovery_key_out, enrollment, policy, json)
        }
        WalletCommand::Create {
            chain: Chain::Bitcoin,
            recovery_key_out,
            policy,
            enrollment_token,
            json,
        } => create(
            g,
            recovery_key_out,
            policy.as_deref(),
            enrollment_token.as_deref(),
            json,
        ),
        WalletCommand::SetPolicy {
            wallet,
            recovery_key,
            policy,
            remove,
            json,
        } => set_policy(g, &wallet, &recovery_key, policy.as_deref(), remove, json),
        WalletCommand::List { json } => list(g, json),
        WalletCommand::Show { wallet, json } => super::show::show(g, &wallet, json),
        WalletCommand::Descriptor { wallet, json } => descriptor(g, &wallet, json),
    }
}

/// The Bitcoin wallet `--wallet` names (an Ethereum wallet has one address: its account).
fn bitcoin_wallet(g: &Globals, wallet: &str) -> anyhow::Result<(Home, WalletFile)> {
    let home = home(g)?;
    let id = wallet_id(wallet)?;
    if home.has_eth_wallet(&id) {
        anyhow::bail!(
            "wallet {id} is an Ethereum wallet: its one address is its account (`wallet show`)"
        );
    }
    let wallet = home.wallet(&id)?;
    Ok((home, wallet))
}

/// `cosigner wallet descriptor --wallet ID`.
fn descriptor(g: &Globals, wallet: &str, json: bool) -> anyhow::Result<()> {
    let (_, w) = bitcoin_wallet(g, wallet)?;
    let xpub = cosigner_client::address::wallet_xpub(&w)?;
    let d = xpub.descriptors();
    if json {
        emit(
            &json!({
                "receive": d.receive,
                "change": d.change,
                "multipath": d.multipath,
                "xpub": xpub.encoded(),
                "fingerprint": hex::encode(xpub.fingerprint()),
            })
            .to_string(),
        )
    } else {
        emit(&format!("{}\n{}\n{}", d.receive, d.change, d.multipath))
    }
}

/// `cosigner address --wallet ID [--change] [--index N]`: a derived address, the next unused one
/// unless `--index` names one (either way recorded as handed out).
pub fn address(g: &Globals, args: AddressArgs) -> anyhow::Result<()> {
    let (home, w) = bitcoin_wallet(g, &args.wallet)?;
    let keychain = if args.change {
        Keychain::Change
    } else {
        Keychain::Receive
    };
    let index = match args.index {
        Some(index) => index,
        None => home.next_address_index(&w.wallet_id, keychain)?,
    };
    let (child, address) = cosigner_client::address::child_address(&w, keychain, index)?;
    home.address_handed_out(&w.wallet_id, keychain, index)?;
    if args.json {
        emit(
            &json!({
                "address": address,
                "index": index,
                "derivation": child.derivation(),
                "output_key": hex::encode(child.output_key),
                "internal_key": hex::encode(child.internal_key),
                // `sign --psbt` signs for every derived output (docs/addresses.md).
                "spendable": true,
            })
            .to_string(),
        )
    } else {
        emit(&format!("{address} ({})", child.derivation()))
    }
}

/// `cosigner wallet create`.
fn create(
    g: &Globals,
    recovery_key_out: Option<PathBuf>,
    policy: Option<&Path>,
    enrollment_token: Option<&Path>,
    json: bool,
) -> anyhow::Result<()> {
    let network: Network = g.network.parse()?;
    let policy = policy.map(read_policy).transpose()?;
    let home = home(g)?;
    let enrollment = enrollment_token
        .map(|t| read_enrollment_token(t, &home))
        .transpose()?;
    let trust = trust(g)?;
    let (mut provider, mut recovery) = cosigners(g, &trust)?;
    let out = recovery_key_path(g, recovery_key_out.as_deref())?;
    let created = wallet::create_with(
        &home,
        &mut provider,
        &mut recovery,
        network,
        &out,
        &wallet::CreateOptions {
            policy: policy.as_deref(),
            enrollment: enrollment.as_deref(),
        },
    )?;
    let w = created.wallet;
    // This device's copy, for `wallet show` offline; the cosigners hold the one in force.
    home.save_local_policy(&w.wallet_id, policy.as_deref())?;
    if recovery_key_out.is_none()
        && let Some(path) = &created.recovery_key_path
    {
        keep_recovery_key(path, &w.wallet_id)?;
    }
    created_out(&w, json)
}

/// Where `wallet create` writes the recovery credential: `--recovery-key-out`, or a temporary
/// name in the home's wallets folder ([`keep_recovery_key`] names it after the wallet).
pub(super) fn recovery_key_path(g: &Globals, given: Option<&Path>) -> anyhow::Result<PathBuf> {
    match (given, &g.home) {
        (Some(p), _) => Ok(p.to_path_buf()),
        (None, Some(h)) => Ok(h.join("wallets").join("recovery.key.new")),
        (None, None) => anyhow::bail!("give --recovery-key-out FILE"),
    }
}

/// Names a recovery credential written to the default place after its wallet, and warns that it
/// belongs offline.
pub(super) fn keep_recovery_key(out: &Path, wallet_id: &WalletId) -> anyhow::Result<()> {
    if !out.exists() {
        return Ok(());
    }
    let kept = out.with_file_name(format!("{wallet_id}.recovery.key"));
    std::fs::rename(out, &kept)
        .map_err(|e| anyhow::anyhow!("{}: {}", kept.display(), cosigner_client::io_reason(&e)))?;
    eprintln!(
        "warning: the recovery credential is in {}; move it offline (use --recovery-key-out next time)",
        kept.display()
    );
    Ok(())
}

/// What `wallet create`, `dao create` and `join` print: the new wallet.
pub(super) fn created_out(w: &WalletFile, json: bool) -> anyhow::Result<()> {
    if json {
        emit(
            &json!({
                "wallet_id": w.wallet_id.to_hex(),
                "group_public_key": hex::encode(w.group_public_key),
                "address": w.address,
            })
            .to_string(),
        )
    } else {
        emit(&format!(
            "wallet {}\naddress {}\ngroup key (x-only) {}",
            w.wallet_id,
            w.address,
            hex::encode(w.group_public_key)
        ))
    }
}

/// `cosigner wallet set-policy`.
fn set_policy(
    g: &Globals,
    wallet: &str,
    recovery_key: &Path,
    policy: Option<&Path>,
    remove: bool,
    json: bool,
) -> anyhow::Result<()> {
    let id = wallet_id(wallet)?;
    let policy = match (policy, remove) {
        (Some(path), false) => Some(read_policy(path)?),
        (None, true) => None,
        _ => anyhow::bail!("give --policy FILE or --remove"),
    };
    let recovery_key = cosigner_client::home::read_p256_key(recovery_key)?;
    let home = home(g)?;
    let trust = trust(g)?;
    let (mut provider, mut recovery) = cosigners(g, &trust)?;
    psbt_sign::set_policy(
        &home,
        &mut provider,
        &mut recovery,
        id,
        &recovery_key,
        policy.as_deref(),
    )?;
    home.save_local_policy(&id, policy.as_deref())?;
    if json {
        emit(&json!({ "wallet_id": id.to_hex(), "policy": policy.is_some() }).to_string())
    } else if policy.is_some() {
        emit(&format!(
            "wallet {id}: new policy in force at both cosigners"
        ))
    } else {
        emit(&format!("wallet {id}: policy removed at both cosigners"))
    }
}

/// `cosigner wallet list`.
fn list(g: &Globals, json: bool) -> anyhow::Result<()> {
    let home = home(g)?;
    let wallets = home.wallets()?;
    let eth = home.eth_wallets()?;
    if json {
        let list: Vec<_> = wallets
            .iter()
            .map(wallet_json)
            .chain(eth.iter().map(super::eth::wallet_json))
            .collect();
        return emit(&serde_json::Value::Array(list).to_string());
    }
    for w in &wallets {
        emit(&format!("{} {}", w.wallet_id, w.address))?;
    }
    for w in &eth {
        emit(&format!("{} {} (ethereum)", w.wallet_id, w.address))?;
    }
    Ok(())
}

/// Reads an enrollment token file (`cosigner-enrollment-v1:<hex>`) into its bytes.
fn read_enrollment_token(path: &Path, home: &Home) -> anyhow::Result<Vec<u8>> {
    let text = String::from_utf8(read_file("enrollment token", path)?)
        .map_err(|_| anyhow::anyhow!("enrollment token {}: not a token", path.display()))?;
    let token = cosigner_protocol::enrollment::EnrollmentToken::from_text(&text)
        .map_err(|e| anyhow::anyhow!("enrollment token {}: {e}", path.display()))?;
    // Checked here too, before any ceremony: a token for another device would only be refused
    // by the provider after the DKG.
    let ours = cosigner_protocol::auth::public_key_bytes(&home.device_key()?);
    if token.device_key != ours {
        anyhow::bail!(
            "enrollment token {}: issued for device key {}, this device's key is {}",
            path.display(),
            hex::encode(&token.device_key),
            hex::encode(&ours)
        );
    }
    Ok(token.to_bytes())
}

/// `cosigner sign`.
pub fn sign(g: &Globals, args: SignArgs) -> anyhow::Result<()> {
    let id = wallet_id(&args.wallet)?;
    let home = home(g)?;
    if args.request_out.is_some() && args.psbt.is_none() && args.eth_tx.is_none() {
        anyhow::bail!("--request-out goes with --psbt or --eth-tx (DAO wallets)");
    }
    if let Some(path) = &args.eth_tx {
        return super::eth::sign(
            g,
            &home,
            id,
            path,
            (args.request_out.as_deref(), args.timeout),
            args.json,
        );
    }
    if home.has_eth_wallet(&id) {
        anyhow::bail!("wallet {id} is an Ethereum wallet: give --eth-tx FILE");
    }
    let w = home.wallet(&id)?; // unknown wallet: fail before any network traffic
    home.check_share(&id)?; // a damaged share: say so, rather than blame a party mid-ceremony
    if let Some(path) = &args.psbt {
        let contents = read_file("PSBT file", path)?;
        let psbt = cosigner_protocol::psbt::decode_psbt_file(&contents)
            .map_err(|e| anyhow::anyhow!("PSBT file {}: {e}", path.display()))?;
        if w.dao.is_some() {
            return super::dao::sign_dao(
                g,
                &home,
                &w,
                psbt,
                (args.request_out.as_deref(), args.psbt_out.as_deref()),
                args.timeout,
                args.json,
            );
        }
        return sign_psbt(
            g,
            &home,
            &w,
            psbt,
            (args.with_recovery_key.as_deref(), args.psbt_out.as_deref()),
            args.json,
        );
    }
    let message: [u8; 32] = args
        .message
        .as_deref()
        .and_then(|m| hex::decode(m).ok())
        .and_then(|m| m.try_into().ok())
        .ok_or_else(|| anyhow::anyhow!("--message: expected 64 hex digits (32 bytes)"))?;
    if w.dao.is_some() {
        anyhow::bail!("a DAO wallet signs transactions only: give --psbt FILE");
    }
    let trust = trust(g)?;
    let recovery_key = args
        .with_recovery_key
        .as_deref()
        .map(cosigner_client::home::read_p256_key)
        .transpose()?;
    let (mut session, cosigner) = cosigner_for(g, &trust, recovery_key.as_ref())?;
    let signed = wallet::sign_with_receipt(&home, &mut session, cosigner, id, &message)?;
    let signature = hex::encode(signed.signature);
    if args.json {
        // The receipt proves which measured code co-signed this message, and when
        // (`cosigner receipt verify`).
        emit(&json!({ "signature": signature, "receipt": signed.receipt }).to_string())
    } else {
        emit(&signature)
    }
}

/// Reads a file named on the command line; an error names it (`what PATH: reason`).
pub(super) fn read_file(what: &str, path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| {
        anyhow::anyhow!(
            "{what} {}: {}",
            path.display(),
            cosigner_client::io_reason(&e)
        )
    })
}

fn read_policy(path: &Path) -> anyhow::Result<String> {
    let bytes = read_file("policy file", path)?;
    if bytes.len() > cosigner_protocol::policy::MAX_POLICY_TEXT {
        anyhow::bail!(
            "policy file {}: larger than {} bytes",
            path.display(),
            cosigner_protocol::policy::MAX_POLICY_TEXT
        );
    }
    String::from_utf8(bytes)
        .map_err(|_| anyhow::anyhow!("policy file {}: not UTF-8 text", path.display()))
}

/// `cosigner sign --psbt` for a personal wallet: the device's own reading goes to stderr first,
/// then the provider evaluates the wallet's policy and both sign every input.
/// The session and cosigner a personal wallet signs with: the provider, or the recovery cosigner
/// under the recovery credential.
fn cosigner_for<'a>(
    g: &Globals,
    trust: &cosigner_client::trust::Trust,
    recovery_key: Option<&'a p256::ecdsa::SigningKey>,
) -> anyhow::Result<(Session, wallet::CoSigner<'a>)> {
    Ok(match recovery_key {
        None => (
            connect(g.provider.as_ref(), "provider", "COSIGNER_PROVIDER", trust)?,
            wallet::CoSigner::Provider,
        ),
        Some(key) => (
            connect(g.recovery.as_ref(), "recovery", "COSIGNER_RECOVERY", trust)?,
            wallet::CoSigner::Recovery(key),
        ),
    })
}

fn sign_psbt(
    g: &Globals,
    home: &Home,
    w: &WalletFile,
    psbt: Vec<u8>,
    (with_recovery_key, psbt_out): (Option<&Path>, Option<&Path>),
    json: bool,
) -> anyhow::Result<()> {
    let id = w.wallet_id;
    let summary = psbt_sign::summarize(w, &psbt)?;
    show_spend(&summary);
    let trust = trust(g)?;
    let recovery_key = with_recovery_key
        .map(cosigner_client::home::read_p256_key)
        .transpose()?;
    let (mut session, cosigner) = cosigner_for(g, &trust, recovery_key.as_ref())?;
    let signed = psbt_sign::sign_psbt_with(home, &mut session, cosigner, id, &psbt)?;
    // This device's record, for what `wallet show` says is left of a velocity limit.
    let at_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let spend = cosigner_client::home::LocalSpend {
        at_ms,
        asset: cosigner_protocol::policy::ASSET_BTC.into(),
        amount: signed.evaluation.value_leaving,
        txid: signed.txid.clone(),
    };
    if let Err(e) = home.record_spend(&id, spend) {
        eprintln!("warning: the spend is signed but not recorded here ({e})");
    }
    match &signed.evaluation.rule {
        Some(rule) => eprintln!("  allowed by the wallet's policy, rule {rule:?}"),
        None => eprintln!("  (the wallet has no policy)"),
    }
    let signed_psbt = psbt_out_written(&signed.psbt, psbt_out)?;
    if json {
        // The receipt proves which measured code co-signed this spend (`cosigner receipt
        // verify`).
        return emit(
            &json!({
                "txid": signed.txid,
                "tx_hex": hex::encode(&signed.tx),
                "psbt": signed_psbt,
                "value_leaving": signed.evaluation.value_leaving,
                "fee": signed.evaluation.fee,
                "change": signed.evaluation.change,
                "receipt": signed.receipt,
            })
            .to_string(),
        );
    }
    signed_out(&signed.txid, &signed.tx, json)
}

/// A signed PSBT (binary) as base64, written to `--psbt-out`'s file if one was given.
pub(super) fn psbt_out_written(psbt: &[u8], psbt_out: Option<&Path>) -> anyhow::Result<String> {
    let base64 = cosigner_protocol::psbt::to_base64(psbt);
    if let Some(path) = psbt_out {
        std::fs::write(path, format!("{base64}\n"))
            .with_context(|| format!("--psbt-out {}", path.display()))?;
    }
    Ok(base64)
}

/// What this device reads in a PSBT, on stderr before it signs.
pub(super) fn show_spend(s: &cosigner_protocol::psbt::SpendSummary) {
    eprintln!(
        "transaction {}: {} sat leave the wallet (fee {} sat, change {} sat)",
        s.txid, s.value_leaving, s.fee, s.change
    );
    for d in &s.destinations {
        eprintln!("  pays {} sat to {}", d.amount, d.address);
    }
}

/// What `sign --psbt` prints: the signed transaction.
pub(super) fn signed_out(txid: &str, tx: &[u8], json: bool) -> anyhow::Result<()> {
    if json {
        emit(&json!({ "txid": txid, "tx_hex": hex::encode(tx) }).to_string())
    } else {
        emit(&format!("{txid}\n{}", hex::encode(tx)))
    }
}

/// `cosigner refresh`: new shares for every party, same key and address, epoch + 1.
pub fn refresh(g: &Globals, args: RefreshArgs) -> anyhow::Result<()> {
    let id = wallet_id(&args.wallet)?;
    let home = home(g)?;
    if home.has_eth_wallet(&id) {
        return super::eth::refresh(g, &home, id, args.json);
    }
    home.wallet(&id)?;
    home.check_share(&id)?;
    let trust = trust(g)?;
    let (mut provider, mut recovery) = cosigners(g, &trust)?;
    let w = wallet::refresh(&home, &mut provider, &mut recovery, id, &mut |_| {})?;
    epoch_out(&w, args.json, "refreshed to epoch")
}

/// What `refresh` and `recover` print: the wallet at its new epoch.
fn epoch_out(w: &WalletFile, json: bool, what: &str) -> anyhow::Result<()> {
    if json {
        let out = json!({
            "wallet_id": w.wallet_id.to_hex(),
            "group_public_key": hex::encode(w.group_public_key),
            "epoch": w.epoch,
        });
        emit(&out.to_string())
    } else {
        emit(&format!("wallet {} {what} {}", w.wallet_id, w.epoch))
    }
}

/// `cosigner recover`: a new device takes over a wallet with the recovery credential.
pub fn recover(g: &Globals, args: RecoverArgs) -> anyhow::Result<()> {
    let id = wallet_id(&args.wallet)?;
    let network: Network = g.network.parse()?;
    let recovery_key = cosigner_client::home::read_p256_key(&args.recovery_key)?;
    let trust = trust(g)?;
    let (mut provider, mut recovery) = cosigners(g, &trust)?;
    if args.cancel {
        wallet::cancel_recovery(&mut provider, &mut recovery, id, &recovery_key)?;
        let out = json!({ "wallet_id": id.to_hex(), "recovery": "cancelled" });
        return if args.json {
            emit(&out.to_string())
        } else {
            emit(&format!("recovery of wallet {id} cancelled"))
        };
    }
    let home = home(g)?;
    // An Ethereum wallet is recovered by its own ceremony (threshold ECDSA repair and refresh).
    let view = wallet::provider_view(&mut provider, id)?;
    if view.ciphersuite == cosigner_protocol::wire::SUITE_SECP256K1_ECDSA {
        let w =
            cosigner_client::eth::recover(&home, &mut provider, &mut recovery, id, &recovery_key)?;
        return super::eth::epoch_out(&w, args.json, "recovered onto this device at epoch");
    }
    let w = wallet::recover(
        &home,
        &mut provider,
        &mut recovery,
        id,
        &recovery_key,
        network,
    )?;
    epoch_out(&w, args.json, "recovered onto this device at epoch")
}
