//! `cosigner-soak`: the load of `make soak` (scripts/soak.sh starts the deployment and runs this).
//!
//! Against a running `make up` deployment: makes `--wallets` wallets, each in its own client
//! home with its own enrollment token (`cosigner-parent enrollment issue`, as an operator would),
//! then runs `--clients` concurrent clients for `--seconds`, each signing random 32-byte
//! messages with its wallet through the client library (`cosigner_client::wallet::sign`, one
//! session kept per client so that signing takes one round trip; a new session after any
//! failure) and refreshing it every `--refresh-every` signatures. Every signature is verified
//! (BIP-340, k256) before it counts. Halfway, with `--kill-pid-file`, it kills that enclave
//! instance (SIGKILL), waits, and starts it again with `--restart-command`. At the end every
//! wallet signs once more (finishing an interrupted refresh first if it must); one that cannot
//! is lost. `VmRSS` and `RssAnon` of the deployment's processes are sampled after the first
//! minute (or a fifth of a shorter run) and at the end.
//!
//! Prints one JSON line on stdout (`soak::Report`, tests/src/soak.rs), everything else on stderr.
//! docs/deployment.md, "Soak", says what each figure means.
//! Exit codes: 0 the goals met, 1 errors the kill does not explain or lost wallets (or the setup
//! failed), 2 bad command line.

#![allow(clippy::indexing_slicing)]

// The figures and the JSON line, in their own file so that their unit tests read apart from the
// driver (`cargo nextest run -p cosigner-tests -E 'binary(cosigner-soak)'`).
#[path = "../soak.rs"]
mod soak;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use cosigner_client::ClientError;
use cosigner_client::address::Network;
use cosigner_client::home::Home;
use cosigner_client::session::Session;
use cosigner_client::trust::Trust;
use cosigner_client::wallet;
use cosigner_protocol::enrollment::EnrollmentToken;
use cosigner_protocol::wire::WalletId;
use rand::RngCore;
use soak::{Failure, FailureKind, KillReport, KillWindow, Report, RunShape, Tally};

/// Pause after a failure before the next request (a reconnect), so that a dead cosigner is
/// not hammered.
const BACKOFF: Duration = Duration::from_millis(100);
/// How long the killed instance stays down before it is started again.
const DOWN_FOR: Duration = Duration::from_secs(3);
/// How long after the restart a broken session still counts as the kill's.
const GRACE: Duration = Duration::from_secs(5);
/// Wallets made at once during the setup.
const SETUP_THREADS: usize = 4;

/// The command line.
#[derive(Debug, Clone)]
struct Args {
    provider: String,
    recovery: String,
    trust: PathBuf,
    operator_key: PathBuf,
    dev: PathBuf,
    work: PathBuf,
    seconds: u64,
    wallets: usize,
    clients: usize,
    refresh_every: u64,
    kill_pid_file: Option<PathBuf>,
    restart_command: Option<String>,
}

const USAGE: &str = "usage: cosigner-soak --provider tcp://H:P --recovery tcp://H:P --trust FILE \
    --operator-key PEM --dev DIR --work DIR [--seconds 300] [--wallets 50] [--clients 50] \
    [--refresh-every 200] [--kill-pid-file FILE --restart-command CMD]";

fn parse_args(mut args: impl Iterator<Item = String>) -> anyhow::Result<Args> {
    let mut a = Args {
        provider: String::new(),
        recovery: String::new(),
        trust: PathBuf::new(),
        operator_key: PathBuf::new(),
        dev: PathBuf::new(),
        work: PathBuf::new(),
        seconds: 300,
        wallets: 50,
        clients: 50,
        refresh_every: 200,
        kill_pid_file: None,
        restart_command: None,
    };
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        let number = |v: &str| -> anyhow::Result<u64> {
            v.parse()
                .ok()
                .filter(|n| *n > 0)
                .with_context(|| format!("{flag}: a positive number, not {v:?}"))
        };
        match flag.as_str() {
            "--provider" => a.provider = value,
            "--recovery" => a.recovery = value,
            "--trust" => a.trust = value.into(),
            "--operator-key" => a.operator_key = value.into(),
            "--dev" => a.dev = value.into(),
            "--work" => a.work = value.into(),
            "--seconds" => a.seconds = number(&value)?,
            "--wallets" => a.wallets = usize::try_from(number(&value)?)?,
            "--clients" => a.clients = usize::try_from(number(&value)?)?,
            "--refresh-every" => a.refresh_every = number(&value)?,
            "--kill-pid-file" => a.kill_pid_file = Some(value.into()),
            "--restart-command" => a.restart_command = Some(value),
            other => bail!("unknown argument {other:?}"),
        }
    }
    for (name, missing) in [
        ("--provider", a.provider.is_empty()),
        ("--recovery", a.recovery.is_empty()),
        ("--trust", a.trust.as_os_str().is_empty()),
        ("--operator-key", a.operator_key.as_os_str().is_empty()),
        ("--dev", a.dev.as_os_str().is_empty()),
        ("--work", a.work.as_os_str().is_empty()),
    ] {
        if missing {
            bail!("{name} is required");
        }
    }
    if a.kill_pid_file.is_some() != a.restart_command.is_some() {
        bail!("--kill-pid-file and --restart-command go together");
    }
    // One client per home at a time: a home's files have one writer (the client library's
    // rule), so two clients never share a wallet.
    if a.clients > a.wallets {
        bail!(
            "--clients ({}) may not exceed --wallets ({})",
            a.clients,
            a.wallets
        );
    }
    Ok(a)
}

/// A wallet of the soak: its home and what verifies its signatures.
#[derive(Debug, Clone)]
struct SoakWallet {
    home: Home,
    id: WalletId,
    key: [u8; 32],
}

/// The binary `name` of this build, beside this one.
fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating cosigner-soak")?;
    let path = exe.with_file_name(name);
    if !path.is_file() {
        bail!(
            "{} not found beside cosigner-soak: build the workspace's binaries",
            path.display()
        );
    }
    Ok(path)
}

/// An enrollment token for `home`'s device key, issued the operator's way.
fn enroll(args: &Args, home: &Home, out: &Path) -> anyhow::Result<Vec<u8>> {
    let device_key = hex::encode(cosigner_protocol::auth::public_key_bytes(
        &home.device_key()?,
    ));
    let status = Command::new(sibling("cosigner-parent")?)
        .args(["enrollment", "issue", "--operator-key"])
        .arg(&args.operator_key)
        .args([
            "--device-key",
            &device_key,
            "--expires-in-days",
            "1",
            "--out",
        ])
        .arg(out)
        .stdout(std::process::Stdio::null())
        .status()
        .context("running cosigner-parent enrollment issue")?;
    if !status.success() {
        bail!("cosigner-parent enrollment issue failed ({status})");
    }
    let text =
        std::fs::read_to_string(out).with_context(|| format!("reading {}", out.display()))?;
    let token = EnrollmentToken::from_text(text.trim())
        .map_err(|e| anyhow::anyhow!("{}: {e}", out.display()))?;
    Ok(token.to_bytes())
}

/// Makes wallet `index` (home `work/homes/w-NN`), retrying a failed ceremony twice with new
/// sessions; a creation that stopped halfway is finished by the retry (`create_with` resumes).
fn make_wallet(args: &Args, trust: &Trust, index: usize) -> anyhow::Result<SoakWallet> {
    let dir = args.work.join("homes").join(format!("w-{index:02}"));
    let home = Home::open(&dir)?;
    let token = enroll(args, &home, &dir.join("enrollment.token"))?;
    let options = wallet::CreateOptions {
        policy: None,
        enrollment: Some(&token),
    };
    let mut last = None;
    for _ in 0..3 {
        let attempt = (|| -> cosigner_client::Result<wallet::Created> {
            let mut provider = Session::connect(&args.provider, trust)?;
            let mut recovery = Session::connect(&args.recovery, trust)?;
            wallet::create_with(
                &home,
                &mut provider,
                &mut recovery,
                Network::Regtest,
                &dir.join("recovery.key"),
                &options,
            )
        })();
        match attempt {
            Ok(created) => {
                return Ok(SoakWallet {
                    home,
                    id: created.wallet.wallet_id,
                    key: created.wallet.group_public_key,
                });
            }
            Err(e) => {
                eprintln!("cosigner-soak: wallet {index}: {e} (retrying)");
                last = Some(e);
                thread::sleep(BACKOFF);
            }
        }
    }
    Err(anyhow::anyhow!(
        "wallet {index} could not be created: {}",
        last.map(|e| e.to_string()).unwrap_or_default()
    ))
}

/// The kind of a client library error, for the tally.
fn kind_of(e: &ClientError) -> FailureKind {
    match e {
        ClientError::Connection { .. } => FailureKind::Connection,
        ClientError::Remote(wire) => FailureKind::Refused(format!("{:?}", wire.kind)),
        ClientError::Attestation { .. }
        | ClientError::UntrustedRoot { .. }
        | ClientError::ClockBehind { .. }
        | ClientError::ClockAhead { .. } => FailureKind::Other("attestation".into()),
        ClientError::Unexpected(_) => FailureKind::Other("unexpected".into()),
        ClientError::Protocol(_) => FailureKind::Other("protocol".into()),
        ClientError::ShareDamaged { .. } => FailureKind::Other("share".into()),
        ClientError::Home { .. } => FailureKind::Other("home".into()),
        _ => FailureKind::Other("client".into()),
    }
}

/// Whether a connection error came from `addr`.
fn from_addr(e: &ClientError, addr: &str) -> bool {
    matches!(e, ClientError::Connection { addr: a, .. } if a == addr)
}

/// Independent BIP-340 verification (k256's Schnorr, not FROST's own verifier).
fn verifies(key: &[u8; 32], message: &[u8; 32], signature: &[u8; 64]) -> bool {
    let Ok(key) = k256::schnorr::VerifyingKey::from_bytes(key) else {
        return false;
    };
    let Ok(signature) = k256::schnorr::Signature::try_from(signature.as_slice()) else {
        return false;
    };
    key.verify_raw(message, &signature).is_ok()
}

/// One client: signs with its wallet until `deadline`, refreshing it every `refresh_every`
/// signatures (the first refresh after `first_refresh`, so that clients do not refresh in step).
fn client(
    args: &Args,
    trust: &Trust,
    w: &SoakWallet,
    start: Instant,
    deadline: Instant,
    first_refresh: u64,
) -> Tally {
    let mut tally = Tally::default();
    let mut provider: Option<(Session, Duration)> = None;
    let mut recovery: Option<Session> = None;
    let mut until_refresh = first_refresh;
    let mut rng = rand::thread_rng();
    let fail = |tally: &mut Tally, kind, opened, operation| {
        tally.failures.push(Failure {
            at: start.elapsed(),
            kind,
            session_opened: opened,
            operation,
        });
        thread::sleep(BACKOFF);
    };
    while Instant::now() < deadline {
        let (session, opened) = match provider.as_mut() {
            Some((s, opened)) => (s, *opened),
            None => match Session::connect(&args.provider, trust) {
                Ok(s) => {
                    let (s, opened) = provider.insert((s, start.elapsed()));
                    (s, *opened)
                }
                Err(e) => {
                    eprintln!("cosigner-soak: {:.1} s: connect: {e}", secs(start));
                    fail(&mut tally, FailureKind::Connect, None, "sign");
                    continue;
                }
            },
        };
        if until_refresh == 0 {
            tally.requests += 1;
            let peer = match recovery.as_mut() {
                Some(r) => r,
                None => match Session::connect(&args.recovery, trust) {
                    Ok(r) => recovery.insert(r),
                    Err(e) => {
                        eprintln!(
                            "cosigner-soak: {:.1} s: connect to the recovery cosigner: {e}",
                            secs(start)
                        );
                        fail(&mut tally, FailureKind::Connect, None, "refresh");
                        continue;
                    }
                },
            };
            match wallet::refresh(&w.home, session, peer, w.id, &mut |_| {}) {
                Ok(_) => {
                    tally.refreshes += 1;
                    until_refresh = args.refresh_every;
                }
                Err(e) => {
                    eprintln!(
                        "cosigner-soak: {:.1} s: refresh {}: {e}",
                        secs(start),
                        w.id.to_hex()
                    );
                    let on_provider = from_addr(&e, &args.provider);
                    provider = None;
                    recovery = None;
                    fail(
                        &mut tally,
                        kind_of(&e),
                        on_provider.then_some(opened),
                        "refresh",
                    );
                }
            }
            continue;
        }
        tally.requests += 1;
        let mut message = [0u8; 32];
        rng.fill_bytes(&mut message);
        let began = Instant::now();
        match wallet::sign(&w.home, session, w.id, &message) {
            Ok(signature) => {
                let ms = began.elapsed().as_secs_f64() * 1e3;
                if verifies(&w.key, &message, &signature) {
                    tally.signs += 1;
                    tally.sign_ms.push(ms);
                    until_refresh = until_refresh.saturating_sub(1);
                } else {
                    eprintln!(
                        "cosigner-soak: {:.1} s: {}: a signature that does not verify",
                        secs(start),
                        w.id.to_hex()
                    );
                    fail(&mut tally, FailureKind::Verify, Some(opened), "sign");
                }
            }
            Err(e) => {
                eprintln!(
                    "cosigner-soak: {:.1} s: sign {}: {e}",
                    secs(start),
                    w.id.to_hex()
                );
                provider = None;
                fail(&mut tally, kind_of(&e), Some(opened), "sign");
            }
        }
    }
    tally
}

/// Whether `w` still signs (and verifies) with fresh sessions; a refresh interrupted by the
/// load's end or the kill is finished first if signing alone fails.
fn still_signs(args: &Args, trust: &Trust, w: &SoakWallet) -> bool {
    let mut message = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut message);
    for attempt in 0..3 {
        let result = (|| -> cosigner_client::Result<bool> {
            let mut provider = Session::connect(&args.provider, trust)?;
            if attempt > 0 {
                let mut recovery = Session::connect(&args.recovery, trust)?;
                wallet::refresh(&w.home, &mut provider, &mut recovery, w.id, &mut |_| {})?;
            }
            let signature = wallet::sign(&w.home, &mut provider, w.id, &message)?;
            Ok(verifies(&w.key, &message, &signature))
        })();
        match result {
            Ok(true) => return true,
            Ok(false) => eprintln!(
                "cosigner-soak: final check {}: does not verify",
                w.id.to_hex()
            ),
            Err(e) => eprintln!("cosigner-soak: final check {}: {e}", w.id.to_hex()),
        }
        thread::sleep(BACKOFF);
    }
    false
}

/// Kills the instance in `pid_file` (SIGKILL), waits [`DOWN_FOR`], runs `restart`; the times
/// from `start`.
fn kill_and_restart(
    pid_file: &Path,
    restart: &str,
    start: Instant,
) -> anyhow::Result<(Duration, Duration)> {
    let pid = soak::live_pid(pid_file)
        .with_context(|| format!("{}: no live process to kill", pid_file.display()))?;
    // Taken before the signal: the sessions it breaks fail after this, never before.
    let killed_at = start.elapsed();
    let killed = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .context("running kill")?;
    if !killed.success() {
        bail!("kill -KILL {pid} failed");
    }
    eprintln!(
        "cosigner-soak: killed {} (pid {pid}) at {:.1} s",
        pid_file.display(),
        killed_at.as_secs_f64()
    );
    thread::sleep(DOWN_FOR);
    let restarted = Command::new("sh")
        .args(["-c", restart])
        .stdout(std::process::Stdio::null())
        .status()
        .context("running the restart command")?;
    let restarted_at = start.elapsed();
    if !restarted.success() {
        bail!("the restart command failed ({restarted}): {restart}");
    }
    let new_pid = soak::live_pid(pid_file)
        .with_context(|| format!("{}: not running after the restart", pid_file.display()))?;
    eprintln!(
        "cosigner-soak: restarted it (pid {new_pid}) at {:.1} s",
        restarted_at.as_secs_f64()
    );
    Ok((killed_at, restarted_at))
}

/// Seconds since `start`, for the log lines.
fn secs(start: Instant) -> f64 {
    start.elapsed().as_secs_f64()
}

/// Sleeps until `at` (no-op if it passed).
fn sleep_until(at: Instant) {
    if let Some(left) = at.checked_duration_since(Instant::now()) {
        thread::sleep(left);
    }
}

fn run(args: &Args) -> anyhow::Result<Report> {
    let trust = Trust::load(&args.trust)?;
    let processes = soak::discover(&args.dev);
    // An instance that did not survive `make up` would make every figure below about the others.
    for (name, source) in &processes {
        if let soak::Source::PidFile(file) = source
            && soak::live_pid(file).is_none()
        {
            bail!(
                "{name} is not running after make up ({} names no live process): its log beside \
                 it says why",
                file.display()
            );
        }
    }
    let instances = processes
        .iter()
        .filter(|(name, _)| name.starts_with("provider-enclave"))
        .count()
        .max(1);
    let database = if processes
        .iter()
        .any(|(name, _)| name.starts_with("postgres"))
    {
        "postgres"
    } else {
        "sqlite"
    };
    eprintln!(
        "cosigner-soak: {} wallets, {} clients, {} s; provider {} ({instances} enclave \
         instance(s), {database}); measuring {:?}",
        args.wallets,
        args.clients,
        args.seconds,
        args.provider,
        processes
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
    );

    // Setup: the wallets, a few at a time.
    let made = Instant::now();
    let mut wallets: Vec<Option<SoakWallet>> = vec![None; args.wallets];
    thread::scope(|scope| -> anyhow::Result<()> {
        let chunks: Vec<Vec<usize>> = (0..SETUP_THREADS)
            .map(|t| (t..args.wallets).step_by(SETUP_THREADS).collect())
            .collect();
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|indices| {
                let trust = &trust;
                scope.spawn(move || {
                    indices
                        .into_iter()
                        .map(|i| make_wallet(args, trust, i).map(|w| (i, w)))
                        .collect::<anyhow::Result<Vec<_>>>()
                })
            })
            .collect();
        for handle in handles {
            let made = handle
                .join()
                .map_err(|_| anyhow::anyhow!("a setup thread panicked"))??;
            for (i, w) in made {
                wallets[i] = Some(w);
            }
        }
        Ok(())
    })?;
    let wallets: Vec<SoakWallet> = wallets.into_iter().flatten().collect();
    eprintln!(
        "cosigner-soak: {} wallets made in {:.1} s; load for {} s",
        wallets.len(),
        made.elapsed().as_secs_f64(),
        args.seconds
    );

    // The load.
    let start = Instant::now();
    let duration = Duration::from_secs(args.seconds);
    let deadline = start + duration;
    let first_sample = start + Duration::from_secs(60).min(duration / 5);
    let (tally, rss_start, kill, panicked) = thread::scope(|scope| {
        let handles: Vec<_> = (0..args.clients)
            .map(|i| {
                let (trust, w) = (&trust, &wallets[i % wallets.len()]);
                // Spread the clients' first refreshes over one refresh interval.
                let first = args.refresh_every * (i as u64 + 1) / args.clients as u64;
                scope.spawn(move || client(args, trust, w, start, deadline, first))
            })
            .collect();
        sleep_until(first_sample);
        let rss_start = soak::sample(&processes);
        eprintln!(
            "cosigner-soak: memory after {:.0} s: {:?}",
            start.elapsed().as_secs_f64(),
            rss_start.vm_rss
        );
        let kill = match (&args.kill_pid_file, &args.restart_command) {
            (Some(pid_file), Some(restart)) => {
                sleep_until(start + duration / 2);
                Some(kill_and_restart(pid_file, restart, start))
            }
            _ => {
                eprintln!(
                    "cosigner-soak: no instance to kill (no --kill-pid-file): kill step skipped"
                );
                None
            }
        };
        let mut total = Tally::default();
        let mut panicked = false;
        for handle in handles {
            match handle.join() {
                Ok(tally) => total.merge(tally),
                Err(_) => panicked = true,
            }
        }
        (total, rss_start, kill, panicked)
    });
    let elapsed = start.elapsed();
    let rss_end = soak::sample(&processes);
    if panicked {
        bail!("a client thread panicked");
    }
    // A kill that failed leaves the run without its point: no figures.
    let kill = kill.transpose()?;
    let (window, kill_report, restarted) = match (kill, &args.kill_pid_file) {
        (Some((killed_at, restarted_at)), Some(pid_file)) => {
            let instance = pid_file
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("enclave")
                .to_owned();
            let cosigner = pid_file
                .parent()
                .and_then(Path::file_name)
                .and_then(|s| s.to_str())
                .unwrap_or("provider");
            (
                Some(KillWindow {
                    killed_at,
                    until: restarted_at + GRACE,
                }),
                Some(KillReport {
                    instance: instance.clone(),
                    at_seconds: (killed_at.as_secs_f64() * 10.0).round() / 10.0,
                    restarted_at_seconds: (restarted_at.as_secs_f64() * 10.0).round() / 10.0,
                }),
                vec![format!("{cosigner}-{instance}")],
            )
        }
        _ => (None, None, Vec::new()),
    };
    eprintln!(
        "cosigner-soak: load done after {:.1} s: {} requests, {} signatures, {} refreshes, {} \
         failures; checking every wallet",
        elapsed.as_secs_f64(),
        tally.requests,
        tally.signs,
        tally.refreshes,
        tally.failures.len()
    );
    let lost = wallets
        .iter()
        .filter(|w| !still_signs(args, &trust, w))
        .count() as u64;
    let shape = RunShape {
        wallets: wallets.len(),
        clients: args.clients,
        instances,
        database: database.to_owned(),
    };
    Ok(Report::new(
        &shape,
        &tally,
        elapsed,
        window,
        kill_report,
        (rss_start, rss_end),
        &restarted,
        lost,
    ))
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("cosigner-soak: {e:#}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(report) => {
            println!("{}", report.to_json_line());
            if report.failed() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("cosigner-soak: {e:#}");
            ExitCode::from(1)
        }
    }
}
