//! Whole ceremonies in memory: the test is the coordinator and relays every message, so it can
//! also be the malicious relay (or help a malicious party) and check that the honest parties
//! notice. Every generic test runs for both `frost-secp256k1-tr` and `frost-secp256k1`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

mod common;

use std::collections::BTreeMap;

use common::{
    MESSAGE, PARTIES, altered, assert_secrets_stay_out_of_debug, culprit, disagreement, dkg_params,
    dkg_round1, dkg_round3, finish, for_both_suites, inbox, package, pid, rng, round2, run_dkg,
    session_mismatch, sign_shares, sign_with, unexpected, verify,
};
use cosigner_protocol::ProtocolError;
use cosigner_protocol::dkg::{
    self, DkgInput, DkgOutput, DkgOutputMessage, DkgRound1, DkgRound2, DkgState,
};
use cosigner_protocol::id::PartyId;
use cosigner_protocol::sign::{self, SignerSession};
use cosigner_protocol::wire::{DkgParams, Round1Message, SealedPackage};
use frost_core::Ciphersuite;
use frost_core::keys::KeyPackage;
use serde_bytes::ByteBuf;

// ---------------------------------------------------------------------------------------------
// Happy paths.

fn dkg_then_every_pair_signs<C: Ciphersuite>() {
    let keys = run_dkg::<C>();
    let pkp = &keys[&pid(1)].public_key_package;
    for (me, out) in &keys {
        assert_eq!(&out.public_key_package, pkp, "party {me}");
        assert_eq!(out.transcript_hash, keys[&pid(1)].transcript_hash);
        assert_eq!(out.key_package.verifying_key(), pkp.verifying_key());
        assert_eq!(*out.key_package.min_signers(), 2);
        assert_eq!(pkp.verifying_shares().len(), 3);
    }
    for signers in [[1, 2], [1, 3], [2, 3]].map(|s| s.map(pid)) {
        let signature = sign_with(&keys, &signers, MESSAGE);
        assert!(verify(pkp, MESSAGE, &signature), "signers {signers:?}");
        assert!(!verify(pkp, b"another message", &signature));
    }
    // More than the threshold works too, and the signer list may come in any order.
    let signature = sign_with(&keys, &[pid(3), pid(1), pid(2)], MESSAGE);
    assert!(verify(pkp, MESSAGE, &signature));
}

/// One round through the state wrapper: every party's state handles `input(me)`, and `sent`
/// takes what it sends out of its output; the next states and what they sent.
fn each_handles<C: Ciphersuite, T>(
    states: BTreeMap<PartyId, DkgState<C>>,
    input: impl Fn(PartyId) -> DkgInput,
    sent: impl Fn(DkgOutputMessage) -> T,
) -> (BTreeMap<PartyId, DkgState<C>>, Vec<T>) {
    let mut next = BTreeMap::new();
    let mut messages = Vec::new();
    for (me, state) in states {
        let (state, out) = state.handle(input(me), &mut rng()).unwrap();
        messages.push(sent(out));
        next.insert(me, state);
    }
    (next, messages)
}

fn dkg_through_the_state_wrapper<C: Ciphersuite>() {
    let params = dkg_params::<C>();
    let mut states = BTreeMap::new();
    let mut round1 = Vec::new();
    for me in PARTIES {
        let (state, message) = DkgState::<C>::start(&params, me, &mut rng()).unwrap();
        assert_eq!(state.expects(), "round-1 messages");
        states.insert(me, state);
        round1.push(message);
    }
    let (next, sealed) = each_handles(
        states,
        |_| DkgInput::Round1(round1.clone()),
        |out| match out {
            DkgOutputMessage::Round2(packages) => packages,
            other => panic!("expected round-2 packages, got {other:?}"),
        },
    );
    let sealed: Vec<SealedPackage> = sealed.concat();
    let (after, confirmations) = each_handles(
        next,
        |me| DkgInput::Round2(inbox(&sealed, me)),
        |out| match out {
            DkgOutputMessage::Confirmation(c) => c,
            other => panic!("expected a confirmation, got {other:?}"),
        },
    );
    let mut keys = Vec::new();
    for (me, state) in after {
        let (state, out) = state
            .handle(DkgInput::Confirmations(confirmations.clone()), &mut rng())
            .unwrap();
        assert_eq!(out, DkgOutputMessage::Done);
        assert_eq!(state.me(), me);
        assert_eq!(state.params().parties, PARTIES.to_vec());
        assert_eq!(state.expects(), "nothing (the DKG is finished)");
        if me == 3 {
            // A finished ceremony accepts nothing more.
            assert!(matches!(
                state.handle(DkgInput::Confirmations(confirmations.clone()), &mut rng()),
                Err(ProtocolError::UnexpectedMessage {
                    expected: "nothing (the DKG is finished)",
                    ..
                })
            ));
            continue;
        }
        keys.push(state.into_output().unwrap().public_key_package);
    }
    assert_eq!(keys.len(), 2);
    assert!(keys.windows(2).all(|w| w[0] == w[1]));

    // An input for another round is refused by name.
    let (state, _) = DkgState::<C>::start(&params, pid(1), &mut rng()).unwrap();
    assert!(matches!(
        state.handle(DkgInput::Round2(vec![]), &mut rng()),
        Err(ProtocolError::UnexpectedMessage {
            expected: "round-1 messages",
            ..
        })
    ));
}

fn parties_in_any_order_and_numbering<C: Ciphersuite>() {
    // Party numbers need not be 1..=n, and the list may come unsorted.
    let mut params = dkg_params::<C>();
    params.parties = vec![pid(7), pid(300), pid(2)];
    let (s1, r1) = dkg_round1::<C>(&params);
    for s in s1.values() {
        assert_eq!(s.params().parties, vec![2, 7, 300]);
    }
    let (s2, sealed) = round2(s1, &r1);
    let (s3, confirmations) = dkg_round3(s2, &sealed);
    let keys: BTreeMap<PartyId, DkgOutput<C>> = finish(s3, &confirmations);
    let signature = sign_with(&keys, &[pid(300), pid(7)], MESSAGE);
    assert!(verify(
        &keys[&pid(2)].public_key_package,
        MESSAGE,
        &signature
    ));
}

// ---------------------------------------------------------------------------------------------
// Parameters.

fn bad_parameters_are_refused<C: Ciphersuite>() {
    let start = |p: &DkgParams, me: PartyId| dkg::start::<C>(p, me, &mut rng()).map(|_| ());
    let good = dkg_params::<C>();
    assert!(start(&good, pid(2)).is_ok());

    let mut p = good.clone();
    p.ciphersuite = "FROST-ED25519-SHA512-v1".into();
    assert!(matches!(
        start(&p, pid(1)),
        Err(ProtocolError::Ciphersuite { .. })
    ));
    for (min, parties, me) in [
        (1, vec![1, 2, 3], 1),       // threshold below 2
        (0, vec![1, 2, 3], 1),       // threshold 0
        (4, vec![1, 2, 3], 1),       // threshold above n
        (2, vec![1, 2, 3], 4),       // me not a party
        (2, vec![1, 2, 2, 3], 1),    // duplicate party
        (2, vec![], 1),              // nobody
        (2, (1..=256).collect(), 1), // over the cap
    ] {
        let (parties, me): (Vec<PartyId>, _) = (parties.into_iter().map(pid).collect(), pid(me));
        let p = DkgParams {
            min_signers: min,
            parties: parties.clone(),
            ..good.clone()
        };
        assert!(
            matches!(start(&p, me), Err(ProtocolError::Params { .. })),
            "min {min}, parties {parties:?}, me {me}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Round 1: what the relay or a party can do to the broadcast.

fn round1_set_must_be_exactly_one_per_party<C: Ciphersuite>() {
    let params = dkg_params::<C>();
    let (s1, r1) = dkg_round1::<C>(&params);
    let mut states = s1.into_values();

    let missing: Vec<_> = r1.iter().filter(|m| m.from != pid(3)).cloned().collect();
    let actual = unexpected(states.next().unwrap().handle_round1(&missing, &mut rng()));
    assert!(actual.contains("party 3"), "{actual}");

    let mut duplicate = r1.clone();
    duplicate.push(r1[2].clone());
    let actual = unexpected(states.next().unwrap().handle_round1(&duplicate, &mut rng()));
    assert!(actual.contains("party 3"), "{actual}");

    let (_, stranger) = dkg::start::<C>(
        &DkgParams {
            parties: vec![pid(1), pid(2), pid(3), pid(4)],
            ..params.clone()
        },
        pid(4),
        &mut rng(),
    )
    .unwrap();
    let mut unknown = r1.clone();
    unknown.push(stranger);
    let actual = unexpected(states.next().unwrap().handle_round1(&unknown, &mut rng()));
    assert!(actual.contains("party 4"), "{actual}");
}

fn relay_altering_our_own_round1_message_is_refused<C: Ciphersuite>() {
    let (mut s1, r1) = dkg_round1::<C>(&dkg_params::<C>());
    let mut altered = r1.clone();
    // The relay substitutes its own HPKE key for party 2's, hoping to read the shares sent to 2.
    altered[1].hpke_public_key = ByteBuf::from(vec![9; 32]);
    let reason = disagreement(
        s1.remove(&pid(2))
            .unwrap()
            .handle_round1(&altered, &mut rng()),
    );
    assert!(reason.contains("party 2"), "{reason}");
}

fn malformed_round1_packages_name_their_sender<C: Ciphersuite>() {
    let (s1, r1) = dkg_round1::<C>(&dkg_params::<C>());
    let mut states = s1.into_iter().filter(|(me, _)| *me != 3).map(|(_, s)| s);

    let mut garbage = r1.clone();
    garbage[2].package = ByteBuf::from(vec![0xff; r1[2].package.len()]);
    assert_eq!(
        culprit(states.next().unwrap().handle_round1(&garbage, &mut rng())).0,
        3
    );

    // frost's decoder ignores trailing bytes; we do not (nor any other length than ours).
    let mut trailing = r1.clone();
    trailing[2].package.push(0);
    assert_eq!(
        culprit(states.next().unwrap().handle_round1(&trailing, &mut rng())).0,
        3
    );

    let (s1, r1) = dkg_round1::<C>(&dkg_params::<C>());
    let mut states = s1.into_iter().filter(|(me, _)| *me != 3).map(|(_, s)| s);
    let mut short_key = r1.clone();
    short_key[2].hpke_public_key.pop();
    assert_eq!(
        culprit(states.next().unwrap().handle_round1(&short_key, &mut rng())).0,
        3
    );

    // Party 3 replays party 2's package as its own: the proof of knowledge is bound to the
    // identifier (KeyGen round 1 step 2), so it fails for 3.
    let mut copied = r1.clone();
    copied[2].package = r1[1].package.clone();
    assert_eq!(
        culprit(states.next().unwrap().handle_round1(&copied, &mut rng())).0,
        3
    );

    // A commitment for another threshold.
    let (s1, r1) = dkg_round1::<C>(&dkg_params::<C>());
    let mut p3 = dkg_params::<C>();
    p3.min_signers = 3;
    let (_, other_threshold) = dkg::start::<C>(&p3, pid(3), &mut rng()).unwrap();
    let mut wrong_t = r1.clone();
    wrong_t[2] = other_threshold;
    let s = s1.into_values().next().unwrap();
    assert_eq!(culprit(s.handle_round1(&wrong_t, &mut rng())).0, 3);
}

/// Party `me` (taken out of `states`) handles the round-1 broadcast as the relay shows it to it.
fn handle_view<C: Ciphersuite>(
    states: &mut BTreeMap<PartyId, DkgRound1<C>>,
    me: PartyId,
    view: &[Round1Message],
) -> (DkgRound2<C>, Vec<SealedPackage>) {
    let state = states.remove(&me).unwrap();
    state.handle_round1(view, &mut rng()).unwrap()
}

/// Honest party 3 started twice (say, a retry) and the relay shows party 1 the first round-1
/// message and party 2 the second. Nobody ends with a key; here it shows already in round 2,
/// because the transcript hash is in every package's AAD.
fn inconsistent_round1_broadcast_yields_no_key<C: Ciphersuite>() {
    let params = dkg_params::<C>();
    let (mut s1, r1) = dkg_round1::<C>(&params);
    let (_second_run, second_message) = dkg::start::<C>(&params, pid(3), &mut rng()).unwrap();
    let mut view_of_2 = r1.clone();
    view_of_2[2] = second_message;

    let (s2_1, sealed_1) = handle_view(&mut s1, pid(1), &r1);
    let (s2_2, sealed_2) = handle_view(&mut s1, pid(2), &view_of_2);
    let (s2_3, sealed_3) = handle_view(&mut s1, pid(3), &r1);
    assert_ne!(s2_1.transcript_hash(), s2_2.transcript_hash());
    let sealed: Vec<_> = [sealed_1, sealed_2, sealed_3].concat();

    // Party 1 cannot open party 2's package (2 saw another transcript); party 2 cannot open 1's
    // or 3's; party 3 cannot open 2's (sealed to the other run's key).
    assert_eq!(culprit(s2_1.handle_round2(&inbox(&sealed, pid(1)))).0, 2);
    assert!(matches!(
        s2_2.handle_round2(&inbox(&sealed, pid(2))),
        Err(ProtocolError::Culprit { party, .. }) if party == pid(1) || party == pid(3)
    ));
    assert_eq!(culprit(s2_3.handle_round2(&inbox(&sealed, pid(3)))).0, 2);
}

/// A malicious party 3 runs two polynomials and, with the relay, shows party 1 one and party 2
/// the other, each with shares consistent with what that party saw (the frost issue 577
/// attack: without a check, 1 and 2 would end with different group keys). Parties 1 and 2 see
/// different transcripts, so neither opens the other's round-2 package: no key anywhere. The
/// culprit named is the other honest party, as relayed; the reason says why.
fn equivocating_party_gets_nobody_a_key<C: Ciphersuite>() {
    let params = dkg_params::<C>();
    let (mut s1, view_a) = dkg_round1::<C>(&params);
    let (evil_b, message_b) = dkg::start::<C>(&params, pid(3), &mut rng()).unwrap();
    let evil_a = s1.remove(&pid(3)).unwrap();
    let mut view_b = view_a.clone();
    view_b[2] = message_b;

    let (s2_1, sealed_1) = handle_view(&mut s1, pid(1), &view_a);
    let (s2_2, sealed_2) = handle_view(&mut s1, pid(2), &view_b);
    let (_, evil_sealed_a) = evil_a.handle_round1(&view_a, &mut rng()).unwrap();
    let (_, evil_sealed_b) = evil_b.handle_round1(&view_b, &mut rng()).unwrap();

    // Party 3's packages are fine for each victim ...
    let to_1: Vec<_> = [inbox(&sealed_2, pid(1)), inbox(&evil_sealed_a, pid(1))].concat();
    let to_2: Vec<_> = [inbox(&sealed_1, pid(2)), inbox(&evil_sealed_b, pid(2))].concat();
    // ... but the honest parties' packages to each other are bound to different transcripts.
    match s2_1.handle_round2(&to_1) {
        Err(ProtocolError::Culprit { party, reason }) if party == pid(2) => {
            assert!(reason.contains("different round-1 transcript"), "{reason}")
        }
        other => panic!("expected party 2's package refused, got {other:?}"),
    }
    assert_eq!(culprit(s2_2.handle_round2(&to_2)).0, 1);
}

/// The confirmation round: the relay (or a lying party) reports another transcript or another
/// public key package for party 3. Whoever receives it refuses to activate, naming party 3.
fn forged_confirmation_is_a_disagreement<C: Ciphersuite>() {
    let (s1, r1) = dkg_round1::<C>(&dkg_params::<C>());
    let (s2, sealed) = round2(s1, &r1);
    let (mut s3, confirmations) = dkg_round3(s2, &sealed);

    let forged = altered(&confirmations, pid(3), |c| c.transcript_hash[0] ^= 1);
    let reason = disagreement(s3.remove(&pid(1)).unwrap().handle_confirmations(&forged));
    assert!(
        reason.contains("[3]") && reason.contains("transcript"),
        "{reason}"
    );

    let forged = altered(&confirmations, pid(3), |c| {
        c.public_key_package_hash[31] ^= 1
    });
    let reason = disagreement(s3.remove(&pid(2)).unwrap().handle_confirmations(&forged));
    assert!(
        reason.contains("[3]") && reason.contains("public key package"),
        "{reason}"
    );

    // The untouched set still works for party 3.
    assert!(
        s3.remove(&pid(3))
            .unwrap()
            .handle_confirmations(&confirmations)
            .is_ok()
    );
}

// ---------------------------------------------------------------------------------------------
// Round 2: sealed packages.

fn corrupted_round2_share_names_the_sender<C: Ciphersuite>() {
    let params = dkg_params::<C>();
    let (s1, r1) = dkg_round1::<C>(&params);
    let party2_key = r1[1].hpke_public_key.clone();
    let (mut s2, mut sealed) = round2(s1, &r1);
    let transcript = *s2[&pid(2)].transcript_hash();

    // Party 3 seals a well-formed package whose share does not match its commitment.
    let bad = dkg::seal_package(
        &params,
        pid(3),
        pid(2),
        &transcript,
        &party2_key,
        &common::bogus_round2_package::<C>(),
        &mut rng(),
    )
    .unwrap();
    let slot = sealed
        .iter_mut()
        .find(|p| p.from == pid(3) && p.to == pid(2))
        .unwrap();
    *slot = bad;

    match s2
        .remove(&pid(2))
        .unwrap()
        .handle_round2(&inbox(&sealed, pid(2)))
    {
        Err(ProtocolError::Culprit { party, reason }) if party == pid(3) => {
            assert!(reason.contains("secret share"), "{reason}")
        }
        other => panic!("expected party 3 named, got {other:?}"),
    }
    // Party 1 got honest packages and proceeds; it will never get 2's confirmation.
    assert!(
        s2.remove(&pid(1))
            .unwrap()
            .handle_round2(&inbox(&sealed, pid(1)))
            .is_ok()
    );
}

fn relay_flipping_a_bit_in_a_sealed_package_is_refused<C: Ciphersuite>() {
    let (s1, r1) = dkg_round1::<C>(&dkg_params::<C>());
    let (mut s2, sealed) = round2(s1, &r1);

    let mut flipped = inbox(&sealed, pid(2));
    let from3 = flipped.iter_mut().find(|p| p.from == pid(3)).unwrap();
    from3.ciphertext[5] ^= 0x10;
    match s2.remove(&pid(2)).unwrap().handle_round2(&flipped) {
        Err(ProtocolError::Culprit { party, reason }) if party == pid(3) => {
            assert!(reason.contains("does not open"), "{reason}")
        }
        other => panic!("expected party 3 named, got {other:?}"),
    }

    let mut flipped_enc = inbox(&sealed, pid(1));
    flipped_enc[0].enc[0] ^= 1;
    let from = flipped_enc[0].from;
    assert_eq!(
        culprit(s2.remove(&pid(1)).unwrap().handle_round2(&flipped_enc)).0,
        from
    );
}

fn package_for_another_party_is_refused<C: Ciphersuite>() {
    let (s1, r1) = dkg_round1::<C>(&dkg_params::<C>());
    let (mut s2, sealed) = round2(s1, &r1);
    let for_3 = package(&sealed, pid(1), pid(3));

    // Delivered to 2 as is: addressed to 3.
    let mut inbox2 = inbox(&sealed, pid(2));
    let slot = inbox2.iter_mut().find(|p| p.from == pid(1)).unwrap();
    *slot = for_3.clone();
    let actual = unexpected(s2.remove(&pid(2)).unwrap().handle_round2(&inbox2));
    assert!(actual.contains("addressed to party 3"), "{actual}");

    // Relabelled as addressed to 2: sealed to 3's key and AAD, it does not open.
    let (s1, r1) = dkg_round1::<C>(&dkg_params::<C>());
    let (mut s2, sealed) = round2(s1, &r1);
    let mut relabelled = package(&sealed, pid(1), pid(3));
    relabelled.to = pid(2);
    let mut inbox2 = inbox(&sealed, pid(2));
    let slot = inbox2.iter_mut().find(|p| p.from == 1).unwrap();
    *slot = relabelled;
    assert_eq!(
        culprit(s2.remove(&pid(2)).unwrap().handle_round2(&inbox2)).0,
        1
    );
}

fn package_from_another_ceremony_is_refused<C: Ciphersuite>() {
    // Same wallet, same parties, a second run: old packages must not open in the new one.
    let (s1, r1) = dkg_round1::<C>(&dkg_params::<C>());
    let (_, old_sealed) = round2(s1, &r1);
    let (s1, r1) = dkg_round1::<C>(&dkg_params::<C>());
    let (mut s2, sealed) = round2(s1, &r1);
    let mut mixed = inbox(&sealed, pid(2));
    mixed[0] = old_sealed
        .iter()
        .find(|p| p.from == mixed[0].from && p.to == pid(2))
        .unwrap()
        .clone();
    let from = mixed[0].from;
    assert_eq!(
        culprit(s2.remove(&pid(2)).unwrap().handle_round2(&mixed)).0,
        from
    );
}

fn round2_set_must_be_exactly_one_per_other_party<C: Ciphersuite>() {
    let fresh = || {
        let (s1, r1) = dkg_round1::<C>(&dkg_params::<C>());
        let (mut s2, sealed) = round2(s1, &r1);
        (s2.remove(&pid(2)).unwrap(), sealed)
    };

    let (s, sealed) = fresh();
    let missing: Vec<_> = inbox(&sealed, pid(2))
        .into_iter()
        .filter(|p| p.from != pid(3))
        .collect();
    assert!(unexpected(s.handle_round2(&missing)).contains("party 3"));

    let (s, sealed) = fresh();
    let mut duplicate = inbox(&sealed, pid(2));
    duplicate.push(duplicate[0].clone());
    assert!(unexpected(s.handle_round2(&duplicate)).contains("two messages"));

    // A package from a stranger, and one "from ourselves" (party 2).
    for (from, named) in [(pid(4), "party 4"), (pid(2), "party 2")] {
        let (s, sealed) = fresh();
        let mut set = inbox(&sealed, pid(2));
        let mut extra = set[0].clone();
        extra.from = from;
        set.push(extra);
        assert!(unexpected(s.handle_round2(&set)).contains(named), "{from}");
    }
}

// ---------------------------------------------------------------------------------------------
// Round 3: confirmations.

fn confirmation_set_must_be_exactly_one_per_party<C: Ciphersuite>() {
    let fresh = || {
        let (s1, r1) = dkg_round1::<C>(&dkg_params::<C>());
        let (s2, sealed) = round2(s1, &r1);
        let (mut s3, confirmations) = dkg_round3(s2, &sealed);
        (s3.remove(&pid(1)).unwrap(), confirmations)
    };

    let (s, c) = fresh();
    let missing: Vec<_> = c.iter().filter(|c| c.from != pid(2)).cloned().collect();
    assert!(unexpected(s.handle_confirmations(&missing)).contains("party 2"));

    let (s, mut c) = fresh();
    c.push(c[2].clone());
    assert!(unexpected(s.handle_confirmations(&c)).contains("two messages"));

    let (s, mut c) = fresh();
    let mut stranger = c[2].clone();
    stranger.from = pid(9);
    c.push(stranger);
    assert!(unexpected(s.handle_confirmations(&c)).contains("party 9"));

    // Our own confirmation, altered by the relay.
    let (s, mut c) = fresh();
    c[0].public_key_package_hash[0] ^= 1;
    let reason = disagreement(s.handle_confirmations(&c));
    assert!(reason.contains("ours"), "{reason}");
}

// ---------------------------------------------------------------------------------------------
// Signing.

fn signing_package_must_match_the_session<C: Ciphersuite>() {
    let keys = run_dkg::<C>();
    let kp = |p: PartyId| &keys[&p].key_package;
    let commit = |p: PartyId, message: &[u8], signers: &[PartyId]| {
        SignerSession::commit(kp(p), p, message, signers, &mut rng()).unwrap()
    };

    // Party 1's session `s1` handed the package of `message` over `commitments`: the mismatch.
    let mismatch = |s1: SignerSession<C>, message: &[u8], commitments: BTreeMap<PartyId, _>| {
        let package = sign::signing_package::<C>(message, &commitments).unwrap();
        session_mismatch(s1.sign(kp(pid(1)), &package))
    };

    // Another message than the one committed to.
    let (s1, c1) = commit(pid(1), MESSAGE, &[pid(1), pid(2)]);
    let (_s2, c2) = commit(pid(2), MESSAGE, &[pid(1), pid(2)]);
    let commitments = BTreeMap::from([(pid(1), c1), (pid(2), c2)]);
    assert!(mismatch(s1, b"pay the attacker", commitments).contains("message"));

    // Another signer set: party 3 added.
    let (s1, c1) = commit(pid(1), MESSAGE, &[pid(1), pid(2)]);
    let (_s2, c2) = commit(pid(2), MESSAGE, &[pid(1), pid(2)]);
    let (_s3, c3) = commit(pid(3), MESSAGE, &[pid(1), pid(2), pid(3)]);
    let three = BTreeMap::from([(pid(1), c1), (pid(2), c2), (pid(3), c3)]);
    assert!(mismatch(s1, MESSAGE, three).contains("signers"));

    // Another signer set: party 2 swapped for 3.
    let (s1, c1) = commit(pid(1), MESSAGE, &[pid(1), pid(2)]);
    let (_s3, c3) = commit(pid(3), MESSAGE, &[pid(1), pid(3)]);
    let swapped = BTreeMap::from([(pid(1), c1), (pid(3), c3)]);
    assert!(mismatch(s1, MESSAGE, swapped).contains("signers"));

    // Our commitment replaced by one from another of our sessions.
    let (s1, _c1) = commit(pid(1), MESSAGE, &[pid(1), pid(2)]);
    let (_other_session, c1_other) = commit(pid(1), MESSAGE, &[pid(1), pid(2)]);
    let (_s2, c2) = commit(pid(2), MESSAGE, &[pid(1), pid(2)]);
    let replaced = BTreeMap::from([(pid(1), c1_other), (pid(2), c2)]);
    assert!(mismatch(s1, MESSAGE, replaced).contains("commitment"));

    // Garbage instead of a package.
    let (s1, _) = commit(pid(1), MESSAGE, &[pid(1), pid(2)]);
    assert!(matches!(
        s1.sign(kp(pid(1)), b"not a package"),
        Err(ProtocolError::Encoding { .. })
    ));

    // The key package of another party.
    let (s1, c1) = commit(pid(1), MESSAGE, &[pid(1), pid(2)]);
    let (_s2, c2) = commit(pid(2), MESSAGE, &[pid(1), pid(2)]);
    let package =
        sign::signing_package::<C>(MESSAGE, &BTreeMap::from([(pid(1), c1), (pid(2), c2)])).unwrap();
    assert!(matches!(
        s1.sign(kp(pid(2)), &package),
        Err(ProtocolError::Params { .. })
    ));
}

fn commit_checks_its_inputs<C: Ciphersuite>() {
    let keys = run_dkg::<C>();
    let kp1 = &keys[&pid(1)].key_package;
    let commit = |kp: &KeyPackage<C>, me: PartyId, signers: &[PartyId]| {
        SignerSession::commit(kp, me, MESSAGE, signers, &mut rng()).map(|_| ())
    };
    assert!(commit(kp1, pid(1), &[pid(1), pid(2)]).is_ok());
    for (me, signers) in [
        (1, &[2, 3][..]), // we are not in the set
        (1, &[1][..]),    // below the threshold
        (1, &[1, 1][..]), // duplicate
        (2, &[1, 2][..]), // key package of party 1, claimed as 2
    ] {
        assert!(
            matches!(
                commit(
                    kp1,
                    pid(me),
                    &signers.iter().copied().map(pid).collect::<Vec<_>>()
                ),
                Err(ProtocolError::Params { .. })
            ),
            "me {me}, signers {signers:?}"
        );
    }
    let (session, _) =
        SignerSession::commit(kp1, pid(1), MESSAGE, &[pid(2), pid(1)], &mut rng()).unwrap();
    assert_eq!(session.signers(), &[1, 2]);
    assert_eq!(session.message(), MESSAGE);
    assert_eq!(session.me(), pid(1));
    let debug = format!("{session:?}");
    assert!(debug.contains("<redacted>"), "{debug}");
}

fn bad_signature_share_names_its_signer<C: Ciphersuite>() {
    let keys = run_dkg::<C>();
    let signers = [pid(1), pid(3)].map(|s| (s, &keys[&s].key_package));
    let (package, mut shares) = sign_shares(&signers, MESSAGE);
    let pkp = &keys[&pid(1)].public_key_package;
    let honest = shares.clone();
    assert!(verify(
        pkp,
        MESSAGE,
        &sign::aggregate(&package, &honest, pkp).unwrap()
    ));

    // A valid scalar that is not party 3's share.
    let mut wrong = shares[&pid(3)].clone();
    wrong[31] ^= 1;
    shares.insert(pid(3), wrong);
    assert_eq!(culprit(sign::aggregate(&package, &shares, pkp)).0, 3);

    // Both bad: both named, the first in `party`. (The errors must not cancel out: the sum is
    // all the aggregate signature depends on, and a valid sum is a valid signature.)
    let mut both = shares.clone();
    let mut wrong1 = honest[&pid(1)].clone();
    wrong1[31] ^= 2;
    both.insert(pid(1), wrong1);
    match sign::aggregate(&package, &both, pkp) {
        Err(ProtocolError::Culprit { party, reason }) if party == pid(1) => {
            assert!(reason.contains("[1, 3]"), "{reason}")
        }
        other => panic!("expected parties 1 and 3 named, got {other:?}"),
    }

    // Not a scalar at all.
    let mut garbage = honest.clone();
    garbage.insert(pid(1), vec![0xff; 32]);
    assert_eq!(culprit(sign::aggregate(&package, &garbage, pkp)).0, 1);
    let mut short = honest.clone();
    short.insert(pid(3), vec![1; 31]);
    assert_eq!(culprit(sign::aggregate(&package, &short, pkp)).0, 3);

    // Missing and extra shares.
    let mut missing = honest.clone();
    missing.remove(&pid(3));
    assert!(matches!(
        sign::aggregate(&package, &missing, pkp),
        Err(ProtocolError::UnexpectedMessage { .. })
    ));
    let mut extra = honest.clone();
    extra.insert(pid(2), honest[&pid(1)].clone());
    assert!(unexpected(sign::aggregate(&package, &extra, pkp)).contains("party 2"));

    // Garbage package.
    assert!(matches!(
        sign::aggregate(b"nope", &honest, pkp),
        Err(ProtocolError::Encoding { .. })
    ));
}

fn coordinator_refuses_malformed_commitments<C: Ciphersuite>() {
    let keys = run_dkg::<C>();
    let (_s1, c1) = SignerSession::commit(
        &keys[&pid(1)].key_package,
        pid(1),
        MESSAGE,
        &[pid(1), pid(2)],
        &mut rng(),
    )
    .unwrap();
    let mut trailing = c1.clone();
    trailing.push(0);
    let bad = BTreeMap::from([(pid(1), c1.clone()), (pid(2), trailing)]);
    assert_eq!(culprit(sign::signing_package::<C>(MESSAGE, &bad)).0, 2);
    let garbage = BTreeMap::from([(pid(1), c1.clone()), (pid(2), vec![1, 2, 3])]);
    assert_eq!(culprit(sign::signing_package::<C>(MESSAGE, &garbage)).0, 2);
    let alone = BTreeMap::from([(pid(1), c1.clone())]);
    assert!(matches!(
        sign::signing_package::<C>(MESSAGE, &alone),
        Err(ProtocolError::Params { .. })
    ));
    // (A party 0 cannot be spelled: `PartyId` refuses it where it is decoded.)
    drop(c1);
}

fn secrets_stay_out_of_debug<C: Ciphersuite>() {
    let (s1, r1) = dkg_round1::<C>(&dkg_params::<C>());
    assert_secrets_stay_out_of_debug(s1, &r1, dkg_round3);
}

for_both_suites!(
    dkg_then_every_pair_signs,
    dkg_through_the_state_wrapper,
    parties_in_any_order_and_numbering,
    bad_parameters_are_refused,
    round1_set_must_be_exactly_one_per_party,
    relay_altering_our_own_round1_message_is_refused,
    malformed_round1_packages_name_their_sender,
    inconsistent_round1_broadcast_yields_no_key,
    equivocating_party_gets_nobody_a_key,
    forged_confirmation_is_a_disagreement,
    corrupted_round2_share_names_the_sender,
    relay_flipping_a_bit_in_a_sealed_package_is_refused,
    package_for_another_party_is_refused,
    package_from_another_ceremony_is_refused,
    round2_set_must_be_exactly_one_per_other_party,
    confirmation_set_must_be_exactly_one_per_party,
    signing_package_must_match_the_session,
    commit_checks_its_inputs,
    bad_signature_share_names_its_signer,
    coordinator_refuses_malformed_commitments,
    secrets_stay_out_of_debug,
);
