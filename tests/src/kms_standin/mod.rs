//! A local AWS KMS stand-in that implements `Recipient`: for tests, and for running the real
//! enclave image in an emulator (QEMU's `nitro-enclave` machine) without AWS. **A test tool: it is
//! never part of the enclave image**, and it protects nothing (its master key is in its memory or
//! in a file next to it).
//!
//! It answers the two operations the enclave's `KmsSealer` calls, in KMS's JSON 1.1 protocol
//! (`POST /`, `X-Amz-Target: TrentService.<Operation>`, binary fields in base64), for one key ARN:
//!
//! * `GenerateDataKey{KeyId, KeySpec | NumberOfBytes, EncryptionContext, Recipient}` (AWS KMS API
//!   Reference, GenerateDataKey): a random data key, returned as `CiphertextBlob` (below) and, with
//!   a `Recipient`, as `CiphertextForRecipient` — "the plaintext data key encrypted under the
//!   public key from the attestation document" — with no `Plaintext`;
//! * `Decrypt{KeyId, CiphertextBlob, EncryptionContext, Recipient}` (AWS KMS API Reference,
//!   Decrypt): the blob opened, and the data key returned in `CiphertextForRecipient`.
//!
//! **Without `Recipient` both are refused** (`AccessDeniedException`), as KMS refuses them under
//! the key policy of docs/kms.md, whose `Deny` requires `kms:RecipientAttestation:*` (AWS KMS
//! Developer Guide, "Condition keys for AWS Nitro Enclaves"). [`Behaviour::IgnoreRecipient`]
//! answers plaintext instead (moto's behaviour), for the tests of the insecure path.
//!
//! What it does like KMS, and what it does not:
//!
//! * `CiphertextForRecipient` is a CMS EnvelopedData (RFC 5652) in KMS's layout, to the RSA key
//!   in the `Recipient` document's `public_key` ([`envelope`]).
//! * The document is **parsed, not verified** ([`recipient_public_key`]): the stand-in pins no AWS
//!   Nitro root, and QEMU's emulated NSM writes unsigned documents (alg `-1`, 64 zero bytes of
//!   signature and certificate). So unlike KMS it checks no PCR: any process can get data keys
//!   from it by naming its own public key.
//! * `CiphertextBlob` is the stand-in's own authenticated encryption: AES-256-GCM of the data key
//!   under the stand-in's master key, the key ARN and the encryption context as associated data.
//!   `Decrypt` under another context, of another stand-in's (or master key's) blob, or of a
//!   flipped bit gets `InvalidCiphertextException`, as from KMS.
//! * Requests must carry SigV4 (`Authorization`) for the configured access key id, scoped to the
//!   key's region and `kms`, with an `X-Amz-Date` within 5 minutes of the stand-in's clock (AWS
//!   refuses older or later ones as expired). Given the secret access key too, it recomputes the
//!   signature over the signed headers and the body with `cosigner_kms::aws::sigv4` and refuses a
//!   mismatch (`InvalidSignatureException`); session tokens are not checked.
//!
//! [`Standin::answer`] is the bytes-to-bytes core (one parsed request in, status and JSON out);
//! [`Server`] and [`serve`] put it on a TCP listener, with or without TLS ([`tls::StandinCa`]).
//! The binary `cosigner-kms-standin` runs it as a process (docs/kms.md, "A local KMS stand-in with
//! Recipient, for the emulator").

pub mod envelope;
pub mod http;
pub mod tls;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use cosigner_attestation::cose::CoseSign1;
use cosigner_attestation::emulated::{QEMU_PLACEHOLDER_LEN, QEMU_PROTECTED_HEADER};
use cosigner_attestation::{AttestationDoc, parse_signed_or_emulated};
use cosigner_kms::aws::sigv4;
use serde_json::{Map, Value, json};
use zeroize::Zeroizing;

pub use tls::StandinCa;

/// The `KeyEncryptionAlgorithm` of a `Recipient`: the only one KMS accepts.
pub const RECIPIENT_ALGORITHM: &str = "RSAES_OAEP_SHA_256";
/// How far `X-Amz-Date` may be from the stand-in's clock (AWS: "Signature expired" beyond 5
/// minutes).
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);
/// Connections served at once; more are closed on accept.
pub const MAX_CONNECTIONS: usize = 64;
/// Read and write timeout of a connection (a TLS handshake included).
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest attestation document taken (the NSM's are about 4.5 KiB).
pub const MAX_DOCUMENT_LEN: usize = cosigner_attestation::document::MAX_DOCUMENT_SIZE;
/// Format byte of the stand-in's `CiphertextBlob`s.
const BLOB_VERSION: u8 = 1;
/// Domain tag of the blobs' associated data.
const BLOB_DOMAIN: &[u8] = b"cosigner-kms-standin-blob-v1";

/// Why the stand-in refused a request or could not start, by kind. [`StandinError::aws`] maps
/// each request error to the HTTP status and AWS error type KMS answers with.
#[derive(Debug)]
pub enum StandinError {
    /// Not an HTTP request KMS would parse (framing, method, path, content type, size).
    MalformedRequest {
        /// What is wrong.
        reason: String,
    },
    /// The body is not a JSON object.
    Serialization {
        /// What is wrong.
        reason: String,
    },
    /// `X-Amz-Target` names no operation the stand-in implements.
    UnknownOperation {
        /// The target as sent.
        target: String,
    },
    /// No `Authorization` header.
    MissingAuthentication,
    /// An `Authorization` header that is not SigV4 as AWS parses it.
    IncompleteSignature {
        /// What is wrong.
        reason: String,
    },
    /// Signed by an access key id the stand-in was not given.
    UnrecognizedClient {
        /// The access key id in the request.
        access_key_id: String,
    },
    /// The signature, its scope or its time does not check.
    InvalidSignature {
        /// What is wrong.
        reason: String,
    },
    /// A request for another key than the stand-in's.
    NotFound {
        /// The `KeyId` as sent.
        key_id: String,
    },
    /// No `Recipient`: the key policy the stand-in plays requires an attestation document.
    RecipientRequired {
        /// The operation.
        operation: &'static str,
    },
    /// The `Recipient` cannot be used: its algorithm, or its document and public key.
    Recipient {
        /// What is wrong.
        reason: String,
    },
    /// The public key in the document is not an RSA key the envelope can be made for.
    RecipientKey {
        /// What is wrong.
        reason: String,
    },
    /// A parameter is missing or out of range.
    Validation {
        /// What is wrong.
        reason: String,
    },
    /// The `CiphertextBlob` is not one of this stand-in's, or not for this context.
    InvalidCiphertext,
    /// A cryptographic primitive or the random generator failed.
    Crypto {
        /// Which one.
        what: &'static str,
    },
    /// The TLS configuration could not be made.
    Tls {
        /// What is wrong.
        reason: String,
    },
    /// The stand-in's own configuration (key ARN, host, files).
    Config {
        /// What is wrong.
        reason: String,
    },
    /// Reading or writing a connection or a file.
    Io(std::io::Error),
}

impl std::fmt::Display for StandinError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::MalformedRequest { reason } => write!(f, "malformed request: {reason}"),
            Self::Serialization { reason } => write!(f, "request body: {reason}"),
            Self::UnknownOperation { target } => {
                write!(f, "operation {target:?} is not implemented by the stand-in")
            }
            Self::MissingAuthentication => {
                f.write_str("the request is not signed (no Authorization)")
            }
            Self::IncompleteSignature { reason } => write!(f, "Authorization: {reason}"),
            Self::UnrecognizedClient { access_key_id } => write!(
                f,
                "the security token included in the request is invalid: unknown access key id \
                 {access_key_id:?}"
            ),
            Self::InvalidSignature { reason } => write!(f, "signature: {reason}"),
            Self::NotFound { key_id } => write!(f, "key {key_id:?} does not exist here"),
            Self::RecipientRequired { operation } => write!(
                f,
                "{operation} without Recipient is denied: the key policy requires an attestation \
                 document (kms:RecipientAttestation)"
            ),
            Self::Recipient { reason } => write!(f, "Recipient: {reason}"),
            Self::RecipientKey { reason } => write!(f, "Recipient public key: {reason}"),
            Self::Validation { reason } => f.write_str(reason),
            Self::InvalidCiphertext => f.write_str(
                "the ciphertext is not this stand-in's, was altered, or its encryption context \
                 differs",
            ),
            Self::Crypto { what } => write!(f, "{what} failed"),
            Self::Tls { reason } => write!(f, "TLS: {reason}"),
            Self::Config { reason } => f.write_str(reason),
            Self::Io(e) => write!(f, "I/O: {e}"),
        }
    }
}

impl std::error::Error for StandinError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<std::io::Error> for StandinError {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e)
    }
}

impl StandinError {
    /// The HTTP status and AWS error type (`__type`) KMS answers this error with: the one place
    /// the stand-in's errors become AWS's (AWS KMS API Reference, each operation's "Errors", and
    /// "Common Errors").
    pub fn aws(&self) -> (u16, &'static str) {
        match self {
            Self::MalformedRequest { .. } => (400, "BadRequestException"),
            Self::Serialization { .. } => (400, "SerializationException"),
            Self::UnknownOperation { .. } => (400, "UnknownOperationException"),
            Self::MissingAuthentication => (400, "MissingAuthenticationTokenException"),
            Self::IncompleteSignature { .. } => (400, "IncompleteSignatureException"),
            Self::UnrecognizedClient { .. } => (400, "UnrecognizedClientException"),
            Self::InvalidSignature { .. } => (400, "InvalidSignatureException"),
            Self::NotFound { .. } => (400, "NotFoundException"),
            Self::RecipientRequired { .. } => (400, "AccessDeniedException"),
            Self::Recipient { .. } | Self::RecipientKey { .. } | Self::Validation { .. } => {
                (400, "ValidationException")
            }
            Self::InvalidCiphertext => (400, "InvalidCiphertextException"),
            Self::Crypto { .. } | Self::Tls { .. } | Self::Config { .. } | Self::Io(_) => {
                (500, "KMSInternalException")
            }
        }
    }

    /// The answer to a request that failed so: AWS's JSON error body.
    pub fn answer(&self) -> (u16, Vec<u8>) {
        let (status, error_type) = self.aws();
        let body = json!({"__type": error_type, "message": self.to_string()});
        (status, serde_json::to_vec(&body).unwrap_or_default())
    }
}

fn validation(reason: impl Into<String>) -> StandinError {
    StandinError::Validation {
        reason: reason.into(),
    }
}

/// How the stand-in answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Behaviour {
    /// Like KMS under a key policy that requires `Recipient`.
    Kms,
    /// Ignores `Recipient` and answers the plaintext data key (like moto), for the tests of
    /// `KmsSealer::insecure_without_recipient` and of the production sealer refusing such answers.
    IgnoreRecipient,
    /// Like KMS, but names this other key in its answers (a KMS of another account, or a forged
    /// answer), for the tests of the sealer's `KeyId` check.
    AnswerFor(String),
}

/// What the stand-in serves.
pub struct StandinConfig {
    /// The one key it knows: a key ARN, `arn:aws:kms:REGION:ACCOUNT:key/ID`.
    pub key_arn: String,
    /// The access key id requests must be signed with.
    pub access_key_id: String,
    /// With it, signatures are recomputed and checked; without, only their form and scope.
    pub secret_access_key: Option<Zeroizing<String>>,
    /// Its master key: what `CiphertextBlob`s are sealed under.
    pub master_key: Zeroizing<[u8; 32]>,
    /// How it answers.
    pub behaviour: Behaviour,
    /// One line on stderr per request and per failed connection.
    pub verbose: bool,
}

impl std::fmt::Debug for StandinConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StandinConfig")
            .field("key_arn", &self.key_arn)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "<redacted>"),
            )
            .field("master_key", &"<redacted>")
            .field("behaviour", &self.behaviour)
            .field("verbose", &self.verbose)
            .finish()
    }
}

impl StandinConfig {
    /// A stand-in for `key_arn` accepting `access_key_id` (signature form only), with a random
    /// master key, behaving like KMS, quiet.
    pub fn new(key_arn: &str, access_key_id: &str) -> Result<Self, StandinError> {
        let mut master_key = Zeroizing::new([0u8; 32]);
        aws_lc_rs::rand::fill(master_key.as_mut()).map_err(|_| StandinError::Crypto {
            what: "random master key",
        })?;
        Ok(Self {
            key_arn: key_arn.to_owned(),
            access_key_id: access_key_id.to_owned(),
            secret_access_key: None,
            master_key,
            behaviour: Behaviour::Kms,
            verbose: false,
        })
    }
}

/// How many requests [`Standin::requests`] keeps (the latest).
const MAX_RECORDED: usize = 256;

/// The stand-in's logic: requests in, answers out, no sockets.
pub struct Standin {
    config: StandinConfig,
    region: String,
    blob_key: LessSafeKey,
    requests: Mutex<Vec<(String, Value)>>,
}

impl std::fmt::Debug for Standin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Standin")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The parts of a SigV4 `Authorization` header.
struct Authorization<'a> {
    access_key_id: &'a str,
    date: &'a str,
    region: &'a str,
    service: &'a str,
    signed_headers: Vec<&'a str>,
    signature: &'a str,
}

/// `AWS4-HMAC-SHA256 Credential=AKID/DATE/REGION/SERVICE/aws4_request, SignedHeaders=a;b,
/// Signature=HEX` (AWS General Reference, "Signature Version 4: Authorization header").
fn parse_authorization(value: &str) -> Result<Authorization<'_>, StandinError> {
    let incomplete = |reason: &str| StandinError::IncompleteSignature {
        reason: reason.to_owned(),
    };
    let rest = value
        .strip_prefix(sigv4::ALGORITHM)
        .and_then(|r| r.strip_prefix(' '))
        .ok_or_else(|| incomplete("not AWS4-HMAC-SHA256"))?;
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in rest.split(',').map(str::trim) {
        let (name, v) = part
            .split_once('=')
            .ok_or_else(|| incomplete("a part is not NAME=VALUE"))?;
        let slot = match name {
            "Credential" => &mut credential,
            "SignedHeaders" => &mut signed,
            "Signature" => &mut signature,
            _ => return Err(incomplete("an unknown part")),
        };
        if slot.replace(v).is_some() {
            return Err(incomplete("a repeated part"));
        }
    }
    let (Some(credential), Some(signed), Some(signature)) = (credential, signed, signature) else {
        return Err(incomplete(
            "Credential, SignedHeaders and Signature are required",
        ));
    };
    let scope: Vec<&str> = credential.split('/').collect();
    let [access_key_id, date, region, service, "aws4_request"] = scope.as_slice() else {
        return Err(incomplete(
            "Credential is not ACCESS_KEY_ID/DATE/REGION/SERVICE/aws4_request",
        ));
    };
    Ok(Authorization {
        access_key_id,
        date,
        region,
        service,
        signed_headers: signed.split(';').collect(),
        signature,
    })
}

impl Standin {
    /// The stand-in for `config`; its key must be a key ARN (`key/…`, not an alias).
    pub fn new(config: StandinConfig) -> Result<Self, StandinError> {
        let resource = config.key_arn.split(':').nth(5).unwrap_or_default();
        if !cosigner_kms::aws::is_key_arn(&config.key_arn) || !resource.starts_with("key/") {
            return Err(StandinError::Config {
                reason: format!(
                    "key ARN {:?}: expected arn:aws:kms:REGION:ACCOUNT:key/ID",
                    config.key_arn
                ),
            });
        }
        if config.access_key_id.is_empty()
            || !config
                .access_key_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric())
        {
            return Err(StandinError::Config {
                reason: format!(
                    "access key id {:?}: letters and digits",
                    config.access_key_id
                ),
            });
        }
        let region = config
            .key_arn
            .split(':')
            .nth(3)
            .unwrap_or_default()
            .to_owned();
        let blob_key = UnboundKey::new(&AES_256_GCM, config.master_key.as_ref())
            .map(LessSafeKey::new)
            .map_err(|_| StandinError::Crypto {
                what: "AES-256-GCM master key",
            })?;
        Ok(Self {
            config,
            region,
            blob_key,
            requests: Mutex::new(Vec::new()),
        })
    }

    /// The key ARN it serves.
    pub fn key_arn(&self) -> &str {
        &self.config.key_arn
    }

    /// Every request that had a target and a JSON body, in order: (`X-Amz-Target`, body).
    pub fn requests(&self) -> Vec<(String, Value)> {
        self.requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The answer to one request: HTTP status and JSON body (AWS's error JSON when refused).
    pub fn answer(&self, request: &http::Request) -> (u16, Vec<u8>) {
        let target = request.header("x-amz-target").unwrap_or("-").to_owned();
        let (status, body) = match self.handle(request) {
            Ok(answer) => (200, serde_json::to_vec(&answer).unwrap_or_default()),
            Err(e) => e.answer(),
        };
        if self.config.verbose {
            let detail = match status {
                200 => String::new(),
                _ => format!(" {}", String::from_utf8_lossy(&body)),
            };
            eprintln!("cosigner-kms-standin: {target} -> {status}{detail}");
        }
        (status, body)
    }

    fn handle(&self, request: &http::Request) -> Result<Value, StandinError> {
        let malformed = |reason: &str| StandinError::MalformedRequest {
            reason: reason.to_owned(),
        };
        if request.method != "POST" || request.path != "/" {
            return Err(malformed("KMS takes POST /"));
        }
        if request.header("content-type") != Some("application/x-amz-json-1.1") {
            return Err(malformed("Content-Type must be application/x-amz-json-1.1"));
        }
        let target = request
            .header("x-amz-target")
            .ok_or_else(|| malformed("no X-Amz-Target"))?;
        let body: Value =
            serde_json::from_slice(&request.body).map_err(|e| StandinError::Serialization {
                reason: e.to_string(),
            })?;
        if !body.is_object() {
            return Err(StandinError::Serialization {
                reason: "not a JSON object".to_owned(),
            });
        }
        {
            let mut requests = self.requests.lock().unwrap_or_else(PoisonError::into_inner);
            // The latest only: a long-running stand-in must not grow with every request.
            if requests.len() == MAX_RECORDED {
                requests.remove(0);
            }
            requests.push((target.to_owned(), body.clone()));
        }
        self.authenticate(request)?;
        match target {
            "TrentService.GenerateDataKey" => self.generate_data_key(&body),
            "TrentService.Decrypt" => self.decrypt(&body),
            other => Err(StandinError::UnknownOperation {
                target: other.to_owned(),
            }),
        }
    }

    /// SigV4: the access key id, the scope (the key's region, `kms`), the time, and with the
    /// secret the signature itself.
    fn authenticate(&self, request: &http::Request) -> Result<(), StandinError> {
        let header = request
            .header("authorization")
            .ok_or(StandinError::MissingAuthentication)?;
        let auth = parse_authorization(header)?;
        if auth.access_key_id != self.config.access_key_id {
            return Err(StandinError::UnrecognizedClient {
                access_key_id: auth.access_key_id.chars().take(128).collect(),
            });
        }
        let invalid = |reason: String| StandinError::InvalidSignature { reason };
        if auth.region != self.region || auth.service != "kms" {
            return Err(invalid(format!(
                "scoped to {}/{}, expected {}/kms",
                auth.region, auth.service, self.region
            )));
        }
        let amz_date = request
            .header("x-amz-date")
            .ok_or_else(|| invalid("no X-Amz-Date".to_owned()))?;
        if !auth.signed_headers.contains(&"x-amz-date") || !auth.signed_headers.contains(&"host") {
            return Err(invalid("host and x-amz-date must be signed".to_owned()));
        }
        if amz_date.get(..8) != Some(auth.date) {
            return Err(invalid(format!(
                "X-Amz-Date {amz_date:?} is not of the credential's date {}",
                auth.date
            )));
        }
        // YYYYMMDDTHHMMSSZ sorts as time does.
        let now = SystemTime::now();
        let bound = |t: Option<SystemTime>| {
            t.and_then(|t| sigv4::amz_date(t).ok())
                .ok_or_else(|| invalid("the stand-in's clock is out of range".to_owned()))
        };
        let (earliest, latest) = (
            bound(now.checked_sub(MAX_CLOCK_SKEW))?,
            bound(now.checked_add(MAX_CLOCK_SKEW))?,
        );
        if amz_date.len() != earliest.len()
            || amz_date < earliest.as_str()
            || amz_date > latest.as_str()
        {
            return Err(invalid(format!(
                "signature expired: X-Amz-Date {amz_date} is not within 5 minutes of the \
                 stand-in's {}",
                bound(Some(now))?
            )));
        }
        let Some(secret) = &self.config.secret_access_key else {
            return Ok(());
        };
        let mut headers = Vec::new();
        for name in &auth.signed_headers {
            let before = headers.len();
            headers.extend(request.header_values(name).map(|v| (*name, v)));
            if headers.len() == before {
                return Err(invalid(format!(
                    "signed header {name:?} is not in the request"
                )));
            }
        }
        let credentials =
            sigv4::Credentials::new(self.config.access_key_id.clone(), secret.as_str(), None);
        let expected = sigv4::sign(
            &sigv4::Request {
                method: &request.method,
                path: &request.path,
                query: &[],
                headers: &headers,
                body: &request.body,
            },
            &credentials,
            &sigv4::Scope {
                region: &self.region,
                service: "kms",
                // Unused: the request's own X-Amz-Date is what is signed.
                time: UNIX_EPOCH,
            },
        )
        .map_err(|e| invalid(e.to_string()))?;
        aws_lc_rs::constant_time::verify_slices_are_equal(
            expected.signature.as_bytes(),
            auth.signature.as_bytes(),
        )
        .map_err(|_| {
            invalid(
                "the request signature we calculated does not match the signature you provided"
                    .to_owned(),
            )
        })
    }

    /// `KeyId`: this stand-in's key ARN, or (when `required` is false) absent.
    fn check_key(&self, body: &Value, required: bool) -> Result<(), StandinError> {
        match body.get("KeyId") {
            None | Some(Value::Null) if !required => Ok(()),
            Some(Value::String(k)) if *k == self.config.key_arn => Ok(()),
            Some(Value::String(k)) => Err(StandinError::NotFound {
                key_id: k.chars().take(256).collect(),
            }),
            _ => Err(validation("KeyId: a string is required")),
        }
    }

    /// `Recipient`'s public key (DER SPKI), if it has one and the stand-in honours it.
    fn recipient(
        &self,
        body: &Value,
        operation: &'static str,
    ) -> Result<Option<Vec<u8>>, StandinError> {
        if self.config.behaviour == Behaviour::IgnoreRecipient {
            return Ok(None);
        }
        let recipient = match body.get("Recipient") {
            None | Some(Value::Null) => return Err(StandinError::RecipientRequired { operation }),
            Some(r) => r,
        };
        let reason = |r: &str| StandinError::Recipient {
            reason: r.to_owned(),
        };
        match recipient
            .get("KeyEncryptionAlgorithm")
            .and_then(Value::as_str)
        {
            Some(RECIPIENT_ALGORITHM) => {}
            _ => return Err(reason("KeyEncryptionAlgorithm must be RSAES_OAEP_SHA_256")),
        }
        let document = recipient
            .get("AttestationDocument")
            .and_then(Value::as_str)
            .ok_or_else(|| reason("AttestationDocument (base64) is required"))?;
        if document.len() > MAX_DOCUMENT_LEN.saturating_mul(2) {
            return Err(reason("AttestationDocument is too large"));
        }
        let document = B64
            .decode(document)
            .map_err(|_| reason("AttestationDocument is not base64"))?;
        recipient_public_key(&document).map(Some)
    }

    /// The answer's key and data key: `CiphertextForRecipient` to `spki`, else `Plaintext`.
    fn deliver(
        &self,
        answer: &mut Map<String, Value>,
        spki: Option<&[u8]>,
        data_key: &[u8],
    ) -> Result<(), StandinError> {
        match spki {
            Some(spki) => {
                let (cms, _) = envelope::envelope(spki, data_key, &envelope::Build::default())?;
                answer.insert("CiphertextForRecipient".into(), json!(B64.encode(cms)));
            }
            None => {
                answer.insert("Plaintext".into(), json!(B64.encode(data_key)));
            }
        }
        Ok(())
    }

    fn answer_key(&self) -> &str {
        match &self.config.behaviour {
            Behaviour::AnswerFor(other) => other,
            _ => &self.config.key_arn,
        }
    }

    fn generate_data_key(&self, body: &Value) -> Result<Value, StandinError> {
        self.check_key(body, true)?;
        let len = match (body.get("KeySpec"), body.get("NumberOfBytes")) {
            (Some(spec), None) => match spec.as_str() {
                Some("AES_256") => 32,
                Some("AES_128") => 16,
                _ => return Err(validation("KeySpec: AES_256 or AES_128")),
            },
            (None, Some(n)) => match n.as_u64() {
                Some(n @ 1..=1024) => n as usize,
                _ => return Err(validation("NumberOfBytes: 1 to 1024")),
            },
            _ => return Err(validation("give KeySpec or NumberOfBytes, not both")),
        };
        let context = encryption_context(body)?;
        let spki = self.recipient(body, "GenerateDataKey")?;
        let mut data_key = Zeroizing::new(vec![0u8; len]);
        aws_lc_rs::rand::fill(&mut data_key).map_err(|_| StandinError::Crypto {
            what: "random data key",
        })?;
        let blob = self.seal_blob(&data_key, &context)?;
        let mut answer = Map::new();
        answer.insert("KeyId".into(), json!(self.answer_key()));
        answer.insert("CiphertextBlob".into(), json!(B64.encode(blob)));
        self.deliver(&mut answer, spki.as_deref(), &data_key)?;
        Ok(Value::Object(answer))
    }

    fn decrypt(&self, body: &Value) -> Result<Value, StandinError> {
        self.check_key(body, false)?;
        let blob = body
            .get("CiphertextBlob")
            .and_then(Value::as_str)
            .ok_or_else(|| validation("CiphertextBlob (base64) is required"))?;
        let blob = B64
            .decode(blob)
            .map_err(|_| validation("CiphertextBlob is not base64"))?;
        let context = encryption_context(body)?;
        let spki = self.recipient(body, "Decrypt")?;
        let data_key = self.open_blob(&blob, &context)?;
        let mut answer = Map::new();
        answer.insert("KeyId".into(), json!(self.answer_key()));
        answer.insert("EncryptionAlgorithm".into(), json!("SYMMETRIC_DEFAULT"));
        self.deliver(&mut answer, spki.as_deref(), &data_key)?;
        Ok(Value::Object(answer))
    }

    /// The associated data of a blob: the domain, the key ARN and every context pair, each
    /// length-prefixed (so no two contexts encode alike).
    fn blob_aad(&self, context: &BTreeMap<String, String>) -> Vec<u8> {
        let mut aad = BLOB_DOMAIN.to_vec();
        let mut put = |bytes: &[u8]| {
            aad.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
            aad.extend_from_slice(bytes);
        };
        put(self.config.key_arn.as_bytes());
        for (k, v) in context {
            put(k.as_bytes());
            put(v.as_bytes());
        }
        aad
    }

    /// `version (1) ‖ nonce (12) ‖ AES-256-GCM(master key, data key) ‖ tag (16)`.
    fn seal_blob(
        &self,
        data_key: &[u8],
        context: &BTreeMap<String, String>,
    ) -> Result<Vec<u8>, StandinError> {
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).map_err(|_| StandinError::Crypto {
            what: "random nonce",
        })?;
        let mut sealed = data_key.to_vec();
        self.blob_key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(self.blob_aad(context)),
                &mut sealed,
            )
            .map_err(|_| StandinError::Crypto {
                what: "AES-256-GCM seal",
            })?;
        Ok([&[BLOB_VERSION][..], &nonce, &sealed].concat())
    }

    fn open_blob(
        &self,
        blob: &[u8],
        context: &BTreeMap<String, String>,
    ) -> Result<Zeroizing<Vec<u8>>, StandinError> {
        let (Some(&BLOB_VERSION), Some(nonce), Some(sealed)) = (
            blob.first(),
            blob.get(1..1 + NONCE_LEN),
            blob.get(1 + NONCE_LEN..),
        ) else {
            return Err(StandinError::InvalidCiphertext);
        };
        let nonce =
            Nonce::try_assume_unique_for_key(nonce).map_err(|_| StandinError::InvalidCiphertext)?;
        let mut buffer = Zeroizing::new(sealed.to_vec());
        let plain = self
            .blob_key
            .open_in_place(nonce, Aad::from(self.blob_aad(context)), &mut buffer)
            .map_err(|_| StandinError::InvalidCiphertext)?;
        Ok(Zeroizing::new(plain.to_vec()))
    }
}

/// `EncryptionContext`: absent, or an object of strings.
fn encryption_context(body: &Value) -> Result<BTreeMap<String, String>, StandinError> {
    match body.get("EncryptionContext") {
        None | Some(Value::Null) => Ok(BTreeMap::new()),
        Some(Value::Object(map)) => map
            .iter()
            .map(|(k, v)| match v {
                Value::String(v) => Ok((k.clone(), v.clone())),
                _ => Err(validation("EncryptionContext values must be strings")),
            })
            .collect(),
        Some(_) => Err(validation("EncryptionContext must be an object")),
    }
}

/// The `public_key` (DER SubjectPublicKeyInfo) of an attestation document, **UNVERIFIED**: read
/// by `cosigner_attestation`'s own decoders ([`parse_signed_or_emulated`]), for the NSM's signed
/// documents and QEMU's emulated ones (alg `-1`, zero signature and
/// certificate); neither checks a signature, and both cap the size and hold every field to AWS's
/// limits.
pub fn recipient_public_key(document: &[u8]) -> Result<Vec<u8>, StandinError> {
    let reason = |r: String| StandinError::Recipient { reason: r };
    let (_, doc, _) = parse_signed_or_emulated(document)
        .map_err(|e| reason(format!("attestation document: {e}")))?;
    doc.public_key
        .ok_or_else(|| reason("the attestation document has no public_key".to_owned()))
}

/// An unsigned attestation document binding `public_key`, laid out as QEMU's emulated NSM
/// writes it (`hw/virtio/virtio-nsm.c`): protected header `{1: -1}`
/// ([`QEMU_PROTECTED_HEADER`]), the NSM's payload fields (PCR0–2 of zeros, a 64-byte zero
/// certificate and CA bundle), and 64 zero bytes of signature. For tests: nothing verifies it, so
/// nothing may trust it but this stand-in.
pub fn unsigned_document(public_key: &[u8]) -> Result<Vec<u8>, StandinError> {
    let timestamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(1)
        .max(1);
    let encoding = |e: cosigner_attestation::AttestationError| StandinError::Recipient {
        reason: e.to_string(),
    };
    let payload = AttestationDoc {
        module_id: "i-0000000000000000-enc0000000000000000".to_owned(),
        digest: "SHA384".to_owned(),
        timestamp,
        pcrs: (0..=2u8).map(|i| (i, vec![0u8; 48])).collect(),
        certificate: vec![0u8; QEMU_PLACEHOLDER_LEN],
        cabundle: vec![vec![0u8; QEMU_PLACEHOLDER_LEN]],
        public_key: Some(public_key.to_vec()),
        user_data: None,
        nonce: None,
    }
    .encode()
    .map_err(encoding)?;
    CoseSign1 {
        protected: QEMU_PROTECTED_HEADER.to_vec(),
        payload,
        signature: vec![0u8; QEMU_PLACEHOLDER_LEN],
    }
    .encode()
    .map_err(encoding)
}

/// A stand-in serving on a listener in a thread of this process; stops when dropped.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    standin: Arc<Standin>,
    stop: Arc<AtomicBool>,
}

impl Server {
    /// Serves `standin` on `listener`, over TLS when `tls` is given, else plain HTTP.
    pub fn start(
        listener: TcpListener,
        tls: Option<Arc<rustls::ServerConfig>>,
        standin: Standin,
    ) -> Result<Self, StandinError> {
        let addr = listener.local_addr()?;
        let standin = Arc::new(standin);
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (Arc::clone(&standin), Arc::clone(&stop));
        std::thread::spawn(move || serve(&listener, tls.as_ref(), &s, &st));
        Ok(Self {
            addr,
            standin,
            stop,
        })
    }

    /// Plain HTTP on a free loopback port, like KMS otherwise (tests).
    pub fn plain(config: StandinConfig) -> Result<Self, StandinError> {
        Self::start(
            TcpListener::bind("127.0.0.1:0")?,
            None,
            Standin::new(config)?,
        )
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every request it answered ([`Standin::requests`]).
    pub fn requests(&self) -> Vec<(String, Value)> {
        self.standin.requests()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so that it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

/// Accepts connections until `stop` is set, each served in its own thread (at most
/// [`MAX_CONNECTIONS`] at once), one request per connection.
pub fn serve(
    listener: &TcpListener,
    tls: Option<&Arc<rustls::ServerConfig>>,
    standin: &Arc<Standin>,
    stop: &AtomicBool,
) {
    let active = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(conn) = conn else { continue };
        if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::SeqCst);
            continue;
        }
        let (standin, tls, active) = (Arc::clone(standin), tls.cloned(), Arc::clone(&active));
        std::thread::spawn(move || {
            let peer = conn.peer_addr().ok();
            if let Err(e) = serve_connection(conn, tls, &standin)
                && standin.config.verbose
            {
                match peer {
                    Some(peer) => eprintln!("cosigner-kms-standin: connection from {peer}: {e}"),
                    None => eprintln!("cosigner-kms-standin: connection: {e}"),
                }
            }
            active.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

fn serve_connection(
    conn: TcpStream,
    tls: Option<Arc<rustls::ServerConfig>>,
    standin: &Standin,
) -> Result<(), StandinError> {
    conn.set_read_timeout(Some(CONNECTION_TIMEOUT))?;
    conn.set_write_timeout(Some(CONNECTION_TIMEOUT))?;
    let Some(config) = tls else {
        let mut conn = conn;
        return exchange(&mut conn, standin);
    };
    let session = rustls::ServerConnection::new(config).map_err(|e| StandinError::Tls {
        reason: e.to_string(),
    })?;
    let mut stream = rustls::StreamOwned::new(session, conn);
    exchange(&mut stream, standin)?;
    stream.conn.send_close_notify();
    stream.flush()?;
    Ok(())
}

/// One request read, answered (a malformed one with AWS's error JSON).
fn exchange<C: Read + Write>(conn: &mut C, standin: &Standin) -> Result<(), StandinError> {
    let (status, body) = match http::read_request(conn) {
        Ok(request) => standin.answer(&request),
        Err(StandinError::Io(e)) => return Err(StandinError::Io(e)),
        Err(e) => {
            let answer = e.answer();
            http::write_response(conn, answer.0, &answer.1)?;
            return Err(e);
        }
    };
    http::write_response(conn, status, &body)?;
    Ok(())
}
