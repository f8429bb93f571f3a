//! Serving the enclave's store requests on one connection.
//!
//! Frames ([`cosigner_protocol::frame`]) carrying [`StoreRequest`]s come in; one
//! [`StoreResponse`] frame goes out per request, in order. The split mirrors the rest of cosigner:
//! [`handle`] is the bytes-free brain (request in, response out), [`serve_store`] runs the
//! parent's one frame loop ([`crate::frames`]) with it.
//!
//! A peer that sends something unreadable gets one `Error(BadRequest)` answer and the connection
//! is closed ([`crate::frames`]). A well-formed request the store refuses (invalid
//! key, oversized value) is answered with an error and the connection stays open.
//!
//! `AwsCredentials` is answered from the parent's [`CredentialsProvider`] when one is configured
//! (`[aws_credentials]`), else refused with `BadRequest` naming the missing table; a failure to
//! obtain them (IMDS unreachable, say) is `Internal` and keeps the connection open.
//!
//! Telemetry ([`serve_store_telemetry`]): `Log` and `Metrics` come from the enclave's telemetry
//! thread on a connection of its own (docs/architecture.md, "Logs and metrics"). Every field is
//! checked ([`crate::logging::check_records`], [`crate::metrics::check_snapshot`]); a batch over
//! a limit is answered `BadRequest` naming the field, counted, and the connection stays open (the
//! next batch may be fine). A connection speaks for one instance: the first message names it, and
//! another instance later on the same connection is refused. The records are written as the
//! parent's own lines ([`crate::logging::write_enclave_records`]) within a per-connection rate
//! limit; what is over is dropped and counted, with one line a second at most saying so.

use std::io::{Read, Write};
use std::time::Instant;

use cosigner_protocol::frame::MAX_FRAME_LEN;
use cosigner_protocol::wire::{
    ErrorKind, LogRecord, MetricsSnapshot, StoreRequest, StoreResponse, WireError, decode, encode,
};
use serde_bytes::ByteBuf;

use crate::aws_credentials::CredentialsProvider;
use crate::error::{ParentError, Result};
use crate::frames::{self, FrameService};
use crate::logging::{self, RateLimit};
use crate::metrics::{self, LogOutcome, Metrics};
use crate::store::Store;

/// Serves store requests on `stream` until the peer closes it (`Ok`) or breaks the protocol
/// (answered with `Error(BadRequest)`, then [`ParentError::BadRequest`]). Never panics on input.
pub fn serve_store<S: Read + Write>(stream: S, store: &dyn Store) -> Result<()> {
    serve_store_with(stream, store, None)
}

/// [`serve_store`], answering `AwsCredentials` from `credentials`.
pub fn serve_store_with<S: Read + Write>(
    stream: S,
    store: &dyn Store,
    credentials: Option<&CredentialsProvider>,
) -> Result<()> {
    frames::serve(
        stream,
        &mut StoreService {
            store,
            credentials,
            telemetry: None,
        },
    )
}

/// [`serve_store_with`], timing the store's operations into `metrics` and taking the enclave's
/// `Log` and `Metrics` (module docs).
pub fn serve_store_telemetry<S: Read + Write>(
    stream: S,
    store: &dyn Store,
    credentials: Option<&CredentialsProvider>,
    metrics: &Metrics,
) -> Result<()> {
    frames::serve(
        stream,
        &mut StoreService {
            store,
            credentials,
            telemetry: Some(Telemetry {
                metrics,
                instance: None,
                rate: RateLimit::new(),
                over: 0,
                last_drop_line: None,
            }),
        },
    )
}

/// The store channel as a [`FrameService`].
struct StoreService<'a> {
    store: &'a dyn Store,
    credentials: Option<&'a CredentialsProvider>,
    telemetry: Option<Telemetry<'a>>,
}

/// One connection's telemetry state.
struct Telemetry<'a> {
    metrics: &'a Metrics,
    /// The instance this connection speaks for, once it said.
    instance: Option<u32>,
    rate: RateLimit,
    /// Records dropped by the rate limit and not yet reported.
    over: u64,
    last_drop_line: Option<Instant>,
}

impl Telemetry<'_> {
    /// The connection's instance: `instance` if it is the first said or the same as before.
    fn speaks_for(&mut self, instance: u32) -> std::result::Result<(), String> {
        match self.instance {
            None => {
                self.instance = Some(instance);
                self.metrics.telemetry_connected(instance);
                Ok(())
            }
            Some(i) if i == instance => Ok(()),
            Some(i) => Err(format!(
                "this telemetry connection speaks for instance {i}, not {instance}"
            )),
        }
    }

    fn refuse(&self, reason: String) -> StoreResponse {
        self.metrics.telemetry_refused();
        StoreResponse::Error(WireError::new(ErrorKind::BadRequest, reason))
    }

    fn log(&mut self, instance: u32, records: &[LogRecord], dropped: u64) -> StoreResponse {
        if let Err(e) = self.speaks_for(instance) {
            return self.refuse(e);
        }
        if let Err(e) = logging::check_records(records) {
            self.metrics.enclave_logs(
                instance,
                LogOutcome::Refused,
                u64::try_from(records.len()).unwrap_or(u64::MAX),
            );
            return self.refuse(e.to_string());
        }
        let n = self.rate.take(records.len());
        let allowed = records.get(..n).unwrap_or_default();
        let written = logging::write_enclave_records(instance, allowed);
        let over = u64::try_from(records.len() - allowed.len()).unwrap_or(u64::MAX);
        let m = self.metrics;
        let count = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
        m.enclave_logs(instance, LogOutcome::Written, count(written));
        m.enclave_logs(
            instance,
            LogOutcome::Filtered,
            count(allowed.len() - written),
        );
        m.enclave_logs(instance, LogOutcome::RateLimited, over);
        m.enclave_logs(instance, LogOutcome::DroppedByEnclave, dropped);
        self.over = self.over.saturating_add(over);
        let due = self
            .last_drop_line
            .is_none_or(|t| t.elapsed() >= logging::DROP_LOG_INTERVAL);
        if self.over > 0 && due {
            tracing::warn!(
                instance,
                dropped = self.over,
                "dropped {} of the enclave's log records over the rate limit of {} a second",
                self.over,
                RateLimit::RATE
            );
            self.over = 0;
            self.last_drop_line = Some(Instant::now());
        }
        StoreResponse::Done
    }

    fn snapshot(&mut self, instance: u32, snapshot: MetricsSnapshot) -> StoreResponse {
        if let Err(e) = self.speaks_for(instance) {
            return self.refuse(e);
        }
        if let Err(e) = metrics::check_snapshot(&snapshot) {
            return self.refuse(e.to_string());
        }
        self.metrics.enclave_snapshot(instance, snapshot);
        StoreResponse::Done
    }
}

impl Drop for Telemetry<'_> {
    fn drop(&mut self) {
        if let Some(instance) = self.instance {
            self.metrics.telemetry_disconnected(instance);
        }
    }
}

/// The name of a store operation in metrics, if `request` is one.
fn store_op(request: &StoreRequest) -> Option<&'static str> {
    Some(match request {
        StoreRequest::Put { .. } => "put",
        StoreRequest::PutMany { .. } => "put_many",
        StoreRequest::Get { .. } => "get",
        StoreRequest::Delete { .. } => "delete",
        StoreRequest::DeleteMany { .. } => "delete_many",
        StoreRequest::List { .. } => "list",
        _ => return None,
    })
}

impl FrameService for StoreService<'_> {
    type Request = StoreRequest;
    type Response = StoreResponse;
    const NAME: &'static str = "store";

    fn decode(&self, frame: &[u8]) -> std::result::Result<StoreRequest, String> {
        decode::<StoreRequest>(frame).map_err(|e| e.to_string())
    }

    fn handle(&mut self, request: StoreRequest) -> StoreResponse {
        let Some(telemetry) = self.telemetry.as_mut() else {
            return handle_with(self.store, self.credentials, request);
        };
        match request {
            StoreRequest::Log {
                instance,
                records,
                dropped,
            } => telemetry.log(instance, &records, dropped),
            StoreRequest::Metrics { instance, snapshot } => telemetry.snapshot(instance, snapshot),
            other => {
                let op = store_op(&other);
                let started = Instant::now();
                let response = handle_with(self.store, self.credentials, other);
                if let Some(op) = op {
                    telemetry.metrics.store_op(op, started.elapsed());
                }
                response
            }
        }
    }

    fn refusal(reason: String) -> StoreResponse {
        StoreResponse::Error(WireError::new(ErrorKind::BadRequest, reason))
    }

    /// A response too large for a frame (a listing of thousands of long keys) is replaced by an
    /// `Internal` error.
    fn encode(response: &StoreResponse) -> Result<Vec<u8>> {
        let encoded = |r: &StoreResponse| {
            encode(r).map_err(|e| ParentError::Encode {
                reason: e.to_string(),
            })
        };
        let body = encoded(response)?;
        if body.len() <= MAX_FRAME_LEN {
            return Ok(body);
        }
        encoded(&StoreResponse::Error(WireError::new(
            ErrorKind::Internal,
            format!(
                "response of {} bytes exceeds the {MAX_FRAME_LEN}-byte frame limit",
                body.len()
            ),
        )))
    }
}

/// Answers one request from `store`. Refusals of the request itself are `BadRequest`, store
/// failures `Internal`.
pub fn handle(store: &dyn Store, request: StoreRequest) -> StoreResponse {
    handle_with(store, None, request)
}

/// [`handle`], answering `AwsCredentials` from `credentials`.
pub fn handle_with(
    store: &dyn Store,
    credentials: Option<&CredentialsProvider>,
    request: StoreRequest,
) -> StoreResponse {
    let result = match request {
        StoreRequest::Put { key, value } => store.put(&key, &value).map(|()| StoreResponse::Done),
        StoreRequest::PutMany { entries } => {
            let entries: Vec<(String, Vec<u8>)> = entries
                .into_iter()
                .map(|(k, v)| (k, v.into_vec()))
                .collect();
            store.put_many(&entries).map(|()| StoreResponse::Done)
        }
        StoreRequest::Get { key } => store.get(&key).map(|value| StoreResponse::Value {
            value: value.map(ByteBuf::from),
        }),
        StoreRequest::Delete { key } => store.delete(&key).map(|()| StoreResponse::Done),
        StoreRequest::DeleteMany { keys } => store.delete_many(&keys).map(|()| StoreResponse::Done),
        StoreRequest::List { prefix } => store
            .list_prefix(&prefix)
            .map(|keys| StoreResponse::Keys { keys }),
        StoreRequest::AwsCredentials => match credentials {
            Some(provider) => provider.response(),
            None => Err(ParentError::BadRequest {
                reason: "this parent serves no AWS credentials: add an [aws_credentials] table \
                         to its configuration (docs/kms.md)"
                    .into(),
            }),
        },
        StoreRequest::Log { .. } | StoreRequest::Metrics { .. } => Err(ParentError::BadRequest {
            reason: "this store connection takes no telemetry".into(),
        }),
        // A request variant added to the protocol after this build.
        _ => Err(ParentError::BadRequest {
            reason: "unsupported store request".into(),
        }),
    };
    result.unwrap_or_else(|e| StoreResponse::Error(WireError::new(e.wire_kind(), e.to_string())))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use std::os::unix::net::UnixStream;

    use cosigner_protocol::frame::{read_frame, write_frame};
    use cosigner_protocol::wire::{
        CounterSample, EnclaveCounter, LogLevel, LogRecord, MetricsSnapshot,
    };

    use super::*;
    use crate::store::SqliteStore;

    fn call(conn: &mut UnixStream, request: &StoreRequest) -> StoreResponse {
        write_frame(conn, &encode(request).unwrap()).unwrap();
        decode(&read_frame(conn).unwrap().unwrap()).unwrap()
    }

    fn refused(answer: &StoreResponse, needle: &str) -> bool {
        matches!(answer, StoreResponse::Error(e)
            if e.kind == ErrorKind::BadRequest && e.message.contains(needle))
    }

    fn snapshot(label: &str) -> MetricsSnapshot {
        MetricsSnapshot {
            attested: true,
            connections_open: 0,
            counters: vec![CounterSample {
                counter: EnclaveCounter::Signatures,
                labels: vec![label.into()],
                value: 1,
            }],
            histograms: Vec::new(),
        }
    }

    /// One telemetry connection: its instance is the first it names; refusals (another instance,
    /// a record or a snapshot over a limit) are answered and counted and the connection goes on,
    /// the store still served on it; when it closes, its instance is down.
    #[test]
    fn a_telemetry_connection_speaks_for_one_instance_and_survives_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("s.db")).unwrap();
        let metrics = Metrics::new();
        let (mut ours, theirs) = UnixStream::pair().unwrap();
        std::thread::scope(|scope| {
            let server = scope.spawn(|| serve_store_telemetry(theirs, &store, None, &metrics));
            let log = |instance, message: &str, fields: Vec<(String, String)>| StoreRequest::Log {
                instance,
                records: vec![LogRecord {
                    time_ms: 0,
                    level: LogLevel::Debug,
                    target: "cosigner_enclave::test".into(),
                    message: message.into(),
                    fields,
                }],
                dropped: 2,
            };
            assert_eq!(
                call(&mut ours, &log(5, "first", vec![])),
                StoreResponse::Done
            );
            assert!(refused(
                &call(&mut ours, &log(6, "other", vec![])),
                "instance 5, not 6"
            ));
            let forged = vec![("level".into(), "ERROR".into())];
            assert!(refused(&call(&mut ours, &log(5, "x", forged)), "\"level\""));
            let answer = call(
                &mut ours,
                &StoreRequest::Metrics {
                    instance: 5,
                    snapshot: snapshot("a b"),
                },
            );
            assert!(refused(&answer, "label value"), "{answer:?}");
            let answer = call(
                &mut ours,
                &StoreRequest::Metrics {
                    instance: 5,
                    snapshot: snapshot("bip340"),
                },
            );
            assert_eq!(answer, StoreResponse::Done);
            assert_eq!(metrics.readiness(), Ok(()));
            // The store itself on the same connection, timed.
            let answer = call(
                &mut ours,
                &StoreRequest::Get {
                    key: "wallet/x".into(),
                },
            );
            assert_eq!(answer, StoreResponse::Value { value: None });
            drop(ours);
            server.join().unwrap().unwrap();
        });
        assert!(
            metrics.readiness().is_err(),
            "down once its connection closed"
        );
        let text = metrics.render();
        for line in [
            "cosigner_telemetry_refused_total 3",
            "cosigner_enclave_log_records_total{instance=\"5\",outcome=\"refused\"} 1",
            "cosigner_enclave_log_records_total{instance=\"5\",outcome=\"dropped_by_enclave\"} 2",
            "cosigner_enclave_signatures_total{instance=\"5\",scheme=\"bip340\"} 1",
            "cosigner_store_seconds_count{op=\"get\"} 1",
            "cosigner_instances_up 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        // The debug record passed the checks and the rate limit: written, or below the level
        // the filter lets through (no subscriber in this test: everything is).
        let outcome = |o: &str| {
            let series =
                format!("cosigner_enclave_log_records_total{{instance=\"5\",outcome=\"{o}\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(series.as_str())?.parse::<u64>().ok())
                .unwrap()
        };
        assert_eq!(outcome("written") + outcome("filtered"), 1, "{text}");
    }

    /// The store's own connections (no telemetry) refuse `Log` and `Metrics` by name.
    #[test]
    fn a_store_connection_without_telemetry_refuses_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("s.db")).unwrap();
        let answer = handle(
            &store,
            StoreRequest::Metrics {
                instance: 0,
                snapshot: MetricsSnapshot::default(),
            },
        );
        assert!(refused(&answer, "no telemetry"), "{answer:?}");
    }
}
