//! Certificates: the pinned root, the leaf's signing key, and the chain between them.
//!
//! Path building and signature checks are `rustls-webpki`'s (with aws-lc-rs, whose P-384 is about
//! three times faster than ring's here: 0.16 ms against 0.51 ms a verification), run at an explicit validation time so
//! archived documents verify at their own time. webpki deliberately ignores the KeyUsage extension
//! (see its `verify_cert.rs`), so the RFC 5280 §4.2.1.3 checks that matter here are done on top:
//! the leaf may sign (digitalSignature), every CA on the path may sign certificates (keyCertSign),
//! and the leaf is not itself a CA (RFC 5280 §4.2.1.9).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use der::Decode;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, UnixTime};
use sha2::{Digest, Sha256};
use webpki::{EndEntityCert, KeyUsage as EkuUsage, anchor_from_trusted_cert};
use x509_cert::Certificate;
use x509_cert::ext::pkix::{BasicConstraints, KeyUsage};

use crate::error::{AttestationError, Result};

/// Object identifier of `id-ecPublicKey` (RFC 5480 §2.1.1).
const ID_EC_PUBLIC_KEY: spki::ObjectIdentifier =
    spki::ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
/// Object identifier of the curve `secp384r1` (RFC 5480 §2.1.1.1).
const SECP384R1: spki::ObjectIdentifier = spki::ObjectIdentifier::new_unwrap("1.3.132.0.34");

/// Signature algorithms accepted on certificates. AWS's chain is ECDSA P-384 with SHA-384
/// throughout; the local attester's too.
static CHAIN_ALGORITHMS: &[&dyn rustls_pki_types::SignatureVerificationAlgorithm] = &[
    webpki::aws_lc_rs::ECDSA_P384_SHA384,
    webpki::aws_lc_rs::ECDSA_P256_SHA256,
];

/// The root certificate a verifier pins: AWS's Nitro root G1, or an operator's local root.
#[derive(Clone)]
pub struct PinnedRoot {
    der: Vec<u8>,
}

impl std::fmt::Debug for PinnedRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PinnedRoot(sha256:{})", self.sha256_fingerprint())
    }
}

impl PinnedRoot {
    /// Reads the first certificate of a PEM file's contents.
    pub fn from_pem(pem: &[u8]) -> Result<Self> {
        let der = CertificateDer::from_pem_slice(pem).map_err(|e| AttestationError::Root {
            reason: format!("no PEM certificate found: {e}"),
        })?;
        Self::from_der(der.as_ref())
    }

    /// Takes a DER certificate; it must be a CA allowed to sign certificates.
    pub fn from_der(der: &[u8]) -> Result<Self> {
        let root = |reason: String| AttestationError::Root { reason };
        let cert =
            Certificate::from_der(der).map_err(|e| root(format!("not a certificate: {e}")))?;
        match extension::<BasicConstraints>(&cert).map_err(root)? {
            Some(bc) if bc.ca => {}
            _ => return Err(root("is not a CA certificate (basicConstraints cA)".into())),
        }
        if let Some(ku) = extension::<KeyUsage>(&cert).map_err(root)?
            && !ku.key_cert_sign()
        {
            return Err(root("key usage does not allow keyCertSign".into()));
        }
        anchor_from_trusted_cert(&CertificateDer::from(der))
            .map_err(|e| root(format!("unusable as a trust anchor: {e}")))?;
        Ok(Self { der: der.to_vec() })
    }

    /// The DER bytes.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// SHA-256 of the DER certificate, lowercase hex (how AWS publishes its root's fingerprint).
    pub fn sha256_fingerprint(&self) -> String {
        hex::encode(Sha256::digest(&self.der))
    }
}

/// Reads one extension, refusing a malformed one.
fn extension<'a, T>(cert: &'a Certificate) -> std::result::Result<Option<T>, String>
where
    T: der::Decode<'a> + der::oid::AssociatedOid,
{
    cert.tbs_certificate
        .get::<T>()
        .map(|found| found.map(|(_critical, ext)| ext))
        .map_err(|e| format!("malformed {} extension: {e}", T::OID))
}

/// Returns the leaf's P-384 public key as an uncompressed SEC1 point.
pub(crate) fn leaf_p384_key(leaf_der: &[u8]) -> Result<Vec<u8>> {
    let sig = |reason: String| AttestationError::Signature { reason };
    let cert = Certificate::from_der(leaf_der)
        .map_err(|e| sig(format!("leaf is not a certificate: {e}")))?;
    let spki = &cert.tbs_certificate.subject_public_key_info;
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.decode_as::<spki::ObjectIdentifier>().ok());
    if spki.algorithm.oid != ID_EC_PUBLIC_KEY || curve != Some(SECP384R1) {
        return Err(sig("leaf key is not an ECDSA P-384 key".into()));
    }
    spki.subject_public_key
        .as_bytes()
        .map(<[u8]>::to_vec)
        .ok_or_else(|| sig("leaf public key has unused bits".into()))
}

/// Checks the leaf chains to `root` through `intermediates` at `at`, with key usages honoured.
pub(crate) fn verify_chain(
    leaf_der: &[u8],
    intermediates: &[Vec<u8>],
    root: &PinnedRoot,
    at: SystemTime,
) -> Result<()> {
    let chain = |reason: String| AttestationError::Chain { reason };
    let since_epoch = at
        .duration_since(UNIX_EPOCH)
        .map_err(|_| chain("validation time is before 1970".into()))?;

    let root_cert =
        Certificate::from_der(root.der()).map_err(|e| chain(format!("pinned root: {e}")))?;
    let validity = &root_cert.tbs_certificate.validity;
    if since_epoch < validity.not_before.to_unix_duration()
        || since_epoch > validity.not_after.to_unix_duration()
    {
        return Err(chain(
            "pinned root certificate is not valid at the validation time".into(),
        ));
    }

    let leaf_cert = CertificateDer::from(leaf_der);
    let leaf = EndEntityCert::try_from(&leaf_cert).map_err(|e| chain(format!("leaf: {e}")))?;
    let root_der = CertificateDer::from(root.der());
    let anchors =
        [anchor_from_trusted_cert(&root_der).map_err(|e| chain(format!("pinned root: {e}")))?];
    let intermediates: Vec<CertificateDer<'_>> = intermediates
        .iter()
        .map(|c| CertificateDer::from(c.as_slice()))
        .collect();
    let path = leaf
        .verify_for_usage(
            CHAIN_ALGORITHMS,
            &anchors,
            &intermediates,
            UnixTime::since_unix_epoch(since_epoch),
            // Nitro leaves carry no extendedKeyUsage; webpki accepts its absence for any usage.
            EkuUsage::client_auth(),
            None,
            None,
        )
        .map_err(|e| chain(describe_webpki(&e)))?;

    let leaf_parsed = Certificate::from_der(leaf_der).map_err(|e| chain(format!("leaf: {e}")))?;
    if extension::<BasicConstraints>(&leaf_parsed)
        .map_err(chain)?
        .is_some_and(|bc| bc.ca)
    {
        return Err(chain("leaf certificate is a CA".into()));
    }
    if let Some(ku) = extension::<KeyUsage>(&leaf_parsed).map_err(chain)?
        && !ku.digital_signature()
    {
        return Err(chain(
            "leaf key usage does not allow digitalSignature".into(),
        ));
    }
    for ca in path.intermediate_certificates() {
        let der = ca.der();
        let parsed =
            Certificate::from_der(der.as_ref()).map_err(|e| chain(format!("intermediate: {e}")))?;
        if let Some(ku) = extension::<KeyUsage>(&parsed).map_err(chain)?
            && !ku.key_cert_sign()
        {
            return Err(chain(format!(
                "intermediate {} does not allow keyCertSign",
                parsed.tbs_certificate.subject
            )));
        }
    }
    Ok(())
}

fn describe_webpki(e: &webpki::Error) -> String {
    match e {
        webpki::Error::CertExpired { .. } => {
            "a certificate has expired at the validation time".into()
        }
        webpki::Error::CertNotValidYet { .. } => {
            "a certificate is not yet valid at the validation time".into()
        }
        webpki::Error::UnknownIssuer => {
            "does not chain to the pinned root through cabundle[1..] (unknown issuer)".into()
        }
        webpki::Error::InvalidSignatureForPublicKey => {
            "a certificate signature does not verify".into()
        }
        other => format!("{other:?}"),
    }
}

/// Milliseconds since the Unix epoch, saturating (a time before 1970 counts as 0).
pub(crate) fn unix_millis(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis()
        .try_into()
        .unwrap_or(u64::MAX)
}

/// What `inspect` shows of a certificate. Parsing only: nothing here is verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateSummary {
    /// Subject distinguished name (RFC 4514 string).
    pub subject: String,
    /// Issuer distinguished name.
    pub issuer: String,
    /// Start of validity, seconds since the Unix epoch.
    pub not_before: u64,
    /// End of validity, seconds since the Unix epoch.
    pub not_after: u64,
    /// SHA-256 of the DER certificate, lowercase hex.
    pub sha256: String,
}

/// Parses a DER certificate for display.
pub fn certificate_summary(der: &[u8]) -> Result<CertificateSummary> {
    let cert = Certificate::from_der(der).map_err(|e| AttestationError::Chain {
        reason: format!("not a certificate: {e}"),
    })?;
    let tbs = &cert.tbs_certificate;
    Ok(CertificateSummary {
        subject: tbs.subject.to_string(),
        issuer: tbs.issuer.to_string(),
        not_before: tbs.validity.not_before.to_unix_duration().as_secs(),
        not_after: tbs.validity.not_after.to_unix_duration().as_secs(),
        sha256: hex::encode(Sha256::digest(der)),
    })
}
