//! Threshold signing (RFC 9591 §5): t of the n parties sign one message together.
//!
//! ```text
//! signer:       SignerSession::commit ──(commitments)──►  coordinator: signing_package
//! signer:       SignerSession::sign   ◄──(SigningPackage)──
//! signer:       ──(signature share)──► coordinator: aggregate ──► signature (BIP-340 for -tr)
//! ```
//!
//! What frost leaves to us, and this module guards:
//!
//! * **Nonce reuse.** `round2::sign` takes the nonces by reference and would sign twice with them,
//!   which reveals the signing share (RFC 9591 §5.1, §5.2 and §7.3: a nonce MUST NOT be used in
//!   more than one `sign`, and is deleted after it). A
//!   [`SignerSession`] owns its nonces, is neither `Clone` nor serializable, and
//!   [`SignerSession::sign`] consumes it: a second share from the same nonces does not compile.
//!   Even a refused request consumes the session, so a caller cannot probe with variations.
//! * **Signing oracles.** A session is bound at commit time to the exact message, the exact signer
//!   set and the threshold; round 2 refuses a `SigningPackage` that differs in any of them or that
//!   replaced our commitment (RFC 9591 §5.2: each participant MUST validate the coordinator's
//!   inputs; §7.7: participants must not act as signing oracles).
//! * **Culprits.** A bad signature share makes [`aggregate`] fail naming its signer (RFC 9591
//!   §5.3 `verify_signature_share`, §5.4 identifiable abort), so the operator can act.
//!
//! For `frost-secp256k1-tr` the signature is a 64-byte BIP-340 signature valid under the DKG's
//! group key, which is already the BIP-341 tweaked output key: plain `sign`/`aggregate` are right,
//! the `*_with_tweak` variants would tweak twice.

use std::collections::BTreeMap;

use frost_core::keys::{KeyPackage, PublicKeyPackage};
use frost_core::round1::{SigningCommitments, SigningNonces};
use frost_core::round2::SignatureShare;
use frost_core::{Ciphersuite, Identifier, SigningPackage, VerifyingKey};
use rand_core::{CryptoRng, RngCore};

use crate::dkg::common;
use crate::error::{ProtocolError, Result};
use crate::id::PartyId;

/// A participant's open signing session, created at round 1.
///
/// It holds the nonces of one signature: not `Clone`, not serializable, zeroized on drop (frost's
/// `SigningNonces` are `ZeroizeOnDrop`), and consumed by [`SignerSession::sign`]. Keep it in memory
/// only: a session written to storage and read back (or rolled back) would sign twice with the
/// same nonces.
///
/// Signing once compiles:
///
/// ```no_run
/// # use cosigner_protocol::sign::SignerSession;
/// # use frost_core::keys::KeyPackage;
/// # type Tr = frost_secp256k1_tr::Secp256K1Sha256TR;
/// fn sign_once(session: SignerSession<Tr>, key: &KeyPackage<Tr>, package: &[u8]) {
///     let _share = session.sign(key, package);
/// }
/// ```
///
/// Signing twice with the same session does not (use of a moved value):
///
/// ```compile_fail,E0382
/// # use cosigner_protocol::sign::SignerSession;
/// # use frost_core::keys::KeyPackage;
/// # type Tr = frost_secp256k1_tr::Secp256K1Sha256TR;
/// fn sign_twice(session: SignerSession<Tr>, key: &KeyPackage<Tr>, package: &[u8]) {
///     let _first = session.sign(key, package);
///     let _second = session.sign(key, package);
/// }
/// ```
///
/// Nor does copying it:
///
/// ```compile_fail,E0308
/// # use cosigner_protocol::sign::SignerSession;
/// # type Tr = frost_secp256k1_tr::Secp256K1Sha256TR;
/// fn copy(session: &SignerSession<Tr>) -> SignerSession<Tr> {
///     session.clone()
/// }
/// ```
pub struct SignerSession<C: Ciphersuite> {
    /// The nonces and what they were drawn for, now bound to:
    drawn: Precommitment<C>,
    message: Vec<u8>,
    /// Sorted.
    signers: Vec<PartyId>,
}

impl<C: Ciphersuite> SignerSession<C> {
    /// Round 1 (RFC 9591 §5.1 `commit`): draws fresh nonces and binds the session to the exact
    /// `message`, the exact `signers` (any order; kept sorted) and the key's threshold. Returns the
    /// session and our serialized `SigningCommitments` for the coordinator.
    ///
    /// Errors ([`ProtocolError::Params`]): `me` does not hold `key_package`; the signer set is
    /// malformed, lacks `me`, or is smaller than the threshold.
    pub fn commit(
        key_package: &KeyPackage<C>,
        me: PartyId,
        message: &[u8],
        signers: &[PartyId],
        rng: &mut (impl CryptoRng + RngCore),
    ) -> Result<(Self, Vec<u8>)> {
        let (precommitment, serialized) = Precommitment::new(key_package, me, rng)?;
        Ok((precommitment.bind(message, signers)?, serialized))
    }

    /// Round 2 (RFC 9591 §5.2 `sign`): checks the coordinator's serialized `SigningPackage`
    /// against the session (same message, exactly the bound signer set, our commitment present
    /// and unchanged, at least the threshold) and returns our serialized `SignatureShare`.
    ///
    /// Consumes the session whatever the outcome: its nonces are used at most once, and a refused
    /// package cannot be retried with a variation.
    ///
    /// Errors: a package that does not decode ([`ProtocolError::Encoding`]); any difference from
    /// the session ([`ProtocolError::SessionMismatch`]); another key package than the session's
    /// ([`ProtocolError::Params`]).
    pub fn sign(self, key_package: &KeyPackage<C>, signing_package: &[u8]) -> Result<Vec<u8>> {
        self.check_key(key_package)?;
        let package = decode_package(signing_package)?;
        self.sign_package(key_package, &package)
    }

    /// Our commitments, decoded.
    pub(crate) fn signing_commitments(&self) -> &SigningCommitments<C> {
        self.drawn.signing_commitments()
    }

    fn check_key(&self, key_package: &KeyPackage<C>) -> Result<()> {
        if *key_package.identifier() != self.drawn.identifier
            || *key_package.verifying_key() != self.drawn.verifying_key
        {
            return Err(ProtocolError::Params {
                reason: "the key package is not the one the session was opened with".into(),
            });
        }
        Ok(())
    }

    /// [`SignerSession::sign`] of a package already decoded (the signing engine decodes or
    /// builds each package once, not once per use).
    pub(crate) fn sign_package(
        self,
        key_package: &KeyPackage<C>,
        package: &SigningPackage<C>,
    ) -> Result<Vec<u8>> {
        self.check_key(key_package)?;
        let drawn = &self.drawn;
        let mismatch = |reason: String| ProtocolError::SessionMismatch { reason };
        if package.message().as_slice() != self.message.as_slice() {
            return Err(mismatch(format!(
                "the signing package's message ({} bytes) is not the one committed to ({} bytes)",
                package.message().len(),
                self.message.len()
            )));
        }
        let expected: Vec<Identifier<C>> = self
            .signers
            .iter()
            .map(|p| p.identifier::<C>())
            .collect::<Result<_>>()?;
        if !package.signing_commitments().keys().eq(expected.iter()) {
            let got: Vec<String> = package
                .signing_commitments()
                .keys()
                .map(|id| match common::party_of(id, &self.signers) {
                    Some(p) => p.to_string(),
                    None => "an unknown party".into(),
                })
                .collect();
            return Err(mismatch(format!(
                "the signing package's signers [{}] are not the session's {:?}",
                got.join(", "),
                self.signers
            )));
        }
        if package.signing_commitment(&drawn.identifier) != Some(drawn.commitments) {
            return Err(mismatch(format!(
                "the signing package carries another commitment for party {} (ours was replaced)",
                drawn.me
            )));
        }
        if package.signing_commitments().len() < usize::from(drawn.min_signers) {
            return Err(mismatch(format!(
                "{} signers, below the threshold of {}",
                package.signing_commitments().len(),
                drawn.min_signers
            )));
        }
        let share = frost_core::round2::sign(package, &drawn.nonces, key_package)
            .map_err(|e| common::frost_error(e, &self.signers, "signing"))?;
        Ok(share.serialize())
    }

    /// The message this session signs.
    pub fn message(&self) -> &[u8] {
        &self.message
    }

    /// The signer set this session signs with, sorted.
    pub fn signers(&self) -> &[PartyId] {
        &self.signers
    }

    /// Our party number.
    pub fn me(&self) -> PartyId {
        self.drawn.me
    }
}

/// Round 1 done before the message is known (RFC 9591 §5.1 allows commitments to be made ahead
/// of time): fresh nonces and their commitment, for one signature by `me` with one key package,
/// not yet bound to a message or a signer set. [`Precommitment::bind`] makes it a
/// [`SignerSession`], with every check and the single use of a session; until then it is only
/// kept. Like a session it is neither `Clone` nor serializable and its nonces zeroize on drop:
/// keep it in memory only, and hand each commitment out once.
///
/// Binding factors cover the message and every signer's commitment (RFC 9591 §4.4), so a
/// coordinator that learns our commitment before it picks the message and the other
/// commitments gains nothing (RFC 9591 §5.1, preprocessing; §7.3 on nonce reuse is what the
/// single use guards).
pub struct Precommitment<C: Ciphersuite> {
    nonces: SigningNonces<C>,
    commitments: SigningCommitments<C>,
    /// `commitments` serialized (once: it is sent, and bound into the signature's package).
    serialized: Vec<u8>,
    me: PartyId,
    identifier: Identifier<C>,
    verifying_key: VerifyingKey<C>,
    min_signers: u16,
}

impl<C: Ciphersuite> Precommitment<C> {
    /// Draws fresh nonces for `me`, holder of `key_package` (hedged with its signing share, as
    /// frost's `round1::commit` does). Returns the precommitment and our serialized
    /// `SigningCommitments`.
    ///
    /// Errors ([`ProtocolError::Params`]): `me` does not hold `key_package`.
    pub fn new(
        key_package: &KeyPackage<C>,
        me: PartyId,
        rng: &mut (impl CryptoRng + RngCore),
    ) -> Result<(Self, Vec<u8>)> {
        let identifier = me.identifier::<C>()?;
        if identifier != *key_package.identifier() {
            return Err(ProtocolError::Params {
                reason: format!("party {me} does not hold this key package"),
            });
        }
        let (nonces, commitments) = frost_core::round1::commit(key_package.signing_share(), rng);
        let serialized = commitments.serialize().map_err(|e| ProtocolError::Frost {
            reason: format!("serializing our commitments: {e}"),
        })?;
        let precommitment = Self {
            nonces,
            commitments,
            serialized: serialized.clone(),
            me,
            identifier,
            verifying_key: *key_package.verifying_key(),
            min_signers: *key_package.min_signers(),
        };
        Ok((precommitment, serialized))
    }

    /// Binds these nonces to the exact `message` and `signers` (any order; kept sorted): a
    /// session that signs only that. Consumes the precommitment whatever the outcome.
    ///
    /// Errors ([`ProtocolError::Params`]): the signer set is malformed, lacks us, or is smaller
    /// than the threshold.
    pub fn bind(self, message: &[u8], signers: &[PartyId]) -> Result<SignerSession<C>> {
        let me = self.me;
        let signers = common::normalize_parties(signers, "signer set")?;
        if !signers.contains(&me) {
            return Err(ProtocolError::Params {
                reason: format!("party {me} is not in the signer set {signers:?}"),
            });
        }
        if signers.len() < usize::from(self.min_signers) {
            return Err(ProtocolError::Params {
                reason: format!(
                    "{} signers, below the threshold of {}",
                    signers.len(),
                    self.min_signers
                ),
            });
        }
        Ok(SignerSession {
            drawn: self,
            message: message.to_vec(),
            signers,
        })
    }

    /// Our serialized commitments.
    ///
    /// Errors: none since they are serialized when drawn ([`Precommitment::new`] reports
    /// frost's failure); the `Result` is kept for callers written against the earlier API.
    pub fn commitments(&self) -> Result<Vec<u8>> {
        Ok(self.serialized.clone())
    }

    /// Our commitments, decoded: the signing engine builds packages from them without
    /// decoding what it serialized.
    pub(crate) fn signing_commitments(&self) -> &SigningCommitments<C> {
        &self.commitments
    }

    /// Our party number.
    pub fn me(&self) -> PartyId {
        self.me
    }
}

impl<C: Ciphersuite> std::fmt::Debug for Precommitment<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Precommitment")
            .field("me", &self.me)
            .field("nonces", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl<C: Ciphersuite> std::fmt::Debug for SignerSession<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignerSession")
            .field("drawn", &self.drawn)
            .field("signers", &self.signers)
            .field("message", &hex::encode(&self.message))
            .finish_non_exhaustive()
    }
}

/// The serialized commitments `party` has in the serialized signing `package`; `None` when the
/// package does not decode or has none for it.
pub fn commitment_in<C: Ciphersuite>(package: &[u8], party: PartyId) -> Option<Vec<u8>> {
    let package = SigningPackage::<C>::deserialize(package).ok()?;
    let id = party.identifier::<C>().ok()?;
    package.signing_commitment(&id)?.serialize().ok()
}

/// Coordinator, after round 1: builds the serialized `SigningPackage` (RFC 9591 §5.2 input) from
/// `message` and each signer's serialized commitments.
///
/// Errors: a commitment that does not decode ([`ProtocolError::Culprit`] naming its signer);
/// fewer than two signers or party 0 ([`ProtocolError::Params`]).
pub fn signing_package<C: Ciphersuite>(
    message: &[u8],
    commitments: &BTreeMap<PartyId, Vec<u8>>,
) -> Result<Vec<u8>> {
    encode_package(&build_package::<C>(message, commitments)?)
}

/// [`signing_package`], decoded: what the signing engine signs and aggregates with.
pub(crate) fn build_package<C: Ciphersuite>(
    message: &[u8],
    commitments: &BTreeMap<PartyId, Vec<u8>>,
) -> Result<SigningPackage<C>> {
    let mut decoded = BTreeMap::new();
    for (&party, bytes) in commitments {
        decoded.insert(party, decode_commitments(party, bytes)?);
    }
    package_of(message, &decoded)
}

/// [`build_package`] from commitments already decoded (and checked canonical): the signing
/// engine decodes each signer's commitments once, when they arrive.
///
/// Errors: fewer than two signers or party 0 ([`ProtocolError::Params`]).
pub(crate) fn package_of<C: Ciphersuite>(
    message: &[u8],
    commitments: &BTreeMap<PartyId, SigningCommitments<C>>,
) -> Result<SigningPackage<C>> {
    let parties: Vec<PartyId> = commitments.keys().copied().collect();
    let parties = common::normalize_parties(&parties, "signer set")?;
    if parties.len() < 2 {
        return Err(ProtocolError::Params {
            reason: "a signing set has at least two signers".into(),
        });
    }
    let mut by_identifier = BTreeMap::new();
    for (&party, decoded) in commitments {
        by_identifier.insert(party.identifier::<C>()?, *decoded);
    }
    Ok(SigningPackage::new(by_identifier, message))
}

/// `party`'s serialized `SigningCommitments`, decoded and checked to be in canonical form: what
/// a cosigner checks of a client's commitment before it records anything for the request.
///
/// Errors: [`ProtocolError::Culprit`] naming `party`.
pub fn decode_commitments<C: Ciphersuite>(
    party: PartyId,
    bytes: &[u8],
) -> Result<SigningCommitments<C>> {
    common::decode_canonical(
        bytes,
        SigningCommitments::<C>::deserialize,
        SigningCommitments::<C>::serialize,
    )
    .map_err(|e| ProtocolError::culprit(party, format!("its signing commitments {e}")))
}

/// A signing package serialized, as it travels.
pub(crate) fn encode_package<C: Ciphersuite>(package: &SigningPackage<C>) -> Result<Vec<u8>> {
    package.serialize().map_err(|e| ProtocolError::Frost {
        reason: format!("serializing the signing package: {e}"),
    })
}

/// A serialized signing package, decoded and checked to be in canonical form.
///
/// Errors: [`ProtocolError::Encoding`].
pub(crate) fn decode_package<C: Ciphersuite>(bytes: &[u8]) -> Result<SigningPackage<C>> {
    common::decode_canonical(
        bytes,
        SigningPackage::<C>::deserialize,
        SigningPackage::<C>::serialize,
    )
    .map_err(|e| ProtocolError::encoding(format!("signing package {e}")))
}

/// Coordinator, after round 2: aggregates the signature shares (RFC 9591 §5.3), checks the
/// signature against the group key, and returns it serialized (for `frost-secp256k1-tr`: the
/// 64-byte BIP-340 signature).
///
/// Uses plain `aggregate`, never `aggregate_with_tweak`: the DKG key of the -tr suite is already
/// tweaked. Every share is checked when the sum fails (RFC 9591 §5.3, §5.4), so all bad signers
/// are named.
///
/// Errors: shares missing for, or present without, a committed signer
/// ([`ProtocolError::UnexpectedMessage`]); a signer outside the wallet or below the threshold
/// ([`ProtocolError::Params`]); a share that does not decode or does not verify
/// ([`ProtocolError::Culprit`]); a package that does not decode ([`ProtocolError::Encoding`]).
pub fn aggregate<C: Ciphersuite>(
    signing_package: &[u8],
    shares: &BTreeMap<PartyId, Vec<u8>>,
    public_key_package: &PublicKeyPackage<C>,
) -> Result<Vec<u8>> {
    aggregate_package(
        &decode_package(signing_package)?,
        shares,
        public_key_package,
    )
}

/// [`aggregate`] with the package already decoded.
pub(crate) fn aggregate_package<C: Ciphersuite>(
    package: &SigningPackage<C>,
    shares: &BTreeMap<PartyId, Vec<u8>>,
    public_key_package: &PublicKeyPackage<C>,
) -> Result<Vec<u8>> {
    let share_parties: Vec<PartyId> = shares.keys().copied().collect();
    let share_parties = common::normalize_parties(&share_parties, "set of signature shares")?;
    let mut signers = Vec::with_capacity(package.signing_commitments().len());
    for id in package.signing_commitments().keys() {
        let party = common::party_of(id, &share_parties).ok_or_else(|| {
            ProtocolError::UnexpectedMessage {
                expected: "a signature share from every signer in the signing package",
                actual: format!("no share for the signer with identifier {id:?}"),
            }
        })?;
        signers.push(party);
    }
    if let Some(extra) = share_parties.iter().find(|p| !signers.contains(p)) {
        return Err(ProtocolError::UnexpectedMessage {
            expected: "shares only from the signers in the signing package",
            actual: format!("a share from party {extra}, who did not commit"),
        });
    }
    for party in &signers {
        let id = party.identifier::<C>()?;
        if !public_key_package.verifying_shares().contains_key(&id) {
            return Err(ProtocolError::Params {
                reason: format!("party {party} is not a member of this wallet"),
            });
        }
    }
    if let Some(min) = public_key_package.min_signers()
        && signers.len() < usize::from(min)
    {
        return Err(ProtocolError::Params {
            reason: format!("{} signers, below the threshold of {min}", signers.len()),
        });
    }

    let mut decoded = BTreeMap::new();
    for (&party, bytes) in shares {
        let share = common::decode_canonical(
            bytes,
            SignatureShare::<C>::deserialize,
            |s: &SignatureShare<C>| Ok(s.serialize()),
        )
        .map_err(|e| ProtocolError::culprit(party, format!("its signature share {e}")))?;
        decoded.insert(party.identifier::<C>()?, share);
    }

    // Without cheater detection, frost returns the sum only if it verifies against the group
    // key (RFC 9591 §5.3: the coordinator SHOULD verify before publishing); with it, a sum that
    // fails but whose shares each pass would come back unverified. So: one verification on the
    // way that succeeds, and only when it fails, every share checked to name the culprits.
    let signature = frost_core::aggregate_custom(
        package,
        &decoded,
        public_key_package,
        frost_core::CheaterDetection::Disabled,
    )
    .map_err(|e| {
        let culprits = frost_core::aggregate_custom(
            package,
            &decoded,
            public_key_package,
            frost_core::CheaterDetection::AllCheaters,
        );
        match culprits {
            Err(named) => common::frost_error(named, &signers, "aggregation"),
            Ok(_) => ProtocolError::Frost {
                reason: format!("the aggregated signature does not verify: {e}"),
            },
        }
    })?;
    signature.serialize().map_err(|e| ProtocolError::Frost {
        reason: format!("serializing the signature: {e}"),
    })
}
