//! A device's home: by default the client's home directory (`--home DIR`); on a phone, the
//! storage its app provides ([`Home::with_storage`], [`crate::store`]).
//!
//! ```text
//! DIR/device.key             P-256 device key (PKCS#8 PEM, mode 0600), created on first use
//! DIR/storage.key            the AES-256 key sealing the secret records (0600), created on first use
//! DIR/storage.sealed         marks a home whose secret records are all sealed (the migration ran)
//! DIR/wallets/<id>.json      public facts: group key, address, parties, public key package
//! DIR/wallets/<id>.share     this device's FROST KeyPackage (frost's serialization), sealed
//! DIR/wallets/<id>.prepared  a refresh's new KeyPackage until every party committed, sealed
//! DIR/wallets/<id>.policy    a personal wallet's spending policy as last registered from here
//! DIR/wallets/<id>.spends    the PSBT spends signed from this device (JSON), for `wallet show`
//! DIR/wallets/<id>.eth       an Ethereum wallet's public facts (JSON; `home::eth`)
//! DIR/wallets/<id>.ecdsa     this device's threshold ECDSA share of it, sealed
//! ```
//!
//! `.policy` and `.spends` are this device's own record, for showing a wallet offline: the cosigners hold
//! the policy in force and the whole spend history, and decide by theirs.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use cosigner_protocol::id::Epoch;
use cosigner_protocol::id::PartyId;
use cosigner_protocol::wire::WalletId;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::address::{Network, p2tr_address};
use crate::error::{ClientError, Result};
use crate::store::{
    AeadSealer, DeviceKey, DeviceKeyStore, DirStore, FileDeviceKey, MemoryDeviceKey, MemoryStore,
    SealScope, Sealer, StoreError, WalletStore,
};
pub(crate) use crate::store::{home_err, io_err, occupied};

type Suite = frost_secp256k1_tr::Secp256K1Sha256TR;
use frost_core::keys::PublicKeyPackage;

impl WalletFile {
    /// Checks what the file's fields must agree on: the ciphersuite is the one this client
    /// signs with, and the address and the x-only key are those of the public key package.
    fn check(&self) -> std::result::Result<(), String> {
        if self.ciphersuite != cosigner_protocol::wire::SUITE_SECP256K1_TR {
            return Err(format!("unsupported ciphersuite {:?}", self.ciphersuite));
        }
        let group = self
            .public_key_package
            .verifying_key()
            .serialize()
            .map_err(|e| e.to_string())?;
        let x_only = crate::address::x_only(&group).map_err(|e| e.to_string())?;
        if x_only != self.group_public_key {
            return Err("its group key is not its public key package's".into());
        }
        let address = p2tr_address(&x_only, self.network).map_err(|e| e.to_string())?;
        if address != self.address {
            return Err("its address is not its group key's".into());
        }
        Ok(())
    }
}

/// The text forms of [`WalletFile`]'s typed fields.
mod text {
    /// Lowercase hex of a [`cosigner_protocol::wire::WalletId`].
    pub(super) mod wallet_id {
        use cosigner_protocol::wire::WalletId;
        use serde::{Deserialize, Deserializer, Serializer, de::Error};
        pub fn serialize<S: Serializer>(id: &WalletId, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_str(&id.to_hex())
        }
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<WalletId, D::Error> {
            WalletId::from_hex(&String::deserialize(d)?).map_err(D::Error::custom)
        }
    }

    /// Lowercase hex of 32 bytes.
    pub(super) mod x_only {
        use serde::{Deserialize, Deserializer, Serializer, de::Error};
        pub fn serialize<S: Serializer>(key: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
            s.serialize_str(&hex::encode(key))
        }
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
            let bytes = hex::decode(String::deserialize(d)?).map_err(D::Error::custom)?;
            bytes
                .try_into()
                .map_err(|_| D::Error::custom("group key is not 32 bytes"))
        }
    }

    /// A network by its name (`regtest`, ...).
    pub(super) mod network {
        use crate::address::Network;
        use serde::{Deserialize, Deserializer, Serializer, de::Error};
        pub fn serialize<S: Serializer>(network: &Network, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_str(network.name())
        }
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Network, D::Error> {
            String::deserialize(d)?.parse().map_err(D::Error::custom)
        }
    }

    /// Hex of frost's serialization of a public key package.
    pub(super) mod public_key_package {
        use frost_core::keys::PublicKeyPackage;
        use serde::{Deserialize, Deserializer, Serializer, de::Error, ser};
        type Package = PublicKeyPackage<super::super::Suite>;
        pub fn serialize<S: Serializer>(pkp: &Package, s: S) -> Result<S::Ok, S::Error> {
            let bytes = pkp.serialize().map_err(ser::Error::custom)?;
            s.serialize_str(&hex::encode(bytes))
        }
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Package, D::Error> {
            let bytes = hex::decode(String::deserialize(d)?).map_err(D::Error::custom)?;
            Package::deserialize(&bytes).map_err(D::Error::custom)
        }
    }
}

/// A wallet as this device records it: parsed once, when the file is read, into typed values
/// (the JSON keeps its text form: hex ids, keys and packages, network names).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WalletFile {
    /// Wallet id (hex in the file).
    #[serde(with = "text::wallet_id")]
    pub wallet_id: WalletId,
    /// FROST ciphersuite.
    pub ciphersuite: String,
    /// x-only group key (hex in the file): the Taproot output key.
    #[serde(with = "text::x_only")]
    pub group_public_key: [u8; 32],
    /// P2TR address.
    pub address: String,
    /// Network of the address (its name in the file).
    #[serde(with = "text::network")]
    pub network: Network,
    /// This device's party number.
    pub party: PartyId,
    /// Threshold.
    pub min_signers: u16,
    /// All parties.
    pub parties: Vec<PartyId>,
    /// Share epoch.
    pub epoch: Epoch,
    /// The wallet's public key package (frost's serialization, hex in the file).
    #[serde(with = "text::public_key_package")]
    pub public_key_package: PublicKeyPackage<Suite>,
    /// For a DAO wallet: its invitation, provider key and mailbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dao: Option<crate::dao::DaoInfo>,
}

/// The local copy of a personal wallet's policy (`DIR/wallets/<id>.policy`).
const POLICY: &str = "policy";
/// This device's record of its spends (`DIR/wallets/<id>.spends`).
const SPENDS: &str = "spends";

/// An open home: this device's key, its wallets' records and the key that seals them
/// ([`crate::store`]). Clones share everything.
#[derive(Clone)]
pub struct Home {
    store: Arc<dyn WalletStore>,
    sealer: Arc<dyn Sealer>,
    scope: SealScope,
    device: DeviceKey,
    /// What was already read and decoded, while its records are unchanged.
    memo: memo::Memo,
}

impl std::fmt::Debug for Home {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Home")
            .field("store", &self.store.describe(""))
            .field("scope", &self.scope)
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

/// Most prepared shares a wallet keeps ([`Home::save_prepared_share`]).
pub const MAX_PREPARED: usize = 8;
/// Largest prepared-shares record read: 8 threshold ECDSA shares (about 105 KB each) in hex,
/// with room to spare.
pub const MAX_PREPARED_FILE: u64 = crate::store::MAX_RECORD;

/// The kinds of record [`SealScope::Secrets`] leaves readable: a wallet's public facts and this
/// device's own notes of it. Every other kind (shares, journals, kinds added later) is sealed.
const PUBLIC_KINDS: [&str; 5] = ["json", "eth", POLICY, SPENDS, "addresses"];

/// The record that says every secret record of a store is sealed (the migration ran).
const SEALED_MARKER: &str = "storage.sealed";

/// The kinds of secret record a home directory held in the clear before sealing: what the
/// migration seals, and nothing else (a recovery credential beside them stays as it is).
const SECRET_KINDS: [&str; 5] = ["share", "prepared", "ecdsa", "dkg", "creating"];

impl Home {
    /// Opens (creating if missing, mode 0700) a home directory: `DIR/device.key` (created on
    /// first use), `DIR/storage.key` (the key that seals its secret records, created on first
    /// use) and `DIR/wallets/`. A home written before shares were sealed is migrated: each
    /// clear secret record is sealed in place, once.
    pub fn open(dir: &Path) -> Result<Self> {
        let store = DirStore::open(dir)?;
        let device = FileDeviceKey::open_or_create(&dir.join("device.key"))?;
        // A home whose records were sealed never gets a new storage key: they would all read as
        // damaged.
        let sealed = store
            .exists(SEALED_MARKER)
            .map_err(|e| store_err(&store, SEALED_MARKER, e))?;
        let sealer = AeadSealer::key_file(&dir.join("storage.key"), !sealed)?;
        Self::with_storage(
            Arc::new(store),
            Arc::new(sealer),
            Arc::new(device),
            SealScope::Secrets,
        )
    }

    /// A home on storage the platform provides (a phone's keystore and files).
    pub fn with_storage(
        store: Arc<dyn WalletStore>,
        sealer: Arc<dyn Sealer>,
        device: Arc<dyn DeviceKeyStore>,
        scope: SealScope,
    ) -> Result<Self> {
        let device = DeviceKey::new(device).map_err(|e| store_err(&*store, "device key", e))?;
        let home = Self {
            store,
            sealer,
            scope,
            device,
            memo: memo::Memo::default(),
        };
        home.migrate()?;
        Ok(home)
    }

    /// A home in memory that seals every record, for tests.
    pub fn in_memory() -> Result<Self> {
        Self::with_storage(
            Arc::new(MemoryStore::default()),
            Arc::new(AeadSealer::random()?),
            Arc::new(MemoryDeviceKey::random()),
            SealScope::Everything,
        )
    }

    /// This device's P-256 key: a handle that signs through its store, never the secret.
    pub fn device_key(&self) -> Result<DeviceKey> {
        Ok(self.device.clone())
    }

    /// Seals the clear secret records of a home directory written before shares were sealed
    /// (only [`SECRET_KINDS`] of `wallets/<id>.<kind>`), then marks the store so later opens skip
    /// the walk, under a lock, so two first opens do not both seal. A store that seals every
    /// record (a phone's) never held clear ones and is not walked: a clear record there is
    /// refused, never adopted. A record that cannot be read for now stops the migration (the
    /// next open runs it again); one that is no record at all (a link) is left to be refused.
    fn migrate(&self) -> Result<()> {
        if self.scope == SealScope::Everything {
            return Ok(());
        }
        let _lock = match self.store.lock_path("storage.lock") {
            Some(path) => Some(take_lock(&path)?),
            None => None,
        };
        let marked = self
            .store
            .exists(SEALED_MARKER)
            .map_err(|e| store_err(&*self.store, SEALED_MARKER, e))?;
        if marked {
            return Ok(());
        }
        let names = self
            .store
            .list()
            .map_err(|e| store_err(&*self.store, "wallets", e))?;
        for name in names {
            let Some((id, kind)) = name
                .strip_prefix("wallets/")
                .and_then(|n| n.split_once('.'))
            else {
                continue;
            };
            if WalletId::from_hex(id).is_err() || !SECRET_KINDS.contains(&kind) {
                continue;
            }
            let bytes = match self.store.read(&name) {
                Ok(Some(bytes)) => Zeroizing::new(bytes),
                Ok(None) | Err(StoreError::Damaged { .. }) => continue,
                Err(e) => return Err(store_err(&*self.store, &name, e)),
            };
            if !crate::store::is_sealed(&bytes) {
                self.write_record(&name, kind, &bytes)?;
            }
        }
        self.store
            .write(SEALED_MARKER, b"1\n")
            .map_err(|e| store_err(&*self.store, SEALED_MARKER, e))
    }

    fn seals(&self, kind: &str) -> bool {
        self.scope == SealScope::Everything || !PUBLIC_KINDS.contains(&kind)
    }

    fn record(id: &WalletId, kind: &str) -> String {
        format!("wallets/{}.{kind}", id.to_hex())
    }

    /// How the record of `kind` for `id` is named in errors (its path in a home directory).
    pub(crate) fn describe(&self, id: &WalletId, kind: &str) -> String {
        self.store.describe(&Self::record(id, kind))
    }

    /// The file of the record of `kind` for `id` in a home directory, for the tests that damage it.
    #[cfg(test)]
    fn wallet_path(&self, id: &WalletId, kind: &str) -> PathBuf {
        PathBuf::from(self.describe(id, kind))
    }

    /// An error about the record of `kind` for `id`.
    pub(crate) fn err(
        &self,
        id: &WalletId,
        kind: &str,
        reason: impl std::fmt::Display,
    ) -> ClientError {
        ClientError::Home {
            path: self.describe(id, kind),
            reason: reason.to_string(),
        }
    }

    fn write_record(&self, name: &str, kind: &str, bytes: &[u8]) -> Result<()> {
        let sealed;
        let bytes = if self.seals(kind) {
            sealed = self
                .sealer
                .seal(name, bytes)
                .map_err(|e| store_err(&*self.store, name, e))?;
            &sealed[..]
        } else {
            bytes
        };
        self.store
            .write(name, bytes)
            .map_err(|e| store_err(&*self.store, name, e))
    }

    /// Writes the record of `kind` for `id`, sealed if this home's scope seals `kind`.
    pub(crate) fn put(&self, id: &WalletId, kind: &str, bytes: &[u8]) -> Result<()> {
        self.write_record(&Self::record(id, kind), kind, bytes)
    }

    /// Reads the record of `kind` for `id` (opened if sealed), or `None` when there is none.
    pub(crate) fn get(&self, id: &WalletId, kind: &str) -> Result<Option<Zeroizing<Vec<u8>>>> {
        let name = Self::record(id, kind);
        self.get_record(&name, kind)
            .map_err(|e| store_err(&*self.store, &name, e))
    }

    /// [`Home::get`] with the store's error, for callers that tell a damaged record (trying
    /// again changes nothing) from a failing store.
    pub(crate) fn get_record(
        &self,
        name: &str,
        kind: &str,
    ) -> std::result::Result<Option<Zeroizing<Vec<u8>>>, StoreError> {
        let Some(bytes) = self.store.read(name)? else {
            return Ok(None);
        };
        let bytes = Zeroizing::new(bytes);
        if !self.seals(kind) {
            return Ok(Some(bytes));
        }
        self.sealer.open(name, &bytes).map(Some)
    }

    /// Whether a record of `kind` for `id` is there (a home directory counts a link).
    pub(crate) fn has(&self, id: &WalletId, kind: &str) -> Result<bool> {
        let name = Self::record(id, kind);
        self.store
            .exists(&name)
            .map_err(|e| store_err(&*self.store, &name, e))
    }

    /// The value decoded from the records `kinds` of `id`: kept while they are unchanged.
    fn memoized<T: Clone + Send + Sync + 'static>(
        &self,
        id: &WalletId,
        kinds: &[&str],
        load: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        let names: Vec<String> = kinds.iter().map(|k| Self::record(id, k)).collect();
        self.memo.get(&*self.store, &names, load)
    }

    /// Replaces this device's share of a wallet (after a refresh), atomically.
    pub fn replace_share(&self, wallet: &WalletFile, share: &[u8]) -> Result<()> {
        let id = wallet.wallet_id;
        self.put(&id, "share", share)?;
        let json = serde_json::to_vec_pretty(wallet).map_err(|e| self.err(&id, "json", e))?;
        self.put(&id, "json", &json)
    }

    /// Stores this device's new share of a wallet from a refresh not yet committed by every
    /// party (`DIR/wallets/<id>.prepared`, sealed), beside those kept before (the newest
    /// [`MAX_PREPARED`]): a refresh whose commit a hostile relay held back may still commit after
    /// a later one started, and its share must then still be here. The current share stays until
    /// [`Home::replace_share`].
    pub fn save_prepared_share(&self, id: &WalletId, share: &[u8]) -> Result<()> {
        let mut kept = self.prepared_shares(id)?;
        kept.push(Zeroizing::new(share.to_vec()));
        let excess = kept.len().saturating_sub(MAX_PREPARED);
        let list: Zeroizing<Vec<String>> =
            Zeroizing::new(kept.iter().skip(excess).map(hex::encode).collect());
        let json =
            Zeroizing::new(serde_json::to_vec(&*list).map_err(|e| self.err(id, "prepared", e))?);
        self.put(id, "prepared", &json)
    }

    /// Every prepared share of a wallet this home keeps, oldest first. A record written before
    /// several were kept holds one raw share. What cannot be read as shares (a link, anything but
    /// a regular file, a record over [`MAX_PREPARED_FILE`], one that does not open, a damaged list
    /// or entry) is skipped, never read through and never an error: a damaged record must not
    /// block every later refresh or recovery, and a share it lost is one no refresh committed
    /// with (callers check each share against the committed key package).
    pub fn prepared_shares(&self, id: &WalletId) -> Result<Vec<Zeroizing<Vec<u8>>>> {
        let name = Self::record(id, "prepared");
        let bytes = match self.get_record(&name, "prepared") {
            Ok(Some(bytes)) => bytes,
            Ok(None) | Err(StoreError::Damaged { .. }) => return Ok(Vec::new()),
            // A store that fails for now (a locked keystore) is an error, not "none kept": the
            // next save would drop every share kept.
            Err(e) => return Err(store_err(&*self.store, &name, e)),
        };
        match bytes.first() {
            None => return Ok(Vec::new()),
            Some(b'[') => {}
            Some(_) => return Ok(vec![bytes]),
        }
        let list: Zeroizing<Vec<String>> =
            Zeroizing::new(serde_json::from_slice(&bytes).unwrap_or_default());
        Ok(list
            .iter()
            .filter_map(|h| hex::decode(h).ok().filter(|b| !b.is_empty()))
            .map(Zeroizing::new)
            .collect())
    }

    /// Writes an unfinished command's journal for a wallet (`DIR/wallets/<id>.<kind>`,
    /// sealed): what a rerun needs to finish it.
    pub fn save_journal(&self, id: &WalletId, kind: &str, bytes: &[u8]) -> Result<()> {
        self.put(id, kind, bytes)
    }

    /// A wallet's journal of `kind`, if there is one.
    pub fn journal(&self, id: &WalletId, kind: &str) -> Result<Option<Zeroizing<Vec<u8>>>> {
        self.get(id, kind)
    }

    /// Every journal of `kind` in this home, by wallet.
    pub fn journals(&self, kind: &str) -> Result<Vec<(WalletId, Vec<u8>)>> {
        let mut out = Vec::new();
        for id in self.ids_with(kind)? {
            if let Some(bytes) = self.get(&id, kind)? {
                out.push((id, bytes.to_vec()));
            }
        }
        Ok(out)
    }

    /// The wallets with a record of `kind`, sorted.
    pub(crate) fn ids_with(&self, kind: &str) -> Result<Vec<WalletId>> {
        let suffix = format!(".{kind}");
        let names = self
            .store
            .list()
            .map_err(|e| store_err(&*self.store, "wallets", e))?;
        let mut ids = Vec::new();
        for name in names {
            let Some(id) = name
                .strip_prefix("wallets/")
                .and_then(|n| n.strip_suffix(suffix.as_str()))
            else {
                continue;
            };
            ids.push(WalletId::from_hex(id)?);
        }
        ids.sort();
        Ok(ids)
    }

    /// Where a lock beside the record `kind` of `id` can be taken, if the store is a file
    /// system (a phone's single process needs none).
    pub fn lock_path(&self, id: &WalletId, kind: &str) -> Option<PathBuf> {
        self.store.lock_path(&Self::record(id, kind))
    }

    /// Removes a wallet's records from this home (a creation that registered nothing).
    pub fn forget_wallet(&self, id: &WalletId) -> Result<()> {
        for kind in ["share", "json", POLICY, SPENDS] {
            self.remove_journal(id, kind)?;
        }
        Ok(())
    }

    /// Removes a journal (its command finished).
    pub fn remove_journal(&self, id: &WalletId, kind: &str) -> Result<()> {
        let name = Self::record(id, kind);
        self.store
            .remove(&name)
            .map_err(|e| store_err(&*self.store, &name, e))
    }

    /// The newest prepared share of a wallet, if this home keeps one (a refresh not finished
    /// here).
    pub fn prepared_share(&self, id: &WalletId) -> Result<Option<Zeroizing<Vec<u8>>>> {
        Ok(self.prepared_shares(id)?.pop())
    }

    /// Removes a prepared share (once it replaced the current one, or its refresh failed).
    pub fn remove_prepared_share(&self, id: &WalletId) -> Result<()> {
        self.remove_journal(id, "prepared")
    }

    /// Records a new wallet: its public record and this device's share (sealed).
    pub fn save_wallet(&self, wallet: &WalletFile, share: &[u8]) -> Result<()> {
        let id = wallet.wallet_id;
        if self.has(&id, "share")? {
            return Err(self.err(&id, "share", "already exists"));
        }
        self.put(&id, "share", share)?;
        let json = serde_json::to_vec_pretty(wallet).map_err(|e| self.err(&id, "share", e))?;
        self.put(&id, "json", &json)
    }

    /// Reads a wallet's public record.
    pub fn wallet(&self, id: &WalletId) -> Result<WalletFile> {
        self.memoized(id, &["json"], || self.read_wallet(id))
    }

    fn read_wallet(&self, id: &WalletId) -> Result<WalletFile> {
        let Some(bytes) = self.get(id, "json")? else {
            return Err(ClientError::Input(format!(
                "unknown wallet {id}: this home ({}) holds no such wallet (cosigner wallet list)",
                self.store.describe("")
            )));
        };
        let wallet: WalletFile = serde_json::from_slice(&bytes)
            .map_err(|e| self.err(id, "json", format!("not a readable wallet file ({e})")))?;
        if wallet.wallet_id != *id {
            return Err(self.err(id, "json", format!("holds wallet {}", wallet.wallet_id)));
        }
        wallet
            .check()
            .map_err(|e| self.err(id, "json", format!("not a consistent wallet file: {e}")))?;
        Ok(wallet)
    }

    /// This device's share of a wallet, decoded (frost's `KeyPackage`).
    pub fn key_package(&self, id: &WalletId) -> Result<frost_core::keys::KeyPackage<Suite>> {
        self.memoized(id, &["share"], || {
            frost_core::keys::KeyPackage::<Suite>::deserialize(&self.share(id)?)
                .map_err(|e| ClientError::Input(format!("this device's share of {id}: {e}")))
        })
    }

    /// Reads this device's share of a wallet.
    pub fn share(&self, id: &WalletId) -> Result<Zeroizing<Vec<u8>>> {
        self.get(id, "share")?
            .ok_or_else(|| self.err(id, "share", "No such file or directory"))
    }

    /// Every wallet recorded here, sorted by id.
    pub fn wallets(&self) -> Result<Vec<WalletFile>> {
        self.ids_with("json")?
            .iter()
            .map(|id| self.wallet(id))
            .collect()
    }
}

/// Opens (creating it 0600) the lock file at `path`; O_NOFOLLOW: a link planted at the name
/// cannot make us open (or create) anything else.
pub(crate) fn open_lock_file(path: &Path) -> Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o600)
        .open(path)
        .map_err(|e| io_err(path, &e))
}

/// Takes the lock at `path`, waiting for its holder.
fn take_lock(path: &Path) -> Result<std::fs::File> {
    let file = open_lock_file(path)?;
    file.lock().map_err(|e| io_err(path, &e))?;
    Ok(file)
}

/// A store's error as the client reports it: the record named as the store names it.
fn store_err(store: &dyn WalletStore, name: &str, e: StoreError) -> ClientError {
    match e {
        StoreError::Io { name, reason } => ClientError::Home { path: name, reason },
        StoreError::Damaged { reason, .. } => ClientError::Home {
            path: store.describe(name),
            reason,
        },
        other => ClientError::Home {
            path: store.describe(name),
            reason: other.to_string(),
        },
    }
}

/// Writes a new P-256 key as PKCS#8 PEM, owner-only; refuses to overwrite.
/// Created with link(2) ([`crate::store::create_private_once`]): a file that appears at `path`
/// after any check is refused too, never replaced.
pub fn write_p256_key(path: &Path, key: &p256::ecdsa::SigningKey) -> Result<()> {
    use p256::pkcs8::EncodePrivateKey;
    let refused = || home_err(path, "already exists: refusing to overwrite a key");
    if occupied(path) {
        return Err(refused());
    }
    let pem = key
        .to_pkcs8_pem(p256::pkcs8::LineEnding::LF)
        .map_err(|e| home_err(path, e))?;
    if crate::store::create_private_once(path, pem.as_bytes())? {
        Ok(())
    } else {
        Err(refused())
    }
}

/// Reads a P-256 key written by [`write_p256_key`].
pub fn read_p256_key(path: &Path) -> Result<p256::ecdsa::SigningKey> {
    use p256::pkcs8::DecodePrivateKey;
    let pem = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| io_err(path, &e))?);
    p256::ecdsa::SigningKey::from_pkcs8_pem(&pem).map_err(|_| {
        home_err(
            path,
            "not a P-256 key (a PKCS#8 PEM file, as `wallet create` writes)",
        )
    })
}

#[cfg(test)]
mod tests;

mod addresses;
mod eth;
mod local;
mod memo;
mod recovery;

pub use eth::EthWalletFile;
pub use local::LocalSpend;
pub use recovery::RecoveryKeyOut;
