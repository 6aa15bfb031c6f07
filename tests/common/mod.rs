//! Shared helpers of the integration tests: engines, exact bin edges in integer arithmetic,
//! the plain sequential `f64` truth of SPEC §1, seeded inputs and chunkings, a stream driver
//! that checks every chunk's bookkeeping, and comparisons that print what failed.
//!
//! The truth is written from SPEC §1's table, not from the library: activations are summed
//! event by event (`a[s] = Σ_{t_j ≤ s} w_j·k(s − t_j)`) at every sample where a sample-wise
//! aggregate is needed, and bin edges come from the decimal strings of `bin_duration` and
//! `fs` with `u128` arithmetic of their own.

#![allow(dead_code)]

use std::collections::BTreeMap;

use ndarray::{s, Array2, ArrayView2, ShapeBuilder};
use neurokernels::{Aggregation, Binned, BinnedActivation, BinningSettings, Engine, Event, Kernel};
use rand::Rng;
use rand_pcg::Pcg64;

pub use crate::support::{gpu, rng};

// ---------------------------------------------------------------------------------------------
// Engines

/// The CPU engine.
pub fn cpu() -> Engine {
    Engine::cpu()
}

/// Which engine produced an output: selects the documented error bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eng {
    Cpu,
    Gpu,
}

impl Eng {
    pub fn engine(self) -> Engine {
        match self {
            Eng::Cpu => cpu(),
            Eng::Gpu => gpu(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Exact bin edges, independent of `neurokernels::exact`

fn gcd(mut a: u128, mut b: u128) -> u128 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a.max(1)
}

/// `x`'s shortest round-trip decimal (`format!("{}")`, which never uses an exponent) as a
/// reduced fraction.
pub fn decimal_fraction(x: f64) -> (u128, u128) {
    let s = format!("{x}");
    assert!(
        x > 0.0 && x.is_finite() && !s.contains(['e', 'E', '-']),
        "bad decimal {s}"
    );
    let (int, frac) = s.split_once('.').unwrap_or((&s, ""));
    let num: u128 = format!("{int}{frac}").parse().expect("digits");
    let den = 10u128.pow(frac.len() as u32);
    let g = gcd(num, den);
    (num / g, den / g)
}

/// Bin edges `b_k = floor(k·p/q)` with `p/q = bin_duration·fs` exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edges {
    pub p: u128,
    pub q: u128,
}

impl Edges {
    pub fn new(bin_duration: f64, fs: f64) -> Self {
        let (a, b) = decimal_fraction(bin_duration);
        let (c, d) = decimal_fraction(fs);
        let (p, q) = (a * c, b * d);
        let g = gcd(p, q);
        Edges { p: p / g, q: q / g }
    }

    /// `b_k`.
    pub fn edge(&self, k: u64) -> u64 {
        u64::try_from(k as u128 * self.p / self.q).expect("edge fits u64")
    }

    /// Number of bins complete once `end` samples have been delivered: bins `k` with
    /// `b_(k+1) ≤ end`, counted one by one from `from` (a bin count already known complete).
    pub fn complete(&self, from: u64, end: u64) -> u64 {
        let mut k = from;
        while self.edge(k + 1) <= end {
            k += 1;
        }
        k
    }
}

// ---------------------------------------------------------------------------------------------
// The f64 truth of SPEC §1

/// Truth of a whole stream: one row per complete bin.
#[derive(Debug, Clone)]
pub struct Truth {
    /// `(bins, channels)` expected outputs.
    pub values: Array2<f64>,
    /// The magnitude the documented bound is relative to, per output, in output units: the
    /// largest activation of `|w|` events over the bin (times the bin length for Sum), or
    /// `Σ|w|` of the events summed for Count.
    pub scale: Array2<f64>,
    /// Number of events summed into each output (the `n` of the GPU's Count bound).
    pub terms: Array2<f64>,
    /// `t0 + k·bin_duration`.
    pub timestamps: Vec<f64>,
    /// Whether outputs are integer counts that must match exactly.
    pub exact: bool,
}

/// Whether the outputs of these settings are integer counts (Count without `scale_by_value`,
/// no division by bin length or duration).
pub fn integer_counts(set: &BinningSettings) -> bool {
    set.kernel == Kernel::Count
        && !set.scale_by_value
        && !set.rate_normalize
        && set.aggregation != Aggregation::Mean
}

/// Whether two runs of these settings must agree bit for bit whatever the chunking (SPEC §0:
/// counts; Mean and `rate_normalize` of an exact count are one deterministic scaling).
pub fn bit_identical_across_chunkings(set: &BinningSettings) -> bool {
    set.kernel == Kernel::Count && !set.scale_by_value
}

/// Streams up to this many samples have their sample-wise aggregates scanned sample by
/// sample; longer ones (the 2³² position tests) support only Count and Last.
const SCAN_LIMIT: u64 = 10_000_000;

/// The truth of SPEC §1 for a stream of `n_samples` samples whose events are `events`
/// (absolute samples, any order, duplicates add). Straight from the table: Count outputs
/// sum event weights; Exponential/Alpha outputs evaluate `a[s]` event by event at every
/// sample of the bin (Last: at the boundary `b_(k+1)` over events before it).
pub fn truth(
    set: &BinningSettings,
    fs: f64,
    n_channels: usize,
    n_samples: u64,
    events: &[Event],
) -> Truth {
    let edges = Edges::new(set.bin_duration, fs);
    let n_bins = edges.complete(0, n_samples) as usize;
    let tau_s = match set.kernel {
        Kernel::Count => 1.0,
        Kernel::Exponential { tau } | Kernel::Alpha { tau } => tau * fs,
    };
    let kernel = |d: u64| -> f64 {
        let x = d as f64 / tau_s;
        match set.kernel {
            Kernel::Count => (d == 0) as u8 as f64,
            Kernel::Exponential { .. } => (-x).exp(),
            Kernel::Alpha { .. } => x * (-x).exp(),
        }
    };
    // Largest kernel value over d in [lo, hi] (exp decreasing; alpha peaks at d = τs).
    let kernel_max = |lo: u64, hi: u64| -> f64 {
        match set.kernel {
            Kernel::Count => (lo == 0) as u8 as f64,
            Kernel::Exponential { .. } => kernel(lo),
            Kernel::Alpha { .. } => {
                let peak = tau_s.floor() as u64;
                [lo, hi, peak.clamp(lo, hi), (peak + 1).clamp(lo, hi)]
                    .into_iter()
                    .map(kernel)
                    .fold(0.0, f64::max)
            }
        }
    };
    let norm = if set.kernel != Kernel::Count && set.normalize {
        1.0 / tau_s
    } else {
        1.0
    };
    let rate = if set.rate_normalize {
        1.0 / set.bin_duration
    } else {
        1.0
    };

    // Per channel: (sample, w, |w|) sorted by sample.
    let mut per: Vec<Vec<(u64, f64, f64)>> = vec![Vec::new(); n_channels];
    for e in events {
        let v = if set.scale_by_value {
            e.value as f64
        } else {
            1.0
        };
        per[e.channel as usize].push((e.sample, v * norm, v.abs() * norm));
    }
    for p in &mut per {
        p.sort_by_key(|x| x.0);
    }

    let mut values = Array2::<f64>::zeros((n_bins, n_channels));
    let mut scale = Array2::<f64>::zeros((n_bins, n_channels));
    let mut terms = Array2::<f64>::zeros((n_bins, n_channels));
    for (c, ev) in per.iter().enumerate() {
        for k in 0..n_bins {
            let (b0, b1) = (edges.edge(k as u64), edges.edge(k as u64 + 1));
            let len = (b1 - b0) as f64;
            let in_bin: Vec<_> = ev.iter().filter(|x| b0 <= x.0 && x.0 < b1).collect();
            let before_end: Vec<_> = ev.iter().filter(|x| x.0 < b1).collect();
            let (v, sc, n) = if set.kernel == Kernel::Count {
                let sum: f64 = in_bin.iter().map(|x| x.1).sum();
                let sum_abs: f64 = in_bin.iter().map(|x| x.2).sum();
                match set.aggregation {
                    Aggregation::Sum => (sum, sum_abs, in_bin.len()),
                    Aggregation::Mean => (sum / len, sum_abs / len, in_bin.len()),
                    Aggregation::Max => {
                        let mut at: BTreeMap<u64, (f64, f64, usize)> = BTreeMap::new();
                        for x in &in_bin {
                            let e = at.entry(x.0).or_default();
                            e.0 += x.1;
                            e.1 += x.2;
                            e.2 += 1;
                        }
                        // Samples of the bin without events hold Σw = 0.
                        let mut m = if (at.len() as u64) < b1 - b0 {
                            0.0
                        } else {
                            f64::NEG_INFINITY
                        };
                        let (mut sc, mut n) = (0.0f64, 0usize);
                        for (w, wa, cnt) in at.values() {
                            m = m.max(*w);
                            sc = sc.max(*wa);
                            n = n.max(*cnt);
                        }
                        (m, sc, n)
                    }
                    Aggregation::Last => (
                        before_end.iter().map(|x| x.1).sum(),
                        before_end.iter().map(|x| x.2).sum(),
                        before_end.len(),
                    ),
                }
            } else {
                // (a[s], a[s] of |w|): every event up to s, one by one.
                let act = |s: u64| -> (f64, f64) {
                    ev.iter()
                        .take_while(|x| x.0 <= s)
                        .fold((0.0, 0.0), |(a, b), x| {
                            (a + x.1 * kernel(s - x.0), b + x.2 * kernel(s - x.0))
                        })
                };
                let scan = n_samples <= SCAN_LIMIT;
                // max_{s in bin} of the |w| activation: by scanning, or (streams too long to
                // scan) bounded event by event by Σ_j |w_j|·max_{s in bin} k(s − t_j), exact
                // for one event and an upper bound otherwise.
                let max_abs = || -> f64 {
                    if scan {
                        (b0..b1).map(|s| act(s).1).fold(0.0, f64::max)
                    } else {
                        ev.iter()
                            .take_while(|x| x.0 < b1)
                            .map(|x| {
                                let lo = b0.max(x.0) - x.0;
                                x.2 * kernel_max(lo, b1 - 1 - x.0)
                            })
                            .sum()
                    }
                };
                match set.aggregation {
                    Aggregation::Last => {
                        let v: f64 = before_end.iter().map(|x| x.1 * kernel(b1 - x.0)).sum();
                        let va: f64 = before_end.iter().map(|x| x.2 * kernel(b1 - x.0)).sum();
                        (v, va.max(max_abs()), before_end.len())
                    }
                    agg => {
                        assert!(
                            scan,
                            "truth: a {agg:?} bin of {} samples is too long to scan",
                            b1 - b0
                        );
                        let (mut sum, mut max, mut max_a) = (0.0f64, f64::NEG_INFINITY, 0.0f64);
                        for s in b0..b1 {
                            let (a, a_abs) = act(s);
                            sum += a;
                            max = max.max(a);
                            max_a = max_a.max(a_abs);
                        }
                        match agg {
                            Aggregation::Sum => (sum, max_a * len, before_end.len()),
                            Aggregation::Mean => (sum / len, max_a, before_end.len()),
                            _ => (max, max_a, before_end.len()),
                        }
                    }
                }
            };
            values[[k, c]] = v * rate;
            scale[[k, c]] = sc * rate;
            terms[[k, c]] = n as f64;
        }
    }
    Truth {
        values,
        scale,
        terms,
        timestamps: (0..n_bins)
            .map(|k| set.t0 + k as f64 * set.bin_duration)
            .collect(),
        exact: integer_counts(set),
    }
}

// ---------------------------------------------------------------------------------------------
// Bounds and comparisons

/// The documented bound (src/binning/mod.rs) for one output with truth `v`, scale `sc` and
/// `n` events summed; `0.0` means exact.
pub fn tolerance(set: &BinningSettings, eng: Eng, v: f64, sc: f64, n: f64) -> f64 {
    // One rounding of the f64 result to the f32 output.
    let round = v.abs() * f64::powi(2.0, -24) * (1.0 + 1e-9);
    if set.kernel == Kernel::Count && !set.scale_by_value {
        if integer_counts(set) {
            return 0.0;
        }
        // An exact count divided by a bin length and/or duration.
        return match eng {
            Eng::Cpu => round,
            Eng::Gpu => 4.0 * round,
        };
    }
    match (eng, set.kernel) {
        (Eng::Cpu, _) => round + 1e-12 * sc + 1e-40,
        // Count with scale_by_value: n·2⁻²⁴·Σ|w| (+ the output's rounding).
        (Eng::Gpu, Kernel::Count) => n.max(1.0) * f64::powi(2.0, -24) * sc + 4.0 * round + 1e-35,
        (Eng::Gpu, _) => 2e-5 * sc + 4.0 * round + 1e-35,
    }
}

/// Asserts that `got` (bins × channels) matches the truth within `eng`'s bound.
pub fn assert_truth(
    label: &str,
    set: &BinningSettings,
    eng: Eng,
    got: ArrayView2<'_, f32>,
    t: &Truth,
) {
    assert_eq!(got.dim(), t.values.dim(), "{label}: shape (bins, channels)");
    let mut first: Vec<String> = Vec::new();
    let mut fails = 0;
    for ((idx, &g), &v) in got.indexed_iter().zip(t.values.iter()) {
        let tol = tolerance(set, eng, v, t.scale[idx], t.terms[idx]);
        let err = (g as f64 - v).abs();
        let ok = if tol == 0.0 {
            g as f64 == v
        } else {
            err <= tol
        };
        if !ok {
            fails += 1;
            if first.len() < 8 {
                first.push(format!(
                    "bin {} channel {}: got {g:e}, expected {v:e}, abs err {err:e}, rel err {:e}, tol {tol:e} \
                     (scale {:e})",
                    idx.0,
                    idx.1,
                    err / v.abs(),
                    t.scale[idx]
                ));
            }
        }
    }
    if fails > 0 {
        panic!(
            "{label} [{eng:?}, {set:?}]: {fails} outputs off the truth; first:\n  {}",
            first.join("\n  ")
        );
    }
}

/// Asserts GPU-vs-CPU parity: bit-identical for integer counts, else within both bounds.
pub fn assert_parity(
    label: &str,
    set: &BinningSettings,
    gpu: ArrayView2<'_, f32>,
    cpu: ArrayView2<'_, f32>,
    t: &Truth,
) {
    assert_eq!(gpu.dim(), cpu.dim(), "{label}: GPU and CPU shapes");
    for ((idx, &g), &c) in gpu.indexed_iter().zip(cpu.iter()) {
        let (v, sc, n) = (t.values[idx], t.scale[idx], t.terms[idx]);
        let tol = tolerance(set, Eng::Gpu, v, sc, n) + tolerance(set, Eng::Cpu, v, sc, n);
        let ok = if tol == 0.0 {
            g.to_bits() == c.to_bits()
        } else {
            (g as f64 - c as f64).abs() <= tol
        };
        assert!(
            ok,
            "{label} [{set:?}]: GPU vs CPU at bin {} channel {}: gpu {g:e}, cpu {c:e}, diff {:e}, tol {tol:e}",
            idx.0,
            idx.1,
            (g as f64 - c as f64).abs()
        );
    }
}

/// Asserts two runs of the same stream agree: bit for bit for counts, else within twice the
/// engine's bound.
pub fn assert_same_stream(
    label: &str,
    set: &BinningSettings,
    eng: Eng,
    a: ArrayView2<'_, f32>,
    b: ArrayView2<'_, f32>,
    t: &Truth,
) {
    assert_eq!(a.dim(), b.dim(), "{label}: shapes");
    let bitwise = bit_identical_across_chunkings(set);
    for ((idx, &x), &y) in a.indexed_iter().zip(b.iter()) {
        let tol = 2.0 * tolerance(set, eng, t.values[idx], t.scale[idx], t.terms[idx]);
        let ok = if bitwise || tol == 0.0 {
            x.to_bits() == y.to_bits()
        } else {
            (x as f64 - y as f64).abs() <= tol
        };
        assert!(
            ok,
            "{label} [{eng:?}, {set:?}]: chunkings disagree at bin {} channel {}: {x:e} vs {y:e} (tol {tol:e}, bitwise {bitwise})",
            idx.0,
            idx.1
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Inputs

/// How a stream is fed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputKind {
    F32,
    U8,
    Bool,
    Sparse,
}

pub const INPUT_KINDS: [InputKind; 4] = [
    InputKind::F32,
    InputKind::U8,
    InputKind::Bool,
    InputKind::Sparse,
];

/// A dense raster in one of the accepted element types.
#[derive(Debug, Clone)]
pub enum Dense {
    F32(Array2<f32>),
    U8(Array2<u8>),
    Bool(Array2<bool>),
}

/// One stream's input: the raster (dense kinds) and its events (all kinds; for sparse input
/// in random order with duplicates, the order they are fed in).
#[derive(Debug, Clone)]
pub struct Input {
    pub kind: InputKind,
    pub n_samples: usize,
    pub n_channels: usize,
    pub dense: Option<Dense>,
    pub events: Vec<Event>,
    /// Feed dense chunks as column-major (non-standard stride) views.
    pub fortran: bool,
}

fn events_of<T: Copy>(a: &Array2<T>, value: impl Fn(T) -> f32) -> Vec<Event> {
    let mut ev = Vec::new();
    for ((s, c), &x) in a.indexed_iter() {
        let v = value(x);
        if v != 0.0 {
            ev.push(Event {
                sample: s as u64,
                channel: c as u32,
                value: v,
            });
        }
    }
    ev
}

/// A random event value: mostly positive, some negative, never zero (dense zeros are not
/// events).
fn random_value(rng: &mut Pcg64) -> f32 {
    let v: f32 = rng.random_range(-1.0..3.0);
    if v.abs() < 0.05 {
        1.5
    } else {
        v
    }
}

impl Input {
    /// A random stream: each sample of each channel is an event with probability `density`.
    /// Sparse streams also get duplicates (same sample and channel) and a few zero values.
    pub fn random(
        rng: &mut Pcg64,
        kind: InputKind,
        n_samples: usize,
        n_channels: usize,
        density: f64,
    ) -> Input {
        let mut input = Input {
            kind,
            n_samples,
            n_channels,
            dense: None,
            events: Vec::new(),
            fortran: false,
        };
        let shape = (n_samples, n_channels);
        match kind {
            InputKind::F32 => {
                let a = Array2::from_shape_fn(shape, |_| {
                    if rng.random_bool(density) {
                        random_value(rng)
                    } else {
                        0.0
                    }
                });
                input.events = events_of(&a, |x| x);
                input.dense = Some(Dense::F32(a));
            }
            InputKind::U8 => {
                let a = Array2::from_shape_fn(shape, |_| {
                    if rng.random_bool(density) {
                        rng.random_range(1..=255u8)
                    } else {
                        0
                    }
                });
                input.events = events_of(&a, |x| x as f32);
                input.dense = Some(Dense::U8(a));
            }
            InputKind::Bool => {
                let a = Array2::from_shape_fn(shape, |_| rng.random_bool(density));
                input.events = events_of(&a, |x| x as u8 as f32);
                input.dense = Some(Dense::Bool(a));
            }
            InputKind::Sparse => {
                let n = (density * (n_samples * n_channels) as f64).round() as usize;
                let mut ev: Vec<Event> = Vec::with_capacity(n + n / 8);
                for i in 0..n {
                    if n_samples == 0 {
                        break;
                    }
                    let e = if i > 0 && rng.random_bool(0.15) {
                        // A duplicate of an earlier event's position.
                        let prev = ev[rng.random_range(0..ev.len())];
                        Event {
                            value: random_value(rng),
                            ..prev
                        }
                    } else {
                        Event {
                            sample: rng.random_range(0..n_samples as u64),
                            channel: rng.random_range(0..n_channels as u32),
                            value: if rng.random_bool(0.05) {
                                0.0
                            } else {
                                random_value(rng)
                            },
                        }
                    };
                    ev.push(e);
                }
                // Any order: shuffle.
                for i in (1..ev.len()).rev() {
                    let j = rng.random_range(0..=i);
                    ev.swap(i, j);
                }
                input.events = ev;
            }
        }
        input
    }

    /// Feeds samples `[a, b)` to `op`.
    pub fn feed(
        &self,
        op: &mut BinnedActivation,
        a: usize,
        b: usize,
    ) -> neurokernels::Result<Binned> {
        fn view<T: neurokernels::binning::DenseSample>(
            op: &mut BinnedActivation,
            x: &Array2<T>,
            a: usize,
            b: usize,
            fortran: bool,
        ) -> neurokernels::Result<Binned> {
            let v = x.slice(s![a..b, ..]);
            if fortran {
                let mut f = Array2::from_elem(v.dim().f(), v[[0, 0]]);
                f.assign(&v);
                op.process_dense(f.view())
            } else {
                op.process_dense(v)
            }
        }
        let fortran = self.fortran && b > a;
        match &self.dense {
            Some(Dense::F32(x)) => view(op, x, a, b, fortran),
            Some(Dense::U8(x)) => view(op, x, a, b, fortran),
            Some(Dense::Bool(x)) => view(op, x, a, b, fortran),
            None => {
                // Input samples count from the stream's start; the operator takes absolute ones.
                let shift = op.position() - a as u64;
                let ev: Vec<Event> = self
                    .events
                    .iter()
                    .filter(|e| (a as u64..b as u64).contains(&e.sample))
                    .map(|e| Event {
                        sample: e.sample + shift,
                        ..*e
                    })
                    .collect();
                op.process_events(&ev, b - a, self.n_channels)
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Chunkings and the stream driver

/// Chunk boundaries from chunk lengths (`0, l0, l0 + l1, …, n`); the last chunk takes the rest.
pub fn bounds_from_lengths(n: usize, lengths: impl IntoIterator<Item = usize>) -> Vec<usize> {
    let mut b = vec![0];
    let mut pos = 0;
    for l in lengths {
        if pos + l >= n {
            break;
        }
        pos += l;
        b.push(pos);
    }
    b.push(n);
    b
}

/// Random chunk lengths in `0..=max_len`, a fifth of them empty.
pub fn random_bounds(rng: &mut Pcg64, n: usize, max_len: usize) -> Vec<usize> {
    let mut lens = Vec::new();
    let mut total = 0;
    while total < n {
        let l = if rng.random_bool(0.2) {
            0
        } else {
            rng.random_range(1..=max_len.max(1))
        };
        lens.push(l);
        total += l;
    }
    let mut b = bounds_from_lengths(n, lens);
    // An empty chunk first and last, too.
    b.insert(0, 0);
    b.push(n);
    b
}

/// Concatenated outputs of a stream.
#[derive(Debug, Clone)]
pub struct Collected {
    pub values: Array2<f32>,
    pub timestamps: Vec<f64>,
    /// `(first_bin, n_bins)` of each chunk.
    pub chunks: Vec<(u64, usize)>,
}

/// Feeds `input` to a fresh `op` chunk by chunk (`bounds[i]..bounds[i+1]`), checking each
/// chunk's bookkeeping against the exact edges: `first_bin` continues the stream, the chunk
/// emits exactly the bins whose last sample it delivers, timestamps are `t0 + k·bin_duration`.
pub fn run(label: &str, op: &mut BinnedActivation, input: &Input, bounds: &[usize]) -> Collected {
    let set = *op.settings();
    let edges = Edges::new(set.bin_duration, op.fs());
    assert_eq!(op.bins_emitted(), 0, "{label}: run() starts a stream");
    // Absolute sample of the stream's first sample.
    let start = op.position();
    let mut emitted = 0;
    let mut rows: Vec<f32> = Vec::new();
    let mut timestamps = Vec::new();
    let mut chunks = Vec::new();
    for w in bounds.windows(2) {
        let (a, b) = (w[0], w[1]);
        let out = input
            .feed(op, a, b)
            .unwrap_or_else(|e| panic!("{label}: chunk {a}..{b} failed: {e}"));
        let complete = edges.complete(emitted, b as u64);
        assert_eq!(out.first_bin, emitted, "{label}: chunk {a}..{b} first_bin");
        assert_eq!(
            out.values.dim(),
            ((complete - emitted) as usize, input.n_channels),
            "{label}: chunk {a}..{b} (bins, channels) — the bins whose last sample it delivers"
        );
        assert_eq!(
            out.timestamps.len(),
            out.values.nrows(),
            "{label}: chunk {a}..{b} timestamps"
        );
        for (i, &t) in out.timestamps.iter().enumerate() {
            let k = out.first_bin + i as u64;
            assert_eq!(
                t,
                set.t0 + k as f64 * set.bin_duration,
                "{label}: timestamp of bin {k}"
            );
        }
        assert_eq!(
            op.position(),
            start + b as u64,
            "{label}: position after chunk {a}..{b}"
        );
        assert_eq!(
            op.bins_emitted(),
            complete,
            "{label}: bins_emitted after chunk {a}..{b}"
        );
        chunks.push((out.first_bin, out.values.nrows()));
        emitted = complete;
        rows.extend(out.values.iter());
        timestamps.extend(out.timestamps);
    }
    let n_bins = timestamps.len();
    Collected {
        values: Array2::from_shape_vec((n_bins, input.n_channels), rows).expect("rows"),
        timestamps,
        chunks,
    }
}

/// A fresh operator, or a failed test naming the settings.
pub fn op(engine: &Engine, set: BinningSettings, fs: f64) -> BinnedActivation {
    BinnedActivation::new(engine, set, fs)
        .unwrap_or_else(|e| panic!("BinnedActivation::new({set:?}, fs {fs}): {e}"))
}

// ---------------------------------------------------------------------------------------------
// Settings grids

pub const AGGREGATIONS: [Aggregation; 4] = [
    Aggregation::Last,
    Aggregation::Mean,
    Aggregation::Sum,
    Aggregation::Max,
];

/// Count, Exponential and Alpha with time constant `tau` (s).
pub fn kernels(tau: f64) -> [Kernel; 3] {
    [
        Kernel::Count,
        Kernel::Exponential { tau },
        Kernel::Alpha { tau },
    ]
}

/// Settings from the three flags packed in `flags` (bit 0 `scale_by_value`, bit 1
/// `normalize`, bit 2 `rate_normalize`).
pub fn settings(
    kernel: Kernel,
    aggregation: Aggregation,
    bin_duration: f64,
    flags: u8,
) -> BinningSettings {
    BinningSettings {
        kernel,
        bin_duration,
        aggregation,
        scale_by_value: flags & 1 != 0,
        normalize: flags & 2 != 0,
        rate_normalize: flags & 4 != 0,
        ..BinningSettings::default()
    }
}
