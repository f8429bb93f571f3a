//! Couriers: what carries a ceremony's requests to one cosigner and its answers back. The
//! ceremony drivers ([`crate::wallet`], [`crate::coordinator`]) talk to a `dyn Courier` and do
//! not know which one: an attested TLS session ([`Session`]) in production, an in-process service
//! in the enclave's tests, so those tests run the client's real coordinator instead of a copy.

use cosigner_protocol::wire::{Request, Response};

use crate::Result;
use crate::session::Session;

/// Carries requests to one cosigner.
pub trait Courier {
    /// Sends one request and returns the answer; an error answer is
    /// [`crate::ClientError::Remote`].
    fn call(&mut self, request: &Request) -> Result<Response>;

    /// The cosigner's attested public key (its audit key, from the attestation document this
    /// courier verified), if it has one.
    fn attested_key(&self) -> Option<&[u8]>;
}

impl Courier for Session {
    fn call(&mut self, request: &Request) -> Result<Response> {
        Session::call(self, request)
    }

    fn attested_key(&self) -> Option<&[u8]> {
        self.attestation().doc.public_key.as_deref()
    }
}
