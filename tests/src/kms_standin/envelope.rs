//! `CiphertextForRecipient` as KMS builds it: a CMS EnvelopedData (RFC 5652 §6) with one
//! KeyTransRecipientInfo (§6.2.1), the content-encryption key wrapped by RSAES-OAEP with SHA-256
//! and MGF1-SHA-256 (RFC 8017 §7.1, parameters per RFC 4055 §4.1) and the content under
//! AES-256-CBC with PKCS#7 padding (RFC 3565). The default [`Build`] writes KMS's layout: BER
//! indefinite lengths on the outer structures and the encrypted content as a constructed
//! `[0]` of segments (the layout of the answer in AWS's Nitro Enclaves SDK, `tests/cms_test.c`).
//! The other settings write the wrong algorithms and encodings the enclave's parser must refuse.

use std::ops::Range;

use aws_lc_rs::cipher::{AES_256, EncryptionContext, PaddedBlockEncryptingKey, UnboundCipherKey};
use aws_lc_rs::iv::FixedLength;
use aws_lc_rs::rsa::{OAEP_SHA256_MGF1SHA256, OaepPublicEncryptingKey, PublicEncryptingKey};

use super::StandinError;

// The OIDs the enclave's parser also names are its own constants (one definition; the parser's
// are held to a real KMS answer by `kms_aws::a_real_kms_answer_parses`). Only the algorithms it
// must refuse are spelled here.
pub use cosigner_kms::aws::cms::{
    OID_AES256_CBC, OID_DATA, OID_ENVELOPED_DATA as OID_ENVELOPED, OID_MGF1,
    OID_RSAES_OAEP as OID_OAEP, OID_SHA256,
};
/// rsaEncryption, i.e. RSAES-PKCS1-v1_5 as a key transport algorithm (RFC 3370 §4.2.1).
pub const OID_RSA_PKCS1: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
/// id-sha1.
pub const OID_SHA1: &[u8] = &[0x2b, 0x0e, 0x03, 0x02, 0x1a];
/// id-aes128-CBC (RFC 3565 §4.1).
pub const OID_AES128_CBC: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x01, 0x02];

/// Minimal BER/DER writers for the structures above.
pub mod ber {
    /// A definite length (X.690 §8.1.3): short form below 128, else the long form.
    pub fn len(n: usize) -> Vec<u8> {
        if n < 0x80 {
            return vec![n as u8];
        }
        let bytes = n.to_be_bytes();
        let first = bytes
            .iter()
            .position(|b| *b != 0)
            .unwrap_or(bytes.len() - 1);
        let significant = bytes.get(first..).unwrap_or_default();
        let mut out = vec![0x80 | significant.len() as u8];
        out.extend_from_slice(significant);
        out
    }

    /// Tag, definite length, content.
    pub fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        out.extend(len(content.len()));
        out.extend_from_slice(content);
        out
    }

    /// Constructed, indefinite length (BER, X.690 §8.1.3.6), as KMS writes its outer structures.
    pub fn indef(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag, 0x80];
        out.extend_from_slice(content);
        out.extend([0, 0]);
        out
    }

    /// The parts, one after the other.
    pub fn cat(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }
}

/// How to build an EnvelopedData; the default is KMS's layout and algorithms.
#[derive(Debug, Clone)]
pub struct Build {
    /// BER indefinite lengths (KMS) or DER throughout.
    pub ber: bool,
    /// The content split into segments of this size (a constructed `[0]`), or one primitive
    /// `[0]` when `None`.
    pub segment: Option<usize>,
    /// The key transport algorithm's OID.
    pub key_alg_oid: &'static [u8],
    /// Its parameters, DER (`None`: absent, which for OAEP means SHA-1 by default).
    pub oaep_params: Option<Vec<u8>>,
    /// The content encryption algorithm's OID.
    pub content_alg_oid: &'static [u8],
    /// Bytes of the IV written (AES-CBC needs 16).
    pub iv_len: usize,
}

impl Default for Build {
    fn default() -> Self {
        Self {
            ber: true,
            segment: Some(1000),
            key_alg_oid: OID_OAEP,
            oaep_params: Some(oaep_params(OID_SHA256, OID_SHA256)),
            content_alg_oid: OID_AES256_CBC,
            iv_len: 16,
        }
    }
}

/// RSAES-OAEP-params { hashFunc [0] hash, maskGenFunc [1] mgf1(mgf_hash) } (RFC 8017 appendix
/// A.2.1), with NULL algorithm parameters as KMS writes them.
pub fn oaep_params(hash: &[u8], mgf_hash: &[u8]) -> Vec<u8> {
    use ber::*;
    let alg = |oid: &[u8]| tlv(0x30, &cat(&[&tlv(0x06, oid), &[0x05, 0x00]]));
    tlv(
        0x30,
        &cat(&[
            &tlv(0xa0, &alg(hash)),
            &tlv(
                0xa1,
                &tlv(0x30, &cat(&[&tlv(0x06, OID_MGF1), &alg(mgf_hash)])),
            ),
        ]),
    )
}

/// Encrypts `secret` to `recipient_spki` (an RSA SubjectPublicKeyInfo, DER) the way KMS does: a
/// random AES-256 content-encryption key, RSA-OAEP-SHA-256 of it, AES-256-CBC/PKCS#7 of the
/// secret, in a ContentInfo/EnvelopedData with a version-2 KeyTransRecipientInfo whose `rid` is a
/// subjectKeyIdentifier (SHA-256 of the SPKI). Returns the bytes and where the `rid` is in them
/// (the one part a recipient does not interpret).
pub fn envelope(
    recipient_spki: &[u8],
    secret: &[u8],
    b: &Build,
) -> Result<(Vec<u8>, Range<usize>), StandinError> {
    use ber::*;
    let crypto = |what: &'static str| move |_| StandinError::Crypto { what };
    let mut cek = zeroize::Zeroizing::new([0u8; 32]);
    aws_lc_rs::rand::fill(cek.as_mut()).map_err(crypto("random content key"))?;
    let mut iv = [0u8; 16];
    aws_lc_rs::rand::fill(&mut iv).map_err(crypto("random IV"))?;
    let public =
        PublicEncryptingKey::from_der(recipient_spki).map_err(|_| StandinError::RecipientKey {
            reason: "the attestation document's public_key is not an RSA SubjectPublicKeyInfo"
                .to_owned(),
        })?;
    let oaep = OaepPublicEncryptingKey::new(public).map_err(|_| StandinError::RecipientKey {
        reason: "the RSA key cannot be used with OAEP (size)".to_owned(),
    })?;
    let mut encrypted_key = vec![0u8; oaep.ciphertext_size()];
    let n = oaep
        .encrypt(
            &OAEP_SHA256_MGF1SHA256,
            cek.as_ref(),
            &mut encrypted_key,
            None,
        )
        .map_err(|_| StandinError::RecipientKey {
            reason: "RSA-OAEP-SHA-256 encryption to the key failed".to_owned(),
        })?
        .len();
    encrypted_key.truncate(n);
    let aes = UnboundCipherKey::new(&AES_256, cek.as_ref())
        .and_then(PaddedBlockEncryptingKey::cbc_pkcs7)
        .map_err(crypto("AES-256-CBC key"))?;
    let mut content = secret.to_vec();
    aes.less_safe_encrypt(
        &mut content,
        EncryptionContext::Iv128(FixedLength::from(iv)),
    )
    .map_err(crypto("AES-256-CBC"))?;

    let seq = |c: &[u8]| if b.ber { indef(0x30, c) } else { tlv(0x30, c) };
    let ski = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, recipient_spki);
    let mut key_alg = tlv(0x06, b.key_alg_oid);
    if let Some(p) = &b.oaep_params {
        key_alg.extend_from_slice(p);
    }
    let rid = tlv(0x80, ski.as_ref());
    let ktri = tlv(
        0x30,
        &cat(&[
            &tlv(0x02, &[2]),
            &rid,
            &tlv(0x30, &key_alg),
            &tlv(0x04, &encrypted_key),
        ]),
    );
    let recipient_infos = tlv(0x31, &ktri);
    let iv_field = tlv(0x04, iv.get(..b.iv_len.min(16)).unwrap_or_default());
    let content_alg = tlv(0x30, &cat(&[&tlv(0x06, b.content_alg_oid), &iv_field]));
    let encrypted_content = match b.segment {
        Some(size) => {
            let segments: Vec<u8> = content
                .chunks(size.max(1))
                .flat_map(|c| tlv(0x04, c))
                .collect();
            if b.ber {
                indef(0xa0, &segments)
            } else {
                tlv(0xa0, &segments)
            }
        }
        None => tlv(0x80, &content),
    };
    let eci = seq(&cat(&[
        &tlv(0x06, OID_DATA),
        &content_alg,
        &encrypted_content,
    ]));
    let enveloped = seq(&cat(&[&tlv(0x02, &[2]), &recipient_infos, &eci]));
    let explicit = if b.ber {
        indef(0xa0, &enveloped)
    } else {
        tlv(0xa0, &enveloped)
    };
    let out = seq(&cat(&[&tlv(0x06, OID_ENVELOPED), &explicit]));
    // The rid is written once, before any ciphertext, so its first occurrence is the one.
    let start = out
        .windows(rid.len())
        .position(|w| w == rid.as_slice())
        .ok_or(StandinError::Crypto {
            what: "locating the rid",
        })?;
    Ok((out, start..start + rid.len()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::ber::len;

    #[test]
    fn lengths_use_the_shortest_form() {
        assert_eq!(len(0), [0]);
        assert_eq!(len(0x7f), [0x7f]);
        assert_eq!(len(0x80), [0x81, 0x80]);
        assert_eq!(len(0x100), [0x82, 1, 0]);
        assert_eq!(len(0x1_0000), [0x83, 1, 0, 0]);
    }
}
