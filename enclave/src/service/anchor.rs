//! Where freshness is anchored: a store the host cannot roll back.

use cosigner_kms::Token;

/// Reads and writes small anchor values by label.
pub trait Anchor: Send + Sync {
    /// The anchor's value, if set.
    fn read(&self, label: &str) -> Result<Option<Vec<u8>>, String>;
    /// Sets the anchor's value, durably.
    fn write(&self, label: &str, value: &[u8]) -> Result<(), String>;
}

/// Anchors as PKCS#11 token data objects (the HSM keeps them; see `cosigner_kms::Token::anchor`).
#[derive(Debug, Clone)]
pub struct TokenAnchor(pub Token);

impl Anchor for TokenAnchor {
    fn read(&self, label: &str) -> Result<Option<Vec<u8>>, String> {
        self.0.anchor(label).map_err(|e| e.to_string())
    }

    fn write(&self, label: &str, value: &[u8]) -> Result<(), String> {
        self.0.set_anchor(label, value).map_err(|e| e.to_string())
    }
}

/// In-memory anchors for in-process tests. Gives no rollback protection across restarts.
#[derive(Debug, Default)]
pub struct InsecureMemoryAnchor {
    map: std::sync::Mutex<std::collections::HashMap<String, Vec<u8>>>,
}

impl Anchor for InsecureMemoryAnchor {
    fn read(&self, label: &str) -> Result<Option<Vec<u8>>, String> {
        let map = self.map.lock().map_err(|_| "poisoned".to_owned())?;
        Ok(map.get(label).cloned())
    }

    fn write(&self, label: &str, value: &[u8]) -> Result<(), String> {
        let mut map = self.map.lock().map_err(|_| "poisoned".to_owned())?;
        map.insert(label.to_owned(), value.to_vec());
        Ok(())
    }
}

/// Remembers the anchor values this enclave wrote or read, so a signature costs no HSM round
/// trip. The enclave is the only writer of its anchors; a value read back from the token later
/// can only be older (a host that rolled back a SoftHSM token directory), and the cache, being
/// newer, still refuses stale state while this process runs.
#[derive(Debug)]
pub struct CachedAnchor<A> {
    inner: A,
    cache: std::sync::Mutex<std::collections::HashMap<String, Vec<u8>>>,
}

impl<A: Anchor> CachedAnchor<A> {
    /// Wraps `inner`.
    pub fn new(inner: A) -> Self {
        Self {
            inner,
            cache: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }
}

impl<A: Anchor> Anchor for CachedAnchor<A> {
    fn read(&self, label: &str) -> Result<Option<Vec<u8>>, String> {
        if let Some(v) = self
            .cache
            .lock()
            .map_err(|_| "poisoned".to_owned())?
            .get(label)
        {
            return Ok(Some(v.clone()));
        }
        let value = self.inner.read(label)?;
        if let Some(v) = &value {
            self.cache
                .lock()
                .map_err(|_| "poisoned".to_owned())?
                .insert(label.to_owned(), v.clone());
        }
        Ok(value)
    }

    fn write(&self, label: &str, value: &[u8]) -> Result<(), String> {
        // The token first: the cache never runs ahead of what is durable.
        self.inner.write(label, value)?;
        self.cache
            .lock()
            .map_err(|_| "poisoned".to_owned())?
            .insert(label.to_owned(), value.to_vec());
        Ok(())
    }
}

impl Anchor for Box<dyn Anchor> {
    fn read(&self, label: &str) -> Result<Option<Vec<u8>>, String> {
        self.as_ref().read(label)
    }

    fn write(&self, label: &str, value: &[u8]) -> Result<(), String> {
        self.as_ref().write(label, value)
    }
}
