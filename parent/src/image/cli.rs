//! The `image` subcommand of `cosigner-parent` (its grammar lives here, beside the code).

use std::path::PathBuf;

use clap::Subcommand;

/// `cosigner-parent image …`
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Pack the static enclave and init into the reproducible ramdisk(s) and, with
    /// --nitro-blobs, the EIF; write pcrs.json and the trust-file measurement. Prints pcrs.json.
    Build {
        /// The statically linked cosigner-enclave (nitro feature, no local attester).
        #[arg(long, value_name = "BIN")]
        enclave: PathBuf,
        /// The statically linked cosigner-init (PID 1 of the image).
        #[arg(long, value_name = "BIN")]
        init: PathBuf,
        /// Output directory (created if missing), e.g. target/enclave.
        #[arg(long, value_name = "DIR")]
        out_dir: PathBuf,
        /// The enclave configuration to bake in (measured in PCR2); default: the built-in one
        /// (docs/nitro.md). A deployment's KMS key belongs here.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// AWS's blobs (bzImage, bzImage.config, cmdline, nsm.ko) as aws-nitro-enclaves-cli
        /// ships them: also write the EIF and PCR0, PCR1.
        #[arg(long, value_name = "DIR")]
        nitro_blobs: Option<PathBuf>,
        /// Every timestamp in the outputs (seconds since the epoch). Required.
        #[arg(long, env = "SOURCE_DATE_EPOCH", value_name = "SECONDS")]
        source_date_epoch: Option<String>,
    },
}

/// Runs an `image` subcommand; errors are one line.
pub fn run(command: ImageCommand) -> anyhow::Result<()> {
    match command {
        ImageCommand::Build {
            enclave,
            init,
            out_dir,
            config,
            nitro_blobs,
            source_date_epoch,
        } => {
            let source_date_epoch = match source_date_epoch.as_deref().map(str::trim) {
                None | Some("") => anyhow::bail!(
                    "SOURCE_DATE_EPOCH is not set: give --source-date-epoch or the variable \
                     (make enclave-image uses the last commit's time)"
                ),
                Some(text) => text.parse::<u64>().map_err(|_| {
                    anyhow::anyhow!("SOURCE_DATE_EPOCH {text:?} is not a number of seconds")
                })?,
            };
            let options = super::BuildOptions {
                enclave,
                init,
                out_dir,
                config,
                nitro_blobs,
                source_date_epoch,
            };
            let pcrs = super::build(&options).map_err(anyhow::Error::msg)?;
            print!("{}", pcrs.to_json());
            eprintln!(
                "cosigner-parent: image written to {}{}",
                options.out_dir.display(),
                if pcrs.pcr0.is_some() {
                    " (EIF, PCR0-2)"
                } else {
                    " (no --nitro-blobs: no EIF, PCR2 only)"
                }
            );
            Ok(())
        }
    }
}
