//! Any bytes into the enrollment token decoders (`EnrollmentToken::from_bytes`, and
//! `from_text` on the same bytes as text and as the hex of a token's text form), then `verify` on
//! whatever decodes: errors are fine, panics are not. A decoded token is deterministic: it
//! re-encodes to exactly the input, and its text form decodes back to it.
#![no_main]

use cosigner_protocol::enrollment::{EnrollmentToken, TEXT_PREFIX};
use libfuzzer_sys::fuzz_target;

/// A fixed operator key (SEC1 compressed, the generator point of P-256), so `verify` runs its
/// whole path; no fuzzed token verifies under it.
const OPERATOR: [u8; 33] = [
    0x03, 0x6b, 0x17, 0xd1, 0xf2, 0xe1, 0x2c, 0x42, 0x47, 0xf8, 0xbc, 0xe6, 0xe5, 0x63, 0xa4, 0x40,
    0xf2, 0x77, 0x03, 0x7d, 0x81, 0x2d, 0xeb, 0x33, 0xa0, 0xf4, 0xa1, 0x39, 0x45, 0xd8, 0x98, 0xc2,
    0x96,
];

fn check(token: &EnrollmentToken, bytes: &[u8]) {
    assert_eq!(
        token.to_bytes(),
        bytes,
        "a decoded token re-encodes to its input"
    );
    let again = EnrollmentToken::from_text(&token.to_text()).expect("its text decodes");
    assert_eq!(&again, token);
    for now in [0, token.expires_ms, u64::MAX] {
        assert!(token.verify(&OPERATOR, now).is_err());
    }
    let _ = token.verify(&token.device_key, 0);
}

/// Lowercase hex (the fuzz crate has no `hex` dependency of its own).
fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fuzz_target!(|data: &[u8]| {
    if let Ok(token) = EnrollmentToken::from_bytes(data) {
        check(&token, data);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(token) = EnrollmentToken::from_text(text) {
            let bytes = token.to_bytes();
            check(&token, &bytes);
        }
    }
    // The same bytes behind the prefix, so the text path reaches the CBOR decoder.
    let text = format!("{TEXT_PREFIX}{}", to_hex(data));
    match EnrollmentToken::from_text(&text) {
        Ok(token) => check(&token, data),
        Err(_) => assert!(EnrollmentToken::from_bytes(data).is_err()),
    }
});
