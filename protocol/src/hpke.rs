//! End-to-end encryption of secret ceremony packages: HPKE (RFC 9180) in base mode with
//! DHKEM(X25519, HKDF-SHA256), HKDF-SHA256 and ChaCha20-Poly1305 (suite 0x0020/0x0001/0x0003).
//!
//! The coordinator relays every DKG round-2 package, and those packages are secret shares (FROST
//! KeyGen round 2 step 1 sends them "securely"; frost documents a confidential and authenticated
//! channel). Each is sealed to a public key its recipient broadcast in round 1, so the relay sees
//! only ciphertext.
//!
//! Base mode (RFC 9180 §5.1.1) does not authenticate the sender; the DKG gets its authenticity
//! from the context instead: `info` names the ceremony and the AAD binds sender, recipient and the
//! round-1 transcript (see [`crate::dkg`]). Single-shot use (§5.1, one message per context), so the
//! sequence number never repeats.

use hpke::aead::{AeadTag, ChaCha20Poly1305};
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem as _, OpModeR, OpModeS, Serializable};
use rand_core::{CryptoRng, RngCore};
use zeroize::{Zeroize, Zeroizing};

use crate::error::{ProtocolError, Result};

type Kem = X25519HkdfSha256;
type Kdf = HkdfSha256;
type Aead = ChaCha20Poly1305;

/// Length of a public key and of an encapsulated key (RFC 9180 §7.1: Npk = Nenc = 32 for X25519).
pub const PUBLIC_KEY_LEN: usize = 32;
/// Length of the encapsulated key `enc` (RFC 9180 §7.1: Nenc).
pub const ENC_LEN: usize = 32;
/// Length of the AEAD tag appended to every ciphertext (RFC 9180 §7.3: Nt = 16).
pub const TAG_LEN: usize = 16;
/// Length of a secret key (RFC 9180 §7.1: Nsk = 32).
const SECRET_KEY_LEN: usize = 32;

/// An HPKE private key, used for one ceremony.
///
/// Holds only the 32 key bytes, zeroized on drop; the library's key object is rebuilt for the
/// moment of an `open` and dropped right after. Not `Clone`: there is one copy, owned by the
/// ceremony state that needs it.
pub struct HpkeSecretKey {
    bytes: Zeroizing<[u8; SECRET_KEY_LEN]>,
}

impl HpkeSecretKey {
    /// The matching public key, serialized (32 bytes).
    pub fn public_key(&self) -> Result<Vec<u8>> {
        let sk = self.to_private_key()?;
        Ok(Kem::sk_to_pk(&sk).to_bytes().to_vec())
    }

    fn to_private_key(&self) -> Result<<Kem as hpke::Kem>::PrivateKey> {
        <Kem as hpke::Kem>::PrivateKey::from_bytes(&self.bytes[..]).map_err(hpke_error)
    }
}

impl std::fmt::Debug for HpkeSecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HpkeSecretKey(<redacted>)")
    }
}

/// A fresh key pair: the secret key and the serialized public key (32 bytes).
///
/// Draws `Nsk` = 32 bytes of input keying material and runs `DeriveKeyPair` (RFC 9180 §7.1.3),
/// the same as the library's own generator, so a fixed RNG reproduces the RFC's test vectors.
pub fn generate_keypair(rng: &mut (impl CryptoRng + RngCore)) -> (HpkeSecretKey, Vec<u8>) {
    let mut ikm = Zeroizing::new([0u8; SECRET_KEY_LEN]);
    rng.fill_bytes(&mut ikm[..]);
    let (sk, pk) = Kem::derive_keypair(&ikm[..]);
    let mut bytes = Zeroizing::new([0u8; SECRET_KEY_LEN]);
    let mut serialized = sk.to_bytes();
    bytes.copy_from_slice(&serialized);
    Zeroize::zeroize(&mut serialized[..]);
    (HpkeSecretKey { bytes }, pk.to_bytes().to_vec())
}

/// Seals `plaintext` to `recipient_public_key` (RFC 9180 §6.1 `SealBase`).
///
/// Returns the encapsulated key `enc` (32 bytes) and the ciphertext (plaintext length + 16-byte
/// tag). `info` binds the context the key schedule derives from (§5.1); `aad` is authenticated but
/// not encrypted (§5.2).
pub fn seal(
    recipient_public_key: &[u8],
    info: &[u8],
    aad: &[u8],
    plaintext: &[u8],
    rng: &mut (impl CryptoRng + RngCore),
) -> Result<(Vec<u8>, Vec<u8>)> {
    let pk = <Kem as hpke::Kem>::PublicKey::from_bytes(recipient_public_key).map_err(|e| {
        ProtocolError::Hpke {
            reason: format!("recipient public key: {e}"),
        }
    })?;
    // `single_shot_seal` encrypts a copy of `plaintext` in place, so the only plaintext copy left
    // behind is the caller's.
    let (enc, ciphertext) =
        hpke::single_shot_seal::<Aead, Kdf, Kem, _>(&OpModeS::Base, &pk, info, plaintext, aad, rng)
            .map_err(hpke_error)?;
    Ok((enc.to_bytes().to_vec(), ciphertext))
}

/// Opens a ciphertext sealed to `secret` (RFC 9180 §6.1 `OpenBase`).
///
/// Fails if anything differs from what was sealed: the key, `info`, `aad`, `enc` or a single bit
/// of the ciphertext. The plaintext is returned in a buffer that zeroizes on drop; it is decrypted
/// in place there, so no other copy exists.
pub fn open(
    secret: &HpkeSecretKey,
    info: &[u8],
    aad: &[u8],
    enc: &[u8],
    ciphertext: &[u8],
) -> Result<Zeroizing<Vec<u8>>> {
    let encapped =
        <Kem as hpke::Kem>::EncappedKey::from_bytes(enc).map_err(|e| ProtocolError::Hpke {
            reason: format!("encapsulated key: {e}"),
        })?;
    let body_len = ciphertext
        .len()
        .checked_sub(TAG_LEN)
        .ok_or_else(|| ProtocolError::Hpke {
            reason: format!(
                "ciphertext of {} bytes is shorter than the {TAG_LEN}-byte tag",
                ciphertext.len()
            ),
        })?;
    let (body, tag) = ciphertext.split_at(body_len);
    let tag = AeadTag::<Aead>::from_bytes(tag).map_err(hpke_error)?;
    let sk = secret.to_private_key()?;
    let mut plaintext = Zeroizing::new(body.to_vec());
    hpke::single_shot_open_in_place_detached::<Aead, Kdf, Kem>(
        &OpModeR::Base,
        &sk,
        &encapped,
        info,
        plaintext.as_mut_slice(),
        aad,
        &tag,
    )
    .map_err(hpke_error)?;
    Ok(plaintext)
}

fn hpke_error(e: hpke::HpkeError) -> ProtocolError {
    ProtocolError::Hpke {
        reason: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    /// An "RNG" that replays fixed bytes, to reproduce the RFC's vectors. Test-only.
    struct Replay(Vec<u8>);

    impl RngCore for Replay {
        fn next_u32(&mut self) -> u32 {
            unimplemented!()
        }
        fn next_u64(&mut self) -> u64 {
            unimplemented!()
        }
        fn fill_bytes(&mut self, dest: &mut [u8]) {
            assert!(dest.len() <= self.0.len(), "replay RNG exhausted");
            let rest = self.0.split_off(dest.len());
            dest.copy_from_slice(&self.0);
            self.0 = rest;
        }
        fn try_fill_bytes(&mut self, dest: &mut [u8]) -> std::result::Result<(), rand_core::Error> {
            self.fill_bytes(dest);
            Ok(())
        }
    }
    impl CryptoRng for Replay {}

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    /// RFC 9180 Appendix A.2.1: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20Poly1305, base
    /// mode, sequence number 0 (a single-shot seal).
    #[test]
    fn rfc9180_a21_known_answer() {
        let info = h("4f6465206f6e2061204772656369616e2055726e");
        let ikm_e = h("909a9b35d3dc4713a5e72a4da274b55d3d3821a37e5d099e74a647db583a904b");
        let ikm_r = h("1ac01f181fdf9f352797655161c58b75c656a6cc2716dcb66372da835542e1df");
        let pk_rm = h("4310ee97d88cc1f088a5576c77ab0cf5c3ac797f3d95139c6c84b5429c59662a");
        let enc_expected = h("1afa08d3dec047a643885163f1180476fa7ddb54c6a8029ea33f95796bf2ac4a");
        let aad = h("436f756e742d30");
        let pt = h("4265617574792069732074727574682c20747275746820626561757479");
        let ct_expected = h(
            "1c5250d8034ec2b784ba2cfd69dbdb8af406cfe3ff938e131f0def8c8b60b4db21993c62ce81883d2dd1b51a28",
        );

        let (sk_r, pk_r) = generate_keypair(&mut Replay(ikm_r));
        assert_eq!(pk_r, pk_rm);
        assert_eq!(sk_r.public_key().unwrap(), pk_rm);

        let (enc, ct) = seal(&pk_r, &info, &aad, &pt, &mut Replay(ikm_e)).unwrap();
        assert_eq!(enc, enc_expected);
        assert_eq!(ct, ct_expected);
        assert_eq!(ct.len(), pt.len() + TAG_LEN);
        assert_eq!(open(&sk_r, &info, &aad, &enc, &ct).unwrap().as_slice(), pt);
    }

    #[test]
    fn anything_altered_fails_to_open() {
        let mut rng = rand::thread_rng();
        let (sk, pk) = generate_keypair(&mut rng);
        let (other_sk, _) = generate_keypair(&mut rng);
        let (enc, ct) = seal(&pk, b"info", b"aad", b"secret share", &mut rng).unwrap();
        assert_eq!(
            open(&sk, b"info", b"aad", &enc, &ct).unwrap().as_slice(),
            b"secret share"
        );

        assert!(matches!(
            open(&other_sk, b"info", b"aad", &enc, &ct),
            Err(ProtocolError::Hpke { .. })
        ));
        assert!(open(&sk, b"infx", b"aad", &enc, &ct).is_err());
        assert!(open(&sk, b"info", b"aax", &enc, &ct).is_err());
        for i in 0..ct.len() {
            let mut bad = ct.clone();
            bad[i] ^= 1;
            assert!(
                open(&sk, b"info", b"aad", &enc, &bad).is_err(),
                "bit in byte {i}"
            );
        }
        let mut bad_enc = enc.clone();
        bad_enc[0] ^= 1;
        assert!(open(&sk, b"info", b"aad", &bad_enc, &ct).is_err());
        assert!(open(&sk, b"info", b"aad", &enc[..31], &ct).is_err());
        assert!(open(&sk, b"info", b"aad", &enc, &ct[..TAG_LEN - 1]).is_err());
        assert!(open(&sk, b"info", b"aad", &enc, &ct[..ct.len() - 1]).is_err());
    }

    #[test]
    fn bad_public_keys_are_refused() {
        let mut rng = rand::thread_rng();
        assert!(seal(&[1; 31], b"", b"", b"x", &mut rng).is_err());
        assert!(seal(&[1; 33], b"", b"", b"x", &mut rng).is_err());
        // The all-zero point is of small order: the DH output is zero and RFC 9180 §7.1.4
        // requires the KEM to fail rather than derive a key from it.
        assert!(seal(&[0; 32], b"", b"", b"x", &mut rng).is_err());
    }

    #[test]
    fn secret_key_debug_is_redacted() {
        let (sk, _) = generate_keypair(&mut rand::thread_rng());
        assert_eq!(format!("{sk:?}"), "HpkeSecretKey(<redacted>)");
    }
}
