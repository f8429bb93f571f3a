//! Share repair in memory: a DKG, then helpers rebuild a lost share for the participant, the test
//! relaying every message (and playing the malicious coordinator). Every generic test runs for
//! both `frost-secp256k1-tr` and `frost-secp256k1`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use std::collections::BTreeMap;

use cosigner_protocol::ProtocolError;
use cosigner_protocol::dkg;
use cosigner_protocol::hpke;
use cosigner_protocol::repair::{self, RepairHelper1, RepairHelper2, RepairParticipant};
use cosigner_protocol::sign::{self, SignerSession};
use cosigner_protocol::wire::{DkgParams, RepairParams, SealedPackage, WalletId};
use frost_core::Ciphersuite;
use frost_core::keys::{KeyPackage, PublicKeyPackage};
use rand::rngs::ThreadRng;
use serde_bytes::ByteBuf;

type Tr = frost_secp256k1_tr::Secp256K1Sha256TR;
type Plain = frost_secp256k1::Secp256K1Sha256;

const WALLET: WalletId = WalletId([0x42; 16]);
const MESSAGE: &[u8] = b"32-byte sighash of a transaction";

fn rng() -> ThreadRng {
    rand::thread_rng()
}

struct Share<C: Ciphersuite> {
    key_package: KeyPackage<C>,
    public_key_package: PublicKeyPackage<C>,
}

type Shares<C> = BTreeMap<u16, Share<C>>;

fn run_dkg<C: Ciphersuite>(wallet_id: WalletId, min_signers: u16, parties: &[u16]) -> Shares<C> {
    let params = DkgParams {
        wallet_id,
        ciphersuite: C::ID.into(),
        min_signers,
        parties: parties.to_vec(),
    };
    let mut s1 = BTreeMap::new();
    let mut r1 = Vec::new();
    for me in parties {
        let (s, m) = dkg::start::<C>(&params, *me, &mut rng()).unwrap();
        s1.insert(*me, s);
        r1.push(m);
    }
    let mut s2 = BTreeMap::new();
    let mut sealed = Vec::new();
    for (me, s) in s1 {
        let (s, p) = s.handle_round1(&r1, &mut rng()).unwrap();
        s2.insert(me, s);
        sealed.extend(p);
    }
    let mut s3 = BTreeMap::new();
    let mut confirmations = Vec::new();
    for (me, s) in s2 {
        let (s, c) = s.handle_round2(&inbox(&sealed, me)).unwrap();
        s3.insert(me, s);
        confirmations.push(c);
    }
    s3.into_iter()
        .map(|(me, s)| {
            let out = s.handle_confirmations(&confirmations).unwrap();
            (
                me,
                Share {
                    key_package: out.key_package.clone(),
                    public_key_package: out.public_key_package.clone(),
                },
            )
        })
        .collect()
}

fn wallet<C: Ciphersuite>() -> Shares<C> {
    run_dkg::<C>(WALLET, 2, &[1, 2, 3])
}

fn inbox(sealed: &[SealedPackage], to: u16) -> Vec<SealedPackage> {
    sealed.iter().filter(|p| p.to == to).cloned().collect()
}

fn repair_params<C: Ciphersuite>(helpers: &[u16], participant: u16) -> RepairParams {
    RepairParams {
        wallet_id: WALLET,
        ciphersuite: C::ID.into(),
        epoch: 0,
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
    BTreeMap<u16, RepairHelper1<C>>,
    BTreeMap<u16, Vec<u8>>,
    RepairParticipant<C>,
    Vec<u8>,
) {
    let mut helpers = BTreeMap::new();
    let mut keys = BTreeMap::new();
    for h in &params.helpers {
        let (state, key) = repair::helper_start::<C>(
            params,
            *h,
            &shares[h].key_package,
            &shares[h].public_key_package,
            &mut rng(),
        )
        .unwrap();
        helpers.insert(*h, state);
        keys.insert(*h, key);
    }
    let (participant, participant_key) =
        repair::participant_start::<C>(params, &mut rng()).unwrap();
    (helpers, keys, participant, participant_key)
}

fn deltas<C: Ciphersuite>(
    shares: &Shares<C>,
    helpers: BTreeMap<u16, RepairHelper1<C>>,
    keys: &BTreeMap<u16, Vec<u8>>,
) -> (BTreeMap<u16, RepairHelper2<C>>, Vec<SealedPackage>) {
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
    helpers: BTreeMap<u16, RepairHelper2<C>>,
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
    helpers: &[u16],
    participant: u16,
) -> KeyPackage<C> {
    let params = repair_params::<C>(helpers, participant);
    let (h1, keys, p, pk) = start(shares, &params);
    let (h2, d) = deltas(shares, h1, &keys);
    let s = sigmas(h2, &d, &pk);
    let pkp = &shares[&helpers[0]].public_key_package;
    p.finish(&keys, &s, pkp, pkp.min_signers().unwrap())
        .unwrap()
}

fn sign_with<C: Ciphersuite>(keys: &BTreeMap<u16, &KeyPackage<C>>, pkp: &PublicKeyPackage<C>) {
    let signers: Vec<u16> = keys.keys().copied().collect();
    let mut sessions = BTreeMap::new();
    let mut commitments = BTreeMap::new();
    for (s, kp) in keys {
        let (session, c) = SignerSession::commit(kp, *s, MESSAGE, &signers, &mut rng()).unwrap();
        sessions.insert(*s, session);
        commitments.insert(*s, c);
    }
    let package = sign::signing_package::<C>(MESSAGE, &commitments).unwrap();
    let shares: BTreeMap<u16, Vec<u8>> = sessions
        .into_iter()
        .map(|(s, session)| (s, session.sign(keys[&s], &package).unwrap()))
        .collect();
    let signature = sign::aggregate(&package, &shares, pkp).unwrap();
    let signature = frost_core::Signature::<C>::deserialize(&signature).unwrap();
    pkp.verifying_key().verify(MESSAGE, &signature).unwrap();
}

fn culprit(result: Result<impl Sized, ProtocolError>) -> (u16, String) {
    match result {
        Err(ProtocolError::Culprit { party, reason }) => (party, reason),
        Err(e) => panic!("expected a culprit, got {e:?}"),
        Ok(_) => panic!("expected a culprit, got success"),
    }
}

fn params_error(result: Result<impl Sized, ProtocolError>) -> String {
    match result {
        Err(ProtocolError::Params { reason }) => reason,
        Err(e) => panic!("expected Params, got {e:?}"),
        Ok(_) => panic!("expected Params, got success"),
    }
}

fn flip(bytes: &ByteBuf, at: usize) -> ByteBuf {
    let mut v = bytes.to_vec();
    v[at] ^= 1;
    ByteBuf::from(v)
}

// ---------------------------------------------------------------------------------------------
// Happy paths.

fn lost_device_share_is_repaired<C: Ciphersuite>() {
    let shares = wallet::<C>();
    let repaired = run_repair(&shares, &[2, 3], 1);
    let original = &shares[&1].key_package;
    assert_eq!(repaired.verifying_share(), original.verifying_share());
    assert_eq!(repaired.signing_share(), original.signing_share());
    assert_eq!(repaired.identifier(), original.identifier());
    assert_eq!(repaired.verifying_key(), original.verifying_key());
    assert_eq!(repaired.min_signers(), original.min_signers());
    assert_eq!(&repaired, original);

    // The repaired share signs with party 2 (and with party 3).
    let pkp = &shares[&2].public_key_package;
    for other in [2, 3] {
        let keys = BTreeMap::from([(1, &repaired), (other, &shares[&other].key_package)]);
        sign_with(&keys, pkp);
    }

    // Helpers listed in any order; another party repaired.
    let repaired_3 = run_repair(&shares, &[2, 1], 3);
    assert_eq!(&repaired_3, &shares[&3].key_package);
}

fn three_helpers_repair_a_three_of_four_share<C: Ciphersuite>() {
    let shares = run_dkg::<C>(WALLET, 3, &[1, 2, 3, 4]);
    let repaired = run_repair(&shares, &[4, 2, 3], 1);
    assert_eq!(&repaired, &shares[&1].key_package);
    let keys = BTreeMap::from([
        (1, &repaired),
        (3, &shares[&3].key_package),
        (4, &shares[&4].key_package),
    ]);
    sign_with(&keys, &shares[&1].public_key_package);
}

/// The recovery flow: repair at the current epoch, then refresh with the repaired share. The lost
/// device's copy of the share is useless afterwards.
fn repair_then_refresh_retires_the_lost_share<C: Ciphersuite>() {
    use cosigner_protocol::refresh;
    use cosigner_protocol::wire::RefreshParams;

    let shares = wallet::<C>();
    let repaired = run_repair(&shares, &[2, 3], 1);
    let params = RefreshParams {
        wallet_id: WALLET,
        ciphersuite: C::ID.into(),
        min_signers: 2,
        parties: vec![1, 2, 3],
        from_epoch: 0,
    };
    let old_key = |p: u16| {
        if p == 1 {
            &repaired
        } else {
            &shares[&p].key_package
        }
    };
    let mut s1 = BTreeMap::new();
    let mut r1 = Vec::new();
    for me in [1u16, 2, 3] {
        let (s, m) = refresh::start::<C>(&params, me, &mut rng()).unwrap();
        s1.insert(me, s);
        r1.push(m);
    }
    let mut s2 = BTreeMap::new();
    let mut sealed = Vec::new();
    for (me, s) in s1 {
        let (s, p) = s.handle_round1(&r1, &mut rng()).unwrap();
        s2.insert(me, s);
        sealed.extend(p);
    }
    let mut s3 = BTreeMap::new();
    let mut confirmations = Vec::new();
    for (me, s) in s2 {
        let (s, c) = s
            .handle_round2(
                &inbox(&sealed, me),
                old_key(me),
                &shares[&me].public_key_package,
            )
            .unwrap();
        s3.insert(me, s);
        confirmations.push(c);
    }
    let new: BTreeMap<u16, _> = s3
        .into_iter()
        .map(|(me, s)| (me, s.handle_confirmations(&confirmations).unwrap()))
        .collect();
    let pkp = &new[&2].public_key_package;
    assert_eq!(
        pkp.verifying_key(),
        shares[&2].public_key_package.verifying_key()
    );
    let keys = BTreeMap::from([(1, &new[&1].key_package), (2, &new[&2].key_package)]);
    sign_with(&keys, pkp);

    // The lost phone's share (epoch 0) with a new share of party 2: refused, naming party 1.
    let signers = [1u16, 2];
    let mut sessions = BTreeMap::new();
    let mut commitments = BTreeMap::new();
    for (p, kp) in [(1u16, &shares[&1].key_package), (2, &new[&2].key_package)] {
        let (session, c) = SignerSession::commit(kp, p, MESSAGE, &signers, &mut rng()).unwrap();
        sessions.insert(p, (session, kp));
        commitments.insert(p, c);
    }
    let package = sign::signing_package::<C>(MESSAGE, &commitments).unwrap();
    let sig_shares: BTreeMap<u16, Vec<u8>> = sessions
        .into_iter()
        .map(|(p, (session, kp))| (p, session.sign(kp, &package).unwrap()))
        .collect();
    assert_eq!(culprit(sign::aggregate(&package, &sig_shares, pkp)).0, 1);
}

// ---------------------------------------------------------------------------------------------
// Refused repairs.

fn bad_parameters_are_refused<C: Ciphersuite>() {
    let shares = wallet::<C>();
    let start_2 = |p: &RepairParams| {
        repair::helper_start::<C>(
            p,
            2,
            &shares[&2].key_package,
            &shares[&2].public_key_package,
            &mut rng(),
        )
    };

    // The participant among the helpers.
    let reason = params_error(start_2(&repair_params::<C>(&[1, 2], 2)));
    assert!(reason.contains("must not be a helper"), "{reason}");
    let reason = params_error(repair::participant_start::<C>(
        &repair_params::<C>(&[1, 2], 1),
        &mut rng(),
    ));
    assert!(reason.contains("must not be a helper"), "{reason}");

    // Fewer helpers than the threshold.
    params_error(start_2(&repair_params::<C>(&[2], 1)));
    params_error(repair::participant_start::<C>(
        &repair_params::<C>(&[2], 1),
        &mut rng(),
    ));
    let big = run_dkg::<C>(WALLET, 3, &[1, 2, 3, 4]);
    let below = repair_params::<C>(&[2, 3], 1);
    let reason = params_error(repair::helper_start::<C>(
        &below,
        2,
        &big[&2].key_package,
        &big[&2].public_key_package,
        &mut rng(),
    ));
    assert!(reason.contains("below the threshold"), "{reason}");
    let (participant, _) = repair::participant_start::<C>(&below, &mut rng()).unwrap();
    let reason =
        params_error(participant.finish(&BTreeMap::new(), &[], &big[&1].public_key_package, 3));
    assert!(reason.contains("below the threshold"), "{reason}");

    // Not a helper; another party's key package; a non-member participant; another suite.
    params_error(start_2(&repair_params::<C>(&[1, 3], 4)));
    params_error(repair::helper_start::<C>(
        &repair_params::<C>(&[2, 3], 1),
        2,
        &shares[&3].key_package,
        &shares[&3].public_key_package,
        &mut rng(),
    ));
    let reason = params_error(start_2(&repair_params::<C>(&[2, 3], 9)));
    assert!(reason.contains("not a member"), "{reason}");
    let mut other_suite = repair_params::<C>(&[2, 3], 1);
    other_suite.ciphersuite = "FROST-ED25519-SHA512-v1".into();
    assert!(matches!(
        start_2(&other_suite),
        Err(ProtocolError::Ciphersuite { .. })
    ));
    // A key package of another wallet.
    let other = wallet::<C>();
    params_error(repair::helper_start::<C>(
        &repair_params::<C>(&[2, 3], 1),
        2,
        &other[&2].key_package,
        &shares[&2].public_key_package,
        &mut rng(),
    ));
}

fn repaired_share_must_match_the_public_key_package<C: Ciphersuite>() {
    let shares = wallet::<C>();
    let other_wallet = wallet::<C>();
    let params = repair_params::<C>(&[2, 3], 1);
    let (h1, keys, p, pk) = start(&shares, &params);
    let (h2, d) = deltas(&shares, h1, &keys);
    let s = sigmas(h2, &d, &pk);
    match p.finish(&keys, &s, &other_wallet[&1].public_key_package, 2) {
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
    let mut mixed: Shares<C> = BTreeMap::new();
    for p in [1u16, 2] {
        mixed.insert(
            p,
            Share {
                key_package: shares[&p].key_package.clone(),
                public_key_package: shares[&p].public_key_package.clone(),
            },
        );
    }
    mixed.insert(
        3,
        Share {
            key_package: other[&3].key_package.clone(),
            public_key_package: other[&3].public_key_package.clone(),
        },
    );
    let params = repair_params::<C>(&[2, 3], 1);
    let (mut h1, keys, _p, _pk) = start(&mixed, &params);
    let h = h1.remove(&2).unwrap();
    let (party, reason) = culprit(h.deltas(&mixed[&2].key_package, &keys, &mut rng()));
    assert_eq!(party, 3);
    assert!(reason.contains("not vouched for"), "{reason}");
}

fn tampered_sigma_names_its_sender<C: Ciphersuite>() {
    let shares = wallet::<C>();
    let params = repair_params::<C>(&[2, 3], 1);
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
        let (party, reason) = culprit(p.finish(&keys, &s, &shares[&1].public_key_package, 2));
        assert_eq!(party, from);
        assert!(reason.contains("sigma does not open"), "{reason}");
    }

    // The sigmas relabelled (each claims the other helper as its sender): neither opens.
    let (h1, keys, p, pk) = start(&shares, &params);
    let (h2, d) = deltas(&shares, h1, &keys);
    let mut relabelled = sigmas(h2, &d, &pk);
    for sigma in &mut relabelled {
        sigma.from = if sigma.from == 2 { 3 } else { 2 };
    }
    culprit(p.finish(&keys, &relabelled, &shares[&1].public_key_package, 2));
}

fn tampered_delta_names_its_sender<C: Ciphersuite>() {
    let shares = wallet::<C>();
    let params = repair_params::<C>(&[2, 3], 1);
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
            if delta.from == 3 {
                match field {
                    "enc" => delta.enc = flip(&delta.enc, at),
                    _ => delta.ciphertext = flip(&delta.ciphertext, at),
                }
            }
        }
        let helper = h2.remove(&2).unwrap();
        let (party, reason) = culprit(helper.sigma(&inbox(&d, 2), &pk, &mut rng()));
        assert_eq!(party, 3);
        assert!(reason.contains(expected), "{reason}");
    }

    // A delta forged by the coordinator: sealed to helper 2's real key with the right context,
    // carrying a value of its choice. It would open; the missing signature gives it away.
    let (h1, keys, _p, pk) = start(&shares, &params);
    let (mut h2, d) = deltas(&shares, h1, &keys);
    let honest = inbox(&d, 2).into_iter().next().unwrap();
    let mut forged = honest.clone();
    forged.ciphertext = ByteBuf::from(vec![0; honest.ciphertext.len()]);
    let helper = h2.remove(&2).unwrap();
    let (party, _) = culprit(helper.sigma(&[forged], &pk, &mut rng()));
    assert_eq!(party, 3);

    // A truncated delta.
    let (h1, keys, _p, pk) = start(&shares, &params);
    let (mut h2, d) = deltas(&shares, h1, &keys);
    let mut short = inbox(&d, 2).into_iter().next().unwrap();
    short.ciphertext = ByteBuf::from(short.ciphertext[..10].to_vec());
    let helper = h2.remove(&2).unwrap();
    assert_eq!(culprit(helper.sigma(&[short], &pk, &mut rng())).0, 3);
}

fn coordinator_cannot_substitute_helper_keys<C: Ciphersuite>() {
    let shares = wallet::<C>();
    let params = repair_params::<C>(&[2, 3], 1);

    // The coordinator shows helper 2 its own HPKE key as helper 3's, to read helper 2's delta.
    let (mut h1, keys, _p, _pk) = start(&shares, &params);
    let (_attacker_secret, attacker_key) = hpke::generate_keypair(&mut rng());
    let mut fake = keys.clone();
    let mut with_stolen_signature = attacker_key.clone();
    with_stolen_signature.extend_from_slice(&keys[&3][hpke::PUBLIC_KEY_LEN..]);
    fake.insert(3, with_stolen_signature);
    let helper = h1.remove(&2).unwrap();
    let (party, reason) = culprit(helper.deltas(&shares[&2].key_package, &fake, &mut rng()));
    assert_eq!(party, 3);
    assert!(reason.contains("not vouched for"), "{reason}");

    // A key without any signature.
    let (mut h1, keys, _p, _pk) = start(&shares, &params);
    let mut bare = keys.clone();
    bare.insert(3, attacker_key.clone());
    let helper = h1.remove(&2).unwrap();
    assert_eq!(
        culprit(helper.deltas(&shares[&2].key_package, &bare, &mut rng())).0,
        3
    );

    // Helper 3's genuine key from another repair (another participant) does not fit this one.
    let (mut h1, keys, _p, _pk) = start(&shares, &params);
    let (_, replayed) = repair::helper_start::<C>(
        &repair_params::<C>(&[1, 3], 2),
        3,
        &shares[&3].key_package,
        &shares[&3].public_key_package,
        &mut rng(),
    )
    .unwrap();
    let mut replay = keys.clone();
    replay.insert(3, replayed);
    let helper = h1.remove(&2).unwrap();
    assert_eq!(
        culprit(helper.deltas(&shares[&2].key_package, &replay, &mut rng())).0,
        3
    );

    // Our own key altered, or a key set with a stranger or a gap.
    let (mut h1, keys, _p, _pk) = start(&shares, &params);
    let mut ours = keys.clone();
    let mut k = ours[&2].clone();
    k[0] ^= 1;
    ours.insert(2, k);
    let helper = h1.remove(&2).unwrap();
    assert!(matches!(
        helper.deltas(&shares[&2].key_package, &ours, &mut rng()),
        Err(ProtocolError::Disagreement { .. })
    ));
    let (mut h1, keys, _p, _pk) = start(&shares, &params);
    let mut extra = keys.clone();
    extra.insert(1, attacker_key.clone());
    let helper = h1.remove(&2).unwrap();
    assert!(matches!(
        helper.deltas(&shares[&2].key_package, &extra, &mut rng()),
        Err(ProtocolError::UnexpectedMessage { .. })
    ));
    let (mut h1, keys, _p, _pk) = start(&shares, &params);
    let mut gap = keys.clone();
    gap.remove(&3);
    let helper = h1.remove(&3).unwrap();
    assert!(matches!(
        helper.deltas(&shares[&3].key_package, &gap, &mut rng()),
        Err(ProtocolError::UnexpectedMessage { .. })
    ));

    // Another key package than the one the repair started with.
    let (mut h1, keys, _p, _pk) = start(&shares, &params);
    let helper = h1.remove(&2).unwrap();
    params_error(helper.deltas(&shares[&3].key_package, &keys, &mut rng()));
}

fn inconsistent_views_do_not_open<C: Ciphersuite>() {
    let shares = wallet::<C>();
    let params = repair_params::<C>(&[2, 3], 1);

    // The participant is given other helper keys than the helpers used: no sigma opens.
    let (h1, keys, p, pk) = start(&shares, &params);
    let (h2, d) = deltas(&shares, h1, &keys);
    let s = sigmas(h2, &d, &pk);
    let (_, other_keys, _, _) = start(&shares, &params);
    let (_, reason) = culprit(p.finish(&other_keys, &s, &shares[&1].public_key_package, 2));
    assert!(reason.contains("does not open"), "{reason}");

    // A sigma sealed to another participant key.
    let (h1, keys, p, _pk) = start(&shares, &params);
    let (h2, d) = deltas(&shares, h1, &keys);
    let (_, stranger_key) = hpke::generate_keypair(&mut rng());
    let s = sigmas(h2, &d, &stranger_key);
    culprit(p.finish(&keys, &s, &shares[&1].public_key_package, 2));

    // A malformed participant key.
    let (h1, keys, _p, _pk) = start(&shares, &params);
    let (mut h2, d) = deltas(&shares, h1, &keys);
    let helper = h2.remove(&2).unwrap();
    params_error(helper.sigma(&inbox(&d, 2), &[1; 31], &mut rng()));
}

fn delta_sets_must_be_exact<C: Ciphersuite>() {
    let shares = wallet::<C>();
    let params = repair_params::<C>(&[2, 3], 1);
    let unexpected = |r: Result<SealedPackage, ProtocolError>| match r {
        Err(ProtocolError::UnexpectedMessage { actual, .. }) => actual,
        other => panic!("expected UnexpectedMessage, got {other:?}"),
    };

    // Missing.
    let (h1, keys, _p, pk) = start(&shares, &params);
    let (mut h2, _d) = deltas(&shares, h1, &keys);
    let helper = h2.remove(&2).unwrap();
    assert!(unexpected(helper.sigma(&[], &pk, &mut rng())).contains("no message from party 3"));

    // Duplicated.
    let (h1, keys, _p, pk) = start(&shares, &params);
    let (mut h2, d) = deltas(&shares, h1, &keys);
    let mut twice = inbox(&d, 2);
    twice.extend(inbox(&d, 2));
    let helper = h2.remove(&2).unwrap();
    assert!(unexpected(helper.sigma(&twice, &pk, &mut rng())).contains("two messages"));

    // A "delta to ourselves" injected by the coordinator (ours never leaves us).
    let (h1, keys, _p, pk) = start(&shares, &params);
    let (mut h2, d) = deltas(&shares, h1, &keys);
    let mut with_self = inbox(&d, 2);
    let mut own = with_self[0].clone();
    own.from = 2;
    with_self.push(own);
    let helper = h2.remove(&2).unwrap();
    assert!(unexpected(helper.sigma(&with_self, &pk, &mut rng())).contains("party 2"));

    // Misaddressed: helper 3's inbox given to helper 2 (it is from 2, to 3).
    let (h1, keys, _p, pk) = start(&shares, &params);
    let (mut h2, d) = deltas(&shares, h1, &keys);
    let mut redirected = inbox(&d, 3);
    for x in &mut redirected {
        x.from = 3;
    }
    let helper = h2.remove(&2).unwrap();
    assert!(
        unexpected(helper.sigma(&redirected, &pk, &mut rng())).contains("addressed to party 3")
    );

    // Sigmas: missing one.
    let (h1, keys, p, pk) = start(&shares, &params);
    let (h2, d) = deltas(&shares, h1, &keys);
    let s = sigmas(h2, &d, &pk);
    assert!(matches!(
        p.finish(&keys, &s[..1], &shares[&1].public_key_package, 2),
        Err(ProtocolError::UnexpectedMessage { .. })
    ));
}

fn secrets_stay_out_of_debug<C: Ciphersuite>() {
    let shares = wallet::<C>();
    let params = repair_params::<C>(&[2, 3], 1);
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

macro_rules! for_both_suites {
    ($($name:ident),* $(,)?) => {
        mod tr {
            $( #[test] fn $name() { super::$name::<super::Tr>(); } )*
        }
        mod plain {
            $( #[test] fn $name() { super::$name::<super::Plain>(); } )*
        }
    };
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
