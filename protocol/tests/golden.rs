//! Golden vectors of the wire: the exact bytes of every message kind and every signed or hashed
//! input, pinned in `protocol/tests/golden/*.txt`, so an accidental format change fails here.
//!
//! CHANGING A VECTOR MEANS A WIRE OR STORAGE FORMAT CHANGE: peers of the previous build, sealed
//! records and signatures made over the old bytes stop matching. A deliberate change needs a
//! `PROTOCOL_VERSION` bump (protocol/src/lib.rs) and `PINNED_VERSION` (tests/golden/pinned.rs)
//! set to it; then regenerate every file at once with
//! `GOLDEN_UPDATE=1 cargo nextest run --locked --workspace --all-features -E 'test(golden)'`.
//! A failing test prints each changed vector, old and new, and the lines to paste.
//!
//! Every value is built from fixed bytes (`golden/samples.rs`), encoded with the crate's own
//! encoder and compared with the pinned hex; the pinned hex is decoded back and compared with the
//! value (the round trip). Each enum's samples must cover all its variants (read through serde,
//! `golden/variants.rs`): a new variant without a vector fails by name. Signatures are not pinned
//! (ECDSA and Schnorr signing here is randomized or key-dependent); what is signed is.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

#[path = "golden/pinned.rs"]
mod pinned;
#[path = "golden/samples.rs"]
mod samples;
#[path = "golden/variants.rs"]
mod variants;

use std::fmt::Debug;

use cosigner_protocol::audit::{self, AuditEntry, AuditRecord};
use cosigner_protocol::auth;
use cosigner_protocol::dao::refresh::RefreshProposal;
use cosigner_protocol::dao::{self, DaoMessage, Rejection};
use cosigner_protocol::enrollment::EnrollmentToken;
use cosigner_protocol::frame::{FrameDecoder, encode_frame};
use cosigner_protocol::id::Epoch;
use cosigner_protocol::mailbox::{
    self, Envelope, MailboxItem, MailboxRequest, MailboxResponse, ReadProof,
};
use cosigner_protocol::wire::{
    self, CounterSample, EnclaveCounter, EnclaveHistogram, ErrorKind, HistogramSample, KeyRole,
    LogLevel, LogRecord, MetricsSnapshot, Request, Response, SecretString, StoreRequest,
    StoreResponse, WireError,
};
use cosigner_protocol::{PROTOCOL_VERSION, dkg, refresh};
use pinned::{PINNED_VERSION, Vectors};
use samples::*;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_bytes::ByteBuf;

/// Samples of an enum: (name suffix, comment, value).
type Samples<T> = Vec<(&'static str, &'static str, T)>;
type Encode<T> = fn(&T) -> Vec<u8>;
type Decode<T> = fn(&[u8]) -> Result<T, String>;

fn wire_encode<T: Serialize>(value: &T) -> Vec<u8> {
    wire::encode(value).expect("encodes")
}

fn wire_decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    wire::decode(bytes).map_err(|e| e.to_string())
}

fn cbor_encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::ser::into_writer(value, &mut out).expect("encodes");
    out
}

fn cbor_decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    ciborium::de::from_reader(bytes).map_err(|e| e.to_string())
}

/// Pins `value`'s encoding and checks that the pinned bytes decode back to it.
fn pin_value<T: PartialEq + Debug>(
    v: &mut Vectors,
    name: &str,
    comment: &str,
    value: &T,
    (encode, decode): (Encode<T>, Decode<T>),
) {
    let bytes = encode(value);
    if let Some(pinned) = v.pin(name, comment, &bytes) {
        match decode(&pinned) {
            Ok(back) if back == *value => {}
            Ok(back) => v.problem(format!(
                "{name}: the pinned bytes decode to {back:?}, not to the value"
            )),
            Err(e) => v.problem(format!("{name}: the pinned bytes do not decode: {e}")),
        }
    }
}

/// Pins each sample as `<prefix>.<Variant><suffix>` and fails for a variant without a sample.
fn pin_enum<T: Serialize + DeserializeOwned + PartialEq + Debug>(
    v: &mut Vectors,
    prefix: &str,
    samples: &[(&str, &str, T)],
    codec: (Encode<T>, Decode<T>),
) {
    for (suffix, comment, value) in samples {
        let name = format!("{prefix}.{}{suffix}", variants::name_of(value));
        pin_value(v, &name, comment, value, codec);
    }
    for variant in variants::of::<T>() {
        if !samples
            .iter()
            .any(|(_, _, s)| variants::name_of(s) == *variant)
        {
            v.problem(format!(
                "{prefix}::{variant} has no golden vector: add a sample of it in \
                 protocol/tests/golden.rs"
            ));
        }
    }
}

#[test]
fn golden_vectors_are_pinned_at_the_protocol_version() {
    assert_eq!(
        PROTOCOL_VERSION, PINNED_VERSION,
        "PROTOCOL_VERSION is {PROTOCOL_VERSION}, the golden vectors are pinned at \
         {PINNED_VERSION}: set PINNED_VERSION in protocol/tests/golden/pinned.rs and regenerate \
         (GOLDEN_UPDATE=1 cargo nextest run --locked --workspace --all-features -E 'test(golden)')"
    );
}

#[test]
fn golden_ceremony_transcripts_and_aads() {
    let mut v = Vectors::open("transcripts.txt");
    let transcript = [0x55; 32];
    v.pin(
        "dkg.transcript_hash",
        "dkg::transcript_hash: 2-of-3 params, round 1 of parties 3, 1, 2 (sorted when hashed)",
        &dkg::transcript_hash(&dkg_params(), &round1_all()),
    );
    v.pin(
        "dkg.round2_info",
        "dkg::round2_info: HPKE info of DKG round-2 packages",
        &dkg::round2_info(&dkg_params()),
    );
    v.pin(
        "dkg.round2_aad",
        "dkg::round2_aad: HPKE AAD of the DKG round-2 package 2 -> 3 under transcript 55..",
        &dkg::round2_aad(&WALLET, pid(2), pid(3), &transcript),
    );
    v.pin(
        "refresh.transcript_hash",
        "refresh::transcript_hash: the same round 1, refreshing epoch 4",
        &refresh::transcript_hash(&refresh_params(), &round1_all()),
    );
    v.pin(
        "refresh.round2_info",
        "refresh::round2_info: HPKE info of refresh round-2 packages from epoch 4",
        &refresh::round2_info(&refresh_params()),
    );
    v.pin(
        "refresh.round2_aad",
        "refresh::round2_aad: HPKE AAD of the refresh package 2 -> 3, epoch 4, transcript 55..",
        &refresh::round2_aad(&WALLET, Epoch(4), pid(2), pid(3), &transcript),
    );
    v.finish();
}

fn pin_auth_digests(v: &mut Vectors) {
    let request = wire::encode(&Request::SignCommit {
        wallet_id: WALLET,
        epoch: Epoch(4),
        message: bytes(0x90, 32),
        signers: vec![pid(1), pid(2)],
    })
    .unwrap();
    let challenge = [0x91; 32];
    v.pin(
        "auth.request_message",
        "auth::request_message: what a device key signs (ECDSA-SHA256) for an Authorized SignCommit",
        &auth::request_message(&WALLET, &challenge, &request),
    );
    v.pin(
        "auth.request_digest",
        "auth::request_digest: SHA-256 of that message",
        &auth::request_digest(&WALLET, &challenge, &request),
    );
    let (device, recovery) = (public(1), public(2));
    v.pin(
        "auth.registration_digest",
        "auth::registration_digest: v1, no policy or network",
        &auth::registration_digest(&WALLET, &[0x50; 32], &device, &recovery),
    );
    v.pin(
        "auth.registration_digest_with",
        "auth::registration_digest_with: v2, a policy and no network",
        &auth::registration_digest_with(
            &WALLET,
            &[0x50; 32],
            &device,
            &recovery,
            Some("[[rule]]\nname = \"all\"\n"),
            None,
        ),
    );
    v.pin(
        "auth.commit_receipt_digest",
        "auth::commit_receipt_digest: the provider's receipt of epoch 5",
        &auth::commit_receipt_digest(&WALLET, Epoch(5), &[0x50; 32], &[0x51; 32]),
    );
    v.pin(
        "auth.confirmation_digest",
        "auth::confirmation_digest: the recovery cosigner's confirmation",
        &auth::confirmation_digest(&WALLET, &samples::confirmation(pid(3))),
    );
}

fn pin_dao_digests(v: &mut Vectors) {
    let invitation = invitation();
    v.pin(
        "dao.invitation.topic",
        "Invitation::topic: the DKG topic and the DAO wallet's id",
        invitation.topic().unwrap().as_slice(),
    );
    v.pin(
        "dao.invitation.hash",
        "Layout::invitation_hash: the full hash every party confirms",
        &invitation.layout().unwrap().invitation_hash,
    );
    v.pin(
        "dao.sign_request.hash",
        "SignRequest::hash: what approvals bind (its first 16 bytes are the topic)",
        &sign_request().hash().unwrap(),
    );
    v.pin(
        "dao.sighashes_digest",
        "dao::sighashes_digest: an approval of a two-input PSBT",
        &dao::sighashes_digest(&[0x80; 32], &[[0x81; 32], [0x82; 32]]),
    );
    v.pin(
        "dao.policy_change.hash",
        "PolicyChange::hash: the policy change topic (first 16 bytes)",
        &policy_change().hash().unwrap(),
    );
    v.pin(
        "dao.policy_change.approval_digest",
        "PolicyChange::approval_digest: what an approval of that change binds",
        &policy_change().approval_digest().unwrap(),
    );
    v.pin(
        "dao.refresh_proposal.hash",
        "RefreshProposal::hash: the DAO refresh topic (first 16 bytes)",
        &refresh_proposal().hash().unwrap(),
    );
}

fn refresh_proposal() -> RefreshProposal {
    RefreshProposal {
        wallet_id: WALLET,
        from_epoch: Epoch(4),
        proposer: pid(3),
        created_ms: 1_700_000_000_003,
        nonce: bytes(0x7d, 16),
    }
}

fn envelope() -> Envelope {
    Envelope {
        topic: TOPIC,
        sender: public(11),
        body: ByteBuf::from(b"dao message".to_vec()),
        signature: bytes(0x5a, 64),
    }
}

fn pin_other_digests(v: &mut Vectors) {
    let e = envelope();
    v.pin(
        "mailbox.envelope.digest",
        "Envelope::digest: what a mailbox sender signs",
        &Envelope::digest(&e.topic, &e.sender, &e.body),
    );
    v.pin(
        "mailbox.envelope.id",
        "Envelope::id: SHA-256 of the canonical encoding, what readers deduplicate by",
        &e.id(),
    );
    v.pin(
        "mailbox.read_proof.digest",
        "ReadProof::digest: what a reader signs to fetch a topic on one connection",
        &ReadProof::digest(&[0x92; 32], &TOPIC, &public(12)),
    );
    v.pin(
        "enrollment.digest",
        "EnrollmentToken::digest: what the operator signs",
        &EnrollmentToken::digest(&public(1), 1_800_000_000_000),
    );
    v.pin(
        "audit.entry_hash",
        "audit::entry_hash of the sample entry: the next entry's prev, what the audit key signs",
        &audit::entry_hash(&audit::encode_entry(&audit_entry()).unwrap()),
    );
}

#[test]
fn golden_signed_digests() {
    let mut v = Vectors::open("digests.txt");
    pin_auth_digests(&mut v);
    pin_dao_digests(&mut v);
    pin_other_digests(&mut v);
    v.finish();
}

fn requests_ceremonies() -> Samples<Request> {
    vec![
        (
            "",
            "first request of a session",
            Request::Attest {
                nonce: bytes(0xa0, 32),
            },
        ),
        (
            "",
            "DKG as party 2, no enrollment token",
            Request::DkgStart {
                params: dkg_params(),
                me: pid(2),
                enrollment: None,
            },
        ),
        (
            ".enrollment",
            "DKG with an enrollment token",
            Request::DkgStart {
                params: dkg_params(),
                me: pid(2),
                enrollment: Some(bytes(0xa1, 8)),
            },
        ),
        (
            "",
            "every round-1 message",
            Request::DkgRound2 {
                wallet_id: WALLET,
                round1: round1_all(),
            },
        ),
        (
            "",
            "packages sealed to party 2",
            Request::DkgRound3 {
                wallet_id: WALLET,
                packages: vec![sealed(pid(1), pid(2)), sealed(pid(3), pid(2))],
            },
        ),
        (
            "",
            "confirmations and a registration without terms",
            Request::DkgConfirm {
                wallet_id: WALLET,
                confirmations: vec![confirmation(pid(1)), confirmation(pid(2))],
                registration: registration(false),
                confirmation_signatures: vec![],
            },
        ),
        (
            ".terms",
            "a registration with policy, network and both cosigners' keys, a signed confirmation",
            Request::DkgConfirm {
                wallet_id: WALLET,
                confirmations: vec![confirmation(pid(1))],
                registration: registration(true),
                confirmation_signatures: vec![(pid(3), bytes(0x63, 64))],
            },
        ),
        (
            "",
            "refresh from epoch 4 as party 2",
            Request::RefreshStart {
                params: refresh_params(),
                me: pid(2),
            },
        ),
        (
            "",
            "every refresh round-1 message",
            Request::RefreshRound2 {
                wallet_id: WALLET,
                round1: round1_all(),
            },
        ),
        (
            "",
            "refresh packages sealed to party 2",
            Request::RefreshRound3 {
                wallet_id: WALLET,
                packages: vec![sealed(pid(1), pid(2))],
            },
        ),
        (
            "",
            "refresh commit at the provider, with the recovery cosigner's signed confirmation",
            Request::RefreshCommit {
                wallet_id: WALLET,
                confirmations: vec![confirmation(pid(1))],
                provider_receipt: None,
                confirmation_signatures: vec![(pid(3), bytes(0x63, 64))],
            },
        ),
        (
            ".receipt",
            "refresh commit at the recovery cosigner, with the receipt",
            Request::RefreshCommit {
                wallet_id: WALLET,
                confirmations: vec![confirmation(pid(1))],
                provider_receipt: Some(bytes(0x72, 64)),
                confirmation_signatures: vec![],
            },
        ),
        (
            "",
            "delete shares older than epoch 5",
            Request::RefreshFinalize {
                wallet_id: WALLET,
                epoch: Epoch(5),
            },
        ),
        (
            "",
            "recovery onto a new device key",
            Request::RecoverStart {
                wallet_id: WALLET,
                new_device_key: public(4),
            },
        ),
        (
            "",
            "cancel a recovery",
            Request::RecoverCancel { wallet_id: WALLET },
        ),
        (
            "",
            "repair of party 1 as helper 2",
            Request::RepairStart {
                params: repair_params(),
                me: pid(2),
            },
        ),
        (
            "",
            "every helper's HPKE key",
            Request::RepairDeltas {
                wallet_id: WALLET,
                helper_keys: vec![(pid(2), bytes(0xa2, 4)), (pid(3), bytes(0xa3, 4))],
            },
        ),
        (
            "",
            "deltas sealed to helper 2",
            Request::RepairSigma {
                wallet_id: WALLET,
                deltas: vec![sealed(pid(3), pid(2))],
                participant_key: bytes(0xa4, 4),
            },
        ),
    ]
}

fn requests_sessions() -> Samples<Request> {
    let inner = wire::encode(&Request::GetWallet { wallet_id: WALLET }).unwrap();
    vec![
        (
            "",
            "a challenge for the next Authorized request",
            Request::Challenge { wallet_id: WALLET },
        ),
        (
            "",
            "a device-signed inner request",
            Request::Authorized {
                wallet_id: WALLET,
                role: KeyRole::Device,
                signature: bytes(0xa5, 64),
                request: ByteBuf::from(inner.clone()),
            },
        ),
        (
            ".recovery",
            "a recovery-signed inner request",
            Request::Authorized {
                wallet_id: WALLET,
                role: KeyRole::Recovery,
                signature: bytes(0xa5, 64),
                request: ByteBuf::from(inner.clone()),
            },
        ),
        (
            "",
            "a device-signed inner request under a precommitment's id",
            Request::Precommitted {
                wallet_id: WALLET,
                role: KeyRole::Device,
                precommitment: bytes(0xa8, 32),
                signature: bytes(0xa5, 64),
                request: ByteBuf::from(inner),
            },
        ),
        (
            "",
            "one-round signing of a sighash, the client's commitment included",
            Request::SignNow {
                wallet_id: WALLET,
                epoch: Epoch(4),
                message: bytes(0x90, 32),
                signers: vec![pid(1), pid(2)],
                commitments: bytes(0xa9, 8),
            },
        ),
        (
            "",
            "signing round 1 of a sighash",
            Request::SignCommit {
                wallet_id: WALLET,
                epoch: Epoch(4),
                message: bytes(0x90, 32),
                signers: vec![pid(1), pid(2)],
            },
        ),
        (
            "",
            "signing round 2",
            Request::SignShare {
                session_id: wire::SessionId([0xa6; 16]),
                signing_package: bytes(0xa7, 8),
            },
        ),
        (
            "",
            "public facts of a wallet",
            Request::GetWallet { wallet_id: WALLET },
        ),
        (
            "",
            "PSBT signing round 1",
            Request::SignPsbtCommit {
                wallet_id: WALLET,
                epoch: Epoch(4),
                psbt: ByteBuf::from(b"psbt\xff\x01".to_vec()),
                signers: vec![pid(1), pid(2)],
            },
        ),
        (
            "",
            "PSBT signing round 2",
            Request::SignPsbtShare {
                session_id: wire::SessionId([0xa6; 16]),
                signing_packages: vec![bytes(0xa7, 8), bytes(0xa8, 8)],
            },
        ),
        (
            "",
            "one-round PSBT signing, the client's commitment per input included",
            Request::SignPsbtNow {
                wallet_id: WALLET,
                epoch: Epoch(4),
                psbt: bytes(0xa5, 8),
                signers: vec![pid(1), pid(2)],
                commitments: vec![bytes(0xa9, 8), bytes(0xaa, 8)],
            },
        ),
        (
            "",
            "set a personal wallet's policy",
            Request::SetPolicy {
                wallet_id: WALLET,
                policy: Some("[[rule]]\nname = \"all\"\n".into()),
            },
        ),
        (
            ".none",
            "remove a personal wallet's policy",
            Request::SetPolicy {
                wallet_id: WALLET,
                policy: None,
            },
        ),
        (
            "",
            "every party's threshold ECDSA hello",
            Request::EcdsaDkgHellos {
                wallet_id: WALLET,
                hellos: vec![ecdsa_hello(1), ecdsa_hello(2)],
            },
        ),
        (
            "",
            "every party's threshold ECDSA round message",
            Request::EcdsaDkgRound {
                wallet_id: WALLET,
                messages: vec![ecdsa_round(1), ecdsa_round(2)],
            },
        ),
        (
            "",
            "every party's hello of a threshold ECDSA refresh",
            Request::EcdsaRefreshHellos {
                wallet_id: WALLET,
                hellos: vec![ecdsa_hello(1), ecdsa_hello(2)],
            },
        ),
        (
            "",
            "every party's round message of a threshold ECDSA refresh",
            Request::EcdsaRefreshRound {
                wallet_id: WALLET,
                messages: vec![ecdsa_round(1), ecdsa_round(2)],
            },
        ),
        (
            "",
            "an Ethereum transaction to sign, with the device's round 1",
            Request::EthSignStart {
                wallet_id: WALLET,
                epoch: Epoch(4),
                tx: bytes(0x02, 12),
                signers: vec![pid(1), pid(2)],
                nonce: bytes(0xa9, 32),
                round1: ecdsa_sign_message(1, 1),
            },
        ),
        (
            "",
            "the device's rounds 2 and 3 of an Ethereum signature",
            Request::EthSignFinish {
                session_id: wire::SessionId([0xa6; 16]),
                round2: ecdsa_sign_message(1, 2),
                round3: ecdsa_sign_message(1, 3),
            },
        ),
        (
            "",
            "a DAO wallet's policy in force",
            Request::DaoPolicy { wallet_id: WALLET },
        ),
        (
            "",
            "DAO mailbox envelopes of one topic",
            Request::Mailbox {
                topic: ByteBuf::from(TOPIC.to_vec()),
                envelopes: vec![ByteBuf::from(envelope().encode().unwrap())],
                from: 0,
            },
        ),
        (
            "page",
            "DAO mailbox envelopes, reading the enclave's from the third",
            Request::Mailbox {
                topic: ByteBuf::from(TOPIC.to_vec()),
                envelopes: Vec::new(),
                from: 2,
            },
        ),
    ]
}

fn responses() -> Samples<Response> {
    vec![
        (
            "",
            "an attestation document",
            Response::Attested {
                document: bytes(0xb0, 16),
            },
        ),
        (
            "",
            "our DKG round-1 broadcast",
            Response::DkgRound1 {
                message: round1(pid(2)),
            },
        ),
        (
            "",
            "our DKG round-2 packages",
            Response::DkgRound2 {
                packages: vec![sealed(pid(2), pid(1)), sealed(pid(2), pid(3))],
            },
        ),
        (
            "",
            "our DKG confirmation",
            Response::DkgRound3 {
                confirmation: confirmation(pid(2)),
                signature: Some(bytes(0x64, 64)),
            },
        ),
        (
            "",
            "the wallet is active (epoch 0, no optional fields)",
            Response::DkgDone {
                wallet: wallet_info(false),
            },
        ),
        (
            "",
            "signing round 1",
            Response::SignCommitted {
                session_id: wire::SessionId([0xa6; 16]),
                commitments: bytes(0xb1, 8),
            },
        ),
        (
            "",
            "signing round 2",
            Response::SignatureShare {
                share: bytes(0xb2, 8),
            },
        ),
        (
            "",
            "one-round signing: our commitment, share, receipt and next commitment",
            Response::SignedNow {
                commitments: bytes(0xb3, 8),
                share: bytes(0xb2, 8),
                receipt: bytes(0xb4, 8),
                next: Some(wire::NextCommitment {
                    id: bytes(0xa8, 32),
                    wallet_id: WALLET,
                    epoch: Epoch(4),
                    commitments: bytes(0xb5, 8),
                }),
            },
        ),
        (
            "",
            "wallet facts at epoch 5 with receipt and provider key",
            Response::Wallet {
                wallet: wallet_info(true),
            },
        ),
        (
            "",
            "a single-use challenge",
            Response::Challenge {
                challenge: bytes(0x91, 32),
            },
        ),
        (
            "",
            "our refresh round-1 broadcast",
            Response::RefreshRound1 {
                message: round1(pid(2)),
            },
        ),
        (
            "",
            "our refresh packages",
            Response::RefreshRound2 {
                packages: vec![sealed(pid(2), pid(1))],
            },
        ),
        (
            "",
            "our refresh confirmation",
            Response::RefreshRound3 {
                confirmation: confirmation(pid(2)),
                signature: Some(bytes(0x64, 64)),
            },
        ),
        (
            "",
            "the refresh is committed",
            Response::RefreshCommitted {
                wallet: wallet_info(true),
            },
        ),
        ("", "done", Response::Done),
        (
            "",
            "a recovery approved",
            Response::RecoverApproved {
                epoch: Epoch(4),
                completed: false,
            },
        ),
        (
            "",
            "our repair helper key",
            Response::RepairKey {
                hpke_public_key: bytes(0xb3, 8),
            },
        ),
        (
            "",
            "our threshold ECDSA repair term",
            Response::EcdsaRepairTerm {
                term: bytes(0xb8, 8),
            },
        ),
        (
            "",
            "our repair deltas",
            Response::RepairDeltas {
                deltas: vec![sealed(pid(2), pid(3))],
            },
        ),
        (
            "",
            "our repair sigma",
            Response::RepairSigma {
                sigma: sealed(pid(2), pid(1)),
            },
        ),
        (
            "",
            "PSBT signing round 1 with the enclave's reading",
            Response::PsbtCommitted {
                session_id: wire::SessionId([0xa6; 16]),
                commitments: vec![bytes(0xb1, 8)],
                evaluation: psbt_evaluation(),
            },
        ),
        (
            "",
            "PSBT signing round 2",
            Response::PsbtShares {
                receipt: None,
                shares: vec![bytes(0xb2, 8), bytes(0xb4, 8)],
            },
        ),
        (
            ".receipt",
            "PSBT signing round 2, with the receipt of the spend",
            Response::PsbtShares {
                receipt: Some(bytes(0xb6, 8)),
                shares: vec![bytes(0xb2, 8), bytes(0xb4, 8)],
            },
        ),
        (
            "",
            "one-round PSBT signing: our commitments, shares, reading, receipt, next commitment",
            Response::SignedPsbtNow {
                commitments: vec![bytes(0xb1, 8), bytes(0xb3, 8)],
                shares: vec![bytes(0xb2, 8), bytes(0xb4, 8)],
                evaluation: psbt_evaluation(),
                receipt: bytes(0xb6, 8),
                next: Some(wire::NextCommitment {
                    id: bytes(0xa8, 32),
                    wallet_id: WALLET,
                    epoch: Epoch(4),
                    commitments: bytes(0xb5, 8),
                }),
            },
        ),
        (
            "",
            "our threshold ECDSA hello",
            Response::EcdsaDkgHello {
                hello: ecdsa_hello(2),
            },
        ),
        (
            "",
            "our threshold ECDSA round message",
            Response::EcdsaDkgRound {
                message: ecdsa_round(2),
            },
        ),
        (
            "",
            "our rounds 1 and 2 of an Ethereum signature",
            Response::EthSignRound {
                session_id: wire::SessionId([0xa6; 16]),
                round1: ecdsa_sign_message(2, 1),
                round2: ecdsa_sign_message(2, 2),
            },
        ),
        (
            "",
            "our round 3 and the signed Ethereum transaction",
            Response::EthSigned {
                round3: ecdsa_sign_message(2, 3),
                raw_tx: bytes(0x02, 16),
                tx_hash: bytes(0xb7, 32),
                receipt: bytes(0xb6, 8),
            },
        ),
        (
            "",
            "a DAO wallet's policy",
            Response::DaoPolicy {
                policy: DAO_POLICY.into(),
                version: 2,
            },
        ),
        (
            "",
            "the enclave's envelopes and notes",
            Response::Mailbox {
                envelopes: vec![ByteBuf::from(envelope().encode().unwrap())],
                notes: vec!["refused one".into()],
                from: 0,
                more: false,
                outbox: ByteBuf::new(),
            },
        ),
        (
            "page",
            "one page of the enclave's envelopes, from the third, more following",
            Response::Mailbox {
                envelopes: vec![ByteBuf::from(envelope().encode().unwrap())],
                notes: Vec::new(),
                from: 2,
                more: true,
                outbox: ByteBuf::from(vec![0x1d; 8]),
            },
        ),
        (
            "",
            "an error",
            Response::Error(WireError::new(ErrorKind::NotFound, "no such wallet")),
        ),
    ]
}

fn psbt_evaluation() -> wire::PsbtEvaluation {
    wire::PsbtEvaluation {
        txid: "ab".repeat(32),
        value_leaving: 150_000,
        fee: 500,
        change: 10_000,
        destinations: vec![("bcrt1qexample".into(), 149_500), ("script:6a".into(), 0)],
        rule: Some("small".into()),
    }
}

fn store_messages() -> (Samples<StoreRequest>, Samples<StoreResponse>) {
    let requests = vec![
        (
            "",
            "store a sealed blob",
            StoreRequest::Put {
                key: "wallet/11/share/e4".into(),
                value: bytes(0xc0, 8),
            },
        ),
        (
            "",
            "store two audit records at once (group commit)",
            StoreRequest::PutMany {
                entries: vec![
                    ("audit/00000000000000000007".into(), bytes(0xc2, 8)),
                    ("audit/00000000000000000008".into(), bytes(0xc3, 8)),
                ],
            },
        ),
        (
            "",
            "read a key",
            StoreRequest::Get {
                key: "wallet/11/share/e4".into(),
            },
        ),
        (
            "",
            "remove a key",
            StoreRequest::Delete {
                key: "wallet/11/share/e4".into(),
            },
        ),
        (
            "",
            "list a prefix",
            StoreRequest::List {
                prefix: "audit/".into(),
            },
        ),
        (
            "",
            "remove the blobs a committed write replaced, in one write",
            StoreRequest::DeleteMany {
                keys: vec!["wallet/11/share/e3".into(), "anchors/p0007/b2a/5f0e".into()],
            },
        ),
        (
            "",
            "the parent's AWS credentials",
            StoreRequest::AwsCredentials,
        ),
        (
            "",
            "two of the enclave's log events, one dropped before them",
            StoreRequest::Log {
                instance: 1,
                records: vec![
                    LogRecord {
                        time_ms: 1_800_000_000_000,
                        level: LogLevel::Info,
                        target: "cosigner_enclave::run".into(),
                        message: "listening".into(),
                        fields: vec![("listen".into(), "vsock:4294967295:5000".into())],
                    },
                    LogRecord {
                        time_ms: 1_800_000_000_001,
                        level: LogLevel::Warn,
                        target: "cosigner_enclave::server".into(),
                        message: "connections closed by a limit".into(),
                        fields: vec![],
                    },
                ],
                dropped: 1,
            },
        ),
        (
            "",
            "the enclave's counters and histograms",
            StoreRequest::Metrics {
                instance: 1,
                snapshot: MetricsSnapshot {
                    attested: true,
                    connections_open: 2,
                    counters: vec![CounterSample {
                        counter: EnclaveCounter::Requests,
                        labels: vec!["SignShare".into(), "ok".into()],
                        value: 7,
                    }],
                    histograms: vec![HistogramSample {
                        histogram: EnclaveHistogram::Store,
                        labels: vec!["put".into()],
                        buckets: (0..=14).collect(),
                        sum_micros: 123_456,
                    }],
                },
            },
        ),
    ];
    let responses = vec![
        ("", "done", StoreResponse::Done),
        (
            "",
            "a value",
            StoreResponse::Value {
                value: Some(bytes(0xc0, 8)),
            },
        ),
        (
            ".absent",
            "no such key",
            StoreResponse::Value { value: None },
        ),
        (
            "",
            "keys",
            StoreResponse::Keys {
                keys: vec!["audit/1".into(), "audit/2".into()],
            },
        ),
        (
            "",
            "temporary credentials",
            StoreResponse::AwsCredentials {
                access_key_id: "AKIDEXAMPLE".into(),
                secret_access_key: SecretString::new("secret".into()),
                session_token: Some(SecretString::new("token".into())),
                expiration: Some(1_800_000_000),
            },
        ),
        (
            "",
            "a store error",
            StoreResponse::Error(WireError::new(ErrorKind::Internal, "disk full")),
        ),
    ];
    (requests, responses)
}

fn error_kinds() -> Samples<ErrorKind> {
    // Every kind travels inside `Response::Error`; each is pinned alone so a renamed kind shows.
    [
        ErrorKind::BadRequest,
        ErrorKind::NotFound,
        ErrorKind::Ceremony,
        ErrorKind::Integrity,
        ErrorKind::Internal,
        ErrorKind::Busy,
        ErrorKind::Unauthorized,
    ]
    .into_iter()
    .map(|kind| ("", "an error kind, alone in the envelope", kind))
    .collect()
}

#[test]
fn golden_client_enclave_and_store_messages() {
    let mut v = Vectors::open("wire.txt");
    let mut requests = requests_ceremonies();
    requests.extend(requests_sessions());
    pin_enum(&mut v, "Request", &requests, (wire_encode, wire_decode));
    pin_enum(&mut v, "Response", &responses(), (wire_encode, wire_decode));
    pin_enum(
        &mut v,
        "ErrorKind",
        &error_kinds(),
        (wire_encode, wire_decode),
    );
    let roles = [
        ("", "the device key signed", KeyRole::Device),
        ("", "the recovery credential signed", KeyRole::Recovery),
    ];
    pin_enum(&mut v, "KeyRole", &roles, (wire_encode, wire_decode));
    let (store_requests, store_responses) = store_messages();
    pin_enum(
        &mut v,
        "StoreRequest",
        &store_requests,
        (wire_encode, wire_decode),
    );
    pin_enum(
        &mut v,
        "StoreResponse",
        &store_responses,
        (wire_encode, wire_decode),
    );
    v.finish();
}

fn dao_dkg_messages() -> Samples<DaoMessage> {
    vec![
        (
            "",
            "the creator's invitation",
            DaoMessage::Invitation(invitation()),
        ),
        (
            "",
            "refresh round 1 of one party",
            DaoMessage::Round1(round1(pid(1))),
        ),
        (
            "",
            "refresh round 2: one sealed package",
            DaoMessage::Round2(sealed(pid(1), pid(6))),
        ),
        (
            "",
            "refresh confirmation",
            DaoMessage::Confirm(confirmation(pid(1))),
        ),
        (
            "",
            "DKG round 1, attempt 0",
            DaoMessage::DkgRound1 {
                attempt: 0,
                message: round1(pid(1)),
            },
        ),
        (
            "",
            "DKG round 2, attempt 1",
            DaoMessage::DkgRound2 {
                attempt: 1,
                package: sealed(pid(1), pid(6)),
            },
        ),
        (
            "",
            "DKG confirmation, attempt 0 (left out)",
            DaoMessage::DkgConfirm {
                confirmation: confirmation(pid(1)),
                invitation: bytes(0x7e, 32),
                attempt: 0,
            },
        ),
        (
            ".attempt",
            "DKG confirmation, attempt 2",
            DaoMessage::DkgConfirm {
                confirmation: confirmation(pid(1)),
                invitation: bytes(0x7e, 32),
                attempt: 2,
            },
        ),
        (
            "",
            "a member stored its share",
            DaoMessage::DkgStored {
                attempt: 0,
                party: pid(1),
                public_key_package: bytes(0x51, 32),
            },
        ),
        (
            "",
            "a member lost its DKG state",
            DaoMessage::DkgRetry {
                attempt: 0,
                party: pid(2),
            },
        ),
        (
            "",
            "the provider starts attempt 1",
            DaoMessage::DkgAttempt { attempt: 1 },
        ),
        (
            "",
            "the wallet is active, attempt 0 (left out)",
            DaoMessage::Activated {
                wallet_id: WALLET,
                attempt: 0,
            },
        ),
        (
            ".attempt",
            "the wallet is active, attempt 1",
            DaoMessage::Activated {
                wallet_id: WALLET,
                attempt: 1,
            },
        ),
    ]
}

fn dao_sign_messages() -> Samples<DaoMessage> {
    let request = bytes(0x80, 32);
    vec![
        (
            "",
            "a member asks to sign a PSBT",
            DaoMessage::SignRequest(sign_request()),
        ),
        (
            "",
            "the provider's reading of it",
            DaoMessage::Evaluation(evaluation()),
        ),
        ("", "a member's approval", DaoMessage::Approval(approval())),
        (
            "",
            "a member's rejection without a reason (left out)",
            DaoMessage::Reject(Rejection {
                request: request.clone(),
                party: pid(3),
                reason: None,
            }),
        ),
        (
            ".reason",
            "a member's rejection with its reason",
            DaoMessage::Reject(Rejection {
                request: request.clone(),
                party: pid(3),
                reason: Some("too large".into()),
            }),
        ),
        (
            "",
            "a request announced in the wallet's topic (its founding envelope)",
            DaoMessage::Announce {
                envelope: ByteBuf::from(envelope().encode().unwrap()),
            },
        ),
        (
            "",
            "the signers of round 0 (left out)",
            DaoMessage::SignerSet {
                request: request.clone(),
                parties: vec![pid(1), pid(2), pid(4), pid(5)],
                round: 0,
            },
        ),
        (
            ".round",
            "the signers of round 3",
            DaoMessage::SignerSet {
                request: request.clone(),
                parties: vec![pid(1), pid(2), pid(4), pid(5)],
                round: 3,
            },
        ),
        (
            "",
            "a member's commitments",
            DaoMessage::Commitments {
                request: request.clone(),
                party: pid(1),
                commitments: vec![bytes(0xb1, 8)],
                round: 0,
            },
        ),
        (
            "",
            "the signing packages",
            DaoMessage::SigningPackages {
                request: request.clone(),
                packages: vec![bytes(0xa7, 8)],
                round: 0,
            },
        ),
        (
            "",
            "a member's signature shares",
            DaoMessage::Shares {
                request: request.clone(),
                party: pid(1),
                shares: vec![bytes(0xb2, 8)],
                round: 1,
            },
        ),
        (
            "",
            "the signed transaction",
            DaoMessage::Signed {
                request: request.clone(),
                txid: "ab".repeat(32),
                tx: bytes(0xd0, 12),
            },
        ),
        (
            "",
            "a member proposes a policy",
            DaoMessage::PolicyChange(policy_change()),
        ),
        (
            "",
            "the admin quorum it needs",
            DaoMessage::PolicyQuorum {
                request: request.clone(),
                approvals: 2,
                approvers: vec![pid(1), pid(2), pid(3)],
            },
        ),
        (
            "",
            "the new policy is in force",
            DaoMessage::PolicyChanged {
                request: request.clone(),
                version: 2,
            },
        ),
        (
            "",
            "a member proposes a refresh",
            DaoMessage::RefreshStart(refresh_proposal()),
        ),
        (
            "",
            "a holder's new shares are stored",
            DaoMessage::Committed {
                parties: vec![pid(4), pid(5)],
                epoch: Epoch(5),
            },
        ),
        (
            "",
            "every party committed epoch 5",
            DaoMessage::Refreshed {
                wallet_id: WALLET,
                epoch: Epoch(5),
            },
        ),
        (
            "",
            "the provider refuses",
            DaoMessage::Refused {
                request: request.clone(),
                reason: "expired".into(),
            },
        ),
        (
            "",
            "an Ethereum treasury's DKG: a party's HPKE key",
            DaoMessage::EcdsaDkgHello {
                attempt: 1,
                hello: ecdsa_hello(6),
            },
        ),
        (
            "",
            "an Ethereum treasury's DKG: a piece of a party's round-3 message",
            DaoMessage::EcdsaDkgPart {
                attempt: 0,
                part: ecdsa_part(3),
            },
        ),
        (
            "",
            "an Ethereum treasury's signing: a signer's HPKE key of round 2",
            DaoMessage::EcdsaSignHello {
                request: request.clone(),
                round: 2,
                hello: ecdsa_hello(6),
            },
        ),
        (
            "",
            "an Ethereum treasury's signing: a signer's sealed step-1 parts",
            DaoMessage::EcdsaSignPart {
                request,
                round: 0,
                part: ecdsa_part(1),
            },
        ),
    ]
}

fn ecdsa_part(step: u8) -> dao::ecdsa::EcdsaPart {
    dao::ecdsa::EcdsaPart {
        from: pid(1),
        step,
        broadcast: ByteBuf::from(if step == 3 { vec![0x0b; 8] } else { Vec::new() }),
        sealed: vec![sealed(pid(1), pid(6))],
    }
}

fn dao_encode(message: &DaoMessage) -> Vec<u8> {
    message.encode().expect("encodes")
}

fn dao_decode(bytes: &[u8]) -> Result<DaoMessage, String> {
    DaoMessage::decode(bytes).map_err(|e| e.to_string())
}

#[test]
fn golden_dao_messages() {
    let mut v = Vectors::open("dao.txt");
    let mut messages = dao_dkg_messages();
    messages.extend(dao_sign_messages());
    pin_enum(&mut v, "DaoMessage", &messages, (dao_encode, dao_decode));
    v.finish();
}

fn mailbox_requests() -> Samples<MailboxRequest> {
    let envelope = ByteBuf::from(envelope().encode().unwrap());
    let proof = ReadProof {
        reader: public(12),
        signature: bytes(0x5c, 64),
    };
    vec![
        (
            "",
            "a post without members (left out)",
            MailboxRequest::Post {
                topic: TOPIC,
                envelope: envelope.clone(),
                members: vec![],
            },
        ),
        (
            ".members",
            "a post naming the topic's members",
            MailboxRequest::Post {
                topic: TOPIC,
                envelope,
                members: vec![public(11), public(12)],
            },
        ),
        (
            "",
            "a fetch without a proof (left out)",
            MailboxRequest::Fetch {
                topic: TOPIC,
                after: 3,
                limit: 0,
                proof: None,
            },
        ),
        (
            ".proof",
            "a member's fetch with its read proof",
            MailboxRequest::Fetch {
                topic: TOPIC,
                after: 3,
                limit: 10,
                proof: Some(proof),
            },
        ),
        (
            "",
            "this connection's read challenge",
            MailboxRequest::Challenge,
        ),
    ]
}

fn mailbox_responses() -> Samples<MailboxResponse> {
    let item = MailboxItem {
        seq: 4,
        envelope: ByteBuf::from(envelope().encode().unwrap()),
    };
    vec![
        (
            "",
            "the sequence number of a post",
            MailboxResponse::Posted { seq: 4 },
        ),
        (
            "",
            "a page without members (left out)",
            MailboxResponse::Messages {
                items: vec![item.clone()],
                more: true,
                members: vec![],
            },
        ),
        (
            ".members",
            "a page with the topic's members",
            MailboxResponse::Messages {
                items: vec![item],
                more: false,
                members: vec![public(11), public(12)],
            },
        ),
        (
            "",
            "the read challenge",
            MailboxResponse::Challenge {
                nonce: bytes(0x92, 32),
            },
        ),
        (
            "",
            "a refusal",
            MailboxResponse::Error(WireError::new(ErrorKind::BadRequest, "not a member")),
        ),
    ]
}

#[test]
fn golden_mailbox_messages() {
    let mut v = Vectors::open("mailbox.txt");
    pin_value(
        &mut v,
        "Envelope",
        "a signed mailbox envelope (signature bytes fixed, not computed)",
        &envelope(),
        (
            |e| e.encode().expect("encodes"),
            |b| Envelope::decode(b).map_err(|e| e.to_string()),
        ),
    );
    let request_codec: (Encode<MailboxRequest>, Decode<MailboxRequest>) = (
        |r| mailbox::encode_request(r).expect("encodes"),
        |b| mailbox::decode_request(b).map_err(|e| e.to_string()),
    );
    pin_enum(&mut v, "MailboxRequest", &mailbox_requests(), request_codec);
    let response_codec: (Encode<MailboxResponse>, Decode<MailboxResponse>) = (
        |r| mailbox::encode_response(r).expect("encodes"),
        |b| mailbox::decode_response(b).map_err(|e| e.to_string()),
    );
    pin_enum(
        &mut v,
        "MailboxResponse",
        &mailbox_responses(),
        response_codec,
    );
    v.finish();
}

fn audit_entry() -> AuditEntry {
    AuditEntry {
        seq: 2,
        prev: bytes(0xe0, 32),
        time_ms: 1_700_000_000_004,
        wallet_id: WALLET.to_hex(),
        action: "sign".into(),
        actor: format!("device:{}", hex::encode(public(1))),
        digest: "90".repeat(32),
        decision: "allowed".into(),
    }
}

#[test]
fn golden_tokens_audit_records_and_frames() {
    let mut v = Vectors::open("records.txt");
    let token = EnrollmentToken {
        device_key: public(1).into_vec(),
        expires_ms: 1_800_000_000_000,
        signature: bytes(0x5b, 64).into_vec(),
    };
    pin_value(
        &mut v,
        "EnrollmentToken",
        "an enrollment token (deterministic CBOR; signature bytes fixed, not computed)",
        &token,
        (EnrollmentToken::to_bytes, |b| {
            EnrollmentToken::from_bytes(b).map_err(|e| e.to_string())
        }),
    );
    let entry_codec: (Encode<AuditEntry>, Decode<AuditEntry>) =
        (|e| audit::encode_entry(e).expect("encodes"), cbor_decode);
    pin_value(
        &mut v,
        "AuditEntry",
        "an audit entry (audit::encode_entry: plain CBOR)",
        &audit_entry(),
        entry_codec,
    );
    let record = AuditRecord {
        entry: ByteBuf::from(audit::encode_entry(&audit_entry()).unwrap()),
        signature: bytes(0x5d, 64),
    };
    pin_value(
        &mut v,
        "AuditRecord",
        "a stored audit record (plain CBOR; signature bytes fixed)",
        &record,
        (cbor_encode, cbor_decode),
    );
    v.pin(
        "audit.key",
        "audit::audit_key(7): the store key of entry 7",
        audit::audit_key(7).as_bytes(),
    );
    let frame_codec: (Encode<Vec<u8>>, Decode<Vec<u8>>) = (
        |body| encode_frame(body).expect("fits"),
        |b| {
            let mut decoder = FrameDecoder::new();
            decoder.push(b);
            decoder
                .next_frame()
                .map_err(|e| e.to_string())?
                .ok_or_else(|| "incomplete".to_owned())
        },
    );
    pin_value(
        &mut v,
        "frame",
        "a frame: 4-byte big-endian length, then the body",
        &b"hello".to_vec(),
        frame_codec,
    );
    v.finish();
}
