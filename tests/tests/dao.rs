//! A five-member DAO end to end: real `cosigner` processes (one home per member) creating the
//! wallet through the parent's mailbox, then PSBTs signed under the seed's tiered policy
//! (< 10 BTC: 3 approvals, < 100 BTC: 4, more: all 5), every produced transaction checked under
//! Bitcoin's consensus rules.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use cosigner_tests::pid;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::Duration;

use cosigner_protocol::dao::DaoMessage;
use cosigner_tests::Outcome;
use cosigner_tests::bitcoin_tx::{self, Pay, Spend};
use cosigner_tests::members::{BTC, Dao, Watch, approve_args, json, p, sign_args, wait_for};
use serde_json::Value;

/// A policy's TOML: with `admin`, an `[admin]` quorum of that many approvals; then one `[[rule]]`
/// per (name, the value leaving the wallet it applies below if any, in satoshis, approvals).
fn policy(admin: Option<u32>, rules: &[(&str, Option<u64>, u32)]) -> String {
    let mut toml = admin.map_or(String::new(), |n| format!("[admin]\napprovals = {n}\n\n"));
    for (name, below, approvals) in rules {
        toml.push_str(&format!("[[rule]]\nname = \"{name}\"\n"));
        if let Some(below) = below {
            toml.push_str(&format!("below = {below}\n"));
        }
        toml.push_str(&format!("approvals = {approvals}\n"));
    }
    toml
}

/// Three tiers: below 10 BTC three approvals, below 100 BTC four, above that all five.
fn tiers() -> String {
    policy(
        None,
        &[
            ("small", Some(10 * BTC), 3),
            ("large", Some(100 * BTC), 4),
            ("major", None, 5),
        ],
    )
}

/// Starts a deployment and creates the five-member wallet; members join one after another, at
/// different times.
fn create_dao(policy: &str) -> Dao {
    let dao = Dao::create(5, policy, "120", Duration::from_millis(150));
    assert!(
        dao.created["address"]
            .as_str()
            .unwrap()
            .starts_with("bcrt1p")
    );
    dao
}

/// Members `approvers` run `approve --yes` on `request`, each in its own process.
fn approve(
    dao: &Dao,
    request: &Path,
    approvers: &[usize],
    timeout: u64,
) -> Vec<JoinHandle<Outcome>> {
    approvers
        .iter()
        .map(|&i| {
            dao.spawn(approve_args(
                &dao.homes[i],
                request,
                &timeout.to_string(),
                &["--yes"],
            ))
        })
        .collect()
}

/// The requester's outcome (member 0's) and the approvers'.
type Outcomes = (Outcome, Vec<Outcome>);

/// Member 0 runs `args`, which write its request to `request`; once it is there, members
/// `approvers` approve it, giving up after `timeout` seconds.
fn requested(
    dao: &Dao,
    request: &Path,
    args: Vec<String>,
    approvers: &[usize],
    timeout: u64,
) -> Outcomes {
    let requester = dao.spawn(args);
    wait_for(request);
    let approvals = approve(dao, request, approvers, timeout);
    let requester = requester.join().unwrap();
    let approvals = approvals.into_iter().map(|h| h.join().unwrap()).collect();
    (requester, approvals)
}

/// Member 0 asks to sign `spend`; members `approvers` approve.
fn sign(dao: &Dao, tag: &str, spend: &Spend, approvers: &[usize], timeout: u64) -> Outcomes {
    let psbt = dao.file(&format!("{tag}.psbt"));
    std::fs::write(&psbt, &spend.psbt_base64).unwrap();
    let request = dao.file(&format!("{tag}.request"));
    let seconds = timeout.to_string();
    let args = sign_args(&dao.homes[0], &dao.wallet, &psbt, &request, &seconds);
    requested(dao, &request, args, approvers, timeout)
}

fn signed(dao: &Dao, outcome: &Outcome, approvals: &[Outcome], spend: &Spend) -> String {
    let out = json(outcome);
    for a in approvals {
        assert_eq!(json(a)["approved"], Value::Bool(true));
    }
    let tx = out["tx_hex"].as_str().unwrap();
    bitcoin_tx::verify_consensus(tx, &spend.prevouts).expect("valid under consensus rules");
    let _ = dao;
    out["txid"].as_str().unwrap().to_owned()
}

fn timed_out(outcome: &Outcome, rule: &str, needs: u16) {
    assert_eq!(outcome.code, Some(1), "{outcome:?}");
    assert!(
        outcome.stderr.contains("timed out"),
        "expected a timeout: {}",
        outcome.stderr
    );
    assert!(
        outcome
            .stderr
            .contains(&format!("rule {rule:?} needs {needs} approvals")),
        "expected rule {rule} needing {needs}: {}",
        outcome.stderr
    );
}

#[test]
fn dao_tiers_three_four_five_with_consensus_valid_transactions() {
    let dao = create_dao(&tiers());

    let payment = |inputs: &[u64], amount: u64, change: u64| {
        bitcoin_tx::payment(&dao.group_key, inputs, amount, change).unwrap()
    };
    // 9 BTC leave (+ fee): under 10, "small".
    let small = payment(&[6 * BTC, 5 * BTC], 9 * BTC, 2 * BTC - 10_000);
    // Exactly 10 BTC leave: "large".
    let ten = payment(&[10 * BTC + 50_000], 10 * BTC - 10_000, 50_000);
    // 150 BTC: "major".
    let major = payment(&[100 * BTC, 60 * BTC], 150 * BTC, 10 * BTC - 20_000);
    // Each signs with its rule's approvals (the requester's included) and, one approval short,
    // times out naming its rule.
    for (rule, spend, needs) in [("small", small, 3), ("large", ten, 4), ("major", major, 5)] {
        let approvers: Vec<usize> = (1..usize::from(needs)).collect();
        let short = &approvers[..approvers.len() - 1];
        let (r, _) = sign(&dao, &format!("{rule}-short"), &spend, short, 6);
        timed_out(&r, rule, needs);
        let (r, a) = sign(&dao, rule, &spend, &approvers, 60);
        signed(&dao, &r, &a, &spend);
        one_round_once_approved(&dao, rule);
    }
}

/// Once the approvals were in, the signature took one round: every chosen member's nonce
/// commitments were posted with its approval, before the provider's signer set, and the signer
/// set's round is the one signed (no member committed after it; round 0, none restarted).
fn one_round_once_approved(dao: &Dao, tag: &str) {
    let request = dao.file(&format!("{tag}.request"));
    let mut watch = Watch::request(&dao.d, &dao.homes[0], &dao.invitation, &request);
    let messages = watch.messages();
    let provider = &dao.invitation.layout().unwrap().provider_key;
    let set = messages
        .iter()
        .position(|(s, m)| s == provider && matches!(m, DaoMessage::SignerSet { .. }))
        .expect("a signer set");
    let after_set: Vec<&str> = messages[set..]
        .iter()
        .filter(|(s, _)| s != provider)
        .map(|(_, m)| m.name())
        .collect();
    assert!(
        after_set.iter().all(|n| *n == "Shares"),
        "members posted {after_set:?} after the signer set"
    );
    assert!(
        messages
            .iter()
            .all(|(_, m)| !matches!(m, DaoMessage::SignerSet { round, .. } if *round > 0)),
        "a second signing round"
    );
}

#[test]
fn a_foreign_output_disguised_as_change_counts_as_leaving() {
    let dao = create_dao(&tiers());
    // 1 BTC to someone, and 9.5 BTC to another foreign script labelled (BIP-371) with the
    // wallet's own key as if it were change: 10.5 BTC really leave, so "large" (4) applies.
    let spend = bitcoin_tx::build(
        &dao.group_key,
        &[11 * BTC],
        &[
            (Pay::To(bitcoin_tx::foreign_address()), BTC),
            (Pay::To(bitcoin_tx::foreign_address()), 9 * BTC + 50_000_000),
            (Pay::Change, 50_000_000 - 10_000),
        ],
    )
    .unwrap();
    let spend = bitcoin_tx::disguise_as_change(&spend, 1, &dao.group_key).unwrap();
    let (r, _) = sign(&dao, "disguised", &spend, &[1, 2], 6);
    timed_out(&r, "large", 4);
    assert!(
        r.stderr.contains("1050010000 sat leave"),
        "the requester's own summary shows the real value: {}",
        r.stderr
    );
}

/// Two tiers (three approvals below 10 BTC, all five above) under an admin quorum of four.
fn guarded() -> String {
    policy(Some(4), &[("small", Some(10 * BTC), 3), ("major", None, 5)])
}

/// [`guarded`] made stricter: three approvals only below 1 BTC.
fn stricter() -> String {
    policy(Some(4), &[("petty", Some(BTC), 3), ("major", None, 5)])
}

/// `dao SUBCOMMAND --wallet ID …` by Alice (member 0), writing its request to `request`.
fn admin_args(dao: &Dao, subcommand: &[&str], request: &Path, timeout: &str) -> Vec<String> {
    dao.proposal_args(0, subcommand, request, timeout)
}

/// Member 0 proposes `policy`; members `approvers` approve.
fn propose(dao: &Dao, tag: &str, policy: &str, approvers: &[usize], timeout: u64) -> Outcomes {
    let file = dao.file(&format!("{tag}.toml"));
    std::fs::write(&file, policy).unwrap();
    let request = dao.file(&format!("{tag}.request"));
    let seconds = timeout.to_string();
    let args = admin_args(dao, &["policy", "--policy", &p(&file)], &request, &seconds);
    requested(dao, &request, args, approvers, timeout)
}

#[test]
fn a_policy_change_needs_the_admin_quorum_then_binds_every_spend() {
    let dao = create_dao(&guarded());
    let two = bitcoin_tx::payment(&dao.group_key, &[3 * BTC], 2 * BTC, BTC - 10_000).unwrap();
    // Three of the four admin approvals: not in force.
    let (r, _) = propose(&dao, "stricter-3", &stricter(), &[1, 2], 6);
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(
        r.stderr.contains("admin quorum (4 approvals)"),
        "{}",
        r.stderr
    );
    // Under the old policy 2 BTC is "small": three approvals sign.
    let (r, a) = sign(&dao, "two-old", &two, &[1, 2], 60);
    signed(&dao, &r, &a, &two);
    // Four: version 2 in force.
    let (r, a) = propose(&dao, "stricter-4", &stricter(), &[1, 2, 3], 60);
    assert_eq!(json(&r)["policy_version"], 2, "{r:?}");
    for o in &a {
        assert_eq!(json(o)["approved"], Value::Bool(true));
    }
    // Now 2 BTC is "major": three approvals no longer sign it.
    let (r, _) = sign(&dao, "two-new", &two, &[1, 2], 6);
    timed_out(&r, "major", 5);
    // A policy whose smallest tier is below the weights fixed at creation is refused.
    let (r, _) = propose(
        &dao,
        "too-loose",
        &policy(None, &[("any", None, 2)]),
        &[],
        30,
    );
    assert_eq!(r.code, Some(1));
    assert!(r.stderr.contains("smallest tier needs 2"), "{}", r.stderr);
}

/// Admins say no to a policy change (`approve --reject`): the provider counts rejections with
/// the same quorum as approvals, so once the admins left cannot reach the admin quorum the change
/// is refused at once, in the topic: the proposer stops with the reason instead of waiting for
/// its timeout, and the policy in force stays.
#[test]
fn a_policy_change_rejected_by_enough_admins_is_refused_at_once() {
    let dao = create_dao(&guarded());
    let file = dao.file("rejected.toml");
    std::fs::write(&file, stricter()).unwrap();
    let request = dao.file("rejected.request");
    let proposer = dao.spawn(admin_args(
        &dao,
        &["policy", "--policy", &p(&file)],
        &request,
        "120",
    ));
    wait_for(&request);
    let reject = |i: usize| {
        let extra = ["--reject", "--reason", "too strict"];
        json(
            &dao.spawn(approve_args(&dao.homes[i], &request, "60", &extra))
                .join()
                .unwrap(),
        )
    };
    // Five admins, four approvals needed: one rejection leaves four who may still approve.
    let first = reject(1);
    assert_eq!(
        (&first["rejected"], &first["dead"]),
        (&Value::Bool(true), &Value::Bool(false))
    );
    let second = reject(2);
    assert_eq!(second["dead"], Value::Bool(true), "{second}");
    let r = proposer.join().unwrap();
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stderr.contains("rejected by"), "{}", r.stderr);
    // Still version 1: a spend of 2 BTC is "small" and three approvals sign it.
    let two = bitcoin_tx::payment(&dao.group_key, &[3 * BTC], 2 * BTC, BTC - 10_000).unwrap();
    let (r, a) = sign(&dao, "two-after-rejection", &two, &[1, 2], 60);
    signed(&dao, &r, &a, &two);
}

#[test]
fn an_approval_for_one_request_is_refused_in_another() {
    use cosigner_client::dao::{open_request, read_envelope};
    use cosigner_client::home::Home;
    use cosigner_client::session::Session;
    use cosigner_client::trust::Trust;
    use cosigner_protocol::dao::{Approval, DaoMessage, sighashes_digest};
    use cosigner_protocol::mailbox::Envelope;
    use cosigner_protocol::wire::{Request, Response};
    use serde_bytes::ByteBuf;

    let dao = create_dao(&tiers());
    let spend = bitcoin_tx::payment(&dao.group_key, &[2 * BTC], BTC, BTC - 10_000).unwrap();
    let (r, a) = sign(&dao, "first", &spend, &[1, 2], 60);
    signed(&dao, &r, &a, &spend);
    let first = open_request(&read_envelope(&dao.file("first.request")).unwrap()).unwrap();
    let first_topic = first.topic().unwrap();

    // The same PSBT asked again: a new request. Its requester's approval alone is not enough.
    let psbt = dao.file("second.psbt");
    std::fs::write(&psbt, &spend.psbt_base64).unwrap();
    let second_file = dao.file("second.request");
    let requester = dao.spawn(sign_args(
        &dao.homes[0],
        &dao.wallet,
        &psbt,
        &second_file,
        "8",
    ));
    wait_for(&second_file);
    let second = read_envelope(&second_file).unwrap();
    // Let the requester's courier deliver its request first.
    std::thread::sleep(Duration::from_secs(1));

    let trust = Trust::load(&dao.d.dir.path().join("trust.toml")).unwrap();
    let mut provider = Session::connect(&dao.d.provider.addr(), &trust).unwrap();
    // Read as Bob: the wallet's topics admit its members only.
    let bob_home = Home::open(&dao.homes[1]).unwrap();
    let (_, invitation) =
        cosigner_client::dao::dao_info(&bob_home.wallet(&first.wallet_id).unwrap()).unwrap();
    let mut mailbox =
        cosigner_client::dao::member_mailbox(&bob_home, &dao.d.mailbox, &invitation).unwrap();
    // Bob's and Carol's approvals of the first request, delivered as they are for the second
    // topic: refused (their signed topic is the first request's).
    let old: Vec<ByteBuf> = mailbox
        .fetch(&first_topic, 0)
        .unwrap()
        .into_iter()
        .filter(|(_, e)| matches!(DaoMessage::decode(&e.body), Ok(DaoMessage::Approval(_))))
        .map(|(_, e)| ByteBuf::from(e.encode().unwrap()))
        .collect();
    assert!(
        old.len() >= 3,
        "the first request's approvals are in the mailbox"
    );
    // Bob re-signs his first approval into the second topic: refused (it names the first request).
    let bob = Home::open(&dao.homes[1]).unwrap().device_key().unwrap();
    let sighashes: Vec<[u8; 32]> = cosigner_client::dao::summarize(
        &Home::open(&dao.homes[1])
            .unwrap()
            .wallet(&first.wallet_id)
            .unwrap(),
        &first.psbt,
    )
    .unwrap()
    .sighashes;
    let first_hash = first.hash().unwrap();
    let moved = Envelope::seal(
        &bob,
        second.topic,
        DaoMessage::Approval(Approval {
            request: ByteBuf::from(first_hash.to_vec()),
            party: pid(2),
            sighashes: ByteBuf::from(sighashes_digest(&first_hash, &sighashes).to_vec()),
        })
        .encode()
        .unwrap(),
    )
    .unwrap();
    let mut delivery = old.clone();
    delivery.push(ByteBuf::from(moved.encode().unwrap()));
    let notes = match provider
        .call(&Request::Mailbox {
            topic: ByteBuf::from(second.topic.to_vec()),
            envelopes: delivery,
            from: 0,
        })
        .unwrap()
    {
        Response::Mailbox { notes, .. } => notes,
        other => panic!("{other:?}"),
    };
    assert_eq!(notes.len(), old.len() + 1, "{notes:?}");
    assert!(
        notes[..old.len()]
            .iter()
            .all(|n| n.contains("envelope refused")),
        "{notes:?}"
    );
    assert!(
        notes[old.len()].contains("for another request"),
        "{notes:?}"
    );
    let r = requester.join().unwrap();
    timed_out(&r, "small", 3);
}

fn wallet_file(dao: &Dao, member: usize, ext: &str) -> PathBuf {
    dao.homes[member]
        .join("wallets")
        .join(format!("{}.{ext}", dao.wallet))
}

fn address_of(dao: &Dao, member: usize) -> String {
    let text = std::fs::read_to_string(wallet_file(dao, member, "json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    v["address"].as_str().unwrap().to_owned()
}

#[test]
fn a_refresh_by_every_member_keeps_the_address_and_retires_the_old_shares() {
    let dao = create_dao(&tiers());
    let address = address_of(&dao, 0);
    // Bob's epoch-0 share, copied aside.
    let bob_share = wallet_file(&dao, 1, "share");
    let old_share = std::fs::read(&bob_share).unwrap();

    let request = dao.file("refresh.request");
    let proposer = dao.spawn(admin_args(&dao, &["refresh"], &request, "120"));
    wait_for(&request);
    let others: Vec<_> = (1..5)
        .map(|i| {
            let h = dao.spawn(approve_args(&dao.homes[i], &request, "120", &["--yes"]));
            std::thread::sleep(Duration::from_millis(100));
            h
        })
        .collect();
    assert_eq!(json(&proposer.join().unwrap())["epoch"], 1);
    for o in others {
        assert_eq!(json(&o.join().unwrap())["epoch"], 1);
    }
    for i in 0..5 {
        assert_eq!(address_of(&dao, i), address, "member {i} keeps the address");
        assert!(!wallet_file(&dao, i, "prepared").exists());
    }
    assert_ne!(std::fs::read(&bob_share).unwrap(), old_share);

    // Epoch 1 signs: the requester, Bob and Carol with the provider.
    let spend = bitcoin_tx::payment(&dao.group_key, &[3 * BTC], 2 * BTC, BTC - 10_000).unwrap();
    let (r, a) = sign(&dao, "after-refresh", &spend, &[1, 2], 60);
    signed(&dao, &r, &a, &spend);

    // Bob's epoch-0 share put back: no valid transaction comes out.
    std::fs::write(&bob_share, &old_share).unwrap();
    let (r, _) = sign(&dao, "old-share", &spend, &[1, 2], 10);
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(!r.stdout.contains("tx_hex"), "{r:?}");
    assert!(
        r.stderr.contains("party 2 misbehaved"),
        "the provider names Bob's stale share: {}",
        r.stderr
    );
}

/// `--json` of `cosigner` run by member `member` with `args` after `--home`.
fn member_json(dao: &Dao, member: usize, args: &[&str]) -> Value {
    let mut all = vec!["--home".to_owned(), p(&dao.homes[member])];
    all.extend(args.iter().map(|a| (*a).to_owned()));
    json(&cosigner_tests::members::cosigner(&dao.d, all))
}

#[test]
fn a_dao_spends_derived_addresses_and_its_policy_sees_derived_change() {
    use bitcoin::bip32::{DerivationPath, Fingerprint, Xpub};
    use std::str::FromStr;
    let dao = create_dao(&tiers());
    let wallet = dao.wallet.as_str();
    let receive = member_json(
        &dao,
        0,
        &["address", "--wallet", wallet, "--index", "2", "--json"],
    );
    let change = member_json(
        &dao,
        3,
        &[
            "address", "--wallet", wallet, "--change", "--index", "0", "--json",
        ],
    );
    let descriptors = member_json(
        &dao,
        4,
        &["wallet", "descriptor", "--wallet", wallet, "--json"],
    );
    // Inputs of child m/0/2 (found by their script); 9 BTC to a stranger and the rest to the
    // change child m/1/0, labelled with its derivation as wallets do.
    let spend = bitcoin_tx::build(
        receive["output_key"].as_str().unwrap(),
        &[12 * BTC, 8 * BTC],
        &[
            (Pay::To(bitcoin_tx::foreign_address()), 9 * BTC),
            (
                Pay::Script(format!("5120{}", change["output_key"].as_str().unwrap())),
                11 * BTC - 20_000,
            ),
        ],
    )
    .unwrap();
    let mut psbt = bitcoin::Psbt::from_str(&spend.psbt_base64).unwrap();
    let xpub = Xpub::from_str(descriptors["xpub"].as_str().unwrap()).unwrap();
    let secp = bitcoin::secp256k1::Secp256k1::verification_only();
    let path = DerivationPath::from_str("m/1/0").unwrap();
    let internal = xpub
        .derive_pub(&secp, &path)
        .unwrap()
        .public_key
        .x_only_public_key()
        .0;
    let fingerprint = Fingerprint::from_str(descriptors["fingerprint"].as_str().unwrap()).unwrap();
    psbt.outputs[1]
        .tap_key_origins
        .insert(internal, (Vec::new(), (fingerprint, path)));
    let spend = Spend {
        psbt_base64: psbt.to_string(),
        prevouts: spend.prevouts,
    };
    // 9 BTC (+ fee) leave: "small", three approvals, only because the change is recognised.
    let file = dao.file("derived.psbt");
    std::fs::write(&file, &spend.psbt_base64).unwrap();
    let request = dao.file("derived.request");
    let signed_psbt = dao.file("derived.signed.psbt");
    let mut args = sign_args(&dao.homes[0], wallet, &file, &request, "60");
    args.extend(["--psbt-out".to_owned(), p(&signed_psbt)]);
    let (r, a) = requested(&dao, &request, args, &[1, 2], 60);
    signed(&dao, &r, &a, &spend);
    let out = json(&r);
    // The PSBT written carries each input's key signature, read back from the published
    // transaction; finalized by anyone, it is that transaction.
    let written = std::fs::read_to_string(&signed_psbt).unwrap();
    assert_eq!(out["psbt"], written.trim());
    let tx = bitcoin_tx::finalized_by_hand(written.trim()).unwrap();
    assert_eq!(out["tx_hex"], tx.as_str());
}
