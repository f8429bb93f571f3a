//! Any bytes into the mailbox decoders (`Envelope::decode`, then `open` and `verify` on whatever
//! decodes; `decode_request`): errors are fine, panics are not. A decoded envelope is canonical:
//! it re-encodes to exactly the input, so its id is the SHA-256 of the input. A decoded request
//! re-encodes to bytes that decode to the same request.
#![no_main]

use cosigner_protocol::mailbox::{Envelope, decode_request, encode_request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(envelope) = Envelope::decode(data) {
        assert_eq!(
            envelope.encode().expect("a decoded envelope re-encodes"),
            data
        );
        let _ = envelope.verify();
        let _ = Envelope::open(data, &envelope.topic);
        let _ = envelope.id();
    }
    if let Ok(request) = decode_request(data) {
        let bytes = encode_request(&request).expect("a decoded request re-encodes");
        let again = decode_request(&bytes).expect("a re-encoded request decodes");
        assert_eq!(again, request);
    }
});
