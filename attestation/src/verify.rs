//! The one verifier, for documents from the NSM and from the local attester alike.
//!
//! Checks run in a fixed order and the first failure is reported (see
//! [`crate::AttestationError::check`]):
//! 1. structure: size cap, COSE_Sign1 shape, payload fields and AWS's limits;
//! 2. digest: `SHA384`;
//! 3. signature: ES384 over the COSE `Sig_structure` by the leaf certificate's key;
//! 4. chain: leaf → `cabundle[1..]` → pinned root, at the validation time (`cabundle[0]`, the
//!    document's own claim of a root, is ignored: trusting it would let anyone self-sign);
//! 5. timestamp: not after the validation time by more than the allowed clock skew, and within
//!    the maximum age;
//! 6. debug: PCR0, PCR1 and PCR2 all zero is refused unless allowed;
//! 7. expectations: PCRs, nonce, user_data, public_key.
//!
//! This follows AWS's "Verifying the root of trust" (Nitro Enclaves User Guide), with the time
//! and the root supplied by the caller so archived and local documents verify with the same code.
//!
//! [`crate::verify_emulated_unsigned`] (QEMU's unsigned emulated NSM, testing only) replaces
//! checks 3 and 4 with a comparison against QEMU's exact placeholders and shares every other.
//!
//! # Clock skew
//!
//! The NSM dates a document by the enclave host's clock; the verifier (a phone) compares it with
//! its own. Clocks disagree, so a document dated up to [`Expectations::max_clock_skew`] after the
//! validation time is accepted, and its chain is then checked at the document's own time (the NSM
//! issues the leaf moments before the document, so at a verifier time a few seconds earlier the
//! leaf would be "not yet valid"). Freshness does not rest on the timestamp: the verifier's nonce
//! proves it. The skew only ever applies forwards: a document's age is still measured from the
//! validation time, so `max_age` is never lengthened by it.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::signature::{ECDSA_P384_SHA384_FIXED, UnparsedPublicKey};

use crate::chain::{PinnedRoot, leaf_p384_key, unix_millis, verify_chain};
use crate::cose::CoseSign1;
use crate::document::{AttestationDoc, DIGEST_SHA384, MAX_DOCUMENT_SIZE, debug_bound, hex_pcrs};
use crate::error::{AttestationError, Result};

/// The default for [`Expectations::max_clock_skew`]: five minutes, what Kerberos has long allowed
/// between clocks (RFC 4120 §1.6) and far more than an NTP-synchronised phone is ever off.
pub const DEFAULT_MAX_CLOCK_SKEW: Duration = Duration::from_secs(300);

/// What the caller requires of a document beyond its authenticity.
///
/// [`Default`] expects nothing, allows no debug document and a [`DEFAULT_MAX_CLOCK_SKEW`].
#[derive(Clone, PartialEq, Eq)]
pub struct Expectations {
    /// PCR values that must be present and equal, by index.
    pub pcrs: BTreeMap<u8, Vec<u8>>,
    /// The nonce the document must carry.
    pub nonce: Option<Vec<u8>>,
    /// The user data the document must carry.
    pub user_data: Option<Vec<u8>>,
    /// The public key the document must carry.
    pub public_key: Option<Vec<u8>>,
    /// The oldest a document may be at the validation time; `None` for no limit.
    pub max_age: Option<Duration>,
    /// Accept debug-mode documents (PCR0..2 all zero). Never in production.
    pub allow_debug: bool,
    /// How far after the validation time a document may be dated (the attester's clock may be
    /// ahead of the verifier's). `Duration::ZERO` refuses any document from the future.
    pub max_clock_skew: Duration,
}

impl Default for Expectations {
    fn default() -> Self {
        Self {
            pcrs: BTreeMap::new(),
            nonce: None,
            user_data: None,
            public_key: None,
            max_age: None,
            allow_debug: false,
            max_clock_skew: DEFAULT_MAX_CLOCK_SKEW,
        }
    }
}

impl std::fmt::Debug for Expectations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("Expectations");
        d.field("pcrs", &hex_pcrs(&self.pcrs));
        debug_bound(&mut d, &self.nonce, &self.user_data, &self.public_key);
        d.field("max_age", &self.max_age)
            .field("allow_debug", &self.allow_debug)
            .field("max_clock_skew", &self.max_clock_skew)
            .finish()
    }
}

/// A document that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedDoc {
    /// The document's payload.
    pub doc: AttestationDoc,
    /// Whether it came from a debug-mode enclave (only possible with `allow_debug`).
    pub debug: bool,
}

/// Decodes a document without verifying anything: for display (`inspect`) and for fuzzing.
///
/// The result is UNVERIFIED: anyone can write such a document.
pub fn parse_unverified(document: &[u8]) -> Result<(CoseSign1, AttestationDoc)> {
    check_size(document)?;
    let cose = CoseSign1::decode(document)?;
    let doc = AttestationDoc::decode(&cose.payload)?;
    Ok((cose, doc))
}

/// The size cap, before any decoding.
pub(crate) fn check_size(document: &[u8]) -> Result<()> {
    if document.len() > MAX_DOCUMENT_SIZE {
        return Err(AttestationError::TooLarge {
            max: MAX_DOCUMENT_SIZE,
            actual: document.len(),
        });
    }
    Ok(())
}

/// Verifies `document` under the pinned `root` as of `at`, then checks `expect`.
pub fn verify(
    document: &[u8],
    root: &PinnedRoot,
    at: SystemTime,
    expect: &Expectations,
) -> Result<VerifiedDoc> {
    // 1. structure
    let (cose, doc) = parse_unverified(document)?;
    // 2. digest
    check_digest(&doc)?;
    // 3. signature (RFC 9052 §4.4), by the key of the leaf certificate
    let leaf_key = leaf_p384_key(&doc.certificate)?;
    UnparsedPublicKey::new(&ECDSA_P384_SHA384_FIXED, &leaf_key)
        .verify(&cose.to_be_signed()?, &cose.signature)
        .map_err(|_| AttestationError::Signature {
            reason: "signature does not match the document".into(),
        })?;
    // 4. chain, ignoring cabundle[0], at the document's time if it is ahead within the skew
    verify_chain(
        &doc.certificate,
        doc.cabundle.get(1..).unwrap_or_default(),
        root,
        chain_time(at, doc.timestamp, expect.max_clock_skew),
    )?;
    // 5. to 7.
    check_claims(doc, at, expect)
}

/// Check 2: the digest is the NSM's.
pub(crate) fn check_digest(doc: &AttestationDoc) -> Result<()> {
    if doc.digest != DIGEST_SHA384 {
        return Err(AttestationError::Digest {
            actual: doc.digest.clone(),
        });
    }
    Ok(())
}

/// Checks 5 to 7, what the document claims once it is known who wrote it: its time, debug mode,
/// and the caller's expectations. Shared by [`verify`] and
/// [`crate::verify_emulated_unsigned`], so both judge a document's claims alike.
pub(crate) fn check_claims(
    doc: AttestationDoc,
    at: SystemTime,
    expect: &Expectations,
) -> Result<VerifiedDoc> {
    // 5. timestamp
    let validation_ms = unix_millis(at);
    let max_clock_skew_ms = millis(expect.max_clock_skew);
    if doc.timestamp > validation_ms.saturating_add(max_clock_skew_ms) {
        return Err(AttestationError::FromTheFuture {
            timestamp_ms: doc.timestamp,
            validation_ms,
            max_clock_skew_ms,
        });
    }
    if let Some(max_age) = expect.max_age {
        // A document dated ahead (within the skew) is of age 0: the skew never adds to max_age.
        let age_ms = validation_ms.saturating_sub(doc.timestamp);
        let max_age_ms = millis(max_age);
        if age_ms > max_age_ms {
            return Err(AttestationError::TooOld { age_ms, max_age_ms });
        }
    }
    // 6. debug mode
    let debug = doc.is_debug_mode();
    if debug && !expect.allow_debug {
        return Err(AttestationError::DebugMode);
    }
    // 7. expectations
    for (index, expected) in &expect.pcrs {
        let actual = doc.pcrs.get(index);
        if actual != Some(expected) {
            return Err(AttestationError::Pcr {
                index: *index,
                expected: hex::encode(expected),
                actual: actual.map_or_else(|| "absent".into(), hex::encode),
            });
        }
    }
    for (field, expected, actual) in [
        ("nonce", &expect.nonce, &doc.nonce),
        ("user_data", &expect.user_data, &doc.user_data),
        ("public_key", &expect.public_key, &doc.public_key),
    ] {
        if let Some(expected) = expected
            && actual.as_ref() != Some(expected)
        {
            return Err(AttestationError::Mismatch {
                field,
                expected: hex::encode(expected),
                actual: actual.as_ref().map_or_else(|| "absent".into(), hex::encode),
            });
        }
    }
    Ok(VerifiedDoc { doc, debug })
}

/// Milliseconds of a duration, saturating.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// When the chain is checked: the document's time clamped to `[at, at + max_skew]`.
///
/// Never before `at`, so a certificate that expired by the validation time is refused as before
/// (a later time only makes expiry stricter); never after `at + max_skew`, so a forged timestamp
/// cannot move the check further than the skew allows. A document older than `at` — the usual
/// case — is checked at `at`.
fn chain_time(at: SystemTime, timestamp_ms: u64, max_skew: Duration) -> SystemTime {
    let doc_time = UNIX_EPOCH.checked_add(Duration::from_millis(timestamp_ms));
    let latest = at.checked_add(max_skew).unwrap_or(at);
    match doc_time {
        Some(t) if t > at => t.min(latest),
        _ => at,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn chain_time_is_the_document_time_clamped_to_the_skew() {
        let at_ms = 1_700_000_000_000;
        let at = UNIX_EPOCH + Duration::from_millis(at_ms);
        let skew = Duration::from_secs(300);
        // In the past: the validation time.
        assert_eq!(chain_time(at, at_ms - 5_000, skew), at);
        assert_eq!(chain_time(at, at_ms, skew), at);
        // Ahead within the skew: the document's time.
        assert_eq!(
            chain_time(at, at_ms + 1_000, skew),
            at + Duration::from_secs(1)
        );
        // Ahead beyond it: no later than at + skew.
        assert_eq!(chain_time(at, at_ms + 600_000, skew), at + skew);
        // No skew: always the validation time.
        assert_eq!(chain_time(at, at_ms + 1, Duration::ZERO), at);
        // Absurd values saturate instead of panicking.
        assert_eq!(chain_time(at, u64::MAX, Duration::MAX), at);
    }
}
