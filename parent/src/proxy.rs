//! The outbound proxy: the enclave's only way out, to one allowlisted TCP destination per listener.
//!
//! A Nitro enclave has no network. To reach AWS KMS it opens a vsock connection to the parent,
//! and the parent relays the bytes to `kms.REGION.amazonaws.com:443`. TLS runs between the enclave
//! and KMS, so the parent sees only ciphertext, as on the client side of the relay.
//!
//! ```toml
//! # Every destination a proxy may be configured with; anything else is refused at load.
//! proxy_allow = ["kms.*.amazonaws.com:443"]
//!
//! [[proxy]]
//! listen_vsock_port = 8000                    # Nitro; or listen = "unix:/run/cosigner/kms.sock"
//! to = "kms.us-east-1.amazonaws.com:443"      # fixed per listener
//! max_connections = 64                        # optional, default 64
//! ```
//!
//! * **Fixed destination.** The enclave does not name where it goes: each listener relays to its
//!   one `to`, so there is nothing to ask for. "Refusing any other destination" is the
//!   configuration's job: a `to` that no [`AllowRule`] of `proxy_allow` matches is refused when the
//!   configuration is loaded (and again when the parent starts).
//! * **Allowlist rules.** `HOST:PORT`. The port must be equal. A host name matches label by label,
//!   case-insensitively; a label `*` stands for exactly one label (`kms.*.amazonaws.com` matches
//!   `kms.eu-west-1.amazonaws.com`, not `kms.a.b.amazonaws.com`). Wildcards are not allowed in the
//!   last two labels (`*.com`, `kms.*` are refused), so a rule cannot open a whole top-level
//!   domain. An IP literal (`10.0.0.1:443`, `[fd00::1]:443`) in `to` is allowed only by the same
//!   literal in the list: wildcards never match addresses.
//! * **DNS on every connection.** The host name is resolved for each new inbound connection and the
//!   addresses tried in order, each with [`CONNECT_TIMEOUT`] (AWS's `vsock-proxy` resolved once at
//!   start and kept dead addresses). A failure (no such name, nothing reachable) closes the inbound
//!   connection and logs one line; the enclave's client sees a closed connection and retries.
//! * **Threads and the cap.** One thread per connection (two while relaying), at most
//!   `max_connections` at once per listener; further connections are closed on accept.
//!
//! The parent is untrusted: it can send the enclave's bytes anywhere whatever this module does.
//! The allowlist protects the operator against a mistyped or tampered configuration, not the
//! enclave against the parent; the enclave's protection is TLS to KMS with certificate checks.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use crate::error::{ParentError, Result};

/// Default `max_connections` of a proxy listener.
pub const DEFAULT_PROXY_CONNECTIONS: usize = 64;
/// How long one connection attempt to one resolved address may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a proxy listens for the enclave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// A unix socket (local runs and tests), created mode 0600.
    Unix(PathBuf),
    /// A vsock port on any CID (Nitro: the enclave connects to CID 3, this port).
    Vsock {
        /// Port.
        port: u32,
    },
}

impl fmt::Display for Inbound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
            Self::Vsock { port } => write!(f, "vsock port {port}"),
        }
    }
}

/// A host: a DNS name (lowercase) or an IP address.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Host {
    Name(String),
    Ip(IpAddr),
}

/// A proxy's destination, `HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    host: Host,
    port: u16,
}

impl Destination {
    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The host name or address as written (lowercased).
    pub fn host(&self) -> String {
        match &self.host {
            Host::Name(name) => name.clone(),
            Host::Ip(ip) => ip.to_string(),
        }
    }
}

impl FromStr for Destination {
    type Err = String;

    /// Parses `name:port`, `1.2.3.4:port` or `[v6]:port`; the reason on failure.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (host, port) = parse_host_port(s, false)?;
        Ok(Self { host, port })
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Name(name) => write!(f, "{name}:{}", self.port),
            Host::Ip(ip) => write!(f, "{}", SocketAddr::new(*ip, self.port)),
        }
    }
}

/// One entry of `proxy_allow`: a destination whose host name may have `*` labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowRule(Destination);

impl AllowRule {
    /// Whether this rule allows `to`.
    pub fn allows(&self, to: &Destination) -> bool {
        if self.0.port != to.port {
            return false;
        }
        match (&self.0.host, &to.host) {
            (Host::Ip(rule), Host::Ip(ip)) => rule == ip,
            (Host::Name(rule), Host::Name(name)) => {
                let rule: Vec<&str> = rule.split('.').collect();
                let name: Vec<&str> = name.split('.').collect();
                rule.len() == name.len() && rule.iter().zip(&name).all(|(r, n)| *r == "*" || r == n)
            }
            _ => false,
        }
    }
}

impl FromStr for AllowRule {
    type Err = String;

    /// Parses a [`Destination`] whose host name may have `*` labels; the reason on failure.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (host, port) = parse_host_port(s, true)?;
        Ok(Self(Destination { host, port }))
    }
}

impl fmt::Display for AllowRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// One `[[proxy]]`: a listener and its destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyConfig {
    /// Where the enclave connects.
    pub listen: Inbound,
    /// Where every connection goes.
    pub to: Destination,
    /// Most connections at once (1..=[`crate::server::MAX_CONNECTIONS`]).
    pub max_connections: usize,
}

/// `Ok` if a rule of `allow` allows `to`, else [`ParentError::ProxyNotAllowed`].
pub fn check_allowed(allow: &[AllowRule], to: &Destination) -> Result<()> {
    if allow.iter().any(|rule| rule.allows(to)) {
        return Ok(());
    }
    let listed: Vec<String> = allow
        .iter()
        .map(|r| format!("{:?}", r.to_string()))
        .collect();
    Err(ParentError::ProxyNotAllowed {
        to: to.to_string(),
        allow: format!("[{}]", listed.join(", ")),
    })
}

/// Resolves `to` now (never cached) and connects to the first address that answers, each attempt
/// bounded by [`CONNECT_TIMEOUT`]. The error names the destination and what failed.
pub fn connect(to: &Destination) -> io::Result<TcpStream> {
    let addrs: Vec<SocketAddr> = match &to.host {
        Host::Ip(ip) => vec![SocketAddr::new(*ip, to.port)],
        Host::Name(name) => (name.as_str(), to.port)
            .to_socket_addrs()
            .map_err(|e| io::Error::new(e.kind(), format!("cannot resolve {name}: {e}")))?
            .collect(),
    };
    let mut last = None;
    for addr in &addrs {
        match TcpStream::connect_timeout(addr, CONNECT_TIMEOUT) {
            Ok(stream) => {
                stream.set_nodelay(true)?;
                return Ok(stream);
            }
            Err(e) => last = Some(format!("{addr}: {e}")),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::ConnectionRefused,
        match last {
            Some(last) => format!(
                "cannot connect to {to} ({} addresses; last {last})",
                addrs.len()
            ),
            None => format!("cannot connect to {to}: it resolves to no address"),
        },
    ))
}

/// `HOST:PORT` as an IP address or a checked DNS name (`*` labels only if `wildcards`), and the
/// port; the reason on failure.
fn parse_host_port(s: &str, wildcards: bool) -> std::result::Result<(Host, u16), String> {
    let (host, port) = split_host_port(s)?;
    let host = match host.parse::<IpAddr>() {
        Ok(ip) => Host::Ip(ip),
        Err(_) => Host::Name(check_name(host, wildcards)?),
    };
    Ok((host, port))
}

/// Splits `host:port` / `[v6]:port`; the port must be 1..=65535.
fn split_host_port(s: &str) -> std::result::Result<(&str, u16), String> {
    let expected = "expected HOST:PORT, e.g. kms.us-east-1.amazonaws.com:443";
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (host, port) = rest.split_once("]:").ok_or(expected)?;
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("{host:?} in brackets is not an IPv6 address"));
        }
        (host, port)
    } else {
        let (host, port) = s.rsplit_once(':').ok_or(expected)?;
        if host.contains(':') {
            return Err("an IPv6 address must be in brackets: [ADDR]:PORT".into());
        }
        (host, port)
    };
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("port {port:?} is not a number in 1..=65535"))?;
    Ok((host, port))
}

/// Checks a DNS name (letters, digits, hyphens; labels of 1..=63; at most 253 bytes) and returns
/// it lowercased. With `wildcards`, a label may be `*`, except in the last two labels.
fn check_name(host: &str, wildcards: bool) -> std::result::Result<String, String> {
    if host.is_empty() {
        return Err("empty host".into());
    }
    if host.len() > 253 {
        return Err(format!(
            "host is {} bytes; DNS names have at most 253",
            host.len()
        ));
    }
    let labels: Vec<&str> = host.split('.').collect();
    let count = labels.len();
    for (i, label) in labels.iter().enumerate() {
        if *label == "*" {
            if !wildcards {
                return Err("a wildcard belongs in proxy_allow, not in a destination".into());
            }
            if i + 2 >= count {
                return Err(
                    "a wildcard may not stand in the last two labels (it would allow a whole \
                     domain)"
                        .into(),
                );
            }
            continue;
        }
        let ok = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(format!(
                "label {label:?} is not a DNS label (letters, digits and inner hyphens, 1..=63)"
            ));
        }
    }
    // "10.0.0" or "1.2.3.4.5" are not names, and resolvers read some of them as addresses.
    if labels
        .last()
        .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err("not a host name (all-numeric last label) and not an IP address".into());
    }
    Ok(host.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    fn allows(rule: &str, to: &str) -> bool {
        rule.parse::<AllowRule>()
            .unwrap()
            .allows(&to.parse().unwrap())
    }

    #[test]
    fn rules_match_label_by_label_with_the_port() {
        assert!(allows(
            "kms.*.amazonaws.com:443",
            "kms.us-east-1.amazonaws.com:443"
        ));
        assert!(allows(
            "kms.*.amazonaws.com:443",
            "KMS.EU-West-1.AmazonAWS.com:443"
        ));
        assert!(!allows(
            "kms.*.amazonaws.com:443",
            "kms.us-east-1.amazonaws.com:80"
        ));
        assert!(!allows(
            "kms.*.amazonaws.com:443",
            "kms.a.b.amazonaws.com:443"
        ));
        assert!(!allows("kms.*.amazonaws.com:443", "kms.amazonaws.com:443"));
        assert!(!allows(
            "kms.*.amazonaws.com:443",
            "sts.us-east-1.amazonaws.com:443"
        ));
        assert!(!allows(
            "kms.*.amazonaws.com:443",
            "kms.us-east-1.amazonaws.com.evil:443"
        ));
        assert!(allows("*.amazonaws.com:443", "kms.amazonaws.com:443"));
        assert!(allows("localhost:8443", "localhost:8443"));
        assert!(!allows("localhost:8443", "localhost:8444"));
        // IP literals: only the same literal.
        assert!(allows("10.0.0.1:443", "10.0.0.1:443"));
        assert!(allows("[fd00::1]:443", "[fd00:0::1]:443"));
        assert!(!allows("10.0.0.1:443", "10.0.0.2:443"));
        assert!(!allows("*.amazonaws.com:443", "10.0.0.1:443"));
    }

    #[test]
    fn bad_rules_and_destinations_are_refused_with_a_reason() {
        for (rule, why) in [
            ("*.com:443", "last two labels"),
            ("kms.*:443", "last two labels"),
            ("*:443", "last two labels"),
            ("kms.amazonaws.com", "HOST:PORT"),
            ("kms.amazonaws.com:0", "1..=65535"),
            ("kms.amazonaws.com:https", "1..=65535"),
            ("kms..com:443", "not a DNS label"),
            ("-kms.com:443", "not a DNS label"),
            ("10.0.0:443", "all-numeric"),
            ("::1:443", "brackets"),
            ("[nope]:443", "not an IPv6"),
            (":443", "empty host"),
        ] {
            let err = rule.parse::<AllowRule>().unwrap_err();
            assert!(err.contains(why), "{rule}: {err}");
        }
        let err = "*.amazonaws.com:443".parse::<Destination>().unwrap_err();
        assert!(err.contains("wildcard"), "{err}");
        assert_eq!(
            "[::1]:443".parse::<Destination>().unwrap().to_string(),
            "[::1]:443"
        );
    }

    #[test]
    fn check_allowed_names_the_destination_and_the_list() {
        let allow: Vec<AllowRule> = vec!["kms.*.amazonaws.com:443".parse().unwrap()];
        check_allowed(&allow, &"kms.us-east-1.amazonaws.com:443".parse().unwrap()).unwrap();
        let err = check_allowed(&allow, &"evil.example.com:443".parse().unwrap()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "proxy destination \"evil.example.com:443\" is not in proxy_allow \
             [\"kms.*.amazonaws.com:443\"]"
        );
        let err =
            check_allowed(&[], &"kms.us-east-1.amazonaws.com:443".parse().unwrap()).unwrap_err();
        assert!(err.to_string().ends_with("proxy_allow []"), "{err}");
    }
}
