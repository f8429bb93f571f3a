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
//! Shutdown ([`RunningParent::shutdown`], or dropping it): the accept loops are woken (they poll
//! their listener together with a stop signal, which works for vsock listeners too, where
//! connecting to oneself does not), every open connection is shut down, all threads are joined,
//! and the unix socket files are removed if they are still ours.

use std::collections::HashMap;
use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use vsock::{VMADDR_CID_ANY, VsockListener, VsockStream};

use crate::aws_credentials::CredentialsProvider;
use crate::config::{Config, EnclaveAddr};
use crate::error::{ParentError, Result};
use crate::mailbox::{MailboxListener, MailboxStore, is_ordinary_end, serve_mailbox};
use crate::proxy::{self, Destination, Inbound};
use crate::relay::{Conn, Io, Listen, relay};
use crate::store::{SqliteStore, Store};
use crate::store_server::serve_store_with;

/// Most connections served at once, per listener (proxies have their own, lower, cap).
pub const MAX_CONNECTIONS: usize = 1024;
/// Pause after a failed `accept` (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// Longest an accept loop sleeps in `poll` before it looks at the stop flag again (the stop
/// signal normally wakes it at once; this only bounds a lost wake-up).
const POLL_INTERVAL_MS: u16 = 500;

/// A parent ready to start: its configuration and its store.
pub struct Parent {
    config: Config,
    store: Arc<dyn Store>,
    mailbox: Option<Arc<MailboxStore>>,
}

impl Parent {
    /// A parent on `config`, opening (or creating) the SQLite store at `config.database`, and
    /// the mailbox's tables in it when `config.mailbox_listen` is set.
    pub fn new(config: Config) -> Result<Parent> {
        let store = SqliteStore::open(&config.database)?;
        let mailbox = match config.mailbox_listen {
            Some(_) => Some(Arc::new(MailboxStore::open(&config.database)?)),
            None => None,
        };
        Ok(Parent {
            mailbox,
            ..Self::with_store(config, Arc::new(store))
        })
    }

    /// A parent on `config` serving `store` (`config.database` is not used, except by the
    /// mailbox if `config.mailbox_listen` is set and [`Parent::with_mailbox`] gave none).
    pub fn with_store(config: Config, store: Arc<dyn Store>) -> Parent {
        Parent {
            config,
            store,
            mailbox: None,
        }
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
        } = self;
        for p in &config.proxies {
            proxy::check_allowed(&config.proxy_allow, &p.to)?;
        }
        let (wake_rx, wake_tx) =
            UnixStream::pair().map_err(|e| ParentError::io("creating the stop signal", &e))?;
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            next_id: AtomicU64::new(0),
            conns: Mutex::new(Conns::default()),
            wake_rx,
            wake_tx,
        });
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
            shared,
            accept_threads: Vec::new(),
            stopped: false,
        };
        let mut loops: Vec<Loop> = vec![Loop {
            name: "parent-accept-tcp".into(),
            listener: nonblocking(Box::new(tcp), &config.listen.to_string())?,
            max: MAX_CONNECTIONS,
            handler: Handler::Relay(config.enclave.clone()),
        }];
        let credentials = config
            .aws_credentials
            .clone()
            .map(|c| Arc::new(CredentialsProvider::new(c)));
        if let Some(addr) = config.mailbox_listen {
            let mailbox = match mailbox {
                Some(m) => m,
                None => Arc::new(MailboxStore::open(&config.database)?),
            };
            let tcp = TcpListener::bind(addr)
                .map_err(|e| ParentError::io(format!("binding the mailbox on {addr}"), &e))?;
            running.mailbox_addr = Some(
                tcp.local_addr()
                    .map_err(|e| ParentError::io("reading the mailbox's bound address", &e))?,
            );
            loops.push(Loop {
                name: "parent-accept-mailbox".into(),
                listener: nonblocking(Box::new(MailboxListener(tcp)), &addr.to_string())?,
                max: MAX_CONNECTIONS,
                handler: Handler::Mailbox(mailbox),
            });
        }
        let unix = running.bind_unix(&config.store_socket)?;
        loops.push(Loop {
            name: "parent-accept-store".into(),
            listener: nonblocking(Box::new(unix), &config.store_socket.display().to_string())?,
            max: MAX_CONNECTIONS,
            handler: Handler::Store(Arc::clone(&store), credentials.clone()),
        });
        if let Some(port) = config.store_vsock_port {
            let what = format!("the store listener on vsock port {port}");
            let listener = bind_vsock(port, &what)?;
            loops.push(Loop {
                name: "parent-accept-store-vsock".into(),
                listener: nonblocking(Box::new(listener), &what)?,
                max: MAX_CONNECTIONS,
                handler: Handler::Store(Arc::clone(&store), credentials.clone()),
            });
        }
        for (i, p) in config.proxies.iter().enumerate() {
            let listener: Box<dyn Listen> = match &p.listen {
                Inbound::Unix(path) => Box::new(running.bind_unix(path)?),
                Inbound::Vsock { port } => Box::new(bind_vsock(
                    *port,
                    &format!("the proxy listener on vsock port {port}"),
                )?),
            };
            loops.push(Loop {
                name: format!("parent-accept-proxy-{i}"),
                listener: nonblocking(listener, &p.listen.to_string())?,
                max: p.max_connections,
                handler: Handler::Proxy {
                    listen: p.listen.clone(),
                    to: p.to.clone(),
                },
            });
        }
        running.shared.conns().per_listener = vec![0; loops.len()];
        for (slot, l) in loops.into_iter().enumerate() {
            let shared = Arc::clone(&running.shared);
            let name = l.name.clone();
            let thread = std::thread::Builder::new()
                .name(name.clone())
                .spawn(move || accept_loop(l, slot, &shared))
                .map_err(|e| ParentError::io(format!("spawning {name}"), &e))?;
            running.accept_threads.push(thread);
        }
        Ok(running)
    }
}

/// A started parent. Dropping it shuts it down.
pub struct RunningParent {
    client_addr: SocketAddr,
    mailbox_addr: Option<SocketAddr>,
    store_socket: PathBuf,
    /// The unix socket files we bound, with their (device, inode), to remove only our own.
    socket_files: Vec<(PathBuf, (u64, u64))>,
    shared: Arc<Shared>,
    accept_threads: Vec<JoinHandle<()>>,
    stopped: bool,
}

impl RunningParent {
    /// The address clients connect to (the actual port when the configuration said 0).
    pub fn client_addr(&self) -> SocketAddr {
        self.client_addr
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

    /// Adds a second socket (the enclave's, the proxy destination's) to connection `id`, so that
    /// shutdown closes it too. `false` when shutting down: the caller gives up.
    fn register(&self, id: u64, socket: &Conn) -> bool {
        let mut conns = self.conns();
        // Shutdown may have swept the open connections between our accept and now.
        if self.stopping() {
            return false;
        }
        if let Some(sockets) = conns.open.get_mut(&id) {
            sockets.push(Arc::clone(socket));
        }
        true
    }
}

/// One listener and what its connections are for.
struct Loop {
    name: String,
    listener: Box<dyn Listen>,
    max: usize,
    handler: Handler,
}

enum Handler {
    /// Relay clients to the enclave.
    Relay(EnclaveAddr),
    /// Serve the enclave's store requests (and its AWS credentials, if configured).
    Store(Arc<dyn Store>, Option<Arc<CredentialsProvider>>),
    /// Relay the enclave to a fixed outside destination.
    Proxy { listen: Inbound, to: Destination },
    /// Serve the members' mailbox.
    Mailbox(Arc<MailboxStore>),
}

impl Handler {
    fn serve(&self, id: u64, conn: &Conn, shared: &Shared) {
        match self {
            Handler::Relay(enclave) => relay_one(id, conn, enclave, shared),
            Handler::Store(store, credentials) => {
                if let Err(e) =
                    serve_store_with(Io(&**conn), store.as_ref(), credentials.as_deref())
                {
                    log(&format!("store connection ended: {e}"));
                }
            }
            Handler::Proxy { listen, to } => proxy_one(id, conn, listen, to, shared),
            Handler::Mailbox(mailbox) => {
                if let Err(e) = serve_mailbox(Io(&**conn), mailbox)
                    && !is_ordinary_end(&e)
                {
                    log(&format!("mailbox connection ended: {e}"));
                }
            }
        }
    }
}

/// Waits for connections on `l` until shutdown, handing each to a connection thread.
fn accept_loop(l: Loop, slot: usize, shared: &Arc<Shared>) {
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
        if shared.stopping() {
            return;
        }
        match l.listener.accept() {
            Ok(conn) => {
                let handler = Arc::clone(&handler);
                let conn_shared = Arc::clone(shared);
                spawn_connection(shared, slot, l.max, &conn, move |id, conn| {
                    handler.serve(id, conn, &conn_shared);
                });
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

/// Registers a connection and runs `body` for it on a thread of its own; the connection is
/// dropped (closed) instead when stopping or when its listener has `max` open already.
fn spawn_connection(
    shared: &Arc<Shared>,
    slot: usize,
    max: usize,
    conn: &Conn,
    body: impl FnOnce(u64, &Conn) + Send + 'static,
) {
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let mut conns = shared.conns();
    if shared.stopping() {
        return;
    }
    conns.threads.retain(|t| !t.is_finished());
    let Some(count) = conns.per_listener.get_mut(slot) else {
        return;
    };
    if *count >= max {
        log(&format!(
            "refusing a connection: {max} connections already open on this listener"
        ));
        return;
    }
    *count += 1;
    conns.open.insert(id, vec![Arc::clone(conn)]);
    let done = Arc::clone(shared);
    let mine = Arc::clone(conn);
    let thread = std::thread::Builder::new()
        .name(format!("parent-conn-{id}"))
        .spawn(move || {
            body(id, &mine);
            // Close now, not when the registry's clone goes: the peer must see the end.
            let _ = mine.shutdown(std::net::Shutdown::Both);
            let mut conns = done.conns();
            conns.open.remove(&id);
            if let Some(count) = conns.per_listener.get_mut(slot) {
                *count = count.saturating_sub(1);
            }
        });
    match thread {
        Ok(t) => conns.threads.push(t),
        Err(e) => {
            log(&format!("cannot spawn a connection thread: {e}"));
            conns.open.remove(&id);
            if let Some(count) = conns.per_listener.get_mut(slot) {
                *count = count.saturating_sub(1);
            }
        }
    }
}

/// Connects a client to the enclave and relays until both are done.
fn relay_one(id: u64, client: &Conn, enclave: &EnclaveAddr, shared: &Shared) {
    let upstream: io::Result<Conn> = match enclave {
        EnclaveAddr::Unix(path) => UnixStream::connect(path).map(|s| Arc::new(s) as Conn),
        // Bounded by the kernel's vsock connect timeout (2 s by default).
        EnclaveAddr::Vsock { cid, port } => {
            VsockStream::connect_with_cid_port(*cid, *port).map(|s| Arc::new(s) as Conn)
        }
    };
    let upstream = match upstream {
        Ok(s) => s,
        Err(e) => {
            log(&format!(
                "cannot reach the enclave at {enclave}: {e}; closing the client connection"
            ));
            return;
        }
    };
    if !shared.register(id, &upstream) {
        return;
    }
    relay_logged("relay", client, &upstream);
}

/// Connects an enclave's proxy connection to its destination (resolved now) and relays.
fn proxy_one(id: u64, inbound: &Conn, listen: &Inbound, to: &Destination, shared: &Shared) {
    let outbound = match proxy::connect(to) {
        Ok(s) => Arc::new(s) as Conn,
        Err(e) => {
            log(&format!(
                "proxy {listen} -> {to}: {e}; closing the inbound connection"
            ));
            return;
        }
    };
    if !shared.register(id, &outbound) {
        return;
    }
    relay_logged(&format!("proxy {listen} -> {to}"), inbound, &outbound);
}

/// Relays and logs how it ended, unless it ended the ordinary way (EOF or the peer gone).
fn relay_logged(what: &str, a: &Conn, b: &Conn) {
    if let Err(e) = relay(&**a, &**b)
        && !matches!(
            e.kind(),
            io::ErrorKind::BrokenPipe
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::NotConnected
        )
    {
        log(&format!("{what} ended: {e}"));
    }
}

fn accept_failed(name: &str, e: &io::Error) {
    if e.kind() != io::ErrorKind::Interrupted {
        log(&format!("{name}: accept failed: {e}"));
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

/// One line on stderr: the parent's log.
fn log(line: &str) {
    eprintln!("cosigner-parent: {line}");
}
