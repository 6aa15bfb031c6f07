//! Max-rate classifier at SPEC §6 sizes (10⁴–10⁶ neurons, 10 classes, batch 256), GPU and CPU
//! in the same run.
//!
//! Criterion groups report elements (batch × neurons) per second for `update` followed by
//! `classify` (two calls, each reading the batch), and for the fused `forward` (classify, then
//! update, one call). A plain timing loop at the end prints a table of medians, including the
//! GPU on device-resident inputs (no upload), which is what a chain on the device sees.
//!
//! `NEUROKERNELS_BENCH_MAX_N` caps the largest size (default 1 000 000).

mod support;

use support::engines;

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ndarray::Array2;
use neurokernels::classifier::{ClassifierSettings, MaxRateClassifier};
use neurokernels::{DeviceArray, Engine};
use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64;

const K: usize = 10;
const B: usize = 256;

fn sizes() -> Vec<usize> {
    let max = std::env::var("NEUROKERNELS_BENCH_MAX_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    [10_000, 100_000, 1_000_000]
        .into_iter()
        .filter(|&n| n <= max)
        .collect()
}

/// Spike-rate-like inputs in [0, 1) (a fifth of them zero) and balanced labels.
fn batch(n: usize, seed: u64) -> (Array2<f32>, Vec<usize>) {
    let mut rng = Pcg64::seed_from_u64(seed);
    let x = Array2::from_shape_simple_fn((B, n), || {
        let v: f32 = rng.random();
        if v < 0.2 {
            0.0
        } else {
            v
        }
    });
    let labels = (0..B).map(|b| (b * 7 + 3) % K).collect();
    (x, labels)
}

/// A classifier that has seen one batch (so assignments are spread over the classes).
fn trained(e: &Engine, n: usize, x: &Array2<f32>, labels: &[usize]) -> MaxRateClassifier {
    let mut c = MaxRateClassifier::new(
        e,
        ClassifierSettings {
            decay: 0.01,
            ..ClassifierSettings::new(n, K)
        },
    )
    .expect("classifier");
    c.update(x.view(), labels).expect("update");
    c
}

fn bench_sizes(c: &mut Criterion) {
    let engines = engines();
    for n in sizes() {
        let (x, labels) = batch(n, n as u64);
        let mut g = c.benchmark_group(format!("classifier_{n}_neurons_{K}_classes_batch_{B}"));
        g.throughput(Throughput::Elements((B * n) as u64));
        g.sample_size(10)
            .measurement_time(Duration::from_secs(if n >= 1_000_000 { 6 } else { 2 }))
            .warm_up_time(Duration::from_millis(300));
        for (name, e) in &engines {
            let mut clf = trained(e, n, &x, &labels);
            g.bench_function(BenchmarkId::new("update+classify", name), |b| {
                b.iter(|| {
                    clf.update(x.view(), &labels).expect("update");
                    black_box(clf.classify(x.view()).expect("classify"))
                })
            });
            g.bench_function(BenchmarkId::new("forward", name), |b| {
                b.iter(|| black_box(clf.forward(x.view().into_dyn(), Some(&labels))))
            });
        }
        g.finish();
    }
}

fn median(mut f: impl FnMut(), reps: usize) -> Duration {
    f(); // warm-up
    let mut t: Vec<Duration> = (0..reps)
        .map(|_| {
            let t0 = Instant::now();
            f();
            t0.elapsed()
        })
        .collect();
    t.sort();
    t[t.len() / 2]
}

/// Medians of each call, printed as a table.
fn table(_c: &mut Criterion) {
    let engines = engines();
    println!("\nmax-rate classifier, {K} classes, batch {B} (medians)");
    println!(
        "| engine | neurons | update | classify | update + classify | forward | M elements/s (update + classify) |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    let ms = |d: Duration| format!("{:.2} ms", d.as_secs_f64() * 1e3);
    for n in sizes() {
        let (x, labels) = batch(n, n as u64 + 1);
        let reps = if n >= 1_000_000 { 3 } else { 15 };
        for (name, e) in &engines {
            let mut clf = trained(e, n, &x, &labels);
            let tu = median(|| clf.update(x.view(), &labels).expect("update"), reps);
            let tc = median(
                || {
                    black_box(clf.classify(x.view()).expect("classify"));
                },
                reps,
            );
            let tuc = median(
                || {
                    clf.update(x.view(), &labels).expect("update");
                    black_box(clf.classify(x.view()).expect("classify"));
                },
                reps,
            );
            let tf = median(
                || {
                    black_box(
                        clf.forward(x.view().into_dyn(), Some(&labels))
                            .expect("fwd"),
                    );
                },
                reps,
            );
            let rate = (B * n) as f64 / tuc.as_secs_f64() / 1e6;
            support::record(&format!("classifier/{name}/{n}/update+classify"), tuc);
            support::record(&format!("classifier/{name}/{n}/forward"), tf);
            println!(
                "| {name} | {n} | {} | {} | {} | {} | {rate:.0} |",
                ms(tu),
                ms(tc),
                ms(tuc),
                ms(tf)
            );
            if let Engine::Gpu(ctx) = e {
                // Inputs already on the device: the kernels and the read-back only.
                let d = DeviceArray::upload(ctx, x.view().into_dyn()).expect("upload");
                let tu = median(|| clf.update_device(&d, &labels).expect("update"), reps);
                let tc = median(
                    || {
                        black_box(clf.classify_device(&d).expect("classify"));
                    },
                    reps,
                );
                let tuc = median(
                    || {
                        clf.update_device(&d, &labels).expect("update");
                        black_box(clf.classify_device(&d).expect("classify"));
                    },
                    reps,
                );
                let tf = median(
                    || {
                        black_box(clf.forward_device(&d, Some(&labels)).expect("fwd"));
                    },
                    reps,
                );
                let rate = (B * n) as f64 / tuc.as_secs_f64() / 1e6;
                support::record(
                    &format!("classifier/{name}/{n}/device/update+classify"),
                    tuc,
                );
                support::record(&format!("classifier/{name}/{n}/device/forward"), tf);
                println!(
                    "| {name} (device inputs) | {n} | {} | {} | {} | {} | {rate:.0} |",
                    ms(tu),
                    ms(tc),
                    ms(tuc),
                    ms(tf)
                );
            }
        }
    }
}

criterion_group!(benches, bench_sizes, table);
criterion_main!(benches);
