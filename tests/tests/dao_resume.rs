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
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cosigner_client::dao::{member_mailbox, open_invitation, read_envelope};
use cosigner_client::home::Home;
use cosigner_client::mailbox::MailboxClient;
use cosigner_protocol::auth::public_key_bytes;
use cosigner_protocol::dao::{DaoMessage, Invitation};
use cosigner_protocol::mailbox::Topic;
use cosigner_tests::bitcoin_tx::{self, Pay, Spend};
use cosigner_tests::{Deployment, Outcome, bin, run};
use frost_core::SigningPackage;
use serde_json::Value;

type Tr = frost_secp256k1_tr::Secp256K1Sha256TR;

const BTC: u64 = 100_000_000;
const NAMES: [&str; 3] = ["alice", "bob", "carol"];
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

fn p(path: &Path) -> String {
    path.to_str().unwrap().to_owned()
}

fn json(out: &Outcome) -> Value {
    serde_json::from_str(out.ok()).unwrap_or_else(|e| panic!("{e}: {:?}", out.stdout))
}

fn wait_for(path: &Path) {
    let started = Instant::now();
    while !path.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{path:?} never appeared"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn env(d: &Deployment) -> Vec<(String, String)> {
    let mut env = d.env();
    env.push(("COSIGNER_MAILBOX".into(), d.mailbox.clone()));
    env
}

/// Runs `cosigner` to the end in a thread.
fn spawn(d: &Deployment, args: Vec<String>) -> JoinHandle<Outcome> {
    let env = env(d);
    std::thread::spawn(move || run("cosigner", args, &env))
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

/// A member's `cosigner` process the test may stop, continue or kill (by its own child's id).
struct Member {
    child: Option<Child>,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Member {
    fn start(d: &Deployment, tag: &str, args: Vec<String>) -> Self {
        let stdout = d.dir.path().join(format!("{tag}.stdout"));
        let stderr = d.dir.path().join(format!("{tag}.stderr"));
        let child = Command::new(bin("cosigner"))
            .args(args)
            .envs(env(d))
            .env_remove("COSIGNER_PKCS11_PIN")
            .env_remove("COSIGNER_PKCS11_SO_PIN")
            .env("RUST_BACKTRACE", "0")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        Self {
            child: Some(child),
            stdout,
            stderr,
        }
    }

    /// `kill -STOP` / `kill -CONT` this process.
    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().unwrap().id().to_string();
        let status = Command::new("kill")
            .args([signal, pid.as_str()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {signal} {pid}");
    }

    fn outcome(&mut self, status: std::process::ExitStatus) -> Outcome {
        Outcome {
            code: status.code(),
            stdout: std::fs::read_to_string(&self.stdout).unwrap_or_default(),
            stderr: std::fs::read_to_string(&self.stderr).unwrap_or_default(),
        }
    }

    /// SIGKILL: the process gets no chance to clean anything up.
    fn kill(mut self) -> Outcome {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        let status = child.wait().unwrap();
        self.outcome(status)
    }

    fn finish(mut self) -> Outcome {
        let mut child = self.child.take().unwrap();
        let status = child.wait().unwrap();
        self.outcome(status)
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Reads a topic as a member, the way the test decides when to stop or kill a process.
struct Watch {
    mailbox: MailboxClient,
    topic: Topic,
}

impl Watch {
    fn new(d: &Deployment, home: &Path, invitation: &Invitation, topic: Topic) -> Self {
        let home = Home::open(home).unwrap();
        Self {
            mailbox: member_mailbox(&home, &d.mailbox, invitation).unwrap(),
            topic,
        }
    }

    fn messages(&mut self) -> Vec<(Vec<u8>, DaoMessage)> {
        self.mailbox
            .fetch(&self.topic, 0)
            .unwrap()
            .into_iter()
            .filter_map(|(_, e)| {
                DaoMessage::decode(&e.body)
                    .ok()
                    .map(|m| (e.sender.into_vec(), m))
            })
            .collect()
    }

    fn count(&mut self, pred: &dyn Fn(&[u8], &DaoMessage) -> bool) -> usize {
        self.messages()
            .iter()
            .filter(|(s, m)| pred(s.as_slice(), m))
            .count()
    }

    /// Waits until `n` messages match `pred`.
    fn wait(&mut self, what: &str, n: usize, pred: &dyn Fn(&[u8], &DaoMessage) -> bool) {
        let started = Instant::now();
        while self.count(pred) < n {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "never saw {what} in the topic"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn device_key(home: &Path) -> Vec<u8> {
    public_key_bytes(&Home::open(home).unwrap().device_key().unwrap())
}

/// A deployment, three member homes, and the members and policy files.
fn setup() -> (Deployment, Vec<PathBuf>) {
    let d = Deployment::start().unwrap();
    let homes: Vec<PathBuf> = NAMES.iter().map(|n| d.home(n)).collect();
    let mut members = String::new();
    for (name, home) in NAMES.iter().zip(&homes) {
        let out = d.cosigner(["--home", &p(home), "device-key", "--json"]);
        let key = json(&out)["device_key"].as_str().unwrap().to_owned();
        members.push_str(&format!(
            "[[member]]\nname = \"{name}\"\ndevice_key = \"{key}\"\n\n"
        ));
    }
    std::fs::write(d.dir.path().join("members.toml"), members).unwrap();
    std::fs::write(d.dir.path().join("policy.toml"), POLICY).unwrap();
    (d, homes)
}

fn create_args(d: &Deployment, home: &Path, invitation: &Path) -> Vec<String> {
    args(&[
        "--home",
        &p(home),
        "dao",
        "create",
        "--members",
        &p(&d.dir.path().join("members.toml")),
        "--policy",
        &p(&d.dir.path().join("policy.toml")),
        "--invitation-out",
        &p(invitation),
        "--timeout",
        TIMEOUT,
        "--json",
    ])
}

fn join_args(home: &Path, invitation: &Path) -> Vec<String> {
    args(&[
        "--home",
        &p(home),
        "join",
        &p(invitation),
        "--timeout",
        TIMEOUT,
        "--json",
    ])
}

fn sign_args(home: &Path, wallet: &str, psbt: &Path, request: &Path) -> Vec<String> {
    args(&[
        "--home",
        &p(home),
        "sign",
        "--wallet",
        wallet,
        "--psbt",
        &p(psbt),
        "--request-out",
        &p(request),
        "--timeout",
        TIMEOUT,
        "--json",
    ])
}

/// `approve`; without `yes` the process has no answer to give to the prompt (stdin is closed),
/// so it can only go on if it finds its own approval in the topic.
fn approve_args(home: &Path, request: &Path, yes: bool) -> Vec<String> {
    let mut a = args(&[
        "--home",
        &p(home),
        "approve",
        "--request",
        &p(request),
        "--timeout",
        TIMEOUT,
        "--json",
    ]);
    if yes {
        a.push("--yes".into());
    }
    a
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
    let (d, homes) = setup();
    let invitation = d.dir.path().join("invitation");
    let creator = spawn(&d, create_args(&d, &homes[0], &invitation));
    wait_for(&invitation);
    let envelope = read_envelope(&invitation).unwrap();
    let inv = open_invitation(&envelope).unwrap();
    let wallet_id = inv.layout().unwrap().wallet_id.to_hex();
    let mut watch = Watch::new(&d, &homes[0], &inv, envelope.topic);
    let carol_key = device_key(&homes[2]);

    // Carol joins and is killed as soon as her round-1 message is in the topic: Bob has not
    // joined, so the DKG cannot be past round 1, and Carol's round secrets die with her process.
    let carol = Member::start(&d, "carol-join-1", join_args(&homes[2], &invitation));
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
    let bob = spawn(&d, join_args(&homes[1], &invitation));
    let carol = spawn(&d, join_args(&homes[2], &invitation));
    let created = json(&creator.join().unwrap());
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
    let again = run("cosigner", join_args(&homes[2], &invitation), &env(&d));
    assert_eq!(json(&again), created);

    // Carol's share (of attempt 1) signs with Alice's and the provider's.
    let group_key = created["group_public_key"].as_str().unwrap();
    let spend = bitcoin_tx::build(
        group_key,
        &[2 * BTC],
        &[
            (Pay::To(bitcoin_tx::foreign_address()), BTC),
            (Pay::Change, BTC - 10_000),
        ],
    )
    .unwrap();
    let psbt = d.dir.path().join("after-retry.psbt");
    std::fs::write(&psbt, &spend.psbt_base64).unwrap();
    let request = d.dir.path().join("after-retry.request");
    let wallet = created["wallet_id"].as_str().unwrap();
    let alice = spawn(&d, sign_args(&homes[0], wallet, &psbt, &request));
    wait_for(&request);
    let carol = spawn(&d, approve_args(&homes[2], &request, true));
    let signed = json(&alice.join().unwrap());
    assert_eq!(json(&carol.join().unwrap())["approved"], Value::Bool(true));
    bitcoin_tx::verify_consensus(signed["tx_hex"].as_str().unwrap(), &spend.prevouts)
        .expect("valid under consensus rules");
}

struct Dao {
    d: Deployment,
    homes: Vec<PathBuf>,
    keys: Vec<Vec<u8>>,
    invitation: Invitation,
    wallet: String,
    group_key: String,
}

impl Dao {
    fn create() -> Self {
        let (d, homes) = setup();
        let invitation = d.dir.path().join("invitation");
        let creator = spawn(&d, create_args(&d, &homes[0], &invitation));
        wait_for(&invitation);
        let joiners: Vec<_> = homes[1..]
            .iter()
            .map(|h| spawn(&d, join_args(h, &invitation)))
            .collect();
        let created = json(&creator.join().unwrap());
        for j in joiners {
            assert_eq!(json(&j.join().unwrap()), created);
        }
        let inv = open_invitation(&read_envelope(&invitation).unwrap()).unwrap();
        Self {
            keys: homes.iter().map(|h| device_key(h)).collect(),
            d,
            homes,
            invitation: inv,
            wallet: created["wallet_id"].as_str().unwrap().to_owned(),
            group_key: created["group_public_key"].as_str().unwrap().to_owned(),
        }
    }

    /// A PSBT paying `amount` to a stranger (fee 10 000 sat) and the request file it will use.
    fn spend(&self, tag: &str, amount: u64) -> (Spend, PathBuf, PathBuf) {
        let spend = bitcoin_tx::build(
            &self.group_key,
            &[amount + BTC],
            &[
                (Pay::To(bitcoin_tx::foreign_address()), amount),
                (Pay::Change, BTC - 10_000),
            ],
        )
        .unwrap();
        let psbt = self.d.dir.path().join(format!("{tag}.psbt"));
        std::fs::write(&psbt, &spend.psbt_base64).unwrap();
        (
            spend,
            psbt,
            self.d.dir.path().join(format!("{tag}.request")),
        )
    }

    fn sign(&self, tag: &str, psbt: &Path, request: &Path) -> Member {
        Member::start(
            &self.d,
            tag,
            sign_args(&self.homes[0], &self.wallet, psbt, request),
        )
    }

    fn approve(&self, tag: &str, request: &Path, yes: bool) -> Member {
        Member::start(&self.d, tag, approve_args(&self.homes[1], request, yes))
    }

    fn watch(&self, request: &Path) -> Watch {
        let topic = read_envelope(request).unwrap().topic;
        Watch::new(&self.d, &self.homes[0], &self.invitation, topic)
    }

    fn is(&self, member: usize) -> impl Fn(&[u8]) -> bool + '_ {
        move |s: &[u8]| s == self.keys[member].as_slice()
    }
}

/// The transaction both outcomes name, checked under consensus rules.
fn both_signed(requester: &Outcome, approver: &Outcome, spend: &Spend) -> String {
    let r = json(requester);
    let a = json(approver);
    assert_eq!(a["approved"], Value::Bool(true), "{a}");
    assert_eq!(a["txid"], r["txid"]);
    bitcoin_tx::verify_consensus(r["tx_hex"].as_str().unwrap(), &spend.prevouts)
        .expect("valid under consensus rules");
    r["txid"].as_str().unwrap().to_owned()
}

/// The provider's commitment (its first party) in each signing package set, with its round.
fn provider_commitments(watch: &mut Watch, provider_party: u16) -> Vec<(u32, Vec<u8>)> {
    let id = frost_core::Identifier::<Tr>::try_from(provider_party).unwrap();
    watch
        .messages()
        .into_iter()
        .filter_map(|(_, m)| match m {
            DaoMessage::SigningPackages {
                packages, round, ..
            } => {
                let package = SigningPackage::<Tr>::deserialize(&packages[0]).unwrap();
                let c = package.signing_commitment(&id).unwrap();
                Some((round, c.serialize().unwrap()))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn members_killed_while_signing_run_again_and_each_spend_counts_once() {
    let dao = Dao::create();
    let provider_party = dao.invitation.layout().unwrap().provider_parties[0];
    let commitments_of = |member: usize, round: u32| {
        let is = dao.is(member);
        move |s: &[u8], m: &DaoMessage| {
            is(s) && matches!(m, DaoMessage::Commitments { round: r, .. } if *r == round)
        }
    };
    let approval_of = |member: usize| {
        let is = dao.is(member);
        move |s: &[u8], m: &DaoMessage| is(s) && matches!(m, DaoMessage::Approval(_))
    };

    // 1. Before the signing packages. Alice requests 1 BTC and is stopped once her approval is
    // in (she cannot commit before Bob approves). Bob approves, commits, and is killed: no
    // package can have used his commitments (Alice's are missing). Bob runs `approve` again
    // (without --yes: his approval is in the topic, he is not asked again) and commits anew;
    // the provider replaces his commitments. Alice, killed too, runs `sign` again: the same
    // request goes on.
    let (first, psbt, request) = dao.spend("first", BTC);
    let alice = dao.sign("alice-1", &psbt, &request);
    wait_for(&request);
    let mut watch = dao.watch(&request);
    watch.wait("Alice's approval", 1, &approval_of(0));
    alice.signal("-STOP");
    let bob = dao.approve("bob-1", &request, true);
    watch.wait("Bob's commitments", 1, &commitments_of(1, 0));
    assert_eq!(bob.kill().code, None);
    let bob = dao.approve("bob-1-again", &request, false);
    watch.wait("Bob's new commitments", 2, &commitments_of(1, 0));
    assert_eq!(alice.kill().code, None);
    let alice = dao.sign("alice-1-again", &psbt, &request);
    let (alice, bob) = (alice.finish(), bob.finish());
    let first_txid = both_signed(&alice, &bob, &first);
    assert!(
        alice.stderr.contains("resuming the request"),
        "{}",
        alice.stderr
    );
    assert!(bob.stderr.contains("already approved"), "{}", bob.stderr);
    let rounds = provider_commitments(&mut watch, provider_party);
    assert_eq!(rounds.len(), 1, "one package set, round 0: {rounds:?}");
    assert_eq!(rounds[0].0, 0);

    // 2. After the signing packages. Alice requests 0.5 BTC and is stopped after her approval;
    // Bob approves, commits, and is stopped. Alice goes on: the packages go out with Bob's
    // commitments and Alice signs. Bob is killed before he signs: his nonces are gone, so the
    // round cannot finish. Bob runs `approve` again; the provider starts round 1 with fresh
    // nonces and both sign again.
    let (second, psbt2, request2) = dao.spend("second", BTC / 2);
    let alice = dao.sign("alice-2", &psbt2, &request2);
    wait_for(&request2);
    let mut watch2 = dao.watch(&request2);
    watch2.wait("Alice's approval", 1, &approval_of(0));
    alice.signal("-STOP");
    let bob = dao.approve("bob-2", &request2, true);
    watch2.wait("Bob's commitments", 1, &commitments_of(1, 0));
    bob.signal("-STOP");
    alice.signal("-CONT");
    let alice_shares = {
        let is = dao.is(0);
        move |s: &[u8], m: &DaoMessage| is(s) && matches!(m, DaoMessage::Shares { round: 0, .. })
    };
    watch2.wait("Alice's round-0 shares", 1, &alice_shares);
    assert_eq!(bob.kill().code, None);
    let bob_shares = {
        let is = dao.is(1);
        move |s: &[u8], m: &DaoMessage| is(s) && matches!(m, DaoMessage::Shares { .. })
    };
    assert_eq!(watch2.count(&bob_shares), 0, "Bob never signed round 0");
    let bob = dao.approve("bob-2-again", &request2, false);
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
    let again = dao.sign("alice-1-after", &psbt, &request).finish();
    assert_eq!(json(&again)["txid"].as_str(), Some(first_txid.as_str()));
    let again = dao.approve("bob-2-after", &request2, false).finish();
    assert_eq!(json(&again)["txid"].as_str(), Some(second_txid.as_str()));
    assert_eq!(json(&again)["approved"], Value::Bool(true));

    // 4. Counted once each: 1.0001 + 0.5001 BTC have left. 0.99 BTC more reaches 2.4903 BTC,
    // within the 2.5 BTC a day (two counts of either spend would exceed it)...
    let (third, psbt3, request3) = dao.spend("third", 99_000_000);
    let alice = dao.sign("alice-3", &psbt3, &request3);
    wait_for(&request3);
    let bob = dao.approve("bob-3", &request3, true);
    both_signed(&alice.finish(), &bob.finish(), &third);
    // ...and 0.01 BTC more does not fit (no count of some spend would have let it through).
    let (_, psbt4, request4) = dao.spend("fourth", 1_000_000);
    let over = dao.sign("alice-4", &psbt4, &request4).finish();
    assert_eq!(over.code, Some(1), "{over:?}");
    assert!(over.stderr.contains("no rule matches"), "{}", over.stderr);
}

#[test]
fn the_provider_restarted_mid_signing_goes_on_with_a_new_round_and_fresh_nonces() {
    let mut dao = Dao::create();
    let provider_party = dao.invitation.layout().unwrap().provider_parties[0];
    // Alice requests and approves (then is stopped); Bob approves and commits (then is stopped):
    // the provider holds round 0's nonces, waiting for Alice's commitments.
    let (spend, psbt, request) = dao.spend("restart", BTC);
    let alice = dao.sign("alice-r", &psbt, &request);
    wait_for(&request);
    let mut watch = dao.watch(&request);
    let (alice_key, bob_key) = (dao.keys[0].clone(), dao.keys[1].clone());
    watch.wait("Alice's approval", 1, &|s, m| {
        s == alice_key.as_slice() && matches!(m, DaoMessage::Approval(_))
    });
    alice.signal("-STOP");
    let bob = dao.approve("bob-r", &request, true);
    watch.wait("Bob's commitments", 1, &|s, m| {
        s == bob_key.as_slice() && matches!(m, DaoMessage::Commitments { .. })
    });
    bob.signal("-STOP");
    // The provider restarts: its round-0 nonces are gone with its memory.
    dao.d.provider.stop();
    dao.d.provider.start_processes().unwrap();
    assert_eq!(alice.kill().code, None);
    assert_eq!(bob.kill().code, None);
    // Both run their command again: the provider founds the request again after round 0.
    let alice = dao.sign("alice-r-again", &psbt, &request);
    let bob = dao.approve("bob-r-again", &request, false);
    let (alice, bob) = (alice.finish(), bob.finish());
    both_signed(&alice, &bob, &spend);
    let rounds = provider_commitments(&mut watch, provider_party);
    assert_eq!(
        rounds.iter().map(|(r, _)| *r).collect::<Vec<_>>(),
        vec![1],
        "round 0 never got packages; the new provider signed in round 1"
    );
    let provider = dao.invitation.provider_key.to_vec();
    let round_0 = |s: &[u8], m: &DaoMessage| {
        s == provider.as_slice() && matches!(m, DaoMessage::SignerSet { round: 0, .. })
    };
    assert_eq!(watch.count(&round_0), 1);
}

#[test]
fn a_member_killed_after_storing_its_share_finds_it_when_it_joins_again() {
    let (d, homes) = setup();
    let invitation = d.dir.path().join("invitation");
    let creator = spawn(&d, create_args(&d, &homes[0], &invitation));
    wait_for(&invitation);
    let envelope = read_envelope(&invitation).unwrap();
    let inv = open_invitation(&envelope).unwrap();
    let wallet_id = inv.layout().unwrap().wallet_id.to_hex();
    let mut watch = Watch::new(&d, &homes[0], &inv, envelope.topic);
    let (bob_key, carol_key) = (device_key(&homes[1]), device_key(&homes[2]));
    // Each stop below is taken while the process waits for something a stopped one has not
    // sent, so every step is deterministic.
    // Carol posts her round 1 and is stopped (she waits for Bob's).
    let carol = Member::start(&d, "carol-join", join_args(&homes[2], &invitation));
    watch.wait("Carol's round 1", 1, &|s, m| {
        s == carol_key.as_slice() && matches!(m, DaoMessage::DkgRound1 { .. })
    });
    carol.signal("-STOP");
    // Bob posts rounds 1 and 2 and is stopped (he waits for Carol's round 2).
    let bob = Member::start(&d, "bob-join", join_args(&homes[1], &invitation));
    watch.wait("Bob's round 2", 1, &|s, m| {
        s == bob_key.as_slice() && matches!(m, DaoMessage::DkgRound2 { .. })
    });
    bob.signal("-STOP");
    // A second `join` of Bob's while his first runs is refused before it posts anything (two
    // round-1 messages of Bob's would be equivocation).
    let twice = run("cosigner", join_args(&homes[1], &invitation), &env(&d));
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
    let created = json(&creator.join().unwrap());
    assert_eq!(json(&carol.finish()), created);
    // Bob joins again: his stored share becomes his wallet, with no new DKG attempt.
    let again = run("cosigner", join_args(&homes[1], &invitation), &env(&d));
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
