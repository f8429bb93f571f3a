//! Threshold ECDSA signing: DKLs23 Protocol 3.6 ([eprint 2023/765]) between `threshold` parties,
//! as a state machine that owns nothing but the round's secrets and borrows the key at each step
//! (so a caller can keep the key in one place and the pre-signing state, single-use, in another).
//!
//! ```text
//! start ─► Round 1 ─► round2(all round 1) ─► Round 2 ─► round3(all round 2) ─► Round 3 ─► finish(all round 3) ─► signature
//! ```
//!
//! Rounds 1 and 2 are point-to-point: they travel between two signers over one attested TLS
//! session (client and enclave), never through a third party. Round 3 is a broadcast. The digest
//! signed is whatever the caller passes: the enclave computes it itself from a transaction
//! (`cosigner_eth::UnsignedTx::signing_hash`), never accepting one from a client for a wallet with
//! a policy.
//!
//! [eprint 2023/765]: https://eprint.iacr.org/2023/765

use std::collections::BTreeMap;

use dkls23::protocols::PartyIndex;
use dkls23::protocols::signing::{
    Broadcast3to4, KeepPhase1to2, KeepPhase2to3, SignData, TransmitPhase1to2, TransmitPhase2to3,
    UniqueKeep1to2, UniqueKeep2to3,
};
use k256::Secp256k1;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use super::{EcdsaKey, decode_part, encode_part, from_abort, index_of, party_of, tagged};
use crate::error::{ProtocolError, Result};
use crate::id::PartyId;
use crate::wire::WalletId;

const TAG_SIGN_ID: &str = "cosigner/ecdsa-sign/v1/session";

/// One signer's message of one round.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EcdsaSignMessage {
    /// Sender.
    pub from: PartyId,
    /// 1, 2 or 3.
    pub round: u8,
    /// The round's `dkls23` parts, postcard-encoded.
    pub body: ByteBuf,
}

/// An ECDSA signature with the parity of R's y coordinate (low-S, BIP-62 / EIP-2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecoverableSignature {
    /// r, big-endian.
    pub r: [u8; 32],
    /// s, big-endian, at most n/2.
    pub s: [u8; 32],
    /// Whether R's y coordinate is odd (Ethereum's `y_parity`).
    pub y_odd: bool,
}

enum Stage {
    Round1 {
        unique: UniqueKeep1to2<Secp256k1>,
        kept: BTreeMap<PartyIndex, KeepPhase1to2<Secp256k1>>,
    },
    Round2 {
        unique: UniqueKeep2to3<Secp256k1>,
        kept: BTreeMap<PartyIndex, KeepPhase2to3<Secp256k1>>,
    },
    Round3 {
        x_coord: String,
        ours: Broadcast3to4<Secp256k1>,
    },
    Done,
}

/// One signer's signing session. Its secrets (the instance key and the multiplication state)
/// zeroize on drop; dropping it abandons the session, and nothing of it is ever stored.
pub struct EcdsaSigning {
    me: PartyId,
    signers: Vec<PartyId>,
    data: SignData,
    public_key: Vec<u8>,
    stage: Stage,
}

impl std::fmt::Debug for EcdsaSigning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EcdsaSigning")
            .field("me", &self.me)
            .field("signers", &self.signers)
            .finish_non_exhaustive()
    }
}

/// The DKLs23 session id of one signing: wallet, signers and a fresh nonce the initiator chose.
pub fn sign_id(wallet_id: &WalletId, signers: &[PartyId], nonce: &[u8; 32]) -> Vec<u8> {
    let numbers: Vec<u8> = signers.iter().flat_map(|p| p.get().to_be_bytes()).collect();
    tagged(TAG_SIGN_ID, &[wallet_id.as_slice(), &numbers, nonce]).to_vec()
}

/// Starts signing `message_hash` with `key` among exactly `signers` (threshold many, ours
/// included): our round-1 message.
pub fn start(
    key: &EcdsaKey,
    signers: &[PartyId],
    sign_id: Vec<u8>,
    message_hash: [u8; 32],
) -> Result<(EcdsaSigning, EcdsaSignMessage)> {
    let me = key.party();
    let mut signers = signers.to_vec();
    signers.sort();
    signers.dedup();
    if signers.len() != usize::from(key.threshold()) || !signers.contains(&me) {
        return Err(ProtocolError::Params {
            reason: format!(
                "{} distinct signers including party {me}, expected {}",
                signers.len(),
                key.threshold()
            ),
        });
    }
    let counterparties = signers
        .iter()
        .filter(|p| **p != me)
        .map(|p| index_of(*p))
        .collect::<Result<Vec<_>>>()?;
    let data = SignData {
        sign_id,
        counterparties,
        message_hash,
    };
    let (unique, kept, transmit) = key
        .party
        .sign_phase1(&data)
        .map_err(|a| from_abort(me, &a))?;
    let message = EcdsaSignMessage {
        from: me,
        round: 1,
        body: ByteBuf::from(encode_part(&transmit)?),
    };
    let signing = EcdsaSigning {
        me,
        signers,
        data,
        public_key: key.public_key(),
        stage: Stage::Round1 { unique, kept },
    };
    Ok((signing, message))
}

/// Our round-1 or round-2 message cut into one message per recipient, each carrying only the
/// part addressed to it: what travels sealed to each signer when no single channel joins them (a
/// DAO's mailbox, `crate::dao::ecdsa`). Each piece is what that recipient's
/// [`EcdsaSigning::round2`] / [`EcdsaSigning::round3`] reads of us.
pub fn split(message: &EcdsaSignMessage) -> Result<BTreeMap<PartyId, EcdsaSignMessage>> {
    match message.round {
        1 => split_as::<TransmitPhase1to2>(message, |t| (t.parties.sender, t.parties.receiver)),
        2 => split_as::<TransmitPhase2to3<Secp256k1>>(message, |t| {
            (t.parties.sender, t.parties.receiver)
        }),
        round => Err(ProtocolError::Params {
            reason: format!("round {round} of threshold ECDSA signing is a broadcast"),
        }),
    }
}

fn split_as<T: Serialize + serde::de::DeserializeOwned>(
    message: &EcdsaSignMessage,
    route: impl Fn(&T) -> (PartyIndex, PartyIndex),
) -> Result<BTreeMap<PartyId, EcdsaSignMessage>> {
    let parts: Vec<T> = decode_part(&message.body)?;
    let mut out = BTreeMap::new();
    for part in parts {
        let (from, to) = route(&part);
        let to = party_of(to)?;
        if party_of(from)? != message.from {
            return Err(ProtocolError::Params {
                reason: "a part of our own message names another sender".into(),
            });
        }
        let piece = EcdsaSignMessage {
            from: message.from,
            round: message.round,
            body: ByteBuf::from(encode_part(&vec![part])?),
        };
        if out.insert(to, piece).is_some() {
            return Err(ProtocolError::Params {
                reason: format!("two parts of our own message for party {to}"),
            });
        }
    }
    Ok(out)
}

impl EcdsaSigning {
    /// The other signers' round-1 messages: our round-2 message.
    pub fn round2(
        &mut self,
        key: &EcdsaKey,
        messages: &[EcdsaSignMessage],
    ) -> Result<EcdsaSignMessage> {
        self.same_key(key)?;
        let Stage::Round1 { unique, kept } = std::mem::replace(&mut self.stage, Stage::Done) else {
            return Err(unexpected("round-1 messages"));
        };
        let received: Vec<TransmitPhase1to2> =
            self.addressed_to_us(messages, 1, |t: &TransmitPhase1to2| {
                (t.parties.sender, t.parties.receiver)
            })?;
        let me = self.me;
        let (unique, kept, transmit) = key
            .party
            .sign_phase2(&self.data, unique, kept, &received)
            .map_err(|a| from_abort(me, &a))?;
        self.stage = Stage::Round2 { unique, kept };
        Ok(EcdsaSignMessage {
            from: me,
            round: 2,
            body: ByteBuf::from(encode_part(&transmit)?),
        })
    }

    /// The other signers' round-2 messages: our round-3 broadcast.
    pub fn round3(
        &mut self,
        key: &EcdsaKey,
        messages: &[EcdsaSignMessage],
    ) -> Result<EcdsaSignMessage> {
        self.same_key(key)?;
        let Stage::Round2 { unique, kept } = std::mem::replace(&mut self.stage, Stage::Done) else {
            return Err(unexpected("round-2 messages"));
        };
        let received: Vec<TransmitPhase2to3<Secp256k1>> =
            self.addressed_to_us(messages, 2, |t: &TransmitPhase2to3<Secp256k1>| {
                (t.parties.sender, t.parties.receiver)
            })?;
        let me = self.me;
        let (x_coord, ours) = key
            .party
            .sign_phase3(&self.data, unique, kept, &received)
            .map_err(|a| from_abort(me, &a))?;
        let body = encode_part(&ours)?;
        self.stage = Stage::Round3 { x_coord, ours };
        Ok(EcdsaSignMessage {
            from: me,
            round: 3,
            body: ByteBuf::from(body),
        })
    }

    /// The other signers' round-3 broadcasts: the signature, verified against the group key.
    pub fn finish(
        mut self,
        key: &EcdsaKey,
        messages: &[EcdsaSignMessage],
    ) -> Result<RecoverableSignature> {
        self.same_key(key)?;
        let Stage::Round3 { x_coord, ours } = std::mem::replace(&mut self.stage, Stage::Done)
        else {
            return Err(unexpected("round-3 messages"));
        };
        let mut received = vec![ours];
        for message in self.of_others(messages, 3)? {
            received.push(
                decode_part(&message.body)
                    .map_err(|e| ProtocolError::culprit(message.from, e.to_string()))?,
            );
        }
        let me = self.me;
        // `normalize`: low-S (BIP-62, EIP-2); `sign_phase4` verifies the signature before returning it.
        let (s_hex, recovery_id) = key
            .party
            .sign_phase4(&self.data, &x_coord, &received, true)
            .map_err(|a| from_abort(me, &a))?;
        // Bit 1 of the recovery id says R.x ≥ n: such an r cannot name R, and Ethereum has no
        // `v` for it (probability about 2^-128).
        if recovery_id & 2 != 0 {
            return Err(ProtocolError::Params {
                reason: "R.x exceeds the group order; sign again".into(),
            });
        }
        Ok(RecoverableSignature {
            r: hex32(&x_coord)?,
            s: hex32(&s_hex)?,
            y_odd: recovery_id & 1 == 1,
        })
    }

    /// The messages of `round` from every other signer, one each.
    fn of_others<'a>(
        &self,
        messages: &'a [EcdsaSignMessage],
        round: u8,
    ) -> Result<Vec<&'a EcdsaSignMessage>> {
        let mut seen = BTreeMap::new();
        for m in messages {
            if m.from == self.me || !self.signers.contains(&m.from) {
                return Err(ProtocolError::Params {
                    reason: format!("message from party {}, not another signer", m.from),
                });
            }
            if m.round != round {
                return Err(ProtocolError::culprit(
                    m.from,
                    format!("round {} message in round {round}", m.round),
                ));
            }
            if seen.insert(m.from, m).is_some() {
                return Err(ProtocolError::culprit(m.from, "two messages in one round"));
            }
        }
        if seen.len() + 1 != self.signers.len() {
            return Err(ProtocolError::Params {
                reason: format!(
                    "{} round-{round} messages, expected {}",
                    seen.len(),
                    self.signers.len() - 1
                ),
            });
        }
        Ok(seen.into_values().collect())
    }

    /// The parts of the other signers' messages addressed to us, checked to come from their sender.
    fn addressed_to_us<T: serde::de::DeserializeOwned>(
        &self,
        messages: &[EcdsaSignMessage],
        round: u8,
        route: impl Fn(&T) -> (PartyIndex, PartyIndex),
    ) -> Result<Vec<T>> {
        let me = index_of(self.me)?;
        let mut out = Vec::new();
        for message in self.of_others(messages, round)? {
            let culprit = |reason: String| ProtocolError::culprit(message.from, reason);
            let parts: Vec<T> = decode_part(&message.body).map_err(|e| culprit(e.to_string()))?;
            let mut ours = parts.into_iter().filter(|p| route(p).1 == me);
            let (Some(part), None) = (ours.next(), ours.next()) else {
                return Err(culprit(format!(
                    "not exactly one round-{round} part for party {}",
                    self.me
                )));
            };
            if party_of(route(&part).0)? != message.from {
                return Err(culprit("part names another sender".into()));
            }
            out.push(part);
        }
        Ok(out)
    }

    fn same_key(&self, key: &EcdsaKey) -> Result<()> {
        if key.party() != self.me || key.public_key() != self.public_key {
            return Err(ProtocolError::Params {
                reason: "another key than the session started with".into(),
            });
        }
        Ok(())
    }
}

fn unexpected(what: &str) -> ProtocolError {
    ProtocolError::UnexpectedMessage {
        expected: "the next step of threshold ECDSA signing",
        actual: what.to_string(),
    }
}

fn hex32(text: &str) -> Result<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text, &mut out)
        .map_err(|e| ProtocolError::encoding(format!("dkls23 scalar: {e}")))?;
    Ok(out)
}
