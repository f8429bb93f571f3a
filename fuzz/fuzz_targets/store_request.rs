//! Any bytes into both decoders of the enclave ↔ parent store protocol
//! (`wire::decode::<StoreRequest>`, which the parent runs on what the enclave sends, and
//! `wire::decode::<StoreResponse>`, which the enclave runs on what the untrusted parent answers):
//! errors are fine, panics are not. Whatever decodes must re-encode to bytes that decode to the
//! same message.
#![no_main]

use cosigner_protocol::wire::{self, StoreRequest, StoreResponse};
use libfuzzer_sys::fuzz_target;

/// A macro rather than a generic function: naming serde's traits would need serde as a dependency.
macro_rules! round_trip {
    ($ty:ty, $data:expr) => {
        if let Ok(message) = wire::decode::<$ty>($data) {
            let bytes = wire::encode(&message).expect("a decoded message re-encodes");
            let again = wire::decode::<$ty>(&bytes).expect("a re-encoded message decodes");
            assert_eq!(again, message);
            assert_eq!(wire::encode(&again).expect("re-encode"), bytes);
        }
    };
}

fuzz_target!(|data: &[u8]| {
    round_trip!(StoreRequest, data);
    round_trip!(StoreResponse, data);
});
