//! Share repair in memory: a DKG, then helpers rebuild a lost share for the participant, the test
//! relaying every message (and playing the malicious coordinator). Every generic test runs for
//! both `frost-secp256k1-tr` and `frost-secp256k1`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

mod common;

use std::collections::BTreeMap;

use common::{
    MESSAGE, Shares, WALLET, culprit, dkg_params, flip, for_both_suites, inbox, params_error, pid,
    rng, run_dkg_with, run_refresh, sign_shares, to_shares, verify,
};
use cosigner_protocol::ProtocolError;
use cosigner_protocol::hpke;
use cosigner_protocol::id::Epoch;
use cosigner_protocol::id::PartyId;
use cosigner_protocol::repair::{self, RepairHelper1, RepairHelper2, RepairParticipant};
use cosigner_protocol::sign;
use cosigner_protocol::wire::{DkgParams, RepairParams, SealedPackage};
use frost_core::Ciphersuite;
use frost_core::keys::{KeyPackage, PublicKeyPackage};
use serde_bytes::ByteBuf;

/// The shares of a `min_signers`-of-`parties` DKG of [`WALLET`].
fn run_dkg<C: Ciphersuite>(min_signers: u16, parties: &[PartyId]) -> Shares<C> {
    to_shares(&run_dkg_with::<C>(&DkgParams {
        min_signers,
        parties: parties.to_vec(),
        ..dkg_params::<C>()
    }))
}

fn wallet<C: Ciphersuite>() -> Shares<C> {
    run_dkg::<C>(2, &[pid(1), pid(2), pid(3)])
}

/// Every helper's HPKE key, signed with its share, as the coordinator relays them.
type HelperKeys = BTreeMap<PartyId, Vec<u8>>;

fn repair_params<C: Ciphersuite>(helpers: &[PartyId], participant: PartyId) -> RepairParams {
    RepairParams {
        wallet_id: WALLET,
        ciphersuite: C::ID.into(),
        epoch: Epoch(0),
        helpers: helpers.to_vec(),
        participant,
    }
}

/// Round 1: every helper's state and key, and the participant's state and key.
#[allow(clippy::type_complexity)]
fn start<C: Ciphersuite>(
    shares: &Shares<C>,
    params: &RepairParams,
) -> (
    BTreeMap<PartyId, RepairHelper1<C>>,
    BTreeMap<PartyId, Vec<u8>>,
    RepairParticipant<C>,
    Vec<u8>,
) {
    let mut helpers = BTreeMap::new();
    let mut keys = BTreeMap::new();
    for h in &params.helpers {
        let (state, key) = start_as(params, *h, &shares[h]).unwrap();
        helpers.insert(*h, state);
        keys.insert(*h, key);
    }
    let (participant, participant_key) =
        repair::participant_start::<C>(params, &mut rng()).unwrap();
    (helpers, keys, participant, participant_key)
}

fn deltas<C: Ciphersuite>(
    shares: &Shares<C>,
    helpers: BTreeMap<PartyId, RepairHelper1<C>>,
    keys: &BTreeMap<PartyId, Vec<u8>>,
) -> (BTreeMap<PartyId, RepairHelper2<C>>, Vec<SealedPackage>) {
    let mut next = BTreeMap::new();
    let mut all = Vec::new();
    for (h, state) in helpers {
        let (state, sealed) = state
            .deltas(&shares[&h].key_package, keys, &mut rng())
            .unwrap();
        assert_eq!(sealed.len(), keys.len() - 1, "our own delta stays with us");
        assert!(sealed.iter().all(|d| d.from == h && d.to != h));
        next.insert(h, state);
        all.extend(sealed);
    }
    (next, all)
}

fn sigmas<C: Ciphersuite>(
    helpers: BTreeMap<PartyId, RepairHelper2<C>>,
    deltas: &[SealedPackage],
    participant_key: &[u8],
) -> Vec<SealedPackage> {
    helpers
        .into_iter()
        .map(|(h, s)| {
            s.sigma(&inbox(deltas, h), participant_key, &mut rng())
                .unwrap()
        })
        .collect()
}

/// A whole repair of `participant` by `helpers`, honest relay.
fn run_repair<C: Ciphersuite>(
    shares: &Shares<C>,
    helpers: &[PartyId],
    participant: PartyId,
) -> KeyPackage<C> {
    let params = repair_params::<C>(helpers, participant);
    let (h1, keys, p, pk) = start(shares, &params);
    let (h2, d) = deltas(shares, h1, &keys);
    let s = sigmas(h2, &d, &pk);
    let pkp = &shares[&helpers[0]].public_key_package;
    p.finish(&keys, &s, pkp, pkp.min_signers().unwrap())
        .unwrap()
}

/// Signs [`MESSAGE`] with the given key package per signer; the signature verifies under `pkp`.
fn sign_with<C: Ciphersuite>(keys: &[(PartyId, &KeyPackage<C>)], pkp: &PublicKeyPackage<C>) {
    let (package, shares) = sign_shares(keys, MESSAGE);
    let signature = sign::aggregate(&package, &shares, pkp).unwrap();
    assert!(verify(pkp, MESSAGE, &signature));
}

// ---------------------------------------------------------------------------------------------
// Happy paths.

fn lost_device_share_is_repaired<C: Ciphersuite>() {
    let shares = wallet::<C>();
    let repaired = run_repair(&shares, &[pid(2), pid(3)], pid(1));
    let original = &shares[&pid(1)].key_package;
    assert_eq!(repaired.verifying_share(), original.verifying_share());
    assert_eq!(repaired.signing_share(), original.signing_share());
    assert_eq!(repaired.identifier(), original.identifier());
    assert_eq!(repaired.verifying_key(), original.verifying_key());
    assert_eq!(repaired.min_signers(), original.min_signers());
    assert_eq!(&repaired, original);

    // The repaired share signs with party 2 (and with party 3).
    let pkp = &shares[&pid(2)].public_key_package;
    for other in [2, 3].map(pid) {
        let keys = [(pid(1), &repaired), (other, &shares[&other].key_package)];
        sign_with(&keys, pkp);
    }

    // Helpers listed in any order; another party repaired.
    let repaired_3 = run_repair(&shares, &[pid(2), pid(1)], pid(3));
    assert_eq!(&repaired_3, &shares[&pid(3)].key_package);
}

fn three_helpers_repair_a_three_of_four_share<C: Ciphersuite>() {
    let shares = run_dkg::<C>(3, &[pid(1), pid(2), pid(3), pid(4)]);
    let repaired = run_repair(&shares, &[pid(4), pid(2), pid(3)], pid(1));
    assert_eq!(&repaired, &shares[&pid(1)].key_package);
    let keys = [
        (pid(1), &repaired),
        (pid(3), &shares[&pid(3)].key_package),
        (pid(4), &shares[&pid(4)].key_package),
    ];
    sign_with(&keys, &shares[&pid(1)].public_key_package);
}

/// The recovery flow: repair at the current epoch, then refresh with the repaired share. The lost
/// device's copy of the share is useless afterwards.
fn repair_then_refresh_retires_the_lost_share<C: Ciphersuite>() {
    let shares = wallet::<C>();
    let repaired = run_repair(&shares, &[pid(2), pid(3)], pid(1));
    let mut old = shares.clone();
    old.get_mut(&pid(1)).unwrap().key_package = repaired;
    let new = run_refresh(&old, 0);
    let pkp = &new[&pid(2)].public_key_package;
    assert_eq!(
        pkp.verifying_key(),
        shares[&pid(2)].public_key_package.verifying_key()
    );
    let keys = [
        (pid(1), &new[&pid(1)].key_package),
        (pid(2), &new[&pid(2)].key_package),
    ];
    sign_with(&keys, pkp);

    // The lost phone's share (epoch 0) with a new share of party 2: refused, naming party 1.
    let lost = [
        (pid(1), &shares[&pid(1)].key_package),
        (pid(2), &new[&pid(2)].key_package),
    ];
    let (package, sig_shares) = sign_shares(&lost, MESSAGE);
    assert_eq!(culprit(sign::aggregate(&package, &sig_shares, pkp)).0, 1);
}

// ---------------------------------------------------------------------------------------------
// Refused repairs.

/// `repair::helper_start` as `party` with the key package and public key package of `share`.
fn start_as<C: Ciphersuite>(
    params: &RepairParams,
    party: PartyId,
    share: &common::Share<C>,
) -> cosigner_protocol::Result<(RepairHelper1<C>, Vec<u8>)> {
    repair::helper_start::<C>(
        params,
        party,
        &share.key_package,
        &share.public_key_package,
        &mut rng(),
    )
}

fn bad_parameters_are_refused<C: Ciphersuite>() {
    let shares = wallet::<C>();
    let start_2 = |p: &RepairParams| start_as::<C>(p, pid(2), &shares[&pid(2)]);

    // The participant among the helpers.
    let reason = params_error(start_2(&repair_params::<C>(&[pid(1), pid(2)], pid(2))));
    assert!(reason.contains("must not be a helper"), "{reason}");
    let reason = params_error(repair::participant_start::<C>(
        &repair_params::<C>(&[pid(1), pid(2)], pid(1)),
        &mut rng(),
    ));
    assert!(reason.contains("must not be a helper"), "{reason}");

    // Fewer helpers than the threshold.
    params_error(start_2(&repair_params::<C>(&[pid(2)], pid(1))));
    params_error(repair::participant_start::<C>(
        &repair_params::<C>(&[pid(2)], pid(1)),
        &mut rng(),
    ));
    let big = run_dkg::<C>(3, &[pid(1), pid(2), pid(3), pid(4)]);
    let below = repair_params::<C>(&[pid(2), pid(3)], pid(1));
    let reason = params_error(start_as(&below, pid(2), &big[&pid(2)]));
    assert!(reason.contains("below the threshold"), "{reason}");
    let (participant, _) = repair::participant_start::<C>(&below, &mut rng()).unwrap();
    let reason = params_error(participant.finish(
        &BTreeMap::new(),
        &[],
        &big[&pid(1)].public_key_package,
        3,
    ));
    assert!(reason.contains("below the threshold"), "{reason}");

    // Not a helper; another party's key package; a non-member participant; another suite.
    params_error(start_2(&repair_params::<C>(&[pid(1), pid(3)], pid(4))));
    params_error(start_as(
        &repair_params::<C>(&[pid(2), pid(3)], pid(1)),
        pid(2),
        &shares[&pid(3)],
    ));
    let reason = params_error(start_2(&repair_params::<C>(&[pid(2), pid(3)], pid(9))));
    assert!(reason.contains("not a member"), "{reason}");
    let mut other_suite = repair_params::<C>(&[pid(2), pid(3)], pid(1));
    other_suite.ciphersuite = "FROST-ED25519-SHA512-v1".into();
    assert!(matches!(
        start_2(&other_suite),
        Err(ProtocolError::Ciphersuite { .. })
    ));
    // A key package of another wallet.
    let other = wallet::<C>();
    params_error(repair::helper_start::<C>(
        &repair_params::<C>(&[pid(2), pid(3)], pid(1)),
        pid(2),
        &other[&pid(2)].key_package,
        &shares[&pid(2)].public_key_package,
        &mut rng(),
    ));
}

fn repaired_share_must_match_the_public_key_package<C: Ciphersuite>() {
    let shares = wallet::<C>();
    let other_wallet = wallet::<C>();
    let params = repair_params::<C>(&[pid(2), pid(3)], pid(1));
    let (h1, keys, p, pk) = start(&shares, &params);
    let (h2, d) = deltas(&shares, h1, &keys);
    let s = sigmas(h2, &d, &pk);
    match p.finish(&keys, &s, &other_wallet[&pid(1)].public_key_package, 2) {
        Err(ProtocolError::Disagreement { reason }) => {
            assert!(
                reason.contains("repaired share does not match the public key package"),
                "{reason}"
            );
        }
        other => panic!("expected a Disagreement, got {other:?}"),
    }
}

fn helper_with_a_foreign_share_is_refused<C: Ciphersuite>() {
    // Helper 3 holds a share of another wallet (as a share of a stale epoch would be): helper 2
    // refuses its key, which is not signed by the share helper 2's public key package lists.
    let shares = wallet::<C>();
    let other = wallet::<C>();
    let mut mixed = shares.clone();
    mixed.insert(pid(3), other[&pid(3)].clone());
    let params = repair_params::<C>(&[pid(2), pid(3)], pid(1));
    let (mut h1, keys, _p, _pk) = start(&mixed, &params);
    let h = h1.remove(&pid(2)).unwrap();
    let (party, reason) = culprit(h.deltas(&mixed[&pid(2)].key_package, &keys, &mut rng()));
    assert_eq!(party, 3);
    assert!(reason.contains("not vouched for"), "{reason}");
}

fn tampered_sigma_names_its_sender<C: Ciphersuite>() {
    let shares = wallet::<C>();
    let params = repair_params::<C>(&[pid(2), pid(3)], pid(1));
    for (from, field) in [(2u16, "ciphertext"), (3, "enc")] {
        let (h1, keys, p, pk) = start(&shares, &params);
        let (h2, d) = deltas(&shares, h1, &keys);
        let mut s = sigmas(h2, &d, &pk);
        for sigma in &mut s {
            if sigma.from == from {
                match field {
                    "enc" => sigma.enc = flip(&sigma.enc, 3),
                    _ => sigma.ciphertext = flip(&sigma.ciphertext, 0),
                }
            }
        }
        let (party, reason) = culprit(p.finish(&keys, &s, &shares[&pid(1)].public_key_package, 2));
        assert_eq!(party, from);
        assert!(reason.contains("sigma does not open"), "{reason}");
    }

    // The sigmas relabelled (each claims the other helper as its sender): neither opens.
    let (h1, keys, p, pk) = start(&shares, &params);
    let (h2, d) = deltas(&shares, h1, &keys);
    let mut relabelled = sigmas(h2, &d, &pk);
    for sigma in &mut relabelled {
        sigma.from = if sigma.from == pid(2) { pid(3) } else { pid(2) };
    }
    culprit(p.finish(&keys, &relabelled, &shares[&pid(1)].public_key_package, 2));
}

fn tampered_delta_names_its_sender<C: Ciphersuite>() {
    let shares = wallet::<C>();
    let params = repair_params::<C>(&[pid(2), pid(3)], pid(1));
    let scalar_and_tag = 32 + hpke::TAG_LEN;
    // Flip a bit of the HPKE ciphertext, of the signature, or of enc.
    for (at, field, expected) in [
        (0usize, "ciphertext", "not signed by its share"),
        (scalar_and_tag + 5, "ciphertext", "not signed by its share"),
        (1, "enc", "not signed by its share"),
    ] {
        let (h1, keys, _p, pk) = start(&shares, &params);
        let (mut h2, mut d) = deltas(&shares, h1, &keys);
        for delta in &mut d {
            if delta.from == pid(3) {
                match field {
                    "enc" => delta.enc = flip(&delta.enc, at),
                    _ => delta.ciphertext = flip(&delta.ciphertext, at),
                }
            }
        }
        let helper = h2.remove(&pid(2)).unwrap();
        let (party, reason) = culprit(helper.sigma(&inbox(&d, pid(2)), &pk, &mut rng()));
        assert_eq!(party, 3);
        assert!(reason.contains(expected), "{reason}");
    }

    // A delta forged by the coordinator: sealed to helper 2's real key with the right context,
    // carrying a value of its choice. It would open; the missing signature gives it away.
    let (h1, keys, _p, pk) = start(&shares, &params);
    let (mut h2, d) = deltas(&shares, h1, &keys);
    let honest = inbox(&d, pid(2)).into_iter().next().unwrap();
    let mut forged = honest.clone();
    forged.ciphertext = ByteBuf::from(vec![0; honest.ciphertext.len()]);
    let helper = h2.remove(&pid(2)).unwrap();
    let (party, _) = culprit(helper.sigma(&[forged], &pk, &mut rng()));
    assert_eq!(party, 3);

    // A truncated delta.
    let (h1, keys, _p, pk) = start(&shares, &params);
    let (mut h2, d) = deltas(&shares, h1, &keys);
    let mut short = inbox(&d, pid(2)).into_iter().next().unwrap();
    short.ciphertext = ByteBuf::from(short.ciphertext[..10].to_vec());
    let helper = h2.remove(&pid(2)).unwrap();
    assert_eq!(culprit(helper.sigma(&[short], &pk, &mut rng())).0, 3);
}

fn coordinator_cannot_substitute_helper_keys<C: Ciphersuite>() {
    let shares = wallet::<C>();
    let params = repair_params::<C>(&[pid(2), pid(3)], pid(1));

    // A fresh repair whose helper keys the coordinator alters before showing them to `helper`.
    let deltas_with = |helper: PartyId, alter: &dyn Fn(&mut HelperKeys)| {
        let (mut h1, mut keys, _p, _pk) = start(&shares, &params);
        alter(&mut keys);
        let state = h1.remove(&helper).unwrap();
        state.deltas(&shares[&helper].key_package, &keys, &mut rng())
    };
    let (_attacker_secret, attacker_key) = hpke::generate_keypair(&mut rng());

    // The coordinator shows helper 2 its own HPKE key as helper 3's, to read helper 2's delta.
    let (party, reason) = culprit(deltas_with(pid(2), &|keys| {
        let mut with_stolen_signature = attacker_key.clone();
        with_stolen_signature.extend_from_slice(&keys[&pid(3)][hpke::PUBLIC_KEY_LEN..]);
        keys.insert(pid(3), with_stolen_signature);
    }));
    assert_eq!(party, 3);
    assert!(reason.contains("not vouched for"), "{reason}");

    // A key without any signature.
    let bare = deltas_with(pid(2), &|keys| {
        keys.insert(pid(3), attacker_key.clone());
    });
    assert_eq!(culprit(bare).0, 3);

    // Helper 3's genuine key from another repair (another participant) does not fit this one.
    let (_, replayed) = start_as(
        &repair_params::<C>(&[pid(1), pid(3)], pid(2)),
        pid(3),
        &shares[&pid(3)],
    )
    .unwrap();
    let replay = deltas_with(pid(2), &|keys| {
        keys.insert(pid(3), replayed.clone());
    });
    assert_eq!(culprit(replay).0, 3);

    // Our own key altered, or a key set with a stranger or a gap.
    assert!(matches!(
        deltas_with(pid(2), &|keys| keys.get_mut(&pid(2)).unwrap()[0] ^= 1),
        Err(ProtocolError::Disagreement { .. })
    ));
    let extra = deltas_with(pid(2), &|keys| {
        keys.insert(pid(1), attacker_key.clone());
    });
    assert!(matches!(
        extra,
        Err(ProtocolError::UnexpectedMessage { .. })
    ));
    let gap = deltas_with(pid(3), &|keys| {
        keys.remove(&pid(3));
    });
    assert!(matches!(gap, Err(ProtocolError::UnexpectedMessage { .. })));

    // Another key package than the one the repair started with.
    let (mut h1, keys, _p, _pk) = start(&shares, &params);
    let helper = h1.remove(&pid(2)).unwrap();
    params_error(helper.deltas(&shares[&pid(3)].key_package, &keys, &mut rng()));
}

fn inconsistent_views_do_not_open<C: Ciphersuite>() {
    let shares = wallet::<C>();
    let params = repair_params::<C>(&[pid(2), pid(3)], pid(1));

    // The participant is given other helper keys than the helpers used: no sigma opens.
    let (h1, keys, p, pk) = start(&shares, &params);
    let (h2, d) = deltas(&shares, h1, &keys);
    let s = sigmas(h2, &d, &pk);
    let (_, other_keys, _, _) = start(&shares, &params);
    let (_, reason) = culprit(p.finish(&other_keys, &s, &shares[&pid(1)].public_key_package, 2));
    assert!(reason.contains("does not open"), "{reason}");

    // A sigma sealed to another participant key.
    let (h1, keys, p, _pk) = start(&shares, &params);
    let (h2, d) = deltas(&shares, h1, &keys);
    let (_, stranger_key) = hpke::generate_keypair(&mut rng());
    let s = sigmas(h2, &d, &stranger_key);
    culprit(p.finish(&keys, &s, &shares[&pid(1)].public_key_package, 2));

    // A malformed participant key.
    let (h1, keys, _p, _pk) = start(&shares, &params);
    let (mut h2, d) = deltas(&shares, h1, &keys);
    let helper = h2.remove(&pid(2)).unwrap();
    params_error(helper.sigma(&inbox(&d, pid(2)), &[1; 31], &mut rng()));
}

fn delta_sets_must_be_exact<C: Ciphersuite>() {
    let shares = wallet::<C>();
    let params = repair_params::<C>(&[pid(2), pid(3)], pid(1));
    let unexpected = |r: Result<SealedPackage, ProtocolError>| match r {
        Err(ProtocolError::UnexpectedMessage { actual, .. }) => actual,
        other => panic!("expected UnexpectedMessage, got {other:?}"),
    };

    // Missing.
    let (h1, keys, _p, pk) = start(&shares, &params);
    let (mut h2, _d) = deltas(&shares, h1, &keys);
    let helper = h2.remove(&pid(2)).unwrap();
    assert!(unexpected(helper.sigma(&[], &pk, &mut rng())).contains("no message from party 3"));

    // Duplicated.
    let (h1, keys, _p, pk) = start(&shares, &params);
    let (mut h2, d) = deltas(&shares, h1, &keys);
    let mut twice = inbox(&d, pid(2));
    twice.extend(inbox(&d, pid(2)));
    let helper = h2.remove(&pid(2)).unwrap();
    assert!(unexpected(helper.sigma(&twice, &pk, &mut rng())).contains("two messages"));

    // A "delta to ourselves" injected by the coordinator (ours never leaves us).
    let (h1, keys, _p, pk) = start(&shares, &params);
    let (mut h2, d) = deltas(&shares, h1, &keys);
    let mut with_self = inbox(&d, pid(2));
    let mut own = with_self[0].clone();
    own.from = pid(2);
    with_self.push(own);
    let helper = h2.remove(&pid(2)).unwrap();
    assert!(unexpected(helper.sigma(&with_self, &pk, &mut rng())).contains("party 2"));

    // Misaddressed: helper 3's inbox given to helper 2 (it is from 2, to 3).
    let (h1, keys, _p, pk) = start(&shares, &params);
    let (mut h2, d) = deltas(&shares, h1, &keys);
    let mut redirected = inbox(&d, pid(3));
    for x in &mut redirected {
        x.from = pid(3);
    }
    let helper = h2.remove(&pid(2)).unwrap();
    assert!(
        unexpected(helper.sigma(&redirected, &pk, &mut rng())).contains("addressed to party 3")
    );

    // Sigmas: missing one.
    let (h1, keys, p, pk) = start(&shares, &params);
    let (h2, d) = deltas(&shares, h1, &keys);
    let s = sigmas(h2, &d, &pk);
    assert!(matches!(
        p.finish(&keys, &s[..1], &shares[&pid(1)].public_key_package, 2),
        Err(ProtocolError::UnexpectedMessage { .. })
    ));
}

fn secrets_stay_out_of_debug<C: Ciphersuite>() {
    let shares = wallet::<C>();
    let params = repair_params::<C>(&[pid(2), pid(3)], pid(1));
    let (h1, keys, p, _pk) = start(&shares, &params);
    for h in h1.values() {
        assert!(format!("{h:?}").contains("<redacted>"));
    }
    assert!(format!("{p:?}").contains("<redacted>"));
    let (h2, _d) = deltas(&shares, h1, &keys);
    for h in h2.values() {
        assert!(format!("{h:?}").contains("<redacted>"));
    }
}

for_both_suites!(
    lost_device_share_is_repaired,
    three_helpers_repair_a_three_of_four_share,
    repair_then_refresh_retires_the_lost_share,
    bad_parameters_are_refused,
    repaired_share_must_match_the_public_key_package,
    helper_with_a_foreign_share_is_refused,
    tampered_sigma_names_its_sender,
    tampered_delta_names_its_sender,
    coordinator_cannot_substitute_helper_keys,
    inconsistent_views_do_not_open,
    delta_sets_must_be_exact,
    secrets_stay_out_of_debug,
);
