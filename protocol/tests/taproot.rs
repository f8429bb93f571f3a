//! `frost-secp256k1-tr` output is plain BIP-340: checked with a verifier written here from the
//! BIP's pseudocode (sha2 for the tagged hash, secp256k1 arithmetic through frost's `Group`
//! trait), not with frost's own `verify`. The verifier is first checked against the BIP's own
//! test vectors. Also pins the serialized sizes the other crates rely on.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

mod common;

use std::collections::BTreeMap;

use common::{Tr, pid, run_dkg_with, sign_with};
use cosigner_protocol::dkg::{self, DkgOutput};
use cosigner_protocol::id::PartyId;
use cosigner_protocol::sign::{self, SignerSession};
use cosigner_protocol::wire::{self, DkgParams, WalletId};
use frost_secp256k1_tr::{Field, Group, Secp256K1Group, Secp256K1ScalarField};
use sha2::{Digest, Sha256};

/// secp256k1's group order n, big-endian.
const ORDER: [u8; 32] = [
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe,
    0xba, 0xae, 0xdc, 0xe6, 0xaf, 0x48, 0xa0, 0x3b, 0xbf, 0xd2, 0x5e, 0x8c, 0xd0, 0x36, 0x41, 0x41,
];

fn tagged_hash(tag: &str, parts: &[&[u8]]) -> [u8; 32] {
    let t = Sha256::digest(tag.as_bytes());
    let mut h = Sha256::new();
    h.update(t);
    h.update(t);
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// `int(bytes) mod n` for a 32-byte big-endian integer (< 2^256 < 2n: one subtraction at most).
fn reduce(mut bytes: [u8; 32]) -> <Secp256K1ScalarField as Field>::Scalar {
    if let Ok(s) = Secp256K1ScalarField::deserialize(&bytes) {
        return s;
    }
    let mut borrow = 0i16;
    for i in (0..32).rev() {
        let d = i16::from(bytes[i]) - i16::from(ORDER[i]) - borrow;
        borrow = i16::from(d < 0);
        bytes[i] = (d + 256 * borrow) as u8;
    }
    Secp256K1ScalarField::deserialize(&bytes).unwrap()
}

/// BIP-340 `Verify(pk, m, sig)`, step by step.
fn bip340_verify(pk: &[u8; 32], msg: &[u8], sig: &[u8; 64]) -> bool {
    // P = lift_x(int(pk)): the point with that x and an even y; fails if x is not on the curve.
    let mut compressed = [0u8; 33];
    compressed[0] = 0x02;
    compressed[1..].copy_from_slice(pk);
    let Ok(p) = Secp256K1Group::deserialize(&compressed) else {
        return false;
    };
    let (r, s) = sig.split_at(32);
    // s = int(sig[32:64]); fail if s >= n.
    let Ok(s) = Secp256K1ScalarField::deserialize(&s.try_into().unwrap()) else {
        return false;
    };
    // e = int(hash_BIP0340/challenge(bytes(r) || bytes(P) || m)) mod n.
    let e = reduce(tagged_hash("BIP0340/challenge", &[r, pk, msg]));
    // R = s⋅G - e⋅P; fail if R is infinity, has an odd y, or x(R) != r (which covers r >= p).
    let big_r = Secp256K1Group::generator() * s - p * e;
    let Ok(encoded) = Secp256K1Group::serialize(&big_r) else {
        return false;
    };
    encoded[0] == 0x02 && &encoded[1..] == r
}

fn h32(s: &str) -> [u8; 32] {
    hex::decode(s).unwrap().try_into().unwrap()
}

fn h64(s: &str) -> [u8; 64] {
    hex::decode(s).unwrap().try_into().unwrap()
}

#[test]
fn reference_verifier_passes_the_bip340_vectors() {
    // BIP-340 test-vectors.csv, indices 0-3 (public key, message, signature).
    let vectors = [
        (
            "F9308A019258C31049344F85F89D5229B531C845836F99B08601F113BCE036F9",
            "0000000000000000000000000000000000000000000000000000000000000000",
            "E907831F80848D1069A5371B402410364BDF1C5F8307B0084C55F1CE2DCA8215\
             25F66A4A85EA8B71E482A74F382D2CE5EBEEE8FDB2172F477DF4900D310536C0",
        ),
        (
            "DFF1D77F2A671C5F36183726DB2341BE58FEAE1DA2DECED843240F7B502BA659",
            "243F6A8885A308D313198A2E03707344A4093822299F31D0082EFA98EC4E6C89",
            "6896BD60EEAE296DB48A229FF71DFE071BDE413E6D43F917DC8DCF8C78DE3341\
             8906D11AC976ABCCB20B091292BFF4EA897EFCB639EA871CFA95F6DE339E4B0A",
        ),
        (
            "DD308AFEC5777E13121FA72B9CC1B7CC0139715309B086C960E18FD969774EB8",
            "7E2D58D8B3BCDF1ABADEC7829054F90DDA9805AAB56C77333024B9D0A508B75C",
            "5831AAEED7B44BB74E5EAB94BA9D4294C49BCF2A60728D8B4C200F50DD313C1B\
             AB745879A5AD954A72C45A91C3A51D3C7ADEA98D82F8481E0E1E03674A6F3FB7",
        ),
        (
            "25D1DFF95105F5253C4022F628A996AD3A0D95FBF21D468A1B33F8C160D8F517",
            "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF",
            "7EB0509757E246F19449885651611CB965ECC1A187DD51B64FDA1EDC9637D5EC\
             97582B9CB13DB3933705B32BA982AF5AF25FD78881EBB32771FC5922EFC66EA3",
        ),
    ];
    for (i, (pk, msg, sig)) in vectors.iter().enumerate() {
        let (pk, msg, sig) = (h32(pk), h32(msg), h64(sig));
        assert!(bip340_verify(&pk, &msg, &sig), "vector {i}");
        let mut bad = sig;
        bad[63] ^= 1;
        assert!(!bip340_verify(&pk, &msg, &bad), "vector {i}, altered s");
        let mut bad = sig;
        bad[0] ^= 1;
        assert!(!bip340_verify(&pk, &msg, &bad), "vector {i}, altered r");
        let mut other = msg;
        other[0] ^= 1;
        assert!(
            !bip340_verify(&pk, &other, &sig),
            "vector {i}, altered message"
        );
    }
}

/// A 2-of-3 wallet of the BIP-340 suite, named by its wire identifier.
fn params() -> DkgParams {
    DkgParams {
        wallet_id: WalletId([1; 16]),
        ciphersuite: wire::SUITE_SECP256K1_TR.into(),
        min_signers: 2,
        parties: vec![pid(1), pid(2), pid(3)],
    }
}

fn run_dkg() -> BTreeMap<PartyId, DkgOutput<Tr>> {
    run_dkg_with::<Tr>(&params())
}

#[test]
fn threshold_signatures_are_bip340_under_the_dkg_output_key() {
    let keys = run_dkg();
    let group_key = keys[&pid(1)]
        .public_key_package
        .verifying_key()
        .serialize()
        .unwrap();
    assert_eq!(group_key.len(), 33);
    assert!(group_key[0] == 0x02 || group_key[0] == 0x03);
    // BIP-340 public keys are x-only: the last 32 bytes of the compressed key.
    let x_only: [u8; 32] = group_key[1..].try_into().unwrap();
    let sighash = Sha256::digest(b"a transaction")
        .into_iter()
        .collect::<Vec<u8>>();
    for signers in [[1, 2], [1, 3], [2, 3]].map(|s| s.map(pid)) {
        let signature: [u8; 64] = sign_with(&keys, &signers, &sighash).try_into().unwrap();
        assert!(bip340_verify(&x_only, &sighash, &signature), "{signers:?}");
        let mut other = sighash.clone();
        other[0] ^= 1;
        assert!(!bip340_verify(&x_only, &other, &signature));
    }
}

#[test]
fn serialized_sizes() {
    let mut rng = rand::thread_rng();
    let keys = run_dkg();
    let out = &keys[&pid(2)];
    let key_package = out.key_package.serialize().unwrap();
    let public_key_package = out.public_key_package.serialize().unwrap();
    let verifying_key = out.public_key_package.verifying_key().serialize().unwrap();
    let (session, commitments) = SignerSession::commit(
        &out.key_package,
        pid(2),
        &[7; 32],
        &[pid(2), pid(3)],
        &mut rng,
    )
    .unwrap();
    let (_s3, c3) = SignerSession::commit(
        &keys[&pid(3)].key_package,
        pid(3),
        &[7; 32],
        &[pid(2), pid(3)],
        &mut rng,
    )
    .unwrap();
    let package = sign::signing_package::<Tr>(
        &[7; 32],
        &BTreeMap::from([(pid(2), commitments.clone()), (pid(3), c3)]),
    )
    .unwrap();
    let share = session.sign(&out.key_package, &package).unwrap();

    let (_, round1) = dkg::start::<Tr>(&params(), pid(1), &mut rng).unwrap();

    println!("KeyPackage            {}", key_package.len());
    println!("PublicKeyPackage (2/3) {}", public_key_package.len());
    println!("verifying key          {}", verifying_key.len());
    println!("SigningCommitments     {}", commitments.len());
    println!("SigningPackage (2, 32-byte msg) {}", package.len());
    println!("SignatureShare         {}", share.len());
    println!("round-1 package (t=2)  {}", round1.package.len());
    let round2_package =
        frost_core::keys::dkg::round2::Package::<Tr>::new(*out.key_package.signing_share())
            .serialize()
            .unwrap();
    println!(
        "DKG round-2 package    {} (+16 sealed)",
        round2_package.len()
    );
    assert_eq!(key_package.len(), 136);
    assert_eq!(public_key_package.len(), 236);
    assert_eq!(commitments.len(), 71);
    assert_eq!(round1.package.len(), 137);
    assert_eq!(round2_package.len(), 37);
    assert_eq!(verifying_key.len(), 33);
    assert_eq!(share.len(), 32);
    assert_eq!(sign_with(&keys, &[pid(1), pid(3)], &[7; 32]).len(), 64);
    assert_eq!(round1.hpke_public_key.len(), 32);
}
