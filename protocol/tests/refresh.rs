//! Proactive refresh in memory: a 2-of-3 DKG, then refreshes relayed by the test, which can also
//! be the malicious relay. Every generic test runs for both `frost-secp256k1-tr` and
//! `frost-secp256k1`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use std::collections::BTreeMap;

use cosigner_protocol::ProtocolError;
use cosigner_protocol::dkg;
use cosigner_protocol::refresh::{
    self, RefreshOutput, RefreshRound1, RefreshRound2, RefreshRound3,
};
use cosigner_protocol::sign::{self, SignerSession};
use cosigner_protocol::wire::{
    Confirmation, DkgParams, RefreshParams, Round1Message, SealedPackage, WalletId,
};
use frost_core::Ciphersuite;
use frost_core::keys::{KeyPackage, PublicKeyPackage, SigningShare};
use rand::rngs::ThreadRng;
use serde_bytes::ByteBuf;

type Tr = frost_secp256k1_tr::Secp256K1Sha256TR;
type Plain = frost_secp256k1::Secp256K1Sha256;

const PARTIES: [u16; 3] = [1, 2, 3];
const WALLET: WalletId = WalletId([0x42; 16]);
const MESSAGE: &[u8] = b"32-byte sighash of a transaction";

fn rng() -> ThreadRng {
    rand::thread_rng()
}

/// A share and its public key package, as a party stores them for one epoch.
struct Share<C: Ciphersuite> {
    key_package: KeyPackage<C>,
    public_key_package: PublicKeyPackage<C>,
}

type Shares<C> = BTreeMap<u16, Share<C>>;

fn dkg_params<C: Ciphersuite>() -> DkgParams {
    DkgParams {
        wallet_id: WALLET,
        ciphersuite: C::ID.into(),
        min_signers: 2,
        parties: PARTIES.to_vec(),
    }
}

fn refresh_params<C: Ciphersuite>(from_epoch: u64) -> RefreshParams {
    RefreshParams {
        wallet_id: WALLET,
        ciphersuite: C::ID.into(),
        min_signers: 2,
        parties: PARTIES.to_vec(),
        from_epoch,
    }
}

fn run_dkg<C: Ciphersuite>() -> Shares<C> {
    let params = dkg_params::<C>();
    let mut s1 = BTreeMap::new();
    let mut r1 = Vec::new();
    for me in PARTIES {
        let (s, m) = dkg::start::<C>(&params, me, &mut rng()).unwrap();
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

/// The packages addressed to `to`.
fn inbox(sealed: &[SealedPackage], to: u16) -> Vec<SealedPackage> {
    sealed.iter().filter(|p| p.to == to).cloned().collect()
}

fn round1<C: Ciphersuite>(
    params: &RefreshParams,
) -> (BTreeMap<u16, RefreshRound1<C>>, Vec<Round1Message>) {
    let mut states = BTreeMap::new();
    let mut messages = Vec::new();
    for me in &params.parties {
        let (state, message) = refresh::start::<C>(params, *me, &mut rng()).unwrap();
        states.insert(*me, state);
        messages.push(message);
    }
    (states, messages)
}

fn round2<C: Ciphersuite>(
    states: BTreeMap<u16, RefreshRound1<C>>,
    round1: &[Round1Message],
) -> (BTreeMap<u16, RefreshRound2<C>>, Vec<SealedPackage>) {
    let mut next = BTreeMap::new();
    let mut sealed = Vec::new();
    for (me, state) in states {
        let (state, packages) = state.handle_round1(round1, &mut rng()).unwrap();
        assert_eq!(packages.len(), round1.len() - 1);
        assert!(packages.iter().all(|p| p.from == me && p.to != me));
        next.insert(me, state);
        sealed.extend(packages);
    }
    (next, sealed)
}

fn round3<C: Ciphersuite>(
    states: BTreeMap<u16, RefreshRound2<C>>,
    sealed: &[SealedPackage],
    old: &Shares<C>,
) -> (BTreeMap<u16, RefreshRound3<C>>, Vec<Confirmation>) {
    let mut next = BTreeMap::new();
    let mut confirmations = Vec::new();
    for (me, state) in states {
        let (state, confirmation) = state
            .handle_round2(
                &inbox(sealed, me),
                &old[&me].key_package,
                &old[&me].public_key_package,
            )
            .unwrap();
        next.insert(me, state);
        confirmations.push(confirmation);
    }
    (next, confirmations)
}

fn run_refresh<C: Ciphersuite>(
    old: &Shares<C>,
    from_epoch: u64,
) -> BTreeMap<u16, RefreshOutput<C>> {
    let params = refresh_params::<C>(from_epoch);
    let (s1, r1) = round1::<C>(&params);
    let (s2, sealed) = round2(s1, &r1);
    let (s3, confirmations) = round3(s2, &sealed, old);
    s3.into_iter()
        .map(|(me, s)| (me, s.handle_confirmations(&confirmations).unwrap()))
        .collect()
}

fn to_shares<C: Ciphersuite>(outputs: &BTreeMap<u16, RefreshOutput<C>>) -> Shares<C> {
    outputs
        .iter()
        .map(|(me, o)| {
            (
                *me,
                Share {
                    key_package: o.key_package.clone(),
                    public_key_package: o.public_key_package.clone(),
                },
            )
        })
        .collect()
}

/// Commits and signs with the given key package per signer; returns the package and the shares.
fn sign_shares<C: Ciphersuite>(
    keys: &BTreeMap<u16, &KeyPackage<C>>,
    message: &[u8],
) -> (Vec<u8>, BTreeMap<u16, Vec<u8>>) {
    let signers: Vec<u16> = keys.keys().copied().collect();
    let mut sessions = BTreeMap::new();
    let mut commitments = BTreeMap::new();
    for (s, kp) in keys {
        let (session, c) = SignerSession::commit(kp, *s, message, &signers, &mut rng()).unwrap();
        sessions.insert(*s, session);
        commitments.insert(*s, c);
    }
    let package = sign::signing_package::<C>(message, &commitments).unwrap();
    let shares = sessions
        .into_iter()
        .map(|(s, session)| (s, session.sign(keys[&s], &package).unwrap()))
        .collect();
    (package, shares)
}

fn verify<C: Ciphersuite>(pkp: &PublicKeyPackage<C>, message: &[u8], signature: &[u8]) -> bool {
    let signature = frost_core::Signature::<C>::deserialize(signature).unwrap();
    pkp.verifying_key().verify(message, &signature).is_ok()
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

fn disagreement(result: Result<impl Sized, ProtocolError>) -> String {
    match result {
        Err(ProtocolError::Disagreement { reason }) => reason,
        Err(e) => panic!("expected Disagreement, got {e:?}"),
        Ok(_) => panic!("expected Disagreement, got success"),
    }
}

/// A well-formed refresh round-2 package whose share matches nobody's commitment.
fn bogus_package<C: Ciphersuite>() -> Vec<u8> {
    let mut one = [0u8; 32];
    one[31] = 1;
    let share = SigningShare::<C>::deserialize(&one).unwrap();
    frost_core::keys::dkg::round2::Package::<C>::new(share)
        .serialize()
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// Happy path.

fn refresh_keeps_the_key_and_retires_old_shares<C: Ciphersuite>() {
    let old = run_dkg::<C>();
    let outputs = run_refresh::<C>(&old, 0);
    let group_key = old[&1].public_key_package.verifying_key();

    let transcript = outputs[&1].transcript_hash;
    for (me, out) in &outputs {
        assert_eq!(out.public_key_package.verifying_key(), group_key);
        assert_eq!(out.key_package.verifying_key(), group_key);
        assert_eq!(out.public_key_package, outputs[&1].public_key_package);
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
        outputs[&1].public_key_package, old[&1].public_key_package,
        "the verifying shares must change"
    );

    // Every pair of new shares signs under the unchanged group key.
    let new = to_shares(&outputs);
    for pair in [[1, 2], [1, 3], [2, 3]] {
        let keys: BTreeMap<u16, &KeyPackage<C>> =
            pair.iter().map(|p| (*p, &new[p].key_package)).collect();
        let (package, shares) = sign_shares::<C>(&keys, MESSAGE);
        let signature = sign::aggregate(&package, &shares, &new[&1].public_key_package).unwrap();
        assert!(verify(&old[&1].public_key_package, MESSAGE, &signature));
    }

    // Until finalized, the old epoch still signs on its own.
    let keys: BTreeMap<u16, &KeyPackage<C>> =
        [1, 2].iter().map(|p| (*p, &old[p].key_package)).collect();
    let (package, shares) = sign_shares::<C>(&keys, MESSAGE);
    sign::aggregate(&package, &shares, &old[&1].public_key_package).unwrap();

    // An old-epoch share combined with a new-epoch one yields no valid signature, whichever
    // public key package checks it, and even the raw sum of the shares does not verify.
    for (old_party, new_party) in [(1, 2), (2, 1), (3, 1)] {
        let keys: BTreeMap<u16, &KeyPackage<C>> = BTreeMap::from([
            (old_party, &old[&old_party].key_package),
            (new_party, &new[&new_party].key_package),
        ]);
        let (package, shares) = sign_shares::<C>(&keys, MESSAGE);
        let (party, _) = culprit(sign::aggregate(
            &package,
            &shares,
            &new[&1].public_key_package,
        ));
        assert_eq!(party, old_party, "the new package names the old share");
        let (party, _) = culprit(sign::aggregate(
            &package,
            &shares,
            &old[&1].public_key_package,
        ));
        assert_eq!(party, new_party, "the old package names the new share");

        let signing_package = frost_core::SigningPackage::<C>::deserialize(&package).unwrap();
        let decoded: BTreeMap<_, _> = shares
            .iter()
            .map(|(p, s)| {
                (
                    frost_core::Identifier::<C>::try_from(*p).unwrap(),
                    frost_core::round2::SignatureShare::<C>::deserialize(s).unwrap(),
                )
            })
            .collect();
        // Without per-share checks (a coordinator that skips them): the sum does not verify.
        for pkp in [&old[&1].public_key_package, &new[&1].public_key_package] {
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
    params.parties = vec![3, 1, 2];
    let (s1, r1) = round1::<C>(&params);
    for s in s1.values() {
        assert_eq!(s.params().parties, PARTIES.to_vec());
        assert_eq!(s.params().from_epoch, 1);
    }
    let (s2, sealed) = round2(s1, &r1);
    let (s3, confirmations) = round3(s2, &sealed, &first);
    for (me, s) in &s3 {
        assert_eq!(s.me(), *me);
        assert_eq!(
            s.key_package().identifier(),
            first[me].key_package.identifier()
        );
        assert_eq!(
            s.public_key_package().verifying_key(),
            old[&1].public_key_package.verifying_key()
        );
    }
    let second: Shares<C> = s3
        .into_iter()
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
        .collect();
    let keys: BTreeMap<u16, &KeyPackage<C>> = [2, 3]
        .iter()
        .map(|p| (*p, &second[p].key_package))
        .collect();
    let (package, shares) = sign_shares::<C>(&keys, MESSAGE);
    let signature = sign::aggregate(&package, &shares, &second[&2].public_key_package).unwrap();
    assert!(verify(&old[&1].public_key_package, MESSAGE, &signature));
}

// ---------------------------------------------------------------------------------------------
// Refused refreshes.

fn refresh_of_a_subset_is_refused<C: Ciphersuite>() {
    let old = run_dkg::<C>();
    let mut params = refresh_params::<C>(0);
    params.parties = vec![1, 2];

    // Refused up front by the check callers can run before starting...
    let reason = params_error(refresh::check_old_shares(
        &params,
        1,
        &old[&1].key_package,
        &old[&1].public_key_package,
    ));
    assert!(
        reason.contains("refresh must include every party: missing 3"),
        "{reason}"
    );

    // ...and by round 2 in any case, before any new share exists.
    let (s1, r1) = round1::<C>(&params);
    let (s2, sealed) = round2(s1, &r1);
    for (me, s) in s2 {
        let reason = params_error(s.handle_round2(
            &inbox(&sealed, me),
            &old[&me].key_package,
            &old[&me].public_key_package,
        ));
        assert!(
            reason.contains("refresh must include every party: missing 3"),
            "{reason}"
        );
    }

    // A party the wallet does not have is refused too.
    let mut stranger = refresh_params::<C>(0);
    stranger.parties = vec![1, 2, 3, 4];
    let reason = params_error(refresh::check_old_shares(
        &stranger,
        1,
        &old[&1].key_package,
        &old[&1].public_key_package,
    ));
    assert!(reason.contains("party 4 is not a member"), "{reason}");
}

fn changed_threshold_is_refused<C: Ciphersuite>() {
    let old = run_dkg::<C>();
    let mut params = refresh_params::<C>(0);
    params.min_signers = 3;
    let reason = params_error(refresh::check_old_shares(
        &params,
        1,
        &old[&1].key_package,
        &old[&1].public_key_package,
    ));
    assert!(reason.contains("cannot change the threshold"), "{reason}");

    // All parties agreeing on the new threshold does not help.
    let (s1, r1) = round1::<C>(&params);
    let (s2, sealed) = round2(s1, &r1);
    for (me, s) in s2 {
        let reason = params_error(s.handle_round2(
            &inbox(&sealed, me),
            &old[&me].key_package,
            &old[&me].public_key_package,
        ));
        assert!(reason.contains("cannot change the threshold"), "{reason}");
    }

    // One party with another threshold sends a package of another size: named.
    let params = refresh_params::<C>(0);
    let (mut s1, mut r1) = round1::<C>(&params);
    let mut odd = params.clone();
    odd.min_signers = 3;
    let (_, m3) = refresh::start::<C>(&odd, 3, &mut rng()).unwrap();
    r1.retain(|m| m.from != 3);
    r1.push(m3);
    let s = s1.remove(&1).unwrap();
    assert_eq!(culprit(s.handle_round1(&r1, &mut rng())).0, 3);

    // Bad parameters are refused at the start.
    for (min_signers, parties, me) in [
        (1, vec![1, 2, 3], 1),
        (4, vec![1, 2, 3], 1),
        (2, vec![1, 2, 3], 4),
    ] {
        let mut p = refresh_params::<C>(0);
        p.min_signers = min_signers;
        p.parties = parties;
        params_error(refresh::start::<C>(&p, me, &mut rng()));
    }
    let mut other_suite = refresh_params::<C>(0);
    other_suite.ciphersuite = "FROST-ED25519-SHA512-v1".into();
    assert!(matches!(
        refresh::start::<C>(&other_suite, 1, &mut rng()),
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
        1,
        &old[&2].key_package,
        &old[&1].public_key_package,
    ));
    // A key package of another wallet.
    params_error(refresh::check_old_shares(
        &params,
        1,
        &other_wallet[&1].key_package,
        &old[&1].public_key_package,
    ));
    refresh::check_old_shares(
        &params,
        1,
        &old[&1].key_package,
        &old[&1].public_key_package,
    )
    .unwrap();
}

fn dkg_round1_message_is_refused<C: Ciphersuite>() {
    let params = refresh_params::<C>(0);
    let (mut s1, mut r1) = round1::<C>(&params);
    let (_, dkg_message) = dkg::start::<C>(&dkg_params::<C>(), 2, &mut rng()).unwrap();
    r1.retain(|m| m.from != 2);
    r1.push(dkg_message);
    let s = s1.remove(&1).unwrap();
    let (party, reason) = culprit(s.handle_round1(&r1, &mut rng()));
    assert_eq!(party, 2);
    assert!(reason.contains("DKG"), "{reason}");
}

fn packages_of_another_epoch_or_protocol_are_refused<C: Ciphersuite>() {
    let old = run_dkg::<C>();
    let params = refresh_params::<C>(0);
    let mut next_epoch = params.clone();
    next_epoch.from_epoch = 1;
    let package = bogus_package::<C>();

    for (how, expected) in [
        // Sealed for the refresh of another epoch (all else the same): does not open.
        ("other epoch", "does not open"),
        // Sealed as a DKG round-2 package of the same wallet: does not open.
        ("dkg", "does not open"),
        // Control: sealed for this very refresh, it opens, and the bad share is caught.
        ("this refresh", "does not match its commitment"),
    ] {
        let (s1, r1) = round1::<C>(&params);
        let key_of_1 = r1
            .iter()
            .find(|m| m.from == 1)
            .unwrap()
            .hpke_public_key
            .clone();
        let (mut s2, sealed) = round2(s1, &r1);
        let transcript = *s2[&1].transcript_hash();
        let forged = match how {
            "other epoch" => refresh::seal_package(
                &next_epoch,
                2,
                1,
                &transcript,
                &key_of_1,
                &package,
                &mut rng(),
            ),
            "dkg" => dkg::seal_package(
                &dkg_params::<C>(),
                2,
                1,
                &transcript,
                &key_of_1,
                &package,
                &mut rng(),
            ),
            _ => refresh::seal_package(&params, 2, 1, &transcript, &key_of_1, &package, &mut rng()),
        }
        .unwrap();
        let mut inbox1 = inbox(&sealed, 1);
        inbox1.retain(|p| p.from != 2);
        inbox1.push(forged);
        let s = s2.remove(&1).unwrap();
        let (party, reason) =
            culprit(s.handle_round2(&inbox1, &old[&1].key_package, &old[&1].public_key_package));
        assert_eq!(party, 2, "{how}");
        assert!(reason.contains(expected), "{how}: {reason}");
    }

    // A whole refresh run for another epoch: its packages do not open in this one.
    let (s1, r1) = round1::<C>(&params);
    let (mut s2, sealed) = round2(s1, &r1);
    let (o1, or1) = round1::<C>(&next_epoch);
    let (_, other_sealed) = round2(o1, &or1);
    let mut inbox1 = inbox(&sealed, 1);
    inbox1.retain(|p| p.from != 3);
    inbox1.extend(
        other_sealed
            .into_iter()
            .filter(|p| p.from == 3 && p.to == 1),
    );
    let s = s2.remove(&1).unwrap();
    assert_eq!(
        culprit(s.handle_round2(&inbox1, &old[&1].key_package, &old[&1].public_key_package)).0,
        3
    );
}

fn corrupted_package_names_its_sender<C: Ciphersuite>() {
    let old = run_dkg::<C>();
    let params = refresh_params::<C>(0);
    for (from, byte) in [(2u16, 0usize), (3, 17)] {
        let (s1, r1) = round1::<C>(&params);
        let (mut s2, sealed) = round2(s1, &r1);
        let mut inbox1 = inbox(&sealed, 1);
        for p in &mut inbox1 {
            if p.from == from {
                let mut ct = p.ciphertext.to_vec();
                ct[byte] ^= 1;
                p.ciphertext = ByteBuf::from(ct);
            }
        }
        let s = s2.remove(&1).unwrap();
        let (party, reason) =
            culprit(s.handle_round2(&inbox1, &old[&1].key_package, &old[&1].public_key_package));
        assert_eq!(party, from);
        assert!(reason.contains("does not open"), "{reason}");
    }

    // A package redirected to another recipient does not open for it either.
    let (s1, r1) = round1::<C>(&params);
    let (mut s2, sealed) = round2(s1, &r1);
    let mut inbox1 = inbox(&sealed, 1);
    inbox1.retain(|p| p.from != 2);
    let mut redirected = sealed
        .iter()
        .find(|p| p.from == 2 && p.to == 3)
        .unwrap()
        .clone();
    redirected.to = 1;
    inbox1.push(redirected);
    let s = s2.remove(&1).unwrap();
    assert_eq!(
        culprit(s.handle_round2(&inbox1, &old[&1].key_package, &old[&1].public_key_package)).0,
        2
    );
}

fn disagreeing_confirmations_yield_no_share<C: Ciphersuite>() {
    let old = run_dkg::<C>();
    let params = refresh_params::<C>(0);
    let (s1, r1) = round1::<C>(&params);
    let (s2, sealed) = round2(s1, &r1);
    let (mut s3, confirmations) = round3(s2, &sealed, &old);

    let mut other_key = confirmations.clone();
    for c in &mut other_key {
        if c.from == 3 {
            c.public_key_package_hash = ByteBuf::from(vec![0; 32]);
        }
    }
    let s = s3.remove(&1).unwrap();
    let reason = disagreement(s.handle_confirmations(&other_key));
    assert!(reason.contains("[3]"), "{reason}");

    let mut other_transcript = confirmations.clone();
    for c in &mut other_transcript {
        if c.from == 2 {
            c.transcript_hash = ByteBuf::from(vec![0; 32]);
        }
    }
    let s = s3.remove(&3).unwrap();
    let reason = disagreement(s.handle_confirmations(&other_transcript));
    assert!(reason.contains("[2]"), "{reason}");

    // Our own confirmation altered by the relay.
    let mut ours_altered = confirmations.clone();
    for c in &mut ours_altered {
        if c.from == 2 {
            c.public_key_package_hash = ByteBuf::from(vec![1; 32]);
        }
    }
    let s = s3.remove(&2).unwrap();
    disagreement(s.handle_confirmations(&ours_altered));

    // A DKG confirmation of the same wallet is not a refresh confirmation.
    let (s1, r1) = round1::<C>(&params);
    let (s2, sealed) = round2(s1, &r1);
    let (mut s3, mut confirmations) = round3(s2, &sealed, &old);
    let dkg_confirmation = Confirmation {
        from: 3,
        transcript_hash: ByteBuf::from(vec![7; 32]),
        public_key_package_hash: ByteBuf::from(
            dkg::public_key_package_hash(&old[&3].public_key_package)
                .unwrap()
                .to_vec(),
        ),
    };
    confirmations.retain(|c| c.from != 3);
    confirmations.push(dkg_confirmation);
    let s = s3.remove(&1).unwrap();
    disagreement(s.handle_confirmations(&confirmations));
}

fn relay_inconsistencies_are_caught<C: Ciphersuite>() {
    let old = run_dkg::<C>();
    let params = refresh_params::<C>(0);

    // Our own round-1 message altered.
    let (mut s1, mut r1) = round1::<C>(&params);
    for m in &mut r1 {
        if m.from == 1 {
            let mut key = m.hpke_public_key.to_vec();
            key[0] ^= 1;
            m.hpke_public_key = ByteBuf::from(key);
        }
    }
    disagreement(s1.remove(&1).unwrap().handle_round1(&r1, &mut rng()));

    // A missing round-1 message.
    let (mut s1, r1) = round1::<C>(&params);
    let short: Vec<Round1Message> = r1.iter().filter(|m| m.from != 3).cloned().collect();
    assert!(matches!(
        s1.remove(&1).unwrap().handle_round1(&short, &mut rng()),
        Err(ProtocolError::UnexpectedMessage { .. })
    ));

    // Party 3 is shown another round 1 than parties 1 and 2: the packages between the two views
    // do not open, so the split shows in round 2.
    let (s1, r1) = round1::<C>(&params);
    let mut split = r1.clone();
    let (_, other_2) = refresh::start::<C>(&params, 2, &mut rng()).unwrap();
    split.retain(|m| m.from != 2);
    split.push(other_2);
    let mut s2 = BTreeMap::new();
    let mut sealed = Vec::new();
    for (me, s) in s1 {
        let view = if me == 3 { &split } else { &r1 };
        let (s, p) = s.handle_round1(view, &mut rng()).unwrap();
        s2.insert(me, s);
        sealed.extend(p);
    }
    let s = s2.remove(&3).unwrap();
    let (party, _) = culprit(s.handle_round2(
        &inbox(&sealed, 3),
        &old[&3].key_package,
        &old[&3].public_key_package,
    ));
    assert!(party == 1 || party == 2);
}

fn secrets_stay_out_of_debug<C: Ciphersuite>() {
    let old = run_dkg::<C>();
    let params = refresh_params::<C>(0);
    let (s1, r1) = round1::<C>(&params);
    for s in s1.values() {
        assert!(format!("{s:?}").contains("<redacted>"));
    }
    let (s2, sealed) = round2(s1, &r1);
    for s in s2.values() {
        assert!(format!("{s:?}").contains("<redacted>"));
    }
    let (s3, confirmations) = round3(s2, &sealed, &old);
    for s in s3.values() {
        let debug = format!("{s:?}");
        let share = hex::encode(s.key_package().signing_share().serialize());
        assert!(!debug.contains(&share));
        assert!(debug.contains("<redacted>"));
    }
    for (_, s) in s3 {
        let out = s.handle_confirmations(&confirmations).unwrap();
        let debug = format!("{out:?}");
        let share = hex::encode(out.key_package.signing_share().serialize());
        assert!(!debug.contains(&share));
        assert!(debug.contains("<redacted>"));
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
