//! Threshold crossing at the chain's size (384 channels at 30 kHz), GPU and CPU in the same
//! run, streamed in chunks of 30 samples (1 ms) and 600 samples (20 ms).
//!
//! Data: unit Gaussian noise with spike-like deflections (≈ 60 Hz per channel, half of them
//! negative-going), thresholded at −3.5. Two settings: `plain` (ezmsg-event's defaults: 1 ms
//! refractory, events at the crossing) and `peak` (aligned on the peak, peak value returned,
//! 0.1 ms minimum duration: every event keeps a peak window open).
//!
//! The chunks cycle through 0.2 s of signal (9.2 MB, so it stays in the L3 cache, as in a
//! chain where the stage before has just written the chunk); set `THRESHOLD_BENCH_SECONDS` to
//! stream a longer signal from memory instead.
//!
//! Criterion reports the mean time per chunk and the throughput in samples × channels per
//! second; the per-chunk latency percentiles (min, p50, p99: the minimum is what a quiet
//! machine gives) and the real-time factor are printed by a plain timing loop at the end,
//! since criterion reports means.

mod support;

use support::engines;

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ndarray::{s, Array2};
use neurokernels::{ThresholdCrossing, ThresholdSettings};
use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64;

const FS: f64 = 30_000.0;
const NC: usize = 384;

/// Rows of signal the chunks cycle through.
fn signal_rows() -> usize {
    let secs: f64 = std::env::var("THRESHOLD_BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.2);
    ((secs * FS) as usize).max(600)
}

/// `n × nc` unit Gaussian noise plus ~1 ms spikes of amplitude 4–12 (either sign) at
/// ≈ 60 Hz per channel.
fn signal(n: usize, nc: usize, seed: u64) -> Array2<f32> {
    let mut r = Pcg64::seed_from_u64(seed);
    let mut x = Array2::from_shape_simple_fn((n, nc), || {
        let (u1, u2): (f64, f64) = (r.random::<f64>().max(1e-300), r.random());
        ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
    });
    let shape = [
        0.2f32, 0.5, 0.8, 1.0, 0.9, 0.7, 0.45, 0.2, -0.1, -0.25, -0.2, -0.1,
    ];
    let gap = (FS / 60.0) as usize;
    for c in 0..nc {
        let mut t = r.random_range(0..gap);
        while t < n {
            let amp = r.random_range(4.0f32..12.0) * if r.random::<bool>() { 1.0 } else { -1.0 };
            for (j, &sh) in shape.iter().enumerate() {
                if t + j < n {
                    x[[t + j, c]] += amp * sh;
                }
            }
            t += r.random_range(gap / 2..gap * 3 / 2);
        }
    }
    x
}

fn variants() -> [(&'static str, ThresholdSettings); 2] {
    let plain = ThresholdSettings::default();
    [
        ("plain", plain),
        (
            "peak",
            ThresholdSettings {
                align_on_peak: true,
                return_peak_val: true,
                min_peak_dur: 0.0001,
                ..plain
            },
        ),
    ]
}

/// Chunk `k` (cyclic) of `x` in chunks of `chunk` rows.
fn chunk_at(x: &Array2<f32>, chunk: usize, k: usize) -> ndarray::ArrayView2<'_, f32> {
    let per = x.nrows() / chunk;
    let a = (k % per) * chunk;
    x.slice(s![a..a + chunk, ..])
}

fn per_chunk(c: &mut Criterion) {
    let engines = engines();
    let x = signal(signal_rows(), NC, 1);
    for (vname, st) in variants() {
        for chunk in [30usize, 600] {
            let mut g = c.benchmark_group(format!("threshold_{vname}_{NC}ch_chunks_of_{chunk}"));
            g.throughput(Throughput::Elements((chunk * NC) as u64));
            g.sample_size(20)
                .measurement_time(Duration::from_secs(2))
                .warm_up_time(Duration::from_millis(300));
            for (name, e) in &engines {
                let mut op = ThresholdCrossing::new(e, st, FS).expect("operator");
                let mut k = 0;
                g.bench_function(BenchmarkId::from_parameter(name), |b| {
                    b.iter(|| {
                        k += 1;
                        black_box(op.process(chunk_at(&x, chunk, k)).expect("chunk"))
                    })
                });
            }
            g.finish();
        }
    }
}

/// Per-chunk latency percentiles and real-time factor, printed as a table.
fn latency(_c: &mut Criterion) {
    let engines = engines();
    let x = signal(signal_rows(), NC, 3);
    println!("\nper-chunk latency, threshold crossing, {NC} channels at 30 kHz");
    println!("| engine | settings | chunk | min | p50 | p99 | events/chunk | real-time factor |");
    println!("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |");
    for (name, e) in &engines {
        for (vname, st) in variants() {
            for chunk in [30usize, 600] {
                let mut op = ThresholdCrossing::new(e, st, FS).expect("operator");
                let reps = if chunk == 30 { 4000 } else { 1000 };
                let mut t = Vec::with_capacity(reps);
                let mut events = 0;
                for k in 0..reps {
                    let view = chunk_at(&x, chunk, k);
                    let t0 = Instant::now();
                    events += black_box(op.process(view).expect("chunk")).len();
                    t.push(t0.elapsed());
                }
                t.sort();
                let p = |q: f64| t[((t.len() - 1) as f64 * q) as usize];
                let mean: Duration = t.iter().sum::<Duration>() / t.len() as u32;
                let rtf = (chunk as f64 / FS) / mean.as_secs_f64();
                println!(
                    "| {name} | {vname} | {} ms | {:.1} µs | {:.1} µs | {:.1} µs | {:.1} | {:.0}× |",
                    chunk as f64 / 30.0,
                    p(0.0).as_secs_f64() * 1e6,
                    p(0.5).as_secs_f64() * 1e6,
                    p(0.99).as_secs_f64() * 1e6,
                    events as f64 / reps as f64,
                    rtf
                );
            }
        }
    }
}

criterion_group!(benches, per_chunk, latency);
criterion_main!(benches);
