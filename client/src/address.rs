//! Bitcoin P2TR addresses (BIP-341 output key, BIP-350 bech32m encoding).
//!
//! frost-secp256k1-tr's DKG already returns the BIP-341 tweaked key Q = P + H_TapTweak(P)·G (see
//! docs/architecture.md, "Signing: A + B"), so Q is the output key: the witness program is its x coordinate.

use bech32::Hrp;
use cosigner_protocol::hd::{Child, Keychain, WalletXpub};
use cosigner_protocol::psbt::OwnKeys;

use crate::error::{ClientError, Result};

/// The networks an address can be for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Network {
    /// Mainnet (`bc`).
    Bitcoin,
    /// Testnet and signet (`tb`).
    Testnet,
    /// Regtest (`bcrt`), the default of the local setup.
    Regtest,
}

impl std::str::FromStr for Network {
    type Err = ClientError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "bitcoin" | "mainnet" => Ok(Self::Bitcoin),
            "testnet" | "signet" => Ok(Self::Testnet),
            "regtest" => Ok(Self::Regtest),
            other => Err(ClientError::Input(format!(
                "network {other:?}: expected bitcoin, testnet, signet or regtest"
            ))),
        }
    }
}

impl Network {
    fn hrp(self) -> &'static str {
        match self {
            Self::Bitcoin => "bc",
            Self::Testnet => "tb",
            Self::Regtest => "bcrt",
        }
    }

    /// The name used in files.
    pub fn name(self) -> &'static str {
        match self {
            Self::Bitcoin => "bitcoin",
            Self::Testnet => "testnet",
            Self::Regtest => "regtest",
        }
    }
}

/// The x-only (32-byte) form of a compressed (33-byte) secp256k1 key.
pub fn x_only(compressed: &[u8]) -> Result<[u8; 32]> {
    match compressed {
        [0x02 | 0x03, rest @ ..] => rest
            .try_into()
            .map_err(|_| ClientError::Unexpected("group key is not 33 bytes".into())),
        _ => Err(ClientError::Unexpected(
            "group key is not a compressed point".into(),
        )),
    }
}

/// A Bitcoin wallet's extended public key (`cosigner_protocol::hd`): over its group key, `xpub`
/// on mainnet, `tpub` on the test networks.
pub fn wallet_xpub(wallet: &crate::home::WalletFile) -> Result<WalletXpub> {
    Ok(WalletXpub::new(
        &wallet.wallet_id,
        &group_key(wallet)?,
        wallet.network == Network::Bitcoin,
    )?)
}

/// The keys a PSBT of `wallet` may spend and pay (`cosigner_protocol::psbt::OwnKeys`): its own
/// output key and the children of its extended key.
pub fn own_keys(wallet: &crate::home::WalletFile) -> Result<OwnKeys> {
    Ok(OwnKeys::of_wallet(&wallet.wallet_id, &group_key(wallet)?)?)
}

/// The wallet's group key (compressed SEC1), checked against the output key it was created with.
fn group_key(wallet: &crate::home::WalletFile) -> Result<Vec<u8>> {
    let group_key = wallet
        .public_key_package
        .verifying_key()
        .serialize()
        .map_err(|e| ClientError::Unexpected(format!("group key: {e}")))?;
    if x_only(&group_key)? != wallet.group_public_key {
        return Err(ClientError::Unexpected(
            "the wallet's group key is not its public key package's".into(),
        ));
    }
    Ok(group_key)
}

/// The wallet's child at `keychain`/`index` and its P2TR address.
pub fn child_address(
    wallet: &crate::home::WalletFile,
    keychain: Keychain,
    index: u32,
) -> Result<(Child, String)> {
    let child = wallet_xpub(wallet)?.child(keychain, index)?;
    let address = p2tr_address(&child.output_key, wallet.network)?;
    Ok((child, address))
}

/// The P2TR address paying to output key `x_only` on `network`.
pub fn p2tr_address(x_only: &[u8; 32], network: Network) -> Result<String> {
    let hrp = Hrp::parse(network.hrp()).map_err(|e| ClientError::Unexpected(e.to_string()))?;
    bech32::segwit::encode_v1(hrp, x_only).map_err(|e| ClientError::Unexpected(e.to_string()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn bip350_p2tr_vector() {
        // BIP-350 test vector: witness v1, program 79be667e…f81798 (the generator's x).
        let program: [u8; 32] =
            hex::decode("79be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798")
                .unwrap()
                .try_into()
                .unwrap();
        assert_eq!(
            p2tr_address(&program, Network::Bitcoin).unwrap(),
            "bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqzk5jj0"
        );
        assert!(
            p2tr_address(&program, Network::Regtest)
                .unwrap()
                .starts_with("bcrt1p")
        );
    }

    #[test]
    fn x_only_needs_a_compressed_point() {
        let mut key = vec![0x02];
        key.extend([7u8; 32]);
        assert_eq!(x_only(&key).unwrap(), [7; 32]);
        assert!(x_only(&[0x04; 33]).is_err());
        assert!(x_only(&[0x02; 10]).is_err());
    }
}
