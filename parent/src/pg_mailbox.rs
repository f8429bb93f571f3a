//! The mailbox's rows in PostgreSQL: `crate::mailbox::MailboxRows` in PostgreSQL's dialect, and
//! its transactions. The mailbox's rules are in `crate::mailbox`, once for both engines.
//!
//! A write (a post, a sweep) holds a transaction-level advisory lock ([`MAILBOX_LOCK`]) from its
//! first statement to its commit: the equivalent of SQLite's `BEGIN IMMEDIATE`, one mailbox
//! writer at a time across every parent thread and every parent process on the database. Two
//! posts to one topic therefore read and write its last sequence number one after the other
//! (unique, gap-free numbers), and the global caps (topics, bytes) are checked against what is
//! committed. The transaction is READ COMMITTED ([`crate::pg::read_committed`]): each statement
//! after the lock sees every write committed before it was granted. A read (a fetch) is one
//! REPEATABLE READ, read-only snapshot and takes no lock.

use cosigner_protocol::mailbox::Topic;
use postgres::fallible_iterator::FallibleIterator;
use postgres::{Client, IsolationLevel, Transaction};
use serde_bytes::ByteBuf;

use crate::error::{ParentError, Result};
use crate::mailbox::{MailboxRows, NewMessage, Usage};
use crate::pg::{PgDatabase, read_committed, to_i64, to_u64};

/// Advisory lock key of the mailbox's writers ("cosp" and 2).
pub(crate) const MAILBOX_LOCK: i64 = 0x636f_7370_0002;

/// Runs `f` in a write transaction of the mailbox (see the module's documentation).
pub(crate) fn write<T>(
    db: &PgDatabase,
    (begin, commit): (&'static str, &'static str),
    mut f: impl FnMut(&mut dyn MailboxRows) -> Result<T>,
) -> Result<T> {
    db.with(|client: &mut Client| {
        let mut tx = read_committed(client, begin)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MAILBOX_LOCK])
            .map_err(|e| ParentError::pg(begin, &e))?;
        let out = f(&mut PgRows(&mut tx))?;
        tx.commit().map_err(|e| ParentError::pg(commit, &e))?;
        Ok(out)
    })
}

/// Runs `f` on one snapshot of the mailbox, read-only.
pub(crate) fn read<T>(
    db: &PgDatabase,
    mut f: impl FnMut(&mut dyn MailboxRows) -> Result<T>,
) -> Result<T> {
    db.with(|client: &mut Client| {
        let mut tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .map_err(|e| ParentError::pg("begin read", &e))?;
        f(&mut PgRows(&mut tx))
    })
}

/// [`MailboxRows`] on a PostgreSQL transaction.
struct PgRows<'a, 'b>(&'a mut Transaction<'b>);

fn pg(operation: &'static str) -> impl Fn(postgres::Error) -> ParentError {
    move |e| ParentError::pg(operation, &e)
}

/// The first column of an optional row, as a count or sequence number.
fn count(row: Option<postgres::Row>, operation: &'static str) -> Result<Option<u64>> {
    row.map(|r| {
        r.try_get::<_, i64>(0)
            .map_err(pg(operation))
            .and_then(to_u64)
    })
    .transpose()
}

impl MailboxRows for PgRows<'_, '_> {
    fn message_seq(&mut self, topic: &Topic, id: &[u8; 32]) -> Result<Option<u64>> {
        let row = self
            .0
            .query_opt(
                "SELECT seq FROM mailbox_messages WHERE topic = $1 AND id = $2",
                &[&topic.as_slice(), &id.as_slice()],
            )
            .map_err(pg("post"))?;
        count(row, "post")
    }

    fn last_seq(&mut self, topic: &Topic) -> Result<Option<u64>> {
        let row = self
            .0
            .query_opt(
                "SELECT last_seq FROM mailbox_topics WHERE topic = $1",
                &[&topic.as_slice()],
            )
            .map_err(pg("post"))?;
        count(row, "post")
    }

    fn topic_exists(&mut self, topic: &Topic) -> Result<bool> {
        self.0
            .query_opt(
                "SELECT 1 FROM mailbox_topics WHERE topic = $1",
                &[&topic.as_slice()],
            )
            .map(|row| row.is_some())
            .map_err(pg("fetch"))
    }

    fn topic_members(&mut self, topic: &Topic) -> Result<Vec<Vec<u8>>> {
        // bytea compares byte by byte, as SQLite's BLOB: the same order on both engines.
        self.0
            .query(
                "SELECT member FROM mailbox_members WHERE topic = $1 ORDER BY member",
                &[&topic.as_slice()],
            )
            .and_then(|rows| rows.iter().map(|r| r.try_get(0)).collect())
            .map_err(pg("read members"))
    }

    fn topic_count(&mut self) -> Result<u64> {
        let row = self
            .0
            .query_opt("SELECT count(*) FROM mailbox_topics", &[])
            .map_err(pg("count topics"))?;
        Ok(count(row, "count topics")?.unwrap_or(0))
    }

    fn total_bytes(&mut self) -> Result<u64> {
        // sum(bigint) is numeric in PostgreSQL: back to bigint (the cap is far below its end).
        let row = self
            .0
            .query_opt(
                "SELECT coalesce(sum(bytes), 0)::bigint FROM mailbox_topics",
                &[],
            )
            .map_err(pg("post"))?;
        Ok(count(row, "post")?.unwrap_or(0))
    }

    fn insert_topic(&mut self, topic: &Topic, members: &[ByteBuf], now: i64) -> Result<()> {
        let db = pg("post");
        self.0
            .execute(
                "INSERT INTO mailbox_topics (topic, last_seq, bytes, created_at)
                 VALUES ($1, 0, 0, $2)",
                &[&topic.as_slice(), &now],
            )
            .map_err(&db)?;
        for m in members {
            self.0
                .execute(
                    "INSERT INTO mailbox_members (topic, member) VALUES ($1, $2)
                     ON CONFLICT DO NOTHING",
                    &[&topic.as_slice(), &m.as_slice()],
                )
                .map_err(&db)?;
        }
        Ok(())
    }

    fn usage(&mut self, sender: &[u8]) -> Result<Option<Usage>> {
        let db = pg("read quota");
        let row = self
            .0
            .query_opt(
                "SELECT window_start, messages, bytes, topics FROM mailbox_senders
                 WHERE sender = $1",
                &[&sender],
            )
            .map_err(&db)?;
        row.map(|r| -> Result<Usage> {
            let column = |i: usize| r.try_get::<_, i64>(i).map_err(&db);
            Ok(Usage {
                window_start: column(0)?,
                messages: to_u64(column(1)?)?,
                bytes: to_u64(column(2)?)?,
                topics: to_u64(column(3)?)?,
            })
        })
        .transpose()
    }

    fn record_usage(&mut self, sender: &[u8], u: &Usage) -> Result<()> {
        self.0
            .execute(
                "INSERT INTO mailbox_senders (sender, window_start, messages, bytes, topics)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (sender) DO UPDATE SET window_start = EXCLUDED.window_start,
                     messages = EXCLUDED.messages, bytes = EXCLUDED.bytes,
                     topics = EXCLUDED.topics",
                &[
                    &sender,
                    &u.window_start,
                    &to_i64(u.messages)?,
                    &to_i64(u.bytes)?,
                    &to_i64(u.topics)?,
                ],
            )
            .map_err(pg("post"))?;
        Ok(())
    }

    fn insert_message(&mut self, topic: &Topic, message: &NewMessage<'_>) -> Result<()> {
        let db = pg("post");
        let seq = to_i64(message.seq)?;
        self.0
            .execute(
                "INSERT INTO mailbox_messages (topic, seq, id, sender, envelope, posted_at)
                 VALUES ($1, $2, $3, $4, $5, $6)",
                &[
                    &topic.as_slice(),
                    &seq,
                    &message.id.as_slice(),
                    &message.sender,
                    &message.envelope,
                    &message.now,
                ],
            )
            .map_err(&db)?;
        self.0
            .execute(
                "UPDATE mailbox_topics SET last_seq = $2, bytes = bytes + $3 WHERE topic = $1",
                &[&topic.as_slice(), &seq, &to_i64(message.len)?],
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
        let db = pg("fetch");
        let (after, rows) = (to_i64(after)?, to_i64(rows)?);
        let params: [&(dyn postgres::types::ToSql + Sync); 3] = [&topic.as_slice(), &after, &rows];
        // Streamed: rows are decoded as they arrive and the rest is discarded once `each` stops.
        let mut found = self
            .0
            .query_raw(
                "SELECT seq, envelope FROM mailbox_messages
                 WHERE topic = $1 AND seq > $2 ORDER BY seq LIMIT $3",
                params,
            )
            .map_err(&db)?;
        while let Some(row) = found.next().map_err(&db)? {
            let seq = to_u64(row.try_get(0).map_err(&db)?)?;
            let envelope: Vec<u8> = row.try_get(1).map_err(&db)?;
            if !each(seq, envelope) {
                break;
            }
        }
        Ok(())
    }

    fn expired(&mut self, cutoff: i64) -> Result<Vec<(Vec<u8>, u64)>> {
        let db = pg("sweep");
        let rows = self
            .0
            .query(
                "SELECT topic, sum(octet_length(envelope))::bigint FROM mailbox_messages
                 WHERE posted_at < $1 GROUP BY topic",
                &[&cutoff],
            )
            .map_err(&db)?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get(0).map_err(&db)?,
                    to_u64(r.try_get(1).map_err(&db)?)?,
                ))
            })
            .collect()
    }

    fn delete_messages_before(&mut self, cutoff: i64) -> Result<u64> {
        self.0
            .execute(
                "DELETE FROM mailbox_messages WHERE posted_at < $1",
                &[&cutoff],
            )
            .map_err(pg("sweep"))
    }

    fn forget_bytes(&mut self, topic: &[u8], bytes: u64) -> Result<()> {
        self.0
            .execute(
                "UPDATE mailbox_topics SET bytes = GREATEST(bytes - $2, 0) WHERE topic = $1",
                &[&topic, &to_i64(bytes)?],
            )
            .map_err(pg("sweep"))?;
        Ok(())
    }

    fn delete_topic_if_empty(&mut self, topic: &[u8]) -> Result<bool> {
        let db = pg("sweep");
        let gone = self
            .0
            .execute(
                "DELETE FROM mailbox_topics WHERE topic = $1 AND NOT EXISTS
                 (SELECT 1 FROM mailbox_messages WHERE topic = $1)",
                &[&topic],
            )
            .map_err(&db)?;
        if gone > 0 {
            self.0
                .execute("DELETE FROM mailbox_members WHERE topic = $1", &[&topic])
                .map_err(&db)?;
        }
        Ok(gone > 0)
    }

    fn delete_windows_before(&mut self, cutoff: i64) -> Result<()> {
        self.0
            .execute(
                "DELETE FROM mailbox_senders WHERE window_start < $1",
                &[&cutoff],
            )
            .map_err(pg("sweep"))?;
        Ok(())
    }

    #[cfg(test)]
    fn forget_all_members(&mut self) -> Result<()> {
        self.0
            .execute("DELETE FROM mailbox_members", &[])
            .map_err(pg("test"))?;
        Ok(())
    }

    #[cfg(test)]
    fn topic_bytes(&mut self, topic: &Topic) -> Result<Option<u64>> {
        let row = self
            .0
            .query_opt(
                "SELECT bytes FROM mailbox_topics WHERE topic = $1",
                &[&topic.as_slice()],
            )
            .map_err(pg("test"))?;
        count(row, "test")
    }

    #[cfg(test)]
    fn member_rows(&mut self, topic: &[u8]) -> Result<u64> {
        let row = self
            .0
            .query_opt(
                "SELECT count(*) FROM mailbox_members WHERE topic = $1",
                &[&topic],
            )
            .map_err(pg("test"))?;
        Ok(count(row, "test")?.unwrap_or(0))
    }
}
