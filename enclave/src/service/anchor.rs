//! Where freshness is anchored: a store the host cannot roll back.
//!
//! Every write is a compare-and-swap on the anchor's *generation* (bumped by each write): a writer
//! that read generation g writes g+1 only if g is still the newest, so two writers can never
//! silently overwrite each other, and a writer learns when its view was stale
//! ([`AnchorError::Conflict`]) with nothing written.

use cosigner_kms::{AnchorWrite, Token};

/// An anchor's value and its generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    /// Bumped by every write (0 for the first).
    pub generation: u64,
    /// The value.
    pub value: Vec<u8>,
}

/// Why an anchor could not be read or written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AnchorError {
    /// Someone else wrote the anchor since it was read: nothing was written.
    #[error("anchor {label} changed under us (expected generation {expected:?}, found {found:?})")]
    Conflict {
        /// The anchor.
        label: String,
        /// The generation the writer had read.
        expected: Option<u64>,
        /// The newest generation found.
        found: Option<u64>,
    },
    /// What the untrusted store holds for the anchor is not what the anchor's root names (a
    /// host that altered or rolled back part of a partition's tree).
    #[error("anchor {label} refused: {reason}")]
    Integrity {
        /// The anchor (or partition root).
        label: String,
        /// What did not match.
        reason: String,
    },
    /// A blob the root named is gone: replaced by a concurrent writer (read again) or deleted
    /// by the host.
    #[error("anchor {label}: a blob its root names is missing from the store")]
    Missing {
        /// The partition root.
        label: String,
    },
    /// The configured partition count is not the one the anchors were laid out with.
    #[error(
        "[anchors] partitions = {configured}, but this token's anchors are laid out in {anchored:?} \
         partitions: every instance must keep the count it was first started with"
    )]
    Layout {
        /// The configured count.
        configured: u16,
        /// The anchored count (`None`: unreadable).
        anchored: Option<u16>,
    },
    /// This instance runs alone (`[anchors] shared` unset) on anchors that several instances
    /// have shared: it would remember anchor values the others move.
    #[error(
        "[anchors] shared is not set, but this token's anchors are shared by several instances: \
         set shared = true (and lock_file) on every instance"
    )]
    SharedLayout,
    /// The backend failed; a write may or may not have taken effect.
    #[error("anchor {label}: {reason}")]
    Backend {
        /// The anchor.
        label: String,
        /// The backend's error.
        reason: String,
    },
}

impl AnchorError {
    fn backend(label: &str, reason: impl std::fmt::Display) -> Self {
        Self::Backend {
            label: label.to_owned(),
            reason: reason.to_string(),
        }
    }
}

/// Reads and writes small anchor values by label.
pub trait Anchor: Send + Sync {
    /// The anchor's newest value, if set.
    fn read(&self, label: &str) -> Result<Option<Versioned>, AnchorError>;
    /// Sets the anchor's value, durably, only if its newest generation is `expected` (`None`: not
    /// set yet). Returns the generation written.
    fn write(&self, label: &str, expected: Option<u64>, value: &[u8]) -> Result<u64, AnchorError>;
    /// Whether [`Anchor::write_carrying`] can store the caller's blobs: an anchor whose own
    /// blobs go to the store the caller writes to, so that both go in one write.
    fn carries_blobs(&self) -> bool {
        false
    }
    /// [`Anchor::write`], storing `blobs` in the caller's store first, durably and in the same
    /// write as the anchor's own blobs (one transaction and one sync at the parent instead of
    /// two). Only when [`Anchor::carries_blobs`]; whatever the outcome, `blobs` may have been
    /// stored.
    fn write_carrying(
        &self,
        label: &str,
        _expected: Option<u64>,
        _value: &[u8],
        _blobs: Vec<(String, Vec<u8>)>,
    ) -> Result<u64, AnchorError> {
        Err(AnchorError::backend(
            label,
            "this anchor does not store blobs",
        ))
    }
}

/// Anchors as PKCS#11 token data objects (the HSM keeps them; see `cosigner_kms::Token::anchor`).
#[derive(Debug, Clone)]
pub struct TokenAnchor(pub Token);

impl Anchor for TokenAnchor {
    fn read(&self, label: &str) -> Result<Option<Versioned>, AnchorError> {
        Self::versioned(label, self.0.anchor(label))
    }

    fn write(&self, label: &str, expected: Option<u64>, value: &[u8]) -> Result<u64, AnchorError> {
        Self::written(label, expected, self.0.set_anchor(label, expected, value))
    }
}

/// Anchors as token data objects that only this process writes (one instance per token,
/// `[anchors] shared` unset): a write checks the object it wrote last instead of searching the
/// token (`cosigner_kms::SoleWriter`).
#[derive(Debug)]
pub struct SoleTokenAnchor(pub cosigner_kms::SoleWriter);

impl Anchor for SoleTokenAnchor {
    fn read(&self, label: &str) -> Result<Option<Versioned>, AnchorError> {
        TokenAnchor::versioned(label, self.0.anchor(label))
    }

    fn write(&self, label: &str, expected: Option<u64>, value: &[u8]) -> Result<u64, AnchorError> {
        TokenAnchor::written(label, expected, self.0.set_anchor(label, expected, value))
    }
}

impl TokenAnchor {
    fn versioned(
        label: &str,
        read: cosigner_kms::Result<Option<(u64, Vec<u8>)>>,
    ) -> Result<Option<Versioned>, AnchorError> {
        read.map(|v| v.map(|(generation, value)| Versioned { generation, value }))
            .map_err(|e| AnchorError::backend(label, e))
    }

    fn written(
        label: &str,
        expected: Option<u64>,
        write: cosigner_kms::Result<AnchorWrite>,
    ) -> Result<u64, AnchorError> {
        match write.map_err(|e| AnchorError::backend(label, e))? {
            AnchorWrite::Written(generation) => Ok(generation),
            AnchorWrite::Conflict { found } => Err(AnchorError::Conflict {
                label: label.to_owned(),
                expected,
                found,
            }),
            other => Err(AnchorError::backend(label, format!("{other:?}"))),
        }
    }
}

/// The generation a compare-and-swap of `label` writes: the next after `found`, the one there now
/// (0 for a new anchor), if that is the `expected` one; else a conflict.
pub fn next_generation(
    label: &str,
    expected: Option<u64>,
    found: Option<u64>,
) -> Result<u64, AnchorError> {
    if found != expected {
        return Err(AnchorError::Conflict {
            label: label.to_owned(),
            expected,
            found,
        });
    }
    Ok(found.map_or(0, |g| g.saturating_add(1)))
}

/// Compare-and-swap over a map under one lock: what in-memory anchors and stores without
/// versions use.
fn swap_in_map(
    map: &mut std::collections::HashMap<String, Versioned>,
    label: &str,
    expected: Option<u64>,
    value: &[u8],
) -> Result<u64, AnchorError> {
    let generation = next_generation(label, expected, map.get(label).map(|v| v.generation))?;
    map.insert(
        label.to_owned(),
        Versioned {
            generation,
            value: value.to_vec(),
        },
    );
    Ok(generation)
}

/// In-memory anchors for in-process tests. Gives no rollback protection across restarts.
#[derive(Debug, Default)]
pub struct InsecureMemoryAnchor {
    map: std::sync::Mutex<std::collections::HashMap<String, Versioned>>,
}

impl InsecureMemoryAnchor {
    /// How many anchors are set (tests count "token objects" with it).
    pub fn len(&self) -> usize {
        self.map.lock().map_or(0, |m| m.len())
    }

    /// Whether no anchor is set.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Anchor for InsecureMemoryAnchor {
    fn read(&self, label: &str) -> Result<Option<Versioned>, AnchorError> {
        let map = self
            .map
            .lock()
            .map_err(|_| AnchorError::backend(label, "poisoned"))?;
        Ok(map.get(label).cloned())
    }

    fn write(&self, label: &str, expected: Option<u64>, value: &[u8]) -> Result<u64, AnchorError> {
        let mut map = self
            .map
            .lock()
            .map_err(|_| AnchorError::backend(label, "poisoned"))?;
        swap_in_map(&mut map, label, expected, value)
    }
}

/// Remembers the anchor values this enclave wrote or read, so a signature costs no HSM round
/// trip. The enclave is the only writer of its anchors; a value read back from the token later
/// can only be older (a host that rolled back a SoftHSM token directory), and the cache, being
/// newer, still refuses stale state while this process runs.
///
/// A write the backend reports as failed may still have taken effect (a token that created the
/// object and then failed), so a failed write *drops* the cached value: the next read asks the
/// backend again instead of trusting a value that may be stale.
#[derive(Debug)]
pub struct CachedAnchor<A> {
    inner: A,
    cache: std::sync::Mutex<std::collections::HashMap<String, Versioned>>,
}

impl<A: Anchor> CachedAnchor<A> {
    /// Wraps `inner`.
    pub fn new(inner: A) -> Self {
        Self {
            inner,
            cache: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    fn cache(
        &self,
        label: &str,
    ) -> Result<std::sync::MutexGuard<'_, std::collections::HashMap<String, Versioned>>, AnchorError>
    {
        self.cache
            .lock()
            .map_err(|_| AnchorError::backend(label, "poisoned"))
    }
}

impl<A: Anchor> Anchor for CachedAnchor<A> {
    fn read(&self, label: &str) -> Result<Option<Versioned>, AnchorError> {
        if let Some(v) = self.cache(label)?.get(label) {
            return Ok(Some(v.clone()));
        }
        let value = self.inner.read(label)?;
        if let Some(v) = &value {
            let mut cache = self.cache(label)?;
            // A concurrent write may have cached a newer generation meanwhile: keep the newest.
            let newer = cache
                .get(label)
                .is_some_and(|c| c.generation >= v.generation);
            if !newer {
                cache.insert(label.to_owned(), v.clone());
            }
        }
        Ok(value)
    }

    fn write(&self, label: &str, expected: Option<u64>, value: &[u8]) -> Result<u64, AnchorError> {
        self.remember(label, value, self.inner.write(label, expected, value))
    }

    fn carries_blobs(&self) -> bool {
        self.inner.carries_blobs()
    }

    fn write_carrying(
        &self,
        label: &str,
        expected: Option<u64>,
        value: &[u8],
        blobs: Vec<(String, Vec<u8>)>,
    ) -> Result<u64, AnchorError> {
        let written = self.inner.write_carrying(label, expected, value, blobs);
        self.remember(label, value, written)
    }
}

impl<A: Anchor> CachedAnchor<A> {
    /// Caches what a write of `value` to `label` did (the anchor first: the cache never runs
    /// ahead of what is durable).
    fn remember(
        &self,
        label: &str,
        value: &[u8],
        written: Result<u64, AnchorError>,
    ) -> Result<u64, AnchorError> {
        match written {
            Ok(generation) => {
                self.cache(label)?.insert(
                    label.to_owned(),
                    Versioned {
                        generation,
                        value: value.to_vec(),
                    },
                );
                Ok(generation)
            }
            Err(e) => {
                self.cache(label)?.remove(label);
                Err(e)
            }
        }
    }
}

impl<T: Anchor + ?Sized> Anchor for std::sync::Arc<T> {
    fn read(&self, label: &str) -> Result<Option<Versioned>, AnchorError> {
        self.as_ref().read(label)
    }

    fn write(&self, label: &str, expected: Option<u64>, value: &[u8]) -> Result<u64, AnchorError> {
        self.as_ref().write(label, expected, value)
    }

    fn carries_blobs(&self) -> bool {
        self.as_ref().carries_blobs()
    }

    fn write_carrying(
        &self,
        label: &str,
        expected: Option<u64>,
        value: &[u8],
        blobs: Vec<(String, Vec<u8>)>,
    ) -> Result<u64, AnchorError> {
        self.as_ref().write_carrying(label, expected, value, blobs)
    }
}

/// Makes the compare-and-swap of `inner` atomic across *processes*: several enclave instances
/// on one host sharing one token (PKCS#11 has no atomic update of an object, and the token's
/// own write lock is per process). Every write holds an exclusive `flock(2)` on `file` (kept
/// open; a file in a directory only the enclaves' user can write, so neither the parent nor
/// another user can hold it), taken under an in-process mutex because `flock` belongs to the
/// open file description, which this process's threads share. Reads take it shared (see
/// `read`).
#[derive(Debug)]
pub struct ProcessLocked<A> {
    inner: A,
    file: std::sync::Mutex<std::fs::File>,
}

impl<A: Anchor> ProcessLocked<A> {
    /// Locks writes of `inner` with the file at `path` (created mode 0600 if absent).
    pub fn new(inner: A, path: &std::path::Path) -> std::io::Result<Self> {
        let file = open_lock_file(path)?;
        Ok(Self {
            inner,
            file: std::sync::Mutex::new(file),
        })
    }
}

/// Opens (creating, mode 0600) a file that instances lock with `flock(2)`: the anchors lock,
/// its `.start` and the writer stripes' `.wNN` (`[anchors] lock_file`).
pub fn open_lock_file(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
}

impl<A: Anchor> ProcessLocked<A> {
    /// Runs `f` holding the lock file, `shared` or exclusive, and this process's mutex (the
    /// `flock` belongs to the descriptor all threads share). Closing the file would also release
    /// it; unlocking keeps the descriptor for the next call. A failed unlock is not reported over
    /// `f`'s own outcome: the next lock attempt fails instead.
    fn locked<T>(
        &self,
        label: &str,
        shared: bool,
        f: impl FnOnce(&A) -> Result<T, AnchorError>,
    ) -> Result<T, AnchorError> {
        let file = self
            .file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if shared {
            file.lock_shared()
        } else {
            file.lock()
        }
        .map_err(|e| AnchorError::backend(label, format!("anchor lock: {e}")))?;
        let out = f(&self.inner);
        let _ = file.unlock();
        out
    }
}

impl<A: Anchor> Anchor for ProcessLocked<A> {
    fn read(&self, label: &str) -> Result<Option<Versioned>, AnchorError> {
        // Reads are locked too (shared among instances, one at a time in this process): with
        // SoftHSM's file store (2.6.1) a reader that loads an object file another process is
        // rewriting, or that races another thread of its own process refreshing it, writes
        // default attributes back over it (an empty label), and the anchor vanishes from every
        // search by label. Excluding writers, and this process's other readers, from every read
        // closes both windows; a real HSM needs neither, and costs one lock per read.
        self.locked(label, true, |inner| inner.read(label))
    }

    fn write(&self, label: &str, expected: Option<u64>, value: &[u8]) -> Result<u64, AnchorError> {
        self.locked(label, false, |inner| inner.write(label, expected, value))
    }
}

impl Anchor for Box<dyn Anchor> {
    fn read(&self, label: &str) -> Result<Option<Versioned>, AnchorError> {
        self.as_ref().read(label)
    }

    fn write(&self, label: &str, expected: Option<u64>, value: &[u8]) -> Result<u64, AnchorError> {
        self.as_ref().write(label, expected, value)
    }

    fn carries_blobs(&self) -> bool {
        self.as_ref().carries_blobs()
    }

    fn write_carrying(
        &self,
        label: &str,
        expected: Option<u64>,
        value: &[u8],
        blobs: Vec<(String, Vec<u8>)>,
    ) -> Result<u64, AnchorError> {
        self.as_ref().write_carrying(label, expected, value, blobs)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_stale_writer_gets_a_conflict_and_writes_nothing() {
        let a = CachedAnchor::new(InsecureMemoryAnchor::default());
        assert_eq!(a.write("w", None, b"one").unwrap(), 0);
        assert_eq!(a.write("w", Some(0), b"two").unwrap(), 1);
        let stale = a.write("w", Some(0), b"three");
        assert!(matches!(
            stale,
            Err(AnchorError::Conflict { found: Some(1), .. })
        ));
        assert_eq!(a.read("w").unwrap().unwrap().value, b"two");
        assert!(matches!(
            a.write("w", None, b"again"),
            Err(AnchorError::Conflict { .. })
        ));
    }
}
