//! A client's session: attestation, challenges, and the authorization of requests that use a
//! share (docs/lifecycle.md, "Authentication inside the boundary").

use std::time::{Duration, Instant};

use cosigner_attestation::AttestRequest;
use cosigner_protocol::auth::{CHALLENGE_LEN, request_digest, verify_request};
use cosigner_protocol::binding::{EXPORTER_LEN, NONCE_LEN};
use cosigner_protocol::party;
use cosigner_protocol::wire::{self, KeyRole, Request, Response, WalletId};
use serde_bytes::ByteBuf;

use super::failure::{Failure, Outcome, internal};
use super::records::WalletState;
use super::refresh::Commit;
use super::{Service, random};

/// How long a challenge is valid.
const CHALLENGE_TTL: Duration = Duration::from_secs(120);

/// What a client connection has established.
#[derive(Debug)]
pub struct SessionState {
    /// Random, names this session as the owner of the ceremonies it starts.
    pub(super) id: [u8; 16],
    binding: [u8; EXPORTER_LEN],
    pub(super) attested: bool,
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
pub(super) struct Actor {
    pub(super) role: &'static str,
    pub(super) key: Vec<u8>,
}

impl Actor {
    pub(super) fn label(&self) -> String {
        format!("{}:{}", self.role, hex::encode(&self.key))
    }

    /// Whether this key may still use the wallet's share under `state` (a signing session
    /// checks it again before releasing a share): the device key while current and not
    /// suspended by a recovery, the recovery credential while registered.
    pub(super) fn still_authorized(&self, state: &WalletState) -> bool {
        let key = self.key.as_slice();
        match self.role {
            "device" => state.device_key.as_slice() == key && state.pending_device_key.is_none(),
            "recovery" => state.recovery_key.as_slice() == key,
            _ => false,
        }
    }
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

    /// Checks the signature, then runs the inner request with the signer's identity.
    pub(super) fn authorized(
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
                &Commit {
                    confirmations: &confirmations,
                    provider_receipt: provider_receipt.as_deref().map(Vec::as_slice),
                },
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
}
