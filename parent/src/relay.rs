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

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;

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
}

impl Listen for TcpListener {
    fn fd(&self) -> BorrowedFd<'_> {
        self.as_fd()
    }
    fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        TcpListener::set_nonblocking(self, nonblocking)
    }
    fn accept(&self) -> io::Result<Conn> {
        let (s, _) = TcpListener::accept(self)?;
        s.set_nonblocking(false)?;
        s.set_nodelay(true)?;
        Ok(Arc::new(s))
    }
}

impl Listen for UnixListener {
    fn fd(&self) -> BorrowedFd<'_> {
        self.as_fd()
    }
    fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        UnixListener::set_nonblocking(self, nonblocking)
    }
    fn accept(&self) -> io::Result<Conn> {
        let (s, _) = UnixListener::accept(self)?;
        s.set_nonblocking(false)?;
        Ok(Arc::new(s))
    }
}

impl Listen for VsockListener {
    fn fd(&self) -> BorrowedFd<'_> {
        self.as_fd()
    }
    fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        VsockListener::set_nonblocking(self, nonblocking)
    }
    fn accept(&self) -> io::Result<Conn> {
        let (s, _) = VsockListener::accept(self)?;
        s.set_nonblocking(false)?;
        Ok(Arc::new(s))
    }
}

/// Copies bytes from `client` to `server` and back, each direction on its own thread, until both
/// directions have ended (see the module docs). Returns the first error of either direction; an
/// error ends the whole relay.
pub fn relay<A: Duplex + ?Sized, B: Duplex + ?Sized>(client: &A, server: &B) -> io::Result<()> {
    let shut_all = || {
        // Either may already be shut down or reset; that is the state wanted.
        let _ = client.shutdown(Shutdown::Both);
        let _ = server.shutdown(Shutdown::Both);
    };
    std::thread::scope(|scope| {
        let upstream = scope.spawn(|| copy_half(client, server, &shut_all));
        let downstream = scope.spawn(|| copy_half(server, client, &shut_all));
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
) -> io::Result<u64> {
    let result = io::copy(&mut Io(from), &mut Io(to));
    match result {
        Ok(_) => {
            let _ = to.shutdown(Shutdown::Write);
        }
        Err(_) => shut_all(),
    }
    result
}
