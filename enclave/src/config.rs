//! `cosigner-enclave run --config FILE`: TOML, unknown fields refused.
//!
//! ```toml
//! listen = "unix:/srv/cosigner/enclave.sock"   # or tcp:HOST:PORT, vsock:CID:PORT (Nitro)
//! store = "unix:/srv/cosigner/store.sock"      # the parent's store socket
//!
//! [token]                                      # PKCS#11 token: sealing key and rollback anchors
//! module = "/usr/lib/softhsm/libsofthsm2.so"
//! label = "provider"
//! pin_file = "/srv/cosigner/pin"               # or COSIGNER_PKCS11_PIN
//! sealing_key = "cosigner-sealing"             # AES-256 key label, generated on first start
//!
//! [sealer]                                     # optional; default: kind = "pkcs11" (the token)
//! kind = "kms"                                 # AWS KMS, data keys through Recipient (docs/kms.md)
//! key_id = "arn:aws:kms:eu-west-1:111122223333:key/…"   # a key or alias ARN, never a bare id
//! region = "eu-west-1"
//! endpoint = "vsock:3:8000"                    # the parent's proxy to kms.REGION.amazonaws.com:443
//! # credentials_file = "/run/aws.json"         # local mode only; default: from the parent over
//!                                              # the store channel (its [aws_credentials])
//! # allow_unanchored_state = true              # required without [token]: no rollback anchoring
//! # tls_roots = ['''-----BEGIN CERTIFICATE-----
//! # …
//! # -----END CERTIFICATE-----''']                # replaces the public roots for KMS TLS: a KMS
//!                                              # stand-in under a private CA (emulator only)
//!
//! [attester]
//! kind = "local"                               # or "nitro" in the enclave image
//! dir = "/srv/cosigner/attester"               # from `cosigner-enclave local-attester init`
//!
//! [policy]                                     # optional: demand a refresh before signing again
//! refresh_after_days = 90
//! refresh_after_signatures = 10000
//!
//! [limits]                                     # optional: client connections (defaults shown)
//! max_connections = 1024                       # open at once; more are closed on accept
//! handshake_timeout_seconds = 10               # the TLS handshake must end within this
//! idle_timeout_seconds = 300                   # a session silent (or not reading) this long ends
//!
//! # instance = 1                              # one of several instances (default 0)
//!
//! [anchors]                                    # optional: rollback anchor layout
//! partitions = 64                              # token objects (default); same on every instance
//! # shared = true                              # several instances on this token and store
//! # lock_file = "/run/cosigner-enclave/anchors.lock" # with shared and a [token]: one per host, absolute
//!
//! [enrollment]                                 # optional: who may create wallets
//! mode = "open"                                # default: anyone reaching the cosigner
//! # mode = "token"                             # DkgStart must carry a token (docs/deployment.md)
//! # operator_key = "02ab…"                     # signed by this key: SEC1 P-256, hex
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::server::{
    DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CONNECTIONS, Limits,
};
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
    /// The PKCS#11 token: the sealing key (with `[sealer] kind = "pkcs11"`) and the rollback
    /// anchors. Required unless the sealer is KMS.
    #[serde(default)]
    pub token: Option<TokenConfig>,
    /// Which sealer: the token's AES key (default) or AWS KMS.
    #[serde(default)]
    pub sealer: SealerConfig,
    /// The attester.
    pub attester: AttesterConfig,
    /// Lifecycle policy.
    #[serde(default)]
    pub policy: PolicyConfig,
    /// Limits on client connections.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Who may create wallets.
    #[serde(default)]
    pub enrollment: EnrollmentConfig,
    /// Which instance this is among several on one token and store (0, the default, when
    /// alone): its own audit chain, and the instance label of its logs and metrics.
    #[serde(default)]
    pub instance: u32,
    /// Rollback anchors: partitions, and whether other instances share them.
    #[serde(default)]
    pub anchors: AnchorsConfig,
}

/// `[anchors]`: how rollback anchors are laid out (docs/architecture.md, "Several instances").
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnchorsConfig {
    /// Root anchors (token objects): 1..=65535, default
    /// [`crate::service::partition::DEFAULT_PARTITIONS`]. Every instance on one token must use
    /// the same number (a partition's index records it, and one of another layout is refused).
    #[serde(default)]
    pub partitions: Option<u16>,
    /// Several enclave instances write these anchors: reads ask the token every time, and the
    /// token's compare-and-swap is made atomic across processes with `lock_file`.
    #[serde(default)]
    pub shared: bool,
    /// With `shared` and a `[token]`: the lock file every instance on this host opens (in a
    /// directory only the enclaves' user may write).
    #[serde(default)]
    pub lock_file: Option<PathBuf>,
}

impl AnchorsConfig {
    /// The number of partitions, checked.
    pub fn partitions(&self) -> anyhow::Result<u16> {
        match self.partitions {
            None => Ok(crate::service::partition::DEFAULT_PARTITIONS),
            Some(0) => anyhow::bail!("[anchors] partitions = 0: at least 1"),
            Some(n) => Ok(n),
        }
    }
}

/// `[enrollment]`: whether creating a wallet (a `DkgStart`) needs an operator-signed enrollment
/// token (`cosigner_protocol::enrollment`). Absent: open.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollmentConfig {
    /// `"open"` (the default) or `"token"`. A string rather than an enum so that a wrong value
    /// gets a message naming the section and the two choices.
    #[serde(default)]
    pub mode: Option<String>,
    /// With `mode = "token"`: the operator's public key, SEC1 P-256 (compressed or not), hex.
    #[serde(default)]
    pub operator_key: Option<String>,
}

impl EnrollmentConfig {
    /// The operator key tokens must be signed by (SEC1 compressed), or `None` when wallet
    /// creation is open; every inconsistency is an error naming the key to fix.
    pub fn resolve(&self) -> anyhow::Result<Option<Vec<u8>>> {
        match (self.mode.as_deref().unwrap_or("open"), &self.operator_key) {
            ("open", None) => Ok(None),
            ("open", Some(_)) => anyhow::bail!(
                "[enrollment] operator_key is set but mode is \"open\" (the default): set mode = \
                 \"token\" to require enrollment tokens signed by it, or remove operator_key"
            ),
            ("token", None) => anyhow::bail!(
                "[enrollment] mode = \"token\" needs operator_key = \"<hex SEC1 P-256 public \
                 key>\" (`cosigner-parent enrollment keygen` prints it)"
            ),
            ("token", Some(text)) => {
                let bytes = hex::decode(text.trim()).map_err(|e| {
                    anyhow::anyhow!("[enrollment] operator_key {text:?} is not hex: {e}")
                })?;
                let key = cosigner_protocol::auth::normalise_public_key(&bytes).map_err(|_| {
                    anyhow::anyhow!(
                        "[enrollment] operator_key {text:?} is not a SEC1 P-256 public key \
                         (33 bytes compressed or 65 uncompressed, hex)"
                    )
                })?;
                Ok(Some(key))
            }
            (other, _) => {
                anyhow::bail!("[enrollment] mode = {other:?}: expected \"open\" or \"token\"")
            }
        }
    }
}

/// `[limits]`: what client connections may hold of the enclave ([`Limits`]); absent keys take
/// the defaults.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Connections served at once (1..=65536).
    pub max_connections: Option<usize>,
    /// Seconds a TLS handshake may take from accept (1..=300).
    pub handshake_timeout_seconds: Option<u64>,
    /// Seconds a session may wait on its peer, reading or writing (1..=86400).
    pub idle_timeout_seconds: Option<u64>,
}

impl LimitsConfig {
    /// The limits these settings give, each checked against its range.
    pub fn resolve(&self) -> anyhow::Result<Limits> {
        fn in_range<T: PartialOrd + std::fmt::Display>(
            key: &str,
            value: T,
            min: T,
            max: T,
        ) -> anyhow::Result<T> {
            if value < min || value > max {
                anyhow::bail!("[limits] {key} = {value}: expected {min}..={max}");
            }
            Ok(value)
        }
        let seconds = |key: &str, value: Option<u64>, default, max| match value {
            None => Ok(default),
            Some(s) => in_range(key, s, 1, max).map(std::time::Duration::from_secs),
        };
        Ok(Limits {
            max_connections: match self.max_connections {
                None => DEFAULT_MAX_CONNECTIONS,
                Some(n) => in_range("max_connections", n, 1, 65_536)?,
            },
            handshake_timeout: seconds(
                "handshake_timeout_seconds",
                self.handshake_timeout_seconds,
                DEFAULT_HANDSHAKE_TIMEOUT,
                300,
            )?,
            idle_timeout: seconds(
                "idle_timeout_seconds",
                self.idle_timeout_seconds,
                DEFAULT_IDLE_TIMEOUT,
                86_400,
            )?,
        })
    }
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

/// Which backend seals the enclave's secrets.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum SealerConfig {
    /// AES-256-GCM under the `[token]`'s sealing key.
    #[default]
    Pkcs11,
    /// AWS KMS envelope encryption, data keys delivered to the attested enclave (`Recipient`).
    Kms(KmsSealerConfig),
}

/// `[sealer] kind = "kms"`. Secrets never appear here: credentials come from the parent over the
/// store channel (its instance role's, `StoreRequest::AwsCredentials`), or, in local mode, from a
/// file in the instance metadata service's JSON format.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KmsSealerConfig {
    /// The KMS key: a key ARN or an alias ARN (the account must be named, see docs/kms.md).
    pub key_id: String,
    /// The key's region.
    pub region: String,
    /// How the enclave reaches KMS: the parent's vsock proxy (`vsock:3:PORT`) in Nitro;
    /// `tcp:`/`unix:` locally.
    #[serde(deserialize_with = "endpoint")]
    pub endpoint: Endpoint,
    /// TLS server name and `Host` header; default `kms.REGION.amazonaws.com`.
    #[serde(default)]
    pub host: Option<String>,
    /// Local mode only: JSON credentials (`AccessKeyId`, `SecretAccessKey`, `Token`), re-read
    /// for every call. Absent (and always in a Nitro build): asked of the parent over the store
    /// channel, cached, refreshed before they expire.
    #[serde(default)]
    pub credentials_file: Option<PathBuf>,
    /// Without a `[token]` there is no rollback anchor: the parent could serve an older (validly
    /// sealed) state after a restart. Must be set explicitly to run so.
    #[serde(default)]
    pub allow_unanchored_state: bool,
    /// Plain HTTP instead of TLS, for local KMS-compatible test servers. Refused in a `nitro` build.
    #[serde(default)]
    pub insecure_plain_http: bool,
    /// Data keys in clear in KMS's (TLS) answer instead of through `Recipient`, for test servers
    /// without `Recipient` (moto). Refused in a `nitro` build.
    #[serde(default)]
    pub insecure_no_recipient: bool,
    /// PEM certificates, one per entry, written inline (an enclave has no files but its ramdisk),
    /// that **replace** the Mozilla roots of `webpki-roots` for the KMS TLS connection: for a
    /// KMS-compatible endpoint under a private CA, such as the local stand-in with `Recipient`
    /// when the real image runs in an emulator. Whoever holds such a root's key can answer as KMS
    /// and hand the enclave data keys it knows, so production images must not carry it; a Nitro
    /// build accepts the key because it is measured (PCR2) and visible in the published
    /// configuration, and uses it only under QEMU's unsigned NSM (the enclave's start refuses it
    /// on hardware). 1 to [`MAX_TLS_ROOTS`] certificates; checked at load
    /// ([`KmsSealerConfig::tls_root_store`]).
    #[serde(default)]
    pub tls_roots: Option<Vec<String>>,
}

/// Most certificates `[sealer] tls_roots` may list: a stand-in or a private KMS endpoint needs
/// one or two, and every one is a party that can impersonate KMS to the enclave.
pub const MAX_TLS_ROOTS: usize = 8;
/// Longest `tls_roots` entry, in bytes of PEM (a certificate is one or two KiB).
pub const MAX_TLS_ROOT_PEM_LEN: usize = 16 * 1024;

impl KmsSealerConfig {
    /// The roots `tls_roots` lists, or `None` without it (the public roots then apply). Each
    /// entry must be exactly one PEM `CERTIFICATE` that parses as a trust anchor; an empty list,
    /// more than [`MAX_TLS_ROOTS`], a repeated certificate and `tls_roots` without TLS
    /// (`insecure_plain_http`) are refused.
    pub fn tls_root_store(&self) -> anyhow::Result<Option<rustls::RootCertStore>> {
        use rustls::pki_types::CertificateDer;
        let Some(entries) = &self.tls_roots else {
            return Ok(None);
        };
        if self.insecure_plain_http {
            anyhow::bail!(
                "[sealer] tls_roots with insecure_plain_http: there is no TLS for them to apply to"
            );
        }
        if entries.is_empty() {
            anyhow::bail!(
                "[sealer] tls_roots = []: would trust no KMS server; leave tls_roots out to use \
                 the public (webpki-roots) roots"
            );
        }
        if entries.len() > MAX_TLS_ROOTS {
            anyhow::bail!(
                "[sealer] tls_roots has {} certificates, at most {MAX_TLS_ROOTS}",
                entries.len()
            );
        }
        let mut roots = rustls::RootCertStore::empty();
        let mut seen: Vec<Vec<u8>> = Vec::new();
        for (i, entry) in entries.iter().enumerate() {
            let at = format!("[sealer] tls_roots[{i}]");
            let der = tls_root_der(&at, entry)?;
            if let Some(j) = seen.iter().position(|d| *d == der) {
                anyhow::bail!("{at} repeats tls_roots[{j}]");
            }
            roots.add(CertificateDer::from(der.clone())).map_err(|e| {
                anyhow::anyhow!("{at} is not an X.509 certificate usable as a root: {e}")
            })?;
            seen.push(der);
        }
        Ok(Some(roots))
    }
}

/// One `tls_roots` entry's DER: at most [`MAX_TLS_ROOT_PEM_LEN`] bytes holding exactly one PEM
/// `CERTIFICATE` section with nothing around it (`at` names the entry in errors).
fn tls_root_der(at: &str, entry: &str) -> anyhow::Result<Vec<u8>> {
    use rustls::pki_types::pem::{PemObject, SectionKind};
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    if entry.len() > MAX_TLS_ROOT_PEM_LEN {
        anyhow::bail!(
            "{at} is {} bytes, at most {MAX_TLS_ROOT_PEM_LEN}",
            entry.len()
        );
    }
    let text = entry.trim();
    let sections = text.matches("-----BEGIN ").count();
    if sections > 1 {
        anyhow::bail!("{at} holds {sections} PEM sections: give one certificate per entry");
    }
    if !text.starts_with(BEGIN) || !text.ends_with(END) || sections != 1 {
        anyhow::bail!("{at} is not one PEM certificate ({BEGIN} … {END}, nothing around it)");
    }
    let parsed: Vec<_> = <(SectionKind, Vec<u8>)>::pem_slice_iter(text.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("{at} is not valid PEM: {e}"))?;
    match parsed.as_slice() {
        [(SectionKind::Certificate, der)] => Ok(der.clone()),
        _ => anyhow::bail!("{at} is not one PEM certificate"),
    }
}

/// Keys that would put AWS secrets into the (measured, readable) configuration.
const INLINE_SECRET_KEYS: &[&str] = &[
    "access_key_id",
    "secret_access_key",
    "session_token",
    "aws_access_key_id",
    "aws_secret_access_key",
    "aws_session_token",
    "credentials",
];

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
        let mut config =
            Self::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
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
        if let Some(p) = config.token.as_mut().and_then(|t| t.pin_file.as_mut()) {
            fix(p);
        }
        if let AttesterConfig::Local { dir } = &mut config.attester {
            fix(dir);
        }
        if let SealerConfig::Kms(kms) = &mut config.sealer {
            if let Some(p) = kms.credentials_file.as_mut() {
                fix(p);
            }
            if let Endpoint::Unix(p) = &mut kms.endpoint {
                fix(p);
            }
        }
        Ok(config)
    }

    /// Parses and checks a configuration (no path fixing).
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let value: toml::Table = toml::from_str(text)?;
        if let Some(toml::Value::Table(sealer)) = value.get("sealer")
            && let Some(key) = INLINE_SECRET_KEYS.iter().find(|k| sealer.contains_key(**k))
        {
            anyhow::bail!(
                "[sealer] {key}: AWS secrets are not accepted in the configuration (it is part of \
                 the measured image and readable); the parent hands them over (its \
                 [aws_credentials])"
            );
        }
        let config: Config = toml::from_str(text)?;
        config.validate()?;
        Ok(config)
    }

    /// The operator key a `DkgStart`'s enrollment token must be signed by (SEC1 compressed), or
    /// `None` when wallet creation is open (`[enrollment]` absent or `mode = "open"`).
    ///
    /// Checked at [`Config::parse`]. A configuration that bypassed that check and is not plainly
    /// open yields a key no token verifies under (the bytes given, or none), so that it fails
    /// closed: every wallet creation is refused rather than allowed.
    pub fn enrollment_operator_key(&self) -> Option<Vec<u8>> {
        match self.enrollment.resolve() {
            Ok(key) => key,
            Err(_) => Some(
                self.enrollment
                    .operator_key
                    .as_deref()
                    .and_then(|k| hex::decode(k.trim()).ok())
                    .unwrap_or_default(),
            ),
        }
    }

    /// Whether a PKCS#11 PIN is needed: a token is configured, or the local attester (whose key
    /// is on a token) is used.
    pub fn needs_pin(&self) -> bool {
        self.token.is_some() || matches!(self.attester, AttesterConfig::Local { .. })
    }

    /// Cross-field checks.
    fn validate(&self) -> anyhow::Result<()> {
        self.limits.resolve()?;
        self.anchors.partitions()?;
        match (self.anchors.shared, &self.anchors.lock_file, &self.token) {
            (true, None, Some(_)) => anyhow::bail!(
                "[anchors] shared = true with a [token] needs lock_file = \"PATH\": the token's \
                 anchor writes must be serialised across the instances"
            ),
            (false, Some(_), _) => {
                anyhow::bail!("[anchors] lock_file is set but shared is not: set shared = true")
            }
            (_, Some(path), _) if !path.is_absolute() => anyhow::bail!(
                "[anchors] lock_file = {:?}: give an absolute path (every instance must lock the \
                 same file)",
                path.display().to_string()
            ),
            _ => {}
        }
        if self.instance != 0 && !self.anchors.shared {
            anyhow::bail!(
                "instance = {} is one of several instances: set [anchors] shared = true (and \
                 lock_file) so that they never trust each other's anchors from memory",
                self.instance
            );
        }
        self.enrollment.resolve()?;
        match &self.sealer {
            SealerConfig::Pkcs11 => {
                if self.token.is_none() {
                    anyhow::bail!("[sealer] kind = \"pkcs11\" (the default) needs a [token]");
                }
            }
            SealerConfig::Kms(kms) => {
                use cosigner_kms::aws::client::check_region;
                check_region(&kms.region).map_err(|e| anyhow::anyhow!("[sealer] region: {e}"))?;
                if !cosigner_kms::aws::is_key_arn(&kms.key_id) {
                    anyhow::bail!(
                        "[sealer] key_id {:?}: give the key's ARN \
                         (arn:aws:kms:REGION:ACCOUNT:key/ID) or an alias ARN; a bare key id or \
                         alias would be resolved in the account of whatever credentials the \
                         parent supplies",
                        kms.key_id
                    );
                }
                let key_region = kms.key_id.split(':').nth(3).unwrap_or_default();
                if key_region != kms.region {
                    anyhow::bail!(
                        "[sealer] key_id is in region {key_region:?}, region is {:?}",
                        kms.region
                    );
                }
                kms.tls_root_store()?;
                if self.token.is_none() && !kms.allow_unanchored_state {
                    anyhow::bail!(
                        "[sealer] kind = \"kms\" without a [token] has no rollback anchor (not \
                         implemented yet, docs/kms.md): set allow_unanchored_state = true to run \
                         without rollback resistance, or configure a [token]"
                    );
                }
                // The Nitro enclave build is `nitro` without the local attester (a test proves
                // the image is built so); a workspace build with every feature is not one.
                if cfg!(all(feature = "nitro", not(feature = "local-attester"))) {
                    enclave_build_checks(kms)?;
                }
            }
        }
        Ok(())
    }
}

/// What a Nitro enclave build refuses of a `[sealer] kind = "kms"` (checked only in that build):
/// a credentials file (an enclave cannot read the parent's files), the test-only switches, and the
/// placeholder key of the reference image (account `000000000000`, `make enclave-image` without
/// `KMS_KEY_ARN`). `tls_roots` passes here: like everything in the configuration it is measured
/// (PCR2), so whoever pins the image sees it; the enclave logs it at start and refuses it unless
/// its NSM is QEMU's unsigned one (`only_under_an_emulated_nsm` in `run.rs`).
pub fn enclave_build_checks(kms: &KmsSealerConfig) -> anyhow::Result<()> {
    if kms.credentials_file.is_some() {
        anyhow::bail!(
            "[sealer] credentials_file: an enclave cannot read the parent's files; leave it out, \
             and the credentials come from the parent over the store channel (its \
             [aws_credentials])"
        );
    }
    if kms.insecure_plain_http || kms.insecure_no_recipient {
        anyhow::bail!(
            "[sealer] insecure_plain_http / insecure_no_recipient are refused in a Nitro enclave \
             build"
        );
    }
    if kms.key_id.split(':').nth(4) == Some("000000000000") {
        anyhow::bail!(
            "[sealer] key_id {} is the reference image's placeholder: build the image with \
             KMS_KEY_ARN=<the deployment's key ARN> make enclave-image (docs/nitro.md)",
            kms.key_id
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn an_enclave_build_refuses_files_test_switches_and_the_placeholder_key() {
        let c = Config::parse(&kms("allow_unanchored_state = true\n")).unwrap();
        let SealerConfig::Kms(mut k) = c.sealer else {
            panic!()
        };
        let e = enclave_build_checks(&k).unwrap_err().to_string();
        assert!(e.contains("credentials_file"), "{e}");
        k.credentials_file = None;
        enclave_build_checks(&k).unwrap();
        k.insecure_no_recipient = true;
        assert!(enclave_build_checks(&k).is_err());
        k.insecure_no_recipient = false;
        k.key_id =
            "arn:aws:kms:us-east-1:000000000000:key/00000000-0000-0000-0000-000000000000".into();
        let e = enclave_build_checks(&k).unwrap_err().to_string();
        assert!(e.contains("KMS_KEY_ARN"), "{e}");
    }

    const BASE: &str = "listen = \"unix:/l.sock\"\nstore = \"unix:/s.sock\"\n\
                        [attester]\nkind = \"nitro\"\n";
    const TOKEN: &str = "[token]\nlabel = \"provider\"\n";
    const ARN: &str = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";

    #[test]
    fn anchors_of_several_instances_are_checked() {
        let with = |top: &str, anchors: &str| {
            Config::parse(&format!("{top}{BASE}{TOKEN}[anchors]\n{anchors}"))
        };
        let ok = with(
            "instance = 2\n",
            "shared = true\nlock_file = \"/run/a.lock\"\npartitions = 16\n",
        )
        .unwrap();
        assert_eq!((ok.instance, ok.anchors.partitions().unwrap()), (2, 16));
        assert_eq!(with("", "").unwrap().anchors.partitions().unwrap(), 64);
        for (top, anchors) in [
            ("", "partitions = 0\n"),
            ("", "shared = true\n"),
            ("", "lock_file = \"/run/a.lock\"\n"),
            ("", "shared = true\nlock_file = \"a.lock\"\n"),
            ("instance = 2\n", ""),
            ("", "partitions = 70000\n"),
            ("instance = -1\n", ""),
        ] {
            assert!(with(top, anchors).is_err(), "{top}{anchors}");
        }
    }

    fn kms(extra: &str) -> String {
        format!(
            "{BASE}[sealer]\nkind = \"kms\"\nkey_id = \"{ARN}\"\nregion = \"eu-west-1\"\n\
             endpoint = \"vsock:3:8000\"\ncredentials_file = \"/run/aws.json\"\n{extra}"
        )
    }

    /// A self-signed CA certificate for `name`, PEM.
    fn ca_pem(name: &str) -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).unwrap().pem()
    }

    /// A KMS sealer configuration with `tls_roots = [ENTRIES]`, each a TOML literal string.
    fn with_roots(entries: &[String], extra: &str) -> anyhow::Result<Config> {
        let list = entries
            .iter()
            .map(|e| format!("'''\n{e}'''"))
            .collect::<Vec<_>>()
            .join(", ");
        Config::parse(&kms(&format!(
            "allow_unanchored_state = true\n{extra}tls_roots = [{list}]\n"
        )))
    }

    fn kms_of(c: Config) -> KmsSealerConfig {
        match c.sealer {
            SealerConfig::Kms(k) => k,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn tls_roots_replace_the_public_roots_and_pass_the_enclave_build_checks() {
        // Absent: no private roots, the public ones apply.
        let k = kms_of(Config::parse(&kms("allow_unanchored_state = true\n")).unwrap());
        assert!(k.tls_roots.is_none() && k.tls_root_store().unwrap().is_none());

        let one = ca_pem("kms-standin.test");
        let mut k = kms_of(with_roots(std::slice::from_ref(&one), "").unwrap());
        assert_eq!(k.tls_root_store().unwrap().unwrap().len(), 1);
        // Measured like the rest of the configuration: allowed in the image's build.
        k.credentials_file = None;
        enclave_build_checks(&k).unwrap();

        // Up to MAX_TLS_ROOTS, written as literal or basic TOML strings alike.
        let eight: Vec<String> = (0..MAX_TLS_ROOTS)
            .map(|i| ca_pem(&format!("kms{i}.test")))
            .collect();
        let k = kms_of(with_roots(&eight, "").unwrap());
        assert_eq!(k.tls_root_store().unwrap().unwrap().len(), MAX_TLS_ROOTS);
        let basic = format!("\"{}\"", one.trim().replace('\n', "\\n"));
        let k = kms_of(
            Config::parse(&kms(&format!(
                "allow_unanchored_state = true\ntls_roots = [{basic}]\n"
            )))
            .unwrap(),
        );
        assert_eq!(k.tls_root_store().unwrap().unwrap().len(), 1);
    }

    #[test]
    fn tls_roots_other_than_one_certificate_per_entry_are_refused() {
        let one = ca_pem("kms-standin.test");
        let nine: Vec<String> = (0..=MAX_TLS_ROOTS)
            .map(|i| ca_pem(&format!("kms{i}.test")))
            .collect();
        let private_key = rcgen::KeyPair::generate().unwrap().serialize_pem();
        let wrap = |body: &str| {
            format!("-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----\n")
        };
        let long = wrap(&"QUFB".repeat(MAX_TLS_ROOT_PEM_LEN / 4));
        for (entries, extra, why) in [
            (vec![], "", "would trust no KMS server"),
            (nine, "", "at most 8"),
            (
                vec!["not a certificate".to_owned()],
                "",
                "not one PEM certificate",
            ),
            (vec![private_key], "", "not one PEM certificate"),
            (vec![format!("{one}{one}")], "", "holds 2 PEM sections"),
            (vec![format!("junk\n{one}")], "", "nothing around it"),
            (vec![wrap("!!!!")], "", "not valid PEM"),
            // "hello world": base64, but not DER of a certificate.
            (
                vec![wrap("aGVsbG8gd29ybGQ=")],
                "",
                "not an X.509 certificate",
            ),
            (vec![long], "", "at most 16384"),
            (
                vec![one.clone(), one.clone()],
                "",
                "tls_roots[1] repeats tls_roots[0]",
            ),
            (
                vec![one.clone()],
                "insecure_plain_http = true\n",
                "no TLS for them to apply to",
            ),
        ] {
            let e = with_roots(&entries, extra).unwrap_err().to_string();
            assert!(e.contains(why), "{why}: {e}");
        }
        let e = Config::parse(&kms("allow_unanchored_state = true\ntls_roots = [1]\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("invalid type"), "{e}");
        let e = Config::parse(&kms("allow_unanchored_state = true\ntls_roots = \"x\"\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("invalid type"), "{e}");
    }

    #[test]
    fn limits_default_and_are_range_checked() {
        let c = Config::parse(&format!("{BASE}{TOKEN}")).unwrap();
        assert_eq!(c.limits.resolve().unwrap(), Limits::default());
        let c = Config::parse(&format!(
            "{BASE}{TOKEN}[limits]\nmax_connections = 8\nhandshake_timeout_seconds = 1\n\
             idle_timeout_seconds = 2\n"
        ))
        .unwrap();
        let limits = c.limits.resolve().unwrap();
        assert_eq!(limits.max_connections, 8);
        assert_eq!(limits.handshake_timeout, std::time::Duration::from_secs(1));
        assert_eq!(limits.idle_timeout, std::time::Duration::from_secs(2));
        for bad in [
            "max_connections = 0",
            "handshake_timeout_seconds = 0",
            "handshake_timeout_seconds = 301",
            "idle_timeout_seconds = 0",
            "threads = 3",
        ] {
            let e = Config::parse(&format!("{BASE}{TOKEN}[limits]\n{bad}\n"));
            assert!(e.is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn enrollment_is_open_by_default_and_token_mode_needs_a_valid_key() {
        use p256::ecdsa::SigningKey;
        let operator = SigningKey::from_bytes(&[7; 32].into()).unwrap();
        let compressed = operator.verifying_key().to_encoded_point(true);
        let uncompressed = operator.verifying_key().to_encoded_point(false);
        let with = |section: &str| Config::parse(&format!("{BASE}{TOKEN}{section}"));

        assert_eq!(with("").unwrap().enrollment_operator_key(), None);
        for open in ["[enrollment]\n", "[enrollment]\nmode = \"open\"\n"] {
            assert_eq!(
                with(open).unwrap().enrollment_operator_key(),
                None,
                "{open}"
            );
        }
        for key in [compressed.as_bytes(), uncompressed.as_bytes()] {
            let c = with(&format!(
                "[enrollment]\nmode = \"token\"\noperator_key = \"{}\"\n",
                hex::encode(key)
            ))
            .unwrap();
            assert_eq!(
                c.enrollment_operator_key().as_deref(),
                Some(compressed.as_bytes()),
                "normalised to the compressed form"
            );
        }
        // Other sections stay as they were beside it.
        let c = with(&format!(
            "[limits]\nmax_connections = 8\n[enrollment]\nmode = \"token\"\n\
             operator_key = \"{}\"\n",
            hex::encode(compressed.as_bytes())
        ))
        .unwrap();
        assert_eq!(c.limits.resolve().unwrap().max_connections, 8);

        let mut not_a_point = [0xff_u8; 33];
        not_a_point[0] = 2;
        for (section, why) in [
            ("mode = \"token\"\n", "needs operator_key"),
            ("mode = \"token\"\noperator_key = \"zz\"\n", "is not hex"),
            (
                &format!(
                    "mode = \"token\"\noperator_key = \"{}\"\n",
                    hex::encode(not_a_point)
                ),
                "not a SEC1 P-256 public key",
            ),
            (
                &format!(
                    "mode = \"token\"\noperator_key = \"{}\"\n",
                    hex::encode(&compressed.as_bytes()[..32])
                ),
                "not a SEC1 P-256 public key",
            ),
            (
                &format!(
                    "operator_key = \"{}\"\n",
                    hex::encode(compressed.as_bytes())
                ),
                "mode is \"open\"",
            ),
            ("mode = \"Token\"\n", "expected \"open\" or \"token\""),
            ("mode = \"closed\"\n", "expected \"open\" or \"token\""),
            ("mode = \"open\"\nkeys = []\n", "unknown field"),
        ] {
            let e = with(&format!("[enrollment]\n{section}"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(why), "{section}: {e}");
        }
    }

    #[test]
    fn an_unchecked_token_mode_fails_closed() {
        // Built without `parse` (deserialised directly): not plainly open means some key, and a
        // key no token verifies under when the configured one is unusable.
        let c: Config = toml::from_str(&format!(
            "{BASE}{TOKEN}[enrollment]\nmode = \"token\"\noperator_key = \"zz\"\n"
        ))
        .unwrap();
        assert_eq!(c.enrollment_operator_key(), Some(vec![]));
        let c: Config =
            toml::from_str(&format!("{BASE}{TOKEN}[enrollment]\nmode = \"tokens\"\n")).unwrap();
        assert_eq!(c.enrollment_operator_key(), Some(vec![]));
    }

    #[test]
    fn the_token_sealer_stays_the_default() {
        let c = Config::parse(&format!("{BASE}{TOKEN}")).unwrap();
        assert!(matches!(c.sealer, SealerConfig::Pkcs11));
        assert!(c.token.is_some());
        let e = Config::parse(BASE).unwrap_err().to_string();
        assert!(e.contains("needs a [token]"), "{e}");
    }

    #[test]
    fn kms_without_a_token_needs_the_loud_switch() {
        let e = Config::parse(&kms("")).unwrap_err().to_string();
        assert!(e.contains("allow_unanchored_state"), "{e}");
        let c = Config::parse(&kms("allow_unanchored_state = true\n")).unwrap();
        let SealerConfig::Kms(k) = &c.sealer else {
            panic!("{:?}", c.sealer)
        };
        assert_eq!(k.endpoint, Endpoint::Vsock { cid: 3, port: 8000 });
        assert_eq!(k.credentials_file, Some(PathBuf::from("/run/aws.json")));
        // Without a file: from the parent.
        let text = kms("allow_unanchored_state = true\n")
            .replace("credentials_file = \"/run/aws.json\"\n", "");
        let c = Config::parse(&text).unwrap();
        let SealerConfig::Kms(k) = &c.sealer else {
            panic!("{:?}", c.sealer)
        };
        assert_eq!(k.credentials_file, None);
        assert!(c.token.is_none() && !c.needs_pin());
        // With a token, the token anchors the state.
        let c = Config::parse(&format!("{}{TOKEN}", kms(""))).unwrap();
        assert!(c.needs_pin());
    }

    #[test]
    fn kms_configs_that_could_leak_or_misdirect_are_refused() {
        for (extra, why) in [
            ("secret_access_key = \"x\"\n", "AWS secrets"),
            ("access_key_id = \"AKIA\"\n", "AWS secrets"),
            ("color = 1\n", "unknown field"),
        ] {
            let e = Config::parse(&format!(
                "{}allow_unanchored_state = true\n{extra}",
                kms("")
            ))
            .unwrap_err()
            .to_string();
            assert!(e.contains(why), "{extra}: {e}");
        }
        for key in ["alias/cosigner", "1234abcd-12ab-34cd-56ef-1234567890ab"] {
            let text = kms("allow_unanchored_state = true\n").replace(ARN, key);
            let e = Config::parse(&text).unwrap_err().to_string();
            assert!(e.contains("ARN"), "{key}: {e}");
        }
        let text = kms("allow_unanchored_state = true\n")
            .replace("region = \"eu-west-1\"", "region = \"us-east-1\"");
        assert!(
            Config::parse(&text)
                .unwrap_err()
                .to_string()
                .contains("region")
        );
    }
}
