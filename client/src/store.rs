//! Where a device keeps its keys: pluggable, so a phone keeps them in its secure hardware.
//!
//! A [`crate::home::Home`] is three parts, each a trait a platform implements:
//!
//! * [`DeviceKeyStore`]: the P-256 device key, **sign only**. A phone creates it
//!   non-extractable in Android Keystore or the Secure Enclave; the library only ever asks for
//!   the public key and for a signature over a SHA-256 digest.
//! * [`WalletStore`]: named records (`wallets/<id>.<kind>`), read and replaced whole.
//! * [`Sealer`]: encrypts a record under a key the platform holds (a Keystore AES key, a
//!   Keychain item), bound to the record's name. Every secret record (a share, a prepared share,
//!   an ECDSA share, a ceremony's journal) passes through it before it reaches the store, so the
//!   library itself never writes a share in the clear; a home may seal every record
//!   ([`SealScope::Everything`], what a phone wants: the public key package tells which addresses
//!   are the user's).
//!
//! Here are the two implementations of each the library ships: the home directory of the
//! command line ([`DirStore`], [`FileDeviceKey`], [`AeadSealer::key_file`]) and memory, for tests
//! ([`MemoryStore`], [`MemoryDeviceKey`], [`AeadSealer::random`]).

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use cosigner_protocol::auth::P256Signer;
use p256::ecdsa::{Signature, VerifyingKey};
use zeroize::Zeroizing;

/// Why a store, a sealer or a device key failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The platform's storage failed (a file system error, a keystore refusal).
    #[error("{name}: {reason}")]
    Io {
        /// The record or key.
        name: String,
        /// Why.
        reason: String,
    },
    /// A record that cannot be what was stored: a sealed record that does not open (damaged, or
    /// sealed under another key or for another name), a clear one where a sealed one belongs, a
    /// link, anything over [`MAX_RECORD`]. Unlike [`StoreError::Io`], trying again changes
    /// nothing.
    #[error("{name}: {reason}")]
    Damaged {
        /// The record.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The device key could not sign or show its public key.
    #[error("the device key: {reason}")]
    DeviceKey {
        /// Why.
        reason: String,
    },
}

/// Why a sealed record does not open.
pub const NOT_OPENED: &str =
    "cannot be opened: damaged, or not sealed by this device's storage key";

impl StoreError {
    /// A record that does not open ([`StoreError::Damaged`], [`NOT_OPENED`]).
    pub fn not_opened(name: &str) -> Self {
        Self::Damaged {
            name: name.to_owned(),
            reason: NOT_OPENED.into(),
        }
    }

    fn io(name: impl std::fmt::Display, reason: impl std::fmt::Display) -> Self {
        Self::Io {
            name: name.to_string(),
            reason: reason.to_string(),
        }
    }
}

/// A store's result.
pub type StoreResult<T> = std::result::Result<T, StoreError>;

/// The device key: P-256, sign only.
pub trait DeviceKeyStore: Send + Sync {
    /// The public key, SEC1 (compressed or not).
    fn public_key(&self) -> StoreResult<Vec<u8>>;
    /// ECDSA over `digest`, a SHA-256 the caller computed: `r ‖ s` (64 bytes) or DER.
    fn sign_digest(&self, digest: &[u8; 32]) -> StoreResult<Vec<u8>>;
    /// The key itself, when it lives in this process (a file's, memory's): then the protocol
    /// signs with it directly (aws-lc, no round through bytes and no check of its own
    /// signature), as it did before keys were pluggable. `None` (the default) for hardware.
    fn in_process(&self) -> Option<&p256::ecdsa::SigningKey> {
        None
    }
}

/// Named records, each read and replaced whole. Names are `wallets/<hex id>.<kind>`, and
/// `storage.sealed` for the marker of a migrated home.
pub trait WalletStore: Send + Sync {
    /// The record, or `None` when there is none.
    fn read(&self, name: &str) -> StoreResult<Option<Vec<u8>>>;
    /// Replaces (or creates) the record atomically: a reader sees the old bytes or the new.
    fn write(&self, name: &str, bytes: &[u8]) -> StoreResult<()>;
    /// Removes the record; one already absent is not an error.
    fn remove(&self, name: &str) -> StoreResult<()>;
    /// Every record's name.
    fn list(&self) -> StoreResult<Vec<String>>;
    /// Whether anything is at `name` (a file store counts what it would not read, a link).
    fn exists(&self, name: &str) -> StoreResult<bool> {
        Ok(self.read(name)?.is_some())
    }
    /// A value that changes whenever the record does, so a decoded record can be kept while
    /// it stays; `None` (the default) keeps nothing.
    fn version(&self, _name: &str) -> Option<Vec<u8>> {
        None
    }
    /// How a record is named in errors (a file store gives its path).
    fn describe(&self, name: &str) -> String {
        name.to_owned()
    }
    /// The file beside which a lock for `name` may be taken, if the store lives in a file
    /// system; without one, the library assumes a single process uses the store.
    fn lock_path(&self, _name: &str) -> Option<PathBuf> {
        None
    }
}

/// Encrypts records under a key the platform holds.
pub trait Sealer: Send + Sync {
    /// `plaintext` sealed for the record `name` (an AEAD whose associated data is the name, so
    /// a sealed record moved under another name does not open).
    fn seal(&self, name: &str, plaintext: &[u8]) -> StoreResult<Vec<u8>>;
    /// The plaintext of a record [`Sealer::seal`] sealed for `name`.
    fn open(&self, name: &str, sealed: &[u8]) -> StoreResult<Zeroizing<Vec<u8>>>;
}

/// Which records of a home pass through its [`Sealer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SealScope {
    /// Shares, prepared shares and journals; the public facts stay readable (the command
    /// line's home directory: `wallets/<id>.json` is for people and tools to read).
    Secrets,
    /// Every record (a phone).
    Everything,
}

/// The device key as the protocol signs with it: a [`DeviceKeyStore`] and its public key.
#[derive(Clone)]
pub struct DeviceKey {
    store: Arc<dyn DeviceKeyStore>,
    public: VerifyingKey,
}

impl std::fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let public = hex::encode(self.public.to_encoded_point(true).as_bytes());
        f.debug_struct("DeviceKey")
            .field("public", &public)
            .finish()
    }
}

impl DeviceKey {
    /// Asks `store` for its public key once (it must be a P-256 point).
    pub fn new(store: Arc<dyn DeviceKeyStore>) -> StoreResult<Self> {
        let sec1 = store.public_key()?;
        let public = VerifyingKey::from_sec1_bytes(&sec1).map_err(|_| StoreError::DeviceKey {
            reason: "its public key is not a P-256 point".into(),
        })?;
        // A key in this process signs unchecked (P256Signer below): it must be the one shown.
        if let Some(key) = store.in_process()
            && *key.verifying_key() != public
        {
            return Err(StoreError::DeviceKey {
                reason: "its key in this process is not its public key's".into(),
            });
        }
        Ok(Self { store, public })
    }
}

impl P256Signer for DeviceKey {
    fn verifying_key(&self) -> VerifyingKey {
        self.public
    }

    fn sign_message(&self, message: &[u8]) -> cosigner_protocol::Result<Signature> {
        match self.store.in_process() {
            Some(key) => key.sign_message(message),
            None => {
                use sha2::Digest;
                self.sign_prehashed(&sha2::Sha256::digest(message).into())
            }
        }
    }

    /// The platform's signature, checked before it is used: hardware that answers with another
    /// key's signature (or garbage) is caught here, not at the cosigner.
    fn sign_prehashed(&self, digest: &[u8; 32]) -> cosigner_protocol::Result<Signature> {
        use p256::ecdsa::signature::hazmat::PrehashVerifier;
        if let Some(key) = self.store.in_process() {
            return key.sign_prehashed(digest);
        }
        let bad = |reason: String| cosigner_protocol::ProtocolError::encoding(reason);
        let raw = self
            .store
            .sign_digest(digest)
            .map_err(|e| bad(e.to_string()))?;
        let sig = Signature::from_slice(&raw)
            .or_else(|_| Signature::from_der(&raw))
            .map_err(|_| bad("the device key's signature is neither r||s nor DER".into()))?;
        self.public
            .verify_prehash(digest, &sig)
            .map_err(|_| bad("the device key's signature does not verify under its key".into()))?;
        Ok(sig)
    }
}

/// A device key kept in a file (PKCS#8 PEM, 0600): the command line's `DIR/device.key`.
#[derive(Debug)]
pub struct FileDeviceKey {
    key: p256::ecdsa::SigningKey,
}

impl FileDeviceKey {
    /// Reads `path`, creating a new random key there first when nothing is at it.
    pub fn open_or_create(path: &Path) -> crate::Result<Self> {
        if !occupied(path) {
            // Created once: two first runs at the same moment keep the same key, the first's
            // (the second's write is refused, and it reads the first's).
            let key = p256::ecdsa::SigningKey::random(&mut rand_core::OsRng);
            if let Err(e) = crate::home::write_p256_key(path, &key)
                && !occupied(path)
            {
                return Err(e);
            }
        }
        Ok(Self {
            key: crate::home::read_p256_key(path)?,
        })
    }
}

impl DeviceKeyStore for FileDeviceKey {
    fn public_key(&self) -> StoreResult<Vec<u8>> {
        Ok(cosigner_protocol::auth::public_key_bytes(&self.key))
    }
    fn in_process(&self) -> Option<&p256::ecdsa::SigningKey> {
        Some(&self.key)
    }
    fn sign_digest(&self, digest: &[u8; 32]) -> StoreResult<Vec<u8>> {
        let sig = self
            .key
            .sign_prehashed(digest)
            .map_err(|e| StoreError::DeviceKey {
                reason: e.to_string(),
            })?;
        Ok(sig.to_bytes().to_vec())
    }
}

/// A random device key in memory, for tests.
#[derive(Debug)]
pub struct MemoryDeviceKey(FileDeviceKey);

impl MemoryDeviceKey {
    /// A new random key.
    pub fn random() -> Self {
        Self(FileDeviceKey {
            key: p256::ecdsa::SigningKey::random(&mut rand_core::OsRng),
        })
    }
}

impl DeviceKeyStore for MemoryDeviceKey {
    fn public_key(&self) -> StoreResult<Vec<u8>> {
        self.0.public_key()
    }
    fn in_process(&self) -> Option<&p256::ecdsa::SigningKey> {
        self.0.in_process()
    }
    fn sign_digest(&self, digest: &[u8; 32]) -> StoreResult<Vec<u8>> {
        self.0.sign_digest(digest)
    }
}

/// Records by name, each with the write that made it (its version).
type Records = BTreeMap<String, (u64, Zeroizing<Vec<u8>>)>;

/// Records in memory, for tests (and a phone app's unit tests).
#[derive(Debug, Default)]
pub struct MemoryStore {
    records: Mutex<Records>,
    writes: std::sync::atomic::AtomicU64,
}

impl MemoryStore {
    fn map(&self) -> StoreResult<std::sync::MutexGuard<'_, Records>> {
        self.records
            .lock()
            .map_err(|_| StoreError::io("memory", "a writer panicked"))
    }
}

impl WalletStore for MemoryStore {
    fn read(&self, name: &str) -> StoreResult<Option<Vec<u8>>> {
        Ok(self.map()?.get(name).map(|(_, b)| b.to_vec()))
    }
    fn write(&self, name: &str, bytes: &[u8]) -> StoreResult<()> {
        use std::sync::atomic::Ordering;
        let n = self.writes.fetch_add(1, Ordering::Relaxed);
        self.map()?
            .insert(name.to_owned(), (n, Zeroizing::new(bytes.to_vec())));
        Ok(())
    }
    fn remove(&self, name: &str) -> StoreResult<()> {
        self.map()?.remove(name);
        Ok(())
    }
    fn list(&self) -> StoreResult<Vec<String>> {
        Ok(self.map()?.keys().cloned().collect())
    }
    fn version(&self, name: &str) -> Option<Vec<u8>> {
        let map = self.map().ok()?;
        map.get(name).map(|(n, _)| n.to_be_bytes().to_vec())
    }
}

/// Largest record a [`DirStore`] reads: 8 threshold ECDSA shares (about 105 KB each) in hex,
/// sealed, with room to spare.
pub const MAX_RECORD: u64 = 4 << 20;

/// The command line's home directory: each record a file `DIR/<name>`, mode 0600, replaced by
/// an fsynced temporary file renamed over it.
#[derive(Debug, Clone)]
pub struct DirStore {
    dir: PathBuf,
}

impl DirStore {
    /// Opens (creating if missing, mode 0700) `dir` and its `wallets` folder.
    pub fn open(dir: &Path) -> crate::Result<Self> {
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
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of record `name` (names never climb out: no `..`, no absolute path).
    fn path(&self, name: &str) -> StoreResult<PathBuf> {
        let safe = !name.is_empty()
            && !name.starts_with('/')
            && name
                .split('/')
                .all(|part| !part.is_empty() && part != "." && part != "..");
        if !safe {
            return Err(StoreError::io(name, "not a record name"));
        }
        Ok(self.dir.join(name))
    }
}

fn store_io(path: &Path, e: &std::io::Error) -> StoreError {
    StoreError::io(path.display(), crate::error::io_reason(e))
}

impl WalletStore for DirStore {
    /// Only a regular file, never through a link, never over [`MAX_RECORD`].
    fn read(&self, name: &str) -> StoreResult<Option<Vec<u8>>> {
        use std::io::Read;
        let path = self.path(name)?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path);
        let file = match file {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            // ELOOP: a symbolic link at the name, never read through.
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return Err(StoreError::Damaged {
                    name: path.display().to_string(),
                    reason: "a symbolic link, not a record".into(),
                });
            }
            Err(e) => return Err(store_io(&path, &e)),
        };
        let meta = file.metadata().map_err(|e| store_io(&path, &e))?;
        let damaged = |reason: &str| StoreError::Damaged {
            name: path.display().to_string(),
            reason: reason.into(),
        };
        if !meta.is_file() {
            return Err(damaged("not a regular file"));
        }
        if meta.len() > MAX_RECORD {
            return Err(damaged("larger than any record"));
        }
        let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
        file.take(MAX_RECORD + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| store_io(&path, &e))?;
        Ok(Some(bytes))
    }

    fn write(&self, name: &str, bytes: &[u8]) -> StoreResult<()> {
        let path = self.path(name)?;
        write_private(&path, bytes).map_err(|e| StoreError::io(path.display(), e))
    }

    fn remove(&self, name: &str) -> StoreResult<()> {
        let path = self.path(name)?;
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(store_io(&path, &e)),
        }
    }

    fn list(&self) -> StoreResult<Vec<String>> {
        let dir = self.dir.join("wallets");
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(|e| store_io(&dir, &e))? {
            let entry = entry.map_err(|e| store_io(&dir, &e))?;
            if let Some(name) = entry.file_name().to_str()
                && !name.starts_with('.')
            {
                out.push(format!("wallets/{name}"));
            }
        }
        out.sort();
        Ok(out)
    }

    fn exists(&self, name: &str) -> StoreResult<bool> {
        Ok(occupied(&self.path(name)?))
    }

    /// The file's identity and version as `stat` reports them: every write is a new file
    /// renamed over the old one (a new inode); an edit in place changes the size or the times
    /// (the change time user space cannot set back).
    fn version(&self, name: &str) -> Option<Vec<u8>> {
        let m = std::fs::metadata(self.path(name).ok()?).ok()?;
        let fields = [
            m.dev(),
            m.ino(),
            m.len(),
            m.mtime() as u64,
            m.mtime_nsec() as u64,
            m.ctime() as u64,
            m.ctime_nsec() as u64,
        ];
        Some(fields.iter().flat_map(|f| f.to_be_bytes()).collect())
    }

    fn describe(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    fn lock_path(&self, name: &str) -> Option<PathBuf> {
        self.path(name).ok()
    }
}

/// Seals records with AES-256-GCM (NIST SP 800-38D) under a 32-byte key: `CSL1 ‖ nonce (12) ‖
/// ciphertext ‖ tag (16)`, the associated data `cosigner-record-v1 ‖ name`. Random 96-bit
/// nonces: a device seals far fewer than the 2^32 records SP 800-38D section 8.3 allows a key.
pub struct AeadSealer {
    key: aws_lc_rs::aead::LessSafeKey,
}

impl std::fmt::Debug for AeadSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AeadSealer(..)")
    }
}

/// The first bytes of a sealed record. No clear record starts so: JSON starts with `{` or `[`,
/// frost's serialization with its version byte 0.
pub const SEALED_MAGIC: &[u8; 4] = b"CSL1";
const NONCE_LEN: usize = 12;

impl AeadSealer {
    /// A sealer under `key`.
    pub fn new(key: &[u8; 32]) -> crate::Result<Self> {
        let unbound = aws_lc_rs::aead::UnboundKey::new(&aws_lc_rs::aead::AES_256_GCM, key)
            .map_err(|_| crate::ClientError::Input("AES-256 key refused".into()))?;
        Ok(Self {
            key: aws_lc_rs::aead::LessSafeKey::new(unbound),
        })
    }

    /// A sealer under a new random key that lives in memory only, for tests.
    pub fn random() -> crate::Result<Self> {
        Self::new(&*random_key()?)
    }

    /// The command line's storage key: `path` (32 random bytes, 0600), created on first use
    /// when `may_create` (never over one a racing process created first: the first one made is
    /// the one every process uses). On a desktop the platform that holds it is the user's
    /// account; a phone implements [`Sealer`] with its keystore instead.
    pub fn key_file(path: &Path, may_create: bool) -> crate::Result<Self> {
        if !occupied(path) {
            if !may_create {
                return Err(home_err(
                    path,
                    "missing, and this home's records are sealed under it: restore it from \
                     the backup the home came from (or recover the wallets onto a new home)",
                ));
            }
            create_private_once(path, &random_key()?[..])?;
        }
        let bytes = Zeroizing::new(std::fs::read(path).map_err(|e| io_err(path, &e))?);
        let key: &[u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| home_err(path, "not a storage key (32 bytes)"))?;
        Self::new(key)
    }

    fn aad(name: &str) -> aws_lc_rs::aead::Aad<Vec<u8>> {
        let mut aad = b"cosigner-record-v1".to_vec();
        aad.extend_from_slice(name.as_bytes());
        aws_lc_rs::aead::Aad::from(aad)
    }
}

fn random_key() -> crate::Result<Zeroizing<[u8; 32]>> {
    use rand_core::RngCore;
    let mut key = Zeroizing::new([0u8; 32]);
    rand_core::OsRng
        .try_fill_bytes(&mut key[..])
        .map_err(|e| crate::ClientError::Input(format!("no randomness for a storage key: {e}")))?;
    Ok(key)
}

impl Sealer for AeadSealer {
    fn seal(&self, name: &str, plaintext: &[u8]) -> StoreResult<Vec<u8>> {
        use rand_core::RngCore;
        let mut nonce = [0u8; NONCE_LEN];
        rand_core::OsRng
            .try_fill_bytes(&mut nonce)
            .map_err(|e| StoreError::io(name, format!("no randomness: {e}")))?;
        let mut out = Vec::with_capacity(4 + NONCE_LEN + plaintext.len() + 16);
        out.extend_from_slice(SEALED_MAGIC);
        out.extend_from_slice(&nonce);
        let mut body = Zeroizing::new(plaintext.to_vec());
        self.key
            .seal_in_place_append_tag(
                aws_lc_rs::aead::Nonce::assume_unique_for_key(nonce),
                Self::aad(name),
                &mut *body,
            )
            .map_err(|_| StoreError::io(name, "sealing failed"))?;
        out.extend_from_slice(&body);
        Ok(out)
    }

    fn open(&self, name: &str, sealed: &[u8]) -> StoreResult<Zeroizing<Vec<u8>>> {
        let damaged = || StoreError::not_opened(name);
        let rest = sealed.strip_prefix(&SEALED_MAGIC[..]).ok_or_else(damaged)?;
        let (nonce, body) = rest.split_at_checked(NONCE_LEN).ok_or_else(damaged)?;
        let nonce =
            aws_lc_rs::aead::Nonce::try_assume_unique_for_key(nonce).map_err(|_| damaged())?;
        let mut body = Zeroizing::new(body.to_vec());
        let len = self
            .key
            .open_in_place(nonce, Self::aad(name), &mut body)
            .map_err(|_| damaged())?
            .len();
        body.truncate(len);
        Ok(body)
    }
}

/// Whether a record is sealed (starts with [`SEALED_MAGIC`]).
pub fn is_sealed(bytes: &[u8]) -> bool {
    bytes.starts_with(SEALED_MAGIC)
}

pub(crate) fn home_err(path: &Path, e: impl std::fmt::Display) -> crate::ClientError {
    crate::ClientError::Home {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// An I/O error on `path`, in the user's terms (no OS error number).
pub(crate) fn io_err(path: &Path, e: &std::io::Error) -> crate::ClientError {
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
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> crate::Result<()> {
    write_private_via(path, &temp_path(path)?, bytes)
}

/// Creates `path` holding `bytes` (0600, fsynced) unless something is already there, atomically:
/// a temporary file linked to `path` (link(2) fails with `EEXIST` rather than replace, unlike
/// rename(2)), so two processes creating the same key at once keep the first one's. Returns
/// whether this call created it.
pub(crate) fn create_private_once(path: &Path, bytes: &[u8]) -> crate::Result<bool> {
    let tmp = temp_path(path)?;
    let mut file = create_private(&tmp)?;
    let written = file
        .write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| io_err(&tmp, &e));
    let linked = written.and_then(|()| match std::fs::hard_link(&tmp, path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(io_err(path, &e)),
    });
    let _ = std::fs::remove_file(&tmp);
    let created = linked?;
    sync_parent(path)?;
    Ok(created)
}

/// [`write_private`] through the temporary file `tmp` (which must not exist).
pub(crate) fn write_private_via(path: &Path, tmp: &Path, bytes: &[u8]) -> crate::Result<()> {
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
pub(crate) fn create_private(path: &Path) -> crate::Result<std::fs::File> {
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
pub(crate) fn temp_path(path: &Path) -> crate::Result<PathBuf> {
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
fn sync_parent(path: &Path) -> crate::Result<()> {
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
pub(crate) fn occupied(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_sealed_record_opens_under_its_name_only_and_never_when_altered() {
        let sealer = AeadSealer::random().unwrap();
        let sealed = sealer.seal("wallets/aa.share", b"secret").unwrap();
        assert!(is_sealed(&sealed));
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
        assert_eq!(
            &*sealer.open("wallets/aa.share", &sealed).unwrap(),
            b"secret"
        );
        let damaged = |e: StoreError| matches!(e, StoreError::Damaged { .. });
        assert!(damaged(
            sealer.open("wallets/bb.share", &sealed).unwrap_err()
        ));
        let mut flipped = sealed.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(damaged(
            sealer.open("wallets/aa.share", &flipped).unwrap_err()
        ));
        assert!(damaged(
            sealer.open("wallets/aa.share", b"secret").unwrap_err()
        ));
        assert!(damaged(
            sealer.open("wallets/aa.share", b"CSL1").unwrap_err()
        ));
        let other = AeadSealer::random().unwrap();
        assert!(damaged(
            other.open("wallets/aa.share", &sealed).unwrap_err()
        ));
    }

    #[test]
    fn a_dir_store_refuses_names_that_climb_out() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirStore::open(dir.path()).unwrap();
        for name in [
            "",
            "/etc/passwd",
            "../x",
            "wallets/../../x",
            "wallets//x",
            "./x",
        ] {
            assert!(store.write(name, b"x").is_err(), "{name}");
            assert!(store.read(name).is_err(), "{name}");
        }
        store.write("wallets/a.json", b"{}").unwrap();
        assert_eq!(store.list().unwrap(), ["wallets/a.json"]);
        assert_eq!(store.read("wallets/a.json").unwrap().unwrap(), b"{}");
    }

    #[test]
    fn a_device_key_whose_hardware_signs_with_another_key_is_caught() {
        struct Liar(MemoryDeviceKey, MemoryDeviceKey);
        impl DeviceKeyStore for Liar {
            fn public_key(&self) -> StoreResult<Vec<u8>> {
                self.0.public_key()
            }
            fn sign_digest(&self, digest: &[u8; 32]) -> StoreResult<Vec<u8>> {
                self.1.sign_digest(digest)
            }
        }
        let honest = DeviceKey::new(Arc::new(MemoryDeviceKey::random())).unwrap();
        honest.sign_prehashed(&[7; 32]).unwrap();
        let liar = Liar(MemoryDeviceKey::random(), MemoryDeviceKey::random());
        let liar = DeviceKey::new(Arc::new(liar)).unwrap();
        assert!(liar.sign_prehashed(&[7; 32]).is_err());

        // A key in this process that is not the one it shows is refused at once.
        struct Swapped(MemoryDeviceKey, MemoryDeviceKey);
        impl DeviceKeyStore for Swapped {
            fn public_key(&self) -> StoreResult<Vec<u8>> {
                self.0.public_key()
            }
            fn sign_digest(&self, digest: &[u8; 32]) -> StoreResult<Vec<u8>> {
                self.1.sign_digest(digest)
            }
            fn in_process(&self) -> Option<&p256::ecdsa::SigningKey> {
                self.1.in_process()
            }
        }
        let swapped = Swapped(MemoryDeviceKey::random(), MemoryDeviceKey::random());
        assert!(DeviceKey::new(Arc::new(swapped)).is_err());
    }
}
