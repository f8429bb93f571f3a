//! Length-prefixed frames: a 4-byte big-endian length, then that many bytes.
//!
//! Every message between client, parent and enclave travels in one frame. The length is checked
//! against [`MAX_FRAME_LEN`] before a byte of the body is read, so a peer cannot make us allocate
//! more than that. [`FrameDecoder`] is IO-free (feed it bytes, take frames out); [`read_frame`] and
//! [`write_frame`] adapt it to any `std::io` stream at the edges.

use std::io::{Read, Write};

use crate::error::{ProtocolError, Result};

/// Largest frame body accepted (1 MiB): far above any ceremony message, far below a memory problem.
pub const MAX_FRAME_LEN: usize = 1024 * 1024;
const HEADER_LEN: usize = 4;

/// Prefixes `body` with its length.
pub fn encode_frame(body: &[u8]) -> Result<Vec<u8>> {
    let len = u32::try_from(body.len())
        .ok()
        .filter(|l| *l as usize <= MAX_FRAME_LEN)
        .ok_or(ProtocolError::FrameTooLarge {
            max: MAX_FRAME_LEN,
            actual: body.len(),
        })?;
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(body);
    Ok(out)
}

/// Incremental decoder: push received bytes, pop complete frames.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
}

impl FrameDecoder {
    /// An empty decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received but not yet returned as a frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete frame, `None` if more bytes are needed, an error if the announced length
    /// is over the cap (the stream is then unusable).
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>> {
        let Some(header) = self.buf.get(..HEADER_LEN) else {
            return Ok(None);
        };
        let mut len_bytes = [0u8; HEADER_LEN];
        len_bytes.copy_from_slice(header);
        let len = u32::from_be_bytes(len_bytes) as usize;
        if len > MAX_FRAME_LEN {
            return Err(ProtocolError::FrameTooLarge {
                max: MAX_FRAME_LEN,
                actual: len,
            });
        }
        if self.buf.len() < HEADER_LEN + len {
            return Ok(None);
        }
        let body = self
            .buf
            .get(HEADER_LEN..HEADER_LEN + len)
            .map(<[u8]>::to_vec)
            .unwrap_or_default();
        self.buf.drain(..HEADER_LEN + len);
        Ok(Some(body))
    }
}

/// Reads one frame from a stream. `Ok(None)` on a clean end of stream before any byte.
pub fn read_frame(reader: &mut impl Read) -> Result<Option<Vec<u8>>> {
    let mut header = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        let rest = header.get_mut(got..).unwrap_or_default();
        match reader.read(rest) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(ProtocolError::Truncated),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ProtocolError::Io(e.to_string())),
        }
    }
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME_LEN {
        return Err(ProtocolError::FrameTooLarge {
            max: MAX_FRAME_LEN,
            actual: len,
        });
    }
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => ProtocolError::Truncated,
        _ => ProtocolError::Io(e.to_string()),
    })?;
    Ok(Some(body))
}

/// Writes one frame to a stream and flushes it.
pub fn write_frame(writer: &mut impl Write, body: &[u8]) -> Result<()> {
    let frame = encode_frame(body)?;
    writer
        .write_all(&frame)
        .and_then(|()| writer.flush())
        .map_err(|e| ProtocolError::Io(e.to_string()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn frames_round_trip_in_pieces() {
        let mut wire = encode_frame(b"hello").unwrap();
        wire.extend(encode_frame(b"").unwrap());
        wire.extend(encode_frame(&[7; 1000]).unwrap());
        let mut dec = FrameDecoder::new();
        let mut frames = Vec::new();
        for byte in wire {
            dec.push(&[byte]);
            while let Some(f) = dec.next_frame().unwrap() {
                frames.push(f);
            }
        }
        assert_eq!(frames, vec![b"hello".to_vec(), vec![], vec![7; 1000]]);
        assert_eq!(dec.buffered(), 0);
    }

    #[test]
    fn oversized_frames_are_refused_before_reading_the_body() {
        assert!(encode_frame(&vec![0; MAX_FRAME_LEN + 1]).is_err());
        let mut dec = FrameDecoder::new();
        dec.push(&u32::MAX.to_be_bytes());
        assert!(matches!(
            dec.next_frame(),
            Err(ProtocolError::FrameTooLarge { .. })
        ));
        let mut reader: &[u8] = &u32::MAX.to_be_bytes();
        assert!(read_frame(&mut reader).is_err());
    }

    #[test]
    fn stream_helpers_handle_eof() {
        let mut empty: &[u8] = &[];
        assert!(read_frame(&mut empty).unwrap().is_none());
        let mut partial: &[u8] = &[0, 0];
        assert!(matches!(
            read_frame(&mut partial),
            Err(ProtocolError::Truncated)
        ));
        let mut short_body: &[u8] = &[0, 0, 0, 5, 1];
        assert!(matches!(
            read_frame(&mut short_body),
            Err(ProtocolError::Truncated)
        ));
        let mut out = Vec::new();
        write_frame(&mut out, b"abc").unwrap();
        let mut reader = out.as_slice();
        assert_eq!(read_frame(&mut reader).unwrap().unwrap(), b"abc");
    }
}
