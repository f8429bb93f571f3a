//! `cosigner attestation verify|inspect`.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::Subcommand;
use cosigner_attestation::document::MAX_DOCUMENT_SIZE;
use cosigner_attestation::{
    AttestationDoc, DEFAULT_MAX_CLOCK_SKEW, Expectations, PinnedRoot, certificate_summary,
    parse_signed_or_emulated, verify, verify_emulated_unsigned,
};
use serde_json::{Value, json};

use super::hexarg::{self, Hex};

/// Attestation subcommands.
#[derive(Debug, Subcommand)]
pub enum AttestationCommand {
    /// Verify a document: signature, chain to the pinned root, time, PCRs and bindings.
    Verify {
        /// The document (COSE_Sign1, tagged or untagged).
        #[arg(long, value_name = "FILE")]
        doc: PathBuf,
        /// The pinned root certificate (PEM): AWS's Nitro root G1, or an operator's local root.
        #[arg(
            long,
            value_name = "PEM",
            required_unless_present = "emulated_nsm",
            conflicts_with = "emulated_nsm"
        )]
        root: Option<PathBuf>,
        /// TESTING ONLY, instead of --root: accept only an UNSIGNED document of QEMU's emulated
        /// NSM (`nitro-enclave` machine) and check everything else. Proves nothing: anyone can
        /// write such a document.
        #[arg(long)]
        emulated_nsm: bool,
        /// Validation time, seconds since the Unix epoch (default: now).
        #[arg(long, value_name = "UNIX_SECONDS")]
        at: Option<u64>,
        /// A PCR that must be present with this value (repeatable).
        #[arg(long = "pcr", value_name = "INDEX=HEX", value_parser = hexarg::pcr)]
        pcrs: Vec<(u8, Vec<u8>)>,
        /// The nonce the document must carry.
        #[arg(long, value_name = "HEX", value_parser = hexarg::bytes)]
        nonce: Option<Hex>,
        /// The user data the document must carry.
        #[arg(long, value_name = "HEX", value_parser = hexarg::bytes)]
        user_data: Option<Hex>,
        /// The public key the document must carry.
        #[arg(long, value_name = "HEX", value_parser = hexarg::bytes)]
        public_key: Option<Hex>,
        /// Refuse documents older than this at the validation time.
        #[arg(long, value_name = "SECONDS")]
        max_age: Option<u64>,
        /// Accept debug-mode documents (PCR0..2 all zero): the enclave's memory is readable.
        #[arg(long)]
        allow_debug: bool,
        /// Accept a document dated up to this far after the validation time (the attester's clock
        /// ahead of this one); 0 refuses any document from the future. At most a day.
        #[arg(
            long,
            value_name = "SECONDS",
            default_value_t = DEFAULT_MAX_CLOCK_SKEW.as_secs(),
            value_parser = clap::value_parser!(u64).range(..=cosigner_client::trust::MAX_CLOCK_SKEW_SECONDS)
        )]
        max_clock_skew: u64,
    },
    /// Print a document's contents WITHOUT verifying anything.
    Inspect {
        /// The document.
        #[arg(long, value_name = "FILE")]
        doc: PathBuf,
    },
}

/// Runs an attestation subcommand.
pub fn run(cmd: AttestationCommand) -> anyhow::Result<()> {
    match cmd {
        AttestationCommand::Verify {
            doc,
            root,
            emulated_nsm,
            at,
            pcrs,
            nonce,
            user_data,
            public_key,
            max_age,
            allow_debug,
            max_clock_skew,
        } => {
            let bytes = read_document(&doc)?;
            let root = match root {
                Some(path) => Some(load_root(&path)?),
                None => None,
            };
            let at = match at {
                Some(secs) => UNIX_EPOCH
                    .checked_add(Duration::from_secs(secs))
                    .context("--at is out of range")?,
                None => SystemTime::now(),
            };
            let mut pcr_map = BTreeMap::new();
            for (index, value) in pcrs {
                if pcr_map.insert(index, value).is_some() {
                    bail!("--pcr {index} is given twice");
                }
            }
            let expect = Expectations {
                pcrs: pcr_map,
                nonce: nonce.map(|h| h.0),
                user_data: user_data.map(|h| h.0),
                public_key: public_key.map(|h| h.0),
                max_age: max_age.map(Duration::from_secs),
                allow_debug,
                max_clock_skew: Duration::from_secs(max_clock_skew),
            };
            let verified = match &root {
                Some(root) => verify(&bytes, root, at, &expect),
                None => verify_emulated_unsigned(&bytes, at, &expect),
            }
            .map_err(|e| {
                anyhow::anyhow!(
                    "verification failed at check `{}`: {e}{}",
                    e.check(),
                    hint(&e)
                )
            })?;
            let mut out = doc_json(&verified.doc);
            out.insert("debug".into(), json!(verified.debug));
            if emulated_nsm {
                out.insert("emulated_nsm".into(), json!(true));
                eprintln!(
                    "warning: --emulated-nsm accepted QEMU's unsigned emulated NSM document: \
                     this proves nothing about the enclave; for testing only"
                );
            }
            emit(&Value::Object(out).to_string())
        }
        AttestationCommand::Inspect { doc } => {
            let bytes = read_document(&doc)?;
            // A document of QEMU's emulated NSM is shown too, said to be one: it can only ever
            // be read, never verified as signed.
            let (cose, parsed, emulated) = parse_signed_or_emulated(&bytes)
                .map_err(|e| anyhow::anyhow!("cannot parse at check `{}`: {e}", e.check()))?;
            let mut out = doc_json(&parsed);
            out.insert("status".into(), json!("UNVERIFIED"));
            if emulated {
                out.insert("emulated_nsm".into(), json!(true));
            }
            out.insert("debug_mode".into(), json!(parsed.is_debug_mode()));
            out.insert("signature".into(), json!(hex::encode(&cose.signature)));
            let describe = |der: &[u8]| match certificate_summary(der) {
                Ok(c) => json!({
                    "subject": c.subject, "issuer": c.issuer,
                    "not_before": c.not_before, "not_after": c.not_after, "sha256": c.sha256,
                }),
                Err(e) => json!({ "error": e.to_string() }),
            };
            out.insert("certificate".into(), describe(&parsed.certificate));
            out.insert(
                "cabundle".into(),
                Value::Array(parsed.cabundle.iter().map(|c| describe(c)).collect()),
            );
            eprintln!(
                "UNVERIFIED: nothing below has been checked; use `cosigner attestation verify`"
            );
            if emulated {
                eprintln!(
                    "UNSIGNED: a document of QEMU's emulated NSM; no check can make it prove \
                     anything about the enclave"
                );
            }
            emit(&serde_json::to_string_pretty(&Value::Object(out))?)
        }
    }
}

/// A pinned root certificate (PEM) from `path`.
fn load_root(path: &Path) -> anyhow::Result<PinnedRoot> {
    let pem = std::fs::read(path).map_err(|e| {
        anyhow::anyhow!(
            "root {}: {}",
            path.display(),
            cosigner_client::io_reason(&e)
        )
    })?;
    PinnedRoot::from_pem(&pem).with_context(|| format!("root {}", path.display()))
}

/// Writes one line to stdout; a closed pipe is an error, not a panic.
pub(super) fn emit(line: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}")
        .and_then(|()| stdout.flush())
        .context("cannot write to stdout")
}

/// What a refusal means in the user's terms, where the check's own words are a timestamp pair
/// or a certificate path.
fn hint(e: &cosigner_attestation::AttestationError) -> String {
    use cosigner_attestation::AttestationError as E;
    match e {
        E::FromTheFuture {
            timestamp_ms,
            validation_ms,
            ..
        } => format!(
            " (the document is dated {} s after the validation time: your clock, or --at, is \
             that far behind the attester's)",
            timestamp_ms.saturating_sub(*validation_ms).div_ceil(1000)
        ),
        E::TooOld { age_ms, .. } => format!(
            " (the document is {} s old at the validation time: an old document, or your \
             clock is that far ahead of the attester's)",
            age_ms / 1000
        ),
        E::Chain { reason } if !reason.contains("valid") => {
            " (is --root the root of this document's attester?)".into()
        }
        E::NotEmulated {
            part: cosigner_attestation::EmulatedPart::ProtectedHeader,
            ..
        } => " (a signed document, not QEMU's: verify it with --root)".into(),
        _ => String::new(),
    }
}

/// Reads at most one byte more than the cap, so a huge file is refused without being loaded.
fn read_document(path: &Path) -> anyhow::Result<Vec<u8>> {
    let io = |e: std::io::Error| {
        anyhow::anyhow!("{}: {}", path.display(), cosigner_client::io_reason(&e))
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut bytes = Vec::new();
    let cap = u64::try_from(MAX_DOCUMENT_SIZE).unwrap_or(u64::MAX) + 1;
    file.take(cap).read_to_end(&mut bytes).map_err(io)?;
    if bytes.len() > MAX_DOCUMENT_SIZE {
        bail!(
            "verification failed at check `structure`: {} is larger than {MAX_DOCUMENT_SIZE} bytes",
            path.display()
        );
    }
    Ok(bytes)
}

/// The fields every output shares: hex for bytes, PCRs keyed by their index as a string.
fn doc_json(doc: &AttestationDoc) -> serde_json::Map<String, Value> {
    let hex_or_null =
        |v: &Option<Vec<u8>>| v.as_ref().map_or(Value::Null, |b| json!(hex::encode(b)));
    let pcrs: serde_json::Map<String, Value> = doc
        .pcrs
        .iter()
        .map(|(i, v)| (i.to_string(), json!(hex::encode(v))))
        .collect();
    let mut out = serde_json::Map::new();
    out.insert("module_id".into(), json!(doc.module_id));
    out.insert("timestamp".into(), json!(doc.timestamp));
    out.insert("digest".into(), json!(doc.digest));
    out.insert("pcrs".into(), Value::Object(pcrs));
    out.insert("nonce".into(), hex_or_null(&doc.nonce));
    out.insert("user_data".into(), hex_or_null(&doc.user_data));
    out.insert("public_key".into(), hex_or_null(&doc.public_key));
    out
}
