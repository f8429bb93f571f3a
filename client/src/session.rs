//! An attested session with one cosigner: TCP, TLS 1.3, then `Attest` before anything else.
//!
//! The enclave's TLS certificate is self-signed and fresh at each start, so it is not checked
//! against a PKI ([`AttestedChannelVerifier`] still checks the handshake signature). What
//! authenticates the enclave is the attestation document: it must verify under the pinned root,
//! match a pinned measurement, carry our fresh nonce, and carry in `user_data` this TLS session's
//! RFC 9266 tls-exporter value. A relay that terminates TLS and forwards `Attest` obtains a document
//! bound to *its* session with the enclave, which differs from ours: refused.
//!
//! None of that holds under a trust file's `emulated_nsm = true` (QEMU's unsigned documents,
//! testing only, [`crate::trust`]): a relay can write a document with our nonce and its own
//! binding, so such a session is not attested at all, and [`Session::connect`] says so on stderr.

use std::collections::HashMap;
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use cosigner_attestation::{AttestationError, Expectations, VerifiedDoc};
use cosigner_protocol::binding::{EXPORTER_LABEL, EXPORTER_LEN, NONCE_LEN};
use cosigner_protocol::frame::{read_frame, write_frame};
use cosigner_protocol::wire::{self, NextCommitment, Request, Response, WalletId};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme, StreamOwned};
use serde_bytes::ByteBuf;
use sha2::{Digest, Sha256};

use crate::error::{ClientError, Result, one_line};
use crate::trust::{EMULATED_NSM_WARNING, Trust, Verifier};

/// Which server certificate a TLS connection of the client accepts. Both kinds are self-signed,
/// so there is no PKI to ask; the handshake signature is checked with the certificate either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerCertificate {
    /// Any: the enclave's, fresh at each start. Safe only because every session is then bound
    /// to an attestation document (see the module docs).
    Attested,
    /// Exactly the one whose SHA-256 this is (a mailbox's, as its parent prints it).
    Pinned([u8; 32]),
}

/// Accepts the server certificate as its [`ServerCertificate`] says (the enclave's: any, see
/// the module docs) and checks the handshake signature with it.
#[derive(Debug)]
pub struct AttestedChannelVerifier {
    provider: Arc<CryptoProvider>,
    certificate: ServerCertificate,
}

impl AttestedChannelVerifier {
    /// A verifier of the enclave's channel ([`ServerCertificate::Attested`]), checking handshake
    /// signatures with `provider`'s algorithms.
    pub fn new(provider: Arc<CryptoProvider>) -> Self {
        Self::accepting(provider, ServerCertificate::Attested)
    }

    /// A verifier accepting `certificate`.
    pub fn accepting(provider: Arc<CryptoProvider>, certificate: ServerCertificate) -> Self {
        Self {
            provider,
            certificate,
        }
    }
}

impl ServerCertVerifier for AttestedChannelVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        if let ServerCertificate::Pinned(pin) = self.certificate {
            let got: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
            if got != pin {
                return Err(rustls::Error::General(format!(
                    "the mailbox's certificate is sha256:{}, not the pinned sha256:{}",
                    hex::encode(got),
                    hex::encode(pin)
                )));
            }
        }
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
    tls_config(ServerCertificate::Attested)
}

/// TLS 1.3 only, aws-lc-rs, accepting `certificate`.
fn tls_config(certificate: ServerCertificate) -> Result<Arc<ClientConfig>> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = AttestedChannelVerifier::accepting(provider.clone(), certificate);
    let config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ClientError::Unexpected(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// TLS 1.3 over `tcp` to `server_name`, accepting `certificate`, the handshake completed
/// before anything is sent; a failed handshake is `failed(e)`.
pub(crate) fn tls_handshake(
    tcp: TcpStream,
    server_name: &'static str,
    certificate: ServerCertificate,
    failed: impl Fn(std::io::Error) -> ClientError,
) -> Result<StreamOwned<ClientConnection, TcpStream>> {
    let name =
        ServerName::try_from(server_name).map_err(|e| ClientError::Unexpected(e.to_string()))?;
    let conn = ClientConnection::new(tls_config(certificate)?, name)
        .map_err(|e| ClientError::Unexpected(e.to_string()))?;
    let mut tls = StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock).map_err(&failed)?;
    }
    Ok(tls)
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
    /// The attestation document as the enclave sent it: kept with receipts, which are checked
    /// offline against it (`crate::receipt`).
    raw_document: Vec<u8>,
    /// The enclave's next single-use signing commitment per wallet, from its last answer.
    pub(crate) commitments: HashMap<WalletId, NextCommitment>,
    /// Requests sent on this session (round trips), for `make bench`.
    calls: u64,
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
        let mut tls = open_tls(addr)?;
        let binding = tls
            .conn
            .export_keying_material([0u8; EXPORTER_LEN], EXPORTER_LABEL, None)
            .map_err(|e| ClientError::Unexpected(format!("TLS exporter: {e}")))?;
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
            &mut || {},
        )? {
            Response::Attested { document } => document,
            Response::Error(e) => return Err(ClientError::Remote(e)),
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
        let verified = verify_document(addr, &document, trust, &expect)?;
        trust.check_measurements(&verified.doc)?;
        if trust.accepts_emulated_nsm() {
            // Every session, not once per process: a script that opens several must not be able
            // to miss that none of them is attested.
            eprintln!("warning: {addr}: {EMULATED_NSM_WARNING}");
        }
        Ok(Self {
            addr: addr.to_owned(),
            tls,
            document: verified,
            raw_document: document.into_vec(),
            commitments: HashMap::new(),
            calls: 0,
        })
    }

    /// The attestation document of this session, as the enclave sent it.
    pub fn raw_attestation(&self) -> &[u8] {
        &self.raw_document
    }

    /// How many requests this session sent (each one round trip).
    pub fn round_trips(&self) -> u64 {
        self.calls
    }

    /// The verified attestation of this session.
    pub fn attestation(&self) -> &VerifiedDoc {
        &self.document
    }

    /// Sends a request, returns the answer; an error answer becomes [`ClientError::Remote`].
    pub fn call(&mut self, request: &Request) -> Result<Response> {
        self.call_overlapped(request, &mut || {})
    }

    /// [`Session::call`], running `meanwhile` once the request is on the wire and before the
    /// answer is read: work that overlaps the cosigner's.
    pub fn call_overlapped(
        &mut self,
        request: &Request,
        meanwhile: &mut dyn FnMut(),
    ) -> Result<Response> {
        self.calls += 1;
        match exchange(&mut self.tls, &self.addr, request, meanwhile)? {
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

/// One request, one response, over the TLS stream; `meanwhile` runs between the two.
fn exchange(
    tls: &mut StreamOwned<ClientConnection, TcpStream>,
    addr: &str,
    request: &Request,
    meanwhile: &mut dyn FnMut(),
) -> Result<Response> {
    let io = |e: cosigner_protocol::ProtocolError| ClientError::Connection {
        addr: addr.to_owned(),
        reason: stream_reason(&e),
    };
    let body = wire::encode(request)?;
    write_frame(tls, &body).map_err(io)?;
    meanwhile();
    let frame = read_frame(tls)
        .map_err(io)?
        .ok_or_else(|| ClientError::Connection {
            addr: addr.to_owned(),
            reason: "the cosigner closed the connection without answering (is its enclave \
                     running? its log says why)"
                .into(),
        })?;
    Ok(wire::decode::<Response>(&frame)?)
}

/// TCP, then the TLS 1.3 handshake, to `addr`; failures in the user's terms.
fn open_tls(addr: &str) -> Result<StreamOwned<ClientConnection, TcpStream>> {
    let host_port = parse_address(addr)?;
    let conn_err = |reason: String| ClientError::Connection {
        addr: addr.to_owned(),
        reason,
    };
    let tcp = TcpStream::connect(&host_port).map_err(|e| conn_err(io_reason_net(&e)))?;
    tcp.set_nodelay(true)
        .and_then(|()| tcp.set_read_timeout(Some(READ_TIMEOUT)))
        .map_err(|e| conn_err(io_reason_net(&e)))?;
    tls_handshake(tcp, "cosigner-enclave", ServerCertificate::Attested, |e| {
        conn_err(format!("TLS handshake: {}", io_reason_net(&e)))
    })
}

/// How long a cosigner may take to answer one request.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// A network I/O error in the user's terms. rustls reports a peer that hung up as
/// `UnexpectedEof` with a sentence and a documentation URL, and a peer that does not speak TLS as
/// `InvalidData` around a `rustls::Error`: neither wording means anything to the user.
fn io_reason_net(e: &std::io::Error) -> String {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::ConnectionRefused => {
            "nothing is listening there: is the cosigner running? (`make up` starts the local ones)"
                .into()
        }
        K::TimedOut | K::WouldBlock => {
            format!("no answer within {} s", READ_TIMEOUT.as_secs())
        }
        K::UnexpectedEof | K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe => {
            "the cosigner closed the connection (is its enclave running? its log says why)".into()
        }
        K::InvalidData => match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
            Some(rustls::Error::InvalidMessage(_)) => {
                "this address does not speak TLS 1.3: not a cosigner (a mailbox port?)".into()
            }
            Some(other) => format!("TLS refused: {}", one_line(&other.to_string())),
            None => crate::error::io_reason(e),
        },
        _ => one_line(&crate::error::io_reason(e)),
    }
}

/// A failure reading or writing a frame, in the user's terms. The frame layer keeps only the
/// I/O error's text (`ProtocolError::Io`), so the kinds that matter are recognised by it.
fn stream_reason(e: &cosigner_protocol::ProtocolError) -> String {
    use cosigner_protocol::ProtocolError as P;
    match e {
        P::Io(text) if text.contains("timed out") || text.contains("temporarily unavailable") => {
            format!("no answer within {} s", READ_TIMEOUT.as_secs())
        }
        P::Io(_) | P::Truncated => {
            "the connection broke (the cosigner closed it or stopped): run the command again".into()
        }
        other => one_line(&other.to_string()),
    }
}

/// Verifies `document` under the trust file's anchor: the first root the chain leads to decides
/// (every other check is the same for all), or, under `emulated_nsm = true`, QEMU's unsigned
/// shape. Refusals in the user's terms: a chain to none of the roots is
/// [`ClientError::UntrustedRoot`], a timestamp out of bounds a clock gap
/// ([`ClientError::ClockBehind`], [`ClientError::ClockAhead`]) once the document proved to be
/// this session's answer.
fn verify_document(
    addr: &str,
    document: &[u8],
    trust: &Trust,
    expect: &Expectations,
) -> Result<VerifiedDoc> {
    let now = SystemTime::now();
    let verifiers = trust.anchor.verifiers_for(document);
    let mut last = None;
    for verifier in &verifiers {
        match verifier.verify(document, now, expect) {
            Ok(v) => return Ok(v),
            Err(e) if e.check() == "chain" => last = Some((e, *verifier)),
            Err(e) => return Err(refusal(addr, document, *verifier, now, expect, &e)),
        }
    }
    match last {
        // Expired or not-yet-valid certificates are the document's chain, not the trust file.
        Some((AttestationError::Chain { reason }, _)) if !reason.contains("valid") => {
            Err(ClientError::UntrustedRoot {
                addr: addr.to_owned(),
                pinned: verifiers.len(),
            })
        }
        Some((e, verifier)) => Err(refusal(addr, document, verifier, now, expect, &e)),
        None => Err(ClientError::Attestation {
            reason: format!("{addr}: the trust file pins no root"),
        }),
    }
}

/// The error for a document refused by `verifier` at `now` for `e`. A timestamp refusal is
/// called a clock gap only if the document passes every other check (our nonce, our TLS
/// session): then it was made for this session just now, and only the clocks disagree.
fn refusal(
    addr: &str,
    document: &[u8],
    verifier: Verifier<'_>,
    now: SystemTime,
    expect: &Expectations,
    e: &AttestationError,
) -> ClientError {
    // Whether the document passes every check but its age at `at`.
    let passes_at = |at: SystemTime| {
        let unbounded = Expectations {
            max_age: None,
            ..expect.clone()
        };
        verifier.verify(document, at, &unbounded).is_ok()
    };
    match *e {
        AttestationError::FromTheFuture {
            timestamp_ms,
            validation_ms,
            max_clock_skew_ms,
        } => {
            let at = std::time::UNIX_EPOCH + Duration::from_millis(timestamp_ms);
            if passes_at(at) {
                return ClientError::ClockBehind {
                    addr: addr.to_owned(),
                    behind_seconds: timestamp_ms.saturating_sub(validation_ms).div_ceil(1000),
                    allowed_seconds: max_clock_skew_ms / 1000,
                };
            }
        }
        AttestationError::TooOld { age_ms, max_age_ms } if passes_at(now) => {
            return ClientError::ClockAhead {
                addr: addr.to_owned(),
                ahead_seconds: age_ms.div_ceil(1000),
                max_age_seconds: max_age_ms / 1000,
            };
        }
        _ => {}
    }
    let reason = match e.check() {
        "user_data" => {
            format!("the document is bound to another TLS session (a relay terminated TLS?): {e}")
        }
        check => format!("check `{check}`: {}", one_line(&e.to_string())),
    };
    ClientError::Attestation {
        reason: format!("{addr}: {reason}"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use std::time::UNIX_EPOCH;

    use cosigner_attestation::PinnedRoot;

    use super::*;
    use crate::qemu_nsm::QemuAttestation;
    use crate::trust::{Anchor, Measurement};

    const NONCE: [u8; NONCE_LEN] = [0x11; NONCE_LEN];
    const BINDING: [u8; EXPORTER_LEN] = [0x22; EXPORTER_LEN];

    fn trust(anchor: Anchor, pcr0: &[u8]) -> Trust {
        Trust {
            anchor,
            max_age: Duration::from_secs(300),
            max_clock_skew: cosigner_attestation::DEFAULT_MAX_CLOCK_SKEW,
            allow_debug: false,
            measurements: vec![Measurement([(0, pcr0.to_vec())].into())],
        }
    }

    /// What QEMU's NSM answers this session's `Attest`, `age` ago (in whole seconds, as QEMU).
    fn qemu_document(age: Duration) -> (Vec<u8>, Vec<u8>) {
        let made = SystemTime::now() - age;
        let seconds = made.duration_since(UNIX_EPOCH).unwrap().as_secs();
        let attestation = QemuAttestation {
            nonce: Some(NONCE.to_vec()),
            user_data: Some(BINDING.to_vec()),
            public_key: Some(vec![4; 65]),
            ..QemuAttestation::booted(seconds * 1000, &[1; 48], &[2; 48], &[3; 48])
        };
        let pcr0 = attestation.pcrs[&0].clone();
        (attestation.document(), pcr0)
    }

    fn expect(trust: &Trust) -> Expectations {
        Expectations {
            nonce: Some(NONCE.to_vec()),
            user_data: Some(BINDING.to_vec()),
            max_age: Some(trust.max_age),
            max_clock_skew: trust.max_clock_skew,
            ..Default::default()
        }
    }

    #[test]
    fn emulated_nsm_trust_verifies_a_qemu_document_of_this_session() {
        let (document, pcr0) = qemu_document(Duration::from_secs(1));
        let trust = trust(Anchor::EmulatedNsm(vec![]), &pcr0);
        let verified =
            verify_document("tcp://qemu:7101", &document, &trust, &expect(&trust)).unwrap();
        trust.check_measurements(&verified.doc).unwrap();
        assert_eq!(verified.doc.nonce.as_deref(), Some(&NONCE[..]));
    }

    #[test]
    fn emulated_nsm_trust_refuses_a_qemu_document_of_another_session() {
        let (document, pcr0) = qemu_document(Duration::from_secs(1));
        let trust = trust(Anchor::EmulatedNsm(vec![]), &pcr0);
        let mut other = expect(&trust);
        other.user_data = Some(vec![0x23; EXPORTER_LEN]);
        let err = verify_document("tcp://qemu:7101", &document, &trust, &other).unwrap_err();
        assert!(matches!(err, ClientError::Attestation { .. }), "{err}");
    }

    #[test]
    fn emulated_nsm_trust_calls_an_old_document_of_this_session_a_clock_gap() {
        // The refusal is judged with the same verifier that refused it (QEMU's shape).
        let (document, pcr0) = qemu_document(Duration::from_secs(600));
        let trust = trust(Anchor::EmulatedNsm(vec![]), &pcr0);
        let err =
            verify_document("tcp://qemu:7101", &document, &trust, &expect(&trust)).unwrap_err();
        assert!(matches!(err, ClientError::ClockAhead { .. }), "{err}");
    }

    #[test]
    fn root_pinned_trust_refuses_a_qemu_document() {
        let (document, pcr0) = qemu_document(Duration::from_secs(1));
        let root = PinnedRoot::from_pem(crate::qemu_nsm::AWS_ROOT_PEM.as_bytes()).unwrap();
        let trust = trust(Anchor::Roots(vec![root]), &pcr0);
        let err =
            verify_document("tcp://qemu:7101", &document, &trust, &expect(&trust)).unwrap_err();
        assert!(matches!(err, ClientError::Attestation { .. }), "{err}");
    }
}
