//! Credentials that expire: fetched on demand (in the enclave, from the parent over the store
//! channel), cached, and fetched again before they expire.
//!
//! An instance role's credentials last a few hours and are replaced by the instance metadata
//! service well before they expire. [`RefreshingCredentials`] asks its [`FetchCredentials`] again
//! when the cached ones are within [`REFRESH_MARGIN`] of their expiration, or older than
//! [`MAX_CACHE_AGE`] (credentials without an expiration, e.g. long-term keys in local mode, are
//! still re-asked, so a rotation reaches the enclave). When KMS refuses a request as signed with
//! unknown, expired or wrong credentials, the client calls [`CredentialsSource::invalidate`] and
//! retries once with freshly fetched ones ([`super::client::KmsClient`]).
//!
//! A failed fetch while the cached credentials are still unexpired returns the cached ones: a
//! parent that is briefly unable to reach its metadata service does not stop the enclave.
//!
//! The fetcher is trusted for nothing but availability: credentials grant no plaintext, because the
//! KMS key policy requires the enclave's attestation document (docs/kms.md).

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::client::CredentialsSource;
use super::http::printable;
use super::sigv4::Credentials;
use crate::error::{KmsError, Result};

/// Fetch again when the cached credentials expire within this.
pub const REFRESH_MARGIN: Duration = Duration::from_secs(5 * 60);
/// Fetch again when the cached credentials are older than this, whatever their expiration.
pub const MAX_CACHE_AGE: Duration = Duration::from_secs(15 * 60);

/// Credentials with the time they stop working.
#[derive(Debug, Clone)]
pub struct ExpiringCredentials {
    /// The credentials (secret fields zeroized on drop, redacted in `Debug`).
    pub credentials: Credentials,
    /// When they expire; `None` for long-term keys.
    pub expiration: Option<SystemTime>,
}

impl ExpiringCredentials {
    /// Parses the JSON document the EC2 instance metadata service serves for a role
    /// (`/latest/meta-data/iam/security-credentials/ROLE`, also `aws configure
    /// export-credentials`'s): `AccessKeyId`, `SecretAccessKey`, `Token` or `SessionToken`,
    /// `Expiration` (RFC 3339), and `Code`, which must be `Success` when present. The one parser
    /// of that document: the parent's IMDS and file sources and the enclave's credentials file.
    pub fn from_json(json: &[u8]) -> Result<Self> {
        #[derive(serde::Deserialize)]
        struct Doc {
            #[serde(rename = "Code")]
            code: Option<String>,
            #[serde(rename = "AccessKeyId")]
            access_key_id: String,
            #[serde(rename = "SecretAccessKey")]
            secret_access_key: String,
            #[serde(rename = "Token", alias = "SessionToken", default)]
            token: Option<String>,
            #[serde(rename = "Expiration", default)]
            expiration: Option<String>,
        }
        let doc: Doc = serde_json::from_slice(json).map_err(|e| {
            refused(format!(
                // serde_json's message names the line and column, never the value.
                "not a credentials document (AccessKeyId, SecretAccessKey, Token, Expiration): {e}"
            ))
        })?;
        let credentials = Credentials::new(
            doc.access_key_id,
            doc.secret_access_key,
            doc.token.filter(|t| !t.is_empty()),
        );
        if let Some(code) = doc.code.filter(|c| c != "Success") {
            return Err(refused(format!(
                "the metadata service answered Code {:?}",
                printable(&code, 64)
            )));
        }
        let expiration = expiration(doc.expiration.as_deref(), "Expiration")?;
        credentials.check()?;
        Ok(Self {
            credentials,
            expiration,
        })
    }

    /// From `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
    /// `AWS_CREDENTIAL_EXPIRATION` (RFC 3339) as `var` returns them.
    pub fn from_env_with(var: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let required = |name: &str| var(name).ok_or_else(|| refused(format!("{name} is not set")));
        let credentials = Credentials::new(
            required("AWS_ACCESS_KEY_ID")?,
            required("AWS_SECRET_ACCESS_KEY")?,
            var("AWS_SESSION_TOKEN").filter(|t| !t.is_empty()),
        );
        let text = var("AWS_CREDENTIAL_EXPIRATION");
        let expiration = expiration(text.as_deref(), "AWS_CREDENTIAL_EXPIRATION")?;
        credentials.check()?;
        Ok(Self {
            credentials,
            expiration,
        })
    }

    /// The expiration in seconds since the Unix epoch (the store channel's unit).
    pub fn expiration_unix(&self) -> Option<u64> {
        self.expiration
            .map(|e| e.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs())
    }
}

/// An optional RFC 3339 expiration named `what` in errors; empty is none.
fn expiration(text: Option<&str>, what: &str) -> Result<Option<SystemTime>> {
    let Some(text) = text.filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    rfc3339_to_unix(text)
        .and_then(|secs| UNIX_EPOCH.checked_add(Duration::from_secs(secs)))
        .map(Some)
        .ok_or_else(|| {
            refused(format!(
                "{what} {:?} is not an RFC 3339 time",
                printable(text, 64)
            ))
        })
}

fn refused(reason: String) -> KmsError {
    KmsError::AwsCredentials { reason }
}

/// Seconds since the Unix epoch of an RFC 3339 time (`2024-05-01T12:34:56Z`, fractions and
/// `±HH:MM` offsets accepted; RFC 3339 §5.6); `None` if it is not one, or before 1970.
pub fn rfc3339_to_unix(text: &str) -> Option<u64> {
    let b = text.as_bytes();
    let sep = |i: usize, c: &[u8]| b.get(i).is_some_and(|x| c.contains(x));
    if !(sep(4, b"-") && sep(7, b"-") && sep(10, b"Tt ") && sep(13, b":") && sep(16, b":")) {
        return None;
    }
    let (year, month, day) = (digits(b, 0..4)?, digits(b, 5..7)?, digits(b, 8..10)?);
    let (hour, minute, second) = (digits(b, 11..13)?, digits(b, 14..16)?, digits(b, 17..19)?);
    if !(1..=12).contains(&month)
        || !(1..=days_in_month(year, month)).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let offset = utc_offset_minutes(b, skip_fraction(b, 19)?)?;
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset * 60;
    u64::try_from(seconds).ok()
}

/// The decimal number in `b[range]`, ASCII digits only.
fn digits(b: &[u8], range: std::ops::Range<usize>) -> Option<i64> {
    let digits = b.get(range)?;
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// The index after an optional `.DIGITS` at `i` (at least one digit).
fn skip_fraction(b: &[u8], mut i: usize) -> Option<usize> {
    if b.get(i) != Some(&b'.') {
        return Some(i);
    }
    i += 1;
    let start = i;
    while b.get(i).is_some_and(u8::is_ascii_digit) {
        i += 1;
    }
    (i > start).then_some(i)
}

/// `Z` or `±HH:MM` from `i` to the end, in minutes east of UTC.
fn utc_offset_minutes(b: &[u8], i: usize) -> Option<i64> {
    match b.get(i..)? {
        b"Z" | b"z" => Some(0),
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let (h, m) = (digits(b, i + 1..i + 3)?, digits(b, i + 4..i + 6)?);
            if h > 23 || m > 59 {
                return None;
            }
            let minutes = h * 60 + m;
            Some(if *sign == b'+' { minutes } else { -minutes })
        }
        _ => None,
    }
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Where [`RefreshingCredentials`] gets credentials from.
pub trait FetchCredentials: Send + Sync {
    /// Fresh credentials.
    fn fetch(&self) -> Result<ExpiringCredentials>;
}

impl<F> FetchCredentials for F
where
    F: Fn() -> Result<ExpiringCredentials> + Send + Sync,
{
    fn fetch(&self) -> Result<ExpiringCredentials> {
        self()
    }
}

struct Cached {
    credentials: ExpiringCredentials,
    fetched: SystemTime,
}

/// A cached [`CredentialsSource`] over a [`FetchCredentials`] (module docs). `Send + Sync`; one
/// fetch at a time.
pub struct RefreshingCredentials {
    fetch: Box<dyn FetchCredentials>,
    cache: Mutex<Option<Cached>>,
    clock: fn() -> SystemTime,
}

impl std::fmt::Debug for RefreshingCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RefreshingCredentials")
            .finish_non_exhaustive()
    }
}

impl RefreshingCredentials {
    /// Credentials from `fetch`, cached.
    pub fn new(fetch: Box<dyn FetchCredentials>) -> Self {
        Self {
            fetch,
            cache: Mutex::new(None),
            clock: SystemTime::now,
        }
    }

    /// Replaces the clock (tests).
    pub fn with_clock(mut self, clock: fn() -> SystemTime) -> Self {
        self.clock = clock;
        self
    }
}

/// Usable without fetching again at `now`.
fn fresh(cached: &Cached, now: SystemTime) -> bool {
    let young = now
        .duration_since(cached.fetched)
        .is_ok_and(|age| age < MAX_CACHE_AGE);
    let lasting = cached
        .credentials
        .expiration
        .is_none_or(|expiration| now + REFRESH_MARGIN < expiration);
    young && lasting
}

/// Not yet expired at `now`.
fn unexpired(credentials: &ExpiringCredentials, now: SystemTime) -> bool {
    credentials.expiration.is_none_or(|e| now < e)
}

impl CredentialsSource for RefreshingCredentials {
    fn credentials(&self) -> Result<Credentials> {
        let now = (self.clock)();
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(cached) = cache.as_ref()
            && fresh(cached, now)
        {
            return Ok(cached.credentials.credentials.clone());
        }
        let fetched = match self.fetch.fetch() {
            Ok(fetched) => fetched,
            Err(e) => {
                // Keep going on the old ones while they last.
                return match cache.as_ref() {
                    Some(cached) if unexpired(&cached.credentials, now) => {
                        Ok(cached.credentials.credentials.clone())
                    }
                    _ => Err(e),
                };
            }
        };
        fetched.credentials.check()?;
        if !unexpired(&fetched, now) {
            return Err(KmsError::AwsCredentials {
                reason: format!(
                    "the credentials handed over expired {} s ago",
                    fetched
                        .expiration
                        .and_then(|e| now.duration_since(e).ok())
                        .unwrap_or_default()
                        .as_secs()
                ),
            });
        }
        let credentials = fetched.credentials.clone();
        *cache = Some(Cached {
            credentials: fetched,
            fetched: now,
        });
        Ok(credentials)
    }

    fn invalidate(&self) -> bool {
        *self.cache.lock().unwrap_or_else(PoisonError::into_inner) = None;
        true
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

    use super::*;

    static NOW: AtomicU64 = AtomicU64::new(1_000_000);

    fn clock() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(NOW.load(Ordering::SeqCst))
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    /// A fetcher handing out `AKID<n>` expiring at `expires(n)`, or failing while `fail` is set.
    fn source(
        expires: fn(usize) -> Option<SystemTime>,
    ) -> (RefreshingCredentials, Arc<AtomicUsize>, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let fail = Arc::new(AtomicUsize::new(0));
        let (c, f) = (Arc::clone(&calls), Arc::clone(&fail));
        let fetch = move || {
            let n = c.fetch_add(1, Ordering::SeqCst);
            if f.load(Ordering::SeqCst) != 0 {
                return Err(KmsError::AwsCredentials {
                    reason: "parent unreachable".into(),
                });
            }
            Ok(ExpiringCredentials {
                credentials: Credentials::new(format!("AKID{n}"), "secret", Some("token".into())),
                expiration: expires(n),
            })
        };
        (
            RefreshingCredentials::new(Box::new(fetch)).with_clock(clock),
            calls,
            fail,
        )
    }

    #[test]
    fn documents_and_environments_parse_into_one_type() {
        let e = ExpiringCredentials::from_json(
            br#"{"Code":"Success","AccessKeyId":"ASIA","SecretAccessKey":"s3cret","Token":"t0k",
                "Expiration":"2024-05-01T18:00:00+02:00"}"#,
        )
        .unwrap();
        assert_eq!(e.expiration_unix(), Some(1_714_579_200));
        assert_eq!(e.credentials.session_token.as_deref(), Some("t0k"));
        let shown = format!("{e:?}");
        assert!(
            !shown.contains("s3cret") && !shown.contains("t0k"),
            "{shown}"
        );
        for bad in [
            &br#"{"Code":"Failed","AccessKeyId":"A","SecretAccessKey":"s"}"#[..],
            br#"{"AccessKeyId":"A","SecretAccessKey":"s","Expiration":"soon"}"#,
            br#"{"AccessKeyId":"A","SecretAccessKey":"s s"}"#,
            b"[]",
        ] {
            let e = ExpiringCredentials::from_json(bad).unwrap_err();
            assert!(matches!(&e, KmsError::AwsCredentials { .. }), "{e:?}");
            assert!(!e.to_string().contains("s s"), "{e}");
        }
        let env = |name: &str| match name {
            "AWS_ACCESS_KEY_ID" => Some("AKIA".to_owned()),
            "AWS_SECRET_ACCESS_KEY" => Some("s".to_owned()),
            "AWS_CREDENTIAL_EXPIRATION" => Some("1970-01-01T00:01:00Z".to_owned()),
            _ => None,
        };
        let e = ExpiringCredentials::from_env_with(env).unwrap();
        assert_eq!(
            (e.expiration_unix(), e.credentials.session_token.as_deref()),
            (Some(60), None)
        );
        let e = ExpiringCredentials::from_env_with(|_| None).unwrap_err();
        assert!(e.to_string().contains("AWS_ACCESS_KEY_ID"), "{e}");
    }

    // One test: the clock is a process-wide static.
    #[test]
    fn credentials_are_cached_refreshed_before_expiry_and_refetched_when_refused() {
        NOW.store(1_000_000, Ordering::SeqCst);
        let (creds, calls, fail) = source(|_| Some(at(1_000_000 + 3600)));
        assert_eq!(creds.credentials().unwrap().access_key_id, "AKID0");
        assert_eq!(creds.credentials().unwrap().access_key_id, "AKID0");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // Older than the cache age: fetched again.
        NOW.store(1_000_000 + MAX_CACHE_AGE.as_secs() + 1, Ordering::SeqCst);
        assert_eq!(creds.credentials().unwrap().access_key_id, "AKID1");
        // Within the margin of the expiration: fetched again.
        NOW.store(1_000_000 + 3600 - 60, Ordering::SeqCst);
        assert_eq!(creds.credentials().unwrap().access_key_id, "AKID2");
        // Refused by KMS: invalidated, fetched again.
        assert!(creds.invalidate());
        assert_eq!(creds.credentials().unwrap().access_key_id, "AKID3");

        // The parent cannot be reached: the cached ones while they last, then the error.
        let (creds, _, fail2) = source(|_| Some(at(1_000_000 + 3600)));
        NOW.store(1_000_000, Ordering::SeqCst);
        assert_eq!(creds.credentials().unwrap().access_key_id, "AKID0");
        fail2.store(1, Ordering::SeqCst);
        NOW.store(1_000_000 + 3600 - 60, Ordering::SeqCst);
        assert_eq!(creds.credentials().unwrap().access_key_id, "AKID0");
        NOW.store(1_000_000 + 3600, Ordering::SeqCst);
        assert!(matches!(
            creds.credentials(),
            Err(KmsError::AwsCredentials { .. })
        ));
        let _ = fail;

        // Handed over already expired: refused, not used.
        let (creds, _, _) = source(|_| Some(at(10)));
        let e = creds.credentials().unwrap_err().to_string();
        assert!(e.contains("expired"), "{e}");

        // Long-term keys: re-asked after the cache age only.
        let (creds, calls, _) = source(|_| None);
        NOW.store(2_000_000, Ordering::SeqCst);
        creds.credentials().unwrap();
        NOW.store(2_000_000 + MAX_CACHE_AGE.as_secs() - 1, Ordering::SeqCst);
        creds.credentials().unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        // Nothing secret in Debug.
        let shown = format!("{:?}", creds.credentials().unwrap());
        assert!(
            !shown.contains("\"secret\"") && !shown.contains("\"token\""),
            "{shown}"
        );
    }
}
