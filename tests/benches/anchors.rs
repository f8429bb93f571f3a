//! `make bench`: what a rollback anchor write costs, as one JSON line.
//!
//! Against a real SoftHSM token (file object store, as `make up` uses it) and the enclave's
//! in-memory store (the parent's store costs are in the wallet figures):
//!
//! * `anchor_write_ms_p50_per_wallet_objects`: the layout before partitions, one token object per
//!   wallet (create the new generation, destroy the old): the baseline;
//! * `anchor_write_ms_p50`: one writer, partitioned anchors (1024 partitions): the tree's
//!   blobs in the store and the partition's root on the token;
//! * `anchor_writes_per_sec_16_writers`: 16 threads writing distinct wallets of one partition,
//!   so that group commit shares each root write among the writers queued behind it;
//! * `anchor_read_us_p50_shared`: a read when other instances share the anchors (the root asked
//!   of the token every time, the tree reused while the root is unchanged);
//! * `token_objects_for_100k_wallets`: anchors of 100 000 wallets written through partitioned
//!   anchors over an in-memory root store: how many objects a token would hold (partitions + the
//!   layout record), whatever the number of wallets; `tree_bytes_per_wallet` is what the store
//!   holds for them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::sync::Arc;
use std::time::Instant;

use cosigner_enclave::service::anchor::{
    Anchor, InsecureMemoryAnchor, SoleTokenAnchor, TokenAnchor,
};
use cosigner_enclave::service::partition::{DEFAULT_PARTITIONS, PartitionedAnchor};
use cosigner_enclave::store::{BlobStore, MemoryStore};
use cosigner_tests::pkcs11::token_for_this_process;

fn p50(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Milliseconds of each of `n` writes of fresh labels then one rewrite each.
fn write_ms(anchor: &dyn Anchor, prefix: &str, n: usize) -> f64 {
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let label = format!("{prefix}/{i}");
        anchor.write(&label, None, &[1; 32]).unwrap();
        let t = Instant::now();
        anchor.write(&label, Some(0), &[2; 32]).unwrap();
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    p50(times)
}

/// `n` labels that all fall into partition 0 of the default layout (the first two bytes of
/// their SHA-256, modulo the partition count, are 0).
fn labels_in_partition_zero(n: usize) -> Vec<String> {
    use sha2::{Digest, Sha256};
    (0u64..)
        .map(|i| format!("cosigner-anchor/g{i}"))
        .filter(|l| {
            let h = Sha256::digest(l.as_bytes());
            u16::from_be_bytes([h[0], h[1]]) % DEFAULT_PARTITIONS == 0
        })
        .take(n)
        .collect()
}

fn main() {
    let (_hsm, _module, token) = token_for_this_process("bench-anchors");
    let per_wallet = write_ms(&TokenAnchor(token.clone()), "cosigner-anchor/w", 100);

    let store = Arc::new(MemoryStore::default());
    let partitioned = PartitionedAnchor::new(
        SoleTokenAnchor(cosigner_kms::SoleWriter::new(token.clone())),
        store.clone(),
        DEFAULT_PARTITIONS,
        false,
    )
    .unwrap();
    let partitioned_ms = write_ms(&partitioned, "p", 100);

    // Many writers in one partition: group commit.
    let grouped = Arc::new(
        PartitionedAnchor::new(
            SoleTokenAnchor(cosigner_kms::SoleWriter::new(token.clone())),
            Arc::new(MemoryStore::default()),
            DEFAULT_PARTITIONS,
            false,
        )
        .unwrap(),
    );
    let labels = Arc::new(labels_in_partition_zero(16 * 40));
    let writes_each = 40;
    let t = Instant::now();
    let threads: Vec<_> = (0..16)
        .map(|w| {
            let (a, labels) = (grouped.clone(), labels.clone());
            std::thread::spawn(move || {
                for i in 0..writes_each {
                    a.write(&labels[w * writes_each + i], None, &[3; 32])
                        .unwrap();
                }
            })
        })
        .collect();
    for th in threads {
        th.join().unwrap();
    }
    let per_sec = (16 * writes_each) as f64 / t.elapsed().as_secs_f64();

    let shared =
        PartitionedAnchor::new(TokenAnchor(token), store, DEFAULT_PARTITIONS, true).unwrap();
    let mut reads = Vec::new();
    for i in 0..200 {
        let label = format!("p/{}", i % 100);
        let t = Instant::now();
        shared.read(&label).unwrap().unwrap();
        reads.push(t.elapsed().as_secs_f64() * 1e6);
    }

    let roots = Arc::new(InsecureMemoryAnchor::default());
    let trees = Arc::new(MemoryStore::default());
    let many =
        PartitionedAnchor::new(roots.clone(), trees.clone(), DEFAULT_PARTITIONS, false).unwrap();
    let wallets = 100_000usize;
    for i in 0..wallets {
        many.write(&format!("cosigner-anchor/{i:032x}"), None, &[4; 32])
            .unwrap();
    }
    let tree_bytes: usize = trees
        .list("anchors/")
        .unwrap()
        .iter()
        .map(|k| trees.get(k).unwrap().map_or(0, |v| v.len()))
        .sum();

    let round = |x: f64| (x * 1000.0).round() / 1000.0;
    println!(
        "{}",
        serde_json::json!({
            "anchor_write_ms_p50_per_wallet_objects": round(per_wallet),
            "anchor_write_ms_p50": round(partitioned_ms),
            "anchor_writes_per_sec_16_writers": per_sec.round(),
            "anchor_read_us_p50_shared": round(p50(reads)),
            "token_objects_for_100k_wallets": roots.len(),
            "tree_bytes_per_wallet": round(tree_bytes as f64 / wallets as f64),
        })
    );
}
