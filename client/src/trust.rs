//! The trust file: what this client accepts from a cosigner's attestation.
//!
//! ```toml
//! roots = ["root.pem"]       # pinned root certificates (PEM), relative to this file: AWS's
//!                            # Nitro root, or the operators' local roots (one per cosigner)
//! max_age_seconds = 300      # oldest document accepted
//! max_clock_skew_seconds = 300  # optional: how far ahead of this device's clock a document
//!                            # may be dated (the cosigner's clock ahead); 0 to 86400, default 300
//! allow_debug = false        # debug-mode enclaves: never in production
//!
//! [[measurement]]            # at least one; several during an image rollout
//! pcr0 = "…96 hex…"          # any of pcr0, pcr1, pcr2, pcr3, pcr4, pcr8; all given must match
//! pcr2 = "…96 hex…"
//! ```
//!
//! A trust file that pins no measurement is refused: it would accept any code (fail closed).
//!
//! # `emulated_nsm = true`: QEMU's unsigned documents, TESTING ONLY
//!
//! ```toml
//! emulated_nsm = true        # QEMU's emulated NSM, which signs nothing
//! roots = ["local-root.pem"] # optional: other cosigners of the same test (make nitro-emulate)
//! [[measurement]]            # still required: the EIF's PCRs as QEMU reports them
//! pcr0 = "…96 hex…"
//! ```
//!
//! For booting the real enclave image in QEMU's `nitro-enclave` machine, whose emulated NSM
//! writes unsigned documents (hw/virtio/virtio-nsm.c, QEMU 10.0). With it, documents are checked
//! by [`cosigner_attestation::verify_emulated_unsigned`] instead of a pinned root: every check
//! but the signature and the chain. That proves NOTHING about the enclave, since anyone can write
//! such a document; every session accepted this way prints [`EMULATED_NSM_WARNING`] on stderr.
//! A document of any other shape must still chain to one of `roots`, which may be listed beside
//! it for the other cosigners of the same test (`make nitro-emulate`: the image in QEMU as the
//! provider, a local recovery cosigner with its own root). They do not make the file pinned:
//! next to the unsigned mode a root means nothing (whoever cannot get a root's signature writes
//! an unsigned document instead), which is why every session under such a file, signed or not,
//! prints the warning.
//!
//! `max_clock_skew_seconds` was added later and is optional, so older trust files stay valid and
//! get the verifier's default ([`cosigner_attestation::DEFAULT_MAX_CLOCK_SKEW`]). The skew only
//! lets a document be dated *after* this device's time; the session's nonce is what proves the
//! document fresh, and `max_age_seconds` still bounds its age.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use std::time::SystemTime;

use cosigner_attestation::{
    AttestationDoc, AttestationError, DEFAULT_MAX_CLOCK_SKEW, Expectations, PinnedRoot,
    VerifiedDoc, parse_emulated_unsigned, verify, verify_emulated_unsigned,
};
use serde::Deserialize;

use crate::error::{ClientError, Result};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TrustFile {
    #[serde(default)]
    roots: Vec<std::path::PathBuf>,
    #[serde(default)]
    emulated_nsm: bool,
    #[serde(default = "default_max_age")]
    max_age_seconds: u64,
    #[serde(default)]
    max_clock_skew_seconds: Option<u64>,
    #[serde(default)]
    allow_debug: bool,
    #[serde(default)]
    measurement: Vec<MeasurementFile>,
}

/// The largest clock skew a trust file (or `attestation verify --max-clock-skew`) may allow: a
/// day. A clock further off is broken, and a larger value is more likely a unit mistake (ms).
pub const MAX_CLOCK_SKEW_SECONDS: u64 = 86_400;

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

/// What must vouch for a document: pinned roots, or (testing only) nothing at all.
#[derive(Debug, Clone)]
pub enum Anchor {
    /// The document must be signed by a leaf that chains to one of these roots
    /// ([`cosigner_attestation::verify`]).
    Roots(Vec<PinnedRoot>),
    /// TESTING ONLY (`emulated_nsm = true`): a document of QEMU's unsigned shape is checked as
    /// one ([`cosigner_attestation::verify_emulated_unsigned`]); nothing vouches for it: anyone
    /// can write one, so it proves nothing about the enclave. Any other document must chain to
    /// one of these roots (possibly none), so that one trust file serves a session like
    /// `make nitro-emulate`'s: the image in QEMU as the provider beside a local recovery
    /// cosigner with its own root.
    EmulatedNsm(Vec<PinnedRoot>),
}

/// One way of checking a document under an [`Anchor`]: a pinned root, or QEMU's unsigned shape.
#[derive(Debug, Clone, Copy)]
pub enum Verifier<'a> {
    /// [`cosigner_attestation::verify`] under this root.
    Root(&'a PinnedRoot),
    /// [`cosigner_attestation::verify_emulated_unsigned`]: TESTING ONLY, proves nothing.
    EmulatedNsm,
}

impl Verifier<'_> {
    /// Checks `document` as of `at` against `expect`.
    pub fn verify(
        self,
        document: &[u8],
        at: SystemTime,
        expect: &Expectations,
    ) -> std::result::Result<VerifiedDoc, AttestationError> {
        match self {
            Self::Root(root) => verify(document, root, at, expect),
            Self::EmulatedNsm => verify_emulated_unsigned(document, at, expect),
        }
    }
}

impl Anchor {
    /// The ways `document` may pass, tried in order: each pinned root, or, under
    /// [`Anchor::EmulatedNsm`] and only for a document of QEMU's unsigned shape, that shape alone.
    pub fn verifiers_for(&self, document: &[u8]) -> Vec<Verifier<'_>> {
        match self {
            Self::EmulatedNsm(_) if parse_emulated_unsigned(document).is_ok() => {
                vec![Verifier::EmulatedNsm]
            }
            Self::Roots(roots) | Self::EmulatedNsm(roots) => {
                roots.iter().map(Verifier::Root).collect()
            }
        }
    }
}

/// What a client prints on stderr for every session (and receipt) accepted under
/// `emulated_nsm = true`.
pub const EMULATED_NSM_WARNING: &str = "trust file accepts QEMU's unsigned emulated NSM \
    documents: this proves nothing about the enclave; for testing only";

/// A parsed trust file.
#[derive(Debug, Clone)]
pub struct Trust {
    /// What must vouch for a document: the pinned roots, or (testing only) nothing.
    pub anchor: Anchor,
    /// Oldest document accepted.
    pub max_age: Duration,
    /// How far after this device's time a document may be dated.
    pub max_clock_skew: Duration,
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

/// A TOML error in one line: its message and where (toml's own rendering spans several lines,
/// quoting the file).
fn toml_reason(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim_end_matches('\n');
    match e.span() {
        Some(span) => {
            let line = text
                .get(..span.start)
                .map_or(0, |t| t.lines().count().max(1));
            format!("line {line}: {message}")
        }
        None => message.to_owned(),
    }
}

/// The skew a trust file allows: its `max_clock_skew_seconds`, or the default when absent.
fn clock_skew(seconds: Option<u64>) -> std::result::Result<Duration, String> {
    match seconds {
        None => Ok(DEFAULT_MAX_CLOCK_SKEW),
        Some(s) if s > MAX_CLOCK_SKEW_SECONDS => Err(format!(
            "max_clock_skew_seconds = {s} is more than {MAX_CLOCK_SKEW_SECONDS} (a day)"
        )),
        Some(s) => Ok(Duration::from_secs(s)),
    }
}

impl Trust {
    /// Reads a trust file.
    pub fn load(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).map_err(|e| bad(path, crate::error::io_reason(&e)))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, path, &|root: &Path| {
            let root_path = dir.join(root);
            std::fs::read(&root_path)
                .map_err(|e| format!("{}: {}", root_path.display(), crate::error::io_reason(&e)))
        })
    }

    /// A trust file's text, its roots given by name (`roots = ["aws-root.pem"]`) by
    /// `read_root`: what an app that ships them as assets, not files, calls. `path` names the
    /// file in errors.
    pub fn parse(
        text: &str,
        path: &Path,
        read_root: &dyn Fn(&Path) -> std::result::Result<Vec<u8>, String>,
    ) -> Result<Self> {
        let file: TrustFile = toml::from_str(text).map_err(|e| bad(path, toml_reason(text, &e)))?;
        if !file.emulated_nsm && file.roots.is_empty() {
            return Err(bad(path, "pins no root certificate"));
        }
        let max_clock_skew = clock_skew(file.max_clock_skew_seconds).map_err(|e| bad(path, e))?;
        let mut roots = Vec::new();
        for root in &file.roots {
            let bad_root = |reason: String| bad(path, format!("root {}: {reason}", root.display()));
            let pem = read_root(root).map_err(bad_root)?;
            roots.push(
                PinnedRoot::from_pem(&pem)
                    .map_err(|e| bad_root(format!("not a usable root certificate ({e})")))?,
            );
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
            anchor: if file.emulated_nsm {
                Anchor::EmulatedNsm(roots)
            } else {
                Anchor::Roots(roots)
            },
            max_age: Duration::from_secs(file.max_age_seconds),
            max_clock_skew,
            allow_debug: file.allow_debug,
            measurements,
        })
    }

    /// Whether documents are accepted unsigned (`emulated_nsm = true`): TESTING ONLY.
    pub fn accepts_emulated_nsm(&self) -> bool {
        matches!(self.anchor, Anchor::EmulatedNsm(_))
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    /// Writes `trust.toml` (with `text`) and `root.pem` in a fresh directory, and loads it.
    fn load(text: &str) -> Result<Trust> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("root.pem"), crate::qemu_nsm::AWS_ROOT_PEM).unwrap();
        let path = dir.path().join("trust.toml");
        std::fs::write(&path, text).unwrap();
        Trust::load(&path)
    }

    const BASE: &str = "roots = [\"root.pem\"]\nmax_age_seconds = 60\n[[measurement]]\npcr0 = \"";

    fn file(extra: &str) -> String {
        format!("{extra}{BASE}{}\"\n", "ab".repeat(48))
    }

    const MEASUREMENT: &str = "[[measurement]]\npcr0 = \"";

    fn measured(head: &str) -> String {
        format!("{head}{MEASUREMENT}{}\"\n", "ab".repeat(48))
    }

    #[test]
    fn emulated_nsm_without_roots_is_accepted_and_marked() {
        for head in ["emulated_nsm = true\n", "emulated_nsm = true\nroots = []\n"] {
            let trust = load(&measured(head)).unwrap();
            assert!(
                matches!(trust.anchor, Anchor::EmulatedNsm(ref r) if r.is_empty()),
                "{head}"
            );
            assert!(trust.accepts_emulated_nsm());
            assert!(matches!(
                trust.anchor.verifiers_for(&qemu_document()).as_slice(),
                [Verifier::EmulatedNsm]
            ));
            // Any other document has no root to chain to.
            assert!(trust.anchor.verifiers_for(b"not a document").is_empty());
            assert_eq!(trust.measurements.len(), 1);
            assert_eq!(trust.max_age, Duration::from_secs(300));
        }
        // Without the key, nothing changes: roots pinned, documents signed.
        let pinned = load(&file("")).unwrap();
        assert!(!pinned.accepts_emulated_nsm());
        assert!(matches!(pinned.anchor, Anchor::Roots(ref r) if r.len() == 1));
        let explicit = load(&file("emulated_nsm = false\n")).unwrap();
        assert!(!explicit.accepts_emulated_nsm());
    }

    /// An unsigned document of QEMU's shape (the values do not matter here).
    fn qemu_document() -> Vec<u8> {
        crate::qemu_nsm::QemuAttestation::booted(1_000, &[1; 48], &[2; 48], &[3; 48]).document()
    }

    #[test]
    fn emulated_nsm_with_roots_checks_other_documents_under_the_roots() {
        // make nitro-emulate's trust file: QEMU's provider beside a local recovery cosigner.
        let trust = load(&file("emulated_nsm = true\n")).unwrap();
        assert!(matches!(trust.anchor, Anchor::EmulatedNsm(ref r) if r.len() == 1));
        assert!(matches!(
            trust.anchor.verifiers_for(&qemu_document()).as_slice(),
            [Verifier::EmulatedNsm]
        ));
        assert!(matches!(
            trust.anchor.verifiers_for(b"a signed document").as_slice(),
            [Verifier::Root(_)]
        ));
    }

    #[test]
    fn emulated_nsm_without_measurements_is_refused() {
        for text in [
            "emulated_nsm = true\n",
            "emulated_nsm = true\n[[measurement]]\n",
        ] {
            let err = load(text).unwrap_err();
            assert!(matches!(err, ClientError::Trust { .. }), "{text}: {err}");
        }
    }

    #[test]
    fn no_roots_without_emulated_nsm_is_refused() {
        for head in ["", "roots = []\n", "emulated_nsm = false\n"] {
            let err = load(&measured(head)).unwrap_err();
            assert!(matches!(err, ClientError::Trust { .. }), "{head}: {err}");
        }
        let err = load(&measured("emulated_nsm = \"yes\"\n")).unwrap_err();
        assert!(matches!(err, ClientError::Trust { .. }), "{err}");
    }

    #[test]
    fn clock_skew_is_optional_defaulted_and_bounded() {
        // A trust file from before the key existed: still valid, with the default.
        let old = load(&file("")).unwrap();
        assert_eq!(old.max_clock_skew, DEFAULT_MAX_CLOCK_SKEW);
        assert_eq!(old.max_age, Duration::from_secs(60));
        let set = load(&file("max_clock_skew_seconds = 30\n")).unwrap();
        assert_eq!(set.max_clock_skew, Duration::from_secs(30));
        let none = load(&file("max_clock_skew_seconds = 0\n")).unwrap();
        assert_eq!(none.max_clock_skew, Duration::ZERO);
        let day = load(&file("max_clock_skew_seconds = 86400\n")).unwrap();
        assert_eq!(day.max_clock_skew, Duration::from_secs(86_400));
        let err = load(&file("max_clock_skew_seconds = 86401\n")).unwrap_err();
        assert!(err.to_string().contains("more than 86400"), "{err}");
        let err = load(&file("max_clock_skew_seconds = -1\n")).unwrap_err();
        assert!(matches!(err, ClientError::Trust { .. }), "{err}");
        let err = load(&file("max_clock_skew = 30\n")).unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }
}
