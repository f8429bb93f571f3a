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
}

/// Anchors as PKCS#11 token data objects (the HSM keeps them; see `cosigner_kms::Token::anchor`).
#[derive(Debug, Clone)]
pub struct TokenAnchor(pub Token);

impl Anchor for TokenAnchor {
    fn read(&self, label: &str) -> Result<Option<Versioned>, AnchorError> {
        self.0
            .anchor(label)
            .map(|v| v.map(|(generation, value)| Versioned { generation, value }))
            .map_err(|e| AnchorError::backend(label, e))
    }

    fn write(&self, label: &str, expected: Option<u64>, value: &[u8]) -> Result<u64, AnchorError> {
        match self
            .0
            .set_anchor(label, expected, value)
            .map_err(|e| AnchorError::backend(label, e))?
        {
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
        // The token first: the cache never runs ahead of what is durable.
        match self.inner.write(label, expected, value) {
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

impl Anchor for Box<dyn Anchor> {
    fn read(&self, label: &str) -> Result<Option<Versioned>, AnchorError> {
        self.as_ref().read(label)
    }

    fn write(&self, label: &str, expected: Option<u64>, value: &[u8]) -> Result<u64, AnchorError> {
        self.as_ref().write(label, expected, value)
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
