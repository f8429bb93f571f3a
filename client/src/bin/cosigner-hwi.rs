//! `cosigner-hwi`: a cosigner home as Bitcoin Core's external signer (`bitcoind
//! -signer=cosigner-hwi`), speaking the HWI command line of Bitcoin Core's
//! doc/external-signer.md (`cosigner_client::hwi`).
//!
//! Core cannot pass options of its own to the signer, so the home, trust file and provider come
//! from the environment the `cosigner` command reads (`COSIGNER_HOME`, `COSIGNER_TRUST`,
//! `COSIGNER_PROVIDER`, in bitcoind's environment); `COSIGNER_HWI_WALLET` limits the signers to
//! one wallet. Core wants exactly one signer for every operation (creating the wallet, showing an
//! address, signing), so a home with more than one personal Bitcoin wallet needs it.
//!
//! Output: one JSON value on stdout. A failure prints `{"error": …, "code": -1}` there too (what
//! HWI prints and Core reports), one line on stderr, and exits 1; a command line that does not
//! parse exits 2.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use cosigner_client::home::{Home, WalletFile};
use cosigner_client::hwi;
use cosigner_client::session::Session;
use cosigner_client::trust::Trust;
use cosigner_protocol::wire::WalletId;
use serde_json::{Value, json};

/// The most read from stdin with `--stdin`: a command and a PSBT at its size limit, as base64.
const MAX_STDIN: u64 = cosigner_protocol::psbt::MAX_PSBT_FILE as u64 + 64;

/// cosigner-hwi: a cosigner home as Bitcoin Core's external signer (HWI's command line).
#[derive(Debug, Parser)]
#[command(name = "cosigner-hwi", version, about)]
struct Cli {
    /// The signer: a wallet's extended key fingerprint (8 hex digits, as `enumerate` lists).
    #[arg(long, global = true, value_name = "HEX")]
    fingerprint: Option<String>,
    /// The network Bitcoin Core runs on: main, test, testnet4, signet or regtest.
    #[arg(long, global = true, value_name = "CHAIN")]
    chain: Option<String>,
    /// A test network (what Bitcoin Core before 22 passed instead of --chain).
    #[arg(long, global = true)]
    testnet: bool,
    /// Read the command and its arguments from stdin (Bitcoin Core sends `signtx <psbt>`).
    #[arg(long)]
    stdin: bool,
    /// This device's cosigner home.
    #[arg(long, value_name = "DIR", env = "COSIGNER_HOME")]
    home: Option<PathBuf>,
    /// The trust file: pinned roots and measurements.
    #[arg(long, value_name = "FILE", env = "COSIGNER_TRUST")]
    trust: Option<PathBuf>,
    /// The provider cosigner, tcp://HOST:PORT.
    #[arg(long, value_name = "ADDR", env = "COSIGNER_PROVIDER")]
    provider: Option<String>,
    /// Only this wallet (32 hex digits) is a signer.
    #[arg(long, value_name = "ID", env = "COSIGNER_HWI_WALLET")]
    wallet: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Clone, Subcommand)]
enum Command {
    /// List the signers: one per personal Bitcoin wallet of the home.
    Enumerate,
    /// The signer's receive and change descriptors.
    Getdescriptors {
        /// The account: cosigner wallets have one, 0.
        #[arg(long, default_value_t = 0)]
        account: u32,
    },
    /// Print the address of a descriptor of the signer's key, after checking it is the wallet's.
    Displayaddress {
        /// `tr([fingerprint/c/i]key)` or `tr([fingerprint]xpub/c/i)`.
        #[arg(long)]
        desc: String,
    },
    /// Sign a PSBT (base64) with this device and the provider.
    Signtx {
        /// The PSBT, base64.
        psbt: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(value) => {
            println!("{value}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            let line = cosigner_client::one_line(&format!("{err:#}"));
            println!("{}", json!({ "error": line, "code": -1 }));
            eprintln!("error: {line}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<Value> {
    let command = match (&cli.command, cli.stdin) {
        (Some(command), false) => command.clone(),
        (None, true) => from_stdin()?,
        (Some(_), true) => anyhow::bail!("--stdin reads the command from stdin: give none here"),
        (None, false) => {
            anyhow::bail!("give a command: enumerate, getdescriptors, displayaddress or signtx")
        }
    };
    let home = Home::open(
        &cli.home
            .clone()
            .context("set COSIGNER_HOME (or give --home DIR)")?,
    )?;
    let only = cli
        .wallet
        .as_deref()
        .map(|s| {
            WalletId::from_hex(s)
                .map_err(|_| anyhow::anyhow!("COSIGNER_HWI_WALLET {s:?}: 32 hex digits"))
        })
        .transpose()?;
    Ok(match command {
        Command::Enumerate => hwi::enumerate(&home, only.as_ref())?,
        Command::Getdescriptors { account } => {
            hwi::descriptors(&signer(&cli, &home, only.as_ref())?, account)?
        }
        Command::Displayaddress { desc } => {
            hwi::display_address(&signer(&cli, &home, only.as_ref())?, &desc)?
        }
        Command::Signtx { psbt } => {
            let wallet = signer(&cli, &home, only.as_ref())?;
            let trust = Trust::load(
                &cli.trust
                    .clone()
                    .context("set COSIGNER_TRUST (or give --trust FILE)")?,
            )?;
            // Bitcoin Core drops a signer's stderr when it succeeds, so the unsigned mode's
            // warning would never be seen: refused here outright.
            if trust.accepts_emulated_nsm() {
                anyhow::bail!(
                    "the trust file accepts QEMU's unsigned emulated NSM documents \
                     (emulated_nsm = true): cosigner-hwi refuses to sign with it"
                );
            }
            let addr = cli
                .provider
                .as_deref()
                .context("set COSIGNER_PROVIDER (or give --provider ADDR)")?;
            let mut provider = Session::connect(addr, &trust)?;
            hwi::sign(&home, &mut provider, &wallet, &psbt)?
        }
    })
}

/// The wallet `--fingerprint` names, on the network `--chain` says.
fn signer(cli: &Cli, home: &Home, only: Option<&WalletId>) -> anyhow::Result<WalletFile> {
    let fingerprint = cli
        .fingerprint
        .as_deref()
        .context("give --fingerprint HEX")?;
    // Every Core that runs external signers says its network; without it a wallet of another
    // network would be taken for this one.
    let chain = match (&cli.chain, cli.testnet) {
        (Some(chain), _) => chain.as_str(),
        (None, true) => "test",
        (None, false) => anyhow::bail!("give --chain (main, test, testnet4, signet or regtest)"),
    };
    Ok(hwi::select(home, only, fingerprint, chain)?)
}

/// The command HWI's `--stdin` reads: its words, parsed as if given after the options.
fn from_stdin() -> anyhow::Result<Command> {
    let mut text = String::new();
    std::io::stdin()
        .take(MAX_STDIN)
        .read_to_string(&mut text)
        .context("reading the command from stdin")?;
    #[derive(Debug, Parser)]
    #[command(name = "cosigner-hwi", no_binary_name = true)]
    struct Line {
        #[command(subcommand)]
        command: Command,
    }
    // Bitcoin Core 24-27 quote the PSBT (`signtx "<base64>"`), 28 and later do not; HWI reads
    // the line shell-style. Base64 holds neither spaces nor quotes, so one surrounding pair of
    // quotes per word is all there is to undo.
    let words = text.split_whitespace().map(unquoted);
    let line = Line::try_parse_from(words)
        .map_err(|e| anyhow::anyhow!("the command on stdin: {}", e.kind()))?;
    Ok(line.command)
}

/// `word` without one pair of surrounding double or single quotes.
fn unquoted(word: &str) -> &str {
    for quote in ['"', '\''] {
        if let Some(inner) = word.strip_prefix(quote).and_then(|w| w.strip_suffix(quote)) {
            return inner;
        }
    }
    word
}

#[cfg(test)]
mod tests {
    #[test]
    fn quoted_words_on_stdin_are_unquoted_once() {
        use super::unquoted;
        assert_eq!(unquoted("\"cHNidP8=\""), "cHNidP8=");
        assert_eq!(unquoted("'cHNidP8='"), "cHNidP8=");
        assert_eq!(unquoted("cHNidP8="), "cHNidP8=");
        assert_eq!(unquoted("\""), "\"");
        assert_eq!(unquoted("\"\"x\"\""), "\"x\"");
    }

    #[test]
    fn command_line_grammar_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
