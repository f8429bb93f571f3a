//! The stand-in's TLS: a private CA (ECDSA P-256) and a server certificate it issues for the
//! stand-in's host name, served by rustls.
//!
//! The CA is name-constrained to that host (RFC 5280 §4.2.1.10, enforced by webpki when the CA is
//! a trust anchor): an enclave configuration that trusts it (`[sealer] tls_roots`) trusts it for
//! that one name, not for every server. A CA made again from the same key and host is the same
//! trust anchor (webpki matches an anchor by its subject and key), so a stand-in restarted with
//! its saved key (`--ca-key`) is still trusted by an image that baked the first certificate.

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
    GeneralSubtree, IsCa, Issuer, KeyPair, KeyUsagePurpose, NameConstraints,
};
use rustls::ServerConfig;
use rustls::pki_types::{DnsName, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::StandinError;

/// The CA's common name: says what it is to whoever finds it in a configuration.
pub const CA_COMMON_NAME: &str = "cosigner KMS stand-in CA (tests and emulator only)";

fn tls_error(e: impl std::fmt::Display) -> StandinError {
    StandinError::Tls {
        reason: e.to_string(),
    }
}

/// A private CA for one host name.
pub struct StandinCa {
    host: String,
    key: KeyPair,
    cert_pem: String,
}

impl std::fmt::Debug for StandinCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StandinCa")
            .field("host", &self.host)
            .field("key", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl StandinCa {
    /// A new CA key and certificate for `host` (a DNS name).
    pub fn generate(host: &str) -> Result<Self, StandinError> {
        Self::with_key(host, KeyPair::generate().map_err(tls_error)?)
    }

    /// The CA for `host` under a saved key (PKCS#8 PEM, as [`StandinCa::key_pem`] writes it).
    pub fn from_key_pem(host: &str, key_pem: &str) -> Result<Self, StandinError> {
        Self::with_key(host, KeyPair::from_pem(key_pem).map_err(tls_error)?)
    }

    fn with_key(host: &str, key: KeyPair) -> Result<Self, StandinError> {
        check_host(host)?;
        let cert_pem = ca_params(host).self_signed(&key).map_err(tls_error)?.pem();
        Ok(Self {
            host: host.to_owned(),
            key,
            cert_pem,
        })
    }

    /// The CA certificate, PEM: what an enclave configuration bakes as `[sealer] tls_roots`.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA's private key, PKCS#8 PEM.
    pub fn key_pem(&self) -> zeroize::Zeroizing<String> {
        zeroize::Zeroizing::new(self.key.serialize_pem())
    }

    /// A rustls server configuration (TLS 1.2 and 1.3, aws-lc-rs) presenting a fresh server
    /// certificate for the host, issued by this CA.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, StandinError> {
        let leaf_key = KeyPair::generate().map_err(tls_error)?;
        let mut params = CertificateParams::new(vec![self.host.clone()]).map_err(tls_error)?;
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, self.host.clone());
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        let issuer = Issuer::new(ca_params(&self.host), &self.key);
        let leaf = params.signed_by(&leaf_key, &issuer).map_err(tls_error)?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(tls_error)?
            .with_no_client_auth()
            .with_single_cert(vec![leaf.der().clone()], key)
            .map_err(tls_error)?;
        Ok(Arc::new(config))
    }
}

/// The CA's parameters, a function of the host only (so that the same key gives the same
/// anchor): CA, no intermediates, certificate and CRL signing, name-constrained to `host`.
fn ca_params(host: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, CA_COMMON_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.name_constraints = Some(NameConstraints {
        permitted_subtrees: vec![GeneralSubtree::DnsName(host.to_owned())],
        excluded_subtrees: vec![],
    });
    params
}

/// The host must be a DNS name (the certificate's subjectAltName and the CA's name constraint);
/// IP addresses are refused to keep the constraint simple.
pub fn check_host(host: &str) -> Result<(), StandinError> {
    if host.parse::<std::net::IpAddr>().is_ok() || DnsName::try_from(host).is_err() {
        return Err(StandinError::Config {
            reason: format!("host {host:?} is not a DNS name"),
        });
    }
    Ok(())
}
