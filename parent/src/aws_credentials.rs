//! AWS credentials the parent hands to the enclave for its KMS calls
//! (`StoreRequest::AwsCredentials` on the store channel).
//!
//! A Nitro Enclave has no network and no instance metadata service: whatever AWS credentials it
//! signs KMS requests with come from the parent. The parent holds them anyway (they are its
//! instance role's), so handing them over gives the parent nothing new. What keeps the parent from
//! decrypting is the KMS key policy: data keys only go to a `Recipient` attestation document of
//! the published image (docs/kms.md). The credentials are not a secret *from the parent*; they are
//! still kept out of logs (`Debug` prints `<redacted>`) and zeroized when dropped.
//!
//! Sources ([`AwsCredentialsConfig`], `[aws_credentials]` in the parent's configuration):
//!
//! * `imds`: the instance role, from the EC2 instance metadata service, IMDSv2 only
//!   ([`imds`]): a `PUT /latest/api/token` for a session token, then
//!   `GET /latest/meta-data/iam/security-credentials/` (the role's name) and
//!   `GET …/security-credentials/ROLE` (the credentials), each a bounded HTTP/1.1 exchange over
//!   plain TCP to `169.254.169.254:80`. Cached until [`IMDS_REFRESH_MARGIN`] before they expire.
//! * `env`: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN` (optional), and
//!   `AWS_CREDENTIAL_EXPIRATION` (optional, RFC 3339) of the parent's environment (local mode).
//! * `file`: a JSON document as IMDS serves it (`AccessKeyId`, `SecretAccessKey`, `Token` or
//!   `SessionToken`, `Expiration`), which is also what `aws configure export-credentials` prints;
//!   read on every request, so replacing the file rotates the credentials.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use cosigner_kms::KmsError;
use cosigner_kms::aws::ExpiringCredentials;
pub use cosigner_kms::aws::credentials::rfc3339_to_unix;
use cosigner_protocol::wire::{SecretString, StoreResponse};
use serde::Deserialize;

use crate::error::{ParentError, Result};

/// The instance metadata service's address.
pub const IMDS_ENDPOINT: &str = "169.254.169.254:80";
/// IMDS credentials are fetched again when they expire within this (IMDS offers new ones at least
/// 5 minutes before the old expire; the enclave refreshes 5 minutes before).
pub const IMDS_REFRESH_MARGIN: Duration = Duration::from_secs(10 * 60);
/// At most one IMDS fetch per this interval, whatever the enclave asks.
const IMDS_MIN_INTERVAL: Duration = Duration::from_secs(10);

/// Where the parent's AWS credentials come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AwsCredentialsConfig {
    /// The instance role, through IMDSv2.
    Imds {
        /// The metadata service (default [`IMDS_ENDPOINT`]; tests use a stand-in on loopback).
        endpoint: SocketAddr,
        /// The role's name; default: the one role IMDS lists.
        role: Option<String>,
    },
    /// The parent's environment.
    Env,
    /// A JSON file, re-read for every request.
    File(PathBuf),
}

/// `[aws_credentials]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAwsCredentials {
    source: String,
    #[serde(default)]
    imds_endpoint: Option<String>,
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    path: Option<String>,
}

impl RawAwsCredentials {
    /// Checks the table: a known source and only the fields it uses.
    pub(crate) fn check(self) -> Result<AwsCredentialsConfig> {
        let bad =
            |field, value: &str, reason: &str| ParentError::invalid_address(field, value, reason);
        let unused = |field: &'static str, present: bool| {
            if present {
                Err(bad(
                    field,
                    &self.source,
                    "not used by this aws_credentials.source",
                ))
            } else {
                Ok(())
            }
        };
        match self.source.as_str() {
            "imds" => {
                unused("aws_credentials.path", self.path.is_some())?;
                let text = self.imds_endpoint.as_deref().unwrap_or(IMDS_ENDPOINT);
                let endpoint = text.parse::<SocketAddr>().map_err(|_| {
                    bad(
                        "aws_credentials.imds_endpoint",
                        text,
                        "expected IP:PORT, e.g. 169.254.169.254:80",
                    )
                })?;
                if let Some(role) = &self.role
                    && !valid_role_name(role)
                {
                    return Err(bad(
                        "aws_credentials.role",
                        role,
                        "not an IAM role name (1-64 of letters, digits and +=,.@_-)",
                    ));
                }
                Ok(AwsCredentialsConfig::Imds {
                    endpoint,
                    role: self.role,
                })
            }
            "env" => {
                unused("aws_credentials.path", self.path.is_some())?;
                unused(
                    "aws_credentials.imds_endpoint",
                    self.imds_endpoint.is_some(),
                )?;
                unused("aws_credentials.role", self.role.is_some())?;
                Ok(AwsCredentialsConfig::Env)
            }
            "file" => {
                unused(
                    "aws_credentials.imds_endpoint",
                    self.imds_endpoint.is_some(),
                )?;
                unused("aws_credentials.role", self.role.is_some())?;
                match self.path {
                    Some(path) if !path.is_empty() => {
                        Ok(AwsCredentialsConfig::File(PathBuf::from(path)))
                    }
                    _ => Err(bad(
                        "aws_credentials.path",
                        "",
                        "source = \"file\" needs path = FILE",
                    )),
                }
            }
            other => Err(bad(
                "aws_credentials.source",
                other,
                "expected \"imds\", \"env\" or \"file\"",
            )),
        }
    }
}

/// IAM role names: 1 to 64 of `[A-Za-z0-9+=,.@_-]`.
fn valid_role_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-".contains(&b))
}

/// The parent's name for kms's credentials type, the one AWS credentials type of the workspace:
/// the secrets zeroized on drop and redacted in `Debug`, the expiration a [`SystemTime`].
pub type AwsCredentials = ExpiringCredentials;

/// The store channel's answer carrying `credentials`: the expiration in seconds since the Unix
/// epoch, the secrets as [`SecretString`]s.
pub fn store_response(credentials: &AwsCredentials) -> StoreResponse {
    let keys = &credentials.credentials;
    StoreResponse::AwsCredentials {
        access_key_id: keys.access_key_id.clone(),
        secret_access_key: SecretString::new(keys.secret_access_key.clone()),
        session_token: keys.session_token.clone().map(SecretString::new),
        expiration: credentials.expiration_unix(),
    }
}

/// Parses the JSON document IMDS serves for a role (also `aws configure export-credentials`'s),
/// with kms's one parser of it ([`ExpiringCredentials::from_json`]: `Code` must be `Success`,
/// `Expiration` RFC 3339).
fn from_document(json: &str) -> Result<AwsCredentials> {
    ExpiringCredentials::from_json(json.as_bytes()).map_err(kms_error)
}

/// kms's refusal of a credentials document or environment, as the parent's error.
fn kms_error(error: KmsError) -> ParentError {
    match error {
        KmsError::AwsCredentials { reason } => credentials_error(reason),
        other => credentials_error(other.to_string()),
    }
}

fn credentials_error(reason: impl Into<String>) -> ParentError {
    ParentError::AwsCredentials {
        reason: reason.into(),
    }
}

#[derive(Debug)]
struct Cached {
    credentials: AwsCredentials,
    fetched: SystemTime,
}

/// Answers the enclave's `AwsCredentials` requests from the configured source. `Send + Sync`.
#[derive(Debug)]
pub struct CredentialsProvider {
    config: AwsCredentialsConfig,
    cache: Mutex<Option<Cached>>,
}

impl CredentialsProvider {
    /// A provider for `config`; nothing is fetched yet.
    pub fn new(config: AwsCredentialsConfig) -> Self {
        Self {
            config,
            cache: Mutex::new(None),
        }
    }

    /// Its configuration.
    pub fn config(&self) -> &AwsCredentialsConfig {
        &self.config
    }

    /// The current credentials (IMDS: cached until [`IMDS_REFRESH_MARGIN`] before expiry; the
    /// cached ones while they last if IMDS fails).
    pub fn credentials(&self) -> Result<AwsCredentials> {
        match &self.config {
            AwsCredentialsConfig::Env => {
                AwsCredentials::from_env_with(|k| std::env::var(k).ok()).map_err(kms_error)
            }
            AwsCredentialsConfig::File(path) => {
                let text = std::fs::read(path)
                    .map_err(|e| credentials_error(format!("cannot read {}: {e}", path.display())))
                    .and_then(|bytes| {
                        String::from_utf8(bytes)
                            .map(SecretString::new)
                            .map_err(|_| {
                                credentials_error(format!("{} is not UTF-8", path.display()))
                            })
                    })?;
                from_document(text.expose())
                    .map_err(|e| credentials_error(format!("{}: {e}", path.display())))
            }
            AwsCredentialsConfig::Imds { endpoint, role } => {
                self.cached_imds(*endpoint, role.as_deref(), SystemTime::now())
            }
        }
    }

    fn cached_imds(
        &self,
        endpoint: SocketAddr,
        role: Option<&str>,
        now: SystemTime,
    ) -> Result<AwsCredentials> {
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        let unexpired = |c: &AwsCredentials| c.expiration.is_none_or(|e| now < e);
        if let Some(cached) = cache.as_ref() {
            let lasting = cached
                .credentials
                .expiration
                .is_none_or(|e| now + IMDS_REFRESH_MARGIN < e);
            let just_fetched = now
                .duration_since(cached.fetched)
                .is_ok_and(|age| age < IMDS_MIN_INTERVAL);
            if lasting || (just_fetched && unexpired(&cached.credentials)) {
                return Ok(cached.credentials.clone());
            }
        }
        match imds::fetch(endpoint, role) {
            Ok(credentials) => {
                *cache = Some(Cached {
                    credentials: credentials.clone(),
                    fetched: now,
                });
                Ok(credentials)
            }
            Err(e) => match cache.as_ref() {
                Some(cached) if unexpired(&cached.credentials) => {
                    tracing::warn!(
                        error = %e,
                        "refreshing AWS credentials failed ({e}); the current ones are still valid"
                    );
                    Ok(cached.credentials.clone())
                }
                _ => Err(e),
            },
        }
    }

    /// The store channel's answer carrying the current credentials.
    pub fn response(&self) -> Result<StoreResponse> {
        self.credentials().map(|c| store_response(&c))
    }
}

/// An IMDSv2 client: bounded HTTP/1.1 over plain TCP, one connection per request.
pub mod imds {
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpStream};
    use std::time::{Duration, Instant};

    use cosigner_kms::aws::http;
    use cosigner_protocol::wire::SecretString;
    use zeroize::Zeroize;

    use super::{AwsCredentials, credentials_error, from_document, valid_role_name};
    use crate::error::Result;

    /// Connect timeout (IMDS answers on the instance's own link).
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
    /// Longest one exchange may take, from connect to the last byte.
    pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(3);
    /// Largest response body read (headers: 16 KiB more).
    pub const MAX_RESPONSE_LEN: usize = 64 * 1024;
    /// The session token's lifetime asked for (IMDS's maximum, 6 hours).
    pub const TOKEN_TTL_SECONDS: u32 = 21_600;
    /// `Host` sent (IMDS's own address, whatever endpoint the tests use).
    const HOST: &str = "169.254.169.254";
    const TOKEN_PATH: &str = "/latest/api/token";
    const ROLES_PATH: &str = "/latest/meta-data/iam/security-credentials/";

    /// The instance role's credentials: token, role name (unless given), credentials.
    pub fn fetch(endpoint: SocketAddr, role: Option<&str>) -> Result<AwsCredentials> {
        let ttl = TOKEN_TTL_SECONDS.to_string();
        let token = exchange(
            endpoint,
            "PUT",
            TOKEN_PATH,
            &[("X-aws-ec2-metadata-token-ttl-seconds", &ttl)],
        )?;
        let token = token.expose().trim();
        if token.is_empty() || token.len() > 1024 || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(credentials_error(
                "IMDS: the session token is empty, too long or not printable",
            ));
        }
        let auth = [("X-aws-ec2-metadata-token", token)];
        let role = match role {
            Some(role) => role.to_owned(),
            None => {
                let listing = exchange(endpoint, "GET", ROLES_PATH, &auth)?;
                let role = listing
                    .expose()
                    .lines()
                    .map(str::trim)
                    .find(|l| !l.is_empty())
                    .unwrap_or_default()
                    .to_owned();
                if !valid_role_name(&role) {
                    return Err(credentials_error(format!(
                        "IMDS: no usable role name in {:?} (is an instance role attached?)",
                        http::printable(&role, 80)
                    )));
                }
                role
            }
        };
        let document = exchange(endpoint, "GET", &format!("{ROLES_PATH}{role}"), &auth)?;
        from_document(document.expose())
            .map_err(|e| credentials_error(format!("IMDS role {role}: {e}")))
    }

    /// One request, its 200 answer's body (kept in a [`SecretString`]); anything else is an
    /// error naming the status or what was malformed.
    fn exchange(
        endpoint: SocketAddr,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<SecretString> {
        let what = format!("IMDS {method} {path}");
        let fail = |reason: String| credentials_error(format!("{what}: {reason}"));
        let deadline = Instant::now() + EXCHANGE_TIMEOUT;
        let mut stream = TcpStream::connect_timeout(&endpoint, CONNECT_TIMEOUT)
            .map_err(|e| fail(format!("cannot connect to {endpoint}: {e}")))?;
        stream
            .set_write_timeout(Some(EXCHANGE_TIMEOUT))
            .map_err(|e| fail(e.to_string()))?;
        let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {HOST}\r\n");
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        if method == "PUT" {
            request.push_str("Content-Length: 0\r\n");
        }
        request.push_str("Accept: */*\r\nConnection: close\r\n\r\n");
        let request = SecretString::new(request);
        stream
            .write_all(request.expose().as_bytes())
            .map_err(|e| fail(format!("sending: {e}")))?;
        let mut reader = Deadline { stream, deadline };
        let response = http::read_response(&mut reader, LIMITS).map_err(|e| fail(describe(e)))?;
        let status = response.status;
        let body = body_text(response).map_err(fail)?;
        if status != 200 {
            let hint = match status {
                401 => " (the session token was refused)",
                403 => " (IMDS is disabled for this instance, or IMDSv2 tokens are not accepted)",
                404 => " (no instance role attached, or no such role)",
                _ => "",
            };
            return Err(fail(format!("HTTP {status}{hint}")));
        }
        Ok(body)
    }

    /// IMDS's answers: a body framed by `Content-Length`, chunked, or running to the close (the
    /// request says `Connection: close`), at most [`MAX_RESPONSE_LEN`] bytes.
    const LIMITS: http::Limits = http::Limits {
        max_head: 16 * 1024,
        max_body: MAX_RESPONSE_LEN,
        body_until_close: true,
    };

    /// The connection, each read bounded by what is left of the exchange's deadline.
    struct Deadline {
        stream: TcpStream,
        deadline: Instant,
    }

    impl Read for Deadline {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let left = self.deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(std::io::ErrorKind::TimedOut.into());
            }
            self.stream.set_read_timeout(Some(left))?;
            self.stream.read(buf)
        }
    }

    /// The reader's refusal as a line; a timeout names the exchange's bound.
    fn describe(error: http::HttpError) -> String {
        match error {
            http::HttpError::Io(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                format!("no complete answer within {} s", EXCHANGE_TIMEOUT.as_secs())
            }
            other => other.to_string(),
        }
    }

    /// The body as text, moved (not copied) into a [`SecretString`].
    fn body_text(mut response: http::Response) -> std::result::Result<SecretString, String> {
        let bytes = std::mem::take(&mut *response.body);
        String::from_utf8(bytes)
            .map(SecretString::new)
            .map_err(|e| {
                // The rejected bytes are handed back: zeroize them before they are dropped.
                let mut bytes = e.into_bytes();
                bytes.zeroize();
                "body is not UTF-8".to_owned()
            })
    }

    /// Status and body of one complete HTTP/1.x answer held in `bytes` (read to EOF): body by
    /// `Content-Length`, chunked, or up to the end.
    pub fn parse_response(bytes: &[u8]) -> std::result::Result<(u16, SecretString), String> {
        let mut bytes = bytes;
        let response = http::read_response(&mut bytes, LIMITS).map_err(describe)?;
        let status = response.status;
        Ok((status, body_text(response)?))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn rfc3339_times_parse_strictly() {
        assert_eq!(rfc3339_to_unix("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(rfc3339_to_unix("2024-05-01T12:34:56Z"), Some(1_714_566_896));
        assert_eq!(rfc3339_to_unix("2024-02-29T00:00:00Z"), Some(1_709_164_800));
        assert_eq!(
            rfc3339_to_unix("2024-05-01T14:34:56.123+02:00"),
            Some(1_714_566_896)
        );
        assert_eq!(
            rfc3339_to_unix("2024-05-01T10:34:56-02:00"),
            Some(1_714_566_896)
        );
        for bad in [
            "",
            "2024-05-01",
            "2024-05-01T12:34:56",
            "2023-02-29T00:00:00Z",
            "2024-13-01T00:00:00Z",
            "2024-05-01T24:00:00Z",
            "2024-05-01T12:34:56.Z",
            "2024-05-01T12:34:56+2:00",
            "1969-12-31T23:59:59Z",
            "２024-05-01T12:34:56Z",
            "2024-05-01T12:34:56Zjunk",
        ] {
            assert_eq!(rfc3339_to_unix(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn credentials_documents_parse_and_never_print_secrets() {
        let c = from_document(
            r#"{"Code":"Success","LastUpdated":"2024-05-01T12:00:00Z","Type":"AWS-HMAC",
                "AccessKeyId":"ASIAEXAMPLE","SecretAccessKey":"wJalrXUtnFEMI/K7MDENG",
                "Token":"IQoJb3JpZ2luX2VjEXAMPLE","Expiration":"2024-05-01T18:00:00Z"}"#,
        )
        .unwrap();
        assert_eq!(c.credentials.access_key_id, "ASIAEXAMPLE");
        assert_eq!(c.credentials.secret_access_key, "wJalrXUtnFEMI/K7MDENG");
        assert_eq!(c.expiration_unix(), rfc3339_to_unix("2024-05-01T18:00:00Z"));
        let shown = format!("{c:?} {:?}", store_response(&c));
        assert!(
            !shown.contains("wJalr") && !shown.contains("IQoJ"),
            "{shown}"
        );
        // aws configure export-credentials' spelling; long-term keys have no expiration.
        let c = from_document(
            r#"{"Version":1,"AccessKeyId":"AKIA","SecretAccessKey":"s","SessionToken":"t"}"#,
        )
        .unwrap();
        assert_eq!(c.credentials.session_token.as_deref(), Some("t"));
        for bad in [
            r#"{"Code":"Failed","AccessKeyId":"A","SecretAccessKey":"s"}"#,
            r#"{"AccessKeyId":"A"}"#,
            r#"{"AccessKeyId":"","SecretAccessKey":"s"}"#,
            r#"{"AccessKeyId":"A","SecretAccessKey":"s s"}"#,
            r#"{"AccessKeyId":"A","SecretAccessKey":"s","Expiration":"tomorrow"}"#,
            "not json",
        ] {
            let e = from_document(bad).unwrap_err().to_string();
            assert!(!e.contains("s s"), "{e}");
        }
    }

    #[test]
    fn environment_credentials() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                vars.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        let c = AwsCredentials::from_env_with(env(&[
            ("AWS_ACCESS_KEY_ID", "AKIA"),
            ("AWS_SECRET_ACCESS_KEY", "secret"),
        ]))
        .unwrap();
        assert!(c.credentials.session_token.is_none() && c.expiration.is_none());
        let c = AwsCredentials::from_env_with(env(&[
            ("AWS_ACCESS_KEY_ID", "ASIA"),
            ("AWS_SECRET_ACCESS_KEY", "secret"),
            ("AWS_SESSION_TOKEN", "token"),
            ("AWS_CREDENTIAL_EXPIRATION", "2030-01-01T00:00:00Z"),
        ]))
        .unwrap();
        assert_eq!(c.credentials.session_token.as_deref(), Some("token"));
        let e = AwsCredentials::from_env_with(env(&[("AWS_ACCESS_KEY_ID", "AKIA")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("AWS_SECRET_ACCESS_KEY"), "{e}");
    }

    #[test]
    fn http_answers_parse_within_bounds() {
        let (s, b) =
            imds::parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc").unwrap();
        assert_eq!((s, b.expose()), (200, "abc"));
        let (_, b) = imds::parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n1;x\r\nc\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(b.expose(), "abc");
        let (s, b) = imds::parse_response(b"HTTP/1.0 404 Not Found\r\n\r\nnope").unwrap();
        assert_eq!((s, b.expose()), (404, "nope"));
        for bad in [
            &b""[..],
            b"HTTP/1.1 200 OK\r\n",
            b"HTTP/2 200 OK\r\n\r\n",
            b"HTTP/1.1 20 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc",
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\nabc",
            b"HTTP/1.1 200 OK\r\nbroken\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffffff\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n\xff",
        ] {
            assert!(
                imds::parse_response(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn the_configuration_table_is_checked() {
        let raw = |source: &str, endpoint: Option<&str>, role: Option<&str>, path: Option<&str>| {
            RawAwsCredentials {
                source: source.into(),
                imds_endpoint: endpoint.map(Into::into),
                role: role.map(Into::into),
                path: path.map(Into::into),
            }
            .check()
        };
        assert_eq!(
            raw("imds", None, None, None).unwrap(),
            AwsCredentialsConfig::Imds {
                endpoint: IMDS_ENDPOINT.parse().unwrap(),
                role: None
            }
        );
        assert_eq!(
            raw("env", None, None, None).unwrap(),
            AwsCredentialsConfig::Env
        );
        assert_eq!(
            raw("file", None, None, Some("aws.json")).unwrap(),
            AwsCredentialsConfig::File("aws.json".into())
        );
        for (source, endpoint, role, path) in [
            ("sts", None, None, None),
            ("file", None, None, None),
            ("env", None, None, Some("x")),
            ("imds", Some("metadata:80"), None, None),
            ("imds", None, Some("../../etc"), None),
            ("imds", None, None, Some("x")),
        ] {
            assert!(
                raw(source, endpoint, role, path).is_err(),
                "{source} {endpoint:?} {role:?}"
            );
        }
    }
}
