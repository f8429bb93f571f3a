//! Couriers that misbehave as a hostile parent (or a dying client) would, wrapped around a real
//! one (an attested `Session` or an in-process service): they drop or hold back chosen requests.

use cosigner_client::ClientError;
use cosigner_client::courier::Courier;
use cosigner_protocol::wire::{Request, Response};

/// Whether `request` is an authorized `RefreshCommit`.
pub fn is_commit(request: &Request) -> bool {
    match request {
        Request::Authorized { request, .. } => matches!(
            cosigner_protocol::wire::decode::<Request>(request),
            Ok(Request::RefreshCommit { .. })
        ),
        _ => false,
    }
}

/// Loses the connection (an error, nothing delivered) on every request `cut` picks, as a client
/// killed at that point would.
pub struct Cut<'a, C: Courier> {
    /// What carries the requests it lets through.
    pub inner: C,
    /// Which requests are lost.
    pub cut: Box<dyn FnMut(&Request) -> bool + 'a>,
}

impl<C: Courier> Courier for Cut<'_, C> {
    fn call(&mut self, request: &Request) -> Result<Response, ClientError> {
        if (self.cut)(request) {
            return Err(ClientError::Unexpected("connection lost".into()));
        }
        self.inner.call(request)
    }

    fn attested_key(&self) -> Option<&[u8]> {
        self.inner.attested_key()
    }
}

/// Holds back the first authorized `RefreshCommit` (the client sees a lost connection) and
/// delivers it, on the same connection, just before the next one.
pub struct HoldCommit<C: Courier> {
    /// What carries the requests.
    pub inner: C,
    held: Option<Request>,
    holding: bool,
}

impl<C: Courier> HoldCommit<C> {
    /// Holds the first commit sent through `inner`.
    pub fn new(inner: C) -> Self {
        Self {
            inner,
            held: None,
            holding: true,
        }
    }
}

impl<C: Courier> Courier for HoldCommit<C> {
    fn call(&mut self, request: &Request) -> Result<Response, ClientError> {
        if is_commit(request) {
            if self.holding {
                self.holding = false;
                self.held = Some(request.clone());
                return Err(ClientError::Unexpected("connection lost".into()));
            }
            if let Some(held) = self.held.take() {
                self.inner.call(&held)?;
            }
        }
        self.inner.call(request)
    }

    fn attested_key(&self) -> Option<&[u8]> {
        self.inner.attested_key()
    }
}
