//! PostgreSQL as the parent's database: the blob store ([`PgStore`]) and the mailbox's tables
//! (`crate::pg_mailbox`), for operators who keep state in a replicated engine they already run
//! (`database = "postgres://…"`, [`crate::store::database`]). SQLite stays the embedded default.
//!
//! The parent trusts the database for nothing secret (docs/deployment.md, "PostgreSQL"): the
//! blobs are sealed by the enclave and their freshness is held by its anchors, as with SQLite.
//! What it asks of the engine is SQLite's: a write is durable when it returns (the server's
//! `synchronous_commit`, raised to `on` for the parent's sessions if the server has it `off`),
//! `put_many` is one transaction, keys list in byte order (`COLLATE "C"`).
//!
//! Schema: created and migrated by the parent at start, in one transaction under an advisory lock
//! (two parents starting together do it once). `cosigner_parent_schema` holds the version; a
//! database with a newer one is refused ([`ParentError::SchemaTooNew`]), as is a database with
//! another application's tables and no such table ([`ParentError::ForeignDatabase`]).
//!
//! Connections: a small pool ([`DEFAULT_POOL_SIZE`](crate::store::database::DEFAULT_POOL_SIZE)
//! by default) shared by the store and mailbox threads; a request whose connection the server
//! closed is done again once on a new one (`PgDatabase::with` says why that is sound). A caller
//! waits at most [`POOL_WAIT`] for a free connection.

use std::fmt;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use postgres::{Client, IsolationLevel, NoTls, Transaction};

use crate::error::{ParentError, Result};
use crate::store::database::PostgresConfig;
use crate::store::{Store, check_key, check_prefix, check_value};

/// Schema version this build writes and reads (`cosigner_parent_schema.version`).
pub const SCHEMA_VERSION: i64 = 1;
/// How long a caller waits for a free pooled connection before failing.
pub const POOL_WAIT: Duration = Duration::from_secs(30);
/// How long opening a connection may take (when the URL sets no `connect_timeout`).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a statement waits for a lock (the mailbox's write lock, a row) before failing, so
/// that a stuck session cannot hold the parent's threads for ever.
const LOCK_TIMEOUT: &str = "30s";
/// How long a connection that failed a request may take to show it still answers.
const VALID_WAIT: Duration = Duration::from_secs(5);
/// Advisory lock key of schema creation and migration ("cosp" and 1).
const SCHEMA_LOCK: i64 = 0x636f_7370_0001;

/// The migrations, in order: `MIGRATIONS[i]` takes the schema from version `i` to `i + 1`.
/// Each runs in the migration's transaction; a step is never edited once released, only added.
const MIGRATIONS: &[&str] = &[
    // 1: the blob store and the mailbox, as SQLite has them (crate::store, crate::mailbox).
    r#"
    CREATE TABLE blobs (
        key TEXT COLLATE "C" PRIMARY KEY,
        value BYTEA NOT NULL,
        updated_at BIGINT NOT NULL
    );
    CREATE TABLE mailbox_topics (
        topic BYTEA PRIMARY KEY,
        last_seq BIGINT NOT NULL,
        bytes BIGINT NOT NULL,
        created_at BIGINT NOT NULL
    );
    CREATE TABLE mailbox_messages (
        topic BYTEA NOT NULL,
        seq BIGINT NOT NULL,
        id BYTEA NOT NULL,
        sender BYTEA NOT NULL,
        envelope BYTEA NOT NULL,
        posted_at BIGINT NOT NULL,
        PRIMARY KEY (topic, seq),
        UNIQUE (topic, id)
    );
    CREATE INDEX mailbox_messages_posted_at ON mailbox_messages (posted_at);
    CREATE TABLE mailbox_members (
        topic BYTEA NOT NULL,
        member BYTEA NOT NULL,
        PRIMARY KEY (topic, member)
    );
    CREATE TABLE mailbox_senders (
        sender BYTEA PRIMARY KEY,
        window_start BIGINT NOT NULL,
        messages BIGINT NOT NULL,
        bytes BIGINT NOT NULL,
        topics BIGINT NOT NULL
    );
    "#,
];

/// A PostgreSQL database the parent uses: its pool of connections and its URL (for messages).
pub struct PgDatabase {
    url: String,
    config: postgres::Config,
    size: usize,
    pool: Mutex<Pool>,
    freed: Condvar,
}

/// The pool's state: idle connections, and how many are open in all (idle and in use).
struct Pool {
    idle: Vec<Client>,
    open: usize,
}

impl fmt::Debug for PgDatabase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgDatabase")
            .field("url", &self.url)
            .field("pool_size", &self.size)
            .finish_non_exhaustive()
    }
}

impl PgDatabase {
    /// Connects to the database of `config` (reading its `password_file`), then creates or
    /// migrates its schema. An unreachable server, or one refusing the parent, is
    /// [`ParentError::DatabaseConnect`], naming the URL without its password.
    pub fn connect(config: &PostgresConfig) -> Result<PgDatabase> {
        let mut client_config = config.client_config()?;
        if client_config.get_connect_timeout().is_none() {
            client_config.connect_timeout(CONNECT_TIMEOUT);
        }
        if client_config.get_application_name().is_none() {
            client_config.application_name("cosigner-parent");
        }
        let db = PgDatabase {
            url: config.url_redacted(),
            config: client_config,
            size: config.pool_size,
            pool: Mutex::new(Pool {
                idle: Vec::new(),
                open: 0,
            }),
            freed: Condvar::new(),
        };
        db.with(|client| migrate(client, &db.url))?;
        Ok(db)
    }

    /// The URL, without its password.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The schema version the database carries.
    pub fn schema_version(&self) -> Result<i64> {
        self.with(|client| {
            client
                .query_one("SELECT version FROM cosigner_parent_schema", &[])
                .and_then(|row| row.try_get(0))
                .map_err(|e| ParentError::pg("read schema version", &e))
        })
    }

    /// Runs `f` on a pooled connection: an idle one, a new one while fewer than the pool's size
    /// are open, else the first one freed within [`POOL_WAIT`]. The connection goes back to the
    /// pool afterwards unless it broke (a transaction `f` left is rolled back when dropped).
    ///
    /// If `f` fails because the server closed the connection (a restart, a failover, a session
    /// terminated by an administrator), `f` runs once more on a new connection, and the idle
    /// connections are dropped too (they were most likely to the same server). This is sound
    /// because everything the parent does here may be done twice: a put, `put_many` or delete
    /// writes the same rows again, a read reads again, a mailbox post that did commit before the
    /// connection broke is found by its envelope's id and answered with its number (charging no
    /// quota twice), a sweep or a migration finds its work done.
    pub(crate) fn with<T>(&self, mut f: impl FnMut(&mut Client) -> Result<T>) -> Result<T> {
        let mut checkout = Checkout {
            db: self,
            client: Some(self.checkout()?),
        };
        let result = checkout.run(&mut f);
        // Only a database error can mean a lost connection (a refusal of the request cannot);
        // the server may have said why before closing (SQLSTATE 57P01, admin shutdown), so the
        // connection is asked whether it still answers.
        let lost = matches!(result, Err(ParentError::Database { .. }))
            && checkout
                .client
                .as_mut()
                .is_some_and(|c| c.is_closed() || c.is_valid(VALID_WAIT).is_err());
        match result {
            Err(_) if lost => {
                drop(checkout);
                self.drop_idle();
                let mut again = Checkout {
                    db: self,
                    client: Some(self.checkout()?),
                };
                again.run(&mut f)
            }
            other => other,
        }
    }

    /// Closes every idle connection.
    fn drop_idle(&self) {
        let idle = {
            let mut pool = self.lock();
            let idle = std::mem::take(&mut pool.idle);
            pool.open = pool.open.saturating_sub(idle.len());
            idle
        };
        drop(idle);
        self.freed.notify_all();
    }

    fn lock(&self) -> MutexGuard<'_, Pool> {
        // The pool's state is a list and a count, each updated in one step: never half done.
        self.pool.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn checkout(&self) -> Result<Client> {
        let deadline = Instant::now() + POOL_WAIT;
        let mut pool = self.lock();
        loop {
            if let Some(client) = pool.idle.pop() {
                if client.is_closed() {
                    pool.open = pool.open.saturating_sub(1);
                    continue;
                }
                return Ok(client);
            }
            if pool.open < self.size {
                pool.open += 1;
                drop(pool);
                return self.open_connection().inspect_err(|_| {
                    let mut pool = self.lock();
                    pool.open = pool.open.saturating_sub(1);
                    self.freed.notify_one();
                });
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(ParentError::Database {
                    operation: "pool",
                    reason: format!(
                        "all {} connections to {} stayed busy for {} s (pool_size)",
                        self.size,
                        self.url,
                        POOL_WAIT.as_secs()
                    ),
                });
            }
            pool = self
                .freed
                .wait_timeout(pool, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    fn give_back(&self, client: Option<Client>) {
        let mut pool = self.lock();
        match client {
            Some(c) if !c.is_closed() => pool.idle.push(c),
            _ => pool.open = pool.open.saturating_sub(1),
        }
        self.freed.notify_one();
    }

    /// Opens one connection and sets its session: durable commits, bounded lock waits.
    fn open_connection(&self) -> Result<Client> {
        let mut client = self.config.connect(NoTls).map_err(|e| {
            let reason = match ParentError::pg("connect", &e) {
                ParentError::Database { reason, .. } => reason,
                other => other.to_string(),
            };
            ParentError::DatabaseConnect {
                url: self.url.clone(),
                reason,
            }
        })?;
        let db = |e: postgres::Error| ParentError::pg("set up session", &e);
        // A write the enclave is told is done must survive a crash of the server, as with
        // SQLite's synchronous = FULL: `off` (acknowledging before the WAL is flushed) is raised
        // to `on` for this session; `local`, `remote_write`, `remote_apply` are kept.
        let sync: String = client
            .query_one("SHOW synchronous_commit", &[])
            .and_then(|r| r.try_get(0))
            .map_err(db)?;
        if sync == "off" {
            client
                .batch_execute("SET synchronous_commit = on")
                .map_err(db)?;
        }
        client
            .batch_execute(&format!("SET lock_timeout = '{LOCK_TIMEOUT}'"))
            .map_err(db)?;
        Ok(client)
    }
}

/// A connection taken from the pool, given back when dropped (also when `f` panics).
struct Checkout<'a> {
    db: &'a PgDatabase,
    client: Option<Client>,
}

impl Checkout<'_> {
    fn run<T>(&mut self, f: &mut impl FnMut(&mut Client) -> Result<T>) -> Result<T> {
        match self.client.as_mut() {
            Some(client) => f(client),
            None => Err(ParentError::Database {
                operation: "pool",
                reason: "connection missing from its checkout".into(),
            }),
        }
    }
}

impl Drop for Checkout<'_> {
    fn drop(&mut self) {
        self.db.give_back(self.client.take());
    }
}

/// Creates or migrates the schema, in one transaction under [`SCHEMA_LOCK`].
fn migrate(client: &mut Client, url: &str) -> Result<()> {
    let db = |e: postgres::Error| ParentError::pg("migrate schema", &e);
    let foreign = |reason: String| ParentError::ForeignDatabase {
        url: url.to_owned(),
        reason,
    };
    let mut tx = client.transaction().map_err(db)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
        .map_err(db)?;
    let marked: bool = tx
        .query_one(
            "SELECT to_regclass('cosigner_parent_schema') IS NOT NULL",
            &[],
        )
        .and_then(|r| r.try_get(0))
        .map_err(db)?;
    if !marked {
        // A database of its own, or an empty one: the parent does not settle beside another
        // application's tables (as it refuses a SQLite file of another application).
        let others: i64 = tx
            .query_one(
                "SELECT count(*) FROM pg_catalog.pg_class c
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p', 'v', 'm', 'f')",
                &[],
            )
            .and_then(|r| r.try_get(0))
            .map_err(db)?;
        if others > 0 {
            return Err(foreign(format!(
                "{others} tables or views of another application and no cosigner_parent_schema: \
                 give the parent a database (or schema) of its own"
            )));
        }
        tx.batch_execute(
            "CREATE TABLE cosigner_parent_schema (
                 only_row BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (only_row),
                 version BIGINT NOT NULL
             );
             INSERT INTO cosigner_parent_schema (version) VALUES (0);",
        )
        .map_err(db)?;
    }
    let rows = tx
        .query("SELECT version FROM cosigner_parent_schema", &[])
        .map_err(db)?;
    let version: i64 = match rows.as_slice() {
        [row] => row.try_get(0).map_err(db)?,
        _ => {
            return Err(foreign(format!(
                "cosigner_parent_schema holds {} rows, expected one",
                rows.len()
            )));
        }
    };
    let latest = i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX);
    if version > latest {
        return Err(ParentError::SchemaTooNew {
            database: url.to_owned(),
            found: version,
            supported: latest,
        });
    }
    let done = usize::try_from(version)
        .map_err(|_| foreign(format!("schema version {version} is negative")))?;
    for (step, sql) in MIGRATIONS.iter().enumerate().skip(done) {
        tx.batch_execute(sql).map_err(db)?;
        let now = i64::try_from(step + 1).unwrap_or(i64::MAX);
        tx.execute("UPDATE cosigner_parent_schema SET version = $1", &[&now])
            .map_err(db)?;
    }
    tx.commit().map_err(db)
}

/// Starts a READ COMMITTED transaction whatever the server's default isolation: statements that
/// follow a lock (an advisory lock, an upsert's row lock) then read what was committed before
/// the lock was granted, where REPEATABLE READ or SERIALIZABLE would read a snapshot taken
/// before waiting for it.
pub(crate) fn read_committed<'a>(
    client: &'a mut Client,
    operation: &'static str,
) -> Result<Transaction<'a>> {
    client
        .build_transaction()
        .isolation_level(IsolationLevel::ReadCommitted)
        .start()
        .map_err(|e| ParentError::pg(operation, &e))
}

/// A value the database keeps as BIGINT: within `i64`, refused otherwise (no such count or
/// sequence number exists; this only guards the conversion).
pub(crate) fn to_i64(value: u64) -> Result<i64> {
    i64::try_from(value).map_err(|_| ParentError::Database {
        operation: "encode",
        reason: format!("{value} exceeds BIGINT"),
    })
}

/// A BIGINT the parent wrote as a count or sequence number: never negative.
pub(crate) fn to_u64(value: i64) -> Result<u64> {
    u64::try_from(value).map_err(|_| ParentError::Database {
        operation: "decode",
        reason: format!("negative count or sequence number {value} in the database"),
    })
}

/// [`Store`] in PostgreSQL: the `blobs` table, on a [`PgDatabase`]'s pool.
#[derive(Debug, Clone)]
pub struct PgStore {
    db: Arc<PgDatabase>,
}

impl PgStore {
    /// The blob store of `db` (its schema made by [`PgDatabase::connect`]).
    pub fn new(db: Arc<PgDatabase>) -> PgStore {
        PgStore { db }
    }

    /// Connects to `config`'s database (creating or migrating its schema) and returns its store.
    pub fn open(config: &PostgresConfig) -> Result<PgStore> {
        Ok(Self::new(Arc::new(PgDatabase::connect(config)?)))
    }

    /// The database.
    pub fn database(&self) -> &Arc<PgDatabase> {
        &self.db
    }
}

const UPSERT: &str = "INSERT INTO blobs (key, value, updated_at) VALUES ($1, $2, $3)
     ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = EXCLUDED.updated_at";

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

impl Store for PgStore {
    fn put(&self, key: &str, value: &[u8]) -> Result<()> {
        check_key(key)?;
        check_value(value)?;
        self.db.with(|client| {
            client
                .execute(UPSERT, &[&key, &value, &now_secs()])
                .map_err(|e| ParentError::pg("put", &e))?;
            Ok(())
        })
    }

    fn put_many(&self, entries: &[(String, Vec<u8>)]) -> Result<()> {
        crate::store::check_put_many(entries)?;
        // Rows are locked in key order, so that two concurrent writes of overlapping keys wait
        // for each other instead of deadlocking (the sort is stable: of two pairs with one key,
        // the later still wins, as in SQLite).
        let mut sorted: Vec<&(String, Vec<u8>)> = entries.iter().collect();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        let now = now_secs();
        self.db.with(|client| {
            let db = |e: postgres::Error| ParentError::pg("put", &e);
            let mut tx = read_committed(client, "put")?;
            let upsert = tx.prepare(UPSERT).map_err(db)?;
            for (key, value) in &sorted {
                tx.execute(&upsert, &[key, value, &now]).map_err(db)?;
            }
            tx.commit().map_err(db)
        })
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        check_key(key)?;
        self.db.with(|client| {
            client
                .query_opt("SELECT value FROM blobs WHERE key = $1", &[&key])
                .and_then(|row| row.map(|r| r.try_get(0)).transpose())
                .map_err(|e| ParentError::pg("get", &e))
        })
    }

    fn delete(&self, key: &str) -> Result<()> {
        check_key(key)?;
        self.db.with(|client| {
            client
                .execute("DELETE FROM blobs WHERE key = $1", &[&key])
                .map_err(|e| ParentError::pg("delete", &e))?;
            Ok(())
        })
    }

    fn delete_many(&self, keys: &[String]) -> Result<()> {
        crate::store::check_delete_many(keys)?;
        // In key order, as `put_many` locks its rows.
        let mut sorted: Vec<&String> = keys.iter().collect();
        sorted.sort();
        self.db.with(|client| {
            let db = |e: postgres::Error| ParentError::pg("delete", &e);
            let mut tx = read_committed(client, "delete")?;
            let delete = tx.prepare("DELETE FROM blobs WHERE key = $1").map_err(db)?;
            for key in &sorted {
                tx.execute(&delete, &[key]).map_err(db)?;
            }
            tx.commit().map_err(db)
        })
    }

    fn list_prefix(&self, prefix: &str) -> Result<Vec<String>> {
        check_prefix(prefix)?;
        // As in SQLite: keys are printable ASCII, so those starting with `prefix` are exactly
        // [prefix, prefix + "\x7f") under the column's "C" collation (byte order), a range scan
        // of the primary key.
        let upper = format!("{prefix}\u{7f}");
        self.db.with(|client| {
            client
                .query(
                    "SELECT key FROM blobs WHERE key >= $1 AND key < $2 ORDER BY key",
                    &[&prefix, &upper],
                )
                .and_then(|rows| rows.iter().map(|r| r.try_get(0)).collect())
                .map_err(|e| ParentError::pg("list", &e))
        })
    }
}
