//! cosigner-enclave: the trusted side of cosigner.
//!
//! TLS terminates here ([`tls`]); the first request of every session is `Attest`, answered with a
//! document binding the client's nonce and this TLS session; the FROST share of each wallet is
//! sealed ([`cosigner_kms::Sealer`]) and kept by the untrusted parent ([`store`]); the ceremonies
//! run in [`service`], which has no IO of its own.

pub mod config;
pub mod credentials;
pub mod server;
pub mod service;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod transport;
