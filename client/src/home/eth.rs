//! An Ethereum wallet's files in the home directory:
//!
//! ```text
//! DIR/wallets/<id>.eth       public facts: account address, public key, parties (JSON)
//! DIR/wallets/<id>.ecdsa     this device's threshold ECDSA share (mode 0600)
//! ```

use cosigner_eth::{address_of_point, checksummed};
use cosigner_protocol::ecdsa::{EcdsaKey, EcdsaPublic};
use cosigner_protocol::id::{Epoch, PartyId};
use cosigner_protocol::wire::{SUITE_SECP256K1_ECDSA, WalletId};
use serde::{Deserialize, Serialize};

use super::{Home, text};
use crate::error::{ClientError, Result};

/// Extension of an Ethereum wallet's public file.
const ETH: &str = "eth";
/// Extension of this device's threshold ECDSA share.
const ECDSA: &str = "ecdsa";

/// An Ethereum wallet as this device records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EthWalletFile {
    /// Wallet id (hex in the file).
    #[serde(with = "text::wallet_id")]
    pub wallet_id: WalletId,
    /// [`SUITE_SECP256K1_ECDSA`].
    pub ciphersuite: String,
    /// The account's address, EIP-55 checksummed.
    pub address: String,
    /// The account's public key, SEC1 uncompressed (hex).
    pub public_key: String,
    /// This device's party number.
    pub party: PartyId,
    /// Every party.
    pub parties: Vec<PartyId>,
    /// Signers needed.
    pub min_signers: u16,
    /// The share epoch this device holds.
    pub epoch: Epoch,
    /// For an Ethereum treasury (a DAO wallet): its invitation, provider key and mailbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dao: Option<crate::dao::DaoInfo>,
    /// For an Ethereum treasury: the wallet's public side at `epoch` (every party's public share;
    /// hex of the encoded `EcdsaPublic`), as the DKG or the last refresh confirmed it. A refresh
    /// starts from it. (A personal wallet reads it from its cosigners.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_package: Option<String>,
}

impl EthWalletFile {
    /// The file of a wallet whose account key is `public_key` (SEC1 uncompressed).
    pub fn new(
        wallet_id: WalletId,
        public_key: &[u8],
        parties: &[PartyId],
        min_signers: u16,
    ) -> Result<Self> {
        let address = address_of_point(public_key)
            .map_err(|e| ClientError::Unexpected(format!("the DKG's public key: {e}")))?;
        Ok(Self {
            wallet_id,
            ciphersuite: SUITE_SECP256K1_ECDSA.to_owned(),
            address: checksummed(&address),
            public_key: hex::encode(public_key),
            party: PartyId::DEVICE,
            parties: parties.to_vec(),
            min_signers,
            epoch: Epoch(0),
            dao: None,
            public_package: None,
        })
    }

    /// A treasury's public side as this device recorded it (see [`Self::public_package`]),
    /// checked to be of the wallet's key.
    ///
    /// Errors: none recorded (a file written before treasuries could refresh), or not of this key.
    pub fn public_side(&self) -> Result<EcdsaPublic> {
        let id = self.wallet_id;
        let hex_text = self.public_package.as_deref().ok_or_else(|| {
            ClientError::Input(format!(
                "wallet {id}: this file keeps no public shares (it predates treasury refreshes): \
                 refresh from a device whose file has them"
            ))
        })?;
        let bytes = hex::decode(hex_text)
            .map_err(|e| ClientError::Input(format!("wallet {id}: public shares: {e}")))?;
        let public = EcdsaPublic::from_bytes(&bytes)
            .map_err(|e| ClientError::Input(format!("wallet {id}: public shares: {e}")))?;
        if public.public_key.as_slice() != self.public_key_bytes()? {
            return Err(ClientError::Input(format!(
                "wallet {id}: the public shares are of another key"
            )));
        }
        Ok(public)
    }

    /// Records `public` as the treasury's public side (hex of its encoding).
    pub fn set_public_side(&mut self, public: &EcdsaPublic) -> Result<()> {
        self.public_package = Some(hex::encode(public.to_bytes()?));
        Ok(())
    }

    /// The public key's bytes.
    pub fn public_key_bytes(&self) -> Result<Vec<u8>> {
        hex::decode(&self.public_key)
            .map_err(|e| ClientError::Input(format!("wallet {}: public key: {e}", self.wallet_id)))
    }

    /// The address is the public key's, and the suite is threshold ECDSA's.
    fn check(&self) -> std::result::Result<(), String> {
        if self.ciphersuite != SUITE_SECP256K1_ECDSA {
            return Err(format!("unsupported ciphersuite {:?}", self.ciphersuite));
        }
        let key = hex::decode(&self.public_key).map_err(|e| e.to_string())?;
        let address = address_of_point(&key).map_err(|e| e.to_string())?;
        if checksummed(&address) != self.address {
            return Err("its address is not its public key's".into());
        }
        Ok(())
    }
}

impl Home {
    /// Records a new Ethereum wallet: its public file and this device's share (0600).
    pub fn save_eth_wallet(&self, wallet: &EthWalletFile, key: &EcdsaKey) -> Result<()> {
        let id = wallet.wallet_id;
        if self.has(&id, ECDSA)? {
            return Err(self.err(&id, ECDSA, "already exists"));
        }
        self.put(&id, ECDSA, &key.to_secret_bytes()?)?;
        let json = serde_json::to_vec_pretty(wallet).map_err(|e| self.err(&id, ETH, e))?;
        self.put(&id, ETH, &json)
    }

    /// Replaces this device's share of an Ethereum wallet and its file (a refresh moved it to
    /// `wallet.epoch`): the share first, so a file never names an epoch whose share is missing.
    pub fn replace_eth_share(&self, wallet: &EthWalletFile, key: &EcdsaKey) -> Result<()> {
        let id = wallet.wallet_id;
        self.put(&id, ECDSA, &key.to_secret_bytes()?)?;
        let json = serde_json::to_vec_pretty(wallet).map_err(|e| self.err(&id, ETH, e))?;
        self.put(&id, ETH, &json)
    }

    /// Keeps a refreshed share not yet committed, beside any kept before
    /// ([`Home::save_prepared_share`]).
    pub fn add_eth_prepared(&self, id: &WalletId, key: &EcdsaKey) -> Result<()> {
        self.save_prepared_share(id, &key.to_secret_bytes()?)
    }

    /// The refreshed shares kept by [`Self::add_eth_prepared`], oldest first.
    pub fn eth_prepared(&self, id: &WalletId) -> Result<Vec<EcdsaKey>> {
        self.prepared_shares(id)?
            .iter()
            .map(|bytes| Ok(EcdsaKey::from_secret_bytes(bytes)?))
            .collect()
    }

    /// Reads an Ethereum wallet's public file.
    pub fn eth_wallet(&self, id: &WalletId) -> Result<EthWalletFile> {
        let Some(bytes) = self.get(id, ETH)? else {
            return Err(ClientError::Input(format!(
                "unknown Ethereum wallet {id}: this home ({}) holds no such wallet",
                self.store.describe("")
            )));
        };
        let wallet: EthWalletFile = serde_json::from_slice(&bytes)
            .map_err(|e| self.err(id, ETH, format!("not a readable wallet file ({e})")))?;
        if wallet.wallet_id != *id {
            return Err(self.err(id, ETH, format!("holds wallet {}", wallet.wallet_id)));
        }
        wallet
            .check()
            .map_err(|e| self.err(id, ETH, format!("not a consistent wallet file: {e}")))?;
        Ok(wallet)
    }

    /// Whether this home holds an Ethereum wallet `id`.
    pub fn has_eth_wallet(&self, id: &WalletId) -> bool {
        self.has(id, ETH).unwrap_or(false)
    }

    /// This device's threshold ECDSA share of wallet `id`, checked to be of its key.
    pub fn ecdsa_key(&self, wallet: &EthWalletFile) -> Result<EcdsaKey> {
        let id = &wallet.wallet_id;
        let bytes = self
            .get(id, ECDSA)?
            .ok_or_else(|| self.err(id, ECDSA, "No such file or directory"))?;
        let key = EcdsaKey::from_secret_bytes(&bytes)
            .map_err(|e| self.err(id, ECDSA, format!("not a threshold ECDSA share ({e})")))?;
        if key.public_key() != wallet.public_key_bytes()? {
            return Err(self.err(id, ECDSA, "a share of another key"));
        }
        Ok(key)
    }

    /// Removes an Ethereum wallet's files (a creation that registered nothing).
    pub fn forget_eth_wallet(&self, id: &WalletId) -> Result<()> {
        for kind in [ECDSA, ETH] {
            self.remove_journal(id, kind)?;
        }
        Ok(())
    }

    /// Every Ethereum wallet recorded here, sorted by id.
    pub fn eth_wallets(&self) -> Result<Vec<EthWalletFile>> {
        self.ids_with(ETH)?
            .iter()
            .map(|id| self.eth_wallet(id))
            .collect()
    }
}
