//! The enclave's brain: (session, request) → response.
//!
//! No sockets here: the attester, the sealer, the blob store and the clock come in as traits, so
//! whole ceremonies run in one test process. Shares are unsealed on use and dropped (zeroized) right
//! after; signing nonces live only in [`SignerSession`]s in memory and are consumed once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cosigner_attestation::{AttestRequest, Attester};
use cosigner_kms::{SealContext, Sealer};
use cosigner_protocol::binding::{EXPORTER_LEN, NONCE_LEN};
use cosigner_protocol::dkg::{self, DkgRound1, DkgRound2, DkgRound3};
use cosigner_protocol::sign::SignerSession;
use cosigner_protocol::wire::{
    DkgParams, ErrorKind, Request, Response, SUITE_SECP256K1_TR, WalletId, WalletInfo, WireError,
};
use frost_core::keys::{KeyPackage, PublicKeyPackage};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use zeroize::Zeroize;

use crate::store::BlobStore;

/// The ciphersuite the service runs: BIP-340 signatures valid for Taproot key-path spends.
pub type Suite = frost_secp256k1_tr::Secp256K1Sha256TR;

/// How long an unfinished DKG is kept.
const DKG_TTL: Duration = Duration::from_secs(600);
/// How long a signing session may wait for its round 2.
const SIGN_TTL: Duration = Duration::from_secs(300);
/// Bounds on pending ceremonies, so a client cannot exhaust memory.
const MAX_PENDING_DKGS: usize = 1024;
const MAX_PENDING_SIGNS: usize = 65_536;
/// Purpose bound into the AAD of a sealed wallet record.
const RECORD_PURPOSE: &str = "cosigner-wallet-record";

/// What a client connection has established.
#[derive(Debug)]
pub struct SessionState {
    binding: [u8; EXPORTER_LEN],
    attested: bool,
}

impl SessionState {
    /// A new session whose TLS channel binding is `binding`.
    pub fn new(binding: [u8; EXPORTER_LEN]) -> Self {
        Self {
            binding,
            attested: false,
        }
    }
}

enum DkgStage {
    Round1(Box<DkgRound1<Suite>>),
    Round2(Box<DkgRound2<Suite>>),
    Round3(Box<DkgRound3<Suite>>),
}

struct PendingDkg {
    stage: DkgStage,
    started: Instant,
}

struct PendingSign {
    wallet_id: WalletId,
    session: SignerSession<Suite>,
    started: Instant,
}

/// A wallet's state as sealed for storage. Only ever written sealed.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WalletRecord {
    params: DkgParams,
    party: u16,
    epoch: u64,
    key_package: ByteBuf,
    public_key_package: ByteBuf,
}

impl Drop for WalletRecord {
    fn drop(&mut self) {
        self.key_package.zeroize();
    }
}

/// A failure, classified for the client.
#[derive(Debug)]
struct Failure(WireError);

impl Failure {
    fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self(WireError::new(kind, message))
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

/// The service.
pub struct Service {
    attester: Box<dyn Attester>,
    sealer: Box<dyn Sealer>,
    store: Box<dyn BlobStore>,
    dkgs: Mutex<HashMap<WalletId, PendingDkg>>,
    signs: Mutex<HashMap<[u8; 16], PendingSign>>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("attester", &self.attester.kind())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> Result<std::sync::MutexGuard<'_, T>, Failure> {
    m.lock()
        .map_err(|_| Failure::new(ErrorKind::Internal, "internal lock poisoned"))
}

fn random_id() -> Result<[u8; 16], Failure> {
    use rand_core::RngCore;
    let mut id = [0u8; 16];
    rand_core::OsRng
        .try_fill_bytes(&mut id)
        .map_err(|e| Failure::new(ErrorKind::Internal, e.to_string()))?;
    Ok(id)
}

/// Store key of a wallet's sealed record: `wallet/<id>/p<party>/e<epoch>`. The key is only a
/// hint: the AAD the record is sealed with binds the same three values.
fn record_key(wallet_id: &WalletId, party: u16, epoch: u64) -> String {
    format!("wallet/{}/p{party}/e{epoch:020}", wallet_id.to_hex())
}

/// Parses `p<party>/e<epoch>` after a wallet's prefix.
fn parse_record_key(rest: &str) -> Option<(u16, u64)> {
    let (party, epoch) = rest.split_once('/')?;
    Some((
        party.strip_prefix('p')?.parse().ok()?,
        epoch.strip_prefix('e')?.parse().ok()?,
    ))
}

impl Service {
    /// A service over these backends.
    pub fn new(
        attester: Box<dyn Attester>,
        sealer: Box<dyn Sealer>,
        store: Box<dyn BlobStore>,
    ) -> Self {
        Self {
            attester,
            sealer,
            store,
            dkgs: Mutex::new(HashMap::new()),
            signs: Mutex::new(HashMap::new()),
        }
    }

    /// Answers one request of a session.
    pub fn handle(&self, session: &mut SessionState, request: Request) -> Response {
        let outcome = if let Request::Attest { nonce } = request {
            self.attest(session, &nonce)
        } else if !session.attested {
            Err(Failure::new(
                ErrorKind::BadRequest,
                format!(
                    "{} before Attest: the first request of a session must be Attest",
                    request.name()
                ),
            ))
        } else {
            match request {
                Request::DkgStart { params, me } => self.dkg_start(params, me),
                Request::DkgRound2 { wallet_id, round1 } => self.dkg_round2(wallet_id, &round1),
                Request::DkgRound3 {
                    wallet_id,
                    packages,
                } => self.dkg_round3(wallet_id, &packages),
                Request::DkgConfirm {
                    wallet_id,
                    confirmations,
                } => self.dkg_confirm(wallet_id, &confirmations),
                Request::SignCommit {
                    wallet_id,
                    message,
                    signers,
                } => self.sign_commit(wallet_id, &message, &signers),
                Request::SignShare {
                    session_id,
                    signing_package,
                } => self.sign_share(&session_id, &signing_package),
                Request::GetWallet { wallet_id } => self
                    .load(wallet_id)
                    .and_then(|r| info(wallet_id, &r))
                    .map(|wallet| Response::Wallet { wallet }),
                other => Err(Failure::new(
                    ErrorKind::BadRequest,
                    format!("{} is not served", other.name()),
                )),
            }
        };
        outcome.unwrap_or_else(|f| Response::Error(f.0))
    }

    fn attest(&self, session: &mut SessionState, nonce: &[u8]) -> Outcome {
        if nonce.len() != NONCE_LEN {
            return Err(Failure::new(
                ErrorKind::BadRequest,
                format!("nonce is {} bytes, expected {NONCE_LEN}", nonce.len()),
            ));
        }
        let document = self
            .attester
            .attest(&AttestRequest {
                nonce: Some(nonce.to_vec()),
                user_data: Some(session.binding.to_vec()),
                public_key: None,
            })
            .map_err(|e| Failure::new(ErrorKind::Internal, format!("attestation: {e}")))?;
        session.attested = true;
        Ok(Response::Attested {
            document: ByteBuf::from(document),
        })
    }

    fn wallet_exists(&self, wallet_id: &WalletId) -> Result<bool, Failure> {
        let prefix = format!("wallet/{}/", wallet_id.to_hex());
        let keys = self
            .store
            .list(&prefix)
            .map_err(|e| Failure::new(ErrorKind::Internal, e.to_string()))?;
        Ok(!keys.is_empty())
    }

    fn dkg_start(&self, params: DkgParams, me: u16) -> Outcome {
        if params.ciphersuite != SUITE_SECP256K1_TR {
            return Err(Failure::new(
                ErrorKind::BadRequest,
                format!("ciphersuite {:?} is not served", params.ciphersuite),
            ));
        }
        let wallet_id = params.wallet_id;
        if self.wallet_exists(&wallet_id)? {
            return Err(Failure::new(
                ErrorKind::BadRequest,
                format!("wallet {wallet_id} already exists"),
            ));
        }
        let mut dkgs = lock(&self.dkgs)?;
        dkgs.retain(|_, p| p.started.elapsed() < DKG_TTL);
        if dkgs.contains_key(&wallet_id) {
            return Err(Failure::new(
                ErrorKind::BadRequest,
                format!("a DKG for wallet {wallet_id} is already running"),
            ));
        }
        if dkgs.len() >= MAX_PENDING_DKGS {
            return Err(Failure::new(
                ErrorKind::Internal,
                "too many DKGs in progress",
            ));
        }
        let (state, message) = dkg::start::<Suite>(&params, me, &mut rand_core::OsRng)?;
        dkgs.insert(
            wallet_id,
            PendingDkg {
                stage: DkgStage::Round1(Box::new(state)),
                started: Instant::now(),
            },
        );
        Ok(Response::DkgRound1 { message })
    }

    /// Takes the pending DKG out; any failure below leaves it out (a failed ceremony restarts).
    fn take_dkg(&self, wallet_id: &WalletId) -> Result<PendingDkg, Failure> {
        lock(&self.dkgs)?
            .remove(wallet_id)
            .filter(|p| p.started.elapsed() < DKG_TTL)
            .ok_or_else(|| {
                Failure::new(
                    ErrorKind::NotFound,
                    format!("no DKG running for wallet {wallet_id}"),
                )
            })
    }

    fn put_dkg(
        &self,
        wallet_id: WalletId,
        stage: DkgStage,
        started: Instant,
    ) -> Result<(), Failure> {
        lock(&self.dkgs)?.insert(wallet_id, PendingDkg { stage, started });
        Ok(())
    }

    fn dkg_round2(
        &self,
        wallet_id: WalletId,
        round1: &[cosigner_protocol::wire::Round1Message],
    ) -> Outcome {
        let pending = self.take_dkg(&wallet_id)?;
        let DkgStage::Round1(state) = pending.stage else {
            return Err(Failure::new(
                ErrorKind::BadRequest,
                "DKG is not waiting for round 1",
            ));
        };
        let (next, packages) = state.handle_round1(round1, &mut rand_core::OsRng)?;
        self.put_dkg(wallet_id, DkgStage::Round2(Box::new(next)), pending.started)?;
        Ok(Response::DkgRound2 { packages })
    }

    fn dkg_round3(
        &self,
        wallet_id: WalletId,
        packages: &[cosigner_protocol::wire::SealedPackage],
    ) -> Outcome {
        let pending = self.take_dkg(&wallet_id)?;
        let DkgStage::Round2(state) = pending.stage else {
            return Err(Failure::new(
                ErrorKind::BadRequest,
                "DKG is not waiting for round 2",
            ));
        };
        let (next, confirmation) = state.handle_round2(packages)?;
        self.put_dkg(wallet_id, DkgStage::Round3(Box::new(next)), pending.started)?;
        Ok(Response::DkgRound3 { confirmation })
    }

    fn dkg_confirm(
        &self,
        wallet_id: WalletId,
        confirmations: &[cosigner_protocol::wire::Confirmation],
    ) -> Outcome {
        let pending = self.take_dkg(&wallet_id)?;
        let DkgStage::Round3(state) = pending.stage else {
            return Err(Failure::new(
                ErrorKind::BadRequest,
                "DKG is not waiting for confirmations",
            ));
        };
        let params = state.params().clone();
        let party = state.me();
        let output = state.handle_confirmations(confirmations)?;
        let internal =
            |e: frost_core::Error<Suite>| Failure::new(ErrorKind::Internal, e.to_string());
        let record = WalletRecord {
            params,
            party,
            epoch: 0,
            key_package: ByteBuf::from(output.key_package.serialize().map_err(internal)?),
            public_key_package: ByteBuf::from(
                output.public_key_package.serialize().map_err(internal)?,
            ),
        };
        if self.wallet_exists(&wallet_id)? {
            return Err(Failure::new(
                ErrorKind::BadRequest,
                format!("wallet {wallet_id} already exists"),
            ));
        }
        self.save(wallet_id, &record)?;
        Ok(Response::DkgDone {
            wallet: info(wallet_id, &record)?,
        })
    }

    fn seal_context(wallet_id: &WalletId, party: u16, epoch: u64) -> SealContext {
        SealContext {
            purpose: RECORD_PURPOSE,
            wallet_id: wallet_id.0,
            party,
            epoch,
        }
    }

    fn save(&self, wallet_id: WalletId, record: &WalletRecord) -> Result<(), Failure> {
        let mut plain = Vec::new();
        ciborium::ser::into_writer(record, &mut plain)
            .map_err(|e| Failure::new(ErrorKind::Internal, e.to_string()))?;
        let sealed = self.sealer.seal(
            &Self::seal_context(&wallet_id, record.party, record.epoch),
            &plain,
        );
        plain.zeroize();
        let sealed =
            sealed.map_err(|e| Failure::new(ErrorKind::Internal, format!("sealing: {e}")))?;
        self.store
            .put(&record_key(&wallet_id, record.party, record.epoch), &sealed)
            .map_err(|e| Failure::new(ErrorKind::Internal, e.to_string()))
    }

    /// Reads and unseals a wallet's newest record, checking it is the record it claims to be.
    fn load(&self, wallet_id: WalletId) -> Result<WalletRecord, Failure> {
        let prefix = format!("wallet/{}/", wallet_id.to_hex());
        let keys = self
            .store
            .list(&prefix)
            .map_err(|e| Failure::new(ErrorKind::Internal, e.to_string()))?;
        let integrity = |what: String| {
            Failure::new(
                ErrorKind::Integrity,
                format!("stored record of wallet {wallet_id} refused: {what}"),
            )
        };
        let mut found: Vec<(u64, u16)> = keys
            .iter()
            .filter_map(|k| parse_record_key(k.strip_prefix(&prefix)?))
            .map(|(party, epoch)| (epoch, party))
            .collect();
        found.sort_unstable();
        let Some(&(epoch, party)) = found.last() else {
            return Err(Failure::new(
                ErrorKind::NotFound,
                format!("unknown wallet {wallet_id}"),
            ));
        };
        if found.iter().any(|(e, p)| *e == epoch && *p != party) {
            return Err(integrity(format!("several parties claim epoch {epoch}")));
        }
        let sealed = self
            .store
            .get(&record_key(&wallet_id, party, epoch))
            .map_err(|e| Failure::new(ErrorKind::Internal, e.to_string()))?
            .ok_or_else(|| {
                Failure::new(ErrorKind::NotFound, format!("unknown wallet {wallet_id}"))
            })?;
        let plain = self
            .sealer
            .open(&Self::seal_context(&wallet_id, party, epoch), &sealed)
            .map_err(|e| integrity(e.to_string()))?;
        let record: WalletRecord = ciborium::de::from_reader(plain.as_slice())
            .map_err(|e| integrity(format!("undecodable: {e}")))?;
        if record.params.wallet_id != wallet_id || record.epoch != epoch || record.party != party {
            return Err(integrity("it names another wallet, party or epoch".into()));
        }
        Ok(record)
    }

    fn sign_commit(&self, wallet_id: WalletId, message: &[u8], signers: &[u16]) -> Outcome {
        let record = self.load(wallet_id)?;
        let key_package = key_package(&record)?;
        let (session, commitments) = SignerSession::<Suite>::commit(
            &key_package,
            record.party,
            message,
            signers,
            &mut rand_core::OsRng,
        )?;
        let session_id = random_id()?;
        let mut signs = lock(&self.signs)?;
        signs.retain(|_, s| s.started.elapsed() < SIGN_TTL);
        if signs.len() >= MAX_PENDING_SIGNS {
            return Err(Failure::new(
                ErrorKind::Internal,
                "too many signing sessions open",
            ));
        }
        signs.insert(
            session_id,
            PendingSign {
                wallet_id,
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
            .map_err(|_| Failure::new(ErrorKind::BadRequest, "session id is not 16 bytes"))?;
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
        let record = self.load(pending.wallet_id)?;
        let key_package = key_package(&record)?;
        let share = pending.session.sign(&key_package, signing_package)?;
        Ok(Response::SignatureShare {
            share: ByteBuf::from(share),
        })
    }
}

fn key_package(record: &WalletRecord) -> Result<KeyPackage<Suite>, Failure> {
    KeyPackage::<Suite>::deserialize(&record.key_package)
        .map_err(|e| Failure::new(ErrorKind::Integrity, format!("stored key package: {e}")))
}

fn info(wallet_id: WalletId, record: &WalletRecord) -> Result<WalletInfo, Failure> {
    let pkp = PublicKeyPackage::<Suite>::deserialize(&record.public_key_package).map_err(|e| {
        Failure::new(
            ErrorKind::Integrity,
            format!("stored public key package: {e}"),
        )
    })?;
    let group_public_key = pkp
        .verifying_key()
        .serialize()
        .map_err(|e| Failure::new(ErrorKind::Internal, e.to_string()))?;
    Ok(WalletInfo {
        wallet_id,
        ciphersuite: record.params.ciphersuite.clone(),
        party: record.party,
        min_signers: record.params.min_signers,
        parties: record.params.parties.clone(),
        epoch: record.epoch,
        group_public_key: ByteBuf::from(group_public_key),
        public_key_package: record.public_key_package.clone(),
    })
}
