//! Round 2 of signing as the enclave runs it: a `SignerSession` of party 2, from a fixed in-memory
//! 2-of-3 DKG (run once), opened for signers [1, 2] and a fixed message, is handed a signing
//! package built from the input; and the coordinator's `signing_package` is handed fuzzed
//! commitments. Errors are fine, panics are not, and:
//!
//! * `signing_package`, when it succeeds, returns a package that decodes to exactly the message and
//!   signers it was given;
//! * the session gives a share only for a package with the committed message, exactly the signers
//!   [1, 2] and its own commitment unchanged; when party 1's commitment is honest too, that share
//!   aggregates with party 1's into a valid signature.
//!
//! Input (`arbitrary`'s `Unstructured`): the first choice picks raw bytes as the package, the honest
//! package with byte edits, or a package built by `signing_package` from a fuzzed message and fuzzed
//! commitments (honest, edited or raw, under mostly small party numbers).
//!
//! The sessions draw their nonces from seeded RNGs, so every run reuses the same nonces: fine for a
//! fuzzer, which never publishes a share, and it keeps the honest package the same on every run.
#![no_main]

use std::collections::BTreeMap;
use std::sync::OnceLock;

use cosigner_fuzz::{small_party, xor_edits};
use cosigner_protocol::dkg;
use cosigner_protocol::id::PartyId;
use cosigner_protocol::sign::{SignerSession, aggregate, signing_package};
use cosigner_protocol::wire::{DkgParams, SUITE_SECP256K1_TR, WalletId};
use frost_secp256k1_tr::keys::{KeyPackage, PublicKeyPackage};
use frost_secp256k1_tr::round1::SigningCommitments;
use frost_secp256k1_tr::{Identifier, SigningPackage};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use rand::SeedableRng;
use rand::rngs::StdRng;

type Suite = frost_secp256k1_tr::Secp256K1Sha256TR;

const PARTIES: [PartyId; 3] = [PartyId::DEVICE, PartyId::PROVIDER, PartyId::RECOVERY];
const SIGNERS: [PartyId; 2] = [PartyId::DEVICE, PartyId::PROVIDER];
const ME: PartyId = PartyId::PROVIDER;
/// The other signer.
const OTHER: PartyId = PartyId::DEVICE;
const MESSAGE: &[u8; 32] = b"a 32-byte BIP-341 sighash here..";
const MAX_EDITS: usize = 8;
const MAX_COMMITMENTS: usize = 5;

/// The result of one honest 2-of-3 DKG, and the honest commitments and package of signers [1, 2].
struct Fixture {
    keys: BTreeMap<PartyId, KeyPackage>,
    public: PublicKeyPackage,
    commitments: BTreeMap<PartyId, Vec<u8>>,
    package: Vec<u8>,
}

fn session_rng(party: PartyId) -> StdRng {
    StdRng::seed_from_u64(0x5160_0000 + u64::from(party.get()))
}

fn run_dkg() -> (BTreeMap<PartyId, KeyPackage>, PublicKeyPackage) {
    let mut rng = StdRng::seed_from_u64(0xd6);
    let params = DkgParams {
        wallet_id: WalletId([0x51; 16]),
        ciphersuite: SUITE_SECP256K1_TR.to_owned(),
        min_signers: 2,
        parties: PARTIES.to_vec(),
    };
    let mut round1 = Vec::new();
    let mut states1 = Vec::new();
    for p in PARTIES {
        let (state, message) = dkg::start::<Suite>(&params, p, &mut rng).expect("DKG start");
        states1.push(state);
        round1.push(message);
    }
    let mut sealed = Vec::new();
    let mut states2 = Vec::new();
    for state in states1 {
        let (state, packages) = state.handle_round1(&round1, &mut rng).expect("DKG round 1");
        states2.push(state);
        sealed.extend(packages);
    }
    let mut confirmations = Vec::new();
    let mut states3 = Vec::new();
    for state in states2 {
        let me = state.me();
        let to_me: Vec<_> = sealed.iter().filter(|p| p.to == me).cloned().collect();
        let (state, confirmation) = state.handle_round2(&to_me).expect("DKG round 2");
        states3.push(state);
        confirmations.push(confirmation);
    }
    let mut keys = BTreeMap::new();
    let mut public = None;
    for state in states3 {
        let me = state.me();
        let output = state
            .handle_confirmations(&confirmations)
            .expect("DKG confirmation");
        keys.insert(me, output.key_package);
        public = Some(output.public_key_package);
    }
    (keys, public.expect("three parties"))
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let (keys, public) = run_dkg();
        let commitments: BTreeMap<PartyId, Vec<u8>> = SIGNERS
            .iter()
            .map(|&p| {
                let (_, c) =
                    SignerSession::commit(&keys[&p], p, MESSAGE, &SIGNERS, &mut session_rng(p))
                        .expect("honest commit");
                (p, c)
            })
            .collect();
        let package = signing_package::<Suite>(MESSAGE, &commitments).expect("honest package");
        Fixture {
            keys,
            public,
            commitments,
            package,
        }
    })
}

/// XORs up to [`MAX_EDITS`] bytes of `bytes`, then sometimes resizes it.
fn edit(u: &mut Unstructured<'_>, bytes: &mut Vec<u8>) -> Result<()> {
    xor_edits(u, bytes, MAX_EDITS)?;
    if u.ratio(1, 8)? {
        let len = u.int_in_range(0..=bytes.len() + 4)?;
        bytes.resize(len, 0);
    }
    Ok(())
}

/// Fuzzed commitments, checked through `signing_package`; the package if it built one.
fn built_package(u: &mut Unstructured<'_>, f: &Fixture) -> Result<Option<Vec<u8>>> {
    let message: Vec<u8> = if u.ratio(3, 4)? {
        MESSAGE.to_vec()
    } else {
        u.arbitrary()?
    };
    let mut commitments = BTreeMap::new();
    for _ in 0..u.int_in_range(0..=MAX_COMMITMENTS)? {
        let p = small_party(u)?;
        let bytes = match u.int_in_range(0..=2u8)? {
            0 => u
                .choose(&[&f.commitments[&OTHER], &f.commitments[&ME]])?
                .to_vec(),
            1 => {
                let mut c = u
                    .choose(&[&f.commitments[&OTHER], &f.commitments[&ME]])?
                    .to_vec();
                edit(u, &mut c)?;
                c
            }
            _ => u.arbitrary()?,
        };
        commitments.insert(p, bytes);
    }
    let Ok(package) = signing_package::<Suite>(&message, &commitments) else {
        return Ok(None);
    };
    // What the coordinator built is what it was given.
    let decoded = SigningPackage::deserialize(&package).expect("a built package decodes");
    assert_eq!(decoded.message(), &message);
    assert!(commitments.len() >= 2);
    assert_eq!(decoded.signing_commitments().len(), commitments.len());
    for (p, bytes) in &commitments {
        let id = p.identifier::<Suite>().expect("a nonzero party");
        let c = SigningCommitments::deserialize(bytes).expect("an accepted commitment decodes");
        assert_eq!(decoded.signing_commitment(&id), Some(c));
    }
    Ok(Some(package))
}

fn package(data: &[u8], f: &Fixture) -> Option<Vec<u8>> {
    let mut u = Unstructured::new(data);
    match u.int_in_range(0..=2u8).ok()? {
        0 => Some(u.take_rest().to_vec()),
        1 => {
            let mut package = f.package.clone();
            edit(&mut u, &mut package).ok()?;
            Some(package)
        }
        _ => built_package(&mut u, f).ok().flatten(),
    }
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let Some(package) = package(data, f) else {
        return;
    };
    let (session, ours) =
        SignerSession::commit(&f.keys[&ME], ME, MESSAGE, &SIGNERS, &mut session_rng(ME))
            .expect("honest commit");
    assert_eq!(
        ours, f.commitments[&ME],
        "the seeded commit is not deterministic"
    );
    let Ok(share) = session.sign(&f.keys[&ME], &package) else {
        return;
    };

    // A share only for the committed message, exactly signers [1, 2], our commitment unchanged.
    let decoded = SigningPackage::deserialize(&package).expect("a signed package decodes");
    assert_eq!(decoded.message().as_slice(), MESSAGE.as_slice());
    let ids: Vec<Identifier> = SIGNERS
        .iter()
        .map(|p| p.identifier::<Suite>().expect("a nonzero party"))
        .collect();
    assert!(decoded.signing_commitments().keys().eq(ids.iter()));
    let our_id = ME.identifier::<Suite>().expect("a nonzero party");
    let our_commitments = SigningCommitments::deserialize(&ours).expect("our commitments");
    assert_eq!(decoded.signing_commitment(&our_id), Some(our_commitments));

    if package == f.package {
        let (other, _) = SignerSession::commit(
            &f.keys[&OTHER],
            OTHER,
            MESSAGE,
            &SIGNERS,
            &mut session_rng(OTHER),
        )
        .expect("honest commit");
        let other_share = other.sign(&f.keys[&OTHER], &package).expect("honest share");
        let shares = BTreeMap::from([(OTHER, other_share), (ME, share)]);
        let signature =
            aggregate::<Suite>(&package, &shares, &f.public).expect("honest shares aggregate");
        assert_eq!(signature.len(), 64);
    }
});
