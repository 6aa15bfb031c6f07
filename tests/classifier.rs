//! Max-rate classifier (SPEC §5) on both engines, against a plain sequential `f64` truth
//! written here from the formulas, against each other, and against the Python package's own
//! output (`tests/reference/classifier/seq_decay_1d`).
//!
//! Groups, by prefix: `parity_*` (random sequences of updates with decay and absent classes,
//! awkward sizes; state, logits and labels after every step), `reference_*`, `spec_*`
//! (ties, empty classes, time axis and packed spikes, empty batches), `state_*` (save/load),
//! `error_*` (each bad input, then the next valid call compared with a twin that never saw
//! the bad one), `device_*` (device inputs, GPU only), `bound_*` (the `f32` logit bound at a
//! large `N`). Every engine test exists as `*_cpu` and `*_gpu`; the GPU ones fail, never
//! skip, without an adapter (`WGPU_BACKEND=vulkan` or `gl` picks the backend).
//!
//! Bounds are the documented ones (src/classifier/mod.rs), with `u = 2⁻²⁴` on the GPU and
//! `2⁻⁵³` on the CPU: rates within the accumulated per-update bound the truth tracks
//! alongside its values; logits within `(depth + 2)·u·Σ|x·w|/occ` of an `f64` evaluation on
//! the engine's own state, plus the output's `f32` rounding.

mod support;

use support::{gpu, rng};

use std::path::PathBuf;

use ndarray::{Array1, Array2, Array3, ArrayView2, Axis};
use neurokernels::classifier::{ClassifierSettings, MaxRateClassifier, Prediction};
use neurokernels::{DeviceArray, Engine, Error};
use rand::Rng;
use rand_pcg::Pcg64;

const SEED: u64 = 0xc1a5_5e5d;

// =============================================================================================
// Engines

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
    /// Unit roundoff of the engine's arithmetic.
    fn u(self) -> f64 {
        match self {
            Eng::Cpu => 2f64.powi(-53),
            Eng::Gpu => 2f64.powi(-24),
        }
    }
}

/// Two `#[test]`s, `$cpu` and `$gpu`, running the engine-generic check `$check` on each engine.
macro_rules! on_both_engines {
    ($check:ident, $cpu:ident, $gpu:ident) => {
        #[test]
        fn $cpu() {
            $check(Eng::Cpu);
        }

        #[test]
        fn $gpu() {
            $check(Eng::Gpu);
        }
    };
}

fn clf(eng: Eng, n: usize, k: usize, decay: f64) -> MaxRateClassifier {
    MaxRateClassifier::new(
        &eng.engine(),
        ClassifierSettings {
            decay,
            ..ClassifierSettings::new(n, k)
        },
    )
    .expect("classifier")
}

// =============================================================================================
// The f64 truth: the formulas of SPEC §5, sequentially, with the error bound the GPU's `f32`
// accumulates alongside.

const F32_U: f64 = 1.0 / 16_777_216.0;

#[derive(Debug, Clone)]
struct Truth {
    n: usize,
    k: usize,
    decay: f64,
    rates: Vec<f64>,
    /// Per rate: the bound on an engine's error, for the engine's unit roundoff `u`.
    bound: Vec<f64>,
    u: f64,
}

impl Truth {
    fn new(n: usize, k: usize, decay: f64, u: f64) -> Self {
        Truth {
            n,
            k,
            decay,
            rates: vec![0.0; n * k],
            bound: vec![0.0; n * k],
            u,
        }
    }

    /// `rates[n,k] ← exp(−decay·c_k)·rates[n,k] + Σ_{b: label k} x[b,n] / c_k` for present
    /// classes; absent classes unchanged.
    fn update(&mut self, x: ArrayView2<'_, f64>, labels: &[usize]) {
        let (n, k) = (self.n, self.k);
        for c in 0..k {
            let rows: Vec<usize> = (0..labels.len()).filter(|&b| labels[b] == c).collect();
            if rows.is_empty() {
                continue;
            }
            let cnt = rows.len() as f64;
            let d = (-self.decay * cnt).exp();
            for j in 0..n {
                let mut s = 0.0;
                let mut sa = 0.0;
                for &b in &rows {
                    s += x[[b, j]];
                    sa += x[[b, j]].abs();
                }
                let i = j * k + c;
                let old = self.rates[i];
                self.rates[i] = d * old + s / cnt;
                self.bound[i] =
                    d * self.bound[i] + (cnt + 4.0) * self.u * (d * old.abs() + sa / cnt);
            }
        }
    }

    fn proportions(&self) -> Vec<f64> {
        let k = self.k;
        let mut p = vec![0.0; self.n * k];
        for j in 0..self.n {
            let row = &self.rates[j * k..(j + 1) * k];
            let l1: f64 = row.iter().map(|v| v.abs()).sum();
            for c in 0..k {
                p[j * k + c] = row[c] / l1.max(1e-12);
            }
        }
        p
    }

    /// Tolerance on neuron `j`'s proportions.
    fn prop_tol(&self, j: usize) -> f64 {
        let k = self.k;
        let row = &self.rates[j * k..(j + 1) * k];
        let l1: f64 = row.iter().map(|v| v.abs()).sum();
        let e: f64 = self.bound[j * k..(j + 1) * k].iter().sum();
        2.0 * e / l1.max(1e-12) + (k as f64 + 4.0) * self.u + 1e-300
    }

    /// `(assignment, top-2 margin)` per neuron (first index on ties).
    fn assignments(&self) -> Vec<(usize, f64)> {
        let p = self.proportions();
        (0..self.n)
            .map(|j| {
                let row = &p[j * self.k..(j + 1) * self.k];
                let mut bi = 0;
                for c in 1..self.k {
                    if row[c] > row[bi] {
                        bi = c;
                    }
                }
                let second = (0..self.k)
                    .filter(|&c| c != bi)
                    .map(|c| row[c])
                    .fold(f64::NEG_INFINITY, f64::max);
                (bi, row[bi] - second)
            })
            .collect()
    }
}

/// `(B, K)` logits of `x` from a state given as assignments and proportions, in `f64`, and
/// the sums of `|x·w|` the bound scales with.
fn regress_f64(
    x: ArrayView2<'_, f64>,
    assign: &[usize],
    props: &Array2<f64>,
    k: usize,
    prop: bool,
) -> (Array2<f64>, Array2<f64>) {
    let mut occ = vec![0usize; k];
    for &a in assign {
        occ[a] += 1;
    }
    let b = x.nrows();
    let mut lg = Array2::zeros((b, k));
    let mut abs = Array2::zeros((b, k));
    for r in 0..b {
        for (j, &a) in assign.iter().enumerate() {
            let w = if prop { props[[j, a]] } else { 1.0 };
            lg[[r, a]] += x[[r, j]] * w;
            abs[[r, a]] += (x[[r, j]] * w).abs();
        }
        for c in 0..k {
            if occ[c] == 0 {
                lg[[r, c]] = 0.0;
                abs[[r, c]] = 0.0;
            } else {
                lg[[r, c]] /= occ[c] as f64;
                abs[[r, c]] /= occ[c] as f64;
            }
        }
    }
    (lg, abs)
}

/// First index of the maximum of each row.
fn argmax_rows(a: &Array2<f32>) -> Vec<usize> {
    a.outer_iter()
        .map(|row| {
            let mut bi = 0;
            for c in 1..row.len() {
                if row[c] > row[bi] {
                    bi = c;
                }
            }
            bi
        })
        .collect()
}

fn wide(x: &Array2<f32>) -> Array2<f64> {
    x.mapv(f64::from)
}

// =============================================================================================
// Checks

/// Engine state against the truth: rates within the bound, proportions, assignments (near
/// ties skipped and counted), occurrences. Returns the number of near ties skipped.
fn check_state(label: &str, c: &MaxRateClassifier, t: &Truth) -> usize {
    let (n, k) = (t.n, t.k);
    let rates = c.rates().expect("rates");
    for j in 0..n {
        for q in 0..k {
            let (got, want) = (rates[[j, q]], t.rates[j * k + q]);
            let tol = t.bound[j * k + q] + 1e-300;
            assert!(
                (got - want).abs() <= tol,
                "{label}: rate[{j},{q}] = {got}, truth {want}, |Δ| {} > bound {tol}",
                (got - want).abs()
            );
        }
    }
    let props = c.proportions().expect("proportions");
    let tp = t.proportions();
    for j in 0..n {
        let tol = t.prop_tol(j);
        for q in 0..k {
            let (got, want) = (props[[j, q]], tp[j * k + q]);
            assert!(
                (got - want).abs() <= tol,
                "{label}: proportion[{j},{q}] = {got}, truth {want}, tol {tol}"
            );
        }
    }
    let assign = c.assignments().expect("assignments");
    let ta = t.assignments();
    let mut skipped = 0;
    for j in 0..n {
        let (want, margin) = ta[j];
        if margin <= 2.0 * t.prop_tol(j) && margin > 0.0 {
            skipped += 1;
            continue;
        }
        if margin == 0.0 {
            // An exact tie in f64: the engine's values tie too unless rounding separated them.
            if assign[j] != want {
                skipped += 1;
            }
            continue;
        }
        assert_eq!(assign[j], want, "{label}: assignment of neuron {j}");
    }
    let occ = c.occurrences().expect("occurrences");
    let mut tocc = vec![0u64; k];
    for &(a, _) in &ta {
        tocc[a] += 1;
    }
    let diff: u64 = occ.iter().zip(&tocc).map(|(a, b)| a.abs_diff(*b)).sum();
    assert!(
        diff <= 2 * skipped as u64,
        "{label}: occurrences {occ:?}, truth {tocc:?} ({skipped} near ties)"
    );
    let mut own = vec![0u64; k];
    for &a in &assign {
        own[a] += 1;
    }
    assert_eq!(
        occ, own,
        "{label}: occurrences are not the count of assignments"
    );
    skipped
}

/// Logits of `x` against an `f64` evaluation on the engine's own state, within the bound;
/// labels are the argmax of the logits.
fn check_logits(
    label: &str,
    eng: Eng,
    c: &mut MaxRateClassifier,
    x: ArrayView2<'_, f32>,
    prop: bool,
) -> Prediction {
    c.set_proportional(prop);
    let got = c
        .forward(x.into_dyn(), None)
        .unwrap_or_else(|e| panic!("{label}: forward: {e}"));
    let assign = c.assignments().expect("assignments");
    let props = c.proportions().expect("proportions");
    let xw = wide(&x.to_owned());
    let (want, abs) = regress_f64(xw.view(), &assign, &props, c.n_classes(), prop);
    let depth = c.regress_depth() as f64;
    for ((idx, &g), &w) in got.logits.indexed_iter().zip(want.iter()) {
        let tol = (depth + 2.0) * eng.u() * abs[idx] + F32_U * w.abs() + 1e-30;
        assert!(
            (g as f64 - w).abs() <= tol,
            "{label}: logit{idx:?} = {g}, f64 on own state {w}, tol {tol} (prop {prop})"
        );
        assert!(g.is_finite(), "{label}: logit{idx:?} not finite");
    }
    assert_eq!(got.labels, argmax_rows(&got.logits), "{label}: labels");
    let cls = c.classify(x).expect("classify");
    assert_eq!(cls, got.labels, "{label}: classify vs forward");
    let lg = c.regress(x).expect("regress");
    assert_eq!(lg, got.logits, "{label}: regress vs forward");
    c.set_proportional(true);
    got
}

/// Random `(B, N)` inputs: rates in [0, 1) with some zeros, or signed values.
fn inputs(r: &mut Pcg64, b: usize, n: usize, signed: bool) -> Array2<f32> {
    Array2::from_shape_fn((b, n), |_| {
        let v: f32 = r.random();
        if signed {
            2.0 * v - 1.0
        } else if r.random::<f32>() < 0.2 {
            0.0
        } else {
            v
        }
    })
}

/// Labels drawn from `allowed` classes.
fn labels(r: &mut Pcg64, b: usize, allowed: &[usize]) -> Vec<usize> {
    (0..b)
        .map(|_| allowed[r.random_range(0..allowed.len())])
        .collect()
}

// =============================================================================================
// parity_*: sequences of updates, each engine vs the truth (and the GPU vs the CPU)

/// `(N, K, B, decay, signed)`: N = 1, N not a multiple of 64, batch 1, K = 1, several
/// tiles of the GPU's regress.
const CASES: &[(usize, usize, usize, f64, bool)] = &[
    (1, 3, 5, 0.1, false),
    (37, 4, 1, 0.0, false),
    (100, 1, 8, 0.2, false),
    (200, 5, 16, 0.05, true),
    (1000, 7, 33, 0.1, false),
    (9000, 10, 24, 0.01, false),
];

fn parity_sequence(eng: Eng) {
    for (ci, &(n, k, b, decay, signed)) in CASES.iter().enumerate() {
        let mut r = rng(SEED ^ ci as u64);
        let mut c = clf(eng, n, k, decay);
        let mut t = Truth::new(n, k, decay, eng.u());
        // Some steps see only some classes: absent classes keep their rates.
        let schedules: Vec<Vec<usize>> = vec![
            (0..k).step_by(2).collect(),
            (0..k).collect(),
            vec![k - 1],
            (0..k).collect(),
            (1.min(k - 1)..k).collect(),
        ];
        for (s, allowed) in schedules.iter().enumerate() {
            let label = format!("{eng:?} case {ci} (N {n}, K {k}, B {b}, decay {decay}) step {s}");
            let x = inputs(&mut r, b, n, signed);
            let l = labels(&mut r, b, allowed);
            c.update(x.view(), &l)
                .unwrap_or_else(|e| panic!("{label}: update: {e}"));
            t.update(wide(&x).view(), &l);
            check_state(&label, &c, &t);
            let probe = inputs(&mut r, b.max(3), n, signed);
            for prop in [true, false] {
                check_logits(&label, eng, &mut c, probe.view(), prop);
            }
        }
    }
}

on_both_engines!(parity_sequence, parity_sequence_cpu, parity_sequence_gpu);

/// The GPU and the CPU through the same sequence, step by step: rates within the sum of
/// both bounds, assignments equal away from near ties, labels equal away from near ties.
fn parity_engines_case(n: usize, k: usize, b: usize, steps: usize, decay: f64, seed: u64) {
    let mut r = rng(seed);
    let mut g = clf(Eng::Gpu, n, k, decay);
    let mut c = clf(Eng::Cpu, n, k, decay);
    let mut t = Truth::new(n, k, decay, F32_U);
    for s in 0..steps {
        let label = format!("GPU vs CPU (N {n}, K {k}, B {b}) step {s}");
        let x = inputs(&mut r, b, n, false);
        let l = labels(&mut r, b, &(0..k).collect::<Vec<_>>());
        let pg = g.forward(x.view().into_dyn(), Some(&l)).unwrap();
        let pc = c.forward(x.view().into_dyn(), Some(&l)).unwrap();
        for ((idx, &a), &bb) in pg.logits.indexed_iter().zip(pc.logits.iter()) {
            let tol = 1e-4 * bb.abs().max(1e-3);
            assert!(
                (a - bb).abs() <= tol,
                "{label}: logit{idx:?} GPU {a} CPU {bb}"
            );
        }
        t.update(wide(&x).view(), &l);
        let (rg, rc) = (g.rates().unwrap(), c.rates().unwrap());
        for ((idx, &a), &bb) in rg.indexed_iter().zip(rc.iter()) {
            let tol = t.bound[idx.0 * k + idx.1] + 1e-300;
            assert!(
                (a - bb).abs() <= tol,
                "{label}: rate{idx:?} GPU {a} CPU {bb}"
            );
        }
        let (ag, ac) = (g.assignments().unwrap(), c.assignments().unwrap());
        let ta = t.assignments();
        for j in 0..n {
            if ta[j].1 > 2.0 * t.prop_tol(j) {
                assert_eq!(ag[j], ac[j], "{label}: assignment {j}");
            }
        }
    }
}

#[test]
fn parity_engines_forward_gpu() {
    parity_engines_case(1, 2, 1, 4, 0.3, SEED + 1);
    parity_engines_case(65, 3, 7, 5, 0.1, SEED + 2);
    parity_engines_case(4097, 10, 20, 4, 0.02, SEED + 3);
}

/// More rows than one GPU sub-batch (16 384): the class sums continue across sub-batches
/// and the logits are gathered from each.
#[test]
fn parity_sub_batches_gpu() {
    let (n, k, b) = (6, 3, 40_000);
    let mut r = rng(SEED + 7);
    let x = inputs(&mut r, b, n, false);
    let l = labels(&mut r, b, &[0, 2]);
    let mut g = clf(Eng::Gpu, n, k, 1e-4);
    let mut c = clf(Eng::Cpu, n, k, 1e-4);
    let mut t = Truth::new(n, k, 1e-4, F32_U);
    let pg = g.forward(x.view().into_dyn(), Some(&l)).unwrap();
    let pc = c.forward(x.view().into_dyn(), Some(&l)).unwrap();
    assert_eq!(pg.labels, pc.labels);
    t.update(wide(&x).view(), &l);
    check_state("sub-batches GPU", &g, &t);
    let x2 = inputs(&mut r, b, n, false);
    let (lg, lc) = (g.regress(x2.view()).unwrap(), c.regress(x2.view()).unwrap());
    for ((idx, &a), &bb) in lg.indexed_iter().zip(lc.iter()) {
        assert!(
            (a - bb).abs() <= 1e-4 * bb.abs().max(1e-3),
            "row {}: {a} vs {bb}",
            idx.0
        );
    }
    assert_eq!(argmax_rows(&lg).len(), b);
}

// =============================================================================================
// reference_*: the Python package's own output

fn reference_dir(case: &str) -> PathBuf {
    support::reference("classifier", case)
}

fn npy<T: ndarray_npy::ReadNpyExt>(dir: &std::path::Path, name: &str) -> T {
    ndarray_npy::read_npy(dir.join(name))
        .unwrap_or_else(|e| panic!("{}: {e}", dir.join(name).display()))
}

/// The reference logits are `f32` from torch: allow the seed's own `f32` error as well as
/// ours (relative to the magnitude of the terms).
fn close(label: &str, got: f64, want: f64, scale: f64) {
    let tol = 2e-6 * scale.max(want.abs()) + 1e-7;
    assert!(
        (got - want).abs() <= tol,
        "{label}: {got} vs reference {want} (tol {tol})"
    );
}

fn reference_seq_decay_1d(eng: Eng) {
    let dir = reference_dir("seq_decay_1d");
    let params: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("params.json")).unwrap()).unwrap();
    let n = params["shape"][0].as_u64().unwrap() as usize;
    let k = params["num_classes"].as_u64().unwrap() as usize;
    let decay = params["decay"].as_f64().unwrap();
    let steps = params["steps"].as_u64().unwrap() as usize;
    let mut c = clf(eng, n, k, decay);
    let probe: Array2<f32> = npy(&dir, "probe.npy");

    // Before any update: the proportional logits are 0 here as in the seed; occurrences are
    // those of the zero rates (every neuron in class 0), where the seed reports zeros
    // (documented difference).
    let before: Array2<f32> = npy(&dir, "step0_logits_prop_before_update.npy");
    let lg = c.regress(probe.view()).unwrap();
    assert_eq!(lg, before, "{eng:?}: proportional logits before any update");
    let occ0: Array1<i64> = npy(&dir, "step0_occurrences_before_update.npy");
    assert!(occ0.iter().all(|&o| o == 0));
    let mut want0 = vec![0u64; k];
    want0[0] = n as u64;
    assert_eq!(c.occurrences().unwrap(), want0);

    for s in 0..steps {
        let label = format!("{eng:?} reference step {s}");
        let x: Array2<f32> = npy(&dir, &format!("step{s}_inputs.npy"));
        let l: Array1<i64> = npy(&dir, &format!("step{s}_labels.npy"));
        let l: Vec<usize> = l.iter().map(|&v| v as usize).collect();
        c.update(x.view(), &l).unwrap();
        let rates: Array2<f32> = npy(&dir, &format!("step{s}_rates.npy"));
        let props: Array2<f32> = npy(&dir, &format!("step{s}_proportions.npy"));
        let assign: Array1<i64> = npy(&dir, &format!("step{s}_assignments.npy"));
        let occ: Array1<i64> = npy(&dir, &format!("step{s}_occurrences.npy"));
        let scale = rates.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
        let got = c.rates().unwrap();
        for (idx, &w) in rates.indexed_iter() {
            close(&format!("{label} rate{idx:?}"), got[idx], w as f64, scale);
        }
        let gp = c.proportions().unwrap();
        for (idx, &w) in props.indexed_iter() {
            close(
                &format!("{label} proportion{idx:?}"),
                gp[idx],
                w as f64,
                1.0,
            );
        }
        // Assignments: exact wherever the reference's top two proportions are apart.
        let ga = c.assignments().unwrap();
        for j in 0..n {
            let row = props.row(j);
            let a = assign[j] as usize;
            let second = (0..k)
                .filter(|&q| q != a)
                .map(|q| row[q])
                .fold(f32::NEG_INFINITY, f32::max);
            if row[a] - second > 1e-5 || row[a] == second {
                assert_eq!(ga[j], a, "{label}: assignment of neuron {j}");
            }
        }
        let go = c.occurrences().unwrap();
        let wo: Vec<u64> = occ.iter().map(|&v| v as u64).collect();
        assert_eq!(go, wo, "{label}: occurrences");
        for (prop, tag) in [(true, "prop"), (false, "noprop")] {
            c.set_proportional(prop);
            let want: Array2<f32> = npy(&dir, &format!("step{s}_logits_{tag}.npy"));
            let wcls: Array1<i64> = npy(&dir, &format!("step{s}_classify_{tag}.npy"));
            let p = c.forward(probe.view().into_dyn(), None).unwrap();
            let lscale = want.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
            for (idx, &w) in want.indexed_iter() {
                close(
                    &format!("{label} logits_{tag}{idx:?}"),
                    p.logits[idx] as f64,
                    w as f64,
                    lscale,
                );
            }
            for (b, &wc) in wcls.iter().enumerate() {
                let row = want.row(b);
                let wc = wc as usize;
                let second = (0..k)
                    .filter(|&q| q != wc)
                    .map(|q| row[q])
                    .fold(f32::NEG_INFINITY, f32::max);
                if row[wc] - second > 1e-5 * lscale as f32 || row[wc] == second {
                    assert_eq!(p.labels[b], wc, "{label}: classify_{tag} of probe row {b}");
                }
            }
        }
        c.set_proportional(true);
    }
}

on_both_engines!(
    reference_seq_decay_1d,
    reference_seq_decay_1d_cpu,
    reference_seq_decay_1d_gpu
);

// =============================================================================================
// spec_*: hand-checkable cases

/// Exact ties go to the first index: in assignments (equal rates) and in classify (equal
/// logits).
fn spec_ties_first_index(eng: Eng) {
    let mut c = clf(eng, 4, 3, 0.0);
    // Neuron 0 ties classes 0 and 1; neuron 1 ties 1 and 2; neuron 2 ties all three;
    // neuron 3 prefers class 2.
    let r = ndarray::arr2(&[
        [2.0f32, 2.0, 1.0],
        [0.0, 3.0, 3.0],
        [1.0, 1.0, 1.0],
        [0.0, 1.0, 5.0],
    ]);
    c.set_rates(r.view()).unwrap();
    assert_eq!(c.assignments().unwrap(), vec![0, 1, 0, 2]);
    assert_eq!(c.occurrences().unwrap(), vec![2, 1, 1]);
    // Non-proportional logits: class 0 = (x0 + x2)/2, class 1 = x1, class 2 = x3.
    c.set_proportional(false);
    let x = ndarray::arr2(&[
        [1.0f32, 1.0, 1.0, 1.0], // all logits 1 → class 0
        [0.0, 2.0, 0.0, 2.0],    // classes 1 and 2 tie → 1
        [0.0, 0.0, 0.0, 0.0],    // all zero → 0
    ]);
    let p = c.forward(x.view().into_dyn(), None).unwrap();
    assert_eq!(p.logits.row(0).to_vec(), vec![1.0, 1.0, 1.0]);
    assert_eq!(p.labels, vec![0, 1, 0]);
    // Ties created by an update: identical inputs for two classes, one sample each.
    let mut c = clf(eng, 3, 2, 0.5);
    let x = ndarray::arr2(&[[0.25f32, 0.0, 0.75], [0.25, 0.0, 0.75]]);
    c.update(x.view(), &[1, 0]).unwrap();
    assert_eq!(c.assignments().unwrap(), vec![0, 0, 0]);
    assert_eq!(c.occurrences().unwrap(), vec![3, 0]);
}

on_both_engines!(
    spec_ties_first_index,
    spec_ties_first_index_cpu,
    spec_ties_first_index_gpu
);

/// A class with no neurons has logit 0, never NaN (0/0) or inf (x/0); negative sums over an
/// empty class too.
fn spec_empty_class_logits_zero(eng: Eng) {
    let mut c = clf(eng, 5, 4, 0.0);
    let x = ndarray::arr2(&[
        [1.0f32, 0.0, 0.0, 0.0, 0.0],
        [0.0, 1.0, 0.0, 0.0, 0.0],
        [0.0, 0.0, 1.0, 1.0, 1.0],
    ]);
    // Classes 0 and 1 get neurons; 2 and 3 none.
    c.update(x.view(), &[0, 1, 0]).unwrap();
    assert_eq!(c.occurrences().unwrap(), vec![4, 1, 0, 0]);
    for prop in [true, false] {
        c.set_proportional(prop);
        let probe = ndarray::arr2(&[[1.0f32, 2.0, 3.0, 4.0, 5.0], [-1.0, -2.0, -3.0, 0.0, 0.0]]);
        let lg = c.regress(probe.view()).unwrap();
        for b in 0..2 {
            assert_eq!(lg[[b, 2]], 0.0, "prop {prop}");
            assert_eq!(lg[[b, 3]], 0.0, "prop {prop}");
            assert!(lg.iter().all(|v| v.is_finite()));
        }
        if !prop {
            assert_eq!(lg.row(0).to_vec(), vec![13.0 / 4.0, 2.0, 0.0, 0.0]);
            assert_eq!(lg.row(1).to_vec(), vec![-1.0, -2.0, 0.0, 0.0]);
            // Row 1: class 2 (0) beats classes 0 and 1 (negative): first of the zeros.
            assert_eq!(c.classify(probe.view()).unwrap(), vec![0, 2]);
        }
    }
    // Untrained: zero rates put every neuron in class 0 with weight 0.
    let mut c = clf(eng, 3, 2, 0.0);
    let x = ndarray::arr2(&[[1.0f32, 2.0, 3.0]]);
    assert_eq!(c.regress(x.view()).unwrap().row(0).to_vec(), vec![0.0, 0.0]);
    c.set_proportional(false);
    assert_eq!(c.regress(x.view()).unwrap().row(0).to_vec(), vec![2.0, 0.0]);
}

on_both_engines!(
    spec_empty_class_logits_zero,
    spec_empty_class_logits_zero_cpu,
    spec_empty_class_logits_zero_gpu
);

/// Decay semantics by hand: `c_k` samples of class k decay its rates by `exp(−λ·c_k)`;
/// absent classes keep theirs.
fn spec_decay_by_hand(eng: Eng) {
    let mut c = clf(eng, 2, 3, 0.5);
    let x = ndarray::arr2(&[[1.0f32, 0.0], [3.0, 2.0], [0.0, 4.0]]);
    c.update(x.view(), &[0, 0, 1]).unwrap();
    // class 0: mean of rows 0,1 = (2, 1); class 1: row 2 = (0, 4); class 2 absent.
    let r = c.rates().unwrap();
    assert_eq!(r.row(0).to_vec(), vec![2.0, 0.0, 0.0]);
    assert_eq!(r.row(1).to_vec(), vec![1.0, 4.0, 0.0]);
    let x2 = ndarray::arr2(&[[1.0f32, 1.0]]);
    c.update(x2.view(), &[1]).unwrap();
    let r = c.rates().unwrap();
    let d1 = (-0.5f64).exp();
    let tol = 1e-6;
    assert_eq!(r[[0, 0]], 2.0, "class 0 absent: unchanged");
    assert!((r[[0, 1]] - (0.0 * d1 + 1.0)).abs() < tol);
    assert!((r[[1, 1]] - (4.0 * d1 + 1.0)).abs() < tol, "{}", r[[1, 1]]);
    assert_eq!(r[[1, 0]], 1.0);
    let p = c.proportions().unwrap();
    assert!((p[[1, 1]] - (4.0 * d1 + 1.0) / (1.0 + 4.0 * d1 + 1.0)).abs() < tol);
    assert_eq!(c.assignments().unwrap(), vec![0, 1]);
}

on_both_engines!(
    spec_decay_by_hand,
    spec_decay_by_hand_cpu,
    spec_decay_by_hand_gpu
);

/// `numpy.packbits(spikes, axis=0)`: big-endian bits, zero-padded last plane.
fn packbits(s: &Array3<u8>) -> Array3<u8> {
    let (t, b, n) = s.dim();
    let mut p = Array3::zeros((t.div_ceil(8), b, n));
    for ((ti, bi, ni), &v) in s.indexed_iter() {
        if v != 0 {
            p[[ti / 8, bi, ni]] |= 0x80 >> (ti % 8);
        }
    }
    p
}

fn spikes(r: &mut Pcg64, t: usize, b: usize, n: usize, p: f32) -> Array3<u8> {
    Array3::from_shape_fn((t, b, n), |_| (r.random::<f32>() < p) as u8)
}

/// Forward with a time axis, with packed spikes (and on the device, with both and with a
/// `u8` raster) equals forward on the same spikes: logits, labels and the updated state,
/// bit for bit; and matches forward on the precomputed mean within rounding.
fn spec_forward_time_and_packed(eng: Eng) {
    let mut r = rng(SEED + 11);
    let (n, k, b) = (70, 4, 9);
    let mut base = clf(eng, n, k, 0.1);
    let warm = inputs(&mut r, 12, n, false);
    base.update(warm.view(), &labels(&mut r, 12, &[0, 1, 2, 3]))
        .unwrap();
    let rates = base.rates().unwrap();
    for t in [1usize, 8, 13] {
        let s = spikes(&mut r, t, b, n, 0.3);
        // A bad bit past T in the last plane must be ignored.
        let mut packed = packbits(&s);
        if t % 8 != 0 {
            packed[[t / 8, 0, 0]] |= 1;
        }
        let l = labels(&mut r, b, &[0, 1, 3]);
        let fresh = |r: &Array2<f64>| {
            let mut c = clf(eng, n, k, 0.1);
            c.set_rates(r.view()).unwrap();
            c
        };
        let sf = s.mapv(f32::from);
        let mut c1 = fresh(&rates);
        let p1 = c1.forward(sf.view().into_dyn(), Some(&l)).unwrap();
        let mut c2 = fresh(&rates);
        let p2 = c2.forward_packed(packed.view(), t, Some(&l)).unwrap();
        assert_eq!(p1, p2, "{eng:?} T {t}: time axis vs packed");
        assert_eq!(c1.rates().unwrap(), c2.rates().unwrap(), "T {t}: rates");
        assert_eq!(c1.assignments().unwrap(), c2.assignments().unwrap());
        // Against forward on the mean, rounded to f32 (the CPU keeps its mean in f64).
        let mean = sf.mean_axis(Axis(0)).unwrap();
        let mut c3 = fresh(&rates);
        let p3 = c3.forward(mean.view().into_dyn(), Some(&l)).unwrap();
        for (a, bb) in p1.logits.iter().zip(p3.logits.iter()) {
            assert!((a - bb).abs() <= 1e-5 * bb.abs().max(1e-3), "{a} vs {bb}");
        }
        if eng == Eng::Gpu {
            let Engine::Gpu(ctx) = gpu() else {
                unreachable!()
            };
            let dev_f = DeviceArray::upload(&ctx, sf.view().into_dyn()).unwrap();
            let dev_u = DeviceArray::upload(&ctx, s.view().into_dyn()).unwrap();
            let dev_p = DeviceArray::upload(&ctx, packed.view().into_dyn()).unwrap();
            let mut c4 = fresh(&rates);
            assert_eq!(
                c4.forward_device(&dev_f, Some(&l)).unwrap(),
                p1,
                "device f32"
            );
            assert_eq!(c4.rates().unwrap(), c1.rates().unwrap());
            let mut c5 = fresh(&rates);
            assert_eq!(
                c5.forward_device(&dev_u, Some(&l)).unwrap(),
                p1,
                "device u8"
            );
            let mut c6 = fresh(&rates);
            assert_eq!(
                c6.forward_packed_device(&dev_p, t, Some(&l)).unwrap(),
                p1,
                "device packed"
            );
            assert_eq!(c6.rates().unwrap(), c1.rates().unwrap());
        }
    }
}

on_both_engines!(
    spec_forward_time_and_packed,
    spec_forward_time_and_packed_cpu,
    spec_forward_time_and_packed_gpu
);

/// An empty batch is valid: empty outputs, no change.
fn spec_empty_batch(eng: Eng) {
    let mut r = rng(SEED + 12);
    let mut c = clf(eng, 10, 3, 0.2);
    c.update(inputs(&mut r, 4, 10, false).view(), &[0, 1, 2, 0])
        .unwrap();
    let before = c.rates().unwrap();
    let empty = Array2::<f32>::zeros((0, 10));
    c.update(empty.view(), &[]).unwrap();
    assert_eq!(c.regress(empty.view()).unwrap().dim(), (0, 3));
    assert!(c.classify(empty.view()).unwrap().is_empty());
    let p = c.forward(empty.view().into_dyn(), Some(&[])).unwrap();
    assert!(p.labels.is_empty());
    assert_eq!(c.rates().unwrap(), before);
}

on_both_engines!(spec_empty_batch, spec_empty_batch_cpu, spec_empty_batch_gpu);

/// Long time axes: more planes than one GPU time-mean dispatch takes (16 384).
#[test]
fn spec_long_time_axis_gpu() {
    let mut r = rng(SEED + 13);
    let (t, b, n, k) = (20_000, 2, 3, 2);
    let s = spikes(&mut r, t, b, n, 0.1);
    let packed = packbits(&s);
    let l = vec![0, 1];
    let Engine::Gpu(ctx) = gpu() else {
        unreachable!()
    };
    let mut host = clf(Eng::Gpu, n, k, 0.0);
    let want = host.forward_packed(packed.view(), t, Some(&l)).unwrap();
    let mut dev = clf(Eng::Gpu, n, k, 0.0);
    let du = DeviceArray::upload(&ctx, s.view().into_dyn()).unwrap();
    assert_eq!(dev.forward_device(&du, Some(&l)).unwrap(), want);
    assert_eq!(dev.rates().unwrap(), host.rates().unwrap());
    let mut cpu = clf(Eng::Cpu, n, k, 0.0);
    cpu.forward_packed(packed.view(), t, Some(&l)).unwrap();
    let (a, bb) = (dev.rates().unwrap(), cpu.rates().unwrap());
    for (x, y) in a.iter().zip(bb.iter()) {
        assert!((x - y).abs() <= 1e-7 * y.abs().max(1e-3), "{x} vs {y}");
    }
}

// =============================================================================================
// state_*: save and load

fn state_save_load(eng: Eng) {
    let mut r = rng(SEED + 21);
    let (n, k) = (130, 6);
    let mut c = clf(eng, n, k, 0.05);
    for _ in 0..3 {
        let x = inputs(&mut r, 10, n, false);
        c.update(x.view(), &labels(&mut r, 10, &[0, 1, 2, 3, 5]))
            .unwrap();
    }
    let dir = std::env::temp_dir().join(format!(
        "neurokernels-classifier-{}-{eng:?}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("rates.npy");
    c.save_npy(&path).unwrap();
    // numpy-compatible: ndarray-npy reads the file as (N, K) f64.
    let back: Array2<f64> = ndarray_npy::read_npy(&path).unwrap();
    assert_eq!(back, c.rates().unwrap());
    // Load into a fresh classifier (on each engine): same state, same answers.
    let probe = inputs(&mut r, 7, n, false);
    for other in [eng, Eng::Cpu] {
        let mut d = clf(other, n, k, 0.05);
        d.load_npy(&path).unwrap();
        if other == eng {
            assert_eq!(d.rates().unwrap(), c.rates().unwrap());
            assert_eq!(d.proportions().unwrap(), c.proportions().unwrap());
            assert_eq!(d.assignments().unwrap(), c.assignments().unwrap());
            assert_eq!(d.occurrences().unwrap(), c.occurrences().unwrap());
            assert_eq!(
                d.regress(probe.view()).unwrap(),
                c.regress(probe.view()).unwrap()
            );
        } else {
            assert_eq!(d.assignments().unwrap(), c.assignments().unwrap());
        }
    }
    // A file written by numpy's own layout in f32, with a neuron shape (10, 13).
    let r32 = c.rates().unwrap().mapv(|v| v as f32);
    let shaped = r32.clone().into_shape_with_order((10, 13, k)).unwrap();
    let p32 = dir.join("rates32.npy");
    ndarray_npy::write_npy(&p32, &shaped).unwrap();
    let mut e = clf(eng, n, k, 0.05);
    e.load_npy(&p32).unwrap();
    assert_eq!(e.rates().unwrap(), r32.mapv(f64::from));
    // Loading a file of the wrong shape, or garbage, changes nothing.
    let before = e.rates().unwrap();
    let wrong = Array2::<f64>::zeros((n, k + 1));
    let pw = dir.join("wrong.npy");
    ndarray_npy::write_npy(&pw, &wrong).unwrap();
    assert!(matches!(e.load_npy(&pw), Err(Error::Shape { .. })));
    assert!(matches!(
        e.load_npy_bytes(b"not a npy file"),
        Err(Error::InvalidSetting { .. })
    ));
    assert!(matches!(
        e.load_npy(dir.join("missing.npy")),
        Err(Error::InvalidSetting { name: "path", .. })
    ));
    assert_eq!(e.rates().unwrap(), before);
    // In-memory round trip.
    let bytes = c.to_npy_bytes().unwrap();
    let mut f = clf(eng, n, k, 0.05);
    f.load_npy_bytes(&bytes).unwrap();
    assert_eq!(f.rates().unwrap(), c.rates().unwrap());
    // Reset.
    f.reset().unwrap();
    assert!(f.rates().unwrap().iter().all(|&v| v == 0.0));
    let _ = std::fs::remove_dir_all(&dir);
}

on_both_engines!(state_save_load, state_save_load_cpu, state_save_load_gpu);

// =============================================================================================
// error_*: typed errors, state unchanged

fn error_state_unchanged(eng: Eng) {
    let mut r = rng(SEED + 31);
    let (n, k) = (50, 3);
    let mut c = clf(eng, n, k, 0.1);
    let mut twin = clf(eng, n, k, 0.1);
    let x0 = inputs(&mut r, 6, n, false);
    let l0 = [0, 1, 2, 0, 1, 2];
    c.update(x0.view(), &l0).unwrap();
    twin.update(x0.view(), &l0).unwrap();
    let x = inputs(&mut r, 4, n, false);
    // Labels out of range.
    let e = c.update(x.view(), &[0, 1, 3, 0]).unwrap_err();
    assert!(
        matches!(
            e,
            Error::IndexOutOfRange {
                what: "label",
                index: 3,
                bound: 3
            }
        ),
        "{e:?}"
    );
    let e = c
        .forward(x.view().into_dyn(), Some(&[0, 1, 2, 7]))
        .unwrap_err();
    assert!(
        matches!(e, Error::IndexOutOfRange { index: 7, .. }),
        "{e:?}"
    );
    // Label count.
    let e = c.update(x.view(), &[0, 1]).unwrap_err();
    assert!(matches!(e, Error::Shape { what: "labels", .. }), "{e:?}");
    // Input shapes.
    let wrong = Array2::<f32>::zeros((4, n + 1));
    assert!(matches!(
        c.update(wrong.view(), &[0, 0, 0, 0]),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(c.regress(wrong.view()), Err(Error::Shape { .. })));
    let four = ndarray::ArrayD::<f32>::zeros(vec![2, 2, 4, n]);
    assert!(matches!(
        c.forward(four.view(), None),
        Err(Error::Shape { .. })
    ));
    let t0 = Array3::<f32>::zeros((0, 4, n));
    assert!(matches!(
        c.forward(t0.view().into_dyn(), None),
        Err(Error::Shape { .. })
    ));
    let packed = Array3::<u8>::zeros((2, 4, n));
    assert!(matches!(
        c.forward_packed(packed.view(), 17, None),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(
        c.forward_packed(packed.view(), 0, None),
        Err(Error::InvalidSetting { .. })
    ));
    // Non-finite inputs: update, regress, forward with a time axis.
    let mut bad = x.clone();
    bad[[2, 17]] = f32::NAN;
    let e = c.update(bad.view(), &[0, 1, 2, 0]).unwrap_err();
    assert!(
        matches!(
            e,
            Error::NonFinite {
                sample: 2,
                channel: 17,
                ..
            }
        ),
        "{e:?}"
    );
    bad[[2, 17]] = f32::INFINITY;
    let e = c.regress(bad.view()).unwrap_err();
    assert!(
        matches!(
            e,
            Error::NonFinite {
                sample: 2,
                channel: 17,
                ..
            }
        ),
        "{e:?}"
    );
    let e = c
        .forward(bad.view().into_dyn(), Some(&[0, 1, 2, 0]))
        .unwrap_err();
    assert!(matches!(e, Error::NonFinite { .. }), "{e:?}");
    let mut bad3 = Array3::<f32>::zeros((3, 4, n));
    bad3[[1, 3, 5]] = f32::NEG_INFINITY;
    let e = c
        .forward(bad3.view().into_dyn(), Some(&[0, 0, 0, 0]))
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::NonFinite {
                sample: 3,
                channel: 5,
                ..
            }
        ),
        "{e:?}"
    );
    // Rates that would overflow f32.
    let mut big = clf(eng, 2, 2, 0.0);
    let mut big_twin = clf(eng, 2, 2, 0.0);
    let huge = ndarray::arr2(&[[3e38f32, 0.0], [1.0, 2.0]]);
    big.update(huge.view(), &[0, 1]).unwrap();
    big_twin.update(huge.view(), &[0, 1]).unwrap();
    let e = big.update(huge.view(), &[0, 1]).unwrap_err();
    assert!(
        matches!(
            e,
            Error::NonFinite {
                sample: 0,
                channel: 0,
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(big.rates().unwrap(), big_twin.rates().unwrap());
    // Bad rates.
    let nan = ndarray::arr2(&[[f64::NAN, 0.0], [0.0, 0.0]]);
    assert!(matches!(
        big.set_rates(nan.view()),
        Err(Error::NonFinite { .. })
    ));
    let shape = Array2::<f64>::zeros((3, 2));
    assert!(matches!(
        big.set_rates(shape.view()),
        Err(Error::Shape { .. })
    ));
    assert_eq!(big.rates().unwrap(), big_twin.rates().unwrap());
    // Device inputs on the CPU engine.
    if eng == Eng::Cpu {
        let Engine::Gpu(ctx) = gpu() else {
            unreachable!()
        };
        let d = DeviceArray::upload(&ctx, x.view().into_dyn()).unwrap();
        assert!(matches!(
            c.update_device(&d, &[0, 1, 2, 0]),
            Err(Error::DeviceArray(_))
        ));
    }
    // The state is the twin's: the next valid call gives the same everywhere.
    assert_eq!(c.rates().unwrap(), twin.rates().unwrap());
    let l = [2, 2, 0, 1];
    let pc = c.forward(x.view().into_dyn(), Some(&l)).unwrap();
    let pt = twin.forward(x.view().into_dyn(), Some(&l)).unwrap();
    assert_eq!(pc, pt);
    assert_eq!(c.rates().unwrap(), twin.rates().unwrap());
    assert_eq!(c.assignments().unwrap(), twin.assignments().unwrap());
    assert_eq!(c.occurrences().unwrap(), twin.occurrences().unwrap());
}

on_both_engines!(
    error_state_unchanged,
    error_state_unchanged_cpu,
    error_state_unchanged_gpu
);

fn error_settings(eng: Eng) {
    let e = eng.engine();
    for (s, name) in [
        (ClassifierSettings::new(0, 3), "n_neurons"),
        (ClassifierSettings::new(3, 0), "n_classes"),
        (
            ClassifierSettings {
                decay: -0.1,
                ..ClassifierSettings::new(3, 3)
            },
            "decay",
        ),
        (
            ClassifierSettings {
                decay: f64::NAN,
                ..ClassifierSettings::new(3, 3)
            },
            "decay",
        ),
    ] {
        match MaxRateClassifier::new(&e, s) {
            Err(Error::InvalidSetting { name: got, .. }) => assert_eq!(got, name),
            other => panic!("{s:?}: {other:?}"),
        }
    }
}

on_both_engines!(error_settings, error_settings_cpu, error_settings_gpu);

// =============================================================================================
// device_*: device inputs (GPU)

#[test]
fn device_inputs_match_host_gpu() {
    let Engine::Gpu(ctx) = gpu() else {
        unreachable!()
    };
    let mut r = rng(SEED + 41);
    let (n, k) = (333, 5);
    let mut h = clf(Eng::Gpu, n, k, 0.1);
    let mut d = clf(Eng::Gpu, n, k, 0.1);
    for s in 0..3 {
        let x = inputs(&mut r, 11, n, false);
        let l = labels(&mut r, 11, &[0, 1, 2, 4]);
        let dx = DeviceArray::upload(&ctx, x.view().into_dyn()).unwrap();
        h.update(x.view(), &l).unwrap();
        d.update_device(&dx, &l).unwrap();
        assert_eq!(h.rates().unwrap(), d.rates().unwrap(), "step {s}");
        let probe = inputs(&mut r, 6, n, false);
        let dp = DeviceArray::upload(&ctx, probe.view().into_dyn()).unwrap();
        assert_eq!(
            h.regress(probe.view()).unwrap(),
            d.regress_device(&dp).unwrap()
        );
        assert_eq!(
            h.classify(probe.view()).unwrap(),
            d.classify_device(&dp).unwrap()
        );
        assert_eq!(
            h.forward(probe.view().into_dyn(), Some(&[0, 1, 2, 3, 4, 0]))
                .unwrap(),
            d.forward_device(&dp, Some(&[0, 1, 2, 3, 4, 0])).unwrap()
        );
    }
    // A NaN on the device is found there; the update is rejected and nothing changes.
    let before = d.rates().unwrap();
    let mut bad = inputs(&mut r, 3, n, false);
    bad[[1, 200]] = f32::NAN;
    let db = DeviceArray::upload(&ctx, bad.view().into_dyn()).unwrap();
    let e = d.update_device(&db, &[0, 1, 2]).unwrap_err();
    assert!(
        matches!(
            e,
            Error::NonFinite {
                sample: 1,
                channel: 200,
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(d.rates().unwrap(), before);
    assert!(matches!(
        d.regress_device(&db),
        Err(Error::NonFinite { .. })
    ));
    // Wrong dtype / shape.
    let du = DeviceArray::upload(&ctx, Array2::<u32>::zeros((2, n)).view().into_dyn()).unwrap();
    assert!(matches!(d.regress_device(&du), Err(Error::DeviceArray(_))));
    let dw = DeviceArray::upload(&ctx, Array2::<f32>::zeros((2, n + 1)).view().into_dyn()).unwrap();
    assert!(matches!(d.regress_device(&dw), Err(Error::Shape { .. })));
    assert_eq!(d.rates().unwrap(), before);
}

// =============================================================================================
// bound_*: the f32 logit bound at a large N (several regress tiles)

#[test]
fn bound_logits_large_n_gpu() {
    let mut r = rng(SEED + 51);
    let (n, k, b) = (300_000, 10, 4);
    let mut g = clf(Eng::Gpu, n, k, 0.0);
    let x = inputs(&mut r, 8, n, false);
    let l = labels(&mut r, 8, &(0..k).collect::<Vec<_>>());
    g.update(x.view(), &l).unwrap();
    // Adversarial probe: a wide dynamic range, so that f32 sums round.
    let probe = Array2::from_shape_fn((b, n), |(_, j)| {
        let v: f32 = r.random();
        if j % 7 == 0 {
            v * 1000.0
        } else {
            v * 1e-3
        }
    });
    for prop in [true, false] {
        check_logits("large N", Eng::Gpu, &mut g, probe.view(), prop);
    }
    assert!(g.regress_depth() >= 64 + 64 + 2);
}
