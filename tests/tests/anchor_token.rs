//! Rollback anchors on a real (SoftHSM) token: writes are compare-and-swap on the generation,
//! concurrent writers never destroy each other's objects, and a crash between creating the new
//! object and destroying the old one leaves an anchor that reads (the highest generation wins)
//! and that the next write cleans up.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;

use cosigner_kms::{AnchorWrite, Pin, Token};
use cosigner_tests::{SoftHsm, softhsm_module};
use cryptoki::object::{Attribute, ObjectClass};

const LABEL: &str = "cosigner-test";

fn token() -> (SoftHsm, Token) {
    let hsm = SoftHsm::new().unwrap();
    hsm.install_env_for_this_process();
    let token = Token::init(
        &softhsm_module(),
        LABEL,
        &Pin::new("so-pin-123456"),
        &Pin::new("user-pin-123456"),
    )
    .unwrap();
    (hsm, token)
}

fn objects(token: &Token, label: &str) -> usize {
    let ctx = cosigner_kms::context(&softhsm_module()).unwrap();
    let session = ctx.open_ro_session(token.slot()).unwrap();
    session
        .find_objects(&[
            Attribute::Class(ObjectClass::DATA),
            Attribute::Label(label.as_bytes().to_vec()),
        ])
        .unwrap()
        .len()
}

#[test]
fn anchor_writes_are_compare_and_swap_on_the_generation() {
    let (_hsm, token) = token();
    assert_eq!(token.anchor("w").unwrap(), None);
    assert_eq!(
        token.set_anchor("w", None, b"one").unwrap(),
        AnchorWrite::Written(0)
    );
    // A writer that read "no anchor" is too late now.
    assert_eq!(
        token.set_anchor("w", None, b"other").unwrap(),
        AnchorWrite::Conflict { found: Some(0) }
    );
    assert_eq!(
        token.set_anchor("w", Some(0), b"two").unwrap(),
        AnchorWrite::Written(1)
    );
    assert_eq!(
        token.set_anchor("w", Some(0), b"stale").unwrap(),
        AnchorWrite::Conflict { found: Some(1) }
    );
    // The same write again (a rerun after the session died with the first one committed): it
    // is written, the value it asked for, not a conflict that would make its caller drop it.
    assert_eq!(
        token.set_anchor("w", Some(0), b"two").unwrap(),
        AnchorWrite::Written(1)
    );
    assert_eq!(token.anchor("w").unwrap(), Some((1, b"two".to_vec())));
    assert_eq!(objects(&token, "w"), 1);
}

/// Threads race to move one anchor from the same generation: exactly one wins each round, the
/// others learn it with nothing written, and no write fails with a vanished object.
#[test]
fn concurrent_anchor_writers_never_destroy_each_others_objects() {
    let (_hsm, token) = token();
    let token = Arc::new(token);
    token.set_anchor("w", None, b"start").unwrap();
    for round in 0..10u64 {
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let token = Arc::clone(&token);
                std::thread::spawn(move || {
                    token
                        .set_anchor("w", Some(round), format!("r{round}t{t}").as_bytes())
                        .unwrap()
                })
            })
            .collect();
        let results: Vec<AnchorWrite> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let won = results
            .iter()
            .filter(|r| matches!(r, AnchorWrite::Written(_)))
            .count();
        assert_eq!(won, 1, "round {round}: {results:?}");
        assert_eq!(token.anchor("w").unwrap().unwrap().0, round + 1);
    }
    assert_eq!(objects(&token, "w"), 1);
}

/// A crash after `C_CreateObject` and before `C_DestroyObject` leaves two generations: reads
/// take the newest, and the next write removes the leftovers.
#[test]
fn a_crash_between_create_and_destroy_leaves_an_anchor_that_reads_and_heals() {
    let (_hsm, token) = token();
    token.set_anchor("w", None, b"old").unwrap();
    // Simulate the crash: the next generation created by hand, the old one not destroyed.
    let ctx = cosigner_kms::context(&softhsm_module()).unwrap();
    let session = ctx.open_rw_session(token.slot()).unwrap();
    session
        .create_object(&[
            Attribute::Class(ObjectClass::DATA),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Label(b"w".to_vec()),
            Attribute::Application(b"cosigner-anchor".to_vec()),
            Attribute::Value([&1u64.to_be_bytes()[..], b"new"].concat()),
        ])
        .unwrap();
    drop(session);
    assert_eq!(objects(&token, "w"), 2);
    assert_eq!(token.anchor("w").unwrap(), Some((1, b"new".to_vec())));
    assert_eq!(
        token.set_anchor("w", Some(1), b"next").unwrap(),
        AnchorWrite::Written(2)
    );
    assert_eq!(objects(&token, "w"), 1);
}

fn data_object(label: &str, generation: u64, value: &[u8]) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::DATA),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Application(b"cosigner-anchor".to_vec()),
        Attribute::Value([&generation.to_be_bytes()[..], value].concat()),
    ]
}

/// The only writer of a token's anchors writes without searching the token: the same
/// compare-and-swap as [`Token::set_anchor`], one object left per anchor. An object changed
/// behind its back (another writer, against the deployment rule; a restored token) sends it
/// back to the search, which reports the conflict instead of writing over it, and a handle
/// that names another object since is never destroyed.
#[test]
fn the_sole_writer_skips_the_search_and_falls_back_to_it_when_the_token_changed() {
    let (_hsm, token) = token();
    let sole = cosigner_kms::SoleWriter::new(token.clone());
    assert_eq!(
        sole.set_anchor("w", None, b"one").unwrap(),
        AnchorWrite::Written(0)
    );
    assert_eq!(
        sole.set_anchor("w", Some(0), b"two").unwrap(),
        AnchorWrite::Written(1)
    );
    assert_eq!(
        sole.set_anchor("w", Some(1), b"three").unwrap(),
        AnchorWrite::Written(2)
    );
    assert_eq!(
        sole.set_anchor("w", Some(1), b"stale").unwrap(),
        AnchorWrite::Conflict { found: Some(2) }
    );
    assert_eq!(token.anchor("w").unwrap(), Some((2, b"three".to_vec())));
    assert_eq!(objects(&token, "w"), 1);

    // Behind its back: the object it wrote is destroyed and generation 7 written instead.
    let ctx = cosigner_kms::context(&softhsm_module()).unwrap();
    let session = ctx.open_rw_session(token.slot()).unwrap();
    for handle in session
        .find_objects(&[Attribute::Label(b"w".to_vec())])
        .unwrap()
    {
        session.destroy_object(handle).unwrap();
    }
    session
        .create_object(&data_object("w", 7, b"theirs"))
        .unwrap();
    assert_eq!(
        sole.set_anchor("w", Some(2), b"four").unwrap(),
        AnchorWrite::Conflict { found: Some(7) }
    );
    assert_eq!(token.anchor("w").unwrap(), Some((7, b"theirs".to_vec())));
    assert_eq!(
        sole.set_anchor("w", Some(7), b"five").unwrap(),
        AnchorWrite::Written(8)
    );

    // Another anchor's objects are never touched by writes of this one.
    session
        .create_object(&data_object("v", 0, b"other"))
        .unwrap();
    for g in 9..12 {
        assert_eq!(
            sole.set_anchor("w", Some(g - 1), b"more").unwrap(),
            AnchorWrite::Written(g)
        );
    }
    assert_eq!(token.anchor("v").unwrap(), Some((0, b"other".to_vec())));
    assert_eq!(token.anchor("w").unwrap(), Some((11, b"more".to_vec())));
    assert_eq!(objects(&token, "w"), 1);
}
