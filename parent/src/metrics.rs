//! What the parent counts, what it keeps of the enclaves' snapshots, and the Prometheus text
//! exposition (format 0.0.4) it serves on `/metrics` ([`crate::http`]).
//!
//! Two kinds of numbers (docs/architecture.md, "Logs and metrics"):
//!
//! * the parent's own: client connections (accepted, open, refused or closed by a limit, by
//!   reason), relayed bytes, its store's latency per operation (its own database timing), mailbox
//!   connections, the enclaves' log records it wrote or dropped, and `cosigner_instances_up`;
//! * the enclaves': the parent relays TLS it cannot read, so requests, signatures, ceremonies,
//!   refusals and their latencies are known only inside the enclave. Each enclave instance sends a
//!   [`MetricsSnapshot`] about once a second over its telemetry connection
//!   ([`crate::store_server`]); the parent keeps the latest per instance (checked by
//!   [`check_snapshot`]) and writes it out with an `instance` label.
//!
//! The exposition is written by hand: three metric types (counter, gauge, histogram), and most
//! series are an enclave's snapshot replaced whole every second, which a client library's
//! registry of live metric handles (`prometheus-client`) does not model; a page of code here
//! avoids a dependency tree in the host binary. The format is Prometheus' text format 0.0.4
//! (`# HELP`, `# TYPE`, `_bucket{le="…"}`, `_sum`, `_count`).
//!
//! Readiness ([`Metrics::readiness`]): ready when at least one instance has said it is attested
//! (its attester produced a document) in a snapshot younger than [`FRESH`], over a telemetry
//! connection still open, and not marked down by [`Metrics::set_instance_up`].

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use cosigner_protocol::wire::{
    EnclaveCounter, EnclaveHistogram, LATENCY_BUCKETS_MICROS, MAX_LABEL_VALUE, MAX_METRIC_SERIES,
    MetricsSnapshot,
};

/// A snapshot older than this no longer counts for readiness or `cosigner_instances_up`: the
/// enclave sends one a second, so three missed mean it (or its store channel) is gone.
pub const FRESH: Duration = Duration::from_secs(3);

/// Why an enclave's snapshot was refused: the peer on the store socket is untrusted input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// More series than [`MAX_METRIC_SERIES`].
    #[error("metrics snapshot of {count} series, over the {max} allowed")]
    TooManySeries {
        /// Series sent.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A series with another number of label values than its metric has label names.
    #[error("{metric}: {got} label values for {want} label names")]
    LabelCount {
        /// The metric.
        metric: &'static str,
        /// Values sent.
        got: usize,
        /// Names the metric has.
        want: usize,
    },
    /// A label value that is empty, too long or not `[A-Za-z0-9_]`.
    #[error("{metric}: label value of {len} bytes is not 1..={max} of [A-Za-z0-9_]")]
    LabelValue {
        /// The metric.
        metric: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Two series of one metric with the same label values.
    #[error("{metric}: the same label values twice")]
    DuplicateSeries {
        /// The metric.
        metric: &'static str,
    },
    /// A histogram without one count per bucket.
    #[error("{metric}: {got} bucket counts, expected {want}")]
    BucketCount {
        /// The metric.
        metric: &'static str,
        /// Counts sent.
        got: usize,
        /// Buckets there are.
        want: usize,
    },
    /// A histogram whose bucket counts add up past `u64`.
    #[error("{metric}: bucket counts overflow")]
    BucketOverflow {
        /// The metric.
        metric: &'static str,
    },
}

/// Checks every field of an enclave's snapshot (module docs): bounded series, label values of a
/// fixed alphabet and length (they go into the exposition), one count per bucket.
pub fn check_snapshot(snapshot: &MetricsSnapshot) -> Result<(), SnapshotError> {
    let count = snapshot
        .counters
        .len()
        .saturating_add(snapshot.histograms.len());
    if count > MAX_METRIC_SERIES {
        return Err(SnapshotError::TooManySeries {
            count,
            max: MAX_METRIC_SERIES,
        });
    }
    let mut seen = std::collections::BTreeSet::new();
    for c in &snapshot.counters {
        let metric = counter_name(c.counter);
        check_labels(metric, c.counter.label_names(), &c.labels)?;
        if !seen.insert((metric, c.labels.clone())) {
            return Err(SnapshotError::DuplicateSeries { metric });
        }
    }
    for h in &snapshot.histograms {
        let metric = histogram_name(h.histogram);
        check_labels(metric, h.histogram.label_names(), &h.labels)?;
        let want = LATENCY_BUCKETS_MICROS.len() + 1;
        if h.buckets.len() != want {
            return Err(SnapshotError::BucketCount {
                metric,
                got: h.buckets.len(),
                want,
            });
        }
        if h.buckets
            .iter()
            .try_fold(0u64, |sum, n| sum.checked_add(*n))
            .is_none()
        {
            return Err(SnapshotError::BucketOverflow { metric });
        }
        if !seen.insert((metric, h.labels.clone())) {
            return Err(SnapshotError::DuplicateSeries { metric });
        }
    }
    Ok(())
}

fn check_labels(
    metric: &'static str,
    names: &[&str],
    values: &[String],
) -> Result<(), SnapshotError> {
    if values.len() != names.len() {
        return Err(SnapshotError::LabelCount {
            metric,
            got: values.len(),
            want: names.len(),
        });
    }
    for v in values {
        if !(1..=MAX_LABEL_VALUE).contains(&v.len())
            || !v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(SnapshotError::LabelValue {
                metric,
                len: v.len(),
                max: MAX_LABEL_VALUE,
            });
        }
    }
    Ok(())
}

/// The exposed name of an enclave counter.
fn counter_name(c: EnclaveCounter) -> &'static str {
    match c {
        EnclaveCounter::Requests => "cosigner_enclave_requests_total",
        EnclaveCounter::Signatures => "cosigner_enclave_signatures_total",
        EnclaveCounter::Ceremonies => "cosigner_enclave_ceremonies_total",
        EnclaveCounter::Refusals => "cosigner_enclave_refusals_total",
        EnclaveCounter::Connections => "cosigner_enclave_connections_total",
        EnclaveCounter::LogsDropped => "cosigner_enclave_log_events_dropped_total",
    }
}

fn counter_help(c: EnclaveCounter) -> &'static str {
    match c {
        EnclaveCounter::Requests => "Requests the enclave answered, by request kind and outcome.",
        EnclaveCounter::Signatures => "Signatures the enclave made, by scheme.",
        EnclaveCounter::Ceremonies => "Ceremonies the enclave completed, by ceremony.",
        EnclaveCounter::Refusals => "Requests the enclave refused, by reason (the error kind).",
        EnclaveCounter::Connections => "Client connections at the enclave, by event.",
        EnclaveCounter::LogsDropped => "Log events the enclave dropped (its queue was full).",
    }
}

/// The exposed name of an enclave histogram.
fn histogram_name(h: EnclaveHistogram) -> &'static str {
    match h {
        EnclaveHistogram::Request => "cosigner_enclave_request_seconds",
        EnclaveHistogram::Store => "cosigner_enclave_store_seconds",
        EnclaveHistogram::Anchor => "cosigner_enclave_anchor_seconds",
    }
}

fn histogram_help(h: EnclaveHistogram) -> &'static str {
    match h {
        EnclaveHistogram::Request => "Time the enclave took to answer a request, by kind.",
        EnclaveHistogram::Store => {
            "Time of the enclave's calls to the parent's store (round trip), by operation."
        }
        EnclaveHistogram::Anchor => "Time of the enclave's rollback-anchor calls, by operation.",
    }
}

/// Observations over [`LATENCY_BUCKETS_MICROS`]: one count per bucket (not cumulative), the last
/// over the largest bound.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Histogram {
    buckets: Vec<u64>,
    sum_micros: u64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&mut self, elapsed: Duration) {
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        if self.buckets.is_empty() {
            self.buckets = vec![0; LATENCY_BUCKETS_MICROS.len() + 1];
        }
        let at = LATENCY_BUCKETS_MICROS
            .iter()
            .position(|bound| micros <= *bound)
            .unwrap_or(LATENCY_BUCKETS_MICROS.len());
        if let Some(n) = self.buckets.get_mut(at) {
            *n = n.saturating_add(1);
        }
        self.sum_micros = self.sum_micros.saturating_add(micros);
    }
}

/// What a client-listener limit did to a connection (`crate::server`'s limits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientLimited {
    /// Refused on accept: the source had its quota open.
    SourceQuota,
    /// Refused on accept: the listener had its maximum open.
    Cap,
    /// Closed: no first bytes within the handshake timeout.
    Handshake,
    /// Closed: idle for the idle timeout.
    Idle,
}

/// What happened to the enclave's log records the parent received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LogOutcome {
    /// Written to the parent's log.
    Written,
    /// Below the level `COSIGNER_LOG` lets through.
    Filtered,
    /// Dropped by the parent's per-connection rate limit.
    RateLimited,
    /// Dropped by the enclave before sending (its queue was full), as it reported.
    DroppedByEnclave,
    /// In a batch the parent refused (a field over its limit).
    Refused,
}

/// What the parent keeps of one enclave instance.
#[derive(Debug, Default)]
struct Instance {
    snapshot: Option<(MetricsSnapshot, Instant)>,
    /// Telemetry connections of this instance open now.
    connections: usize,
    /// Set by the enclave pool ([`Metrics::set_instance_up`]); `None`: not managed by a pool.
    up: Option<bool>,
    logs_written: u64,
    logs_filtered: u64,
    logs_rate_limited: u64,
    logs_dropped_by_enclave: u64,
    logs_refused: u64,
}

impl Instance {
    /// Up: a fresh snapshot over an open connection, not marked down.
    fn up(&self, now: Instant) -> bool {
        self.up != Some(false)
            && self.connections > 0
            && self
                .snapshot
                .as_ref()
                .is_some_and(|(_, at)| now.saturating_duration_since(*at) <= FRESH)
    }

    fn attested(&self) -> bool {
        self.snapshot.as_ref().is_some_and(|(s, _)| s.attested)
    }
}

/// The parent's metrics (module docs). Shared by every thread of a running parent.
#[derive(Debug)]
pub struct Metrics {
    accepted: AtomicU64,
    open: AtomicU64,
    refused_quota: AtomicU64,
    refused_cap: AtomicU64,
    closed_handshake: AtomicU64,
    closed_idle: AtomicU64,
    bytes_to_enclave: AtomicU64,
    bytes_to_client: AtomicU64,
    mailbox_connections: AtomicU64,
    mailbox_requests: AtomicU64,
    telemetry_refused: AtomicU64,
    store: Mutex<BTreeMap<&'static str, Histogram>>,
    instances: Mutex<BTreeMap<u32, Instance>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn bump(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

impl Metrics {
    /// Everything at zero, no instance known.
    pub fn new() -> Self {
        Self {
            accepted: AtomicU64::new(0),
            open: AtomicU64::new(0),
            refused_quota: AtomicU64::new(0),
            refused_cap: AtomicU64::new(0),
            closed_handshake: AtomicU64::new(0),
            closed_idle: AtomicU64::new(0),
            bytes_to_enclave: AtomicU64::new(0),
            bytes_to_client: AtomicU64::new(0),
            mailbox_connections: AtomicU64::new(0),
            mailbox_requests: AtomicU64::new(0),
            telemetry_refused: AtomicU64::new(0),
            store: Mutex::new(BTreeMap::new()),
            instances: Mutex::new(BTreeMap::new()),
        }
    }

    fn instances(&self) -> MutexGuard<'_, BTreeMap<u32, Instance>> {
        self.instances
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The enclave pool's say on instance `instance`: `false` keeps it out of readiness and
    /// `cosigner_instances_up` whatever its snapshots say (it is being restarted, or failed its
    /// checks); `true` lets its snapshots decide again.
    pub fn set_instance_up(&self, instance: u32, up: bool) {
        self.instances().entry(instance).or_default().up = Some(up);
    }

    /// A client connection was accepted (and is open until [`Metrics::client_closed`]).
    pub fn client_accepted(&self) {
        bump(&self.accepted, 1);
        bump(&self.open, 1);
    }

    /// A client connection accepted earlier is closed.
    pub fn client_closed(&self) {
        let _ = self
            .open
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    /// A limit refused or closed a client connection.
    pub fn client_limited(&self, what: ClientLimited) {
        bump(
            match what {
                ClientLimited::SourceQuota => &self.refused_quota,
                ClientLimited::Cap => &self.refused_cap,
                ClientLimited::Handshake => &self.closed_handshake,
                ClientLimited::Idle => &self.closed_idle,
            },
            1,
        );
    }

    /// Bytes relayed from a client to the enclave.
    pub fn relayed_to_enclave(&self, n: usize) {
        bump(&self.bytes_to_enclave, u64::try_from(n).unwrap_or(u64::MAX));
    }

    /// Bytes relayed from the enclave to a client.
    pub fn relayed_to_client(&self, n: usize) {
        bump(&self.bytes_to_client, u64::try_from(n).unwrap_or(u64::MAX));
    }

    /// A mailbox connection was accepted.
    pub fn mailbox_connection(&self) {
        bump(&self.mailbox_connections, 1);
    }

    /// A mailbox request was answered (for the mailbox's server to call).
    pub fn mailbox_request(&self) {
        bump(&self.mailbox_requests, 1);
    }

    /// One operation of the parent's own store took `elapsed`.
    pub fn store_op(&self, op: &'static str, elapsed: Duration) {
        self.store
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(op)
            .or_default()
            .observe(elapsed);
    }

    /// A telemetry connection of `instance` opened.
    pub fn telemetry_connected(&self, instance: u32) {
        let mut instances = self.instances();
        let i = instances.entry(instance).or_default();
        i.connections = i.connections.saturating_add(1);
    }

    /// A telemetry connection of `instance` closed: it is down until it connects again.
    pub fn telemetry_disconnected(&self, instance: u32) {
        if let Some(i) = self.instances().get_mut(&instance) {
            i.connections = i.connections.saturating_sub(1);
        }
    }

    /// A telemetry message the parent refused (a field over its limit, an unknown value).
    pub fn telemetry_refused(&self) {
        bump(&self.telemetry_refused, 1);
    }

    /// Keeps `snapshot`, checked by [`check_snapshot`], as instance `instance`'s latest.
    pub fn enclave_snapshot(&self, instance: u32, snapshot: MetricsSnapshot) {
        self.instances().entry(instance).or_default().snapshot = Some((snapshot, Instant::now()));
    }

    /// Counts `n` of instance `instance`'s log records by what became of them.
    pub fn enclave_logs(&self, instance: u32, outcome: LogOutcome, n: u64) {
        let mut instances = self.instances();
        let i = instances.entry(instance).or_default();
        let counter = match outcome {
            LogOutcome::Written => &mut i.logs_written,
            LogOutcome::Filtered => &mut i.logs_filtered,
            LogOutcome::RateLimited => &mut i.logs_rate_limited,
            LogOutcome::DroppedByEnclave => &mut i.logs_dropped_by_enclave,
            LogOutcome::Refused => &mut i.logs_refused,
        };
        *counter = counter.saturating_add(n);
    }

    /// Instances up now (module docs).
    pub fn instances_up(&self) -> usize {
        let now = Instant::now();
        self.instances().values().filter(|i| i.up(now)).count()
    }

    /// `Ok` when ready (module docs), else why not, in one line.
    pub fn readiness(&self) -> Result<(), String> {
        let now = Instant::now();
        let instances = self.instances();
        if instances.values().any(|i| i.up(now) && i.attested()) {
            return Ok(());
        }
        Err(if instances.is_empty() {
            "no enclave instance has connected its telemetry".into()
        } else if !instances.values().any(|i| i.up(now)) {
            format!(
                "no enclave instance is up (no metrics snapshot within {} s over an open \
                 connection)",
                FRESH.as_secs()
            )
        } else {
            "no enclave instance that is up has attested yet".into()
        })
    }

    /// The Prometheus text exposition (format 0.0.4) of everything.
    pub fn render(&self) -> String {
        let mut out = Exposition::default();
        let now = Instant::now();
        let counter = |out: &mut Exposition, name, help, value: &AtomicU64| {
            out.family(name, help, "counter");
            out.sample(name, &[], value.load(Ordering::Relaxed));
        };
        counter(
            &mut out,
            "cosigner_client_connections_accepted_total",
            "Client connections accepted on the client listener.",
            &self.accepted,
        );
        out.family(
            "cosigner_client_connections_open",
            "Client connections open now.",
            "gauge",
        );
        out.sample(
            "cosigner_client_connections_open",
            &[],
            self.open.load(Ordering::Relaxed),
        );
        out.family(
            "cosigner_client_connections_refused_total",
            "Client connections refused on accept, by reason.",
            "counter",
        );
        for (reason, n) in [
            ("source_quota", &self.refused_quota),
            ("cap", &self.refused_cap),
        ] {
            out.sample(
                "cosigner_client_connections_refused_total",
                &[("reason", reason)],
                n.load(Ordering::Relaxed),
            );
        }
        out.family(
            "cosigner_client_connections_closed_by_limit_total",
            "Client connections closed by a timeout, by reason.",
            "counter",
        );
        for (reason, n) in [
            ("handshake_timeout", &self.closed_handshake),
            ("idle_timeout", &self.closed_idle),
        ] {
            out.sample(
                "cosigner_client_connections_closed_by_limit_total",
                &[("reason", reason)],
                n.load(Ordering::Relaxed),
            );
        }
        out.family(
            "cosigner_relay_bytes_total",
            "Bytes relayed between clients and the enclave, by direction.",
            "counter",
        );
        for (direction, n) in [
            ("to_enclave", &self.bytes_to_enclave),
            ("to_client", &self.bytes_to_client),
        ] {
            out.sample(
                "cosigner_relay_bytes_total",
                &[("direction", direction)],
                n.load(Ordering::Relaxed),
            );
        }
        counter(
            &mut out,
            "cosigner_mailbox_connections_total",
            "Connections accepted on the members' mailbox.",
            &self.mailbox_connections,
        );
        counter(
            &mut out,
            "cosigner_mailbox_requests_total",
            "Requests the members' mailbox answered.",
            &self.mailbox_requests,
        );
        counter(
            &mut out,
            "cosigner_telemetry_refused_total",
            "Enclave log batches and metrics snapshots refused (a field over its limit).",
            &self.telemetry_refused,
        );
        {
            let store = self.store.lock().unwrap_or_else(PoisonError::into_inner);
            let name = "cosigner_store_seconds";
            out.family(
                name,
                "Time of the parent's own store operations (its database), by operation.",
                "histogram",
            );
            for (op, h) in store.iter() {
                out.histogram(name, &[("op", op)], &h.buckets, h.sum_micros);
            }
        }
        let instances = self.instances();
        out.family(
            "cosigner_instances_up",
            "Enclave instances up: a metrics snapshot within 3 s over an open connection.",
            "gauge",
        );
        out.sample(
            "cosigner_instances_up",
            &[],
            u64::try_from(instances.values().filter(|i| i.up(now)).count()).unwrap_or(u64::MAX),
        );
        self.render_instances(&mut out, &instances, now);
        out.text
    }

    fn render_instances(
        &self,
        out: &mut Exposition,
        instances: &BTreeMap<u32, Instance>,
        now: Instant,
    ) {
        let ids: Vec<(String, &Instance)> =
            instances.iter().map(|(k, v)| (k.to_string(), v)).collect();
        out.family(
            "cosigner_instance_up",
            "Whether the enclave instance is up (1) or not (0).",
            "gauge",
        );
        for (id, i) in &ids {
            out.sample(
                "cosigner_instance_up",
                &[("instance", id)],
                u64::from(i.up(now)),
            );
        }
        out.family(
            "cosigner_enclave_attested",
            "Whether the instance's attester has produced a document (1) or not (0).",
            "gauge",
        );
        for (id, i) in &ids {
            out.sample(
                "cosigner_enclave_attested",
                &[("instance", id)],
                u64::from(i.attested()),
            );
        }
        out.family(
            "cosigner_enclave_snapshot_age_seconds",
            "Seconds since the instance's latest metrics snapshot.",
            "gauge",
        );
        for (id, i) in &ids {
            if let Some((_, at)) = &i.snapshot {
                out.sample(
                    "cosigner_enclave_snapshot_age_seconds",
                    &[("instance", id)],
                    now.saturating_duration_since(*at).as_secs(),
                );
            }
        }
        out.family(
            "cosigner_enclave_connections_open",
            "Client connections open at the enclave instance.",
            "gauge",
        );
        for (id, i) in &ids {
            if let Some((s, _)) = &i.snapshot {
                out.sample(
                    "cosigner_enclave_connections_open",
                    &[("instance", id)],
                    s.connections_open,
                );
            }
        }
        out.family(
            "cosigner_enclave_log_records_total",
            "The enclave's log records at the parent, by what became of them.",
            "counter",
        );
        for (id, i) in &ids {
            for (outcome, n) in [
                ("written", i.logs_written),
                ("filtered", i.logs_filtered),
                ("rate_limited", i.logs_rate_limited),
                ("dropped_by_enclave", i.logs_dropped_by_enclave),
                ("refused", i.logs_refused),
            ] {
                out.sample(
                    "cosigner_enclave_log_records_total",
                    &[("instance", id), ("outcome", outcome)],
                    n,
                );
            }
        }
        // The snapshots' series, grouped by metric (one HELP/TYPE each).
        let mut counters: BTreeMap<EnclaveCounter, Vec<Series<'_, u64>>> = BTreeMap::new();
        let mut histograms: BTreeMap<EnclaveHistogram, Vec<Series<'_, _>>> = BTreeMap::new();
        for (id, i) in &ids {
            let Some((s, _)) = &i.snapshot else { continue };
            for c in &s.counters {
                let labels = c
                    .counter
                    .label_names()
                    .iter()
                    .copied()
                    .zip(c.labels.iter().map(String::as_str))
                    .collect();
                counters
                    .entry(c.counter)
                    .or_default()
                    .push((id, labels, c.value));
            }
            for h in &s.histograms {
                let labels = h
                    .histogram
                    .label_names()
                    .iter()
                    .copied()
                    .zip(h.labels.iter().map(String::as_str))
                    .collect();
                histograms
                    .entry(h.histogram)
                    .or_default()
                    .push((id, labels, h));
            }
        }
        for (counter, series) in counters {
            let name = counter_name(counter);
            out.family(name, counter_help(counter), "counter");
            for (id, labels, value) in series {
                let mut all = vec![("instance", id)];
                all.extend(labels);
                out.sample(name, &all, value);
            }
        }
        for (histogram, series) in histograms {
            let name = histogram_name(histogram);
            out.family(name, histogram_help(histogram), "histogram");
            for (id, labels, h) in series {
                let mut all = vec![("instance", id)];
                all.extend(labels);
                out.histogram(name, &all, &h.buckets, h.sum_micros);
            }
        }
    }
}

/// One series of an instance's snapshot: (instance, labels, value).
type Series<'a, V> = (&'a str, Vec<(&'a str, &'a str)>, V);

/// The text being written.
#[derive(Default)]
struct Exposition {
    text: String,
}

impl Exposition {
    fn family(&mut self, name: &str, help: &str, kind: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: u64) {
        self.text.push_str(name);
        self.labels(labels, None);
        let _ = writeln!(self.text, " {value}");
    }

    fn labels(&mut self, labels: &[(&str, &str)], le: Option<&str>) {
        let all = labels.iter().copied().chain(le.map(|le| ("le", le)));
        let mut first = true;
        for (k, v) in all {
            self.text.push(if first { '{' } else { ',' });
            first = false;
            let _ = write!(self.text, "{k}=\"{}\"", escape(v));
        }
        if !first {
            self.text.push('}');
        }
    }

    /// `_bucket` (cumulative, `le` in seconds, then `+Inf`), `_sum` (seconds), `_count`.
    fn histogram(&mut self, name: &str, labels: &[(&str, &str)], buckets: &[u64], sum: u64) {
        let mut cumulative = 0u64;
        let bounds = LATENCY_BUCKETS_MICROS
            .iter()
            .map(|b| seconds(*b))
            .chain(std::iter::once("+Inf".to_owned()));
        for (i, le) in bounds.enumerate() {
            cumulative = cumulative.saturating_add(buckets.get(i).copied().unwrap_or(0));
            let _ = write!(self.text, "{name}_bucket");
            self.labels(labels, Some(&le));
            let _ = writeln!(self.text, " {cumulative}");
        }
        let _ = write!(self.text, "{name}_sum");
        self.labels(labels, None);
        let _ = writeln!(self.text, " {}", seconds(sum));
        let _ = write!(self.text, "{name}_count");
        self.labels(labels, None);
        let _ = writeln!(self.text, " {cumulative}");
    }
}

/// Microseconds as seconds in decimal, exactly (`2500` → `0.0025`).
fn seconds(micros: u64) -> String {
    let whole = micros / 1_000_000;
    let frac = micros % 1_000_000;
    if frac == 0 {
        return whole.to_string();
    }
    let digits = format!("{frac:06}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

/// A label value as the text format wants it: backslash, double quote and newline escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use cosigner_protocol::wire::{CounterSample, HistogramSample};

    use super::*;

    fn snapshot() -> MetricsSnapshot {
        MetricsSnapshot {
            attested: true,
            connections_open: 1,
            counters: vec![CounterSample {
                counter: EnclaveCounter::Signatures,
                labels: vec!["bip340".into()],
                value: 3,
            }],
            histograms: vec![HistogramSample {
                histogram: EnclaveHistogram::Request,
                labels: vec!["SignShare".into()],
                buckets: {
                    let mut b = vec![0; LATENCY_BUCKETS_MICROS.len() + 1];
                    b[1] = 2;
                    b[14] = 1;
                    b
                },
                sum_micros: 12_001_500,
            }],
        }
    }

    #[test]
    fn the_exposition_has_help_type_cumulative_buckets_sum_and_count() {
        let m = Metrics::new();
        m.client_accepted();
        m.client_limited(ClientLimited::Cap);
        m.store_op("get", Duration::from_micros(700));
        m.telemetry_connected(4);
        m.enclave_snapshot(4, snapshot());
        let text = m.render();
        for line in [
            "# HELP cosigner_client_connections_accepted_total Client connections accepted on the \
             client listener.",
            "# TYPE cosigner_client_connections_accepted_total counter",
            "cosigner_client_connections_accepted_total 1",
            "cosigner_client_connections_refused_total{reason=\"cap\"} 1",
            "# TYPE cosigner_store_seconds histogram",
            "cosigner_store_seconds_bucket{op=\"get\",le=\"0.0005\"} 0",
            "cosigner_store_seconds_bucket{op=\"get\",le=\"0.001\"} 1",
            "cosigner_store_seconds_bucket{op=\"get\",le=\"+Inf\"} 1",
            "cosigner_store_seconds_sum{op=\"get\"} 0.0007",
            "cosigner_store_seconds_count{op=\"get\"} 1",
            "cosigner_instances_up 1",
            "cosigner_instance_up{instance=\"4\"} 1",
            "cosigner_enclave_signatures_total{instance=\"4\",scheme=\"bip340\"} 3",
            "# TYPE cosigner_enclave_request_seconds histogram",
            "cosigner_enclave_request_seconds_bucket{instance=\"4\",kind=\"SignShare\",le=\"0.001\"} 2",
            "cosigner_enclave_request_seconds_bucket{instance=\"4\",kind=\"SignShare\",le=\"10\"} 2",
            "cosigner_enclave_request_seconds_bucket{instance=\"4\",kind=\"SignShare\",le=\"+Inf\"} 3",
            "cosigner_enclave_request_seconds_sum{instance=\"4\",kind=\"SignShare\"} 12.0015",
            "cosigner_enclave_request_seconds_count{instance=\"4\",kind=\"SignShare\"} 3",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        // Every sample line is `name{labels} value` of a family declared before it.
        let mut declared = std::collections::HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                declared.insert(rest.split(' ').next().unwrap().to_owned());
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let name = line.split(['{', ' ']).next().unwrap();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|f| declared.contains(*f)))
                .unwrap_or(name);
            assert!(declared.contains(family), "{line}");
            assert!(
                line.rsplit(' ').next().unwrap().parse::<f64>().is_ok(),
                "{line}"
            );
        }
    }

    #[test]
    fn readiness_needs_an_attested_instance_with_a_fresh_snapshot_over_an_open_connection() {
        let m = Metrics::new();
        assert!(m.readiness().is_err());
        m.telemetry_connected(0);
        assert!(m.readiness().is_err());
        let mut s = snapshot();
        s.attested = false;
        m.enclave_snapshot(0, s);
        assert!(m.readiness().unwrap_err().contains("attested"));
        m.enclave_snapshot(0, snapshot());
        assert_eq!(m.readiness(), Ok(()));
        assert_eq!(m.instances_up(), 1);
        // The pool says it is down: not ready whatever it sent.
        m.set_instance_up(0, false);
        assert!(m.readiness().is_err());
        m.set_instance_up(0, true);
        assert_eq!(m.readiness(), Ok(()));
        // Its connection closed: down at once.
        m.telemetry_disconnected(0);
        assert!(m.readiness().is_err());
        assert_eq!(m.instances_up(), 0);
    }

    #[test]
    fn snapshots_out_of_bounds_are_refused_by_kind() {
        let ok = snapshot();
        assert_eq!(check_snapshot(&ok), Ok(()));
        let mut s = ok.clone();
        s.counters[0].labels = vec![];
        assert!(matches!(
            check_snapshot(&s),
            Err(SnapshotError::LabelCount {
                got: 0,
                want: 1,
                ..
            })
        ));
        for bad in ["", "a b", "x\"y", "é", &"a".repeat(MAX_LABEL_VALUE + 1)] {
            let mut s = ok.clone();
            s.counters[0].labels = vec![bad.into()];
            assert!(
                matches!(check_snapshot(&s), Err(SnapshotError::LabelValue { .. })),
                "{bad:?}"
            );
        }
        let mut s = ok.clone();
        s.counters.push(s.counters[0].clone());
        assert!(matches!(
            check_snapshot(&s),
            Err(SnapshotError::DuplicateSeries { .. })
        ));
        let mut s = ok.clone();
        s.histograms[0].buckets.pop();
        assert!(matches!(
            check_snapshot(&s),
            Err(SnapshotError::BucketCount { .. })
        ));
        let mut s = ok.clone();
        s.histograms[0].buckets[0] = u64::MAX;
        assert!(matches!(
            check_snapshot(&s),
            Err(SnapshotError::BucketOverflow { .. })
        ));
        let mut s = ok;
        s.counters = (0..=MAX_METRIC_SERIES)
            .map(|i| CounterSample {
                counter: EnclaveCounter::Requests,
                labels: vec![format!("k{i}"), "ok".into()],
                value: 1,
            })
            .collect();
        assert!(matches!(
            check_snapshot(&s),
            Err(SnapshotError::TooManySeries { .. })
        ));
    }

    #[test]
    fn seconds_are_exact_decimals() {
        assert_eq!(seconds(500), "0.0005");
        assert_eq!(seconds(2_500_000), "2.5");
        assert_eq!(seconds(10_000_000), "10");
        assert_eq!(seconds(0), "0");
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
