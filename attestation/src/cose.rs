//! COSE_Sign1 (RFC 9052 §4.2) as the Nitro Secure Module emits it.
//!
//! The NSM returns an *untagged* `COSE_Sign1` array; tag 18 is accepted too (RFC 9052 §2 allows
//! either where the context fixes the type). Its protected header is exactly `{1: -35}` (alg ES384,
//! RFC 9053 §2.1), the unprotected header an empty map, and the signature the fixed-size `r || s`
//! form of ECDSA P-384 (96 bytes).
//!
//! QEMU's emulated NSM writes the same structure unsigned (alg -1, 64 zero bytes of signature):
//! [`CoseSign1::decode`] refuses it, and only `crate::emulated` reads it, through the
//! structure-only decoder.

use ciborium::Value;

use crate::error::{AttestationError, Result};

/// CBOR tag of a COSE_Sign1 structure (RFC 9052 §2).
const COSE_SIGN1_TAG: u64 = 18;
/// COSE header label `alg` (RFC 9052 §3.1).
const HEADER_ALG: i128 = 1;
/// COSE algorithm ES384: ECDSA with SHA-384 (RFC 9053 §2.1).
const ALG_ES384: i128 = -35;
/// The `alg` QEMU's emulated NSM writes, -1, because "we don't actually sign the data"
/// (hw/virtio/virtio-nsm.c, QEMU 10.0, `add_protected_header_to_cose`).
const ALG_QEMU_UNSIGNED: i128 = -1;
/// Length of a fixed-size P-384 ECDSA signature, `r || s`.
pub const ES384_SIGNATURE_LEN: usize = 96;
/// Nesting limit while decoding: a real document is three levels deep.
const RECURSION_LIMIT: usize = 16;

/// The parts of a COSE_Sign1 structure, before any check of the signature.
#[derive(Clone, PartialEq, Eq)]
pub struct CoseSign1 {
    /// The serialized protected header, exactly as signed.
    pub protected: Vec<u8>,
    /// The payload, exactly as signed (a CBOR-encoded attestation document).
    pub payload: Vec<u8>,
    /// The ES384 signature, `r || s`.
    pub signature: Vec<u8>,
}

impl std::fmt::Debug for CoseSign1 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoseSign1")
            .field("protected", &hex::encode(&self.protected))
            .field("payload_len", &self.payload.len())
            .field("signature", &hex::encode(&self.signature))
            .finish()
    }
}

/// Decodes one CBOR item that must fill `bytes` exactly.
pub(crate) fn decode_cbor(bytes: &[u8], what: &str) -> Result<Value> {
    let mut reader = bytes;
    let value: Value = ciborium::de::from_reader_with_recursion_limit(&mut reader, RECURSION_LIMIT)
        .map_err(|e| {
            let why = match e {
                ciborium::de::Error::Io(_) => "ends early (truncated or empty)".to_owned(),
                ciborium::de::Error::Syntax(at) => format!("has a CBOR syntax error at byte {at}"),
                ciborium::de::Error::Semantic(at, msg) => match at {
                    Some(at) => format!("is invalid CBOR at byte {at}: {msg}"),
                    None => format!("is invalid CBOR: {msg}"),
                },
                ciborium::de::Error::RecursionLimitExceeded => {
                    format!("nests deeper than {RECURSION_LIMIT} levels")
                }
            };
            AttestationError::malformed(format!("{what} {why}"))
        })?;
    if !reader.is_empty() {
        return Err(AttestationError::malformed(format!(
            "{what} has {} trailing bytes after its CBOR item",
            reader.len()
        )));
    }
    Ok(value)
}

/// Encodes a CBOR value. Writing into a `Vec` cannot fail for the values this crate builds.
pub(crate) fn encode_cbor(value: &Value) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    ciborium::ser::into_writer(value, &mut out)
        .map_err(|e| AttestationError::malformed(format!("cannot encode CBOR: {e}")))?;
    Ok(out)
}

/// The protected header every ES384 COSE_Sign1 of this crate carries: `{1: -35}`.
pub fn es384_protected_header() -> Result<Vec<u8>> {
    encode_cbor(&Value::Map(vec![(
        Value::Integer(
            HEADER_ALG
                .try_into()
                .map_err(|_| AttestationError::malformed("label"))?,
        ),
        Value::Integer(
            ALG_ES384
                .try_into()
                .map_err(|_| AttestationError::malformed("alg"))?,
        ),
    )]))
}

impl CoseSign1 {
    /// Parses a COSE_Sign1 (tagged or untagged) and checks its headers name ES384.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let cose = Self::decode_structure(bytes)?;
        check_protected_header(&cose.protected)?;
        if cose.signature.len() != ES384_SIGNATURE_LEN {
            return Err(AttestationError::malformed(format!(
                "ES384 signature is {} bytes, expected {ES384_SIGNATURE_LEN}",
                cose.signature.len()
            )));
        }
        Ok(cose)
    }

    /// Parses the COSE_Sign1 structure (RFC 9052 §4.2: an array of protected header bytes, an
    /// empty unprotected map, payload bytes and signature bytes) WITHOUT reading the protected
    /// header or the signature's length. [`CoseSign1::decode`] adds the ES384 checks; the path
    /// for QEMU's emulated NSM (`crate::emulated`) compares both with QEMU's exact bytes instead.
    pub(crate) fn decode_structure(bytes: &[u8]) -> Result<Self> {
        let mut value = decode_cbor(bytes, "document")?;
        if let Value::Tag(tag, inner) = value {
            if tag != COSE_SIGN1_TAG {
                return Err(AttestationError::malformed(format!(
                    "document has CBOR tag {tag}, expected {COSE_SIGN1_TAG} (COSE_Sign1) or none"
                )));
            }
            value = *inner;
        }
        let Value::Array(items) = value else {
            return Err(AttestationError::malformed(
                "document is not a CBOR array (COSE_Sign1)",
            ));
        };
        let [protected, unprotected, payload, signature]: [Value; 4] =
            items.try_into().map_err(|items: Vec<Value>| {
                AttestationError::malformed(format!(
                    "COSE_Sign1 has {} elements, expected 4",
                    items.len()
                ))
            })?;
        let Value::Bytes(protected) = protected else {
            return Err(AttestationError::malformed(
                "COSE_Sign1 protected header is not a byte string",
            ));
        };
        match unprotected {
            Value::Map(entries) if entries.is_empty() => {}
            Value::Map(_) => {
                return Err(AttestationError::malformed(
                    "COSE_Sign1 unprotected header is not empty",
                ));
            }
            _ => {
                return Err(AttestationError::malformed(
                    "COSE_Sign1 unprotected header is not a map",
                ));
            }
        }
        let Value::Bytes(payload) = payload else {
            return Err(AttestationError::malformed(
                "COSE_Sign1 payload is not a byte string (detached payloads are not used)",
            ));
        };
        let Value::Bytes(signature) = signature else {
            return Err(AttestationError::malformed(
                "COSE_Sign1 signature is not a byte string",
            ));
        };
        Ok(Self {
            protected,
            payload,
            signature,
        })
    }

    /// Serializes the untagged COSE_Sign1 array, as the NSM does.
    pub fn encode(&self) -> Result<Vec<u8>> {
        encode_cbor(&Value::Array(vec![
            Value::Bytes(self.protected.clone()),
            Value::Map(Vec::new()),
            Value::Bytes(self.payload.clone()),
            Value::Bytes(self.signature.clone()),
        ]))
    }

    /// The bytes the signature covers: `Sig_structure` with context "Signature1" and an empty
    /// external AAD (RFC 9052 §4.4).
    pub fn to_be_signed(&self) -> Result<Vec<u8>> {
        to_be_signed(&self.protected, &self.payload)
    }
}

/// `Sig_structure = ["Signature1", body_protected, external_aad = h'', payload]` (RFC 9052 §4.4).
pub(crate) fn to_be_signed(protected: &[u8], payload: &[u8]) -> Result<Vec<u8>> {
    encode_cbor(&Value::Array(vec![
        Value::Text("Signature1".to_owned()),
        Value::Bytes(protected.to_vec()),
        Value::Bytes(Vec::new()),
        Value::Bytes(payload.to_vec()),
    ]))
}

/// The protected header must be a map holding `alg: ES384`, and nothing we would have to honour.
fn check_protected_header(protected: &[u8]) -> Result<()> {
    let Value::Map(entries) = decode_cbor(protected, "protected header")? else {
        return Err(AttestationError::malformed(
            "COSE_Sign1 protected header is not a CBOR map",
        ));
    };
    let mut alg = None;
    for (label, value) in entries {
        match label {
            Value::Integer(label) if i128::from(label) == HEADER_ALG => {
                if alg.is_some() {
                    return Err(AttestationError::malformed(
                        "protected header repeats `alg`",
                    ));
                }
                alg = Some(value);
            }
            // RFC 9052 §3.1 `crit` and any header we do not understand: refuse rather than ignore.
            other => {
                return Err(AttestationError::malformed(format!(
                    "protected header has an unexpected label {other:?}"
                )));
            }
        }
    }
    match alg {
        Some(Value::Integer(alg)) if i128::from(alg) == ALG_ES384 => Ok(()),
        // Said plainly, because it is what a client meets when pointed at QEMU by mistake.
        Some(Value::Integer(alg)) if i128::from(alg) == ALG_QEMU_UNSIGNED => {
            Err(AttestationError::malformed(
                "protected header alg is -1, expected ES384 (-35): an UNSIGNED document of \
                 QEMU's emulated NSM, which no pinned root can verify",
            ))
        }
        Some(other) => Err(AttestationError::malformed(format!(
            "protected header alg is {other:?}, expected ES384 (-35)"
        ))),
        None => Err(AttestationError::malformed("protected header has no `alg`")),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    fn sample() -> CoseSign1 {
        CoseSign1 {
            protected: es384_protected_header().unwrap(),
            payload: b"payload".to_vec(),
            signature: vec![7; ES384_SIGNATURE_LEN],
        }
    }

    #[test]
    fn protected_header_is_the_nsm_one() {
        // The NSM's protected header, as found in every real document: a1 01 38 22.
        assert_eq!(es384_protected_header().unwrap(), [0xa1, 0x01, 0x38, 0x22]);
    }

    #[test]
    fn round_trips_untagged_and_tagged() {
        let cose = sample();
        let bytes = cose.encode().unwrap();
        assert_eq!(CoseSign1::decode(&bytes).unwrap(), cose);
        let mut tagged = vec![0xd2]; // tag(18)
        tagged.extend_from_slice(&bytes);
        assert_eq!(CoseSign1::decode(&tagged).unwrap(), cose);
    }

    #[test]
    fn refuses_other_tags_algs_and_shapes() {
        let bytes = sample().encode().unwrap();
        let mut wrong_tag = vec![0xd1]; // tag(17) = COSE_Mac0
        wrong_tag.extend_from_slice(&bytes);
        assert!(CoseSign1::decode(&wrong_tag).is_err());

        let mut es256 = sample();
        es256.protected = vec![0xa1, 0x01, 0x26]; // {1: -7}
        assert!(CoseSign1::decode(&es256.encode().unwrap()).is_err());

        let mut short_sig = sample();
        short_sig.signature.pop();
        assert!(CoseSign1::decode(&short_sig.encode().unwrap()).is_err());

        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(CoseSign1::decode(&trailing).is_err());

        for bad in [&[][..], &[0x80], &[0x84, 0x40, 0xa0, 0x40], &[0xff; 8]] {
            assert!(CoseSign1::decode(bad).is_err());
        }
    }
}
