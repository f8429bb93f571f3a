//! `cosigner-kms-standin`: a local KMS stand-in with `Recipient`, for the emulator. **A test tool,
//! never part of the enclave image**: it hands a data key to any process that names its own RSA
//! key in an (unverified) attestation document.
//!
//! It lets the real enclave image (`[sealer] kind = "kms"`, which refuses plain HTTP and data keys
//! without `Recipient` in a Nitro build) seal and unseal without AWS, e.g. booted in QEMU's
//! `nitro-enclave` machine with the parent's KMS proxy pointed at this process:
//!
//! ```text
//! cosigner-kms-standin --listen 127.0.0.1:0 --host kms-standin.test \
//!     --key-arn arn:aws:kms:eu-west-1:111122223333:key/… --ca-out standin-ca.pem \
//!     --access-key-id AKIA… [--secret-access-key-file FILE] [--ca-key FILE] \
//!     [--master-key-file FILE] [--quiet]
//! ```
//!
//! It writes its CA certificate (PEM) to `--ca-out`, for the enclave configuration's
//! `[sealer] tls_roots` (with `host` = `--host`), prints `listening ADDR` as the first line on
//! stdout, and serves TLS until killed: `TrentService.GenerateDataKey` and `TrentService.Decrypt`
//! for `--key-arn` with `Recipient`, refusing them without (`AccessDeniedException`). Requests must
//! be SigV4-signed by `--access-key-id`; with `--secret-access-key-file` the signature is
//! recomputed and checked. `--ca-key FILE` keeps the CA's key (made if the file is absent) so that
//! a restarted stand-in is still trusted by an image that baked the first certificate;
//! `--master-key-file FILE` keeps the master key (32 bytes, made if absent) so that its blobs
//! still open after a restart. One line per request on stderr unless `--quiet`.
//!
//! Exit codes: 2 for a bad command line (one line on stderr), 1 if it cannot start.

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use cosigner_tests::kms_standin::{self, Standin, StandinCa, StandinConfig};
use zeroize::Zeroizing;

const USAGE: &str = "usage: cosigner-kms-standin --listen ADDR --host NAME --key-arn ARN \
                     --ca-out FILE --access-key-id ID [--secret-access-key-file FILE] \
                     [--ca-key FILE] [--master-key-file FILE] [--quiet]";

/// The command line.
struct Flags {
    listen: SocketAddr,
    host: String,
    key_arn: String,
    ca_out: PathBuf,
    access_key_id: String,
    secret_access_key_file: Option<PathBuf>,
    ca_key: Option<PathBuf>,
    master_key_file: Option<PathBuf>,
    quiet: bool,
}

/// Parses the flags; `Ok(None)` for `--help`.
fn parse(args: impl Iterator<Item = String>) -> Result<Option<Flags>, String> {
    let mut args = args.peekable();
    let (mut listen, mut host, mut key_arn, mut ca_out, mut access_key_id) =
        (None, None, None, None, None);
    let (mut secret, mut ca_key, mut master, mut quiet) = (None, None, None, false);
    while let Some(flag) = args.next() {
        let slot = match flag.as_str() {
            "--help" | "-h" => return Ok(None),
            "--quiet" => {
                quiet = true;
                continue;
            }
            "--listen" => &mut listen,
            "--host" => &mut host,
            "--key-arn" => &mut key_arn,
            "--ca-out" => &mut ca_out,
            "--access-key-id" => &mut access_key_id,
            "--secret-access-key-file" => &mut secret,
            "--ca-key" => &mut ca_key,
            "--master-key-file" => &mut master,
            other => return Err(format!("unknown argument {other:?}")),
        };
        let value = args
            .next()
            .filter(|v| !v.starts_with("--"))
            .ok_or_else(|| format!("{flag} needs a value"))?;
        if slot.replace(value).is_some() {
            return Err(format!("{flag} given twice"));
        }
    }
    let required = |v: Option<String>, name: &str| v.ok_or_else(|| format!("{name} is required"));
    let listen = required(listen, "--listen")?;
    let listen = listen
        .parse()
        .map_err(|_| format!("--listen {listen:?}: expected IP:PORT, e.g. 127.0.0.1:0"))?;
    let host = required(host, "--host")?;
    kms_standin::tls::check_host(&host).map_err(|e| format!("--host: {e}"))?;
    let key_arn = required(key_arn, "--key-arn")?;
    let access_key_id = required(access_key_id, "--access-key-id")?;
    // The same checks the stand-in makes at start, here so that they are command-line errors.
    Standin::new(StandinConfig::new(&key_arn, &access_key_id).map_err(|e| e.to_string())?)
        .map_err(|e| format!("--key-arn/--access-key-id: {e}"))?;
    Ok(Some(Flags {
        listen,
        host,
        key_arn,
        ca_out: required(ca_out, "--ca-out")?.into(),
        access_key_id,
        secret_access_key_file: secret.map(PathBuf::from),
        ca_key: ca_key.map(PathBuf::from),
        master_key_file: master.map(PathBuf::from),
        quiet,
    }))
}

/// Writes a new file readable by its owner only; refuses to replace one.
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", path.display()))?;
    file.write_all(bytes)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))
}

/// The CA: loaded from `--ca-key` if that file exists, else new (and saved there if given).
fn ca(flags: &Flags) -> anyhow::Result<StandinCa> {
    match &flags.ca_key {
        Some(path) if path.exists() => {
            let pem = Zeroizing::new(
                std::fs::read_to_string(path)
                    .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?,
            );
            Ok(StandinCa::from_key_pem(&flags.host, &pem)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?)
        }
        Some(path) => {
            let ca = StandinCa::generate(&flags.host)?;
            write_private(path, ca.key_pem().as_bytes())?;
            Ok(ca)
        }
        None => Ok(StandinCa::generate(&flags.host)?),
    }
}

/// The master key: from `--master-key-file` (exactly 32 bytes) if it exists, else new (and saved
/// there if given).
fn master_key(flags: &Flags, fresh: &Zeroizing<[u8; 32]>) -> anyhow::Result<Zeroizing<[u8; 32]>> {
    let Some(path) = &flags.master_key_file else {
        return Ok(fresh.clone());
    };
    if !path.exists() {
        write_private(path, fresh.as_ref())?;
        return Ok(fresh.clone());
    }
    let bytes = Zeroizing::new(
        std::fs::read(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?,
    );
    let key: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
        anyhow::anyhow!(
            "{}: {} bytes, a master key is 32",
            path.display(),
            bytes.len()
        )
    })?;
    Ok(Zeroizing::new(key))
}

fn run(flags: &Flags) -> anyhow::Result<()> {
    let ca = ca(flags)?;
    std::fs::write(&flags.ca_out, ca.cert_pem())
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", flags.ca_out.display()))?;
    let mut config = StandinConfig::new(&flags.key_arn, &flags.access_key_id)?;
    config.master_key = master_key(flags, &config.master_key)?;
    config.verbose = !flags.quiet;
    if let Some(path) = &flags.secret_access_key_file {
        let text = Zeroizing::new(
            std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?,
        );
        let secret = text.trim();
        if secret.is_empty() {
            anyhow::bail!("{} is empty", path.display());
        }
        config.secret_access_key = Some(Zeroizing::new(secret.to_owned()));
    }
    let signature_check = match config.secret_access_key {
        Some(_) => "SigV4 signatures checked",
        None => "SigV4 form only, no secret to check signatures",
    };
    let standin = Arc::new(Standin::new(config)?);
    let tls = ca.server_config()?;
    let listener = TcpListener::bind(flags.listen)
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", flags.listen))?;
    let addr = listener.local_addr()?;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "listening {addr}")?;
    stdout.flush()?;
    eprintln!(
        "cosigner-kms-standin: TEST TOOL, not KMS: serving {} for {} over TLS on {addr}, CA in {} \
         ({}); Recipient documents are NOT verified",
        flags.key_arn,
        flags.host,
        flags.ca_out.display(),
        signature_check
    );
    kms_standin::serve(&listener, Some(&tls), &standin, &AtomicBool::new(false));
    Ok(())
}

fn main() -> ExitCode {
    let flags = match parse(std::env::args().skip(1)) {
        Ok(Some(flags)) => flags,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("cosigner-kms-standin: {e} ({USAGE})");
            return ExitCode::from(2);
        }
    };
    match run(&flags) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!(
                "cosigner-kms-standin: {}",
                format!("{e:#}").replace('\n', " ")
            );
            ExitCode::FAILURE
        }
    }
}
