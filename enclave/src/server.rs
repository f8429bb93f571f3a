//! The serving loop: accept, TLS inside, one frame in, one frame out.
//!
//! Limits ([`Limits`], the configuration's `[limits]`). The parent is untrusted and relays
//! anyone, so the enclave bounds by itself what connections can hold of it:
//!
//! * at most `max_connections` are served at once, one thread each; over the cap a connection is
//!   closed on accept, before a byte of it is read (threads are never unbounded);
//! * the TLS handshake must be over within `handshake_timeout` of the accept. It is a deadline
//!   for the whole handshake, not a per-read timeout, so a peer trickling bytes cannot stretch it;
//! * after the handshake every read and every write of the session is bounded by `idle_timeout`:
//!   a session whose peer neither sends nor reads for that long ends.
//!
//! Connections refused or ended by a limit are counted and logged at most once a second
//! ([`LimitLog`]), never one line each: in a flood the log line would cost more than the refusal.
//! Every connection event is also counted in the enclave's metrics ([`crate::telemetry`]).

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use cosigner_protocol::ProtocolError;
use cosigner_protocol::frame::{read_frame, write_frame};
use cosigner_protocol::wire::{self, ErrorKind, Request, Response, WireError};
use rustls::{ServerConfig, ServerConnection, StreamOwned};

use crate::service::{Service, SessionState};
use crate::telemetry::{self, ConnectionEvent};
use crate::tls::channel_binding;
use crate::transport::{Listener, Stream};

/// Default of `[limits] max_connections`: the parent's cap on its client listener, so that in
/// normal operation the parent's limits are the ones that bind and this one only stops a parent
/// that does not keep them.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Default of `[limits] handshake_timeout_seconds`.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default of `[limits] idle_timeout_seconds`: longer than the parent's default idle timeout
/// (120 s), so that a client normally meets the parent's; this one stops a parent that holds
/// silent connections open.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// At most one line per this long about connections refused or ended by a limit.
const LIMIT_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// What client connections may hold of the enclave (module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once; more are closed on accept.
    pub max_connections: usize,
    /// From accept to the end of the TLS handshake.
    pub handshake_timeout: Duration,
    /// Longest wait on the peer for one read or one write once the session is up.
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
        }
    }
}

/// Why a connection ended other than by the peer closing it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectionError {
    /// The TLS handshake was not over within the handshake timeout.
    #[error("no TLS handshake within {} s", .0.as_secs())]
    HandshakeTimeout(Duration),
    /// The peer neither sent nor read for the idle timeout.
    #[error("idle for {} s", .0.as_secs())]
    IdleTimeout(Duration),
    /// TLS failed (setup, the handshake's cryptography, the exporter).
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// The socket failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// A frame could not be read or written, or a response encoded.
    #[error("{0}")]
    Protocol(#[from] ProtocolError),
}

/// Accepts connections forever, one thread each, within `limits`.
pub fn serve(
    listener: Box<dyn Listener>,
    tls: Arc<ServerConfig>,
    service: Arc<Service>,
    limits: Limits,
) -> ! {
    let open = Arc::new(AtomicUsize::new(0));
    let log = Arc::new(LimitLog::new(limits));
    // Counts noted after a burst would otherwise wait for the next connection to be reported.
    let ticker = Arc::clone(&log);
    if let Err(e) = std::thread::Builder::new()
        .name("enclave-limit-log".into())
        .spawn(move || {
            loop {
                std::thread::sleep(LIMIT_LOG_INTERVAL);
                ticker.flush_if_due();
            }
        })
    {
        tracing::error!(
            error = %e,
            "no limit log thread ({e}); counts go out with new events"
        );
    }
    loop {
        match listener.accept() {
            Ok(stream) => {
                let Some(slot) = Slot::take(&open, limits.max_connections) else {
                    // Closed before a byte is read: a refusal costs an accept and a close.
                    drop(stream);
                    log.note(Limited::Cap);
                    continue;
                };
                let tls = tls.clone();
                let service = service.clone();
                let conn_log = Arc::clone(&log);
                let spawned = std::thread::Builder::new()
                    .name("enclave-conn".into())
                    .spawn(move || {
                        let _slot = slot;
                        telemetry::connection(ConnectionEvent::Accepted);
                        match serve_connection(stream, tls, &service, &limits) {
                            Ok(()) => {}
                            Err(ConnectionError::HandshakeTimeout(_)) => {
                                conn_log.note(Limited::Handshake);
                            }
                            Err(ConnectionError::IdleTimeout(_)) => conn_log.note(Limited::Idle),
                            Err(e) => {
                                telemetry::connection(ConnectionEvent::ClosedError);
                                tracing::info!(error = %e, "connection closed: {e}");
                            }
                        }
                    });
                // On failure the closure, with the stream and the slot, is dropped: the
                // connection is closed and its slot given back.
                if spawned.is_err() {
                    log.note(Limited::NoThread);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "accept failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Serves one client connection until it closes, misbehaves or meets a limit.
pub fn serve_connection(
    stream: Box<dyn Stream>,
    tls: Arc<ServerConfig>,
    service: &Service,
    limits: &Limits,
) -> Result<(), ConnectionError> {
    let conn = ServerConnection::new(tls)?;
    stream.set_write_timeout(Some(limits.handshake_timeout))?;
    let sock = Timed {
        stream,
        deadline: Instant::now().checked_add(limits.handshake_timeout),
        timed_out: false,
    };
    let mut tls = StreamOwned::new(conn, sock);
    while tls.conn.is_handshaking() {
        if let Err(e) = tls.conn.complete_io(&mut tls.sock) {
            if tls.sock.timed_out {
                return Err(ConnectionError::HandshakeTimeout(limits.handshake_timeout));
            }
            return Err(e.into());
        }
    }
    tls.sock.deadline = None;
    tls.sock
        .stream
        .set_read_timeout(Some(limits.idle_timeout))?;
    tls.sock
        .stream
        .set_write_timeout(Some(limits.idle_timeout))?;
    // Frame errors carry the IO error as text only: the wrapper's flag tells a timeout apart.
    let idle = |sock: &Timed, e: ProtocolError| {
        if sock.timed_out {
            ConnectionError::IdleTimeout(limits.idle_timeout)
        } else {
            e.into()
        }
    };
    let mut session = SessionState::new(channel_binding(&tls.conn)?);
    loop {
        let frame = match read_frame(&mut tls) {
            Ok(Some(frame)) => frame,
            Ok(None) => return Ok(()),
            Err(e) => return Err(idle(&tls.sock, e)),
        };
        let response = match wire::decode::<Request>(&frame) {
            Ok(request) => service.handle(&mut session, request),
            Err(e) => {
                // A malformed frame ends the session: answer why, then close.
                let answer = Response::Error(WireError::new(ErrorKind::BadRequest, e.to_string()));
                write_frame(&mut tls, &wire::encode(&answer)?).map_err(|e| idle(&tls.sock, e))?;
                tls.conn.send_close_notify();
                let _ = tls.conn.complete_io(&mut tls.sock);
                return Ok(());
            }
        };
        write_frame(&mut tls, &wire::encode(&response)?).map_err(|e| idle(&tls.sock, e))?;
    }
}

/// The connection's socket under TLS: while `deadline` is set (the handshake), each read may
/// wait only for what is left of it; and it remembers whether a read or write timed out, which
/// the errors above it no longer say.
struct Timed {
    stream: Box<dyn Stream>,
    deadline: Option<Instant>,
    timed_out: bool,
}

impl Timed {
    fn watch<T>(&mut self, result: io::Result<T>) -> io::Result<T> {
        if let Err(e) = &result
            && matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            )
        {
            self.timed_out = true;
        }
        result
    }
}

impl Read for Timed {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(deadline) = self.deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                self.timed_out = true;
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the TLS handshake's deadline passed",
                ));
            }
            self.stream.set_read_timeout(Some(left))?;
        }
        let result = self.stream.read(buf);
        self.watch(result)
    }
}

impl Write for Timed {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let result = self.stream.write(buf);
        self.watch(result)
    }
    fn flush(&mut self) -> io::Result<()> {
        let result = self.stream.flush();
        self.watch(result)
    }
}

/// One of the `max` connection slots; given back when dropped.
struct Slot(Arc<AtomicUsize>);

impl Slot {
    /// A slot, if fewer than `max` are taken.
    fn take(open: &Arc<AtomicUsize>, max: usize) -> Option<Slot> {
        let slot = open
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(Arc::clone(open)));
        if slot.is_some() {
            telemetry::connections_open(1);
        }
        slot
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
        telemetry::connections_open(-1);
    }
}

/// What a limit did to a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Limited {
    /// Closed on accept: `max_connections` were open.
    Cap,
    /// Closed on accept: no thread could be started for it.
    NoThread,
    /// Closed: no TLS handshake within the handshake timeout.
    Handshake,
    /// Closed: idle for the idle timeout.
    Idle,
}

/// Counts what the limits did and reports it on one line at most every [`LIMIT_LOG_INTERVAL`]:
/// the first event after a quiet second at once, the rest of a burst as counts.
struct LimitLog {
    limits: Limits,
    state: Mutex<LimitLogState>,
}

#[derive(Default)]
struct LimitLogState {
    last_line: Option<Instant>,
    first_pending: Option<Instant>,
    /// Counts, in the order of [`Limited`]'s variants.
    cap: u64,
    no_thread: u64,
    handshake: u64,
    idle: u64,
}

impl LimitLog {
    fn new(limits: Limits) -> Self {
        Self {
            limits,
            state: Mutex::new(LimitLogState::default()),
        }
    }

    fn state(&self) -> MutexGuard<'_, LimitLogState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn note(&self, what: Limited) {
        telemetry::connection(match what {
            Limited::Cap => ConnectionEvent::RefusedCap,
            Limited::NoThread => ConnectionEvent::RefusedNoThread,
            Limited::Handshake => ConnectionEvent::ClosedHandshakeTimeout,
            Limited::Idle => ConnectionEvent::ClosedIdle,
        });
        let now = Instant::now();
        let mut state = self.state();
        let count = match what {
            Limited::Cap => &mut state.cap,
            Limited::NoThread => &mut state.no_thread,
            Limited::Handshake => &mut state.handshake,
            Limited::Idle => &mut state.idle,
        };
        *count = count.saturating_add(1);
        state.first_pending.get_or_insert(now);
        self.flush(&mut state, now);
    }

    fn flush_if_due(&self) {
        let mut state = self.state();
        self.flush(&mut state, Instant::now());
    }

    fn flush(&self, state: &mut LimitLogState, now: Instant) {
        let Some(first) = state.first_pending else {
            return;
        };
        if state
            .last_line
            .is_some_and(|t| now.duration_since(t) < LIMIT_LOG_INTERVAL)
        {
            return;
        }
        let l = &self.limits;
        let plural = |n: u64| if n == 1 { "" } else { "s" };
        let parts: Vec<String> = [
            (
                state.cap,
                format!("at the cap of {} open connections", l.max_connections),
            ),
            (state.no_thread, "for want of a thread".to_owned()),
            (
                state.handshake,
                format!(
                    "without a TLS handshake within {} s",
                    l.handshake_timeout.as_secs()
                ),
            ),
            (
                state.idle,
                format!("idle for {} s", l.idle_timeout.as_secs()),
            ),
        ]
        .into_iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, why)| format!("closed {n} connection{} {why}", plural(n)))
        .collect();
        let span = now.duration_since(first);
        let over = if span >= Duration::from_millis(100) {
            format!(" in the last {:.1} s", span.as_secs_f64())
        } else {
            String::new()
        };
        tracing::warn!(
            closed_cap = state.cap,
            closed_no_thread = state.no_thread,
            closed_handshake_timeout = state.handshake,
            closed_idle_timeout = state.idle,
            "{}{over}",
            parts.join(", ")
        );
        *state = LimitLogState {
            last_line: Some(now),
            ..LimitLogState::default()
        };
    }
}
