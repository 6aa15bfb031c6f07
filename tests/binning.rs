//! Binned kernel activation (SPEC §1) on both engines, against the plain `f64` truth in
//! `common` and against each other.
//!
//! Groups, by prefix: `parity_*` (random inputs of awkward sizes, every kernel ×
//! aggregation, every flag, dense `f32`/`u8`/`bool` and sparse input), `chunking_*` (one
//! stream, many chunkings), `spec_*` (hand-checkable numbers written out below), `error_*`
//! (each bad-input class, then a good chunk compared with a twin stream that never saw the
//! bad one), `positions_*` (`u64` stream positions past 2³²), `reference_*` (vectors from the
//! Python package in `tests/reference/binning`). Every test exists as `*_cpu` and `*_gpu`
//! (the GPU one also checks parity with the CPU), except `parity_process_device_gpu`; GPU
//! tests fail, never skip, without an adapter (`WGPU_BACKEND=vulkan` or `gl` picks the
//! backend). `cargo test --test binning cpu` runs the CPU half.
//!
//! Bounds are the documented ones (src/binning/mod.rs): CPU within 1e-12 of the bin's
//! largest activation plus the `f32` output's rounding; GPU within 2e-5 of it (Count with
//! `scale_by_value`: `n·2⁻²⁴·Σ|w|`); integer counts exactly. For Sum the per-sample bound
//! is summed over the bin (bin length × largest activation); see `common::tolerance`.

mod common;
mod support;

use std::path::PathBuf;

use common::*;
use ndarray::{Array1, Array2, Axis};
use neurokernels::{
    Aggregation, BinnedActivation, BinningSettings, DeviceArray, Engine, Error, Event, Kernel,
};
use rand::Rng;

/// Base seed; each case derives its own from it and prints it on failure.
const SEED: u64 = 0x5eed_b1a5;

/// Runs one random case on `eng` (and, for the GPU, on the CPU too): truth, bookkeeping,
/// bound, GPU-vs-CPU parity.
fn check_case(
    eng: Eng,
    label: &str,
    set: BinningSettings,
    fs: f64,
    input: &Input,
    bounds: &[usize],
) {
    let t = truth(
        &set,
        fs,
        input.n_channels,
        input.n_samples as u64,
        &input.events,
    );
    let mut o = op(&eng.engine(), set, fs);
    let got = run(label, &mut o, input, bounds);
    assert_truth(label, &set, eng, got.values.view(), &t);
    assert_eq!(got.timestamps, t.timestamps, "{label}: timestamps");
    if eng == Eng::Gpu {
        let mut c = op(&cpu(), set, fs);
        let want = run(label, &mut c, input, bounds);
        assert_parity(label, &set, got.values.view(), want.values.view(), &t);
    }
}

/// Flags (bit 0 `scale_by_value`, bit 1 `normalize`, bit 2 `rate_normalize`) rotated over
/// the cases so that each kernel × aggregation meets all eight across the input kinds.
fn flags_for(kernel: usize, agg: usize, kind: usize, j: usize) -> u8 {
    ((2 * kind + j + 3 * agg + kernel) % 8) as u8
}

// =============================================================================================
// parity_*: random inputs, every kernel × aggregation, each engine vs the truth

/// Every kernel × aggregation × flag × input kind, fractional bins (60.99 samples), random
/// chunkings with empty chunks.
fn parity_all_combinations(eng: Eng) {
    let (fs, bin) = (3000.0, 0.02033); // 60.99 samples per bin
    for (ki, kernel) in kernels(0.01).into_iter().enumerate() {
        for (ai, agg) in AGGREGATIONS.into_iter().enumerate() {
            for (ii, kind) in INPUT_KINDS.into_iter().enumerate() {
                for j in 0..2 {
                    let flags = flags_for(ki, ai, ii, j);
                    let seed = SEED ^ ((ki * 1000 + ai * 100 + ii * 10 + j) as u64);
                    let mut r = rng(seed);
                    let input = Input::random(&mut r, kind, 400, 3, 0.03);
                    let bounds = random_bounds(&mut r, 400, 150);
                    let set = settings(kernel, agg, bin, flags);
                    check_case(
                        eng,
                        &format!("all_combinations seed {seed:#x} {kind:?}"),
                        set,
                        fs,
                        &input,
                        &bounds,
                    );
                }
            }
        }
    }
}

#[test]
fn parity_all_combinations_cpu() {
    parity_all_combinations(Eng::Cpu);
}
#[test]
fn parity_all_combinations_gpu() {
    parity_all_combinations(Eng::Gpu);
}

/// Runs the twelve kernel × aggregation combinations with rotating flags and input kinds.
fn each_combination(
    mut f: impl FnMut(BinningSettings, InputKind, u64),
    tau: f64,
    bin: f64,
    salt: u64,
) {
    for (ki, kernel) in kernels(tau).into_iter().enumerate() {
        for (ai, agg) in AGGREGATIONS.into_iter().enumerate() {
            let i = ki * 4 + ai;
            let kind = INPUT_KINDS[(i + salt as usize) % 4];
            let flags = flags_for(ki, ai, i % 4, salt as usize);
            f(
                settings(kernel, agg, bin, flags),
                kind,
                SEED ^ (salt << 32) ^ i as u64,
            );
        }
    }
}

/// One channel, 7.5-sample bins.
fn parity_one_channel(eng: Eng) {
    each_combination(
        |set, kind, seed| {
            let mut r = rng(seed);
            let input = Input::random(&mut r, kind, 300, 1, 0.08);
            let bounds = random_bounds(&mut r, 300, 40);
            check_case(
                eng,
                &format!("one_channel seed {seed:#x} {kind:?}"),
                set,
                1000.0,
                &input,
                &bounds,
            );
        },
        0.004,
        0.0075,
        1,
    );
}

#[test]
fn parity_one_channel_cpu() {
    parity_one_channel(Eng::Cpu);
}
#[test]
fn parity_one_channel_gpu() {
    parity_one_channel(Eng::Gpu);
}

/// 1031 channels × 50 samples (10-sample bins), a chunk boundary mid-bin and an empty chunk.
fn parity_many_channels(eng: Eng) {
    each_combination(
        |set, kind, seed| {
            let mut r = rng(seed);
            let input = Input::random(&mut r, kind, 50, 1031, 0.05);
            check_case(
                eng,
                &format!("many_channels seed {seed:#x} {kind:?}"),
                set,
                1000.0,
                &input,
                &[0, 17, 17, 50],
            );
        },
        0.005,
        0.01,
        2,
    );
}

#[test]
fn parity_many_channels_cpu() {
    parity_many_channels(Eng::Cpu);
}
#[test]
fn parity_many_channels_gpu() {
    parity_many_channels(Eng::Gpu);
}

/// Chunk lengths that are not multiples of 64 (63, 65, 127, 129, …), 65 channels, 47.1-sample
/// bins.
fn parity_odd_chunk_lengths(eng: Eng) {
    let lengths = [63, 65, 1, 127, 129, 0, 191, 64, 193, 2, 0, 31];
    let bounds = bounds_from_lengths(900, lengths);
    assert_eq!(bounds.len(), lengths.len() + 2);
    each_combination(
        |set, kind, seed| {
            let mut r = rng(seed);
            let input = Input::random(&mut r, kind, 900, 65, 0.01);
            check_case(
                eng,
                &format!("odd_chunk_lengths seed {seed:#x} {kind:?}"),
                set,
                3000.0,
                &input,
                &bounds,
            );
        },
        0.01,
        0.0157, // 47.1 samples at 3 kHz
        3,
    );
}

#[test]
fn parity_odd_chunk_lengths_cpu() {
    parity_odd_chunk_lengths(Eng::Cpu);
}
#[test]
fn parity_odd_chunk_lengths_gpu() {
    parity_odd_chunk_lengths(Eng::Gpu);
}

/// 30 kHz, 20.33 ms bins (609.9 samples: edges 609, 1219, 1829, 2439), chunks shorter than
/// a bin and empty chunks.
fn parity_fractional_bins_short_chunks(eng: Eng) {
    let edges = Edges::new(0.02033, 30_000.0);
    assert_eq!((edges.p, edges.q), (6099, 10));
    assert_eq!([1, 2, 3, 4].map(|k| edges.edge(k)), [609, 1219, 1829, 2439]);
    each_combination(
        |set, kind, seed| {
            let mut r = rng(seed);
            let input = Input::random(&mut r, kind, 2500, 2, 0.01);
            let bounds = random_bounds(&mut r, 2500, 200);
            let label = format!("fractional_bins seed {seed:#x} {kind:?}");
            check_case(eng, &label, set, 30_000.0, &input, &bounds);
            let o = op(&eng.engine(), set, 30_000.0);
            for k in 0..5 {
                assert_eq!(
                    o.edges().edge(k).unwrap(),
                    edges.edge(k),
                    "{label}: library edge {k}"
                );
            }
        },
        0.005,
        0.02033,
        4,
    );
}

#[test]
fn parity_fractional_bins_short_chunks_cpu() {
    parity_fractional_bins_short_chunks(Eng::Cpu);
}
#[test]
fn parity_fractional_bins_short_chunks_gpu() {
    parity_fractional_bins_short_chunks(Eng::Gpu);
}

/// Dense chunks as column-major (non-standard stride) views.
fn parity_strided_views(eng: Eng) {
    each_combination(
        |set, kind, seed| {
            let kind = if kind == InputKind::Sparse {
                InputKind::F32
            } else {
                kind
            };
            let mut r = rng(seed);
            let mut input = Input::random(&mut r, kind, 200, 7, 0.05);
            input.fortran = true;
            let bounds = random_bounds(&mut r, 200, 50);
            check_case(
                eng,
                &format!("strided seed {seed:#x} {kind:?}"),
                set,
                1000.0,
                &input,
                &bounds,
            );
        },
        0.004,
        0.0075,
        5,
    );
}

#[test]
fn parity_strided_views_cpu() {
    parity_strided_views(Eng::Cpu);
}
#[test]
fn parity_strided_views_gpu() {
    parity_strided_views(Eng::Gpu);
}

/// Chunks that complete 6 000 one-sample bins each (dense and sparse): per-chunk work that
/// grows with the number of bins, not just samples.
fn parity_many_bins_per_chunk(eng: Eng) {
    each_combination(
        |set, kind, seed| {
            let mut r = rng(seed);
            let input = Input::random(&mut r, kind, 12_003, 2, 0.002);
            let label = format!("many_bins seed {seed:#x} {kind:?}");
            check_case(eng, &label, set, 1000.0, &input, &[0, 1, 6_002, 12_003]);
        },
        0.004,
        0.001,
        7,
    );
}

#[test]
fn parity_many_bins_per_chunk_cpu() {
    parity_many_bins_per_chunk(Eng::Cpu);
}
#[test]
fn parity_many_bins_per_chunk_gpu() {
    parity_many_bins_per_chunk(Eng::Gpu);
}

/// Chunks wide and busy enough that the CPU engine splits their channels over its worker
/// threads (4 000 bins × 37 channels per chunk, above the engine's 2¹⁷ threshold; the split
/// falls inside, not at a multiple of the channel count);
/// sparse input for every kernel × aggregation.
fn parity_wide_busy_chunks(eng: Eng) {
    each_combination(
        |set, _, seed| {
            let mut r = rng(seed);
            let input = Input::random(&mut r, InputKind::Sparse, 8_001, 37, 0.05);
            let label = format!("wide_busy seed {seed:#x} {:?}", set.kernel);
            check_case(eng, &label, set, 1000.0, &input, &[0, 4_000, 4_001, 8_001]);
        },
        0.004,
        0.001,
        9,
    );
}

#[test]
fn parity_wide_busy_chunks_cpu() {
    parity_wide_busy_chunks(Eng::Cpu);
}
#[test]
fn parity_wide_busy_chunks_gpu() {
    parity_wide_busy_chunks(Eng::Gpu);
}

/// Bins of 10⁵ samples (100 s at 1 kHz), the longest the GPU bound covers; a chunk ends one
/// sample short of an edge and a 1-sample chunk completes the bin.
fn parity_long_bins(eng: Eng) {
    each_combination(
        |set, kind, seed| {
            let mut r = rng(seed);
            let input = Input::random(&mut r, kind, 200_001, 1, 5e-5);
            let label = format!("long_bins seed {seed:#x} {kind:?}");
            check_case(
                eng,
                &label,
                set,
                1000.0,
                &input,
                &[0, 99_999, 100_000, 100_000, 200_001],
            );
        },
        0.5,
        100.0,
        8,
    );
}

#[test]
fn parity_long_bins_cpu() {
    parity_long_bins(Eng::Cpu);
}
#[test]
fn parity_long_bins_gpu() {
    parity_long_bins(Eng::Gpu);
}

/// `process_device` (dense `f32` and `u8` device arrays) against the truth and the CPU, and
/// its errors: wrong rank, CPU engine.
#[test]
fn parity_process_device_gpu() {
    let eng = gpu();
    let Engine::Gpu(ctx) = &eng else {
        unreachable!()
    };
    let (fs, bin) = (1000.0, 0.0075);
    let cases = [
        (Kernel::Count, Aggregation::Sum, 0u8, InputKind::U8),
        (Kernel::Count, Aggregation::Max, 1, InputKind::F32),
        (
            Kernel::Exponential { tau: 0.004 },
            Aggregation::Last,
            2,
            InputKind::F32,
        ),
        (
            Kernel::Alpha { tau: 0.004 },
            Aggregation::Mean,
            7,
            InputKind::U8,
        ),
        (
            Kernel::Exponential { tau: 0.004 },
            Aggregation::Sum,
            3,
            InputKind::U8,
        ),
    ];
    for (i, (kernel, agg, flags, kind)) in cases.into_iter().enumerate() {
        let set = settings(kernel, agg, bin, flags);
        let seed = SEED ^ 0xde71ce ^ i as u64;
        let mut r = rng(seed);
        let input = Input::random(&mut r, kind, 120, 5, 0.06);
        let bounds = random_bounds(&mut r, 120, 30);
        let label = format!("process_device seed {seed:#x} {kind:?}");
        let edges = Edges::new(bin, fs);
        let mut o = op(&eng, set, fs);
        let mut rows = Vec::new();
        for w in bounds.windows(2) {
            let (a, b) = (w[0], w[1]);
            let before = o.bins_emitted();
            let out = match &input.dense {
                Some(Dense::F32(x)) => {
                    let d = DeviceArray::upload(ctx, x.slice(ndarray::s![a..b, ..]).into_dyn())
                        .unwrap();
                    o.process_device(&d)
                }
                Some(Dense::U8(x)) => {
                    let d = DeviceArray::upload(ctx, x.slice(ndarray::s![a..b, ..]).into_dyn())
                        .unwrap();
                    o.process_device(&d)
                }
                _ => unreachable!(),
            }
            .unwrap_or_else(|e| panic!("{label}: chunk {a}..{b}: {e}"));
            let complete = edges.complete(before, b as u64);
            assert_eq!(out.first_bin, before, "{label}: first_bin");
            assert_eq!(
                out.n_bins as u64,
                complete - before,
                "{label}: n_bins of chunk {a}..{b}"
            );
            if out.n_bins > 0 {
                let v = out.values.to_host::<f32>().unwrap();
                assert_eq!(v.shape(), &[out.n_bins, 5], "{label}: device values shape");
                rows.extend(v.iter().copied());
            }
        }
        let got = Array2::from_shape_vec((rows.len() / 5, 5), rows).unwrap();
        let t = truth(&set, fs, 5, 120, &input.events);
        assert_truth(&label, &set, Eng::Gpu, got.view(), &t);
        let want = run(&label, &mut op(&cpu(), set, fs), &input, &bounds);
        assert_parity(&label, &set, got.view(), want.values.view(), &t);
    }

    // Errors: a device array of the wrong rank; a CPU operator given a device array.
    let set = settings(Kernel::Count, Aggregation::Sum, bin, 0);
    let flat = DeviceArray::upload(ctx, Array1::<f32>::zeros(10).view().into_dyn()).unwrap();
    let mut o = op(&eng, set, fs);
    assert!(
        matches!(o.process_device(&flat), Err(Error::Shape { .. })),
        "1-D device array"
    );
    let cube = DeviceArray::upload(
        ctx,
        ndarray::Array3::<f32>::zeros((2, 3, 4)).view().into_dyn(),
    )
    .unwrap();
    assert!(
        matches!(o.process_device(&cube), Err(Error::Shape { .. })),
        "3-D device array"
    );
    assert_eq!(
        (o.position(), o.n_channels()),
        (0, None),
        "state after rejected device arrays"
    );
    let chunk = DeviceArray::upload(ctx, Array2::<f32>::zeros((10, 3)).view().into_dyn()).unwrap();
    let mut c = op(&cpu(), set, fs);
    assert!(
        matches!(c.process_device(&chunk), Err(Error::DeviceArray(_))),
        "CPU engine + device array"
    );
    assert_eq!(
        (c.position(), c.n_channels()),
        (0, None),
        "CPU state after the rejected device array"
    );
}

// =============================================================================================
// chunking_*: one stream, many chunkings, identical concatenated output

/// Six chunkings of one `n`-sample stream with `spb`-sample bins: whole, 1-sample chunks,
/// random lengths with empty chunks, odd lengths, chunks shorter than a bin, and chunks cut
/// exactly at (and one sample beside) bin edges with empty chunks between.
fn chunkings(r: &mut rand_pcg::Pcg64, n: usize, edges: &Edges) -> Vec<(&'static str, Vec<usize>)> {
    let spb = (edges.p / edges.q) as usize;
    let mut at_edges = vec![0];
    let mut k = 1;
    while (edges.edge(k) as usize) < n {
        let e = edges.edge(k) as usize;
        let cut = match k % 3 {
            0 => e,
            1 => e - 1,
            _ => e + 1,
        };
        if cut > *at_edges.last().unwrap() && cut < n {
            at_edges.push(cut);
            at_edges.push(cut); // an empty chunk
        }
        k += 1;
    }
    at_edges.push(n);
    vec![
        ("whole", vec![0, n]),
        ("ones", (0..=n).collect()),
        ("random", random_bounds(r, n, 3 * spb)),
        (
            "odd",
            bounds_from_lengths(n, [3, 5, 7, 1, 0, 11, 13, 0, 2].into_iter().cycle()),
        ),
        ("shorter_than_bin", random_bounds(r, n, (spb / 2).max(1))),
        ("at_edges", at_edges),
    ]
}

/// Every kernel × aggregation: six chunkings give the same output (bitwise for counts) and
/// each matches the truth.
fn chunking_invariance(eng: Eng) {
    let (fs, bin, n) = (1000.0, 0.0075, 96); // 7.5-sample bins, 12 of them
    let edges = Edges::new(bin, fs);
    each_combination(
        |set, kind, seed| {
            let mut r = rng(seed);
            let input = Input::random(&mut r, kind, n, 4, 0.08);
            let t = truth(&set, fs, 4, n as u64, &input.events);
            let mut first: Option<Collected> = None;
            for (name, bounds) in chunkings(&mut r, n, &edges) {
                let label = format!("chunking seed {seed:#x} {kind:?} '{name}'");
                let got = run(&label, &mut op(&eng.engine(), set, fs), &input, &bounds);
                assert_truth(&label, &set, eng, got.values.view(), &t);
                match &first {
                    None => first = Some(got),
                    Some(f) => {
                        assert_same_stream(
                            &label,
                            &set,
                            eng,
                            got.values.view(),
                            f.values.view(),
                            &t,
                        );
                        assert_eq!(got.timestamps, f.timestamps, "{label}: timestamps");
                    }
                }
            }
        },
        0.004,
        bin,
        6,
    );
}

#[test]
fn chunking_invariance_cpu() {
    chunking_invariance(Eng::Cpu);
}
#[test]
fn chunking_invariance_gpu() {
    chunking_invariance(Eng::Gpu);
}

/// Counts (Count without `scale_by_value`, every aggregation, with and without
/// `rate_normalize`) are bit-identical across chunkings, for every input kind, on a longer
/// stream with fractional bins.
fn chunking_counts_bit_identical(eng: Eng) {
    let (fs, bin, n, nc) = (30_000.0, 0.0157, 2000, 8); // 471-sample bins
    for (ai, agg) in AGGREGATIONS.into_iter().enumerate() {
        for (ii, kind) in INPUT_KINDS.into_iter().enumerate() {
            let set = settings(
                Kernel::Count,
                agg,
                bin,
                if (ai + ii) % 2 == 0 { 0 } else { 6 },
            );
            let seed = SEED ^ 0xc0_0000 ^ (ai * 4 + ii) as u64;
            let mut r = rng(seed);
            let input = Input::random(&mut r, kind, n, nc, 0.02);
            let t = truth(&set, fs, nc, n as u64, &input.events);
            let reference = run("whole", &mut op(&eng.engine(), set, fs), &input, &[0, n]);
            assert_truth(
                &format!("counts seed {seed:#x} {kind:?} whole"),
                &set,
                eng,
                reference.values.view(),
                &t,
            );
            for c in 0..4 {
                let bounds = random_bounds(&mut r, n, [50, 300, 471, 900][c]);
                let label = format!("counts seed {seed:#x} {kind:?} chunking {c}");
                let got = run(&label, &mut op(&eng.engine(), set, fs), &input, &bounds);
                for ((idx, x), y) in got.values.indexed_iter().zip(reference.values.iter()) {
                    assert_eq!(
                        x.to_bits(),
                        y.to_bits(),
                        "{label} [{set:?}]: bin {} channel {}: {x} vs {y}",
                        idx.0,
                        idx.1
                    );
                }
            }
        }
    }
}

#[test]
fn chunking_counts_bit_identical_cpu() {
    chunking_counts_bit_identical(Eng::Cpu);
}
#[test]
fn chunking_counts_bit_identical_gpu() {
    chunking_counts_bit_identical(Eng::Gpu);
}

/// `reset` starts a new stream: replaying gives the first run's output bit for bit.
fn chunking_reset_replays(eng: Eng) {
    let set = settings(Kernel::Alpha { tau: 0.004 }, Aggregation::Sum, 0.0075, 3);
    let mut r = rng(SEED ^ 0x2e5e7);
    let input = Input::random(&mut r, InputKind::Sparse, 100, 3, 0.1);
    let bounds = random_bounds(&mut r, 100, 20);
    let mut o = op(&eng.engine(), set, 1000.0);
    let a = run("first", &mut o, &input, &bounds);
    o.reset();
    assert_eq!(
        (o.position(), o.bins_emitted(), o.n_channels()),
        (0, 0, None),
        "state after reset"
    );
    let b = run("replay", &mut o, &input, &bounds);
    assert_eq!(a.values, b.values, "replay after reset");
}

#[test]
fn chunking_reset_replays_cpu() {
    chunking_reset_replays(Eng::Cpu);
}
#[test]
fn chunking_reset_replays_gpu() {
    chunking_reset_replays(Eng::Gpu);
}

// =============================================================================================
// spec_*: hand-checkable cases. fs = 1000 Hz, bins of 0.01 s = 10 samples, three bins
// (samples 0–9, 10–19, 20–29), τ = 0.005 s so τs = 5 samples; one channel.
//
// Exponential: k(d) = e^(−d/5). Alpha: k(d) = (d/5)·e^(−d/5). Values below are for
// normalize = false and rate_normalize = false; normalize divides Exponential/Alpha by τs = 5
// (Count ignores it), rate_normalize multiplies by 1/0.01 = 100, Mean is Sum / 10.

/// One hand case: events `(sample, value)`, and per bin the Sum, Max and Last.
struct Hand {
    name: &'static str,
    kernel: usize, // 0 Count, 1 Exponential, 2 Alpha
    events: &'static [(u64, f32)],
    scale_by_value: bool,
    sum: [f64; 3],
    max: [f64; 3],
    last: [f64; 3],
}

// e^(−1/5) = 0.8187307530779818; single event at sample 3 with weight 1:
//   Sum bin 0 = Σ_{d=0..6} e^(−d/5) = 1 + 0.81873 + 0.67032 + 0.54881 + 0.44933 + 0.36788 + 0.30119
//             = 4.156265052408513; bin 1 = Σ_{d=7..16}, bin 2 = Σ_{d=17..26}.
//   Max: bin 0 = k(0) = 1, bin 1 = k(7) = e^(−1.4) = 0.2465969639416065, bin 2 = k(17).
//   Last: activation at b_1 = 10, 20, 30: k(7), k(17) = e^(−3.4), k(27) = e^(−5.4).
// Alpha, same event: bin 0 Max at d = 5 (= τs): 1·e^(−1) = 0.36787944117144233; bin 1 Max at
//   d = 7: 1.4·e^(−1.4) = 0.3452357495182491 (the kernel falls after its peak); Last = k(7),
//   k(17) = 3.4·e^(−3.4), k(27) = 5.4·e^(−5.4).
// Two events at 3 and 5: a[s] = w₁·k(s−3) + w₂·k(s−5). Event at sample 10 = b_1 lies in bin 1,
//   is not before b_1, so bin 0 sees nothing and bin 0's Last is 0.
#[rustfmt::skip]
const HAND: &[Hand] = &[
    // ---- Count: Sum = Σw in the bin, Max = largest Σw at one sample (0 at empty samples),
    // Last = Σw of all events before b_(k+1).
    Hand { name: "count single", kernel: 0, events: &[(3, 1.0)], scale_by_value: false,
        sum: [1.0, 0.0, 0.0], max: [1.0, 0.0, 0.0], last: [1.0, 1.0, 1.0] },
    Hand { name: "count two", kernel: 0, events: &[(3, 1.0), (5, 2.0)], scale_by_value: false,
        sum: [2.0, 0.0, 0.0], max: [1.0, 0.0, 0.0], last: [2.0, 2.0, 2.0] },
    Hand { name: "count two scaled", kernel: 0, events: &[(3, 1.0), (5, 2.0)], scale_by_value: true,
        sum: [3.0, 0.0, 0.0], max: [2.0, 0.0, 0.0], last: [3.0, 3.0, 3.0] },
    Hand { name: "count on boundary", kernel: 0, events: &[(10, 1.0)], scale_by_value: false,
        sum: [0.0, 1.0, 0.0], max: [0.0, 1.0, 0.0], last: [0.0, 1.0, 1.0] },
    Hand { name: "count last sample of bin", kernel: 0, events: &[(19, 2.5)], scale_by_value: true,
        sum: [0.0, 2.5, 0.0], max: [0.0, 2.5, 0.0], last: [0.0, 2.5, 2.5] },
    // Sparse only: two events on one sample add.
    Hand { name: "count duplicate", kernel: 0, events: &[(4, 1.5), (4, 1.5)], scale_by_value: false,
        sum: [2.0, 0.0, 0.0], max: [2.0, 0.0, 0.0], last: [2.0, 2.0, 2.0] },
    Hand { name: "count duplicate scaled", kernel: 0, events: &[(4, 1.5), (4, 1.5)], scale_by_value: true,
        sum: [3.0, 0.0, 0.0], max: [3.0, 0.0, 0.0], last: [3.0, 3.0, 3.0] },
    // A negative weight: Max is the 0 of the bin's empty samples.
    Hand { name: "count negative scaled", kernel: 0, events: &[(4, -2.0)], scale_by_value: true,
        sum: [-2.0, 0.0, 0.0], max: [0.0, 0.0, 0.0], last: [-2.0, -2.0, -2.0] },
    Hand { name: "count negative", kernel: 0, events: &[(4, -2.0)], scale_by_value: false,
        sum: [1.0, 0.0, 0.0], max: [1.0, 0.0, 0.0], last: [1.0, 1.0, 1.0] },
    // ---- Exponential
    Hand { name: "exp single", kernel: 1, events: &[(3, 1.0)], scale_by_value: false,
        sum: [4.156265052408513, 1.1762816782319891, 0.1591924140895644],
        max: [1.0, 0.2465969639416065, 0.03337326996032608],
        last: [0.2465969639416065, 0.03337326996032608, 0.004516580942612666] },
    Hand { name: "exp two", kernel: 1, events: &[(3, 1.0), (5, 2.0)], scale_by_value: false,
        sum: [7.643456451733382, 2.931087737201393, 0.3966795891055127],
        max: [1.6703200460356393, 0.6144764051130488, 0.08316033832819003],
        last: [0.6144764051130488, 0.08316033832819003, 0.011254527941698133] },
    Hand { name: "exp two scaled", kernel: 1, events: &[(3, 1.0), (5, 2.0)], scale_by_value: true,
        sum: [11.130647851058253, 4.685893796170798, 0.6341667641214611],
        max: [2.6703200460356395, 0.9823558462844911, 0.13294740669605398],
        last: [0.9823558462844911, 0.13294740669605398, 0.017992474940783598] },
    Hand { name: "exp on boundary", kernel: 1, events: &[(10, 1.0)], scale_by_value: false,
        sum: [0.0, 4.770057422566363, 0.6455570723379253],
        max: [0.0, 1.0, 0.1353352832366127],
        last: [0.0, 0.1353352832366127, 0.01831563888873418] },
    Hand { name: "exp duplicate scaled", kernel: 1, events: &[(3, 0.5), (3, 0.5)], scale_by_value: true,
        sum: [4.156265052408513, 1.1762816782319891, 0.1591924140895644],
        max: [1.0, 0.2465969639416065, 0.03337326996032608],
        last: [0.2465969639416065, 0.03337326996032608, 0.004516580942612666] },
    // ---- Alpha
    Hand { name: "alpha single", kernel: 2, events: &[(3, 1.0)], scale_by_value: false,
        sum: [1.84993681744613, 2.341148516415745, 0.6352248257472294],
        max: [0.36787944117144233, 0.3452357495182491, 0.11346911786510867],
        last: [0.3452357495182491, 0.11346911786510867, 0.0243895370901084] },
    Hand { name: "alpha two", kernel: 2, events: &[(3, 1.0), (5, 2.0)], scale_by_value: false,
        sum: [2.9705611394261755, 5.131809270463212, 1.4878740393454393],
        max: [0.7208962255884198, 0.7131151906896914, 0.2628303229687005],
        last: [0.7131151906896914, 0.2628303229687005, 0.05807927208553573] },
    Hand { name: "alpha two scaled", kernel: 2, events: &[(3, 1.0), (5, 2.0)], scale_by_value: true,
        sum: [4.091185461406221, 7.9224700245106785, 2.3405232529436484],
        max: [1.080359396882197, 1.0809946318611336, 0.4121915280722923],
        last: [1.0809946318611336, 0.4121915280722923, 0.09176900708096307] },
    Hand { name: "alpha on boundary", kernel: 2, events: &[(10, 1.0)], scale_by_value: false,
        sum: [0.0, 2.815744994554683, 1.6721837910359834],
        max: [0.0, 0.36787944117144233, 0.2706705664732254],
        last: [0.0, 0.2706705664732254, 0.07326255555493671] },
];

fn spec_by_hand(eng: Eng, kernel: usize) {
    let (fs, bin, tau, n) = (1000.0, 0.01, 0.005, 30);
    let k = kernels(tau)[kernel];
    for case in HAND.iter().filter(|c| c.kernel == kernel) {
        let duplicates = case.events.windows(2).any(|w| w[0].0 == w[1].0);
        let events: Vec<Event> = case
            .events
            .iter()
            .map(|&(s, v)| Event {
                sample: s,
                channel: 0,
                value: v,
            })
            .collect();
        let sparse = Input {
            kind: InputKind::Sparse,
            n_samples: n,
            n_channels: 1,
            dense: None,
            events: events.clone(),
            fortran: false,
        };
        let mut raster = Array2::<f32>::zeros((n, 1));
        for &(s, v) in case.events {
            raster[[s as usize, 0]] += v;
        }
        let dense = Input {
            kind: InputKind::F32,
            dense: Some(Dense::F32(raster)),
            ..sparse.clone()
        };
        let weights: f64 = case
            .events
            .iter()
            .map(|&(_, v)| {
                if case.scale_by_value {
                    (v as f64).abs()
                } else {
                    1.0
                }
            })
            .sum();
        for agg in AGGREGATIONS {
            for (normalize, rate) in [(false, false), (true, false), (false, true), (true, true)] {
                let flags = case.scale_by_value as u8 | (normalize as u8) << 1 | (rate as u8) << 2;
                let set = settings(k, agg, bin, flags);
                let mult = if normalize && kernel != 0 {
                    1.0 / 5.0
                } else {
                    1.0
                } * if rate { 100.0 } else { 1.0 };
                let base = match agg {
                    Aggregation::Sum => case.sum,
                    Aggregation::Mean => case.sum.map(|x| x / 10.0),
                    Aggregation::Max => case.max,
                    Aggregation::Last => case.last,
                };
                let expected = base.map(|x| x * mult);
                // The bin's largest activation is at most Σ|w| (k ≤ 1); times 10 samples for Sum.
                let peak = weights * mult * if agg == Aggregation::Sum { 10.0 } else { 1.0 };
                let label = format!(
                    "hand '{}' {agg:?} normalize {normalize} rate {rate}",
                    case.name
                );

                // The truth helper agrees with the hand numbers.
                let t = truth(&set, fs, 1, n as u64, &events);
                for (b, &want) in expected.iter().enumerate() {
                    let err = (t.values[[b, 0]] - want).abs();
                    assert!(
                        err <= 1e-12 * peak,
                        "{label}: truth helper bin {b}: {} vs hand {want}",
                        t.values[[b, 0]]
                    );
                }

                let mut runs: Vec<(&str, &Input, Vec<usize>)> =
                    vec![("sparse whole", &sparse, vec![0, n])];
                if !duplicates {
                    runs.push(("dense whole", &dense, vec![0, n]));
                }
                if !normalize && !rate {
                    runs.push(("sparse by 7", &sparse, bounds_from_lengths(n, [7; 5])));
                    runs.push(("sparse by 1", &sparse, (0..=n).collect()));
                    if !duplicates {
                        runs.push(("dense by 7", &dense, bounds_from_lengths(n, [7; 5])));
                    }
                }
                for (how, input, bounds) in runs {
                    let got = run(&label, &mut op(&eng.engine(), set, fs), input, &bounds);
                    assert_eq!(got.timestamps, vec![0.0, 0.01, 0.02], "{label}: timestamps");
                    for (b, &want) in expected.iter().enumerate() {
                        let g = got.values[[b, 0]] as f64;
                        let tol = tolerance(&set, eng, want, peak, case.events.len() as f64);
                        let err = (g - want).abs();
                        assert!(
                            if tol == 0.0 { g == want } else { err <= tol },
                            "{label} ({how}, {eng:?}): bin {b}: got {g:e}, expected {want:e}, \
                             err {err:e}, tol {tol:e}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn spec_count_by_hand_cpu() {
    spec_by_hand(Eng::Cpu, 0);
}
#[test]
fn spec_count_by_hand_gpu() {
    spec_by_hand(Eng::Gpu, 0);
}
#[test]
fn spec_exponential_by_hand_cpu() {
    spec_by_hand(Eng::Cpu, 1);
}
#[test]
fn spec_exponential_by_hand_gpu() {
    spec_by_hand(Eng::Gpu, 1);
}
#[test]
fn spec_alpha_by_hand_cpu() {
    spec_by_hand(Eng::Cpu, 2);
}
#[test]
fn spec_alpha_by_hand_gpu() {
    spec_by_hand(Eng::Gpu, 2);
}

/// Exact decimal edges: 0.0157 s × 30 kHz = 471 samples (f64 says 470.99999999999994), 20.3 ms
/// = 609 exactly; a bin is emitted by the chunk delivering its last sample. Count+Sum with
/// events at 470 (bin 0), 471 and 941 (bin 1), 942 (bin 2).
fn spec_exact_edges(eng: Eng) {
    assert_eq!(
        std::hint::black_box(0.0157f64) * 30_000.0,
        470.99999999999994
    );
    let e = Edges::new(0.0157, 30_000.0);
    assert_eq!((e.p, e.q), (471, 1));
    let e = Edges::new(0.0203, 30_000.0);
    assert_eq!([1, 2, 3].map(|k| e.edge(k)), [609, 1218, 1827]);

    let set = settings(Kernel::Count, Aggregation::Sum, 0.0157, 0);
    let mut o = op(&eng.engine(), set, 30_000.0);
    assert_eq!(
        [1, 2, 3].map(|k| o.edges().edge(k).unwrap()),
        [471, 942, 1413]
    );
    let ev = |s: u64| Event {
        sample: s,
        channel: 0,
        value: 1.0,
    };
    let steps: [(usize, Vec<Event>, Vec<f32>); 5] = [
        (470, vec![], vec![]),         // samples 0..470: bin 0 not complete
        (1, vec![ev(470)], vec![1.0]), // sample 470 = b_1 − 1 completes bin 0
        (471, vec![ev(471), ev(941)], vec![2.0]),
        (1, vec![ev(942)], vec![]),
        (470, vec![], vec![1.0]),
    ];
    for (i, (len, events, want)) in steps.into_iter().enumerate() {
        let out = o.process_events(&events, len, 1).unwrap();
        assert_eq!(out.values.column(0).to_vec(), want, "step {i}");
    }
    assert_eq!(o.position(), 1413);

    // 20.3 ms: bins of 609, dense u8; a chunk ending at 608 completes nothing.
    let set = settings(Kernel::Count, Aggregation::Last, 0.0203, 0);
    let mut o = op(&eng.engine(), set, 30_000.0);
    let mut x = Array2::<u8>::zeros((1218, 1));
    x[[608, 0]] = 1;
    x[[609, 0]] = 1;
    assert_eq!(
        o.process_dense(x.slice(ndarray::s![..608, ..]))
            .unwrap()
            .values
            .nrows(),
        0
    );
    let b = o
        .process_dense(x.slice(ndarray::s![608..1217, ..]))
        .unwrap();
    assert_eq!((b.first_bin, b.values.column(0).to_vec()), (0, vec![1.0]));
    let b = o.process_dense(x.slice(ndarray::s![1217.., ..])).unwrap();
    assert_eq!(
        (b.first_bin, b.values.column(0).to_vec(), b.timestamps),
        (1, vec![2.0], vec![0.0203])
    );
}

#[test]
fn spec_exact_edges_cpu() {
    spec_exact_edges(Eng::Cpu);
}
#[test]
fn spec_exact_edges_gpu() {
    spec_exact_edges(Eng::Gpu);
}

// =============================================================================================
// error_*: each bad input returns its typed error, and the stream goes on as if the bad chunk
// had never been sent

/// Settings with state worth corrupting: an open partial bin, decaying activations, a
/// cumulative count.
fn error_settings() -> [BinningSettings; 4] {
    [
        settings(
            Kernel::Exponential { tau: 0.004 },
            Aggregation::Sum,
            0.0075,
            3,
        ),
        settings(Kernel::Alpha { tau: 0.004 }, Aggregation::Max, 0.0075, 2),
        settings(Kernel::Count, Aggregation::Last, 0.0075, 0),
        settings(Kernel::Count, Aggregation::Mean, 0.0075, 5),
    ]
}

/// A stream and its twin fed the same good chunks; `bad` is sent to the stream only and must
/// fail as `expect` says, leaving position, bins and channels as they were; the next good
/// chunks must then give the twin's output bit for bit.
fn with_twin(
    eng: Eng,
    label: &str,
    set: BinningSettings,
    bad: impl FnOnce(&mut BinnedActivation) -> neurokernels::Result<neurokernels::Binned>,
    expect: impl FnOnce(&Error) -> bool,
) {
    let fs = 1000.0;
    let mut r = rng(SEED ^ 0xbad);
    let input = Input::random(&mut r, InputKind::F32, 80, 3, 0.15);
    let sparse = Input {
        kind: InputKind::Sparse,
        dense: None,
        ..input.clone()
    };
    let mut a = op(&eng.engine(), set, fs);
    let mut b = op(&eng.engine(), set, fs);
    // 26 samples: bins 0–2 complete, bin 3 (samples 22–29) open.
    for o in [&mut a, &mut b] {
        input.feed(o, 0, 26).unwrap();
    }
    let before = (a.position(), a.bins_emitted(), a.n_channels());
    let err = match bad(&mut a) {
        Ok(out) => panic!("{label} [{eng:?}, {set:?}]: bad chunk accepted: {out:?}"),
        Err(e) => e,
    };
    assert!(
        expect(&err),
        "{label} [{eng:?}, {set:?}]: wrong error: {err:?}"
    );
    assert_eq!(
        (a.position(), a.bins_emitted(), a.n_channels()),
        before,
        "{label}: state after the error"
    );
    for (x, y, src) in [(26, 41, &input), (41, 60, &sparse), (60, 80, &input)] {
        let got = src.feed(&mut a, x, y).unwrap();
        let want = src.feed(&mut b, x, y).unwrap();
        assert_eq!(
            got, want,
            "{label} [{eng:?}, {set:?}]: chunk {x}..{y} after the error differs from the twin's"
        );
    }
}

fn error_channel_count_change(eng: Eng) {
    for set in error_settings() {
        with_twin(
            eng,
            "4 channels",
            set,
            |o| o.process_dense(Array2::<f32>::ones((20, 4)).view()),
            |e| matches!(e, Error::Shape { .. }),
        );
        with_twin(
            eng,
            "2 channels u8",
            set,
            |o| o.process_dense(Array2::<u8>::ones((20, 2)).view()),
            |e| matches!(e, Error::Shape { .. }),
        );
        with_twin(
            eng,
            "0 channels",
            set,
            |o| o.process_dense(Array2::<f32>::zeros((20, 0)).view()),
            |e| matches!(e, Error::Shape { .. }),
        );
        with_twin(
            eng,
            "empty chunk, 5 channels",
            set,
            |o| o.process_dense(Array2::<bool>::default((0, 5)).view()),
            |e| matches!(e, Error::Shape { .. }),
        );
        with_twin(
            eng,
            "sparse 4 channels",
            set,
            |o| o.process_events(&[], 20, 4),
            |e| matches!(e, Error::Shape { .. }),
        );
    }
    // A fresh stream with no channels.
    let mut o = op(&eng.engine(), error_settings()[0], 1000.0);
    assert!(matches!(
        o.process_dense(Array2::<f32>::zeros((5, 0)).view()),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(
        o.process_events(&[], 5, 0),
        Err(Error::Shape { .. })
    ));
    assert_eq!((o.position(), o.n_channels()), (0, None));
}

#[test]
fn error_channel_count_change_cpu() {
    error_channel_count_change(Eng::Cpu);
}
#[test]
fn error_channel_count_change_gpu() {
    error_channel_count_change(Eng::Gpu);
}

fn error_nonfinite_dense(eng: Eng) {
    for set in error_settings() {
        for bad_value in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let label = format!("dense {bad_value}");
            with_twin(
                eng,
                &label,
                set,
                |o| {
                    let mut x = Array2::<f32>::zeros((20, 3));
                    x[[2, 0]] = 1.0;
                    x[[13, 2]] = bad_value;
                    o.process_dense(x.view())
                },
                |e| match *e {
                    Error::NonFinite {
                        sample,
                        channel,
                        value,
                        ..
                    } => {
                        (sample, channel) == (13, 2)
                            && (value.is_nan() == bad_value.is_nan())
                            && (value.is_nan() || value == bad_value as f64)
                    }
                    _ => false,
                },
            );
        }
    }
}

#[test]
fn error_nonfinite_dense_cpu() {
    error_nonfinite_dense(Eng::Cpu);
}
#[test]
fn error_nonfinite_dense_gpu() {
    error_nonfinite_dense(Eng::Gpu);
}

/// A chunk of 150 000 samples × 4 channels, so that the CPU engine counts it on two worker
/// threads (2¹⁸ values or more per thread, cut into runs of rows that cross bin edges:
/// bins of 10 000 samples), with the bad value in the later thread's rows: the error
/// names it, nothing changes, and the stream then goes on as its twin does, bit for bit;
/// the counts equal the truth's.
fn error_nonfinite_dense_large_chunk(eng: Eng) {
    let set = settings(Kernel::Count, Aggregation::Sum, 10.0, 0);
    let fs = 1000.0;
    let mut r = rng(SEED ^ 0xb16);
    let input = Input::random(&mut r, InputKind::F32, 250_001, 4, 0.01);
    let (mut a, mut b) = (op(&eng.engine(), set, fs), op(&eng.engine(), set, fs));
    for o in [&mut a, &mut b] {
        input.feed(o, 0, 7).unwrap();
    }
    let before = (a.position(), a.bins_emitted());
    let mut x = Array2::<f32>::zeros((150_000, 4));
    x[[120_001, 3]] = f32::NAN;
    match a.process_dense(x.view()) {
        Err(Error::NonFinite {
            sample, channel, ..
        }) => assert_eq!((sample, channel), (120_001, 3), "{eng:?}: location"),
        other => panic!("{eng:?}: expected NonFinite, got {other:?}"),
    }
    assert_eq!((a.position(), a.bins_emitted()), before, "{eng:?}: state");
    let mut want = Vec::new();
    for (lo, hi) in [(7, 150_007), (150_007, 250_001)] {
        let got = input.feed(&mut a, lo, hi).unwrap();
        let twin = input.feed(&mut b, lo, hi).unwrap();
        assert_eq!(got, twin, "{eng:?}: chunk {lo}..{hi} after the error");
        want.push(twin);
    }
    let t = truth(&set, fs, 4, 250_001, &input.events);
    let rows: Vec<f32> = want.iter().flat_map(|w| w.values.iter().copied()).collect();
    let truth_rows: Vec<f32> = t.values.iter().map(|&v| v as f32).collect();
    assert_eq!(rows, truth_rows, "{eng:?}: counts against the truth");
}

#[test]
fn error_nonfinite_dense_large_chunk_cpu() {
    error_nonfinite_dense_large_chunk(Eng::Cpu);
}
#[test]
fn error_nonfinite_dense_large_chunk_gpu() {
    error_nonfinite_dense_large_chunk(Eng::Gpu);
}

fn error_nonfinite_event_value(eng: Eng) {
    for set in error_settings() {
        for bad_value in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            with_twin(
                eng,
                &format!("event value {bad_value}"),
                set,
                |o| {
                    let p = o.position();
                    let ev = [
                        Event {
                            sample: p + 1,
                            channel: 0,
                            value: 1.0,
                        },
                        Event {
                            sample: p + 3,
                            channel: 1,
                            value: 2.0,
                        },
                        Event {
                            sample: p + 4,
                            channel: 2,
                            value: bad_value,
                        },
                    ];
                    o.process_events(&ev, 20, 3)
                },
                |e| {
                    matches!(
                        *e,
                        Error::NonFinite {
                            sample: 2,
                            channel: 2,
                            ..
                        }
                    )
                },
            );
        }
    }
}

#[test]
fn error_nonfinite_event_value_cpu() {
    error_nonfinite_event_value(Eng::Cpu);
}
#[test]
fn error_nonfinite_event_value_gpu() {
    error_nonfinite_event_value(Eng::Gpu);
}

fn error_event_out_of_range(eng: Eng) {
    for set in error_settings() {
        let good = |p: u64| Event {
            sample: p + 2,
            channel: 1,
            value: 1.0,
        };
        with_twin(
            eng,
            "event channel = n_channels",
            set,
            |o| {
                let p = o.position();
                o.process_events(
                    &[
                        good(p),
                        Event {
                            sample: p + 5,
                            channel: 3,
                            value: 1.0,
                        },
                    ],
                    20,
                    3,
                )
            },
            |e| {
                matches!(
                    *e,
                    Error::IndexOutOfRange {
                        index: 3,
                        bound: 3,
                        ..
                    }
                )
            },
        );
        with_twin(
            eng,
            "event before the chunk",
            set,
            |o| {
                let p = o.position();
                o.process_events(
                    &[
                        good(p),
                        Event {
                            sample: p - 1,
                            channel: 0,
                            value: 1.0,
                        },
                    ],
                    20,
                    3,
                )
            },
            |e| matches!(*e, Error::IndexOutOfRange { index: 25, .. }),
        );
        with_twin(
            eng,
            "event at the chunk's end",
            set,
            |o| {
                let p = o.position();
                o.process_events(
                    &[
                        Event {
                            sample: p + 20,
                            channel: 0,
                            value: 1.0,
                        },
                        good(p),
                    ],
                    20,
                    3,
                )
            },
            |e| {
                matches!(
                    *e,
                    Error::IndexOutOfRange {
                        index: 46,
                        bound: 46,
                        ..
                    }
                )
            },
        );
        with_twin(
            eng,
            "event in an empty chunk",
            set,
            |o| {
                let p = o.position();
                o.process_events(
                    &[Event {
                        sample: p,
                        channel: 0,
                        value: 1.0,
                    }],
                    0,
                    3,
                )
            },
            |e| matches!(*e, Error::IndexOutOfRange { index: 26, .. }),
        );
    }
}

#[test]
fn error_event_out_of_range_cpu() {
    error_event_out_of_range(Eng::Cpu);
}
#[test]
fn error_event_out_of_range_gpu() {
    error_event_out_of_range(Eng::Gpu);
}

fn error_bad_settings(eng: Eng) {
    let engine = eng.engine();
    let expect =
        |set: BinningSettings, fs: f64, name: &str| match BinnedActivation::new(&engine, set, fs) {
            Err(Error::InvalidSetting { name: n, .. }) if n == name => {}
            Err(e) => {
                panic!("{set:?} fs {fs}: expected InvalidSetting {{ name: {name:?} }}, got {e:?}")
            }
            Ok(_) => {
                panic!("{set:?} fs {fs}: accepted, expected InvalidSetting {{ name: {name:?} }}")
            }
        };
    let good = BinningSettings::default();
    for fs in [
        0.0,
        -0.0,
        -30_000.0,
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
    ] {
        for kernel in kernels(0.05) {
            expect(BinningSettings { kernel, ..good }, fs, "fs");
        }
    }
    for tau in [0.0, -0.0, -0.05, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        for kernel in [Kernel::Exponential { tau }, Kernel::Alpha { tau }] {
            expect(BinningSettings { kernel, ..good }, 30_000.0, "tau");
        }
    }
    for bin_duration in [
        0.0,
        -0.0,
        -0.02,
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
        1e-5,
    ] {
        // 1e-5 s at 30 kHz is 0.3 samples: a bin must span at least one sample.
        for kernel in kernels(0.05) {
            expect(
                BinningSettings {
                    kernel,
                    bin_duration,
                    ..good
                },
                30_000.0,
                "bin_duration",
            );
        }
    }
    expect(
        BinningSettings {
            t0: f64::NAN,
            ..good
        },
        30_000.0,
        "t0",
    );
    // Count has no tau; the smallest legal bin is one sample.
    assert!(BinnedActivation::new(
        &engine,
        BinningSettings {
            kernel: Kernel::Count,
            ..good
        },
        30_000.0
    )
    .is_ok());
    assert!(BinnedActivation::new(
        &engine,
        BinningSettings {
            bin_duration: 0.001,
            ..good
        },
        1000.0
    )
    .is_ok());
}

#[test]
fn error_bad_settings_cpu() {
    error_bad_settings(Eng::Cpu);
}
#[test]
fn error_bad_settings_gpu() {
    error_bad_settings(Eng::Gpu);
}

// =============================================================================================
// positions_*: u64 stream positions past 2³², cheaply through sparse chunks

/// One chunk of a long stream: sparse over `len` samples, or a dense `f32`/`u8` raster.
enum Piece {
    Sparse(usize),
    DenseF32(usize),
    DenseU8(usize),
}

/// Feeds `pieces` (events: absolute, anywhere in the stream) and checks each chunk's
/// bookkeeping against the exact edges; returns the concatenated output.
fn run_long(
    label: &str,
    o: &mut BinnedActivation,
    nc: usize,
    pieces: &[Piece],
    events: &[Event],
) -> Array2<f32> {
    let set = *o.settings();
    let edges = Edges::new(set.bin_duration, o.fs());
    let mut rows = Vec::new();
    for p in pieces {
        let (pos, done) = (o.position(), o.bins_emitted());
        let len = match *p {
            Piece::Sparse(l) | Piece::DenseF32(l) | Piece::DenseU8(l) => l,
        };
        let end = pos + len as u64;
        let mine: Vec<Event> = events
            .iter()
            .filter(|e| (pos..end).contains(&e.sample))
            .copied()
            .collect();
        let mut x = Array2::<f32>::zeros((
            if matches!(p, Piece::Sparse(_)) {
                0
            } else {
                len
            },
            nc,
        ));
        for e in &mine {
            if !matches!(p, Piece::Sparse(_)) {
                x[[(e.sample - pos) as usize, e.channel as usize]] += e.value;
            }
        }
        let out = match p {
            Piece::Sparse(_) => o.process_events(&mine, len, nc),
            Piece::DenseF32(_) => o.process_dense(x.view()),
            Piece::DenseU8(_) => o.process_dense(x.mapv(|v| v as u8).view()),
        }
        .unwrap_or_else(|e| panic!("{label}: chunk at {pos} (+{len}): {e}"));
        let complete = edges.complete(done, end);
        assert_eq!(
            out.first_bin, done,
            "{label}: first_bin of the chunk at {pos}"
        );
        assert_eq!(
            out.values.nrows() as u64,
            complete - done,
            "{label}: bins emitted by the chunk at {pos} (+{len})"
        );
        for (i, &t) in out.timestamps.iter().enumerate() {
            assert_eq!(
                t,
                set.t0 + (done + i as u64) as f64 * set.bin_duration,
                "{label}: timestamp of bin {}",
                done + i as u64
            );
        }
        assert_eq!(o.position(), end, "{label}: position");
        rows.extend(out.values.iter().copied());
    }
    let n = rows.len() / nc;
    Array2::from_shape_vec((n, nc), rows).unwrap()
}

/// A stream through sample 2³² and on: 3.301713 s bins at 30 kHz (99 051.39 samples; edge
/// 43 361 is 2³² + 25), sparse chunks of ~10⁸ samples, then 1-sample sparse chunks and
/// dense `f32`/`u8` chunks around 2³², crossing that edge; events clustered near 2³².
fn positions_past_2_32(eng: Eng) {
    let (fs, bin) = (30_000.0, 3.301713);
    let two32 = 1u64 << 32;
    let edges = Edges::new(bin, fs);
    assert_eq!((edges.p, edges.q), (9_905_139, 100));
    assert_eq!(edges.edge(43_361), two32 + 25);
    assert_eq!(edges.edge(43_360), 4_294_868_270); // floor(43 360 · 99 051.39) = floor(4 294 868 270.4)
    let nc = 3;
    let mut r = rng(SEED ^ 0x1_0000_0000);
    let mut events = Vec::new();
    let mut add = |s: u64, c: u32, v: f32| {
        events.push(Event {
            sample: s,
            channel: c,
            value: v,
        })
    };
    for _ in 0..20 {
        add(
            r.random_range(0..1u64 << 31),
            r.random_range(0..3),
            r.random_range(0.5..2.0),
        );
        add(
            r.random_range(two32 - 400_000..two32 - 100),
            r.random_range(0..3),
            r.random_range(0.5..2.0),
        );
        add(
            r.random_range(two32 + 200..two32 + 300_000),
            r.random_range(0..3),
            r.random_range(0.5..2.0),
        );
    }
    // Duplicates only in sparse chunks (a dense raster would merge them into one event).
    let fixed = [
        (two32 - 100, 0),
        (two32 - 99, 1),
        (two32 - 99, 1),
        (two32 - 1, 0),
        (two32, 1),
        (two32 + 1, 2),
        (two32 + 24, 0),
        (two32 + 25, 1),
        (two32 + 26, 2),
    ];
    for (s, c) in fixed {
        add(s, c, 1.25);
    }
    add(edges.edge(43_362) - 1, 2, 3.0);
    add(edges.edge(43_362), 2, 3.0);
    // Up to 2³² − 100 in sparse chunks of at most 10⁸ samples (~1 000 bins; chunks with
    // many more bins are `parity_many_bins_per_chunk`'s subject), one ending at 2³¹ − 7.
    let mut pieces = Vec::new();
    let mut pos = 0u64;
    for stop in [(1u64 << 31) - 7, two32 - 100] {
        while pos < stop {
            let len = (stop - pos).min(100_000_000);
            pieces.push(Piece::Sparse(len as usize));
            pos += len;
        }
    }
    pieces.extend((0..60).map(|_| Piece::Sparse(1)));
    pieces.push(Piece::DenseF32(50)); // 2³² − 40 .. 2³² + 10
    pieces.push(Piece::Sparse(0));
    pieces.push(Piece::DenseU8(14)); // 2³² + 10 .. 2³² + 24: one sample short of the edge
    pieces.push(Piece::DenseF32(1)); // sample 2³² + 24 = b_43361 − 1 completes bin 43 360
    pieces.push(Piece::Sparse(0));
    pieces.push(Piece::DenseU8(36));
    pieces.push(Piece::Sparse(400_000));
    let total = two32 + 60 + 400_000;
    for e in &mut events {
        if e.sample >= two32 - 40 && e.sample < two32 + 60 {
            e.value = e.value.round().max(1.0); // the u8 chunk holds integers
        }
    }
    let grid = [
        settings(Kernel::Count, Aggregation::Sum, bin, 0),
        settings(Kernel::Count, Aggregation::Last, bin, 1),
        settings(Kernel::Count, Aggregation::Max, bin, 1),
        settings(Kernel::Count, Aggregation::Mean, bin, 4),
        settings(Kernel::Exponential { tau: 1.0 }, Aggregation::Last, bin, 3),
        settings(Kernel::Alpha { tau: 0.8 }, Aggregation::Last, bin, 2),
    ];
    for set in grid {
        let label = format!("past 2^32 {:?} {:?}", set.kernel, set.aggregation);
        let mut o = op(&eng.engine(), set, fs);
        assert_eq!(
            o.edges().edge(43_361).unwrap(),
            two32 + 25,
            "{label}: library edge"
        );
        let got = run_long(&label, &mut o, nc, &pieces, &events);
        assert_eq!(o.bins_emitted(), edges.complete(0, total));
        assert!(o.bins_emitted() > 43_362);
        let t = truth(&set, fs, nc, total, &events);
        assert_truth(&label, &set, eng, got.view(), &t);
        // The bins around 2³² hold events (they test something).
        assert!(
            t.values.row(43_360).iter().any(|&v| v != 0.0),
            "{label}: bin 43360 is empty"
        );
    }
}

#[test]
fn positions_past_2_32_cpu() {
    positions_past_2_32(Eng::Cpu);
}
#[test]
fn positions_past_2_32_gpu() {
    positions_past_2_32(Eng::Gpu);
}

/// A stream whose first sample is 2³² − 100 (`first_sample`): bins align to the stream's
/// start, events are absolute, every kernel × aggregation, dense and sparse chunks crossing
/// 2³².
fn positions_first_sample_near_2_32(eng: Eng) {
    let first = (1u64 << 32) - 100;
    each_combination(
        |set, kind, seed| {
            let set = BinningSettings {
                first_sample: first,
                ..set
            };
            let mut r = rng(seed);
            let input = Input::random(&mut r, kind, 300, 3, 0.05);
            let bounds = random_bounds(&mut r, 300, 40);
            let label = format!("first_sample 2^32-100 seed {seed:#x} {kind:?}");
            check_case(eng, &label, set, 1000.0, &input, &bounds);
        },
        0.004,
        0.0075,
        9,
    );
    let set = settings(Kernel::Count, Aggregation::Sum, 0.0075, 0);
    let mut o = op(
        &eng.engine(),
        BinningSettings {
            first_sample: first,
            ..set
        },
        1000.0,
    );
    assert_eq!(o.position(), first);
    // Events are absolute: sample 0 of the stream is `first`.
    let ev = |s: u64| Event {
        sample: s,
        channel: 0,
        value: 1.0,
    };
    let out = o
        .process_events(&[ev(first), ev(first + 6), ev(first + 7)], 8, 1)
        .unwrap();
    assert_eq!(out.values.column(0).to_vec(), vec![2.0]); // bin 0 = stream samples 0..7
    assert!(matches!(
        o.process_events(&[ev(7)], 8, 1),
        Err(Error::IndexOutOfRange { index: 7, .. })
    ));
    o.reset();
    assert_eq!(
        (o.position(), o.bins_emitted()),
        (first, 0),
        "reset returns to first_sample"
    );
}

#[test]
fn positions_first_sample_near_2_32_cpu() {
    positions_first_sample_near_2_32(Eng::Cpu);
}
#[test]
fn positions_first_sample_near_2_32_gpu() {
    positions_first_sample_near_2_32(Eng::Gpu);
}

/// A chunk that would carry the absolute position past `u64::MAX` is a
/// `PositionOverflow` error (dense and sparse), and the stream is left as it was.
fn positions_overflow_is_an_error(eng: Eng) {
    let first = u64::MAX - 10;
    let set = BinningSettings {
        first_sample: first,
        ..settings(Kernel::Count, Aggregation::Sum, 0.0075, 0)
    };
    let mut o = op(&eng.engine(), set, 1000.0);
    o.process_dense(Array2::<f32>::ones((5, 2)).view()).unwrap();
    assert_eq!(o.position(), first + 5);
    let r = o.process_events(&[], 20, 2);
    assert!(
        matches!(r, Err(Error::PositionOverflow(_))),
        "sparse: {r:?}"
    );
    let r = o.process_dense(Array2::<f32>::ones((20, 2)).view());
    assert!(matches!(r, Err(Error::PositionOverflow(_))), "dense: {r:?}");
    assert_eq!(o.position(), first + 5, "state after the overflow errors");
    let out = o.process_dense(Array2::<f32>::ones((5, 2)).view()).unwrap();
    assert_eq!(out.values.nrows(), 1, "the stream goes on");
}

#[test]
fn positions_overflow_is_an_error_cpu() {
    positions_overflow_is_an_error(Eng::Cpu);
}
#[test]
fn positions_overflow_is_an_error_gpu() {
    positions_overflow_is_an_error(Eng::Gpu);
}

/// One sparse chunk of 3·10⁹ samples (past 2³¹, below 2³²) with events past offset 2³¹ in
/// the chunk: 10⁶ s bins at 1 kHz (10⁹ samples; Count, so no decay bound applies).
fn positions_sparse_chunk_past_2_31(eng: Eng) {
    let (fs, bin) = (1000.0, 1e6);
    let two31 = 1u64 << 31;
    let n = 3_000_000_000u64;
    let events = [
        Event {
            sample: 5,
            channel: 0,
            value: 1.0,
        },
        Event {
            sample: two31 - 1,
            channel: 1,
            value: 1.0,
        },
        Event {
            sample: two31,
            channel: 0,
            value: 1.0,
        },
        Event {
            sample: two31 + 5,
            channel: 0,
            value: 1.0,
        },
        Event {
            sample: n - 1,
            channel: 1,
            value: 1.0,
        },
    ];
    for agg in [Aggregation::Sum, Aggregation::Last] {
        let set = settings(Kernel::Count, agg, bin, 0);
        let label = format!("chunk past 2^31 {agg:?}");
        let mut o = op(&eng.engine(), set, fs);
        let got = run_long(&label, &mut o, 2, &[Piece::Sparse(n as usize)], &events);
        assert_eq!(got.nrows(), 3);
        assert_truth(
            &label,
            &set,
            eng,
            got.view(),
            &truth(&set, fs, 2, n, &events),
        );
    }
}

#[test]
fn positions_sparse_chunk_past_2_31_cpu() {
    positions_sparse_chunk_past_2_31(Eng::Cpu);
}
#[test]
fn positions_sparse_chunk_past_2_31_gpu() {
    positions_sparse_chunk_past_2_31(Eng::Gpu);
}

/// One sparse chunk longer than 2³² samples (O(events + bins)): events beyond offset 2³² in
/// the chunk must land in their own bins (SPEC §0: no size ceiling but memory; positions are
/// u64). 100 s bins at 1 kHz (10⁵ samples).
fn positions_sparse_chunk_longer_than_u32(eng: Eng) {
    let (fs, bin) = (1000.0, 100.0);
    let two32 = 1u64 << 32;
    let n = two32 + 250_000;
    let events = [
        Event {
            sample: 7,
            channel: 0,
            value: 1.0,
        },
        Event {
            sample: two32 + 7,
            channel: 0,
            value: 2.0,
        },
        Event {
            sample: two32 + 100_003,
            channel: 1,
            value: 1.0,
        },
    ];
    for set in [
        settings(Kernel::Count, Aggregation::Sum, bin, 0),
        settings(Kernel::Exponential { tau: 20.0 }, Aggregation::Last, bin, 1),
    ] {
        let label = format!("chunk > 2^32 {:?}", set.kernel);
        let mut o = op(&eng.engine(), set, fs);
        let got = run_long(&label, &mut o, 2, &[Piece::Sparse(n as usize)], &events);
        let t = truth(&set, fs, 2, n, &events);
        assert_eq!(got.nrows(), 42_952); // floor((2³² + 250 000) / 10⁵)
        assert_truth(&label, &set, eng, got.view(), &t);
    }
}

#[test]
fn positions_sparse_chunk_longer_than_u32_cpu() {
    positions_sparse_chunk_longer_than_u32(Eng::Cpu);
}
#[test]
fn positions_sparse_chunk_longer_than_u32_gpu() {
    positions_sparse_chunk_longer_than_u32(Eng::Gpu);
}

// =============================================================================================
// reference_*: the Python package's own output (tests/reference/binning)

fn reference_dir(case: &str) -> PathBuf {
    support::reference("binning", case)
}

fn npy<T: ndarray_npy::ReadNpyExt>(dir: &std::path::Path, name: &str) -> T {
    ndarray_npy::read_npy(dir.join(name))
        .unwrap_or_else(|e| panic!("{}: {e}", dir.join(name).display()))
}

/// The settings and sample rate of a reference case.
fn reference_settings(params: &serde_json::Value) -> (BinningSettings, f64) {
    let s = &params["settings"];
    let tau = s["tau"].as_f64().unwrap();
    let kernel = match s["kernel"].as_str().unwrap() {
        "count" => Kernel::Count,
        "exponential" => Kernel::Exponential { tau },
        "alpha" => Kernel::Alpha { tau },
        k => panic!("unknown kernel {k}"),
    };
    let aggregation = match s["aggregation"].as_str().unwrap() {
        "last" => Aggregation::Last,
        "mean" => Aggregation::Mean,
        "sum" => Aggregation::Sum,
        "max" => Aggregation::Max,
        a => panic!("unknown aggregation {a}"),
    };
    let set = BinningSettings {
        kernel,
        bin_duration: s["bin_duration"].as_f64().unwrap(),
        aggregation,
        scale_by_value: s["scale_by_value"].as_bool().unwrap(),
        normalize: s["normalize"].as_bool().unwrap(),
        rate_normalize: s["rate_normalize"].as_bool().unwrap(),
        t0: params["t0"].as_f64().unwrap(),
        ..BinningSettings::default()
    };
    (set, params["fs"].as_f64().unwrap())
}

/// Feeds every chunking of a reference case and checks bins per chunk, first timestamps, and
/// the output against `expected_out.npy` (the seed's) and `analytic_out.npy`.
fn reference_case(eng: Eng, case: &str) {
    let dir = reference_dir(case);
    let params: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("params.json")).unwrap()).unwrap();
    let (set, fs) = reference_settings(&params);
    let n = params["n_samples"].as_u64().unwrap() as usize;
    let nc = params["n_channels"].as_u64().unwrap() as usize;
    let input = match params["input_kind"].as_str().unwrap() {
        "dense" => {
            let x: Array2<f32> = npy(&dir, "input.npy");
            assert_eq!(x.dim(), (n, nc));
            let mut events = Vec::new();
            for ((s, c), &v) in x.indexed_iter() {
                if v != 0.0 {
                    events.push(Event {
                        sample: s as u64,
                        channel: c as u32,
                        value: v,
                    });
                }
            }
            Input {
                kind: InputKind::F32,
                n_samples: n,
                n_channels: nc,
                dense: Some(Dense::F32(x)),
                events,
                fortran: false,
            }
        }
        "sparse" => {
            let s: Array1<i64> = npy(&dir, "events_sample.npy");
            let c: Array1<i64> = npy(&dir, "events_channel.npy");
            let v: Array1<f64> = npy(&dir, "events_value.npy");
            let events = (0..s.len())
                .map(|i| Event {
                    sample: s[i] as u64,
                    channel: c[i] as u32,
                    value: v[i] as f32,
                })
                .collect();
            Input {
                kind: InputKind::Sparse,
                n_samples: n,
                n_channels: nc,
                dense: None,
                events,
                fortran: false,
            }
        }
        k => panic!("unknown input kind {k}"),
    };
    let expected: Array2<f64> = npy(&dir, "expected_out.npy");
    let analytic: Array2<f64> = npy(&dir, "analytic_out.npy");
    let spec_edges: Array1<i64> = npy(&dir, "spec_bin_edges.npy");
    let edges = Edges::new(set.bin_duration, fs);
    for (k, &e) in spec_edges.iter().enumerate() {
        assert_eq!(edges.edge(k as u64), e as u64, "{case}: edge {k}");
    }

    // Our truth reproduces the analytic reference.
    let t = truth(&set, fs, nc, n as u64, &input.events);
    assert_eq!(t.values.dim(), analytic.dim(), "{case}: analytic shape");
    for ((idx, &a), &b) in t.values.indexed_iter().zip(analytic.iter()) {
        assert!(
            (a - b).abs() <= 1e-12 * t.scale[idx].max(1.0),
            "{case}: truth vs analytic at {idx:?}: {a} vs {b}"
        );
    }
    let as_truth = |v: &Array2<f64>| Truth {
        values: v.clone(),
        ..t.clone()
    };

    let n_chunkings = params["chunkings"].as_array().unwrap().len();
    assert!(n_chunkings >= 5);
    for i in 0..n_chunkings {
        let label = format!("{case} chunking {i}");
        let bounds: Array1<i64> = npy(&dir, &format!("chunking{i}_bounds.npy"));
        let bounds: Vec<usize> = bounds.iter().map(|&b| b as usize).collect();
        let nbins: Array1<i64> = npy(&dir, &format!("chunking{i}_spec_nbins.npy"));
        let offsets: Array1<f64> = npy(&dir, &format!("chunking{i}_spec_offsets.npy"));
        assert_eq!(nbins.len(), bounds.len() - 1, "{label}: chunk count");
        let got = run(&label, &mut op(&eng.engine(), set, fs), &input, &bounds);
        for (j, (&(first, nb), (&want_n, &want_t))) in got
            .chunks
            .iter()
            .zip(nbins.iter().zip(offsets.iter()))
            .enumerate()
        {
            assert_eq!(nb as i64, want_n, "{label}: bins of chunk {j}");
            let t0 = set.t0 + first as f64 * set.bin_duration;
            assert!(
                (t0 - want_t).abs() <= 1e-9,
                "{label}: offset of chunk {j}: {t0} vs {want_t}"
            );
        }
        assert_truth(
            &format!("{label} vs expected_out"),
            &set,
            eng,
            got.values.view(),
            &as_truth(&expected),
        );
        assert_truth(
            &format!("{label} vs analytic_out"),
            &set,
            eng,
            got.values.view(),
            &as_truth(&analytic),
        );
        if t.exact {
            assert_eq!(got.values.mapv(|v| v as f64), expected, "{label}: counts");
        }
    }
    // Every chunking saw the same number of bins as the reference.
    assert_eq!(expected.len_of(Axis(0)), t.values.nrows());
}

#[test]
fn reference_dense_count_sum_f32_cpu() {
    reference_case(Eng::Cpu, "dense_count_sum_f32");
}
#[test]
fn reference_dense_count_sum_f32_gpu() {
    reference_case(Eng::Gpu, "dense_count_sum_f32");
}
#[test]
fn reference_sparse_exp_last_cpu() {
    reference_case(Eng::Cpu, "sparse_exp_last");
}
#[test]
fn reference_sparse_exp_last_gpu() {
    reference_case(Eng::Gpu, "sparse_exp_last");
}
