//! The outbound proxy through the running parent, on unix sockets (the same code serves vsock in a
//! Nitro deployment): bytes both ways to a TCP echo server, the allowlist at load and at start,
//! a destination that does not resolve, and the connection cap.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cosigner_parent::{Config, Parent, ParentError, RunningParent};
use tempfile::TempDir;

const TIMEOUT: Duration = Duration::from_secs(10);

fn tempdir() -> TempDir {
    TempDir::with_prefix("cosigner-proxy-").unwrap()
}

/// A TCP echo server on 127.0.0.1: echoes each connection until EOF, then closes it. Counts the
/// connections it accepted.
fn echo_server() -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            count.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                loop {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if conn.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    }
                }
                let _ = conn.shutdown(Shutdown::Write);
            });
        }
    });
    (port, accepted)
}

/// The parent's base configuration in `dir`, plus `extra` (top-level keys, then tables).
fn config_text(dir: &Path, allow: &str, proxies: &str) -> String {
    format!(
        "listen = \"127.0.0.1:0\"\nenclave = \"unix:{}\"\nstore_socket = \"{}\"\n\
         database = \"{}\"\nproxy_allow = {allow}\n{proxies}",
        dir.join("enclave.sock").display(),
        dir.join("store.sock").display(),
        dir.join("store.db").display(),
    )
}

fn proxy_table(listen: &Path, to: &str, max: Option<usize>) -> String {
    let max = max.map_or(String::new(), |m| format!("max_connections = {m}\n"));
    format!(
        "[[proxy]]\nlisten = \"unix:{}\"\nto = \"{to}\"\n{max}",
        listen.display()
    )
}

fn start(text: &str) -> RunningParent {
    let config = Config::from_toml(text).unwrap();
    Parent::new(config).unwrap().start().unwrap()
}

/// A parent in `dir` with one proxy, listening on `kms.sock` there and relaying to `to` (the one
/// destination allowed), at most `max` connections at once; the socket and the parent.
fn start_one_proxy(dir: &Path, to: &str, max: Option<usize>) -> (PathBuf, RunningParent) {
    let socket = dir.join("kms.sock");
    let allow = format!("[\"{to}\"]");
    let parent = start(&config_text(dir, &allow, &proxy_table(&socket, to, max)));
    (socket, parent)
}

fn dial(path: &Path) -> UnixStream {
    let s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s
}

fn echo_round_trip(s: &mut UnixStream, message: &[u8]) {
    s.write_all(message).unwrap();
    let mut back = vec![0u8; message.len()];
    s.read_exact(&mut back).unwrap();
    assert_eq!(back, message);
}

/// Reads until the proxy closes the connection: EOF (or a reset), never data, within TIMEOUT.
fn assert_closed(s: &mut UnixStream) {
    let mut rest = Vec::new();
    match s.read_to_end(&mut rest) {
        Ok(_) => assert!(rest.is_empty(), "{rest:?}"),
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}"),
    }
}

#[test]
fn a_proxy_relays_bytes_both_ways_to_its_destination() {
    let dir = tempdir();
    let (port, accepted) = echo_server();
    // `localhost` goes through the resolver on every connection (it may try ::1 first, where
    // nothing listens, then 127.0.0.1).
    let (socket, parent) = start_one_proxy(dir.path(), &format!("localhost:{port}"), None);
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    // Interactive, two connections at once, and a large transfer.
    let mut a = dial(&socket);
    let mut b = dial(&socket);
    for i in 0..20u8 {
        echo_round_trip(&mut a, &[i; 7]);
        echo_round_trip(&mut b, &[i.wrapping_mul(3); 300]);
    }
    let big: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let writer = {
        let mut a = a.try_clone().unwrap();
        let big = big.clone();
        std::thread::spawn(move || {
            a.write_all(&big).unwrap();
            // Half-close: the destination sees EOF, answers the rest, then closes.
            a.shutdown(Shutdown::Write).unwrap();
        })
    };
    let mut back = Vec::new();
    a.read_to_end(&mut back).unwrap();
    writer.join().unwrap();
    assert_eq!(back.len(), big.len());
    assert!(back == big);
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    drop(b);

    parent.shutdown();
    assert!(!socket.exists(), "the proxy socket is removed at shutdown");
}

#[test]
fn a_destination_not_allowlisted_is_refused_at_load() {
    let dir = tempdir();
    let socket = dir.path().join("kms.sock");
    let path = dir.path().join("parent.toml");
    let allow = "[\"kms.*.amazonaws.com:443\"]";
    for (to, expected) in [
        (
            "kms.us-east-1.amazonaws.com.evil.example:443",
            "proxy destination \"kms.us-east-1.amazonaws.com.evil.example:443\" is not in \
             proxy_allow [\"kms.*.amazonaws.com:443\"]",
        ),
        (
            "kms.us-east-1.amazonaws.com:80",
            "proxy destination \"kms.us-east-1.amazonaws.com:80\" is not in proxy_allow \
             [\"kms.*.amazonaws.com:443\"]",
        ),
        (
            "52.94.0.1:443",
            "proxy destination \"52.94.0.1:443\" is not in proxy_allow \
             [\"kms.*.amazonaws.com:443\"]",
        ),
    ] {
        std::fs::write(
            &path,
            config_text(dir.path(), allow, &proxy_table(&socket, to, None)),
        )
        .unwrap();
        let err = Config::load(&path).unwrap_err();
        assert!(
            matches!(err, ParentError::ProxyNotAllowed { .. }),
            "{err:?}"
        );
        assert_eq!(err.to_string(), expected);
    }
    // No allowlist at all: nothing is allowed.
    std::fs::write(
        &path,
        config_text(
            dir.path(),
            "[]",
            &proxy_table(&socket, "kms.us-east-1.amazonaws.com:443", None),
        ),
    )
    .unwrap();
    let err = Config::load(&path).unwrap_err();
    assert!(
        err.to_string().ends_with("is not in proxy_allow []"),
        "{err}"
    );

    // The binary: exit 1, that one line.
    let out = Command::new(env!("CARGO_BIN_EXE_cosigner-parent"))
        .args(["run", "--config", path.to_str().unwrap()])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("is not in proxy_allow []"), "{stderr}");
    assert!(!socket.exists());
}

#[test]
fn malformed_proxy_settings_are_refused_with_the_field() {
    let dir = tempdir();
    let socket = dir.path().join("kms.sock");
    let ok_to = "kms.us-east-1.amazonaws.com:443";
    let allow = "[\"kms.*.amazonaws.com:443\"]";
    for (allow, proxies, expected) in [
        (
            "[\"*.com:443\"]",
            String::new(),
            "`proxy_allow` \"*.com:443\": a wildcard may not",
        ),
        (
            "[\"kms.amazonaws.com\"]",
            String::new(),
            "expected HOST:PORT",
        ),
        (
            allow,
            proxy_table(&socket, "kms.us-east-1.amazonaws.com", None),
            "`proxy.to`",
        ),
        (
            allow,
            proxy_table(&socket, "*.us-east-1.amazonaws.com:443", None),
            "a wildcard belongs in proxy_allow",
        ),
        (
            allow,
            proxy_table(&socket, ok_to, Some(0)),
            "`proxy.max_connections` \"0\"",
        ),
        (
            allow,
            format!(
                "[[proxy]]\nlisten = \"unix:{}\"\nlisten_vsock_port = 8000\nto = \"{ok_to}\"\n",
                socket.display()
            ),
            "give exactly one of",
        ),
        (
            allow,
            format!("[[proxy]]\nto = \"{ok_to}\"\n"),
            "give exactly one of",
        ),
        (
            allow,
            format!("[[proxy]]\nlisten = \"vsock:8000\"\nto = \"{ok_to}\"\n"),
            "expected unix:PATH (for vsock, listen_vsock_port = PORT)",
        ),
        (
            allow,
            format!("[[proxy]]\nlisten_vsock_port = 8000\nto = \"{ok_to}\"\nvia = \"x\"\n"),
            "unknown field `via`",
        ),
        (
            allow,
            format!(
                "{}{}",
                proxy_table(&socket, ok_to, None),
                proxy_table(&socket, ok_to, None)
            ),
            "already used by another listener",
        ),
        (
            allow,
            proxy_table(&dir.path().join("store.sock"), ok_to, None),
            "already used by another listener",
        ),
    ] {
        let err = Config::from_toml(&config_text(dir.path(), allow, &proxies)).unwrap_err();
        let line = err.to_string();
        assert!(line.contains(expected), "{line}");
        assert!(!line.contains('\n'), "{line}");
    }
}

/// A configuration built in code is checked again when the parent starts.
#[test]
fn start_refuses_a_proxy_the_allowlist_does_not_cover() {
    let dir = tempdir();
    let socket = dir.path().join("kms.sock");
    let mut config = Config::from_toml(&config_text(
        dir.path(),
        "[\"kms.*.amazonaws.com:443\"]",
        &proxy_table(&socket, "kms.us-east-1.amazonaws.com:443", None),
    ))
    .unwrap();
    config.proxy_allow.clear();
    let err = Parent::new(config).unwrap().start().unwrap_err();
    assert!(
        matches!(err, ParentError::ProxyNotAllowed { .. }),
        "{err:?}"
    );
    assert!(!socket.exists());
    assert!(!dir.path().join("store.sock").exists());
}

#[test]
fn a_destination_that_does_not_resolve_closes_the_inbound_connection() {
    let dir = tempdir();
    let (port, _) = echo_server();
    let dead = dir.path().join("dead.sock");
    let live = dir.path().join("live.sock");
    // `.invalid` never resolves (RFC 6761).
    let parent = start(&config_text(
        dir.path(),
        &format!("[\"kms.eu-west-1.invalid:443\", \"localhost:{port}\"]"),
        &format!(
            "{}{}",
            proxy_table(&dead, "kms.eu-west-1.invalid:443", None),
            proxy_table(&live, &format!("localhost:{port}"), None)
        ),
    ));
    for _ in 0..3 {
        let started = Instant::now();
        let mut s = dial(&dead);
        let _ = s.write_all(b"ClientHello");
        assert_closed(&mut s);
        assert!(started.elapsed() < TIMEOUT);
    }
    // The parent goes on serving.
    echo_round_trip(&mut dial(&live), b"still here");
    parent.shutdown();
}

#[test]
fn the_connection_cap_is_respected() {
    let dir = tempdir();
    let (port, accepted) = echo_server();
    let (socket, parent) = start_one_proxy(dir.path(), &format!("127.0.0.1:{port}"), Some(2));
    let mut first = dial(&socket);
    let mut second = dial(&socket);
    echo_round_trip(&mut first, b"one");
    echo_round_trip(&mut second, b"two");

    // A third, while two are open, is closed on accept and never reaches the destination.
    let mut third = dial(&socket);
    let _ = third.write_all(b"three");
    assert_closed(&mut third);
    assert_eq!(accepted.load(Ordering::SeqCst), 2);

    // Once one closes, its place is free again (the count drops when its relay has ended).
    drop(first);
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let mut s = dial(&socket);
        let ok = s.write_all(b"four").is_ok() && {
            let mut back = [0u8; 4];
            s.read_exact(&mut back).is_ok() && &back == b"four"
        };
        if ok {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no place freed after the first closed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    echo_round_trip(&mut second, b"two again");
    parent.shutdown();
}

/// Shutdown closes proxied connections that are still open, on both sides.
#[test]
fn shutdown_closes_open_proxy_connections() {
    let dir = tempdir();
    let (port, _) = echo_server();
    let socket: PathBuf = dir.path().join("kms.sock");
    let parent = start(&config_text(
        dir.path(),
        &format!("[\"127.0.0.1:{port}\"]"),
        &proxy_table(&socket, &format!("127.0.0.1:{port}"), None),
    ));
    let mut s = dial(&socket);
    echo_round_trip(&mut s, b"open");
    let started = Instant::now();
    parent.shutdown();
    assert!(started.elapsed() < TIMEOUT);
    assert_closed(&mut s);
}

/// The enclave's side and the destination's are plain TCP / unix streams: a TCP stream to the
/// destination also relays into a unix stream (the same relay the client side uses).
#[test]
fn relay_carries_tcp_to_unix_and_back() {
    let (port, _) = echo_server();
    let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let (mut ours, theirs) = UnixStream::pair().unwrap();
    ours.set_read_timeout(Some(TIMEOUT)).unwrap();
    let relay = std::thread::spawn(move || cosigner_parent::relay::relay(&theirs, &tcp));
    echo_round_trip(&mut ours, b"ping");
    ours.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    ours.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    relay.join().unwrap().unwrap();
}
