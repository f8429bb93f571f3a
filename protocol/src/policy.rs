//! The spending policy: TOML rules, first match decides, deny by default.
//!
//! A policy is a list of `[[rule]]` tables evaluated in order against a [`Spend`] (the value leaving
//! the wallet and its destinations, as [`crate::psbt::analyze`] computed them, plus the wallet's
//! recent spends). The first rule whose every condition holds decides: it names how many approvals
//! (k of a named set of members) the spend needs, or, with `deny = true`, refuses it. When no rule
//! matches, the spend is refused. The enclave evaluates it; members' devices run the same code to
//! show what they approve.
//!
//! ```toml
//! [admin]                      # optional: who may change the policy (default: every member)
//! approvals = 5
//!
//! [[rule]]
//! name = "small"
//! asset = "btc"                # optional, default "btc"; amounts are in the asset's base unit,
//!                              # or strings with a unit: "0.1 BTC", "250000 sat" (`crate::units`)
//! below = 1_000_000_000        # optional: matches if value leaving < below
//! destinations = ["bc1q…"]     # optional: matches if every destination is listed
//! velocity = { window_hours = 24, limit = 50_000_000 }  # optional: recent spends + this <= limit
//! max_fee = 100_000            # optional: matches if the fee <= max_fee
//! approvals = 3                # k; the requester counts as one
//! approvers = ["alice", "bob", "carol", "dave"]         # optional, default: every member
//! # deny = true                # a matching rule refuses (then no approvals/approvers)
//! ```
//!
//! Refused at parse time: unknown keys, no rules, duplicate rule names, approver names not in the
//! members file, `approvals` of 0 or above the approver set, a rule after an unconditional rule of
//! the same asset (it could never match), a velocity window of 0 hours, a policy whose every rule
//! denies, a `max_fee` on a deny rule. Asset names are lowercase (`"BTC"` is refused rather than
//! silently never matching); a rule naming another asset never matches a `btc` spend.
//!
//! # Ethereum
//!
//! A policy is parsed for its wallet's [`Chain`]. For Ethereum the default asset is `eth`
//! (amounts in wei, or `"10 ETH"`, `"30 gwei"`), and a `[[token]]` table names the ERC-20 tokens
//! the policy knows (`symbol`, `address`, `decimals`): each is an asset of its own, named by its
//! symbol in lower case, whose amounts may be written with the symbol (`"500 USDC"`). An asset
//! that is neither `eth` nor in the table is refused (a typo would otherwise never match). A call
//! the enclave cannot value (a contract function other than ERC-20's, or of a token not in the
//! table) is a [`Spend`] with [`Spend::call`] set: only an allowing rule that names the contract
//! in its `calls` matches it (deny rules still refuse it), and a rule with `calls` matches
//! nothing else. How an Ethereum transaction becomes
//! spends is `cosigner_eth::judge`'s business; this module only weighs them.
//!
//! # Fees
//!
//! The fee is value that leaves the wallet (to the miners), so it counts wherever value leaving
//! does: `value_leaving` is inputs − change, fee included, and `below` and `velocity` compare it
//! (and the history records it) with the fee in. What a destination list says is where value may
//! go, and the fee goes to none of the listed destinations, so a list alone does not allow it: an
//! allowing rule with `destinations` matches only if the fee is bounded, by its own `max_fee`
//! (fee ≤ `max_fee`) or, without one, by its `below` or `velocity` (which count the fee). An
//! allowlist-only rule without `max_fee` treats the fee like a payment to an unlisted address and
//! matches only a spend that pays none. Without this, a rule meant as "pay our payroll address"
//! would sign a transaction paying 1 000 sat to payroll and everything else to a (colluding)
//! miner. `max_fee` may bound any allowing rule. Deny rules are not narrowed by the fee: a deny
//! rule that lists every destination of a spend refuses it whatever the fee.
//!
//! [`Policy::evaluate_with_fee`] judges with the fee the caller computed ([`crate::psbt`]'s
//! `SpendSummary::fee`); [`Policy::evaluate`], for a caller that has only `value_leaving`, assumes
//! the worst: all of it may be fee.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;

use crate::units::{AmountText, BTC_UNITS, ETH_UNITS, Unit, format_amount};
use crate::{ProtocolError, Result};

/// Bitcoin's asset, the default of a Bitcoin policy.
pub const ASSET_BTC: &str = "btc";

/// Ether, the default asset of an Ethereum policy.
pub const ASSET_ETH: &str = "eth";

/// Most tokens an Ethereum policy's table may name.
pub const MAX_TOKENS: usize = 64;

/// The chain a policy is for: it decides the default asset, the units amounts may be written in
/// and which assets exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Chain {
    /// Bitcoin: amounts in satoshis; assets other than `btc` never match.
    #[default]
    Bitcoin,
    /// Ethereum: amounts in wei or a token's base unit; `eth` and the token table's assets.
    Ethereum,
}

impl Chain {
    /// The chain of a wallet whose network is named `network` (`"ethereum"`, or a Bitcoin
    /// network).
    pub fn of_network(network: Option<&str>) -> Chain {
        match network {
            Some(NETWORK_ETHEREUM) => Chain::Ethereum,
            _ => Chain::Bitcoin,
        }
    }

    fn default_asset(self) -> &'static str {
        match self {
            Chain::Bitcoin => ASSET_BTC,
            Chain::Ethereum => ASSET_ETH,
        }
    }
}

/// The network name Ethereum wallets are registered under.
pub const NETWORK_ETHEREUM: &str = "ethereum";

/// An ERC-20 token of an Ethereum policy's `[[token]]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// Its symbol as the table writes it (`"USDC"`): the unit its amounts may be written in.
    pub symbol: String,
    /// The asset name rules use: the symbol in lower case.
    pub asset: String,
    /// The token contract.
    pub address: [u8; 20],
    /// How many decimals one token has in base units (EIP-20's `decimals`).
    pub decimals: u8,
}

impl Token {
    fn unit(&self) -> Unit<'_> {
        Unit {
            name: &self.symbol,
            decimals: self.decimals,
        }
    }
}

/// Most members a wallet may have.
pub const MAX_MEMBERS: usize = 64;

/// Most rules a policy may have.
pub const MAX_RULES: usize = 256;

/// Largest policy or members file read.
pub const MAX_POLICY_TEXT: usize = 256 * 1024;

const MS_PER_HOUR: u64 = 3_600_000;

/// Longest velocity window: 366 days, the spend history the enclaves keep.
pub const MAX_WINDOW_HOURS: u32 = 366 * 24;

/// A member of a (DAO) wallet: a name used in policies, and the device key that signs for them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Unique name within the wallet.
    pub name: String,
    /// SEC1 compressed P-256 device key (normalised).
    pub device_key: Vec<u8>,
}

/// Parses a members file: `[[member]]` tables with `name` and `device_key` (hex SEC1 P-256, either
/// form; stored compressed). Names and keys must be distinct, 1 to [`MAX_MEMBERS`] members.
pub fn parse_members(toml_text: &str) -> Result<Vec<Member>> {
    check_text_size(toml_text)?;
    let file: MembersFile =
        toml::from_str(toml_text).map_err(|e| policy_error(format!("members file: {e}")))?;
    if file.member.is_empty() {
        return Err(policy_error("members file names no [[member]]"));
    }
    if file.member.len() > MAX_MEMBERS {
        return Err(policy_error(format!(
            "{} members, at most {MAX_MEMBERS}",
            file.member.len()
        )));
    }
    let mut names = BTreeSet::new();
    let mut keys = BTreeSet::new();
    let mut members = Vec::with_capacity(file.member.len());
    for entry in file.member {
        check_name("member", &entry.name)?;
        if !names.insert(entry.name.clone()) {
            return Err(policy_error(format!(
                "member {:?} is listed twice",
                entry.name
            )));
        }
        let raw = hex::decode(entry.device_key.trim())
            .map_err(|_| policy_error(format!("member {:?}: device_key is not hex", entry.name)))?;
        let device_key = crate::auth::normalise_public_key(&raw).map_err(|_| {
            policy_error(format!(
                "member {:?}: device_key is not a P-256 public key",
                entry.name
            ))
        })?;
        if !keys.insert(device_key.clone()) {
            return Err(policy_error(format!(
                "member {:?} has the device key of another member",
                entry.name
            )));
        }
        members.push(Member {
            name: entry.name,
            device_key,
        });
    }
    Ok(members)
}

/// k approvals out of a named set of members.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quorum {
    /// How many of `approvers` must approve.
    pub approvals: u16,
    /// Member names, in members-file order.
    pub approvers: Vec<String>,
}

/// A spend to judge.
#[derive(Debug, Clone, Copy)]
pub struct Spend<'a> {
    /// The asset spent (`"btc"`, `"eth"`, a token's).
    pub asset: &'a str,
    /// Value leaving the wallet, fee included, in the asset's base unit (satoshis, wei): what
    /// `below` and `velocity` compare, so the fee counts toward them.
    pub value_leaving: u128,
    /// Destination addresses (as [`crate::psbt::Destination::address`] renders them).
    pub destinations: &'a [String],
    /// The evaluation time, milliseconds since the Unix epoch.
    pub now_ms: u64,
    /// The wallet's past spends (any order; the velocity rules pick their window and asset).
    pub history: &'a [PastSpend],
    /// The contract (a normalised `0x…` address) of a call that could not be valued: only an
    /// allowing rule naming it in `calls` matches. `None` for a spend that was valued.
    pub call: Option<&'a str>,
}

/// A spend the wallet made, for velocity limits.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct PastSpend {
    /// When it was signed, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// Its asset.
    pub asset: String,
    /// Value that left the wallet, in the asset's base unit (CBOR stores values below 2^64 as
    /// before, so records written when this was a `u64` read unchanged).
    pub amount: u128,
}

/// A spend allowed by a rule, with the approvals it needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// The rule that matched.
    pub rule: String,
    /// How many of `approvers` must approve (the requester counts as one).
    pub approvals: u16,
    /// Member names, in members-file order.
    pub approvers: Vec<String>,
}

/// A spend refused by the policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Denial {
    /// Why, for people: `no rule matches: …` or `rule "…" denies …`.
    pub reason: String,
}

impl std::fmt::Display for Denial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

/// A parsed, validated policy, with the text it came from.
#[derive(Debug, Clone)]
pub struct Policy {
    source: String,
    chain: Chain,
    tokens: Vec<Token>,
    /// Ethereum: the chain ids (EIP-155) transactions may name; empty: any.
    chain_ids: Vec<u64>,
    members: Vec<Member>,
    admin: Quorum,
    rules: Vec<Rule>,
}

#[derive(Debug, Clone)]
struct Rule {
    name: String,
    asset: String,
    below: Option<u128>,
    destinations: Option<BTreeSet<String>>,
    velocity: Option<Velocity>,
    /// The largest fee an allowing rule allows (see the module docs, "Fees").
    max_fee: Option<u128>,
    /// Contracts whose calls this allowing rule allows without valuing them (it then matches
    /// only such calls).
    calls: Option<BTreeSet<String>>,
    /// `None` for a deny rule.
    quorum: Option<Quorum>,
}

#[derive(Debug, Clone, Copy)]
struct Velocity {
    window_ms: u64,
    limit: u128,
}

/// What a rule is read with: its chain, its asset's units, the token table's contracts.
struct Context<'a> {
    chain: Chain,
    units: Vec<Unit<'a>>,
    tokens: Vec<[u8; 20]>,
}

impl Rule {
    /// Parses and checks one `[[rule]]` (`what` names it in errors) of `asset` (checked, and not
    /// shadowed by an earlier rule: [`Policy::parse`] sees to both) against the wallet's members.
    fn parse(
        what: &str,
        asset: String,
        context: &Context<'_>,
        entry: RuleEntry,
        members: &[Member],
    ) -> Result<Rule> {
        let units = &context.units;
        let velocity = entry
            .velocity
            .map(|v| Velocity::parse(what, units, &v))
            .transpose()?;
        let below = base_amount(what, "below", units, entry.below.as_ref())?;
        let max_fee = base_amount(what, "max_fee", units, entry.max_fee.as_ref())?;
        let destinations = entry
            .destinations
            .map(|list| parse_destinations(what, context.chain, list))
            .transpose()?;
        let calls = entry
            .calls
            .map(|list| parse_calls(what, context, list))
            .transpose()?;
        let quorum = if entry.deny == Some(true) {
            if calls.is_some() {
                return Err(policy_error(format!(
                    "{what} denies: it takes no calls (a deny rule refuses calls whatever they are)"
                )));
            }
            if entry.approvals.is_some() || entry.approvers.is_some() {
                return Err(policy_error(format!(
                    "{what} denies: it takes no approvals or approvers"
                )));
            }
            // A bound on the fee narrows what a rule allows; on a deny rule it would only
            // narrow what it refuses, letting a spend with a larger fee past it.
            if entry.max_fee.is_some() {
                return Err(policy_error(format!(
                    "{what} denies: it takes no max_fee (a bound on what a rule allows)"
                )));
            }
            None
        } else {
            let approvals = entry
                .approvals
                .ok_or_else(|| policy_error(format!("{what} names no approvals")))?;
            Some(quorum(what, approvals, entry.approvers, members)?)
        };
        Ok(Rule {
            name: entry.name,
            asset,
            below,
            destinations,
            velocity,
            max_fee,
            calls,
            quorum,
        })
    }
}

/// An amount of a rule in its asset's base unit: a plain integer, or a string with one of the
/// asset's `units` (`"0.1 BTC"`, `"10 ETH"`, `"500 USDC"`; [`crate::units`]).
fn base_amount(
    what: &str,
    field: &str,
    units: &[Unit<'_>],
    amount: Option<&AmountText>,
) -> Result<Option<u128>> {
    amount
        .map(|amount| {
            amount
                .to_base(units)
                .map_err(|e| policy_error(format!("{what}: {field} {e}")))
        })
        .transpose()
}

impl Velocity {
    fn parse(what: &str, units: &[Unit<'_>], v: &VelocityEntry) -> Result<Velocity> {
        if v.window_hours == 0 {
            return Err(policy_error(format!("{what}: velocity window of 0 hours")));
        }
        // The enclaves keep a year of spend history (a leap year's hours): a longer window would
        // silently forget spends.
        if v.window_hours > MAX_WINDOW_HOURS {
            return Err(policy_error(format!(
                "{what}: velocity window of {} hours, at most {MAX_WINDOW_HOURS} (a year)",
                v.window_hours
            )));
        }
        let limit = base_amount(what, "velocity limit", units, Some(&v.limit))?.unwrap_or_default();
        Ok(Velocity {
            window_ms: u64::from(v.window_hours) * MS_PER_HOUR,
            limit,
        })
    }
}

/// A rule's `destinations`, normalised; an empty entry or one with white space is refused, and
/// on Ethereum anything but `0x` and 40 hex digits (a typo in a deny rule must not silently
/// refuse nothing).
fn parse_destinations(what: &str, chain: Chain, list: Vec<String>) -> Result<BTreeSet<String>> {
    let mut set = BTreeSet::new();
    for d in list {
        let malformed = d.is_empty()
            || d.chars().any(char::is_whitespace)
            || (chain == Chain::Ethereum && parse_eth_address(&d).is_none());
        if malformed {
            return Err(policy_error(format!(
                "{what}: destination {d:?} is not an address"
            )));
        }
        set.insert(normalise_destination(&d));
    }
    Ok(set)
}

/// A rule's `calls`: Ethereum contract addresses (`0x` and 40 hex digits), normalised; never a
/// token of the table (its calls are valued by the token's rules, or refused).
fn parse_calls(what: &str, context: &Context<'_>, list: Vec<String>) -> Result<BTreeSet<String>> {
    if context.chain != Chain::Ethereum {
        return Err(policy_error(format!(
            "{what}: calls are for Ethereum wallets"
        )));
    }
    let mut set = BTreeSet::new();
    for contract in list {
        let address = parse_eth_address(&contract)
            .ok_or_else(|| policy_error(format!("{what}: call {contract:?} is not an address")))?;
        if context.tokens.contains(&address) {
            return Err(policy_error(format!(
                "{what}: call {contract:?} is a token of the [[token]] table (its transfers are \
                 valued by the token's rules; other functions of it are refused)"
            )));
        }
        set.insert(eth_address_text(&address));
    }
    Ok(set)
}

/// `0x` and 40 hex digits (any case: EIP-55's mixed case is a checksum the enclave need not
/// trust, since it compares the bytes).
pub fn parse_eth_address(text: &str) -> Option<[u8; 20]> {
    let digits = text.strip_prefix("0x")?;
    if digits.len() != 40 {
        return None;
    }
    hex::decode(digits).ok()?.try_into().ok()
}

/// How a policy compares Ethereum addresses: `0x` and 40 lower-case hex digits.
pub fn eth_address_text(address: &[u8; 20]) -> String {
    format!("0x{}", hex::encode(address))
}

/// Parses an Ethereum policy's `[[token]]` table.
fn parse_tokens(chain: Chain, entries: Vec<TokenEntry>) -> Result<Vec<Token>> {
    if entries.is_empty() {
        return Ok(Vec::new());
    }
    if chain != Chain::Ethereum {
        return Err(policy_error("a [[token]] table is for Ethereum wallets"));
    }
    if entries.len() > MAX_TOKENS {
        return Err(policy_error(format!(
            "{} tokens, at most {MAX_TOKENS}",
            entries.len()
        )));
    }
    let mut tokens: Vec<Token> = Vec::with_capacity(entries.len());
    for entry in entries {
        let what = format!("token {:?}", entry.symbol);
        let ok = !entry.symbol.is_empty()
            && entry.symbol.len() <= 11
            && entry.symbol.chars().all(|c| c.is_ascii_alphanumeric());
        if !ok {
            return Err(policy_error(format!(
                "{what}: a symbol is 1 to 11 letters or digits"
            )));
        }
        let asset = entry.symbol.to_ascii_lowercase();
        if asset == ASSET_ETH || tokens.iter().any(|t| t.asset == asset) {
            return Err(policy_error(format!(
                "{what}: the asset {asset:?} is already named"
            )));
        }
        let address = parse_eth_address(&entry.address)
            .ok_or_else(|| policy_error(format!("{what}: address is not 0x and 40 hex digits")))?;
        if tokens.iter().any(|t| t.address == address) {
            return Err(policy_error(format!(
                "{what}: the contract {} is already in the table",
                entry.address
            )));
        }
        // u128 holds 10^38: a token with more decimals could not be written with its symbol.
        if entry.decimals > 36 {
            return Err(policy_error(format!("{what}: at most 36 decimals")));
        }
        tokens.push(Token {
            symbol: entry.symbol,
            asset,
            address,
            decimals: entry.decimals,
        });
    }
    Ok(tokens)
}

impl Policy {
    /// Parses and validates a policy against the wallet's members (see the module docs for what
    /// is refused).
    pub fn parse(toml_text: &str, members: &[Member]) -> Result<Policy> {
        Policy::parse_for(Chain::Bitcoin, toml_text, members)
    }

    /// [`Policy::parse`] for a wallet on `chain` (module docs, "Ethereum").
    pub fn parse_for(chain: Chain, toml_text: &str, members: &[Member]) -> Result<Policy> {
        check_text_size(toml_text)?;
        if members.is_empty() {
            return Err(policy_error("the wallet has no members"));
        }
        let file: PolicyFile =
            toml::from_str(toml_text).map_err(|e| policy_error(format!("policy: {e}")))?;
        let all: Vec<String> = members.iter().map(|m| m.name.clone()).collect();
        let admin = match file.admin {
            Some(admin) => quorum("[admin]", admin.approvals, admin.approvers, members)?,
            None => Quorum {
                approvals: u16::try_from(all.len())
                    .map_err(|_| policy_error("too many members"))?,
                approvers: all,
            },
        };
        let tokens = parse_tokens(chain, file.token)?;
        let chain_ids = match file.chain_ids {
            Some(_) if chain != Chain::Ethereum => {
                return Err(policy_error("chain_ids are for Ethereum wallets"));
            }
            Some(ids) if ids.is_empty() || ids.contains(&0) => {
                return Err(policy_error(
                    "chain_ids: name at least one chain, and no chain id 0",
                ));
            }
            Some(ids) => ids,
            None => Vec::new(),
        };
        if file.rule.is_empty() {
            return Err(policy_error("no [[rule]]: every spend would be denied"));
        }
        if file.rule.len() > MAX_RULES {
            return Err(policy_error(format!(
                "{} rules, at most {MAX_RULES}",
                file.rule.len()
            )));
        }
        let mut names = BTreeSet::new();
        // Assets that an earlier rule already matches unconditionally.
        let mut caught: BTreeSet<String> = BTreeSet::new();
        let mut rules = Vec::with_capacity(file.rule.len());
        for entry in file.rule {
            check_name("rule", &entry.name)?;
            let what = format!("rule {:?}", entry.name);
            if !names.insert(entry.name.clone()) {
                return Err(policy_error(format!("{what} is defined twice")));
            }
            let asset = entry
                .asset
                .as_deref()
                .unwrap_or(chain.default_asset())
                .to_string();
            check_asset(&what, &asset)?;
            let context = Context {
                tokens: tokens.iter().map(|t| t.address).collect(),
                chain,
                units: units_of(chain, &tokens, &asset).ok_or_else(|| {
                    policy_error(format!(
                        "{what}: asset {asset:?} is neither \"eth\" nor a token of the [[token]] table"
                    ))
                })?,
            };
            // A rule with `calls` is for calls nobody valued, which no catch-all matches.
            if caught.contains(&asset) && entry.calls.is_none() {
                return Err(policy_error(format!(
                    "{what} can never match: an earlier rule matches every {asset} spend"
                )));
            }
            let rule = Rule::parse(&what, asset, &context, entry, members)?;
            if rule.below.is_none()
                && rule.destinations.is_none()
                && rule.velocity.is_none()
                && rule.max_fee.is_none()
                && rule.calls.is_none()
            {
                caught.insert(rule.asset.clone());
            }
            rules.push(rule);
        }
        if rules.iter().all(|r| r.quorum.is_none()) {
            return Err(policy_error(
                "every rule denies: nothing could ever be spent",
            ));
        }
        Ok(Policy {
            source: toml_text.to_string(),
            chain,
            tokens,
            chain_ids,
            members: members.to_vec(),
            admin,
            rules,
        })
    }

    /// The smallest number of approvals any allowing rule needs (the DAO's k_min).
    pub fn min_approvals(&self) -> u16 {
        self.rules
            .iter()
            .filter_map(|r| r.quorum.as_ref().map(|q| q.approvals))
            .min()
            .unwrap_or(u16::MAX)
    }

    /// The quorum that may change this policy; default: every member.
    pub fn admin(&self) -> Quorum {
        self.admin.clone()
    }

    /// The chain the policy was parsed for.
    pub fn chain(&self) -> Chain {
        self.chain
    }

    /// The token table (Ethereum).
    pub fn tokens(&self) -> &[Token] {
        &self.tokens
    }

    /// Whether a transaction for EIP-155 chain `chain_id` may be signed: one the policy's
    /// `chain_ids` name, or any where it names none.
    pub fn allows_chain(&self, chain_id: u64) -> bool {
        self.chain_ids.is_empty() || self.chain_ids.contains(&chain_id)
    }

    /// The token of the table whose contract is `address`.
    pub fn token_at(&self, address: &[u8; 20]) -> Option<&Token> {
        self.tokens.iter().find(|t| &t.address == address)
    }

    /// `value` base units of `asset` as people read them: `12.5 ETH`, `500 USDC`; satoshis for
    /// bitcoin (a refusal that said "5000000 btc" would overstate it a hundred million times).
    pub fn show(&self, value: u128, asset: &str) -> String {
        match units_of(self.chain, &self.tokens, asset).and_then(|u| u.first().copied()) {
            Some(unit) if asset != ASSET_BTC => format_amount(value, &unit),
            _ if asset == ASSET_BTC => format!("{value} sat"),
            _ => format!("{value} (base units of {asset})"),
        }
    }

    /// The members the policy was checked against.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// The text the policy was parsed from, byte for byte.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// SHA-256 of [`Policy::source`]: approvals are bound to it.
    pub fn digest(&self) -> [u8; 32] {
        Sha256::digest(self.source.as_bytes()).into()
    }

    /// The first matching rule's decision; no match, or a matching `deny` rule, is a [`Denial`].
    ///
    /// The fee is not known here, so it is taken to be all of `value_leaving`, the most it can be:
    /// a rule that bounds the fee allows the spend only if the whole of it could be fee (fail
    /// closed). Callers that know the fee use [`Policy::evaluate_with_fee`].
    pub fn evaluate(&self, spend: &Spend<'_>) -> std::result::Result<Decision, Denial> {
        self.judge(spend, spend.value_leaving, "")
    }

    /// The first matching rule's decision for a spend paying `fee` (part of `value_leaving`,
    /// which is refused if smaller: the two facts would contradict each other).
    pub fn evaluate_with_fee(
        &self,
        spend: &Spend<'_>,
        fee: u128,
    ) -> std::result::Result<Decision, Denial> {
        if fee > spend.value_leaving {
            return Err(Denial {
                reason: format!(
                    "inconsistent spend: a fee of {} is more than the {} leaving",
                    self.show(fee, spend.asset),
                    self.show(spend.value_leaving, spend.asset)
                ),
            });
        }
        let note = match self.chain {
            Chain::Bitcoin => format!("; fee {fee}"),
            _ => format!("; fee {}", self.show(fee, spend.asset)),
        };
        self.judge(spend, fee, &note)
    }

    /// The first rule matching `spend` with `fee` decides; `note` ends every denial's reason.
    fn judge(
        &self,
        spend: &Spend<'_>,
        fee: u128,
        note: &str,
    ) -> std::result::Result<Decision, Denial> {
        for rule in &self.rules {
            if !rule.matches(spend, fee) {
                continue;
            }
            return match &rule.quorum {
                Some(q) => Ok(Decision {
                    rule: rule.name.clone(),
                    approvals: q.approvals,
                    approvers: q.approvers.clone(),
                }),
                None => Err(Denial {
                    reason: format!(
                        "rule {:?} denies {} leaving to {}{note}",
                        rule.name,
                        self.show(spend.value_leaving, spend.asset),
                        describe(spend.destinations)
                    ),
                }),
            };
        }
        Err(Denial {
            reason: format!(
                "no rule matches: {}{} leaving to {}{note}",
                spend.call.map_or(String::new(), |c| format!(
                    "a call of {c} that cannot be valued, "
                )),
                self.show(spend.value_leaving, spend.asset),
                describe(spend.destinations)
            ),
        })
    }
}

impl Rule {
    fn matches(&self, spend: &Spend<'_>, fee: u128) -> bool {
        if self.asset != spend.asset {
            return false;
        }
        // A call nobody valued is allowed only by a rule that names its contract, and a rule
        // with `calls` is for such calls only; a deny rule is not narrowed by either.
        let allowed_call = match (spend.call, &self.calls) {
            (Some(contract), Some(calls)) => calls.contains(contract),
            (Some(_), None) => self.quorum.is_none(),
            (None, Some(_)) => false,
            (None, None) => true,
        };
        if !allowed_call {
            return false;
        }
        if let Some(below) = self.below
            && spend.value_leaving >= below
        {
            return false;
        }
        if let Some(allowed) = &self.destinations
            && !spend
                .destinations
                .iter()
                .all(|d| allowed.contains(&normalise_destination(d)))
        {
            return false;
        }
        if let Some(velocity) = self.velocity {
            // Spends older than the window are ignored; an overflowing sum fails closed.
            let since = spend.now_ms.saturating_sub(velocity.window_ms);
            let total = spend
                .history
                .iter()
                .filter(|p| p.asset == self.asset && p.at_ms >= since)
                .try_fold(spend.value_leaving, |sum, p| sum.checked_add(p.amount));
            match total {
                Some(total) if total <= velocity.limit => {}
                _ => return false,
            }
        }
        // Only an allowing rule is narrowed by the fee: narrowing a deny rule would let through
        // what it refuses.
        self.quorum.is_none() || self.allows_fee(fee)
    }

    /// Whether this allowing rule allows `fee` (module docs, "Fees").
    fn allows_fee(&self, fee: u128) -> bool {
        match self.max_fee {
            Some(max_fee) => fee <= max_fee,
            // The fee goes to no listed destination: allowed only under an amount bound, which
            // counts it as value leaving, or if there is none.
            None if self.destinations.is_some() => {
                fee == 0 || self.below.is_some() || self.velocity.is_some()
            }
            // Without a list, the fee is value leaving like any other.
            None => true,
        }
    }
}

fn describe(destinations: &[String]) -> String {
    match destinations {
        [] => "no destination (the wallet itself)".into(),
        [one] => one.clone(),
        many => format!("{} destinations ({})", many.len(), many.join(", ")),
    }
}

/// Bech32 addresses are case-insensitive (all upper case in QR codes), and so are Ethereum's
/// (EIP-55's mixed case is only a checksum); compare them lower case. Base58 addresses and
/// `script:` entries are compared as they are.
fn normalise_destination(address: &str) -> String {
    let lower = address.to_ascii_lowercase();
    if ["bc1", "tb1", "bcrt1", "0x"]
        .iter()
        .any(|p| lower.starts_with(p))
    {
        lower
    } else {
        address.to_string()
    }
}

fn quorum(
    what: &str,
    approvals: u16,
    approvers: Option<Vec<String>>,
    members: &[Member],
) -> Result<Quorum> {
    let approvers: Vec<String> = match approvers {
        None => members.iter().map(|m| m.name.clone()).collect(),
        Some(names) => {
            let mut set = BTreeSet::new();
            for name in &names {
                if !members.iter().any(|m| &m.name == name) {
                    return Err(policy_error(format!(
                        "{what}: approver {name:?} is not a member"
                    )));
                }
                if !set.insert(name.as_str()) {
                    return Err(policy_error(format!(
                        "{what}: approver {name:?} is listed twice"
                    )));
                }
            }
            // Members-file order, whatever order the policy lists them in.
            members
                .iter()
                .filter(|m| set.contains(m.name.as_str()))
                .map(|m| m.name.clone())
                .collect()
        }
    };
    if approvals == 0 {
        return Err(policy_error(format!(
            "{what}: approvals must be at least 1"
        )));
    }
    if usize::from(approvals) > approvers.len() {
        return Err(policy_error(format!(
            "{what}: {approvals} approvals out of {} approvers",
            approvers.len()
        )));
    }
    Ok(Quorum {
        approvals,
        approvers,
    })
}

fn check_text_size(text: &str) -> Result<()> {
    if text.len() > MAX_POLICY_TEXT {
        return Err(policy_error(format!(
            "file of {} bytes exceeds the {MAX_POLICY_TEXT}-byte limit",
            text.len()
        )));
    }
    Ok(())
}

fn check_name(kind: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'));
    if !ok {
        return Err(policy_error(format!(
            "{kind} name {name:?}: 1 to 64 of A-Z a-z 0-9 - _ . @"
        )));
    }
    Ok(())
}

fn check_asset(what: &str, asset: &str) -> Result<()> {
    let ok = !asset.is_empty()
        && asset.len() <= 16
        && asset
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !ok {
        return Err(policy_error(format!(
            "{what}: asset {asset:?} must be 1 to 16 lowercase letters or digits (e.g. \"btc\")"
        )));
    }
    Ok(())
}

/// The units of `asset` on `chain`; `None` for an asset an Ethereum policy does not know.
/// Bitcoin policies accept any asset name (only `btc` is ever spent), written in base units.
fn units_of<'a>(chain: Chain, tokens: &'a [Token], asset: &str) -> Option<Vec<Unit<'a>>> {
    match (chain, asset) {
        (Chain::Bitcoin, ASSET_BTC) => Some(BTC_UNITS.to_vec()),
        (Chain::Bitcoin, _) => Some(Vec::new()),
        (Chain::Ethereum, ASSET_ETH) => Some(ETH_UNITS.to_vec()),
        (Chain::Ethereum, _) => tokens
            .iter()
            .find(|t| t.asset == asset)
            .map(|t| vec![t.unit()]),
    }
}

fn policy_error(reason: impl Into<String>) -> ProtocolError {
    ProtocolError::Policy {
        reason: reason.into(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MembersFile {
    #[serde(default)]
    member: Vec<MemberEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MemberEntry {
    name: String,
    device_key: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    admin: Option<AdminEntry>,
    chain_ids: Option<Vec<u64>>,
    #[serde(default)]
    token: Vec<TokenEntry>,
    #[serde(default)]
    rule: Vec<RuleEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    symbol: String,
    address: String,
    decimals: u8,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AdminEntry {
    approvals: u16,
    approvers: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleEntry {
    name: String,
    asset: Option<String>,
    below: Option<AmountText>,
    destinations: Option<Vec<String>>,
    velocity: Option<VelocityEntry>,
    max_fee: Option<AmountText>,
    calls: Option<Vec<String>>,
    approvals: Option<u16>,
    approvers: Option<Vec<String>>,
    deny: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VelocityEntry {
    window_hours: u32,
    limit: AmountText,
}

#[cfg(test)]
mod tests;
