//! Recurrent Poisson GLM benchmarks (SPEC §6: 50–1000 neurons, window 100, 10 basis
//! functions, 1–1024 trials; TARGETS.md: 50 neurons × 10 000 steps ≤ 60 ms on the CPU path,
//! ≤ 180 ms on lavapipe).
//!
//! `cargo bench --bench glm` runs the target workload under criterion (CPU, GPU, and the
//! plain dense `f64` Rust baseline: the seed's recurrence with the window kept as rows), then
//! prints a table of steps per second and neuron-steps per second for 50, 200 and 1000
//! neurons × 1, 64 and 1024 trials on both engines. Bigger configurations run fewer steps
//! (the table says how many) so the whole run stays within minutes on a software adapter.
//! `GLM_BENCH_QUICK=1` runs only the table's smallest configurations.
//! The GPU engine is the adapter `Engine::gpu(&GpuOptions::software_ok())` picks (set
//! `WGPU_BACKEND`); without one, GPU rows are skipped with a note.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use ndarray::{Array1, Array2, Array3};
use neurokernels::glm::Link;
use neurokernels::glm::{RaisedCosineLogEval, RecurrentGlm, Sampling};
use neurokernels::{Engine, GpuOptions};

/// A stable network of `n` neurons firing about 0.05 spikes per step.
struct Net {
    cc: Array3<f64>,
    ffc: Array2<f64>,
    icp: Array1<f64>,
    basis: Array2<f64>,
    init: Array2<f64>,
}

const WS: usize = 100;
const NB: usize = 10;

fn net(n: usize) -> Net {
    let (_, basis) = RaisedCosineLogEval::new(NB)
        .evaluate_on_grid(WS)
        .expect("basis");
    let colsum: Vec<f64> = (0..NB).map(|b| basis.column(b).sum()).collect();
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut uni = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    };
    let g = 0.5 / n as f64;
    Net {
        cc: Array3::from_shape_fn((n, n, NB), |(_, _, b)| g * uni() / (colsum[b] * NB as f64)),
        ffc: Array2::from_elem((n, 1), 0.1),
        icp: Array1::from_elem(n, (0.05f64).exp_m1().ln()),
        basis,
        init: Array2::zeros((WS, n)),
    }
}

fn op(e: &Engine, net: &Net, trials: usize) -> RecurrentGlm {
    let mut g = RecurrentGlm::new(
        e,
        net.cc.view().into_dyn(),
        net.ffc.view().into_dyn(),
        net.icp.view().into_dyn(),
        net.basis.view().into_dyn(),
        Link::Softplus,
    )
    .expect("model");
    let seeds: Vec<u64> = (0..trials as u64).collect();
    g.start(net.init.view().into_dyn(), &seeds, Sampling::Poisson)
        .expect("start");
    g
}

fn input(n: usize, steps: usize) -> Array3<f64> {
    Array3::from_shape_fn((steps, n, 1), |(t, i, _)| ((t + 7 * i) as f64 * 0.01).sin())
}

/// The seed's recurrence in plain Rust, `f64`, window kept as rows, dense: the baseline.
fn baseline(net: &Net, ff: &Array3<f64>) -> f64 {
    let n = net.icp.len();
    let steps = ff.shape()[0];
    let mut window = net.init.clone();
    let mut conv = vec![0.0f64; n * NB];
    let mut total = 0.0;
    let mut state = 12345u64;
    for t in 0..steps {
        conv.iter_mut().for_each(|c| *c = 0.0);
        for w in 0..WS {
            let brow = net.basis.row(WS - 1 - w);
            for j in 0..n {
                let y = window[[w, j]];
                for b in 0..NB {
                    conv[j * NB + b] += y * brow[b];
                }
            }
        }
        let mut row = vec![0.0; n];
        for i in 0..n {
            let c = net.cc.slice(ndarray::s![i, .., ..]);
            let x: f64 = c.iter().zip(&conv).map(|(a, b)| a * b).sum::<f64>()
                + net.ffc[[i, 0]] * ff[[t, i, 0]]
                + net.icp[i];
            let r = x.max(0.0) + (-x.abs()).exp().ln_1p();
            // Bernoulli stand-in for the draw (a cheap generator): the baseline times the
            // arithmetic, not a Poisson sampler.
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let u = (state >> 11) as f64 / (1u64 << 53) as f64;
            row[i] = (u < r) as u8 as f64;
            total += r;
        }
        for w in 0..WS - 1 {
            for j in 0..n {
                window[[w, j]] = window[[w + 1, j]];
            }
        }
        for j in 0..n {
            window[[WS - 1, j]] = row[j];
        }
    }
    total
}

fn gpu() -> Option<Engine> {
    match Engine::gpu(&GpuOptions::software_ok()) {
        Ok(e) => Some(e),
        Err(err) => {
            eprintln!("no GPU adapter ({err}): GPU rows skipped");
            None
        }
    }
}

/// Median wall time of `reps` runs of `steps` steps (a fresh start each run).
fn time(e: &Engine, net: &Net, trials: usize, steps: usize, reps: usize) -> Duration {
    let n = net.icp.len();
    let ff = input(n, steps);
    let mut times = Vec::new();
    for _ in 0..reps {
        let mut g = op(e, net, trials);
        let t0 = Instant::now();
        let out = g.run(ff.view().into_dyn()).expect("run");
        times.push(t0.elapsed());
        std::hint::black_box(out);
    }
    times.sort();
    times[times.len() / 2]
}

fn target(c: &mut Criterion) {
    let net = net(50);
    let steps = 10_000;
    let ff = input(50, steps);
    let mut group = c.benchmark_group("glm_50n_w100_b10_10000steps");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    group.bench_function("baseline_dense_f64", |b| {
        b.iter(|| std::hint::black_box(baseline(&net, &ff)))
    });
    let cpu = Engine::cpu();
    group.bench_function("cpu", |b| {
        b.iter_batched(
            || op(&cpu, &net, 1),
            |mut g| g.run(ff.view().into_dyn()).expect("run"),
            criterion::BatchSize::PerIteration,
        )
    });
    if let Some(gpu) = gpu() {
        println!("GPU adapter: {}", gpu.describe());
        group.bench_function("gpu", |b| {
            b.iter_batched(
                || op(&gpu, &net, 1),
                |mut g| g.run(ff.view().into_dyn()).expect("run"),
                criterion::BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

fn table(_c: &mut Criterion) {
    let quick = std::env::var("GLM_BENCH_QUICK").is_ok_and(|v| !v.is_empty());
    let gpu = gpu();
    let mut engines = vec![("cpu", Engine::cpu())];
    if let Some(g) = gpu {
        engines.push(("gpu", g));
    }
    println!(
        "\n{:<6} {:>7} {:>7} {:>7} {:>11} {:>12} {:>16}",
        "engine", "neurons", "trials", "steps", "time (ms)", "steps/s", "neuron-steps/s"
    );
    for &n in &[50usize, 200, 1000] {
        let net = net(n);
        for &trials in &[1usize, 64, 1024] {
            if quick && (n > 50 || trials > 64) {
                continue;
            }
            for (name, e) in &engines {
                // State the engine keeps (twice: committed and working copy): f64 rings on
                // the CPU, padded f32 rings on the GPU. Configurations above 1 GiB are skipped.
                let per_trial = if *name == "gpu" {
                    WS * n * NB.div_ceil(4) * 16
                } else {
                    WS * n * NB * 8
                };
                let state = 2 * per_trial * trials;
                if state > 1 << 30 {
                    println!(
                        "{name:<6} {n:>7} {trials:>7}       – skipped: {:.1} GiB of state",
                        state as f64 / (1u64 << 30) as f64
                    );
                    continue;
                }
                // Work per step ∝ n²·trials; keep each run to a few seconds at most.
                let budget = if *name == "gpu" { 5e7 } else { 5e8 };
                let steps = ((budget / (n * n * trials) as f64) as usize).clamp(10, 10_000);
                let reps = if steps >= 1000 { 3 } else { 1 };
                let t = time(e, &net, trials, steps, reps);
                let secs = t.as_secs_f64();
                println!(
                    "{name:<6} {n:>7} {trials:>7} {steps:>7} {:>11.1} {:>12.0} {:>16.3e}",
                    secs * 1e3,
                    steps as f64 / secs,
                    (steps * n * trials) as f64 / secs
                );
            }
        }
    }
    println!(
        "(steps/s counts steps of the whole batch; neuron-steps/s = steps × neurons × trials / s)"
    );
}

criterion_group!(benches, target, table);
criterion_main!(benches);
