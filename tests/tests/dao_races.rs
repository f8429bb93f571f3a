//! A DAO wallet's lifecycle raced against running `cosigner` processes: a refresh that commits
//! while a signing request of the old epoch is in flight, and a second refresh proposed while one
//! runs. Each test runs the race and then shows the members unaffected: the next request signs
//! at the new epoch, every transaction checked under Bitcoin's consensus rules.
//!
//! The points are chosen from the outside, as in `dao_resume.rs`: the topic is read as a member,
//! and a member's process is stopped (SIGSTOP) once what it posted is there.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use cosigner_protocol::dao::DaoMessage;
use cosigner_tests::Outcome;
use cosigner_tests::members::{BTC, Dao, Member, Watch, all_signed, approval_by, json, wait_for};

/// Every member process gives up after this long (keeps a failing test bounded).
const TIMEOUT: &str = "120";

/// Two approvals (the requester's included) for any spend.
const POLICY: &str = r#"
[[rule]]
name = "any"
approvals = 2
"#;

fn three_members() -> Dao {
    Dao::create(3, POLICY, TIMEOUT, Duration::from_millis(150))
}

/// `dao refresh` by `member`, writing its proposal to `request`, in the background.
fn propose_refresh(dao: &Dao, tag: &str, member: usize, request: &Path) -> Member {
    let a = dao.proposal_args(member, &["refresh"], request, TIMEOUT);
    Member::start(&dao.d, tag, a)
}

/// Whether a message is the provider's.
fn from_provider(dao: &Dao) -> impl Fn(&[u8]) -> bool + '_ {
    move |s: &[u8]| s == dao.invitation.provider_key.as_slice()
}

/// How many refusals of the provider's `watch`'s topic holds.
fn refusals(dao: &Dao, watch: &mut Watch) -> usize {
    let provider = from_provider(dao);
    watch.count(&|s, m| provider(s) && matches!(m, DaoMessage::Refused { .. }))
}

/// Whether the provider published a transaction in `watch`'s topic.
fn published(dao: &Dao, watch: &mut Watch) -> bool {
    let provider = from_provider(dao);
    watch.count(&|s, m| provider(s) && matches!(m, DaoMessage::Signed { .. })) > 0
}

/// A refresh by every member, each in its own process; every one ends at `epoch`.
fn refresh_by_all(dao: &Dao, tag: &str, epoch: u64) {
    let request = dao.file(&format!("{tag}.request"));
    let proposer = propose_refresh(dao, tag, 0, &request);
    wait_for(&request);
    let others: Vec<Member> = (1..dao.homes.len())
        .map(|i| dao.approve(&format!("{tag}-{i}"), i, &request, TIMEOUT, &["--yes"]))
        .collect();
    assert_eq!(json(&proposer.finish())["epoch"], epoch);
    for o in others {
        assert_eq!(json(&o.finish())["epoch"], epoch);
    }
}

/// A payment requested by Alice and approved by Bob, at the wallet's current epoch: signed, and
/// valid under consensus rules.
fn signs(dao: &Dao, tag: &str) {
    let (spend, psbt, request) = dao.payment(tag, BTC);
    let alice = dao.sign(tag, &psbt, &request, TIMEOUT);
    wait_for(&request);
    let bob = dao.approve(&format!("{tag}-bob"), 1, &request, TIMEOUT, &["--yes"]);
    all_signed(&[&alice.finish(), &bob.finish()], &spend);
}

/// Alice's request to pay 1 BTC at the current epoch, with her approval in its topic: her
/// `sign` process (still running), the request file, and the topic read as Alice.
fn requested_and_approved(dao: &Dao) -> (Member, PathBuf, Watch) {
    let (_, psbt, request) = dao.payment("old", BTC);
    let alice = dao.sign("old", &psbt, &request, TIMEOUT);
    wait_for(&request);
    let mut watch = dao.watch(&request);
    watch.wait("Alice's approval", 1, &approval_by(&dao.keys[0]));
    (alice, request, watch)
}

/// A member's signing process refused: exit 1, no transaction.
fn refused(who: &str, outcome: &Outcome) {
    assert_eq!(outcome.code, Some(1), "{who}: {outcome:?}");
    assert!(!outcome.stdout.contains("tx_hex"), "{who}: {outcome:?}");
}

/// A DAO refresh commits while a signing request of the old epoch is in flight, its approvals all
/// in and its signing round open: Alice requested and approved, Bob approved and committed, and
/// both are stopped before the round's packages (Alice's commitments are missing). Every member
/// then refreshes to epoch 1 in new processes, which deletes the provider's epoch-0 shares. When
/// Alice and Bob go on, the provider refuses the old request in its topic instead of signing
/// under the retired epoch: no transaction is published, both members stop with the refusal;
/// a new request at epoch 1 signs.
#[test]
fn a_dao_refresh_ends_a_signing_request_of_the_old_epoch_in_flight() {
    let dao = three_members();
    let (alice, request, mut watch) = requested_and_approved(&dao);
    alice.signal("-STOP");
    let bob = dao.approve("old-bob", 1, &request, TIMEOUT, &["--yes"]);
    let is_bob = dao.is(1);
    watch.wait("Bob's commitments", 1, &|s, m| {
        is_bob(s) && matches!(m, DaoMessage::Commitments { .. })
    });
    bob.signal("-STOP");
    assert_eq!(refusals(&dao, &mut watch), 0);

    refresh_by_all(&dao, "refresh", 1);

    alice.signal("-CONT");
    bob.signal("-CONT");
    refused("Alice", &alice.finish());
    refused("Bob", &bob.finish());
    assert_eq!(refusals(&dao, &mut watch), 1, "{:?}", watch.messages());
    assert!(!published(&dao, &mut watch), "the old epoch signed");

    signs(&dao, "new");
}

/// A DAO refresh commits while a signing request of the old epoch has only part of its
/// approvals (Alice's, 1 of 2): Bob's approval, given after the refresh, makes the provider
/// refuse the request in its topic rather than choose a signer set for the retired epoch; Alice's
/// and Bob's processes stop with the refusal, and a new request at epoch 1 signs.
#[test]
fn a_dao_refresh_ends_a_signing_request_of_the_old_epoch_still_collecting_approvals() {
    let dao = three_members();
    let (alice, request, mut watch) = requested_and_approved(&dao);

    refresh_by_all(&dao, "refresh", 1);

    let bob = dao.approve("old-bob", 1, &request, TIMEOUT, &["--yes"]);
    refused("Bob", &bob.finish());
    refused("Alice", &alice.finish());
    assert_eq!(refusals(&dao, &mut watch), 1, "{:?}", watch.messages());
    let signer_set = watch.count(&|_, m| matches!(m, DaoMessage::SignerSet { .. }));
    assert_eq!(
        signer_set, 0,
        "a signer set was chosen for the retired epoch"
    );
    assert!(!published(&dao, &mut watch), "the old epoch signed");

    signs(&dao, "new");
}

/// A second refresh proposed while one is running is refused in its own topic, and the running
/// one completes: Alice's refresh waits for Carol, Bob proposes another, the provider refuses it
/// (Bob's `dao refresh` stops with the refusal, the first refresh is untouched), then Carol takes
/// part and every member ends at epoch 1, which signs.
#[test]
fn a_second_dao_refresh_while_one_runs_is_refused_and_the_first_completes() {
    let dao = three_members();
    let first = dao.file("first.request");
    let alice = propose_refresh(&dao, "first", 0, &first);
    wait_for(&first);
    let bob = dao.approve("first-bob", 1, &first, TIMEOUT, &["--yes"]);
    let mut watch = dao.watch(&first);
    // The provider founded it: its own first messages are in the topic.
    let provider = from_provider(&dao);
    watch.wait("the provider's round 1", 1, &|s, _| provider(s));

    let second = dao.file("second.request");
    let again = propose_refresh(&dao, "second", 1, &second).finish();
    assert_eq!(again.code, Some(1), "{again:?}");
    assert!(!again.stdout.contains("epoch"), "{again:?}");
    let mut second_watch = dao.watch(&second);
    assert_eq!(refusals(&dao, &mut second_watch), 1);
    assert_eq!(refusals(&dao, &mut watch), 0);

    let carol = dao.approve("first-carol", 2, &first, TIMEOUT, &["--yes"]);
    for o in [alice, bob, carol] {
        assert_eq!(json(&o.finish())["epoch"], 1);
    }
    signs(&dao, "after");
}
