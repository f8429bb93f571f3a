//! Serving the enclave's store requests on one connection.
//!
//! Frames ([`cosigner_protocol::frame`]) carrying [`StoreRequest`]s come in; one
//! [`StoreResponse`] frame goes out per request, in order. The split mirrors the rest of cosigner:
//! [`handle`] is the bytes-free brain (request in, response out), [`serve_store`] the loop that
//! moves frames on a stream.
//!
//! A peer that sends something unreadable (a frame over the cap, a frame cut short, a body that
//! is not a store request of our protocol version) gets one `Error(BadRequest)` answer and the
//! connection is closed: after a framing error the stream cannot be resynchronised, and a peer
//! speaking another version will not improve. A well-formed request the store refuses (invalid
//! key, oversized value) is answered with an error and the connection stays open.
//!
//! `AwsCredentials` is answered from the parent's [`CredentialsProvider`] when one is configured
//! (`[aws_credentials]`), else refused with `BadRequest` naming the missing table; a failure to
//! obtain them (IMDS unreachable, say) is `Internal` and keeps the connection open.

use std::io::{Read, Write};

use cosigner_protocol::ProtocolError;
use cosigner_protocol::frame::{MAX_FRAME_LEN, read_frame, write_frame};
use cosigner_protocol::wire::{ErrorKind, StoreRequest, StoreResponse, WireError, decode, encode};
use serde_bytes::ByteBuf;

use crate::aws_credentials::CredentialsProvider;
use crate::error::{ParentError, Result};
use crate::store::Store;

/// Serves store requests on `stream` until the peer closes it (`Ok`) or breaks the protocol
/// (answered with `Error(BadRequest)`, then [`ParentError::BadRequest`]). Never panics on input.
pub fn serve_store<S: Read + Write>(stream: S, store: &dyn Store) -> Result<()> {
    serve_store_with(stream, store, None)
}

/// [`serve_store`], answering `AwsCredentials` from `credentials`.
pub fn serve_store_with<S: Read + Write>(
    mut stream: S,
    store: &dyn Store,
    credentials: Option<&CredentialsProvider>,
) -> Result<()> {
    loop {
        let frame = match read_frame(&mut stream) {
            Ok(Some(frame)) => frame,
            Ok(None) => return Ok(()),
            Err(ProtocolError::Io(reason)) => {
                return Err(ParentError::Io {
                    what: "reading a store request".into(),
                    reason,
                });
            }
            Err(e) => return Err(refuse(&mut stream, e.to_string())),
        };
        let request = match decode::<StoreRequest>(&frame) {
            Ok(request) => request,
            Err(e) => {
                return Err(refuse(
                    &mut stream,
                    format!("undecodable store request: {e}"),
                ));
            }
        };
        let response = handle_with(store, credentials, request);
        send(&mut stream, &response)?;
    }
}

/// Answers one request from `store`. Refusals of the request itself are `BadRequest`, store
/// failures `Internal`.
pub fn handle(store: &dyn Store, request: StoreRequest) -> StoreResponse {
    handle_with(store, None, request)
}

/// [`handle`], answering `AwsCredentials` from `credentials`.
pub fn handle_with(
    store: &dyn Store,
    credentials: Option<&CredentialsProvider>,
    request: StoreRequest,
) -> StoreResponse {
    let result = match request {
        StoreRequest::Put { key, value } => store.put(&key, &value).map(|()| StoreResponse::Done),
        StoreRequest::Get { key } => store.get(&key).map(|value| StoreResponse::Value {
            value: value.map(ByteBuf::from),
        }),
        StoreRequest::Delete { key } => store.delete(&key).map(|()| StoreResponse::Done),
        StoreRequest::List { prefix } => store
            .list_prefix(&prefix)
            .map(|keys| StoreResponse::Keys { keys }),
        StoreRequest::AwsCredentials => match credentials {
            Some(provider) => provider.response(),
            None => Err(ParentError::BadRequest {
                reason: "this parent serves no AWS credentials: add an [aws_credentials] table \
                         to its configuration (docs/kms.md)"
                    .into(),
            }),
        },
        // A request variant added to the protocol after this build.
        _ => Err(ParentError::BadRequest {
            reason: "unsupported store request".into(),
        }),
    };
    result.unwrap_or_else(|e| {
        let kind = match e {
            ParentError::InvalidKey { .. }
            | ParentError::ValueTooLarge { .. }
            | ParentError::BadRequest { .. } => ErrorKind::BadRequest,
            _ => ErrorKind::Internal,
        };
        StoreResponse::Error(WireError::new(kind, e.to_string()))
    })
}

/// Answers `Error(BadRequest)` as a last word (the peer may be gone: a failure to tell it is not
/// reported) and returns the error that ends the connection.
fn refuse(stream: &mut impl Write, reason: String) -> ParentError {
    let response = StoreResponse::Error(WireError::new(ErrorKind::BadRequest, reason.clone()));
    let _ = send(stream, &response);
    ParentError::BadRequest { reason }
}

/// Encodes and writes one response. A response too large for a frame (a listing of thousands of
/// long keys) is replaced by an `Internal` error, so the peer always gets an answer.
fn send(stream: &mut impl Write, response: &StoreResponse) -> Result<()> {
    let encoded = |r: &StoreResponse| {
        encode(r).map_err(|e| ParentError::Encode {
            reason: e.to_string(),
        })
    };
    let mut body = encoded(response)?;
    if body.len() > MAX_FRAME_LEN {
        body = encoded(&StoreResponse::Error(WireError::new(
            ErrorKind::Internal,
            format!(
                "response of {} bytes exceeds the {MAX_FRAME_LEN}-byte frame limit",
                body.len()
            ),
        )))?;
    }
    write_frame(stream, &body).map_err(|e| ParentError::Io {
        what: "writing a store response".into(),
        reason: e.to_string(),
    })
}
