//! Any bytes into the client → enclave decoder (`wire::decode::<Request>`): errors are fine,
//! panics are not. Whatever decodes must re-encode to bytes that decode to the same request.
#![no_main]

use cosigner_protocol::wire::{self, Request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = wire::decode::<Request>(data) {
        let bytes = wire::encode(&request).expect("a decoded request re-encodes");
        let again = wire::decode::<Request>(&bytes).expect("a re-encoded request decodes");
        assert_eq!(again, request);
        // The encoding is canonical from here on: encoding the re-decoded value changes nothing.
        assert_eq!(wire::encode(&again).expect("re-encode"), bytes);
    }
});
