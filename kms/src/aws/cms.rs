//! `CiphertextForRecipient`: the CMS `EnvelopedData` (RFC 5652 §6) in which KMS returns a secret
//! to an attested enclave.
//!
//! When a request carries `Recipient{AttestationDocument, KeyEncryptionAlgorithm:
//! RSAES_OAEP_SHA_256}`, KMS does not return the plaintext. It encrypts it to the RSA public key in
//! the attestation document's `public_key` and returns, base64 in JSON, a `ContentInfo` holding:
//!
//! ```text
//! ContentInfo ::= SEQUENCE {
//!   contentType  id-envelopedData (1.2.840.113549.1.7.3),
//!   content [0] EXPLICIT EnvelopedData }
//! EnvelopedData ::= SEQUENCE {
//!   version 2,
//!   originatorInfo [0] IMPLICIT OPTIONAL,                  -- ignored
//!   recipientInfos SET { KeyTransRecipientInfo },         -- exactly one
//!   encryptedContentInfo SEQUENCE {
//!     contentType id-data (1.2.840.113549.1.7.1),
//!     contentEncryptionAlgorithm { aes256-CBC (2.16.840.1.101.3.4.1.42), IV OCTET STRING (16) },
//!     encryptedContent [0] IMPLICIT OCTET STRING },       -- primitive or constructed
//!   unprotectedAttrs [1] IMPLICIT OPTIONAL }               -- ignored
//! KeyTransRecipientInfo ::= SEQUENCE {
//!   version 2 (rid = subjectKeyIdentifier) or 0 (issuerAndSerialNumber),
//!   rid,                                                   -- not interpreted, see below
//!   keyEncryptionAlgorithm { id-RSAES-OAEP (1.2.840.113549.1.1.7),
//!       RSAES-OAEP-params { hashFunc [0] sha256, maskGenFunc [1] mgf1(sha256) } },
//!   encryptedKey OCTET STRING }                           -- RSA-OAEP(CEK), modulus-sized
//! ```
//!
//! The content-encryption key (CEK) is an AES-256 key; the content is the secret (a data key),
//! AES-256-CBC with PKCS#7 padding. These are the algorithms AWS's own Nitro Enclaves SDK assumes
//! (`aws-nitro-enclaves-sdk-c`, `source/cms.c`: "Always assumes RecipentInfo to have RSA-OAEP with
//! SHA256 for envelope encryption and AES-256-CBC for content encryption") and the ones in the KMS
//! answer its test embeds (`tests/cms_test.c`, parsed by our tests too).
//!
//! **KMS answers in BER, not DER**: indefinite lengths (`30 80 … 00 00`) on the outer structures,
//! and the encrypted content as a constructed, indefinite-length `[0]` of OCTET STRING segments.
//! DER-only parsers (the `der`/`cms` crates) refuse it, so this module walks BER itself: definite
//! and indefinite lengths, constructed strings, a nesting limit, and every length checked against
//! the bytes that are there. Anything unexpected is [`KmsError::Recipient`], never a panic.
//!
//! What is checked: the structure above, the OAEP parameters exactly (SHA-256 and MGF1-SHA-256;
//! absent parameters mean SHA-1 and are refused, as is a non-empty OAEP label), AES-256-CBC with a
//! 16-byte IV, a whole number of blocks. The CEK must decrypt under this enclave's private key
//! (RSA-OAEP fails otherwise: an EnvelopedData for another recipient does not open) and be 32
//! bytes; the content's PKCS#7 padding must be valid. CBC has no integrity of its own: the
//! EnvelopedData is trusted because it arrives over TLS from KMS (TLS ends in the enclave), and the
//! data key it yields is then used for AES-GCM, which fails on any wrong key.
//!
//! The `rid` is not interpreted: AWS does not document how its subjectKeyIdentifier is derived, and
//! the RSA-OAEP decryption already proves the EnvelopedData is for this key.

use aws_lc_rs::cipher::{AES_256, DecryptionContext, PaddedBlockDecryptingKey, UnboundCipherKey};
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::iv::FixedLength;
use aws_lc_rs::rsa::{
    KeySize, OAEP_SHA256_MGF1SHA256, OaepPrivateDecryptingKey, PrivateDecryptingKey,
};
use zeroize::Zeroizing;

use crate::error::{KmsError, Result};

/// `id-envelopedData`, 1.2.840.113549.1.7.3 (DER content octets).
pub const OID_ENVELOPED_DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x03];
/// `id-data`, 1.2.840.113549.1.7.1.
pub const OID_DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01];
/// `id-RSAES-OAEP`, 1.2.840.113549.1.1.7 (RFC 8017 appendix A.2.1).
pub const OID_RSAES_OAEP: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x07];
/// `id-mgf1`, 1.2.840.113549.1.1.8.
pub const OID_MGF1: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x08];
/// `id-pSpecified`, 1.2.840.113549.1.1.9.
pub const OID_P_SPECIFIED: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x09];
/// `id-sha256`, 2.16.840.1.101.3.4.2.1.
pub const OID_SHA256: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01];
/// `aes256-CBC`, 2.16.840.1.101.3.4.1.42.
pub const OID_AES256_CBC: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x01, 0x2a];

/// RSA modulus size of the recipient key, bits. RSA-2048 is what AWS's Nitro Enclaves SDK uses.
pub const RECIPIENT_KEY_BITS: usize = 2048;
/// Length of the content-encryption key: AES-256.
const CEK_LEN: usize = 32;
/// AES block and CBC IV length.
const AES_BLOCK: usize = 16;
/// Largest EnvelopedData accepted (KMS returns at most a 6 KiB secret; this leaves room).
pub const MAX_ENVELOPED_DATA_LEN: usize = 64 * 1024;
/// Deepest nesting walked (the structure above needs 8).
const MAX_DEPTH: usize = 16;

// Universal tags (class universal; bit 6 says constructed).
const INTEGER: u8 = 0x02;
const OCTET_STRING: u8 = 0x04;
const NULL: u8 = 0x05;
const OID: u8 = 0x06;
const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const CONSTRUCTED: u8 = 0x20;

fn bad(reason: impl Into<String>) -> KmsError {
    KmsError::Recipient {
        reason: reason.into(),
    }
}

/// The enclave's ephemeral RSA key pair, whose public half goes into the attestation documents sent
/// as `Recipient`. It lives in memory only, for the life of the process.
pub struct RecipientKey {
    key: OaepPrivateDecryptingKey,
    public_key_der: Vec<u8>,
}

impl std::fmt::Debug for RecipientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecipientKey")
            .field("bits", &self.key.key_size_bits())
            .field("private", &"<redacted>")
            .finish()
    }
}

impl RecipientKey {
    /// A fresh RSA-2048 key pair (aws-lc; takes some tens of milliseconds).
    pub fn generate() -> Result<Self> {
        let private = PrivateDecryptingKey::generate(KeySize::Rsa2048)
            .map_err(|_| bad("cannot generate the RSA recipient key"))?;
        Self::from_private(private)
    }

    /// A recipient key from a PKCS#8 `RSAPrivateKey` (tests; production keys are generated).
    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<Self> {
        let private = PrivateDecryptingKey::from_pkcs8(pkcs8)
            .map_err(|e| bad(format!("not an RSA PKCS#8 private key: {e}")))?;
        Self::from_private(private)
    }

    fn from_private(private: PrivateDecryptingKey) -> Result<Self> {
        if private.key_size_bits() != RECIPIENT_KEY_BITS {
            return Err(bad(format!(
                "the recipient key has {} bits, expected {RECIPIENT_KEY_BITS}",
                private.key_size_bits()
            )));
        }
        let public_key_der = private
            .public_key()
            .as_der()
            .map_err(|_| bad("cannot encode the recipient public key"))?
            .as_ref()
            .to_vec();
        let key = OaepPrivateDecryptingKey::new(private)
            .map_err(|_| bad("cannot set up RSA-OAEP with the recipient key"))?;
        Ok(Self {
            key,
            public_key_der,
        })
    }

    /// The public key as DER `SubjectPublicKeyInfo` (what goes into the attestation document's
    /// `public_key`; 294 bytes for RSA-2048).
    pub fn public_key_der(&self) -> &[u8] {
        &self.public_key_der
    }

    /// Opens a `CiphertextForRecipient`: parses it, decrypts the CEK with RSA-OAEP-SHA-256 and the
    /// content with AES-256-CBC. The result is zeroized on drop.
    pub fn open(&self, enveloped: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        let parts = parse_enveloped_data(enveloped)?;
        if parts.encrypted_key.len() != self.key.key_size_bytes() {
            return Err(bad(format!(
                "the encrypted key is {} bytes, this recipient's modulus is {}",
                parts.encrypted_key.len(),
                self.key.key_size_bytes()
            )));
        }
        let mut buf = Zeroizing::new(vec![0u8; self.key.min_output_size()]);
        let cek = self
            .key
            .decrypt(&OAEP_SHA256_MGF1SHA256, parts.encrypted_key, &mut buf, None)
            .map_err(|_| {
                bad(
                    "RSA-OAEP decryption of the content key failed: not encrypted to this \
                     enclave's key, or altered",
                )
            })?;
        if cek.len() != CEK_LEN {
            return Err(bad(format!(
                "the content key is {} bytes, expected {CEK_LEN} (AES-256)",
                cek.len()
            )));
        }
        decrypt_cbc(cek, &parts.iv, &parts.ciphertext)
    }
}

/// AES-256-CBC decryption with the PKCS#7 padding checked and removed.
fn decrypt_cbc(key: &[u8], iv: &[u8; AES_BLOCK], ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
    if ciphertext.is_empty() || !ciphertext.len().is_multiple_of(AES_BLOCK) {
        return Err(bad(format!(
            "the encrypted content is {} bytes, not a whole number of AES blocks",
            ciphertext.len()
        )));
    }
    let key = UnboundCipherKey::new(&AES_256, key).map_err(|_| bad("bad AES-256 content key"))?;
    let key = PaddedBlockDecryptingKey::cbc_pkcs7(key).map_err(|_| bad("AES-256-CBC setup"))?;
    let mut buf = Zeroizing::new(ciphertext.to_vec());
    let context = DecryptionContext::Iv128(FixedLength::from(*iv));
    let len = key
        .decrypt(&mut buf, context)
        .map_err(|_| bad("AES-256-CBC decryption failed: bad padding (wrong key or altered)"))?
        .len();
    buf.truncate(len);
    Ok(buf)
}

/// The parts of a `CiphertextForRecipient` needed to open it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvelopedParts<'a> {
    /// `KeyTransRecipientInfo.rid`, as encoded (not interpreted).
    pub rid: &'a [u8],
    /// `KeyTransRecipientInfo.encryptedKey`: RSA-OAEP(CEK).
    pub encrypted_key: &'a [u8],
    /// The AES-256-CBC IV.
    pub iv: [u8; AES_BLOCK],
    /// The encrypted content, its segments joined.
    pub ciphertext: Vec<u8>,
}

/// Parses a `CiphertextForRecipient` (BER or DER) and checks its algorithms (module docs).
pub fn parse_enveloped_data(input: &[u8]) -> Result<EnvelopedParts<'_>> {
    if input.len() > MAX_ENVELOPED_DATA_LEN {
        return Err(bad(format!(
            "CiphertextForRecipient is {} bytes, more than the {MAX_ENVELOPED_DATA_LEN} accepted",
            input.len()
        )));
    }
    let mut top = Reader::new(input, 0);
    let content_info = top.expect(SEQUENCE, "ContentInfo")?;
    top.finish("after ContentInfo")?;

    let mut ci = content_info.children()?;
    ci.expect_oid(
        OID_ENVELOPED_DATA,
        "ContentInfo.contentType (id-envelopedData)",
    )?;
    let explicit = ci.expect(0xa0, "ContentInfo.content [0]")?;
    ci.finish("in ContentInfo")?;
    let mut explicit = explicit.children()?;
    let enveloped = explicit.expect(SEQUENCE, "EnvelopedData")?;
    explicit.finish("after EnvelopedData")?;

    let mut ed = enveloped.children()?;
    let version = ed.expect(INTEGER, "EnvelopedData.version")?.small_uint()?;
    if !matches!(version, 0 | 2) {
        return Err(bad(format!(
            "EnvelopedData version {version}, expected 2 (or 0)"
        )));
    }
    let mut next = ed
        .next_element()?
        .ok_or_else(|| bad("EnvelopedData ends early"))?;
    if next.tag == 0xa0 {
        // originatorInfo: not used by key transport; skipped.
        next = ed
            .next_element()?
            .ok_or_else(|| bad("EnvelopedData ends early"))?;
    }
    if next.tag != SET {
        return Err(bad(format!(
            "EnvelopedData.recipientInfos: tag {:#04x}, expected SET",
            next.tag
        )));
    }
    let (rid, encrypted_key) = key_trans_recipient(next)?;

    let eci = ed.expect(SEQUENCE, "EncryptedContentInfo")?;
    // unprotectedAttrs [1] may follow; anything else may not.
    if let Some(extra) = ed.next_element()?
        && extra.tag != 0xa1
    {
        return Err(bad(format!(
            "unexpected element {:#04x} in EnvelopedData",
            extra.tag
        )));
    }
    ed.finish("in EnvelopedData")?;

    let mut eci = eci.children()?;
    eci.expect_oid(OID_DATA, "EncryptedContentInfo.contentType (id-data)")?;
    let alg = eci.expect(SEQUENCE, "contentEncryptionAlgorithm")?;
    let content = eci.expect_any(&[0x80, 0xa0], "encryptedContent [0]")?;
    eci.finish("in EncryptedContentInfo")?;

    let mut alg = alg.children()?;
    alg.expect_oid(OID_AES256_CBC, "contentEncryptionAlgorithm (aes256-CBC)")?;
    let iv = alg
        .expect_any(&[OCTET_STRING, OCTET_STRING | CONSTRUCTED], "CBC IV")?
        .string_bytes()?;
    alg.finish("in contentEncryptionAlgorithm")?;
    let iv: [u8; AES_BLOCK] = iv.as_slice().try_into().map_err(|_| {
        bad(format!(
            "the CBC IV is {} bytes, expected {AES_BLOCK}",
            iv.len()
        ))
    })?;
    let ciphertext = content.string_bytes()?;
    Ok(EnvelopedParts {
        rid,
        encrypted_key,
        iv,
        ciphertext,
    })
}

/// The one `KeyTransRecipientInfo` in `recipientInfos`: its rid and encrypted key, after checking
/// the key-encryption algorithm is RSAES-OAEP with SHA-256 and MGF1-SHA-256.
fn key_trans_recipient<'a>(set: Element<'a>) -> Result<(&'a [u8], &'a [u8])> {
    let mut set = set.children()?;
    let ktri = set.expect(
        SEQUENCE,
        "KeyTransRecipientInfo (only key transport is supported)",
    )?;
    if set.next_element()?.is_some() {
        return Err(bad("more than one RecipientInfo"));
    }
    let mut ktri = ktri.children()?;
    let version = ktri
        .expect(INTEGER, "KeyTransRecipientInfo.version")?
        .small_uint()?;
    let rid = ktri
        .next_element()?
        .ok_or_else(|| bad("KeyTransRecipientInfo ends early"))?;
    match (version, rid.tag) {
        (2, 0x80) | (0, SEQUENCE) => {}
        (v, t) => {
            return Err(bad(format!(
                "KeyTransRecipientInfo version {v} with rid tag {t:#04x}: expected version 2 with \
                 a subjectKeyIdentifier, or 0 with issuerAndSerialNumber"
            )));
        }
    }
    let alg = ktri.expect(SEQUENCE, "keyEncryptionAlgorithm")?;
    let encrypted_key = ktri.expect(OCTET_STRING, "encryptedKey")?;
    ktri.finish("in KeyTransRecipientInfo")?;
    check_oaep_sha256(alg)?;
    Ok((rid.raw, encrypted_key.body()?))
}

/// `id-RSAES-OAEP` with `hashFunc` SHA-256, `maskGenFunc` MGF1 with SHA-256, and no label.
fn check_oaep_sha256(alg: Element<'_>) -> Result<()> {
    let mut alg = alg.children()?;
    alg.expect_oid(OID_RSAES_OAEP, "keyEncryptionAlgorithm (id-RSAES-OAEP)")?;
    let params = alg
        .next_element()?
        .ok_or_else(|| bad("RSAES-OAEP without parameters means SHA-1; expected SHA-256"))?;
    alg.finish("in keyEncryptionAlgorithm")?;
    if params.tag != SEQUENCE {
        return Err(bad("RSAES-OAEP-params is not a SEQUENCE"));
    }
    let mut params = params.children()?;
    let (mut hash, mut mgf) = (false, false);
    while let Some(field) = params.next_element()? {
        let mut inner = field.children()?;
        let value = inner.expect(SEQUENCE, "RSAES-OAEP-params field")?;
        inner.finish("in RSAES-OAEP-params field")?;
        match field.tag {
            0xa0 if !hash && !mgf => {
                check_sha256_identifier(value, "hashFunc")?;
                hash = true;
            }
            0xa1 if !mgf => {
                let mut m = value.children()?;
                m.expect_oid(OID_MGF1, "maskGenFunc (id-mgf1)")?;
                let h = m.expect(SEQUENCE, "MGF1 hash")?;
                m.finish("in maskGenFunc")?;
                check_sha256_identifier(h, "MGF1 hash")?;
                mgf = true;
            }
            0xa2 => {
                let mut p = value.children()?;
                p.expect_oid(OID_P_SPECIFIED, "pSourceFunc (id-pSpecified)")?;
                let label = p.expect(OCTET_STRING, "pSourceFunc label")?;
                p.finish("in pSourceFunc")?;
                if !label.body()?.is_empty() {
                    return Err(bad("RSAES-OAEP with a non-empty label"));
                }
            }
            t => return Err(bad(format!("unexpected RSAES-OAEP-params field {t:#04x}"))),
        }
    }
    if !hash {
        return Err(bad(
            "RSAES-OAEP hashFunc absent (SHA-1 by default); expected SHA-256",
        ));
    }
    if !mgf {
        return Err(bad(
            "RSAES-OAEP maskGenFunc absent (MGF1-SHA-1 by default); expected MGF1-SHA-256",
        ));
    }
    Ok(())
}

/// An `AlgorithmIdentifier` for SHA-256: parameters absent or NULL (RFC 4055 §2.1 allows both).
fn check_sha256_identifier(alg: Element<'_>, what: &str) -> Result<()> {
    let mut alg = alg.children()?;
    alg.expect_oid(OID_SHA256, what)?;
    if let Some(p) = alg.next_element()?
        && !(p.tag == NULL && p.body()?.is_empty())
    {
        return Err(bad(format!(
            "{what}: SHA-256 with parameters other than NULL"
        )));
    }
    alg.finish(what)
}

/// One BER element.
#[derive(Debug, Clone, Copy)]
struct Element<'a> {
    tag: u8,
    /// The content octets, without the end-of-contents marker of an indefinite length.
    content: &'a [u8],
    /// The whole encoding, tag to end.
    raw: &'a [u8],
    depth: usize,
}

impl<'a> Element<'a> {
    fn constructed(&self) -> bool {
        self.tag & CONSTRUCTED != 0
    }

    fn children(&self) -> Result<Reader<'a>> {
        if !self.constructed() {
            return Err(bad(format!("element {:#04x} is not constructed", self.tag)));
        }
        Ok(Reader::new(self.content, self.depth + 1))
    }

    /// The content of a primitive element.
    fn body(&self) -> Result<&'a [u8]> {
        if self.constructed() {
            return Err(bad(format!(
                "element {:#04x} is constructed, expected primitive",
                self.tag
            )));
        }
        Ok(self.content)
    }

    /// A string type's bytes: the content if primitive, else its OCTET STRING segments joined.
    fn string_bytes(&self) -> Result<Vec<u8>> {
        if !self.constructed() {
            return Ok(self.content.to_vec());
        }
        let mut out = Vec::with_capacity(self.content.len());
        let mut parts = self.children()?;
        while let Some(part) = parts.next_element()? {
            if part.tag & !CONSTRUCTED != OCTET_STRING {
                return Err(bad(format!(
                    "segment {:#04x} in a constructed OCTET STRING",
                    part.tag
                )));
            }
            out.extend_from_slice(&part.string_bytes()?);
        }
        Ok(out)
    }

    /// A non-negative INTEGER that fits in a byte.
    fn small_uint(&self) -> Result<u8> {
        match self.body()? {
            [v] if *v < 0x80 => Ok(*v),
            other => Err(bad(format!("unexpected INTEGER of {} bytes", other.len()))),
        }
    }
}

/// Walks the elements of one constructed element's content (or of the input).
struct Reader<'a> {
    rest: &'a [u8],
    depth: usize,
}

impl<'a> Reader<'a> {
    fn new(input: &'a [u8], depth: usize) -> Self {
        Self { rest: input, depth }
    }

    fn next_element(&mut self) -> Result<Option<Element<'a>>> {
        if self.rest.is_empty() {
            return Ok(None);
        }
        let (element, rest) = read_element(self.rest, self.depth)?;
        self.rest = rest;
        Ok(Some(element))
    }

    fn expect(&mut self, tag: u8, what: &str) -> Result<Element<'a>> {
        self.expect_any(&[tag], what)
    }

    fn expect_any(&mut self, tags: &[u8], what: &str) -> Result<Element<'a>> {
        let e = self
            .next_element()?
            .ok_or_else(|| bad(format!("{what}: missing")))?;
        if !tags.contains(&e.tag) {
            return Err(bad(format!(
                "{what}: tag {:#04x}, expected {tags:02x?}",
                e.tag
            )));
        }
        Ok(e)
    }

    fn expect_oid(&mut self, oid: &[u8], what: &str) -> Result<()> {
        let e = self.expect(OID, what)?;
        if e.body()? != oid {
            return Err(bad(format!(
                "{what}: unexpected algorithm or type {}",
                oid_text(e.content)
            )));
        }
        Ok(())
    }

    fn finish(&self, what: &str) -> Result<()> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(bad(format!("{} unexpected bytes {what}", self.rest.len())))
        }
    }
}

/// Reads one element at the start of `input`; returns it and what follows.
fn read_element(input: &[u8], depth: usize) -> Result<(Element<'_>, &[u8])> {
    if depth > MAX_DEPTH {
        return Err(bad("nested too deeply"));
    }
    let (&tag, after_tag) = input
        .split_first()
        .ok_or_else(|| bad("truncated: no tag"))?;
    if tag & 0x1f == 0x1f {
        return Err(bad("multi-byte tags are not used in CMS EnvelopedData"));
    }
    if tag == 0 {
        return Err(bad("unexpected end-of-contents marker"));
    }
    let (&first, mut rest) = after_tag
        .split_first()
        .ok_or_else(|| bad("truncated: no length"))?;
    let definite_len = match first {
        0x80 => None,
        n if n < 0x80 => Some(usize::from(n)),
        0xff => return Err(bad("reserved length octet 0xff")),
        n => {
            let count = usize::from(n & 0x7f);
            if count > 4 {
                return Err(bad("length longer than 4 octets"));
            }
            let (bytes, after) = rest
                .split_at_checked(count)
                .ok_or_else(|| bad("truncated length"))?;
            rest = after;
            Some(
                bytes
                    .iter()
                    .fold(0usize, |acc, b| (acc << 8) | usize::from(*b)),
            )
        }
    };
    let (content, after) = match definite_len {
        Some(len) => rest.split_at_checked(len).ok_or_else(|| {
            bad(format!(
                "truncated: element {tag:#04x} wants {len} bytes, {} left",
                rest.len()
            ))
        })?,
        None => indefinite_content(rest, tag, depth)?,
    };
    let raw = input
        .get(..input.len() - after.len())
        .ok_or_else(|| bad("truncated element"))?;
    Ok((
        Element {
            tag,
            content,
            raw,
            depth,
        },
        after,
    ))
}

/// The content of an indefinite-length element (its children up to the end-of-contents marker
/// 00 00, X.690 8.1.3.6) at the start of `rest`, and what follows the marker.
fn indefinite_content(rest: &[u8], tag: u8, depth: usize) -> Result<(&[u8], &[u8])> {
    if tag & CONSTRUCTED == 0 {
        return Err(bad(format!(
            "indefinite length on primitive element {tag:#04x}"
        )));
    }
    let mut cursor = rest;
    loop {
        if let Some(after) = cursor.strip_prefix(&[0u8, 0u8][..]) {
            let content_len = rest.len() - cursor.len();
            let content = rest.get(..content_len).ok_or_else(|| bad("truncated"))?;
            return Ok((content, after));
        }
        if cursor.is_empty() {
            return Err(bad(format!(
                "truncated: element {tag:#04x} has no end-of-contents"
            )));
        }
        let (_, after) = read_element(cursor, depth + 1)?;
        cursor = after;
    }
}

/// Dotted text of an OID's content octets, for error messages.
fn oid_text(bytes: &[u8]) -> String {
    let mut arcs: Vec<u64> = Vec::new();
    let mut acc: u64 = 0;
    for &b in bytes {
        acc = acc.saturating_mul(128).saturating_add(u64::from(b & 0x7f));
        if b & 0x80 == 0 {
            if arcs.is_empty() {
                let first = (acc / 40).min(2);
                arcs.push(first);
                arcs.push(acc - first * 40);
            } else {
                arcs.push(acc);
            }
            acc = 0;
        }
    }
    arcs.iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(".")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn oid_text_names_oids() {
        assert_eq!(oid_text(OID_ENVELOPED_DATA), "1.2.840.113549.1.7.3");
        assert_eq!(oid_text(OID_AES256_CBC), "2.16.840.1.101.3.4.1.42");
    }

    #[test]
    fn indefinite_lengths_nest() {
        // SEQUENCE(indef) { SEQUENCE(indef) { NULL } } then trailing nothing.
        let input = [0x30, 0x80, 0x30, 0x80, 0x05, 0x00, 0x00, 0x00, 0x00, 0x00];
        let (e, rest) = read_element(&input, 0).unwrap();
        assert!(rest.is_empty());
        assert_eq!(e.content, &input[2..8]);
        let mut r = e.children().unwrap();
        let inner = r.expect(SEQUENCE, "inner").unwrap();
        r.finish("x").unwrap();
        assert_eq!(inner.content, &[0x05, 0x00]);
    }

    #[test]
    fn hostile_lengths_are_errors() {
        for input in [
            &[][..],
            &[0x30],
            &[0x30, 0x81],
            &[0x30, 0x85, 1, 1, 1, 1, 1],
            &[0x30, 0x84, 0xff, 0xff, 0xff, 0xff],
            &[0x30, 0x80],
            &[0x30, 0x80, 0x05, 0x00],
            &[0x04, 0x80, 0x00, 0x00],
            &[0x1f, 0x01, 0x00],
            &[0x30, 0xff],
        ] {
            assert!(read_element(input, 0).is_err(), "{input:02x?}");
        }
        // Deep nesting stops at the limit instead of exhausting the stack.
        let mut deep = Vec::new();
        for _ in 0..10_000 {
            deep.extend([0x30, 0x80]);
        }
        assert!(parse_enveloped_data(&deep).is_err());
    }
}
