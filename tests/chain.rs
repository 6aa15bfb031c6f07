//! The chain (SPEC §7): its output equals the composition of its operators called one by one,
//! for any chunking, on each engine; calibration measures what its docs say; bad chunks are
//! rejected whole with every stage's state unchanged; and the closed-loop simulation scores
//! above stated bounds on both engines.

mod support;

use ndarray::{concatenate, s, Array2, ArrayView2, Axis};
use neurokernels::chain::{Chain, ChainSettings, ReferenceMode, ThresholdRule};
use neurokernels::filter::{BandpassFilter, FilterSettings};
use neurokernels::reference::{CarSettings, CommonAverage};
use neurokernels::simulate::{self, SimSettings};
use neurokernels::{
    BinnedActivation, Engine, Error, Event, Lrr, LrrSettings, ThresholdCrossing, WeightsSource,
};
// One GPU context per test thread: the chain compiles a dozen pipelines, and on wgpu's GL
// backend (one lock per context, given up after 6 s) a cold shader cache made one thread's
// compiles outlast another thread's wait.
use support::{engines_per_thread as engines, gpu_per_thread as gpu, recording};

const FS: f64 = 30_000.0;

fn settings(reference: ReferenceMode, c: usize) -> ChainSettings {
    ChainSettings {
        reference,
        lrr: LrrSettings {
            channel_clusters: Some(vec![(0..c / 2).collect(), (c / 2..c).collect()]),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Streams `x` through `chain` in chunks of the given lengths (cycled), returning the
/// concatenated events and bins.
fn stream(chain: &mut Chain, x: ArrayView2<'_, f32>, lens: &[usize]) -> (Vec<Event>, Array2<f32>) {
    let c = x.ncols();
    let (mut events, mut bins) = (Vec::new(), Array2::<f32>::zeros((0, c)));
    let (mut at, mut i) = (0, 0);
    while at < x.nrows() {
        let n = lens[i % lens.len()].min(x.nrows() - at);
        i += 1;
        let out = chain.process(x.slice(s![at..at + n, ..])).expect("chunk");
        events.extend(out.events);
        bins = concatenate![Axis(0), bins, out.bins.values];
        at += n;
    }
    (events, bins)
}

/// The chain's stages called one by one on the whole stream, with the chain's calibration.
fn composed(engine: &Engine, chain: &Chain, x: ArrayView2<'_, f32>) -> (Vec<Event>, Array2<f32>) {
    let st = chain.settings();
    let mut f = BandpassFilter::new(engine, st.filter.expect("filter"), FS).expect("filter");
    let y = f.process(x).expect("filter");
    let y = match st.reference {
        ReferenceMode::Lrr => {
            let w = chain.calibration().weights.clone().expect("weights");
            let mut l = Lrr::new(
                engine,
                LrrSettings {
                    weights: Some(WeightsSource::Array(w)),
                    ..st.lrr.clone()
                },
            )
            .expect("lrr");
            l.transform(y.view()).expect("transform")
        }
        ReferenceMode::Car | ReferenceMode::CarMedian => {
            let median = st.reference == ReferenceMode::CarMedian;
            let mut car = CommonAverage::new(engine, CarSettings { median }).expect("car");
            car.process(y.view()).expect("car")
        }
        ReferenceMode::None => y,
    };
    let mut d = ThresholdCrossing::with_thresholds(
        engine,
        st.detection,
        FS,
        chain.calibration().thresholds.clone(),
    )
    .expect("detector");
    let events = d.process(y.view()).expect("detect");
    let mut b = BinnedActivation::new(engine, st.binning, FS).expect("binning");
    let bins = b
        .process_events(&events, y.nrows(), y.ncols())
        .expect("bins");
    (events, bins.values)
}

fn keys(e: &[Event]) -> Vec<(u64, u32)> {
    e.iter().map(|e| (e.sample, e.channel)).collect()
}

#[test]
fn chain_equals_its_operators_for_any_chunking() {
    let (n, c) = (9_000, 13);
    let x = recording(1, n, c);
    for (name, engine) in engines() {
        for reference in [
            ReferenceMode::Lrr,
            ReferenceMode::Car,
            ReferenceMode::CarMedian,
            ReferenceMode::None,
        ] {
            let cal = x.slice(s![..6_000, ..]);
            let make = || {
                Chain::calibrate(&engine, settings(reference, c), FS, cal, 0).expect("calibrate")
            };
            let chain = make();
            let (want_events, want_bins) = composed(&engine, &chain, x.view());
            assert!(
                want_events.len() > 50,
                "{name} {reference:?}: {} events",
                want_events.len()
            );
            for lens in [vec![n], vec![600], vec![1, 0, 37, 640, 2_049], vec![30]] {
                let mut chain = make();
                let (events, bins) = stream(&mut chain, x.view(), &lens);
                assert_eq!(
                    keys(&events),
                    keys(&want_events),
                    "{name} {reference:?} {lens:?}"
                );
                assert_eq!(bins, want_bins, "{name} {reference:?} {lens:?}");
            }
        }
    }
}

/// A burst of 150 spikes on one channel within one chunk: more events than the GPU engine's
/// first guess of slots per channel (16), which it then redoes with more slots, from the
/// state before the chunk, on every stage.
#[test]
fn a_burst_of_more_events_than_slots_equals_its_operators() {
    let (n, c) = (12_000, 5);
    let mut x = recording(9, n, c);
    for k in 0..150 {
        let t = 6_300 + 36 * k;
        for j in 0..30 {
            let tj = j as f32 / 30.0;
            x[[t + j, 2]] -= 120.0 * (-((tj - 0.25) / 0.08).powi(2)).exp();
        }
    }
    let cal = x.slice(s![..6_000, ..]);
    for (name, engine) in engines() {
        for reference in [ReferenceMode::Lrr, ReferenceMode::Car, ReferenceMode::None] {
            let make = || {
                Chain::calibrate(&engine, settings(reference, c), FS, cal, 0).expect("calibrate")
            };
            let chain = make();
            let (want_events, want_bins) = composed(&engine, &chain, x.view());
            let burst = want_events.iter().filter(|e| e.channel == 2).count();
            assert!(
                burst >= 100,
                "{name} {reference:?}: {burst} events on the burst channel"
            );
            for lens in [vec![6_000], vec![4_000, 8_000], vec![600]] {
                let mut chain = make();
                let (events, bins) = stream(&mut chain, x.view(), &lens);
                assert_eq!(events, want_events, "{name} {reference:?} {lens:?}");
                assert_eq!(bins, want_bins, "{name} {reference:?} {lens:?}");
            }
        }
    }
}

#[test]
fn gpu_and_cpu_chains_agree() {
    let (n, c) = (12_000, 20);
    let x = recording(2, n, c);
    let cal = x.slice(s![..6_000, ..]);
    let mut outs = Vec::new();
    for (_, engine) in engines() {
        let mut chain = Chain::calibrate(&engine, settings(ReferenceMode::Lrr, c), FS, cal, 0)
            .expect("calibrate");
        let noise = chain.calibration().noise.clone();
        outs.push((noise, stream(&mut chain, x.view(), &[600])));
    }
    let ((n_cpu, (e_cpu, b_cpu)), (n_gpu, (e_gpu, b_gpu))) = (&outs[0], &outs[1]);
    for (a, b) in n_cpu.iter().zip(n_gpu) {
        assert!(
            (a - b).abs() <= 1e-3 * a.abs().max(1e-3),
            "noise {a} vs {b}"
        );
    }
    // Events whose margin |x − threshold| lies within the filter's error bound could differ;
    // this data has none (the crossings happen on steep spike flanks).
    assert_eq!(keys(e_cpu), keys(e_gpu));
    assert_eq!(b_cpu, b_gpu);
}

#[test]
fn calibration_measures_noise_and_reports_dead_channels() {
    let (n, c) = (6_000, 6);
    let mut x = recording(3, n, c);
    x.column_mut(4).fill(0.0); // a dead channel
    for (name, engine) in engines() {
        let st = ChainSettings {
            reference: ReferenceMode::None,
            ..Default::default()
        };
        let mut chain = Chain::calibrate(&engine, st.clone(), FS, x.view(), 0).expect("calibrate");
        let cal = chain.calibration().clone();
        assert_eq!(cal.dead_channels, vec![4], "{name}");
        let mut f =
            BandpassFilter::new(&Engine::cpu(), FilterSettings::default(), FS).expect("filter");
        let y = f.process(x.view()).expect("filter");
        for ch in [0, 3, 5] {
            let mut a: Vec<f64> = y.column(ch).iter().map(|v| v.abs() as f64).collect();
            a.sort_by(f64::total_cmp);
            let med = (a[n / 2 - 1] + a[n / 2]) / 2.0;
            let want = med / 0.6745;
            let got = cal.noise[ch] as f64;
            assert!(
                (got - want).abs() <= 1e-3 * want,
                "{name} ch {ch}: {got} vs {want}"
            );
            assert!(
                (cal.thresholds[ch] as f64 + 5.0 * got).abs() <= 1e-5 * got,
                "{name}"
            );
        }
        assert_eq!(cal.noise[4], 0.0);
        let (events, _) = stream(&mut chain, x.view(), &[600]);
        assert!(
            events.iter().all(|e| e.channel != 4),
            "{name}: the dead channel detected"
        );
        assert!(!events.is_empty(), "{name}");
    }
}

#[test]
fn absolute_thresholds_and_first_sample() {
    let (n, c) = (6_000, 4);
    let x = recording(4, n, c);
    let first = (1u64 << 32) - 100;
    for (name, engine) in engines() {
        let st = ChainSettings {
            reference: ReferenceMode::Car,
            threshold: ThresholdRule::Absolute(-25.0),
            ..Default::default()
        };
        let mut chain =
            Chain::calibrate(&engine, st.clone(), FS, x.view(), first).expect("calibrate");
        assert!(chain.calibration().thresholds.iter().all(|&t| t == -25.0));
        let (events, bins) = stream(&mut chain, x.view(), &[700]);
        let mut zero = Chain::calibrate(&engine, st, FS, x.view(), 0).expect("calibrate");
        let (events0, bins0) = stream(&mut zero, x.view(), &[700]);
        let shifted: Vec<(u64, u32)> = events0
            .iter()
            .map(|e| (e.sample + first, e.channel))
            .collect();
        assert_eq!(keys(&events), shifted, "{name}");
        assert_eq!(bins, bins0, "{name}");
    }
}

#[test]
fn bad_chunks_are_rejected_whole_and_the_stream_goes_on() {
    let (n, c) = (6_000, 5);
    let x = recording(5, n, c);
    for (name, engine) in engines() {
        let st = settings(ReferenceMode::Lrr, c);
        let mut clean = Chain::calibrate(&engine, st.clone(), FS, x.view(), 0).expect("calibrate");
        let want = stream(&mut clean, x.view(), &[1_000]);
        let mut chain = Chain::calibrate(&engine, st, FS, x.view(), 0).expect("calibrate");
        let (mut events, mut bins) = (Vec::new(), Array2::<f32>::zeros((0, c)));
        for k in 0..6 {
            let chunk = x.slice(s![k * 1_000..(k + 1) * 1_000, ..]);
            let mut bad = chunk.to_owned();
            bad[[17, 3]] = f32::NAN;
            match chain.process(bad.view()) {
                Err(Error::NonFinite {
                    sample: 17,
                    channel: 3,
                    ..
                }) => {}
                other => panic!("{name}: NaN chunk gave {other:?}"),
            }
            let narrow = chunk.slice(s![.., ..c - 1]);
            assert!(
                matches!(chain.process(narrow), Err(Error::Shape { .. })),
                "{name}"
            );
            let out = chain.process(chunk).expect("good chunk");
            events.extend(out.events);
            bins = concatenate![Axis(0), bins, out.bins.values];
        }
        assert_eq!(keys(&events), keys(&want.0), "{name}");
        assert_eq!(bins, want.1, "{name}");
    }
}

#[test]
fn bad_settings_and_windows_are_errors() {
    let x = recording(6, 3_000, 4);
    let e = Engine::cpu();
    let cal = |st: ChainSettings, fs: f64, w: ArrayView2<'_, f32>| {
        Chain::calibrate(&e, st, fs, w, 0).map(|_| ())
    };
    let ok = ChainSettings::default;
    for (what, r) in [
        ("fs 0", cal(ok(), 0.0, x.view())),
        ("fs NaN", cal(ok(), f64::NAN, x.view())),
        ("empty window", cal(ok(), FS, x.slice(s![..0, ..]))),
        ("no channels", cal(ok(), FS, x.slice(s![.., ..0]))),
        (
            "threshold 0",
            cal(
                ChainSettings {
                    threshold: ThresholdRule::NoiseMultiple(0.0),
                    ..ok()
                },
                FS,
                x.view(),
            ),
        ),
        (
            "threshold inf",
            cal(
                ChainSettings {
                    threshold: ThresholdRule::Absolute(f64::INFINITY),
                    ..ok()
                },
                FS,
                x.view(),
            ),
        ),
        (
            "cluster out of range",
            cal(
                ChainSettings {
                    lrr: LrrSettings {
                        channel_clusters: Some(vec![vec![0, 9]]),
                        ..Default::default()
                    },
                    ..ok()
                },
                FS,
                x.view(),
            ),
        ),
    ] {
        assert!(r.is_err(), "{what} was accepted");
    }
    let mut nan = x.clone();
    nan[[5, 1]] = f32::INFINITY;
    assert!(matches!(
        cal(ok(), FS, nan.view()),
        Err(Error::NonFinite {
            sample: 5,
            channel: 1,
            ..
        })
    ));
}

/// Bounds for the default-shaped simulation at 48 channels: spikes are 60–120 µV deep
/// against ≈ 4 µV of noise once LRR has removed the shared part, so nearly every isolated
/// spike crosses −5σ; misses come from spikes within the 1 ms refractory period of another
/// (GLM bursts) and overlaps, which the ground truth at ≈ 25 Hz puts below 15 %; false
/// detections need a 5σ noise excursion or the filter's ringing outside the refractory
/// period, well below 5 %. Classification: trial features are 48 neurons' spike counts
/// whose rates differ by class through the feedforward weights; 16 test trials, chance 0.25.
///
/// Between engines: the encoder's spikes are bit-identical (Philox); the GLM's Poisson draws
/// agree except where a rate lies within float error of a sampling threshold, after which
/// the trajectories part, so the ground truth is compared as counts (within 2 %), and the
/// detection scores within 0.02.
#[test]
fn simulation_scores_on_both_engines() {
    let sim = SimSettings {
        channels: 48,
        trials: 40,
        cluster_size: 24,
        ..Default::default()
    };
    let mut reports = Vec::new();
    for (name, engine) in [("cpu", Engine::cpu()), ("gpu", gpu())] {
        let r = simulate::run(&engine, &sim, ChainSettings::default()).expect("simulate");
        let d = r.detection;
        assert!(
            d.true_spikes > 5_000,
            "{name}: {} true spikes",
            d.true_spikes
        );
        assert!(d.recall() > 0.85, "{name}: recall {}", d.recall());
        assert!(d.precision() > 0.95, "{name}: precision {}", d.precision());
        assert!(
            r.accuracy >= r.chance + 0.35,
            "{name}: accuracy {} (chance {})",
            r.accuracy,
            r.chance
        );
        assert_eq!(r.bins.nrows(), 400, "{name}: 8 s of 20 ms bins");
        reports.push(r);
    }
    let (c, g) = (&reports[0], &reports[1]);
    assert_eq!(c.truth.labels, g.truth.labels, "class order");
    let (tc, tg) = (
        c.detection.true_spikes as f64,
        g.detection.true_spikes as f64,
    );
    assert!(
        (tc - tg).abs() <= 0.02 * tc,
        "true spikes: cpu {tc}, gpu {tg}"
    );
    assert!((c.detection.recall() - g.detection.recall()).abs() <= 0.02);
    assert!((c.detection.precision() - g.detection.precision()).abs() <= 0.02);
}

#[test]
fn simulation_rejects_bad_settings() {
    let e = Engine::cpu();
    for sim in [
        SimSettings {
            channels: 0,
            ..Default::default()
        },
        SimSettings {
            fs: 1000.0,
            ..Default::default()
        },
        SimSettings {
            train_fraction: 1.0,
            ..Default::default()
        },
        SimSettings {
            trial_seconds: 0.0,
            ..Default::default()
        },
        SimSettings {
            noise_uv: -1.0,
            ..Default::default()
        },
        SimSettings {
            input_rate_hz: 2000.0,
            ..Default::default()
        },
    ] {
        assert!(
            matches!(
                simulate::run(&e, &sim, ChainSettings::default()),
                Err(Error::InvalidSetting { .. })
            ),
            "{sim:?}"
        );
    }
}

/// `process_device` on uploaded chunks equals `process` on the host chunks, for every
/// reference and without a filter; a NaN on the device is rejected whole, naming its sample
/// and channel, and the stream goes on as if the chunk had not been sent.
#[test]
fn device_chunks_equal_host_chunks_and_bad_ones_are_rejected_whole() {
    let (n, c) = (4_000, 6);
    let x = recording(8, n, c);
    let Engine::Gpu(ctx) = gpu() else {
        unreachable!("gpu_per_thread() is the GPU engine")
    };
    for (reference, filter) in [
        (ReferenceMode::Lrr, true),
        (ReferenceMode::Car, true),
        (ReferenceMode::None, false),
    ] {
        let mut st = settings(reference, c);
        if !filter {
            st.filter = None;
        }
        let mut host = Chain::calibrate(&gpu(), st.clone(), FS, x.view(), 0).expect("calibrate");
        let want = stream(&mut host, x.view(), &[700, 333]);
        let mut dev = Chain::calibrate(&gpu(), st, FS, x.view(), 0).expect("calibrate");
        let (mut events, mut bins) = (Vec::new(), Array2::<f32>::zeros((0, c)));
        let (mut at, mut i) = (0, 0);
        while at < n {
            let len = [700, 333][i % 2].min(n - at);
            i += 1;
            let chunk = x.slice(s![at..at + len, ..]);
            let mut bad = chunk.to_owned();
            bad[[len / 2, 4]] = f32::INFINITY;
            let up = neurokernels::DeviceArray::upload(&ctx, bad.view().into_dyn()).expect("up");
            match dev.process_device(&up) {
                Err(Error::NonFinite {
                    sample, channel: 4, ..
                }) if sample == len / 2 => {}
                other => panic!("{reference:?}: inf chunk gave {other:?}"),
            }
            let up = neurokernels::DeviceArray::upload(&ctx, chunk.into_dyn()).expect("up");
            let out = dev.process_device(&up).expect("good chunk");
            events.extend(out.events);
            bins = concatenate![Axis(0), bins, out.bins.values];
            at += len;
        }
        assert_eq!(events, want.0, "{reference:?}");
        assert_eq!(bins, want.1, "{reference:?}");
    }
}
