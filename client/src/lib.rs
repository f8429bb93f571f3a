//! The cosigner client: Shard A's holder and the coordinator of every ceremony.
//!
//! [`session::Session`] opens an attested channel to a cosigner (nothing is sent before its
//! attestation verified against the [`trust::Trust`] file); [`wallet`] runs the ceremonies;
//! [`home::Home`] keeps this device's keys and shares.
//! [`mailbox::MailboxClient`] posts and fetches signed envelopes at a parent's mailbox.
//! [`psbt_sign`] signs a personal wallet's PSBTs (and manages its spending policy); [`hwi`]
//! answers Bitcoin Core as its external signer (`cosigner-hwi`).

pub mod address;
pub mod coordinator;
pub mod courier;
pub mod dao;
mod error;
pub mod eth;
pub mod home;
pub mod hwi;
pub mod mailbox;
pub mod psbt_sign;
pub mod receipt;
pub mod repair;
pub mod session;
pub mod store;
pub mod trust;
pub mod wallet;

pub use error::{ClientError, Result, io_reason, one_line};

/// Documents as QEMU's emulated NSM writes them, for the tests of `emulated_nsm = true`.
#[cfg(test)]
#[path = "../../attestation/tests/support/qemu_nsm.rs"]
mod qemu_nsm;
