//! PSBTs with a personal 2-of-3 wallet: this device (A) and the provider (B) sign every input of a
//! PSBT spending the wallet's own Taproot output; and the policy that limits what they sign.
//!
//! The device reads the PSBT itself ([`summarize`]: value leaving, fee, destinations, from the
//! outputs' scripts, never from the PSBT's labels) and shows it before anything is sent. The
//! provider reads it again inside its boundary, evaluates the wallet's policy with the wallet's
//! spend history, and answers one commitment per input with its own reading; the device signs
//! only if both readings agree. Each input is a separate FROST signature over its BIP-341
//! sighash; the aggregated signatures are checked (frost, then an independent BIP-340 verifier,
//! then again by `psbt::finalize`) before the transaction is returned.

use cosigner_protocol::auth::P256Signer;
use cosigner_protocol::auth::public_key_bytes;
use cosigner_protocol::policy::{Chain, Member, Policy};
use cosigner_protocol::psbt::{self, SpendSummary};
use cosigner_protocol::wire::{KeyRole, PsbtEvaluation, Request, Response, WalletId};

use crate::address::own_keys;
use crate::courier::Courier;
use crate::error::{ClientError, Result};
use crate::home::{Home, WalletFile};
use crate::receipt::{Expected, Receipt, receipt_of};
use crate::wallet::{CoSigner, TwoParty, authorized, unexpected};

/// The name a personal wallet's policy gives its one member, this device.
pub const OWNER: &str = "owner";

/// A signed transaction.
#[derive(Debug, Clone)]
pub struct Signed {
    /// Its txid.
    pub txid: String,
    /// Its consensus encoding, ready to broadcast.
    pub tx: Vec<u8>,
    /// The PSBT with every input's `PSBT_IN_TAP_KEY_SIG` set (binary, not finalized), for
    /// wallet software that combines and finalizes itself.
    pub psbt: Vec<u8>,
    /// The provider's reading of the PSBT (and the policy rule that allowed it).
    pub evaluation: PsbtEvaluation,
    /// The cosigner's receipt for the spend (`crate::receipt`), when its courier attested a key.
    pub receipt: Option<Receipt>,
}

/// Checks that `policy` is one the cosigners accept for a wallet of this device on `chain`: it
/// parses with this device's key as its only member, `owner`.
pub fn check_policy(home: &Home, chain: Chain, policy: &str) -> Result<Policy> {
    let owner = Member {
        name: OWNER.into(),
        device_key: public_key_bytes(&home.device_key()?),
    };
    Ok(Policy::parse_for(chain, policy, &[owner])?)
}

/// This device's own reading of a PSBT (binary) for `wallet` (personal or DAO): it must spend
/// only the wallet's output key; what leaves, where to, and the fee.
pub fn summarize(wallet: &WalletFile, psbt: &[u8]) -> Result<SpendSummary> {
    summarize_with(wallet, &own_keys(wallet)?, psbt)
}

/// [`summarize`] with the wallet's keys at hand: one set of keys serves every reading of one
/// PSBT (its children scanned at most once).
fn summarize_with(wallet: &WalletFile, keys: &psbt::OwnKeys, psbt: &[u8]) -> Result<SpendSummary> {
    let network = psbt::network_from_name(wallet.network.name())?;
    Ok(psbt::analyze(psbt, keys, network)?)
}

/// Whether the provider's reading is this device's (addresses aside: a wallet created before
/// policies may have no network at the provider).
fn agrees(ours: &SpendSummary, theirs: &PsbtEvaluation) -> bool {
    ours.txid == theirs.txid
        && ours.value_leaving == theirs.value_leaving
        && ours.fee == theirs.fee
        && ours.change == theirs.change
        && ours.destinations.len() == theirs.destinations.len()
        && ours
            .destinations
            .iter()
            .zip(&theirs.destinations)
            .all(|(a, (_, amount))| a.amount == *amount)
}

/// Signs every input of `psbt` (binary) with this device and the provider, finalizes it and
/// returns the transaction. The provider refuses what the wallet's policy does not allow.
pub fn sign_psbt(
    home: &Home,
    provider: &mut dyn Courier,
    wallet_id: WalletId,
    psbt: &[u8],
) -> Result<Signed> {
    sign_psbt_with(home, provider, CoSigner::Provider, wallet_id, psbt)
}

/// [`sign_psbt`] with `cosigner` (the recovery cosigner under the recovery credential when the
/// provider is unreachable); it evaluates the wallet's policy with its own spend history.
pub fn sign_psbt_with(
    home: &Home,
    provider: &mut dyn Courier,
    cosigner: CoSigner<'_>,
    wallet_id: WalletId,
    psbt: &[u8],
) -> Result<Signed> {
    let wallet = home.wallet(&wallet_id)?;
    if wallet.dao.is_some() {
        return Err(ClientError::Input(
            "a DAO wallet's PSBTs go through its members (cosigner sign --request-out)".into(),
        ));
    }
    let keys = own_keys(&wallet)?;
    let summary = summarize_with(&wallet, &keys, psbt)?;
    let two = TwoParty::new(home, &wallet_id, wallet, &cosigner)?;
    let (role, authorizer) = cosigner.authorizer(home)?;
    let signed = two.sign_psbt_now(provider, (role, &authorizer), psbt, (&summary, &keys))?;
    let evaluation = signed.evaluation;
    // The cosigner signed only what it read itself; this device publishes only what both read
    // alike (a cosigner that read another transaction gets nothing finalized).
    if !agrees(&summary, &evaluation) || signed.signatures.len() != summary.sighashes.len() {
        return Err(ClientError::Protocol(
            cosigner_protocol::ProtocolError::Disagreement {
                reason: "the provider's reading of the PSBT differs from this device's: not \
                         finalizing"
                    .into(),
            },
        ));
    }
    let (txid, tx) = psbt::finalize(psbt, &keys, &signed.signatures)?;
    let signed_psbt = psbt::with_key_sigs(psbt, &keys, &signed.signatures)?;
    let digest: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(psbt).into();
    let expected = Expected {
        wallet_id: &wallet_id,
        action: "sign-psbt",
        digest: &digest,
        decision: &format!("signed {txid}"),
    };
    let receipt = receipt_of(&*provider, &signed.receipt, &expected)?;
    Ok(Signed {
        txid,
        tx,
        psbt: signed_psbt,
        evaluation,
        receipt,
    })
}

/// Replaces (`Some`) or removes (`None`) a personal wallet's policy at both cosigners, authorized
/// by the offline recovery credential (the device key alone cannot). The provider first, then
/// the recovery cosigner; if the second refuses, the error says the two now differ.
pub fn set_policy(
    home: &Home,
    provider: &mut dyn Courier,
    recovery: &mut dyn Courier,
    wallet_id: WalletId,
    recovery_key: &dyn P256Signer,
    policy: Option<&str>,
) -> Result<()> {
    let chain = if home.has_eth_wallet(&wallet_id) {
        Chain::Ethereum
    } else {
        let wallet = home.wallet(&wallet_id)?;
        if wallet.dao.is_some() {
            return Err(ClientError::Input(
                "a DAO wallet's policy changes through its admin quorum, not a recovery \
                 credential"
                    .into(),
            ));
        }
        Chain::Bitcoin
    };
    if let Some(text) = policy {
        check_policy(home, chain, text)?;
    }
    let request = Request::SetPolicy {
        wallet_id,
        policy: policy.map(str::to_owned),
    };
    let both: [(&str, &mut dyn Courier); 2] =
        [("provider", provider), ("recovery cosigner", recovery)];
    for (n, (name, session)) in both.into_iter().enumerate() {
        match authorized(
            session,
            wallet_id,
            KeyRole::Recovery,
            recovery_key,
            &request,
        ) {
            Ok(Response::Done) => {}
            Ok(other) => return Err(unexpected("Done", &other)),
            Err(e) if n > 0 => {
                return Err(ClientError::Unexpected(format!(
                    "the provider changed the policy but the {name} did not ({e}): run the \
                     command again"
                )));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
