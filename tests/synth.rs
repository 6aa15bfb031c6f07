//! The simulation's recording generator: the GPU kernel equals its CPU twin to a stated
//! tolerance on awkward sizes and positions, each engine is chunking-invariant
//! (bit-identical), a spike alone is amplitude × waveform at the right samples, and the chain
//! fed from the device equals the chain fed from the host.

mod support;

use ndarray::{concatenate, s, Array2, Axis};
use neurokernels::chain::{Chain, ChainSettings, ReferenceMode};
use neurokernels::simulate::{SimSettings, Synthesizer};
use neurokernels::{Engine, LrrSettings};
use support::gpu;

fn sim(channels: usize) -> SimSettings {
    SimSettings {
        channels,
        cluster_size: 24,
        ..Default::default()
    }
}

/// Onsets every `gap` samples from `first`, cycling over channels.
fn onsets(first: u64, count: usize, gap: u64, channels: usize) -> Vec<(u64, u32)> {
    (0..count)
        .map(|i| (first + i as u64 * gap, (i * 7 % channels) as u32))
        .collect()
}

fn device(synth: &Synthesizer, start: u64, n: usize) -> Array2<f32> {
    synth
        .fill_device(start, n)
        .expect("fill_device")
        .to_host::<f32>()
        .expect("read back")
        .into_dimensionality()
        .expect("2-D")
}

/// Tolerance of GPU vs CPU for one value: the terms' `f32` functions differ by a few ulps
/// (`ln`, `cos` in Box–Muller, `sin` of the LFP after a phase reduced differently). A normal
/// is at most ~5.7 in magnitude, so each noise term errs by ≲ 1e-5 × its σ × 6; the LFP by
/// ≲ 1e-5 × its amplitude; the sum by a few ulps of |x|. 1e-4 × (σ_indep + σ_shared +
/// lfp_uv) + 1e-5·|x| covers that with margin.
fn tolerance(s: &SimSettings, x: f32) -> f32 {
    (1e-4 * (s.noise_uv + s.shared_noise_uv + s.lfp_uv)) as f32 + 1e-5 * x.abs()
}

fn assert_close(s: &SimSettings, gpu: &Array2<f32>, cpu: &Array2<f32>, what: &str) -> f32 {
    assert_eq!(gpu.dim(), cpu.dim(), "{what}");
    let mut worst = 0f32;
    for ((i, &g), &c) in gpu.indexed_iter().zip(cpu.iter()) {
        let d = (g - c).abs();
        assert!(d <= tolerance(s, c), "{what} at {i:?}: gpu {g}, cpu {c}");
        worst = worst.max(d);
    }
    worst
}

#[test]
fn gpu_synthesis_matches_the_cpu_twin_on_awkward_sizes() {
    let near = (1u64 << 32) - 100;
    let cases: [(usize, u64, usize); 6] = [
        (1, 0, 1),
        (1, 17, 1000),
        (67, 5, 333),
        (67, near, 250),
        (48, 1_000_000_000, 97),
        (67, 123, 0),
    ];
    for (channels, start, n) in cases {
        let s = sim(channels);
        let on = onsets(start.saturating_sub(40), 60, 11, channels);
        let cpu = Synthesizer::for_settings(&Engine::cpu(), &s, on.clone()).expect("cpu");
        let gpu_synth = Synthesizer::for_settings(&gpu(), &s, on).expect("gpu");
        let want = cpu.chunk(start, n);
        let got = device(&gpu_synth, start, n);
        let worst = assert_close(&s, &got, &want, &format!("{channels} ch at {start}+{n}"));
        eprintln!("{channels} channels, [{start}, +{n}): worst |gpu − cpu| = {worst:e} µV");
        // The host path is the CPU twin on the GPU engine too.
        assert_eq!(gpu_synth.chunk(start, n), want);
    }
}

#[test]
fn any_chunking_gives_the_same_samples_on_each_engine() {
    let s = sim(67);
    let start = (1u64 << 32) - 300;
    let on = onsets(start, 40, 13, 67);
    for engine in [Engine::cpu(), gpu()] {
        let synth = Synthesizer::for_settings(&engine, &s, on.clone()).expect("synth");
        let get = |a: u64, n: usize| match engine {
            Engine::Cpu => synth.chunk(a, n),
            Engine::Gpu(_) => device(&synth, a, n),
        };
        let whole = get(start, 600);
        let mut parts = Array2::<f32>::zeros((0, 67));
        let mut at = 0usize;
        for len in [1usize, 63, 64, 65, 0, 200, 207] {
            parts = concatenate![Axis(0), parts, get(start + at as u64, len)];
            at += len;
        }
        assert_eq!(at, 600);
        assert_eq!(parts, whole, "{engine:?}");
    }
}

#[test]
fn one_spike_without_noise_is_amplitude_times_waveform() {
    let s = SimSettings {
        noise_uv: 0.0,
        shared_noise_uv: 0.0,
        lfp_uv: 0.0,
        spike_uv: (80.0, 80.0),
        ..sim(5)
    };
    let onset = 1000u64;
    for engine in [Engine::cpu(), gpu()] {
        let synth = Synthesizer::for_settings(&engine, &s, vec![(onset, 3)]).expect("synth");
        let x = match engine {
            Engine::Cpu => synth.chunk(990, 50),
            Engine::Gpu(_) => device(&synth, 990, 50),
        };
        // The waveform at 30 kHz: 30 samples, unit trough near 0.25 ms.
        let wave: Vec<f32> = (0..30)
            .map(|k| {
                let t = k as f64 / 30.0;
                let trough = (-((t - 0.25) / 0.08).powi(2)).exp();
                let rebound = 0.35 * (-((t - 0.55) / 0.15).powi(2)).exp();
                (rebound - trough) as f32
            })
            .collect();
        for ((r, c), &v) in x.indexed_iter() {
            let k = r as i64 + 990 - onset as i64;
            let want = if c == 3 && (0..30).contains(&k) {
                80.0 * wave[k as usize]
            } else {
                0.0
            };
            assert_eq!(v, want, "{engine:?} at ({r}, {c})");
        }
        assert!(x[[10 + 7, 3]] < -75.0, "the trough lies at 0.25 ms");
    }
}

#[test]
fn bad_inputs_are_errors() {
    let s = sim(4);
    let cpu = Engine::cpu();
    assert!(Synthesizer::for_settings(&cpu, &s, vec![(0, 4)]).is_err());
    assert!(Synthesizer::for_settings(&cpu, &s, vec![(5, 0), (1, 0)]).is_err());
    let bad = SimSettings {
        fs: 100.0,
        ..s.clone()
    };
    assert!(Synthesizer::for_settings(&cpu, &bad, vec![]).is_err());
    let synth = Synthesizer::for_settings(&cpu, &s, vec![]).expect("synth");
    assert!(
        synth.fill_device(0, 10).is_err(),
        "fill_device needs the GPU engine"
    );
    let g = Synthesizer::for_settings(&gpu(), &s, vec![]).expect("synth");
    assert!(g.fill_device(u64::MAX - 5, 10).is_err(), "past u64::MAX");
    let edge = Synthesizer::for_settings(&cpu, &s, vec![(u64::MAX - 3, 1)]).expect("synth");
    assert_eq!(
        edge.chunk(u64::MAX - 5, 10).dim(),
        (10, 4),
        "the host path does not panic"
    );
}

#[test]
fn the_chain_fed_from_the_device_equals_the_chain_fed_from_the_host() {
    let c = 48;
    let s = sim(c);
    let on: Vec<(u64, u32)> = (0..400u64)
        .map(|i| (200 + i * 97, (i * 13 % c as u64) as u32))
        .collect();
    let engine = gpu();
    let synth = Synthesizer::for_settings(&engine, &s, on).expect("synth");
    let settings = ChainSettings {
        reference: ReferenceMode::Lrr,
        lrr: LrrSettings {
            channel_clusters: Some(s.clusters()),
            ..Default::default()
        },
        ..Default::default()
    };
    let window = synth.chunk(0, 6000);
    let mut host =
        Chain::calibrate(&engine, settings.clone(), s.fs, window.view(), 0).expect("cal");
    let mut dev = Chain::calibrate(&engine, settings, s.fs, window.view(), 0).expect("cal");
    let (mut events_h, mut events_d) = (Vec::new(), Vec::new());
    let mut at = 0u64;
    for n in [600usize, 333, 0, 1267, 600, 1200] {
        let x = synth.fill_device(at, n).expect("fill");
        let xh: Array2<f32> = x
            .to_host::<f32>()
            .expect("read")
            .into_dimensionality()
            .expect("2-D");
        let a = host.process(xh.view()).expect("host");
        let b = dev.process_device(&x).expect("device");
        assert_eq!(a.bins, b.bins, "chunk at {at}");
        events_h.extend(a.events);
        events_d.extend(b.events);
        at += n as u64;
    }
    assert_eq!(events_h, events_d);
    assert!(!events_h.is_empty());

    // Shape and engine errors.
    let wrong = Synthesizer::for_settings(&engine, &sim(7), vec![]).expect("synth");
    assert!(dev
        .process_device(&wrong.fill_device(0, 10).expect("fill"))
        .is_err());
    let x = synth.fill_device(0, 10).expect("fill");
    let mut cpu_chain = Chain::calibrate(
        &Engine::cpu(),
        ChainSettings {
            reference: ReferenceMode::None,
            ..Default::default()
        },
        s.fs,
        window.slice(s![..3000, ..]),
        0,
    )
    .expect("cal");
    assert!(cpu_chain.process_device(&x).is_err());
}
