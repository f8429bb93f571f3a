//! A minimal AWS KMS client: the JSON 1.1 protocol, SigV4-signed, over HTTP/1.1 written by hand on
//! any byte stream.
//!
//! Every call is `POST /` with `Content-Type: application/x-amz-json-1.1` and
//! `X-Amz-Target: TrentService.<Operation>`; binary fields travel as base64 strings. One connection
//! per call (`Connection: close`): KMS calls are few (one per seal or unseal), and a fresh
//! connection needs no state that a broken peer could leave behind.
//!
//! The byte stream is injected ([`Transport`]): in the enclave it is the parent's vsock proxy with
//! TLS ([`TlsTransport`], rustls with the Mozilla roots of `webpki-roots`) ending *inside* the
//! enclave, so the parent relays ciphertext only and cannot forge KMS's answers; in tests it is
//! plain TCP to a local server ([`TcpTransport`]).
//!
//! Robustness: the status line and headers are capped at [`MAX_HEAD_LEN`], the body at
//! [`MAX_BODY_LEN`] (KMS answers are a few KiB), a body needs `Content-Length` or chunked framing,
//! and any malformed byte is an error ([`KmsError::AwsResponse`]), never a panic. KMS errors keep
//! their HTTP status and AWS error type ([`KmsError::AwsError`]).

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use rustls::pki_types::ServerName;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use zeroize::{Zeroize, Zeroizing};

use super::http::{self, Response, printable};
use super::sigv4::{self, Credentials, Scope};
use crate::error::{KmsError, Result};

/// Largest status line plus headers read.
pub const MAX_HEAD_LEN: usize = 16 * 1024;
/// Largest body read.
pub const MAX_BODY_LEN: usize = 256 * 1024;
/// The `KeyEncryptionAlgorithm` of a `Recipient` (the only one KMS accepts).
pub const RECIPIENT_ALGORITHM: &str = "RSAES_OAEP_SHA_256";
/// The service's SigV4 signing name.
const SERVICE: &str = "kms";
/// Longest AWS error message kept.
const MAX_MESSAGE_LEN: usize = 512;

/// A connected byte stream.
pub trait Connection: Read + Write + Send {}
impl<T: Read + Write + Send> Connection for T {}

/// Opens connections to KMS (or to the proxy that reaches it).
pub trait Transport: Send + Sync {
    /// A new connection.
    fn connect(&self) -> io::Result<Box<dyn Connection>>;
}

impl<F> Transport for F
where
    F: Fn() -> io::Result<Box<dyn Connection>> + Send + Sync,
{
    fn connect(&self) -> io::Result<Box<dyn Connection>> {
        self()
    }
}

/// Plain TCP with connect, read and write timeouts (tests, or a TLS layer on top).
#[derive(Debug, Clone)]
pub struct TcpTransport {
    /// Where to connect.
    pub addr: SocketAddr,
    /// Connect, read and write timeout.
    pub timeout: Duration,
}

impl Transport for TcpTransport {
    fn connect(&self) -> io::Result<Box<dyn Connection>> {
        let stream = TcpStream::connect_timeout(&self.addr, self.timeout)?;
        stream.set_read_timeout(Some(self.timeout))?;
        stream.set_write_timeout(Some(self.timeout))?;
        stream.set_nodelay(true)?;
        Ok(Box::new(stream))
    }
}

/// TLS over another transport, the server authenticated by name against a fixed set of roots.
pub struct TlsTransport {
    inner: Box<dyn Transport>,
    config: Arc<rustls::ClientConfig>,
    server_name: ServerName<'static>,
}

impl std::fmt::Debug for TlsTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsTransport")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl TlsTransport {
    /// TLS 1.2/1.3 (rustls, aws-lc-rs provider) to `host`, trusting the Mozilla root program's
    /// CAs as shipped in `webpki-roots` (AWS endpoints chain to Amazon Root CA 1–4 / Starfield).
    pub fn webpki(inner: Box<dyn Transport>, host: &str) -> Result<Self> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        Self::with_roots(inner, host, roots)
    }

    /// TLS to `host` trusting `roots` only (tests use their own CA).
    pub fn with_roots(
        inner: Box<dyn Transport>,
        host: &str,
        roots: rustls::RootCertStore,
    ) -> Result<Self> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| KmsError::AwsConfig {
                reason: format!("TLS: {e}"),
            })?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let server_name =
            ServerName::try_from(host.to_owned()).map_err(|e| KmsError::AwsConfig {
                reason: format!("TLS server name {host:?}: {e}"),
            })?;
        Ok(Self {
            inner,
            config: Arc::new(config),
            server_name,
        })
    }
}

impl Transport for TlsTransport {
    fn connect(&self) -> io::Result<Box<dyn Connection>> {
        let sock = self.inner.connect()?;
        let conn = rustls::ClientConnection::new(self.config.clone(), self.server_name.clone())
            .map_err(io::Error::other)?;
        Ok(Box::new(rustls::StreamOwned::new(conn, sock)))
    }
}

/// Where credentials come from; asked before every call, so rotated credentials are picked up.
pub trait CredentialsSource: Send + Sync {
    /// The current credentials.
    fn credentials(&self) -> Result<Credentials>;

    /// KMS refused the last credentials as unknown, expired or wrongly signed: forget any cached
    /// ones. `true` if the next [`CredentialsSource::credentials`] may give others (the client
    /// then retries once).
    fn invalidate(&self) -> bool {
        false
    }
}

/// AWS error types that mean "these credentials are not (or no longer) valid": worth one retry
/// with freshly fetched ones.
const CREDENTIAL_ERRORS: &[&str] = &[
    "ExpiredTokenException",
    "ExpiredToken",
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "InvalidSignatureException",
    "SignatureDoesNotMatch",
];

impl CredentialsSource for Credentials {
    fn credentials(&self) -> Result<Credentials> {
        Ok(self.clone())
    }
}

/// Credentials in a JSON file ([`Credentials::from_json`]: the instance-metadata document), read on
/// every call: whoever rotates them rewrites the file (atomically, by rename).
#[derive(Debug, Clone)]
pub struct CredentialsFile(pub PathBuf);

impl CredentialsSource for CredentialsFile {
    fn credentials(&self) -> Result<Credentials> {
        let bytes =
            Zeroizing::new(
                std::fs::read(&self.0).map_err(|e| KmsError::AwsCredentials {
                    reason: format!("cannot read {}: {e}", self.0.display()),
                })?,
            );
        Credentials::from_json(&bytes).map_err(|e| KmsError::AwsCredentials {
            reason: format!("{}: {e}", self.0.display()),
        })
    }
}

/// `Recipient` of a request: the attestation document carrying the enclave's RSA public key.
#[derive(Clone)]
pub struct Recipient<'a> {
    /// The COSE_Sign1 attestation document.
    pub attestation_document: &'a [u8],
}

/// The answer to `GenerateDataKey`.
pub struct GenerateDataKeyOutput {
    /// The ARN of the key KMS used.
    pub key_id: String,
    /// The data key encrypted under the KMS key (store this).
    pub ciphertext_blob: Vec<u8>,
    /// The data key in clear (absent when a `Recipient` was given).
    pub plaintext: Option<Zeroizing<Vec<u8>>>,
    /// The data key encrypted to the recipient (only with a `Recipient`).
    pub ciphertext_for_recipient: Option<Vec<u8>>,
}

/// The answer to `Decrypt`.
pub struct DecryptOutput {
    /// The ARN of the key KMS used.
    pub key_id: String,
    /// The plaintext (absent when a `Recipient` was given).
    pub plaintext: Option<Zeroizing<Vec<u8>>>,
    /// The plaintext encrypted to the recipient (only with a `Recipient`).
    pub ciphertext_for_recipient: Option<Vec<u8>>,
}

/// The answer to `Encrypt`.
#[derive(Debug, Clone)]
pub struct EncryptOutput {
    /// The ARN of the key KMS used.
    pub key_id: String,
    /// The ciphertext.
    pub ciphertext_blob: Vec<u8>,
}

macro_rules! redacted_debug {
    ($t:ty, $($field:ident),*) => {
        impl std::fmt::Debug for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($t))
                    $(.field(stringify!($field), &self.$field))*
                    .field("plaintext", &self.plaintext.as_ref().map(|_| "<redacted>"))
                    .finish_non_exhaustive()
            }
        }
    };
}
redacted_debug!(GenerateDataKeyOutput, key_id);
redacted_debug!(DecryptOutput, key_id);

/// An AWS KMS client for one region.
pub struct KmsClient {
    transport: Box<dyn Transport>,
    credentials: Box<dyn CredentialsSource>,
    region: String,
    host: String,
    clock: fn() -> SystemTime,
}

impl std::fmt::Debug for KmsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KmsClient")
            .field("region", &self.region)
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

impl KmsClient {
    /// A client for `region`, sending `Host: kms.REGION.amazonaws.com` (see [`KmsClient::host`]).
    pub fn new(
        transport: Box<dyn Transport>,
        region: &str,
        credentials: Box<dyn CredentialsSource>,
    ) -> Result<Self> {
        check_region(region)?;
        Ok(Self {
            transport,
            credentials,
            host: endpoint_host(region),
            region: region.to_owned(),
            clock: SystemTime::now,
        })
    }

    /// Replaces the `Host` header (a local test server, a FIPS or VPC endpoint name).
    pub fn with_host(mut self, host: &str) -> Result<Self> {
        if host.is_empty() || !host.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(KmsError::AwsConfig {
                reason: format!("host {host:?} cannot be sent"),
            });
        }
        self.host = host.to_owned();
        Ok(self)
    }

    /// Replaces the clock used for signing (tests).
    pub fn with_clock(mut self, clock: fn() -> SystemTime) -> Self {
        self.clock = clock;
        self
    }

    /// The region.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// The `Host` header sent.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// `GenerateDataKey` of an AES-256 key under `key_id`, bound to `context`. With a `recipient`,
    /// KMS returns the key encrypted to it (`CiphertextForRecipient`) instead of in clear.
    pub fn generate_data_key(
        &self,
        key_id: &str,
        context: &BTreeMap<String, String>,
        recipient: Option<Recipient<'_>>,
    ) -> Result<GenerateDataKeyOutput> {
        const OP: &str = "GenerateDataKey";
        let key_spec = ("KeySpec", "AES_256".to_owned());
        let raw = self.call_for_key(OP, key_id, key_spec, context, recipient.as_ref())?;
        Ok(GenerateDataKeyOutput {
            key_id: raw.key_id(OP)?,
            ciphertext_blob: raw.required_b64(OP, "CiphertextBlob", &raw.ciphertext_blob)?,
            plaintext: raw.plaintext(OP)?,
            ciphertext_for_recipient: raw.ciphertext_for_recipient(OP)?,
        })
    }

    /// `Decrypt` of `ciphertext_blob`, which must have been made under `key_id` (KMS refuses it
    /// otherwise: `IncorrectKeyException`) with exactly `context`.
    pub fn decrypt(
        &self,
        key_id: &str,
        ciphertext_blob: &[u8],
        context: &BTreeMap<String, String>,
        recipient: Option<Recipient<'_>>,
    ) -> Result<DecryptOutput> {
        const OP: &str = "Decrypt";
        let blob = ("CiphertextBlob", B64.encode(ciphertext_blob));
        let raw = self.call_for_key(OP, key_id, blob, context, recipient.as_ref())?;
        Ok(DecryptOutput {
            key_id: raw.key_id(OP)?,
            plaintext: raw.plaintext(OP)?,
            ciphertext_for_recipient: raw.ciphertext_for_recipient(OP)?,
        })
    }

    /// `Encrypt` of a small `plaintext` (at most 4 KiB) under `key_id`, bound to `context`.
    pub fn encrypt(
        &self,
        key_id: &str,
        plaintext: &[u8],
        context: &BTreeMap<String, String>,
    ) -> Result<EncryptOutput> {
        const OP: &str = "Encrypt";
        let plaintext = ("Plaintext", B64.encode(plaintext));
        let raw = self.call_for_key(OP, key_id, plaintext, context, None)?;
        Ok(EncryptOutput {
            key_id: raw.key_id(OP)?,
            ciphertext_blob: raw.required_b64(OP, "CiphertextBlob", &raw.ciphertext_blob)?,
        })
    }

    /// Any KMS operation: `target` is the operation name (`CreateKey`, …), `body` its JSON request;
    /// returns the JSON answer. The body is zeroized after use, as it may carry secrets.
    pub fn call(&self, operation: &'static str, body: &Value) -> Result<Value> {
        self.call_json(operation, body)
    }

    /// `GenerateDataKey`, `Decrypt` and `Encrypt`: the request for `key_id` with the operation's
    /// own `field`, the encryption context and the recipient if any, sent; the answer's fields.
    /// The field's value is zeroized after use (`Encrypt`'s is the plaintext).
    fn call_for_key(
        &self,
        operation: &'static str,
        key_id: &str,
        (name, value): (&str, String),
        context: &BTreeMap<String, String>,
        recipient: Option<&Recipient<'_>>,
    ) -> Result<RawResponse> {
        let mut req = Map::new();
        req.insert("KeyId".into(), json!(key_id));
        req.insert(name.into(), Value::String(value));
        insert_context(&mut req, context);
        insert_recipient(&mut req, recipient);
        let mut body = Value::Object(req);
        let raw = self.call_json(operation, &body);
        if let Some(Value::String(value)) = body.get_mut(name) {
            value.zeroize();
        }
        raw
    }

    fn call_json<T: for<'de> Deserialize<'de>>(
        &self,
        operation: &'static str,
        body: &Value,
    ) -> Result<T> {
        let body = Zeroizing::new(serde_json::to_vec(body).map_err(|e| KmsError::AwsConfig {
            reason: format!("cannot encode the {operation} request: {e}"),
        })?);
        let answer = self.round_trip(operation, &body)?;
        serde_json::from_slice(&answer).map_err(|e| KmsError::AwsResponse {
            operation,
            reason: format!("not the expected JSON: {e}"),
        })
    }

    /// Signs and sends one request, returns the body of a 2xx answer; other answers become
    /// [`KmsError::AwsError`]. A refusal of the credentials themselves is retried once, with
    /// fresh ones, when the source can fetch others ([`CredentialsSource::invalidate`]).
    fn round_trip(&self, operation: &'static str, body: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        match self.round_trip_once(operation, body) {
            Err(KmsError::AwsError { ref error_type, .. })
                if CREDENTIAL_ERRORS.contains(&error_type.as_str())
                    && self.credentials.invalidate() =>
            {
                self.round_trip_once(operation, body)
            }
            other => other,
        }
    }

    fn round_trip_once(&self, operation: &'static str, body: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        let credentials = self.credentials.credentials()?;
        let target = format!("TrentService.{operation}");
        let headers = [
            ("Content-Type", "application/x-amz-json-1.1"),
            ("Host", self.host.as_str()),
            ("X-Amz-Target", target.as_str()),
        ];
        let mut head = sigv4::post_head(
            &headers,
            body,
            &credentials,
            &Scope {
                region: &self.region,
                service: SERVICE,
                time: (self.clock)(),
            },
        )?;
        head.push_str(&format!(
            "Content-Length: {}\r\nConnection: close\r\nUser-Agent: cosigner-kms/{}\r\n\r\n",
            body.len(),
            env!("CARGO_PKG_VERSION")
        ));
        let transport = |e: io::Error| KmsError::AwsTransport {
            operation,
            reason: e.to_string(),
        };
        let mut conn = self.transport.connect().map_err(transport)?;
        let mut request = Zeroizing::new(head.into_bytes());
        request.extend_from_slice(body);
        conn.write_all(&request).map_err(transport)?;
        conn.flush().map_err(transport)?;
        let response = read_response(&mut conn, operation)?;
        if (200..300).contains(&response.status) {
            return Ok(response.body);
        }
        Err(aws_error(operation, &response))
    }
}

/// `kms.REGION.amazonaws.com` (the China regions' endpoints end in `.amazonaws.com.cn`).
pub fn endpoint_host(region: &str) -> String {
    if region.starts_with("cn-") {
        format!("kms.{region}.amazonaws.com.cn")
    } else {
        format!("kms.{region}.amazonaws.com")
    }
}

/// Regions are lower-case letters, digits and dashes (`eu-west-1`, `us-gov-west-1`).
pub fn check_region(region: &str) -> Result<()> {
    if region.is_empty()
        || region.len() > 32
        || !region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(KmsError::AwsConfig {
            reason: format!("{region:?} is not an AWS region name"),
        });
    }
    Ok(())
}

fn insert_context(req: &mut Map<String, Value>, context: &BTreeMap<String, String>) {
    if !context.is_empty() {
        let map: Map<String, Value> = context
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        req.insert("EncryptionContext".into(), Value::Object(map));
    }
}

fn insert_recipient(req: &mut Map<String, Value>, recipient: Option<&Recipient<'_>>) {
    if let Some(r) = recipient {
        req.insert(
            "Recipient".into(),
            json!({
                "KeyEncryptionAlgorithm": RECIPIENT_ALGORITHM,
                "AttestationDocument": B64.encode(r.attestation_document),
            }),
        );
    }
}

/// The fields of KMS answers this client reads (others are ignored).
#[derive(Deserialize)]
struct RawResponse {
    #[serde(rename = "KeyId")]
    key_id: Option<String>,
    #[serde(rename = "CiphertextBlob")]
    ciphertext_blob: Option<String>,
    #[serde(rename = "Plaintext")]
    plaintext: Option<String>,
    #[serde(rename = "CiphertextForRecipient")]
    ciphertext_for_recipient: Option<String>,
}

impl Drop for RawResponse {
    fn drop(&mut self) {
        if let Some(p) = &mut self.plaintext {
            p.zeroize();
        }
    }
}

impl RawResponse {
    fn key_id(&self, operation: &'static str) -> Result<String> {
        self.key_id.clone().ok_or(KmsError::AwsResponse {
            operation,
            reason: "no KeyId".to_owned(),
        })
    }

    fn required_b64(
        &self,
        operation: &'static str,
        name: &str,
        value: &Option<String>,
    ) -> Result<Vec<u8>> {
        self.optional_b64(operation, name, value)?
            .ok_or_else(|| KmsError::AwsResponse {
                operation,
                reason: format!("no {name}"),
            })
    }

    fn optional_b64(
        &self,
        operation: &'static str,
        name: &str,
        value: &Option<String>,
    ) -> Result<Option<Vec<u8>>> {
        match value.as_deref() {
            None | Some("") => Ok(None),
            Some(s) => B64.decode(s).map(Some).map_err(|e| KmsError::AwsResponse {
                operation,
                reason: format!("{name} is not base64: {e}"),
            }),
        }
    }

    fn ciphertext_for_recipient(&self, operation: &'static str) -> Result<Option<Vec<u8>>> {
        self.optional_b64(
            operation,
            "CiphertextForRecipient",
            &self.ciphertext_for_recipient,
        )
    }

    fn plaintext(&self, operation: &'static str) -> Result<Option<Zeroizing<Vec<u8>>>> {
        match self.plaintext.as_deref() {
            None | Some("") => Ok(None),
            Some(s) => {
                B64.decode(s)
                    .map(|v| Some(Zeroizing::new(v)))
                    .map_err(|_| KmsError::AwsResponse {
                        operation,
                        reason: "Plaintext is not base64".to_owned(),
                    })
            }
        }
    }
}

/// KMS's answers: within [`MAX_HEAD_LEN`] and [`MAX_BODY_LEN`], framed by `Content-Length` or
/// chunked (KMS always frames its bodies).
const LIMITS: http::Limits = http::Limits {
    max_head: MAX_HEAD_LEN,
    max_body: MAX_BODY_LEN,
    body_until_close: false,
};

/// Reads one HTTP/1.1 response (skipping 1xx), within [`LIMITS`].
fn read_response(conn: &mut dyn Read, operation: &'static str) -> Result<Response> {
    http::read_response(conn, LIMITS).map_err(|e| match e {
        http::HttpError::Io(e) => KmsError::AwsTransport {
            operation,
            reason: e.to_string(),
        },
        other => KmsError::AwsResponse {
            operation,
            reason: other.to_string(),
        },
    })
}

/// A non-2xx answer as [`KmsError::AwsError`]: the type from the JSON `__type` (namespace
/// removed) or the `x-amzn-ErrorType` header, the message from `message`/`Message`.
fn aws_error(operation: &'static str, response: &Response) -> KmsError {
    let json: Option<Value> = serde_json::from_slice(&response.body).ok();
    let field = |names: &[&str]| {
        json.as_ref().and_then(|v| {
            names
                .iter()
                .find_map(|n| v.get(n).and_then(Value::as_str).map(str::to_owned))
        })
    };
    let header = response
        .headers
        .iter()
        .find(|(n, _)| n == "x-amzn-errortype")
        .map(|(_, v)| v.split(':').next().unwrap_or_default().to_owned());
    // Some front ends (and moto, for signature failures) answer in the query protocol's XML.
    let xml = |name: &str| {
        let text = std::str::from_utf8(&response.body).ok()?;
        let open = format!("<{name}>");
        let start = text.find(&open)? + open.len();
        let len = text.get(start..)?.find(&format!("</{name}>"))?;
        text.get(start..start + len).map(str::to_owned)
    };
    let error_type = field(&["__type", "code", "Code"])
        .or(header)
        .or_else(|| xml("Code"))
        .map(|t| t.rsplit('#').next().unwrap_or_default().to_owned())
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| "UnknownError".to_owned());
    let message = field(&["message", "Message"])
        .or_else(|| xml("Message"))
        .unwrap_or_else(|| {
            if json.is_some() {
                String::new()
            } else {
                String::from_utf8_lossy(&response.body).into_owned()
            }
        });
    KmsError::AwsError {
        operation,
        status: response.status,
        error_type: printable(&error_type, 128),
        message: printable(&message, MAX_MESSAGE_LEN),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    fn parse(bytes: &[u8]) -> Result<Response> {
        let mut r: &[u8] = bytes;
        read_response(&mut r, "Test")
    }

    #[test]
    fn responses_parse() {
        let r = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}").unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"{}"[..]));
        let r = parse(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
              1\r\n{\r\n1;ext=1\r\n}\r\n0\r\nX-T: 1\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.body.as_slice(), b"{}");
    }

    #[test]
    fn broken_responses_are_errors_not_panics() {
        for bytes in [
            &b""[..],
            b"HTTP/1.1 200 OK\r\n",
            b"HTTP/1.1 200 OK\r\n\r\n{}",
            b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/2 200 OK\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n{}",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n{}",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nbad header\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}XX0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n",
            b"\xff\xfe\r\n\r\n",
        ] {
            assert!(
                matches!(parse(bytes), Err(KmsError::AwsResponse { .. })),
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
        let mut huge = b"HTTP/1.1 200 OK\r\n".to_vec();
        huge.extend(std::iter::repeat_n(b'a', MAX_HEAD_LEN + 10));
        assert!(matches!(parse(&huge), Err(KmsError::AwsResponse { .. })));
    }

    #[test]
    fn aws_errors_keep_type_and_status() {
        let body =
            br#"{"__type":"com.amazonaws.kms#IncorrectKeyException","message":"wrong\nkey"}"#;
        let mut bytes = format!(
            "HTTP/1.1 400 Bad Request\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        bytes.extend_from_slice(body);
        let r = parse(&bytes).unwrap();
        match aws_error("Decrypt", &r) {
            KmsError::AwsError {
                status,
                error_type,
                message,
                ..
            } => {
                assert_eq!(status, 400);
                assert_eq!(error_type, "IncorrectKeyException");
                assert_eq!(message, "wrong key");
            }
            other => panic!("{other:?}"),
        }
        let r = parse(b"HTTP/1.1 503 Busy\r\nContent-Length: 4\r\n\r\nbusy").unwrap();
        assert!(matches!(
            aws_error("Decrypt", &r),
            KmsError::AwsError { status: 503, ref message, .. } if message == "busy"
        ));
    }

    /// Answers each connection with the next canned response; counts the requests.
    fn canned(answers: Vec<&'static [u8]>) -> (Box<dyn Transport>, Arc<std::sync::Mutex<usize>>) {
        struct Conn(io::Cursor<&'static [u8]>);
        impl Read for Conn {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                self.0.read(buf)
            }
        }
        impl Write for Conn {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let count = Arc::new(std::sync::Mutex::new(0usize));
        let seen = Arc::clone(&count);
        let transport = move || -> io::Result<Box<dyn Connection>> {
            let mut n = seen.lock().unwrap();
            let answer = answers.get(*n).copied().unwrap_or_default();
            *n += 1;
            Ok(Box::new(Conn(io::Cursor::new(answer))))
        };
        (Box::new(transport), count)
    }

    /// Hands out `AKID<n>`; invalidation counted.
    struct Rotating(std::sync::Mutex<usize>, bool);
    impl CredentialsSource for Rotating {
        fn credentials(&self) -> Result<Credentials> {
            let n = *self.0.lock().unwrap();
            Ok(Credentials::new(format!("AKID{n}"), "s", None))
        }
        fn invalidate(&self) -> bool {
            *self.0.lock().unwrap() += 1;
            self.1
        }
    }

    const EXPIRED: &[u8] = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 54\r\n\r\n\
        {\"__type\":\"ExpiredTokenException\",\"message\":\"expired\"}";
    const DENIED: &[u8] = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 53\r\n\r\n\
        {\"__type\":\"AccessDeniedException\",\"message\":\"denied\"}";
    const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";

    #[test]
    fn refused_credentials_are_refetched_once() {
        // Expired, then fine with fresh credentials: one retry.
        let (transport, count) = canned(vec![EXPIRED, OK]);
        let client = KmsClient::new(
            transport,
            "eu-west-1",
            Box::new(Rotating(std::sync::Mutex::new(0), true)),
        )
        .unwrap();
        client.call("ListKeys", &json!({})).unwrap();
        assert_eq!(*count.lock().unwrap(), 2);
        // Expired twice: the second refusal is the answer.
        let (transport, count) = canned(vec![EXPIRED, EXPIRED, OK]);
        let client = KmsClient::new(
            transport,
            "eu-west-1",
            Box::new(Rotating(std::sync::Mutex::new(0), true)),
        )
        .unwrap();
        let e = client.call("ListKeys", &json!({})).unwrap_err();
        assert!(
            matches!(e, KmsError::AwsError { ref error_type, .. } if error_type == "ExpiredTokenException")
        );
        assert_eq!(*count.lock().unwrap(), 2);
        // A source that cannot fetch others, or a refusal by policy: no retry.
        for (answers, refetch) in [(vec![EXPIRED, OK], false), (vec![DENIED, OK], true)] {
            let (transport, count) = canned(answers);
            let client = KmsClient::new(
                transport,
                "eu-west-1",
                Box::new(Rotating(std::sync::Mutex::new(0), refetch)),
            )
            .unwrap();
            assert!(client.call("ListKeys", &json!({})).is_err());
            assert_eq!(*count.lock().unwrap(), 1);
        }
    }

    #[test]
    fn regions_are_checked() {
        check_region("eu-west-1").unwrap();
        check_region("us-gov-west-1").unwrap();
        for bad in ["", "EU", "eu west", "eu-west-1.evil.com/", "a\r\nb"] {
            assert!(check_region(bad).is_err(), "{bad}");
        }
        assert_eq!(endpoint_host("eu-west-1"), "kms.eu-west-1.amazonaws.com");
        assert_eq!(
            endpoint_host("cn-north-1"),
            "kms.cn-north-1.amazonaws.com.cn"
        );
    }
}
