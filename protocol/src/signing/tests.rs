#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use rand_core::OsRng;

use super::*;
use crate::id::pid;
use crate::sign::Precommitment;
use crate::test_support::{Tr, dealer_keys as keys};

fn messages(n: u8) -> Vec<Vec<u8>> {
    (0..n).map(|i| vec![i; 32]).collect()
}

fn start(
    keys: &BTreeMap<PartyId, KeyPackage<Tr>>,
    me: u16,
    signers: &[PartyId],
    n: u8,
) -> (Signing<Tr>, Vec<SignMessage>) {
    let locals = vec![(pid(me), keys[&pid(me)].clone())];
    Signing::start(locals, signers, messages(n), &mut OsRng).unwrap()
}

fn verify(pkp: &PublicKeyPackage<Tr>, n: u8, signatures: &[Vec<u8>]) {
    assert_eq!(signatures.len(), usize::from(n));
    for (message, signature) in messages(n).iter().zip(signatures) {
        let signature = frost_core::Signature::<Tr>::deserialize(signature).unwrap();
        pkp.verifying_key().verify(message, &signature).unwrap();
    }
}

/// Party 1 coordinating one message with party 2: the device holds the cosigner's commitments
/// and has built the package and signed it; the cosigner has only committed.
struct Pair {
    keys: BTreeMap<PartyId, KeyPackage<Tr>>,
    pkp: PublicKeyPackage<Tr>,
    device: Signing<Tr>,
    cosigner: Signing<Tr>,
    theirs: Vec<SignMessage>,
}

fn coordinated() -> Pair {
    let (keys, pkp) = keys();
    let signers = [pid(1), pid(2)];
    let (mut device, _) = start(&keys, 1, &signers, 1);
    let (cosigner, theirs) = start(&keys, 2, &signers, 1);
    assert!(device.signatures(&pkp).is_err());
    device.absorb(&theirs[0]).unwrap();
    device.advance().unwrap();
    Pair {
        keys,
        pkp,
        device,
        cosigner,
        theirs,
    }
}

#[test]
fn a_coordinator_and_a_signer_sign_every_message_in_any_order() {
    let (keys, pkp) = keys();
    let signers = [pid(1), pid(3)];
    let (mut device, ours) = start(&keys, 1, &signers, 3);
    let (mut cosigner, theirs) = start(&keys, 3, &signers, 3);
    assert_eq!(
        device.waiting(),
        SignWaiting {
            step: SignStep::Commitments,
            parties: vec![pid(3)]
        }
    );
    // The device coordinates: the cosigner's commitments, then (twice: no news) packages.
    assert!(device.absorb(&theirs[0]).unwrap());
    assert!(!device.absorb(&theirs[0]).unwrap());
    let our_shares = device.advance().unwrap();
    assert_eq!(device.waiting().parties, vec![pid(3)]);
    assert!(
        device.advance().unwrap().is_empty(),
        "the sessions signed once"
    );
    // The cosigner signs the packages it is given, without anyone's commitments but its own.
    let packages = SignMessage::Packages(device.packages().unwrap().to_vec());
    assert!(cosigner.absorb(&packages).unwrap());
    let cosigner_shares = cosigner.advance().unwrap();
    // Shares in any order: the cosigner gets ours too and can aggregate as well.
    device.absorb(&cosigner_shares[0]).unwrap();
    cosigner.absorb(&our_shares[0]).unwrap();
    assert_eq!(device.waiting().step, SignStep::Done);
    verify(&pkp, 3, &device.signatures(&pkp).unwrap());
    verify(&pkp, 3, &cosigner.signatures(&pkp).unwrap());
    drop(ours);
}

#[test]
fn one_holder_of_several_parties_and_a_third_signer() {
    let (keys, pkp) = keys();
    let signers = [pid(1), pid(2), pid(3)];
    let locals = vec![
        (pid(1), keys[&pid(1)].clone()),
        (pid(2), keys[&pid(2)].clone()),
    ];
    let (mut two, ours) = Signing::start(locals, &signers, messages(1), &mut OsRng).unwrap();
    assert_eq!(ours.len(), 2);
    let (mut third, theirs) = start(&keys, 3, &signers, 1);
    for m in &ours {
        third.absorb(m).unwrap();
    }
    two.absorb(&theirs[0]).unwrap();
    // Both build the same packages from the same commitments.
    let a = two.advance().unwrap();
    let b = third.advance().unwrap();
    assert_eq!(two.packages(), third.packages());
    for m in &a {
        third.absorb(m).unwrap();
    }
    two.absorb(&b[0]).unwrap();
    verify(&pkp, 1, &two.signatures(&pkp).unwrap());
    verify(&pkp, 1, &third.signatures(&pkp).unwrap());
}

#[test]
fn equivocation_wrong_counts_and_strangers_are_refused() {
    let (keys, _) = keys();
    let signers = [pid(1), pid(2)];
    let (mut device, ours) = start(&keys, 1, &signers, 2);
    let (_, first) = start(&keys, 2, &signers, 2);
    let (_, second) = start(&keys, 2, &signers, 2);
    device.absorb(&first[0]).unwrap();
    assert!(matches!(
        device.absorb(&second[0]),
        Err(ProtocolError::Culprit { party, .. }) if party == pid(2)
    ));
    // Our own party, a non-signer, the wrong number of commitments.
    let own = ours[0].clone();
    let stranger = SignMessage::Commitments {
        party: pid(3),
        commitments: vec![vec![1]; 2],
    };
    let short = SignMessage::Commitments {
        party: pid(2),
        commitments: vec![vec![1]],
    };
    for bad in [own, stranger, short] {
        assert!(matches!(
            device.absorb(&bad),
            Err(ProtocolError::UnexpectedMessage { .. })
        ));
    }
    // Two different sets of packages.
    let (mut signer, _) = start(&keys, 2, &signers, 2);
    signer
        .absorb(&SignMessage::Packages(vec![vec![1], vec![2]]))
        .unwrap();
    assert!(matches!(
        signer.absorb(&SignMessage::Packages(vec![vec![1], vec![3]])),
        Err(ProtocolError::Disagreement { .. })
    ));
}

#[test]
fn a_package_for_another_message_uses_up_the_nonces_and_signs_nothing() {
    let Pair {
        keys,
        mut cosigner,
        theirs,
        ..
    } = coordinated();
    let signers = [pid(1), pid(2)];
    // A coordinator that swapped the message: the cosigner's session refuses it, and is gone.
    let (_, forged_for) = start(&keys, 1, &signers, 1);
    let SignMessage::Commitments { commitments, .. } = &forged_for[0] else {
        panic!()
    };
    let SignMessage::Commitments {
        commitments: cosigner_commitments,
        ..
    } = &theirs[0]
    else {
        panic!()
    };
    let forged = sign::signing_package::<Tr>(
        b"pay the attacker",
        &BTreeMap::from([
            (pid(1), commitments[0].clone()),
            (pid(2), cosigner_commitments[0].clone()),
        ]),
    )
    .unwrap();
    cosigner
        .absorb(&SignMessage::Packages(vec![forged]))
        .unwrap();
    assert!(matches!(
        cosigner.advance(),
        Err(ProtocolError::SessionMismatch { .. })
    ));
    // The failure is final: said again, never a silent stall.
    assert!(matches!(
        cosigner.advance(),
        Err(ProtocolError::SessionMismatch { .. })
    ));
    assert_eq!(cosigner.waiting().step, SignStep::Shares);
}

#[test]
fn signatures_wait_for_every_share_and_name_a_bad_one() {
    let Pair {
        pkp,
        mut device,
        mut cosigner,
        ..
    } = coordinated();
    assert!(matches!(
        device.signatures(&pkp),
        Err(ProtocolError::UnexpectedMessage { .. })
    ));
    cosigner
        .absorb(&SignMessage::Packages(device.packages().unwrap().to_vec()))
        .unwrap();
    let mut shares = cosigner.advance().unwrap();
    let SignMessage::Shares { shares: s, .. } = &mut shares[0] else {
        panic!()
    };
    s[0][31] ^= 1;
    device.absorb(&shares[0]).unwrap();
    assert!(matches!(
        device.signatures(&pkp),
        Err(ProtocolError::Culprit { party, .. }) if party == pid(2)
    ));
}

#[test]
fn a_commitment_that_does_not_decode_is_refused_on_arrival_and_changes_nothing() {
    let (keys, pkp) = keys();
    let signers = [pid(1), pid(2)];
    let (mut device, _) = start(&keys, 1, &signers, 2);
    let (mut cosigner, theirs) = start(&keys, 2, &signers, 2);
    let SignMessage::Commitments { commitments, .. } = &theirs[0] else {
        panic!()
    };
    let mut altered = commitments.clone();
    altered[1].push(0); // trailing byte: not canonical
    let mut truncated = commitments.clone();
    truncated[0].pop();
    for bad in [altered, truncated] {
        let bad = SignMessage::Commitments {
            party: pid(2),
            commitments: bad,
        };
        assert!(matches!(
            device.absorb(&bad),
            Err(ProtocolError::Culprit { party, .. }) if party == pid(2)
        ));
        assert!(device.commitments(pid(2)).is_none());
        assert_eq!(device.waiting().step, SignStep::Commitments);
    }
    // The signer's good set is still taken, and the signature completes.
    assert!(device.absorb(&theirs[0]).unwrap());
    let ours = device.advance().unwrap();
    cosigner
        .absorb(&SignMessage::Packages(device.packages().unwrap().to_vec()))
        .unwrap();
    device.absorb(&cosigner.advance().unwrap()[0]).unwrap();
    assert_eq!(ours.len(), 1);
    verify(&pkp, 2, &device.signatures(&pkp).unwrap());
}

#[test]
fn no_messages_or_too_many_are_refused() {
    let (keys, _) = keys();
    let locals = || vec![(pid(1), keys[&pid(1)].clone())];
    for n in [0, MAX_MESSAGES + 1] {
        let messages = vec![vec![0; 32]; n];
        assert!(matches!(
            Signing::<Tr>::start(locals(), &[pid(1), pid(2)], messages, &mut OsRng),
            Err(ProtocolError::Params { .. })
        ));
    }
}

/// One-round signing: the cosigner's commitment is made before the message is known; the device
/// commits, and each side builds the same package from both commitments and signs it at once.
#[test]
fn a_precommitment_signs_one_message_chosen_after_it() {
    let (keys, pkp) = keys();
    let signers = [pid(1), pid(2)];
    let (precommitment, handed_out) =
        Precommitment::new(&keys[&pid(2)], pid(2), &mut OsRng).unwrap();
    let message = vec![7; 32];
    let (mut device, ours) = start_one(&keys, 1, &signers, &message);
    let locals = vec![(pid(2), keys[&pid(2)].clone(), vec![precommitment])];
    let (mut cosigner, theirs) =
        Signing::start_precommitted(locals, &signers, vec![message.clone()]).unwrap();
    assert_eq!(
        theirs,
        vec![SignMessage::Commitments {
            party: pid(2),
            commitments: vec![handed_out]
        }]
    );
    cosigner.absorb(&ours[0]).unwrap();
    let shares = cosigner.advance().unwrap();
    device.absorb(&theirs[0]).unwrap();
    device.advance().unwrap();
    device.absorb(&shares[0]).unwrap();
    let signatures = device.signatures(&pkp).unwrap();
    let signature = frost_core::Signature::<Tr>::deserialize(&signatures[0]).unwrap();
    pkp.verifying_key().verify(&message, &signature).unwrap();
}

#[test]
fn a_precommitment_of_another_party_or_count_is_refused() {
    let (keys, _) = keys();
    let signers = [pid(1), pid(2)];
    let (precommitment, _) = Precommitment::new(&keys[&pid(2)], pid(2), &mut OsRng).unwrap();
    // Given as party 1's.
    let locals = vec![(pid(1), keys[&pid(1)].clone(), vec![precommitment])];
    assert!(Signing::start_precommitted(locals, &signers, messages(1)).is_err());
    // Two messages, one precommitment.
    let (precommitment, _) = Precommitment::new(&keys[&pid(2)], pid(2), &mut OsRng).unwrap();
    let locals = vec![(pid(2), keys[&pid(2)].clone(), vec![precommitment])];
    assert!(Signing::start_precommitted(locals, &signers, messages(2)).is_err());
    // A key package its party does not hold.
    assert!(Precommitment::new(&keys[&pid(1)], pid(2), &mut OsRng).is_err());
}

fn start_one(
    keys: &BTreeMap<PartyId, KeyPackage<Tr>>,
    me: u16,
    signers: &[PartyId],
    message: &[u8],
) -> (Signing<Tr>, Vec<SignMessage>) {
    let locals = vec![(pid(me), keys[&pid(me)].clone())];
    Signing::start(locals, signers, vec![message.to_vec()], &mut OsRng).unwrap()
}

/// Each message signed with its own key: a PSBT's inputs spending the wallet's own key and two
/// children (one twice), each signature checked under that child's public key package.
#[test]
fn each_message_signs_with_its_own_childs_key() {
    use crate::hd::{ChildPath, Keychain, key_packages_for, public_key_packages_for};
    use crate::wire::WalletId;
    let (keys, pkp) = keys();
    let wallet = WalletId([5; 16]);
    let child = |keychain, index| Some(ChildPath { keychain, index });
    let paths = [
        None,
        child(Keychain::Receive, 3),
        child(Keychain::Change, 0),
        child(Keychain::Receive, 3),
    ];
    let signers = [pid(1), pid(3)];
    let mut sides: Vec<(Signing<Tr>, Vec<SignMessage>)> = signers
        .iter()
        .map(|p| {
            let moved = key_packages_for(&wallet, &keys[p], &paths).unwrap();
            Signing::start_each(vec![(*p, moved)], &signers, messages(4), &mut OsRng).unwrap()
        })
        .collect();
    let (first, second) = sides.split_at_mut(1);
    let ((a, a_out), (b, b_out)) = (&mut first[0], &mut second[0]);
    a.absorb(&b_out[0]).unwrap();
    b.absorb(&a_out[0]).unwrap();
    let a_shares = a.advance().unwrap();
    let b_shares = b.advance().unwrap();
    a.absorb(&b_shares[0]).unwrap();
    b.absorb(&a_shares[0]).unwrap();
    let pkps = public_key_packages_for(&wallet, &pkp, &paths).unwrap();
    let signatures = a.signatures_each(&pkps).unwrap();
    assert_eq!(signatures, b.signatures_each(&pkps).unwrap());
    for ((message, signature), pkp) in messages(4).iter().zip(&signatures).zip(&pkps) {
        let signature = frost_core::Signature::<Tr>::deserialize(signature).unwrap();
        pkp.verifying_key().verify(message, &signature).unwrap();
    }
    // The wallet's own key checks only the first; the others name a share as bad.
    assert!(a.signatures(&pkp).is_err());
    assert!(a.signatures_each(&pkps[..3]).is_err());
    // One key package per message, or nothing starts.
    let short = key_packages_for(&wallet, &keys[&pid(1)], &paths[..3]).unwrap();
    assert!(Signing::start_each(vec![(pid(1), short)], &signers, messages(4), &mut OsRng).is_err());
}
