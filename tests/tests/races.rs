//! The lifecycle tried as an attacker would, against running processes: a thief with the stolen
//! phone racing the owner's recovery, readers and signers racing refreshes (the rollback anchor's
//! writes), anonymous floods of ceremonies and refused requests, a signing session opened before
//! a revocation. Each test runs the attack and then shows the legitimate user unaffected.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use cosigner_tests::pid;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cosigner_client::ClientError;
use cosigner_client::session::Session;
use cosigner_protocol::id::PartyId;
use cosigner_protocol::wire::{
    Confirmation, DkgParams, ErrorKind, KeyRole, Request, Response, SUITE_SECP256K1_TR, SessionId,
    WalletId,
};
use cosigner_tests::Deployment;
use cosigner_tests::owner::{Cosigners, Owner};
use cosigner_tests::wallets::{
    TestWallet, create, deployment_with_alice, p, recover, refresh, show, sign, sign_with, signs,
    verifies,
};
use serde_bytes::ByteBuf;
use serde_json::Value;

type Wallet = TestWallet;

/// A deployment, Alice's wallet in it, and Alice as its owner driving the cosigners by hand.
fn alices_wallet() -> (Deployment, Wallet, Owner) {
    let (d, w) = deployment_with_alice();
    let owner = Owner::of(&d, &w);
    (d, w, owner)
}

fn epoch(d: &Deployment, home: &Path, id: &str) -> u64 {
    let out = show(d, home, id);
    let v: Value = serde_json::from_str(out.ok()).unwrap();
    v["epoch"].as_u64().unwrap()
}

/// A thief with the stolen phone refreshes and signs in a loop while the owner recovers from a
/// new phone: the owner wins within three tries, then the thief can neither sign nor refresh,
/// and the new phone signs and refreshes.
#[test]
fn a_thief_refreshing_and_signing_in_a_loop_cannot_block_the_owners_recovery() {
    let d = Arc::new(Deployment::start().unwrap());
    let w = create(&d, "stolen");
    signs(&d, &w.home, &w);
    let stop = Arc::new(AtomicBool::new(false));
    let thief_ok = Arc::new(AtomicUsize::new(0));
    let thief = {
        let (d, stop, ok) = (Arc::clone(&d), Arc::clone(&stop), Arc::clone(&thief_ok));
        let (home, id) = (w.home.clone(), w.id.clone());
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(120);
            for round in 0..400 {
                if stop.load(Ordering::SeqCst) || Instant::now() > deadline {
                    break;
                }
                let out = if round % 2 == 0 {
                    refresh(&d, &home, &id)
                } else {
                    sign(&d, &home, &id)
                };
                if out.code == Some(0) {
                    ok.fetch_add(1, Ordering::SeqCst);
                }
            }
        })
    };
    // Let the thief get going first.
    while thief_ok.load(Ordering::SeqCst) < 2 {
        std::thread::sleep(Duration::from_millis(50));
    }
    let new_home = d.home("new-phone");
    let mut tries = Vec::new();
    let mut recovered = None;
    for _ in 0..3 {
        let out = recover(&d, &new_home, &w);
        if out.code == Some(0) {
            recovered = Some(out.stdout.clone());
            break;
        }
        tries.push(out.stderr.clone());
    }
    stop.store(true, Ordering::SeqCst);
    thief.join().unwrap();
    let recovered = recovered.unwrap_or_else(|| panic!("the owner lost 3 tries: {tries:#?}"));
    let r: Value = serde_json::from_str(recovered.trim()).unwrap();
    assert_eq!(r["group_public_key"], w.key.as_str());

    // The thief is out: no signature, no refresh.
    let line = sign(&d, &w.home, &w.id).refused().to_owned();
    assert!(line.contains("revoked"), "{line}");
    let line = refresh(&d, &w.home, &w.id).refused().to_owned();
    assert!(line.contains("revoked"), "{line}");
    // The owner signs and refreshes with the new phone, at the same address.
    signs(&d, &new_home, &w);
    let before = epoch(&d, &new_home, &w.id);
    refresh(&d, &new_home, &w.id).ok();
    assert_eq!(epoch(&d, &new_home, &w.id), before + 1);
    signs(&d, &new_home, &w);
}

/// Running `recover` again after it succeeded changes nothing and succeeds (idempotent).
#[test]
fn recover_run_twice_in_the_same_home_finishes_once() {
    let (d, w) = deployment_with_alice();
    let new_home = d.home("alice-new");
    let first: Value = serde_json::from_str(recover(&d, &new_home, &w).ok()).unwrap();
    let second: Value = serde_json::from_str(recover(&d, &new_home, &w).ok()).unwrap();
    assert_eq!(first["epoch"], second["epoch"]);
    signs(&d, &new_home, &w);
}

/// The recovery credential suspends the registered device key at once; cancelling gives it back.
#[test]
fn a_started_recovery_suspends_the_device_key_until_it_is_cancelled() {
    let (d, w) = deployment_with_alice();
    signs(&d, &w.home, &w);
    let owner = Owner::of(&d, &w);
    let newcomer = p256::ecdsa::SigningKey::random(&mut rand_core::OsRng);
    let start = Request::RecoverStart {
        wallet_id: owner.id,
        new_device_key: ByteBuf::from(cosigner_protocol::auth::public_key_bytes(&newcomer)),
    };
    for addr in [d.provider.addr(), d.recovery.addr()] {
        let mut s = owner.cosigners.connect(&addr);
        let answer = owner.authorized(&mut s, KeyRole::Recovery, &start).unwrap();
        assert!(
            matches!(answer, Response::RecoverApproved { .. }),
            "{answer:?}"
        );
    }
    let line = sign(&d, &w.home, &w.id).refused().to_owned();
    assert!(line.contains("suspended"), "{line}");
    let line = refresh(&d, &w.home, &w.id).refused().to_owned();
    assert!(line.contains("suspended"), "{line}");
    d.cosigner([
        "recover",
        "--wallet",
        &w.id,
        "--recovery-key",
        p(&w.recovery_key),
        "--cancel",
        "--json",
    ])
    .ok();
    signs(&d, &w.home, &w);
}

/// Signers and unauthenticated readers race a dozen refreshes: every refresh lands or fails
/// with a clear error, the epoch equals the number reported successful, and nobody sees a false
/// rollback alarm.
#[test]
fn readers_and_signers_racing_a_dozen_refreshes_see_no_false_rollback_alarm() {
    // A signature limit makes every signature write the wallet's state (its counter), so the
    // signers race the refreshes' state writes of the same wallet at the provider.
    let d = Arc::new(
        Deployment::start_with("\n[policy]\nrefresh_after_signatures = 1000000\n").unwrap(),
    );
    let w = create(&d, "alice");
    // Two signers on the same wallet (from its home: they may see a share the refresh is
    // replacing and fail, but must never see a rollback alarm) and one on another wallet.
    let other = create(&d, "bob");
    let stop = Arc::new(AtomicBool::new(false));
    let alarms = Arc::new(AtomicUsize::new(0));
    let reads = Arc::new(AtomicUsize::new(0));
    let mut threads = Vec::new();
    for signer in [&w, &w, &other] {
        let (d, stop, alarms) = (Arc::clone(&d), Arc::clone(&stop), Arc::clone(&alarms));
        let (home, id) = (signer.home.clone(), signer.id.clone());
        threads.push(std::thread::spawn(move || {
            for _ in 0..200 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let out = sign(&d, &home, &id);
                if out.stderr.contains("not the current state") {
                    alarms.fetch_add(1, Ordering::SeqCst);
                }
            }
        }));
    }
    let cosigners = Arc::new(Cosigners::of(&d));
    for _ in 0..3 {
        let (cosigners, stop, alarms, reads) = (
            Arc::clone(&cosigners),
            Arc::clone(&stop),
            Arc::clone(&alarms),
            Arc::clone(&reads),
        );
        let id = WalletId::from_hex(&w.id).unwrap();
        threads.push(std::thread::spawn(move || {
            let mut s = cosigners.provider();
            let deadline = Instant::now() + Duration::from_secs(300);
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                match s.call(&Request::GetWallet { wallet_id: id }) {
                    Ok(_) => {
                        reads.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) => {
                        let text = e.to_string();
                        if text.contains("not the current state") || text.contains("Integrity") {
                            alarms.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }
            }
        }));
    }
    let mut landed = 0;
    for _ in 0..12 {
        let out = refresh(&d, &w.home, &w.id);
        if out.code == Some(0) {
            landed += 1;
        } else {
            assert!(
                out.stderr.contains("try again") || out.stderr.contains("Busy"),
                "a refresh failed without a clear, retryable error: {}",
                out.stderr
            );
        }
    }
    stop.store(true, Ordering::SeqCst);
    for t in threads {
        t.join().unwrap();
    }
    assert!(reads.load(Ordering::SeqCst) > 0);
    assert_eq!(alarms.load(Ordering::SeqCst), 0, "false rollback alarms");
    assert_eq!(epoch(&d, &w.home, &w.id), landed);
    let mut s = cosigners.provider();
    let info =
        cosigner_client::wallet::provider_view(&mut s, WalletId::from_hex(&w.id).unwrap()).unwrap();
    assert_eq!(info.epoch.get(), landed);
    signs(&d, &w.home, &w);
    assert!(!d.provider.logs().contains("not the current state"));
}

fn dkg_start(s: &mut Session) -> Result<Response, cosigner_client::ClientError> {
    use rand_core::RngCore;
    let mut id = [0u8; 16];
    rand_core::OsRng.fill_bytes(&mut id);
    s.call(&Request::DkgStart {
        params: DkgParams {
            wallet_id: WalletId(id),
            ciphersuite: SUITE_SECP256K1_TR.to_owned(),
            min_signers: 2,
            parties: vec![pid(1), pid(2), pid(3)],
        },
        me: pid(2),
        enrollment: None,
    })
}

/// Strangers start DKGs by the thousand: one connection gets a few at a time, and the table's
/// bound evicts the oldest instead of refusing everyone, so `wallet create` still works.
#[test]
fn a_flood_of_anonymous_dkg_starts_does_not_block_wallet_creation() {
    let d = Deployment::start().unwrap();
    let cosigners = Cosigners::of(&d);
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut started = 0;
    let mut refused_busy = 0;
    while started < 1100 && Instant::now() < deadline {
        let mut s = cosigners.provider();
        for _ in 0..5 {
            match dkg_start(&mut s) {
                Ok(Response::DkgRound1 { .. }) => started += 1,
                Err(ClientError::Remote(e)) if e.kind == ErrorKind::Busy => {
                    refused_busy += 1;
                }
                other => panic!("unexpected answer to DkgStart: {other:?}"),
            }
        }
    }
    assert!(started >= 1100, "only {started} DKGs started in time");
    assert!(refused_busy > 0, "the per-connection quota never applied");
    // The owner's wallet creation is unaffected.
    let w = create(&d, "alice");
    signs(&d, &w.home, &w);
}

/// A flood of requests signed by a stranger's key for a real wallet: each is refused, and the
/// audit log grows by a bounded number of entries, not one per refusal.
#[test]
fn refused_authorizations_are_recorded_in_the_audit_log_boundedly() {
    let (d, w) = deployment_with_alice();
    let status: Value = serde_json::from_str(d.cosigner(["status"]).ok()).unwrap();
    let audit_key = status["provider"]["audit_key"].as_str().unwrap().to_owned();
    let db = d.provider.database();
    let entries = || -> u64 {
        let out = cosigner_tests::run(
            "cosigner-parent",
            ["audit", "verify", "--database", p(&db), "--key", &audit_key],
            &[],
        );
        let v: Value = serde_json::from_str(out.ok()).unwrap();
        v["entries"].as_u64().unwrap()
    };
    let before = entries();
    let owner = Owner::of(&d, &w);
    let stranger = p256::ecdsa::SigningKey::random(&mut rand_core::OsRng);
    let mut s = owner.cosigners.provider();
    let request = owner.sign_commit(7, &[pid(1), pid(2)]);
    for _ in 0..200 {
        let answer = cosigner_client::wallet::authorized(
            &mut s,
            owner.id,
            KeyRole::Device,
            &stranger,
            &request,
        );
        assert!(answer.is_err(), "{answer:?}");
    }
    let after = entries();
    assert!(
        after - before <= 8,
        "{} audit entries for 200 refusals",
        after - before
    );
    signs(&d, &w.home, &w);
}

/// A signing session opened before the owner's recovery cannot be finished after it: the share
/// is released only if the key that opened it is still authorized.
#[test]
fn a_signing_session_opened_before_a_recovery_cannot_finish_after_it() {
    let (d, w, owner) = alices_wallet();
    let mut s = owner.cosigners.provider();
    let commit = owner.sign_commit(9, &[pid(1), pid(2)]);
    let Response::SignCommitted { session_id, .. } =
        owner.authorized(&mut s, KeyRole::Device, &commit).unwrap()
    else {
        panic!("no commitments");
    };
    recover(&d, &d.home("alice-new"), &w).ok();
    let late = s.call(&Request::SignShare {
        session_id,
        signing_package: ByteBuf::from(vec![0u8; 8]),
    });
    match late {
        Err(ClientError::Remote(e)) => {
            assert!(
                matches!(e.kind, ErrorKind::NotFound | ErrorKind::Unauthorized),
                "{e:?}"
            );
        }
        other => panic!("a revoked key's session released a share: {other:?}"),
    }
}

/// The recovery cosigner co-signs only under the recovery credential: the device key alone (a
/// stolen phone with a modified client) gets nothing from it.
#[test]
fn the_recovery_cosigner_refuses_to_sign_on_the_device_key_alone() {
    let (_d, _, owner) = alices_wallet();
    let mut s = owner.cosigners.recovery();
    let commit = owner.sign_commit(9, &[pid(1), pid(3)]);
    let refused = owner.authorized(&mut s, KeyRole::Device, &commit);
    assert!(
        matches!(&refused, Err(ClientError::Remote(e)) if e.kind == ErrorKind::Unauthorized),
        "{refused:?}"
    );
    let allowed = owner
        .authorized(&mut s, KeyRole::Recovery, &commit)
        .unwrap();
    assert!(
        matches!(allowed, Response::SignCommitted { .. }),
        "{allowed:?}"
    );
}

/// Every step of a recovery, in order.
fn recover_steps() -> Vec<cosigner_client::wallet::RecoverStep> {
    use cosigner_client::wallet::{RecoverStep, RefreshStep};
    vec![
        RecoverStep::Frozen,
        RecoverStep::Aligned,
        RecoverStep::Repaired,
        RecoverStep::Refresh(RefreshStep::Round1),
        RecoverStep::Refresh(RefreshStep::Round2),
        RecoverStep::Refresh(RefreshStep::Round3),
        RecoverStep::Refresh(RefreshStep::ProviderCommitted),
        RecoverStep::Refresh(RefreshStep::RecoveryCommitted),
        RecoverStep::Refresh(RefreshStep::DeviceCommitted),
    ]
}

/// After an interrupted recovery, running `recover` again in the same home finishes it, ending
/// where an uninterrupted recovery ends: epoch 1, same key, new phone signs and refreshes, old
/// key revoked.
fn rerun_finishes(d: &Deployment, w: &Wallet, new_home: &Path, step: &str) {
    let out = recover(d, new_home, w);
    assert_eq!(out.code, Some(0), "{step}: rerun failed: {}", out.stderr);
    let r: Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(r["epoch"], 1, "{step}: {r}");
    assert_eq!(r["group_public_key"], w.key.as_str(), "{step}");
    signs(d, new_home, w);
    let line = sign(d, &w.home, &w.id).refused().to_owned();
    assert!(line.contains("revoked"), "{step}: {line}");
}

/// The client dies at each step of a recovery (nothing after the step happens, except at
/// `DeviceCommitted`: the finalizes are already on their way while the device switches);
/// rerunning `recover` in the same home finishes the job.
#[test]
fn a_recovery_whose_client_dies_at_any_step_is_finished_by_a_rerun() {
    let d = Deployment::start().unwrap();
    let cosigners = Cosigners::of(&d);
    for (i, step) in recover_steps().into_iter().enumerate() {
        let w = create(&d, &format!("old-{i}"));
        let new_home = d.home(&format!("new-{i}"));
        let died = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            cosigners.recover_observed(&new_home, &w, &mut |s| {
                if s == step {
                    panic!("client killed at {s:?}");
                }
            })
        }));
        assert!(died.is_err(), "{step:?}: the client did not die");
        rerun_finishes(&d, &w, &new_home, &format!("{step:?}"));
    }
}

/// The provider's enclave dies at each step of a recovery (its memory is lost) and comes back;
/// rerunning `recover` in the same home finishes the job.
#[test]
fn a_recovery_whose_provider_dies_at_any_step_is_finished_by_a_rerun() {
    let mut d = Deployment::start().unwrap();
    let cosigners = Cosigners::of(&d);
    for (i, step) in recover_steps().into_iter().enumerate() {
        let w = create(&d, &format!("old-{i}"));
        let new_home = d.home(&format!("new-{i}"));
        let provider = &mut d.provider;
        let _ = cosigners.recover_observed(&new_home, &w, &mut |s| {
            if s == step {
                provider.stop();
            }
        });
        d.provider.start_processes().unwrap();
        rerun_finishes(&d, &w, &new_home, &format!("{step:?}"));
    }
}

/// `wallet create` whose recovery credential cannot be written registers nothing, so the retry
/// (with a writable path) succeeds and the home holds exactly one wallet.
#[test]
fn a_wallet_create_that_cannot_write_its_files_registers_nothing_and_the_retry_works() {
    let d = Deployment::start().unwrap();
    let home = d.home("alice");
    let nowhere = d.dir.path().join("no-such-dir").join("recovery.key");
    let out = d.cosigner([
        "--home",
        p(&home),
        "wallet",
        "create",
        "--recovery-key-out",
        p(&nowhere),
        "--json",
    ]);
    assert_ne!(out.code, Some(0));
    assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
    let w = create(&d, "alice");
    signs(&d, &w.home, &w);
    let list = d.cosigner(["--home", p(&home), "wallet", "list", "--json"]);
    let list: Value = serde_json::from_str(list.ok()).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
}

/// With the provider down, the owner signs with the recovery cosigner under the recovery
/// credential (`sign --with-recovery-key`); the device key alone still gets nothing there.
#[test]
fn with_the_provider_down_the_recovery_credential_signs_with_the_recovery_cosigner() {
    let (mut d, w) = deployment_with_alice();
    d.provider.stop();
    assert_ne!(sign(&d, &w.home, &w.id).code, Some(0));
    let with_recovery = ["--with-recovery-key", p(&w.recovery_key)];
    verifies(&w, &sign_with(&d, &w.home, &w.id, &with_recovery));
}

/// A modified client holding the device key starts a refresh at both cosigners: the device's
/// round-1 state, and every party's round-1 message (the device's first).
fn start_refresh(
    owner: &Owner,
    provider: &mut Session,
    recovery: &mut Session,
) -> (
    cosigner_protocol::refresh::RefreshRound1<Suite>,
    Vec<cosigner_protocol::wire::Round1Message>,
) {
    use cosigner_protocol::party::{DEVICE, PROVIDER, RECOVERY};
    use cosigner_protocol::wire::RefreshParams;
    let wallet = owner.home.wallet(&owner.id).unwrap();
    let params = RefreshParams {
        wallet_id: owner.id,
        ciphersuite: wallet.ciphersuite.clone(),
        min_signers: wallet.min_signers,
        parties: wallet.parties.clone(),
        from_epoch: wallet.epoch,
    };
    let (a1, m_a) =
        cosigner_protocol::refresh::start::<Suite>(&params, DEVICE, &mut rand_core::OsRng).unwrap();
    let mut round1 = vec![m_a];
    for (s, me) in [(provider, PROVIDER), (recovery, RECOVERY)] {
        let start = Request::RefreshStart {
            params: params.clone(),
            me,
        };
        match owner.authorized(s, KeyRole::Device, &start).unwrap() {
            Response::RefreshRound1 { message } => round1.push(message),
            other => panic!("{other:?}"),
        }
    }
    (a1, round1)
}

/// A modified client holding the device key runs a refresh to round 3 at both cosigners: returns
/// every party's confirmation and the cosigners' signatures over theirs (the prepared shares stay
/// at the cosigners).
fn prepare_refresh(
    owner: &Owner,
    provider: &mut Session,
    recovery: &mut Session,
) -> (Vec<Confirmation>, Vec<(PartyId, ByteBuf)>) {
    use cosigner_protocol::party::{DEVICE, PROVIDER, RECOVERY};
    let id = owner.id;
    let share = owner.home.share(&id).unwrap();
    let kp = frost_core::keys::KeyPackage::<Suite>::deserialize(&share).unwrap();
    let pkp = owner.home.wallet(&id).unwrap().public_key_package;
    let mut rng = rand_core::OsRng;
    let (a1, round1) = start_refresh(owner, provider, recovery);
    let (a2, mut packages) = a1.handle_round1(&round1, &mut rng).unwrap();
    for s in [&mut *provider, &mut *recovery] {
        match s
            .call(&Request::RefreshRound2 {
                wallet_id: id,
                round1: round1.clone(),
            })
            .unwrap()
        {
            Response::RefreshRound2 { packages: theirs } => packages.extend(theirs),
            other => panic!("{other:?}"),
        }
    }
    let to = |party: cosigner_protocol::id::PartyId| -> Vec<_> {
        packages.iter().filter(|p| p.to == party).cloned().collect()
    };
    let (_a3, c_a) = a2.handle_round2(&to(DEVICE), &kp, &pkp).unwrap();
    let (mut confirmations, mut signatures) = (vec![c_a], Vec::new());
    for (s, me) in [(&mut *provider, PROVIDER), (&mut *recovery, RECOVERY)] {
        match s
            .call(&Request::RefreshRound3 {
                wallet_id: id,
                packages: to(me),
            })
            .unwrap()
        {
            Response::RefreshRound3 {
                confirmation,
                signature,
            } => {
                confirmations.push(confirmation);
                signatures.push((me, signature.unwrap()));
            }
            other => panic!("{other:?}"),
        }
    }
    (confirmations, signatures)
}

/// A thief with the device key and a modified client prepares two refreshes X and Y at both
/// cosigners and tries to commit X at the provider and Y at the recovery cosigner (which would
/// leave them holding shares of different refreshes, so no recovery could ever work). The
/// recovery cosigner commits only with the provider's receipt for that very refresh: Y is
/// refused, with or without X's receipt, and the owner's recovery rolls it forward to X.
#[test]
fn a_thief_cannot_commit_different_refreshes_at_the_two_cosigners() {
    let (d, w, owner) = alices_wallet();
    let mut provider = owner.cosigners.provider();
    let mut recovery = owner.cosigners.recovery();
    let x = prepare_refresh(&owner, &mut provider, &mut recovery);
    let y = prepare_refresh(&owner, &mut provider, &mut recovery);
    assert_ne!(x, y);
    let commit = |(confirmations, signatures): &(Vec<Confirmation>, Vec<_>), receipt| {
        Request::RefreshCommit {
            wallet_id: owner.id,
            confirmations: confirmations.clone(),
            provider_receipt: receipt,
            confirmation_signatures: signatures.clone(),
        }
    };
    let receipt = match owner
        .authorized(&mut provider, KeyRole::Device, &commit(&x, None))
        .unwrap()
    {
        Response::RefreshCommitted { wallet } => wallet.receipt,
        other => panic!("{other:?}"),
    };
    assert!(receipt.is_some(), "the provider gave no receipt");
    // The provider never commits a second refresh to the same epoch.
    let again = owner.authorized(&mut provider, KeyRole::Device, &commit(&y, None));
    assert!(again.is_err(), "{again:?}");
    // Y at the recovery cosigner: no receipt, or X's receipt, is refused.
    for r in [None, receipt.clone()] {
        let refused = owner.authorized(&mut recovery, KeyRole::Device, &commit(&y, r));
        assert!(
            matches!(&refused, Err(ClientError::Remote(e)) if e.kind == ErrorKind::Unauthorized),
            "{refused:?}"
        );
    }
    drop((provider, recovery));
    // The owner recovers: the recovery cosigner is rolled forward to X, then all refresh.
    let new_home = d.home("alice-new");
    let r: Value = serde_json::from_str(recover(&d, &new_home, &w).ok()).unwrap();
    assert_eq!(r["epoch"], 2);
    signs(&d, &new_home, &w);
}

/// A thief with the device key and a modified client refreshes with the provider alone, playing
/// the recovery cosigner's part itself (its round-1 message, its packages, a confirmation copied
/// from the provider's): the provider would commit an epoch the recovery cosigner never took
/// part in, and with the old shares deleted no recovery could ever work. The provider commits
/// only with the recovery cosigner's confirmation signed by the key registered at creation, so
/// the commit is refused, with no signature or with one by another key; the owner then refreshes
/// and signs as before.
#[test]
fn a_thief_cannot_refresh_with_the_provider_alone_playing_the_recovery_cosigner() {
    use cosigner_protocol::party::{DEVICE, PROVIDER, RECOVERY};
    use cosigner_protocol::wire::RefreshParams;
    type Suite = frost_secp256k1_tr::Secp256K1Sha256TR;
    let (d, w, owner) = alices_wallet();
    let mut provider = owner.cosigners.provider();
    let (home, id) = (&owner.home, owner.id);
    let wallet = home.wallet(&id).unwrap();
    let kp = frost_core::keys::KeyPackage::<Suite>::deserialize(&home.share(&id).unwrap()).unwrap();
    let params = RefreshParams {
        wallet_id: id,
        ciphersuite: wallet.ciphersuite.clone(),
        min_signers: wallet.min_signers,
        parties: wallet.parties.clone(),
        from_epoch: wallet.epoch,
    };
    let mut rng = rand_core::OsRng;
    // The device's own part, and the recovery cosigner's played by the thief.
    let (a1, m_a) = cosigner_protocol::refresh::start::<Suite>(&params, DEVICE, &mut rng).unwrap();
    let (c1, m_c) =
        cosigner_protocol::refresh::start::<Suite>(&params, RECOVERY, &mut rng).unwrap();
    let start = Request::RefreshStart {
        params: params.clone(),
        me: PROVIDER,
    };
    let m_b = match owner
        .authorized(&mut provider, KeyRole::Device, &start)
        .unwrap()
    {
        Response::RefreshRound1 { message } => message,
        other => panic!("{other:?}"),
    };
    let round1 = vec![m_a, m_b, m_c];
    let (a2, mut packages) = a1.handle_round1(&round1, &mut rng).unwrap();
    let (_c2, from_c) = c1.handle_round1(&round1, &mut rng).unwrap();
    packages.extend(from_c);
    match provider
        .call(&Request::RefreshRound2 {
            wallet_id: id,
            round1,
        })
        .unwrap()
    {
        Response::RefreshRound2 { packages: theirs } => packages.extend(theirs),
        other => panic!("{other:?}"),
    }
    let to =
        |party: PartyId| -> Vec<_> { packages.iter().filter(|p| p.to == party).cloned().collect() };
    let (c_b, b_signature) = match provider
        .call(&Request::RefreshRound3 {
            wallet_id: id,
            packages: to(PROVIDER),
        })
        .unwrap()
    {
        Response::RefreshRound3 {
            confirmation,
            signature,
        } => (confirmation, signature.unwrap()),
        other => panic!("{other:?}"),
    };
    let (_a3, c_a) = a2
        .handle_round2(&to(DEVICE), &kp, &wallet.public_key_package)
        .unwrap();
    // The recovery cosigner's confirmation as the thief makes it: the provider's view, relabelled.
    let c_c = Confirmation {
        from: RECOVERY,
        ..c_b.clone()
    };
    let stranger = p256::ecdsa::SigningKey::random(&mut rng);
    let forged = cosigner_protocol::auth::sign_digest(
        &stranger,
        &cosigner_protocol::auth::confirmation_digest(&id, &c_c),
    )
    .unwrap();
    for signatures in [
        vec![(PROVIDER, ByteBuf::from(b_signature.to_vec()))],
        vec![(RECOVERY, ByteBuf::from(forged.to_vec()))],
        // The provider's own signature passed off as the recovery cosigner's.
        vec![(RECOVERY, b_signature.clone())],
    ] {
        let commit = Request::RefreshCommit {
            wallet_id: id,
            confirmations: vec![c_a.clone(), c_b.clone(), c_c.clone()],
            provider_receipt: None,
            confirmation_signatures: signatures,
        };
        let refused = owner.authorized(&mut provider, KeyRole::Device, &commit);
        assert!(
            matches!(&refused, Err(ClientError::Remote(e)) if e.kind == ErrorKind::Unauthorized),
            "{refused:?}"
        );
    }
    drop(provider);
    assert_eq!(epoch(&d, &w.home, &w.id), 0);
    // The owner is unaffected: a real refresh commits at both cosigners, and the wallet signs.
    refresh(&d, &w.home, &w.id).ok();
    assert_eq!(epoch(&d, &w.home, &w.id), 1);
    signs(&d, &w.home, &w);
}

/// The owner of one wallet opens signing sessions by the hundred: it gets its quota, the rest
/// are refused as busy, and another wallet's owner signs as before.
#[test]
fn one_wallet_cannot_fill_the_signing_session_table() {
    let d = Deployment::start().unwrap();
    let greedy = create(&d, "greedy");
    let other = create(&d, "other");
    let owner = Owner::of(&d, &greedy);
    let mut s = owner.cosigners.provider();
    let (mut open, mut busy) = (0, 0);
    for _ in 0..100 {
        let commit = owner.sign_commit(5, &[pid(1), pid(2)]);
        match owner.authorized(&mut s, KeyRole::Device, &commit) {
            Ok(Response::SignCommitted { .. }) => open += 1,
            Err(ClientError::Remote(e)) if e.kind == ErrorKind::Busy => busy += 1,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!((open, busy), (64, 36));
    signs(&d, &other.home, &other);
}

fn create_steps() -> Vec<cosigner_client::wallet::CreateStep> {
    use cosigner_client::wallet::CreateStep;
    vec![
        CreateStep::Round1,
        CreateStep::Round2,
        CreateStep::Round3,
        CreateStep::Kept,
        CreateStep::ProviderRegistered,
        CreateStep::RecoveryRegistered,
    ]
}

/// After an interrupted creation, `wallet create` run again in the same home leaves what an
/// uninterrupted one leaves: one wallet in the home, registered at both cosigners (it signs with
/// the provider and refreshes with all three), no unfinished journal.
fn create_rerun_finishes(d: &Deployment, home: &Path, step: &str, rerun: bool) {
    if rerun {
        let out = d.cosigner([
            "--home",
            p(home),
            "wallet",
            "create",
            "--recovery-key-out",
            p(&home.with_extension("rerun.key")),
            "--json",
        ]);
        assert_eq!(out.code, Some(0), "{step}: rerun failed: {}", out.stderr);
    }
    let list = d.cosigner(["--home", p(home), "wallet", "list", "--json"]);
    let list: Value = serde_json::from_str(list.ok()).unwrap();
    let wallets = list.as_array().unwrap();
    assert_eq!(wallets.len(), 1, "{step}: {list}");
    let id = wallets[0]["wallet_id"].as_str().unwrap().to_owned();
    let w = Wallet {
        key: wallets[0]["group_public_key"].as_str().unwrap().to_owned(),
        id,
        home: home.to_path_buf(),
        recovery_key: PathBuf::new(),
    };
    signs(d, home, &w);
    refresh(d, home, &w.id).ok();
    signs(d, home, &w);
    let leftovers: Vec<_> = std::fs::read_dir(home.join("wallets"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".creating"))
        .collect();
    assert!(leftovers.is_empty(), "{step}: {leftovers:?}");
}

/// The client dies at each step of `wallet create`; rerunning it in the same home finishes (or
/// cleanly redoes) the creation.
#[test]
fn a_wallet_create_whose_client_dies_at_any_step_is_finished_by_a_rerun() {
    let d = Deployment::start().unwrap();
    let cosigners = Cosigners::of(&d);
    for (i, step) in create_steps().into_iter().enumerate() {
        let dir = d.home(&format!("creator-{i}"));
        let died = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            cosigners.create_observed(&dir, &dir.with_extension("first.key"), &mut |s| {
                if s == step {
                    panic!("client killed at {s:?}");
                }
            })
        }));
        assert!(died.is_err(), "{step:?}: the client did not die");
        create_rerun_finishes(&d, &dir, &format!("{step:?}"), true);
    }
}

/// The provider's enclave dies at each step of `wallet create` (losing the DKG in its memory)
/// and comes back; rerunning `wallet create` in the same home finishes or cleanly redoes it.
#[test]
fn a_wallet_create_whose_provider_dies_at_any_step_is_finished_by_a_rerun() {
    let mut d = Deployment::start().unwrap();
    let cosigners = Cosigners::of(&d);
    for (i, step) in create_steps().into_iter().enumerate() {
        let dir = d.home(&format!("creator-{i}"));
        let provider = &mut d.provider;
        let first = cosigners.create_observed(&dir, &dir.with_extension("first.key"), &mut |s| {
            if s == step {
                provider.stop();
            }
        });
        d.provider.start_processes().unwrap();
        // Killed after it registered, the provider was not needed again: the creation finished.
        create_rerun_finishes(&d, &dir, &format!("{step:?}"), first.is_err());
    }
}

/// The provider's audit key is its identity towards the recovery cosigner (commit receipts):
/// a host that deletes or swaps the sealed key does not get a provider that silently starts over
/// with a new one — the enclave refuses to start — and with the key restored all is well.
#[test]
fn a_provider_whose_audit_key_was_deleted_refuses_to_start() {
    let (mut d, w) = deployment_with_alice();
    d.provider.stop();
    let backup = d.dir.path().join("store-backup");
    d.provider.copy_store(&backup).unwrap();
    let conn = rusqlite::Connection::open(d.provider.database()).unwrap();
    conn.execute("DELETE FROM blobs WHERE key = 'enclave/audit-key'", [])
        .unwrap();
    drop(conn);
    let refused = d.provider.start_processes().unwrap_err().to_string();
    assert!(refused.contains("audit key"), "{refused}");
    d.provider.stop();
    d.provider.restore_store(&backup).unwrap();
    d.provider.start_processes().unwrap();
    signs(&d, &w.home, &w);
    refresh(&d, &w.home, &w.id).ok();
    signs(&d, &w.home, &w);
}

/// A creation journal left behind although both cosigners registered the wallet (the last
/// answer was lost), and the wallet used since (refreshed): the next `wallet create` recognises
/// it and keeps every file; it never deletes the share of a registered wallet.
#[test]
fn a_stale_creation_journal_never_deletes_a_registered_wallet() {
    use cosigner_client::wallet::CreateStep;
    let d = Deployment::start().unwrap();
    let dir = d.home("alice");
    let key_file = dir.with_extension("recovery.key");
    let died = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        Cosigners::of(&d).create_observed(&dir, &key_file, &mut |s| {
            if s == CreateStep::RecoveryRegistered {
                panic!("answer lost");
            }
        })
    }));
    assert!(died.is_err());
    let home = cosigner_client::home::Home::open(&dir).unwrap();
    let w = home.wallets().unwrap().pop().unwrap();
    let w = Wallet {
        id: w.wallet_id.to_hex(),
        key: hex::encode(w.group_public_key),
        home: dir.clone(),
        recovery_key: key_file.clone(),
    };
    refresh(&d, &dir, &w.id).ok();
    create_rerun_finishes(&d, &dir, "stale journal", true);
    assert!(key_file.exists(), "the recovery credential was deleted");
    assert_eq!(epoch(&d, &dir, &w.id), 2);
    signs(&d, &dir, &w);
}

type Suite = frost_secp256k1_tr::Secp256K1Sha256TR;

/// Opens a signing session (`SignCommit` or `SignPsbtCommit`) of `messages` as the owner, over
/// `s`: its id, and the signing packages a real client would send to release the provider's
/// shares (the device's own commitments, from its share `share`, beside the provider's).
fn open_session(
    owner: &Owner,
    s: &mut Session,
    request: &Request,
    share: &frost_core::keys::KeyPackage<Suite>,
    messages: &[[u8; 32]],
) -> (SessionId, Vec<ByteBuf>) {
    use cosigner_protocol::party::{DEVICE, PROVIDER};
    use cosigner_protocol::sign::{SignerSession, signing_package};
    let (session_id, theirs) = match owner.authorized(s, KeyRole::Device, request).unwrap() {
        Response::SignCommitted {
            session_id,
            commitments,
        } => (session_id, vec![commitments]),
        Response::PsbtCommitted {
            session_id,
            commitments,
            ..
        } => (session_id, commitments),
        other => panic!("no commitments: {other:?}"),
    };
    assert_eq!(theirs.len(), messages.len());
    let packages = messages
        .iter()
        .zip(theirs)
        .map(|(message, provider)| {
            let (_ours, mine) = SignerSession::<Suite>::commit(
                share,
                DEVICE,
                message,
                &[DEVICE, PROVIDER],
                &mut rand_core::OsRng,
            )
            .unwrap();
            let commitments =
                std::collections::BTreeMap::from([(DEVICE, mine), (PROVIDER, provider.into_vec())]);
            ByteBuf::from(signing_package::<Suite>(message, &commitments).unwrap())
        })
        .collect();
    (session_id, packages)
}

/// A refresh retires the epoch of signing sessions still open: the owner (or a thief with the
/// phone) opens a raw signing session and a PSBT signing session at epoch 0, then the owner's
/// `cosigner refresh` commits epoch 1 at both cosigners and finalizes it. The releases that
/// follow, with well-formed signing packages on the session that opened them, find no session
/// (`NotFound`: the enclave dropped them with the retired shares at `RefreshFinalize`, before
/// the re-check at release would have refused them as `BadRequest`), nothing is recorded for
/// the PSBT, and the wallet signs the same PSBT and a message at epoch 1.
#[test]
fn signing_sessions_of_an_epoch_a_refresh_retired_release_nothing() {
    use cosigner_protocol::id::Epoch;
    use cosigner_protocol::party::{DEVICE, PROVIDER};
    use cosigner_protocol::psbt;
    use cosigner_tests::bitcoin_tx;
    let (d, w, owner) = alices_wallet();
    let share = owner.home.share(&owner.id).unwrap();
    let share = frost_core::keys::KeyPackage::<Suite>::deserialize(&share).unwrap();
    let mut s = owner.cosigners.provider();
    let raw = owner.sign_commit(9, &[DEVICE, PROVIDER]);
    let (raw_session, raw_packages) = open_session(&owner, &mut s, &raw, &share, &[[9; 32]]);
    let spend = bitcoin_tx::payment(&w.key, &[60_000, 40_000], 50_000, 40_000).unwrap();
    let bytes = psbt::decode_psbt_file(spend.psbt_base64.as_bytes()).unwrap();
    let output_key: [u8; 32] = hex::decode(&w.key).unwrap().try_into().unwrap();
    let sighashes = psbt::analyze(
        &bytes,
        &psbt::OwnKeys::root_only(&output_key).unwrap(),
        psbt::Network::Regtest,
    )
    .unwrap()
    .sighashes;
    let open = Request::SignPsbtCommit {
        wallet_id: owner.id,
        epoch: Epoch(0),
        psbt: ByteBuf::from(bytes),
        signers: vec![DEVICE, PROVIDER],
    };
    let (psbt_session, psbt_packages) = open_session(&owner, &mut s, &open, &share, &sighashes);
    assert_eq!(psbt_packages.len(), 2);

    let refreshed: Value = serde_json::from_str(refresh(&d, &w.home, &w.id).ok()).unwrap();
    assert_eq!(refreshed["epoch"], 1, "{refreshed}");

    let releases = [
        (
            "raw",
            Request::SignShare {
                session_id: raw_session,
                signing_package: raw_packages[0].clone(),
            },
        ),
        (
            "PSBT",
            Request::SignPsbtShare {
                session_id: psbt_session,
                signing_packages: psbt_packages,
            },
        ),
    ];
    for (what, release) in releases {
        let late = s.call(&release);
        assert!(
            refused_as(&late, ErrorKind::NotFound),
            "a retired epoch's {what} session released shares: {late:?}"
        );
    }

    // The owner is unaffected: the same PSBT (not counted by the dropped session) and a message
    // sign at epoch 1.
    let file = d.dir.path().join("spend.psbt");
    std::fs::write(&file, &spend.psbt_base64).unwrap();
    let out = d.cosigner([
        "--home",
        p(&w.home),
        "sign",
        "--wallet",
        &w.id,
        "--psbt",
        p(&file),
        "--json",
    ]);
    let signed: Value = serde_json::from_str(out.ok()).unwrap();
    let tx = signed["tx_hex"].as_str().unwrap();
    bitcoin_tx::verify_consensus(tx, &spend.prevouts).expect("valid under consensus rules");
    signs(&d, &w.home, &w);
}

/// Whether `result` was refused with `kind`.
fn refused_as(result: &Result<Response, ClientError>, kind: ErrorKind) -> bool {
    matches!(result, Err(ClientError::Remote(e)) if e.kind == kind)
}

/// A refresh belongs to the session that started it. A modified client with the device key
/// starts one at both cosigners; another connection trying to step into it is refused
/// (`Unauthorized`) and the refresh goes on (its session's round 2 is answered). The owner's own
/// client, run again as after a crash, restarts it with the same key from new sessions (the one
/// exception the precedence rules make) and completes it; the abandoned session's next round
/// finds nothing (`NotFound`), and the wallet signs at epoch 1.
///
/// A second refresh refused as `Busy` needs another key starting one while the device's runs:
/// a personal wallet has none (a recovery's pending key pre-empts the device's refresh instead,
/// see `a_thief_refreshing_and_signing_in_a_loop_cannot_block_the_owners_recovery`); a DAO's
/// members do, see `dao_races.rs`.
#[test]
fn a_running_refresh_is_its_sessions_until_its_own_key_restarts_it() {
    let (d, w, owner) = alices_wallet();
    let mut provider = owner.cosigners.provider();
    let mut recovery = owner.cosigners.recovery();
    let (_device, round1) = start_refresh(&owner, &mut provider, &mut recovery);
    let round2 = Request::RefreshRound2 {
        wallet_id: owner.id,
        round1,
    };
    let mut stranger = owner.cosigners.provider();
    let stepped_in = stranger.call(&round2);
    assert!(
        refused_as(&stepped_in, ErrorKind::Unauthorized),
        "{stepped_in:?}"
    );
    let answered = provider.call(&round2).unwrap();
    assert!(
        matches!(answered, Response::RefreshRound2 { .. }),
        "{answered:?}"
    );

    let refreshed: Value = serde_json::from_str(refresh(&d, &w.home, &w.id).ok()).unwrap();
    assert_eq!(refreshed["epoch"], 1, "{refreshed}");
    let abandoned = provider.call(&Request::RefreshRound3 {
        wallet_id: owner.id,
        packages: Vec::new(),
    });
    assert!(refused_as(&abandoned, ErrorKind::NotFound), "{abandoned:?}");
    signs(&d, &w.home, &w);
}
