//! Golden vectors of the repair's context, HPKE `info` and AAD, and of the messages a helper signs
//! with its share (`context` is private to the repair, hence a unit test rather than
//! protocol/tests/golden.rs, which pins the wire and every public hash).
//!
//! CHANGING A VECTOR MEANS A WIRE FORMAT CHANGE: helpers and participants of the previous build
//! can no longer open each other's sealed deltas and sigmas or check each other's signatures. A
//! deliberate change needs a `PROTOCOL_VERSION` bump (protocol/src/lib.rs); regenerate with
//! `GOLDEN_UPDATE=1 cargo nextest run --locked --workspace --all-features -E 'test(golden)'`
//! (protocol/tests/golden/pinned.rs).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

#[path = "../../tests/golden/pinned.rs"]
mod pinned;

use std::collections::BTreeMap;

use super::context::{Kind, aad, context_hash, delta_message, helper_key_message, info};
use crate::id::pid;
use crate::wire::RepairParams;

/// The repair of protocol/tests/golden/samples.rs (`repair_params`), helpers listed unsorted.
fn params() -> RepairParams {
    super::test_params(0x11, 4)
}

#[test]
fn golden_repair_context_info_and_aad() {
    let mut v = pinned::Vectors::open("repair.txt");
    let p = params();
    let keys = BTreeMap::from([(pid(2), vec![0xa2; 4]), (pid(3), vec![0xa3; 4])]);
    let context = context_hash(&p, &keys);
    v.pin(
        "repair.context_hash",
        "context_hash: params (helpers sorted) and helper keys 2 -> a2.., 3 -> a3..",
        &context,
    );
    v.pin(
        "repair.info",
        "info: HPKE info of repair packages",
        &info(&p),
    );
    let delta = aad(&p, Kind::Delta, pid(2), pid(3), &context);
    v.pin(
        "repair.aad.delta",
        "aad: HPKE AAD of the delta from helper 2 to helper 3",
        &delta,
    );
    v.pin(
        "repair.aad.sigma",
        "aad: HPKE AAD of the sigma from helper 2 to the participant 1",
        &aad(&p, Kind::Sigma, pid(2), pid(1), &context),
    );
    v.pin(
        "repair.helper_key_message",
        "helper_key_message: what helper 2 signs with its share over its HPKE key",
        &helper_key_message(&p, pid(2), &[0xa2; 4]),
    );
    v.pin(
        "repair.delta_message",
        "delta_message: what helper 2 signs with its share over its sealed delta to 3",
        &delta_message(&delta, &[0x40; 4], &[0x41; 6]),
    );
    v.finish();
}
