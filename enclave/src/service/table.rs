//! The tables of what is in flight, in memory only: ceremonies by wallet ([`Table`]: DKG,
//! refresh, repair) and signing sessions by session id ([`Sessions`]: raw and PSBT).
//!
//! Every entry is owned (the session that started it, and the key that authorized it), expires,
//! and counts against quotas per principal; a full table evicts its oldest entry instead of
//! refusing everyone (docs/lifecycle.md, "Races and precedence" and the quota table). A table's
//! lock is held only to look up, take out or put back an entry, never across IO or a ceremony
//! step: a round takes its entry out, computes, and puts the next stage back.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cosigner_protocol::wire::{SessionId, WalletId};

use super::failure::{Failure, lock};

/// How long an unfinished ceremony is kept.
const CEREMONY_TTL: Duration = Duration::from_secs(600);
/// Bound on pending ceremonies per table, so memory stays bounded. Reaching it evicts the oldest
/// entry (which held nothing persistent) rather than refusing everyone: together with the
/// per-session and per-wallet quotas, no single party can keep others out.
const MAX_PENDING: usize = 1024;
/// How long a signing session may wait for its round 2.
pub(super) const SIGN_TTL: Duration = Duration::from_secs(300);
/// Signing sessions (raw or PSBT) one wallet may have open at once.
pub(super) const MAX_SIGNS_PER_WALLET: usize = 64;
/// Bound on open signing sessions per table (raw, PSBT).
const MAX_PENDING_SIGNS: usize = 4096;

/// Who holds a ceremony in progress. Only the session that started it may continue it: another
/// client (or a hostile cosigner with its own attested session) cannot step into it.
#[derive(Debug, Clone)]
pub(super) struct Claim {
    pub(super) started: Instant,
    /// Started by a recovery: pre-empts a device's ceremony, and is evicted last.
    pub(super) recovery: bool,
    pub(super) owner: ConnectionId,
    /// The key that authorized it (for a DKG, the enrolled device key, or empty): the same key
    /// may restart its own ceremony from another session (a client that crashed and retries).
    pub(super) key: Vec<u8>,
}

impl Claim {
    /// A claim starting now.
    pub(super) fn new(owner: ConnectionId, key: Vec<u8>, recovery: bool) -> Self {
        Self {
            started: Instant::now(),
            recovery,
            owner,
            key,
        }
    }
}

/// A ceremony in progress: its stage and who holds it.
pub(super) struct Pending<T> {
    pub(super) stage: T,
    pub(super) claim: Claim,
}

/// What a ceremony step leaves in the table: the next stage, or nothing (it finished).
pub(super) type Step<T, R> = Result<(Option<T>, R), Failure>;

/// Quotas for a new ceremony (see [`Table::admit`]).
pub(super) struct Quota {
    /// How long an entry counts (older ones are dropped first).
    pub(super) fresh: Duration,
    /// Ceremonies one connection, and one enrolled key, may have in progress.
    pub(super) per_principal: usize,
}

/// One kind of ceremony in progress, by wallet.
pub(super) struct Table<T> {
    /// What the ceremony is called in messages ("DKG", "refresh", "repair").
    what: &'static str,
    entries: Mutex<HashMap<WalletId, Pending<T>>>,
}

impl<T> Table<T> {
    pub(super) fn new(what: &'static str) -> Self {
        Self {
            what,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// Admits a new ceremony for `id` within `quota`: refused as busy if one is running for
    /// `id` or the claim's connection (or enrolled key) has its quota; a full table evicts its
    /// oldest entry. `make` runs under the table's lock, after the checks (it must do no IO).
    pub(super) fn admit<R>(
        &self,
        id: WalletId,
        claim: Claim,
        quota: &Quota,
        make: impl FnOnce() -> Result<(T, R), Failure>,
    ) -> Result<R, Failure> {
        let what = self.what;
        let mut map = lock(&self.entries)?;
        map.retain(|_, p| p.claim.started.elapsed() < quota.fresh);
        if map.contains_key(&id) {
            return Err(Failure::busy(format!(
                "a {what} for wallet {id} is already running"
            )));
        }
        // Quotas per principal: an anonymous connection may run a few at once; the table as a
        // whole is bounded by evicting its oldest entry, so a flood of strangers delays nobody's
        // ceremony by more than a retry.
        let mine = map
            .values()
            .filter(|p| p.claim.owner == claim.owner)
            .count();
        if mine >= quota.per_principal {
            return Err(Failure::busy(format!(
                "this connection already has {mine} {what}s in progress"
            )));
        }
        if !claim.key.is_empty() {
            let theirs = map.values().filter(|p| p.claim.key == claim.key).count();
            if theirs >= quota.per_principal {
                return Err(Failure::busy(format!(
                    "this enrolled device already has {theirs} {what}s in progress"
                )));
            }
        }
        evict_oldest(&mut map, MAX_PENDING, |p| p.claim.started);
        let (stage, out) = make()?;
        map.insert(id, Pending { stage, claim });
        Ok(out)
    }

    /// One step of the ceremony of `id` held by `owner`: takes it out of the table, runs `step`
    /// on its stage (without the table's lock), and puts the next stage back. A failed step
    /// leaves nothing behind (the ceremony is over).
    pub(super) fn step<R>(
        &self,
        id: &WalletId,
        owner: &ConnectionId,
        step: impl FnOnce(T, &Claim) -> Step<T, R>,
    ) -> Result<R, Failure> {
        let Pending { stage, claim } = self.take(id, owner)?;
        let (next, out) = step(stage, &claim)?;
        if let Some(stage) = next {
            self.put(*id, Pending { stage, claim })?;
        }
        Ok(out)
    }

    fn take(&self, id: &WalletId, owner: &ConnectionId) -> Result<Pending<T>, Failure> {
        let what = self.what;
        let mut map = lock(&self.entries)?;
        match map.get(id) {
            Some(p) if p.claim.started.elapsed() >= CEREMONY_TTL => {
                map.remove(id);
            }
            Some(p) if &p.claim.owner != owner => {
                return Err(Failure::denied(format!(
                    "the {what} of wallet {id} belongs to another session"
                )));
            }
            _ => {}
        }
        map.remove(id).ok_or_else(|| {
            Failure::not_found(format!(
                "no {what} running for wallet {id} (expired, or pre-empted by a recovery)"
            ))
        })
    }

    /// Puts a ceremony (back) into the table. Never replaces another session's ceremony in
    /// flight: that is refused as busy (retryable), unless it expired, was started by the same
    /// key (a client restarting its own ceremony), or `pending` is a recovery and the one in
    /// flight is not (the recovery credential wins).
    pub(super) fn put(&self, id: WalletId, pending: Pending<T>) -> Result<(), Failure> {
        let mut map = lock(&self.entries)?;
        map.retain(|_, p| p.claim.started.elapsed() < CEREMONY_TTL);
        self.may_replace(&map, &id, &pending.claim)?;
        // Full: the oldest ceremony that is not a recovery makes room (a recovery goes last: the
        // owner's way back must not depend on how busy strangers keep the table).
        if !map.contains_key(&id) && map.len() >= MAX_PENDING {
            // Only recoveries left: the oldest of them goes (a refusal would let whoever holds
            // the table with self-made wallets' recoveries block everybody's).
            let oldest = map
                .iter()
                .filter(|(_, p)| !p.claim.recovery)
                .min_by_key(|(_, p)| p.claim.started)
                .or_else(|| map.iter().min_by_key(|(_, p)| p.claim.started))
                .map(|(k, _)| *k);
            if let Some(k) = oldest {
                map.remove(&k);
            }
        }
        map.insert(id, pending);
        Ok(())
    }

    /// Runs `look` on the ceremony of `id` if it is younger than `fresh`, without taking it
    /// out (under the table's lock: `look` must do no IO).
    pub(super) fn peek<R>(
        &self,
        id: &WalletId,
        fresh: Duration,
        look: impl FnOnce(&Pending<T>) -> Result<R, Failure>,
    ) -> Result<Option<R>, Failure> {
        let map = lock(&self.entries)?;
        map.get(id)
            .filter(|p| p.claim.started.elapsed() < fresh)
            .map(look)
            .transpose()
    }

    /// Whether a ceremony of `id` is in the table (expired or not).
    /// Whether [`Table::put`] would take a ceremony of `claim` for `id` now: asked before
    /// expensive work (unsealing a share), so that a busy wallet's refusal stays cheap. `put`
    /// decides again under its lock.
    pub(super) fn admits(&self, id: &WalletId, claim: &Claim) -> Result<(), Failure> {
        let map = lock(&self.entries)?;
        self.may_replace(&map, id, claim)
    }

    /// Refuses, as busy, a ceremony of `new` for `id` while another session's is in flight
    /// (see [`Table::put`] for who may replace whom); an expired one never counts.
    fn may_replace(
        &self,
        map: &HashMap<WalletId, Pending<T>>,
        id: &WalletId,
        new: &Claim,
    ) -> Result<(), Failure> {
        let Some(running) = map
            .get(id)
            .map(|p| &p.claim)
            .filter(|c| c.started.elapsed() < CEREMONY_TTL)
        else {
            return Ok(());
        };
        let replaceable = running.owner == new.owner
            || (!running.key.is_empty() && running.key == new.key)
            || (new.recovery && !running.recovery);
        if replaceable {
            return Ok(());
        }
        Err(Failure::busy(format!(
            "another session's {} of wallet {id} is in progress: try again when it has finished \
             or expired",
            self.what
        )))
    }

    pub(super) fn contains(&self, id: &WalletId) -> Result<bool, Failure> {
        Ok(lock(&self.entries)?.contains_key(id))
    }

    /// Takes the ceremony of `id` out, whoever holds it.
    pub(super) fn remove(&self, id: &WalletId) -> Result<Option<Pending<T>>, Failure> {
        Ok(lock(&self.entries)?.remove(id))
    }

    /// Drops the ceremony of `id` unless it is the recovery of the key `recovering`.
    pub(super) fn drop_unless_recovering(
        &self,
        id: &WalletId,
        recovering: &[u8],
    ) -> Result<(), Failure> {
        let mut map = lock(&self.entries)?;
        if map
            .get(id)
            .is_some_and(|p| !(p.claim.recovery && p.claim.key.as_slice() == recovering))
        {
            map.remove(id);
        }
        Ok(())
    }
}

/// One attested client connection (a hash of its TLS channel binding): it owns the ceremonies
/// it starts, and only it may continue them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct ConnectionId(pub(super) [u8; 16]);

/// An open signing session, with what its table needs to know of it.
struct Open<T> {
    /// The wallet it signs for.
    wallet: WalletId,
    /// When it was opened.
    started: Instant,
    session: T,
}

impl<T> Open<T> {
    fn live(&self) -> bool {
        self.started.elapsed() < SIGN_TTL
    }
}

/// Signing sessions by session id (nonces in memory only: an evicted session's commitments are
/// simply never used).
pub(super) struct Sessions<T> {
    entries: Mutex<HashMap<SessionId, Open<T>>>,
    /// Most sessions held at once (the oldest is evicted beyond).
    capacity: usize,
}

impl<T> Sessions<T> {
    pub(super) fn new() -> Self {
        Self::with_capacity(MAX_PENDING_SIGNS)
    }

    /// A table holding at most `capacity` sessions.
    pub(super) fn with_capacity(capacity: usize) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    /// How many unexpired sessions `wallet` has open.
    /// (Expired sessions go here too: a session holds an unsealed key package, which must not
    /// outlive its expiry in an idle enclave.)
    pub(super) fn open(&self, wallet: &WalletId) -> Result<usize, Failure> {
        let mut map = lock(&self.entries)?;
        map.retain(|_, s| s.live());
        Ok(map.values().filter(|s| s.wallet == *wallet).count())
    }

    /// Opens `session` of `wallet` as `id`: refused as busy (`busy(open)`) once the wallet has
    /// its quota; the table as a whole evicts its oldest session.
    pub(super) fn insert(
        &self,
        id: SessionId,
        wallet: WalletId,
        session: T,
        busy: impl FnOnce(usize) -> String,
    ) -> Result<(), Failure> {
        let mut map = lock(&self.entries)?;
        map.retain(|_, s| s.live());
        let open = map.values().filter(|s| s.wallet == wallet).count();
        if open >= MAX_SIGNS_PER_WALLET {
            return Err(Failure::busy(busy(open)));
        }
        evict_oldest(&mut map, self.capacity, |s| s.started);
        let started = Instant::now();
        map.insert(
            id,
            Open {
                wallet,
                started,
                session,
            },
        );
        Ok(())
    }

    /// Takes session `id` out (whatever happens next, its nonces are never used again), if
    /// `may` accepts it; an expired session is not found.
    pub(super) fn take(
        &self,
        id: &SessionId,
        may: impl FnOnce(&T) -> Result<(), Failure>,
    ) -> Result<T, Failure> {
        let mut map = lock(&self.entries)?;
        if let Some(s) = map.get(id) {
            may(&s.session)?;
        }
        map.remove(id)
            .filter(Open::live)
            .map(|s| s.session)
            .ok_or_else(|| Failure::not_found("unknown, expired or already used signing session"))
    }

    /// Drops the sessions of `wallet` that `doomed` picks.
    pub(super) fn drop_where(
        &self,
        wallet: &WalletId,
        doomed: impl Fn(&T) -> bool,
    ) -> Result<(), Failure> {
        lock(&self.entries)?.retain(|_, s| s.wallet != *wallet || !doomed(&s.session));
        Ok(())
    }

    /// Drops every session of `wallet`.
    pub(super) fn drop_wallet(&self, wallet: &WalletId) -> Result<(), Failure> {
        lock(&self.entries)?.retain(|_, s| s.wallet != *wallet);
        Ok(())
    }
}

/// Makes room for one more entry: removes the oldest while `map` holds `max` or more.
fn evict_oldest<K: Clone + Eq + std::hash::Hash, V>(
    map: &mut HashMap<K, V>,
    max: usize,
    started: impl Fn(&V) -> Instant,
) {
    while map.len() >= max.max(1) {
        let Some(oldest) = map
            .iter()
            .min_by_key(|(_, v)| started(v))
            .map(|(k, _)| k.clone())
        else {
            return;
        };
        map.remove(&oldest);
    }
}
