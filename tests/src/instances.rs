//! A provider run as several enclave instances on one token and one store behind one parent, as
//! `make up ENCLAVES=N` runs it: `enclave-K.toml`/`enclave-K.sock` for K = 1..N, `[anchors]
//! shared` with one lock file, `enclaves = [...]` in the parent's configuration.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::{ChildGuard, Cosigner, softhsm_module, try_bin};

/// The processes of a provider with several instances (its token and state are the
/// [`Cosigner`]'s, whose own processes are stopped).
#[derive(Debug)]
pub struct Instances {
    dir: PathBuf,
    port: u16,
    parent: Option<ChildGuard>,
    enclaves: Vec<Option<ChildGuard>>,
    env: Vec<(String, String)>,
}

fn enclave_config(dir: &Path, name: &str, k: usize, extra: &str) -> String {
    let d = dir.display();
    format!(
        "listen = \"unix:{d}/enclave-{k}.sock\"\nstore = \"unix:{d}/store.sock\"\ninstance = {k}\n\n\
         [token]\nmodule = \"{}\"\nlabel = \"{name}\"\npin_file = \"{d}/pin\"\n\n\
         [attester]\nkind = \"local\"\ndir = \"{d}/attester\"\n\n\
         [anchors]\nshared = true\nlock_file = \"{d}/anchors.lock\"\n{extra}",
        softhsm_module().display()
    )
}

impl Instances {
    /// Stops `cosigner`'s processes and starts its parent with `n` enclave instances on the same
    /// token and store; `extra` is appended to every instance's configuration.
    pub fn start(cosigner: &mut Cosigner, n: usize, extra: &str) -> anyhow::Result<Self> {
        cosigner.stop();
        let dir = cosigner.hsm.dir().to_path_buf();
        let d = dir.display();
        let list: Vec<String> = (1..=n)
            .map(|k| format!("\"unix:{d}/enclave-{k}.sock\""))
            .collect();
        std::fs::write(
            dir.join("parent-instances.toml"),
            format!(
                "listen = \"127.0.0.1:{}\"\nenclaves = [{}]\nstore_socket = \"{d}/store.sock\"\n\
                 database = \"{d}/store/store.db\"\nmailbox_listen = \"127.0.0.1:{}\"\n",
                cosigner.port,
                list.join(", "),
                cosigner.mailbox_port
            ),
        )?;
        for k in 1..=n {
            std::fs::write(
                dir.join(format!("enclave-{k}.toml")),
                enclave_config(&dir, &cosigner.name, k, extra),
            )?;
        }
        let mut me = Self {
            dir,
            port: cosigner.port,
            parent: None,
            enclaves: (0..n).map(|_| None).collect(),
            env: cosigner.hsm.env(),
        };
        let _ = std::fs::remove_file(me.dir.join("store.sock"));
        me.parent = Some(me.spawn("cosigner-parent", "parent-instances.toml", "parent")?);
        for _ in 0..400 {
            if me.dir.join("store.sock").exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        for k in 1..=n {
            me.start_instance(k)?;
        }
        for _ in 0..400 {
            if std::net::TcpStream::connect(("127.0.0.1", me.port)).is_ok() {
                return Ok(me);
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        bail!("the parent did not come up: {}", me.logs())
    }

    fn spawn(&self, binary: &str, config: &str, log: &str) -> anyhow::Result<ChildGuard> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{log}.log")))?;
        let child = Command::new(try_bin(binary)?)
            .args(["run", "--config"])
            .arg(self.dir.join(config))
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {binary}"))?;
        Ok(ChildGuard(child))
    }

    /// Starts instance `k` (1-based) and waits for its socket.
    pub fn start_instance(&mut self, k: usize) -> anyhow::Result<()> {
        let socket = self.dir.join(format!("enclave-{k}.sock"));
        let _ = std::fs::remove_file(&socket);
        let child = self.spawn(
            "cosigner-enclave",
            &format!("enclave-{k}.toml"),
            &format!("enclave-{k}"),
        )?;
        let slot = self
            .enclaves
            .get_mut(k.wrapping_sub(1))
            .context("no such instance")?;
        *slot = Some(child);
        for _ in 0..400 {
            if socket.exists() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        bail!("instance {k} did not come up: {}", self.logs())
    }

    /// Kills instance `k` at once (SIGKILL: no cleanup, sessions cut mid-request).
    pub fn kill_instance(&mut self, k: usize) {
        if let Some(slot) = self.enclaves.get_mut(k.wrapping_sub(1)) {
            *slot = None;
        }
    }

    /// Instance `k`'s process id, if it runs.
    pub fn pid(&self, k: usize) -> Option<u32> {
        self.enclaves
            .get(k.wrapping_sub(1))
            .and_then(|c| c.as_ref().map(|c| c.0.id()))
    }

    /// Every process's log, for failure messages and assertions.
    pub fn logs(&self) -> String {
        let mut names = vec!["parent".to_owned()];
        names.extend((1..=self.enclaves.len()).map(|k| format!("enclave-{k}")));
        names
            .iter()
            .map(|n| {
                format!(
                    "== {n}\n{}",
                    std::fs::read_to_string(self.dir.join(format!("{n}.log"))).unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Instance `k`'s log.
    pub fn log(&self, k: usize) -> String {
        std::fs::read_to_string(self.dir.join(format!("enclave-{k}.log"))).unwrap_or_default()
    }
}
