//! The running parent: a TCP listener for clients, relayed to the enclave, and a unix socket on
//! which the enclave reaches the blob store. One thread per listener, one per connection.
//!
//! Limits: at most [`MAX_CONNECTIONS`] connections per listener at once; further ones are closed
//! on accept (a client flood cannot exhaust the parent's threads). The store socket is created
//! mode 0600: only the parent's user (the enclave host's) can reach the store.
//!
//! Shutdown ([`RunningParent::shutdown`], or dropping it): the accept loops are stopped (each is
//! woken by a connection to itself), every open connection is shut down, all threads are joined,
//! and the store socket file is removed if it is still ours.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::config::{Config, EnclaveAddr};
use crate::error::{ParentError, Result};
use crate::relay::relay;
use crate::store::{SqliteStore, Store};
use crate::store_server::serve_store;

/// Most connections served at once, per listener.
pub const MAX_CONNECTIONS: usize = 1024;
/// How long shutdown waits to connect to its own listeners to wake them.
const WAKE_TIMEOUT: Duration = Duration::from_secs(1);
/// Pause after a failed `accept` (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// A parent ready to start: its configuration and its store.
pub struct Parent {
    config: Config,
    store: Arc<dyn Store>,
}

impl Parent {
    /// A parent on `config`, opening (or creating) the SQLite store at `config.database`.
    pub fn new(config: Config) -> Result<Parent> {
        let store = SqliteStore::open(&config.database)?;
        Ok(Self::with_store(config, Arc::new(store)))
    }

    /// A parent on `config` serving `store` (`config.database` is not used).
    pub fn with_store(config: Config, store: Arc<dyn Store>) -> Parent {
        Parent { config, store }
    }

    /// Binds the client listener and the store socket and starts accepting on both.
    ///
    /// A stale store socket file (no process behind it) is replaced; a live one is
    /// [`ParentError::SocketInUse`], and anything that is not a socket is [`ParentError::NotASocket`].
    /// An enclave on vsock is [`ParentError::VsockUnavailable`] in this build.
    pub fn start(self) -> Result<RunningParent> {
        let enclave = match &self.config.enclave {
            EnclaveAddr::Unix(path) => path.clone(),
            EnclaveAddr::Vsock { cid, port } => {
                return Err(ParentError::VsockUnavailable {
                    cid: *cid,
                    port: *port,
                });
            }
        };
        let tcp = TcpListener::bind(self.config.listen)
            .map_err(|e| ParentError::io(format!("binding {}", self.config.listen), &e))?;
        let client_addr = tcp
            .local_addr()
            .map_err(|e| ParentError::io("reading the bound address", &e))?;
        let store_socket = self.config.store_socket.clone();
        let (unix, socket_id) = bind_store_socket(&store_socket)?;

        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            next_id: AtomicU64::new(0),
            conns: Mutex::new(Conns::default()),
        });
        let spawn = |name: &str, body: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.to_owned())
                .spawn(body)
                .map_err(|e| ParentError::io(format!("spawning {name}"), &e))
        };
        let relay_loop = {
            let shared = Arc::clone(&shared);
            spawn(
                "parent-accept-tcp",
                Box::new(move || accept_clients(&tcp, &enclave, &shared)),
            )?
        };
        let mut running = RunningParent {
            client_addr,
            store_socket,
            socket_id,
            shared: Arc::clone(&shared),
            accept_threads: vec![relay_loop],
        };
        let store = self.store;
        // On failure `running` is dropped, which stops the client loop again.
        let store_loop = spawn(
            "parent-accept-store",
            Box::new(move || accept_store(&unix, &store, &shared)),
        )?;
        running.accept_threads.push(store_loop);
        Ok(running)
    }
}

/// A started parent. Dropping it shuts it down.
pub struct RunningParent {
    client_addr: SocketAddr,
    store_socket: PathBuf,
    /// Device and inode of the socket file we bound, to remove only our own.
    socket_id: (u64, u64),
    shared: Arc<Shared>,
    accept_threads: Vec<JoinHandle<()>>,
}

impl RunningParent {
    /// The address clients connect to (the actual port when the configuration said 0).
    pub fn client_addr(&self) -> SocketAddr {
        self.client_addr
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

    /// Stops accepting, closes every open connection, joins all threads, removes the socket file.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if self.accept_threads.is_empty() {
            return;
        }
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake each blocked accept with a connection of our own; it sees the flag and returns.
        // If a wake fails, that thread is left to end with the process rather than hang here.
        let tcp_woken = TcpStream::connect_timeout(&wake_addr(self.client_addr), WAKE_TIMEOUT);
        let unix_woken = UnixStream::connect(&self.store_socket);
        let mut woken = [tcp_woken.is_ok(), unix_woken.is_ok()].into_iter();
        for t in self.accept_threads.drain(..) {
            if woken.next().unwrap_or(false) {
                let _ = t.join();
            }
        }
        let threads = {
            let mut conns = self.shared.conns();
            for streams in conns.open.values() {
                for s in streams {
                    s.shutdown();
                }
            }
            std::mem::take(&mut conns.threads)
        };
        for t in threads {
            let _ = t.join();
        }
        if let Ok(meta) = std::fs::symlink_metadata(&self.store_socket)
            && (meta.dev(), meta.ino()) == self.socket_id
        {
            let _ = std::fs::remove_file(&self.store_socket);
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
}

#[derive(Default)]
struct Conns {
    /// Open connections: clones of their sockets, to shut them down on shutdown.
    open: HashMap<u64, Vec<Socket>>,
    /// Open relay and store connections, counted per listener for [`MAX_CONNECTIONS`].
    relays: usize,
    stores: usize,
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
}

enum Socket {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Socket {
    fn shutdown(&self) {
        let _ = match self {
            Socket::Tcp(s) => s.shutdown(Shutdown::Both),
            Socket::Unix(s) => s.shutdown(Shutdown::Both),
        };
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Relay,
    Store,
}

/// Registers a connection and runs `body` for it on a thread of its own; `None` (and the
/// connection is dropped) when stopping or at the connection limit.
fn spawn_connection(
    shared: &Arc<Shared>,
    kind: Kind,
    socket: Socket,
    body: impl FnOnce(u64) + Send + 'static,
) {
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let mut conns = shared.conns();
    if shared.stopping() {
        return;
    }
    conns.threads.retain(|t| !t.is_finished());
    let count = match kind {
        Kind::Relay => &mut conns.relays,
        Kind::Store => &mut conns.stores,
    };
    if *count >= MAX_CONNECTIONS {
        log(&format!(
            "refusing a connection: {MAX_CONNECTIONS} connections already open"
        ));
        return;
    }
    *count += 1;
    conns.open.insert(id, vec![socket]);
    let done = Arc::clone(shared);
    let thread = std::thread::Builder::new()
        .name(format!("parent-conn-{id}"))
        .spawn(move || {
            body(id);
            let mut conns = done.conns();
            conns.open.remove(&id);
            match kind {
                Kind::Relay => conns.relays = conns.relays.saturating_sub(1),
                Kind::Store => conns.stores = conns.stores.saturating_sub(1),
            }
        });
    match thread {
        Ok(t) => conns.threads.push(t),
        Err(e) => {
            log(&format!("cannot spawn a connection thread: {e}"));
            conns.open.remove(&id);
            let count = match kind {
                Kind::Relay => &mut conns.relays,
                Kind::Store => &mut conns.stores,
            };
            *count = count.saturating_sub(1);
        }
    }
}

fn accept_clients(listener: &TcpListener, enclave: &Path, shared: &Arc<Shared>) {
    loop {
        let accepted = listener.accept();
        if shared.stopping() {
            return;
        }
        let client = match accepted {
            Ok((client, _)) => client,
            Err(e) => {
                accept_failed(&e);
                continue;
            }
        };
        let Ok(registered) = client.try_clone() else {
            continue;
        };
        let enclave = enclave.to_path_buf();
        let conn_shared = Arc::clone(shared);
        spawn_connection(shared, Kind::Relay, Socket::Tcp(registered), move |id| {
            relay_one(id, client, &enclave, &conn_shared);
        });
    }
}

/// Connects a client to the enclave and relays until both are done.
fn relay_one(id: u64, client: TcpStream, enclave: &Path, shared: &Shared) {
    // TLS records are small and interactive: do not hold them back for Nagle.
    let _ = client.set_nodelay(true);
    let upstream = match UnixStream::connect(enclave) {
        Ok(s) => s,
        Err(e) => {
            log(&format!(
                "cannot reach the enclave at {}: {e}; closing the client connection",
                enclave.display()
            ));
            return;
        }
    };
    match upstream.try_clone() {
        Ok(clone) => {
            let mut conns = shared.conns();
            // Shutdown may have swept the open connections between our accept and now.
            if shared.stopping() {
                return;
            }
            if let Some(sockets) = conns.open.get_mut(&id) {
                sockets.push(Socket::Unix(clone));
            }
        }
        Err(e) => {
            log(&format!("cannot register the enclave connection: {e}"));
            return;
        }
    }
    if let Err(e) = relay(client, upstream)
        && !matches!(
            e.kind(),
            io::ErrorKind::BrokenPipe
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::NotConnected
        )
    {
        log(&format!("relay ended: {e}"));
    }
}

fn accept_store(listener: &UnixListener, store: &Arc<dyn Store>, shared: &Arc<Shared>) {
    loop {
        let accepted = listener.accept();
        if shared.stopping() {
            return;
        }
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                accept_failed(&e);
                continue;
            }
        };
        let Ok(registered) = stream.try_clone() else {
            continue;
        };
        let store = Arc::clone(store);
        spawn_connection(shared, Kind::Store, Socket::Unix(registered), move |_| {
            if let Err(e) = serve_store(stream, store.as_ref()) {
                log(&format!("store connection ended: {e}"));
            }
        });
    }
}

fn accept_failed(e: &io::Error) {
    if e.kind() != io::ErrorKind::Interrupted {
        log(&format!("accept failed: {e}"));
        std::thread::sleep(ACCEPT_BACKOFF);
    }
}

/// Binds the store socket at `path`, replacing a stale socket file, and makes it mode 0600.
/// Returns the listener and the socket file's (device, inode).
fn bind_store_socket(path: &Path) -> Result<(UnixListener, (u64, u64))> {
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

/// Where to connect to reach a listener bound to `addr` (an unspecified address is reached on
/// loopback).
fn wake_addr(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}

/// One line on stderr: the parent's log.
fn log(line: &str) {
    eprintln!("cosigner-parent: {line}");
}
