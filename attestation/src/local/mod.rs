//! The local attester: AWS-format documents on machines without a Nitro Secure Module.
//!
//! It serves local development, tests, and the HSM-host deployment. Documents are byte-for-byte the
//! NSM's format (COSE_Sign1, ES384, same payload fields and order), signed by a P-384 key generated
//! inside a PKCS#11 token (sensitive, never extractable), whose certificate chains to an operator
//! root created by [`provision`]. Clients verify them with the same [`crate::verify()`]; only the
//! pinned root differs, so a local document never passes under the AWS root.
//!
//! # PCRs
//! Sixteen SHA-384 registers, as an NSM reports:
//! * PCR0 and PCR2: SHA-384 of the running executable (on Nitro, PCR0 measures the whole image and
//!   PCR2 the user application; on a plain host the executable is both);
//! * PCR4: SHA-384 of the attester's leaf certificate, naming the host's attester as Nitro's PCR4
//!   names the parent instance;
//! * PCR1 (kernel and boot ramdisk), PCR3 (IAM role) and PCR8 (image signing certificate), and every
//!   other register: zero, since nothing on a plain host measures them.
//!
//! PCR0 is never zero here, so local documents are never mistaken for debug-mode ones.
//!
//! # Trust
//! The token holds both the operator root key and the attestation key. Whoever holds the token and
//! its PIN can sign documents; a document proves "signed by this operator's token", which is what
//! the HSM-host mode offers. It is not a hardware measurement of the code.

mod pki;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use cosigner_kms::{P384SigningKey, Pin, Token};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha384};

use crate::attester::{AttestRequest, Attester};
use crate::chain::{PinnedRoot, leaf_p384_key, unix_millis, verify_chain};
use crate::cose::{CoseSign1, es384_protected_header, to_be_signed};
use crate::document::{AttestationDoc, DIGEST_SHA384};
use crate::error::{AttestationError, Result};

/// Label of the operator root key in the token.
pub const ROOT_KEY_LABEL: &str = "cosigner-operator-root";
/// Label of the attestation key in the token.
pub const ATTESTATION_KEY_LABEL: &str = "cosigner-attestation";
/// The attester's configuration file inside its directory.
pub const CONFIG_FILE: &str = "attester.toml";
/// The operator root certificate (PEM) clients pin.
pub const ROOT_FILE: &str = "root.pem";
/// The attestation key's certificate (PEM).
pub const LEAF_FILE: &str = "attester.pem";
/// Number of PCRs reported, as a Nitro enclave does.
const PCR_COUNT: u8 = 16;
const SHA384_LEN: usize = 48;

/// `attester.toml`: where the token is and what is in it. Holds no secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalAttesterConfig {
    /// The PKCS#11 module (shared library).
    pub module: PathBuf,
    /// The token's label.
    pub token_label: String,
    /// Label of the attestation key.
    pub key_label: String,
    /// Label of the operator root key.
    pub root_key_label: String,
    /// The `module_id` written into documents.
    pub module_id: String,
}

/// How long the certificates [`provision`] issues live.
#[derive(Debug, Clone, Copy)]
pub struct Lifetimes {
    /// Operator root.
    pub root: Duration,
    /// Attestation key certificate.
    pub leaf: Duration,
}

impl Default for Lifetimes {
    fn default() -> Self {
        const DAY: u64 = 24 * 60 * 60;
        Self {
            root: Duration::from_secs(10 * 365 * DAY),
            leaf: Duration::from_secs(365 * DAY),
        }
    }
}

/// What [`provision`] created.
#[derive(Debug, Clone)]
pub struct Provisioned {
    /// The configuration written to `attester.toml`.
    pub config: LocalAttesterConfig,
    /// The operator root clients must pin.
    pub root: PinnedRoot,
    /// Path of `root.pem`.
    pub root_path: PathBuf,
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> AttestationError {
    AttestationError::Pki {
        reason: format!("{}: {e}", path.display()),
    }
}

fn pem_encode(der: &[u8]) -> Result<String> {
    der::pem::encode_string("CERTIFICATE", der::pem::LineEnding::LF, der).map_err(|e| {
        AttestationError::Pki {
            reason: format!("cannot PEM-encode: {e}"),
        }
    })
}

/// Creates a local attester in `dir` using an already initialised, logged-in `token`: generates
/// the operator root key and the attestation key inside the token, issues their certificates, and
/// writes `attester.toml`, `root.pem` and `attester.pem`. Refuses to overwrite an existing attester.
pub fn provision(
    dir: &Path,
    module: &Path,
    token: &Token,
    now: SystemTime,
    lifetimes: Lifetimes,
) -> Result<Provisioned> {
    let config_path = dir.join(CONFIG_FILE);
    if config_path.exists() {
        return Err(AttestationError::Pki {
            reason: format!(
                "{} already exists: refusing to overwrite",
                config_path.display()
            ),
        });
    }
    std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    let root_key = token.generate_p384_signing_key(ROOT_KEY_LABEL)?;
    let leaf_key = token.generate_p384_signing_key(ATTESTATION_KEY_LABEL)?;
    let fingerprint = Sha384::digest(leaf_key.public_key_sec1());
    let module_id = format!(
        "local-{}",
        hex::encode(fingerprint.get(..8).unwrap_or_default())
    );
    let root_der = pki::issue_root(&root_key, now, lifetimes.root)?;
    let leaf_der = pki::issue_leaf(&root_key, &leaf_key, &module_id, now, lifetimes.leaf)?;
    let root = PinnedRoot::from_der(&root_der)?;
    // The chain we just built must verify with the verifier clients use.
    verify_chain(&leaf_der, &[], &root, now)?;

    let config = LocalAttesterConfig {
        module: module.to_path_buf(),
        token_label: token.label().to_owned(),
        key_label: ATTESTATION_KEY_LABEL.to_owned(),
        root_key_label: ROOT_KEY_LABEL.to_owned(),
        module_id,
    };
    let root_path = dir.join(ROOT_FILE);
    let leaf_path = dir.join(LEAF_FILE);
    std::fs::write(&root_path, pem_encode(&root_der)?).map_err(|e| io_err(&root_path, e))?;
    std::fs::write(&leaf_path, pem_encode(&leaf_der)?).map_err(|e| io_err(&leaf_path, e))?;
    let toml = toml::to_string(&config).map_err(|e| io_err(&config_path, e))?;
    std::fs::write(&config_path, toml).map_err(|e| io_err(&config_path, e))?;
    Ok(Provisioned {
        config,
        root,
        root_path,
    })
}

/// SHA-384 of a file, streamed.
pub fn measure_file(path: &Path) -> Result<[u8; SHA384_LEN]> {
    let mut file = std::fs::File::open(path).map_err(|e| io_err(path, e))?;
    let mut hasher = Sha384::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf).map_err(|e| io_err(path, e))?;
        match buf.get(..n) {
            Some([]) | None => break,
            Some(chunk) => hasher.update(chunk),
        }
    }
    Ok(hasher.finalize().into())
}

/// The PCRs a local attester reports for `executable_digest` and its leaf certificate.
pub fn local_pcrs(executable_digest: &[u8; SHA384_LEN], leaf_der: &[u8]) -> BTreeMap<u8, Vec<u8>> {
    let mut pcrs: BTreeMap<u8, Vec<u8>> =
        (0..PCR_COUNT).map(|i| (i, vec![0; SHA384_LEN])).collect();
    pcrs.insert(0, executable_digest.to_vec());
    pcrs.insert(2, executable_digest.to_vec());
    pcrs.insert(4, Sha384::digest(leaf_der).to_vec());
    pcrs
}

/// A loaded local attester.
pub struct LocalAttester {
    key: P384SigningKey,
    certificate: Vec<u8>,
    root: Vec<u8>,
    module_id: String,
    pcrs: BTreeMap<u8, Vec<u8>>,
}

impl std::fmt::Debug for LocalAttester {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalAttester")
            .field("key", &self.key.label())
            .field("module_id", &self.module_id)
            .finish_non_exhaustive()
    }
}

fn read_cert_pem(path: &Path) -> Result<Vec<u8>> {
    let pem = std::fs::read(path).map_err(|e| io_err(path, e))?;
    let der = CertificateDer::from_pem_slice(&pem).map_err(|e| io_err(path, e))?;
    Ok(der.as_ref().to_vec())
}

impl LocalAttester {
    /// Reads `dir`'s configuration, opens the token with `pin`, and measures the running
    /// executable for PCR0/PCR2.
    pub fn load(dir: &Path, pin: &Pin) -> Result<Self> {
        let exe = std::env::current_exe().map_err(|e| AttestationError::Attester {
            reason: format!("cannot locate the running executable: {e}"),
        })?;
        let digest = measure_file(&exe)?;
        Self::load_measured(dir, pin, &digest)
    }

    /// Like [`LocalAttester::load`], with the executable's measurement supplied by the caller.
    pub fn load_measured(
        dir: &Path,
        pin: &Pin,
        executable_digest: &[u8; SHA384_LEN],
    ) -> Result<Self> {
        let config_path = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&config_path).map_err(|e| io_err(&config_path, e))?;
        let config: LocalAttesterConfig =
            toml::from_str(&text).map_err(|e| io_err(&config_path, e))?;
        let token = Token::open(&config.module, &config.token_label, pin)?;
        let key = token.p384_signing_key(&config.key_label)?;
        let certificate = read_cert_pem(&dir.join(LEAF_FILE))?;
        let root = read_cert_pem(&dir.join(ROOT_FILE))?;
        if leaf_p384_key(&certificate)? != key.public_key_sec1() {
            return Err(AttestationError::Pki {
                reason: format!(
                    "{} does not certify the token's key `{}`",
                    LEAF_FILE, config.key_label
                ),
            });
        }
        let pcrs = local_pcrs(executable_digest, &certificate);
        Ok(Self {
            key,
            certificate,
            root,
            module_id: config.module_id,
            pcrs,
        })
    }

    /// The PCRs this attester reports.
    pub fn pcrs(&self) -> &BTreeMap<u8, Vec<u8>> {
        &self.pcrs
    }

    /// The operator root (as read from `root.pem`).
    pub fn root_der(&self) -> &[u8] {
        &self.root
    }

    /// Produces a document as of `now`.
    pub fn attest_at(&self, request: &AttestRequest, now: SystemTime) -> Result<Vec<u8>> {
        request.validate()?;
        let doc = AttestationDoc {
            module_id: self.module_id.clone(),
            digest: DIGEST_SHA384.to_owned(),
            timestamp: unix_millis(now),
            pcrs: self.pcrs.clone(),
            certificate: self.certificate.clone(),
            cabundle: vec![self.root.clone()],
            public_key: request.public_key.clone(),
            user_data: request.user_data.clone(),
            nonce: request.nonce.clone(),
        };
        let payload = doc.encode()?;
        let protected = es384_protected_header()?;
        let signature = self
            .key
            .sign_sha384(&to_be_signed(&protected, &payload)?)?
            .to_vec();
        CoseSign1 {
            protected,
            payload,
            signature,
        }
        .encode()
    }
}

impl Attester for LocalAttester {
    fn attest(&self, request: &AttestRequest) -> Result<Vec<u8>> {
        self.attest_at(request, SystemTime::now())
    }

    fn kind(&self) -> &'static str {
        "local"
    }
}
