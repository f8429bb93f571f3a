//! Account addresses: the last 20 bytes of Keccak-256 over the uncompressed public key (Ethereum
//! yellow paper, appendix F), written with the EIP-55 mixed-case checksum.

use alloy_primitives::{Address, keccak256};

use crate::{EthError, Result};

/// The address of the account whose key is the uncompressed SEC1 point `uncompressed` (65 bytes;
/// the caller has checked it is on the curve, this only hashes its coordinates).
pub fn address_of_point(uncompressed: &[u8]) -> Result<Address> {
    match uncompressed {
        [0x04, xy @ ..] if xy.len() == 64 => Ok(Address::from_slice(
            keccak256(xy).get(12..).unwrap_or_default(),
        )),
        _ => Err(EthError::Field {
            field: "public_key",
            reason: "not an uncompressed SEC1 point (65 bytes, 0x04 first)".into(),
        }),
    }
}

/// The EIP-55 checksummed form of `address` (no chain id: EIP-1191 is not used on Ethereum).
pub fn checksummed(address: &Address) -> String {
    address.to_checksum(None)
}
