//! The loop both frame services of the parent run: the enclave's store channel
//! ([`crate::store_server`]) and the members' mailbox ([`crate::mailbox`]).
//!
//! Frames ([`cosigner_protocol::frame`]) carrying requests come in; one response frame goes out
//! per request, in order, until the peer closes the stream. A peer that sends something
//! unreadable (a frame over the cap, a frame cut short, a body that is not a request of our
//! protocol version) gets one `BadRequest` answer and the connection is closed: after a framing
//! error the stream cannot be resynchronised, and a peer speaking another version will not
//! improve. What a well-formed request deserves is the service's business ([`FrameService`]).

use std::io::{Read, Write};

use cosigner_protocol::ProtocolError;
use cosigner_protocol::frame::{read_frame, write_frame};

use crate::error::{ParentError, Result};

/// One request/response protocol on frames.
pub(crate) trait FrameService {
    /// A decoded request.
    type Request;
    /// A response.
    type Response;
    /// The service's name in errors (`store`, `mailbox`).
    const NAME: &'static str;

    /// Decodes one request frame; the error says why not.
    fn decode(&self, frame: &[u8]) -> std::result::Result<Self::Request, String>;
    /// Answers one well-formed request.
    fn handle(&mut self, request: Self::Request) -> Self::Response;
    /// The `BadRequest` answer refusing the stream for `reason`.
    fn refusal(reason: String) -> Self::Response;
    /// Encodes a response; one that cannot be sent as a frame is replaced by an `Internal` error,
    /// so that the peer always gets an answer.
    fn encode(response: &Self::Response) -> Result<Vec<u8>>;
}

/// Serves `service` on `stream` until the peer closes it (`Ok`; for a stream with a read timeout,
/// also an idle peer: `Io`), or breaks the protocol (answered with `BadRequest`, then
/// [`ParentError::BadRequest`]). Never panics on input.
pub(crate) fn serve<S: Read + Write, F: FrameService>(
    mut stream: S,
    service: &mut F,
) -> Result<()> {
    loop {
        let frame = match read_frame(&mut stream) {
            Ok(Some(frame)) => frame,
            Ok(None) => return Ok(()),
            Err(ProtocolError::Io(reason)) => {
                return Err(ParentError::Io {
                    what: format!("reading a {} request", F::NAME),
                    reason,
                });
            }
            Err(e) => return Err(refuse::<F>(&mut stream, &e.to_string())),
        };
        let request = match service.decode(&frame) {
            Ok(request) => request,
            Err(e) => {
                let reason = format!("undecodable {} request: {e}", F::NAME);
                return Err(refuse::<F>(&mut stream, &reason));
            }
        };
        let response = service.handle(request);
        send::<F>(&mut stream, &response)?;
    }
}

/// Answers `BadRequest` as a last word (the peer may be gone: a failure to tell it is not
/// reported) and returns the error that ends the connection. The reason is put on one line: it
/// goes to the peer and into the parent's log.
fn refuse<F: FrameService>(stream: &mut impl Write, reason: &str) -> ParentError {
    let reason = reason.split_whitespace().collect::<Vec<_>>().join(" ");
    let _ = send::<F>(stream, &F::refusal(reason.clone()));
    ParentError::BadRequest { reason }
}

/// Encodes and writes one response.
fn send<F: FrameService>(stream: &mut impl Write, response: &F::Response) -> Result<()> {
    let body = F::encode(response)?;
    write_frame(stream, &body).map_err(|e| ParentError::Io {
        what: format!("writing a {} response", F::NAME),
        reason: e.to_string(),
    })
}
