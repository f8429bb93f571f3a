//! QEMU's emulated Nitro Secure Module: its UNSIGNED documents, for testing the real enclave
//! image on a machine without Nitro. TESTING ONLY.
//!
//! QEMU 10.0's `nitro-enclave` machine boots an EIF and emulates the NSM as a virtio device
//! (hw/virtio/virtio-nsm.c, QEMU 10.0). Its attestation documents have the NSM's format
//! (`handle_attestation`) but nothing in them is signed:
//! * the COSE_Sign1 (RFC 9052 §4.2) protected header is `{1: -1}`, bytes `a1 01 20` ("we don't
//!   actually sign the data, so we use -1 as the 'alg' value", `add_protected_header_to_cose`);
//!   the unprotected header an empty map;
//! * the signature is 64 zero bytes (`add_signature_to_cose`);
//! * in the payload, `certificate` is 64 zero bytes and `cabundle` one entry of 64 zero bytes
//!   (`add_payload_to_cose`, `add_ca_bundle_to_payload`);
//! * the rest is what a real NSM writes: `module_id` (`i-234-enc5678` unless the machine's `id`
//!   says otherwise), `digest` `SHA384`, `timestamp` (whole seconds, in ms), the 16 PCRs locked at
//!   boot (PCR0, 1 and 2 extended with the EIF's measurements, PCR3, 4 and 8 with the parent role,
//!   parent id and signing certificate when given, the others zero: hw/i386/nitro_enclave.c), and
//!   the `public_key`, `user_data` and `nonce` the enclave asked for.
//!
//! [`verify_emulated_unsigned`] accepts only that exact shape, then runs every other check of
//! [`crate::verify`] with the same code. The two verifiers never overlap: `verify` refuses these
//! documents (alg -1 is not ES384), and this one refuses every signed document (its protected
//! header is `{1: -35}` and its signature 96 bytes).
//!
//! # Security
//!
//! A document that passes here proves NOTHING about the code that answered. It carries no
//! signature, so anyone (the parent instance, a relay, any program) can write one with whatever
//! PCRs, nonce, binding and key it likes; the PCR, nonce and `user_data` checks only catch
//! mistakes, never an attacker. It exists so that the real image can be exercised end to end
//! under QEMU; a client that uses it against a real cosigner has no attestation at all.

use std::time::SystemTime;

use crate::cose::CoseSign1;
use crate::document::AttestationDoc;
use crate::error::{AttestationError, Result};
use crate::verify::{Expectations, VerifiedDoc, check_claims, check_digest, check_size};

/// The protected header QEMU writes, `{1: -1}` (alg -1: unsigned). A libcbor `negint8` of value 0
/// serializes in one byte, `0x20`, so the header is these three bytes exactly.
pub const QEMU_PROTECTED_HEADER: [u8; 3] = [0xa1, 0x01, 0x20];
/// Length of each of QEMU's zero-filled placeholders: the signature, the certificate and the one
/// `cabundle` entry (`uint8_t zero[64]` in hw/virtio/virtio-nsm.c).
pub const QEMU_PLACEHOLDER_LEN: usize = 64;

/// The parts of a document where QEMU writes a placeholder instead of a signature or a
/// certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EmulatedPart {
    /// The COSE protected header (a signed document's names ES384).
    ProtectedHeader,
    /// The COSE signature.
    Signature,
    /// The payload's `certificate` (a signed document's leaf).
    Certificate,
    /// The payload's `cabundle` (a signed document's issuer chain).
    Cabundle,
}

impl EmulatedPart {
    /// What QEMU writes there.
    pub fn expected(self) -> &'static str {
        match self {
            Self::ProtectedHeader => "a10120 ({1: -1}, unsigned)",
            Self::Signature | Self::Certificate => "64 zero bytes",
            Self::Cabundle => "one entry of 64 zero bytes",
        }
    }
}

impl std::fmt::Display for EmulatedPart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::ProtectedHeader => "the protected header",
            Self::Signature => "the signature",
            Self::Certificate => "`certificate`",
            Self::Cabundle => "`cabundle`",
        })
    }
}

/// Bytes for an error message: hex when short, else their length (and whether all zero).
fn describe(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        "empty".into()
    } else if bytes.len() <= 8 {
        hex::encode(bytes)
    } else if bytes.iter().all(|b| *b == 0) {
        format!("{} zero bytes", bytes.len())
    } else {
        format!("{} bytes, not all zero", bytes.len())
    }
}

/// Is `bytes` one of QEMU's placeholders: exactly 64 zero bytes?
fn is_placeholder(bytes: &[u8]) -> bool {
    bytes.len() == QEMU_PLACEHOLDER_LEN && bytes.iter().all(|b| *b == 0)
}

fn not_emulated(part: EmulatedPart, found: String) -> AttestationError {
    AttestationError::NotEmulated { part, found }
}

/// Decodes a document of QEMU's emulated NSM, checking its structure (size cap, COSE_Sign1,
/// payload fields and AWS's limits, as [`crate::parse_unverified`]) and that its protected
/// header, signature, `certificate` and `cabundle` are QEMU's exactly
/// ([`AttestationError::NotEmulated`] otherwise, in that order).
///
/// The result is UNVERIFIED, and can never be anything else: anyone can write such a document.
pub fn parse_emulated_unsigned(document: &[u8]) -> Result<(CoseSign1, AttestationDoc)> {
    check_size(document)?;
    let cose = CoseSign1::decode_structure(document)?;
    if cose.protected != QEMU_PROTECTED_HEADER {
        return Err(not_emulated(
            EmulatedPart::ProtectedHeader,
            describe(&cose.protected),
        ));
    }
    if !is_placeholder(&cose.signature) {
        return Err(not_emulated(
            EmulatedPart::Signature,
            describe(&cose.signature),
        ));
    }
    let doc = AttestationDoc::decode(&cose.payload)?;
    if !is_placeholder(&doc.certificate) {
        return Err(not_emulated(
            EmulatedPart::Certificate,
            describe(&doc.certificate),
        ));
    }
    match doc.cabundle.as_slice() {
        [only] if is_placeholder(only) => {}
        [only] => return Err(not_emulated(EmulatedPart::Cabundle, describe(only))),
        more => {
            return Err(not_emulated(
                EmulatedPart::Cabundle,
                format!("{} entries", more.len()),
            ));
        }
    }
    Ok((cose, doc))
}

/// Decodes a document without verifying anything, whether the NSM's (signed) or QEMU's unsigned
/// shape: for display (`inspect`) and for test tools that only read. The flag is `true` for
/// QEMU's; a document that is neither gets the signed decoder's error
/// ([`crate::parse_unverified`]).
///
/// The result is UNVERIFIED: anyone can write either kind.
pub fn parse_signed_or_emulated(document: &[u8]) -> Result<(CoseSign1, AttestationDoc, bool)> {
    match crate::parse_unverified(document) {
        Ok((cose, doc)) => Ok((cose, doc, false)),
        Err(signed) => parse_emulated_unsigned(document)
            .map(|(cose, doc)| (cose, doc, true))
            .map_err(|_| signed),
    }
}

/// Checks a document of QEMU's emulated NSM as of `at` against `expect`: TESTING ONLY, it proves
/// nothing (see the [module documentation](self)).
///
/// Every check of [`crate::verify`] but the signature and the chain, which QEMU's document does
/// not have, in the same order and by the same code: structure (with QEMU's exact placeholders,
/// [`parse_emulated_unsigned`]), digest `SHA384`, timestamp (clock skew and maximum age), debug
/// mode, then the expected PCRs, nonce, `user_data` and `public_key`. A signed document, real or
/// local, is refused ([`AttestationError::NotEmulated`]).
pub fn verify_emulated_unsigned(
    document: &[u8],
    at: SystemTime,
    expect: &Expectations,
) -> Result<VerifiedDoc> {
    // 1. structure, with QEMU's placeholders where a signed document has its signature and chain
    let (_, doc) = parse_emulated_unsigned(document)?;
    // 2. digest
    check_digest(&doc)?;
    // 3. and 4. (signature, chain): none to check; the placeholders were checked above.
    // 5. to 7.: timestamp, debug mode, expectations
    check_claims(doc, at, expect)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::cose::es384_protected_header;
    use crate::document::DIGEST_SHA384;

    const TIME_MS: u64 = 1_750_000_000_000;

    fn payload() -> AttestationDoc {
        AttestationDoc {
            module_id: "i-234-enc5678".into(),
            digest: DIGEST_SHA384.into(),
            timestamp: TIME_MS,
            pcrs: (0..16u8)
                .map(|i| (i, vec![if i <= 2 { i + 1 } else { 0 }; 48]))
                .collect(),
            certificate: vec![0; 64],
            cabundle: vec![vec![0; 64]],
            public_key: Some(vec![4; 65]),
            user_data: Some(vec![2; 32]),
            nonce: Some(vec![1; 32]),
        }
    }

    fn document(protected: &[u8], doc: &AttestationDoc, signature: &[u8]) -> Vec<u8> {
        CoseSign1 {
            protected: protected.to_vec(),
            payload: doc.encode().unwrap(),
            signature: signature.to_vec(),
        }
        .encode()
        .unwrap()
    }

    fn at() -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(TIME_MS + 1_000)
    }

    fn part_of(result: Result<VerifiedDoc>) -> EmulatedPart {
        match result {
            Err(AttestationError::NotEmulated { part, .. }) => part,
            other => panic!("expected NotEmulated, got {other:?}"),
        }
    }

    #[test]
    fn qemu_shape_passes_and_every_placeholder_is_required() {
        let good = document(&QEMU_PROTECTED_HEADER, &payload(), &[0; 64]);
        let verified = verify_emulated_unsigned(&good, at(), &Expectations::default()).unwrap();
        assert!(!verified.debug);
        assert_eq!(verified.doc, payload());

        let expect = Expectations::default();
        let es384 = es384_protected_header().unwrap();
        for (protected, signature, part) in [
            (&es384[..], &[0u8; 64][..], EmulatedPart::ProtectedHeader),
            (
                &[0xa1, 0x01, 0x38, 0x00][..],
                &[0; 64][..],
                EmulatedPart::ProtectedHeader,
            ),
            (&[0xa0][..], &[0; 64][..], EmulatedPart::ProtectedHeader),
            (
                &QEMU_PROTECTED_HEADER[..],
                &[0; 96][..],
                EmulatedPart::Signature,
            ),
            (
                &QEMU_PROTECTED_HEADER[..],
                &[0; 63][..],
                EmulatedPart::Signature,
            ),
            (
                &QEMU_PROTECTED_HEADER[..],
                &[&[1][..], &[0; 63]].concat(),
                EmulatedPart::Signature,
            ),
        ] {
            let bytes = document(protected, &payload(), signature);
            assert_eq!(
                part_of(verify_emulated_unsigned(&bytes, at(), &expect)),
                part
            );
        }

        type Mutation = fn(&mut AttestationDoc);
        let mutations: [(Mutation, EmulatedPart); 5] = [
            (
                |d| d.certificate = vec![0x30; 64],
                EmulatedPart::Certificate,
            ),
            (|d| d.certificate = vec![0; 65], EmulatedPart::Certificate),
            (|d| d.cabundle = vec![vec![0; 63]], EmulatedPart::Cabundle),
            (|d| d.cabundle[0][63] = 1, EmulatedPart::Cabundle),
            (|d| d.cabundle.push(vec![0; 64]), EmulatedPart::Cabundle),
        ];
        for (mutate, part) in mutations {
            let mut doc = payload();
            mutate(&mut doc);
            let bytes = document(&QEMU_PROTECTED_HEADER, &doc, &[0; 64]);
            assert_eq!(
                part_of(verify_emulated_unsigned(&bytes, at(), &expect)),
                part
            );
        }
    }

    #[test]
    fn the_normal_verifier_refuses_the_qemu_shape_at_structure() {
        let bytes = document(&QEMU_PROTECTED_HEADER, &payload(), &[0; 64]);
        let err = crate::parse_unverified(&bytes).unwrap_err();
        assert!(matches!(err, AttestationError::Malformed { .. }), "{err:?}");
        assert_eq!(err.check(), "structure");
    }

    #[test]
    fn digest_is_checked_after_the_shape() {
        let mut doc = payload();
        doc.digest = "SHA256".into();
        let bytes = document(&QEMU_PROTECTED_HEADER, &doc, &[0; 64]);
        let err = verify_emulated_unsigned(&bytes, at(), &Expectations::default()).unwrap_err();
        assert!(matches!(err, AttestationError::Digest { .. }), "{err:?}");
    }

    #[test]
    fn oversized_input_is_refused_before_decoding() {
        let err = parse_emulated_unsigned(&vec![0x84; 16 * 1024 + 1]).unwrap_err();
        assert!(matches!(err, AttestationError::TooLarge { .. }), "{err:?}");
    }

    #[test]
    fn errors_name_the_part_and_what_was_found() {
        assert_eq!(describe(&[]), "empty");
        assert_eq!(describe(&[0xa1, 0x01, 0x38, 0x22]), "a1013822");
        assert_eq!(describe(&[0; 96]), "96 zero bytes");
        assert_eq!(describe(&[7; 96]), "96 bytes, not all zero");
        let err = AttestationError::NotEmulated {
            part: EmulatedPart::Signature,
            found: describe(&[7; 96]),
        };
        assert_eq!(err.check(), "emulated");
    }
}
