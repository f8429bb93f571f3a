//! Ethereum signing with threshold ECDSA wallets (`EthSignStart`, `EthSignFinish`;
//! docs/ethereum.md). The enclave decodes the transaction from its signing payload (strictly:
//! `cosigner_eth::UnsignedTx::from_signing_payload`), values it, and signs the digest it computed
//! itself, never one a client sent. Its DKLs23 session (the instance key and multiplication
//! state) lives only in memory, in this table, and is used once: taken out before use, dropped
//! on expiry, never sealed or stored.

use cosigner_eth::policy::{Judgement, Outflow};
use cosigner_eth::{UnsignedTx, Valuation};
use cosigner_protocol::ProtocolError;
use cosigner_protocol::ecdsa::sign::{self, EcdsaSignMessage, EcdsaSigning};
use cosigner_protocol::ecdsa::{EcdsaKey, EcdsaPublic};
use cosigner_protocol::id::{Epoch, PartyId};
use cosigner_protocol::wire::{ErrorKind, Response, SessionId, WalletId};
use serde_bytes::ByteBuf;

use super::authorized::{Actor, EthSign};
use super::failure::{Failure, Outcome};
use super::psbt::{record_asset, remember_txid, wallet_policy};
use super::records::WalletState;
use super::table::ConnectionId;
use super::{Service, is_ecdsa, now_ms, random};

/// An open Ethereum signing session, between `EthSignStart` and `EthSignFinish`.
pub(super) struct PendingEth {
    wallet_id: WalletId,
    epoch: Epoch,
    /// The connection that opened it: only it may finish it.
    owner: ConnectionId,
    /// The key that authorized it: re-checked when the signature is released.
    actor: Actor,
    /// The state anchor's generation when it was authorized (see `sign::PendingSign`).
    generation: Option<u64>,
    /// Our share, unsealed at the start (zeroized when the session ends).
    key: EcdsaKey,
    /// Our side of DKLs23 after round 2.
    signing: EcdsaSigning,
    /// The transaction it signs.
    tx: UnsignedTx,
    /// Its value, judged again under the wallet's lock before the signature leaves.
    valuation: Valuation,
}

impl PendingEth {
    /// The epoch whose share it signs with.
    pub(super) fn epoch(&self) -> Epoch {
        self.epoch
    }
}

/// The audit log's action for an Ethereum signature (and its refusals).
const SIGN_ETH: &str = "sign-eth";

/// Ethereum signing sessions one wallet may have open: each holds its own unsealed share
/// (~100 KB), so fewer than FROST's.
const MAX_ETH_SIGNS_PER_WALLET: usize = 4;

/// The refusal of a wallet whose other signer was excluded.
fn excluded(parties: &[PartyId]) -> Failure {
    let names: Vec<String> = parties.iter().map(ToString::to_string).collect();
    Failure::denied(format!(
        "party {} failed a signing check that leaks key material and is excluded from signing \
         with this wallet (a recovery or a new wallet is needed)",
        names.join(", ")
    ))
}

fn too_many(wallet_id: &WalletId, open: usize) -> String {
    format!(
        "wallet {wallet_id} has {open} Ethereum signing sessions open: finish or let them expire"
    )
}

impl Service {
    /// `EthSignStart`: the transaction checked and valued, our rounds 1 and 2.
    pub(super) fn eth_sign_start(
        &self,
        owner: ConnectionId,
        mut state: WalletState,
        actor: Actor,
        mut generation: Option<u64>,
        request: EthSign,
    ) -> Outcome {
        let wallet_id = state.params.wallet_id;
        if !is_ecdsa(&state) {
            return Err(Failure::bad(format!(
                "wallet {wallet_id} is not an Ethereum wallet: sign with --message or --psbt"
            )));
        }
        let refuse = |digest: &[u8], why: &str| {
            self.refused(&wallet_id, SIGN_ETH, &actor.label(), digest, why);
        };
        let tx = UnsignedTx::from_signing_payload(&request.tx).map_err(|e| {
            refuse(&request.tx, "refused: not a transaction");
            Failure::bad(format!("transaction: {e}"))
        })?;
        let hash = tx.signing_hash();
        // Valued even without a policy: call data that names an ERC-20 function but is not a
        // well-formed call of it is refused, whatever a policy would say.
        let valuation = Valuation::of(&tx).map_err(|e| {
            refuse(&hash, "refused: malformed token call");
            Failure::bad(format!("transaction: {e}"))
        })?;
        let nonce: [u8; 32] = request
            .nonce
            .as_slice()
            .try_into()
            .map_err(|_| Failure::bad("the signing nonce must be 32 bytes"))?;
        self.check_sign_request(&state, &actor, request.epoch, &hash, &request.signers)?;
        // The two signers are the device's share and ours: a device key may not have the client
        // play another cosigner's party.
        let mut signers = request.signers.clone();
        signers.sort_unstable();
        let expected = [PartyId::DEVICE, state.party];
        if signers != expected {
            refuse(&hash, "refused: signer set");
            return Err(Failure::bad(format!(
                "an Ethereum signature here is by parties {} and {}",
                expected[0], expected[1]
            )));
        }
        // Cheap, before the share is unsealed; `guarded_step` checks again under the lock.
        if !state.excluded.is_empty() {
            refuse(&hash, "refused: signer excluded");
            return Err(excluded(&state.excluded));
        }
        // Judged before any signing material exists; again under the lock at release.
        judge(&state, &valuation, now_ms())?.map_err(|why| {
            refuse(&hash, &format!("refused: {why}"));
            Failure::denied(format!("refused by the wallet's policy: {why}"))
        })?;
        let open = self.eth_signs.open(&wallet_id)?;
        if open >= MAX_ETH_SIGNS_PER_WALLET {
            return Err(Failure::busy(too_many(&wallet_id, open)));
        }
        // The provider's refresh demands count Ethereum signatures too (they can be refreshed).
        // Counted before the share is unsealed, so a demand already due is a cheap refusal; a
        // session that then fails has counted one signature too many, the safe side (a refresh
        // is demanded a little early, never late).
        self.count_signature(&mut state, &actor, request.epoch, &hash, &mut generation)?;
        let key = self.ecdsa_key(&state, request.epoch)?;
        let id = sign::sign_id(&wallet_id, &request.signers, &nonce);
        let (mut signing, round1) = sign::start(&key, &request.signers, id, hash)?;
        let round2 = self.guarded_step(&wallet_id, &actor, &hash, || {
            signing.round2(&key, std::slice::from_ref(&request.round1))
        })?;
        let session_id = SessionId(random::<16>()?);
        let pending = PendingEth {
            wallet_id,
            epoch: request.epoch,
            owner,
            actor,
            generation,
            key,
            signing,
            tx,
            valuation,
        };
        self.eth_signs
            .insert(session_id, wallet_id, pending, |open| {
                too_many(&wallet_id, open)
            })?;
        Ok(Response::EthSignRound {
            session_id,
            round1,
            round2,
        })
    }

    /// `EthSignFinish`: our round 3, released only once the signature is in the audit log.
    pub(super) fn eth_sign_finish(
        &self,
        owner: ConnectionId,
        session_id: &SessionId,
        round2: &EcdsaSignMessage,
        round3: &EcdsaSignMessage,
    ) -> Outcome {
        // Removed before use: whatever happens next, this session is never used again.
        let pending = self.eth_signs.take(session_id, |p| {
            if p.owner != owner {
                return Err(Failure::denied(
                    "this signing session belongs to another connection",
                ));
            }
            Ok(())
        })?;
        if self.records().state_generation(&pending.wallet_id)? != pending.generation {
            self.recheck_signer(&pending.wallet_id, &pending.actor, pending.epoch)?;
        }
        let PendingEth {
            wallet_id,
            actor,
            key,
            mut signing,
            tx,
            valuation,
            ..
        } = pending;
        let hash = tx.signing_hash();
        // DKLs23 verifies the signature against the wallet's key before returning it.
        let (ours, signature) = self.guarded_step(&wallet_id, &actor, &hash, || {
            let ours = signing.round3(&key, std::slice::from_ref(round2))?;
            Ok((ours, signing.finish(&key, std::slice::from_ref(round3))?))
        })?;
        let signed = tx
            .into_signed(&cosigner_eth::RecoverableSignature {
                r: signature.r,
                s: signature.s,
                y_parity: signature.y_odd,
            })
            .map_err(|e| Failure::new(ErrorKind::Internal, format!("signed transaction: {e}")))?;
        // Nothing signed that the log lacks: the spend is recorded and the entry durable
        // before our round 3 leaves.
        let receipt =
            self.record_eth_release(&wallet_id, &actor, &hash, &valuation, &signed.hash)?;
        Ok(Response::EthSigned {
            round3: ours,
            raw_tx: ByteBuf::from(signed.raw),
            tx_hash: ByteBuf::from(signed.hash.to_vec()),
            receipt: ByteBuf::from(receipt),
        })
    }

    /// Judges the transaction again under the wallet's lock (another signature may have spent
    /// since `EthSignStart`), records what leaves in the anchored history once per transaction
    /// (keyed by its signing hash: a retry is not counted twice) and writes the audit entry.
    fn record_eth_release(
        &self,
        wallet_id: &WalletId,
        actor: &Actor,
        hash: &[u8; 32],
        valuation: &Valuation,
        tx_hash: &[u8; 32],
    ) -> Result<Vec<u8>, Failure> {
        let label = actor.label();
        let _guard = self.writer(wallet_id)?;
        let mut state = self.records().load_state(wallet_id)?;
        if !actor.still_authorized(&state) {
            self.refused(
                wallet_id,
                SIGN_ETH,
                &label,
                hash,
                "refused at release: key revoked",
            );
            return Err(Failure::denied(
                "the key that opened this session is no longer authorized (recovery)",
            ));
        }
        let now = now_ms();
        let key = format!("eth:{}", hex::encode(hash));
        let mut decision = "allowed".to_string();
        if !state.signed_txids.iter().any(|(k, _)| *k == key) {
            let judged = judge(&state, valuation, now)?.map_err(|why| {
                let why = format!("refused at release: {why}");
                self.refused(wallet_id, SIGN_ETH, &label, hash, &why);
                Failure::denied(why)
            })?;
            for flow in &judged.outflows {
                record_asset(&mut state.history, now, &flow.asset, flow.amount);
            }
            remember_txid(&mut state.signed_txids, &key, now);
            self.records().save_state(wallet_id, &state)?;
            if let Some(rule) = judged.rule {
                decision = format!("allowed: rule {rule:?}");
            }
        }
        self.log(
            wallet_id,
            SIGN_ETH,
            &label,
            tx_hash,
            &format!("{decision}; signed {}", hex::encode(tx_hash)),
        )
    }

    /// Runs a DKLs23 step on another signer's message, one at a time per wallet (under its writer
    /// lock): some of DKLs23's checks leak a secret bit by their outcome (a selective-failure
    /// probe of our OT secrets, eprint 2023/765 §5), so the other signer is checked against the
    /// anchored exclusions first, and where the step says it must be excluded, the exclusion is
    /// recorded there and in the audit log before the lock is released and anyone is answered.
    /// Concurrent requests therefore cannot each ask the question once.
    fn guarded_step<T>(
        &self,
        wallet_id: &WalletId,
        actor: &Actor,
        digest: &[u8],
        step: impl FnOnce() -> Result<T, ProtocolError>,
    ) -> Result<T, Failure> {
        let _guard = self.writer(wallet_id)?;
        let mut state = self.records().load_state(wallet_id)?;
        let refuse = |why: &str| self.refused(wallet_id, SIGN_ETH, &actor.label(), digest, why);
        if !state.excluded.is_empty() {
            refuse("refused: signer excluded");
            return Err(excluded(&state.excluded));
        }
        let error = match step() {
            Ok(value) => return Ok(value),
            Err(error) => error,
        };
        let ProtocolError::Excluded { party, reason } = &error else {
            refuse("refused: bad round message");
            return Err(error.into());
        };
        state.excluded.push(*party);
        self.records().save_state(wallet_id, &state)?;
        self.eth_signs.drop_wallet(wallet_id)?;
        self.log(
            wallet_id,
            SIGN_ETH,
            &actor.label(),
            digest,
            &format!("refused: party {party} excluded ({reason})"),
        )?;
        Err(Failure::denied(format!(
            "party {party} is excluded from signing with this wallet: {reason}"
        )))
    }

    /// Our threshold ECDSA share of `state`'s wallet at `epoch`, checked to be of its key.
    pub(super) fn ecdsa_key(&self, state: &WalletState, epoch: Epoch) -> Result<EcdsaKey, Failure> {
        let wallet_id = state.params.wallet_id;
        let integrity = |what: String| Failure::new(ErrorKind::Integrity, what);
        let share = self
            .records()
            .load_ecdsa_share(&wallet_id, state.party, epoch)?;
        let key = EcdsaKey::from_secret_bytes(&share.key_package)
            .map_err(|e| integrity(format!("stored threshold ECDSA share: {e}")))?;
        let public = EcdsaPublic::from_bytes(&state.public_key_package)
            .map_err(|e| integrity(format!("stored public key: {e}")))?;
        if !public.holds(&key) || key.party() != state.party {
            return Err(integrity(format!(
                "the stored share of wallet {wallet_id} is not of its key"
            )));
        }
        Ok(key)
    }
}

/// What a personal Ethereum wallet's policy says of a transaction now.
struct Judged {
    /// The rule that allowed it (`None`: the wallet has no policy).
    rule: Option<String>,
    /// What leaves: with a policy, every asset; without, the ether (so a policy set later
    /// counts what was spent).
    outflows: Vec<Outflow>,
}

/// Judges `valuation` by the wallet's policy with its history at `now`: `Ok(Err(reason))` when
/// refused. A personal wallet has one approver, so a rule needing more is a refusal.
fn judge(
    state: &WalletState,
    valuation: &Valuation,
    now: u64,
) -> Result<Result<Judged, String>, Failure> {
    let Some(policy) = wallet_policy(state)? else {
        let ether = valuation
            .value
            .checked_add(valuation.max_fee)
            .and_then(|v| u128::try_from(v).ok())
            .unwrap_or(u128::MAX);
        return Ok(Ok(Judged {
            rule: None,
            outflows: vec![Outflow {
                asset: cosigner_protocol::policy::ASSET_ETH.into(),
                amount: ether,
                fee: 0,
                destinations: Vec::new(),
                call: None,
            }],
        }));
    };
    let Judgement { decision, outflows } =
        match cosigner_eth::policy::judge(&policy, valuation, &state.history, now) {
            Ok(judgement) => judgement,
            Err(denial) => return Ok(Err(denial.reason)),
        };
    if decision.approvals > 1 {
        return Ok(Err(format!(
            "rule {:?} needs {} approvals; a personal wallet has one approver",
            decision.rule, decision.approvals
        )));
    }
    Ok(Ok(Judged {
        rule: Some(decision.rule),
        outflows,
    }))
}
