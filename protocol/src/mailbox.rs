//! The mailbox: signed messages that members of a wallet leave for each other at an untrusted
//! host (the parent), so that ceremonies run asynchronously from devices that are online at
//! different times.
//!
//! Every message is an [`Envelope`]: a `topic` (16 bytes naming one conversation, e.g. one DKG or
//! one signing request), the `sender`'s P-256 key (SEC1 compressed), an opaque `body`, and the
//! sender's ECDSA signature over [`Envelope::digest`], which binds all three. The host can drop,
//! delay, reorder and replay envelopes, and it sees who posts to which topic and how much, but it
//! cannot forge or alter one: readers take only envelopes whose signature verifies, whose topic is
//! the one they asked for, and whose sender they expect, and they deduplicate by [`Envelope::id`].
//! Secrets inside a body are the sender's to encrypt (HPKE to the recipient); the mailbox never
//! sees a plaintext secret.
//!
//! Encoding: CBOR in the same versioned wrapper as [`crate::wire`]. [`Envelope::decode`] accepts
//! only the canonical encoding (the bytes must re-encode to themselves) and low-S signatures, so
//! one envelope has exactly one spelling and therefore one [`Envelope::id`]: a host cannot make a
//! replay look new by re-encoding it or by flipping `s` to `n - s`.
//!
//! Host protocol: one frame ([`crate::frame`]) per [`MailboxRequest`], answered by one frame
//! carrying a [`MailboxResponse`]. `Post` answers the envelope's sequence number in its topic
//! (the existing one for a duplicate); `Fetch` answers the envelopes with a sequence number above
//! `after`, in order, at most [`MAX_PAGE`] (and at most a frame's worth) at a time, with `more`
//! set when the topic holds further ones.
//!
//! Members only: the post that founds a topic names the topic's members (`Post::members`: the
//! keys that may read and post there, the founder's among them). After that the host stores a
//! post only if its envelope's sender is a member (and, when the post names members, only if the
//! topic admits no one it does not name: a poster never writes into a topic a stranger founded
//! first), and answers a `Fetch` only if it carries a
//! [`ReadProof`]: a member's signature over the topic and a challenge the host drew for this
//! connection (`Challenge`), so a proof cannot be replayed on another connection. Somebody who
//! merely knows a topic can therefore neither read nor fill it. The host itself still reads every
//! body (it is untrusted: secrets in bodies are HPKE-sealed by their senders), and readers check
//! the member list the host reports (`Messages::members`) against the one they expect, which
//! catches a stranger who founded the topic first with himself among the members.
//!
//! Compatibility: the fields added for this (`members`, `proof`) are omitted from the encoding
//! when empty and default when absent, so requests without them are byte-for-byte what they were.

use p256::ecdsa::Signature;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use sha2::{Digest, Sha256};

use crate::auth::{P256Signer, normalise_public_key, public_key_bytes, sign_digest, verify_digest};
use crate::error::{ProtocolError, Result};
use crate::frame::MAX_FRAME_LEN;
use crate::wire::{self, WireError};

pub use crate::id::Topic;

/// Largest encoded envelope (512 KiB): a whole DKG round of a 64-member wallet fits, and a
/// `Post` carrying one still fits a frame.
pub const MAX_ENVELOPE: usize = 512 * 1024;

/// Most items one `Fetch` returns (a client asking for more gets this many).
pub const MAX_PAGE: u32 = 256;

/// Domain separation of [`Envelope::digest`].
pub const DIGEST_DOMAIN: &[u8] = b"cosigner/mailbox/v1";

/// Length of a SEC1 compressed P-256 key, the only spelling of `sender` accepted.
pub const SENDER_LEN: usize = crate::auth::P256_KEY_LEN;

/// Length of a signature: `r ‖ s`, 32 bytes each.
pub const SIGNATURE_LEN: usize = crate::auth::P256_SIGNATURE_LEN;

/// Domain separation of [`ReadProof::digest`].
pub const READ_DOMAIN: &[u8] = b"cosigner/mailbox/read/v1";

/// Length of a connection's read challenge ([`MailboxResponse::Challenge`]).
pub const CHALLENGE_LEN: usize = 32;

/// Most members one topic may name (a DAO has at most 64 members, plus the provider).
pub const MAX_TOPIC_MEMBERS: usize = 128;

/// A signed message for one topic of the mailbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// The conversation it belongs to (bound by the signature).
    pub topic: Topic,
    /// The sender's P-256 key, SEC1 compressed (33 bytes).
    pub sender: ByteBuf,
    /// What the sender says; opaque to the mailbox.
    pub body: ByteBuf,
    /// ECDSA P-256 over [`Envelope::digest`], `r ‖ s` with low `s` (64 bytes).
    pub signature: ByteBuf,
}

impl Envelope {
    /// What the sender signs: SHA-256 of `"cosigner/mailbox/v1" ‖ topic ‖ u32be(len sender) ‖
    /// sender ‖ u32be(len body) ‖ body`.
    pub fn digest(topic: &Topic, sender: &[u8], body: &[u8]) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(DIGEST_DOMAIN);
        h.update(topic);
        for part in [sender, body] {
            // Both are bounded by MAX_ENVELOPE when they come from a decoded envelope; a longer
            // one (only possible in memory) saturates, which still never verifies a decoded one.
            h.update(u32::try_from(part.len()).unwrap_or(u32::MAX).to_be_bytes());
            h.update(part);
        }
        h.finalize().into()
    }

    /// Signs `body` for `topic` with `key` (the sender is `key`'s public key). Refused when the
    /// envelope would exceed [`MAX_ENVELOPE`].
    pub fn seal(key: &(impl P256Signer + ?Sized), topic: Topic, body: Vec<u8>) -> Result<Envelope> {
        if body.len() > MAX_ENVELOPE {
            return Err(too_large(body.len()));
        }
        let sender = public_key_bytes(key);
        let signature = sign_digest(key, &Self::digest(&topic, &sender, &body))?;
        let envelope = Envelope {
            topic,
            sender: ByteBuf::from(sender),
            body: ByteBuf::from(body),
            signature: ByteBuf::from(signature.to_vec()),
        };
        // The size check on the whole encoding.
        envelope.encode()?;
        Ok(envelope)
    }

    /// Checks the signature: a low-S ECDSA P-256 signature by `sender` (a compressed SEC1 key)
    /// over [`Envelope::digest`] of this topic, sender and body.
    pub fn verify(&self) -> Result<()> {
        self.check_shape()?;
        let normal = normalise_public_key(&self.sender)
            .map_err(|_| refused("sender is not a P-256 public key"))?;
        if normal != self.sender.as_slice() {
            return Err(refused("sender key is not in SEC1 compressed form"));
        }
        let sig = Signature::from_slice(&self.signature)
            .map_err(|_| refused("signature is not a P-256 r||s"))?;
        if sig.normalize_s().is_some() {
            // The high-S twin of a valid signature verifies too; accepting it would give one
            // message two ids.
            return Err(refused("signature is not in low-S form"));
        }
        let digest = Self::digest(&self.topic, &self.sender, &self.body);
        verify_digest(&self.sender, &digest, &self.signature)
            .map_err(|_| refused("signature does not verify under the sender's key"))
    }

    /// The canonical encoding (CBOR in the versioned wrapper); refused over [`MAX_ENVELOPE`].
    pub fn encode(&self) -> Result<Vec<u8>> {
        let bytes = wire::encode(self).map_err(|e| refused(format!("cannot encode: {e}")))?;
        if bytes.len() > MAX_ENVELOPE {
            return Err(too_large(bytes.len()));
        }
        Ok(bytes)
    }

    /// Decodes an envelope: at most [`MAX_ENVELOPE`] bytes, our protocol version, a 33-byte
    /// sender and a 64-byte signature, and exactly the canonical encoding (nothing trailing, no
    /// other spelling). The signature is *not* checked here: call [`Envelope::verify`], or use
    /// [`Envelope::open`], which does both.
    pub fn decode(bytes: &[u8]) -> Result<Envelope> {
        Self::decode_checked(bytes, false)
    }

    /// Decodes an envelope kept in a wallet file by an earlier version: as [`Envelope::decode`],
    /// but at wire version 1 or the current one ([`wire::decode_stored`]), canonical at its own.
    /// The signature is not checked here either.
    pub fn decode_stored(bytes: &[u8]) -> Result<Envelope> {
        Self::decode_checked(bytes, true)
    }

    /// [`Envelope::decode`], or with `stored` [`Envelope::decode_stored`]: the size cap, the
    /// version(s), the shape, and the canonical encoding at the envelope's own version.
    fn decode_checked(bytes: &[u8], stored: bool) -> Result<Envelope> {
        if bytes.len() > MAX_ENVELOPE {
            return Err(too_large(bytes.len()));
        }
        let decoded = if stored {
            wire::decode_stored(bytes)
        } else {
            wire::decode(bytes)
        };
        let envelope: Envelope = decoded.map_err(|e| refused(format!("undecodable: {e}")))?;
        envelope.check_shape()?;
        let canonical = |encoded: Result<Vec<u8>>| encoded.ok().as_deref() == Some(bytes);
        let at_its_version = canonical(wire::encode(&envelope))
            || (stored && canonical(wire::encode_identity(&envelope)));
        if !at_its_version {
            return Err(refused("not in canonical encoding"));
        }
        Ok(envelope)
    }

    /// Decodes, checks that the envelope is for `topic`, and verifies its signature: what a
    /// reader does with every envelope the mailbox hands it.
    pub fn open(bytes: &[u8], topic: &Topic) -> Result<Envelope> {
        let envelope = Self::decode(bytes)?;
        if &envelope.topic != topic {
            return Err(refused(format!(
                "envelope is for topic {}, not {}",
                hex::encode(envelope.topic),
                hex::encode(topic)
            )));
        }
        envelope.verify()?;
        Ok(envelope)
    }

    /// SHA-256 of the canonical encoding: the envelope's identity, what readers and the mailbox
    /// deduplicate by.
    pub fn id(&self) -> [u8; 32] {
        // Encoding byte strings into a Vec cannot fail; the size cap does not apply to the id.
        Sha256::digest(wire::encode(self).unwrap_or_default()).into()
    }

    fn check_shape(&self) -> Result<()> {
        crate::auth::check_signed_shape("sender key", &self.sender, &self.signature)
            .map_err(refused)
    }
}

/// A fresh random topic.
pub fn random_topic() -> Result<Topic> {
    Topic::random()
}

/// Parses a topic written as 32 hex digits.
pub fn parse_topic(hex_text: &str) -> Result<Topic> {
    Topic::from_hex(hex_text)
}

/// A fresh random read challenge (the host draws one per connection).
pub fn random_challenge() -> Result<[u8; CHALLENGE_LEN]> {
    use rand_core::RngCore;
    let mut challenge = [0u8; CHALLENGE_LEN];
    rand_core::OsRng
        .try_fill_bytes(&mut challenge)
        .map_err(|e| refused(format!("no randomness for a challenge: {e}")))?;
    Ok(challenge)
}

/// Checks a topic's member list as a founding post gives it: 1 to [`MAX_TOPIC_MEMBERS`] keys,
/// each a P-256 key in SEC1 compressed form (the one spelling envelopes carry, so that comparing
/// bytes compares keys).
pub fn check_members(members: &[ByteBuf]) -> Result<()> {
    if members.is_empty() || members.len() > MAX_TOPIC_MEMBERS {
        return Err(refused(format!(
            "a topic names 1 to {MAX_TOPIC_MEMBERS} members, this one {}",
            members.len()
        )));
    }
    for m in members {
        if m.len() != SENDER_LEN || normalise_public_key(m).ok().as_deref() != Some(m.as_slice()) {
            return Err(refused(format!(
                "member {} is not a SEC1 compressed P-256 key",
                hex::encode(m)
            )));
        }
    }
    Ok(())
}

/// A member's proof that it may read a topic on one connection: its signature over the topic and
/// the challenge the host drew for that connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadProof {
    /// The reader's P-256 key, SEC1 compressed (33 bytes): one of the topic's members.
    pub reader: ByteBuf,
    /// ECDSA P-256 over [`ReadProof::digest`], `r ‖ s` (64 bytes).
    pub signature: ByteBuf,
}

impl ReadProof {
    /// What the reader signs: SHA-256 of `"cosigner/mailbox/read/v1" ‖ challenge (32) ‖ topic (16)
    /// ‖ reader (33)`. Every part has a fixed length, so the concatenation is unambiguous.
    pub fn digest(challenge: &[u8; CHALLENGE_LEN], topic: &Topic, reader: &[u8]) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(READ_DOMAIN);
        h.update(challenge);
        h.update(topic);
        h.update(reader);
        h.finalize().into()
    }

    /// Signs a read of `topic` on the connection whose challenge is `challenge`.
    pub fn sign(
        key: &(impl P256Signer + ?Sized),
        challenge: &[u8; CHALLENGE_LEN],
        topic: &Topic,
    ) -> Result<ReadProof> {
        let reader = public_key_bytes(key);
        let signature = sign_digest(key, &Self::digest(challenge, topic, &reader))?;
        Ok(ReadProof {
            reader: ByteBuf::from(reader),
            signature: ByteBuf::from(signature.to_vec()),
        })
    }

    /// Checks that `reader` (a compressed P-256 key) signed a read of `topic` under `challenge`.
    pub fn verify(&self, challenge: &[u8; CHALLENGE_LEN], topic: &Topic) -> Result<()> {
        if self.reader.len() != SENDER_LEN
            || normalise_public_key(&self.reader).ok().as_deref() != Some(self.reader.as_slice())
        {
            return Err(refused("the reader is not a SEC1 compressed P-256 key"));
        }
        if self.signature.len() != SIGNATURE_LEN {
            return Err(refused(format!(
                "the read proof's signature is {} bytes, expected {SIGNATURE_LEN}",
                self.signature.len()
            )));
        }
        verify_digest(
            &self.reader,
            &Self::digest(challenge, topic, &self.reader),
            &self.signature,
        )
        .map_err(|_| {
            refused("the read proof does not verify (signed for another topic or connection?)")
        })
    }
}

/// Client → mailbox host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum MailboxRequest {
    /// Store an envelope; answered with [`MailboxResponse::Posted`].
    Post {
        /// The topic; must be the envelope's own.
        topic: Topic,
        /// The encoded [`Envelope`].
        envelope: ByteBuf,
        /// The topic's members (SEC1 compressed P-256 keys, the sender's among them), used only
        /// when this post founds the topic; a host refuses to found a topic without them. Sent
        /// with every post, since a poster cannot know whether it is the first.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        members: Vec<ByteBuf>,
    },
    /// The envelopes of `topic` with a sequence number above `after`; answered with
    /// [`MailboxResponse::Messages`].
    Fetch {
        /// The topic.
        topic: Topic,
        /// The last sequence number already seen (0: from the start).
        after: u64,
        /// At most this many (0 or more than [`MAX_PAGE`]: [`MAX_PAGE`]).
        limit: u32,
        /// A member's proof under this connection's challenge; required by a topic with members.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        proof: Option<ReadProof>,
    },
    /// This connection's read challenge; answered with [`MailboxResponse::Challenge`] (the same
    /// one for every ask on a connection).
    Challenge,
}

/// Mailbox host → client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum MailboxResponse {
    /// The envelope is stored (or was already) under this sequence number of its topic.
    Posted {
        /// 1 for a topic's first envelope, then one more for each new one.
        seq: u64,
    },
    /// A page of envelopes, in sequence order.
    Messages {
        /// They.
        items: Vec<MailboxItem>,
        /// The topic holds more after the last item: fetch again after its `seq`.
        more: bool,
        /// The topic's members as its founding post named them (empty: an unknown topic, or one
        /// founded before topics had members). Readers compare them with the members they
        /// expect.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        members: Vec<ByteBuf>,
    },
    /// The read challenge of this connection, for [`ReadProof::sign`].
    Challenge {
        /// [`CHALLENGE_LEN`] random bytes.
        nonce: ByteBuf,
    },
    /// The request was refused or failed.
    Error(WireError),
}

/// One stored envelope and its place in its topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MailboxItem {
    /// Its sequence number in the topic.
    pub seq: u64,
    /// The encoded [`Envelope`], as posted (unverified: the reader checks it).
    pub envelope: ByteBuf,
}

/// Encodes a request (versioned like [`crate::wire`]); refused over a frame's size.
pub fn encode_request(request: &MailboxRequest) -> Result<Vec<u8>> {
    bounded(wire::encode(request)?)
}

/// Decodes a request: at most a frame's size, our protocol version, nothing trailing.
pub fn decode_request(bytes: &[u8]) -> Result<MailboxRequest> {
    wire::decode(bounded_ref(bytes)?)
}

/// Encodes a response (versioned like [`crate::wire`]); refused over a frame's size.
pub fn encode_response(response: &MailboxResponse) -> Result<Vec<u8>> {
    bounded(wire::encode(response)?)
}

/// Decodes a response: at most a frame's size, our protocol version, nothing trailing.
pub fn decode_response(bytes: &[u8]) -> Result<MailboxResponse> {
    wire::decode(bounded_ref(bytes)?)
}

fn bounded(bytes: Vec<u8>) -> Result<Vec<u8>> {
    bounded_ref(&bytes)?;
    Ok(bytes)
}

fn bounded_ref(bytes: &[u8]) -> Result<&[u8]> {
    if bytes.len() > MAX_FRAME_LEN {
        return Err(ProtocolError::FrameTooLarge {
            max: MAX_FRAME_LEN,
            actual: bytes.len(),
        });
    }
    Ok(bytes)
}

fn refused(reason: impl Into<String>) -> ProtocolError {
    ProtocolError::Envelope {
        reason: reason.into(),
    }
}

fn too_large(len: usize) -> ProtocolError {
    refused(format!(
        "{len} bytes exceeds the {MAX_ENVELOPE}-byte envelope limit"
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;
    use p256::ecdsa::SigningKey;

    fn key() -> SigningKey {
        SigningKey::random(&mut rand_core::OsRng)
    }

    fn sealed() -> (SigningKey, Envelope) {
        let k = key();
        let e = Envelope::seal(&k, Topic([7; 16]), b"round 1 of wallet x".to_vec()).unwrap();
        (k, e)
    }

    #[test]
    fn envelopes_round_trip_and_verify() {
        let (k, e) = sealed();
        assert_eq!(e.sender.as_slice(), public_key_bytes(&k).as_slice());
        e.verify().unwrap();
        let bytes = e.encode().unwrap();
        let back = Envelope::decode(&bytes).unwrap();
        assert_eq!(back, e);
        assert_eq!(back.id(), e.id());
        assert_eq!(e.id(), <[u8; 32]>::from(Sha256::digest(&bytes)));
        assert_eq!(Envelope::open(&bytes, &Topic([7; 16])).unwrap(), e);
        // An empty body is a message too.
        let empty = Envelope::seal(&k, Topic([0; 16]), Vec::new()).unwrap();
        Envelope::open(&empty.encode().unwrap(), &Topic([0; 16])).unwrap();
    }

    #[test]
    fn digest_is_the_documented_concatenation() {
        let topic = Topic([1u8; 16]);
        let mut m = b"cosigner/mailbox/v1".to_vec();
        m.extend_from_slice(topic.as_slice());
        m.extend_from_slice(&[0, 0, 0, 3, 0xaa, 0xbb, 0xcc]);
        m.extend_from_slice(&[0, 0, 0, 2, 0x01, 0x02]);
        assert_eq!(
            Envelope::digest(&topic, &[0xaa, 0xbb, 0xcc], &[1, 2]),
            <[u8; 32]>::from(Sha256::digest(&m))
        );
        // Moving a byte between sender and body changes the digest.
        assert_ne!(
            Envelope::digest(&topic, &[0xaa, 0xbb], &[0xcc, 1, 2]),
            Envelope::digest(&topic, &[0xaa, 0xbb, 0xcc], &[1, 2])
        );
    }

    #[test]
    fn tampered_topic_body_sender_or_signature_is_refused() {
        let (_, e) = sealed();
        let mut topic = e.clone();
        topic.topic.0[0] ^= 1;
        let mut body = e.clone();
        body.body.push(0);
        let mut flipped = e.clone();
        flipped.body[0] ^= 0x80;
        let mut sender = e.clone();
        sender.sender = ByteBuf::from(public_key_bytes(&key()));
        let mut signature = e.clone();
        signature.signature[10] ^= 1;
        let mut zero = e.clone();
        zero.signature = ByteBuf::from(vec![0; 64]);
        for bad in [topic, body, flipped, sender, signature, zero] {
            assert!(bad.verify().is_err(), "{bad:?} verified");
            // Each still decodes (it is well formed) and is refused by `open`.
            let bytes = bad.encode().unwrap();
            assert!(Envelope::open(&bytes, &bad.topic).is_err());
        }
        // Another topic than the one asked for, though validly signed.
        let bytes = e.encode().unwrap();
        let err = Envelope::open(&bytes, &Topic([8; 16])).unwrap_err();
        assert!(err.to_string().contains("topic"), "{err}");
    }

    #[test]
    fn high_s_twins_and_uncompressed_senders_are_refused() {
        let (k, e) = sealed();
        let sig = Signature::from_slice(&e.signature).unwrap();
        // s -> n - s: the same statement, another spelling.
        let (r, s) = sig.split_scalars();
        let twin = Signature::from_scalars(r, -*s).unwrap();
        let mut high = e.clone();
        high.signature = ByteBuf::from(twin.to_bytes().to_vec());
        let err = high.verify().unwrap_err();
        assert!(err.to_string().contains("low-S"), "{err}");

        let mut long = e.clone();
        long.sender = ByteBuf::from(k.verifying_key().to_encoded_point(false).as_bytes());
        assert!(long.verify().is_err());
        assert!(Envelope::decode(&long.encode().unwrap()).is_err());
        let mut not_point = e;
        not_point.sender = ByteBuf::from(vec![2; 33]);
        assert!(not_point.verify().is_err());
    }

    #[test]
    fn oversize_is_refused() {
        let k = key();
        assert!(Envelope::seal(&k, Topic([1; 16]), vec![0; MAX_ENVELOPE + 1]).is_err());
        // Just under the body limit, but the whole envelope is over.
        assert!(Envelope::seal(&k, Topic([1; 16]), vec![0; MAX_ENVELOPE - 10]).is_err());
        let fits = Envelope::seal(&k, Topic([1; 16]), vec![0; MAX_ENVELOPE - 200]).unwrap();
        Envelope::open(&fits.encode().unwrap(), &Topic([1; 16])).unwrap();
        let err = Envelope::decode(&vec![0; MAX_ENVELOPE + 1]).unwrap_err();
        assert!(err.to_string().contains("limit"), "{err}");
        assert!(decode_request(&vec![0; MAX_FRAME_LEN + 1]).is_err());
        assert!(decode_response(&vec![0; MAX_FRAME_LEN + 1]).is_err());
    }

    #[test]
    fn garbage_and_other_spellings_decode_to_errors() {
        let (_, e) = sealed();
        let bytes = e.encode().unwrap();
        for garbage in [&[][..], &[0xff], &[0xa0], &[0x84, 1, 2, 3, 4], &[0xbf; 64]] {
            assert!(Envelope::decode(garbage).is_err());
            assert!(decode_request(garbage).is_err());
            assert!(decode_response(garbage).is_err());
        }
        for cut in 0..bytes.len() {
            assert!(Envelope::decode(&bytes[..cut]).is_err());
        }
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(Envelope::decode(&trailing).is_err());
        for i in 0..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[i] ^= 0x41;
            // Never a panic; whatever still decodes must fail to open or be the very same.
            if let Ok(env) = Envelope::open(&flipped, &e.topic) {
                assert_eq!(env, e);
            }
        }

        // The same fields as a CBOR map in another key order: not the canonical encoding.
        use ciborium::Value;
        let b = |v: &[u8]| Value::Bytes(v.to_vec());
        let reordered = Value::Map(vec![
            (
                Value::Text("v".into()),
                Value::Integer(crate::PROTOCOL_VERSION.into()),
            ),
            (
                Value::Text("body".into()),
                Value::Map(vec![
                    (Value::Text("body".into()), b(&e.body)),
                    (Value::Text("topic".into()), b(e.topic.as_slice())),
                    (Value::Text("sender".into()), b(&e.sender)),
                    (Value::Text("signature".into()), b(&e.signature)),
                ]),
            ),
        ]);
        let mut other = Vec::new();
        ciborium::ser::into_writer(&reordered, &mut other).unwrap();
        assert_ne!(other, bytes);
        let err = Envelope::decode(&other).unwrap_err();
        assert!(err.to_string().contains("canonical"), "{err}");

        // An unknown field.
        let extra = Value::Map(vec![
            (
                Value::Text("v".into()),
                Value::Integer(crate::PROTOCOL_VERSION.into()),
            ),
            (
                Value::Text("body".into()),
                Value::Map(vec![
                    (Value::Text("topic".into()), b(e.topic.as_slice())),
                    (Value::Text("sender".into()), b(&e.sender)),
                    (Value::Text("body".into()), b(&e.body)),
                    (Value::Text("signature".into()), b(&e.signature)),
                    (Value::Text("x".into()), b(&[])),
                ]),
            ),
        ]);
        let mut other = Vec::new();
        ciborium::ser::into_writer(&extra, &mut other).unwrap();
        assert!(Envelope::decode(&other).is_err());
    }

    #[test]
    fn an_envelope_kept_from_version_1_reads_only_as_kept() {
        let (_, e) = sealed();
        let v1 = wire::encode_identity(&e).unwrap();
        assert!(
            Envelope::decode(&v1).is_err(),
            "the live decoder wants this version"
        );
        assert_eq!(Envelope::decode_stored(&v1).unwrap(), e);
        assert_eq!(Envelope::decode_stored(&e.encode().unwrap()).unwrap(), e);
        let mut trailing = v1.clone();
        trailing.push(0);
        assert!(Envelope::decode_stored(&trailing).is_err());
    }

    #[test]
    fn requests_and_responses_round_trip() {
        let (_, e) = sealed();
        let k = key();
        let requests = [
            MailboxRequest::Post {
                topic: e.topic,
                envelope: ByteBuf::from(e.encode().unwrap()),
                members: vec![],
            },
            MailboxRequest::Post {
                topic: e.topic,
                envelope: ByteBuf::from(e.encode().unwrap()),
                members: vec![e.sender.clone(), ByteBuf::from(public_key_bytes(&k))],
            },
            MailboxRequest::Fetch {
                topic: Topic([3; 16]),
                after: 41,
                limit: 10,
                proof: None,
            },
            MailboxRequest::Fetch {
                topic: Topic([3; 16]),
                after: 0,
                limit: 0,
                proof: Some(ReadProof::sign(&k, &[5; 32], &Topic([3; 16])).unwrap()),
            },
            MailboxRequest::Challenge,
        ];
        for r in requests {
            assert_eq!(decode_request(&encode_request(&r).unwrap()).unwrap(), r);
        }
        let responses = [
            MailboxResponse::Posted { seq: 7 },
            MailboxResponse::Messages {
                items: vec![MailboxItem {
                    seq: 1,
                    envelope: ByteBuf::from(vec![1, 2, 3]),
                }],
                more: true,
                members: vec![],
            },
            MailboxResponse::Messages {
                items: vec![],
                more: false,
                members: vec![ByteBuf::from(public_key_bytes(&k))],
            },
            MailboxResponse::Challenge {
                nonce: ByteBuf::from(vec![9; CHALLENGE_LEN]),
            },
            MailboxResponse::Error(WireError::new(wire::ErrorKind::BadRequest, "no")),
        ];
        for r in responses {
            assert_eq!(decode_response(&encode_response(&r).unwrap()).unwrap(), r);
        }
        // A request is not a response.
        let post = encode_request(&MailboxRequest::Fetch {
            topic: Topic([0; 16]),
            after: 0,
            limit: 0,
            proof: None,
        })
        .unwrap();
        assert!(decode_response(&post).is_err());
    }

    /// The requests and responses as they were before topics had members: what older peers send
    /// and expect.
    mod legacy {
        use serde::{Deserialize, Serialize};
        use serde_bytes::ByteBuf;

        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        pub enum MailboxRequest {
            Post {
                #[serde(with = "serde_bytes")]
                topic: [u8; 16],
                envelope: ByteBuf,
            },
            Fetch {
                #[serde(with = "serde_bytes")]
                topic: [u8; 16],
                after: u64,
                limit: u32,
            },
        }

        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        pub struct MailboxItem {
            pub seq: u64,
            pub envelope: ByteBuf,
        }

        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        pub enum MailboxResponse {
            Posted { seq: u64 },
            Messages { items: Vec<MailboxItem>, more: bool },
        }
    }

    #[test]
    fn requests_without_the_new_fields_are_the_old_bytes() {
        let (_, e) = sealed();
        let envelope = ByteBuf::from(e.encode().unwrap());
        // Golden bytes: the old spelling of a fetch, field by field (in the version-2 wrapper).
        let fetch = encode_request(&MailboxRequest::Fetch {
            topic: Topic([3; 16]),
            after: 41,
            limit: 10,
            proof: None,
        })
        .unwrap();
        assert_eq!(
            fetch,
            wire::encode(&legacy::MailboxRequest::Fetch {
                topic: [3; 16],
                after: 41,
                limit: 10
            })
            .unwrap()
        );
        let golden = [
            "a2",                                 // map of 2: the versioned wrapper
            "6176",                               // "v"
            "03",                                 // 3: PROTOCOL_VERSION
            "64626f6479",                         // "body"
            "a1",                                 // map of 1: the variant
            "654665746368",                       // "Fetch"
            "a3",                                 // map of 3: no "proof"
            "65746f706963",                       // "topic"
            "5003030303030303030303030303030303", // 16 bytes
            "656166746572",                       // "after"
            "1829",                               // 41
            "656c696d6974",                       // "limit"
            "0a",                                 // 10
        ]
        .concat();
        assert_eq!(hex::encode(&fetch), golden);
        let post = encode_request(&MailboxRequest::Post {
            topic: e.topic,
            envelope: envelope.clone(),
            members: vec![],
        })
        .unwrap();
        assert_eq!(
            post,
            wire::encode(&legacy::MailboxRequest::Post {
                topic: e.topic.0,
                envelope: envelope.clone()
            })
            .unwrap()
        );
        // An old peer's requests decode here with the new fields empty...
        assert_eq!(
            decode_request(&post).unwrap(),
            MailboxRequest::Post {
                topic: e.topic,
                envelope: envelope.clone(),
                members: vec![]
            }
        );
        // ...and a new response decodes at an old peer, which ignores the members.
        let messages = encode_response(&MailboxResponse::Messages {
            items: vec![MailboxItem {
                seq: 1,
                envelope: envelope.clone(),
            }],
            more: false,
            members: vec![e.sender.clone()],
        })
        .unwrap();
        assert_eq!(
            wire::decode::<legacy::MailboxResponse>(&messages).unwrap(),
            legacy::MailboxResponse::Messages {
                items: vec![legacy::MailboxItem { seq: 1, envelope }],
                more: false
            }
        );
    }

    #[test]
    fn read_proofs_bind_challenge_topic_and_reader() {
        let k = key();
        let challenge = [4u8; CHALLENGE_LEN];
        let topic = Topic([6u8; 16]);
        let proof = ReadProof::sign(&k, &challenge, &topic).unwrap();
        assert_eq!(proof.reader.as_slice(), public_key_bytes(&k).as_slice());
        proof.verify(&challenge, &topic).unwrap();
        // The digest is the documented concatenation.
        let mut m = b"cosigner/mailbox/read/v1".to_vec();
        m.extend_from_slice(&challenge);
        m.extend_from_slice(topic.as_slice());
        m.extend_from_slice(&proof.reader);
        assert_eq!(
            ReadProof::digest(&challenge, &topic, &proof.reader),
            <[u8; 32]>::from(Sha256::digest(&m))
        );
        // Another connection's challenge, another topic, another reader named: refused.
        assert!(proof.verify(&[5; CHALLENGE_LEN], &topic).is_err());
        assert!(proof.verify(&challenge, &Topic([7; 16])).is_err());
        let mut other = proof.clone();
        other.reader = ByteBuf::from(public_key_bytes(&key()));
        assert!(other.verify(&challenge, &topic).is_err());
        let mut long = proof.clone();
        long.reader = ByteBuf::from(k.verifying_key().to_encoded_point(false).as_bytes());
        assert!(long.verify(&challenge, &topic).is_err());
        let mut short = proof;
        short.signature.pop();
        assert!(short.verify(&challenge, &topic).is_err());
        assert_ne!(random_challenge().unwrap(), random_challenge().unwrap());
    }

    #[test]
    fn member_lists_are_checked() {
        let keys: Vec<ByteBuf> = (0..3)
            .map(|_| ByteBuf::from(public_key_bytes(&key())))
            .collect();
        check_members(&keys).unwrap();
        assert!(check_members(&[]).is_err());
        let k = key();
        let uncompressed = ByteBuf::from(k.verifying_key().to_encoded_point(false).as_bytes());
        assert!(check_members(&[uncompressed]).is_err());
        // x = 2^256 - 1 is above the field prime: no point.
        let mut not_point = vec![0xff; 33];
        not_point[0] = 2;
        assert!(check_members(&[ByteBuf::from(not_point)]).is_err());
        let many = vec![keys[0].clone(); MAX_TOPIC_MEMBERS + 1];
        assert!(check_members(&many).is_err());
    }

    #[test]
    fn topics_parse_from_hex() {
        let t = random_topic().unwrap();
        assert_eq!(parse_topic(&hex::encode(t)).unwrap(), t);
        assert_ne!(random_topic().unwrap(), t);
        for bad in ["", "00", &"zz".repeat(16), &"00".repeat(17)] {
            assert!(parse_topic(bad).is_err());
        }
    }
}
