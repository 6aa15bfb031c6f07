//! Band-pass filter and common-average reference at the chain's size (384 channels at
//! 30 kHz), GPU and CPU in the same run: 1 s of signal streamed in 20 ms chunks (600 rows).
//!
//! Data: unit Gaussian noise plus a slow large component (as raw extracellular data before
//! filtering). Filter: the defaults (300–6000 Hz, order 3: three sections). CAR: the mean.
//! Both the host path (`process`: upload, run, read back) and, for the GPU, the device path
//! (`process_device` on a chunk already on the device, output left there; the call waits
//! for the GPU through its status read-back) are measured.
//!
//! Criterion reports the mean time per chunk and the throughput in samples × channels per
//! second; a plain timing loop at the end prints per-chunk percentiles (min, p50, p99) and
//! the real-time factor.

mod support;

use support::engines;

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ndarray::{s, Array2};
use neurokernels::{
    BandpassFilter, CarSettings, CommonAverage, DeviceArray, Engine, FilterSettings,
};
use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64;

const FS: f64 = 30_000.0;
const NC: usize = 384;
const CHUNK: usize = 600;
const ROWS: usize = 30_000;

fn signal(n: usize, nc: usize, seed: u64) -> Array2<f32> {
    let mut r = Pcg64::seed_from_u64(seed);
    let mut x = Array2::from_shape_simple_fn((n, nc), || {
        let (u1, u2): (f64, f64) = (r.random::<f64>().max(1e-300), r.random());
        ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
    });
    for ((t, c), v) in x.indexed_iter_mut() {
        *v +=
            (50.0 * (std::f64::consts::TAU * (3.0 + c as f64 * 0.01) * t as f64 / FS).sin()) as f32;
    }
    x
}

fn chunk_at(x: &Array2<f32>, k: usize) -> ndarray::ArrayView2<'_, f32> {
    let per = x.nrows() / CHUNK;
    let a = (k % per) * CHUNK;
    x.slice(s![a..a + CHUNK, ..])
}

/// The operators under test.
enum Op {
    Filter(BandpassFilter),
    Car(CommonAverage),
}

impl Op {
    fn make(which: &str, e: &Engine) -> Op {
        match which {
            "filter" => {
                Op::Filter(BandpassFilter::new(e, FilterSettings::default(), FS).expect("filter"))
            }
            _ => Op::Car(CommonAverage::new(e, CarSettings::default()).expect("car")),
        }
    }

    fn host(&mut self, chunk: ndarray::ArrayView2<'_, f32>) -> Array2<f32> {
        match self {
            Op::Filter(f) => f.process(chunk).expect("chunk"),
            Op::Car(c) => c.process(chunk).expect("chunk"),
        }
    }

    fn device(&mut self, chunk: &DeviceArray) -> DeviceArray {
        match self {
            Op::Filter(f) => f.process_device(chunk).expect("chunk"),
            Op::Car(c) => c.process_device(chunk).expect("chunk"),
        }
    }
}

/// The chunks of `x`, uploaded (for the device path).
fn uploaded(e: &Engine, x: &Array2<f32>) -> Vec<DeviceArray> {
    let Engine::Gpu(ctx) = e else {
        return Vec::new();
    };
    (0..x.nrows() / CHUNK)
        .map(|k| DeviceArray::upload(ctx, chunk_at(x, k).into_dyn()).expect("upload"))
        .collect()
}

fn per_chunk(c: &mut Criterion) {
    let engines = engines();
    let x = signal(ROWS, NC, 1);
    for which in ["filter", "car"] {
        let mut g = c.benchmark_group(format!("{which}_{NC}ch_chunks_of_{CHUNK}"));
        g.throughput(Throughput::Elements((CHUNK * NC) as u64));
        g.sample_size(20)
            .measurement_time(Duration::from_secs(2))
            .warm_up_time(Duration::from_millis(300));
        for (name, e) in &engines {
            let mut op = Op::make(which, e);
            let mut k = 0;
            g.bench_function(BenchmarkId::from_parameter(name), |b| {
                b.iter(|| {
                    k += 1;
                    black_box(op.host(chunk_at(&x, k)))
                })
            });
            let dev = uploaded(e, &x);
            if !dev.is_empty() {
                let mut op = Op::make(which, e);
                let mut k = 0;
                g.bench_function(BenchmarkId::from_parameter(format!("{name}_device")), |b| {
                    b.iter(|| {
                        k += 1;
                        black_box(op.device(&dev[k % dev.len()]));
                    })
                });
            }
        }
        g.finish();
    }
}

/// Per-chunk latency percentiles and real-time factor over 1 s of signal, printed as a table.
fn latency(_c: &mut Criterion) {
    let engines = engines();
    let x = signal(ROWS, NC, 3);
    println!("\nper-chunk latency, {NC} channels at 30 kHz, 1 s in 20 ms chunks");
    println!("| operator | engine | path | min | p50 | p99 | real-time factor |");
    println!("| --- | --- | --- | ---: | ---: | ---: | ---: |");
    for which in ["filter", "car"] {
        for (name, e) in &engines {
            let dev = uploaded(e, &x);
            for path in ["host", "device"] {
                if path == "device" && dev.is_empty() {
                    continue;
                }
                let mut op = Op::make(which, e);
                let reps = 5 * ROWS / CHUNK;
                let mut t = Vec::with_capacity(reps);
                for k in 0..reps {
                    let t0 = Instant::now();
                    if path == "host" {
                        black_box(op.host(chunk_at(&x, k)));
                    } else {
                        black_box(op.device(&dev[k % dev.len()]));
                    }
                    t.push(t0.elapsed());
                }
                t.sort();
                let p = |q: f64| t[((t.len() - 1) as f64 * q) as usize];
                let mean: Duration = t.iter().sum::<Duration>() / t.len() as u32;
                let rtf = (CHUNK as f64 / FS) / mean.as_secs_f64();
                println!(
                    "| {which} | {name} | {path} | {:.1} µs | {:.1} µs | {:.1} µs | {:.0}× |",
                    p(0.0).as_secs_f64() * 1e6,
                    p(0.5).as_secs_f64() * 1e6,
                    p(0.99).as_secs_f64() * 1e6,
                    rtf
                );
            }
        }
    }
}

criterion_group!(benches, per_chunk, latency);
criterion_main!(benches);
