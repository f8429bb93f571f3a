//! `cosigner-enclave run --config FILE`: TOML, unknown fields refused.
//!
//! ```toml
//! listen = "unix:/srv/cosigner/enclave.sock"   # or tcp:HOST:PORT, vsock:CID:PORT (Nitro)
//! store = "unix:/srv/cosigner/store.sock"      # the parent's store socket
//!
//! [token]                                      # PKCS#11 token holding the sealing key
//! module = "/usr/lib/softhsm/libsofthsm2.so"
//! label = "provider"
//! pin_file = "/srv/cosigner/pin"               # or COSIGNER_PKCS11_PIN
//! sealing_key = "cosigner-sealing"             # AES-256 key label, generated on first start
//!
//! [attester]
//! kind = "local"                               # or "nitro" in the enclave image
//! dir = "/srv/cosigner/attester"               # from `cosigner-enclave local-attester init`
//!
//! [policy]                                     # optional: demand a refresh before signing again
//! refresh_after_days = 90
//! refresh_after_signatures = 10000
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::transport::Endpoint;

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where clients' (relayed) connections arrive.
    #[serde(deserialize_with = "endpoint")]
    pub listen: Endpoint,
    /// The parent's store socket.
    #[serde(deserialize_with = "endpoint")]
    pub store: Endpoint,
    /// The sealing token.
    pub token: TokenConfig,
    /// The attester.
    pub attester: AttesterConfig,
    /// Lifecycle policy.
    #[serde(default)]
    pub policy: PolicyConfig,
}

/// When the provider demands a share refresh before it signs again.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Refresh once the shares are this many days old.
    pub refresh_after_days: Option<u64>,
    /// Refresh after this many signatures in one epoch.
    pub refresh_after_signatures: Option<u64>,
}

/// The PKCS#11 token that holds the sealing key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// PKCS#11 module.
    #[serde(default = "default_module")]
    pub module: PathBuf,
    /// Token label.
    pub label: String,
    /// File holding the user PIN (else `COSIGNER_PKCS11_PIN`).
    pub pin_file: Option<PathBuf>,
    /// Label of the AES-256 sealing key (generated on first start).
    #[serde(default = "default_sealing_key")]
    pub sealing_key: String,
}

/// Which attester produces documents.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum AttesterConfig {
    /// The local attester in `dir` (HSM host, development).
    Local {
        /// Directory from `local-attester init`.
        dir: PathBuf,
    },
    /// The Nitro Secure Module.
    Nitro,
}

fn default_module() -> PathBuf {
    PathBuf::from(cosigner_kms::DEFAULT_SOFTHSM_MODULE)
}

fn default_sealing_key() -> String {
    "cosigner-sealing".to_owned()
}

fn endpoint<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Endpoint, D::Error> {
    let s = String::deserialize(d)?;
    s.parse().map_err(serde::de::Error::custom)
}

impl Config {
    /// Reads and parses a config file; relative paths are taken from the file's directory.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        let mut config: Config =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        if let Endpoint::Unix(p) = &mut config.listen {
            fix(p);
        }
        if let Endpoint::Unix(p) = &mut config.store {
            fix(p);
        }
        if let Some(p) = &mut config.token.pin_file {
            fix(p);
        }
        if let AttesterConfig::Local { dir } = &mut config.attester {
            fix(dir);
        }
        Ok(config)
    }
}
