//! The messages: one versioned enum of requests, one of responses, with serializable errors.
//!
//! Bodies are CBOR (RFC 8949) through serde; FROST packages travel inside as frost's own compact
//! serialization (`serialize()`), opaque here. Every body is wrapped in an [`Envelope`] carrying
//! [`crate::PROTOCOL_VERSION`], checked on decode.
//!
//! Client ↔ enclave (inside TLS): [`Request`] / [`Response`]. Enclave ↔ parent (storage of sealed
//! blobs): [`StoreRequest`] / [`StoreResponse`].

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_bytes::ByteBuf;

use crate::PROTOCOL_VERSION;
use crate::error::{ProtocolError, Result};

/// Nesting limit when decoding a body.
const RECURSION_LIMIT: usize = 32;

pub use crate::ecdsa::dkg::{EcdsaHello, EcdsaRound};
pub use crate::ecdsa::sign::EcdsaSignMessage;
pub use crate::id::{Epoch, PartyId, SessionId, WalletId};

/// Ciphersuite name of `frost-secp256k1-tr` (BIP-340 / Taproot), the default.
pub const SUITE_SECP256K1_TR: &str = "FROST-secp256k1-SHA256-TR-v1";

/// Ciphersuite name of threshold ECDSA over secp256k1 (DKLs23, `crate::ecdsa`): Ethereum
/// accounts. A [`DkgParams`] naming it starts that scheme's DKG ([`Request::EcdsaDkgHellos`],
/// [`Request::EcdsaDkgRound`]) instead of FROST's.
pub const SUITE_SECP256K1_ECDSA: &str = "DKLs23-secp256k1-ECDSA-v1";

/// What a DKG creates: the same for every party.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DkgParams {
    /// The wallet being created.
    pub wallet_id: WalletId,
    /// The FROST ciphersuite's `ID` (e.g. [`SUITE_SECP256K1_TR`]).
    pub ciphersuite: String,
    /// Threshold: how many parties sign.
    pub min_signers: u16,
    /// Every party, by number (1-based, distinct).
    pub parties: Vec<PartyId>,
}

/// A party's round-1 broadcast.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Round1Message {
    /// Sender.
    pub from: PartyId,
    /// `frost::keys::dkg::round1::Package`, serialized by frost.
    pub package: ByteBuf,
    /// The sender's HPKE public key for this ceremony: round-2 packages to it are sealed to it.
    pub hpke_public_key: ByteBuf,
}

/// A round-2 package sealed to its recipient with HPKE (RFC 9180 base mode).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SealedPackage {
    /// Sender.
    pub from: PartyId,
    /// Recipient.
    pub to: PartyId,
    /// HPKE encapsulated key.
    pub enc: ByteBuf,
    /// HPKE ciphertext of the serialized `round2::Package`.
    pub ciphertext: ByteBuf,
}

/// A party's view of the finished DKG, compared by all before the wallet is active.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Confirmation {
    /// Sender.
    pub from: PartyId,
    /// SHA-256 of the DKG transcript (parameters and every round-1 message) as the sender saw it.
    pub transcript_hash: ByteBuf,
    /// SHA-256 of the sender's serialized `PublicKeyPackage`.
    pub public_key_package_hash: ByteBuf,
}

/// Public facts about a wallet the enclave holds a share of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WalletInfo {
    /// The wallet.
    pub wallet_id: WalletId,
    /// Ciphersuite.
    pub ciphersuite: String,
    /// This enclave's party number.
    pub party: PartyId,
    /// Threshold.
    pub min_signers: u16,
    /// All parties.
    pub parties: Vec<PartyId>,
    /// Share epoch (0 at creation).
    pub epoch: Epoch,
    /// The group's verifying key, serialized by frost.
    pub group_public_key: ByteBuf,
    /// The serialized `PublicKeyPackage`.
    pub public_key_package: ByteBuf,
    /// The confirmations under which this epoch was committed (empty at epoch 0): what a client
    /// hands a cosigner that missed the commit, to roll it forward to the same epoch.
    #[serde(default)]
    pub confirmations: Vec<Confirmation>,
    /// At the provider: its receipt for that commit (`auth::commit_receipt_digest`, signed by its
    /// audit key), what the recovery cosigner needs to commit the same epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt: Option<ByteBuf>,
    /// At the recovery cosigner: the provider key registered at creation, whose receipts it
    /// requires (clients check the provider they talk to still attests it before committing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_key: Option<ByteBuf>,
    /// At the provider: the recovery cosigner's key registered at creation, whose signed
    /// confirmation it requires to commit a refresh (clients check the recovery cosigner they
    /// talk to still attests it before refreshing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_cosigner_key: Option<ByteBuf>,
}

/// Which registered key signed an [`Authorized`](Request::Authorized) request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyRole {
    /// The user's device key (P-256): may use the share (sign, refresh).
    Device,
    /// The offline recovery credential (P-256): may start a recovery and nothing else.
    Recovery,
}

/// A device's keys, registered with the cosigners when the wallet is created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    /// SEC1 P-256 device key.
    pub device_key: ByteBuf,
    /// SEC1 P-256 recovery credential.
    pub recovery_key: ByteBuf,
    /// Device key's signature (r‖s) over `auth::registration_digest`: proof of possession.
    pub device_signature: ByteBuf,
    /// Recovery key's signature (r‖s) over the same digest: proof of possession.
    pub recovery_signature: ByteBuf,
    /// The wallet's spending policy (TOML, `policy::Policy` with the single member `owner`, the
    /// device key), bound into `auth::registration_digest_with`; absent: no policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// The wallet's network name (`psbt::network_from_name`), how the enclave renders addresses
    /// for the policy; bound like `policy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// The provider's audit key (SEC1 P-256), as its attestation document bound it: the
    /// recovery cosigner commits refreshed epochs only with the provider's receipt under it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_key: Option<ByteBuf>,
    /// The recovery cosigner's audit key (SEC1 P-256), as its attestation document bound it: the
    /// provider commits a refresh only with the recovery cosigner's confirmation signed under
    /// it (`auth::confirmation_digest`), so no client can play the recovery cosigner's part.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_cosigner_key: Option<ByteBuf>,
}

/// How the enclave read a PSBT it was asked to sign, and the policy rule that allowed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PsbtEvaluation {
    /// Txid of the transaction.
    pub txid: String,
    /// Inputs minus the outputs paying the wallet's own script (fee included), satoshis.
    pub value_leaving: u64,
    /// Fee, satoshis.
    pub fee: u64,
    /// Outputs paying the wallet's own script, satoshis.
    pub change: u64,
    /// Every other output: (address or `script:<hex>`, satoshis), in output order.
    pub destinations: Vec<(String, u64)>,
    /// The policy rule that allowed the spend (`None`: the wallet has no policy).
    pub rule: Option<String>,
}

/// What a refresh re-shares: the same group, the same threshold, every party.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefreshParams {
    /// The wallet.
    pub wallet_id: WalletId,
    /// Ciphersuite.
    pub ciphersuite: String,
    /// Threshold (unchanged by a refresh).
    pub min_signers: u16,
    /// Every party of the wallet (a refresh never evicts).
    pub parties: Vec<PartyId>,
    /// The epoch being refreshed; the result is `from_epoch + 1`.
    pub from_epoch: Epoch,
}

/// What a repair rebuilds: `participant`'s share at `epoch`, with the help of `helpers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepairParams {
    /// The wallet.
    pub wallet_id: WalletId,
    /// Ciphersuite.
    pub ciphersuite: String,
    /// The epoch of the shares used.
    pub epoch: Epoch,
    /// The helpers (at least the threshold).
    pub helpers: Vec<PartyId>,
    /// The party whose share is rebuilt.
    pub participant: PartyId,
}

/// An enclave's single-use signing commitment made ahead of the message, for one wallet and
/// epoch on one attested session (its nonces live only in that session's memory: gone when the
/// session ends or the enclave restarts). Its id is the challenge of the request that uses it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NextCommitment {
    /// Random; names the commitment in [`Request::Precommitted`].
    pub id: ByteBuf,
    /// The wallet.
    pub wallet_id: WalletId,
    /// The share epoch it signs with.
    pub epoch: Epoch,
    /// Our `SigningCommitments`, serialized by frost.
    pub commitments: ByteBuf,
}

/// Client → enclave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Request {
    /// First request of every session: attest, binding `nonce` and this TLS session.
    Attest {
        /// The client's fresh nonce (32 bytes).
        nonce: ByteBuf,
    },
    /// Start a DKG as party `me`; answered with its round-1 broadcast.
    DkgStart {
        /// The ceremony.
        params: DkgParams,
        /// Our party number.
        me: PartyId,
        /// The operator's enrollment token (`enrollment::EnrollmentToken::to_bytes`), where the
        /// cosigner requires one for wallet creation.
        #[serde(default)]
        enrollment: Option<ByteBuf>,
    },
    /// All round-1 broadcasts (ours included); answered with our sealed round-2 packages.
    DkgRound2 {
        /// The wallet.
        wallet_id: WalletId,
        /// Every party's round-1 message.
        round1: Vec<Round1Message>,
    },
    /// The round-2 packages addressed to us; answered with our confirmation.
    DkgRound3 {
        /// The wallet.
        wallet_id: WalletId,
        /// Packages sealed to us, one from each other party.
        packages: Vec<SealedPackage>,
    },
    /// Every party's confirmation; if all agree, the wallet becomes active and is stored sealed
    /// with the device's registered keys.
    DkgConfirm {
        /// The wallet.
        wallet_id: WalletId,
        /// Every party's confirmation.
        confirmations: Vec<Confirmation>,
        /// The device key and recovery credential to register.
        registration: Registration,
        /// Each cosigner's signature over its confirmation, as it answered it
        /// ([`Response::DkgRound3`]).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        confirmation_signatures: Vec<(PartyId, ByteBuf)>,
    },
    /// A fresh single-use challenge for the next [`Request::Authorized`] on this session.
    Challenge {
        /// The wallet the authorized request will be about.
        wallet_id: WalletId,
    },
    /// A share-using request signed by a registered key over
    /// `auth::request_digest(wallet_id, challenge, request)`.
    Authorized {
        /// The wallet.
        wallet_id: WalletId,
        /// Which key signed.
        role: KeyRole,
        /// P-256 signature (r‖s) by that key.
        signature: ByteBuf,
        /// The inner request, encoded with `wire::encode`.
        request: ByteBuf,
    },
    /// A share-using request signed like [`Request::Authorized`], with the id of one of this
    /// session's [`NextCommitment`]s as its single-use challenge (no `Challenge` round trip).
    /// Only a [`Request::SignNow`] that uses that commitment, or a [`Request::SignPsbtNow`]
    /// (which draws fresh nonces and uses the id only as its challenge), may be sent this way.
    Precommitted {
        /// The wallet.
        wallet_id: WalletId,
        /// Which key signed.
        role: KeyRole,
        /// The [`NextCommitment::id`] used: the challenge of the signature, and the enclave
        /// commitment the signature uses. Taken (gone) whatever the outcome.
        precommitment: ByteBuf,
        /// P-256 signature (r‖s) by that key over
        /// `auth::request_digest(wallet_id, precommitment, request)`.
        signature: ByteBuf,
        /// The inner request, encoded with `wire::encode`.
        request: ByteBuf,
    },
    /// Sign `message` with exactly `signers` in one round trip: the client's fresh commitment
    /// is in the request, the enclave's is the precommitment of [`Request::Precommitted`] (or,
    /// inside `Authorized`, drawn now); answered [`Response::SignedNow`]. Device key (or the
    /// recovery credential at the recovery cosigner), like `SignCommit`.
    SignNow {
        /// The wallet.
        wallet_id: WalletId,
        /// The share epoch to sign with.
        epoch: Epoch,
        /// The message (for BIP-340: the 32-byte sighash).
        message: ByteBuf,
        /// The signing set, us included.
        signers: Vec<PartyId>,
        /// The client's `SigningCommitments` for this signature, serialized by frost.
        commitments: ByteBuf,
    },
    /// Open a signing session for `message` with exactly `signers`; answered with commitments.
    /// Only inside `Authorized` (device key).
    SignCommit {
        /// The wallet.
        wallet_id: WalletId,
        /// The share epoch to sign with.
        epoch: Epoch,
        /// The message (for BIP-340: the 32-byte sighash).
        message: ByteBuf,
        /// The signing set, us included.
        signers: Vec<PartyId>,
    },
    /// Round 2 of a signing session: answered with our signature share, once.
    SignShare {
        /// The session from `SignCommit`.
        session_id: SessionId,
        /// The coordinator's `SigningPackage`, serialized by frost.
        signing_package: ByteBuf,
    },
    /// Public facts about a wallet.
    GetWallet {
        /// The wallet.
        wallet_id: WalletId,
    },
    /// Start a refresh to `from_epoch + 1`; answered with our round-1 broadcast. Only inside
    /// `Authorized` (device key, or the pending device key of a recovery).
    RefreshStart {
        /// The refresh.
        params: RefreshParams,
        /// Our party number.
        me: PartyId,
    },
    /// All refresh round-1 broadcasts; answered with our sealed packages.
    RefreshRound2 {
        /// The wallet.
        wallet_id: WalletId,
        /// Every party's round-1 message.
        round1: Vec<Round1Message>,
    },
    /// The refresh packages addressed to us; answered with our confirmation. The new share is
    /// stored as prepared; the old epoch stays the one in use.
    RefreshRound3 {
        /// The wallet.
        wallet_id: WalletId,
        /// Packages sealed to us.
        packages: Vec<SealedPackage>,
    },
    /// Every party's refresh confirmation: if all agree, the new epoch becomes current (the old
    /// share is kept until `RefreshFinalize`).
    RefreshCommit {
        /// The wallet.
        wallet_id: WalletId,
        /// Every party's confirmation.
        confirmations: Vec<Confirmation>,
        /// At the recovery cosigner: the provider's receipt for this commit
        /// (`auth::commit_receipt_digest`, signed by the provider's audit key).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        provider_receipt: Option<ByteBuf>,
        /// Each cosigner's signature over its confirmation, as it answered it
        /// ([`Response::RefreshRound3`]); the provider requires the recovery cosigner's.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        confirmation_signatures: Vec<(PartyId, ByteBuf)>,
    },
    /// Every party committed `epoch`: delete older shares.
    RefreshFinalize {
        /// The wallet.
        wallet_id: WalletId,
        /// The committed epoch.
        epoch: Epoch,
    },
    /// Start recovering the device's share onto a new device. Only inside `Authorized` by the
    /// recovery credential; registers `new_device_key` as the pending device key.
    RecoverStart {
        /// The wallet.
        wallet_id: WalletId,
        /// The new device's P-256 key (SEC1).
        new_device_key: ByteBuf,
    },
    /// Cancel a recovery in progress: the pending device key is dropped and the registered device
    /// key may act again. Only inside `Authorized` by the recovery credential; answered `Done`.
    RecoverCancel {
        /// The wallet.
        wallet_id: WalletId,
    },
    /// Repair round 1 (helper): answered with our helper key for this repair (HPKE key signed with
    /// our share). Only inside `Authorized` by the pending device key; the repair is then bound
    /// to this session.
    RepairStart {
        /// The repair.
        params: RepairParams,
        /// Our party number.
        me: PartyId,
    },
    /// Repair round 2 (helper): every helper's HPKE key; answered with our deltas, sealed.
    RepairDeltas {
        /// The wallet.
        wallet_id: WalletId,
        /// Helper number → HPKE public key.
        helper_keys: Vec<(PartyId, ByteBuf)>,
    },
    /// Repair round 3 (helper): the deltas addressed to us, one from each *other* helper (each
    /// HPKE ciphertext followed by its sender's share signature); answered with our sigma sealed
    /// to the new device's HPKE key.
    RepairSigma {
        /// The wallet.
        wallet_id: WalletId,
        /// Deltas sealed to us.
        deltas: Vec<SealedPackage>,
        /// The new device's HPKE public key for this repair.
        participant_key: ByteBuf,
    },
    /// Open a signing session for every input of a PSBT (binary, BIP-174 v0) spending the
    /// wallet's own output key: the enclave computes the sighashes, evaluates the wallet's policy
    /// and answers one commitment per input. Only inside `Authorized` (device key).
    SignPsbtCommit {
        /// The wallet.
        wallet_id: WalletId,
        /// The share epoch to sign with.
        epoch: Epoch,
        /// The PSBT.
        psbt: ByteBuf,
        /// The signing set, us included.
        signers: Vec<PartyId>,
    },
    /// Round 2 of a PSBT signing session: one `SigningPackage` per input, in input order;
    /// answered with our shares, once. The spend is recorded before they are released.
    SignPsbtShare {
        /// The session from `PsbtCommitted`.
        session_id: SessionId,
        /// The coordinator's `SigningPackage`s, serialized by frost.
        signing_packages: Vec<ByteBuf>,
    },
    /// Sign every input of a PSBT in one round trip: as [`Request::SignPsbtCommit`] and
    /// [`Request::SignPsbtShare`] at once, the client's fresh commitments (one per input, in
    /// input order) in the request. The enclave evaluates the PSBT and the policy, draws its own
    /// nonces, builds each input's package itself, records the spend and answers
    /// [`Response::SignedPsbtNow`]. Only inside [`Request::Precommitted`] (the commitment's id is
    /// the challenge; its nonces are dropped) or `Authorized`; device key (or the recovery
    /// credential at the recovery cosigner).
    SignPsbtNow {
        /// The wallet.
        wallet_id: WalletId,
        /// The share epoch to sign with.
        epoch: Epoch,
        /// The PSBT.
        psbt: ByteBuf,
        /// The signing set, us included.
        signers: Vec<PartyId>,
        /// The client's `SigningCommitments` for each input, serialized by frost, in input order.
        commitments: Vec<ByteBuf>,
    },
    /// Every party's hello of a threshold ECDSA DKG (ours included); answered
    /// [`Response::EcdsaDkgRound`] with our round-1 message.
    EcdsaDkgHellos {
        /// The wallet.
        wallet_id: WalletId,
        /// One from each party.
        hellos: Vec<EcdsaHello>,
    },
    /// Every party's message of the current round of a threshold ECDSA DKG (ours included);
    /// answered with our next round's message, or after round 3 [`Response::DkgRound3`] (our
    /// confirmation, then [`Request::DkgConfirm`] as for FROST).
    EcdsaDkgRound {
        /// The wallet.
        wallet_id: WalletId,
        /// One from each party.
        messages: Vec<EcdsaRound>,
    },
    /// Every party's hello of a threshold ECDSA wallet's refresh (ours included; the refresh
    /// began with `RefreshStart`, answered [`Response::EcdsaDkgHello`]); answered
    /// [`Response::EcdsaDkgRound`] with our round-1 message. Only from the session that started
    /// the refresh.
    EcdsaRefreshHellos {
        /// The wallet.
        wallet_id: WalletId,
        /// One from each party.
        hellos: Vec<EcdsaHello>,
    },
    /// Every party's message of the current round of a threshold ECDSA refresh (ours included);
    /// answered with our next round's message, or after round 3 [`Response::RefreshRound3`] (our
    /// confirmation: the new share is prepared, then `RefreshCommit` as for FROST).
    EcdsaRefreshRound {
        /// The wallet.
        wallet_id: WalletId,
        /// One from each party.
        messages: Vec<EcdsaRound>,
    },
    /// Sign an Ethereum transaction with a threshold ECDSA wallet: its signing payload (EIP-155
    /// or EIP-1559, as `cosigner_eth::UnsignedTx::signing_payload`), from which the enclave
    /// computes what it signs, and the client's round-1 message; answered
    /// [`Response::EthSignRound`]. Only inside `Authorized`; device key (or the recovery
    /// credential at the recovery cosigner), like `SignCommit`.
    EthSignStart {
        /// The wallet.
        wallet_id: WalletId,
        /// The share epoch to sign with.
        epoch: Epoch,
        /// The transaction's signing payload.
        tx: ByteBuf,
        /// The signing set, us included.
        signers: Vec<PartyId>,
        /// The client's fresh 32 bytes for the DKLs23 session id (`ecdsa::sign::sign_id`).
        nonce: ByteBuf,
        /// The client's round-1 message.
        round1: EcdsaSignMessage,
    },
    /// Rounds 2 and 3 of an Ethereum signing session; answered [`Response::EthSigned`], once.
    /// The signature is recorded in the audit log before it is released.
    EthSignFinish {
        /// The session from [`Response::EthSignRound`].
        session_id: SessionId,
        /// The client's round-2 message.
        round2: EcdsaSignMessage,
        /// The client's round-3 broadcast.
        round3: EcdsaSignMessage,
    },
    /// Replace (`Some`) or remove (`None`) a personal wallet's policy. Only inside `Authorized`
    /// by the recovery credential: the device key alone cannot lift its own limit.
    SetPolicy {
        /// The wallet.
        wallet_id: WalletId,
        /// The new policy (TOML), or none.
        policy: Option<String>,
    },
    /// The policy in force of a DAO wallet (public to its members; they propose changes to it).
    DaoPolicy {
        /// The wallet.
        wallet_id: WalletId,
    },
    /// DAO ceremonies: signed mailbox envelopes of one topic, delivered by whichever member
    /// relays them (they authenticate themselves); answered with every envelope the enclave has
    /// produced for the topic, for the member to post.
    Mailbox {
        /// The topic (16 bytes).
        topic: ByteBuf,
        /// Encoded `mailbox::Envelope`s.
        envelopes: Vec<ByteBuf>,
        /// The first of the enclave's envelopes for the topic to answer with (0: from the
        /// first): a courier that has the first `from` reads only what is new. The answer is
        /// cut to fit a frame (`Response::Mailbox::more`).
        #[serde(default, skip_serializing_if = "is_zero_u32")]
        from: u32,
    },
}

impl Request {
    /// The variant's name, for logs and errors (never the contents).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Attest { .. } => "Attest",
            Self::DkgStart { .. } => "DkgStart",
            Self::DkgRound2 { .. } => "DkgRound2",
            Self::DkgRound3 { .. } => "DkgRound3",
            Self::DkgConfirm { .. } => "DkgConfirm",
            Self::SignCommit { .. } => "SignCommit",
            Self::Precommitted { .. } => "Precommitted",
            Self::SignNow { .. } => "SignNow",
            Self::SignShare { .. } => "SignShare",
            Self::GetWallet { .. } => "GetWallet",
            Self::Challenge { .. } => "Challenge",
            Self::Authorized { .. } => "Authorized",
            Self::RefreshStart { .. } => "RefreshStart",
            Self::RefreshRound2 { .. } => "RefreshRound2",
            Self::RefreshRound3 { .. } => "RefreshRound3",
            Self::RefreshCommit { .. } => "RefreshCommit",
            Self::RefreshFinalize { .. } => "RefreshFinalize",
            Self::RecoverStart { .. } => "RecoverStart",
            Self::RecoverCancel { .. } => "RecoverCancel",
            Self::RepairStart { .. } => "RepairStart",
            Self::RepairDeltas { .. } => "RepairDeltas",
            Self::RepairSigma { .. } => "RepairSigma",
            Self::Mailbox { .. } => "Mailbox",
            Self::DaoPolicy { .. } => "DaoPolicy",
            Self::SignPsbtCommit { .. } => "SignPsbtCommit",
            Self::SignPsbtShare { .. } => "SignPsbtShare",
            Self::SignPsbtNow { .. } => "SignPsbtNow",
            Self::SetPolicy { .. } => "SetPolicy",
            Self::EcdsaDkgHellos { .. } => "EcdsaDkgHellos",
            Self::EcdsaDkgRound { .. } => "EcdsaDkgRound",
            Self::EcdsaRefreshHellos { .. } => "EcdsaRefreshHellos",
            Self::EcdsaRefreshRound { .. } => "EcdsaRefreshRound",
            Self::EthSignStart { .. } => "EthSignStart",
            Self::EthSignFinish { .. } => "EthSignFinish",
        }
    }
}

/// Enclave → client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Response {
    /// The attestation document.
    Attested {
        /// COSE_Sign1 bytes.
        document: ByteBuf,
    },
    /// Our round-1 broadcast.
    DkgRound1 {
        /// It.
        message: Round1Message,
    },
    /// Our round-2 packages, one sealed to each other party.
    DkgRound2 {
        /// They.
        packages: Vec<SealedPackage>,
    },
    /// Our confirmation.
    DkgRound3 {
        /// It.
        confirmation: Confirmation,
        /// Our signature over it by our attested audit key (`auth::confirmation_digest`), for
        /// the other cosigner; absent from a cosigner without an audit key.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signature: Option<ByteBuf>,
    },
    /// The wallet is active.
    DkgDone {
        /// What was stored.
        wallet: WalletInfo,
    },
    /// Signing round 1.
    SignCommitted {
        /// Names this session in `SignShare`.
        session_id: SessionId,
        /// Our `SigningCommitments`, serialized by frost.
        commitments: ByteBuf,
    },
    /// Signing round 2.
    SignatureShare {
        /// Our `SignatureShare`, serialized by frost.
        share: ByteBuf,
    },
    /// A [`Request::SignNow`] signed: our commitment and share, the receipt, and the next
    /// commitment of this session.
    SignedNow {
        /// Our `SigningCommitments` used (the precommitment's, or drawn for this request).
        commitments: ByteBuf,
        /// Our `SignatureShare`, serialized by frost.
        share: ByteBuf,
        /// The audit entry of this signature signed by our audit key, the key the session's
        /// attestation document binds (`audit::AuditRecord`, CBOR): proof of which measured
        /// code co-signed what and when.
        receipt: ByteBuf,
        /// Our next single-use commitment for this wallet on this session, if we made one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        next: Option<NextCommitment>,
    },
    /// Wallet facts.
    Wallet {
        /// They.
        wallet: WalletInfo,
    },
    /// A single-use challenge.
    Challenge {
        /// 32 random bytes.
        challenge: ByteBuf,
    },
    /// Refresh round 1.
    RefreshRound1 {
        /// Our broadcast.
        message: Round1Message,
    },
    /// Refresh round 2.
    RefreshRound2 {
        /// Our sealed packages.
        packages: Vec<SealedPackage>,
    },
    /// Refresh round 3.
    RefreshRound3 {
        /// Our confirmation.
        confirmation: Confirmation,
        /// Our signature over it by our attested audit key (`auth::confirmation_digest`), for
        /// the other cosigner; absent from a cosigner without an audit key.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signature: Option<ByteBuf>,
    },
    /// The refresh is committed here.
    RefreshCommitted {
        /// The wallet at its new epoch.
        wallet: WalletInfo,
    },
    /// Done.
    Done,
    /// A recovery is approved by this cosigner.
    RecoverApproved {
        /// The epoch the repair must use.
        epoch: Epoch,
        /// The new device key is already the wallet's device key: this recovery completed
        /// (a retry learns it and finishes on its own side only).
        #[serde(default)]
        completed: bool,
    },
    /// Repair round 1: our helper key.
    RepairKey {
        /// The HPKE public key followed by a signature by our share over it and the repair.
        hpke_public_key: ByteBuf,
    },
    /// Repair round 2: our deltas, each sealed to its helper.
    RepairDeltas {
        /// They.
        deltas: Vec<SealedPackage>,
    },
    /// Repair round 3: our sigma, sealed to the new device.
    RepairSigma {
        /// It.
        sigma: SealedPackage,
    },
    /// PSBT signing round 1: one commitment per input, and the enclave's reading of the PSBT.
    PsbtCommitted {
        /// Names this session in `SignPsbtShare`.
        session_id: SessionId,
        /// Our `SigningCommitments` for each input, in input order.
        commitments: Vec<ByteBuf>,
        /// What the enclave computed, and the rule that allowed it.
        evaluation: PsbtEvaluation,
    },
    /// PSBT signing round 2: our signature share for each input, in input order.
    PsbtShares {
        /// They.
        shares: Vec<ByteBuf>,
        /// The audit entry of this spend signed by our audit key (`audit::AuditRecord`, CBOR):
        /// the receipt, as [`Response::SignedNow`] carries one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        receipt: Option<ByteBuf>,
    },
    /// A [`Request::SignPsbtNow`] signed: our commitment and share for each input (in input
    /// order), our reading of the PSBT, the receipt of the spend and the next commitment of this
    /// session.
    SignedPsbtNow {
        /// Our `SigningCommitments` for each input.
        commitments: Vec<ByteBuf>,
        /// Our `SignatureShare` for each input.
        shares: Vec<ByteBuf>,
        /// What the enclave computed, and the rule that allowed it.
        evaluation: PsbtEvaluation,
        /// The audit entry of this spend signed by our audit key (`audit::AuditRecord`, CBOR).
        receipt: ByteBuf,
        /// Our next single-use commitment for this wallet on this session, if we made one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        next: Option<NextCommitment>,
    },
    /// A DAO wallet's policy in force.
    DaoPolicy {
        /// The policy (TOML text).
        policy: String,
        /// Its version (1 at creation, +1 per change).
        version: u64,
    },
    /// The enclave's envelopes for a mailbox topic, and what it refused of the delivery.
    Mailbox {
        /// Encoded `mailbox::Envelope`s the enclave signed for the topic, from the `from`-th.
        envelopes: Vec<ByteBuf>,
        /// One line per delivered envelope it refused, and why (culprits named).
        notes: Vec<String>,
        /// The index of the first envelope answered: the request's `from`, or 0 when the enclave
        /// has fewer (it restarted and its envelopes for the topic are new ones).
        #[serde(default, skip_serializing_if = "is_zero_u32")]
        from: u32,
        /// More envelopes follow these: ask again from `from + envelopes.len()`.
        #[serde(default, skip_serializing_if = "is_false")]
        more: bool,
        /// Which run of the topic's ceremony these envelopes are of (8 random bytes, new each
        /// time the enclave founds it): a courier that sees it change reads from the first again.
        #[serde(default, skip_serializing_if = "is_empty_bytes")]
        outbox: ByteBuf,
    },
    /// Our hello of a threshold ECDSA DKG (the answer to a `DkgStart` naming
    /// [`SUITE_SECP256K1_ECDSA`]).
    EcdsaDkgHello {
        /// It.
        hello: EcdsaHello,
    },
    /// Our message of the next round of a threshold ECDSA DKG.
    EcdsaDkgRound {
        /// It.
        message: EcdsaRound,
    },
    /// Our rounds 1 and 2 of an Ethereum signing session.
    EthSignRound {
        /// The session, for [`Request::EthSignFinish`].
        session_id: SessionId,
        /// Our round-1 message.
        round1: EcdsaSignMessage,
        /// Our round-2 message.
        round2: EcdsaSignMessage,
    },
    /// The signed transaction.
    EthSigned {
        /// Our round-3 broadcast (the client assembles and checks the same signature).
        round3: EcdsaSignMessage,
        /// The transaction, signed (EIP-2718 encoding, what `eth_sendRawTransaction` takes).
        raw_tx: ByteBuf,
        /// Its hash (Keccak-256 of `raw_tx`).
        tx_hash: ByteBuf,
        /// The audit entry of this signature signed by our audit key (`audit::AuditRecord`, CBOR).
        receipt: ByteBuf,
    },
    /// A threshold ECDSA wallet's repair (`RepairStart` by the recovering device's key): our
    /// masked term of the device's share (`ecdsa::repair::term`, postcard), for the recovering
    /// device only.
    EcdsaRepairTerm {
        /// It.
        term: ByteBuf,
    },
    /// The request was refused or failed.
    Error(WireError),
}

/// Why a request failed, as the peer reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{kind:?}: {message}")]
pub struct WireError {
    /// The class of failure.
    pub kind: ErrorKind,
    /// One line for humans.
    pub message: String,
}

/// Classes of failure, by who is at fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The request is malformed or not allowed now (e.g. anything before `Attest`).
    BadRequest,
    /// The wallet or session does not exist (or no longer: a consumed signing session).
    NotFound,
    /// A ceremony check failed: a participant misbehaved or the parties disagree.
    Ceremony,
    /// Stored state failed its integrity check (tampered or foreign sealed blob).
    Integrity,
    /// The server failed.
    Internal,
    /// Retryable: another ceremony or write of this wallet is in progress (another session's
    /// ceremony that has not expired, or a concurrent state write). Nothing changed; try again.
    Busy,
    /// The request is well formed but its signer may not make it: no or a stale challenge, a
    /// signature by no registered key, a revoked or suspended key, a request the key's role may
    /// not send (docs/lifecycle.md), or a ceremony or session that belongs to another session.
    /// Nothing changed; the same request will be refused again.
    Unauthorized,
}

impl ErrorKind {
    /// Whether the same request may succeed if simply sent again later.
    pub fn is_retryable(self) -> bool {
        matches!(self, Self::Busy)
    }
}

impl WireError {
    /// Builds an error.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

/// Most pairs one [`StoreRequest::PutMany`] carries.
pub const MAX_PUT_MANY: usize = 256;

/// Enclave → parent: storage of sealed blobs and public data. The parent is untrusted: it may
/// lose, alter or replay anything, and the enclave checks everything it reads back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum StoreRequest {
    /// Store `value` under `key`, replacing any previous value.
    Put {
        /// Key (printable ASCII, at most 256 bytes).
        key: String,
        /// Value.
        value: ByteBuf,
    },
    /// Store every `(key, value)` of `entries` at once, durable together (one transaction, one
    /// sync): how concurrent writers share one disk write (group commit).
    PutMany {
        /// At most [`MAX_PUT_MANY`] pairs, each as [`StoreRequest::Put`] takes it.
        entries: Vec<(String, ByteBuf)>,
    },
    /// Read `key`.
    Get {
        /// Key.
        key: String,
    },
    /// Remove `key` (absent is not an error).
    Delete {
        /// Key.
        key: String,
    },
    /// Every key starting with `prefix`, sorted.
    List {
        /// Prefix.
        prefix: String,
    },
    /// The AWS credentials the parent holds (its instance role's), for the enclave's KMS calls.
    /// Not a secret from the parent: the KMS key policy, not the credentials, keeps the parent
    /// from decrypting (docs/kms.md).
    AwsCredentials,
    /// The enclave's log events, for the parent to write as its own lines (a Nitro enclave has no
    /// other way out). Answered `Done`. Sent on a connection of their own, never on the store's
    /// (docs/architecture.md, "Logs and metrics"); the parent checks every field against the
    /// `MAX_LOG_*` limits and refuses the batch, naming the field, if one is over.
    Log {
        /// The enclave instance that sends them (its configuration's `instance`).
        instance: u32,
        /// At most [`MAX_LOG_RECORDS`], oldest first.
        records: Vec<LogRecord>,
        /// Events the enclave dropped since its previous batch (its queue was full).
        dropped: u64,
    },
    /// The enclave's counters and latency histograms since it started, sent about once a second:
    /// the parent keeps the latest per instance and serves them on `/metrics`. Answered `Done`.
    Metrics {
        /// The enclave instance that sends them.
        instance: u32,
        /// Everything counted so far.
        snapshot: MetricsSnapshot,
    },
    /// Remove every key of `keys` (absent ones are not an error), in one write: the blobs a
    /// committed write replaced, which the enclave discards in batches off its requests' path.
    /// Answered `Done`.
    DeleteMany {
        /// At most [`MAX_PUT_MANY`] keys.
        keys: Vec<String>,
    },
}

/// Most records one [`StoreRequest::Log`] carries.
pub const MAX_LOG_RECORDS: usize = 256;
/// Longest [`LogRecord::message`], in bytes.
pub const MAX_LOG_MESSAGE: usize = 2048;
/// Longest [`LogRecord::target`], in bytes.
pub const MAX_LOG_TARGET: usize = 128;
/// Most [`LogRecord::fields`].
pub const MAX_LOG_FIELDS: usize = 16;
/// Longest field name, in bytes (`[a-z0-9_]`, starting with a letter).
pub const MAX_LOG_FIELD_NAME: usize = 32;
/// Longest field value, in bytes.
pub const MAX_LOG_FIELD_VALUE: usize = 512;

/// A log event's severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum LogLevel {
    /// Something failed.
    Error,
    /// Something is wrong or dangerous (an insecure switch).
    Warn,
    /// Ordinary operation.
    Info,
    /// Detail for diagnosis.
    Debug,
    /// More detail.
    Trace,
}

impl LogLevel {
    /// Its name in log lines (`INFO`, as `tracing` writes it).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Error => "ERROR",
            Self::Warn => "WARN",
            Self::Info => "INFO",
            Self::Debug => "DEBUG",
            Self::Trace => "TRACE",
        }
    }
}

/// One of the enclave's log events. Never carries secrets, shares, PINs or request bodies: the
/// enclave logs request kinds, outcomes and wallet ids only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogRecord {
    /// When it happened, milliseconds since the Unix epoch by the enclave's clock.
    pub time_ms: u64,
    /// Severity.
    pub level: LogLevel,
    /// Where in the enclave (a module path), at most [`MAX_LOG_TARGET`] bytes.
    pub target: String,
    /// One line for people, at most [`MAX_LOG_MESSAGE`] bytes.
    pub message: String,
    /// Named values (name, value), at most [`MAX_LOG_FIELDS`].
    pub fields: Vec<(String, String)>,
}

impl LogRecord {
    /// [`LogRecord::time_ms`] as RFC 3339 UTC with milliseconds, as log lines write it (the
    /// civil date from the day count: Howard Hinnant's `civil_from_days`).
    pub fn timestamp(&self) -> String {
        let ms = self.time_ms;
        let secs = ms / 1000;
        let days = i64::try_from(secs / 86_400).unwrap_or(0);
        let rem = secs % 86_400;
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        format!(
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
            rem / 3600,
            rem % 3600 / 60,
            rem % 60,
            ms % 1000
        )
    }
}

/// Upper bounds (inclusive, microseconds) of the latency histograms' buckets, as Prometheus
/// `le` labels: 0.5 ms to 10 s. A histogram carries one count per bound and one over the last.
pub const LATENCY_BUCKETS_MICROS: [u64; 14] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000,
];
/// Most counters plus histograms one [`MetricsSnapshot`] carries.
pub const MAX_METRIC_SERIES: usize = 512;
/// Longest label value, in bytes (`[A-Za-z0-9_]`).
pub const MAX_LABEL_VALUE: usize = 48;

/// The enclave's counters ([`StoreRequest::Metrics`]): each has fixed label names, the values
/// travel in [`CounterSample::labels`] in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum EnclaveCounter {
    /// Requests answered, by request kind and outcome (`ok` or the error kind).
    Requests,
    /// Signatures made, by scheme.
    Signatures,
    /// Ceremonies completed, by ceremony.
    Ceremonies,
    /// Requests refused, by reason (the error kind).
    Refusals,
    /// Client connections, by what happened to them.
    Connections,
    /// Log events the enclave dropped (its queue to the parent was full).
    LogsDropped,
}

impl EnclaveCounter {
    /// The label names, in the order of [`CounterSample::labels`].
    pub fn label_names(self) -> &'static [&'static str] {
        match self {
            Self::Requests => &["kind", "outcome"],
            Self::Signatures => &["scheme"],
            Self::Ceremonies => &["ceremony"],
            Self::Refusals => &["reason"],
            Self::Connections => &["event"],
            Self::LogsDropped => &[],
        }
    }
}

/// The enclave's latency histograms, each over [`LATENCY_BUCKETS_MICROS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum EnclaveHistogram {
    /// From a request decoded to its response made, by request kind.
    Request,
    /// One call to the parent's store, by operation.
    Store,
    /// One call to the rollback anchor, by operation.
    Anchor,
}

impl EnclaveHistogram {
    /// The label names, in the order of [`HistogramSample::labels`].
    pub fn label_names(self) -> &'static [&'static str] {
        match self {
            Self::Request => &["kind"],
            Self::Store | Self::Anchor => &["op"],
        }
    }
}

/// One counter's value for one set of label values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CounterSample {
    /// Which counter.
    pub counter: EnclaveCounter,
    /// One value per [`EnclaveCounter::label_names`].
    pub labels: Vec<String>,
    /// The count since the enclave started.
    pub value: u64,
}

/// One histogram for one set of label values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistogramSample {
    /// Which histogram.
    pub histogram: EnclaveHistogram,
    /// One value per [`EnclaveHistogram::label_names`].
    pub labels: Vec<String>,
    /// Observations per bucket (not cumulative): one per [`LATENCY_BUCKETS_MICROS`] bound, then
    /// those over the last bound.
    pub buckets: Vec<u64>,
    /// The sum of the observations, in microseconds.
    pub sum_micros: u64,
}

/// What [`StoreRequest::Metrics`] carries.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSnapshot {
    /// Whether the enclave's attester has produced a document since it started (the parent's
    /// `/readyz` needs one).
    pub attested: bool,
    /// Client connections open now.
    pub connections_open: u64,
    /// Counters, at most [`MAX_METRIC_SERIES`] with the histograms.
    pub counters: Vec<CounterSample>,
    /// Histograms.
    pub histograms: Vec<HistogramSample>,
}

/// Parent → enclave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum StoreResponse {
    /// Done.
    Done,
    /// The value, if the key exists.
    Value {
        /// It.
        value: Option<ByteBuf>,
    },
    /// Keys.
    Keys {
        /// They.
        keys: Vec<String>,
    },
    /// The answer to [`StoreRequest::AwsCredentials`].
    AwsCredentials {
        /// The access key id.
        access_key_id: String,
        /// The secret access key.
        secret_access_key: SecretString,
        /// The session token of temporary credentials (an instance role's always have one).
        session_token: Option<SecretString>,
        /// When they stop working, in seconds since the Unix epoch (`None`: long-term keys).
        expiration: Option<u64>,
    },
    /// The store failed.
    Error(WireError),
}

/// A secret text on the wire (AWS credentials): zeroized on drop, `<redacted>` in `Debug`.
#[derive(
    Clone, PartialEq, Eq, Serialize, Deserialize, zeroize::Zeroize, zeroize::ZeroizeOnDrop,
)]
#[serde(transparent)]
pub struct SecretString(String);

impl SecretString {
    /// Wraps a secret.
    pub fn new(secret: String) -> Self {
        Self(secret)
    }

    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A body with its protocol version.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope<T> {
    v: u16,
    body: T,
}

/// Encodes a message in its versioned envelope.
pub fn encode<T: Serialize>(body: &T) -> Result<Vec<u8>> {
    encode_at(PROTOCOL_VERSION, body)
}

/// Encodes `body` in the envelope of wire version `v`.
fn encode_at<T: Serialize>(v: u16, body: &T) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    ciborium::ser::into_writer(&Envelope { v, body }, &mut out).map_err(ProtocolError::encoding)?;
    Ok(out)
}

/// The wire version founding messages' identities are computed at (see [`encode_identity`]).
pub const IDENTITY_VERSION: u16 = 1;

/// The bytes a founding message's identity is hashed over (a DAO invitation's hash and so its
/// wallet id and topic, a signing request's or a proposal's hash and topic): the message in the
/// envelope of wire version [`IDENTITY_VERSION`], whatever the current version. An identity is
/// stored (wallet ids, topics, approvals bind it), so a wire version bump that leaves a message's
/// body as it was must not change it.
pub fn encode_identity<T: Serialize>(body: &T) -> Result<Vec<u8>> {
    encode_at(IDENTITY_VERSION, body)
}

/// Decodes a message kept from an earlier session (a wallet file's founding message): as
/// [`decode`], but any version from [`IDENTITY_VERSION`] to the current one is accepted, so long
/// as the body decodes.
pub fn decode_stored<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    decode_versions(bytes, IDENTITY_VERSION..=PROTOCOL_VERSION)
}

/// Decodes a message, checking the version and that nothing trails it.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    decode_versions(bytes, PROTOCOL_VERSION..=PROTOCOL_VERSION)
}

/// Decodes a message of a wire version in `accepted`, with nothing trailing it.
fn decode_versions<T: DeserializeOwned>(
    bytes: &[u8],
    accepted: std::ops::RangeInclusive<u16>,
) -> Result<T> {
    let mut reader = bytes;
    let envelope: Envelope<T> =
        ciborium::de::from_reader_with_recursion_limit(&mut reader, RECURSION_LIMIT)
            .map_err(ProtocolError::encoding)?;
    if !reader.is_empty() {
        return Err(ProtocolError::encoding("trailing bytes after the message"));
    }
    if !accepted.contains(&envelope.v) {
        return Err(ProtocolError::Version {
            expected: PROTOCOL_VERSION,
            actual: envelope.v,
        });
    }
    Ok(envelope.body)
}

/// Store keys: printable ASCII without spaces, 1..=256 bytes (the parent checks it too).
pub fn valid_store_key(key: &str) -> bool {
    (1..=256).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic())
}

/// Whether a count is 0 (left out of the encoding, so messages without it encode as before).
fn is_zero_u32(n: &u32) -> bool {
    *n == 0
}

/// Whether a byte string is empty (left out of the encoding).
fn is_empty_bytes(b: &ByteBuf) -> bool {
    b.is_empty()
}

/// Whether a flag is unset (left out of the encoding).
fn is_false(b: &bool) -> bool {
    !*b
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;
    use crate::id::pid;

    #[test]
    fn messages_round_trip() {
        let wallet_id = WalletId([9; 16]);
        let requests = vec![
            Request::Attest {
                nonce: ByteBuf::from(vec![1; 32]),
            },
            Request::DkgStart {
                params: DkgParams {
                    wallet_id,
                    ciphersuite: SUITE_SECP256K1_TR.into(),
                    min_signers: 2,
                    parties: vec![pid(1), pid(2), pid(3)],
                },
                me: pid(2),
                enrollment: None,
            },
            Request::SignShare {
                session_id: SessionId([3; 16]),
                signing_package: ByteBuf::from(vec![4; 100]),
            },
            Request::SignPsbtCommit {
                wallet_id,
                epoch: Epoch(1),
                psbt: ByteBuf::from(b"psbt\xff".to_vec()),
                signers: vec![pid(1), pid(2)],
            },
            Request::SignPsbtShare {
                session_id: SessionId([3; 16]),
                signing_packages: vec![ByteBuf::from(vec![4; 100]); 2],
            },
            Request::SetPolicy {
                wallet_id,
                policy: None,
            },
        ];
        for r in requests {
            assert_eq!(decode::<Request>(&encode(&r).unwrap()).unwrap(), r);
        }
        let err = Response::Error(WireError::new(ErrorKind::NotFound, "no such wallet"));
        assert_eq!(decode::<Response>(&encode(&err).unwrap()).unwrap(), err);
    }

    #[test]
    fn a_registration_without_terms_encodes_as_before() {
        let plain = Registration {
            device_key: ByteBuf::from(vec![2; 33]),
            recovery_key: ByteBuf::from(vec![3; 33]),
            device_signature: ByteBuf::from(vec![4; 64]),
            recovery_signature: ByteBuf::from(vec![5; 64]),
            policy: None,
            network: None,
            provider_key: None,
            recovery_cosigner_key: None,
        };
        let encoded = encode(&plain).unwrap();
        // No field names for absent terms: an enclave that predates them still reads it.
        assert!(!encoded.windows(6).any(|w| w == b"policy"));
        assert_eq!(decode::<Registration>(&encoded).unwrap(), plain);
        let with = Registration {
            policy: Some("[[rule]]".into()),
            network: Some("regtest".into()),
            ..plain
        };
        assert_eq!(
            decode::<Registration>(&encode(&with).unwrap()).unwrap(),
            with
        );
    }

    #[test]
    fn version_and_garbage_are_refused() {
        let mut other = Vec::new();
        ciborium::ser::into_writer(
            &Envelope {
                v: 99,
                body: Request::GetWallet {
                    wallet_id: WalletId([0; 16]),
                },
            },
            &mut other,
        )
        .unwrap();
        assert!(matches!(
            decode::<Request>(&other),
            Err(ProtocolError::Version { actual: 99, .. })
        ));
        for garbage in [&[][..], &[0xff], &[0xa0], &[0x84, 1, 2, 3, 4]] {
            assert!(decode::<Request>(garbage).is_err());
        }
        let mut trailing = encode(&Request::Attest {
            nonce: ByteBuf::new(),
        })
        .unwrap();
        trailing.push(0);
        assert!(decode::<Request>(&trailing).is_err());
    }

    #[test]
    fn session_ids_of_the_wrong_length_do_not_decode() {
        let valid = encode(&Request::SignShare {
            session_id: SessionId([0xa6; 16]),
            signing_package: ByteBuf::from(vec![2]),
        })
        .unwrap();
        assert!(decode::<Request>(&valid).is_ok());
        for len in [0, 1, 15, 17, 32] {
            let mut value: ciborium::Value = ciborium::from_reader(valid.as_slice()).unwrap();
            assert!(replace_bytes(&mut value, &[0xa6; 16], vec![0xa6; len]));
            let mut bytes = Vec::new();
            ciborium::into_writer(&value, &mut bytes).unwrap();
            assert!(
                decode::<Request>(&bytes).is_err(),
                "session id of {len} bytes"
            );
        }
    }

    /// Replaces the byte string `old` inside `value` by `new`; whether it was found.
    fn replace_bytes(value: &mut ciborium::Value, old: &[u8], new: Vec<u8>) -> bool {
        use ciborium::Value;
        match value {
            Value::Bytes(b) if b.as_slice() == old => {
                *b = new;
                true
            }
            Value::Array(items) => items.iter_mut().any(|v| replace_bytes(v, old, new.clone())),
            Value::Map(entries) => entries
                .iter_mut()
                .any(|(_, v)| replace_bytes(v, old, new.clone())),
            Value::Tag(_, inner) => replace_bytes(inner, old, new),
            _ => false,
        }
    }

    #[test]
    fn kept_messages_of_an_earlier_version_read_and_identities_stay() {
        let request = Request::GetWallet {
            wallet_id: WalletId([5; 16]),
        };
        let at = |v: u16| {
            let mut out = Vec::new();
            ciborium::ser::into_writer(
                &Envelope {
                    v,
                    body: request.clone(),
                },
                &mut out,
            )
            .unwrap();
            out
        };
        // What version 1 wrote is what an identity is hashed over, whatever the current version.
        assert_eq!(encode_identity(&request).unwrap(), at(IDENTITY_VERSION));
        assert_ne!(
            encode_identity(&request).unwrap(),
            encode(&request).unwrap()
        );
        // A kept message of version 1 reads; the live decoder refuses it; no other version reads.
        assert_eq!(decode_stored::<Request>(&at(1)).unwrap(), request);
        assert_eq!(
            decode_stored::<Request>(&at(PROTOCOL_VERSION)).unwrap(),
            request
        );
        assert!(decode::<Request>(&at(1)).is_err());
        for v in [0, PROTOCOL_VERSION + 1] {
            assert!(matches!(
                decode_stored::<Request>(&at(v)),
                Err(ProtocolError::Version { .. })
            ));
        }
    }

    #[test]
    fn wallet_ids_parse_strictly() {
        let id = WalletId([0xab; 16]);
        assert_eq!(WalletId::from_hex(&id.to_hex()).unwrap(), id);
        for bad in ["", "ab", "zz".repeat(16).as_str(), "ab".repeat(17).as_str()] {
            assert!(WalletId::from_hex(bad).is_err());
        }
    }

    #[test]
    fn store_keys() {
        assert!(valid_store_key("wallet/ab/share/2/0"));
        assert!(!valid_store_key(""));
        assert!(!valid_store_key("a b"));
        assert!(!valid_store_key(&"k".repeat(257)));
    }
}
