//! The parent's configuration: one TOML file, no unknown field accepted.
//!
//! ```toml
//! # Clients connect here (TCP). The bytes are TLS for the enclave: the parent cannot read them.
//! listen = "127.0.0.1:7000"
//! # Where each client connection is relayed to: `unix:PATH` locally, `vsock:CID:PORT` to a Nitro
//! # enclave (its CID as `nitro-cli run-enclave --enclave-cid` set it), or
//! # `hybrid-vsock:PATH:PORT` to an emulated one (QEMU's nitro-enclave machine, docs/nitro.md).
//! enclave = "unix:/run/cosigner/enclave.sock"
//! # Or several instances of the enclave (one token, one store): client connections are spread
//! # over those that answer (docs/architecture.md, "Several instances"). Entry K (from 1) is the
//! # enclave configured `instance = K`: its metrics and logs are labelled with that number.
//! # enclaves = ["unix:/run/cosigner/enclave-1.sock", "unix:/run/cosigner/enclave-2.sock"]
//! # Unix socket the enclave connects to for storage (created mode 0600).
//! store_socket = "/run/cosigner/store.sock"
//! # Optional (Nitro): also serve the store on this vsock port, any CID; the enclave connects to
//! # vsock:3:PORT. Same store, same protocol as the unix socket.
//! store_vsock_port = 5001
//! # Where sealed blobs (and the mailbox) are kept: a SQLite file (the embedded default), or a
//! # PostgreSQL database, `database = "postgres://USER@HOST/DB"` (a unix socket directory as
//! # `postgres://USER@/DB?host=/run/postgresql`), or the `[database]` table below. The parent
//! # creates and migrates its PostgreSQL schema itself (`crate::pg`).
//! database = "/var/lib/cosigner/store.db"
//! # Optional: the members' mailbox (DAO ceremonies), TCP, stored in `database` (see
//! # `crate::mailbox`). Absent: no mailbox. Must differ from `listen`.
//! mailbox_listen = "0.0.0.0:7002"
//! # Optional: the operator listener, GET /metrics (Prometheus), /healthz and /readyz (see
//! # `crate::http`). Absent: not served. Keep it on loopback or a private network.
//! metrics_listen = "127.0.0.1:7004"
//!
//! # Optional: the mailbox's retention, per-sender quotas and TLS (see `crate::mailbox`); the
//! # defaults are shown. A quota with which one sender could hold more than an eighth of the
//! # mailbox's global caps within the retention is refused.
//! [mailbox]
//! retention_seconds = 86400                 # envelopes older than this are deleted
//! quota_window_seconds = 86400              # each sender's counts start again after this
//! quota_messages = 4096                     # envelopes per sender (signing key) and window
//! quota_bytes = 67108864                    # envelope bytes per sender and window
//! quota_topics = 256                        # topics a sender may found per window
//! quota_exempt = []                         # e.g. your provider's audit key (hex), see docs
//! # tls_certificate = "mailbox.crt"         # PEM; both made at first start when absent;
//! # tls_key = "mailbox.key"                 # members pin tls://HOST:PORT#sha256:HEX
//!
//! # Optional: outbound proxies for the enclave (see `crate::proxy`). Every `to` must be
//! # allowed by a rule here; `*` is exactly one DNS label, never in the last two.
//! proxy_allow = ["kms.*.amazonaws.com:443"]
//!
//! [[proxy]]
//! listen_vsock_port = 8000                  # or listen = "unix:/run/cosigner/kms.sock"
//! to = "kms.us-east-1.amazonaws.com:443"
//! max_connections = 64                      # optional
//!
//! # Instead of `database = "…"`: PostgreSQL with a password kept out of this file (and out of
//! # argv and the environment), read at start from the first line of `password_file`.
//! # [database]
//! # url = "postgres://cosigner@db.internal:5432/cosigner"
//! # password_file = "/etc/cosigner/db-password"  # mode 0600, owned by the parent's user
//! # pool_size = 16                              # connections kept, 1..=256
//!
//! # Optional: AWS credentials handed to the enclave for its KMS calls (crate::aws_credentials).
//! [aws_credentials]
//! source = "imds"                           # the instance role (IMDSv2); or "env", or "file"
//! # role = "cosigner-parent"                # default: the one role IMDS lists
//! # path = "/etc/cosigner/aws.json"         # source = "file": IMDS-format JSON, re-read each time
//!
//! # Optional: limits on the client listener (`listen`) against connection floods; the
//! # defaults are shown (see `crate::server`, "Limits").
//! [client_limits]
//! max_connections_per_source = 32           # open at once from one IPv4 address or IPv6 /64
//! handshake_timeout_seconds = 10            # a client must send its first bytes within this
//! idle_timeout_seconds = 120                # a relayed connection silent both ways is closed
//! ```
//!
//! [`Config::load`] resolves relative paths against the directory of the configuration file, so a
//! configuration means the same whatever the working directory of the process. Two listeners on
//! the same unix path or vsock port are refused.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

use crate::aws_credentials::{AwsCredentialsConfig, RawAwsCredentials};
use crate::error::{ParentError, Result};
use crate::mailbox::{MailboxConfig, RawMailboxConfig};
use crate::proxy::{AllowRule, DEFAULT_PROXY_CONNECTIONS, Destination, Inbound, ProxyConfig};
use crate::server::MAX_CONNECTIONS;
use crate::store::database::{Database, RawDatabase};

/// Longest unix socket path Linux accepts (`sun_path` is 108 bytes with the terminating NUL).
pub const MAX_UNIX_SOCKET_PATH: usize = 107;

/// A validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// TCP address clients connect to (port 0: any free port).
    pub listen: SocketAddr,
    /// Where client connections are relayed: the first (or only) enclave instance.
    pub enclave: EnclaveAddr,
    /// Every enclave instance, `enclave` first: client connections are spread over them
    /// ([`crate::pool`]). One entry unless `enclaves = [...]` lists several.
    pub enclaves: Vec<EnclaveAddr>,
    /// Unix socket the enclave's store requests arrive on.
    pub store_socket: PathBuf,
    /// A vsock port (any CID) the store is also served on (Nitro).
    pub store_vsock_port: Option<u32>,
    /// Where blobs and the mailbox are kept: a SQLite file or a PostgreSQL database.
    pub database: Database,
    /// TCP address of the members' mailbox, if it is served (port 0: any free port).
    pub mailbox_listen: Option<SocketAddr>,
    /// TCP address of the operator listener (`/metrics`, `/healthz`, `/readyz`), if it is served
    /// (port 0: any free port).
    pub metrics_listen: Option<SocketAddr>,
    /// The mailbox's retention, quotas and TLS (`[mailbox]`).
    pub mailbox: MailboxConfig,
    /// Destinations proxies may have.
    pub proxy_allow: Vec<AllowRule>,
    /// Outbound proxies, each checked against `proxy_allow` (at load and again at start).
    pub proxies: Vec<ProxyConfig>,
    /// Where the AWS credentials handed to the enclave come from; `None`: none are served.
    pub aws_credentials: Option<AwsCredentialsConfig>,
    /// Per-source quota and timeouts of the client listener (`[client_limits]`).
    pub client_limits: ClientLimits,
}

/// Default of `max_connections_per_source`.
pub const DEFAULT_CONNECTIONS_PER_SOURCE: usize = 32;
/// Largest `max_connections_per_source`: a quarter of the global cap, so that no single source
/// can take the client listener's slots from everyone else.
pub const MAX_CONNECTIONS_PER_SOURCE: usize = MAX_CONNECTIONS / 4;
/// Default of `handshake_timeout_seconds`.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest `handshake_timeout_seconds` (a client's TLS hello is its first action: minutes would
/// only serve a flood).
pub const MAX_HANDSHAKE_TIMEOUT_SECONDS: u64 = 300;
/// Default of `idle_timeout_seconds`.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Largest `idle_timeout_seconds` (a day).
pub const MAX_IDLE_TIMEOUT_SECONDS: u64 = 86_400;

/// What a client connection may hold of the parent: `[client_limits]`.
///
/// The global cap ([`MAX_CONNECTIONS`]) alone let anyone who can open TCP connections take every
/// slot with idle sockets; the per-source quota makes that take many addresses, and the timeouts
/// make every slot come back on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientLimits {
    /// Client connections open at once from one source: an IPv4 address, or an IPv6 /64 (one
    /// host usually has a whole /64, so counting IPv6 addresses singly would bound nothing).
    pub max_connections_per_source: usize,
    /// A client must send its first bytes (its TLS hello) within this after connecting; until it
    /// does, the parent does not connect it to the enclave.
    pub handshake_timeout: Duration,
    /// A relayed connection over which no byte moved either way for this long is closed; a
    /// write that cannot progress for this long (a peer that does not read) closes it too.
    pub idle_timeout: Duration,
}

impl Default for ClientLimits {
    fn default() -> Self {
        Self {
            max_connections_per_source: DEFAULT_CONNECTIONS_PER_SOURCE,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
        }
    }
}

/// The file as written: strings, checked into [`Config`] afterwards for precise messages.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: String,
    #[serde(default)]
    enclave: Option<String>,
    #[serde(default)]
    enclaves: Option<Vec<String>>,
    store_socket: String,
    #[serde(default)]
    store_vsock_port: Option<u32>,
    database: RawDatabase,
    #[serde(default)]
    mailbox_listen: Option<String>,
    #[serde(default)]
    metrics_listen: Option<String>,
    #[serde(default)]
    mailbox: RawMailboxConfig,
    #[serde(default)]
    proxy_allow: Vec<String>,
    #[serde(default)]
    proxy: Vec<RawProxy>,
    #[serde(default)]
    aws_credentials: Option<RawAwsCredentials>,
    #[serde(default)]
    client_limits: RawClientLimits,
}

/// `[client_limits]` as written; absent keys take the defaults of [`ClientLimits`].
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClientLimits {
    max_connections_per_source: Option<usize>,
    handshake_timeout_seconds: Option<u64>,
    idle_timeout_seconds: Option<u64>,
}

impl RawClientLimits {
    /// Each value in range; a missing one is the default.
    fn check(self) -> Result<ClientLimits> {
        let defaults = ClientLimits::default();
        let max_connections_per_source = match self.max_connections_per_source {
            None => defaults.max_connections_per_source,
            Some(n) => in_range(
                "client_limits.max_connections_per_source",
                n,
                1,
                MAX_CONNECTIONS_PER_SOURCE,
                "a quarter of the global cap, so that one source cannot fill it",
            )?,
        };
        let seconds = |field, value: Option<u64>, default: Duration, max, why| match value {
            None => Ok(default),
            Some(s) => in_range(field, s, 1, max, why).map(Duration::from_secs),
        };
        Ok(ClientLimits {
            max_connections_per_source,
            handshake_timeout: seconds(
                "client_limits.handshake_timeout_seconds",
                self.handshake_timeout_seconds,
                defaults.handshake_timeout,
                MAX_HANDSHAKE_TIMEOUT_SECONDS,
                "a client sends its TLS hello at once; longer only serves a flood",
            )?,
            idle_timeout: seconds(
                "client_limits.idle_timeout_seconds",
                self.idle_timeout_seconds,
                defaults.idle_timeout,
                MAX_IDLE_TIMEOUT_SECONDS,
                "at most a day",
            )?,
        })
    }
}

/// `value` if it is in `min..=max`, else [`ParentError::InvalidLimit`] saying why `max` is the
/// largest.
pub(crate) fn in_range<T: PartialOrd + fmt::Display + Copy>(
    field: &'static str,
    value: T,
    min: T,
    max: T,
    why_max: &str,
) -> Result<T> {
    if value < min || value > max {
        return Err(ParentError::InvalidLimit {
            field,
            value: value.to_string(),
            reason: format!("expected {min}..={max}: {why_max}"),
        });
    }
    Ok(value)
}

/// One `[[proxy]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProxy {
    listen: Option<String>,
    listen_vsock_port: Option<u32>,
    to: String,
    max_connections: Option<usize>,
}

/// Where the enclave listens for relayed client connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnclaveAddr {
    /// A unix socket (local runs, tests, the HSM-host deployment).
    Unix(PathBuf),
    /// A vsock address (Nitro Enclaves: the enclave's CID and port).
    Vsock {
        /// Context id of the enclave.
        cid: u32,
        /// Port.
        port: u32,
    },
    /// A guest's vsock port reached through a "hybrid vsock" unix socket: the host side of a
    /// virtio-vsock device emulated in user space (`vhost-device-vsock`'s `uds-path`, the
    /// protocol Firecracker introduced): connect to the socket, write `CONNECT PORT\n`, read
    /// `OK HOST_PORT\n`, then the stream is the guest's. Used to reach an enclave image booted in
    /// QEMU's `nitro-enclave` machine on a host without vsock (docs/nitro.md, "Emulator").
    HybridVsock {
        /// The backend's unix socket (`uds-path`).
        path: PathBuf,
        /// The guest's port.
        port: u32,
    },
}

impl FromStr for EnclaveAddr {
    type Err = ParentError;

    /// Parses `unix:PATH`, `vsock:CID:PORT` (decimal) or `hybrid-vsock:PATH:PORT`.
    fn from_str(s: &str) -> Result<Self> {
        let bad = |reason: &str| ParentError::invalid_address("enclave", s, reason);
        if let Some(path) = s.strip_prefix("unix:") {
            let path = PathBuf::from(path);
            check_socket_path("enclave", s, &path)?;
            Ok(Self::Unix(path))
        } else if let Some(rest) = s.strip_prefix("vsock:") {
            let expected = "expected vsock:CID:PORT with decimal CID and PORT, e.g. vsock:16:5000";
            let (cid, port) = rest.split_once(':').ok_or_else(|| bad(expected))?;
            let cid = cid.parse::<u32>().map_err(|_| bad(expected))?;
            let port = port.parse::<u32>().map_err(|_| bad(expected))?;
            Ok(Self::Vsock { cid, port })
        } else if let Some(rest) = s.strip_prefix("hybrid-vsock:") {
            let expected = "expected hybrid-vsock:PATH:PORT with a decimal PORT, \
                            e.g. hybrid-vsock:/run/enclave.vsock:5000";
            let (path, port) = rest.rsplit_once(':').ok_or_else(|| bad(expected))?;
            let port = port.parse::<u32>().map_err(|_| bad(expected))?;
            let path = PathBuf::from(path);
            check_socket_path("enclave", s, &path)?;
            Ok(Self::HybridVsock { path, port })
        } else {
            Err(bad(
                "expected unix:PATH, vsock:CID:PORT or hybrid-vsock:PATH:PORT",
            ))
        }
    }
}

impl fmt::Display for EnclaveAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
            Self::Vsock { cid, port } => write!(f, "vsock:{cid}:{port}"),
            Self::HybridVsock { path, port } => {
                write!(f, "hybrid-vsock:{}:{port}", path.display())
            }
        }
    }
}

impl Config {
    /// Parses a configuration given as TOML text; relative paths stay relative (to the process's
    /// working directory).
    pub fn from_toml(text: &str) -> Result<Config> {
        Self::parse(text, "<string>")
    }

    /// Reads and parses the configuration file at `path`, resolving relative paths in it against
    /// the file's directory.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| ParentError::ConfigRead {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let mut config = Self::parse(&text, &path.display().to_string())?;
        let base = path.parent().unwrap_or(Path::new(""));
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        resolve(&mut config.store_socket);
        config.database.resolve(base);
        for e in &mut config.enclaves {
            if let EnclaveAddr::Unix(p) | EnclaveAddr::HybridVsock { path: p, .. } = e {
                resolve(p);
            }
        }
        // `enclave` is `enclaves[0]`: taken again once resolved, not resolved twice.
        if let Some(first) = config.enclaves.first() {
            config.enclave = first.clone();
        }
        for proxy in &mut config.proxies {
            if let Inbound::Unix(p) = &mut proxy.listen {
                resolve(p);
            }
        }
        if let Some(AwsCredentialsConfig::File(p)) = &mut config.aws_credentials {
            resolve(p);
        }
        if let Some(tls) = &mut config.mailbox.tls {
            resolve(&mut tls.certificate);
            resolve(&mut tls.key);
        }
        // Resolution may have made a socket path too long.
        check_socket_path(
            "store_socket",
            &config.store_socket.display().to_string(),
            &config.store_socket,
        )?;
        for e in &config.enclaves {
            if let EnclaveAddr::Unix(p) | EnclaveAddr::HybridVsock { path: p, .. } = e {
                check_socket_path("enclaves", &e.to_string(), p)?;
            }
        }
        for proxy in &config.proxies {
            if let Inbound::Unix(p) = &proxy.listen {
                check_socket_path("proxy.listen", &proxy.listen.to_string(), p)?;
            }
        }
        config.check_listeners()?;
        Ok(config)
    }

    /// Every configured listener's address (store and proxies) is distinct.
    fn check_listeners(&self) -> Result<()> {
        let mut unix: Vec<&Path> = vec![&self.store_socket];
        let mut vsock: Vec<u32> = self.store_vsock_port.into_iter().collect();
        for proxy in &self.proxies {
            let taken = match &proxy.listen {
                Inbound::Unix(path) => {
                    let taken = unix.contains(&path.as_path());
                    unix.push(path);
                    taken
                }
                Inbound::Vsock { port } => {
                    let taken = vsock.contains(port);
                    vsock.push(*port);
                    taken
                }
            };
            if taken {
                return Err(ParentError::invalid_address(
                    "proxy.listen",
                    proxy.listen.to_string(),
                    "already used by another listener of this configuration",
                ));
            }
        }
        Ok(())
    }

    fn parse(text: &str, origin: &str) -> Result<Config> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ParentError::Config {
            origin: origin.to_owned(),
            reason: one_line(text, &e),
        })?;
        let listen = raw.listen.parse::<SocketAddr>().map_err(|_| {
            ParentError::invalid_address(
                "listen",
                &raw.listen,
                "expected IP:PORT, e.g. 127.0.0.1:7000 or [::1]:7000 (host names are \
                         not resolved)",
            )
        })?;
        let enclaves = parse_enclaves(raw.enclave.as_deref(), raw.enclaves.as_deref())?;
        let enclave = enclaves
            .first()
            .cloned()
            .ok_or_else(|| ParentError::invalid_address("enclaves", "[]", "no instance"))?;
        let mailbox_listen = raw
            .mailbox_listen
            .as_deref()
            .map(|m| parse_mailbox_listen(m, listen))
            .transpose()?;
        let metrics_listen = raw
            .metrics_listen
            .as_deref()
            .map(|m| parse_metrics_listen(m, listen, mailbox_listen))
            .transpose()?;
        let store_socket = PathBuf::from(&raw.store_socket);
        check_socket_path("store_socket", &raw.store_socket, &store_socket)?;
        if let Some(port) = raw.store_vsock_port {
            check_vsock_port("store_vsock_port", port)?;
        }
        let proxy_allow = raw
            .proxy_allow
            .iter()
            .map(|rule| {
                rule.parse::<AllowRule>()
                    .map_err(|reason| ParentError::invalid_address("proxy_allow", rule, reason))
            })
            .collect::<Result<Vec<_>>>()?;
        let proxies = raw
            .proxy
            .into_iter()
            .map(|p| parse_proxy(p, &proxy_allow))
            .collect::<Result<Vec<_>>>()?;
        let config = Config {
            listen,
            enclave,
            enclaves,
            store_socket,
            store_vsock_port: raw.store_vsock_port,
            database: raw.database.check()?,
            mailbox_listen,
            metrics_listen,
            mailbox: raw.mailbox.check()?,
            proxy_allow,
            proxies,
            aws_credentials: raw
                .aws_credentials
                .map(RawAwsCredentials::check)
                .transpose()?,
            client_limits: raw.client_limits.check()?,
        };
        config.check_listeners()?;
        Ok(config)
    }
}

/// Most enclave instances one parent relays to.
pub const MAX_ENCLAVES: usize = 64;

/// `enclave = "ADDR"` or `enclaves = ["ADDR", ...]` (exactly one of the two; distinct addresses).
fn parse_enclaves(one: Option<&str>, many: Option<&[String]>) -> Result<Vec<EnclaveAddr>> {
    let list: Vec<&str> = match (one, many) {
        (Some(e), None) => vec![e],
        (None, Some(list)) if !list.is_empty() && list.len() <= MAX_ENCLAVES => {
            list.iter().map(String::as_str).collect()
        }
        (None, Some(list)) => {
            return Err(ParentError::invalid_address(
                "enclaves",
                format!("{} entries", list.len()),
                format!("list 1 to {MAX_ENCLAVES} enclave instances"),
            ));
        }
        (Some(e), Some(_)) => {
            return Err(ParentError::invalid_address(
                "enclave",
                e,
                "give either enclave = \"ADDR\" or enclaves = [\"ADDR\", ...], not both",
            ));
        }
        (None, None) => {
            return Err(ParentError::invalid_address(
                "enclave",
                "",
                "missing: enclave = \"unix:PATH\" (or enclaves = [...] for several instances)",
            ));
        }
    };
    let mut out: Vec<EnclaveAddr> = Vec::with_capacity(list.len());
    for text in list {
        let addr = text.parse::<EnclaveAddr>()?;
        if out.contains(&addr) {
            return Err(ParentError::invalid_address(
                "enclaves",
                text,
                "listed twice: each instance once",
            ));
        }
        out.push(addr);
    }
    Ok(out)
}

/// Checks one `[[proxy]]`: exactly one listener, a destination `proxy_allow` allows, a cap in
/// range.
fn parse_proxy(raw: RawProxy, allow: &[AllowRule]) -> Result<ProxyConfig> {
    let listen = match (raw.listen, raw.listen_vsock_port) {
        (Some(listen), None) => {
            let Some(path) = listen.strip_prefix("unix:") else {
                return Err(ParentError::invalid_address(
                    "proxy.listen",
                    listen,
                    "expected unix:PATH (for vsock, listen_vsock_port = PORT)",
                ));
            };
            let path = PathBuf::from(path);
            check_socket_path("proxy.listen", &listen, &path)?;
            Inbound::Unix(path)
        }
        (None, Some(port)) => {
            check_vsock_port("proxy.listen_vsock_port", port)?;
            Inbound::Vsock { port }
        }
        (listen, port) => {
            let value = format!(
                "{}{}",
                listen.unwrap_or_default(),
                port.map(|p| format!(" and vsock port {p}"))
                    .unwrap_or_default()
            );
            return Err(ParentError::invalid_address(
                "proxy.listen",
                value,
                "give exactly one of listen = \"unix:PATH\" and listen_vsock_port = PORT",
            ));
        }
    };
    let to = raw
        .to
        .parse::<Destination>()
        .map_err(|reason| ParentError::invalid_address("proxy.to", &raw.to, reason))?;
    crate::proxy::check_allowed(allow, &to)?;
    let max_connections = raw.max_connections.unwrap_or(DEFAULT_PROXY_CONNECTIONS);
    if !(1..=MAX_CONNECTIONS).contains(&max_connections) {
        return Err(ParentError::invalid_address(
            "proxy.max_connections",
            max_connections.to_string(),
            format!("expected 1..={MAX_CONNECTIONS}"),
        ));
    }
    Ok(ProxyConfig {
        listen,
        to,
        max_connections,
    })
}

/// `mailbox_listen`: an `IP:PORT` other than the client listener's (port 0 excepted: each gets
/// its own free port).
fn parse_mailbox_listen(value: &str, listen: SocketAddr) -> Result<SocketAddr> {
    let bad = |reason: &str| ParentError::invalid_address("mailbox_listen", value, reason);
    let addr = value.parse::<SocketAddr>().map_err(|_| {
        bad("expected IP:PORT, e.g. 0.0.0.0:7002 or [::]:7002 (host names are not resolved)")
    })?;
    if addr.port() != 0
        && addr.port() == listen.port()
        && (addr.ip() == listen.ip() || addr.ip().is_unspecified() || listen.ip().is_unspecified())
    {
        return Err(bad(
            "the same address as `listen`; give the mailbox a port of its own",
        ));
    }
    Ok(addr)
}

/// `metrics_listen`: an `IP:PORT` other than the client listener's and the mailbox's (port 0
/// excepted). Any address is accepted: loopback is the operator's choice (docs/deployment.md,
/// "Metrics, health and logs"), the listener serves no secret.
fn parse_metrics_listen(
    value: &str,
    listen: SocketAddr,
    mailbox: Option<SocketAddr>,
) -> Result<SocketAddr> {
    let bad = |reason: &str| ParentError::invalid_address("metrics_listen", value, reason);
    let addr = value
        .parse::<SocketAddr>()
        .map_err(|_| bad("expected IP:PORT, e.g. 127.0.0.1:7104 (host names are not resolved)"))?;
    let clash = |other: SocketAddr| {
        addr.port() != 0
            && addr.port() == other.port()
            && (addr.ip() == other.ip()
                || addr.ip().is_unspecified()
                || other.ip().is_unspecified())
    };
    if clash(listen) {
        return Err(bad(
            "the same address as `listen`; give it a port of its own",
        ));
    }
    if mailbox.is_some_and(clash) {
        return Err(bad(
            "the same address as `mailbox_listen`; give it a port of its own",
        ));
    }
    Ok(addr)
}

/// A vsock port to listen on: not `VMADDR_PORT_ANY` (u32::MAX), which would pick a random one.
fn check_vsock_port(field: &'static str, port: u32) -> Result<()> {
    if port == u32::MAX {
        return Err(ParentError::invalid_address(
            field,
            port.to_string(),
            "4294967295 is VMADDR_PORT_ANY; give the port the enclave connects to",
        ));
    }
    Ok(())
}

fn check_socket_path(field: &'static str, value: &str, path: &Path) -> Result<()> {
    let bad = |reason: String| ParentError::invalid_address(field, value, reason);
    let len = path.as_os_str().len();
    if len == 0 {
        return Err(bad("empty socket path".into()));
    }
    if len > MAX_UNIX_SOCKET_PATH {
        return Err(bad(format!(
            "socket path is {len} bytes; unix sockets allow at most {MAX_UNIX_SOCKET_PATH}"
        )));
    }
    Ok(())
}

/// TOML's message on one line, with the line it points at (its own `Display` draws a multi-line
/// excerpt, which does not fit a one-line error). Serde's type errors do not name the field, so
/// the offending line is quoted when the error is about one line.
fn one_line(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim().replace('\n', " ");
    let Some(span) = e.span() else {
        return message;
    };
    let before = text.get(..span.start).unwrap_or_default();
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line_text = text
        .get(line_start..)
        .and_then(|rest| rest.lines().next())
        .unwrap_or_default()
        .trim();
    let within_line = text
        .get(span.start..span.end)
        .is_some_and(|s| !s.contains('\n'));
    if within_line && !line_text.is_empty() {
        let quoted: String = line_text.chars().take(80).collect();
        format!("line {line} ({quoted}): {message}")
    } else {
        format!("line {line}: {message}")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn enclave_addresses_parse_and_print_back() {
        for s in [
            "unix:/run/enclave.sock",
            "vsock:16:5000",
            "unix:relative.sock",
            "hybrid-vsock:/run/enclave.vsock:5000",
            "hybrid-vsock:a:b.vsock:5000",
        ] {
            assert_eq!(s.parse::<EnclaveAddr>().unwrap().to_string(), s);
        }
        assert_eq!(
            "vsock:3:7000".parse::<EnclaveAddr>().unwrap(),
            EnclaveAddr::Vsock { cid: 3, port: 7000 }
        );
        for bad in [
            "",
            "unix:",
            "/run/enclave.sock",
            "tcp:127.0.0.1:1",
            "vsock:",
            "vsock:16",
            "vsock:x:1",
            "vsock:16:5000:1",
            "vsock:-1:5",
            "vsock:4294967296:5",
            "hybrid-vsock:",
            "hybrid-vsock:/e.vsock",
            "hybrid-vsock::5000",
            "hybrid-vsock:/e.vsock:x",
            "hybrid-vsock:/e.vsock:4294967296",
        ] {
            assert!(bad.parse::<EnclaveAddr>().is_err(), "{bad:?} accepted");
        }
    }

    const BASE: &str = "listen = \"127.0.0.1:0\"\nenclave = \"unix:/e.sock\"\n\
                        store_socket = \"/s.sock\"\ndatabase = \"/d.db\"\n";

    #[test]
    fn client_limits_default_and_are_range_checked() {
        let c = Config::from_toml(BASE).unwrap();
        assert_eq!(c.client_limits, ClientLimits::default());
        assert_eq!(c.client_limits.max_connections_per_source, 32);
        assert_eq!(c.client_limits.handshake_timeout, Duration::from_secs(10));
        assert_eq!(c.client_limits.idle_timeout, Duration::from_secs(120));
        let c = Config::from_toml(&format!(
            "{BASE}[client_limits]\nmax_connections_per_source = 4\n\
             handshake_timeout_seconds = 1\nidle_timeout_seconds = 30\n"
        ))
        .unwrap();
        assert_eq!(
            c.client_limits,
            ClientLimits {
                max_connections_per_source: 4,
                handshake_timeout: Duration::from_secs(1),
                idle_timeout: Duration::from_secs(30),
            }
        );
        for (bad, field) in [
            (
                "max_connections_per_source = 0",
                "max_connections_per_source",
            ),
            (
                "max_connections_per_source = 257",
                "max_connections_per_source",
            ),
            ("handshake_timeout_seconds = 0", "handshake_timeout_seconds"),
            (
                "handshake_timeout_seconds = 301",
                "handshake_timeout_seconds",
            ),
            ("idle_timeout_seconds = 0", "idle_timeout_seconds"),
            ("idle_timeout_seconds = 86401", "idle_timeout_seconds"),
        ] {
            let e = Config::from_toml(&format!("{BASE}[client_limits]\n{bad}\n")).unwrap_err();
            assert!(
                matches!(e, ParentError::InvalidLimit { .. }) && e.to_string().contains(field),
                "{bad}: {e}"
            );
        }
        let e = Config::from_toml(&format!("{BASE}[client_limits]\nmax_connections = 5\n"))
            .unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
    }

    #[test]
    fn metrics_listen_is_an_address_of_its_own() {
        let c = Config::from_toml(&format!("{BASE}metrics_listen = \"127.0.0.1:7004\"\n")).unwrap();
        assert_eq!(c.metrics_listen, Some("127.0.0.1:7004".parse().unwrap()));
        assert_eq!(Config::from_toml(BASE).unwrap().metrics_listen, None);
        for bad in [
            "localhost:7004",
            "7004",
            "",
            "127.0.0.1:7002",
            "0.0.0.0:7002",
        ] {
            let text =
                format!("{BASE}mailbox_listen = \"127.0.0.1:7002\"\nmetrics_listen = \"{bad}\"\n");
            let e = Config::from_toml(&text).unwrap_err();
            assert!(
                matches!(
                    &e,
                    ParentError::InvalidAddress {
                        field: "metrics_listen",
                        ..
                    }
                ),
                "{bad}: {e}"
            );
        }
    }
}
