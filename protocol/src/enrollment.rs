//! Enrollment tokens: an operator's permission for one device key to create wallets.
//!
//! A cosigner run with `[enrollment] mode = "token"` accepts a `DkgStart` only with a token signed
//! by its configured operator key. Without that gate anyone who reaches the provider can create
//! wallets, each leaving state behind. The token is small and self-contained so the enclave can
//! check it before doing any work: one P-256 signature over [`EnrollmentToken::digest`], an
//! expiry, and a device key the caller must compare with the one the ceremony registers (this
//! module does not know which device is asking).
//!
//! Encoding ([`EnrollmentToken::to_bytes`]): a CBOR map `{"v": 1, "signature": bstr(64),
//! "device_key": bstr(33), "expires_ms": uint}`, in that key order, which is RFC 8949 §4.2.1's
//! core deterministic order (keys sorted by their encoded bytes: shorter first). Decoding refuses
//! unknown keys, trailing bytes and any other spelling of the same token, so a token has one
//! encoding. Text form ([`EnrollmentToken::to_text`]): `cosigner-enrollment-v1:` and the hex of
//! those bytes, for files and command lines.

use p256::ecdsa::{Signature, SigningKey};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use sha2::{Digest, Sha256};

use crate::auth::{normalise_public_key, public_key_bytes, sign_digest, verify_digest};

/// Domain separation of [`EnrollmentToken::digest`]: a token signature means nothing elsewhere.
pub const DIGEST_DOMAIN: &[u8] = b"cosigner/enrollment/v1";

/// The encoding's version (`v`).
pub const VERSION: u16 = 1;

/// Prefix of the text form.
pub const TEXT_PREFIX: &str = "cosigner-enrollment-v1:";

/// Largest encoding accepted; a real token is about 130 bytes.
pub const MAX_TOKEN_LEN: usize = 1024;

/// Length of a device key: SEC1 compressed P-256, the one spelling keys are registered in.
pub const DEVICE_KEY_LEN: usize = crate::auth::P256_KEY_LEN;

/// Length of a signature: `r ‖ s`, 32 bytes each.
pub const SIGNATURE_LEN: usize = crate::auth::P256_SIGNATURE_LEN;

/// CBOR nesting accepted by the decoder (the token is one flat map).
const RECURSION_LIMIT: usize = 8;

/// Why a token was not issued, decoded or accepted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnrollmentError {
    /// The bytes or text are not a token of this version.
    #[error("malformed enrollment token: {reason}")]
    Malformed {
        /// What is wrong.
        reason: String,
    },
    /// The signature is not the operator's over this token.
    #[error("enrollment token is not signed by the operator key")]
    BadSignature,
    /// The token was valid until `expires_ms`.
    #[error("enrollment token expired at {expires_ms} ms (now {now_ms} ms)")]
    Expired {
        /// Its expiry, milliseconds since the Unix epoch.
        expires_ms: u64,
        /// The time it was checked at.
        now_ms: u64,
    },
    /// A key (the device's, or the operator's) is not a usable P-256 key.
    #[error("enrollment key: {reason}")]
    BadKey {
        /// Which key and what is wrong.
        reason: String,
    },
}

fn malformed(reason: impl std::fmt::Display) -> EnrollmentError {
    EnrollmentError::Malformed {
        reason: reason.to_string(),
    }
}

fn bad_key(reason: impl std::fmt::Display) -> EnrollmentError {
    EnrollmentError::BadKey {
        reason: reason.to_string(),
    }
}

/// An operator's permission for one device key to create wallets until `expires_ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrollmentToken {
    /// The device key allowed to create wallets: SEC1 compressed P-256 (33 bytes).
    pub device_key: Vec<u8>,
    /// Until when (exclusive), milliseconds since the Unix epoch.
    pub expires_ms: u64,
    /// ECDSA P-256 by the operator over [`EnrollmentToken::digest`], `r ‖ s` with low `s`
    /// (64 bytes).
    pub signature: Vec<u8>,
}

/// The CBOR layout. Fields are declared in RFC 8949 deterministic key order ("v" < "signature" <
/// "device_key" < "expires_ms" by encoded bytes), and ciborium writes them in declaration order
/// with minimal-length heads, so the encoding is the deterministic one.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Encoded {
    v: u16,
    signature: ByteBuf,
    device_key: ByteBuf,
    expires_ms: u64,
}

/// Only the version of an encoding that did not decode, to say "unsupported version" rather than
/// "unknown field" for a token from a newer issuer.
#[derive(Deserialize)]
struct VersionOnly {
    v: u64,
}

impl EnrollmentToken {
    /// What the operator signs: SHA-256 of `"cosigner/enrollment/v1" ‖ u32be(len device_key) ‖
    /// device_key ‖ u64be(expires_ms)`.
    pub fn digest(device_key: &[u8], expires_ms: u64) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(DIGEST_DOMAIN);
        // Length-prefixed, so the key's bytes and the expiry's cannot be shifted into each other.
        // A key longer than u32::MAX bytes (only possible in memory) saturates; it is never a
        // valid device key, so nothing such a digest signs is ever accepted.
        h.update(
            u32::try_from(device_key.len())
                .unwrap_or(u32::MAX)
                .to_be_bytes(),
        );
        h.update(device_key);
        h.update(expires_ms.to_be_bytes());
        h.finalize().into()
    }

    /// Issues a token for `device_key` (SEC1 P-256, compressed or not; the token carries it
    /// compressed, the form keys are registered in) valid until `expires_ms`.
    pub fn issue(
        operator: &SigningKey,
        device_key: &[u8],
        expires_ms: u64,
    ) -> Result<Self, EnrollmentError> {
        let device_key = normalise_public_key(device_key)
            .map_err(|_| bad_key("device key is not a SEC1 P-256 public key"))?;
        let signature = sign_digest(operator, &Self::digest(&device_key, expires_ms))
            .map_err(|e| bad_key(format!("operator key cannot sign: {e}")))?;
        Ok(Self {
            device_key,
            expires_ms,
            signature: signature.to_vec(),
        })
    }

    /// Checks the operator's signature (`operator_public_key`: SEC1 P-256, compressed or not),
    /// the expiry against `now_ms`, and that `device_key` is a valid P-256 point in compressed
    /// form. Which device is asking is the caller's to compare with [`EnrollmentToken::device_key`].
    pub fn verify(&self, operator_public_key: &[u8], now_ms: u64) -> Result<(), EnrollmentError> {
        let operator = normalise_public_key(operator_public_key)
            .map_err(|_| bad_key("operator key is not a SEC1 P-256 public key"))?;
        self.check_shape()?;
        if normalise_public_key(&self.device_key).ok().as_deref()
            != Some(self.device_key.as_slice())
        {
            return Err(bad_key(
                "device key is not a SEC1 compressed P-256 public key",
            ));
        }
        let signature =
            Signature::from_slice(&self.signature).map_err(|_| EnrollmentError::BadSignature)?;
        if signature.normalize_s().is_some() {
            // The high-S twin of a valid signature verifies as well; refusing it keeps one
            // spelling per token, should tokens ever be remembered by their bytes.
            return Err(EnrollmentError::BadSignature);
        }
        verify_digest(
            &operator,
            &Self::digest(&self.device_key, self.expires_ms),
            &self.signature,
        )
        .map_err(|_| EnrollmentError::BadSignature)?;
        // After the signature: "expired" is only ever said of a token the operator did issue.
        if now_ms >= self.expires_ms {
            return Err(EnrollmentError::Expired {
                expires_ms: self.expires_ms,
                now_ms,
            });
        }
        Ok(())
    }

    /// The deterministic CBOR encoding (module documentation).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        // Writing byte strings and integers into a Vec cannot fail.
        let _ = ciborium::ser::into_writer(&self.encoded(), &mut out);
        out
    }

    /// Decodes [`EnrollmentToken::to_bytes`]: at most [`MAX_TOKEN_LEN`] bytes, version 1, a
    /// 33-byte device key and a 64-byte signature, no unknown key, nothing trailing, and exactly
    /// the deterministic encoding. The signature is not checked here: see
    /// [`EnrollmentToken::verify`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, EnrollmentError> {
        if bytes.len() > MAX_TOKEN_LEN {
            return Err(malformed(format!(
                "{} bytes, at most {MAX_TOKEN_LEN}",
                bytes.len()
            )));
        }
        let mut reader = bytes;
        let encoded: Encoded =
            match ciborium::de::from_reader_with_recursion_limit(&mut reader, RECURSION_LIMIT) {
                Ok(encoded) => encoded,
                Err(e) => {
                    let mut again = bytes;
                    return Err(
                        match ciborium::de::from_reader_with_recursion_limit::<VersionOnly, _>(
                            &mut again,
                            RECURSION_LIMIT,
                        ) {
                            Ok(VersionOnly { v }) if v != u64::from(VERSION) => {
                                malformed(format!("version {v}, this build reads {VERSION}"))
                            }
                            _ => malformed(format!("not a token: {e}")),
                        },
                    );
                }
            };
        if !reader.is_empty() {
            return Err(malformed("trailing bytes after the token"));
        }
        if encoded.v != VERSION {
            return Err(malformed(format!(
                "version {}, this build reads {VERSION}",
                encoded.v
            )));
        }
        let token = Self {
            device_key: encoded.device_key.into_vec(),
            expires_ms: encoded.expires_ms,
            signature: encoded.signature.into_vec(),
        };
        token.check_shape()?;
        if token.to_bytes() != bytes {
            return Err(malformed("not in the deterministic encoding"));
        }
        Ok(token)
    }

    /// `cosigner-enrollment-v1:` followed by the lowercase hex of [`EnrollmentToken::to_bytes`].
    pub fn to_text(&self) -> String {
        format!("{TEXT_PREFIX}{}", hex::encode(self.to_bytes()))
    }

    /// Parses [`EnrollmentToken::to_text`], surrounding whitespace (a file's newline) ignored.
    pub fn from_text(text: &str) -> Result<Self, EnrollmentError> {
        let text = text.trim();
        let Some(hex_part) = text.strip_prefix(TEXT_PREFIX) else {
            return Err(malformed(format!(
                "does not start with {TEXT_PREFIX:?} (is this an enrollment token?)"
            )));
        };
        // Checked before decoding, so a huge file costs no allocation.
        if hex_part.len() > 2 * MAX_TOKEN_LEN {
            return Err(malformed(format!(
                "{} hex digits, at most {}",
                hex_part.len(),
                2 * MAX_TOKEN_LEN
            )));
        }
        let bytes = hex::decode(hex_part).map_err(|e| malformed(format!("hex: {e}")))?;
        Self::from_bytes(&bytes)
    }

    /// The operator's public key, as `[enrollment] operator_key` names it (SEC1 compressed).
    pub fn operator_public_key(operator: &SigningKey) -> Vec<u8> {
        public_key_bytes(operator)
    }

    fn encoded(&self) -> Encoded {
        Encoded {
            v: VERSION,
            signature: ByteBuf::from(self.signature.clone()),
            device_key: ByteBuf::from(self.device_key.clone()),
            expires_ms: self.expires_ms,
        }
    }

    fn check_shape(&self) -> Result<(), EnrollmentError> {
        crate::auth::check_signed_shape("device key", &self.device_key, &self.signature)
            .map_err(malformed)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    fn key(byte: u8) -> SigningKey {
        SigningKey::from_bytes(&[byte; 32].into()).unwrap()
    }

    fn device() -> Vec<u8> {
        public_key_bytes(&key(0x22))
    }

    const EXPIRES: u64 = 1_900_000_000_000;

    #[test]
    fn issued_tokens_verify_until_they_expire() {
        let operator = key(0x11);
        let pk = public_key_bytes(&operator);
        let token = EnrollmentToken::issue(&operator, &device(), EXPIRES).unwrap();
        token.verify(&pk, EXPIRES - 1).unwrap();
        // The uncompressed spelling of the operator key is the same key.
        let uncompressed = operator.verifying_key().to_encoded_point(false);
        token.verify(uncompressed.as_bytes(), 0).unwrap();
        for now in [EXPIRES, EXPIRES + 1, u64::MAX] {
            match token.verify(&pk, now) {
                Err(EnrollmentError::Expired { expires_ms, now_ms }) => {
                    assert_eq!((expires_ms, now_ms), (EXPIRES, now));
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn the_signature_binds_operator_device_and_expiry() {
        let operator = key(0x11);
        let pk = public_key_bytes(&operator);
        let token = EnrollmentToken::issue(&operator, &device(), EXPIRES).unwrap();
        let stranger = public_key_bytes(&key(0x33));
        assert!(matches!(
            token.verify(&stranger, 0),
            Err(EnrollmentError::BadSignature)
        ));
        let mut later = token.clone();
        later.expires_ms += 1;
        assert!(matches!(
            later.verify(&pk, 0),
            Err(EnrollmentError::BadSignature)
        ));
        let mut other_device = token.clone();
        other_device.device_key = public_key_bytes(&key(0x44));
        assert!(matches!(
            other_device.verify(&pk, 0),
            Err(EnrollmentError::BadSignature)
        ));
        let mut flipped = token.clone();
        flipped.signature[10] ^= 1;
        assert!(matches!(
            flipped.verify(&pk, 0),
            Err(EnrollmentError::BadSignature)
        ));
        // An expired forgery is a forgery, not an expired token.
        assert!(matches!(
            flipped.verify(&pk, u64::MAX),
            Err(EnrollmentError::BadSignature)
        ));
    }

    #[test]
    fn high_s_twins_are_refused() {
        let operator = key(0x11);
        let pk = public_key_bytes(&operator);
        let mut token = EnrollmentToken::issue(&operator, &device(), EXPIRES).unwrap();
        let sig = Signature::from_slice(&token.signature).unwrap();
        let (r, s) = sig.split_scalars();
        let twin = Signature::from_scalars(r, -*s).unwrap();
        token.signature = twin.to_bytes().to_vec();
        assert!(matches!(
            token.verify(&pk, 0),
            Err(EnrollmentError::BadSignature)
        ));
    }

    /// A compressed-looking key whose x-coordinate (2^256 - 1) exceeds the field prime: no point.
    fn not_a_point() -> Vec<u8> {
        let mut k = vec![0xff; 33];
        k[0] = 2;
        k
    }

    #[test]
    fn keys_are_checked() {
        let operator = key(0x11);
        let pk = public_key_bytes(&operator);
        // Issuing normalises an uncompressed device key and refuses a non-point.
        let uncompressed = key(0x22).verifying_key().to_encoded_point(false);
        let token = EnrollmentToken::issue(&operator, uncompressed.as_bytes(), EXPIRES).unwrap();
        assert_eq!(token.device_key, device());
        for bad in [&[4u8; 33][..], &not_a_point(), &[], &[2; 32]] {
            assert!(matches!(
                EnrollmentToken::issue(&operator, bad, EXPIRES),
                Err(EnrollmentError::BadKey { .. })
            ));
        }
        let token = EnrollmentToken::issue(&operator, &device(), EXPIRES).unwrap();
        assert!(matches!(
            token.verify(&not_a_point(), 0),
            Err(EnrollmentError::BadKey { .. })
        ));
        // A signed device key that is not a point (an operator's mistake) is refused as a key.
        let not_a_point = not_a_point();
        let mut bad = token.clone();
        bad.device_key.clone_from(&not_a_point);
        bad.signature = sign_digest(&operator, &EnrollmentToken::digest(&not_a_point, EXPIRES))
            .unwrap()
            .to_vec();
        assert!(matches!(
            bad.verify(&pk, 0),
            Err(EnrollmentError::BadKey { .. })
        ));
        let mut short = token.clone();
        short.device_key.pop();
        assert!(matches!(
            short.verify(&pk, 0),
            Err(EnrollmentError::Malformed { .. })
        ));
    }

    #[test]
    fn bytes_and_text_round_trip() {
        let token = EnrollmentToken::issue(&key(0x11), &device(), EXPIRES).unwrap();
        assert_eq!(
            EnrollmentToken::from_bytes(&token.to_bytes()).unwrap(),
            token
        );
        let text = token.to_text();
        assert_eq!(EnrollmentToken::from_text(&text).unwrap(), token);
        assert_eq!(
            EnrollmentToken::from_text(&format!("  {text}\n")).unwrap(),
            token
        );
        assert_eq!(
            EnrollmentToken::from_text(
                &text
                    .to_uppercase()
                    .replace(&TEXT_PREFIX.to_uppercase(), TEXT_PREFIX)
            )
            .unwrap(),
            token,
            "hex digits in either case"
        );
    }

    #[test]
    fn other_encodings_are_refused() {
        use ciborium::Value;
        let token = EnrollmentToken::issue(&key(0x11), &device(), EXPIRES).unwrap();
        let bytes = token.to_bytes();
        let cbor = |value: &Value| {
            let mut out = Vec::new();
            ciborium::ser::into_writer(value, &mut out).unwrap();
            out
        };
        let entries = |v: u64| {
            vec![
                (Value::from("v"), Value::from(v)),
                (
                    Value::from("signature"),
                    Value::Bytes(token.signature.clone()),
                ),
                (
                    Value::from("device_key"),
                    Value::Bytes(token.device_key.clone()),
                ),
                (Value::from("expires_ms"), Value::from(EXPIRES)),
            ]
        };
        assert_eq!(cbor(&Value::Map(entries(1))), bytes, "the layout below");

        let reason = |bytes: &[u8]| match EnrollmentToken::from_bytes(bytes) {
            Err(EnrollmentError::Malformed { reason }) => reason,
            other => panic!("{other:?}"),
        };
        let mut reordered = entries(1);
        reordered.swap(0, 3);
        assert!(reason(&cbor(&Value::Map(reordered))).contains("deterministic"));
        let mut extra = entries(1);
        extra.push((Value::from("wallets"), Value::from(3)));
        assert!(reason(&cbor(&Value::Map(extra))).contains("unknown field"));
        let mut newer = entries(2);
        newer.push((Value::from("scope"), Value::from("dao")));
        assert!(reason(&cbor(&Value::Map(newer))).contains("version 2"));
        assert!(reason(&cbor(&Value::Map(entries(2)))).contains("version 2"));
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(reason(&trailing).contains("trailing"));
        for cut in 0..bytes.len() {
            assert!(EnrollmentToken::from_bytes(&bytes[..cut]).is_err());
        }
        let mut long_sig = entries(1);
        long_sig[1].1 = Value::Bytes(vec![1; 65]);
        assert!(reason(&cbor(&Value::Map(long_sig))).contains("signature is 65 bytes"));
        let mut long_key = entries(1);
        long_key[2].1 = Value::Bytes(vec![2; 65]);
        assert!(reason(&cbor(&Value::Map(long_key))).contains("device key is 65 bytes"));
        assert!(reason(&vec![0; MAX_TOKEN_LEN + 1]).contains("at most"));
        // The same map with a non-minimal length head (0xb8 0x04 rather than 0xa4): another
        // spelling of the same token.
        let mut wide = bytes.clone();
        wide.splice(0..1, [0xb8, 0x04]);
        assert!(reason(&wide).contains("deterministic"));
    }

    #[test]
    fn text_is_checked_before_decoding() {
        let reason = |text: &str| match EnrollmentToken::from_text(text) {
            Err(EnrollmentError::Malformed { reason }) => reason,
            other => panic!("{other:?}"),
        };
        assert!(reason("").contains("does not start"));
        assert!(reason("cosigner-enrollment-v2:00").contains("does not start"));
        assert!(reason("cosigner-enrollment-v1:zz").contains("hex"));
        assert!(reason("cosigner-enrollment-v1:abc").contains("hex"));
        assert!(
            reason(&format!("{TEXT_PREFIX}{}", "00".repeat(MAX_TOKEN_LEN + 1))).contains("at most")
        );
        assert!(reason(&format!("{TEXT_PREFIX}a0")).contains("not a token"));
    }

    /// Golden vector: the digest, the encoding and the text of one token, pinned. The signature
    /// is deterministic (RFC 6979 in `sign_prehash`), so the whole text is pinned too; a change
    /// here breaks every token operators have issued. The keys, the digest and the signature were
    /// checked independently (Python's hashlib and `cryptography`: key derivation from the scalar,
    /// SHA-256 of the layout documented on `digest`, ECDSA verification of the prehash).
    #[test]
    fn golden_vector() {
        let operator = key(0x11);
        assert_eq!(
            hex::encode(public_key_bytes(&operator)),
            "020217e617f0b6443928278f96999e69a23a4f2c152bdf6d6cdf66e5b80282d4ed"
        );
        assert_eq!(
            hex::encode(device()),
            "03d65a93977caa3d1b081852ff57a79e465f1660577304baead505dd3a48589cf3"
        );
        assert_eq!(
            hex::encode(EnrollmentToken::digest(&device(), EXPIRES)),
            "38562f3c97885a6c59f59bbb3e13cf3b520990ab439149aa10fad5e8f59f89ea"
        );
        // The layout with a fixed signature field, independent of the signing scheme.
        let fixed = EnrollmentToken {
            device_key: device(),
            expires_ms: EXPIRES,
            signature: vec![0xab; 64],
        };
        assert_eq!(
            hex::encode(fixed.to_bytes()),
            [
                "a4",                                                                 // map of 4
                "6176",                                                               // "v"
                "01",                                                                 // 1
                "697369676e6174757265",                                               // "signature"
                "5840",                                                               // bytes(64)
                &"ab".repeat(64),                                                     //
                "6a6465766963655f6b6579", // "device_key"
                "5821",                   // bytes(33)
                "03d65a93977caa3d1b081852ff57a79e465f1660577304baead505dd3a48589cf3", //
                "6a657870697265735f6d73", // "expires_ms"
                "1b000001ba60d33800",     // uint64 1_900_000_000_000
            ]
            .concat()
        );
        let token = EnrollmentToken::issue(&operator, &device(), EXPIRES).unwrap();
        assert_eq!(
            token.to_text(),
            "cosigner-enrollment-v1:a4617601697369676e61747572655840c0d9ffeb5cb83276e8413387a684ac54a78473d7f62c2ee4f12ea8b538b4e73462d18ca62f12bfe9eccb6f65f65a46eb02f049d42822683779fdf0dd1b1afe7c6a6465766963655f6b6579582103d65a93977caa3d1b081852ff57a79e465f1660577304baead505dd3a48589cf36a657870697265735f6d731b000001ba60d33800"
        );
        token.verify(&public_key_bytes(&operator), 0).unwrap();
    }
}
