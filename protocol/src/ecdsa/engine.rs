//! What makes the shares in a [`super::dkg::EcdsaDkg`]: a DKG's `dkls23` session, or a *refresh*
//! of an existing key, DKLs23's "complete refresh" (`dkls23::protocols::refresh`): the same four
//! phases with a zero constant term, so every party's correction adds up to nothing and the group
//! key (the address) stays, every share and every OT setup is new, and no chain code is made.
//! After a refresh an old share signs with nobody: the refreshed parties' session id is chained
//! to the refresh, so signing between an old and a new share aborts.

use std::collections::BTreeMap;

use dkls23::DkgSession;
use dkls23::protocols::dkg::{
    BroadcastDerivationPhase2to4, BroadcastDerivationPhase3to4, KeepInitMulPhase3to4,
    KeepInitZeroSharePhase2to3, KeepInitZeroSharePhase3to4, ProofCommitment,
    TransmitInitMulPhase3to4, TransmitInitZeroSharePhase2to4, TransmitInitZeroSharePhase3to4,
};
use dkls23::protocols::{PartyIndex, PublicKeyPackage};
use k256::Secp256k1;
use zeroize::Zeroize;

use super::{EcdsaKey, EcdsaPublic, Party, from_abort, index_of};
use crate::error::{ProtocolError, Result};
use crate::id::PartyId;

/// Phase 2's public output: the proof commitment, the zero-sharing commitments to send, and (a
/// DKG only) the chain-code commitment to broadcast.
pub(super) type Phase2 = (
    ProofCommitment<Secp256k1>,
    Vec<TransmitInitZeroSharePhase2to4>,
    Option<BroadcastDerivationPhase2to4>,
);

/// Phase 3's public output: zero-sharing seeds and OT setups to send, and (a DKG only) the
/// chain-code opening to broadcast.
pub(super) type Phase3 = (
    Vec<TransmitInitZeroSharePhase3to4>,
    Vec<TransmitInitMulPhase3to4<Secp256k1>>,
    Option<BroadcastDerivationPhase3to4>,
);

/// What phase 4 reads.
pub(super) struct Phase4<'a> {
    pub proofs: &'a [ProofCommitment<Secp256k1>],
    pub zero2: &'a [TransmitInitZeroSharePhase2to4],
    pub zero3: &'a [TransmitInitZeroSharePhase3to4],
    pub mul: &'a [TransmitInitMulPhase3to4<Secp256k1>],
    pub bip2: &'a BTreeMap<PartyIndex, BroadcastDerivationPhase2to4>,
    pub bip3: &'a BTreeMap<PartyIndex, BroadcastDerivationPhase3to4>,
}

/// The engine of one party's ceremony.
pub(super) enum Engine {
    Dkg(Session),
    Refresh(Box<Refresh>),
}

/// A refresh in progress: our current share, the wallet's public side, and what the phases keep.
pub(super) struct Refresh {
    key: EcdsaKey,
    public: EcdsaPublic,
    sid: Vec<u8>,
    correction: Option<k256::Scalar>,
    zero23: Option<BTreeMap<PartyIndex, KeepInitZeroSharePhase2to3>>,
    zero34: Option<BTreeMap<PartyIndex, KeepInitZeroSharePhase3to4>>,
    mul34: Option<BTreeMap<PartyIndex, KeepInitMulPhase3to4<Secp256k1>>>,
}

impl Drop for Refresh {
    fn drop(&mut self) {
        self.correction.zeroize();
        for keep in self.zero23.iter_mut().flat_map(|m| m.values_mut()) {
            keep.seed.zeroize();
            keep.salt.zeroize();
        }
        for keep in self.zero34.iter_mut().flat_map(|m| m.values_mut()) {
            keep.seed.zeroize();
        }
        // The new share's OT setup secrets, as `dkls23`'s `DkgSession::zeroize` wipes them.
        for keep in self.mul34.iter_mut().flat_map(|m| m.values_mut()) {
            keep.ot_sender.s.zeroize();
            keep.ot_receiver.seed.zeroize();
            keep.nonce.zeroize();
            keep.vec_r.zeroize();
            keep.correlation.zeroize();
        }
    }
}

/// A DKG's `dkls23` session: it holds its polynomial point and setup secrets until phase 4
/// consumes it; one dropped before (a failed or abandoned ceremony) is wiped.
pub(super) struct Session(Option<Box<DkgSession<Secp256k1>>>);

impl Session {
    pub(super) fn new(session: DkgSession<Secp256k1>) -> Self {
        Self(Some(Box::new(session)))
    }

    fn get(&self) -> Result<&DkgSession<Secp256k1>> {
        self.0
            .as_deref()
            .ok_or_else(|| out_of_order("a finished DKG"))
    }

    fn get_mut(&mut self) -> Result<&mut DkgSession<Secp256k1>> {
        self.0
            .as_deref_mut()
            .ok_or_else(|| out_of_order("a finished DKG"))
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(session) = self.0.as_mut() {
            session.zeroize();
        }
    }
}

impl Engine {
    /// A refresh of `key` (of the wallet whose public side is `public`) under session id `sid`.
    pub(super) fn refresh(key: EcdsaKey, public: EcdsaPublic, sid: Vec<u8>) -> Self {
        Engine::Refresh(Box::new(Refresh {
            key,
            public,
            sid,
            correction: None,
            zero23: None,
            zero34: None,
            mul34: None,
        }))
    }

    pub(super) fn is_refresh(&self) -> bool {
        matches!(self, Engine::Refresh(_))
    }

    /// Our polynomial's fragments, one per party in order.
    pub(super) fn phase1(&self) -> Result<Vec<k256::Scalar>> {
        match self {
            Engine::Dkg(session) => Ok(session.get()?.phase1()),
            Engine::Refresh(r) => Ok(r.key.party.refresh_complete_phase1()),
        }
    }

    pub(super) fn phase2(&mut self, me: PartyId, fragments: &[k256::Scalar]) -> Result<Phase2> {
        match self {
            Engine::Dkg(session) => {
                let (proof, zero, derivation) = session
                    .get_mut()?
                    .phase2(fragments)
                    .map_err(|a| from_abort(me, &a))?;
                Ok((proof, zero, Some(derivation)))
            }
            Engine::Refresh(r) => {
                if r.correction.is_some() {
                    return Err(out_of_order("phase 2"));
                }
                let (correction, proof, keep, zero) =
                    r.key.party.refresh_complete_phase2(&r.sid, fragments);
                r.correction = Some(correction);
                r.zero23 = Some(keep);
                Ok((proof, zero, None))
            }
        }
    }

    pub(super) fn phase3(&mut self, me: PartyId) -> Result<Phase3> {
        match self {
            Engine::Dkg(session) => {
                let (zero, mul, derivation) = session
                    .get_mut()?
                    .phase3()
                    .map_err(|a| from_abort(me, &a))?;
                Ok((zero, mul, Some(derivation)))
            }
            Engine::Refresh(r) => {
                let kept = r.zero23.take().ok_or_else(|| out_of_order("phase 3"))?;
                let (zero_keep, zero, mul_keep, mul) =
                    r.key.party.refresh_complete_phase3(&r.sid, &kept);
                wipe(kept);
                r.zero34 = Some(zero_keep);
                r.mul34 = Some(mul_keep);
                Ok((zero, mul, None))
            }
        }
    }

    /// Our new share and the wallet's public side after it (`parties`: every party).
    pub(super) fn phase4(
        self,
        me: PartyId,
        parties: &[PartyId],
        input: &Phase4<'_>,
    ) -> Result<(Party, EcdsaPublic)> {
        match self {
            Engine::Dkg(mut session) => {
                let session = session.0.take().ok_or_else(|| out_of_order("phase 4"))?;
                let (party, public) = session
                    .phase4(
                        input.proofs,
                        input.zero2,
                        input.zero3,
                        input.mul,
                        input.bip2,
                        input.bip3,
                        |_| String::new(),
                    )
                    .map_err(|a| from_abort(me, &a))?;
                Ok((party, public_of(&public, parties)?))
            }
            Engine::Refresh(mut r) => {
                let correction = zeroize::Zeroizing::new(
                    r.correction.take().ok_or_else(|| out_of_order("phase 4"))?,
                );
                let (Some(zero_kept), Some(mul_kept)) = (r.zero34.as_ref(), r.mul34.as_ref())
                else {
                    return Err(out_of_order("phase 4"));
                };
                let party = r
                    .key
                    .party
                    .refresh_complete_phase4(
                        &r.sid,
                        &*correction,
                        input.proofs,
                        zero_kept,
                        input.zero2,
                        input.zero3,
                        mul_kept,
                        input.mul,
                    )
                    .map_err(|a| from_abort(me, &a))?;
                let old = package_of(&r.public, &r.key)?;
                let new = old.refresh(&r.sid, input.proofs).map_err(|reason| {
                    ProtocolError::Disagreement {
                        reason: format!("the refresh's commitments do not verify: {reason:?}"),
                    }
                })?;
                let public = public_of(&new, parties)?;
                if public.public_key != r.public.public_key {
                    return Err(ProtocolError::Disagreement {
                        reason: "the refresh changed the group key".into(),
                    });
                }
                Ok((party, public))
            }
        }
    }
}

/// Zeroizes the seeds phase 3 consumed.
fn wipe(mut kept: BTreeMap<PartyIndex, KeepInitZeroSharePhase2to3>) {
    for keep in kept.values_mut() {
        keep.seed.zeroize();
        keep.salt.zeroize();
    }
}

fn out_of_order(what: &str) -> ProtocolError {
    ProtocolError::UnexpectedMessage {
        expected: "the next step of the threshold ECDSA refresh",
        actual: what.to_string(),
    }
}

/// Our public side from `dkls23`'s package of `parties`.
fn public_of(package: &PublicKeyPackage<Secp256k1>, parties: &[PartyId]) -> Result<EcdsaPublic> {
    let mut public_shares = BTreeMap::new();
    for party in parties {
        let share =
            package
                .verifying_share(index_of(*party)?)
                .ok_or_else(|| ProtocolError::Params {
                    reason: format!("no public share of party {party}"),
                })?;
        public_shares.insert(
            *party,
            serde_bytes::ByteBuf::from(super::uncompressed(share)),
        );
    }
    Ok(EcdsaPublic {
        public_key: serde_bytes::ByteBuf::from(super::uncompressed(package.verifying_key())),
        public_shares,
    })
}

/// `dkls23`'s package of a wallet's public side (the parameters are `key`'s).
fn package_of(public: &EcdsaPublic, key: &EcdsaKey) -> Result<PublicKeyPackage<Secp256k1>> {
    package(public, key.party.parameters.clone())
}

/// `dkls23`'s package of a wallet's public side with `parameters`.
pub(super) fn package(
    public: &EcdsaPublic,
    parameters: dkls23::protocols::Parameters,
) -> Result<PublicKeyPackage<Secp256k1>> {
    let mut shares = BTreeMap::new();
    for (party, share) in &public.public_shares {
        shares.insert(index_of(*party)?, super::point(share)?);
    }
    Ok(PublicKeyPackage::new(
        super::point(&public.public_key)?,
        shares,
        parameters,
    ))
}
