//! Streams, listeners, and relaying one connection byte for byte.
//!
//! The parent moves bytes between three kinds of socket: TCP (clients; the proxy's destination),
//! unix (local runs and tests) and vsock (the enclave in a Nitro deployment). [`Duplex`] is what
//! the relay and the store server need of a connected socket, [`Listen`] what the accept loops
//! need of a listening one; both are implemented for the std sockets and the `vsock` crate's, so
//! the code above them is one path, which the tests run on unix and TCP sockets (there is no vsock
//! loopback on the development machines) and production runs on vsock.
//!
//! The relayed bytes are TLS between the client and the enclave: the relay never parses, buffers
//! beyond a copy buffer, or terminates them, and it could not read them if it tried. Whatever it
//! might do to them (drop, reorder, flip) breaks the TLS record MACs and is detected at the ends.
//!
//! Closing: each direction is copied by its own thread. When one side finishes sending (EOF), the
//! relay half-closes the other side's write direction, so the peer sees the same EOF while the
//! opposite direction keeps flowing (TLS `close_notify` and the last answer still get through).
//! When a side fails (reset, broken pipe), both sockets are shut down in both directions, which
//! ends the other thread at once. [`relay`] returns when both directions are done.
//!
//! Idle connections ([`relay_idle`], the client listener's): both sockets get a read and a write
//! timeout, and the two directions share the time of the last byte moved. A direction whose read
//! times out looks at that time: if the other direction moved bytes meanwhile it waits for the
//! rest of the period, else the connection has been silent both ways for the whole period and is
//! shut down ([`io::ErrorKind::TimedOut`], carrying [`IdleTimeout`]). A write that cannot
//! progress for the period (a peer that stopped reading) ends it the same way. The proxies use
//! [`relay`], without timeouts: their peers are the enclave and an allowlisted service.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use vsock::{VsockListener, VsockStream};

/// A connected stream socket that can be read, written and shut down through a shared reference,
/// so that the relay's two threads and the parent's shutdown use one descriptor (no `dup`: one
/// file descriptor per socket, whatever the number of users).
pub trait Duplex: Send + Sync {
    /// Reads into `buf` (`Ok(0)` at end of stream).
    fn recv(&self, buf: &mut [u8]) -> io::Result<usize>;
    /// Writes from `buf`.
    fn send(&self, buf: &[u8]) -> io::Result<usize>;
    /// Shuts down one or both directions.
    fn shutdown(&self, how: Shutdown) -> io::Result<()>;
    /// Bounds each blocking read (`None`: wait for ever); a read that waited this long fails
    /// with `WouldBlock` or `TimedOut`. Zero is refused (`InvalidInput`).
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()>;
    /// Bounds each blocking write, like [`Duplex::set_read_timeout`] for reads.
    fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()>;
}

macro_rules! duplex {
    ($t:ty) => {
        impl Duplex for $t {
            fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
                let mut this: &$t = self;
                this.read(buf)
            }
            fn send(&self, buf: &[u8]) -> io::Result<usize> {
                let mut this: &$t = self;
                this.write(buf)
            }
            fn shutdown(&self, how: Shutdown) -> io::Result<()> {
                <$t>::shutdown(self, how)
            }
            fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
                <$t>::set_read_timeout(self, timeout)
            }
            fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
                <$t>::set_write_timeout(self, timeout)
            }
        }
    };
}
duplex!(TcpStream);
duplex!(UnixStream);
duplex!(VsockStream);

/// [`Read`] and [`Write`] on a shared [`Duplex`].
pub struct Io<'a, D: ?Sized>(pub &'a D);

impl<D: Duplex + ?Sized> Read for Io<'_, D> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.recv(buf)
    }
}

impl<D: Duplex + ?Sized> Write for Io<'_, D> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.send(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A connected socket of any kind.
pub type Conn = Arc<dyn Duplex>;

/// A listening socket in non-blocking mode: the accept loops wait on [`Listen::fd`] with `poll`
/// (together with the parent's stop signal) and then [`Listen::accept`].
pub trait Listen: Send {
    /// The descriptor to poll for readability.
    fn fd(&self) -> BorrowedFd<'_>;
    /// Sets or clears non-blocking mode.
    fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()>;
    /// Accepts one connection (`WouldBlock` when none is pending). The connection is in blocking
    /// mode; TCP ones have Nagle disabled (TLS records are small and interactive).
    fn accept(&self) -> io::Result<Conn>;
    /// Like [`Listen::accept`], with the peer's IP address where there is one (TCP), for the
    /// per-source quota. By default: none.
    fn accept_from(&self) -> io::Result<(Conn, Option<IpAddr>)> {
        self.accept().map(|c| (c, None))
    }
}

impl Listen for TcpListener {
    fn fd(&self) -> BorrowedFd<'_> {
        self.as_fd()
    }
    fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        TcpListener::set_nonblocking(self, nonblocking)
    }
    fn accept(&self) -> io::Result<Conn> {
        self.accept_from().map(|(c, _)| c)
    }
    fn accept_from(&self) -> io::Result<(Conn, Option<IpAddr>)> {
        let (s, peer) = TcpListener::accept(self)?;
        s.set_nonblocking(false)?;
        s.set_nodelay(true)?;
        Ok((Arc::new(s), Some(peer.ip())))
    }
}

/// [`Listen`] for the listeners without a peer IP (unix, vsock): the same inherent methods on
/// each type, with no trait of std or `vsock` to be generic over.
macro_rules! listen {
    ($t:ty) => {
        impl Listen for $t {
            fn fd(&self) -> BorrowedFd<'_> {
                self.as_fd()
            }
            fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
                <$t>::set_nonblocking(self, nonblocking)
            }
            fn accept(&self) -> io::Result<Conn> {
                let (s, _) = <$t>::accept(self)?;
                s.set_nonblocking(false)?;
                Ok(Arc::new(s))
            }
        }
    };
}
listen!(UnixListener);
listen!(VsockListener);

/// Copies bytes from `client` to `server` and back, each direction on its own thread, until both
/// directions have ended (see the module docs). Returns the first error of either direction; an
/// error ends the whole relay.
pub fn relay<A: Duplex + ?Sized, B: Duplex + ?Sized>(client: &A, server: &B) -> io::Result<()> {
    relay_watched(client, server, None)
}

/// Like [`relay`], and ends the relay when no byte moved either way for `idle` (module docs):
/// then it returns a [`io::ErrorKind::TimedOut`] error carrying [`IdleTimeout`] (see
/// [`is_idle_timeout`]). Sets both sockets' read and write timeouts.
pub fn relay_idle<A: Duplex + ?Sized, B: Duplex + ?Sized>(
    client: &A,
    server: &B,
    idle: Duration,
) -> io::Result<()> {
    client.set_read_timeout(Some(idle))?;
    client.set_write_timeout(Some(idle))?;
    server.set_read_timeout(Some(idle))?;
    server.set_write_timeout(Some(idle))?;
    relay_watched(client, server, Some(&Activity::new(idle)))
}

/// Why [`relay_idle`] ended a connection: nothing moved for this long.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no bytes either way for {} s", .0.as_secs())]
pub struct IdleTimeout(pub Duration);

/// Whether `e` is [`relay_idle`]'s idle timeout (a read) or a write that could not progress for
/// the idle period (the socket's write timeout): both mean the peer holds a slot doing nothing.
pub fn is_idle_timeout(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<IdleTimeout>()) || is_timeout(e)
}

/// Whether `e` is what a blocking socket call returns when its timeout expired (`EAGAIN`, which
/// std reports as `WouldBlock`, or `TimedOut`).
pub fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// The time of the last byte moved in either direction, shared by the two copying threads.
struct Activity {
    idle: Duration,
    start: Instant,
    /// Milliseconds from `start` to the last byte moved.
    last_ms: AtomicU64,
}

impl Activity {
    fn new(idle: Duration) -> Self {
        Self {
            idle,
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.fetch_max(now, Ordering::Relaxed);
    }

    /// How much of the idle period is left (`None`: it has run out).
    fn remaining(&self) -> Option<Duration> {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        let silent = self.start.elapsed().saturating_sub(last);
        Some(self.idle.saturating_sub(silent)).filter(|left| !left.is_zero())
    }
}

fn relay_watched<A: Duplex + ?Sized, B: Duplex + ?Sized>(
    client: &A,
    server: &B,
    activity: Option<&Activity>,
) -> io::Result<()> {
    let shut_all = || {
        // Either may already be shut down or reset; that is the state wanted.
        let _ = client.shutdown(Shutdown::Both);
        let _ = server.shutdown(Shutdown::Both);
    };
    std::thread::scope(|scope| {
        let upstream = scope.spawn(|| copy_half(client, server, &shut_all, activity));
        let downstream = scope.spawn(|| copy_half(server, client, &shut_all, activity));
        let up = upstream.join();
        let down = downstream.join();
        // A panicking copy thread cannot happen (io::copy does not panic); report it as an error
        // rather than propagating it.
        let joined = |r: std::thread::Result<io::Result<u64>>| {
            r.unwrap_or_else(|_| Err(io::Error::other("relay thread panicked")))
        };
        joined(up).and(joined(down)).map(|_| ())
    })
}

/// One direction: copies until EOF, then half-closes `to`; on an error shuts everything down.
fn copy_half<F: Duplex + ?Sized, T: Duplex + ?Sized>(
    from: &F,
    to: &T,
    shut_all: &dyn Fn(),
    activity: Option<&Activity>,
) -> io::Result<u64> {
    let result = match activity {
        None => io::copy(&mut Io(from), &mut Io(to)),
        Some(activity) => copy_watched(from, to, activity),
    };
    match &result {
        Ok(_) => {
            let _ = to.shutdown(Shutdown::Write);
        }
        // The receiving side is gone (it closed while bytes for it were on their way): this
        // direction is over, but what it sent before it closed still flows the other way.
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
            ) =>
        {
            let _ = from.shutdown(Shutdown::Read);
            let _ = to.shutdown(Shutdown::Write);
        }
        Err(_) => shut_all(),
    }
    result
}

/// [`io::copy`] that records each move in `activity` and, when a read times out, ends with
/// [`IdleTimeout`] if the whole idle period passed without a byte either way.
fn copy_watched<F: Duplex + ?Sized, T: Duplex + ?Sized>(
    from: &F,
    to: &T,
    activity: &Activity,
) -> io::Result<u64> {
    let mut buf = [0u8; 8 * 1024];
    let mut total = 0u64;
    loop {
        let n = match from.recv(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if is_timeout(&e) => match activity.remaining() {
                // The other direction was busy: wait for what is left of the period only.
                Some(left) => {
                    from.set_read_timeout(Some(left))?;
                    continue;
                }
                None => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        IdleTimeout(activity.idle),
                    ));
                }
            },
            Err(e) => return Err(e),
        };
        activity.touch();
        let chunk = buf.get(..n).unwrap_or_default();
        Io(to).write_all(chunk)?;
        activity.touch();
        total = total.saturating_add(u64::try_from(n).unwrap_or(u64::MAX));
    }
}
