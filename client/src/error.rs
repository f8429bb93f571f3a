//! The client library's one error type.

use cosigner_protocol::wire::WireError;

/// Everything the client can fail at.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The trust file is unusable.
    #[error("trust file: {reason}")]
    Trust {
        /// Why.
        reason: String,
    },
    /// A cosigner's attestation was refused.
    #[error("attestation refused: {reason}")]
    Attestation {
        /// Why.
        reason: String,
    },
    /// Connecting or talking to a cosigner failed.
    #[error("connection to {addr}: {reason}")]
    Connection {
        /// The address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The cosigner refused a request.
    #[error("cosigner refused: {0}")]
    Remote(WireError),
    /// The cosigner answered something the protocol does not allow here.
    #[error("unexpected answer from the cosigner: {0}")]
    Unexpected(String),
    /// A ceremony check failed locally.
    #[error(transparent)]
    Protocol(#[from] cosigner_protocol::ProtocolError),
    /// The client's home directory.
    #[error("home {path}: {reason}")]
    Home {
        /// The path.
        path: String,
        /// Why.
        reason: String,
    },
    /// A user input is malformed.
    #[error("{0}")]
    Input(String),
}

/// Result alias of the client library.
pub type Result<T> = std::result::Result<T, ClientError>;
