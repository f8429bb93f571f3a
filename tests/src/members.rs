//! A DAO's members as the process-level tests drive them: one home and one `cosigner` process per
//! member (reaching the provider's mailbox), the files `dao create` reads, the arguments of each
//! member command, and a view of a ceremony's topic as a member sees it (how a test picks the
//! moment to stop or kill a process without any hook in the binaries).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cosigner_client::dao::{member_mailbox, open_invitation, read_envelope};
use cosigner_client::home::Home;
use cosigner_client::mailbox::MailboxClient;
use cosigner_protocol::auth::public_key_bytes;
use cosigner_protocol::dao::{DaoMessage, Invitation};
use cosigner_protocol::mailbox::{Envelope, Topic};
use serde_json::Value;

use crate::bitcoin_tx::{self, Pay, Spend};
use crate::{Deployment, Outcome, bin, run};

/// The members' names, in party order (a test takes the first three, or all five).
pub const NAMES: [&str; 5] = ["alice", "bob", "carol", "dave", "eve"];

/// One bitcoin, in satoshis.
pub const BTC: u64 = 100_000_000;

/// How long anything a test waits for may take (keeps a failing test bounded).
const PATIENCE: Duration = Duration::from_secs(60);

/// A path as an argument.
///
/// # Panics
/// If it is not UTF-8 (test paths are).
#[allow(clippy::unwrap_used)]
pub fn p(path: &Path) -> String {
    path.to_str().unwrap().to_owned()
}

/// The JSON a successful command printed.
///
/// # Panics
/// If it failed, or printed no JSON.
pub fn json(out: &Outcome) -> Value {
    serde_json::from_str(out.ok()).unwrap_or_else(|e| panic!("{e}: {:?}", out.stdout))
}

/// Owned arguments.
pub fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

/// Waits until `path` exists.
///
/// # Panics
/// If it does not within a minute.
pub fn wait_for(path: &Path) {
    let started = Instant::now();
    while !path.exists() {
        assert!(started.elapsed() < PATIENCE, "{path:?} never appeared");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A member's environment: the deployment's, and its mailbox (`COSIGNER_MAILBOX`).
pub fn env(d: &Deployment) -> Vec<(String, String)> {
    let mut env = d.env();
    env.push(("COSIGNER_MAILBOX".into(), d.mailbox.clone()));
    env
}

/// Runs `cosigner` with a member's environment to the end, in a thread.
pub fn spawn(d: &Deployment, args: Vec<String>) -> JoinHandle<Outcome> {
    let env = env(d);
    std::thread::spawn(move || run("cosigner", args, &env))
}

/// Runs `cosigner` with a member's environment to the end.
pub fn cosigner(d: &Deployment, args: Vec<String>) -> Outcome {
    run("cosigner", args, &env(d))
}

/// The device key (SEC1) of the home at `home`.
///
/// # Panics
/// If the home cannot be opened.
#[allow(clippy::unwrap_used)]
pub fn device_key(home: &Path) -> Vec<u8> {
    public_key_bytes(&Home::open(home).unwrap().device_key().unwrap())
}

/// A deployment, `count` member homes (named after [`NAMES`]), and the `members.toml` and
/// `policy.toml` (holding `policy`) that `dao create` reads, in the deployment's directory.
///
/// # Panics
/// If the deployment does not start or a member's key cannot be read.
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
pub fn setup(count: usize, policy: &str) -> (Deployment, Vec<PathBuf>) {
    let d = Deployment::start().unwrap();
    let homes: Vec<PathBuf> = NAMES.iter().take(count).map(|n| d.home(n)).collect();
    let mut members = String::new();
    for (name, home) in NAMES.iter().zip(&homes) {
        let out = d.cosigner(["--home", &p(home), "device-key", "--json"]);
        let key = json(&out)["device_key"].as_str().unwrap().to_owned();
        assert_eq!(key.len(), 66, "a compressed P-256 key in hex: {key}");
        members.push_str(&format!(
            "[[member]]\nname = \"{name}\"\ndevice_key = \"{key}\"\n\n"
        ));
    }
    std::fs::write(d.dir.path().join("members.toml"), members).unwrap();
    std::fs::write(d.dir.path().join("policy.toml"), policy).unwrap();
    (d, homes)
}

/// `dao create` by the member at `home`, writing the invitation to `invitation`.
pub fn create_args(d: &Deployment, home: &Path, invitation: &Path, timeout: &str) -> Vec<String> {
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
        timeout,
        "--json",
    ])
}

/// `join` of `invitation` by the member at `home`.
pub fn join_args(home: &Path, invitation: &Path, timeout: &str) -> Vec<String> {
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

/// `sign` of the PSBT file `psbt` with `wallet`, writing the request to `request`.
pub fn sign_args(
    home: &Path,
    wallet: &str,
    psbt: &Path,
    request: &Path,
    timeout: &str,
) -> Vec<String> {
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
        timeout,
        "--json",
    ])
}

/// `approve` of `request`; `extra` are more flags (`--yes`, `--reject`, …). Without `--yes` the
/// process has no answer to give the prompt (stdin is closed): it can only go on if it finds its
/// own approval in the topic.
pub fn approve_args(home: &Path, request: &Path, timeout: &str, extra: &[&str]) -> Vec<String> {
    let mut a = args(&[
        "--home",
        &p(home),
        "approve",
        "--request",
        &p(request),
        "--timeout",
        timeout,
        "--json",
    ]);
    a.extend(extra.iter().map(|s| (*s).to_owned()));
    a
}

/// The wallet every member ended `dao create` / `join` with (`--json`), checked to be the same.
#[derive(Debug, Clone)]
pub struct Created {
    /// What the creator printed.
    pub json: Value,
    /// The wallet id (hex).
    pub wallet: String,
    /// The x-only group key (hex).
    pub group_key: String,
    /// The invitation, opened.
    pub invitation: Invitation,
}

/// Creates the DAO wallet among `homes` (the first creates, the others join, `stagger` apart),
/// each member a `cosigner` process with `timeout`; checks every member ends with the same one.
///
/// # Panics
/// If any member fails or ends with another wallet.
pub fn create(d: &Deployment, homes: &[PathBuf], timeout: &str, stagger: Duration) -> Created {
    create_with(d, homes, timeout, stagger, &[])
}

/// [`create`] with more `dao create` flags (`--chain ethereum`).
///
/// # Panics
/// If any member fails or ends with another wallet.
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
pub fn create_with(
    d: &Deployment,
    homes: &[PathBuf],
    timeout: &str,
    stagger: Duration,
    extra: &[&str],
) -> Created {
    let invitation = d.dir.path().join("invitation");
    let mut a = create_args(d, &homes[0], &invitation, timeout);
    a.extend(extra.iter().map(|s| (*s).to_owned()));
    let creator = Member::start(d, "create", a);
    wait_for(&invitation);
    let mut joiners = Vec::new();
    for (i, home) in homes.iter().enumerate().skip(1) {
        let tag = format!("join-{i}");
        joiners.push(Member::start(
            d,
            &tag,
            join_args(home, &invitation, timeout),
        ));
        std::thread::sleep(stagger);
    }
    let created = json(&creator.finish());
    for joiner in joiners {
        assert_eq!(
            json(&joiner.finish()),
            created,
            "every member ends with the same wallet"
        );
    }
    Created {
        wallet: created["wallet_id"].as_str().unwrap().to_owned(),
        group_key: created["group_public_key"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        invitation: open_invitation(&read_envelope(&invitation).unwrap()).unwrap(),
        json: created,
    }
}

/// A PSBT spending `inputs` of `group_key` to `outputs` (see [`bitcoin_tx::build`]), written to
/// `DIR/<tag>.psbt`; with the path of the request file a `sign` of it writes, `DIR/<tag>.request`.
///
/// # Panics
/// If the PSBT cannot be built or written.
#[allow(clippy::unwrap_used)]
pub fn psbt_file(
    d: &Deployment,
    tag: &str,
    group_key: &str,
    inputs: &[u64],
    outputs: &[(Pay, u64)],
) -> (Spend, PathBuf, PathBuf) {
    let spend = bitcoin_tx::build(group_key, inputs, outputs).unwrap();
    let psbt = d.dir.path().join(format!("{tag}.psbt"));
    std::fs::write(&psbt, &spend.psbt_base64).unwrap();
    (spend, psbt, d.dir.path().join(format!("{tag}.request")))
}

/// A PSBT paying `amount` to a stranger out of one input of `amount` + 1 BTC (fee 10 000 sat,
/// the rest back as change): [`psbt_file`].
pub fn payment(
    d: &Deployment,
    tag: &str,
    group_key: &str,
    amount: u64,
) -> (Spend, PathBuf, PathBuf) {
    let outputs = [
        (Pay::To(bitcoin_tx::foreign_address()), amount),
        (Pay::Change, BTC - 10_000),
    ];
    psbt_file(d, tag, group_key, &[amount + BTC], &outputs)
}

/// The transaction every outcome names (the same txid), checked under Bitcoin's consensus rules;
/// its txid.
///
/// # Panics
/// If an outcome failed, names another transaction, or the transaction is invalid.
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
pub fn all_signed(outcomes: &[&Outcome], spend: &Spend) -> String {
    let first = json(outcomes[0]);
    for o in &outcomes[1..] {
        assert_eq!(json(o)["txid"], first["txid"], "{o:?}");
    }
    let tx = first["tx_hex"].as_str().unwrap();
    if let Err(e) = bitcoin_tx::verify_consensus(tx, &spend.prevouts) {
        panic!("invalid under consensus rules: {e:#}");
    }
    first["txid"].as_str().unwrap().to_owned()
}

/// A member's `cosigner` process running in the background: the test may stop, continue or kill
/// it (by its own child's id); killed if the test ends first.
#[derive(Debug)]
pub struct Member {
    child: Option<Child>,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Member {
    /// Starts `cosigner ARGS` with a member's environment (no PKCS#11 PINs, no backtraces); its
    /// output goes to `DIR/<tag>.stdout` and `.stderr`.
    ///
    /// # Panics
    /// If it cannot be started.
    #[allow(clippy::unwrap_used)]
    pub fn start(d: &Deployment, tag: &str, args: Vec<String>) -> Self {
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
    ///
    /// # Panics
    /// If it already ended, or `kill` fails.
    #[allow(clippy::unwrap_used)]
    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().unwrap().id().to_string();
        let status = Command::new("kill")
            .args([signal, pid.as_str()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// What it printed on stderr so far.
    pub fn stderr_now(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits until its stderr contains `what`.
    ///
    /// # Panics
    /// If it does not within a minute.
    pub fn wait_stderr(&self, what: &str) {
        let started = Instant::now();
        while !self.stderr_now().contains(what) {
            assert!(
                started.elapsed() < PATIENCE,
                "never printed {what:?}: {}",
                self.stderr_now()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: the process gets no chance to clean anything up.
    ///
    /// # Panics
    /// If it already ended.
    #[allow(clippy::unwrap_used)]
    pub fn kill(mut self) -> Outcome {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        let status = child.wait().unwrap();
        self.outcome(status)
    }

    /// Waits for it to end.
    ///
    /// # Panics
    /// If it already ended.
    #[allow(clippy::unwrap_used)]
    pub fn finish(mut self) -> Outcome {
        let mut child = self.child.take().unwrap();
        let status = child.wait().unwrap();
        self.outcome(status)
    }

    fn outcome(&self, status: std::process::ExitStatus) -> Outcome {
        Outcome {
            code: status.code(),
            stdout: std::fs::read_to_string(&self.stdout).unwrap_or_default(),
            stderr: self.stderr_now(),
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
pub struct Watch {
    mailbox: MailboxClient,
    topic: Topic,
}

impl Watch {
    /// Reads `topic` as the member at `home` of the wallet `invitation` creates.
    ///
    /// # Panics
    /// If the home or its mailbox cannot be opened.
    #[allow(clippy::unwrap_used)]
    pub fn new(d: &Deployment, home: &Path, invitation: &Invitation, topic: Topic) -> Self {
        let home = Home::open(home).unwrap();
        Self {
            mailbox: member_mailbox(&home, &d.mailbox, invitation).unwrap(),
            topic,
        }
    }

    /// Reads the topic of the request file `request` as the member at `home`.
    ///
    /// # Panics
    /// If the request file cannot be read.
    #[allow(clippy::unwrap_used)]
    pub fn request(d: &Deployment, home: &Path, invitation: &Invitation, request: &Path) -> Self {
        let topic = read_envelope(request).unwrap().topic;
        Self::new(d, home, invitation, topic)
    }

    /// Every message in the topic, with its sender's key.
    ///
    /// # Panics
    /// If the mailbox cannot be read.
    #[allow(clippy::unwrap_used)]
    pub fn messages(&mut self) -> Vec<(Vec<u8>, DaoMessage)> {
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

    /// Every envelope in the topic, as posted.
    ///
    /// # Panics
    /// If the mailbox cannot be read.
    #[allow(clippy::unwrap_used)]
    pub fn envelopes(&mut self) -> Vec<cosigner_protocol::mailbox::Envelope> {
        let all = self.mailbox.fetch(&self.topic, 0).unwrap();
        all.into_iter().map(|(_, e)| e).collect()
    }

    /// How many messages match `pred` (sender's key, message).
    pub fn count(&mut self, pred: &dyn Fn(&[u8], &DaoMessage) -> bool) -> usize {
        self.messages()
            .iter()
            .filter(|(s, m)| pred(s.as_slice(), m))
            .count()
    }

    /// Waits until `n` messages match `pred`.
    ///
    /// # Panics
    /// If they do not within a minute.
    pub fn wait(&mut self, what: &str, n: usize, pred: &dyn Fn(&[u8], &DaoMessage) -> bool) {
        let started = Instant::now();
        while self.count(pred) < n {
            assert!(
                started.elapsed() < PATIENCE,
                "never saw {what} in the topic"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Whether a message is `key`'s approval.
pub fn approval_by(key: &[u8]) -> impl Fn(&[u8], &DaoMessage) -> bool + '_ {
    move |s, m| s == key && matches!(m, DaoMessage::Approval(_))
}

/// A DAO wallet created among the first `count` of [`NAMES`], and what the tests do with it.
#[derive(Debug)]
pub struct Dao {
    /// The deployment (its directory holds the test's files).
    pub d: Deployment,
    /// The members' homes, in party order.
    pub homes: Vec<PathBuf>,
    /// The members' device keys (SEC1), in the same order.
    pub keys: Vec<Vec<u8>>,
    /// The invitation, opened.
    pub invitation: Invitation,
    /// The wallet id (hex).
    pub wallet: String,
    /// The x-only group key (hex).
    pub group_key: String,
    /// What `dao create --json` printed.
    pub created: Value,
}

impl Dao {
    /// A deployment and the wallet of `count` members under `policy` ([`setup`], [`create`]).
    pub fn create(count: usize, policy: &str, timeout: &str, stagger: Duration) -> Self {
        Self::create_on(count, policy, timeout, stagger, &[])
    }

    /// [`Dao::create`] with more `dao create` flags (`--chain ethereum`: an Ethereum treasury,
    /// whose `group_key` is empty).
    pub fn create_on(
        count: usize,
        policy: &str,
        timeout: &str,
        stagger: Duration,
        extra: &[&str],
    ) -> Self {
        let (d, homes) = setup(count, policy);
        let created = create_with(&d, &homes, timeout, stagger, extra);
        Self {
            keys: homes.iter().map(|h| device_key(h)).collect(),
            d,
            homes,
            invitation: created.invitation,
            wallet: created.wallet,
            group_key: created.group_key,
            created: created.json,
        }
    }

    /// A proposal by `member`, `cosigner dao SUBCOMMAND…` (`refresh`, or `policy --policy F`),
    /// writing it to `request`, giving up after `timeout` seconds, printing JSON.
    #[allow(clippy::indexing_slicing)]
    pub fn proposal_args(
        &self,
        member: usize,
        subcommand: &[&str],
        request: &Path,
        timeout: &str,
    ) -> Vec<String> {
        let mut a = args(&["--home", &p(&self.homes[member]), "dao"]);
        a.extend(args(subcommand));
        a.extend(args(&[
            "--wallet",
            &self.wallet,
            "--request-out",
            &p(request),
            "--timeout",
            timeout,
            "--json",
        ]));
        a
    }

    /// Hands `envelopes` (of one topic) straight to the provider, as any member's courier
    /// could, and returns what it answers: its messages, decoded, and its notes.
    ///
    /// # Panics
    /// If the provider cannot be reached, or answers something else or undecodable.
    #[allow(clippy::unwrap_used, clippy::indexing_slicing)]
    pub fn deliver(&self, envelopes: &[Envelope]) -> (Vec<DaoMessage>, Vec<String>) {
        use cosigner_protocol::wire::{Request, Response};
        let trust =
            cosigner_client::trust::Trust::load(&self.d.dir.path().join("trust.toml")).unwrap();
        let mut session =
            cosigner_client::session::Session::connect(&self.d.provider.addr(), &trust).unwrap();
        let answer = session
            .call(&Request::Mailbox {
                topic: serde_bytes::ByteBuf::from(envelopes[0].topic.to_vec()),
                envelopes: envelopes
                    .iter()
                    .map(|e| serde_bytes::ByteBuf::from(e.encode().unwrap()))
                    .collect(),
                from: 0,
            })
            .unwrap();
        let Response::Mailbox {
            envelopes, notes, ..
        } = answer
        else {
            panic!("{answer:?}");
        };
        let said = envelopes
            .iter()
            .map(|e| DaoMessage::decode(&Envelope::decode(e).unwrap().body).unwrap())
            .collect();
        (said, notes)
    }

    /// `DIR/<name>` of the deployment.
    pub fn file(&self, name: &str) -> PathBuf {
        self.d.dir.path().join(name)
    }

    /// Runs `cosigner` with a member's environment to the end, in a thread.
    pub fn spawn(&self, args: Vec<String>) -> JoinHandle<Outcome> {
        spawn(&self.d, args)
    }

    /// A PSBT paying `amount` to a stranger and the request file it will use ([`payment`]).
    pub fn payment(&self, tag: &str, amount: u64) -> (Spend, PathBuf, PathBuf) {
        payment(&self.d, tag, &self.group_key, amount)
    }

    /// `sign` of `psbt` by Alice (member 0), in the background.
    #[allow(clippy::indexing_slicing)]
    pub fn sign(&self, tag: &str, psbt: &Path, request: &Path, timeout: &str) -> Member {
        let a = sign_args(&self.homes[0], &self.wallet, psbt, request, timeout);
        Member::start(&self.d, tag, a)
    }

    /// `approve` of `request` by `member`, in the background; `extra` are more flags.
    #[allow(clippy::indexing_slicing)]
    pub fn approve(
        &self,
        tag: &str,
        member: usize,
        request: &Path,
        timeout: &str,
        extra: &[&str],
    ) -> Member {
        let a = approve_args(&self.homes[member], request, timeout, extra);
        Member::start(&self.d, tag, a)
    }

    /// The topic of the request file `request`, read as Alice.
    #[allow(clippy::indexing_slicing)]
    pub fn watch(&self, request: &Path) -> Watch {
        Watch::request(&self.d, &self.homes[0], &self.invitation, request)
    }

    /// Whether a sender's key is `member`'s.
    #[allow(clippy::indexing_slicing)]
    pub fn is(&self, member: usize) -> impl Fn(&[u8]) -> bool + '_ {
        move |s: &[u8]| s == self.keys[member].as_slice()
    }
}
