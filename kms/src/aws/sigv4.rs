//! AWS Signature Version 4 (SigV4): the request signing every AWS API call carries.
//!
//! The four steps of AWS's "Signature Version 4 signing process":
//!
//! 1. the **canonical request**: method, canonical URI, canonical query string, canonical headers
//!    (lower-case names, sorted; values trimmed, inner runs of spaces collapsed, repeated headers
//!    joined by commas), the signed header names, and the hex SHA-256 of the body;
//! 2. the **string to sign**: `AWS4-HMAC-SHA256`, the request time (`YYYYMMDDTHHMMSSZ`), the
//!    credential scope (`date/region/service/aws4_request`) and the hex SHA-256 of step 1;
//! 3. the **signing key**: HMAC-SHA256 chained over date, region, service and `aws4_request`,
//!    starting from `"AWS4" + secret access key`;
//! 4. the **signature**: hex HMAC-SHA256 of step 2 under step 3, sent in the `Authorization`
//!    header with the access key id, the scope and the signed header names.
//!
//! Temporary credentials (STS, an instance role) add `X-Amz-Security-Token`, which is signed like
//! any other header (the test suite's `post-sts-header-before` case).
//!
//! Checked against AWS's published SigV4 test suite (see `tests/tests/kms_aws.rs`).

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::{digest, hmac};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::error::{KmsError, Result};

/// The signing algorithm name, the first word of the string to sign and of `Authorization`.
pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// AWS credentials: an access key id, its secret, and the session token of temporary credentials.
///
/// The secret and the token are zeroized on drop and never printed (`Debug` shows the access key
/// id only).
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Credentials {
    /// The access key id (`AKIA…` for long-term keys, `ASIA…` for temporary ones).
    pub access_key_id: String,
    /// The secret access key.
    pub secret_access_key: String,
    /// The session token of temporary credentials (`X-Amz-Security-Token`).
    pub session_token: Option<String>,
}

impl Credentials {
    /// Credentials from their parts.
    pub fn new(
        access_key_id: impl Into<String>,
        secret_access_key: impl Into<String>,
        session_token: Option<String>,
    ) -> Self {
        Self {
            access_key_id: access_key_id.into(),
            secret_access_key: secret_access_key.into(),
            session_token,
        }
    }

    /// The credentials of the JSON document the EC2 instance metadata service serves for a role
    /// (its expiration set aside): [`super::credentials::ExpiringCredentials::from_json`].
    pub fn from_json(json: &[u8]) -> Result<Self> {
        super::credentials::ExpiringCredentials::from_json(json).map(|e| e.credentials)
    }

    /// Refuses empty fields and characters that cannot appear in a header.
    pub fn check(&self) -> Result<()> {
        let bad = |what: &str| KmsError::AwsCredentials {
            reason: format!("{what} is empty or contains characters not allowed in a header"),
        };
        if !is_token_text(&self.access_key_id) {
            return Err(bad("the access key id"));
        }
        if !is_token_text(&self.secret_access_key) {
            return Err(bad("the secret access key"));
        }
        if let Some(token) = &self.session_token
            && !is_token_text(token)
        {
            return Err(bad("the session token"));
        }
        Ok(())
    }
}

/// Printable ASCII without spaces: what access keys, secrets and tokens consist of.
fn is_token_text(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic())
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// What a request is signed for: region, service and time.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    /// The region, e.g. `eu-west-1`.
    pub region: &'a str,
    /// The service's signing name, e.g. `kms`.
    pub service: &'a str,
    /// The signing time (AWS refuses requests more than 5 minutes off).
    pub time: SystemTime,
}

/// An HTTP request to sign. The path is sent as given (it must already be URI-encoded; AWS JSON
/// services use `/`); query parameters are given decoded and encoded here.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// `GET`, `POST`, …
    pub method: &'a str,
    /// The URI-encoded path, starting with `/`.
    pub path: &'a str,
    /// Query parameters, decoded.
    pub query: &'a [(&'a str, &'a str)],
    /// Headers to sign (must include `host`); names in any case. Repeated names are allowed.
    pub headers: &'a [(&'a str, &'a str)],
    /// The body.
    pub body: &'a [u8],
}

/// The result of signing: every intermediate value (for tests and diagnostics) and the headers to
/// add to the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    /// `X-Amz-Date` value.
    pub amz_date: String,
    /// Step 1.
    pub canonical_request: String,
    /// Step 2.
    pub string_to_sign: String,
    /// Step 4, the hex signature.
    pub signature: String,
    /// The `Authorization` header value.
    pub authorization: String,
}

/// Signs `request`. `X-Amz-Date` (from `scope.time`) and, with temporary credentials,
/// `X-Amz-Security-Token` are added to the signed headers; the caller must send both, with
/// [`Signed::authorization`] as `Authorization` (see [`Signed::extra_headers`]). A request that
/// already carries `x-amz-date` is signed with the value it carries.
pub fn sign(request: &Request<'_>, credentials: &Credentials, scope: &Scope<'_>) -> Result<Signed> {
    credentials.check()?;
    check_headers(request.headers)?;
    let amz_date = request_date(request.headers, scope.time)?;
    let date = amz_date.get(..8).ok_or_else(|| KmsError::AwsConfig {
        reason: format!("x-amz-date {amz_date:?} is not YYYYMMDDTHHMMSSZ"),
    })?;
    let headers = headers_to_sign(request.headers, &amz_date, credentials)?;
    let (canonical_headers, signed_headers) = canonical_headers(headers);

    // Step 1.
    let canonical_request = format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        request.method,
        request.path,
        canonical_query(request.query),
        canonical_headers,
        signed_headers,
        hex_sha256(request.body)
    );
    // Step 2.
    let credential_scope = format!("{date}/{}/{}/aws4_request", scope.region, scope.service);
    let string_to_sign = format!(
        "{ALGORITHM}\n{amz_date}\n{credential_scope}\n{}",
        hex_sha256(canonical_request.as_bytes())
    );
    // Steps 3 and 4.
    let key = signing_key(
        &credentials.secret_access_key,
        date,
        scope.region,
        scope.service,
    );
    let signature = hex::encode(hmac_sha256(key.as_ref(), string_to_sign.as_bytes()));
    let authorization = format!(
        "{ALGORITHM} Credential={}/{credential_scope}, SignedHeaders={signed_headers}, \
         Signature={signature}",
        credentials.access_key_id
    );
    Ok(Signed {
        amz_date,
        canonical_request,
        string_to_sign,
        signature,
        authorization,
    })
}

/// Refuses header names and values that cannot be sent (empty or non-token names, CR, LF, NUL).
fn check_headers(headers: &[(&str, &str)]) -> Result<()> {
    for (name, value) in headers {
        if name.is_empty()
            || !name.bytes().all(|b| b.is_ascii_graphic() && b != b':')
            || value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0)
        {
            return Err(KmsError::AwsConfig {
                reason: format!("header {name:?} cannot be sent"),
            });
        }
    }
    Ok(())
}

/// The request's own `x-amz-date`, else `time` as `YYYYMMDDTHHMMSSZ`.
fn request_date(headers: &[(&str, &str)], time: SystemTime) -> Result<String> {
    match headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("x-amz-date"))
    {
        Some((_, value)) => Ok(value.trim().to_owned()),
        None => amz_date(time),
    }
}

/// The headers signed: the request's (names lowercased, values canonical), `x-amz-date` and the
/// session token added unless present, sorted by name (stably: repeated headers keep their order,
/// as the test suite requires). A request without `host` is refused.
fn headers_to_sign(
    request: &[(&str, &str)],
    amz_date: &str,
    credentials: &Credentials,
) -> Result<Vec<(String, String)>> {
    let mut headers: Vec<(String, String)> = request
        .iter()
        .map(|(n, v)| (n.to_ascii_lowercase(), canonical_value(v)))
        .collect();
    if !headers.iter().any(|(n, _)| n == "x-amz-date") {
        headers.push(("x-amz-date".to_owned(), amz_date.to_owned()));
    }
    if let Some(token) = &credentials.session_token
        && !headers.iter().any(|(n, _)| n == "x-amz-security-token")
    {
        headers.push(("x-amz-security-token".to_owned(), token.clone()));
    }
    if !headers.iter().any(|(n, _)| n == "host") {
        return Err(KmsError::AwsConfig {
            reason: "a signed request needs a host header".to_owned(),
        });
    }
    headers.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(headers)
}

/// The canonical headers (`name:value\n`, repeated names joined by commas) and the signed header
/// names (`a;b;c`) of sorted `headers`.
fn canonical_headers(headers: Vec<(String, String)>) -> (String, String) {
    let mut canonical = String::new();
    let mut names: Vec<String> = Vec::new();
    for (name, value) in headers {
        if names.last() == Some(&name) {
            canonical.pop(); // the previous value's newline
            canonical.push(',');
        } else {
            canonical.push_str(&name);
            canonical.push(':');
            names.push(name);
        }
        canonical.push_str(&value);
        canonical.push('\n');
    }
    (canonical, names.join(";"))
}

impl Signed {
    /// The headers to send besides the request's own: `X-Amz-Date`, `X-Amz-Security-Token` (with
    /// temporary credentials) and `Authorization`.
    pub fn extra_headers(&self, credentials: &Credentials) -> Vec<(&'static str, String)> {
        let mut out = vec![("X-Amz-Date", self.amz_date.clone())];
        if let Some(token) = &credentials.session_token {
            out.push(("X-Amz-Security-Token", token.clone()));
        }
        out.push(("Authorization", self.authorization.clone()));
        out
    }
}

/// The head of a signed `POST /` (no query), the form AWS's JSON APIs (KMS) and query APIs (IAM,
/// STS) take: the request line, then `headers` and the signature's [`Signed::extra_headers`], one
/// CRLF-ended line each. The caller adds the rest (`Content-Length`, …), the blank line and `body`.
pub fn post_head(
    headers: &[(&str, &str)],
    body: &[u8],
    credentials: &Credentials,
    scope: &Scope<'_>,
) -> Result<String> {
    let request = Request {
        method: "POST",
        path: "/",
        query: &[],
        headers,
        body,
    };
    let signed = sign(&request, credentials, scope)?;
    let mut head = String::with_capacity(1024);
    head.push_str("POST / HTTP/1.1\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    for (name, value) in signed.extra_headers(credentials) {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    Ok(head)
}

/// The SigV4 signing key: `HMAC("AWS4" + secret, date)`, then region, service, `aws4_request`.
pub fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> Zeroizing<[u8; 32]> {
    let mut seed = Zeroizing::new(Vec::with_capacity(4 + secret.len()));
    seed.extend_from_slice(b"AWS4");
    seed.extend_from_slice(secret.as_bytes());
    let mut key = Zeroizing::new(hmac_sha256(&seed, date.as_bytes()));
    for part in [region, service, "aws4_request"] {
        key = Zeroizing::new(hmac_sha256(key.as_ref(), part.as_bytes()));
    }
    key
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    let tag = hmac::sign(&key, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

/// Lower-case hex SHA-256.
pub fn hex_sha256(data: &[u8]) -> String {
    hex::encode(digest::digest(&digest::SHA256, data))
}

/// Trims a header value and collapses runs of spaces and tabs into one space.
fn canonical_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for word in value.split([' ', '\t']).filter(|w| !w.is_empty()) {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

/// Query parameters URI-encoded (RFC 3986 unreserved characters kept) and sorted by name, then
/// value.
fn canonical_query(query: &[(&str, &str)]) -> String {
    let mut pairs: Vec<(String, String)> = query
        .iter()
        .map(|(k, v)| (uri_encode(k), uri_encode(v)))
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// Percent-encodes everything but `A-Z a-z 0-9 - _ . ~`, upper-case hex.
pub fn uri_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `YYYYMMDDTHHMMSSZ` in UTC.
pub fn amz_date(time: SystemTime) -> Result<String> {
    let secs = time
        .duration_since(UNIX_EPOCH)
        .map_err(|_| KmsError::AwsConfig {
            reason: "the clock is before 1970".to_owned(),
        })?
        .as_secs();
    let days = i64::try_from(secs / 86_400).map_err(|_| KmsError::AwsConfig {
        reason: "the clock is out of range".to_owned(),
    })?;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    Ok(format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    ))
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    // d in 1..=31 and m in 1..=12 by construction.
    (
        y,
        u32::try_from(m).unwrap_or(1),
        u32::try_from(d).unwrap_or(1),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use std::time::Duration;

    use super::*;

    #[test]
    fn dates() {
        let t = |s| amz_date(UNIX_EPOCH + Duration::from_secs(s)).unwrap();
        assert_eq!(t(0), "19700101T000000Z");
        assert_eq!(t(1_440_938_160), "20150830T123600Z");
        assert_eq!(t(951_782_400), "20000229T000000Z");
        assert_eq!(t(4_102_444_799), "20991231T235959Z");
    }

    #[test]
    fn header_values_are_trimmed_and_collapsed() {
        assert_eq!(canonical_value("  a   b\t c  "), "a b c");
        assert_eq!(canonical_value("\"a   b   c\""), "\"a b c\"");
    }

    #[test]
    fn credentials_never_print_their_secrets() {
        let c = Credentials::new("AKID", "SECRET", Some("TOKEN".into()));
        let s = format!("{c:?}");
        assert!(
            s.contains("AKID") && !s.contains("SECRET") && !s.contains("TOKEN"),
            "{s}"
        );
    }

    #[test]
    fn header_injection_is_refused() {
        let creds = Credentials::new("AKID", "SECRET", None);
        let scope = Scope {
            region: "us-east-1",
            service: "kms",
            time: UNIX_EPOCH,
        };
        let headers = [("host", "a\r\nX-Evil: 1")];
        let req = Request {
            method: "POST",
            path: "/",
            query: &[],
            headers: &headers,
            body: b"",
        };
        assert!(sign(&req, &creds, &scope).is_err());
    }
}
