//! Any byte stream, cut into chunks whose sizes come from the input itself, into the incremental
//! `FrameDecoder`, and the same stream into `read_frame` over a `&[u8]`: errors are fine, panics are
//! not, no frame is over `MAX_FRAME_LEN`, and both readers agree on every frame and on how the
//! stream ends, however it is cut.
//!
//! Input layout: byte 0 is `n`; the next `n` bytes are chunk sizes (used in turn, cyclically; a
//! size of 0 pushes an empty chunk, then one byte); the rest is the stream. `n = 0` pushes the
//! whole stream at once.
#![no_main]

use cosigner_protocol::ProtocolError;
use cosigner_protocol::frame::{FrameDecoder, MAX_FRAME_LEN, encode_frame, read_frame};
use libfuzzer_sys::fuzz_target;

/// How a reader finished the stream.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// After a whole frame (or on an empty stream).
    Clean,
    /// Inside a frame: the decoder holds bytes, `read_frame` says `Truncated`.
    Truncated,
    /// A header announced more than the cap.
    TooLarge(usize),
}

fn split(data: &[u8]) -> (&[u8], &[u8]) {
    let Some((&n, rest)) = data.split_first() else {
        return (&[], &[]);
    };
    rest.split_at(usize::from(n).min(rest.len()))
}

/// Every frame `read_frame` returns from `stream`, and how it stopped.
fn with_read_frame(stream: &[u8]) -> (Vec<Vec<u8>>, End) {
    let mut reader = stream;
    let mut frames = Vec::new();
    loop {
        match read_frame(&mut reader) {
            Ok(Some(frame)) => {
                assert!(frame.len() <= MAX_FRAME_LEN);
                frames.push(frame);
            }
            Ok(None) => return (frames, End::Clean),
            Err(ProtocolError::Truncated) => return (frames, End::Truncated),
            Err(ProtocolError::FrameTooLarge { max, actual }) => {
                assert_eq!(max, MAX_FRAME_LEN);
                assert!(actual > MAX_FRAME_LEN);
                return (frames, End::TooLarge(actual));
            }
            Err(other) => panic!("read_frame over a slice failed with {other:?}"),
        }
    }
}

/// Every frame the decoder returns when `stream` is pushed in chunks of `sizes`, and how it stopped.
fn with_decoder(sizes: &[u8], stream: &[u8]) -> (Vec<Vec<u8>>, End) {
    let mut decoder = FrameDecoder::new();
    let mut frames = Vec::new();
    let mut rest = stream;
    let mut cycle = sizes.iter().cycle();
    loop {
        let take = match cycle.next() {
            None => rest.len(),
            Some(0) => {
                // An empty push, then one byte so that every round makes progress.
                decoder.push(&[]);
                1
            }
            Some(&size) => usize::from(size),
        };
        let (chunk, tail) = rest.split_at(take.min(rest.len()));
        rest = tail;
        decoder.push(chunk);
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    assert!(frame.len() <= MAX_FRAME_LEN);
                    frames.push(frame);
                }
                Ok(None) => break,
                Err(ProtocolError::FrameTooLarge { max, actual }) => {
                    assert_eq!(max, MAX_FRAME_LEN);
                    assert!(actual > MAX_FRAME_LEN);
                    return (frames, End::TooLarge(actual));
                }
                Err(other) => panic!("FrameDecoder failed with {other:?}"),
            }
        }
        if rest.is_empty() {
            let end = if decoder.buffered() == 0 {
                End::Clean
            } else {
                End::Truncated
            };
            return (frames, end);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let (sizes, stream) = split(data);
    let (read, read_end) = with_read_frame(stream);
    let (decoded, decoded_end) = with_decoder(sizes, stream);
    assert_eq!(
        decoded, read,
        "the decoder and read_frame disagree on the frames"
    );
    assert_eq!(
        decoded_end, read_end,
        "the decoder and read_frame disagree on the end"
    );

    // The frames are exactly what the stream began with: re-encoding them gives its prefix.
    let mut again = Vec::new();
    for frame in &read {
        again.extend(encode_frame(frame).expect("a decoded frame re-encodes"));
    }
    assert!(stream.starts_with(&again));
    if read_end == End::Clean {
        assert_eq!(again.len(), stream.len());
    }
});
