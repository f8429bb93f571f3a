//! P-384 ECDSA signing keys that never leave the token.
//!
//! The local attester signs attestation documents (COSE ES384) with such a key. The private key is
//! generated on the token (`C_GenerateKeyPair`, `CKM_EC_KEY_PAIR_GEN`, PKCS#11 v2.40 Current
//! Mechanisms §2.3.5) with `CKA_SENSITIVE = true` and `CKA_EXTRACTABLE = false`; the token then
//! keeps `CKA_ALWAYS_SENSITIVE` and `CKA_NEVER_EXTRACTABLE` true, and refuses to reveal
//! `CKA_VALUE` (v2.40 Base §4.9, private key objects; §5.7 `C_GetAttributeValue` answers
//! `CKR_ATTRIBUTE_SENSITIVE`). Nothing in this module reads secret attributes.
//!
//! Signing uses `CKM_ECDSA`, "ECDSA without hashing" (Current Mechanisms §2.3.6), over a digest
//! computed in software: the token sees 48 bytes. A token-made signature is always `r || s` of
//! 2·nLen bytes, nLen being the byte length of the group order (§2.3.1, "EC Signatures"): 96 bytes
//! for P-384, which is checked.
//!
//! `CKA_EC_POINT` is specified as the DER encoding of an X9.62 ECPoint, i.e. an OCTET STRING
//! wrapping the SEC1 point (Current Mechanisms §2.3.3), and SoftHSM returns it so; other tokens
//! return the bare point. Both are accepted and normalised to the 97-byte uncompressed point.

use std::fmt;
use std::sync::Arc;

use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use sha2::{Digest, Sha384};

use crate::error::{KmsError, Result};
use crate::session::{Ck, Fail, ThreadSession, with_session};
use crate::token::Token;

/// DER of the named-curve OID secp384r1 (1.3.132.0.34), the `CKA_EC_PARAMS` of a P-384 key.
pub const P384_EC_PARAMS: [u8; 7] = [0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
/// Length of an uncompressed SEC1 P-384 point: `0x04 || x || y`.
pub const P384_SEC1_LEN: usize = 97;
/// Length of a P-384 ECDSA signature as `r || s`.
pub const P384_SIGNATURE_LEN: usize = 96;
/// Length of a SHA-384 digest.
pub const SHA384_LEN: usize = 48;
/// Length of the random `CKA_ID` given to a new key pair.
const KEY_ID_LEN: u32 = 16;

/// Protection attributes of a private key, as the token reports them (v2.40 Base §4.9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyProtection {
    /// `CKA_SENSITIVE`: the key value cannot be read in plaintext.
    pub sensitive: bool,
    /// `CKA_EXTRACTABLE`: the key can be wrapped out of the token.
    pub extractable: bool,
    /// `CKA_ALWAYS_SENSITIVE`: `CKA_SENSITIVE` has been true since the key was made.
    pub always_sensitive: bool,
    /// `CKA_NEVER_EXTRACTABLE`: `CKA_EXTRACTABLE` has never been true.
    pub never_extractable: bool,
}

impl KeyProtection {
    /// Sensitive now and always, never extractable: the key has never existed outside the token.
    pub fn never_left_token(&self) -> bool {
        self.sensitive && !self.extractable && self.always_sensitive && self.never_extractable
    }

    /// Sensitive and not extractable now: the token will neither reveal the value nor wrap it
    /// out, and neither can be undone (`CKA_SENSITIVE` can only be set to true, `CKA_EXTRACTABLE`
    /// only to false: PKCS#11 v2.40 Base §4.9, table 25, footnote 11).
    ///
    /// This is what a key *found* on the token must satisfy. `CKA_ALWAYS_SENSITIVE` and
    /// `CKA_NEVER_EXTRACTABLE` are not required of it: a key restored into an HSM from its
    /// vendor's wrapped backup, or unwrapped there deliberately, has them false and is still a key
    /// that cannot leave the token from now on.
    pub fn cannot_leave_token(&self) -> bool {
        self.sensitive && !self.extractable
    }
}

/// A P-384 ECDSA key pair on a token: the private half stays there, the public half is cached.
#[derive(Clone)]
pub struct P384SigningKey {
    /// The private key.
    key: TokenKey,
    public: [u8; P384_SEC1_LEN],
}

/// A key of any kind on a token, found again by its label and `CKA_ID` (shared by every key
/// kind): each thread's session caches its handle, and a stale handle is looked up again, once.
#[derive(Clone)]
pub(crate) struct TokenKey {
    pub(crate) token: Token,
    pub(crate) label: Arc<str>,
    pub(crate) id: Arc<[u8]>,
    /// The kind's lookup by label ([`private_key_template`], the AES key's).
    lookup: fn(&str) -> Vec<Attribute>,
    /// How errors name the kind's key.
    what: &'static str,
}

impl TokenKey {
    /// The key labelled `label` with `CKA_ID` `id`, of the kind `lookup` finds and `what` names.
    pub(crate) fn new(
        token: Token,
        label: &str,
        id: Vec<u8>,
        lookup: fn(&str) -> Vec<Attribute>,
        what: &'static str,
    ) -> Self {
        Self {
            token,
            label: label.into(),
            id: id.into(),
            lookup,
            what,
        }
    }

    /// Runs `op` with this thread's handle for the key; if the cached handle went stale, finds the
    /// key again and runs `op` once more.
    pub(crate) fn with_handle<T>(
        &self,
        ts: &ThreadSession,
        mut op: impl FnMut(ObjectHandle) -> std::result::Result<T, Fail>,
    ) -> std::result::Result<T, Fail> {
        let handle = self.handle(ts)?;
        match op(handle) {
            Err(fail) if fail.is_stale_handle() => {
                ts.forget(&self.id);
                let handle = self.handle(ts)?;
                op(handle)
            }
            other => other,
        }
    }

    /// The key's handle for this thread's session: cached, or found by label and id.
    fn handle(&self, ts: &ThreadSession) -> std::result::Result<ObjectHandle, Fail> {
        if let Some(handle) = ts.cached(&self.label, &self.id) {
            return Ok(handle);
        }
        let mut template = (self.lookup)(&self.label);
        template.push(Attribute::Id(self.id.to_vec()));
        let handle = only_one(
            ts.session.find_objects(&template).ck("C_FindObjects")?,
            &self.label,
            self.what,
        )?;
        ts.remember(&self.label, &self.id, handle);
        Ok(handle)
    }
}

impl Token {
    /// Generates a P-384 ECDSA key pair on the token, both halves labelled `label` and sharing a
    /// random `CKA_ID`. The private key is a token object, private, sensitive, not extractable,
    /// not modifiable, not copyable, and can only sign (no derive, decrypt, unwrap).
    ///
    /// Fails with [`KmsError::KeyExists`] if a private key with this label exists, and refuses (and
    /// destroys) the pair if the token did not apply the protection asked for.
    pub fn generate_p384_signing_key(&self, label: &str) -> Result<P384SigningKey> {
        let existing = private_key_template(label);
        generate_labelled(self, label, &existing, KEY_ID_LEN, |ts, id| {
            let public_template = [
                Attribute::Token(true),
                Attribute::Private(false),
                Attribute::Verify(true),
                Attribute::Encrypt(false),
                Attribute::Wrap(false),
                Attribute::Derive(false),
                Attribute::EcParams(P384_EC_PARAMS.to_vec()),
                Attribute::Label(label.as_bytes().to_vec()),
                Attribute::Id(id.clone()),
            ];
            // Kept in the token: in particular nobody can later turn on CKA_DERIVE (ECDH with the
            // attestation key).
            let mut private_template = kept_in_token().to_vec();
            private_template.extend([
                Attribute::Sign(true),
                Attribute::SignRecover(false),
                Attribute::Decrypt(false),
                Attribute::Unwrap(false),
                Attribute::Derive(false),
                Attribute::Label(label.as_bytes().to_vec()),
                Attribute::Id(id.clone()),
            ]);
            let (public, private) = ts
                .session
                .generate_key_pair(
                    &Mechanism::EccKeyPairGen,
                    &public_template,
                    &private_template,
                )
                .ck("C_GenerateKeyPair")?;
            let point = check_generated(ts, private, "private key", label)
                .and_then(|()| read_public_point(ts, public));
            let point = destroy_unless_ok(ts, &[private, public], point)?;
            Ok(P384SigningKey::remembered(
                self, ts, label, id, private, point,
            ))
        })
    }

    /// Finds the P-384 key pair labelled `label` (its private key, and the public key with the
    /// same `CKA_ID`) and reads the public point. [`KmsError::KeyNotFound`] if there is none,
    /// [`KmsError::KeyNotProtected`] if the private key is not sensitive or is extractable (see
    /// [`KeyProtection::cannot_leave_token`]; [`P384SigningKey::protection`] tells the rest).
    pub fn p384_signing_key(&self, label: &str) -> Result<P384SigningKey> {
        check_key_label(label)?;
        with_session(self, |ts| {
            let s = &ts.session;
            let private = only_one(
                s.find_objects(&private_key_template(label))
                    .ck("C_FindObjects")?,
                label,
                "private key",
            )?;
            let attrs = s
                .get_attributes(private, &[AttributeType::Id, AttributeType::EcParams])
                .ck("C_GetAttributeValue")?;
            let mut id = None;
            let mut params = None;
            for attr in attrs {
                match attr {
                    Attribute::Id(v) => id = Some(v),
                    Attribute::EcParams(v) => params = Some(v),
                    _ => {}
                }
            }
            let wrong = |reason: &str| {
                Fail::Kms(KmsError::WrongKey {
                    label: label.to_owned(),
                    reason: reason.to_owned(),
                })
            };
            let id = id.ok_or_else(|| wrong("private key has no CKA_ID"))?;
            if params.as_deref() != Some(&P384_EC_PARAMS[..]) {
                return Err(wrong("not a key on secp384r1 (CKA_EC_PARAMS)"));
            }
            require_protected(ts, private, label, "P-384 private key")?;
            let public_template = [
                Attribute::Class(ObjectClass::PUBLIC_KEY),
                Attribute::KeyType(KeyType::EC),
                Attribute::Label(label.as_bytes().to_vec()),
                Attribute::Id(id.clone()),
            ];
            let public = only_one(
                s.find_objects(&public_template).ck("C_FindObjects")?,
                label,
                "public key",
            )?;
            let point = read_public_point(ts, public)?;
            Ok(P384SigningKey::remembered(
                self, ts, label, id, private, point,
            ))
        })
    }
}

impl P384SigningKey {
    /// The pair labelled `label` whose private key is `private` (`CKA_ID` `id`) and public point
    /// `public`; this thread's session remembers the private key's handle.
    fn remembered(
        token: &Token,
        ts: &ThreadSession,
        label: &str,
        id: Vec<u8>,
        private: ObjectHandle,
        public: [u8; P384_SEC1_LEN],
    ) -> Self {
        ts.remember(label, &id, private);
        let key = TokenKey::new(
            token.clone(),
            label,
            id,
            private_key_template,
            "private key",
        );
        P384SigningKey { key, public }
    }

    /// The key's `CKA_LABEL`.
    pub fn label(&self) -> &str {
        &self.key.label
    }

    /// The token holding the key.
    pub fn token(&self) -> &Token {
        &self.key.token
    }

    /// The public key as an uncompressed SEC1 point: 97 bytes, starting with `0x04`.
    pub fn public_key_sec1(&self) -> &[u8] {
        &self.public
    }

    /// Signs a SHA-384 digest with `CKM_ECDSA`; returns `r || s` (96 bytes).
    ///
    /// The signature is as the token makes it: not normalised to low-S (SoftHSM's are not).
    pub fn sign_prehash(&self, digest: &[u8; SHA384_LEN]) -> Result<[u8; P384_SIGNATURE_LEN]> {
        let signature = with_session(&self.key.token, |ts| {
            self.key.with_handle(ts, |handle| {
                ts.session
                    .sign(&Mechanism::Ecdsa, handle, digest)
                    .ck("C_Sign")
            })
        })?;
        let got = signature.len();
        signature.try_into().map_err(|_| KmsError::BadSignature {
            expected: P384_SIGNATURE_LEN,
            got,
        })
    }

    /// Hashes `msg` with SHA-384 (in software) and signs the digest with [`Self::sign_prehash`].
    pub fn sign_sha384(&self, msg: &[u8]) -> Result<[u8; P384_SIGNATURE_LEN]> {
        let digest: [u8; SHA384_LEN] = Sha384::digest(msg).into();
        self.sign_prehash(&digest)
    }

    /// Reads the private key's protection attributes from the token.
    pub fn protection(&self) -> Result<KeyProtection> {
        with_session(&self.key.token, |ts| {
            self.key
                .with_handle(ts, |handle| read_protection(ts, handle, "private key"))
        })
    }
}

impl fmt::Debug for P384SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("P384SigningKey")
            .field("token", &self.key.token.label())
            .field("label", &self.key.label)
            .field("id", &hex::encode(&self.key.id))
            .field("public", &hex::encode(self.public))
            .finish()
    }
}

/// Normalises a `CKA_EC_POINT` value to the 97-byte uncompressed P-384 point: accepts the DER
/// OCTET STRING the specification asks for (`04 61 04 ...`, 99 bytes) and the bare point
/// (`04 ...`, 97 bytes) some tokens return.
pub fn normalise_p384_ec_point(raw: &[u8]) -> Result<[u8; P384_SEC1_LEN]> {
    const DER_HEADER: [u8; 2] = [0x04, P384_SEC1_LEN as u8];
    let point = match raw.len() {
        P384_SEC1_LEN => raw,
        len if len == P384_SEC1_LEN + 2 && raw.starts_with(&DER_HEADER) => {
            raw.get(2..).unwrap_or_default()
        }
        len => {
            return Err(KmsError::BadPublicKey {
                reason: format!(
                    "CKA_EC_POINT is {len} bytes; expected a {P384_SEC1_LEN}-byte point, bare or \
                     in a DER OCTET STRING"
                ),
            });
        }
    };
    let point: [u8; P384_SEC1_LEN] = point.try_into().map_err(|_| KmsError::BadPublicKey {
        reason: "CKA_EC_POINT has the wrong length".into(),
    })?;
    if point.first() != Some(&0x04) {
        return Err(KmsError::BadPublicKey {
            reason: "CKA_EC_POINT is not an uncompressed point (no 0x04 prefix)".into(),
        });
    }
    Ok(point)
}

/// Search template for a token's EC private keys labelled `label`.
fn private_key_template(label: &str) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::PRIVATE_KEY),
        Attribute::KeyType(KeyType::EC),
        Attribute::Label(label.as_bytes().to_vec()),
    ]
}

/// Refuses an empty key label (shared by every key kind).
pub(crate) fn check_key_label(label: &str) -> Result<()> {
    if label.is_empty() {
        return Err(KmsError::InvalidLabel {
            label: String::new(),
            reason: "empty",
        });
    }
    Ok(())
}

/// The one object a lookup must find (shared by every key kind).
pub(crate) fn only_one(
    handles: Vec<ObjectHandle>,
    label: &str,
    what: &'static str,
) -> std::result::Result<ObjectHandle, Fail> {
    match handles.as_slice() {
        [one] => Ok(*one),
        [] => Err(Fail::Kms(KmsError::KeyNotFound {
            label: label.to_owned(),
        })),
        many => Err(Fail::Kms(KmsError::KeyAmbiguous {
            label: label.to_owned(),
            what,
            count: many.len(),
        })),
    }
}

fn read_public_point(
    ts: &ThreadSession,
    public: ObjectHandle,
) -> std::result::Result<[u8; P384_SEC1_LEN], Fail> {
    let attrs = ts
        .session
        .get_attributes(public, &[AttributeType::EcPoint])
        .ck("C_GetAttributeValue")?;
    let raw = attrs
        .into_iter()
        .find_map(|a| match a {
            Attribute::EcPoint(v) => Some(v),
            _ => None,
        })
        .ok_or_else(|| KmsError::BadPublicKey {
            reason: "public key has no CKA_EC_POINT".into(),
        })?;
    Ok(normalise_p384_ec_point(&raw)?)
}

/// Refuses a key found on the token that could leave it ([`KeyProtection::cannot_leave_token`]),
/// with [`KmsError::KeyNotProtected`]. Every lookup of an existing key calls it before the key is
/// used: a key imported by hand, or made by another tool with the PKCS#11 defaults (which leave
/// `CKA_EXTRACTABLE` to the token, and SoftHSM makes it true), must not seal or sign.
pub(crate) fn require_protected(
    ts: &ThreadSession,
    key: ObjectHandle,
    label: &str,
    what: &'static str,
) -> std::result::Result<(), Fail> {
    let p = read_protection(ts, key, what)?;
    if p.cannot_leave_token() {
        return Ok(());
    }
    Err(Fail::Kms(KmsError::KeyNotProtected {
        label: label.to_owned(),
        what,
        sensitive: p.sensitive,
        extractable: p.extractable,
    }))
}

/// The template attributes of every private or secret key cosigner-kms generates: a private
/// token object, sensitive and not extractable (it never leaves the token), not modifiable (nobody
/// can later turn on another usage or relabel it) and not copyable (no copy can be made with
/// looser attributes). Each key kind adds its usages, label and `CKA_ID`.
pub(crate) fn kept_in_token() -> [Attribute; 6] {
    [
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Modifiable(false),
        Attribute::Copyable(false),
    ]
}

/// What generating a key of any kind starts with: a label that is not empty and not yet used by
/// this kind (`existing`: the kind's lookup, see [`refuse_existing`]), and a random `CKA_ID` of
/// `id_len` bytes; `make` then creates the key's objects with that id on this thread's session.
pub(crate) fn generate_labelled<T>(
    token: &Token,
    label: &str,
    existing: &[Attribute],
    id_len: u32,
    mut make: impl FnMut(&ThreadSession, Vec<u8>) -> std::result::Result<T, Fail>,
) -> Result<T> {
    check_key_label(label)?;
    with_session(token, |ts| {
        refuse_existing(ts, existing, label)?;
        let id = ts
            .session
            .generate_random_vec(id_len)
            .ck("C_GenerateRandom")?;
        make(ts, id)
    })
}

/// `checked` (what was read back from objects just generated); when it failed, destroys those
/// objects (`made`), so that no half-made key is left behind under the label. Failing to destroy
/// them is secondary to the error being reported. Shared by every key kind.
pub(crate) fn destroy_unless_ok<T>(
    ts: &ThreadSession,
    made: &[ObjectHandle],
    checked: std::result::Result<T, Fail>,
) -> std::result::Result<T, Fail> {
    if checked.is_err() {
        for &object in made {
            let _ = ts.session.destroy_object(object);
        }
    }
    checked
}

/// Refuses to generate a second key under `label`: [`KmsError::KeyExists`] if `template` (the key
/// kind's lookup) finds one. Shared by every key kind.
pub(crate) fn refuse_existing(
    ts: &ThreadSession,
    template: &[Attribute],
    label: &str,
) -> std::result::Result<(), Fail> {
    let found = ts.session.find_objects(template).ck("C_FindObjects")?;
    if found.is_empty() {
        Ok(())
    } else {
        Err(Fail::Kms(KmsError::KeyExists {
            label: label.to_owned(),
        }))
    }
}

/// Checks that the token applied the protection asked for to the key it just generated (a token
/// may silently ignore template attributes): [`KmsError::WrongKey`] unless it never left the
/// token. Shared by every key kind.
pub(crate) fn check_generated(
    ts: &ThreadSession,
    key: ObjectHandle,
    what: &str,
    label: &str,
) -> std::result::Result<(), Fail> {
    let p = read_protection(ts, key, what)?;
    if p.never_left_token() {
        Ok(())
    } else {
        Err(Fail::Kms(KmsError::WrongKey {
            label: label.to_owned(),
            reason: format!("token did not apply the requested protection: {p:?}"),
        }))
    }
}

/// Reads a key's protection attributes (`what` names the key in errors). Shared by every key kind.
pub(crate) fn read_protection(
    ts: &ThreadSession,
    key: ObjectHandle,
    what: &str,
) -> std::result::Result<KeyProtection, Fail> {
    let attrs = ts
        .session
        .get_attributes(
            key,
            &[
                AttributeType::Sensitive,
                AttributeType::Extractable,
                AttributeType::AlwaysSensitive,
                AttributeType::NeverExtractable,
            ],
        )
        .ck("C_GetAttributeValue")?;
    let (mut sensitive, mut extractable, mut always_sensitive, mut never_extractable) =
        (None, None, None, None);
    for attr in attrs {
        match attr {
            Attribute::Sensitive(v) => sensitive = Some(v),
            Attribute::Extractable(v) => extractable = Some(v),
            Attribute::AlwaysSensitive(v) => always_sensitive = Some(v),
            Attribute::NeverExtractable(v) => never_extractable = Some(v),
            _ => {}
        }
    }
    let missing = |name: &str| {
        Fail::Kms(KmsError::Pkcs11 {
            operation: "C_GetAttributeValue",
            reason: format!("the token did not report {name} of a {what}"),
        })
    };
    Ok(KeyProtection {
        sensitive: sensitive.ok_or_else(|| missing("CKA_SENSITIVE"))?,
        extractable: extractable.ok_or_else(|| missing("CKA_EXTRACTABLE"))?,
        always_sensitive: always_sensitive.ok_or_else(|| missing("CKA_ALWAYS_SENSITIVE"))?,
        never_extractable: never_extractable.ok_or_else(|| missing("CKA_NEVER_EXTRACTABLE"))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ec_point_bare_and_wrapped_normalise_to_the_same_point() -> Result<()> {
        let mut bare = vec![0x04];
        bare.extend((1..=96).map(|i| i as u8));
        let mut wrapped = vec![0x04, 0x61];
        wrapped.extend(&bare);
        assert_eq!(normalise_p384_ec_point(&bare)?.to_vec(), bare);
        assert_eq!(normalise_p384_ec_point(&wrapped)?.to_vec(), bare);
        Ok(())
    }

    #[test]
    fn ec_point_of_wrong_shape_is_refused() {
        let mut compressed = vec![0x02];
        compressed.extend([7u8; 48]);
        assert!(normalise_p384_ec_point(&compressed).is_err());
        let mut bad_prefix = vec![0x03];
        bad_prefix.extend([7u8; 96]);
        assert!(normalise_p384_ec_point(&bad_prefix).is_err());
        let mut bad_der = vec![0x04, 0x60, 0x04];
        bad_der.extend([7u8; 96]);
        assert!(normalise_p384_ec_point(&bad_der).is_err());
        assert!(normalise_p384_ec_point(&[]).is_err());
    }
}
