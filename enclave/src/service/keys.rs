//! Unsealed key packages kept in memory for a bounded time and count, so a busy wallet's share
//! is not unsealed on every signature (each unseal is a token or KMS operation).
//!
//! What bounds the exposure: an entry serves for at most [`KEY_TTL`] and [`MAX_USES`] signatures
//! before it is unsealed again (expired entries are swept on every use of the cache, so an idle
//! enclave drops them at its next signing request), the cache holds at most [`MAX_KEYS`] entries (the
//! oldest goes first), and every entry of a wallet goes when its state changes epochs or keys (a
//! refresh commits or finalizes, a recovery starts, is cancelled or completes). frost's
//! `KeyPackage` zeroizes on drop, so an evicted entry leaves nothing behind. The cache never
//! decides anything: authorization, epochs and policy are checked on every request as before.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cosigner_protocol::id::{Epoch, PartyId};
use cosigner_protocol::wire::WalletId;
use frost_core::keys::KeyPackage;

use super::Suite;
use super::failure::{Failure, lock};

/// How long an unsealed key package is kept.
pub(super) const KEY_TTL: Duration = Duration::from_secs(60);
/// How many signatures one unseal serves at most.
pub(super) const MAX_USES: u32 = 10_000;
/// How many key packages are kept at most.
pub(super) const MAX_KEYS: usize = 1024;

type Id = (WalletId, PartyId, Epoch);

struct Cached {
    key: KeyPackage<Suite>,
    since: Instant,
    uses: u32,
}

/// The cache (see the module documentation).
#[derive(Default)]
pub(super) struct KeyCache {
    entries: Mutex<Entries>,
}

#[derive(Default)]
struct Entries {
    keys: HashMap<Id, Cached>,
    /// How often keys were forgotten: a key unsealed while some wallet's keys were forgotten
    /// (its refresh finalized meanwhile, say) is used once and not kept. One counter for all
    /// wallets, so it stays bounded; a concurrent forget only costs another unseal.
    forgets: u64,
}

impl Entries {
    /// Drops what outlived [`KEY_TTL`].
    fn sweep(&mut self) {
        self.keys.retain(|_, c| c.since.elapsed() < KEY_TTL);
    }
}

impl KeyCache {
    /// The key package of `wallet_id`'s `party` at `epoch`: kept, or `unseal`ed now and kept.
    pub(super) fn get(
        &self,
        wallet_id: WalletId,
        party: PartyId,
        epoch: Epoch,
        unseal: impl FnOnce() -> Result<KeyPackage<Suite>, Failure>,
    ) -> Result<KeyPackage<Suite>, Failure> {
        let id = (wallet_id, party, epoch);
        let generation = {
            let mut entries = lock(&self.entries)?;
            entries.sweep();
            if let Some(cached) = entries.keys.get_mut(&id) {
                if cached.uses < MAX_USES {
                    cached.uses += 1;
                    return Ok(cached.key.clone());
                }
                entries.keys.remove(&id);
            }
            entries.forgets
        };
        // Unsealed outside the lock: a token operation must not stall every other wallet.
        let key = unseal()?;
        let mut entries = lock(&self.entries)?;
        if entries.forgets != generation {
            return Ok(key);
        }
        if entries.keys.len() >= MAX_KEYS
            && let Some(oldest) = entries
                .keys
                .iter()
                .min_by_key(|(_, c)| c.since)
                .map(|(k, _)| *k)
        {
            entries.keys.remove(&oldest);
        }
        entries.keys.insert(
            id,
            Cached {
                key: key.clone(),
                since: Instant::now(),
                uses: 1,
            },
        );
        Ok(key)
    }

    /// Drops every key package of `wallet_id` (zeroized).
    pub(super) fn forget(&self, wallet_id: &WalletId) -> Result<(), Failure> {
        let mut entries = lock(&self.entries)?;
        entries.sweep();
        entries.keys.retain(|(w, _, _), _| w != wallet_id);
        entries.forgets = entries.forgets.wrapping_add(1);
        Ok(())
    }

    /// How many key packages are kept (for tests).
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.entries.lock().map(|e| e.keys.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use cosigner_protocol::party;
    use std::cell::Cell;

    use super::*;

    fn key() -> KeyPackage<Suite> {
        let (shares, _) = frost_core::keys::generate_with_dealer::<Suite, _>(
            3,
            2,
            frost_core::keys::IdentifierList::Default,
            &mut rand_core::OsRng,
        )
        .unwrap();
        let share = shares.into_values().next().unwrap();
        KeyPackage::try_from(share).unwrap()
    }

    #[test]
    fn a_key_is_unsealed_once_until_forgotten() {
        let cache = KeyCache::default();
        let unseals = Cell::new(0);
        let unseal = || {
            unseals.set(unseals.get() + 1);
            Ok(key())
        };
        let w = WalletId([1; 16]);
        let first = cache.get(w, party::PROVIDER, Epoch(0), unseal).unwrap();
        let again = cache.get(w, party::PROVIDER, Epoch(0), unseal).unwrap();
        assert_eq!(first, again);
        assert_eq!(unseals.get(), 1);
        // Another epoch is another key.
        cache.get(w, party::PROVIDER, Epoch(1), unseal).unwrap();
        assert_eq!((unseals.get(), cache.len()), (2, 2));
        cache.forget(&w).unwrap();
        assert_eq!(cache.len(), 0);
        cache.get(w, party::PROVIDER, Epoch(0), unseal).unwrap();
        assert_eq!(unseals.get(), 3);
    }

    #[test]
    fn a_failed_unseal_keeps_nothing() {
        let cache = KeyCache::default();
        let failed = cache.get(WalletId([2; 16]), party::PROVIDER, Epoch(0), || {
            Err(super::super::failure::internal("token down"))
        });
        assert!(failed.is_err());
        assert_eq!(cache.len(), 0);
    }
}
