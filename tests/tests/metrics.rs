//! Observability with real processes (docs/architecture.md, "Logs and metrics"): the parent's
//! operator listener (`metrics_listen`) serves `/metrics`, `/healthz` and `/readyz`; the enclave's
//! counters and log events reach it over the store channel; nothing secret is ever logged; and a
//! hostile peer on the store socket cannot flood the parent's log.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cosigner_protocol::frame::{read_frame, write_frame};
use cosigner_protocol::wire::{
    self, LogLevel, LogRecord, MAX_LOG_RECORDS, StoreRequest, StoreResponse,
};
use cosigner_tests::wallets::{create, signs};
use cosigner_tests::{ChildGuard, Cosigner, Deployment, free_port, try_bin};
use serde_json::Value;

/// `GET path` on the operator listener: (status code, body).
fn get(port: u16, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let code = answer
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (code, body)
}

/// Polls `f` until it returns `Some`, for at most `limit`.
fn within<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The value of the sample line `series` (name and labels exactly) in an exposition.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Starts `binary run --config DIR/config` with `env`, stderr and stdout to `DIR/log`.
fn spawn(
    dir: &Path,
    binary: &str,
    config: &str,
    log: &str,
    env: &[(String, String)],
) -> ChildGuard {
    let log = std::fs::File::create(dir.join(log)).unwrap();
    ChildGuard(
        Command::new(try_bin(binary).unwrap())
            .args(["run", "--config"])
            .arg(dir.join(config))
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

/// A wallet created and a signature made through the client: `/metrics` shows the enclave's
/// signature and ceremony counters and its latency histograms under its instance, the parent's
/// own numbers beside them; `/readyz` is 200, and 503 within a few seconds of the enclave being
/// killed. The enclave's events are in the parent's log as JSON with `"source":"enclave"`, and no
/// line of either log carries a PIN, a client key or a sealed share.
#[test]
fn metrics_show_the_enclaves_work_and_readyz_follows_the_enclave() {
    let port = free_port();
    let mut d =
        Deployment::start_configured("", &format!("metrics_listen = \"127.0.0.1:{port}\"\n"))
            .unwrap_or_else(|e| panic!("{e:#}"));
    // The provider again, as processes of this test: its enclave is killed below.
    d.provider.stop();
    let dir = d.provider.hsm.dir().to_path_buf();
    let env = d.provider.hsm.env();
    let _ = std::fs::remove_file(dir.join("store.sock"));
    let _ = std::fs::remove_file(dir.join("enclave.sock"));
    let _parent = spawn(
        &dir,
        "cosigner-parent",
        "parent.toml",
        "metrics-parent.log",
        &env,
    );
    within(Duration::from_secs(10), "the store socket", || {
        dir.join("store.sock").exists().then_some(())
    });
    let enclave = spawn(
        &dir,
        "cosigner-enclave",
        "enclave.toml",
        "metrics-enclave.log",
        &env,
    );
    let logs = || {
        ["metrics-parent.log", "metrics-enclave.log"]
            .map(|f| std::fs::read_to_string(dir.join(f)).unwrap_or_default())
    };

    assert_eq!(get(port, "/healthz"), (200, "ok\n".into()));
    // Ready once the enclave attested (its start-up self-check) and sent a snapshot.
    within(Duration::from_secs(15), "/readyz 200", || {
        (get(port, "/readyz").0 == 200).then_some(())
    });

    let w = create(&d, "alice");
    signs(&d, &w.home, &w);

    let text = within(Duration::from_secs(5), "the signature in /metrics", || {
        let (code, text) = get(port, "/metrics");
        assert_eq!(code, 200);
        (sample(
            &text,
            "cosigner_enclave_signatures_total{instance=\"0\",scheme=\"bip340\"}",
        ) >= Some(1.0))
        .then_some(text)
    });
    for (series, at_least) in [
        (
            "cosigner_enclave_ceremonies_total{instance=\"0\",ceremony=\"dkg\"}",
            1.0,
        ),
        (
            "cosigner_enclave_requests_total{instance=\"0\",kind=\"DkgConfirm\",outcome=\"ok\"}",
            1.0,
        ),
        (
            "cosigner_enclave_request_seconds_count{instance=\"0\",kind=\"Attest\"}",
            2.0,
        ),
        (
            "cosigner_enclave_request_seconds_bucket{instance=\"0\",kind=\"Attest\",le=\"+Inf\"}",
            2.0,
        ),
        (
            "cosigner_enclave_anchor_seconds_count{instance=\"0\",op=\"write\"}",
            1.0,
        ),
        ("cosigner_enclave_attested{instance=\"0\"}", 1.0),
        ("cosigner_instances_up", 1.0),
        ("cosigner_client_connections_accepted_total", 2.0),
        (
            "cosigner_relay_bytes_total{direction=\"to_enclave\"}",
            1000.0,
        ),
        (
            "cosigner_relay_bytes_total{direction=\"to_client\"}",
            1000.0,
        ),
        (
            "cosigner_enclave_log_records_total{instance=\"0\",outcome=\"written\"}",
            1.0,
        ),
    ] {
        assert!(
            sample(&text, series) >= Some(at_least),
            "{series} below {at_least} in\n{text}"
        );
    }
    for family in [
        "# TYPE cosigner_enclave_request_seconds histogram",
        "# TYPE cosigner_enclave_store_seconds histogram",
        "# TYPE cosigner_store_seconds histogram",
        "# TYPE cosigner_enclave_signatures_total counter",
    ] {
        assert!(text.contains(family), "{family} in\n{text}");
    }
    assert!(
        text.lines()
            .any(|l| l.starts_with("cosigner_enclave_store_seconds_bucket{instance=\"0\",op=")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("cosigner_store_seconds_count{op=\"put")),
        "{text}"
    );

    // The enclave's events are the parent's JSON lines; its own stderr stayed empty.
    let [parent_log, enclave_log] = logs();
    let events: Vec<Value> = parent_log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        events.iter().any(|e| e["source"] == "enclave"
            && e["instance"] == 0
            && e["level"] == "INFO"
            && e["message"].as_str().unwrap().starts_with("listening on")
            && e["audit_key"].is_string()),
        "{parent_log}"
    );
    assert!(
        events
            .iter()
            .any(|e| e.get("source").is_none() && e["metrics"] == format!("127.0.0.1:{port}")),
        "{parent_log}"
    );
    assert_eq!(
        enclave_log, "",
        "the enclave's events went through the parent"
    );

    // Nothing secret in any line: PINs, the client's key files, sealed shares.
    let mut secrets: Vec<String> = ["pin", "so-pin"]
        .iter()
        .map(|f| std::fs::read_to_string(dir.join(f)).unwrap())
        .collect();
    for entry in walk(&w.home) {
        let text = String::from_utf8_lossy(&std::fs::read(&entry).unwrap()).into_owned();
        secrets.extend(
            text.lines()
                .filter(|l| l.len() >= 24 && !l.starts_with("-----"))
                .map(str::to_owned),
        );
    }
    let db = rusqlite::Connection::open(d.provider.database()).unwrap();
    let shares: Vec<Vec<u8>> = db
        .prepare("SELECT value FROM blobs WHERE key LIKE '%share%'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(!shares.is_empty(), "the wallet's sealed shares are stored");
    for share in &shares {
        secrets.push(hex::encode(&share[..share.len().min(32)]));
    }
    for log in logs() {
        for secret in &secrets {
            assert!(
                !log.contains(secret.trim()),
                "a secret is in the log:\n{log}"
            );
        }
    }

    // The enclave killed: not ready within a few seconds, still healthy.
    drop(enclave);
    let killed = Instant::now();
    let (code, body) = within(Duration::from_secs(5), "/readyz 503", || {
        let (code, body) = get(port, "/readyz");
        (code == 503).then_some((code, body))
    });
    assert_eq!(code, 503);
    assert_eq!(body.lines().count(), 1, "{body}");
    assert!(body.starts_with("not ready: "), "{body}");
    eprintln!("/readyz 503 {:?} after the kill: {body}", killed.elapsed());
    assert_eq!(get(port, "/healthz").0, 200);
    let (_, text) = get(port, "/metrics");
    assert_eq!(sample(&text, "cosigner_instances_up"), Some(0.0), "{text}");
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

fn record(i: usize) -> LogRecord {
    LogRecord {
        time_ms: 1_800_000_000_000,
        level: LogLevel::Info,
        target: "hostile".into(),
        message: format!("flood {i}"),
        fields: Vec::new(),
    }
}

fn call(conn: &mut UnixStream, request: &StoreRequest) -> StoreResponse {
    write_frame(conn, &wire::encode(request).unwrap()).unwrap();
    wire::decode(&read_frame(conn).unwrap().unwrap()).unwrap()
}

/// A hostile "enclave" on the store socket sends log records as fast as it can: the parent writes
/// a bounded number (its per-connection rate limit), counts the rest, says so in a line or two,
/// and refuses a batch that would forge its own fields, naming the field, without closing the
/// connection.
#[test]
fn a_flood_of_log_records_from_the_store_socket_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let port = free_port();
    std::fs::write(
        dir.path().join("parent.toml"),
        format!(
            "listen = \"127.0.0.1:0\"\nenclave = \"unix:{d}/enclave.sock\"\n\
             store_socket = \"{d}/store.sock\"\ndatabase = \"{d}/store.db\"\n\
             metrics_listen = \"127.0.0.1:{port}\"\n"
        ),
    )
    .unwrap();
    let _parent = spawn(
        dir.path(),
        "cosigner-parent",
        "parent.toml",
        "parent.log",
        &[],
    );
    let socket = dir.path().join("store.sock");
    within(Duration::from_secs(10), "the store socket", || {
        UnixStream::connect(&socket).ok()
    });
    let mut conn = UnixStream::connect(&socket).unwrap();

    // A record that would forge the parent's `source`: refused, named, the connection kept.
    let mut forged = record(0);
    forged.fields = vec![("source".into(), "parent".into())];
    let answer = call(
        &mut conn,
        &StoreRequest::Log {
            instance: 77,
            records: vec![forged],
            dropped: 0,
        },
    );
    assert!(
        matches!(&answer, StoreResponse::Error(e) if e.kind == wire::ErrorKind::BadRequest
            && e.message.contains("\"source\"")),
        "{answer:?}"
    );

    let started = Instant::now();
    let batches = 40;
    for b in 0..batches {
        let records = (0..MAX_LOG_RECORDS)
            .map(|i| record(b * MAX_LOG_RECORDS + i))
            .collect();
        let answer = call(
            &mut conn,
            &StoreRequest::Log {
                instance: 77,
                records,
                dropped: 0,
            },
        );
        assert_eq!(answer, StoreResponse::Done);
    }
    let took = started.elapsed();
    let sent = batches * MAX_LOG_RECORDS;
    drop(conn);

    let text = within(Duration::from_secs(5), "the counts in /metrics", || {
        let (_, text) = get(port, "/metrics");
        sample(
            &text,
            "cosigner_enclave_log_records_total{instance=\"77\",outcome=\"rate_limited\"}",
        )
        .filter(|n| *n > 0.0)
        .map(|_| text)
    });
    let log = std::fs::read_to_string(dir.path().join("parent.log")).unwrap();
    let written = log.lines().filter(|l| l.contains("\"flood ")).count();
    // The burst plus the rate over the time the flood took, and not one record more.
    let bound = 1000 + (200.0 * took.as_secs_f64()).ceil() as usize + 1;
    assert!(
        written <= bound && written < sent,
        "{written} of {sent} records written in {took:?} (bound {bound})"
    );
    assert_eq!(
        sample(
            &text,
            "cosigner_enclave_log_records_total{instance=\"77\",outcome=\"written\"}"
        ),
        Some(written as f64),
        "{text}"
    );
    assert_eq!(
        sample(&text, "cosigner_telemetry_refused_total"),
        Some(1.0),
        "{text}"
    );
    let drop_lines = log
        .lines()
        .filter(|l| l.contains("over the rate limit"))
        .count();
    assert!(
        (1..=took.as_secs() as usize + 2).contains(&drop_lines),
        "{drop_lines} lines about the drops:\n{log}"
    );
    assert!(!log.contains("panicked"), "{log}");
    // No instance 77 ever said it attested: not ready.
    assert_eq!(get(port, "/readyz").0, 503);
}

/// While its parent is away, the enclave's events are not lost: it writes them on its own stderr
/// (JSON, `"source":"enclave"`), each in one place only.
#[test]
fn an_enclave_whose_parent_is_gone_writes_its_events_on_its_own_stderr() {
    let mut c = Cosigner::start("solo").unwrap_or_else(|e| panic!("{e:#}"));
    c.stop();
    let dir = c.hsm.dir().to_path_buf();
    let env = c.hsm.env();
    let _ = std::fs::remove_file(dir.join("store.sock"));
    let _ = std::fs::remove_file(dir.join("enclave.sock"));
    let parent = spawn(
        &dir,
        "cosigner-parent",
        "parent.toml",
        "solo-parent.log",
        &env,
    );
    within(Duration::from_secs(10), "the store socket", || {
        dir.join("store.sock").exists().then_some(())
    });
    let _enclave = spawn(
        &dir,
        "cosigner-enclave",
        "enclave.toml",
        "solo-enclave.log",
        &env,
    );
    let socket = dir.join("enclave.sock");
    within(Duration::from_secs(15), "the enclave's socket", || {
        UnixStream::connect(&socket).ok()
    });
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
    within(
        Duration::from_secs(5),
        "the start line at the parent",
        || {
            read("solo-parent.log")
                .contains("\"source\":\"enclave\"")
                .then_some(())
        },
    );
    assert_eq!(read("solo-enclave.log"), "");

    drop(parent);
    // Something the enclave logs: a connection that is not TLS.
    let mut s = UnixStream::connect(&socket).unwrap();
    s.write_all(b"not a TLS client hello\r\n\r\n").unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    let line = within(
        Duration::from_secs(10),
        "the event on the enclave's stderr",
        || {
            read("solo-enclave.log")
                .lines()
                .find(|l| l.contains("connection closed"))
                .map(str::to_owned)
        },
    );
    let event: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(event["source"], "enclave");
    assert_eq!(event["instance"], 0);
    assert!(event["error"].is_string(), "{event}");
}
