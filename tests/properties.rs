//! Property tests over every operator and the chain: random shapes (one channel, and sizes
//! that are not multiples of the workgroup sizes 64 and 256), random chunkings and random
//! settings within their valid ranges. Each property checks, for one random case:
//!
//! * **chunk invariance**: the same stream cut two different ways gives the same output on
//!   the CPU engine (bit for bit where the module documents it, else within its bound);
//! * **rejected chunk**: a chunk with a NaN or ±inf, or of the wrong width, sent somewhere in
//!   the stream is rejected with a typed error, and the stream's output is that of a run
//!   that never saw it;
//! * **GPU = CPU**: the GPU engine, fed the stream with the bad chunk, gives the CPU output
//!   within the bound stated in the module's rustdoc.
//!
//! Each property runs `PROPTEST_CASES` cases (default 4, which keeps this file's run well
//! under a minute per backend). The named command for a long run, with larger shapes too:
//!
//! ```text
//! PROPTEST_CASES=500 WGPU_BACKEND=vulkan cargo test --test properties -- --include-ignored
//! ```
//!
//! Failures found by these properties, or by the `operators` fuzz target in an operator's
//! numerics, are kept as plain regression tests at the end of the file (`regression_*`) on
//! both engines. GPU tests never skip: without an adapter they fail.

mod support;

use support::{gpu, rng};

use ndarray::{concatenate, s, Array2, ArrayD, ArrayView2, Axis, IxDyn};
use neurokernels::chain::{Chain, ChainSettings, ReferenceMode, ThresholdRule};
use neurokernels::encoders::{
    AngleEncoder, AngleSettings, LatencyEncoder, LatencySettings, RateEncoder, RateSettings,
    ShiftAugment, ShiftSettings,
};
use neurokernels::filter::FilterSettings;
use neurokernels::glm::{Link, RecurrentGlm, Sampling};
use neurokernels::{
    Aggregation, BandpassFilter, BinnedActivation, BinningSettings, CarSettings,
    ClassifierSettings, CommonAverage, Engine, Error, Event, Kernel, Lrr, LrrSettings,
    MaxRateClassifier, ThresholdCrossing, ThresholdSettings,
};
use proptest::prelude::*;
use proptest::test_runner::Config;
use rand::Rng;

// ---------------------------------------------------------------------------------------------
// Cases, shapes and chunkings

/// Cases per property: `PROPTEST_CASES`, else 4.
fn config() -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 256,
        ..Config::default()
    }
}

/// The size class of a run: CI's small shapes, or the ignored run's larger ones.
#[derive(Debug, Clone, Copy)]
struct Size {
    rows: usize,
    channels: usize,
}

const SMALL: Size = Size {
    rows: 300,
    channels: 70,
};
const LARGE: Size = Size {
    rows: 5000,
    channels: 400,
};

/// A channel count: often 1 or one off a workgroup multiple.
fn channels(size: Size) -> impl Strategy<Value = usize> {
    prop_oneof![
        Just(1usize),
        Just(63usize.min(size.channels)),
        Just(65usize.min(size.channels)),
        1..=size.channels,
    ]
}

/// Chunk lengths, repeated until the stream is covered (zero-length chunks included).
fn cuts() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(prop_oneof![Just(0usize), 1usize..80, Just(257usize)], 1..5)
}

/// A bad chunk: where in the stream it is sent, and what is wrong with it.
#[derive(Debug, Clone, Copy)]
enum Bad {
    /// A non-finite value (NaN, +inf or −inf by `kind`) at `(row, col)` (taken modulo the
    /// chunk's shape) of a copy of the next good chunk.
    NonFinite { row: usize, col: usize, kind: u8 },
    /// A chunk of the next good chunk's length, one column wider.
    Wider,
    /// A chunk one column narrower (when the stream has more than one channel).
    Narrower,
}

fn bad() -> impl Strategy<Value = (usize, Bad)> {
    (
        0usize..6,
        prop_oneof![
            (any::<usize>(), any::<usize>(), 0u8..3).prop_map(|(row, col, kind)| Bad::NonFinite {
                row,
                col,
                kind
            }),
            Just(Bad::Wider),
            Just(Bad::Narrower),
        ],
    )
}

/// For stateless operators, which take any width: a bad chunk is a non-finite value.
fn non_finite_only((at, b): (usize, Bad)) -> (usize, Bad) {
    match b {
        Bad::NonFinite { .. } => (at, b),
        _ => (
            at,
            Bad::NonFinite {
                row: at,
                col: at,
                kind: (at % 3) as u8,
            },
        ),
    }
}

/// `(start, len)` of each chunk of a `total`-row stream cut by `lens` (cycled).
fn chunking(total: usize, lens: &[usize]) -> Vec<(usize, usize)> {
    let step: usize = lens.iter().sum();
    let lens: Vec<usize> = if step == 0 {
        vec![total.max(1)]
    } else {
        lens.to_vec()
    };
    let mut out = Vec::new();
    let mut at = 0;
    let mut i = 0;
    while at < total {
        let len = lens[i % lens.len()].min(total - at);
        out.push((at, len));
        at += len;
        i += 1;
    }
    if out.is_empty() {
        out.push((0, 0));
    }
    out
}

/// The bad version of `good`, or `None` when it cannot be made bad (a non-finite value in
/// an empty chunk, a narrower chunk of one channel).
fn make_bad(good: ArrayView2<'_, f32>, bad: Bad) -> Option<Array2<f32>> {
    let (n, c) = good.dim();
    match bad {
        Bad::NonFinite { row, col, kind } => {
            if n == 0 || c == 0 {
                return None;
            }
            let mut x = good.to_owned();
            x[[row % n, col % c]] = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY][kind as usize];
            Some(x)
        }
        Bad::Wider => Some(Array2::from_elem((n.max(1), c + 1), 0.5)),
        Bad::Narrower => (c > 1).then(|| Array2::from_elem((n.max(1), c - 1), 0.5)),
    }
}

/// Feeds `x` cut by `cuts` to `step`, the bad chunk (if any) just before chunk `bad.0`
/// (modulo the chunk count); the bad chunk must be rejected. A chunk of the wrong width is
/// only sent once a non-empty chunk has fixed the stream's width. Returns each good chunk's
/// output.
fn stream<T>(
    x: ArrayView2<'_, f32>,
    cuts: &[(usize, usize)],
    bad: Option<(usize, Bad)>,
    mut step: impl FnMut(ArrayView2<'_, f32>) -> Result<T, Error>,
) -> Vec<T> {
    let bad_at = bad.map(|(i, b)| (i % cuts.len(), b));
    let mut out = Vec::with_capacity(cuts.len());
    let mut width_fixed = false;
    for (i, &(start, len)) in cuts.iter().enumerate() {
        let good = x.slice(s![start..start + len, ..]);
        if let Some((at, b)) = bad_at {
            let sendable = width_fixed || matches!(b, Bad::NonFinite { .. });
            if at == i && sendable {
                if let Some(chunk) = make_bad(good, b) {
                    match step(chunk.view()) {
                        Err(
                            Error::NonFinite { .. } | Error::Shape { .. } | Error::DeviceArray(_),
                        ) => {}
                        other => panic!(
                            "bad chunk {b:?} before chunk {i}: expected a typed rejection, got {:?}",
                            other.map(|_| "Ok")
                        ),
                    }
                }
            }
        }
        out.push(step(good).unwrap_or_else(|e| panic!("good chunk {i} ({start}, {len}): {e}")));
        width_fixed |= len > 0;
    }
    out
}

/// Rows of `parts` stacked (an empty `(0, width)` array when there are none).
fn stack(parts: &[Array2<f32>], width: usize) -> Array2<f32> {
    let views: Vec<ArrayView2<'_, f32>> = parts.iter().map(|p| p.view()).collect();
    if views.is_empty() {
        return Array2::zeros((0, width));
    }
    concatenate(Axis(0), &views).expect("same widths")
}

/// Gaussian-ish noise (sum of uniforms) with occasional large deflections.
fn signal(n: usize, c: usize, seed: u64, spike: f32) -> Array2<f32> {
    let mut r = rng(seed);
    Array2::from_shape_simple_fn((n, c), || {
        let v: f32 = (0..4).map(|_| r.random::<f32>() - 0.5).sum::<f32>() * 1.7;
        if r.random::<f32>() < 0.02 {
            v - spike
        } else {
            v
        }
    })
}

/// Largest `|a − b|` over two arrays of one shape.
fn max_diff(a: ArrayView2<'_, f32>, b: ArrayView2<'_, f32>) -> f64 {
    assert_eq!(a.dim(), b.dim(), "shapes");
    a.iter()
        .zip(b.iter())
        .map(|(&x, &y)| (x as f64 - y as f64).abs())
        .fold(0.0, f64::max)
}

fn rms(x: ArrayView2<'_, f32>) -> f64 {
    if x.is_empty() {
        return 0.0;
    }
    (x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / x.len() as f64).sqrt()
}

/// One stream: `n` samples × `c` channels drawn from `seed`, two chunkings `a` and `b`, and
/// a bad chunk.
#[derive(Debug, Clone)]
struct Stream {
    n: usize,
    c: usize,
    seed: u64,
    a: Vec<usize>,
    b: Vec<usize>,
    bad: (usize, Bad),
}

fn streams(
    rows: std::ops::RangeInclusive<usize>,
    channels: impl Strategy<Value = usize>,
) -> impl Strategy<Value = Stream> {
    (rows, channels, any::<u64>(), cuts(), cuts(), bad()).prop_map(|(n, c, seed, a, b, bad)| {
        Stream {
            n,
            c,
            seed,
            a,
            b,
            bad,
        }
    })
}

/// What a run of an operator over a stream gives, from the engine, the chunk lengths and
/// the bad chunk.
trait Run<T>: Fn(&Engine, &[usize], Option<(usize, Bad)>) -> T {}
impl<T, F: Fn(&Engine, &[usize], Option<(usize, Bad)>) -> T> Run<T> for F {}

/// CPU chunk invariance and the rejected chunk, bit for bit: the output over chunking `a`
/// equals that over `b` and that over `a` with the bad chunk. Returns it.
fn exact_on_cpu<T: PartialEq + std::fmt::Debug>(s: &Stream, run: impl Run<T>) -> T {
    let cpu = Engine::cpu();
    let a = run(&cpu, &s.a, None);
    assert_eq!(
        a,
        run(&cpu, &s.b, None),
        "CPU output depends on the chunking"
    );
    assert_eq!(
        a,
        run(&cpu, &s.a, Some(s.bad)),
        "CPU output changed by a rejected chunk"
    );
    a
}

/// The GPU engine over chunking `b` with the bad chunk: within `tol` (largest `|Δ|`) of the
/// CPU's `want`.
fn gpu_within(s: &Stream, want: &Array2<f32>, tol: f64, run: impl Run<Array2<f32>>) {
    let got = run(&gpu(), &s.b, Some(s.bad));
    let err = max_diff(want.view(), got.view());
    assert!(err <= tol, "GPU vs CPU: {err:e} > {tol:e}");
}

// ---------------------------------------------------------------------------------------------
// Band-pass filter

#[derive(Debug, Clone)]
struct FilterCase {
    s: Stream,
    fs: f64,
    low: f64,
    high: f64,
    order: usize,
}

fn filter_case(size: Size) -> impl Strategy<Value = FilterCase> {
    (
        streams(0..=size.rows, channels(size)),
        prop_oneof![
            Just(1000.0),
            Just(20_000.0),
            Just(30_000.0),
            500.0f64..50_000.0
        ],
        0.001f64..0.2,
        0.3f64..1.2,
        1usize..=6,
    )
        .prop_map(|(s, fs, lo, hi, order)| FilterCase {
            s,
            fs,
            low: fs * lo,
            // Up to 1.2 × Nyquist: a high edge at or above Nyquist makes a high-pass.
            high: fs * 0.5 * hi.max(lo * 2.0 + 0.01),
            order,
        })
}

fn filter_property(k: &FilterCase) {
    let settings = FilterSettings {
        low_hz: k.low,
        high_hz: k.high,
        order: k.order,
    };
    let s = &k.s;
    let x = signal(s.n, s.c, s.seed, 20.0);
    let run = |engine: &Engine, lens: &[usize], bad: Option<(usize, Bad)>| {
        let mut f = BandpassFilter::new(engine, settings, k.fs).expect("valid settings");
        let parts = stream(x.view(), &chunking(s.n, lens), bad, |c| f.process(c));
        stack(&parts, s.c)
    };
    let a = exact_on_cpu(s, run);
    // Each engine is within 1e-6 of the output's RMS of the f64 truth.
    gpu_within(s, &a, 2e-6 * rms(a.view()) + 1e-30, run);
}

// ---------------------------------------------------------------------------------------------
// Common reference

fn car_case(size: Size) -> impl Strategy<Value = (Stream, bool)> {
    (streams(0..=size.rows, channels(size)), any::<bool>()).prop_map(|(mut s, median)| {
        s.bad = non_finite_only(s.bad);
        (s, median)
    })
}

fn car_property((s, median): &(Stream, bool)) {
    let x = signal(s.n, s.c, s.seed, 30.0);
    let run = |engine: &Engine, lens: &[usize], bad: Option<(usize, Bad)>| {
        let mut car =
            CommonAverage::new(engine, CarSettings { median: *median }).expect("settings");
        let parts = stream(x.view(), &chunking(s.n, lens), bad, |c| car.process(c));
        stack(&parts, s.c)
    };
    let a = exact_on_cpu(s, run);
    // Both engines: within 1e-6 · max|x| of the exact value per row.
    let max = x.iter().fold(0.0f64, |m, &v| m.max(v.abs() as f64));
    gpu_within(s, &a, 2e-6 * max + 1e-30, run);
}

// ---------------------------------------------------------------------------------------------
// Threshold crossing

#[derive(Debug, Clone)]
struct ThresholdCase {
    s: Stream,
    fs: f64,
    settings: ThresholdSettings,
}

fn threshold_case(size: Size) -> impl Strategy<Value = ThresholdCase> {
    (
        streams(0..=size.rows, channels(size)),
        1000.0f64..40_000.0,
        (
            prop_oneof![-6.0f64..-1.0, 1.0f64..6.0],
            0.0f64..0.004,
            0.0f64..0.003,
            0.0f64..1.0,
            any::<bool>(),
            any::<bool>(),
            prop_oneof![Just(0.0), 0.0005f64..0.05],
            prop_oneof![Just(0u64), 0u64..1 << 40, Just(u64::MAX - (1 << 20))],
        ),
    )
        .prop_map(
            |(s, fs, (th, refrac, max_peak, min_frac, align, peak, tau, first))| ThresholdCase {
                s,
                fs,
                settings: ThresholdSettings {
                    threshold: th,
                    refrac_dur: refrac,
                    max_peak_dur: max_peak,
                    min_peak_dur: max_peak * min_frac,
                    align_on_peak: align,
                    return_peak_val: peak,
                    auto_scale_tau: tau,
                    first_sample: first,
                },
            },
        )
}

fn threshold_property(k: &ThresholdCase) {
    let s = &k.s;
    let x = signal(
        s.n,
        s.c,
        s.seed,
        -8.0 * k.settings.threshold.signum() as f32,
    );
    let x = x.view();
    let run = |settings: ThresholdSettings| {
        move |engine: &Engine, lens: &[usize], bad: Option<(usize, Bad)>| {
            let mut t = match ThresholdCrossing::new(engine, settings, k.fs) {
                Ok(t) => t,
                // min_peak_dur is limited to max_peak_dur in samples: out of range here.
                Err(Error::InvalidSetting { .. }) => return None,
                Err(e) => panic!("{e}"),
            };
            let parts = stream(x, &chunking(s.n, lens), bad, |c| t.process(c));
            let mut events: Vec<Event> = parts.into_iter().flatten().collect();
            events.sort_by_key(|e| (e.sample, e.channel));
            Some(events)
        }
    };
    exact_on_cpu(s, run(k.settings));
    // Without auto-scaling the engines agree exactly; with it, events may differ only where
    // a z-score lies within float error of the threshold: compare without it.
    let plain = run(ThresholdSettings {
        auto_scale_tau: 0.0,
        ..k.settings
    });
    let want = plain(&Engine::cpu(), &s.a, None);
    assert_eq!(want, plain(&gpu(), &s.b, Some(s.bad)), "GPU vs CPU");
}

// ---------------------------------------------------------------------------------------------
// Binned activation (dense and sparse input)

#[derive(Debug, Clone)]
struct BinningCase {
    s: Stream,
    fs: f64,
    settings: BinningSettings,
    density: f64,
}

fn binning_case(size: Size) -> impl Strategy<Value = BinningCase> {
    let kernel = prop_oneof![
        Just(Kernel::Count),
        (0.0005f64..0.05).prop_map(|tau| Kernel::Exponential { tau }),
        (0.0005f64..0.05).prop_map(|tau| Kernel::Alpha { tau }),
    ];
    let aggregation = prop_oneof![
        Just(Aggregation::Last),
        Just(Aggregation::Mean),
        Just(Aggregation::Sum),
        Just(Aggregation::Max),
    ];
    (
        streams(0..=size.rows, channels(size)),
        prop_oneof![Just(1000.0), Just(30_000.0), 500.0f64..40_000.0],
        (
            kernel,
            prop_oneof![Just(0.001), Just(0.02), 0.0005f64..0.03],
            aggregation,
            any::<(bool, bool, bool)>(),
            prop_oneof![Just(0u64), 0u64..1 << 40, Just(u64::MAX - (1 << 20))],
        ),
        0.0f64..0.2,
    )
        .prop_map(
            |(s, fs, (kernel, bin, agg, (scale, norm, rate), first), density)| BinningCase {
                s,
                fs,
                settings: BinningSettings {
                    kernel,
                    // At least one sample per bin.
                    bin_duration: bin.max(2.0 / fs),
                    aggregation: agg,
                    scale_by_value: scale,
                    normalize: norm,
                    rate_normalize: rate,
                    t0: 0.25,
                    first_sample: first,
                },
                density,
            },
        )
}

/// Events as a dense raster: each sample nonzero with probability `density`.
fn raster(n: usize, c: usize, density: f64, seed: u64) -> Array2<f32> {
    let mut r = rng(seed);
    Array2::from_shape_simple_fn((n, c), || {
        if r.random::<f64>() < density {
            0.25 + r.random::<f32>() * 2.0
        } else {
            0.0
        }
    })
}

/// The documented bound for one bin of `set`: exact for integer counts, else relative to the
/// largest activation the bin can hold (every event's weight at the kernel's peak, times the
/// bin length for Sum, over the bin duration with `rate_normalize`).
fn binning_tol(set: &BinningSettings, fs: f64, gpu: bool, v: f64, weights: f64, n: f64) -> f64 {
    let round = v.abs() * f64::powi(2.0, -24) * (1.0 + 1e-9);
    let integer = set.kernel == Kernel::Count
        && !set.scale_by_value
        && !set.rate_normalize
        && set.aggregation != Aggregation::Mean;
    if integer {
        return 0.0;
    }
    let peak = match set.kernel {
        Kernel::Count => 1.0,
        Kernel::Exponential { tau } => {
            if set.normalize {
                1.0 / (tau * fs)
            } else {
                1.0
            }
        }
        Kernel::Alpha { tau } => {
            if set.normalize {
                1.0 / (tau * fs)
            } else {
                1.0
            }
        }
    };
    let len = (set.bin_duration * fs).ceil() + 1.0;
    let mut sc = weights * peak;
    if set.aggregation == Aggregation::Sum {
        sc *= len;
    }
    if set.rate_normalize {
        sc /= set.bin_duration;
    }
    if set.kernel == Kernel::Count && !set.scale_by_value {
        return if gpu { 4.0 * round } else { round } + 1e-30;
    }
    match (gpu, set.kernel) {
        (false, _) => 2.0 * round + 1e-12 * sc + 1e-35,
        (true, Kernel::Count) => n.max(1.0) * f64::powi(2.0, -24) * sc + 6.0 * round + 1e-35,
        (true, _) => 2e-5 * sc + 6.0 * round + 1e-35,
    }
}

fn binning_property(k: &BinningCase) {
    let x = raster(k.s.n, k.s.c, k.density, k.s.seed);
    let set = k.settings;
    let dense = |engine: &Engine, lens: &[usize], bad: Option<(usize, Bad)>| {
        let mut b = BinnedActivation::new(engine, set, k.fs).expect("valid settings");
        let parts = stream(x.view(), &chunking(k.s.n, lens), bad, |c| {
            b.process_dense(c).map(|o| o.values)
        });
        stack(&parts, k.s.c)
    };
    // Sparse: the raster's nonzero samples as events, absolute samples, in any order.
    let sparse = |engine: &Engine, lens: &[usize]| {
        let mut b = BinnedActivation::new(engine, set, k.fs).expect("valid settings");
        let mut parts = Vec::new();
        let mut r = rng(k.s.seed ^ 0x5eed);
        for (start, len) in chunking(k.s.n, lens) {
            let mut events: Vec<Event> = x
                .slice(s![start..start + len, ..])
                .indexed_iter()
                .filter(|(_, &v)| v != 0.0)
                .map(|((r, c), &v)| Event {
                    sample: set.first_sample + (start + r) as u64,
                    channel: c as u32,
                    value: v,
                })
                .collect();
            for i in (1..events.len()).rev() {
                events.swap(i, r.random_range(0..=i));
            }
            parts.push(
                b.process_events(&events, len, k.s.c)
                    .expect("events in the chunk")
                    .values,
            );
        }
        stack(&parts, k.s.c)
    };
    // Per channel: Σ|w| over the stream and the event count (bounds the activation).
    let w: Vec<(f64, f64)> = (0..k.s.c)
        .map(|c| {
            x.column(c)
                .iter()
                .filter(|&&v| v != 0.0)
                .fold((0.0, 0.0), |(s, n), &v| {
                    (s + if set.scale_by_value { v as f64 } else { 1.0 }, n + 1.0)
                })
        })
        .collect();
    let check = |label: &str, want: &Array2<f32>, got: &Array2<f32>, gpu: bool| {
        assert_eq!(want.dim(), got.dim(), "{label}: bins × channels");
        for ((bin, c), &v) in want.indexed_iter() {
            let g = got[[bin, c]];
            let tol = binning_tol(&set, k.fs, gpu, v as f64, w[c].0, w[c].1);
            let err = (g as f64 - v as f64).abs();
            assert!(
                if tol == 0.0 { g == v } else { err <= tol },
                "{label}: bin {bin} channel {c}: {g} vs {v} (err {err:e}, tol {tol:e})"
            );
        }
    };
    let cpu = Engine::cpu();
    let a = dense(&cpu, &k.s.a, None);
    check("CPU chunking", &a, &dense(&cpu, &k.s.b, None), false);
    check(
        "CPU rejected chunk",
        &a,
        &dense(&cpu, &k.s.a, Some(k.s.bad)),
        false,
    );
    check("CPU sparse vs dense", &a, &sparse(&cpu, &k.s.b), false);
    check(
        "GPU dense vs CPU",
        &a,
        &dense(&gpu(), &k.s.b, Some(k.s.bad)),
        true,
    );
    check("GPU sparse vs CPU", &a, &sparse(&gpu(), &k.s.a), true);
}

// ---------------------------------------------------------------------------------------------
// LRR

#[derive(Debug, Clone)]
struct LrrCase {
    s: Stream,
    clusters: Option<usize>,
    ridge: f64,
    full: bool,
}

fn lrr_case(size: Size) -> impl Strategy<Value = LrrCase> {
    (
        streams(
            100..=size.rows.max(100),
            prop_oneof![Just(2usize), Just(3usize), 2..=size.channels.min(40)],
        ),
        prop_oneof![Just(None), (1usize..=8).prop_map(Some)],
        prop_oneof![Just(0.0), 0.001f64..1.0],
        any::<bool>(),
    )
        .prop_map(|(mut s, clusters, ridge, full)| {
            // Enough samples for a well-conditioned covariance.
            s.n = s.n.max(4 * s.c);
            LrrCase {
                s,
                clusters,
                ridge,
                full,
            }
        })
}

/// Correlated channels: a shared component plus independent noise.
fn correlated(n: usize, c: usize, seed: u64) -> Array2<f32> {
    let mut r = rng(seed);
    let mut x = Array2::zeros((n, c));
    for mut row in x.rows_mut() {
        let shared: f32 = r.random::<f32>() - 0.5;
        for v in row.iter_mut() {
            *v = 3.0 * shared + (r.random::<f32>() - 0.5);
        }
    }
    x
}

fn lrr_property(k: &LrrCase) {
    let x = correlated(k.s.n, k.s.c, k.s.seed);
    let settings = LrrSettings {
        channel_clusters: k
            .clusters
            .map(|size| neurokernels::lrr::consecutive_clusters(k.s.c, size)),
        ridge_lambda: k.ridge,
        full_covariance: k.full,
        ..Default::default()
    };
    let fit = |engine: &Engine, lens: &[usize], bad: Option<(usize, Bad)>| {
        let mut lrr = Lrr::new(engine, settings.clone()).expect("valid settings");
        // A chunk holding a NaN is skipped (`Ok(false)`), which counts as its rejection.
        stream(x.view(), &chunking(k.s.n, lens), bad, |c| {
            let nan = c.iter().any(|v| v.is_nan());
            match lrr.partial_fit(c) {
                Ok(false) if nan => Err(Error::NonFinite {
                    what: "skipped",
                    sample: 0,
                    channel: 0,
                    value: f64::NAN,
                }),
                r => r,
            }
        });
        let w = lrr.weights().expect("fitted");
        let y = lrr.transform(x.view()).expect("transform");
        (w, y)
    };
    let cpu = Engine::cpu();
    let (wa, ya) = fit(&cpu, &k.s.a, None);
    let norm = wa.iter().map(|v| v * v).sum::<f64>().sqrt();
    let wdiff = |w: &Array2<f64>| {
        wa.iter()
            .zip(w.iter())
            .map(|(a, b)| (a - b).powi(2))
            .sum::<f64>()
            .sqrt()
    };
    // Chunking moves the f32 runs of the accumulation: C within 9.6e-7·√(CiiCjj), W within
    // the condition number times that (small here: a shared component plus noise).
    let (wb, _) = fit(&cpu, &k.s.b, None);
    assert!(
        wdiff(&wb) <= 1e-4 * (1.0 + norm),
        "CPU chunking: |ΔW| {}",
        wdiff(&wb)
    );
    let (wbad, ybad) = fit(&cpu, &k.s.a, Some(k.s.bad));
    assert_eq!(wa, wbad, "CPU rejected chunk changed W");
    assert_eq!(ya, ybad, "CPU rejected chunk changed the transform");
    let (wg, yg) = fit(&gpu(), &k.s.b, Some(k.s.bad));
    assert!(
        wdiff(&wg) <= 1e-4 * (1.0 + norm),
        "GPU vs CPU: |ΔW| {}",
        wdiff(&wg)
    );
    let max = x.iter().fold(0.0f64, |m, &v| m.max(v.abs() as f64));
    let tol = 1e-4 * max * (1.0 + norm);
    let err = max_diff(ya.view(), yg.view());
    assert!(err <= tol, "GPU transform vs CPU: {err:e} > {tol:e}");
}

// ---------------------------------------------------------------------------------------------
// Encoders

/// Encoders: a stream of `s.n` samples (the batch) × `s.c` features.
#[derive(Debug, Clone)]
struct EncoderCase {
    s: Stream,
    steps: usize,
    max_r: f32,
    threshold: f32,
    neurons: usize,
    packed: bool,
    time_major: bool,
}

fn encoder_case(size: Size) -> impl Strategy<Value = EncoderCase> {
    (
        streams(0..=size.rows.min(200), channels(size)),
        (1usize..=40, 0.0f32..1.5, 0.0f32..0.5, 1usize..=12),
        any::<(bool, bool)>(),
    )
        .prop_map(
            |(mut s, (steps, max_r, threshold, neurons), (packed, time_major))| {
                s.bad = non_finite_only(s.bad);
                EncoderCase {
                    s,
                    steps,
                    max_r,
                    threshold,
                    neurons,
                    packed,
                    time_major,
                }
            },
        )
}

/// The outputs of one encoder over a batch cut into chunks, joined along `axis`.
fn joined(parts: Vec<ArrayD<u8>>, axis: usize) -> ArrayD<u8> {
    let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
    concatenate(Axis(axis), &views).expect("same shapes")
}

fn encoder_property(k: &EncoderCase) {
    let x = {
        let mut r = rng(k.s.seed);
        Array2::from_shape_simple_fn((k.s.n, k.s.c), || r.random::<f32>() * 1.4 - 0.2)
    };
    let rate = RateSettings {
        steps: k.steps,
        max_r: k.max_r,
        seed: k.s.seed,
        time_major: k.time_major,
        packed: k.packed,
    };
    let latency = LatencySettings {
        steps: k.steps,
        threshold: k.threshold,
        packed: k.packed,
    };
    let angle = AngleSettings {
        neuron_count: k.neurons,
        min_val: -0.1,
        max_val: 1.1,
    };
    // Rate: (B, T, F) or (T, B, F): the batch axis is 0 or 1. Latency: (T, B, F), batch axis
    // 1. Angle: (B, F, n), batch axis 0.
    let rate_axis = usize::from(k.time_major);
    let run = |engine: &Engine, lens: &[usize], bad: Option<(usize, Bad)>| {
        let cuts = chunking(k.s.n, lens);
        let mut r = RateEncoder::new(engine, rate).expect("rate settings");
        let mut l = LatencyEncoder::new(engine, latency).expect("latency settings");
        let mut g = AngleEncoder::new(engine, angle).expect("angle settings");
        let rp = stream(x.view(), &cuts, bad, |c| r.encode(c));
        let lp = stream(x.view(), &cuts, bad, |c| l.encode(c));
        let gp = stream(x.view(), &cuts, bad, |c| g.encode(c));
        (joined(rp, rate_axis), joined(lp, 1), joined(gp, 0))
    };
    let a = exact_on_cpu(&k.s, run);
    assert_eq!(
        a,
        run(&gpu(), &k.s.b, Some(k.s.bad)),
        "GPU vs CPU (bit-identical)"
    );
}

#[derive(Debug, Clone)]
struct ShiftCase {
    shape: Vec<usize>,
    max_shift: u32,
    axes: Vec<isize>,
    seed: u64,
    a: Vec<usize>,
    b: Vec<usize>,
}

fn shift_case(size: Size) -> impl Strategy<Value = ShiftCase> {
    (
        prop::collection::vec(1usize..=size.channels.min(20), 2..=4),
        1u32..30,
        any::<u64>(),
        any::<u64>(),
        cuts(),
        cuts(),
    )
        .prop_map(move |(mut shape, max_shift, pick, seed, a, b)| {
            shape[0] = (shape[0] * 7) % (size.rows.min(60) + 1);
            let rank = shape.len();
            // Any non-empty set of the non-sample axes, as negative or positive indices.
            let mut axes: Vec<isize> = (1..rank)
                .filter(|i| pick >> i & 1 == 1)
                .map(|i| {
                    if pick >> (i + 8) & 1 == 1 {
                        i as isize - rank as isize
                    } else {
                        i as isize
                    }
                })
                .collect();
            if axes.is_empty() {
                axes.push(-1);
            }
            ShiftCase {
                shape,
                max_shift,
                axes,
                seed,
                a,
                b,
            }
        })
}

fn shift_property(k: &ShiftCase) {
    let x = {
        let mut r = rng(k.seed);
        ArrayD::from_shape_simple_fn(IxDyn(&k.shape), || r.random::<f32>())
    };
    let settings = ShiftSettings {
        max_shift: k.max_shift,
        axes: k.axes.clone(),
        per_sample: true,
        seed: k.seed,
    };
    let run = |engine: &Engine, lens: &[usize], bad: bool| {
        let mut sh = ShiftAugment::new(engine, settings.clone()).expect("valid settings");
        let mut parts = Vec::new();
        for (i, (start, len)) in chunking(k.shape[0], lens).into_iter().enumerate() {
            if bad && i == 1 {
                // A rank the axes do not fit: rejected, position unchanged.
                let before = sh.position();
                let flat = ndarray::Array1::<f32>::zeros(3).into_dyn();
                assert!(sh.apply(flat.view()).is_err(), "rank-1 input rejected");
                assert_eq!(sh.position(), before, "position unchanged after an error");
            }
            let part = x.slice_axis(Axis(0), (start..start + len).into());
            parts.push(sh.apply(part).expect("apply"));
        }
        let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
        concatenate(Axis(0), &views).expect("same shapes")
    };
    let cpu = Engine::cpu();
    let a = run(&cpu, &k.a, false);
    assert_eq!(a, run(&cpu, &k.b, false), "CPU chunking (per-sample draws)");
    assert_eq!(a, run(&cpu, &k.a, true), "CPU rejected input");
    assert_eq!(a, run(&gpu(), &k.b, true), "GPU vs CPU (bit-identical)");
}

// ---------------------------------------------------------------------------------------------
// Max-rate classifier

#[derive(Debug, Clone)]
struct ClassifierCase {
    n: usize,
    classes: usize,
    decay: f64,
    proportional: bool,
    batches: Vec<usize>,
    seed: u64,
    bad_at: usize,
    bad_kind: u8,
}

fn classifier_case(size: Size) -> impl Strategy<Value = ClassifierCase> {
    (
        channels(size),
        1usize..=6,
        prop_oneof![Just(0.0), 0.0f64..0.5],
        any::<bool>(),
        prop::collection::vec(0usize..=40, 1..6),
        any::<u64>(),
        0usize..6,
        0u8..3,
    )
        .prop_map(
            |(n, classes, decay, proportional, batches, seed, bad_at, bad_kind)| ClassifierCase {
                n,
                classes,
                decay,
                proportional,
                batches,
                seed,
                bad_at,
                bad_kind,
            },
        )
}

fn classifier_property(k: &ClassifierCase) {
    let mut r = rng(k.seed);
    let batches: Vec<(Array2<f32>, Vec<usize>)> = k
        .batches
        .iter()
        .map(|&b| {
            let labels: Vec<usize> = (0..b).map(|_| r.random_range(0..k.classes)).collect();
            let x = Array2::from_shape_fn((b, k.n), |(i, j)| {
                // Each class prefers its own neurons.
                let base = if j % k.classes == labels[i] { 4.0 } else { 1.0 };
                (base * r.random::<f32>()).floor()
            });
            (x, labels)
        })
        .collect();
    let settings = ClassifierSettings {
        n_neurons: k.n,
        n_classes: k.classes,
        decay: k.decay,
        proportional: k.proportional,
    };
    let run = |engine: &Engine, bad: bool| {
        let mut clf = MaxRateClassifier::new(engine, settings).expect("valid settings");
        let mut predicted = Vec::new();
        for (i, (x, labels)) in batches.iter().enumerate() {
            if bad && i == k.bad_at % batches.len() {
                let r = match k.bad_kind {
                    0 => {
                        let mut y = x.clone();
                        if let Some(v) = y.iter_mut().next() {
                            *v = f32::NAN;
                        }
                        clf.update(y.view(), labels)
                    }
                    1 => {
                        let mut l = labels.clone();
                        if let Some(v) = l.first_mut() {
                            *v = k.classes;
                        }
                        clf.update(x.view(), &l)
                    }
                    _ => clf.update(Array2::zeros((1, k.n + 1)).view(), &[0]),
                };
                // An empty batch has no element to spoil: it is valid.
                if !(x.nrows() == 0 && k.bad_kind < 2) {
                    assert!(r.is_err(), "bad batch {} accepted", k.bad_kind);
                }
            }
            let p = clf
                .forward(x.view().into_dyn(), Some(labels))
                .expect("forward");
            predicted.push(p.logits);
        }
        (clf.rates().expect("rates"), predicted)
    };
    let (ra, la) = run(&Engine::cpu(), false);
    let (rb, lb) = run(&Engine::cpu(), true);
    assert_eq!(ra, rb, "CPU rates changed by a rejected batch");
    assert_eq!(la, lb, "CPU logits changed by a rejected batch");
    // GPU: f32 throughout; one update is within (c_k + 4)·2⁻²⁴·(|rates| + Σ|inputs|/c_k).
    let (rg, lg) = run(&gpu(), true);
    let total: usize = k.batches.iter().sum();
    let scale = 4.0 * (total as f64 + 8.0) * f64::powi(2.0, -24);
    let max_rate = ra.iter().fold(1.0f64, |m, &v| m.max(v.abs()));
    for (a, g) in ra.iter().zip(rg.iter()) {
        assert!(
            (a - g).abs() <= scale * (max_rate + 4.0),
            "GPU rate {g} vs CPU {a}"
        );
    }
    for (a, g) in la.iter().zip(lg.iter()) {
        let m = a.iter().fold(1.0f64, |m, &v| m.max(v.abs() as f64));
        let err = max_diff(a.view(), g.view());
        assert!(err <= 1e-4 * m, "GPU logits vs CPU: {err:e}");
    }
}

// ---------------------------------------------------------------------------------------------
// Recurrent GLM

#[derive(Debug, Clone)]
struct GlmCase {
    n: usize,
    nb: usize,
    ws: usize,
    nf: usize,
    steps: usize,
    link: Link,
    seed: u64,
    a: Vec<usize>,
    b: Vec<usize>,
    bad_at: usize,
}

fn glm_case(size: Size) -> impl Strategy<Value = GlmCase> {
    (
        (
            1usize..=size.channels.min(12),
            1usize..=4,
            1usize..=8,
            1usize..=3,
        ),
        1usize..=size.rows.min(120),
        any::<bool>(),
        any::<u64>(),
        prop::collection::vec(0usize..30, 1..5),
        prop::collection::vec(0usize..30, 1..5),
        0usize..6,
    )
        .prop_map(
            |((n, nb, ws, nf), steps, exp, seed, a, b, bad_at)| GlmCase {
                n,
                nb,
                ws,
                nf,
                steps,
                link: if exp { Link::Exp } else { Link::Softplus },
                seed,
                a,
                b,
                bad_at,
            },
        )
}

fn glm_property(k: &GlmCase) {
    let mut r = rng(k.seed);
    let mut draw = |shape: &[usize], scale: f64, offset: f64| {
        ArrayD::from_shape_simple_fn(IxDyn(shape), || offset + scale * (r.random::<f64>() - 0.5))
    };
    let coupling = draw(&[k.n, k.n, k.nb], 0.2, 0.0);
    let ff = draw(&[k.n, k.nf], 0.5, 0.0);
    let intercepts = draw(&[k.n], 0.5, -2.0);
    let basis = draw(&[k.ws, k.nb], 1.0, 0.5);
    let input = draw(&[k.steps, k.n, k.nf], 1.0, 0.0);
    let init = draw(&[k.ws, k.n], 0.0, 0.0);
    let run = |engine: &Engine, sampling: Sampling, lens: &[usize], bad: bool| {
        let mut glm = RecurrentGlm::new(
            engine,
            coupling.view(),
            ff.view(),
            intercepts.view(),
            basis.view(),
            k.link,
        )
        .expect("valid model");
        glm.start(init.view(), &[k.seed, k.seed ^ 1], sampling)
            .expect("start");
        let mut spikes = Vec::new();
        let mut rates = Vec::new();
        for (i, (start, len)) in chunking(k.steps, lens).into_iter().enumerate() {
            if bad && i == k.bad_at % 3 {
                let mut y = input
                    .slice(s![start..start + len.max(1).min(k.steps - start), .., ..])
                    .to_owned();
                if let Some(v) = y.iter_mut().next() {
                    *v = f64::NAN;
                }
                let step = glm.step();
                assert!(glm.run(y.view().into_dyn()).is_err(), "NaN input accepted");
                assert_eq!(glm.step(), step, "step unchanged after an error");
            }
            let out = glm
                .run(input.slice(s![start..start + len, .., ..]).into_dyn())
                .expect("run");
            spikes.push(out.spikes);
            rates.push(out.rates);
        }
        let cat = |v: Vec<ndarray::Array3<f32>>| {
            let views: Vec<_> = v.iter().map(|a| a.view()).collect();
            concatenate(Axis(0), &views).expect("same shapes")
        };
        (cat(spikes), cat(rates))
    };
    let cpu = Engine::cpu();
    let a = run(&cpu, Sampling::Poisson, &k.a, false);
    assert_eq!(a, run(&cpu, Sampling::Poisson, &k.b, false), "CPU chunking");
    assert_eq!(
        a,
        run(&cpu, Sampling::Poisson, &k.a, true),
        "CPU rejected input"
    );
    // Expected-value mode is deterministic on both engines: the GPU's f32 recurrence stays
    // within 1e-5 relative of the CPU's f64 one (a contracting recurrence here).
    let (_, want) = run(&cpu, Sampling::Expected, &k.a, false);
    let (_, got) = run(&gpu(), Sampling::Expected, &k.b, true);
    for (w, g) in want.iter().zip(got.iter()) {
        let err = (*w as f64 - *g as f64).abs();
        assert!(
            err <= 1e-5 * (w.abs() as f64).max(1e-6),
            "GPU rate {g} vs CPU {w}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The chain

#[derive(Debug, Clone)]
struct ChainCase {
    s: Stream,
    fs: f64,
    filter: bool,
    reference: ReferenceMode,
    clusters: Option<usize>,
    k_noise: f64,
    fit: usize,
}

fn chain_case(size: Size) -> impl Strategy<Value = ChainCase> {
    (
        streams(50..=size.rows.max(60), channels(size)),
        prop_oneof![Just(20_000.0), Just(30_000.0)],
        (
            any::<bool>(),
            prop_oneof![
                Just(ReferenceMode::Lrr),
                Just(ReferenceMode::Car),
                Just(ReferenceMode::CarMedian),
                Just(ReferenceMode::None),
            ],
            prop_oneof![Just(None), (1usize..=16).prop_map(Some)],
            -6.0f64..-2.5,
            10usize..=200,
        ),
    )
        .prop_map(
            |(s, fs, (filter, reference, clusters, k_noise, fit))| ChainCase {
                fit: fit.max(2 * s.c + 2),
                s,
                fs,
                filter,
                reference,
                clusters,
                k_noise,
            },
        )
}

fn chain_settings(
    k: &ChainCase,
    reference: ReferenceMode,
    threshold: ThresholdRule,
) -> ChainSettings {
    ChainSettings {
        filter: k.filter.then(FilterSettings::default),
        reference,
        lrr: LrrSettings {
            channel_clusters: k
                .clusters
                .map(|size| neurokernels::lrr::consecutive_clusters(k.s.c, size)),
            ridge_lambda: 0.01,
            ..Default::default()
        },
        threshold,
        binning: BinningSettings {
            kernel: Kernel::Count,
            aggregation: Aggregation::Sum,
            bin_duration: 0.001,
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Events and bins of a chain over `x` cut by `lens`.
fn run_chain(
    engine: &Engine,
    settings: ChainSettings,
    k: &ChainCase,
    x: ArrayView2<'_, f32>,
    lens: &[usize],
    bad: Option<(usize, Bad)>,
) -> (Vec<Event>, Array2<f32>) {
    let window = x.slice(s![..k.fit.min(k.s.n), ..]);
    let mut chain = Chain::calibrate(engine, settings, k.fs, window, 0).expect("calibrate");
    let parts = stream(x, &chunking(k.s.n, lens), bad, |c| chain.process(c));
    let mut events = Vec::new();
    let mut bins = Vec::new();
    for p in parts {
        events.extend(p.events);
        bins.push(p.bins.values);
    }
    (events, stack(&bins, k.s.c))
}

fn chain_property(k: &ChainCase) {
    let x = signal(k.s.n, k.s.c, k.s.seed, 12.0);
    let cpu = Engine::cpu();
    let full = chain_settings(k, k.reference, ThresholdRule::NoiseMultiple(k.k_noise));
    exact_on_cpu(&k.s, |engine: &Engine, lens: &[usize], bad| {
        run_chain(engine, full.clone(), k, x.view(), lens, bad)
    });
    // GPU vs CPU: integer-valued data, no filter, no reference or the common average, and
    // a threshold at least 1/(2·channels) from every reachable value, so that no float
    // rounding can move an event: the engines must agree exactly.
    let xi = x.mapv(|v| (v * 4.0).round());
    let reference = if k.reference == ReferenceMode::None {
        ReferenceMode::None
    } else {
        ReferenceMode::Car
    };
    let threshold = ThresholdRule::Absolute(-(8.0 + 0.5 / k.s.c as f64));
    let exact = ChainSettings {
        filter: None,
        ..chain_settings(k, reference, threshold)
    };
    let want = run_chain(&cpu, exact.clone(), k, xi.view(), &k.s.a, None);
    let got = run_chain(&gpu(), exact, k, xi.view(), &k.s.b, Some(k.s.bad));
    assert_eq!(want, got, "GPU vs CPU");
}

// ---------------------------------------------------------------------------------------------
// The properties: CI's small shapes, and the same properties on larger shapes (ignored).

macro_rules! properties {
    ($($name:ident, $large:ident: $case:ident => $prop:ident;)*) => {
        $(
            #[test]
            fn $name() {
                proptest!(config(), |(k in $case(SMALL))| $prop(&k));
            }

            #[test]
            #[ignore = "large shapes: run with --include-ignored (see the file's header)"]
            fn $large() {
                proptest!(config(), |(k in $case(LARGE))| $prop(&k));
            }
        )*
    };
}

properties! {
    filter, filter_large: filter_case => filter_property;
    common_reference, common_reference_large: car_case => car_property;
    threshold, threshold_large: threshold_case => threshold_property;
    binning, binning_large: binning_case => binning_property;
    lrr, lrr_large: lrr_case => lrr_property;
    encoders, encoders_large: encoder_case => encoder_property;
    shift, shift_large: shift_case => shift_property;
    classifier, classifier_large: classifier_case => classifier_property;
    glm, glm_large: glm_case => glm_property;
    chain, chain_large: chain_case => chain_property;
}

// ---------------------------------------------------------------------------------------------
// Regressions

/// Found by the `operators` fuzz target (`fuzz/corpus/operators/crash-lrr-svd-nan`): a
/// subnormal ridge on a dead channel made the equilibration's `s²` overflow to infinity, the
/// singular cluster's pseudo-inverse then met a NaN and nalgebra's SVD panicked. Now the
/// weights are finite, the dead channel's are zero, and both engines agree.
#[test]
fn regression_lrr_subnormal_ridge_on_a_dead_channel() {
    let settings = LrrSettings {
        ridge_lambda: 2.781342323134e-309,
        incremental: false,
        full_covariance: true,
        update_every: 3,
        ..Default::default()
    };
    let x = ndarray::arr2(&[[397.54688f32, 397.54688, 397.54688, 0.0]]);
    let mut outputs = Vec::new();
    for (name, engine) in support::engines() {
        let mut lrr = Lrr::new(&engine, settings.clone()).expect("valid settings");
        lrr.partial_fit(x.view()).expect("fit");
        let y = lrr
            .transform(x.view())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let w = lrr.weights().expect("weights");
        assert!(w.iter().all(|v| v.is_finite()), "{name}: {w:?}");
        assert!(
            w.row(3).iter().chain(w.column(3).iter()).all(|&v| v == 0.0),
            "{name}: dead channel 3 has weights: {w:?}"
        );
        outputs.push((w, y));
    }
    let (cpu, gpu) = (&outputs[0], &outputs[1]);
    let norm = cpu.0.iter().map(|v| v * v).sum::<f64>().sqrt();
    let dw = cpu
        .0
        .iter()
        .zip(gpu.0.iter())
        .map(|(a, b)| (a - b).powi(2))
        .sum::<f64>()
        .sqrt();
    assert!(dw <= 1e-4 * (1.0 + norm), "GPU vs CPU: |ΔW| {dw}");
}
