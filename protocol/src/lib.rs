//! cosigner's wire format and IO-free ceremony state machines.
//!
//! Client, parent and enclave share this crate. It does no IO of its own: [`frame`] turns bytes
//! into frames, [`wire`] frames into versioned messages, and the ceremonies ([`dkg`], [`sign`]) are
//! state machines that take a message and return the next state and the messages to send, so a
//! whole ceremony runs in memory in a test. Sockets live in the binaries.

pub mod audit;
pub mod auth;
pub mod dao;
pub mod dkg;
pub mod ecdsa;
pub mod enrollment;
mod error;
pub mod frame;
pub mod hd;
pub mod hpke;
pub mod id;
pub mod keygen;
pub mod mailbox;
pub mod policy;
pub mod psbt;
mod redact;
pub mod refresh;
pub mod repair;
pub mod sign;
pub mod signing;
#[cfg(test)]
mod test_support;
pub mod units;
pub mod wire;

pub use error::{ProtocolError, Result};

/// Version of the wire protocol; every envelope carries it. 3: cosigners sign their DKG and
/// refresh confirmations (`auth::confirmation_digest`), and a registration names the recovery
/// cosigner's key.
pub const PROTOCOL_VERSION: u16 = 3;

/// Party numbers of a personal wallet: the user's device, the provider, the recovery cosigner.
pub mod party {
    use crate::id::PartyId;
    /// Shard A: the user's device.
    pub const DEVICE: PartyId = PartyId::DEVICE;
    /// Shard B: the provider's cosigner.
    pub const PROVIDER: PartyId = PartyId::PROVIDER;
    /// Shard C: the recovery cosigner.
    pub const RECOVERY: PartyId = PartyId::RECOVERY;
}

/// How an attestation document binds the TLS session it was requested on.
pub mod binding {
    /// RFC 9266 §2: the tls-exporter channel binding's exporter label (TLS 1.3 only).
    pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-Channel-Binding";
    /// RFC 9266 §2: 32 bytes of exporter output, empty context.
    pub const EXPORTER_LEN: usize = 32;
    /// Nonce length the client sends in `Attest`.
    pub const NONCE_LEN: usize = 32;
}
