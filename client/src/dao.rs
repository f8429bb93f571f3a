//! DAO wallets on a member's device: create or join a wallet, request and approve signatures,
//! change the policy, refresh the shares.
//!
//! Every member process is a participant *and* a courier: it fetches the topic's envelopes from
//! the mailbox, delivers them to the provider over its attested session, posts the provider's
//! answers to the mailbox, and runs its own side of the ceremony on what it read. No member
//! depends on another being online at the same time, only on the mailbox; and since every
//! envelope is signed by its sender, a courier (or the mailbox) can drop or delay messages but
//! not forge or alter them.

use cosigner_protocol::auth::P256Signer;
use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cosigner_protocol::auth::public_key_bytes;
use cosigner_protocol::dao::ecdsa::{AnyDkg, AnyOutputs, AnyRefresh};
use cosigner_protocol::dao::quorum::Quorum;
use cosigner_protocol::dao::refresh::{DaoRefresh, RefreshProposal};
use cosigner_protocol::dao::sign::{MemberSigner, Tally, TallyEnd};
use cosigner_protocol::dao::{
    Approval, DaoMessage, Evaluation, Invitation, Layout, MemberEntry, PolicyChange, Rejection,
    SignRequest,
};
use cosigner_protocol::hd;
use cosigner_protocol::id::Epoch;
use cosigner_protocol::id::PartyId;
use cosigner_protocol::mailbox::{Envelope, Topic};
use cosigner_protocol::policy::{Chain, NETWORK_ETHEREUM, Policy, parse_members};
use cosigner_protocol::psbt::SpendSummary;
use cosigner_protocol::wire::{
    Request, Response, SUITE_SECP256K1_ECDSA, SUITE_SECP256K1_TR, WalletId,
};
use frost_core::keys::KeyPackage;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::address::Network;
use crate::error::{ClientError, Result};
use crate::home::EthWalletFile;
use crate::home::{Home, WalletFile};
use crate::mailbox::MailboxClient;
use crate::session::Session;
use crate::trust::Trust;
use crate::wallet::wallet_file;

pub mod eth;

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

impl DaoInfo {
    /// The provider's identity key.
    pub fn provider_key(&self) -> Result<Vec<u8>> {
        hex::decode(&self.provider_key)
            .map_err(|e| ClientError::Unexpected(format!("stored provider key: {e}")))
    }
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

/// Most envelopes the courier hands the provider in one `Mailbox` request (the enclave takes up to
/// 1024).
const DELIVERY_CHUNK: usize = 512;
/// Most envelope bytes in one `Mailbox` request: it must fit a frame (`frame::MAX_FRAME_LEN`,
/// 1 MiB), and an Ethereum treasury's DKG pieces are up to about 330 KB each.
const DELIVERY_BYTES: usize = 600 * 1024;

/// `envelopes` in batches of at most [`DELIVERY_CHUNK`] envelopes and [`DELIVERY_BYTES`] bytes
/// (one envelope alone may be larger; at least one batch, maybe empty).
fn delivery_batches(envelopes: Vec<ByteBuf>) -> Vec<Vec<ByteBuf>> {
    let mut batches = vec![Vec::new()];
    let mut bytes = 0usize;
    for envelope in envelopes {
        let full = batches.last().is_some_and(|b: &Vec<ByteBuf>| {
            !b.is_empty() && (b.len() >= DELIVERY_CHUNK || bytes + envelope.len() > DELIVERY_BYTES)
        });
        if full {
            batches.push(Vec::new());
            bytes = 0;
        }
        bytes += envelope.len();
        if let Some(batch) = batches.last_mut() {
            batch.push(envelope);
        }
    }
    batches
}

/// Relays one topic between the mailbox and the provider, and hands new envelopes to the caller.
///
/// Either side may go away for a while (a restart, a network cut): the courier says so once,
/// keeps what it could not post, and goes on when the side is back. A provider that restarted
/// lost its ceremonies (they are in memory, docs/policy.md "Interrupted ceremonies"); the courier
/// sees that (the provider no longer answers with what it said in the topic), says so, and
/// delivers the whole topic again, so the provider founds the ceremony again and goes on after
/// the rounds it took part in.
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
    /// Every envelope of the topic read or received so far, encoded, in order: what a provider
    /// that lost its memory is given again.
    history: Vec<ByteBuf>,
    recorded: HashSet<[u8; 32]>,
    /// Envelopes not posted yet because the mailbox was unreachable.
    unposted: Vec<Envelope>,
    /// Whether the provider said anything in this topic (so an empty answer means it forgot).
    provider_spoke: bool,
    /// The first of the provider's envelopes this courier has not read (on this connection).
    outbox_next: u32,
    /// Which run of the ceremony those are of (`Response::Mailbox::outbox`).
    outbox_instance: Vec<u8>,
    mailbox_down: bool,
    provider_down: bool,
    report: Box<dyn FnMut(&str)>,
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
            history: Vec::new(),
            recorded: HashSet::new(),
            unposted: Vec::new(),
            provider_spoke: false,
            outbox_next: 0,
            outbox_instance: Vec::new(),
            mailbox_down: false,
            provider_down: false,
            report: Box::new(|_| {}),
            notes: Vec::new(),
        })
    }

    /// Where progress lines go (the courier's own: an unreachable side, a provider restart; and
    /// the ceremony loops' through [`Courier::say`]). Nowhere by default.
    pub fn on_progress(&mut self, report: impl FnMut(&str) + 'static) {
        self.report = Box::new(report);
    }

    /// Says one progress line.
    pub fn say(&mut self, line: &str) {
        (self.report)(line);
    }

    /// The provider's verified attestation.
    pub fn provider(&self) -> &Session {
        &self.provider
    }

    /// Signs `message` with `key` and posts it.
    pub fn send(&mut self, key: &dyn P256Signer, message: &DaoMessage) -> Result<()> {
        let envelope = Envelope::seal(key, self.topic, message.encode()?)?;
        self.post(&envelope)
    }

    /// Posts an envelope (once). While the mailbox is unreachable it is kept, and posted by the
    /// next [`Courier::poll`] that reaches the mailbox.
    pub fn post(&mut self, envelope: &Envelope) -> Result<()> {
        if self.posted.contains(&envelope.id()) {
            return Ok(());
        }
        match self.mailbox.post(envelope) {
            Ok(_) => {
                self.posted.insert(envelope.id());
                Ok(())
            }
            Err(ClientError::Connection { reason, .. }) => {
                self.mailbox_unreachable(&reason);
                if !self.unposted.iter().any(|e| e.id() == envelope.id()) {
                    self.unposted.push(envelope.clone());
                }
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn mailbox_unreachable(&mut self, reason: &str) {
        if !self.mailbox_down {
            self.mailbox_down = true;
            let line = format!(
                "the mailbox at {} is unreachable ({reason}); retrying until the timeout",
                self.mailbox.addr()
            );
            self.say(&line);
        }
    }

    fn record(&mut self, envelope: &Envelope) -> Result<()> {
        if self.recorded.insert(envelope.id()) {
            self.history.push(ByteBuf::from(envelope.encode()?));
        }
        Ok(())
    }

    /// One `Mailbox` request: `envelopes` delivered, and one page of the provider's envelopes
    /// from the first this courier has not read; whether more follow.
    fn call_page(&mut self, envelopes: Vec<ByteBuf>) -> Result<(Vec<ByteBuf>, Vec<String>, bool)> {
        let request = Request::Mailbox {
            topic: ByteBuf::from(self.topic.to_vec()),
            envelopes,
            from: self.outbox_next,
        };
        match self.provider.call(&request)? {
            Response::Mailbox {
                envelopes,
                notes,
                from,
                more,
                outbox,
            } => {
                let read = u32::try_from(envelopes.len()).unwrap_or(u32::MAX);
                if outbox.as_slice() != self.outbox_instance.as_slice() {
                    // The provider founded the ceremony anew (it had forgotten it): its envelopes
                    // are new ones, to read from the first.
                    self.outbox_instance = outbox.into_vec();
                    if from > 0 {
                        self.outbox_next = 0;
                        return Ok((envelopes, notes, true));
                    }
                }
                self.outbox_next = from.saturating_add(read);
                Ok((envelopes, notes, more && read > 0))
            }
            other => Err(ClientError::Unexpected(format!(
                "the provider answered a mailbox delivery with {other:?}"
            ))),
        }
    }

    /// Delivers `envelopes` in requests that each fit a frame, and reads every envelope of the
    /// provider's this courier has not read yet.
    fn call(&mut self, envelopes: Vec<ByteBuf>) -> Result<(Vec<ByteBuf>, Vec<String>)> {
        let mut answer = Vec::new();
        let mut notes = Vec::new();
        for batch in delivery_batches(envelopes) {
            let (a, n, mut more) = self.call_page(batch)?;
            answer.extend(a);
            notes.extend(n);
            while more {
                let (a, n, m) = self.call_page(Vec::new())?;
                answer.extend(a);
                notes.extend(n);
                more = m;
            }
        }
        Ok((answer, notes))
    }

    /// Hands `envelopes` to the provider; `None` while it is unreachable. After its connection
    /// was cut (sessions idle out; the provider may have restarted) the courier attests again
    /// and, if the provider forgot the topic, delivers all of it again.
    fn deliver(&mut self, envelopes: Vec<ByteBuf>) -> Result<Option<(Vec<ByteBuf>, Vec<String>)>> {
        if !self.provider_down {
            match self.call(envelopes.clone()) {
                Err(ClientError::Connection { .. }) => {}
                other => return other.map(Some),
            }
        }
        self.provider = match Session::connect(&self.provider_addr, &self.trust) {
            Ok(session) => session,
            Err(ClientError::Connection { reason, .. }) => {
                if !self.provider_down {
                    self.provider_down = true;
                    let line = format!(
                        "the provider at {} is unreachable ({reason}); retrying until the timeout",
                        self.provider_addr
                    );
                    self.say(&line);
                }
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let was_down = std::mem::replace(&mut self.provider_down, false);
        // A new connection, perhaps to a restarted provider: read its envelopes from the first.
        self.outbox_next = 0;
        // An empty delivery answers with what the provider said in the topic: nothing, when it
        // no longer holds the ceremony.
        let (said, _) = self.call(Vec::new())?;
        if said.is_empty() && self.provider_spoke {
            self.say(
                "the provider restarted and lost this ceremony (ceremonies live in its memory): \
                 handing it the topic again; it takes the ceremony up where the topic is, with \
                 fresh nonces (a new signing round or DKG attempt), and this command goes on",
            );
        } else if was_down {
            self.say("the provider is reachable again; going on");
        }
        let mut answer = said;
        let mut notes = Vec::new();
        let all = self.history.clone();
        let (a, n) = self.call(all)?;
        answer.extend(a);
        notes.extend(n);
        let (a, n) = self.call(envelopes)?;
        answer.extend(a);
        notes.extend(n);
        Ok(Some((answer, notes)))
    }

    /// One round trip: new mailbox envelopes to the provider, the provider's to the mailbox.
    /// Returns every envelope not returned before (verified, for this topic).
    pub fn poll(&mut self) -> Result<Vec<Envelope>> {
        let fetched = match self.mailbox.fetch(&self.topic, self.after) {
            Ok(f) => f,
            Err(ClientError::Connection { reason, .. }) => {
                self.mailbox_unreachable(&reason);
                return Ok(Vec::new());
            }
            Err(e) => return Err(e),
        };
        if std::mem::replace(&mut self.mailbox_down, false) {
            self.say("the mailbox is reachable again; going on");
        }
        for envelope in std::mem::take(&mut self.unposted) {
            self.post(&envelope)?;
        }
        let mut fresh = Vec::new();
        let mut to_deliver = Vec::new();
        for (seq, envelope) in fetched {
            self.after = self.after.max(seq);
            self.record(&envelope)?;
            if self.delivered.insert(envelope.id()) {
                to_deliver.push(ByteBuf::from(envelope.encode()?));
            }
            fresh.push(envelope);
        }
        if let Some((answer, notes)) = self.deliver(to_deliver)? {
            for n in notes {
                if !self.notes.contains(&n) {
                    self.notes.push(n);
                }
            }
            for raw in answer {
                let envelope = Envelope::open(&raw, &self.topic)?;
                self.provider_spoke = true;
                self.delivered.insert(envelope.id());
                self.record(&envelope)?;
                self.post(&envelope)?;
                fresh.push(envelope);
            }
        }
        Ok(fresh
            .into_iter()
            .filter(|e| self.seen.insert(e.id()))
            .collect())
    }
}

/// The pace of a ceremony loop between two polls: backs off while nothing happens (20 ms,
/// doubling to 100 ms), and gives up after the loop's timeout.
struct Pace {
    started: Instant,
    timeout: Duration,
    sleep: Duration,
}

impl Pace {
    fn new(timeout: Duration) -> Self {
        Self {
            started: Instant::now(),
            timeout,
            sleep: Duration::from_millis(20),
        }
    }

    /// Gives up after the timeout, saying where the ceremony stood (`state`: what it waits for)
    /// and that the same command picks it up again; else waits before the next poll.
    fn wait(&mut self, progressed: bool, state: &str, courier: &Courier) -> Result<()> {
        if self.started.elapsed() > self.timeout {
            let refused = match courier.notes.last() {
                Some(n) => format!(" (the provider refused: {n})"),
                None => String::new(),
            };
            return Err(ClientError::Unexpected(format!(
                "timed out after {} s {state}{refused}; nothing is lost: run the same command \
                 again to pick up where the ceremony is",
                self.timeout.as_secs()
            )));
        }
        if progressed {
            self.sleep = Duration::from_millis(20);
            return Ok(());
        }
        std::thread::sleep(self.sleep);
        self.sleep = (self.sleep * 2).min(Duration::from_millis(100));
        Ok(())
    }
}

/// Writes an envelope as one line of hex (an invitation or a request file).
pub fn write_envelope(path: &Path, envelope: &Envelope) -> Result<()> {
    let text = format!("{}\n", hex::encode(envelope.encode()?));
    // Written beside and renamed into place: whoever waits for the file (another member's
    // script, a test) never reads half of it. The temporary name is created new and never
    // through a link (`O_EXCL`, `O_NOFOLLOW`): a link planted there cannot redirect the write.
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp-{}", std::process::id()));
    let tmp = std::path::PathBuf::from(tmp);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .and_then(|mut file| file.write_all(text.as_bytes()))
        .and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.map_err(|e| input(format!("writing {}: {e}", path.display())))
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

/// A message that founds a topic (the topic is its hash): an invitation or a request.
trait Founding: Clone {
    /// What a file holding something else is not (`this file is not …`).
    const WHAT: &'static str;
    /// What does not match its topic.
    const NAME: &'static str;
    fn topic(&self) -> cosigner_protocol::Result<Topic>;
    fn message(self) -> DaoMessage;
    fn of(message: DaoMessage) -> Option<Self>;
}

/// The founding messages: type, its `DaoMessage` variant, what it is called.
macro_rules! founding {
    ($($kind:ident: $variant:ident, $what:literal, $name:literal;)*) => {$(
        impl Founding for $kind {
            const WHAT: &'static str = $what;
            const NAME: &'static str = $name;
            fn topic(&self) -> cosigner_protocol::Result<Topic> {
                $kind::topic(self)
            }
            fn message(self) -> DaoMessage {
                DaoMessage::$variant(self)
            }
            fn of(message: DaoMessage) -> Option<Self> {
                match message {
                    DaoMessage::$variant(founding) => Some(founding),
                    _ => None,
                }
            }
        }
    )*};
}

founding! {
    Invitation: Invitation, "an invitation", "invitation";
    SignRequest: SignRequest, "a signing request", "request";
    PolicyChange: PolicyChange, "a policy change", "policy change";
    RefreshProposal: RefreshStart, "a refresh proposal", "proposal";
}

/// Signs `message` with this device's key, in `topic`.
fn seal(home: &Home, topic: Topic, message: &DaoMessage) -> Result<Envelope> {
    Ok(Envelope::seal(
        &home.device_key()?,
        topic,
        message.encode()?,
    )?)
}

/// Signs `founding` with this device's key, in the topic it founds.
fn found<T: Founding>(home: &Home, founding: T) -> Result<(T, Envelope)> {
    let envelope = seal(home, founding.topic()?, &founding.clone().message())?;
    Ok((founding, envelope))
}

/// Opens a founding envelope: its signature, its message (a `T`), and that the message hashes
/// to the envelope's topic.
fn open_founding<T: Founding>(envelope: &Envelope) -> Result<T> {
    envelope.verify()?;
    let founding = T::of(DaoMessage::decode(&envelope.body)?)
        .ok_or_else(|| input(format!("this file is not {}", T::WHAT)))?;
    if founding.topic()? != envelope.topic {
        return Err(input(format!("the {} does not match its topic", T::NAME)));
    }
    Ok(founding)
}

/// Builds and signs an invitation from a members file and a policy file, checking both and that
/// this device is a member. The provider key is the one `provider` attested.
pub fn invite(
    home: &Home,
    provider: &Session,
    members_toml: &str,
    policy_toml: &str,
    network: Option<Network>,
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
    let (chain, network_name, suite) = match network {
        Some(n) => (Chain::Bitcoin, n.name().to_owned(), SUITE_SECP256K1_TR),
        None => (
            Chain::Ethereum,
            NETWORK_ETHEREUM.to_owned(),
            SUITE_SECP256K1_ECDSA,
        ),
    };
    Policy::parse_for(chain, policy_toml, &members)?;
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
        network: network_name,
        ciphersuite: suite.to_owned(),
        created_ms: now_ms(),
        nonce: ByteBuf::from(random16()?),
        mailbox: mailbox_addr.to_owned(),
        provider: provider_addr.to_owned(),
    };
    invitation.layout()?;
    found(home, invitation)
}

/// Opens an invitation envelope: signature, topic = its hash, signed by one of its members.
pub fn open_invitation(envelope: &Envelope) -> Result<Invitation> {
    let invitation: Invitation = open_founding(envelope)?;
    let layout = invitation.layout()?;
    if layout.member_party(&envelope.sender).is_none() {
        return Err(input("the invitation is not signed by one of its members"));
    }
    Ok(invitation)
}

/// The journal kind of a DKG whose share this device stored, waiting for the provider's
/// `Activated` (`wallets/<id>.dkg`, 0600: it holds the share).
const DKG_JOURNAL: &str = "dkg";

/// What a member keeps of a DKG between storing its share and the provider's activation: what
/// `join` run again needs to finish without the DKG's round secrets (which are never written).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PendingDkg {
    /// The DKG attempt the share is of.
    attempt: u32,
    /// The wallet file to write once the provider activated the wallet (a Bitcoin wallet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    wallet: Option<WalletFile>,
    /// The wallet file to write once the provider activated the wallet (an Ethereum treasury).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    eth_wallet: Option<EthWalletFile>,
    /// This device's share (hex of frost's KeyPackage serialization, or of the threshold ECDSA
    /// share's).
    share: String,
    /// The stored notice this device posted (hex of its encoding), posted again on a rerun.
    notice: String,
}

impl Drop for PendingDkg {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.share.zeroize();
    }
}

impl PendingDkg {
    fn load(home: &Home, id: &WalletId) -> Result<Option<Self>> {
        let Some(bytes) = home.journal(id, DKG_JOURNAL)? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| home.err(id, DKG_JOURNAL, format!("not a DKG journal: {e}")))
    }

    fn save(&self, home: &Home, id: &WalletId) -> Result<()> {
        let bytes = zeroize::Zeroizing::new(
            serde_json::to_vec(self)
                .map_err(|e| ClientError::Unexpected(format!("DKG journal: {e}")))?,
        );
        home.save_journal(id, DKG_JOURNAL, &bytes)
    }

    fn notice(&self) -> Result<DaoMessage> {
        let bytes = hex::decode(&self.notice)
            .map_err(|e| ClientError::Unexpected(format!("DKG journal's notice: {e}")))?;
        Ok(DaoMessage::decode(&bytes)?)
    }

    /// Makes the stored share this device's wallet (share, then wallet file: a rerun stopped in
    /// between finds the wallet file missing and does it again), then drops the journal.
    fn promote(&self, home: &Home, id: &WalletId) -> Result<Joined> {
        let share = zeroize::Zeroizing::new(
            hex::decode(&self.share)
                .map_err(|e| ClientError::Unexpected(format!("DKG journal's share: {e}")))?,
        );
        let joined = match (&self.wallet, &self.eth_wallet) {
            (Some(wallet), _) => {
                home.replace_share(wallet, &share)?;
                Joined::Bitcoin(wallet.clone())
            }
            (None, Some(wallet)) => {
                let key = cosigner_protocol::ecdsa::EcdsaKey::from_secret_bytes(&share)?;
                home.replace_eth_share(wallet, &key)?;
                Joined::Ethereum(wallet.clone())
            }
            (None, None) => {
                return Err(ClientError::Unexpected(
                    "DKG journal without a wallet".into(),
                ));
            }
        };
        home.remove_journal(id, DKG_JOURNAL)?;
        Ok(joined)
    }
}

/// A DAO wallet this device joined: a Bitcoin wallet (FROST) or an Ethereum treasury (threshold
/// ECDSA).
#[derive(Debug, Clone)]
pub enum Joined {
    /// A Bitcoin DAO wallet.
    Bitcoin(WalletFile),
    /// An Ethereum treasury.
    Ethereum(EthWalletFile),
}

/// This device's wallet from `invitation`, if this home already holds it (`join` run again after
/// it finished).
///
/// Errors: the home holds another wallet under the same id.
pub fn joined_wallet(home: &Home, invitation: &Invitation) -> Result<Option<Joined>> {
    let layout = invitation.layout()?;
    let id = layout.wallet_id;
    if layout.is_ecdsa() {
        if !home.has_eth_wallet(&id) {
            return Ok(None);
        }
        let wallet = home.eth_wallet(&id)?;
        let same = wallet
            .dao
            .as_ref()
            .is_some_and(|info| invitation_of(info).is_ok_and(|i| i == *invitation));
        if !same {
            return Err(input(format!(
                "this home already holds a wallet {id} that this invitation did not create"
            )));
        }
        home.ecdsa_key(&wallet)?;
        return Ok(Some(Joined::Ethereum(wallet)));
    }
    let wallet = match home.wallet(&id) {
        Ok(w) => w,
        Err(ClientError::Input(_)) => return Ok(None),
        Err(e) => return Err(e),
    };
    let same = wallet
        .dao
        .as_ref()
        .is_some_and(|_| dao_info(&wallet).is_ok_and(|(_, i)| i == *invitation));
    if !same {
        return Err(input(format!(
            "this home already holds a wallet {id} that this invitation did not create"
        )));
    }
    home.share(&id)?;
    Ok(Some(Joined::Bitcoin(wallet)))
}

/// This device's hold on a wallet's DKG for as long as its process runs: an OS file lock
/// (`wallets/<id>.join-lock`), released when the process ends however it ends, so a killed
/// `join` never blocks the next. A second process of the same member in the same DKG would post
/// a second round-1 message, which the others refuse as equivocation: it is refused here first.
struct JoinLock {
    /// The lock file and its open description, when the home is a directory.
    held: Option<(std::path::PathBuf, std::fs::File)>,
}

impl JoinLock {
    fn take(home: &Home, id: &WalletId) -> Result<Self> {
        // A store outside a file system is one process's (a phone app): nothing to lock against.
        let Some(path) = home.lock_path(id, "join-lock") else {
            return Ok(Self { held: None });
        };
        let home_err = |e: &dyn std::fmt::Display| ClientError::Home {
            path: path.display().to_string(),
            reason: e.to_string(),
        };
        let file = crate::home::open_lock_file(&path)?;
        match file.try_lock() {
            Ok(()) => Ok(Self {
                held: Some((path, file)),
            }),
            Err(std::fs::TryLockError::WouldBlock) => Err(input(format!(
                "another cosigner process of this device is taking part in the DKG of wallet \
                 {id}: let it finish (or stop it), then run the command again"
            ))),
            Err(std::fs::TryLockError::Error(e)) => Err(home_err(&e)),
        }
    }
}

impl Drop for JoinLock {
    fn drop(&mut self) {
        // Removed while still held (the lock goes with the file when it closes); a file left by
        // a killed process is empty and taken again by the next run.
        if let Some((path, _file)) = &self.held {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Where this device's DKG stands.
enum DkgPhase {
    /// Taking part in an attempt (round secrets in memory).
    Running(Box<AnyDkg>),
    /// This device lost its state of an attempt and asked the provider for a new one.
    Retrying(u32),
    /// The share of an attempt is stored (journal); waiting for `Activated`.
    Stored(Box<PendingDkg>),
}

impl DkgPhase {
    fn attempt(&self) -> u32 {
        match self {
            Self::Running(d) => d.attempt(),
            Self::Retrying(a) => *a,
            Self::Stored(p) => p.attempt,
        }
    }
}

/// Takes part in the DKG of `invitation` until the provider activated the wallet; records the
/// wallet. Idempotent and resumable: run again after it finished it returns the wallet this home
/// holds; run again after a stop it finishes what the topic and the home allow (see
/// `cosigner_protocol::dao::dkg` and docs/policy.md, "Interrupted ceremonies"):
///
/// * the share was stored (journal) before the stop: it waits for `Activated` and records it;
/// * this device had posted round-1 messages of the current attempt, whose secrets died with the
///   process: it asks the provider for a new attempt (everyone starts again);
/// * otherwise it takes part in the current attempt.
pub fn run_dkg(
    home: &Home,
    courier: &mut Courier,
    invitation: &Invitation,
    invitation_envelope: &Envelope,
    timeout: Duration,
    progress: &mut dyn FnMut(&str),
) -> Result<Joined> {
    let j = Joiner::new(home, courier, invitation, invitation_envelope)?;
    if let Some(wallet) = joined_wallet(home, invitation)? {
        // A promotion stopped after the wallet file was written leaves its journal: done now.
        home.remove_journal(&j.wallet_id, DKG_JOURNAL)?;
        return Ok(wallet);
    }
    let _lock = JoinLock::take(home, &j.wallet_id)?;
    let pending = PendingDkg::load(home, &j.wallet_id)?;
    courier.post(invitation_envelope)?;
    // The topic so far: what the provider said, and what this device already posted.
    let backlog = courier.poll()?;
    let (current, ours) = match j.scan(&backlog, pending.as_ref()) {
        Ok(at) => at,
        Err(end) => return *end,
    };
    let phase = j.resume(courier, pending, current, &ours, progress)?;
    j.run(courier, phase, backlog, timeout, progress)
}

/// One member's side of a DKG, as [`run_dkg`] runs it.
struct Joiner<'a> {
    home: &'a Home,
    invitation: &'a Invitation,
    invitation_envelope: &'a Envelope,
    layout: Layout,
    key: crate::store::DeviceKey,
    me: Vec<u8>,
    party: PartyId,
    wallet_id: WalletId,
    network: Option<Network>,
}

impl<'a> Joiner<'a> {
    fn new(
        home: &'a Home,
        courier: &Courier,
        invitation: &'a Invitation,
        invitation_envelope: &'a Envelope,
    ) -> Result<Self> {
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
        Ok(Self {
            home,
            invitation,
            invitation_envelope,
            wallet_id: layout.wallet_id,
            network: match layout.network {
                Some(_) => Some(invitation.network.parse::<Network>()?),
                None => None,
            },
            layout,
            key,
            me,
            party,
        })
    }

    /// The provider's final word in `message`, if it is one: the wallet recorded, or its refusal.
    fn ended(
        &self,
        sender: &[u8],
        message: &DaoMessage,
        pending: Option<&PendingDkg>,
    ) -> Option<Result<Joined>> {
        if sender != self.layout.provider_key.as_slice() {
            return None;
        }
        match message {
            DaoMessage::Activated { wallet_id, attempt } if *wallet_id == self.wallet_id => Some(
                finish_activated(self.home, &self.wallet_id, pending, *attempt),
            ),
            DaoMessage::Refused { request, reason }
                if request.as_slice() == self.layout.invitation_hash =>
            {
                Some(
                    self.home
                        .remove_journal(&self.wallet_id, DKG_JOURNAL)
                        .and_then(|()| Err(refused(reason))),
                )
            }
            _ => None,
        }
    }

    /// Reads the topic so far: the current attempt and the attempts this device posted round-1
    /// messages in; or how the DKG already ended.
    fn scan(
        &self,
        backlog: &[Envelope],
        pending: Option<&PendingDkg>,
    ) -> std::result::Result<(u32, Vec<u32>), Box<Result<Joined>>> {
        let mut current = 0u32;
        let mut ours = Vec::new();
        for envelope in backlog {
            let Ok(message) = DaoMessage::decode(&envelope.body) else {
                continue;
            };
            if let Some(end) = self.ended(&envelope.sender, &message, pending) {
                return Err(Box::new(end));
            }
            match message {
                DaoMessage::DkgAttempt { attempt }
                    if envelope.sender == self.layout.provider_key =>
                {
                    current = current.max(attempt);
                }
                DaoMessage::DkgRound1 { attempt, .. }
                | DaoMessage::EcdsaDkgHello { attempt, .. }
                    if envelope.sender == self.me =>
                {
                    ours.push(attempt);
                }
                _ => {}
            }
        }
        Ok((current, ours))
    }

    /// Where this device starts: its stored share of the current attempt, a request for a new
    /// attempt (it posted round 1 of the current one, whose secrets died with its process: a
    /// second, different round 1 would be equivocation), or the current attempt.
    fn resume(
        &self,
        courier: &mut Courier,
        pending: Option<PendingDkg>,
        current: u32,
        ours: &[u32],
        progress: &mut dyn FnMut(&str),
    ) -> Result<DkgPhase> {
        match pending {
            // Our share of the current attempt is stored: only the activation is missing. The
            // notice is posted again in case the stop came before it reached the mailbox.
            Some(p) if p.attempt >= current => {
                courier.send(&self.key, &p.notice()?)?;
                return Ok(DkgPhase::Stored(Box::new(p)));
            }
            // A share of an attempt the provider abandoned: it was never activated.
            Some(_) => self.home.remove_journal(&self.wallet_id, DKG_JOURNAL)?,
            None => {}
        }
        if ours.contains(&current) {
            progress(&format!(
                "this device's state of DKG attempt {current} was lost when its process \
                 stopped; asking the provider for a new attempt"
            ));
            courier.send(
                &self.key,
                &DaoMessage::DkgRetry {
                    attempt: current,
                    party: self.party,
                },
            )?;
            return Ok(DkgPhase::Retrying(current));
        }
        self.start(courier, current)
    }

    fn start(&self, courier: &mut Courier, attempt: u32) -> Result<DkgPhase> {
        let (dkg, first) = AnyDkg::start_attempt(
            self.layout.clone(),
            &self.me,
            attempt,
            &mut rand_core::OsRng,
        )?;
        for m in &first {
            courier.send(&self.key, m)?;
        }
        Ok(DkgPhase::Running(Box::new(dkg)))
    }

    /// Takes part until the provider activates the wallet (or refuses the DKG).
    fn run(
        &self,
        courier: &mut Courier,
        mut phase: DkgPhase,
        backlog: Vec<Envelope>,
        timeout: Duration,
        progress: &mut dyn FnMut(&str),
    ) -> Result<Joined> {
        let mut pace = Pace::new(timeout);
        let mut roll = DkgRoll::default();
        let mut batch = backlog;
        loop {
            let progressed = !batch.is_empty();
            let messages: Vec<(Envelope, DaoMessage)> = std::mem::take(&mut batch)
                .into_iter()
                .filter_map(|e| DaoMessage::decode(&e.body).ok().map(|m| (e, m)))
                .collect();
            self.new_attempt(courier, &mut phase, &messages, progress)?;
            for (envelope, message) in &messages {
                let pending = match &phase {
                    DkgPhase::Stored(p) => Some(p.as_ref()),
                    _ => None,
                };
                if let Some(end) = self.ended(&envelope.sender, message, pending) {
                    return end;
                }
                roll.absorb(&self.layout, &envelope.sender, message);
                if let DkgPhase::Running(dkg) = &mut phase
                    && let Err(e) = dkg.absorb(&envelope.sender, message)
                {
                    progress(&format!("refused a {}: {e}", message.name()));
                }
            }
            self.step(courier, &mut phase)?;
            let waiting = roll.waiting(&self.layout, &phase, self.party);
            if roll.said != waiting {
                progress(&waiting);
                roll.said = waiting.clone();
            }
            pace.wait(progressed, &format!("({waiting})"), courier)?;
            batch = courier.poll()?;
        }
    }

    /// A new attempt first, whatever its place in the batch: the new attempt's messages in the
    /// same batch are then taken by the new DKG, not ignored by the old one.
    fn new_attempt(
        &self,
        courier: &mut Courier,
        phase: &mut DkgPhase,
        messages: &[(Envelope, DaoMessage)],
        progress: &mut dyn FnMut(&str),
    ) -> Result<()> {
        let newest = messages
            .iter()
            .filter(|(e, _)| e.sender == self.layout.provider_key)
            .filter_map(|(_, m)| match m {
                DaoMessage::DkgAttempt { attempt } => Some(*attempt),
                _ => None,
            })
            .max();
        let Some(attempt) = newest.filter(|a| *a > phase.attempt()) else {
            return Ok(());
        };
        // A member lost its state: everyone starts again, with fresh secrets. A share stored of
        // the old attempt was never activated: dropped.
        if matches!(phase, DkgPhase::Stored(_)) {
            self.home.remove_journal(&self.wallet_id, DKG_JOURNAL)?;
        }
        progress(&format!(
            "the provider started DKG attempt {attempt} (a member's process stopped mid-DKG); \
             starting again"
        ));
        *phase = self.start(courier, attempt)?;
        Ok(())
    }

    /// Advances our DKG; once it is done, stores the share (journal) before the notice that it
    /// is there: the provider activates only once every member's notice is in.
    fn step(&self, courier: &mut Courier, phase: &mut DkgPhase) -> Result<()> {
        let DkgPhase::Running(dkg) = phase else {
            return Ok(());
        };
        for m in dkg.advance(&mut rand_core::OsRng)? {
            courier.send(&self.key, &m)?;
        }
        if !dkg.is_done() {
            return Ok(());
        }
        let notice = dkg.stored_notice()?;
        let DkgPhase::Running(dkg) = std::mem::replace(phase, DkgPhase::Retrying(0)) else {
            return Err(ClientError::Unexpected("DKG phase changed".into()));
        };
        let attempt = dkg.attempt();
        let pending = pending_of(
            *dkg,
            attempt,
            self.party,
            self.network,
            self.invitation_envelope,
            self.invitation,
            &notice,
        )?;
        pending.save(self.home, &self.wallet_id)?;
        courier.send(&self.key, &notice)?;
        *phase = DkgPhase::Stored(Box::new(pending));
        Ok(())
    }
}

/// How far each party got in the current DKG attempt, as the topic shows (for progress lines
/// naming who is still missing).
#[derive(Default)]
struct DkgRoll {
    attempt: u32,
    /// Party → 1 (round 1), 2 (round 2), 3 (confirmed), 4 (share stored).
    level: BTreeMap<PartyId, u8>,
    /// The last line said.
    said: String,
}

impl DkgRoll {
    fn absorb(&mut self, layout: &Layout, sender: &[u8], message: &DaoMessage) {
        let (party, level) = match message {
            DaoMessage::DkgRound1 { message, .. } => (message.from, 1),
            DaoMessage::DkgRound2 { package, .. } => (package.from, 2),
            DaoMessage::EcdsaDkgHello { hello, .. } => (hello.from, 1),
            DaoMessage::EcdsaDkgPart { part, .. } => (part.from, if part.step < 3 { 1 } else { 2 }),
            DaoMessage::DkgConfirm { confirmation, .. } => (confirmation.from, 3),
            DaoMessage::DkgStored { party, .. } => (*party, 4),
            _ => return,
        };
        let Some(attempt) = message.dkg_attempt() else {
            return;
        };
        if layout.owner_of(party) != Some(sender) || attempt < self.attempt {
            return;
        }
        if attempt > self.attempt {
            self.attempt = attempt;
            self.level.clear();
        }
        let at = self.level.entry(party).or_default();
        *at = (*at).max(level);
    }

    /// What this device waits for, naming who: the parties behind our own step.
    fn waiting(&self, layout: &Layout, phase: &DkgPhase, party: PartyId) -> String {
        let attempt = phase.attempt();
        let (ours, step) = match phase {
            DkgPhase::Retrying(a) => {
                return format!("waiting for the provider to start DKG attempt {}", a + 1);
            }
            DkgPhase::Stored(_) => (4, "to store their shares"),
            DkgPhase::Running(_) => match self.level.get(&party).copied().unwrap_or(0) {
                0 | 1 => (1, "to join (round 1)"),
                2 => (2, "for their round-2 packages"),
                _ => (3, "to confirm the key"),
            },
        };
        let behind =
            |p: &PartyId| attempt != self.attempt || self.level.get(p).copied().unwrap_or(0) < ours;
        let mut who: Vec<String> = layout
            .members
            .iter()
            .filter(|(p, _)| behind(p))
            .map(|(_, m)| m.name.clone())
            .collect();
        if ours < 4 && layout.provider_parties.iter().any(behind) {
            who.push("the provider".into());
        }
        if who.is_empty() {
            return match phase {
                DkgPhase::Stored(_) => "waiting for the provider to activate the wallet (this \
                                        device's share is stored: run the same command again to \
                                        finish)"
                    .to_owned(),
                // Between two of our own steps: nothing new to say.
                _ if !self.said.is_empty() => self.said.clone(),
                _ => format!("DKG attempt {attempt}"),
            };
        }
        format!(
            "DKG attempt {attempt}: waiting for {} {step}",
            who.join(", ")
        )
    }
}

/// This device's share of wallet `id`.
fn stored_key_package(home: &Home, id: &WalletId) -> Result<KeyPackage<Suite>> {
    let share = home.share(id)?;
    KeyPackage::<Suite>::deserialize(&share)
        .map_err(|e| ClientError::Unexpected(format!("stored share: {e}")))
}

/// A share as this device stores it (frost's serialization).
fn share_bytes(key_package: &KeyPackage<Suite>) -> Result<zeroize::Zeroizing<Vec<u8>>> {
    let bytes = key_package
        .serialize()
        .map_err(|e| ClientError::Unexpected(format!("key package: {e}")))?;
    Ok(zeroize::Zeroizing::new(bytes))
}

fn refused(reason: &str) -> ClientError {
    ClientError::Protocol(cosigner_protocol::ProtocolError::Refused {
        reason: reason.to_owned(),
    })
}

/// The provider activated the wallet (attempt `attempt`): record it from the stored share.
fn finish_activated(
    home: &Home,
    id: &WalletId,
    pending: Option<&PendingDkg>,
    attempt: u32,
) -> Result<Joined> {
    match pending {
        Some(p) if p.attempt == attempt => p.promote(home, id),
        _ => {
            // The provider activates only once this device said its share is stored, so this
            // home lost the journal (restored from an older copy, or another home's key).
            home.remove_journal(id, DKG_JOURNAL)?;
            Err(input(format!(
                "wallet {id} was activated (DKG attempt {attempt}) but this home holds no share \
                 of it: was it restored from an older copy? (this device cannot sign with it)"
            )))
        }
    }
}

/// The journal of a finished DKG: the wallet file and share to record on activation.
#[allow(clippy::too_many_arguments)]
fn pending_of(
    dkg: AnyDkg,
    attempt: u32,
    party: PartyId,
    network: Option<Network>,
    invitation_envelope: &Envelope,
    invitation: &Invitation,
    notice: &DaoMessage,
) -> Result<PendingDkg> {
    let (layout, outputs) = dkg.into_outputs()?;
    let info = DaoInfo {
        invitation: hex::encode(invitation_envelope.encode()?),
        provider_key: hex::encode(&layout.provider_key),
        mailbox: invitation.mailbox.clone(),
    };
    let no_share = || ClientError::Unexpected("the DKG produced no share".into());
    let (wallet, eth_wallet, share) = match (outputs, network) {
        (AnyOutputs::Frost(mut outputs), Some(network)) => {
            let (_, output) = outputs.pop().ok_or_else(no_share)?;
            let wallet = WalletFile {
                dao: Some(info),
                ..wallet_file(
                    layout.wallet_id,
                    party,
                    &layout.params.parties,
                    layout.params.min_signers,
                    Epoch(0),
                    &output.public_key_package,
                    network,
                )?
            };
            (Some(wallet), None, share_bytes(&output.key_package)?)
        }
        (AnyOutputs::Ecdsa(mut outputs), None) => {
            let (_, output) = outputs.pop().ok_or_else(no_share)?;
            let mut wallet = EthWalletFile::new(
                layout.wallet_id,
                &output.public_key,
                &layout.params.parties,
                layout.params.min_signers,
            )?;
            wallet.party = party;
            wallet.dao = Some(info);
            wallet.set_public_side(&cosigner_protocol::ecdsa::EcdsaPublic::of(&output))?;
            (None, Some(wallet), output.key.to_secret_bytes()?)
        }
        _ => {
            return Err(ClientError::Unexpected(
                "the DKG's scheme is not the invitation's".into(),
            ));
        }
    };
    Ok(PendingDkg {
        attempt,
        wallet,
        eth_wallet,
        share: hex::encode(share.as_slice()),
        notice: hex::encode(notice.encode()?),
    })
}

/// What the DAO commands need of a member's wallet, either chain's: its id, this device's party
/// and the DAO facts its file keeps.
#[derive(Debug, Clone, Copy)]
pub struct DaoMember<'a> {
    /// The wallet.
    pub wallet_id: WalletId,
    /// This device's party.
    pub party: PartyId,
    /// The DAO facts of its file.
    pub info: &'a DaoInfo,
}

impl WalletFile {
    /// This device as a member of the DAO wallet.
    ///
    /// Errors: not a DAO wallet.
    pub fn member(&self) -> Result<DaoMember<'_>> {
        Ok(DaoMember {
            wallet_id: self.wallet_id,
            party: self.party,
            info: dao_info(self)?.0,
        })
    }
}

impl EthWalletFile {
    /// This device as a member of the Ethereum treasury.
    ///
    /// Errors: not a treasury.
    pub fn member(&self) -> Result<DaoMember<'_>> {
        let info = self
            .dao
            .as_ref()
            .ok_or_else(|| input(format!("wallet {} is not a DAO wallet", self.wallet_id)))?;
        Ok(DaoMember {
            wallet_id: self.wallet_id,
            party: self.party,
            info,
        })
    }
}

/// The DAO facts of a wallet this device holds.
pub fn dao_info(wallet: &WalletFile) -> Result<(&DaoInfo, Invitation)> {
    let info = wallet
        .dao
        .as_ref()
        .ok_or_else(|| input(format!("wallet {} is not a DAO wallet", wallet.wallet_id)))?;
    Ok((info, invitation_of(info)?))
}

/// The invitation a wallet file keeps, checked: signed by a member, hashing to its topic.
pub fn invitation_of(info: &DaoInfo) -> Result<Invitation> {
    let bytes = hex::decode(&info.invitation)
        .map_err(|e| ClientError::Unexpected(format!("stored invitation: {e}")))?;
    // Kept since the wallet was made, possibly by an earlier wire version (the invitation's
    // identity, and so the wallet id, does not depend on it).
    let envelope = Envelope::decode_stored(&bytes)?;
    envelope.verify()?;
    let invitation = match DaoMessage::decode_stored(&envelope.body)? {
        DaoMessage::Invitation(invitation) => invitation,
        _ => return Err(input("the stored invitation is another kind of message")),
    };
    if invitation.topic()? != envelope.topic
        || invitation
            .layout()?
            .member_party(&envelope.sender)
            .is_none()
    {
        return Err(input(
            "the stored invitation does not match its topic or is not signed by a member",
        ));
    }
    Ok(invitation)
}

/// What this device computes itself from a PSBT for `wallet`.
pub fn summarize(wallet: &WalletFile, psbt: &[u8]) -> Result<SpendSummary> {
    crate::psbt_sign::summarize(wallet, psbt)
}

/// Makes and signs a request to sign `psbt` (binary) with a DAO wallet.
pub fn request(home: &Home, wallet: &WalletFile, psbt: Vec<u8>) -> Result<(SignRequest, Envelope)> {
    dao_info(wallet)?;
    summarize(wallet, &psbt)?;
    let request = SignRequest {
        wallet_id: wallet.wallet_id,
        psbt: ByteBuf::from(psbt),
        requester: wallet.party,
        created_ms: now_ms(),
        nonce: ByteBuf::from(random16()?),
    };
    found(home, request)
}

/// Opens a request envelope: signature, topic = its hash.
pub fn open_request(envelope: &Envelope) -> Result<SignRequest> {
    open_founding(envelope)
}

/// A signing request made more than this long ago is not reused by `sign` run again: the
/// provider refuses requests older than an hour, so a fresh one is made (after checking the old
/// one was not signed: a spend counts once).
const REQUEST_REUSE_MS: u64 = 55 * 60 * 1000;

/// A request this device made earlier for the same PSBT and wallet, kept in `path` (`sign` run
/// again with the same `--request-out`): `(request, envelope, still fresh)`. Anything else in the
/// file (another PSBT, another wallet, not a request) is `None`: a new request replaces it.
pub fn earlier_request(
    home: &Home,
    wallet: &WalletFile,
    psbt: &[u8],
    path: &Path,
) -> Result<Option<(SignRequest, Envelope, bool)>> {
    earlier_request_for(home, (wallet.wallet_id, wallet.party), psbt, path)
}

/// [`earlier_request`] for the wallet and member party `of`, and the request's payload (a PSBT,
/// or an Ethereum treasury's unsigned transaction).
pub fn earlier_request_for(
    home: &Home,
    of: (WalletId, PartyId),
    payload: &[u8],
    path: &Path,
) -> Result<Option<(SignRequest, Envelope, bool)>> {
    if !path.exists() {
        return Ok(None);
    }
    let Ok(envelope) = read_envelope(path) else {
        return Ok(None);
    };
    let Ok(request) = open_request(&envelope) else {
        return Ok(None);
    };
    let me = public_key_bytes(&home.device_key()?);
    let ours = (request.wallet_id, request.requester) == of
        && envelope.sender == me
        && request.psbt.as_slice() == payload;
    if !ours {
        return Ok(None);
    }
    let fresh = request.created_ms.saturating_add(REQUEST_REUSE_MS) > now_ms();
    Ok(Some((request, envelope, fresh)))
}

/// What a signing topic already says to a member arriving (or arriving again).
#[derive(Debug)]
pub enum Progress {
    /// The provider's evaluation: approve and sign.
    Evaluated(Evaluation),
    /// The provider already published the signed transaction `(txid, tx)`.
    Signed(String, Vec<u8>),
}

/// The signed transaction of `request_hash`, if the provider published it in `envelopes`.
fn signed_in<'a>(
    envelopes: impl IntoIterator<Item = &'a Envelope>,
    provider_key: &[u8],
    request_hash: &[u8; 32],
) -> Option<(String, Vec<u8>)> {
    envelopes.into_iter().find_map(|e| {
        if e.sender != provider_key {
            return None;
        }
        match DaoMessage::decode(&e.body) {
            Ok(DaoMessage::Signed { request, txid, tx }) if request.as_slice() == request_hash => {
                Some((txid, tx.into_vec()))
            }
            _ => None,
        }
    })
}

/// Whether `envelopes` hold this device's rejection of `request_hash` (a rejection stands: this
/// device cannot approve the request any more).
pub fn rejected_before(envelopes: &[Envelope], me: &[u8], request_hash: &[u8; 32]) -> bool {
    voted_before(envelopes, me, request_hash, false)
}

/// Whether `envelopes` hold this device's approval (`approving`) or rejection of `request_hash`.
fn voted_before(
    envelopes: &[Envelope],
    me: &[u8],
    request_hash: &[u8; 32],
    approving: bool,
) -> bool {
    envelopes
        .iter()
        .filter(|e| e.sender == me)
        .any(|e| match DaoMessage::decode(&e.body) {
            Ok(DaoMessage::Approval(a)) => approving && a.request.as_slice() == request_hash,
            Ok(DaoMessage::Reject(r)) => !approving && r.request.as_slice() == request_hash,
            _ => false,
        })
}

/// Posts this device's signed rejection of the request `hash`, with `reason`.
fn send_rejection(
    home: &Home,
    party: PartyId,
    courier: &mut Courier,
    hash: [u8; 32],
    reason: Option<String>,
) -> Result<()> {
    if reason
        .as_ref()
        .is_some_and(|r| r.len() > cosigner_protocol::dao::MAX_REJECTION_REASON)
    {
        return Err(input(format!(
            "--reason is longer than {} bytes",
            cosigner_protocol::dao::MAX_REJECTION_REASON
        )));
    }
    let key = home.device_key()?;
    courier.send(
        &key,
        &DaoMessage::Reject(Rejection {
            request: ByteBuf::from(hash.to_vec()),
            party,
            reason,
        }),
    )?;
    Ok(())
}

/// Says no to a policy change: posts this device's signed rejection, which the provider counts
/// with the same quorum as approvals (it refuses the change as soon as the admins left cannot
/// reach its approvals, and says so in the topic). Returns whether the change is dead now.
pub fn reject_policy(
    home: &Home,
    member: DaoMember<'_>,
    courier: &mut Courier,
    change: &PolicyChange,
    reason: Option<String>,
) -> Result<bool> {
    let invitation = invitation_of(member.info)?;
    let (layout, provider_key) = (invitation.layout()?, member.info.provider_key()?);
    let hash = change.hash()?;
    send_rejection(home, member.party, courier, hash, reason)?;
    let topic = courier.poll()?;
    let mut quorum = None;
    for envelope in topic.iter().filter(|e| e.sender == provider_key) {
        match DaoMessage::decode(&envelope.body) {
            Ok(DaoMessage::Refused { request, .. }) if request.as_slice() == hash => {
                return Ok(true);
            }
            Ok(DaoMessage::PolicyQuorum {
                request,
                approvals,
                approvers,
            }) if request.as_slice() == hash => {
                let digest = change.approval_digest()?;
                quorum = policy_quorum(&layout, hash, approvals, &approvers, digest).ok();
            }
            _ => {}
        }
    }
    let Some(mut quorum) = quorum else {
        return Ok(false);
    };
    for envelope in &topic {
        if let Ok(message) = DaoMessage::decode(&envelope.body) {
            let _ = quorum.absorb(&envelope.sender, &message);
        }
    }
    Ok(quorum.is_dead())
}

/// Says no to a signing request: posts this device's signed rejection and hands it to the
/// provider at once (which refuses the request as soon as the approvers left cannot reach the
/// rule's approvals). Returns whether the request is dead now.
pub fn reject(
    home: &Home,
    wallet: &WalletFile,
    courier: &mut Courier,
    request: &SignRequest,
    evaluation: &Evaluation,
    backlog: &[Envelope],
    reason: Option<String>,
) -> Result<bool> {
    let (_, invitation) = dao_info(wallet)?;
    reject_in(
        home,
        &invitation,
        wallet.party,
        courier,
        request,
        evaluation,
        backlog,
        reason,
    )
}

/// [`reject`] as member `party` of the wallet of `invitation` (either chain).
#[allow(clippy::too_many_arguments)]
pub fn reject_in(
    home: &Home,
    invitation: &Invitation,
    party: PartyId,
    courier: &mut Courier,
    request: &SignRequest,
    evaluation: &Evaluation,
    backlog: &[Envelope],
    reason: Option<String>,
) -> Result<bool> {
    let hash = request.hash()?;
    send_rejection(home, party, courier, hash, reason)?;
    let fresh = courier.poll()?;
    let mut tally = Tally::new(hash, &invitation.layout()?, evaluation)?;
    for envelope in backlog.iter().chain(&fresh) {
        if let Ok(message) = DaoMessage::decode(&envelope.body) {
            tally.absorb(&envelope.sender, &message);
        }
    }
    Ok(tally.is_dead() || matches!(tally.end(), Some(TallyEnd::Refused(_))))
}

/// Tells every member that this device made a request (`envelope`, its founding envelope): an
/// [`DaoMessage::Announce`] in the wallet's own topic, which `cosigner dao requests` reads.
pub fn announce(
    home: &Home,
    wallet: &WalletFile,
    mailbox_addr: &str,
    envelope: &Envelope,
) -> Result<()> {
    let (info, _) = dao_info(wallet)?;
    announce_in(home, info, mailbox_addr, envelope)
}

/// [`announce`] for the DAO wallet `info` describes (either chain).
pub fn announce_in(
    home: &Home,
    info: &DaoInfo,
    mailbox_addr: &str,
    envelope: &Envelope,
) -> Result<()> {
    let invitation = invitation_of(info)?;
    let id = invitation.layout()?.wallet_id;
    let mut mailbox = member_mailbox(home, mailbox_addr, &invitation)?;
    let announcement = DaoMessage::Announce {
        envelope: ByteBuf::from(envelope.encode()?),
    };
    // The wallet's topic outlives the mailbox's retention of it: check who it admits first.
    mailbox.check_topic(&Topic(id.0))?;
    mailbox.post(&seal(home, Topic(id.0), &announcement)?)?;
    Ok(())
}

/// A signing request of a DAO wallet as its topic shows it (`cosigner dao requests`).
#[derive(Debug)]
pub struct RequestView<S = SpendSummary> {
    /// The request.
    pub request: SignRequest,
    /// Its hash (what approvals bind).
    pub hash: [u8; 32],
    /// The requester's name.
    pub requester: String,
    /// What this device reads in the request's transaction (a PSBT's [`SpendSummary`], or an
    /// Ethereum treasury's unsigned transaction).
    pub summary: S,
    /// The provider's evaluation, once given.
    pub evaluation: Option<Evaluation>,
    /// Approvals, rejections, who is missing, how it ended (with the evaluation).
    pub tally: Option<Tally>,
    /// Whether it is too old for the provider to act on.
    pub expired: bool,
}

impl<S> RequestView<S> {
    /// Whether it may still be signed: not ended, not dead, not expired.
    pub fn pending(&self) -> bool {
        !self.expired
            && self
                .tally
                .as_ref()
                .is_none_or(|t| t.end().is_none() && !t.is_dead())
    }
}

/// The signing requests announced in `wallet`'s topic (newest last), each with what its own topic
/// says. Announcements that do not check out (not a request of this wallet, not signed by the
/// requester it names) are skipped.
///
/// `read` is what this device reads in a request's transaction; a request it cannot read is
/// skipped too.
pub fn list_requests<S>(
    home: &Home,
    member: DaoMember<'_>,
    mailbox_addr: &str,
    read: &dyn Fn(&SignRequest) -> Result<S>,
) -> Result<Vec<RequestView<S>>> {
    let info = member.info;
    let invitation = invitation_of(info)?;
    let layout = invitation.layout()?;
    let id = member.wallet_id;
    let provider_key = info.provider_key()?;
    let mut mailbox = member_mailbox(home, mailbox_addr, &invitation)?;
    let mut views: Vec<RequestView<S>> = Vec::new();
    for (_, announcement) in mailbox.fetch(&Topic(id.0), 0)? {
        let Ok(DaoMessage::Announce { envelope }) = DaoMessage::decode(&announcement.body) else {
            continue;
        };
        let Ok(request_envelope) = Envelope::decode(&envelope) else {
            continue;
        };
        let Ok(request) = open_request(&request_envelope) else {
            continue;
        };
        let hash = request.hash()?;
        if request.wallet_id != id
            || layout.owner_of(request.requester) != Some(request_envelope.sender.as_slice())
            || views.iter().any(|v| v.hash == hash)
        {
            continue;
        }
        let Ok(summary) = read(&request) else {
            continue;
        };
        // A topic this member cannot read (founded with another member list, or gone) leaves
        // that request out: one member's announcement must not stop the listing for everyone.
        let Ok(topic) = mailbox.fetch(&request_envelope.topic, 0) else {
            continue;
        };
        let evaluation = topic
            .iter()
            .find_map(|(_, e)| match DaoMessage::decode(&e.body) {
                Ok(DaoMessage::Evaluation(ev))
                    if e.sender == provider_key && ev.request.as_slice() == hash =>
                {
                    Some(ev)
                }
                _ => None,
            });
        let mut tally = match &evaluation {
            Some(ev) => Some(Tally::new(hash, &layout, ev)?),
            None => None,
        };
        for (_, e) in &topic {
            if let (Some(t), Ok(m)) = (tally.as_mut(), DaoMessage::decode(&e.body)) {
                t.absorb(&e.sender, &m);
            }
        }
        views.push(RequestView {
            requester: layout.name_of(request.requester).unwrap_or("?").to_owned(),
            expired: request.created_ms.saturating_add(60 * 60 * 1000) < now_ms(),
            request,
            hash,
            summary,
            evaluation,
            tally,
        });
    }
    Ok(views)
}

/// Whether `envelopes` hold this device's approval of `request_hash` (it approved before its
/// process stopped: the approval stands whatever it does now).
pub fn approved_before(envelopes: &[Envelope], me: &[u8], request_hash: &[u8; 32]) -> bool {
    voted_before(envelopes, me, request_hash, true)
}

/// Waits for the provider's evaluation of a request, or finds that it was already signed (a
/// member arriving again after the end). Every envelope read goes to `backlog`.
///
/// Errors: the provider refused the request (a signed transaction wins over a refusal: a
/// provider that restarted refuses a request it already signed).
pub fn await_progress(
    courier: &mut Courier,
    provider_key: &[u8],
    request_hash: &[u8; 32],
    timeout: Duration,
    backlog: &mut Vec<Envelope>,
) -> Result<Progress> {
    let mut pace = Pace::new(timeout);
    loop {
        let fresh = courier.poll()?;
        let progressed = !fresh.is_empty();
        backlog.extend(fresh);
        if let Some((txid, tx)) = signed_in(backlog.iter(), provider_key, request_hash) {
            return Ok(Progress::Signed(txid, tx));
        }
        let mut refusal = None;
        for envelope in backlog.iter().filter(|e| e.sender == provider_key) {
            match DaoMessage::decode(&envelope.body) {
                Ok(DaoMessage::Evaluation(e)) if e.request.as_slice() == request_hash => {
                    return Ok(Progress::Evaluated(e));
                }
                Ok(DaoMessage::Refused { request, reason })
                    if request.as_slice() == request_hash =>
                {
                    refusal = Some(reason);
                }
                _ => {}
            }
        }
        if let Some(reason) = refusal {
            return Err(refused(&reason));
        }
        pace.wait(progressed, "waiting for the provider's evaluation", courier)?;
    }
}

/// Approves a request and takes part in its signing until the transaction is published.
/// Returns `(txid, tx)`.
///
/// The approval carries this device's nonce commitments for signing round 0, so once the
/// rule's approvals are in the provider sends the signing packages with the signer set and the
/// chosen members answer their shares: one round (`cosigner_protocol::dao::sign`).
///
/// Run again after its process stopped (the same request), it finishes: the approval is posted
/// again (a duplicate, ignored) with fresh round-0 commitments, the topic is read from its
/// start, and if this device was chosen it commits with fresh nonces; the provider replaces its
/// old commitments or starts a new round (`cosigner_protocol::dao::sign`). Nonces are never
/// written down.
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
    let (info, invitation) = dao_info(wallet)?;
    let provider_key = info.provider_key()?;
    let hash = request.hash()?;
    let ours: Vec<Vec<u8>> = summary.sighashes.iter().map(|s| s.to_vec()).collect();
    let theirs: Vec<Vec<u8>> = evaluation.sighashes.iter().map(|s| s.to_vec()).collect();
    if ours != theirs {
        return Err(ClientError::Unexpected(
            "the provider computed other sighashes than this device: not approving".into(),
        ));
    }
    let key_package = stored_key_package(home, &wallet.wallet_id)?;
    // Each input signed with the key it spends: the wallet's own or a child's.
    let key_packages = hd::key_packages_for(&wallet.wallet_id, &key_package, &summary.input_paths)?;
    drop(key_package);
    let key = home.device_key()?;
    // The approval goes with our nonce commitments for round 0, so once the rule's approvals
    // are in the provider sends the signing packages with the signer set (one round).
    let (mut signer, approval) = MemberSigner::<Suite>::approve_committed(
        hash,
        wallet.party,
        provider_key.clone(),
        summary.sighashes.clone(),
        summary.txid.clone(),
        &key_packages,
        &mut rand_core::OsRng,
    )?;
    for message in &approval {
        courier.send(&key, message)?;
    }
    let mut watch = SignWatch::new(hash, invitation.layout()?, evaluation)?;
    let mut pace = Pace::new(timeout);
    let mut pending = backlog;
    loop {
        let fresh = courier.poll()?;
        let progressed = !fresh.is_empty() || !pending.is_empty();
        pending.extend(fresh);
        let batch: Vec<(Envelope, DaoMessage)> = std::mem::take(&mut pending)
            .into_iter()
            .filter_map(|e| DaoMessage::decode(&e.body).ok().map(|m| (e, m)))
            .collect();
        // A published transaction ends it whatever else the batch holds (a refusal of the
        // provider restarted since, say).
        if let Some((txid, tx)) = signed_in(batch.iter().map(|(e, _)| e), &provider_key, &hash) {
            if txid != summary.txid {
                return Err(ClientError::Protocol(
                    cosigner_protocol::ProtocolError::Disagreement {
                        reason: format!(
                            "the provider published transaction {txid}, we approved {}",
                            summary.txid
                        ),
                    },
                ));
            }
            return Ok((txid, tx));
        }
        watch.absorb(&batch, courier)?;
        // Catching up on a topic: commit once, for the newest round only.
        signer.look_ahead(batch.iter().map(|(e, m)| (e.sender.as_slice(), m)));
        for (envelope, message) in &batch {
            for out in signer.handle(
                &envelope.sender,
                message,
                &key_packages,
                &mut rand_core::OsRng,
            )? {
                courier.send(&key, &out)?;
            }
        }
        let state = format!(
            "(rule {:?} needs {} approvals): {}",
            evaluation.rule,
            evaluation.approvals,
            watch.line()
        );
        pace.wait(progressed, &state, courier)?;
    }
}

/// What a member waiting on a signing request says: who approved, who rejected, who is still
/// missing, a line each time that changes; and that the request is dead once rejections leave too
/// few approvers (the provider refuses it then too; this device need not wait for that).
struct SignWatch {
    tally: Tally,
    layout: Layout,
    last: String,
}

impl SignWatch {
    fn new(hash: [u8; 32], layout: Layout, evaluation: &Evaluation) -> Result<Self> {
        Ok(Self {
            tally: Tally::new(hash, &layout, evaluation)?,
            layout,
            last: String::new(),
        })
    }

    fn name(&self, party: PartyId) -> String {
        self.layout.name_of(party).unwrap_or("?").to_owned()
    }

    fn line(&self) -> String {
        self.tally.describe(&|p| self.name(p))
    }

    fn absorb(&mut self, batch: &[(Envelope, DaoMessage)], courier: &mut Courier) -> Result<()> {
        for (envelope, message) in batch {
            if self.tally.absorb(&envelope.sender, message)
                && let DaoMessage::Reject(r) = message
            {
                courier.say(&format!(
                    "{} rejected this request{}",
                    self.name(r.party),
                    r.reason
                        .as_deref()
                        .map(|t| format!(": {t:?}"))
                        .unwrap_or_default()
                ));
            }
        }
        if self.tally.end().is_none() && self.tally.is_dead() {
            return Err(refused(&rejected_reason(&self.tally, &|p| self.name(p))));
        }
        let line = self.line();
        if line != self.last && self.tally.end().is_none() {
            courier.say(&line);
            self.last = line;
        }
        Ok(())
    }
}

/// Who rejected a dead request, and why it is dead.
fn rejected_reason(tally: &Tally, name: &dyn Fn(PartyId) -> String) -> String {
    let who: Vec<String> = tally
        .rejections()
        .iter()
        .map(|(p, reason)| match reason {
            Some(r) if !r.is_empty() => format!("{} ({r:?})", name(*p)),
            _ => name(*p),
        })
        .collect();
    format!(
        "rejected by {}: the rule needs {} approvals and the members left cannot give them",
        who.join(", "),
        tally.needed()
    )
}

/// One look at a signing topic: the signed transaction, if the provider published it.
pub fn peek_signed(
    courier: &mut Courier,
    provider_key: &[u8],
    request_hash: &[u8; 32],
) -> Result<Option<(String, Vec<u8>)>> {
    let fresh = courier.poll()?;
    Ok(signed_in(fresh.iter(), provider_key, request_hash))
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
    member: DaoMember<'_>,
    policy_toml: &str,
    from_version: u64,
) -> Result<(PolicyChange, Envelope)> {
    let layout = invitation_of(member.info)?.layout()?;
    let members: Vec<_> = layout.members.iter().map(|(_, m)| m.clone()).collect();
    // In the chain's units: an Ethereum treasury's policy is read as the provider reads it.
    Policy::parse_for(layout.chain, policy_toml, &members)?;
    let change = PolicyChange {
        wallet_id: member.wallet_id,
        policy: policy_toml.to_owned(),
        from_version,
        proposer: member.party,
        created_ms: now_ms(),
        nonce: ByteBuf::from(random16()?),
    };
    found(home, change)
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
    member: DaoMember<'_>,
    courier: &mut Courier,
    change: &PolicyChange,
    timeout: Duration,
) -> Result<u64> {
    let layout = invitation_of(member.info)?.layout()?;
    let provider_key = member.info.provider_key()?;
    let hash = change.hash()?;
    let digest = change.approval_digest()?;
    let key = home.device_key()?;
    courier.send(
        &key,
        &DaoMessage::Approval(Approval {
            request: ByteBuf::from(hash.to_vec()),
            party: member.party,
            sighashes: ByteBuf::from(digest.to_vec()),
        }),
    )?;
    let mut pace = Pace::new(timeout);
    // The admin quorum as the provider announced it, counted with the provider's own state
    // machine, so the progress line names who is still missing.
    let mut quorum: Option<Quorum> = None;
    let mut seen: Vec<Envelope> = Vec::new();
    loop {
        let fresh = courier.poll()?;
        let progressed = !fresh.is_empty();
        for envelope in fresh {
            let Ok(message) = DaoMessage::decode(&envelope.body) else {
                continue;
            };
            if envelope.sender != provider_key {
                match quorum.as_mut() {
                    Some(q) => {
                        let _ = q.absorb(&envelope.sender, &message);
                    }
                    // Kept (boundedly) until the provider names the quorum.
                    None if seen.len() < MAX_EARLY => seen.push(envelope),
                    None => {}
                }
                continue;
            }
            match message {
                DaoMessage::PolicyChanged { request, version } if request.as_slice() == hash => {
                    return Ok(version);
                }
                DaoMessage::PolicyQuorum {
                    request,
                    approvals,
                    approvers,
                } if request.as_slice() == hash => {
                    // Only for the progress line: a quorum this device cannot count (an approver
                    // its layout lacks) leaves the plain count.
                    quorum = policy_quorum(&layout, hash, approvals, &approvers, digest).ok();
                    for e in seen.drain(..) {
                        if let (Some(q), Ok(m)) = (quorum.as_mut(), DaoMessage::decode(&e.body)) {
                            let _ = q.absorb(&e.sender, &m);
                        }
                    }
                }
                DaoMessage::Refused { request, reason } if request.as_slice() == hash => {
                    return Err(ClientError::Protocol(
                        cosigner_protocol::ProtocolError::Refused { reason },
                    ));
                }
                _ => {}
            }
        }
        let state = match &quorum {
            Some(q) => describe_quorum(q, &layout),
            None => "waiting for the provider's answer (or its admin quorum)".into(),
        };
        pace.wait(progressed, &state, courier)?;
    }
}

/// Most members' messages a policy approval keeps before the provider names the quorum.
const MAX_EARLY: usize = 1024;

/// The admin quorum of a policy change as the provider announced it: `needed` approvals among
/// `approvers`, with their keys from the wallet's layout.
fn policy_quorum(
    layout: &Layout,
    hash: [u8; 32],
    needed: u16,
    approvers: &[PartyId],
    digest: [u8; 32],
) -> Result<Quorum> {
    let keys = approvers
        .iter()
        .filter_map(|p| {
            let member = layout.members.iter().find(|(q, _)| q == p)?;
            Some((*p, member.1.device_key.clone()))
        })
        .collect();
    Ok(Quorum::new(hash, keys, needed, digest)?)
}

/// "waiting for the admin quorum (3 approvals): 1 in; still missing bob, carol" (and who
/// rejected).
fn describe_quorum(q: &Quorum, layout: &Layout) -> String {
    let name = |p: &PartyId| {
        layout
            .members
            .iter()
            .find(|(q, _)| q == p)
            .map_or_else(|| format!("party {p}"), |(_, m)| m.name.clone())
    };
    let list = |parties: Vec<PartyId>| parties.iter().map(name).collect::<Vec<_>>().join(", ");
    let mut line = format!(
        "waiting for the admin quorum ({} approvals): {} in",
        q.needed(),
        q.approvals().len().min(usize::from(q.needed())),
    );
    if !q.rejections().is_empty() {
        line.push_str(&format!(
            "; rejected by {}",
            list(q.rejections().keys().copied().collect())
        ));
    }
    let missing = q.missing();
    if !missing.is_empty() {
        line.push_str(&format!("; still missing {}", list(missing)));
    }
    line
}

/// Makes and signs a proposal to refresh every share of a DAO wallet (the epoch this device holds).
pub fn propose_refresh(
    home: &Home,
    member: DaoMember<'_>,
    epoch: Epoch,
) -> Result<(RefreshProposal, Envelope)> {
    let proposal = RefreshProposal {
        wallet_id: member.wallet_id,
        from_epoch: epoch,
        proposer: member.party,
        created_ms: now_ms(),
        nonce: ByteBuf::from(random16()?),
    };
    found(home, proposal)
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
    let member = wallet.member()?;
    let (layout, provider_key) = refresh_checks(member, wallet.epoch, courier, proposal)?;
    let key = home.device_key()?;
    let me = public_key_bytes(&key);
    let key_package = stored_key_package(home, &member.wallet_id)?;
    let public_key_package = wallet.public_key_package.clone();
    let (refresh, first) = DaoRefresh::<Suite>::start(
        layout,
        proposal,
        &me,
        vec![(wallet.party, key_package, public_key_package)],
        &mut rand_core::OsRng,
    )?;
    let watch = RefreshWatch::of(home, proposal, &provider_key, &key)?;
    let refresh = AnyRefresh::Frost(Box::new(refresh));
    let AnyRefresh::Frost(refresh) =
        watch.drive(courier, envelope, &first, refresh, timeout, progress)?
    else {
        return Err(scheme_changed());
    };
    record_refresh(home, wallet, watch.id, watch.epoch, *refresh)
}

/// What every member checks before taking part in the refresh `proposal` of the DAO wallet it
/// holds at `epoch`: the proposal is of this wallet and epoch, and the attested provider is the
/// wallet's. Returns the wallet's layout and the provider's key.
pub fn refresh_checks(
    member: DaoMember<'_>,
    epoch: Epoch,
    courier: &Courier,
    proposal: &RefreshProposal,
) -> Result<(Layout, Vec<u8>)> {
    let layout = invitation_of(member.info)?.layout()?;
    if proposal.wallet_id != member.wallet_id {
        return Err(input("the proposal is for another wallet"));
    }
    if proposal.from_epoch != epoch {
        return Err(input(format!(
            "the proposal refreshes epoch {}, this device holds epoch {epoch}",
            proposal.from_epoch
        )));
    }
    let provider_key = member.info.provider_key()?;
    let attested_key = courier.provider().attestation().doc.public_key.clone();
    if attested_key.as_deref() != Some(provider_key.as_slice()) {
        return Err(ClientError::Unexpected(
            "the attested provider's key is not the wallet's".into(),
        ));
    }
    Ok((layout, provider_key))
}

/// What a member's refresh loop needs besides the refresh itself.
pub(crate) struct RefreshWatch<'a> {
    home: &'a Home,
    id: WalletId,
    hash: [u8; 32],
    /// The new epoch.
    epoch: Epoch,
    provider_key: &'a [u8],
    key: &'a dyn P256Signer,
}

/// A refresh came back of another scheme than it started (never happens).
pub(crate) fn scheme_changed() -> ClientError {
    ClientError::Unexpected("the refresh changed its scheme".into())
}

impl<'a> RefreshWatch<'a> {
    /// The watch of `proposal`'s refresh at `home`, whose device key is `key`, with the wallet's
    /// provider `provider_key`.
    pub(crate) fn of(
        home: &'a Home,
        proposal: &RefreshProposal,
        provider_key: &'a [u8],
        key: &'a dyn P256Signer,
    ) -> Result<Self> {
        Ok(Self {
            home,
            id: proposal.wallet_id,
            hash: proposal.hash()?,
            epoch: proposal.from_epoch.saturating_next(),
            provider_key,
            key,
        })
    }

    /// Posts the proposal's founding `envelope` again and our first messages `first`, then takes
    /// part until the new epoch is current ([`Self::run`]); returns the finished refresh.
    pub(crate) fn drive(
        &self,
        courier: &mut Courier,
        envelope: &Envelope,
        first: &[DaoMessage],
        mut refresh: AnyRefresh,
        timeout: Duration,
        progress: &mut dyn FnMut(&str),
    ) -> Result<AnyRefresh> {
        courier.post(envelope)?;
        for m in first {
            courier.send(self.key, m)?;
        }
        self.run(courier, &mut refresh, timeout, progress)?;
        Ok(refresh)
    }

    /// Takes part until the provider made the new epoch current (which it does only once every
    /// party committed). The new share is written as prepared, and committed, first.
    ///
    /// A whole batch of the topic is read before the provider's word is acted on: `Refreshed`
    /// outranks a refusal whatever order the mailbox gives them in (a restarted provider may
    /// have refused after it committed). Once this device committed its prepared share is never
    /// deleted here: only the provider knows whether the new epoch became current.
    fn run(
        &self,
        courier: &mut Courier,
        refresh: &mut AnyRefresh,
        timeout: Duration,
        progress: &mut dyn FnMut(&str),
    ) -> Result<()> {
        let mut pace = Pace::new(timeout);
        let mut prepared = false;
        let mut refreshed = false;
        loop {
            let fresh = courier.poll()?;
            let progressed = !fresh.is_empty();
            let mut refusal = None;
            for envelope in fresh {
                let Ok(message) = DaoMessage::decode(&envelope.body) else {
                    continue;
                };
                if envelope.sender == self.provider_key {
                    match self.provider_news(&message) {
                        Some(Ok(())) => refreshed = true,
                        Some(Err(reason)) => refusal = refusal.or(Some(reason)),
                        None => {}
                    }
                }
                if let Err(e) = refresh.absorb(&envelope.sender, &message) {
                    progress(&format!("refused a {}: {e}", message.name()));
                }
            }
            if let Some(reason) = refusal.filter(|_| !refreshed) {
                // Prepared shares are kept: this run's (if it committed, only the provider knows
                // whether the new epoch became current) and any an earlier run kept.
                if prepared {
                    progress(
                        "this device committed before the refusal: its prepared share is kept",
                    );
                }
                return Err(refused(&reason));
            }
            if prepared && refreshed {
                return Ok(());
            }
            for m in refresh.advance(&mut rand_core::OsRng)? {
                courier.send(self.key, &m)?;
            }
            if refresh.is_done() && !prepared {
                self.prepare(courier, refresh)?;
                prepared = true;
                continue;
            }
            let waiting = if prepared && refresh.all_committed() {
                "the provider to make the new epoch current".to_owned()
            } else {
                refresh.waiting_for()
            };
            pace.wait(progressed, &format!("waiting for {waiting}"), courier)?;
        }
    }

    /// What the provider's `message` says of this refresh: the new epoch is current (`Ok`), it
    /// was refused (`Err`, the reason), or nothing.
    fn provider_news(&self, message: &DaoMessage) -> Option<std::result::Result<(), String>> {
        match message {
            DaoMessage::Refreshed { wallet_id, epoch }
                if *wallet_id == self.id && *epoch == self.epoch =>
            {
                Some(Ok(()))
            }
            DaoMessage::Refused { request, reason } if request.as_slice() == self.hash => {
                Some(Err(reason.clone()))
            }
            _ => None,
        }
    }

    /// Stores the new share as prepared, then commits.
    fn prepare(&self, courier: &mut Courier, refresh: &mut AnyRefresh) -> Result<()> {
        let none = || ClientError::Unexpected("the refresh produced no share".into());
        match refresh {
            AnyRefresh::Frost(r) => {
                let (_, output) = r.new_shares()?.into_iter().next().ok_or_else(none)?;
                let new_share = share_bytes(&output.key_package)?;
                self.home.save_prepared_share(&self.id, &new_share)?;
            }
            AnyRefresh::Ecdsa(r) => {
                let (_, output) = r.new_shares()?.into_iter().next().ok_or_else(none)?;
                self.home.add_eth_prepared(&self.id, &output.key)?;
            }
        }
        let commit = refresh.commit()?;
        courier.send(self.key, &commit)
    }
}

/// The refresh is current at the provider: the new share replaces the old one.
fn record_refresh(
    home: &Home,
    wallet: &WalletFile,
    id: WalletId,
    epoch: Epoch,
    refresh: DaoRefresh<Suite>,
) -> Result<WalletFile> {
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
        wallet.network,
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
    let new_share = share_bytes(&output.key_package)?;
    home.replace_share(&new_wallet, &new_share)?;
    home.remove_prepared_share(&id)?;
    Ok(new_wallet)
}
