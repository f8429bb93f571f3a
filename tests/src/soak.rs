//! The figures of `make soak` (scripts/soak.sh; a module of the `cosigner-soak` driver): what
//! the client threads tally, which failures belong to the instance the soak kills, the resident
//! memory of the deployment's processes, and the one JSON line the run ends with.
//!
//! Kept apart from the driver so that the arithmetic and the JSON are tested without a
//! deployment (the unit tests below); the driver's own code is the sessions and the clock.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

/// What went wrong with one request, by kind (for the JSON's `error_kinds` and for deciding what
/// the kill explains).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
#[non_exhaustive]
pub enum FailureKind {
    /// A new session to a cosigner could not be opened (TCP, TLS or attestation).
    Connect,
    /// An open session broke (closed, reset, timed out) during a request.
    Connection,
    /// The cosigner refused the request; its wire error kind (`Busy`, `Integrity`, …).
    Refused(String),
    /// The signature came back but does not verify (BIP-340, checked independently).
    Verify,
    /// Anything else the client library reported (its variant's name).
    Other(String),
}

impl FailureKind {
    /// The key under which `error_kinds` counts it.
    pub fn label(&self) -> String {
        match self {
            Self::Connect => "connect".into(),
            Self::Connection => "connection".into(),
            Self::Refused(kind) => format!("refused:{kind}"),
            Self::Verify => "verify".into(),
            Self::Other(what) => format!("other:{what}"),
        }
    }
}

/// One failed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// When, from the start of the load.
    pub at: Duration,
    /// What.
    pub kind: FailureKind,
    /// When the provider session it broke on was opened, for a failure on the provider's
    /// session (`None`: no session yet, or the recovery cosigner's).
    pub session_opened: Option<Duration>,
    /// Which operation failed (`"sign"` or `"refresh"`).
    pub operation: &'static str,
}

/// The time around the kill of one enclave instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KillWindow {
    /// When the instance was killed (SIGKILL), from the start of the load.
    pub killed_at: Duration,
    /// The end of the window: a few seconds after the instance was started again.
    pub until: Duration,
}

impl KillWindow {
    /// Whether `failure` is a request in flight on the killed instance: a provider session that
    /// was open before the kill broke within the window. Sessions on the surviving instance do
    /// not break, so within the window such a break is the killed instance's; each session breaks
    /// at most once (the client reconnects). New sessions that cannot connect, refusals and
    /// everything outside the window are not explained by the kill.
    pub fn explains(&self, failure: &Failure) -> bool {
        failure.kind == FailureKind::Connection
            && failure.at >= self.killed_at
            && failure.at <= self.until
            && failure
                .session_opened
                .is_some_and(|opened| opened <= self.killed_at)
    }
}

/// What one client thread (or all of them, merged) did.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    /// Requests attempted: signatures and refreshes, failed ones included.
    pub requests: u64,
    /// Signatures that came back and verified.
    pub signs: u64,
    /// Refreshes that completed.
    pub refreshes: u64,
    /// Each verified signature's time, in milliseconds (request to verified).
    pub sign_ms: Vec<f64>,
    /// Every failure.
    pub failures: Vec<Failure>,
}

impl Tally {
    /// Adds `other`'s counts and samples to this one.
    pub fn merge(&mut self, other: Tally) {
        self.requests += other.requests;
        self.signs += other.signs;
        self.refreshes += other.refreshes;
        self.sign_ms.extend(other.sign_ms);
        self.failures.extend(other.failures);
    }
}

/// The `per_cent` percentile of `samples` by nearest rank (the smallest sample with at least
/// `per_cent` % of the samples at or below it); 0 without samples.
pub fn percentile(samples: &[f64], per_cent: f64) -> f64 {
    let mut sorted: Vec<f64> = samples.iter().copied().filter(|s| s.is_finite()).collect();
    if sorted.is_empty() {
        return 0.0;
    }
    sorted.sort_by(f64::total_cmp);
    let rank = (per_cent / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted
        .get(rank.clamp(1, sorted.len()) - 1)
        .copied()
        .unwrap_or(0.0)
}

/// `x` to three decimals (the JSON's precision).
fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Resident memory per process name, in MiB.
pub type Rss = BTreeMap<String, f64>;

/// One sample of the deployment's memory.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Memory {
    /// `VmRSS` per process: what the issue's goal is stated in.
    pub vm_rss: Rss,
    /// `RssAnon` per process: private memory only. A leak shows here; `VmRSS` also counts shared
    /// memory as a process touches it (PostgreSQL's shared buffers, counted again in every
    /// backend), which grows towards its configured size without leaking.
    pub rss_anon: Rss,
}

/// The kill of the run, as the JSON reports it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct KillReport {
    /// The instance killed (`enclave-K`).
    pub instance: String,
    /// Seconds from the start of the load to the SIGKILL.
    pub at_seconds: f64,
    /// Seconds from the start of the load to the instance's restart.
    pub restarted_at_seconds: f64,
}

/// The run's shape, known before the load.
#[derive(Debug, Clone)]
pub struct RunShape {
    /// Wallets (each its own client home).
    pub wallets: usize,
    /// Concurrent clients.
    pub clients: usize,
    /// Enclave instances of the provider.
    pub instances: usize,
    /// The provider's database (`"postgres"` or `"sqlite"`).
    pub database: String,
}

/// The one JSON line `make soak` prints. The names the issue asks for are kept exactly:
/// `requests`, `errors`, `sign_ms_p50`, `sign_ms_p99`, `signs_per_sec`, `rss_mb_start`,
/// `rss_mb_end`, `lost_wallets`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    /// Requests attempted (signatures and refreshes).
    pub requests: u64,
    /// Failed requests the kill does not explain: the goal is 0.
    pub errors: u64,
    /// Requests in flight on the killed instance that failed with it (counted apart).
    pub errors_killed_instance: u64,
    /// Every failure by kind (both counts above together).
    pub error_kinds: BTreeMap<String, u64>,
    /// Median time of a verified signature, ms.
    pub sign_ms_p50: f64,
    /// 99th percentile, ms.
    pub sign_ms_p99: f64,
    /// Verified signatures per second of load.
    pub signs_per_sec: f64,
    /// Verified signatures.
    pub signs: u64,
    /// Completed refreshes.
    pub refreshes: u64,
    /// VmRSS of each process at the end of the first minute (or a fifth of a shorter run), MiB.
    pub rss_mb_start: Rss,
    /// VmRSS of each process at the end of the load, MiB.
    pub rss_mb_end: Rss,
    /// RssAnon of each process when `rss_mb_start` was taken, MiB.
    pub rss_anon_mb_start: Rss,
    /// RssAnon of each process at the end, MiB.
    pub rss_anon_mb_end: Rss,
    /// Every process that was measured twice ended within 10 % of its start (the killed and
    /// restarted instance is not compared: its start figure is another process's).
    pub memory_flat: bool,
    /// Wallets that could not sign (and verify) once more after the load, even after finishing
    /// an interrupted refresh: the goal is 0.
    pub lost_wallets: u64,
    /// Seconds of load actually run.
    pub seconds: f64,
    /// Wallets.
    pub wallets: usize,
    /// Concurrent clients.
    pub clients: usize,
    /// Enclave instances of the provider.
    pub instances: usize,
    /// The provider's database.
    pub database: String,
    /// The kill and restart, or `null` when there was none.
    pub kill: Option<KillReport>,
}

/// How much an end figure may exceed the start one for memory to count as flat (the issue's
/// "end within 10 % of the first minute").
pub const FLAT_RATIO: f64 = 1.10;

impl Report {
    /// The report of a run: `tally` of all clients over `elapsed` of load; `window` the kill's,
    /// if any, with `kill` its report; `restarted` the process names whose start figure belongs
    /// to a process that no longer runs; `lost_wallets` from the final check.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        shape: &RunShape,
        tally: &Tally,
        elapsed: Duration,
        window: Option<KillWindow>,
        kill: Option<KillReport>,
        memory: (Memory, Memory),
        restarted: &[String],
        lost_wallets: u64,
    ) -> Self {
        let mut error_kinds = BTreeMap::new();
        let mut killed = 0;
        for failure in &tally.failures {
            *error_kinds.entry(failure.kind.label()).or_insert(0) += 1;
            if window.is_some_and(|w| w.explains(failure)) {
                killed += 1;
            }
        }
        let (start, end) = memory;
        let (rss_mb_start, rss_mb_end) = (start.vm_rss.clone(), end.vm_rss.clone());
        // PostgreSQL is judged by its private memory: its VmRSS, summed over the backends,
        // counts the shared buffer pool once per backend as each touches more of it, which
        // grows without anything leaking.
        let judged = |vm: &Rss, anon: &Rss| -> Rss {
            vm.iter()
                .map(|(name, mb)| {
                    let mb = match name.as_str() {
                        "postgres" => anon.get(name).copied().unwrap_or(*mb),
                        _ => *mb,
                    };
                    (name.clone(), mb)
                })
                .collect()
        };
        let memory_flat = memory_flat(
            &judged(&start.vm_rss, &start.rss_anon),
            &judged(&end.vm_rss, &end.rss_anon),
            restarted,
        );
        let seconds = elapsed.as_secs_f64();
        Self {
            requests: tally.requests,
            errors: tally.failures.len() as u64 - killed,
            errors_killed_instance: killed,
            error_kinds,
            sign_ms_p50: round3(percentile(&tally.sign_ms, 50.0)),
            sign_ms_p99: round3(percentile(&tally.sign_ms, 99.0)),
            signs_per_sec: if seconds > 0.0 {
                round3(tally.signs as f64 / seconds)
            } else {
                0.0
            },
            signs: tally.signs,
            refreshes: tally.refreshes,
            rss_mb_start,
            rss_mb_end,
            rss_anon_mb_start: start.rss_anon,
            rss_anon_mb_end: end.rss_anon,
            memory_flat,
            lost_wallets,
            seconds: round3(seconds),
            wallets: shape.wallets,
            clients: shape.clients,
            instances: shape.instances,
            database: shape.database.clone(),
            kill,
        }
    }

    /// Whether the run missed a goal that fails `make soak`: an error the kill does not explain,
    /// or a lost wallet.
    pub fn failed(&self) -> bool {
        self.errors > 0 || self.lost_wallets > 0
    }

    /// The report as one line of JSON.
    pub fn to_json_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

/// Whether every process measured at both ends, other than `restarted`, ended within
/// [`FLAT_RATIO`] of its start.
pub fn memory_flat(start: &Rss, end: &Rss, restarted: &[String]) -> bool {
    start.iter().all(|(name, before)| {
        restarted.contains(name)
            || end
                .get(name)
                .is_none_or(|after| *after <= before * FLAT_RATIO)
    })
}

/// The field `name` (`"VmRSS"`, `"RssAnon"`) of a `/proc/PID/status` text, in KiB.
pub fn parse_status_kib(status: &str, name: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// The parent pid in a `/proc/PID/stat` line: the fourth field, counted after the command name's
/// closing parenthesis (the name itself may hold spaces and parentheses).
pub fn parse_ppid(stat: &str) -> Option<u32> {
    let after = stat.get(stat.rfind(')')? + 1..)?;
    after.split_whitespace().nth(1)?.parse().ok()
}

/// `VmRSS` and `RssAnon` of a live process, KiB.
pub fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some((
        parse_status_kib(&status, "VmRSS")?,
        parse_status_kib(&status, "RssAnon")?,
    ))
}

/// The live children of `pid` (one scan of /proc).
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            std::fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .and_then(|s| parse_ppid(&s))
                == Some(pid)
        })
        .collect()
}

/// The pid a pid file holds (its first line), if that process is alive.
pub fn live_pid(pid_file: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(pid_file).ok()?;
    let pid: u32 = text.lines().next()?.trim().parse().ok()?;
    Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
}

/// How a measured process is found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The process in a pid file (re-read at every sample: a restarted instance writes anew).
    PidFile(PathBuf),
    /// A PostgreSQL server from its data directory's `postmaster.pid`: the postmaster and its
    /// backends summed.
    Postmaster(PathBuf),
}

/// The processes of a `make up` deployment in `dev` (scripts/up.sh's layout), by name:
/// `provider-parent`, `provider-enclave-K` (or `provider-enclave` for the single one),
/// `recovery-…` alike, and each PostgreSQL cluster under it (`postgres`, or its directory's
/// path when there are several).
pub fn discover(dev: &Path) -> Vec<(String, Source)> {
    let mut found = Vec::new();
    for cosigner in ["provider", "recovery"] {
        let dir = dev.join(cosigner);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut pid_files: Vec<String> = entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.ends_with(".pid"))
            .collect();
        pid_files.sort();
        for file in pid_files {
            let process = file.trim_end_matches(".pid");
            found.push((
                format!("{cosigner}-{process}"),
                Source::PidFile(dir.join(&file)),
            ));
        }
    }
    let mut clusters = Vec::new();
    find_postmasters(dev, 0, &mut clusters);
    clusters.sort();
    let single = clusters.len() == 1;
    for data in clusters {
        let name = if single {
            "postgres".to_owned()
        } else {
            let relative = data.strip_prefix(dev).unwrap_or(&data);
            format!("postgres:{}", relative.display())
        };
        found.push((name, Source::Postmaster(data.join("postmaster.pid"))));
    }
    found
}

/// Directories under `dir` (at most 4 levels down) holding a `postmaster.pid`.
fn find_postmasters(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
    if dir.join("postmaster.pid").is_file() {
        out.push(dir.to_path_buf());
        return;
    }
    if depth >= 4 {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            find_postmasters(&entry.path(), depth + 1, out);
        }
    }
}

/// `VmRSS` and `RssAnon` of every process in `processes` that is alive now, MiB.
pub fn sample(processes: &[(String, Source)]) -> Memory {
    let mut memory = Memory::default();
    for (name, source) in processes {
        let kib = match source {
            Source::PidFile(file) => live_pid(file).and_then(rss_kib),
            Source::Postmaster(file) => live_pid(file).map(|postmaster| {
                children(postmaster)
                    .into_iter()
                    .chain([postmaster])
                    .filter_map(rss_kib)
                    .fold((0, 0), |(rss, anon), (r, a)| (rss + r, anon + a))
            }),
        };
        if let Some((rss, anon)) = kib {
            let mib = |kib: u64| round3(kib as f64 / 1024.0);
            memory.vm_rss.insert(name.clone(), mib(rss));
            memory.rss_anon.insert(name.clone(), mib(anon));
        }
    }
    memory
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn failure(at: u64, kind: FailureKind, opened: Option<u64>) -> Failure {
        Failure {
            at: secs(at),
            kind,
            session_opened: opened.map(secs),
            operation: "sign",
        }
    }

    fn memory(vm_rss: Rss) -> Memory {
        Memory {
            rss_anon: vm_rss.clone(),
            vm_rss,
        }
    }

    fn shape() -> RunShape {
        RunShape {
            wallets: 50,
            clients: 50,
            instances: 2,
            database: "postgres".into(),
        }
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let samples: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        assert_eq!(percentile(&samples, 50.0), 50.0);
        assert_eq!(percentile(&samples, 99.0), 99.0);
        assert_eq!(percentile(&samples, 100.0), 100.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
        assert_eq!(percentile(&[f64::NAN, 2.0, 1.0], 50.0), 1.0);
    }

    #[test]
    fn only_broken_sessions_opened_before_the_kill_are_the_killed_instance_s() {
        let window = KillWindow {
            killed_at: secs(150),
            until: secs(158),
        };
        // In flight on the killed instance: a session from before the kill broke after it.
        assert!(window.explains(&failure(151, FailureKind::Connection, Some(10))));
        assert!(window.explains(&failure(158, FailureKind::Connection, Some(150))));
        // A new connection that fails, a refusal, a bad signature: not explained.
        assert!(!window.explains(&failure(151, FailureKind::Connect, None)));
        assert!(!window.explains(&failure(151, FailureKind::Refused("Busy".into()), Some(10))));
        assert!(!window.explains(&failure(151, FailureKind::Verify, Some(10))));
        // A session opened after the kill, a break before it or after the window, the recovery
        // cosigner's session (no provider session recorded).
        assert!(!window.explains(&failure(152, FailureKind::Connection, Some(151))));
        assert!(!window.explains(&failure(149, FailureKind::Connection, Some(10))));
        assert!(!window.explains(&failure(159, FailureKind::Connection, Some(10))));
        assert!(!window.explains(&failure(151, FailureKind::Connection, None)));
    }

    #[test]
    fn the_report_counts_apart_what_the_kill_explains_and_keeps_the_issue_s_names() {
        let mut a = Tally {
            requests: 10,
            signs: 8,
            refreshes: 1,
            sign_ms: vec![2.0, 4.0, 6.0, 8.0],
            failures: vec![failure(151, FailureKind::Connection, Some(1))],
        };
        let b = Tally {
            requests: 5,
            signs: 4,
            refreshes: 0,
            sign_ms: vec![1.0, 3.0, 5.0, 7.0],
            failures: vec![failure(20, FailureKind::Refused("Busy".into()), Some(1))],
        };
        a.merge(b);
        let window = KillWindow {
            killed_at: secs(150),
            until: secs(160),
        };
        let kill = KillReport {
            instance: "enclave-2".into(),
            at_seconds: 150.0,
            restarted_at_seconds: 153.0,
        };
        let start: Rss = [
            ("provider-parent".to_owned(), 10.0),
            ("provider-enclave-2".to_owned(), 50.0),
        ]
        .into_iter()
        .collect();
        let end: Rss = [
            ("provider-parent".to_owned(), 10.5),
            ("provider-enclave-2".to_owned(), 90.0),
        ]
        .into_iter()
        .collect();
        let report = Report::new(
            &shape(),
            &a,
            secs(4),
            Some(window),
            Some(kill),
            (memory(start), memory(end)),
            &["provider-enclave-2".to_owned()],
            0,
        );
        assert_eq!(report.requests, 15);
        assert_eq!(report.errors, 1);
        assert_eq!(report.errors_killed_instance, 1);
        assert_eq!(report.error_kinds["connection"], 1);
        assert_eq!(report.error_kinds["refused:Busy"], 1);
        assert_eq!(report.sign_ms_p50, 4.0);
        assert_eq!(report.sign_ms_p99, 8.0);
        assert_eq!(report.signs_per_sec, 3.0);
        assert!(report.memory_flat, "the restarted instance is not compared");
        assert!(
            report.failed(),
            "an error the kill does not explain fails the soak"
        );

        let line = report.to_json_line();
        assert!(!line.contains('\n'));
        let json: serde_json::Value = serde_json::from_str(&line).unwrap();
        for key in [
            "requests",
            "errors",
            "errors_killed_instance",
            "sign_ms_p50",
            "sign_ms_p99",
            "signs_per_sec",
            "refreshes",
            "rss_mb_start",
            "rss_mb_end",
            "lost_wallets",
            "seconds",
            "wallets",
            "clients",
            "instances",
        ] {
            assert!(json.get(key).is_some(), "{key} missing from {line}");
        }
        assert_eq!(json["rss_mb_start"]["provider-parent"], 10.0);
        assert_eq!(json["kill"]["instance"], "enclave-2");
    }

    #[test]
    fn a_clean_run_passes_and_a_lost_wallet_or_growth_shows() {
        let tally = Tally {
            requests: 3,
            signs: 3,
            refreshes: 0,
            sign_ms: vec![1.0, 1.0, 1.0],
            failures: vec![],
        };
        let rss: Rss = [("postgres".to_owned(), 100.0)].into_iter().collect();
        let grown: Rss = [("postgres".to_owned(), 111.0)].into_iter().collect();
        let clean = Report::new(
            &shape(),
            &tally,
            secs(1),
            None,
            None,
            (memory(rss.clone()), memory(rss.clone())),
            &[],
            0,
        );
        assert!(!clean.failed());
        assert!(clean.memory_flat);
        assert!(clean.to_json_line().contains("\"kill\":null"));
        let lost = Report::new(
            &shape(),
            &tally,
            secs(1),
            None,
            None,
            (memory(rss.clone()), memory(grown)),
            &[],
            1,
        );
        assert!(lost.failed());
        assert!(!lost.memory_flat);
    }

    #[test]
    fn proc_files_are_read_field_by_field() {
        let status = "Name:\tcosigner-parent\nVmPeak:\t  9000 kB\nVmRSS:\t    5120 kB\n\
                      RssAnon:\t    3072 kB\nRssAnonX:\t1 kB\nThreads:\t4\n";
        assert_eq!(parse_status_kib(status, "VmRSS"), Some(5120));
        assert_eq!(parse_status_kib(status, "RssAnon"), Some(3072));
        assert_eq!(parse_status_kib("Name:\tkthreadd\n", "VmRSS"), None);
        // The command name may hold spaces and parentheses: the fields count from the last ')'.
        assert_eq!(
            parse_ppid("4242 (postgres: a (b) c) S 4000 4242 4242 0"),
            Some(4000)
        );
        assert_eq!(parse_ppid("garbage"), None);
    }

    #[test]
    fn a_deployment_s_processes_are_found_by_their_pid_files() {
        let dev = tempfile::tempdir().unwrap();
        let provider = dev.path().join("provider");
        std::fs::create_dir_all(&provider).unwrap();
        let me = std::process::id().to_string();
        for file in ["parent.pid", "enclave-1.pid", "enclave-2.pid"] {
            std::fs::write(provider.join(file), &me).unwrap();
        }
        let data = dev.path().join("postgres/data");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join("postmaster.pid"), format!("{me}\n/data\n")).unwrap();
        let found = discover(dev.path());
        let names: Vec<&str> = found.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "provider-enclave-1",
                "provider-enclave-2",
                "provider-parent",
                "postgres"
            ]
        );
        let memory = sample(&found);
        assert_eq!(memory.vm_rss.len(), 4, "{memory:?}");
        assert!(memory.vm_rss.values().all(|mb| *mb > 0.0));
        assert_eq!(memory.rss_anon.len(), 4, "{memory:?}");
        assert!(
            memory
                .rss_anon
                .iter()
                .all(|(n, anon)| *anon <= memory.vm_rss[n])
        );
        // A dead process is left out rather than reported as 0.
        std::fs::write(provider.join("parent.pid"), "4194304").unwrap();
        assert!(!sample(&found).vm_rss.contains_key("provider-parent"));
    }
}
