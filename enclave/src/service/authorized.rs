//! Authorization by type: the key that signed a request ([`Role`], [`Actor`]) and what that key
//! may send ([`Authorized`]), after docs/lifecycle.md ("Authentication inside the boundary"):
//!
//! | key | may |
//! | --- | --- |
//! | device key | at the provider: `SignCommit`, `SignNow`, `SignPsbtCommit`, `SignPsbtNow`, `EthSignStart`; at both: `RefreshStart`, `RefreshCommit` |
//! | recovery credential | `RecoverStart`, `RecoverCancel`, `SetPolicy`; at the recovery cosigner also `SignCommit`, `SignNow`, `SignPsbtCommit`, `SignPsbtNow`, `EthSignStart` |
//! | the new device's key, during a recovery | `RepairStart`, `RefreshStart`, `RefreshCommit` |
//!
//! [`Authorized::new`] is the one place that decides it: it turns the signed inner [`Request`]
//! into the request type of the signer's role, or refuses it, and the handlers are reached only
//! from those types. The wire encoding of `Request` is unchanged.

use cosigner_protocol::id::Epoch;
use cosigner_protocol::id::PartyId;
use cosigner_protocol::party;
use cosigner_protocol::wire::{
    Confirmation, EcdsaSignMessage, RefreshParams, RepairParams, Request, WalletId,
};
use serde_bytes::ByteBuf;

use super::records::WalletState;

/// Which of a wallet's keys authorized a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    /// The registered device key.
    Device,
    /// The new device's key while a recovery is pending.
    PendingDevice,
    /// The offline recovery credential.
    Recovery,
}

impl Role {
    /// The role's name in the audit log and in messages.
    pub(super) fn name(self) -> &'static str {
        match self {
            Self::Device => "device",
            Self::PendingDevice => "pending-device",
            Self::Recovery => "recovery",
        }
    }
}

/// Which key authorized a request.
#[derive(Debug, Clone)]
pub(super) struct Actor {
    pub(super) role: Role,
    pub(super) key: Vec<u8>,
}

impl Actor {
    /// `role:hex(key)`, as the audit log names the actor.
    pub(super) fn label(&self) -> String {
        format!("{}:{}", self.role.name(), hex::encode(&self.key))
    }

    /// Whether this key may still use the wallet's share under `state` (a signing session
    /// checks it again before releasing a share): the device key while current and not
    /// suspended by a recovery, the recovery credential while registered.
    pub(super) fn still_authorized(&self, state: &WalletState) -> bool {
        let key = self.key.as_slice();
        match self.role {
            Role::Device => {
                state.device_key.as_slice() == key && state.pending_device_key.is_none()
            }
            Role::Recovery => state.recovery_key.as_slice() == key,
            Role::PendingDevice => false,
        }
    }
}

/// Which cosigner this is, for what a key may ask of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Cosigner {
    /// The provider (party 2): co-signs on the device key.
    Provider,
    /// The recovery cosigner (party 3): co-signs only under the recovery credential, so a
    /// stolen phone reaches one spend history (the provider's), not two.
    Recovery,
}

impl Cosigner {
    /// The cosigner holding `state`.
    pub(super) fn of(state: &WalletState) -> Self {
        if state.party == party::RECOVERY {
            Self::Recovery
        } else {
            Self::Provider
        }
    }
}

/// `SignCommit`: a raw digest to sign.
pub(super) struct SignCommit {
    pub(super) wallet_id: WalletId,
    pub(super) epoch: Epoch,
    pub(super) message: ByteBuf,
    pub(super) signers: Vec<PartyId>,
}

/// `SignPsbtCommit`: a PSBT to sign, one FROST session per input.
pub(super) struct PsbtCommit {
    pub(super) wallet_id: WalletId,
    pub(super) epoch: Epoch,
    pub(super) psbt: ByteBuf,
    pub(super) signers: Vec<PartyId>,
}

/// `SignNow`: a raw digest signed in one round, the client's commitment included.
pub(super) struct SignNow {
    pub(super) wallet_id: WalletId,
    pub(super) epoch: Epoch,
    pub(super) message: ByteBuf,
    pub(super) signers: Vec<PartyId>,
    pub(super) commitments: ByteBuf,
}

/// `SignPsbtNow`: a PSBT signed in one round, the client's commitments included.
pub(super) struct PsbtNow {
    pub(super) wallet_id: WalletId,
    pub(super) epoch: Epoch,
    pub(super) psbt: ByteBuf,
    pub(super) signers: Vec<PartyId>,
    pub(super) commitments: Vec<ByteBuf>,
}

/// `EthSignStart`: an Ethereum transaction to sign with a threshold ECDSA wallet.
pub(super) struct EthSign {
    pub(super) wallet_id: WalletId,
    pub(super) epoch: Epoch,
    pub(super) tx: ByteBuf,
    pub(super) signers: Vec<PartyId>,
    pub(super) nonce: ByteBuf,
    pub(super) round1: EcdsaSignMessage,
}

/// A signing request: raw (two rounds or one), PSBT (two rounds or one), or an Ethereum
/// transaction.
pub(super) enum Sign {
    Raw(SignCommit),
    Now(SignNow),
    Psbt(PsbtCommit),
    PsbtNow(PsbtNow),
    Eth(EthSign),
}

/// `RefreshStart` or `RefreshCommit`.
pub(super) enum Refresh {
    Start {
        params: RefreshParams,
        me: PartyId,
    },
    Commit {
        wallet_id: WalletId,
        confirmations: Vec<Confirmation>,
        provider_receipt: Option<ByteBuf>,
        confirmation_signatures: Vec<(PartyId, ByteBuf)>,
    },
    /// `RefreshFinalize` signed by the device key, from any session: the device holds the
    /// current epoch, so older ones go (a refresh finished by a rerun, whose committing session
    /// is gone, would otherwise keep them signable).
    Finalize {
        wallet_id: WalletId,
        epoch: Epoch,
    },
}

/// What the registered device key may send.
pub(super) enum DeviceRequest {
    /// At the provider only.
    Sign(Sign),
    Refresh(Refresh),
}

/// What the new device's key may send while its recovery is pending.
pub(super) enum PendingDeviceRequest {
    Repair { params: RepairParams, me: PartyId },
    Refresh(Refresh),
}

/// What the recovery credential may send.
pub(super) enum RecoveryRequest {
    RecoverStart {
        wallet_id: WalletId,
        new_device_key: ByteBuf,
    },
    RecoverCancel {
        wallet_id: WalletId,
    },
    SetPolicy {
        wallet_id: WalletId,
        policy: Option<String>,
    },
    /// At the recovery cosigner only.
    Sign(Sign),
}

/// The signer's role may not send this request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct NotAllowed;

/// A request its signer's role may send, and nothing else.
pub(super) enum Authorized {
    Device(DeviceRequest),
    PendingDevice(PendingDeviceRequest),
    Recovery(RecoveryRequest),
}

impl Authorized {
    /// The inner request as what `role` may send at `at`, or [`NotAllowed`] (the caller
    /// refuses it as unauthorized).
    pub(super) fn new(role: Role, inner: Request, at: Cosigner) -> Result<Self, NotAllowed> {
        match role {
            Role::Device => DeviceRequest::new(inner, at).map(Self::Device),
            Role::PendingDevice => PendingDeviceRequest::new(inner).map(Self::PendingDevice),
            Role::Recovery => RecoveryRequest::new(inner, at).map(Self::Recovery),
        }
    }

    /// The wallet the request names (it must be the one the signature is for).
    pub(super) fn wallet(&self) -> WalletId {
        match self {
            Self::Device(DeviceRequest::Sign(s)) | Self::Recovery(RecoveryRequest::Sign(s)) => {
                s.wallet()
            }
            Self::Device(DeviceRequest::Refresh(r))
            | Self::PendingDevice(PendingDeviceRequest::Refresh(r)) => r.wallet(),
            Self::PendingDevice(PendingDeviceRequest::Repair { params, .. }) => params.wallet_id,
            Self::Recovery(
                RecoveryRequest::RecoverStart { wallet_id, .. }
                | RecoveryRequest::RecoverCancel { wallet_id }
                | RecoveryRequest::SetPolicy { wallet_id, .. },
            ) => *wallet_id,
        }
    }

    /// The signing request, if it is one.
    pub(super) fn sign(&self) -> Option<&Sign> {
        match self {
            Self::Device(DeviceRequest::Sign(s)) | Self::Recovery(RecoveryRequest::Sign(s)) => {
                Some(s)
            }
            Self::Device(DeviceRequest::Refresh(_))
            | Self::PendingDevice(_)
            | Self::Recovery(
                RecoveryRequest::RecoverStart { .. }
                | RecoveryRequest::RecoverCancel { .. }
                | RecoveryRequest::SetPolicy { .. },
            ) => None,
        }
    }
}

impl Sign {
    /// `SignCommit`, `SignNow`, `SignPsbtCommit` or `SignPsbtNow`, at `at` only.
    fn new(inner: Request, at: Cosigner, only_at: Cosigner) -> Result<Self, NotAllowed> {
        match inner {
            _ if at != only_at => Err(NotAllowed),
            Request::SignCommit {
                wallet_id,
                epoch,
                message,
                signers,
            } => Ok(Self::Raw(SignCommit {
                wallet_id,
                epoch,
                message,
                signers,
            })),
            Request::SignNow {
                wallet_id,
                epoch,
                message,
                signers,
                commitments,
            } => Ok(Self::Now(SignNow {
                wallet_id,
                epoch,
                message,
                signers,
                commitments,
            })),
            Request::SignPsbtCommit {
                wallet_id,
                epoch,
                psbt,
                signers,
            } => Ok(Self::Psbt(PsbtCommit {
                wallet_id,
                epoch,
                psbt,
                signers,
            })),
            Request::SignPsbtNow {
                wallet_id,
                epoch,
                psbt,
                signers,
                commitments,
            } => Ok(Self::PsbtNow(PsbtNow {
                wallet_id,
                epoch,
                psbt,
                signers,
                commitments,
            })),
            Request::EthSignStart {
                wallet_id,
                epoch,
                tx,
                signers,
                nonce,
                round1,
            } => Ok(Self::Eth(EthSign {
                wallet_id,
                epoch,
                tx,
                signers,
                nonce,
                round1,
            })),
            _ => Err(NotAllowed),
        }
    }

    fn wallet(&self) -> WalletId {
        match self {
            Self::Raw(s) => s.wallet_id,
            Self::Now(s) => s.wallet_id,
            Self::Psbt(p) => p.wallet_id,
            Self::PsbtNow(p) => p.wallet_id,
            Self::Eth(e) => e.wallet_id,
        }
    }
}

impl Refresh {
    fn new(inner: Request) -> Result<Self, NotAllowed> {
        match inner {
            Request::RefreshStart { params, me } => Ok(Self::Start { params, me }),
            Request::RefreshCommit {
                wallet_id,
                confirmations,
                provider_receipt,
                confirmation_signatures,
            } => Ok(Self::Commit {
                wallet_id,
                confirmations,
                provider_receipt,
                confirmation_signatures,
            }),
            Request::RefreshFinalize { wallet_id, epoch } => {
                Ok(Self::Finalize { wallet_id, epoch })
            }
            _ => Err(NotAllowed),
        }
    }

    fn wallet(&self) -> WalletId {
        match self {
            Self::Start { params, .. } => params.wallet_id,
            Self::Commit { wallet_id, .. } | Self::Finalize { wallet_id, .. } => *wallet_id,
        }
    }
}

impl DeviceRequest {
    fn new(inner: Request, at: Cosigner) -> Result<Self, NotAllowed> {
        if matches!(
            inner,
            Request::SignCommit { .. }
                | Request::SignNow { .. }
                | Request::SignPsbtCommit { .. }
                | Request::SignPsbtNow { .. }
                | Request::EthSignStart { .. }
        ) {
            return Sign::new(inner, at, Cosigner::Provider).map(Self::Sign);
        }
        Refresh::new(inner).map(Self::Refresh)
    }
}

impl PendingDeviceRequest {
    fn new(inner: Request) -> Result<Self, NotAllowed> {
        match inner {
            Request::RepairStart { params, me } => Ok(Self::Repair { params, me }),
            other => Refresh::new(other).map(Self::Refresh),
        }
    }
}

impl RecoveryRequest {
    fn new(inner: Request, at: Cosigner) -> Result<Self, NotAllowed> {
        match inner {
            Request::RecoverStart {
                wallet_id,
                new_device_key,
            } => Ok(Self::RecoverStart {
                wallet_id,
                new_device_key,
            }),
            Request::RecoverCancel { wallet_id } => Ok(Self::RecoverCancel { wallet_id }),
            Request::SetPolicy { wallet_id, policy } => Ok(Self::SetPolicy { wallet_id, policy }),
            other => Sign::new(other, at, Cosigner::Recovery).map(Self::Sign),
        }
    }
}
