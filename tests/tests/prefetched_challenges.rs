//! A refresh asks both cosigners for its commits' challenges while it writes its prepared share,
//! and a recovery asks for its refresh's challenges while it writes the repaired share (one round
//! trip less each). A challenge that no longer holds when it is used (it expired meanwhile) is
//! refused by the cosigner, and the client asks again instead of failing half-way: the refresh
//! and the recovery complete (in process, real SoftHSM tokens).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use cosigner_client::address::Network;
use cosigner_client::home::{Home, read_p256_key};
use cosigner_client::wallet;
use cosigner_protocol::id::Epoch;
use cosigner_tests::couriers::{StaleChallenge, is_commit, is_refresh_start};
use cosigner_tests::in_process::{Cosigners, InProcess, tempfile};

fn cosigners() -> Cosigners {
    Cosigners::start()
}

#[test]
fn a_prefetched_challenge_that_no_longer_holds_is_asked_again() {
    let c = cosigners();
    let dir = tempfile::tempdir().unwrap();
    let home = Home::open(&dir.path().join("phone")).unwrap();
    let (mut ps, mut rs) = (c.provider.session(), c.recovery.session());
    let key_out = dir.path().join("recovery.key");
    let created = wallet::create(
        &home,
        &mut InProcess::new(&c.provider.service, &mut ps),
        &mut InProcess::new(&c.recovery.service, &mut rs),
        Network::Regtest,
        &key_out,
    )
    .unwrap()
    .wallet;
    let id = created.wallet_id;

    // A refresh whose recovery-cosigner commit finds its challenge replaced.
    let mut recovery = StaleChallenge {
        inner: InProcess::new(&c.recovery.service, &mut rs),
        pick: Box::new(is_commit),
        wallet_id: id,
        spoiled: 0,
    };
    let refreshed = wallet::refresh(
        &home,
        &mut InProcess::new(&c.provider.service, &mut ps),
        &mut recovery,
        id,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(recovery.spoiled, 1);
    assert_eq!(refreshed.epoch, Epoch(1));

    // A recovery onto a new phone whose refresh start finds both challenges replaced.
    let phone = Home::open(&dir.path().join("new-phone")).unwrap();
    let credential = read_p256_key(&key_out).unwrap();
    let (mut ps2, mut rs2) = (c.provider.session(), c.recovery.session());
    let mut provider = StaleChallenge {
        inner: InProcess::new(&c.provider.service, &mut ps2),
        pick: Box::new(is_refresh_start),
        wallet_id: id,
        spoiled: 0,
    };
    let mut recovery = StaleChallenge {
        inner: InProcess::new(&c.recovery.service, &mut rs2),
        pick: Box::new(is_refresh_start),
        wallet_id: id,
        spoiled: 0,
    };
    let recovered = wallet::recover(
        &phone,
        &mut provider,
        &mut recovery,
        id,
        &credential,
        Network::Regtest,
    )
    .unwrap();
    assert_eq!((provider.spoiled, recovery.spoiled), (1, 1));
    assert_eq!(recovered.epoch, Epoch(2));
    assert_eq!(recovered.group_public_key, created.group_public_key);
    wallet::sign(
        &phone,
        &mut InProcess::new(&c.provider.service, &mut ps2),
        id,
        &[9; 32],
    )
    .unwrap();
}
