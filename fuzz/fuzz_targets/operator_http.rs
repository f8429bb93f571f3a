//! Any bytes as a request head on the parent's operator listener (`metrics_listen`:
//! `cosigner_parent::http::parse_request`): errors are fine, panics are not. A head longer than
//! the limit is never "incomplete" (the server would read on), and a request that parses is one of
//! the three GET routes whether or not more bytes follow its head.
#![no_main]

use cosigner_parent::http::{HttpError, MAX_HEAD, parse_request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let result = parse_request(data);
    if data.len() >= MAX_HEAD {
        assert!(
            !matches!(result, Ok(None)),
            "an over-long head waits for more"
        );
    }
    if let Ok(Some(route)) = result {
        let mut more = data.to_vec();
        more.extend_from_slice(b"trailing bytes");
        match parse_request(&more) {
            Ok(Some(again)) => assert_eq!(again, route),
            Err(HttpError::HeadTooLarge { .. }) => assert!(more.len() > MAX_HEAD),
            other => panic!("{other:?} once bytes follow a complete head"),
        }
    }
});
