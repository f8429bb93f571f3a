//! cosigner-client for phones: the client library behind UniFFI bindings (Kotlin, Swift, Python).
//!
//! The app implements three traits in its own language, so Shard A stays in the phone's secure
//! hardware (docs/phone.md):
//!
//! * [`DeviceKeyStore`]: the P-256 device key, sign only (Android Keystore, Secure Enclave);
//! * [`RecordStore`]: where the wallet's records live (app-private files, a database);
//! * [`RecordSealer`]: the AEAD under a platform-held key every secret record passes through
//!   (a Keystore AES key, a Keychain item). A [`Cosigner`] seals every record, public ones too.
//!
//! [`Cosigner`] then creates wallets, signs, refreshes and recovers, each ceremony opening its
//! attested sessions to the cosigners as the `cosigner` command line does (the same library).
//! In-memory implementations of the three ([`memory_record_store`], [`random_sealer`],
//! [`memory_device_key`]) serve tests.

use std::path::Path;
use std::sync::Arc;

use cosigner_client::address::{Network, child_address, wallet_xpub};
use cosigner_client::home::{Home, RecoveryKeyOut};
use cosigner_client::session::Session;
use cosigner_client::store::{self, SealScope, StoreError, StoreResult};
use cosigner_client::trust::Trust;
use cosigner_client::wallet;
use cosigner_client::{ClientError, one_line};
use cosigner_protocol::hd::Keychain;
use cosigner_protocol::wire::WalletId;

uniffi::setup_scaffolding!();

/// Why a call failed, by kind; `reason` is one line for the user.
#[derive(Debug, thiserror::Error, uniffi::Error)]
pub enum CosignerError {
    /// An argument is malformed (a wallet id, a network, a key).
    #[error("{reason}")]
    Input {
        /// Why.
        reason: String,
    },
    /// A cosigner's attestation did not verify against the trust configuration, or the trust
    /// configuration is unusable.
    #[error("{reason}")]
    Attestation {
        /// Why.
        reason: String,
    },
    /// A cosigner could not be reached, or the connection broke: try again.
    #[error("{reason}")]
    Connection {
        /// Why.
        reason: String,
    },
    /// A cosigner refused the request (policy, suspension, an unknown wallet).
    #[error("{reason}")]
    Refused {
        /// Why.
        reason: String,
    },
    /// The app's storage, sealer or device key failed (also what the app's own implementations
    /// throw).
    #[error("{reason}")]
    Storage {
        /// Why.
        reason: String,
    },
    /// This device's share is damaged or missing: recover the wallet.
    #[error("{reason}")]
    ShareDamaged {
        /// Why.
        reason: String,
    },
    /// Anything else (a protocol failure a cosigner caused).
    #[error("{reason}")]
    Other {
        /// Why.
        reason: String,
    },
}

impl From<ClientError> for CosignerError {
    fn from(e: ClientError) -> Self {
        let reason = one_line(&e.to_string());
        match e {
            ClientError::Input(_) => Self::Input { reason },
            ClientError::Trust { .. }
            | ClientError::Attestation { .. }
            | ClientError::UntrustedRoot { .. }
            | ClientError::ClockBehind { .. }
            | ClientError::ClockAhead { .. } => Self::Attestation { reason },
            ClientError::Connection { .. } => Self::Connection { reason },
            ClientError::Remote(_) => Self::Refused { reason },
            ClientError::Home { .. } => Self::Storage { reason },
            ClientError::ShareDamaged { .. } => Self::ShareDamaged { reason },
            _ => Self::Other { reason },
        }
    }
}

/// An exception of another type than [`CosignerError`] thrown by the app's callback: UniFFI
/// hands it here rather than panicking.
impl From<uniffi::UnexpectedUniFFICallbackError> for CosignerError {
    fn from(e: uniffi::UnexpectedUniFFICallbackError) -> Self {
        Self::Storage {
            reason: format!("the app's storage threw: {}", one_line(&e.reason)),
        }
    }
}

impl From<CosignerError> for StoreError {
    fn from(e: CosignerError) -> Self {
        StoreError::DeviceKey {
            reason: e.to_string(),
        }
    }
}

fn input(reason: impl std::fmt::Display) -> CosignerError {
    CosignerError::Input {
        reason: reason.to_string(),
    }
}

/// The device key, implemented by the app: P-256, created non-extractable in the phone's secure
/// hardware. The library never asks for the secret.
#[uniffi::export(with_foreign)]
pub trait DeviceKeyStore: Send + Sync {
    /// The public key, SEC1 (65 bytes uncompressed or 33 compressed).
    fn public_key(&self) -> Result<Vec<u8>, CosignerError>;
    /// ECDSA over `digest`, 32 bytes of SHA-256 the library computed (Android:
    /// `NONEwithECDSA`; Apple: `ecdsaSignatureDigestX962SHA256`): DER or `r ‖ s`.
    fn sign_digest(&self, digest: Vec<u8>) -> Result<Vec<u8>, CosignerError>;
}

/// Named records, implemented by the app: read and replaced whole, atomically.
#[uniffi::export(with_foreign)]
pub trait RecordStore: Send + Sync {
    /// The record, or none.
    fn read(&self, name: String) -> Result<Option<Vec<u8>>, CosignerError>;
    /// Replaces or creates the record atomically.
    fn write(&self, name: String, bytes: Vec<u8>) -> Result<(), CosignerError>;
    /// Removes the record (absent is fine).
    fn remove(&self, name: String) -> Result<(), CosignerError>;
    /// Every record's name.
    fn list(&self) -> Result<Vec<String>, CosignerError>;
}

/// An AEAD under a key the platform holds, implemented by the app: `open(name, seal(name, p))`
/// is `p`, and nothing else opens (another name, altered bytes): `open` throws `ShareDamaged`
/// for what its AEAD refuses, `Storage` when it cannot reach its key.
#[uniffi::export(with_foreign)]
pub trait RecordSealer: Send + Sync {
    /// `plaintext` sealed for the record `name`.
    fn seal(&self, name: String, plaintext: Vec<u8>) -> Result<Vec<u8>, CosignerError>;
    /// The plaintext of a record sealed for `name`.
    fn open(&self, name: String, sealed: Vec<u8>) -> Result<Vec<u8>, CosignerError>;
}

/// The app's device key as the library's [`store::DeviceKeyStore`].
struct Device(Arc<dyn DeviceKeyStore>);

impl store::DeviceKeyStore for Device {
    fn public_key(&self) -> StoreResult<Vec<u8>> {
        Ok(self.0.public_key()?)
    }
    fn sign_digest(&self, digest: &[u8; 32]) -> StoreResult<Vec<u8>> {
        Ok(self.0.sign_digest(digest.to_vec())?)
    }
}

/// The app's records as the library's [`store::WalletStore`].
struct Records(Arc<dyn RecordStore>);

fn io(name: &str, e: CosignerError) -> StoreError {
    StoreError::Io {
        name: name.to_owned(),
        reason: e.to_string(),
    }
}

impl store::WalletStore for Records {
    fn read(&self, name: &str) -> StoreResult<Option<Vec<u8>>> {
        self.0.read(name.to_owned()).map_err(|e| io(name, e))
    }
    fn write(&self, name: &str, bytes: &[u8]) -> StoreResult<()> {
        self.0
            .write(name.to_owned(), bytes.to_vec())
            .map_err(|e| io(name, e))
    }
    fn remove(&self, name: &str) -> StoreResult<()> {
        self.0.remove(name.to_owned()).map_err(|e| io(name, e))
    }
    fn list(&self) -> StoreResult<Vec<String>> {
        self.0.list().map_err(|e| io("records", e))
    }
}

/// The app's sealer as the library's [`store::Sealer`].
struct Sealing(Arc<dyn RecordSealer>);

impl store::Sealer for Sealing {
    fn seal(&self, name: &str, plaintext: &[u8]) -> StoreResult<Vec<u8>> {
        self.0
            .seal(name.to_owned(), plaintext.to_vec())
            .map_err(|e| io(name, e))
    }
    /// `ShareDamaged` from the app is a record its AEAD refused (trying again changes
    /// nothing: the user recovers the wallet); any other error is a failure to reach the key (a
    /// locked keystore), which the library reports as such and never takes for damage.
    fn open(&self, name: &str, sealed: &[u8]) -> StoreResult<zeroize::Zeroizing<Vec<u8>>> {
        self.0
            .open(name.to_owned(), sealed.to_vec())
            .map(zeroize::Zeroizing::new)
            .map_err(|e| match e {
                CosignerError::ShareDamaged { .. } => StoreError::not_opened(name),
                other => io(name, other),
            })
    }
}

/// The library's own implementations, offered to the app (tests, or a desktop app).
struct Own<T>(T);

impl RecordStore for Own<store::MemoryStore> {
    fn read(&self, name: String) -> Result<Option<Vec<u8>>, CosignerError> {
        store::WalletStore::read(&self.0, &name).map_err(storage)
    }
    fn write(&self, name: String, bytes: Vec<u8>) -> Result<(), CosignerError> {
        store::WalletStore::write(&self.0, &name, &bytes).map_err(storage)
    }
    fn remove(&self, name: String) -> Result<(), CosignerError> {
        store::WalletStore::remove(&self.0, &name).map_err(storage)
    }
    fn list(&self) -> Result<Vec<String>, CosignerError> {
        store::WalletStore::list(&self.0).map_err(storage)
    }
}

impl RecordSealer for Own<store::AeadSealer> {
    fn seal(&self, name: String, plaintext: Vec<u8>) -> Result<Vec<u8>, CosignerError> {
        store::Sealer::seal(&self.0, &name, &plaintext).map_err(storage)
    }
    fn open(&self, name: String, sealed: Vec<u8>) -> Result<Vec<u8>, CosignerError> {
        store::Sealer::open(&self.0, &name, &sealed)
            .map(|p| p.to_vec())
            .map_err(storage)
    }
}

impl DeviceKeyStore for Own<store::MemoryDeviceKey> {
    fn public_key(&self) -> Result<Vec<u8>, CosignerError> {
        store::DeviceKeyStore::public_key(&self.0).map_err(storage)
    }
    fn sign_digest(&self, digest: Vec<u8>) -> Result<Vec<u8>, CosignerError> {
        let digest: [u8; 32] = digest
            .try_into()
            .map_err(|_| input("a digest is 32 bytes"))?;
        store::DeviceKeyStore::sign_digest(&self.0, &digest).map_err(storage)
    }
}

fn storage(e: StoreError) -> CosignerError {
    CosignerError::Storage {
        reason: e.to_string(),
    }
}

/// Records kept in memory (tests).
#[uniffi::export]
pub fn memory_record_store() -> Arc<dyn RecordStore> {
    Arc::new(Own(store::MemoryStore::default()))
}

/// AES-256-GCM under a random key that lives in this process only (tests).
#[uniffi::export]
pub fn random_sealer() -> Result<Arc<dyn RecordSealer>, CosignerError> {
    Ok(Arc::new(Own(store::AeadSealer::random()?)))
}

/// A random P-256 device key in memory (tests).
#[uniffi::export]
pub fn memory_device_key() -> Arc<dyn DeviceKeyStore> {
    Arc::new(Own(store::MemoryDeviceKey::random()))
}

/// A wallet as this device holds it.
#[derive(Debug, Clone, uniffi::Record)]
pub struct WalletInfo {
    /// The wallet id (32 hex digits).
    pub wallet_id: String,
    /// Its Taproot address (BIP-341 output key, bech32m).
    pub address: String,
    /// The x-only group key (64 hex digits).
    pub group_public_key: String,
    /// The share epoch (moves with each refresh; the address stays).
    pub epoch: u64,
    /// `bitcoin`, `testnet`, `signet` or `regtest`.
    pub network: String,
}

impl From<&cosigner_client::home::WalletFile> for WalletInfo {
    fn from(w: &cosigner_client::home::WalletFile) -> Self {
        Self {
            wallet_id: w.wallet_id.to_hex(),
            address: w.address.clone(),
            group_public_key: hex::encode(w.group_public_key),
            epoch: w.epoch.0,
            network: w.network.name().to_owned(),
        }
    }
}

/// A new wallet and its recovery credential.
#[derive(Clone, uniffi::Record)]
pub struct CreatedWallet {
    /// The wallet.
    pub wallet: WalletInfo,
    /// The recovery credential (a P-256 key, PKCS#8 PEM): the user keeps it offline; with it and
    /// the recovery cosigner a new phone takes the wallet over. `None` only when the store could
    /// not give it back just now (the wallet exists: [`Cosigner::recovery_key`] later).
    pub recovery_key_pem: Option<String>,
}

/// A created wallet's `Debug`: the recovery credential never printed.
fn created_debug(
    f: &mut std::fmt::Formatter<'_>,
    name: &str,
    wallet: &dyn std::fmt::Debug,
) -> std::fmt::Result {
    f.debug_struct(name)
        .field("wallet", wallet)
        .field("recovery_key_pem", &"<redacted>")
        .finish()
}

impl std::fmt::Debug for CreatedWallet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        created_debug(f, "CreatedWallet", &self.wallet)
    }
}

/// A signature and the cosigner's receipt of it.
#[derive(Debug, Clone, uniffi::Record)]
pub struct SignedMessage {
    /// BIP-340 signature (64 bytes), verified under the wallet's key before it is returned.
    pub signature: Vec<u8>,
    /// The cosigner's signed audit entry with its attestation (JSON; `cosigner receipt
    /// verify` checks it), when it gave one.
    pub receipt_json: Option<String>,
}

/// A Bitcoin transaction signed from a PSBT.
#[derive(Debug, Clone, uniffi::Record)]
pub struct SignedPsbt {
    /// Its txid.
    pub txid: String,
    /// The finalized transaction (consensus encoding), ready to broadcast.
    pub tx: Vec<u8>,
    /// The PSBT with each input's key signature (BIP-371), not finalized.
    pub psbt: Vec<u8>,
    /// The provider's receipt (JSON), when it gave one.
    pub receipt_json: Option<String>,
}

/// An Ethereum transaction signed.
#[derive(Debug, Clone, uniffi::Record)]
pub struct SignedEthTransaction {
    /// The signed transaction (EIP-2718), ready for `eth_sendRawTransaction`.
    pub raw_tx: Vec<u8>,
    /// Its hash (hex).
    pub tx_hash: String,
    /// The sender: the wallet's address (EIP-55).
    pub from: String,
    /// The provider's receipt (JSON), when it gave one.
    pub receipt_json: Option<String>,
}

/// An Ethereum wallet as this device holds it.
#[derive(Debug, Clone, uniffi::Record)]
pub struct EthWalletInfo {
    /// The wallet id.
    pub wallet_id: String,
    /// The account's address (EIP-55).
    pub address: String,
    /// The share epoch.
    pub epoch: u64,
}

impl From<&cosigner_client::home::EthWalletFile> for EthWalletInfo {
    fn from(w: &cosigner_client::home::EthWalletFile) -> Self {
        Self {
            wallet_id: w.wallet_id.to_hex(),
            address: w.address.clone(),
            epoch: w.epoch.0,
        }
    }
}

/// A new Ethereum account and its recovery credential.
#[derive(Clone, uniffi::Record)]
pub struct CreatedEthWallet {
    /// The account.
    pub wallet: EthWalletInfo,
    /// The recovery credential (PKCS#8 PEM), as in [`CreatedWallet`].
    pub recovery_key_pem: Option<String>,
}

impl std::fmt::Debug for CreatedEthWallet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        created_debug(f, "CreatedEthWallet", &self.wallet)
    }
}

fn receipt_json(
    receipt: Option<cosigner_client::receipt::Receipt>,
) -> Result<Option<String>, CosignerError> {
    receipt
        .map(|r| serde_json::to_string(&r))
        .transpose()
        .map_err(|e| CosignerError::Other {
            reason: e.to_string(),
        })
}

/// A device's client: its storage, the trust configuration and the two cosigners' addresses.
/// No global state: an app may hold several.
#[derive(uniffi::Object)]
pub struct Cosigner {
    home: Home,
    trust: Trust,
    provider: String,
    recovery: String,
}

impl std::fmt::Debug for Cosigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cosigner")
            .field("provider", &self.provider)
            .field("recovery", &self.recovery)
            .finish_non_exhaustive()
    }
}

fn wallet_id(hex: &str) -> Result<WalletId, CosignerError> {
    WalletId::from_hex(hex).map_err(|e| input(format!("wallet id {hex:?}: {e}")))
}

#[uniffi::export]
impl Cosigner {
    /// A client over the app's storage. `trust_file` is the trust configuration (a TOML file
    /// the app ships: pinned attestation roots and measurements, docs/attestation.md);
    /// `provider` and `recovery` are the cosigners' `tcp://host:port` addresses.
    #[uniffi::constructor]
    pub fn new(
        trust_file: String,
        provider: String,
        recovery: String,
        records: Arc<dyn RecordStore>,
        sealer: Arc<dyn RecordSealer>,
        device_key: Arc<dyn DeviceKeyStore>,
    ) -> Result<Arc<Self>, CosignerError> {
        let trust = Trust::load(Path::new(&trust_file))?;
        Self::build(trust, provider, recovery, records, sealer, device_key)
    }

    /// [`Cosigner::new`] with the trust configuration given as text and its root certificates
    /// (PEM) by the names the text gives them (`roots = ["aws-root.pem"]`): for an app that
    /// ships them as assets rather than files.
    #[uniffi::constructor]
    pub fn with_trust(
        trust_toml: String,
        roots: std::collections::HashMap<String, Vec<u8>>,
        provider: String,
        recovery: String,
        records: Arc<dyn RecordStore>,
        sealer: Arc<dyn RecordSealer>,
        device_key: Arc<dyn DeviceKeyStore>,
    ) -> Result<Arc<Self>, CosignerError> {
        let trust = Trust::parse(&trust_toml, Path::new("trust"), &|name: &Path| {
            name.to_str()
                .and_then(|n| roots.get(n))
                .cloned()
                .ok_or_else(|| "not among the roots given".to_owned())
        })?;
        Self::build(trust, provider, recovery, records, sealer, device_key)
    }

    /// This device's key as the cosigners register it (SEC1 compressed, hex).
    pub fn device_public_key(&self) -> Result<String, CosignerError> {
        let key = self.home.device_key()?;
        Ok(hex::encode(cosigner_protocol::auth::public_key_bytes(&key)))
    }

    /// Creates a 2-of-3 Bitcoin wallet (this device, the provider, the recovery cosigner) by
    /// distributed key generation on `network`. The recovery credential is returned, and kept
    /// sealed in the store until [`Cosigner::forget_recovery_key`] (once the user has it
    /// offline); no file is written. Run again after an interruption, it finishes the creation
    /// it had started instead of making a new wallet.
    pub fn create_wallet(&self, network: String) -> Result<CreatedWallet, CosignerError> {
        let network: Network = network.parse()?;
        let (mut provider, mut recovery) = self.sessions()?;
        let created = wallet::create(
            &self.home,
            &mut provider,
            &mut recovery,
            network,
            RecoveryKeyOut::Sealed,
        )?;
        let id = created.wallet.wallet_id;
        Ok(CreatedWallet {
            wallet: WalletInfo::from(&created.wallet),
            recovery_key_pem: self.kept_recovery_key(&id),
        })
    }

    /// The recovery credential of a wallet created here, while it is kept (PKCS#8 PEM).
    pub fn recovery_key(&self, wallet_id: String) -> Result<Option<String>, CosignerError> {
        let id = self::wallet_id(&wallet_id)?;
        Ok(self.home.recovery_key(&id)?.map(|pem| pem.to_string()))
    }

    /// The wallets (Bitcoin and Ethereum) whose recovery credential is still kept here: the app
    /// asks the user to back them up, then calls [`Cosigner::forget_recovery_key`].
    pub fn pending_recovery_keys(&self) -> Result<Vec<String>, CosignerError> {
        Ok(self
            .home
            .kept_recovery_keys()?
            .iter()
            .map(WalletId::to_hex)
            .collect())
    }

    /// The Ethereum accounts this device holds.
    pub fn eth_wallets(&self) -> Result<Vec<EthWalletInfo>, CosignerError> {
        Ok(self
            .home
            .eth_wallets()?
            .iter()
            .map(EthWalletInfo::from)
            .collect())
    }

    /// Forgets the recovery credential kept since the wallet's creation: the user has it
    /// offline now, and a thief of this phone must not find it.
    pub fn forget_recovery_key(&self, wallet_id: String) -> Result<(), CosignerError> {
        Ok(self
            .home
            .forget_recovery_key(&self::wallet_id(&wallet_id)?)?)
    }

    /// Signs a 32-byte message (a BIP-341 sighash) with this device and the provider, in one
    /// round trip.
    pub fn sign_message(
        &self,
        wallet_id: String,
        message: Vec<u8>,
    ) -> Result<SignedMessage, CosignerError> {
        let id = self::wallet_id(&wallet_id)?;
        let message: [u8; 32] = message
            .try_into()
            .map_err(|_| input("a message to sign is 32 bytes (a sighash)"))?;
        let mut provider = Session::connect(&self.provider, &self.trust)?;
        let signed = wallet::sign_with_receipt(
            &self.home,
            &mut provider,
            wallet::CoSigner::Provider,
            id,
            &message,
        )?;
        Ok(SignedMessage {
            signature: signed.signature.to_vec(),
            receipt_json: receipt_json(signed.receipt)?,
        })
    }

    /// Signs every input of a PSBT (binary, BIP-174) spending the wallet's Taproot outputs, with
    /// the provider, which values it and applies the wallet's policy; finalizes it.
    pub fn sign_psbt(&self, wallet_id: String, psbt: Vec<u8>) -> Result<SignedPsbt, CosignerError> {
        let id = self::wallet_id(&wallet_id)?;
        let mut provider = Session::connect(&self.provider, &self.trust)?;
        let signed = cosigner_client::psbt_sign::sign_psbt(&self.home, &mut provider, id, &psbt)?;
        Ok(SignedPsbt {
            txid: signed.txid,
            tx: signed.tx,
            psbt: signed.psbt,
            receipt_json: receipt_json(signed.receipt)?,
        })
    }

    /// Creates a 2-of-3 Ethereum account (threshold ECDSA, docs/ethereum.md); the recovery
    /// credential as [`Cosigner::create_wallet`] keeps it.
    pub fn create_eth_wallet(&self) -> Result<CreatedEthWallet, CosignerError> {
        let (mut provider, mut recovery) = self.sessions()?;
        let created = cosigner_client::eth::create(
            &self.home,
            &mut provider,
            &mut recovery,
            RecoveryKeyOut::Sealed,
            None,
            None,
        )?;
        Ok(CreatedEthWallet {
            recovery_key_pem: self.kept_recovery_key(&created.wallet.wallet_id),
            wallet: EthWalletInfo::from(&created.wallet),
        })
    }

    /// Signs an Ethereum transaction given as `eth_signTransaction` takes it (JSON), with the
    /// provider, which reads it and applies the wallet's policy.
    pub fn sign_eth_transaction(
        &self,
        wallet_id: String,
        request_json: String,
    ) -> Result<SignedEthTransaction, CosignerError> {
        let id = self::wallet_id(&wallet_id)?;
        let request = cosigner_eth::TxRequest::from_json(&request_json)
            .map_err(|e| input(format!("transaction: {e}")))?;
        let mut provider = Session::connect(&self.provider, &self.trust)?;
        let signed = cosigner_client::eth::sign(&self.home, &mut provider, id, request)?;
        Ok(SignedEthTransaction {
            raw_tx: signed.raw_tx,
            tx_hash: hex::encode(signed.tx_hash),
            from: signed.from,
            receipt_json: receipt_json(signed.receipt)?,
        })
    }

    /// Refreshes the wallet's shares (all three parties): the address stays, the epoch moves,
    /// and the old shares sign nothing any more.
    pub fn refresh(&self, wallet_id: String) -> Result<WalletInfo, CosignerError> {
        let id = self::wallet_id(&wallet_id)?;
        self.home.check_share(&id)?;
        let (mut provider, mut recovery) = self.sessions()?;
        let w = wallet::refresh(&self.home, &mut provider, &mut recovery, id, &mut |_| {})?;
        Ok(WalletInfo::from(&w))
    }

    /// Takes an Ethereum account over onto this device with the recovery credential (threshold
    /// ECDSA repair, then a refresh of all three parties).
    pub fn recover_eth(
        &self,
        wallet_id: String,
        recovery_key_pem: String,
    ) -> Result<EthWalletInfo, CosignerError> {
        let id = self::wallet_id(&wallet_id)?;
        let key = recovery_key(recovery_key_pem)?;
        let (mut provider, mut recovery) = self.sessions()?;
        let w = cosigner_client::eth::recover(&self.home, &mut provider, &mut recovery, id, &key)?;
        Ok(EthWalletInfo::from(&w))
    }

    /// Refreshes an Ethereum wallet's shares: same account, new shares, the old ones retired.
    pub fn refresh_eth(&self, wallet_id: String) -> Result<EthWalletInfo, CosignerError> {
        let id = self::wallet_id(&wallet_id)?;
        let (mut provider, mut recovery) = self.sessions()?;
        let w = cosigner_client::eth::refresh(&self.home, &mut provider, &mut recovery, id)?;
        Ok(EthWalletInfo::from(&w))
    }

    /// Takes a wallet over onto this device (a lost phone): authorized by the recovery
    /// credential, with the recovery cosigner; the provider registers this device's key.
    pub fn recover(
        &self,
        wallet_id: String,
        recovery_key_pem: String,
        network: String,
    ) -> Result<WalletInfo, CosignerError> {
        let id = self::wallet_id(&wallet_id)?;
        let network: Network = network.parse()?;
        let recovery_key = recovery_key(recovery_key_pem)?;
        let (mut provider, mut recovery) = self.sessions()?;
        let w = wallet::recover(
            &self.home,
            &mut provider,
            &mut recovery,
            id,
            &recovery_key,
            network,
        )?;
        Ok(WalletInfo::from(&w))
    }

    /// The wallets this device holds.
    pub fn wallets(&self) -> Result<Vec<WalletInfo>, CosignerError> {
        Ok(self.home.wallets()?.iter().map(WalletInfo::from).collect())
    }

    /// The wallet's receive (or change) address at `index` (BIP-32 unhardened child of its
    /// extended key, docs/addresses.md).
    pub fn address(
        &self,
        wallet_id: String,
        change: bool,
        index: u32,
    ) -> Result<String, CosignerError> {
        let w = self.home.wallet(&self::wallet_id(&wallet_id)?)?;
        let keychain = if change {
            Keychain::Change
        } else {
            Keychain::Receive
        };
        Ok(child_address(&w, keychain, index)?.1)
    }

    /// The wallet's multipath output descriptor (BIP-386 `tr()`, BIP-389 `<0;1>`), for
    /// watch-only wallet software.
    pub fn descriptor(&self, wallet_id: String) -> Result<String, CosignerError> {
        let w = self.home.wallet(&self::wallet_id(&wallet_id)?)?;
        Ok(wallet_xpub(&w)?.descriptors().multipath)
    }
}

/// The recovery credential of a PEM text.
fn recovery_key(pem: String) -> Result<p256::ecdsa::SigningKey, CosignerError> {
    use p256::pkcs8::DecodePrivateKey;
    let pem = zeroize::Zeroizing::new(pem);
    p256::ecdsa::SigningKey::from_pkcs8_pem(&pem)
        .map_err(|_| input("not a recovery credential (a P-256 PKCS#8 PEM key)"))
}

impl Cosigner {
    fn build(
        trust: Trust,
        provider: String,
        recovery: String,
        records: Arc<dyn RecordStore>,
        sealer: Arc<dyn RecordSealer>,
        device_key: Arc<dyn DeviceKeyStore>,
    ) -> Result<Arc<Self>, CosignerError> {
        let home = Home::with_storage(
            Arc::new(Records(records)),
            Arc::new(Sealing(sealer)),
            Arc::new(Device(device_key)),
            SealScope::Everything,
        )?;
        Ok(Arc::new(Self {
            home,
            trust,
            provider,
            recovery,
        }))
    }

    /// The credential a creation just kept: a wallet that exists is never reported as a failed
    /// creation (a rerun would make a second one), so a store that fails here gives `None`.
    fn kept_recovery_key(&self, id: &WalletId) -> Option<String> {
        self.home
            .recovery_key(id)
            .ok()
            .flatten()
            .map(|pem| pem.to_string())
    }

    fn sessions(&self) -> Result<(Session, Session), CosignerError> {
        Ok((
            Session::connect(&self.provider, &self.trust)?,
            Session::connect(&self.recovery, &self.trust)?,
        ))
    }
}
