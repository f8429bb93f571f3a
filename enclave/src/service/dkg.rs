//! Wallet creation: the DKG (the protocol's key-making engine, `keygen::exchange::Exchange`, the
//! same one a DAO's DKG runs on, with this cosigner's one party), the optional enrollment token,
//! and the registration of the device key and the recovery credential (docs/lifecycle.md,
//! "Creation, interrupted").

use std::time::Duration;

use cosigner_protocol::auth::{normalise_public_key, registration_digest_with, verify_digest};
use cosigner_protocol::ecdsa::{
    self, EcdsaPublic,
    dkg::{EcdsaDkg, EcdsaDkgParams, EcdsaHello, EcdsaRound, RoundOutput},
};
use cosigner_protocol::enrollment::EnrollmentToken;
use cosigner_protocol::id::Epoch;
use cosigner_protocol::id::PartyId;
use cosigner_protocol::keygen::exchange::{Exchange, Message, Step};
use cosigner_protocol::party;
use cosigner_protocol::policy::{Chain, Policy};
use cosigner_protocol::wire::{
    Confirmation, DkgParams, Registration, Response, Round1Message, SUITE_SECP256K1_ECDSA,
    SUITE_SECP256K1_TR, SealedPackage, WalletId,
};
use serde_bytes::ByteBuf;

use super::failure::{Failure, Outcome, internal};
use super::psbt;
use super::records::{ShareRecord, WalletState};
use super::table::ConnectionId;
use super::table::{Claim, Pending, Quota};
use super::{Service, Suite, info, now_ms, sorted};

/// How long an unfinished DKG is kept: the client drives it without any human step, in well
/// under a second, and until it completes it holds nothing persistent.
const DKG_TTL: Duration = Duration::from_secs(60);
/// DKGs one connection (and one enrolled device) may have in progress at once.
const MAX_DKGS_PER_SESSION: usize = 4;

/// A DKG in progress: this cosigner's party in FROST's key-making engine, or in the threshold
/// ECDSA DKG (`cosigner_protocol::ecdsa::dkg`) for a wallet of [`SUITE_SECP256K1_ECDSA`].
pub(super) enum DkgStage {
    /// A Taproot wallet's.
    Frost(Box<Exchange<Suite, DkgParams>>),
    /// An Ethereum wallet's, with the parameters it was started with.
    Ecdsa {
        params: DkgParams,
        party: PartyId,
        dkg: Box<EcdsaDkg>,
        /// Our confirmation, once round 3 is done.
        confirmation: Option<Confirmation>,
    },
}

impl DkgStage {
    /// Parameters, our party and our confirmation, once the DKG waits for confirmations.
    fn confirming(&self) -> Option<(DkgParams, PartyId, Confirmation)> {
        match self {
            Self::Frost(exchange) => {
                let unconfirmed = exchange.unconfirmed();
                let (party, state) = unconfirmed.first()?;
                Some((state.params().clone(), *party, state.confirmation().clone()))
            }
            Self::Ecdsa {
                params,
                party,
                confirmation,
                ..
            } => Some((params.clone(), *party, confirmation.clone()?)),
        }
    }
}

/// Feeds the coordinator's relayed messages of one step to `exchange` and advances it; the
/// exchange must be at `step` before, and past it after (every party's message was there).
pub(super) fn relay_step<P: cosigner_protocol::keygen::KeygenParams>(
    exchange: &mut Exchange<Suite, P>,
    step: Step,
    messages: impl IntoIterator<Item = Message>,
) -> Result<Vec<Message>, Failure> {
    let name = P::NAME;
    if exchange.step() != step {
        return Err(Failure::bad(format!(
            "the {name} is not waiting for {}",
            step_name(step)
        )));
    }
    for message in messages {
        exchange.absorb(&message, step_name(step))?;
    }
    let out = exchange.advance(&mut rand_core::OsRng)?;
    if exchange.step() == step {
        return Err(Failure::bad(format!(
            "the {name} still waits for {}",
            exchange.waiting()
        )));
    }
    Ok(out)
}

fn step_name(step: Step) -> &'static str {
    match step {
        Step::Round1 => "round-1 messages",
        Step::Round2 => "round-2 packages",
        Step::Confirmations => "confirmations",
        _ => "nothing",
    }
}

/// What a DKG in round 3 registers: checked before it is taken out of the table.
struct Confirmed {
    params: DkgParams,
    party: PartyId,
    device_key: Vec<u8>,
    recovery_key: Vec<u8>,
    policy: Option<String>,
    network: Option<String>,
    /// The other cosigner's attested audit key, as registered (`super::peer`).
    peer_key: Option<ByteBuf>,
}

impl Service {
    pub(super) fn dkg_start(
        &self,
        owner: ConnectionId,
        params: DkgParams,
        me: PartyId,
        enrollment: Option<&[u8]>,
    ) -> Outcome {
        // Checked first, before any work or state: a stranger without a token costs one
        // signature check.
        let enrolled = self.check_enrollment(enrollment)?;
        if params.ciphersuite != SUITE_SECP256K1_TR && params.ciphersuite != SUITE_SECP256K1_ECDSA {
            return Err(Failure::bad(format!(
                "ciphersuite {:?} is not served",
                params.ciphersuite
            )));
        }
        let wallet_id = params.wallet_id;
        if self.records().exists(&wallet_id)? {
            return Err(Failure::bad(format!("wallet {wallet_id} already exists")));
        }
        // A DKG holds nothing persistent until it completes: the table evicts its oldest entry
        // when full, and each connection (and enrolled device) has a quota.
        let quota = Quota {
            fresh: DKG_TTL,
            per_principal: MAX_DKGS_PER_SESSION,
        };
        self.dkgs.admit(
            wallet_id,
            Claim::new(owner, enrolled, false),
            &quota,
            || start_stage(&params, me),
        )
    }

    /// With enrollment required, the token's device key (the DKG's principal: its registration
    /// must name that key); empty when creation is open.
    fn check_enrollment(&self, token: Option<&[u8]>) -> Result<Vec<u8>, Failure> {
        let Some(operator) = &self.enrollment else {
            return Ok(Vec::new());
        };
        let token = token.ok_or_else(|| {
            Failure::denied(
                "wallet creation at this cosigner needs an operator's enrollment token \
                 (wallet create --enrollment-token FILE)",
            )
        })?;
        let token = EnrollmentToken::from_bytes(token)
            .map_err(|e| Failure::denied(format!("enrollment token: {e}")))?;
        token
            .verify(operator, now_ms())
            .map_err(|e| Failure::denied(format!("enrollment token: {e}")))?;
        Ok(normalise_public_key(&token.device_key)?)
    }

    /// Rounds 2 and 3 of session `owner`'s DKG of `wallet_id`: `relay` takes the messages the
    /// coordinator relayed and answers ours.
    pub(super) fn dkg_relay(
        &self,
        owner: ConnectionId,
        wallet_id: WalletId,
        relay: impl FnOnce(&mut Exchange<Suite, DkgParams>) -> Outcome,
    ) -> Outcome {
        self.dkgs.step(&wallet_id, &owner, |mut stage, _| {
            let DkgStage::Frost(exchange) = &mut stage else {
                return Err(Failure::bad(format!(
                    "wallet {wallet_id}'s DKG is threshold ECDSA"
                )));
            };
            let answer = relay(exchange)?;
            Ok((Some(stage), answer))
        })
    }

    /// A round of session `owner`'s threshold ECDSA DKG of `wallet_id`: the relayed hellos or
    /// round messages in, our next message (or after round 3, our signed confirmation) out.
    pub(super) fn ecdsa_dkg_relay(
        &self,
        owner: ConnectionId,
        wallet_id: WalletId,
        relayed: EcdsaRelayed<'_>,
    ) -> Outcome {
        self.dkgs.step(&wallet_id, &owner, |mut stage, _| {
            let DkgStage::Ecdsa {
                dkg, confirmation, ..
            } = &mut stage
            else {
                return Err(Failure::bad(format!(
                    "wallet {wallet_id}'s DKG is not threshold ECDSA"
                )));
            };
            let mut rng = rand_core::OsRng;
            let answer = match relayed {
                EcdsaRelayed::Hellos(hellos) => Response::EcdsaDkgRound {
                    message: dkg.handle_hellos(hellos, &mut rng)?,
                },
                EcdsaRelayed::Round(messages) => match dkg.handle_round(messages, &mut rng)? {
                    RoundOutput::Next(message) => Response::EcdsaDkgRound { message },
                    RoundOutput::Confirm(ours) => {
                        let signature = Some(self.sign_confirmation(&wallet_id, &ours)?);
                        *confirmation = Some(ours.clone());
                        Response::DkgRound3 {
                            confirmation: ours,
                            signature,
                        }
                    }
                },
            };
            Ok((Some(stage), answer))
        })
    }

    pub(super) fn dkg_confirm(
        &self,
        wallet_id: WalletId,
        confirmations: &[Confirmation],
        registration: &Registration,
        signatures: &[(PartyId, ByteBuf)],
    ) -> Outcome {
        // The confirmations are the capability here, not the session: only the coordinator saw
        // every round-1 message, so only it can send confirmations equal to ours, and the
        // registration is signed by both keys over the transcript. A client that died after
        // sending them elsewhere can finish from a new session; sent again once done, it gets
        // the same answer.
        if let Some(done) = self.dkg_already_confirmed(&wallet_id, registration)? {
            return Ok(done);
        }
        // Everything is checked before the DKG is taken out of the table: a bogus confirmation
        // from someone who learnt the wallet id cannot destroy another session's ceremony.
        let confirmed =
            self.check_confirmation(&wallet_id, (confirmations, signatures), registration)?;
        let taken = self.dkgs.remove(&wallet_id)?;
        let Some(Pending { stage, .. }) = taken else {
            // Another confirmation of it is being stored right now: retry and get its answer.
            return Err(Failure::busy(format!(
                "the DKG of wallet {wallet_id} is being confirmed by another request: try again"
            )));
        };
        let made = finish_stage(stage, confirmations)?;
        let device_key = confirmed.device_key.clone();
        let state = Self::new_wallet_state(confirmed, made.public_key_package.to_vec());
        let _guard = self.writer(&wallet_id)?;
        if self.records().exists(&wallet_id)? {
            return Err(Failure::bad(format!("wallet {wallet_id} already exists")));
        }
        self.records()
            .save_share_and_state(&wallet_id, &made.share, made.ecdsa, &state)?;
        // Committed: a failure to append the audit entry now must not make the client believe
        // the wallet was not created (it would throw its share away).
        let _ = self.log(
            &wallet_id,
            "create",
            &format!("device:{}", hex::encode(&device_key)),
            &made.transcript_hash,
            &psbt::creation_decision(&state),
        );
        Ok(Response::DkgDone {
            wallet: info(wallet_id, &state)?,
        })
    }

    /// Checks the confirmations against ours and the registration (both keys' signatures over
    /// this wallet and this DKG's transcript, the enrollment token's key), leaving the DKG in
    /// its table.
    fn check_confirmation(
        &self,
        wallet_id: &WalletId,
        confirmed: (&[Confirmation], &[(PartyId, ByteBuf)]),
        registration: &Registration,
    ) -> Result<Confirmed, Failure> {
        let confirmations = confirmed.0;
        let (params, party, ours, enrolled) = self
            .dkgs
            .peek(wallet_id, DKG_TTL, |p| {
                let (params, party, ours) = p
                    .stage
                    .confirming()
                    .ok_or_else(|| Failure::bad("the DKG is not waiting for confirmations"))?;
                Ok((params, party, ours, p.claim.key.clone()))
            })?
            .ok_or_else(|| {
                Failure::not_found(format!("no DKG running for wallet {wallet_id} (expired)"))
            })?;
        cosigner_protocol::keygen::check_confirmations::<DkgParams>(
            &sorted(&params.parties),
            party,
            &ours,
            confirmations,
        )?;
        // Both keys prove possession over this wallet and this DKG's transcript.
        let device_key = normalise_public_key(&registration.device_key)?;
        let recovery_key = normalise_public_key(&registration.recovery_key)?;
        if device_key == recovery_key {
            return Err(Failure::bad(
                "the recovery credential must differ from the device key",
            ));
        }
        if !enrolled.is_empty() && enrolled != device_key {
            return Err(Failure::denied(
                "the device key registered is not the one the enrollment token names",
            ));
        }
        let (policy, network) = if params.ciphersuite == SUITE_SECP256K1_ECDSA {
            ecdsa_creation_terms(registration, &device_key)?
        } else {
            psbt::creation_terms(registration, &device_key)?
        };
        let peer_key = self.creation_peer_key(wallet_id, party, registration, confirmed)?;
        let digest = registration_digest_with(
            wallet_id,
            &ours.transcript_hash,
            &registration.device_key,
            &registration.recovery_key,
            registration.policy.as_deref(),
            registration.network.as_deref(),
        );
        verify_digest(&device_key, &digest, &registration.device_signature)
            .map_err(|_| Failure::denied("device key registration signature"))?;
        verify_digest(&recovery_key, &digest, &registration.recovery_signature)
            .map_err(|_| Failure::denied("recovery credential registration signature"))?;
        Ok(Confirmed {
            params,
            party,
            device_key,
            recovery_key,
            policy,
            network,
            peer_key,
        })
    }

    /// The state of a wallet just created, at epoch 0.
    fn new_wallet_state(confirmed: Confirmed, public_key_package: Vec<u8>) -> WalletState {
        let party = confirmed.party;
        WalletState {
            params: confirmed.params,
            party: confirmed.party,
            current_epoch: Epoch(0),
            retained_epochs: Vec::new(),
            prepared_epoch: None,
            device_key: ByteBuf::from(confirmed.device_key),
            recovery_key: ByteBuf::from(confirmed.recovery_key),
            pending_device_key: None,
            revoked_keys: Vec::new(),
            public_key_package: ByteBuf::from(public_key_package),
            epoch_started_ms: now_ms(),
            signatures: 0,
            policy: confirmed.policy,
            network: confirmed.network,
            history: Vec::new(),
            commit_confirmations: Vec::new(),
            signed_txids: Vec::new(),
            provider_key: confirmed
                .peer_key
                .clone()
                .filter(|_| party == party::RECOVERY),
            recovery_cosigner_key: confirmed.peer_key.filter(|_| party == party::PROVIDER),
            commit_receipt: None,
            excluded: Vec::new(),
        }
    }

    /// `DkgDone` again for a wallet already created with this very registration.
    fn dkg_already_confirmed(
        &self,
        wallet_id: &WalletId,
        registration: &Registration,
    ) -> Result<Option<Response>, Failure> {
        if self.dkgs.contains(wallet_id)? || !self.records().exists(wallet_id)? {
            return Ok(None);
        }
        let state = self.records().load_state(wallet_id)?;
        // The same registration: its recovery credential never changes, whatever the wallet did
        // since (refreshes, a recovery); the client compares the key package it gets back.
        if normalise_public_key(&registration.recovery_key)? != state.recovery_key.as_slice() {
            return Err(Failure::bad(format!("wallet {wallet_id} already exists")));
        }
        Ok(Some(Response::DkgDone {
            wallet: info(*wallet_id, &state)?,
        }))
    }
}

/// The network name an Ethereum wallet is registered with (its transactions name their chain id
/// themselves, EIP-155).
pub(super) const ETHEREUM: &str = cosigner_protocol::policy::NETWORK_ETHEREUM;

/// An Ethereum wallet's registration terms: network "ethereum" (or none), and a policy that
/// parses as an Ethereum policy with the device key as its only member.
fn ecdsa_creation_terms(
    registration: &Registration,
    device_key: &[u8],
) -> Result<(Option<String>, Option<String>), Failure> {
    if registration
        .network
        .as_deref()
        .is_some_and(|n| n != ETHEREUM)
    {
        return Err(Failure::bad(format!(
            "a threshold ECDSA wallet's network is {ETHEREUM:?}, not {:?}",
            registration.network.as_deref().unwrap_or_default()
        )));
    }
    if let Some(text) = &registration.policy {
        Policy::parse_for(Chain::Ethereum, text, &psbt::owner(device_key))?;
    }
    Ok((registration.policy.clone(), Some(ETHEREUM.to_owned())))
}

/// What a threshold ECDSA DKG request relays.
pub(super) enum EcdsaRelayed<'a> {
    /// Every party's hello.
    Hellos(&'a [EcdsaHello]),
    /// Every party's message of the round.
    Round(&'a [EcdsaRound]),
}

/// A DKG's first step as `me`: the stage to keep and our first message.
fn start_stage(params: &DkgParams, me: PartyId) -> Result<(DkgStage, Response), Failure> {
    if params.ciphersuite == SUITE_SECP256K1_ECDSA {
        let (dkg, hello) =
            ecdsa::dkg::start(EcdsaDkgParams::of(params), me, &mut rand_core::OsRng)?;
        let stage = DkgStage::Ecdsa {
            params: params.clone(),
            party: me,
            dkg: Box::new(dkg),
            confirmation: None,
        };
        return Ok((stage, Response::EcdsaDkgHello { hello }));
    }
    let (exchange, first) = Exchange::start(params, vec![(me, ())], &mut rand_core::OsRng)?;
    match first.into_iter().next() {
        Some(Message::Round1(message)) => Ok((
            DkgStage::Frost(Box::new(exchange)),
            Response::DkgRound1 { message },
        )),
        _ => Err(internal("the DKG produced no round-1 message")),
    }
}

/// What a confirmed DKG made: our share's record, the public key package to keep in the state,
/// and the transcript every party confirmed.
struct Made {
    share: ShareRecord,
    public_key_package: ByteBuf,
    transcript_hash: [u8; 32],
    ecdsa: bool,
}

/// Feeds every party's confirmation to a DKG waiting for them: what it made.
fn finish_stage(stage: DkgStage, confirmations: &[Confirmation]) -> Result<Made, Failure> {
    match stage {
        DkgStage::Frost(mut exchange) => {
            let messages = confirmations.iter().cloned().map(Message::Confirmation);
            relay_step(&mut exchange, Step::Confirmations, messages)?;
            let (_, output) = exchange
                .into_outputs()?
                .pop()
                .ok_or_else(|| internal("the DKG ended without our share"))?;
            let pkp = ByteBuf::from(output.public_key_package.serialize().map_err(internal)?);
            let share = ShareRecord {
                epoch: Epoch(0),
                key_package: ByteBuf::from(output.key_package.serialize().map_err(internal)?),
                public_key_package: pkp.clone(),
            };
            Ok(Made {
                share,
                public_key_package: pkp,
                transcript_hash: output.transcript_hash,
                ecdsa: false,
            })
        }
        DkgStage::Ecdsa { dkg, .. } => {
            let output = dkg.handle_confirmations(confirmations)?;
            let public = EcdsaPublic::of(&output);
            let pkp = ByteBuf::from(public.to_bytes()?);
            let secret = output.key.to_secret_bytes()?;
            let share = ShareRecord {
                epoch: Epoch(0),
                key_package: ByteBuf::from(secret.to_vec()),
                public_key_package: pkp.clone(),
            };
            Ok(Made {
                share,
                public_key_package: pkp,
                transcript_hash: output.transcript_hash,
                ecdsa: true,
            })
        }
    }
}

/// The sealed package in an engine's message, if it is one.
/// Round 1 relayed (the coordinator's copy of every round-1 message): our sealed packages.
pub(super) fn round1_relayed<P: cosigner_protocol::keygen::KeygenParams>(
    exchange: &mut Exchange<Suite, P>,
    round1: &[Round1Message],
) -> Result<Vec<SealedPackage>, Failure> {
    let messages = round1.iter().cloned().map(Message::Round1);
    let out = relay_step(exchange, Step::Round1, messages)?;
    Ok(out.into_iter().filter_map(package_of).collect())
}

/// Round 2 relayed (the packages sealed to us): our confirmation.
pub(super) fn round2_relayed<P: cosigner_protocol::keygen::KeygenParams>(
    exchange: &mut Exchange<Suite, P>,
    packages: &[SealedPackage],
) -> Result<Confirmation, Failure> {
    let messages = packages.iter().cloned().map(Message::Round2);
    let out = relay_step(exchange, Step::Round2, messages)?;
    out.into_iter()
        .find_map(confirmation_of)
        .ok_or_else(|| internal(format!("the {} produced no confirmation", P::NAME)))
}

pub(super) fn package_of(message: Message) -> Option<SealedPackage> {
    match message {
        Message::Round2(p) => Some(p),
        _ => None,
    }
}

/// The confirmation in an engine's message, if it is one.
pub(super) fn confirmation_of(message: Message) -> Option<Confirmation> {
    match message {
        Message::Confirmation(c) => Some(c),
        _ => None,
    }
}
