//! `cosigner-parent`: the untrusted half on the host.
//!
//! It relays client TCP connections to the enclave (vsock, or a unix socket locally) without
//! terminating TLS, and keeps the enclave's sealed blobs. It holds no secret and is trusted for
//! nothing: whatever it changes, drops or replays, the enclave or the client detects.
//!
//! `cosigner-parent run --config FILE` runs until the process is stopped (SIGTERM, SIGINT): the
//! store commits every write before answering, so being killed loses nothing acknowledged. Exit
//! codes: 0 success, 1 failure (one line on stderr), 2 usage error.
//!
//! While it runs, `run` logs structured events on stderr (`cosigner_parent::logging`): JSON lines
//! by default, `--log-format text` (or `COSIGNER_LOG_FORMAT=text`) for people, filtered by
//! `COSIGNER_LOG`. The enclave's events come out here too, with `"source":"enclave"`. The one line
//! a failed command ends with is not a log event but the command's answer: plain text, as the
//! exit-code contract above says, whatever the format.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use cosigner_parent::logging::{self, LogFormat};
use cosigner_parent::{Config, Parent};

/// cosigner-parent: relays opaque bytes between clients and the enclave, stores sealed blobs.
#[derive(Debug, Parser)]
#[command(name = "cosigner-parent", version, about)]
enum Cli {
    /// Relay client connections to the enclave and serve its blob store, until stopped.
    Run {
        /// The TOML configuration (listen, enclave, store_socket, database).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// How log events are written on stderr: `json` (one object a line) or `text`.
        #[arg(long, value_enum, env = "COSIGNER_LOG_FORMAT", default_value = "json")]
        log_format: LogFormat,
    },
    /// The enclave's audit log as this parent stores it.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// The reproducible enclave image: runs `cosigner-image ARGS…` (docs/nitro.md), a build tool
    /// the parent does not link, found beside this binary or on PATH.
    #[command(disable_help_flag = true)]
    Image {
        /// Passed to cosigner-image as they are, e.g. `build --enclave BIN …`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
        args: Vec<OsString>,
    },
    /// Wallet enrollment: the operator key and the tokens it signs (docs/deployment.md).
    #[command(subcommand)]
    Enrollment(cosigner_parent::enrollment::EnrollmentCommand),
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Check every instance's chain and every signature; print `{"entries","head","chains"}` or
    /// name the broken entry.
    Verify {
        /// The parent's SQLite database.
        #[arg(
            long,
            value_name = "FILE",
            required_unless_present = "config",
            conflicts_with = "config"
        )]
        database: Option<PathBuf>,
        /// Or the parent's configuration: its `database` (SQLite or PostgreSQL).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// The enclave's audit key (hex), as `cosigner status` prints it from the attestation.
        #[arg(long, value_name = "HEX")]
        key: String,
    },
}

fn main() -> ExitCode {
    // --help and --version print and succeed; usage errors exit 2 (clap's `Error::exit`).
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cosigner-parent: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli {
        Cli::Run { config, log_format } => {
            logging::init(log_format)?;
            let config = Config::load(&config)?;
            let enclaves = config
                .enclaves
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            let summary = format!(
                "relaying {} -> {enclaves}; store on {} ({})",
                config.listen,
                config.store_socket.display(),
                config.database.display()
            );
            let (config_enclave, config_store) =
                (enclaves, config.store_socket.display().to_string());
            // The certificate exists once the parent started (made then if absent).
            let certificate = config.mailbox.tls.as_ref().map(|t| t.certificate.clone());
            let running = Parent::new(config)
                .and_then(Parent::start)
                .context("starting")?;
            let mailbox_field = match (running.mailbox_addr(), certificate) {
                (Some(a), Some(cert)) => Some(format!(
                    "tls://{a}#{}",
                    cosigner_parent::mailbox::certificate_pin(&cert)?
                )),
                (Some(a), None) => Some(a.to_string()),
                (None, _) => None,
            };
            let metrics = running
                .metrics_addr()
                .map(|a| format!("; operator listener on http://{a} (/metrics, /healthz, /readyz)"))
                .unwrap_or_default();
            // The mailbox's address is not the message's last word (members copy it from the
            // line up to the next space); it is also the `mailbox` field.
            let mailbox = mailbox_field
                .as_ref()
                .map(|m| format!("; mailbox on {m} (for members)"))
                .unwrap_or_default();
            tracing::info!(
                listen = %running.client_addr(),
                enclave = %config_enclave,
                store_socket = %config_store,
                mailbox = mailbox_field,
                metrics = running.metrics_addr().map(|a| a.to_string()),
                "{summary}; listening on {}{metrics}{mailbox}",
                running.client_addr()
            );
            running.wait();
            Ok(())
        }
        Cli::Image { args } => Err(run_image_tool(args)),
        Cli::Enrollment(command) => cosigner_parent::enrollment::run(command),
        Cli::Audit(AuditCommand::Verify {
            database,
            config,
            key,
        }) => {
            let report = match (database, config) {
                (Some(database), _) => cosigner_parent::audit::verify_database(&database, &key)?,
                (None, Some(config)) => cosigner_parent::audit::verify_configured(
                    &cosigner_parent::Config::load(&config)?,
                    &key,
                )?,
                (None, None) => {
                    anyhow::bail!("audit verify: give --database FILE or --config FILE")
                }
            };
            let chains: Vec<serde_json::Value> = report
                .chains
                .iter()
                .map(|c| {
                    serde_json::json!({"instance": c.instance, "entries": c.entries, "head": c.head})
                })
                .collect();
            println!(
                "{}",
                serde_json::json!({"entries": report.entries, "head": report.head, "chains": chains})
            );
            Ok(())
        }
    }
}

/// Replaces this process with `cosigner-image ARGS…` (its exit code and output are the command's);
/// returns only if that fails. The packer lives in its own crate so that the production parent does
/// not link `aws-nitro-enclaves-image-format` and OpenSSL: `cosigner-parent image` is a forwarder.
/// Only the packer installed beside this binary runs, never one found on `PATH`: the image and its
/// PCRs are what clients pin, and a stray or planted `cosigner-image` earlier on `PATH` would make
/// them.
fn run_image_tool(args: Vec<OsString>) -> anyhow::Error {
    const TOOL: &str = "cosigner-image";
    let Some(program) = std::env::current_exe()
        .ok()
        .map(|exe| exe.with_file_name(TOOL))
        .filter(|path| path.is_file())
    else {
        return anyhow::anyhow!(
            "`image` runs the {TOOL} beside this binary, and there is none: run {TOOL} itself \
             (make build builds it)"
        );
    };
    let error = std::process::Command::new(&program).args(args).exec();
    anyhow::anyhow!("`image` runs {}: {error}", program.display())
}
