//! The attestation document: the CBOR payload of the COSE_Sign1.
//!
//! Field set, types and limits follow AWS's "Verifying the root of trust" (Nitro Enclaves User
//! Guide, section "Attestation document specification" and its syntactical validation table):
//! `module_id` non-empty text; `digest` text; `timestamp` a positive integer (milliseconds);
//! `pcrs` a map of 1..=32 entries, index 0..32, values of 32, 48 or 64 bytes; `certificate` and
//! each `cabundle` entry 1..=1024 bytes of DER, at least one `cabundle` entry; `public_key`
//! 1..=1024 bytes or null; `user_data` and `nonce` 0..=512 bytes or null.

use std::collections::BTreeMap;

use ciborium::Value;

use crate::cose::{decode_cbor, encode_cbor};
use crate::error::{AttestationError, Result};

/// Largest document accepted: a real NSM document is under 5 KiB; the cap keeps decoding bounded.
pub const MAX_DOCUMENT_SIZE: usize = 16 * 1024;
/// Largest `user_data` and `nonce` the NSM accepts.
pub const MAX_USER_DATA_LEN: usize = 512;
/// Largest `public_key` the NSM accepts.
pub const MAX_PUBLIC_KEY_LEN: usize = 1024;
/// Largest certificate (leaf or bundle entry) in a document.
pub const MAX_CERTIFICATE_LEN: usize = 1024;
/// Number of PCRs an NSM can report.
pub const MAX_PCRS: usize = 32;
/// The digest every NSM document names.
pub const DIGEST_SHA384: &str = "SHA384";

/// A decoded attestation document. Nothing in it is trusted until [`crate::verify`] says so.
#[derive(Clone, PartialEq, Eq)]
pub struct AttestationDoc {
    /// Identifier of the issuing NSM (`i-…-enc…` on AWS, `local-…` for the local attester).
    pub module_id: String,
    /// Digest used for the PCRs; always `SHA384` once verified.
    pub digest: String,
    /// Creation time, milliseconds since the Unix epoch.
    pub timestamp: u64,
    /// Locked PCRs by index.
    pub pcrs: BTreeMap<u8, Vec<u8>>,
    /// The leaf certificate (DER) whose key signed the document.
    pub certificate: Vec<u8>,
    /// The issuer chain (DER), root first; `cabundle[0]` is never trusted, the pinned root is.
    pub cabundle: Vec<Vec<u8>>,
    /// Optional public key the enclave asked to include.
    pub public_key: Option<Vec<u8>>,
    /// Optional user data the enclave asked to include.
    pub user_data: Option<Vec<u8>>,
    /// Optional nonce the enclave asked to include.
    pub nonce: Option<Vec<u8>>,
}

/// An optional byte field as hex, for the `Debug` impls of this crate's public types.
fn hex_opt(v: &Option<Vec<u8>>) -> Option<String> {
    v.as_ref().map(hex::encode)
}

/// The three values a document binds (nonce, user data, public key), as hex in `Debug` output:
/// a document's, an attester's request's and a verifier's expectations' alike.
pub(crate) fn debug_bound(
    d: &mut std::fmt::DebugStruct<'_, '_>,
    nonce: &Option<Vec<u8>>,
    user_data: &Option<Vec<u8>>,
    public_key: &Option<Vec<u8>>,
) {
    d.field("nonce", &hex_opt(nonce))
        .field("user_data", &hex_opt(user_data))
        .field("public_key", &hex_opt(public_key));
}

/// PCR values as hex by index, for the `Debug` impls of this crate's public types.
pub(crate) fn hex_pcrs(pcrs: &BTreeMap<u8, Vec<u8>>) -> BTreeMap<u8, String> {
    pcrs.iter().map(|(i, v)| (*i, hex::encode(v))).collect()
}

impl std::fmt::Debug for AttestationDoc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("AttestationDoc");
        d.field("module_id", &self.module_id)
            .field("digest", &self.digest)
            .field("timestamp", &self.timestamp)
            .field("pcrs", &hex_pcrs(&self.pcrs))
            .field("certificate_len", &self.certificate.len())
            .field("cabundle_len", &self.cabundle.len());
        debug_bound(&mut d, &self.nonce, &self.user_data, &self.public_key);
        d.finish()
    }
}

/// The payload keys in the order the NSM writes them.
const FIELDS: [&str; 9] = [
    "module_id",
    "digest",
    "timestamp",
    "pcrs",
    "certificate",
    "cabundle",
    "public_key",
    "user_data",
    "nonce",
];

impl AttestationDoc {
    /// Decodes the payload and checks every field against AWS's limits.
    pub fn decode(payload: &[u8]) -> Result<Self> {
        let Value::Map(entries) = decode_cbor(payload, "payload")? else {
            return Err(AttestationError::malformed("payload is not a CBOR map"));
        };
        let mut fields: [Option<Value>; 9] = Default::default();
        for (key, value) in entries {
            let Value::Text(key) = key else {
                return Err(AttestationError::malformed(format!(
                    "payload has a non-text key {key:?}"
                )));
            };
            let Some(slot) = FIELDS
                .iter()
                .position(|f| *f == key)
                .and_then(|i| fields.get_mut(i))
            else {
                return Err(AttestationError::malformed(format!(
                    "payload has an unknown field {key:?}"
                )));
            };
            if slot.replace(value).is_some() {
                return Err(AttestationError::malformed(format!(
                    "payload repeats field {key:?}"
                )));
            }
        }
        let [
            module_id,
            digest,
            timestamp,
            pcrs,
            certificate,
            cabundle,
            public_key,
            user_data,
            nonce,
        ] = fields;

        // Decoded in the NSM's order: the first bad field is the one named.
        Ok(Self {
            module_id: non_empty_text("module_id", module_id)?,
            digest: text("digest", digest)?,
            timestamp: positive_integer("timestamp", timestamp)?,
            pcrs: decode_pcrs(required("pcrs", pcrs)?)?,
            certificate: bytes_within(
                "certificate",
                required("certificate", certificate)?,
                1,
                MAX_CERTIFICATE_LEN,
            )?,
            cabundle: decode_cabundle(required("cabundle", cabundle)?)?,
            public_key: optional_bytes("public_key", public_key, 1, MAX_PUBLIC_KEY_LEN)?,
            user_data: optional_bytes("user_data", user_data, 0, MAX_USER_DATA_LEN)?,
            nonce: optional_bytes("nonce", nonce, 0, MAX_USER_DATA_LEN)?,
        })
    }

    /// Encodes the payload exactly as the NSM does: a map of nine text keys in its order, absent
    /// optional fields as `null`, PCRs keyed by unsigned integers in ascending order.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let opt = |v: &Option<Vec<u8>>| v.clone().map_or(Value::Null, Value::Bytes);
        let pcrs = self
            .pcrs
            .iter()
            .map(|(i, v)| (Value::Integer((*i).into()), Value::Bytes(v.clone())))
            .collect();
        let values = [
            Value::Text(self.module_id.clone()),
            Value::Text(self.digest.clone()),
            Value::Integer(self.timestamp.into()),
            Value::Map(pcrs),
            Value::Bytes(self.certificate.clone()),
            Value::Array(self.cabundle.iter().cloned().map(Value::Bytes).collect()),
            opt(&self.public_key),
            opt(&self.user_data),
            opt(&self.nonce),
        ];
        let map = FIELDS
            .iter()
            .zip(values)
            .map(|(k, v)| (Value::Text((*k).to_owned()), v))
            .collect();
        encode_cbor(&Value::Map(map))
    }

    /// True when PCR0, PCR1 and PCR2 are all zero (or absent): an enclave started in debug mode,
    /// whose memory the parent can read (Nitro Enclaves User Guide, "Debug mode").
    pub fn is_debug_mode(&self) -> bool {
        (0..=2u8).all(|i| self.pcrs.get(&i).is_none_or(|v| v.iter().all(|b| *b == 0)))
    }
}

fn required(field: &'static str, value: Option<Value>) -> Result<Value> {
    value.ok_or_else(|| AttestationError::field(field, "is missing"))
}

fn text(field: &'static str, value: Option<Value>) -> Result<String> {
    let Value::Text(text) = required(field, value)? else {
        return Err(AttestationError::field(field, "is not a text string"));
    };
    Ok(text)
}

fn non_empty_text(field: &'static str, value: Option<Value>) -> Result<String> {
    let text = text(field, value)?;
    if text.is_empty() {
        return Err(AttestationError::field(field, "is empty"));
    }
    Ok(text)
}

fn positive_integer(field: &'static str, value: Option<Value>) -> Result<u64> {
    let Value::Integer(n) = required(field, value)? else {
        return Err(AttestationError::field(field, "is not an integer"));
    };
    u64::try_from(n)
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| AttestationError::field(field, "is not a positive integer"))
}

/// The issuer chain: a non-empty array of certificates (DER).
fn decode_cabundle(value: Value) -> Result<Vec<Vec<u8>>> {
    let Value::Array(bundle) = value else {
        return Err(AttestationError::field("cabundle", "is not an array"));
    };
    if bundle.is_empty() {
        return Err(AttestationError::field("cabundle", "is empty"));
    }
    bundle
        .into_iter()
        .map(|c| bytes_within("cabundle", c, 1, MAX_CERTIFICATE_LEN))
        .collect()
}

fn bytes_within(field: &'static str, value: Value, min: usize, max: usize) -> Result<Vec<u8>> {
    let Value::Bytes(bytes) = value else {
        return Err(AttestationError::field(field, "is not a byte string"));
    };
    if bytes.len() < min || bytes.len() > max {
        return Err(AttestationError::field(
            field,
            format!("is {} bytes, allowed {min}..={max}", bytes.len()),
        ));
    }
    Ok(bytes)
}

fn optional_bytes(
    field: &'static str,
    value: Option<Value>,
    min: usize,
    max: usize,
) -> Result<Option<Vec<u8>>> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(v) => bytes_within(field, v, min, max).map(Some),
    }
}

fn decode_pcrs(value: Value) -> Result<BTreeMap<u8, Vec<u8>>> {
    let Value::Map(entries) = value else {
        return Err(AttestationError::field("pcrs", "is not a map"));
    };
    if entries.is_empty() || entries.len() > MAX_PCRS {
        return Err(AttestationError::field(
            "pcrs",
            format!("has {} entries, allowed 1..={MAX_PCRS}", entries.len()),
        ));
    }
    let mut pcrs = BTreeMap::new();
    for (index, value) in entries {
        let index = match index {
            Value::Integer(i) => u8::try_from(i)
                .ok()
                .filter(|i| usize::from(*i) < MAX_PCRS)
                .ok_or_else(|| AttestationError::field("pcrs", "has an index outside 0..32"))?,
            _ => return Err(AttestationError::field("pcrs", "has a non-integer index")),
        };
        let Value::Bytes(value) = value else {
            return Err(AttestationError::field(
                "pcrs",
                format!("PCR{index} is not a byte string"),
            ));
        };
        if ![32, 48, 64].contains(&value.len()) {
            return Err(AttestationError::field(
                "pcrs",
                format!("PCR{index} is {} bytes, expected 32, 48 or 64", value.len()),
            ));
        }
        if pcrs.insert(index, value).is_some() {
            return Err(AttestationError::field(
                "pcrs",
                format!("PCR{index} appears twice"),
            ));
        }
    }
    Ok(pcrs)
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::type_complexity
    )]
    use super::*;

    fn sample() -> AttestationDoc {
        AttestationDoc {
            module_id: "local-test".into(),
            digest: DIGEST_SHA384.into(),
            timestamp: 1_700_000_000_000,
            pcrs: (0..16u8).map(|i| (i, vec![i; 48])).collect(),
            certificate: vec![1; 100],
            cabundle: vec![vec![2; 100]],
            public_key: None,
            user_data: Some(b"hello".to_vec()),
            nonce: Some(vec![]),
        }
    }

    #[test]
    fn round_trips() {
        let doc = sample();
        assert_eq!(AttestationDoc::decode(&doc.encode().unwrap()).unwrap(), doc);
    }

    #[test]
    fn starts_like_an_nsm_payload() {
        // a9 (map of 9) 69 "module_id": the first bytes of every real NSM payload.
        let bytes = sample().encode().unwrap();
        assert_eq!(&bytes[..11], b"\xa9\x69module_id");
    }

    #[test]
    fn enforces_aws_limits() {
        let cases: Vec<(&str, Box<dyn Fn(&mut AttestationDoc)>)> = vec![
            ("module_id", Box::new(|d| d.module_id.clear())),
            ("pcrs", Box::new(|d| d.pcrs.clear())),
            (
                "pcrs",
                Box::new(|d| {
                    d.pcrs.insert(3, vec![0; 47]);
                }),
            ),
            (
                "pcrs",
                Box::new(|d| {
                    d.pcrs.insert(32, vec![0; 48]);
                }),
            ),
            ("certificate", Box::new(|d| d.certificate.clear())),
            ("certificate", Box::new(|d| d.certificate = vec![0; 1025])),
            ("cabundle", Box::new(|d| d.cabundle.clear())),
            ("cabundle", Box::new(|d| d.cabundle.push(vec![]))),
            ("public_key", Box::new(|d| d.public_key = Some(vec![]))),
            ("user_data", Box::new(|d| d.user_data = Some(vec![0; 513]))),
            ("nonce", Box::new(|d| d.nonce = Some(vec![0; 513]))),
            ("timestamp", Box::new(|d| d.timestamp = 0)),
        ];
        for (field, mutate) in cases {
            let mut doc = sample();
            mutate(&mut doc);
            match AttestationDoc::decode(&doc.encode().unwrap()) {
                Err(AttestationError::Field { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: expected a field error, got {other:?}"),
            }
        }
    }

    #[test]
    fn refuses_unknown_missing_and_repeated_fields() {
        let Value::Map(mut entries) = decode_cbor(&sample().encode().unwrap(), "t").unwrap() else {
            panic!("not a map")
        };
        let mut extra = entries.clone();
        extra.push((Value::Text("extra".into()), Value::Null));
        let mut repeated = entries.clone();
        repeated.push(entries[0].clone());
        entries.remove(2);
        for map in [extra, repeated, entries] {
            let bytes = encode_cbor(&Value::Map(map)).unwrap();
            assert!(matches!(
                AttestationDoc::decode(&bytes),
                Err(AttestationError::Malformed { .. } | AttestationError::Field { .. })
            ));
        }
    }

    #[test]
    fn debug_mode_is_all_zero_pcr0_to_2() {
        let mut doc = sample();
        assert!(!doc.is_debug_mode());
        for i in 0..=2 {
            doc.pcrs.insert(i, vec![0; 48]);
        }
        assert!(doc.is_debug_mode());
        doc.pcrs.insert(1, vec![1; 48]);
        assert!(!doc.is_debug_mode());
    }
}
