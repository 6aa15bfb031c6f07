//! Spike encoders (SPEC §4) on both engines: against a plain sequential truth written here
//! from the definitions, GPU against CPU bit for bit, the reference vectors of the Python
//! packages, numpy's packbits layout, batch-split invariance, statistics, and typed errors.
//!
//! The GPU engine is opened with `GpuOptions::software_ok()` (pick the backend with
//! `WGPU_BACKEND`); a missing adapter fails the tests — nothing here skips.

mod support;

use support::{ctx, engines, gpu, rng};

use std::path::PathBuf;

use ndarray::{s, Array1, Array2, Array3, ArrayD, ArrayViewD, Axis, IxDyn};
use neurokernels::encoders::{
    packbits, unpackbits, AngleEncoder, AngleSettings, LatencyEncoder, LatencySettings,
    RateEncoder, RateSettings, ShiftAugment, ShiftSettings,
};
use neurokernels::gpu::DeviceElement;
use neurokernels::rng::{key_of, philox4x32_10};
use neurokernels::{DeviceArray, Engine, Error};
use rand::Rng;

// ---------------------------------------------------------------------------------------------
// Engines and helpers

fn upload<T: DeviceElement>(x: ArrayViewD<'_, T>) -> DeviceArray {
    DeviceArray::upload(&ctx(), x).expect("upload")
}

/// Values that exercise clamping, thresholds and exact arithmetic.
const SPECIAL: [f32; 12] = [
    0.0,
    -0.0,
    1.0,
    -1.0,
    2.0,
    0.5,
    1e-30,
    1e-40,
    0.999_999_94,
    1.333_333_4,
    3.0e38,
    0.25,
];

/// What the encoder `new` makes encodes `x` into with `host`, checked to be the same on every
/// engine and, on the GPU engine, the same through `device` from a device-resident input.
fn on_every_engine<E>(
    x: &ArrayD<f32>,
    new: impl Fn(&Engine) -> E,
    host: impl Fn(&mut E, ArrayViewD<'_, f32>) -> Result<ArrayD<u8>, Error>,
    device: impl Fn(&mut E, &DeviceArray) -> Result<DeviceArray, Error>,
) -> ArrayD<u8> {
    let mut out = None;
    for (_, engine) in engines() {
        let mut enc = new(&engine);
        let got = host(&mut enc, x.view()).expect("encode");
        if engine.is_gpu() {
            let dev = device(&mut enc, &upload(x.view())).expect("device");
            assert_eq!(dev.to_host::<u8>().expect("read back"), got);
        }
        match &out {
            None => out = Some(got),
            Some(o) => assert_eq!(&got, o, "engines disagree"),
        }
    }
    out.expect("two engines ran")
}

/// `n` inputs in `[-0.2, 1.2]`, with the special values first.
fn inputs(n: usize, seed: u64) -> Vec<f32> {
    let mut r = rng(seed);
    (0..n)
        .map(|i| {
            SPECIAL
                .get(i)
                .copied()
                .unwrap_or_else(|| r.random_range(-0.2f32..1.2))
        })
        .collect()
}

fn read_npy_f32(case: &str, file: &str) -> ArrayD<f32> {
    ndarray_npy::read_npy(reference(case).join(file)).expect("read reference .npy")
}

fn read_npy_u8(case: &str, file: &str) -> ArrayD<u8> {
    ndarray_npy::read_npy(reference(case).join(file)).expect("read reference .npy")
}

fn reference(case: &str) -> PathBuf {
    support::reference("encoders", case)
}

// ---------------------------------------------------------------------------------------------
// The truth: sequential evaluations of the definitions

fn flush(x: f32) -> f32 {
    if x.abs() < f32::MIN_POSITIVE {
        0.0
    } else {
        x
    }
}

/// Rate spikes `(B, T, F)` (batch-major, unpacked) for samples `first ..`.
fn rate_truth(x: &Array2<f32>, steps: usize, max_r: f32, seed: u64, first: u64) -> Array3<u8> {
    let (b_n, f_n) = x.dim();
    let key = key_of(seed);
    let max_r = flush(max_r);
    Array3::from_shape_fn((b_n, steps, f_n), |(b, t, f)| {
        let v = x[[b, f]] as f64;
        // p = clamp(x·max_r, 0, 1) in f32, subnormals read as 0.
        let prod = flush(flush(x[[b, f]]) * max_r);
        let p = if v <= 0.0 { 0.0 } else { prod.clamp(0.0, 1.0) };
        let thr = (p as f64 * 4_294_967_296.0).ceil() as u64;
        let s = first + b as u64;
        let u = philox4x32_10([(f / 4) as u32, t as u32, s as u32, (s >> 32) as u32], key)[f % 4];
        ((u as u64) < thr) as u8
    })
}

/// Latency spike time (or None) by the definition.
fn latency_time(x: f32, steps: usize, threshold: f32) -> Option<usize> {
    let xc = flush(x).clamp(0.0, 1.0);
    if xc <= flush(threshold) {
        return None;
    }
    let t = ((1.0f32 - xc) * (steps - 1) as f32).round_ties_even();
    Some(t as usize)
}

/// Latency output `(T, …)` of `x` by the definition.
fn latency_truth(x: &ArrayD<f32>, steps: usize, threshold: f32) -> ArrayD<u8> {
    let mut shape = vec![steps];
    shape.extend_from_slice(x.shape());
    let mut out = ArrayD::<u8>::zeros(IxDyn(&shape));
    for (i, &v) in x.iter().enumerate() {
        if let Some(t) = latency_time(v, steps, threshold) {
            let n = x.len();
            out.as_slice_mut().expect("standard layout")[t * n + i] = 1;
        }
    }
    out
}

/// numpy.linspace, written again here.
fn np_linspace(a: f64, b: f64, n: usize) -> Vec<f64> {
    let div = (n - 1) as f64;
    let step = (b - a) / div;
    let mut y: Vec<f64> = (0..n).map(|i| i as f64 * step + a).collect();
    if n > 1 {
        y[n - 1] = b;
    } else {
        y[0] = a;
    }
    y
}

/// Angle index by the definition: clip(digitize(x, bins) − 1, 0, n − 1), f64 comparisons.
fn angle_index(x: f32, bins: &[f64]) -> usize {
    let d = bins.iter().filter(|&&b| flush(x) as f64 >= b).count() as i64 - 1;
    d.clamp(0, bins.len() as i64 - 1) as usize
}

/// numpy.roll of `x` along `axes` by `shifts`.
fn roll<T: Copy>(x: &ArrayD<T>, axes: &[usize], shifts: &[i64]) -> ArrayD<T> {
    ArrayD::from_shape_fn(IxDyn(x.shape()), |idx| {
        let mut src = idx.clone();
        for (a, &s) in axes.iter().zip(shifts) {
            let n = x.shape()[*a] as i64;
            src[*a] = ((idx[*a] as i64 - s).rem_euclid(n)) as usize;
        }
        x[src]
    })
}

/// The documented draw of axis slot `a` at position `s`.
fn shift_draw(seed: u64, max_shift: u32, per_sample: bool, a: usize, s: u64) -> i64 {
    let r = philox4x32_10(
        [
            a as u32,
            per_sample as u32,
            s as u32,
            ((s >> 32) as u32) | 0x8000_0000,
        ],
        key_of(seed),
    );
    let w = (r[1] as u64) << 32 | r[0] as u64;
    let m = max_shift as u128;
    ((w as u128 * 2 * m) >> 64) as i64 - max_shift as i64
}

/// (B, T, F…) → (T, B, F…).
fn to_time_major(x: &ArrayD<u8>) -> ArrayD<u8> {
    let mut v = x.view();
    v.swap_axes(0, 1);
    v.as_standard_layout().into_owned()
}

// ---------------------------------------------------------------------------------------------
// Rate

/// Every output variant of the rate encoder on one engine, checked against the truth.
fn check_rate(engine: &Engine, x: &Array2<f32>, steps: usize, max_r: f32, seed: u64, first: u64) {
    let truth = rate_truth(x, steps, max_r, seed, first).into_dyn();
    for time_major in [false, true] {
        for packed in [false, true] {
            let settings = RateSettings {
                steps,
                max_r,
                seed,
                time_major,
                packed,
            };
            let mut enc = RateEncoder::new(engine, settings).expect("settings");
            let got = enc.encode_at(x.view(), first).expect("encode");
            let mut want = if time_major {
                to_time_major(&truth)
            } else {
                truth.clone()
            };
            let t_axis = usize::from(!time_major);
            if packed {
                want = packbits(want.view(), t_axis).expect("packbits");
            }
            assert_eq!(
                got,
                want,
                "{} rate, shape {:?}, steps {steps}, time_major {time_major}, packed {packed}",
                engine.describe(),
                x.dim()
            );
            if packed {
                let back = unpackbits(got.view(), t_axis, steps).expect("unpack");
                let plain = if time_major {
                    to_time_major(&truth)
                } else {
                    truth.clone()
                };
                assert_eq!(back, plain);
            }
            if engine.is_gpu() {
                let dev = enc
                    .encode_device_at(&upload(x.view().into_dyn()), first)
                    .expect("encode_device");
                assert_eq!(dev.to_host::<u8>().expect("read back"), got);
            }
        }
    }
}

#[test]
fn rate_matches_truth_and_engines_agree_on_awkward_sizes() {
    // Feature counts that are multiples of 4 take the GPU's column kernel, the others its
    // word kernel.
    let shapes = [
        (1, 1),
        (3, 1),
        (5, 7),
        (0, 4),
        (4, 0),
        (7, 65),
        (2, 13),
        (130, 3),
        (3, 8),
        (9, 4),
        (2, 36),
    ];
    for (e_name, engine) in engines() {
        for (k, &(b, f)) in shapes.iter().enumerate() {
            let x = Array2::from_shape_vec((b, f), inputs(b * f, k as u64)).expect("shape");
            for steps in [1, 3, 8, 13] {
                check_rate(&engine, &x, steps, 0.75, 42 + k as u64, 0);
            }
            let _ = e_name;
        }
    }
}

#[test]
fn rate_is_exact_at_knife_edges_and_extreme_settings() {
    // Inputs whose thresholds fall right at, below and above each element's own draw.
    let (seed, f_n) = (7u64, 64usize);
    let key = key_of(seed);
    let mut x = Array2::<f32>::zeros((3, f_n));
    for f in 0..f_n {
        let u = philox4x32_10([(f / 4) as u32, 0, 0, 0], key)[f % 4];
        let base = (u >> 8) as f32 / 16_777_216.0;
        x[[0, f]] = base;
        x[[1, f]] = base.next_up();
        x[[2, f]] = base.next_down().max(0.0);
    }
    // Row b uses sample s = b, so rows 1 and 2 reuse different draws: also encode each row as
    // sample 0 on its own.
    for engine in [Engine::cpu(), gpu()] {
        for row in 0..3 {
            let xr = x.slice(s![row..row + 1, ..]).to_owned();
            check_rate(&engine, &xr, 1, 1.0, seed, 0);
        }
        check_rate(&engine, &x, 2, 1.0, seed, 0);
        for max_r in [0.0, 1e-38, f32::MIN_POSITIVE, 1.0, 3.0, 1e30, f32::MAX] {
            let x = Array2::from_shape_vec((2, 12), inputs(24, 3)).expect("shape");
            check_rate(&engine, &x, 3, max_r, 1, 5);
        }
    }
}

#[test]
fn rate_positions_past_32_bits() {
    let x = Array2::from_shape_vec((6, 9), inputs(54, 9)).expect("shape");
    for engine in [Engine::cpu(), gpu()] {
        check_rate(&engine, &x, 5, 0.9, 3, (1u64 << 32) - 3);
    }
}

#[test]
fn rate_spike_probability_is_within_binomial_bounds() {
    let ps = [0.0f32, 0.01, 0.1, 0.25, 0.5, 0.9, 0.999, 1.0];
    let max_r = 0.75f32;
    let (b, steps) = (400, 250);
    let x = Array2::from_shape_fn((b, ps.len()), |(_, f)| ps[f] / max_r);
    for (_, engine) in engines() {
        let mut enc = RateEncoder::new(
            &engine,
            RateSettings {
                seed: 2024,
                max_r,
                ..RateSettings::new(steps)
            },
        )
        .expect("settings");
        let spikes = enc.encode(x.view()).expect("encode");
        let n = (b * steps) as f64;
        for (f, &p_in) in ps.iter().enumerate() {
            let k = spikes
                .index_axis(Axis(2), f)
                .iter()
                .map(|&v| v as u64)
                .sum::<u64>() as f64;
            let p = ((p_in / max_r) * max_r).clamp(0.0, 1.0) as f64;
            if p == 0.0 || p == 1.0 {
                assert_eq!(k, n * p, "p = {p}: spikes must be certain");
                continue;
            }
            let sd = (n * p * (1.0 - p)).sqrt();
            assert!(
                (k - n * p).abs() <= 5.0 * sd + 1.0,
                "{}: p = {p}: {k} spikes of {n}, expected {} ± {sd}",
                engine.describe(),
                n * p
            );
        }
    }
}

#[test]
fn rate_batch_split_and_stream_position_are_invisible() {
    let x = Array2::from_shape_vec((10, 21), inputs(210, 11)).expect("shape");
    for (_, engine) in engines() {
        for time_major in [false, true] {
            for packed in [false, true] {
                let settings = RateSettings {
                    seed: 99,
                    time_major,
                    packed,
                    ..RateSettings::new(11)
                };
                let b_axis = usize::from(time_major);
                let mut whole = RateEncoder::new(&engine, settings).expect("settings");
                let all = whole.encode(x.view()).expect("encode");
                assert_eq!(whole.position(), 10);
                let mut parts = RateEncoder::new(&engine, settings).expect("settings");
                let a = parts.encode(x.slice(s![..4, ..])).expect("encode");
                let b = parts.encode(x.slice(s![4.., ..])).expect("encode");
                assert_eq!(parts.position(), 10);
                let joined =
                    ndarray::concatenate(Axis(b_axis), &[a.view(), b.view()]).expect("concat");
                assert_eq!(joined, all, "time_major {time_major}, packed {packed}");
                // Explicit offsets give the same, and leave the position alone.
                let c = parts.encode_at(x.slice(s![7.., ..]), 7).expect("encode_at");
                assert_eq!(c, all.slice_axis(Axis(b_axis), (7..).into()).to_owned());
                assert_eq!(parts.position(), 10);
                // A second batch draws fresh spikes.
                let again = whole.encode(x.view()).expect("encode");
                assert_ne!(again, all);
                whole.set_position(0);
                assert_eq!(whole.encode(x.view()).expect("encode"), all);
                // encode_into writes the same bytes (into a dirty buffer).
                let mut out = ArrayD::<u8>::from_elem(IxDyn(all.shape()), 7);
                whole.set_position(0);
                whole
                    .encode_into(x.view(), out.view_mut())
                    .expect("encode_into");
                assert_eq!(out, all);
                assert_eq!(whole.position(), 10);
                if engine.is_gpu() {
                    let up = upload(x.view().into_dyn());
                    whole.set_position(0);
                    let d = whole.encode_device(&up).expect("device");
                    assert_eq!(whole.position(), 10);
                    assert_eq!(d.to_host::<u8>().expect("read back"), all);
                }
            }
        }
    }
}

#[test]
fn rate_multi_axis_features_keep_their_shape() {
    let x = ArrayD::from_shape_vec(IxDyn(&[3, 2, 5]), inputs(30, 4)).expect("shape");
    let flat = x.clone().into_shape_with_order((3, 10)).expect("reshape");
    let want = rate_truth(&flat, 4, 0.75, 0, 0)
        .into_shape_with_order((3, 4, 2, 5))
        .expect("reshape")
        .into_dyn();
    for (_, engine) in engines() {
        let mut enc = RateEncoder::new(&engine, RateSettings::new(4)).expect("settings");
        assert_eq!(enc.encode(x.view()).expect("encode"), want);
        let tm = RateSettings {
            time_major: true,
            ..RateSettings::new(4)
        };
        let mut enc = RateEncoder::new(&engine, tm).expect("settings");
        let got = enc.encode(x.view()).expect("encode");
        assert_eq!(got.shape(), &[4, 3, 2, 5]);
        assert_eq!(got, to_time_major(&want));
        // Any strides: a transposed view encodes as its standard-layout copy.
        let xt = x.view().reversed_axes();
        let mut enc = RateEncoder::new(&engine, RateSettings::new(2)).expect("settings");
        let a = enc.encode_at(xt.clone(), 0).expect("encode");
        let b = enc
            .encode_at(xt.as_standard_layout().view(), 0)
            .expect("encode");
        assert_eq!(a, b);
    }
}

#[test]
fn gpu_windows_split_large_outputs_identically() {
    // A 512-byte binding limit forces many windows (and input row windows) on tiny data.
    let x = Array2::from_shape_vec((37, 11), inputs(37 * 11, 8)).expect("shape");
    for time_major in [false, true] {
        for packed in [false, true] {
            let settings = RateSettings {
                seed: 5,
                time_major,
                packed,
                ..RateSettings::new(19)
            };
            let want = RateEncoder::new(&Engine::cpu(), settings)
                .expect("settings")
                .encode(x.view())
                .expect("cpu");
            let mut enc = RateEncoder::new(&gpu(), settings).expect("settings");
            enc.debug_set_binding_limit(Some(512));
            assert_eq!(enc.encode(x.view()).expect("gpu host"), want);
            if !time_major {
                let d = enc
                    .encode_device_at(&upload(x.view().into_dyn()), 0)
                    .expect("gpu device");
                assert_eq!(d.to_host::<u8>().expect("read back"), want);
            } else {
                // Time-major binds the whole input: a device input past the limit must be split
                // by the caller.
                let err = enc
                    .encode_device_at(&upload(x.view().into_dyn()), 0)
                    .expect_err("input larger than one binding");
                assert!(matches!(err, Error::DeviceArray(_)), "{err}");
            }
        }
    }
    let x = ArrayD::from_shape_vec(IxDyn(&[9, 31]), inputs(279, 2)).expect("shape");
    for packed in [false, true] {
        let s = LatencySettings {
            packed,
            ..LatencySettings::new(23)
        };
        let want = LatencyEncoder::new(&Engine::cpu(), s)
            .expect("settings")
            .encode(x.view())
            .expect("cpu");
        let mut enc = LatencyEncoder::new(&gpu(), s).expect("settings");
        enc.debug_set_binding_limit(Some(256));
        assert_eq!(enc.encode(x.view()).expect("gpu pieces"), want);
    }
    let s = AngleSettings {
        neuron_count: 7,
        min_val: -0.1,
        max_val: 1.1,
    };
    let want = AngleEncoder::new(&Engine::cpu(), s)
        .expect("settings")
        .encode(x.view())
        .expect("cpu");
    let mut enc = AngleEncoder::new(&gpu(), s).expect("settings");
    enc.debug_set_binding_limit(Some(256));
    assert_eq!(enc.encode(x.view()).expect("gpu pieces"), want);
}

// ---------------------------------------------------------------------------------------------
// Latency

fn latency_both(x: &ArrayD<f32>, settings: LatencySettings) -> ArrayD<u8> {
    on_every_engine(
        x,
        |e| LatencyEncoder::new(e, settings).expect("settings"),
        |enc, v| enc.encode(v),
        LatencyEncoder::encode_device,
    )
}

#[test]
fn latency_is_exact_on_hand_made_inputs() {
    // T = 5: t = round_half_even((1 − x)·4).
    let x = Array1::from(vec![
        0.0f32, 1.0, -3.0, 7.0, 0.875, 0.625, 0.375, 0.125, 0.01, 0.0101, 0.5, 0.75, 1e-40,
    ])
    .into_dyn();
    let want_t: [Option<usize>; 13] = [
        None,
        Some(0),
        None,
        Some(0),
        Some(0), // 0.5 → 0 (tie to even)
        Some(2), // 1.5 → 2
        Some(2), // 2.5 → 2
        Some(4), // 3.5 → 4
        None,    // 0.01 ≤ threshold
        Some(4), // 3.9596 → 4
        Some(2),
        Some(1),
        None,
    ];
    let got = latency_both(&x, LatencySettings::new(5));
    for (i, want) in want_t.iter().enumerate() {
        let col: Vec<u8> = got.index_axis(Axis(1), i).iter().copied().collect();
        let mut expect = vec![0u8; 5];
        if let Some(t) = want {
            expect[*t] = 1;
        }
        assert_eq!(col, expect, "x = {}", x[i]);
    }
    assert_eq!(got, latency_truth(&x, 5, 0.01));
    // A negative threshold lets x ≤ 0 fire at the last step; T = 1 fires at 0.
    let neg = LatencySettings {
        threshold: -1.0,
        ..LatencySettings::new(5)
    };
    let got = latency_both(&x, neg);
    assert_eq!(got[[4, 0]], 1);
    assert_eq!(got[[4, 2]], 1);
    assert_eq!(got, latency_truth(&x, 5, -1.0));
    let one = latency_both(&x, LatencySettings::new(1));
    assert_eq!(one, latency_truth(&x, 1, 0.01));
    // Packed: numpy.packbits of the unpacked output, along time.
    for steps in [1, 5, 8, 9, 17] {
        let packed = latency_both(
            &x,
            LatencySettings {
                packed: true,
                ..LatencySettings::new(steps)
            },
        );
        let want = packbits(latency_truth(&x, steps, 0.01).view(), 0).expect("pack");
        assert_eq!(packed, want, "steps {steps}");
    }
}

#[test]
fn latency_matches_truth_on_random_inputs_and_many_steps() {
    // 348 elements take the GPU's column kernel, 35 its word kernel.
    for (shape, n) in [(vec![3, 4, 29], 348), (vec![5, 7], 35)] {
        let x = ArrayD::from_shape_vec(IxDyn(&shape), inputs(n, 21)).expect("shape");
        // 248 is the two-pass kernels' last step count, 249 and 257 take the word kernel.
        for steps in [2, 7, 100, 248, 249, 257] {
            for threshold in [0.01f32, 0.0, -0.5, 0.3] {
                for packed in [false, true] {
                    let got = latency_both(
                        &x,
                        LatencySettings {
                            threshold,
                            packed,
                            ..LatencySettings::new(steps)
                        },
                    );
                    let mut want = latency_truth(&x, steps, threshold);
                    if packed {
                        want = packbits(want.view(), 0).expect("pack");
                    }
                    assert_eq!(got, want, "shape {shape:?}, steps {steps}, packed {packed}");
                }
            }
        }
    }
    // Every f32 in a dense sweep of [0, 1] lands at the truth's step on both engines.
    let sweep: Vec<f32> = (0..20_000).map(|i| i as f32 / 19_999.0).collect();
    let x = ArrayD::from_shape_vec(IxDyn(&[sweep.len()]), sweep).expect("shape");
    for steps in [3, 100, 1000] {
        let got = latency_both(&x, LatencySettings::new(steps));
        assert_eq!(got, latency_truth(&x, steps, 0.01), "steps {steps}");
    }
}

#[test]
fn latency_reference_vectors() {
    let case = "latency_T5_thr0.01";
    let x = read_npy_f32(case, "x_batch.npy");
    let want = read_npy_u8(case, "out_batch.npy");
    assert_eq!(latency_both(&x, LatencySettings::new(5)), want);

    // The special vector: its finite part matches the seed; NaN and ±inf are errors.
    let xs = read_npy_f32(case, "x_special.npy");
    let ws = read_npy_u8(case, "out_special.npy");
    let n_finite = xs.iter().take_while(|v| v.is_finite()).count();
    assert_eq!(
        n_finite, 18,
        "reference layout: 18 finite values, then NaN, inf, -inf"
    );
    let finite = xs.slice(s![..n_finite]).to_owned().into_dyn();
    let got = latency_both(&finite, LatencySettings::new(5));
    assert_eq!(got, ws.slice(s![.., ..n_finite]).to_owned().into_dyn());
    for (_, engine) in engines() {
        let mut enc = LatencyEncoder::new(&engine, LatencySettings::new(5)).expect("settings");
        for i in n_finite..xs.len() {
            let one = ArrayD::from_shape_vec(IxDyn(&[2]), vec![0.5, xs[i]]).expect("shape");
            let err = enc.encode(one.view()).expect_err("non-finite input");
            assert!(
                matches!(
                    err,
                    Error::NonFinite {
                        sample: 0,
                        channel: 1,
                        ..
                    }
                ),
                "{}: {err}",
                engine.describe()
            );
        }
        let err = enc.encode(xs.view()).expect_err("non-finite input");
        assert!(
            matches!(
                err,
                Error::NonFinite {
                    sample: 0,
                    channel: 18,
                    ..
                }
            ),
            "{err}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Bit packing

#[test]
fn packbits_matches_numpy_on_fixed_vectors() {
    // One feature, T = 13: bits 1000_0001 1100_0 → 0x81, 0xC0.
    let t13 = Array2::from_shape_vec((13, 1), vec![1u8, 0, 0, 0, 0, 0, 0, 1, 1, 1, 0, 0, 0])
        .expect("shape");
    let p = packbits(t13.view(), 0).expect("pack");
    assert_eq!(p.as_slice(), Some(&[0x81u8, 0xC0][..]));
    assert_eq!(unpackbits(p.view(), 0, 13).expect("unpack"), t13.into_dyn());
    // Nonzero counts as 1; exactly 8 steps is one byte; 1 step is the top bit.
    let t8 = Array1::from(vec![0u8, 2, 0, 0, 255, 0, 0, 1]);
    assert_eq!(
        packbits(t8.view(), 0).expect("pack").as_slice(),
        Some(&[0x49u8][..])
    );
    let t1 = Array1::from(vec![1u8]);
    assert_eq!(
        packbits(t1.view(), 0).expect("pack").as_slice(),
        Some(&[0x80u8][..])
    );
    // Along a middle axis: (2, 9, 2) → (2, 2, 2).
    let mut m = Array3::<u8>::zeros((2, 9, 2));
    m[[0, 0, 1]] = 1;
    m[[0, 8, 0]] = 1;
    m[[1, 3, 1]] = 1;
    let p = packbits(m.view(), 1).expect("pack");
    assert_eq!(p.shape(), &[2, 2, 2]);
    assert_eq!(
        p.as_slice(),
        Some(&[0x00u8, 0x80, 0x80, 0x00, 0x00, 0x10, 0x00, 0x00][..])
    );
    assert_eq!(unpackbits(p.view(), 1, 9).expect("unpack"), m.into_dyn());
    // count below and above the bits available.
    let u = unpackbits(Array1::from(vec![0xA5u8]).view(), 0, 4).expect("unpack");
    assert_eq!(u.as_slice(), Some(&[1u8, 0, 1, 0][..]));
    let u = unpackbits(Array1::from(vec![0xA5u8]).view(), 0, 10).expect("unpack");
    assert_eq!(u.as_slice(), Some(&[1u8, 0, 1, 0, 0, 1, 0, 1, 0, 0][..]));
    // Empty along time.
    let e = Array2::<u8>::zeros((0, 3));
    assert_eq!(packbits(e.view(), 0).expect("pack").shape(), &[0, 3]);
    assert!(matches!(
        packbits(e.view(), 2),
        Err(Error::IndexOutOfRange { .. })
    ));
}

#[test]
fn packbits_reference_vectors() {
    let case = "packbits";
    let spikes = read_npy_u8(case, "spikes.npy");
    let packed = read_npy_u8(case, "packed.npy");
    assert_eq!(packbits(spikes.view(), 0).expect("pack"), packed);
    assert_eq!(unpackbits(packed.view(), 0, 13).expect("unpack"), spikes);
    for which in ["rate", "latency"] {
        let un = read_npy_u8(case, &format!("{which}_unpacked.npy"));
        let pk = read_npy_u8(case, &format!("{which}_packed.npy"));
        assert_eq!(packbits(un.view(), 0).expect("pack"), pk, "{which}");
    }
    // The latency case is reproduced by the encoder itself (T = 13, threshold 0.01), packed and
    // unpacked, on both engines.
    let x = read_npy_f32(case, "latency_in.npy");
    let un = read_npy_u8(case, "latency_unpacked.npy");
    let pk = read_npy_u8(case, "latency_packed.npy");
    assert_eq!(latency_both(&x, LatencySettings::new(13)), un);
    let packed_settings = LatencySettings {
        packed: true,
        ..LatencySettings::new(13)
    };
    assert_eq!(latency_both(&x, packed_settings), pk);
    // The rate case's layout: our packed rate output equals packbits of our unpacked one
    // with the same (T, B, F) layout as numpy's.
    let xr = read_npy_f32(case, "rate_in.npy");
    for (_, engine) in engines() {
        let s = RateSettings {
            time_major: true,
            ..RateSettings::new(13)
        };
        let un = RateEncoder::new(&engine, s)
            .expect("settings")
            .encode(xr.view())
            .expect("encode");
        let pk = RateEncoder::new(&engine, RateSettings { packed: true, ..s })
            .expect("settings")
            .encode(xr.view())
            .expect("encode");
        assert_eq!(pk.shape(), &[2, 2, 3]);
        assert_eq!(packbits(un.view(), 0).expect("pack"), pk);
    }
}

// ---------------------------------------------------------------------------------------------
// Angle

fn angle_both(x: &ArrayD<f32>, settings: AngleSettings) -> ArrayD<u8> {
    on_every_engine(
        x,
        |e| AngleEncoder::new(e, settings).expect("settings"),
        |enc, v| enc.encode(v),
        AngleEncoder::encode_device,
    )
}

fn angle_truth(x: &ArrayD<f32>, s: AngleSettings) -> ArrayD<u8> {
    let bins = np_linspace(s.min_val, s.max_val, s.neuron_count);
    let mut shape = x.shape().to_vec();
    shape.push(s.neuron_count);
    let mut out = ArrayD::<u8>::zeros(IxDyn(&shape));
    let n = s.neuron_count;
    for (i, &v) in x.iter().enumerate() {
        out.as_slice_mut().expect("standard")[i * n + angle_index(v, &bins)] = 1;
    }
    out
}

#[test]
fn angle_is_exact_on_hand_made_inputs() {
    let s = AngleSettings {
        neuron_count: 5,
        min_val: 0.0,
        max_val: 1.0,
    };
    let x = Array1::from(vec![-1.0f32, 0.0, 0.2499, 0.25, 0.74, 0.75, 0.99, 1.0, 2.0]).into_dyn();
    let want = [0usize, 0, 0, 1, 2, 3, 3, 4, 4];
    let got = angle_both(&x, s);
    for (i, &k) in want.iter().enumerate() {
        let row: Vec<u8> = got.index_axis(Axis(0), i).iter().copied().collect();
        let mut expect = vec![0u8; 5];
        expect[k] = 1;
        assert_eq!(row, expect, "x = {}", x[i]);
    }
    // Bins that are not f32 values: linspace(0, 1, 10) has 1/3; the f32 nearest it is above.
    let s10 = AngleSettings {
        neuron_count: 10,
        min_val: 0.0,
        max_val: 1.0,
    };
    let third = (1.0f64 / 3.0) as f32;
    assert!(third as f64 > 1.0 / 3.0);
    let x = Array1::from(vec![third, third.next_down(), 0.1, 0.1f32.next_down(), 0.7]).into_dyn();
    let got = angle_both(&x, s10);
    assert_eq!(got, angle_truth(&x, s10));
    assert_eq!(got[[0, 3]], 1);
    assert_eq!(got[[1, 2]], 1);
    // Shapes: 0-d → (n,), (2, 3) → (2, 3, n).
    let x0 = ArrayD::from_elem(IxDyn(&[]), 0.5f32);
    assert_eq!(angle_both(&x0, s).shape(), &[5]);
    let x2 = ArrayD::from_shape_vec(IxDyn(&[2, 3]), inputs(6, 1)).expect("shape");
    assert_eq!(angle_both(&x2, s), angle_truth(&x2, s));
}

#[test]
fn angle_matches_truth_on_random_inputs() {
    let x = ArrayD::from_shape_vec(IxDyn(&[7, 53]), inputs(371, 31)).expect("shape");
    for (n, lo, hi) in [
        (1, 0.0, 1.0),
        (3, -0.1, 0.3),
        (17, 0.0, 1.0),
        (64, -1.0, 2.0),
    ] {
        let s = AngleSettings {
            neuron_count: n,
            min_val: lo,
            max_val: hi,
        };
        assert_eq!(angle_both(&x, s), angle_truth(&x, s), "n {n}");
    }
}

// ---------------------------------------------------------------------------------------------
// Shift

fn shift_truth<T: Copy>(
    x: &ArrayD<T>,
    s: &ShiftSettings,
    position: u64,
) -> (ArrayD<T>, Vec<Vec<i64>>) {
    let rank = x.ndim();
    let axes: Vec<usize> = s
        .axes
        .iter()
        .map(|&a| {
            if a < 0 {
                (a + rank as isize) as usize
            } else {
                a as usize
            }
        })
        .collect();
    let draw = |set: u64| -> Vec<i64> {
        (0..axes.len())
            .map(|a| shift_draw(s.seed, s.max_shift, s.per_sample, a, position + set))
            .collect()
    };
    if !s.per_sample {
        let d = draw(0);
        return (roll(x, &axes, &d), vec![d]);
    }
    let mut out = x.clone();
    let mut draws = Vec::new();
    for b in 0..x.shape()[0] {
        let d = draw(b as u64);
        let sample = x.index_axis(Axis(0), b).to_owned();
        let sub_axes: Vec<usize> = axes.iter().map(|a| a - 1).collect();
        out.index_axis_mut(Axis(0), b)
            .assign(&roll(&sample, &sub_axes, &d));
        draws.push(d);
    }
    (out, draws)
}

fn check_shift<T: DeviceElement + PartialEq + std::fmt::Debug + PartialOrd>(
    x: &ArrayD<T>,
    s: &ShiftSettings,
) {
    let (want, want_draws) = shift_truth(x, s, 3);
    for (_, engine) in engines() {
        let mut aug = ShiftAugment::new(&engine, s.clone()).expect("settings");
        assert_eq!(aug.draws(x.shape(), 3).expect("draws"), want_draws);
        for d in want_draws.iter().flatten() {
            assert!((-(s.max_shift as i64)..s.max_shift as i64).contains(d));
        }
        aug.set_position(3);
        let got = aug.apply(x.view()).expect("apply");
        assert_eq!(got, want, "{} shift {s:?}", engine.describe());
        let advance = if s.per_sample { x.shape()[0] as u64 } else { 1 };
        assert_eq!(aug.position(), 3 + advance);
        // A permutation: nothing lost, nothing invented.
        let mut a: Vec<T> = x.iter().copied().collect();
        let mut b: Vec<T> = got.iter().copied().collect();
        a.sort_by(|p, q| p.partial_cmp(q).expect("ordered"));
        b.sort_by(|p, q| p.partial_cmp(q).expect("ordered"));
        assert_eq!(a, b);
        if engine.is_gpu() {
            let dev = aug.apply_device_at(&upload(x.view()), 3).expect("device");
            assert_eq!(dev.to_host::<T>().expect("read back"), want);
        }
    }
}

#[test]
fn shift_is_a_permutation_that_matches_numpy_roll_on_both_engines() {
    let x = ArrayD::from_shape_fn(IxDyn(&[4, 5, 6]), |i| {
        (i[0] * 100 + i[1] * 10 + i[2]) as f32
    });
    let base = ShiftSettings {
        seed: 17,
        ..Default::default()
    };
    check_shift(&x, &base);
    check_shift(
        &x,
        &ShiftSettings {
            axes: vec![1, 2],
            max_shift: 3,
            ..base.clone()
        },
    );
    check_shift(
        &x,
        &ShiftSettings {
            axes: vec![0, -1],
            max_shift: 50,
            ..base.clone()
        },
    );
    check_shift(
        &x,
        &ShiftSettings {
            axes: vec![2, 1],
            per_sample: true,
            max_shift: 4,
            ..base.clone()
        },
    );
    check_shift(
        &x,
        &ShiftSettings {
            axes: vec![1],
            per_sample: true,
            ..base.clone()
        },
    );
    // Bytes (odd sizes, packed four to a device word) and u32.
    let xb = ArrayD::from_shape_fn(IxDyn(&[3, 5, 7]), |i| (i[0] * 35 + i[1] * 7 + i[2]) as u8);
    check_shift(&xb, &base);
    check_shift(
        &xb,
        &ShiftSettings {
            axes: vec![1, 2],
            per_sample: true,
            ..base.clone()
        },
    );
    let xu = ArrayD::from_shape_fn(IxDyn(&[2, 9]), |i| (i[0] * 9 + i[1]) as u32);
    check_shift(
        &xu,
        &ShiftSettings {
            axes: vec![0, 1],
            ..base.clone()
        },
    );
    // No axes: the identity; empty arrays stay empty.
    let none = ShiftSettings {
        axes: vec![],
        ..base.clone()
    };
    check_shift(&x, &none);
    let empty = ArrayD::<f32>::zeros(IxDyn(&[0, 4]));
    check_shift(&empty, &base);
}

#[test]
fn shift_draws_cover_the_range_evenly() {
    let aug = ShiftAugment::new(
        &Engine::cpu(),
        ShiftSettings {
            max_shift: 3,
            per_sample: true,
            axes: vec![1],
            seed: 1,
        },
    )
    .expect("settings");
    let draws = aug.draws(&[6000, 10], 0).expect("draws");
    let mut counts = [0usize; 6];
    for d in draws.iter().flatten() {
        counts[(d + 3) as usize] += 1;
    }
    for c in counts {
        assert!((800..=1200).contains(&c), "{counts:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Errors

#[test]
fn invalid_settings_are_typed_errors() {
    for (_, engine) in engines() {
        let setting = |r: Result<(), Error>, name: &str| match r {
            Err(Error::InvalidSetting { name: n, .. }) => assert_eq!(n, name),
            other => panic!("expected InvalidSetting({name}), got {other:?}"),
        };
        setting(
            RateEncoder::new(&engine, RateSettings::new(0)).map(|_| ()),
            "steps",
        );
        for max_r in [-0.1f32, f32::NAN, f32::INFINITY] {
            let s = RateSettings {
                max_r,
                ..RateSettings::new(3)
            };
            setting(RateEncoder::new(&engine, s).map(|_| ()), "max_r");
        }
        setting(
            LatencyEncoder::new(&engine, LatencySettings::new(0)).map(|_| ()),
            "steps",
        );
        let s = LatencySettings {
            threshold: f32::NAN,
            ..LatencySettings::new(3)
        };
        setting(LatencyEncoder::new(&engine, s).map(|_| ()), "threshold");
        let a = |n, lo, hi| {
            AngleEncoder::new(
                &engine,
                AngleSettings {
                    neuron_count: n,
                    min_val: lo,
                    max_val: hi,
                },
            )
            .map(|_| ())
        };
        setting(a(0, 0.0, 1.0), "neuron_count");
        setting(a(3, 1.0, 1.0), "max_val");
        setting(a(3, 1.0, 0.0), "max_val");
        setting(a(3, f64::NAN, 1.0), "min_val");
        setting(a(3, 0.0, f64::INFINITY), "max_val");
        let sh = |s: ShiftSettings| ShiftAugment::new(&engine, s).map(|_| ());
        setting(
            sh(ShiftSettings {
                max_shift: 0,
                ..Default::default()
            }),
            "max_shift",
        );
        setting(
            sh(ShiftSettings {
                axes: (0..9).collect(),
                ..Default::default()
            }),
            "axes",
        );
    }
}

#[test]
fn bad_inputs_are_typed_errors_and_change_nothing() {
    for (_, engine) in engines() {
        // NaN / ±inf in rate, named by (batch row, flattened feature); position unchanged.
        let mut enc = RateEncoder::new(&engine, RateSettings::new(4)).expect("settings");
        let mut x = ArrayD::from_shape_vec(IxDyn(&[3, 2, 3]), inputs(18, 1)).expect("shape");
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            x[[2, 1, 0]] = bad;
            let err = enc.encode(x.view()).expect_err("non-finite");
            match err {
                Error::NonFinite {
                    sample: 2,
                    channel: 3,
                    value,
                    ..
                } => assert!(value.is_nan() == bad.is_nan()),
                other => panic!("{}: {other:?}", engine.describe()),
            }
            assert_eq!(enc.position(), 0);
        }
        x[[2, 1, 0]] = 0.5;
        enc.encode(x.view()).expect("fixed input is accepted");
        assert_eq!(enc.position(), 3);
        // Shapes.
        let scalar = ArrayD::from_elem(IxDyn(&[]), 0.5f32);
        assert!(matches!(
            enc.encode(scalar.view()),
            Err(Error::Shape { .. })
        ));
        let mut wrong = ArrayD::<u8>::zeros(IxDyn(&[3, 5, 2, 3]));
        assert!(matches!(
            enc.encode_into(x.view(), wrong.view_mut()),
            Err(Error::Shape { .. })
        ));
        assert_eq!(enc.position(), 3);
        enc.set_position(u64::MAX - 1);
        assert!(matches!(
            enc.encode(x.view()),
            Err(Error::PositionOverflow(_))
        ));
        // Latency / angle: NaN named by (row over leading axes, last axis).
        let mut lat = LatencyEncoder::new(&engine, LatencySettings::new(4)).expect("settings");
        assert!(matches!(
            lat.encode(scalar.view()),
            Err(Error::Shape { .. })
        ));
        let mut y = Array2::<f32>::zeros((4, 5));
        y[[3, 2]] = f32::NEG_INFINITY;
        assert!(matches!(
            lat.encode(y.view()),
            Err(Error::NonFinite {
                sample: 3,
                channel: 2,
                ..
            })
        ));
        let mut ang = AngleEncoder::new(
            &engine,
            AngleSettings {
                neuron_count: 4,
                min_val: 0.0,
                max_val: 1.0,
            },
        )
        .expect("settings");
        y[[3, 2]] = f32::NAN;
        assert!(matches!(
            ang.encode(y.view()),
            Err(Error::NonFinite {
                sample: 3,
                channel: 2,
                ..
            })
        ));
        // Shift axes.
        let mut sh = ShiftAugment::new(
            &engine,
            ShiftSettings {
                axes: vec![2],
                ..Default::default()
            },
        )
        .expect("settings");
        assert!(matches!(
            sh.apply(y.view()),
            Err(Error::IndexOutOfRange { .. })
        ));
        let mut sh = ShiftAugment::new(
            &engine,
            ShiftSettings {
                axes: vec![1, -1],
                ..Default::default()
            },
        )
        .expect("settings");
        assert!(matches!(
            sh.apply(y.view()),
            Err(Error::InvalidSetting { .. })
        ));
        let mut sh = ShiftAugment::new(
            &engine,
            ShiftSettings {
                axes: vec![0],
                per_sample: true,
                ..Default::default()
            },
        )
        .expect("settings");
        assert!(matches!(
            sh.apply(y.view()),
            Err(Error::InvalidSetting { .. })
        ));
        assert_eq!(sh.position(), 0);
        // Device calls on the CPU engine.
        if !engine.is_gpu() {
            let d = upload(y.view().into_dyn());
            assert!(matches!(enc.encode_device(&d), Err(Error::DeviceArray(_))));
            assert!(matches!(lat.encode_device(&d), Err(Error::DeviceArray(_))));
            assert!(matches!(ang.encode_device(&d), Err(Error::DeviceArray(_))));
            assert!(matches!(sh.apply_device(&d), Err(Error::DeviceArray(_))));
        }
    }
}

#[test]
fn device_inputs_are_checked_on_the_device() {
    let engine = gpu();
    let mut x = Array2::from_shape_vec((5, 6), inputs(30, 3)).expect("shape");
    x[[3, 4]] = f32::NAN;
    x[[4, 0]] = f32::INFINITY;
    let up = upload(x.view().into_dyn());
    let mut enc = RateEncoder::new(&engine, RateSettings::new(9)).expect("settings");
    match enc.encode_device(&up) {
        Err(Error::NonFinite {
            sample: 3,
            channel: 4,
            value,
            ..
        }) => assert!(value.is_nan()),
        other => panic!("{other:?}"),
    }
    assert_eq!(enc.position(), 0);
    let mut lat = LatencyEncoder::new(&engine, LatencySettings::new(9)).expect("settings");
    assert!(matches!(
        lat.encode_device(&up),
        Err(Error::NonFinite {
            sample: 3,
            channel: 4,
            ..
        })
    ));
    let mut ang = AngleEncoder::new(
        &engine,
        AngleSettings {
            neuron_count: 3,
            min_val: 0.0,
            max_val: 1.0,
        },
    )
    .expect("settings");
    assert!(matches!(
        ang.encode_device(&up),
        Err(Error::NonFinite {
            sample: 3,
            channel: 4,
            ..
        })
    ));
    // The encoders still work afterwards; wrong dtypes are rejected.
    x[[3, 4]] = 0.5;
    x[[4, 0]] = 0.5;
    let ok = upload(x.view().into_dyn());
    let d = enc.encode_device(&ok).expect("clean input");
    assert_eq!(enc.position(), 5);
    let want = rate_truth(&x, 9, 0.75, 0, 0).into_dyn();
    assert_eq!(d.to_host::<u8>().expect("read back"), want);
    let bytes = upload(Array2::<u8>::zeros((2, 2)).view().into_dyn());
    assert!(matches!(
        enc.encode_device(&bytes),
        Err(Error::DeviceArray(_))
    ));
    // Empty device input.
    let empty = upload(Array2::<f32>::zeros((0, 3)).view().into_dyn());
    let d = enc.encode_device(&empty).expect("empty batch");
    assert_eq!(d.shape(), &[0, 9, 3]);
    assert_eq!(d.to_host::<u8>().expect("read back").len(), 0);
}
