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
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// A file's identity and version, as `stat` reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: i64,
    mtime_nsec: i64,
    /// Unlike the modification time, user space cannot set it back.
    ctime: i64,
    ctime_nsec: i64,
}

impl Stamp {
    /// The stamp of `path`, or `None` if it cannot be read (then nothing is memoized).
    fn of(path: &Path) -> Option<Self> {
        let m = std::fs::metadata(path).ok()?;
        Some(Self {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime: m.mtime(),
            mtime_nsec: m.mtime_nsec(),
            ctime: m.ctime(),
            ctime_nsec: m.ctime_nsec(),
        })
    }
}

/// One memoized value and the stamps of the files it was decoded from.
struct Entry {
    stamps: Vec<Stamp>,
    value: Arc<dyn Any + Send + Sync>,
}

/// Decoded values by the files they came from (shared by the clones of a home).
#[derive(Clone, Default)]
pub(crate) struct Memo(Arc<Mutex<HashMap<Vec<PathBuf>, Entry>>>);

impl std::fmt::Debug for Memo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0.lock().map(|m| m.len()).unwrap_or(0);
        write!(f, "Memo({n} kept)")
    }
}

impl Memo {
    /// The value decoded from `files`: the kept one while every file is unchanged, else
    /// `load()`'s (kept for next time when the files did not change while it ran).
    pub(crate) fn get<T, E>(
        &self,
        files: &[PathBuf],
        load: impl FnOnce() -> Result<T, E>,
    ) -> Result<T, E>
    where
        T: Clone + Send + Sync + 'static,
    {
        let before = stamps(files);
        if let Some(stamps) = &before
            && let Some(value) = self.kept::<T>(files, stamps)
        {
            return Ok(value);
        }
        let value = load()?;
        // Kept only if nothing changed while it was read: a value half from an old file and
        // half from a new one is never handed out twice.
        if let Some(before) = before
            && stamps(files).as_ref() == Some(&before)
            && let Ok(mut map) = self.0.lock()
        {
            let value: Arc<dyn Any + Send + Sync> = Arc::new(value.clone());
            let stamps = before;
            map.insert(files.to_vec(), Entry { stamps, value });
        }
        Ok(value)
    }

    fn kept<T: Clone + 'static>(&self, files: &[PathBuf], stamps: &[Stamp]) -> Option<T> {
        let map = self.0.lock().ok()?;
        let entry = map.get(files)?;
        if entry.stamps != stamps {
            return None;
        }
        entry.value.downcast_ref::<T>().cloned()
    }
}

/// The stamps of all `files`, or `None` if one cannot be read.
fn stamps(files: &[PathBuf]) -> Option<Vec<Stamp>> {
    files.iter().map(|p| Stamp::of(p)).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use std::cell::Cell;

    fn read(memo: &Memo, path: &Path, loads: &Cell<u32>) -> String {
        memo.get(&[path.to_path_buf()], || {
            loads.set(loads.get() + 1);
            std::fs::read_to_string(path)
        })
        .unwrap()
    }

    /// A directory with the file `f` holding "one", and an empty memo.
    fn fixture() -> (tempfile::TempDir, PathBuf, Memo, Cell<u32>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, "one").unwrap();
        (dir, path, Memo::default(), Cell::new(0))
    }

    #[test]
    fn a_value_is_decoded_once_while_its_file_is_unchanged() {
        let (_dir, path, memo, loads) = fixture();
        assert_eq!(read(&memo, &path, &loads), "one");
        assert_eq!(read(&memo.clone(), &path, &loads), "one");
        assert_eq!(loads.get(), 1);
    }

    #[test]
    fn a_file_replaced_or_edited_is_read_again() {
        let (dir, path, memo, loads) = fixture();
        read(&memo, &path, &loads);
        // Replaced by rename, as every write of a home is: a new inode, same size.
        let tmp = dir.path().join("f.tmp");
        std::fs::write(&tmp, "two").unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        assert_eq!(read(&memo, &path, &loads), "two");
        // Edited in place to another length.
        std::fs::write(&path, "three").unwrap();
        assert_eq!(read(&memo, &path, &loads), "three");
        assert_eq!(loads.get(), 3);
    }

    #[test]
    fn a_missing_file_is_never_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent");
        let memo = Memo::default();
        let got: Result<u8, ()> = memo.get(std::slice::from_ref(&path), || Err(()));
        assert!(got.is_err());
        let got: Result<u8, ()> = memo.get(&[path], || Ok(1));
        assert_eq!(got, Ok(1));
        assert_eq!(format!("{memo:?}"), "Memo(0 kept)");
    }
}
