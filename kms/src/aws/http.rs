//! One bounded HTTP/1.1 response reader (RFC 9112), for the KMS client and the parent's IMDS
//! client: both send one request per connection with `Connection: close` and read one answer.
//!
//! The answer comes from an untrusted peer (the parent relays KMS's bytes to the enclave; IMDS is
//! reached over plain TCP), so every size is capped before it is read, every malformed part is a
//! precise [`HttpError`], and nothing panics. The bytes read are kept in one buffer allocated once
//! at its largest size (never reallocated, so never copied behind our back) and zeroized on drop:
//! answers carry data keys and credentials.

use std::io::{self, Read};

use zeroize::Zeroizing;

/// How much one `read` asks for.
const READ_SIZE: usize = 4096;

/// Caps on one answer, and how a body without a length ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest status line and headers, and longest chunk-size line or trailer section.
    pub max_head: usize,
    /// Longest body (after de-chunking).
    pub max_body: usize,
    /// Whether a body with neither `Content-Length` nor `Transfer-Encoding: chunked` runs to the
    /// end of the connection (RFC 9112 §6.3, item 8). Otherwise such an answer is refused.
    pub body_until_close: bool,
}

/// One response: status, headers (names lowercased, values trimmed), body.
pub struct Response {
    /// The status code, 200..=599 (interim 1xx answers are skipped).
    pub status: u16,
    /// The header fields in order, names lowercased, values trimmed.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked; zeroized on drop.
    pub body: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The body may hold plaintext keys or credentials.
        f.debug_struct("Response")
            .field("status", &self.status)
            .field("headers", &self.headers)
            .field("body", &format_args!("<{} bytes>", self.body.len()))
            .finish()
    }
}

impl Response {
    /// The first value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }
}

/// Why an answer was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HttpError {
    /// Reading from the connection failed (including a read timeout).
    #[error("reading: {0}")]
    Io(#[source] io::Error),
    /// The connection closed before any byte of an answer.
    #[error("connection closed without an answer")]
    Empty,
    /// The connection closed in the middle of `part` (`headers`, `chunked body`).
    #[error("connection closed inside the {part}")]
    Truncated {
        /// Which part was cut.
        part: &'static str,
    },
    /// The connection closed after `got` of the `expected` body bytes.
    #[error("connection closed after {got} of {expected} body bytes")]
    BodyCutShort {
        /// Bytes received.
        got: usize,
        /// `Content-Length`.
        expected: usize,
    },
    /// The status line and headers exceed [`Limits::max_head`].
    #[error("headers longer than {max} bytes")]
    HeadTooLong {
        /// The cap.
        max: usize,
    },
    /// The body exceeds [`Limits::max_body`] (announced or received).
    #[error("body longer than {max} bytes")]
    BodyTooLong {
        /// The cap.
        max: usize,
    },
    /// The head is not UTF-8.
    #[error("headers are not UTF-8")]
    HeadNotUtf8,
    /// Not `HTTP/1.1 NNN reason` (or `HTTP/1.0`), NNN in 100..=599.
    #[error("bad status line {line:?}")]
    BadStatusLine {
        /// Its first 80 characters, control characters replaced.
        line: String,
    },
    /// A header line without `:` or with a name that is not a token.
    #[error("bad header line")]
    BadHeader,
    /// `Content-Length` is not a decimal number, or given twice with different values.
    #[error("bad Content-Length {value:?}")]
    BadContentLength {
        /// Its first 40 characters, control characters replaced.
        value: String,
    },
    /// A `Transfer-Encoding` other than `chunked` (nothing else is decoded here).
    #[error("unsupported Transfer-Encoding {value:?}")]
    UnsupportedTransferEncoding {
        /// Its first 40 characters, control characters replaced.
        value: String,
    },
    /// Bytes beyond `Content-Length` on a connection that carries one answer.
    #[error("more bytes than Content-Length")]
    ExcessBody,
    /// A malformed chunked body (RFC 9112 §7.1).
    #[error("bad chunked body: {reason}")]
    BadChunk {
        /// What is wrong.
        reason: &'static str,
    },
    /// Neither `Content-Length` nor chunked, and [`Limits::body_until_close`] is off.
    #[error("no Content-Length and not chunked")]
    NoLength,
}

/// Reads one answer from `conn`, skipping interim (1xx) answers, within `limits`.
pub fn read_response(conn: &mut dyn Read, limits: Limits) -> Result<Response, HttpError> {
    let mut reader = Reader::new(conn, limits);
    loop {
        let (status, headers) = reader.read_head()?;
        if (100..200).contains(&status) {
            continue;
        }
        let body = reader.read_body(status, &headers)?;
        return Ok(Response {
            status,
            headers,
            body,
        });
    }
}

/// The connection and the bytes read from it but not yet consumed.
struct Reader<'a> {
    conn: &'a mut dyn Read,
    buf: Zeroizing<Vec<u8>>,
    capacity: usize,
    limits: Limits,
}

impl<'a> Reader<'a> {
    fn new(conn: &'a mut dyn Read, limits: Limits) -> Self {
        // Room for a whole head and body plus one read: the buffer never grows.
        let capacity = limits
            .max_head
            .saturating_add(limits.max_body)
            .saturating_add(2 * READ_SIZE);
        Self {
            conn,
            buf: Zeroizing::new(Vec::with_capacity(capacity)),
            capacity,
            limits,
        }
    }

    /// Appends what the connection has next; `false` at its end.
    fn fill(&mut self) -> Result<bool, HttpError> {
        let len = self.buf.len();
        let want = READ_SIZE.min(self.capacity.saturating_sub(len));
        if want == 0 {
            return Err(HttpError::BodyTooLong {
                max: self.limits.max_body,
            });
        }
        self.buf.resize(len + want, 0);
        match self.conn.read(self.buf.get_mut(len..).unwrap_or_default()) {
            Ok(n) => {
                self.buf.truncate(len + n.min(want));
                Ok(n > 0)
            }
            Err(e) => {
                self.buf.truncate(len);
                Err(HttpError::Io(e))
            }
        }
    }

    /// [`Self::fill`], with `closed` as the error at the connection's end.
    fn fill_or(&mut self, closed: HttpError) -> Result<(), HttpError> {
        if self.fill()? { Ok(()) } else { Err(closed) }
    }

    /// Removes the first `n` buffered bytes and returns them.
    fn take(&mut self, n: usize) -> Zeroizing<Vec<u8>> {
        let n = n.min(self.buf.len());
        let taken = Zeroizing::new(self.buf.get(..n).unwrap_or_default().to_vec());
        self.buf.drain(..n);
        taken
    }

    /// The status line and headers, consumed with the empty line ending them.
    fn read_head(&mut self) -> Result<(u16, Vec<(String, String)>), HttpError> {
        let max = self.limits.max_head;
        let end = loop {
            if let Some(pos) = find(&self.buf, b"\r\n\r\n") {
                break pos;
            }
            // From here on an end could only be found past `max`.
            if self.buf.len() > max.saturating_add(3) {
                return Err(HttpError::HeadTooLong { max });
            }
            let closed = if self.buf.is_empty() {
                HttpError::Empty
            } else {
                HttpError::Truncated { part: "headers" }
            };
            self.fill_or(closed)?;
        };
        if end > max {
            return Err(HttpError::HeadTooLong { max });
        }
        let head = self.take(end + 4);
        parse_head(head.get(..end).unwrap_or_default())
    }

    /// The body as the headers frame it (RFC 9112 §6.3).
    fn read_body(
        &mut self,
        status: u16,
        headers: &[(String, String)],
    ) -> Result<Zeroizing<Vec<u8>>, HttpError> {
        if status == 204 || status == 304 {
            return Ok(Zeroizing::new(Vec::new()));
        }
        if let Some(coding) = header(headers, "transfer-encoding") {
            if !coding.eq_ignore_ascii_case("chunked") {
                return Err(HttpError::UnsupportedTransferEncoding {
                    value: printable(coding, 40),
                });
            }
            return self.read_chunked();
        }
        match content_length(headers)? {
            Some(len) => self.read_sized(len),
            None if self.limits.body_until_close => self.read_to_close(),
            None => Err(HttpError::NoLength),
        }
    }

    /// Exactly `len` bytes, and no more on the connection so far.
    fn read_sized(&mut self, len: usize) -> Result<Zeroizing<Vec<u8>>, HttpError> {
        let max = self.limits.max_body;
        if len > max {
            return Err(HttpError::BodyTooLong { max });
        }
        while self.buf.len() < len {
            let got = self.buf.len();
            self.fill_or(HttpError::BodyCutShort { got, expected: len })?;
        }
        if self.buf.len() > len {
            return Err(HttpError::ExcessBody);
        }
        Ok(self.take(len))
    }

    /// Everything up to the end of the connection.
    fn read_to_close(&mut self) -> Result<Zeroizing<Vec<u8>>, HttpError> {
        let max = self.limits.max_body;
        while self.buf.len() <= max && self.fill()? {}
        if self.buf.len() > max {
            return Err(HttpError::BodyTooLong { max });
        }
        Ok(self.take(self.buf.len()))
    }

    /// A chunked body (RFC 9112 §7.1): size lines, data, CRLF, a zero chunk, trailers (ignored).
    fn read_chunked(&mut self) -> Result<Zeroizing<Vec<u8>>, HttpError> {
        let max = self.limits.max_body;
        let mut body = Zeroizing::new(Vec::with_capacity(max));
        loop {
            let size = self.chunk_size()?;
            if size == 0 {
                self.skip_trailers()?;
                return Ok(body);
            }
            if size > max - body.len() {
                return Err(HttpError::BodyTooLong { max });
            }
            while self.buf.len() < size + 2 {
                self.fill_or(HttpError::Truncated {
                    part: "chunked body",
                })?;
            }
            if self.buf.get(size..size + 2) != Some(b"\r\n".as_slice()) {
                return Err(HttpError::BadChunk {
                    reason: "chunk not followed by CRLF",
                });
            }
            body.extend_from_slice(&self.take(size));
            self.take(2);
        }
    }

    /// One chunk-size line: hex digits, optional `;extensions`.
    fn chunk_size(&mut self) -> Result<usize, HttpError> {
        let line = self.line()?;
        let bad = HttpError::BadChunk {
            reason: "bad chunk size line",
        };
        let text = std::str::from_utf8(&line).map_err(|_| bad)?;
        let digits = text.split(';').next().unwrap_or_default().trim();
        if digits.is_empty() || digits.len() > 15 || !digits.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(HttpError::BadChunk {
                reason: "bad chunk size",
            });
        }
        usize::from_str_radix(digits, 16).map_err(|_| HttpError::BadChunk {
            reason: "bad chunk size",
        })
    }

    /// The trailer section after the last chunk, up to its empty line, at most `max_head` bytes.
    fn skip_trailers(&mut self) -> Result<(), HttpError> {
        let mut total = 0usize;
        loop {
            let line = self.line()?;
            if line.is_empty() {
                return Ok(());
            }
            total += line.len() + 2;
            if total > self.limits.max_head {
                return Err(HttpError::HeadTooLong {
                    max: self.limits.max_head,
                });
            }
        }
    }

    /// The next CRLF-terminated line (without the CRLF), at most `max_head` bytes.
    fn line(&mut self) -> Result<Zeroizing<Vec<u8>>, HttpError> {
        loop {
            if let Some(pos) = find(&self.buf, b"\r\n") {
                if pos > self.limits.max_head {
                    // As if the CRLF had come in a later read: the outcome never depends on how
                    // the bytes were cut into reads.
                    return Err(HttpError::BadChunk {
                        reason: "line too long",
                    });
                }
                let line = self.take(pos);
                self.take(2);
                return Ok(line);
            }
            // From here on a CRLF could only be found past `max_head`.
            if self.buf.len() > self.limits.max_head.saturating_add(1) {
                return Err(HttpError::BadChunk {
                    reason: "line too long",
                });
            }
            self.fill_or(HttpError::Truncated {
                part: "chunked body",
            })?;
        }
    }
}

/// Status line and header fields of a head (without its final CRLF CRLF).
fn parse_head(head: &[u8]) -> Result<(u16, Vec<(String, String)>), HttpError> {
    let head = std::str::from_utf8(head).map_err(|_| HttpError::HeadNotUtf8)?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = parse_status_line(status_line).ok_or_else(|| HttpError::BadStatusLine {
        line: printable(status_line, 80),
    })?;
    let headers = lines.map(parse_header).collect::<Result<_, _>>()?;
    Ok((status, headers))
}

/// `HTTP/1.1 NNN reason` or `HTTP/1.0 …` (RFC 9112 §4); the code, 100..=599.
fn parse_status_line(line: &str) -> Option<u16> {
    let mut parts = line.splitn(3, ' ');
    let version = parts.next()?;
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    code.parse().ok().filter(|c| (100..600).contains(c))
}

/// `name: value` (RFC 9112 §5): the name a token without whitespace (obsolete line folding is
/// refused), lowercased; the value trimmed.
fn parse_header(line: &str) -> Result<(String, String), HttpError> {
    let (name, value) = line.split_once(':').ok_or(HttpError::BadHeader)?;
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(HttpError::BadHeader);
    }
    Ok((name.to_ascii_lowercase(), value.trim().to_owned()))
}

/// `Content-Length`, if present: decimal digits only, every occurrence the same (RFC 9112 §6.3,
/// item 5: differing values are unrecoverable).
fn content_length(headers: &[(String, String)]) -> Result<Option<usize>, HttpError> {
    let mut length = None;
    for (_, value) in headers.iter().filter(|(n, _)| n == "content-length") {
        let bad = || HttpError::BadContentLength {
            value: printable(value, 40),
        };
        if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let parsed: usize = value.parse().map_err(|_| bad())?;
        if length.is_some_and(|l| l != parsed) {
            return Err(bad());
        }
        length = Some(parsed);
    }
    Ok(length)
}

fn header<'h>(headers: &'h [(String, String)], name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// At most `max` characters, control characters replaced (the text goes into errors and logs);
/// the one such function of the AWS client and the parent's IMDS client.
pub fn printable(s: &str, max: usize) -> String {
    s.chars()
        .take(max)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    const STRICT: Limits = Limits {
        max_head: 1024,
        max_body: 64,
        body_until_close: false,
    };
    const UNTIL_CLOSE: Limits = Limits {
        body_until_close: true,
        ..STRICT
    };

    /// An answer and the check its refusal must pass.
    type Case = (&'static [u8], fn(&HttpError) -> bool);

    fn parse(bytes: &[u8], limits: Limits) -> Result<Response, HttpError> {
        let mut r: &[u8] = bytes;
        read_response(&mut r, limits)
    }

    /// A reader handing out one byte per call: every boundary falls inside a read.
    struct Trickle<'a>(&'a [u8]);
    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let Some((first, rest)) = self.0.split_first() else {
                return Ok(0);
            };
            let Some(slot) = buf.first_mut() else {
                return Ok(0);
            };
            *slot = *first;
            self.0 = rest;
            Ok(1)
        }
    }

    #[test]
    fn sized_chunked_interim_and_until_close_answers_parse() {
        let r = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}", STRICT).unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"{}"[..]));
        let chunked = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nX-A:  b \r\n\
              Transfer-Encoding: chunked\r\n\r\n1\r\n{\r\n1;ext=1\r\n}\r\n0\r\nX-T: 1\r\n\r\n";
        let r = parse(chunked, STRICT).unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"{}"[..]));
        assert_eq!(r.header("x-a"), Some("b"));
        let r = read_response(&mut Trickle(chunked), STRICT).unwrap();
        assert_eq!(r.body.as_slice(), b"{}");
        let r = parse(b"HTTP/1.0 404 Not Found\r\n\r\nnope", UNTIL_CLOSE).unwrap();
        assert_eq!((r.status, r.body.as_slice()), (404, &b"nope"[..]));
        let r = parse(b"HTTP/1.1 204 No Content\r\n\r\n", STRICT).unwrap();
        assert!(r.body.is_empty());
        assert!(!format!("{r:?}").contains("nope"));
    }

    #[test]
    fn truncated_answers_name_where_they_stop() {
        let cases: [Case; 5] = [
            (b"", |e| matches!(e, HttpError::Empty)),
            (b"HTTP/1.1 200 OK\r\n", |e| {
                matches!(e, HttpError::Truncated { part: "headers" })
            }),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n{}", |e| {
                matches!(
                    e,
                    HttpError::BodyCutShort {
                        got: 2,
                        expected: 5
                    }
                )
            }),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
                |e| {
                    matches!(
                        e,
                        HttpError::Truncated {
                            part: "chunked body"
                        }
                    )
                },
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n",
                |e| {
                    matches!(
                        e,
                        HttpError::Truncated {
                            part: "chunked body"
                        }
                    )
                },
            ),
        ];
        for (bytes, expected) in cases {
            let e = parse(bytes, STRICT).unwrap_err();
            assert!(expected(&e), "{:?}: {e:?}", String::from_utf8_lossy(bytes));
            let e = read_response(&mut Trickle(bytes), STRICT).unwrap_err();
            assert!(expected(&e), "{:?}: {e:?}", String::from_utf8_lossy(bytes));
        }
    }

    #[test]
    fn oversized_answers_are_refused_before_they_are_read() {
        let mut head = b"HTTP/1.1 200 OK\r\n".to_vec();
        head.extend(std::iter::repeat_n(b'a', 2000));
        let e = parse(&head, STRICT).unwrap_err();
        assert!(matches!(e, HttpError::HeadTooLong { max: 1024 }), "{e:?}");
        for bytes in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 65\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n41\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n40\r\n",
        ] {
            let e = parse(bytes, STRICT).unwrap_err();
            let expected = matches!(e, HttpError::BodyTooLong { max: 64 })
                || matches!(e, HttpError::BadContentLength { .. })
                || matches!(e, HttpError::Truncated { .. });
            assert!(expected, "{:?}: {e:?}", String::from_utf8_lossy(bytes));
        }
        // Two chunks within the cap each, over it together.
        let two = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n20\r\n\
            aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n21\r\n";
        let e = parse(two, STRICT).unwrap_err();
        assert!(matches!(e, HttpError::BodyTooLong { max: 64 }), "{e:?}");
        // A body to the end of the connection, longer than the cap: refused without reading on.
        let mut flood = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
        flood.extend(std::iter::repeat_n(b'a', 100_000));
        let e = parse(&flood, UNTIL_CLOSE).unwrap_err();
        assert!(matches!(e, HttpError::BodyTooLong { max: 64 }), "{e:?}");
        let mut trailers = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n".to_vec();
        for _ in 0..200 {
            trailers.extend_from_slice(b"X-Trailer: 0123456789\r\n");
        }
        let e = parse(&trailers, STRICT).unwrap_err();
        assert!(matches!(e, HttpError::HeadTooLong { .. }), "{e:?}");
    }

    #[test]
    fn bad_status_lines_are_refused() {
        for line in [
            "HTTP/1.1 2000 OK",
            "HTTP/1.1 20 OK",
            "HTTP/1.1 +20 OK",
            "HTTP/1.1 099 Low",
            "HTTP/1.1 600 High",
            "HTTP/2 200 OK",
            "HTTP/1.1",
            "ICY 200 OK",
            "",
        ] {
            let bytes = format!("{line}\r\nContent-Length: 0\r\n\r\n");
            let e = parse(bytes.as_bytes(), STRICT).unwrap_err();
            assert!(
                matches!(e, HttpError::BadStatusLine { .. }),
                "{line}: {e:?}"
            );
        }
        let e = parse(b"HTTP/1.1 \x1b[31m\r\n\r\n", STRICT).unwrap_err();
        assert!(!e.to_string().contains('\x1b'), "{e}");
        let e = parse(b"\xff\xfe\r\n\r\n", STRICT).unwrap_err();
        assert!(matches!(e, HttpError::HeadNotUtf8), "{e:?}");
    }

    #[test]
    fn malformed_framing_is_refused() {
        let cases: [Case; 10] = [
            (b"HTTP/1.1 200 OK\r\n\r\n{}", |e| {
                matches!(e, HttpError::NoLength)
            }),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n{}", |e| {
                matches!(e, HttpError::ExcessBody)
            }),
            (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", |e| {
                matches!(e, HttpError::BadContentLength { .. })
            }),
            (b"HTTP/1.1 200 OK\r\nContent-Length: +1\r\n\r\n{", |e| {
                matches!(e, HttpError::BadContentLength { .. })
            }),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n{}",
                |e| matches!(e, HttpError::BadContentLength { .. }),
            ),
            (b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n", |e| {
                matches!(e, HttpError::BadHeader)
            }),
            (b"HTTP/1.1 200 OK\r\n folded: x\r\n\r\n", |e| {
                matches!(e, HttpError::BadHeader)
            }),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                |e| matches!(e, HttpError::UnsupportedTransferEncoding { .. }),
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                |e| matches!(e, HttpError::BadChunk { .. }),
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}XX0\r\n\r\n",
                |e| matches!(e, HttpError::BadChunk { .. }),
            ),
        ];
        for (bytes, expected) in cases {
            let e = parse(bytes, STRICT).unwrap_err();
            assert!(expected(&e), "{:?}: {e:?}", String::from_utf8_lossy(bytes));
        }
        for size in ["+5", "ffffffffffffffffff", "", "-1"] {
            let bytes = format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{size}\r\n");
            let e = parse(bytes.as_bytes(), STRICT).unwrap_err();
            assert!(matches!(e, HttpError::BadChunk { .. }), "{size}: {e:?}");
        }
    }

    /// The outcome of reading `bytes` whole and one byte per read: the same, at every cap's edge.
    #[test]
    fn how_the_bytes_are_cut_changes_nothing() {
        let outcome = |r: Result<Response, HttpError>| match r {
            Ok(r) => format!("{} {:?} {:?}", r.status, r.headers, r.body.as_slice()),
            Err(e) => format!("{e:?}"),
        };
        let limits = Limits {
            max_head: 32,
            max_body: 8,
            body_until_close: true,
        };
        let mut cases = Vec::new();
        for pad in 0..8 {
            let filler = "a".repeat(pad);
            // Heads ending just within, at, and just past `max_head`.
            cases.push(format!(
                "HTTP/1.1 200 OK\r\nX: {filler}bbbbbbbb\r\n\r\nbody"
            ));
            // Chunk-size lines and trailers around `max_head`.
            let ext = "e".repeat(20 + pad);
            cases.push(format!(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2;{ext}\r\nab\r\n0\r\n\r\n"
            ));
            cases.push(format!(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nT: {ext}\r\n\r\n"
            ));
            // Bodies around `max_body`.
            cases.push(format!("HTTP/1.1 200 OK\r\n\r\n{}", "z".repeat(5 + pad)));
        }
        for case in &cases {
            let mut whole: &[u8] = case.as_bytes();
            assert_eq!(
                outcome(read_response(&mut whole, limits)),
                outcome(read_response(&mut Trickle(case.as_bytes()), limits)),
                "{case:?}"
            );
        }
    }

    #[test]
    fn read_errors_are_io_errors() {
        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::new(io::ErrorKind::TimedOut, "slow"))
            }
        }
        let e = read_response(&mut Broken, STRICT).unwrap_err();
        assert!(
            matches!(&e, HttpError::Io(io) if io.kind() == io::ErrorKind::TimedOut),
            "{e:?}"
        );
    }
}
