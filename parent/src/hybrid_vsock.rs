//! The host side of a "hybrid vsock": a guest's vsock port reached through a unix socket.
//!
//! A virtio-vsock device emulated in user space (`vhost-device-vsock` with `uds-path`, the
//! protocol Firecracker introduced, "Host-Initiated Connections" in its `docs/vsock.md`) has no
//! kernel vsock on the host side. A host program connects to the backend's unix socket and asks
//! for a guest port in one text line; the backend answers with the host-side port it allocated,
//! and from then on the socket carries the guest connection's bytes:
//!
//! ```text
//! host → backend   CONNECT 5000\n
//! backend → host   OK 1073741824\n
//! ```
//!
//! This is how the parent reaches an enclave image booted in QEMU's `nitro-enclave` machine on a
//! host without vsock (docs/nitro.md, "Emulator"). The bytes after the handshake are the same TLS
//! the parent relays from a real enclave's vsock: the parent still cannot read them.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// The longest answer line accepted: `OK ` and a decimal u32 and `\n` fit in 14 bytes.
const MAX_ANSWER: usize = 32;

/// Connects to `port` of the guest behind the backend socket `path`, waiting at most `timeout`
/// in all for the backend's answer (a guest that is not listening is answered by the backend
/// closing the socket). The returned stream has no timeouts set.
pub fn connect(path: &Path, port: u32, timeout: Duration) -> io::Result<UnixStream> {
    let deadline = Instant::now() + timeout;
    let mut stream = UnixStream::connect(path)?;
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(format!("CONNECT {port}\n").as_bytes())?;
    read_ok(&mut stream, port, deadline)?;
    stream.set_read_timeout(None)?;
    stream.set_write_timeout(None)?;
    Ok(stream)
}

/// Reads the backend's answer one byte at a time, so that nothing of the guest's stream after
/// the `\n` is consumed, and checks it is `OK <decimal>`.
/// Each read waits only for what is left until `deadline`: a backend that trickles bytes cannot
/// hold the relay thread longer than one timeout.
fn read_ok(stream: &mut UnixStream, port: u32, deadline: Instant) -> io::Result<()> {
    let mut line = Vec::with_capacity(MAX_ANSWER);
    let mut byte = [0_u8; 1];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the vsock backend did not answer CONNECT in time",
            ));
        }
        stream.set_read_timeout(Some(left))?;
        let read = match stream.read(&mut byte) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if read == 0 {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!(
                    "the vsock backend closed the connection: nothing listens on guest port {port}"
                ),
            ));
        }
        if byte[0] == b'\n' {
            break;
        }
        if line.len() == MAX_ANSWER {
            return Err(bad_answer(&line));
        }
        line.push(byte[0]);
    }
    match line.strip_prefix(b"OK ") {
        Some(digits) if !digits.is_empty() && digits.iter().all(u8::is_ascii_digit) => Ok(()),
        _ => Err(bad_answer(&line)),
    }
}

fn bad_answer(line: &[u8]) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "the vsock backend answered {:?}, expected \"OK <port>\"",
            String::from_utf8_lossy(line)
        ),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::io::BufRead;
    use std::os::unix::net::UnixListener;

    /// A backend that reads the `CONNECT` line and answers `answer`, then echoes.
    fn backend(answer: Vec<u8>) -> (tempfile::TempDir, std::thread::JoinHandle<String>) {
        let dir = tempfile::tempdir().unwrap();
        let listener = UnixListener::bind(dir.path().join("v.sock")).unwrap();
        let handle = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = io::BufReader::new(stream.try_clone().unwrap());
            let mut request = String::new();
            reader.read_line(&mut request).unwrap();
            (&stream).write_all(&answer).unwrap();
            // Only an accepted connection carries on (echoing five bytes); otherwise the
            // backend hangs up, as vhost-device-vsock does.
            if answer.starts_with(b"OK 1") {
                let mut rest = [0_u8; 5];
                if reader.read_exact(&mut rest).is_ok() {
                    (&stream).write_all(&rest).unwrap();
                }
            }
            request
        });
        (dir, handle)
    }

    #[test]
    fn connects_and_leaves_the_stream_untouched() {
        let (dir, handle) = backend(b"OK 1073741824\nhello".to_vec());
        let mut stream = connect(&dir.path().join("v.sock"), 5000, Duration::from_secs(5)).unwrap();
        let mut early = [0_u8; 5];
        stream.read_exact(&mut early).unwrap();
        assert_eq!(
            &early, b"hello",
            "bytes after the answer belong to the guest stream"
        );
        stream.write_all(b"12345").unwrap();
        let mut echo = [0_u8; 5];
        stream.read_exact(&mut echo).unwrap();
        assert_eq!(&echo, b"12345");
        assert_eq!(handle.join().unwrap(), "CONNECT 5000\n");
    }

    #[test]
    fn refusals_are_errors_of_their_kind() {
        for (answer, kind) in [
            (&b""[..], io::ErrorKind::ConnectionRefused),
            (b"NO\n", io::ErrorKind::InvalidData),
            (b"OK \n", io::ErrorKind::InvalidData),
            (b"OK 12x\n", io::ErrorKind::InvalidData),
            (
                b"OK 1111111111111111111111111111111111111\n",
                io::ErrorKind::InvalidData,
            ),
        ] {
            let (dir, _handle) = backend(answer.to_vec());
            let error = connect(&dir.path().join("v.sock"), 1, Duration::from_secs(5)).unwrap_err();
            assert_eq!(error.kind(), kind, "{answer:?}: {error}");
        }
    }

    #[test]
    fn a_trickling_backend_is_bounded_by_one_timeout_in_all() {
        let dir = tempfile::tempdir().unwrap();
        let listener = UnixListener::bind(dir.path().join("v.sock")).unwrap();
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            // "OK " and then a digit every 40 ms: the line outgrows MAX_ANSWER after about a
            // second, so a bound per byte would end in InvalidData, one in all in a timeout.
            let _ = stream.write_all(b"OK ");
            for _ in 0..40 {
                std::thread::sleep(Duration::from_millis(40));
                if stream.write_all(b"1").is_err() {
                    return;
                }
            }
        });
        let error = connect(&dir.path().join("v.sock"), 1, Duration::from_millis(200)).unwrap_err();
        assert!(
            matches!(
                error.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ),
            "{error}"
        );
    }

    #[test]
    fn a_silent_backend_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let listener = UnixListener::bind(dir.path().join("v.sock")).unwrap();
        let error = connect(&dir.path().join("v.sock"), 1, Duration::from_millis(100)).unwrap_err();
        assert!(
            matches!(
                error.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ),
            "{error}"
        );
        drop(listener);
    }
}
