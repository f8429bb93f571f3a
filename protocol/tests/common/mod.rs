//! What the in-memory ceremony tests share: the honest relay of a DKG or a refresh round by round
//! (the test is the coordinator, so each test can also tamper with any message in between),
//! threshold signing, and the error-kind extractors. Every test file uses a part of it.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fmt::Debug;

use cosigner_protocol::ProtocolError;
use cosigner_protocol::dkg::{self, DkgOutput, DkgRound1, DkgRound2, DkgRound3};
use cosigner_protocol::id::PartyId;
use cosigner_protocol::keygen::{self, KeygenParams};
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

pub type Tr = frost_secp256k1_tr::Secp256K1Sha256TR;
pub type Plain = frost_secp256k1::Secp256K1Sha256;

pub const PARTIES: [PartyId; 3] = [PartyId::DEVICE, PartyId::PROVIDER, PartyId::RECOVERY];
pub const WALLET: WalletId = WalletId([0x42; 16]);
pub const MESSAGE: &[u8] = b"32-byte sighash of a transaction";

/// Runs each named generic test (`fn name<C: Ciphersuite>()` at the test file's root) once for
/// `frost-secp256k1-tr` and once for `frost-secp256k1`.
#[allow(unused_macros)]
macro_rules! for_both_suites {
    ($($name:ident),* $(,)?) => {
        mod tr {
            $( #[test] fn $name() { super::$name::<$crate::common::Tr>(); } )*
        }
        mod plain {
            $( #[test] fn $name() { super::$name::<$crate::common::Plain>(); } )*
        }
    };
}
#[allow(unused_imports)]
pub(crate) use for_both_suites;

pub fn rng() -> ThreadRng {
    rand::thread_rng()
}

/// The packages addressed to `to`.
pub fn inbox(sealed: &[SealedPackage], to: PartyId) -> Vec<SealedPackage> {
    sealed.iter().filter(|p| p.to == to).cloned().collect()
}

/// A copy of the package `from` sealed for `to`.
///
/// # Panics
/// If there is none.
pub fn package(sealed: &[SealedPackage], from: PartyId, to: PartyId) -> SealedPackage {
    match sealed.iter().find(|p| p.from == from && p.to == to) {
        Some(p) => p.clone(),
        None => panic!("no package from {from} to {to}"),
    }
}

/// `bytes` with bit 0 of byte `at` flipped.
pub fn flip(bytes: &ByteBuf, at: usize) -> ByteBuf {
    let mut v = bytes.to_vec();
    v[at] ^= 1;
    ByteBuf::from(v)
}

// ---------------------------------------------------------------------------------------------
// Parameters and shares.

/// A 2-of-3 DKG of [`WALLET`] by [`PARTIES`].
pub fn dkg_params<C: Ciphersuite>() -> DkgParams {
    DkgParams {
        wallet_id: WALLET,
        ciphersuite: C::ID.into(),
        min_signers: 2,
        parties: PARTIES.to_vec(),
    }
}

/// The refresh of that wallet's epoch `from_epoch`.
pub fn refresh_params<C: Ciphersuite>(from_epoch: u64) -> RefreshParams {
    let from_epoch = cosigner_protocol::id::Epoch(from_epoch);
    RefreshParams {
        wallet_id: WALLET,
        ciphersuite: C::ID.into(),
        min_signers: 2,
        parties: PARTIES.to_vec(),
        from_epoch,
    }
}

/// A share and its public key package, as a party stores them for one epoch.
#[derive(Clone)]
pub struct Share<C: Ciphersuite> {
    pub key_package: KeyPackage<C>,
    pub public_key_package: PublicKeyPackage<C>,
}

pub type Shares<C> = BTreeMap<PartyId, Share<C>>;

/// What each party stores of a DKG's or a refresh's output.
pub fn to_shares<C: Ciphersuite>(outputs: &BTreeMap<PartyId, keygen::Output<C>>) -> Shares<C> {
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

// ---------------------------------------------------------------------------------------------
// The honest relay, round by round. Round 2 (handling the round-1 broadcast) and the confirmations
// are the same for a DKG and a refresh; round 1 and the opening of the sealed packages are each
// ceremony's own.

fn round1<S>(
    parties: &[PartyId],
    start: impl Fn(PartyId) -> cosigner_protocol::Result<(S, Round1Message)>,
) -> (BTreeMap<PartyId, S>, Vec<Round1Message>) {
    let mut states = BTreeMap::new();
    let mut messages = Vec::new();
    for me in parties {
        let (state, message) = start(*me).unwrap();
        states.insert(*me, state);
        messages.push(message);
    }
    (states, messages)
}

/// Every party's DKG round 1: the states by party and the broadcast.
pub fn dkg_round1<C: Ciphersuite>(
    params: &DkgParams,
) -> (BTreeMap<PartyId, DkgRound1<C>>, Vec<Round1Message>) {
    round1(&params.parties, |me| {
        dkg::start::<C>(params, me, &mut rng())
    })
}

/// Every party's refresh round 1.
pub fn refresh_round1<C: Ciphersuite>(
    params: &RefreshParams,
) -> (BTreeMap<PartyId, RefreshRound1<C>>, Vec<Round1Message>) {
    round1(&params.parties, |me| {
        refresh::start::<C>(params, me, &mut rng())
    })
}

/// Every party handles the whole round-1 broadcast and seals one package to each other party.
pub fn round2<C: Ciphersuite, P: KeygenParams>(
    states: BTreeMap<PartyId, keygen::Round1<C, P>>,
    round1: &[Round1Message],
) -> (BTreeMap<PartyId, keygen::Round2<C, P>>, Vec<SealedPackage>) {
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

fn round3<S, T>(
    states: BTreeMap<PartyId, S>,
    sealed: &[SealedPackage],
    open: impl Fn(PartyId, S, &[SealedPackage]) -> cosigner_protocol::Result<(T, Confirmation)>,
) -> (BTreeMap<PartyId, T>, Vec<Confirmation>) {
    let mut next = BTreeMap::new();
    let mut confirmations = Vec::new();
    for (me, state) in states {
        let (state, confirmation) = open(me, state, &inbox(sealed, me)).unwrap();
        next.insert(me, state);
        confirmations.push(confirmation);
    }
    (next, confirmations)
}

/// Every party opens the DKG packages sealed to it and confirms.
pub fn dkg_round3<C: Ciphersuite>(
    states: BTreeMap<PartyId, DkgRound2<C>>,
    sealed: &[SealedPackage],
) -> (BTreeMap<PartyId, DkgRound3<C>>, Vec<Confirmation>) {
    round3(states, sealed, |_, state, inbox| state.handle_round2(inbox))
}

/// Every party opens the refresh packages sealed to it, adds them to its `old` share and confirms.
pub fn refresh_round3<C: Ciphersuite>(
    states: BTreeMap<PartyId, RefreshRound2<C>>,
    sealed: &[SealedPackage],
    old: &Shares<C>,
) -> (BTreeMap<PartyId, RefreshRound3<C>>, Vec<Confirmation>) {
    round3(states, sealed, |me, state, inbox| {
        state.handle_round2(inbox, &old[&me].key_package, &old[&me].public_key_package)
    })
}

/// Every party checks the confirmations and takes its output.
pub fn finish<C: Ciphersuite, P: KeygenParams>(
    states: BTreeMap<PartyId, keygen::Round3<C, P>>,
    confirmations: &[Confirmation],
) -> BTreeMap<PartyId, keygen::Output<C>> {
    states
        .into_iter()
        .map(|(me, s)| (me, s.handle_confirmations(confirmations).unwrap()))
        .collect()
}

/// A whole DKG, honest relay.
pub fn run_dkg_with<C: Ciphersuite>(params: &DkgParams) -> BTreeMap<PartyId, DkgOutput<C>> {
    let (s1, r1) = dkg_round1::<C>(params);
    let (s2, sealed) = round2(s1, &r1);
    let (s3, confirmations) = dkg_round3(s2, &sealed);
    finish(s3, &confirmations)
}

/// A whole 2-of-3 DKG ([`dkg_params`]), honest relay.
pub fn run_dkg<C: Ciphersuite>() -> BTreeMap<PartyId, DkgOutput<C>> {
    run_dkg_with(&dkg_params::<C>())
}

/// A whole refresh of the `old` shares of epoch `from_epoch`, honest relay.
pub fn run_refresh<C: Ciphersuite>(
    old: &Shares<C>,
    from_epoch: u64,
) -> BTreeMap<PartyId, RefreshOutput<C>> {
    let (s1, r1) = refresh_round1::<C>(&refresh_params::<C>(from_epoch));
    let (s2, sealed) = round2(s1, &r1);
    let (s3, confirmations) = refresh_round3(s2, &sealed, old);
    finish(s3, &confirmations)
}

/// A well-formed round-2 package (DKG or refresh) carrying a share that matches nobody's
/// commitment.
pub fn bogus_round2_package<C: Ciphersuite>() -> Vec<u8> {
    let mut one = [0u8; 32];
    one[31] = 1;
    let share = SigningShare::<C>::deserialize(&one).unwrap();
    frost_core::keys::dkg::round2::Package::<C>::new(share)
        .serialize()
        .unwrap()
}

/// `confirmations` with party `from`'s changed by `edit` (a relay or a party lying about it).
pub fn altered(
    confirmations: &[Confirmation],
    from: PartyId,
    edit: impl Fn(&mut Confirmation),
) -> Vec<Confirmation> {
    let mut altered = confirmations.to_vec();
    altered.iter_mut().filter(|c| c.from == from).for_each(edit);
    altered
}

/// `value`'s Debug redacts its secrets.
pub fn assert_redacted(value: &impl Debug) {
    assert!(format!("{value:?}").contains("<redacted>"));
}

/// Runs a ceremony from its round-1 states `s1` (which sent `r1`) to the end, `round3` being its
/// round 3 (the DKG's, or the refresh's with the old shares), and checks at every step that no
/// state's nor output's Debug shows a secret: states redact, round-3 states and outputs do not
/// show their new signing share.
pub fn assert_secrets_stay_out_of_debug<C: Ciphersuite, P: KeygenParams>(
    s1: BTreeMap<PartyId, keygen::Round1<C, P>>,
    r1: &[Round1Message],
    round3: impl FnOnce(
        BTreeMap<PartyId, keygen::Round2<C, P>>,
        &[SealedPackage],
    ) -> (BTreeMap<PartyId, keygen::Round3<C, P>>, Vec<Confirmation>),
) {
    s1.values().for_each(assert_redacted);
    let (s2, sealed) = round2(s1, r1);
    s2.values().for_each(assert_redacted);
    let (s3, confirmations) = round3(s2, &sealed);
    for s in s3.values() {
        assert_hides_share(s, s.key_package().signing_share());
    }
    for out in finish(s3, &confirmations).values() {
        assert_hides_share(out, out.key_package.signing_share());
    }
}

/// `value`'s Debug redacts its secrets and does not show `share`.
pub fn assert_hides_share<C: Ciphersuite>(value: &impl Debug, share: &SigningShare<C>) {
    let debug = format!("{value:?}");
    assert!(!debug.contains(&hex::encode(share.serialize())));
    assert!(debug.contains("<redacted>"));
}

// ---------------------------------------------------------------------------------------------
// Signing.

/// Every signer commits and signs `message` with its key package; the signer list is `signers`'
/// parties in the order given. Returns the signing package and the signature shares.
pub fn sign_shares<C: Ciphersuite>(
    signers: &[(PartyId, &KeyPackage<C>)],
    message: &[u8],
) -> (Vec<u8>, BTreeMap<PartyId, Vec<u8>>) {
    let parties: Vec<PartyId> = signers.iter().map(|(p, _)| *p).collect();
    let mut sessions = BTreeMap::new();
    let mut commitments = BTreeMap::new();
    for (p, kp) in signers {
        let (session, c) = SignerSession::commit(kp, *p, message, &parties, &mut rng()).unwrap();
        sessions.insert(*p, (session, *kp));
        commitments.insert(*p, c);
    }
    let package = sign::signing_package::<C>(message, &commitments).unwrap();
    let shares = sessions
        .into_iter()
        .map(|(p, (session, kp))| (p, session.sign(kp, &package).unwrap()))
        .collect();
    (package, shares)
}

/// Signs `message` with the DKG outputs of `signers`, as the coordinator and every signer.
pub fn sign_with<C: Ciphersuite>(
    keys: &BTreeMap<PartyId, DkgOutput<C>>,
    signers: &[PartyId],
    message: &[u8],
) -> Vec<u8> {
    let key_packages: Vec<_> = signers.iter().map(|s| (*s, &keys[s].key_package)).collect();
    let (package, shares) = sign_shares(&key_packages, message);
    sign::aggregate(&package, &shares, &keys[&signers[0]].public_key_package).unwrap()
}

/// Whether `signers` of `shares` sign [`MESSAGE`] under `key`'s group key (aggregated with the
/// first signer's public key package).
pub fn signs_under<C: Ciphersuite>(
    shares: &Shares<C>,
    signers: &[PartyId],
    key: &PublicKeyPackage<C>,
) -> bool {
    let keys: Vec<_> = signers
        .iter()
        .map(|p| (*p, &shares[p].key_package))
        .collect();
    let (package, sig_shares) = sign_shares::<C>(&keys, MESSAGE);
    let own = &shares[&signers[0]].public_key_package;
    let signature = sign::aggregate(&package, &sig_shares, own).unwrap();
    verify(key, MESSAGE, &signature)
}

pub fn verify<C: Ciphersuite>(pkp: &PublicKeyPackage<C>, message: &[u8], signature: &[u8]) -> bool {
    let signature = frost_core::Signature::<C>::deserialize(signature).unwrap();
    pkp.verifying_key().verify(message, &signature).is_ok()
}

// ---------------------------------------------------------------------------------------------
// Errors by kind: each extractor panics unless `result` is an error of its kind.

macro_rules! expect_kind {
    ($result:expr, $kind:literal, $pattern:pat => $value:expr) => {
        match $result {
            Err($pattern) => $value,
            Err(e) => panic!("expected {}, got {e:?}", $kind),
            Ok(_) => panic!("expected {}, got success", $kind),
        }
    };
}

/// The party a `Culprit` error names, and why.
pub fn culprit(result: Result<impl Sized, ProtocolError>) -> (PartyId, String) {
    expect_kind!(result, "a culprit", ProtocolError::Culprit { party, reason } => (party, reason))
}

pub fn unexpected(result: Result<impl Sized, ProtocolError>) -> String {
    expect_kind!(result, "UnexpectedMessage", ProtocolError::UnexpectedMessage { actual, .. } => actual)
}

pub fn disagreement(result: Result<impl Sized, ProtocolError>) -> String {
    expect_kind!(result, "Disagreement", ProtocolError::Disagreement { reason } => reason)
}

pub fn session_mismatch(result: Result<impl Sized, ProtocolError>) -> String {
    expect_kind!(result, "SessionMismatch", ProtocolError::SessionMismatch { reason } => reason)
}

pub fn params_error(result: Result<impl Sized, ProtocolError>) -> String {
    expect_kind!(result, "Params", ProtocolError::Params { reason } => reason)
}

/// Party `n`, where `n` is a literal known not to be 0.
pub fn pid(n: u16) -> cosigner_protocol::id::PartyId {
    cosigner_protocol::id::PartyId::new(n).unwrap()
}
