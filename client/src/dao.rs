//! DAO wallets on a member's device: create or join a wallet, request and approve signatures,
//! change the policy, refresh the shares.
//!
//! Every member process is a participant *and* a courier: it fetches the topic's envelopes from
//! the mailbox, delivers them to the provider over its attested session, posts the provider's
//! answers to the mailbox, and runs its own side of the ceremony on what it read. No member
//! depends on another being online at the same time, only on the mailbox; and since every
//! envelope is signed by its sender, a courier (or the mailbox) can drop or delay messages but
//! not forge or alter them.

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cosigner_protocol::auth::public_key_bytes;
use cosigner_protocol::dao::dkg::DaoDkg;
use cosigner_protocol::dao::refresh::{DaoRefresh, RefreshProposal};
use cosigner_protocol::dao::sign::MemberSigner;
use cosigner_protocol::dao::{
    Approval, DaoMessage, Evaluation, Invitation, MemberEntry, PolicyChange, SignRequest,
};
use cosigner_protocol::mailbox::{Envelope, Topic};
use cosigner_protocol::policy::{Policy, parse_members};
use cosigner_protocol::psbt::{self, SpendSummary};
use cosigner_protocol::wire::{Request, Response, SUITE_SECP256K1_TR, WalletId};
use frost_core::keys::{KeyPackage, PublicKeyPackage};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::address::Network;
use crate::error::{ClientError, Result};
use crate::home::{Home, WalletFile};
use crate::mailbox::MailboxClient;
use crate::session::Session;
use crate::trust::Trust;
use crate::wallet::wallet_file;

type Suite = frost_secp256k1_tr::Secp256K1Sha256TR;

/// What a member's wallet file records about its DAO.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaoInfo {
    /// The signed invitation (hex of the encoded envelope): members, policy, provider key.
    pub invitation: String,
    /// The provider's identity key (hex).
    pub provider_key: String,
    /// The mailbox address.
    pub mailbox: String,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn input(message: impl Into<String>) -> ClientError {
    ClientError::Input(message.into())
}

fn random16() -> Result<Vec<u8>> {
    let mut b = vec![0u8; 16];
    getrandom(&mut b)?;
    Ok(b)
}

fn getrandom(buf: &mut [u8]) -> Result<()> {
    use rand_core::RngCore;
    rand_core::OsRng
        .try_fill_bytes(buf)
        .map_err(|e| ClientError::Unexpected(format!("randomness: {e}")))
}

/// Relays one topic between the mailbox and the provider, and hands new envelopes to the caller.
pub struct Courier {
    topic: Topic,
    mailbox: MailboxClient,
    provider: Session,
    provider_addr: String,
    trust: Trust,
    after: u64,
    delivered: HashSet<[u8; 32]>,
    posted: HashSet<[u8; 32]>,
    seen: HashSet<[u8; 32]>,
    /// What the provider refused of our deliveries (culprits named), for the user.
    pub notes: Vec<String>,
}

impl std::fmt::Debug for Courier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Courier")
            .field("topic", &hex::encode(self.topic))
            .field("after", &self.after)
            .finish_non_exhaustive()
    }
}

/// The keys a DAO wallet's topics admit: every member's device key and the provider's identity
/// key, as the invitation names them. The mailbox lets only these post and read there.
pub fn topic_members(invitation: &Invitation) -> Result<Vec<Vec<u8>>> {
    let layout = invitation.layout()?;
    let mut keys: Vec<Vec<u8>> = layout
        .members
        .iter()
        .map(|(_, m)| m.device_key.clone())
        .collect();
    keys.push(layout.provider_key);
    Ok(keys)
}

/// This device's connection to the mailbox at `addr` for the topics of the wallet `invitation`
/// describes: it posts naming the wallet's members and reads with the device key.
pub fn member_mailbox(home: &Home, addr: &str, invitation: &Invitation) -> Result<MailboxClient> {
    MailboxClient::connect(addr)?.as_member(home.device_key()?, topic_members(invitation)?)
}

impl Courier {
    /// A courier for `topic` over an attested `provider` session, posting and reading through
    /// `mailbox` (see [`member_mailbox`]).
    pub fn new(
        topic: Topic,
        mailbox: MailboxClient,
        provider: Session,
        provider_addr: &str,
        trust: &Trust,
    ) -> Result<Self> {
        Ok(Self {
            topic,
            mailbox,
            provider,
            provider_addr: provider_addr.to_owned(),
            trust: trust.clone(),
            after: 0,
            delivered: HashSet::new(),
            posted: HashSet::new(),
            seen: HashSet::new(),
            notes: Vec::new(),
        })
    }

    /// The provider's verified attestation.
    pub fn provider(&self) -> &Session {
        &self.provider
    }

    /// Signs `message` with `key` and posts it.
    pub fn send(&mut self, key: &p256::ecdsa::SigningKey, message: &DaoMessage) -> Result<()> {
        let envelope = Envelope::seal(key, self.topic, message.encode()?)?;
        self.post(&envelope)
    }

    /// Posts an envelope (once).
    pub fn post(&mut self, envelope: &Envelope) -> Result<()> {
        if self.posted.insert(envelope.id()) {
            self.mailbox.post(envelope)?;
        }
        Ok(())
    }

    fn deliver(&mut self, envelopes: Vec<ByteBuf>) -> Result<(Vec<ByteBuf>, Vec<String>)> {
        let request = Request::Mailbox {
            topic: ByteBuf::from(self.topic.to_vec()),
            envelopes,
        };
        let answer = match self.provider.call(&request) {
            Err(ClientError::Connection { .. }) => {
                // Idle sessions may be cut; attest again and retry once.
                self.provider = Session::connect(&self.provider_addr, &self.trust)?;
                self.provider.call(&request)?
            }
            other => other?,
        };
        match answer {
            Response::Mailbox { envelopes, notes } => Ok((envelopes, notes)),
            other => Err(ClientError::Unexpected(format!(
                "the provider answered a mailbox delivery with {other:?}"
            ))),
        }
    }

    /// One round trip: new mailbox envelopes to the provider, the provider's to the mailbox.
    /// Returns every envelope not returned before (verified, for this topic).
    pub fn poll(&mut self) -> Result<Vec<Envelope>> {
        let fetched = self.mailbox.fetch(&self.topic, self.after)?;
        let mut fresh = Vec::new();
        let mut to_deliver = Vec::new();
        for (seq, envelope) in fetched {
            self.after = self.after.max(seq);
            if self.delivered.insert(envelope.id()) {
                to_deliver.push(ByteBuf::from(envelope.encode()?));
            }
            fresh.push(envelope);
        }
        let (answer, notes) = self.deliver(to_deliver)?;
        for n in notes {
            if !self.notes.contains(&n) {
                self.notes.push(n);
            }
        }
        for raw in answer {
            let envelope = Envelope::open(&raw, &self.topic)?;
            self.delivered.insert(envelope.id());
            self.post(&envelope)?;
            fresh.push(envelope);
        }
        Ok(fresh
            .into_iter()
            .filter(|e| self.seen.insert(e.id()))
            .collect())
    }
}

/// Backs off while nothing happens: 20 ms, doubling to 100 ms.
struct Pace(Duration);

impl Pace {
    fn new() -> Self {
        Self(Duration::from_millis(20))
    }
    fn wait(&mut self, progressed: bool) {
        if progressed {
            self.0 = Duration::from_millis(20);
            return;
        }
        std::thread::sleep(self.0);
        self.0 = (self.0 * 2).min(Duration::from_millis(100));
    }
}

fn timed_out(started: Instant, timeout: Duration, what: String, courier: &Courier) -> Result<()> {
    if started.elapsed() > timeout {
        let refused = match courier.notes.last() {
            Some(n) => format!(" (the provider refused: {n})"),
            None => String::new(),
        };
        return Err(ClientError::Unexpected(format!(
            "timed out after {} s waiting for {what}{refused}",
            timeout.as_secs()
        )));
    }
    Ok(())
}

/// Writes an envelope as one line of hex (an invitation or a request file).
pub fn write_envelope(path: &Path, envelope: &Envelope) -> Result<()> {
    let text = format!("{}\n", hex::encode(envelope.encode()?));
    std::fs::write(path, text).map_err(|e| input(format!("writing {}: {e}", path.display())))
}

/// Reads an envelope file written by [`write_envelope`] (its signature verified).
pub fn read_envelope(path: &Path) -> Result<Envelope> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| input(format!("reading {}: {e}", path.display())))?;
    let bytes = hex::decode(text.trim())
        .map_err(|e| input(format!("{}: not a hex envelope: {e}", path.display())))?;
    let envelope = Envelope::decode(&bytes)?;
    envelope.verify()?;
    Ok(envelope)
}

/// Builds and signs an invitation from a members file and a policy file, checking both and that
/// this device is a member. The provider key is the one `provider` attested.
pub fn invite(
    home: &Home,
    provider: &Session,
    members_toml: &str,
    policy_toml: &str,
    network: Network,
    mailbox_addr: &str,
    provider_addr: &str,
) -> Result<(Invitation, Envelope)> {
    let members = parse_members(members_toml)?;
    let key = home.device_key()?;
    let me = public_key_bytes(&key);
    if !members.iter().any(|m| m.device_key == me) {
        return Err(input(
            "this device's key is not in the members file (see `cosigner device-key`)",
        ));
    }
    Policy::parse(policy_toml, &members)?;
    let provider_key = provider
        .attestation()
        .doc
        .public_key
        .clone()
        .ok_or_else(|| ClientError::Unexpected("the provider's attestation binds no key".into()))?;
    let invitation = Invitation {
        members: members
            .iter()
            .map(|m| MemberEntry {
                name: m.name.clone(),
                device_key: ByteBuf::from(m.device_key.clone()),
            })
            .collect(),
        policy: policy_toml.to_owned(),
        provider_key: ByteBuf::from(provider_key),
        network: network.name().to_owned(),
        ciphersuite: SUITE_SECP256K1_TR.to_owned(),
        created_ms: now_ms(),
        nonce: ByteBuf::from(random16()?),
        mailbox: mailbox_addr.to_owned(),
        provider: provider_addr.to_owned(),
    };
    invitation.layout()?;
    let topic = invitation.topic()?;
    let envelope = Envelope::seal(
        &key,
        topic,
        DaoMessage::Invitation(invitation.clone()).encode()?,
    )?;
    Ok((invitation, envelope))
}

/// Opens an invitation envelope: signature, topic = its hash, signed by one of its members.
pub fn open_invitation(envelope: &Envelope) -> Result<Invitation> {
    envelope.verify()?;
    let DaoMessage::Invitation(invitation) = DaoMessage::decode(&envelope.body)? else {
        return Err(input("this file is not an invitation"));
    };
    if invitation.topic()? != envelope.topic {
        return Err(input("the invitation does not match its topic"));
    }
    let layout = invitation.layout()?;
    if layout.member_party(&envelope.sender).is_none() {
        return Err(input("the invitation is not signed by one of its members"));
    }
    Ok(invitation)
}

/// Takes part in the DKG of `invitation` until the provider stored its shares; records the wallet.
pub fn run_dkg(
    home: &Home,
    courier: &mut Courier,
    invitation: &Invitation,
    invitation_envelope: &Envelope,
    timeout: Duration,
    progress: &mut dyn FnMut(&str),
) -> Result<WalletFile> {
    let layout = invitation.layout()?;
    let attested_key = courier.provider().attestation().doc.public_key.clone();
    if attested_key.as_deref() != Some(layout.provider_key.as_slice()) {
        return Err(ClientError::Unexpected(
            "the attested provider's key is not the one the invitation names".into(),
        ));
    }
    let key = home.device_key()?;
    let me = public_key_bytes(&key);
    let party = layout
        .member_party(&me)
        .ok_or_else(|| input("this device is not a member of the invitation"))?;
    let wallet_id = layout.wallet_id;
    let network = invitation.network.parse::<Network>()?;
    let (mut dkg, first) = DaoDkg::<Suite>::start(layout.clone(), &me, &mut rand_core::OsRng)?;
    courier.post(invitation_envelope)?;
    for m in &first {
        courier.send(&key, m)?;
    }
    let started = Instant::now();
    let mut pace = Pace::new();
    let mut activated = false;
    loop {
        let fresh = courier.poll()?;
        let progressed = !fresh.is_empty();
        for envelope in fresh {
            let Ok(message) = DaoMessage::decode(&envelope.body) else {
                continue;
            };
            if let DaoMessage::Activated { wallet_id: w } = &message
                && *w == wallet_id
                && envelope.sender == layout.provider_key
            {
                activated = true;
            }
            if let Err(e) = dkg.absorb(&envelope.sender, &message) {
                progress(&format!("refused a {}: {e}", message.name()));
            }
        }
        for m in dkg.advance(&mut rand_core::OsRng)? {
            courier.send(&key, &m)?;
        }
        if dkg.is_done() && activated {
            break;
        }
        let waiting = if dkg.is_done() {
            "the provider to store its shares".to_owned()
        } else {
            dkg.waiting_for()
        };
        timed_out(started, timeout, waiting, courier)?;
        pace.wait(progressed);
    }
    let (layout, mut outputs) = dkg.into_outputs()?;
    let (_, output) = outputs
        .pop()
        .ok_or_else(|| ClientError::Unexpected("the DKG produced no share".into()))?;
    let wallet = WalletFile {
        dao: Some(DaoInfo {
            invitation: hex::encode(invitation_envelope.encode()?),
            provider_key: hex::encode(&layout.provider_key),
            mailbox: invitation.mailbox.clone(),
        }),
        ..wallet_file(
            wallet_id,
            party,
            &layout.params.parties,
            layout.params.min_signers,
            0,
            &output.public_key_package,
            network,
        )?
    };
    let share = zeroize::Zeroizing::new(
        output
            .key_package
            .serialize()
            .map_err(|e| ClientError::Unexpected(format!("key package: {e}")))?,
    );
    home.save_wallet(&wallet, &share)?;
    Ok(wallet)
}

/// The DAO facts of a wallet this device holds.
pub fn dao_info(wallet: &WalletFile) -> Result<(&DaoInfo, Invitation)> {
    let info = wallet
        .dao
        .as_ref()
        .ok_or_else(|| input(format!("wallet {} is not a DAO wallet", wallet.wallet_id)))?;
    let bytes = hex::decode(&info.invitation)
        .map_err(|e| ClientError::Unexpected(format!("stored invitation: {e}")))?;
    let invitation = open_invitation(&Envelope::decode(&bytes)?)?;
    Ok((info, invitation))
}

/// What this device computes itself from a PSBT for `wallet`.
pub fn summarize(wallet: &WalletFile, psbt: &[u8]) -> Result<SpendSummary> {
    let q: [u8; 32] = hex::decode(&wallet.group_public_key)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| ClientError::Unexpected("stored group key is not 32 bytes".into()))?;
    let network = psbt::network_from_name(&wallet.network)?;
    Ok(psbt::analyze(psbt, &q, network)?)
}

/// Makes and signs a request to sign `psbt` (binary) with a DAO wallet.
pub fn request(home: &Home, wallet: &WalletFile, psbt: Vec<u8>) -> Result<(SignRequest, Envelope)> {
    dao_info(wallet)?;
    summarize(wallet, &psbt)?;
    let request = SignRequest {
        wallet_id: WalletId::from_hex(&wallet.wallet_id)?,
        psbt: ByteBuf::from(psbt),
        requester: wallet.party,
        created_ms: now_ms(),
        nonce: ByteBuf::from(random16()?),
    };
    let key = home.device_key()?;
    let envelope = Envelope::seal(
        &key,
        request.topic()?,
        DaoMessage::SignRequest(request.clone()).encode()?,
    )?;
    Ok((request, envelope))
}

/// Opens a request envelope: signature, topic = its hash.
pub fn open_request(envelope: &Envelope) -> Result<SignRequest> {
    envelope.verify()?;
    let DaoMessage::SignRequest(request) = DaoMessage::decode(&envelope.body)? else {
        return Err(input("this file is not a signing request"));
    };
    if request.topic()? != envelope.topic {
        return Err(input("the request does not match its topic"));
    }
    Ok(request)
}

/// Waits for the provider's evaluation of a request (or its refusal).
pub fn await_evaluation(
    courier: &mut Courier,
    provider_key: &[u8],
    request_hash: &[u8; 32],
    timeout: Duration,
    backlog: &mut Vec<Envelope>,
) -> Result<Evaluation> {
    let started = Instant::now();
    let mut pace = Pace::new();
    loop {
        let fresh = courier.poll()?;
        let progressed = !fresh.is_empty();
        for envelope in fresh {
            if envelope.sender == provider_key
                && let Ok(message) = DaoMessage::decode(&envelope.body)
            {
                match message {
                    DaoMessage::Evaluation(e) if e.request.as_slice() == request_hash => {
                        backlog.push(envelope);
                        return Ok(e);
                    }
                    DaoMessage::Refused { request, reason }
                        if request.as_slice() == request_hash =>
                    {
                        return Err(ClientError::Protocol(
                            cosigner_protocol::ProtocolError::Refused { reason },
                        ));
                    }
                    _ => {}
                }
            }
            backlog.push(envelope);
        }
        timed_out(
            started,
            timeout,
            "the provider's evaluation".into(),
            courier,
        )?;
        pace.wait(progressed);
    }
}

/// Approves a request and takes part in its signing until the transaction is published.
/// Returns `(txid, tx)`.
#[allow(clippy::too_many_arguments)]
pub fn approve_and_sign(
    home: &Home,
    wallet: &WalletFile,
    courier: &mut Courier,
    request: &SignRequest,
    summary: &SpendSummary,
    evaluation: &Evaluation,
    backlog: Vec<Envelope>,
    timeout: Duration,
) -> Result<(String, Vec<u8>)> {
    let (info, _) = dao_info(wallet)?;
    let provider_key = hex::decode(&info.provider_key)
        .map_err(|e| ClientError::Unexpected(format!("stored provider key: {e}")))?;
    let hash = request.hash()?;
    let ours: Vec<Vec<u8>> = summary.sighashes.iter().map(|s| s.to_vec()).collect();
    let theirs: Vec<Vec<u8>> = evaluation.sighashes.iter().map(|s| s.to_vec()).collect();
    if ours != theirs {
        return Err(ClientError::Unexpected(
            "the provider computed other sighashes than this device: not approving".into(),
        ));
    }
    let share = home.share(&WalletId::from_hex(&wallet.wallet_id)?)?;
    let key_package = KeyPackage::<Suite>::deserialize(&share)
        .map_err(|e| ClientError::Unexpected(format!("stored share: {e}")))?;
    let key = home.device_key()?;
    let (mut signer, approval) = MemberSigner::<Suite>::approve(
        hash,
        wallet.party,
        provider_key,
        summary.sighashes.clone(),
        summary.txid.clone(),
    );
    courier.send(&key, &approval)?;
    let started = Instant::now();
    let mut pace = Pace::new();
    let mut pending = backlog;
    loop {
        let fresh = courier.poll()?;
        let progressed = !fresh.is_empty() || !pending.is_empty();
        pending.extend(fresh);
        for envelope in std::mem::take(&mut pending) {
            let Ok(message) = DaoMessage::decode(&envelope.body) else {
                continue;
            };
            for out in signer.handle(
                &envelope.sender,
                &message,
                &key_package,
                &mut rand_core::OsRng,
            )? {
                courier.send(&key, &out)?;
            }
            if let Some((txid, tx)) = signer.outcome() {
                return Ok((txid.to_owned(), tx.to_vec()));
            }
        }
        timed_out(
            started,
            timeout,
            format!(
                "{} (rule {:?} needs {} approvals)",
                signer.waiting_for(),
                evaluation.rule,
                evaluation.approvals
            ),
            courier,
        )?;
        pace.wait(progressed);
    }
}

/// The policy in force of a DAO wallet, as the provider holds it: `(text, version)`.
pub fn policy_in_force(provider: &mut Session, wallet_id: WalletId) -> Result<(String, u64)> {
    match provider.call(&Request::DaoPolicy { wallet_id })? {
        Response::DaoPolicy { policy, version } => Ok((policy, version)),
        other => Err(ClientError::Unexpected(format!(
            "the provider answered DaoPolicy with {other:?}"
        ))),
    }
}

/// Makes and signs a proposal to replace the policy (version `from_version`) of a DAO wallet.
pub fn propose_policy(
    home: &Home,
    wallet: &WalletFile,
    policy_toml: &str,
    from_version: u64,
) -> Result<(PolicyChange, Envelope)> {
    let (_, invitation) = dao_info(wallet)?;
    let layout = invitation.layout()?;
    let members: Vec<_> = layout.members.iter().map(|(_, m)| m.clone()).collect();
    Policy::parse(policy_toml, &members)?;
    let change = PolicyChange {
        wallet_id: WalletId::from_hex(&wallet.wallet_id)?,
        policy: policy_toml.to_owned(),
        from_version,
        proposer: wallet.party,
        created_ms: now_ms(),
        nonce: ByteBuf::from(random16()?),
    };
    let key = home.device_key()?;
    let envelope = Envelope::seal(
        &key,
        change.topic()?,
        DaoMessage::PolicyChange(change.clone()).encode()?,
    )?;
    Ok((change, envelope))
}

/// What a request file holds.
#[derive(Debug)]
pub enum RequestFile {
    /// A PSBT to sign.
    Sign(SignRequest),
    /// A policy to change.
    Policy(PolicyChange),
    /// Every share to refresh.
    Refresh(RefreshProposal),
}

/// Opens a request file's envelope (signature, topic = its hash): a signing request or a policy
/// change.
pub fn open_any_request(envelope: &Envelope) -> Result<RequestFile> {
    envelope.verify()?;
    match DaoMessage::decode(&envelope.body)? {
        DaoMessage::SignRequest(r) if r.topic()? == envelope.topic => Ok(RequestFile::Sign(r)),
        DaoMessage::PolicyChange(c) if c.topic()? == envelope.topic => Ok(RequestFile::Policy(c)),
        DaoMessage::RefreshStart(r) if r.topic()? == envelope.topic => Ok(RequestFile::Refresh(r)),
        _ => Err(input(
            "this file is neither a signing request, a policy change nor a refresh proposal",
        )),
    }
}

/// Approves a policy change and waits until it is in force (or refused); returns the new version.
pub fn approve_policy(
    home: &Home,
    wallet: &WalletFile,
    courier: &mut Courier,
    change: &PolicyChange,
    timeout: Duration,
) -> Result<u64> {
    let (info, _) = dao_info(wallet)?;
    let provider_key = hex::decode(&info.provider_key)
        .map_err(|e| ClientError::Unexpected(format!("stored provider key: {e}")))?;
    let hash = change.hash()?;
    let key = home.device_key()?;
    courier.send(
        &key,
        &DaoMessage::Approval(Approval {
            request: ByteBuf::from(hash.to_vec()),
            party: wallet.party,
            sighashes: ByteBuf::from(change.approval_digest()?.to_vec()),
        }),
    )?;
    let started = Instant::now();
    let mut pace = Pace::new();
    let mut quorum = None;
    loop {
        let fresh = courier.poll()?;
        let progressed = !fresh.is_empty();
        for envelope in fresh {
            if envelope.sender != provider_key {
                continue;
            }
            match DaoMessage::decode(&envelope.body) {
                Ok(DaoMessage::PolicyChanged { request, version })
                    if request.as_slice() == hash =>
                {
                    return Ok(version);
                }
                Ok(DaoMessage::PolicyQuorum {
                    request, approvals, ..
                }) if request.as_slice() == hash => quorum = Some(approvals),
                Ok(DaoMessage::Refused { request, reason }) if request.as_slice() == hash => {
                    return Err(ClientError::Protocol(
                        cosigner_protocol::ProtocolError::Refused { reason },
                    ));
                }
                _ => {}
            }
        }
        timed_out(
            started,
            timeout,
            match quorum {
                Some(k) => format!("the admin quorum ({k} approvals)"),
                None => "the provider's answer".into(),
            },
            courier,
        )?;
        pace.wait(progressed);
    }
}

/// Makes and signs a proposal to refresh every share of a DAO wallet (the epoch this device holds).
pub fn propose_refresh(home: &Home, wallet: &WalletFile) -> Result<(RefreshProposal, Envelope)> {
    dao_info(wallet)?;
    let proposal = RefreshProposal {
        wallet_id: WalletId::from_hex(&wallet.wallet_id)?,
        from_epoch: wallet.epoch,
        proposer: wallet.party,
        created_ms: now_ms(),
        nonce: ByteBuf::from(random16()?),
    };
    let key = home.device_key()?;
    let envelope = Envelope::seal(
        &key,
        proposal.topic()?,
        DaoMessage::RefreshStart(proposal.clone()).encode()?,
    )?;
    Ok((proposal, envelope))
}

/// Takes part in the refresh `proposal` (its founding `envelope` is posted again) until every
/// party committed the new epoch and the provider made it current. The new share is written as
/// prepared first and replaces the current one only then. Returns the updated wallet file.
pub fn run_refresh(
    home: &Home,
    wallet: &WalletFile,
    courier: &mut Courier,
    proposal: &RefreshProposal,
    envelope: &Envelope,
    timeout: Duration,
    progress: &mut dyn FnMut(&str),
) -> Result<WalletFile> {
    let (info, invitation) = dao_info(wallet)?;
    let layout = invitation.layout()?;
    let id = WalletId::from_hex(&wallet.wallet_id)?;
    if proposal.wallet_id != id {
        return Err(input("the proposal is for another wallet"));
    }
    if proposal.from_epoch != wallet.epoch {
        return Err(input(format!(
            "the proposal refreshes epoch {}, this device holds epoch {}",
            proposal.from_epoch, wallet.epoch
        )));
    }
    let provider_key = hex::decode(&info.provider_key)
        .map_err(|e| ClientError::Unexpected(format!("stored provider key: {e}")))?;
    let attested_key = courier.provider().attestation().doc.public_key.clone();
    if attested_key.as_deref() != Some(provider_key.as_slice()) {
        return Err(ClientError::Unexpected(
            "the attested provider's key is not the wallet's".into(),
        ));
    }
    let key = home.device_key()?;
    let me = public_key_bytes(&key);
    let share = home.share(&id)?;
    let key_package = KeyPackage::<Suite>::deserialize(&share)
        .map_err(|e| ClientError::Unexpected(format!("stored share: {e}")))?;
    let pkp_bytes = hex::decode(&wallet.public_key_package)
        .map_err(|e| ClientError::Unexpected(format!("stored public key package: {e}")))?;
    let public_key_package = PublicKeyPackage::<Suite>::deserialize(&pkp_bytes)
        .map_err(|e| ClientError::Unexpected(format!("stored public key package: {e}")))?;
    let hash = proposal.hash()?;
    let (mut refresh, first) = DaoRefresh::<Suite>::start(
        layout,
        proposal,
        &me,
        vec![(wallet.party, key_package, public_key_package)],
        &mut rand_core::OsRng,
    )?;
    courier.post(envelope)?;
    for m in &first {
        courier.send(&key, m)?;
    }
    let epoch = proposal.from_epoch + 1;
    let started = Instant::now();
    let mut pace = Pace::new();
    let mut prepared = false;
    let mut refreshed = false;
    loop {
        let fresh = courier.poll()?;
        let progressed = !fresh.is_empty();
        for envelope in fresh {
            let Ok(message) = DaoMessage::decode(&envelope.body) else {
                continue;
            };
            if envelope.sender == provider_key {
                match &message {
                    DaoMessage::Refreshed {
                        wallet_id: w,
                        epoch: e,
                    } if *w == id && *e == epoch => refreshed = true,
                    DaoMessage::Refused { request, reason } if request.as_slice() == hash => {
                        home.remove_prepared_share(&id)?;
                        return Err(ClientError::Protocol(
                            cosigner_protocol::ProtocolError::Refused {
                                reason: reason.clone(),
                            },
                        ));
                    }
                    _ => {}
                }
            }
            if let Err(e) = refresh.absorb(&envelope.sender, &message) {
                progress(&format!("refused a {}: {e}", message.name()));
            }
        }
        for m in refresh.advance(&mut rand_core::OsRng)? {
            courier.send(&key, &m)?;
        }
        if refresh.is_done() && !prepared {
            let (_, output) =
                refresh.new_shares()?.into_iter().next().ok_or_else(|| {
                    ClientError::Unexpected("the refresh produced no share".into())
                })?;
            let new_share = zeroize::Zeroizing::new(
                output
                    .key_package
                    .serialize()
                    .map_err(|e| ClientError::Unexpected(format!("key package: {e}")))?,
            );
            home.save_prepared_share(&id, &new_share)?;
            let commit = refresh.commit()?;
            courier.send(&key, &commit)?;
            prepared = true;
        }
        if prepared && refresh.all_committed() && refreshed {
            break;
        }
        let waiting = if prepared && refresh.all_committed() {
            "the provider to make the new epoch current".to_owned()
        } else {
            refresh.waiting_for()
        };
        timed_out(started, timeout, waiting, courier)?;
        pace.wait(progressed);
    }
    let (_, mut outputs) = refresh.into_outputs()?;
    let (_, output) = outputs
        .pop()
        .ok_or_else(|| ClientError::Unexpected("the refresh produced no share".into()))?;
    let rebuilt = wallet_file(
        id,
        wallet.party,
        &wallet.parties,
        wallet.min_signers,
        epoch,
        &output.public_key_package,
        wallet.network.parse::<Network>()?,
    )?;
    if rebuilt.group_public_key != wallet.group_public_key {
        return Err(ClientError::Unexpected(
            "the refreshed group key differs from the wallet's".into(),
        ));
    }
    let new_wallet = WalletFile {
        dao: wallet.dao.clone(),
        ..rebuilt
    };
    let new_share = zeroize::Zeroizing::new(
        output
            .key_package
            .serialize()
            .map_err(|e| ClientError::Unexpected(format!("key package: {e}")))?,
    );
    home.replace_share(&new_wallet, &new_share)?;
    home.remove_prepared_share(&id)?;
    Ok(new_wallet)
}
