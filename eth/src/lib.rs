//! Ethereum transactions as the enclave sees them: decoded strictly from their signing payload,
//! valued (ETH moved, the most the fee can cost, ERC-20 calls by token), hashed for signing and
//! assembled with a signature into a broadcastable raw transaction.
//!
//! The enclave never signs a digest a client computed: it receives the transaction's signing
//! payload ([EIP-155] for legacy transactions, `0x02 ‖ rlp([...])` for [EIP-1559]), decodes it,
//! re-encodes it and requires the two to be byte-identical ([`UnsignedTx::from_signing_payload`]),
//! so the digest it signs ([`UnsignedTx::signing_hash`]) is of exactly the transaction it valued
//! ([`Valuation::of`]).
//!
//! Types and RLP come from `alloy` (`alloy-consensus`, `alloy-primitives`); what this crate adds is
//! the strictness a signer needs and the valuation a policy needs.
//!
//! [EIP-155]: https://eips.ethereum.org/EIPS/eip-155
//! [EIP-1559]: https://eips.ethereum.org/EIPS/eip-1559

mod address;
mod error;
pub mod policy;
mod request;
mod tx;
mod value;

pub use address::{address_of_point, checksummed};
pub use alloy_primitives::{Address, U256, keccak256};
pub use error::EthError;
pub use request::TxRequest;
pub use tx::{RecoverableSignature, SignedTx, UnsignedTx};
pub use value::{Call, Erc20, Valuation};

/// Results of this crate.
pub type Result<T, E = EthError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests;
