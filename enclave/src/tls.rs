//! TLS 1.3 terminates inside the enclave (rustls, aws-lc-rs).
//!
//! The certificate is self-signed and made fresh at every start: clients do not trust it through a
//! PKI but through attestation. The first request of a session is `Attest`, and the document's
//! `user_data` carries this session's RFC 9266 tls-exporter value, which only the two ends of this
//! TLS session can compute: a relay that terminated TLS itself would hold a different one.

use std::sync::Arc;

use cosigner_protocol::binding::{EXPORTER_LABEL, EXPORTER_LEN};
use rustls::ServerConfig;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

/// Builds the server configuration with a new P-256 key and self-signed certificate.
pub fn server_config() -> anyhow::Result<Arc<ServerConfig>> {
    let certified = rcgen::generate_simple_self_signed(vec!["cosigner-enclave".to_owned()])?;
    let cert = certified.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        certified.signing_key.serialize_der(),
    ));
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)?;
    Ok(Arc::new(config))
}

/// This session's channel binding (RFC 9266 tls-exporter).
pub fn channel_binding(
    conn: &rustls::ServerConnection,
) -> Result<[u8; EXPORTER_LEN], rustls::Error> {
    conn.export_keying_material([0u8; EXPORTER_LEN], EXPORTER_LABEL, None)
}
