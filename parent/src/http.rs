//! The operator listener (`metrics_listen`): `GET /metrics` (Prometheus text, [`crate::metrics`]),
//! `GET /healthz` (200 while the process runs) and `GET /readyz` (200 only when an enclave
//! instance is attested with a fresh snapshot and the parent's store answers; else 503 and one
//! line saying why).
//!
//! A deliberately small HTTP/1.1 server: the request head is parsed by `httparse` (well kept, no
//! allocation, no body handling), everything around it is here, with strict limits because the
//! port may be reachable by more than the operator's scraper (binding it to loopback is the
//! operator's choice, docs/deployment.md "Metrics, health and logs"):
//!
//! * one request per connection, answered with `Connection: close`;
//! * the head must arrive whole within [`HEAD_DEADLINE`] of the accept (a deadline, not a
//!   per-read timeout, so a client trickling bytes cannot stretch it) and fit in [`MAX_HEAD`]
//!   bytes with at most [`MAX_HEADERS`] headers;
//! * only `GET`, without a body (405 with `Allow: GET` for other methods, 400 for a body);
//!   unknown paths are 404; the query string is ignored;
//! * at most [`MAX_CONNECTIONS`] connections at once (the accept loop's cap, `crate::server`).

use std::io::{self, Write};
use std::time::{Duration, Instant};

use crate::metrics::Metrics;
use crate::relay::{Conn, Io, is_timeout};
use crate::store::Store;

/// Longest request head, in bytes.
pub const MAX_HEAD: usize = 8 * 1024;
/// Most headers in a request.
pub const MAX_HEADERS: usize = 32;
/// From accept to the end of the request head.
pub const HEAD_DEADLINE: Duration = Duration::from_secs(5);
/// Longest a response write may wait on the client.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once on the operator listener.
pub const MAX_CONNECTIONS: usize = 16;

/// What was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Route {
    /// `GET /metrics`.
    Metrics,
    /// `GET /healthz`.
    Healthz,
    /// `GET /readyz`.
    Readyz,
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HttpError {
    /// The head is longer than [`MAX_HEAD`].
    #[error("request head over {max} bytes")]
    HeadTooLarge {
        /// The limit.
        max: usize,
    },
    /// Not an HTTP/1.x request head (or more than [`MAX_HEADERS`] headers).
    #[error("malformed request: {reason}")]
    Malformed {
        /// What `httparse` or the checks here said.
        reason: String,
    },
    /// A method other than GET.
    #[error("method {method} not allowed (GET only)")]
    MethodNotAllowed {
        /// The method, cut to 16 bytes.
        method: String,
    },
    /// A path that is none of the three.
    #[error("no such path")]
    NotFound,
    /// A request with a body (`Content-Length` other than 0, or `Transfer-Encoding`).
    #[error("a GET with a body")]
    Body,
}

impl HttpError {
    /// The status line's code and reason.
    fn status(&self) -> (u16, &'static str) {
        match self {
            Self::HeadTooLarge { .. } => (431, "Request Header Fields Too Large"),
            Self::Malformed { .. } | Self::Body => (400, "Bad Request"),
            Self::MethodNotAllowed { .. } => (405, "Method Not Allowed"),
            Self::NotFound => (404, "Not Found"),
        }
    }
}

/// Parses a request head from the bytes received so far: `Ok(None)` while it is incomplete (and
/// within [`MAX_HEAD`]). Never panics, whatever `buf` holds.
pub fn parse_request(buf: &[u8]) -> Result<Option<Route>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let status = request.parse(buf).map_err(|e| HttpError::Malformed {
        reason: e.to_string(),
    })?;
    if status.is_partial() {
        if buf.len() >= MAX_HEAD {
            return Err(HttpError::HeadTooLarge { max: MAX_HEAD });
        }
        return Ok(None);
    }
    if buf.len() > MAX_HEAD {
        return Err(HttpError::HeadTooLarge { max: MAX_HEAD });
    }
    let method = request.method.unwrap_or_default();
    if method != "GET" {
        return Err(HttpError::MethodNotAllowed {
            method: method.chars().take(16).collect(),
        });
    }
    for h in request.headers.iter() {
        let body = (h.name.eq_ignore_ascii_case("content-length") && h.value.trim_ascii() != b"0")
            || h.name.eq_ignore_ascii_case("transfer-encoding");
        if body {
            return Err(HttpError::Body);
        }
    }
    let path = request.path.unwrap_or_default();
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    match path {
        "/metrics" => Ok(Some(Route::Metrics)),
        "/healthz" => Ok(Some(Route::Healthz)),
        "/readyz" => Ok(Some(Route::Readyz)),
        _ => Err(HttpError::NotFound),
    }
}

/// The store key `/readyz` reads: any valid key does; its absence is the usual answer.
const PROBE_KEY: &str = "readyz-probe";

/// The answer to `route`.
pub fn respond(route: Route, metrics: &Metrics, store: &dyn Store) -> (u16, &'static str, String) {
    match route {
        Route::Metrics => (200, "OK", metrics.render()),
        Route::Healthz => (200, "OK", "ok\n".into()),
        Route::Readyz => {
            let ready = metrics.readiness().and_then(|()| {
                store
                    .get(PROBE_KEY)
                    .map(|_| ())
                    .map_err(|e| format!("the parent's store does not answer: {e}"))
            });
            match ready {
                Ok(()) => (200, "OK", "ready\n".into()),
                Err(why) => (503, "Service Unavailable", format!("not ready: {why}\n")),
            }
        }
    }
}

/// Serves one connection of the operator listener (module docs). Errors are the socket's; a
/// refused request has been answered.
pub fn serve(conn: &Conn, metrics: &Metrics, store: &dyn Store) -> io::Result<()> {
    let deadline = Instant::now() + HEAD_DEADLINE;
    conn.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    let parsed = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return answer(
                conn,
                408,
                "Request Timeout",
                "request head not received in time\n",
            );
        }
        conn.set_read_timeout(Some(left))?;
        let n = match conn.recv(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if is_timeout(&e) => continue,
            Err(e) => return Err(e),
        };
        let room = MAX_HEAD.saturating_add(1).saturating_sub(head.len());
        head.extend_from_slice(buf.get(..n.min(room)).unwrap_or_default());
        match parse_request(&head) {
            Ok(None) => {}
            other => break other,
        }
    };
    match parsed {
        Ok(Some(route)) => {
            let (code, reason, body) = respond(route, metrics, store);
            answer(conn, code, reason, &body)
        }
        Ok(None) => Ok(()),
        Err(e) => {
            let (code, reason) = e.status();
            answer(conn, code, reason, &format!("{e}\n"))
        }
    }
}

/// Writes a whole response and closes our side.
fn answer(conn: &Conn, code: u16, reason: &str, body: &str) -> io::Result<()> {
    let content_type = if code == 200 && body.starts_with("# HELP") {
        "text/plain; version=0.0.4; charset=utf-8"
    } else {
        "text/plain; charset=utf-8"
    };
    let allow = if code == 405 { "Allow: GET\r\n" } else { "" };
    let response = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         {allow}Cache-Control: no-store\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    Io(&**conn).write_all(response.as_bytes())?;
    let _ = conn.shutdown(std::net::Shutdown::Write);
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use std::io::Read;
    use std::sync::Arc;

    use super::*;

    #[test]
    fn the_three_paths_parse_and_partial_heads_wait() {
        assert_eq!(
            parse_request(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Ok(Some(Route::Metrics))
        );
        assert_eq!(
            parse_request(b"GET /readyz?verbose=1 HTTP/1.0\r\n\r\n"),
            Ok(Some(Route::Readyz))
        );
        assert_eq!(
            parse_request(b"GET /healthz HTTP/1.1\r\nContent-Length: 0\r\n\r\n"),
            Ok(Some(Route::Healthz))
        );
        assert_eq!(parse_request(b"GET /metr"), Ok(None));
        assert_eq!(parse_request(b""), Ok(None));
    }

    #[test]
    fn bad_requests_are_refused_by_kind() {
        assert_eq!(
            parse_request(b"GET /other HTTP/1.1\r\n\r\n"),
            Err(HttpError::NotFound)
        );
        assert!(matches!(
            parse_request(b"POST /metrics HTTP/1.1\r\n\r\n"),
            Err(HttpError::MethodNotAllowed { .. })
        ));
        assert_eq!(
            parse_request(b"GET /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\n"),
            Err(HttpError::Body)
        );
        assert_eq!(
            parse_request(b"GET /metrics HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Err(HttpError::Body)
        );
        for garbage in [
            &b"\x16\x03\x01\x00\xa5\x01\x00"[..],
            b"GET /metrics HTTP/9.9\r\n\r\n",
            b"GET\r\n\r\n",
            b"G\0T / HTTP/1.1\r\n\r\n",
        ] {
            assert!(
                matches!(parse_request(garbage), Err(HttpError::Malformed { .. })),
                "{garbage:?}"
            );
        }
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: y\r\n")).collect();
        assert!(matches!(
            parse_request(format!("GET /metrics HTTP/1.1\r\n{many}\r\n").as_bytes()),
            Err(HttpError::Malformed { .. })
        ));
        let long = format!("GET /metrics HTTP/1.1\r\nX: {}", "a".repeat(MAX_HEAD));
        assert_eq!(
            parse_request(long.as_bytes()),
            Err(HttpError::HeadTooLarge { max: MAX_HEAD })
        );
    }

    /// A served connection over a real socket pair.
    fn served(request: &[u8], hold_open: bool) -> (String, Duration) {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let conn: Conn = Arc::new(theirs);
        let server = std::thread::spawn(move || {
            let dir = tempfile::tempdir().unwrap();
            let store = crate::store::SqliteStore::open(&dir.path().join("s.db")).unwrap();
            serve(&conn, &Metrics::new(), &store).unwrap();
        });
        let started = Instant::now();
        let mut ours = ours;
        ours.write_all(request).unwrap();
        if !hold_open {
            ours.shutdown(std::net::Shutdown::Write).unwrap();
        }
        let mut answer = String::new();
        ours.read_to_string(&mut answer).unwrap();
        server.join().unwrap();
        (answer, started.elapsed())
    }

    #[test]
    fn served_answers_carry_status_length_and_close() {
        let (answer, _) = served(b"GET /healthz HTTP/1.1\r\n\r\n", true);
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(answer.contains("Content-Length: 3\r\n"), "{answer}");
        assert!(answer.contains("Connection: close\r\n"), "{answer}");
        assert!(answer.ends_with("\r\n\r\nok\n"), "{answer}");
        let (answer, _) = served(b"GET /readyz HTTP/1.1\r\n\r\n", true);
        assert!(
            answer.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{answer}"
        );
        assert_eq!(
            answer.lines().last().unwrap().matches("not ready").count(),
            1
        );
        let (answer, _) = served(b"DELETE /metrics HTTP/1.1\r\n\r\n", true);
        assert!(answer.starts_with("HTTP/1.1 405 "), "{answer}");
        assert!(answer.contains("Allow: GET\r\n"), "{answer}");
        let (answer, _) = served(b"GET /nope HTTP/1.1\r\n\r\n", true);
        assert!(answer.starts_with("HTTP/1.1 404 "), "{answer}");
        let (answer, _) = served(b"GET /metrics HTTP/1.1\r\n\r\n", true);
        assert!(answer.contains("version=0.0.4"), "{answer}");
        assert!(
            answer.contains("# TYPE cosigner_instances_up gauge"),
            "{answer}"
        );
        // Oversize: refused once the head passes the limit, not read to its end.
        let mut big = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        big.extend(vec![b'a'; MAX_HEAD]);
        let (answer, _) = served(&big, true);
        assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
        // A client that closes before its head is whole gets nothing.
        let (answer, _) = served(b"GET /metr", false);
        assert_eq!(answer, "");
    }

    #[test]
    fn a_slow_client_is_answered_408_at_the_head_deadline() {
        let (answer, took) = served(b"GET /metrics HTTP/1.1\r\n", true);
        assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
        assert!(
            took >= HEAD_DEADLINE - Duration::from_millis(100)
                && took < HEAD_DEADLINE + Duration::from_secs(2),
            "{took:?}"
        );
    }
}
