//! DAO ceremonies survive people going offline: every member command can time out (or be
//! stopped) and be run again, and it picks up where the ceremony is; an enclave restart while a
//! signature is pending is announced and the signature goes on; `dao requests` lists what is
//! pending; `approve --reject` says no, and everyone learns it at once.
//!
//! As in dao_resume.rs, the points are chosen from the outside by reading the topic as a member.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use cosigner_tests::Outcome;
use cosigner_tests::bitcoin_tx::Spend;
use cosigner_tests::members::{
    BTC, Dao, Member, Watch, all_signed, approval_by, args, cosigner, create_args, join_args, json,
    p, setup, wait_for,
};
use serde_json::Value;

/// Every member process that should finish gives up after this long (keeps a failing test
/// bounded).
const TIMEOUT: &str = "60";

/// Two approvals (the requester's included) below 1 BTC, all three members' from there on.
const POLICY: &str = r#"
[[rule]]
name = "small"
below = 100_000_000
approvals = 2
[[rule]]
name = "large"
approvals = 3
"#;

/// A member's clean give-up: exit code 1, and the last stderr line says it timed out waiting for
/// `who` (named once, not "waiting for waiting for").
fn assert_timed_out_waiting_for(out: &Outcome, who: &str) {
    assert_eq!(out.code, Some(1), "{out:?}");
    let last = out.stderr.lines().last().unwrap_or_default();
    assert!(last.contains("timed out"), "{}", out.stderr);
    assert!(
        last.contains(&format!("waiting for {who}")),
        "who is missing: {}",
        out.stderr
    );
    assert!(!last.contains("waiting for waiting for"), "{last}");
}

fn create() -> Dao {
    Dao::create(3, POLICY, TIMEOUT, Duration::ZERO)
}

/// `dao requests --wallet ID --json` as `member`, with `extra` flags.
fn requests(dao: &Dao, member: usize, extra: &[&str]) -> Value {
    let mut a = args(&[
        "--home",
        &p(&dao.homes[member]),
        "dao",
        "requests",
        "--wallet",
        &dao.wallet,
        "--json",
    ]);
    a.extend(extra.iter().map(|s| (*s).to_owned()));
    json(&cosigner(&dao.d, a))
}

/// Alice's `sign` of a payment of `amount`, once her approval is in the topic; with the spend,
/// the request file and the topic's watch.
fn requested(dao: &Dao, tag: &str, amount: u64) -> (Member, Spend, PathBuf, Watch) {
    let (spend, psbt, request) = dao.payment(tag, amount);
    let alice = dao.sign(&format!("alice-{tag}"), &psbt, &request, TIMEOUT);
    wait_for(&request);
    let mut watch = dao.watch(&request);
    watch.wait("Alice's approval", 1, &approval_by(&dao.keys[0]));
    (alice, spend, request, watch)
}

#[test]
fn an_approver_whose_approve_timed_out_approves_again_and_the_request_goes_on() {
    let dao = create();
    // 2 BTC: the "large" rule, all three approvals. Alice requests (and approves).
    let (alice, spend, request, _watch) = requested(&dao, "large", 2 * BTC);
    // Bob approves, waits for Carol, and gives up: progress lines said who is missing.
    let bob = dao.approve("bob-1", 1, &request, "3", &["--yes"]).finish();
    assert_timed_out_waiting_for(&bob, "carol");
    assert!(
        bob.stderr.contains("2 of 3 approvals; waiting for carol\n"),
        "a progress line before the timeout: {}",
        bob.stderr
    );
    // The request is still alive: it is listed as pending, with two approvals of three.
    let listed = requests(&dao, 2, &[]);
    let pending = listed["requests"].as_array().unwrap();
    assert_eq!(pending.len(), 1, "{listed}");
    assert_eq!(
        pending[0]["approvals"].as_array().unwrap().len(),
        2,
        "{listed}"
    );
    assert_eq!(
        pending[0]["missing"],
        serde_json::json!(["carol"]),
        "{listed}"
    );
    // Bob runs `approve` again (no --yes: his approval is in the topic, he is not asked), then
    // Carol approves: everyone ends with the transaction.
    let bob = dao.approve("bob-2", 1, &request, TIMEOUT, &[]);
    bob.wait_stderr("already approved");
    let carol = dao.approve("carol", 2, &request, TIMEOUT, &["--yes"]);
    let (alice, bob, carol) = (alice.finish(), bob.finish(), carol.finish());
    all_signed(&[&alice, &bob, &carol], &spend);
    assert_eq!(json(&bob)["approved"], Value::Bool(true));
    // Nothing pending any more.
    let listed = requests(&dao, 1, &[]);
    assert_eq!(listed["requests"].as_array().unwrap().len(), 0, "{listed}");
}

#[test]
fn a_join_rerun_after_a_timeout_takes_a_new_attempt_and_blames_nobody() {
    let (d, homes) = setup(3, POLICY);
    let invitation = d.dir.path().join("invitation");
    let creator = Member::start(
        &d,
        "create",
        create_args(&d, &homes[0], &invitation, TIMEOUT),
    );
    wait_for(&invitation);
    // Carol joins while Bob does not: she times out waiting for him.
    let carol = cosigner(&d, join_args(&homes[2], &invitation, "3"));
    assert_timed_out_waiting_for(&carol, "bob");
    assert!(
        carol
            .stderr
            .contains("DKG attempt 0: waiting for bob to join"),
        "a progress line before the timeout: {}",
        carol.stderr
    );
    // She runs it again, and Bob joins: nobody is blamed, everyone ends with one wallet.
    let carol = Member::start(&d, "carol-2", join_args(&homes[2], &invitation, TIMEOUT));
    let bob = Member::start(&d, "bob", join_args(&homes[1], &invitation, TIMEOUT));
    let created = creator.finish();
    let (bob, carol) = (bob.finish(), carol.finish());
    for o in [&created, &bob, &carol] {
        assert!(!o.stderr.contains("misbehaved"), "{}", o.stderr);
    }
    assert_eq!(json(&bob), json(&created));
    assert_eq!(json(&carol), json(&created));
}

#[test]
fn an_enclave_restart_while_a_signature_is_pending_is_announced_and_the_signature_goes_on() {
    let mut dao = create();
    // 0.5 BTC: two approvals. Alice requests; Bob has not approved yet.
    let (alice, spend, request, _watch) = requested(&dao, "restart", BTC / 2);
    // The provider restarts: the request's ceremony was in its memory.
    dao.d.provider.stop();
    dao.d.provider.start_processes().unwrap();
    // Alice's waiting `sign` hears of it at once and the request goes on: Bob approves.
    alice.wait_stderr("the provider restarted");
    let started = Instant::now();
    let bob = dao.approve("bob", 1, &request, TIMEOUT, &["--yes"]);
    let (alice, bob) = (alice.finish(), bob.finish());
    all_signed(&[&alice, &bob], &spend);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "no silent wait: {:?}",
        started.elapsed()
    );
}

#[test]
fn a_rejection_is_heard_at_once_and_kills_a_request_only_when_the_rule_cannot_be_reached() {
    let dao = create();
    // "small" needs 2 of the 3: Carol says no, Alice hears it at once, Bob's yes still signs.
    let (alice, small, request, _watch) = requested(&dao, "small", BTC / 2);
    let no = ["--reject", "--reason", "not this month"];
    let carol = dao.approve("carol-no", 2, &request, TIMEOUT, &no).finish();
    let said = json(&carol);
    assert_eq!(said["rejected"], Value::Bool(true), "{said}");
    assert_eq!(said["dead"], Value::Bool(false), "{said}");
    alice.wait_stderr("carol rejected this request: \"not this month\"");
    let listed = requests(&dao, 1, &[]);
    let pending = &listed["requests"][0];
    assert_eq!(pending["rejections"][0]["member"], "carol", "{listed}");
    assert_eq!(
        pending["rejections"][0]["reason"], "not this month",
        "{listed}"
    );
    assert_eq!(pending["missing"], serde_json::json!(["bob"]), "{listed}");
    assert_eq!(pending["value_leaving_sat"], BTC / 2 + 10_000, "{listed}");
    // Carol cannot turn her no into a yes.
    let carol = dao
        .approve("carol-yes", 2, &request, "5", &["--yes"])
        .finish();
    assert_eq!(carol.code, Some(1), "{carol:?}");
    assert!(
        carol.stderr.contains("rejected this request"),
        "{}",
        carol.stderr
    );
    let bob = dao.approve("bob-yes", 1, &request, TIMEOUT, &["--yes"]);
    all_signed(&[&alice.finish(), &bob.finish()], &small);

    // "large" needs all three: Bob's no kills it, and Alice's `sign` stops at once saying so.
    let (alice, _, request, _watch) = requested(&dao, "large", 2 * BTC);
    let started = Instant::now();
    let bob = dao
        .approve("bob-no", 1, &request, TIMEOUT, &["--reject"])
        .finish();
    assert_eq!(json(&bob)["dead"], Value::Bool(true));
    let alice = alice.finish();
    assert_eq!(alice.code, Some(1), "{alice:?}");
    assert!(alice.stderr.contains("rejected by bob"), "{}", alice.stderr);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "at once, not at the timeout: {:?}",
        started.elapsed()
    );
    // The provider refused it too: nothing pending, and `--all` shows how it ended.
    let listed = requests(&dao, 2, &[]);
    assert_eq!(listed["requests"].as_array().unwrap().len(), 0, "{listed}");
    let all = requests(&dao, 2, &["--all"]);
    let ended: Vec<&Value> = all["requests"].as_array().unwrap().iter().collect();
    assert_eq!(ended.len(), 2, "{all}");
    assert!(
        ended[1]["state"]
            .as_str()
            .unwrap()
            .contains("rejected by bob"),
        "{all}"
    );
}
