//! `cosigner-enclave`: the trusted side of cosigner.
//!
//! `run` serves clients (TLS inside, attestation first, sealed shares); `local-attester` is the
//! attestation tooling of the local (HSM-host) mode; `measure` prints this executable's PCR0.
//!
//! Exit codes: 0 success; 1 refused or failed (one line on stderr); 2 bad command line.
//!
//! `run` logs structured events (`cosigner_enclave::telemetry`): they go to the parent over the
//! store channel and come out in its log; only when the parent cannot be reached are they written
//! on this process's stderr, as JSON lines (`--log-format text` or `COSIGNER_LOG_FORMAT=text` for
//! people), filtered by `COSIGNER_LOG`. The one line a failed command ends with is not a log event
//! but the command's answer: plain text, whatever the format.

#[cfg(feature = "local-attester")]
mod local_attester;
mod run;

use std::process::ExitCode;

use clap::Parser;

/// cosigner-enclave: holds the provider shard inside a Nitro Enclave or behind a PKCS#11 HSM.
#[derive(Debug, Parser)]
#[command(name = "cosigner-enclave", version, about)]
enum Cli {
    /// Serve clients: TLS, attestation, DKG and signing, shares sealed in the token.
    Run {
        /// The TOML configuration.
        #[arg(long, value_name = "FILE")]
        config: std::path::PathBuf,
        /// How log events are written on stderr when the parent cannot take them.
        #[arg(long, value_enum, env = "COSIGNER_LOG_FORMAT", default_value = "json")]
        log_format: cosigner_enclave::telemetry::LogFormat,
    },
    /// Local (HSM-host) attestation: create an attester in a PKCS#11 token, produce documents.
    #[cfg(feature = "local-attester")]
    #[command(subcommand)]
    LocalAttester(local_attester::LocalAttesterCommand),
    /// Print the SHA-384 measurement of this executable (the local attester's PCR0 and PCR2).
    Measure,
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli {
        Cli::Run { config, log_format } => {
            cosigner_enclave::telemetry::init(log_format)?;
            run::run(&config)
        }
        #[cfg(feature = "local-attester")]
        Cli::LocalAttester(cmd) => local_attester::run(cmd),
        Cli::Measure => {
            let exe = std::env::current_exe()?;
            let digest = sha384_file(&exe)?;
            println!("{}", hex::encode(digest));
            Ok(())
        }
    }
}

fn sha384_file(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    use sha2::{Digest, Sha384};
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha384::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(hasher.finalize().to_vec())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // What was logged before the failure, and not shipped, first.
            cosigner_enclave::telemetry::flush_to_stderr();
            let line = format!("{err:#}").replace('\n', " ");
            eprintln!("error: {line}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn command_line_grammar_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
