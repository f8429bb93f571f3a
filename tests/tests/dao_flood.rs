//! DAO wallet creation under a flood of self-made invitations: anyone can found a DAO DKG (an
//! invitation only has to name the provider), so one key gets a small quota and the budget as a
//! whole evicts its oldest DKG instead of refusing everyone.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use cosigner_client::ClientError;
use cosigner_client::address::Network;
use cosigner_client::home::Home;
use cosigner_client::session::Session;
use cosigner_client::trust::Trust;
use cosigner_protocol::auth::public_key_bytes;
use cosigner_protocol::wire::{ErrorKind, Request, Response};
use cosigner_tests::Deployment;
use serde_bytes::ByteBuf;

const POLICY: &str = "[admin]\napprovals = 3\n\n[[rule]]\nname = \"any\"\napprovals = 2\n";

fn members(founder: &Home) -> String {
    let mut text = String::new();
    let others =
        (0..2).map(|_| public_key_bytes(&p256::ecdsa::SigningKey::random(&mut rand_core::OsRng)));
    let keys = std::iter::once(public_key_bytes(&founder.device_key().unwrap())).chain(others);
    for (i, key) in keys.enumerate() {
        text.push_str(&format!(
            "[[member]]\nname = \"m{i}\"\ndevice_key = \"{}\"\n\n",
            hex::encode(key)
        ));
    }
    text
}

/// An Ethereum treasury's policy (any 2 of the 3 members).
const ETH_POLICY: &str =
    "chain_ids = [1]\n[admin]\napprovals = 3\n\n[[rule]]\nname = \"any\"\napprovals = 2\n";

/// Founds a DAO DKG at the provider with a new invitation from `founder`.
fn found(d: &Deployment, s: &mut Session, founder: &Home) -> Result<Response, ClientError> {
    found_on(d, s, founder, Some(Network::Regtest))
}

/// [`found`] on `network` (`None`: an Ethereum treasury, threshold ECDSA).
fn found_on(
    d: &Deployment,
    s: &mut Session,
    founder: &Home,
    network: Option<Network>,
) -> Result<Response, ClientError> {
    let policy = if network.is_some() {
        POLICY
    } else {
        ETH_POLICY
    };
    let (_, envelope) = cosigner_client::dao::invite(
        founder,
        s,
        &members(founder),
        policy,
        network,
        &d.mailbox,
        &d.provider.addr(),
    )
    .unwrap();
    s.call(&Request::Mailbox {
        topic: ByteBuf::from(envelope.topic.to_vec()),
        envelopes: vec![ByteBuf::from(envelope.encode().unwrap())],
        from: 0,
    })
}

#[test]
fn a_flood_of_self_made_dao_invitations_does_not_block_dao_wallet_creation() {
    let d = Deployment::start().unwrap();
    let trust = Trust::load(&d.dir.path().join("trust.toml")).unwrap();
    let mut s = Session::connect(&d.provider.addr(), &trust).unwrap();
    // One key: a couple of creations in progress, then refused (retryable), not more.
    let greedy = Home::open(&d.home("greedy")).unwrap();
    let mut founded = 0;
    let mut busy = 0;
    for _ in 0..5 {
        match found(&d, &mut s, &greedy) {
            Ok(Response::Mailbox { .. }) => founded += 1,
            Err(ClientError::Remote(e)) if e.kind == ErrorKind::Busy => busy += 1,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!((founded, busy), (2, 3));
    // Many keys: 80 creations, more than the whole budget; every one is taken in.
    for i in 0..80 {
        let flooder = Home::open(&d.home(&format!("flooder-{i}"))).unwrap();
        let answer = found(&d, &mut s, &flooder);
        assert!(
            matches!(answer, Ok(Response::Mailbox { .. })),
            "{i}: {answer:?}"
        );
    }
    // A real founder after the flood: its creation is taken in too.
    let alice = Home::open(&d.home("alice")).unwrap();
    let answer = found(&d, &mut s, &alice);
    assert!(matches!(answer, Ok(Response::Mailbox { .. })), "{answer:?}");
}

/// The same flood of self-made invitations for Ethereum treasuries, whose DKGs hold megabytes
/// each: one key gets two, and the treasuries' own smaller budget evicts its oldest DKG instead
/// of refusing, so a flood of keys cannot block a real treasury's creation.
#[test]
fn a_flood_of_self_made_treasury_invitations_does_not_block_treasury_creation() {
    let d = Deployment::start().unwrap();
    let trust = Trust::load(&d.dir.path().join("trust.toml")).unwrap();
    let mut s = Session::connect(&d.provider.addr(), &trust).unwrap();
    let greedy = Home::open(&d.home("greedy")).unwrap();
    let mut outcomes = (0, 0);
    for _ in 0..4 {
        match found_on(&d, &mut s, &greedy, None) {
            Ok(Response::Mailbox { .. }) => outcomes.0 += 1,
            Err(ClientError::Remote(e)) if e.kind == ErrorKind::Busy => outcomes.1 += 1,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(outcomes, (2, 2));
    for i in 0..12 {
        let flooder = Home::open(&d.home(&format!("flooder-{i}"))).unwrap();
        let answer = found_on(&d, &mut s, &flooder, None);
        assert!(
            matches!(answer, Ok(Response::Mailbox { .. })),
            "{i}: {answer:?}"
        );
    }
    let alice = Home::open(&d.home("alice")).unwrap();
    let answer = found_on(&d, &mut s, &alice, None);
    assert!(matches!(answer, Ok(Response::Mailbox { .. })), "{answer:?}");
}
