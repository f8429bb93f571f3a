//! Signing a PSBT with a DAO wallet over the mailbox.
//!
//! ```text
//! requester ── SignRequest ─────────────────────────────► all (topic = request hash)
//! provider  ── Evaluation (sighashes, value, rule, k) ──► all     (or Refused)
//! members   ── Approval (request, own sighashes) ───────► provider  (the requester's included)
//! provider  ── SignerSet (first k approvers + provider's parties) ► all
//! chosen    ── Commitments (one per input) ─────────────► provider
//! provider  ── SigningPackages (one per input) ─────────► chosen
//! chosen    ── Shares (one per input) ──────────────────► provider
//! provider  ── Signed (txid, tx) ───────────────────────► all
//! ```
//!
//! The provider is the coordinator because it is the one party every signature needs: it counts
//! approvals against the rule it evaluated itself from the PSBT, and only then commits. A member
//! signs only the sighashes it computed itself from the PSBT it was shown, only with the signer
//! set the provider announced, once ([`SignerSession`]); an approval binds the request hash (so
//! the exact PSBT) and the sighashes, so it cannot be used for another PSBT. Nonces live in these
//! values, in memory only.

use std::collections::BTreeMap;

use frost_core::Ciphersuite;
use frost_core::keys::{KeyPackage, PublicKeyPackage};
use rand_core::{CryptoRng, RngCore};
use serde_bytes::ByteBuf;

use super::{Approval, DaoMessage, hash32, sighashes_digest};
use crate::error::{ProtocolError, Result};
use crate::sign::{SignerSession, aggregate, signing_package};

fn bufs(v: Vec<Vec<u8>>) -> Vec<ByteBuf> {
    v.into_iter().map(ByteBuf::from).collect()
}

fn same_request(ours: &[u8; 32], theirs: &[u8]) -> bool {
    theirs == ours.as_slice()
}

/// Where a member's signing stands.
enum Stage<C: Ciphersuite> {
    /// Approved; waiting for the signer set.
    Approved,
    /// Chosen and committed; waiting for the signing packages.
    Committed(Vec<SignerSession<C>>),
    /// Shares sent; waiting for the transaction.
    Shared,
    /// Not chosen (enough others approved first); waiting for the transaction.
    Bystander,
    /// Signed.
    Done {
        /// Its txid.
        txid: String,
        /// The transaction.
        tx: Vec<u8>,
    },
}

/// A member's side of one signing request.
pub struct MemberSigner<C: Ciphersuite> {
    request: [u8; 32],
    party: u16,
    provider_key: Vec<u8>,
    sighashes: Vec<[u8; 32]>,
    expected_txid: String,
    stage: Stage<C>,
}

impl<C: Ciphersuite> std::fmt::Debug for MemberSigner<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemberSigner")
            .field("request", &hex::encode(self.request))
            .field("party", &self.party)
            .field("stage", &self.stage_name())
            .finish_non_exhaustive()
    }
}

impl<C: Ciphersuite> MemberSigner<C> {
    /// Approves `request` as `party`, binding the sighashes we computed ourselves from the PSBT
    /// and the txid we expect. Returns the signer and the approval to post.
    pub fn approve(
        request: [u8; 32],
        party: u16,
        provider_key: Vec<u8>,
        sighashes: Vec<[u8; 32]>,
        expected_txid: String,
    ) -> (Self, DaoMessage) {
        let approval = DaoMessage::Approval(Approval {
            request: ByteBuf::from(request.to_vec()),
            party,
            sighashes: ByteBuf::from(sighashes_digest(&request, &sighashes).to_vec()),
        });
        (
            Self {
                request,
                party,
                provider_key,
                sighashes,
                expected_txid,
                stage: Stage::Approved,
            },
            approval,
        )
    }

    fn stage_name(&self) -> &'static str {
        match self.stage {
            Stage::Approved => "waiting for the other approvals",
            Stage::Committed(_) => "waiting for the signing packages",
            Stage::Shared => "waiting for the signed transaction",
            Stage::Bystander => "not in the signer set; waiting for the signed transaction",
            Stage::Done { .. } => "signed",
        }
    }

    /// What we wait for, for progress messages.
    pub fn waiting_for(&self) -> &'static str {
        self.stage_name()
    }

    /// The signed transaction `(txid, tx)` once the provider published it.
    pub fn outcome(&self) -> Option<(&str, &[u8])> {
        match &self.stage {
            Stage::Done { txid, tx } => Some((txid, tx)),
            _ => None,
        }
    }

    /// Whether we were chosen to sign.
    pub fn chosen(&self) -> bool {
        matches!(self.stage, Stage::Committed(_) | Stage::Shared)
    }

    /// Takes one verified message from `sender`; returns what to post. Messages of the provider
    /// are accepted only from the provider's key; other messages are ignored.
    ///
    /// Errors: the provider refused ([`ProtocolError::Refused`]); a signing package that does not
    /// match what we approved ([`ProtocolError::SessionMismatch`]); a published transaction that
    /// is not the one we approved ([`ProtocolError::Disagreement`]).
    pub fn handle(
        &mut self,
        sender: &[u8],
        message: &DaoMessage,
        key_package: &KeyPackage<C>,
        rng: &mut (impl CryptoRng + RngCore),
    ) -> Result<Vec<DaoMessage>> {
        if sender != self.provider_key.as_slice() {
            return Ok(Vec::new());
        }
        match message {
            DaoMessage::Refused { request, reason } if same_request(&self.request, request) => {
                Err(ProtocolError::Refused {
                    reason: reason.clone(),
                })
            }
            DaoMessage::SignerSet { request, parties }
                if same_request(&self.request, request)
                    && matches!(self.stage, Stage::Approved) =>
            {
                if !parties.contains(&self.party) {
                    self.stage = Stage::Bystander;
                    return Ok(Vec::new());
                }
                let mut sessions = Vec::with_capacity(self.sighashes.len());
                let mut commitments = Vec::with_capacity(self.sighashes.len());
                for sighash in &self.sighashes {
                    let (session, c) =
                        SignerSession::commit(key_package, self.party, sighash, parties, rng)?;
                    sessions.push(session);
                    commitments.push(c);
                }
                self.stage = Stage::Committed(sessions);
                Ok(vec![DaoMessage::Commitments {
                    request: ByteBuf::from(self.request.to_vec()),
                    party: self.party,
                    commitments: bufs(commitments),
                }])
            }
            DaoMessage::SigningPackages { request, packages }
                if same_request(&self.request, request)
                    && matches!(self.stage, Stage::Committed(_)) =>
            {
                let Stage::Committed(sessions) = std::mem::replace(&mut self.stage, Stage::Shared)
                else {
                    return Ok(Vec::new());
                };
                if packages.len() != sessions.len() {
                    return Err(ProtocolError::SessionMismatch {
                        reason: format!(
                            "{} signing packages for {} inputs",
                            packages.len(),
                            sessions.len()
                        ),
                    });
                }
                let mut shares = Vec::with_capacity(sessions.len());
                for (session, package) in sessions.into_iter().zip(packages) {
                    // Checks message (our own sighash), signer set and our commitment.
                    shares.push(session.sign(key_package, package)?);
                }
                Ok(vec![DaoMessage::Shares {
                    request: ByteBuf::from(self.request.to_vec()),
                    party: self.party,
                    shares: bufs(shares),
                }])
            }
            DaoMessage::Signed { request, txid, tx } if same_request(&self.request, request) => {
                if *txid != self.expected_txid {
                    return Err(ProtocolError::Disagreement {
                        reason: format!(
                            "the provider published transaction {txid}, we approved {}",
                            self.expected_txid
                        ),
                    });
                }
                self.stage = Stage::Done {
                    txid: txid.clone(),
                    tx: tx.to_vec(),
                };
                Ok(Vec::new())
            }
            _ => Ok(Vec::new()),
        }
    }
}

/// The provider's side of one signing request: counts approvals, picks the signer set, commits
/// with its parties, builds the packages, signs and aggregates.
pub struct Coordinator<C: Ciphersuite> {
    request: [u8; 32],
    sighashes: Vec<[u8; 32]>,
    approvals_needed: u16,
    /// Member parties whose approval counts, with their keys.
    approvers: BTreeMap<u16, Vec<u8>>,
    provider_parties: Vec<u16>,
    /// Approving parties in arrival order.
    approvals: Vec<u16>,
    signers: Option<Vec<u16>>,
    own: BTreeMap<u16, Vec<SignerSession<C>>>,
    commitments: BTreeMap<u16, Vec<Vec<u8>>>,
    packages: Option<Vec<Vec<u8>>>,
    own_shares: BTreeMap<u16, Vec<Vec<u8>>>,
    shares: BTreeMap<u16, Vec<Vec<u8>>>,
    signatures: Option<Vec<[u8; 64]>>,
}

impl<C: Ciphersuite> std::fmt::Debug for Coordinator<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator")
            .field("request", &hex::encode(self.request))
            .field("approvals", &self.approvals)
            .field("approvals_needed", &self.approvals_needed)
            .field("signers", &self.signers)
            .finish_non_exhaustive()
    }
}

impl<C: Ciphersuite> Coordinator<C> {
    /// A coordinator for `request`, whose rule needs `approvals_needed` approvals among
    /// `approvers` (member party → device key).
    ///
    /// Errors: fewer approvers than needed ([`ProtocolError::Params`]).
    pub fn new(
        request: [u8; 32],
        sighashes: Vec<[u8; 32]>,
        approvals_needed: u16,
        approvers: BTreeMap<u16, Vec<u8>>,
        provider_parties: Vec<u16>,
    ) -> Result<Self> {
        if approvals_needed == 0 || usize::from(approvals_needed) > approvers.len() {
            return Err(ProtocolError::Params {
                reason: format!(
                    "the rule needs {approvals_needed} approvals among {} approvers",
                    approvers.len()
                ),
            });
        }
        Ok(Self {
            request,
            sighashes,
            approvals_needed,
            approvers,
            provider_parties,
            approvals: Vec::new(),
            signers: None,
            own: BTreeMap::new(),
            commitments: BTreeMap::new(),
            packages: None,
            own_shares: BTreeMap::new(),
            shares: BTreeMap::new(),
            signatures: None,
        })
    }

    /// Approvals received so far, in arrival order.
    pub fn approvals(&self) -> &[u16] {
        &self.approvals
    }

    /// The chosen signer set, once enough approvals are in.
    pub fn signers(&self) -> Option<&[u16]> {
        self.signers.as_deref()
    }

    fn check_member(&self, sender: &[u8], party: u16, what: &str) -> Result<()> {
        match self.approvers.get(&party) {
            Some(key) if key.as_slice() == sender => Ok(()),
            Some(_) => Err(ProtocolError::Culprit {
                party,
                reason: format!("its {what} was signed by another key"),
            }),
            None => Err(ProtocolError::Culprit {
                party,
                reason: format!("sent a {what} but is not an approver under this rule"),
            }),
        }
    }

    fn check_count(&self, party: u16, n: usize, what: &str) -> Result<()> {
        if n == self.sighashes.len() {
            Ok(())
        } else {
            Err(ProtocolError::Culprit {
                party,
                reason: format!("{n} {what} for {} inputs", self.sighashes.len()),
            })
        }
    }

    /// Takes one verified message from `sender`. Returns whether it changed anything.
    ///
    /// Errors (the message is refused, the request goes on): an approval for another request or
    /// other sighashes, from a non-approver or under another key; commitments or shares from a
    /// party outside the signer set or with the wrong count ([`ProtocolError::Culprit`]).
    pub fn absorb(&mut self, sender: &[u8], message: &DaoMessage) -> Result<bool> {
        match message {
            DaoMessage::Approval(a) => {
                if !same_request(&self.request, &a.request) {
                    return Err(ProtocolError::Culprit {
                        party: a.party,
                        reason: "its approval is for another request".into(),
                    });
                }
                self.check_member(sender, a.party, "approval")?;
                let expected = sighashes_digest(&self.request, &self.sighashes);
                if hash32(&a.sighashes, "approved sighashes")? != expected {
                    return Err(ProtocolError::Culprit {
                        party: a.party,
                        reason: "it approved other sighashes than this PSBT's".into(),
                    });
                }
                if self.approvals.contains(&a.party) {
                    return Ok(false);
                }
                self.approvals.push(a.party);
                Ok(true)
            }
            DaoMessage::Commitments {
                request,
                party,
                commitments,
            } if same_request(&self.request, request) => {
                self.check_member(sender, *party, "commitments")?;
                let Some(signers) = &self.signers else {
                    return Err(ProtocolError::Culprit {
                        party: *party,
                        reason: "it committed before the signer set was chosen".into(),
                    });
                };
                if !signers.contains(party) {
                    return Err(ProtocolError::Culprit {
                        party: *party,
                        reason: "it committed but is not in the signer set".into(),
                    });
                }
                self.check_count(*party, commitments.len(), "commitments")?;
                let value: Vec<Vec<u8>> = commitments.iter().map(|c| c.to_vec()).collect();
                match self.commitments.get(party) {
                    Some(existing) if *existing == value => Ok(false),
                    Some(_) => Err(ProtocolError::Culprit {
                        party: *party,
                        reason: "it sent two different sets of commitments".into(),
                    }),
                    None => {
                        self.commitments.insert(*party, value);
                        Ok(true)
                    }
                }
            }
            DaoMessage::Shares {
                request,
                party,
                shares,
            } if same_request(&self.request, request) => {
                self.check_member(sender, *party, "signature shares")?;
                if self.packages.is_none() || !self.commitments.contains_key(party) {
                    return Err(ProtocolError::Culprit {
                        party: *party,
                        reason: "it sent shares without a signing package for it".into(),
                    });
                }
                self.check_count(*party, shares.len(), "signature shares")?;
                if self.shares.contains_key(party) {
                    return Ok(false);
                }
                self.shares
                    .insert(*party, shares.iter().map(|s| s.to_vec()).collect());
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Whether [`Coordinator::advance`] will use the provider's key packages now.
    pub fn needs_keys(&self) -> bool {
        let members_committed = self.signers.as_ref().is_some_and(|s| {
            s.iter()
                .filter(|p| !self.provider_parties.contains(p))
                .all(|p| self.commitments.contains_key(p))
        });
        (self.signers.is_none() && self.approvals.len() >= usize::from(self.approvals_needed))
            || (self.packages.is_none() && members_committed)
    }

    /// Advances as far as the messages allow: picks the signer set once enough approvals are in
    /// (and commits with the provider's parties), builds the signing packages once every chosen
    /// member committed (and signs with the provider's parties), aggregates once every share is
    /// in. `keys` are the provider's key packages by party (needed when [`needs_keys`] says so).
    ///
    /// [`needs_keys`]: Coordinator::needs_keys
    pub fn advance(
        &mut self,
        keys: &BTreeMap<u16, KeyPackage<C>>,
        public_key_package: &PublicKeyPackage<C>,
        rng: &mut (impl CryptoRng + RngCore),
    ) -> Result<Vec<DaoMessage>> {
        let mut out = Vec::new();
        if self.signers.is_none() && self.approvals.len() >= usize::from(self.approvals_needed) {
            let mut signers: Vec<u16> = self
                .approvals
                .iter()
                .take(usize::from(self.approvals_needed))
                .copied()
                .collect();
            signers.extend(&self.provider_parties);
            signers.sort_unstable();
            for &party in &self.provider_parties {
                let key = keys.get(&party).ok_or_else(|| ProtocolError::Params {
                    reason: format!("the provider's key package for party {party} is missing"),
                })?;
                let mut sessions = Vec::new();
                let mut commitments = Vec::new();
                for sighash in &self.sighashes {
                    let (s, c) = SignerSession::commit(key, party, sighash, &signers, rng)?;
                    sessions.push(s);
                    commitments.push(c);
                }
                self.own.insert(party, sessions);
                self.commitments.insert(party, commitments);
            }
            out.push(DaoMessage::SignerSet {
                request: ByteBuf::from(self.request.to_vec()),
                parties: signers.clone(),
            });
            self.signers = Some(signers);
        }
        let Some(signers) = self.signers.clone() else {
            return Ok(out);
        };
        if self.packages.is_none() && signers.iter().all(|p| self.commitments.contains_key(p)) {
            let mut packages = Vec::with_capacity(self.sighashes.len());
            for (i, sighash) in self.sighashes.iter().enumerate() {
                let mut per_input = BTreeMap::new();
                for p in &signers {
                    let c = self
                        .commitments
                        .get(p)
                        .and_then(|v| v.get(i))
                        .ok_or_else(|| ProtocolError::Culprit {
                            party: *p,
                            reason: format!("no commitment for input {i}"),
                        })?;
                    per_input.insert(*p, c.clone());
                }
                packages.push(signing_package::<C>(sighash, &per_input)?);
            }
            for (party, sessions) in std::mem::take(&mut self.own) {
                let key = keys.get(&party).ok_or_else(|| ProtocolError::Params {
                    reason: format!("the provider's key package for party {party} is missing"),
                })?;
                let mut shares = Vec::with_capacity(sessions.len());
                for (session, package) in sessions.into_iter().zip(&packages) {
                    shares.push(session.sign(key, package)?);
                }
                self.own_shares.insert(party, shares);
            }
            out.push(DaoMessage::SigningPackages {
                request: ByteBuf::from(self.request.to_vec()),
                packages: bufs(packages.clone()),
            });
            self.packages = Some(packages);
        }
        if let Some(packages) = &self.packages
            && self.signatures.is_none()
            && signers
                .iter()
                .all(|p| self.shares.contains_key(p) || self.own_shares.contains_key(p))
        {
            let mut signatures = Vec::with_capacity(packages.len());
            for (i, package) in packages.iter().enumerate() {
                let mut per_input = BTreeMap::new();
                for p in &signers {
                    let share = self
                        .shares
                        .get(p)
                        .or_else(|| self.own_shares.get(p))
                        .and_then(|v| v.get(i))
                        .ok_or_else(|| ProtocolError::Culprit {
                            party: *p,
                            reason: format!("no signature share for input {i}"),
                        })?;
                    per_input.insert(*p, share.clone());
                }
                let sig = aggregate::<C>(package, &per_input, public_key_package)?;
                let sig: [u8; 64] =
                    sig.as_slice()
                        .try_into()
                        .map_err(|_| ProtocolError::Frost {
                            reason: format!("signature of {} bytes, expected 64", sig.len()),
                        })?;
                signatures.push(sig);
            }
            self.signatures = Some(signatures);
        }
        Ok(out)
    }

    /// The aggregated signatures (one per input, BIP-340), once every share is in.
    pub fn signatures(&self) -> Option<&[[u8; 64]]> {
        self.signatures.as_deref()
    }

    /// The member parties in the signer set (a signer set, once announced, is final).
    pub fn chosen_members(&self) -> Vec<u16> {
        self.signers
            .as_ref()
            .map(|s| {
                s.iter()
                    .filter(|p| !self.provider_parties.contains(p))
                    .copied()
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;
    use crate::auth::public_key_bytes;
    use crate::dao::dkg::Outputs;
    use crate::dao::tests::keys;
    use rand_core::OsRng;

    type Tr = frost_secp256k1_tr::Secp256K1Sha256TR;

    struct Dao {
        members: Vec<p256::ecdsa::SigningKey>,
        provider: p256::ecdsa::SigningKey,
        outputs: Vec<(Vec<u8>, Outputs<Tr>)>,
    }

    fn dao() -> Dao {
        let members = keys(5);
        let provider = keys(1).pop().unwrap();
        let results = crate::dao::dkg::tests::run_dkg(&members, &provider);
        Dao {
            members,
            provider,
            outputs: results.into_iter().map(|(k, _, o)| (k, o)).collect(),
        }
    }

    fn approvers(d: &Dao) -> BTreeMap<u16, Vec<u8>> {
        d.members
            .iter()
            .enumerate()
            .map(|(i, k)| (i as u16 + 1, public_key_bytes(k)))
            .collect()
    }

    /// Runs a signing of `sighashes` with `approving` members (party numbers) and a rule needing
    /// `needed`; returns the signatures, or None when the coordinator never got there.
    fn run(
        d: &Dao,
        sighashes: Vec<[u8; 32]>,
        needed: u16,
        approving: &[u16],
    ) -> Option<Vec<[u8; 64]>> {
        let request = [9u8; 32];
        let provider_pk = public_key_bytes(&d.provider);
        let mut coord = Coordinator::<Tr>::new(
            request,
            sighashes.clone(),
            needed,
            approvers(d),
            vec![6, 7, 8],
        )
        .unwrap();
        let provider_keys: BTreeMap<u16, KeyPackage<Tr>> = d.outputs[5]
            .1
            .iter()
            .map(|(p, o)| (*p, o.key_package.clone()))
            .collect();
        let pkp = d.outputs[5].1[0].1.public_key_package.clone();
        let mut signers = Vec::new();
        let mut bus: Vec<(Vec<u8>, DaoMessage)> = Vec::new();
        for &p in approving {
            let (s, approval) = MemberSigner::<Tr>::approve(
                request,
                p,
                provider_pk.clone(),
                sighashes.clone(),
                "txid".into(),
            );
            bus.push((public_key_bytes(&d.members[usize::from(p) - 1]), approval));
            signers.push((p, s));
        }
        for _ in 0..6 {
            for (sender, m) in std::mem::take(&mut bus) {
                coord.absorb(&sender, &m).unwrap();
                for (p, s) in signers.iter_mut() {
                    let kp = &d.outputs[usize::from(*p) - 1].1[0].1.key_package;
                    let out = s.handle(&sender, &m, kp, &mut OsRng).unwrap();
                    let pk = public_key_bytes(&d.members[usize::from(*p) - 1]);
                    bus.extend(out.into_iter().map(|m| (pk.clone(), m)));
                }
            }
            let out = coord.advance(&provider_keys, &pkp, &mut OsRng).unwrap();
            bus.extend(out.into_iter().map(|m| (provider_pk.clone(), m)));
        }
        coord.signatures().map(<[_]>::to_vec)
    }

    #[test]
    fn three_approvals_sign_two_inputs_and_the_signatures_verify() {
        let d = dao();
        let sighashes = vec![[1u8; 32], [2u8; 32]];
        let sigs = run(&d, sighashes.clone(), 3, &[2, 4, 5]).expect("signed");
        let vk = *d.outputs[0].1[0].1.public_key_package.verifying_key();
        for (sig, msg) in sigs.iter().zip(&sighashes) {
            let sig = frost_core::Signature::<Tr>::deserialize(sig).unwrap();
            vk.verify(msg, &sig).unwrap();
        }
    }

    #[test]
    fn two_approvals_do_not_reach_a_three_approval_rule() {
        let d = dao();
        assert!(run(&d, vec![[1u8; 32]], 3, &[1, 2]).is_none());
        // Four approvals where the rule needs four: signed with 4 members + provider (7 > t).
        assert!(run(&d, vec![[1u8; 32]], 4, &[1, 2, 3, 5]).is_some());
        assert!(run(&d, vec![[1u8; 32]], 5, &[1, 2, 3, 5]).is_none());
        assert!(run(&d, vec![[1u8; 32]], 5, &[1, 2, 3, 4, 5]).is_some());
    }

    #[test]
    fn an_approval_for_another_request_or_psbt_is_refused() {
        let d = dao();
        let pk = public_key_bytes(&d.members[0]);
        let mut coord =
            Coordinator::<Tr>::new([9; 32], vec![[1; 32]], 3, approvers(&d), vec![6, 7, 8])
                .unwrap();
        // Same request, other sighashes (another PSBT's).
        let (_, other_psbt) =
            MemberSigner::<Tr>::approve([9; 32], 1, vec![], vec![[2; 32]], String::new());
        assert!(matches!(
            coord.absorb(&pk, &other_psbt),
            Err(ProtocolError::Culprit { party: 1, .. })
        ));
        // Another request.
        let (_, other_request) =
            MemberSigner::<Tr>::approve([8; 32], 1, vec![], vec![[1; 32]], String::new());
        assert!(coord.absorb(&pk, &other_request).is_err());
        // Party 2's approval signed by party 1's key.
        let (_, as_two) =
            MemberSigner::<Tr>::approve([9; 32], 2, vec![], vec![[1; 32]], String::new());
        assert!(coord.absorb(&pk, &as_two).is_err());
        // The right one counts once.
        let (_, good) =
            MemberSigner::<Tr>::approve([9; 32], 1, vec![], vec![[1; 32]], String::new());
        assert!(coord.absorb(&pk, &good).unwrap());
        assert!(!coord.absorb(&pk, &good).unwrap());
        assert_eq!(coord.approvals(), &[1]);
    }

    #[test]
    fn a_member_refuses_a_package_for_another_message_and_a_foreign_transaction() {
        let d = dao();
        let provider_pk = public_key_bytes(&d.provider);
        let kp = &d.outputs[0].1[0].1.key_package;
        let (mut s, _) = MemberSigner::<Tr>::approve(
            [9; 32],
            1,
            provider_pk.clone(),
            vec![[1; 32]],
            "good".into(),
        );
        let set = DaoMessage::SignerSet {
            request: ByteBuf::from(vec![9; 32]),
            parties: vec![1, 2, 3, 6, 7, 8],
        };
        // From someone else than the provider: ignored.
        assert!(
            s.handle(&public_key_bytes(&d.members[1]), &set, kp, &mut OsRng)
                .unwrap()
                .is_empty()
        );
        let out = s.handle(&provider_pk, &set, kp, &mut OsRng).unwrap();
        let DaoMessage::Commitments { commitments, .. } = &out[0] else {
            panic!()
        };
        // A package over another message, with our commitment: refused.
        let mut c = BTreeMap::new();
        c.insert(1u16, commitments[0].to_vec());
        for p in [2u16, 3, 6, 7, 8] {
            let kp = if p <= 5 {
                d.outputs[usize::from(p) - 1].1[0].1.key_package.clone()
            } else {
                d.outputs[5].1[usize::from(p) - 6].1.key_package.clone()
            };
            let (_, cp) =
                SignerSession::<Tr>::commit(&kp, p, &[1; 32], &[1, 2, 3, 6, 7, 8], &mut OsRng)
                    .unwrap();
            c.insert(p, cp);
        }
        let bad = signing_package::<Tr>(&[2; 32], &c).unwrap();
        let msg = DaoMessage::SigningPackages {
            request: ByteBuf::from(vec![9; 32]),
            packages: vec![ByteBuf::from(bad)],
        };
        assert!(matches!(
            s.handle(&provider_pk, &msg, kp, &mut OsRng),
            Err(ProtocolError::SessionMismatch { .. })
        ));
        // A published transaction other than the approved one.
        let signed = DaoMessage::Signed {
            request: ByteBuf::from(vec![9; 32]),
            txid: "evil".into(),
            tx: ByteBuf::new(),
        };
        assert!(matches!(
            s.handle(&provider_pk, &signed, kp, &mut OsRng),
            Err(ProtocolError::Disagreement { .. })
        ));
    }
}
