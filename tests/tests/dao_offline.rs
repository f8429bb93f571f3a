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

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cosigner_client::dao::{member_mailbox, open_invitation, read_envelope};
use cosigner_client::home::Home;
use cosigner_client::mailbox::MailboxClient;
use cosigner_protocol::auth::public_key_bytes;
use cosigner_protocol::dao::{DaoMessage, Invitation};
use cosigner_protocol::mailbox::Topic;
use cosigner_tests::bitcoin_tx::{self, Pay, Spend};
use cosigner_tests::{Deployment, Outcome, bin, run};
use serde_json::Value;

const BTC: u64 = 100_000_000;
const NAMES: [&str; 3] = ["alice", "bob", "carol"];
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

fn p(path: &Path) -> String {
    path.to_str().unwrap().to_owned()
}

fn json(out: &Outcome) -> Value {
    serde_json::from_str(out.ok()).unwrap_or_else(|e| panic!("{e}: {:?}", out.stdout))
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
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

/// A member's `cosigner` process running in the background (killed if the test ends first).
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

    /// What it printed on stderr so far.
    fn stderr_now(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits until its stderr contains `what`.
    fn wait_stderr(&self, what: &str) {
        let started = Instant::now();
        while !self.stderr_now().contains(what) {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "never printed {what:?}: {}",
                self.stderr_now()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn finish(mut self) -> Outcome {
        let mut child = self.child.take().unwrap();
        let status = child.wait().unwrap();
        Outcome {
            code: status.code(),
            stdout: std::fs::read_to_string(&self.stdout).unwrap_or_default(),
            stderr: std::fs::read_to_string(&self.stderr).unwrap_or_default(),
        }
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

/// Reads a topic as a member.
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

    fn count(&mut self, pred: &dyn Fn(&[u8], &DaoMessage) -> bool) -> usize {
        self.mailbox
            .fetch(&self.topic, 0)
            .unwrap()
            .into_iter()
            .filter_map(|(_, e)| DaoMessage::decode(&e.body).ok().map(|m| (e.sender, m)))
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

fn join_args(home: &Path, invitation: &Path, timeout: &str) -> Vec<String> {
    args(&[
        "--home",
        &p(home),
        "join",
        &p(invitation),
        "--timeout",
        timeout,
        "--json",
    ])
}

struct Dao {
    d: Deployment,
    homes: Vec<PathBuf>,
    invitation: Invitation,
    wallet: String,
    group_key: String,
}

impl Dao {
    fn create() -> Self {
        let (d, homes) = setup();
        let invitation = d.dir.path().join("invitation");
        let creator = Member::start(&d, "create", create_args(&d, &homes[0], &invitation));
        wait_for(&invitation);
        let joiners: Vec<_> = homes[1..]
            .iter()
            .enumerate()
            .map(|(i, h)| {
                Member::start(&d, &format!("join-{i}"), join_args(h, &invitation, TIMEOUT))
            })
            .collect();
        let created = json(&creator.finish());
        for j in joiners {
            assert_eq!(json(&j.finish()), created);
        }
        let inv = open_invitation(&read_envelope(&invitation).unwrap()).unwrap();
        Self {
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

    /// `sign` by Alice (member 0).
    fn sign(&self, tag: &str, psbt: &Path, request: &Path, timeout: &str) -> Member {
        let a = args(&[
            "--home",
            &p(&self.homes[0]),
            "sign",
            "--wallet",
            &self.wallet,
            "--psbt",
            &p(psbt),
            "--request-out",
            &p(request),
            "--timeout",
            timeout,
            "--json",
        ]);
        Member::start(&self.d, tag, a)
    }

    /// `approve` by `member`; `extra` are more flags (`--yes`, `--reject`).
    fn approve(
        &self,
        tag: &str,
        member: usize,
        request: &Path,
        timeout: &str,
        extra: &[&str],
    ) -> Member {
        let mut a = args(&[
            "--home",
            &p(&self.homes[member]),
            "approve",
            "--request",
            &p(request),
            "--timeout",
            timeout,
            "--json",
        ]);
        a.extend(extra.iter().map(|s| (*s).to_owned()));
        Member::start(&self.d, tag, a)
    }

    /// `dao requests --wallet ID --json` as `member`.
    fn requests(&self, member: usize) -> Value {
        let out = run(
            "cosigner",
            args(&[
                "--home",
                &p(&self.homes[member]),
                "dao",
                "requests",
                "--wallet",
                &self.wallet,
                "--json",
            ]),
            &env(&self.d),
        );
        json(&out)
    }

    fn watch(&self, request: &Path) -> Watch {
        let topic = read_envelope(request).unwrap().topic;
        Watch::new(&self.d, &self.homes[0], &self.invitation, topic)
    }

    fn key(&self, member: usize) -> Vec<u8> {
        device_key(&self.homes[member])
    }
}

/// The transaction every outcome names, checked under consensus rules.
fn all_signed(outcomes: &[&Outcome], spend: &Spend) -> String {
    let first = json(outcomes[0]);
    for o in &outcomes[1..] {
        assert_eq!(json(o)["txid"], first["txid"], "{o:?}");
    }
    bitcoin_tx::verify_consensus(first["tx_hex"].as_str().unwrap(), &spend.prevouts)
        .expect("valid under consensus rules");
    first["txid"].as_str().unwrap().to_owned()
}

#[test]
fn an_approver_whose_approve_timed_out_approves_again_and_the_request_goes_on() {
    let dao = Dao::create();
    // 2 BTC: the "large" rule, all three approvals. Alice requests (and approves).
    let (spend, psbt, request) = dao.spend("large", 2 * BTC);
    let alice = dao.sign("alice", &psbt, &request, TIMEOUT);
    wait_for(&request);
    let mut watch = dao.watch(&request);
    let alice_key = dao.key(0);
    watch.wait("Alice's approval", 1, &|s, m| {
        s == alice_key.as_slice() && matches!(m, DaoMessage::Approval(_))
    });
    // Bob approves, waits for Carol, and gives up: progress lines said who is missing.
    let bob = dao.approve("bob-1", 1, &request, "3", &["--yes"]).finish();
    assert_eq!(bob.code, Some(1), "{bob:?}");
    let last = bob.stderr.lines().last().unwrap_or_default();
    assert!(last.contains("timed out"), "{}", bob.stderr);
    assert!(
        last.contains("waiting for carol"),
        "who is missing: {}",
        bob.stderr
    );
    assert!(!last.contains("waiting for waiting for"), "{last}");
    assert!(
        bob.stderr.contains("2 of 3 approvals; waiting for carol\n"),
        "a progress line before the timeout: {}",
        bob.stderr
    );
    // The request is still alive: it is listed as pending, with two approvals of three.
    let listed = dao.requests(2);
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
    let listed = dao.requests(1);
    assert_eq!(listed["requests"].as_array().unwrap().len(), 0, "{listed}");
}

#[test]
fn a_join_rerun_after_a_timeout_takes_a_new_attempt_and_blames_nobody() {
    let (d, homes) = setup();
    let invitation = d.dir.path().join("invitation");
    let creator = Member::start(&d, "create", create_args(&d, &homes[0], &invitation));
    wait_for(&invitation);
    // Carol joins while Bob does not: she times out waiting for him.
    let carol = run("cosigner", join_args(&homes[2], &invitation, "3"), &env(&d));
    assert_eq!(carol.code, Some(1), "{carol:?}");
    let last = carol.stderr.lines().last().unwrap_or_default();
    assert!(last.contains("timed out"), "{}", carol.stderr);
    assert!(
        last.contains("waiting for bob"),
        "who is missing: {}",
        carol.stderr
    );
    assert!(!last.contains("waiting for waiting for"), "{last}");
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
    let mut dao = Dao::create();
    // 0.5 BTC: two approvals. Alice requests; Bob has not approved yet.
    let (spend, psbt, request) = dao.spend("restart", BTC / 2);
    let alice = dao.sign("alice", &psbt, &request, TIMEOUT);
    wait_for(&request);
    let mut watch = dao.watch(&request);
    let alice_key = dao.key(0);
    watch.wait("Alice's approval", 1, &|s, m| {
        s == alice_key.as_slice() && matches!(m, DaoMessage::Approval(_))
    });
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
    let dao = Dao::create();
    // "small" needs 2 of the 3: Carol says no, Alice hears it at once, Bob's yes still signs.
    let (small, psbt, request) = dao.spend("small", BTC / 2);
    let alice = dao.sign("alice-small", &psbt, &request, TIMEOUT);
    wait_for(&request);
    let mut watch = dao.watch(&request);
    let alice_key = dao.key(0);
    let approved = |s: &[u8], m: &DaoMessage| {
        s == alice_key.as_slice() && matches!(m, DaoMessage::Approval(_))
    };
    watch.wait("Alice's approval", 1, &approved);
    let no = ["--reject", "--reason", "not this month"];
    let carol = dao.approve("carol-no", 2, &request, TIMEOUT, &no).finish();
    let said = json(&carol);
    assert_eq!(said["rejected"], Value::Bool(true), "{said}");
    assert_eq!(said["dead"], Value::Bool(false), "{said}");
    alice.wait_stderr("carol rejected this request: \"not this month\"");
    let listed = dao.requests(1);
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
    let (_, psbt, request) = dao.spend("large", 2 * BTC);
    let alice = dao.sign("alice-large", &psbt, &request, TIMEOUT);
    wait_for(&request);
    dao.watch(&request).wait("Alice's approval", 1, &approved);
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
    let listed = dao.requests(2);
    assert_eq!(listed["requests"].as_array().unwrap().len(), 0, "{listed}");
    let out = run(
        "cosigner",
        args(&[
            "--home",
            &p(&dao.homes[2]),
            "dao",
            "requests",
            "--wallet",
            &dao.wallet,
            "--all",
            "--json",
        ]),
        &env(&dao.d),
    );
    let all = json(&out);
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
