//! Multi-member (DAO) wallets: who holds which FROST parties, and the messages members and the
//! provider exchange through the untrusted mailbox ([`crate::mailbox`]).
//!
//! # Weights
//!
//! One FROST key has one threshold, but a DAO's policy has tiers (3, 4 or 5 approvals). The tiers
//! are enforced by the provider, so the provider must be mandatory: no set of members may sign
//! without it, and the provider plus the smallest tier must be able to. With `n` members holding
//! one party each and the policy's smallest tier `k_min`, the provider holds `w = n − k_min + 1`
//! parties and the threshold is `t = n + 1`:
//!
//! * all `n` members together hold `n < t` parties: no signature without the provider;
//! * the provider and `k_min` members hold `n − k_min + 1 + k_min = t`: the smallest tier signs;
//! * the provider and `k_min − 1` members hold `t − 1`: even a compromised provider needs `k_min`
//!   members.
//!
//! The seed's DAO (n = 5, tiers 3/4/5) gives `w = 3`, `t = 6`, 8 parties: members are parties 1–5
//! (in the members file's order), the provider is 6, 7 and 8. Larger tiers add members to the
//! signing set beyond the threshold, which FROST allows; the provider only contributes its shares
//! once the tier's approvals are in.
//!
//! # Ceremonies
//!
//! Every message is a [`DaoMessage`] inside a signed [`Envelope`](crate::mailbox::Envelope). The
//! topic of a DKG is derived from its [`Invitation`] (so every message binds the exact members,
//! policy, provider key and threshold); the topic of a signature from its [`SignRequest`] (so
//! every approval binds the exact PSBT); the topic of a share refresh from its
//! [`refresh::RefreshProposal`]. See [`dkg`], [`sign`] and [`refresh`].
//!
//! A member's process may stop at any point of a DKG or a signature and run again: DKG messages
//! carry an *attempt* and signing messages a *round*, so that a participant that lost its round
//! secrets or nonces (never written down) makes the ceremony go on with fresh ones instead of
//! reusing any ([`dkg`], [`sign`]).

pub mod dkg;
pub mod ecdsa;
pub mod quorum;
pub mod refresh;
pub mod sign;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use sha2::{Digest, Sha256};

use crate::auth::normalise_public_key;
use crate::error::{ProtocolError, Result};
use crate::id::Epoch;
use crate::id::PartyId;
use crate::mailbox::Topic;
use crate::policy::{Chain, Member, NETWORK_ETHEREUM, Policy};
use crate::psbt::{Network, network_from_name};
use crate::wire::{self, DkgParams, WalletId};

/// Most members a DAO wallet may have (the provider's weight adds to the FROST party count).
pub const MAX_MEMBERS: usize = 64;
/// Most parties (members and the provider's weight) of an Ethereum treasury.
pub const MAX_ECDSA_PARTIES: usize = 12;
/// Longest policy text accepted.
pub const MAX_POLICY_LEN: usize = 64 * 1024;

/// A member as named in an invitation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberEntry {
    /// Display name (unique in the wallet).
    pub name: String,
    /// SEC1 compressed P-256 device key.
    pub device_key: ByteBuf,
}

/// What the creator proposes: members, policy, provider, network. Signed by the creator (a
/// member); its hash is the DKG's topic and the wallet's id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Invitation {
    /// Members, in party order (member `i` is party `i + 1`).
    pub members: Vec<MemberEntry>,
    /// The policy (TOML text, see [`crate::policy`]).
    pub policy: String,
    /// The provider's identity key (SEC1 P-256), as bound in its attestation document.
    pub provider_key: ByteBuf,
    /// Bitcoin network name, or `"ethereum"` for an Ethereum treasury.
    pub network: String,
    /// The threshold scheme: FROST's ciphersuite ID ([`wire::SUITE_SECP256K1_TR`]) for Bitcoin,
    /// [`wire::SUITE_SECP256K1_ECDSA`] (DKLs23 threshold ECDSA) for Ethereum.
    pub ciphersuite: String,
    /// When it was made (ms since the Unix epoch).
    pub created_ms: u64,
    /// 16 random bytes: two DAOs with the same members and policy are different wallets.
    pub nonce: ByteBuf,
    /// Where the mailbox is (a hint for members; not security relevant).
    pub mailbox: String,
    /// Where the provider is (a hint for members; not security relevant).
    pub provider: String,
}

/// The wallet an invitation describes, checked: parties, weights, threshold, policy.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The wallet id (= the DKG topic).
    pub wallet_id: WalletId,
    /// The invitation's full SHA-256 (the wallet id is its first half): every party confirms
    /// it at the end of the DKG, so two invitations colliding on 128 bits cannot split a DKG.
    pub invitation_hash: [u8; 32],
    /// Members with their party numbers.
    pub members: Vec<(PartyId, Member)>,
    /// The provider's parties.
    pub provider_parties: Vec<PartyId>,
    /// The provider's identity key.
    pub provider_key: Vec<u8>,
    /// DKG parameters (all parties, threshold).
    pub params: DkgParams,
    /// The parsed policy (in the chain's units).
    pub policy: Policy,
    /// The chain the wallet spends on.
    pub chain: Chain,
    /// The Bitcoin network (`None` for an Ethereum treasury).
    pub network: Option<Network>,
}

fn params_error(reason: impl Into<String>) -> ProtocolError {
    ProtocolError::Params {
        reason: reason.into(),
    }
}

/// The provider's weight and the threshold for `members` members whose smallest tier is
/// `min_approvals` (see the module docs): `(w, t)`.
pub fn weights(members: usize, min_approvals: u16) -> Result<(u16, u16)> {
    let n = u16::try_from(members)
        .ok()
        .filter(|n| (2..=MAX_MEMBERS as u16).contains(n))
        .ok_or_else(|| {
            params_error(format!(
                "a DAO has 2 to {MAX_MEMBERS} members, this one has {members}"
            ))
        })?;
    if min_approvals == 0 || min_approvals > n {
        return Err(params_error(format!(
            "the policy's smallest tier needs {min_approvals} approvals; it must be 1 to {n}"
        )));
    }
    Ok((n - min_approvals + 1, n + 1))
}

impl Invitation {
    /// The DKG topic: SHA-256 over a domain tag and the invitation's encoding, first 16 bytes.
    pub fn topic(&self) -> Result<Topic> {
        let encoded = wire::encode_identity(self)?;
        Ok(Topic(truncate(&tagged_hash(
            b"cosigner/dao/invitation/v1",
            &encoded,
        ))))
    }

    /// Checks the invitation and derives the wallet's layout.
    ///
    /// Errors ([`ProtocolError::Params`]): too few or too many members, a malformed or repeated
    /// device key, a provider key that is also a member's, an unknown network or suite, a policy
    /// that does not parse.
    pub fn layout(&self) -> Result<Layout> {
        let (chain, network) = self.chain()?;
        if self.policy.len() > MAX_POLICY_LEN {
            return Err(params_error(format!(
                "the policy is {} bytes, more than {MAX_POLICY_LEN}",
                self.policy.len()
            )));
        }
        if self.nonce.len() != 16 {
            return Err(params_error("the invitation's nonce must be 16 bytes"));
        }
        let provider_key = normalise_public_key(&self.provider_key)?;
        let mut members = Vec::with_capacity(self.members.len());
        for m in &self.members {
            members.push(Member {
                name: m.name.clone(),
                device_key: normalise_public_key(&m.device_key)?,
            });
        }
        if members.iter().any(|m| m.device_key == provider_key) {
            return Err(params_error(
                "the provider's key is also a member's device key",
            ));
        }
        for (i, m) in members.iter().enumerate() {
            if members
                .iter()
                .skip(i + 1)
                .any(|o| o.device_key == m.device_key)
            {
                return Err(params_error(format!(
                    "member {:?}'s device key is repeated",
                    m.name
                )));
            }
            if members.iter().skip(i + 1).any(|o| o.name == m.name) {
                return Err(params_error(format!(
                    "member name {:?} is repeated",
                    m.name
                )));
            }
        }
        // Approver names known, tiers within the member count: the policy parser checks them.
        let policy = Policy::parse_for(chain, &self.policy, &members)?;
        let (w, t) = weights(members.len(), policy.min_approvals())?;
        let n = members.len() as u16;
        if chain == Chain::Ethereum && usize::from(n + w) > MAX_ECDSA_PARTIES {
            // Every pair of parties holds an OT setup (about 140 KB in the DKG's round 3): the
            // DKG's traffic and the enclave's memory grow with the square of the parties.
            return Err(params_error(format!(
                "an Ethereum treasury has at most {MAX_ECDSA_PARTIES} parties; {n} members whose \
                 smallest tier is {} approvals make {} (the provider holds {w})",
                policy.min_approvals(),
                n + w
            )));
        }
        let provider_parties: Vec<PartyId> = PartyId::range(n + 1, n + w).collect();
        let parties: Vec<PartyId> = PartyId::range(1, n + w).collect();
        let invitation_hash =
            tagged_hash(b"cosigner/dao/invitation/v1", &wire::encode_identity(self)?);
        let wallet_id = WalletId(truncate(&invitation_hash));
        Ok(Layout {
            wallet_id,
            invitation_hash,
            members: PartyId::range(1, n).zip(members).collect(),
            provider_parties,
            provider_key,
            params: DkgParams {
                wallet_id,
                ciphersuite: self.ciphersuite.clone(),
                min_signers: t,
                parties,
            },
            policy,
            chain,
            network,
        })
    }

    /// The chain and Bitcoin network the invitation names: FROST on a Bitcoin network, or threshold
    /// ECDSA on Ethereum; any other pairing is refused.
    fn chain(&self) -> Result<(Chain, Option<Network>)> {
        match (self.ciphersuite.as_str(), self.network.as_str()) {
            (wire::SUITE_SECP256K1_ECDSA, NETWORK_ETHEREUM) => Ok((Chain::Ethereum, None)),
            (wire::SUITE_SECP256K1_ECDSA, other) => Err(params_error(format!(
                "a threshold ECDSA wallet is on network {NETWORK_ETHEREUM:?}, not {other:?}"
            ))),
            (wire::SUITE_SECP256K1_TR, name) => {
                Ok((Chain::Bitcoin, Some(network_from_name(name)?)))
            }
            _ => Err(ProtocolError::Ciphersuite {
                actual: self.ciphersuite.clone(),
            }),
        }
    }
}

impl Layout {
    /// The Bitcoin network of a Bitcoin DAO wallet.
    ///
    /// Errors: the wallet is an Ethereum treasury ([`ProtocolError::Params`]).
    pub fn bitcoin_network(&self) -> Result<Network> {
        self.network.ok_or_else(|| {
            params_error("this DAO wallet is an Ethereum treasury, not a Bitcoin wallet")
        })
    }

    /// Whether the wallet's shares are threshold ECDSA (an Ethereum treasury).
    pub fn is_ecdsa(&self) -> bool {
        self.chain == Chain::Ethereum
    }

    /// The key that speaks for `party`.
    pub fn owner_of(&self, party: PartyId) -> Option<&[u8]> {
        if self.provider_parties.contains(&party) {
            return Some(&self.provider_key);
        }
        self.members
            .iter()
            .find(|(p, _)| *p == party)
            .map(|(_, m)| m.device_key.as_slice())
    }

    /// The parties `key` holds (empty when it is nobody's).
    pub fn parties_of(&self, key: &[u8]) -> Vec<PartyId> {
        if key == self.provider_key.as_slice() {
            return self.provider_parties.clone();
        }
        self.members
            .iter()
            .filter(|(_, m)| m.device_key == key)
            .map(|(p, _)| *p)
            .collect()
    }

    /// The member party holding `key`, if a member holds it.
    pub fn member_party(&self, key: &[u8]) -> Option<PartyId> {
        self.members
            .iter()
            .find(|(_, m)| m.device_key == key)
            .map(|(p, _)| *p)
    }

    /// Member parties by name.
    pub fn parties_by_name(&self) -> BTreeMap<String, PartyId> {
        self.members
            .iter()
            .map(|(p, m)| (m.name.clone(), *p))
            .collect()
    }

    /// The name of member `party`.
    pub fn name_of(&self, party: PartyId) -> Option<&str> {
        self.members
            .iter()
            .find(|(p, _)| *p == party)
            .map(|(_, m)| m.name.as_str())
    }
}

/// A request to sign a PSBT (for an Ethereum treasury, a transaction) with a DAO wallet; its hash
/// is the signing topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignRequest {
    /// The wallet.
    pub wallet_id: WalletId,
    /// The binary PSBT; for an Ethereum treasury, the unsigned transaction as it is signed
    /// (`cosigner_eth::UnsignedTx::signing_payload`: EIP-2718 type 2, or legacy EIP-155 RLP).
    pub psbt: ByteBuf,
    /// The requesting member's party.
    pub requester: PartyId,
    /// When it was made (ms since the Unix epoch); the provider refuses old requests.
    pub created_ms: u64,
    /// 16 random bytes, so the same PSBT asked twice is two requests.
    pub nonce: ByteBuf,
}

impl SignRequest {
    /// SHA-256 over a domain tag and the request's encoding: what approvals bind.
    pub fn hash(&self) -> Result<[u8; 32]> {
        Ok(tagged_hash(
            b"cosigner/dao/request/v1",
            &wire::encode_identity(self)?,
        ))
    }

    /// The signing topic: the request hash's first 16 bytes.
    pub fn topic(&self) -> Result<Topic> {
        Ok(Topic(truncate(&self.hash()?)))
    }
}

/// A proposal to replace a DAO wallet's policy; its hash is the topic. Needs the current
/// policy's admin quorum.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyChange {
    /// The wallet.
    pub wallet_id: WalletId,
    /// The new policy (TOML text).
    pub policy: String,
    /// The policy version it replaces (a change of a policy already replaced is refused).
    pub from_version: u64,
    /// The proposing member's party.
    pub proposer: PartyId,
    /// When it was made (ms since the Unix epoch).
    pub created_ms: u64,
    /// 16 random bytes.
    pub nonce: ByteBuf,
}

impl PolicyChange {
    /// SHA-256 over a domain tag and the proposal's encoding: what approvals bind.
    pub fn hash(&self) -> Result<[u8; 32]> {
        Ok(tagged_hash(
            b"cosigner/dao/policy-change/v1",
            &wire::encode_identity(self)?,
        ))
    }

    /// The topic: the hash's first 16 bytes.
    pub fn topic(&self) -> Result<Topic> {
        Ok(Topic(truncate(&self.hash()?)))
    }

    /// What an approval of this change binds (in [`Approval::sighashes`]): the proposal and the
    /// SHA-256 of the new policy text.
    pub fn approval_digest(&self) -> Result<[u8; 32]> {
        let text: [u8; 32] = Sha256::digest(self.policy.as_bytes()).into();
        Ok(sighashes_digest(&self.hash()?, &[text]))
    }
}

/// What the provider found in a PSBT and which rule applies (signed by the provider).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Evaluation {
    /// The request.
    pub request: ByteBuf,
    /// Each input's BIP-341 sighash, computed by the provider.
    pub sighashes: Vec<ByteBuf>,
    /// Value leaving the wallet (satoshis, fee included).
    pub value_leaving: u64,
    /// Fee (satoshis).
    pub fee: u64,
    /// Outputs not paying the wallet: (address, satoshis).
    pub destinations: Vec<(String, u64)>,
    /// The rule that decides.
    pub rule: String,
    /// Approvals it needs (the requester included).
    pub approvals: u16,
    /// Member parties whose approval counts.
    pub approvers: Vec<PartyId>,
    /// An Ethereum treasury's outflows: (asset, amount in its base unit as a decimal, the
    /// destination or `-`), the value and fee fields above then 0 (wei do not fit them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub leaving: Vec<(String, String, String)>,
}

/// A member's approval of one request, bound to the request and to the sighashes the member
/// computed itself from the PSBT.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Approval {
    /// The request hash.
    pub request: ByteBuf,
    /// The approving member's party.
    pub party: PartyId,
    /// [`sighashes_digest`] of the sighashes the member computed.
    pub sighashes: ByteBuf,
}

/// Longest reason a member may give with a [`Rejection`].
pub const MAX_REJECTION_REASON: usize = 512;

/// A member's "no" to one request: signed like an approval (by the envelope), it counts against
/// the threshold: once the approvers left cannot reach the rule's approvals, the request is dead
/// (the provider refuses it at once and says who rejected).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rejection {
    /// The request hash.
    pub request: ByteBuf,
    /// The rejecting member's party.
    pub party: PartyId,
    /// Why, in the member's words (at most [`MAX_REJECTION_REASON`] bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Whether a round or attempt number is the first (0): such fields are left out of the encoding,
/// so messages of a first round or attempt encode exactly as before they existed.
fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Everything that travels through the mailbox of a DAO ceremony.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum DaoMessage {
    /// Creator → all: the wallet proposed (topic = its hash).
    Invitation(Invitation),
    /// Refresh round 1 of one party.
    Round1(wire::Round1Message),
    /// Refresh round 2: one sealed package.
    Round2(wire::SealedPackage),
    /// Refresh confirmation of one party.
    Confirm(wire::Confirmation),
    /// DKG round 1 of one party, in attempt `attempt` of the invitation's DKG.
    DkgRound1 {
        /// The DKG attempt (see [`dkg`]: a new attempt starts when a member lost its state).
        attempt: u32,
        /// The round-1 broadcast.
        message: wire::Round1Message,
    },
    /// DKG round 2 of one party: one sealed package, in attempt `attempt`.
    DkgRound2 {
        /// The DKG attempt.
        attempt: u32,
        /// The package, HPKE-sealed to its recipient.
        package: wire::SealedPackage,
    },
    /// DKG confirmation of one party, with the full hash of the invitation it was run for.
    DkgConfirm {
        /// The confirmation.
        confirmation: wire::Confirmation,
        /// SHA-256 of the invitation (see [`Layout::invitation_hash`]).
        invitation: ByteBuf,
        /// The DKG attempt.
        #[serde(default, skip_serializing_if = "is_zero")]
        attempt: u32,
    },
    /// Member → provider: my share of attempt `attempt` is on my disk; the provider activates the
    /// wallet only once every member said so (so no member can lose its share of an active
    /// wallet by stopping at the wrong moment).
    DkgStored {
        /// The DKG attempt.
        attempt: u32,
        /// The member's party.
        party: PartyId,
        /// SHA-256 of the public key package the member stored
        /// ([`crate::dkg::public_key_package_hash`]).
        public_key_package: ByteBuf,
    },
    /// Member → provider: this member lost its state of attempt `attempt` (its process stopped
    /// mid-DKG; round secrets are never written down), please start a new attempt.
    DkgRetry {
        /// The attempt that cannot finish.
        attempt: u32,
        /// The member's party.
        party: PartyId,
    },
    /// Provider → all: attempt `attempt` of the DKG starts; every older attempt is dropped.
    DkgAttempt {
        /// The new attempt.
        attempt: u32,
    },
    /// Provider → all: every member stored its share and the provider stored its own; the wallet
    /// is active.
    Activated {
        /// The wallet.
        wallet_id: WalletId,
        /// The DKG attempt that created it.
        #[serde(default, skip_serializing_if = "is_zero")]
        attempt: u32,
    },
    /// Member → all: please sign this PSBT (topic = its hash).
    SignRequest(SignRequest),
    /// Provider → all: the PSBT's facts and the rule.
    Evaluation(Evaluation),
    /// Member → provider: I approve.
    Approval(Approval),
    /// Member → all: I reject (see [`Rejection`]).
    Reject(Rejection),
    /// Member → all members, in the wallet's own topic (its DKG topic, the wallet id): a request
    /// was made, so members who were not sent its file can list it (`cosigner dao requests`).
    /// The founding envelope of the request (signed by its maker), encoded.
    Announce {
        /// The request's founding envelope (a [`SignRequest`], [`PolicyChange`] or refresh
        /// proposal), as encoded for the mailbox.
        envelope: ByteBuf,
    },
    /// Provider → all: who signs in signing round `round` (see [`sign`]: a new round starts when
    /// a chosen member lost its nonces after the signing packages went out).
    SignerSet {
        /// The request hash.
        request: ByteBuf,
        /// Signing parties (approving members and the provider's parties), sorted.
        parties: Vec<PartyId>,
        /// The signing round.
        #[serde(default, skip_serializing_if = "is_zero")]
        round: u32,
    },
    /// Member → provider: round-1 commitments, one per input.
    Commitments {
        /// The request hash.
        request: ByteBuf,
        /// The member's party.
        party: PartyId,
        /// Serialized `SigningCommitments`, one per input.
        commitments: Vec<ByteBuf>,
        /// The signing round.
        #[serde(default, skip_serializing_if = "is_zero")]
        round: u32,
    },
    /// Provider → members: the signing packages, one per input.
    SigningPackages {
        /// The request hash.
        request: ByteBuf,
        /// Serialized `SigningPackage`, one per input.
        packages: Vec<ByteBuf>,
        /// The signing round.
        #[serde(default, skip_serializing_if = "is_zero")]
        round: u32,
    },
    /// Member → provider: signature shares, one per input.
    Shares {
        /// The request hash.
        request: ByteBuf,
        /// The member's party.
        party: PartyId,
        /// Serialized `SignatureShare`, one per input.
        shares: Vec<ByteBuf>,
        /// The signing round.
        #[serde(default, skip_serializing_if = "is_zero")]
        round: u32,
    },
    /// Provider → all: the signed transaction.
    Signed {
        /// The request hash.
        request: ByteBuf,
        /// Its txid.
        txid: String,
        /// The consensus-encoded transaction.
        tx: ByteBuf,
    },
    /// Member → all: please replace the policy (topic = its hash).
    PolicyChange(PolicyChange),
    /// Provider → all: the change is acceptable and needs this admin quorum.
    PolicyQuorum {
        /// The proposal hash.
        request: ByteBuf,
        /// Approvals needed (the proposer's included).
        approvals: u16,
        /// Member parties whose approval counts.
        approvers: Vec<PartyId>,
    },
    /// Provider → all: the new policy is in force.
    PolicyChanged {
        /// The proposal hash.
        request: ByteBuf,
        /// The new policy version.
        version: u64,
    },
    /// Member → all: please refresh every share (topic = its hash).
    RefreshStart(refresh::RefreshProposal),
    /// Holder → all: my new shares of `epoch` are stored (prepared) for `parties`.
    Committed {
        /// The sender's parties.
        parties: Vec<PartyId>,
        /// The new epoch.
        epoch: Epoch,
    },
    /// Provider → all: every party committed; `epoch` is current, the old shares are deleted.
    Refreshed {
        /// The wallet.
        wallet_id: WalletId,
        /// The new epoch.
        epoch: Epoch,
    },
    /// Provider → all: the request is refused (policy, PSBT, expiry).
    Refused {
        /// The request hash.
        request: ByteBuf,
        /// Why.
        reason: String,
    },
    /// Threshold ECDSA DKG of an Ethereum treasury ([`ecdsa`]): one party's HPKE key for
    /// attempt `attempt`.
    EcdsaDkgHello {
        /// The DKG attempt.
        attempt: u32,
        /// The party's hello.
        hello: crate::ecdsa::dkg::EcdsaHello,
    },
    /// Threshold ECDSA DKG: (a piece of) one party's round message in attempt `attempt`.
    EcdsaDkgPart {
        /// The DKG attempt.
        attempt: u32,
        /// The piece.
        part: ecdsa::EcdsaPart,
    },
    /// Threshold ECDSA signing of an Ethereum treasury's request: one signer's HPKE key for
    /// signing round `round`.
    EcdsaSignHello {
        /// The request hash.
        request: ByteBuf,
        /// The signing round.
        round: u32,
        /// The signer's hello.
        hello: crate::ecdsa::dkg::EcdsaHello,
    },
    /// Threshold ECDSA signing: (a piece of) one signer's message of one step, in signing
    /// round `round`.
    EcdsaSignPart {
        /// The request hash.
        request: ByteBuf,
        /// The signing round.
        round: u32,
        /// The piece.
        part: ecdsa::EcdsaPart,
    },
}

impl DaoMessage {
    /// Encodes the message (versioned CBOR, as the wire).
    pub fn encode(&self) -> Result<Vec<u8>> {
        wire::encode(self)
    }

    /// Decodes a message.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        wire::decode(bytes)
    }

    /// Decodes a message kept in a wallet file by an earlier version ([`wire::decode_stored`]).
    pub fn decode_stored(bytes: &[u8]) -> Result<Self> {
        wire::decode_stored(bytes)
    }

    /// A short name for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Invitation(_) => "Invitation",
            Self::Round1(_) => "Round1",
            Self::Round2(_) => "Round2",
            Self::Confirm(_) => "Confirm",
            Self::DkgRound1 { .. } => "DkgRound1",
            Self::DkgRound2 { .. } => "DkgRound2",
            Self::DkgConfirm { .. } => "DkgConfirm",
            Self::DkgStored { .. } => "DkgStored",
            Self::DkgRetry { .. } => "DkgRetry",
            Self::DkgAttempt { .. } => "DkgAttempt",
            Self::Activated { .. } => "Activated",
            Self::SignRequest(_) => "SignRequest",
            Self::Evaluation(_) => "Evaluation",
            Self::PolicyChange(_) => "PolicyChange",
            Self::PolicyQuorum { .. } => "PolicyQuorum",
            Self::PolicyChanged { .. } => "PolicyChanged",
            Self::Approval(_) => "Approval",
            Self::Reject(_) => "Reject",
            Self::Announce { .. } => "Announce",
            Self::SignerSet { .. } => "SignerSet",
            Self::Commitments { .. } => "Commitments",
            Self::SigningPackages { .. } => "SigningPackages",
            Self::Shares { .. } => "Shares",
            Self::Signed { .. } => "Signed",
            Self::RefreshStart(_) => "RefreshStart",
            Self::Committed { .. } => "Committed",
            Self::Refreshed { .. } => "Refreshed",
            Self::Refused { .. } => "Refused",
            Self::EcdsaDkgHello { .. } => "EcdsaDkgHello",
            Self::EcdsaDkgPart { .. } => "EcdsaDkgPart",
            Self::EcdsaSignHello { .. } => "EcdsaSignHello",
            Self::EcdsaSignPart { .. } => "EcdsaSignPart",
        }
    }

    /// The DKG attempt a DKG message belongs to (`None` for other messages).
    pub fn dkg_attempt(&self) -> Option<u32> {
        match self {
            Self::DkgRound1 { attempt, .. }
            | Self::DkgRound2 { attempt, .. }
            | Self::DkgConfirm { attempt, .. }
            | Self::DkgStored { attempt, .. }
            | Self::DkgRetry { attempt, .. }
            | Self::DkgAttempt { attempt }
            | Self::EcdsaDkgHello { attempt, .. }
            | Self::EcdsaDkgPart { attempt, .. }
            | Self::Activated { attempt, .. } => Some(*attempt),
            _ => None,
        }
    }

    /// The signing round a signing message belongs to (`None` for other messages).
    pub fn signing_round(&self) -> Option<u32> {
        match self {
            Self::SignerSet { round, .. }
            | Self::Commitments { round, .. }
            | Self::SigningPackages { round, .. }
            | Self::Shares { round, .. }
            | Self::EcdsaSignHello { round, .. }
            | Self::EcdsaSignPart { round, .. } => Some(*round),
            _ => None,
        }
    }
}

/// SHA-256 over a domain tag and the sighashes in input order: what an approval binds.
pub fn sighashes_digest(request: &[u8; 32], sighashes: &[[u8; 32]]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"cosigner/dao/approval/v1");
    h.update(request);
    h.update((sighashes.len() as u64).to_be_bytes());
    for s in sighashes {
        h.update(s);
    }
    h.finalize().into()
}

fn tagged_hash(tag: &[u8], body: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update((tag.len() as u32).to_be_bytes());
    h.update(tag);
    h.update(body);
    h.finalize().into()
}

fn truncate(hash: &[u8; 32]) -> [u8; 16] {
    let mut out = [0u8; 16];
    out.copy_from_slice(hash.split_at(16).0);
    out
}

/// A 32-byte field from the wire.
pub fn hash32(bytes: &[u8], what: &str) -> Result<[u8; 32]> {
    <[u8; 32]>::try_from(bytes).map_err(|_| {
        ProtocolError::encoding(format!("{what} is {} bytes, expected 32", bytes.len()))
    })
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;
    use crate::auth::public_key_bytes;
    use crate::id::pid;
    use p256::ecdsa::SigningKey;

    pub(crate) const POLICY: &str = r#"
[[rule]]
name = "small"
below = 1_000_000_000
approvals = 3
[[rule]]
name = "large"
below = 10_000_000_000
approvals = 4
[[rule]]
name = "major"
approvals = 5
"#;

    pub(crate) fn keys(n: usize) -> Vec<SigningKey> {
        (0..n)
            .map(|_| SigningKey::random(&mut rand_core::OsRng))
            .collect()
    }

    pub(crate) fn invitation(members: &[SigningKey], provider: &SigningKey) -> Invitation {
        let names = ["alice", "bob", "carol", "dave", "eve", "frank", "grace"];
        Invitation {
            members: members
                .iter()
                .zip(names)
                .map(|(k, n)| MemberEntry {
                    name: n.into(),
                    device_key: ByteBuf::from(public_key_bytes(k)),
                })
                .collect(),
            policy: POLICY.into(),
            provider_key: ByteBuf::from(public_key_bytes(provider)),
            network: "regtest".into(),
            ciphersuite: wire::SUITE_SECP256K1_TR.into(),
            created_ms: 1,
            nonce: ByteBuf::from(vec![7; 16]),
            mailbox: "127.0.0.1:1".into(),
            provider: "127.0.0.1:2".into(),
        }
    }

    #[test]
    fn weights_follow_the_arithmetic() {
        assert_eq!(weights(5, 3).unwrap(), (3, 6));
        assert_eq!(weights(5, 5).unwrap(), (1, 6));
        assert_eq!(weights(5, 1).unwrap(), (5, 6));
        assert!(weights(1, 1).is_err());
        assert!(weights(5, 0).is_err());
        assert!(weights(5, 6).is_err());
        assert!(weights(MAX_MEMBERS + 1, 3).is_err());
        // For every n and k_min: members alone fall short, provider + k_min reach t,
        // provider + k_min - 1 do not.
        for n in 2..=12usize {
            for k in 1..=n as u16 {
                let (w, t) = weights(n, k).unwrap();
                assert!((n as u16) < t);
                assert_eq!(w + k, t);
                assert!(w + k - 1 < t);
            }
        }
    }

    #[test]
    fn layout_of_the_seed_dao() {
        let members = keys(5);
        let provider = keys(1).pop().unwrap();
        let inv = invitation(&members, &provider);
        let layout = inv.layout().unwrap();
        assert_eq!(layout.params.min_signers, 6);
        assert_eq!(layout.params.parties, (1..=8).collect::<Vec<_>>());
        assert_eq!(layout.provider_parties, vec![6, 7, 8]);
        assert_eq!(
            layout.parties_of(&public_key_bytes(&provider)),
            vec![6, 7, 8]
        );
        assert_eq!(
            layout.member_party(&public_key_bytes(&members[2])),
            Some(pid(3))
        );
        assert_eq!(
            layout.owner_of(pid(7)),
            Some(public_key_bytes(&provider).as_slice())
        );
        assert_eq!(layout.owner_of(pid(9)), None);
        assert_eq!(layout.wallet_id.0, inv.topic().unwrap().0);
    }

    #[test]
    fn bad_invitations_are_refused() {
        let members = keys(5);
        let provider = keys(1).pop().unwrap();
        let good = invitation(&members, &provider);

        let mut dup = good.clone();
        dup.members[1].device_key = dup.members[0].device_key.clone();
        assert!(dup.layout().is_err());

        let mut provider_member = good.clone();
        provider_member.provider_key = good.members[0].device_key.clone();
        assert!(provider_member.layout().is_err());

        let mut bad_key = good.clone();
        bad_key.members[0].device_key = ByteBuf::from(vec![9; 33]);
        assert!(
            bad_key.layout().is_err(),
            "{:?}",
            bad_key.layout().map(|l| l.wallet_id)
        );

        let mut bad_net = good.clone();
        bad_net.network = "moon".into();
        assert!(bad_net.layout().is_err());

        let mut one = good.clone();
        one.members.truncate(1);
        one.policy = "[[rule]]\nname = \"all\"\napprovals = 1\n".into();
        assert!(one.layout().is_err());

        // An Ethereum treasury: threshold ECDSA on "ethereum" only, and at most 12 parties.
        let mut eth = good.clone();
        eth.ciphersuite = wire::SUITE_SECP256K1_ECDSA.into();
        assert!(eth.layout().is_err(), "threshold ECDSA on regtest");
        eth.network = NETWORK_ETHEREUM.into();
        let layout = eth.layout().unwrap();
        assert!(layout.is_ecdsa() && layout.network.is_none());
        let mut frost_on_eth = good.clone();
        frost_on_eth.network = NETWORK_ETHEREUM.into();
        assert!(frost_on_eth.layout().is_err());
        let seven = keys(7);
        let mut big = invitation(&seven, &provider);
        big.ciphersuite = wire::SUITE_SECP256K1_ECDSA.into();
        big.network = NETWORK_ETHEREUM.into();
        big.policy = "[[rule]]\nname = \"any\"\napprovals = 1\n".into();
        assert!(
            matches!(big.layout(), Err(ProtocolError::Params { .. })),
            "7 + 7 parties"
        );

        // Any change to the invitation changes the wallet.
        let mut other = good.clone();
        other.policy.push('\n');
        assert_ne!(other.topic().unwrap(), good.topic().unwrap());
    }

    #[test]
    fn first_rounds_and_attempts_encode_as_before_they_existed() {
        let set = |round| DaoMessage::SignerSet {
            request: ByteBuf::from(vec![1; 32]),
            parties: vec![pid(1), pid(2)],
            round,
        };
        let first = set(0).encode().unwrap();
        assert!(
            !first.windows(5).any(|w| w == b"round"),
            "round 0 is left out"
        );
        assert_eq!(DaoMessage::decode(&first).unwrap(), set(0));
        let later = set(3).encode().unwrap();
        assert_eq!(DaoMessage::decode(&later).unwrap(), set(3));
        assert_eq!(set(3).signing_round(), Some(3));
        let activated = DaoMessage::Activated {
            wallet_id: WalletId([2; 16]),
            attempt: 0,
        };
        let bytes = activated.encode().unwrap();
        assert!(!bytes.windows(7).any(|w| w == b"attempt"));
        assert_eq!(DaoMessage::decode(&bytes).unwrap().dkg_attempt(), Some(0));
    }

    #[test]
    fn a_rejection_without_a_reason_leaves_it_out() {
        let r = |reason: Option<&str>| {
            DaoMessage::Reject(Rejection {
                request: ByteBuf::from(vec![1; 32]),
                party: pid(2),
                reason: reason.map(str::to_owned),
            })
        };
        let bare = r(None).encode().unwrap();
        assert!(!bare.windows(6).any(|w| w == b"reason"));
        assert_eq!(DaoMessage::decode(&bare).unwrap(), r(None));
        let said = r(Some("too much")).encode().unwrap();
        assert_eq!(DaoMessage::decode(&said).unwrap(), r(Some("too much")));
        assert_eq!(r(None).name(), "Reject");
    }

    #[test]
    fn messages_round_trip_and_garbage_is_an_error() {
        let m = DaoMessage::Refused {
            request: ByteBuf::from(vec![1; 32]),
            reason: "no".into(),
        };
        assert_eq!(DaoMessage::decode(&m.encode().unwrap()).unwrap(), m);
        assert!(DaoMessage::decode(b"\xff\x00garbage").is_err());
        assert!(DaoMessage::decode(&[]).is_err());
    }
}
