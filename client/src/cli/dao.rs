//! `cosigner device-key`, `dao create`, `join`, DAO `sign --psbt`, `dao policy`, `dao refresh`
//! and `approve`.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use cosigner_client::address::Network;
use cosigner_client::dao::{self, Courier, Progress};
use cosigner_client::home::{EthWalletFile, Home, WalletFile};
use cosigner_client::session::Session;
use cosigner_client::trust::Trust;
use cosigner_protocol::auth::public_key_bytes;
use cosigner_protocol::dao::refresh::RefreshProposal;
use cosigner_protocol::dao::{Evaluation, Invitation, Layout, SignRequest};
use cosigner_protocol::id::{Epoch, PartyId};
use cosigner_protocol::mailbox::{Envelope, Topic};
use cosigner_protocol::policy::ASSET_ETH;
use cosigner_protocol::psbt::SpendSummary;
use cosigner_protocol::wire::WalletId;
use serde_json::json;

use super::Globals;
use super::attestation::emit;
use super::eth::Chain;
use super::wallet::{created_out, home, show_spend, signed_out, trust, wallet_id};

/// How long a member waits by default for the others.
const DEFAULT_TIMEOUT_SECS: u64 = 600;

/// `cosigner device-key`.
#[derive(Debug, Args)]
pub struct DeviceKeyArgs {
    /// Print one JSON line.
    #[arg(long)]
    json: bool,
}

/// What every command that waits for the other members takes.
#[derive(Debug, Args)]
pub struct Waiting {
    /// Give up after this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_TIMEOUT_SECS)]
    timeout: u64,
    /// Print one JSON line.
    #[arg(long)]
    json: bool,
}

impl Waiting {
    fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout)
    }
}

/// DAO subcommands.
#[derive(Debug, Subcommand)]
pub enum DaoCommand {
    /// Propose a DAO wallet to its members and run its DKG; waits until every member joined.
    Create {
        /// The members: `[[member]]` tables with `name` and `device_key` (hex P-256).
        #[arg(long, value_name = "FILE")]
        members: PathBuf,
        /// The policy (TOML rules, see docs/policy.md).
        #[arg(long, value_name = "FILE")]
        policy: PathBuf,
        /// Where to write the invitation for the other members.
        #[arg(long, value_name = "FILE")]
        invitation_out: PathBuf,
        /// The chain: `bitcoin` (a Taproot wallet, FROST) or `ethereum` (a treasury account,
        /// threshold ECDSA; the policy's amounts in ETH and its token table).
        #[arg(long, value_enum, default_value_t)]
        chain: Chain,
        #[command(flatten)]
        wait: Waiting,
    },
    /// Propose a new policy (needs the current policy's admin quorum); waits until it is in force.
    Policy(PolicyArgs),
    /// Refresh every share (same key and address, next epoch); waits until every member took part.
    Refresh(ProposalArgs),
    /// List the wallet's pending signing requests: what each spends, its rule, approvals so far,
    /// who is still missing, rejections.
    Requests(RequestsArgs),
}

/// `cosigner dao requests`: arguments.
#[derive(Debug, Args)]
pub struct RequestsArgs {
    /// The wallet id (32 hex digits).
    #[arg(long, value_name = "ID")]
    wallet: String,
    /// Also list the requests that ended (signed, refused, rejected, expired).
    #[arg(long)]
    all: bool,
    /// Print one JSON line.
    #[arg(long)]
    json: bool,
}

/// `cosigner dao refresh` (and what `dao policy` takes besides the policy): arguments.
#[derive(Debug, Args)]
pub struct ProposalArgs {
    /// The wallet id (32 hex digits).
    #[arg(long, value_name = "ID")]
    wallet: String,
    /// Where to write the proposal for the members who approve it (`dao policy`: the admin
    /// quorum; `dao refresh`: every other member).
    #[arg(long, value_name = "FILE")]
    request_out: PathBuf,
    #[command(flatten)]
    wait: Waiting,
}

/// `cosigner dao policy`: arguments.
#[derive(Debug, Args)]
pub struct PolicyArgs {
    /// The new policy (TOML).
    #[arg(long, value_name = "FILE")]
    policy: PathBuf,
    #[command(flatten)]
    proposal: ProposalArgs,
}

/// `cosigner join`.
#[derive(Debug, Args)]
pub struct JoinArgs {
    /// The invitation file.
    #[arg(value_name = "INVITATION")]
    invitation: PathBuf,
    #[command(flatten)]
    wait: Waiting,
}

/// `cosigner approve`.
#[derive(Debug, Args)]
pub struct ApproveArgs {
    /// The request file written by `sign --request-out`.
    #[arg(long, value_name = "FILE")]
    request: PathBuf,
    /// Approve without asking (the summary is still printed to stderr).
    #[arg(long)]
    yes: bool,
    /// Say no instead: post this device's signed rejection (a signing request or a policy
    /// change). The requester and the provider learn it at once; once the members left cannot
    /// give the rule's (or the admin quorum's) approvals, the request is refused.
    #[arg(long, conflicts_with = "yes")]
    reject: bool,
    /// With --reject: why, shown to every member.
    #[arg(long, value_name = "TEXT", requires = "reject")]
    reason: Option<String>,
    #[command(flatten)]
    wait: Waiting,
}

fn mailbox_addr(g: &Globals, hint: &str) -> String {
    g.mailbox.clone().unwrap_or_else(|| hint.to_owned())
}

fn provider_addr(g: &Globals, hint: &str) -> String {
    g.provider.clone().unwrap_or_else(|| hint.to_owned())
}

fn read_text(path: &Path, what: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("{what} {}", path.display()))
}

fn say(line: &str) {
    eprintln!("{line}");
}

/// A DAO wallet of either chain, as this device holds it.
enum AnyDao {
    Bitcoin(WalletFile),
    Ethereum(EthWalletFile),
}

impl AnyDao {
    /// Wallet `id` of this home.
    fn load(home: &Home, id: &WalletId) -> anyhow::Result<Self> {
        if home.has_eth_wallet(id) {
            Ok(Self::Ethereum(home.eth_wallet(id)?))
        } else {
            Ok(Self::Bitcoin(home.wallet(id)?))
        }
    }

    /// The share epoch this device holds.
    fn epoch(&self) -> Epoch {
        match self {
            Self::Bitcoin(w) => w.epoch,
            Self::Ethereum(w) => w.epoch,
        }
    }

    /// This device as its member (a DAO wallet's only).
    fn member(&self) -> anyhow::Result<dao::DaoMember<'_>> {
        Ok(match self {
            Self::Bitcoin(w) => w.member()?,
            Self::Ethereum(w) => w.member()?,
        })
    }
}

/// Stops unless the user approves (`--yes`, or `y` at the prompt).
fn approve_or_stop(yes: bool) -> anyhow::Result<()> {
    if !yes && !confirm()? {
        anyhow::bail!("not approved");
    }
    Ok(())
}

/// `cosigner device-key`.
pub fn device_key(g: &Globals, args: DeviceKeyArgs) -> anyhow::Result<()> {
    let key = hex::encode(public_key_bytes(&home(g)?.device_key()?));
    if args.json {
        emit(&json!({ "device_key": key }).to_string())
    } else {
        emit(&key)
    }
}

/// `cosigner dao ...`.
pub fn run(g: &Globals, cmd: DaoCommand) -> anyhow::Result<()> {
    match cmd {
        DaoCommand::Create {
            members,
            policy,
            invitation_out,
            chain,
            wait,
        } => {
            let network = match chain {
                Chain::Bitcoin => Some(g.network.parse::<Network>()?),
                Chain::Ethereum => None,
            };
            let home = home(g)?;
            let trust = trust(g)?;
            let provider_addr = g
                .provider
                .clone()
                .context("give --provider ADDR (or set COSIGNER_PROVIDER)")?;
            let mailbox = g
                .mailbox
                .clone()
                .context("give --mailbox ADDR (or set COSIGNER_MAILBOX)")?;
            let members_text = read_text(&members, "members file")?;
            let policy_text = read_text(&policy, "policy file")?;
            let provider = Session::connect(&provider_addr, &trust)?;
            let (invitation, envelope) = dao::invite(
                &home,
                &provider,
                &members_text,
                &policy_text,
                network,
                &mailbox,
                &provider_addr,
            )?;
            dao::write_envelope(&invitation_out, &envelope)?;
            let layout = invitation.layout()?;
            say(&format!(
                "invitation written to {}: {} members, provider holds parties {:?}, threshold {}; waiting for every member to join",
                invitation_out.display(),
                layout.members.len(),
                layout.provider_parties,
                layout.params.min_signers
            ));
            let dkg = Dkg {
                home: &home,
                trust: &trust,
                invitation: &invitation,
                envelope: &envelope,
            };
            dkg.run((provider, &provider_addr), &mailbox, &wait)
        }
        DaoCommand::Policy(args) => propose(g, args),
        DaoCommand::Refresh(args) => refresh(g, args),
        DaoCommand::Requests(args) => requests(g, args),
    }
}

/// Bitcoin amounts in their unit: BTC with the satoshis alongside.
fn btc(sat: u64) -> String {
    let whole = sat / 100_000_000;
    let frac = format!("{:08}", sat % 100_000_000);
    let frac = frac.trim_end_matches('0');
    if frac.is_empty() {
        format!("{whole} BTC ({sat} sat)")
    } else {
        format!("{whole}.{frac} BTC ({sat} sat)")
    }
}

/// `cosigner dao requests --wallet ID`: reads the wallet's topic and each request's topic at the
/// mailbox (the provider is not asked: its evaluation is in the topic, signed). Either chain's
/// DAO wallet: what a request spends is read here from its PSBT or Ethereum transaction.
fn requests(g: &Globals, args: RequestsArgs) -> anyhow::Result<()> {
    let home = home(g)?;
    let wallet = AnyDao::load(&home, &wallet_id(&args.wallet)?)?;
    let member = wallet.member()?;
    let layout = dao::invitation_of(member.info)?.layout()?;
    let mailbox = mailbox_addr(g, &member.info.mailbox);
    let (listed, text) = match &wallet {
        AnyDao::Bitcoin(w) => {
            let read = |r: &SignRequest| dao::summarize(w, &r.psbt);
            let views = dao::list_requests(&home, member, &mailbox, &read)?;
            listing(&layout, args.all, &views, psbt_fields)
        }
        AnyDao::Ethereum(_) => {
            let read = |r: &SignRequest| dao::eth::transaction_of(r);
            let views = dao::list_requests(&home, member, &mailbox, &read)?;
            listing(&layout, args.all, &views, eth_fields)
        }
    };
    if args.json {
        emit(&json!({ "wallet_id": member.wallet_id.to_hex(), "requests": listed }).to_string())
    } else if listed.is_empty() {
        emit(&format!(
            "no pending requests for wallet {}",
            member.wallet_id
        ))
    } else {
        emit(&text.join("\n"))
    }
}

/// What a listing shows of one request's transaction: its JSON keys, and its text lines.
type Fields<S> =
    fn(&dao::RequestView<S>, &Layout) -> (serde_json::Map<String, serde_json::Value>, Vec<String>);

/// The requests `views` (pending ones unless `all`) as JSON objects and text: the keys every
/// chain shares (request, requester, rule, approvals, state) and those `fields` adds.
fn listing<S>(
    layout: &Layout,
    all: bool,
    views: &[dao::RequestView<S>],
    fields: Fields<S>,
) -> (Vec<serde_json::Value>, Vec<String>) {
    let name = |p: PartyId| layout.name_of(p).unwrap_or("?").to_owned();
    let mut listed = Vec::new();
    let mut text = Vec::new();
    for v in views.iter().filter(|v| all || v.pending()) {
        let state = match (&v.tally, v.expired) {
            (Some(t), _) if t.end().is_some() || t.is_dead() => t.describe(&name),
            (_, true) => "expired (older than an hour): request it again".to_owned(),
            (Some(t), false) => t.describe(&name),
            (None, false) => "waiting for the provider's evaluation".to_owned(),
        };
        let (approvals, missing, rejections) = match &v.tally {
            Some(t) => (
                t.approvals().iter().map(|p| name(*p)).collect::<Vec<_>>(),
                t.missing().iter().map(|p| name(*p)).collect::<Vec<_>>(),
                t.rejections()
                    .iter()
                    .map(|(p, r)| json!({ "member": name(*p), "reason": r }))
                    .collect::<Vec<_>>(),
            ),
            None => (Vec::new(), Vec::new(), Vec::new()),
        };
        let (mut object, lines) = fields(v, layout);
        let common = json!({
            "request": hex::encode(v.hash),
            "requester": v.requester,
            "created_ms": v.request.created_ms,
            "rule": v.evaluation.as_ref().map(|e| e.rule.clone()),
            "approvals_needed": v.evaluation.as_ref().map(|e| e.approvals),
            "approvals": approvals,
            "missing": missing,
            "rejections": rejections,
            "state": state,
            "pending": v.pending(),
        });
        if let serde_json::Value::Object(common) = common {
            object.extend(common);
        }
        listed.push(serde_json::Value::Object(object));
        text.push(format!(
            "request {} by {}",
            hex::encode(v.hash),
            v.requester
        ));
        text.extend(lines);
        if let Some(e) = &v.evaluation {
            text.push(format!("  rule {:?}: {state}", e.rule));
        } else {
            text.push(format!("  {state}"));
        }
    }
    (listed, text)
}

/// A PSBT request's keys: `txid`, `value_leaving_sat`, `fee_sat`, `destinations`.
fn psbt_fields(
    v: &dao::RequestView<SpendSummary>,
    _: &Layout,
) -> (serde_json::Map<String, serde_json::Value>, Vec<String>) {
    let s = &v.summary;
    let object = json!({
        "txid": s.txid,
        "value_leaving_sat": s.value_leaving,
        "fee_sat": s.fee,
        "destinations": s.destinations.iter()
            .map(|d| json!({ "address": d.address, "amount_sat": d.amount }))
            .collect::<Vec<_>>(),
    });
    let mut lines = vec![format!(
        "  transaction {}: spends {} (fee {})",
        s.txid,
        btc(s.value_leaving),
        btc(s.fee)
    )];
    for d in &s.destinations {
        lines.push(format!("  pays {} to {}", btc(d.amount), d.address));
    }
    (object_of(object), lines)
}

/// An Ethereum treasury request's keys: `signing_hash`, `chain_id`, `nonce`, `to`, `value_wei`,
/// `max_fee_wei`, and `leaving` as the provider valued it (asset, amount in base units, to).
fn eth_fields(
    v: &dao::RequestView<cosigner_eth::UnsignedTx>,
    layout: &Layout,
) -> (serde_json::Map<String, serde_json::Value>, Vec<String>) {
    let tx = &v.summary;
    let to = tx.to().map(|a| cosigner_eth::checksummed(&a));
    // What the provider valued is shown only if it evaluated the signing hash this device
    // computed (as `approve` insists).
    let evaluation = v
        .evaluation
        .as_ref()
        .filter(|e| dao::eth::check_evaluation(tx, e).is_ok());
    let leaving: Vec<_> = evaluation
        .iter()
        .flat_map(|e| &e.leaving)
        .map(|(asset, amount, to)| json!({ "asset": asset, "amount": amount, "to": to }))
        .collect();
    let object = json!({
        "signing_hash": format!("0x{}", hex::encode(tx.signing_hash())),
        "chain_id": tx.chain_id(),
        "nonce": tx.nonce(),
        "to": to,
        "value_wei": tx.value().to_string(),
        "max_fee_wei": tx.max_fee().to_string(),
        "leaving": leaving,
    });
    let mut lines = vec![format!(
        "  transaction on chain {}, nonce {}: {} to {}, fee at most {}",
        tx.chain_id(),
        tx.nonce(),
        eth_amount(layout, tx.value()),
        to.as_deref().unwrap_or("a new contract"),
        eth_amount(layout, tx.max_fee()),
    )];
    if v.evaluation.is_some() && evaluation.is_none() {
        lines.push("  the provider evaluated another signing hash: do not approve".to_owned());
    }
    for (asset, amount, to) in evaluation.iter().flat_map(|e| &e.leaving) {
        let shown = amount.parse::<u128>().map_or_else(
            |_| format!("{amount} {asset}"),
            |a| layout.policy.show(a, asset),
        );
        lines.push(format!("  leaving: {shown} to {to}"));
    }
    (object_of(object), lines)
}

/// `wei` in the policy's units (ETH), or in wei where it exceeds what the policy counts.
fn eth_amount(layout: &Layout, wei: cosigner_eth::U256) -> String {
    u128::try_from(wei).map_or_else(
        |_| format!("{wei} wei"),
        |w| layout.policy.show(w, ASSET_ETH),
    )
}

fn object_of(value: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
    match value {
        serde_json::Value::Object(map) => map,
        _ => serde_json::Map::new(),
    }
}

/// A courier for `topic` of `wallet`, to the provider and mailbox it names (unless given).
fn courier_for(
    g: &Globals,
    trust: &Trust,
    wallet: &WalletFile,
    topic: Topic,
) -> anyhow::Result<Courier> {
    let (info, _) = dao::dao_info(wallet)?;
    courier_of(g, trust, info, topic)
}

/// A courier for `topic` of the DAO wallet `info` describes (either chain).
fn courier_of(
    g: &Globals,
    trust: &Trust,
    info: &dao::DaoInfo,
    topic: Topic,
) -> anyhow::Result<Courier> {
    let invitation = dao::invitation_of(info)?;
    let provider_addr = provider_addr(g, &invitation.provider);
    let provider = (
        Session::connect(&provider_addr, trust)?,
        provider_addr.as_str(),
    );
    let mailbox = mailbox_addr(g, &info.mailbox);
    courier(&home(g)?, trust, &invitation, provider, &mailbox, topic)
}

/// A courier for `topic` of the DAO wallet `invitation` describes, over the attested `provider`
/// session (and its address) and the mailbox at `mailbox`; its progress lines go to stderr.
fn courier(
    home: &Home,
    trust: &Trust,
    invitation: &Invitation,
    (provider, provider_addr): (Session, &str),
    mailbox: &str,
    topic: Topic,
) -> anyhow::Result<Courier> {
    let mailbox = dao::member_mailbox(home, mailbox, invitation)?;
    let mut courier = Courier::new(topic, mailbox, provider, provider_addr, trust)?;
    courier.on_progress(say);
    Ok(courier)
}

fn propose(g: &Globals, args: PolicyArgs) -> anyhow::Result<()> {
    let PolicyArgs { policy, proposal } = args;
    let home = home(g)?;
    let trust = trust(g)?;
    let id = wallet_id(&proposal.wallet)?;
    let wallet = AnyDao::load(&home, &id)?;
    let member = wallet.member()?;
    let text = read_text(&policy, "policy file")?;
    let invitation = dao::invitation_of(member.info)?;
    let mut provider = Session::connect(&provider_addr(g, &invitation.provider), &trust)?;
    let (_, version) = dao::policy_in_force(&mut provider, id)?;
    drop(provider);
    let (change, envelope) = dao::propose_policy(&home, member, &text, version)?;
    dao::write_envelope(&proposal.request_out, &envelope)?;
    say(&format!(
        "proposal to replace policy version {version} written to {}",
        proposal.request_out.display()
    ));
    let mut courier = courier_of(g, &trust, member.info, envelope.topic)?;
    courier.post(&envelope)?;
    let timeout = proposal.wait.timeout();
    let version = dao::approve_policy(&home, member, &mut courier, &change, timeout)?;
    if proposal.wait.json {
        emit(&json!({ "policy_version": version }).to_string())
    } else {
        emit(&format!("policy version {version} is in force"))
    }
}

/// `cosigner join INVITATION`: idempotent and resumable (see [`dao::run_dkg`]); a creator whose
/// `dao create` stopped finishes with `join` on its own invitation file.
pub fn join(g: &Globals, args: JoinArgs) -> anyhow::Result<()> {
    let home = home(g)?;
    let trust = trust(g)?;
    let envelope = dao::read_envelope(&args.invitation)?;
    let invitation = dao::open_invitation(&envelope)?;
    let layout = invitation.layout()?;
    let me = public_key_bytes(&home.device_key()?);
    let Some(party) = layout.member_party(&me) else {
        anyhow::bail!("this device's key is not a member of the invitation");
    };
    // Run again after it finished: the wallet this home holds, nothing contacted.
    if let Some(wallet) = dao::joined_wallet(&home, &invitation)? {
        return joined_out(&wallet, args.wait.json);
    }
    // Shown before anything is signed: who, what policy, what weights.
    say(&format!(
        "joining DAO wallet {} as {} (party {party}) on {}",
        layout.wallet_id,
        layout.name_of(party).unwrap_or("?"),
        invitation.network
    ));
    for (p, m) in &layout.members {
        say(&format!(
            "  member {p}: {} {}",
            m.name,
            hex::encode(&m.device_key)
        ));
    }
    say(&format!(
        "  provider parties {:?} (key {}), threshold {}",
        layout.provider_parties,
        hex::encode(&layout.provider_key),
        layout.params.min_signers
    ));
    say(&format!("  policy:\n{}", invitation.policy.trim_end()));
    let provider_addr = provider_addr(g, &invitation.provider);
    let provider = Session::connect(&provider_addr, &trust)?;
    let dkg = Dkg {
        home: &home,
        trust: &trust,
        invitation: &invitation,
        envelope: &envelope,
    };
    let mailbox = mailbox_addr(g, &invitation.mailbox);
    dkg.run((provider, &provider_addr), &mailbox, &args.wait)
}

/// A DKG this device takes part in: `invitation`, founded by `envelope`.
struct Dkg<'a> {
    home: &'a Home,
    trust: &'a Trust,
    invitation: &'a Invitation,
    envelope: &'a Envelope,
}

impl Dkg<'_> {
    /// Takes part over the attested `provider` session (and its address) and the mailbox at
    /// `mailbox` until the provider activated the wallet; prints the wallet.
    fn run(&self, provider: (Session, &str), mailbox: &str, wait: &Waiting) -> anyhow::Result<()> {
        let topic = self.envelope.topic;
        let mut courier = courier(
            self.home,
            self.trust,
            self.invitation,
            provider,
            mailbox,
            topic,
        )?;
        let (timeout, home) = (wait.timeout(), self.home);
        let wallet = dao::run_dkg(
            home,
            &mut courier,
            self.invitation,
            self.envelope,
            timeout,
            &mut say,
        )?;
        joined_out(&wallet, wait.json)
    }
}

/// A DAO wallet this device joined (or created), as `wallet create` prints one of its chain.
fn joined_out(wallet: &dao::Joined, json: bool) -> anyhow::Result<()> {
    match wallet {
        dao::Joined::Bitcoin(w) => created_out(w, json),
        dao::Joined::Ethereum(w) if json => emit(
            &json!({ "wallet_id": w.wallet_id.to_hex(), "address": w.address, "chain": "ethereum" })
                .to_string(),
        ),
        dao::Joined::Ethereum(w) => emit(&format!("wallet {}\naddress {}", w.wallet_id, w.address)),
    }
}

fn show_summary(s: &SpendSummary, e: &Evaluation) {
    show_spend(s);
    say(&format!(
        "  rule {:?}: needs {} approvals (the requester's included)",
        e.rule, e.approvals
    ));
}

fn check_evaluation(s: &SpendSummary, e: &Evaluation) -> anyhow::Result<()> {
    let theirs: Vec<(String, u64)> = s
        .destinations
        .iter()
        .map(|d| (d.address.clone(), d.amount))
        .collect();
    if e.value_leaving != s.value_leaving || e.fee != s.fee || e.destinations != theirs {
        anyhow::bail!(
            "the provider's reading of the PSBT differs from this device's: not approving"
        );
    }
    Ok(())
}

/// A published transaction must be the one this device read in the PSBT.
fn check_txid(summary: &SpendSummary, txid: &str) -> anyhow::Result<()> {
    if txid != summary.txid {
        anyhow::bail!(
            "the provider published transaction {txid}, this device read {} in the PSBT",
            summary.txid
        );
    }
    Ok(())
}

/// `cosigner sign --psbt` for a DAO wallet.
///
/// Run again with the same `--request-out` after it stopped, it goes on with the request in that
/// file (same wallet, same PSBT, made by this device) rather than making a second one: the
/// approvals already given count, and the spend is signed and counted once. It prints the
/// transaction if the provider already published it.
pub fn sign_dao(
    g: &Globals,
    home: &Home,
    wallet: &WalletFile,
    psbt: Vec<u8>,
    (request_out, psbt_out): (Option<&Path>, Option<&Path>),
    timeout: u64,
    json: bool,
) -> anyhow::Result<()> {
    let signed_out = |txid: &str, tx: &[u8], json: bool| {
        dao_signed_out(wallet, &psbt, psbt_out, (txid, tx), json)
    };
    let trust = trust(g)?;
    let (info, _) = dao::dao_info(wallet)?;
    let out = request_out.context("a DAO wallet needs --request-out FILE for the other members")?;
    let summary = dao::summarize(wallet, &psbt)?;
    let provider_key = info.provider_key()?;
    let earlier = dao::earlier_request(home, wallet, &psbt, out)?;
    let (request, envelope) = match earlier {
        Some((request, envelope, true)) => {
            say(&format!(
                "resuming the request in {} (made by this device for this PSBT)",
                out.display()
            ));
            (request, envelope)
        }
        other => {
            if let Some((old, old_envelope, _)) = other {
                // Too old for the provider to act on; if it was signed, that is the answer (a
                // new request would sign and count the same spend again).
                let mut courier = courier_for(g, &trust, wallet, old_envelope.topic)?;
                if let Some((txid, tx)) =
                    dao::peek_signed(&mut courier, &provider_key, &old.hash()?)?
                {
                    check_txid(&summary, &txid)?;
                    return signed_out(&txid, &tx, json);
                }
            }
            let (request, envelope) = dao::request(home, wallet, psbt.clone())?;
            dao::write_envelope(out, &envelope)?;
            say(&format!("request written to {}", out.display()));
            (request, envelope)
        }
    };
    // Members who were not sent the file find it with `cosigner dao requests`.
    if let Err(e) = dao::announce(home, wallet, &mailbox_addr(g, &info.mailbox), &envelope) {
        say(&format!(
            "could not list the request in the wallet's topic ({e}); send the request file to the approvers"
        ));
    }
    let mut courier = courier_for(g, &trust, wallet, envelope.topic)?;
    courier.post(&envelope)?;
    let timeout = Duration::from_secs(timeout);
    let mut taking = TakingPart::new(home, wallet, &request, &summary, courier, timeout);
    let evaluation = match taking.progress(&provider_key)? {
        Progress::Signed(txid, tx) => return signed_out(&txid, &tx, json),
        Progress::Evaluated(e) => e,
    };
    show_summary(&summary, &evaluation);
    let (txid, tx) = taking.approve_and_sign(&evaluation)?;
    signed_out(&txid, &tx, json)
}

/// What `sign --psbt` prints for a DAO wallet once the provider published the transaction: the
/// transaction, and (with `--psbt-out` or `--json`) the PSBT with each input's key signature read
/// back from it, every signature verified under its input's key.
fn dao_signed_out(
    wallet: &WalletFile,
    psbt: &[u8],
    psbt_out: Option<&Path>,
    (txid, tx): (&str, &[u8]),
    json: bool,
) -> anyhow::Result<()> {
    if psbt_out.is_none() && !json {
        return signed_out(txid, tx, json);
    }
    let keys = cosigner_client::address::own_keys(wallet)?;
    let signed = cosigner_protocol::psbt::with_key_sigs_of_tx(psbt, &keys, tx)?;
    let signed = super::wallet::psbt_out_written(&signed, psbt_out)?;
    if json {
        return emit(
            &serde_json::json!({ "txid": txid, "tx_hex": hex::encode(tx), "psbt": signed })
                .to_string(),
        );
    }
    signed_out(txid, tx, json)
}

/// This device's part in one signing request it posted or was sent: what it read in the PSBT,
/// its courier to the wallet's topic and the topic's envelopes read so far. The requester's
/// `sign --psbt` and an approver's `approve` share it.
struct TakingPart<'a> {
    home: &'a Home,
    wallet: &'a WalletFile,
    request: &'a SignRequest,
    summary: &'a SpendSummary,
    courier: Courier,
    backlog: Vec<Envelope>,
    timeout: Duration,
}

impl<'a> TakingPart<'a> {
    fn new(
        home: &'a Home,
        wallet: &'a WalletFile,
        request: &'a SignRequest,
        summary: &'a SpendSummary,
        courier: Courier,
        timeout: Duration,
    ) -> Self {
        Self {
            home,
            wallet,
            request,
            summary,
            courier,
            backlog: Vec::new(),
            timeout,
        }
    }

    /// Waits for the provider's evaluation of the request, or for the transaction it already
    /// published; either is checked against what this device read in the PSBT.
    fn progress(&mut self, provider_key: &[u8]) -> anyhow::Result<Progress> {
        let progress = dao::await_progress(
            &mut self.courier,
            provider_key,
            &self.request.hash()?,
            self.timeout,
            &mut self.backlog,
        )?;
        match &progress {
            Progress::Signed(txid, _) => check_txid(self.summary, txid)?,
            Progress::Evaluated(e) => check_evaluation(self.summary, e)?,
        }
        Ok(progress)
    }

    /// Approves the request (the evaluation checked and shown) and signs until the provider
    /// publishes the transaction.
    fn approve_and_sign(mut self, evaluation: &Evaluation) -> anyhow::Result<(String, Vec<u8>)> {
        Ok(dao::approve_and_sign(
            self.home,
            self.wallet,
            &mut self.courier,
            self.request,
            self.summary,
            evaluation,
            self.backlog,
            self.timeout,
        )?)
    }
}

fn confirm() -> anyhow::Result<bool> {
    let stdin = std::io::stdin();
    eprint!("approve? [y/N] ");
    std::io::stderr().flush()?;
    let mut line = String::new();
    stdin.lock().read_line(&mut line)?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes" | "YES"))
}

/// `cosigner approve --request REQ`.
pub fn approve(g: &Globals, args: ApproveArgs) -> anyhow::Result<()> {
    let home = home(g)?;
    let trust = trust(g)?;
    let envelope = dao::read_envelope(&args.request)?;
    let request = match dao::open_any_request(&envelope)? {
        dao::RequestFile::Sign(r) => r,
        dao::RequestFile::Policy(change) => {
            return approve_policy(g, &home, &trust, &envelope, &change, &args);
        }
        _ if args.reject => anyhow::bail!(
            "--reject says no to a signing request or a policy change; this file is a refresh \
             proposal (leave it unapproved)"
        ),
        dao::RequestFile::Refresh(proposal) => {
            return approve_refresh(g, &home, &trust, &envelope, &proposal, &args);
        }
    };
    if home.has_eth_wallet(&request.wallet_id) {
        return approve_treasury(g, &home, &trust, &envelope, &request, &args);
    }
    let wallet = home.wallet(&request.wallet_id)?;
    let (info, invitation) = dao::dao_info(&wallet)?;
    let layout = invitation.layout()?;
    let requester = layout
        .name_of(request.requester)
        .context("the request names a requester who is not a member")?;
    if layout.owner_of(request.requester) != Some(envelope.sender.as_slice()) {
        anyhow::bail!("the request is not signed by the member it names");
    }
    let summary = dao::summarize(&wallet, &request.psbt)?;
    let mut courier = courier_for(g, &trust, &wallet, envelope.topic)?;
    courier.post(&envelope)?;
    let provider_key = info.provider_key()?;
    let hash = request.hash()?;
    let me = public_key_bytes(&home.device_key()?);
    let timeout = args.wait.timeout();
    let mut taking = TakingPart::new(&home, &wallet, &request, &summary, courier, timeout);
    let evaluation = match taking.progress(&provider_key)? {
        Progress::Signed(txid, tx) => {
            // Run again after the end (or after others finished without us).
            let approved = dao::approved_before(&taking.backlog, &me, &hash);
            return approved_out(approved, &txid, &tx, args.wait.json);
        }
        Progress::Evaluated(e) => e,
    };
    say(&format!(
        "{requester} asks to sign with wallet {}",
        wallet.wallet_id
    ));
    show_summary(&summary, &evaluation);
    if dao::rejected_before(&taking.backlog, &me, &hash) {
        anyhow::bail!("this device rejected this request; the rejection stands");
    }
    if args.reject {
        if dao::approved_before(&taking.backlog, &me, &hash) {
            anyhow::bail!(
                "this device already approved this request; an approval cannot be withdrawn"
            );
        }
        let dead = dao::reject(
            &home,
            &wallet,
            &mut taking.courier,
            &request,
            &evaluation,
            &taking.backlog,
            args.reason.clone(),
        )?;
        return rejected_out(&hash, dead, args.wait.json);
    }
    if dao::approved_before(&taking.backlog, &me, &hash) {
        // Our approval is in the topic (given before this process stopped): it stands.
        say("this device already approved this request; taking part in the signing again");
    } else {
        approve_or_stop(args.yes)?;
    }
    let (txid, tx) = taking.approve_and_sign(&evaluation)?;
    approved_out(true, &txid, &tx, args.wait.json)
}

fn rejected_out(hash: &[u8; 32], dead: bool, json: bool) -> anyhow::Result<()> {
    if json {
        emit(
            &json!({
                "approved": false,
                "rejected": true,
                "request": hex::encode(hash),
                "dead": dead,
            })
            .to_string(),
        )
    } else if dead {
        emit("rejected; the request can no longer get its approvals: it is refused")
    } else {
        emit("rejected; the other members may still approve it")
    }
}

fn approved_out(approved: bool, txid: &str, tx: &[u8], json: bool) -> anyhow::Result<()> {
    if json {
        emit(&json!({ "approved": approved, "txid": txid, "tx_hex": hex::encode(tx) }).to_string())
    } else if approved {
        emit(&format!("approved; the transaction is signed\n{txid}"))
    } else {
        emit(&format!(
            "the transaction was signed without this device's approval\n{txid}"
        ))
    }
}

/// The wallet a proposal (`envelope`) of member `proposer` is for, with its invitation and
/// the proposer's name, once the proposal proved to be signed by that member.
fn proposal_wallet(
    home: &Home,
    wallet_id: &WalletId,
    proposer: PartyId,
    envelope: &Envelope,
) -> anyhow::Result<(AnyDao, Invitation, String)> {
    let wallet = AnyDao::load(home, wallet_id)?;
    let invitation = dao::invitation_of(wallet.member()?.info)?;
    let layout = invitation.layout()?;
    if layout.owner_of(proposer) != Some(envelope.sender.as_slice()) {
        anyhow::bail!("the proposal is not signed by the member it names");
    }
    let name = layout.name_of(proposer).unwrap_or("?").to_owned();
    Ok((wallet, invitation, name))
}

fn approve_policy(
    g: &Globals,
    home: &Home,
    trust: &Trust,
    envelope: &Envelope,
    change: &cosigner_protocol::dao::PolicyChange,
    args: &ApproveArgs,
) -> anyhow::Result<()> {
    let (wallet, invitation, proposer) =
        proposal_wallet(home, &change.wallet_id, change.proposer, envelope)?;
    let member = wallet.member()?;
    let mut provider = Session::connect(&provider_addr(g, &invitation.provider), trust)?;
    let (current, version) = dao::policy_in_force(&mut provider, change.wallet_id)?;
    drop(provider);
    say(&format!(
        "{proposer} proposes to replace policy version {} of wallet {} (in force: version {version})",
        change.from_version, member.wallet_id
    ));
    say(&format!("--- policy in force\n{}", current.trim_end()));
    say(&format!(
        "+++ proposed policy\n{}",
        change.policy.trim_end()
    ));
    let mut courier = courier_of(g, trust, member.info, envelope.topic)?;
    if args.reject {
        courier.post(envelope)?;
        let reason = args.reason.clone();
        let dead = dao::reject_policy(home, member, &mut courier, change, reason)?;
        return rejected_out(&change.hash()?, dead, args.wait.json);
    }
    approve_or_stop(args.yes)?;
    courier.post(envelope)?;
    let version = dao::approve_policy(home, member, &mut courier, change, args.wait.timeout())?;
    if args.wait.json {
        emit(&json!({ "approved": true, "policy_version": version }).to_string())
    } else {
        emit(&format!("approved; policy version {version} is in force"))
    }
}

/// `cosigner dao refresh --wallet ID --request-out REQ`.
fn refresh(g: &Globals, args: ProposalArgs) -> anyhow::Result<()> {
    let home = home(g)?;
    let trust = trust(g)?;
    let wallet = AnyDao::load(&home, &wallet_id(&args.wallet)?)?;
    let (proposal, envelope) = dao::propose_refresh(&home, wallet.member()?, wallet.epoch())?;
    dao::write_envelope(&args.request_out, &envelope)?;
    say(&format!(
        "proposal to refresh epoch {} written to {}; waiting for every member",
        proposal.from_epoch,
        args.request_out.display()
    ));
    run_refresh(g, &home, &trust, &wallet, &proposal, &envelope, &args.wait)
}

fn approve_refresh(
    g: &Globals,
    home: &Home,
    trust: &Trust,
    envelope: &Envelope,
    proposal: &RefreshProposal,
    args: &ApproveArgs,
) -> anyhow::Result<()> {
    let (wallet, _, proposer) =
        proposal_wallet(home, &proposal.wallet_id, proposal.proposer, envelope)?;
    say(&format!(
        "{proposer} proposes to refresh every share of wallet {} (epoch {} to {}; same key and address)",
        proposal.wallet_id,
        proposal.from_epoch,
        proposal.from_epoch.saturating_next()
    ));
    approve_or_stop(args.yes)?;
    run_refresh(g, home, trust, &wallet, proposal, envelope, &args.wait)
}

/// Takes part in the refresh `proposal` of `wallet` until the new epoch is current; prints it.
fn run_refresh(
    g: &Globals,
    home: &Home,
    trust: &Trust,
    wallet: &AnyDao,
    proposal: &RefreshProposal,
    envelope: &Envelope,
    wait: &Waiting,
) -> anyhow::Result<()> {
    let mut courier = courier_of(g, trust, wallet.member()?.info, envelope.topic)?;
    let timeout = wait.timeout();
    let (id, epoch, address) = match wallet {
        AnyDao::Bitcoin(w) => {
            let w = dao::run_refresh(home, w, &mut courier, proposal, envelope, timeout, &mut say)?;
            (w.wallet_id, w.epoch, w.address)
        }
        AnyDao::Ethereum(w) => {
            let w = dao::eth::run_treasury_refresh(
                home,
                w,
                &mut courier,
                proposal,
                envelope,
                timeout,
                &mut say,
            )?;
            (w.wallet_id, w.epoch, w.address)
        }
    };
    if wait.json {
        emit(&json!({ "epoch": epoch }).to_string())
    } else {
        emit(&format!(
            "wallet {id} refreshed: epoch {epoch} (address {address} unchanged)"
        ))
    }
}

/// `cosigner sign --eth-tx FILE --request-out REQ` for an Ethereum treasury: the request written
/// for the approvers, this device's approval, its part in the signing; prints `tx_hash` and
/// `raw_tx` once the provider published the transaction (checked: exactly this transaction,
/// signed by the treasury's key).
///
/// Run again with the same `--request-out` after it stopped, it goes on with the request in that
/// file (same wallet and transaction, made by this device), as `sign --psbt` does.
pub fn sign_treasury(
    g: &Globals,
    home: &Home,
    wallet: &EthWalletFile,
    tx: &cosigner_eth::TxRequest,
    request_out: Option<&Path>,
    timeout: u64,
    json: bool,
) -> anyhow::Result<()> {
    let trust = trust(g)?;
    let (info, _) = dao::eth::treasury_info(wallet)?;
    let out = request_out
        .context("an Ethereum treasury needs --request-out FILE for the other members")?;
    let provider_key = info.provider_key()?;
    let payload = tx.tx.signing_payload();
    let earlier = dao::earlier_request_for(home, (wallet.wallet_id, wallet.party), &payload, out)?;
    let (request, envelope) = match earlier {
        Some((request, envelope, true)) => {
            say(&format!(
                "resuming the request in {} (made by this device for this transaction)",
                out.display()
            ));
            (request, envelope)
        }
        other => {
            if let Some((old, old_envelope, _)) = other {
                let mut courier = courier_of(g, &trust, info, old_envelope.topic)?;
                if let Some((tx_hash, raw)) =
                    dao::peek_signed(&mut courier, &provider_key, &old.hash()?)?
                {
                    dao::eth::check_published(wallet, &tx.tx, &tx_hash, &raw)?;
                    return treasury_signed_out(None, &tx_hash, &raw, json);
                }
            }
            let (request, envelope) = dao::eth::request(home, wallet, tx)?;
            dao::write_envelope(out, &envelope)?;
            say(&format!("request written to {}", out.display()));
            (request, envelope)
        }
    };
    if let Err(e) = dao::announce_in(home, info, &mailbox_addr(g, &info.mailbox), &envelope) {
        say(&format!(
            "could not list the request in the wallet's topic ({e}); send the request file to the approvers"
        ));
    }
    let mut courier = courier_of(g, &trust, info, envelope.topic)?;
    courier.post(&envelope)?;
    let timeout = Duration::from_secs(timeout);
    let mut backlog = Vec::new();
    let hash = request.hash()?;
    let evaluation =
        match dao::await_progress(&mut courier, &provider_key, &hash, timeout, &mut backlog)? {
            Progress::Signed(tx_hash, raw) => {
                dao::eth::check_published(wallet, &tx.tx, &tx_hash, &raw)?;
                return treasury_signed_out(None, &tx_hash, &raw, json);
            }
            Progress::Evaluated(e) => e,
        };
    show_treasury_evaluation(&evaluation, &dao::invitation_of(info)?.layout()?.policy);
    let (tx_hash, raw) = dao::eth::approve_and_sign(
        home,
        wallet,
        &mut courier,
        &request,
        &tx.tx,
        &evaluation,
        backlog,
        timeout,
    )?;
    treasury_signed_out(None, &tx_hash, &raw, json)
}

/// What the provider read in an Ethereum request, and its rule.
fn show_treasury_evaluation(e: &Evaluation, policy: &cosigner_protocol::policy::Policy) {
    for (asset, amount, to) in &e.leaving {
        let shown = amount
            .parse::<u128>()
            .map_or_else(|_| format!("{amount} {asset}"), |a| policy.show(a, asset));
        say(&format!("  leaving: {shown} to {to}"));
    }
    say(&format!(
        "  rule {:?}: needs {} approvals (the requester's included)",
        e.rule, e.approvals
    ));
}

/// A treasury's signed transaction: `{"tx_hash","raw_tx"}` (and `approved` for `approve`).
fn treasury_signed_out(
    approved: Option<bool>,
    tx_hash: &str,
    raw: &[u8],
    json: bool,
) -> anyhow::Result<()> {
    let raw_tx = format!("0x{}", hex::encode(raw));
    if json {
        let out = match approved {
            Some(approved) => json!({ "approved": approved, "tx_hash": tx_hash, "raw_tx": raw_tx }),
            None => json!({ "tx_hash": tx_hash, "raw_tx": raw_tx }),
        };
        emit(&out.to_string())
    } else {
        emit(&format!("{tx_hash}\n{raw_tx}"))
    }
}

/// `cosigner approve --request REQ` of an Ethereum treasury's request.
fn approve_treasury(
    g: &Globals,
    home: &Home,
    trust: &Trust,
    envelope: &Envelope,
    request: &SignRequest,
    args: &ApproveArgs,
) -> anyhow::Result<()> {
    let wallet = home.eth_wallet(&request.wallet_id)?;
    let (info, invitation) = dao::eth::treasury_info(&wallet)?;
    let layout = invitation.layout()?;
    let requester = layout
        .name_of(request.requester)
        .context("the request names a requester who is not a member")?;
    if layout.owner_of(request.requester) != Some(envelope.sender.as_slice()) {
        anyhow::bail!("the request is not signed by the member it names");
    }
    let tx = dao::eth::transaction_of(request)?;
    let mut courier = courier_of(g, trust, info, envelope.topic)?;
    courier.post(envelope)?;
    let provider_key = info.provider_key()?;
    let hash = request.hash()?;
    let me = public_key_bytes(&home.device_key()?);
    let timeout = args.wait.timeout();
    let mut backlog = Vec::new();
    let evaluation =
        match dao::await_progress(&mut courier, &provider_key, &hash, timeout, &mut backlog)? {
            Progress::Signed(tx_hash, raw) => {
                dao::eth::check_published(&wallet, &tx, &tx_hash, &raw)?;
                let approved = dao::approved_before(&backlog, &me, &hash);
                return treasury_signed_out(Some(approved), &tx_hash, &raw, args.wait.json);
            }
            Progress::Evaluated(e) => e,
        };
    dao::eth::check_evaluation(&tx, &evaluation)?;
    let to = tx.to().map_or("a new contract".to_owned(), |a| {
        cosigner_eth::checksummed(&a)
    });
    say(&format!(
        "{requester} asks to sign with treasury {} ({}): chain {}, nonce {}, {} wei to {to}, \
         fee at most {} wei",
        wallet.wallet_id,
        wallet.address,
        tx.chain_id(),
        tx.nonce(),
        tx.value(),
        tx.max_fee()
    ));
    show_treasury_evaluation(&evaluation, &layout.policy);
    if dao::rejected_before(&backlog, &me, &hash) {
        anyhow::bail!("this device rejected this request; the rejection stands");
    }
    if args.reject {
        if dao::approved_before(&backlog, &me, &hash) {
            anyhow::bail!(
                "this device already approved this request; an approval cannot be withdrawn"
            );
        }
        let dead = dao::reject_in(
            home,
            &invitation,
            wallet.party,
            &mut courier,
            request,
            &evaluation,
            &backlog,
            args.reason.clone(),
        )?;
        return rejected_out(&hash, dead, args.wait.json);
    }
    if dao::approved_before(&backlog, &me, &hash) {
        say("this device already approved this request; taking part in the signing again");
    } else {
        approve_or_stop(args.yes)?;
    }
    let (tx_hash, raw) = dao::eth::approve_and_sign(
        home,
        &wallet,
        &mut courier,
        request,
        &tx,
        &evaluation,
        backlog,
        timeout,
    )?;
    treasury_signed_out(Some(true), &tx_hash, &raw, args.wait.json)
}
