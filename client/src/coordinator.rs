//! The client's one coordinator of key-making ceremonies (a wallet's DKG, a refresh): this
//! device's party runs the protocol's any-order engine ([`Exchange`], the same one a DAO member
//! and the enclave run), and the coordinator relays every message to the party it is for through
//! each cosigner's [`Courier`]. Round-1 messages and confirmations go to everyone, each sealed
//! round-2 package only to its recipient (it is sealed to that party's key: relaying it shows us
//! nothing).
//!
//! What differs between a DKG and a refresh is only which request carries each step
//! ([`KeygenRequests`]) and what a party brings into round 2 (nothing, or its current share).

use cosigner_protocol::auth::{confirmation_digest, verify_digest};
use cosigner_protocol::id::PartyId;
use cosigner_protocol::keygen::exchange::{Exchange, Message};
use cosigner_protocol::keygen::{KeygenParams, Output};
use cosigner_protocol::party::{PROVIDER, RECOVERY};
use cosigner_protocol::wire::{
    Confirmation, DkgParams, RefreshParams, Request, Response, Round1Message, SealedPackage,
    WalletId,
};
use serde_bytes::ByteBuf;

use crate::courier::Courier;
use crate::{ClientError, Result};

type Suite = frost_secp256k1_tr::Secp256K1Sha256TR;

/// Which request carries each step of a ceremony to a cosigner, and which answer it expects.
pub trait KeygenRequests: KeygenParams {
    /// The request that hands a cosigner all round-1 messages.
    fn round1_request(&self, round1: Vec<Round1Message>) -> Request;
    /// The request that hands a cosigner the round-2 packages sealed to it.
    fn round2_request(&self, packages: Vec<SealedPackage>) -> Request;
    /// A cosigner's round-1 message, from its answer to the start request.
    fn round1_answer(answer: Response) -> Result<Round1Message>;
    /// A cosigner's sealed packages, from its answer to [`KeygenRequests::round1_request`].
    fn packages_answer(answer: Response) -> Result<Vec<SealedPackage>>;
    /// A cosigner's confirmation and its signature over it (`auth::confirmation_digest`), from
    /// its answer to [`KeygenRequests::round2_request`].
    fn confirmation_answer(answer: Response) -> Result<(Confirmation, Option<ByteBuf>)>;
}

fn unexpected(what: &str, got: &Response) -> ClientError {
    ClientError::Unexpected(format!("expected {what}, got {got:?}"))
}

impl KeygenRequests for DkgParams {
    fn round1_request(&self, round1: Vec<Round1Message>) -> Request {
        Request::DkgRound2 {
            wallet_id: self.wallet_id,
            round1,
        }
    }
    fn round2_request(&self, packages: Vec<SealedPackage>) -> Request {
        Request::DkgRound3 {
            wallet_id: self.wallet_id,
            packages,
        }
    }
    fn round1_answer(answer: Response) -> Result<Round1Message> {
        match answer {
            Response::DkgRound1 { message } => Ok(message),
            other => Err(unexpected("DkgRound1", &other)),
        }
    }
    fn packages_answer(answer: Response) -> Result<Vec<SealedPackage>> {
        match answer {
            Response::DkgRound2 { packages } => Ok(packages),
            other => Err(unexpected("DkgRound2", &other)),
        }
    }
    fn confirmation_answer(answer: Response) -> Result<(Confirmation, Option<ByteBuf>)> {
        match answer {
            Response::DkgRound3 {
                confirmation,
                signature,
            } => Ok((confirmation, signature)),
            other => Err(unexpected("DkgRound3", &other)),
        }
    }
}

impl KeygenRequests for RefreshParams {
    fn round1_request(&self, round1: Vec<Round1Message>) -> Request {
        Request::RefreshRound2 {
            wallet_id: self.wallet_id,
            round1,
        }
    }
    fn round2_request(&self, packages: Vec<SealedPackage>) -> Request {
        Request::RefreshRound3 {
            wallet_id: self.wallet_id,
            packages,
        }
    }
    fn round1_answer(answer: Response) -> Result<Round1Message> {
        match answer {
            Response::RefreshRound1 { message } => Ok(message),
            other => Err(unexpected("RefreshRound1", &other)),
        }
    }
    fn packages_answer(answer: Response) -> Result<Vec<SealedPackage>> {
        match answer {
            Response::RefreshRound2 { packages } => Ok(packages),
            other => Err(unexpected("RefreshRound2", &other)),
        }
    }
    fn confirmation_answer(answer: Response) -> Result<(Confirmation, Option<ByteBuf>)> {
        match answer {
            Response::RefreshRound3 {
                confirmation,
                signature,
            } => Ok((confirmation, signature)),
            other => Err(unexpected("RefreshRound3", &other)),
        }
    }
}

/// One cosigner in a ceremony: its party and its courier.
pub struct Peer<'a> {
    /// The cosigner's party.
    pub party: PartyId,
    /// What carries requests to it.
    pub courier: &'a mut dyn Courier,
}

/// The two cosigners of a personal wallet, `[provider, recovery]`, as a ceremony's peers.
pub fn cosigner_peers<'a>([provider, recovery]: [&'a mut dyn Courier; 2]) -> [Peer<'a>; 2] {
    [
        Peer {
            party: PROVIDER,
            courier: provider,
        },
        Peer {
            party: RECOVERY,
            courier: recovery,
        },
    ]
}

/// How far a ceremony got, for progress lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Progress {
    /// Every party's round-1 message is here.
    Round1,
    /// Every sealed round-2 package is here.
    Round2,
    /// Every party confirmed the same result.
    Confirmed,
}

/// What a confirmed ceremony leaves this device: its result and every party's confirmation (the
/// cosigners' commit requests carry them).
pub struct Confirmed {
    /// Our new share and the public key package.
    pub output: Output<Suite>,
    /// Every party's confirmation, ours included.
    pub confirmations: Vec<Confirmation>,
    /// Each cosigner's signature over its confirmation, checked against the key its attestation
    /// bound: relayed with the commits, so one cosigner knows the other took part.
    pub signatures: Vec<(PartyId, ByteBuf)>,
}

/// Runs one key-making ceremony with this device as party `me` (bringing `old` into round 2)
/// and the `peers`: `start` asks each cosigner to start (it may need authorization), then the
/// coordinator relays until every party confirmed the same result.
///
/// Errors: a cosigner's refusal or an unexpected answer, or a protocol failure of our party (a
/// culprit, a disagreement): nothing is kept, the cosigners' ceremony state expires.
pub fn run<P: KeygenRequests>(
    params: &P,
    me: PartyId,
    old: P::Old<Suite>,
    peers: &mut [Peer<'_>],
    start: &mut Start<'_>,
    observe: &mut dyn FnMut(Progress),
) -> Result<Confirmed> {
    let mut rng = rand_core::OsRng;
    let (mut local, first) = Exchange::<Suite, P>::start(params, vec![(me, old)], &mut rng)?;
    let mut round1: Vec<Round1Message> = first.into_iter().filter_map(round1_of).collect();
    let answers = start_all(peers, start)?;
    for (peer, answer) in peers.iter().zip(answers) {
        let message = P::round1_answer(answer?)?;
        from_peer(peer.party, message.from, "round-1 message")?;
        round1.push(message);
    }
    absorb(&mut local, round1.iter().cloned().map(Message::Round1))?;
    observe(Progress::Round1);

    let mut packages: Vec<SealedPackage> = local
        .advance(&mut rng)?
        .into_iter()
        .filter_map(package_of)
        .collect();
    let requests = peers
        .iter()
        .map(|_| params.round1_request(round1.clone()))
        .collect();
    let answers = call_all(peers, requests);
    for (peer, answer) in peers.iter().zip(answers) {
        let theirs = P::packages_answer(answer?)?;
        for package in &theirs {
            from_peer(peer.party, package.from, "round-2 package")?;
        }
        packages.extend(theirs);
    }
    absorb(&mut local, sealed_to(&packages, me).map(Message::Round2))?;
    observe(Progress::Round2);

    let mut confirmations: Vec<Confirmation> = local
        .advance(&mut rng)?
        .into_iter()
        .filter_map(confirmation_of)
        .collect();
    let mut signatures = Vec::new();
    let requests = peers
        .iter()
        .map(|peer| params.round2_request(sealed_to(&packages, peer.party).collect()))
        .collect();
    let answers = call_all(peers, requests);
    for (peer, answer) in peers.iter_mut().zip(answers) {
        let (confirmation, signature) = P::confirmation_answer(answer?)?;
        from_peer(peer.party, confirmation.from, "confirmation")?;
        if let Some(signature) = check_signed(params.wallet_id(), peer, &confirmation, signature)? {
            signatures.push((peer.party, signature));
        }
        confirmations.push(confirmation);
    }
    absorb(
        &mut local,
        confirmations.iter().cloned().map(Message::Confirmation),
    )?;
    local.advance(&mut rng)?;
    let output =
        local.into_outputs()?.pop().map(|(_, o)| o).ok_or_else(|| {
            ClientError::Unexpected("the ceremony ended without our share".into())
        })?;
    observe(Progress::Confirmed);
    Ok(Confirmed {
        output,
        confirmations,
        signatures,
    })
}

/// How a ceremony opens at its peers: each peer's answer to its start request, in peer order
/// (the peers reached at once, [`call_all`], where the requests allow).
pub type Start<'s> = dyn FnMut(&mut [Peer<'_>]) -> Vec<Result<Response>> + 's;

/// Runs `start` at `peers`: one answer per peer, in peer order.
///
/// Errors: `start` answered for another number of peers ([`ClientError::Unexpected`]).
pub(crate) fn start_all(
    peers: &mut [Peer<'_>],
    start: &mut Start<'_>,
) -> Result<Vec<Result<Response>>> {
    let answers = start(peers);
    if answers.len() != peers.len() {
        return Err(ClientError::Unexpected(format!(
            "{} start answers for {} peers",
            answers.len(),
            peers.len()
        )));
    }
    Ok(answers)
}

/// Sends each peer its request (`requests[i]` to `peers[i]`) and returns their answers in the same
/// order, the cosigners working at once: each request is on the wire before the next is sent,
/// and the answers are read afterwards (`Courier::call_overlapped`), so a round costs the
/// slowest cosigner's time, not the sum. A request that cannot be sent leaves the later ones
/// unsent (their answers are that error).
pub(crate) fn call_all(peers: &mut [Peer<'_>], requests: Vec<Request>) -> Vec<Result<Response>> {
    call_all_meanwhile(peers, requests, &mut || {})
}

/// [`call_all`], running `meanwhile` once every request is on the wire, while the cosigners work
/// (or, when a request could not be sent, once the answers are in): this device's own work
/// overlaps theirs.
pub(crate) fn call_all_meanwhile(
    peers: &mut [Peer<'_>],
    requests: Vec<Request>,
    meanwhile: &mut dyn FnMut(),
) -> Vec<Result<Response>> {
    let mut ran = false;
    let answers = send_all(peers, requests, &mut || {
        ran = true;
        meanwhile();
    });
    if !ran {
        meanwhile();
    }
    answers
}

/// [`call_all_meanwhile`]'s sending: `meanwhile` runs inside the last peer's call, if every
/// request was sent.
fn send_all(
    peers: &mut [Peer<'_>],
    requests: Vec<Request>,
    meanwhile: &mut dyn FnMut(),
) -> Vec<Result<Response>> {
    let mut requests = requests.into_iter();
    let (Some((first, rest)), Some(request)) = (peers.split_first_mut(), requests.next()) else {
        return Vec::new();
    };
    let mut later = None;
    let mut rest_requests = Some(requests.collect::<Vec<_>>());
    let answer = first.courier.call_overlapped(&request, &mut || {
        if let Some(requests) = rest_requests.take() {
            later = Some(if rest.is_empty() {
                meanwhile();
                Vec::new()
            } else {
                send_all(rest, requests, meanwhile)
            });
        }
    });
    let failed = |e: &ClientError| ClientError::Unexpected(format!("not sent: {e}"));
    let later = match (&answer, later) {
        (_, Some(later)) => later,
        (Err(e), None) => rest.iter().map(|_| Err(failed(e))).collect(),
        (Ok(_), None) => Vec::new(),
    };
    std::iter::once(answer).chain(later).collect()
}

/// A cosigner with an attested key must sign its confirmation under it: checked here, before
/// anything commits, so a cosigner that does not is named now rather than refused later.
pub(crate) fn check_signed(
    wallet_id: &WalletId,
    peer: &Peer<'_>,
    confirmation: &Confirmation,
    signature: Option<ByteBuf>,
) -> Result<Option<ByteBuf>> {
    let Some(key) = peer.courier.attested_key() else {
        return Ok(signature);
    };
    let party = peer.party;
    let signature = signature.ok_or_else(|| {
        ClientError::Unexpected(format!(
            "the cosigner of party {party} did not sign its confirmation"
        ))
    })?;
    verify_digest(key, &confirmation_digest(wallet_id, confirmation), &signature).map_err(|_| {
        ClientError::Unexpected(format!(
            "the cosigner of party {party} signed its confirmation with a key other than the one              its attestation binds"
        ))
    })?;
    Ok(Some(signature))
}

/// A cosigner speaks only for its own party: a message it answers in another party's name is
/// refused before it is relayed, so it can neither end the ceremony nor get another party blamed.
pub(crate) fn from_peer(peer: PartyId, from: PartyId, what: &str) -> Result<()> {
    if from == peer {
        return Ok(());
    }
    Err(ClientError::Unexpected(format!(
        "the cosigner of party {peer} answered a {what} in party {from}'s name"
    )))
}

fn absorb<P: KeygenParams>(
    local: &mut Exchange<Suite, P>,
    messages: impl Iterator<Item = Message>,
) -> Result<()> {
    for message in messages {
        local.absorb(&message, "message")?;
    }
    Ok(())
}

/// The packages of `packages` sealed to `party` (a cosigner is handed only its own).
pub(crate) fn sealed_to(
    packages: &[SealedPackage],
    party: PartyId,
) -> impl Iterator<Item = SealedPackage> + '_ {
    packages.iter().filter(move |p| p.to == party).cloned()
}

fn round1_of(message: Message) -> Option<Round1Message> {
    match message {
        Message::Round1(m) => Some(m),
        _ => None,
    }
}

fn package_of(message: Message) -> Option<SealedPackage> {
    match message {
        Message::Round2(p) => Some(p),
        _ => None,
    }
}

fn confirmation_of(message: Message) -> Option<Confirmation> {
    match message {
        Message::Confirmation(c) => Some(c),
        _ => None,
    }
}
