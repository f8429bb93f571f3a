//! Typed identifiers: a party, a share epoch, a wallet, a mailbox topic, a signing session.
//!
//! Each is a newtype over the integer or bytes the wire has always carried (`serde(transparent)`
//! or `try_from`), so the encoding is unchanged (the golden vectors in `protocol/tests/golden`
//! pin it) while the compiler keeps a party number from being passed as an epoch or a topic as a
//! wallet id. Values are checked where they enter: a [`PartyId`] is never 0, whether it comes
//! from a flag, a file or a peer's message.

use std::fmt;

use frost_core::{Ciphersuite, Identifier};
use serde::{Deserialize, Serialize};

use crate::error::{ProtocolError, Result};

/// One party of a wallet: its FROST participant number, 1 or more (RFC 9591 §5: identifiers are
/// distinct non-zero scalars; frost maps the integer `i` to the scalar `i`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u16", into = "u16")]
pub struct PartyId(u16);

impl PartyId {
    /// Shard A: the user's device.
    pub const DEVICE: PartyId = PartyId(1);
    /// Shard B: the provider's cosigner.
    pub const PROVIDER: PartyId = PartyId(2);
    /// Shard C: the recovery cosigner.
    pub const RECOVERY: PartyId = PartyId(3);

    /// The party numbered `number`; 0 is refused.
    pub fn new(number: u16) -> Result<Self> {
        if number == 0 {
            return Err(ProtocolError::Params {
                reason: "party number 0 is not a valid FROST identifier (it must be 1..)".into(),
            });
        }
        Ok(Self(number))
    }

    /// The party's number.
    pub const fn get(self) -> u16 {
        self.0
    }

    /// The parties numbered `first..=last` (0 left out), in order.
    pub fn range(first: u16, last: u16) -> impl Iterator<Item = PartyId> {
        (first.max(1)..=last).map(PartyId)
    }

    /// Big-endian bytes, how transcripts and AADs bind it.
    pub const fn to_be_bytes(self) -> [u8; 2] {
        self.0.to_be_bytes()
    }

    /// The party's FROST identifier. frost refuses only 0, which [`PartyId::new`] already
    /// refused, so this does not fail; it stays a `Result` rather than hide a panic.
    pub fn identifier<C: Ciphersuite>(self) -> Result<Identifier<C>> {
        Identifier::try_from(self.0).map_err(|_| ProtocolError::Params {
            reason: format!("party number {} is not a valid FROST identifier", self.0),
        })
    }
}

impl TryFrom<u16> for PartyId {
    type Error = ProtocolError;
    fn try_from(number: u16) -> Result<Self> {
        Self::new(number)
    }
}

impl From<PartyId> for u16 {
    fn from(party: PartyId) -> u16 {
        party.0
    }
}

// Forwards the formatter, so width and fill apply (store keys spell parties `{:05}`).
impl From<PartyId> for usize {
    fn from(party: PartyId) -> usize {
        usize::from(party.0)
    }
}

/// A party is its number: `party == 2` reads as it means.
impl PartialEq<u16> for PartyId {
    fn eq(&self, number: &u16) -> bool {
        self.0 == *number
    }
}

impl fmt::Display for PartyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

// The bare number: messages list parties as `[1, 3]`, in the user's terms.
impl fmt::Debug for PartyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl std::str::FromStr for PartyId {
    type Err = ProtocolError;
    fn from_str(text: &str) -> Result<Self> {
        let number = text
            .trim()
            .parse::<u16>()
            .map_err(|e| ProtocolError::Params {
                reason: format!("party number {text:?}: {e}"),
            })?;
        Self::new(number)
    }
}

/// A share epoch: 0 at creation, one more with every refresh (the address never changes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Epoch(pub u64);

impl Epoch {
    /// The epoch a wallet is created at.
    pub const GENESIS: Epoch = Epoch(0);

    /// The epoch a refresh of this one produces; `None` past `u64::MAX` (never reached, but a
    /// hostile peer's number is not trusted to stay below it).
    pub fn checked_next(self) -> Option<Epoch> {
        self.0.checked_add(1).map(Epoch)
    }

    /// As [`Epoch::checked_next`], staying at `u64::MAX` (where a comparison with the real
    /// next epoch then fails instead of wrapping to 0).
    pub fn saturating_next(self) -> Epoch {
        Epoch(self.0.saturating_add(1))
    }

    /// The number.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// Big-endian bytes, how transcripts and signed digests bind it.
    pub const fn to_be_bytes(self) -> [u8; 8] {
        self.0.to_be_bytes()
    }
}

// Forwards the formatter (not `write!`), so width and fill apply: store keys spell epochs
// `{:020}` and a typed epoch must spell them the same.
impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// Sixteen random bytes naming one thing, written as 32 lowercase hex digits where users see it.
macro_rules! id16 {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(#[serde(with = "serde_bytes")] pub [u8; 16]);

        impl $name {
            /// Lowercase hex, how users see it.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }

            /// Parses 32 hex digits.
            pub fn from_hex(text: &str) -> Result<Self> {
                from_hex(text.trim(), $what).map(Self)
            }

            /// A fresh one from the operating system's randomness.
            pub fn random() -> Result<Self> {
                random16($what).map(Self)
            }

            /// The bytes.
            pub fn as_bytes(&self) -> &[u8; 16] {
                &self.0
            }

            /// The bytes, as a slice (how stores and hashes take them).
            pub fn as_slice(&self) -> &[u8] {
                &self.0
            }

            /// The bytes, copied.
            pub fn to_vec(&self) -> Vec<u8> {
                self.0.to_vec()
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.to_hex())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl AsRef<[u8]> for $name {
            fn as_ref(&self) -> &[u8] {
                &self.0
            }
        }

        impl TryFrom<&[u8]> for $name {
            type Error = ProtocolError;
            fn try_from(bytes: &[u8]) -> Result<Self> {
                <[u8; 16]>::try_from(bytes).map(Self).map_err(|_| {
                    ProtocolError::encoding(format!(
                        "{} is {} bytes, expected 16",
                        $what,
                        bytes.len()
                    ))
                })
            }
        }
    };
}

id16!(
    /// A wallet's identifier: 16 random bytes chosen by the client that creates it.
    WalletId,
    "wallet id"
);
id16!(
    /// One conversation in the mailbox (one ceremony): 16 random bytes.
    Topic,
    "topic"
);
id16!(
    /// One signing session at a cosigner: drawn by the cosigner when it commits its nonces,
    /// named by the client when it asks for the share.
    SessionId,
    "session id"
);

fn from_hex(text: &str, what: &str) -> Result<[u8; 16]> {
    let bytes = hex::decode(text).map_err(|e| ProtocolError::encoding(format!("{what}: {e}")))?;
    bytes.try_into().map_err(|b: Vec<u8>| {
        ProtocolError::encoding(format!("{what} is {} bytes, expected 16", b.len()))
    })
}

fn random16(what: &str) -> Result<[u8; 16]> {
    use rand_core::RngCore;
    let mut bytes = [0u8; 16];
    rand_core::OsRng
        .try_fill_bytes(&mut bytes)
        .map_err(|e| ProtocolError::Refused {
            reason: format!("no randomness for a {what}: {e}"),
        })?;
    Ok(bytes)
}

/// Party `n` in unit tests, where `n` is a literal known not to be 0.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) fn pid(n: u16) -> PartyId {
    PartyId::new(n).unwrap()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn party_zero_is_refused_everywhere_it_enters() {
        assert!(PartyId::new(0).is_err());
        assert!("0".parse::<PartyId>().is_err());
        let mut zero = Vec::new();
        ciborium::into_writer(&0u16, &mut zero).unwrap();
        assert!(ciborium::from_reader::<PartyId, _>(zero.as_slice()).is_err());
    }

    #[test]
    fn ids_encode_as_the_plain_values_they_wrap() {
        let mut a = Vec::new();
        let mut b = Vec::new();
        ciborium::into_writer(&PartyId::RECOVERY, &mut a).unwrap();
        ciborium::into_writer(&3u16, &mut b).unwrap();
        assert_eq!(a, b);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        ciborium::into_writer(&Topic([7; 16]), &mut a).unwrap();
        ciborium::into_writer(&serde_bytes::Bytes::new(&[7; 16]), &mut b).unwrap();
        assert_eq!(a, b);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        ciborium::into_writer(&Epoch(9), &mut a).unwrap();
        ciborium::into_writer(&9u64, &mut b).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn numbers_format_as_the_integers_they_wrap() {
        assert_eq!(format!("{:020}", Epoch(5)), format!("{:020}", 5u64));
        assert_eq!(format!("{:05}", PartyId::RECOVERY), "00003");
    }

    #[test]
    fn hex_round_trips_and_wrong_lengths_are_refused() {
        let topic = Topic::random().unwrap();
        assert_eq!(Topic::from_hex(&topic.to_hex()).unwrap(), topic);
        assert!(Topic::from_hex("00ff").is_err());
        assert!(SessionId::try_from(&[0u8; 15][..]).is_err());
    }
}
