//! The commands of `cosigner-image` (their grammar lives here, beside the code).

use std::path::PathBuf;

use clap::Subcommand;

/// `cosigner-image …`
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
        /// (docs/nitro.md), sealing under --kms-key-arn.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// The KMS key the built-in configuration seals under, measured with it (PCR2). Without
        /// it: a placeholder no AWS account has, for a reproducible reference image that refuses
        /// to start in an enclave. Not with --config (the file names its own key).
        #[arg(long, env = "KMS_KEY_ARN", value_name = "ARN")]
        kms_key_arn: Option<String>,
        /// The key's region (default: the ARN's, which it must match). Ignored without
        /// --kms-key-arn.
        #[arg(long, env = "AWS_REGION", value_name = "REGION")]
        kms_region: Option<String>,
        /// AWS's blobs (bzImage, bzImage.config, cmdline, nsm.ko) as aws-nitro-enclaves-cli
        /// ships them: also write the EIF and PCR0, PCR1.
        #[arg(long, value_name = "DIR")]
        nitro_blobs: Option<PathBuf>,
        /// Every timestamp in the outputs (seconds since the epoch). Required.
        #[arg(long, env = "SOURCE_DATE_EPOCH", value_name = "SECONDS")]
        source_date_epoch: Option<String>,
    },
}

/// Runs a `cosigner-image` command; errors are one line.
pub fn run(command: ImageCommand) -> anyhow::Result<()> {
    match command {
        ImageCommand::Build {
            enclave,
            init,
            out_dir,
            config,
            kms_key_arn,
            kms_region,
            nitro_blobs,
            source_date_epoch,
        } => {
            let kms_key_arn = kms_key_arn.filter(|a| !a.trim().is_empty());
            let kms_key = match (&config, kms_key_arn) {
                (Some(_), Some(_)) => anyhow::bail!(
                    "give --config or --kms-key-arn (KMS_KEY_ARN), not both: a --config file \
                     names its own KMS key"
                ),
                (_, Some(arn)) => crate::KmsKey::new(
                    arn.trim(),
                    kms_region
                        .as_deref()
                        .map(str::trim)
                        .filter(|r| !r.is_empty()),
                )
                .map_err(anyhow::Error::msg)?,
                (_, None) => crate::KmsKey::placeholder(),
            };
            let source_date_epoch = match source_date_epoch.as_deref().map(str::trim) {
                None | Some("") => anyhow::bail!(
                    "SOURCE_DATE_EPOCH is not set: give --source-date-epoch or the variable \
                     (make enclave-image uses the last commit's time)"
                ),
                Some(text) => text.parse::<u64>().map_err(|_| {
                    anyhow::anyhow!("SOURCE_DATE_EPOCH {text:?} is not a number of seconds")
                })?,
            };
            let placeholder = options_placeholder(config.is_none(), &kms_key);
            let options = crate::BuildOptions {
                enclave,
                init,
                out_dir,
                config,
                kms_key,
                nitro_blobs,
                source_date_epoch,
            };
            let pcrs = crate::build(&options).map_err(anyhow::Error::msg)?;
            print!("{}", pcrs.to_json());
            eprintln!(
                "cosigner-image: image written to {}{}{placeholder}",
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

/// The note for an image sealing under the placeholder key (nothing otherwise).
fn options_placeholder(built_in: bool, key: &crate::KmsKey) -> &'static str {
    if built_in && key.is_placeholder() {
        "; KMS key: the PLACEHOLDER (no KMS_KEY_ARN), a reference image that will not start in \
         an enclave"
    } else {
        ""
    }
}
