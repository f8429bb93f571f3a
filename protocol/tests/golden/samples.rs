//! Fixed values for the golden vectors: every byte chosen here, nothing random, so the same build
//! always encodes the same bytes.

#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]

use cosigner_protocol::auth::public_key_bytes;
use cosigner_protocol::dao::{
    Approval, Evaluation, Invitation, MemberEntry, PolicyChange, SignRequest,
};
use cosigner_protocol::id::Epoch;
use cosigner_protocol::id::PartyId;
use cosigner_protocol::wire::{
    Confirmation, DkgParams, RefreshParams, Registration, RepairParams, Round1Message,
    SUITE_SECP256K1_TR, SealedPackage, WalletId, WalletInfo,
};
use p256::ecdsa::SigningKey;
use serde_bytes::ByteBuf;

/// The wallet of every sample.
pub const WALLET: WalletId = WalletId([0x11; 16]);

/// A topic.
pub const TOPIC: cosigner_protocol::mailbox::Topic = cosigner_protocol::mailbox::Topic([0x70; 16]);

/// `n` bytes of `byte`.
pub fn bytes(byte: u8, n: usize) -> ByteBuf {
    ByteBuf::from(vec![byte; n])
}

/// A fixed P-256 key (the scalar `seed` repeated: valid for any small non-zero seed).
pub fn key(seed: u8) -> SigningKey {
    SigningKey::from_slice(&[seed; 32]).expect("a valid P-256 scalar")
}

/// The SEC1 compressed public key of [`key`]`(seed)`.
pub fn public(seed: u8) -> ByteBuf {
    ByteBuf::from(public_key_bytes(&key(seed)))
}

/// A 2-of-3 personal wallet's DKG.
pub fn dkg_params() -> DkgParams {
    DkgParams {
        wallet_id: WALLET,
        ciphersuite: SUITE_SECP256K1_TR.into(),
        min_signers: 2,
        parties: vec![pid(1), pid(2), pid(3)],
    }
}

/// Its refresh from epoch 4.
pub fn refresh_params() -> RefreshParams {
    RefreshParams {
        wallet_id: WALLET,
        ciphersuite: SUITE_SECP256K1_TR.into(),
        min_signers: 2,
        parties: vec![pid(1), pid(2), pid(3)],
        from_epoch: Epoch(4),
    }
}

/// A repair of party 1 at epoch 4 by helpers 2 and 3.
pub fn repair_params() -> RepairParams {
    RepairParams {
        wallet_id: WALLET,
        ciphersuite: SUITE_SECP256K1_TR.into(),
        epoch: Epoch(4),
        helpers: vec![pid(2), pid(3)],
        participant: pid(1),
    }
}

/// Party `from`'s round-1 message (short opaque package and key: the wire does not parse them).
pub fn round1(from: PartyId) -> Round1Message {
    Round1Message {
        from,
        package: bytes(0x20 + from.get() as u8, 5),
        hpke_public_key: bytes(0x30 + from.get() as u8, 4),
    }
}

/// Every party's round-1 message, in a scrambled order (the transcript sorts them).
pub fn round1_all() -> Vec<Round1Message> {
    vec![round1(pid(3)), round1(pid(1)), round1(pid(2))]
}

/// A package sealed from `from` to `to`.
pub fn sealed(from: PartyId, to: PartyId) -> SealedPackage {
    SealedPackage {
        from,
        to,
        enc: bytes(0x40, 4),
        ciphertext: bytes(0x41, 6),
    }
}

/// Party `from`'s confirmation.
pub fn confirmation(from: PartyId) -> Confirmation {
    Confirmation {
        from,
        transcript_hash: bytes(0x50, 32),
        public_key_package_hash: bytes(0x51, 32),
    }
}

/// A registration without terms (the v1 digest) or with all of them.
pub fn registration(terms: bool) -> Registration {
    Registration {
        device_key: public(1),
        recovery_key: public(2),
        device_signature: bytes(0x61, 64),
        recovery_signature: bytes(0x62, 64),
        policy: terms.then(|| "[[rule]]\nname = \"all\"\n".to_owned()),
        network: terms.then(|| "regtest".to_owned()),
        provider_key: terms.then(|| public(3)),
        recovery_cosigner_key: terms.then(|| public(4)),
    }
}

/// The provider's view of the wallet, with (at a later epoch) or without the optional fields.
pub fn wallet_info(later: bool) -> WalletInfo {
    WalletInfo {
        wallet_id: WALLET,
        ciphersuite: SUITE_SECP256K1_TR.into(),
        party: pid(2),
        min_signers: 2,
        parties: vec![pid(1), pid(2), pid(3)],
        epoch: if later { Epoch(5) } else { Epoch(0) },
        group_public_key: bytes(0x02, 33),
        public_key_package: bytes(0x71, 8),
        confirmations: if later {
            vec![confirmation(pid(1))]
        } else {
            vec![]
        },
        receipt: later.then(|| bytes(0x72, 64)),
        provider_key: later.then(|| public(3)),
        recovery_cosigner_key: later.then(|| public(4)),
    }
}

/// The DAO policy of the invitation.
pub const DAO_POLICY: &str = "[[rule]]\nname = \"small\"\nbelow = 1_000_000\napprovals = 2\n\
                              [[rule]]\nname = \"large\"\napprovals = 3\n";

/// A three-member DAO invitation (members `key(11..=13)`, provider `key(3)`).
pub fn invitation() -> Invitation {
    Invitation {
        members: ["alice", "bob", "carol"]
            .into_iter()
            .zip(11u8..)
            .map(|(name, seed)| MemberEntry {
                name: name.into(),
                device_key: public(seed),
            })
            .collect(),
        policy: DAO_POLICY.into(),
        provider_key: public(3),
        network: "regtest".into(),
        ciphersuite: SUITE_SECP256K1_TR.into(),
        created_ms: 1_700_000_000_000,
        nonce: bytes(0x7a, 16),
        mailbox: "127.0.0.1:7001".into(),
        provider: "127.0.0.1:7002".into(),
    }
}

/// A member's request to sign a PSBT.
pub fn sign_request() -> SignRequest {
    SignRequest {
        wallet_id: WALLET,
        psbt: ByteBuf::from(b"psbt\xff\x01".to_vec()),
        requester: pid(1),
        created_ms: 1_700_000_000_001,
        nonce: bytes(0x7b, 16),
    }
}

/// A member's proposal of a new policy.
pub fn policy_change() -> PolicyChange {
    PolicyChange {
        wallet_id: WALLET,
        policy: "[[rule]]\nname = \"all\"\napprovals = 3\n".into(),
        from_version: 1,
        proposer: pid(2),
        created_ms: 1_700_000_000_002,
        nonce: bytes(0x7c, 16),
    }
}

/// The provider's reading of the PSBT.
pub fn evaluation() -> Evaluation {
    Evaluation {
        request: bytes(0x80, 32),
        sighashes: vec![bytes(0x81, 32), bytes(0x82, 32)],
        value_leaving: 150_000,
        fee: 500,
        destinations: vec![("bcrt1qexample".into(), 149_500)],
        rule: "small".into(),
        approvals: 2,
        approvers: vec![pid(1), pid(2), pid(3)],
        leaving: Vec::new(),
    }
}

/// Member 2's approval.
pub fn approval() -> Approval {
    Approval {
        request: bytes(0x80, 32),
        party: pid(2),
        sighashes: bytes(0x83, 32),
    }
}

/// Party `n`, where `n` is a literal known not to be 0.
pub fn pid(n: u16) -> cosigner_protocol::id::PartyId {
    cosigner_protocol::id::PartyId::new(n).unwrap()
}

/// A threshold ECDSA DKG hello of party `n`.
pub fn ecdsa_hello(n: u16) -> cosigner_protocol::wire::EcdsaHello {
    cosigner_protocol::wire::EcdsaHello {
        from: pid(n),
        hpke_public_key: bytes(0xc0 + n as u8, 32),
    }
}

/// A threshold ECDSA DKG round-2 message of party `n`, one part sealed to party 3.
pub fn ecdsa_round(n: u16) -> cosigner_protocol::wire::EcdsaRound {
    cosigner_protocol::wire::EcdsaRound {
        from: pid(n),
        round: 2,
        broadcast: bytes(0xc4, 8),
        sealed: vec![sealed(pid(n), pid(3))],
    }
}

/// Party `n`'s threshold ECDSA signing message of `round`.
pub fn ecdsa_sign_message(n: u16, round: u8) -> cosigner_protocol::wire::EcdsaSignMessage {
    cosigner_protocol::wire::EcdsaSignMessage {
        from: pid(n),
        round,
        body: bytes(0xd0 + round, 8),
    }
}
