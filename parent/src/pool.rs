//! Several enclave instances behind one parent: which one a client connection is relayed to.
//!
//! The parent cannot read what a client asks (the bytes are TLS for the enclave), so it cannot
//! route by wallet. It spreads whole connections: each new client goes to the instance with the
//! fewest relayed connections open among those believed up (ties broken round-robin), and a
//! session stays on its instance until it ends (its single-use commitments live in that
//! instance's memory). Which instance serves which wallet does not matter for correctness: the
//! instances share one token and one store, and every state change is a compare-and-swap on
//! the wallet's rollback anchor, atomic across instances (docs/architecture.md, "Several
//! instances"), so two instances racing on one wallet cost one of them a `Busy`, never a lost
//! or rolled-back write.
//!
//! An instance whose socket refuses a connection (it died, or is restarting) is marked down at
//! once and skipped; it is tried again after [`RETRY_AFTER`], or sooner when no instance is up,
//! and marked up by the first connection that reaches it. So a client never waits for a dead
//! instance more than one failed `connect` (immediate on a unix socket), and a restarted one
//! takes clients again within seconds.

use std::io;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::config::EnclaveAddr;

/// How long an instance that refused a connection is skipped while others are up.
pub const RETRY_AFTER: Duration = Duration::from_secs(2);

/// The instances that refused a connection attempt (by index), with their errors.
pub type Refused = Vec<(usize, io::Error)>;

/// One enclave instance and what the parent knows of it.
#[derive(Debug)]
struct Instance {
    addr: EnclaveAddr,
    up: AtomicBool,
    /// Relayed connections open now.
    active: AtomicUsize,
    /// When it was last marked down (for [`RETRY_AFTER`]).
    down_since: Mutex<Option<Instant>>,
    /// Connections relayed to it since the parent started.
    relayed: AtomicU64,
}

/// The instances of one parent.
#[derive(Debug)]
pub struct EnclavePool {
    instances: Vec<Instance>,
    next: AtomicUsize,
}

/// A connection relayed to instance `index`: counted as active until dropped.
#[derive(Debug)]
pub struct Lease<'p> {
    pool: &'p EnclavePool,
    /// Which instance (0-based, in configuration order).
    pub index: usize,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(i) = self.pool.instances.get(self.index) {
            i.active.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// One instance's state, for metrics and status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceStatus {
    /// Its address.
    pub addr: EnclaveAddr,
    /// Whether the last connection attempt reached it.
    pub up: bool,
    /// Relayed connections open now.
    pub active: usize,
    /// Connections relayed to it since the parent started.
    pub relayed: u64,
}

impl EnclavePool {
    /// A pool over `addrs` (all believed up until a connection fails).
    pub fn new(addrs: &[EnclaveAddr]) -> Self {
        Self {
            instances: addrs
                .iter()
                .map(|addr| Instance {
                    addr: addr.clone(),
                    up: AtomicBool::new(true),
                    active: AtomicUsize::new(0),
                    down_since: Mutex::new(None),
                    relayed: AtomicU64::new(0),
                })
                .collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// Every instance's state, in configuration order.
    pub fn status(&self) -> Vec<InstanceStatus> {
        self.instances
            .iter()
            .map(|i| InstanceStatus {
                addr: i.addr.clone(),
                up: i.up.load(Ordering::Relaxed),
                active: i.active.load(Ordering::Relaxed),
                relayed: i.relayed.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// The order to try instances in for a new connection: those due for a retry, then up ones
    /// by fewest active connections (round-robin among equals), then the rest.
    fn order(&self, now: Instant) -> Vec<usize> {
        let n = self.instances.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n.max(1);
        let rotated = (0..n).map(|k| (start + k) % n);
        let mut up: Vec<usize> = Vec::with_capacity(n);
        let mut due = Vec::new();
        let mut later = Vec::new();
        for i in rotated {
            let Some(inst) = self.instances.get(i) else {
                continue;
            };
            if inst.up.load(Ordering::Relaxed) {
                up.push(i);
            } else {
                let since = *inst
                    .down_since
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if since.is_none_or(|t| now.duration_since(t) >= RETRY_AFTER) {
                    due.push(i);
                } else {
                    later.push(i);
                }
            }
        }
        // Stable: among equal counts the rotation decides.
        up.sort_by_key(|&i| {
            self.instances
                .get(i)
                .map_or(usize::MAX, |x| x.active.load(Ordering::Relaxed))
        });
        // One due for a retry goes first: otherwise, with any instance up, a restarted one
        // would never be tried again. Still dead, it costs one refused connect per RETRY_AFTER.
        due.into_iter().chain(up).chain(later).collect()
    }

    /// Connects to an instance with `connect`, trying each in [`EnclavePool::order`] until one
    /// answers; marks each that refused down and the one that answered up. The error is the
    /// last instance's.
    pub fn connect<C>(
        &self,
        mut connect: impl FnMut(&EnclaveAddr) -> io::Result<C>,
    ) -> (io::Result<(C, Lease<'_>)>, Refused) {
        let mut refused = Vec::new();
        for i in self.order(Instant::now()) {
            let Some(inst) = self.instances.get(i) else {
                continue;
            };
            match connect(&inst.addr) {
                Ok(c) => {
                    inst.up.store(true, Ordering::Relaxed);
                    inst.active.fetch_add(1, Ordering::Relaxed);
                    inst.relayed.fetch_add(1, Ordering::Relaxed);
                    return (
                        Ok((
                            c,
                            Lease {
                                pool: self,
                                index: i,
                            },
                        )),
                        refused,
                    );
                }
                Err(e) => {
                    inst.up.store(false, Ordering::Relaxed);
                    *inst
                        .down_since
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Instant::now());
                    refused.push((i, e));
                }
            }
        }
        let last = refused.last().map_or_else(
            || io::Error::new(io::ErrorKind::NotFound, "no enclave instance configured"),
            |(_, e)| io::Error::new(e.kind(), e.to_string()),
        );
        (Err(last), refused)
    }

    /// The `instance` number the enclave at `index` runs as (its configuration's `instance`,
    /// which its logs and metrics carry): 0 when it is the only one, else `index + 1` (entry K
    /// of `enclaves = [...]`, counted from 1, is the enclave configured `instance = K`).
    pub fn instance_id(&self, index: usize) -> u32 {
        if self.instances.len() <= 1 {
            0
        } else {
            u32::try_from(index.saturating_add(1)).unwrap_or(u32::MAX)
        }
    }

    /// The address of instance `index`.
    pub fn addr(&self, index: usize) -> Option<&EnclaveAddr> {
        self.instances.get(index).map(|i| &i.addr)
    }

    /// How many instances are configured.
    pub fn len(&self) -> usize {
        self.instances.len()
    }

    /// Whether none is (never, for a pool from a valid configuration).
    pub fn is_empty(&self) -> bool {
        self.instances.is_empty()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use std::path::PathBuf;

    fn addrs(n: usize) -> Vec<EnclaveAddr> {
        (0..n)
            .map(|i| EnclaveAddr::Unix(PathBuf::from(format!("/e{i}"))))
            .collect()
    }

    fn index_of(a: &EnclaveAddr) -> usize {
        match a {
            EnclaveAddr::Unix(p) => p.to_str().unwrap()[2..].parse().unwrap(),
            _ => unreachable!(),
        }
    }

    #[test]
    fn connections_spread_over_instances_by_fewest_active() {
        let pool = EnclavePool::new(&addrs(2));
        let (a, _) = pool.connect(|a| Ok(index_of(a)));
        let (b, _) = pool.connect(|a| Ok(index_of(a)));
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_ne!(a.0, b.0, "the second goes to the idle instance");
        drop(b);
        let (c, _) = pool.connect(|a| Ok(index_of(a)));
        assert_ne!(c.unwrap().0, a.0);
    }

    #[test]
    fn a_dead_instance_is_skipped_and_taken_back_when_it_answers() {
        let pool = EnclavePool::new(&addrs(2));
        let dead = std::sync::atomic::AtomicBool::new(true);
        let try_ = |a: &EnclaveAddr| {
            if index_of(a) == 1 && dead.load(Ordering::Relaxed) {
                Err(io::Error::from(io::ErrorKind::ConnectionRefused))
            } else {
                Ok(index_of(a))
            }
        };
        let mut attempts_on_dead = 0;
        for _ in 0..10 {
            let (ok, refused) = pool.connect(try_);
            assert_eq!(ok.unwrap().0, 0);
            attempts_on_dead += refused.len();
        }
        assert_eq!(attempts_on_dead, 1, "marked down after its first refusal");
        assert!(!pool.status()[1].up);
        dead.store(false, Ordering::Relaxed);
        // Due for a retry (as if RETRY_AFTER had passed): tried first, and up again.
        *pool.instances[1].down_since.lock().unwrap() = Some(Instant::now() - RETRY_AFTER);
        let (ok, _) = pool.connect(try_);
        assert_eq!(ok.unwrap().0, 1);
        assert!(pool.status()[1].up);
        // Up again once it answers: when nothing else is up, a down instance is tried at once.
        let pool2 = EnclavePool::new(&addrs(1));
        let (r, _) = pool2.connect(|_| Err::<usize, _>(io::Error::from(io::ErrorKind::NotFound)));
        assert!(r.is_err());
        let (r, _) = pool2.connect(|a| Ok(index_of(a)));
        assert_eq!(r.unwrap().0, 0);
        assert!(pool2.status()[0].up);
    }

    #[test]
    fn all_down_reports_the_last_error() {
        let pool = EnclavePool::new(&addrs(3));
        let (r, refused) =
            pool.connect(|_| Err::<(), _>(io::Error::from(io::ErrorKind::ConnectionRefused)));
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::ConnectionRefused);
        assert_eq!(refused.len(), 3);
    }
}
