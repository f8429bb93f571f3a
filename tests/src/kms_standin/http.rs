//! The stand-in's side of HTTP/1.1 (RFC 9112): one request read per connection, within bounds,
//! and one answer written with `Connection: close`, as KMS's JSON 1.1 protocol needs it
//! (`POST /`, a JSON body framed by `Content-Length`).

use std::io::{Read, Write};

use super::StandinError;

/// Longest request line plus headers read.
pub const MAX_HEAD_LEN: usize = 16 * 1024;
/// Longest body read (KMS's largest requests, `Encrypt` of 4 KiB or an attestation document,
/// are a few KiB in JSON).
pub const MAX_BODY_LEN: usize = 256 * 1024;

/// One request as read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    /// `POST`, …
    pub method: String,
    /// The request target, `/` for KMS.
    pub path: String,
    /// The headers in order, names as sent.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Request {
    /// Every value of the header `name` (any case), in order.
    pub fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The first value of the header `name` (any case).
    pub fn header<'a>(&'a self, name: &'a str) -> Option<&'a str> {
        self.header_values(name).next()
    }
}

fn malformed(reason: impl Into<String>) -> StandinError {
    StandinError::MalformedRequest {
        reason: reason.into(),
    }
}

/// Reads one request: the head up to its empty line (at most [`MAX_HEAD_LEN`]), then exactly
/// `Content-Length` bytes of body (at most [`MAX_BODY_LEN`]). Chunked bodies are refused (KMS
/// clients send lengths); so is anything that is not ASCII in the head.
pub fn read_request(conn: &mut dyn Read) -> Result<Request, StandinError> {
    let mut head = Vec::with_capacity(1024);
    let mut byte = [0u8; 1];
    // Byte by byte, so that nothing of the body is read with the head; requests are small.
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= MAX_HEAD_LEN {
            return Err(malformed(format!("head longer than {MAX_HEAD_LEN} bytes")));
        }
        match conn.read(&mut byte) {
            Ok(0) => return Err(malformed("connection closed before the end of the head")),
            Ok(_) => head.extend_from_slice(&byte),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(StandinError::Io(e)),
        }
    }
    let head = std::str::from_utf8(&head).map_err(|_| malformed("head is not UTF-8"))?;
    if !head.is_ascii() {
        return Err(malformed("head is not ASCII"));
    }
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(path), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed(format!("request line {request_line:?}")));
    };
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(malformed(format!("version {version:?}")));
    }
    let mut request = Request {
        method: method.to_owned(),
        path: path.to_owned(),
        ..Request::default()
    };
    for line in lines.filter(|l| !l.is_empty()) {
        let Some((name, value)) = line.split_once(':') else {
            return Err(malformed(format!("header line {line:?}")));
        };
        if name.is_empty() || name.bytes().any(|b| !b.is_ascii_graphic()) {
            return Err(malformed(format!("header name {name:?}")));
        }
        request
            .headers
            .push((name.to_owned(), value.trim_matches([' ', '\t']).to_owned()));
    }
    if request.header("transfer-encoding").is_some() {
        return Err(malformed(
            "Transfer-Encoding is not supported; send Content-Length",
        ));
    }
    let lengths: Vec<&str> = request.header_values("content-length").collect();
    let len = match lengths.as_slice() {
        [] => 0,
        [l] => l
            .parse::<usize>()
            .map_err(|_| malformed(format!("Content-Length {l:?}")))?,
        _ => return Err(malformed("Content-Length repeated")),
    };
    if len > MAX_BODY_LEN {
        return Err(malformed(format!(
            "body of {len} bytes, at most {MAX_BODY_LEN}"
        )));
    }
    request.body = vec![0u8; len];
    conn.read_exact(&mut request.body)
        .map_err(StandinError::Io)?;
    Ok(request)
}

/// The reason phrase of the statuses the stand-in answers with.
fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        413 => "Payload Too Large",
        _ => "Internal Server Error",
    }
}

/// Writes one answer, JSON 1.1, `Connection: close`.
pub fn write_response(conn: &mut dyn Write, status: u16, body: &[u8]) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/x-amz-json-1.1\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        reason(status),
        body.len()
    );
    conn.write_all(head.as_bytes())?;
    conn.write_all(body)?;
    conn.flush()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn read(bytes: &[u8]) -> Result<Request, StandinError> {
        let mut r = bytes;
        read_request(&mut r)
    }

    #[test]
    fn a_kms_request_is_read() {
        let r = read(
            b"POST / HTTP/1.1\r\nHost: kms\r\nX-A: 1\r\nx-a:  2 \r\nContent-Length: 2\r\n\r\n{}",
        )
        .unwrap();
        assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/"));
        assert_eq!(r.header_values("X-A").collect::<Vec<_>>(), ["1", "2"]);
        assert_eq!(r.body, b"{}");
    }

    #[test]
    fn malformed_requests_are_errors_not_panics() {
        let mut huge = b"POST / HTTP/1.1\r\n".to_vec();
        huge.extend(std::iter::repeat_n(b'a', MAX_HEAD_LEN));
        for bytes in [
            &b""[..],
            b"POST / HTTP/1.1\r\n",
            b"POST /\r\n\r\n",
            b"POST / HTTP/2\r\n\r\n",
            b"POST / HTTP/1.1\r\nbad\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n{",
            b"POST / HTTP/1.1\r\nContent-Length: 999999999\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n{}",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nX: \xff\r\n\r\n",
            &huge,
        ] {
            assert!(read(bytes).is_err(), "{:?}", String::from_utf8_lossy(bytes));
        }
    }
}
