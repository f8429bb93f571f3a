//! The mailbox: signed envelopes that wallet members leave for each other, hosted by the parent.
//!
//! Members of a DAO wallet run their ceremonies asynchronously: each posts
//! [`Envelope`](cosigner_protocol::mailbox::Envelope)s to a topic and fetches the others'. The
//! parent is untrusted here as everywhere: envelopes are signed by their senders and readers
//! verify every one they fetch, so the mailbox can drop, delay, reorder or replay them but not
//! forge or alter one. Its own duties are durability, order (a sequence number per topic), and
//! refusing what would let a stranger grow it without bound.
//!
//! * [`MailboxStore`]: two tables in the parent's SQLite database (the blob store's file, WAL,
//!   `synchronous = FULL`): `mailbox_topics(topic, last_seq, bytes, created_at)` and
//!   `mailbox_messages(topic, seq, id, sender, envelope, posted_at)` with `(topic, id)` unique.
//!   The tables are added beside `blobs` (`CREATE TABLE IF NOT EXISTS`); the schema version of the
//!   file does not change, and a build without the mailbox ignores them.
//! * [`handle`]: one [`MailboxRequest`] in, one [`MailboxResponse`] out. A post is decoded, its
//!   signature verified and its topic compared with the request's before anything is stored;
//!   a post of an envelope already in the topic (same [`Envelope::id`]) answers the existing
//!   sequence number. Caps ([`MailboxLimits`]): [`MAX_ENVELOPE`] bytes per envelope,
//!   [`MAX_MESSAGES_PER_TOPIC`], [`MAX_TOPICS`], [`MAX_TOTAL_BYTES`], [`MAX_PAGE`] items and a
//!   frame's worth of bytes per fetch.
//! * [`serve_mailbox`]: the frame loop on one connection. A malformed frame or request is
//!   answered with one `Error(BadRequest)` and the connection is closed; a well-formed request
//!   that is refused is answered with an error and the connection stays open.
//! * [`MailboxListener`]: the TCP listener (`mailbox_listen` in the configuration); its
//!   connections time out after [`IDLE_TIMEOUT`] without a request.

use std::io::{self, Read, Write};
use std::net::TcpListener;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cosigner_protocol::ProtocolError;
use cosigner_protocol::frame::{MAX_FRAME_LEN, read_frame, write_frame};
use cosigner_protocol::mailbox::{
    Envelope, MAX_ENVELOPE, MAX_PAGE, MailboxItem, MailboxRequest, MailboxResponse, Topic,
    decode_request, encode_response,
};
use cosigner_protocol::wire::{ErrorKind, WireError};
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};
use serde_bytes::ByteBuf;
use sha2::{Digest, Sha256};

use crate::error::{ParentError, Result};
use crate::relay::{Conn, Listen};
use crate::store::{APPLICATION_ID, SCHEMA_VERSION};

/// Most envelopes one topic holds (a ceremony of 64 members needs a few hundred).
pub const MAX_MESSAGES_PER_TOPIC: u64 = 4096;
/// Most topics the mailbox holds.
pub const MAX_TOPICS: u64 = 100_000;
/// Most envelope bytes the mailbox holds in all (2 GiB).
pub const MAX_TOTAL_BYTES: u64 = 2 << 30;
/// A connection with no request for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long writing one response may block on a peer that does not read.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Envelope bytes in one `Messages` page: a frame less room for the items' framing.
const PAGE_BYTES: usize = MAX_FRAME_LEN - 16 * 1024;
/// Room counted per item on top of its envelope (sequence number, CBOR keys and headers).
const ITEM_OVERHEAD: usize = 32;
/// How long a write waits for another connection's lock (the blob store's) before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The mailbox's caps; [`Default`] gives the documented constants.
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

/// The mailbox's tables in the parent's SQLite database.
#[derive(Debug)]
pub struct MailboxStore {
    conn: Mutex<Connection>,
    limits: MailboxLimits,
}

/// One page of a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// The envelopes, in sequence order.
    pub items: Vec<MailboxItem>,
    /// The topic holds more after the last item.
    pub more: bool,
}

impl MailboxStore {
    /// Opens the mailbox in the parent's database at `path`, which the blob store
    /// ([`crate::store::SqliteStore::open`]) must have created already (the parent opens it
    /// first): its marks and WAL mode are checked, then the mailbox tables are created if absent.
    /// Default limits.
    ///
    /// This deliberately does not call `SqliteStore::open` again: that opens and closes a plain
    /// file descriptor on the database, and closing any descriptor of a file drops every POSIX
    /// lock the process holds on it, the blob store connection's included; another process
    /// (an operator's `sqlite3`, a test) could then take the file for its last user, checkpoint
    /// and delete the WAL under the running parent, whose connections would stop seeing later
    /// writes. Only SQLite's own opens (which share locks per file within a process) happen here.
    pub fn open(path: &Path) -> Result<MailboxStore> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| ParentError::db("open mailbox", &e))?;
        let schema = |reason: String| ParentError::Schema {
            path: path.to_path_buf(),
            reason,
        };
        let app: i64 = conn
            .pragma_query_value(None, "application_id", |r| r.get(0))
            .map_err(|e| schema(format!("not a SQLite database ({e})")))?;
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(|e| ParentError::db("read user_version", &e))?;
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
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| ParentError::db("busy_timeout", &e))?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(|e| ParentError::db("set synchronous", &e))?;
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
             COMMIT;",
        )
        .map_err(|e| ParentError::db("create mailbox tables", &e))?;
        Ok(MailboxStore {
            conn: Mutex::new(conn),
            limits: MailboxLimits::default(),
        })
    }

    /// The same store with other caps (tests; an operator's build).
    pub fn with_limits(mut self, limits: MailboxLimits) -> MailboxStore {
        self.limits = limits;
        self
    }

    /// The caps in force.
    pub fn limits(&self) -> MailboxLimits {
        self.limits
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // Every write is one transaction: a panic while holding the lock leaves none half done.
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stores an encoded envelope posted to `topic` and returns its sequence number there.
    ///
    /// Refused ([`ParentError::BadRequest`], [`ParentError::ValueTooLarge`],
    /// [`ParentError::MailboxFull`]): over [`MAX_ENVELOPE`] bytes, undecodable, a signature that
    /// does not verify, another topic than the envelope's, a full topic or mailbox. An envelope
    /// already in the topic answers its existing sequence number and stores nothing.
    pub fn post(&self, topic: &Topic, envelope: &[u8]) -> Result<u64> {
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
        // `decode` accepts only the canonical encoding, so this is `Envelope::id`.
        let id: [u8; 32] = Sha256::digest(envelope).into();
        let len = u64::try_from(envelope.len()).unwrap_or(u64::MAX);
        let limits = self.limits;
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| ParentError::db("begin post", &e))?;
        let db = |e: rusqlite::Error| ParentError::db("post", &e);
        let existing: Option<u64> = tx
            .query_row(
                "SELECT seq FROM mailbox_messages WHERE topic = ?1 AND id = ?2",
                params![topic.as_slice(), id.as_slice()],
                |r| r.get(0),
            )
            .optional()
            .map_err(db)?;
        if let Some(seq) = existing {
            return Ok(seq);
        }
        let total: u64 = tx
            .query_row(
                "SELECT coalesce(sum(bytes), 0) FROM mailbox_topics",
                [],
                |r| r.get(0),
            )
            .map_err(db)?;
        if total.saturating_add(len) > limits.max_total_bytes {
            return Err(ParentError::MailboxFull {
                what: "envelope bytes stored",
                max: limits.max_total_bytes,
            });
        }
        let last: Option<u64> = tx
            .query_row(
                "SELECT last_seq FROM mailbox_topics WHERE topic = ?1",
                [topic.as_slice()],
                |r| r.get(0),
            )
            .optional()
            .map_err(db)?;
        let now = unix_now();
        let last = match last {
            Some(last) => last,
            None => {
                let topics: u64 = tx
                    .query_row("SELECT count(*) FROM mailbox_topics", [], |r| r.get(0))
                    .map_err(db)?;
                if topics >= limits.max_topics {
                    return Err(ParentError::MailboxFull {
                        what: "topics",
                        max: limits.max_topics,
                    });
                }
                tx.execute(
                    "INSERT INTO mailbox_topics (topic, last_seq, bytes, created_at)
                     VALUES (?1, 0, 0, ?2)",
                    params![topic.as_slice(), now],
                )
                .map_err(db)?;
                0
            }
        };
        if last >= limits.max_messages_per_topic {
            return Err(ParentError::MailboxFull {
                what: "envelopes in this topic",
                max: limits.max_messages_per_topic,
            });
        }
        let seq = last + 1;
        tx.execute(
            "INSERT INTO mailbox_messages (topic, seq, id, sender, envelope, posted_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                topic.as_slice(),
                seq,
                id.as_slice(),
                decoded.sender.as_slice(),
                envelope,
                now
            ],
        )
        .map_err(db)?;
        tx.execute(
            "UPDATE mailbox_topics SET last_seq = ?2, bytes = bytes + ?3 WHERE topic = ?1",
            params![topic.as_slice(), seq, len],
        )
        .map_err(db)?;
        tx.commit()
            .map_err(|e| ParentError::db("commit post", &e))?;
        Ok(seq)
    }

    /// The envelopes of `topic` with a sequence number above `after`, in order: at most `limit`
    /// (0, or more than the cap: the cap) and at most a frame's worth of bytes (always at least
    /// one when there is one). An unknown topic is an empty page.
    pub fn fetch(&self, topic: &Topic, after: u64, limit: u32) -> Result<Page> {
        let cap = self.limits.max_page.max(1);
        let limit = if limit == 0 { cap } else { limit.min(cap) };
        let conn = self.conn();
        let db = |e: rusqlite::Error| ParentError::db("fetch", &e);
        let mut stmt = conn
            .prepare_cached(
                "SELECT seq, envelope FROM mailbox_messages
                 WHERE topic = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
            )
            .map_err(db)?;
        // One row more than the page, to tell whether there is more.
        let mut rows = stmt
            .query(params![
                topic.as_slice(),
                // SQLite integers are i64; no sequence number is above i64::MAX.
                after.min(i64::MAX as u64),
                u64::from(limit) + 1
            ])
            .map_err(db)?;
        let mut items = Vec::new();
        let mut bytes = 0usize;
        let mut more = false;
        while let Some(row) = rows.next().map_err(db)? {
            let seq: u64 = row.get(0).map_err(db)?;
            let envelope: Vec<u8> = row.get(1).map_err(db)?;
            let size = envelope.len() + ITEM_OVERHEAD;
            if items.len() >= limit as usize || (!items.is_empty() && bytes + size > PAGE_BYTES) {
                more = true;
                break;
            }
            bytes += size;
            items.push(MailboxItem {
                seq,
                envelope: ByteBuf::from(envelope),
            });
        }
        Ok(Page { items, more })
    }

    /// How many topics the mailbox holds.
    pub fn topic_count(&self) -> Result<u64> {
        self.conn()
            .query_row("SELECT count(*) FROM mailbox_topics", [], |r| r.get(0))
            .map_err(|e| ParentError::db("count topics", &e))
    }
}

/// Answers one request. Refusals of the request are `BadRequest`, store failures `Internal`; the
/// message is one line.
pub fn handle(store: &MailboxStore, request: MailboxRequest) -> MailboxResponse {
    let result = match request {
        MailboxRequest::Post { topic, envelope } => store
            .post(&topic, &envelope)
            .map(|seq| MailboxResponse::Posted { seq }),
        MailboxRequest::Fetch {
            topic,
            after,
            limit,
        } => store
            .fetch(&topic, after, limit)
            .map(|page| MailboxResponse::Messages {
                items: page.items,
                more: page.more,
            }),
        // A request variant added to the protocol after this build.
        _ => Err(ParentError::BadRequest {
            reason: "unsupported mailbox request".into(),
        }),
    };
    result.unwrap_or_else(|e| {
        let kind = match e {
            ParentError::BadRequest { .. }
            | ParentError::ValueTooLarge { .. }
            | ParentError::MailboxFull { .. } => ErrorKind::BadRequest,
            _ => ErrorKind::Internal,
        };
        MailboxResponse::Error(WireError::new(kind, one_line(&e.to_string())))
    })
}

/// Serves mailbox requests on `stream` until the peer closes it or stays idle past the stream's
/// read timeout (`Ok`), or breaks the protocol (answered with `Error(BadRequest)`, then
/// [`ParentError::BadRequest`]). Never panics on input.
pub fn serve_mailbox<S: Read + Write>(mut stream: S, store: &MailboxStore) -> Result<()> {
    loop {
        let frame = match read_frame(&mut stream) {
            Ok(Some(frame)) => frame,
            Ok(None) => return Ok(()),
            Err(ProtocolError::Io(reason)) => {
                return Err(ParentError::Io {
                    what: "reading a mailbox request".into(),
                    reason,
                });
            }
            Err(e) => return Err(refuse(&mut stream, e.to_string())),
        };
        let request = match decode_request(&frame) {
            Ok(request) => request,
            Err(e) => {
                return Err(refuse(
                    &mut stream,
                    format!("undecodable mailbox request: {e}"),
                ));
            }
        };
        let response = handle(store, request);
        send(&mut stream, &response)?;
    }
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
/// gone), not worth a log line.
pub fn is_ordinary_end(e: &ParentError) -> bool {
    matches!(e, ParentError::Io { reason, .. }
        if ["timed out", "temporarily unavailable", "reset by peer", "Broken pipe"]
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

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Answers `Error(BadRequest)` as a last word and returns the error that ends the connection.
fn refuse(stream: &mut impl Write, reason: String) -> ParentError {
    let reason = one_line(&reason);
    let response = MailboxResponse::Error(WireError::new(ErrorKind::BadRequest, reason.clone()));
    let _ = send(stream, &response);
    ParentError::BadRequest { reason }
}

/// Encodes and writes one response; one that would not fit a frame is replaced by an `Internal`
/// error (pages are cut to fit, so this is a bug guard).
fn send(stream: &mut impl Write, response: &MailboxResponse) -> Result<()> {
    let body = match encode_response(response) {
        Ok(body) => body,
        Err(e) => encode_response(&MailboxResponse::Error(WireError::new(
            ErrorKind::Internal,
            one_line(&format!("cannot encode the response: {e}")),
        )))
        .map_err(|e| ParentError::Encode {
            reason: e.to_string(),
        })?,
    };
    write_frame(stream, &body).map_err(|e| ParentError::Io {
        what: "writing a mailbox response".into(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;
    use crate::store::SqliteStore;
    use cosigner_protocol::mailbox::{decode_response, encode_request};
    use p256::ecdsa::SigningKey;

    fn key() -> SigningKey {
        SigningKey::random(&mut rand_core::OsRng)
    }

    fn envelope(k: &SigningKey, topic: Topic, body: &[u8]) -> Vec<u8> {
        Envelope::seal(k, topic, body.to_vec())
            .unwrap()
            .encode()
            .unwrap()
    }

    fn store() -> (tempfile::TempDir, MailboxStore) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        drop(SqliteStore::open(&path).unwrap());
        let s = MailboxStore::open(&path).unwrap();
        (dir, s)
    }

    #[test]
    fn posts_get_sequence_numbers_and_fetch_pages_in_order() {
        let (_dir, s) = store();
        let k = key();
        let t = [1; 16];
        for i in 1..=5u64 {
            assert_eq!(s.post(&t, &envelope(&k, t, &[i as u8])).unwrap(), i);
        }
        // Another topic has its own numbering.
        assert_eq!(s.post(&[2; 16], &envelope(&k, [2; 16], b"x")).unwrap(), 1);
        let all = s.fetch(&t, 0, 0).unwrap();
        assert!(!all.more);
        assert_eq!(
            all.items.iter().map(|i| i.seq).collect::<Vec<_>>(),
            [1, 2, 3, 4, 5]
        );
        let first = Envelope::open(&all.items[0].envelope, &t).unwrap();
        assert_eq!(first.body.as_slice(), &[1]);
        let page = s.fetch(&t, 1, 2).unwrap();
        assert_eq!(page.items.iter().map(|i| i.seq).collect::<Vec<_>>(), [2, 3]);
        assert!(page.more);
        let last = s.fetch(&t, 3, 2).unwrap();
        assert_eq!(last.items.len(), 2);
        assert!(!last.more);
        assert!(s.fetch(&t, 5, 0).unwrap().items.is_empty());
        assert_eq!(
            s.fetch(&[9; 16], 0, 0).unwrap(),
            Page {
                items: vec![],
                more: false
            }
        );
        assert_eq!(s.topic_count().unwrap(), 2);
    }

    #[test]
    fn duplicates_answer_the_existing_sequence_number() {
        let (_dir, s) = store();
        let k = key();
        let t = [1; 16];
        let e = envelope(&k, t, b"hello");
        assert_eq!(s.post(&t, &e).unwrap(), 1);
        assert_eq!(s.post(&t, &envelope(&k, t, b"other")).unwrap(), 2);
        assert_eq!(s.post(&t, &e).unwrap(), 1);
        assert_eq!(s.fetch(&t, 0, 0).unwrap().items.len(), 2);
        // Sealing the same body again gives the same envelope (RFC 6979 signatures): still one.
        assert_eq!(s.post(&t, &envelope(&k, t, b"hello")).unwrap(), 1);
        // Another sender's identical body is another envelope.
        assert_eq!(s.post(&t, &envelope(&key(), t, b"hello")).unwrap(), 3);
    }

    #[test]
    fn bad_envelopes_are_refused_with_one_line() {
        let (_dir, s) = store();
        let k = key();
        let t = [1; 16];
        let mut tampered = Envelope::seal(&k, t, b"pay alice".to_vec()).unwrap();
        tampered.body = ByteBuf::from(b"pay mallory".to_vec());
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"garbage".to_vec(), "undecodable"),
            (vec![], "undecodable"),
            (tampered.encode().unwrap(), "does not verify"),
            (envelope(&k, [2; 16], b"x"), "posted to"),
            (vec![0; MAX_ENVELOPE + 1], "exceeds"),
        ];
        for (bytes, why) in cases {
            let r = handle(
                &s,
                MailboxRequest::Post {
                    topic: t,
                    envelope: ByteBuf::from(bytes),
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
        assert!(s.fetch(&t, 0, 0).unwrap().items.is_empty());
        assert_eq!(s.topic_count().unwrap(), 0);
    }

    #[test]
    fn caps_refuse_clearly() {
        let (_dir, s) = store();
        let s = s.with_limits(MailboxLimits {
            max_messages_per_topic: 2,
            max_topics: 2,
            max_total_bytes: 10_000,
            max_page: 3,
        });
        let k = key();
        let t = [1; 16];
        s.post(&t, &envelope(&k, t, b"1")).unwrap();
        s.post(&t, &envelope(&k, t, b"2")).unwrap();
        let err = s.post(&t, &envelope(&k, t, b"3")).unwrap_err();
        assert!(err.to_string().contains("envelopes in this topic"), "{err}");
        s.post(&[2; 16], &envelope(&k, [2; 16], b"x")).unwrap();
        let err = s.post(&[3; 16], &envelope(&k, [3; 16], b"x")).unwrap_err();
        assert!(err.to_string().contains("topics (at most 2)"), "{err}");
        let err = s
            .post(&[2; 16], &envelope(&k, [2; 16], &[0; 10_000]))
            .unwrap_err();
        assert!(err.to_string().contains("bytes stored"), "{err}");
        // A duplicate of a stored envelope is still answered when the topic is full.
        let e = envelope(&k, [2; 16], b"y");
        s.post(&[2; 16], &e).unwrap();
        assert_eq!(s.post(&[2; 16], &e).unwrap(), 2);
    }

    #[test]
    fn pages_respect_the_item_and_byte_caps() {
        let (_dir, s) = store();
        let s = s.with_limits(MailboxLimits {
            max_page: 3,
            ..MailboxLimits::default()
        });
        let k = key();
        let t = [1; 16];
        for i in 0..5u8 {
            s.post(&t, &envelope(&k, t, &[i])).unwrap();
        }
        let p = s.fetch(&t, 0, 100).unwrap();
        assert_eq!(p.items.len(), 3);
        assert!(p.more);
        // Large envelopes: one frame holds one of them, never none.
        let big = [5; 16];
        for i in 0..3u8 {
            s.post(&big, &envelope(&k, big, &vec![i; MAX_ENVELOPE - 300]))
                .unwrap();
        }
        let mut after = 0;
        let mut seen = 0;
        loop {
            let p = s.fetch(&big, after, 0).unwrap();
            assert_eq!(p.items.len(), 1);
            let bytes = encode_response(&MailboxResponse::Messages {
                items: p.items.clone(),
                more: p.more,
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

    #[test]
    fn the_mailbox_shares_the_blob_stores_file() {
        use crate::store::Store;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        let blobs = SqliteStore::open(&path).unwrap();
        blobs.put("wallet/a", b"sealed").unwrap();
        let mailbox = MailboxStore::open(&path).unwrap();
        let k = key();
        mailbox
            .post(&[1; 16], &envelope(&k, [1; 16], b"m"))
            .unwrap();
        drop((blobs, mailbox));
        // Reopened in the other order: both still there.
        let mailbox = MailboxStore::open(&path).unwrap();
        assert_eq!(mailbox.fetch(&[1; 16], 0, 0).unwrap().items.len(), 1);
        let blobs = SqliteStore::open(&path).unwrap();
        assert_eq!(blobs.get("wallet/a").unwrap().unwrap(), b"sealed");
        // A file that is not a parent store is refused, as the blob store refuses it; a missing
        // one is not created (the blob store creates it).
        let foreign = dir.path().join("foreign.db");
        std::fs::write(&foreign, b"not sqlite at all, not even close......").unwrap();
        assert!(MailboxStore::open(&foreign).is_err());
        let other = dir.path().join("other.db");
        let conn = Connection::open(&other).unwrap();
        conn.execute_batch("CREATE TABLE notes (body TEXT);")
            .unwrap();
        drop(conn);
        let err = MailboxStore::open(&other).unwrap_err();
        assert!(err.to_string().contains("blob store creates it"), "{err}");
        assert!(MailboxStore::open(&dir.path().join("missing.db")).is_err());
        assert!(!dir.path().join("missing.db").exists());
    }

    #[test]
    fn the_frame_loop_answers_and_drops_garbage() {
        let (_dir, s) = store();
        let k = key();
        let t = [1; 16];
        let mut input = Vec::new();
        for r in [
            MailboxRequest::Post {
                topic: t,
                envelope: ByteBuf::from(envelope(&k, t, b"a")),
            },
            MailboxRequest::Fetch {
                topic: t,
                after: 0,
                limit: 0,
            },
        ] {
            write_frame(&mut input, &encode_request(&r).unwrap()).unwrap();
        }
        write_frame(&mut input, b"\xff\x00garbage").unwrap();
        // Never read: the connection ends at the garbage.
        write_frame(
            &mut input,
            &encode_request(&MailboxRequest::Fetch {
                topic: t,
                after: 0,
                limit: 0,
            })
            .unwrap(),
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
        assert_eq!(answers.len(), 3);
        assert_eq!(answers[0], MailboxResponse::Posted { seq: 1 });
        assert!(
            matches!(&answers[1], MailboxResponse::Messages { items, more: false } if items.len() == 1)
        );
        assert!(
            matches!(&answers[2], MailboxResponse::Error(e) if e.kind == ErrorKind::BadRequest && e.message.contains("undecodable"))
        );
    }

    fn ask(stream: &mut std::net::TcpStream, request: &MailboxRequest) -> MailboxResponse {
        write_frame(stream, &encode_request(request).unwrap()).unwrap();
        decode_response(&read_frame(stream).unwrap().expect("an answer")).unwrap()
    }

    #[test]
    fn the_parent_serves_the_mailbox_on_tcp() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let config = crate::Config::from_toml(&format!(
            "listen = \"127.0.0.1:0\"\nenclave = \"unix:{d}/enclave.sock\"\n\
             store_socket = \"{d}/store.sock\"\ndatabase = \"{d}/store.db\"\n\
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
        let t = [4; 16];
        for i in 1..=3u64 {
            let r = ask(
                &mut conn,
                &MailboxRequest::Post {
                    topic: t,
                    envelope: ByteBuf::from(envelope(&k, t, &[i as u8])),
                },
            );
            assert_eq!(r, MailboxResponse::Posted { seq: i });
        }
        let r = ask(
            &mut conn,
            &MailboxRequest::Fetch {
                topic: t,
                after: 1,
                limit: 0,
            },
        );
        match r {
            MailboxResponse::Messages { items, more } => {
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
        let r = ask(
            &mut other,
            &MailboxRequest::Fetch {
                topic: t,
                after: 0,
                limit: 1,
            },
        );
        assert!(
            matches!(r, MailboxResponse::Messages { ref items, more: true } if items.len() == 1)
        );
        running.shutdown();
    }

    #[test]
    fn mailbox_listen_is_optional_and_checked() {
        let base = "listen = \"127.0.0.1:7000\"\nenclave = \"unix:/run/e.sock\"\n\
                    store_socket = \"/run/s.sock\"\ndatabase = \"/var/lib/c/store.db\"\n";
        assert_eq!(crate::Config::from_toml(base).unwrap().mailbox_listen, None);
        let with =
            crate::Config::from_toml(&format!("{base}mailbox_listen = \"[::]:7002\"\n")).unwrap();
        assert_eq!(with.mailbox_listen, Some("[::]:7002".parse().unwrap()));
        for (bad, why) in [
            ("mailbox_listen = \"localhost:7002\"\n", "expected IP:PORT"),
            ("mailbox_listen = \"127.0.0.1\"\n", "expected IP:PORT"),
            ("mailbox_listen = \"127.0.0.1:7000\"\n", "same address"),
            ("mailbox_listen = \"0.0.0.0:7000\"\n", "same address"),
            ("mailbox_listen = 7002\n", "invalid type"),
        ] {
            let err = crate::Config::from_toml(&format!("{base}{bad}")).unwrap_err();
            assert!(err.to_string().contains(why), "{bad}: {err}");
        }
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
