//! The operator's small PKI for the local attester: a root and one leaf, both P-384 keys inside the
//! PKCS#11 token, certificates built with `x509-cert` and signed by the token.
//!
//! The shapes copy AWS's chain where it matters to a verifier: ECDSA with SHA-384 everywhere, the
//! root a CA with keyCertSign, the leaf not a CA and allowed digitalSignature (RFC 5280 §4.2.1.3,
//! §4.2.1.9), no extendedKeyUsage.

use std::str::FromStr;
use std::time::{Duration, SystemTime};

use cosigner_kms::P384SigningKey;
use der::Encode;
use der::asn1::AnyRef;
use p384::ecdsa::{DerSignature, Signature, VerifyingKey};
use spki::{AlgorithmIdentifier, ObjectIdentifier, SignatureAlgorithmIdentifier};
use x509_cert::builder::{Builder, CertificateBuilder, Profile};
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::SubjectPublicKeyInfoOwned;
use x509_cert::time::{Time, Validity};

use crate::error::{AttestationError, Result};

/// `ecdsa-with-SHA384` (RFC 5758 §3.2): parameters absent.
const ECDSA_WITH_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.3");

fn pki(reason: impl std::fmt::Display) -> AttestationError {
    AttestationError::Pki {
        reason: reason.to_string(),
    }
}

/// A token-held P-384 key seen through the RustCrypto signer traits `x509-cert` builds with.
pub(crate) struct TokenSigner<'k> {
    key: &'k P384SigningKey,
    verifying_key: VerifyingKey,
}

impl<'k> TokenSigner<'k> {
    pub(crate) fn new(key: &'k P384SigningKey) -> Result<Self> {
        let verifying_key = VerifyingKey::from_sec1_bytes(key.public_key_sec1())
            .map_err(|e| pki(format!("token public key is not a P-384 point: {e}")))?;
        Ok(Self { key, verifying_key })
    }

    fn spki(&self) -> Result<SubjectPublicKeyInfoOwned> {
        SubjectPublicKeyInfoOwned::from_key(self.verifying_key).map_err(pki)
    }
}

impl signature::Keypair for TokenSigner<'_> {
    type VerifyingKey = VerifyingKey;

    fn verifying_key(&self) -> VerifyingKey {
        self.verifying_key
    }
}

impl SignatureAlgorithmIdentifier for TokenSigner<'_> {
    type Params = AnyRef<'static>;

    const SIGNATURE_ALGORITHM_IDENTIFIER: AlgorithmIdentifier<AnyRef<'static>> =
        AlgorithmIdentifier {
            oid: ECDSA_WITH_SHA384,
            parameters: None,
        };
}

impl signature::Signer<DerSignature> for TokenSigner<'_> {
    fn try_sign(&self, msg: &[u8]) -> std::result::Result<DerSignature, signature::Error> {
        let raw = self
            .key
            .sign_sha384(msg)
            .map_err(signature::Error::from_source)?;
        Ok(Signature::from_slice(&raw)?.to_der())
    }
}

fn validity(now: SystemTime, lifetime: Duration) -> Result<Validity> {
    // A minute of slack for clocks that disagree a little with the one that issued the chain.
    let not_before = now
        .checked_sub(Duration::from_secs(60))
        .ok_or_else(|| pki("clock before the epoch"))?;
    let not_after = now
        .checked_add(lifetime)
        .ok_or_else(|| pki("validity overflows"))?;
    Ok(Validity {
        not_before: Time::try_from(not_before).map_err(pki)?,
        not_after: Time::try_from(not_after).map_err(pki)?,
    })
}

fn serial() -> Result<SerialNumber> {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| pki("no randomness for a serial number"))?;
    // RFC 5280 §4.1.2.2: positive, at most 20 octets.
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    SerialNumber::new(&bytes).map_err(pki)
}

/// The operator root's subject.
pub(crate) fn root_name() -> Result<Name> {
    Name::from_str("CN=cosigner operator root,O=cosigner local attester").map_err(pki)
}

/// Self-signs the operator root certificate with its token key.
pub(crate) fn issue_root(
    root_key: &P384SigningKey,
    now: SystemTime,
    lifetime: Duration,
) -> Result<Vec<u8>> {
    let signer = TokenSigner::new(root_key)?;
    sign_certificate(
        Profile::Root,
        now,
        lifetime,
        root_name()?,
        signer.spki()?,
        &signer,
    )
}

/// Issues the attestation key's certificate under the operator root.
pub(crate) fn issue_leaf(
    root_key: &P384SigningKey,
    leaf_key: &P384SigningKey,
    module_id: &str,
    now: SystemTime,
    lifetime: Duration,
) -> Result<Vec<u8>> {
    let root_signer = TokenSigner::new(root_key)?;
    let leaf_signer = TokenSigner::new(leaf_key)?;
    let subject =
        Name::from_str(&format!("CN={module_id},O=cosigner local attester")).map_err(pki)?;
    sign_certificate(
        Profile::Leaf {
            issuer: root_name()?,
            enable_key_agreement: false,
            enable_key_encipherment: false,
        },
        now,
        lifetime,
        subject,
        leaf_signer.spki()?,
        &root_signer,
    )
}

/// Builds a certificate with a fresh serial, valid from `now` for `lifetime`, signed in the token
/// by `issuer`; its DER.
fn sign_certificate(
    profile: Profile,
    now: SystemTime,
    lifetime: Duration,
    subject: Name,
    spki: SubjectPublicKeyInfoOwned,
    issuer: &TokenSigner<'_>,
) -> Result<Vec<u8>> {
    CertificateBuilder::new(
        profile,
        serial()?,
        validity(now, lifetime)?,
        subject,
        spki,
        issuer,
    )
    .map_err(pki)?
    .build::<DerSignature>()
    .map_err(pki)?
    .to_der()
    .map_err(pki)
}
