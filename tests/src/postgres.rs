//! A private PostgreSQL server for the store and mailbox tests: one cluster per test run under
//! `<target>/pg-test`, started by `scripts/lib.sh`'s `start_postgres` (as `make up DB=postgres`
//! starts `.dev/postgres`: initdb with trust authentication, a unix socket in that directory
//! only, run as the `postgres` system user when the tests run as root), and a fresh database per
//! test.
//!
//! nextest runs each test in its own process, so the cluster is shared between processes: the
//! first to get the file lock `<target>/pg-test.lock` starts it (or finds it running, or cleans
//! up after a server that died), the others wait for the lock and reuse it. `make test` stops it
//! after the run (`stop_postgres`).
//!
//! Without PostgreSQL's server binaries (`/usr/lib/postgresql/*/bin`), [`database`] says why
//! and returns `None`, so the test skips; with `COSIGNER_REQUIRE_POSTGRES=1` (the Makefile sets
//! it) it panics instead.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, bail};

/// The engine a parent's store is on in a test: the store and mailbox tests run once on each
/// ([`on_both_engines!`](crate::on_both_engines)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file in a temporary directory.
    Sqlite,
    /// A fresh database in the test cluster.
    Postgres,
}

/// A parent's `database` setting on `backend` for one test, and what keeps that database alive
/// (the temporary directory of its `store.db`, or its [`TestDatabase`], dropped with it).
/// `None` when PostgreSQL is not installed and not required (the reason printed): skip the test.
pub fn database_for(backend: Backend) -> Option<(Box<dyn std::any::Any>, String)> {
    match backend {
        Backend::Sqlite => {
            let dir = tempfile::Builder::new()
                .prefix("cosigner-store-")
                .tempdir()
                .unwrap_or_else(|e| panic!("a temporary directory: {e}"));
            let path = dir.path().join("store.db").display().to_string();
            Some((Box::new(dir), path))
        }
        Backend::Postgres => {
            let db = database()?;
            let url = db.url();
            Some((Box::new(db), url))
        }
    }
}

/// Runs each named test, a `fn(Backend)` in scope, as `sqlite::NAME` and `postgres::NAME`: one
/// test body per behaviour of the store or mailbox, run on both engines.
#[macro_export]
macro_rules! on_both_engines {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[test] fn $name() { super::$name($crate::postgres::Backend::Sqlite) })*
        }
        mod postgres {
            $(#[test] fn $name() { super::$name($crate::postgres::Backend::Postgres) })*
        }
    };
}

/// The environment variable that turns a missing PostgreSQL into a failure.
pub const REQUIRE_ENV: &str = "COSIGNER_REQUIRE_POSTGRES";
/// The superuser `start_postgres` makes (trust authentication over the socket).
pub const USER: &str = "cosigner";

/// A database of its own for one test, in the shared cluster; dropped with it.
#[derive(Debug)]
pub struct TestDatabase {
    name: String,
    socket_dir: PathBuf,
}

impl TestDatabase {
    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The directory of the cluster's unix socket.
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// `postgres://cosigner@/NAME?host=SOCKET_DIR`: what a parent's `database` is set to.
    pub fn url(&self) -> String {
        url(&self.socket_dir, &self.name)
    }

    /// A connection of the test's own (to look at or change what the parent stored).
    pub fn connect(&self) -> anyhow::Result<postgres::Client> {
        postgres::Client::connect(&self.url(), postgres::NoTls)
            .with_context(|| format!("connecting to {}", self.url()))
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // FORCE: a parent the test left running (or a pooled connection) must not keep it.
        if let Ok(mut admin) = admin(&self.socket_dir) {
            let _ = admin.batch_execute(&format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.name
            ));
        }
    }
}

fn url(socket_dir: &Path, database: &str) -> String {
    format!(
        "postgres://{USER}@/{database}?host={}",
        socket_dir.display()
    )
}

fn admin(socket_dir: &Path) -> anyhow::Result<postgres::Client> {
    postgres::Client::connect(&url(socket_dir, "postgres"), postgres::NoTls)
        .with_context(|| format!("connecting to the test cluster in {}", socket_dir.display()))
}

/// A fresh, empty database in the test cluster (started first if needed), or `None` when
/// PostgreSQL is not installed and [`REQUIRE_ENV`] is not set (the reason is printed).
///
/// # Panics
///
/// When PostgreSQL is missing and required, or the cluster cannot be started or used.
pub fn database() -> Option<TestDatabase> {
    let socket_dir = match cluster() {
        Ok(Some(dir)) => dir.clone(),
        Ok(None) => return None,
        Err(e) => panic!("the PostgreSQL test cluster: {e}"),
    };
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let name = format!(
        "test_{}_{}_{nanos}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let created = admin(&socket_dir).and_then(|mut admin| {
        admin
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .with_context(|| format!("creating database {name}"))
    });
    if let Err(e) = created {
        panic!("the PostgreSQL test cluster: {e:#}");
    }
    Some(TestDatabase { name, socket_dir })
}

/// The cluster's socket directory once it runs (once per process); `Ok(None)`: not installed
/// and not required.
fn cluster() -> Result<&'static Option<PathBuf>, String> {
    static CLUSTER: OnceLock<Result<Option<PathBuf>, String>> = OnceLock::new();
    CLUSTER
        .get_or_init(|| match server_binaries() {
            Some(_) => start_cluster().map(Some).map_err(|e| format!("{e:#}")),
            None => {
                let why = "PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin \
                           (`make deps` installs Debian's postgresql)";
                if std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1") {
                    Err(format!("{why}, and {REQUIRE_ENV}=1"))
                } else {
                    eprintln!("skipping: {why}");
                    Ok(None)
                }
            }
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// The newest `/usr/lib/postgresql/VERSION/bin` holding `initdb` and `pg_ctl`.
pub fn server_binaries() -> Option<PathBuf> {
    let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version: u32 = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            (bin.join("initdb").is_file() && bin.join("pg_ctl").is_file()).then_some((version, bin))
        })
        .collect();
    dirs.sort();
    dirs.pop().map(|(_, bin)| bin)
}

/// `<target>/pg-test`: beside the test binaries' profile directory.
fn cluster_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the test executable")?;
    // <target>/<profile>/deps/<test>-<hash>
    let Some(target) = exe.ancestors().nth(3) else {
        bail!("cannot derive the target dir from {}", exe.display());
    };
    Ok(target.join("pg-test"))
}

/// Starts (or reuses) the cluster under the file lock; returns its socket directory.
fn start_cluster() -> anyhow::Result<PathBuf> {
    let dir = cluster_dir()?;
    let lock_path = dir.with_extension("lock");
    let lock =
        File::create(&lock_path).with_context(|| format!("creating {}", lock_path.display()))?;
    // Released when `lock` is dropped (or the process exits).
    lock.lock()
        .with_context(|| format!("locking {}", lock_path.display()))?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("the workspace root")?;
    let out = Command::new("bash")
        .arg("-c")
        .arg(". scripts/lib.sh && start_postgres \"$1\" postgres")
        .arg("bash")
        .arg(&dir)
        .current_dir(root)
        .output()
        .context("running bash for start_postgres")?;
    drop(lock);
    if !out.status.success() {
        bail!(
            "start_postgres {} failed ({}): {}",
            dir.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(dir)
}
