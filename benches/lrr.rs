//! LRR at SPEC §6 sizes, GPU and CPU in the same run.
//!
//! * Throughput: 384 channels in 8 clusters of 48, 10 chunks of 30 000 samples:
//!   `partial_fit` (the `XᵀX` kernel), `solve`, `transform` (host → host, and device →
//!   device on the GPU).
//! * Streaming: 512 channels in 8 clusters of 64, 20-sample chunks, `partial_fit` +
//!   `transform` per chunk, with the weights re-solved every chunk (`update_every = 0`, the
//!   seed's behaviour) and once per second of data (`update_every = 30 000`).
//!
//! Criterion reports means; a plain timing loop at the end prints medians, GFLOP/s, per-chunk
//! p50/p99, and a simple single-threaded Rust baseline of the same arithmetic (a scalar `f64`
//! `XᵀX` over the cluster blocks, and a scalar `f32` block product) for scale.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ndarray::{s, Array2};
use neurokernels::lrr::{Lrr, LrrSettings};
use neurokernels::{DeviceArray, Engine, GpuOptions};
use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64;

mod support;

const CHUNK: usize = 30_000;
const N_CHUNKS: usize = 10;

/// The engines to run: both, or those named in `LRR_BENCH_ENGINES` (`cpu`, `gpu`).
fn engines() -> Vec<(&'static str, Engine)> {
    let want = std::env::var("LRR_BENCH_ENGINES").unwrap_or_else(|_| "cpu,gpu".into());
    let mut out = Vec::new();
    if want.contains("cpu") {
        out.push(("cpu", Engine::cpu()));
    }
    if want.contains("gpu") {
        let gpu = Engine::gpu(&GpuOptions::software_ok())
            .expect("benches need a GPU adapter (set WGPU_BACKEND)");
        eprintln!("GPU engine: {}", gpu.describe());
        support::note("adapter", &gpu.describe());
        out.push(("gpu", gpu));
    }
    out
}

/// Common-reference-like data: a shared source with per-channel gains plus independent
/// noise (uniform, cheap to generate).
fn data(n: usize, nc: usize, seed: u64) -> Array2<f32> {
    let mut r = Pcg64::seed_from_u64(seed);
    let g: Vec<f32> = (0..nc).map(|_| r.random_range(0.5..1.5)).collect();
    let mut x = Array2::zeros((n, nc));
    for mut row in x.outer_iter_mut() {
        let s: f32 = r.random::<f32>() - 0.5;
        for (v, gj) in row.iter_mut().zip(&g) {
            *v = gj * s + 0.2 * (r.random::<f32>() - 0.5);
        }
    }
    x
}

fn clusters(n_clusters: usize, size: usize) -> Vec<Vec<usize>> {
    (0..n_clusters)
        .map(|c| (c * size..(c + 1) * size).collect())
        .collect()
}

fn settings(n_clusters: usize, size: usize, update_every: u64) -> LrrSettings {
    LrrSettings {
        channel_clusters: Some(clusters(n_clusters, size)),
        update_every,
        ..Default::default()
    }
}

/// Multiply-adds of `XᵀX` over the cluster blocks (symmetric half, with the diagonal).
fn syrk_fma(rows: usize, n_clusters: usize, size: usize) -> f64 {
    (rows * n_clusters * size * (size + 1) / 2) as f64
}

/// Multiply-adds of the block-diagonal transform.
fn gemm_fma(rows: usize, n_clusters: usize, size: usize) -> f64 {
    (rows * n_clusters * size * size) as f64
}

fn fit_all(e: &Engine, x: &Array2<f32>) -> Lrr {
    let mut op = Lrr::new(e, settings(8, 48, 0)).expect("operator");
    for k in 0..N_CHUNKS {
        op.partial_fit(x.slice(s![k * CHUNK..(k + 1) * CHUNK, ..]))
            .expect("chunk");
    }
    op
}

fn throughput(c: &mut Criterion) {
    let engines = engines();
    let x = data(CHUNK * N_CHUNKS, 384, 1);
    let mut g = c.benchmark_group("lrr_384ch_8x48_10x30000");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_millis(500));
    g.throughput(Throughput::Elements(x.len() as u64));
    for (name, e) in &engines {
        g.bench_function(BenchmarkId::new("partial_fit", name), |b| {
            b.iter(|| {
                let mut op = fit_all(e, &x);
                black_box(op.covariance().expect("C").len())
            })
        });
        let mut op = fit_all(e, &x);
        op.solve().expect("solve");
        let mut out = Array2::<f32>::zeros((CHUNK, 384));
        g.bench_function(BenchmarkId::new("transform_into", name), |b| {
            b.iter(|| {
                for k in 0..N_CHUNKS {
                    op.transform_into(x.slice(s![k * CHUNK..(k + 1) * CHUNK, ..]), out.view_mut())
                        .expect("chunk");
                }
                black_box(&out);
            })
        });
        g.bench_function(BenchmarkId::new("transform", name), |b| {
            b.iter(|| {
                for k in 0..N_CHUNKS {
                    black_box(
                        op.transform(x.slice(s![k * CHUNK..(k + 1) * CHUNK, ..]))
                            .expect("chunk"),
                    );
                }
            })
        });
        if let Engine::Gpu(ctx) = e {
            let dev: Vec<DeviceArray> = (0..N_CHUNKS)
                .map(|k| {
                    DeviceArray::upload(ctx, x.slice(s![k * CHUNK..(k + 1) * CHUNK, ..]).into_dyn())
                        .expect("upload")
                })
                .collect();
            g.bench_function(BenchmarkId::new("transform_device", name), |b| {
                b.iter(|| {
                    let mut last = None;
                    for d in &dev {
                        last = Some(op.transform_device(d).expect("chunk"));
                    }
                    // Wait for the device: read back one value of the last output.
                    black_box(op.n_samples());
                    black_box(last.map(|l| l.len()));
                    op.covariance().expect("sync")
                })
            });
        }
    }
    g.finish();
    let mut g = c.benchmark_group("lrr_384ch_8x48_solve");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_millis(300));
    for (name, e) in &engines {
        let mut op = fit_all(e, &x);
        let tiny = x.slice(s![0..1, ..]);
        g.bench_function(*name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    op.partial_fit(tiny).expect("chunk");
                    op.covariance().expect("sync");
                    let t0 = Instant::now();
                    op.solve().expect("solve");
                    total += t0.elapsed();
                }
                total
            })
        });
    }
    g.finish();
}

fn streaming(c: &mut Criterion) {
    let engines = engines();
    let x = data(30_000, 512, 2);
    let mut g = c.benchmark_group("lrr_stream_512ch_8x64_20samples");
    g.sample_size(20)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_millis(300));
    for (name, e) in &engines {
        for every in [0u64, 30_000] {
            let mut op = Lrr::new(e, settings(8, 64, every)).expect("operator");
            op.partial_fit(x.slice(s![0..2000, ..])).expect("warm");
            let mut at = 0;
            g.bench_function(
                BenchmarkId::new(*name, format!("update_every_{every}")),
                |b| {
                    b.iter(|| {
                        at = (at + 20) % (x.nrows() - 20);
                        let chunk = x.slice(s![at..at + 20, ..]);
                        op.partial_fit(chunk).expect("fit");
                        black_box(op.transform(chunk).expect("transform"))
                    })
                },
            );
        }
    }
    g.finish();
}

/// CPU time of the whole process so far (user + system, all threads, from `/proc`), for
/// reading timings on a loaded machine: wall time includes waiting for a core, this does
/// not. Zero where `/proc` is unavailable.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // Fields 14 and 15 of stat (utime, stime), counted after the command name: 11 and 12.
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

/// Runs `f` `n` times; returns the median wall time and the mean process CPU time per run.
fn timed(n: usize, mut f: impl FnMut() -> Duration) -> (Duration, Duration) {
    let c0 = cpu_time();
    let t: Vec<Duration> = (0..n).map(|_| f()).collect();
    ((median(t)), (cpu_time() - c0) / n as u32)
}

fn median(mut t: Vec<Duration>) -> Duration {
    t.sort();
    t[t.len() / 2]
}

/// Scalar single-threaded baselines: `f64` `XᵀX` over the cluster blocks (upper half), and
/// the `f32` block product, written the obvious way.
fn baseline_syrk(x: &Array2<f32>, cl: &[Vec<usize>]) -> Vec<Vec<f64>> {
    let mut out: Vec<Vec<f64>> = cl.iter().map(|c| vec![0.0; c.len() * c.len()]).collect();
    for row in x.outer_iter() {
        let r = row.as_slice().unwrap_or(&[]);
        for (c, o) in cl.iter().zip(out.iter_mut()) {
            let k = c.len();
            let v = &r[c[0]..c[0] + k];
            for i in 0..k {
                let vi = v[i] as f64;
                for j in i..k {
                    o[i * k + j] += vi * v[j] as f64;
                }
            }
        }
    }
    out
}

fn baseline_gemm(x: &Array2<f32>, cl: &[Vec<usize>], m: &[f32]) -> Array2<f32> {
    let (n, nc) = x.dim();
    let mut y = Array2::zeros((n, nc));
    for (xr, mut yr) in x.outer_iter().zip(y.outer_iter_mut()) {
        let xs = xr.as_slice().unwrap_or(&[]);
        let ys = yr.as_slice_mut().unwrap();
        for c in cl {
            let k = c.len();
            let (x0, y0) = (&xs[c[0]..c[0] + k], &mut ys[c[0]..c[0] + k]);
            for a in 0..k {
                let xa = x0[a];
                for b in 0..k {
                    y0[b] += xa * m[a * k + b];
                }
            }
        }
    }
    y
}

/// Medians, GFLOP/s and per-chunk percentiles, printed as tables.
fn summary(_c: &mut Criterion) {
    let engines = engines();
    let x = data(CHUNK * N_CHUNKS, 384, 1);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("\nLRR summary (load average at start: {})", load.trim());
    println!(
        "384 channels, 8 clusters of 48, 10 chunks of 30 000 samples: median wall time of 5 \
         runs (mean process CPU time per run, all threads)"
    );
    println!("| engine | partial_fit | XᵀX GFLOP/s | solve | transform | transform GFLOP/s |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    let fit_flop = 2.0 * syrk_fma(CHUNK * N_CHUNKS, 8, 48);
    let tr_flop = 2.0 * gemm_fma(CHUNK * N_CHUNKS, 8, 48);
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    for (name, e) in &engines {
        let (tf, cf) = timed(5, || {
            let t0 = Instant::now();
            let mut op = fit_all(e, &x);
            op.covariance().expect("sync");
            t0.elapsed()
        });
        let mut op = fit_all(e, &x);
        let tiny = x.slice(s![0..1, ..]);
        let (ts, _) = timed(5, || {
            op.partial_fit(tiny).expect("chunk");
            op.covariance().expect("sync");
            let t0 = Instant::now();
            op.solve().expect("solve");
            t0.elapsed()
        });
        let (tt, ct) = timed(5, || {
            let t0 = Instant::now();
            for k in 0..N_CHUNKS {
                black_box(
                    op.transform(x.slice(s![k * CHUNK..(k + 1) * CHUNK, ..]))
                        .expect("chunk"),
                );
            }
            t0.elapsed()
        });
        let mut out = Array2::<f32>::zeros((CHUNK, 384));
        let (ti, ci) = timed(5, || {
            let t0 = Instant::now();
            for k in 0..N_CHUNKS {
                op.transform_into(x.slice(s![k * CHUNK..(k + 1) * CHUNK, ..]), out.view_mut())
                    .expect("chunk");
            }
            black_box(&out);
            t0.elapsed()
        });
        println!(
            "| {name} | {:.1} ms ({:.0} ms CPU) | {:.1} | {:.2} ms | {:.1} ms ({:.0} ms CPU); \
             into a reused buffer {:.1} ms ({:.0} ms CPU) | {:.1}; {:.1} |",
            ms(tf),
            ms(cf),
            fit_flop / tf.as_secs_f64() / 1e9,
            ms(ts),
            ms(tt),
            ms(ct),
            ms(ti),
            ms(ci),
            tr_flop / tt.as_secs_f64() / 1e9,
            tr_flop / ti.as_secs_f64() / 1e9,
        );
    }
    let cl = clusters(8, 48);
    let (tb, cb) = timed(1, || {
        let t0 = Instant::now();
        black_box(baseline_syrk(&x, &cl));
        t0.elapsed()
    });
    let m: Vec<f32> = (0..48 * 48)
        .map(|i| if i % 49 == 0 { 1.0 } else { -0.01 })
        .collect();
    let (tg, cg) = timed(1, || {
        let t0 = Instant::now();
        black_box(baseline_gemm(&x, &cl, &m));
        t0.elapsed()
    });
    println!(
        "| baseline (scalar, 1 thread) | {:.1} ms ({:.0} ms CPU) | {:.1} | | {:.1} ms ({:.0} ms CPU) | {:.1} |",
        ms(tb),
        ms(cb),
        fit_flop / tb.as_secs_f64() / 1e9,
        ms(tg),
        ms(cg),
        tr_flop / tg.as_secs_f64() / 1e9,
    );

    let xs = data(60_000, 512, 2);
    println!(
        "\nstreaming, 512 channels in 8 clusters of 64, 20-sample chunks, partial_fit + transform"
    );
    println!("| engine | update_every | chunks | p50 | p99 | max |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    for (name, e) in &engines {
        for every in [0u64, 30_000] {
            let mut op = Lrr::new(e, settings(8, 64, every)).expect("operator");
            op.partial_fit(xs.slice(s![0..2000, ..])).expect("warm");
            let n = if name == &"cpu" { 2000 } else { 500 };
            let mut t = Vec::with_capacity(n);
            for i in 0..n {
                let a = 2000 + 20 * i;
                let chunk = xs.slice(s![a..a + 20, ..]);
                let t0 = Instant::now();
                op.partial_fit(chunk).expect("fit");
                black_box(op.transform(chunk).expect("transform"));
                t.push(t0.elapsed());
            }
            t.sort();
            let p = |q: f64| t[((t.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6;
            support::record_secs(&format!("lrr/stream/{name}/{every}/p50"), p(0.5) * 1e-6);
            support::record_secs(&format!("lrr/stream/{name}/{every}/p99"), p(0.99) * 1e-6);
            println!(
                "| {name} | {every} | {n} | {:.1} µs | {:.1} µs | {:.1} µs |",
                p(0.5),
                p(0.99),
                p(1.0)
            );
        }
    }
}

criterion_group!(benches, summary, throughput, streaming);
criterion_main!(benches);
