//! `make bench`: the DAO figures, as one JSON line.
//!
//! * `dao_dkg_inprocess_ms_p50`: the 5-member DAO's DKG (8 FROST parties, the provider holding
//!   3) with every key holder in this process, messages handed over in memory: the floor;
//! * `dao_dkg_ms_p50`: the same DKG for real: five member homes (one thread each, as five
//!   devices), each with its own attested session to the release provider and its own mailbox
//!   connection, the creator's invitation to the wallet stored by the provider and every member
//!   holding its share (includes the members' polling of the mailbox);
//! * `dao_psbt_sign_ms_p50`: a 2-input, 2-output PSBT under the seed's policy (< 10 BTC: 3
//!   approvals): the request, the provider's evaluation, two approvals, the FROST rounds and the
//!   finalized transaction, sessions open.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::time::{Duration, Instant};

use cosigner_client::address::Network;
use cosigner_client::dao::{self, Courier};
use cosigner_client::home::{Home, WalletFile};
use cosigner_client::session::Session;
use cosigner_client::trust::Trust;
use cosigner_protocol::auth::public_key_bytes;
use cosigner_protocol::dao::dkg::DaoDkg;
use cosigner_protocol::dao::{DaoMessage, Invitation, MemberEntry};
use cosigner_protocol::psbt::decode_psbt_file;
use cosigner_protocol::wire::SUITE_SECP256K1_TR;
use cosigner_tests::Deployment;
use cosigner_tests::bench::p50;
use cosigner_tests::bitcoin_tx;
use serde_bytes::ByteBuf;

type Suite = frost_secp256k1_tr::Secp256K1Sha256TR;

const BTC: u64 = 100_000_000;
const POLICY: &str = "[[rule]]\nname = \"small\"\nbelow = 1_000_000_000\napprovals = 3\n\
[[rule]]\nname = \"large\"\nbelow = 10_000_000_000\napprovals = 4\n\
[[rule]]\nname = \"major\"\napprovals = 5\n";
const NAMES: [&str; 5] = ["alice", "bob", "carol", "dave", "eve"];

fn inprocess_dkg() -> f64 {
    let members: Vec<_> = (0..5)
        .map(|_| p256::ecdsa::SigningKey::random(&mut rand_core::OsRng))
        .collect();
    let provider = p256::ecdsa::SigningKey::random(&mut rand_core::OsRng);
    let samples = (0..10)
        .map(|_| {
            let invitation = Invitation {
                members: members
                    .iter()
                    .zip(NAMES)
                    .map(|(k, n)| MemberEntry {
                        name: n.into(),
                        device_key: ByteBuf::from(public_key_bytes(k)),
                    })
                    .collect(),
                policy: POLICY.into(),
                provider_key: ByteBuf::from(public_key_bytes(&provider)),
                network: "regtest".into(),
                ciphersuite: SUITE_SECP256K1_TR.into(),
                created_ms: 1,
                nonce: ByteBuf::from(rand::random::<[u8; 16]>().to_vec()),
                mailbox: String::new(),
                provider: String::new(),
            };
            let t = Instant::now();
            let layout = invitation.layout().unwrap();
            let mut holders = Vec::new();
            let mut bus: Vec<(Vec<u8>, DaoMessage)> = Vec::new();
            for key in members.iter().chain(std::iter::once(&provider)) {
                let pk = public_key_bytes(key);
                let (d, out) =
                    DaoDkg::<Suite>::start(layout.clone(), &pk, &mut rand_core::OsRng).unwrap();
                bus.extend(out.into_iter().map(|m| (pk.clone(), m)));
                holders.push((pk, d));
            }
            while !holders.iter().all(|(_, d)| d.is_done()) {
                let round = std::mem::take(&mut bus);
                for (pk, d) in holders.iter_mut() {
                    for (sender, m) in &round {
                        d.absorb(sender, m).unwrap();
                    }
                    let out = d.advance(&mut rand_core::OsRng).unwrap();
                    bus.extend(out.into_iter().map(|m| (pk.clone(), m)));
                }
                // Everyone sees everything, including what was produced this round.
                let again = bus.clone();
                for (_, d) in holders.iter_mut() {
                    for (sender, m) in &again {
                        d.absorb(sender, m).unwrap();
                    }
                }
                bus.extend(round);
            }
            t.elapsed()
        })
        .collect();
    p50(samples)
}

struct Members {
    d: Deployment,
    homes: Vec<Home>,
    trust: Trust,
}

fn members() -> (Members, String) {
    let d = Deployment::start().unwrap();
    let homes: Vec<Home> = NAMES
        .iter()
        .map(|n| Home::open(&d.home(n)).unwrap())
        .collect();
    let mut text = String::new();
    for (n, h) in NAMES.iter().zip(&homes) {
        let key = hex::encode(public_key_bytes(&h.device_key().unwrap()));
        text.push_str(&format!(
            "[[member]]\nname = \"{n}\"\ndevice_key = \"{key}\"\n"
        ));
    }
    let trust = Trust::load(&d.dir.path().join("trust.toml")).unwrap();
    (Members { d, homes, trust }, text)
}

/// One DAO DKG through the mailbox and the provider; returns the members' wallet files.
fn e2e_dkg(m: &Members, members_text: &str) -> Vec<WalletFile> {
    let addr = m.d.provider.addr();
    let provider = Session::connect(&addr, &m.trust).unwrap();
    let (invitation, envelope) = dao::invite(
        &m.homes[0],
        &provider,
        members_text,
        POLICY,
        Some(Network::Regtest),
        &m.d.mailbox,
        &addr,
    )
    .unwrap();
    std::thread::scope(|s| {
        let mut handles = Vec::new();
        for home in &m.homes {
            let (invitation, envelope) = (invitation.clone(), envelope.clone());
            let (addr, trust, mailbox) = (addr.clone(), m.trust.clone(), m.d.mailbox.clone());
            let provider = Session::connect(&addr, &trust).unwrap();
            handles.push(s.spawn(move || {
                let mailbox = dao::member_mailbox(home, &mailbox, &invitation).unwrap();
                let mut courier =
                    Courier::new(envelope.topic, mailbox, provider, &addr, &trust).unwrap();
                dao::run_dkg(
                    home,
                    &mut courier,
                    &invitation,
                    &envelope,
                    Duration::from_secs(120),
                    &mut |_| {},
                )
                .unwrap()
            }));
        }
        handles
            .into_iter()
            .map(|h| match h.join().unwrap() {
                dao::Joined::Bitcoin(w) => w,
                other => panic!("a Bitcoin DAO made {other:?}"),
            })
            .collect()
    })
}

fn e2e_sign(m: &Members, wallet: &WalletFile, approvers: &[usize]) -> Duration {
    let spend = bitcoin_tx::payment(
        &hex::encode(wallet.group_public_key),
        &[3 * BTC, 2 * BTC],
        4 * BTC,
        BTC - 10_000,
    )
    .unwrap();
    let psbt = decode_psbt_file(spend.psbt_base64.as_bytes()).unwrap();
    let addr = m.d.provider.addr();
    let id = wallet.wallet_id;
    let sessions: Vec<Session> = std::iter::once(0)
        .chain(approvers.iter().copied())
        .map(|_| Session::connect(&addr, &m.trust).unwrap())
        .collect();
    let t = Instant::now();
    let (request, envelope) = dao::request(&m.homes[0], wallet, psbt).unwrap();
    let hash = request.hash().unwrap();
    let (info, _) = dao::dao_info(wallet).unwrap();
    let provider_key = hex::decode(&info.provider_key).unwrap();
    std::thread::scope(|s| {
        let mut handles = Vec::new();
        for (session, who) in sessions
            .into_iter()
            .zip(std::iter::once(0).chain(approvers.iter().copied()))
        {
            let (addr, trust, mailbox) = (addr.clone(), m.trust.clone(), m.d.mailbox.clone());
            let (request, envelope, provider_key) =
                (request.clone(), envelope.clone(), provider_key.clone());
            let home = &m.homes[who];
            handles.push(s.spawn(move || {
                let w = home.wallet(&id).unwrap();
                let (_, invitation) = dao::dao_info(&w).unwrap();
                let mailbox = dao::member_mailbox(home, &mailbox, &invitation).unwrap();
                let mut courier =
                    Courier::new(envelope.topic, mailbox, session, &addr, &trust).unwrap();
                courier.post(&envelope).unwrap();
                let summary = dao::summarize(&w, &request.psbt).unwrap();
                let mut backlog = Vec::new();
                let timeout = Duration::from_secs(60);
                let progress =
                    dao::await_progress(&mut courier, &provider_key, &hash, timeout, &mut backlog);
                let Ok(dao::Progress::Evaluated(evaluation)) = progress else {
                    panic!("no evaluation: {progress:?}");
                };
                dao::approve_and_sign(
                    home,
                    &w,
                    &mut courier,
                    &request,
                    &summary,
                    &evaluation,
                    backlog,
                    Duration::from_secs(60),
                )
                .unwrap()
            }));
        }
        for h in handles {
            let (_, tx) = h.join().unwrap();
            bitcoin_tx::verify_consensus(&hex::encode(tx), &spend.prevouts).unwrap();
        }
    });
    t.elapsed()
}

fn main() {
    let inprocess = inprocess_dkg();
    let (m, members_text) = members();
    let mut dkgs = Vec::new();
    let mut wallet = None;
    for _ in 0..5 {
        let t = Instant::now();
        let wallets = e2e_dkg(&m, &members_text);
        dkgs.push(t.elapsed());
        wallet = Some(wallets[0].clone());
    }
    let wallet = wallet.unwrap();
    let signs: Vec<Duration> = (0..9).map(|_| e2e_sign(&m, &wallet, &[1, 2])).collect();
    println!(
        "{{\"dao_dkg_inprocess_ms_p50\":{:.1},\"dao_dkg_ms_p50\":{:.1},\"dao_psbt_sign_ms_p50\":{:.1}}}",
        inprocess,
        p50(dkgs),
        p50(signs)
    );
}
