//! Any bytes into the mailbox client's decoder (`mailbox::decode_response`, which a member runs on
//! what the untrusted mailbox host answers), then into `Envelope::decode` for every item of a page
//! (what the reader does next): errors are fine, panics are not. Whatever decodes re-encodes to
//! bytes that decode to the same response.
#![no_main]

use cosigner_protocol::mailbox::{Envelope, MailboxResponse, decode_response, encode_response};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(response) = decode_response(data) else {
        return;
    };
    let bytes = encode_response(&response).expect("a decoded response re-encodes");
    let again = decode_response(&bytes).expect("a re-encoded response decodes");
    assert_eq!(again, response);
    if let MailboxResponse::Messages { items, .. } = &response {
        for item in items {
            if let Ok(envelope) = Envelope::decode(&item.envelope) {
                assert_eq!(
                    envelope.encode().expect("a decoded envelope re-encodes"),
                    item.envelope.as_slice()
                );
                let _ = envelope.verify();
            }
        }
    }
});
