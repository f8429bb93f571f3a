//! The running parent: a TCP listener for clients, relayed to the enclave (unix socket or vsock);
//! the store, on a unix socket and optionally on a vsock port; the outbound proxies
//! ([`crate::proxy`]); and, when configured, the members' mailbox on TCP ([`crate::mailbox`]).
//! One thread per listener, one per connection (two while relaying).
//!
//! Every listener goes through the same accept loop ([`Listen`]: TCP, unix or vsock), and every
//! connection is a [`Conn`], so the store and the proxies run the same code on vsock (Nitro) as on
//! the unix sockets the tests use.
//!
//! Limits: at most [`MAX_CONNECTIONS`] connections at once on the client listener and on each
//! store listener, and a proxy's `max_connections` on each proxy listener; further ones are closed
//! on accept (a flood cannot exhaust the parent's threads). Unix sockets are created mode 0600:
//! only the parent's user (the enclave host's) can reach the store or a proxy.
//!
//! The client listener is open to anyone, so the global cap alone would let one host take every
//! slot with idle sockets (issue 10). Its `[client_limits]` ([`crate::config::ClientLimits`]) add:
//! a per-source quota (an IPv4 address, or an IPv6 /64), checked on accept together with the cap,
//! so that filling the cap takes many sources; a handshake timeout: a client must send its first
//! bytes within it, and only then is it connected to the enclave (an idle socket never costs the
//! enclave anything); and an idle timeout on the relay ([`crate::relay::relay_idle`]). So every
//! slot a silent client takes comes back by itself. Refusals cost an accept and a close, and are
//! logged in aggregate ([`LimitLog`]: at most one line per second per listener, with counts), never
//! one line per connection.
//!
//! Shutdown ([`RunningParent::shutdown`], or dropping it): the accept loops are woken (they poll
//! their listener together with a stop signal, which works for vsock listeners too, where
//! connecting to oneself does not), every open connection is shut down, all threads are joined,
//! and the unix socket files are removed if they are still ours.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use vsock::{VMADDR_CID_ANY, VsockListener, VsockStream};

use crate::aws_credentials::CredentialsProvider;
use crate::config::{ClientLimits, Config, EnclaveAddr};
use crate::error::{ParentError, Result};
use crate::mailbox::{MailboxListener, MailboxStore, is_ordinary_end, serve_mailbox_counted};
use crate::metrics::{ClientLimited, Metrics};
use crate::pool::EnclavePool;
use crate::proxy::{self, Destination, Inbound};
use crate::relay::{Conn, Io, Listen, is_idle_timeout, is_timeout, relay, relay_idle};
use crate::store::Store;
use crate::store_server::serve_store_telemetry;

/// Most connections served at once, per listener (proxies have their own, lower, cap).
pub const MAX_CONNECTIONS: usize = 1024;
/// Pause after a failed `accept` (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// Longest an accept loop sleeps in `poll` before it looks at the stop flag again (the stop
/// signal normally wakes it at once; this only bounds a lost wake-up).
const POLL_INTERVAL_MS: u16 = 500;
/// At most one line per listener per this long about connections refused or closed by a limit.
const LIMIT_LOG_INTERVAL: Duration = Duration::from_secs(1);
/// Most bytes taken from a client before the enclave is connected (its first read).
const FIRST_READ: usize = 4096;

/// A parent ready to start: its configuration and its store.
pub struct Parent {
    config: Config,
    store: Arc<dyn Store>,
    mailbox: Option<Arc<MailboxStore>>,
    metrics: Arc<Metrics>,
}

impl Parent {
    /// A parent on `config`, opening (or creating) its store at `config.database` (a SQLite
    /// file, or a PostgreSQL database whose schema it creates or migrates), and the mailbox's
    /// tables there when `config.mailbox_listen` is set.
    pub fn new(config: Config) -> Result<Parent> {
        let (store, mailbox) = crate::store::open_for(&config)?;
        Ok(Parent {
            mailbox,
            ..Self::with_store(config, store)
        })
    }

    /// A parent on `config` serving `store` (`config.database` is not used, except by the
    /// mailbox if `config.mailbox_listen` is set and [`Parent::with_mailbox`] gave none).
    pub fn with_store(config: Config, store: Arc<dyn Store>) -> Parent {
        Parent {
            config,
            store,
            mailbox: None,
            metrics: Arc::new(Metrics::new()),
        }
    }

    /// What this parent counts ([`crate::metrics`]): the enclave pool marks instances up or
    /// down with [`Metrics::set_instance_up`].
    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.metrics)
    }

    /// Serves `mailbox` on `config.mailbox_listen` (instead of opening `config.database`).
    pub fn with_mailbox(mut self, mailbox: Arc<MailboxStore>) -> Parent {
        self.mailbox = Some(mailbox);
        self
    }

    /// Binds every listener (clients, store, proxies) and starts accepting on all of them.
    ///
    /// A stale unix socket file (no process behind it) is replaced; a live one is
    /// [`ParentError::SocketInUse`], and anything that is not a socket is
    /// [`ParentError::NotASocket`]. A proxy whose destination `proxy_allow` does not allow is
    /// [`ParentError::ProxyNotAllowed`] (checked at load too; this covers a [`Config`] built in
    /// code). Nothing is left running or bound when `start` fails.
    pub fn start(self) -> Result<RunningParent> {
        let Parent {
            config,
            store,
            mailbox,
            metrics,
        } = self;
        for p in &config.proxies {
            proxy::check_allowed(&config.proxy_allow, &p.to)?;
        }
        let tcp = TcpListener::bind(config.listen)
            .map_err(|e| ParentError::io(format!("binding {}", config.listen), &e))?;
        let client_addr = tcp
            .local_addr()
            .map_err(|e| ParentError::io("reading the bound address", &e))?;
        // From here on, a failure drops `running`, which stops what was started and removes the
        // socket files bound so far.
        let mut running = RunningParent {
            client_addr,
            mailbox_addr: None,
            store_socket: config.store_socket.clone(),
            socket_files: Vec::new(),
            shared: Shared::new(metrics)?,
            metrics_addr: None,
            pool: Arc::new(EnclavePool::new(&config.enclaves)),
            accept_threads: Vec::new(),
            stopped: false,
        };
        let mut loops: Vec<Loop> = vec![Loop {
            name: "parent-accept-tcp".into(),
            what: format!("client listener {client_addr}"),
            listener: nonblocking(Box::new(tcp), &config.listen.to_string())?,
            max: MAX_CONNECTIONS,
            per_source: Some(config.client_limits.max_connections_per_source),
            handler: Handler::Relay {
                pool: running.pool.clone(),
                limits: config.client_limits,
            },
        }];
        if let Some(addr) = config.mailbox_listen {
            loops.push(running.mailbox_loop(&config, addr, mailbox)?);
        }
        if let Some(addr) = config.metrics_listen {
            loops.push(running.metrics_loop(addr, &store)?);
        }
        loops.extend(running.store_loops(&config, &store)?);
        loops.extend(running.proxy_loops(&config)?);
        running.spawn(loops)?;
        Ok(running)
    }
}

impl Shared {
    /// Nothing open yet, not stopping.
    fn new(metrics: Arc<Metrics>) -> Result<Arc<Self>> {
        let (wake_rx, wake_tx) =
            UnixStream::pair().map_err(|e| ParentError::io("creating the stop signal", &e))?;
        Ok(Arc::new(Shared {
            metrics,
            stop: AtomicBool::new(false),
            next_id: AtomicU64::new(0),
            conns: Mutex::new(Conns::default()),
            wake_rx,
            wake_tx,
        }))
    }
}

impl RunningParent {
    /// The members' mailbox on `addr` (its tables opened now unless given).
    fn mailbox_loop(
        &mut self,
        config: &Config,
        addr: SocketAddr,
        mailbox: Option<Arc<MailboxStore>>,
    ) -> Result<Loop> {
        let mailbox = match mailbox {
            Some(m) => m,
            None => Arc::new(MailboxStore::open_for(config)?),
        };
        let tcp = TcpListener::bind(addr)
            .map_err(|e| ParentError::io(format!("binding the mailbox on {addr}"), &e))?;
        self.mailbox_addr = Some(
            tcp.local_addr()
                .map_err(|e| ParentError::io("reading the mailbox's bound address", &e))?,
        );
        Ok(Loop {
            name: "parent-accept-mailbox".into(),
            what: format!("mailbox listener {addr}"),
            listener: nonblocking(Box::new(MailboxListener(tcp)), &addr.to_string())?,
            max: MAX_CONNECTIONS,
            per_source: None,
            handler: Handler::Mailbox(mailbox),
        })
    }

    /// The operator listener on `addr` (`crate::http`): `/metrics`, `/healthz`, `/readyz`.
    fn metrics_loop(&mut self, addr: SocketAddr, store: &Arc<dyn Store>) -> Result<Loop> {
        let tcp = TcpListener::bind(addr)
            .map_err(|e| ParentError::io(format!("binding metrics_listen {addr}"), &e))?;
        self.metrics_addr = Some(
            tcp.local_addr()
                .map_err(|e| ParentError::io("reading the metrics listener's address", &e))?,
        );
        Ok(Loop {
            name: "parent-accept-metrics".into(),
            what: format!("metrics listener {addr}"),
            listener: nonblocking(Box::new(tcp), &addr.to_string())?,
            max: crate::http::MAX_CONNECTIONS,
            per_source: None,
            handler: Handler::Operator(Arc::clone(store)),
        })
    }

    /// The enclave's store channel: on the unix socket, and on vsock when configured, both
    /// answering AWS credentials from one provider (one cache).
    fn store_loops(&mut self, config: &Config, store: &Arc<dyn Store>) -> Result<Vec<Loop>> {
        let credentials = config
            .aws_credentials
            .clone()
            .map(|c| Arc::new(CredentialsProvider::new(c)));
        let unix = self.bind_unix(&config.store_socket)?;
        let mut loops = vec![Loop {
            name: "parent-accept-store".into(),
            what: format!("store listener {}", config.store_socket.display()),
            listener: nonblocking(Box::new(unix), &config.store_socket.display().to_string())?,
            max: MAX_CONNECTIONS,
            per_source: None,
            handler: Handler::Store(Arc::clone(store), credentials.clone()),
        }];
        if let Some(port) = config.store_vsock_port {
            let what = format!("the store listener on vsock port {port}");
            let listener = bind_vsock(port, &what)?;
            loops.push(Loop {
                name: "parent-accept-store-vsock".into(),
                listener: nonblocking(Box::new(listener), &what)?,
                what,
                max: MAX_CONNECTIONS,
                per_source: None,
                handler: Handler::Store(Arc::clone(store), credentials),
            });
        }
        Ok(loops)
    }

    /// One loop per `[[proxy]]` table.
    fn proxy_loops(&mut self, config: &Config) -> Result<Vec<Loop>> {
        let mut loops = Vec::new();
        for (i, p) in config.proxies.iter().enumerate() {
            let listener: Box<dyn Listen> = match &p.listen {
                Inbound::Unix(path) => Box::new(self.bind_unix(path)?),
                Inbound::Vsock { port } => Box::new(bind_vsock(
                    *port,
                    &format!("the proxy listener on vsock port {port}"),
                )?),
            };
            loops.push(Loop {
                name: format!("parent-accept-proxy-{i}"),
                what: format!("proxy {} -> {}", p.listen, p.to),
                listener: nonblocking(listener, &p.listen.to_string())?,
                max: p.max_connections,
                per_source: None,
                handler: Handler::Proxy {
                    listen: p.listen.clone(),
                    to: p.to.clone(),
                },
            });
        }
        Ok(loops)
    }

    /// Starts one accept thread per loop.
    fn spawn(&mut self, loops: Vec<Loop>) -> Result<()> {
        self.shared.conns().per_listener = vec![0; loops.len()];
        for (slot, l) in loops.into_iter().enumerate() {
            let shared = Arc::clone(&self.shared);
            let name = l.name.clone();
            let thread = std::thread::Builder::new()
                .name(name.clone())
                .spawn(move || accept_loop(l, slot, &shared))
                .map_err(|e| ParentError::io(format!("spawning {name}"), &e))?;
            self.accept_threads.push(thread);
        }
        Ok(())
    }
}

/// A started parent. Dropping it shuts it down.
pub struct RunningParent {
    client_addr: SocketAddr,
    mailbox_addr: Option<SocketAddr>,
    store_socket: PathBuf,
    /// The unix socket files we bound, with their (device, inode), to remove only our own.
    socket_files: Vec<(PathBuf, (u64, u64))>,
    /// The operator listener's address, if it is served.
    metrics_addr: Option<SocketAddr>,
    shared: Arc<Shared>,
    /// The enclave instances client connections are spread over.
    pool: Arc<EnclavePool>,
    accept_threads: Vec<JoinHandle<()>>,
    stopped: bool,
}

impl RunningParent {
    /// The address clients connect to (the actual port when the configuration said 0).
    pub fn client_addr(&self) -> SocketAddr {
        self.client_addr
    }

    /// The enclave instances and what this parent knows of each (up, connections).
    pub fn instances(&self) -> Vec<crate::pool::InstanceStatus> {
        self.pool.status()
    }

    /// The pool itself (shared with the metrics listener).
    pub fn pool(&self) -> Arc<EnclavePool> {
        self.pool.clone()
    }

    /// The operator listener's address (`metrics_listen`; the actual port when it said 0), if
    /// it is served.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// What this parent counts (see [`Parent::metrics`]).
    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.shared.metrics)
    }

    /// The mailbox's address (the actual port when the configuration said 0), if it is served.
    pub fn mailbox_addr(&self) -> Option<SocketAddr> {
        self.mailbox_addr
    }

    /// The store socket's path.
    pub fn store_socket(&self) -> &Path {
        &self.store_socket
    }

    /// Blocks while the parent runs: the accept loops only end on [`RunningParent::shutdown`]
    /// from elsewhere, so in practice until the process is killed.
    pub fn wait(mut self) {
        for t in self.accept_threads.drain(..) {
            let _ = t.join();
        }
    }

    /// Stops accepting, closes every open connection, joins all threads, removes the socket files.
    pub fn shutdown(mut self) {
        self.stop();
    }

    /// Binds a unix socket at `path` (see [`bind_unix_socket`]) and remembers it for removal.
    fn bind_unix(&mut self, path: &Path) -> Result<UnixListener> {
        let (listener, id) = bind_unix_socket(path)?;
        self.socket_files.push((path.to_path_buf(), id));
        Ok(listener)
    }

    fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        self.shared.stop.store(true, Ordering::SeqCst);
        // Nobody reads the signal: it stays readable, so every accept loop's poll returns.
        let _ = (&self.shared.wake_tx).write(&[1]);
        for t in self.accept_threads.drain(..) {
            let _ = t.join();
        }
        let threads = {
            let mut conns = self.shared.conns();
            for sockets in conns.open.values() {
                for s in sockets {
                    let _ = s.shutdown(std::net::Shutdown::Both);
                }
            }
            std::mem::take(&mut conns.threads)
        };
        for t in threads {
            let _ = t.join();
        }
        for (path, id) in self.socket_files.drain(..) {
            if let Ok(meta) = std::fs::symlink_metadata(&path)
                && (meta.dev(), meta.ino()) == id
            {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
}

impl Drop for RunningParent {
    fn drop(&mut self) {
        self.stop();
    }
}

impl std::fmt::Debug for RunningParent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningParent")
            .field("client_addr", &self.client_addr)
            .field("store_socket", &self.store_socket)
            .finish_non_exhaustive()
    }
}

/// State shared by the accept loops, the connection threads and shutdown.
struct Shared {
    /// What the parent counts (`crate::metrics`).
    metrics: Arc<Metrics>,
    stop: AtomicBool,
    next_id: AtomicU64,
    conns: Mutex<Conns>,
    /// The stop signal: one byte is written to `wake_tx` on shutdown; the loops poll `wake_rx`.
    wake_rx: UnixStream,
    wake_tx: UnixStream,
}

#[derive(Default)]
struct Conns {
    /// Open connections: their sockets, shut down on shutdown.
    open: HashMap<u64, Vec<Conn>>,
    /// Open connections per listener (index: the listener's slot).
    per_listener: Vec<usize>,
    /// Open connections per (listener slot, source), on listeners with a per-source quota; a
    /// source's entry goes with its last connection, so this holds at most one per open one.
    per_source: HashMap<(usize, Source), usize>,
    /// Connection threads not yet joined.
    threads: Vec<JoinHandle<()>>,
}

impl Shared {
    fn conns(&self) -> MutexGuard<'_, Conns> {
        self.conns.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// The second socket of connection `id` (the enclave's, the proxy destination's), once
    /// connected: added to the connection, so that shutdown closes it too. `None` when it could
    /// not be made (logged, `failed` saying what) or when shutting down: the caller gives up.
    fn connected(
        &self,
        id: u64,
        socket: io::Result<Conn>,
        failed: impl FnOnce(&io::Error) -> String,
    ) -> Option<Conn> {
        let socket = match socket {
            Ok(socket) => socket,
            Err(e) => {
                log(&failed(&e));
                return None;
            }
        };
        let mut conns = self.conns();
        // Shutdown may have swept the open connections between our accept and now.
        if self.stopping() {
            return None;
        }
        if let Some(sockets) = conns.open.get_mut(&id) {
            sockets.push(Arc::clone(&socket));
        }
        Some(socket)
    }
}

impl Conns {
    /// Forgets connection `id` of listener `slot` (from `source`, if it is counted per source).
    fn release(&mut self, id: u64, slot: usize, source: Option<Source>) {
        self.open.remove(&id);
        if let Some(count) = self.per_listener.get_mut(slot) {
            *count = count.saturating_sub(1);
        }
        if let Some(source) = source
            && let Some(count) = self.per_source.get_mut(&(slot, source))
        {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.per_source.remove(&(slot, source));
            }
        }
    }
}

/// Where a client connection comes from, for the per-source quota: an IPv4 address, or the /64
/// an IPv6 address is in (a host is usually given a whole /64, so single IPv6 addresses would be
/// free for the taking). IPv4-mapped IPv6 addresses (a listener on `[::]`) count as IPv4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Source {
    V4(Ipv4Addr),
    /// The address's upper 64 bits.
    V6(u64),
}

impl Source {
    fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self::V4(v4),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self::V4(v4),
                None => Self::V6(u64::try_from(u128::from(v6) >> 64).unwrap_or(u64::MAX)),
            },
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::V4(v4) => write!(f, "{v4}"),
            Self::V6(prefix) => write!(f, "{}/64", Ipv6Addr::from(u128::from(*prefix) << 64)),
        }
    }
}

/// One listener and what its connections are for.
struct Loop {
    /// Its thread's name.
    name: String,
    /// What it is, for the log.
    what: String,
    listener: Box<dyn Listen>,
    /// Connections open at once on it.
    max: usize,
    /// Connections open at once from one [`Source`] (listeners whose peers have an IP address).
    per_source: Option<usize>,
    handler: Handler,
}

enum Handler {
    /// Relay clients to the enclave, within the client limits' timeouts.
    Relay {
        pool: Arc<EnclavePool>,
        limits: ClientLimits,
    },
    /// Serve the enclave's store requests (and its AWS credentials, if configured).
    Store(Arc<dyn Store>, Option<Arc<CredentialsProvider>>),
    /// Relay the enclave to a fixed outside destination.
    Proxy { listen: Inbound, to: Destination },
    /// Serve the members' mailbox.
    Mailbox(Arc<MailboxStore>),
    /// Serve the operator's `/metrics`, `/healthz` and `/readyz` (the store answers `/readyz`).
    Operator(Arc<dyn Store>),
}

impl Handler {
    fn serve(&self, id: u64, conn: &Conn, shared: &Shared, peer: Peer<'_>) {
        match self {
            Handler::Relay { pool, limits } => relay_one(id, conn, pool, limits, shared, peer),
            Handler::Store(store, credentials) => {
                if let Err(e) = serve_store_telemetry(
                    Io(&**conn),
                    store.as_ref(),
                    credentials.as_deref(),
                    &shared.metrics,
                ) {
                    tracing::warn!(error = %e, "store connection ended: {e}");
                }
            }
            Handler::Operator(store) => {
                if let Err(e) = crate::http::serve(conn, &shared.metrics, store.as_ref())
                    && !ordinary_end(&e)
                    && !is_timeout(&e)
                {
                    tracing::debug!(error = %e, "metrics connection ended: {e}");
                }
            }
            Handler::Proxy { listen, to } => proxy_one(id, conn, listen, to, shared),
            Handler::Mailbox(mailbox) => {
                shared.metrics.mailbox_connection();
                if let Err(e) = serve_mailbox_counted(Io(&**conn), mailbox, &|| {
                    shared.metrics.mailbox_request()
                }) && !is_ordinary_end(&e)
                {
                    tracing::warn!(error = %e, "mailbox connection ended: {e}");
                }
            }
        }
    }
}

/// A connection's source (if counted) and its listener's [`LimitLog`].
#[derive(Clone, Copy)]
struct Peer<'a> {
    source: Option<Source>,
    log: &'a LimitLog,
}

/// Waits for connections on `l` until shutdown, handing each to a connection thread.
fn accept_loop(l: Loop, slot: usize, shared: &Arc<Shared>) {
    let timeouts = match &l.handler {
        Handler::Relay { limits, .. } => Some(*limits),
        _ => None,
    };
    let mut limit_log = LimitLog::new(l.what.clone(), l.max, l.per_source, timeouts);
    // The client listener's connections are counted (`crate::metrics`): accepted, open, bytes
    // each way, and what its limits did.
    let clients = timeouts.map(|_| Arc::clone(&shared.metrics));
    limit_log.metrics = clients.clone();
    let log = Arc::new(limit_log);
    let handler = Arc::new(l.handler);
    loop {
        if shared.stopping() {
            return;
        }
        let mut fds = [
            PollFd::new(l.listener.fd(), PollFlags::POLLIN),
            PollFd::new(shared.wake_rx.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::from(POLL_INTERVAL_MS)) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => {
                accept_failed(&l.name, &io::Error::from(e));
                continue;
            }
        }
        // The poll wakes at least every POLL_INTERVAL_MS: counts noted since the last line go
        // out within about a second even when the flood has stopped.
        log.flush_if_due();
        if shared.stopping() {
            return;
        }
        match l.listener.accept_from() {
            Ok((conn, ip)) => {
                let source = l.per_source.and(ip.map(Source::of));
                let conn = match &clients {
                    Some(metrics) => Arc::new(Counted {
                        inner: conn,
                        metrics: Arc::clone(metrics),
                    }) as Conn,
                    None => conn,
                };
                let counted = clients.clone();
                let handler = Arc::clone(&handler);
                let conn_shared = Arc::clone(shared);
                let conn_log = Arc::clone(&log);
                let admitted = spawn_connection(
                    shared,
                    slot,
                    (l.max, l.per_source),
                    source,
                    &conn,
                    move |id, conn| {
                        let peer = Peer {
                            source,
                            log: &conn_log,
                        };
                        if let Some(m) = &counted {
                            m.client_accepted();
                        }
                        handler.serve(id, conn, &conn_shared, peer);
                        if let Some(m) = &counted {
                            m.client_closed();
                        }
                    },
                );
                // A refused connection is closed here, when `conn` goes: nothing was read.
                match admitted {
                    Ok(()) | Err(Refused::Stopping) => {}
                    Err(Refused::Cap) => log.note(Limited::Cap, source),
                    Err(Refused::SourceQuota) => log.note(Limited::SourceQuota, source),
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => accept_failed(&l.name, &e),
        }
    }
}

/// A client connection that counts the bytes it carries into the parent's metrics: read from
/// the client is bound for the enclave, written to it came from the enclave.
struct Counted {
    inner: Conn,
    metrics: Arc<Metrics>,
}

impl crate::relay::Duplex for Counted {
    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.recv(buf)?;
        self.metrics.relayed_to_enclave(n);
        Ok(n)
    }
    fn send(&self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.send(buf)?;
        self.metrics.relayed_to_client(n);
        Ok(n)
    }
    fn shutdown(&self, how: std::net::Shutdown) -> io::Result<()> {
        self.inner.shutdown(how)
    }
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.inner.set_read_timeout(timeout)
    }
    fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.inner.set_write_timeout(timeout)
    }
}

/// Why [`spawn_connection`] did not take a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refused {
    /// The parent is shutting down (or the connection thread could not be started).
    Stopping,
    /// Its listener has its maximum open.
    Cap,
    /// Its source has its quota open on this listener.
    SourceQuota,
}

/// Registers a connection and runs `body` for it on a thread of its own; the connection is
/// refused instead (the caller drops, so closes, it) when stopping, when its source has
/// `per_source` open on this listener already, or when the listener has `max` open.
fn spawn_connection(
    shared: &Arc<Shared>,
    slot: usize,
    (max, per_source): (usize, Option<usize>),
    source: Option<Source>,
    conn: &Conn,
    body: impl FnOnce(u64, &Conn) + Send + 'static,
) -> std::result::Result<(), Refused> {
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let mut conns = shared.conns();
    if shared.stopping() {
        return Err(Refused::Stopping);
    }
    conns.threads.retain(|t| !t.is_finished());
    let Some(&open) = conns.per_listener.get(slot) else {
        return Err(Refused::Stopping);
    };
    // The quota first: when one source floods, its refusals are named as such, and refusals at
    // the cap then mean many sources.
    if let (Some(quota), Some(source)) = (per_source, source)
        && conns.per_source.get(&(slot, source)).copied().unwrap_or(0) >= quota
    {
        return Err(Refused::SourceQuota);
    }
    if open >= max {
        return Err(Refused::Cap);
    }
    if let Some(count) = conns.per_listener.get_mut(slot) {
        *count += 1;
    }
    if let Some(source) = source {
        *conns.per_source.entry((slot, source)).or_insert(0) += 1;
    }
    conns.open.insert(id, vec![Arc::clone(conn)]);
    let done = Arc::clone(shared);
    let mine = Arc::clone(conn);
    let thread = std::thread::Builder::new()
        .name(format!("parent-conn-{id}"))
        .spawn(move || {
            body(id, &mine);
            // Close now, not when the registry's clone goes: the peer must see the end.
            let _ = mine.shutdown(std::net::Shutdown::Both);
            done.conns().release(id, slot, source);
        });
    match thread {
        Ok(t) => {
            conns.threads.push(t);
            Ok(())
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot spawn a connection thread: {e}");
            conns.release(id, slot, source);
            Err(Refused::Stopping)
        }
    }
}

/// What a limit did to a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Limited {
    /// Refused on accept: the source had its quota open.
    SourceQuota,
    /// Refused on accept: the listener had its maximum open.
    Cap,
    /// Closed: no first bytes within the handshake timeout.
    Handshake,
    /// Closed: nothing moved either way for the idle timeout.
    Idle,
}

/// Counts the connections a listener's limits refused or closed, and reports them on one line at
/// most every [`LIMIT_LOG_INTERVAL`]: the first after a quiet second at once, the rest of a burst
/// as counts (from the next event or the accept loop's next wake-up). In a flood a line per
/// connection would cost more than the refusal and bury every other line.
struct LimitLog {
    what: String,
    max: usize,
    per_source: Option<usize>,
    timeouts: Option<ClientLimits>,
    state: Mutex<LimitLogState>,
    /// Where each event is counted too (the client listener's).
    metrics: Option<Arc<Metrics>>,
}

#[derive(Default)]
struct LimitLogState {
    /// When the last line went out.
    last_line: Option<Instant>,
    /// When the first event not yet reported happened.
    first_pending: Option<Instant>,
    counts: BTreeMap<Limited, u64>,
    /// The latest source counted, to name in the line.
    latest: Option<Source>,
}

impl LimitLog {
    fn new(
        what: String,
        max: usize,
        per_source: Option<usize>,
        timeouts: Option<ClientLimits>,
    ) -> Self {
        Self {
            what,
            max,
            per_source,
            timeouts,
            state: Mutex::new(LimitLogState::default()),
            metrics: None,
        }
    }

    fn state(&self) -> MutexGuard<'_, LimitLogState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts one connection `what` did something to (from `source`, if known).
    fn note(&self, what: Limited, source: Option<Source>) {
        if let Some(m) = &self.metrics {
            m.client_limited(match what {
                Limited::SourceQuota => ClientLimited::SourceQuota,
                Limited::Cap => ClientLimited::Cap,
                Limited::Handshake => ClientLimited::Handshake,
                Limited::Idle => ClientLimited::Idle,
            });
        }
        let now = Instant::now();
        let mut state = self.state();
        *state.counts.entry(what).or_insert(0) += 1;
        state.first_pending.get_or_insert(now);
        if source.is_some() {
            state.latest = source;
        }
        self.flush(&mut state, now);
    }

    /// Writes the pending counts if the last line is old enough.
    fn flush_if_due(&self) {
        let mut state = self.state();
        self.flush(&mut state, Instant::now());
    }

    fn flush(&self, state: &mut LimitLogState, now: Instant) {
        if state.counts.is_empty()
            || state
                .last_line
                .is_some_and(|t| now.duration_since(t) < LIMIT_LOG_INTERVAL)
        {
            return;
        }
        let parts: Vec<String> = state
            .counts
            .iter()
            .map(|(limited, n)| self.describe(*limited, *n))
            .collect();
        let mut line = format!("{}: {}", self.what, parts.join(", "));
        if let Some(source) = state.latest {
            line.push_str(&format!(" (latest from {source})"));
        }
        if let Some(first) = state.first_pending {
            let span = now.duration_since(first);
            if span >= Duration::from_millis(100) {
                line.push_str(&format!(" in the last {:.1} s", span.as_secs_f64()));
            }
        }
        let count = |l: Limited| state.counts.get(&l).copied().unwrap_or(0);
        tracing::warn!(
            listener = %self.what,
            refused_source_quota = count(Limited::SourceQuota),
            refused_cap = count(Limited::Cap),
            closed_handshake_timeout = count(Limited::Handshake),
            closed_idle_timeout = count(Limited::Idle),
            latest_source = state.latest.map(|s| s.to_string()),
            "{line}"
        );
        *state = LimitLogState {
            last_line: Some(now),
            ..LimitLogState::default()
        };
    }

    fn describe(&self, limited: Limited, n: u64) -> String {
        let s = if n == 1 { "" } else { "s" };
        let secs = |f: fn(&ClientLimits) -> Duration| {
            self.timeouts
                .map(|t| format!(" {} s", f(&t).as_secs()))
                .unwrap_or_default()
        };
        match limited {
            Limited::SourceQuota => format!(
                "refused {n} connection{s} over the per-source quota{}",
                self.per_source
                    .map(|q| format!(" of {q}"))
                    .unwrap_or_default()
            ),
            Limited::Cap => format!(
                "refused {n} connection{s} at the cap of {} open connections",
                self.max
            ),
            Limited::Handshake => format!(
                "closed {n} connection{s} that sent nothing within the handshake timeout{}",
                secs(|t| t.handshake_timeout)
            ),
            Limited::Idle => format!(
                "closed {n} connection{s} idle for the idle timeout{}",
                secs(|t| t.idle_timeout)
            ),
        }
    }
}

/// Waits for the client's first bytes, then connects it to the enclave and relays until both
/// are done or the connection has been idle for the idle timeout.
fn relay_one(
    id: u64,
    client: &Conn,
    pool: &EnclavePool,
    limits: &ClientLimits,
    shared: &Shared,
    peer: Peer<'_>,
) {
    // The enclave is connected only once the client has spoken (TLS: its hello): a socket that
    // says nothing costs the enclave nothing, and gives its slot here back after the timeout.
    let first = match first_bytes(client, limits.handshake_timeout) {
        Ok(Some(bytes)) => bytes,
        Ok(None) => return,
        Err(e) if is_timeout(&e) => {
            peer.log.note(Limited::Handshake, peer.source);
            return;
        }
        Err(e) => {
            if !ordinary_end(&e) {
                log(&format!("reading a client's first bytes: {e}"));
            }
            return;
        }
    };
    let (upstream, refused) = pool.connect(connect_enclave);
    if let Ok((_, lease)) = &upstream {
        shared
            .metrics
            .set_instance_up(pool.instance_id(lease.index), true);
    }
    for (index, e) in &refused {
        shared
            .metrics
            .set_instance_up(pool.instance_id(*index), false);
        if let Some(addr) = pool.addr(*index) {
            log(&format!(
                "enclave instance {} at {addr} refused a connection ({e}): skipped until it answers",
                index + 1
            ));
        }
    }
    let (upstream, _lease) = match upstream {
        Ok((conn, lease)) => (Ok(conn), Some(lease)),
        Err(e) => (Err(e), None),
    };
    let Some(upstream) = shared.connected(id, upstream, |e| {
        format!(
            "cannot reach the enclave (no instance answered): {e}; closing the client connection"
        )
    }) else {
        return;
    };
    let wrote = upstream
        .set_write_timeout(Some(limits.idle_timeout))
        .and_then(|()| Io(&*upstream).write_all(&first));
    let result = match wrote {
        Ok(()) => relay_idle(&**client, &*upstream, limits.idle_timeout),
        // The enclave closed before the client's first bytes reached it (it refused the
        // connection, or answered and went): what it sent before closing still reaches the client.
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
            ) =>
        {
            upstream
                .set_read_timeout(Some(limits.idle_timeout))
                .and_then(|()| io::copy(&mut Io(&*upstream), &mut Io(&**client)))
                .map(|_| ())
        }
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => {}
        Err(e) if is_idle_timeout(&e) => peer.log.note(Limited::Idle, peer.source),
        Err(e) if ordinary_end(&e) => {}
        Err(e) => log(&format!("relay ended: {e}")),
    }
}

/// Connects to one enclave instance.
fn connect_enclave(enclave: &EnclaveAddr) -> io::Result<Conn> {
    match enclave {
        EnclaveAddr::Unix(path) => UnixStream::connect(path).map(|s| Arc::new(s) as Conn),
        // Bounded by the kernel's vsock connect timeout (2 s by default).
        EnclaveAddr::Vsock { cid, port } => {
            VsockStream::connect_with_cid_port(*cid, *port).map(|s| Arc::new(s) as Conn)
        }
        // The same bound as the kernel's vsock connect timeout.
        EnclaveAddr::HybridVsock { path, port } => {
            crate::hybrid_vsock::connect(path, *port, Duration::from_secs(2))
                .map(|s| Arc::new(s) as Conn)
        }
    }
}

/// The client's first bytes, if it sends any within `timeout` (`None`: it closed first). A
/// timeout is the `WouldBlock`/`TimedOut` error of [`is_timeout`].
fn first_bytes(client: &Conn, timeout: Duration) -> io::Result<Option<Vec<u8>>> {
    client.set_read_timeout(Some(timeout))?;
    let mut buf = [0u8; FIRST_READ];
    loop {
        match client.recv(&mut buf) {
            Ok(0) => return Ok(None),
            Ok(n) => return Ok(Some(buf.get(..n).unwrap_or_default().to_vec())),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Connects an enclave's proxy connection to its destination (resolved now) and relays.
fn proxy_one(id: u64, inbound: &Conn, listen: &Inbound, to: &Destination, shared: &Shared) {
    let outbound = proxy::connect(to).map(|s| Arc::new(s) as Conn);
    let Some(outbound) = shared.connected(id, outbound, |e| {
        format!("proxy {listen} -> {to}: {e}; closing the inbound connection")
    }) else {
        return;
    };
    relay_logged(&format!("proxy {listen} -> {to}"), inbound, &outbound);
}

/// Relays and logs how it ended, unless it ended the ordinary way (EOF or the peer gone).
fn relay_logged(what: &str, a: &Conn, b: &Conn) {
    if let Err(e) = relay(&**a, &**b)
        && !ordinary_end(&e)
    {
        tracing::warn!(what, error = %e, "{what} ended: {e}");
    }
}

/// The ways a connection ends that need no log line: the peer went away.
fn ordinary_end(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::NotConnected
    )
}

fn accept_failed(name: &str, e: &io::Error) {
    if e.kind() != io::ErrorKind::Interrupted {
        tracing::warn!(listener = name, error = %e, "{name}: accept failed: {e}");
        std::thread::sleep(ACCEPT_BACKOFF);
    }
}

/// Puts a listener in non-blocking mode (the accept loop polls it).
fn nonblocking(listener: Box<dyn Listen>, what: &str) -> Result<Box<dyn Listen>> {
    listener
        .set_nonblocking(true)
        .map_err(|e| ParentError::io(format!("making {what} non-blocking"), &e))?;
    Ok(listener)
}

/// Binds a vsock listener on every CID at `port`.
fn bind_vsock(port: u32, what: &str) -> Result<VsockListener> {
    VsockListener::bind_with_cid_port(VMADDR_CID_ANY, port)
        .map_err(|e| ParentError::io(format!("binding {what}"), &e))
}

/// Binds a unix socket at `path`, replacing a stale socket file, and makes it mode 0600.
/// Returns the listener and the socket file's (device, inode).
fn bind_unix_socket(path: &Path) -> Result<(UnixListener, (u64, u64))> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if UnixStream::connect(path).is_ok() {
                return Err(ParentError::SocketInUse {
                    path: path.to_path_buf(),
                });
            }
            std::fs::remove_file(path).map_err(|e| {
                ParentError::io(format!("removing stale socket {}", path.display()), &e)
            })?;
        }
        Ok(_) => {
            return Err(ParentError::NotASocket {
                path: path.to_path_buf(),
            });
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(ParentError::io(format!("checking {}", path.display()), &e)),
    }
    let listener = UnixListener::bind(path)
        .map_err(|e| ParentError::io(format!("binding {}", path.display()), &e))?;
    // Between bind and chmod the socket has the umask's mode; keep its directory private (0700)
    // where other users share the host.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| ParentError::io(format!("chmod 0600 {}", path.display()), &e))?;
    let meta = std::fs::symlink_metadata(path)
        .map_err(|e| ParentError::io(format!("checking {}", path.display()), &e))?;
    Ok((listener, (meta.dev(), meta.ino())))
}

/// A warning in the parent's log (`crate::logging`) that has no fields beyond its line.
fn log(line: &str) {
    tracing::warn!("{line}");
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn sources_are_ipv4_addresses_and_ipv6_slash_64s() {
        let of = |s: &str| Source::of(s.parse().unwrap());
        assert_eq!(of("192.0.2.1"), Source::V4(Ipv4Addr::new(192, 0, 2, 1)));
        assert_ne!(of("192.0.2.1"), of("192.0.2.2"));
        // A listener on [::] sees IPv4 clients as mapped addresses: the same source.
        assert_eq!(of("::ffff:192.0.2.1"), of("192.0.2.1"));
        // One host's /64 is one source, whatever address it picks in it.
        assert_eq!(
            of("2001:db8:1:2::1"),
            of("2001:db8:1:2:ffff:ffff:ffff:ffff")
        );
        assert_ne!(of("2001:db8:1:2::1"), of("2001:db8:1:3::1"));
        assert_eq!(of("2001:db8:1:2::1").to_string(), "2001:db8:1:2::/64");
        assert_eq!(of("127.0.0.2").to_string(), "127.0.0.2");
    }
}
