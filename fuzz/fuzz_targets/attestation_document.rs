//! Any bytes into the attestation document decoder and verifier: errors are fine, panics are not.
//! Whatever decodes must re-encode to a document that decodes to the same value. The path for
//! QEMU's unsigned documents (`verify_emulated_unsigned`) reads every input too.
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, UNIX_EPOCH};

use cosigner_attestation::{
    AttestationDoc, Expectations, PinnedRoot, parse_emulated_unsigned, parse_unverified, verify,
    verify_emulated_unsigned,
};
use libfuzzer_sys::fuzz_target;

/// The AWS root when the shared fixtures are present; the verifier runs on every input then.
fn root() -> Option<&'static PinnedRoot> {
    static ROOT: OnceLock<Option<PinnedRoot>> = OnceLock::new();
    ROOT.get_or_init(|| {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/fixtures/nitro/aws-nitro-root-g1.pem"
        );
        std::fs::read(path)
            .ok()
            .and_then(|pem| PinnedRoot::from_pem(&pem).ok())
    })
    .as_ref()
}

fuzz_target!(|data: &[u8]| {
    if let Ok((_, doc)) = parse_unverified(data) {
        let again = AttestationDoc::decode(&doc.encode().expect("re-encode")).expect("re-decode");
        assert_eq!(again, doc);
    }
    if let Ok((_, doc)) = parse_emulated_unsigned(data) {
        let again = AttestationDoc::decode(&doc.encode().expect("re-encode")).expect("re-decode");
        assert_eq!(again, doc);
    }
    let at = UNIX_EPOCH + Duration::from_secs(1_665_651_483);
    let _ = verify_emulated_unsigned(data, at, &Expectations::default());
    if let Some(root) = root() {
        let _ = verify(data, root, at, &Expectations::default());
    }
});
