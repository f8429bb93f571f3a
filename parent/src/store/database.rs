//! `database` of the parent's configuration: where the blob store and the mailbox live.
//!
//! * `database = "PATH"`: a SQLite file (the embedded default, [`crate::store::SqliteStore`]);
//! * `database = "postgres://USER@HOST/DB"` (or `postgresql://`, or a unix socket directory as
//!   `postgres://USER@/DB?host=/run/postgresql`): a PostgreSQL database ([`crate::pg`]), with the
//!   default pool size and no password (or one in the URL);
//! * a `[database]` table, PostgreSQL only: `url` (as above), `password_file` (read when the
//!   parent starts, never from argv or the environment; its first line is the password) and
//!   `pool_size` (connections the parent keeps, 1..=[`MAX_POOL_SIZE`]).
//!
//! A password is never printed: the URL is shown without it (`Display`, `Debug`, every error).

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use zeroize::Zeroizing;

use crate::config::in_range;
use crate::error::{ParentError, Result};

/// Default of `pool_size`: the parent's store and mailbox threads share this many connections;
/// the enclave keeps a few store connections and each mailbox request holds one for a few
/// statements, so more would only hold server slots.
pub const DEFAULT_POOL_SIZE: usize = 16;
/// Largest `pool_size` (a PostgreSQL server's default `max_connections` is 100).
pub const MAX_POOL_SIZE: usize = 256;

/// Where the parent keeps its blobs and mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    /// A SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL database.
    Postgres(PostgresConfig),
}

impl Database {
    /// This database for people: the SQLite file, or the PostgreSQL URL without its password (as
    /// `Path::display`, so that a caller which printed the path prints this).
    pub fn display(&self) -> &Self {
        self
    }

    /// The SQLite file, if this is one.
    pub fn sqlite_path(&self) -> Option<&Path> {
        match self {
            Database::Sqlite(p) => Some(p),
            Database::Postgres(_) => None,
        }
    }

    /// Resolves relative file names (the SQLite file, `password_file`) against `base`, the
    /// configuration file's directory.
    pub(crate) fn resolve(&mut self, base: &Path) {
        let path = match self {
            Database::Sqlite(p) => p,
            Database::Postgres(PostgresConfig {
                password_file: Some(p),
                ..
            }) => p,
            Database::Postgres(_) => return,
        };
        if path.is_relative() {
            *path = base.join(&*path);
        }
    }
}

impl From<PathBuf> for Database {
    fn from(path: PathBuf) -> Self {
        Database::Sqlite(path)
    }
}

impl fmt::Display for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Database::Sqlite(p) => write!(f, "{}", p.display()),
            Database::Postgres(pg) => f.write_str(&pg.url_redacted()),
        }
    }
}

/// A PostgreSQL database: its URL, where its password is, how many connections to keep.
#[derive(Clone, PartialEq, Eq)]
pub struct PostgresConfig {
    /// The URL as written (it may hold a password: never printed, see [`Self::url_redacted`]).
    url: String,
    /// A file whose first line is the password, read when the parent connects.
    pub password_file: Option<PathBuf>,
    /// Connections the parent keeps open at most.
    pub pool_size: usize,
}

impl fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &self.url_redacted())
            .field("password_file", &self.password_file)
            .field("pool_size", &self.pool_size)
            .finish()
    }
}

impl PostgresConfig {
    /// A PostgreSQL database at `url` (`postgres://` or `postgresql://`), checked as the client
    /// library reads it: a user and a host (or socket directory) are required, and a password in
    /// the URL excludes `password_file`.
    pub fn new(url: &str, password_file: Option<PathBuf>, pool_size: usize) -> Result<Self> {
        let refuse =
            |reason: String| ParentError::invalid_address("database", redact_url(url), reason);
        if !is_postgres_url(url) {
            return Err(refuse(
                "expected a postgres:// or postgresql:// URL, e.g. \
                 postgres://cosigner@/cosigner?host=/run/postgresql"
                    .into(),
            ));
        }
        let parsed = postgres::Config::from_str(url).map_err(|e| {
            refuse(format!(
                "not a PostgreSQL URL the client library reads: {}",
                one_line(&e.to_string())
            ))
        })?;
        if parsed.get_user().is_none() {
            return Err(refuse(
                "no user: write postgres://USER@HOST/DB (or ?user=USER)".into(),
            ));
        }
        if parsed.get_hosts().is_empty() {
            return Err(refuse(
                "no host: write postgres://USER@HOST/DB, or a unix socket directory as \
                 postgres://USER@/DB?host=/run/postgresql"
                    .into(),
            ));
        }
        if parsed.get_password().is_some() && password_file.is_some() {
            return Err(refuse(
                "a password in the URL and a password_file: give one of them (password_file \
                 keeps it out of the configuration)"
                    .into(),
            ));
        }
        if password_file
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            return Err(ParentError::invalid_address(
                "database.password_file",
                "",
                "empty path",
            ));
        }
        in_range(
            "database.pool_size",
            pool_size,
            1,
            MAX_POOL_SIZE,
            "connections the parent keeps open",
        )?;
        Ok(PostgresConfig {
            url: url.to_owned(),
            password_file,
            pool_size,
        })
    }

    /// The URL without its password (user, host, database and options kept).
    pub fn url_redacted(&self) -> String {
        redact_url(&self.url)
    }

    /// The client library's configuration: the URL, with the password read from
    /// `password_file` if there is one (its first line; an empty or unreadable file is
    /// [`ParentError::InvalidAddress`] of `database.password_file`).
    pub(crate) fn client_config(&self) -> Result<postgres::Config> {
        let mut config = postgres::Config::from_str(&self.url).map_err(|e| {
            ParentError::invalid_address("database", self.url_redacted(), one_line(&e.to_string()))
        })?;
        if let Some(file) = &self.password_file {
            let refuse = |reason: String| {
                ParentError::invalid_address(
                    "database.password_file",
                    file.display().to_string(),
                    reason,
                )
            };
            let text = Zeroizing::new(
                std::fs::read_to_string(file).map_err(|e| refuse(format!("cannot read: {e}")))?,
            );
            let password = text.lines().next().unwrap_or_default();
            if password.is_empty() {
                return Err(refuse(
                    "empty: its first line is the database password".into(),
                ));
            }
            config.password(password);
        }
        Ok(config)
    }
}

fn is_postgres_url(s: &str) -> bool {
    s.starts_with("postgres://") || s.starts_with("postgresql://")
}

/// `url` without a password: the `:PASSWORD` of its user information and the value of any
/// `password=` option are replaced by `***`. Anything that is not a URL is returned as it is
/// (it was refused for that, and holds no password the parent would read).
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    // The authority ends at the first '/', '?' or '#'; its user information at its last '@'.
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{user}:***@{host}"),
            None => format!("{userinfo}@{host}"),
        },
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let options: Vec<String> = query
                .split('&')
                .map(|option| match option.split_once('=') {
                    Some((name, _)) if name.eq_ignore_ascii_case("password") => {
                        format!("{name}=***")
                    }
                    _ => option.to_owned(),
                })
                .collect();
            format!("{path}?{}", options.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `database` as written: a string (a SQLite path or a PostgreSQL URL) or a `[database]` table.
#[derive(Debug)]
pub enum RawDatabase {
    /// `database = "..."`.
    Text(String),
    /// `[database]`.
    Table(RawDatabaseTable),
}

/// `[database]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDatabaseTable {
    url: String,
    #[serde(default)]
    password_file: Option<String>,
    #[serde(default)]
    pool_size: Option<u64>,
}

impl<'de> Deserialize<'de> for RawDatabase {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct Either;
        impl<'de> Visitor<'de> for Either {
            type Value = RawDatabase;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a SQLite file path, a postgres:// URL, or a [database] table (url, \
                     password_file, pool_size)",
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<RawDatabase, E> {
                Ok(RawDatabase::Text(v.to_owned()))
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                map: A,
            ) -> std::result::Result<RawDatabase, A::Error> {
                RawDatabaseTable::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(RawDatabase::Table)
            }
        }
        deserializer.deserialize_any(Either)
    }
}

impl RawDatabase {
    /// A path is a SQLite file; a `postgres://` URL or a `[database]` table, PostgreSQL.
    pub fn check(self) -> Result<Database> {
        match self {
            RawDatabase::Text(text) if is_postgres_url(&text) => Ok(Database::Postgres(
                PostgresConfig::new(&text, None, DEFAULT_POOL_SIZE)?,
            )),
            RawDatabase::Text(text) if text.contains("://") => Err(ParentError::invalid_address(
                "database",
                redact_url(&text),
                "a SQLite file path, or a postgres:// URL (no other engine)",
            )),
            RawDatabase::Text(text) if text.is_empty() => {
                Err(ParentError::invalid_address("database", text, "empty path"))
            }
            RawDatabase::Text(text) => Ok(Database::Sqlite(PathBuf::from(text))),
            RawDatabase::Table(table) => {
                if !is_postgres_url(&table.url) {
                    return Err(ParentError::invalid_address(
                        "database.url",
                        redact_url(&table.url),
                        "the [database] table is PostgreSQL's: url = \"postgres://USER@HOST/DB\" \
                         (a SQLite file is database = \"PATH\")",
                    ));
                }
                let pool_size = match table.pool_size {
                    None => DEFAULT_POOL_SIZE,
                    Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
                };
                Ok(Database::Postgres(PostgresConfig::new(
                    &table.url,
                    table.password_file.map(PathBuf::from),
                    pool_size,
                )?))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn urls_are_shown_without_their_password() {
        for (url, shown) in [
            (
                "postgres://cosigner:s3cret@db.internal:5432/cosigner",
                "postgres://cosigner:***@db.internal:5432/cosigner",
            ),
            (
                "postgres://cosigner@/cosigner?host=/run/pg&password=s3cret",
                "postgres://cosigner@/cosigner?host=/run/pg&password=***",
            ),
            (
                "postgresql://a:b:c@h/d?sslmode=disable",
                "postgresql://a:***@h/d?sslmode=disable",
            ),
            ("postgres://u:p@h", "postgres://u:***@h"),
            ("postgres://u@h/d", "postgres://u@h/d"),
            ("/var/lib/store.db", "/var/lib/store.db"),
        ] {
            assert_eq!(redact_url(url), shown);
        }
        let pg = PostgresConfig::new("postgres://u:s3cret@h/d", None, 4).unwrap();
        assert!(!format!("{pg:?}").contains("s3cret"));
        assert!(!Database::Postgres(pg).to_string().contains("s3cret"));
    }

    #[test]
    fn bad_postgres_settings_are_refused_precisely() {
        let refused = |url: &str, file: Option<&str>, pool: usize, field: &str, why: &str| {
            let err = PostgresConfig::new(url, file.map(PathBuf::from), pool).unwrap_err();
            let text = err.to_string();
            assert!(
                matches!(
                    &err,
                    ParentError::InvalidAddress { field: f, .. }
                    | ParentError::InvalidLimit { field: f, .. } if *f == field
                ),
                "{url}: {err:?}"
            );
            assert!(text.contains(why), "{url}: {text}");
            assert!(!text.contains("s3cret"), "{text}");
        };
        refused("mysql://u@h/d", None, 4, "database", "postgres://");
        refused(
            "postgres://u@h:notaport/d",
            None,
            4,
            "database",
            "client library",
        );
        refused("postgres://h/d", None, 4, "database", "no user");
        refused("postgres://u@/d", None, 4, "database", "no host");
        refused(
            "postgres://u:s3cret@h/d",
            Some("/etc/pw"),
            4,
            "database",
            "give one of them",
        );
        refused("postgres://u@h/d", None, 0, "database.pool_size", "1..=256");
        refused(
            "postgres://u@h/d",
            None,
            257,
            "database.pool_size",
            "1..=256",
        );
        refused(
            "postgres://u@h/d",
            Some(""),
            4,
            "database.password_file",
            "empty",
        );
    }

    #[test]
    fn the_password_file_is_read_when_connecting() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        let pg = PostgresConfig::new("postgres://u@h/d", Some(file.clone()), 4).unwrap();
        // Missing, then empty: refused naming the file; then its first line is the password.
        for (contents, why) in [(None, "cannot read"), (Some("\nsecond"), "empty")] {
            if let Some(c) = contents {
                std::fs::write(&file, c).unwrap();
            }
            let err = pg.client_config().unwrap_err();
            assert!(
                matches!(&err, ParentError::InvalidAddress { field: "database.password_file", reason, .. }
                    if reason.contains(why)),
                "{err:?}"
            );
        }
        std::fs::write(&file, "s3cret\n").unwrap();
        let config = pg.client_config().unwrap();
        assert_eq!(config.get_password(), Some(&b"s3cret"[..]));
    }
}
