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
