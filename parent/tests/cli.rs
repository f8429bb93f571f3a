//! The `cosigner-parent` binary as an operator runs it: usage and refusals (exit codes 0, 1, 2 and
//! one stderr line), and a real run serving the store socket and relaying to a fake enclave.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use cosigner_protocol::frame::{read_frame, write_frame};
use cosigner_protocol::wire::{StoreRequest, StoreResponse, decode, encode};
use serde_bytes::ByteBuf;

const BIN: &str = env!("CARGO_BIN_EXE_cosigner-parent");
const TIMEOUT: Duration = Duration::from_secs(10);

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Exit code 1 and exactly one stderr line, no panic; returns the line.
fn refused(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr:?}");
    lines[0].to_owned()
}

fn write_config(dir: &Path, enclave: &str) -> String {
    let path = dir.join("parent.toml");
    std::fs::write(
        &path,
        format!(
            "listen = \"127.0.0.1:0\"\nenclave = \"{enclave}\"\nstore_socket = \"store.sock\"\n\
             database = \"store.db\"\n"
        ),
    )
    .unwrap();
    path.display().to_string()
}

#[test]
fn usage_exit_codes() {
    let help = run(&["--help"]);
    assert_eq!(help.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&help.stdout).contains("run"));
    assert_eq!(run(&["--version"]).status.code(), Some(0));
    for args in [&[][..], &["run"], &["frobnicate"], &["run", "--config"]] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
}

#[test]
fn bad_configs_exit_1_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let line = refused(&run(&["run", "--config", "/nonexistent/parent.toml"]));
    assert!(line.contains("cannot read config"), "{line}");

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "listen = \"127.0.0.1:0\"\nsurprise = true\n").unwrap();
    let line = refused(&run(&["run", "--config", bad.to_str().unwrap()]));
    assert!(line.contains("unknown field `surprise`"), "{line}");

    let vsock = write_config(dir.path(), "vsock:16");
    let line = refused(&run(&["run", "--config", &vsock]));
    assert!(line.contains("expected vsock:CID:PORT"), "{line}");
}

/// Kills the child when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn run_serves_the_store_and_relays_until_killed() {
    let dir = tempfile::tempdir().unwrap();
    let enclave_path = dir.path().join("enclave.sock");
    let enclave = UnixListener::bind(&enclave_path).unwrap();
    let config = write_config(dir.path(), &format!("unix:{}", enclave_path.display()));

    let mut child = Running(
        Command::new(BIN)
            .args(["run", "--config", &config])
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // The startup event (a JSON line) names the bound address in its `listen` field.
    let mut stderr = BufReader::new(child.0.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    let event: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
    let addr: SocketAddr = event["listen"]
        .as_str()
        .unwrap_or_default()
        .parse()
        .unwrap_or_else(|e| panic!("{line:?}: {e}"));

    // The store socket, relative in the config, sits next to it.
    let mut store = UnixStream::connect(dir.path().join("store.sock")).unwrap();
    store.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut ask = |r: &StoreRequest| -> StoreResponse {
        write_frame(&mut store, &encode(r).unwrap()).unwrap();
        decode(&read_frame(&mut store).unwrap().unwrap()).unwrap()
    };
    let put = StoreRequest::Put {
        key: "wallet/x".into(),
        value: ByteBuf::from(b"sealed".to_vec()),
    };
    assert_eq!(ask(&put), StoreResponse::Done);
    assert_eq!(
        ask(&StoreRequest::Get {
            key: "wallet/x".into()
        }),
        StoreResponse::Value {
            value: Some(ByteBuf::from(b"sealed".to_vec()))
        }
    );

    // Relay: client bytes reach the enclave and back.
    let mut client = TcpStream::connect(addr).unwrap();
    client.set_read_timeout(Some(TIMEOUT)).unwrap();
    // The parent connects to the enclave once the client's first bytes are in.
    client.write_all(b"client hello").unwrap();
    let (mut conn, _) = enclave.accept().unwrap();
    conn.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut buf = [0u8; 12];
    conn.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"client hello");
    conn.write_all(b"server hello").unwrap();
    client.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"server hello");
    client.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    conn.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());

    // Still running until killed.
    assert!(child.0.try_wait().unwrap().is_none());
    drop(child);
    assert!(dir.path().join("store.db").exists());
}

/// `cosigner-parent image ARGS…` runs `cosigner-image ARGS…` found beside the binary, as is (the
/// packer is its own crate so that the parent does not link it), and names it when it is absent.
#[test]
fn image_forwards_to_the_packer_beside_it() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let parent = dir.path().join("cosigner-parent");
    std::fs::copy(BIN, &parent).unwrap();
    let run_copy = |args: &[&str]| {
        Command::new(&parent)
            .args(args)
            .env("PATH", dir.path().join("empty"))
            .env("RUST_BACKTRACE", "0")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let line = refused(&run_copy(&["image", "build", "--help"]));
    assert!(line.contains("cosigner-image"), "{line}");

    let tool = dir.path().join("cosigner-image");
    std::fs::write(&tool, "#!/bin/sh\necho \"$@\"\nexit 7\n").unwrap();
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = run_copy(&["image", "build", "--out-dir", "x y", "--help"]);
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "build --out-dir x y --help\n"
    );
}
