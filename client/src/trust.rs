//! The trust file: what this client accepts from a cosigner's attestation.
//!
//! ```toml
//! roots = ["root.pem"]       # pinned root certificates (PEM), relative to this file: AWS's
//!                            # Nitro root, or the operators' local roots (one per cosigner)
//! max_age_seconds = 300      # oldest document accepted
//! allow_debug = false        # debug-mode enclaves: never in production
//!
//! [[measurement]]            # at least one; several during an image rollout
//! pcr0 = "…96 hex…"          # any of pcr0, pcr1, pcr2, pcr3, pcr4, pcr8; all given must match
//! pcr2 = "…96 hex…"
//! ```
//!
//! A trust file that pins no measurement is refused: it would accept any code (fail closed).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use cosigner_attestation::{AttestationDoc, PinnedRoot};
use serde::Deserialize;

use crate::error::{ClientError, Result};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TrustFile {
    roots: Vec<std::path::PathBuf>,
    #[serde(default = "default_max_age")]
    max_age_seconds: u64,
    #[serde(default)]
    allow_debug: bool,
    #[serde(default)]
    measurement: Vec<MeasurementFile>,
}

fn default_max_age() -> u64 {
    300
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MeasurementFile {
    pcr0: Option<String>,
    pcr1: Option<String>,
    pcr2: Option<String>,
    pcr3: Option<String>,
    pcr4: Option<String>,
    pcr8: Option<String>,
}

/// A set of PCR values that must all match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Measurement(pub BTreeMap<u8, Vec<u8>>);

/// A parsed trust file.
#[derive(Debug, Clone)]
pub struct Trust {
    /// The pinned roots (a document must chain to one of them).
    pub roots: Vec<PinnedRoot>,
    /// Oldest document accepted.
    pub max_age: Duration,
    /// Accept debug-mode documents.
    pub allow_debug: bool,
    /// Allowed measurement sets (at least one).
    pub measurements: Vec<Measurement>,
}

fn bad(path: &Path, reason: impl std::fmt::Display) -> ClientError {
    ClientError::Trust {
        reason: format!("{}: {reason}", path.display()),
    }
}

impl Trust {
    /// Reads a trust file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| bad(path, e))?;
        let file: TrustFile = toml::from_str(&text).map_err(|e| bad(path, e))?;
        if file.roots.is_empty() {
            return Err(bad(path, "pins no root certificate"));
        }
        let mut roots = Vec::new();
        for root in &file.roots {
            let root_path = path.parent().unwrap_or(Path::new(".")).join(root);
            let pem = std::fs::read(&root_path).map_err(|e| bad(&root_path, e))?;
            roots.push(PinnedRoot::from_pem(&pem).map_err(|e| bad(&root_path, e))?);
        }
        if file.measurement.is_empty() {
            return Err(bad(path, "pins no measurement: refusing to trust any code"));
        }
        let mut measurements = Vec::new();
        for (i, m) in file.measurement.iter().enumerate() {
            let mut pcrs = BTreeMap::new();
            for (index, value) in [
                (0u8, &m.pcr0),
                (1, &m.pcr1),
                (2, &m.pcr2),
                (3, &m.pcr3),
                (4, &m.pcr4),
                (8, &m.pcr8),
            ] {
                if let Some(hex_value) = value {
                    let bytes = hex::decode(hex_value)
                        .map_err(|e| bad(path, format!("measurement {i} pcr{index}: {e}")))?;
                    if bytes.len() != 48 {
                        return Err(bad(
                            path,
                            format!(
                                "measurement {i} pcr{index} is {} bytes, expected 48",
                                bytes.len()
                            ),
                        ));
                    }
                    pcrs.insert(index, bytes);
                }
            }
            if pcrs.is_empty() {
                return Err(bad(path, format!("measurement {i} pins no PCR")));
            }
            measurements.push(Measurement(pcrs));
        }
        Ok(Self {
            roots,
            max_age: Duration::from_secs(file.max_age_seconds),
            allow_debug: file.allow_debug,
            measurements,
        })
    }

    /// Checks a verified document's PCRs against the allowed measurement sets.
    pub fn check_measurements(&self, doc: &AttestationDoc) -> Result<()> {
        let matches = |m: &Measurement| m.0.iter().all(|(i, v)| doc.pcrs.get(i) == Some(v));
        if self.measurements.iter().any(matches) {
            return Ok(());
        }
        let pcr0 = doc
            .pcrs
            .get(&0)
            .map_or_else(|| "absent".into(), hex::encode);
        Err(ClientError::Attestation {
            reason: format!(
                "measurements match no pinned set (document PCR0 {pcr0}): the cosigner runs code this trust file does not allow"
            ),
        })
    }
}
