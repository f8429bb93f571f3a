//! The parent's vsock paths, as far as a machine without a vsock peer can take them (there is no
//! vsock loopback here: see docs/nitro.md). Everything above the socket is the code the unix-socket
//! tests run; what is left is that the vsock calls are made, bounded, and fail cleanly:
//!
//! * a client relayed to an enclave CID nobody answers on is closed, not left hanging;
//! * a store or proxy listener on a vsock port either binds (a host with a vsock transport) or the
//!   parent refuses to start with one line naming the port, leaving no socket file behind;
//! * the configuration's vsock fields are checked.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use cosigner_parent::relay::Duplex;
use cosigner_parent::{Config, Parent, ParentError};
use tempfile::TempDir;

const TIMEOUT: Duration = Duration::from_secs(15);

fn tempdir() -> TempDir {
    TempDir::with_prefix("cosigner-vsock-").unwrap()
}

fn base(dir: &Path, enclave: &str) -> String {
    format!(
        "listen = \"127.0.0.1:0\"\nenclave = \"{enclave}\"\nstore_socket = \"{}\"\n\
         database = \"{}\"\n",
        dir.join("store.sock").display(),
        dir.join("store.db").display(),
    )
}

/// Compile-time: the vsock stream is a [`Duplex`] like the others.
#[test]
fn vsock_streams_are_duplex() {
    fn duplex<T: Duplex>() {}
    duplex::<vsock::VsockStream>();
    duplex::<std::os::unix::net::UnixStream>();
    duplex::<TcpStream>();
}

#[test]
fn a_client_for_an_enclave_cid_nobody_answers_on_is_closed() {
    let dir = tempdir();
    // CID 1 is the local CID: without loopback, the connect times out (2 s, the kernel's).
    let config = Config::from_toml(&base(dir.path(), "vsock:1:5000")).unwrap();
    let parent = Parent::new(config).unwrap().start().unwrap();
    let started = Instant::now();
    let mut client = TcpStream::connect(parent.client_addr()).unwrap();
    client.set_read_timeout(Some(TIMEOUT)).unwrap();
    let _ = client.write_all(b"ClientHello");
    let mut rest = Vec::new();
    match client.read_to_end(&mut rest) {
        Ok(_) => assert!(rest.is_empty()),
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}"),
    }
    eprintln!("closed after {:?}", started.elapsed());
    assert!(started.elapsed() < TIMEOUT);
    parent.shutdown();
}

/// Starts a parent whose only vsock part is `extra`; it either runs (then it is shut down) or
/// is refused with one line containing `names`, with no socket file left.
fn binds_or_refuses_cleanly(extra: &str, names: &str) {
    let dir = tempdir();
    let text = format!(
        "{}{extra}",
        base(dir.path(), "unix:/nonexistent/enclave.sock")
    );
    let config = Config::from_toml(&text).unwrap();
    match Parent::new(config).unwrap().start() {
        Ok(parent) => {
            eprintln!("bound: {extra}");
            parent.shutdown();
        }
        Err(e) => {
            let line = e.to_string();
            eprintln!("refused here: {line}");
            assert!(matches!(e, ParentError::Io { .. }), "{e:?}");
            assert!(line.contains(names), "{line}");
            assert!(!line.contains('\n'));
        }
    }
    assert!(!dir.path().join("store.sock").exists());
    assert!(!dir.path().join("kms.sock").exists());
}

#[test]
fn a_store_vsock_listener_binds_or_the_parent_refuses_cleanly() {
    binds_or_refuses_cleanly(
        "store_vsock_port = 47101\n",
        "binding the store listener on vsock port 47101",
    );
}

#[test]
fn a_proxy_vsock_listener_binds_or_the_parent_refuses_cleanly() {
    binds_or_refuses_cleanly(
        "proxy_allow = [\"kms.*.amazonaws.com:443\"]\n[[proxy]]\nlisten_vsock_port = 47102\n\
         to = \"kms.us-east-1.amazonaws.com:443\"\n",
        "binding the proxy listener on vsock port 47102",
    );
}

#[test]
fn vsock_fields_are_checked() {
    let dir = tempdir();
    let base = base(dir.path(), "vsock:16:5000");
    let config = Config::from_toml(&format!(
        "{base}store_vsock_port = 5001\nproxy_allow = [\"kms.*.amazonaws.com:443\"]\n\
         [[proxy]]\nlisten_vsock_port = 8000\nto = \"KMS.us-east-1.amazonaws.com:443\"\n"
    ))
    .unwrap();
    assert_eq!(config.store_vsock_port, Some(5001));
    assert_eq!(config.proxies.len(), 1);
    assert_eq!(config.proxies[0].listen.to_string(), "vsock port 8000");
    assert_eq!(
        config.proxies[0].to.to_string(),
        "kms.us-east-1.amazonaws.com:443"
    );
    assert_eq!(config.proxies[0].max_connections, 64);

    for (extra, expected) in [
        ("store_vsock_port = 4294967295\n", "VMADDR_PORT_ANY"),
        ("store_vsock_port = -1\n", "store_vsock_port"),
        ("store_vsock_port = \"5001\"\n", "invalid type"),
        (
            "store_vsock_port = 5001\nproxy_allow = [\"kms.*.amazonaws.com:443\"]\n[[proxy]]\n\
             listen_vsock_port = 5001\nto = \"kms.us-east-1.amazonaws.com:443\"\n",
            "already used by another listener",
        ),
        (
            "proxy_allow = [\"kms.*.amazonaws.com:443\"]\n[[proxy]]\n\
             listen_vsock_port = 4294967295\nto = \"kms.us-east-1.amazonaws.com:443\"\n",
            "VMADDR_PORT_ANY",
        ),
    ] {
        let err = Config::from_toml(&format!("{base}{extra}")).unwrap_err();
        assert!(err.to_string().contains(expected), "{extra}: {err}");
    }
}
