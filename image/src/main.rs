//! `cosigner-image`: packs the reproducible Nitro Enclave image (docs/nitro.md).
//!
//! A build tool, run by `make enclave-image` and `make repro-check`; it never runs on the
//! production host. Exit codes: 0 success, 1 failure (one line on stderr), 2 usage error.

use std::process::ExitCode;

use clap::Parser;
use cosigner_image::cli::ImageCommand;

/// cosigner-image: the reproducible enclave image (ramdisks, EIF, PCRs).
#[derive(Debug, Parser)]
#[command(name = "cosigner-image", version, about)]
struct Cli {
    #[command(subcommand)]
    command: ImageCommand,
}

fn main() -> ExitCode {
    // --help and --version print and succeed; usage errors exit 2 (clap's `Error::exit`).
    match cosigner_image::cli::run(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cosigner-image: {e:#}");
            ExitCode::from(1)
        }
    }
}
