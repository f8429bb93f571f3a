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
use std::time::{Duration, SystemTime};

use super::client::CredentialsSource;
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
    use std::time::UNIX_EPOCH;

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
