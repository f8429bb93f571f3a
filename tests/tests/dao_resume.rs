//! Interrupted DAO commands cost nothing: a member's `cosigner` process is stopped (SIGSTOP) or
//! killed (SIGKILL) at a chosen point of a ceremony, the same command is run again, and the
//! ceremony finishes: every member ends with the same wallet, every transaction is valid under
//! Bitcoin's consensus rules, and the spend counts once in the provider's history (a velocity
//! limit that two counts would exceed, and that no count would not reach).
//!
//! The points are chosen from the outside by reading the topic as a member (the mailbox shows
//! what each process posted), so the tests need no hook in the binaries; stopping one process
//! while another goes on makes each point deterministic.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use cosigner_client::dao::{open_invitation, read_envelope};
use cosigner_protocol::dao::{DaoMessage, Invitation};
use cosigner_protocol::sign::commitment_in;
use cosigner_tests::bitcoin_tx::Spend;
use cosigner_tests::members::{
    self, BTC, Dao, Member, Watch, all_signed, approval_by, approve_args, cosigner, create_args,
    device_key, join_args, json, setup, sign_args, spawn, wait_for,
};
use cosigner_tests::{Deployment, Outcome};
use serde_json::Value;

type Tr = frost_secp256k1_tr::Secp256K1Sha256TR;

/// Every member process gives up after this long (keeps a failing test bounded).
const TIMEOUT: &str = "60";

/// Two approvals (the requester's included) for anything below 10 BTC, at most 2.5 BTC leaving
/// (fee included) per 24 hours; nothing else is allowed.
const POLICY: &str = r#"
[[rule]]
name = "daily"
below = 1_000_000_000
velocity = { window_hours = 24, limit = 250_000_000 }
approvals = 2
"#;

/// A DKG founded by Alice (her `dao create` waiting in the background) that nobody joined yet:
/// the deployment, the homes, the invitation file, Alice's process, the invitation, the wallet
/// id, and the invitation's topic read as Alice.
fn found() -> (
    Deployment,
    Vec<PathBuf>,
    PathBuf,
    Member,
    Invitation,
    String,
    Watch,
) {
    let (d, homes) = setup(3, POLICY);
    let invitation = d.dir.path().join("invitation");
    let create = create_args(&d, &homes[0], &invitation, TIMEOUT);
    let creator = Member::start(&d, "create", create);
    wait_for(&invitation);
    let envelope = read_envelope(&invitation).unwrap();
    let inv = open_invitation(&envelope).unwrap();
    let wallet_id = inv.layout().unwrap().wallet_id.to_hex();
    let watch = Watch::new(&d, &homes[0], &inv, envelope.topic);
    (d, homes, invitation, creator, inv, wallet_id, watch)
}

/// The files of `wallet` in a member's home.
fn wallet_files(home: &Path, wallet: &str) -> Vec<String> {
    std::fs::read_dir(home.join("wallets"))
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains(wallet))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_member_killed_mid_dkg_joins_again_and_the_dkg_restarts_for_everyone() {
    let (d, homes, invitation, creator, inv, wallet_id, mut watch) = found();
    let carol_key = device_key(&homes[2]);

    // Carol joins and is killed as soon as her round-1 message is in the topic: Bob has not
    // joined, so the DKG cannot be past round 1, and Carol's round secrets die with her process.
    let carol = Member::start(
        &d,
        "carol-join-1",
        join_args(&homes[2], &invitation, TIMEOUT),
    );
    watch.wait("Carol's round 1", 1, &|s, m| {
        s == carol_key && matches!(m, DaoMessage::DkgRound1 { attempt: 0, .. })
    });
    let killed = carol.kill();
    assert_eq!(killed.code, None, "{killed:?}");
    // Nothing of the DKG is on Carol's disk: at most the empty file her process held its OS
    // lock on (the lock went with the process).
    let files = wallet_files(&homes[2], &wallet_id);
    assert!(
        files.iter().all(|n| n.ends_with(".join-lock")
            && std::fs::metadata(homes[2].join("wallets").join(n))
                .unwrap()
                .len()
                == 0),
        "{files:?}"
    );

    // Bob joins; Carol runs the same command again: she asks for a new attempt, everyone
    // (the creator included, still waiting) starts again, and the wallet is created.
    let bob = spawn(&d, join_args(&homes[1], &invitation, TIMEOUT));
    let carol = spawn(&d, join_args(&homes[2], &invitation, TIMEOUT));
    let created = json(&creator.finish());
    let carol = carol.join().unwrap();
    assert_eq!(json(&bob.join().unwrap()), created);
    assert_eq!(
        json(&carol),
        created,
        "every member ends with the same wallet"
    );
    assert!(
        carol
            .stderr
            .contains("asking the provider for a new attempt"),
        "{}",
        carol.stderr
    );
    let provider = inv.provider_key.to_vec();
    let attempt_1 = |s: &[u8], m: &DaoMessage| {
        s == provider.as_slice() && matches!(m, DaoMessage::DkgAttempt { attempt: 1 })
    };
    assert_eq!(watch.count(&attempt_1), 1);
    let activated_1 = |s: &[u8], m: &DaoMessage| {
        s == provider.as_slice() && matches!(m, DaoMessage::Activated { attempt: 1, .. })
    };
    assert_eq!(watch.count(&activated_1), 1, "activated once, by attempt 1");
    for home in &homes {
        assert!(
            !wallet_files(home, &wallet_id)
                .iter()
                .any(|n| n.ends_with(".dkg")),
            "no journal left behind"
        );
    }

    // `join` again after the end: the same wallet, exit 0.
    let again = cosigner(&d, join_args(&homes[2], &invitation, TIMEOUT));
    assert_eq!(json(&again), created);

    // Carol's share (of attempt 1) signs with Alice's and the provider's.
    let group_key = created["group_public_key"].as_str().unwrap();
    let (spend, psbt, request) = members::payment(&d, "after-retry", group_key, BTC);
    let wallet = created["wallet_id"].as_str().unwrap();
    let alice = spawn(&d, sign_args(&homes[0], wallet, &psbt, &request, TIMEOUT));
    wait_for(&request);
    let carol = spawn(&d, approve_args(&homes[2], &request, TIMEOUT, &["--yes"]));
    let (alice, carol) = (alice.join().unwrap(), carol.join().unwrap());
    assert_eq!(json(&carol)["approved"], Value::Bool(true));
    all_signed(&[&alice, &carol], &spend);
}

fn create() -> Dao {
    Dao::create(3, POLICY, TIMEOUT, Duration::ZERO)
}

/// `sign` by Alice.
fn sign(dao: &Dao, tag: &str, psbt: &Path, request: &Path) -> Member {
    dao.sign(tag, psbt, request, TIMEOUT)
}

/// `approve` by Bob, `--yes` or not.
fn approve(dao: &Dao, tag: &str, request: &Path, yes: bool) -> Member {
    let extra: &[&str] = if yes { &["--yes"] } else { &[] };
    dao.approve(tag, 1, request, TIMEOUT, extra)
}

/// The transaction both outcomes name, checked under consensus rules.
fn both_signed(requester: &Outcome, approver: &Outcome, spend: &Spend) -> String {
    assert_eq!(
        json(approver)["approved"],
        Value::Bool(true),
        "{approver:?}"
    );
    all_signed(&[requester, approver], spend)
}

/// The provider's commitment (its first party) in each signing package set, with its round.
fn provider_commitments(
    watch: &mut Watch,
    provider_party: cosigner_protocol::id::PartyId,
) -> Vec<(u32, Vec<u8>)> {
    let mut rounds = Vec::new();
    for (_, message) in watch.messages() {
        if let DaoMessage::SigningPackages {
            packages, round, ..
        } = message
        {
            let commitment = commitment_in::<Tr>(&packages[0], provider_party);
            rounds.push((round, commitment.expect("the provider's commitment")));
        }
    }
    rounds
}

/// `member`'s commitments for signing round `round`.
fn commitments_of(
    dao: &Dao,
    member: usize,
    round: u32,
) -> impl Fn(&[u8], &DaoMessage) -> bool + '_ {
    let is = dao.is(member);
    move |s: &[u8], m: &DaoMessage| {
        is(s) && matches!(m, DaoMessage::Commitments { round: r, .. } if *r == round)
    }
}

/// A payment in flight: Alice requested it and is stopped (SIGSTOP) once her approval (and the
/// round-0 commitments posted just before it) is in its topic; Bob approved, the provider sent
/// the signer set with the packages at once (one round), and Bob's round-0 shares are in. The
/// round now waits for Alice's shares only.
struct Stopped {
    spend: Spend,
    psbt: PathBuf,
    request: PathBuf,
    alice: Member,
    bob: Member,
    watch: Watch,
}

/// `member`'s signature shares of signing round `round`.
fn shares_of(dao: &Dao, member: usize, round: u32) -> impl Fn(&[u8], &DaoMessage) -> bool + '_ {
    let is = dao.is(member);
    move |s: &[u8], m: &DaoMessage| {
        is(s) && matches!(m, DaoMessage::Shares { round: r, .. } if *r == round)
    }
}

/// Brings a payment of `amount` to [`Stopped`]; `n` tells its processes apart.
fn stopped_after_bobs_shares(dao: &Dao, n: u8, amount: u64) -> Stopped {
    let (spend, psbt, request) = dao.payment(&format!("payment-{n}"), amount);
    let alice = sign(dao, &format!("alice-{n}"), &psbt, &request);
    wait_for(&request);
    let mut watch = dao.watch(&request);
    watch.wait("Alice's approval", 1, &approval_by(&dao.keys[0]));
    alice.signal("-STOP");
    assert_eq!(watch.count(&commitments_of(dao, 0, 0)), 1, "posted before");
    let bob = approve(dao, &format!("bob-{n}"), &request, true);
    watch.wait("Bob's round-0 shares", 1, &shares_of(dao, 1, 0));
    Stopped {
        spend,
        psbt,
        request,
        alice,
        bob,
        watch,
    }
}

#[test]
fn members_killed_while_signing_run_again_and_each_spend_counts_once() {
    let dao = create();
    let provider_party = dao.invitation.layout().unwrap().provider_parties[0];

    // 1. Before the signing packages. Alice requests 1 BTC, posts her round-0 commitments and
    // her approval, and is killed before Bob approves: no package can have used her
    // commitments (the rule needs Bob's approval). Alice runs `sign` again: the same request
    // goes on with fresh commitments, which replace her old ones; Bob approves and the
    // packages go out at once with Alice's new commitments. One package set, round 0.
    let (first, psbt, request) = dao.payment("payment-1", BTC);
    let alice = sign(&dao, "alice-1", &psbt, &request);
    wait_for(&request);
    let mut watch = dao.watch(&request);
    watch.wait("Alice's approval", 1, &approval_by(&dao.keys[0]));
    assert_eq!(alice.kill().code, None);
    let alice = sign(&dao, "alice-1-again", &psbt, &request);
    watch.wait("Alice's new commitments", 2, &commitments_of(&dao, 0, 0));
    let bob = approve(&dao, "bob-1", &request, true);
    let (alice, bob) = (alice.finish(), bob.finish());
    let first_txid = both_signed(&alice, &bob, &first);
    assert!(
        alice.stderr.contains("resuming the request"),
        "{}",
        alice.stderr
    );
    let rounds = provider_commitments(&mut watch, provider_party);
    assert_eq!(rounds.len(), 1, "one package set, round 0: {rounds:?}");
    assert_eq!(rounds[0].0, 0);
    assert_eq!(
        watch.count(&commitments_of(&dao, 1, 0)),
        1,
        "Bob committed once"
    );

    // 2. After the signing packages. Alice requests 0.5 BTC and is stopped after her approval;
    // Bob approves: the packages go out with both members' round-0 commitments and Bob signs.
    // Alice is killed before she signs: her nonces are gone, so the round cannot finish. Alice
    // runs `sign` again; the provider starts round 1 with fresh nonces and both sign again
    // (Bob's `approve` is still waiting for the transaction).
    let Stopped {
        spend: second,
        request: request2,
        psbt: psbt2,
        alice,
        bob,
        watch: mut watch2,
    } = stopped_after_bobs_shares(&dao, 2, BTC / 2);
    assert_eq!(alice.kill().code, None);
    assert_eq!(
        watch2.count(&shares_of(&dao, 0, 0)),
        0,
        "Alice never signed round 0"
    );
    let alice = sign(&dao, "alice-2-again", &psbt2, &request2);
    let (alice, bob) = (alice.finish(), bob.finish());
    let second_txid = both_signed(&alice, &bob, &second);
    let rounds = provider_commitments(&mut watch2, provider_party);
    assert_eq!(
        rounds.iter().map(|(r, _)| *r).collect::<Vec<_>>(),
        vec![0, 1],
        "a new round after the lost nonces"
    );
    assert_ne!(rounds[0].1, rounds[1].1, "the provider drew fresh nonces");

    // 3. Run again after the end: the transaction, nothing signed or counted again.
    let again = sign(&dao, "alice-1-after", &psbt, &request).finish();
    assert_eq!(json(&again)["txid"].as_str(), Some(first_txid.as_str()));
    let again = approve(&dao, "bob-2-after", &request2, false).finish();
    assert_eq!(json(&again)["txid"].as_str(), Some(second_txid.as_str()));
    assert_eq!(json(&again)["approved"], Value::Bool(true));

    // 4. Counted once each: 1.0001 + 0.5001 BTC have left. 0.99 BTC more reaches 2.4903 BTC,
    // within the 2.5 BTC a day (two counts of either spend would exceed it)...
    let (third, psbt3, request3) = dao.payment("third", 99_000_000);
    let alice = sign(&dao, "alice-3", &psbt3, &request3);
    wait_for(&request3);
    let bob = approve(&dao, "bob-3", &request3, true);
    both_signed(&alice.finish(), &bob.finish(), &third);
    // ...and 0.01 BTC more does not fit (no count of some spend would have let it through).
    let (_, psbt4, request4) = dao.payment("fourth", 1_000_000);
    let over = sign(&dao, "alice-4", &psbt4, &request4).finish();
    assert_eq!(over.code, Some(1), "{over:?}");
    assert!(over.stderr.contains("no rule matches"), "{}", over.stderr);
}

#[test]
fn the_provider_restarted_mid_signing_goes_on_with_a_new_round_and_fresh_nonces() {
    let mut dao = create();
    let provider_party = dao.invitation.layout().unwrap().provider_parties[0];
    // Alice requests and approves (then is stopped); Bob approves and signs round 0: the
    // provider holds round 0's nonces, waiting for Alice's shares.
    let Stopped {
        spend,
        psbt,
        request,
        alice,
        bob,
        mut watch,
    } = stopped_after_bobs_shares(&dao, 1, BTC);
    bob.signal("-STOP");
    // The provider restarts: its round-0 nonces are gone with its memory.
    dao.d.provider.stop();
    dao.d.provider.start_processes().unwrap();
    assert_eq!(alice.kill().code, None);
    assert_eq!(bob.kill().code, None);
    // Both run their command again: the provider founds the request again after round 0.
    let alice = sign(&dao, "alice-r-again", &psbt, &request);
    let bob = approve(&dao, "bob-r-again", &request, false);
    let (alice, bob) = (alice.finish(), bob.finish());
    both_signed(&alice, &bob, &spend);
    let rounds = provider_commitments(&mut watch, provider_party);
    assert_eq!(
        rounds.iter().map(|(r, _)| *r).collect::<Vec<_>>(),
        vec![0, 1],
        "round 0's packages could not finish; the new provider signed in round 1"
    );
    assert_ne!(
        rounds[0].1, rounds[1].1,
        "the new provider drew fresh nonces"
    );
    let provider = dao.invitation.provider_key.to_vec();
    let round_0 = |s: &[u8], m: &DaoMessage| {
        s == provider.as_slice() && matches!(m, DaoMessage::SignerSet { round: 0, .. })
    };
    assert_eq!(watch.count(&round_0), 1);
}

#[test]
fn a_member_killed_after_storing_its_share_finds_it_when_it_joins_again() {
    let (d, homes, invitation, creator, inv, wallet_id, mut watch) = found();
    let (bob_key, carol_key) = (device_key(&homes[1]), device_key(&homes[2]));
    // Each stop below is taken while the process waits for something a stopped one has not
    // sent, so every step is deterministic.
    // Carol posts her round 1 and is stopped (she waits for Bob's).
    let carol = Member::start(&d, "carol-join", join_args(&homes[2], &invitation, TIMEOUT));
    watch.wait("Carol's round 1", 1, &|s, m| {
        s == carol_key.as_slice() && matches!(m, DaoMessage::DkgRound1 { .. })
    });
    carol.signal("-STOP");
    // Bob posts rounds 1 and 2 and is stopped (he waits for Carol's round 2).
    let bob = Member::start(&d, "bob-join", join_args(&homes[1], &invitation, TIMEOUT));
    watch.wait("Bob's round 2", 1, &|s, m| {
        s == bob_key.as_slice() && matches!(m, DaoMessage::DkgRound2 { .. })
    });
    bob.signal("-STOP");
    // A second `join` of Bob's while his first runs is refused before it posts anything (two
    // round-1 messages of Bob's would be equivocation).
    let twice = cosigner(&d, join_args(&homes[1], &invitation, TIMEOUT));
    assert_eq!(twice.code, Some(1), "{twice:?}");
    assert!(
        twice
            .stderr
            .contains("another cosigner process of this device"),
        "{}",
        twice.stderr
    );
    // Carol goes on to her confirmation and is stopped (she waits for Bob's).
    carol.signal("-CONT");
    watch.wait("Carol's confirmation", 1, &|s, m| {
        s == carol_key.as_slice() && matches!(m, DaoMessage::DkgConfirm { .. })
    });
    carol.signal("-STOP");
    // Bob goes on: every confirmation is in, he stores his share and says so, and waits for the
    // activation, which needs Carol's notice: he is killed there.
    bob.signal("-CONT");
    watch.wait("Bob's stored notice", 1, &|s, m| {
        s == bob_key.as_slice() && matches!(m, DaoMessage::DkgStored { .. })
    });
    assert_eq!(bob.kill().code, None);
    let files = wallet_files(&homes[1], &wallet_id);
    assert!(
        files.iter().any(|n| n.ends_with(".dkg")) && !files.iter().any(|n| n.ends_with(".json")),
        "Bob holds his share in the journal, not yet as a wallet: {files:?}"
    );
    // Carol goes on; the wallet is activated (Bob's notice was in) without Bob's process.
    carol.signal("-CONT");
    let created = json(&creator.finish());
    assert_eq!(json(&carol.finish()), created);
    // Bob joins again: his stored share becomes his wallet, with no new DKG attempt.
    let again = cosigner(&d, join_args(&homes[1], &invitation, TIMEOUT));
    assert_eq!(json(&again), created);
    let files = wallet_files(&homes[1], &wallet_id);
    assert!(
        !files
            .iter()
            .any(|n| n.ends_with(".dkg") || n.ends_with(".join-lock")),
        "the journal and the lock are gone once the wallet is recorded: {files:?}"
    );
    let provider = inv.provider_key.to_vec();
    let attempts = |s: &[u8], m: &DaoMessage| {
        s == provider.as_slice() && matches!(m, DaoMessage::DkgAttempt { .. })
    };
    assert_eq!(watch.count(&attempts), 0, "no new attempt was needed");
}

/// `dao refresh` by Alice (member 0) writing its proposal to `request`, in the background.
fn propose_refresh(dao: &Dao, tag: &str, request: &Path) -> Member {
    let a = dao.proposal_args(0, &["refresh"], request, TIMEOUT);
    Member::start(&dao.d, tag, a)
}

/// The provider restarts while a refresh waits for Bob and Carol: its round-1 secrets died with
/// it, so when the topic is handed to it again it refuses the refresh instead of posting round-1
/// messages that contradict its earlier ones. Every member stops at once with the reason, keeps
/// epoch 0, and a new refresh then goes through.
#[test]
fn a_provider_restarted_mid_refresh_refuses_it_and_a_new_refresh_goes_through() {
    let mut dao = create();
    let request = dao.file("refresh.request");
    let alice = propose_refresh(&dao, "alice-refresh", &request);
    wait_for(&request);
    let mut watch = dao.watch(&request);
    let provider = dao.invitation.provider_key.to_vec();
    watch.wait("the provider's round 1", 1, &|s, m| {
        s == provider.as_slice() && matches!(m, DaoMessage::Round1(_))
    });
    dao.d.provider.stop();
    dao.d.provider.start_processes().unwrap();
    let bob = dao.approve("bob-refresh", 1, &request, TIMEOUT, &["--yes"]);
    let (alice, bob) = (alice.finish(), bob.finish());
    for out in [&alice, &bob] {
        assert_eq!(out.code, Some(1), "{out:?}");
        assert!(
            out.stderr.contains("restarted during this refresh"),
            "{}",
            out.stderr
        );
        assert!(!out.stdout.contains("epoch"), "{out:?}");
    }
    for home in &dao.homes {
        let file = std::fs::read_to_string(home.join(format!("wallets/{}.json", dao.wallet)));
        let file: Value = serde_json::from_str(&file.unwrap()).unwrap();
        assert_eq!(file["epoch"], 0, "the old epoch stays");
    }
    let again = dao.file("refresh-again.request");
    let alice = propose_refresh(&dao, "alice-again", &again);
    wait_for(&again);
    let others: Vec<Member> = (1..3)
        .map(|i| dao.approve(&format!("again-{i}"), i, &again, TIMEOUT, &["--yes"]))
        .collect();
    assert_eq!(json(&alice.finish())["epoch"], 1);
    for o in others {
        assert_eq!(json(&o.finish())["epoch"], 1);
    }

    // The provider restarts again, and the committed refresh's topic is handed to it (as a
    // member whose `Refreshed` was lost with the old instance's outbox would): it says the
    // refresh is done again, never that it is refused.
    dao.d.provider.stop();
    dao.d.provider.start_processes().unwrap();
    let (said, _) = dao.deliver(&dao.watch(&again).envelopes());
    assert!(
        said.iter()
            .any(|m| matches!(m, DaoMessage::Refreshed { epoch, .. } if epoch.0 == 1)),
        "{said:?}"
    );
    assert!(
        !said.iter().any(|m| matches!(m, DaoMessage::Refused { .. })),
        "{said:?}"
    );
}
