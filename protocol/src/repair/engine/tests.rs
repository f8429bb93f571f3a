#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use rand_core::OsRng;
use serde_bytes::ByteBuf;

use super::*;
use crate::id::pid;
use crate::repair;
use crate::test_support::{Tr, dealer_keys};

/// Helpers 3 and 2 (listed unsorted) repair party 1's share.
fn params() -> RepairParams {
    repair::test_params(9, 0)
}

/// Helpers 2 and 3 and the receiver, started, with the messages they sent.
struct Repair {
    keys: BTreeMap<PartyId, KeyPackage<Tr>>,
    pkp: PublicKeyPackage<Tr>,
    helpers: BTreeMap<PartyId, RepairHelper<Tr>>,
    receiver: RepairReceiver<Tr>,
    posted: Vec<RepairMessage>,
}

fn started() -> Repair {
    let (keys, pkp) = dealer_keys();
    let mut helpers = BTreeMap::new();
    let mut posted = Vec::new();
    for h in [pid(2), pid(3)] {
        let (helper, first) =
            RepairHelper::start(&params(), h, &keys[&h], &pkp, &mut OsRng).unwrap();
        helpers.insert(h, helper);
        posted.extend(first);
    }
    let (receiver, first) = RepairReceiver::start(&params(), &pkp, 2, &mut OsRng).unwrap();
    posted.extend(first);
    Repair {
        keys,
        pkp,
        helpers,
        receiver,
        posted,
    }
}

/// Who a message goes to: a sealed package to its recipient, a helper key to everyone else, the
/// participant's key to every helper.
fn recipients(message: &RepairMessage) -> Vec<PartyId> {
    match message {
        RepairMessage::HelperKey { from, .. } => [1, 2, 3]
            .map(pid)
            .into_iter()
            .filter(|p| p != from)
            .collect(),
        RepairMessage::ParticipantKey { .. } => vec![pid(2), pid(3)],
        RepairMessage::Delta(p) | RepairMessage::Sigma(p) => vec![p.to],
    }
}

/// Delivers one message at a time, picked at random among those sent and not yet delivered,
/// advancing its recipient right after: a helper may get a delta before the last helper key, the
/// receiver a sigma before a key. Returns the repaired share.
fn deliver_in_random_order(mut r: Repair) -> KeyPackage<Tr> {
    fn post(pool: &mut Vec<(PartyId, RepairMessage)>, messages: Vec<RepairMessage>) {
        for m in messages {
            for to in recipients(&m) {
                pool.push((to, m.clone()));
            }
        }
    }
    let mut pool = Vec::new();
    post(&mut pool, std::mem::take(&mut r.posted));
    while !pool.is_empty() {
        let i = usize::try_from(OsRng.next_u32()).unwrap() % pool.len();
        let (to, message) = pool.swap_remove(i);
        if to == pid(1) {
            assert!(r.receiver.absorb(&message).unwrap());
            r.receiver.advance().unwrap();
        } else {
            let helper = r.helpers.get_mut(&to).unwrap();
            assert!(helper.absorb(&message).unwrap());
            let out = helper.advance(&mut OsRng).unwrap();
            post(&mut pool, out);
        }
    }
    assert!(r.helpers.values().all(RepairHelper::is_done));
    assert_eq!(r.receiver.waiting().step, RepairStep::Done);
    r.receiver.into_key_package().unwrap()
}

/// The same repair through the round functions, for comparison.
fn round_api(
    keys: &BTreeMap<PartyId, KeyPackage<Tr>>,
    pkp: &PublicKeyPackage<Tr>,
) -> KeyPackage<Tr> {
    let p = params();
    let mut h1 = BTreeMap::new();
    let mut helper_keys = BTreeMap::new();
    for h in [pid(2), pid(3)] {
        let (state, key) = repair::helper_start(&p, h, &keys[&h], pkp, &mut OsRng).unwrap();
        h1.insert(h, state);
        helper_keys.insert(h, key);
    }
    let (participant, participant_key) = repair::participant_start::<Tr>(&p, &mut OsRng).unwrap();
    let mut h2 = BTreeMap::new();
    let mut deltas = Vec::new();
    for (h, state) in h1 {
        let (state, sealed) = state.deltas(&keys[&h], &helper_keys, &mut OsRng).unwrap();
        h2.insert(h, state);
        deltas.extend(sealed);
    }
    let sigmas: Vec<SealedPackage> = h2
        .into_iter()
        .map(|(h, state)| {
            let mine: Vec<_> = deltas.iter().filter(|d| d.to == h).cloned().collect();
            state.sigma(&mine, &participant_key, &mut OsRng).unwrap()
        })
        .collect();
    participant.finish(&helper_keys, &sigmas, pkp, 2).unwrap()
}

fn culprit<T: std::fmt::Debug>(result: Result<T>) -> (PartyId, String) {
    match result {
        Err(ProtocolError::Culprit { party, reason }) => (party, reason),
        other => panic!("expected a culprit, got {other:?}"),
    }
}

fn is_unexpected<T: std::fmt::Debug>(result: &Result<T>) -> bool {
    matches!(result, Err(ProtocolError::UnexpectedMessage { .. }))
}

fn helper_key(r: &Repair, h: u16) -> RepairMessage {
    RepairMessage::HelperKey {
        from: pid(h),
        key: r.helpers[&pid(h)].helper_key().to_vec(),
    }
}

fn participant_key(r: &Repair) -> RepairMessage {
    RepairMessage::ParticipantKey {
        from: pid(1),
        key: r.receiver.participant_key().to_vec(),
    }
}

/// Both helpers' keys to both helpers; returns every delta they sent.
fn exchange_keys(r: &mut Repair) -> Vec<SealedPackage> {
    let keys = [helper_key(r, 2), helper_key(r, 3)];
    let mut deltas = Vec::new();
    for helper in r.helpers.values_mut() {
        for key in &keys {
            helper.absorb(key).unwrap();
        }
        for m in helper.advance(&mut OsRng).unwrap() {
            match m {
                RepairMessage::Delta(d) => deltas.push(d),
                other => panic!("expected deltas, got {other:?}"),
            }
        }
    }
    deltas
}

/// Asserts what an engine waits for (its step and the missing parties), and its progress line.
fn assert_waiting(waiting: &RepairWaiting, step: RepairStep, parties: &[u16], line: &str) {
    let parties = parties.iter().copied().map(pid).collect();
    assert_eq!(waiting, &RepairWaiting { step, parties });
    assert_eq!(waiting.to_string(), line);
}

fn flip(bytes: &ByteBuf, at: usize) -> ByteBuf {
    let mut v = bytes.to_vec();
    v[at] ^= 1;
    ByteBuf::from(v)
}

#[test]
fn a_repair_in_any_order_gives_the_round_functions_result() {
    for _ in 0..4 {
        let r = started();
        let (keys, pkp) = (r.keys.clone(), r.pkp.clone());
        let repaired = deliver_in_random_order(r);
        assert_eq!(&repaired, &keys[&pid(1)], "the lost share, exactly");
        assert_eq!(
            pkp.verifying_shares().get(repaired.identifier()),
            Some(repaired.verifying_share())
        );
        assert_eq!(repaired, round_api(&keys, &pkp));
    }
}

#[test]
fn a_delta_before_the_last_helper_key_is_kept_for_its_step() {
    let mut r = started();
    // Helper 2 has every key and sends its delta; helper 3 gets it before helper 2's key.
    let key_3 = helper_key(&r, 3);
    let helper_2 = r.helpers.get_mut(&pid(2)).unwrap();
    helper_2.absorb(&key_3).unwrap();
    let out = helper_2.advance(&mut OsRng).unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].to(), Some(pid(3)));
    assert_eq!(helper_2.step(), RepairStep::Deltas);
    let key_2 = helper_key(&r, 2);
    let pk = participant_key(&r);
    let helper_3 = r.helpers.get_mut(&pid(3)).unwrap();
    assert!(helper_3.absorb(&out[0]).unwrap());
    assert!(helper_3.absorb(&pk).unwrap());
    assert!(helper_3.advance(&mut OsRng).unwrap().is_empty());
    assert_waiting(
        &helper_3.waiting(),
        RepairStep::HelperKeys,
        &[2],
        "helper keys from parties [2]",
    );
    // The last key: deltas and sigma in one advance.
    helper_3.absorb(&key_2).unwrap();
    let out = helper_3.advance(&mut OsRng).unwrap();
    assert!(
        matches!(&out[..], [RepairMessage::Delta(d), RepairMessage::Sigma(s)]
        if d.to == pid(2) && s.to == pid(1))
    );
    assert!(helper_3.is_done());
}

#[test]
fn waiting_names_the_missing_parties_at_each_step() {
    let mut r = started();
    assert_eq!(r.receiver.waiting().step, RepairStep::HelperKeys);
    assert_eq!(r.receiver.waiting().parties, vec![pid(2), pid(3)]);
    let key_2 = helper_key(&r, 2);
    assert_eq!(r.helpers[&pid(3)].waiting().parties, vec![pid(2)]);
    r.receiver.absorb(&key_2).unwrap();
    assert_eq!(r.receiver.waiting().parties, vec![pid(3)]);
    let deltas = exchange_keys(&mut r);
    let helper_2 = r.helpers.get_mut(&pid(2)).unwrap();
    assert_waiting(
        &helper_2.waiting(),
        RepairStep::Deltas,
        &[3],
        "deltas from parties [3]",
    );
    let to_2 = deltas.iter().find(|d| d.to == pid(2)).unwrap();
    helper_2
        .absorb(&RepairMessage::Delta(to_2.clone()))
        .unwrap();
    assert!(helper_2.advance(&mut OsRng).unwrap().is_empty());
    assert_waiting(
        &helper_2.waiting(),
        RepairStep::ParticipantKey,
        &[1],
        "the participant's HPKE key from parties [1]",
    );
    let key_3 = helper_key(&r, 3);
    r.receiver.absorb(&key_3).unwrap();
    assert_waiting(
        &r.receiver.waiting(),
        RepairStep::Sigmas,
        &[2, 3],
        "sigmas from parties [2, 3]",
    );
    assert!(!r.receiver.advance().unwrap(), "nothing to do yet");
    assert!(is_unexpected(&r.receiver.into_key_package()));
}

#[test]
fn the_same_message_twice_is_harmless() {
    let mut r = started();
    let key_3 = helper_key(&r, 3);
    let helper_2 = r.helpers.get_mut(&pid(2)).unwrap();
    assert!(helper_2.absorb(&key_3).unwrap());
    assert!(!helper_2.absorb(&key_3).unwrap(), "a replay");
    let own = helper_key(&r, 2);
    assert!(
        !r.helpers.get_mut(&pid(2)).unwrap().absorb(&own).unwrap(),
        "ours, known"
    );
    assert!(r.receiver.absorb(&key_3).unwrap());
    assert!(!r.receiver.absorb(&key_3).unwrap());
    let pk = participant_key(&r);
    assert!(!r.receiver.absorb(&pk).unwrap(), "ours, known");

    let deltas = exchange_keys(&mut r);
    let helper_2 = r.helpers.get_mut(&pid(2)).unwrap();
    let to_2 = RepairMessage::Delta(deltas.iter().find(|d| d.to == pid(2)).unwrap().clone());
    assert!(helper_2.absorb(&to_2).unwrap());
    assert!(!helper_2.absorb(&to_2).unwrap());
    assert!(helper_2.absorb(&pk).unwrap());
    assert!(!helper_2.absorb(&pk).unwrap());
    let sigma = helper_2.advance(&mut OsRng).unwrap().pop().unwrap();
    assert!(
        !helper_2.absorb(&to_2).unwrap(),
        "after the step, still harmless"
    );
    assert!(
        helper_2.advance(&mut OsRng).unwrap().is_empty(),
        "one sigma only"
    );
    assert!(r.receiver.absorb(&sigma).unwrap());
    assert!(!r.receiver.absorb(&sigma).unwrap());
}

#[test]
fn a_second_different_message_names_its_sender() {
    let mut r = started();
    // Helper 3 started twice: two keys, each signed by its share.
    let (_, again) =
        RepairHelper::start(&params(), pid(3), &r.keys[&pid(3)], &r.pkp, &mut OsRng).unwrap();
    let key_3 = helper_key(&r, 3);
    let helper_2 = r.helpers.get_mut(&pid(2)).unwrap();
    helper_2.absorb(&key_3).unwrap();
    let (party, reason) = culprit(helper_2.absorb(&again[0]));
    assert_eq!(party, pid(3));
    assert!(reason.contains("two different versions"), "{reason}");
    assert!(!helper_2.absorb(&key_3).unwrap(), "the first one stays");
    r.receiver.absorb(&key_3).unwrap();
    assert_eq!(culprit(r.receiver.absorb(&again[0])).0, pid(3));
    assert!(!r.receiver.absorb(&key_3).unwrap(), "the first one stays");

    // Two participant keys; two sigmas; two deltas.
    let pk = participant_key(&r);
    let other_pk = RepairMessage::ParticipantKey {
        from: pid(1),
        key: hpke::generate_keypair(&mut OsRng).1,
    };
    let deltas = exchange_keys(&mut r);
    let helper_2 = r.helpers.get_mut(&pid(2)).unwrap();
    helper_2.absorb(&pk).unwrap();
    assert_eq!(culprit(helper_2.absorb(&other_pk)).0, pid(1));
    let to_2 = deltas.iter().find(|d| d.to == pid(2)).unwrap().clone();
    helper_2
        .absorb(&RepairMessage::Delta(to_2.clone()))
        .unwrap();
    let mut changed = to_2;
    changed.ciphertext = flip(&changed.ciphertext, 0);
    assert_eq!(
        culprit(helper_2.absorb(&RepairMessage::Delta(changed))).0,
        pid(3)
    );
    let sigma = helper_2.advance(&mut OsRng).unwrap().pop().unwrap();
    let RepairMessage::Sigma(mut changed) = sigma.clone() else {
        panic!("expected a sigma, got {sigma:?}");
    };
    changed.enc = flip(&changed.enc, 0);
    r.receiver.absorb(&sigma).unwrap();
    assert_eq!(
        culprit(r.receiver.absorb(&RepairMessage::Sigma(changed))).0,
        pid(2)
    );
}

#[test]
fn strangers_misaddressed_and_substituted_messages_are_refused_and_count_for_nothing() {
    let mut r = started();
    let sealed = |from: u16, to: u16| SealedPackage {
        from: pid(from),
        to: pid(to),
        enc: ByteBuf::from(vec![0; 32]),
        ciphertext: ByteBuf::from(vec![0; 48]),
    };
    let stranger_key = RepairMessage::HelperKey {
        from: pid(9),
        key: vec![0; 96],
    };
    let participant_as_helper = RepairMessage::HelperKey {
        from: pid(1),
        key: vec![0; 96],
    };
    let helper_2 = r.helpers.get_mut(&pid(2)).unwrap();
    for bad in [
        stranger_key.clone(),
        participant_as_helper.clone(),
        RepairMessage::Delta(sealed(9, 2)),
        RepairMessage::Delta(sealed(3, 1)),
        RepairMessage::Delta(sealed(2, 2)),
        RepairMessage::Sigma(sealed(3, 1)),
        RepairMessage::ParticipantKey {
            from: pid(3),
            key: vec![0; 32],
        },
        RepairMessage::ParticipantKey {
            from: pid(1),
            key: vec![0; 31],
        },
    ] {
        assert!(is_unexpected(&helper_2.absorb(&bad)), "{bad:?}");
    }
    for bad in [
        stranger_key,
        participant_as_helper,
        RepairMessage::Sigma(sealed(9, 1)),
        RepairMessage::Sigma(sealed(3, 2)),
        RepairMessage::Delta(sealed(3, 2)),
        RepairMessage::ParticipantKey {
            from: pid(2),
            key: vec![0; 32],
        },
    ] {
        assert!(is_unexpected(&r.receiver.absorb(&bad)), "{bad:?}");
    }

    // Helper 3's key with the coordinator's HPKE key in it: refused, naming helper 3, and not
    // kept: the genuine key still gets in.
    let genuine = r.helpers[&pid(3)].helper_key().to_vec();
    let mut substituted = hpke::generate_keypair(&mut OsRng).1;
    substituted.extend_from_slice(&genuine[hpke::PUBLIC_KEY_LEN..]);
    let substituted = RepairMessage::HelperKey {
        from: pid(3),
        key: substituted,
    };
    let helper_2 = r.helpers.get_mut(&pid(2)).unwrap();
    let (party, reason) = culprit(helper_2.absorb(&substituted));
    assert_eq!(party, pid(3));
    assert!(reason.contains("not vouched for"), "{reason}");
    assert_eq!(culprit(r.receiver.absorb(&substituted)).0, pid(3));
    // Our own key altered, and the receiver's.
    let mut own = genuine.clone();
    own[0] ^= 1;
    let own = RepairMessage::HelperKey {
        from: pid(3),
        key: own,
    };
    assert!(matches!(
        r.helpers.get_mut(&pid(3)).unwrap().absorb(&own),
        Err(ProtocolError::Disagreement { .. })
    ));
    let other_pk = RepairMessage::ParticipantKey {
        from: pid(1),
        key: vec![7; 32],
    };
    assert!(matches!(
        r.receiver.absorb(&other_pk),
        Err(ProtocolError::Disagreement { .. })
    ));
    assert_eq!(
        r.helpers[&pid(2)].waiting().parties,
        vec![pid(3)],
        "nothing counted"
    );
    assert_eq!(r.receiver.waiting().parties, vec![pid(2), pid(3)]);
    let genuine = RepairMessage::HelperKey {
        from: pid(3),
        key: genuine,
    };
    assert!(
        r.helpers
            .get_mut(&pid(2))
            .unwrap()
            .absorb(&genuine)
            .unwrap()
    );
    assert!(r.receiver.absorb(&genuine).unwrap());
}

#[test]
fn a_failed_step_ends_the_repair_for_good() {
    // A delta altered in transit: helper 2's sigma step names helper 3, and stays failed.
    let mut r = started();
    let deltas = exchange_keys(&mut r);
    let pk = participant_key(&r);
    let mut to_2 = deltas.iter().find(|d| d.to == pid(2)).unwrap().clone();
    to_2.ciphertext = flip(&to_2.ciphertext, 0);
    let helper_2 = r.helpers.get_mut(&pid(2)).unwrap();
    helper_2.absorb(&RepairMessage::Delta(to_2)).unwrap();
    helper_2.absorb(&pk).unwrap();
    let (party, reason) = culprit(helper_2.advance(&mut OsRng));
    assert_eq!(party, pid(3));
    assert!(reason.contains("not signed by its share"), "{reason}");
    assert!(matches!(
        helper_2.advance(&mut OsRng),
        Err(ProtocolError::Params { reason }) if reason.contains("already failed")
    ));
    assert_eq!(helper_2.waiting().step, RepairStep::Failed);
    assert!(!helper_2.is_done());

    // A sigma altered in transit: the receiver names its sender, and stays failed.
    let mut r = started();
    let deltas = exchange_keys(&mut r);
    let pk = participant_key(&r);
    let mut sigmas = Vec::new();
    for (h, helper) in &mut r.helpers {
        let mine = deltas.iter().find(|d| d.to == *h).unwrap().clone();
        helper.absorb(&RepairMessage::Delta(mine)).unwrap();
        helper.absorb(&pk).unwrap();
        sigmas.extend(helper.advance(&mut OsRng).unwrap());
    }
    let keys = [helper_key(&r, 2), helper_key(&r, 3)];
    for key in &keys {
        r.receiver.absorb(key).unwrap();
    }
    for sigma in &mut sigmas {
        if let RepairMessage::Sigma(s) = sigma
            && s.from == pid(3)
        {
            s.ciphertext = flip(&s.ciphertext, 0);
        }
        r.receiver.absorb(sigma).unwrap();
    }
    assert_eq!(culprit(r.receiver.advance()).0, pid(3));
    assert!(r.receiver.advance().is_err());
    assert_eq!(r.receiver.waiting().step, RepairStep::Failed);
    assert!(r.receiver.into_key_package().is_err());
}

#[test]
fn a_bad_start_is_refused_and_secrets_stay_out_of_debug() {
    let (keys, pkp) = dealer_keys();
    // Not a helper; a threshold unlike the package's.
    assert!(matches!(
        RepairHelper::start(&params(), pid(1), &keys[&pid(1)], &pkp, &mut OsRng),
        Err(ProtocolError::Params { .. })
    ));
    assert!(matches!(
        RepairReceiver::start(&params(), &pkp, 3, &mut OsRng),
        Err(ProtocolError::Params { .. })
    ));
    let r = started();
    for helper in r.helpers.values() {
        let debug = format!("{helper:?}");
        assert!(debug.contains("<redacted>"), "{debug}");
        assert_eq!(helper.params().helpers, vec![pid(2), pid(3)], "sorted");
    }
    assert!(format!("{:?}", r.receiver).contains("<redacted>"));
}
