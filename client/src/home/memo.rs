//! What a home has already read and decoded, kept while its files stay as they were.
//!
//! A signature needs the device key, the wallet's public facts and this device's share; reading
//! and decoding them (a PEM parse and a P-256 public key, a JSON public key package, frost's
//! share) costs more than a round trip to the cosigner. A [`Memo`] keeps each decoded value with
//! the [`Stamp`]s of the files it came from and hands it out again only while every file still
//! has the same identity, size, modification and change time. Every write in a home is a new file
//! renamed over the old one (`write_private`), so a write always changes the inode; an edit in
//! place changes the size or the modification time. The files are re-checked (one `stat` each)
//! on every use, so another process writing the home is seen at once.
//!
//! Secrets kept here (the device key, the share) zeroize themselves when dropped (`p256`'s
//! `SigningKey`, frost's `KeyPackage`), as they would after a read without the memo.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::store::WalletStore;

/// A record's identity and version, as its store reports them ([`WalletStore::version`]).
type Stamp = Vec<u8>;

/// One memoized value and the stamps of the records it was decoded from.
struct Entry {
    stamps: Vec<Stamp>,
    value: Arc<dyn Any + Send + Sync>,
}

/// Decoded values by the records they came from (shared by the clones of a home).
#[derive(Clone, Default)]
pub(crate) struct Memo(Arc<Mutex<HashMap<Vec<String>, Entry>>>);

impl std::fmt::Debug for Memo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0.lock().map(|m| m.len()).unwrap_or(0);
        write!(f, "Memo({n} kept)")
    }
}

impl Memo {
    /// The value decoded from the records `names` of `store`: the kept one while every record
    /// is unchanged, else `load()`'s (kept for next time when the records did not change while
    /// it ran). A store that gives no versions has nothing kept.
    pub(crate) fn get<T, E>(
        &self,
        store: &dyn WalletStore,
        names: &[String],
        load: impl FnOnce() -> Result<T, E>,
    ) -> Result<T, E>
    where
        T: Clone + Send + Sync + 'static,
    {
        let before = stamps(store, names);
        if let Some(stamps) = &before
            && let Some(value) = self.kept::<T>(names, stamps)
        {
            return Ok(value);
        }
        let value = load()?;
        // Kept only if nothing changed while it was read: a value half from an old record and
        // half from a new one is never handed out twice.
        if let Some(before) = before
            && stamps(store, names).as_ref() == Some(&before)
            && let Ok(mut map) = self.0.lock()
        {
            let value: Arc<dyn Any + Send + Sync> = Arc::new(value.clone());
            let stamps = before;
            map.insert(names.to_vec(), Entry { stamps, value });
        }
        Ok(value)
    }

    fn kept<T: Clone + 'static>(&self, names: &[String], stamps: &[Stamp]) -> Option<T> {
        let map = self.0.lock().ok()?;
        let entry = map.get(names)?;
        if entry.stamps != stamps {
            return None;
        }
        entry.value.downcast_ref::<T>().cloned()
    }
}

/// The stamps of all `names`, or `None` if one cannot be had.
fn stamps(store: &dyn WalletStore, names: &[String]) -> Option<Vec<Stamp>> {
    names.iter().map(|n| store.version(n)).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::store::DirStore;
    use std::cell::Cell;
    use std::path::PathBuf;

    fn read(memo: &Memo, store: &DirStore, loads: &Cell<u32>) -> String {
        memo.get(store, &["wallets/f".to_owned()], || {
            loads.set(loads.get() + 1);
            std::fs::read_to_string(store.dir().join("wallets/f"))
        })
        .unwrap()
    }

    /// A home directory with the record `wallets/f` holding "one", and an empty memo.
    fn fixture() -> (tempfile::TempDir, DirStore, PathBuf, Memo, Cell<u32>) {
        let dir = tempfile::tempdir().unwrap();
        let store = DirStore::open(dir.path()).unwrap();
        let path = dir.path().join("wallets/f");
        std::fs::write(&path, "one").unwrap();
        (dir, store, path, Memo::default(), Cell::new(0))
    }

    #[test]
    fn a_value_is_decoded_once_while_its_file_is_unchanged() {
        let (_dir, store, _path, memo, loads) = fixture();
        assert_eq!(read(&memo, &store, &loads), "one");
        assert_eq!(read(&memo.clone(), &store, &loads), "one");
        assert_eq!(loads.get(), 1);
    }

    #[test]
    fn a_file_replaced_or_edited_is_read_again() {
        let (dir, store, path, memo, loads) = fixture();
        read(&memo, &store, &loads);
        // Replaced by rename, as every write of a home is: a new inode, same size.
        let tmp = dir.path().join("f.tmp");
        std::fs::write(&tmp, "two").unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        assert_eq!(read(&memo, &store, &loads), "two");
        // Edited in place to another length.
        std::fs::write(&path, "three").unwrap();
        assert_eq!(read(&memo, &store, &loads), "three");
        assert_eq!(loads.get(), 3);
    }

    #[test]
    fn a_missing_file_is_never_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirStore::open(dir.path()).unwrap();
        let names = ["wallets/absent".to_owned()];
        let memo = Memo::default();
        let got: Result<u8, ()> = memo.get(&store, &names, || Err(()));
        assert!(got.is_err());
        let got: Result<u8, ()> = memo.get(&store, &names, || Ok(1));
        assert_eq!(got, Ok(1));
        assert_eq!(format!("{memo:?}"), "Memo(0 kept)");
    }
}
