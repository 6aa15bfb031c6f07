//! Covariance accumulation and linear regression rereferencing (SPEC §2) on both engines,
//! against a plain sequential `f64` truth written here (nalgebra for the solves), against
//! each other, and against the Python package's own vectors (`tests/reference/lrr`).
//!
//! Groups, by prefix: `fit_*`, `partial_fit_*`, `transform_*` (definitions and GPU-vs-CPU
//! parity), `closed_form_*` (each channel's LRR residual is the OLS/ridge residual on the
//! other channels of its cluster), `precision_*` (W against an `f64` solve of the engine's
//! own `C` at condition numbers 1e2, 1e4, 1e6), `accumulation_*` (the compensated `C`
//! against an `f64` accumulation on adversarial data; the 10⁸-sample version is ignored in
//! CI: `cargo test --release --test lrr -- --ignored accumulation_1e8`), `chunking_*`,
//! `special_*` (dead channel, singular cluster, permuted clusters, full covariance),
//! `policy_*` (lazy solves), `io_*`, `reference_*`, `error_*` (each bad input: typed error,
//! state unchanged, checked against a twin that never saw it). Every test exists as `*_cpu`
//! and `*_gpu`; GPU tests fail, never skip, without an adapter (`WGPU_BACKEND=vulkan` or
//! `gl` picks the backend).

mod support;

use support::{gpu_per_thread as gpu, rng};

use std::path::{Path, PathBuf};

use nalgebra::DMatrix;
use ndarray::{s, Array2, ArrayView2, Axis};
use neurokernels::lrr::{read_csv, write_csv, Lrr, LrrSettings, WeightsSource};
use neurokernels::{DeviceArray, Engine, Error};
use rand::Rng;
use rand_pcg::Pcg64;

// ---------------------------------------------------------------------------------------------
// Engines and helpers

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Eng {
    Cpu,
    Gpu,
}

impl Eng {
    fn engine(self) -> Engine {
        match self {
            Eng::Cpu => Engine::cpu(),
            Eng::Gpu => gpu(),
        }
    }
}

/// Defines `NAME_cpu` and `NAME_gpu` tests calling `NAME(Eng)`.
macro_rules! both {
    ($($name:ident),* $(,)?) => {
        mod on_cpu {
            $( #[test] fn $name() { super::$name(super::Eng::Cpu) } )*
        }
        mod on_gpu {
            $( #[test] fn $name() { super::$name(super::Eng::Gpu) } )*
        }
    };
}

/// Standard normal (Box–Muller).
fn normal(r: &mut Pcg64) -> f64 {
    let u1: f64 = r.random::<f64>().max(1e-300);
    let u2: f64 = r.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// Common-reference data: `x_j = g_j·s + h_j·t + σ·e_j` with two shared sources `s`, `t`
/// (unit variance), gains in `[0.5, 1.5]`, and independent unit noise scaled by `sigma`,
/// plus a per-channel scale `10^u`, `u ∈ [−1, 1]` (so channels differ in amplitude).
fn common_ref(n: usize, nc: usize, sigma: f64, seed: u64) -> Array2<f32> {
    let mut r = rng(seed);
    let g: Vec<f64> = (0..nc).map(|_| r.random_range(0.5..1.5)).collect();
    let h: Vec<f64> = (0..nc).map(|_| r.random_range(-0.3..0.3)).collect();
    let scale: Vec<f64> = (0..nc)
        .map(|_| 10f64.powf(r.random_range(-1.0..1.0)))
        .collect();
    let mut x = Array2::zeros((n, nc));
    for i in 0..n {
        let s = normal(&mut r);
        let t = normal(&mut r);
        for j in 0..nc {
            x[[i, j]] = (scale[j] * (g[j] * s + h[j] * t + sigma * normal(&mut r))) as f32;
        }
    }
    x
}

/// `f64` `XᵀX` of all channels (plain sequential sums of exact products).
fn xtx(chunks: &[ArrayView2<'_, f32>]) -> Array2<f64> {
    let nc = chunks[0].ncols();
    let mut c = Array2::<f64>::zeros((nc, nc));
    for x in chunks {
        for row in x.outer_iter() {
            let r: Vec<f64> = row.iter().map(|&v| v as f64).collect();
            for i in 0..nc {
                let ri = r[i];
                if ri == 0.0 {
                    continue;
                }
                for j in 0..nc {
                    c[[i, j]] += ri * r[j];
                }
            }
        }
    }
    c
}

/// SPEC §2's `W` from `C` in `f64` with nalgebra: `Cinv = (C[c,c] + λI)⁻¹` (pseudo-inverse
/// if singular), `W[:,j] = −Cinv[:,j]/Cinv[j,j]`, zero diagonal, zero outside clusters.
fn truth_w(c: &Array2<f64>, clusters: &[Vec<usize>], lambda: f64) -> Array2<f64> {
    let n = c.nrows();
    let mut w = Array2::zeros((n, n));
    for cl in clusters {
        let k = cl.len();
        if k < 2 {
            continue;
        }
        let m = DMatrix::from_fn(k, k, |i, j| {
            c[[cl[i], cl[j]]] + if i == j { lambda } else { 0.0 }
        });
        let inv = match m.clone().try_inverse() {
            Some(i) => i,
            None => m.pseudo_inverse(1e-12).expect("pinv"),
        };
        for j in 0..k {
            let d = inv[(j, j)];
            if d == 0.0 {
                continue;
            }
            for i in 0..k {
                if i != j {
                    w[[cl[i], cl[j]]] = -inv[(i, j)] / d;
                }
            }
        }
    }
    w
}

/// `X·(I − W)` in `f64`.
fn apply(x: ArrayView2<'_, f32>, w: &Array2<f64>) -> Array2<f64> {
    let xf = x.mapv(|v| v as f64);
    let n = w.nrows();
    let m = Array2::<f64>::eye(n) - w;
    xf.dot(&m)
}

fn frob(a: &Array2<f64>) -> f64 {
    a.iter().map(|v| v * v).sum::<f64>().sqrt()
}

fn rel_frob(got: &Array2<f64>, want: &Array2<f64>) -> f64 {
    frob(&(got - want)) / frob(want).max(1e-300)
}

/// `max |ΔC_ij| / √(C_ii·C_jj)` over the entries where `want` is defined (nonzero
/// diagonal), i.e. the error in units of the entry's Cauchy–Schwarz scale.
fn cov_err(got: &Array2<f64>, want: &Array2<f64>) -> f64 {
    let n = want.nrows();
    let mut worst: f64 = 0.0;
    for i in 0..n {
        for j in 0..n {
            let sc = (want[[i, i]] * want[[j, j]]).sqrt();
            if sc > 0.0 {
                worst = worst.max((got[[i, j]] - want[[i, j]]).abs() / sc);
            }
        }
    }
    worst
}

/// `want` restricted to the accumulated blocks (cluster blocks, or everything when full).
fn block_mask(c: &Array2<f64>, clusters: &[Vec<usize>], full: bool) -> Array2<f64> {
    if full {
        return c.clone();
    }
    let mut out = Array2::zeros(c.dim());
    for cl in clusters {
        for &i in cl {
            for &j in cl {
                out[[i, j]] = c[[i, j]];
            }
        }
    }
    out
}

/// Max abs difference relative to `scale`.
fn max_abs_diff(a: &Array2<f64>, b: &Array2<f64>) -> f64 {
    a.iter()
        .zip(b.iter())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

fn rms(a: &Array2<f64>) -> f64 {
    (a.iter().map(|v| v * v).sum::<f64>() / a.len().max(1) as f64).sqrt()
}

fn to64(a: &Array2<f32>) -> Array2<f64> {
    a.mapv(|v| v as f64)
}

fn lrr(eng: Eng, settings: LrrSettings) -> Lrr {
    Lrr::new(&eng.engine(), settings).expect("operator")
}

/// Unequal clusters over 40 channels: sizes 5 and 17, a singleton, channels 23..26 in no
/// cluster, and a cluster listed in scrambled order.
fn mixed_clusters() -> Vec<Vec<usize>> {
    vec![
        (0..5).collect(),
        (5..22).collect(),
        vec![22],
        vec![31, 26, 39, 27, 35, 28, 30, 33, 29, 38, 32, 37, 34, 36],
    ]
}

fn settings(clusters: Option<Vec<Vec<usize>>>, lambda: f64) -> LrrSettings {
    LrrSettings {
        channel_clusters: clusters,
        ridge_lambda: lambda,
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------------------------
// fit / partial_fit / transform

/// `fit` on mixed clusters, ridge 0 and 0.5·(mean diagonal): `C` (blocks), `W` and `Y`
/// against the `f64` truth; on the GPU, parity with the CPU.
fn fit_matches_truth(eng: Eng) {
    let x = common_ref(3000, 40, 0.3, 11);
    let c64 = xtx(&[x.view()]);
    let mean_diag = c64.diag().mean().unwrap_or(1.0);
    for lambda in [0.0, 0.5 * mean_diag] {
        let cl = mixed_clusters();
        let mut op = lrr(eng, settings(Some(cl.clone()), lambda));
        assert!(op.fit(x.view()).unwrap());
        assert_eq!(op.n_samples(), 3000);
        assert_eq!(op.accumulates_full_covariance(), Some(false));
        let c = op.covariance().unwrap();
        let err = cov_err(&c, &block_mask(&c64, &cl, false));
        assert!(err < 1e-6, "λ {lambda}: C error {err:e}");
        // Entries outside the blocks are zero.
        assert_eq!(c[[0, 5]], 0.0);
        assert_eq!(c[[23, 23]], 0.0);
        let w = op.weights().unwrap();
        let wt = truth_w(&c64, &cl, lambda);
        let werr = rel_frob(&w, &wt);
        assert!(werr < 1e-4, "λ {lambda}: W error {werr:e}");
        assert!((0..40).all(|i| w[[i, i]] == 0.0));
        let y = to64(&op.transform(x.view()).unwrap());
        let yt = apply(x.view(), &wt);
        let yerr = max_abs_diff(&y, &yt) / rms(&yt);
        assert!(yerr < 1e-4, "λ {lambda}: Y error {yerr:e}");
        // Pass-through and singleton channels are unchanged, bit for bit.
        for ch in [22usize, 23, 24, 25] {
            for i in 0..3000 {
                assert_eq!(y[[i, ch]] as f32, x[[i, ch]], "channel {ch} sample {i}");
            }
        }
        if eng == Eng::Gpu {
            let mut cpu = lrr(Eng::Cpu, settings(Some(cl.clone()), lambda));
            cpu.fit(x.view()).unwrap();
            let wc = cpu.weights().unwrap();
            let p = rel_frob(&w, &wc);
            assert!(p < 1e-4, "λ {lambda}: W parity {p:e}");
            let yc = to64(&cpu.transform(x.view()).unwrap());
            let p = max_abs_diff(&y, &yc) / rms(&yc);
            assert!(p < 1e-4, "λ {lambda}: Y parity {p:e}");
            let p = cov_err(&c, &cpu.covariance().unwrap());
            assert!(p < 2e-6, "λ {lambda}: C parity {p:e}");
        }
    }
}

/// A `partial_fit` sequence (with a NaN chunk that is skipped and counted), incremental on
/// and off: `C`, `n_samples` and `W` after each step against the truth of the accepted
/// chunks; GPU-vs-CPU parity.
fn partial_fit_sequences(eng: Eng) {
    let x = common_ref(2600, 24, 0.5, 12);
    let bounds = [0usize, 700, 760, 1300, 1300, 2000, 2600];
    let cl = vec![(0..9).collect::<Vec<_>>(), (9..24).collect()];
    for incremental in [true, false] {
        let set = LrrSettings {
            incremental,
            ..settings(Some(cl.clone()), 0.0)
        };
        let mut op = lrr(eng, set.clone());
        let mut cpu = lrr(Eng::Cpu, set);
        let mut accepted: Vec<ArrayView2<'_, f32>> = Vec::new();
        let mut nan_chunk = x.slice(s![0..50, ..]).to_owned();
        nan_chunk[[17, 3]] = f32::NAN;
        for (step, w) in bounds.windows(2).enumerate() {
            let chunk = x.slice(s![w[0]..w[1], ..]);
            assert!(op.partial_fit(chunk).unwrap());
            cpu.partial_fit(chunk).unwrap();
            if chunk.nrows() > 0 {
                if incremental {
                    accepted.push(chunk);
                } else {
                    accepted = vec![chunk];
                }
            }
            if step == 2 {
                assert!(!op.partial_fit(nan_chunk.view()).unwrap());
                assert_eq!(op.skipped_chunks(), 1);
            }
            let rows: usize = accepted.iter().map(|a| a.nrows()).sum();
            assert_eq!(op.n_samples(), rows as u64, "step {step}");
            let c64 = xtx(&accepted);
            let c = op.covariance().unwrap();
            let err = cov_err(&c, &block_mask(&c64, &cl, false));
            assert!(
                err < 1e-6,
                "incremental {incremental} step {step}: C error {err:e}"
            );
            let w = op.weights().unwrap();
            let werr = rel_frob(&w, &truth_w(&c64, &cl, 0.0));
            assert!(
                werr < 1e-4,
                "incremental {incremental} step {step}: W {werr:e}"
            );
            if eng == Eng::Gpu {
                let p = rel_frob(&w, &cpu.weights().unwrap());
                assert!(p < 1e-4, "step {step}: W parity {p:e}");
            }
        }
    }
}

/// `transform` of host and device chunks (device output chained into a second
/// transform), equal to the host path; parity with the CPU; empty chunks.
fn transform_host_and_device(eng: Eng) {
    let x = common_ref(1000, 40, 0.3, 13);
    let cl = mixed_clusters();
    let mut op = lrr(eng, settings(Some(cl.clone()), 0.0));
    op.fit(x.view()).unwrap();
    let probe = common_ref(333, 40, 0.3, 14);
    let y = op.transform(probe.view()).unwrap();
    // Any strides: a transposed copy viewed back.
    let t = probe.t().to_owned();
    let y2 = op.transform(t.t()).unwrap();
    assert_eq!(y, y2);
    assert_eq!(
        op.transform(probe.slice(s![0..0, ..])).unwrap().dim(),
        (0, 40)
    );
    match eng {
        Eng::Cpu => {}
        Eng::Gpu => {
            let Engine::Gpu(ctx) = gpu() else {
                unreachable!()
            };
            let d = DeviceArray::upload(&ctx, probe.view().into_dyn()).unwrap();
            // The CPU engine has no device path.
            let mut cpu_op = lrr(Eng::Cpu, settings(Some(cl.clone()), 0.0));
            cpu_op.fit(x.view()).unwrap();
            assert!(matches!(
                cpu_op.transform_device(&d),
                Err(Error::DeviceArray(_))
            ));
            let yd = op.transform_device(&d).unwrap();
            let yh: Array2<f32> = yd.to_host::<f32>().unwrap().into_dimensionality().unwrap();
            assert_eq!(yh, y);
            // Chained: a second transform of the device output.
            let yy = op.transform_device(&yd).unwrap();
            let yy_host = op.transform(y.view()).unwrap();
            let yyh: Array2<f32> = yy.to_host::<f32>().unwrap().into_dimensionality().unwrap();
            assert_eq!(yyh, yy_host);
            let mut cpu = lrr(Eng::Cpu, settings(Some(cl.clone()), 0.0));
            cpu.fit(x.view()).unwrap();
            let yc = to64(&cpu.transform(probe.view()).unwrap());
            let p = max_abs_diff(&to64(&y), &yc) / rms(&yc);
            assert!(p < 1e-4, "Y parity {p:e}");
        }
    }
}

/// The quad kernels (`lrr_quad.wgsl`, layouts of aligned 4-channel runs) give the bits of
/// the kernels for any layout: an aligned layout of 28 channels (clusters of 4 and 20, a
/// partial 16-output job, 4 pass-through channels) against the same data with a 29th
/// channel appended (29 is no multiple of 4: the general kernels). `C`, `W` and `Y` (host and
/// device chunks of 1, 13 and 1037 rows, an empty one) are equal; which kernels ran is
/// asserted, and which layouts qualify.
fn transform_quad_kernels_match_any_layout(eng: Eng) {
    let cl: Vec<Vec<usize>> = vec![(0..4).collect(), (4..24).collect()];
    let x29 = common_ref(1037, 29, 0.3, 16);
    let x28 = x29.slice(s![.., 0..28]).to_owned();
    let mut quad = lrr(eng, settings(Some(cl.clone()), 0.0));
    let mut any = lrr(eng, settings(Some(cl.clone()), 0.0));
    for w in [0usize, 1, 500, 1037].windows(2) {
        quad.partial_fit(x28.slice(s![w[0]..w[1], ..])).unwrap();
        any.partial_fit(x29.slice(s![w[0]..w[1], ..])).unwrap();
    }
    let gpu_eng = eng == Eng::Gpu;
    assert_eq!(quad.quad_kernels(), gpu_eng.then_some(true));
    assert_eq!(any.quad_kernels(), gpu_eng.then_some(false));
    let (cq, ca) = (quad.covariance().unwrap(), any.covariance().unwrap());
    assert_eq!(cq, ca.slice(s![0..28, 0..28]));
    let (wq, wa) = (quad.weights().unwrap(), any.weights().unwrap());
    assert_eq!(wq, wa.slice(s![0..28, 0..28]));
    assert!(wq[[5, 6]] != 0.0);
    for rows in [0usize, 1, 13, 1037] {
        let yq = quad.transform(x28.slice(s![0..rows, ..])).unwrap();
        let ya = any.transform(x29.slice(s![0..rows, ..])).unwrap();
        assert_eq!(yq, ya.slice(s![.., 0..28]), "{rows} rows");
        if gpu_eng && rows > 0 {
            let Engine::Gpu(ctx) = gpu() else {
                unreachable!()
            };
            let d = DeviceArray::upload(&ctx, x28.slice(s![0..rows, ..]).into_dyn()).unwrap();
            let yd = quad.transform_device(&d).unwrap();
            let yh: Array2<f32> = yd.to_host::<f32>().unwrap().into_dimensionality().unwrap();
            assert_eq!(yh, yq, "{rows} device rows");
        }
    }
    // Layouts that do not qualify: a cluster off the 4-grid, a size no multiple of 4, a
    // cluster with a gap; one that does: no clusters at all (one of every channel).
    let y8 = common_ref(40, 8, 0.3, 17);
    for (clusters, want) in [
        (Some(vec![(1..5).collect::<Vec<_>>()]), false),
        (Some(vec![(0..6).collect()]), false),
        (Some(vec![vec![0, 1, 2, 4]]), false),
        (None, true),
    ] {
        let mut op = lrr(eng, settings(clusters.clone(), 0.0));
        op.fit(y8.view()).unwrap();
        assert_eq!(op.quad_kernels(), gpu_eng.then_some(want), "{clusters:?}");
    }
}

/// Chunks large enough for the CPU engine's multi-threaded path (clusters read in place:
/// contiguous, sizes multiple of 16; a scattered cluster; pass-through channels): `C`, `Y`
/// and `transform_into` against the truth; a NaN is skipped, ±inf and too-large values are
/// errors naming their position (in a cluster channel and in a pass-through channel), a
/// value of exactly 1e15 is accepted.
fn large_chunks(eng: Eng) {
    let nc = 80;
    let mut x = common_ref(20_000, nc, 0.3, 15);
    let cl = vec![
        (0..32).collect::<Vec<_>>(),
        (32..64).collect(),
        vec![64, 66, 68, 70, 72, 74, 76],
    ];
    let c64 = xtx(&[x.view()]);
    let mut op = lrr(eng, settings(Some(cl.clone()), 0.0));
    assert!(op.partial_fit(x.view()).unwrap());
    let e = cov_err(&op.covariance().unwrap(), &block_mask(&c64, &cl, false));
    assert!(e < 1e-6, "C error {e:e}");
    let wt = truth_w(&c64, &cl, 0.0);
    let y = op.transform(x.view()).unwrap();
    let yt = apply(x.view(), &wt);
    let ey = max_abs_diff(&to64(&y), &yt) / rms(&yt);
    assert!(ey < 1e-4, "Y error {ey:e}");
    let mut y2 = Array2::zeros(x.dim());
    op.transform_into(x.view(), y2.view_mut()).unwrap();
    assert_eq!(y2, y);
    let mut yt2 = Array2::zeros(x.t().dim());
    op.transform_into(x.view(), yt2.view_mut().reversed_axes())
        .unwrap();
    assert_eq!(yt2.t(), y);
    assert!(matches!(
        op.transform_into(x.view(), Array2::zeros((3, nc)).view_mut()),
        Err(Error::Shape { what: "out", .. })
    ));
    let c_before = op.covariance().unwrap();
    for (s_, ch, v, what) in [
        (15_000usize, 40usize, f32::NAN, "nan"),
        (12_345, 5, f32::INFINITY, "inf"),
        (19_999, 65, -f32::INFINITY, "inf"),
        (3, 70, 2e15, "big"),
        (7, 79, -5e15, "big"),
    ] {
        let old = x[[s_, ch]];
        x[[s_, ch]] = v;
        let r = op.partial_fit(x.view());
        match what {
            "nan" => assert!(!r.unwrap()),
            _ => assert!(
                matches!(r, Err(Error::NonFinite { sample, channel, .. }) if sample == s_ && channel == ch),
                "{what} at ({s_}, {ch})"
            ),
        }
        x[[s_, ch]] = old;
    }
    assert_eq!(op.n_samples(), 20_000);
    assert_eq!(op.covariance().unwrap(), c_before);
    x[[100, 3]] = 1e15;
    assert!(op.partial_fit(x.view()).unwrap());
    assert_eq!(op.n_samples(), 40_000);
}

// ---------------------------------------------------------------------------------------------
// closed forms

/// Each channel's LRR output is its least-squares residual on the other channels of its
/// cluster (ridge: the ridge residual), solved independently with nalgebra.
fn closed_form_residuals(eng: Eng) {
    let x = common_ref(1500, 20, 0.4, 21);
    let cl = vec![(0..8).collect::<Vec<_>>(), (8..20).collect()];
    let c64 = xtx(&[x.view()]);
    for lambda in [0.0, 0.1 * c64.diag().mean().unwrap()] {
        let mut op = lrr(eng, settings(Some(cl.clone()), lambda));
        op.fit(x.view()).unwrap();
        let y = to64(&op.transform(x.view()).unwrap());
        let xf = to64(&x);
        for members in &cl {
            for &j in members {
                let others: Vec<usize> = members.iter().copied().filter(|&o| o != j).collect();
                let a = DMatrix::from_fn(x.nrows(), others.len(), |r, c| xf[[r, others[c]]]);
                let b = DMatrix::from_fn(x.nrows(), 1, |r, _| xf[[r, j]]);
                let mut ata = a.transpose() * &a;
                for d in 0..others.len() {
                    ata[(d, d)] += lambda;
                }
                let beta = ata.cholesky().expect("spd").solve(&(a.transpose() * &b));
                let resid = &b - &a * beta;
                let scale = b.norm() / (x.nrows() as f64).sqrt();
                let worst = (0..x.nrows())
                    .map(|r| (resid[(r, 0)] - y[[r, j]]).abs())
                    .fold(0.0, f64::max);
                assert!(
                    worst < 1e-4 * scale,
                    "λ {lambda} channel {j}: residual differs by {worst:e} (scale {scale:e})"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// precision

/// `W` against an `f64` solve of the engine's own `C` (read back) at condition numbers
/// 1e2, 1e4, 1e6: within 1e-5 relative (Frobenius). Also prints `W` against `f64` from
/// scratch (reported, not bounded: a 1e-6 error in `C` may move `W` by κ·1e-6).
fn precision_condition_numbers(eng: Eng) {
    let nc = 32;
    let cl = vec![(0..24).collect::<Vec<_>>(), (24..32).collect()];
    for (target, seed) in [(1e2f64, 31u64), (1e4, 32), (1e6, 33)] {
        // Two shared sources over 24 channels: κ ≈ Σg²/σ² for the equilibrated block.
        let sigma = (24.0f64 / target).sqrt();
        let x = common_ref(6000, nc, sigma, seed);
        let c64 = xtx(&[x.view()]);
        let kappa = {
            let k = cl[0].len();
            let d: Vec<f64> = cl[0].iter().map(|&i| c64[[i, i]].sqrt()).collect();
            let m = DMatrix::from_fn(k, k, |i, j| c64[[cl[0][i], cl[0][j]]] / (d[i] * d[j]));
            let e = m.symmetric_eigenvalues();
            e.max() / e.min()
        };
        let mut op = lrr(eng, settings(Some(cl.clone()), 0.0));
        op.fit(x.view()).unwrap();
        let c = op.covariance().unwrap();
        let w = op.weights().unwrap();
        let own = truth_w(&c, &cl, 0.0);
        let e_own = rel_frob(&w, &own);
        let e_scratch = rel_frob(&w, &truth_w(&c64, &cl, 0.0));
        let e_c = cov_err(&c, &block_mask(&c64, &cl, false));
        println!(
            "{eng:?} κ(target) {target:.0e} κ(measured, equilibrated) {kappa:.2e}: \
             W vs f64 solve of own C {e_own:.2e}; W vs f64 from scratch {e_scratch:.2e}; \
             C error {e_c:.2e}"
        );
        assert!(e_own < 1e-5, "κ {kappa:e}: W vs own C {e_own:e}");
        assert!(e_c < 1e-6, "κ {kappa:e}: C {e_c:e}");
    }
}

// ---------------------------------------------------------------------------------------------
// compensated accumulation

/// Adversarial stream for the accumulator, generated chunk by chunk: a burst of 1000
/// samples at amplitude ~1500 first (so every later increment is far below half an `f32`
/// ulp of `C`), then a long stretch of amplitude ~1 with DC offsets, channels whose scales
/// span 1e-2..1e2, and a channel equal to another with random signs (its cross term
/// cancels). Returns chunk `i` of `len` samples.
fn adversarial_chunk(i: usize, len: usize, seed: u64) -> Array2<f32> {
    let nc = 6;
    let mut r = rng(seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut x = Array2::zeros((len, nc));
    for s in 0..len {
        let burst = i == 0 && s < 1000;
        let a = if burst { 1500.0 } else { 1.0 };
        let base: f64 = 1.0 + r.random::<f64>() * 2f64.powi(-12);
        let sign = if r.random::<bool>() { 1.0 } else { -1.0 };
        let v = [
            a * base,
            a * (0.5 + r.random::<f64>()),
            a * 1e-2 * (normal(&mut r) + 3.0),
            a * 1e2 * normal(&mut r),
            0.0,
            a * (r.random::<f64>() - 0.5),
        ];
        for (c, val) in v.iter().enumerate() {
            x[[s, c]] = *val as f32;
        }
        x[[s, 4]] = sign * x[[s, 1]];
    }
    x
}

/// Streams `n_chunks × len` adversarial samples; checks `C` against an `f64` accumulation
/// within 1e-6 of `√(C_ii·C_jj)`, and that plain `f32` accumulation (per sample, and of
/// 64-sample partials: what a two-sum optimised away would leave) fails on the same data.
fn accumulation_check(eng: Eng, n_chunks: usize, len: usize) {
    let nc = 6;
    let mut op = lrr(eng, settings(None, 0.0));
    let mut c64 = Array2::<f64>::zeros((nc, nc));
    let mut blocked = Array2::<f32>::zeros((nc, nc));
    for i in 0..n_chunks {
        let x = adversarial_chunk(i, len, 41);
        assert!(op.partial_fit(x.view()).unwrap());
        for blk in x.axis_chunks_iter(Axis(0), 64) {
            let mut part = Array2::<f32>::zeros((nc, nc));
            for row in blk.outer_iter() {
                for p in 0..nc {
                    for q in 0..nc {
                        part[[p, q]] += row[p] * row[q];
                        c64[[p, q]] += row[p] as f64 * row[q] as f64;
                    }
                }
            }
            blocked += &part;
        }
    }
    let c = op.covariance().unwrap();
    let err = cov_err(&c, &c64);
    let err_blocked = cov_err(&to64(&blocked), &c64);
    println!(
        "{eng:?}: {} samples: C error {err:.2e} (f32 sum of 64-sample partials: {err_blocked:.2e})",
        n_chunks * len
    );
    assert_eq!(op.n_samples(), (n_chunks * len) as u64);
    assert!(err < 1e-6, "compensated accumulation error {err:e}");
    assert!(
        err_blocked > 1e-4,
        "the data is not adversarial enough: plain f32 folding gives {err_blocked:e}"
    );
}

fn accumulation_adversarial_2e6(eng: Eng) {
    accumulation_check(eng, 20, 100_000);
}

#[test]
#[ignore = "long: 10⁸ samples; run with `cargo test --release --test lrr -- --ignored accumulation_1e8`"]
fn accumulation_1e8_cpu() {
    accumulation_check(Eng::Cpu, 200, 500_000);
}

#[test]
#[ignore = "long: 10⁸ samples; run with `cargo test --release --test lrr -- --ignored accumulation_1e8`"]
fn accumulation_1e8_gpu() {
    accumulation_check(Eng::Gpu, 200, 500_000);
}

// ---------------------------------------------------------------------------------------------
// chunking

/// The same stream in different chunkings gives the same `C` (within 1e-6 of the entry
/// scale; exactly the same `n_samples`) and the same `W` (within 1e-5).
fn chunking_invariance_of_c(eng: Eng) {
    let x = common_ref(5000, 30, 0.2, 51);
    let cl = vec![(0..13).collect::<Vec<_>>(), (13..30).collect()];
    let c64 = block_mask(&xtx(&[x.view()]), &cl, false);
    let mut cs = Vec::new();
    for chunk in [5000usize, 1000, 333, 64, 17, 1] {
        let mut op = lrr(eng, settings(Some(cl.clone()), 0.0));
        let n = if chunk == 1 { 400 } else { 5000 };
        for a in (0..n).step_by(chunk) {
            op.partial_fit(x.slice(s![a..(a + chunk).min(n), ..]))
                .unwrap();
        }
        assert_eq!(op.n_samples(), n as u64);
        if n == 5000 {
            let c = op.covariance().unwrap();
            let e = cov_err(&c, &c64);
            assert!(e < 1e-6, "chunks of {chunk}: C error {e:e}");
            cs.push((chunk, c, op.weights().unwrap()));
        } else {
            let want = block_mask(&xtx(&[x.slice(s![0..n, ..])]), &cl, false);
            let e = cov_err(&op.covariance().unwrap(), &want);
            assert!(e < 1e-6, "chunks of 1: C error {e:e}");
        }
    }
    for (chunk, c, w) in &cs[1..] {
        let e = cov_err(c, &cs[0].1);
        assert!(e < 2e-6, "chunks of {chunk} vs one chunk: C {e:e}");
        let e = rel_frob(w, &cs[0].2);
        assert!(e < 1e-5, "chunks of {chunk} vs one chunk: W {e:e}");
    }
}

// ---------------------------------------------------------------------------------------------
// special cases

/// A dead channel (all zeros) gets zero weights both ways, passes through, and no output is
/// NaN; the rest of its cluster equals the cluster without it.
fn special_dead_channel(eng: Eng) {
    let mut x = common_ref(2000, 12, 0.3, 61);
    x.column_mut(5).fill(0.0);
    let mut op = lrr(eng, settings(None, 0.0));
    op.fit(x.view()).unwrap();
    let w = op.weights().unwrap();
    assert!(w.iter().all(|v| v.is_finite()));
    for j in 0..12 {
        assert_eq!(w[[5, j]], 0.0);
        assert_eq!(w[[j, 5]], 0.0);
    }
    assert!(op.singular_clusters().is_empty());
    let probe = common_ref(50, 12, 0.3, 62);
    let y = op.transform(probe.view()).unwrap();
    assert!(y.iter().all(|v| v.is_finite()));
    for i in 0..50 {
        assert_eq!(y[[i, 5]], probe[[i, 5]]);
    }
    let live: Vec<usize> = (0..12).filter(|&c| c != 5).collect();
    let wt = truth_w(&xtx(&[x.view()]), std::slice::from_ref(&live), 0.0);
    let e = rel_frob(&w, &wt);
    assert!(e < 1e-4, "W vs cluster without the dead channel: {e:e}");
}

/// A duplicated channel makes the cluster singular: the pseudo-inverse fall-back is used
/// (reported by `singular_clusters`), `W` is finite and equals the pseudo-inverse formula.
fn special_singular_cluster(eng: Eng) {
    let mut x = common_ref(1500, 10, 0.3, 63);
    let col = x.column(2).to_owned();
    x.column_mut(7).assign(&col);
    let cl = vec![(0..10).collect::<Vec<_>>()];
    let mut op = lrr(
        eng,
        settings(Some(vec![(0..6).collect(), (6..10).collect(), vec![]]), 0.0),
    );
    op.fit(x.view()).unwrap();
    let _ = op.weights().unwrap();
    assert!(
        op.singular_clusters().is_empty(),
        "no cluster holds both copies"
    );
    let mut op = lrr(eng, settings(Some(cl.clone()), 0.0));
    op.fit(x.view()).unwrap();
    let w = op.weights().unwrap();
    assert_eq!(op.singular_clusters(), &[0]);
    assert!(w.iter().all(|v| v.is_finite()));
    // The pseudo-inverse formula in f64 on the same C.
    let c = op.covariance().unwrap();
    let k = 10;
    let d: Vec<f64> = (0..k).map(|i| c[[i, i]].sqrt()).collect();
    let m = DMatrix::from_fn(k, k, |i, j| c[[i, j]] / (d[i] * d[j]));
    let svd = m.svd(true, true);
    let smax = svd.singular_values.max();
    let p = svd.pseudo_inverse(1e-10 * smax).unwrap();
    let mut wt = Array2::zeros((k, k));
    for j in 0..k {
        for i in 0..k {
            if i != j {
                wt[[i, j]] = -(p[(i, j)] / (d[i] * d[j])) / (p[(j, j)] / (d[j] * d[j]));
            }
        }
    }
    let e = rel_frob(&w, &wt);
    assert!(e < 1e-6, "W vs pseudo-inverse formula: {e:e}");
    let y = op.transform(x.view()).unwrap();
    assert!(y.iter().all(|v| v.is_finite()));
}

/// Cluster order and member order do not matter (bit-identical `W`), including a permuted
/// cluster of every channel (the seed gets that one wrong); `None` equals one cluster of
/// all channels, and then the full `C` is accumulated.
fn special_cluster_order_and_full(eng: Eng) {
    let x = common_ref(1200, 16, 0.3, 64);
    let a = vec![(0..7).collect::<Vec<_>>(), (7..16).collect()];
    let b = vec![
        vec![15, 8, 12, 7, 9, 14, 10, 13, 11],
        vec![6, 0, 5, 1, 4, 2, 3],
    ];
    let mut oa = lrr(eng, settings(Some(a), 0.0));
    let mut ob = lrr(eng, settings(Some(b), 0.0));
    oa.fit(x.view()).unwrap();
    ob.fit(x.view()).unwrap();
    assert_eq!(oa.weights().unwrap(), ob.weights().unwrap());
    let perm: Vec<usize> = vec![3, 15, 0, 9, 1, 14, 2, 8, 13, 4, 12, 5, 11, 6, 10, 7];
    let mut op = lrr(eng, settings(Some(vec![perm]), 0.0));
    let mut on = lrr(eng, settings(None, 0.0));
    op.fit(x.view()).unwrap();
    on.fit(x.view()).unwrap();
    assert_eq!(op.accumulates_full_covariance(), Some(true));
    assert_eq!(on.accumulates_full_covariance(), Some(true));
    let wp = op.weights().unwrap();
    assert_eq!(wp, on.weights().unwrap());
    let all = vec![(0..16).collect::<Vec<_>>()];
    let e = rel_frob(&wp, &truth_w(&xtx(&[x.view()]), &all, 0.0));
    assert!(e < 1e-4, "permuted full cluster: {e:e}");
    // full_covariance: every entry of C, W unchanged.
    let cl = vec![(0..5).collect::<Vec<_>>(), (5..11).collect()];
    let mut of = lrr(
        eng,
        LrrSettings {
            full_covariance: true,
            ..settings(Some(cl.clone()), 0.0)
        },
    );
    let mut ob = lrr(eng, settings(Some(cl), 0.0));
    of.fit(x.view()).unwrap();
    ob.fit(x.view()).unwrap();
    let cf = of.covariance().unwrap();
    let c64 = xtx(&[x.view()]);
    let e = cov_err(&cf, &c64);
    assert!(e < 1e-6, "full C: {e:e}");
    assert!(cf[[0, 15]] != 0.0 && ob.covariance().unwrap()[[0, 15]] == 0.0);
    let e = rel_frob(&of.weights().unwrap(), &ob.weights().unwrap());
    assert!(e < 1e-5, "W with full vs block C: {e:e}");
}

// ---------------------------------------------------------------------------------------------
// policy

/// Weights are solved only when needed after new statistics; `update_every` defers
/// `transform`'s re-solve; read-backs always bring them up to date.
fn policy_lazy_solves(eng: Eng) {
    let x = common_ref(1000, 8, 0.3, 71);
    let mut op = lrr(eng, settings(None, 0.0));
    for a in (0..500).step_by(100) {
        op.partial_fit(x.slice(s![a..a + 100, ..])).unwrap();
    }
    assert_eq!(op.solve_count(), 0);
    op.transform(x.slice(s![0..10, ..])).unwrap();
    op.transform(x.slice(s![0..10, ..])).unwrap();
    assert_eq!(op.solve_count(), 1);
    op.partial_fit(x.slice(s![500..600, ..])).unwrap();
    op.transform(x.slice(s![0..10, ..])).unwrap();
    assert_eq!(op.solve_count(), 2);
    let mut lazy = lrr(
        eng,
        LrrSettings {
            update_every: 250,
            ..settings(None, 0.0)
        },
    );
    lazy.partial_fit(x.slice(s![0..100, ..])).unwrap();
    lazy.transform(x.slice(s![0..10, ..])).unwrap(); // first weights: solved
    assert_eq!(lazy.solve_count(), 1);
    lazy.partial_fit(x.slice(s![100..200, ..])).unwrap();
    lazy.partial_fit(x.slice(s![200..300, ..])).unwrap();
    lazy.transform(x.slice(s![0..10, ..])).unwrap(); // 200 < 250: old weights
    assert_eq!(lazy.solve_count(), 1);
    lazy.partial_fit(x.slice(s![300..400, ..])).unwrap();
    lazy.transform(x.slice(s![0..10, ..])).unwrap(); // 300 ≥ 250: re-solved
    assert_eq!(lazy.solve_count(), 2);
    lazy.partial_fit(x.slice(s![400..500, ..])).unwrap();
    let w = lazy.weights().unwrap(); // read-back: up to date
    assert_eq!(lazy.solve_count(), 3);
    let e = rel_frob(&w, &op.weights().unwrap());
    assert!(e > 0.0, "weights with 500 vs 600 samples should differ");
}

// ---------------------------------------------------------------------------------------------
// io

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "neurokernels-lrr-{name}-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Snapshot (W, I − W, C, n_samples) saved as CSV; weights reloaded from the file and from
/// an array transform exactly like the fitted operator.
fn io_save_and_preload(eng: Eng) {
    let x = common_ref(800, 14, 0.3, 81);
    let cl = vec![(0..6).collect::<Vec<_>>(), (6..14).collect()];
    let mut op = lrr(eng, settings(Some(cl.clone()), 0.0));
    op.fit(x.view()).unwrap();
    let snap = op.snapshot().unwrap();
    assert_eq!(snap.n_samples, 800);
    assert_eq!(
        snap.effective_weights,
        Array2::<f64>::eye(14) - &snap.weights
    );
    let dir = tmpdir(&format!("{eng:?}"));
    snap.save(&dir).unwrap();
    assert_eq!(read_csv(dir.join("weights.csv")).unwrap(), snap.weights);
    assert_eq!(
        read_csv(dir.join("covariance.csv")).unwrap(),
        snap.covariance.clone().unwrap()
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("n_samples.txt"))
            .unwrap()
            .trim(),
        "800"
    );
    let y = op.transform(x.view()).unwrap();
    for src in [
        WeightsSource::Csv(dir.join("weights.csv")),
        WeightsSource::Array(snap.weights.clone()),
    ] {
        let mut pre = lrr(
            eng,
            LrrSettings {
                weights: Some(src),
                ..settings(Some(cl.clone()), 0.0)
            },
        );
        assert!(pre.is_fitted());
        assert_eq!(pre.n_channels(), Some(14));
        assert_eq!(pre.transform(x.view()).unwrap(), y);
        assert_eq!(pre.solve_count(), 0);
        assert!(matches!(
            pre.covariance(),
            Err(Error::InvalidSetting { .. })
        ));
        // New statistics replace the preloaded weights at the next solve.
        pre.partial_fit(x.view()).unwrap();
        let e = rel_frob(&pre.weights().unwrap(), &snap.weights);
        assert!(e < 1e-6, "refit vs saved: {e:e}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------------
// reference vectors (ezmsg-learn 1.4.1)

fn reference_dir(case: &str) -> PathBuf {
    support::reference("lrr", case)
}

fn npy(dir: &Path, name: &str) -> Array2<f64> {
    ndarray_npy::read_npy(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Runs a reference case: each step's `C`, `W` and transformed probe against the seed's
/// output (the seed computes in `float64` from `float64` input; our input is that data
/// rounded to `f32`, so `W` may differ by κ·2⁻²⁴).
fn reference_case(eng: Eng, case: &str) {
    let dir = reference_dir(case);
    let params: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("params.json")).unwrap()).unwrap();
    let set = &params["settings"];
    let clusters: Option<Vec<Vec<usize>>> = set.get("channel_clusters").and_then(|v| {
        v.as_array().map(|a| {
            a.iter()
                .map(|c| {
                    c.as_array()
                        .unwrap()
                        .iter()
                        .map(|i| i.as_u64().unwrap() as usize)
                        .collect()
                })
                .collect()
        })
    });
    let lambda = set
        .get("ridge_lambda")
        .and_then(|v| v.as_f64())
        .unwrap_or(0.0);
    let incremental = set
        .get("incremental")
        .and_then(|v| v.as_bool())
        .unwrap_or(true);
    let mut op = lrr(
        eng,
        LrrSettings {
            incremental,
            ..settings(clusters, lambda)
        },
    );
    let chunks: Vec<Array2<f32>> = (0..4)
        .map(|i| npy(&dir, &format!("fit_chunk{i}.npy")).mapv(|v| v as f32))
        .collect();
    let probe64 = npy(&dir, "probe.npy");
    let probe = probe64.mapv(|v| v as f32);
    for step in params["steps"].as_array().unwrap() {
        let i = step["step"].as_u64().unwrap() as usize;
        match step["call"].as_str().unwrap() {
            "fit" => {
                let views: Vec<ArrayView2<'_, f32>> = chunks.iter().map(|c| c.view()).collect();
                let all = ndarray::concatenate(Axis(0), &views).unwrap();
                op.fit(all.view()).unwrap();
            }
            "partial_fit" => {
                op.partial_fit(chunks[i].view()).unwrap();
            }
            c => panic!("unknown call {c}"),
        }
        assert_eq!(op.n_samples(), step["n_samples"].as_u64().unwrap());
        let c_want = npy(&dir, &format!("step{i}_C.npy"));
        let w_want = npy(&dir, &format!("step{i}_W.npy"));
        let y_want = npy(&dir, &format!("step{i}_Y.npy"));
        let c = op.covariance().unwrap();
        let ec = cov_err(&c, &c_want);
        assert!(ec < 1e-6, "{case} step {i}: C {ec:e}");
        let w = op.weights().unwrap();
        let ew = rel_frob(&w, &w_want);
        let y = to64(&op.transform(probe.view()).unwrap());
        let ey = max_abs_diff(&y, &y_want) / rms(&probe64);
        println!("{eng:?} {case} step {i}: C {ec:.1e}, W {ew:.1e}, Y {ey:.1e} (of probe RMS)");
        assert!(ew < 1e-5, "{case} step {i}: W {ew:e}");
        assert!(ey < 1e-5, "{case} step {i}: Y {ey:e}");
    }
}

fn reference_batch_fit(eng: Eng) {
    reference_case(eng, "batch_fit");
}

fn reference_partial_fit_incremental(eng: Eng) {
    reference_case(eng, "partial_fit_incremental");
}

// ---------------------------------------------------------------------------------------------
// errors

/// Every bad setting is a typed error naming it.
fn error_settings(eng: Eng) {
    let e = eng.engine();
    let bad = |s: LrrSettings| Lrr::new(&e, s).unwrap_err();
    for lambda in [-1.0, f64::NAN, f64::INFINITY] {
        assert!(matches!(
            bad(settings(None, lambda)),
            Error::InvalidSetting {
                name: "ridge_lambda",
                ..
            }
        ));
    }
    let err = bad(settings(Some(vec![vec![0, 1, 1]]), 0.0));
    assert!(
        matches!(&err, Error::InvalidSetting { name: "channel_clusters", reason } if reason.contains("channel 1 appears twice in cluster 0")),
        "{err}"
    );
    let err = bad(settings(Some(vec![vec![0, 1], vec![2, 0]]), 0.0));
    assert!(
        matches!(&err, Error::InvalidSetting { name: "channel_clusters", reason } if reason.contains("clusters 0 and 1")),
        "{err}"
    );
    // Weights: not square, not finite, wrong size for the clusters.
    let w = |a: Array2<f64>| LrrSettings {
        weights: Some(WeightsSource::Array(a)),
        ..Default::default()
    };
    assert!(matches!(
        bad(w(Array2::zeros((3, 4)))),
        Error::Shape {
            what: "weights",
            ..
        }
    ));
    assert!(matches!(
        bad(w(Array2::zeros((0, 0)))),
        Error::Shape {
            what: "weights",
            ..
        }
    ));
    let mut nan = Array2::zeros((3, 3));
    nan[[1, 2]] = f64::NAN;
    assert!(matches!(
        bad(w(nan)),
        Error::NonFinite {
            what: "weights",
            sample: 1,
            channel: 2,
            ..
        }
    ));
    let err = bad(LrrSettings {
        channel_clusters: Some(vec![vec![0, 5]]),
        ..w(Array2::zeros((4, 4)))
    });
    assert!(
        matches!(
            err,
            Error::IndexOutOfRange {
                what: "channel_clusters",
                index: 5,
                bound: 4
            }
        ),
        "{err}"
    );
    // CSV: missing file, non-numeric field, ragged rows.
    let dir = tmpdir(&format!("csv-{eng:?}"));
    let csv = |name: &str, text: Option<&str>| {
        let p = dir.join(name);
        if let Some(t) = text {
            std::fs::write(&p, t).unwrap();
        }
        LrrSettings {
            weights: Some(WeightsSource::Csv(p)),
            ..Default::default()
        }
    };
    let err = bad(csv("missing.csv", None));
    assert!(
        matches!(&err, Error::InvalidSetting { name: "weights", reason } if reason.contains("cannot read")),
        "{err}"
    );
    let err = bad(csv("text.csv", Some("0,1\n1,zero\n")));
    assert!(
        matches!(&err, Error::InvalidSetting { name: "weights", reason } if reason.contains("line 2, field 2") && reason.contains("`zero`")),
        "{err}"
    );
    let err = bad(csv("ragged.csv", Some("0,1\n1\n")));
    assert!(matches!(err, Error::Shape { .. }), "{err}");
    let err = bad(csv("nonsquare.csv", Some("0,1,2\n1,0,2\n")));
    assert!(
        matches!(
            err,
            Error::Shape {
                what: "weights",
                ..
            }
        ),
        "{err}"
    );
    let ok = Lrr::new(&e, csv("ok.csv", Some("# W\n0, 0.5\n\n0.25,0\n"))).unwrap();
    assert_eq!(ok.n_channels(), Some(2));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Bad chunks are typed errors and leave the operator exactly as before: the next good
/// chunk gives what a twin that never saw the bad one gives.
fn error_chunks_leave_state_unchanged(eng: Eng) {
    let x = common_ref(900, 10, 0.3, 91);
    let cl = Some(vec![(0..4).collect::<Vec<_>>(), (4..10).collect()]);
    let mut op = lrr(eng, settings(cl.clone(), 0.0));
    let mut twin = lrr(eng, settings(cl.clone(), 0.0));
    // Transform before fit.
    let err = op.transform(x.view()).unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidSetting {
                name: "weights",
                ..
            }
        ),
        "{err}"
    );
    // Cluster index out of range for the first chunk's channel count: nothing is fixed.
    let mut wide = lrr(eng, settings(Some(vec![vec![0, 12]]), 0.0));
    let err = wide.partial_fit(x.view()).unwrap_err();
    assert!(
        matches!(
            err,
            Error::IndexOutOfRange {
                what: "channel_clusters",
                index: 12,
                bound: 10
            }
        ),
        "{err}"
    );
    assert_eq!(wide.n_channels(), None);
    // ±inf on a first chunk: error, channel count not fixed.
    let mut inf = x.slice(s![0..50, ..]).to_owned();
    inf[[7, 3]] = f32::NEG_INFINITY;
    let err = op.partial_fit(inf.view()).unwrap_err();
    assert!(
        matches!(err, Error::NonFinite { sample: 7, channel: 3, value, .. } if value == f64::NEG_INFINITY),
        "{err}"
    );
    assert_eq!(op.n_channels(), None);
    op.partial_fit(x.slice(s![0..300, ..])).unwrap();
    twin.partial_fit(x.slice(s![0..300, ..])).unwrap();
    // ±inf later, a too-large value, a changed channel count, a NaN chunk (skipped).
    assert!(op.partial_fit(inf.view()).is_err());
    let mut big = x.slice(s![0..50, ..]).to_owned();
    big[[2, 9]] = 3e15;
    let err = op.partial_fit(big.view()).unwrap_err();
    assert!(
        matches!(
            err,
            Error::NonFinite {
                sample: 2,
                channel: 9,
                ..
            }
        ),
        "{err}"
    );
    let narrow = x.slice(s![0..50, 0..9]);
    let err = op.partial_fit(narrow).unwrap_err();
    assert!(matches!(err, Error::Shape { what: "chunk", .. }), "{err}");
    assert!(matches!(op.transform(narrow), Err(Error::Shape { .. })));
    assert!(matches!(op.fit(narrow), Err(Error::Shape { .. })));
    let mut nan = x.slice(s![0..50, ..]).to_owned();
    nan[[3, 3]] = f32::NAN;
    nan[[4, 4]] = f32::INFINITY; // NaN wins: skipped, not an error
    assert!(!op.partial_fit(nan.view()).unwrap());
    assert!(!op.fit(nan.view()).unwrap());
    assert_eq!(op.skipped_chunks(), 2);
    assert_eq!(op.n_samples(), 300);
    op.partial_fit(x.slice(s![300..900, ..])).unwrap();
    twin.partial_fit(x.slice(s![300..900, ..])).unwrap();
    assert_eq!(op.n_samples(), twin.n_samples());
    assert_eq!(op.covariance().unwrap(), twin.covariance().unwrap());
    assert_eq!(op.weights().unwrap(), twin.weights().unwrap());
    assert_eq!(
        op.transform(x.view()).unwrap(),
        twin.transform(x.view()).unwrap()
    );
    // Zero channels, and reset.
    assert!(matches!(
        op.partial_fit(Array2::<f32>::zeros((5, 0)).view()),
        Err(Error::Shape { .. })
    ));
    op.reset().unwrap();
    assert_eq!(op.n_channels(), None);
    assert!(!op.is_fitted());
    assert!(op.transform(x.view()).is_err());
    // Empty chunks: partial_fit changes nothing; fit of an empty batch gives C = 0, W = 0.
    op.partial_fit(x.slice(s![0..100, ..])).unwrap();
    let c = op.covariance().unwrap();
    assert!(op.partial_fit(x.slice(s![0..0, ..])).unwrap());
    assert_eq!(op.covariance().unwrap(), c);
    op.fit(x.slice(s![0..0, ..])).unwrap();
    assert_eq!(op.n_samples(), 0);
    assert!(op.covariance().unwrap().iter().all(|&v| v == 0.0));
    let y = op.transform(x.view()).unwrap();
    assert_eq!(y, x);
}

/// A CSV written by `write_csv` reads back exactly.
fn io_csv_round_trip(_eng: Eng) {
    let dir = tmpdir("roundtrip");
    let m = Array2::from_shape_fn((3, 4), |(i, j)| {
        (i as f64 - 1.3) * 10f64.powi(j as i32 * 7 - 10) / 3.0
    });
    write_csv(dir.join("m.csv"), m.view()).unwrap();
    assert_eq!(read_csv(dir.join("m.csv")).unwrap(), m);
    let _ = std::fs::remove_dir_all(&dir);
}

both!(
    fit_matches_truth,
    partial_fit_sequences,
    transform_host_and_device,
    transform_quad_kernels_match_any_layout,
    large_chunks,
    closed_form_residuals,
    precision_condition_numbers,
    accumulation_adversarial_2e6,
    chunking_invariance_of_c,
    special_dead_channel,
    special_singular_cluster,
    special_cluster_order_and_full,
    policy_lazy_solves,
    io_save_and_preload,
    io_csv_round_trip,
    reference_batch_fit,
    reference_partial_fit_incremental,
    error_settings,
    error_chunks_leave_state_unchanged,
);

#[test]
#[ignore]
fn probe_timing() {
    let t0 = std::time::Instant::now();
    let e = gpu();
    println!("context {:?}", t0.elapsed());
    let x = common_ref(2000, 12, 0.3, 61);
    let t0 = std::time::Instant::now();
    let mut op = lrr(Eng::Gpu, settings(None, 0.0));
    op.partial_fit(x.view()).unwrap();
    println!("first partial_fit (init + compile) {:?}", t0.elapsed());
    let t0 = std::time::Instant::now();
    op.covariance().unwrap();
    println!("cov {:?}", t0.elapsed());
    let t0 = std::time::Instant::now();
    op.solve().unwrap();
    println!("solve {:?}", t0.elapsed());
    let t0 = std::time::Instant::now();
    op.transform(x.view()).unwrap();
    println!("transform {:?}", t0.elapsed());
    let t0 = std::time::Instant::now();
    op.partial_fit(x.view()).unwrap();
    op.covariance().unwrap();
    println!("2nd partial_fit {:?}", t0.elapsed());
    let t0 = std::time::Instant::now();
    op.transform(x.view()).unwrap();
    println!("2nd transform {:?}", t0.elapsed());
    let _ = e;
}
