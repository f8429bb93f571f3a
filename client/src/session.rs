//! An attested session with one cosigner: TCP, TLS 1.3, then `Attest` before anything else.
//!
//! The enclave's TLS certificate is self-signed and fresh at each start, so it is not checked
//! against a PKI ([`AttestedChannelVerifier`] still checks the handshake signature). What
//! authenticates the enclave is the attestation document: it must verify under the pinned root,
//! match a pinned measurement, carry our fresh nonce, and carry in `user_data` this TLS session's
//! RFC 9266 tls-exporter value. A relay that terminates TLS and forwards `Attest` obtains a document
//! bound to *its* session with the enclave, which differs from ours: refused.

use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use cosigner_attestation::{Expectations, VerifiedDoc, verify};
use cosigner_protocol::binding::{EXPORTER_LABEL, EXPORTER_LEN, NONCE_LEN};
use cosigner_protocol::frame::{read_frame, write_frame};
use cosigner_protocol::wire::{self, Request, Response};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme, StreamOwned};
use serde_bytes::ByteBuf;

use crate::error::{ClientError, Result};
use crate::trust::Trust;

/// Accepts the enclave's self-signed certificate, checks the handshake signature with it. Safe
/// only because every session is then bound to an attestation document (see the module docs).
#[derive(Debug)]
pub struct AttestedChannelVerifier {
    provider: Arc<CryptoProvider>,
}

impl AttestedChannelVerifier {
    /// A verifier checking handshake signatures with `provider`'s algorithms.
    pub fn new(provider: Arc<CryptoProvider>) -> Self {
        Self { provider }
    }
}

impl ServerCertVerifier for AttestedChannelVerifier {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        // TLS 1.2 is never negotiated (the config offers TLS 1.3 only).
        Err(rustls::Error::General("TLS 1.2 is not allowed".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The client's TLS configuration: TLS 1.3 only, aws-lc-rs, [`AttestedChannelVerifier`].
pub fn client_config() -> Result<Arc<ClientConfig>> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ClientError::Unexpected(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AttestedChannelVerifier { provider }))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Parses `tcp://HOST:PORT` (or plain `HOST:PORT`).
pub fn parse_address(addr: &str) -> Result<String> {
    let rest = addr.strip_prefix("tcp://").unwrap_or(addr);
    if rest.is_empty() || !rest.contains(':') || rest.contains('/') {
        return Err(ClientError::Input(format!(
            "address {addr:?}: expected tcp://HOST:PORT"
        )));
    }
    Ok(rest.to_owned())
}

/// An open, attested session.
pub struct Session {
    addr: String,
    tls: StreamOwned<ClientConnection, TcpStream>,
    document: VerifiedDoc,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("addr", &self.addr)
            .field("module_id", &self.document.doc.module_id)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// Connects, handshakes, attests and verifies. Nothing else is sent before the document passed.
    pub fn connect(addr: &str, trust: &Trust) -> Result<Self> {
        let host_port = parse_address(addr)?;
        let conn_err = |reason: String| ClientError::Connection {
            addr: addr.to_owned(),
            reason,
        };
        let tcp = TcpStream::connect(&host_port).map_err(|e| conn_err(e.to_string()))?;
        tcp.set_nodelay(true).map_err(|e| conn_err(e.to_string()))?;
        tcp.set_read_timeout(Some(Duration::from_secs(60)))
            .map_err(|e| conn_err(e.to_string()))?;
        let name = ServerName::try_from("cosigner-enclave").map_err(|e| conn_err(e.to_string()))?;
        let conn =
            ClientConnection::new(client_config()?, name).map_err(|e| conn_err(e.to_string()))?;
        let mut tls = StreamOwned::new(conn, tcp);
        while tls.conn.is_handshaking() {
            tls.conn
                .complete_io(&mut tls.sock)
                .map_err(|e| conn_err(format!("TLS handshake: {e}")))?;
        }
        let binding = tls
            .conn
            .export_keying_material([0u8; EXPORTER_LEN], EXPORTER_LABEL, None)
            .map_err(|e| conn_err(e.to_string()))?;
        let mut nonce = [0u8; NONCE_LEN];
        {
            use rand_core::RngCore;
            rand_core::OsRng
                .try_fill_bytes(&mut nonce)
                .map_err(|e| ClientError::Unexpected(e.to_string()))?;
        }
        let document = match exchange(
            &mut tls,
            addr,
            &Request::Attest {
                nonce: ByteBuf::from(nonce.to_vec()),
            },
        )? {
            Response::Attested { document } => document,
            other => return Err(ClientError::Unexpected(format!("{other:?}"))),
        };
        let expect = Expectations {
            nonce: Some(nonce.to_vec()),
            user_data: Some(binding.to_vec()),
            max_age: Some(trust.max_age),
            allow_debug: trust.allow_debug,
            max_clock_skew: trust.max_clock_skew,
            ..Default::default()
        };
        let now = SystemTime::now();
        // The first root the chain leads to decides; every other check is the same for all.
        let mut result = Err(None);
        for root in &trust.roots {
            match verify(&document, root, now, &expect) {
                Ok(v) => {
                    result = Ok(v);
                    break;
                }
                Err(e) if e.check() == "chain" && result.is_err() => result = Err(Some(e)),
                Err(e) => {
                    result = Err(Some(e));
                    break;
                }
            }
        }
        let verified = result.map_err(|e| {
            let Some(e) = e else {
                return ClientError::Attestation {
                    reason: format!("{addr}: the trust file pins no root"),
                };
            };
            let reason = match e.check() {
                "user_data" => format!(
                    "the document is bound to another TLS session (a relay terminated TLS?): {e}"
                ),
                check => format!("check `{check}`: {e}"),
            };
            ClientError::Attestation {
                reason: format!("{addr}: {reason}"),
            }
        })?;
        trust.check_measurements(&verified.doc)?;
        Ok(Self {
            addr: addr.to_owned(),
            tls,
            document: verified,
        })
    }

    /// The verified attestation of this session.
    pub fn attestation(&self) -> &VerifiedDoc {
        &self.document
    }

    /// Sends a request, returns the answer; an error answer becomes [`ClientError::Remote`].
    pub fn call(&mut self, request: &Request) -> Result<Response> {
        match exchange(&mut self.tls, &self.addr, request)? {
            Response::Error(e) => Err(ClientError::Remote(e)),
            other => Ok(other),
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // Say goodbye properly (RFC 8446 §6.1), so the enclave can tell a close from a cut.
        self.tls.conn.send_close_notify();
        let _ = self.tls.conn.complete_io(&mut self.tls.sock);
    }
}

/// One request, one response, over the TLS stream.
fn exchange(
    tls: &mut StreamOwned<ClientConnection, TcpStream>,
    addr: &str,
    request: &Request,
) -> Result<Response> {
    let io = |e: cosigner_protocol::ProtocolError| ClientError::Connection {
        addr: addr.to_owned(),
        reason: e.to_string(),
    };
    let body = wire::encode(request)?;
    write_frame(tls, &body).map_err(io)?;
    let frame = read_frame(tls)
        .map_err(io)?
        .ok_or_else(|| ClientError::Connection {
            addr: addr.to_owned(),
            reason: "closed by the cosigner".into(),
        })?;
    Ok(wire::decode::<Response>(&frame)?)
}
