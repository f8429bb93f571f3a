//! Command-line grammar and dispatch.

mod attestation;
mod dao;
mod eth;
mod hexarg;
mod receipt;
mod show;
mod status;
mod wallet;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// cosigner: MPC self-custody wallets with a provider shard in an attested enclave.
#[derive(Debug, Parser)]
#[command(name = "cosigner", version, about)]
pub struct Cli {
    #[command(flatten)]
    globals: Globals,
    #[command(subcommand)]
    command: Command,
}

/// Settings shared by the wallet commands; each has an environment variable.
#[derive(Debug, Clone, Args)]
pub struct Globals {
    /// This device's directory: device key, shares (0600), wallets. Created if missing.
    #[arg(long, global = true, value_name = "DIR", env = "COSIGNER_HOME")]
    home: Option<PathBuf>,
    /// The provider cosigner (Shard B), tcp://HOST:PORT.
    #[arg(long, global = true, value_name = "ADDR", env = "COSIGNER_PROVIDER")]
    provider: Option<String>,
    /// The recovery cosigner (Shard C), tcp://HOST:PORT.
    #[arg(long, global = true, value_name = "ADDR", env = "COSIGNER_RECOVERY")]
    recovery: Option<String>,
    /// The parent's mailbox for DAO ceremonies: tls://HOST:PORT#sha256:HEX (its certificate
    /// pinned, as the parent prints it) or tcp://HOST:PORT (default: the one the invitation or
    /// the wallet names).
    #[arg(long, global = true, value_name = "ADDR", env = "COSIGNER_MAILBOX")]
    mailbox: Option<String>,
    /// The trust file: pinned roots and measurements.
    #[arg(long, global = true, value_name = "FILE", env = "COSIGNER_TRUST")]
    trust: Option<PathBuf>,
    /// Network for addresses: bitcoin, testnet, signet or regtest.
    #[arg(
        long,
        global = true,
        value_name = "NET",
        env = "COSIGNER_NETWORK",
        default_value = "regtest"
    )]
    network: String,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Verify or inspect attestation documents.
    #[command(subcommand)]
    Attestation(attestation::AttestationCommand),
    /// Create, list and show wallets.
    #[command(subcommand)]
    Wallet(wallet::WalletCommand),
    /// Sign a PSBT (or, for a wallet without a policy, a 32-byte sighash) with the provider.
    Sign(wallet::SignArgs),
    /// Print one of a Bitcoin wallet's derived addresses (BIP-32 non-hardened, BIP-86 Taproot).
    Address(wallet::AddressArgs),
    /// Print this device's P-256 key (for a DAO's members file).
    DeviceKey(dao::DeviceKeyArgs),
    /// Create DAO (multi-member) wallets.
    #[command(subcommand)]
    Dao(dao::DaoCommand),
    /// Join a DAO wallet from an invitation and take part in its DKG.
    Join(dao::JoinArgs),
    /// Review and approve a DAO signing request, then take part in the signature.
    Approve(dao::ApproveArgs),
    /// Refresh every party's share to a new epoch (same key and address).
    Refresh(wallet::RefreshArgs),
    /// Take over a wallet on this (new) device with the recovery credential.
    Recover(wallet::RecoverArgs),
    /// Check a signature's receipt offline.
    #[command(subcommand)]
    Receipt(receipt::ReceiptCommand),
    /// Attest to every configured cosigner and report each: reachable or not, attested or not
    /// and why, and what it runs (exit 1 if any is unreachable or refused).
    Status(status::StatusArgs),
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Attestation(cmd) => attestation::run(cmd),
        Command::Wallet(cmd) => wallet::run(&cli.globals, cmd),
        Command::Sign(args) => wallet::sign(&cli.globals, args),
        Command::Address(args) => wallet::address(&cli.globals, args),
        Command::Refresh(args) => wallet::refresh(&cli.globals, args),
        Command::Recover(args) => wallet::recover(&cli.globals, args),
        Command::Status(args) => status::status(&cli.globals, &args),
        Command::Receipt(cmd) => receipt::run(cmd),
        Command::DeviceKey(args) => dao::device_key(&cli.globals, args),
        Command::Dao(cmd) => dao::run(&cli.globals, cmd),
        Command::Join(args) => dao::join(&cli.globals, args),
        Command::Approve(args) => dao::approve(&cli.globals, args),
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
