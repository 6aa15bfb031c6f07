//! Binning at SPEC §6 sizes, GPU and CPU in the same run.
//!
//! Throughput groups report elements (samples × channels) per second; the real-time factor
//! and per-chunk latency percentiles (p50/p99, what closed-loop users care about) are printed
//! by a plain timing loop at the end, since criterion reports means.

mod support;

use support::engines;

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ndarray::{s, Array2};
use neurokernels::{Aggregation, BinnedActivation, BinningSettings, Engine, Event, Kernel};
use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64;

const FS: f64 = 30_000.0;

/// A dense raster with ~1 % of samples set.
fn raster(n: usize, nc: usize, seed: u64) -> Array2<f32> {
    let mut rng = Pcg64::seed_from_u64(seed);
    Array2::from_shape_fn(
        (n, nc),
        |_| if rng.random::<f32>() < 0.01 { 1.0 } else { 0.0 },
    )
}

fn count_sum() -> BinningSettings {
    BinningSettings {
        kernel: Kernel::Count,
        aggregation: Aggregation::Sum,
        ..Default::default()
    }
}

/// Streams `x` in chunks of `chunk` rows through a fresh operator.
fn stream(engine: &Engine, settings: BinningSettings, x: &Array2<f32>, chunk: usize) -> usize {
    let mut op = BinnedActivation::new(engine, settings, FS).expect("operator");
    let mut bins = 0;
    for a in (0..x.nrows()).step_by(chunk) {
        let b = op
            .process_dense(x.slice(s![a..(a + chunk).min(x.nrows()), ..]))
            .expect("chunk");
        bins += b.values.nrows();
    }
    bins
}

fn dense_count_sum(c: &mut Criterion) {
    let engines = engines();
    for nc in [384usize, 1024] {
        let x = raster(30_000, nc, 1);
        let mut g = c.benchmark_group(format!("dense_count_sum_1s_{nc}ch"));
        g.throughput(Throughput::Elements((x.len()) as u64));
        g.sample_size(10)
            .measurement_time(Duration::from_secs(3))
            .warm_up_time(Duration::from_millis(500));
        for (name, e) in &engines {
            for chunk in [3_000usize, 30_000] {
                g.bench_with_input(
                    BenchmarkId::new(*name, format!("chunks_of_{chunk}")),
                    &chunk,
                    |b, &chunk| b.iter(|| black_box(stream(e, count_sum(), &x, chunk))),
                );
            }
        }
        g.finish();
    }
}

/// 191 466 events over 10 s × 384 channels (the TARGETS.md workload).
fn sparse_events(seed: u64) -> Vec<Event> {
    let mut rng = Pcg64::seed_from_u64(seed);
    let mut ev: Vec<Event> = (0..191_466)
        .map(|_| Event {
            sample: rng.random_range(0..300_000u64),
            channel: rng.random_range(0..384u32),
            value: 1.0,
        })
        .collect();
    ev.sort_by_key(|e| e.sample);
    ev
}

fn sparse_exp_last(c: &mut Criterion) {
    let engines = engines();
    let ev = sparse_events(2);
    let mut g = c.benchmark_group("sparse_exp_last_10s_384ch");
    g.throughput(Throughput::Elements(ev.len() as u64));
    g.sample_size(10)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_millis(500));
    for (name, e) in &engines {
        g.bench_function(*name, |b| {
            b.iter(|| {
                let mut op =
                    BinnedActivation::new(e, BinningSettings::default(), FS).expect("operator");
                let mut i = 0;
                for k in 0..10u64 {
                    let end = (k + 1) * 30_000;
                    let j = i + ev[i..].partition_point(|x| x.sample < end);
                    black_box(op.process_events(&ev[i..j], 30_000, 384).expect("chunk"));
                    i = j;
                }
            })
        });
    }
    g.finish();
}

/// Per-chunk latency percentiles and real-time factor, printed as a table.
fn latency(_c: &mut Criterion) {
    let engines = engines();
    let x = raster(60_000, 384, 3);
    println!("\nper-chunk latency, dense Count+Sum, 384 channels, 20 ms bins");
    println!("| engine | chunk | p50 | p99 | real-time factor |");
    println!("| --- | --- | ---: | ---: | ---: |");
    for (name, e) in &engines {
        for chunk in [30usize, 600] {
            let mut op = BinnedActivation::new(e, count_sum(), FS).expect("operator");
            let mut t = Vec::new();
            for a in (0..x.nrows()).step_by(chunk).take(2000) {
                let view = x.slice(s![a..a + chunk, ..]);
                let t0 = Instant::now();
                black_box(op.process_dense(view).expect("chunk"));
                t.push(t0.elapsed());
            }
            t.sort();
            let p = |q: f64| t[((t.len() - 1) as f64 * q) as usize];
            let mean: Duration = t.iter().sum::<Duration>() / t.len() as u32;
            let rtf = (chunk as f64 / FS) / mean.as_secs_f64();
            support::record(&format!("binning/dense/{name}/{chunk}/p50"), p(0.5));
            support::record(&format!("binning/dense/{name}/{chunk}/p99"), p(0.99));
            println!(
                "| {name} | {} ms | {:.1} µs | {:.1} µs | {:.0}× |",
                chunk as f64 / 30.0,
                p(0.5).as_secs_f64() * 1e6,
                p(0.99).as_secs_f64() * 1e6,
                rtf
            );
        }
    }
}

criterion_group!(benches, dense_count_sum, sparse_exp_last, latency);
criterion_main!(benches);
