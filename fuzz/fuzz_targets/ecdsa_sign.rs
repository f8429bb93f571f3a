//! Any bytes as the other signer's threshold ECDSA message of round 1, 2 or 3 (what a client
//! sends the enclave in `EthSignStart` and `EthSignFinish`), after honest earlier rounds; and as a
//! helper's repair term (what a recovering phone assembles) and a wallet's public side (what the
//! enclave reads from its state): errors are fine, panics are not. The key is made once, by the
//! DKG's own state machines.
#![no_main]

use std::sync::OnceLock;

use cosigner_protocol::ecdsa::EcdsaKey;
use cosigner_protocol::ecdsa::dkg::{self, EcdsaDkgParams, RoundOutput};
use cosigner_protocol::ecdsa::sign::{self, EcdsaSignMessage};
use cosigner_protocol::id::PartyId;
use cosigner_protocol::wire::WalletId;
use libfuzzer_sys::fuzz_target;
use rand::rngs::OsRng;
use serde_bytes::ByteBuf;

fn keys() -> &'static [EcdsaKey] {
    static KEYS: OnceLock<Vec<EcdsaKey>> = OnceLock::new();
    KEYS.get_or_init(|| {
        let parties: Vec<PartyId> = (1..=3).map(|n| PartyId::new(n).expect("party")).collect();
        let params = EcdsaDkgParams { wallet_id: WalletId([1; 16]), threshold: 2, parties: parties.clone() };
        let (mut states, hellos): (Vec<_>, Vec<_>) =
            parties.iter().map(|p| dkg::start(params.clone(), *p, &mut OsRng).expect("start")).unzip();
        let mut round: Vec<_> =
            states.iter_mut().map(|s| s.handle_hellos(&hellos, &mut OsRng).expect("hellos")).collect();
        let mut confirmations = Vec::new();
        for _ in 0..3 {
            let mut next = Vec::new();
            for s in &mut states {
                match s.handle_round(&round, &mut OsRng).expect("round") {
                    RoundOutput::Next(m) => next.push(m),
                    RoundOutput::Confirm(c) => confirmations.push(c),
                }
            }
            round = next;
        }
        states.into_iter().map(|s| s.handle_confirmations(&confirmations).expect("confirm").key).collect()
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&stage, body)) = data.split_first() else { return };
    let keys = keys();
    let (a, b) = (&keys[0], &keys[1]);
    let signers = [a.party(), b.party()];
    let (mut sa, _) = sign::start(a, &signers, vec![1], [5; 32]).expect("start a");
    let (mut sb, b1) = sign::start(b, &signers, vec![1], [5; 32]).expect("start b");
    let fuzzed = |round| EcdsaSignMessage { from: b.party(), round, body: ByteBuf::from(body.to_vec()) };
    match stage % 4 {
        3 => {
            let public = cosigner_protocol::ecdsa::EcdsaPublic::from_bytes(body);
            let honest = cosigner_protocol::ecdsa::repair::term(
                b,
                &[b.party(), keys[2].party()],
                a.party(),
                b"fuzz",
            )
            .expect("term");
            if let Ok(public) = public {
                let _ = cosigner_protocol::ecdsa::repair::assemble(&public, 2, a.party(), &[honest.clone(), body.to_vec()]);
            }
            let _ = cosigner_protocol::ecdsa::repair::assemble(
                &cosigner_protocol::ecdsa::EcdsaPublic {
                    public_key: ByteBuf::from(a.public_key()),
                    public_shares: [(a.party(), a.public_share()), (b.party(), b.public_share()), (keys[2].party(), keys[2].public_share())]
                        .into_iter()
                        .map(|(p, s)| (p, ByteBuf::from(s)))
                        .collect(),
                },
                2,
                a.party(),
                &[honest, body.to_vec()],
            );
        }
        0 => {
            let _ = sa.round2(a, &[fuzzed(1)]);
        }
        1 => {
            let a1 = sign::start(a, &signers, vec![1], [5; 32]).expect("a1").1;
            let _ = sb.round2(b, &[a1]);
            let _ = sa.round2(a, &[b1]).expect("honest round 1");
            let _ = sa.round3(a, &[fuzzed(2)]);
        }
        _ => {
            let (mut sa2, a1) = sign::start(a, &signers, vec![1], [5; 32]).expect("a");
            let b2 = sb.round2(b, &[a1]).expect("b round 2");
            let a2 = sa2.round2(a, &[b1]).expect("a round 2");
            let _ = sb.round3(b, &[a2]).expect("b round 3");
            let _ = sa2.round3(a, &[b2]).expect("a round 3");
            let _ = sa2.finish(a, &[fuzzed(3)]);
        }
    }
});
