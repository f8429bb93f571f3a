//! The blob store: sealed blobs and public data the enclave keeps with the parent.
//!
//! The store is untrusted storage by design: the enclave seals what is secret and checks whatever
//! it reads back (AEAD-bound blobs, epochs against the client's). The store's own duties are
//! durability and refusing input that the protocol does not allow (bad keys, oversized values),
//! so a confused or hostile peer cannot grow it without bound.
//!
//! [`SqliteStore`] keeps everything in one table,
//! `blobs(key TEXT PRIMARY KEY, value BLOB NOT NULL, updated_at INTEGER NOT NULL)`, in WAL mode
//! with `synchronous = FULL` (a write the enclave was told is done survives a power cut). The file
//! is marked as a cosigner store (`PRAGMA application_id`) and carries its schema version in
//! `PRAGMA user_version`; a file of another application or a newer schema is refused, not
//! migrated blindly.
//!
//! [`crate::pg::PgStore`] keeps the same table in PostgreSQL (`database = "postgres://…"`, see
//! [`database`]); [`open_for`] opens the one a configuration names, with its mailbox.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cosigner_protocol::frame::MAX_FRAME_LEN;
use cosigner_protocol::wire::valid_store_key;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use crate::error::{ParentError, Result};
use crate::mailbox::MailboxStore;
use crate::pg::{PgDatabase, PgStore};

pub mod database;

use database::Database;

/// Largest value stored. A frame's worth less 1 KiB for the key and the message envelope, so any
/// value stored can be sent back in one `StoreResponse::Value` frame.
pub const MAX_VALUE_LEN: usize = MAX_FRAME_LEN - 1024;
/// Schema version this build writes and reads (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = 1;
/// WAL pages after which a commit checkpoints (`PRAGMA wal_autocheckpoint`; SQLite's default is
/// 1000). Once a checkpoint has copied every frame back, the next writer starts the WAL over from
/// its beginning (SQLite's "WAL reset", <https://www.sqlite.org/wal.html#ckpt>), so a commit's
/// frames overwrite blocks the file already has: its fsync then flushes data only. A commit that
/// appends past the file's end also makes the file system commit its journal for the new size,
/// which on ext4 doubles the cost of every audit entry's fsync (0.14 against 0.27 ms measured on
/// the bench VM). A 1 MiB WAL reaches that steady state within a few hundred writes of a start
/// (SQLite deletes the WAL when its last connection closes) instead of after 4 MiB.
const WAL_CHECKPOINT_PAGES: i64 = 256;

/// `PRAGMA application_id` of a cosigner parent store: `"cosp"` in ASCII.
pub const APPLICATION_ID: i64 = 0x636f_7370;
/// How long a write waits for another connection's lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Key-value storage of blobs. Keys: [`valid_store_key`]; values: at most [`MAX_VALUE_LEN`].
pub trait Store: Send + Sync {
    /// Stores `value` under `key`, replacing any previous value; durable when it returns.
    fn put(&self, key: &str, value: &[u8]) -> Result<()>;
    /// Stores every pair of `entries`, all or none, durable together when it returns (one
    /// transaction: concurrent writers of the enclave share one sync).
    fn put_many(&self, entries: &[(String, Vec<u8>)]) -> Result<()>;
    /// The value under `key`, `None` if absent.
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>>;
    /// Removes `key`; an absent key is not an error.
    fn delete(&self, key: &str) -> Result<()>;
    /// Removes every key of `keys` (absent ones are not an error) in one write.
    fn delete_many(&self, keys: &[String]) -> Result<()>;
    /// Every key starting with `prefix` (the empty prefix lists all), in byte order.
    fn list_prefix(&self, prefix: &str) -> Result<Vec<String>>;
}

/// Refuses keys the protocol does not allow ([`valid_store_key`]).
pub fn check_key(key: &str) -> Result<()> {
    if valid_store_key(key) {
        Ok(())
    } else {
        Err(invalid_key(key))
    }
}

/// Refuses prefixes no valid key can start with: like keys, but the empty prefix is allowed.
pub fn check_prefix(prefix: &str) -> Result<()> {
    if prefix.is_empty() || valid_store_key(prefix) {
        Ok(())
    } else {
        Err(invalid_key(prefix))
    }
}

/// Refuses values over [`MAX_VALUE_LEN`].
pub fn check_value(value: &[u8]) -> Result<()> {
    if value.len() <= MAX_VALUE_LEN {
        Ok(())
    } else {
        Err(ParentError::ValueTooLarge {
            len: value.len(),
            max: MAX_VALUE_LEN,
        })
    }
}

/// Refuses a `put_many` of more pairs than the protocol allows, or with any bad key or value,
/// before anything is written.
pub(crate) fn check_put_many(entries: &[(String, Vec<u8>)]) -> Result<()> {
    if entries.len() > cosigner_protocol::wire::MAX_PUT_MANY {
        return Err(ParentError::BadRequest {
            reason: format!(
                "{} pairs in one write, at most {}",
                entries.len(),
                cosigner_protocol::wire::MAX_PUT_MANY
            ),
        });
    }
    for (key, value) in entries {
        check_key(key)?;
        check_value(value)?;
    }
    Ok(())
}

/// Refuses a `delete_many` of more keys than the protocol allows, or with any bad key, before
/// anything is removed.
pub(crate) fn check_delete_many(keys: &[String]) -> Result<()> {
    if keys.len() > cosigner_protocol::wire::MAX_PUT_MANY {
        return Err(ParentError::BadRequest {
            reason: format!(
                "{} keys in one delete, at most {}",
                keys.len(),
                cosigner_protocol::wire::MAX_PUT_MANY
            ),
        });
    }
    keys.iter().try_for_each(|key| check_key(key))
}

/// What [`open_for`] opens: the blob store, and the mailbox if the parent serves one.
pub type Opened = (
    std::sync::Arc<dyn Store>,
    Option<std::sync::Arc<MailboxStore>>,
);

/// The blob store of a parent's configuration, and its mailbox when `mailbox_listen` is set:
/// both in the one SQLite file, or both on one PostgreSQL pool (its schema created or migrated
/// first).
pub fn open_for(config: &crate::Config) -> Result<Opened> {
    use std::sync::Arc;
    let serve_mailbox = config.mailbox_listen.is_some();
    match &config.database {
        Database::Sqlite(path) => {
            // The blob store first: it creates the file the mailbox adds its tables to.
            let store = Arc::new(SqliteStore::open(path)?);
            let mailbox = match serve_mailbox {
                true => Some(Arc::new(MailboxStore::open_with(path, &config.mailbox)?)),
                false => None,
            };
            Ok((store, mailbox))
        }
        Database::Postgres(pg) => {
            let db = Arc::new(PgDatabase::connect(pg)?);
            let mailbox = match serve_mailbox {
                true => Some(Arc::new(MailboxStore::open_postgres(
                    Arc::clone(&db),
                    &config.mailbox,
                )?)),
                false => None,
            };
            Ok((Arc::new(PgStore::new(db)), mailbox))
        }
    }
}

fn invalid_key(key: &str) -> ParentError {
    ParentError::InvalidKey {
        preview: key.chars().take(64).collect(),
        len: key.len(),
    }
}

/// [`Store`] in a SQLite file. One connection behind a mutex: the enclave's store traffic is a
/// few small writes per ceremony, and SQLite serialises writers anyway.
#[derive(Debug)]
pub struct SqliteStore {
    conn: Mutex<Connection>,
    path: PathBuf,
}

impl SqliteStore {
    /// Opens the store at `path`, creating the file (mode 0600) and the schema if it does not
    /// exist. A file of another application or of a schema version this build does not know is
    /// [`ParentError::Schema`].
    pub fn open(path: &Path) -> Result<SqliteStore> {
        // Create the file ourselves so that it is private from its first byte; SQLite gives the
        // -wal and -shm files the same permissions.
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(|e| ParentError::io(format!("opening database {}", path.display()), &e))?;
        let (conn, Marks { app, version }) = open_database(path, OpenFlags::default(), "open")?;
        let schema = |reason: String| schema_error(path, reason);
        let tables: i64 = conn
            .query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))
            .map_err(|e| ParentError::db("read schema", &e))?;
        match (app, version) {
            (0, 0) if tables == 0 => {}
            (APPLICATION_ID, SCHEMA_VERSION) => {}
            (APPLICATION_ID, other) if other > SCHEMA_VERSION => {
                return Err(ParentError::SchemaTooNew {
                    database: path.display().to_string(),
                    found: other,
                    supported: SCHEMA_VERSION,
                });
            }
            (APPLICATION_ID, other) => {
                return Err(schema(format!(
                    "schema version {other}; this build reads version {SCHEMA_VERSION}"
                )));
            }
            _ => {
                return Err(schema(format!(
                    "not a cosigner parent store (application_id {app:#x}, user_version \
                     {version}, {tables} schema objects)"
                )));
            }
        }
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
            .map_err(|e| ParentError::db("set journal_mode", &e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(schema(format!(
                "SQLite refused WAL mode (journal_mode is {mode})"
            )));
        }
        if app == 0 {
            conn.execute_batch(&format!(
                "BEGIN IMMEDIATE;
                 CREATE TABLE IF NOT EXISTS blobs (
                     key TEXT PRIMARY KEY NOT NULL,
                     value BLOB NOT NULL,
                     updated_at INTEGER NOT NULL
                 ) STRICT;
                 PRAGMA application_id = {APPLICATION_ID};
                 PRAGMA user_version = {SCHEMA_VERSION};
                 COMMIT;"
            ))
            .map_err(|e| ParentError::db("create schema", &e))?;
        }
        Ok(SqliteStore {
            conn: Mutex::new(conn),
            path: path.to_path_buf(),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave a half-done write: every write is one
        // statement or one transaction (rolled back when dropped), atomic in SQLite.
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A database's marks: whose file it is, and of which schema.
pub(crate) struct Marks {
    /// `PRAGMA application_id` ([`APPLICATION_ID`] once the blob store made it; 0 when new).
    pub app: i64,
    /// `PRAGMA user_version` ([`SCHEMA_VERSION`]).
    pub version: i64,
}

/// Opens a connection to the parent's database as every one of them is (the blob store's and the
/// mailbox's): a busy timeout, since both write the one file; `synchronous = FULL`, so that a
/// write is on disk before it is acknowledged (in WAL mode, NORMAL could lose the last commits at
/// a power cut); and its marks, read first, so that a file that is not SQLite fails here as
/// [`ParentError::Schema`].
pub(crate) fn open_database(
    path: &Path,
    flags: OpenFlags,
    operation: &'static str,
) -> Result<(Connection, Marks)> {
    let conn =
        Connection::open_with_flags(path, flags).map_err(|e| ParentError::db(operation, &e))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(|e| ParentError::db("busy_timeout", &e))?;
    let app: i64 = conn
        .pragma_query_value(None, "application_id", |r| r.get(0))
        .map_err(|e| schema_error(path, format!("not a SQLite database ({e})")))?;
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(|e| ParentError::db("read user_version", &e))?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(|e| ParentError::db("set synchronous", &e))?;
    conn.pragma_update(None, "wal_autocheckpoint", WAL_CHECKPOINT_PAGES)
        .map_err(|e| ParentError::db("set wal_autocheckpoint", &e))?;
    Ok((conn, Marks { app, version }))
}

/// [`ParentError::Schema`] for the database at `path`.
pub(crate) fn schema_error(path: &Path, reason: String) -> ParentError {
    ParentError::Schema {
        path: path.to_path_buf(),
        reason,
    }
}

/// Inserts or replaces one blob on `conn` (inside the caller's transaction, if any).
fn upsert(conn: &Connection, key: &str, value: &[u8]) -> Result<()> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    conn.prepare_cached(
        "INSERT INTO blobs (key, value, updated_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value,
                                         updated_at = excluded.updated_at",
    )
    .and_then(|mut stmt| stmt.execute(params![key, value, now]))
    .map_err(|e| ParentError::db("put", &e))?;
    Ok(())
}

impl Store for SqliteStore {
    fn put(&self, key: &str, value: &[u8]) -> Result<()> {
        check_key(key)?;
        check_value(value)?;
        upsert(&self.conn(), key, value)
    }

    fn put_many(&self, entries: &[(String, Vec<u8>)]) -> Result<()> {
        check_put_many(entries)?;
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(|e| ParentError::db("put", &e))?;
        for (key, value) in entries {
            upsert(&tx, key, value)?;
        }
        tx.commit().map_err(|e| ParentError::db("put", &e))
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        check_key(key)?;
        self.conn()
            .prepare_cached("SELECT value FROM blobs WHERE key = ?1")
            .and_then(|mut stmt| stmt.query_row([key], |r| r.get(0)).optional())
            .map_err(|e| ParentError::db("get", &e))
    }

    fn delete(&self, key: &str) -> Result<()> {
        check_key(key)?;
        self.conn()
            .prepare_cached("DELETE FROM blobs WHERE key = ?1")
            .and_then(|mut stmt| stmt.execute([key]))
            .map_err(|e| ParentError::db("delete", &e))?;
        Ok(())
    }

    fn delete_many(&self, keys: &[String]) -> Result<()> {
        check_delete_many(keys)?;
        let mut conn = self.conn();
        let tx = conn
            .transaction()
            .map_err(|e| ParentError::db("delete", &e))?;
        for key in keys {
            tx.prepare_cached("DELETE FROM blobs WHERE key = ?1")
                .and_then(|mut stmt| stmt.execute([key]))
                .map_err(|e| ParentError::db("delete", &e))?;
        }
        tx.commit().map_err(|e| ParentError::db("delete", &e))
    }

    fn list_prefix(&self, prefix: &str) -> Result<Vec<String>> {
        check_prefix(prefix)?;
        // Keys are printable ASCII (0x21..=0x7e), so the keys starting with `prefix` are exactly
        // those in [prefix, prefix + "\x7f") under SQLite's binary collation: a range scan of the
        // primary key, no LIKE and no escaping.
        let upper = format!("{prefix}\u{7f}");
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached("SELECT key FROM blobs WHERE key >= ?1 AND key < ?2 ORDER BY key")
            .map_err(|e| ParentError::db("list", &e))?;
        let keys = stmt
            .query_map([prefix, upper.as_str()], |r| r.get::<_, String>(0))
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<String>>>())
            .map_err(|e| ParentError::db("list", &e))?;
        Ok(keys)
    }
}

/// Runs `sql` on the SQLite database at `path` (made if missing) through a connection of its
/// own: the tests' other applications' databases and schema changes.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) fn execute_sql(path: &Path, sql: &str) {
    Connection::open(path).unwrap().execute_batch(sql).unwrap();
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;
    use cosigner_tests::postgres::{Backend, database_for};

    /// A store on `backend` and what keeps its database; `None`: skip (PostgreSQL missing).
    fn store(backend: Backend) -> Option<(Box<dyn std::any::Any>, Box<dyn Store>)> {
        let (keep, database) = database_for(backend)?;
        let store: Box<dyn Store> = match backend {
            Backend::Sqlite => Box::new(SqliteStore::open(Path::new(&database)).unwrap()),
            Backend::Postgres => {
                let pg = database::PostgresConfig::new(&database, None, 2).unwrap();
                Box::new(PgStore::open(&pg).unwrap())
            }
        };
        Some((keep, store))
    }

    cosigner_tests::on_both_engines!(
        prefix_range_matches_exactly_the_keys_with_the_prefix,
        put_many_stores_all_or_nothing,
    );

    fn prefix_range_matches_exactly_the_keys_with_the_prefix(backend: Backend) {
        let Some((_db, store)) = store(backend) else {
            return;
        };
        for key in ["a", "a/", "a/b", "a/~", "a0", "b", "a!", "ab"] {
            store.put(key, key.as_bytes()).unwrap();
        }
        assert_eq!(store.list_prefix("a/").unwrap(), ["a/", "a/b", "a/~"]);
        assert_eq!(
            store.list_prefix("a").unwrap(),
            ["a", "a!", "a/", "a/b", "a/~", "a0", "ab"]
        );
        assert_eq!(store.list_prefix("").unwrap().len(), 8);
        assert!(store.list_prefix("c").unwrap().is_empty());
        assert!(store.list_prefix("a b").is_err());
    }

    fn put_many_stores_all_or_nothing(backend: Backend) {
        let Some((_db, store)) = store(backend) else {
            return;
        };
        let pair = |k: &str| (k.to_owned(), k.as_bytes().to_vec());
        store.put_many(&[pair("a/1"), pair("a/2")]).unwrap();
        assert_eq!(store.list_prefix("a/").unwrap(), ["a/1", "a/2"]);
        // One bad key, or too many pairs: nothing of the write is stored.
        assert!(store.put_many(&[pair("b/1"), pair("b 2")]).is_err());
        let many: Vec<_> = (0..=cosigner_protocol::wire::MAX_PUT_MANY)
            .map(|i| pair(&format!("c/{i}")))
            .collect();
        assert!(matches!(
            store.put_many(&many),
            Err(ParentError::BadRequest { .. })
        ));
        assert!(store.list_prefix("b").unwrap().is_empty());
        assert!(store.list_prefix("c").unwrap().is_empty());
    }

    #[test]
    fn the_wal_is_checkpointed_and_reused_instead_of_growing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal.db");
        let store = SqliteStore::open(&path).unwrap();
        let wal = path.with_extension("db-wal");
        let mut largest = 0;
        // Several times the checkpoint's worth of pages (each write adds at least a page).
        for i in 0..(4 * WAL_CHECKPOINT_PAGES) {
            store.put(&format!("audit/{i:08}"), &[7; 600]).unwrap();
            largest = largest.max(std::fs::metadata(&wal).unwrap().len());
        }
        // A WAL frame is a 4 KiB page and a 24-byte header; one write adds a few frames past
        // the checkpoint's threshold before the checkpoint runs and the WAL starts over.
        let bound = u64::try_from(WAL_CHECKPOINT_PAGES + 16).unwrap() * (4096 + 24) + 32;
        assert!(largest <= bound, "the WAL grew to {largest} bytes");
    }

    #[test]
    fn schema_is_marked_and_foreign_or_newer_databases_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ours = dir.path().join("ours.db");
        drop(SqliteStore::open(&ours).unwrap());
        let conn = Connection::open(&ours).unwrap();
        let pragma =
            |name: &str| -> i64 { conn.pragma_query_value(None, name, |r| r.get(0)).unwrap() };
        assert_eq!(pragma("application_id"), APPLICATION_ID);
        assert_eq!(pragma("user_version"), SCHEMA_VERSION);
        let mode: String = conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");

        drop(conn);
        let refused = |path: &Path, why: &str| {
            let err = SqliteStore::open(path).unwrap_err();
            assert!(
                matches!(&err, ParentError::Schema { reason, .. } if reason.contains(why)),
                "{err:?}"
            );
        };

        // A later schema version: refused, not downgraded.
        execute_sql(
            &ours,
            &format!("PRAGMA user_version = {};", SCHEMA_VERSION + 1),
        );
        let err = SqliteStore::open(&ours).unwrap_err();
        assert!(
            matches!(
                err,
                ParentError::SchemaTooNew {
                    found: 2,
                    supported: 1,
                    ..
                }
            ),
            "{err:?}"
        );

        // Another application's database, with tables but no marks: refused and left as it was.
        let foreign = dir.path().join("foreign.db");
        execute_sql(
            &foreign,
            "CREATE TABLE notes (body TEXT); INSERT INTO notes VALUES ('keep');",
        );
        refused(&foreign, "not a cosigner parent store");
        let conn = Connection::open(&foreign).unwrap();
        let tables: i64 = conn
            .query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))
            .unwrap();
        assert_eq!(tables, 1);
    }
}
