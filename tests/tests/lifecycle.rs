//! Wallet lifecycle end to end: registered keys and signed requests, refresh (also interrupted),
//! lost-phone recovery, rollback of the parent's database, the audit log.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use cosigner_protocol::id::Epoch;
use cosigner_tests::owner::{Cosigners, Owner};
use cosigner_tests::pid;
use cosigner_tests::wallets::{
    TestWallet, create, deployment_with_alice, p, recover, show, sign, signs,
};
use cosigner_tests::{Deployment, Outcome};
use serde_json::Value;

type Wallet = TestWallet;

fn refresh(d: &Deployment, w: &Wallet) -> Outcome {
    cosigner_tests::wallets::refresh(d, &w.home, &w.id)
}

/// A full refresh of `w` succeeds, and the wallet signs at its new epoch.
fn refreshes_then_signs(d: &Deployment, w: &Wallet) {
    refresh(d, w).ok();
    signs(d, &w.home, w);
}

#[test]
fn refresh_keeps_the_key_and_moves_to_the_next_epoch() {
    let (d, w) = deployment_with_alice();
    let mode = std::fs::metadata(&w.recovery_key).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );
    let share = w.home.join("wallets").join(format!("{}.share", w.id));
    let wallet_json = w.home.join("wallets").join(format!("{}.json", w.id));
    let (old_share, old_wallet) = (
        std::fs::read(&share).unwrap(),
        std::fs::read(&wallet_json).unwrap(),
    );
    for epoch in 1..=2 {
        let r: Value = serde_json::from_str(refresh(&d, &w).ok()).unwrap();
        assert_eq!(r["epoch"], epoch);
        assert_eq!(r["group_public_key"], w.key.as_str());
        signs(&d, &w.home, &w);
    }
    // A stale backup (the share and wallet file of epoch 0) put back on the device signs nothing:
    // the cosigners deleted their shares of that epoch.
    std::fs::write(&wallet_json, old_wallet).unwrap();
    std::fs::write(&share, old_share).unwrap();
    let line = sign(&d, &w.home, &w.id).refused().to_owned();
    assert!(line.contains("refreshed away"), "{line}");
}

#[test]
fn refresh_with_a_missing_party_is_refused_and_changes_nothing() {
    let (mut d, w) = deployment_with_alice();
    d.recovery.stop();
    refresh(&d, &w).refused();
    let shown: Value = serde_json::from_str(show(&d, &w.home, &w.id).ok()).unwrap();
    assert_eq!(shown["epoch"], 0);
    assert_eq!(shown["provider"]["epoch"], 0);
    signs(&d, &w.home, &w);
}

#[test]
fn refresh_interrupted_at_each_step_leaves_a_usable_wallet() {
    use cosigner_client::wallet::RefreshStep;
    let steps = [
        RefreshStep::Round1,
        RefreshStep::Round2,
        RefreshStep::Round3,
        RefreshStep::ProviderCommitted,
        RefreshStep::RecoveryCommitted,
        RefreshStep::DeviceCommitted,
    ];
    let (mut d, w) = deployment_with_alice();
    let owner = Owner::of(&d, &w);
    for step in steps {
        let mut provider = owner.cosigners.provider();
        let mut recovery = owner.cosigners.recovery();
        let provider_cosigner = std::cell::RefCell::new(&mut d.provider);
        let result = cosigner_client::wallet::refresh(
            &owner.home,
            &mut provider,
            &mut recovery,
            owner.id,
            &mut |s| {
                if s == step {
                    provider_cosigner.borrow_mut().stop();
                }
            },
        );
        // The finalizes are sent before the device switches (they run at once), so the provider
        // may have finalized before it died at `DeviceCommitted`: there the refresh may succeed.
        assert!(
            result.is_err() || step == RefreshStep::DeviceCommitted,
            "{step:?}: the refresh survived the provider's death"
        );
        if let Ok(wallet) = &result {
            // It finished: the device is at the new epoch with no prepared share left over.
            assert_eq!(owner.home.wallet(&owner.id).unwrap().epoch, wallet.epoch);
            assert!(owner.home.prepared_shares(&owner.id).unwrap().is_empty());
        }
        drop(provider);
        d.provider.start_processes().unwrap();
        // Whatever epoch the device ended at, the wallet signs.
        signs(&d, &w.home, &w);
    }
    // And a full refresh afterwards works and signs.
    refreshes_then_signs(&d, &w);
}

#[test]
fn lost_phone_recovery_revokes_the_old_device() {
    let (d, w) = deployment_with_alice();
    signs(&d, &w.home, &w);
    let new_home = d.home("alice-new-phone");
    let out = recover(&d, &new_home, &w);
    let r: Value = serde_json::from_str(out.ok()).unwrap();
    assert_eq!(r["wallet_id"], w.id.as_str());
    assert_eq!(r["group_public_key"], w.key.as_str());
    assert_eq!(r["epoch"], 1);
    // The new phone signs; the stolen old one is refused (revoked key, stale share).
    signs(&d, &new_home, &w);
    let line = sign(&d, &w.home, &w.id).refused().to_owned();
    assert!(line.contains("revoked"), "{line}");
}

#[test]
fn another_wallets_recovery_credential_is_refused() {
    let d = Deployment::start().unwrap();
    let alice = create(&d, "alice");
    let bob = create(&d, "bob");
    // Alice's wallet, under Bob's credential.
    let with_bobs_credential = TestWallet {
        recovery_key: bob.recovery_key.clone(),
        ..alice.clone()
    };
    let out = recover(&d, &d.home("thief"), &with_bobs_credential);
    let line = out.refused();
    assert!(line.contains("recovery credential"), "{line}");
    signs(&d, &alice.home, &alice);
}

#[test]
fn rolling_the_database_back_does_not_revive_the_stolen_phone() {
    let (mut d, w) = deployment_with_alice();
    // The host keeps a copy of its database from before the recovery.
    let before = d.dir.path().join("store-before-recovery");
    d.provider.stop();
    d.provider.copy_store(&before).unwrap();
    d.provider.start_processes().unwrap();
    let new_home = d.home("new-phone");
    recover(&d, &new_home, &w).ok();
    let after = d.dir.path().join("store-after-recovery");
    d.provider.stop();
    d.provider.copy_store(&after).unwrap();
    // Roll back: the old state, in which the stolen phone's key was valid.
    d.provider.restore_store(&before).unwrap();
    d.provider.start_processes().unwrap();
    let line = sign(&d, &w.home, &w.id).refused().to_owned();
    assert!(
        line.contains("Integrity") && line.contains("not the current state"),
        "{line}"
    );
    // Restoring the latest database loses nothing.
    d.provider.stop();
    d.provider.restore_store(&after).unwrap();
    d.provider.start_processes().unwrap();
    signs(&d, &new_home, &w);
    assert!(sign(&d, &w.home, &w.id).refused().contains("revoked"));
}

#[test]
fn a_replayed_signed_request_is_refused() {
    use cosigner_client::ClientError;
    use cosigner_protocol::auth::{request_digest, sign_digest};
    use cosigner_protocol::wire::{self, ErrorKind, KeyRole, Request, Response};
    // Each replay is refused for its signer, by kind.
    let unauthorized = |e: ClientError| {
        assert!(
            matches!(&e, ClientError::Remote(w) if w.kind == ErrorKind::Unauthorized),
            "{e}"
        );
    };
    let (d, w) = deployment_with_alice();
    let owner = Owner::of(&d, &w);
    let key = owner.home.device_key().unwrap();
    let id = owner.id;
    let mut s = owner.cosigners.provider();
    let Response::Challenge { challenge } = s.call(&Request::Challenge { wallet_id: id }).unwrap()
    else {
        panic!()
    };
    let inner = wire::encode(&owner.sign_commit(1, &[pid(1), pid(2)])).unwrap();
    let signature = sign_digest(&key, &request_digest(&id, &challenge, &inner)).unwrap();
    let request = Request::Authorized {
        wallet_id: id,
        role: KeyRole::Device,
        signature: serde_bytes::ByteBuf::from(signature.to_vec()),
        request: serde_bytes::ByteBuf::from(inner),
    };
    assert!(matches!(
        s.call(&request).unwrap(),
        Response::SignCommitted { .. }
    ));
    // The same signed request again, on the same session and on a new one.
    unauthorized(s.call(&request).unwrap_err());
    let mut other = owner.cosigners.provider();
    other.call(&Request::Challenge { wallet_id: id }).unwrap();
    unauthorized(other.call(&request).unwrap_err());
    // The recovery credential can start a recovery and nothing else.
    let inner = owner.sign_commit(1, &[pid(1), pid(2)]);
    unauthorized(
        owner
            .authorized(&mut other, KeyRole::Recovery, &inner)
            .unwrap_err(),
    );
}

#[test]
fn provider_demands_a_refresh_after_n_signatures() {
    let d = Deployment::start_with("\n[policy]\nrefresh_after_signatures = 2\n").unwrap();
    let w = create(&d, "alice");
    signs(&d, &w.home, &w);
    signs(&d, &w.home, &w);
    let line = sign(&d, &w.home, &w.id).refused().to_owned();
    assert!(line.contains("refresh required"), "{line}");
    refreshes_then_signs(&d, &w);
}

#[test]
fn audit_log_records_every_use_and_detects_tampering() {
    let (d, w) = deployment_with_alice();
    signs(&d, &w.home, &w);
    refresh(&d, &w).ok();
    let status: Value = serde_json::from_str(d.cosigner(["status"]).ok()).unwrap();
    let audit_key = status["provider"]["audit_key"].as_str().unwrap().to_owned();
    let db = d.provider.database();
    let verify = || {
        cosigner_tests::run(
            "cosigner-parent",
            ["audit", "verify", "--database", p(&db), "--key", &audit_key],
            &[],
        )
    };
    let report: Value = serde_json::from_str(verify().ok()).unwrap();
    assert!(report["entries"].as_u64().unwrap() >= 3, "{report}");

    let conn = rusqlite::Connection::open(&db).unwrap();
    let entries: Vec<(String, Vec<u8>)> = conn
        .prepare("SELECT key, value FROM blobs WHERE key LIKE 'audit/%' ORDER BY key")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let set = |key: &str, value: &[u8]| {
        conn.execute(
            "UPDATE blobs SET value = ?1 WHERE key = ?2",
            rusqlite::params![value, key],
        )
        .unwrap();
    };
    // Altered.
    let mut altered = entries[1].1.clone();
    let n = altered.len();
    altered[n / 3] ^= 1;
    set(&entries[1].0, &altered);
    assert!(verify().refused().contains("entry"));
    set(&entries[1].0, &entries[1].1);
    // Reordered.
    set(&entries[0].0, &entries[1].1);
    set(&entries[1].0, &entries[0].1);
    assert!(verify().refused().contains("entry"));
    set(&entries[0].0, &entries[0].1);
    set(&entries[1].0, &entries[1].1);
    // Removed.
    conn.execute("DELETE FROM blobs WHERE key = ?1", [&entries[1].0])
        .unwrap();
    assert!(verify().refused().contains("entry"));
}

#[test]
fn only_the_committing_session_may_finalize_a_refresh() {
    use cosigner_protocol::wire::{Request, WalletId};
    let (d, w) = deployment_with_alice();
    refresh(&d, &w).ok();
    let mut stranger = Cosigners::of(&d).provider();
    let err = stranger
        .call(&Request::RefreshFinalize {
            wallet_id: WalletId::from_hex(&w.id).unwrap(),
            epoch: Epoch(1),
        })
        .unwrap_err()
        .to_string();
    assert!(err.contains("only the session that committed"), "{err}");
    signs(&d, &w.home, &w);
}

#[test]
fn a_refresh_commit_held_back_past_a_second_refresh_still_leaves_the_device_its_share() {
    use cosigner_tests::couriers::HoldCommit;
    let (d, w) = deployment_with_alice();
    let owner = Owner::of(&d, &w);
    let mut provider = HoldCommit::new(owner.cosigners.provider());
    let mut recovery = owner.cosigners.recovery();
    let mut refresh = || {
        cosigner_client::wallet::refresh(
            &owner.home,
            &mut provider,
            &mut recovery,
            owner.id,
            &mut |_| {},
        )
    };
    // Refresh A: the parent holds its commit back; this device keeps A's prepared share.
    assert!(refresh().is_err());
    assert_eq!(owner.home.prepared_shares(&owner.id).unwrap().len(), 1);
    // Refresh B: the parent delivers A's commit just before B's. A's was signed over a
    // challenge that is no longer the session's, so the provider refuses it (nothing of A
    // commits); B's commit is refused with it (the session's challenge went to A's), and the
    // client asks again with a fresh one: B commits at both cosigners.
    let done = refresh().unwrap();
    assert_eq!(done.epoch, Epoch(1));
    // This device holds B's share, and no prepared share is left behind.
    assert!(owner.home.prepared_shares(&owner.id).unwrap().is_empty());
    let again = refresh().unwrap();
    assert_eq!(again.epoch, Epoch(2));
    signs(&d, &w.home, &w);
}
