//! A client's session: attestation, challenges, and the authorization of requests that use a
//! share: the signature check here, what each key may send in [`authorized`](super::authorized) (docs/lifecycle.md, "Authentication inside the boundary").

use super::table::ConnectionId;
use std::time::{Duration, Instant};

use cosigner_attestation::AttestRequest;
use cosigner_protocol::auth::{CHALLENGE_LEN, request_digest, verify_request};
use cosigner_protocol::binding::{EXPORTER_LEN, NONCE_LEN};
use cosigner_protocol::wire::{self, KeyRole, Request, Response, WalletId};
use serde_bytes::ByteBuf;

use super::authorized::{
    Actor, Authorized, Cosigner, DeviceRequest, PendingDeviceRequest, RecoveryRequest, Refresh,
    Role, Sign,
};
use super::failure::{Failure, Outcome, internal};
use super::records::WalletState;
use super::refresh::Commit;
use super::sign_now::{Held, Now, Precommitments};
use super::{Service, random};

/// How long a challenge is valid.
const CHALLENGE_TTL: Duration = Duration::from_secs(120);

/// What a client connection has established.
#[derive(Debug)]
pub struct SessionState {
    /// Random, names this session as the owner of the ceremonies it starts.
    pub(super) id: ConnectionId,
    binding: [u8; EXPORTER_LEN],
    pub(super) attested: bool,
    challenge: Option<(WalletId, [u8; CHALLENGE_LEN], Instant)>,
    /// Signing commitments handed to this session's client (`sign_now`): memory only.
    precommitments: Precommitments,
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
            precommitments: Precommitments::default(),
        }
    }
}

fn binding_id(binding: &[u8; EXPORTER_LEN]) -> ConnectionId {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(binding);
    let mut id = [0u8; 16];
    id.copy_from_slice(digest.get(..16).unwrap_or(&[0; 16]));
    ConnectionId(id)
}

impl Service {
    pub(super) fn attest(&self, session: &mut SessionState, nonce: &[u8]) -> Outcome {
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

    pub(super) fn challenge(&self, session: &mut SessionState, wallet_id: WalletId) -> Outcome {
        let challenge = random::<CHALLENGE_LEN>()?;
        session.challenge = Some((wallet_id, challenge, Instant::now()));
        Ok(Response::Challenge {
            challenge: ByteBuf::from(challenge.to_vec()),
        })
    }

    /// Checks the signature, then runs the inner request as what the signer's role may send.
    pub(super) fn authorized(
        &self,
        session: &mut SessionState,
        wallet_id: WalletId,
        role: KeyRole,
        signature: &[u8],
        inner_bytes: &[u8],
    ) -> Outcome {
        let challenge = take_challenge(session, &wallet_id)?;
        let grant = Grant {
            wallet_id,
            role,
            challenge,
            held: None,
        };
        self.authorized_under(session, grant, signature, inner_bytes)
    }

    /// `Precommitted`: as [`Service::authorized`], the challenge being the id of one of this
    /// session's commitments, taken out of the session first (used once, whatever follows).
    pub(super) fn precommitted(
        &self,
        session: &mut SessionState,
        wallet_id: WalletId,
        role: KeyRole,
        (id, signature): (&[u8], &[u8]),
        inner_bytes: &[u8],
    ) -> Outcome {
        let held = session.precommitments.take(&wallet_id, id)?;
        let grant = Grant {
            wallet_id,
            role,
            challenge: *held.id(),
            held: Some(held),
        };
        self.authorized_under(session, grant, signature, inner_bytes)
    }

    fn authorized_under(
        &self,
        session: &mut SessionState,
        grant: Grant,
        signature: &[u8],
        inner_bytes: &[u8],
    ) -> Outcome {
        let Grant {
            wallet_id,
            role,
            challenge,
            held,
        } = grant;
        let inner: Request =
            wire::decode(inner_bytes).map_err(|e| Failure::bad(format!("inner request: {e}")))?;
        let signed = Signed {
            wallet_id,
            action: inner.name(),
            digest: request_digest(&wallet_id, &challenge, inner_bytes),
            check: &|key: &[u8]| {
                verify_request(key, &wallet_id, &challenge, inner_bytes, signature).is_ok()
            },
        };
        // Every authorized request is about an existing wallet; creation is not authorized. The
        // anchor's generation is read first: if it is the same when a signing session releases
        // its share, the state it was authorized under is still the state.
        let generation = self.records().state_generation(&wallet_id)?;
        let state = self.records().load_state(&wallet_id)?;
        let actor = self.identify(&state, role, &signed)?;
        let request = match Authorized::new(actor.role, inner, Cosigner::of(&state)) {
            Ok(request) => request,
            Err(_) => {
                self.refused(
                    &wallet_id,
                    signed.action,
                    &actor.label(),
                    &signed.digest,
                    "refused: not allowed for this key",
                );
                return Err(Failure::denied(format!(
                    "a {} key may not send {}",
                    actor.role.name(),
                    signed.action
                )));
            }
        };
        self.check_authorized(&state, &actor, &request, &signed)?;
        let run = Run {
            owner: session.id,
            state,
            actor,
            generation,
            digest: &signed.digest,
            held,
            store: &mut session.precommitments,
        };
        self.run_authorized(run, request)
    }

    /// Which of the wallet's keys signed, as `role` claims: the device key (refused while a
    /// recovery suspends it), the pending key of a recovery, or the recovery credential. A
    /// revoked key or a bad signature is refused (and recorded, boundedly).
    fn identify(
        &self,
        state: &WalletState,
        role: KeyRole,
        signed: &Signed<'_>,
    ) -> Result<Actor, Failure> {
        let refuse = |actor: &str, why: &str| {
            self.refused(&signed.wallet_id, signed.action, actor, &signed.digest, why);
        };
        let check = signed.check;
        let (role, key) = match role {
            KeyRole::Device if check(&state.device_key) => {
                if state.pending_device_key.is_some() {
                    // The recovery credential has spoken: the registered device (maybe a stolen
                    // phone) is suspended until the recovery completes or is cancelled.
                    refuse(
                        &format!("device:{}", hex::encode(&state.device_key)),
                        "refused: device key suspended by a recovery in progress",
                    );
                    return Err(Failure::denied(
                        "this device key is suspended: a recovery of this wallet is in progress \
                         (the recovery credential can cancel it)",
                    ));
                }
                (Role::Device, state.device_key.to_vec())
            }
            KeyRole::Device => match &state.pending_device_key {
                Some(p) if check(p) => (Role::PendingDevice, p.to_vec()),
                _ if state.revoked_keys.iter().any(|k| check(k)) => {
                    refuse("revoked-device", "refused: revoked key");
                    return Err(Failure::denied("this device key has been revoked"));
                }
                _ => {
                    refuse("-", "refused: bad signature");
                    return Err(Failure::denied(
                        "signature is not by this wallet's device key",
                    ));
                }
            },
            KeyRole::Recovery if check(&state.recovery_key) => {
                (Role::Recovery, state.recovery_key.to_vec())
            }
            KeyRole::Recovery => {
                refuse("-", "refused: bad recovery signature");
                return Err(Failure::denied(
                    "signature is not by this wallet's recovery credential",
                ));
            }
        };
        Ok(Actor { role, key })
    }

    /// What the wallet's state says of an allowed request: a wallet with a policy gets no raw
    /// digest signed, nothing is signed while a recovery is pending, and the request must name
    /// the wallet the signature is for.
    fn check_authorized(
        &self,
        state: &WalletState,
        actor: &Actor,
        request: &Authorized,
        signed: &Signed<'_>,
    ) -> Result<(), Failure> {
        let names = request.wallet();
        if let Some(Sign::Raw(_) | Sign::Now(_)) = request.sign()
            && names == signed.wallet_id
            && state.policy.is_some()
        {
            return Err(self.raw_sign_refused(&signed.wallet_id, actor, &signed.digest));
        }
        // An Ethereum wallet signs Ethereum transactions and is refreshed by its device; its
        // recovery credential can suspend a stolen device's key (and give it back) and change its
        // policy, and a recovering device repairs and refreshes its share.
        let ecdsa_served = matches!(
            request,
            Authorized::Device(DeviceRequest::Sign(Sign::Eth(_)) | DeviceRequest::Refresh(_))
                | Authorized::PendingDevice(
                    PendingDeviceRequest::Repair { .. } | PendingDeviceRequest::Refresh(_)
                )
                | Authorized::Recovery(
                    RecoveryRequest::RecoverStart { .. }
                        | RecoveryRequest::RecoverCancel { .. }
                        | RecoveryRequest::SetPolicy { .. }
                )
        );
        if super::is_ecdsa(state) && !ecdsa_served {
            return Err(Failure::bad(format!(
                "wallet {} is an Ethereum wallet: it signs Ethereum transactions (sign --eth-tx); \
                 {} is not served for it yet",
                signed.wallet_id, signed.action
            )));
        }
        if request.sign().is_some() && state.pending_device_key.is_some() {
            return Err(Failure::denied(
                "a recovery of this wallet is in progress: finish or cancel it first",
            ));
        }
        if names != signed.wallet_id {
            return Err(Failure::bad("the inner request names another wallet"));
        }
        Ok(())
    }

    /// Runs an authorized request: every pair of role and request has its handler, and there
    /// is no other way to reach those handlers.
    fn run_authorized(&self, run: Run<'_>, request: Authorized) -> Outcome {
        let Run {
            owner,
            state,
            actor,
            generation,
            digest,
            held,
            store,
        } = run;
        let one_round = matches!(request.sign(), Some(Sign::Now(_) | Sign::PsbtNow(_)));
        if held.is_some() && !one_round {
            return Err(Failure::bad(
                "a commitment can only be used by SignNow or SignPsbtNow: this request needs a \
                 challenge",
            ));
        }
        match request {
            Authorized::Device(DeviceRequest::Sign(sign))
            | Authorized::Recovery(RecoveryRequest::Sign(sign)) => {
                let now = Now {
                    state,
                    actor,
                    generation,
                    held,
                    store,
                };
                match sign {
                    Sign::Raw(s) => self.sign_commit(
                        now.state,
                        now.actor,
                        now.generation,
                        s.epoch,
                        &s.message,
                        &s.signers,
                    ),
                    Sign::Now(s) => self.sign_now(now, s),
                    Sign::Psbt(p) => {
                        let psbt = (p.psbt.as_slice(), p.signers.as_slice());
                        self.sign_psbt_commit(owner, now.state, &now.actor, p.epoch, psbt, true)
                    }
                    Sign::PsbtNow(p) => self.sign_psbt_now(now, owner, p),
                    Sign::Eth(e) => {
                        self.eth_sign_start(owner, now.state, now.actor, now.generation, e)
                    }
                }
            }
            Authorized::Device(DeviceRequest::Refresh(refresh))
            | Authorized::PendingDevice(PendingDeviceRequest::Refresh(refresh)) => match refresh {
                Refresh::Start { params, me } => {
                    self.refresh_start(owner, state, &actor, params, me, digest)
                }
                Refresh::Commit {
                    confirmations,
                    provider_receipt,
                    confirmation_signatures,
                    ..
                } => {
                    let commit = Commit {
                        confirmations: &confirmations,
                        provider_receipt: provider_receipt.as_deref().map(Vec::as_slice),
                        signatures: &confirmation_signatures,
                    };
                    self.refresh_commit(owner, state, &actor, &commit, digest)
                }
                Refresh::Finalize { epoch, .. } => {
                    self.refresh_finalize_signed(&state, &actor, epoch, digest)
                }
            },
            Authorized::PendingDevice(PendingDeviceRequest::Repair { params, me }) => {
                self.repair_start(owner, state, &actor, params, me, digest)
            }
            Authorized::Recovery(RecoveryRequest::RecoverStart { new_device_key, .. }) => {
                self.recover_start(state, &actor, &new_device_key, digest)
            }
            Authorized::Recovery(RecoveryRequest::RecoverCancel { wallet_id }) => {
                self.recover_cancel(&wallet_id, &actor, digest)
            }
            Authorized::Recovery(RecoveryRequest::SetPolicy { policy, .. }) => {
                self.set_policy(state, &actor, policy, digest)
            }
        }
    }
}

/// A signed inner request, before its signer is known.
struct Signed<'a> {
    wallet_id: WalletId,
    action: &'static str,
    /// What the signature covers (`auth::request_digest`), as recorded in the audit log.
    digest: [u8; 32],
    /// Whether a key made the signature.
    check: &'a dyn Fn(&[u8]) -> bool,
}

/// What an authorized request runs with.
struct Run<'a> {
    owner: ConnectionId,
    state: WalletState,
    actor: Actor,
    generation: Option<u64>,
    digest: &'a [u8],
    /// The commitment a `Precommitted` request uses.
    held: Option<Held>,
    /// The session's commitments, where a `SignNow` keeps the next one.
    store: &'a mut Precommitments,
}

/// What a signature on a request is checked under: a challenge, or a commitment's id.
struct Grant {
    wallet_id: WalletId,
    role: KeyRole,
    challenge: [u8; CHALLENGE_LEN],
    held: Option<Held>,
}

/// Takes the session's challenge for `wallet_id`: consumed whatever happens next (one
/// signature, one use), and valid for [`CHALLENGE_TTL`].
fn take_challenge(
    session: &mut SessionState,
    wallet_id: &WalletId,
) -> Result<[u8; CHALLENGE_LEN], Failure> {
    let Some((challenged, challenge, issued)) = session.challenge.take() else {
        return Err(Failure::denied(
            "no challenge on this session (ask for one first)",
        ));
    };
    if challenged != *wallet_id || issued.elapsed() > CHALLENGE_TTL {
        return Err(Failure::denied(
            "the challenge is for another wallet or has expired",
        ));
    }
    Ok(challenge)
}
