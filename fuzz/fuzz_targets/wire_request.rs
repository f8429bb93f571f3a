//! Any bytes into the client → enclave decoder (`wire::decode::<Request>`): errors are fine,
//! panics are not. Whatever decodes must re-encode to bytes that decode to the same request.
#![no_main]

use cosigner_protocol::wire::Request;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    cosigner_fuzz::wire_round_trip!(Request, data);
});
