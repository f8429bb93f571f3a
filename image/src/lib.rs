//! `cosigner-image build`: the reproducible enclave image and the measurements clients pin.
//!
//! A build-only tool: it never runs on the production host, so the parent does not link it (nor
//! `aws-nitro-enclaves-image-format` and the OpenSSL it pulls in).
//!
//! Inputs: the statically linked `cosigner-enclave` and `cosigner-init` (from
//! `make enclave-image`), `SOURCE_DATE_EPOCH`, and optionally AWS's kernel blobs. Outputs, in the
//! output directory:
//!
//! | file | what |
//! | --- | --- |
//! | `cosigner-enclave` | the enclave binary, as packed |
//! | `ramdisk-app.cpio` | the application ramdisk: `/init`, `/cosigner-enclave`, `/etc/cosigner/enclave.toml`, mount points (PCR2) |
//! | `ramdisk-bootstrap.cpio` | with blobs: `/nsm.ko` (PCR1, with the kernel and its command line) |
//! | `cosigner-enclave.eif` | with blobs: the Enclave Image File (PCR0 = everything) |
//! | `pcrs.json` | `{"PCR0", "PCR1", "PCR2"}`, lowercase hex (`null` when not computed) |
//! | `trust-measurement.toml` | the `[[measurement]]` table for clients' trust files |
//!
//! Every byte is a function of the inputs: [`cpio`] fixes owners, modes, order, inodes and times;
//! [`eif`] takes its build time from `SOURCE_DATE_EPOCH`. No clock, user, host or path gets in.

pub mod cli;
pub mod cpio;
pub mod eif;
pub mod elf;
pub mod pcr;

use std::path::{Path, PathBuf};

use cpio::Entry;
use pcr::Pcr;

/// The ARN baked when no key is given: account `000000000000` does not exist, so KMS can never
/// answer for it, and a Nitro build of the enclave refuses to start with it. It makes the
/// reference image (`make enclave-image`, `make repro-check`) reproducible without a deployment's
/// key.
pub const PLACEHOLDER_KMS_KEY_ARN: &str =
    "arn:aws:kms:us-east-1:000000000000:key/00000000-0000-0000-0000-000000000000";

/// The KMS key the built-in configuration seals under: `KMS_KEY_ARN` and `AWS_REGION` at build
/// time. Part of the measured configuration (PCR2, hence PCR0): a key chosen by the untrusted
/// parent at run time could be one it can decrypt with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KmsKey {
    /// A key ARN or alias ARN (names its account).
    pub arn: String,
    /// Its region.
    pub region: String,
}

impl KmsKey {
    /// [`PLACEHOLDER_KMS_KEY_ARN`] in `us-east-1`.
    pub fn placeholder() -> Self {
        Self {
            arn: PLACEHOLDER_KMS_KEY_ARN.to_owned(),
            region: "us-east-1".to_owned(),
        }
    }

    /// `arn:PARTITION:kms:REGION:ACCOUNT:key/ID` or `…:alias/NAME`, checked strictly (it goes
    /// into the TOML as is); `region`, if given, must be the ARN's.
    pub fn new(arn: &str, region: Option<&str>) -> Result<Self, String> {
        let bad = |why: &str| {
            format!(
                "KMS key {:?}: {why}",
                arn.chars().take(120).collect::<String>()
            )
        };
        let parts: Vec<&str> = arn.split(':').collect();
        let [prefix, partition, service, arn_region, account, resource] = parts.as_slice() else {
            return Err(bad(
                "expected arn:aws:kms:REGION:ACCOUNT:key/ID or …:alias/NAME",
            ));
        };
        let lower = |s: &str| {
            !s.is_empty()
                && s.len() <= 32
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        };
        if *prefix != "arn" || *service != "kms" || !lower(partition) {
            return Err(bad(
                "expected arn:aws:kms:REGION:ACCOUNT:key/ID or …:alias/NAME",
            ));
        }
        if !lower(arn_region) {
            return Err(bad("the region is not a region name"));
        }
        if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad("the account is not 12 digits"));
        }
        let name_ok = |name: &str, extra: &[u8]| {
            (1..=256).contains(&name.len())
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || extra.contains(&b))
        };
        let resource_ok = match resource.split_once('/') {
            Some(("key", id)) => name_ok(id, b""),
            Some(("alias", name)) => name_ok(name, b"/_"),
            _ => false,
        };
        if !resource_ok {
            return Err(bad("the resource is not key/ID or alias/NAME"));
        }
        if let Some(region) = region
            && region != *arn_region
        {
            return Err(bad(&format!(
                "the key is in {arn_region}, AWS_REGION / --kms-region says {region}"
            )));
        }
        Ok(Self {
            arn: arn.to_owned(),
            region: (*arn_region).to_owned(),
        })
    }

    /// Whether this is [`PLACEHOLDER_KMS_KEY_ARN`].
    pub fn is_placeholder(&self) -> bool {
        self.arn == PLACEHOLDER_KMS_KEY_ARN
    }
}

/// The configuration baked into the image (`/etc/cosigner/enclave.toml`) when no `--config` is
/// given, measured in PCR2.
///
/// The service listens on vsock port 5000 of any CID (the parent relays client TCP there),
/// reaches the parent's store (and its AWS credentials) on CID 3 port 5001, attests with the NSM,
/// and seals under `key` through the parent's KMS proxy on CID 3 port 8000, with TLS ending in
/// the enclave. There is no token in an enclave, hence no rollback anchor: the configuration says
/// so (`allow_unanchored_state`, docs/kms.md), in the measured bytes.
pub fn enclave_config(key: &KmsKey) -> String {
    let KmsKey { arn, region } = key;
    let note = if key.is_placeholder() {
        "  # PLACEHOLDER: reference image only"
    } else {
        ""
    };
    format!(
        r#"# cosigner-enclave configuration inside the enclave image (measured in PCR2).
listen = "vsock:4294967295:5000"   # VMADDR_CID_ANY, port 5000: the parent relays client TCP here
store = "vsock:3:5001"             # the parent (CID 3): sealed-blob store and AWS credentials

[sealer]
kind = "kms"                       # AWS KMS; data keys only to this image's attestation (Recipient)
key_id = "{arn}"{note}
region = "{region}"
endpoint = "vsock:3:8000"          # the parent's proxy to KMS; TLS ends inside the enclave
allow_unanchored_state = true      # no token in an enclave: no rollback anchor (docs/kms.md)

[attester]
kind = "nitro"                     # the Nitro Secure Module (/dev/nsm, from nsm.ko)
"#
    )
}

/// Where the init finds things (`enclave/src/bin/cosigner-init.rs` uses the same paths).
pub const INIT_PATH: &str = "init";
/// The service binary inside the ramdisk.
pub const ENCLAVE_PATH: &str = "cosigner-enclave";
/// The baked configuration inside the ramdisk.
pub const CONFIG_PATH: &str = "etc/cosigner/enclave.toml";
/// The NSM driver inside the bootstrap ramdisk.
pub const NSM_PATH: &str = "nsm.ko";

/// Output file names.
pub mod files {
    /// The enclave binary, copied.
    pub const ENCLAVE: &str = "cosigner-enclave";
    /// The application ramdisk.
    pub const APP_RAMDISK: &str = "ramdisk-app.cpio";
    /// The bootstrap ramdisk (with blobs).
    pub const BOOTSTRAP_RAMDISK: &str = "ramdisk-bootstrap.cpio";
    /// The EIF (with blobs).
    pub const EIF: &str = "cosigner-enclave.eif";
    /// The measurements.
    pub const PCRS: &str = "pcrs.json";
    /// The trust-file snippet.
    pub const TRUST: &str = "trust-measurement.toml";
}

/// What `image build` needs.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The static `cosigner-enclave`.
    pub enclave: PathBuf,
    /// The static `cosigner-init`.
    pub init: PathBuf,
    /// Where the outputs go (created if missing).
    pub out_dir: PathBuf,
    /// The enclave configuration to bake in instead of [`enclave_config`] (a deployment's own):
    /// it is measured with the rest.
    pub config: Option<PathBuf>,
    /// The KMS key [`enclave_config`] names when `config` is `None`.
    pub kms_key: KmsKey,
    /// AWS's blobs (`bzImage`, `bzImage.config`, `cmdline`, `nsm.ko`), for the EIF.
    pub nitro_blobs: Option<PathBuf>,
    /// Every timestamp in the outputs.
    pub source_date_epoch: u64,
}

/// The measurements produced; PCR0 and PCR1 only with blobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pcrs {
    /// Whole image.
    pub pcr0: Option<Pcr>,
    /// Kernel, command line, bootstrap ramdisk.
    pub pcr1: Option<Pcr>,
    /// Application ramdisk.
    pub pcr2: Pcr,
}

impl Pcrs {
    /// The measurements of an image built without AWS's blobs: the application ramdisk's only.
    pub fn pcr2_only(pcr2: Pcr) -> Self {
        Self {
            pcr0: None,
            pcr1: None,
            pcr2,
        }
    }

    /// `pcrs.json`: keys PCR0, PCR1, PCR2; lowercase hex or null; one key per line.
    pub fn to_json(&self) -> String {
        let value =
            |pcr: Option<Pcr>| pcr.map_or(serde_json::Value::Null, |p| hex::encode(p).into());
        let mut map = serde_json::Map::new();
        map.insert("PCR0".into(), value(self.pcr0));
        map.insert("PCR1".into(), value(self.pcr1));
        map.insert("PCR2".into(), value(Some(self.pcr2)));
        let mut text =
            serde_json::to_string_pretty(&serde_json::Value::Object(map)).unwrap_or_default();
        text.push('\n');
        text
    }

    /// `trust-measurement.toml`: one `[[measurement]]` table pinning every PCR computed.
    pub fn to_trust_toml(&self) -> String {
        // The tool's old name, kept: this file's bytes are compared by `make repro-check` and by
        // auditors against images published before the packer moved to cosigner-image.
        let mut text = String::from(
            "# The measurement of this cosigner enclave image (cosigner-parent image build).\n\
             # Add this table to the clients' trust file, beside the current one during a rollout\n\
             # (docs/nitro.md, \"Rolling out a new image\").\n",
        );
        if self.pcr0.is_none() {
            text.push_str(
                "# PCR2 ONLY: built without --nitro-blobs, so the kernel, its command line and the\n\
                 # NSM driver (PCR0, PCR1) are not pinned. Do not deploy this table as it is: build\n\
                 # with NITRO_BLOBS to pin all three.\n",
            );
        }
        text.push_str("[[measurement]]\n");
        for (name, pcr) in [
            ("pcr0", self.pcr0),
            ("pcr1", self.pcr1),
            ("pcr2", Some(self.pcr2)),
        ] {
            if let Some(pcr) = pcr {
                text.push_str(&format!("{name} = \"{}\"\n", hex::encode(pcr)));
            }
        }
        text
    }
}

/// The application ramdisk's entries: the init, the service, its config and the mount points
/// the init uses (`dev` also holds `console`, so the kernel can give PID 1 a console before
/// devtmpfs is mounted).
pub fn application_entries(init: Vec<u8>, enclave: Vec<u8>, config: Vec<u8>) -> Vec<Entry> {
    vec![
        Entry::directory("dev", 0o755),
        Entry::char_device("dev/console", 0o600, 5, 1),
        Entry::directory("etc", 0o755),
        Entry::directory("etc/cosigner", 0o755),
        Entry::file(CONFIG_PATH, 0o444, config),
        Entry::file(INIT_PATH, 0o555, init),
        Entry::file(ENCLAVE_PATH, 0o555, enclave),
        Entry::directory("proc", 0o555),
        Entry::directory("run", 0o755),
        Entry::directory("sys", 0o555),
        Entry::directory("tmp", 0o1777),
    ]
}

/// The time of every bootstrap ramdisk entry: a constant, so that PCR1 depends on AWS's blobs
/// alone (the application ramdisk carries `SOURCE_DATE_EPOCH`).
pub const BOOTSTRAP_MTIME: u32 = 0;

/// The bootstrap ramdisk's entries: the NSM driver alone (the init deletes it once loaded).
pub fn bootstrap_entries(nsm_module: Vec<u8>) -> Vec<Entry> {
    vec![Entry::file(NSM_PATH, 0o444, nsm_module)]
}

/// `SOURCE_DATE_EPOCH` as the 32-bit time cpio stores.
pub fn cpio_mtime(source_date_epoch: u64) -> Result<u32, String> {
    u32::try_from(source_date_epoch).map_err(|_| {
        format!("SOURCE_DATE_EPOCH {source_date_epoch} is beyond 2106 (cpio times are 32-bit)")
    })
}

fn read_executable(flag: &str, path: &Path) -> Result<Vec<u8>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{flag} {}: {e}", path.display()))?;
    elf::check_static_x86_64(&bytes).map_err(|e| format!("{flag} {}: {e}", path.display()))?;
    Ok(bytes)
}

/// The configuration to bake: `--config FILE` (UTF-8 TOML; the enclave checks the rest when it
/// starts), else [`enclave_config`] for `key`.
fn read_config(path: Option<&Path>, key: &KmsKey) -> Result<Vec<u8>, String> {
    let Some(path) = path else {
        return Ok(enclave_config(key).into_bytes());
    };
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("--config {}: {e}", path.display()))?;
    text.parse::<toml::Table>().map_err(|e| {
        let reason = e
            .to_string()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        format!("--config {}: not TOML: {reason}", path.display())
    })?;
    Ok(text.into_bytes())
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), String> {
    std::fs::write(path, bytes).map_err(|e| format!("{}: {e}", path.display()))
}

fn remove_stale(path: &Path) -> Result<(), String> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Builds everything; every input is checked before anything is written.
pub fn build(options: &BuildOptions) -> Result<Pcrs, String> {
    let enclave = read_executable("--enclave", &options.enclave)?;
    let init = read_executable("--init", &options.init)?;
    let config = read_config(options.config.as_deref(), &options.kms_key)?;
    let blobs = options
        .nitro_blobs
        .as_deref()
        .map(eif::NitroBlobs::load)
        .transpose()?;
    let mtime = cpio_mtime(options.source_date_epoch)?;
    let out = &options.out_dir;
    std::fs::create_dir_all(out).map_err(|e| format!("--out-dir {}: {e}", out.display()))?;

    let application = cpio::write(&application_entries(init, enclave.clone(), config), mtime)
        .map_err(|e| e.to_string())?;
    let pcr2 = pcr::pcr2(&[&application])?;
    write_file(&out.join(files::ENCLAVE), &enclave)?;
    set_executable(&out.join(files::ENCLAVE))?;
    write_file(&out.join(files::APP_RAMDISK), &application)?;

    let pcrs = match blobs {
        Some(blobs) => {
            // Dated 0, not SOURCE_DATE_EPOCH: PCR1 measures the kernel, its command line and this
            // ramdisk, and must change only with AWS's blobs, not with every commit of ours.
            let bootstrap = cpio::write(
                &bootstrap_entries(blobs.nsm_module.clone()),
                BOOTSTRAP_MTIME,
            )
            .map_err(|e| e.to_string())?;
            write_file(&out.join(files::BOOTSTRAP_RAMDISK), &bootstrap)?;
            let measured = eif::write(
                &out.join(files::EIF),
                &blobs,
                &out.join(files::BOOTSTRAP_RAMDISK),
                &out.join(files::APP_RAMDISK),
                options.source_date_epoch,
            )?;
            if measured.pcr2 != pcr2 {
                return Err("the EIF's PCR2 differs from the application ramdisk's".into());
            }
            Pcrs {
                pcr0: Some(measured.pcr0),
                pcr1: Some(measured.pcr1),
                pcr2,
            }
        }
        None => {
            // An EIF or bootstrap ramdisk from an earlier build would not match these outputs.
            remove_stale(&out.join(files::EIF))?;
            remove_stale(&out.join(files::BOOTSTRAP_RAMDISK))?;
            Pcrs::pcr2_only(pcr2)
        }
    };
    write_file(&out.join(files::PCRS), pcrs.to_json().as_bytes())?;
    write_file(&out.join(files::TRUST), pcrs.to_trust_toml().as_bytes())?;
    Ok(pcrs)
}

fn set_executable(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;

    #[test]
    fn pcrs_json_has_three_keys_lowercase_hex_or_null() {
        let pcrs = Pcrs::pcr2_only([0xAB; 48]);
        let json: serde_json::Value = serde_json::from_str(&pcrs.to_json()).unwrap();
        assert_eq!(json["PCR0"], serde_json::Value::Null);
        assert_eq!(json["PCR1"], serde_json::Value::Null);
        assert_eq!(json["PCR2"], "ab".repeat(48));
        assert_eq!(json.as_object().unwrap().len(), 3);
    }

    #[test]
    fn trust_snippet_pins_what_was_computed() {
        let only2 = Pcrs::pcr2_only([1; 48]).to_trust_toml();
        assert!(only2.contains("PCR2 ONLY"));
        assert!(only2.contains(&format!("pcr2 = \"{}\"", "01".repeat(48))));
        assert!(!only2.contains("pcr0 ="));
        let all = Pcrs {
            pcr0: Some([0; 48]),
            pcr1: Some([1; 48]),
            pcr2: [2; 48],
        }
        .to_trust_toml();
        assert!(!all.contains("PCR2 ONLY"));
        for (k, b) in [("pcr0", "00"), ("pcr1", "01"), ("pcr2", "02")] {
            assert!(
                all.contains(&format!("{k} = \"{}\"", b.repeat(48))),
                "{all}"
            );
        }
    }

    #[test]
    fn cpio_time_is_32_bit() {
        assert_eq!(cpio_mtime(1_700_000_000), Ok(1_700_000_000));
        assert!(cpio_mtime(u64::from(u32::MAX) + 1).is_err());
    }
}
