//! The enclave's logs and metrics, and how they leave it (docs/architecture.md, "Logs and
//! metrics").
//!
//! A Nitro enclave has no way out but vsock to the parent, so its log events and its counters go
//! to the parent over the store channel, on a connection of their own: `StoreRequest::Log`
//! batches as events happen, and a `StoreRequest::Metrics` snapshot every [`SNAPSHOT_INTERVAL`].
//! The parent writes the events as its own JSON lines (`"source":"enclave"`, the instance) and
//! serves the snapshots on `/metrics`.
//!
//! Never in the way of the service: an event is formatted into a [`LogRecord`] and put in a
//! bounded queue ([`QUEUE_CAPACITY`]) by the thread that logs it; one background thread
//! ([`start`]) drains it. A full queue drops the event and counts it (sent with the next batch,
//! and as `cosigner_enclave_log_events_dropped_total`). Counting a request is a few map updates
//! under short locks. When the parent cannot be reached, the background thread writes the events
//! on the enclave's own stderr instead (a debug enclave's console, a local run's log file), at
//! most one connection attempt a second; each event is written in one place only.
//!
//! What is logged: request kinds, outcomes, error kinds and messages, wallet ids, connection
//! counts. Never secrets, shares, PINs or request bodies: the service's errors name what failed,
//! not the data, and nothing here formats a request.

use std::collections::{BTreeMap, VecDeque};
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cosigner_attestation::{AttestRequest, Attester};
use cosigner_protocol::wire::{
    self, CounterSample, EnclaveCounter, EnclaveHistogram, ErrorKind, HistogramSample,
    LATENCY_BUCKETS_MICROS, LogLevel, LogRecord, MAX_LOG_FIELD_NAME, MAX_LOG_FIELD_VALUE,
    MAX_LOG_FIELDS, MAX_LOG_MESSAGE, MAX_LOG_RECORDS, MAX_LOG_TARGET, MetricsSnapshot, Request,
    Response, StoreRequest, StoreResponse,
};
use tracing::field::{Field, Visit};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

use crate::service::anchor::{Anchor, AnchorError, Versioned};
use crate::store::{BlobStore, RemoteStore, StoreError};
use crate::transport::Endpoint;

/// Events held for the parent at most; more are dropped and counted.
pub const QUEUE_CAPACITY: usize = 4096;
/// How often the metrics snapshot goes to the parent.
pub const SNAPSHOT_INTERVAL: Duration = Duration::from_secs(1);
/// The environment variable holding the filter (`RUST_LOG` syntax).
pub const FILTER_ENV: &str = "COSIGNER_LOG";

/// How events are written where they are written locally (stderr, when the parent is away).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line.
    #[default]
    Json,
    /// One human-readable line per event.
    Text,
}

// ---------------------------------------------------------------------------------------------
// Events.
// ---------------------------------------------------------------------------------------------

/// The queue between the threads that log and the one that ships.
struct Queue {
    records: Mutex<VecDeque<LogRecord>>,
    ready: Condvar,
    /// Dropped since the last batch sent.
    dropped: AtomicU64,
    /// Dropped since start.
    dropped_total: AtomicU64,
}

static QUEUE: Queue = Queue {
    records: Mutex::new(VecDeque::new()),
    ready: Condvar::new(),
    dropped: AtomicU64::new(0),
    dropped_total: AtomicU64::new(0),
};

static FORMAT: Mutex<LogFormat> = Mutex::new(LogFormat::Json);
/// This enclave's instance number (its configuration's `instance`), once known.
static INSTANCE: AtomicU32 = AtomicU32::new(0);

impl Queue {
    fn lock(&self) -> MutexGuard<'_, VecDeque<LogRecord>> {
        self.records.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn push(&self, record: LogRecord) {
        let mut records = self.lock();
        if records.len() >= QUEUE_CAPACITY {
            drop(records);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            self.dropped_total.fetch_add(1, Ordering::Relaxed);
            return;
        }
        records.push_back(record);
        drop(records);
        self.ready.notify_one();
    }

    /// Up to `max` records, waiting until `deadline` for the first.
    fn take(&self, max: usize, deadline: Instant) -> Vec<LogRecord> {
        let mut records = self.lock();
        while records.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Vec::new();
            }
            records = self
                .ready
                .wait_timeout(records, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        let n = records.len().min(max);
        records.drain(..n).collect()
    }
}

/// The `tracing` layer that turns each event into a [`LogRecord`] on the queue.
struct QueueLayer;

impl<S: tracing::Subscriber> Layer<S> for QueueLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        let mut visitor = Fields::default();
        event.record(&mut visitor);
        let level = match *meta.level() {
            tracing::Level::ERROR => LogLevel::Error,
            tracing::Level::WARN => LogLevel::Warn,
            tracing::Level::INFO => LogLevel::Info,
            tracing::Level::DEBUG => LogLevel::Debug,
            tracing::Level::TRACE => LogLevel::Trace,
        };
        QUEUE.push(LogRecord {
            time_ms: now_ms(),
            level,
            target: target(meta.target()),
            message: cut(&visitor.message, MAX_LOG_MESSAGE),
            fields: visitor.fields,
        });
    }
}

/// An event's fields, cut to the wire's limits.
#[derive(Default)]
struct Fields {
    message: String,
    fields: Vec<(String, String)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.add(field, value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.add(field, format!("{value:?}"));
    }
}

impl Fields {
    fn add(&mut self, field: &Field, value: String) {
        if field.name() == "message" {
            self.message = value;
            return;
        }
        let name = field_name(field.name());
        // The parent refuses a record naming a field twice.
        if self.fields.len() < MAX_LOG_FIELDS && !self.fields.iter().any(|(n, _)| *n == name) {
            self.fields.push((name, cut(&value, MAX_LOG_FIELD_VALUE)));
        }
    }
}

/// Names the parent writes itself; a field of ours by one of these names gets a prefix.
const RESERVED: [&str; 6] = [
    "timestamp",
    "level",
    "message",
    "target",
    "source",
    "instance",
];

/// A field name the parent accepts: `[a-z][a-z0-9_]*`, at most [`MAX_LOG_FIELD_NAME`] bytes,
/// not one of its own.
fn field_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '_' => c,
            'A'..='Z' => c.to_ascii_lowercase(),
            _ => '_',
        })
        .collect();
    if !out.starts_with(|c: char| c.is_ascii_lowercase()) || RESERVED.contains(&out.as_str()) {
        out = format!("f_{out}");
    }
    out.chars().take(MAX_LOG_FIELD_NAME).collect()
}

/// A target the parent accepts: `[a-z0-9_:]`, at most [`MAX_LOG_TARGET`] bytes.
fn target(target: &str) -> String {
    target
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '_' | ':' => c,
            'A'..='Z' => c.to_ascii_lowercase(),
            _ => '_',
        })
        .take(MAX_LOG_TARGET)
        .collect()
}

/// `s` cut to at most `max` bytes on a character boundary.
fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or_default().to_owned()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogInitError {
    /// `COSIGNER_LOG` is not a filter.
    #[error("{FILTER_ENV}={value:?} is not a log filter: {reason}")]
    BadFilter {
        /// The variable's value.
        value: String,
        /// Why.
        reason: String,
    },
    /// A subscriber was installed already.
    #[error("logging is already set up: {0}")]
    AlreadySet(String),
}

/// Installs the process's subscriber: events filtered by `COSIGNER_LOG` (default `info`) into
/// the queue; `format` for what is written locally. Events queue up until [`start`] ships them
/// (or [`flush_to_stderr`] writes them).
pub fn init(format: LogFormat) -> Result<(), LogInitError> {
    let value = std::env::var(FILTER_ENV).unwrap_or_default();
    let filter = if value.trim().is_empty() {
        EnvFilter::new("info")
    } else {
        EnvFilter::try_new(&value).map_err(|e| LogInitError::BadFilter {
            value: value.clone(),
            reason: e.to_string(),
        })?
    };
    *FORMAT.lock().unwrap_or_else(PoisonError::into_inner) = format;
    tracing_subscriber::registry()
        .with(filter)
        .with(QueueLayer)
        .try_init()
        .map_err(|e| LogInitError::AlreadySet(e.to_string()))
}

/// Writes what is queued on stderr, for a process about to exit before (or without) shipping.
pub fn flush_to_stderr() {
    let records: Vec<LogRecord> = QUEUE.lock().drain(..).collect();
    write_local(INSTANCE.load(Ordering::Relaxed), &records);
}

/// Writes records on stderr, one line each, in one write.
fn write_local(instance: u32, records: &[LogRecord]) {
    if records.is_empty() {
        return;
    }
    let format = *FORMAT.lock().unwrap_or_else(PoisonError::into_inner);
    let mut out = Vec::new();
    for r in records {
        match format {
            LogFormat::Json => {
                // The parent's order: timestamp, level, message, fields, target, source, instance.
                let text = |s: &str| serde_json::Value::from(s).to_string();
                let mut line = format!(
                    "{{\"timestamp\":{},\"level\":{},\"message\":{}",
                    text(&r.timestamp()),
                    text(r.level.as_str()),
                    text(&r.message)
                );
                for (name, value) in &r.fields {
                    line.push_str(&format!(",{}:{}", text(name), text(value)));
                }
                line.push_str(&format!(
                    ",\"target\":{},\"source\":\"enclave\",\"instance\":{instance}}}\n",
                    text(&r.target)
                ));
                out.extend_from_slice(line.as_bytes());
            }
            LogFormat::Text => {
                let clean = |s: &str| s.replace(|c: char| c.is_control(), " ");
                let mut line = format!(
                    "{} {:>5} enclave[{instance}] {}: {}",
                    r.timestamp(),
                    r.level.as_str(),
                    r.target,
                    clean(&r.message)
                );
                for (name, value) in &r.fields {
                    line.push_str(&format!(" {name}={}", clean(value)));
                }
                line.push('\n');
                out.extend_from_slice(line.as_bytes());
            }
        }
    }
    let _ = std::io::stderr().lock().write_all(&out);
}

// ---------------------------------------------------------------------------------------------
// Metrics.
// ---------------------------------------------------------------------------------------------

type Series<K> = BTreeMap<(K, Vec<String>), u64>;
/// Per histogram and label values: (count per bucket, sum in microseconds).
type Histograms = BTreeMap<(EnclaveHistogram, Vec<String>), (Vec<u64>, u64)>;

/// The enclave's counters and histograms since start.
struct Registry {
    counters: Mutex<Series<EnclaveCounter>>,
    histograms: Mutex<Histograms>,
    attested: AtomicBool,
    connections_open: AtomicU64,
}

static REGISTRY: Registry = Registry {
    counters: Mutex::new(BTreeMap::new()),
    histograms: Mutex::new(BTreeMap::new()),
    attested: AtomicBool::new(false),
    connections_open: AtomicU64::new(0),
};

/// Adds `n` to `counter` for `labels` (one value per [`EnclaveCounter::label_names`]).
pub fn count(counter: EnclaveCounter, labels: &[&str], n: u64) {
    let key = (counter, labels.iter().map(|l| (*l).to_owned()).collect());
    let mut counters = REGISTRY
        .counters
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    // Label values come from fixed sets (request kinds, error kinds, schemes): bounded series,
    // and within what the parent takes (half for counters, one of them `LogsDropped`, half for
    // histograms).
    if counters.len() >= wire::MAX_METRIC_SERIES / 2 - 1 && !counters.contains_key(&key) {
        return;
    }
    let value = counters.entry(key).or_insert(0);
    *value = value.saturating_add(n);
}

/// Records one observation of `histogram` for `labels`.
pub fn observe(histogram: EnclaveHistogram, labels: &[&str], elapsed: Duration) {
    let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
    let key = (histogram, labels.iter().map(|l| (*l).to_owned()).collect());
    let mut histograms = REGISTRY
        .histograms
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if histograms.len() >= wire::MAX_METRIC_SERIES / 2 && !histograms.contains_key(&key) {
        return;
    }
    let (buckets, sum) = histograms
        .entry(key)
        .or_insert_with(|| (vec![0; LATENCY_BUCKETS_MICROS.len() + 1], 0));
    let at = LATENCY_BUCKETS_MICROS
        .iter()
        .position(|bound| micros <= *bound)
        .unwrap_or(LATENCY_BUCKETS_MICROS.len());
    if let Some(n) = buckets.get_mut(at) {
        *n = n.saturating_add(1);
    }
    *sum = sum.saturating_add(micros);
}

/// The enclave's attester has produced a document (readiness, `/readyz`).
pub fn attested() {
    REGISTRY.attested.store(true, Ordering::Relaxed);
}

/// What happened to a client connection, for `cosigner_enclave_connections_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectionEvent {
    /// Accepted and given a thread.
    Accepted,
    /// Closed on accept: the cap was reached.
    RefusedCap,
    /// Closed on accept: no thread.
    RefusedNoThread,
    /// Closed: no TLS handshake in time.
    ClosedHandshakeTimeout,
    /// Closed: idle.
    ClosedIdle,
    /// Closed: TLS, socket or framing error.
    ClosedError,
}

/// Counts a connection event.
pub fn connection(event: ConnectionEvent) {
    let label = match event {
        ConnectionEvent::Accepted => "accepted",
        ConnectionEvent::RefusedCap => "refused_cap",
        ConnectionEvent::RefusedNoThread => "refused_no_thread",
        ConnectionEvent::ClosedHandshakeTimeout => "closed_handshake_timeout",
        ConnectionEvent::ClosedIdle => "closed_idle_timeout",
        ConnectionEvent::ClosedError => "closed_error",
    };
    count(EnclaveCounter::Connections, &[label], 1);
}

/// One more connection open (`delta` 1) or one fewer (-1).
pub fn connections_open(delta: i64) {
    if delta >= 0 {
        REGISTRY
            .connections_open
            .fetch_add(delta.unsigned_abs(), Ordering::Relaxed);
    } else {
        let _ = REGISTRY
            .connections_open
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                n.checked_sub(delta.unsigned_abs())
            });
    }
}

/// The kind label of `request`: for a signed request, the request inside it (what was asked).
pub fn request_kind(request: &Request) -> &'static str {
    match request {
        Request::Authorized { request, .. } | Request::Precommitted { request, .. } => {
            wire::decode::<Request>(request)
                .map(|inner| inner.name())
                .unwrap_or("Unreadable")
        }
        other => other.name(),
    }
}

/// The label of an error kind (`bad_request`, …).
pub fn error_label(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::BadRequest => "bad_request",
        ErrorKind::NotFound => "not_found",
        ErrorKind::Ceremony => "ceremony",
        ErrorKind::Integrity => "integrity",
        ErrorKind::Internal => "internal",
        ErrorKind::Busy => "busy",
        ErrorKind::Unauthorized => "unauthorized",
        _ => "other",
    }
}

/// Counts one answered request of kind `kind` (see [`request_kind`]) that took `elapsed`:
/// requests by outcome, refusals by reason, signatures by scheme, ceremonies completed.
pub fn request_done(kind: &'static str, response: &Response, elapsed: Duration) {
    observe(EnclaveHistogram::Request, &[kind], elapsed);
    let outcome = match response {
        Response::Error(e) => {
            let reason = error_label(e.kind);
            count(EnclaveCounter::Refusals, &[reason], 1);
            reason
        }
        _ => "ok",
    };
    count(EnclaveCounter::Requests, &[kind, outcome], 1);
    let signatures = |scheme, n: usize| {
        count(
            EnclaveCounter::Signatures,
            &[scheme],
            u64::try_from(n).unwrap_or(u64::MAX),
        );
    };
    match response {
        Response::Attested { .. } => attested(),
        Response::SignatureShare { .. } | Response::SignedNow { .. } => signatures("bip340", 1),
        Response::PsbtShares { shares, .. } | Response::SignedPsbtNow { shares, .. } => {
            signatures("bip340", shares.len())
        }
        Response::EthSigned { .. } => signatures("ecdsa", 1),
        Response::Error(_) => {}
        _ => {
            let ceremony = match kind {
                "DkgConfirm" => Some("dkg"),
                "RefreshFinalize" => Some("refresh"),
                "RecoverStart" => Some("recovery"),
                "RepairSigma" => Some("repair"),
                "Mailbox" => Some("dao"),
                _ => None,
            };
            if let Some(ceremony) = ceremony {
                count(EnclaveCounter::Ceremonies, &[ceremony], 1);
            }
        }
    }
}

/// Everything counted so far.
pub fn snapshot() -> MetricsSnapshot {
    let mut counters: Vec<CounterSample> = REGISTRY
        .counters
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .map(|((counter, labels), value)| CounterSample {
            counter: *counter,
            labels: labels.clone(),
            value: *value,
        })
        .collect();
    counters.push(CounterSample {
        counter: EnclaveCounter::LogsDropped,
        labels: Vec::new(),
        value: QUEUE.dropped_total.load(Ordering::Relaxed),
    });
    let histograms = REGISTRY
        .histograms
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .map(|((histogram, labels), (buckets, sum))| HistogramSample {
            histogram: *histogram,
            labels: labels.clone(),
            buckets: buckets.clone(),
            sum_micros: *sum,
        })
        .collect();
    MetricsSnapshot {
        attested: REGISTRY.attested.load(Ordering::Relaxed),
        connections_open: REGISTRY.connections_open.load(Ordering::Relaxed),
        counters,
        histograms,
    }
}

// ---------------------------------------------------------------------------------------------
// Timing decorators (`run.rs` wraps the service's store and anchor in them).
// ---------------------------------------------------------------------------------------------

/// A [`BlobStore`] whose calls are timed into `cosigner_enclave_store_seconds{op}`.
pub struct TimedStore<S>(pub S);

fn timed<T>(histogram: EnclaveHistogram, op: &'static str, f: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let out = f();
    observe(histogram, &[op], started.elapsed());
    out
}

impl<S: BlobStore> BlobStore for TimedStore<S> {
    fn put(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        timed(EnclaveHistogram::Store, "put", || self.0.put(key, value))
    }
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        timed(EnclaveHistogram::Store, "get", || self.0.get(key))
    }
    fn delete(&self, key: &str) -> Result<(), StoreError> {
        timed(EnclaveHistogram::Store, "delete", || self.0.delete(key))
    }
    fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        timed(EnclaveHistogram::Store, "list", || self.0.list(prefix))
    }
    fn put_many(&self, entries: &[(String, Vec<u8>)]) -> Result<(), StoreError> {
        timed(EnclaveHistogram::Store, "put_many", || {
            self.0.put_many(entries)
        })
    }
    fn discard(&self, keys: Vec<String>) {
        timed(EnclaveHistogram::Store, "discard", || self.0.discard(keys));
    }
    fn delete_many(&self, keys: &[String]) -> Result<(), StoreError> {
        timed(EnclaveHistogram::Store, "delete_many", || {
            self.0.delete_many(keys)
        })
    }
}

/// An [`Anchor`] whose calls are timed into `cosigner_enclave_anchor_seconds{op}`.
pub struct TimedAnchor(pub Box<dyn Anchor>);

impl Anchor for TimedAnchor {
    fn read(&self, label: &str) -> Result<Option<Versioned>, AnchorError> {
        timed(EnclaveHistogram::Anchor, "read", || self.0.read(label))
    }
    fn write(&self, label: &str, expected: Option<u64>, value: &[u8]) -> Result<u64, AnchorError> {
        timed(EnclaveHistogram::Anchor, "write", || {
            self.0.write(label, expected, value)
        })
    }
    fn carries_blobs(&self) -> bool {
        self.0.carries_blobs()
    }
    fn write_carrying(
        &self,
        label: &str,
        expected: Option<u64>,
        value: &[u8],
        blobs: Vec<(String, Vec<u8>)>,
    ) -> Result<u64, AnchorError> {
        timed(EnclaveHistogram::Anchor, "write", || {
            self.0.write_carrying(label, expected, value, blobs)
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Shipping.
// ---------------------------------------------------------------------------------------------

/// Starts the thread that ships events and snapshots to the parent at `store` as instance
/// `instance`. It first asks `attester` for one document, so that an enclave whose attester
/// works says so (readiness) before its first client.
pub fn start(
    store: Endpoint,
    instance: u32,
    attester: Arc<dyn Attester>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    INSTANCE.store(instance, Ordering::Relaxed);
    // On this thread, before the shipper starts: a local attester signs with the token, and a
    // thread inside the PKCS#11 module while the process exits on a start-up error meets the
    // module's static destructors (SoftHSM segfaults).
    let self_check = attester.attest(&AttestRequest {
        nonce: None,
        user_data: None,
        public_key: None,
    });
    match self_check {
        Ok(_) => attested(),
        Err(e) => tracing::error!(
            attester = attester.kind(),
            error = %e,
            "the attester produced no document: this instance is not ready"
        ),
    }
    std::thread::Builder::new()
        .name("enclave-telemetry".into())
        .spawn(move || Shipper::new(store, instance).run())
}

/// The background thread's state.
struct Shipper {
    parent: RemoteStore,
    instance: u32,
    /// When a call last failed: no other attempt for a second.
    down_since: Option<Instant>,
    /// When a refusal was last said locally: once a minute at most (an older parent refuses
    /// every snapshot).
    refusal_said: Option<Instant>,
}

impl Shipper {
    fn new(store: Endpoint, instance: u32) -> Self {
        Self {
            parent: RemoteStore::new(store),
            instance,
            down_since: None,
            refusal_said: None,
        }
    }

    fn run(mut self) -> ! {
        let mut next_snapshot = Instant::now();
        loop {
            let records = QUEUE.take(MAX_LOG_RECORDS, next_snapshot);
            if !records.is_empty() {
                let dropped = QUEUE.dropped.swap(0, Ordering::Relaxed);
                let request = StoreRequest::Log {
                    instance: self.instance,
                    records,
                    dropped,
                };
                if let Err(request) = self.send(request)
                    && let StoreRequest::Log { records, .. } = *request
                {
                    write_local(self.instance, &records);
                }
            }
            if Instant::now() >= next_snapshot {
                next_snapshot = Instant::now() + SNAPSHOT_INTERVAL;
                let _ = self.send(StoreRequest::Metrics {
                    instance: self.instance,
                    snapshot: snapshot(),
                });
            }
        }
    }

    /// Sends one request; gives it back if the parent could not be asked or refused it.
    fn send(&mut self, request: StoreRequest) -> Result<(), Box<StoreRequest>> {
        if self
            .down_since
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return Err(Box::new(request));
        }
        match self.parent.call(&request) {
            Ok(StoreResponse::Done) => {
                self.down_since = None;
                Ok(())
            }
            Ok(StoreResponse::Error(e)) => {
                // The parent refused it (a limit, or a parent that takes no telemetry): said
                // locally, once a minute at most.
                if self
                    .refusal_said
                    .is_some_and(|t| t.elapsed() < Duration::from_secs(60))
                {
                    return Err(Box::new(request));
                }
                self.refusal_said = Some(Instant::now());
                write_local(
                    self.instance,
                    &[LogRecord {
                        time_ms: now_ms(),
                        level: LogLevel::Warn,
                        target: "cosigner_enclave::telemetry".into(),
                        message: cut(
                            &format!("the parent refused telemetry: {}", e.message),
                            MAX_LOG_MESSAGE,
                        ),
                        fields: Vec::new(),
                    }],
                );
                Err(Box::new(request))
            }
            Ok(_) | Err(_) => {
                self.down_since = Some(Instant::now());
                Err(Box::new(request))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use cosigner_protocol::wire::WireError;

    use super::*;

    #[test]
    fn names_and_texts_are_cut_to_what_the_parent_accepts() {
        assert_eq!(field_name("wallet"), "wallet");
        assert_eq!(field_name("message_kind"), "message_kind");
        assert_eq!(field_name("source"), "f_source");
        assert_eq!(field_name("Err-Kind"), "err_kind");
        assert_eq!(field_name("1x"), "f_1x");
        assert!(field_name(&"a".repeat(100)).len() <= MAX_LOG_FIELD_NAME);
        assert_eq!(
            target("cosigner_enclave::server"),
            "cosigner_enclave::server"
        );
        assert_eq!(target("Some-Crate"), "some_crate");
        assert_eq!(cut("ééé", 3), "é");
        assert_eq!(cut("abc", 3), "abc");
    }

    #[test]
    fn answered_requests_count_by_kind_outcome_scheme_and_ceremony() {
        let before = snapshot();
        let value = |s: &MetricsSnapshot, c: EnclaveCounter, labels: &[&str]| {
            s.counters
                .iter()
                .find(|x| x.counter == c && x.labels == labels)
                .map_or(0, |x| x.value)
        };
        request_done(
            "SignShare",
            &Response::SignatureShare {
                share: Default::default(),
            },
            Duration::from_millis(2),
        );
        request_done(
            "SignShare",
            &Response::Error(WireError::new(ErrorKind::Unauthorized, "no")),
            Duration::from_millis(1),
        );
        request_done("DkgConfirm", &Response::Done, Duration::from_millis(30));
        let after = snapshot();
        let delta = |c, labels: &[&str]| value(&after, c, labels) - value(&before, c, labels);
        assert_eq!(delta(EnclaveCounter::Requests, &["SignShare", "ok"]), 1);
        assert_eq!(
            delta(EnclaveCounter::Requests, &["SignShare", "unauthorized"]),
            1
        );
        assert_eq!(delta(EnclaveCounter::Refusals, &["unauthorized"]), 1);
        assert_eq!(delta(EnclaveCounter::Signatures, &["bip340"]), 1);
        assert_eq!(delta(EnclaveCounter::Ceremonies, &["dkg"]), 1);
        let h = after
            .histograms
            .iter()
            .find(|h| h.histogram == EnclaveHistogram::Request && h.labels == ["SignShare"])
            .unwrap();
        assert_eq!(h.buckets.len(), LATENCY_BUCKETS_MICROS.len() + 1);
        assert!(h.buckets.iter().sum::<u64>() >= 2);
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_blocking() {
        let record = LogRecord {
            time_ms: 0,
            level: LogLevel::Info,
            target: "t".into(),
            message: "m".into(),
            fields: Vec::new(),
        };
        let dropped = QUEUE.dropped_total.load(Ordering::Relaxed);
        let started = Instant::now();
        for _ in 0..QUEUE_CAPACITY + 10 {
            QUEUE.push(record.clone());
        }
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(QUEUE.dropped_total.load(Ordering::Relaxed) >= dropped + 10);
        let taken = QUEUE.take(MAX_LOG_RECORDS, Instant::now());
        assert_eq!(taken.len(), MAX_LOG_RECORDS);
        QUEUE.lock().clear();
    }
}
