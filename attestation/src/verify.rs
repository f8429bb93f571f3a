//! The one verifier, for documents from the NSM and from the local attester alike.
//!
//! Checks run in a fixed order and the first failure is reported (see
//! [`crate::AttestationError::check`]):
//! 1. structure: size cap, COSE_Sign1 shape, payload fields and AWS's limits;
//! 2. digest: `SHA384`;
//! 3. signature: ES384 over the COSE `Sig_structure` by the leaf certificate's key;
//! 4. chain: leaf → `cabundle[1..]` → pinned root, at the validation time (`cabundle[0]`, the
//!    document's own claim of a root, is ignored: trusting it would let anyone self-sign);
//! 5. timestamp: not after the validation time, and within the maximum age;
//! 6. debug: PCR0, PCR1 and PCR2 all zero is refused unless allowed;
//! 7. expectations: PCRs, nonce, user_data, public_key.
//!
//! This follows AWS's "Verifying the root of trust" (Nitro Enclaves User Guide), with the time
//! and the root supplied by the caller so archived and local documents verify with the same code.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use aws_lc_rs::signature::{ECDSA_P384_SHA384_FIXED, UnparsedPublicKey};

use crate::chain::{PinnedRoot, leaf_p384_key, unix_millis, verify_chain};
use crate::cose::CoseSign1;
use crate::document::{AttestationDoc, DIGEST_SHA384, MAX_DOCUMENT_SIZE};
use crate::error::{AttestationError, Result};

/// What the caller requires of a document beyond its authenticity.
#[derive(Clone, Default, PartialEq, Eq)]
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
}

impl std::fmt::Debug for Expectations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let h = |v: &Option<Vec<u8>>| v.as_ref().map(hex::encode);
        f.debug_struct("Expectations")
            .field(
                "pcrs",
                &self
                    .pcrs
                    .iter()
                    .map(|(i, v)| (*i, hex::encode(v)))
                    .collect::<BTreeMap<_, _>>(),
            )
            .field("nonce", &h(&self.nonce))
            .field("user_data", &h(&self.user_data))
            .field("public_key", &h(&self.public_key))
            .field("max_age", &self.max_age)
            .field("allow_debug", &self.allow_debug)
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
    if document.len() > MAX_DOCUMENT_SIZE {
        return Err(AttestationError::TooLarge {
            max: MAX_DOCUMENT_SIZE,
            actual: document.len(),
        });
    }
    let cose = CoseSign1::decode(document)?;
    let doc = AttestationDoc::decode(&cose.payload)?;
    Ok((cose, doc))
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
    if doc.digest != DIGEST_SHA384 {
        return Err(AttestationError::Digest {
            actual: doc.digest.clone(),
        });
    }
    // 3. signature (RFC 9052 §4.4), by the key of the leaf certificate
    let leaf_key = leaf_p384_key(&doc.certificate)?;
    UnparsedPublicKey::new(&ECDSA_P384_SHA384_FIXED, &leaf_key)
        .verify(&cose.to_be_signed()?, &cose.signature)
        .map_err(|_| AttestationError::Signature {
            reason: "signature does not match the document".into(),
        })?;
    // 4. chain, ignoring cabundle[0]
    verify_chain(
        &doc.certificate,
        doc.cabundle.get(1..).unwrap_or_default(),
        root,
        at,
    )?;
    // 5. timestamp
    let validation_ms = unix_millis(at);
    if doc.timestamp > validation_ms {
        return Err(AttestationError::FromTheFuture {
            timestamp_ms: doc.timestamp,
            validation_ms,
        });
    }
    if let Some(max_age) = expect.max_age {
        let age_ms = validation_ms - doc.timestamp;
        let max_age_ms = u64::try_from(max_age.as_millis()).unwrap_or(u64::MAX);
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
