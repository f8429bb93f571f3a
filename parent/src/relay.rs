//! Relaying one client connection to the enclave, byte for byte.
//!
//! The bytes are TLS between the client and the enclave: the relay never parses, buffers beyond a
//! copy buffer, or terminates them, and it could not read them if it tried. Whatever it might do to
//! them (drop, reorder, flip) breaks the TLS record MACs and is detected at the ends.
//!
//! Closing: each direction is copied by its own thread. When one side finishes sending (EOF), the
//! relay half-closes the other side's write direction, so the peer sees the same EOF while the
//! opposite direction keeps flowing (TLS `close_notify` and the last answer still get through).
//! When a side fails (reset, broken pipe), both sockets are shut down in both directions, which
//! ends the other thread at once. [`relay`] returns when both directions are done.

use std::io;
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::UnixStream;

/// Copies bytes from `client` to `enclave` and back, each direction on its own thread, until both
/// directions have ended (see the module docs). Returns the first error of either direction; an
/// error ends the whole relay.
pub fn relay(client: TcpStream, enclave: UnixStream) -> io::Result<()> {
    let shut_all = || {
        // Either may already be shut down or reset; that is the state wanted.
        let _ = client.shutdown(Shutdown::Both);
        let _ = enclave.shutdown(Shutdown::Both);
    };
    std::thread::scope(|scope| {
        let upstream = scope.spawn(|| {
            let result = io::copy(&mut &client, &mut &enclave);
            match result {
                Ok(_) => {
                    let _ = enclave.shutdown(Shutdown::Write);
                }
                Err(_) => shut_all(),
            }
            result
        });
        let downstream = scope.spawn(|| {
            let result = io::copy(&mut &enclave, &mut &client);
            match result {
                Ok(_) => {
                    let _ = client.shutdown(Shutdown::Write);
                }
                Err(_) => shut_all(),
            }
            result
        });
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
