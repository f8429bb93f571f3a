//! Custody of a wallet's records: the sealed, anchored store ([`records`](super::records),
//! [`anchor`](super::anchor)), one writer per wallet, and the audit log
//! ([`audit`](super::audit)) with its bounded record of refusals.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cosigner_protocol::wire::WalletId;

use super::Service;
use super::failure::{Failure, internal, lock};
use super::records::Records;

/// Stripes of the per-wallet writer lock (wallets hash onto them; two wallets sharing a stripe
/// only wait for each other).
pub(super) const WRITER_STRIPES: usize = 64;
/// Refused requests recorded in the audit log per wallet and window; beyond, they are counted
/// and the count is recorded with the next refusal after the window (an anonymous flood of bad
/// signatures cannot grow the log without bound).
const REFUSALS_PER_WINDOW: u32 = 8;
const REFUSAL_WINDOW: Duration = Duration::from_secs(600);
/// Wallets whose refusal counts are tracked at once (the oldest window is forgotten beyond).
const MAX_REFUSAL_WALLETS: usize = 65_536;

/// A held writer lock (see [`Service::writer`]); the lock file, if any, is released on drop.
pub(super) struct WriterGuard<'a>(std::sync::MutexGuard<'a, Option<std::fs::File>>);

impl Drop for WriterGuard<'_> {
    fn drop(&mut self) {
        if let Some(file) = self.0.as_ref() {
            // Closing would release it too; the descriptor is kept for the next writer.
            let _ = file.unlock();
        }
    }
}

/// The writer stripes: plain mutexes alone, or each with its lock file `PREFIX.wNN` (created
/// 0600) when other instances share the token and store.
pub(super) fn writer_stripes(
    prefix: Option<&std::path::Path>,
) -> Result<Vec<Mutex<Option<std::fs::File>>>, String> {
    (0..WRITER_STRIPES)
        .map(|stripe| {
            let Some(prefix) = prefix else {
                return Ok(Mutex::new(None));
            };
            let mut path = prefix.as_os_str().to_owned();
            path.push(format!(".w{stripe:02}"));
            super::anchor::open_lock_file(std::path::Path::new(&path))
                .map(|f| Mutex::new(Some(f)))
                .map_err(|e| format!("writer lock file {}: {e}", path.display()))
        })
        .collect()
}

/// Refusals recorded per wallet in the current window: when it started, how many.
pub(super) type Refusals = Mutex<HashMap<WalletId, (Instant, u32)>>;

impl Service {
    pub(super) fn records(&self) -> Records<'_> {
        Records {
            sealer: self.sealer.as_ref(),
            store: self.store.as_ref(),
            anchor: self.anchor.as_ref(),
            opened: &self.opened,
        }
    }

    /// The writer lock of `wallet`: held across every read-modify-write of its records. With
    /// other instances on the same token and store, the stripe's lock file too (an exclusive
    /// `flock(2)`, taken while this process's stripe mutex is held, since `flock` belongs to the
    /// open file description all threads share): a read-modify-write is then atomic across
    /// instances exactly as across threads, so a write is never based on a state another
    /// instance replaced between our read and our compare-and-swap.
    pub(super) fn writer(&self, wallet: &WalletId) -> Result<WriterGuard<'_>, Failure> {
        let stripe = usize::from(wallet.0[0]) % WRITER_STRIPES;
        let m = self
            .writers
            .get(stripe)
            .ok_or_else(|| internal("writer stripe out of range"))?;
        let guard = lock(m)?;
        if let Some(file) = guard.as_ref() {
            file.lock()
                .map_err(|e| internal(format!("writer lock file: {e}")))?;
        }
        Ok(WriterGuard(guard))
    }

    /// Records a refusal in the audit log, at most [`REFUSALS_PER_WINDOW`] per wallet and
    /// window; the ones beyond are counted and the count is recorded with the next one logged.
    /// Failing to log a refusal does not change the answer (the request is refused anyway).
    pub(super) fn refused(
        &self,
        wallet: &WalletId,
        action: &str,
        actor: &str,
        digest: &[u8],
        why: &str,
    ) {
        let Some(suppressed) = self.count_refusal(wallet) else {
            return;
        };
        let decision = if suppressed > 0 {
            format!("{why} ({suppressed} more refusals in the previous window not recorded)")
        } else {
            why.to_owned()
        };
        let _ = self.log(wallet, action, actor, digest, &decision);
    }

    /// Counts a refusal of `wallet`: `None` if it is not to be logged (over the window's quota),
    /// else how many refusals of the previous window went unrecorded.
    fn count_refusal(&self, wallet: &WalletId) -> Option<u32> {
        let mut map = self.refusals.lock().ok()?;
        if map.len() >= MAX_REFUSAL_WALLETS && !map.contains_key(wallet) {
            map.retain(|_, (start, _)| start.elapsed() < REFUSAL_WINDOW);
            if map.len() >= MAX_REFUSAL_WALLETS {
                return None;
            }
        }
        let entry = map.entry(*wallet).or_insert((Instant::now(), 0));
        if entry.0.elapsed() >= REFUSAL_WINDOW {
            let dropped = entry.1.saturating_sub(REFUSALS_PER_WINDOW);
            *entry = (Instant::now(), 1);
            Some(dropped)
        } else {
            entry.1 = entry.1.saturating_add(1);
            (entry.1 <= REFUSALS_PER_WINDOW).then_some(0)
        }
    }

    /// Appends an entry to the audit log; answers the stored record (the entry signed by the
    /// audit key), which is also the receipt a client keeps.
    pub(super) fn log(
        &self,
        wallet: &WalletId,
        action: &str,
        actor: &str,
        digest: &[u8],
        decision: &str,
    ) -> Result<Vec<u8>, Failure> {
        self.audit
            .append(
                self.store.as_ref(),
                &wallet.to_hex(),
                action,
                actor,
                digest,
                decision,
            )
            .map_err(|e| internal(format!("audit log: {e}")))
    }
}
