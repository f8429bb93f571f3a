//! The device switches to its refreshed share while both cosigners finalize the refresh. A home
//! that cannot be written at that moment loses nothing: the refresh reports how to finish it, and
//! the next run promotes the share kept since before the commits (in process, real SoftHSM
//! tokens).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use cosigner_client::address::Network;
use cosigner_client::home::Home;
use cosigner_client::store::{
    AeadSealer, MemoryDeviceKey, MemoryStore, SealScope, StoreError, StoreResult, WalletStore,
};
use cosigner_client::wallet::{self, RefreshStep};
use cosigner_protocol::id::Epoch;
use cosigner_tests::in_process::{Cosigners, InProcess, tempfile};

/// A phone's storage whose share records cannot be written while `full` is set (a full disk).
#[derive(Default)]
struct Filling {
    inner: MemoryStore,
    full: AtomicBool,
}

impl WalletStore for Filling {
    fn read(&self, name: &str) -> StoreResult<Option<Vec<u8>>> {
        self.inner.read(name)
    }
    fn write(&self, name: &str, bytes: &[u8]) -> StoreResult<()> {
        if self.full.load(Ordering::SeqCst) && name.ends_with(".share") {
            return Err(StoreError::Io {
                name: name.to_owned(),
                reason: "No space left on device".into(),
            });
        }
        self.inner.write(name, bytes)
    }
    fn remove(&self, name: &str) -> StoreResult<()> {
        self.inner.remove(name)
    }
    fn list(&self) -> StoreResult<Vec<String>> {
        self.inner.list()
    }
}

#[test]
fn a_switch_cut_short_after_the_finalize_is_finished_by_the_next_refresh() {
    let c = Cosigners::start();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Filling::default());
    let home = Home::with_storage(
        store.clone(),
        Arc::new(AeadSealer::random().unwrap()),
        Arc::new(MemoryDeviceKey::random()),
        SealScope::Everything,
    )
    .unwrap();
    let (mut ps, mut rs) = (c.provider.session(), c.recovery.session());
    let id = wallet::create(
        &home,
        &mut InProcess::new(&c.provider.service, &mut ps),
        &mut InProcess::new(&c.recovery.service, &mut rs),
        Network::Regtest,
        &dir.path().join("recovery.key"),
    )
    .unwrap()
    .wallet
    .wallet_id;
    let sign = |ps: &mut _| {
        wallet::sign(
            &home,
            &mut InProcess::new(&c.provider.service, ps),
            id,
            &[7; 32],
        )
    };
    sign(&mut ps).unwrap();

    // The home fills up once both cosigners committed: the switch fails, the finalize goes on.
    let failed = wallet::refresh(
        &home,
        &mut InProcess::new(&c.provider.service, &mut ps),
        &mut InProcess::new(&c.recovery.service, &mut rs),
        id,
        &mut |step| {
            if step == RefreshStep::RecoveryCommitted {
                store.full.store(true, Ordering::SeqCst);
            }
        },
    )
    .unwrap_err();
    assert!(
        failed.to_string().contains("run `cosigner refresh` again"),
        "{failed}"
    );
    assert_eq!(home.wallet(&id).unwrap().epoch, Epoch(0));
    assert_eq!(home.prepared_shares(&id).unwrap().len(), 1);
    // The cosigners dropped epoch 0: the old share no longer signs.
    assert!(sign(&mut ps).is_err());

    // Space again: the next refresh finishes this one (it does not start another).
    store.full.store(false, Ordering::SeqCst);
    let finished = wallet::refresh(
        &home,
        &mut InProcess::new(&c.provider.service, &mut ps),
        &mut InProcess::new(&c.recovery.service, &mut rs),
        id,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(finished.epoch, Epoch(1));
    assert!(home.prepared_shares(&id).unwrap().is_empty());
    sign(&mut ps).unwrap();
}
