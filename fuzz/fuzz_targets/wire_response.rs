//! Any bytes into the enclave → client decoder (`wire::decode::<Response>`): errors are fine,
//! panics are not. Whatever decodes must re-encode to bytes that decode to the same response.
#![no_main]

use cosigner_protocol::wire::{self, Response};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(response) = wire::decode::<Response>(data) {
        let bytes = wire::encode(&response).expect("a decoded response re-encodes");
        let again = wire::decode::<Response>(&bytes).expect("a re-encoded response decodes");
        assert_eq!(again, response);
        assert_eq!(wire::encode(&again).expect("re-encode"), bytes);
    }
});
