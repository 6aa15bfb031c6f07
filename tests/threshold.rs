//! Threshold crossing (SPEC §1, end) on both engines, against a plain sequential `f64` truth
//! written here from the definition (whole stream at once, crossing by crossing), against
//! each other, and against the reference vectors produced from the seed's definition.
//!
//! Groups: `spec_*` hand-checkable cases, `parity_*` random inputs of awkward sizes,
//! `chunking_*` chunk invariance, `reference_*` the shared vectors, `device_*` the device
//! path (slot overflow, split bindings), `error_*` bad input (each followed by a good chunk
//! whose output must equal that of a run that never saw the bad one).
//!
//! GPU tests never skip: without an adapter they fail.

mod support;

use support::{ctx, engines, gpu, rng};

use std::path::PathBuf;

use ndarray::{s, Array1, Array2, ArrayView2};
use neurokernels::{DeviceArray, Engine, Error, Event, ThresholdCrossing, ThresholdSettings};
use rand::Rng;

// ---------------------------------------------------------------------------------------------
// Engines

// ---------------------------------------------------------------------------------------------
// The truth: plain sequential f64, whole stream, from the definition in the module docs.

/// `floor(dur · fs)` on the decimal values written, in `u128` (independent of the crate).
fn floor_exact(dur: f64, fs: f64) -> u64 {
    fn frac(x: f64) -> (u128, u128) {
        let s = format!("{x}");
        let (int, f) = s.split_once('.').unwrap_or((&s, ""));
        let num: u128 = format!("{int}{f}").parse().expect("a plain decimal");
        (num, 10u128.pow(f.len() as u32))
    }
    if dur == 0.0 {
        return 0;
    }
    let (a, b) = frac(dur);
    let (c, d) = frac(fs);
    ((a * c) / (b * d)) as u64
}

/// The running z-score of one channel (the documented recurrence, in f64).
fn zscore(x: &[f64], tau_samples: f64) -> Vec<f64> {
    let alpha = 1.0 - (-1.0 / tau_samples).exp();
    let (mut m, mut v) = (0.0f64, 0.0f64);
    x.iter()
        .enumerate()
        .map(|(t, &xt)| {
            if t == 0 {
                m = xt;
                v = 0.0;
            } else {
                let d = xt - m;
                m += alpha * d;
                v = (1.0 - alpha) * (v + alpha * d * d);
            }
            if v > 0.0 {
                (xt - m) / v.sqrt()
            } else {
                0.0
            }
        })
        .collect()
}

/// The detection signal of every channel (raw, or z-scored).
fn detection(x: ArrayView2<f32>, st: &ThresholdSettings, fs: f64) -> Vec<Vec<f64>> {
    (0..x.ncols())
        .map(|c| {
            let col: Vec<f64> = x.column(c).iter().map(|&v| v as f64).collect();
            if st.auto_scale_tau > 0.0 {
                zscore(&col, st.auto_scale_tau * fs)
            } else {
                col
            }
        })
        .collect()
}

/// Every event of the whole stream `x` (first sample at `st.first_sample`), sorted by
/// (sample, channel). Events still open at the stream's end are not included.
fn truth(x: ArrayView2<f32>, thr: &[f64], st: &ThresholdSettings, fs: f64) -> Vec<Event> {
    let (n, nc) = x.dim();
    let refrac = floor_exact(st.refrac_dur, fs) as usize;
    let w = (floor_exact(st.max_peak_dur, fs) as usize).max(1);
    let minw = floor_exact(st.min_peak_dur, fs) as usize;
    let peak_mode = st.align_on_peak || st.return_peak_val || minw >= 2;
    let det = detection(x, st, fs);
    let mut out = Vec::new();
    for c in 0..nc {
        let t = thr[c];
        let positive = t >= 0.0;
        let over: Vec<bool> = det[c]
            .iter()
            .map(|&d| if positive { d >= t } else { d <= t })
            .collect();
        let raw = x.column(c);
        let mut last: Option<usize> = None;
        for k in 1..n {
            if !over[k] || over[k - 1] {
                continue;
            }
            if last.is_some_and(|l| k - l <= refrac) {
                continue;
            }
            if !peak_mode {
                out.push(ev(st.first_sample + k as u64, c, 1.0));
                last = Some(k);
                continue;
            }
            let mut len = 0;
            while len < w && k + len < n && over[k + len] {
                len += 1;
            }
            if len < w && k + len == n {
                continue; // peak still open when the stream ends
            }
            let returned = len < w;
            if returned && len < minw {
                continue;
            }
            let mut p = k;
            for j in k..k + len {
                if (positive && raw[j] > raw[p]) || (!positive && raw[j] < raw[p]) {
                    p = j;
                }
            }
            let sample = if st.align_on_peak { p } else { k };
            let value = if st.return_peak_val { raw[p] } else { 1.0 };
            out.push(ev(st.first_sample + sample as u64, c, value));
            last = Some(sample);
        }
    }
    out.sort_by_key(|e| (e.sample, e.channel));
    out
}

fn ev(sample: u64, channel: usize, value: f32) -> Event {
    Event {
        sample,
        channel: channel as u32,
        value,
    }
}

// ---------------------------------------------------------------------------------------------
// Inputs, chunkings, drivers, comparisons

/// Gaussian noise (σ = 1) with spike-like deflections of either sign every ~`gap` samples.
fn spiky(n: usize, nc: usize, seed: u64, gap: usize) -> Array2<f32> {
    let mut r = rng(seed);
    let mut x = Array2::<f32>::zeros((n, nc));
    for v in x.iter_mut() {
        let (u1, u2): (f64, f64) = (r.random::<f64>().max(1e-300), r.random());
        *v = ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32;
    }
    let shape = [0.3f32, 0.8, 1.0, 0.7, 0.45, 0.2, -0.15, -0.25, -0.1];
    for c in 0..nc {
        let mut t = r.random_range(0..gap.max(2));
        while t < n {
            let amp = r.random_range(4.0f32..12.0) * if r.random::<bool>() { 1.0 } else { -1.0 };
            for (j, &sh) in shape.iter().enumerate() {
                if t + j < n {
                    x[[t + j, c]] += amp * sh;
                }
            }
            t += r.random_range(1..2 * gap.max(2));
        }
    }
    x
}

/// Bounds `0, k, 2k, …, n`.
fn fixed(n: usize, k: usize) -> Vec<usize> {
    let mut b: Vec<usize> = (0..n).step_by(k).collect();
    b.push(n);
    b
}

/// Random bounds with chunks of 0..=max samples (empty chunks included).
fn random_bounds(n: usize, max: usize, seed: u64) -> Vec<usize> {
    let mut r = rng(seed);
    let mut b = vec![0];
    let mut at = 0;
    while at < n {
        at = (at + r.random_range(0..=max)).min(n);
        b.push(at);
    }
    b
}

/// Runs `x` through `op` in the chunks `bounds`, checking every chunk's bookkeeping; returns
/// the concatenated events sorted by (sample, channel). `device`: through `process_device`.
fn stream(
    op: &mut ThresholdCrossing,
    x: ArrayView2<f32>,
    bounds: &[usize],
    device: bool,
) -> Vec<Event> {
    let first = op.position();
    let mut all = Vec::new();
    for w in bounds.windows(2) {
        let chunk = x.slice(s![w[0]..w[1], ..]);
        let out = if device {
            let arr = DeviceArray::upload(&ctx(), chunk.into_dyn()).expect("upload");
            let dev = op.process_device(&arr).expect("process_device");
            assert_eq!(dev.chunk_start(), first + w[0] as u64);
            assert_eq!(dev.n_samples(), w[1] - w[0]);
            op.events_to_host(&dev).expect("events_to_host")
        } else {
            op.process(chunk).expect("process")
        };
        let end = first + w[1] as u64;
        assert_eq!(op.position(), end, "position after chunk {w:?}");
        for pair in out.windows(2) {
            assert!(
                (pair[0].sample, pair[0].channel) < (pair[1].sample, pair[1].channel),
                "chunk {w:?} output not sorted: {pair:?}"
            );
        }
        for e in &out {
            assert!(
                e.sample >= first && e.sample < end,
                "event {e:?} outside the stream so far"
            );
        }
        all.extend(out);
    }
    all.sort_by_key(|e| (e.sample, e.channel));
    all
}

fn new_op(
    engine: &Engine,
    st: ThresholdSettings,
    fs: f64,
    thr: Option<&[f32]>,
) -> ThresholdCrossing {
    match thr {
        Some(t) => ThresholdCrossing::with_thresholds(engine, st, fs, t.to_vec()),
        None => ThresholdCrossing::new(engine, st, fs),
    }
    .expect("valid settings")
}

#[track_caller]
fn assert_events(label: &str, got: &[Event], want: &[Event]) {
    let key = |e: &Event| (e.sample, e.channel, e.value.to_bits());
    if got.iter().map(key).eq(want.iter().map(key)) {
        return;
    }
    let i = got
        .iter()
        .zip(want)
        .position(|(a, b)| key(a) != key(b))
        .unwrap_or(got.len().min(want.len()));
    panic!(
        "{label}: {} events, expected {}; first difference at index {i}: got {:?}, expected {:?}",
        got.len(),
        want.len(),
        got.get(i),
        want.get(i)
    );
}

/// Events as (sample, channel, value) triples, for hand-written expectations.
fn triples(ev: &[Event]) -> Vec<(u64, u32, f32)> {
    ev.iter().map(|e| (e.sample, e.channel, e.value)).collect()
}

fn col(v: &[f32]) -> Array2<f32> {
    Array2::from_shape_vec((v.len(), 1), v.to_vec()).expect("column")
}

fn base(threshold: f64) -> ThresholdSettings {
    ThresholdSettings {
        threshold,
        refrac_dur: 0.0,
        max_peak_dur: 0.0,
        min_peak_dur: 0.0,
        ..Default::default()
    }
}

/// Runs a hand case on both engines (host path, and the device path on the GPU), as one chunk
/// and as 1-sample chunks; every run must give `want`, and the truth must too.
#[track_caller]
fn hand_case(
    label: &str,
    x: &Array2<f32>,
    st: ThresholdSettings,
    fs: f64,
    want: &[(u64, u32, f32)],
) {
    let thr = vec![st.threshold; x.ncols()];
    assert_eq!(
        triples(&truth(x.view(), &thr, &st, fs)),
        want,
        "{label}: truth"
    );
    let n = x.nrows();
    for (name, e) in engines() {
        for bounds in [vec![0, n], fixed(n, 1)] {
            let mut op = new_op(&e, st, fs, None);
            let got = stream(&mut op, x.view(), &bounds, false);
            assert_eq!(
                triples(&got),
                want,
                "{label}: {name}, {} chunks",
                bounds.len() - 1
            );
            if e.is_gpu() {
                let mut op = new_op(&e, st, fs, None);
                let got = stream(&mut op, x.view(), &bounds, true);
                assert_eq!(
                    triples(&got),
                    want,
                    "{label}: {name} device, {} chunks",
                    bounds.len() - 1
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// spec_*: hand-checkable cases

#[test]
fn spec_defaults_are_the_seeds() {
    let d = ThresholdSettings::default();
    assert_eq!(
        (
            d.threshold,
            d.max_peak_dur,
            d.min_peak_dur,
            d.refrac_dur,
            d.auto_scale_tau
        ),
        (-3.5, 0.002, 0.0, 0.001, 0.0)
    );
    assert!(!d.align_on_peak && !d.return_peak_val);
    assert_eq!(d.first_sample, 0);
    let op = ThresholdCrossing::new(&Engine::cpu(), d, 30_000.0).unwrap();
    assert_eq!(
        (
            op.refrac_samples(),
            op.max_peak_samples(),
            op.min_peak_samples()
        ),
        (30, 60, 0)
    );
    // Exact decimal widths: 0.0157 s × 30 kHz is 471 samples, not 470.
    let st = ThresholdSettings {
        refrac_dur: 0.0157,
        max_peak_dur: 0.0157,
        ..d
    };
    let op = ThresholdCrossing::new(&Engine::cpu(), st, 30_000.0).unwrap();
    assert_eq!((op.refrac_samples(), op.max_peak_samples()), (471, 471));
}

#[test]
fn spec_crossings_both_directions() {
    let x = col(&[
        0.0, 1.0, 2.0, 0.0, 2.0, 2.0, 0.0, -3.0, 0.0, -3.0, -2.5, 0.0, -2.5,
    ]);
    // ≥ 1.5 (equality counts: 2.0 ≥ 2.0 below).
    hand_case(
        "positive",
        &x,
        base(1.5),
        1000.0,
        &[(2, 0, 1.0), (4, 0, 1.0)],
    );
    hand_case(
        "positive, equal",
        &x,
        base(2.0),
        1000.0,
        &[(2, 0, 1.0), (4, 0, 1.0)],
    );
    // ≤ −2.5, equality counts.
    hand_case(
        "negative",
        &x,
        base(-2.5),
        1000.0,
        &[(7, 0, 1.0), (9, 0, 1.0), (12, 0, 1.0)],
    );
    // Threshold 0 is positive-going: x ≥ 0. Every sample but 7, 9, 10, 12 is ≥ 0.
    hand_case("zero", &x, base(0.0), 1000.0, &[(8, 0, 1.0), (11, 0, 1.0)]);
}

#[test]
fn spec_first_sample_never_crosses() {
    let x = col(&[5.0, 0.0, 5.0, 5.0]);
    hand_case("first", &x, base(1.0), 1000.0, &[(2, 0, 1.0)]);
    // Nor after a reset.
    for (_, e) in engines() {
        let mut op = new_op(&e, base(1.0), 1000.0, None);
        op.process(x.view()).unwrap();
        op.reset();
        assert_eq!(op.position(), 0);
        assert_eq!(triples(&op.process(x.view()).unwrap()), vec![(2, 0, 1.0)]);
    }
}

#[test]
fn spec_threshold_compared_exactly() {
    // 0.1f32 = 0.100000001490116…; a threshold just above it (but rounding to it in f32)
    // is not reached, one just below is.
    let x32 = 0.1f32;
    let above = x32 as f64 + 1e-12;
    let below = x32 as f64 - 1e-12;
    assert_eq!(above as f32, x32);
    let x = col(&[0.0, x32, 0.0, x32]);
    hand_case("above", &x, base(above), 1000.0, &[]);
    hand_case(
        "below",
        &x,
        base(below),
        1000.0,
        &[(1, 0, 1.0), (3, 0, 1.0)],
    );
    let x = col(&[0.0, -x32, 0.0, -x32]);
    hand_case("neg above", &x, base(-above), 1000.0, &[]);
    hand_case(
        "neg below",
        &x,
        base(-below),
        1000.0,
        &[(1, 0, 1.0), (3, 0, 1.0)],
    );
}

/// Single-sample spikes at `at` on a zero background.
fn spikes(n: usize, at: &[usize], v: f32) -> Array2<f32> {
    let mut x = vec![0.0f32; n];
    for &t in at {
        x[t] = v;
    }
    col(&x)
}

#[test]
fn spec_refractory() {
    let x = spikes(30, &[10, 13, 15, 19, 21], -5.0);
    let ones = |v: &[u64]| v.iter().map(|&s| (s, 0, 1.0)).collect::<Vec<_>>();
    // Width 3 (3 ms at 1 kHz): 13 is 3 after 10 (≤ 3: dropped); 15 is 5 after the last
    // *accepted* event 10 (kept) although only 2 after the dropped 13; 19 is 4 after 15; 21 is
    // 2 after 19 (dropped).
    let st = ThresholdSettings {
        refrac_dur: 0.003,
        ..base(-1.0)
    };
    hand_case("width 3", &x, st, 1000.0, &ones(&[10, 15, 19]));
    // Width 2 (the seed ignores widths ≤ 2): 15 − 13 = 2 and 21 − 19 = 2 are dropped.
    let st = ThresholdSettings {
        refrac_dur: 0.002,
        ..base(-1.0)
    };
    hand_case("width 2", &x, st, 1000.0, &ones(&[10, 13, 19]));
    // Width 0: everything.
    hand_case(
        "width 0",
        &x,
        base(-1.0),
        1000.0,
        &ones(&[10, 13, 15, 19, 21]),
    );
}

#[test]
fn spec_refractory_across_chunks() {
    let x = spikes(40, &[10, 13, 15, 19, 30], -5.0);
    let st = ThresholdSettings {
        refrac_dur: 0.004,
        ..base(-1.0)
    };
    // Width 4: 13 (3 after 10) is dropped, 15 (5 after 10) kept, 19 (4 after 15) dropped.
    let want = vec![(10, 0, 1.0), (15, 0, 1.0), (30, 0, 1.0)];
    for (name, e) in engines() {
        for bounds in [
            vec![0, 12, 40],
            vec![0, 11, 14, 16, 19, 20, 40],
            fixed(40, 3),
        ] {
            let mut op = new_op(&e, st, 1000.0, None);
            assert_eq!(
                triples(&stream(&mut op, x.view(), &bounds, false)),
                want,
                "{name} {bounds:?}"
            );
        }
    }
}

#[test]
fn spec_crossing_on_a_chunk_boundary() {
    // The crossing is the first sample of the second chunk: its previous sample is in the
    // first chunk.
    let x = col(&[0.0, 0.0, 0.0, 3.0, 3.0, 0.0, 3.0]);
    for (name, e) in engines() {
        let mut op = new_op(&e, base(1.0), 1000.0, None);
        assert!(op.process(x.slice(s![0..3, ..])).unwrap().is_empty());
        assert_eq!(
            triples(&op.process(x.slice(s![3..6, ..])).unwrap()),
            vec![(3, 0, 1.0)],
            "{name}"
        );
        // Over at the end of one chunk and the start of the next: no new crossing.
        let mut op = new_op(&e, base(1.0), 1000.0, None);
        assert_eq!(
            triples(&op.process(x.slice(s![0..4, ..])).unwrap()),
            vec![(3, 0, 1.0)]
        );
        assert!(
            op.process(x.slice(s![4..5, ..])).unwrap().is_empty(),
            "{name}"
        );
        assert_eq!(
            triples(&op.process(x.slice(s![5..7, ..])).unwrap()),
            vec![(6, 0, 1.0)]
        );
    }
}

#[test]
fn spec_peak_alignment_and_value() {
    // Threshold −1, window 5 samples. Crossing at 2, run 2..=4 (min −3 at 3), return at 5.
    let x = col(&[0.0, 0.0, -1.5, -3.0, -2.0, -0.5, 0.0]);
    let st = ThresholdSettings {
        max_peak_dur: 0.005,
        ..base(-1.0)
    };
    hand_case("plain", &x, st, 1000.0, &[(2, 0, 1.0)]);
    let a = ThresholdSettings {
        align_on_peak: true,
        ..st
    };
    hand_case("align", &x, a, 1000.0, &[(3, 0, 1.0)]);
    let v = ThresholdSettings {
        return_peak_val: true,
        ..st
    };
    hand_case("value", &x, v, 1000.0, &[(2, 0, -3.0)]);
    let av = ThresholdSettings {
        align_on_peak: true,
        return_peak_val: true,
        ..st
    };
    hand_case("align+value", &x, av, 1000.0, &[(3, 0, -3.0)]);
    // Positive threshold: the maximum; ties go to the first.
    let x = col(&[0.0, 2.0, 4.0, 3.0, 4.0, 0.0]);
    let st = ThresholdSettings {
        max_peak_dur: 0.005,
        align_on_peak: true,
        return_peak_val: true,
        ..base(1.0)
    };
    hand_case("positive, tie", &x, st, 1000.0, &[(2, 0, 4.0)]);
}

#[test]
fn spec_peak_window_is_cut_after_max_peak_dur() {
    // A run of 8 over-threshold samples from 1; window 5 samples (1..=5): the −9s at 6..8
    // are outside it. The event resolves at sample 5, while still over threshold; the
    // signal then returns and crosses again at 10.
    let x = col(&[
        0.0, -1.2, -1.5, -2.0, -1.8, -1.6, -9.0, -9.0, -9.0, 0.0, -4.0, 0.0,
    ]);
    let st = ThresholdSettings {
        max_peak_dur: 0.005,
        align_on_peak: true,
        return_peak_val: true,
        ..base(-1.0)
    };
    hand_case("window", &x, st, 1000.0, &[(3, 0, -2.0), (10, 0, -4.0)]);
    // max_peak_dur below one sample: the window is the crossing sample itself.
    let st = ThresholdSettings {
        max_peak_dur: 0.0,
        ..st
    };
    hand_case("window 1", &x, st, 1000.0, &[(1, 0, -1.2), (10, 0, -4.0)]);
}

#[test]
fn spec_min_peak_dur() {
    // Runs: 2 samples at 1..=2, 3 samples at 5..=7, 1 sample at 10, 6 samples at 12..=17
    // (past the 5-sample window: always kept).
    let mut v = vec![0.0f32; 20];
    for t in [1, 2, 5, 6, 7, 10, 12, 13, 14, 15, 16, 17] {
        v[t] = -2.0;
    }
    let x = col(&v);
    let st = ThresholdSettings {
        max_peak_dur: 0.005,
        min_peak_dur: 0.003,
        ..base(-1.0)
    };
    hand_case("min 3", &x, st, 1000.0, &[(5, 0, 1.0), (12, 0, 1.0)]);
    // A dropped event starts no refractory period: with width 4, 5 − 1 = 4 would be
    // refractory after an accepted event at 1, but the event at 1 was dropped.
    let st = ThresholdSettings {
        refrac_dur: 0.004,
        ..st
    };
    hand_case(
        "min 3 + refractory",
        &x,
        st,
        1000.0,
        &[(5, 0, 1.0), (12, 0, 1.0)],
    );
    // min_peak_dur of one sample is no constraint.
    let st = ThresholdSettings {
        max_peak_dur: 0.005,
        min_peak_dur: 0.001,
        ..base(-1.0)
    };
    hand_case(
        "min 1",
        &x,
        st,
        1000.0,
        &[(1, 0, 1.0), (5, 0, 1.0), (10, 0, 1.0), (12, 0, 1.0)],
    );
}

#[test]
fn spec_align_on_peak_refractory_counts_from_the_peak() {
    // Crossing at 1, run 1..=5 with its minimum at 5, return at 6. Next crossings at 8 and 10.
    // Refractory width 3 counts from the reported sample (the peak, 5): 8 − 5 = 3 is dropped,
    // 10 − 5 = 5 is kept. Without alignment it counts from the crossing (1): 8 is kept, 10 is
    // 2 after 8 and dropped.
    let x = col(&[
        0.0, -1.5, -2.0, -2.5, -3.0, -4.0, 0.0, 0.0, -2.0, 0.0, -2.0, 0.0,
    ]);
    let st = ThresholdSettings {
        max_peak_dur: 0.01,
        refrac_dur: 0.003,
        align_on_peak: true,
        ..base(-1.0)
    };
    hand_case("aligned", &x, st, 1000.0, &[(5, 0, 1.0), (10, 0, 1.0)]);
    let st = ThresholdSettings {
        align_on_peak: false,
        return_peak_val: true,
        ..st
    };
    hand_case("not aligned", &x, st, 1000.0, &[(1, 0, -4.0), (8, 0, -2.0)]);
}

#[test]
fn spec_open_peak_is_held_into_the_next_chunk() {
    // Crossing at 10 whose run lasts to 13: the first chunk (0..12) cannot resolve it; the
    // second emits it at sample 10, before its own start (as a negative relative sample on
    // the device).
    let mut v = vec![0.0f32; 20];
    v[10..14].copy_from_slice(&[-2.0, -3.0, -5.0, -2.0]);
    let x = col(&v);
    let st = ThresholdSettings {
        max_peak_dur: 0.01,
        return_peak_val: true,
        ..base(-1.0)
    };
    for (name, e) in engines() {
        let mut op = new_op(&e, st, 1000.0, None);
        assert!(
            op.process(x.slice(s![0..12, ..])).unwrap().is_empty(),
            "{name}"
        );
        assert_eq!(
            triples(&op.process(x.slice(s![12..20, ..])).unwrap()),
            vec![(10, 0, -5.0)]
        );
        if e.is_gpu() {
            let mut op = new_op(&e, st, 1000.0, None);
            let a = DeviceArray::upload(&ctx(), x.slice(s![0..12, ..]).into_dyn()).unwrap();
            let d = op.process_device(&a).unwrap();
            assert!(op.events_to_host(&d).unwrap().is_empty());
            let b = DeviceArray::upload(&ctx(), x.slice(s![12..20, ..]).into_dyn()).unwrap();
            let d = op.process_device(&b).unwrap();
            assert_eq!(d.chunk_start(), 12);
            assert_eq!(
                triples(&op.events_to_host(&d).unwrap()),
                vec![(10, 0, -5.0)]
            );
        }
    }
    // Without peak options nothing is held: the event comes with its crossing.
    for (name, e) in engines() {
        let mut op = new_op(&e, base(-1.0), 1000.0, None);
        assert_eq!(
            triples(&op.process(x.slice(s![0..12, ..])).unwrap()),
            vec![(10, 0, 1.0)],
            "{name}"
        );
    }
}

#[test]
fn spec_auto_scale_by_hand() {
    // x = 0, 0, 0, 10 with τ·fs = 4: the variance is 0 until sample 3 (z = 0 there); at 3,
    // δ = 10, m = 10α, v = (1 − α)·α·100, z = (10 − 10α)/√v = √((1 − α)/α) ≈ 1.876.
    let alpha = 1.0 - (-0.25f64).exp();
    let z3 = ((1.0 - alpha) / alpha).sqrt();
    assert!((z3 - 1.8758).abs() < 1e-3, "{z3}");
    let x = col(&[0.0, 0.0, 0.0, 10.0]);
    let st = ThresholdSettings {
        auto_scale_tau: 0.004,
        ..base(1.8)
    };
    hand_case("z over", &x, st, 1000.0, &[(3, 0, 1.0)]);
    let st = ThresholdSettings {
        auto_scale_tau: 0.004,
        ..base(1.9)
    };
    hand_case("z under", &x, st, 1000.0, &[]);
    // Peak values stay raw.
    let st = ThresholdSettings {
        auto_scale_tau: 0.004,
        return_peak_val: true,
        max_peak_dur: 0.003,
        ..base(1.8)
    };
    let x = col(&[0.0, 0.0, 0.0, 10.0, 0.0]);
    hand_case("raw value", &x, st, 1000.0, &[(3, 0, 10.0)]);
    // A constant signal has zero variance: z = 0, never over a nonzero threshold.
    let x = col(&[7.0; 50]);
    let st = ThresholdSettings {
        auto_scale_tau: 0.01,
        ..base(0.5)
    };
    hand_case("constant", &x, st, 1000.0, &[]);
}

#[test]
fn spec_per_channel_thresholds() {
    // Channel 0 ≥ 1, channel 1 ≤ −1, channel 2 ≥ 0 (zero is positive-going).
    let x = ndarray::arr2(&[
        [0.0f32, 0.0, -1.0],
        [2.0, -2.0, 0.0],
        [0.0, 2.0, -1.0],
        [2.0, -2.0, 1.0],
    ]);
    let thr = [1.0f32, -1.0, 0.0];
    let st = base(99.0); // ignored
    let thr64: Vec<f64> = thr.iter().map(|&t| t as f64).collect();
    let want = truth(x.view(), &thr64, &st, 1000.0);
    assert_eq!(
        triples(&want),
        vec![
            (1, 0, 1.0),
            (1, 1, 1.0),
            (1, 2, 1.0),
            (3, 0, 1.0),
            (3, 1, 1.0),
            (3, 2, 1.0)
        ]
    );
    for (name, e) in engines() {
        let mut op = new_op(&e, st, 1000.0, Some(&thr));
        assert_eq!(op.n_channels(), Some(3));
        assert_events(name, &stream(&mut op, x.view(), &fixed(4, 1), false), &want);
    }
}

#[test]
fn spec_stream_starting_near_2_pow_32() {
    let first = (1u64 << 32) - 100;
    let x = spiky(400, 3, 7, 25);
    let st = ThresholdSettings {
        threshold: -3.0,
        refrac_dur: 0.004,
        max_peak_dur: 0.005,
        align_on_peak: true,
        return_peak_val: true,
        first_sample: first,
        ..Default::default()
    };
    let want = truth(x.view(), &[-3.0; 3], &st, 1000.0);
    assert!(want.iter().any(|e| e.sample < 1 << 32) && want.iter().any(|e| e.sample > 1 << 32));
    for (name, e) in engines() {
        // A boundary exactly at 2³², others around it.
        for bounds in [
            vec![0, 100, 400],
            vec![0, 37, 99, 100, 101, 250, 400],
            fixed(400, 7),
        ] {
            let mut op = new_op(&e, st, 1000.0, None);
            assert_eq!(op.position(), first);
            assert_events(
                &format!("{name} {bounds:?}"),
                &stream(&mut op, x.view(), &bounds, false),
                &want,
            );
            assert_eq!(op.position(), first + 400);
            if e.is_gpu() {
                let mut op = new_op(&e, st, 1000.0, None);
                assert_events(
                    "gpu device",
                    &stream(&mut op, x.view(), &bounds, true),
                    &want,
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// reference_*: vectors from the shared reference set

fn reference_dir() -> PathBuf {
    support::reference("chain", "threshold_neg_no_refrac")
}

#[test]
fn reference_threshold_neg_no_refrac() {
    let dir = reference_dir();
    let params: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("params.json")).expect("params.json"),
    )
    .expect("json");
    let fs = params["fs"].as_f64().unwrap();
    let st = ThresholdSettings {
        threshold: params["threshold"].as_f64().unwrap(),
        refrac_dur: params["refrac_dur"].as_f64().unwrap(),
        ..base(0.0)
    };
    let x: Array2<f32> = ndarray_npy::read_npy(dir.join("input.npy")).expect("input.npy");
    let expected: Array2<i64> =
        ndarray_npy::read_npy(dir.join("expected_events.npy")).expect("expected");
    let want: Vec<(u64, u32)> = expected
        .rows()
        .into_iter()
        .map(|r| (r[0] as u64, r[1] as u32))
        .collect();
    assert_eq!(want.len(), 1024);
    let thr = vec![st.threshold; x.ncols()];
    let pairs = |v: &[Event]| v.iter().map(|e| (e.sample, e.channel)).collect::<Vec<_>>();
    assert_eq!(pairs(&truth(x.view(), &thr, &st, fs)), want, "truth");
    let mut k = 0;
    while dir.join(format!("chunking{k}_bounds.npy")).exists() {
        let b: Array1<i64> =
            ndarray_npy::read_npy(dir.join(format!("chunking{k}_bounds.npy"))).unwrap();
        let bounds: Vec<usize> = b.iter().map(|&v| v as usize).collect();
        for (name, e) in engines() {
            let mut op = new_op(&e, st, fs, None);
            assert_eq!(
                pairs(&stream(&mut op, x.view(), &bounds, false)),
                want,
                "{name} chunking {k}"
            );
            if e.is_gpu() && k % 2 == 1 {
                let mut op = new_op(&e, st, fs, None);
                assert_eq!(
                    pairs(&stream(&mut op, x.view(), &bounds, true)),
                    want,
                    "device chunking {k}"
                );
            }
        }
        k += 1;
    }
    assert!(k >= 5, "expected five chunkings, found {k}");
}

// ---------------------------------------------------------------------------------------------
// parity_* and chunking_*: random inputs

/// Settings variants exercised on random data (fs = 1 kHz unless said).
fn variants(threshold: f64) -> Vec<(&'static str, ThresholdSettings)> {
    let b = ThresholdSettings {
        threshold,
        ..Default::default()
    };
    vec![
        (
            "crossings only",
            ThresholdSettings {
                refrac_dur: 0.0,
                ..b
            },
        ),
        (
            "refractory",
            ThresholdSettings {
                refrac_dur: 0.004,
                ..b
            },
        ),
        (
            "align + value",
            ThresholdSettings {
                refrac_dur: 0.003,
                max_peak_dur: 0.006,
                align_on_peak: true,
                return_peak_val: true,
                ..b
            },
        ),
        (
            "min dur",
            ThresholdSettings {
                refrac_dur: 0.002,
                max_peak_dur: 0.004,
                min_peak_dur: 0.002,
                ..b
            },
        ),
    ]
}

#[test]
fn parity_random_awkward_sizes() {
    // (samples, channels, max chunk): 1 channel; 65 channels (WG_SIZE + 1); 1031 channels.
    let cases = [
        (1500usize, 1usize, 130usize),
        (700, 65, 127),
        (240, 1031, 63),
    ];
    for (ci, &(n, nc, maxc)) in cases.iter().enumerate() {
        let x = spiky(n, nc, 100 + ci as u64, 30);
        for (vi, (vname, st)) in variants(if ci == 1 { 3.0 } else { -3.0 })
            .into_iter()
            .enumerate()
        {
            let want = truth(x.view(), &vec![st.threshold; nc], &st, 1000.0);
            assert!(!want.is_empty());
            let bounds = random_bounds(n, maxc, (ci * 10 + vi) as u64);
            let mut outs = Vec::new();
            for (name, e) in engines() {
                let mut op = new_op(&e, st, 1000.0, None);
                let got = stream(&mut op, x.view(), &bounds, false);
                assert_events(&format!("case {ci} {vname} {name}"), &got, &want);
                outs.push(got);
                if e.is_gpu() {
                    let mut op = new_op(&e, st, 1000.0, None);
                    let got = stream(&mut op, x.view(), &bounds, true);
                    assert_events(&format!("case {ci} {vname} gpu device"), &got, &want);
                }
            }
            assert_events("gpu vs cpu", &outs[1], &outs[0]);
        }
    }
}

#[test]
fn chunking_invariance_both_engines() {
    let n = 360;
    let x = spiky(n, 5, 42, 15);
    let chunkings = [
        vec![0, n],
        fixed(n, 1),
        fixed(n, 2),
        fixed(n, 64),
        fixed(n, 65),
        random_bounds(n, 9, 1),
        random_bounds(n, 100, 2),
    ];
    for (vname, st) in variants(-3.0) {
        let want = truth(x.view(), &[-3.0; 5], &st, 1000.0);
        for (name, e) in engines() {
            for (k, bounds) in chunkings.iter().enumerate() {
                let mut op = new_op(&e, st, 1000.0, None);
                assert_events(
                    &format!("{vname} {name} chunking {k}"),
                    &stream(&mut op, x.view(), bounds, false),
                    &want,
                );
            }
        }
    }
}

#[test]
fn chunking_strided_input_views() {
    // Any strides: a transposed (channel-major) array and a sliced view give the same events.
    let x = spiky(300, 4, 9, 20);
    let t = x.t().to_owned(); // (channels, samples), standard layout
    let view = t.t(); // (samples, channels), column-major strides
    let st = variants(-3.0)[2].1;
    let want = truth(x.view(), &[-3.0; 4], &st, 1000.0);
    for (name, e) in engines() {
        let mut op = new_op(&e, st, 1000.0, None);
        assert_events(name, &stream(&mut op, view, &fixed(300, 37), false), &want);
    }
}

#[test]
fn parity_auto_scale_counts_only_near_threshold_differences() {
    // τ = 10 ms at 30 kHz (τ·fs = 300). The CPU's statistics are f64, the GPU's f32: a channel
    // may differ only when some sample's z-score is within float error of the threshold.
    let (n, nc, fs) = (3000usize, 70usize, 30_000.0);
    let x = spiky(n, nc, 5, 60);
    let st = ThresholdSettings {
        threshold: -3.5,
        refrac_dur: 0.0002,
        max_peak_dur: 0.0003,
        align_on_peak: true,
        return_peak_val: true,
        auto_scale_tau: 0.01,
        ..Default::default()
    };
    let thr = vec![st.threshold; nc];
    let want = truth(x.view(), &thr, &st, fs);
    let det = detection(x.view(), &st, fs);
    let tol = 1e-3;
    let near: Vec<bool> = det
        .iter()
        .map(|z| z.iter().any(|&v| (v - st.threshold).abs() < tol))
        .collect();
    let bounds = random_bounds(n, 700, 3);
    let per_channel = |v: &[Event], c: usize| -> Vec<Event> {
        v.iter()
            .filter(|e| e.channel as usize == c)
            .copied()
            .collect()
    };
    let mut differing = 0;
    for (name, e) in engines() {
        let mut op = new_op(&e, st, fs, None);
        let got = stream(&mut op, x.view(), &bounds, false);
        for (c, &is_near) in near.iter().enumerate() {
            let (g, w) = (per_channel(&got, c), per_channel(&want, c));
            let same = g.len() == w.len()
                && g.iter()
                    .zip(&w)
                    .all(|(a, b)| (a.sample, a.value.to_bits()) == (b.sample, b.value.to_bits()));
            if !same {
                assert!(
                    is_near,
                    "{name}: channel {c} differs but no z-score is within {tol} of the threshold"
                );
                differing += 1;
            }
        }
    }
    let n_near = near.iter().filter(|&&b| b).count();
    eprintln!("auto-scale: {n_near} of {nc} channels have a z within {tol} of the threshold; {differing} channel runs differ");
    assert!(
        n_near <= 3,
        "test data too close to the threshold: {n_near} channels"
    );
    assert!(
        want.len() > 50,
        "too few events to mean anything: {}",
        want.len()
    );
}

// ---------------------------------------------------------------------------------------------
// device_*: the device path

#[test]
fn device_slot_overflow_reruns_and_held_outputs_survive() {
    // Alternating over/under on every sample: ~n/2 events per channel, far past the initial
    // 16 slots, so the first chunk overflows and is re-run with more.
    let (n, nc) = (200, 40);
    let x = Array2::from_shape_fn(
        (n, nc),
        |(t, c)| if (t + c) % 2 == 0 { 1.0f32 } else { -1.0 },
    );
    let st = base(0.5);
    let want = truth(x.view(), &vec![0.5; nc], &st, 1000.0);
    let e = gpu();
    let mut op = new_op(&e, st, 1000.0, None);
    let a = DeviceArray::upload(&ctx(), x.slice(s![0..120, ..]).into_dyn()).unwrap();
    let d1 = op.process_device(&a).unwrap();
    assert!(d1.capacity() >= 60, "capacity {}", d1.capacity());
    let first = op.events_to_host(&d1).unwrap();
    // While d1 is held, the next chunk must not overwrite its buffers.
    let b = DeviceArray::upload(&ctx(), x.slice(s![120..n, ..]).into_dyn()).unwrap();
    let d2 = op.process_device(&b).unwrap();
    assert_events(
        "held output unchanged",
        &op.events_to_host(&d1).unwrap(),
        &first,
    );
    let mut all = first;
    all.extend(op.events_to_host(&d2).unwrap());
    all.sort_by_key(|e| (e.sample, e.channel));
    assert_events("overflowing chunks", &all, &want);
    // The host path overflows the same way.
    let mut op = new_op(&e, st, 1000.0, None);
    assert_events(
        "host path",
        &stream(&mut op, x.view(), &[0, 7, 150, n], false),
        &want,
    );
}

#[test]
fn device_split_bindings() {
    // A tiny binding limit splits every chunk into row pieces and channel groups.
    let (n, nc) = (300, 37);
    let x = spiky(n, nc, 11, 12);
    for (vname, st) in variants(-3.0) {
        let want = truth(x.view(), &vec![-3.0; nc], &st, 1000.0);
        for device in [false, true] {
            let mut op = new_op(&gpu(), st, 1000.0, None);
            op.debug_set_binding_limit(Some(2048));
            let got = stream(&mut op, x.view(), &[0, 1, 170, 170, n], device);
            assert_events(&format!("{vname} split, device {device}"), &got, &want);
        }
    }
}

#[test]
fn device_chunk_longer_than_the_per_invocation_loop_limit() {
    // llvmpipe (lavapipe and GL) silently stops an invocation after ~65 535 loop iterations:
    // one chunk of 90 000 rows (3 s at 30 kHz) must still give every event, on both engines,
    // through the host and the device path, with open peaks straddling the row pieces. The
    // operator runs at 1 kHz so that `variants` keep their widths in samples.
    let (n, nc) = (90_000usize, 3usize);
    let mut x = spiky(n, nc, 17, 25);
    // On channel 0, a spike whose run straddles every multiple of 2¹⁴ rows (and of 2¹⁴ rows
    // plus 7), where the kernel's row pieces may start: its peak is open across the piece
    // boundary.
    let boundaries: Vec<usize> = (1..=n / 16_384)
        .flat_map(|k| [16_384 * k, 16_384 * k + 7])
        .collect();
    for &b in &boundaries {
        x.slice_mut(s![b - 10..b + 10, 0]).fill(0.0);
    }
    for &b in &boundaries {
        for (j, v) in [-8.0f32, -9.0, -10.0, -9.0].into_iter().enumerate() {
            x[[b - 2 + j, 0]] = v;
        }
    }
    for (vname, st) in variants(-3.0) {
        let want = truth(x.view(), &vec![-3.0; nc], &st, 1000.0);
        for &b in &boundaries {
            assert!(
                want.iter()
                    .any(|e| e.channel == 0 && e.sample.abs_diff(b as u64) <= 2),
                "{vname}: no event at the boundary {b} in the truth"
            );
        }
        // Events all the way to the end: a kernel stopped early would lose the tail.
        assert!(
            want.last().is_some_and(|e| e.sample > n as u64 - 200),
            "{vname}: events end early in the truth"
        );
        let mut outs = Vec::new();
        for (name, e) in engines() {
            let mut op = new_op(&e, st, 1000.0, None);
            let got = stream(&mut op, x.view(), &[0, n], false);
            assert_events(&format!("{vname} one long chunk, {name}"), &got, &want);
            outs.push(got);
            if e.is_gpu() {
                // After a short chunk, so the pieces start at an odd stream offset.
                let mut op = new_op(&e, st, 1000.0, None);
                let got = stream(&mut op, x.view(), &[0, 7, n], true);
                assert_events(&format!("{vname} long chunk, gpu device"), &got, &want);
            }
        }
        assert_events(&format!("{vname} gpu vs cpu"), &outs[1], &outs[0]);
    }
}

// ---------------------------------------------------------------------------------------------
// error_*: bad input

#[track_caller]
fn setting_err(r: Result<ThresholdCrossing, Error>, name: &str) {
    match r {
        Err(Error::InvalidSetting { name: n, .. }) => assert_eq!(n, name),
        other => panic!("expected an invalid `{name}`, got {other:?}"),
    }
}

#[test]
fn error_invalid_settings() {
    for (_, e) in engines() {
        let d = ThresholdSettings::default();
        let new = |st: ThresholdSettings, fs: f64| ThresholdCrossing::new(&e, st, fs);
        for fs in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            setting_err(new(d, fs), "fs");
        }
        for v in [-0.001, f64::NAN, f64::INFINITY] {
            setting_err(
                new(ThresholdSettings { refrac_dur: v, ..d }, 1000.0),
                "refrac_dur",
            );
            setting_err(
                new(
                    ThresholdSettings {
                        max_peak_dur: v,
                        ..d
                    },
                    1000.0,
                ),
                "max_peak_dur",
            );
            setting_err(
                new(
                    ThresholdSettings {
                        min_peak_dur: v,
                        ..d
                    },
                    1000.0,
                ),
                "min_peak_dur",
            );
            setting_err(
                new(
                    ThresholdSettings {
                        auto_scale_tau: v,
                        ..d
                    },
                    1000.0,
                ),
                "auto_scale_tau",
            );
        }
        for t in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            setting_err(
                new(ThresholdSettings { threshold: t, ..d }, 1000.0),
                "threshold",
            );
        }
        // min_peak_dur longer than the window.
        setting_err(
            new(
                ThresholdSettings {
                    max_peak_dur: 0.002,
                    min_peak_dur: 0.003,
                    ..d
                },
                1000.0,
            ),
            "min_peak_dur",
        );
        // Refractory width past u32.
        setting_err(
            new(
                ThresholdSettings {
                    refrac_dur: 1e6,
                    ..d
                },
                30_000.0,
            ),
            "refrac_dur",
        );
        setting_err(
            new(
                ThresholdSettings {
                    max_peak_dur: 1e6,
                    ..d
                },
                30_000.0,
            ),
            "max_peak_dur",
        );
        setting_err(
            ThresholdCrossing::with_thresholds(&e, d, 1000.0, vec![]),
            "thresholds",
        );
        setting_err(
            ThresholdCrossing::with_thresholds(&e, d, 1000.0, vec![1.0, f32::NAN]),
            "thresholds",
        );
    }
}

/// Uploads `x` and processes it on the device; the events stay there (none come back).
fn process_on_device(op: &mut ThresholdCrossing, x: &Array2<f32>) -> Result<Vec<Event>, Error> {
    let a = DeviceArray::upload(&ctx(), x.view().into_dyn()).expect("upload");
    op.process_device(&a).map(|_| Vec::new())
}

/// Runs `good_before`, then `bad` (must fail with an error `check` accepts), then
/// `good_after`; and the same without `bad`. Both runs' per-chunk outputs and positions must
/// be identical.
#[track_caller]
fn recovers(
    label: &str,
    make: &dyn Fn() -> ThresholdCrossing,
    before: &[Array2<f32>],
    bad: &dyn Fn(&mut ThresholdCrossing) -> Result<Vec<Event>, Error>,
    check: &dyn Fn(&Error) -> bool,
    after: &[Array2<f32>],
) {
    let mut with_bad = make();
    let mut clean = make();
    for c in before {
        assert_events(
            label,
            &with_bad.process(c.view()).unwrap(),
            &clean.process(c.view()).unwrap(),
        );
    }
    let pos = with_bad.position();
    match bad(&mut with_bad) {
        Err(e) => assert!(check(&e), "{label}: unexpected error {e:?}"),
        Ok(v) => panic!("{label}: bad chunk accepted ({} events)", v.len()),
    }
    assert_eq!(with_bad.position(), pos, "{label}: position moved");
    let mut any = false;
    for c in after {
        let a = with_bad.process(c.view()).unwrap();
        let b = clean.process(c.view()).unwrap();
        any |= !b.is_empty();
        assert_events(label, &a, &b);
    }
    assert!(any, "{label}: the chunks after should hold events");
    assert_eq!(with_bad.position(), clean.position());
}

/// A stream whose events are held open across chunk boundaries, split in three.
fn error_stream() -> (ThresholdSettings, Vec<Array2<f32>>) {
    let x = spiky(300, 6, 77, 10);
    let st = ThresholdSettings {
        threshold: -3.0,
        refrac_dur: 0.002,
        max_peak_dur: 0.006,
        align_on_peak: true,
        return_peak_val: true,
        auto_scale_tau: 0.05,
        ..Default::default()
    };
    let parts = [0, 101, 202, 300];
    let chunks = parts
        .windows(2)
        .map(|w| x.slice(s![w[0]..w[1], ..]).to_owned())
        .collect();
    (st, chunks)
}

#[test]
fn error_non_finite_values() {
    let (st, chunks) = error_stream();
    for (name, e) in engines() {
        let make = || new_op(&e, st, 1000.0, None);
        for (v, sample, channel) in [
            (f32::NAN, 7, 2),
            (f32::INFINITY, 0, 0),
            (f32::NEG_INFINITY, 99, 5),
        ] {
            let mut bad = chunks[1].clone();
            bad[[sample, channel]] = v;
            bad[[sample + 1, 0]] = f32::NAN; // a later one is not the one reported
            let bad_host = bad.clone();
            let is_it = move |err: &Error| matches!(err, Error::NonFinite { sample: s, channel: c, .. } if *s == sample && *c == channel);
            recovers(
                &format!("{name} {v} host"),
                &make,
                &chunks[..1],
                &|op| op.process(bad_host.view()),
                &is_it,
                &chunks[1..],
            );
            if e.is_gpu() {
                // Found on the device (no host scan).
                recovers(
                    &format!("{name} {v} device"),
                    &make,
                    &chunks[..1],
                    &|op| process_on_device(op, &bad),
                    &is_it,
                    &chunks[1..],
                );
            }
        }
    }
}

#[test]
fn error_non_finite_late_in_a_chunk_without_auto_scaling() {
    // Without auto-scaling the CPU engine finds non-finite samples in its detection pass and
    // rolls back: events emitted and peaks opened earlier in the bad chunk must leave no
    // trace, on the first chunk of the stream too.
    let x = spiky(400, 70, 78, 8);
    let chunks: Vec<Array2<f32>> = [0, 150, 300, 400]
        .windows(2)
        .map(|w| x.slice(s![w[0]..w[1], ..]).to_owned())
        .collect();
    for (vname, st) in variants(-3.0) {
        for (name, e) in engines() {
            let make = || new_op(&e, st, 1000.0, None);
            for (bad_at, v, sample, channel) in [
                (1, f32::NAN, 140, 66),
                (1, f32::NEG_INFINITY, 149, 0),
                (0, f32::INFINITY, 120, 9),
            ] {
                let mut bad = chunks[bad_at].clone();
                bad[[sample, channel]] = v;
                let is_it = move |err: &Error| matches!(err, Error::NonFinite { sample: s, channel: c, .. } if *s == sample && *c == channel);
                recovers(
                    &format!("{vname} {name} {v} in chunk {bad_at}"),
                    &make,
                    &chunks[..bad_at],
                    &|op| op.process(bad.view()),
                    &is_it,
                    &chunks[bad_at..],
                );
            }
        }
    }
}

#[test]
fn error_channel_count_changes() {
    let (st, chunks) = error_stream();
    for (name, e) in engines() {
        let make = || new_op(&e, st, 1000.0, None);
        let wrong = chunks[1].slice(s![.., ..5]).to_owned();
        let is_shape = |err: &Error| matches!(err, Error::Shape { .. });
        recovers(
            &format!("{name} 5 of 6"),
            &make,
            &chunks[..1],
            &|op| op.process(wrong.view()),
            &is_shape,
            &chunks[1..],
        );
        let none = Array2::<f32>::zeros((10, 0));
        recovers(
            &format!("{name} 0 channels"),
            &make,
            &chunks[..1],
            &|op| op.process(none.view()),
            &is_shape,
            &chunks[1..],
        );
        if e.is_gpu() {
            recovers(
                &format!("{name} device 5 of 6"),
                &make,
                &chunks[..1],
                &|op| process_on_device(op, &wrong),
                &is_shape,
                &chunks[1..],
            );
        }
        // A threshold vector fixes the count from the start.
        let thr = [-3.0f32; 6];
        let make_v = || new_op(&e, st, 1000.0, Some(&thr));
        recovers(
            &format!("{name} vector"),
            &make_v,
            &[],
            &|op| op.process(wrong.view()),
            &is_shape,
            &chunks,
        );
    }
}

#[test]
fn error_empty_chunks_are_valid_and_change_nothing() {
    let (st, chunks) = error_stream();
    for (name, e) in engines() {
        let make = || new_op(&e, st, 1000.0, None);
        let mut a = make();
        let mut b = make();
        for c in &chunks {
            let empty = Array2::<f32>::zeros((0, 6));
            assert!(a.process(empty.view()).unwrap().is_empty());
            assert_events(
                name,
                &a.process(c.view()).unwrap(),
                &b.process(c.view()).unwrap(),
            );
        }
        // An empty chunk with the wrong channel count is still an error.
        assert!(matches!(
            a.process(Array2::<f32>::zeros((0, 5)).view()),
            Err(Error::Shape { .. })
        ));
    }
}

#[test]
fn error_position_overflow() {
    for (_, e) in engines() {
        let st = ThresholdSettings {
            first_sample: u64::MAX - 5,
            ..base(1.0)
        };
        let mut op = new_op(&e, st, 1000.0, None);
        op.process(Array2::<f32>::zeros((5, 2)).view()).unwrap();
        let r = op.process(Array2::<f32>::zeros((3, 2)).view());
        assert!(matches!(r, Err(Error::PositionOverflow(_))), "{r:?}");
        assert_eq!(op.position(), u64::MAX);
        // The last representable position is reached without error; nothing more.
        op.process(Array2::<f32>::zeros((0, 2)).view()).unwrap();
    }
}

#[test]
fn error_device_inputs() {
    // The CPU engine has no device path.
    let mut cpu_op = new_op(&Engine::cpu(), base(1.0), 1000.0, None);
    let a = DeviceArray::upload(&ctx(), Array2::<f32>::zeros((4, 2)).into_dyn().view()).unwrap();
    assert!(matches!(
        cpu_op.process_device(&a),
        Err(Error::DeviceArray(_))
    ));
    let mut op = new_op(&gpu(), base(1.0), 1000.0, None);
    // Wrong element type, wrong rank.
    let u = DeviceArray::upload(&ctx(), Array2::<u32>::zeros((4, 2)).into_dyn().view()).unwrap();
    assert!(matches!(op.process_device(&u), Err(Error::DeviceArray(_))));
    let r3 = DeviceArray::upload(
        &ctx(),
        ndarray::Array3::<f32>::zeros((4, 2, 1)).into_dyn().view(),
    )
    .unwrap();
    assert!(matches!(op.process_device(&r3), Err(Error::Shape { .. })));
    assert_eq!(op.position(), 0);
    // A device chunk of zero samples is valid and yields no events.
    let z = DeviceArray::upload(&ctx(), Array2::<f32>::zeros((0, 2)).into_dyn().view()).unwrap();
    let d = op.process_device(&z).unwrap();
    assert!(op.events_to_host(&d).unwrap().is_empty());
    assert_eq!(op.n_channels(), Some(2));
}

// ---------------------------------------------------------------------------------------------
// The shader itself

#[test]
fn shader_validates_without_extra_capabilities() {
    // f32/i32/u32 only: it must validate with no capabilities (GL offers no f64, i64 or
    // subgroups).
    let src = include_str!("../shaders/threshold.wgsl");
    let module =
        naga::front::wgsl::parse_str(src).unwrap_or_else(|e| panic!("{}", e.emit_to_string(src)));
    naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::empty(),
    )
    .validate(&module)
    .unwrap_or_else(|e| panic!("{}", e.emit_to_string(src)));
    assert!(module.entry_points.iter().any(|e| e.name == "detect"));
}
