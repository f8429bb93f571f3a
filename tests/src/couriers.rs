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

/// Whether `request` is an authorized `RefreshStart`.
pub fn is_refresh_start(request: &Request) -> bool {
    match request {
        Request::Authorized { request, .. } => matches!(
            cosigner_protocol::wire::decode::<Request>(request),
            Ok(Request::RefreshStart { .. })
        ),
        _ => false,
    }
}

/// Before the first request `pick` chooses, asks the cosigner for a new challenge itself: the
/// challenge the client signed over is no longer the session's (as if it had expired while the
/// client was busy), so that request is refused and the client must ask again.
pub struct StaleChallenge<'a, C: Courier> {
    /// What carries the requests.
    pub inner: C,
    /// Which request finds its challenge replaced (the first it picks).
    pub pick: Box<dyn FnMut(&Request) -> bool + 'a>,
    /// The wallet the challenges are for.
    pub wallet_id: cosigner_protocol::wire::WalletId,
    /// How many requests found their challenge replaced (0 or 1).
    pub spoiled: usize,
}

impl<C: Courier> Courier for StaleChallenge<'_, C> {
    fn call(&mut self, request: &Request) -> Result<Response, ClientError> {
        if self.spoiled == 0 && (self.pick)(request) {
            self.spoiled = 1;
            self.inner.call(&Request::Challenge {
                wallet_id: self.wallet_id,
            })?;
        }
        self.inner.call(request)
    }

    fn attested_key(&self) -> Option<&[u8]> {
        self.inner.attested_key()
    }
}
