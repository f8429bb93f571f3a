//! Where bytes come from: one trait over vsock (production), unix sockets and TCP (local).
//!
//! Everything above a [`Stream`] is the same in every deployment, so the tests, which run on unix
//! and TCP sockets (these machines have no vsock loopback), exercise the production path.
//!
//! The vsock arm is deliberately thin: the `vsock` crate's blocking [`VsockListener`] and
//! [`VsockStream`], nothing of our own on top. To listen on every CID (what an enclave does), bind
//! `vsock:4294967295:PORT` ([`VMADDR_CID_ANY`]); the parent instance is CID 3 as seen from the
//! enclave. **Connect timeout:** the crate has none; Linux bounds a vsock `connect` itself
//! (`SO_VM_SOCKETS_CONNECT_TIMEOUT`, 2 s by default), after which it fails with `TimedOut`. A
//! peer that is there but not listening refuses or resets at once.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

pub use vsock::VMADDR_CID_ANY;
use vsock::{VsockListener, VsockStream};

/// A connected byte stream: a socket, so its blocking calls can be bounded (the server's
/// handshake and idle timeouts, [`crate::server::Limits`]).
pub trait Stream: Read + Write + Send {
    /// Bounds each blocking read (`None`: wait for ever); a read that waited this long fails with
    /// `WouldBlock` or `TimedOut`. Zero is refused (`InvalidInput`).
    fn set_read_timeout(&self, timeout: Option<Duration>) -> std::io::Result<()>;
    /// Bounds each blocking write, like [`Stream::set_read_timeout`] for reads.
    fn set_write_timeout(&self, timeout: Option<Duration>) -> std::io::Result<()>;
}

macro_rules! socket_stream {
    ($t:ty) => {
        impl Stream for $t {
            fn set_read_timeout(&self, timeout: Option<Duration>) -> std::io::Result<()> {
                <$t>::set_read_timeout(self, timeout)
            }
            fn set_write_timeout(&self, timeout: Option<Duration>) -> std::io::Result<()> {
                <$t>::set_write_timeout(self, timeout)
            }
        }
    };
}
socket_stream!(UnixStream);
socket_stream!(TcpStream);
socket_stream!(VsockStream);

/// An address the enclave listens on or connects to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `unix:/path/to.sock`
    Unix(PathBuf),
    /// `tcp:127.0.0.1:7000`
    Tcp(SocketAddr),
    /// `vsock:CID:PORT` (Nitro; parent is CID 3).
    Vsock {
        /// Context id.
        cid: u32,
        /// Port.
        port: u32,
    },
}

impl FromStr for Endpoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (scheme, rest) = s.split_once(':').ok_or_else(|| {
            format!("endpoint {s:?}: expected unix:PATH, tcp:HOST:PORT or vsock:CID:PORT")
        })?;
        match scheme {
            "unix" if !rest.is_empty() => Ok(Self::Unix(PathBuf::from(rest))),
            "tcp" => rest
                .parse()
                .map(Self::Tcp)
                .map_err(|e| format!("endpoint {s:?}: {e}")),
            "vsock" => {
                let (cid, port) = rest
                    .split_once(':')
                    .ok_or_else(|| format!("endpoint {s:?}: expected vsock:CID:PORT"))?;
                Ok(Self::Vsock {
                    cid: cid
                        .parse()
                        .map_err(|e| format!("endpoint {s:?}: cid: {e}"))?,
                    port: port
                        .parse()
                        .map_err(|e| format!("endpoint {s:?}: port: {e}"))?,
                })
            }
            _ => Err(format!(
                "endpoint {s:?}: expected unix:PATH, tcp:HOST:PORT or vsock:CID:PORT"
            )),
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unix(p) => write!(f, "unix:{}", p.display()),
            Self::Tcp(a) => write!(f, "tcp:{a}"),
            Self::Vsock { cid, port } => write!(f, "vsock:{cid}:{port}"),
        }
    }
}

/// Accepts connections.
pub trait Listener: Send + Sync {
    /// Waits for the next connection.
    fn accept(&self) -> std::io::Result<Box<dyn Stream>>;
}

impl Listener for UnixListener {
    fn accept(&self) -> std::io::Result<Box<dyn Stream>> {
        UnixListener::accept(self).map(|(s, _)| Box::new(s) as Box<dyn Stream>)
    }
}

impl Listener for TcpListener {
    fn accept(&self) -> std::io::Result<Box<dyn Stream>> {
        let (s, _) = TcpListener::accept(self)?;
        s.set_nodelay(true)?;
        Ok(Box::new(s))
    }
}

impl Listener for VsockListener {
    fn accept(&self) -> std::io::Result<Box<dyn Stream>> {
        VsockListener::accept(self).map(|(s, _)| Box::new(s) as Box<dyn Stream>)
    }
}

/// Names the vsock address in an error, keeping its kind (the OS message alone, e.g. "No such
/// device", does not say what was being done).
fn vsock_error(what: &str, cid: u32, port: u32, e: &std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("{what} vsock:{cid}:{port}: {e}"))
}

/// Binds a listener. A stale unix socket file is replaced; the new one is owner-only.
pub fn bind(endpoint: &Endpoint) -> std::io::Result<Box<dyn Listener>> {
    match endpoint {
        Endpoint::Unix(path) => {
            if path.exists() {
                std::fs::remove_file(path)?;
            }
            let listener = UnixListener::bind(path)?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
            Ok(Box::new(listener))
        }
        Endpoint::Tcp(addr) => Ok(Box::new(TcpListener::bind(addr)?)),
        Endpoint::Vsock { cid, port } => VsockListener::bind_with_cid_port(*cid, *port)
            .map(|l| Box::new(l) as Box<dyn Listener>)
            .map_err(|e| vsock_error("binding", *cid, *port, &e)),
    }
}

/// Connects. A vsock connect is bounded by the kernel's vsock connect timeout (module docs).
pub fn connect(endpoint: &Endpoint) -> std::io::Result<Box<dyn Stream>> {
    match endpoint {
        Endpoint::Unix(path) => Ok(Box::new(UnixStream::connect(path)?)),
        Endpoint::Tcp(addr) => {
            let s = TcpStream::connect(addr)?;
            s.set_nodelay(true)?;
            Ok(Box::new(s))
        }
        Endpoint::Vsock { cid, port } => VsockStream::connect_with_cid_port(*cid, *port)
            .map(|s| Box::new(s) as Box<dyn Stream>)
            .map_err(|e| vsock_error("connecting to", *cid, *port, &e)),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn endpoints_parse() {
        assert_eq!(
            "unix:/tmp/x.sock".parse::<Endpoint>().unwrap(),
            Endpoint::Unix("/tmp/x.sock".into())
        );
        assert_eq!(
            "tcp:127.0.0.1:7000".parse::<Endpoint>().unwrap(),
            Endpoint::Tcp("127.0.0.1:7000".parse().unwrap())
        );
        assert_eq!(
            "vsock:16:5000".parse::<Endpoint>().unwrap(),
            Endpoint::Vsock {
                cid: 16,
                port: 5000
            }
        );
        for bad in [
            "",
            "unix:",
            "tcp:nope",
            "vsock:1",
            "vsock:a:b",
            "http://x",
            "/tmp/x",
        ] {
            assert!(bad.parse::<Endpoint>().is_err(), "{bad}");
        }
    }

    /// Runs `f` on a thread and gives up after `limit` (a hung vsock call fails the test instead
    /// of hanging the run).
    fn bounded<T: Send + 'static>(
        limit: std::time::Duration,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(limit)
            .unwrap_or_else(|_| panic!("vsock call still blocked after {limit:?}"))
    }

    fn vsock_device() -> bool {
        let present = std::path::Path::new("/dev/vsock").exists();
        if !present {
            eprintln!("skipped: no /dev/vsock on this machine (vsock entirely unavailable)");
        }
        present
    }

    /// No vsock loopback here: connecting to CID 1 (the local CID) fails, within the kernel's
    /// connect timeout, with an error naming the address; it never hangs or panics.
    #[test]
    fn vsock_connect_without_a_peer_fails_in_bounded_time() {
        if !vsock_device() {
            return;
        }
        let endpoint = Endpoint::Vsock {
            cid: 1,
            port: 47_011,
        };
        let started = std::time::Instant::now();
        let result = bounded(std::time::Duration::from_secs(20), {
            let endpoint = endpoint.clone();
            move || connect(&endpoint).map(|_| ())
        });
        let err = result.expect_err("nothing listens on vsock:1:47011");
        assert!(err.to_string().contains("vsock:1:47011"), "{err}");
        assert!(started.elapsed() < std::time::Duration::from_secs(20));
        eprintln!(
            "vsock connect to CID 1: {err} after {:?}",
            started.elapsed()
        );
    }

    /// Binding a vsock listener on any CID either works (a machine with a vsock transport) or
    /// fails with an error naming the endpoint; never a panic.
    #[test]
    fn vsock_bind_works_or_fails_clearly() {
        if !vsock_device() {
            return;
        }
        let endpoint = Endpoint::Vsock {
            cid: VMADDR_CID_ANY,
            port: 47_012,
        };
        assert_eq!(endpoint.to_string(), "vsock:4294967295:47012");
        let result = bounded(std::time::Duration::from_secs(20), {
            let endpoint = endpoint.clone();
            move || bind(&endpoint).map(|_| ())
        });
        match result {
            Ok(()) => eprintln!("bound {endpoint}"),
            Err(e) => {
                assert!(
                    e.to_string().contains("binding vsock:4294967295:47012"),
                    "{e}"
                );
                eprintln!("vsock bind refused here: {e}");
            }
        }
    }
}
