//! The DAO treasury in ETH end to end: five members' `cosigner` processes create an Ethereum
//! treasury through the parent's mailbox (`dao create --chain ethereum`, threshold ECDSA among
//! the members and the provider's weighted parties), then transactions are requested with
//! `sign --eth-tx --request-out` and approved with `approve`, under the policy exactly as the
//! scenario states it (`examples/policies/dao-eth.toml`: below 10 ETH 3 approvals, below
//! 100 ETH 4, more all 5). A 5 ETH spend with 3 approvals and a 20 ETH spend with 4 are signed,
//! and py-evm executes both from the treasury's address; a 20 ETH spend that gets only 3
//! approvals (the two others reject) is refused.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::Duration;

use cosigner_eth::SignedTx;
use cosigner_protocol::dao::DaoMessage;
use cosigner_tests::Outcome;
use cosigner_tests::ecdsa::{self, SKIP_LINE, TESTER_CHAIN_ID};
use cosigner_tests::members::{
    Dao, Member, Watch, approval_by, approve_args, args, json, p, wait_for,
};
use serde_json::Value;

const ETH: u128 = 1_000_000_000_000_000_000;
const BOB: &str = "0x000000000000000000000000000000000000b0b0";

/// The scenario's policy, pinned to the tester chain instead of mainnet.
fn policy() -> String {
    include_str!("../../examples/policies/dao-eth.toml").replace(
        "chain_ids = [1]",
        &format!("chain_ids = [{TESTER_CHAIN_ID}]"),
    )
}

/// An `eth_signTransaction` object paying `wei` to Bob from the treasury.
fn payment(dao: &Dao, tag: &str, nonce: u64, wei: u128) -> PathBuf {
    let path = dao.file(&format!("{tag}.json"));
    std::fs::write(
        &path,
        format!(
            r#"{{"from":"{from}","type":"0x2","chainId":"{TESTER_CHAIN_ID:#x}","nonce":"{nonce:#x}",
                "to":"{BOB}","value":"{wei:#x}","gas":"0x5208",
                "maxFeePerGas":"0x77359400","maxPriorityFeePerGas":"0x3b9aca00"}}"#,
            from = dao.created["address"].as_str().unwrap()
        ),
    )
    .unwrap();
    path
}

/// `sign --eth-tx TX --request-out REQUEST` by Alice (member 0).
fn sign_args(dao: &Dao, tx: &Path, request: &Path) -> Vec<String> {
    args(&[
        "--home",
        &p(&dao.homes[0]),
        "sign",
        "--wallet",
        &dao.wallet,
        "--eth-tx",
        &p(tx),
        "--request-out",
        &p(request),
        "--timeout",
        "240",
        "--json",
    ])
}

/// Member 0 requests `tx`; once the request is written, `approvers` approve it and
/// `rejecters` reject it, each in its own process.
fn requested(
    dao: &Dao,
    tag: &str,
    tx: &Path,
    approvers: &[usize],
    rejecters: &[usize],
) -> (Outcome, Vec<Outcome>) {
    let request = dao.file(&format!("{tag}.request"));
    let requester = dao.spawn(sign_args(dao, tx, &request));
    wait_for(&request);
    let mut others: Vec<JoinHandle<Outcome>> = Vec::new();
    for &i in approvers {
        others.push(dao.spawn(approve_args(&dao.homes[i], &request, "240", &["--yes"])));
    }
    for &i in rejecters {
        let flags = ["--reject", "--reason", "too much"];
        others.push(dao.spawn(approve_args(&dao.homes[i], &request, "240", &flags)));
    }
    let requester = requester.join().unwrap();
    let others = others.into_iter().map(|h| h.join().unwrap()).collect();
    (requester, others)
}

fn signed(out: &Outcome) -> SignedTx {
    let v = json(out);
    let raw = v["raw_tx"].as_str().unwrap().trim_start_matches("0x");
    let hash = v["tx_hash"].as_str().unwrap().trim_start_matches("0x");
    SignedTx {
        raw: hex::decode(raw).unwrap(),
        hash: hex::decode(hash).unwrap().try_into().unwrap(),
    }
}

#[test]
fn five_members_make_an_eth_treasury_and_its_tiers_decide_what_is_signed() {
    let dao = Dao::create_on(
        5,
        &policy(),
        "300",
        Duration::from_millis(100),
        &["--chain", "ethereum"],
    );
    let address = dao.created["address"].as_str().unwrap().to_owned();
    assert!(
        address.starts_with("0x") && address.len() == 42,
        "{address}"
    );
    assert_eq!(dao.created["chain"], Value::from("ethereum"));

    // 5 ETH: the smallest tier, 3 approvals (the requester's and two more).
    let small = payment(&dao, "small", 0, 5 * ETH);
    let (out, approvals) = requested(&dao, "small", &small, &[2, 4], &[]);
    let first = signed(&out);
    for a in &approvals {
        assert_eq!(json(a)["approved"], Value::Bool(true), "{a:?}");
        assert_eq!(json(a)["tx_hash"], json(&out)["tx_hash"]);
    }

    // 20 ETH: 4 approvals; DKLs23 signs with the provider and the first 3 approvers.
    let large = payment(&dao, "large", 1, 20 * ETH);
    let (out, _) = requested(&dao, "large", &large, &[1, 2, 3], &[]);
    let second = signed(&out);

    // 20 ETH with 3 approvals: the two others reject, the rule's 4 can no longer be reached.
    let refused = payment(&dao, "refused", 2, 20 * ETH);
    let (out, others) = requested(&dao, "refused", &refused, &[1, 2], &[3, 4]);
    assert_ne!(out.code, Some(0), "{out:?}");
    assert!(
        out.stderr.contains("refused") || out.stderr.contains("rejected"),
        "{}",
        out.stderr
    );
    // Nobody got a transaction: the approvers are told it was refused, the rejecters that it
    // is dead.
    assert!(
        others.iter().all(|o| !o.stdout.contains("tx_hash")),
        "{others:?}"
    );
    assert!(
        others[..2]
            .iter()
            .all(|o| o.code != Some(0) && o.stderr.contains("refused"))
    );

    let mut dao = dao;
    let third = a_killed_member_runs_approve_again(&dao);
    let fourth = the_provider_restarts_mid_signing(&mut dao);
    let fifth = the_admin_quorum_changes_the_policy(&dao);
    let sixth = every_member_refreshes_and_the_new_shares_sign(&dao);
    the_requests_are_listed(&dao);
    a_malformed_transaction_is_refused(&dao);

    if !ecdsa::python_available() {
        println!("{SKIP_LINE}");
        return;
    }
    let txs = [first, second, third, fourth, fifth, sixth];
    let report = ecdsa::run_in_evm(&address, 50 * ETH, &txs).unwrap();
    assert_eq!(report.senders, vec![address.clone(); 6]);
    assert_eq!(report.receipts, vec![1; 6]);
    assert_eq!(report.balances[&BOB.to_lowercase()], (43 * ETH).to_string());
}

/// `dao refresh` by Alice, approved by the four others: every share moves to epoch 1 through the
/// mailbox, the address stays, and a 1 ETH spend signs with the new shares.
fn every_member_refreshes_and_the_new_shares_sign(dao: &Dao) -> SignedTx {
    let share = |i: usize| dao.homes[i].join(format!("wallets/{}.ecdsa", dao.wallet));
    let old_share = std::fs::read(share(1)).unwrap();
    let request = dao.file("refresh.request");
    let proposer = dao.spawn(dao.proposal_args(0, &["refresh"], &request, "240"));
    wait_for(&request);
    let others: Vec<JoinHandle<Outcome>> = (1..5)
        .map(|i| dao.spawn(approve_args(&dao.homes[i], &request, "240", &["--yes"])))
        .collect();
    let proposer = proposer.join().unwrap();
    assert_eq!(json(&proposer)["epoch"], 1, "{proposer:?}");
    for o in others {
        assert_eq!(json(&o.join().unwrap())["epoch"], 1);
    }
    assert_ne!(
        std::fs::read(share(1)).unwrap(),
        old_share,
        "Bob's share moved"
    );
    for home in &dao.homes {
        let file = std::fs::read_to_string(home.join(format!("wallets/{}.eth", dao.wallet)));
        let file: Value = serde_json::from_str(&file.unwrap()).unwrap();
        assert_eq!(file["epoch"], 1);
        assert_eq!(file["address"], dao.created["address"], "the address stays");
    }
    let after = payment(dao, "after-refresh", 5, ETH);
    let (out, _) = requested(dao, "after-refresh", &after, &[1, 2], &[]);
    signed(&out)
}

/// `dao requests --all --json` lists the treasury's requests as the mailbox holds them, with
/// what the member reads in each transaction and how it ended.
fn the_requests_are_listed(dao: &Dao) {
    let out = cosigner_tests::members::cosigner(
        &dao.d,
        args(&[
            "--home",
            &p(&dao.homes[3]),
            "dao",
            "requests",
            "--wallet",
            &dao.wallet,
            "--all",
            "--json",
        ]),
    );
    let listed = json(&out);
    let requests = listed["requests"].as_array().unwrap();
    assert!(requests.len() >= 6, "{listed}");
    let small = requests
        .iter()
        .find(|r| r["value_wei"] == (5 * ETH).to_string())
        .unwrap();
    assert_eq!(
        small["to"],
        Value::from(cosigner_eth::checksummed(&BOB.parse().unwrap()))
    );
    assert_eq!(small["approvals_needed"], 3);
    assert_eq!(small["pending"], false);
    assert_eq!(small["leaving"][0]["asset"], "eth");
    let refused = requests
        .iter()
        .filter(|r| r["rejections"].as_array().is_some_and(|a| a.len() == 2))
        .count();
    assert_eq!(refused, 1, "{listed}");
    // Nothing is pending any more.
    let pending = cosigner_tests::members::cosigner(
        &dao.d,
        args(&[
            "--home",
            &p(&dao.homes[3]),
            "dao",
            "requests",
            "--wallet",
            &dao.wallet,
            "--json",
        ]),
    );
    assert_eq!(json(&pending)["requests"], Value::Array(Vec::new()));
}

/// `dao policy` on the treasury: the new policy (in ETH) needs the admin quorum (all five); with
/// it in force, 15 ETH is "small" (3 approvals).
fn the_admin_quorum_changes_the_policy(dao: &Dao) -> SignedTx {
    let wider = policy().replace(r#"below = "10 ETH""#, r#"below = "16 ETH""#);
    let file = dao.file("wider.toml");
    std::fs::write(&file, wider).unwrap();
    let request = dao.file("wider.request");
    let policy = ["policy", "--policy", &p(&file)];
    let proposer = dao.spawn(dao.proposal_args(0, &policy, &request, "240"));
    wait_for(&request);
    let admins: Vec<JoinHandle<Outcome>> = (1..5)
        .map(|i| dao.spawn(approve_args(&dao.homes[i], &request, "240", &["--yes"])))
        .collect();
    assert_eq!(json(&proposer.join().unwrap())["policy_version"], 2);
    for a in admins {
        assert_eq!(json(&a.join().unwrap())["policy_version"], 2);
    }
    let fifteen = payment(dao, "fifteen", 4, 15 * ETH);
    let (out, _) = requested(dao, "fifteen", &fifteen, &[3, 4], &[]);
    signed(&out)
}

/// A 1 ETH payment (nonce `nonce`) in flight: Alice requested it, Bob and Carol approved and
/// the provider chose the three of them; Bob's signing hello of round 0 is in the topic.
fn chosen_and_started(
    dao: &Dao,
    tag: &str,
    nonce: u64,
) -> (Member, Member, Member, PathBuf, Watch) {
    let tx = payment(dao, tag, nonce, ETH);
    let request = dao.file(&format!("{tag}.request"));
    let alice = Member::start(
        &dao.d,
        &format!("{tag}-alice"),
        sign_args(dao, &tx, &request),
    );
    wait_for(&request);
    let mut watch = dao.watch(&request);
    watch.wait("Alice's approval", 1, &approval_by(&dao.keys[0]));
    let bob = dao.approve(&format!("{tag}-bob"), 1, &request, "240", &["--yes"]);
    let carol = dao.approve(&format!("{tag}-carol"), 2, &request, "240", &["--yes"]);
    let bob_key = dao.keys[1].clone();
    watch.wait("Bob's round-0 hello", 1, &|s, m| {
        s == bob_key.as_slice() && matches!(m, DaoMessage::EcdsaSignHello { round: 0, .. })
    });
    (alice, bob, carol, request, watch)
}

/// The provider's signer sets of a request, by round.
fn signer_set_rounds(dao: &Dao, watch: &mut Watch) -> Vec<u32> {
    let provider = dao.invitation.provider_key.to_vec();
    watch
        .messages()
        .into_iter()
        .filter(|(s, _)| *s == provider)
        .filter_map(|(_, m)| match m {
            DaoMessage::SignerSet { round, .. } => Some(round),
            _ => None,
        })
        .collect()
}

/// Bob is killed (SIGKILL) after his hello: his round secrets die with him. He runs `approve`
/// again (no `--yes`: his approval is in the topic), posts a new hello, and the provider opens
/// round 1 with fresh secrets; the payment is signed once.
fn a_killed_member_runs_approve_again(dao: &Dao) -> SignedTx {
    let (alice, bob, carol, request, mut watch) = chosen_and_started(dao, "killed", 2);
    assert_eq!(bob.kill().code, None);
    let bob = dao.approve("killed-bob-again", 1, &request, "240", &[]);
    let (alice, bob, carol) = (alice.finish(), bob.finish(), carol.finish());
    assert_eq!(alice.code, Some(0), "{alice:?}\n{bob:?}\n{carol:?}");
    let tx = signed(&alice);
    for o in [&bob, &carol] {
        assert_eq!(json(o)["tx_hash"], json(&alice)["tx_hash"], "{o:?}");
    }
    assert_eq!(signer_set_rounds(dao, &mut watch), vec![0, 1]);
    tx
}

/// The provider restarts mid-signing (its round-0 secrets are gone); Alice, Bob and Carol,
/// stopped meanwhile, are killed and run their commands again: the provider founds the request
/// again after round 0 and signs in round 1.
fn the_provider_restarts_mid_signing(dao: &mut Dao) -> SignedTx {
    let (alice, bob, carol, request, mut watch) = chosen_and_started(dao, "restart", 3);
    for m in [&alice, &bob, &carol] {
        m.signal("-STOP");
    }
    dao.d.provider.stop();
    dao.d.provider.start_processes().unwrap();
    for m in [alice, bob, carol] {
        assert_eq!(m.kill().code, None);
    }
    let tx = dao.file("restart.json");
    let alice = Member::start(&dao.d, "restart-alice-again", sign_args(dao, &tx, &request));
    let bob = dao.approve("restart-bob-again", 1, &request, "240", &[]);
    let carol = dao.approve("restart-carol-again", 2, &request, "240", &[]);
    let (alice, bob, carol) = (alice.finish(), bob.finish(), carol.finish());
    let signed_tx = signed(&alice);
    for o in [&bob, &carol] {
        assert_eq!(json(o)["tx_hash"], json(&alice)["tx_hash"], "{o:?}");
    }
    let rounds = signer_set_rounds(dao, &mut watch);
    assert_eq!(rounds.first(), Some(&0));
    assert!(
        rounds.iter().all(|r| *r <= 1) && rounds.contains(&1),
        "{rounds:?}"
    );
    signed_tx
}

/// A member's request whose transaction does not decode (delivered straight to the provider, as
/// any member's courier could): the provider refuses it in the topic and evaluates nothing.
fn a_malformed_transaction_is_refused(dao: &Dao) {
    use cosigner_client::home::Home;
    use cosigner_protocol::dao::SignRequest;
    use cosigner_protocol::mailbox::Envelope;
    use cosigner_protocol::wire::WalletId;
    use serde_bytes::ByteBuf;

    let home = Home::open(&dao.homes[0]).unwrap();
    let created_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let request = SignRequest {
        wallet_id: WalletId::from_hex(&dao.wallet).unwrap(),
        // A type-2 envelope byte, then an RLP list cut short.
        psbt: ByteBuf::from(vec![0x02, 0xf8, 0x70, 0x01]),
        requester: cosigner_tests::pid(1),
        created_ms,
        nonce: ByteBuf::from(vec![0x5e; 16]),
    };
    let topic = request.topic().unwrap();
    let body = DaoMessage::SignRequest(request).encode().unwrap();
    let envelope = Envelope::seal(&home.device_key().unwrap(), topic, body).unwrap();
    let (said, notes) = dao.deliver(&[envelope]);
    assert!(
        !said.iter().any(|m| matches!(m, DaoMessage::Evaluation(_))),
        "{said:?}"
    );
    let refused = said.iter().any(|m| matches!(m, DaoMessage::Refused { .. }))
        || notes.iter().any(|n| n.contains("refused"));
    assert!(refused, "{said:?} {notes:?}");
}
