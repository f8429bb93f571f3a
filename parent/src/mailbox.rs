//! The mailbox: signed envelopes that wallet members leave for each other, hosted by the parent.
//!
//! Members of a DAO wallet run their ceremonies asynchronously: each posts
//! [`Envelope`](cosigner_protocol::mailbox::Envelope)s to a topic and fetches the others'. The
//! parent is untrusted here as everywhere: envelopes are signed by their senders and readers
//! verify every one they fetch, so the mailbox can drop, delay, reorder or replay them but not
//! forge or alter one. Its own duties are durability, order (a sequence number per topic), keeping
//! a topic to its members, and refusing what would let anyone grow it without bound.
//!
//! * [`MailboxStore`]: tables in the parent's SQLite database (the blob store's file, WAL,
//!   `synchronous = FULL`): `mailbox_topics(topic, last_seq, bytes, created_at)`,
//!   `mailbox_messages(topic, seq, id, sender, envelope, posted_at)` with `(topic, id)` unique,
//!   `mailbox_members(topic, member)` and `mailbox_senders(sender, window_start, messages, bytes,
//!   topics)`. They are added beside `blobs` (`CREATE TABLE IF NOT EXISTS`); the schema version
//!   of the file does not change, and a build without the mailbox ignores them. With
//!   `database = "postgres://…"` the same tables are in PostgreSQL, made by the parent's schema
//!   migration (`crate::pg`). The rules below are written once over `MailboxRows`; the two
//!   engines differ only in their SQL and in how a write is serialised (`Engine`).
//! * Members only: the post that founds a topic names its members (the founder among them); then
//!   only a member's envelopes are stored there and only a member's signed read is answered (a
//!   [`ReadProof`] over this connection's challenge). A topic founded before topics had members
//!   (an older parent's) stays readable by anyone until it expires.
//! * Retention ([`MailboxConfig::retention`], a day by default): envelopes posted longer ago are
//!   deleted, and a topic with them once it holds none. The sweep runs when a request finds the
//!   last one more than [`SWEEP_INTERVAL`] old (and at open): a few indexed deletes, no thread.
//! * Per-sender quotas ([`SenderQuota`]): the principal is the envelope's signing key (a
//!   member's device key, or the enclave's identity key); each may store so many envelopes, so
//!   many bytes and found so many topics per window. A sender can spend only its own quota (an
//!   envelope's signature cannot be made without its key, and a replay of a stored one is a
//!   duplicate, which costs nothing). The global caps ([`MailboxLimits`]) stay as a last resort;
//!   the configuration is refused unless they are [`GLOBAL_HEADROOM`] times what one sender can
//!   hold within the retention.
//! * [`handle`]: one [`MailboxRequest`] in, one [`MailboxResponse`] out. A post is decoded, its
//!   signature verified and its topic compared with the request's before anything is stored;
//!   a post of an envelope already in the topic answers the existing sequence number. Caps:
//!   [`MAX_ENVELOPE`] bytes per envelope, [`MAX_MESSAGES_PER_TOPIC`], [`MAX_TOPICS`],
//!   [`MAX_TOTAL_BYTES`], [`MAX_PAGE`] items and a frame's worth of bytes per fetch.
//! * [`serve_mailbox`]: the frame loop on one connection, in TLS when the mailbox has a
//!   certificate ([`MailboxConfig::tls`]). A malformed frame or request is answered with one
//!   `Error(BadRequest)` and the connection is closed; a well-formed request that is refused is
//!   answered with an error and the connection stays open.
//! * [`MailboxListener`]: the TCP listener (`mailbox_listen` in the configuration); its
//!   connections time out after [`IDLE_TIMEOUT`] without a request.
//!
//! TLS protects the envelopes from the network, not from the parent: it ends here, and the
//! parent's operator can read every body (as the parent could before). Members pin the
//! certificate (its SHA-256, in the mailbox address `tls://HOST:PORT#sha256:HEX`).

use std::io::{self, Read, Write};
use std::net::TcpListener;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cosigner_protocol::ProtocolError;
use cosigner_protocol::frame::MAX_FRAME_LEN;
use cosigner_protocol::mailbox::{
    CHALLENGE_LEN, Envelope, MAX_ENVELOPE, MAX_PAGE, MailboxItem, MailboxRequest, MailboxResponse,
    ReadProof, Topic, check_members, decode_request, encode_response, random_challenge,
};
use cosigner_protocol::wire::{ErrorKind, WireError};
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};
use serde::Deserialize;
use serde_bytes::ByteBuf;
use sha2::{Digest, Sha256};

use crate::config::in_range;
use crate::error::{ParentError, Result};
use crate::frames::{self, FrameService};
use crate::pg::PgDatabase;
use crate::relay::{Conn, Listen};
use crate::store::database::Database;
use crate::store::{APPLICATION_ID, Marks, SCHEMA_VERSION, open_database, schema_error};

/// Most envelopes one topic holds (a ceremony of 64 members needs a few hundred).
pub const MAX_MESSAGES_PER_TOPIC: u64 = 4096;
/// Most topics the mailbox holds.
pub const MAX_TOPICS: u64 = 100_000;
/// Most envelope bytes the mailbox holds in all (2 GiB).
pub const MAX_TOTAL_BYTES: u64 = 2 << 30;
/// A connection with no request for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Default retention: a day. A ceremony is over within the hour (the provider refuses sign
/// requests older than an hour and forgets a DAO ceremony after one), so a day leaves room for a
/// late member to see how it ended while keeping little for the parent's operator to read.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(24 * 3600);
/// Shortest retention accepted: a ceremony's life (an hour).
pub const MIN_RETENTION: Duration = Duration::from_secs(3600);
/// Longest retention accepted (30 days).
pub const MAX_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);
/// Default quota window: the default retention, so that a sender holds at most two windows'
/// worth at any time.
pub const DEFAULT_QUOTA_WINDOW: Duration = DEFAULT_RETENTION;
/// Default envelopes per sender and window (a member of a 64-member DKG posts about 130; a
/// signature costs a member four).
pub const DEFAULT_QUOTA_MESSAGES: u64 = 4096;
/// Default envelope bytes per sender and window (64 MiB: 128 sign requests of the largest PSBT).
pub const DEFAULT_QUOTA_BYTES: u64 = 64 << 20;
/// Default topics a sender may found per window (each DKG, sign request, policy change or
/// refresh is one).
pub const DEFAULT_QUOTA_TOPICS: u64 = 256;
/// The global caps must be this many times what one sender can hold within the retention.
pub const GLOBAL_HEADROOM: u64 = 8;
/// Most keys `quota_exempt` may list.
pub const MAX_QUOTA_EXEMPT: usize = 16;
/// Expired envelopes are looked for at most this often (by the request that finds it due).
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(60);
/// How long writing one response may block on a peer that does not read.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Envelope bytes in one `Messages` page: a frame less room for the items' framing and the
/// topic's members.
const PAGE_BYTES: usize = MAX_FRAME_LEN - 24 * 1024;
/// Room counted per item on top of its envelope (sequence number, CBOR keys and headers).
const ITEM_OVERHEAD: usize = 32;
/// The name in the mailbox's self-signed certificate (members pin the certificate, not a name).
const TLS_NAME: &str = "cosigner-mailbox";

/// The mailbox's global caps; [`Default`] gives the documented constants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MailboxLimits {
    /// Most envelopes per topic.
    pub max_messages_per_topic: u64,
    /// Most topics.
    pub max_topics: u64,
    /// Most envelope bytes in all.
    pub max_total_bytes: u64,
    /// Most items per fetch.
    pub max_page: u32,
}

impl Default for MailboxLimits {
    fn default() -> Self {
        MailboxLimits {
            max_messages_per_topic: MAX_MESSAGES_PER_TOPIC,
            max_topics: MAX_TOPICS,
            max_total_bytes: MAX_TOTAL_BYTES,
            max_page: MAX_PAGE,
        }
    }
}

/// What one sender (one signing key) may store per window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SenderQuota {
    /// The window: counts start again from zero this long after a sender's window began.
    pub window: Duration,
    /// Envelopes per window.
    pub messages: u64,
    /// Envelope bytes per window.
    pub bytes: u64,
    /// Topics founded per window.
    pub topics: u64,
}

impl Default for SenderQuota {
    fn default() -> Self {
        SenderQuota {
            window: DEFAULT_QUOTA_WINDOW,
            messages: DEFAULT_QUOTA_MESSAGES,
            bytes: DEFAULT_QUOTA_BYTES,
            topics: DEFAULT_QUOTA_TOPICS,
        }
    }
}

/// The mailbox's certificate and key (PEM files); made (self-signed P-256) at first start when
/// both are absent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxTls {
    /// The certificate (PEM); members pin its SHA-256.
    pub certificate: PathBuf,
    /// Its private key (PEM, PKCS#8; created mode 0600).
    pub key: PathBuf,
}

/// `[mailbox]` of the parent's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxConfig {
    /// Envelopes posted longer ago than this are deleted.
    pub retention: Duration,
    /// What one sender may store per window.
    pub quota: SenderQuota,
    /// Senders (SEC1 compressed keys) no quota applies to: the operator's own provider, whose
    /// identity key signs its part of every DAO ceremony it serves.
    pub quota_exempt: Vec<Vec<u8>>,
    /// TLS for the mailbox's connections; `None`: plain TCP.
    pub tls: Option<MailboxTls>,
}

impl Default for MailboxConfig {
    fn default() -> Self {
        MailboxConfig {
            retention: DEFAULT_RETENTION,
            quota: SenderQuota::default(),
            quota_exempt: Vec::new(),
            tls: None,
        }
    }
}

/// `[mailbox]` as written; absent keys take the defaults of [`MailboxConfig`].
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMailboxConfig {
    retention_seconds: Option<u64>,
    quota_window_seconds: Option<u64>,
    quota_messages: Option<u64>,
    quota_bytes: Option<u64>,
    quota_topics: Option<u64>,
    #[serde(default)]
    quota_exempt: Vec<String>,
    tls_certificate: Option<String>,
    tls_key: Option<String>,
}

impl RawMailboxConfig {
    /// Each value in range, the global caps [`GLOBAL_HEADROOM`] times what one sender can hold,
    /// exempt keys that are keys, both TLS files or neither.
    pub fn check(self) -> Result<MailboxConfig> {
        let defaults = MailboxConfig::default();
        let seconds = |field, value: Option<u64>, default: Duration, min: Duration| match value {
            None => Ok(default),
            Some(s) => in_range(field, s, min.as_secs(), MAX_RETENTION.as_secs(), "30 days")
                .map(Duration::from_secs),
        };
        let retention = seconds(
            "mailbox.retention_seconds",
            self.retention_seconds,
            defaults.retention,
            MIN_RETENTION,
        )?;
        let window = seconds(
            "mailbox.quota_window_seconds",
            self.quota_window_seconds,
            defaults.quota.window,
            Duration::from_secs(60),
        )?;
        let quota = SenderQuota {
            window,
            messages: self.quota_messages.unwrap_or(defaults.quota.messages),
            bytes: self.quota_bytes.unwrap_or(defaults.quota.bytes),
            topics: self.quota_topics.unwrap_or(defaults.quota.topics),
        };
        in_range(
            "mailbox.quota_messages",
            quota.messages,
            1,
            u64::from(u32::MAX),
            "a count",
        )?;
        in_range(
            "mailbox.quota_bytes",
            quota.bytes,
            MAX_ENVELOPE as u64,
            u64::MAX,
            "at least one envelope",
        )?;
        in_range("mailbox.quota_topics", quota.topics, 1, u64::MAX, "a count")?;
        check_headroom(&quota, retention, &MailboxLimits::default())?;
        if self.quota_exempt.len() > MAX_QUOTA_EXEMPT {
            return Err(ParentError::InvalidLimit {
                field: "mailbox.quota_exempt",
                value: format!("{} keys", self.quota_exempt.len()),
                reason: format!("at most {MAX_QUOTA_EXEMPT}"),
            });
        }
        let quota_exempt = self
            .quota_exempt
            .iter()
            .map(|k| {
                hex::decode(k.trim())
                    .ok()
                    .filter(|b| check_members(&[ByteBuf::from(b.clone())]).is_ok())
                    .ok_or_else(|| ParentError::InvalidLimit {
                        field: "mailbox.quota_exempt",
                        value: k.clone(),
                        reason: "expected a P-256 key as 66 hex digits (SEC1 compressed), e.g. \
                                 the provider's audit key as `cosigner status` prints it"
                            .into(),
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        let tls = match (self.tls_certificate, self.tls_key) {
            (None, None) => None,
            (Some(certificate), Some(key)) if !certificate.is_empty() && !key.is_empty() => {
                Some(MailboxTls {
                    certificate: PathBuf::from(certificate),
                    key: PathBuf::from(key),
                })
            }
            (certificate, key) => {
                return Err(ParentError::InvalidAddress {
                    field: "mailbox.tls_certificate",
                    value: format!("{certificate:?} (tls_key {key:?})"),
                    reason: "give both tls_certificate and tls_key (PEM files; made at first \
                             start when both are absent), or neither"
                        .into(),
                });
            }
        };
        Ok(MailboxConfig {
            retention,
            quota,
            quota_exempt,
            tls,
        })
    }
}

/// Refuses a quota with which one sender could hold more than a [`GLOBAL_HEADROOM`]th of a
/// global cap within the retention: it may use a window's quota in each window the retention
/// spans, plus the one it started in.
pub fn check_headroom(
    quota: &SenderQuota,
    retention: Duration,
    limits: &MailboxLimits,
) -> Result<()> {
    let window = quota.window.as_secs().max(1);
    let windows = retention.as_secs().div_ceil(window).saturating_add(1);
    for (field, per_window, cap) in [
        ("mailbox.quota_bytes", quota.bytes, limits.max_total_bytes),
        ("mailbox.quota_topics", quota.topics, limits.max_topics),
    ] {
        let held = per_window.saturating_mul(windows);
        if held > cap / GLOBAL_HEADROOM {
            return Err(ParentError::InvalidLimit {
                field,
                value: per_window.to_string(),
                reason: format!(
                    "one sender could hold {held} ({windows} windows within the retention), more \
                     than 1/{GLOBAL_HEADROOM} of the mailbox's {cap}: lower it, shorten the \
                     retention or lengthen the window"
                ),
            });
        }
    }
    Ok(())
}

/// The mailbox: its rows in the parent's database (SQLite or PostgreSQL), its configuration, and
/// its TLS.
#[derive(Debug)]
pub struct MailboxStore {
    engine: Engine,
    limits: MailboxLimits,
    config: MailboxConfig,
    tls: Option<Arc<rustls::ServerConfig>>,
    pin: Option<[u8; 32]>,
    /// When the last sweep ran (ms since the epoch; 0: never).
    last_sweep: AtomicI64,
}

/// Where the mailbox's rows are, and how a request gets a transaction there.
///
/// Writes (a post, a sweep) are serialised with every other writer of the mailbox: SQLite's
/// `BEGIN IMMEDIATE` takes the database's one write lock; PostgreSQL takes a transaction-level
/// advisory lock ([`crate::pg_mailbox`]). Within that, reading a topic's last sequence number
/// and writing the next one cannot interleave with another post, so sequence numbers stay
/// unique and gap-free, and the global caps are checked against what is really stored, whatever
/// parent thread (or parent process sharing the database) posts. Reads (a fetch) see one
/// snapshot.
#[derive(Debug)]
enum Engine {
    /// One connection to the SQLite file: SQLite serialises writers anyway.
    Sqlite(Mutex<Connection>),
    /// The PostgreSQL database's pool, shared with the blob store.
    Postgres(Arc<PgDatabase>),
}

impl Engine {
    /// Runs `f` in a write transaction serialised with every other mailbox writer; commits if
    /// it returns `Ok`, rolls back otherwise. On PostgreSQL `f` may run twice, the first time on
    /// a connection the server closed (`PgDatabase::with`): what it does must be idempotent.
    fn write<T>(
        &self,
        (begin, commit): (&'static str, &'static str),
        mut f: impl FnMut(&mut dyn MailboxRows) -> Result<T>,
    ) -> Result<T> {
        match self {
            Engine::Sqlite(conn) => {
                let mut conn = lock(conn);
                let tx = conn
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(|e| ParentError::db(begin, &e))?;
                let out = f(&mut SqliteRows(&tx))?;
                tx.commit().map_err(|e| ParentError::db(commit, &e))?;
                Ok(out)
            }
            Engine::Postgres(db) => crate::pg_mailbox::write(db, (begin, commit), f),
        }
    }

    /// Runs `f` on one snapshot of the mailbox, writing nothing.
    fn read<T>(&self, mut f: impl FnMut(&mut dyn MailboxRows) -> Result<T>) -> Result<T> {
        match self {
            Engine::Sqlite(conn) => {
                let mut conn = lock(conn);
                // A deferred transaction: one snapshot for all of the request's statements.
                let tx = conn
                    .transaction()
                    .map_err(|e| ParentError::db("begin read", &e))?;
                f(&mut SqliteRows(&tx))
            }
            Engine::Postgres(db) => crate::pg_mailbox::read(db, f),
        }
    }
}

fn lock(conn: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    // Every write is one transaction: a panic while holding the lock leaves none half done.
    conn.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One page of a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// The envelopes, in sequence order.
    pub items: Vec<MailboxItem>,
    /// The topic holds more after the last item.
    pub more: bool,
    /// The topic's members (empty: unknown, or founded before topics had members).
    pub members: Vec<Vec<u8>>,
}

/// What one sweep deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    /// Envelopes.
    pub messages: u64,
    /// Topics (left empty by the envelopes' deletion).
    pub topics: u64,
}

impl MailboxStore {
    /// Opens the mailbox in the parent's database at `path` with the default configuration; see
    /// [`MailboxStore::open_with`].
    pub fn open(path: &Path) -> Result<MailboxStore> {
        Self::open_with(path, &MailboxConfig::default())
    }

    /// Opens the mailbox in the parent's database at `path`, which the blob store
    /// ([`crate::store::SqliteStore::open`]) must have created already (the parent opens it
    /// first): its marks and WAL mode are checked, then the mailbox tables are created if absent
    /// and expired envelopes deleted. With `config.tls`, the certificate and key are read (made
    /// first if both are absent).
    ///
    /// This deliberately does not call `SqliteStore::open` again: that opens and closes a plain
    /// file descriptor on the database, and closing any descriptor of a file drops every POSIX
    /// lock the process holds on it, the blob store connection's included; another process
    /// (an operator's `sqlite3`, a test) could then take the file for its last user, checkpoint
    /// and delete the WAL under the running parent, whose connections would stop seeing later
    /// writes. Only SQLite's own opens (which share locks per file within a process) happen here.
    pub fn open_with(path: &Path, config: &MailboxConfig) -> Result<MailboxStore> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let (conn, Marks { app, version }) = open_database(path, flags, "open mailbox")?;
        let schema = |reason: String| schema_error(path, reason);
        if (app, version) != (APPLICATION_ID, SCHEMA_VERSION) {
            return Err(schema(format!(
                "not a cosigner parent store of schema {SCHEMA_VERSION} (application_id \
                 {app:#x}, user_version {version}); the blob store creates it"
            )));
        }
        let mode: String = conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .map_err(|e| ParentError::db("read journal_mode", &e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(schema(format!("journal_mode is {mode}, expected wal")));
        }
        conn.execute_batch(
            "BEGIN IMMEDIATE;
             CREATE TABLE IF NOT EXISTS mailbox_topics (
                 topic BLOB PRIMARY KEY NOT NULL,
                 last_seq INTEGER NOT NULL,
                 bytes INTEGER NOT NULL,
                 created_at INTEGER NOT NULL
             ) STRICT;
             CREATE TABLE IF NOT EXISTS mailbox_messages (
                 topic BLOB NOT NULL,
                 seq INTEGER NOT NULL,
                 id BLOB NOT NULL,
                 sender BLOB NOT NULL,
                 envelope BLOB NOT NULL,
                 posted_at INTEGER NOT NULL,
                 PRIMARY KEY (topic, seq),
                 UNIQUE (topic, id)
             ) STRICT;
             -- The sweep finds expired envelopes by time.
             CREATE INDEX IF NOT EXISTS mailbox_messages_posted_at
                 ON mailbox_messages (posted_at);
             -- Who may read and post in a topic, as its founding post named them. A topic
             -- without rows here was founded before topics had members: open to anyone.
             CREATE TABLE IF NOT EXISTS mailbox_members (
                 topic BLOB NOT NULL,
                 member BLOB NOT NULL,
                 PRIMARY KEY (topic, member)
             ) STRICT, WITHOUT ROWID;
             -- Each sender's use of its quota in its current window.
             CREATE TABLE IF NOT EXISTS mailbox_senders (
                 sender BLOB PRIMARY KEY NOT NULL,
                 window_start INTEGER NOT NULL,
                 messages INTEGER NOT NULL,
                 bytes INTEGER NOT NULL,
                 topics INTEGER NOT NULL
             ) STRICT;
             COMMIT;",
        )
        .map_err(|e| ParentError::db("create mailbox tables", &e))?;
        Self::on_engine(Engine::Sqlite(Mutex::new(conn)), config)
    }

    /// Opens the mailbox in the PostgreSQL database `db`, whose tables
    /// [`PgDatabase::connect`] created with the blob store's; then as [`MailboxStore::open_with`]
    /// (expired envelopes deleted, TLS read or made).
    pub fn open_postgres(db: Arc<PgDatabase>, config: &MailboxConfig) -> Result<MailboxStore> {
        Self::on_engine(Engine::Postgres(db), config)
    }

    fn on_engine(engine: Engine, config: &MailboxConfig) -> Result<MailboxStore> {
        let (tls, pin) = match &config.tls {
            Some(files) => {
                let (tls, pin) = load_tls(files)?;
                (Some(tls), Some(pin))
            }
            None => (None, None),
        };
        let store = MailboxStore {
            engine,
            limits: MailboxLimits::default(),
            config: config.clone(),
            tls,
            pin,
            last_sweep: AtomicI64::new(0),
        };
        store.sweep()?;
        Ok(store)
    }

    /// Opens the mailbox of a parent's configuration: `config.database`, `config.mailbox`.
    pub fn open_for(config: &crate::Config) -> Result<MailboxStore> {
        match &config.database {
            Database::Sqlite(path) => Self::open_with(path, &config.mailbox),
            Database::Postgres(pg) => {
                Self::open_postgres(Arc::new(PgDatabase::connect(pg)?), &config.mailbox)
            }
        }
    }

    /// The same store with other global caps (tests; an operator's build).
    pub fn with_limits(mut self, limits: MailboxLimits) -> MailboxStore {
        self.limits = limits;
        self
    }

    /// The global caps in force.
    pub fn limits(&self) -> MailboxLimits {
        self.limits
    }

    /// The configuration in force.
    pub fn config(&self) -> &MailboxConfig {
        &self.config
    }

    /// `sha256:HEX` of the TLS certificate members pin, if the mailbox has one.
    pub fn tls_pin(&self) -> Option<String> {
        self.pin.map(|p| format!("sha256:{}", hex::encode(p)))
    }

    /// Stores an encoded envelope posted to `topic` and returns its sequence number there.
    /// `members` names the topic's members if this post founds it (else it is only checked).
    ///
    /// Refused: over [`MAX_ENVELOPE`] bytes ([`ParentError::ValueTooLarge`]); undecodable, a
    /// signature that does not verify, another topic than the envelope's, a malformed member
    /// list ([`ParentError::BadRequest`]); a sender that is not a member of the topic, or a
    /// founding post whose members do not include its sender
    /// ([`ParentError::MailboxForbidden`]); a sender over its quota
    /// ([`ParentError::QuotaExceeded`]); a full topic or mailbox ([`ParentError::MailboxFull`]).
    /// An envelope already in the topic answers its existing sequence number and stores nothing.
    pub fn post(&self, topic: &Topic, envelope: &[u8], members: &[ByteBuf]) -> Result<u64> {
        self.post_at(topic, envelope, members, unix_now())
    }

    fn post_at(
        &self,
        topic: &Topic,
        envelope: &[u8],
        members: &[ByteBuf],
        now: i64,
    ) -> Result<u64> {
        let decoded = checked_envelope(topic, envelope, members)?;
        let sender = decoded.sender.as_slice();
        // `decode` accepts only the canonical encoding, so this is `Envelope::id`.
        let id: [u8; 32] = Sha256::digest(envelope).into();
        let len = u64::try_from(envelope.len()).unwrap_or(u64::MAX);
        self.sweep_if_due(now)?;
        self.engine.write(("begin post", "commit post"), |rows| {
            if let Some(seq) = rows.message_seq(topic, &id)? {
                return Ok(seq);
            }
            let last = rows.last_seq(topic)?;
            check_may_post(rows, topic, sender, members, last.is_none())?;
            // The sender's quota before the global caps: a flooder meets its own limit long
            // before everybody's, and the check is one primary-key lookup.
            let exempt = self
                .config
                .quota_exempt
                .iter()
                .any(|k| k.as_slice() == sender);
            let usage = if exempt {
                None
            } else {
                Some(self.charge(rows, sender, len, last.is_none(), now)?)
            };
            self.check_total_bytes(rows, len)?;
            let last = match last {
                Some(last) => last,
                None => self.found_topic(rows, topic, members, now)?,
            };
            if last >= self.limits.max_messages_per_topic {
                return Err(ParentError::MailboxFull {
                    what: "envelopes in this topic",
                    max: self.limits.max_messages_per_topic,
                });
            }
            let seq = last + 1;
            let message = NewMessage {
                seq,
                id: &id,
                sender,
                envelope,
                len,
                now,
            };
            rows.insert_message(topic, &message)?;
            if let Some(usage) = usage {
                rows.record_usage(sender, &usage)?;
            }
            Ok(seq)
        })
    }

    /// Refuses a post that would take the envelope bytes stored past the mailbox's cap.
    fn check_total_bytes(&self, rows: &mut dyn MailboxRows, len: u64) -> Result<()> {
        let total = rows.total_bytes()?;
        if total.saturating_add(len) > self.limits.max_total_bytes {
            return Err(ParentError::MailboxFull {
                what: "envelope bytes stored",
                max: self.limits.max_total_bytes,
            });
        }
        Ok(())
    }

    /// Creates `topic` with its `members` (within the topic cap); its last sequence number, 0.
    fn found_topic(
        &self,
        rows: &mut dyn MailboxRows,
        topic: &Topic,
        members: &[ByteBuf],
        now: i64,
    ) -> Result<u64> {
        if rows.topic_count()? >= self.limits.max_topics {
            return Err(ParentError::MailboxFull {
                what: "topics",
                max: self.limits.max_topics,
            });
        }
        rows.insert_topic(topic, members, now)?;
        Ok(0)
    }

    /// `sender`'s use of its quota once this post is counted, or the quota it would exceed.
    fn charge(
        &self,
        rows: &mut dyn MailboxRows,
        sender: &[u8],
        len: u64,
        founding: bool,
        now: i64,
    ) -> Result<Usage> {
        let quota = self.config.quota;
        let window_ms = duration_ms(quota.window);
        let fresh = Usage {
            window_start: now,
            messages: 0,
            bytes: 0,
            topics: 0,
        };
        let mut usage = match rows.usage(sender)? {
            // A window that ended (or a clock that went back past its start) starts anew.
            Some(u) if u.window_start <= now && now - u.window_start < window_ms => u,
            _ => fresh,
        };
        usage.messages = usage.messages.saturating_add(1);
        usage.bytes = usage.bytes.saturating_add(len);
        usage.topics = usage.topics.saturating_add(u64::from(founding));
        for (what, used, max) in [
            ("envelopes", usage.messages, quota.messages),
            ("envelope bytes", usage.bytes, quota.bytes),
            ("topics founded", usage.topics, quota.topics),
        ] {
            if used > max {
                let ends = usage.window_start.saturating_add(window_ms);
                return Err(ParentError::QuotaExceeded {
                    sender: hex::encode(sender),
                    what,
                    max,
                    window_secs: quota.window.as_secs(),
                    retry_after_secs: u64::try_from(ends.saturating_sub(now))
                        .unwrap_or(0)
                        .div_ceil(1000),
                });
            }
        }
        Ok(usage)
    }

    /// The envelopes of `topic` with a sequence number above `after`, in order: at most `limit`
    /// (0, or more than the cap: the cap) and at most a frame's worth of bytes (always at least
    /// one when there is one), with the topic's members.
    ///
    /// `reader` is the key whose [`ReadProof`] the caller verified, if any. A topic with members
    /// answers only one of them ([`ParentError::MailboxForbidden`] otherwise); a topic founded
    /// before topics had members answers anyone; an unknown topic is an empty page for a reader,
    /// and refused without one, like a topic with members (so that a stranger without a key of
    /// its own cannot tell which topics exist).
    pub fn fetch(
        &self,
        topic: &Topic,
        after: u64,
        limit: u32,
        reader: Option<&[u8]>,
    ) -> Result<Page> {
        self.fetch_at(topic, after, limit, reader, unix_now())
    }

    fn fetch_at(
        &self,
        topic: &Topic,
        after: u64,
        limit: u32,
        reader: Option<&[u8]>,
        now: i64,
    ) -> Result<Page> {
        let cap = self.limits.max_page.max(1);
        let limit = if limit == 0 { cap } else { limit.min(cap) };
        self.sweep_if_due(now)?;
        self.engine.read(|rows| {
            let exists = rows.topic_exists(topic)?;
            let members = rows.topic_members(topic)?;
            let open = exists && members.is_empty();
            match reader {
                _ if open => {}
                None => {
                    return Err(ParentError::MailboxForbidden {
                        reason: format!(
                            "topic {} is readable by its members only: sign the fetch with a \
                             member's key (a read proof over this connection's challenge)",
                            hex::encode(topic)
                        ),
                    });
                }
                Some(r) if exists && !members.iter().any(|m| m.as_slice() == r) => {
                    return Err(ParentError::MailboxForbidden {
                        reason: format!(
                            "reader {} is not a member of topic {}",
                            hex::encode(r),
                            hex::encode(topic)
                        ),
                    });
                }
                Some(_) => {}
            }
            let mut items = Vec::new();
            let mut bytes = 0usize;
            let mut more = false;
            // One row more than the page, to tell whether there is more; no sequence number is
            // above i64::MAX (both engines keep them as signed 64-bit integers).
            let after = after.min(i64::MAX as u64);
            rows.page(topic, after, u64::from(limit) + 1, &mut |seq, envelope| {
                let size = envelope.len() + ITEM_OVERHEAD;
                if items.len() >= limit as usize || (!items.is_empty() && bytes + size > PAGE_BYTES)
                {
                    more = true;
                    return false;
                }
                bytes += size;
                items.push(MailboxItem {
                    seq,
                    envelope: ByteBuf::from(envelope),
                });
                true
            })?;
            Ok(Page {
                items,
                more,
                members,
            })
        })
    }

    /// Deletes what the retention has expired: envelopes posted longer ago, topics left without
    /// envelopes, quota windows that ended.
    pub fn sweep(&self) -> Result<Swept> {
        self.sweep_now(unix_now())
    }

    fn sweep_if_due(&self, now: i64) -> Result<()> {
        let last = self.last_sweep.load(Ordering::Relaxed);
        // A clock that went back (`now < last`) sweeps too: the interval cannot be trusted then.
        if now < last || now - last >= duration_ms(SWEEP_INTERVAL) {
            self.sweep_now(now)?;
        }
        Ok(())
    }

    fn sweep_now(&self, now: i64) -> Result<Swept> {
        let cutoff = now.saturating_sub(duration_ms(self.config.retention));
        let quota_cutoff = now.saturating_sub(duration_ms(self.config.quota.window));
        let swept = self.engine.write(("begin sweep", "commit sweep"), |rows| {
            // Per topic, what expires, to keep each topic's byte count right.
            let expired = rows.expired(cutoff)?;
            let mut swept = Swept::default();
            if !expired.is_empty() {
                swept.messages = rows.delete_messages_before(cutoff)?;
                for (topic, bytes) in &expired {
                    rows.forget_bytes(topic, *bytes)?;
                    if rows.delete_topic_if_empty(topic)? {
                        swept.topics += 1;
                    }
                }
            }
            rows.delete_windows_before(quota_cutoff)?;
            Ok(swept)
        })?;
        self.last_sweep.store(now, Ordering::Relaxed);
        Ok(swept)
    }

    /// How many topics the mailbox holds.
    pub fn topic_count(&self) -> Result<u64> {
        self.engine.read(|rows| rows.topic_count())
    }
}

/// A sender's use of its quota in its current window.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Usage {
    pub(crate) window_start: i64,
    pub(crate) messages: u64,
    pub(crate) bytes: u64,
    pub(crate) topics: u64,
}

/// The envelope posted to `topic`, decoded and checked: within [`MAX_ENVELOPE`], for this topic,
/// its signature verified, and `members` (if any) a well-formed member list.
fn checked_envelope(topic: &Topic, envelope: &[u8], members: &[ByteBuf]) -> Result<Envelope> {
    if envelope.len() > MAX_ENVELOPE {
        return Err(ParentError::ValueTooLarge {
            len: envelope.len(),
            max: MAX_ENVELOPE,
        });
    }
    let decoded = Envelope::decode(envelope).map_err(bad)?;
    if &decoded.topic != topic {
        return Err(ParentError::BadRequest {
            reason: format!(
                "envelope is for topic {}, posted to {}",
                hex::encode(decoded.topic),
                hex::encode(topic)
            ),
        });
    }
    decoded.verify().map_err(bad)?;
    if !members.is_empty() {
        check_members(members).map_err(bad)?;
    }
    Ok(decoded)
}

/// Who may post: a member of an existing topic; the founder of a new one must name its members,
/// itself among them, so that nobody posts or reads where members are not named.
fn check_may_post(
    rows: &mut dyn MailboxRows,
    topic: &Topic,
    sender: &[u8],
    members: &[ByteBuf],
    founding: bool,
) -> Result<()> {
    if founding {
        if !members.iter().any(|m| m.as_slice() == sender) {
            return Err(ParentError::MailboxForbidden {
                reason: format!(
                    "a post that founds topic {} must name its members, its sender {} among them",
                    hex::encode(topic),
                    hex::encode(sender)
                ),
            });
        }
        return Ok(());
    }
    let stored = rows.topic_members(topic)?;
    if !stored.is_empty() && !stored.iter().any(|m| m.as_slice() == sender) {
        return Err(ParentError::MailboxForbidden {
            reason: format!(
                "sender {} is not a member of topic {}",
                hex::encode(sender),
                hex::encode(topic)
            ),
        });
    }
    // A poster that names the members it expects learns, before anything is stored, that the
    // topic admits someone else (a stranger founded it first, or again after it expired): its
    // post would be readable by that stranger. Members only check this after a fetch, which
    // leaves a window between their check and their post; this closes it.
    if !members.is_empty()
        && let Some(stranger) = stored
            .iter()
            .find(|m| !members.iter().any(|k| k.as_slice() == m.as_slice()))
    {
        return Err(ParentError::MailboxForbidden {
            reason: format!(
                "topic {} admits {}, whom this post does not name as a member: someone else \
                 founded it",
                hex::encode(topic),
                hex::encode(stranger)
            ),
        });
    }
    Ok(())
}

/// One envelope about to be stored.
pub(crate) struct NewMessage<'a> {
    pub(crate) seq: u64,
    pub(crate) id: &'a [u8; 32],
    pub(crate) sender: &'a [u8],
    pub(crate) envelope: &'a [u8],
    pub(crate) len: u64,
    pub(crate) now: i64,
}

/// The mailbox's rows as one engine stores them: one method per statement (or two, where a row
/// and its topic's counters move together), nothing else. The mailbox's rules (who may post,
/// quotas, caps, sequence numbers, paging, the sweep) are written once, in [`MailboxStore`],
/// over this trait; [`SqliteRows`] and `crate::pg_mailbox::PgRows` differ only in SQL dialect.
/// Every call runs inside the transaction [`Engine`] opened for the request.
pub(crate) trait MailboxRows {
    /// The sequence number of the envelope `id` in `topic`, if it is there already.
    fn message_seq(&mut self, topic: &Topic, id: &[u8; 32]) -> Result<Option<u64>>;
    /// The last sequence number of `topic`; `None` if it does not exist.
    fn last_seq(&mut self, topic: &Topic) -> Result<Option<u64>>;
    /// Whether `topic` exists.
    fn topic_exists(&mut self, topic: &Topic) -> Result<bool>;
    /// The members of `topic` in byte order (empty: none named, or no such topic).
    fn topic_members(&mut self, topic: &Topic) -> Result<Vec<Vec<u8>>>;
    /// How many topics there are.
    fn topic_count(&mut self) -> Result<u64>;
    /// Envelope bytes stored in all topics.
    fn total_bytes(&mut self) -> Result<u64>;
    /// Creates `topic` (last sequence number 0, no bytes) with `members` (duplicates once).
    fn insert_topic(&mut self, topic: &Topic, members: &[ByteBuf], now: i64) -> Result<()>;
    /// `sender`'s quota row, if it has one.
    fn usage(&mut self, sender: &[u8]) -> Result<Option<Usage>>;
    /// Writes `sender`'s quota row.
    fn record_usage(&mut self, sender: &[u8], usage: &Usage) -> Result<()>;
    /// Stores `message` in `topic` and moves the topic's last sequence number and byte count.
    fn insert_message(&mut self, topic: &Topic, message: &NewMessage<'_>) -> Result<()>;
    /// Hands `each` the envelopes of `topic` above `after` in sequence order, at most `rows` of
    /// them, until it returns `false` (streamed: a page is never read whole into memory first).
    fn page(
        &mut self,
        topic: &Topic,
        after: u64,
        rows: u64,
        each: &mut dyn FnMut(u64, Vec<u8>) -> bool,
    ) -> Result<()>;
    /// Per topic, the bytes of the envelopes posted before `cutoff`.
    fn expired(&mut self, cutoff: i64) -> Result<Vec<(Vec<u8>, u64)>>;
    /// Deletes the envelopes posted before `cutoff`; how many.
    fn delete_messages_before(&mut self, cutoff: i64) -> Result<u64>;
    /// Takes `bytes` off `topic`'s byte count (not below 0).
    fn forget_bytes(&mut self, topic: &[u8], bytes: u64) -> Result<()>;
    /// Deletes `topic` and its members if it holds no envelope; whether it did.
    fn delete_topic_if_empty(&mut self, topic: &[u8]) -> Result<bool>;
    /// Deletes the quota rows of windows started before `cutoff`.
    fn delete_windows_before(&mut self, cutoff: i64) -> Result<()>;
    /// Tests: deletes every member row (what an older parent stored).
    #[cfg(test)]
    fn forget_all_members(&mut self) -> Result<()>;
    /// Tests: `topic`'s byte count.
    #[cfg(test)]
    fn topic_bytes(&mut self, topic: &Topic) -> Result<Option<u64>>;
    /// Tests: how many member rows `topic` has.
    #[cfg(test)]
    fn member_rows(&mut self, topic: &[u8]) -> Result<u64>;
}

/// [`MailboxRows`] in SQLite, on the connection or transaction it wraps.
struct SqliteRows<'a>(&'a Connection);

fn sqlite(operation: &'static str) -> impl Fn(rusqlite::Error) -> ParentError {
    move |e| ParentError::db(operation, &e)
}

impl MailboxRows for SqliteRows<'_> {
    fn message_seq(&mut self, topic: &Topic, id: &[u8; 32]) -> Result<Option<u64>> {
        self.0
            .query_row(
                "SELECT seq FROM mailbox_messages WHERE topic = ?1 AND id = ?2",
                params![topic.as_slice(), id.as_slice()],
                |r| r.get(0),
            )
            .optional()
            .map_err(sqlite("post"))
    }

    fn last_seq(&mut self, topic: &Topic) -> Result<Option<u64>> {
        self.0
            .query_row(
                "SELECT last_seq FROM mailbox_topics WHERE topic = ?1",
                [topic.as_slice()],
                |r| r.get(0),
            )
            .optional()
            .map_err(sqlite("post"))
    }

    fn topic_exists(&mut self, topic: &Topic) -> Result<bool> {
        self.0
            .query_row(
                "SELECT 1 FROM mailbox_topics WHERE topic = ?1",
                [topic.as_slice()],
                |_| Ok(()),
            )
            .optional()
            .map(|found| found.is_some())
            .map_err(sqlite("fetch"))
    }

    fn topic_members(&mut self, topic: &Topic) -> Result<Vec<Vec<u8>>> {
        let db = sqlite("read members");
        let mut stmt = self
            .0
            .prepare_cached("SELECT member FROM mailbox_members WHERE topic = ?1 ORDER BY member")
            .map_err(&db)?;
        let rows = stmt
            .query_map([topic.as_slice()], |r| r.get(0))
            .map_err(&db)?;
        rows.collect::<rusqlite::Result<_>>().map_err(&db)
    }

    fn topic_count(&mut self) -> Result<u64> {
        self.0
            .query_row("SELECT count(*) FROM mailbox_topics", [], |r| r.get(0))
            .map_err(sqlite("count topics"))
    }

    fn total_bytes(&mut self) -> Result<u64> {
        self.0
            .query_row(
                "SELECT coalesce(sum(bytes), 0) FROM mailbox_topics",
                [],
                |r| r.get(0),
            )
            .map_err(sqlite("post"))
    }

    fn insert_topic(&mut self, topic: &Topic, members: &[ByteBuf], now: i64) -> Result<()> {
        let db = sqlite("post");
        self.0
            .execute(
                "INSERT INTO mailbox_topics (topic, last_seq, bytes, created_at)
                 VALUES (?1, 0, 0, ?2)",
                params![topic.as_slice(), now],
            )
            .map_err(&db)?;
        for m in members {
            self.0
                .execute(
                    "INSERT OR IGNORE INTO mailbox_members (topic, member) VALUES (?1, ?2)",
                    params![topic.as_slice(), m.as_slice()],
                )
                .map_err(&db)?;
        }
        Ok(())
    }

    fn usage(&mut self, sender: &[u8]) -> Result<Option<Usage>> {
        self.0
            .query_row(
                "SELECT window_start, messages, bytes, topics FROM mailbox_senders
                 WHERE sender = ?1",
                [sender],
                |r| {
                    Ok(Usage {
                        window_start: r.get(0)?,
                        messages: r.get(1)?,
                        bytes: r.get(2)?,
                        topics: r.get(3)?,
                    })
                },
            )
            .optional()
            .map_err(sqlite("read quota"))
    }

    fn record_usage(&mut self, sender: &[u8], u: &Usage) -> Result<()> {
        self.0
            .execute(
                "INSERT INTO mailbox_senders (sender, window_start, messages, bytes, topics)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (sender) DO UPDATE SET window_start = excluded.window_start,
                     messages = excluded.messages, bytes = excluded.bytes,
                     topics = excluded.topics",
                params![sender, u.window_start, u.messages, u.bytes, u.topics],
            )
            .map_err(sqlite("post"))?;
        Ok(())
    }

    fn insert_message(&mut self, topic: &Topic, message: &NewMessage<'_>) -> Result<()> {
        let db = sqlite("post");
        self.0
            .execute(
                "INSERT INTO mailbox_messages (topic, seq, id, sender, envelope, posted_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    topic.as_slice(),
                    message.seq,
                    message.id.as_slice(),
                    message.sender,
                    message.envelope,
                    message.now
                ],
            )
            .map_err(&db)?;
        self.0
            .execute(
                "UPDATE mailbox_topics SET last_seq = ?2, bytes = bytes + ?3 WHERE topic = ?1",
                params![topic.as_slice(), message.seq, message.len],
            )
            .map_err(&db)?;
        Ok(())
    }

    fn page(
        &mut self,
        topic: &Topic,
        after: u64,
        rows: u64,
        each: &mut dyn FnMut(u64, Vec<u8>) -> bool,
    ) -> Result<()> {
        let db = sqlite("fetch");
        let mut stmt = self
            .0
            .prepare_cached(
                "SELECT seq, envelope FROM mailbox_messages
                 WHERE topic = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
            )
            .map_err(&db)?;
        let mut found = stmt
            .query(params![topic.as_slice(), after, rows])
            .map_err(&db)?;
        while let Some(row) = found.next().map_err(&db)? {
            let seq: u64 = row.get(0).map_err(&db)?;
            let envelope: Vec<u8> = row.get(1).map_err(&db)?;
            if !each(seq, envelope) {
                break;
            }
        }
        Ok(())
    }

    fn expired(&mut self, cutoff: i64) -> Result<Vec<(Vec<u8>, u64)>> {
        let db = sqlite("sweep");
        // By the posted_at index; `length` of a blob reads its header, not its bytes.
        let mut stmt = self
            .0
            .prepare_cached(
                "SELECT topic, sum(length(envelope)) FROM mailbox_messages
                 WHERE posted_at < ?1 GROUP BY topic",
            )
            .map_err(&db)?;
        let rows = stmt
            .query_map([cutoff], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(&db)?;
        rows.collect::<rusqlite::Result<_>>().map_err(&db)
    }

    fn delete_messages_before(&mut self, cutoff: i64) -> Result<u64> {
        self.0
            .execute(
                "DELETE FROM mailbox_messages WHERE posted_at < ?1",
                [cutoff],
            )
            .map(|n| n as u64)
            .map_err(sqlite("sweep"))
    }

    fn forget_bytes(&mut self, topic: &[u8], bytes: u64) -> Result<()> {
        self.0
            .execute(
                "UPDATE mailbox_topics SET bytes = max(bytes - ?2, 0) WHERE topic = ?1",
                params![topic, bytes],
            )
            .map_err(sqlite("sweep"))?;
        Ok(())
    }

    fn delete_topic_if_empty(&mut self, topic: &[u8]) -> Result<bool> {
        let db = sqlite("sweep");
        let gone = self
            .0
            .execute(
                "DELETE FROM mailbox_topics WHERE topic = ?1 AND NOT EXISTS
                 (SELECT 1 FROM mailbox_messages WHERE topic = ?1)",
                [topic],
            )
            .map_err(&db)?;
        if gone > 0 {
            self.0
                .execute("DELETE FROM mailbox_members WHERE topic = ?1", [topic])
                .map_err(&db)?;
        }
        Ok(gone > 0)
    }

    fn delete_windows_before(&mut self, cutoff: i64) -> Result<()> {
        self.0
            .execute(
                "DELETE FROM mailbox_senders WHERE window_start < ?1",
                [cutoff],
            )
            .map_err(sqlite("sweep"))?;
        Ok(())
    }

    #[cfg(test)]
    fn forget_all_members(&mut self) -> Result<()> {
        self.0
            .execute("DELETE FROM mailbox_members", [])
            .map_err(sqlite("test"))?;
        Ok(())
    }

    #[cfg(test)]
    fn topic_bytes(&mut self, topic: &Topic) -> Result<Option<u64>> {
        self.0
            .query_row(
                "SELECT bytes FROM mailbox_topics WHERE topic = ?1",
                [topic.as_slice()],
                |r| r.get(0),
            )
            .optional()
            .map_err(sqlite("test"))
    }

    #[cfg(test)]
    fn member_rows(&mut self, topic: &[u8]) -> Result<u64> {
        self.0
            .query_row(
                "SELECT count(*) FROM mailbox_members WHERE topic = ?1",
                [topic],
                |r| r.get(0),
            )
            .map_err(sqlite("test"))
    }
}

/// One connection's state: the read challenge, drawn when the peer first asks for it.
#[derive(Debug, Default)]
pub struct MailboxSession {
    challenge: Option<[u8; CHALLENGE_LEN]>,
}

impl MailboxSession {
    /// A new connection's state (no challenge drawn yet).
    pub fn new() -> Self {
        Self::default()
    }

    fn challenge(&mut self) -> Result<[u8; CHALLENGE_LEN]> {
        if let Some(c) = self.challenge {
            return Ok(c);
        }
        let c = random_challenge().map_err(|e| ParentError::Io {
            what: "drawing a read challenge".into(),
            reason: e.to_string(),
        })?;
        self.challenge = Some(c);
        Ok(c)
    }

    /// The key a read proof was signed with, once it verified under this connection's challenge.
    fn reader(&self, topic: &Topic, proof: &ReadProof) -> Result<Vec<u8>> {
        let challenge = self
            .challenge
            .ok_or_else(|| ParentError::MailboxForbidden {
                reason: "a read proof signs this connection's challenge: ask for it first \
                     (Challenge)"
                    .into(),
            })?;
        proof
            .verify(&challenge, topic)
            .map_err(|e| ParentError::MailboxForbidden {
                reason: e.to_string(),
            })?;
        Ok(proof.reader.to_vec())
    }
}

/// Answers one request on the connection whose state is `session`. Refusals of the request are
/// `BadRequest`, a sender over its quota `Busy` (retryable once its window ends), store failures
/// `Internal`; the message is one line.
pub fn handle(
    store: &MailboxStore,
    session: &mut MailboxSession,
    request: MailboxRequest,
) -> MailboxResponse {
    let result = match request {
        MailboxRequest::Post {
            topic,
            envelope,
            members,
        } => store
            .post(&topic, &envelope, &members)
            .map(|seq| MailboxResponse::Posted { seq }),
        MailboxRequest::Fetch {
            topic,
            after,
            limit,
            proof,
        } => proof
            .map(|p| session.reader(&topic, &p))
            .transpose()
            .and_then(|reader| store.fetch(&topic, after, limit, reader.as_deref()))
            .map(|page| MailboxResponse::Messages {
                items: page.items,
                more: page.more,
                members: page.members.into_iter().map(ByteBuf::from).collect(),
            }),
        MailboxRequest::Challenge => session.challenge().map(|c| MailboxResponse::Challenge {
            nonce: ByteBuf::from(c.to_vec()),
        }),
        // A request variant added to the protocol after this build.
        _ => Err(ParentError::BadRequest {
            reason: "unsupported mailbox request".into(),
        }),
    };
    result.unwrap_or_else(|e| {
        MailboxResponse::Error(WireError::new(e.wire_kind(), one_line(&e.to_string())))
    })
}

/// Serves mailbox requests on `stream` until the peer closes it or stays idle past the stream's
/// read timeout (`Ok`), or breaks the protocol (answered with `Error(BadRequest)`, then
/// [`ParentError::BadRequest`]). In TLS when the store has a certificate: a peer that does not
/// complete the handshake gets nothing. Never panics on input.
pub fn serve_mailbox<S: Read + Write>(stream: S, store: &MailboxStore) -> Result<()> {
    serve_mailbox_counted(stream, store, &|| {})
}

/// [`serve_mailbox`], calling `on_request` for every request answered (the parent's metrics).
pub fn serve_mailbox_counted<S: Read + Write>(
    stream: S,
    store: &MailboxStore,
    on_request: &dyn Fn(),
) -> Result<()> {
    match &store.tls {
        Some(tls) => {
            let conn = rustls::ServerConnection::new(Arc::clone(tls)).map_err(|e| {
                ParentError::MailboxTls {
                    what: "starting a session".into(),
                    reason: e.to_string(),
                }
            })?;
            serve_frames(rustls::StreamOwned::new(conn, stream), store, on_request)
        }
        None => serve_frames(stream, store, on_request),
    }
}

fn serve_frames<S: Read + Write>(
    stream: S,
    store: &MailboxStore,
    on_request: &dyn Fn(),
) -> Result<()> {
    frames::serve(
        stream,
        &mut MailboxService {
            store,
            session: MailboxSession::new(),
            on_request,
        },
    )
}

/// The mailbox on one connection (its session: the member it authenticated) as a
/// [`FrameService`].
struct MailboxService<'a> {
    store: &'a MailboxStore,
    session: MailboxSession,
    on_request: &'a dyn Fn(),
}

impl FrameService for MailboxService<'_> {
    type Request = MailboxRequest;
    type Response = MailboxResponse;
    const NAME: &'static str = "mailbox";

    fn decode(&self, frame: &[u8]) -> std::result::Result<MailboxRequest, String> {
        decode_request(frame).map_err(|e| e.to_string())
    }

    fn handle(&mut self, request: MailboxRequest) -> MailboxResponse {
        (self.on_request)();
        handle(self.store, &mut self.session, request)
    }

    fn refusal(reason: String) -> MailboxResponse {
        MailboxResponse::Error(WireError::new(ErrorKind::BadRequest, reason))
    }

    /// One that cannot be encoded is replaced by an `Internal` error (pages are cut to fit, so
    /// this is a bug guard).
    fn encode(response: &MailboxResponse) -> Result<Vec<u8>> {
        encode_response(response).or_else(|e| {
            encode_response(&MailboxResponse::Error(WireError::new(
                ErrorKind::Internal,
                one_line(&format!("cannot encode the response: {e}")),
            )))
            .map_err(|e| ParentError::Encode {
                reason: e.to_string(),
            })
        })
    }
}

/// Reads the mailbox's certificate and key, making them first (self-signed, P-256) when both
/// files are absent; returns the server configuration (TLS 1.3 only) and the certificate's
/// SHA-256, which members pin.
fn load_tls(files: &MailboxTls) -> Result<(Arc<rustls::ServerConfig>, [u8; 32])> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let tls_err = |what: String, reason: String| ParentError::MailboxTls { what, reason };
    match (files.certificate.exists(), files.key.exists()) {
        (false, false) => make_certificate(files)?,
        (true, true) => {}
        (cert, _) => {
            let (present, missing) = if cert {
                (&files.certificate, &files.key)
            } else {
                (&files.key, &files.certificate)
            };
            return Err(tls_err(
                format!("files {} and {}", present.display(), missing.display()),
                format!(
                    "{} is missing; refusing to make a new pair over the other (members pin \
                     the certificate): restore it, or remove both to make a new pair",
                    missing.display()
                ),
            ));
        }
    }
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.certificate)
        .and_then(|i| i.collect::<std::result::Result<_, _>>())
        .map_err(|e| {
            tls_err(
                format!("certificate {}", files.certificate.display()),
                e.to_string(),
            )
        })?;
    let first = certs.first().ok_or_else(|| {
        tls_err(
            format!("certificate {}", files.certificate.display()),
            "no certificate in the file".into(),
        )
    })?;
    let pin: [u8; 32] = Sha256::digest(first.as_ref()).into();
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| tls_err(format!("key {}", files.key.display()), e.to_string()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| tls_err("configuration".into(), e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            tls_err(
                format!(
                    "certificate {} with key {}",
                    files.certificate.display(),
                    files.key.display()
                ),
                e.to_string(),
            )
        })?;
    Ok((Arc::new(config), pin))
}

/// Makes a self-signed P-256 certificate and its key; the key file is created mode 0600 and never
/// over an existing file.
fn make_certificate(files: &MailboxTls) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;

    let certified = rcgen::generate_simple_self_signed(vec![TLS_NAME.to_owned()]).map_err(|e| {
        ParentError::MailboxTls {
            what: "making a certificate".into(),
            reason: e.to_string(),
        }
    })?;
    let write = |path: &Path, mode: u32, text: &str| {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
            .and_then(|mut f| {
                f.write_all(text.as_bytes())?;
                f.sync_all()
            })
            .map_err(|e| ParentError::io(format!("writing {}", path.display()), &e))
    };
    write(&files.key, 0o600, &certified.signing_key.serialize_pem())?;
    write(&files.certificate, 0o644, &certified.cert.pem())
}

/// The pin (`sha256:HEX`) of the certificate in the PEM file at `path`: what members put in the
/// mailbox address.
pub fn certificate_pin(path: &Path) -> Result<String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    let cert = CertificateDer::from_pem_file(path).map_err(|e| ParentError::MailboxTls {
        what: format!("certificate {}", path.display()),
        reason: e.to_string(),
    })?;
    Ok(format!(
        "sha256:{}",
        hex::encode(Sha256::digest(cert.as_ref()))
    ))
}

/// The mailbox's TCP listener: like the client listener, plus an idle read timeout and a write
/// timeout on every connection, so that silent peers do not hold connection slots for ever.
#[derive(Debug)]
pub struct MailboxListener(pub TcpListener);

impl Listen for MailboxListener {
    fn fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
    fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        self.0.set_nonblocking(nonblocking)
    }
    fn accept(&self) -> io::Result<Conn> {
        let (s, _) = self.0.accept()?;
        s.set_nonblocking(false)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(IDLE_TIMEOUT))?;
        s.set_write_timeout(Some(WRITE_TIMEOUT))?;
        Ok(Arc::new(s))
    }
}

/// Whether a connection error is the ordinary end of a mailbox connection (idle timeout, the peer
/// gone; in TLS, gone without a `close_notify`, as clients that just close do), not worth a log
/// line.
pub fn is_ordinary_end(e: &ParentError) -> bool {
    matches!(e, ParentError::Io { reason, .. }
        if ["timed out", "temporarily unavailable", "reset by peer", "Broken pipe", "close_notify"]
            .iter()
            .any(|s| reason.contains(s)))
}

fn bad(e: ProtocolError) -> ParentError {
    ParentError::BadRequest {
        reason: e.to_string(),
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;
    use crate::store::SqliteStore;
    use crate::store::database::PostgresConfig;
    use cosigner_protocol::auth::public_key_bytes;
    use cosigner_protocol::frame::{read_frame, write_frame};
    use cosigner_protocol::mailbox::{decode_response, encode_request};
    use cosigner_tests::postgres::{Backend, database_for};
    use p256::ecdsa::SigningKey;

    fn key() -> SigningKey {
        SigningKey::random(&mut rand_core::OsRng)
    }

    fn pk(k: &SigningKey) -> ByteBuf {
        ByteBuf::from(public_key_bytes(k))
    }

    fn envelope(k: &SigningKey, topic: Topic, body: &[u8]) -> Vec<u8> {
        Envelope::seal(k, topic, body.to_vec())
            .unwrap()
            .encode()
            .unwrap()
    }

    /// The mailbox in `database` on `backend`, opened as the parent opens it (the blob store
    /// first), on a connection (SQLite) or pool (PostgreSQL) of its own.
    fn open_mailbox(backend: Backend, database: &str, config: &MailboxConfig) -> MailboxStore {
        match backend {
            Backend::Sqlite => {
                let path = Path::new(database);
                drop(SqliteStore::open(path).unwrap());
                MailboxStore::open_with(path, config).unwrap()
            }
            Backend::Postgres => {
                let pg = PostgresConfig::new(database, None, 4).unwrap();
                let db = Arc::new(PgDatabase::connect(&pg).unwrap());
                MailboxStore::open_postgres(db, config).unwrap()
            }
        }
    }

    /// What keeps a test's database alive (see `database_for`).
    type Keep = Box<dyn std::any::Any>;

    /// A mailbox on `backend`; `None`: skip (PostgreSQL missing).
    fn store_with(backend: Backend, config: &MailboxConfig) -> Option<(Keep, MailboxStore)> {
        let (keep, database) = database_for(backend)?;
        let s = open_mailbox(backend, &database, config);
        Some((keep, s))
    }

    fn store(backend: Backend) -> Option<(Keep, MailboxStore)> {
        store_with(backend, &MailboxConfig::default())
    }

    // The mailbox's rules are the same on both engines, so are its tests.
    cosigner_tests::on_both_engines!(
        posts_get_sequence_numbers_and_fetch_pages_in_order,
        duplicates_answer_the_existing_sequence_number,
        bad_envelopes_are_refused_with_one_line,
        caps_refuse_clearly,
        pages_respect_the_item_and_byte_caps,
        topics_are_their_members_only,
        reads_need_a_proof_under_this_connections_challenge,
        topics_without_members_stay_open_until_they_expire,
        the_sweep_deletes_what_the_retention_expired,
        a_flooder_meets_its_own_quota_and_others_still_post,
        the_frame_loop_answers_and_drops_garbage,
        the_parent_serves_the_mailbox_on_tcp,
        concurrent_posts_to_one_topic_get_unique_gap_free_numbers,
    );

    /// A store whose members-only checks are out of the way: `k` founds topics naming only
    /// itself and reads as itself.
    fn post(s: &MailboxStore, k: &SigningKey, t: Topic, body: &[u8]) -> Result<u64> {
        s.post(&t, &envelope(k, t, body), &[pk(k)])
    }

    fn fetch(s: &MailboxStore, k: &SigningKey, t: &Topic, after: u64, limit: u32) -> Page {
        s.fetch(t, after, limit, Some(&public_key_bytes(k)))
            .unwrap()
    }

    fn posts_get_sequence_numbers_and_fetch_pages_in_order(backend: Backend) {
        let Some((_db, s)) = store(backend) else {
            return;
        };
        let k = key();
        let t = Topic([1; 16]);
        for i in 1..=5u64 {
            assert_eq!(post(&s, &k, t, &[i as u8]).unwrap(), i);
        }
        // Another topic has its own numbering.
        assert_eq!(post(&s, &k, Topic([2; 16]), b"x").unwrap(), 1);
        let all = fetch(&s, &k, &t, 0, 0);
        assert!(!all.more);
        assert_eq!(
            all.items.iter().map(|i| i.seq).collect::<Vec<_>>(),
            [1, 2, 3, 4, 5]
        );
        assert_eq!(all.members, vec![public_key_bytes(&k)]);
        let first = Envelope::open(&all.items[0].envelope, &t).unwrap();
        assert_eq!(first.body.as_slice(), &[1]);
        let page = fetch(&s, &k, &t, 1, 2);
        assert_eq!(page.items.iter().map(|i| i.seq).collect::<Vec<_>>(), [2, 3]);
        assert!(page.more);
        let last = fetch(&s, &k, &t, 3, 2);
        assert_eq!(last.items.len(), 2);
        assert!(!last.more);
        assert!(fetch(&s, &k, &t, 5, 0).items.is_empty());
        assert_eq!(
            fetch(&s, &k, &Topic([9; 16]), 0, 0),
            Page {
                items: vec![],
                more: false,
                members: vec![],
            }
        );
        assert_eq!(s.topic_count().unwrap(), 2);
    }

    fn duplicates_answer_the_existing_sequence_number(backend: Backend) {
        let Some((_db, s)) = store(backend) else {
            return;
        };
        let (k, other) = (key(), key());
        let t = Topic([1; 16]);
        let members = [pk(&k), pk(&other)];
        let e = envelope(&k, t, b"hello");
        assert_eq!(s.post(&t, &e, &members).unwrap(), 1);
        assert_eq!(s.post(&t, &envelope(&k, t, b"other"), &[]).unwrap(), 2);
        // Posted again by anyone, with or without members: the same place, nothing new.
        assert_eq!(s.post(&t, &e, &[]).unwrap(), 1);
        assert_eq!(fetch(&s, &k, &t, 0, 0).items.len(), 2);
        // Sealing the same body again gives the same envelope (RFC 6979 signatures): still one.
        assert_eq!(s.post(&t, &envelope(&k, t, b"hello"), &[]).unwrap(), 1);
        // Another sender's identical body is another envelope.
        assert_eq!(s.post(&t, &envelope(&other, t, b"hello"), &[]).unwrap(), 3);
    }

    fn bad_envelopes_are_refused_with_one_line(backend: Backend) {
        let Some((_db, s)) = store(backend) else {
            return;
        };
        let k = key();
        let t = Topic([1; 16]);
        let mut tampered = Envelope::seal(&k, t, b"pay alice".to_vec()).unwrap();
        tampered.body = ByteBuf::from(b"pay mallory".to_vec());
        let cases: Vec<(Vec<u8>, Vec<ByteBuf>, &str)> = vec![
            (b"garbage".to_vec(), vec![pk(&k)], "undecodable"),
            (vec![], vec![pk(&k)], "undecodable"),
            (tampered.encode().unwrap(), vec![pk(&k)], "does not verify"),
            (
                envelope(&k, Topic([2; 16]), b"x"),
                vec![pk(&k)],
                "posted to",
            ),
            (vec![0; MAX_ENVELOPE + 1], vec![pk(&k)], "exceeds"),
            (
                envelope(&k, t, b"x"),
                vec![ByteBuf::from(vec![4; 65])],
                "not a SEC1 compressed",
            ),
            (envelope(&k, t, b"x"), vec![], "must name its members"),
            (
                envelope(&k, t, b"x"),
                vec![pk(&key())],
                "must name its members",
            ),
        ];
        for (bytes, members, why) in cases {
            let r = handle(
                &s,
                &mut MailboxSession::new(),
                MailboxRequest::Post {
                    topic: t,
                    envelope: ByteBuf::from(bytes),
                    members,
                },
            );
            match r {
                MailboxResponse::Error(e) => {
                    assert_eq!(e.kind, ErrorKind::BadRequest);
                    assert!(e.message.contains(why), "{why}: {}", e.message);
                    assert!(!e.message.contains('\n'));
                }
                other => panic!("{why}: {other:?}"),
            }
        }
        assert!(fetch(&s, &k, &t, 0, 0).items.is_empty());
        assert_eq!(s.topic_count().unwrap(), 0);
    }

    fn caps_refuse_clearly(backend: Backend) {
        let Some((_db, s)) = store(backend) else {
            return;
        };
        let s = s.with_limits(MailboxLimits {
            max_messages_per_topic: 2,
            max_topics: 2,
            max_total_bytes: 10_000,
            max_page: 3,
        });
        let k = key();
        let t = Topic([1; 16]);
        post(&s, &k, t, b"1").unwrap();
        post(&s, &k, t, b"2").unwrap();
        let err = post(&s, &k, t, b"3").unwrap_err();
        assert!(err.to_string().contains("envelopes in this topic"), "{err}");
        post(&s, &k, Topic([2; 16]), b"x").unwrap();
        let err = post(&s, &k, Topic([3; 16]), b"x").unwrap_err();
        assert!(err.to_string().contains("topics (at most 2)"), "{err}");
        let err = post(&s, &k, Topic([2; 16]), &[0; 10_000]).unwrap_err();
        assert!(err.to_string().contains("bytes stored"), "{err}");
        // A duplicate of a stored envelope is still answered when the topic is full.
        let e = envelope(&k, Topic([2; 16]), b"y");
        s.post(&Topic([2; 16]), &e, &[]).unwrap();
        assert_eq!(s.post(&Topic([2; 16]), &e, &[]).unwrap(), 2);
    }

    fn pages_respect_the_item_and_byte_caps(backend: Backend) {
        let Some((_db, s)) = store(backend) else {
            return;
        };
        let s = s.with_limits(MailboxLimits {
            max_page: 3,
            ..MailboxLimits::default()
        });
        let k = key();
        let t = Topic([1; 16]);
        for i in 0..5u8 {
            post(&s, &k, t, &[i]).unwrap();
        }
        let p = fetch(&s, &k, &t, 0, 100);
        assert_eq!(p.items.len(), 3);
        assert!(p.more);
        // Large envelopes, and the most members a topic may have: one frame holds one of them,
        // never none.
        let big = Topic([5; 16]);
        let mut members: Vec<ByteBuf> = (1..cosigner_protocol::mailbox::MAX_TOPIC_MEMBERS)
            .map(|_| pk(&key()))
            .collect();
        members.push(pk(&k));
        for i in 0..3u8 {
            s.post(
                &big,
                &envelope(&k, big, &vec![i; MAX_ENVELOPE - 300]),
                &members,
            )
            .unwrap();
        }
        let mut after = 0;
        let mut seen = 0;
        loop {
            let p = fetch(&s, &k, &big, after, 0);
            assert_eq!(p.items.len(), 1);
            assert_eq!(p.members.len(), members.len());
            let bytes = encode_response(&MailboxResponse::Messages {
                items: p.items.clone(),
                more: p.more,
                members: p.members.iter().cloned().map(ByteBuf::from).collect(),
            })
            .unwrap();
            assert!(bytes.len() <= MAX_FRAME_LEN);
            seen += 1;
            after = p.items[0].seq;
            if !p.more {
                break;
            }
        }
        assert_eq!(seen, 3);
    }

    fn topics_are_their_members_only(backend: Backend) {
        let Some((_db, s)) = store(backend) else {
            return;
        };
        let (alice, bob, provider, stranger) = (key(), key(), key(), key());
        let t = Topic([7; 16]);
        let members = vec![pk(&alice), pk(&bob), pk(&provider)];
        assert_eq!(
            s.post(&t, &envelope(&alice, t, b"invitation"), &members)
                .unwrap(),
            1
        );
        // Members post without naming the members again, or naming them all; a later post that
        // names members learns whether the topic admits anyone it did not name (a stranger who
        // founded the topic first), and is refused then, before anything is stored.
        // A post by `from` naming `named`, refused as forbidden for `why`.
        let forbidden = |from: &SigningKey, named: &[ByteBuf], why: &str| {
            let err = s.post(&t, &envelope(from, t, b"x"), named).unwrap_err();
            assert!(
                matches!(&err, ParentError::MailboxForbidden { reason } if reason.contains(why)),
                "{err}"
            );
        };
        assert_eq!(s.post(&t, &envelope(&bob, t, b"r1"), &[]).unwrap(), 2);
        forbidden(&provider, &[pk(&provider)], "does not name");
        assert_eq!(
            s.post(&t, &envelope(&provider, t, b"r1"), &members)
                .unwrap(),
            3
        );
        // A stranger who knows the topic can neither post there...
        forbidden(&stranger, &[pk(&stranger)], "not a member");
        // ...nor read it, with or without a key of his own.
        let err = s.fetch(&t, 0, 0, None).unwrap_err();
        assert!(err.to_string().contains("members only"), "{err}");
        let err = s
            .fetch(&t, 0, 0, Some(&public_key_bytes(&stranger)))
            .unwrap_err();
        assert!(err.to_string().contains("not a member"), "{err}");
        // An unknown topic: refused without a proof (as a known one), empty with one.
        assert!(s.fetch(&Topic([8; 16]), 0, 0, None).is_err());
        assert!(fetch(&s, &stranger, &Topic([8; 16]), 0, 0).items.is_empty());
        // Every member reads all of it, and the members as founded.
        for m in [&alice, &bob, &provider] {
            let page = fetch(&s, m, &t, 0, 0);
            assert_eq!(page.items.len(), 3);
            let mut expected: Vec<Vec<u8>> = members.iter().map(|m| m.to_vec()).collect();
            expected.sort();
            assert_eq!(page.members, expected);
        }
    }

    fn reads_need_a_proof_under_this_connections_challenge(backend: Backend) {
        let Some((_db, s)) = store(backend) else {
            return;
        };
        let (alice, stranger) = (key(), key());
        let t = Topic([7; 16]);
        post(&s, &alice, t, b"secret-ish").unwrap();
        let fetch_with = |session: &mut MailboxSession, proof: Option<ReadProof>| {
            handle(
                &s,
                session,
                MailboxRequest::Fetch {
                    topic: t,
                    after: 0,
                    limit: 0,
                    proof,
                },
            )
        };
        let refused = |r: MailboxResponse, why: &str| match r {
            MailboxResponse::Error(e) => {
                assert_eq!(e.kind, ErrorKind::BadRequest);
                assert!(e.message.contains(why), "{why}: {}", e.message);
            }
            other => panic!("{why}: {other:?}"),
        };
        let mut session = MailboxSession::new();
        // A proof before any challenge was drawn on this connection.
        let early = ReadProof::sign(&alice, &[0; CHALLENGE_LEN], &t).unwrap();
        refused(fetch_with(&mut session, Some(early)), "ask for it first");
        let challenge =
            |session: &mut MailboxSession| match handle(&s, session, MailboxRequest::Challenge) {
                MailboxResponse::Challenge { nonce } => {
                    <[u8; CHALLENGE_LEN]>::try_from(nonce.as_slice()).unwrap()
                }
                other => panic!("{other:?}"),
            };
        let c = challenge(&mut session);
        // The same challenge for the whole connection; another one for another connection.
        assert_eq!(challenge(&mut session), c);
        let mut other = MailboxSession::new();
        let c2 = challenge(&mut other);
        assert_ne!(c, c2);
        let good = ReadProof::sign(&alice, &c, &t).unwrap();
        match fetch_with(&mut session, Some(good.clone())) {
            MailboxResponse::Messages { items, members, .. } => {
                assert_eq!(items.len(), 1);
                assert_eq!(members, vec![pk(&alice)]);
            }
            other => panic!("{other:?}"),
        }
        // Replayed on another connection: refused.
        refused(fetch_with(&mut other, Some(good)), "does not verify");
        // For another topic: refused.
        let moved = ReadProof::sign(&alice, &c, &Topic([1; 16])).unwrap();
        refused(fetch_with(&mut session, Some(moved)), "does not verify");
        // A stranger's valid proof: not a member.
        let stranger_proof = ReadProof::sign(&stranger, &c, &t).unwrap();
        refused(
            fetch_with(&mut session, Some(stranger_proof)),
            "not a member",
        );
        refused(fetch_with(&mut session, None), "members only");
    }

    fn topics_without_members_stay_open_until_they_expire(backend: Backend) {
        // What an older parent stored: a topic with no member rows.
        let Some((_db, s)) = store(backend) else {
            return;
        };
        let k = key();
        let t = Topic([3; 16]);
        post(&s, &k, t, b"old").unwrap();
        s.engine
            .write(("begin", "commit"), |rows| rows.forget_all_members())
            .unwrap();
        assert_eq!(s.fetch(&t, 0, 0, None).unwrap().items.len(), 1);
        assert!(s.fetch(&t, 0, 0, None).unwrap().members.is_empty());
        // Anyone may post there, as before.
        s.post(&t, &envelope(&key(), t, b"more"), &[]).unwrap();
    }

    fn the_sweep_deletes_what_the_retention_expired(backend: Backend) {
        let hour = 3600 * 1000;
        let config = MailboxConfig {
            retention: Duration::from_secs(3600),
            ..MailboxConfig::default()
        };
        let Some((_db, s)) = store_with(backend, &config) else {
            return;
        };
        let k = key();
        let (old, mixed, young) = (Topic([1; 16]), Topic([2; 16]), Topic([3; 16]));
        let t0 = unix_now();
        let at = |t: Topic, body: &[u8], now: i64| {
            s.post_at(&t, &envelope(&k, t, body), &[pk(&k)], now)
                .unwrap()
        };
        at(old, b"a", t0);
        at(old, b"b", t0 + 1000);
        at(mixed, b"c", t0);
        at(mixed, b"d", t0 + hour / 2);
        at(young, b"e", t0 + hour / 2);
        let bytes =
            |t: &Topic| -> u64 { s.engine.read(|rows| rows.topic_bytes(t)).unwrap().unwrap() };
        let mixed_before = bytes(&mixed);
        // Just before the first envelopes expire: nothing goes.
        let none = s.sweep_now(t0 + hour).unwrap();
        assert_eq!(none, Swept::default());
        // Later: `old` is gone with its members, `mixed` keeps its young envelope (and its
        // sequence numbering), `young` is whole.
        let swept = s.sweep_now(t0 + hour + 2000).unwrap();
        assert_eq!(
            swept,
            Swept {
                messages: 3,
                topics: 1
            }
        );
        assert_eq!(s.topic_count().unwrap(), 2);
        let members = s
            .engine
            .read(|rows| rows.member_rows(old.as_slice()))
            .unwrap();
        assert_eq!(members, 0);
        let now = t0 + hour + 3000;
        let reader = public_key_bytes(&k);
        let page = s.fetch_at(&mixed, 0, 0, Some(&reader), now).unwrap();
        assert_eq!(page.items.iter().map(|i| i.seq).collect::<Vec<_>>(), [2]);
        assert!(bytes(&mixed) < mixed_before);
        assert_eq!(
            bytes(&mixed),
            u64::try_from(page.items[0].envelope.len()).unwrap()
        );
        assert_eq!(at(mixed, b"f", now), 3);
        assert!(
            s.fetch_at(&old, 0, 0, Some(&reader), now)
                .unwrap()
                .items
                .is_empty()
        );
        // A request finds the sweep due on its own: a post an hour later deletes the rest.
        at(Topic([4; 16]), b"g", t0 + 3 * hour);
        assert_eq!(s.topic_count().unwrap(), 1);
        // An expired topic can be founded again, from sequence number 1.
        assert_eq!(at(old, b"h", t0 + 3 * hour), 1);
    }

    fn a_flooder_meets_its_own_quota_and_others_still_post(backend: Backend) {
        let quota = SenderQuota {
            window: Duration::from_secs(3600),
            messages: 5,
            bytes: 4000,
            topics: 2,
        };
        let (exempt, flooder, member) = (key(), key(), key());
        let config = MailboxConfig {
            quota,
            quota_exempt: vec![public_key_bytes(&exempt)],
            ..MailboxConfig::default()
        };
        let Some((_db, s)) = store_with(backend, &config) else {
            return;
        };
        let t0 = unix_now();
        let t = Topic([1; 16]);
        let members = [pk(&flooder), pk(&member), pk(&exempt)];
        let post_at = |k: &SigningKey, t: Topic, body: &[u8], now: i64| {
            s.post_at(&t, &envelope(k, t, body), &members, now)
        };
        // Envelopes: five, then the sixth is refused, precisely and cheaply.
        for i in 0..5u8 {
            post_at(&flooder, t, &[i], t0).unwrap();
        }
        let err = post_at(&flooder, t, b"6", t0 + 1000).unwrap_err();
        match &err {
            ParentError::QuotaExceeded {
                sender,
                what,
                max,
                window_secs,
                retry_after_secs,
            } => {
                assert_eq!(sender, &hex::encode(public_key_bytes(&flooder)));
                assert_eq!((*what, *max, *window_secs), ("envelopes", 5, 3600));
                assert_eq!(*retry_after_secs, 3599);
            }
            other => panic!("{other:?}"),
        }
        // Through the wire: `Busy`, one line naming the quota.
        let r = handle(
            &s,
            &mut MailboxSession::new(),
            MailboxRequest::Post {
                topic: t,
                envelope: ByteBuf::from(envelope(&flooder, t, b"7")),
                members: vec![],
            },
        );
        assert!(
            matches!(&r, MailboxResponse::Error(e) if e.kind == ErrorKind::Busy
                && e.message.contains("quota") && e.kind.is_retryable()),
            "{r:?}"
        );
        // A duplicate costs nothing and is still answered.
        assert_eq!(
            s.post_at(&t, &envelope(&flooder, t, &[0]), &[], t0 + 1000)
                .unwrap(),
            1
        );
        // Another sender is not affected, nor is an exempt one.
        assert_eq!(post_at(&member, t, b"mine", t0 + 1000).unwrap(), 6);
        for i in 0..10u8 {
            post_at(&exempt, t, &[b'p', i], t0 + 1000).unwrap();
        }
        // Bytes and founded topics have their quotas too.
        let (bytes, topics) = (key(), key());
        let err = s
            .post_at(
                &Topic([2; 16]),
                &envelope(&bytes, Topic([2; 16]), &[0; 3000]),
                &[pk(&bytes)],
                t0,
            )
            .and_then(|_| {
                s.post_at(
                    &Topic([2; 16]),
                    &envelope(&bytes, Topic([2; 16]), &[1; 3000]),
                    &[],
                    t0,
                )
            })
            .unwrap_err();
        assert!(err.to_string().contains("envelope bytes"), "{err}");
        for i in 0..2u8 {
            s.post_at(
                &Topic([10 + i; 16]),
                &envelope(&topics, Topic([10 + i; 16]), b"x"),
                &[pk(&topics)],
                t0,
            )
            .unwrap();
        }
        let err = s
            .post_at(
                &Topic([12; 16]),
                &envelope(&topics, Topic([12; 16]), b"x"),
                &[pk(&topics)],
                t0,
            )
            .unwrap_err();
        assert!(err.to_string().contains("topics founded"), "{err}");
        // The next window: the flooder may post again.
        assert_eq!(post_at(&flooder, t, b"6", t0 + 3_600_000).unwrap(), 17);
    }

    /// Parent threads posting to one topic at once (each with its own sender), and founding
    /// topics at once, through two stores on one database (two parents' pools, or two SQLite
    /// connections): every post gets its own number, the numbers are 1..=N without a gap, and
    /// the topic's byte count is the sum of what is stored. On PostgreSQL this is the mailbox's
    /// advisory lock at work across connections and pools.
    fn concurrent_posts_to_one_topic_get_unique_gap_free_numbers(backend: Backend) {
        let Some((_db, database)) = database_for(backend) else {
            return;
        };
        let s = open_mailbox(backend, &database, &MailboxConfig::default());
        let other = open_mailbox(backend, &database, &MailboxConfig::default());
        let (threads, each) = (6, 8);
        let senders: Vec<SigningKey> = (0..threads).map(|_| key()).collect();
        let members: Vec<ByteBuf> = senders.iter().map(pk).collect();
        let t = Topic([9; 16]);
        let mut seqs: Vec<u64> = std::thread::scope(|scope| {
            let handles: Vec<_> = senders
                .iter()
                .enumerate()
                .map(|(i, k)| {
                    let members = &members;
                    let s = if i % 2 == 0 { &s } else { &other };
                    scope.spawn(move || {
                        let mut mine = Vec::new();
                        for j in 0..each {
                            let body = [i as u8, j as u8];
                            mine.push(s.post(&t, &envelope(k, t, &body), members).unwrap());
                            // And a topic of its own, founded while the others post.
                            let own = Topic([i as u8 + 100; 16]);
                            s.post(&own, &envelope(k, own, &body), &[pk(k)]).unwrap();
                        }
                        mine
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        });
        seqs.sort_unstable();
        let expected: Vec<u64> = (1..=(threads * each) as u64).collect();
        assert_eq!(seqs, expected);
        let page = fetch(&s, &senders[0], &t, 0, 0);
        assert_eq!(page.items.len(), threads * each);
        let stored: u64 = page.items.iter().map(|i| i.envelope.len() as u64).sum();
        assert_eq!(
            s.engine.read(|rows| rows.topic_bytes(&t)).unwrap(),
            Some(stored)
        );
        assert_eq!(s.topic_count().unwrap(), 1 + threads as u64);
    }

    #[test]
    fn quotas_must_leave_the_global_caps_far_above_one_sender() {
        let limits = MailboxLimits::default();
        check_headroom(&SenderQuota::default(), DEFAULT_RETENTION, &limits).unwrap();
        // A day's retention in hourly windows: 25 windows of 64 MiB is more than 2 GiB / 8.
        let hourly = SenderQuota {
            window: Duration::from_secs(3600),
            ..SenderQuota::default()
        };
        let err = check_headroom(&hourly, DEFAULT_RETENTION, &limits).unwrap_err();
        assert!(err.to_string().contains("quota_bytes"), "{err}");
        let small = SenderQuota {
            bytes: 8 << 20,
            topics: 64,
            ..hourly
        };
        check_headroom(&small, DEFAULT_RETENTION, &limits).unwrap();
    }

    #[test]
    fn the_mailbox_shares_the_blob_stores_file() {
        use crate::store::Store;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        let blobs = SqliteStore::open(&path).unwrap();
        blobs.put("wallet/a", b"sealed").unwrap();
        let mailbox = MailboxStore::open(&path).unwrap();
        let k = key();
        post(&mailbox, &k, Topic([1; 16]), b"m").unwrap();
        drop((blobs, mailbox));
        // Reopened in the other order: both still there.
        let mailbox = MailboxStore::open(&path).unwrap();
        assert_eq!(fetch(&mailbox, &k, &Topic([1; 16]), 0, 0).items.len(), 1);
        let blobs = SqliteStore::open(&path).unwrap();
        assert_eq!(blobs.get("wallet/a").unwrap().unwrap(), b"sealed");
        // A file that is not a parent store is refused, as the blob store refuses it; a missing
        // one is not created (the blob store creates it).
        let foreign = dir.path().join("foreign.db");
        std::fs::write(&foreign, b"not sqlite at all, not even close......").unwrap();
        assert!(MailboxStore::open(&foreign).is_err());
        let other = dir.path().join("other.db");
        crate::store::execute_sql(&other, "CREATE TABLE notes (body TEXT);");
        let err = MailboxStore::open(&other).unwrap_err();
        assert!(err.to_string().contains("blob store creates it"), "{err}");
        assert!(MailboxStore::open(&dir.path().join("missing.db")).is_err());
        assert!(!dir.path().join("missing.db").exists());
    }

    fn the_frame_loop_answers_and_drops_garbage(backend: Backend) {
        let Some((_db, s)) = store(backend) else {
            return;
        };
        let k = key();
        let t = Topic([1; 16]);
        let mut input = Vec::new();
        for r in [
            MailboxRequest::Post {
                topic: t,
                envelope: ByteBuf::from(envelope(&k, t, b"a")),
                members: vec![pk(&k)],
            },
            MailboxRequest::Fetch {
                topic: t,
                after: 0,
                limit: 0,
                proof: None,
            },
            MailboxRequest::Challenge,
        ] {
            write_frame(&mut input, &encode_request(&r).unwrap()).unwrap();
        }
        write_frame(&mut input, b"\xff\x00garbage").unwrap();
        // Never read: the connection ends at the garbage.
        write_frame(
            &mut input,
            &encode_request(&MailboxRequest::Challenge).unwrap(),
        )
        .unwrap();
        let mut output = Vec::new();
        let stream = Duplexed {
            input: input.as_slice(),
            output: &mut output,
        };
        let err = serve_mailbox(stream, &s).unwrap_err();
        assert!(matches!(err, ParentError::BadRequest { .. }), "{err:?}");
        let mut out = output.as_slice();
        let mut answers = Vec::new();
        while let Some(f) = read_frame(&mut out).unwrap() {
            answers.push(decode_response(&f).unwrap());
        }
        assert_eq!(answers.len(), 4);
        assert_eq!(answers[0], MailboxResponse::Posted { seq: 1 });
        assert!(
            matches!(&answers[1], MailboxResponse::Error(e) if e.message.contains("members only"))
        );
        assert!(
            matches!(&answers[2], MailboxResponse::Challenge { nonce } if nonce.len() == CHALLENGE_LEN)
        );
        assert!(
            matches!(&answers[3], MailboxResponse::Error(e) if e.kind == ErrorKind::BadRequest && e.message.contains("undecodable"))
        );
    }

    fn ask(stream: &mut (impl Read + Write), request: &MailboxRequest) -> MailboxResponse {
        write_frame(stream, &encode_request(request).unwrap()).unwrap();
        decode_response(&read_frame(stream).unwrap().expect("an answer")).unwrap()
    }

    fn signed_fetch(
        stream: &mut (impl Read + Write),
        k: &SigningKey,
        t: Topic,
        after: u64,
        limit: u32,
    ) -> MailboxResponse {
        let nonce = match ask(stream, &MailboxRequest::Challenge) {
            MailboxResponse::Challenge { nonce } => nonce,
            other => panic!("{other:?}"),
        };
        let challenge = <[u8; CHALLENGE_LEN]>::try_from(nonce.as_slice()).unwrap();
        ask(
            stream,
            &MailboxRequest::Fetch {
                topic: t,
                after,
                limit,
                proof: Some(ReadProof::sign(k, &challenge, &t).unwrap()),
            },
        )
    }

    fn the_parent_serves_the_mailbox_on_tcp(backend: Backend) {
        let Some((_db, database)) = database_for(backend) else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let config = crate::Config::from_toml(&format!(
            "listen = \"127.0.0.1:0\"\nenclave = \"unix:{d}/enclave.sock\"\n\
             store_socket = \"{d}/store.sock\"\ndatabase = \"{database}\"\n\
             mailbox_listen = \"127.0.0.1:0\"\n"
        ))
        .unwrap();
        let running = crate::Parent::new(config).unwrap().start().unwrap();
        let addr = running.mailbox_addr().expect("a mailbox address");
        assert_ne!(addr, running.client_addr());
        let mut conn = std::net::TcpStream::connect(addr).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let k = key();
        let t = Topic([4; 16]);
        for i in 1..=3u64 {
            let r = ask(
                &mut conn,
                &MailboxRequest::Post {
                    topic: t,
                    envelope: ByteBuf::from(envelope(&k, t, &[i as u8])),
                    members: vec![pk(&k)],
                },
            );
            assert_eq!(r, MailboxResponse::Posted { seq: i });
        }
        match signed_fetch(&mut conn, &k, t, 1, 0) {
            MailboxResponse::Messages { items, more, .. } => {
                assert!(!more);
                assert_eq!(items.iter().map(|i| i.seq).collect::<Vec<_>>(), [2, 3]);
                let e = Envelope::open(&items[1].envelope, &t).unwrap();
                assert_eq!(e.body.as_slice(), &[3]);
            }
            other => panic!("{other:?}"),
        }
        // A refused post keeps the connection; garbage ends it with one error.
        let r = ask(
            &mut conn,
            &MailboxRequest::Post {
                topic: t,
                envelope: ByteBuf::from(b"junk".to_vec()),
                members: vec![],
            },
        );
        assert!(matches!(r, MailboxResponse::Error(ref e) if e.kind == ErrorKind::BadRequest));
        write_frame(&mut conn, b"\x00\x01\x02").unwrap();
        let r = decode_response(&read_frame(&mut conn).unwrap().unwrap()).unwrap();
        assert!(matches!(r, MailboxResponse::Error(ref e) if e.message.contains("undecodable")));
        assert!(read_frame(&mut conn).unwrap().is_none());
        // A second connection sees what the first stored.
        let mut other = std::net::TcpStream::connect(addr).unwrap();
        other
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let r = signed_fetch(&mut other, &k, t, 0, 1);
        assert!(
            matches!(r, MailboxResponse::Messages { ref items, more: true, .. } if items.len() == 1)
        );
        running.shutdown();
    }

    #[test]
    fn the_parent_serves_the_mailbox_in_tls_with_a_certificate_it_made() {
        use cosigner_client::mailbox::MailboxClient;

        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let text = format!(
            "listen = \"127.0.0.1:0\"\nenclave = \"unix:{d}/enclave.sock\"\n\
             store_socket = \"{d}/store.sock\"\ndatabase = \"{d}/store.db\"\n\
             mailbox_listen = \"127.0.0.1:0\"\n\
             [mailbox]\ntls_certificate = \"{d}/mailbox.crt\"\ntls_key = \"{d}/mailbox.key\"\n"
        );
        let config = crate::Config::from_toml(&text).unwrap();
        let running = crate::Parent::new(config).unwrap().start().unwrap();
        let addr = running.mailbox_addr().unwrap();
        // Made at first start: the key private to its owner, the pin the certificate's hash.
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("mailbox.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let pin = certificate_pin(&dir.path().join("mailbox.crt")).unwrap();
        let k = key();
        let t = Topic([6; 16]);
        let mut client = MailboxClient::connect(&format!("tls://{addr}#{pin}"))
            .unwrap()
            .as_member(k.clone(), vec![public_key_bytes(&k)])
            .unwrap();
        let e = Envelope::seal(&k, t, b"over TLS".to_vec()).unwrap();
        assert_eq!(client.post(&e).unwrap(), 1);
        assert_eq!(client.fetch(&t, 0).unwrap(), vec![(1, e)]);
        // Another pin: the handshake fails; plain TCP gets no answer but a closed connection.
        let wrong = format!("tls://{addr}#sha256:{}", "00".repeat(32));
        assert!(MailboxClient::connect(&wrong).is_err());
        let mut plain = std::net::TcpStream::connect(addr).unwrap();
        plain
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        write_frame(
            &mut plain,
            &encode_request(&MailboxRequest::Challenge).unwrap(),
        )
        .unwrap();
        assert!(!matches!(read_frame(&mut plain), Ok(Some(_))));
        running.shutdown();
        // Restarted: the same certificate (members keep their pin).
        let config = crate::Config::from_toml(&text).unwrap();
        let store = MailboxStore::open_for(&config).unwrap();
        assert_eq!(store.tls_pin(), Some(pin));
        // Half a pair is not replaced.
        std::fs::remove_file(dir.path().join("mailbox.key")).unwrap();
        let err = MailboxStore::open_for(&config).unwrap_err();
        assert!(err.to_string().contains("is missing"), "{err}");
    }

    /// Each configuration `base` followed by `bad` is refused, the error saying `why`.
    fn assert_refused(base: &str, cases: &[(&str, &str)]) {
        for (bad, why) in cases {
            let err = crate::Config::from_toml(&format!("{base}{bad}")).unwrap_err();
            assert!(err.to_string().contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn mailbox_listen_is_optional_and_checked() {
        let base = "listen = \"127.0.0.1:7000\"\nenclave = \"unix:/run/e.sock\"\n\
                    store_socket = \"/run/s.sock\"\ndatabase = \"/var/lib/c/store.db\"\n";
        assert_eq!(crate::Config::from_toml(base).unwrap().mailbox_listen, None);
        let with =
            crate::Config::from_toml(&format!("{base}mailbox_listen = \"[::]:7002\"\n")).unwrap();
        assert_eq!(with.mailbox_listen, Some("[::]:7002".parse().unwrap()));
        assert_refused(
            base,
            &[
                ("mailbox_listen = \"localhost:7002\"\n", "expected IP:PORT"),
                ("mailbox_listen = \"127.0.0.1\"\n", "expected IP:PORT"),
                ("mailbox_listen = \"127.0.0.1:7000\"\n", "same address"),
                ("mailbox_listen = \"0.0.0.0:7000\"\n", "same address"),
                ("mailbox_listen = 7002\n", "invalid type"),
            ],
        );
    }

    #[test]
    fn the_mailbox_table_configures_retention_quotas_and_tls() {
        let base = "listen = \"127.0.0.1:7000\"\nenclave = \"unix:/run/e.sock\"\n\
                    store_socket = \"/run/s.sock\"\ndatabase = \"/var/lib/c/store.db\"\n\
                    mailbox_listen = \"127.0.0.1:7002\"\n";
        assert_eq!(
            crate::Config::from_toml(base).unwrap().mailbox,
            MailboxConfig::default()
        );
        let provider = public_key_bytes(&key());
        let c = crate::Config::from_toml(&format!(
            "{base}[mailbox]\nretention_seconds = 7200\nquota_window_seconds = 3600\n\
             quota_messages = 100\nquota_bytes = 1048576\nquota_topics = 10\n\
             quota_exempt = [\"{}\"]\ntls_certificate = \"m.crt\"\ntls_key = \"m.key\"\n",
            hex::encode(&provider)
        ))
        .unwrap()
        .mailbox;
        assert_eq!(
            c,
            MailboxConfig {
                retention: Duration::from_secs(7200),
                quota: SenderQuota {
                    window: Duration::from_secs(3600),
                    messages: 100,
                    bytes: 1 << 20,
                    topics: 10,
                },
                quota_exempt: vec![provider],
                tls: Some(MailboxTls {
                    certificate: "m.crt".into(),
                    key: "m.key".into(),
                }),
            }
        );
        assert_refused(
            &format!("{base}[mailbox]\n"),
            &[
                ("retention_seconds = 60\n", "mailbox.retention_seconds"),
                ("retention_seconds = 99999999\n", "30 days"),
                ("quota_window_seconds = 1\n", "mailbox.quota_window_seconds"),
                ("quota_messages = 0\n", "mailbox.quota_messages"),
                ("quota_bytes = 1000\n", "at least one envelope"),
                ("quota_bytes = 1073741824\n", "more than 1/8"),
                ("quota_topics = 50000\n", "more than 1/8"),
                ("quota_exempt = [\"02ab\"]\n", "66 hex digits"),
                ("tls_certificate = \"m.crt\"\n", "both"),
                ("unknown = 1\n", "unknown field"),
            ],
        );
        // Relative TLS paths are resolved against the configuration's directory.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("parent.toml");
        std::fs::write(
            &file,
            format!("{base}[mailbox]\ntls_certificate = \"m.crt\"\ntls_key = \"k/m.key\"\n"),
        )
        .unwrap();
        let tls = crate::Config::load(&file).unwrap().mailbox.tls.unwrap();
        assert_eq!(tls.certificate, dir.path().join("m.crt"));
        assert_eq!(tls.key, dir.path().join("k/m.key"));
    }

    struct Duplexed<'a> {
        input: &'a [u8],
        output: &'a mut Vec<u8>,
    }

    impl Read for Duplexed<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.input.read(buf)
        }
    }

    impl Write for Duplexed<'_> {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.output.write(buf)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
}
