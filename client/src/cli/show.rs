//! `cosigner wallet show`: one wallet, personal or DAO, with its policy and what is left of its
//! limits; from the provider when it answers, else from this device's files, marked as such.
//!
//! JSON keys (besides `wallet list`'s): `kind` (`personal` or `dao`), `source` (`cosigner`: the
//! provider answered and its view is in `provider`: `party`, `epoch`, or for a DAO wallet
//! `policy_version`; `local`: from this home's files only, with
//! `offline_reason`), `policy_known` (false: this home has no record of the policy), `policy`
//! (null: none, or not known here) with `text`, `origin` (where the
//! text came from), `version` (DAO wallets, from the provider), `rules` (each with `name`,
//! `asset`, `unit`, `below`, `max_fee`, `velocity` {`window_hours`, `limit`, `spent`, `left`},
//! `approvals`, `deny`) and `spends` (whose spends `spent` counts).
//!
//! The cosigners decide with the policy in force and the wallet's whole spend history, which they
//! keep; `spent`/`left` here count the spends signed from this device (personal wallets), and are
//! null for DAO wallets, whose members sign from their own devices.

use cosigner_client::home::{Home, LocalSpend, WalletFile};
use cosigner_client::session::Session;
use cosigner_client::{dao, wallet};
use cosigner_protocol::wire::WalletId;
use serde_json::{Value, json};

use super::Globals;
use super::attestation::emit;
use super::wallet::{home, trust, wallet_id, wallet_json};

/// A policy's text and where it came from.
struct PolicyText {
    text: String,
    origin: &'static str,
    version: Option<u64>,
}

/// `cosigner wallet show`.
pub fn show(g: &Globals, wallet: &str, json_out: bool) -> anyhow::Result<()> {
    let id = wallet_id(wallet)?;
    let home = home(g)?;
    if home.has_eth_wallet(&id) {
        return super::eth::show(g, &home, id, json_out);
    }
    let w = home.wallet(&id)?;
    let mut out = match wallet_json(&w) {
        Value::Object(map) => map,
        _ => serde_json::Map::new(),
    };
    let online = online_view(g, &w, id);
    let policy = match online {
        Ok((view, policy)) => {
            out.insert("source".into(), json!("cosigner"));
            out.insert("provider".into(), view);
            policy.or(local_policy(&home, &w, id)?)
        }
        Err(reason) => {
            out.insert("source".into(), json!("local"));
            out.insert("offline_reason".into(), json!(reason));
            local_policy(&home, &w, id)?
        }
    };
    out.insert(
        "kind".into(),
        json!(if w.dao.is_some() { "dao" } else { "personal" }),
    );
    let spends = match w.dao {
        Some(_) => None,
        None => Some(home.local_spends(&id)?),
    };
    // An empty text is a policy known to be none (a personal wallet created without one).
    out.insert("policy_known".into(), json!(policy.is_some()));
    out.insert(
        "policy".into(),
        match policy {
            Some(p) if !p.text.is_empty() => policy_json(&p, spends.as_deref()),
            _ => Value::Null,
        },
    );
    let out = Value::Object(out);
    if json_out {
        return emit(&out.to_string());
    }
    emit(&text(&out))
}

/// The provider's view of the wallet (and, for a DAO wallet, its policy in force), or why there
/// is none: no provider configured, or it did not answer or attest.
fn online_view(
    g: &Globals,
    w: &WalletFile,
    id: WalletId,
) -> Result<(Value, Option<PolicyText>), String> {
    let dao_hint = w
        .dao
        .as_ref()
        .and_then(|_| dao::dao_info(w).ok())
        .map(|(_, invitation)| invitation.provider);
    let addr = g
        .provider
        .clone()
        .or(dao_hint)
        .ok_or("no provider configured (--provider or COSIGNER_PROVIDER)")?;
    let reason = |e: cosigner_client::ClientError| cosigner_client::one_line(&e.to_string());
    let trust = trust(g).map_err(|e| cosigner_client::one_line(&format!("{e:#}")))?;
    let mut session = Session::connect(&addr, &trust).map_err(reason)?;
    if w.dao.is_none() {
        let view = wallet::provider_view(&mut session, id).map_err(reason)?;
        return Ok((json!({ "party": view.party, "epoch": view.epoch }), None));
    }
    // A DAO wallet's record at the provider is its DAO state: what it answers is the policy in
    // force (`Request::DaoPolicy`), not `GetWallet`.
    let (text, version) = dao::policy_in_force(&mut session, id).map_err(reason)?;
    let policy = PolicyText {
        text,
        origin: "the provider (in force)",
        version: Some(version),
    };
    Ok((json!({ "policy_version": version }), Some(policy)))
}

/// What this home says of the wallet's policy: a DAO wallet's invitation, or the policy this
/// device last registered for a personal wallet.
fn local_policy(home: &Home, w: &WalletFile, id: WalletId) -> anyhow::Result<Option<PolicyText>> {
    if w.dao.is_some() {
        let (_, invitation) = dao::dao_info(w)?;
        return Ok(Some(PolicyText {
            text: invitation.policy,
            origin: "the invitation (the policy at creation; later changes are at the cosigners)",
            version: None,
        }));
    }
    Ok(home.local_policy(&id)?.map(|text| PolicyText {
        text,
        origin: "this device (the policy it last registered)",
        version: None,
    }))
}

/// A policy's rules with what is left of their limits. The text is read leniently here (for
/// display only): the cosigners parsed and checked it when it was registered.
fn policy_json(p: &PolicyText, spends: Option<&[LocalSpend]>) -> Value {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let parsed: toml::Table = toml::from_str(&p.text).unwrap_or_default();
    let rules: Vec<Value> = parsed
        .get("rule")
        .and_then(toml::Value::as_array)
        .map(|rules| {
            rules
                .iter()
                .filter_map(toml::Value::as_table)
                .map(|r| rule_json(r, spends, now_ms))
                .collect()
        })
        .unwrap_or_default();
    json!({
        "text": p.text,
        "origin": p.origin,
        "version": p.version,
        "rules": rules,
        "spends": if spends.is_some() { "signed from this device" } else { "not known here" },
    })
}

fn rule_json(r: &toml::Table, spends: Option<&[LocalSpend]>, now_ms: u64) -> Value {
    let int = |key: &str| r.get(key).and_then(toml::Value::as_integer);
    let asset = r
        .get("asset")
        .and_then(toml::Value::as_str)
        .unwrap_or("btc");
    let velocity = r.get("velocity").and_then(toml::Value::as_table).map(|v| {
        let hours = v
            .get("window_hours")
            .and_then(toml::Value::as_integer)
            .unwrap_or(0);
        let limit = v
            .get("limit")
            .and_then(toml::Value::as_integer)
            .unwrap_or(0);
        let since =
            now_ms.saturating_sub(u64::try_from(hours).unwrap_or(0).saturating_mul(3_600_000));
        let spent = spends.map(|s| {
            s.iter()
                .filter(|s| s.asset == asset && s.at_ms >= since)
                .map(|s| s.amount)
                .fold(0u64, u64::saturating_add)
        });
        let left = spent.map(|spent| u64::try_from(limit).unwrap_or(0).saturating_sub(spent));
        json!({ "window_hours": hours, "limit": limit, "spent": spent, "left": left })
    });
    json!({
        "name": r.get("name").and_then(toml::Value::as_str),
        "asset": asset,
        "unit": if asset == "btc" { "sat" } else { asset },
        "below": int("below"),
        "max_fee": int("max_fee"),
        "velocity": velocity,
        "approvals": int("approvals"),
        "deny": r.get("deny").and_then(toml::Value::as_bool).unwrap_or(false),
    })
}

/// The text form: a few labelled lines.
fn text(v: &Value) -> String {
    let mut lines = vec![
        format!("wallet {} ({})", s(at(v, "wallet_id")), s(at(v, "kind"))),
        format!("address {} ({})", s(at(v, "address")), s(at(v, "network"))),
        format!("group key (x-only) {}", s(at(v, "group_public_key"))),
        format!(
            "epoch {}, {} of parties {}",
            at(v, "epoch"),
            at(v, "min_signers"),
            at(v, "parties")
        ),
    ];
    match at(v, "source").as_str() {
        Some("cosigner") if at(v, "kind") == "dao" => {
            lines.push("provider: holds the wallet (its policy in force below)".into());
        }
        Some("cosigner") => lines.push(format!(
            "provider: party {}, epoch {}",
            at(at(v, "provider"), "party"),
            at(at(v, "provider"), "epoch")
        )),
        _ => lines.push(format!(
            "(offline: from local files; {})",
            s(at(v, "offline_reason"))
        )),
    }
    let p = at(v, "policy");
    if p.is_null() {
        lines.push(if at(v, "policy_known") == true {
            "policy: none (the cosigners sign what this device asks)".into()
        } else {
            "policy: not recorded on this device (the cosigners hold it)".into()
        });
        return lines.join("\n");
    }
    let version = at(p, "version")
        .as_u64()
        .map_or_else(String::new, |n| format!(" version {n}"));
    lines.push(format!("policy{version}, from {}:", s(at(p, "origin"))));
    for r in at(p, "rules").as_array().into_iter().flatten() {
        lines.push(format!("  {}", rule_text(r)));
    }
    lines.join("\n")
}

fn rule_text(r: &Value) -> String {
    let unit = s(at(r, "unit"));
    let mut parts = Vec::new();
    if let Some(below) = at(r, "below").as_i64() {
        parts.push(format!("below {below} {unit}"));
    }
    if let Some(fee) = at(r, "max_fee").as_i64() {
        parts.push(format!("fee at most {fee} {unit}"));
    }
    let v = at(r, "velocity");
    if !v.is_null() {
        let left = match at(v, "left").as_u64() {
            Some(left) => format!(
                "{left} {unit} left ({} {unit} signed from this device)",
                at(v, "spent")
            ),
            None => "what is left is known to the cosigners".into(),
        };
        parts.push(format!(
            "at most {} {unit} per {} h: {left}",
            at(v, "limit"),
            at(v, "window_hours")
        ));
    }
    if at(r, "deny") == true {
        parts.push("denied".into());
    } else if let Some(k) = at(r, "approvals").as_i64() {
        parts.push(format!("{k} approval(s)"));
    }
    format!("rule {}: {}", s(at(r, "name")), parts.join("; "))
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("?")
}

/// `v[key]` without the indexing operator: `Value::Null` where there is no such key.
pub(super) fn at<'a>(v: &'a Value, key: &str) -> &'a Value {
    v.get(key).unwrap_or(&Value::Null)
}
