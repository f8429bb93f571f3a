//! Anchors that scale: one root anchor per *partition* instead of one per wallet.
//!
//! A real HSM keeps a few thousand objects, so one token object per wallet does not reach a
//! million wallets. Here the token (or whatever [`Anchor`] backs the roots) holds one object per
//! partition, labelled `cosigner-anchors/pNNNN`, whose value is the root of a two-level hash tree
//! over every anchor label of that partition. The tree itself lives in the parent's untrusted
//! store, content-addressed, and every blob read back is checked against the digest its parent
//! names:
//!
//! ```text
//! root anchor (token)  = SHA-256(index blob)
//! index blob           = "cosigner-anchor-index-v1" ‖ partition u16 ‖ partitions u16 ‖ 256 × digest
//! bucket blob          = "cosigner-anchor-bucket-v1" ‖ n u32 ‖ n × (key ‖ generation u64 ‖ len u16 ‖ value)
//! key                  = SHA-256(label); partition = key[0..2] mod partitions; bucket = key[2]
//! ```
//!
//! (integers big-endian; an empty bucket's digest is 32 zero bytes and has no blob.) Each label
//! keeps its own generation, so callers see exactly the compare-and-swap of [`Anchor`]; a host
//! that serves an older index or bucket is refused by its digest, and one that serves an older
//! root cannot, because the root lives on the token. Rollback of any single label therefore
//! needs a rollback of its partition's token object, as before.
//!
//! Writes are group-committed per partition: concurrent writers queue their updates and whichever
//! finds no commit in progress applies every queued update (each checked against its own expected
//! generation), stores the changed buckets and the new index in one `put_many`, and moves the
//! root anchor once. So a partition's token object is written once per batch, not per wallet.
//!
//! With several enclave instances on one token (`shared`), another instance may have moved a
//! root since this one read it: every read then asks the root anchor first (one token read) and
//! reuses the cached tree only if the root is unchanged, and a commit that loses the root's
//! compare-and-swap to another instance re-reads the tree and re-applies its updates (each
//! still checked against its expected generation, so nothing another instance wrote is lost or
//! overwritten). The roots' compare-and-swap must then be atomic across processes: see
//! [`super::anchor::ProcessLocked`].
//!
//! Labels written before partitions existed (one token object per label) are still read: a label
//! absent from its partition's tree falls back to the object under its own label, and its next
//! write moves it into the tree (generation continued), after which the tree is authoritative.

use std::collections::HashMap;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use sha2::{Digest, Sha256};

use super::anchor::{Anchor, AnchorError, Versioned};
use crate::store::BlobStore;

/// Partitions unless configured: 64 token objects hold a million wallets at ~15 600 per
/// partition, ~61 per bucket (a ~5 KB bucket and the 8 KB index written per commit). Fewer
/// objects keep token reads cheap (SoftHSM searches its objects linearly: a read costs ~6 ms
/// among 1000 objects), more spread the writers of several instances.
pub const DEFAULT_PARTITIONS: u16 = 64;
/// Buckets per partition (one byte of the label's hash).
const BUCKETS: usize = 256;
const INDEX_TAG: &[u8] = b"cosigner-anchor-index-v1";
const BUCKET_TAG: &[u8] = b"cosigner-anchor-bucket-v1";
/// Longest value an anchor holds (digests are 32 bytes).
pub const MAX_VALUE: usize = 1024;
/// Most updates one commit applies: its changed buckets and the index go in one `PutMany`
/// (at most `MAX_PUT_MANY` entries in one frame; 64 buckets of ~5 KB fit with room to spare).
const MAX_BATCH: usize = 64;
/// Most blobs one update carries ([`Anchor::write_carrying`]): with its bucket, within
/// `MAX_PUT_MANY` for a full batch.
const MAX_CARRIED_BLOBS: usize = 2;
/// Most bytes of blobs one update carries in its commit; a writer with more stores them first,
/// in a write of their own (a busy wallet's state with its spend history can be hundreds of KB).
const MAX_CARRIED_PER_UPDATE: usize = 64 * 1024;
/// Most bytes of carried blobs one commit takes (others wait for the next): with the writer's
/// own (at most [`MAX_CARRIED_PER_UPDATE`]) and the tree's blobs (64 buckets of ~5 KB at a
/// million wallets, the 8 KB index), a commit's `PutMany` stays well within one frame
/// (`MAX_FRAME_LEN`, 1 MiB).
const MAX_CARRIED_BYTES: usize = 256 * 1024;
/// How often a commit re-reads the tree after another instance moved the root.
const COMMIT_ATTEMPTS: usize = 16;
/// How often a read starts again when the blob its root named was replaced meanwhile.
const READ_ATTEMPTS: usize = 8;
const EMPTY: [u8; 32] = [0; 32];
/// What a pre-partition anchor holds once its label moved into a tree: names no blob.
pub const MOVED: &[u8] = b"moved-into-a-partition";
/// The anchor recording the partition count (2 bytes, big-endian).
pub const LAYOUT_LABEL: &str = "cosigner-anchors/layout";

type Digest32 = [u8; 32];
/// Each queued update's outcome, by ticket.
type Outcomes = Vec<(u64, Result<u64, AnchorError>)>;

/// One label's entry in a bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Leaf {
    key: Digest32,
    generation: u64,
    value: Vec<u8>,
}

/// A partition's tree as last read or written: the root anchor's generation and value, the index,
/// and the buckets opened so far (by digest).
#[derive(Debug, Clone)]
struct Tree {
    generation: Option<u64>,
    root: Option<Digest32>,
    index: Vec<Digest32>,
    buckets: HashMap<Digest32, Vec<Leaf>>,
}

impl Tree {
    fn empty() -> Self {
        Self {
            generation: None,
            root: None,
            index: vec![EMPTY; BUCKETS],
            buckets: HashMap::new(),
        }
    }
}

/// An update waiting for its partition's next commit.
struct Pending {
    ticket: u64,
    label: String,
    expected: Option<u64>,
    value: Vec<u8>,
    /// The writer's own blobs, stored with the tree if the update applies
    /// ([`Anchor::write_carrying`]).
    blobs: Vec<(String, Vec<u8>)>,
}

impl Pending {
    fn carried_bytes(&self) -> usize {
        self.blobs.iter().map(|(k, v)| k.len() + v.len()).sum()
    }
}

#[derive(Default)]
struct Queue {
    next: u64,
    waiting: Vec<Pending>,
    done: HashMap<u64, Result<u64, AnchorError>>,
    /// A writer is committing a batch now.
    committing: bool,
}

/// Ends a commit that unwound (a panic): without it `committing` would stay set and every
/// writer of the partition would wait for ever. The batch's writers get a backend error.
struct Unfinished<'p> {
    part: &'p Partition,
    tickets: Vec<u64>,
}

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        if self.tickets.is_empty() {
            return;
        }
        let mut q = lock(&self.part.queue);
        q.committing = false;
        for t in self.tickets.drain(..) {
            q.done.insert(
                t,
                Err(backend("anchor commit", "the commit failed unexpectedly")),
            );
        }
        self.part.committed.notify_all();
    }
}

#[derive(Default)]
struct Partition {
    queue: Mutex<Queue>,
    /// Signalled after every commit.
    committed: Condvar,
    /// Held by the one committer (and by readers): the cached tree.
    tree: Mutex<Option<Tree>>,
}

/// [`Anchor`] over per-partition roots kept by `roots`, the trees in `store`.
pub struct PartitionedAnchor<A, S> {
    roots: A,
    store: S,
    partitions: u16,
    shared: bool,
    /// `store` is the store the writers keep their records in ([`Self::carrying_blobs`]).
    carry: bool,
    parts: Vec<Partition>,
    /// Labels a lone instance found in neither its tree nor the roots: this build never
    /// writes a label to the roots, so one absent there stays absent, and the next lookup of a
    /// label not in the tree (a new wallet's, three times in its creation) need not search
    /// the token again. Emptied when full.
    not_legacy: Mutex<std::collections::HashSet<String>>,
}

/// Most labels remembered as absent from the roots.
const MAX_NOT_LEGACY: usize = 65_536;

impl<A, S> std::fmt::Debug for PartitionedAnchor<A, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionedAnchor")
            .field("partitions", &self.partitions)
            .field("shared", &self.shared)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking writer leaves the queue or a cached tree that is at worst stale: the tree is
    // re-read whenever the root moved, so the data stays usable.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The label of partition `p`'s root anchor.
pub fn root_label(p: u16) -> String {
    format!("cosigner-anchors/p{p:04x}")
}

fn key_of(label: &str) -> Digest32 {
    Sha256::digest(label.as_bytes()).into()
}

fn index_key(p: u16, root: &Digest32) -> String {
    format!("anchors/p{p:04x}/i/{}", hex::encode(root))
}

fn bucket_key(p: u16, b: usize, digest: &Digest32) -> String {
    format!("anchors/p{p:04x}/b{b:02x}/{}", hex::encode(digest))
}

fn integrity(label: &str, reason: impl std::fmt::Display) -> AnchorError {
    AnchorError::Integrity {
        label: label.to_owned(),
        reason: reason.to_string(),
    }
}

/// The store keeps failing to serve the tree the root names.
fn tree_gone(label: &str) -> AnchorError {
    integrity(
        label,
        "the store does not hold the anchored tree: it is not the current state (deleted or \
         rolled back by the host)",
    )
}

fn backend(label: &str, reason: impl std::fmt::Display) -> AnchorError {
    AnchorError::Backend {
        label: label.to_owned(),
        reason: reason.to_string(),
    }
}

fn encode_index(p: u16, partitions: u16, index: &[Digest32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(INDEX_TAG.len() + 4 + 32 * BUCKETS);
    out.extend_from_slice(INDEX_TAG);
    out.extend_from_slice(&p.to_be_bytes());
    out.extend_from_slice(&partitions.to_be_bytes());
    for d in index {
        out.extend_from_slice(d);
    }
    out
}

fn decode_index(p: u16, partitions: u16, bytes: &[u8]) -> Result<Vec<Digest32>, String> {
    let rest = bytes.strip_prefix(INDEX_TAG).ok_or("not an anchor index")?;
    let (head, digests) = rest.split_at_checked(4).ok_or("index truncated")?;
    if head != [p.to_be_bytes(), partitions.to_be_bytes()].concat() {
        return Err("index of another partition or layout".into());
    }
    if digests.len() != 32 * BUCKETS {
        return Err(format!("index holds {} bytes of digests", digests.len()));
    }
    Ok(digests
        .chunks_exact(32)
        .map(|c| {
            let mut d = EMPTY;
            d.copy_from_slice(c);
            d
        })
        .collect())
}

fn encode_bucket(leaves: &[Leaf]) -> Vec<u8> {
    let mut out = Vec::with_capacity(BUCKET_TAG.len() + 4 + leaves.len() * 80);
    out.extend_from_slice(BUCKET_TAG);
    out.extend_from_slice(
        &u32::try_from(leaves.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    for leaf in leaves {
        out.extend_from_slice(&leaf.key);
        out.extend_from_slice(&leaf.generation.to_be_bytes());
        // Values are at most MAX_VALUE (checked on write), so the length fits.
        out.extend_from_slice(&u16::try_from(leaf.value.len()).unwrap_or(0).to_be_bytes());
        out.extend_from_slice(&leaf.value);
    }
    out
}

/// Bytes taken from the front of `rest`.
fn take<'b>(rest: &mut &'b [u8], n: usize) -> Result<&'b [u8], String> {
    let (head, tail) = rest.split_at_checked(n).ok_or("bucket truncated")?;
    *rest = tail;
    Ok(head)
}

fn decode_bucket(bytes: &[u8]) -> Result<Vec<Leaf>, String> {
    let mut rest = bytes
        .strip_prefix(BUCKET_TAG)
        .ok_or("not an anchor bucket")?;
    let n = u32::from_be_bytes(take(&mut rest, 4)?.try_into().map_err(|_| "count")?);
    let mut leaves: Vec<Leaf> = Vec::new();
    for _ in 0..n {
        let mut key = EMPTY;
        key.copy_from_slice(take(&mut rest, 32)?);
        let generation = u64::from_be_bytes(take(&mut rest, 8)?.try_into().map_err(|_| "gen")?);
        let len = u16::from_be_bytes(take(&mut rest, 2)?.try_into().map_err(|_| "len")?);
        let value = take(&mut rest, usize::from(len))?.to_vec();
        if leaves.last().is_some_and(|l| l.key >= key) {
            return Err("bucket entries out of order".into());
        }
        leaves.push(Leaf {
            key,
            generation,
            value,
        });
    }
    if !rest.is_empty() {
        return Err("bytes after the bucket's entries".into());
    }
    Ok(leaves)
}

/// The layout record's value: the partition count, and a byte `1` once any instance ran with
/// shared anchors (a record of 2 bytes is a lone instance's).
fn layout_value(partitions: u16, shared: bool) -> Vec<u8> {
    let mut v = partitions.to_be_bytes().to_vec();
    if shared {
        v.push(1);
    }
    v
}

/// Checks (and on a first start writes) the layout record: the same partition count as ever,
/// and no lone instance (which remembers anchors and takes no lock) on anchors that several
/// instances have shared. A lone deployment becomes shared by starting an instance with
/// `shared`; it never silently goes back.
fn check_layout<A: Anchor>(roots: &A, partitions: u16, shared: bool) -> Result<(), AnchorError> {
    let want = layout_value(partitions, shared);
    for _ in 0..COMMIT_ATTEMPTS {
        let found = roots.read(LAYOUT_LABEL)?;
        let (count, was_shared) = match &found {
            None => (None, false),
            Some(v) => match v.value.as_slice() {
                [a, b] => (Some(u16::from_be_bytes([*a, *b])), false),
                [a, b, 1] => (Some(u16::from_be_bytes([*a, *b])), true),
                _ => {
                    return Err(integrity(LAYOUT_LABEL, "a layout record of another format"));
                }
            },
        };
        if let Some(count) = count.filter(|c| *c != partitions) {
            return Err(AnchorError::Layout {
                configured: partitions,
                anchored: Some(count),
            });
        }
        if was_shared && !shared {
            return Err(AnchorError::SharedLayout);
        }
        if found.as_ref().is_some_and(|v| v.value == want) {
            return Ok(());
        }
        // First start, or a lone deployment becoming shared: record it (compare-and-swap; a
        // concurrent instance that wrote first is checked again).
        match roots.write(LAYOUT_LABEL, found.map(|v| v.generation), &want) {
            Ok(_) => return Ok(()),
            Err(AnchorError::Conflict { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Err(backend(LAYOUT_LABEL, "the layout record kept changing"))
}

/// Decodes a stored bucket blob as a reader does after its digest matched (for fuzzing: any
/// bytes give `Ok(leaves)` or an error, never a panic).
pub fn decode_bucket_blob(bytes: &[u8]) -> Result<usize, String> {
    decode_bucket(bytes).map(|leaves| leaves.len())
}

/// Decodes a stored index blob of partition `p` of `partitions` (for fuzzing, as
/// [`decode_bucket_blob`]).
pub fn decode_index_blob(p: u16, partitions: u16, bytes: &[u8]) -> Result<usize, String> {
    decode_index(p, partitions, bytes).map(|index| index.len())
}

impl<A: Anchor, S: BlobStore> PartitionedAnchor<A, S> {
    /// Anchors in `partitions` partitions (1..=65535) whose roots `roots` keeps and whose trees
    /// `store` keeps. `shared`: other processes write the same roots (several instances).
    ///
    /// The partition count is itself anchored ([`LAYOUT_LABEL`]): with another count every label
    /// would be looked for in the wrong partition and every wallet would seem to have no
    /// anchor, so a count that differs from the one first written is refused
    /// ([`AnchorError::Layout`]).
    pub fn new(roots: A, store: S, partitions: u16, shared: bool) -> Result<Self, AnchorError> {
        if partitions == 0 {
            return Err(backend("partitions", "at least one partition"));
        }
        check_layout(&roots, partitions, shared)?;
        Ok(Self {
            roots,
            store,
            partitions,
            shared,
            carry: false,
            parts: (0..partitions).map(|_| Partition::default()).collect(),
            not_legacy: Mutex::new(std::collections::HashSet::new()),
        })
    }

    /// Stores the blobs of [`Anchor::write_carrying`] in the tree's write: only where `store`
    /// is the store the writers keep their records in (the parent's), or they would be looked
    /// for where they are not.
    #[must_use]
    pub fn carrying_blobs(mut self) -> Self {
        self.carry = true;
        self
    }

    /// Partition and bucket of a label.
    fn place(&self, key: &Digest32) -> (u16, usize) {
        let [a, b, c, ..] = *key;
        (u16::from_be_bytes([a, b]) % self.partitions, usize::from(c))
    }

    fn part(&self, p: u16) -> &Partition {
        // `place` keeps p below `partitions`, the length of `parts`.
        let i = usize::from(p).min(self.parts.len().saturating_sub(1));
        #[allow(clippy::indexing_slicing)]
        &self.parts[i]
    }

    /// The partition's current tree: the cached one if the root anchor still names it (asked
    /// only when `shared`, or when nothing is cached), else read and checked from the store.
    fn current<'t>(
        &self,
        p: u16,
        cached: &'t mut Option<Tree>,
        fresh: bool,
    ) -> Result<&'t mut Tree, AnchorError> {
        let label = root_label(p);
        if fresh || self.shared || cached.is_none() {
            let root = self.roots.read(&label)?;
            let (generation, digest) = match &root {
                None => (None, None),
                Some(v) => {
                    let d: Digest32 = v
                        .value
                        .as_slice()
                        .try_into()
                        .map_err(|_| integrity(&label, "a root anchor is 32 bytes"))?;
                    (Some(v.generation), Some(d))
                }
            };
            let same = cached
                .as_ref()
                .is_some_and(|t| t.generation == generation && t.root == digest);
            if !same {
                *cached = Some(self.load_tree(p, generation, digest)?);
            }
        }
        cached
            .as_mut()
            .ok_or_else(|| backend(&label, "no tree after reading it"))
    }

    fn load_tree(
        &self,
        p: u16,
        generation: Option<u64>,
        root: Option<Digest32>,
    ) -> Result<Tree, AnchorError> {
        let label = root_label(p);
        let Some(root) = root else {
            return Ok(Tree::empty());
        };
        let key = index_key(p, &root);
        let bytes = self
            .store
            .get(&key)
            .map_err(|e| backend(&label, e))?
            .ok_or_else(|| AnchorError::Missing {
                label: label.clone(),
            })?;
        if Digest32::from(Sha256::digest(&bytes)) != root {
            return Err(integrity(
                &label,
                "the stored index is not the anchored one",
            ));
        }
        let index = decode_index(p, self.partitions, &bytes).map_err(|e| integrity(&label, e))?;
        Ok(Tree {
            generation: Some(generation.unwrap_or(0)),
            root: Some(root),
            index,
            buckets: HashMap::new(),
        })
    }

    /// The leaves of bucket `b` of `tree`, read and checked if not opened yet.
    fn bucket<'t>(&self, p: u16, b: usize, tree: &'t mut Tree) -> Result<&'t [Leaf], AnchorError> {
        let label = root_label(p);
        let digest = tree.index.get(b).copied().unwrap_or(EMPTY);
        if digest == EMPTY {
            return Ok(&[]);
        }
        match tree.buckets.entry(digest) {
            std::collections::hash_map::Entry::Occupied(e) => Ok(e.into_mut().as_slice()),
            std::collections::hash_map::Entry::Vacant(e) => {
                let bytes = self
                    .store
                    .get(&bucket_key(p, b, &digest))
                    .map_err(|err| backend(&label, err))?
                    .ok_or_else(|| AnchorError::Missing {
                        label: label.clone(),
                    })?;
                if Digest32::from(Sha256::digest(&bytes)) != digest {
                    return Err(integrity(&label, "a stored bucket is not the anchored one"));
                }
                let leaves = decode_bucket(&bytes).map_err(|err| integrity(&label, err))?;
                Ok(e.insert(leaves).as_slice())
            }
        }
    }

    /// `label`'s entry in `tree`, falling back to a pre-partition anchor under its own label
    /// (then `true`: it comes from there).
    fn lookup(
        &self,
        p: u16,
        b: usize,
        key: &Digest32,
        label: &str,
        tree: &mut Tree,
    ) -> Result<(Option<Versioned>, bool), AnchorError> {
        let found = self
            .bucket(p, b, tree)?
            .iter()
            .find(|l| l.key == *key)
            .map(|l| Versioned {
                generation: l.generation,
                value: l.value.clone(),
            });
        match found {
            Some(v) => Ok((Some(v), false)),
            // With other instances (perhaps of a build from before partitions) writing the
            // roots, an absent label is asked again every time.
            None if !self.shared && lock(&self.not_legacy).contains(label) => Ok((None, false)),
            None => {
                let legacy = self.roots.read(label)?;
                let from_legacy = legacy.is_some();
                if !from_legacy && !self.shared {
                    let mut absent = lock(&self.not_legacy);
                    if absent.len() >= MAX_NOT_LEGACY {
                        absent.clear();
                    }
                    absent.insert(label.to_owned());
                }
                Ok((legacy, from_legacy))
            }
        }
    }

    fn read_once(&self, label: &str) -> Result<Option<Versioned>, AnchorError> {
        let key = key_of(label);
        let (p, b) = self.place(&key);
        let mut cached = lock(&self.part(p).tree);
        let tree = self.current(p, &mut cached, false)?;
        Ok(self.lookup(p, b, &key, label, tree)?.0)
    }

    /// Applies `batch` to the partition's current tree and moves its root; every update gets
    /// its own outcome. Runs with the partition's tree locked (the one committer).
    fn commit(&self, p: u16, cached: &mut Option<Tree>, batch: &[Pending]) -> Outcomes {
        let label = root_label(p);
        let mut fresh = false;
        let mut missing = false;
        for _ in 0..COMMIT_ATTEMPTS {
            match self.try_commit(p, cached, batch, fresh) {
                Ok(results) => return results,
                Err(AnchorError::Missing { .. }) => {
                    *cached = None;
                    fresh = true;
                    missing = true;
                }
                // Another instance moved the root (or, in between, removed a blob the old root
                // named): read the tree again and re-check every update.
                Err(AnchorError::Conflict { .. }) => {
                    *cached = None;
                    fresh = true;
                    missing = false;
                }
                Err(e) => {
                    *cached = None;
                    return batch.iter().map(|w| (w.ticket, Err(e.clone()))).collect();
                }
            }
        }
        let busy = if missing {
            tree_gone(&label)
        } else {
            AnchorError::Conflict {
                label,
                expected: None,
                found: None,
            }
        };
        batch
            .iter()
            .map(|w| (w.ticket, Err(busy.clone())))
            .collect()
    }

    fn try_commit(
        &self,
        p: u16,
        cached: &mut Option<Tree>,
        batch: &[Pending],
        fresh: bool,
    ) -> Result<Outcomes, AnchorError> {
        let label = root_label(p);
        let tree = self.current(p, cached, fresh)?;
        let mut next = tree.clone();
        let mut results = Vec::with_capacity(batch.len());
        let mut touched = std::collections::BTreeSet::new();
        let mut moved = Vec::new();
        let mut blobs = Vec::new();
        for w in batch {
            let key = key_of(&w.label);
            let (_, b) = self.place(&key);
            let (found, from_legacy) = self.lookup(p, b, &key, &w.label, &mut next)?;
            let found = found.map(|v| v.generation);
            if found != w.expected {
                results.push((
                    w.ticket,
                    Err(AnchorError::Conflict {
                        label: w.label.clone(),
                        expected: w.expected,
                        found,
                    }),
                ));
                continue;
            }
            let generation = found.map_or(0, |g| g.saturating_add(1));
            let digest = next.index.get(b).copied().unwrap_or(EMPTY);
            let mut leaves = next.buckets.get(&digest).cloned().unwrap_or_default();
            let leaf = Leaf {
                key,
                generation,
                value: w.value.clone(),
            };
            match leaves.binary_search_by(|l| l.key.cmp(&key)) {
                Ok(i) => {
                    if let Some(slot) = leaves.get_mut(i) {
                        *slot = leaf;
                    }
                }
                Err(i) => leaves.insert(i, leaf),
            }
            let new_digest: Digest32 = Sha256::digest(encode_bucket(&leaves)).into();
            next.buckets.insert(new_digest, leaves);
            if let Some(slot) = next.index.get_mut(b) {
                *slot = new_digest;
            }
            touched.insert(b);
            blobs.extend(w.blobs.iter().cloned());
            if from_legacy {
                moved.push((w.label.as_str(), found));
            }
            results.push((w.ticket, Ok(generation)));
        }
        if touched.is_empty() {
            return Ok(results);
        }
        for &b in &touched {
            let digest = next.index.get(b).copied().unwrap_or(EMPTY);
            let leaves = next.buckets.get(&digest).map_or(&[][..], Vec::as_slice);
            blobs.push((bucket_key(p, b, &digest), encode_bucket(leaves)));
        }
        let index = encode_index(p, self.partitions, &next.index);
        let root: Digest32 = Sha256::digest(&index).into();
        blobs.push((index_key(p, &root), index));
        // The tree first (with the writers' own blobs), under keys nothing reads yet; the
        // root's compare-and-swap commits it.
        self.store
            .put_many(&blobs)
            .map_err(|e| backend(&label, e))?;
        let written = match self.roots.write(&label, tree.generation, &root) {
            Ok(g) => g,
            Err(AnchorError::Conflict { .. }) => {
                return Err(AnchorError::Conflict {
                    label,
                    expected: tree.generation,
                    found: None,
                });
            }
            // Unclear whether the swap happened: ask the roots themselves.
            Err(e) => match self.roots.read(&label) {
                Ok(Some(v)) if v.value == root => v.generation,
                _ => return Err(e),
            },
        };
        // Committed. The replaced blobs are garbage now (a reader that still follows the old
        // root finds them gone and starts again from the root).
        let old: Vec<String> = touched
            .iter()
            .filter_map(|&b| {
                let d = tree.index.get(b).copied().unwrap_or(EMPTY);
                (d != EMPTY).then(|| bucket_key(p, b, &d))
            })
            .chain(tree.root.map(|r| index_key(p, &r)))
            .collect();
        next.generation = Some(written);
        next.root = Some(root);
        next.buckets.retain(|d, _| next.index.contains(d));
        *tree = next;
        // Best effort and off this path: a blob left behind costs space, never correctness
        // (tree blobs are named by digests of content whose generations only grow, so a
        // discarded key is never written again).
        self.store.discard(old);
        for (label, generation) in moved {
            // The tree is authoritative for this label now. Its old object is overwritten with a
            // value that names no blob, so a binary from before partitions (a downgrade, a
            // rolling upgrade) finds no state under it and refuses, instead of loading the
            // state the object named, which the host may still hold. Best effort: the tree
            // entry is what this build reads either way.
            let _ = self.roots.write(label, generation, MOVED);
        }
        Ok(results)
    }
}

impl<A: Anchor, S: BlobStore> Anchor for PartitionedAnchor<A, S> {
    fn read(&self, label: &str) -> Result<Option<Versioned>, AnchorError> {
        let mut last = None;
        for _ in 0..READ_ATTEMPTS {
            match self.read_once(label) {
                // A writer replaced the blob between our root read and our blob read: again.
                Err(e @ AnchorError::Missing { .. }) => {
                    let p = self.place(&key_of(label)).0;
                    *lock(&self.part(p).tree) = None;
                    last = Some(e);
                }
                other => return other,
            }
        }
        // The root stayed where it was and its tree is still not there: not a concurrent
        // writer's doing but a store that lost or rolled back the anchored tree.
        Err(last.map_or_else(|| backend(label, "no read attempt"), |_| tree_gone(label)))
    }

    fn write(&self, label: &str, expected: Option<u64>, value: &[u8]) -> Result<u64, AnchorError> {
        self.write_pending(label, expected, value, Vec::new())
    }

    fn carries_blobs(&self) -> bool {
        self.carry
    }

    fn write_carrying(
        &self,
        label: &str,
        expected: Option<u64>,
        value: &[u8],
        blobs: Vec<(String, Vec<u8>)>,
    ) -> Result<u64, AnchorError> {
        if !self.carry {
            return Err(backend(label, "this anchor does not store blobs"));
        }
        if blobs.len() > MAX_CARRIED_BLOBS {
            return Err(backend(
                label,
                format!("{} blobs in one write", blobs.len()),
            ));
        }
        let bytes: usize = blobs.iter().map(|(k, v)| k.len() + v.len()).sum();
        if bytes > MAX_CARRIED_PER_UPDATE {
            // Too large to share a commit's frame: stored first, alone (the same store).
            self.store.put_many(&blobs).map_err(|e| backend(label, e))?;
            return self.write_pending(label, expected, value, Vec::new());
        }
        self.write_pending(label, expected, value, blobs)
    }
}

impl<A: Anchor, S: BlobStore> PartitionedAnchor<A, S> {
    /// Queues one update (with the blobs it carries) for its partition's next commit, and
    /// commits the queue itself if no other writer is committing (group commit).
    fn write_pending(
        &self,
        label: &str,
        expected: Option<u64>,
        value: &[u8],
        blobs: Vec<(String, Vec<u8>)>,
    ) -> Result<u64, AnchorError> {
        if value.len() > MAX_VALUE {
            return Err(backend(label, format!("value of {} bytes", value.len())));
        }
        let (p, _) = self.place(&key_of(label));
        let part = self.part(p);
        let mut q = lock(&part.queue);
        let ticket = q.next;
        q.next = q.next.wrapping_add(1);
        q.waiting.push(Pending {
            ticket,
            label: label.to_owned(),
            expected,
            value: value.to_vec(),
            blobs,
        });
        // Wait while another writer commits: it may take our update in its batch (then our
        // outcome is in `done` when it signals), or leave it queued for us to commit with
        // whatever else queued meanwhile (group commit).
        loop {
            if let Some(done) = q.done.remove(&ticket) {
                return done;
            }
            if !q.committing {
                break;
            }
            q = part
                .committed
                .wait(q)
                .unwrap_or_else(PoisonError::into_inner);
        }
        q.committing = true;
        // At most MAX_BATCH updates, ours among them: one commit's blobs must fit one
        // `PutMany` (at most MAX_PUT_MANY entries, one frame); the rest wait for the next.
        // Carried blobs count against MAX_CARRIED_BYTES, so that one commit's blobs fit one
        // frame.
        let mut batch = Vec::new();
        let mut rest = Vec::new();
        let mut carried = 0usize;
        for w in std::mem::take(&mut q.waiting) {
            let bytes = w.carried_bytes();
            let room =
                batch.len() + 1 < MAX_BATCH && carried.saturating_add(bytes) <= MAX_CARRIED_BYTES;
            if w.ticket == ticket || room {
                carried = carried.saturating_add(bytes);
                batch.push(w);
            } else {
                rest.push(w);
            }
        }
        q.waiting = rest;
        drop(q);
        let mut unfinished = Unfinished {
            part,
            tickets: batch.iter().map(|w| w.ticket).collect(),
        };
        let results = {
            let mut cached = lock(&part.tree);
            self.commit(p, &mut cached, &batch)
        };
        unfinished.tickets.clear();
        drop(unfinished);
        let mut q = lock(&part.queue);
        q.committing = false;
        let mut mine = Err(backend(label, "update not in its batch"));
        for (t, r) in results {
            if t == ticket {
                mine = r;
            } else {
                q.done.insert(t, r);
            }
        }
        part.committed.notify_all();
        mine
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use crate::service::anchor::InsecureMemoryAnchor;
    use crate::store::MemoryStore;
    use std::sync::Arc;

    fn anchor(partitions: u16) -> PartitionedAnchor<Arc<InsecureMemoryAnchor>, Arc<MemoryStore>> {
        PartitionedAnchor::new(
            Arc::new(InsecureMemoryAnchor::default()),
            Arc::new(MemoryStore::default()),
            partitions,
            false,
        )
        .unwrap()
    }

    /// A store that counts its writes.
    #[derive(Default)]
    struct Counting {
        inner: MemoryStore,
        writes: std::sync::atomic::AtomicUsize,
    }

    impl BlobStore for Counting {
        fn put(&self, key: &str, value: &[u8]) -> Result<(), crate::store::StoreError> {
            self.writes
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.inner.put(key, value)
        }
        fn get(&self, key: &str) -> Result<Option<Vec<u8>>, crate::store::StoreError> {
            self.inner.get(key)
        }
        fn delete(&self, key: &str) -> Result<(), crate::store::StoreError> {
            self.inner.delete(key)
        }
        fn list(&self, prefix: &str) -> Result<Vec<String>, crate::store::StoreError> {
            self.inner.list(prefix)
        }
        fn put_many(&self, entries: &[(String, Vec<u8>)]) -> Result<(), crate::store::StoreError> {
            self.writes
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.inner.put_many(entries)
        }
    }

    #[test]
    fn carried_blobs_go_in_the_trees_write_and_only_with_an_update_that_applies() {
        let writes = |s: &Counting| s.writes.load(std::sync::atomic::Ordering::SeqCst);
        let roots = Arc::new(InsecureMemoryAnchor::default());
        let store = Arc::new(Counting::default());
        let a = PartitionedAnchor::new(roots.clone(), store.clone(), 8, false)
            .unwrap()
            .carrying_blobs();
        assert!(a.carries_blobs());
        let state = vec![("wallet/1/state/aa".to_owned(), b"state".to_vec())];
        a.write_carrying("w/1", None, &[1; 32], state).unwrap();
        assert_eq!(writes(&store), 1, "the blob and the tree in one write");
        assert_eq!(
            store.get("wallet/1/state/aa").unwrap().as_deref(),
            Some(&b"state"[..])
        );
        // A stale writer: a conflict, and its blob is not stored.
        let stale = vec![("wallet/1/state/bb".to_owned(), b"other".to_vec())];
        let err = a.write_carrying("w/1", None, &[2; 32], stale).unwrap_err();
        assert!(matches!(err, AnchorError::Conflict { .. }), "{err:?}");
        assert_eq!(store.get("wallet/1/state/bb").unwrap(), None);
        // Too many blobs for one update: refused, nothing stored.
        let many = (0..3).map(|i| (format!("k/{i}"), vec![i])).collect();
        assert!(a.write_carrying("w/2", None, &[3; 32], many).is_err());
        assert_eq!(store.get("k/0").unwrap(), None);
        // Blobs too large to share a commit go first, in a write of their own.
        let before = writes(&store);
        let large = vec![(
            "wallet/2/state/cc".to_owned(),
            vec![7; MAX_CARRIED_PER_UPDATE],
        )];
        a.write_carrying("w/4", None, &[5; 32], large).unwrap();
        assert_eq!(writes(&store) - before, 2);
        assert_eq!(
            store.get("wallet/2/state/cc").unwrap().map(|v| v.len()),
            Some(MAX_CARRIED_PER_UPDATE)
        );
        // Not told its store is the writers': it stores none of theirs.
        let plain = PartitionedAnchor::new(roots, store.clone(), 8, false).unwrap();
        assert!(!plain.carries_blobs());
        let blob = vec![("k/x".to_owned(), b"x".to_vec())];
        assert!(plain.write_carrying("w/3", None, &[4; 32], blob).is_err());
        assert_eq!(store.get("k/x").unwrap(), None);
    }

    #[test]
    fn each_label_keeps_its_own_compare_and_swap() {
        let a = anchor(4);
        assert_eq!(a.write("w1", None, b"one").unwrap(), 0);
        assert_eq!(a.write("w2", None, b"two").unwrap(), 0);
        assert_eq!(a.write("w1", Some(0), b"one'").unwrap(), 1);
        assert!(matches!(
            a.write("w1", Some(0), b"stale"),
            Err(AnchorError::Conflict { found: Some(1), .. })
        ));
        assert!(matches!(
            a.write("w2", None, b"again"),
            Err(AnchorError::Conflict { found: Some(0), .. })
        ));
        assert_eq!(a.read("w1").unwrap().unwrap().value, b"one'");
        assert_eq!(a.read("w2").unwrap().unwrap().value, b"two");
        assert_eq!(a.read("w3").unwrap(), None);
    }

    #[test]
    fn token_objects_grow_with_partitions_not_labels() {
        let roots = Arc::new(InsecureMemoryAnchor::default());
        let store = Arc::new(MemoryStore::default());
        let a = PartitionedAnchor::new(roots.clone(), store.clone(), 8, false).unwrap();
        for i in 0..2000 {
            a.write(&format!("cosigner-anchor/{i}"), None, &[7; 32])
                .unwrap();
        }
        let objects = (0..8)
            .filter(|p| roots.read(&root_label(*p)).unwrap().is_some())
            .count();
        assert_eq!(objects, 8);
        assert_eq!(roots.len(), 8 + 1, "8 roots and the layout");
        // Each partition keeps one index and at most one blob per bucket, old ones deleted.
        assert!(store.list("anchors/").unwrap().len() <= 8 * (1 + BUCKETS));
        for i in 0..2000 {
            let v = a.read(&format!("cosigner-anchor/{i}")).unwrap().unwrap();
            assert_eq!(v.generation, 0);
        }
    }

    #[test]
    fn a_store_that_lost_the_tree_is_refused_as_integrity() {
        let roots = Arc::new(InsecureMemoryAnchor::default());
        let store = Arc::new(MemoryStore::default());
        let a = PartitionedAnchor::new(roots.clone(), store.clone(), 1, false).unwrap();
        a.write("w", None, b"v").unwrap();
        for k in store.list("anchors/").unwrap() {
            store.delete(&k).unwrap();
        }
        let fresh = PartitionedAnchor::new(roots, store, 1, false).unwrap();
        assert!(matches!(
            fresh.read("w"),
            Err(AnchorError::Integrity { .. })
        ));
        assert!(matches!(
            fresh.write("w", Some(0), b"x"),
            Err(AnchorError::Integrity { .. })
        ));
    }

    #[test]
    fn a_store_that_serves_an_older_bucket_is_refused() {
        let roots = Arc::new(InsecureMemoryAnchor::default());
        let store = Arc::new(MemoryStore::default());
        let a = PartitionedAnchor::new(roots.clone(), store.clone(), 1, false).unwrap();
        a.write("victim", None, b"old").unwrap();
        let before: Vec<(String, Vec<u8>)> = store
            .list("anchors/")
            .unwrap()
            .into_iter()
            .map(|k| (k.clone(), store.get(&k).unwrap().unwrap()))
            .collect();
        a.write("victim", Some(0), b"new").unwrap();
        // The host puts the old tree back under the new names (and keeps the new root).
        let now = store.list("anchors/").unwrap();
        let old_bucket = before.iter().find(|(k, _)| k.contains("/b")).unwrap();
        for k in now.iter().filter(|k| k.contains("/b")) {
            store.put(k, &old_bucket.1).unwrap();
        }
        // A fresh enclave (nothing cached) reads the partition from the store.
        let fresh = PartitionedAnchor::new(roots, store, 1, false).unwrap();
        assert!(matches!(
            fresh.read("victim"),
            Err(AnchorError::Integrity { .. })
        ));
    }

    #[test]
    fn labels_from_before_partitions_are_read_and_moved_in_on_their_next_write() {
        let roots = Arc::new(InsecureMemoryAnchor::default());
        roots.write("legacy", None, b"v0").unwrap();
        roots.write("legacy", Some(0), b"v1").unwrap();
        let a = PartitionedAnchor::new(roots.clone(), Arc::new(MemoryStore::default()), 2, false)
            .unwrap();
        assert_eq!(
            a.read("legacy").unwrap(),
            Some(Versioned {
                generation: 1,
                value: b"v1".to_vec()
            })
        );
        assert!(matches!(
            a.write("legacy", Some(0), b"stale"),
            Err(AnchorError::Conflict { found: Some(1), .. })
        ));
        assert_eq!(a.write("legacy", Some(1), b"v2").unwrap(), 2);
        assert_eq!(a.read("legacy").unwrap().unwrap().value, b"v2");
        // The old object no longer names a state an older build could load.
        assert_eq!(roots.read("legacy").unwrap().unwrap().value, MOVED);
        assert_eq!(a.read("legacy").unwrap().unwrap().value, b"v2");
    }

    #[test]
    fn concurrent_writers_of_one_partition_lose_nothing() {
        let a = Arc::new(anchor(1));
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let a = a.clone();
                std::thread::spawn(move || {
                    let label = format!("w{t}");
                    let mut expected = None;
                    for i in 0..50u32 {
                        expected = Some(a.write(&label, expected, &i.to_be_bytes()).unwrap());
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        for t in 0..8 {
            let v = a.read(&format!("w{t}")).unwrap().unwrap();
            assert_eq!((v.generation, v.value), (49, 49u32.to_be_bytes().to_vec()));
        }
    }

    /// A root store whose writes take a while (a token's), so writers queue behind a commit.
    struct Slow(InsecureMemoryAnchor);

    impl Anchor for Slow {
        fn read(&self, label: &str) -> Result<Option<Versioned>, AnchorError> {
            self.0.read(label)
        }
        fn write(&self, label: &str, e: Option<u64>, v: &[u8]) -> Result<u64, AnchorError> {
            std::thread::sleep(std::time::Duration::from_millis(5));
            self.0.write(label, e, v)
        }
    }

    #[test]
    fn writers_queued_behind_a_commit_share_the_next_root_write() {
        let roots = Arc::new(Slow(InsecureMemoryAnchor::default()));
        let a = Arc::new(
            PartitionedAnchor::new(roots.clone(), Arc::new(MemoryStore::default()), 1, false)
                .unwrap(),
        );
        let threads: Vec<_> = (0..16)
            .map(|t| {
                let a = a.clone();
                std::thread::spawn(move || {
                    for i in 0..10 {
                        a.write(&format!("w{t}/{i}"), None, b"v").unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let commits = roots.read(&root_label(0)).unwrap().unwrap().generation + 1;
        assert!(commits < 160 / 2, "160 writes took {commits} root writes");
    }

    #[test]
    fn two_instances_on_shared_roots_see_each_others_writes() {
        let roots = Arc::new(InsecureMemoryAnchor::default());
        let store = Arc::new(MemoryStore::default());
        let one = PartitionedAnchor::new(roots.clone(), store.clone(), 1, true).unwrap();
        let two = PartitionedAnchor::new(roots, store, 1, true).unwrap();
        one.write("a", None, b"1").unwrap();
        two.write("b", None, b"2").unwrap();
        assert_eq!(one.read("b").unwrap().unwrap().value, b"2");
        assert_eq!(two.write("a", Some(0), b"1'").unwrap(), 1);
        assert!(matches!(
            one.write("a", Some(0), b"lost?"),
            Err(AnchorError::Conflict { found: Some(1), .. })
        ));
        assert_eq!(one.read("a").unwrap().unwrap().value, b"1'");
    }

    #[test]
    fn another_partition_count_is_refused_not_read_as_empty() {
        let roots = Arc::new(InsecureMemoryAnchor::default());
        let store = Arc::new(MemoryStore::default());
        let a = PartitionedAnchor::new(roots.clone(), store.clone(), 4, false).unwrap();
        a.write("w", None, b"x").unwrap();
        assert!(matches!(
            PartitionedAnchor::new(roots.clone(), store.clone(), 8, false),
            Err(AnchorError::Layout {
                configured: 8,
                anchored: Some(4)
            })
        ));
        let again = PartitionedAnchor::new(roots.clone(), store.clone(), 4, true).unwrap();
        assert_eq!(again.read("w").unwrap().unwrap().value, b"x");
        // Shared once, never lone again: a lone instance would remember anchors others move.
        assert!(matches!(
            PartitionedAnchor::new(roots, store, 4, false),
            Err(AnchorError::SharedLayout)
        ));
    }

    /// Golden bytes of the stored formats (module docs): a bucket of one leaf, and the index
    /// of partition 5 of 64 naming it in bucket 0 (its root is what the token object holds).
    #[test]
    fn golden_bucket_and_index() {
        let leaf = Leaf {
            key: [1; 32],
            generation: 3,
            value: vec![9; 32],
        };
        let bucket = encode_bucket(std::slice::from_ref(&leaf));
        assert_eq!(
            hex::encode(&bucket),
            concat!(
                "636f7369676e65722d616e63686f722d6275636b65742d7631", // "cosigner-anchor-bucket-v1"
                "00000001",                                           // one leaf
                "0101010101010101010101010101010101010101010101010101010101010101", // key
                "0000000000000003",                                   // generation
                "0020",                                               // value length
                "0909090909090909090909090909090909090909090909090909090909090909", // value
            )
        );
        let digest: Digest32 = Sha256::digest(&bucket).into();
        assert_eq!(
            hex::encode(digest),
            "dd3c7e976fd27570fe0d9bb92ce80f941acb2f3acae0d1c2efd42a324fdd2484"
        );
        let mut index = vec![EMPTY; BUCKETS];
        index[0] = digest;
        let root: Digest32 = Sha256::digest(encode_index(5, 64, &index)).into();
        assert_eq!(
            hex::encode(root),
            "0324ec859596b7a6eec8baaf63313b246654f69c3f199ce978d1ffae95fb5fc7"
        );
    }

    #[test]
    fn bucket_and_index_decoders_refuse_junk() {
        assert!(decode_bucket(b"junk").is_err());
        let leaf = Leaf {
            key: [1; 32],
            generation: 3,
            value: vec![9; 32],
        };
        let good = encode_bucket(std::slice::from_ref(&leaf));
        assert_eq!(decode_bucket(&good).unwrap(), vec![leaf.clone()]);
        for cut in 0..good.len() {
            assert!(decode_bucket(&good[..cut]).is_err());
        }
        let twice = encode_bucket(&[leaf.clone(), leaf]);
        assert!(decode_bucket(&twice).is_err());
        let index = encode_index(1, 4, &vec![EMPTY; BUCKETS]);
        assert!(decode_index(1, 4, &index).is_ok());
        assert!(decode_index(2, 4, &index).is_err());
        assert!(decode_index(1, 8, &index).is_err());
        assert!(decode_index(1, 4, &index[..index.len() - 1]).is_err());
    }
}
