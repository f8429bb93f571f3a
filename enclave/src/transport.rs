//! Where bytes come from: one trait over vsock (production), unix sockets and TCP (local).
//!
//! Everything above a [`Stream`] is the same in every deployment, so the tests, which run on unix
//! and TCP sockets (these machines have no vsock loopback), exercise the production path.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::str::FromStr;

/// A connected byte stream.
pub trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

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

fn vsock_unavailable() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "vsock endpoints need the Nitro enclave build",
    )
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
        Endpoint::Vsock { .. } => Err(vsock_unavailable()),
    }
}

/// Connects.
pub fn connect(endpoint: &Endpoint) -> std::io::Result<Box<dyn Stream>> {
    match endpoint {
        Endpoint::Unix(path) => Ok(Box::new(UnixStream::connect(path)?)),
        Endpoint::Tcp(addr) => {
            let s = TcpStream::connect(addr)?;
            s.set_nodelay(true)?;
            Ok(Box::new(s))
        }
        Endpoint::Vsock { .. } => Err(vsock_unavailable()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
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
}
