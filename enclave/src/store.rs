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
    /// Deletes `keys`, which nothing reads any more (blobs a committed write replaced), when it
    /// suits the store: not necessarily before this returns, and not durably (a blob left
    /// behind costs space, never correctness: nothing names it). Failures are not reported.
    /// Here: now, in one [`BlobStore::delete_many`].
    ///
    /// Only for keys never written again: a key discarded and then written anew could be
    /// deleted after the new write. Replaced sealed blobs are named by their digest, tree
    /// blobs by a digest of content whose generations only grow, a retired epoch's share by an
    /// epoch that never comes back.
    fn discard(&self, keys: Vec<String>) {
        let _ = self.delete_many(&keys);
    }
    /// Deletes every key of `keys`: one write for the parent's store, one delete after another
    /// elsewhere.
    fn delete_many(&self, keys: &[String]) -> Result<(), StoreError> {
        keys.iter().try_for_each(|key| self.delete(key))
    }
}

/// Most discards waiting for the janitor at once; past it, the caller deletes its keys itself.
const JANITOR_QUEUE: usize = 1024;
/// How long the janitor gathers discards after the first before it deletes them in one write.
const JANITOR_LINGER: std::time::Duration = std::time::Duration::from_millis(20);

/// A store whose [`BlobStore::discard`] happens on a thread of its own, over its own
/// connection: the deletes of replaced blobs (each a transaction and a sync at the parent) no
/// longer lie on the path of the request that replaced them.
pub struct Janitor<S> {
    inner: S,
    queue: Option<std::sync::mpsc::SyncSender<Vec<String>>>,
}

impl<S> std::fmt::Debug for Janitor<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Janitor")
    }
}

impl<S: BlobStore> Janitor<S> {
    /// `inner`, whose discarded keys `deleter` deletes on a thread of its own (both reach the
    /// same store). If the thread cannot be started, discards are deleted by the caller.
    pub fn new(inner: S, deleter: impl BlobStore + 'static) -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<String>>(JANITOR_QUEUE);
        let started = std::thread::Builder::new()
            .name("store-janitor".into())
            .spawn(move || janitor(&rx, &deleter));
        Self {
            inner,
            queue: started.ok().map(|_| tx),
        }
    }
}

/// The janitor's thread: gathers discards for [`JANITOR_LINGER`] after each first one, then
/// deletes them in writes of at most [`wire::MAX_PUT_MANY`] keys. Ends with the store.
fn janitor(rx: &std::sync::mpsc::Receiver<Vec<String>>, deleter: &dyn BlobStore) {
    while let Ok(mut keys) = rx.recv() {
        let until = std::time::Instant::now() + JANITOR_LINGER;
        while keys.len() < wire::MAX_PUT_MANY {
            let left = until.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(more) => keys.extend(more),
                Err(_) => break,
            }
        }
        for chunk in keys.chunks(wire::MAX_PUT_MANY) {
            let _ = deleter.delete_many(chunk);
        }
    }
}

impl<S: BlobStore> BlobStore for Janitor<S> {
    fn put(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.inner.put(key, value)
    }
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(key)
    }
    fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.inner.delete(key)
    }
    fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        self.inner.list(prefix)
    }
    fn put_many(&self, entries: &[(String, Vec<u8>)]) -> Result<(), StoreError> {
        self.inner.put_many(entries)
    }
    fn delete_many(&self, keys: &[String]) -> Result<(), StoreError> {
        self.inner.delete_many(keys)
    }
    fn discard(&self, keys: Vec<String>) {
        use std::sync::mpsc::TrySendError;
        if keys.is_empty() {
            return;
        }
        let keys = match &self.queue {
            Some(queue) => match queue.try_send(keys) {
                Ok(()) => return,
                Err(TrySendError::Full(keys) | TrySendError::Disconnected(keys)) => keys,
            },
            None => keys,
        };
        self.inner.discard(keys);
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

    fn delete_many(&self, keys: &[String]) -> Result<(), StoreError> {
        for chunk in keys.chunks(wire::MAX_PUT_MANY) {
            let request = StoreRequest::DeleteMany {
                keys: chunk.to_vec(),
            };
            match self.call(&request)? {
                StoreResponse::Done => {}
                // A parent from before `DeleteMany`: one key at a time.
                StoreResponse::Error(e) if e.kind == wire::ErrorKind::BadRequest => {
                    chunk.iter().try_for_each(|key| self.delete(key))?;
                }
                other => return Err(unexpected(other)),
            }
        }
        Ok(())
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
    fn discard(&self, keys: Vec<String>) {
        self.as_ref().discard(keys);
    }
    fn delete_many(&self, keys: &[String]) -> Result<(), StoreError> {
        self.as_ref().delete_many(keys)
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::Arc;

    /// Discarded keys are deleted by the janitor's thread, through its own store; a put in
    /// between is never held up by them.
    #[test]
    fn the_janitor_deletes_discarded_keys_on_its_own_thread() {
        let store = Arc::new(MemoryStore::default());
        let janitor = Janitor::new(store.clone(), store.clone());
        for k in ["a/1", "a/2", "a/3"] {
            janitor.put(k, b"v").unwrap();
        }
        janitor.discard(vec!["a/1".into(), "a/2".into()]);
        janitor.discard(Vec::new());
        // Deleted within the janitor's linger and a write (bounded wait, not a timing check).
        for _ in 0..500 {
            if store.list("a/").unwrap() == ["a/3"] {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("still there: {:?}", store.list("a/").unwrap());
    }
}
