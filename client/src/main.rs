//! `cosigner`: the client command line (Shard A's holder and ceremony coordinator).
//!
//! Exit codes: 0 success; 1 the operation was refused or failed (one line on stderr says why);
//! 2 the command line itself is wrong.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One line, the whole chain of causes: scripts read it, people too. Errors are
            // worded at their source; this only guarantees the shape (no line break, no URL).
            let line = cosigner_client::one_line(&format!("{err:#}"));
            eprintln!("error: {line}");
            ExitCode::FAILURE
        }
    }
}
