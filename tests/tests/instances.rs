//! Several enclave instances behind one parent, on one token and one store (`make up
//! ENCLAVES=2`), tried as an attacker and an unlucky operator would: the same wallet signed and
//! refreshed through both instances at once, an instance killed (SIGKILL) under load, and the
//! survivor serving every wallet. What must hold: no write that was reported done is lost, no
//! wallet goes back to an older state, and every wallet signs afterwards.
//!
//! The instances share their anchors (`[anchors] shared`, one partition here so that every
//! wallet's writes meet at one root anchor and the cross-process compare-and-swap is exercised
//! on every write).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cosigner_tests::Deployment;
use cosigner_tests::instances::Instances;
use cosigner_tests::wallets::{TestWallet, create, p, refresh, show, sign, signs, verifies};
use serde_json::Value;

/// Every wallet's writes meet at one root anchor.
const ONE_PARTITION: &str = "partitions = 1\n";

fn epoch(d: &Deployment, w: &TestWallet) -> u64 {
    let out = show(d, &w.home, &w.id);
    let v: Value = serde_json::from_str(out.ok()).unwrap();
    v["epoch"].as_u64().unwrap()
}

/// Refreshes of one wallet raced by signatures, each request on whichever instance the parent
/// picks: every refresh reported done moved the epoch exactly once (none lost to the other
/// instance's write), and the wallet signs at the end.
#[test]
fn one_wallet_refreshed_and_signed_through_two_instances_loses_no_write() {
    let mut d = Deployment::start_with(&format!("[anchors]\n{ONE_PARTITION}")).unwrap();
    let w = create(&d, "alice");
    let _instances = Instances::start(&mut d.provider, 2, ONE_PARTITION).unwrap();
    let start = epoch(&d, &w);
    let d = Arc::new(d);
    let stop = Arc::new(AtomicBool::new(false));
    let signer = {
        let (d, w, stop) = (d.clone(), w.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut ok = 0;
            while !stop.load(Ordering::Relaxed) {
                let out = sign(&d, &w.home, &w.id);
                if out.code == Some(0) {
                    verifies(&w, &out);
                    ok += 1;
                }
            }
            ok
        })
    };
    let mut refreshed = 0;
    for _ in 0..6 {
        let out = refresh(&d, &w.home, &w.id);
        if out.code == Some(0) {
            refreshed += 1;
        } else {
            eprintln!("refresh: {}", out.stderr.trim());
        }
    }
    stop.store(true, Ordering::Relaxed);
    let signed = signer.join().unwrap();
    assert!(refreshed >= 3, "refreshes mostly succeed: {refreshed} of 6");
    assert!(signed > 0, "signatures went through meanwhile");
    assert_eq!(
        epoch(&d, &w),
        start + refreshed,
        "each refresh moved the epoch once"
    );
    signs(&d, &w.home, &w);
}

/// Three wallets signing and refreshing in a loop; instance 2 is killed halfway. Requests in
/// flight on it may fail; nothing else does for long, no wallet is lost, every refresh reported
/// done is there, and after instance 2 is back and instance 1 killed, instance 2 alone serves
/// every wallet within seconds.
#[test]
fn killing_an_instance_under_load_loses_no_committed_state() {
    let mut d = Deployment::start_with(&format!("[anchors]\n{ONE_PARTITION}")).unwrap();
    let wallets: Vec<TestWallet> = (0..3).map(|i| create(&d, &format!("w{i}"))).collect();
    let mut instances = Instances::start(&mut d.provider, 2, ONE_PARTITION).unwrap();
    let starts: Vec<u64> = wallets.iter().map(|w| epoch(&d, w)).collect();
    let d = Arc::new(d);
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = wallets
        .iter()
        .cloned()
        .enumerate()
        .map(|(i, w)| {
            let (d, stop, errors) = (d.clone(), stop.clone(), errors.clone());
            std::thread::spawn(move || {
                // Refreshes reported done, and those whose outcome the client never learnt.
                let (mut refreshed, mut unknown) = (0u64, 0u64);
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let out = if (n + i as u64).is_multiple_of(4) {
                        let out = refresh(&d, &w.home, &w.id);
                        if out.code == Some(0) {
                            refreshed += 1;
                        } else {
                            unknown += 1;
                        }
                        out
                    } else {
                        let out = sign(&d, &w.home, &w.id);
                        if out.code == Some(0) {
                            verifies(&w, &out);
                        }
                        out
                    };
                    if out.code != Some(0) {
                        errors.fetch_add(1, Ordering::Relaxed);
                        eprintln!("w{i}: {}", out.stderr.trim());
                    }
                }
                (refreshed, unknown)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(4));
    let before_kill = errors.load(Ordering::Relaxed);
    instances.kill_instance(2);
    std::thread::sleep(Duration::from_secs(4));
    stop.store(true, Ordering::Relaxed);
    let refreshed: Vec<(u64, u64)> = workers.into_iter().map(|t| t.join().unwrap()).collect();
    let after_kill = errors.load(Ordering::Relaxed) - before_kill;
    // Only requests in flight on the killed instance (at most one per worker) may fail.
    assert!(
        after_kill <= wallets.len(),
        "{after_kill} failures after the kill, more than the requests in flight\n{}",
        instances.logs()
    );
    // A refresh broken off by the kill may still have committed on both cosigners: the
    // client's next command finishes it (docs/lifecycle.md), so its epoch counts or not.
    // One reported done never goes missing, and none moves the epoch twice.
    for ((w, start), (refreshed, unknown)) in wallets.iter().zip(&starts).zip(&refreshed) {
        signs(&d, &w.home, w);
        let now = epoch(&d, w);
        assert!(
            (start + refreshed..=start + refreshed + unknown).contains(&now),
            "a refresh reported done was lost or one moved the epoch twice: \
             epoch {now}, start {start}, {refreshed} done, {unknown} broken off"
        );
    }
    // Instance 2 back, instance 1 gone: the survivor serves every wallet at once.
    instances.start_instance(2).unwrap();
    instances.kill_instance(1);
    let t0 = Instant::now();
    for w in &wallets {
        signs(&d, &w.home, w);
        assert_eq!(refresh(&d, &w.home, &w.id).code, Some(0));
        signs(&d, &w.home, w);
    }
    assert!(t0.elapsed() < Duration::from_secs(30));

    // Every instance kept its own audit chain under the one audit key, and each verifies.
    let status: Value = serde_json::from_str(d.cosigner(["status", "--json"]).ok()).unwrap();
    let audit_key = status["provider"]["audit_key"].as_str().unwrap().to_owned();
    let db = d.provider.database();
    let out = cosigner_tests::run(
        "cosigner-parent",
        ["audit", "verify", "--database", p(&db), "--key", &audit_key],
        &[],
    );
    let report: Value = serde_json::from_str(out.ok()).unwrap();
    let chains: Vec<u64> = report["chains"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["instance"].as_u64().unwrap())
        .collect();
    assert_eq!(chains, [0, 1, 2], "{report}");
}
