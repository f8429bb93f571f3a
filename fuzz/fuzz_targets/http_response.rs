//! Any byte stream as an HTTP/1.1 answer to the KMS or IMDS client (`cosigner_kms::aws::http`),
//! read whole and cut into reads whose sizes come from the input itself: errors are fine, panics
//! are not, an answer never exceeds the caps, and how the stream is cut into reads changes nothing
//! (but for bytes past `Content-Length`, which only a reader that has them can see).
//!
//! Input layout: byte 0 holds the limits (bit 0: a body may run to the close; bit 1: small caps,
//! so that they are reached); byte 1 is `n`; the next `n` bytes are read sizes (used in turn,
//! cyclically; 0 means 1); the rest is the stream.
#![no_main]

use std::io::Read;

use cosigner_kms::aws::http::{HttpError, Limits, Response, read_response};
use libfuzzer_sys::fuzz_target;

/// A stream handed out in reads of the given sizes.
struct Cut<'a> {
    stream: &'a [u8],
    sizes: std::iter::Cycle<std::slice::Iter<'a, u8>>,
}

impl Read for Cut<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let size = self
            .sizes
            .next()
            .map_or(usize::MAX, |&s| usize::from(s.max(1)));
        let n = size.min(buf.len()).min(self.stream.len());
        let (now, later) = self.stream.split_at(n);
        buf[..n].copy_from_slice(now);
        self.stream = later;
        Ok(n)
    }
}

fn limits(flags: u8) -> Limits {
    let small = flags & 2 != 0;
    Limits {
        max_head: if small { 64 } else { 16 * 1024 },
        max_body: if small { 32 } else { 256 * 1024 },
        body_until_close: flags & 1 != 0,
    }
}

/// What a read came to, comparable across cuts.
fn outcome(result: &Result<Response, HttpError>) -> String {
    match result {
        Ok(r) => format!("{} {:?} {:?}", r.status, r.headers, r.body.as_slice()),
        Err(e) => format!("{e:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let Some((&n, rest)) = rest.split_first() else {
        return;
    };
    let (sizes, stream) = rest.split_at(usize::from(n).min(rest.len()));
    let limits = limits(flags);

    let mut whole = stream;
    let at_once = read_response(&mut whole, limits);
    let mut cut = Cut {
        stream,
        sizes: sizes.iter().cycle(),
    };
    let in_pieces = read_response(&mut cut, limits);

    if let Ok(r) = &at_once {
        assert!((200..600).contains(&r.status));
        assert!(r.body.len() <= limits.max_body);
        assert!(
            !r.headers
                .iter()
                .any(|(n, _)| n.bytes().any(|b| b.is_ascii_uppercase()))
        );
    }
    let excess = |r: &Result<Response, HttpError>| matches!(r, Err(HttpError::ExcessBody));
    if !excess(&at_once) && !excess(&in_pieces) {
        assert_eq!(
            outcome(&at_once),
            outcome(&in_pieces),
            "the outcome depends on how the stream is cut"
        );
    }
});
