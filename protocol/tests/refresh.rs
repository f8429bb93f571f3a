//! Proactive refresh in memory: a 2-of-3 DKG, then refreshes relayed by the test, which can also
//! be the malicious relay. Every generic test runs for both `frost-secp256k1-tr` and
//! `frost-secp256k1`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

mod common;

use std::collections::BTreeMap;

use common::{
    MESSAGE, PARTIES, Shares, altered, assert_secrets_stay_out_of_debug, culprit, disagreement,
    dkg_params, finish, for_both_suites, inbox, package, params_error, pid, refresh_params,
    refresh_round1, refresh_round3, rng, round2, run_refresh, sign_shares, signs_under, to_shares,
};
use cosigner_protocol::ProtocolError;
use cosigner_protocol::dkg;
use cosigner_protocol::id::Epoch;
use cosigner_protocol::id::PartyId;
use cosigner_protocol::keygen::KeygenParams;
use cosigner_protocol::refresh::{self, RefreshRound2, RefreshRound3};
use cosigner_protocol::sign;
use cosigner_protocol::wire::{Confirmation, RefreshParams, Round1Message, SealedPackage};
use frost_core::Ciphersuite;
use serde_bytes::ByteBuf;

/// The shares of a 2-of-3 DKG, as the parties store them.
fn run_dkg<C: Ciphersuite>() -> Shares<C> {
    to_shares(&common::run_dkg::<C>())
}

// ---------------------------------------------------------------------------------------------
// Happy path.

fn refresh_keeps_the_key_and_retires_old_shares<C: Ciphersuite>() {
    let old = run_dkg::<C>();
    let outputs = run_refresh::<C>(&old, 0);
    let group_key = old[&pid(1)].public_key_package.verifying_key();

    let transcript = outputs[&pid(1)].transcript_hash;
    for (me, out) in &outputs {
        assert_eq!(out.public_key_package.verifying_key(), group_key);
        assert_eq!(out.key_package.verifying_key(), group_key);
        assert_eq!(out.public_key_package, outputs[&pid(1)].public_key_package);
        assert_eq!(out.transcript_hash, transcript);
        assert_eq!(
            out.key_package.identifier(),
            old[me].key_package.identifier()
        );
        assert_eq!(
            out.key_package.min_signers(),
            old[me].key_package.min_signers()
        );
        assert_ne!(
            out.key_package.signing_share(),
            old[me].key_package.signing_share(),
            "party {me}'s share did not change"
        );
        assert_ne!(
            out.key_package.verifying_share(),
            old[me].key_package.verifying_share()
        );
    }
    assert_ne!(
        outputs[&pid(1)].public_key_package,
        old[&pid(1)].public_key_package,
        "the verifying shares must change"
    );

    // Every pair of new shares signs under the unchanged group key.
    let new = to_shares(&outputs);
    for pair in [[1, 2], [1, 3], [2, 3]] {
        assert!(signs_under(
            &new,
            &pair.map(pid),
            &old[&pid(1)].public_key_package
        ));
    }

    // Until finalized, the old epoch still signs on its own.
    let keys = [pid(1), pid(2)].map(|p| (p, &old[&p].key_package));
    let (package, shares) = sign_shares::<C>(&keys, MESSAGE);
    sign::aggregate(&package, &shares, &old[&pid(1)].public_key_package).unwrap();

    // An old-epoch share combined with a new-epoch one yields no valid signature, whichever
    // public key package checks it, and even the raw sum of the shares does not verify.
    for (old_party, new_party) in [(1, 2), (2, 1), (3, 1)].map(|(a, b)| (pid(a), pid(b))) {
        let keys = [
            (old_party, &old[&old_party].key_package),
            (new_party, &new[&new_party].key_package),
        ];
        let (package, shares) = sign_shares::<C>(&keys, MESSAGE);
        let (party, _) = culprit(sign::aggregate(
            &package,
            &shares,
            &new[&pid(1)].public_key_package,
        ));
        assert_eq!(party, old_party, "the new package names the old share");
        let (party, _) = culprit(sign::aggregate(
            &package,
            &shares,
            &old[&pid(1)].public_key_package,
        ));
        assert_eq!(party, new_party, "the old package names the new share");

        let signing_package = frost_core::SigningPackage::<C>::deserialize(&package).unwrap();
        let decoded: BTreeMap<_, _> = shares
            .iter()
            .map(|(p, s)| {
                (
                    p.identifier::<C>().unwrap(),
                    frost_core::round2::SignatureShare::<C>::deserialize(s).unwrap(),
                )
            })
            .collect();
        // Without per-share checks (a coordinator that skips them): the sum does not verify.
        for pkp in [
            &old[&pid(1)].public_key_package,
            &new[&pid(1)].public_key_package,
        ] {
            let result = frost_core::aggregate_custom(
                &signing_package,
                &decoded,
                pkp,
                frost_core::CheaterDetection::Disabled,
            );
            assert!(
                matches!(result, Err(frost_core::Error::InvalidSignature)),
                "a mixed-epoch signature must not verify: {result:?}"
            );
        }
    }
}

fn refresh_twice_and_parties_in_any_order<C: Ciphersuite>() {
    let old = run_dkg::<C>();
    let first = to_shares(&run_refresh::<C>(&old, 0));
    // The second refresh lists the parties in another order; the state keeps them sorted.
    let mut params = refresh_params::<C>(1);
    params.parties = vec![pid(3), pid(1), pid(2)];
    let (s1, r1) = refresh_round1::<C>(&params);
    for s in s1.values() {
        assert_eq!(s.params().parties, PARTIES.to_vec());
        assert_eq!(s.params().from_epoch, Epoch(1));
    }
    let (s2, sealed) = round2(s1, &r1);
    let (s3, confirmations) = refresh_round3(s2, &sealed, &first);
    for (me, s) in &s3 {
        assert_eq!(s.me(), *me);
        assert_eq!(
            s.key_package().identifier(),
            first[me].key_package.identifier()
        );
        assert_eq!(
            s.public_key_package().verifying_key(),
            old[&pid(1)].public_key_package.verifying_key()
        );
    }
    let second = to_shares(&finish(s3, &confirmations));
    assert!(signs_under(
        &second,
        &[pid(2), pid(3)],
        &old[&pid(1)].public_key_package
    ));
}

// ---------------------------------------------------------------------------------------------
// Refused refreshes.

/// `params` is refused (a `Params` error saying `expected`) up front by the check callers can run
/// before starting, and by every party's round 2 in any case, before any new share exists.
fn refused_before_any_new_share<C: Ciphersuite>(
    old: &Shares<C>,
    params: &RefreshParams,
    expected: &str,
) {
    let reason = params_error(refresh::check_old_shares(
        params,
        pid(1),
        &old[&pid(1)].key_package,
        &old[&pid(1)].public_key_package,
    ));
    assert!(reason.contains(expected), "{reason}");
    let (s1, r1) = refresh_round1::<C>(params);
    let (s2, sealed) = round2(s1, &r1);
    for (me, s) in s2 {
        let reason = params_error(s.handle_round2(
            &inbox(&sealed, me),
            &old[&me].key_package,
            &old[&me].public_key_package,
        ));
        assert!(reason.contains(expected), "{reason}");
    }
}

fn refresh_of_a_subset_is_refused<C: Ciphersuite>() {
    let old = run_dkg::<C>();
    let mut params = refresh_params::<C>(0);
    params.parties = vec![pid(1), pid(2)];

    refused_before_any_new_share(&old, &params, "refresh must include every party: missing 3");

    // A party the wallet does not have is refused too.
    let mut stranger = refresh_params::<C>(0);
    stranger.parties = vec![pid(1), pid(2), pid(3), pid(4)];
    let reason = params_error(refresh::check_old_shares(
        &stranger,
        pid(1),
        &old[&pid(1)].key_package,
        &old[&pid(1)].public_key_package,
    ));
    assert!(reason.contains("party 4 is not a member"), "{reason}");
}

fn changed_threshold_is_refused<C: Ciphersuite>() {
    let old = run_dkg::<C>();
    let mut params = refresh_params::<C>(0);
    params.min_signers = 3;
    // Refused up front, and with all parties agreeing on the new threshold too.
    refused_before_any_new_share(&old, &params, "cannot change the threshold");

    // One party with another threshold sends a package of another size: named.
    let params = refresh_params::<C>(0);
    let (mut s1, mut r1) = refresh_round1::<C>(&params);
    let mut odd = params.clone();
    odd.min_signers = 3;
    let (_, m3) = refresh::start::<C>(&odd, pid(3), &mut rng()).unwrap();
    r1.retain(|m| m.from != pid(3));
    r1.push(m3);
    let s = s1.remove(&pid(1)).unwrap();
    assert_eq!(culprit(s.handle_round1(&r1, &mut rng())).0, 3);

    // Bad parameters are refused at the start.
    for (min_signers, parties, me) in [
        (1, vec![1, 2, 3], 1),
        (4, vec![1, 2, 3], 1),
        (2, vec![1, 2, 3], 4),
    ] {
        let mut p = refresh_params::<C>(0);
        p.min_signers = min_signers;
        p.parties = parties.into_iter().map(pid).collect();
        params_error(refresh::start::<C>(&p, pid(me), &mut rng()));
    }
    let mut other_suite = refresh_params::<C>(0);
    other_suite.ciphersuite = "FROST-ED25519-SHA512-v1".into();
    assert!(matches!(
        refresh::start::<C>(&other_suite, pid(1), &mut rng()),
        Err(ProtocolError::Ciphersuite { .. })
    ));
}

fn wrong_old_share_is_refused<C: Ciphersuite>() {
    let old = run_dkg::<C>();
    let other_wallet = run_dkg::<C>();
    let params = refresh_params::<C>(0);
    // Another party's key package.
    params_error(refresh::check_old_shares(
        &params,
        pid(1),
        &old[&pid(2)].key_package,
        &old[&pid(1)].public_key_package,
    ));
    // A key package of another wallet.
    params_error(refresh::check_old_shares(
        &params,
        pid(1),
        &other_wallet[&pid(1)].key_package,
        &old[&pid(1)].public_key_package,
    ));
    refresh::check_old_shares(
        &params,
        pid(1),
        &old[&pid(1)].key_package,
        &old[&pid(1)].public_key_package,
    )
    .unwrap();
}

fn dkg_round1_message_is_refused<C: Ciphersuite>() {
    let params = refresh_params::<C>(0);
    let (mut s1, mut r1) = refresh_round1::<C>(&params);
    let (_, dkg_message) = dkg::start::<C>(&dkg_params::<C>(), pid(2), &mut rng()).unwrap();
    r1.retain(|m| m.from != pid(2));
    r1.push(dkg_message);
    let s = s1.remove(&pid(1)).unwrap();
    let (party, reason) = culprit(s.handle_round1(&r1, &mut rng()));
    assert_eq!(party, 2);
    assert!(reason.contains("DKG"), "{reason}");
}

/// Party 1 opens its round-2 inbox as the relay delivers it, with its old share.
fn open_as_1<C: Ciphersuite>(
    mut s2: BTreeMap<PartyId, RefreshRound2<C>>,
    inbox1: &[SealedPackage],
    old: &Shares<C>,
) -> cosigner_protocol::Result<(RefreshRound3<C>, Confirmation)> {
    let s = s2.remove(&pid(1)).unwrap();
    s.handle_round2(
        inbox1,
        &old[&pid(1)].key_package,
        &old[&pid(1)].public_key_package,
    )
}

/// Party 2's round-2 package for party 1, sealed under `params` (whatever ceremony they name).
fn seal_2_to_1<P: KeygenParams>(
    params: &P,
    (transcript, key_of_1, package): (&[u8; 32], &[u8], &[u8]),
) -> cosigner_protocol::Result<SealedPackage> {
    refresh::seal_package(
        params,
        pid(2),
        pid(1),
        transcript,
        key_of_1,
        package,
        &mut rng(),
    )
}

fn packages_of_another_epoch_or_protocol_are_refused<C: Ciphersuite>() {
    let old = run_dkg::<C>();
    let params = refresh_params::<C>(0);
    let mut next_epoch = params.clone();
    next_epoch.from_epoch = Epoch(1);
    let package = common::bogus_round2_package::<C>();

    for (how, expected) in [
        // Sealed for the refresh of another epoch (all else the same): does not open.
        ("other epoch", "does not open"),
        // Sealed as a DKG round-2 package of the same wallet: does not open.
        ("dkg", "does not open"),
        // Control: sealed for this very refresh, it opens, and the bad share is caught.
        ("this refresh", "does not match its commitment"),
    ] {
        let (s1, r1) = refresh_round1::<C>(&params);
        let key_of_1 = r1
            .iter()
            .find(|m| m.from == pid(1))
            .unwrap()
            .hpke_public_key
            .clone();
        let (s2, sealed) = round2(s1, &r1);
        let transcript = *s2[&pid(1)].transcript_hash();
        let inputs = (&transcript, key_of_1.as_slice(), package.as_slice());
        let forged = match how {
            "other epoch" => seal_2_to_1(&next_epoch, inputs),
            "dkg" => seal_2_to_1(&dkg_params::<C>(), inputs),
            _ => seal_2_to_1(&params, inputs),
        }
        .unwrap();
        let mut inbox1 = inbox(&sealed, pid(1));
        inbox1.retain(|p| p.from != pid(2));
        inbox1.push(forged);
        let (party, reason) = culprit(open_as_1(s2, &inbox1, &old));
        assert_eq!(party, 2, "{how}");
        assert!(reason.contains(expected), "{how}: {reason}");
    }

    // A whole refresh run for another epoch: its packages do not open in this one.
    let (s1, r1) = refresh_round1::<C>(&params);
    let (s2, sealed) = round2(s1, &r1);
    let (o1, or1) = refresh_round1::<C>(&next_epoch);
    let (_, other_sealed) = round2(o1, &or1);
    let mut inbox1 = inbox(&sealed, pid(1));
    inbox1.retain(|p| p.from != pid(3));
    inbox1.extend(
        other_sealed
            .into_iter()
            .filter(|p| p.from == pid(3) && p.to == pid(1)),
    );
    assert_eq!(culprit(open_as_1(s2, &inbox1, &old)).0, 3);
}

fn corrupted_package_names_its_sender<C: Ciphersuite>() {
    let old = run_dkg::<C>();
    let params = refresh_params::<C>(0);
    for (from, byte) in [(pid(2), 0usize), (pid(3), 17)] {
        let (s1, r1) = refresh_round1::<C>(&params);
        let (s2, sealed) = round2(s1, &r1);
        let mut inbox1 = inbox(&sealed, pid(1));
        for p in &mut inbox1 {
            if p.from == from {
                let mut ct = p.ciphertext.to_vec();
                ct[byte] ^= 1;
                p.ciphertext = ByteBuf::from(ct);
            }
        }
        let (party, reason) = culprit(open_as_1(s2, &inbox1, &old));
        assert_eq!(party, from);
        assert!(reason.contains("does not open"), "{reason}");
    }

    // A package redirected to another recipient does not open for it either.
    let (s1, r1) = refresh_round1::<C>(&params);
    let (s2, sealed) = round2(s1, &r1);
    let mut inbox1 = inbox(&sealed, pid(1));
    inbox1.retain(|p| p.from != 2);
    let mut redirected = package(&sealed, pid(2), pid(3));
    redirected.to = pid(1);
    inbox1.push(redirected);
    assert_eq!(culprit(open_as_1(s2, &inbox1, &old)).0, 2);
}

fn disagreeing_confirmations_yield_no_share<C: Ciphersuite>() {
    let old = run_dkg::<C>();
    let params = refresh_params::<C>(0);
    let (s1, r1) = refresh_round1::<C>(&params);
    let (s2, sealed) = round2(s1, &r1);
    let (mut s3, confirmations) = refresh_round3(s2, &sealed, &old);

    let other_key = altered(&confirmations, pid(3), |c| {
        c.public_key_package_hash = ByteBuf::from(vec![0; 32])
    });
    let s = s3.remove(&pid(1)).unwrap();
    let reason = disagreement(s.handle_confirmations(&other_key));
    assert!(reason.contains("[3]"), "{reason}");

    let other_transcript = altered(&confirmations, pid(2), |c| {
        c.transcript_hash = ByteBuf::from(vec![0; 32])
    });
    let s = s3.remove(&pid(3)).unwrap();
    let reason = disagreement(s.handle_confirmations(&other_transcript));
    assert!(reason.contains("[2]"), "{reason}");

    // Our own confirmation altered by the relay.
    let ours_altered = altered(&confirmations, pid(2), |c| {
        c.public_key_package_hash = ByteBuf::from(vec![1; 32])
    });
    let s = s3.remove(&pid(2)).unwrap();
    disagreement(s.handle_confirmations(&ours_altered));

    // A DKG confirmation of the same wallet is not a refresh confirmation.
    let (s1, r1) = refresh_round1::<C>(&params);
    let (s2, sealed) = round2(s1, &r1);
    let (mut s3, mut confirmations) = refresh_round3(s2, &sealed, &old);
    let dkg_confirmation = Confirmation {
        from: pid(3),
        transcript_hash: ByteBuf::from(vec![7; 32]),
        public_key_package_hash: ByteBuf::from(
            dkg::public_key_package_hash(&old[&pid(3)].public_key_package)
                .unwrap()
                .to_vec(),
        ),
    };
    confirmations.retain(|c| c.from != pid(3));
    confirmations.push(dkg_confirmation);
    let s = s3.remove(&pid(1)).unwrap();
    disagreement(s.handle_confirmations(&confirmations));
}

fn relay_inconsistencies_are_caught<C: Ciphersuite>() {
    let old = run_dkg::<C>();
    let params = refresh_params::<C>(0);

    // Our own round-1 message altered.
    let (mut s1, mut r1) = refresh_round1::<C>(&params);
    for m in &mut r1 {
        if m.from == pid(1) {
            let mut key = m.hpke_public_key.to_vec();
            key[0] ^= 1;
            m.hpke_public_key = ByteBuf::from(key);
        }
    }
    disagreement(s1.remove(&pid(1)).unwrap().handle_round1(&r1, &mut rng()));

    // A missing round-1 message.
    let (mut s1, r1) = refresh_round1::<C>(&params);
    let short: Vec<Round1Message> = r1.iter().filter(|m| m.from != pid(3)).cloned().collect();
    assert!(matches!(
        s1.remove(&pid(1))
            .unwrap()
            .handle_round1(&short, &mut rng()),
        Err(ProtocolError::UnexpectedMessage { .. })
    ));

    // Party 3 is shown another round 1 than parties 1 and 2: the packages between the two views
    // do not open, so the split shows in round 2.
    let (s1, r1) = refresh_round1::<C>(&params);
    let mut split = r1.clone();
    let (_, other_2) = refresh::start::<C>(&params, pid(2), &mut rng()).unwrap();
    split.retain(|m| m.from != pid(2));
    split.push(other_2);
    let mut s2 = BTreeMap::new();
    let mut sealed = Vec::new();
    for (me, s) in s1 {
        let view = if me == 3 { &split } else { &r1 };
        let (s, p) = s.handle_round1(view, &mut rng()).unwrap();
        s2.insert(me, s);
        sealed.extend(p);
    }
    let s = s2.remove(&pid(3)).unwrap();
    let (party, _) = culprit(s.handle_round2(
        &inbox(&sealed, pid(3)),
        &old[&pid(3)].key_package,
        &old[&pid(3)].public_key_package,
    ));
    assert!(party == 1 || party == 2);
}

fn secrets_stay_out_of_debug<C: Ciphersuite>() {
    let old = run_dkg::<C>();
    let (s1, r1) = refresh_round1::<C>(&refresh_params::<C>(0));
    assert_secrets_stay_out_of_debug(s1, &r1, |s2, sealed| refresh_round3(s2, sealed, &old));
}

for_both_suites!(
    refresh_keeps_the_key_and_retires_old_shares,
    refresh_twice_and_parties_in_any_order,
    refresh_of_a_subset_is_refused,
    changed_threshold_is_refused,
    wrong_old_share_is_refused,
    dkg_round1_message_is_refused,
    packages_of_another_epoch_or_protocol_are_refused,
    corrupted_package_names_its_sender,
    disagreeing_confirmations_yield_no_share,
    relay_inconsistencies_are_caught,
    secrets_stay_out_of_debug,
);
