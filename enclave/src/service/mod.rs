//! The enclave's brain: (session, request) → response.
//!
//! No sockets here: the attester, the sealer, the blob store, the freshness anchor and the policy
//! come in from outside, so whole ceremonies run in one test process. Shares are unsealed on use
//! and dropped (zeroized) right after; signing nonces live only in [`SignerSession`]s in memory
//! and are consumed once.
//!
//! Authentication: every request that uses a share (sign, refresh, recovery) arrives wrapped in
//! `Authorized`, signed by a key registered for the wallet over a digest binding a fresh,
//! single-use challenge of this session (`cosigner_protocol::auth`). The device key may sign and
//! refresh; the recovery credential may only start a recovery; during a recovery the new device's
//! pending key may repair and refresh. Revoked keys are refused.
//!
//! Precedence (docs/lifecycle.md): the recovery credential wins. `RecoverStart` suspends the
//! registered device key at once (it can neither sign, refresh nor start anything until the
//! recovery completes, when it is revoked, or the recovery credential cancels it with
//! `RecoverCancel`), and drops the device's ceremonies and signing sessions in flight. A ceremony
//! in flight is never replaced by another session's (`ErrorKind::Busy`, retryable), except that a
//! recovery pre-empts a device refresh and the same key may restart its own.
//!
//! One writer per wallet: every state change holds the wallet's writer lock and re-reads the
//! state under it; reads never write (`records`), and anchor writes are compare-and-swap.

pub mod anchor;
pub mod audit;
mod dao;
mod psbt;
pub mod records;

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cosigner_attestation::{AttestRequest, Attester};
use cosigner_kms::Sealer;
use cosigner_protocol::auth::{
    CHALLENGE_LEN, commit_receipt_digest, normalise_public_key, registration_digest_with,
    request_digest, verify_digest, verify_request,
};
use cosigner_protocol::binding::{EXPORTER_LEN, NONCE_LEN};
use cosigner_protocol::dkg::{self, DkgRound1, DkgRound2, DkgRound3};
use cosigner_protocol::enrollment::EnrollmentToken;
use cosigner_protocol::party;
use cosigner_protocol::refresh::{self, RefreshRound1, RefreshRound2};
use cosigner_protocol::repair::{self, RepairHelper1, RepairHelper2};
use cosigner_protocol::sign::SignerSession;
use cosigner_protocol::wire::{
    self, Confirmation, DkgParams, ErrorKind, KeyRole, RefreshParams, Registration, RepairParams,
    Request, Response, Round1Message, SUITE_SECP256K1_TR, SealedPackage, WalletId, WalletInfo,
    WireError,
};
use frost_core::keys::{KeyPackage, PublicKeyPackage};
use serde_bytes::ByteBuf;

use self::anchor::Anchor;
use self::audit::AuditLog;
use self::records::{PreparedRecord, Records, ShareRecord, WalletState};
use crate::store::BlobStore;

/// The ciphersuite the service runs: BIP-340 signatures valid for Taproot key-path spends.
pub type Suite = frost_secp256k1_tr::Secp256K1Sha256TR;

/// How long an unfinished ceremony is kept.
const CEREMONY_TTL: Duration = Duration::from_secs(600);
/// How long an unfinished DKG is kept: the client drives it without any human step, in well
/// under a second, and until it completes it holds nothing persistent.
const DKG_TTL: Duration = Duration::from_secs(60);
/// DKGs one connection may have in progress at once.
const MAX_DKGS_PER_SESSION: usize = 4;
/// Signing sessions (raw or PSBT) one wallet may have open at once.
pub(crate) const MAX_SIGNS_PER_WALLET: usize = 64;
/// Stripes of the per-wallet writer lock (wallets hash onto them; two wallets sharing a stripe
/// only wait for each other).
const WRITER_STRIPES: usize = 64;
/// Refused requests recorded in the audit log per wallet and window; beyond, they are counted
/// and the count is recorded with the next refusal after the window (an anonymous flood of bad
/// signatures cannot grow the log without bound).
const REFUSALS_PER_WINDOW: u32 = 8;
const REFUSAL_WINDOW: Duration = Duration::from_secs(600);
/// Wallets whose refusal counts are tracked at once (the oldest window is forgotten beyond).
const MAX_REFUSAL_WALLETS: usize = 65_536;
/// How long a signing session may wait for its round 2.
const SIGN_TTL: Duration = Duration::from_secs(300);
/// How long a challenge is valid.
const CHALLENGE_TTL: Duration = Duration::from_secs(120);
/// Bounds on pending ceremonies, so memory stays bounded. Reaching one evicts the oldest entry
/// (which held nothing persistent) rather than refusing everyone: together with the per-session
/// and per-wallet quotas, no single party can keep others out.
const MAX_PENDING: usize = 1024;
const MAX_PENDING_SIGNS: usize = 4096;

/// When the provider demands a refresh before it signs again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RefreshPolicy {
    /// Demand a refresh once the current epoch is this old.
    pub after: Option<Duration>,
    /// Demand a refresh after this many signatures in the current epoch.
    pub after_signatures: Option<u64>,
}

/// What a client connection has established.
#[derive(Debug)]
pub struct SessionState {
    /// Random, names this session as the owner of the ceremonies it starts.
    id: [u8; 16],
    binding: [u8; EXPORTER_LEN],
    attested: bool,
    challenge: Option<(WalletId, [u8; CHALLENGE_LEN], Instant)>,
}

impl SessionState {
    /// A new session whose TLS channel binding is `binding`.
    pub fn new(binding: [u8; EXPORTER_LEN]) -> Self {
        Self {
            // The binding is unique per TLS session; its hash is as good an owner name as any.
            id: binding_id(&binding),
            binding,
            attested: false,
            challenge: None,
        }
    }
}

fn binding_id(binding: &[u8; EXPORTER_LEN]) -> [u8; 16] {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(binding);
    let mut id = [0u8; 16];
    id.copy_from_slice(digest.get(..16).unwrap_or(&[0; 16]));
    id
}

/// Which key authorized a request.
#[derive(Debug, Clone)]
struct Actor {
    role: &'static str,
    key: Vec<u8>,
}

impl Actor {
    fn label(&self) -> String {
        format!("{}:{}", self.role, hex::encode(&self.key))
    }

    /// Whether this key may still use the wallet's share under `state` (a signing session
    /// checks it again before releasing a share): the device key while current and not
    /// suspended by a recovery, the recovery credential while registered.
    fn still_authorized(&self, state: &WalletState) -> bool {
        let key = self.key.as_slice();
        match self.role {
            "device" => state.device_key.as_slice() == key && state.pending_device_key.is_none(),
            "recovery" => state.recovery_key.as_slice() == key,
            _ => false,
        }
    }
}

enum DkgStage {
    Round1(Box<DkgRound1<Suite>>),
    Round2(Box<DkgRound2<Suite>>),
    Round3(Box<DkgRound3<Suite>>),
}

enum RefreshStage {
    Round1(Box<RefreshRound1<Suite>>),
    Round2(Box<RefreshRound2<Suite>>),
    /// Prepared and stored (`records::PreparedRecord`): the commit works from the stored record;
    /// this marker only keeps the ceremony owned until it commits or expires.
    Prepared,
}

enum RepairStage {
    Started(Box<RepairHelper1<Suite>>),
    Deltas(Box<RepairHelper2<Suite>>),
}

/// A ceremony in progress. Only the session that started it may continue it: another client
/// (or a hostile cosigner with its own attested session) cannot step into it.
struct Pending<T> {
    stage: T,
    started: Instant,
    recovery: bool,
    owner: [u8; 16],
    /// The key that authorized it (empty for a DKG): the same key may restart its own ceremony
    /// from another session (a client that crashed and retries).
    key: Vec<u8>,
}

struct PendingSign {
    wallet_id: WalletId,
    party: u16,
    epoch: u64,
    /// The key that authorized the commitment: re-checked when the share is released.
    actor: Actor,
    /// The state anchor's generation when it was authorized: unchanged at release means the
    /// state is unchanged (no revocation, suspension or refresh since), so no reload is needed.
    generation: Option<u64>,
    session: SignerSession<Suite>,
    started: Instant,
}

/// A failure, classified for the client.
#[derive(Debug)]
pub struct Failure(WireError);

impl Failure {
    fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self(WireError::new(kind, message))
    }

    fn bad(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::BadRequest, message)
    }

    fn busy(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Busy, message)
    }

    fn denied(message: impl Into<String>) -> Self {
        Self::new(
            ErrorKind::BadRequest,
            format!("not authorized: {}", message.into()),
        )
    }
}

impl From<cosigner_protocol::ProtocolError> for Failure {
    fn from(e: cosigner_protocol::ProtocolError) -> Self {
        use cosigner_protocol::ProtocolError as P;
        let kind = match &e {
            P::Culprit { .. } | P::Disagreement { .. } | P::Hpke { .. } | P::Frost { .. } => {
                ErrorKind::Ceremony
            }
            _ => ErrorKind::BadRequest,
        };
        Self::new(kind, e.to_string())
    }
}

type Outcome = Result<Response, Failure>;

fn lock<T>(m: &Mutex<T>) -> Result<std::sync::MutexGuard<'_, T>, Failure> {
    m.lock()
        .map_err(|_| Failure::new(ErrorKind::Internal, "internal lock poisoned"))
}

fn random<const N: usize>() -> Result<[u8; N], Failure> {
    use rand_core::RngCore;
    let mut out = [0u8; N];
    rand_core::OsRng
        .try_fill_bytes(&mut out)
        .map_err(|e| Failure::new(ErrorKind::Internal, e.to_string()))?;
    Ok(out)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn internal(e: impl std::fmt::Display) -> Failure {
    Failure::new(ErrorKind::Internal, e.to_string())
}

/// The service.
pub struct Service {
    attester: Box<dyn Attester>,
    sealer: Box<dyn Sealer>,
    store: Box<dyn BlobStore>,
    anchor: Box<dyn Anchor>,
    audit: AuditLog,
    policy: RefreshPolicy,
    dkgs: Mutex<HashMap<WalletId, Pending<DkgStage>>>,
    refreshes: Mutex<HashMap<WalletId, Pending<RefreshStage>>>,
    repairs: Mutex<HashMap<WalletId, Pending<RepairStage>>>,
    signs: Mutex<HashMap<[u8; 16], PendingSign>>,
    /// One writer per wallet: every state change of a wallet holds its stripe.
    writers: Vec<Mutex<()>>,
    /// Refusals recorded per wallet in the current window (see [`REFUSALS_PER_WINDOW`]).
    refusals: Mutex<HashMap<WalletId, (Instant, u32)>>,
    /// Which session committed each wallet's latest refresh: only it may finalize (delete the
    /// older epochs), so another client cannot cut a refresh short.
    committed_by: Mutex<HashMap<WalletId, ([u8; 16], u64)>>,
    /// DAO ceremonies in progress, by mailbox topic.
    dao: Mutex<dao::Ceremonies>,
    /// Personal wallets' PSBT signing sessions (nonces in memory only), by session id.
    psbts: Mutex<psbt::Sessions>,
    /// With enrollment required: the operator's public key (SEC1 P-256) that signs tokens.
    enrollment: Option<Vec<u8>>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("attester", &self.attester.kind())
            .field("audit", &self.audit)
            .finish_non_exhaustive()
    }
}

impl Service {
    /// A service over these backends. Loads (or creates) the audit key.
    pub fn new(
        attester: Box<dyn Attester>,
        sealer: Box<dyn Sealer>,
        store: Box<dyn BlobStore>,
        anchor: Box<dyn Anchor>,
        policy: RefreshPolicy,
    ) -> Result<Self, String> {
        let anchor: Box<dyn Anchor> = Box::new(anchor::CachedAnchor::new(anchor));
        let audit = AuditLog::open(sealer.as_ref(), store.as_ref(), anchor.as_ref())?;
        Ok(Self {
            attester,
            sealer,
            store,
            anchor,
            audit,
            policy,
            dkgs: Mutex::new(HashMap::new()),
            refreshes: Mutex::new(HashMap::new()),
            repairs: Mutex::new(HashMap::new()),
            signs: Mutex::new(HashMap::new()),
            writers: (0..WRITER_STRIPES).map(|_| Mutex::new(())).collect(),
            refusals: Mutex::new(HashMap::new()),
            committed_by: Mutex::new(HashMap::new()),
            dao: Mutex::new(HashMap::new()),
            psbts: Mutex::new(HashMap::new()),
            enrollment: None,
        })
    }

    /// Requires an operator's enrollment token, signed by `operator_key` (SEC1 P-256), on every
    /// `DkgStart`; `None`: wallet creation is open.
    #[must_use]
    pub fn with_enrollment(mut self, operator_key: Option<Vec<u8>>) -> Self {
        self.enrollment = operator_key;
        self
    }

    /// The audit key (SEC1 compressed P-256), as bound into attestation documents.
    pub fn audit_public_key(&self) -> Vec<u8> {
        self.audit.public_key()
    }

    fn records(&self) -> Records<'_> {
        Records {
            sealer: self.sealer.as_ref(),
            store: self.store.as_ref(),
            anchor: self.anchor.as_ref(),
        }
    }

    /// The writer lock of `wallet`: held across every read-modify-write of its records.
    fn writer(&self, wallet: &WalletId) -> Result<std::sync::MutexGuard<'_, ()>, Failure> {
        let stripe = usize::from(wallet.0[0]) % WRITER_STRIPES;
        let m = self
            .writers
            .get(stripe)
            .ok_or_else(|| internal("writer stripe out of range"))?;
        lock(m)
    }

    /// Records a refusal in the audit log, at most [`REFUSALS_PER_WINDOW`] per wallet and
    /// window; the ones beyond are counted and the count is recorded with the next one logged.
    /// Failing to log a refusal does not change the answer (the request is refused anyway).
    fn refused(&self, wallet: &WalletId, action: &str, actor: &str, digest: &[u8], why: &str) {
        let suppressed = {
            let Ok(mut map) = self.refusals.lock() else {
                return;
            };
            if map.len() >= MAX_REFUSAL_WALLETS && !map.contains_key(wallet) {
                map.retain(|_, (start, _)| start.elapsed() < REFUSAL_WINDOW);
                if map.len() >= MAX_REFUSAL_WALLETS {
                    return;
                }
            }
            let entry = map.entry(*wallet).or_insert((Instant::now(), 0));
            if entry.0.elapsed() >= REFUSAL_WINDOW {
                let dropped = entry.1.saturating_sub(REFUSALS_PER_WINDOW);
                *entry = (Instant::now(), 1);
                dropped
            } else {
                entry.1 = entry.1.saturating_add(1);
                if entry.1 > REFUSALS_PER_WINDOW {
                    return;
                }
                0
            }
        };
        let decision = if suppressed > 0 {
            format!("{why} ({suppressed} more refusals in the previous window not recorded)")
        } else {
            why.to_owned()
        };
        let _ = self.log(wallet, action, actor, digest, &decision);
    }

    fn log(
        &self,
        wallet: &WalletId,
        action: &str,
        actor: &str,
        digest: &[u8],
        decision: &str,
    ) -> Result<(), Failure> {
        self.audit
            .append(
                self.store.as_ref(),
                &wallet.to_hex(),
                action,
                actor,
                digest,
                decision,
            )
            .map_err(|e| internal(format!("audit log: {e}")))
    }

    /// Answers one request of a session.
    pub fn handle(&self, session: &mut SessionState, request: Request) -> Response {
        let outcome = match request {
            Request::Attest { nonce } => self.attest(session, &nonce),
            other if !session.attested => Err(Failure::bad(format!(
                "{} before Attest: the first request of a session must be Attest",
                other.name()
            ))),
            Request::Challenge { wallet_id } => self.challenge(session, wallet_id),
            Request::Authorized {
                wallet_id,
                role,
                signature,
                request,
            } => self.authorized(session, wallet_id, role, &signature, &request),
            Request::DkgStart {
                params,
                me,
                enrollment,
            } => self.dkg_start(
                session.id,
                params,
                me,
                enrollment.as_ref().map(|t| t.as_slice()),
            ),
            Request::DkgRound2 { wallet_id, round1 } => {
                self.dkg_round2(session.id, wallet_id, &round1)
            }
            Request::DkgRound3 {
                wallet_id,
                packages,
            } => self.dkg_round3(session.id, wallet_id, &packages),
            Request::DkgConfirm {
                wallet_id,
                confirmations,
                registration,
            } => self.dkg_confirm(wallet_id, &confirmations, &registration),
            Request::SignShare {
                session_id,
                signing_package,
            } => self.sign_share(&session_id, &signing_package),
            Request::SignPsbtShare {
                session_id,
                signing_packages,
            } => self.sign_psbt_share(session.id, &session_id, &signing_packages),
            Request::GetWallet { wallet_id } => self.get_wallet(wallet_id),
            Request::RefreshRound2 { wallet_id, round1 } => {
                self.refresh_round2(session.id, wallet_id, &round1)
            }
            Request::RefreshRound3 {
                wallet_id,
                packages,
            } => self.refresh_round3(session.id, wallet_id, &packages),
            Request::RefreshFinalize { wallet_id, epoch } => {
                self.refresh_finalize(session.id, wallet_id, epoch)
            }
            Request::RepairDeltas {
                wallet_id,
                helper_keys,
            } => self.repair_deltas(session.id, wallet_id, &helper_keys),
            Request::RepairSigma {
                wallet_id,
                deltas,
                participant_key,
            } => self.repair_sigma(session.id, wallet_id, &deltas, &participant_key),
            Request::Mailbox { topic, envelopes } => self.mailbox(&topic, &envelopes),
            Request::DaoPolicy { wallet_id } => self.dao_policy_in_force(wallet_id),
            other => Err(Failure::bad(format!(
                "{} must be sent inside Authorized",
                other.name()
            ))),
        };
        outcome.unwrap_or_else(|f| Response::Error(f.0))
    }

    fn attest(&self, session: &mut SessionState, nonce: &[u8]) -> Outcome {
        if nonce.len() != NONCE_LEN {
            return Err(Failure::bad(format!(
                "nonce is {} bytes, expected {NONCE_LEN}",
                nonce.len()
            )));
        }
        let document = self
            .attester
            .attest(&AttestRequest {
                nonce: Some(nonce.to_vec()),
                user_data: Some(session.binding.to_vec()),
                public_key: Some(self.audit.public_key()),
            })
            .map_err(|e| internal(format!("attestation: {e}")))?;
        session.attested = true;
        Ok(Response::Attested {
            document: ByteBuf::from(document),
        })
    }

    fn challenge(&self, session: &mut SessionState, wallet_id: WalletId) -> Outcome {
        let challenge = random::<CHALLENGE_LEN>()?;
        session.challenge = Some((wallet_id, challenge, Instant::now()));
        Ok(Response::Challenge {
            challenge: ByteBuf::from(challenge.to_vec()),
        })
    }

    /// Checks the signature, then runs the inner request with the signer's identity.
    fn authorized(
        &self,
        session: &mut SessionState,
        wallet_id: WalletId,
        role: KeyRole,
        signature: &[u8],
        inner_bytes: &[u8],
    ) -> Outcome {
        // The challenge is consumed whatever happens next: one signature, one use.
        let Some((challenged, challenge, issued)) = session.challenge.take() else {
            return Err(Failure::denied(
                "no challenge on this session (ask for one first)",
            ));
        };
        if challenged != wallet_id || issued.elapsed() > CHALLENGE_TTL {
            return Err(Failure::denied(
                "the challenge is for another wallet or has expired",
            ));
        }
        let inner: Request =
            wire::decode(inner_bytes).map_err(|e| Failure::bad(format!("inner request: {e}")))?;
        let digest = request_digest(&wallet_id, &challenge, inner_bytes);
        let check = |key: &[u8]| {
            verify_request(key, &wallet_id, &challenge, inner_bytes, signature).is_ok()
        };
        let action = inner.name();
        // Every authorized request is about an existing wallet; creation is not authorized. The
        // anchor's generation is read first: if it is the same when a signing session releases
        // its share, the state it was authorized under is still the state.
        let generation = self.records().state_generation(&wallet_id)?;
        let state = self.records().load_state(&wallet_id)?;
        let (actor, role_name) = match role {
            KeyRole::Device => {
                let pending = state.pending_device_key.as_ref().map(|k| k.to_vec());
                let matches = |k: &[u8]| check(k);
                if matches(&state.device_key) {
                    if state.pending_device_key.is_some() {
                        // The recovery credential has spoken: the registered device (maybe a
                        // stolen phone) is suspended until the recovery completes or is cancelled.
                        self.refused(
                            &wallet_id,
                            action,
                            &format!("device:{}", hex::encode(&state.device_key)),
                            &digest,
                            "refused: device key suspended by a recovery in progress",
                        );
                        return Err(Failure::denied(
                            "this device key is suspended: a recovery of this wallet is in \
                             progress (the recovery credential can cancel it)",
                        ));
                    }
                    (state.device_key.to_vec(), "device")
                } else if let Some(p) = pending.filter(|p| matches(p)) {
                    (p, "pending-device")
                } else if state.revoked_keys.iter().any(|k| matches(k)) {
                    self.refused(
                        &wallet_id,
                        action,
                        "revoked-device",
                        &digest,
                        "refused: revoked key",
                    );
                    return Err(Failure::denied("this device key has been revoked"));
                } else {
                    self.refused(&wallet_id, action, "-", &digest, "refused: bad signature");
                    return Err(Failure::denied(
                        "signature is not by this wallet's device key",
                    ));
                }
            }
            KeyRole::Recovery => {
                if !check(&state.recovery_key) {
                    self.refused(
                        &wallet_id,
                        action,
                        "-",
                        &digest,
                        "refused: bad recovery signature",
                    );
                    return Err(Failure::denied(
                        "signature is not by this wallet's recovery credential",
                    ));
                }
                (state.recovery_key.to_vec(), "recovery")
            }
        };
        let actor = Actor {
            role: role_name,
            key: actor,
        };
        // What each key may do.
        // The recovery cosigner co-signs spends only under the recovery credential (the owner's
        // offline key: recovery, or the provider unreachable), never on the device key alone, so
        // a stolen phone reaches one spend history (the provider's), not two.
        let recovery_cosigner = state.party == party::RECOVERY;
        let allowed = match (&inner, actor.role) {
            (
                Request::RecoverStart { .. }
                | Request::RecoverCancel { .. }
                | Request::SetPolicy { .. },
                "recovery",
            ) => true,
            (Request::SignCommit { .. } | Request::SignPsbtCommit { .. }, "recovery") => {
                recovery_cosigner
            }
            (Request::RecoverStart { .. } | Request::RecoverCancel { .. }, _) | (_, "recovery") => {
                false
            }
            (Request::SignCommit { .. } | Request::SignPsbtCommit { .. }, "device") => {
                !recovery_cosigner
            }
            (
                Request::RefreshStart { .. } | Request::RefreshCommit { .. },
                "device" | "pending-device",
            ) => true,
            (Request::RepairStart { .. }, "pending-device") => true,
            _ => false,
        };
        if !allowed {
            self.refused(
                &wallet_id,
                action,
                &actor.label(),
                &digest,
                "refused: not allowed for this key",
            );
            return Err(Failure::denied(format!(
                "a {} key may not send {action}",
                actor.role
            )));
        }
        match inner {
            Request::SignCommit { wallet_id: w, .. }
                if w == wallet_id && state.policy.is_some() =>
            {
                Err(self.raw_sign_refused(&wallet_id, &actor, &digest))
            }
            Request::SignCommit { .. } | Request::SignPsbtCommit { .. }
                if state.pending_device_key.is_some() =>
            {
                Err(Failure::denied(
                    "a recovery of this wallet is in progress: finish or cancel it first",
                ))
            }
            Request::SignPsbtCommit {
                wallet_id: w,
                epoch,
                psbt,
                signers,
            } if w == wallet_id => {
                self.sign_psbt_commit(session.id, state, &actor, epoch, &psbt, &signers)
            }
            Request::SetPolicy {
                wallet_id: w,
                policy,
            } if w == wallet_id => self.set_policy(state, &actor, policy, &digest),
            Request::SignCommit {
                wallet_id: w,
                epoch,
                message,
                signers,
            } if w == wallet_id => {
                self.sign_commit(state, actor, generation, epoch, &message, &signers)
            }
            Request::RefreshStart { params, me } if params.wallet_id == wallet_id => {
                self.refresh_start(session.id, state, &actor, params, me, &digest)
            }
            Request::RefreshCommit {
                wallet_id: w,
                confirmations,
                provider_receipt,
            } if w == wallet_id => self.refresh_commit(
                session.id,
                state,
                &actor,
                &confirmations,
                provider_receipt.as_deref().map(Vec::as_slice),
                &digest,
            ),
            Request::RecoverStart {
                wallet_id: w,
                new_device_key,
            } if w == wallet_id => self.recover_start(state, &actor, &new_device_key, &digest),
            Request::RecoverCancel { wallet_id: w } if w == wallet_id => {
                self.recover_cancel(&wallet_id, &actor, &digest)
            }
            Request::RepairStart { params, me } if params.wallet_id == wallet_id => {
                self.repair_start(session.id, state, &actor, params, me, &digest)
            }
            _ => Err(Failure::bad("the inner request names another wallet")),
        }
    }

    // ----- wallet creation -----

    fn dkg_start(
        &self,
        owner: [u8; 16],
        params: DkgParams,
        me: u16,
        enrollment: Option<&[u8]>,
    ) -> Outcome {
        // Checked first, before any work or state: a stranger without a token costs one
        // signature check.
        let enrolled = self.check_enrollment(enrollment)?;
        if params.ciphersuite != SUITE_SECP256K1_TR {
            return Err(Failure::bad(format!(
                "ciphersuite {:?} is not served",
                params.ciphersuite
            )));
        }
        let wallet_id = params.wallet_id;
        if self.records().exists(&wallet_id)? {
            return Err(Failure::bad(format!("wallet {wallet_id} already exists")));
        }
        let mut dkgs = lock(&self.dkgs)?;
        dkgs.retain(|_, p| p.started.elapsed() < DKG_TTL);
        if dkgs.contains_key(&wallet_id) {
            return Err(Failure::busy(format!(
                "a DKG for wallet {wallet_id} is already running"
            )));
        }
        // Quotas per principal: an anonymous connection may run a few DKGs at once; the table as
        // a whole is bounded by evicting its oldest entry (a DKG holds nothing persistent until
        // it completes), so a flood of strangers delays nobody's DKG by more than a retry.
        let mine = dkgs.values().filter(|p| p.owner == owner).count();
        if mine >= MAX_DKGS_PER_SESSION {
            return Err(Failure::busy(format!(
                "this connection already has {mine} DKGs in progress"
            )));
        }
        if !enrolled.is_empty() {
            let theirs = dkgs.values().filter(|p| p.key == enrolled).count();
            if theirs >= MAX_DKGS_PER_SESSION {
                return Err(Failure::busy(format!(
                    "this enrolled device already has {theirs} DKGs in progress"
                )));
            }
        }
        evict_oldest(&mut dkgs, MAX_PENDING, |p| p.started);
        let (state, message) = dkg::start::<Suite>(&params, me, &mut rand_core::OsRng)?;
        dkgs.insert(
            wallet_id,
            Pending {
                stage: DkgStage::Round1(Box::new(state)),
                started: Instant::now(),
                recovery: false,
                owner,
                key: enrolled,
            },
        );
        Ok(Response::DkgRound1 { message })
    }

    /// With enrollment required, the token's device key (the DKG's principal: its registration
    /// must name that key); empty when creation is open.
    fn check_enrollment(&self, token: Option<&[u8]>) -> Result<Vec<u8>, Failure> {
        let Some(operator) = &self.enrollment else {
            return Ok(Vec::new());
        };
        let token = token.ok_or_else(|| {
            Failure::denied(
                "wallet creation at this cosigner needs an operator's enrollment token \
                 (wallet create --enrollment-token FILE)",
            )
        })?;
        let token = EnrollmentToken::from_bytes(token)
            .map_err(|e| Failure::denied(format!("enrollment token: {e}")))?;
        token
            .verify(operator, now_ms())
            .map_err(|e| Failure::denied(format!("enrollment token: {e}")))?;
        Ok(normalise_public_key(&token.device_key)?)
    }

    fn take<T>(
        map: &Mutex<HashMap<WalletId, Pending<T>>>,
        id: &WalletId,
        what: &str,
        owner: &[u8; 16],
    ) -> Result<Pending<T>, Failure> {
        let mut map = lock(map)?;
        match map.get(id) {
            Some(p) if p.started.elapsed() >= CEREMONY_TTL => {
                map.remove(id);
            }
            Some(p) if &p.owner != owner => {
                return Err(Failure::denied(format!(
                    "the {what} of wallet {id} belongs to another session"
                )));
            }
            _ => {}
        }
        map.remove(id).ok_or_else(|| {
            Failure::new(
                ErrorKind::NotFound,
                format!("no {what} running for wallet {id} (expired, or pre-empted by a recovery)"),
            )
        })
    }

    /// Puts a ceremony (back) into its table. Never replaces another session's ceremony in
    /// flight: that is refused as [`ErrorKind::Busy`] (retryable), unless it expired, was started
    /// by the same key (a client restarting its own ceremony), or `pending` is a recovery and the
    /// one in flight is not (the recovery credential wins).
    fn put<T>(
        map: &Mutex<HashMap<WalletId, Pending<T>>>,
        id: WalletId,
        what: &str,
        pending: Pending<T>,
    ) -> Result<(), Failure> {
        let mut map = lock(map)?;
        map.retain(|_, p| p.started.elapsed() < CEREMONY_TTL);
        if let Some(running) = map.get(&id) {
            let replaceable = running.owner == pending.owner
                || (!running.key.is_empty() && running.key == pending.key)
                || (pending.recovery && !running.recovery);
            if !replaceable {
                return Err(Failure::busy(format!(
                    "another session's {what} of wallet {id} is in progress: try again when it \
                     has finished or expired"
                )));
            }
        }
        // Full: the oldest ceremony that is not a recovery makes room (a recovery goes last: the
        // owner's way back must not depend on how busy strangers keep the table).
        if !map.contains_key(&id) && map.len() >= MAX_PENDING {
            // Only recoveries left: the oldest of them goes (a refusal would let whoever holds
            // the table with self-made wallets' recoveries block everybody's).
            let oldest = map
                .iter()
                .filter(|(_, p)| !p.recovery)
                .min_by_key(|(_, p)| p.started)
                .or_else(|| map.iter().min_by_key(|(_, p)| p.started))
                .map(|(k, _)| *k);
            if let Some(k) = oldest {
                map.remove(&k);
            }
        }
        map.insert(id, pending);
        Ok(())
    }

    fn dkg_round2(
        &self,
        owner: [u8; 16],
        wallet_id: WalletId,
        round1: &[Round1Message],
    ) -> Outcome {
        let p = Self::take(&self.dkgs, &wallet_id, "DKG", &owner)?;
        let DkgStage::Round1(state) = p.stage else {
            return Err(Failure::bad("DKG is not waiting for round 1"));
        };
        let (next, packages) = state.handle_round1(round1, &mut rand_core::OsRng)?;
        Self::put(
            &self.dkgs,
            wallet_id,
            "DKG",
            Pending {
                stage: DkgStage::Round2(Box::new(next)),
                ..p
            },
        )?;
        Ok(Response::DkgRound2 { packages })
    }

    fn dkg_round3(
        &self,
        owner: [u8; 16],
        wallet_id: WalletId,
        packages: &[SealedPackage],
    ) -> Outcome {
        let p = Self::take(&self.dkgs, &wallet_id, "DKG", &owner)?;
        let DkgStage::Round2(state) = p.stage else {
            return Err(Failure::bad("DKG is not waiting for round 2"));
        };
        let (next, confirmation) = state.handle_round2(packages)?;
        Self::put(
            &self.dkgs,
            wallet_id,
            "DKG",
            Pending {
                stage: DkgStage::Round3(Box::new(next)),
                ..p
            },
        )?;
        Ok(Response::DkgRound3 { confirmation })
    }

    fn dkg_confirm(
        &self,
        wallet_id: WalletId,
        confirmations: &[Confirmation],
        registration: &Registration,
    ) -> Outcome {
        // The confirmations are the capability here, not the session: only the coordinator saw
        // every round-1 message, so only it can send confirmations equal to ours, and the
        // registration is signed by both keys over the transcript. A client that died after
        // sending them elsewhere can finish from a new session; sent again once done, it gets
        // the same answer.
        if let Some(done) = self.dkg_already_confirmed(&wallet_id, registration)? {
            return Ok(done);
        }
        // Everything is checked before the DKG is taken out of the table: a bogus confirmation
        // from someone who learnt the wallet id cannot destroy another session's ceremony.
        let (params, party, ours, enrolled) = {
            let dkgs = lock(&self.dkgs)?;
            let p = dkgs
                .get(&wallet_id)
                .filter(|p| p.started.elapsed() < DKG_TTL)
                .ok_or_else(|| {
                    Failure::new(
                        ErrorKind::NotFound,
                        format!("no DKG running for wallet {wallet_id} (expired)"),
                    )
                })?;
            let DkgStage::Round3(state) = &p.stage else {
                return Err(Failure::bad("DKG is not waiting for confirmations"));
            };
            (
                state.params().clone(),
                state.me(),
                state.confirmation().clone(),
                p.key.clone(),
            )
        };
        refresh::check_commit(&sorted(&params.parties), party, &ours, confirmations)?;
        // Both keys prove possession over this wallet and this DKG's transcript.
        let device_key = normalise_public_key(&registration.device_key)?;
        let recovery_key = normalise_public_key(&registration.recovery_key)?;
        if device_key == recovery_key {
            return Err(Failure::bad(
                "the recovery credential must differ from the device key",
            ));
        }
        if !enrolled.is_empty() && enrolled != device_key {
            return Err(Failure::denied(
                "the device key registered is not the one the enrollment token names",
            ));
        }
        let (policy, network) = psbt::creation_terms(registration, &device_key)?;
        let provider_key = self.creation_provider_key(party, registration)?;
        let digest = registration_digest_with(
            &wallet_id,
            &ours.transcript_hash,
            &registration.device_key,
            &registration.recovery_key,
            registration.policy.as_deref(),
            registration.network.as_deref(),
        );
        verify_digest(&device_key, &digest, &registration.device_signature)
            .map_err(|_| Failure::denied("device key registration signature"))?;
        verify_digest(&recovery_key, &digest, &registration.recovery_signature)
            .map_err(|_| Failure::denied("recovery credential registration signature"))?;
        let taken = lock(&self.dkgs)?.remove(&wallet_id);
        let Some(Pending {
            stage: DkgStage::Round3(state),
            ..
        }) = taken
        else {
            // Another confirmation of it is being stored right now: retry and get its answer.
            return Err(Failure::busy(format!(
                "the DKG of wallet {wallet_id} is being confirmed by another request: try again"
            )));
        };
        let output = state.handle_confirmations(confirmations)?;
        let pkp = output.public_key_package.serialize().map_err(internal)?;
        let share = ShareRecord {
            epoch: 0,
            key_package: ByteBuf::from(output.key_package.serialize().map_err(internal)?),
            public_key_package: ByteBuf::from(pkp.clone()),
        };
        let state = WalletState {
            params,
            party,
            current_epoch: 0,
            retained_epochs: Vec::new(),
            prepared_epoch: None,
            device_key: ByteBuf::from(device_key.clone()),
            recovery_key: ByteBuf::from(recovery_key),
            pending_device_key: None,
            revoked_keys: Vec::new(),
            public_key_package: ByteBuf::from(pkp),
            epoch_started_ms: now_ms(),
            signatures: 0,
            policy,
            network,
            history: Vec::new(),
            commit_confirmations: Vec::new(),
            signed_txids: Vec::new(),
            provider_key,
            commit_receipt: None,
        };
        let _guard = self.writer(&wallet_id)?;
        if self.records().exists(&wallet_id)? {
            return Err(Failure::bad(format!("wallet {wallet_id} already exists")));
        }
        self.records().save_share(&wallet_id, party, &share)?;
        self.records().save_state(&wallet_id, &state)?;
        // Committed: a failure to append the audit entry now must not make the client believe
        // the wallet was not created (it would throw its share away).
        let _ = self.log(
            &wallet_id,
            "create",
            &format!("device:{}", hex::encode(&device_key)),
            &output.transcript_hash,
            &psbt::creation_decision(&state),
        );
        Ok(Response::DkgDone {
            wallet: info(wallet_id, &state)?,
        })
    }

    /// The provider's audit key as registered: the provider checks it is its own; the recovery
    /// cosigner keeps it, to require the provider's receipts on refresh commits.
    fn creation_provider_key(
        &self,
        party: u16,
        registration: &Registration,
    ) -> Result<Option<ByteBuf>, Failure> {
        let Some(key) = &registration.provider_key else {
            return Ok(None);
        };
        let key = normalise_public_key(key)?;
        if party == party::PROVIDER && key != self.audit.public_key() {
            return Err(Failure::bad(
                "the registered provider key is not this provider's attested key",
            ));
        }
        Ok((party == party::RECOVERY).then(|| ByteBuf::from(key)))
    }

    /// `DkgDone` again for a wallet already created with this very registration.
    fn dkg_already_confirmed(
        &self,
        wallet_id: &WalletId,
        registration: &Registration,
    ) -> Result<Option<Response>, Failure> {
        if lock(&self.dkgs)?.contains_key(wallet_id) || !self.records().exists(wallet_id)? {
            return Ok(None);
        }
        let state = self.records().load_state(wallet_id)?;
        // The same registration: its recovery credential never changes, whatever the wallet did
        // since (refreshes, a recovery); the client compares the key package it gets back.
        if normalise_public_key(&registration.recovery_key)? != state.recovery_key.as_slice() {
            return Err(Failure::bad(format!("wallet {wallet_id} already exists")));
        }
        Ok(Some(Response::DkgDone {
            wallet: info(*wallet_id, &state)?,
        }))
    }

    fn get_wallet(&self, wallet_id: WalletId) -> Outcome {
        let state = self.records().load_state(&wallet_id)?;
        Ok(Response::Wallet {
            wallet: info(wallet_id, &state)?,
        })
    }

    // ----- signing -----

    fn sign_commit(
        &self,
        mut state: WalletState,
        actor: Actor,
        mut generation: Option<u64>,
        epoch: u64,
        message: &[u8],
        signers: &[u16],
    ) -> Outcome {
        let wallet_id = state.params.wallet_id;
        if let Some(stranger) = signers.iter().find(|s| !state.params.parties.contains(s)) {
            self.refused(
                &wallet_id,
                "sign",
                &actor.label(),
                message,
                "refused: signer outside the wallet",
            );
            return Err(Failure::bad(format!(
                "party {stranger} is not a party of wallet {wallet_id}"
            )));
        }
        if epoch != state.current_epoch && !state.retained_epochs.contains(&epoch) {
            self.refused(
                &wallet_id,
                "sign",
                &actor.label(),
                message,
                "refused: stale epoch",
            );
            return Err(Failure::bad(format!(
                "epoch {epoch} is not in use (current epoch {}): this share was refreshed away",
                state.current_epoch
            )));
        }
        // The quota first: a refused session must not count a signature or log one as allowed.
        let open = lock(&self.signs)?
            .values()
            .filter(|s| s.wallet_id == wallet_id && s.started.elapsed() < SIGN_TTL)
            .count();
        if open >= MAX_SIGNS_PER_WALLET {
            return Err(Failure::busy(format!(
                "wallet {wallet_id} has {open} signing sessions open: finish or let them expire"
            )));
        }
        let age = Duration::from_millis(now_ms().saturating_sub(state.epoch_started_ms));
        if let Some(limit) = self.policy.after
            && age > limit
        {
            self.refused(
                &wallet_id,
                "sign",
                &actor.label(),
                message,
                "refused: refresh required (age)",
            );
            return Err(Failure::bad(format!(
                "refresh required: the shares are {} s old, the policy allows {} s",
                age.as_secs(),
                limit.as_secs()
            )));
        }
        if let Some(limit) = self.policy.after_signatures {
            if state.signatures >= limit {
                self.refused(
                    &wallet_id,
                    "sign",
                    &actor.label(),
                    message,
                    "refused: refresh required (signatures)",
                );
                return Err(Failure::bad(format!(
                    "refresh required: {} signatures in this epoch, the policy allows {limit}",
                    state.signatures
                )));
            }
            let _guard = self.writer(&wallet_id)?;
            // Re-read under the lock: a concurrent signature's count must not be lost, and a
            // suspension or revocation that landed meanwhile must stop this one.
            state = self.records().load_state(&wallet_id)?;
            if !actor.still_authorized(&state)
                || (epoch != state.current_epoch && !state.retained_epochs.contains(&epoch))
            {
                return Err(Failure::denied(
                    "the key or epoch of this request is no longer valid (a recovery or \
                     refresh landed meanwhile)",
                ));
            }
            if state.signatures >= limit {
                return Err(Failure::bad(format!(
                    "refresh required: {} signatures in this epoch, the policy allows {limit}",
                    state.signatures
                )));
            }
            state.signatures += 1;
            self.records().save_state(&wallet_id, &state)?;
            // Our own write: the state we just saved is the one to compare against.
            generation = self.records().state_generation(&wallet_id)?;
        }
        let share = self.records().load_share(&wallet_id, state.party, epoch)?;
        let key_package = key_package(&share)?;
        let (session, commitments) = SignerSession::<Suite>::commit(
            &key_package,
            state.party,
            message,
            signers,
            &mut rand_core::OsRng,
        )?;
        self.log(&wallet_id, "sign", &actor.label(), message, "allowed")?;
        let session_id = random::<16>()?;
        let mut signs = lock(&self.signs)?;
        signs.retain(|_, s| s.started.elapsed() < SIGN_TTL);
        // A quota per wallet; the table as a whole evicts its oldest session (nonces in memory
        // only: an evicted session's commitments are simply never used).
        let open = signs.values().filter(|s| s.wallet_id == wallet_id).count();
        if open >= MAX_SIGNS_PER_WALLET {
            return Err(Failure::busy(format!(
                "wallet {wallet_id} has {open} signing sessions open: finish or let them expire"
            )));
        }
        evict_oldest(&mut signs, MAX_PENDING_SIGNS, |s| s.started);
        signs.insert(
            session_id,
            PendingSign {
                wallet_id,
                party: state.party,
                epoch,
                actor,
                generation,
                session,
                started: Instant::now(),
            },
        );
        Ok(Response::SignCommitted {
            session_id: ByteBuf::from(session_id.to_vec()),
            commitments: ByteBuf::from(commitments),
        })
    }

    fn sign_share(&self, session_id: &[u8], signing_package: &[u8]) -> Outcome {
        let id: [u8; 16] = session_id
            .try_into()
            .map_err(|_| Failure::bad("session id is not 16 bytes"))?;
        // Removed before use: whatever happens next, this session's nonces are never used again.
        let pending = lock(&self.signs)?
            .remove(&id)
            .filter(|s| s.started.elapsed() < SIGN_TTL)
            .ok_or_else(|| {
                Failure::new(
                    ErrorKind::NotFound,
                    "unknown, expired or already used signing session",
                )
            })?;
        // Checked again now, not only at SignCommit: a revocation, a recovery started, or a
        // refresh that retired the epoch since then stops this signature too. Any such change
        // moved the state's anchor; if it did not move, the state is the one authorized.
        if self.records().state_generation(&pending.wallet_id)? != pending.generation {
            self.recheck_signer(&pending)?;
        }
        let share = self
            .records()
            .load_share(&pending.wallet_id, pending.party, pending.epoch)?;
        let key_package = key_package(&share)?;
        let share = pending.session.sign(&key_package, signing_package)?;
        Ok(Response::SignatureShare {
            share: ByteBuf::from(share),
        })
    }

    /// Whether the key and epoch of a signing session are still valid in the current state.
    fn recheck_signer(&self, pending: &PendingSign) -> Result<(), Failure> {
        let state = self.records().load_state(&pending.wallet_id)?;
        if !pending.actor.still_authorized(&state) {
            return Err(Failure::denied(
                "the key that opened this signing session is no longer authorized (revoked or \
                 suspended by a recovery)",
            ));
        }
        if pending.epoch != state.current_epoch && !state.retained_epochs.contains(&pending.epoch) {
            return Err(Failure::bad(format!(
                "epoch {} is no longer in use: refreshed since the commitments",
                pending.epoch
            )));
        }
        Ok(())
    }

    // ----- refresh -----

    fn refresh_start(
        &self,
        owner: [u8; 16],
        state: WalletState,
        actor: &Actor,
        params: RefreshParams,
        me: u16,
        digest: &[u8],
    ) -> Outcome {
        let wallet_id = state.params.wallet_id;
        if actor.role == "pending-device" && state.pending_device_key.is_none() {
            return Err(Failure::denied("no recovery in progress"));
        }
        // From the current epoch only (an interrupted refresh is rolled forward, not redone from
        // an older epoch: that could commit a second refresh to one epoch).
        if params.from_epoch != state.current_epoch {
            return Err(Failure::bad(format!(
                "refresh from epoch {} refused: current epoch is {}",
                params.from_epoch, state.current_epoch
            )));
        }
        if me != state.party
            || params.parties != sorted(&state.params.parties)
            || params.min_signers != state.params.min_signers
        {
            return Err(Failure::bad(
                "a refresh must keep every party and the threshold of the wallet",
            ));
        }
        let (next, message) = refresh::start::<Suite>(&params, me, &mut rand_core::OsRng)?;
        // Into the table first (refused if another session's refresh is in flight), then logged.
        Self::put(
            &self.refreshes,
            wallet_id,
            "refresh",
            Pending {
                stage: RefreshStage::Round1(Box::new(next)),
                started: Instant::now(),
                recovery: actor.role == "pending-device",
                owner,
                key: actor.key.clone(),
            },
        )?;
        self.log(
            &wallet_id,
            "refresh-start",
            &actor.label(),
            digest,
            "allowed",
        )?;
        Ok(Response::RefreshRound1 { message })
    }

    fn refresh_round2(
        &self,
        owner: [u8; 16],
        wallet_id: WalletId,
        round1: &[Round1Message],
    ) -> Outcome {
        let p = Self::take(&self.refreshes, &wallet_id, "refresh", &owner)?;
        let RefreshStage::Round1(state) = p.stage else {
            return Err(Failure::bad("refresh is not waiting for round 1"));
        };
        let (next, packages) = state.handle_round1(round1, &mut rand_core::OsRng)?;
        Self::put(
            &self.refreshes,
            wallet_id,
            "refresh",
            Pending {
                stage: RefreshStage::Round2(Box::new(next)),
                ..p
            },
        )?;
        Ok(Response::RefreshRound2 { packages })
    }

    fn refresh_round3(
        &self,
        owner: [u8; 16],
        wallet_id: WalletId,
        packages: &[SealedPackage],
    ) -> Outcome {
        let p = Self::take(&self.refreshes, &wallet_id, "refresh", &owner)?;
        let RefreshStage::Round2(round2) = p.stage else {
            return Err(Failure::bad("refresh is not waiting for round 2"));
        };
        let state = self.records().load_state(&wallet_id)?;
        let from = round2.params().from_epoch;
        let old = self.records().load_share(&wallet_id, state.party, from)?;
        let old_kp = key_package(&old)?;
        let old_pkp = PublicKeyPackage::<Suite>::deserialize(&old.public_key_package)
            .map_err(|e| Failure::new(ErrorKind::Integrity, e.to_string()))?;
        let (next, confirmation) = round2.handle_round2(packages, &old_kp, &old_pkp)?;
        // Prepared, not yet in use: stored sealed with our confirmation, so the commit can come
        // after a restart or from another session (rolling a refresh forward that committed at
        // the other cosigner). A recovery may keep more than a device refresh.
        let prepared = PreparedRecord {
            share: ShareRecord {
                epoch: from + 1,
                key_package: ByteBuf::from(next.key_package().serialize().map_err(internal)?),
                public_key_package: ByteBuf::from(
                    next.public_key_package().serialize().map_err(internal)?,
                ),
            },
            from_epoch: from,
            confirmation: confirmation.clone(),
            recovery: p.recovery,
            started_by: ByteBuf::from(p.key.clone()),
        };
        {
            let _guard = self.writer(&wallet_id)?;
            self.records()
                .save_prepared(&wallet_id, state.party, &prepared)?;
        }
        Self::put(
            &self.refreshes,
            wallet_id,
            "refresh",
            Pending {
                stage: RefreshStage::Prepared,
                ..p
            },
        )?;
        Ok(Response::RefreshRound3 { confirmation })
    }

    /// Commits a prepared refresh: from the sealed prepared record that matches our confirmation
    /// among `confirmations`, so it works from any session and after a restart. Idempotent: the
    /// same confirmations again, once committed, answer the same success.
    fn refresh_commit(
        &self,
        owner: [u8; 16],
        state: WalletState,
        actor: &Actor,
        confirmations: &[Confirmation],
        provider_receipt: Option<&[u8]>,
        digest: &[u8],
    ) -> Outcome {
        let wallet_id = state.params.wallet_id;
        let me = state.party;
        let ours = confirmations
            .iter()
            .find(|c| c.from == me)
            .ok_or_else(|| Failure::bad(format!("no confirmation from party {me} (us)")))?;
        if confirmations_equal(&state.commit_confirmations, confirmations) {
            return Ok(Response::RefreshCommitted {
                wallet: info(wallet_id, &state)?,
            });
        }
        let prepared = self.find_prepared(&state, &ours.transcript_hash)?;
        refresh::check_commit(
            &sorted(&state.params.parties),
            me,
            &prepared.confirmation,
            confirmations,
        )?;
        // A recovery's refresh is committed by the recovering device only; a device refresh by
        // the device, or rolled forward by the recovering device (it only completes what every
        // party already computed and confirmed).
        let may = match (prepared.recovery, actor.role) {
            (true, role) => {
                role == "pending-device" && prepared.started_by.as_slice() == actor.key.as_slice()
            }
            (false, role) => role == "device" || role == "pending-device",
        };
        if !may {
            return Err(Failure::denied(
                "this refresh must be committed by the key of the recovery that started it",
            ));
        }
        drop(state);
        let new_epoch = prepared.share.epoch;
        let _guard = self.writer(&wallet_id)?;
        let mut state = self.records().load_state(&wallet_id)?;
        if confirmations_equal(&state.commit_confirmations, confirmations) {
            return Ok(Response::RefreshCommitted {
                wallet: info(wallet_id, &state)?,
            });
        }
        // Strictly forward: one commit per epoch, from the current one.
        if prepared.from_epoch != state.current_epoch {
            return Err(Failure::bad(format!(
                "refresh from epoch {} can no longer commit: current epoch is {}",
                prepared.from_epoch, state.current_epoch
            )));
        }
        let receipt_digest = commit_receipt_digest(
            &wallet_id,
            new_epoch,
            &prepared.confirmation.transcript_hash,
            &prepared.confirmation.public_key_package_hash,
        );
        // The recovery cosigner follows the provider: it commits only the refresh the provider
        // committed to this epoch, so the two never hold shares of different refreshes.
        if let Some(provider_key) = &state.provider_key {
            let receipt = provider_receipt.ok_or_else(|| {
                Failure::denied("the provider's receipt for this commit is missing")
            })?;
            verify_digest(provider_key, &receipt_digest, receipt).map_err(|_| {
                Failure::denied("the provider's receipt is not for this refresh of this wallet")
            })?;
        }
        // Re-checked under the lock: a recovery started or restarted with another key, or a
        // suspension, that landed since the check above.
        if prepared.recovery
            && state.pending_device_key.as_ref().map(|k| k.as_slice())
                != Some(prepared.started_by.as_slice())
        {
            return Err(Failure::denied(
                "the recovery that started this refresh is no longer the one in progress",
            ));
        }
        if actor.role == "device" && !actor.still_authorized(&state) {
            return Err(Failure::denied("this device key is suspended or revoked"));
        }
        self.records().save_share(&wallet_id, me, &prepared.share)?;
        // Keep every older epoch still stored until RefreshFinalize: a party that did not commit
        // yet still signs with it.
        let mut retained: Vec<u64> = state
            .retained_epochs
            .iter()
            .copied()
            .filter(|e| *e < new_epoch)
            .collect();
        if state.current_epoch < new_epoch && !retained.contains(&state.current_epoch) {
            retained.push(state.current_epoch);
        }
        retained.sort_unstable();
        state.retained_epochs = retained;
        state.current_epoch = new_epoch;
        state.prepared_epoch = None;
        state.public_key_package = prepared.share.public_key_package.clone();
        state.epoch_started_ms = now_ms();
        state.signatures = 0;
        state.commit_confirmations = confirmations.to_vec();
        state.commit_receipt = if me == party::PROVIDER {
            let signature = self.audit.sign_digest(&receipt_digest).map_err(internal)?;
            Some(ByteBuf::from(signature.to_vec()))
        } else {
            None
        };
        let mut action = "refresh";
        if prepared.recovery {
            // The recovery completes: the new device's key replaces the old one, which is revoked.
            state.pending_device_key = None;
            let old = std::mem::replace(&mut state.device_key, prepared.started_by.clone());
            state.revoked_keys.push(old);
            action = "recover";
        }
        self.records().save_state(&wallet_id, &state)?;
        // Committed. The other prepared refreshes to this epoch can never commit now.
        let _ = self.records().delete_prepared(&wallet_id, new_epoch);
        lock(&self.refreshes)?.remove(&wallet_id);
        lock(&self.committed_by)?.insert(wallet_id, (owner, new_epoch));
        self.log(
            &wallet_id,
            action,
            &actor.label(),
            digest,
            &format!("allowed: epoch {new_epoch}"),
        )?;
        Ok(Response::RefreshCommitted {
            wallet: info(wallet_id, &state)?,
        })
    }

    /// The prepared refresh of this wallet whose transcript hashed to `transcript_hash`: to the
    /// epoch after the current one, or after a retained one (a refresh redone from it).
    fn find_prepared(
        &self,
        state: &WalletState,
        transcript_hash: &[u8],
    ) -> Result<PreparedRecord, Failure> {
        let wallet_id = state.params.wallet_id;
        if let Some(p) = self.records().load_prepared(
            &wallet_id,
            state.party,
            state.current_epoch.saturating_add(1),
            transcript_hash,
        )? {
            return Ok(p);
        }
        Err(Failure::new(
            ErrorKind::NotFound,
            format!("no prepared refresh of wallet {wallet_id} matches these confirmations"),
        ))
    }

    fn refresh_finalize(&self, owner: [u8; 16], wallet_id: WalletId, epoch: u64) -> Outcome {
        if lock(&self.committed_by)?.get(&wallet_id) != Some(&(owner, epoch)) {
            return Err(Failure::denied(
                "only the session that committed this epoch may finalize it",
            ));
        }
        let _guard = self.writer(&wallet_id)?;
        let mut state = self.records().load_state(&wallet_id)?;
        if epoch != state.current_epoch {
            return Err(Failure::bad(format!(
                "cannot finalize epoch {epoch}: current epoch is {}",
                state.current_epoch
            )));
        }
        // The state first: once it no longer lists an epoch, its share is never read again.
        let old = std::mem::take(&mut state.retained_epochs);
        self.records().save_state(&wallet_id, &state)?;
        for e in old {
            self.records().delete_share(&wallet_id, e)?;
        }
        Ok(Response::Done)
    }

    // ----- recovery -----

    /// `RecoverStart` under the recovery credential: registers the new device key as pending,
    /// which at once suspends the registered device key, and drops the device's ceremonies and
    /// signing sessions in flight. Idempotent: the same new key again changes nothing, and once
    /// the recovery completed (the key is the device key) the answer says so.
    fn recover_start(
        &self,
        state: WalletState,
        actor: &Actor,
        new_device_key: &[u8],
        digest: &[u8],
    ) -> Outcome {
        let wallet_id = state.params.wallet_id;
        drop(state);
        let key = normalise_public_key(new_device_key)?;
        let _guard = self.writer(&wallet_id)?;
        let mut state = self.records().load_state(&wallet_id)?;
        if state.device_key.as_slice() == key && state.pending_device_key.is_none() {
            return Ok(Response::RecoverApproved {
                epoch: state.current_epoch,
                completed: true,
            });
        }
        if key == state.recovery_key.as_slice()
            || key == state.device_key.as_slice()
            || state.revoked_keys.iter().any(|k| k.as_slice() == key)
        {
            return Err(Failure::bad("the new device key must be a fresh key"));
        }
        if state.pending_device_key.as_ref().map(|k| k.as_slice()) != Some(key.as_slice()) {
            state.pending_device_key = Some(ByteBuf::from(key.clone()));
            self.records().save_state(&wallet_id, &state)?;
            self.log(
                &wallet_id,
                "recover-start",
                &actor.label(),
                digest,
                &format!("allowed: new device {}", hex::encode(&key)),
            )?;
        }
        self.preempt(&wallet_id, &key)?;
        Ok(Response::RecoverApproved {
            epoch: state.current_epoch,
            completed: false,
        })
    }

    /// Drops what is in flight for `wallet_id` but not the recovery of `recovering` (the new
    /// device's key): the device's refresh, repairs for another key, every signing session.
    fn preempt(&self, wallet_id: &WalletId, recovering: &[u8]) -> Result<(), Failure> {
        fn drop_unless_recovering<T>(
            map: &Mutex<HashMap<WalletId, Pending<T>>>,
            wallet_id: &WalletId,
            recovering: &[u8],
        ) -> Result<(), Failure> {
            let mut map = lock(map)?;
            if map
                .get(wallet_id)
                .is_some_and(|p| !(p.recovery && p.key.as_slice() == recovering))
            {
                map.remove(wallet_id);
            }
            Ok(())
        }
        drop_unless_recovering(&self.refreshes, wallet_id, recovering)?;
        drop_unless_recovering(&self.repairs, wallet_id, recovering)?;
        lock(&self.signs)?.retain(|_, s| s.wallet_id != *wallet_id);
        lock(&self.psbts)?.retain(|_, s| !s.is_for(wallet_id));
        Ok(())
    }

    /// `RecoverCancel` under the recovery credential: the pending key is dropped and the
    /// registered device key acts again (the owner found the phone).
    fn recover_cancel(&self, wallet_id: &WalletId, actor: &Actor, digest: &[u8]) -> Outcome {
        let _guard = self.writer(wallet_id)?;
        let mut state = self.records().load_state(wallet_id)?;
        if let Some(pending) = state.pending_device_key.take() {
            self.records().save_state(wallet_id, &state)?;
            self.preempt(wallet_id, &[])?;
            self.log(
                wallet_id,
                "recover-cancel",
                &actor.label(),
                digest,
                &format!("allowed: pending device {} dropped", hex::encode(&pending)),
            )?;
        }
        Ok(Response::Done)
    }

    fn repair_start(
        &self,
        owner: [u8; 16],
        state: WalletState,
        actor: &Actor,
        params: RepairParams,
        me: u16,
        digest: &[u8],
    ) -> Outcome {
        let wallet_id = state.params.wallet_id;
        if params.epoch != state.current_epoch
            || me != state.party
            || params.ciphersuite != state.params.ciphersuite
        {
            return Err(Failure::bad(
                "repair parameters do not match this wallet's current epoch",
            ));
        }
        let share = self
            .records()
            .load_share(&wallet_id, state.party, state.current_epoch)?;
        let kp = key_package(&share)?;
        let pkp = PublicKeyPackage::<Suite>::deserialize(&share.public_key_package)
            .map_err(|e| Failure::new(ErrorKind::Integrity, e.to_string()))?;
        let (next, hpke_public_key) =
            repair::helper_start::<Suite>(&params, me, &kp, &pkp, &mut rand_core::OsRng)?;
        self.log(&wallet_id, "repair", &actor.label(), digest, "allowed")?;
        Self::put(
            &self.repairs,
            wallet_id,
            "repair",
            Pending {
                stage: RepairStage::Started(Box::new(next)),
                started: Instant::now(),
                recovery: true,
                owner,
                key: actor.key.clone(),
            },
        )?;
        Ok(Response::RepairKey {
            hpke_public_key: ByteBuf::from(hpke_public_key),
        })
    }

    fn repair_deltas(
        &self,
        owner: [u8; 16],
        wallet_id: WalletId,
        helper_keys: &[(u16, ByteBuf)],
    ) -> Outcome {
        let p = Self::take(&self.repairs, &wallet_id, "repair", &owner)?;
        let RepairStage::Started(helper) = p.stage else {
            return Err(Failure::bad("repair is not waiting for helper keys"));
        };
        let state = self.records().load_state(&wallet_id)?;
        let share = self
            .records()
            .load_share(&wallet_id, state.party, state.current_epoch)?;
        let kp = key_package(&share)?;
        let keys: BTreeMap<u16, Vec<u8>> =
            helper_keys.iter().map(|(p, k)| (*p, k.to_vec())).collect();
        if keys.len() != helper_keys.len() {
            return Err(Failure::bad("a helper appears twice"));
        }
        let (next, deltas) = helper.deltas(&kp, &keys, &mut rand_core::OsRng)?;
        Self::put(
            &self.repairs,
            wallet_id,
            "repair",
            Pending {
                stage: RepairStage::Deltas(Box::new(next)),
                ..p
            },
        )?;
        Ok(Response::RepairDeltas { deltas })
    }

    fn repair_sigma(
        &self,
        owner: [u8; 16],
        wallet_id: WalletId,
        deltas: &[SealedPackage],
        participant_key: &[u8],
    ) -> Outcome {
        let p = Self::take(&self.repairs, &wallet_id, "repair", &owner)?;
        let RepairStage::Deltas(helper) = p.stage else {
            return Err(Failure::bad("repair is not waiting for deltas"));
        };
        let sigma = helper.sigma(deltas, participant_key, &mut rand_core::OsRng)?;
        Ok(Response::RepairSigma { sigma })
    }
}

/// Whether two confirmation lists hold the same confirmations (in any order); never for empty.
fn confirmations_equal(a: &[Confirmation], b: &[Confirmation]) -> bool {
    if a.is_empty() || a.len() != b.len() {
        return false;
    }
    b.iter().all(|c| a.contains(c))
}

/// Makes room for one more entry: removes the oldest while `map` holds `max` or more.
fn evict_oldest<K: Clone + Eq + std::hash::Hash, V>(
    map: &mut HashMap<K, V>,
    max: usize,
    started: impl Fn(&V) -> Instant,
) {
    while map.len() >= max.max(1) {
        let Some(oldest) = map
            .iter()
            .min_by_key(|(_, v)| started(v))
            .map(|(k, _)| k.clone())
        else {
            return;
        };
        map.remove(&oldest);
    }
}

fn sorted(v: &[u16]) -> Vec<u16> {
    let mut v = v.to_vec();
    v.sort_unstable();
    v
}

/// The x-only group key of a public key package: the Taproot output key Q (BIP-341; docs/architecture.md).
fn output_key(pkp: &PublicKeyPackage<Suite>) -> Result<[u8; 32], Failure> {
    let sec1 = pkp.verifying_key().serialize().map_err(internal)?;
    sec1.get(1..33)
        .and_then(|s| <[u8; 32]>::try_from(s).ok())
        .ok_or_else(|| internal("group key is not 33 bytes"))
}

fn key_package(share: &ShareRecord) -> Result<KeyPackage<Suite>, Failure> {
    KeyPackage::<Suite>::deserialize(&share.key_package)
        .map_err(|e| Failure::new(ErrorKind::Integrity, format!("stored key package: {e}")))
}

fn info(wallet_id: WalletId, state: &WalletState) -> Result<WalletInfo, Failure> {
    let pkp = PublicKeyPackage::<Suite>::deserialize(&state.public_key_package).map_err(|e| {
        Failure::new(
            ErrorKind::Integrity,
            format!("stored public key package: {e}"),
        )
    })?;
    let group_public_key = pkp.verifying_key().serialize().map_err(internal)?;
    Ok(WalletInfo {
        wallet_id,
        ciphersuite: state.params.ciphersuite.clone(),
        party: state.party,
        min_signers: state.params.min_signers,
        parties: state.params.parties.clone(),
        epoch: state.current_epoch,
        group_public_key: ByteBuf::from(group_public_key),
        public_key_package: state.public_key_package.clone(),
        confirmations: state.commit_confirmations.clone(),
        receipt: state.commit_receipt.clone(),
        provider_key: state.provider_key.clone(),
    })
}
