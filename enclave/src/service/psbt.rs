//! Personal wallets' PSBT signing and spending policy, inside the enclave.
//!
//! A personal 2-of-3 wallet (device, provider, recovery) may carry a policy, fixed at creation:
//! its TOML text and the wallet's network travel in the [`Registration`] the device signs
//! (`auth::registration_digest_with`), so the host cannot swap them. The policy has one member,
//! `owner`, whose key is the wallet's current device key; the device's own signed request is its
//! one approval.
//!
//! With a policy, the enclave signs only what it can value: a raw-digest `SignCommit` is refused,
//! and a `SignPsbtCommit` is parsed here (the sighashes, the value leaving and the destinations
//! computed from the PSBT with the wallet's own output key, never from its labels), evaluated
//! against the policy with the wallet's spend history (velocity rules: a rolling window), and only
//! then committed to, one FROST session per input. At `SignPsbtShare` the shares are computed,
//! the policy is evaluated again under the state lock (another spend may have been signed since
//! the commitments), and the spend is recorded in the anchored state *before* the shares leave:
//! a client that takes them and never broadcasts still used its allowance. Nonces live only in
//! memory, once, in [`SignerSession`]s.
//!
//! The device key alone can never change or remove the policy (a thief holding the phone must
//! not lift its own limit); `SetPolicy` is accepted only under the offline recovery credential.
//! Without a policy, PSBTs are signed too (history is still recorded, so a policy set later counts
//! the spends already made).

use super::table::ConnectionId;
use cosigner_protocol::id::Epoch;
use cosigner_protocol::id::PartyId;
use cosigner_protocol::policy::{ASSET_BTC, Chain, Member, PastSpend, Policy, Spend};
use cosigner_protocol::psbt::{self as btc, Network};
use cosigner_protocol::sign::decode_commitments;
use cosigner_protocol::signing::{SignMessage, Signing};
use cosigner_protocol::wire::{PsbtEvaluation, Registration, Response, SessionId, WalletId};
use serde_bytes::ByteBuf;
use sha2::{Digest, Sha256};

use super::authorized::{Actor, PsbtNow};
use super::failure::{Failure, Outcome, internal};
use super::records::WalletState;
use super::sign::{epoch_in_use, open_signing_each, sign_packages};
use super::sign_now::{Now, alongside, draw, other_signer};
use super::{Service, Suite, now_ms, own_keys, public_key_package, random};
use cosigner_protocol::hd;

/// The one member of a personal wallet's policy: the device key.
pub const OWNER: &str = "owner";
/// Most inputs signed in one PSBT (each is a FROST session in memory).
pub const MAX_INPUTS: usize = btc::MAX_INPUTS;
const DAY_MS: u64 = 86_400_000;
/// Spends older than this are folded into one entry (velocity windows are meant for days).
const HISTORY_KEEP_MS: u64 = 366 * 86_400_000;
/// Most spends kept; beyond it the two oldest are merged (dated at the later one: over-counts,
/// never under-counts).
const MAX_HISTORY: usize = 4096;

/// A PSBT signing session: one FROST session per input, bound to its sighash.
pub(super) struct PsbtSession {
    owner: ConnectionId,
    /// This cosigner's side of the signature, one message per input (see `sign::PendingSign`).
    signing: Signing<Suite>,
    inputs: usize,
    /// What its release records.
    spend: Release,
}

impl PsbtSession {
    /// The epoch whose share it signs with.
    pub(super) fn epoch(&self) -> Epoch {
        self.spend.epoch
    }
}

/// Most signed txids remembered per wallet (the oldest are forgotten first).
const MAX_SIGNED_TXIDS: usize = 4096;

/// What a signed spend is remembered by: its txid and a digest of its sighashes. Two PSBTs of one
/// transaction that claim different amounts for what they spend have one txid but different
/// sighashes (BIP-341 commits to every amount): the second is judged again, not let through as
/// signed before.
fn spend_key(txid: &str, sighashes: &[[u8; 32]]) -> String {
    let mut h = Sha256::new();
    for sighash in sighashes {
        h.update(sighash);
    }
    format!("{txid}:{}", hex::encode(h.finalize()))
}

/// Whether the wallet already signed (and counted) the spend `key` ([`spend_key`]).
fn already_signed(state: &WalletState, key: &str) -> bool {
    state.signed_txids.iter().any(|(t, _)| t == key)
}

/// Remembers that the spend `key` ([`spend_key`]) was signed (and counted) at `now`.
fn remember_signed(state: &mut WalletState, key: &str, now: u64) {
    remember_txid(&mut state.signed_txids, key, now);
}

/// Adds `txid` to a bounded list of signed transactions (a year, at most [`MAX_SIGNED_TXIDS`]).
pub(super) fn remember_txid(signed: &mut Vec<(String, u64)>, txid: &str, now: u64) {
    signed.push((txid.to_owned(), now));
    let cutoff = now.saturating_sub(HISTORY_KEEP_MS);
    signed.retain(|(_, at)| *at >= cutoff);
    let excess = signed.len().saturating_sub(MAX_SIGNED_TXIDS);
    signed.drain(..excess);
}

/// The members a personal wallet's policy is parsed against.
pub(super) fn owner(device_key: &[u8]) -> Vec<Member> {
    vec![Member {
        name: OWNER.into(),
        device_key: device_key.to_vec(),
    }]
}

/// Checks the policy and network a device registers at creation. A policy needs a network (its
/// destinations are addresses) and must parse with the device key as its only member.
pub(super) fn creation_terms(
    registration: &Registration,
    device_key: &[u8],
) -> Result<(Option<String>, Option<String>), Failure> {
    if let Some(name) = &registration.network {
        btc::network_from_name(name)?;
    }
    if let Some(text) = &registration.policy {
        if registration.network.is_none() {
            return Err(Failure::bad(
                "a wallet policy needs the wallet's network (its rules name addresses)",
            ));
        }
        Policy::parse(text, &owner(device_key))?;
    }
    Ok((registration.policy.clone(), registration.network.clone()))
}

/// The audit decision of a wallet's creation: which policy it was created with, if any.
pub(super) fn creation_decision(state: &WalletState) -> String {
    match &state.policy {
        Some(text) => format!(
            "allowed: policy {}",
            hex::encode(Sha256::digest(text.as_bytes()))
        ),
        None => "allowed".into(),
    }
}

fn keys(state: &WalletState) -> Result<btc::OwnKeys, Failure> {
    own_keys(
        &state.params.wallet_id,
        &public_key_package(&state.public_key_package)?,
    )
}

fn network(state: &WalletState) -> Result<Network, Failure> {
    match &state.network {
        Some(name) => Ok(btc::network_from_name(name)?),
        // Wallets created before policies: no rule depends on it, addresses read as mainnet.
        None => Ok(Network::Bitcoin),
    }
}

/// The policy's decision for a spend now, with the wallet's history: `Ok(None)` without a
/// policy, `Ok(Some(rule))` when a rule allows it, `Err(reason)` when it is refused.
fn judge(
    state: &WalletState,
    value_leaving: u64,
    fee: u64,
    destinations: &[String],
    now: u64,
) -> Result<Result<Option<String>, String>, Failure> {
    let Some(policy) = wallet_policy(state)? else {
        return Ok(Ok(None));
    };
    // The fee is judged too: it goes to no listed destination (docs/policy.md).
    let spend = Spend {
        asset: ASSET_BTC,
        value_leaving: value_leaving.into(),
        destinations,
        now_ms: now,
        history: &state.history,
        call: None,
    };
    match policy.evaluate_with_fee(&spend, fee.into()) {
        Ok(d) if d.approvals > 1 => Ok(Err(format!(
            "rule {:?} needs {} approvals; a personal wallet has one approver",
            d.rule, d.approvals
        ))),
        Ok(d) => Ok(Ok(Some(d.rule))),
        Err(denial) => {
            // What a person needs to see beside the rules: how much already left recently.
            let since = now.saturating_sub(DAY_MS);
            let spent = state
                .history
                .iter()
                .filter(|s| s.asset == ASSET_BTC && s.at_ms >= since)
                .fold(0u128, |sum, s| sum.saturating_add(s.amount));
            Ok(Err(format!(
                "{} ({spent} sat left the wallet in the last 24 hours)",
                denial.reason
            )))
        }
    }
}

/// The personal wallet's policy, parsed for its chain; `None` without one.
pub(super) fn wallet_policy(state: &WalletState) -> Result<Option<Policy>, Failure> {
    let chain = Chain::of_network(state.network.as_deref());
    state
        .policy
        .as_deref()
        .map(|text| Policy::parse_for(chain, text, &owner(&state.device_key)))
        .transpose()
        .map_err(|e| internal(format!("stored policy: {e}")))
}

/// Appends a bitcoin spend (see [`record_asset`]).
pub(super) fn record(history: &mut Vec<PastSpend>, now: u64, amount: u64) {
    record_asset(history, now, ASSET_BTC, amount.into());
}

/// Appends a spend of `asset`; folds each asset's spends older than [`HISTORY_KEEP_MS`] into
/// one, and keeps at most [`MAX_HISTORY`] entries by merging the oldest entry that has a later
/// one of its asset into that later one (there is always one: a policy has far fewer assets than
/// the cap). Both only ever over-count a window, never under-count it.
pub(super) fn record_asset(history: &mut Vec<PastSpend>, now: u64, asset: &str, amount: u128) {
    history.push(PastSpend {
        at_ms: now,
        asset: asset.into(),
        amount,
    });
    history.sort_by_key(|s| s.at_ms);
    let cutoff = now.saturating_sub(HISTORY_KEEP_MS);
    let (old, mut kept): (Vec<PastSpend>, Vec<PastSpend>) =
        history.drain(..).partition(|s| s.at_ms < cutoff);
    let mut folded: Vec<PastSpend> = Vec::new();
    for spend in old {
        match folded.iter_mut().find(|f| f.asset == spend.asset) {
            Some(f) => {
                f.amount = f.amount.saturating_add(spend.amount);
                f.at_ms = f.at_ms.max(spend.at_ms);
            }
            None => folded.push(spend),
        }
    }
    folded.sort_by_key(|s| s.at_ms);
    folded.append(&mut kept);
    *history = folded;
    while history.len() > MAX_HISTORY {
        let pair = history.iter().enumerate().find_map(|(i, oldest)| {
            let later = history
                .iter()
                .skip(i + 1)
                .position(|s| s.asset == oldest.asset)?;
            Some((i, i + 1 + later))
        });
        let Some((oldest, next)) = pair else { break };
        let first = history.remove(oldest);
        // `next` moved down by one with the removal.
        if let Some(later) = history.get_mut(next - 1) {
            later.amount = later.amount.saturating_add(first.amount);
        }
    }
}

/// A PSBT read and judged for a `SignPsbtCommit`.
struct Judged {
    summary: btc::SpendSummary,
    destinations: Vec<String>,
    /// The rule that allows it (`None`: no policy, or signed before).
    rule: Option<String>,
}

/// Reads a PSBT for the wallet of `state` and judges it against the wallet's policy; `refuse`
/// records a refusal and makes its failure.
fn judge_psbt(
    state: &WalletState,
    epoch: Epoch,
    psbt: &[u8],
    signers: &[PartyId],
    refuse: &dyn Fn(String) -> Failure,
) -> Result<Judged, Failure> {
    let wallet_id = state.params.wallet_id;
    if let Some(stranger) = signers.iter().find(|s| !state.params.parties.contains(s)) {
        return Err(refuse(format!(
            "party {stranger} is not a party of wallet {wallet_id}"
        )));
    }
    if !epoch_in_use(state, epoch) {
        return Err(refuse(format!(
            "epoch {epoch} is not in use (current epoch {}): this share was refreshed away",
            state.current_epoch
        )));
    }
    let summary =
        btc::analyze(psbt, &keys(state)?, network(state)?).map_err(|e| refuse(e.to_string()))?;
    if summary.sighashes.len() > MAX_INPUTS {
        return Err(refuse(format!(
            "{} inputs, at most {MAX_INPUTS} in one PSBT",
            summary.sighashes.len()
        )));
    }
    let destinations: Vec<String> = summary
        .destinations
        .iter()
        .map(|d| d.address.clone())
        .collect();
    // A transaction signed before (a retry after a crash, or the same PSBT again) was judged
    // and counted then; signing it again moves nothing more (one transaction is mined once).
    let rule = if already_signed(state, &spend_key(&summary.txid, &summary.sighashes)) {
        None
    } else {
        judge(
            state,
            summary.value_leaving,
            summary.fee,
            &destinations,
            now_ms(),
        )?
        .map_err(|reason| refuse(format!("refused by the wallet's policy: {reason}")))?
    };
    Ok(Judged {
        summary,
        destinations,
        rule,
    })
}

/// The enclave's reading of a PSBT, for the client to show.
fn evaluation(summary: btc::SpendSummary, rule: Option<String>) -> PsbtEvaluation {
    PsbtEvaluation {
        txid: summary.txid,
        value_leaving: summary.value_leaving,
        fee: summary.fee,
        change: summary.change,
        destinations: summary
            .destinations
            .into_iter()
            .map(|d| (d.address, d.amount))
            .collect(),
        rule,
    }
}

/// What releases a PSBT session's shares: the coordinator's packages (two rounds), or the other
/// signer's commitments, from which the enclave builds each package itself (one round).
enum Feed {
    Packages(Vec<Vec<u8>>),
    Commitments {
        party: PartyId,
        commitments: Vec<Vec<u8>>,
    },
}

/// What a PSBT session's release records: the session less its signing engine.
struct Release {
    wallet_id: WalletId,
    epoch: Epoch,
    actor: Actor,
    psbt_digest: [u8; 32],
    txid: String,
    /// What it is remembered by once signed ([`spend_key`]).
    spend_key: String,
    value_leaving: u64,
    fee: u64,
    destinations: Vec<String>,
}

/// Our shares of `signing` from `feed`.
fn feed_shares(signing: &mut Signing<Suite>, feed: Feed) -> Result<Vec<Vec<u8>>, Failure> {
    match feed {
        Feed::Packages(packages) => sign_packages(signing, packages),
        Feed::Commitments { party, commitments } => {
            signing.absorb(&SignMessage::Commitments { party, commitments })?;
            match signing.advance()?.into_iter().next() {
                Some(SignMessage::Shares { shares, .. }) => Ok(shares),
                _ => Err(internal("the signing engine signed nothing")),
            }
        }
    }
}

impl Service {
    /// A raw-digest `SignCommit` for a wallet with a policy: the enclave cannot value a digest.
    pub(super) fn raw_sign_refused(
        &self,
        wallet_id: &WalletId,
        actor: &Actor,
        digest: &[u8],
    ) -> Failure {
        self.refused(
            wallet_id,
            "sign",
            &actor.label(),
            digest,
            "refused: the wallet has a policy (raw digest)",
        );
        Failure::bad(
            "this wallet has a policy: sign a PSBT (cosigner sign --psbt), not a raw digest the \
             provider cannot value",
        )
    }

    /// `SignPsbtCommit`: analyse, evaluate, commit once per input. With `two_rounds` the
    /// authorization is logged now; a one-round `SignPsbtNow` logs only its release.
    pub(super) fn sign_psbt_commit(
        &self,
        owner_session: ConnectionId,
        mut state: WalletState,
        actor: &Actor,
        epoch: Epoch,
        (psbt, signers): (&[u8], &[PartyId]),
        two_rounds: bool,
    ) -> Outcome {
        let wallet_id = state.params.wallet_id;
        let psbt_digest: [u8; 32] = Sha256::digest(psbt).into();
        let refuse = |why: String| -> Failure {
            self.refused(
                &wallet_id,
                "sign-psbt",
                &actor.label(),
                &psbt_digest,
                &format!("refused: {why}"),
            );
            Failure::bad(why)
        };
        let judged = judge_psbt(&state, epoch, psbt, signers, &refuse)?;
        let inputs = &judged.summary.sighashes;
        self.psbt_refresh_due(&mut state, actor, &psbt_digest, inputs.len())?;
        let key = self.key_of(wallet_id, state.party, epoch)?;
        // Each input signs with the key it spends: the wallet's own, or a child's (the path's
        // public tweak added to the share, docs/addresses.md).
        let keys = hd::key_packages_for(&wallet_id, &key, &judged.summary.input_paths)?;
        let messages = inputs.iter().map(|sighash| sighash.to_vec()).collect();
        let (signing, commitments) = open_signing_each(&state, keys, signers, messages)?;
        let commitments = commitments.into_iter().map(ByteBuf::from).collect();
        let Judged {
            summary,
            destinations,
            rule,
        } = judged;
        // Two rounds: the authorization is logged now, the release later (if ever). One round
        // logs only the release, in the same request.
        if two_rounds {
            self.log(
                &wallet_id,
                "sign-psbt",
                &actor.label(),
                &psbt_digest,
                &format!(
                    "allowed: {} {} sat leaving (fee {}), {}",
                    summary.txid,
                    summary.value_leaving,
                    summary.fee,
                    match &rule {
                        Some(r) => format!("rule {r:?}"),
                        None => "no policy".into(),
                    }
                ),
            )?;
        }
        let session_id = SessionId(random::<16>()?);
        let session = PsbtSession {
            owner: owner_session,
            signing,
            inputs: summary.sighashes.len(),
            spend: Release {
                wallet_id,
                epoch,
                actor: actor.clone(),
                psbt_digest,
                txid: summary.txid.clone(),
                spend_key: spend_key(&summary.txid, &summary.sighashes),
                value_leaving: summary.value_leaving,
                fee: summary.fee,
                destinations,
            },
        };
        self.psbts.insert(session_id, wallet_id, session, |mine| {
            format!("wallet {wallet_id} has {mine} PSBT signing sessions open")
        })?;
        Ok(Response::PsbtCommitted {
            session_id,
            commitments,
            evaluation: evaluation(summary, rule),
        })
    }

    /// The provider's refresh demands (`[policy]` of the enclave's config), as for `SignCommit`;
    /// each input counts as a signature.
    fn psbt_refresh_due(
        &self,
        state: &mut WalletState,
        actor: &Actor,
        digest: &[u8],
        inputs: usize,
    ) -> Result<(), Failure> {
        let wallet_id = state.params.wallet_id;
        let refuse = |why: String| -> Failure {
            self.refused(
                &wallet_id,
                "sign-psbt",
                &actor.label(),
                digest,
                &format!("refused: {why}"),
            );
            Failure::bad(why)
        };
        let age = std::time::Duration::from_millis(now_ms().saturating_sub(state.epoch_started_ms));
        if let Some(limit) = self.policy.after
            && age > limit
        {
            return Err(refuse(format!(
                "refresh required: the shares are {} s old, the policy allows {} s",
                age.as_secs(),
                limit.as_secs()
            )));
        }
        if let Some(limit) = self.policy.after_signatures {
            let _guard = self.writer(&wallet_id)?;
            // Reloaded under the lock: a spend recorded meanwhile must not be overwritten.
            *state = self.records().load_state(&wallet_id)?;
            if state.signatures >= limit {
                return Err(refuse(format!(
                    "refresh required: {} signatures in this epoch, the policy allows {limit}",
                    state.signatures
                )));
            }
            state.signatures = state.signatures.saturating_add(inputs as u64);
            self.records().save_state(&wallet_id, state)?;
        }
        Ok(())
    }

    /// `SignPsbtShare`: consume the session, compute the shares, evaluate again and record the
    /// spend (anchored), then release the shares.
    pub(super) fn sign_psbt_share(
        &self,
        owner_session: ConnectionId,
        session_id: &SessionId,
        signing_packages: &[ByteBuf],
    ) -> Outcome {
        // Removed before use: whatever happens next, its nonces are never used again.
        let pending = self.psbts.take(session_id, |p| {
            if p.owner != owner_session {
                return Err(Failure::denied(
                    "this signing session belongs to another connection",
                ));
            }
            Ok(())
        })?;
        let packages = signing_packages.iter().map(|p| p.to_vec()).collect();
        let (shares, receipt) = self.release_psbt(pending, Feed::Packages(packages))?;
        Ok(Response::PsbtShares {
            shares,
            receipt: Some(ByteBuf::from(receipt)),
        })
    }

    /// `SignPsbtNow`: the commitments and the release at once. Our nonces are drawn now, after
    /// the client's commitments are known, and used in this same request: the client learns our
    /// commitments only with our shares. The precommitment whose id was the challenge is
    /// dropped unused (its nonces zeroize).
    pub(super) fn sign_psbt_now(&self, now: Now<'_>, owner: ConnectionId, p: PsbtNow) -> Outcome {
        let Now {
            state,
            actor,
            held,
            store,
            ..
        } = now;
        if let Some(held) = held.as_ref().filter(|h| h.epoch() != p.epoch) {
            return Err(Failure::bad(format!(
                "the commitment used is for epoch {}, the request signs at epoch {}",
                held.epoch(),
                p.epoch
            )));
        }
        drop(held);
        let (wallet_id, party) = (state.params.wallet_id, state.party);
        let other = other_signer(&state, &p.signers)?;
        // The client's commitments decode before anything is counted or logged.
        for c in &p.commitments {
            decode_commitments::<Suite>(other, c)?;
        }
        let psbt = (p.psbt.as_slice(), p.signers.as_slice());
        let committed = self.sign_psbt_commit(owner, state, &actor, p.epoch, psbt, false)?;
        let Response::PsbtCommitted {
            session_id,
            commitments,
            evaluation,
        } = committed
        else {
            return Err(internal("the PSBT commitments answered something else"));
        };
        let pending = self.psbts.take(&session_id, |_| Ok(()))?;
        let theirs = p.commitments.into_iter().map(ByteBuf::into_vec).collect();
        let feed = Feed::Commitments {
            party: other,
            commitments: theirs,
        };
        let (shares, receipt) = self.release_psbt(pending, feed)?;
        // The spend is recorded: the shares leave whatever happens to the next commitment (the
        // client falls back to a challenge without one).
        let next = self
            .key_of(wallet_id, party, p.epoch)
            .and_then(|key| draw(wallet_id, party, p.epoch, &key))
            .ok()
            .map(|(held, next)| {
                store.keep(held);
                next
            });
        Ok(Response::SignedPsbtNow {
            commitments,
            shares,
            evaluation,
            receipt: ByteBuf::from(receipt),
            next,
        })
    }

    /// Our shares of `pending` (from the coordinator's packages, or built here from the other
    /// signer's commitments), released once the policy was evaluated again and the spend
    /// recorded: the shares and the receipt of the spend.
    fn release_psbt(
        &self,
        pending: PsbtSession,
        feed: Feed,
    ) -> Result<(Vec<ByteBuf>, Vec<u8>), Failure> {
        let count = match &feed {
            Feed::Packages(p) => p.len(),
            Feed::Commitments { commitments, .. } => commitments.len(),
        };
        if count != pending.inputs {
            return Err(Failure::bad(format!(
                "{count} signing packages or commitments for {} inputs",
                pending.inputs
            )));
        }
        let PsbtSession {
            mut signing, spend, ..
        } = pending;
        let (shares, receipt) = match feed {
            // A coordinator's packages are checked against the session while the shares are
            // computed: nothing is recorded for packages that do not match.
            Feed::Packages(packages) => {
                let shares = sign_packages(&mut signing, packages)?;
                (shares, self.record_release(&spend)?)
            }
            // Commitments that decode (`sign_psbt_now` checked them before anything was
            // counted) leave nothing for the shares to refuse: they are computed on another
            // thread while this one records the spend; they leave only with the receipt.
            feed @ Feed::Commitments { .. } => {
                let (shares, recorded) = alongside(
                    move || feed_shares(&mut signing, feed),
                    || self.record_release(&spend),
                );
                let receipt = recorded?;
                (shares??, receipt)
            }
        };
        Ok((shares.into_iter().map(ByteBuf::from).collect(), receipt))
    }

    /// Evaluates `spend` again under the wallet's lock, records it in the anchored state (once
    /// per transaction) and logs it: the receipt.
    fn record_release(&self, spend: &Release) -> Result<Vec<u8>, Failure> {
        let wallet_id = spend.wallet_id;
        let label = spend.actor.label();
        let refuse = |why: String| -> Failure {
            self.refused(
                &wallet_id,
                "sign-psbt",
                &label,
                &spend.psbt_digest,
                &format!("refused at release: {why}"),
            );
            Failure::bad(why)
        };
        let _guard = self.writer(&wallet_id)?;
        let mut state = self.records().load_state(&wallet_id)?;
        if !spend.actor.still_authorized(&state) {
            return Err(refuse(
                "the key that opened this session is no longer authorized (recovery)".into(),
            ));
        }
        // The key package was taken at the commitment: an epoch refreshed away since then
        // must not sign (the share it held is retired, as if it had been deleted).
        if !epoch_in_use(&state, spend.epoch) {
            return Err(refuse(format!(
                "epoch {} is no longer in use: refreshed since the commitments",
                spend.epoch
            )));
        }
        let now = now_ms();
        // Recorded once per transaction, before the shares leave: a retry of a signature whose
        // shares were released but never reached the client finds it here and is not counted
        // again.
        let rule = if already_signed(&state, &spend.spend_key) {
            None
        } else {
            let rule = judge(
                &state,
                spend.value_leaving,
                spend.fee,
                &spend.destinations,
                now,
            )?
            .map_err(|reason| refuse(format!("refused by the wallet's policy: {reason}")))?;
            record(&mut state.history, now, spend.value_leaving);
            remember_signed(&mut state, &spend.spend_key, now);
            self.records().save_state(&wallet_id, &state)?;
            rule
        };
        self.log(
            &wallet_id,
            "sign-psbt",
            &label,
            &spend.psbt_digest,
            &format!(
                "signed {}: {} sat leaving{}",
                spend.txid,
                spend.value_leaving,
                rule.map(|r| format!(", rule {r:?}")).unwrap_or_default()
            ),
        )
    }

    /// `SetPolicy` (recovery credential only): replace or remove the wallet's policy. The spend
    /// history is kept, so a new velocity limit counts the spends already made.
    pub(super) fn set_policy(
        &self,
        state: WalletState,
        actor: &Actor,
        policy: Option<String>,
        digest: &[u8],
    ) -> Outcome {
        let wallet_id = state.params.wallet_id;
        drop(state);
        let _guard = self.writer(&wallet_id)?;
        let mut state = self.records().load_state(&wallet_id)?;
        let decision = match &policy {
            Some(text) => {
                if state.network.is_none() {
                    return Err(Failure::bad(
                        "this wallet was created without a network: create a new wallet with \
                         --policy",
                    ));
                }
                let chain = Chain::of_network(state.network.as_deref());
                if let Err(e) = Policy::parse_for(chain, text, &owner(&state.device_key)) {
                    self.refused(
                        &wallet_id,
                        "set-policy",
                        &actor.label(),
                        digest,
                        "refused: the policy does not parse",
                    );
                    return Err(e.into());
                }
                format!(
                    "allowed: policy {}",
                    hex::encode(Sha256::digest(text.as_bytes()))
                )
            }
            None => "allowed: policy removed".into(),
        };
        state.policy = policy;
        self.records().save_state(&wallet_id, &state)?;
        self.log(&wallet_id, "set-policy", &actor.label(), digest, &decision)?;
        Ok(Response::Done)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn history_is_bounded_and_never_under_counts() {
        let day = 86_400_000u64;
        let now = 1000 * day;
        let mut h = Vec::new();
        for i in 0..10 {
            record(&mut h, now - 400 * day + i, 5);
        }
        record(&mut h, now, 7);
        // The ten old spends are folded into one entry of 50, dated at the newest of them.
        assert_eq!(h.len(), 2);
        assert_eq!(h[0].amount, 50);
        assert_eq!(h[0].at_ms, now - 400 * day + 9);
        assert_eq!(h[1].amount, 7);

        let mut h = Vec::new();
        for i in 0..(MAX_HISTORY as u64 + 10) {
            record(&mut h, now + i, 1);
        }
        assert_eq!(h.len(), MAX_HISTORY);
        let total: u128 = h.iter().map(|s| s.amount).sum();
        assert_eq!(total, MAX_HISTORY as u128 + 10, "nothing is lost");
        assert!(h.windows(2).all(|w| w[0].at_ms <= w[1].at_ms));
    }

    #[test]
    fn assets_are_folded_and_merged_apart() {
        let day = 86_400_000u64;
        let now = 1000 * day;
        let mut h = Vec::new();
        record_asset(&mut h, now - 400 * day, "eth", 3);
        record_asset(&mut h, now - 399 * day, "usdc", 4);
        record_asset(&mut h, now - 398 * day, "eth", 5);
        record_asset(&mut h, now, "eth", 1);
        let eth_old: Vec<_> = h.iter().filter(|s| s.asset == "eth").collect();
        assert_eq!(eth_old.len(), 2);
        assert_eq!(eth_old[0].amount, 8, "the two old eth spends folded");
        assert!(h.iter().any(|s| s.asset == "usdc" && s.amount == 4));

        // At the cap, a lone spend of another asset is kept; eth's oldest merge forward.
        let mut h = Vec::new();
        record_asset(&mut h, now, "usdc", u128::MAX);
        for i in 0..(MAX_HISTORY as u64 + 5) {
            record_asset(&mut h, now + 1 + i, "eth", 2);
        }
        assert_eq!(h.len(), MAX_HISTORY);
        assert_eq!(h[0].asset, "usdc");
        let eth: u128 = h
            .iter()
            .filter(|s| s.asset == "eth")
            .map(|s| s.amount)
            .sum();
        assert_eq!(eth, 2 * (MAX_HISTORY as u128 + 5));
    }
}
