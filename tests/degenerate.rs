//! Degenerate recordings through the whole chain, on both engines and every reference mode:
//! an all-zero recording, a constant channel (a zero or near-zero noise level must not make
//! every sample a crossing), a dead channel inside an LRR cluster, a calibration window of
//! one sample and a recording shorter than the fit window, and a stream whose sample index
//! passes 2³² (SPEC §0: positions are `u64`).

mod support;

use ndarray::{s, Array2};
use neurokernels::chain::{Chain, ChainSettings, ReferenceMode};
use neurokernels::{Engine, Event, LrrSettings};
use rand::Rng;
use support::{engines, rng};

const FS: f64 = 30_000.0;
const C: usize = 16;

fn settings(reference: ReferenceMode) -> ChainSettings {
    ChainSettings {
        reference,
        lrr: LrrSettings {
            channel_clusters: Some(vec![(0..8).collect(), (8..16).collect()]),
            ..Default::default()
        },
        ..Default::default()
    }
}

const MODES: [ReferenceMode; 4] = [
    ReferenceMode::Lrr,
    ReferenceMode::Car,
    ReferenceMode::CarMedian,
    ReferenceMode::None,
];

/// White noise (σ ≈ 5 µV) with negative spikes every 700 samples on every channel.
fn noisy(n: usize, seed: u64) -> Array2<f32> {
    let mut r = rng(seed);
    let mut x = Array2::from_shape_fn((n, C), |_| 10.0 * (r.random::<f32>() - 0.5));
    for c in 0..C {
        let mut t = 50 + 13 * c;
        while t + 30 < n {
            for k in 0..30 {
                x[[t + k, c]] -= 80.0 * (-((k as f32 / 30.0 - 0.25) / 0.08).powi(2)).exp();
            }
            t += 700;
        }
    }
    x
}

/// Calibrates on the first `fit` rows and streams all of `x` in 600-row chunks.
fn run(
    e: &Engine,
    mode: ReferenceMode,
    x: &Array2<f32>,
    fit: usize,
    first: u64,
) -> (Chain, Vec<Event>, Array2<f32>) {
    let mut chain =
        Chain::calibrate(e, settings(mode), FS, x.slice(s![..fit, ..]), first).expect("calibrate");
    let (mut events, mut bins) = (Vec::new(), Vec::new());
    let mut at = 0;
    while at < x.nrows() {
        let n = 600.min(x.nrows() - at);
        let out = chain.process(x.slice(s![at..at + n, ..])).expect("chunk");
        events.extend(out.events);
        bins.extend(out.bins.values.iter().copied());
        at += n;
    }
    let rows = bins.len() / C;
    (
        chain,
        events,
        Array2::from_shape_vec((rows, C), bins).expect("bins"),
    )
}

#[test]
fn all_zero_recording_detects_nothing_and_reports_every_channel_dead() {
    let x = Array2::<f32>::zeros((30_000, C));
    for (name, e) in engines() {
        for mode in MODES {
            let (chain, events, bins) = run(&e, mode, &x, 15_000, 0);
            assert!(
                events.is_empty(),
                "{name} {mode:?}: {} events",
                events.len()
            );
            assert_eq!(bins.nrows(), 50, "{name} {mode:?}");
            assert!(bins.iter().all(|&v| v == 0.0), "{name} {mode:?}");
            assert_eq!(
                chain.calibration().dead_channels,
                (0..C).collect::<Vec<_>>(),
                "{name} {mode:?}"
            );
            assert!(chain.calibration().noise.iter().all(|&v| v == 0.0));
        }
    }
}

#[test]
fn a_constant_channel_does_not_cross_on_every_sample() {
    let mut x = noisy(30_000, 1);
    x.column_mut(3).fill(250.0);
    for (name, e) in engines() {
        for mode in [ReferenceMode::None, ReferenceMode::Lrr] {
            let (chain, events, _) = run(&e, mode, &x, 15_000, 0);
            let on3 = events.iter().filter(|ev| ev.channel == 3).count();
            // The band-pass turns the constant into one step response at the stream's start
            // (the filter starts from rest): at most a few crossings, never one per sample.
            assert!(
                on3 <= 3,
                "{name} {mode:?}: {on3} events on the constant channel"
            );
            let noise = chain.calibration().noise[3];
            assert!(
                noise.is_finite() && noise >= 0.0,
                "{name} {mode:?}: noise {noise}"
            );
            // The other channels still see their spikes.
            let others = events.iter().filter(|ev| ev.channel != 3).count();
            assert!(
                others >= 15 * 40,
                "{name} {mode:?}: {others} events elsewhere"
            );
        }
    }
}

#[test]
fn a_dead_channel_inside_an_lrr_cluster_is_silent_and_harmless() {
    let mut x = noisy(30_000, 2);
    x.column_mut(5).fill(0.0);
    for (name, e) in engines() {
        let (chain, events, bins) = run(&e, ReferenceMode::Lrr, &x, 15_000, 0);
        assert!(bins.iter().all(|v| v.is_finite()), "{name}");
        assert!(
            events
                .iter()
                .all(|ev| ev.channel != 5 && ev.value.is_finite()),
            "{name}"
        );
        assert!(chain.calibration().dead_channels.contains(&5), "{name}");
        // The cluster's live channels still detect their spikes (40 each over 1 s).
        for c in (0..8).filter(|&c| c != 5) {
            let n = events.iter().filter(|ev| ev.channel == c as u32).count();
            assert!(n >= 30, "{name}: channel {c} has {n} events");
        }
    }
}

#[test]
fn short_calibration_windows_are_rejected_or_used_as_given() {
    let x = noisy(3_000, 3);
    for (name, e) in engines() {
        // No samples: a typed error.
        let err = Chain::calibrate(
            &e,
            settings(ReferenceMode::Lrr),
            FS,
            x.slice(s![..0, ..]),
            0,
        )
        .expect_err("an empty window");
        assert!(
            matches!(err, neurokernels::Error::Shape { .. }),
            "{name}: {err}"
        );
        // One sample, and a window shorter than a spike: calibration runs and streaming works.
        for fit in [1usize, 20] {
            for mode in MODES {
                let (_, _, bins) = run(&e, mode, &x, fit, 0);
                assert_eq!(bins.nrows(), 5, "{name} {mode:?} fit {fit}");
                assert!(
                    bins.iter().all(|v| v.is_finite()),
                    "{name} {mode:?} fit {fit}"
                );
            }
        }
    }
}

#[test]
fn a_stream_passing_sample_two_to_the_32_keeps_absolute_positions() {
    let x = noisy(12_000, 4);
    let first = (1u64 << 32) - 6_000;
    for (name, e) in engines() {
        let (_, events, _) = run(&e, ReferenceMode::Car, &x, 6_000, first);
        let (_, base, _) = run(&e, ReferenceMode::Car, &x, 6_000, 0);
        assert_eq!(events.len(), base.len(), "{name}");
        assert!(!events.is_empty(), "{name}");
        for (a, b) in events.iter().zip(&base) {
            assert_eq!(a.sample, b.sample + first, "{name}");
            assert_eq!((a.channel, a.value), (b.channel, b.value), "{name}");
        }
        assert!(events.iter().any(|ev| ev.sample >= 1 << 32), "{name}");
    }
}
