//! The one error type of the parent library.

use std::path::PathBuf;

use cosigner_protocol::wire::ErrorKind;

/// Everything that can go wrong in the parent: configuration, the blob store, sockets, peers.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ParentError {
    /// The configuration file could not be read.
    #[error("cannot read config {path}: {reason}")]
    ConfigRead {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        reason: String,
    },
    /// The configuration is not valid TOML or does not fit the schema (unknown, missing or
    /// mistyped field).
    #[error("invalid config {origin}: {reason}")]
    Config {
        /// The file, or `<string>` for a configuration given as text.
        origin: String,
        /// What is wrong, with the line where TOML tells it.
        reason: String,
    },
    /// A configured address or path does not parse or cannot be used.
    #[error("invalid `{field}` {value:?}: {reason}")]
    InvalidAddress {
        /// The configuration field.
        field: &'static str,
        /// Its value.
        value: String,
        /// What is wrong and what is expected.
        reason: String,
    },
    /// A configured limit (a count, a timeout) is out of its range.
    #[error("invalid `{field}` {value}: {reason}")]
    InvalidLimit {
        /// The configuration field.
        field: &'static str,
        /// Its value.
        value: String,
        /// The range accepted and why.
        reason: String,
    },
    /// A proxy's destination is not allowed by the configuration's `proxy_allow`.
    #[error("proxy destination {to:?} is not in proxy_allow {allow}")]
    ProxyNotAllowed {
        /// The refused destination, `HOST:PORT`.
        to: String,
        /// The allowlist as configured.
        allow: String,
    },
    /// A store key is not printable ASCII of 1 to 256 bytes.
    #[error(
        "invalid store key {preview:?} ({len} bytes): printable ASCII without spaces, 1..=256 bytes"
    )]
    InvalidKey {
        /// The key's first characters.
        preview: String,
        /// The key's length in bytes.
        len: usize,
    },
    /// A value is larger than the store accepts.
    #[error("value of {len} bytes exceeds the {max}-byte limit")]
    ValueTooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The mailbox refuses a post: a cap on topics, messages per topic or stored bytes is reached.
    #[error("mailbox full: {what} (at most {max})")]
    MailboxFull {
        /// Which cap.
        what: &'static str,
        /// The cap.
        max: u64,
    },
    /// The mailbox refuses a post or a read for who sends it: a sender or reader that is not one
    /// of the topic's members, a read without a member's proof, a founding post naming no members.
    #[error("mailbox refuses: {reason}")]
    MailboxForbidden {
        /// What is missing or whom the topic does not admit.
        reason: String,
    },
    /// A sender (the key that signed an envelope) has used up its mailbox quota for the current
    /// window; other senders are not affected.
    #[error(
        "mailbox quota of sender {sender} is used up: {what} (at most {max} per \
         {window_secs} s; this window ends in {retry_after_secs} s)"
    )]
    QuotaExceeded {
        /// The sender's key (hex, SEC1 compressed).
        sender: String,
        /// Which quota: envelopes, envelope bytes or topics founded.
        what: &'static str,
        /// The quota.
        max: u64,
        /// The window's length in seconds.
        window_secs: u64,
        /// Seconds until the window ends and the quota is whole again.
        retry_after_secs: u64,
    },
    /// The mailbox's TLS certificate or key cannot be made, read or used.
    #[error("mailbox TLS {what}: {reason}")]
    MailboxTls {
        /// What the parent was doing (names the file).
        what: String,
        /// What failed.
        reason: String,
    },
    /// SQLite or PostgreSQL failed.
    #[error("database {operation} failed: {reason}")]
    Database {
        /// What the store was doing.
        operation: &'static str,
        /// The engine's message.
        reason: String,
    },
    /// The database is not a cosigner parent store, or one of a schema this build does not know.
    #[error("database {path}: {reason}")]
    Schema {
        /// The database file.
        path: PathBuf,
        /// What does not match.
        reason: String,
    },
    /// The PostgreSQL server could not be reached or refused the parent's connection (at start,
    /// or when the pool opens a connection later).
    #[error("cannot connect to database {url}: {reason}")]
    DatabaseConnect {
        /// The database URL, without its password.
        url: String,
        /// What the client library or the server said.
        reason: String,
    },
    /// The database was written by a newer build: its schema version is above the one this build
    /// knows, and it is refused rather than used or downgraded.
    #[error(
        "database {database}: schema version {found} is newer than this build's {supported}; \
         run the parent release that wrote it (or a later one)"
    )]
    SchemaTooNew {
        /// The database (a SQLite file, or a PostgreSQL URL without its password).
        database: String,
        /// The version it carries.
        found: i64,
        /// The newest version this build reads.
        supported: i64,
    },
    /// The PostgreSQL database holds tables of another application, or a cosigner schema table
    /// this build cannot read; the parent leaves it as it is.
    #[error("database {url}: {reason}")]
    ForeignDatabase {
        /// The database URL, without its password.
        url: String,
        /// What does not match.
        reason: String,
    },
    /// Another process is serving the store socket.
    #[error("store socket {path} is in use by another process")]
    SocketInUse {
        /// The socket path.
        path: PathBuf,
    },
    /// Something other than a socket sits where the store socket should be; it is left alone.
    #[error("{path} exists and is not a socket; refusing to replace it")]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// A socket or file operation failed.
    #[error("{what}: {reason}")]
    Io {
        /// What the parent was doing (names the address or path).
        what: String,
        /// What the OS said.
        reason: String,
    },
    /// The peer sent a malformed frame or message; it was answered with an error and dropped.
    #[error("bad request from peer: {reason}")]
    BadRequest {
        /// What was wrong with it.
        reason: String,
    },
    /// AWS credentials for the enclave could not be had (configuration, IMDS, file, environment).
    #[error("AWS credentials: {reason}")]
    AwsCredentials {
        /// What failed (never a secret).
        reason: String,
    },
    /// A response could not be encoded.
    #[error("cannot encode response: {reason}")]
    Encode {
        /// The encoder's message.
        reason: String,
    },
}

impl ParentError {
    /// [`ParentError::InvalidAddress`]: configuration `field`, set to `value`, cannot be used;
    /// `reason` says why and what is expected.
    pub(crate) fn invalid_address(
        field: &'static str,
        value: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Self::InvalidAddress {
            field,
            value: value.into(),
            reason: reason.into(),
        }
    }

    /// What a peer is told of this refusal of its request (the store channel's and the
    /// mailbox's one mapping): its own request's fault, a quota to wait out, or the parent's.
    pub(crate) fn wire_kind(&self) -> ErrorKind {
        match self {
            Self::BadRequest { .. }
            | Self::InvalidKey { .. }
            | Self::ValueTooLarge { .. }
            | Self::MailboxFull { .. }
            | Self::MailboxForbidden { .. } => ErrorKind::BadRequest,
            Self::QuotaExceeded { .. } => ErrorKind::Busy,
            _ => ErrorKind::Internal,
        }
    }

    pub(crate) fn io(what: impl Into<String>, e: &std::io::Error) -> Self {
        Self::Io {
            what: what.into(),
            reason: e.to_string(),
        }
    }

    /// [`ParentError::Database`] of a PostgreSQL error: the server's message and SQLSTATE when
    /// the server answered, the client library's otherwise; one line.
    pub(crate) fn pg(operation: &'static str, e: &postgres::Error) -> Self {
        let reason = match e.as_db_error() {
            Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
            None => {
                let mut reason = e.to_string();
                let mut source = std::error::Error::source(e);
                while let Some(s) = source {
                    reason = format!("{reason}: {s}");
                    source = s.source();
                }
                reason
            }
        };
        Self::Database {
            operation,
            reason: reason.split_whitespace().collect::<Vec<_>>().join(" "),
        }
    }

    pub(crate) fn db(operation: &'static str, e: &rusqlite::Error) -> Self {
        Self::Database {
            operation,
            reason: e.to_string(),
        }
    }
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, ParentError>;
