//! An Ethereum treasury's signing requests (`cosigner_protocol::dao::ecdsa`): the transaction is
//! decoded and valued here, judged by the treasury's policy with its anchored history, approvals
//! are counted against the rule's approvers, and the provider's parties sign (DKLs23, exactly the
//! threshold: its parties and the first approvers) only once they are in. The spend is judged
//! again and recorded under the wallet's lock before the signed transaction is published.

use std::collections::BTreeMap;

use cosigner_eth::policy::Judgement;
use cosigner_eth::{UnsignedTx, Valuation};
use cosigner_protocol::dao::{Evaluation, Layout, SignRequest};
use cosigner_protocol::ecdsa::sign::RecoverableSignature;

use super::*;

/// A signature of an Ethereum treasury in progress.
pub(super) struct EthSignJob {
    wallet_id: WalletId,
    hash: [u8; 32],
    tx: UnsignedTx,
    valuation: Valuation,
    rule: String,
    policy_version: u64,
    provider_parties: Vec<PartyId>,
    epoch: Epoch,
    names: BTreeMap<PartyId, String>,
    pub(super) coordinator: EcdsaCoordinator,
    /// The provider's shares, unsealed once the signer set is chosen (memory only; zeroized on
    /// drop).
    keys: BTreeMap<PartyId, EcdsaKey>,
}

impl EthSignJob {
    pub(super) fn hash(&self) -> [u8; 32] {
        self.hash
    }
}

/// What the provider tells every member about an Ethereum request: the signing hash, each asset
/// leaving and the rule.
fn eth_evaluation(
    hash: [u8; 32],
    digest: [u8; 32],
    judgement: &Judgement,
    approvers: &BTreeMap<PartyId, Vec<u8>>,
) -> Evaluation {
    Evaluation {
        request: ByteBuf::from(hash.to_vec()),
        sighashes: vec![ByteBuf::from(digest.to_vec())],
        value_leaving: 0,
        fee: 0,
        destinations: Vec::new(),
        rule: judgement.decision.rule.clone(),
        approvals: judgement.decision.approvals,
        approvers: approvers.keys().copied().collect(),
        leaving: judgement
            .outflows
            .iter()
            .map(|o| {
                let to = o
                    .destinations
                    .first()
                    .cloned()
                    .unwrap_or_else(|| "-".into());
                (o.asset.clone(), o.amount.to_string(), to)
            })
            .collect(),
    }
}

impl Service {
    /// Founds the signature of an Ethereum treasury's request (see the module docs).
    pub(super) fn found_eth_sign(
        &self,
        topic: &Topic,
        sender: &[u8],
        request: &SignRequest,
        round: u32,
    ) -> Result<(Ceremony, Vec<DaoMessage>), Failure> {
        let (founded, state, layout) = self.member_request(topic, sender, request)?;
        let (hash, wallet_id) = (founded.hash, founded.wallet_id);
        let policy = Self::dao_policy(&state, &layout)?;
        let refuse = |reason: String| self.refuse_request(&founded, reason);
        let now = now_ms();
        if let Some(reason) = stale_request(request, &hash, &state, now) {
            return refuse(reason);
        }
        let tx = match UnsignedTx::from_signing_payload(&request.psbt) {
            Ok(tx) => tx,
            Err(e) => return refuse(format!("transaction refused: {e}")),
        };
        let valuation = match Valuation::of(&tx) {
            Ok(v) => v,
            Err(e) => return refuse(format!("transaction refused: {e}")),
        };
        let judgement = match cosigner_eth::policy::judge(&policy, &valuation, &state.history, now)
        {
            Ok(j) => j,
            Err(denial) => return refuse(format!("policy: {}", denial.reason)),
        };
        let mut approvers = approver_keys(&layout, &judgement.decision.approvers)?;
        // An excluded member neither approves nor signs (see `DaoState::excluded`).
        approvers.retain(|party, _| !state.excluded.contains(party));
        if approvers.len() < usize::from(judgement.decision.approvals) {
            return refuse(format!(
                "rule {:?} needs {} approvals, and members {:?} are excluded from signing (a \
                 failed check of threshold ECDSA): too few approvers are left",
                judgement.decision.rule, judgement.decision.approvals, state.excluded
            ));
        }
        let digest = tx.signing_hash();
        let coordinator = match EcdsaCoordinator::new(
            &layout,
            hash,
            digest,
            judgement.decision.approvals,
            approvers.clone(),
        )
        .and_then(|c| c.starting_at(round))
        {
            Ok(c) => c,
            Err(e) => return refuse(e.to_string()),
        };
        let evaluation = eth_evaluation(hash, digest, &judgement, &approvers);
        self.log_founded(
            &founded,
            &format!(
                "evaluated: {} wei leaving on chain {}, rule {:?} needs {} approvals",
                valuation.value.saturating_add(valuation.max_fee),
                valuation.chain_id,
                judgement.decision.rule,
                judgement.decision.approvals
            ),
        )?;
        Ok((
            Ceremony::EthSign(Box::new(EthSignJob {
                wallet_id,
                hash,
                tx,
                valuation,
                rule: judgement.decision.rule,
                policy_version: state.policy_version,
                provider_parties: state.provider_parties.clone(),
                epoch: state.epoch,
                names: member_names(&layout),
                coordinator,
                keys: BTreeMap::new(),
            })),
            vec![DaoMessage::Evaluation(evaluation)],
        ))
    }

    /// Advances an Ethereum treasury's signature; `true` once the signed transaction is out.
    pub(super) fn advance_eth_sign(
        &self,
        job: &mut EthSignJob,
    ) -> Result<(Vec<DaoMessage>, bool), Failure> {
        if job.coordinator.is_dead() {
            let dead = (job.coordinator.quorum(), &job.names, job.rule.as_str());
            return Err(self.refuse_rejected(&job.wallet_id, &job.hash, dead)?);
        }
        // A refresh that committed since deleted the shares this job holds: they must not sign
        // on from memory (checked in memory first, as for Bitcoin DAO signatures).
        let refreshed = lock(&self.dao_epochs)?.get(&job.wallet_id).copied();
        if refreshed.is_some_and(|epoch| epoch != job.epoch) {
            job.keys.clear();
            return Err(bad(
                "the wallet was refreshed since this request was evaluated: request it again",
            ));
        }
        // Steps run one at a time (every DAO delivery holds the ceremonies' lock), and an exclusion
        // is recorded before the step that found it answers: no other request's step with the
        // excluded member runs after it (each failed check may leak one bit, so it is asked once).
        let chosen = job.coordinator.chosen_members();
        if !chosen.is_empty() {
            let state = self.records().load_dao_state(&job.wallet_id)?;
            if let Some(party) = chosen.iter().find(|p| state.excluded.contains(p)) {
                return Err(bad(format!(
                    "member {party} is excluded from signing (a failed check of threshold ECDSA)"
                )));
            }
        }
        let silent = job.coordinator.replace_silent(now_ms());
        if !silent.is_empty() {
            self.log(
                &job.wallet_id,
                "dao-sign",
                &format!("members:{silent:?}"),
                &job.hash,
                "silent: a new round with other approvers",
            )?;
        }
        if job.coordinator.needs_keys() && job.keys.is_empty() {
            job.keys = self.treasury_keys(job)?;
        }
        let keys: BTreeMap<PartyId, &EcdsaKey> = job.keys.iter().map(|(p, k)| (*p, k)).collect();
        let advanced = job.coordinator.advance(&keys, &mut rand_core::OsRng);
        drop(keys);
        let mut messages = match advanced {
            Ok(messages) => messages,
            Err(cosigner_protocol::ProtocolError::Refused { reason }) => return Err(bad(reason)),
            Err(cosigner_protocol::ProtocolError::Excluded { party, reason }) => {
                return Err(self.exclude_member(job, party, &reason)?);
            }
            Err(e) => return Err(Failure::from(e)),
        };
        let Some(signature) = job.coordinator.signature().copied() else {
            return Ok((messages, false));
        };
        job.keys.clear();
        messages.push(self.record_eth_spend(job, &signature)?);
        Ok((messages, true))
    }

    /// Records (anchored) that member `party` is excluded from signing, and audits it; returns
    /// the refusal of the request.
    fn exclude_member(
        &self,
        job: &EthSignJob,
        party: PartyId,
        reason: &str,
    ) -> Result<Failure, Failure> {
        if job.provider_parties.contains(&party) {
            return Ok(internal(format!(
                "our own party {party} failed a check: {reason}"
            )));
        }
        let _guard = self.writer(&job.wallet_id)?;
        let mut state = self.records().load_dao_state(&job.wallet_id)?;
        if !state.excluded.contains(&party) {
            state.excluded.push(party);
            self.records().save_dao_state(&job.wallet_id, &state)?;
        }
        self.log(
            &job.wallet_id,
            "dao-exclude",
            &format!("member:{party}"),
            &job.hash,
            &format!("excluded from signing: {reason}"),
        )?;
        Ok(bad(format!(
            "member {party} is excluded from signing from now on (a failed check of threshold \
             ECDSA: {reason})"
        )))
    }

    /// The provider's threshold ECDSA shares of the job's epoch, checked to be of the wallet.
    fn treasury_keys(&self, job: &EthSignJob) -> Result<BTreeMap<PartyId, EcdsaKey>, Failure> {
        let state = self.records().load_dao_state(&job.wallet_id)?;
        if state.epoch != job.epoch {
            return Err(bad(
                "the wallet was refreshed since this request was evaluated: request it again",
            ));
        }
        Ok(self.treasury_shares(&job.wallet_id, &state, job.epoch)?.0)
    }

    /// The provider's threshold ECDSA shares of treasury `wallet_id` at `epoch` (the epoch of
    /// `state`), each checked to be its party's share of the wallet, with the wallet's public
    /// side.
    pub(super) fn treasury_shares(
        &self,
        wallet_id: &WalletId,
        state: &DaoState,
        epoch: Epoch,
    ) -> Result<(BTreeMap<PartyId, EcdsaKey>, EcdsaPublic), Failure> {
        let integrity = |what: String| Failure::new(ErrorKind::Integrity, what);
        let public = EcdsaPublic::from_bytes(&state.public_key_package)
            .map_err(|e| integrity(format!("stored public key: {e}")))?;
        let mut keys = BTreeMap::new();
        for &party in &state.provider_parties {
            let share = self.records().load_dao_share(wallet_id, party, epoch)?;
            let key = EcdsaKey::from_secret_bytes(&share.key_package)
                .map_err(|e| integrity(format!("stored threshold ECDSA share: {e}")))?;
            if !public.is_share_of(party, &key) {
                return Err(integrity(format!(
                    "the stored share of party {party} is not of wallet {wallet_id}"
                )));
            }
            keys.insert(party, key);
        }
        Ok((keys, public))
    }

    /// The signature is made: checks the state again, records the spend (anchored), and returns
    /// the signed transaction to publish.
    fn record_eth_spend(
        &self,
        job: &EthSignJob,
        signature: &RecoverableSignature,
    ) -> Result<DaoMessage, Failure> {
        let _guard = self.writer(&job.wallet_id)?;
        let mut state = self.records().load_dao_state(&job.wallet_id)?;
        if state.epoch != job.epoch || state.policy_version != job.policy_version {
            return Err(bad(
                "the wallet was refreshed or its policy changed since this request was \
                 evaluated: request it again",
            ));
        }
        if state
            .completed
            .iter()
            .any(|(h, _)| h.as_slice() == job.hash)
        {
            return Err(bad("this request was already signed"));
        }
        let layout = state.invitation.layout()?;
        let policy = Self::dao_policy(&state, &layout)?;
        let now = now_ms();
        let judgement = cosigner_eth::policy::judge(&policy, &job.valuation, &state.history, now)
            .map_err(|d| bad(format!("policy (at signing time): {}", d.reason)))?;
        check_approvals(&layout, &judgement, job)?;
        let signed = job
            .tx
            .clone()
            .into_signed(&cosigner_eth::RecoverableSignature {
                r: signature.r,
                s: signature.s,
                y_parity: signature.y_odd,
            })
            .map_err(|e| internal(format!("assembling the signed transaction: {e}")))?;
        // Counted once per transaction, as personal Ethereum wallets count theirs.
        let key = format!("eth:{}", hex::encode(job.tx.signing_hash()));
        if !state.signed_txids.iter().any(|(k, _)| *k == key) {
            for flow in &judgement.outflows {
                super::super::psbt::record_asset(&mut state.history, now, &flow.asset, flow.amount);
            }
            super::super::psbt::remember_txid(&mut state.signed_txids, &key, now);
        }
        state
            .completed
            .retain(|(_, at)| at.saturating_add(REQUEST_MAX_AGE_MS) >= now);
        state
            .completed
            .push((ByteBuf::from(job.hash.to_vec()), now));
        self.records().save_dao_state(&job.wallet_id, &state)?;
        let tx_hash = format!("0x{}", hex::encode(signed.hash));
        self.log(
            &job.wallet_id,
            "dao-sign",
            &format!("members:{:?}", job.coordinator.quorum().approvals()),
            &job.hash,
            &format!("signed {tx_hash} under rule {:?}", job.rule),
        )?;
        Ok(DaoMessage::Signed {
            request: ByteBuf::from(job.hash.to_vec()),
            txid: tx_hash,
            tx: ByteBuf::from(signed.raw),
        })
    }
}

/// The rule deciding now must be the one the approvals were counted under, its approvals all
/// in, every approval (and every signing member) one of its approvers: a spend that no longer
/// fits its rule (velocity used by a parallel request) must not fall through to another.
fn check_approvals(
    layout: &Layout,
    judgement: &Judgement,
    job: &EthSignJob,
) -> Result<(), Failure> {
    let decision = &judgement.decision;
    if decision.rule != job.rule {
        return Err(bad(format!(
            "policy (at signing time): rule {:?} decides now, the approvals were for rule {:?}",
            decision.rule, job.rule
        )));
    }
    let allowed = approver_keys(layout, &decision.approvers)?;
    let approvals = job.coordinator.quorum().approvals();
    let chosen = job.coordinator.chosen_members();
    if approvals.len() < usize::from(decision.approvals)
        || approvals
            .iter()
            .chain(&chosen)
            .any(|p| !allowed.contains_key(p))
        || chosen.iter().any(|p| !approvals.contains(p))
    {
        return Err(bad(format!(
            "policy (at signing time): rule {:?} needs {} approvals among its approvers",
            decision.rule, decision.approvals
        )));
    }
    Ok(())
}
