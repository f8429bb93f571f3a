//! `cosigner-parent`: the untrusted half on the host.
//!
//! It will relay client TCP connections to the enclave (vsock, or a unix socket locally) without
//! terminating TLS, and keep the enclave's sealed blobs. It holds no secret and is trusted for
//! nothing: whatever it changes, drops or replays, the enclave or the client detects. The relay and
//! store arrive with the end-to-end wallet; today the binary only answers `--help`/`--version`.

use clap::Parser;

/// cosigner-parent: relays opaque bytes between clients and the enclave, stores sealed blobs.
#[derive(Debug, Parser)]
#[command(name = "cosigner-parent", version, about)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
    eprintln!("cosigner-parent: no command yet; see `cosigner-parent --help`");
    std::process::exit(2);
}
