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

pub mod bench;
pub mod bitcoin_tx;
pub mod couriers;
pub mod ecdsa;
pub mod imds;
pub mod in_process;
pub mod instances;
pub mod kms_standin;
pub mod members;
pub mod moto;
pub mod owner;
pub mod pkcs11;
pub mod postgres;
pub mod wallets;

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

/// A free TCP port on loopback (bound once, then released for the child to take).
///
/// # Panics
/// If no port can be bound.
pub fn free_port() -> u16 {
    match std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()) {
        Ok(addr) => addr.port(),
        Err(e) => panic!("no free port: {e}"),
    }
}

/// A new temporary directory holding one file, `name`, written with `contents`: the directory
/// (deleted when dropped) and the file's path. For configurations that name paths relative to
/// their own directory, and for files a test hands to code under test.
///
/// # Panics
/// If the directory or the file cannot be written.
pub fn file_in_tempdir(name: &str, contents: impl AsRef<[u8]>) -> (TempDir, PathBuf) {
    let written = TempDir::with_prefix("cosigner-file-").and_then(|dir| {
        let path = dir.path().join(name);
        std::fs::write(&path, contents)?;
        Ok((dir, path))
    });
    match written {
        Ok(written) => written,
        Err(e) => panic!("writing {name} in a temporary directory: {e}"),
    }
}

/// A child process killed when dropped.
#[derive(Debug)]
pub struct ChildGuard(pub std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One cosigner (parent + enclave, local attester, private SoftHSM) on loopback, as `make up`
/// starts it: `DIR/token/`, `DIR/store/store.db`, `DIR/attester/`.
#[derive(Debug)]
pub struct Cosigner {
    /// The cosigner's name (also its token label).
    pub name: String,
    /// Its SoftHSM (and temp dir holding everything else).
    pub hsm: SoftHsm,
    /// TCP port of its parent.
    pub port: u16,
    /// TCP port of its parent's mailbox (`mailbox_listen`).
    pub mailbox_port: u16,
    children: Vec<ChildGuard>,
}

impl Cosigner {
    /// Creates the token and attester, writes the configs, starts both processes and waits for
    /// the parent's port.
    pub fn start(name: &str) -> anyhow::Result<Self> {
        Self::start_with(name, "")
    }

    /// Like [`Cosigner::start`], appending `extra` (TOML, e.g. a `[policy]` table) to the
    /// enclave's configuration.
    pub fn start_with(name: &str, extra: &str) -> anyhow::Result<Self> {
        Self::start_configured(name, extra, "")
    }

    /// Like [`Cosigner::start_with`], also appending `parent_extra` (TOML, e.g. an
    /// `[aws_credentials]` table) to the parent's configuration.
    pub fn start_configured(name: &str, extra: &str, parent_extra: &str) -> anyhow::Result<Self> {
        let hsm = SoftHsm::new()?;
        let dir = hsm.dir().to_path_buf();
        std::fs::write(dir.join("pin"), format!("{name}-user-pin"))?;
        std::fs::write(dir.join("so-pin"), format!("{name}-so-pin"))?;
        std::fs::create_dir_all(dir.join("store"))?;
        let out = run(
            "cosigner-enclave",
            [
                "local-attester".as_ref(),
                "init".as_ref(),
                "--dir".as_ref(),
                dir.join("attester").as_os_str(),
                "--token-label".as_ref(),
                name.as_ref(),
                "--pin-file".as_ref(),
                dir.join("pin").as_os_str(),
                "--so-pin-file".as_ref(),
                dir.join("so-pin").as_os_str(),
            ],
            &hsm.env(),
        );
        if out.code != Some(0) {
            bail!("local-attester init failed: {}", out.stderr);
        }
        let port = free_port();
        let mailbox_port = loop {
            let p = free_port();
            if p != port {
                break p;
            }
        };
        let d = dir.display();
        std::fs::write(
            dir.join("enclave.toml"),
            format!(
                "listen = \"unix:{d}/enclave.sock\"\nstore = \"unix:{d}/store.sock\"\n\n[token]\nmodule = \"{}\"\nlabel = \"{name}\"\npin_file = \"{d}/pin\"\n\n[attester]\nkind = \"local\"\ndir = \"{d}/attester\"\n{extra}",
                softhsm_module().display()
            ),
        )?;
        std::fs::write(
            dir.join("parent.toml"),
            format!(
                "listen = \"127.0.0.1:{port}\"\nenclave = \"unix:{d}/enclave.sock\"\nstore_socket = \"{d}/store.sock\"\ndatabase = \"{d}/store/store.db\"\nmailbox_listen = \"127.0.0.1:{mailbox_port}\"\n"
            ),
        )?;
        if !parent_extra.is_empty() {
            let mut text = std::fs::read_to_string(dir.join("parent.toml"))?;
            text.push_str(parent_extra);
            std::fs::write(dir.join("parent.toml"), text)?;
        }
        let mut cosigner = Self {
            name: name.to_owned(),
            hsm,
            port,
            mailbox_port,
            children: Vec::new(),
        };
        cosigner.start_processes()?;
        Ok(cosigner)
    }

    fn spawn(&self, binary: &str, config: &str) -> anyhow::Result<ChildGuard> {
        let dir = self.hsm.dir();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("{binary}.log")))?;
        let child = std::process::Command::new(try_bin(binary)?)
            .args(["run", "--config"])
            .arg(dir.join(config))
            .envs(self.hsm.env())
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {binary}"))?;
        Ok(ChildGuard(child))
    }

    /// (Re)starts the parent and the enclave and waits until the parent accepts connections.
    pub fn start_processes(&mut self) -> anyhow::Result<()> {
        self.children.clear();
        let dir = self.hsm.dir().to_path_buf();
        let _ = std::fs::remove_file(dir.join("store.sock"));
        let _ = std::fs::remove_file(dir.join("enclave.sock"));
        self.children
            .push(self.spawn("cosigner-parent", "parent.toml")?);
        self.children
            .push(self.spawn("cosigner-enclave", "enclave.toml")?);
        for _ in 0..600 {
            if dir.join("enclave.sock").exists()
                && std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
                && std::net::TcpStream::connect(("127.0.0.1", self.mailbox_port)).is_ok()
            {
                return Ok(());
            }
            // A process that already exited will not come up: say so now, with its words.
            if self
                .children
                .iter_mut()
                .any(|c| matches!(c.0.try_wait(), Ok(Some(_))))
            {
                bail!("{} exited while starting: {}", self.name, self.logs())
            }
            std::thread::sleep(std::time::Duration::from_millis(25));
        }
        bail!("{} did not come up: {}", self.name, self.logs())
    }

    /// Kills both processes (state on disk is kept).
    pub fn stop(&mut self) {
        self.children.clear();
    }

    /// `tcp://127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.port)
    }

    /// `tcp://127.0.0.1:PORT` of its parent's mailbox.
    pub fn mailbox_addr(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.mailbox_port)
    }

    /// The operator root clients pin.
    pub fn root_pem(&self) -> PathBuf {
        self.hsm.dir().join("attester/root.pem")
    }

    /// The parent's SQLite database.
    pub fn database(&self) -> PathBuf {
        self.hsm.dir().join("store/store.db")
    }

    /// The host state directory of the parent's database (`store/`).
    pub fn store_dir(&self) -> PathBuf {
        self.hsm.dir().join("store")
    }

    /// Copies the parent's database directory to `to` (stop the cosigner first for a clean copy).
    pub fn copy_store(&self, to: &Path) -> anyhow::Result<()> {
        copy_dir(&self.store_dir(), to)
    }

    /// Replaces the parent's database directory by `from` (stop the cosigner first).
    pub fn restore_store(&self, from: &Path) -> anyhow::Result<()> {
        let dir = self.store_dir();
        std::fs::remove_dir_all(&dir)?;
        copy_dir(from, &dir)
    }

    /// Both processes' logs, for failure messages.
    pub fn logs(&self) -> String {
        ["cosigner-parent.log", "cosigner-enclave.log"]
            .iter()
            .map(|f| std::fs::read_to_string(self.hsm.dir().join(f)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Provider + recovery cosigners, a trust file pinning both roots and the enclave's PCR0, and a
/// client home.
#[derive(Debug)]
pub struct Deployment {
    /// Shard B.
    pub provider: Cosigner,
    /// Shard C.
    pub recovery: Cosigner,
    /// Scratch space: the trust file, client homes.
    pub dir: TempDir,
    /// The members' mailbox (`tcp://127.0.0.1:PORT`): the provider's parent serves it.
    pub mailbox: String,
}

impl Deployment {
    /// Starts both cosigners and writes `trust.toml`.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with("")
    }

    /// Like [`Deployment::start`], with `provider_extra` appended to the provider's enclave config.
    pub fn start_with(provider_extra: &str) -> anyhow::Result<Self> {
        Self::start_configured(provider_extra, "")
    }

    /// Like [`Deployment::start_with`], with `provider_parent_extra` appended to the provider's
    /// parent config.
    pub fn start_configured(
        provider_extra: &str,
        provider_parent_extra: &str,
    ) -> anyhow::Result<Self> {
        let provider =
            Cosigner::start_configured("provider", provider_extra, provider_parent_extra)?;
        let recovery = Cosigner::start("recovery")?;
        let dir = tempfile::Builder::new()
            .prefix("cosigner-client-")
            .tempdir()?;
        let pcr0 = run("cosigner-enclave", ["measure"], &[]);
        if pcr0.code != Some(0) {
            bail!("measure failed: {}", pcr0.stderr);
        }
        let deployment = Self {
            mailbox: provider.mailbox_addr(),
            provider,
            recovery,
            dir,
        };
        deployment.write_trust("trust.toml", pcr0.stdout.trim())?;
        Ok(deployment)
    }

    /// Writes a trust file pinning both roots and `pcr0`; returns its path.
    pub fn write_trust(&self, name: &str, pcr0: &str) -> anyhow::Result<PathBuf> {
        let path = self.dir.path().join(name);
        std::fs::write(
            &path,
            format!(
                "roots = [\"{}\", \"{}\"]\nmax_age_seconds = 300\n\n[[measurement]]\npcr0 = \"{pcr0}\"\n",
                self.provider.root_pem().display(),
                self.recovery.root_pem().display()
            ),
        )?;
        Ok(path)
    }

    /// The environment `make up` exports (`COSIGNER_PROVIDER`, `COSIGNER_RECOVERY`,
    /// `COSIGNER_TRUST`).
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("COSIGNER_PROVIDER".into(), self.provider.addr()),
            ("COSIGNER_RECOVERY".into(), self.recovery.addr()),
            (
                "COSIGNER_TRUST".into(),
                self.dir.path().join("trust.toml").display().to_string(),
            ),
        ]
    }

    /// A client home directory path (not created).
    pub fn home(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Runs `cosigner` with this deployment's environment.
    pub fn cosigner<I, S>(&self, args: I) -> Outcome
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        run("cosigner", args, &self.env())
    }
}

/// What a [`Relay`] does to the TLS records it forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tamper {
    /// Forward everything unchanged.
    Nothing,
    /// Flip one bit of the `n`th encrypted record.
    FlipBit(usize),
    /// Drop the `n`th encrypted record.
    Drop(usize),
    /// Send the `n`th encrypted record twice.
    Replay(usize),
    /// Send the `n`th encrypted record after the next one.
    Reorder(usize),
}

/// Which way a [`Relay`] tampers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client to cosigner.
    ToServer,
    /// Cosigner to client.
    ToClient,
}

/// A hostile relay between the client and a cosigner's parent, on loopback: it forwards TLS
/// records (5-byte header + body, RFC 8446 §5.1) and tampers with encrypted ones (content type
/// 23, counted from 0 per connection in the chosen direction).
#[derive(Debug)]
pub struct Relay {
    /// Its listening port.
    pub port: u16,
}

impl Relay {
    /// Starts relaying to `127.0.0.1:target`.
    pub fn start(target: u16, direction: Direction, tamper: Tamper) -> anyhow::Result<Self> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                let pairs = [
                    (client.try_clone(), server.try_clone(), Direction::ToServer),
                    (server.try_clone(), client.try_clone(), Direction::ToClient),
                ];
                for (from, to, dir) in pairs {
                    let (Ok(from), Ok(to)) = (from, to) else {
                        continue;
                    };
                    let t = if dir == direction {
                        tamper
                    } else {
                        Tamper::Nothing
                    };
                    std::thread::spawn(move || pump_records(from, to, t));
                }
            }
        });
        Ok(Self { port })
    }

    /// `tcp://127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.port)
    }
}

fn read_record(from: &mut std::net::TcpStream) -> Option<Vec<u8>> {
    use std::io::Read;
    let mut header = [0u8; 5];
    from.read_exact(&mut header).ok()?;
    let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
    let mut record = header.to_vec();
    record.resize(5 + len, 0);
    from.read_exact(record.get_mut(5..)?).ok()?;
    Some(record)
}

fn pump_records(mut from: std::net::TcpStream, mut to: std::net::TcpStream, tamper: Tamper) {
    use std::io::Write;
    let mut encrypted = 0usize;
    let mut held: Option<Vec<u8>> = None;
    while let Some(mut record) = read_record(&mut from) {
        let mut out: Vec<Vec<u8>> = Vec::new();
        if record.first() == Some(&23) {
            let n = encrypted;
            encrypted += 1;
            match tamper {
                Tamper::FlipBit(i) if i == n => {
                    if let Some(b) = record.last_mut() {
                        *b ^= 0x01;
                    }
                    out.push(record);
                }
                Tamper::Drop(i) if i == n => {}
                Tamper::Replay(i) if i == n => {
                    out.push(record.clone());
                    out.push(record);
                }
                Tamper::Reorder(i) if i == n => held = Some(record),
                _ => {
                    out.push(record);
                    out.extend(held.take());
                }
            }
        } else {
            out.push(record);
        }
        for r in out {
            if to.write_all(&r).is_err() {
                return;
            }
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Both);
}

fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        std::fs::copy(entry.path(), to.join(entry.file_name()))?;
    }
    Ok(())
}

/// Party `n`, where `n` is a literal known not to be 0.
#[allow(clippy::unwrap_used)]
pub fn pid(n: u16) -> cosigner_protocol::id::PartyId {
    cosigner_protocol::id::PartyId::new(n).unwrap()
}
