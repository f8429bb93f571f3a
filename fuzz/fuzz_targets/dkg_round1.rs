//! The decode path of the DKG: party 2 of [1, 2, 3] (2-of-3), started with a fixed seeded RNG,
//! handed a set of round-1 messages built from the input by `handle_round1`. Errors are fine,
//! panics are not, and what is accepted must be safe:
//!
//! * each other party's constant-term commitment and proof of knowledge are the honest ones (a
//!   different pair that passes would be a forged proof of knowledge). The higher coefficients are
//!   not covered by the proof (FROST KeyGen proves knowledge of `a_i0` only), so a relay *can* get
//!   an altered one past round 1; what stops it is the next property;
//! * round 2 then opens the honest parties' packages only if party 2 saw exactly the honest
//!   round-1 set: any difference changes the transcript hash bound into every round-2 AAD.
//!
//! The set is built from the input with `arbitrary`'s `Unstructured`: each message is an honest one
//! (parties 1, 2, 3, precomputed with seeded RNGs), an honest one with byte edits and maybe another
//! sender or HPKE key, or raw bytes. So the fuzzer reaches past the sender and length checks into
//! frost's decoding, the commitment checks and the proof verification.
#![no_main]

use std::sync::OnceLock;

use cosigner_fuzz::{small_party, xor_edits};
use cosigner_protocol::dkg;
use cosigner_protocol::id::PartyId;
use cosigner_protocol::wire::{
    DkgParams, Round1Message, SUITE_SECP256K1_TR, SealedPackage, WalletId,
};
use frost_secp256k1_tr::keys::dkg::round1;
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use rand::SeedableRng;
use rand::rngs::StdRng;

type Suite = frost_secp256k1_tr::Secp256K1Sha256TR;

const PARTIES: [PartyId; 3] = [PartyId::DEVICE, PartyId::PROVIDER, PartyId::RECOVERY];
const ME: PartyId = PartyId::PROVIDER;
/// At most this many messages in a round-1 set (three is the honest count).
const MAX_MESSAGES: usize = 6;
/// At most this many byte edits in one message.
const MAX_EDITS: usize = 8;

fn params() -> DkgParams {
    DkgParams {
        wallet_id: WalletId([0x42; 16]),
        ciphersuite: SUITE_SECP256K1_TR.to_owned(),
        min_signers: 2,
        parties: PARTIES.to_vec(),
    }
}

/// Each party's RNG: seeded by its number, so party 2's state is the same on every run.
fn rng_of(party: PartyId) -> StdRng {
    StdRng::seed_from_u64(0xd6_0000 + u64::from(party.get()))
}

/// An honest ceremony: every party's round-1 message, and the round-2 packages sealed to party 2.
struct Honest {
    round1: Vec<Round1Message>,
    to_me: Vec<SealedPackage>,
}

fn honest() -> &'static Honest {
    static HONEST: OnceLock<Honest> = OnceLock::new();
    HONEST.get_or_init(|| {
        let mut round1 = Vec::new();
        let mut states = Vec::new();
        for p in PARTIES {
            let mut rng = rng_of(p);
            let (state, message) =
                dkg::start::<Suite>(&params(), p, &mut rng).expect("an honest start");
            round1.push(message);
            states.push((state, rng));
        }
        let mut to_me = Vec::new();
        for (state, mut rng) in states.into_iter().filter(|(s, _)| s.me() != ME) {
            let (_, sealed) = state
                .handle_round1(&round1, &mut rng)
                .expect("an honest round 1");
            to_me.extend(sealed.into_iter().filter(|p| p.to == ME));
        }
        Honest { round1, to_me }
    })
}

/// The parts of a round-1 package its proof of knowledge covers: the constant-term commitment
/// and the proof.
fn proven_part(package: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let package = round1::Package::deserialize(package).expect("an accepted package decodes");
    let coefficients = package.commitment().serialize().expect("commitment");
    let constant = coefficients.first().expect("a constant term").clone();
    let proof = package.proof_of_knowledge().serialize().expect("proof");
    (constant, proof)
}

/// XORs up to [`MAX_EDITS`] bytes of `bytes` (none if it is empty, drawing nothing).
fn edit(u: &mut Unstructured<'_>, bytes: &mut [u8]) -> Result<()> {
    if bytes.is_empty() {
        return Ok(());
    }
    xor_edits(u, bytes, MAX_EDITS)
}

fn message(u: &mut Unstructured<'_>) -> Result<Round1Message> {
    let base = u.choose(&honest().round1)?.clone();
    Ok(match u.int_in_range(0..=3u8)? {
        // An honest message, unchanged.
        0 => base,
        // An honest message with edits to its package.
        1 => {
            let mut package = base.package.into_vec();
            edit(u, &mut package)?;
            Round1Message {
                package: package.into(),
                ..base
            }
        }
        // An honest message under another sender, maybe with another HPKE key.
        2 => {
            let mut hpke_public_key = base.hpke_public_key.into_vec();
            if u.arbitrary()? {
                hpke_public_key = u.arbitrary()?;
            } else {
                edit(u, &mut hpke_public_key)?;
            }
            Round1Message {
                from: small_party(u)?,
                package: base.package,
                hpke_public_key: hpke_public_key.into(),
            }
        }
        // Raw bytes.
        _ => Round1Message {
            from: small_party(u)?,
            package: u.arbitrary::<Vec<u8>>()?.into(),
            hpke_public_key: u.arbitrary::<Vec<u8>>()?.into(),
        },
    })
}

fn round1_set(data: &[u8]) -> Vec<Round1Message> {
    let mut u = Unstructured::new(data);
    let mut set = Vec::new();
    let Ok(count) = u.int_in_range(0..=MAX_MESSAGES) else {
        return set;
    };
    for _ in 0..count {
        match message(&mut u) {
            Ok(m) => set.push(m),
            Err(_) => break,
        }
    }
    set
}

fuzz_target!(|data: &[u8]| {
    let round1 = round1_set(data);
    let honest = honest();
    let mut rng = rng_of(ME);
    let (state, ours) = dkg::start::<Suite>(&params(), ME, &mut rng).expect("an honest start");
    assert_eq!(
        Some(&ours),
        honest.round1.get(1),
        "the seeded start is not deterministic"
    );

    let Ok((next, sealed)) = state.handle_round1(&round1, &mut rng) else {
        return;
    };
    // Accepted: exactly one message per party, every proof of knowledge the honest one.
    assert_eq!(round1.len(), PARTIES.len());
    for party in PARTIES {
        let relayed = round1
            .iter()
            .find(|m| m.from == party)
            .expect("a message from every party");
        let honest = honest
            .round1
            .iter()
            .find(|m| m.from == party)
            .expect("an honest message from every party");
        assert_eq!(
            proven_part(&relayed.package),
            proven_part(&honest.package),
            "party {party}'s proof of knowledge was accepted although it is not the honest one"
        );
    }
    assert_eq!(next.me(), ME);
    let mut recipients: Vec<PartyId> = sealed.iter().map(|p| p.to).collect();
    recipients.sort_unstable();
    assert_eq!(recipients, [1, 3]);
    assert!(sealed.iter().all(|p| p.from == ME));

    // Round 2 with the honest parties' packages: it works only on the honest transcript.
    let mut seen = round1.clone();
    seen.sort_by_key(|m| m.from);
    let same_view = seen == honest.round1;
    let opened = next.handle_round2(&honest.to_me);
    assert_eq!(
        opened.is_ok(),
        same_view,
        "round 2 {} although party 2 saw {} round-1 set: {:?}",
        if opened.is_ok() {
            "succeeded"
        } else {
            "failed"
        },
        if same_view { "the honest" } else { "another" },
        opened.err()
    );
});
