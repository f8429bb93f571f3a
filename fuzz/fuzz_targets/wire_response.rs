//! Any bytes into the enclave → client decoder (`wire::decode::<Response>`): errors are fine,
//! panics are not. Whatever decodes must re-encode to bytes that decode to the same response.
#![no_main]

use cosigner_protocol::wire::Response;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    cosigner_fuzz::wire_round_trip!(Response, data);
});
