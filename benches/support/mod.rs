//! What the benches share: the two engines, measured in the same run, and the records that
//! `cargo run --release --example bench_report` turns into BENCHMARKS.md's summary table.

#![allow(dead_code)] // each bench uses a part of this module

use std::io::Write;
use std::time::Duration;

use neurokernels::{Engine, GpuOptions};

/// The CPU engine and the GPU engine (`Engine::gpu` with software adapters accepted: set
/// `WGPU_BACKEND` to pick one). Panics without an adapter: a bench never silently measures
/// the CPU alone. The adapter's name goes into the records.
pub fn engines() -> Vec<(&'static str, Engine)> {
    let gpu = Engine::gpu(&GpuOptions::software_ok())
        .expect("benches need a GPU adapter (set WGPU_BACKEND)");
    eprintln!("GPU engine: {}", gpu.describe());
    note("adapter", &gpu.describe());
    vec![("cpu", Engine::cpu()), ("gpu", gpu)]
}

/// Where the records go: `bench-records.jsonl` in `$CARGO_TARGET_DIR` when that is set (as
/// for criterion's own output: `benches/bundle.sh` runs the benches that way), else in the
/// build's `target/`; one JSON object per line, a later line with the same key replacing an
/// earlier one in the report.
pub fn records_path() -> std::path::PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => std::path::PathBuf::from(dir).join("bench-records.jsonl"),
        None => std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("..")
            .join("bench-records.jsonl"),
    }
}

/// The 1-minute load average when the figure was taken (`/proc/loadavg`), or -1.
fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(-1.0)
}

fn append(line: serde_json::Value) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(records_path())
        .expect("open the bench records");
    writeln!(f, "{line}").expect("write a bench record");
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Records figure `key` (e.g. `chain/cpu/20ms/p99`) in seconds.
pub fn record_secs(key: &str, seconds: f64) {
    append(serde_json::json!({
        "key": key,
        "value": seconds,
        "load": load_average(),
        "unix": unix_now(),
    }));
}

/// [`record_secs`] of a `Duration`.
pub fn record(key: &str, d: Duration) {
    record_secs(key, d.as_secs_f64());
}

/// Records a count (e.g. heap allocations per chunk).
pub fn record_count(key: &str, count: f64) {
    record_secs(key, count);
}

/// Records a text fact (e.g. the adapter's name).
pub fn note(key: &str, text: &str) {
    append(serde_json::json!({ "key": key, "text": text, "unix": unix_now() }));
}
