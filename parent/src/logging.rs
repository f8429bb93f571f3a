//! The parent's log: structured events (`tracing`) as JSON lines on stderr, or text for people;
//! and the enclave's events, received over its telemetry connection, written as the parent's own
//! lines with `"source":"enclave"` and the instance (docs/architecture.md, "Logs and metrics").
//!
//! Configuration: `--log-format json|text` (or `COSIGNER_LOG_FORMAT`), JSON by default; the filter
//! is `COSIGNER_LOG`, in `RUST_LOG`'s syntax (`info` by default, e.g. `debug` or
//! `info,cosigner_parent::mailbox=debug`). The filter applies to the enclave's events too, by
//! level, under the target `enclave`.
//!
//! Nothing secret is ever logged: the parent holds no secret, relays TLS it cannot read, and the
//! enclave's events carry kinds, outcomes and wallet ids only. The enclave's records are untrusted
//! input all the same ([`check_records`]): bounded sizes and counts, field names of a fixed
//! alphabet (they become JSON keys), and a rate limit per connection ([`RateLimit`]), so a
//! hostile peer on the store socket can neither forge the parent's own fields nor flood its log.

use std::io::Write;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cosigner_protocol::wire::{
    LogLevel, LogRecord, MAX_LOG_FIELD_NAME, MAX_LOG_FIELD_VALUE, MAX_LOG_FIELDS, MAX_LOG_MESSAGE,
    MAX_LOG_RECORDS, MAX_LOG_TARGET,
};
use tracing::level_filters::LevelFilter;
use tracing_subscriber::EnvFilter;

/// The environment variable holding the filter.
pub const FILTER_ENV: &str = "COSIGNER_LOG";

/// How events are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line (the default: for collectors).
    #[default]
    Json,
    /// One human-readable line per event.
    Text,
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

/// Installs the process's subscriber: `format` on stderr, filtered by `COSIGNER_LOG`.
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
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .with_ansi(false)
        .with_target(true);
    let result = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
    result.map_err(|e| LogInitError::AlreadySet(e.to_string()))?;
    ENCLAVE_FORMAT.get_or_init(|| format);
    Ok(())
}

/// The format [`init`] chose, for the enclave's records (JSON when logging was not set up: the
/// tests of this crate).
static ENCLAVE_FORMAT: std::sync::OnceLock<LogFormat> = std::sync::OnceLock::new();

/// Field names the parent writes itself: an enclave record may not use them.
const RESERVED: [&str; 6] = [
    "timestamp",
    "level",
    "message",
    "target",
    "source",
    "instance",
];

/// Why a batch of the enclave's records was refused (all of it: a peer that sends one bad record
/// is not trusted with the rest).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// More records than [`MAX_LOG_RECORDS`].
    #[error("log batch of {count} records, over the {max} allowed")]
    TooMany {
        /// Records sent.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A text over its limit.
    #[error("log record {index}: {what} of {len} bytes, over the {max} allowed")]
    TooLong {
        /// The record's position in the batch.
        index: usize,
        /// Which text.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// More fields than [`MAX_LOG_FIELDS`].
    #[error("log record {index}: {count} fields, over the {max} allowed")]
    TooManyFields {
        /// The record's position.
        index: usize,
        /// Fields sent.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A field name that is not `[a-z][a-z0-9_]*` of at most [`MAX_LOG_FIELD_NAME`] bytes, or
    /// one the parent writes itself.
    #[error("log record {index}: field name {name:?} is not allowed")]
    FieldName {
        /// The record's position.
        index: usize,
        /// The name, cut to the limit.
        name: String,
    },
    /// Two fields of one record with the same name.
    #[error("log record {index}: field {name:?} twice")]
    DuplicateField {
        /// The record's position.
        index: usize,
        /// The name.
        name: String,
    },
    /// A target that is not a module path (`[a-z0-9_:]`).
    #[error("log record {index}: target is not a module path")]
    Target {
        /// The record's position.
        index: usize,
    },
}

/// Checks a batch of the enclave's records (module docs). UTF-8 is the decoder's: CBOR text
/// strings that are not UTF-8 do not decode.
pub fn check_records(records: &[LogRecord]) -> Result<(), RecordError> {
    if records.len() > MAX_LOG_RECORDS {
        return Err(RecordError::TooMany {
            count: records.len(),
            max: MAX_LOG_RECORDS,
        });
    }
    for (index, r) in records.iter().enumerate() {
        let long = |what, len, max| RecordError::TooLong {
            index,
            what,
            len,
            max,
        };
        if r.message.len() > MAX_LOG_MESSAGE {
            return Err(long("message", r.message.len(), MAX_LOG_MESSAGE));
        }
        if r.target.len() > MAX_LOG_TARGET {
            return Err(long("target", r.target.len(), MAX_LOG_TARGET));
        }
        if !r
            .target
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b':')
        {
            return Err(RecordError::Target { index });
        }
        if r.fields.len() > MAX_LOG_FIELDS {
            return Err(RecordError::TooManyFields {
                index,
                count: r.fields.len(),
                max: MAX_LOG_FIELDS,
            });
        }
        for (i, (name, value)) in r.fields.iter().enumerate() {
            if r.fields.iter().take(i).any(|(earlier, _)| earlier == name) {
                return Err(RecordError::DuplicateField {
                    index,
                    name: name.clone(),
                });
            }
            if !field_name_ok(name) {
                let cut: String = name.chars().take(MAX_LOG_FIELD_NAME).collect();
                return Err(RecordError::FieldName { index, name: cut });
            }
            if value.len() > MAX_LOG_FIELD_VALUE {
                return Err(long("field value", value.len(), MAX_LOG_FIELD_VALUE));
            }
        }
    }
    Ok(())
}

fn field_name_ok(name: &str) -> bool {
    (1..=MAX_LOG_FIELD_NAME).contains(&name.len())
        && name.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !RESERVED.contains(&name)
}

/// A token bucket over one telemetry connection's records: `RATE` a second, bursts of `BURST`.
/// What is over is dropped and counted, never queued: the parent's log must not grow with what a
/// peer sends.
#[derive(Debug)]
pub struct RateLimit {
    tokens: f64,
    last: Instant,
}

impl RateLimit {
    /// Records a second a connection may keep up.
    pub const RATE: f64 = 200.0;
    /// Records a connection may send at once after a quiet spell.
    pub const BURST: f64 = 1000.0;

    /// A full bucket.
    pub fn new() -> Self {
        Self {
            tokens: Self::BURST,
            last: Instant::now(),
        }
    }

    /// How many of `n` records may be written now.
    pub fn take(&mut self, n: usize) -> usize {
        let now = Instant::now();
        let refill = now.saturating_duration_since(self.last).as_secs_f64() * Self::RATE;
        self.tokens = (self.tokens + refill).min(Self::BURST);
        self.last = now;
        let allowed = (self.tokens.floor() as usize).min(n);
        self.tokens -= allowed as f64;
        allowed
    }
}

impl Default for RateLimit {
    fn default() -> Self {
        Self::new()
    }
}

/// Writes checked records of enclave `instance` as the parent's own lines (module docs), those
/// the filter lets through; returns how many that was. Each line is one `write` of stderr, so
/// lines never interleave.
pub fn write_enclave_records(instance: u32, records: &[LogRecord]) -> usize {
    let format = ENCLAVE_FORMAT.get().copied().unwrap_or_default();
    let enabled: Vec<&LogRecord> = records.iter().filter(|r| enabled(r.level)).collect();
    let written = enabled.len();
    let out = render_enclave_records(format, instance, enabled);
    if !out.is_empty() {
        let _ = std::io::stderr().lock().write_all(&out);
    }
    written
}

/// The lines [`write_enclave_records`] writes for `records` (checked by [`check_records`]): one
/// per record, in `format`, each ending in a newline.
pub fn render_enclave_records<'a>(
    format: LogFormat,
    instance: u32,
    records: impl IntoIterator<Item = &'a LogRecord>,
) -> Vec<u8> {
    let mut out = Vec::new();
    for r in records {
        match format {
            LogFormat::Json => json_line(&mut out, instance, r),
            LogFormat::Text => text_line(&mut out, instance, r),
        }
    }
    out
}

/// Whether the filter lets an event of `level` through (the enclave's records are judged by level
/// only: their targets are the enclave's modules, not the parent's).
fn enabled(level: LogLevel) -> bool {
    let level = match level {
        LogLevel::Error => tracing::Level::ERROR,
        LogLevel::Warn => tracing::Level::WARN,
        LogLevel::Info => tracing::Level::INFO,
        LogLevel::Debug => tracing::Level::DEBUG,
        LogLevel::Trace => tracing::Level::TRACE,
    };
    level <= LevelFilter::current()
}

/// One JSON object, its keys in the order the parent's own lines have them (timestamp, level,
/// message, fields, target) and then `source` and `instance`.
fn json_line(out: &mut Vec<u8>, instance: u32, r: &LogRecord) {
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

fn text_line(out: &mut Vec<u8>, instance: u32, r: &LogRecord) {
    // Control characters would let a record forge lines of its own.
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

/// `ms` since the Unix epoch as RFC 3339 UTC with milliseconds ([`LogRecord::timestamp`]).
pub fn rfc3339(ms: u64) -> String {
    LogRecord {
        time_ms: ms,
        level: LogLevel::Info,
        target: String::new(),
        message: String::new(),
        fields: Vec::new(),
    }
    .timestamp()
}

/// Milliseconds since the Unix epoch now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// How often, at most, the parent logs what it dropped of one connection's records.
pub const DROP_LOG_INTERVAL: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    fn record() -> LogRecord {
        LogRecord {
            time_ms: 1_800_000_000_123,
            level: LogLevel::Info,
            target: "cosigner_enclave::server".into(),
            message: "closed 2 connections".into(),
            fields: vec![("wallet".into(), "ab".repeat(16))],
        }
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_800_000_000_123), "2027-01-15T08:00:00.123Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn enclave_records_become_json_lines_with_source_and_instance() {
        let mut out = Vec::new();
        json_line(&mut out, 3, &record());
        let text = String::from_utf8(out).unwrap();
        assert!(text.ends_with('\n') && text.lines().count() == 1, "{text}");
        assert!(text.starts_with("{\"timestamp\":"), "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["source"], "enclave");
        assert_eq!(v["instance"], 3);
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["message"], "closed 2 connections");
        assert_eq!(v["wallet"], "ab".repeat(16));
        assert_eq!(v["timestamp"], "2027-01-15T08:00:00.123Z");
        // A text line keeps to one line whatever the record holds.
        let mut r = record();
        r.message = "one\nforged line".into();
        let mut out = Vec::new();
        text_line(&mut out, 0, &r);
        assert_eq!(String::from_utf8(out).unwrap().lines().count(), 1);
    }

    #[test]
    fn records_over_a_limit_are_refused_by_kind() {
        assert_eq!(check_records(&[record()]), Ok(()));
        let many = vec![record(); MAX_LOG_RECORDS + 1];
        assert!(matches!(
            check_records(&many),
            Err(RecordError::TooMany { .. })
        ));
        let mut r = record();
        r.message = "x".repeat(MAX_LOG_MESSAGE + 1);
        assert!(matches!(
            check_records(&[record(), r]),
            Err(RecordError::TooLong {
                index: 1,
                what: "message",
                ..
            })
        ));
        let mut r = record();
        r.target = "Evil\ntarget".into();
        assert!(matches!(
            check_records(&[r]),
            Err(RecordError::Target { index: 0 })
        ));
        let mut r = record();
        r.fields = vec![("a".into(), "b".into()); MAX_LOG_FIELDS + 1];
        assert!(matches!(
            check_records(&[r]),
            Err(RecordError::TooManyFields { .. })
        ));
        for name in [
            "",
            "Source",
            "source",
            "instance",
            "1a",
            "a-b",
            &"a".repeat(33),
        ] {
            let mut r = record();
            r.fields = vec![(name.into(), "v".into())];
            assert!(
                matches!(check_records(&[r]), Err(RecordError::FieldName { .. })),
                "{name:?}"
            );
        }
        let mut r = record();
        r.fields = vec![("a".into(), "1".into()), ("a".into(), "2".into())];
        assert!(matches!(
            check_records(&[r]),
            Err(RecordError::DuplicateField { index: 0, .. })
        ));
        let mut r = record();
        r.fields = vec![("v".into(), "x".repeat(MAX_LOG_FIELD_VALUE + 1))];
        assert!(matches!(
            check_records(&[r]),
            Err(RecordError::TooLong {
                what: "field value",
                ..
            })
        ));
    }

    #[test]
    fn the_rate_limit_allows_a_burst_then_the_rate() {
        let mut limit = RateLimit::new();
        assert_eq!(limit.take(5000), RateLimit::BURST as usize);
        assert_eq!(limit.take(10), 0);
        std::thread::sleep(Duration::from_millis(100));
        let later = limit.take(1000);
        assert!((10..=40).contains(&later), "{later}");
    }
}
