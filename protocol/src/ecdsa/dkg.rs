//! The threshold ECDSA DKG: DKLs23's four phases ([eprint 2023/602] Protocol 9.1 with the
//! zero-sharing and multiplication setups of [eprint 2023/765] Functionalities 3.4 and 3.5) as
//! relay rounds with sealed point-to-point parts and a confirmation.
//!
//! ```text
//! start ─► Hello ─► handle_hellos ─► Round 1 ─► handle_round(1) ─► Round 2 ─► handle_round(2)
//!   (HPKE key)        (sealed polynomial        (commitments to the public    ─► Round 3 ─► handle_round(3)
//!                      fragments)                share and the seeds)          (openings, OT setup)
//!                                                                  ─► Confirmation ─► handle_confirmations ─► Output
//! ```
//!
//! Each round's commitments are sent in the round before their openings, as Protocol 9.1 orders
//! them, so no party picks its contribution after seeing another's. Each step consumes the state.
//!
//! [eprint 2023/602]: https://eprint.iacr.org/2023/602
//! [eprint 2023/765]: https://eprint.iacr.org/2023/765

use std::collections::BTreeMap;

use dkls23::DkgSession;
use dkls23::protocols::Parameters;
use dkls23::protocols::dkg::{
    BroadcastDerivationPhase2to4, BroadcastDerivationPhase3to4, ProofCommitment,
    TransmitInitMulPhase3to4, TransmitInitZeroSharePhase2to4, TransmitInitZeroSharePhase3to4,
};

use super::engine::{Engine, Phase4, Session};
use k256::Secp256k1;
use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use sha2::{Digest, Sha256};

use super::{EcdsaKey, EcdsaPublic, decode_part, encode_part, index_of, party_of, tagged};
use crate::error::{ProtocolError, Result};
use crate::hpke::{self, HpkeSecretKey};
use crate::id::{Epoch, PartyId};
use crate::wire::{Confirmation, DkgParams, SealedPackage, WalletId};

/// Domain tags of the threshold ECDSA DKG.
const TAG_SESSION: &str = "cosigner/ecdsa-dkg/v1/session";
const TAG_INFO: &str = "cosigner/ecdsa-dkg/v1/hpke-info";
const TAG_AAD: &str = "cosigner/ecdsa-dkg/v1/hpke-aad";
const TAG_TRANSCRIPT: &str = "cosigner/ecdsa-dkg/v1/transcript";
const TAG_PUBLIC: &str = "cosigner/ecdsa-dkg/v1/public-key";
/// The refresh's session id (DKLs23's `refresh_sid`), over the wallet, its parties, the epoch it
/// refreshes and the group key.
const TAG_REFRESH: &str = "cosigner/ecdsa-refresh/v1/session";

/// A threshold ECDSA DKG: which wallet, how many must sign, who takes part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EcdsaDkgParams {
    /// The wallet.
    pub wallet_id: WalletId,
    /// Signers needed (at least 2).
    pub threshold: u16,
    /// Every party: exactly 1..=n (DKLs23 numbers parties consecutively).
    pub parties: Vec<PartyId>,
}

impl EcdsaDkgParams {
    /// The threshold ECDSA DKG of a wallet's `DkgParams` (naming `wire::SUITE_SECP256K1_ECDSA`):
    /// its wallet, its threshold, its parties in order.
    pub fn of(params: &DkgParams) -> Self {
        let mut parties = params.parties.clone();
        parties.sort_unstable();
        Self {
            wallet_id: params.wallet_id,
            threshold: params.min_signers,
            parties,
        }
    }

    fn check(&self, me: PartyId) -> Result<Parameters> {
        let n = self.parties.len();
        let consecutive = self
            .parties
            .iter()
            .enumerate()
            .all(|(i, p)| usize::from(p.get()) == i + 1);
        if !consecutive {
            return Err(ProtocolError::Params {
                reason: "threshold ECDSA parties must be numbered 1..=n in order".into(),
            });
        }
        if !self.parties.contains(&me) {
            return Err(ProtocolError::Params {
                reason: format!("party {me} is not in the ceremony"),
            });
        }
        let (t, n) = (u8::try_from(self.threshold), u8::try_from(n));
        match (t, n) {
            (Ok(t), Ok(n)) => Parameters::new(t, n).map_err(|_| ProtocolError::Params {
                reason: format!("threshold {t} of {n} parties (need 2 ≤ t ≤ n)"),
            }),
            _ => Err(ProtocolError::Params {
                reason: "at most 255 parties".into(),
            }),
        }
    }

    fn session_id(&self) -> Vec<u8> {
        super::session_id(TAG_SESSION, &self.wallet_id, self.threshold, &self.parties)
    }
}

/// Round 0: a party's HPKE key for this ceremony.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EcdsaHello {
    /// Sender.
    pub from: PartyId,
    /// Parts addressed to the sender are sealed to this X25519 key.
    pub hpke_public_key: ByteBuf,
}

/// One party's message of rounds 1 to 3: a part every party sees and one sealed part per other
/// party.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EcdsaRound {
    /// Sender.
    pub from: PartyId,
    /// 1, 2 or 3.
    pub round: u8,
    /// The round's broadcast part, postcard-encoded (empty in round 1).
    pub broadcast: ByteBuf,
    /// The point-to-point parts, one to each other party.
    pub sealed: Vec<SealedPackage>,
}

/// Round 2's broadcast: the commitment to the public share's proof and to the chain-code
/// contribution.
#[derive(Serialize, Deserialize)]
struct Broadcast2 {
    commitment: [u8; 32],
    derivation: BroadcastDerivationPhase2to4,
}

/// Round 3's broadcast: the proof the commitment named, and the chain-code opening.
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
struct Broadcast3 {
    proof: ProofCommitment<Secp256k1>,
    derivation: BroadcastDerivationPhase3to4,
}

/// Round 3's point-to-point part.
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
struct Sealed3 {
    zero: TransmitInitZeroSharePhase3to4,
    mul: TransmitInitMulPhase3to4<Secp256k1>,
}

/// What the DKG makes: our share and the public key every party confirmed.
#[derive(Debug)]
pub struct EcdsaDkgOutput {
    /// Our share.
    pub key: EcdsaKey,
    /// The group public key, SEC1 uncompressed.
    pub public_key: Vec<u8>,
    /// Every party's public share (SEC1 uncompressed), by party.
    pub public_shares: BTreeMap<PartyId, Vec<u8>>,
    /// The confirmed transcript hash.
    pub transcript_hash: [u8; 32],
}

/// What arrived in rounds 2 and 3 and is used in phase 4.
#[derive(Default)]
struct Received {
    commitments: BTreeMap<PartyId, [u8; 32]>,
    zero2: Vec<TransmitInitZeroSharePhase2to4>,
    bip2: BTreeMap<dkls23::protocols::PartyIndex, BroadcastDerivationPhase2to4>,
}

enum Stage {
    Hellos,
    Round1 {
        fragments: Vec<k256::Scalar>,
    },
    Round2,
    Round3,
    Confirm {
        output: Box<EcdsaDkgOutput>,
        ours: Confirmation,
    },
    Done,
}

/// One party's DKG.
pub struct EcdsaDkg {
    params: EcdsaDkgParams,
    me: PartyId,
    hpke_secret: HpkeSecretKey,
    engine: Option<Engine>,
    /// Our proof of the public share: committed in round 2, opened in round 3.
    proof: Option<ProofCommitment<Secp256k1>>,
    /// Our HPKE public key, as our hello carried it.
    our_key: Vec<u8>,
    /// Our message of the current round, as we sent it: the relayed copy must carry the same
    /// broadcast (its sealed parts, addressed to others, may be left out).
    our_message: Option<EcdsaRound>,
    keys: BTreeMap<PartyId, Vec<u8>>,
    transcript: Sha256,
    received: Received,
    stage: Stage,
}

impl std::fmt::Debug for EcdsaDkg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EcdsaDkg")
            .field("wallet_id", &self.params.wallet_id)
            .field("me", &self.me)
            .finish_non_exhaustive()
    }
}

/// Starts the DKG as `me`: our HPKE key, to broadcast.
pub fn start(
    params: EcdsaDkgParams,
    me: PartyId,
    rng: &mut (impl CryptoRng + RngCore),
) -> Result<(EcdsaDkg, EcdsaHello)> {
    let parameters = params.check(me)?;
    let session = DkgSession::new(parameters, index_of(me)?, params.session_id());
    begin(params, me, Engine::Dkg(Session::new(session)), &[], rng)
}

/// Starts a refresh of `key` (ours, of the wallet whose public side is `public`, at
/// `from_epoch`) among every party of `params`: new shares of the same key, by the same rounds
/// as the DKG ([`super::engine`]). Its output's key is the refreshed share; its public key is the
/// wallet's, unchanged.
pub fn start_refresh(
    params: EcdsaDkgParams,
    key: EcdsaKey,
    public: EcdsaPublic,
    from_epoch: Epoch,
    rng: &mut (impl CryptoRng + RngCore),
) -> Result<(EcdsaDkg, EcdsaHello)> {
    params.check(me_of(&key, &params)?)?;
    if !public.holds(&key) || key.threshold() != params.threshold {
        return Err(ProtocolError::Params {
            reason: "the share to refresh is not of this wallet's key and threshold".into(),
        });
    }
    let me = key.party();
    let sid = tagged(
        TAG_REFRESH,
        &[
            &params.session_id(),
            &from_epoch.0.to_be_bytes(),
            &public.public_key,
        ],
    )
    .to_vec();
    let mode = [b"refresh".as_slice(), &from_epoch.0.to_be_bytes()].concat();
    begin(params, me, Engine::refresh(key, public, sid), &mode, rng)
}

/// `key`'s party, which must be one of `params`'.
fn me_of(key: &EcdsaKey, params: &EcdsaDkgParams) -> Result<PartyId> {
    let me = key.party();
    if !params.parties.contains(&me) {
        return Err(ProtocolError::Params {
            reason: format!("party {me} does not take part in this refresh"),
        });
    }
    Ok(me)
}

/// A ceremony's first step: our HPKE key, and a transcript over the parameters and `mode` (empty
/// for a DKG, so its transcript is as before refreshes existed).
fn begin(
    params: EcdsaDkgParams,
    me: PartyId,
    engine: Engine,
    mode: &[u8],
    rng: &mut (impl CryptoRng + RngCore),
) -> Result<(EcdsaDkg, EcdsaHello)> {
    let (hpke_secret, hpke_public_key) = hpke::generate_keypair(rng);
    let mut transcript = Sha256::new();
    let encoded = crate::wire::encode(&params)?;
    if mode.is_empty() {
        transcript.update(tagged(TAG_TRANSCRIPT, &[&encoded]));
    } else {
        transcript.update(tagged(TAG_TRANSCRIPT, &[&encoded, mode]));
    }
    let hello = EcdsaHello {
        from: me,
        hpke_public_key: ByteBuf::from(hpke_public_key.clone()),
    };
    let dkg = EcdsaDkg {
        params,
        me,
        hpke_secret,
        engine: Some(engine),
        proof: None,
        our_key: hpke_public_key,
        our_message: None,
        keys: BTreeMap::new(),
        transcript,
        received: Received::default(),
        stage: Stage::Hellos,
    };
    Ok((dkg, hello))
}

impl EcdsaDkg {
    /// The parameters.
    pub fn params(&self) -> &EcdsaDkgParams {
        &self.params
    }

    /// Every party's hello (ours included): answered with our round-1 message.
    pub fn handle_hellos(
        &mut self,
        hellos: &[EcdsaHello],
        rng: &mut (impl CryptoRng + RngCore),
    ) -> Result<EcdsaRound> {
        self.expect(matches!(self.stage, Stage::Hellos), "hellos")?;
        let hellos = self.one_each(hellos, |h| h.from)?;
        // The relay must show us our own key: with another in its place, it could open what the
        // others seal to us and re-seal it, unseen (the transcripts would still agree).
        if hellos.get(&self.me).map(|h| h.hpke_public_key.as_slice()) != Some(&self.our_key[..]) {
            return Err(ProtocolError::Disagreement {
                reason: format!("the hello relayed as party {}'s is not ours", self.me),
            });
        }
        for (party, hello) in hellos {
            self.transcript.update(tagged(
                TAG_TRANSCRIPT,
                &[&party.get().to_be_bytes(), &hello.hpke_public_key],
            ));
            self.keys.insert(party, hello.hpke_public_key.to_vec());
        }
        let fragments = self.engine()?.phase1()?;
        let mut sealed = Vec::new();
        for (to, fragment) in self.params.parties.clone().into_iter().zip(&fragments) {
            if to != self.me {
                sealed.push(self.seal(1, &[], to, &encode_part(fragment)?, rng)?);
            }
        }
        let own = fragments
            .get(usize::from(self.me.get()) - 1)
            .copied()
            .ok_or_else(|| ProtocolError::Params {
                reason: "no fragment of our own".into(),
            })?;
        self.stage = Stage::Round1 {
            fragments: vec![own],
        };
        Ok(self.sent(EcdsaRound {
            from: self.me,
            round: 1,
            broadcast: ByteBuf::new(),
            sealed,
        }))
    }

    /// Every party's message of the current round (ours included): answered with our next
    /// round's message, or after round 3 with our [`Confirmation`].
    pub fn handle_round(
        &mut self,
        messages: &[EcdsaRound],
        rng: &mut (impl CryptoRng + RngCore),
    ) -> Result<RoundOutput> {
        let round = match self.stage {
            Stage::Round1 { .. } => 1,
            Stage::Round2 => 2,
            Stage::Round3 => 3,
            _ => return Err(self.unexpected("a round message")),
        };
        let messages = self.one_each(messages, |m| m.from)?;
        let ours = self.our_message.take();
        let relayed = messages.get(&self.me);
        if ours.as_ref().map(|m| (m.round, &m.broadcast))
            != relayed.map(|m| (m.round, &m.broadcast))
        {
            return Err(ProtocolError::Disagreement {
                reason: format!(
                    "the round-{round} message relayed as party {}'s is not ours",
                    self.me
                ),
            });
        }
        let mut opened = BTreeMap::new();
        let before = self.transcript.clone().finalize();
        for (from, message) in &messages {
            if message.round != round {
                return Err(ProtocolError::culprit(
                    *from,
                    format!("round {} message in round {round}", message.round),
                ));
            }
            if *from != self.me {
                opened.insert(*from, self.open(round, &before, message)?);
            }
        }
        for (from, message) in &messages {
            self.transcript.update(tagged(
                TAG_TRANSCRIPT,
                &[&[round], &from.get().to_be_bytes(), &message.broadcast],
            ));
        }
        match round {
            1 => self.after_round1(&opened, rng).map(RoundOutput::Next),
            2 => self
                .after_round2(&messages, &opened, rng)
                .map(RoundOutput::Next),
            _ => self
                .after_round3(&messages, &opened)
                .map(RoundOutput::Confirm),
        }
    }

    fn after_round1(
        &mut self,
        opened: &BTreeMap<PartyId, Vec<u8>>,
        rng: &mut (impl CryptoRng + RngCore),
    ) -> Result<EcdsaRound> {
        let Stage::Round1 { mut fragments } = std::mem::replace(&mut self.stage, Stage::Done)
        else {
            return Err(self.unexpected("round 1"));
        };
        for (from, bytes) in opened {
            fragments.push(
                decode_part(bytes).map_err(|e| ProtocolError::culprit(*from, e.to_string()))?,
            );
        }
        let me = self.me;
        let (proof, zero, derivation) = self.engine_mut()?.phase2(me, &fragments)?;
        // A refresh makes no chain code: its broadcast is the commitment alone.
        let broadcast = match derivation {
            Some(derivation) => encode_part(&Broadcast2 {
                commitment: proof.commitment,
                derivation,
            })?,
            None => encode_part(&proof.commitment)?,
        };
        self.proof = Some(proof);
        let mut sealed = Vec::new();
        for transmit in zero {
            let to = party_of(transmit.parties.receiver)?;
            sealed.push(self.seal(2, &broadcast, to, &encode_part(&transmit)?, rng)?);
        }
        self.stage = Stage::Round2;
        Ok(self.sent(EcdsaRound {
            from: me,
            round: 2,
            broadcast: ByteBuf::from(broadcast),
            sealed,
        }))
    }

    fn after_round2(
        &mut self,
        messages: &BTreeMap<PartyId, &EcdsaRound>,
        opened: &BTreeMap<PartyId, Vec<u8>>,
        rng: &mut (impl CryptoRng + RngCore),
    ) -> Result<EcdsaRound> {
        let refresh = self.engine()?.is_refresh();
        for (from, message) in messages {
            let culprit = |e: ProtocolError| ProtocolError::culprit(*from, e.to_string());
            if refresh {
                let commitment: [u8; 32] = decode_part(&message.broadcast).map_err(culprit)?;
                self.received.commitments.insert(*from, commitment);
                continue;
            }
            let b: Broadcast2 = decode_part(&message.broadcast).map_err(culprit)?;
            if b.derivation.sender_index != index_of(*from)? {
                return Err(ProtocolError::culprit(
                    *from,
                    "chain-code commitment names another sender",
                ));
            }
            self.received.commitments.insert(*from, b.commitment);
            self.received
                .bip2
                .insert(b.derivation.sender_index, b.derivation);
        }
        for (from, bytes) in opened {
            let zero: TransmitInitZeroSharePhase2to4 =
                decode_part(bytes).map_err(|e| ProtocolError::culprit(*from, e.to_string()))?;
            self.check_route(*from, &zero.parties)?;
            self.received.zero2.push(zero);
        }
        let me = self.me;
        let (zero, mul, derivation) = self.engine_mut()?.phase3(me)?;
        let proof = self.pending_proof()?;
        let broadcast = match derivation {
            Some(derivation) => encode_part(&Broadcast3 { proof, derivation })?,
            None => encode_part(&proof)?,
        };
        let mut sealed = Vec::new();
        for (zero, mul) in zero.into_iter().zip(mul) {
            let to = party_of(zero.parties.receiver)?;
            if party_of(mul.parties.receiver)? != to {
                return Err(ProtocolError::Params {
                    reason: "dkls23 phase 3 parts out of order".into(),
                });
            }
            sealed.push(self.seal(
                3,
                &broadcast,
                to,
                &encode_part(&Sealed3 { zero, mul })?,
                rng,
            )?);
        }
        self.stage = Stage::Round3;
        Ok(self.sent(EcdsaRound {
            from: me,
            round: 3,
            broadcast: ByteBuf::from(broadcast),
            sealed,
        }))
    }

    fn after_round3(
        &mut self,
        messages: &BTreeMap<PartyId, &EcdsaRound>,
        opened: &BTreeMap<PartyId, Vec<u8>>,
    ) -> Result<Confirmation> {
        let mut proofs = Vec::new();
        let mut bip3 = BTreeMap::new();
        let refresh = self.engine()?.is_refresh();
        for (from, message) in messages {
            let culprit = |e: ProtocolError| ProtocolError::culprit(*from, e.to_string());
            let (proof, derivation) = if refresh {
                let proof: ProofCommitment<Secp256k1> =
                    decode_part(&message.broadcast).map_err(culprit)?;
                (proof, None)
            } else {
                let b: Broadcast3 = decode_part(&message.broadcast).map_err(culprit)?;
                (b.proof, Some(b.derivation))
            };
            // The opening must be of what round 2 committed to (Protocol 9.1, steps 3–5).
            if proof.index != index_of(*from)?
                || self.received.commitments.get(from) != Some(&proof.commitment)
            {
                return Err(ProtocolError::culprit(
                    *from,
                    "proof does not open its round-2 commitment",
                ));
            }
            if let Some(derivation) = derivation {
                if derivation.sender_index != index_of(*from)? {
                    return Err(ProtocolError::culprit(
                        *from,
                        "chain-code opening names another sender",
                    ));
                }
                bip3.insert(derivation.sender_index, derivation);
            }
            proofs.push(proof);
        }
        let (mut zero3, mut mul) = (Vec::new(), Vec::new());
        for (from, bytes) in opened {
            let part: Sealed3 =
                decode_part(bytes).map_err(|e| ProtocolError::culprit(*from, e.to_string()))?;
            self.check_route(*from, &part.zero.parties)?;
            self.check_route(*from, &part.mul.parties)?;
            zero3.push(part.zero);
            mul.push(part.mul);
        }
        let me = self.me;
        let engine = self
            .engine
            .take()
            .ok_or_else(|| self.unexpected("round 3"))?;
        let zero2 = std::mem::take(&mut self.received.zero2);
        let input = Phase4 {
            proofs: &proofs,
            zero2: &zero2,
            zero3: &zero3,
            mul: &mul,
            bip2: &self.received.bip2,
            bip3: &bip3,
        };
        let (party, public) = engine.phase4(me, &self.params.parties, &input)?;
        let public_shares: BTreeMap<PartyId, Vec<u8>> = public
            .public_shares
            .into_iter()
            .map(|(p, s)| (p, s.into_vec()))
            .collect();
        let public_key = public.public_key.into_vec();
        let transcript_hash: [u8; 32] = self.transcript.clone().finalize().into();
        let ours = Confirmation {
            from: me,
            transcript_hash: ByteBuf::from(transcript_hash.to_vec()),
            public_key_package_hash: ByteBuf::from(
                public_hash(&public_key, &public_shares).to_vec(),
            ),
        };
        let output = EcdsaDkgOutput {
            key: EcdsaKey { party },
            public_key,
            public_shares,
            transcript_hash,
        };
        self.stage = Stage::Confirm {
            output: Box::new(output),
            ours: ours.clone(),
        };
        Ok(ours)
    }

    /// After round 3, our output and confirmation before the others' confirmations are in: for a
    /// refresh whose new share is stored *prepared*, to be used only once a commit checks every
    /// party's confirmation against ours (as [`Self::handle_confirmations`] would).
    pub fn into_unconfirmed(mut self) -> Result<(EcdsaDkgOutput, Confirmation)> {
        match std::mem::replace(&mut self.stage, Stage::Done) {
            Stage::Confirm { output, ours } => Ok((*output, ours)),
            _ => Err(self.unexpected("the prepared output")),
        }
    }

    /// Every party's confirmation (ours included): the key, once all agree.
    pub fn handle_confirmations(
        mut self,
        confirmations: &[Confirmation],
    ) -> Result<EcdsaDkgOutput> {
        let Stage::Confirm { output, ours } = std::mem::replace(&mut self.stage, Stage::Done)
        else {
            return Err(self.unexpected("confirmations"));
        };
        let all = self.one_each(confirmations, |c| c.from)?;
        for (from, c) in all {
            if c.transcript_hash != ours.transcript_hash
                || c.public_key_package_hash != ours.public_key_package_hash
            {
                return Err(ProtocolError::Disagreement {
                    reason: format!("party {from} confirmed another transcript or public key"),
                });
            }
        }
        Ok(*output)
    }

    /// Keeps a copy of our message (without its sealed parts) to compare with the relayed one.
    fn sent(&mut self, message: EcdsaRound) -> EcdsaRound {
        self.our_message = Some(EcdsaRound {
            sealed: Vec::new(),
            ..message.clone()
        });
        message
    }

    fn seal(
        &self,
        round: u8,
        broadcast: &[u8],
        to: PartyId,
        plaintext: &[u8],
        rng: &mut (impl CryptoRng + RngCore),
    ) -> Result<SealedPackage> {
        let key = self.keys.get(&to).ok_or_else(|| ProtocolError::Params {
            reason: format!("no HPKE key of party {to}"),
        })?;
        let before = self.transcript.clone().finalize();
        let aad = self.aad(round, &before, self.me, to, broadcast);
        let (enc, ciphertext) = hpke::seal(key, &self.info(), &aad, plaintext, rng)?;
        Ok(SealedPackage {
            from: self.me,
            to,
            enc: ByteBuf::from(enc),
            ciphertext: ByteBuf::from(ciphertext),
        })
    }

    fn open(&self, round: u8, before: &[u8], message: &EcdsaRound) -> Result<Vec<u8>> {
        let from = message.from;
        let mut to_us = message.sealed.iter().filter(|s| s.to == self.me);
        let (Some(sealed), None) = (to_us.next(), to_us.next()) else {
            return Err(ProtocolError::culprit(
                from,
                format!("not exactly one round-{round} part for party {}", self.me),
            ));
        };
        if sealed.from != from {
            return Err(ProtocolError::culprit(
                from,
                "sealed part names another sender",
            ));
        }
        let aad = self.aad(round, before, from, self.me, &message.broadcast);
        let plain = hpke::open(
            &self.hpke_secret,
            &self.info(),
            &aad,
            &sealed.enc,
            &sealed.ciphertext,
        )
        .map_err(|e| {
            ProtocolError::culprit(from, format!("round-{round} part does not open: {e}"))
        })?;
        Ok(plain.to_vec())
    }

    fn info(&self) -> Vec<u8> {
        tagged(TAG_INFO, &[self.params.wallet_id.as_slice()]).to_vec()
    }

    fn aad(
        &self,
        round: u8,
        before: &[u8],
        from: PartyId,
        to: PartyId,
        broadcast: &[u8],
    ) -> Vec<u8> {
        tagged(
            TAG_AAD,
            &[
                self.params.wallet_id.as_slice(),
                &[round],
                &from.get().to_be_bytes(),
                &to.get().to_be_bytes(),
                before,
                broadcast,
            ],
        )
        .to_vec()
    }

    fn check_route(
        &self,
        from: PartyId,
        parties: &dkls23::protocols::PartiesMessage,
    ) -> Result<()> {
        if parties.sender != index_of(from)? || parties.receiver != index_of(self.me)? {
            return Err(ProtocolError::culprit(
                from,
                "message routed between other parties",
            ));
        }
        Ok(())
    }

    /// Our proof, committed in round 2 and opened now.
    fn pending_proof(&mut self) -> Result<ProofCommitment<Secp256k1>> {
        self.proof.take().ok_or_else(|| self.unexpected("round 2"))
    }

    fn one_each<'a, T>(
        &self,
        items: &'a [T],
        from: impl Fn(&T) -> PartyId,
    ) -> Result<BTreeMap<PartyId, &'a T>> {
        let mut out = BTreeMap::new();
        for item in items {
            let party = from(item);
            if !self.params.parties.contains(&party) {
                return Err(ProtocolError::Params {
                    reason: format!("message from party {party}, not in the ceremony"),
                });
            }
            if out.insert(party, item).is_some() {
                return Err(ProtocolError::culprit(party, "two messages in one round"));
            }
        }
        if out.len() != self.params.parties.len() {
            return Err(ProtocolError::Params {
                reason: format!(
                    "{} messages, expected one from each of {} parties",
                    out.len(),
                    self.params.parties.len()
                ),
            });
        }
        Ok(out)
    }

    fn engine(&self) -> Result<&Engine> {
        self.engine
            .as_ref()
            .ok_or_else(|| self.unexpected("a finished session"))
    }

    fn engine_mut(&mut self) -> Result<&mut Engine> {
        let unexpected = self.unexpected("a finished session");
        self.engine.as_mut().ok_or(unexpected)
    }

    fn expect(&self, ok: bool, what: &'static str) -> Result<()> {
        if ok {
            Ok(())
        } else {
            Err(self.unexpected(what))
        }
    }

    fn unexpected(&self, what: &str) -> ProtocolError {
        ProtocolError::UnexpectedMessage {
            expected: "the next step of the threshold ECDSA DKG",
            actual: what.to_string(),
        }
    }
}

/// What a round answers: the next round's message, or after round 3 the confirmation.
#[derive(Debug)]
pub enum RoundOutput {
    /// Our message of the next round.
    Next(EcdsaRound),
    /// Our confirmation.
    Confirm(Confirmation),
}

/// SHA-256 of the group key and every public share: what the confirmation compares.
fn public_hash(public_key: &[u8], shares: &BTreeMap<PartyId, Vec<u8>>) -> [u8; 32] {
    let mut parts: Vec<Vec<u8>> = vec![public_key.to_vec()];
    for (party, share) in shares {
        parts.push(party.get().to_be_bytes().to_vec());
        parts.push(share.clone());
    }
    let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
    tagged(TAG_PUBLIC, &refs)
}
