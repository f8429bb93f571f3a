//! The Enclave Image File: AWS's kernel blobs and our two ramdisks, written by
//! `aws-nitro-enclaves-image-format`'s `EifBuilder` exactly as `nitro-cli build-enclave` writes
//! one (same section order, same SHA-384 measurements), except for the metadata section, whose
//! build time comes from `SOURCE_DATE_EPOCH` instead of the clock (aws-nitro-enclaves-image-format
//! #21/#22: the clock made two builds of the same source differ).
//!
//! Sections: kernel (`bzImage`), command line (`cmdline`, trimmed as nitro-cli does), metadata
//! (JSON), ramdisk 0 = the bootstrap ramdisk (`nsm.ko`), ramdisk 1 = the application ramdisk
//! (`/init`, `/cosigner-enclave`, its config). The kernel unpacks both into one root filesystem.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use aws_nitro_enclaves_image_format::defs::{EifBuildInfo, EifIdentityInfo};
use aws_nitro_enclaves_image_format::utils::EifBuilder;
use aws_nitro_enclaves_image_format::utils::eif_reader::EifReader;
use sha2::{Digest, Sha384};

use crate::pcr::Pcr;

/// The files `--nitro-blobs DIR` must hold, as aws-nitro-enclaves-cli ships them
/// (`/usr/share/nitro_enclaves/blobs/` once installed).
pub const BLOB_FILES: [&str; 4] = ["bzImage", "bzImage.config", "cmdline", "nsm.ko"];

/// AWS's kernel, its configuration, its command line and the NSM driver.
#[derive(Debug, Clone)]
pub struct NitroBlobs {
    /// The kernel image file.
    pub kernel: PathBuf,
    /// The kernel's version, from `bzImage.config` (metadata only).
    pub kernel_version: String,
    /// The kernel command line, trimmed.
    pub cmdline: String,
    /// The Nitro Secure Module driver.
    pub nsm_module: Vec<u8>,
}

impl NitroBlobs {
    /// Reads the blobs directory; a missing or empty file is refused, naming it.
    pub fn load(dir: &Path) -> Result<Self, String> {
        if !dir.is_dir() {
            return Err(format!("--nitro-blobs {}: not a directory", dir.display()));
        }
        let mut contents = BTreeMap::new();
        for name in BLOB_FILES {
            let path = dir.join(name);
            let bytes = std::fs::read(&path).map_err(|e| {
                format!(
                    "--nitro-blobs {}: {name}: {e} (expected {} from aws-nitro-enclaves-cli's blobs)",
                    dir.display(),
                    BLOB_FILES.join(", ")
                )
            })?;
            if bytes.is_empty() {
                return Err(format!("--nitro-blobs {}: {name} is empty", dir.display()));
            }
            contents.insert(name, bytes);
        }
        let text = |name: &str| -> Result<String, String> {
            let bytes = contents.get(name).cloned().unwrap_or_default();
            String::from_utf8(bytes)
                .map_err(|_| format!("--nitro-blobs {}: {name} is not text", dir.display()))
        };
        let cmdline = text("cmdline")?.trim().to_owned();
        if cmdline.is_empty() || cmdline.contains('\0') {
            return Err(format!(
                "--nitro-blobs {}: cmdline is empty or holds a NUL",
                dir.display()
            ));
        }
        Ok(Self {
            kernel: dir.join("bzImage"),
            kernel_version: kernel_version(&text("bzImage.config")?),
            cmdline,
            nsm_module: contents.remove("nsm.ko").unwrap_or_default(),
        })
    }
}

/// The version in a kernel config's banner (`# Linux/x86_64 4.14.256-… Kernel Configuration`).
pub fn kernel_version(config: &str) -> String {
    config
        .lines()
        .take(10)
        .find_map(|line| {
            let rest = line.strip_prefix("# Linux/")?;
            let mut words = rest.split_whitespace();
            let _arch = words.next()?;
            words.next().map(str::to_owned)
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

/// `SOURCE_DATE_EPOCH` as RFC 3339 in UTC (`2024-05-01T12:00:00+00:00`, nitro-cli's form
/// without the sub-seconds).
pub fn build_time(epoch: u64) -> String {
    let days = epoch / 86_400;
    let seconds = epoch % 86_400;
    // Howard Hinnant's civil_from_days, for days since 1970-01-01.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}+00:00",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60
    )
}

/// The metadata section: fixed but for the build time (from `SOURCE_DATE_EPOCH`) and the
/// kernel version. It is not measured by any PCR, but it is part of the EIF's bytes.
pub fn identity(blobs: &NitroBlobs, source_date_epoch: u64) -> EifIdentityInfo {
    EifIdentityInfo {
        img_name: "cosigner-enclave".to_owned(),
        img_version: env!("CARGO_PKG_VERSION").to_owned(),
        build_info: EifBuildInfo {
            build_time: build_time(source_date_epoch),
            // The packer's name when it lived in cosigner-parent, kept: these are the EIF's bytes,
            // and images published before the move to cosigner-image must rebuild identically.
            build_tool: "cosigner-parent image build".to_owned(),
            build_tool_version: env!("CARGO_PKG_VERSION").to_owned(),
            img_os: "Linux".to_owned(),
            img_kernel: blobs.kernel_version.clone(),
        },
        docker_info: serde_json::Value::Null,
        custom_info: serde_json::Value::Null,
    }
}

/// The three measurements of an EIF.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Measurements {
    /// Kernel, command line, every ramdisk.
    pub pcr0: Pcr,
    /// Kernel, command line, the bootstrap ramdisk.
    pub pcr1: Pcr,
    /// The application ramdisk(s).
    pub pcr2: Pcr,
}

fn pcr_from(map: &BTreeMap<String, String>, key: &str) -> Result<Pcr, String> {
    let value = map
        .get(key)
        .ok_or_else(|| format!("EIF measurements lack {key}"))?;
    let bytes = hex::decode(value).map_err(|e| format!("EIF {key}: {e}"))?;
    Pcr::try_from(bytes.as_slice()).map_err(|_| format!("EIF {key} is {} bytes", bytes.len()))
}

fn measurements(map: &BTreeMap<String, String>) -> Result<Measurements, String> {
    Ok(Measurements {
        pcr0: pcr_from(map, "PCR0")?,
        pcr1: pcr_from(map, "PCR1")?,
        pcr2: pcr_from(map, "PCR2")?,
    })
}

/// Writes the EIF to `out` and returns its measurements, as the builder computed them and as
/// the crate's reader computes them again from the written file (they must agree).
pub fn write(
    out: &Path,
    blobs: &NitroBlobs,
    bootstrap_ramdisk: &Path,
    application_ramdisk: &Path,
    source_date_epoch: u64,
) -> Result<Measurements, String> {
    // EifBuilder panics on a missing file: everything it opens is checked first.
    for path in [&blobs.kernel, bootstrap_ramdisk, application_ramdisk] {
        if !path.is_file() {
            return Err(format!("{}: not a file", path.display()));
        }
    }
    let mut builder = EifBuilder::new(
        &blobs.kernel,
        blobs.cmdline.clone(),
        None,
        Sha384::new(),
        0, // x86_64
        identity(blobs, source_date_epoch),
    );
    builder.add_ramdisk(bootstrap_ramdisk);
    builder.add_ramdisk(application_ramdisk);
    let mut file = File::create(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let built = measurements(&builder.write_to(&mut file))?;
    file.sync_all()
        .map_err(|e| format!("{}: {e}", out.display()))?;
    drop(file);

    let mut reader = EifReader::from_eif(out.display().to_string())
        .map_err(|e| format!("reading back {}: {e}", out.display()))?;
    if reader.eif_crc != reader.get_header().eif_crc32 {
        return Err(format!("{}: CRC mismatch on read-back", out.display()));
    }
    let read_back = measurements(&reader.get_measurements()?)?;
    if read_back != built {
        return Err(format!(
            "{}: measurements differ on read-back",
            out.display()
        ));
    }
    Ok(built)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_time_is_rfc3339_utc() {
        assert_eq!(build_time(0), "1970-01-01T00:00:00+00:00");
        assert_eq!(build_time(951_782_400), "2000-02-29T00:00:00+00:00");
        assert_eq!(build_time(1_700_000_000), "2023-11-14T22:13:20+00:00");
        assert_eq!(build_time(4_102_444_799), "2099-12-31T23:59:59+00:00");
    }

    #[test]
    fn kernel_version_from_the_config_banner() {
        let config = "#\n# Automatically generated file; DO NOT EDIT.\n\
                      # Linux/x86_64 4.14.256-209.484.amzn2.x86_64 Kernel Configuration\n#\n";
        assert_eq!(kernel_version(config), "4.14.256-209.484.amzn2.x86_64");
        assert_eq!(kernel_version("CONFIG_X=y\n"), "unknown");
    }
}
