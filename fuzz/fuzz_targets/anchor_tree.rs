//! Any bytes into the decoders of the anchors' hash-tree blobs (`enclave/src/service/partition.rs`:
//! the index and bucket blobs the untrusted parent stores): errors are fine, panics are not.
//! The enclave checks a blob's digest before decoding it, so these decoders only ever see bytes
//! it wrote itself; they are fuzzed all the same, as every decoder of stored bytes is.
#![no_main]

use cosigner_enclave::service::partition::{decode_bucket_blob, decode_index_blob};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = decode_bucket_blob(data);
    if let [a, b, rest @ ..] = data {
        let _ = decode_index_blob(u16::from(*a), u16::from(*b).max(1), rest);
    }
});
