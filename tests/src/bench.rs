//! The timing harness of `make bench`: a plain loop, not a statistics package. Each figure is
//! the median (and for [`measure`] the 90th percentile) of per-iteration times after a warm-up of
//! a tenth of the iterations.
//!
//! `attestation/benches/attestation.rs` includes this file by path (the attestation crate does not
//! depend on this harness), so it uses nothing but `std`.

use std::time::{Duration, Instant};

/// Runs `op` `iterations / 10` times to warm up, then `iterations` times; the times, sorted.
pub fn samples(iterations: usize, mut op: impl FnMut()) -> Vec<Duration> {
    for _ in 0..iterations.div_ceil(10) {
        op();
    }
    let mut samples: Vec<Duration> = (0..iterations)
        .map(|_| {
            let start = Instant::now();
            op();
            start.elapsed()
        })
        .collect();
    samples.sort();
    samples
}

/// The sample at `per_cent` of the sorted `samples`, in milliseconds (0 if there is none).
pub fn percentile_ms(samples: &[Duration], per_cent: usize) -> f64 {
    samples
        .get(samples.len() * per_cent / 100)
        .map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

/// The median of `samples` (in any order), in milliseconds.
pub fn p50(mut samples: Vec<Duration>) -> f64 {
    samples.sort();
    percentile_ms(&samples, 50)
}

/// The median time of `op` over `iterations` runs after the warm-up, in milliseconds.
pub fn time(iterations: usize, op: impl FnMut()) -> f64 {
    percentile_ms(&samples(iterations, op), 50)
}

/// Times `op` as [`time`] does and prints one line: `name`, median and 90th percentile.
pub fn measure(name: &str, iterations: usize, op: impl FnMut()) {
    let samples = samples(iterations, op);
    println!(
        "{name:<58} median {:>9.3} ms   p90 {:>9.3} ms   ({iterations} runs)",
        percentile_ms(&samples, 50),
        percentile_ms(&samples, 90)
    );
}

/// CPU time this thread has used, in nanoseconds (Linux's `/proc/thread-self/schedstat`, whose
/// first field is "time spent on the cpu (in nanoseconds)", Documentation/scheduler/sched-stats);
/// `None` where the file is missing.
pub fn thread_cpu_ns() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// The CPU time of this thread per run of `op` over `iterations` runs, in milliseconds (NaN
/// where it cannot be read).
pub fn cpu_ms_per_run(iterations: u32, mut op: impl FnMut()) -> f64 {
    let Some(before) = thread_cpu_ns() else {
        return f64::NAN;
    };
    for _ in 0..iterations {
        op();
    }
    let after = thread_cpu_ns().unwrap_or(before);
    after.saturating_sub(before) as f64 / 1e6 / f64::from(iterations.max(1))
}
