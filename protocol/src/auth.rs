//! Request authentication: what a registered P-256 key signs, and how it is checked.
//!
//! Every request that uses a share is wrapped in `Request::Authorized` and signed over
//! [`request_digest`], which binds a fresh single-use challenge from the enclave (no replay), the
//! wallet (no reuse across wallets) and the exact encoded inner request (nothing can be changed).
//! Keys are P-256 ECDSA because that is what phone secure elements and passkeys hold; signatures
//! are the fixed 64-byte `r ‖ s` form, normalised to low-S before verification.

use p256::ecdsa::signature::hazmat::{PrehashSigner, PrehashVerifier};
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::error::{ProtocolError, Result};
use crate::id::Epoch;
use crate::wire::{Confirmation, WalletId};

/// Length of an enclave challenge.
pub const CHALLENGE_LEN: usize = 32;

/// A P-256 key that signs and never hands out its secret.
///
/// A phone keeps its device key non-extractable in its secure hardware (Android Keystore,
/// the Secure Enclave), which signs a SHA-256 digest it is given (Android's `NONEwithECDSA`,
/// Apple's `ecdsaSignatureDigestX962SHA256`) and shows the public key; that is all any
/// signature of this protocol needs. [`SigningKey`] is one, for keys kept in files.
pub trait P256Signer: Send + Sync {
    /// The public key.
    fn verifying_key(&self) -> VerifyingKey;

    /// ECDSA over a SHA-256 `digest` already computed (FIPS 186-5 section 6.4.1, steps from 2:
    /// the hash is given). The signature may be high-S; callers normalise it.
    fn sign_prehashed(&self, digest: &[u8; 32]) -> Result<Signature>;

    /// ECDSA-P256-SHA256 over `message`: by default the digest signed by
    /// [`P256Signer::sign_prehashed`].
    fn sign_message(&self, message: &[u8]) -> Result<Signature> {
        self.sign_prehashed(&Sha256::digest(message).into())
    }
}

impl<T: P256Signer + ?Sized> P256Signer for std::sync::Arc<T> {
    fn verifying_key(&self) -> VerifyingKey {
        (**self).verifying_key()
    }
    fn sign_prehashed(&self, digest: &[u8; 32]) -> Result<Signature> {
        (**self).sign_prehashed(digest)
    }
    fn sign_message(&self, message: &[u8]) -> Result<Signature> {
        (**self).sign_message(message)
    }
}

impl P256Signer for SigningKey {
    fn verifying_key(&self) -> VerifyingKey {
        *SigningKey::verifying_key(self)
    }

    fn sign_prehashed(&self, digest: &[u8; 32]) -> Result<Signature> {
        self.sign_prehash(digest)
            .map_err(|e| ProtocolError::encoding(format!("P-256 signing: {e}")))
    }

    /// With aws-lc, several times faster than RustCrypto's P-256 on a signature's hot path.
    fn sign_message(&self, message: &[u8]) -> Result<Signature> {
        let secret = zeroize::Zeroizing::new(self.to_bytes().to_vec());
        let public = SigningKey::verifying_key(self).to_encoded_point(false);
        let pair = aws_lc_rs::signature::EcdsaKeyPair::from_private_key_and_public_key(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &secret,
            public.as_bytes(),
        )
        .map_err(|e| ProtocolError::encoding(format!("P-256 key: {e}")))?;
        let raw = pair
            .sign(&aws_lc_rs::rand::SystemRandom::new(), message)
            .map_err(|e| ProtocolError::encoding(format!("P-256 signing: {e}")))?;
        Signature::from_slice(raw.as_ref())
            .map_err(|e| ProtocolError::encoding(format!("P-256 signing: {e}")))
    }
}

fn framed(hasher: &mut Sha256, part: &[u8]) {
    // Length-prefixed, so no two different part lists hash the same bytes.
    hasher.update((part.len() as u64).to_be_bytes());
    hasher.update(part);
}

/// The bytes whose SHA-256 is [`request_digest`]: length-prefixed domain tag, wallet,
/// challenge and encoded request.
pub fn request_message(wallet_id: &WalletId, challenge: &[u8], request: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + challenge.len() + request.len());
    for part in [
        &b"cosigner-request-v1"[..],
        &wallet_id.0,
        challenge,
        request,
    ] {
        out.extend_from_slice(&(part.len() as u64).to_be_bytes());
        out.extend_from_slice(part);
    }
    out
}

/// The digest a registered key signs for an authorized request (ECDSA over
/// SHA-256([`request_message`])).
pub fn request_digest(wallet_id: &WalletId, challenge: &[u8], request: &[u8]) -> [u8; 32] {
    Sha256::digest(request_message(wallet_id, challenge, request)).into()
}

/// Signs an authorized request (ECDSA-P256-SHA256 over [`request_message`], low-S).
pub fn sign_request(
    key: &(impl P256Signer + ?Sized),
    wallet_id: &WalletId,
    challenge: &[u8],
    request: &[u8],
) -> Result<[u8; 64]> {
    let sig = key.sign_message(&request_message(wallet_id, challenge, request))?;
    let sig = sig.normalize_s().unwrap_or(sig);
    Ok(sig.to_bytes().into())
}

/// Checks an authorized request's signature: ECDSA-P256-SHA256 over [`request_message`], the
/// same statement as [`verify_digest`] over [`request_digest`], verified with aws-lc (several
/// times faster than the pure-Rust path; this is on every signing request).
pub fn verify_request(
    public_key: &[u8],
    wallet_id: &WalletId,
    challenge: &[u8],
    request: &[u8],
    signature: &[u8],
) -> Result<()> {
    let message = request_message(wallet_id, challenge, request);
    verify_message(public_key, &message, signature)
}

/// Checks an ECDSA-P256-SHA256 signature (r‖s) over `message` under a SEC1 key, with aws-lc: the
/// same statement as [`verify_digest`] over the message's SHA-256, several times faster than the
/// pure-Rust path (it runs on every signing request and every receipt).
pub fn verify_message(public_key: &[u8], message: &[u8], signature: &[u8]) -> Result<()> {
    let key = VerifyingKey::from_sec1_bytes(public_key)
        .map_err(|_| ProtocolError::encoding("registered key is not a P-256 point"))?;
    let point = key.to_encoded_point(false);
    aws_lc_rs::signature::UnparsedPublicKey::new(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED,
        point.as_bytes(),
    )
    .verify(message, signature)
    .map_err(|_| ProtocolError::encoding("signature does not verify"))
}

/// The digest both keys sign when they are registered at wallet creation: it binds them to this
/// wallet and to this DKG's transcript.
pub fn registration_digest(
    wallet_id: &WalletId,
    transcript_hash: &[u8],
    device_key: &[u8],
    recovery_key: &[u8],
) -> [u8; 32] {
    let parts = [&wallet_id.0[..], transcript_hash, device_key, recovery_key];
    registration_hash(b"cosigner-registration-v1", parts)
        .finalize()
        .into()
}

/// The hash of a registration digest so far: its tag, then each part framed.
fn registration_hash(tag: &[u8], parts: [&[u8]; 4]) -> Sha256 {
    let mut h = Sha256::new();
    framed(&mut h, tag);
    for part in parts {
        framed(&mut h, part);
    }
    h
}

/// [`registration_digest`] extended with the wallet's terms: its spending policy (TOML text)
/// and network, so the host relaying the registration cannot swap or drop them. Without either
/// it is exactly [`registration_digest`].
pub fn registration_digest_with(
    wallet_id: &WalletId,
    transcript_hash: &[u8],
    device_key: &[u8],
    recovery_key: &[u8],
    policy: Option<&str>,
    network: Option<&str>,
) -> [u8; 32] {
    if policy.is_none() && network.is_none() {
        return registration_digest(wallet_id, transcript_hash, device_key, recovery_key);
    }
    let parts = [&wallet_id.0[..], transcript_hash, device_key, recovery_key];
    let mut h = registration_hash(b"cosigner-registration-v2", parts);
    for part in [policy, network] {
        // Presence, then the text: "absent" and "empty" differ.
        match part {
            Some(text) => {
                framed(&mut h, &[1]);
                framed(&mut h, text.as_bytes());
            }
            None => framed(&mut h, &[0]),
        }
    }
    h.finalize().into()
}

/// What the provider signs (with its attested audit key) when it commits a refreshed epoch: the
/// recovery cosigner commits an epoch only with this receipt, so the two can never commit two
/// different refreshes to one epoch (a client holding the device key could otherwise complete one
/// ceremony at each).
pub fn commit_receipt_digest(
    wallet_id: &WalletId,
    epoch: Epoch,
    transcript_hash: &[u8],
    public_key_package_hash: &[u8],
) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"cosigner/commit-receipt/v1");
    h.update(wallet_id.0);
    h.update(epoch.to_be_bytes());
    for part in [transcript_hash, public_key_package_hash] {
        h.update((part.len() as u32).to_be_bytes());
        h.update(part);
    }
    h.finalize().into()
}

/// What a cosigner signs, with its attested audit key, over its confirmation of a DKG or a
/// refresh: the other cosigner commits only with it. The client relays every ceremony message
/// between the cosigners, so without it a client holding the device key could play the other
/// cosigner's part of a refresh towards one of them, and that cosigner would commit an epoch the
/// real one never took part in (docs/lifecycle.md, "Races and precedence"). The transcript hash
/// already binds the ceremony's tags, parameters and epoch; the sender and wallet are bound again
/// so a signature never stands for another party's confirmation.
pub fn confirmation_digest(wallet_id: &WalletId, confirmation: &Confirmation) -> [u8; 32] {
    let mut h = Sha256::new();
    framed(&mut h, b"cosigner/confirmation/v1");
    framed(&mut h, &wallet_id.0);
    framed(&mut h, &confirmation.from.to_be_bytes());
    framed(&mut h, &confirmation.transcript_hash);
    framed(&mut h, &confirmation.public_key_package_hash);
    h.finalize().into()
}

/// Length of a SEC1 compressed P-256 public key.
pub const P256_KEY_LEN: usize = 33;
/// Length of a fixed-size (r || s) P-256 ECDSA signature.
pub const P256_SIGNATURE_LEN: usize = 64;

/// Checks the sizes of a signed object's P-256 key (named `key_name`) and ECDSA signature,
/// before either is parsed; the reason names what is wrong.
pub fn check_signed_shape(
    key_name: &str,
    key: &[u8],
    signature: &[u8],
) -> std::result::Result<(), String> {
    if key.len() != P256_KEY_LEN {
        return Err(format!(
            "{key_name} is {} bytes, expected {P256_KEY_LEN} (SEC1 compressed P-256)",
            key.len()
        ));
    }
    if signature.len() != P256_SIGNATURE_LEN {
        return Err(format!(
            "signature is {} bytes, expected {P256_SIGNATURE_LEN}",
            signature.len()
        ));
    }
    Ok(())
}

/// Signs a digest; returns `r ‖ s`.
pub fn sign_digest(key: &(impl P256Signer + ?Sized), digest: &[u8; 32]) -> Result<[u8; 64]> {
    let sig = key.sign_prehashed(digest)?;
    // Low-S, so each signature has one spelling (RustCrypto's P-256 does not normalise).
    let sig = sig.normalize_s().unwrap_or(sig);
    Ok(sig.to_bytes().into())
}

/// Checks `signature` (`r ‖ s`) by the SEC1 `public_key` over `digest`.
pub fn verify_digest(public_key: &[u8], digest: &[u8; 32], signature: &[u8]) -> Result<()> {
    let key = VerifyingKey::from_sec1_bytes(public_key)
        .map_err(|_| ProtocolError::encoding("registered key is not a P-256 point"))?;
    let sig = Signature::from_slice(signature)
        .map_err(|_| ProtocolError::encoding("signature is not a 64-byte P-256 r||s"))?;
    let sig = sig.normalize_s().unwrap_or(sig);
    key.verify_prehash(digest, &sig)
        .map_err(|_| ProtocolError::encoding("signature does not verify"))
}

/// SEC1 compressed form of a key, how keys are registered.
pub fn public_key_bytes(key: &(impl P256Signer + ?Sized)) -> Vec<u8> {
    P256Signer::verifying_key(key)
        .to_encoded_point(true)
        .as_bytes()
        .to_vec()
}

/// Normalises a SEC1 P-256 key to its compressed form (so one key has one registered spelling).
pub fn normalise_public_key(sec1: &[u8]) -> Result<Vec<u8>> {
    let key = VerifyingKey::from_sec1_bytes(sec1)
        .map_err(|_| ProtocolError::encoding("not a P-256 public key"))?;
    Ok(key.to_encoded_point(true).as_bytes().to_vec())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn signatures_bind_every_part() {
        let key = SigningKey::random(&mut rand_core::OsRng);
        let pk = public_key_bytes(&key);
        let w = WalletId([1; 16]);
        let d = request_digest(&w, &[2; 32], b"request");
        let sig = sign_digest(&key, &d).unwrap();
        verify_digest(&pk, &d, &sig).unwrap();
        verify_request(&pk, &w, &[2; 32], b"request", &sig).unwrap();
        let fast = sign_request(&key, &w, &[2; 32], b"request").unwrap();
        verify_digest(&pk, &d, &fast).unwrap();
        assert!(verify_request(&pk, &w, &[3; 32], b"request", &sig).is_err());
        for other in [
            request_digest(&WalletId([9; 16]), &[2; 32], b"request"),
            request_digest(&w, &[3; 32], b"request"),
            request_digest(&w, &[2; 32], b"requesT"),
        ] {
            assert!(verify_digest(&pk, &other, &sig).is_err());
        }
        let stranger = public_key_bytes(&SigningKey::random(&mut rand_core::OsRng));
        assert!(verify_digest(&stranger, &d, &sig).is_err());
        assert!(verify_digest(&pk, &d, &sig[..63]).is_err());
        assert!(verify_digest(&[4; 33], &d, &sig).is_err());
    }

    #[test]
    fn registration_binds_the_policy_and_network() {
        let w = WalletId([1; 16]);
        let base = registration_digest(&w, b"transcript", b"device", b"recovery");
        let with = |p: Option<&str>, n: Option<&str>| {
            registration_digest_with(&w, b"transcript", b"device", b"recovery", p, n)
        };
        assert_eq!(with(None, None), base, "no terms: the v1 digest");
        let digests = [
            base,
            with(Some("policy"), Some("regtest")),
            with(Some("policY"), Some("regtest")),
            with(Some("policy"), Some("bitcoin")),
            with(Some("policy"), None),
            with(None, Some("regtest")),
            with(Some(""), None),
            with(Some("regtest"), None),
        ];
        for (i, a) in digests.iter().enumerate() {
            for b in digests.get(i + 1..).unwrap_or_default() {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn keys_normalise_to_compressed() {
        let key = SigningKey::random(&mut rand_core::OsRng);
        let uncompressed = key.verifying_key().to_encoded_point(false);
        assert_eq!(
            normalise_public_key(uncompressed.as_bytes()).unwrap(),
            public_key_bytes(&key)
        );
    }
}
