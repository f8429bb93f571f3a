//! cosigner's shared test harness: a private SoftHSM per test, the shared fixtures, and the
//! workspace's built binaries.
//!
//! Run the tests with cargo-nextest (one process per test). PKCS#11's `C_Initialize` works once
//! per process and SoftHSM reads `SOFTHSM2_CONF` only then, so each test process installs its own
//! [`SoftHsm`] before touching PKCS#11. Under plain `cargo test` the tests of one binary share a
//! process; a second, different [`SoftHsm`] installed in the same process panics instead of
//! silently using the first one's tokens.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{Context, bail};
use tempfile::TempDir;

pub use cosigner_kms::DEFAULT_SOFTHSM_MODULE;

/// Environment variable that overrides the PKCS#11 module used by tests.
pub const MODULE_ENV: &str = "COSIGNER_PKCS11_MODULE";

/// A private SoftHSM configuration: a temporary directory holding `tokens/` and `softhsm2.conf`.
/// Everything is deleted when it is dropped.
#[derive(Debug)]
pub struct SoftHsm {
    dir: TempDir,
    conf: PathBuf,
}

impl SoftHsm {
    /// Creates the directory, its empty `tokens/` store and a `softhsm2.conf` pointing at it.
    pub fn new() -> anyhow::Result<SoftHsm> {
        let dir = tempfile::Builder::new()
            .prefix("cosigner-softhsm-")
            .tempdir()
            .context("creating SoftHSM temp dir")?;
        let tokens = dir.path().join("tokens");
        std::fs::create_dir(&tokens).with_context(|| format!("creating {}", tokens.display()))?;
        let conf = dir.path().join("softhsm2.conf");
        let text = format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        );
        std::fs::write(&conf, text).with_context(|| format!("writing {}", conf.display()))?;
        Ok(SoftHsm { dir, conf })
    }

    /// Path of the `softhsm2.conf`.
    pub fn conf_path(&self) -> &Path {
        &self.conf
    }

    /// The temporary directory (holds `tokens/` and `softhsm2.conf`; free for other test files).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Environment for child processes that should use this SoftHSM: `SOFTHSM2_CONF=<conf>`.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![("SOFTHSM2_CONF".to_owned(), self.conf.display().to_string())]
    }

    /// Points this process's SoftHSM at this configuration (sets `SOFTHSM2_CONF`).
    ///
    /// Call it first thing in a test, before any PKCS#11 call and before spawning threads.
    ///
    /// # Panics
    /// If another [`SoftHsm`] was installed earlier in this process (the PKCS#11 library would
    /// keep using the first one's tokens): run the tests with `cargo nextest`.
    #[allow(unsafe_code)]
    pub fn install_env_for_this_process(&self) {
        static INSTALLED: OnceLock<PathBuf> = OnceLock::new();
        let installed = INSTALLED.get_or_init(|| self.conf.clone());
        assert!(
            installed == &self.conf,
            "a different SoftHSM ({}) is already installed in this process; PKCS#11 is \
             initialised once per process: run the tests with `cargo nextest run`",
            installed.display()
        );
        for (key, value) in self.env() {
            // SAFETY: `set_var` races with concurrent reads of the environment (Rust's or libc's
            // getenv) from other threads. cargo-nextest runs each test in its own process, and the
            // test calls this before any PKCS#11 call or thread spawn, so no other thread of this
            // process is reading the environment now.
            unsafe { std::env::set_var(key, value) };
        }
    }
}

/// The PKCS#11 module for tests: `$COSIGNER_PKCS11_MODULE`, or SoftHSM's default path.
pub fn softhsm_module() -> PathBuf {
    std::env::var_os(MODULE_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOFTHSM_MODULE))
}

/// `../shared/fixtures` next to the workspace (real Nitro documents and the like), if present.
pub fn shared_fixtures() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures");
    dir.is_dir().then(|| dir.canonicalize().unwrap_or(dir))
}

/// Evaluates to the shared fixtures directory, or prints
/// `skipping: ../shared/fixtures not present` and returns from the calling test.
/// `require_fixtures!()` returns `()`; `require_fixtures!(Ok(()))` returns the given value.
///
/// ```
/// fn reads_a_fixture() {
///     let fixtures = cosigner_tests::require_fixtures!();
///     assert!(fixtures.is_dir());
/// }
/// fn reads_a_fixture_fallibly() -> anyhow::Result<()> {
///     let fixtures = cosigner_tests::require_fixtures!(Ok(()));
///     std::fs::read_dir(fixtures)?;
///     Ok(())
/// }
/// reads_a_fixture();
/// reads_a_fixture_fallibly().unwrap();
/// ```
#[macro_export]
macro_rules! require_fixtures {
    () => {
        $crate::require_fixtures!(())
    };
    ($ret:expr) => {
        match $crate::shared_fixtures() {
            Some(dir) => dir,
            None => {
                eprintln!("skipping: ../shared/fixtures not present");
                return $ret;
            }
        }
    };
}

/// Path of a workspace binary built by `cargo build --bins` (same profile as the test), or an
/// error that says so.
pub fn try_bin(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the test executable")?;
    // <target>/<profile>/deps/<test>-<hash>: binaries sit in <target>/<profile>.
    let Some(profile_dir) = exe.parent().and_then(Path::parent) else {
        bail!("cannot derive the target dir from {}", exe.display());
    };
    let path = profile_dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if !path.is_file() {
        bail!(
            "binary `{name}` not found at {}: run `cargo build --bins` first",
            path.display()
        );
    }
    Ok(path)
}

/// Like [`try_bin`], panicking with its message when the binary is missing.
pub fn bin(name: &str) -> PathBuf {
    match try_bin(name) {
        Ok(path) => path,
        Err(e) => panic!("{e:#}"),
    }
}

/// What a finished process printed and returned.
#[derive(Debug)]
pub struct Outcome {
    /// Exit code (`None` if killed by a signal).
    pub code: Option<i32>,
    /// Standard output, lossily decoded.
    pub stdout: String,
    /// Standard error, lossily decoded.
    pub stderr: String,
}

impl Outcome {
    /// Asserts success and returns stdout.
    ///
    /// # Panics
    /// If the process failed; the message carries its stderr.
    pub fn ok(&self) -> &str {
        assert_eq!(self.code, Some(0), "process failed: {}", self.stderr);
        &self.stdout
    }

    /// Asserts a clean refusal (exit code 1, exactly one line on stderr, no panic) and returns
    /// that line.
    ///
    /// # Panics
    /// If the process succeeded, panicked, died of a signal, or said more or less than one line.
    pub fn refused(&self) -> &str {
        assert!(
            !self.stderr.contains("panicked"),
            "process panicked: {}",
            self.stderr
        );
        assert_eq!(
            self.code,
            Some(1),
            "expected exit code 1; stdout {:?} stderr {:?}",
            self.stdout,
            self.stderr
        );
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(
            lines.len(),
            1,
            "expected one stderr line, got {:?}",
            self.stderr
        );
        lines.first().copied().unwrap_or_default()
    }
}

/// Runs a workspace binary with `args` and extra environment `envs`, stdin closed, and waits.
///
/// # Panics
/// If the binary is missing or cannot be started.
pub fn run<I, S>(name: &str, args: I, envs: &[(String, String)]) -> Outcome
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let output = std::process::Command::new(bin(name))
        .args(args)
        .envs(envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env_remove("COSIGNER_PKCS11_PIN")
        .env_remove("COSIGNER_PKCS11_SO_PIN")
        .env("RUST_BACKTRACE", "0")
        .stdin(std::process::Stdio::null())
        .output();
    match output {
        Ok(out) => Outcome {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        },
        Err(e) => panic!("cannot run {name}: {e}"),
    }
}
