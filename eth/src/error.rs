//! The one error type of the Ethereum crate.

/// Why a transaction, a request for one, or a signature for one was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EthError {
    /// The bytes are not RLP of a transaction.
    #[error("transaction encoding: {reason}")]
    Encoding {
        /// What the decoder said.
        reason: String,
    },
    /// The bytes decode, but re-encoding the transaction gives other bytes: the payload is not the
    /// canonical signing payload of what it decodes to.
    #[error("not the canonical signing payload of the transaction it decodes to")]
    NotCanonical,
    /// A transaction type other than legacy (EIP-155) and EIP-1559.
    #[error("transaction type {ty:#04x} is not signed here (legacy EIP-155 and EIP-1559 only)")]
    UnsupportedType {
        /// The EIP-2718 type byte.
        ty: u8,
    },
    /// A legacy transaction without a chain id could be replayed on every chain.
    #[error("legacy transaction without a chain id (EIP-155 replay protection is required)")]
    NoChainId,
    /// A field of a transaction request is missing, malformed or contradicts another.
    #[error("transaction field {field}: {reason}")]
    Field {
        /// The field's JSON name.
        field: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// Call data that names an ERC-20 function but is not a well-formed call of it.
    #[error("malformed ERC-20 call data: {reason}")]
    Erc20 {
        /// What was wrong.
        reason: String,
    },
    /// A signature that cannot go on an Ethereum transaction (not low-S, or out of range).
    #[error("signature: {reason}")]
    Signature {
        /// What was wrong.
        reason: String,
    },
}
