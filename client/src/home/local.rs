//! What this device knows of a wallet on its own: whether its share is intact, the policy it
//! last registered, and the spends it signed. `wallet show` reads these offline; every decision
//! is the cosigners' (they hold the policy in force and the whole spend history).

use cosigner_protocol::policy::{MAX_POLICY_TEXT, MAX_WINDOW_HOURS};
use cosigner_protocol::wire::WalletId;
use frost_core::keys::{KeyPackage, VerifyingShare};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{Home, POLICY, SPENDS};
use crate::error::{ClientError, Result};
use crate::store::StoreError;
use crate::wallet::Suite;

/// A spend this device signed (a PSBT), as it recorded it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalSpend {
    /// When, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The asset (`btc`).
    pub asset: String,
    /// Value that left the wallet, fee included, in the asset's base unit (satoshis).
    pub amount: u64,
    /// The transaction.
    pub txid: String,
}

/// Spends older than this are dropped from the record: no velocity window is longer
/// (`policy::MAX_WINDOW_HOURS`).
const KEEP_MS: u64 = MAX_WINDOW_HOURS as u64 * 3_600_000;

/// Most spends kept (a year of one spend every ten minutes); the oldest go first.
const MAX_SPENDS: usize = 52_704;

impl Home {
    /// Checks this device's share of `id` before a ceremony uses it: present, a FROST key package,
    /// this device's party, and consistent with the wallet file's public key package (its
    /// verifying share is the one the group registered, and the one its secret gives).
    ///
    /// A damaged share is [`ClientError::ShareDamaged`], naming the file: only a recovery helps,
    /// and a ceremony would otherwise fail later blaming "party N". A share that differs while a
    /// refresh's prepared share is kept is left to that refresh to finish (its new share may be
    /// written before the wallet file: `replace_share` writes the share first).
    pub fn check_share(&self, id: &WalletId) -> Result<()> {
        let wallet = self.wallet(id)?;
        let damaged = |reason: &str| ClientError::ShareDamaged {
            path: self.describe(id, "share"),
            wallet_id: id.to_hex(),
            reason: reason.into(),
        };
        let name = Self::record(id, "share");
        let share: Zeroizing<Vec<u8>> = match self.get_record(&name, "share") {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return Err(damaged("missing")),
            Err(StoreError::Damaged { reason, .. }) => return Err(damaged(&reason)),
            Err(e) => return Err(super::store_err(&*self.store, &name, e)),
        };
        let Ok(kp) = KeyPackage::<Suite>::deserialize(&share) else {
            return Err(damaged("not a FROST key package"));
        };
        // (An unreadable public key package fails reading the wallet file itself.)
        let pkp = &wallet.public_key_package;
        let party = wallet.party.identifier::<Suite>().ok();
        let consistent = party.as_ref() == Some(kp.identifier())
            && pkp.verifying_shares().get(kp.identifier()) == Some(kp.verifying_share())
            && pkp.verifying_key() == kp.verifying_key()
            && VerifyingShare::from(*kp.signing_share()) == *kp.verifying_share();
        if consistent || self.prepared_share(id)?.is_some() {
            return Ok(());
        }
        Err(damaged("it does not belong to this wallet's key"))
    }

    /// The policy this device last registered for a personal wallet (`wallet create`,
    /// `wallet set-policy`), if it recorded one: `Some("")` is "no policy".
    pub fn local_policy(&self, id: &WalletId) -> Result<Option<String>> {
        let Some(bytes) = self.get(id, POLICY)? else {
            return Ok(None);
        };
        if bytes.len() > MAX_POLICY_TEXT {
            return Err(self.err(id, POLICY, "larger than any policy"));
        }
        String::from_utf8(bytes.to_vec())
            .map(Some)
            .map_err(|_| self.err(id, POLICY, "not UTF-8 text"))
    }

    /// Records the policy registered for a personal wallet (`None`: it has none; recorded as an
    /// empty file, so that "none" differs from "not known here").
    pub fn save_local_policy(&self, id: &WalletId, policy: Option<&str>) -> Result<()> {
        let text = policy.unwrap_or_default();
        self.put(id, POLICY, text.as_bytes())
    }

    /// The spends this device recorded for a wallet, oldest first.
    pub fn local_spends(&self, id: &WalletId) -> Result<Vec<LocalSpend>> {
        match self.get(id, SPENDS)? {
            None => Ok(Vec::new()),
            Some(bytes) => serde_json::from_slice(&bytes).map_err(|_| {
                self.err(
                    id,
                    SPENDS,
                    "not a spend record (remove it to start a new one)",
                )
            }),
        }
    }

    /// Adds a spend to the wallet's record, dropping those older than any velocity window.
    pub fn record_spend(&self, id: &WalletId, spend: LocalSpend) -> Result<()> {
        // A damaged record is replaced rather than blocking the spend that was already signed.
        let mut spends = self.local_spends(id).unwrap_or_default();
        let since = spend.at_ms.saturating_sub(KEEP_MS);
        spends.retain(|s| s.at_ms >= since);
        spends.push(spend);
        let excess = spends.len().saturating_sub(MAX_SPENDS);
        spends.drain(..excess);
        let json = serde_json::to_vec(&spends).map_err(|e| self.err(id, SPENDS, e))?;
        self.put(id, SPENDS, &json)
    }
}
