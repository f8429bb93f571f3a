//! Serving the enclave's store requests on one connection.
//!
//! Frames ([`cosigner_protocol::frame`]) carrying [`StoreRequest`]s come in; one
//! [`StoreResponse`] frame goes out per request, in order. The split mirrors the rest of cosigner:
//! [`handle`] is the bytes-free brain (request in, response out), [`serve_store`] runs the
//! parent's one frame loop ([`crate::frames`]) with it.
//!
//! A peer that sends something unreadable gets one `Error(BadRequest)` answer and the connection
//! is closed ([`crate::frames`]). A well-formed request the store refuses (invalid
//! key, oversized value) is answered with an error and the connection stays open.
//!
//! `AwsCredentials` is answered from the parent's [`CredentialsProvider`] when one is configured
//! (`[aws_credentials]`), else refused with `BadRequest` naming the missing table; a failure to
//! obtain them (IMDS unreachable, say) is `Internal` and keeps the connection open.

use std::io::{Read, Write};

use cosigner_protocol::frame::MAX_FRAME_LEN;
use cosigner_protocol::wire::{ErrorKind, StoreRequest, StoreResponse, WireError, decode, encode};
use serde_bytes::ByteBuf;

use crate::aws_credentials::CredentialsProvider;
use crate::error::{ParentError, Result};
use crate::frames::{self, FrameService};
use crate::store::Store;

/// Serves store requests on `stream` until the peer closes it (`Ok`) or breaks the protocol
/// (answered with `Error(BadRequest)`, then [`ParentError::BadRequest`]). Never panics on input.
pub fn serve_store<S: Read + Write>(stream: S, store: &dyn Store) -> Result<()> {
    serve_store_with(stream, store, None)
}

/// [`serve_store`], answering `AwsCredentials` from `credentials`.
pub fn serve_store_with<S: Read + Write>(
    stream: S,
    store: &dyn Store,
    credentials: Option<&CredentialsProvider>,
) -> Result<()> {
    frames::serve(stream, &mut StoreService { store, credentials })
}

/// The store channel as a [`FrameService`].
struct StoreService<'a> {
    store: &'a dyn Store,
    credentials: Option<&'a CredentialsProvider>,
}

impl FrameService for StoreService<'_> {
    type Request = StoreRequest;
    type Response = StoreResponse;
    const NAME: &'static str = "store";

    fn decode(&self, frame: &[u8]) -> std::result::Result<StoreRequest, String> {
        decode::<StoreRequest>(frame).map_err(|e| e.to_string())
    }

    fn handle(&mut self, request: StoreRequest) -> StoreResponse {
        handle_with(self.store, self.credentials, request)
    }

    fn refusal(reason: String) -> StoreResponse {
        StoreResponse::Error(WireError::new(ErrorKind::BadRequest, reason))
    }

    /// A response too large for a frame (a listing of thousands of long keys) is replaced by an
    /// `Internal` error.
    fn encode(response: &StoreResponse) -> Result<Vec<u8>> {
        let encoded = |r: &StoreResponse| {
            encode(r).map_err(|e| ParentError::Encode {
                reason: e.to_string(),
            })
        };
        let body = encoded(response)?;
        if body.len() <= MAX_FRAME_LEN {
            return Ok(body);
        }
        encoded(&StoreResponse::Error(WireError::new(
            ErrorKind::Internal,
            format!(
                "response of {} bytes exceeds the {MAX_FRAME_LEN}-byte frame limit",
                body.len()
            ),
        )))
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
        StoreRequest::PutMany { entries } => {
            let entries: Vec<(String, Vec<u8>)> = entries
                .into_iter()
                .map(|(k, v)| (k, v.into_vec()))
                .collect();
            store.put_many(&entries).map(|()| StoreResponse::Done)
        }
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
    result.unwrap_or_else(|e| StoreResponse::Error(WireError::new(e.wire_kind(), e.to_string())))
}
