//! Failures of the service, classified for the client (`wire::ErrorKind`).

use std::sync::Mutex;

use cosigner_protocol::wire::{ErrorKind, Response, WireError};

/// A failure, classified for the client.
#[derive(Debug)]
pub struct Failure(pub(super) WireError);

impl Failure {
    pub(super) fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self(WireError::new(kind, message))
    }

    pub(super) fn bad(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::BadRequest, message)
    }

    pub(super) fn busy(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Busy, message)
    }

    /// The signer may not do this (`ErrorKind::Unauthorized`).
    pub(super) fn denied(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unauthorized, message)
    }

    pub(super) fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }

    /// The answer the client gets.
    pub(super) fn into_response(self) -> Response {
        Response::Error(self.0)
    }
}

impl From<cosigner_protocol::ProtocolError> for Failure {
    fn from(e: cosigner_protocol::ProtocolError) -> Self {
        use cosigner_protocol::ProtocolError as P;
        let kind = match &e {
            P::Culprit { .. } | P::Disagreement { .. } | P::Hpke { .. } | P::Frost { .. } => {
                ErrorKind::Ceremony
            }
            _ => ErrorKind::BadRequest,
        };
        Self::new(kind, e.to_string())
    }
}

/// What a handler answers.
pub(super) type Outcome = Result<Response, Failure>;

/// Locks `m`; a poisoned lock (a panic elsewhere) is an internal failure, never a panic here.
pub(super) fn lock<T>(m: &Mutex<T>) -> Result<std::sync::MutexGuard<'_, T>, Failure> {
    m.lock()
        .map_err(|_| Failure::new(ErrorKind::Internal, "internal lock poisoned"))
}

pub(super) fn internal(e: impl std::fmt::Display) -> Failure {
    Failure::new(ErrorKind::Internal, e.to_string())
}
