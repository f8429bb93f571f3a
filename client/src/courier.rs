//! Couriers: what carries a ceremony's requests to one cosigner and its answers back. The
//! ceremony drivers ([`crate::wallet`], [`crate::coordinator`]) talk to a `dyn Courier` and do
//! not know which one: an attested TLS session ([`Session`]) in production, an in-process service
//! in the enclave's tests, so those tests run the client's real coordinator instead of a copy.

use cosigner_protocol::id::Epoch;
use cosigner_protocol::wire::{NextCommitment, Request, Response, WalletId};

use crate::Result;
use crate::session::Session;

/// Carries requests to one cosigner.
pub trait Courier {
    /// Sends one request and returns the answer; an error answer is
    /// [`crate::ClientError::Remote`].
    fn call(&mut self, request: &Request) -> Result<Response>;

    /// Sends one request, runs `meanwhile` while the cosigner works on it, and returns the
    /// answer: the client's own part of a one-round signature overlaps the cosigner's. A
    /// courier that cannot overlap runs `meanwhile` first.
    fn call_overlapped(
        &mut self,
        request: &Request,
        meanwhile: &mut dyn FnMut(),
    ) -> Result<Response> {
        meanwhile();
        self.call(request)
    }

    /// The cosigner's attested public key (its audit key, from the attestation document this
    /// courier verified), if it has one.
    fn attested_key(&self) -> Option<&[u8]>;

    /// The attestation document this courier verified, as sent (kept with receipts).
    fn attestation_document(&self) -> Option<&[u8]> {
        None
    }

    /// Takes the cosigner's next signing commitment for `wallet_id` at `epoch`, if it handed
    /// one out on this courier (one round trip per signature instead of two).
    fn take_commitment(&mut self, _wallet_id: &WalletId, _epoch: Epoch) -> Option<NextCommitment> {
        None
    }

    /// Keeps the cosigner's next signing commitment for its wallet.
    fn keep_commitment(&mut self, _next: NextCommitment) {}
}

impl Courier for Session {
    fn call(&mut self, request: &Request) -> Result<Response> {
        Session::call(self, request)
    }

    fn call_overlapped(
        &mut self,
        request: &Request,
        meanwhile: &mut dyn FnMut(),
    ) -> Result<Response> {
        Session::call_overlapped(self, request, meanwhile)
    }

    fn attested_key(&self) -> Option<&[u8]> {
        self.attestation().doc.public_key.as_deref()
    }

    fn attestation_document(&self) -> Option<&[u8]> {
        Some(self.raw_attestation())
    }

    fn take_commitment(&mut self, wallet_id: &WalletId, epoch: Epoch) -> Option<NextCommitment> {
        let next = self.commitments.remove(wallet_id)?;
        // One for another epoch is stale: the enclave would refuse it.
        (next.epoch == epoch).then_some(next)
    }

    fn keep_commitment(&mut self, next: NextCommitment) {
        self.commitments.insert(next.wallet_id, next);
    }
}
