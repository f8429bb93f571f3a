//! One-round signing and receipts, against running processes: a signature costs one round trip
//! once the provider handed out a commitment on the session, a commitment signs at most once
//! (replayed, on another session, after a restart), and each signature comes with a receipt that
//! checks offline against the trust file and fails when altered.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use cosigner_client::ClientError;
use cosigner_client::courier::Courier;
use cosigner_client::psbt_sign;
use cosigner_client::receipt::{Receipt, verify_receipt};
use cosigner_client::session::Session;
use cosigner_client::trust::Trust;
use cosigner_client::wallet::{self, CoSigner};
use cosigner_protocol::auth::sign_request;
use cosigner_protocol::id::Epoch;
use cosigner_protocol::party::{DEVICE, PROVIDER};
use cosigner_protocol::sign::Precommitment;
use cosigner_protocol::wire::{self, ErrorKind, KeyRole, NextCommitment, Request, Response};
use cosigner_tests::owner::Owner;
use cosigner_tests::wallets::{deployment_with_alice, p, sign_message};
use serde_bytes::ByteBuf;
use serde_json::Value;

type Suite = frost_secp256k1_tr::Secp256K1Sha256TR;

const MESSAGE: [u8; 32] = [0x42; 32];

/// Signs once with the client library; answers the round trips it took and the result.
fn sign_counted(owner: &Owner, s: &mut Session) -> (u64, wallet::Signed) {
    let before = s.round_trips();
    let signed =
        wallet::sign_with_receipt(&owner.home, s, CoSigner::Provider, owner.id, &MESSAGE).unwrap();
    (s.round_trips() - before, signed)
}

/// A `Precommitted` `SignNow` of `MESSAGE` using `next`, made by hand as a modified client
/// would, with fresh device nonces.
fn precommitted_request(owner: &Owner, next: &NextCommitment) -> Request {
    let inner = Request::SignNow {
        wallet_id: owner.id,
        epoch: Epoch(0),
        message: ByteBuf::from(MESSAGE.to_vec()),
        signers: vec![DEVICE, PROVIDER],
        commitments: ByteBuf::from(device_commitment(owner)),
    };
    precommitted(owner, next, &inner)
}

/// Fresh device commitments, as a client draws them for one signature.
fn device_commitment(owner: &Owner) -> Vec<u8> {
    let share = owner.home.share(&owner.id).unwrap();
    let key = frost_core::keys::KeyPackage::<Suite>::deserialize(&share).unwrap();
    Precommitment::new(&key, DEVICE, &mut rand_core::OsRng)
        .unwrap()
        .1
}

/// `inner` signed by the device key under the commitment `next` (`Precommitted`).
fn precommitted(owner: &Owner, next: &NextCommitment, inner: &Request) -> Request {
    let inner = wire::encode(inner).unwrap();
    let device = owner.home.device_key().unwrap();
    let signature = sign_request(&device, &owner.id, &next.id, &inner).unwrap();
    Request::Precommitted {
        wallet_id: owner.id,
        role: KeyRole::Device,
        precommitment: next.id.clone(),
        signature: ByteBuf::from(signature.to_vec()),
        request: ByteBuf::from(inner),
    }
}

/// A PSBT (BIP-174, binary) spending two of the wallet's outputs.
fn two_input_psbt(owner: &Owner) -> Vec<u8> {
    let wallet = owner.home.wallet(&owner.id).unwrap();
    cosigner_tests::bitcoin_tx::two_input_psbt(&hex::encode(wallet.group_public_key)).unwrap()
}

fn not_found(answer: Result<Response, ClientError>) {
    assert!(
        matches!(&answer, Err(ClientError::Remote(e)) if e.kind == ErrorKind::NotFound),
        "{answer:?}"
    );
}

#[test]
fn steady_state_signing_takes_one_round_trip_with_a_receipt_each() {
    let (d, w) = deployment_with_alice();
    let owner = Owner::of(&d, &w);
    let mut s = owner.cosigners.provider();
    // The first signature on a session: a challenge, then the request.
    let (trips, first) = sign_counted(&owner, &mut s);
    assert_eq!(trips, 2);
    // Then one round trip each, on the commitment the previous answer handed out.
    for _ in 0..3 {
        let (trips, signed) = sign_counted(&owner, &mut s);
        assert_eq!(trips, 1);
        assert_ne!(signed.signature, first.signature, "fresh nonces every time");
    }
    // Every receipt checks offline against the trust file: this signature, by this enclave.
    let trust = Trust::load(&d.dir.path().join("trust.toml")).unwrap();
    let checked = verify_receipt(first.receipt.as_ref().unwrap(), &trust).unwrap();
    assert_eq!(checked.entry.action, "sign");
    assert_eq!(checked.entry.digest, hex::encode(MESSAGE));
    assert_eq!(checked.entry.wallet_id, w.id);
    assert_eq!(checked.key, s.attested_key().unwrap());
}

#[test]
fn a_commitment_signs_once_on_its_own_session_and_dies_with_a_restart() {
    let (mut d, w) = deployment_with_alice();
    let owner = Owner::of(&d, &w);
    let mut s = owner.cosigners.provider();
    sign_counted(&owner, &mut s);
    let next = s.take_commitment(&owner.id, Epoch(0)).unwrap();
    let request = precommitted_request(&owner, &next);
    // Another session cannot use it: it is this session's.
    let mut other = owner.cosigners.provider();
    not_found(other.call(&request));
    // Its own session uses it once; the same request again (a replay, a retry) finds nothing.
    match s.call(&request).unwrap() {
        Response::SignedNow { commitments, .. } => assert_eq!(commitments, next.commitments),
        answer => panic!("{answer:?}"),
    }
    not_found(s.call(&request));
    // The client kept no commitment from that hand-made answer: a challenge first.
    let (trips, _) = sign_counted(&owner, &mut s);
    assert_eq!(trips, 2);
    let kept = s.take_commitment(&owner.id, Epoch(0)).unwrap();
    // A restart forgets every commitment.
    d.provider.stop();
    d.provider.start_processes().unwrap();
    let mut after = owner.cosigners.provider();
    not_found(after.call(&precommitted_request(&owner, &kept)));
    // A client still holding one (a retry after the crash) is told it is gone and signs
    // without it, with fresh nonces of its own: the stale try, a challenge, the request.
    after.keep_commitment(kept);
    let (trips, _) = sign_counted(&owner, &mut after);
    assert_eq!(trips, 3);
    let (trips, _) = sign_counted(&owner, &mut after);
    assert_eq!(trips, 1);
}

#[test]
fn sign_json_prints_a_receipt_that_verifies_and_an_altered_one_does_not() {
    let (d, w) = deployment_with_alice();
    let out = sign_message(&d, &w.home, &w.id, &hex::encode(MESSAGE), &[]);
    let signed: Value = serde_json::from_str(out.ok()).unwrap();
    let file = d.dir.path().join("signed.json");
    std::fs::write(&file, out.ok()).unwrap();
    let trust = d.dir.path().join("trust.toml");
    let verify = |receipt: &std::path::Path| {
        d.cosigner([
            "receipt",
            "verify",
            "--receipt",
            p(receipt),
            "--trust",
            p(&trust),
            "--json",
        ])
    };
    let checked: Value = serde_json::from_str(verify(&file).ok()).unwrap();
    assert_eq!(checked["valid"], true);
    assert_eq!(checked["message"], hex::encode(MESSAGE));
    assert_eq!(checked["wallet"], w.id.as_str());
    // One byte of the signed record changed: refused, in one line.
    let mut receipt: Receipt = serde_json::from_value(signed["receipt"].clone()).unwrap();
    let mut record = hex::decode(&receipt.record).unwrap();
    let last = record.len() - 1;
    record[last] ^= 1;
    receipt.record = hex::encode(record);
    let altered = d.dir.path().join("altered.json");
    std::fs::write(&altered, serde_json::to_string(&receipt).unwrap()).unwrap();
    let refused = verify(&altered);
    assert_eq!(refused.code, Some(1), "{refused:?}");
    assert_eq!(
        refused.stderr.trim().lines().count(),
        1,
        "{}",
        refused.stderr
    );
    assert!(refused.stderr.contains("receipt"), "{}", refused.stderr);
}

#[test]
fn a_psbt_signs_in_one_round_trip_and_its_commitment_only_once() {
    let (d, w) = deployment_with_alice();
    let owner = Owner::of(&d, &w);
    let mut s = owner.cosigners.provider();
    let psbt = two_input_psbt(&owner);
    // The first on a session: a challenge, then `SignPsbtNow`; then one round trip each, with
    // a receipt of the spend.
    for expected in [2, 1, 1] {
        let before = s.round_trips();
        let signed = psbt_sign::sign_psbt(&owner.home, &mut s, owner.id, &psbt).unwrap();
        assert_eq!(s.round_trips() - before, expected);
        assert!(signed.receipt.is_some());
    }
    // Made by hand under the commitment the last answer handed out: signed once, then the
    // commitment is gone (a replay gets nothing, not even a second set of shares).
    let next = s.take_commitment(&owner.id, Epoch(0)).unwrap();
    let inner = Request::SignPsbtNow {
        wallet_id: owner.id,
        epoch: Epoch(0),
        psbt: ByteBuf::from(psbt.clone()),
        signers: vec![DEVICE, PROVIDER],
        commitments: (0..2)
            .map(|_| ByteBuf::from(device_commitment(&owner)))
            .collect(),
    };
    let request = precommitted(&owner, &next, &inner);
    let answer = s.call(&request).unwrap();
    assert!(
        matches!(&answer, Response::SignedPsbtNow { shares, .. } if shares.len() == 2),
        "{answer:?}"
    );
    not_found(s.call(&request));
    // One commitment for two inputs is refused, under a fresh challenge.
    let Response::SignedPsbtNow {
        next: Some(next), ..
    } = answer
    else {
        panic!("no next commitment")
    };
    let short = Request::SignPsbtNow {
        wallet_id: owner.id,
        epoch: Epoch(0),
        psbt: ByteBuf::from(psbt),
        signers: vec![DEVICE, PROVIDER],
        commitments: vec![ByteBuf::from(device_commitment(&owner))],
    };
    let refused = s.call(&precommitted(&owner, &next, &short));
    assert!(
        matches!(&refused, Err(ClientError::Remote(e)) if e.kind == ErrorKind::BadRequest),
        "{refused:?}"
    );
}

/// Two devices' sessions race one-round PSBTs under a limit only one of them fits: the enclave
/// re-evaluates under the wallet's lock before any share leaves, so exactly one is signed.
#[test]
fn racing_one_round_psbts_never_sign_past_the_limit() {
    let (d, w) = deployment_with_alice();
    let owner = Owner::of(&d, &w);
    let policy = "[[rule]]\nname = \"daily\"\nvelocity = { window_hours = 24, limit = 100000 }\napprovals = 1\n";
    let (mut p, mut r) = (owner.cosigners.provider(), owner.cosigners.recovery());
    let out = d.dir.path().join("policed-recovery.key");
    let id = wallet::create_with_policy(
        &owner.home,
        &mut p,
        &mut r,
        cosigner_client::address::Network::Regtest,
        &out,
        Some(policy),
    )
    .unwrap()
    .wallet
    .wallet_id;
    let key = hex::encode(owner.home.wallet(&id).unwrap().group_public_key);
    // 70 000 and 71 000 sat leaving: either fits the limit, both do not.
    let psbts: Vec<Vec<u8>> = [50_000, 49_000]
        .into_iter()
        .map(|change| {
            let spend =
                cosigner_tests::bitcoin_tx::payment(&key, &[70_000, 50_000], 60_000, change)
                    .unwrap();
            cosigner_protocol::psbt::decode_psbt_file(spend.psbt_base64.as_bytes()).unwrap()
        })
        .collect();
    let signed = std::thread::scope(|scope| {
        let racers: Vec<_> = psbts
            .iter()
            .map(|psbt| {
                let owner = &owner;
                scope.spawn(move || {
                    let mut s = owner.cosigners.provider();
                    psbt_sign::sign_psbt(&owner.home, &mut s, id, psbt)
                })
            })
            .collect();
        racers
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Vec<_>>()
    });
    let refused: Vec<_> = signed.iter().filter_map(|r| r.as_ref().err()).collect();
    assert_eq!(refused.len(), 1, "{signed:?}");
    assert!(
        matches!(refused[0], ClientError::Remote(e) if e.kind == ErrorKind::BadRequest),
        "{refused:?}"
    );
}
