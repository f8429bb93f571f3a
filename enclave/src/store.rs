//! Where sealed blobs go: the parent's store, reached over a socket. The parent is untrusted:
//! everything read back is opened with the sealer, whose AAD binds what the blob must be.

use std::collections::BTreeMap;
use std::sync::Mutex;

use cosigner_protocol::frame::{read_frame, write_frame};
use cosigner_protocol::wire::{self, StoreRequest, StoreResponse};
use serde_bytes::ByteBuf;

use crate::transport::{Endpoint, Stream, connect};

/// Errors talking to the store.
#[derive(Debug, thiserror::Error)]
#[error("store: {0}")]
pub struct StoreError(pub String);

/// Key/value storage of sealed blobs.
pub trait BlobStore: Send + Sync {
    /// Stores `value` under `key`.
    fn put(&self, key: &str, value: &[u8]) -> Result<(), StoreError>;
    /// Reads `key`.
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Deletes `key`.
    fn delete(&self, key: &str) -> Result<(), StoreError>;
    /// Keys starting with `prefix`.
    fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError>;
    /// Stores every pair of `entries`, all durable when it returns: one write for the parent's
    /// store (a transaction), one put after another elsewhere.
    fn put_many(&self, entries: &[(String, Vec<u8>)]) -> Result<(), StoreError> {
        entries
            .iter()
            .try_for_each(|(key, value)| self.put(key, value))
    }
}

/// The parent's store, over one connection (reconnected once if it broke).
pub struct RemoteStore {
    endpoint: Endpoint,
    conn: Mutex<Option<Box<dyn Stream>>>,
}

impl std::fmt::Debug for RemoteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RemoteStore({})", self.endpoint)
    }
}

impl RemoteStore {
    /// A store at `endpoint` (connected on first use).
    pub fn new(endpoint: Endpoint) -> Self {
        Self {
            endpoint,
            conn: Mutex::new(None),
        }
    }

    /// One request, its answer (reconnecting once if the connection broke). The answer's frame is
    /// zeroized once decoded (it may carry AWS credentials).
    pub(crate) fn call(&self, request: &StoreRequest) -> Result<StoreResponse, StoreError> {
        let body = wire::encode(request).map_err(|e| StoreError(e.to_string()))?;
        let mut guard = self
            .conn
            .lock()
            .map_err(|_| StoreError("store connection lock poisoned".into()))?;
        for attempt in 0..2 {
            if guard.is_none() {
                *guard = Some(
                    connect(&self.endpoint)
                        .map_err(|e| StoreError(format!("cannot reach {}: {e}", self.endpoint)))?,
                );
            }
            let Some(stream) = guard.as_mut() else {
                continue;
            };
            let result = write_frame(stream, &body).and_then(|()| read_frame(stream));
            match result {
                Ok(Some(frame)) => {
                    let frame = zeroize::Zeroizing::new(frame);
                    return wire::decode::<StoreResponse>(&frame)
                        .map_err(|e| StoreError(format!("bad answer from the parent: {e}")));
                }
                Ok(None) | Err(_) if attempt == 0 => *guard = None,
                Ok(None) => {
                    return Err(StoreError("the parent closed the store connection".into()));
                }
                Err(e) => return Err(StoreError(e.to_string())),
            }
        }
        Err(StoreError("store unavailable".into()))
    }
}

fn unexpected(response: StoreResponse) -> StoreError {
    match response {
        StoreResponse::Error(e) => StoreError(e.message),
        other => StoreError(format!("unexpected answer {other:?}")),
    }
}

impl BlobStore for RemoteStore {
    fn put_many(&self, entries: &[(String, Vec<u8>)]) -> Result<(), StoreError> {
        let entries = entries
            .iter()
            .map(|(k, v)| (k.clone(), ByteBuf::from(v.clone())))
            .collect();
        match self.call(&StoreRequest::PutMany { entries })? {
            StoreResponse::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    fn put(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        match self.call(&StoreRequest::Put {
            key: key.to_owned(),
            value: ByteBuf::from(value.to_vec()),
        })? {
            StoreResponse::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match self.call(&StoreRequest::Get {
            key: key.to_owned(),
        })? {
            StoreResponse::Value { value } => Ok(value.map(ByteBuf::into_vec)),
            other => Err(unexpected(other)),
        }
    }

    fn delete(&self, key: &str) -> Result<(), StoreError> {
        match self.call(&StoreRequest::Delete {
            key: key.to_owned(),
        })? {
            StoreResponse::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        match self.call(&StoreRequest::List {
            prefix: prefix.to_owned(),
        })? {
            StoreResponse::Keys { keys } => Ok(keys),
            other => Err(unexpected(other)),
        }
    }
}

/// An in-memory store, for in-process tests of the service.
#[derive(Debug, Default)]
pub struct MemoryStore {
    map: Mutex<BTreeMap<String, Vec<u8>>>,
}

impl MemoryStore {
    fn map(&self) -> Result<std::sync::MutexGuard<'_, BTreeMap<String, Vec<u8>>>, StoreError> {
        self.map.lock().map_err(|_| StoreError("poisoned".into()))
    }
}

impl<T: BlobStore + ?Sized> BlobStore for std::sync::Arc<T> {
    fn put(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.as_ref().put(key, value)
    }
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.as_ref().get(key)
    }
    fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.as_ref().delete(key)
    }
    fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        self.as_ref().list(prefix)
    }
    fn put_many(&self, entries: &[(String, Vec<u8>)]) -> Result<(), StoreError> {
        self.as_ref().put_many(entries)
    }
}

impl BlobStore for MemoryStore {
    fn put(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.map()?.insert(key.to_owned(), value.to_vec());
        Ok(())
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.map()?.get(key).cloned())
    }

    fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.map()?.remove(key);
        Ok(())
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        Ok(self
            .map()?
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect())
    }
}
