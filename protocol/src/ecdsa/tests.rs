//! Every ceremony in memory, through the same state machines the binaries use.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use k256_verify::ecdsa::signature::hazmat::PrehashVerifier;
use k256_verify::ecdsa::{RecoveryId, Signature, VerifyingKey};
use rand_core::OsRng;

use super::EcdsaKey;
use super::dkg::{self, EcdsaDkgOutput, EcdsaDkgParams, EcdsaRound, RoundOutput};
use super::sign::{self, EcdsaSignMessage};
use crate::error::ProtocolError;
use crate::id::PartyId;
use crate::wire::WalletId;

fn parties(n: u16) -> Vec<PartyId> {
    (1..=n).map(|i| PartyId::new(i).unwrap()).collect()
}

/// Runs the DKG among `n` parties, letting `tamper` change what the relay delivers in round 1–3.
fn run_dkg(
    threshold: u16,
    n: u16,
    tamper: impl Fn(u8, PartyId, &mut Vec<EcdsaRound>),
) -> Result<Vec<EcdsaDkgOutput>, ProtocolError> {
    let params = EcdsaDkgParams {
        wallet_id: WalletId([7; 16]),
        threshold,
        parties: parties(n),
    };
    let (states, hellos): (Vec<_>, Vec<_>) = parties(n)
        .into_iter()
        .map(|p| dkg::start(params.clone(), p, &mut OsRng).unwrap())
        .unzip();
    run_rounds(states, &hellos, tamper)
}

/// Runs a started ceremony (a DKG or a refresh) to its end, `tamper` changing what the relay
/// delivers in round 1–3.
fn run_rounds(
    mut states: Vec<dkg::EcdsaDkg>,
    hellos: &[dkg::EcdsaHello],
    tamper: impl Fn(u8, PartyId, &mut Vec<EcdsaRound>),
) -> Result<Vec<EcdsaDkgOutput>, ProtocolError> {
    let n = u16::try_from(states.len()).unwrap();
    let mut round: Vec<EcdsaRound> = states
        .iter_mut()
        .map(|s| s.handle_hellos(hellos, &mut OsRng))
        .collect::<Result<_, _>>()?;
    let mut confirmations = Vec::new();
    for r in 1..=3u8 {
        let mut next = Vec::new();
        for (state, party) in states.iter_mut().zip(parties(n)) {
            let mut delivered = round.clone();
            tamper(r, party, &mut delivered);
            match state.handle_round(&delivered, &mut OsRng)? {
                RoundOutput::Next(m) => next.push(m),
                RoundOutput::Confirm(c) => confirmations.push(c),
            }
        }
        round = next;
    }
    states
        .into_iter()
        .map(|s| s.handle_confirmations(&confirmations))
        .collect()
}

pub(crate) fn sign_between(
    keys: &[&EcdsaKey],
    hash: [u8; 32],
) -> Result<super::sign::RecoverableSignature, ProtocolError> {
    let signers: Vec<PartyId> = keys.iter().map(|k| k.party()).collect();
    let id = sign::sign_id(&WalletId([7; 16]), &signers, &[9; 32]);
    let (mut sessions, mut msgs): (Vec<_>, Vec<_>) = keys
        .iter()
        .map(|k| sign::start(k, &signers, id.clone(), hash).unwrap())
        .unzip();
    let others = |all: &[EcdsaSignMessage], me: PartyId| {
        all.iter()
            .filter(|m| m.from != me)
            .cloned()
            .collect::<Vec<_>>()
    };
    msgs = sessions
        .iter_mut()
        .zip(keys)
        .map(|(s, k)| s.round2(k, &others(&msgs, k.party())))
        .collect::<Result<_, _>>()?;
    msgs = sessions
        .iter_mut()
        .zip(keys)
        .map(|(s, k)| s.round3(k, &others(&msgs, k.party())))
        .collect::<Result<_, _>>()?;
    let sigs: Vec<_> = sessions
        .into_iter()
        .zip(keys)
        .map(|(s, k)| s.finish(k, &others(&msgs, k.party())))
        .collect::<Result<_, _>>()?;
    assert!(
        sigs.windows(2).all(|w| w[0] == w[1]),
        "every signer assembles the same signature"
    );
    Ok(sigs[0])
}

pub(crate) fn recover(sig: &super::sign::RecoverableSignature, hash: &[u8; 32]) -> Vec<u8> {
    let signature = Signature::from_scalars(sig.r, sig.s).unwrap();
    assert!(signature.normalize_s().is_none(), "low-S");
    let id = RecoveryId::new(sig.y_odd, false);
    let key = VerifyingKey::recover_from_prehash(hash, &signature, id).unwrap();
    key.verify_prehash(hash, &signature).unwrap();
    key.to_encoded_point(false).as_bytes().to_vec()
}

#[test]
fn a_2_of_3_key_signs_with_every_pair_and_recovers_to_its_public_key() {
    let outputs = run_dkg(2, 3, |_, _, _| {}).unwrap();
    let public = outputs[0].public_key.clone();
    assert_eq!(public.len(), 65);
    assert!(
        outputs
            .iter()
            .all(|o| o.public_key == public && o.key.public_key() == public)
    );
    assert!(
        outputs
            .windows(2)
            .all(|w| w[0].public_shares == w[1].public_shares)
    );
    for (a, b) in [(0, 1), (0, 2), (1, 2)] {
        let hash = [a as u8 * 3 + b as u8; 32];
        let sig = sign_between(&[&outputs[a].key, &outputs[b].key], hash).unwrap();
        assert_eq!(recover(&sig, &hash), public, "pair {a},{b}");
    }
}

#[test]
fn a_sealed_key_opens_to_the_same_share() {
    let outputs = run_dkg(2, 3, |_, _, _| {}).unwrap();
    let bytes = outputs[1].key.to_secret_bytes().unwrap();
    let again = EcdsaKey::from_secret_bytes(&bytes).unwrap();
    assert!(!format!("{again:?}").contains(&hex::encode(&bytes[..8])));
    let hash = [1; 32];
    let sig = sign_between(&[&outputs[0].key, &again], hash).unwrap();
    assert_eq!(recover(&sig, &hash), outputs[0].public_key);
    let mut long = bytes.to_vec();
    long.push(0);
    assert!(EcdsaKey::from_secret_bytes(&long).is_err());
}

#[test]
fn a_relay_that_alters_a_sealed_part_is_caught_and_named() {
    for round in 1..=3u8 {
        let err = run_dkg(2, 3, |r, to, msgs| {
            if r == round && to == PartyId::PROVIDER {
                let from_device = msgs.iter_mut().find(|m| m.from == PartyId::DEVICE).unwrap();
                for s in &mut from_device.sealed {
                    s.ciphertext[0] ^= 1;
                }
            }
        })
        .unwrap_err();
        assert!(
            matches!(err, ProtocolError::Culprit { party, .. } if party == PartyId::DEVICE),
            "{round}: {err}"
        );
    }
}

#[test]
fn a_relay_that_shows_parties_different_broadcasts_is_caught() {
    // Round 2's broadcast of party 3 swapped for its round-2 broadcast in another ceremony would
    // not parse; here the relay drops party 3's sealed parts to party 1 and re-sends party 2's.
    let err = run_dkg(2, 3, |r, to, msgs| {
        if r == 2 && to == PartyId::DEVICE {
            let two = msgs
                .iter()
                .find(|m| m.from == PartyId::PROVIDER)
                .unwrap()
                .clone();
            msgs.push(two);
        }
    })
    .unwrap_err();
    assert!(
        matches!(
            err,
            ProtocolError::Culprit { .. } | ProtocolError::Params { .. }
        ),
        "{err}"
    );
}

#[test]
fn a_broadcast_changed_for_one_party_fails_the_round_or_the_confirmation() {
    let err = run_dkg(2, 3, |r, to, msgs| {
        if r == 2 && to == PartyId::RECOVERY {
            let m = msgs.iter_mut().find(|m| m.from == PartyId::DEVICE).unwrap();
            let last = m.broadcast.len() - 1;
            m.broadcast[last] ^= 1;
        }
    })
    .unwrap_err();
    assert!(
        matches!(
            err,
            ProtocolError::Culprit { .. } | ProtocolError::Disagreement { .. }
        ),
        "{err}"
    );
}

#[test]
fn signing_refuses_wrong_signer_sets_and_replayed_rounds() {
    let outputs = run_dkg(2, 3, |_, _, _| {}).unwrap();
    let key = &outputs[0].key;
    let three = parties(3);
    assert!(matches!(
        sign::start(key, &three, vec![1], [0; 32]),
        Err(ProtocolError::Params { .. })
    ));
    let not_me = [PartyId::PROVIDER, PartyId::RECOVERY];
    assert!(matches!(
        sign::start(key, &not_me, vec![1], [0; 32]),
        Err(ProtocolError::Params { .. })
    ));
    let pair = [PartyId::DEVICE, PartyId::PROVIDER];
    let (mut a, m1a) = sign::start(&outputs[0].key, &pair, vec![1], [5; 32]).unwrap();
    let (mut b, m1b) = sign::start(&outputs[1].key, &pair, vec![1], [5; 32]).unwrap();
    // Our own message back, a round-2 step twice, the wrong key.
    assert!(
        a.round2(&outputs[0].key, std::slice::from_ref(&m1a))
            .is_err()
    );
    assert!(
        a.round2(&outputs[1].key, std::slice::from_ref(&m1b))
            .is_err()
    );
    let m2b = b.round2(&outputs[1].key, &[m1a]).unwrap();
    let _ = m2b;
    let (mut fresh, _) = sign::start(&outputs[0].key, &pair, vec![1], [5; 32]).unwrap();
    fresh
        .round2(&outputs[0].key, std::slice::from_ref(&m1b))
        .unwrap();
    assert!(matches!(
        fresh.round2(&outputs[0].key, &[m1b]),
        Err(ProtocolError::UnexpectedMessage { .. })
    ));
}

#[test]
fn dkg_parameters_are_checked() {
    let bad = |threshold, ps: Vec<PartyId>| EcdsaDkgParams {
        wallet_id: WalletId([1; 16]),
        threshold,
        parties: ps,
    };
    assert!(dkg::start(bad(1, parties(3)), PartyId::DEVICE, &mut OsRng).is_err());
    assert!(dkg::start(bad(4, parties(3)), PartyId::DEVICE, &mut OsRng).is_err());
    assert!(
        dkg::start(
            bad(2, vec![PartyId::DEVICE, PartyId::RECOVERY]),
            PartyId::DEVICE,
            &mut OsRng
        )
        .is_err()
    );
    assert!(
        dkg::start(
            bad(2, vec![PartyId::PROVIDER, PartyId::RECOVERY]),
            PartyId::DEVICE,
            &mut OsRng
        )
        .is_err()
    );
}

#[test]
fn a_relay_that_swaps_a_partys_own_hello_or_message_is_refused_by_it() {
    // The relay hands everyone a hello list with its own key in party 2's place, to open and
    // re-seal what party 3 seals to party 2: party 2 sees its key is not its own.
    let params = EcdsaDkgParams {
        wallet_id: WalletId([7; 16]),
        threshold: 2,
        parties: parties(3),
    };
    let (mut states, mut hellos): (Vec<_>, Vec<_>) = parties(3)
        .into_iter()
        .map(|p| dkg::start(params.clone(), p, &mut OsRng).unwrap())
        .unzip();
    let (_, attacker) = dkg::start(params.clone(), PartyId::PROVIDER, &mut OsRng).unwrap();
    hellos[1] = attacker;
    let err = states[1].handle_hellos(&hellos, &mut OsRng).unwrap_err();
    assert!(matches!(err, ProtocolError::Disagreement { .. }), "{err}");
    // A party's own broadcast altered in the relayed round: refused by that party.
    for round in 2..=3u8 {
        let err = run_dkg(2, 3, |r, to, msgs| {
            if r == round && to == PartyId::PROVIDER {
                let own = msgs
                    .iter_mut()
                    .find(|m| m.from == PartyId::PROVIDER)
                    .unwrap();
                own.broadcast[0] ^= 1;
            }
        })
        .unwrap_err();
        assert!(
            matches!(err, ProtocolError::Disagreement { .. }),
            "{round}: {err}"
        );
    }
}

/// A refresh among every party of `outputs` (from `epoch`).
fn refresh(
    outputs: Vec<EcdsaDkgOutput>,
    epoch: u64,
    tamper: impl Fn(u8, PartyId, &mut Vec<EcdsaRound>),
) -> Result<Vec<EcdsaDkgOutput>, ProtocolError> {
    let n = u16::try_from(outputs.len()).unwrap();
    let params = EcdsaDkgParams {
        wallet_id: WalletId([7; 16]),
        threshold: outputs[0].key.threshold(),
        parties: parties(n),
    };
    let public = super::EcdsaPublic::of(&outputs[0]);
    let (states, hellos): (Vec<_>, Vec<_>) = outputs
        .into_iter()
        .map(|o| {
            dkg::start_refresh(
                params.clone(),
                o.key,
                public.clone(),
                crate::id::Epoch(epoch),
                &mut OsRng,
            )
            .unwrap()
        })
        .unzip();
    run_rounds(states, &hellos, tamper)
}

#[test]
fn a_refresh_keeps_the_key_and_retires_every_old_share() {
    let old = run_dkg(2, 3, |_, _, _| {}).unwrap();
    let old_public = super::EcdsaPublic::of(&old[0]);
    // Kept apart to try against the new ones (a thief's copy of an old share).
    let stolen = EcdsaKey::from_secret_bytes(&old[0].key.to_secret_bytes().unwrap()).unwrap();
    let new = refresh(old, 0, |_, _, _| {}).unwrap();
    let new_public = super::EcdsaPublic::of(&new[0]);
    assert_eq!(
        new_public.public_key, old_public.public_key,
        "the address stays"
    );
    for (party, share) in &new_public.public_shares {
        assert_ne!(
            &old_public.public_shares[party], share,
            "party {party}'s share moved"
        );
    }
    for output in &new {
        assert_eq!(super::EcdsaPublic::of(output), new_public);
        assert!(new_public.holds(&output.key));
    }
    let hash = [0x42; 32];
    for pair in [[0, 1], [0, 2], [1, 2]] {
        let sig = sign_between(&[&new[pair[0]].key, &new[pair[1]].key], hash).unwrap();
        assert_eq!(recover(&sig, &hash), new_public.public_key.to_vec());
    }
    // An old share signs with no new one.
    assert!(sign_between(&[&stolen, &new[1].key], hash).is_err());
    // And the refreshed wallet refreshes again.
    let again = refresh(new, 1, |_, _, _| {}).unwrap();
    assert_eq!(
        super::EcdsaPublic::of(&again[0]).public_key,
        old_public.public_key
    );
}

#[test]
fn a_refresh_whose_messages_are_altered_fails() {
    let old = run_dkg(2, 3, |_, _, _| {}).unwrap();
    // A relay that flips a byte of party 2's round-2 broadcast (its commitment) for party 1.
    let altered = refresh(old, 0, |round, to, delivered| {
        if round == 2 && to == PartyId::new(1).unwrap() {
            let last = delivered[1].broadcast.len() - 1;
            delivered[1].broadcast[last] ^= 1;
        }
    });
    assert!(altered.is_err());
}

#[test]
fn a_refresh_is_refused_a_share_of_another_key() {
    let a = run_dkg(2, 3, |_, _, _| {}).unwrap();
    let b = run_dkg(2, 3, |_, _, _| {}).unwrap();
    let params = EcdsaDkgParams {
        wallet_id: WalletId([7; 16]),
        threshold: 2,
        parties: parties(3),
    };
    let key = a.into_iter().next().unwrap().key;
    let other = super::EcdsaPublic::of(&b[0]);
    assert!(matches!(
        dkg::start_refresh(params, key, other, crate::id::Epoch(0), &mut OsRng),
        Err(ProtocolError::Params { .. })
    ));
}

#[test]
fn a_lost_share_is_repaired_hollow_and_the_refresh_makes_it_sign() {
    let mut outputs = run_dkg(2, 3, |_, _, _| {}).unwrap();
    let public = super::EcdsaPublic::of(&outputs[0]);
    let lost = outputs.remove(0); // party 1's phone is gone
    let id = super::repair::repair_id(&WalletId([7; 16]), crate::id::Epoch(0), b"new phone");
    let helpers = [PartyId::new(2).unwrap(), PartyId::new(3).unwrap()];
    let target = PartyId::new(1).unwrap();
    let terms: Vec<Vec<u8>> = outputs
        .iter()
        .map(|o| super::repair::term(&o.key, &helpers, target, &id).unwrap())
        .collect();
    let hollow = super::repair::assemble(&public, 2, target, &terms).unwrap();
    assert_eq!(
        hollow.public_share(),
        lost.key.public_share(),
        "the same Shamir point"
    );
    // Hollow: it cannot sign yet.
    let signers = [target, PartyId::new(2).unwrap()];
    let sid = sign::sign_id(&WalletId([7; 16]), &signers, &[9; 32]);
    assert!(sign::start(&hollow, &signers, sid, [1; 32]).is_err());
    // A term of another repair id, or a missing one, makes no share.
    let other = super::repair::repair_id(&WalletId([7; 16]), crate::id::Epoch(0), b"thief");
    let wrong = vec![
        terms[0].clone(),
        super::repair::term(&outputs[1].key, &helpers, target, &other).unwrap(),
    ];
    assert!(super::repair::assemble(&public, 2, target, &wrong).is_err());
    assert!(super::repair::assemble(&public, 2, target, &terms[..1]).is_err());
    // The recovery's complete refresh gives every party new shares of the same key.
    let mut all = vec![EcdsaDkgOutput {
        key: hollow,
        public_key: public.public_key.to_vec(),
        public_shares: public
            .public_shares
            .iter()
            .map(|(p, s)| (*p, s.to_vec()))
            .collect(),
        transcript_hash: [0; 32],
    }];
    all.extend(outputs);
    let refreshed = refresh(all, 0, |_, _, _| {}).unwrap();
    let hash = [0x17; 32];
    let sig = sign_between(&[&refreshed[0].key, &refreshed[2].key], hash).unwrap();
    assert_eq!(recover(&sig, &hash), public.public_key.to_vec());
    // The lost phone's share signs with nobody now.
    assert!(sign_between(&[&lost.key, &refreshed[1].key], hash).is_err());
}
