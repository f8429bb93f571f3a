#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use super::*;

const DAO: &str = include_str!("../../../examples/policies/dao.toml");
const DAO_ALLOWLIST: &str = include_str!("../../../examples/policies/dao-allowlist.toml");
const DAO_MEMBERS: &str = include_str!("../../../examples/policies/dao-members.toml");
const PERSONAL: &str = include_str!("../../../examples/policies/personal.toml");

const BTC: u128 = 100_000_000;
const PAYROLL: &str = "bcrt1p4q83t0avjhtcwh4y8js082uwdv9skasv3jjy74na98fvhpmtu9uqs5832a";
const EXCHANGE: &str = "bcrt1qha7546x08qwudehuc724np522c2n65m4clm83r";
const STRANGER: &str = "bcrt1qzyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3lgth6c";
/// A first rule denying every spend to [`STRANGER`].
const BLOCK_STRANGER: &str = r#"
        [[rule]]
        name = "blocked"
        destinations = ["bcrt1qzyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3lgth6c"]
        deny = true"#;

fn members() -> Vec<Member> {
    parse_members(DAO_MEMBERS).unwrap()
}

fn device() -> Vec<Member> {
    let key = p256::ecdsa::SigningKey::random(&mut rand_core::OsRng);
    vec![Member {
        name: "device".into(),
        device_key: crate::auth::public_key_bytes(&key),
    }]
}

fn policy(text: &str) -> Policy {
    Policy::parse(text, &members()).unwrap()
}

fn refused(text: &str) -> String {
    match Policy::parse(text, &members()) {
        Err(ProtocolError::Policy { reason }) => reason,
        Err(e) => panic!("wrong error {e}"),
        Ok(_) => panic!("accepted:\n{text}"),
    }
}

fn spend<'a>(
    value_leaving: u128,
    destinations: &'a [String],
    history: &'a [PastSpend],
) -> Spend<'a> {
    Spend {
        asset: "btc",
        value_leaving,
        destinations,
        now_ms: 1_000 * 3_600_000,
        history,
        call: None,
    }
}

fn rule_of(p: &Policy, s: &Spend<'_>) -> String {
    match p.evaluate(s) {
        Ok(d) => format!("{}:{}", d.rule, d.approvals),
        Err(denial) => format!("denied: {denial}"),
    }
}

fn dests(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[test]
fn example_files_parse() {
    let members = members();
    assert_eq!(
        members.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(),
        ["alice", "bob", "carol", "dave", "eve"]
    );
    for m in &members {
        assert_eq!(m.device_key.len(), 33);
    }
    let dao = Policy::parse(DAO, &members).unwrap();
    assert_eq!(dao.min_approvals(), 3);
    assert_eq!(dao.admin().approvals, 5);
    let allow = Policy::parse(DAO_ALLOWLIST, &members).unwrap();
    assert_eq!(allow.min_approvals(), 3);
    let personal = Policy::parse(PERSONAL, &device()).unwrap();
    assert_eq!(personal.min_approvals(), 1);
    assert_eq!(personal.admin().approvers, ["device"]);
    // The allowlist's entries are real addresses of the network they claim.
    for line in DAO_ALLOWLIST
        .lines()
        .filter(|l| l.trim_start().starts_with("\"bcrt1"))
    {
        let address = line.trim().split('"').nth(1).unwrap();
        let parsed: bitcoin::Address<bitcoin::address::NetworkUnchecked> = address.parse().unwrap();
        parsed.require_network(bitcoin::Network::Regtest).unwrap();
    }
}

#[test]
fn dao_tiers_by_amount() {
    let p = policy(DAO);
    let to = dests(&[STRANGER]);
    assert_eq!(rule_of(&p, &spend(0, &to, &[])), "small:3");
    assert_eq!(rule_of(&p, &spend(10 * BTC - 1, &to, &[])), "small:3");
    assert_eq!(rule_of(&p, &spend(10 * BTC, &to, &[])), "large:4");
    assert_eq!(rule_of(&p, &spend(100 * BTC - 1, &to, &[])), "large:4");
    assert_eq!(rule_of(&p, &spend(100 * BTC, &to, &[])), "major:5");
    assert_eq!(rule_of(&p, &spend(u128::MAX, &to, &[])), "major:5");
    let d = p.evaluate(&spend(BTC, &to, &[])).unwrap();
    assert_eq!(d.approvers, ["alice", "bob", "carol", "dave", "eve"]);
}

#[test]
fn allowlist_sends_unknown_destinations_to_major() {
    let p = policy(DAO_ALLOWLIST);
    let known = dests(&[PAYROLL, EXCHANGE]);
    assert_eq!(rule_of(&p, &spend(BTC, &known, &[])), "small:3");
    assert_eq!(rule_of(&p, &spend(50 * BTC, &known, &[])), "large:4");
    // One unlisted destination among listed ones is enough to need everyone.
    let mixed = dests(&[PAYROLL, STRANGER]);
    assert_eq!(rule_of(&p, &spend(1_000, &mixed, &[])), "major:5");
    // Bech32 is case-insensitive (QR codes use upper case).
    let upper = vec![PAYROLL.to_ascii_uppercase()];
    assert_eq!(rule_of(&p, &spend(BTC, &upper, &[])), "small:3");
    // A consolidation (everything back to the wallet) has no destination: every one is listed.
    assert_eq!(rule_of(&p, &spend(500, &[], &[])), "small:3");
    // An output without an address is named by its script and must be listed like any other.
    let op_return = dests(&["script:6a04abababab"]);
    assert_eq!(rule_of(&p, &spend(500, &op_return, &[])), "major:5");
}

#[test]
fn velocity_counts_the_rolling_window() {
    let p = Policy::parse(PERSONAL, &device()).unwrap();
    let now = 1_000 * 3_600_000;
    let past = |hours_ago: u64, amount: u128| PastSpend {
        at_ms: now - hours_ago * 3_600_000,
        asset: "btc".into(),
        amount,
    };
    let none: Vec<String> = vec![];
    // Alone: up to the limit, inclusive.
    assert_eq!(rule_of(&p, &spend(10_000_000, &none, &[])), "daily:1");
    assert!(rule_of(&p, &spend(10_000_001, &none, &[])).starts_with("denied: no rule matches"));
    // With earlier spends inside the window.
    let history = vec![past(1, 4_000_000), past(23, 5_000_000)];
    assert_eq!(rule_of(&p, &spend(1_000_000, &none, &history)), "daily:1");
    assert!(rule_of(&p, &spend(1_000_001, &none, &history)).starts_with("denied"));
    // Older than the window: ignored (exactly 24 h ago still counts).
    let history = vec![past(25, 9_000_000), past(48, 10_000_000)];
    assert_eq!(rule_of(&p, &spend(10_000_000, &none, &history)), "daily:1");
    let history = vec![past(24, 1)];
    assert!(rule_of(&p, &spend(10_000_000, &none, &history)).starts_with("denied"));
    // Another asset's spends do not count against btc.
    let history = vec![PastSpend {
        at_ms: now,
        asset: "eth".into(),
        amount: u128::MAX,
    }];
    assert_eq!(rule_of(&p, &spend(10_000_000, &none, &history)), "daily:1");
    // An overflowing sum fails closed.
    let history = vec![past(1, u128::MAX), past(2, u128::MAX)];
    assert!(rule_of(&p, &spend(1, &none, &history)).starts_with("denied"));
    // Near the epoch the window starts at 0 rather than wrapping.
    let early = Spend {
        now_ms: 5,
        ..spend(1, &none, &[])
    };
    assert_eq!(rule_of(&p, &early), "daily:1");
}

#[test]
fn first_match_deny_rules_and_default_deny() {
    let p = policy(&format!(
        r#"{BLOCK_STRANGER}
        [[rule]]
        name = "small"
        below = 1000
        approvals = 2
        approvers = ["eve", "alice", "bob"]
        "#
    ));
    let stranger = dests(&[STRANGER]);
    let payroll = dests(&[PAYROLL]);
    // The deny rule comes first and wins even for a small amount.
    let denial = p.evaluate(&spend(1, &stranger, &[])).unwrap_err();
    assert!(
        denial.reason.starts_with("rule \"blocked\" denies"),
        "{denial}"
    );
    let d = p.evaluate(&spend(999, &payroll, &[])).unwrap();
    assert_eq!(d.rule, "small");
    // Approvers come back in members-file order.
    assert_eq!(d.approvers, ["alice", "bob", "eve"]);
    // Nothing matches 1000: deny by default.
    let denial = p.evaluate(&spend(1000, &payroll, &[])).unwrap_err();
    assert!(
        denial.reason.starts_with("no rule matches: 1000 sat"),
        "{denial}"
    );
}

#[test]
fn assets_are_separate() {
    let p = policy(
        r#"
        [[rule]]
        name = "eth-anything"
        asset = "eth"
        approvals = 1
        [[rule]]
        name = "btc-small"
        below = 100
        approvals = 2
        "#,
    );
    let none: Vec<String> = vec![];
    // The eth catch-all never matches a btc spend and does not make the btc rule unreachable.
    assert_eq!(rule_of(&p, &spend(50, &none, &[])), "btc-small:2");
    assert!(rule_of(&p, &spend(100, &none, &[])).starts_with("denied"));
    let eth = Spend {
        asset: "eth",
        ..spend(1_000_000, &none, &[])
    };
    assert_eq!(rule_of(&p, &eth), "eth-anything:1");
    assert_eq!(p.min_approvals(), 1);
}

#[test]
fn admin_source_and_digest() {
    let text = "[admin]\napprovals = 2\napprovers = [\"carol\", \"bob\"]\n[[rule]]\nname = \"x\"\napprovals = 1\n";
    let p = policy(text);
    assert_eq!(
        p.admin(),
        Quorum {
            approvals: 2,
            approvers: vec!["bob".into(), "carol".into()]
        }
    );
    assert_eq!(p.source(), text);
    let digest: [u8; 32] = Sha256::digest(text.as_bytes()).into();
    assert_eq!(p.digest(), digest);
    // A whitespace change is another policy text, hence another digest.
    let other = policy(&format!("{text}\n"));
    assert_ne!(other.digest(), p.digest());
    // Default admin: every member.
    let p = policy("[[rule]]\nname = \"x\"\napprovals = 1\n");
    assert_eq!(p.admin().approvals, 5);
    assert_eq!(p.admin().approvers.len(), 5);
    assert_eq!(p.members(), members().as_slice());
}

#[test]
fn refusals() {
    let cases: &[(&str, &str)] = &[
        ("", "no [[rule]]"),
        ("[admin]\napprovals = 1\n", "no [[rule]]"),
        (
            "[[rule]]\nname = \"a\"\napprovals = 1\n[[rule]]\nname = \"a\"\nbelow = 5\napprovals = 1\n",
            "defined twice",
        ),
        (
            "[[rule]]\nname = \"a\"\napprovals = 1\napprovers = [\"mallory\"]\n",
            "not a member",
        ),
        (
            "[[rule]]\nname = \"a\"\napprovals = 1\napprovers = [\"bob\", \"bob\"]\n",
            "listed twice",
        ),
        ("[[rule]]\nname = \"a\"\napprovals = 0\n", "at least 1"),
        (
            "[[rule]]\nname = \"a\"\napprovals = 6\n",
            "6 approvals out of 5",
        ),
        (
            "[[rule]]\nname = \"a\"\napprovals = 3\napprovers = [\"bob\", \"eve\"]\n",
            "3 approvals out of 2",
        ),
        ("[[rule]]\nname = \"a\"\n", "names no approvals"),
        (
            "[[rule]]\nname = \"all\"\napprovals = 1\n[[rule]]\nname = \"late\"\nbelow = 5\napprovals = 2\n",
            "can never match",
        ),
        (
            "[[rule]]\nname = \"stop\"\ndeny = true\n[[rule]]\nname = \"late\"\napprovals = 2\n",
            "can never match",
        ),
        (
            "[[rule]]\nname = \"v\"\nvelocity = { window_hours = 0, limit = 5 }\napprovals = 1\n",
            "window of 0 hours",
        ),
        ("[[rule]]\nname = \"d\"\ndeny = true\n", "every rule denies"),
        (
            "[[rule]]\nname = \"d\"\ndeny = true\napprovals = 2\n[[rule]]\nname = \"x\"\napprovals = 1\n",
            "takes no approvals",
        ),
        (
            "[[rule]]\nname = \"a\"\nasset = \"BTC\"\napprovals = 1\n",
            "lowercase",
        ),
        ("[[rule]]\nname = \"\"\napprovals = 1\n", "rule name"),
        (
            "[[rule]]\nname = \"a\"\ndestinations = [\"bc1 q\"]\napprovals = 1\n",
            "not an address",
        ),
        // Unknown keys anywhere.
        (
            "[[rule]]\nname = \"a\"\napprovals = 1\nabove = 5\n",
            "unknown field",
        ),
        (
            "quorum = 3\n[[rule]]\nname = \"a\"\napprovals = 1\n",
            "unknown field",
        ),
        (
            "[[rule]]\nname = \"a\"\napprovals = 1\nvelocity = { window_hours = 1, limit = 5, per = \"day\" }\n",
            "unknown field",
        ),
        (
            "[admin]\napprovals = 1\nquorum = 2\n[[rule]]\nname = \"a\"\napprovals = 1\n",
            "unknown field",
        ),
        // Admin quorum checked like a rule's.
        (
            "[admin]\napprovals = 0\n[[rule]]\nname = \"a\"\napprovals = 1\n",
            "at least 1",
        ),
        (
            "[admin]\napprovals = 6\n[[rule]]\nname = \"a\"\napprovals = 1\n",
            "[admin]: 6 approvals",
        ),
        (
            "[admin]\napprovals = 1\napprovers = [\"zed\"]\n[[rule]]\nname = \"a\"\napprovals = 1\n",
            "not a member",
        ),
        // Types and ranges.
        (
            "[[rule]]\nname = \"a\"\nbelow = -1\napprovals = 1\n",
            "policy",
        ),
        ("[[rule]]\nname = \"a\"\napprovals = 70000\n", "policy"),
        ("[[rule]]\nname = \"a\"\napprovals = \"3\"\n", "policy"),
        ("this is not toml", "policy"),
    ];
    for (text, expected) in cases {
        let reason = refused(text);
        assert!(
            reason.contains(expected),
            "{text:?}: {reason:?} lacks {expected:?}"
        );
    }
    assert!(Policy::parse("[[rule]]\nname = \"a\"\napprovals = 1\n", &[]).is_err());
    let huge = format!(
        "# {}\n[[rule]]\nname = \"a\"\napprovals = 1\n",
        "x".repeat(MAX_POLICY_TEXT)
    );
    assert!(refused(&huge).contains("limit"));
    let many: String = (0..=MAX_RULES)
        .map(|i| {
            format!(
                "[[rule]]\nname = \"r{i}\"\nbelow = {}\napprovals = 1\n",
                i + 1
            )
        })
        .collect();
    assert!(refused(&many).contains("at most"));
}

#[test]
fn members_file_refusals() {
    let key = |seed: u8| {
        let secret = p256::SecretKey::from_slice(&[seed; 32]).unwrap();
        let signing = p256::ecdsa::SigningKey::from(secret);
        signing
            .verifying_key()
            .to_encoded_point(false)
            .as_bytes()
            .to_vec()
    };
    let entry = |name: &str, k: &[u8]| {
        format!(
            "[[member]]\nname = \"{name}\"\ndevice_key = \"{}\"\n",
            hex::encode(k)
        )
    };
    // Uncompressed keys are accepted and stored compressed.
    let ok = parse_members(&(entry("a", &key(1)) + &entry("b", &key(2)))).unwrap();
    assert_eq!(ok[0].device_key.len(), 33);
    assert_eq!(
        ok[0].device_key,
        crate::auth::normalise_public_key(&key(1)).unwrap()
    );
    let compressed_a = crate::auth::normalise_public_key(&key(1)).unwrap();
    let cases: Vec<(String, &str)> = vec![
        (String::new(), "no [[member]]"),
        (entry("a", &key(1)) + &entry("a", &key(2)), "listed twice"),
        // The same key in both forms is the same key.
        (
            entry("a", &key(1)) + &entry("b", &compressed_a),
            "device key of another",
        ),
        (
            "[[member]]\nname = \"a\"\ndevice_key = \"zz\"\n".into(),
            "not hex",
        ),
        // x = 2^256 - 1 is above the field prime.
        (
            entry("a", &[&[2u8][..], &[0xff; 32][..]].concat()),
            "not a P-256",
        ),
        (entry("a", &key(1)[..20]), "not a P-256"),
        (entry("a b", &key(1)), "member name"),
        (
            format!("{}role = \"chair\"\n", entry("a", &key(1))),
            "unknown field",
        ),
        ("[[member]]\nname = \"a\"\n".into(), "missing field"),
    ];
    for (text, expected) in &cases {
        match parse_members(text) {
            Err(ProtocolError::Policy { reason }) => {
                assert!(
                    reason.contains(expected),
                    "{text:?}: {reason:?} lacks {expected:?}"
                )
            }
            other => panic!("{text:?}: {other:?}"),
        }
    }
    let too_many: String = (0..=MAX_MEMBERS)
        .map(|i| entry(&format!("m{i}"), &key(u8::try_from(i + 1).unwrap())))
        .collect();
    assert!(parse_members(&too_many).is_err());
}

#[test]
fn a_velocity_window_longer_than_the_kept_history_is_refused() {
    let members = vec![Member {
        name: "owner".into(),
        device_key: crate::auth::public_key_bytes(&p256::ecdsa::SigningKey::random(
            &mut rand_core::OsRng,
        )),
    }];
    let text = |h: u32| {
        format!(
            "[[rule]]\nname = \"r\"\napprovals = 1\nvelocity = {{ window_hours = {h}, limit = 1 }}\n"
        )
    };
    assert!(Policy::parse(&text(MAX_WINDOW_HOURS), &members).is_ok());
    let e = Policy::parse(&text(MAX_WINDOW_HOURS + 1), &members).unwrap_err();
    assert!(e.to_string().contains("at most"), "{e}");
}

fn rule_with_fee(p: &Policy, s: &Spend<'_>, fee: u128) -> String {
    match p.evaluate_with_fee(s, fee) {
        Ok(d) => format!("{}:{}", d.rule, d.approvals),
        Err(denial) => format!("denied: {denial}"),
    }
}

/// A personal-style policy whose only allowing rule is a destination allowlist.
const PAYROLL_ONLY: &str = r#"
[[rule]]
name = "payroll"
destinations = ["bcrt1p4q83t0avjhtcwh4y8js082uwdv9skasv3jjy74na98fvhpmtu9uqs5832a"]
approvals = 1
"#;

#[test]
fn an_allowlist_alone_does_not_allow_a_fee() {
    let p = policy(PAYROLL_ONLY);
    let payroll = dests(&[PAYROLL]);
    // 1 000 sat to payroll and 10 BTC to the miners: the fee went to no listed destination.
    let huge_fee = 10 * BTC;
    let s = spend(1_000 + huge_fee, &payroll, &[]);
    let why = rule_with_fee(&p, &s, huge_fee);
    assert!(
        why.starts_with("denied: no rule matches: 1000001000 sat leaving to bcrt1p4q83"),
        "{why}"
    );
    assert!(why.ends_with("; fee 1000000000"), "{why}");
    // Even an ordinary fee is a payment to no listed destination: without a bound the rule
    // matches only a spend that pays no fee at all.
    assert!(rule_with_fee(&p, &spend(BTC + 500, &payroll, &[]), 500).starts_with("denied"));
    assert_eq!(
        rule_with_fee(&p, &spend(BTC, &payroll, &[]), 0),
        "payroll:1"
    );
}

#[test]
fn max_fee_bounds_an_allowlist_rule() {
    let p = policy(&format!("{PAYROLL_ONLY}max_fee = 50_000\n"));
    let payroll = dests(&[PAYROLL]);
    // A normal fee: accepted, up to the bound inclusive, whatever the amount to payroll.
    assert_eq!(
        rule_with_fee(&p, &spend(BTC + 2_000, &payroll, &[]), 2_000),
        "payroll:1"
    );
    assert_eq!(
        rule_with_fee(&p, &spend(50 * BTC + 50_000, &payroll, &[]), 50_000),
        "payroll:1"
    );
    // One satoshi more, or the huge fee: refused.
    assert!(rule_with_fee(&p, &spend(BTC + 50_001, &payroll, &[]), 50_001).starts_with("denied"));
    assert!(
        rule_with_fee(&p, &spend(1_000 + 10 * BTC, &payroll, &[]), 10 * BTC).starts_with("denied")
    );
    // The list still decides where the rest may go.
    let mixed = dests(&[PAYROLL, STRANGER]);
    assert!(rule_with_fee(&p, &spend(BTC, &mixed, &[]), 1_000).starts_with("denied"));
    // A consolidation pays only a fee: bounded like any other.
    assert_eq!(
        rule_with_fee(&p, &spend(3_000, &[], &[]), 3_000),
        "payroll:1"
    );
    assert!(rule_with_fee(&p, &spend(60_000, &[], &[]), 60_000).starts_with("denied"));
}

#[test]
fn without_the_fee_the_worst_case_is_assumed() {
    // `evaluate` knows only value leaving: all of it might be fee.
    let p = policy(&format!("{PAYROLL_ONLY}max_fee = 50_000\n"));
    let payroll = dests(&[PAYROLL]);
    assert_eq!(rule_of(&p, &spend(50_000, &payroll, &[])), "payroll:1");
    assert!(rule_of(&p, &spend(BTC, &payroll, &[])).starts_with("denied: no rule matches"));
    let p = policy(PAYROLL_ONLY);
    assert!(rule_of(&p, &spend(1_000, &payroll, &[])).starts_with("denied"));
    // The denial reads as it always did (no fee to report).
    let why = rule_of(&p, &spend(1_000, &payroll, &[]));
    assert!(
        why.ends_with(
            "leaving to bcrt1p4q83t0avjhtcwh4y8js082uwdv9skasv3jjy74na98fvhpmtu9uqs5832a"
        ),
        "{why}"
    );
    // Rules whose fee is bounded by an amount are unaffected (the shipped allowlist example).
    let p = policy(DAO_ALLOWLIST);
    assert_eq!(rule_of(&p, &spend(BTC, &payroll, &[])), "small:3");
}

#[test]
fn amount_bounds_count_the_fee_and_so_bound_it() {
    let p = policy(DAO_ALLOWLIST);
    let payroll = dests(&[PAYROLL]);
    // 9.99 BTC to payroll and a 0.02 BTC fee: 10.01 BTC leave, the "large" tier.
    let s = spend(999 * BTC / 100 + 2 * BTC / 100, &payroll, &[]);
    assert_eq!(rule_with_fee(&p, &s, 2 * BTC / 100), "large:4");
    // Under "small", the fee can be at most what `below` leaves: 1 000 sat to payroll, the rest
    // of 10 BTC in fee, is still "small" (its approvers see the fee); beyond, the next tier.
    assert_eq!(
        rule_with_fee(&p, &spend(10 * BTC - 1, &payroll, &[]), 10 * BTC - 1_001),
        "small:3"
    );
    assert_eq!(
        rule_with_fee(&p, &spend(10 * BTC, &payroll, &[]), 10 * BTC - 1_000),
        "large:4"
    );
    // Velocity counts fees, this spend's and the recorded ones (history holds value leaving).
    let personal = Policy::parse(PERSONAL, &device()).unwrap();
    let none: Vec<String> = vec![];
    assert_eq!(
        rule_with_fee(&personal, &spend(10_000_000, &none, &[]), 10_000),
        "daily:1"
    );
    assert!(rule_with_fee(&personal, &spend(10_000_001, &none, &[]), 10_001).starts_with("denied"));
    // An allowlist with velocity: the fee is bounded by the limit.
    let p = Policy::parse(
        &format!("{PAYROLL_ONLY}velocity = {{ window_hours = 24, limit = 1_000_000 }}\n"),
        &members(),
    )
    .unwrap();
    assert_eq!(
        rule_with_fee(&p, &spend(1_000_000, &payroll, &[]), 999_000),
        "payroll:1"
    );
    assert!(rule_with_fee(&p, &spend(1_000_001, &payroll, &[]), 999_001).starts_with("denied"));
}

#[test]
fn max_fee_on_any_allowing_rule_and_never_on_a_deny_rule() {
    // A tier with its own fee cap; the catch-all after it is still reachable.
    let p = policy(
        r#"
        [[rule]]
        name = "cheap"
        max_fee = 10_000
        approvals = 2
        [[rule]]
        name = "rest"
        approvals = 5
        "#,
    );
    let to = dests(&[STRANGER]);
    assert_eq!(rule_with_fee(&p, &spend(BTC, &to, &[]), 10_000), "cheap:2");
    assert_eq!(rule_with_fee(&p, &spend(BTC, &to, &[]), 10_001), "rest:5");
    // A deny rule's destinations match whatever the fee: the fee never lets a spend past it.
    let p = policy(&format!(
        r#"{BLOCK_STRANGER}
        [[rule]]
        name = "rest"
        approvals = 1
        "#
    ));
    let why = rule_with_fee(&p, &spend(BTC, &to, &[]), 50_000);
    assert!(why.starts_with("denied: rule \"blocked\" denies"), "{why}");
    assert!(why.ends_with("; fee 50000"), "{why}");
    assert!(rule_of(&p, &spend(BTC, &to, &[])).starts_with("denied: rule \"blocked\""));
    for (text, expected) in [
        (
            "[[rule]]\nname = \"d\"\ndeny = true\nmax_fee = 5\n[[rule]]\nname = \"x\"\napprovals = 1\n",
            "takes no max_fee",
        ),
        (
            "[[rule]]\nname = \"a\"\nmax_fee = -1\napprovals = 1\n",
            "policy",
        ),
    ] {
        let reason = refused(text);
        assert!(reason.contains(expected), "{text:?}: {reason:?}");
    }
}

#[test]
fn a_fee_larger_than_the_value_leaving_is_refused() {
    let p = policy(DAO);
    let to = dests(&[STRANGER]);
    let why = rule_with_fee(&p, &spend(1_000, &to, &[]), 1_001);
    assert!(why.starts_with("denied: inconsistent spend"), "{why}");
}

#[test]
fn amounts_may_be_written_with_their_unit() {
    // The DAO example with its amounts in BTC, a velocity limit in sat, a fee bound in BTC: the
    // same tiers as the integers.
    let text = DAO
        .replace("1_000_000_000", "\"10 BTC\"")
        .replace("10_000_000_000", "\"100 BTC\"");
    assert_ne!(text, DAO, "the example names its tiers in sat");
    let p = policy(&text);
    let to = dests(&[STRANGER]);
    assert_eq!(rule_of(&p, &spend(10 * BTC - 1, &to, &[])), "small:3");
    assert_eq!(rule_of(&p, &spend(10 * BTC, &to, &[])), "large:4");
    assert_eq!(rule_of(&p, &spend(100 * BTC, &to, &[])), "major:5");
    let velocity = r#"
        [[rule]]
        name = "daily"
        velocity = { window_hours = 24, limit = "250000 sat" }
        max_fee = "0.0001 BTC"
        approvals = 1"#;
    policy(velocity);
    for (bad, why) in [
        (r#"below = "0.000000001 BTC""#, "decimals"),
        (r#"below = "1 ETH""#, "unknown unit"),
        (r#"below = "1.5""#, "a number and a unit"),
        (r#"below = -1"#, ""),
    ] {
        let text = format!("[[rule]]\nname = \"r\"\n{bad}\napprovals = 1\n");
        let reason = match Policy::parse(&text, &members()) {
            Err(ProtocolError::Policy { reason }) => reason,
            other => panic!("{bad}: {other:?}"),
        };
        assert!(reason.contains(why), "{bad}: {reason}");
    }
}
