//! Command-line grammar and dispatch.

mod attestation;
mod hexarg;

use clap::{Parser, Subcommand};

/// cosigner: MPC self-custody wallets with a provider shard in an attested enclave.
#[derive(Debug, Parser)]
#[command(name = "cosigner", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Verify or inspect attestation documents.
    #[command(subcommand)]
    Attestation(attestation::AttestationCommand),
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Attestation(cmd) => attestation::run(cmd),
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
