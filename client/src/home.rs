//! The client's home directory (`--home DIR`):
//!
//! ```text
//! DIR/device.key             P-256 device key (PKCS#8 PEM, mode 0600), created on first use
//! DIR/wallets/<id>.json      public facts: group key, address, parties, public key package
//! DIR/wallets/<id>.share     this device's FROST KeyPackage (frost's serialization, mode 0600)
//! DIR/wallets/<id>.prepared  a refresh's new KeyPackage until every party committed (0600)
//! DIR/wallets/<id>.policy    a personal wallet's spending policy as last registered from here
//! DIR/wallets/<id>.spends    the PSBT spends signed from this device (JSON), for `wallet show`
//! DIR/wallets/<id>.eth       an Ethereum wallet's public facts (JSON; `home::eth`)
//! DIR/wallets/<id>.ecdsa     this device's threshold ECDSA share of it (0600)
//! ```
//!
//! The last two are this device's own record, for showing a wallet offline: the cosigners hold
//! the policy in force and the whole spend history, and decide by theirs.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use cosigner_protocol::id::Epoch;
use cosigner_protocol::id::PartyId;
use cosigner_protocol::wire::WalletId;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::address::{Network, p2tr_address};
use crate::error::{ClientError, Result};

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

/// An open home directory.
#[derive(Debug, Clone)]
pub struct Home {
    dir: PathBuf,
    /// What was already read and decoded, while its files are unchanged.
    memo: memo::Memo,
}

fn home_err(path: &Path, e: impl std::fmt::Display) -> ClientError {
    ClientError::Home {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// An I/O error on `path`, in the user's terms (no OS error number).
fn io_err(path: &Path, e: &std::io::Error) -> ClientError {
    home_err(path, crate::error::io_reason(e))
}

/// Writes a file readable by its owner only, atomically: a new temporary file beside `path`
/// (same directory, so the same filesystem), written and fsynced, then renamed over `path`.
///
/// Nothing already in the directory is written through. The temporary name is unpredictable
/// (`.<name>.<16 random hex>.tmp`) and created by [`create_private`], which refuses anything
/// already there, a symbolic link included. rename(2) replaces `path` itself, never what a
/// symbolic link at `path` points to (POSIX rename(): "If either the old or new argument names a
/// symbolic link, rename() shall operate on the symbolic link itself").
fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    write_private_via(path, &temp_path(path)?, bytes)
}

/// [`write_private`] through the temporary file `tmp` (which must not exist).
fn write_private_via(path: &Path, tmp: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = create_private(tmp)?;
    let written = file
        .write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| io_err(tmp, &e))
        .and_then(|()| std::fs::rename(tmp, path).map_err(|e| io_err(path, &e)));
    if let Err(e) = written {
        // Leave no partial secret behind; the error that stopped the write is the one to report.
        let _ = std::fs::remove_file(tmp);
        return Err(e);
    }
    sync_parent(path)
}

/// Creates `path` for writing, mode 0600, refusing to open anything that already exists.
///
/// `create_new` is `O_CREAT | O_EXCL`: "if path names a symbolic link, open() shall fail with
/// [EEXIST], regardless of the contents of the symbolic link" (POSIX open()), so a link planted
/// at the temporary name cannot redirect the secret. `O_NOFOLLOW` refuses a link in the last
/// component on its own as well ([ELOOP]), should `O_EXCL` ever be dropped from these options.
/// The mode given to open(2) is filtered by the umask, so it is set again on the descriptor
/// (fchmod): exactly 0600, whatever the umask.
fn create_private(path: &Path) -> Result<std::fs::File> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o600)
        .open(path)
        .map_err(|e| io_err(path, &e))?;
    if let Err(e) = file.set_permissions(std::fs::Permissions::from_mode(0o600)) {
        let _ = std::fs::remove_file(path);
        return Err(io_err(path, &e));
    }
    Ok(file)
}

/// `.<file name>.<16 random hex>.tmp` in `path`'s directory.
fn temp_path(path: &Path) -> Result<PathBuf> {
    use rand_core::RngCore;
    let name = path
        .file_name()
        .ok_or_else(|| home_err(path, "not a file name"))?;
    let mut random = [0u8; 8];
    rand_core::OsRng
        .try_fill_bytes(&mut random)
        .map_err(|e| home_err(path, format!("no randomness for a temporary name: {e}")))?;
    let mut tmp = std::ffi::OsString::from(".");
    tmp.push(name);
    tmp.push(format!(".{}.tmp", hex::encode(random)));
    Ok(path.with_file_name(tmp))
}

/// fsyncs the directory holding `path`, so the rename itself survives a crash: fsync(2) on the
/// file "does not necessarily ensure that the entry in the directory containing the file has also
/// reached disk". A filesystem that cannot fsync a directory (`EINVAL`) is left at that.
fn sync_parent(path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    match std::fs::File::open(dir).and_then(|d| d.sync_all()) {
        Err(e) if e.kind() != std::io::ErrorKind::InvalidInput => Err(io_err(dir, &e)),
        _ => Ok(()),
    }
}

/// Whether anything, a dangling symbolic link included, is at `path` (`Path::exists` follows
/// links, and would call a dangling one absent).
fn occupied(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}

/// Most prepared shares a wallet keeps ([`Home::save_prepared_share`]).
pub const MAX_PREPARED: usize = 8;
/// Largest prepared-shares file read: 8 threshold ECDSA shares (about 105 KB each) in hex, with
/// room to spare.
pub const MAX_PREPARED_FILE: u64 = 4 << 20;

impl Home {
    /// Opens (creating if missing, mode 0700) a home directory.
    pub fn open(dir: &Path) -> Result<Self> {
        // Named here, not as "DIR/wallets: not a directory" further down.
        if std::fs::metadata(dir).is_ok_and(|m| !m.is_dir()) {
            return Err(home_err(
                dir,
                "the home (--home, COSIGNER_HOME) is not a directory",
            ));
        }
        let wallets = dir.join("wallets");
        std::fs::create_dir_all(&wallets).map_err(|e| io_err(&wallets, &e))?;
        for d in [dir, wallets.as_path()] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| io_err(d, &e))?;
        }
        let home = Self {
            dir: dir.to_path_buf(),
            memo: memo::Memo::default(),
        };
        home.ensure_device_key()?;
        Ok(home)
    }

    /// This device's P-256 key.
    pub fn device_key(&self) -> Result<p256::ecdsa::SigningKey> {
        let path = self.dir.join("device.key");
        self.memo
            .get(std::slice::from_ref(&path), || read_p256_key(&path))
    }

    /// Replaces this device's share of a wallet (after a refresh), atomically.
    pub fn replace_share(&self, wallet: &WalletFile, share: &[u8]) -> Result<()> {
        let id = wallet.wallet_id;
        write_private(&self.wallet_path(&id, "share"), share)?;
        let json = serde_json::to_vec_pretty(wallet).map_err(|e| home_err(&self.dir, e))?;
        write_private(&self.wallet_path(&id, "json"), &json)
    }

    /// Stores this device's new share of a wallet from a refresh not yet committed by every
    /// party (`DIR/wallets/<id>.prepared`, 0600), beside those kept before (the newest
    /// [`MAX_PREPARED`]): a refresh whose commit a hostile relay held back may still commit after
    /// a later one started, and its share must then still be here. The current share stays until
    /// [`Home::replace_share`].
    pub fn save_prepared_share(&self, id: &WalletId, share: &[u8]) -> Result<()> {
        let path = self.wallet_path(id, "prepared");
        let mut kept = self.prepared_shares(id)?;
        kept.push(Zeroizing::new(share.to_vec()));
        let excess = kept.len().saturating_sub(MAX_PREPARED);
        let list: Zeroizing<Vec<String>> =
            Zeroizing::new(kept.iter().skip(excess).map(hex::encode).collect());
        let json = Zeroizing::new(serde_json::to_vec(&*list).map_err(|e| home_err(&path, e))?);
        write_private(&path, &json)
    }

    /// Every prepared share of a wallet this home keeps, oldest first. A file written before
    /// several were kept holds one raw share. What cannot be read as shares (a link, anything but
    /// a regular file, a file over [`MAX_PREPARED_FILE`], a damaged list or entry) is skipped,
    /// never read through and never an error: a damaged file must not block every later refresh
    /// or recovery, and a share it lost is one no refresh committed with (callers check each
    /// share against the committed key package).
    pub fn prepared_shares(&self, id: &WalletId) -> Result<Vec<Zeroizing<Vec<u8>>>> {
        let path = self.wallet_path(id, "prepared");
        let readable = std::fs::symlink_metadata(&path)
            .is_ok_and(|m| m.file_type().is_file() && m.len() <= MAX_PREPARED_FILE);
        if !readable {
            return Ok(Vec::new());
        }
        let bytes = Zeroizing::new(std::fs::read(&path).map_err(|e| io_err(&path, &e))?);
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

    /// Writes an unfinished command's journal for a wallet (`DIR/wallets/<id>.<kind>`, 0600):
    /// what a rerun needs to finish it.
    pub fn save_journal(&self, id: &WalletId, kind: &str, bytes: &[u8]) -> Result<()> {
        write_private(&self.wallet_path(id, kind), bytes)
    }

    /// Every journal of `kind` in this home, by wallet.
    pub fn journals(&self, kind: &str) -> Result<Vec<(WalletId, Vec<u8>)>> {
        let dir = self.dir.join("wallets");
        let suffix = format!(".{kind}");
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(|e| io_err(&dir, &e))? {
            let entry = entry.map_err(|e| io_err(&dir, &e))?;
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(|n| n.strip_suffix(suffix.as_str())) else {
                continue;
            };
            let id = WalletId::from_hex(id)?;
            let bytes = std::fs::read(entry.path()).map_err(|e| io_err(&entry.path(), &e))?;
            out.push((id, bytes));
        }
        out.sort_by_key(|(id, _)| *id);
        Ok(out)
    }

    /// Where a journal of `kind` for `id` lives.
    pub fn journal_path(&self, id: &WalletId, kind: &str) -> PathBuf {
        self.wallet_path(id, kind)
    }

    /// Removes a wallet's files from this home (a creation that registered nothing).
    pub fn forget_wallet(&self, id: &WalletId) -> Result<()> {
        for kind in ["share", "json", POLICY, SPENDS] {
            self.remove_journal(id, kind)?;
        }
        Ok(())
    }

    /// Removes a journal (its command finished).
    pub fn remove_journal(&self, id: &WalletId, kind: &str) -> Result<()> {
        let path = self.wallet_path(id, kind);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&path, &e)),
        }
    }

    /// The newest prepared share of a wallet, if this home keeps one (a refresh not finished
    /// here).
    pub fn prepared_share(&self, id: &WalletId) -> Result<Option<Zeroizing<Vec<u8>>>> {
        Ok(self.prepared_shares(id)?.pop())
    }

    /// Removes a prepared share (once it replaced the current one, or its refresh failed).
    pub fn remove_prepared_share(&self, id: &WalletId) -> Result<()> {
        let path = self.wallet_path(id, "prepared");
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&path, &e)),
        }
    }

    /// Creates the P-256 device key if this home has none.
    fn ensure_device_key(&self) -> Result<()> {
        let path = self.dir.join("device.key");
        if path.exists() {
            return Ok(());
        }
        use p256::pkcs8::EncodePrivateKey;
        let key = p256::ecdsa::SigningKey::random(&mut rand_core::OsRng);
        let pem = key
            .to_pkcs8_pem(p256::pkcs8::LineEnding::LF)
            .map_err(|e| home_err(&path, e))?;
        write_private(&path, pem.as_bytes())
    }

    fn wallet_path(&self, id: &WalletId, ext: &str) -> PathBuf {
        self.dir
            .join("wallets")
            .join(format!("{}.{ext}", id.to_hex()))
    }

    /// Records a new wallet: its public file and this device's share (0600).
    pub fn save_wallet(&self, wallet: &WalletFile, share: &[u8]) -> Result<()> {
        let id = wallet.wallet_id;
        let share_path = self.wallet_path(&id, "share");
        if occupied(&share_path) {
            return Err(home_err(&share_path, "already exists"));
        }
        write_private(&share_path, share)?;
        let json = serde_json::to_vec_pretty(wallet).map_err(|e| home_err(&share_path, e))?;
        write_private(&self.wallet_path(&id, "json"), &json)
    }

    /// Reads a wallet's public file.
    pub fn wallet(&self, id: &WalletId) -> Result<WalletFile> {
        let path = self.wallet_path(id, "json");
        self.memo
            .get(std::slice::from_ref(&path), || self.read_wallet(id, &path))
    }

    fn read_wallet(&self, id: &WalletId, path: &Path) -> Result<WalletFile> {
        let bytes = std::fs::read(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ClientError::Input(format!(
                "unknown wallet {id}: this home ({}) holds no such wallet (cosigner wallet list)",
                self.dir.display()
            )),
            _ => io_err(path, &e),
        })?;
        let wallet: WalletFile = serde_json::from_slice(&bytes)
            .map_err(|e| home_err(path, format!("not a readable wallet file ({e})")))?;
        if wallet.wallet_id != *id {
            return Err(home_err(path, format!("holds wallet {}", wallet.wallet_id)));
        }
        wallet
            .check()
            .map_err(|e| home_err(path, format!("not a consistent wallet file: {e}")))?;
        Ok(wallet)
    }

    /// This device's share of a wallet, decoded (frost's `KeyPackage`).
    pub fn key_package(&self, id: &WalletId) -> Result<frost_core::keys::KeyPackage<Suite>> {
        let path = self.wallet_path(id, "share");
        self.memo.get(std::slice::from_ref(&path), || {
            frost_core::keys::KeyPackage::<Suite>::deserialize(&self.share(id)?)
                .map_err(|e| ClientError::Input(format!("this device's share of {id}: {e}")))
        })
    }

    /// Reads this device's share of a wallet.
    pub fn share(&self, id: &WalletId) -> Result<Zeroizing<Vec<u8>>> {
        let path = self.wallet_path(id, "share");
        std::fs::read(&path)
            .map(Zeroizing::new)
            .map_err(|e| io_err(&path, &e))
    }

    /// Every wallet recorded here, sorted by id.
    pub fn wallets(&self) -> Result<Vec<WalletFile>> {
        let dir = self.dir.join("wallets");
        let mut ids = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(|e| io_err(&dir, &e))? {
            let name = entry.map_err(|e| io_err(&dir, &e))?.file_name();
            if let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".json")) {
                ids.push(WalletId::from_hex(id)?);
            }
        }
        ids.sort();
        ids.iter().map(|id| self.wallet(id)).collect()
    }
}

/// Writes a new P-256 key as PKCS#8 PEM, owner-only; refuses to overwrite.
pub fn write_p256_key(path: &Path, key: &p256::ecdsa::SigningKey) -> Result<()> {
    use p256::pkcs8::EncodePrivateKey;
    if occupied(path) {
        return Err(home_err(
            path,
            "already exists: refusing to overwrite a key",
        ));
    }
    let pem = key
        .to_pkcs8_pem(p256::pkcs8::LineEnding::LF)
        .map_err(|e| home_err(path, e))?;
    write_private(path, pem.as_bytes())
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

pub use eth::EthWalletFile;
pub use local::LocalSpend;
