//! DAO wallets inside the enclave: the provider's side of the mailbox ceremonies
//! (`cosigner_protocol::dao`).
//!
//! The enclave never talks to the mailbox itself. Members deliver the topic's envelopes in a
//! `Mailbox` request (any member may: envelopes authenticate themselves) and post back what the
//! enclave answers. A ceremony starts with its founding message, whose hash is the topic: an
//! [`Invitation`] naming this enclave's identity key starts a DKG; a [`SignRequest`] from a
//! member of a DAO wallet starts a signature. The PSBT is analysed here (sighashes, value
//! leaving, destinations) and the policy evaluated here, with the spend history from the
//! anchored state; the provider's parties commit only once the rule's approvals are in, and the
//! spend is recorded (anchored) before the signed transaction is published.
//!
//! A [`RefreshProposal`] from a member refreshes every share of the wallet's current epoch
//! (`refresh_*` below): the provider stores its new shares as prepared (epoch + 1), commits, and
//! makes the new epoch current in the anchored state, deleting its old shares, only once every
//! member committed too. One refresh per wallet runs at a time.
//!
//! Ceremonies live in memory (nonces must). What a stopped participant costs (docs/policy.md,
//! "Interrupted ceremonies"):
//!
//! * a DKG activates the wallet only once every member said its share is stored
//!   ([`DaoMessage::DkgStored`]); a member that lost its round secrets asks for a new attempt
//!   ([`DaoMessage::DkgRetry`]) and the provider starts one, with fresh secrets, as long as it has
//!   not activated the wallet;
//! * a signature goes on in a new round, with fresh provider nonces, when a chosen member lost
//!   its nonces after the signing packages went out (`cosigner_protocol::dao::sign`);
//! * founded again after an enclave restart, a DKG or a signature starts after the last attempt
//!   or round the topic shows this enclave took part in: the nonces and secrets of those died
//!   with the old process and are never reused.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use cosigner_protocol::dao::ecdsa::{
    AnyDkg, AnyOutputs, AnyRefresh, EcdsaCoordinator, EcdsaDaoRefresh,
};
use cosigner_protocol::dao::quorum::Quorum;
use cosigner_protocol::dao::refresh::{DaoRefresh, RefreshProposal};
use cosigner_protocol::dao::sign::Coordinator;
use cosigner_protocol::dao::{
    DaoMessage, Evaluation, Invitation, Layout, PolicyChange, SignRequest,
};
use cosigner_protocol::ecdsa::dkg::EcdsaDkgOutput;
use cosigner_protocol::ecdsa::{EcdsaKey, EcdsaPublic};
use cosigner_protocol::hd;
use cosigner_protocol::id::Epoch;
use cosigner_protocol::id::PartyId;
use cosigner_protocol::mailbox::{Envelope, Topic};
use cosigner_protocol::policy::{ASSET_BTC, Decision, Denial, Policy, Spend};
use cosigner_protocol::wire::{ErrorKind, Response, SUITE_SECP256K1_ECDSA, WalletId};
use cosigner_protocol::{keygen, psbt};
use frost_core::keys::{KeyPackage, PublicKeyPackage};
use serde_bytes::ByteBuf;

mod eth_sign;

use super::records::{DaoState, ShareRecord};
use super::{
    Failure, Outcome, Service, Suite, internal, key_package, lock, now_ms, own_keys,
    public_key_package, share_keys,
};

/// How long a DAO ceremony (and its outbox) is kept in memory.
const DAO_TTL: Duration = Duration::from_secs(3600);
/// Bound on ceremonies in memory.
const MAX_CEREMONIES: usize = 1024;
/// Bound on DKGs in progress (anyone may start one). Reaching it evicts the oldest DKG rather
/// than refusing everyone (its members' couriers found it again from the mailbox).
const MAX_DKGS: usize = 64;
/// Bound on Ethereum treasuries' DKGs in progress (each holds up to about 20 MB: its parties'
/// round-3 pieces, sent and received).
const MAX_ECDSA_DKGS: usize = 4;
/// DKGs one founding key may have in progress at once.
const MAX_DKGS_PER_FOUNDER: usize = 2;
/// Bound on Ethereum treasuries' share refreshes in progress (each holds as much as a treasury's
/// DKG). Only a member can propose one, one per wallet at a time; reaching the bound evicts the
/// longest idle one, and refuses the new one (retryable) when all are in progress.
const MAX_ECDSA_REFRESHES: usize = 4;
/// Treasury refreshes one member key may have proposed and in progress at once (it may be a
/// member of many treasuries: its proposals cannot crowd the others out).
const MAX_ECDSA_REFRESHES_PER_PROPOSER: usize = 1;
/// Bound on the envelopes a ceremony remembers having taken in.
const MAX_SEEN: usize = 16_384;
/// Most inputs of a DAO PSBT (as for personal wallets): the signing packages must fit an envelope.
const MAX_INPUTS: usize = psbt::MAX_INPUTS;
/// Bound on envelopes per delivery.
const MAX_DELIVERY: usize = 1024;
/// Most envelope bytes in one `Mailbox` answer: with the notes it stays inside one frame
/// (`frame::MAX_FRAME_LEN`, 1 MiB), whatever the ceremony (one envelope is at most 512 KiB).
const OUTBOX_PAGE_BYTES: usize = 600 * 1024;
/// A sign request older than this is refused (and completed requests are remembered this long).
const REQUEST_MAX_AGE_MS: u64 = 3_600_000;
/// A sign request dated this far in the future is refused.
const REQUEST_MAX_SKEW_MS: u64 = 300_000;

/// A signature in progress.
struct SignJob {
    wallet_id: WalletId,
    request: SignRequest,
    hash: [u8; 32],
    /// The PSBT's facts, computed when the request was founded.
    summary: psbt::SpendSummary,
    rule: String,
    policy_version: u64,
    provider_parties: Vec<PartyId>,
    /// The wallet's keys the PSBT was read with; the signed PSBT is checked again with them (its
    /// children scanned once per request, not once per reading).
    keys: psbt::OwnKeys,
    /// What checks each input's shares: the public key package of the key it spends.
    public_key_packages: Vec<PublicKeyPackage<Suite>>,
    /// The share epoch the request was evaluated under.
    epoch: Epoch,
    /// Member names by party, to say who rejected.
    names: BTreeMap<PartyId, String>,
    coordinator: Coordinator<Suite>,
}

/// Who rejected a request, by name, with their reasons.
fn rejecters(quorum: &Quorum, names: &BTreeMap<PartyId, String>) -> String {
    let who: Vec<String> = quorum
        .rejections()
        .iter()
        .map(|(p, reason)| {
            let name = names.get(p).map_or("?", String::as_str);
            match reason {
                Some(r) if !r.is_empty() => format!("{name} ({r:?})"),
                _ => name.to_owned(),
            }
        })
        .collect();
    who.join(", ")
}

/// Member names by party.
fn member_names(layout: &Layout) -> BTreeMap<PartyId, String> {
    layout
        .members
        .iter()
        .map(|(p, m)| (*p, m.name.clone()))
        .collect()
}

/// What the provider tells every member about a request: the PSBT's facts and the rule.
fn evaluation_of(
    hash: [u8; 32],
    summary: &psbt::SpendSummary,
    decision: &Decision,
    approvers: &BTreeMap<PartyId, Vec<u8>>,
) -> Evaluation {
    Evaluation {
        request: ByteBuf::from(hash.to_vec()),
        sighashes: summary
            .sighashes
            .iter()
            .map(|s| ByteBuf::from(s.to_vec()))
            .collect(),
        value_leaving: summary.value_leaving,
        fee: summary.fee,
        destinations: summary
            .destinations
            .iter()
            .map(|d| (d.address.clone(), d.amount))
            .collect(),
        rule: decision.rule.clone(),
        approvals: decision.approvals,
        approvers: approvers.keys().copied().collect(),
        leaving: Vec::new(),
    }
}

/// A policy change waiting for its admin quorum (the same approval state machine as a
/// signature's, `dao::quorum`).
struct PolicyJob {
    wallet_id: WalletId,
    change: PolicyChange,
    hash: [u8; 32],
    quorum: Quorum,
    /// Member names by party, to say who rejected.
    names: BTreeMap<PartyId, String>,
}

/// A DKG in progress: the current attempt.
struct DkgJob {
    dkg: AnyDkg,
    invitation: Invitation,
    /// A member lost its state of the current attempt: the next advance starts a new one.
    retry: bool,
    /// The next attempt is at least this one: an earlier instance of this enclave (before a
    /// restart) took part in the attempts below it, with secrets that are gone.
    floor: u32,
}

enum Ceremony {
    Dkg(Box<DkgJob>),
    Sign(Box<SignJob>),
    EthSign(Box<eth_sign::EthSignJob>),
    Policy(Box<PolicyJob>),
    Refresh(Box<RefreshJob>),
    Finished,
}

/// One topic's ceremony, what the enclave has said in it, and what it has already taken in.
pub(super) struct Entry {
    ceremony: Ceremony,
    outbox: Vec<Vec<u8>>,
    seen: HashSet<[u8; 32]>,
    started: Instant,
    /// When a delivery last brought it something new: a ceremony idle this long may be evicted
    /// to make room, one in progress never is.
    touched: Instant,
    /// The key that founded it (the founding envelope's signer): quotas are per founder.
    founder: Vec<u8>,
    /// Random, per founding: tells couriers reading `outbox` in pages that it is a new one.
    instance: [u8; 8],
}

/// The DAO ceremonies in memory, by topic.
pub(super) type Ceremonies = HashMap<Topic, Entry>;

fn bad(message: impl Into<String>) -> Failure {
    Failure::bad(message)
}

/// The provider's refusal of the request (or invitation) hashed `hash`, said in its topic.
fn refused(hash: &[u8; 32], reason: String) -> DaoMessage {
    DaoMessage::Refused {
        request: ByteBuf::from(hash.to_vec()),
        reason,
    }
}

/// The policy's decision on a PSBT's facts now, with the wallet's spend history.
fn judge(
    policy: &Policy,
    summary: &psbt::SpendSummary,
    history: &[cosigner_protocol::policy::PastSpend],
    now: u64,
) -> Result<Decision, Denial> {
    let destinations: Vec<String> = summary
        .destinations
        .iter()
        .map(|d| d.address.clone())
        .collect();
    // The fee is judged too: it goes to no listed destination (docs/policy.md).
    let spend = Spend {
        asset: ASSET_BTC,
        value_leaving: summary.value_leaving.into(),
        destinations: &destinations,
        now_ms: now,
        history,
        call: None,
    };
    policy.evaluate_with_fee(&spend, summary.fee.into())
}

/// The record of a new share (of a DKG or a refresh) at `epoch`.
fn share_record(epoch: Epoch, output: &keygen::Output<Suite>) -> Result<ShareRecord, Failure> {
    Ok(ShareRecord {
        epoch,
        key_package: ByteBuf::from(
            output
                .key_package
                .serialize()
                .map_err(|e| internal(format!("key package: {e}")))?,
        ),
        public_key_package: ByteBuf::from(
            output
                .public_key_package
                .serialize()
                .map_err(|e| internal(format!("public key package: {e}")))?,
        ),
    })
}

/// The records of a DKG's new shares (epoch 0), by party: FROST key packages with the public key
/// package, or threshold ECDSA shares with the wallet's public side (`EcdsaPublic`).
fn share_records(outputs: &AnyOutputs) -> Result<Vec<(PartyId, ShareRecord)>, Failure> {
    match outputs {
        AnyOutputs::Frost(outputs) => outputs
            .iter()
            .map(|(party, output)| Ok((*party, share_record(Epoch(0), output)?)))
            .collect(),
        AnyOutputs::Ecdsa(outputs) => outputs
            .iter()
            .map(|(party, output)| Ok((*party, ecdsa_share_record(Epoch(0), output)?)))
            .collect(),
    }
}

/// The record of a threshold ECDSA share (of a treasury's DKG or refresh) at `epoch`, with the
/// wallet's public side (`EcdsaPublic`).
fn ecdsa_share_record(epoch: Epoch, output: &EcdsaDkgOutput) -> Result<ShareRecord, Failure> {
    Ok(ShareRecord {
        epoch,
        key_package: ByteBuf::from(output.key.to_secret_bytes()?.to_vec()),
        public_key_package: ByteBuf::from(EcdsaPublic::of(output).to_bytes()?),
    })
}

/// Whether a request made at `created_ms` may still be acted on now.
fn fresh(created_ms: u64, now: u64) -> bool {
    created_ms.saturating_add(REQUEST_MAX_AGE_MS) >= now
        && created_ms <= now.saturating_add(REQUEST_MAX_SKEW_MS)
}

/// Why signing request `request` (hash `hash`) may not be acted on at all, if it may not: it is
/// too old or dated in the future, or it was already signed.
fn stale_request(
    request: &SignRequest,
    hash: &[u8; 32],
    state: &DaoState,
    now: u64,
) -> Option<String> {
    if !fresh(request.created_ms, now) {
        return Some("the request is expired or dated in the future".into());
    }
    if state.completed.iter().any(|(h, _)| h.as_slice() == hash) {
        return Some("this request was already signed".into());
    }
    None
}

/// A member's founding request (sign, policy change, refresh): it hashes to its topic and names
/// its wallet and the member who made it.
trait MemberFounding {
    /// What it is called in refusals.
    const WHAT: &'static str;
    /// Its action in the audit log.
    const ACTION: &'static str;
    fn topic(&self) -> cosigner_protocol::Result<Topic>;
    fn hash(&self) -> cosigner_protocol::Result<[u8; 32]>;
    fn wallet_id(&self) -> WalletId;
    /// The member party that made it.
    fn member(&self) -> PartyId;
}

/// The member founding requests: type, name, audit action, the field naming the member who made
/// it.
macro_rules! member_founding {
    ($($kind:ident: $what:literal, $action:literal, $member:ident;)*) => {$(
        impl MemberFounding for $kind {
            const WHAT: &'static str = $what;
            const ACTION: &'static str = $action;
            fn topic(&self) -> cosigner_protocol::Result<Topic> {
                $kind::topic(self)
            }
            fn hash(&self) -> cosigner_protocol::Result<[u8; 32]> {
                $kind::hash(self)
            }
            fn wallet_id(&self) -> WalletId {
                self.wallet_id
            }
            fn member(&self) -> PartyId {
                self.$member
            }
        }
    )*};
}

member_founding! {
    SignRequest: "sign request", "dao-sign", requester;
    PolicyChange: "policy change", "dao-policy", proposer;
    RefreshProposal: "refresh proposal", "dao-refresh", proposer;
}

/// A member's founding request (sign, policy change, refresh) once checked: what the audit log
/// and a refusal name.
struct Founded {
    hash: [u8; 32],
    wallet_id: WalletId,
    actor: String,
    action: &'static str,
}

/// The device keys of the named approvers, by party.
fn approver_keys(layout: &Layout, names: &[String]) -> Result<BTreeMap<PartyId, Vec<u8>>, Failure> {
    let by_name = layout.parties_by_name();
    let mut approvers = BTreeMap::new();
    for name in names {
        let party = by_name
            .get(name)
            .copied()
            .ok_or_else(|| internal(format!("approver {name} is not a member")))?;
        let key = layout
            .owner_of(party)
            .ok_or_else(|| internal(format!("no key for party {party}")))?;
        approvers.insert(party, key.to_vec());
    }
    Ok(approvers)
}

/// Hands each delivered envelope to the topic's ceremony. Only what a ceremony accepts is
/// remembered (bounded): a stranger's validly signed junk costs a verification, not memory.
fn absorb_all(
    entry: &mut Entry,
    own: &[u8],
    opened: &[(Envelope, DaoMessage)],
    notes: &mut Vec<String>,
) {
    for (envelope, message) in opened {
        if entry.seen.contains(&envelope.id()) {
            continue;
        }
        if envelope.sender == own {
            // Ours, but not made by this instance (those are in `seen`): an instance before a
            // restart took part in that attempt or round, with secrets that are gone. The
            // founding delivery may not have shown it (deliveries are cut to fit a frame).
            skip_past_lost(&mut entry.ceremony, message);
            continue;
        }
        let result = match &mut entry.ceremony {
            Ceremony::Dkg(job) => match job.dkg.is_retry(&envelope.sender, message) {
                Ok(true) => {
                    job.retry = true;
                    Ok(true)
                }
                Ok(false) => job
                    .dkg
                    .absorb(&envelope.sender, message)
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            },
            Ceremony::Sign(job) => job
                .coordinator
                .absorb(&envelope.sender, message)
                .map_err(|e| e.to_string()),
            Ceremony::EthSign(job) => job
                .coordinator
                .absorb(&envelope.sender, message)
                .map_err(|e| e.to_string()),
            Ceremony::Policy(job) => job
                .quorum
                .absorb(&envelope.sender, message)
                .map_err(|e| e.to_string()),
            Ceremony::Refresh(job) => job
                .refresh
                .absorb(&envelope.sender, message)
                .map_err(|e| e.to_string()),
            Ceremony::Finished => Ok(false),
        };
        match result {
            Ok(true) if entry.seen.len() < MAX_SEEN => {
                entry.seen.insert(envelope.id());
                entry.touched = Instant::now();
            }
            Ok(_) => {}
            Err(e) => notes.push(format!("{} refused: {e}", message.name())),
        }
    }
}

/// Moves an Ethereum treasury's ceremony past the attempt or round `message` (ours, from an
/// earlier instance of this enclave) belongs to.
fn skip_past_lost(ceremony: &mut Ceremony, message: &DaoMessage) {
    match ceremony {
        Ceremony::Dkg(job) if matches!(job.dkg, AnyDkg::Ecdsa(_)) => {
            if let Some(attempt) = message.dkg_attempt()
                && attempt >= job.dkg.attempt()
            {
                job.retry = true;
                job.floor = job.floor.max(attempt.saturating_add(1));
            }
        }
        Ceremony::EthSign(job) => {
            if let Some(round) = message.signing_round() {
                job.coordinator.skip_past(round);
            }
        }
        Ceremony::Sign(job) => {
            if let Some(round) = message.signing_round() {
                job.coordinator.skip_past(round);
            }
        }
        // A refresh has no attempts to move past: our earlier messages contradict this
        // instance's, so it can only end (`advance_refresh` refuses it).
        Ceremony::Refresh(job) => job.lost = true,
        _ => {}
    }
}

/// How long a ceremony that gets nothing new may keep its place when room is needed.
/// Members approve a refresh by hand, so this is long: a refresh waiting for people is not
/// idle in any sense a flood should exploit.
const IDLE_AFTER: Duration = Duration::from_secs(15 * 60);

/// Whether `entry` got nothing new for [`IDLE_AFTER`].
fn idle(entry: &Entry) -> bool {
    entry.touched.elapsed() >= IDLE_AFTER
}

/// Evicts the idle ceremonies `which` selects, the longest idle first, until fewer than `max`
/// are left (or none is idle): a flood of new ones never ends one in progress.
fn make_room_idle(ceremonies: &mut Ceremonies, max: usize, which: impl Fn(&Entry) -> bool) {
    while ceremonies.values().filter(|e| which(e)).count() >= max {
        let Some(oldest) = ceremonies
            .iter()
            .filter(|(_, e)| which(e) && idle(e))
            .min_by_key(|(_, e)| e.touched)
            .map(|(t, _)| *t)
        else {
            break;
        };
        ceremonies.remove(&oldest);
    }
}

/// Evicts the oldest ceremonies `which` selects until fewer than `max` are left.
fn make_room(ceremonies: &mut Ceremonies, max: usize, which: impl Fn(&Entry) -> bool) {
    while ceremonies.values().filter(|e| which(e)).count() >= max {
        let Some(oldest) = ceremonies
            .iter()
            .filter(|(_, e)| which(e))
            .min_by_key(|(_, e)| e.started)
            .map(|(t, _)| *t)
        else {
            break;
        };
        ceremonies.remove(&oldest);
    }
}

/// The enclave's envelopes of a topic from the `from`-th (from the first when it has fewer: it
/// restarted), as many as fit [`OUTBOX_PAGE_BYTES`] (at least one): `(from, envelopes, more)`.
fn outbox_page(outbox: &[Vec<u8>], from: u32) -> (u32, Vec<ByteBuf>, bool) {
    let start = usize::try_from(from)
        .ok()
        .filter(|f| *f <= outbox.len())
        .unwrap_or(0);
    let mut page = Vec::new();
    let mut bytes = 0usize;
    for envelope in outbox.iter().skip(start) {
        if !page.is_empty() && bytes + envelope.len() > OUTBOX_PAGE_BYTES {
            break;
        }
        bytes += envelope.len();
        page.push(ByteBuf::from(envelope.clone()));
    }
    let more = start + page.len() < outbox.len();
    (u32::try_from(start).unwrap_or(0), page, more)
}

impl Service {
    /// A signing request whose rule can no longer get its approvals, `dead` (its quorum, the
    /// member names, the rule): audited as refused; returns the refusal, naming who rejected
    /// (with their reasons) and what the rule needs.
    fn refuse_rejected(
        &self,
        wallet_id: &WalletId,
        hash: &[u8; 32],
        dead: (&Quorum, &BTreeMap<PartyId, String>, &str),
    ) -> Result<Failure, Failure> {
        let (quorum, names, rule) = dead;
        let reason = format!(
            "rejected by {}: rule {rule:?} can no longer get its approvals",
            rejecters(quorum, names)
        );
        let who: Vec<PartyId> = quorum.rejections().keys().copied().collect();
        self.log(
            wallet_id,
            "dao-sign",
            &format!("members:{who:?}"),
            hash,
            &format!("refused: {reason}"),
        )?;
        Ok(bad(reason))
    }

    /// Refuses a founded request: audited, and answered with a signed `Refused` in its topic.
    fn refuse_request(
        &self,
        founded: &Founded,
        reason: String,
    ) -> Result<(Ceremony, Vec<DaoMessage>), Failure> {
        self.log_founded(founded, &format!("refused: {reason}"))?;
        Ok((Ceremony::Finished, vec![refused(&founded.hash, reason)]))
    }

    /// Audits `decision` on a founded request, as the member who made it.
    fn log_founded(&self, founded: &Founded, decision: &str) -> Result<(), Failure> {
        let Founded {
            hash,
            wallet_id,
            actor,
            action,
        } = founded;
        self.log(wallet_id, action, actor, hash, decision)?;
        Ok(())
    }

    /// `Mailbox`: takes the delivered envelopes of `topic`, advances its ceremony, and answers
    /// with every envelope the enclave produced for it.
    pub(super) fn mailbox(&self, topic: &[u8], envelopes: &[ByteBuf], from: u32) -> Outcome {
        let topic: Topic = topic
            .try_into()
            .map_err(|_| bad(format!("a topic is 16 bytes, got {}", topic.len())))?;
        if envelopes.len() > MAX_DELIVERY {
            return Err(bad(format!(
                "{} envelopes in one delivery, at most {MAX_DELIVERY}",
                envelopes.len()
            )));
        }
        let mut notes = Vec::new();
        let mut opened = Vec::new();
        for raw in envelopes {
            match Envelope::open(raw, &topic)
                .and_then(|e| DaoMessage::decode(&e.body).map(|m| (e, m)))
            {
                Ok(x) => opened.push(x),
                Err(e) => notes.push(format!("envelope refused: {e}")),
            }
        }
        let mut ceremonies = lock(&self.dao)?;
        ceremonies.retain(|_, e| e.started.elapsed() < DAO_TTL);
        if !ceremonies.contains_key(&topic)
            && !self.found(&mut ceremonies, &topic, &opened, &mut notes)?
        {
            // Nothing to found it with: an unknown topic (or one this enclave forgot, after a
            // restart) is founded again by a delivery that carries its founding message.
            return Ok(Response::Mailbox {
                envelopes: Vec::new(),
                notes,
                from: 0,
                more: false,
                outbox: ByteBuf::new(),
            });
        }
        let entry = ceremonies
            .get_mut(&topic)
            .ok_or_else(|| internal("ceremony vanished"))?;
        absorb_all(entry, &self.audit.public_key(), &opened, &mut notes);
        if let Err(e) = self.advance(&topic, entry) {
            notes.push(format!("ceremony failed: {}", e.0.message));
        }
        let (from, envelopes, more) = outbox_page(&entry.outbox, from);
        Ok(Response::Mailbox {
            envelopes,
            notes,
            from,
            more,
            outbox: ByteBuf::from(entry.instance.to_vec()),
        })
    }

    /// Founds the ceremony of `topic` from the delivery's founding message (the one whose hash
    /// is the topic: junk of the same kind posted ahead of it cannot block the ceremony).
    /// Returns `false` when the delivery holds none.
    fn found(
        &self,
        ceremonies: &mut Ceremonies,
        topic: &Topic,
        opened: &[(Envelope, DaoMessage)],
        notes: &mut Vec<String>,
    ) -> Result<bool, Failure> {
        let founding = opened.iter().find(|(_, m)| {
            let hashed = match m {
                DaoMessage::Invitation(i) => i.topic().ok(),
                DaoMessage::SignRequest(r) => r.topic().ok(),
                DaoMessage::PolicyChange(c) => c.topic().ok(),
                DaoMessage::RefreshStart(r) => r.topic().ok(),
                _ => None,
            };
            hashed == Some(*topic)
        });
        let Some((envelope, message)) = founding else {
            return Ok(false);
        };
        if ceremonies.len() >= MAX_CEREMONIES {
            return Err(internal("too many DAO ceremonies in progress"));
        }
        if let DaoMessage::Invitation(inv) = message {
            self.admit_dkg(ceremonies, &envelope.sender, inv)?;
        }
        let mut entry = Entry {
            ceremony: Ceremony::Finished,
            outbox: Vec::new(),
            seen: HashSet::new(),
            started: Instant::now(),
            touched: Instant::now(),
            founder: envelope.sender.to_vec(),
            instance: super::random::<8>()?,
        };
        // Founded again (the enclave restarted, or forgot the topic): the attempts and rounds
        // this enclave already took part in show in the topic under its own key, and their
        // secrets and nonces are gone. Go on after them, never with them.
        let ours = self.audit.public_key();
        let after = |of: fn(&DaoMessage) -> Option<u32>| {
            opened
                .iter()
                .filter(|(e, _)| e.sender == ours)
                .filter_map(|(_, m)| of(m))
                .max()
                .map_or(0, |n| n.saturating_add(1))
        };
        let sender = &envelope.sender;
        let (ceremony, first) = match message {
            DaoMessage::Invitation(inv) => {
                self.found_dkg(topic, sender, inv, after(DaoMessage::dkg_attempt), notes)?
            }
            DaoMessage::SignRequest(req) => {
                let round = after(DaoMessage::signing_round);
                if self.is_treasury(&req.wallet_id)? {
                    self.found_eth_sign(topic, sender, req, round)?
                } else {
                    self.found_sign(topic, sender, req, round)?
                }
            }
            DaoMessage::PolicyChange(change) => self.found_policy(topic, sender, change)?,
            DaoMessage::RefreshStart(proposal) => {
                let room = RefreshRoom {
                    busy: refresh_running(ceremonies, &proposal.wallet_id),
                    theirs: ceremonies
                        .values()
                        .filter(|e| is_treasury_refresh(e) && e.founder.as_slice() == &sender[..])
                        .count(),
                    restarted: opened.iter().any(|(e, _)| e.sender == ours),
                    full: ceremonies
                        .values()
                        .filter(|e| is_treasury_refresh(e))
                        .count()
                        >= MAX_ECDSA_REFRESHES
                        && !ceremonies
                            .values()
                            .any(|e| is_treasury_refresh(e) && idle(e)),
                };
                let founded = self.found_refresh(topic, sender, proposal, room)?;
                if matches!(&founded.0, Ceremony::Refresh(job) if job.is_ecdsa()) {
                    make_room_idle(ceremonies, MAX_ECDSA_REFRESHES, is_treasury_refresh);
                }
                founded
            }
            _ => return Err(internal("founding message of an unexpected kind")),
        };
        entry.ceremony = ceremony;
        self.post(topic, &mut entry, first)?;
        ceremonies.insert(*topic, entry);
        Ok(true)
    }

    /// Makes room for a DKG founded by `founder`. Anyone can found a DKG (an invitation only has
    /// to name this enclave): those get their own, smaller budget, so they cannot crowd out
    /// members' signatures; a quota per founding key, and the budget as a whole evicts its
    /// oldest DKG instead of refusing, so self-made invitations by the dozen cannot block
    /// anybody's wallet creation.
    fn admit_dkg(
        &self,
        ceremonies: &mut Ceremonies,
        founder: &[u8],
        invitation: &Invitation,
    ) -> Result<(), Failure> {
        // Only an invitation that could be founded may make room: one for another provider, or
        // with a broken layout, evicts nobody.
        if invitation.provider_key.as_slice() != self.audit.public_key().as_slice()
            || invitation.layout().is_err()
        {
            return Err(bad(
                "the invitation does not name this provider or is malformed",
            ));
        }
        let is_dkg = |e: &Entry| matches!(e.ceremony, Ceremony::Dkg(..));
        let theirs = ceremonies
            .values()
            .filter(|e| is_dkg(e) && e.founder.as_slice() == founder)
            .count();
        if theirs >= MAX_DKGS_PER_FOUNDER {
            return Err(Failure::new(
                ErrorKind::Busy,
                format!("this key already founded {theirs} DAO wallet creations in progress"),
            ));
        }
        if invitation.ciphersuite == SUITE_SECP256K1_ECDSA {
            // An Ethereum treasury's DKG holds megabytes (base-OT setups for every pair of its
            // at most `MAX_ECDSA_PARTIES` parties): fewer of them, the oldest evicted, once the
            // founder's quota admitted this one.
            make_room(
                ceremonies,
                MAX_ECDSA_DKGS,
                |e| matches!(&e.ceremony, Ceremony::Dkg(job) if matches!(job.dkg, AnyDkg::Ecdsa(_))),
            );
        }
        make_room(ceremonies, MAX_DKGS, is_dkg);
        Ok(())
    }

    /// Signs `messages` as the enclave and adds them to the topic's outbox.
    fn post(
        &self,
        topic: &Topic,
        entry: &mut Entry,
        messages: Vec<DaoMessage>,
    ) -> Result<(), Failure> {
        for m in messages {
            let body = m.encode()?;
            let envelope = self
                .audit
                .seal_envelope(*topic, body)
                .map_err(|e| internal(format!("signing an envelope: {e}")))?;
            entry.seen.insert(envelope.id());
            entry.outbox.push(envelope.encode()?);
        }
        Ok(())
    }

    fn found_dkg(
        &self,
        topic: &Topic,
        sender: &[u8],
        invitation: &Invitation,
        attempt: u32,
        notes: &mut Vec<String>,
    ) -> Result<(Ceremony, Vec<DaoMessage>), Failure> {
        if invitation.topic()? != *topic {
            return Err(bad("the invitation does not hash to its topic"));
        }
        let layout = invitation.layout()?;
        if layout.provider_key != self.audit.public_key() {
            return Err(bad(
                "the invitation names another provider key than this enclave's",
            ));
        }
        if layout.member_party(sender).is_none() {
            return Err(bad("the invitation is not signed by one of its members"));
        }
        let wallet_id = layout.wallet_id;
        if self.records().dao_exists(&wallet_id)? {
            // A member running `join` again after the wallet was activated: the topic already
            // says `Activated`. Not an error of the delivery, which must still relay the topic.
            notes.push(format!("wallet {wallet_id} already exists"));
            return Ok((Ceremony::Finished, Vec::new()));
        }
        let (dkg, mut first) = AnyDkg::start_attempt(
            layout,
            &self.audit.public_key(),
            attempt,
            &mut rand_core::OsRng,
        )?;
        if attempt > 0 {
            first.insert(0, DaoMessage::DkgAttempt { attempt });
        }
        self.log(
            &wallet_id,
            "dao-dkg",
            &format!("member:{}", hex::encode(sender)),
            topic.as_slice(),
            &format!("started (attempt {attempt})"),
        )?;
        Ok((
            Ceremony::Dkg(Box::new(DkgJob {
                dkg,
                invitation: invitation.clone(),
                retry: false,
                floor: 0,
            })),
            first,
        ))
    }

    /// Whether the DAO wallet `id` is an Ethereum treasury (threshold ECDSA).
    fn is_treasury(&self, id: &WalletId) -> Result<bool, Failure> {
        let state = self.records().load_dao_state(id)?;
        Ok(state.invitation.layout()?.is_ecdsa())
    }

    /// The policy in force and the layout of a DAO wallet.
    fn dao_policy(state: &DaoState, layout: &Layout) -> Result<Policy, Failure> {
        let members: Vec<_> = layout.members.iter().map(|(_, m)| m.clone()).collect();
        Ok(Policy::parse_for(layout.chain, &state.policy, &members)?)
    }

    /// Checks what every member's founding `request` must satisfy: it hashes to its topic,
    /// names a DAO wallet this enclave holds, and is signed by the member it names.
    fn member_request<R: MemberFounding>(
        &self,
        topic: &Topic,
        sender: &[u8],
        request: &R,
    ) -> Result<(Founded, DaoState, Layout), Failure> {
        let what = R::WHAT;
        if request.topic()? != *topic {
            return Err(bad(format!("the {what} does not hash to its topic")));
        }
        let (wallet_id, party) = (request.wallet_id(), request.member());
        let state = self.records().load_dao_state(&wallet_id)?;
        let layout = state.invitation.layout()?;
        if layout.member_party(sender) != Some(party) {
            return Err(bad(format!(
                "the {what} is not signed by member {party} of wallet {wallet_id}"
            )));
        }
        let founded = Founded {
            hash: request.hash()?,
            wallet_id,
            actor: format!("member:{}", hex::encode(sender)),
            action: R::ACTION,
        };
        Ok((founded, state, layout))
    }

    fn found_sign(
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
        let public_key_package = public_key_package(&state.public_key_package)?;
        let keys = own_keys(&wallet_id, &public_key_package)?;
        let summary = match psbt::analyze(&request.psbt, &keys, layout.bitcoin_network()?) {
            Ok(s) => s,
            Err(e) => return refuse(format!("PSBT refused: {e}")),
        };
        if summary.sighashes.len() > MAX_INPUTS {
            return refuse(format!(
                "{} inputs, at most {MAX_INPUTS} in one PSBT",
                summary.sighashes.len()
            ));
        }
        let decision = match judge(&policy, &summary, &state.history, now) {
            Ok(d) => d,
            Err(denial) => return refuse(format!("policy: {}", denial.reason)),
        };
        let approvers = approver_keys(&layout, &decision.approvers)?;
        let coordinator = match Coordinator::new(
            hash,
            summary.sighashes.clone(),
            decision.approvals,
            approvers.clone(),
            state.provider_parties.clone(),
        )?
        .starting_at(round)
        {
            Ok(c) => c,
            Err(e) => return refuse(e.to_string()),
        };
        // Each input is checked (and signed) under the key it spends: the wallet's own or a
        // child's (docs/addresses.md). Derived once the request passed every check.
        let public_key_packages =
            hd::public_key_packages_for(&wallet_id, &public_key_package, &summary.input_paths)?;
        let evaluation = evaluation_of(hash, &summary, &decision, &approvers);
        self.log_founded(
            &founded,
            &format!(
                "evaluated: {} sat leaving, rule {:?} needs {} approvals",
                summary.value_leaving, decision.rule, decision.approvals
            ),
        )?;
        Ok((
            Ceremony::Sign(Box::new(SignJob {
                wallet_id,
                request: request.clone(),
                hash,
                summary,
                rule: decision.rule,
                policy_version: state.policy_version,
                provider_parties: state.provider_parties.clone(),
                keys,
                public_key_packages,
                epoch: state.epoch,
                names: member_names(&layout),
                coordinator,
            })),
            vec![DaoMessage::Evaluation(evaluation)],
        ))
    }

    fn advance(&self, topic: &Topic, entry: &mut Entry) -> Result<(), Failure> {
        let ceremony = std::mem::replace(&mut entry.ceremony, Ceremony::Finished);
        // What a failure refuses in the topic (a policy change's failure is not said there).
        let (refusable, outcome) = match ceremony {
            Ceremony::Dkg(job) => (
                Some(job.dkg.layout().invitation_hash),
                self.advance_dkg(job),
            ),
            Ceremony::Sign(mut job) => {
                let hash = job.hash;
                let outcome = self.advance_sign(&mut job).map(|(messages, done)| {
                    let next = if done {
                        Ceremony::Finished
                    } else {
                        Ceremony::Sign(job)
                    };
                    (next, messages)
                });
                (Some(hash), outcome)
            }
            Ceremony::EthSign(mut job) => {
                let hash = job.hash();
                let outcome = self.advance_eth_sign(&mut job).map(|(messages, done)| {
                    let next = if done {
                        Ceremony::Finished
                    } else {
                        Ceremony::EthSign(job)
                    };
                    (next, messages)
                });
                (Some(hash), outcome)
            }
            Ceremony::Policy(job) => (None, self.advance_policy(job)),
            Ceremony::Refresh(job) => (Some(job.hash), self.advance_refresh(job)),
            Ceremony::Finished => return Ok(()),
        };
        let (next, messages) = match outcome {
            Ok(advanced) => advanced,
            Err(e) => {
                // Said in the topic, so members stop with the reason (and drop what they kept
                // of this ceremony) instead of waiting for their timeout.
                if let Some(hash) = refusable {
                    self.post(topic, entry, vec![refused(&hash, e.0.message.clone())])?;
                }
                return Err(e);
            }
        };
        entry.ceremony = next;
        self.post(topic, entry, messages)
    }

    fn advance_dkg(&self, mut job: Box<DkgJob>) -> Result<(Ceremony, Vec<DaoMessage>), Failure> {
        let mut messages = Vec::new();
        if job.retry {
            // A member lost its round secrets: this attempt cannot finish. The old state (our
            // secrets of it included) is dropped here; the new attempt draws fresh ones.
            let attempt = job.dkg.attempt().saturating_add(1).max(job.floor);
            let layout = job.dkg.layout().clone();
            let wallet_id = layout.wallet_id;
            let (dkg, first) = AnyDkg::start_attempt(
                layout,
                &self.audit.public_key(),
                attempt,
                &mut rand_core::OsRng,
            )?;
            job.dkg = dkg;
            job.retry = false;
            messages.push(DaoMessage::DkgAttempt { attempt });
            messages.extend(first);
            self.log(
                &wallet_id,
                "dao-dkg",
                "dao",
                &wallet_id.0,
                &format!("restarted: attempt {attempt} (a member lost its state)"),
            )?;
        }
        messages.extend(job.dkg.advance(&mut rand_core::OsRng)?);
        // Every party confirmed the same key, and every member has its share on disk: only then
        // is the wallet stored and activated, so no member can lose its share of an active
        // wallet by stopping in between.
        if !(job.dkg.is_done() && job.dkg.all_stored()?) {
            return Ok((Ceremony::Dkg(job), messages));
        }
        let DkgJob {
            dkg, invitation, ..
        } = *job;
        let attempt = dkg.attempt();
        let (layout, outputs) = dkg.into_outputs()?;
        let wallet_id = layout.wallet_id;
        let mut public_key_package = Vec::new();
        let _guard = self.writer(&wallet_id)?;
        for (party, share) in share_records(&outputs)? {
            public_key_package = share.public_key_package.to_vec();
            self.records().save_dao_share(&wallet_id, party, &share)?;
        }
        let state = DaoState {
            invitation,
            policy: layout.policy.source().to_owned(),
            policy_version: 1,
            min_approvals: layout.policy.min_approvals(),
            provider_parties: layout.provider_parties.clone(),
            epoch: Epoch(0),
            public_key_package: ByteBuf::from(public_key_package),
            history: Vec::new(),
            completed: Vec::new(),
            signed_txids: Vec::new(),
            excluded: Vec::new(),
            last_refresh: None,
        };
        self.records().save_dao_state(&wallet_id, &state)?;
        self.log(
            &wallet_id,
            "dao-dkg",
            "dao",
            &wallet_id.0,
            &format!(
                "created: {} members, provider parties {:?}, threshold {}",
                layout.members.len(),
                layout.provider_parties,
                layout.params.min_signers
            ),
        )?;
        messages.push(DaoMessage::Activated { wallet_id, attempt });
        Ok((Ceremony::Finished, messages))
    }

    fn advance_sign(&self, job: &mut SignJob) -> Result<(Vec<DaoMessage>, bool), Failure> {
        if job.coordinator.is_dead() {
            // Said at once (the caller posts the refusal), not at the request's expiry.
            let dead = (job.coordinator.quorum(), &job.names, job.rule.as_str());
            return Err(self.refuse_rejected(&job.wallet_id, &job.hash, dead)?);
        }
        // The round's signature holds the provider's key packages from the signer set on: an
        // epoch a refresh retired since then must not sign (its shares are deleted). Checked in
        // memory here, on every delivery, and against the stored state when the spend is
        // recorded.
        let refreshed = lock(&self.dao_epochs)?.get(&job.wallet_id).copied();
        if refreshed.is_some_and(|epoch| epoch != job.epoch) {
            return Err(bad(
                "the wallet was refreshed since this request was evaluated: request it again",
            ));
        }
        let mut keys = BTreeMap::new();
        if job.coordinator.needs_keys() {
            for &party in &job.provider_parties {
                let share = self
                    .records()
                    .load_dao_share(&job.wallet_id, party, job.epoch)?;
                let key: KeyPackage<Suite> = key_package(&share)?;
                let paths = &job.summary.input_paths;
                keys.insert(party, hd::key_packages_for(&job.wallet_id, &key, paths)?);
            }
        }
        let mut messages = job
            .coordinator
            .advance(&keys, &job.public_key_packages, &mut rand_core::OsRng)
            .map_err(|e| match e {
                // The coordinator gave up (too many rounds): its words are the refusal.
                cosigner_protocol::ProtocolError::Refused { reason } => bad(reason),
                e => Failure::from(e),
            })?;
        drop(keys);
        let Some(signatures) = job.coordinator.signatures().map(<[_]>::to_vec) else {
            return Ok((messages, false));
        };
        messages.push(self.record_spend(job, &signatures)?);
        Ok((messages, true))
    }

    /// Every share is in: checks the state again, records the spend (anchored), and returns the
    /// signed transaction to publish.
    fn record_spend(&self, job: &SignJob, signatures: &[[u8; 64]]) -> Result<DaoMessage, Failure> {
        // Every share is in. Check the state again (another request may have spent since), record
        // the spend, then publish.
        let _guard = self.writer(&job.wallet_id)?;
        let mut state = self.records().load_dao_state(&job.wallet_id)?;
        if state.epoch != job.epoch {
            return Err(bad(
                "the wallet was refreshed since this request was evaluated: request it again",
            ));
        }
        let layout = state.invitation.layout()?;
        let policy = Self::dao_policy(&state, &layout)?;
        let now = now_ms();
        if state
            .completed
            .iter()
            .any(|(h, _)| h.as_slice() == job.hash)
        {
            return Err(bad("this request was already signed"));
        }
        // The PSBT's facts were computed when the request was founded (the PSBT, the output key
        // and the network are fixed); only the history and the policy may have moved.
        let decision = judge(&policy, &job.summary, &state.history, now)
            .map_err(|d| bad(format!("policy (at signing time): {}", d.reason)))?;
        // The rule that decides now must be the one the approvals were collected under, with the
        // same policy in force, and every signer one of its approvers: otherwise a spend that no
        // longer fits a rule (velocity used up by a parallel request, a policy change) would fall
        // through to another rule and be signed by the wrong approvers.
        if state.policy_version != job.policy_version {
            return Err(bad(
                "the policy changed since this request was evaluated: request it again",
            ));
        }
        let chosen = job.coordinator.chosen_members();
        if decision.rule != job.rule {
            return Err(bad(format!(
                "policy (at signing time): rule {:?} decides now, the approvals were for rule {:?}",
                decision.rule, job.rule
            )));
        }
        let allowed = approver_keys(&layout, &decision.approvers)?;
        if usize::from(decision.approvals) > chosen.len()
            || chosen.iter().any(|p| !allowed.contains_key(p))
        {
            return Err(bad(format!(
                "policy (at signing time): rule {:?} needs {} approvals among its approvers",
                decision.rule, decision.approvals
            )));
        }
        let (txid, tx) = psbt::finalize(&job.request.psbt, &job.keys, signatures)?;
        // The same bounded history as personal wallets (velocity windows are at most a year),
        // counted once per transaction.
        if !state.signed_txids.iter().any(|(t, _)| *t == txid) {
            super::psbt::record(&mut state.history, now, job.summary.value_leaving);
            super::psbt::remember_txid(&mut state.signed_txids, &txid, now);
        }
        state
            .completed
            .retain(|(_, at)| at.saturating_add(REQUEST_MAX_AGE_MS) >= now);
        state
            .completed
            .push((ByteBuf::from(job.hash.to_vec()), now));
        self.records().save_dao_state(&job.wallet_id, &state)?;
        self.log(
            &job.wallet_id,
            "dao-sign",
            &format!("members:{:?}", job.coordinator.chosen_members()),
            &job.hash,
            &format!("signed {txid} under rule {:?}", job.rule),
        )?;
        Ok(DaoMessage::Signed {
            request: ByteBuf::from(job.hash.to_vec()),
            txid,
            tx: ByteBuf::from(tx),
        })
    }

    fn found_policy(
        &self,
        topic: &Topic,
        sender: &[u8],
        change: &PolicyChange,
    ) -> Result<(Ceremony, Vec<DaoMessage>), Failure> {
        let (founded, state, layout) = self.member_request(topic, sender, change)?;
        let (hash, wallet_id) = (founded.hash, founded.wallet_id);
        let current = Self::dao_policy(&state, &layout)?;
        let refuse = |reason: String| self.refuse_request(&founded, reason);
        if change.from_version != state.policy_version {
            return refuse(format!(
                "it replaces policy version {}, the policy in force is version {}",
                change.from_version, state.policy_version
            ));
        }
        let members: Vec<_> = layout.members.iter().map(|(_, m)| m.clone()).collect();
        let proposed = match Policy::parse_for(layout.chain, &change.policy, &members) {
            Ok(p) => p,
            Err(e) => return refuse(format!("the new policy does not parse: {e}")),
        };
        if proposed.min_approvals() < state.min_approvals {
            return refuse(format!(
                "the new policy's smallest tier needs {} approvals; the wallet's weights were fixed \
                 for at least {} (the provider's parties and threshold cannot change)",
                proposed.min_approvals(),
                state.min_approvals
            ));
        }
        let admin = current.admin();
        let approvers = approver_keys(&layout, &admin.approvers)?;
        self.log_founded(
            &founded,
            &format!("proposed: needs {} admin approvals", admin.approvals),
        )?;
        let quorum = DaoMessage::PolicyQuorum {
            request: ByteBuf::from(hash.to_vec()),
            approvals: admin.approvals,
            approvers: approvers.keys().copied().collect(),
        };
        Ok((
            Ceremony::Policy(Box::new(PolicyJob {
                wallet_id,
                quorum: Quorum::new(hash, approvers, admin.approvals, change.approval_digest()?)?,
                change: change.clone(),
                hash,
                names: member_names(&layout),
            })),
            vec![quorum],
        ))
    }

    fn advance_policy(&self, job: Box<PolicyJob>) -> Result<(Ceremony, Vec<DaoMessage>), Failure> {
        if job.quorum.is_dead() {
            // Said in the topic: the proposer and every admin learn it at once.
            let reason = format!(
                "rejected by {}: the admin rule can no longer get its {} approvals",
                rejecters(&job.quorum, &job.names),
                job.quorum.needed()
            );
            self.log(&job.wallet_id, "dao-policy", "members", &job.hash, &reason)?;
            return Ok((Ceremony::Finished, vec![refused(&job.hash, reason)]));
        }
        if !job.quorum.is_reached() {
            return Ok((Ceremony::Policy(job), Vec::new()));
        }
        let _guard = self.writer(&job.wallet_id)?;
        let mut state = self.records().load_dao_state(&job.wallet_id)?;
        if state.policy_version != job.change.from_version {
            let refusal = refused(&job.hash, "another policy change came first".into());
            return Ok((Ceremony::Finished, vec![refusal]));
        }
        state.policy = job.change.policy.clone();
        state.policy_version += 1;
        self.records().save_dao_state(&job.wallet_id, &state)?;
        self.log(
            &job.wallet_id,
            "dao-policy",
            &format!("members:{:?}", job.quorum.approvals()),
            &job.hash,
            &format!("changed: policy version {}", state.policy_version),
        )?;
        Ok((
            Ceremony::Finished,
            vec![DaoMessage::PolicyChanged {
                request: ByteBuf::from(job.hash.to_vec()),
                version: state.policy_version,
            }],
        ))
    }

    /// `DaoPolicy`: the policy in force and its version.
    pub(super) fn dao_policy_in_force(&self, wallet_id: WalletId) -> Outcome {
        let state = self.records().load_dao_state(&wallet_id)?;
        Ok(Response::DaoPolicy {
            policy: state.policy,
            version: state.policy_version,
        })
    }
}

/// A share refresh of a DAO wallet in progress.
struct RefreshJob {
    wallet_id: WalletId,
    hash: [u8; 32],
    refresh: AnyRefresh,
    /// Whether our new shares are stored (prepared) and our commitment posted.
    prepared: bool,
    /// The topic showed messages of ours this instance did not make (an instance before a
    /// restart took part, with secrets that are gone).
    lost: bool,
}

impl RefreshJob {
    fn is_ecdsa(&self) -> bool {
        matches!(self.refresh, AnyRefresh::Ecdsa(_))
    }

    /// Our parties' new shares, as records of the new epoch.
    fn new_records(&self) -> Result<Vec<(PartyId, ShareRecord)>, Failure> {
        let epoch = self.refresh.from_epoch().saturating_next();
        match &self.refresh {
            AnyRefresh::Frost(r) => r
                .new_shares()?
                .into_iter()
                .map(|(party, output)| Ok((party, share_record(epoch, output)?)))
                .collect(),
            AnyRefresh::Ecdsa(r) => r
                .new_shares()?
                .into_iter()
                .map(|(party, output)| Ok((party, ecdsa_share_record(epoch, output)?)))
                .collect(),
        }
    }
}

/// What the other ceremonies say about founding a refresh.
struct RefreshRoom {
    /// Another refresh of the wallet is in progress.
    busy: bool,
    /// Treasury refreshes the proposer founded that are in progress.
    theirs: usize,
    /// The topic already holds this enclave's messages: an earlier instance took part, with
    /// secrets that died with it.
    restarted: bool,
    /// Every treasury refresh's place is taken by one in progress (none idle to evict).
    full: bool,
}

/// Why a refresh an earlier instance of this enclave took part in is refused.
const RESTARTED_MID_REFRESH: &str =
    "the provider restarted during this refresh: propose a new one (the old epoch stays)";

/// Whether `entry` is an Ethereum treasury's refresh.
fn is_treasury_refresh(entry: &Entry) -> bool {
    matches!(&entry.ceremony, Ceremony::Refresh(job) if job.is_ecdsa())
}

/// Whether a refresh of `wallet_id` is in progress (one at a time: they would prepare the same
/// epoch's shares).
fn refresh_running(ceremonies: &Ceremonies, wallet_id: &WalletId) -> bool {
    ceremonies
        .values()
        .any(|e| matches!(&e.ceremony, Ceremony::Refresh(job) if job.wallet_id == *wallet_id))
}

impl Service {
    fn found_refresh(
        &self,
        topic: &Topic,
        sender: &[u8],
        proposal: &RefreshProposal,
        room: RefreshRoom,
    ) -> Result<(Ceremony, Vec<DaoMessage>), Failure> {
        let (founded, state, layout) = self.member_request(topic, sender, proposal)?;
        let (hash, wallet_id) = (founded.hash, founded.wallet_id);
        let refuse = |reason: String| self.refuse_request(&founded, reason);
        if state.last_refresh.as_ref().map(|h| h.as_slice()) == Some(hash.as_slice())
            && proposal.from_epoch.checked_next() == Some(state.epoch)
        {
            // This refresh committed, and its `Refreshed` may have been lost with an earlier
            // instance's outbox: members that committed are waiting for it to switch.
            let done = DaoMessage::Refreshed {
                wallet_id,
                epoch: state.epoch,
            };
            return Ok((Ceremony::Finished, vec![done]));
        }
        if !fresh(proposal.created_ms, now_ms()) {
            return refuse("the proposal is expired or dated in the future".into());
        }
        if proposal.from_epoch != state.epoch {
            return refuse(format!(
                "it refreshes epoch {}, the current epoch is {}",
                proposal.from_epoch, state.epoch
            ));
        }
        if room.busy {
            return refuse("another refresh of this wallet is in progress".into());
        }
        if room.restarted {
            // Our earlier messages in the topic were made with round secrets that are gone;
            // new ones would contradict them.
            return refuse(RESTARTED_MID_REFRESH.into());
        }
        if layout.is_ecdsa() && room.theirs >= MAX_ECDSA_REFRESHES_PER_PROPOSER {
            return refuse("this member's other treasury refresh is still in progress".into());
        }
        if layout.is_ecdsa() && room.full {
            return refuse(format!(
                "{MAX_ECDSA_REFRESHES} treasury refreshes are in progress at this provider: \
                 propose again in a few minutes"
            ));
        }
        let (refresh, first) = self.start_dao_refresh(&state, layout, proposal)?;
        self.log_founded(
            &founded,
            &format!(
                "started: epoch {} to {}",
                state.epoch,
                state.epoch.saturating_next()
            ),
        )?;
        Ok((
            Ceremony::Refresh(Box::new(RefreshJob {
                wallet_id,
                hash,
                refresh,
                prepared: false,
                lost: false,
            })),
            first,
        ))
    }

    /// Our side of `proposal`'s refresh, from our parties' shares of the current epoch.
    fn start_dao_refresh(
        &self,
        state: &DaoState,
        layout: Layout,
        proposal: &RefreshProposal,
    ) -> Result<(AnyRefresh, Vec<DaoMessage>), Failure> {
        let wallet_id = layout.wallet_id;
        let ours = self.audit.public_key();
        let rng = &mut rand_core::OsRng;
        if layout.is_ecdsa() {
            let (keys, public) = self.treasury_shares(&wallet_id, state, state.epoch)?;
            let old = keys.into_values().collect();
            let (r, first) = EcdsaDaoRefresh::start(layout, proposal, &ours, old, &public, rng)?;
            return Ok((AnyRefresh::Ecdsa(Box::new(r)), first));
        }
        let mut old = Vec::new();
        for &party in &state.provider_parties {
            let share = self
                .records()
                .load_dao_share(&wallet_id, party, state.epoch)?;
            let (kp, pkp) = share_keys(&share)?;
            old.push((party, kp, pkp));
        }
        let (r, first) = DaoRefresh::<Suite>::start(layout, proposal, &ours, old, rng)?;
        Ok((AnyRefresh::Frost(Box::new(r)), first))
    }

    /// Advances a refresh: once every party confirmed, stores our new shares as prepared and
    /// commits; once every party committed, makes the new epoch current and deletes the old
    /// shares.
    fn advance_refresh(
        &self,
        mut job: Box<RefreshJob>,
    ) -> Result<(Ceremony, Vec<DaoMessage>), Failure> {
        if job.lost && !(job.prepared && job.refresh.all_committed()) {
            return Err(bad(RESTARTED_MID_REFRESH));
        }
        let mut messages = job.refresh.advance(&mut rand_core::OsRng)?;
        if job.refresh.is_done() && !job.prepared {
            messages.push(self.prepare_dao_refresh(&mut job)?);
            job.prepared = true;
        }
        if !(job.prepared && job.refresh.all_committed()) {
            return Ok((Ceremony::Refresh(job), messages));
        }
        messages.push(self.commit_dao_refresh(&job)?);
        Ok((Ceremony::Finished, messages))
    }

    /// The wallet's state, still at the epoch `job` refreshes from.
    fn dao_refreshing_state(&self, job: &RefreshJob) -> Result<DaoState, Failure> {
        let from_epoch = job.refresh.from_epoch();
        let state = self.records().load_dao_state(&job.wallet_id)?;
        if state.epoch != from_epoch {
            return Err(bad(format!(
                "the wallet's epoch is now {}, this refresh started from {from_epoch}",
                state.epoch
            )));
        }
        Ok(state)
    }

    /// Every party confirmed: stores our new shares as prepared; returns our commitment.
    fn prepare_dao_refresh(&self, job: &mut RefreshJob) -> Result<DaoMessage, Failure> {
        let epoch = job.refresh.from_epoch().saturating_next();
        let _guard = self.writer(&job.wallet_id)?;
        self.dao_refreshing_state(job)?;
        for (party, share) in job.new_records()? {
            self.records()
                .save_dao_share(&job.wallet_id, party, &share)?;
        }
        let commit = job.refresh.commit()?;
        self.log(
            &job.wallet_id,
            "dao-refresh",
            "dao",
            &job.hash,
            &format!("prepared: epoch {epoch}"),
        )?;
        Ok(commit)
    }

    /// Every party stored its new share: the new epoch becomes current (anchored), then the old
    /// shares go. Returns the news for the members.
    fn commit_dao_refresh(&self, job: &RefreshJob) -> Result<DaoMessage, Failure> {
        let from_epoch = job.refresh.from_epoch();
        let epoch = from_epoch
            .checked_next()
            .ok_or_else(|| bad("the wallet's epochs are used up"))?;
        let _guard = self.writer(&job.wallet_id)?;
        let mut state = self.dao_refreshing_state(job)?;
        let (_, new) = job
            .new_records()?
            .into_iter()
            .next()
            .ok_or_else(|| internal("the refresh produced no share"))?;
        state.public_key_package = new.public_key_package.clone();
        state.epoch = epoch;
        state.last_refresh = Some(ByteBuf::from(job.hash.to_vec()));
        self.records().save_dao_state(&job.wallet_id, &state)?;
        // The new epoch is current from here on: whatever fails below, the members must hear it
        // (a refusal now would leave them on an epoch the provider no longer signs with).
        if let Ok(mut epochs) = lock(&self.dao_epochs) {
            epochs.insert(job.wallet_id, epoch);
        }
        let kept: Vec<PartyId> = state
            .provider_parties
            .iter()
            .copied()
            .filter(|&party| {
                self.records()
                    .delete_dao_share(&job.wallet_id, party, from_epoch)
                    .is_err()
            })
            .collect();
        let outcome = if kept.is_empty() {
            format!("committed by every party: epoch {epoch} current, epoch {from_epoch} deleted")
        } else {
            format!(
                "committed by every party: epoch {epoch} current; epoch {from_epoch}'s shares of \
                 parties {kept:?} could not be deleted (never used again: the state names \
                 epoch {epoch})"
            )
        };
        if let Err(e) = self.log(&job.wallet_id, "dao-refresh", "dao", &job.hash, &outcome) {
            tracing::warn!(
                wallet = %job.wallet_id,
                error = %e.0.message,
                "dao refresh: audit entry not written"
            );
        }
        Ok(DaoMessage::Refreshed {
            wallet_id: job.wallet_id,
            epoch,
        })
    }
}
