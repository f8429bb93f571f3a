//! Any bytes as what a peer on the parent's store socket sends for telemetry
//! (`StoreRequest::Log` and `StoreRequest::Metrics`, docs/architecture.md "Logs and metrics"),
//! through the parent's own checks (`cosigner_parent::logging::check_records`,
//! `cosigner_parent::metrics::check_snapshot`): errors are fine, panics are not. What passes the
//! checks must come out as exactly one log line per record (JSON that parses, with the parent's
//! `source` and `instance`, or one text line), and as an exposition whose every sample line is
//! `name{labels} value` on one line.
#![no_main]

use cosigner_parent::logging::{LogFormat, check_records, render_enclave_records};
use cosigner_parent::metrics::{Metrics, check_snapshot};
use cosigner_protocol::wire::{self, StoreRequest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(request) = wire::decode::<StoreRequest>(data) else {
        return;
    };
    match request {
        StoreRequest::Log {
            instance, records, ..
        } => {
            if check_records(&records).is_err() {
                return;
            }
            let json = render_enclave_records(LogFormat::Json, instance, &records);
            let json = String::from_utf8(json).expect("JSON lines are UTF-8");
            assert_eq!(json.lines().count(), records.len());
            for line in json.lines() {
                let v: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
                assert_eq!(v["source"], "enclave");
                assert_eq!(v["instance"], instance);
            }
            let text = render_enclave_records(LogFormat::Text, instance, &records);
            let text = String::from_utf8(text).expect("text lines are UTF-8");
            assert_eq!(text.lines().count(), records.len());
        }
        StoreRequest::Metrics { instance, snapshot } => {
            if check_snapshot(&snapshot).is_err() {
                return;
            }
            let metrics = Metrics::new();
            metrics.telemetry_connected(instance);
            metrics.enclave_snapshot(instance, snapshot);
            for line in metrics.render().lines() {
                if line.starts_with('#') {
                    continue;
                }
                let (series, value) = line.rsplit_once(' ').expect("name and value");
                assert!(value.parse::<f64>().is_ok() || value == "+Inf", "{line}");
                assert!(!series.contains(' ') || series.contains('{'), "{line}");
            }
        }
        _ => {}
    }
});
