//! Any bytes into both decoders of the enclave ↔ parent store protocol
//! (`wire::decode::<StoreRequest>`, which the parent runs on what the enclave sends, and
//! `wire::decode::<StoreResponse>`, which the enclave runs on what the untrusted parent answers):
//! errors are fine, panics are not. Whatever decodes must re-encode to bytes that decode to the
//! same message.
#![no_main]

use cosigner_fuzz::wire_round_trip;
use cosigner_protocol::wire::{StoreRequest, StoreResponse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    wire_round_trip!(StoreRequest, data);
    wire_round_trip!(StoreResponse, data);
});
