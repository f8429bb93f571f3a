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
mod authorized;
mod custody;
mod dao;
mod dkg;
mod eth;
mod failure;
mod keys;
pub mod partition;
mod peer;
mod psbt;
pub mod records;
mod recover;
mod refresh;
mod repair;
mod session;
mod sign;
mod sign_now;
mod table;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cosigner_attestation::Attester;
use cosigner_kms::Sealer;
use cosigner_protocol::id::Epoch;
use cosigner_protocol::id::PartyId;
use cosigner_protocol::wire::{ErrorKind, Request, Response, WalletId, WalletInfo};
use frost_core::keys::{KeyPackage, PublicKeyPackage};
use serde_bytes::ByteBuf;

use self::anchor::Anchor;
use self::audit::AuditLog;
use self::dkg::DkgStage;
use self::records::{ShareRecord, WalletState};
use self::refresh::RefreshStage;
use self::repair::RepairStage;
use self::table::{ConnectionId, Sessions, Table};
use crate::store::BlobStore;

pub use self::failure::Failure;
use self::failure::{Outcome, internal, lock};

pub use self::session::SessionState;

/// The ciphersuite the service runs: BIP-340 signatures valid for Taproot key-path spends.
pub type Suite = frost_secp256k1_tr::Secp256K1Sha256TR;

/// When the provider demands a refresh before it signs again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RefreshPolicy {
    /// Demand a refresh once the current epoch is this old.
    pub after: Option<Duration>,
    /// Demand a refresh after this many signatures in the current epoch.
    pub after_signatures: Option<u64>,
}

/// The service.
pub struct Service {
    attester: Box<dyn Attester>,
    sealer: Box<dyn Sealer>,
    store: Box<dyn BlobStore>,
    anchor: Box<dyn Anchor>,
    /// Anchored state already unsealed (`records::Opened`).
    opened: records::Opened,
    audit: AuditLog,
    policy: RefreshPolicy,
    dkgs: Table<DkgStage>,
    refreshes: Table<RefreshStage>,
    repairs: Table<RepairStage>,
    signs: Sessions<sign::PendingSign>,
    /// One writer per wallet: every state change of a wallet holds its stripe, and with other
    /// instances also the stripe's lock file (`custody::Service::writer`).
    writers: Vec<Mutex<Option<std::fs::File>>>,
    /// Refusals recorded per wallet in the current window (`custody`).
    refusals: custody::Refusals,
    /// Which session committed each wallet's latest refresh: only it may finalize (delete the
    /// older epochs), so another client cannot cut a refresh short.
    committed_by: Mutex<HashMap<WalletId, (ConnectionId, Epoch)>>,
    /// Unsealed key packages of busy wallets, bounded (`keys`).
    keys: keys::KeyCache,
    /// DAO ceremonies in progress, by mailbox topic.
    dao: Mutex<dao::Ceremonies>,
    /// The epoch each DAO wallet refreshed to since this enclave started: a signing request
    /// evaluated at an older epoch no longer signs (checked in memory on every delivery; after a
    /// restart every request is founded again at the epoch in force).
    dao_epochs: Mutex<HashMap<WalletId, Epoch>>,
    /// Personal wallets' PSBT signing sessions (nonces in memory only), by session id.
    psbts: Sessions<psbt::PsbtSession>,
    /// Ethereum signing sessions (DKLs23 state in memory only), by session id.
    eth_signs: Sessions<eth::PendingEth>,
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

/// Which of several enclave instances on one token and store this service is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Instance {
    /// Its number (its own audit chain; 0 when alone).
    pub id: u32,
    /// Whether other instances write the same anchors (`[anchors] shared`).
    pub shared_anchors: bool,
    /// With other instances: the lock files every instance takes around a wallet's
    /// read-modify-write, `PREFIX.wNN` for stripe NN (`[anchors] lock_file`). `None`: alone.
    pub writer_locks: Option<std::path::PathBuf>,
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
        Self::new_instance(attester, sealer, store, anchor, policy, Instance::default())
    }

    /// [`Service::new`] as one of several instances sharing a token and a store
    /// (docs/architecture.md, "Several instances").
    pub fn new_instance(
        attester: Box<dyn Attester>,
        sealer: Box<dyn Sealer>,
        store: Box<dyn BlobStore>,
        anchor: Box<dyn Anchor>,
        policy: RefreshPolicy,
        instance: Instance,
    ) -> Result<Self, String> {
        // Alone, this enclave is the only writer of its anchors and may remember them; with
        // other instances writing the same anchors a remembered value can be stale, so every
        // read goes to the anchor (the partition layer still reuses trees whose root is unchanged).
        let anchor: Box<dyn Anchor> = if instance.shared_anchors {
            anchor
        } else {
            Box::new(anchor::CachedAnchor::new(anchor))
        };
        let audit = AuditLog::open_instance(
            sealer.as_ref(),
            store.as_ref(),
            anchor.as_ref(),
            instance.id,
        )?;
        Ok(Self {
            attester,
            sealer,
            store,
            anchor,
            opened: records::Opened::default(),
            audit,
            policy,
            dkgs: Table::new("DKG"),
            refreshes: Table::new("refresh"),
            repairs: Table::new("repair"),
            signs: Sessions::new(),
            writers: custody::writer_stripes(instance.writer_locks.as_deref())?,
            refusals: Mutex::new(HashMap::new()),
            committed_by: Mutex::new(HashMap::new()),
            keys: keys::KeyCache::default(),
            dao: Mutex::new(HashMap::new()),
            dao_epochs: Mutex::new(HashMap::new()),
            psbts: Sessions::new(),
            // Each holds an unsealed threshold ECDSA share (~100 KB): at most ~50 MB in all.
            eth_signs: Sessions::with_capacity(512),
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

    /// A request signed by a wallet's key: under a challenge, or a commitment's id.
    fn signed_request(&self, session: &mut SessionState, request: Request) -> Outcome {
        match request {
            Request::Authorized {
                wallet_id,
                role,
                signature,
                request,
            } => self.authorized(session, wallet_id, role, &signature, &request),
            Request::Precommitted {
                wallet_id,
                role,
                precommitment,
                signature,
                request,
            } => self.precommitted(
                session,
                wallet_id,
                role,
                (&precommitment, &signature),
                &request,
            ),
            other => Err(internal(format!(
                "{} is not a signed request",
                other.name()
            ))),
        }
    }

    /// Answers one request of a session, and counts it (`crate::telemetry`: kind, outcome,
    /// latency, signatures, ceremonies; never its contents).
    pub fn handle(&self, session: &mut SessionState, request: Request) -> Response {
        let kind = crate::telemetry::request_kind(&request);
        let started = std::time::Instant::now();
        let response = self.answer(session, request);
        crate::telemetry::request_done(kind, &response, started.elapsed());
        response
    }

    fn answer(&self, session: &mut SessionState, request: Request) -> Response {
        let outcome = match request {
            Request::Attest { nonce } => self.attest(session, &nonce),
            other if !session.attested => Err(Failure::bad(format!(
                "{} before Attest: the first request of a session must be Attest",
                other.name()
            ))),
            Request::Challenge { wallet_id } => self.challenge(session, wallet_id),
            signed @ (Request::Authorized { .. } | Request::Precommitted { .. }) => {
                self.signed_request(session, signed)
            }
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
                self.dkg_relay(session.id, wallet_id, |x| {
                    let packages = dkg::round1_relayed(x, &round1)?;
                    Ok(Response::DkgRound2 { packages })
                })
            }
            Request::DkgRound3 {
                wallet_id,
                packages,
            } => self.dkg_relay(session.id, wallet_id, |x| {
                let confirmation = dkg::round2_relayed(x, &packages)?;
                let signature = Some(self.sign_confirmation(&wallet_id, &confirmation)?);
                Ok(Response::DkgRound3 {
                    confirmation,
                    signature,
                })
            }),
            Request::EcdsaDkgHellos { wallet_id, hellos } => {
                self.ecdsa_dkg_relay(session.id, wallet_id, dkg::EcdsaRelayed::Hellos(&hellos))
            }
            Request::EcdsaDkgRound {
                wallet_id,
                messages,
            } => self.ecdsa_dkg_relay(session.id, wallet_id, dkg::EcdsaRelayed::Round(&messages)),
            Request::EcdsaRefreshHellos { wallet_id, hellos } => {
                self.ecdsa_refresh_relay(session.id, wallet_id, dkg::EcdsaRelayed::Hellos(&hellos))
            }
            Request::EcdsaRefreshRound {
                wallet_id,
                messages,
            } => {
                self.ecdsa_refresh_relay(session.id, wallet_id, dkg::EcdsaRelayed::Round(&messages))
            }
            Request::DkgConfirm {
                wallet_id,
                confirmations,
                registration,
                confirmation_signatures,
            } => self.dkg_confirm(
                wallet_id,
                &confirmations,
                &registration,
                &confirmation_signatures,
            ),
            Request::SignShare {
                session_id,
                signing_package,
            } => self.sign_share(&session_id, &signing_package),
            Request::SignPsbtShare {
                session_id,
                signing_packages,
            } => self.sign_psbt_share(session.id, &session_id, &signing_packages),
            Request::EthSignFinish {
                session_id,
                round2,
                round3,
            } => self.eth_sign_finish(session.id, &session_id, &round2, &round3),
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
            Request::Mailbox {
                topic,
                envelopes,
                from,
            } => self.mailbox(&topic, &envelopes, from),
            Request::DaoPolicy { wallet_id } => self.dao_policy_in_force(wallet_id),
            other => Err(Failure::bad(format!(
                "{} must be sent inside Authorized",
                other.name()
            ))),
        };
        outcome.unwrap_or_else(Failure::into_response)
    }

    fn get_wallet(&self, wallet_id: WalletId) -> Outcome {
        let state = self.records().load_state(&wallet_id)?;
        Ok(Response::Wallet {
            wallet: info(wallet_id, &state)?,
        })
    }
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

fn sorted(v: &[PartyId]) -> Vec<PartyId> {
    let mut v = v.to_vec();
    v.sort_unstable();
    v
}

/// The Bitcoin keys of wallet `wallet_id` with public key package `pkp`: its own output key and
/// the children of its extended key (docs/addresses.md), as PSBTs spend and pay them.
fn own_keys(
    wallet_id: &WalletId,
    pkp: &PublicKeyPackage<Suite>,
) -> Result<cosigner_protocol::psbt::OwnKeys, Failure> {
    let group_key = pkp.verifying_key().serialize().map_err(internal)?;
    cosigner_protocol::psbt::OwnKeys::of_wallet(wallet_id, &group_key)
        .map_err(|e| internal(format!("the wallet's keys: {e}")))
}

fn key_package(share: &ShareRecord) -> Result<KeyPackage<Suite>, Failure> {
    KeyPackage::<Suite>::deserialize(&share.key_package)
        .map_err(|e| Failure::new(ErrorKind::Integrity, format!("stored key package: {e}")))
}

/// A stored public key package (a record's or a wallet state's), decoded.
fn public_key_package(bytes: &[u8]) -> Result<PublicKeyPackage<Suite>, Failure> {
    PublicKeyPackage::<Suite>::deserialize(bytes).map_err(|e| {
        Failure::new(
            ErrorKind::Integrity,
            format!("stored public key package: {e}"),
        )
    })
}

/// A stored share's key package and public key package, decoded.
fn share_keys(
    share: &ShareRecord,
) -> Result<(KeyPackage<Suite>, PublicKeyPackage<Suite>), Failure> {
    Ok((
        key_package(share)?,
        public_key_package(&share.public_key_package)?,
    ))
}

/// Whether `state` is a threshold ECDSA (Ethereum) wallet's.
fn is_ecdsa(state: &WalletState) -> bool {
    state.params.ciphersuite == cosigner_protocol::wire::SUITE_SECP256K1_ECDSA
}

/// A wallet's group key: FROST's SEC1 compressed key, or the ECDSA account key (uncompressed).
fn group_public_key(state: &WalletState) -> Result<Vec<u8>, Failure> {
    if is_ecdsa(state) {
        let public = cosigner_protocol::ecdsa::EcdsaPublic::from_bytes(&state.public_key_package)
            .map_err(|e| {
            Failure::new(ErrorKind::Integrity, format!("stored public key: {e}"))
        })?;
        return Ok(public.public_key.into_vec());
    }
    let pkp = public_key_package(&state.public_key_package)?;
    pkp.verifying_key().serialize().map_err(internal)
}

fn info(wallet_id: WalletId, state: &WalletState) -> Result<WalletInfo, Failure> {
    let group_public_key = group_public_key(state)?;
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
        recovery_cosigner_key: state.recovery_cosigner_key.clone(),
    })
}
