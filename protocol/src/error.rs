//! The one error type of the protocol crate.

use crate::id::PartyId;

/// Everything that can go wrong in framing, encoding, or a ceremony.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// A frame announced or carried more than the cap.
    #[error("frame of {actual} bytes exceeds the {max}-byte limit")]
    FrameTooLarge {
        /// The cap.
        max: usize,
        /// The announced or actual size.
        actual: usize,
    },
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame")]
    Truncated,
    /// The underlying stream failed.
    #[error("i/o: {0}")]
    Io(String),
    /// A message could not be encoded or decoded.
    #[error("malformed message: {reason}")]
    Encoding {
        /// What was wrong.
        reason: String,
    },
    /// The peer speaks another protocol version.
    #[error("protocol version {actual}, expected {expected}")]
    Version {
        /// Ours.
        expected: u16,
        /// Theirs.
        actual: u16,
    },
    /// The ceremony names a ciphersuite this build does not run.
    #[error("unsupported ciphersuite {actual:?}")]
    Ciphersuite {
        /// What was asked for.
        actual: String,
    },
    /// Ceremony parameters are inconsistent (threshold, party set, our own id).
    #[error("invalid ceremony parameters: {reason}")]
    Params {
        /// What was wrong.
        reason: String,
    },
    /// A message arrived that the ceremony's current state does not accept.
    #[error("unexpected message: expected {expected}, got {actual}")]
    UnexpectedMessage {
        /// What the state machine waits for.
        expected: &'static str,
        /// What arrived.
        actual: String,
    },
    /// A participant misbehaved; the culprit is named so the operator can act.
    #[error("party {party} misbehaved: {reason}")]
    Culprit {
        /// The misbehaving party.
        party: PartyId,
        /// What it did.
        reason: String,
    },
    /// A party failed a check whose failure itself leaks a secret bit (DKLs23's OT-extension
    /// consistency check, the multiplication's verification): it must never be signed with again
    /// (`dkls23`'s `AbortKind::BanCounterparty`). The caller records the exclusion durably.
    #[error("party {party} must be excluded from signing: {reason}")]
    Excluded {
        /// The party to exclude.
        party: PartyId,
        /// What its message failed.
        reason: String,
    },
    /// Participants disagree on the DKG transcript or result: the broadcast was not consistent.
    #[error("parties disagree on the ceremony: {reason}")]
    Disagreement {
        /// Who disagrees with whom, on what.
        reason: String,
    },
    /// HPKE sealing or opening failed (a package for someone else, or altered in transit).
    #[error("HPKE: {reason}")]
    Hpke {
        /// What failed.
        reason: String,
    },
    /// The FROST library refused an operation.
    #[error("FROST: {reason}")]
    Frost {
        /// The library's error.
        reason: String,
    },
    /// A signing request does not match the session it claims (message, signer set, commitment).
    #[error("signing session mismatch: {reason}")]
    SessionMismatch {
        /// What differs.
        reason: String,
    },
    /// A mailbox envelope is malformed, too large, not bound to its topic, or its signature does
    /// not verify under its sender's key.
    #[error("mailbox envelope refused: {reason}")]
    Envelope {
        /// What was wrong.
        reason: String,
    },
    /// A PSBT could not be read: not a PSBT, truncated, malformed, too large, or inconsistent.
    #[error("PSBT refused: {reason}")]
    Psbt {
        /// What was wrong.
        reason: String,
    },
    /// The PSBT is of a version this build does not read (only BIP-174 version 0).
    #[error("PSBT version {version} is not supported: only version 0 (BIP-174) is read")]
    PsbtVersion {
        /// The version the PSBT declares.
        version: u32,
    },
    /// One input of a PSBT is refused (not the wallet's own script, no `witness_utxo`, another
    /// sighash type, or a signature that does not verify).
    #[error("PSBT input {index} refused: {reason}")]
    PsbtInput {
        /// The input's index in the transaction.
        index: usize,
        /// What was wrong.
        reason: String,
    },
    /// A PSBT's amounts do not add up (overflow, outputs above inputs, absurd fee).
    #[error("PSBT amounts refused: {reason}")]
    PsbtValue {
        /// What was wrong.
        reason: String,
    },
    /// A network name this build does not know.
    #[error("unknown network {name:?} (bitcoin, mainnet, testnet, testnet4, signet, regtest)")]
    UnknownNetwork {
        /// The name given.
        name: String,
    },
    /// A policy or members file is refused.
    #[error("policy refused: {reason}")]
    Policy {
        /// What was wrong.
        reason: String,
    },
    /// The provider refused a request (policy, PSBT, expiry); its reason is quoted.
    #[error("the provider refused the request: {reason}")]
    Refused {
        /// The provider's reason.
        reason: String,
    },
}

impl ProtocolError {
    /// An [`ProtocolError::Encoding`] error: bytes (or a key) that could not be made or read.
    pub fn encoding(reason: impl std::fmt::Display) -> Self {
        Self::Encoding {
            reason: reason.to_string(),
        }
    }

    /// [`ProtocolError::Culprit`]: `party` sent something it must not have, for `reason`.
    pub fn culprit(party: PartyId, reason: impl Into<String>) -> Self {
        Self::Culprit {
            party,
            reason: reason.into(),
        }
    }
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, ProtocolError>;
