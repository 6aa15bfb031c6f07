//! Saved operator state (`neurokernels::state`): a stream processed in chunks, saved in the
//! middle and restored into a new operator, gives the uninterrupted stream's output —
//! bit-for-bit on the same engine, within the module's bound on the other engine; a state of
//! other settings, truncated, bit-flipped or random bytes are refused with the state unchanged.
//!
//! GPU tests never skip: without an adapter they fail.

mod support;

use support::{engines, forged, rng};

use ndarray::{s, Array2};
use neurokernels::{
    Aggregation, BandpassFilter, Binned, BinnedActivation, BinningSettings, Engine, Error, Event,
    FilterSettings, Kernel, ThresholdCrossing, ThresholdSettings,
};
use rand::Rng;

/// The filter's documented bound on both engines: 1e-6 of the signal's RMS.
const FILTER_BOUND: f64 = 1e-6;

fn signal(n: usize, nc: usize, seed: u64) -> Array2<f32> {
    let mut r = rng(seed);
    Array2::from_shape_fn((n, nc), |_| r.random_range(-1.0f32..1.0))
}

fn filter(engine: &Engine) -> BandpassFilter {
    match BandpassFilter::new(engine, FilterSettings::default(), 20_000.0) {
        Ok(f) => f,
        Err(e) => panic!("filter: {e}"),
    }
}

/// Runs `x` through `f` in two chunks split at `at`; returns the outputs and the state saved
/// between them.
fn run_split(f: &mut BandpassFilter, x: &Array2<f32>, at: usize) -> (Array2<f32>, Vec<u8>) {
    let a = f.process(x.slice(s![..at, ..])).expect("first half");
    let saved = f.save_state().expect("save");
    let b = f.process(x.slice(s![at.., ..])).expect("second half");
    (ndarray::concatenate![ndarray::Axis(0), a, b], saved)
}

#[test]
fn filter_resume_matches_uninterrupted_stream() {
    let x = signal(3000, 5, 1);
    let at = 1234;
    let rms = (x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / x.len() as f64).sqrt();
    let saved: Vec<(&str, Engine, Array2<f32>, Vec<u8>)> = engines()
        .into_iter()
        .map(|(name, e)| {
            let (y, st) = run_split(&mut filter(&e), &x, at);
            (name, e, y, st)
        })
        .collect();
    for (_, from_engine, _, st) in &saved {
        for (to_name, to_engine, whole, _) in &saved {
            let mut g = filter(to_engine);
            g.restore_state(st).expect("restore");
            let tail = g.process(x.slice(s![at.., ..])).expect("resumed");
            let want = whole.slice(s![at.., ..]);
            if from_engine.is_gpu() == to_engine.is_gpu() {
                assert_eq!(tail, want, "{to_name}: resumed output differs");
            } else {
                let err = tail
                    .iter()
                    .zip(want.iter())
                    .map(|(a, b)| (*a as f64 - *b as f64).abs())
                    .fold(0.0, f64::max);
                assert!(err <= FILTER_BOUND * rms, "{to_name}: {err} > bound");
            }
        }
    }
}

/// An operator that saves its stream state.
trait Saves {
    fn save(&self) -> Vec<u8>;
    fn restore(&mut self, bytes: &[u8]) -> Result<(), Error>;
}

macro_rules! saves {
    ($($t:ty),*) => {$(
        impl Saves for $t {
            fn save(&self) -> Vec<u8> {
                self.save_state().expect("save")
            }
            fn restore(&mut self, bytes: &[u8]) -> Result<(), Error> {
                self.restore_state(bytes)
            }
        }
    )*};
}
saves!(BandpassFilter, ThresholdCrossing, BinnedActivation);

/// Restores the valid state `st` into `op`; then truncations, 200 single bit flips and 200
/// random byte strings of it are all refused (prefixes with [`Error::State`]) and leave
/// `op`'s state as restored. Returns the state `op` saves after the restore.
fn assert_refuses_corrupt(name: &str, op: &mut impl Saves, st: &[u8], seed: u64) -> Vec<u8> {
    op.restore(st).expect("restore");
    let before = op.save();
    let mut restore = |b: &[u8]| op.restore(b);
    let mut r = rng(seed);
    for cut in [0, 1, 4, st.len() / 2, st.len() - 1] {
        assert!(
            matches!(restore(&st[..cut]), Err(Error::State(_))),
            "{name} {cut}"
        );
    }
    for _ in 0..200 {
        let mut bad = st.to_vec();
        let i = r.random_range(0..bad.len());
        bad[i] ^= 1 << r.random_range(0..8);
        assert!(restore(&bad).is_err(), "{name}: flipped byte {i} accepted");
    }
    for _ in 0..200 {
        let len = r.random_range(0..256);
        let junk: Vec<u8> = (0..len).map(|_| r.random()).collect();
        assert!(restore(&junk).is_err(), "{name}: random bytes accepted");
    }
    assert_eq!(op.save(), before, "{name}: state changed");
    before
}

#[test]
fn filter_refuses_other_settings_and_corrupt_bytes_state_unchanged() {
    let x = signal(800, 3, 2);
    for (name, e) in engines() {
        let mut f = filter(&e);
        let (_, st) = run_split(&mut f, &x, 400);
        // Another sample rate: another fingerprint.
        let mut other = BandpassFilter::new(&e, FilterSettings::default(), 30_000.0).expect("f");
        assert!(
            matches!(other.restore_state(&st), Err(Error::State(_))),
            "{name}"
        );
        assert_refuses_corrupt(name, &mut filter(&e), &st, 3);
    }
}

/// A device destroyed mid-stream (`wgpu::Device::destroy`): the next chunk fails with
/// [`Error::DeviceLost`] (no panic), and a filter on a new engine restored from the last saved
/// state gives the uninterrupted stream's output bit-for-bit. Runs on Vulkan and GL alike (on
/// GL too the destroy makes the next chunk fail with `DeviceLost`).
#[test]
fn filter_resumes_on_a_new_engine_after_the_device_is_destroyed() {
    use neurokernels::GpuOptions;
    let x = signal(2000, 4, 4);
    let at = 900;
    let open = || Engine::gpu(&GpuOptions::software_ok()).expect("a GPU adapter");
    let (whole, _) = run_split(&mut filter(&open()), &x, at);
    let doomed = open();
    let mut f = filter(&doomed);
    f.process(x.slice(s![..at, ..])).expect("first half");
    let saved = f.save_state().expect("save");
    let Engine::Gpu(ctx) = &doomed else {
        unreachable!("Engine::gpu returns the GPU engine")
    };
    ctx.device().destroy();
    let err = f
        .process(x.slice(s![at.., ..]))
        .expect_err("a destroyed device must fail the chunk");
    assert!(
        matches!(err, Error::DeviceLost(_)),
        "unexpected error {err:?}"
    );
    let mut g = filter(&open());
    g.restore_state(&saved).expect("restore on a new engine");
    let tail = g.process(x.slice(s![at.., ..])).expect("resumed");
    assert_eq!(tail, whole.slice(s![at.., ..]));
}

/// The fuzz entry takes random bytes, and a valid state's prefixes and bit flips, without
/// panicking; only the valid state restores.
#[test]
fn fuzz_entry_never_panics() {
    let x = signal(300, 1, 5);
    let mut f = filter(&Engine::cpu());
    let (_, filter_state) = run_split(&mut f, &x, 100);
    let y = spiky(300, 3, 10, &[150]);
    let (_, _, threshold_state) = detect_split(
        &mut detector(&Engine::cpu(), ThresholdSettings::default()),
        &y,
        150,
    );
    let mut b = BinnedActivation::new(&Engine::cpu(), BinningSettings::default(), 20_000.0)
        .expect("binning");
    let (_, binning_state) = bin_split(&mut b, &raster(500, 2, 14), 250);
    let mut r = rng(6);
    for st in [&filter_state, &threshold_state, &binning_state] {
        assert!(neurokernels::state::fuzz_restore(st).is_ok());
        for cut in 0..st.len() {
            assert!(neurokernels::state::fuzz_restore(&st[..cut]).is_err());
        }
    }
    for st in [filter_state, threshold_state, binning_state]
        .iter()
        .cycle()
        .take(2000)
    {
        let mut bad = st.clone();
        let i = r.random_range(0..bad.len());
        bad[i] = r.random();
        let _ = neurokernels::state::fuzz_restore(&bad);
        let len = r.random_range(0..64);
        let junk: Vec<u8> = (0..len).map(|_| r.random()).collect();
        assert!(neurokernels::state::fuzz_restore(&junk).is_err());
    }
}

/// Noise of unit scale with negative spikes (−8, 5 samples long) every ~97 samples per
/// channel, and one spike on every channel straddling each of `open_at` (so a peak window is
/// open when the stream is saved there).
fn spiky(n: usize, nc: usize, seed: u64, open_at: &[usize]) -> Array2<f32> {
    let mut x = signal(n, nc, seed);
    let mut r = rng(seed + 100);
    for c in 0..nc {
        let mut t = r.random_range(10..90);
        let mut starts: Vec<usize> = open_at.iter().map(|&a| a - 2).collect();
        while t + 5 < n {
            starts.push(t);
            t += r.random_range(60..140);
        }
        for t0 in starts {
            for v in x.slice_mut(s![t0..(t0 + 5).min(n), c]) {
                *v = -8.0 + 0.5 * *v;
            }
        }
    }
    x
}

/// Peak mode with every option, a refractory period and a stream not starting at 0; and
/// the same with auto-scaling (τ·fs = 300).
fn threshold_settings() -> [ThresholdSettings; 2] {
    let peak = ThresholdSettings {
        threshold: -3.5,
        refrac_dur: 0.002,
        max_peak_dur: 0.001,
        min_peak_dur: 0.0001,
        align_on_peak: true,
        return_peak_val: true,
        first_sample: 5_000,
        ..Default::default()
    };
    let auto = ThresholdSettings {
        auto_scale_tau: 0.015,
        ..peak
    };
    [peak, auto]
}

fn detector(engine: &Engine, settings: ThresholdSettings) -> ThresholdCrossing {
    match ThresholdCrossing::new(engine, settings, 20_000.0) {
        Ok(t) => t,
        Err(e) => panic!("threshold crossing: {e}"),
    }
}

/// The events of `x` in two chunks split at `at` (those emitted by each), and the state
/// saved between them.
fn detect_split(
    t: &mut ThresholdCrossing,
    x: &Array2<f32>,
    at: usize,
) -> (Vec<Event>, Vec<Event>, Vec<u8>) {
    let a = t.process(x.slice(s![..at, ..])).expect("first half");
    let saved = t.save_state().expect("save");
    let b = t.process(x.slice(s![at.., ..])).expect("second half");
    (a, b, saved)
}

/// Saved in the middle of a stream (with peak windows open at the save point), restored into
/// a new operator on either engine: the second chunk gives exactly the uninterrupted
/// stream's events (auto-scaling too: on this zero-mean data no z-score lies near the
/// threshold). Without auto-scaling both engines save the same bytes.
#[test]
fn threshold_resume_matches_uninterrupted_stream() {
    let splits = [700, 1234, 2001];
    let x = spiky(3000, 70, 7, &splits);
    for settings in threshold_settings() {
        for at in splits {
            let runs: Vec<_> = engines()
                .into_iter()
                .map(|(name, e)| {
                    let run = detect_split(&mut detector(&e, settings), &x, at);
                    (name, e, run)
                })
                .collect();
            if settings.auto_scale_tau == 0.0 {
                assert_eq!(
                    runs[0].2 .2, runs[1].2 .2,
                    "engines save other bytes at {at}"
                );
            }
            for (from_name, _, (_, _, st)) in &runs {
                for (to_name, to_engine, (a, b, _)) in &runs {
                    assert!(!a.is_empty() && !b.is_empty());
                    let mut t = detector(to_engine, settings);
                    t.restore_state(st).expect("restore");
                    assert_eq!(t.position(), settings.first_sample + at as u64);
                    let tail = t.process(x.slice(s![at.., ..])).expect("resumed");
                    // The held peaks straddling the split are emitted by the second chunk.
                    let split = settings.first_sample + at as u64;
                    assert!(b.iter().any(|e| e.sample < split), "no open event at {at}");
                    assert_eq!(&tail, b, "{from_name} -> {to_name} at {at}: {settings:?}");
                }
            }
        }
    }
}

/// A state of other settings (threshold, or a threshold vector) is refused; truncated,
/// bit-flipped and random bytes are refused; the operator's state is unchanged throughout.
#[test]
fn threshold_refuses_other_settings_and_corrupt_bytes_state_unchanged() {
    let x = spiky(800, 5, 8, &[400]);
    let [settings, _] = threshold_settings();
    for (name, e) in engines() {
        let (_, _, st) = detect_split(&mut detector(&e, settings), &x, 400);
        let other = ThresholdSettings {
            threshold: -3.0,
            ..settings
        };
        assert!(
            matches!(detector(&e, other).restore_state(&st), Err(Error::State(_))),
            "{name}"
        );
        let mut vector = ThresholdCrossing::with_thresholds(&e, settings, 20_000.0, vec![-3.5; 5])
            .expect("vector");
        assert!(
            matches!(vector.restore_state(&st), Err(Error::State(_))),
            "{name}"
        );
        let mut t = detector(&e, settings);
        let restored = assert_refuses_corrupt(name, &mut t, &st, 9);
        assert_eq!(restored, st, "{name}: restore then save changes the bytes");
        assert_eq!(t.position(), settings.first_sample + 400);
    }
}

/// A sparse raster: about 1 sample in 40 nonzero, values in (0.5, 2).
fn raster(n: usize, nc: usize, seed: u64) -> Array2<f32> {
    let mut r = rng(seed);
    Array2::from_shape_fn((n, nc), |_| {
        if r.random_range(0..40) == 0 {
            r.random_range(0.5f32..2.0)
        } else {
            0.0
        }
    })
}

/// Every kernel and aggregation, weighted and not, with bins of non-integer length in
/// samples, a nonzero `t0` and `first_sample`.
fn binning_settings() -> Vec<BinningSettings> {
    let base = BinningSettings {
        bin_duration: 0.0157,
        t0: 1.5,
        first_sample: 777,
        ..Default::default()
    };
    let mut out = Vec::new();
    for kernel in [
        Kernel::Count,
        Kernel::Exponential { tau: 0.02 },
        Kernel::Alpha { tau: 0.01 },
    ] {
        for aggregation in [
            Aggregation::Last,
            Aggregation::Mean,
            Aggregation::Sum,
            Aggregation::Max,
        ] {
            for scale_by_value in [false, true] {
                out.push(BinningSettings {
                    kernel,
                    aggregation,
                    scale_by_value,
                    rate_normalize: scale_by_value,
                    ..base
                });
            }
        }
    }
    out
}

fn binner(engine: &Engine, settings: BinningSettings) -> BinnedActivation {
    match BinnedActivation::new(engine, settings, 30_000.0) {
        Ok(b) => b,
        Err(e) => panic!("binning: {e}"),
    }
}

/// The bins of `x` (dense) in two chunks split at `at` (those emitted by the second), and
/// the state saved between them.
fn bin_split(b: &mut BinnedActivation, x: &Array2<f32>, at: usize) -> (Binned, Vec<u8>) {
    b.process_dense(x.slice(s![..at, ..])).expect("first half");
    let saved = b.save_state().expect("save");
    let tail = b.process_dense(x.slice(s![at.., ..])).expect("second half");
    (tail, saved)
}

/// Saved mid-bin in the middle of a stream, restored into a new operator: the bins of the
/// rest of the stream are the uninterrupted stream's — bit for bit on the same engine; on the
/// other engine with the same bin indices and timestamps, integer counts exact, and values
/// within the module's bound (2·10⁻⁵ of the bin's largest value). Sparse events resume
/// the same way.
#[test]
fn binning_resume_matches_uninterrupted_stream() {
    let x = raster(4000, 6, 11);
    for settings in binning_settings() {
        for at in [1000, 2345] {
            let runs: Vec<_> = engines()
                .into_iter()
                .map(|(name, e)| {
                    let run = bin_split(&mut binner(&e, settings), &x, at);
                    (name, e, run)
                })
                .collect();
            for (from_name, from_engine, (_, st)) in &runs {
                for (to_name, to_engine, (want, _)) in &runs {
                    let what = format!("{from_name} -> {to_name} at {at}: {settings:?}");
                    let mut b = binner(to_engine, settings);
                    b.restore_state(st).expect("restore");
                    assert_eq!(b.position(), settings.first_sample + at as u64);
                    let got = b.process_dense(x.slice(s![at.., ..])).expect("resumed");
                    assert!(want.values.nrows() > 3, "{what}");
                    if from_engine.is_gpu() == to_engine.is_gpu()
                        || (settings.kernel == Kernel::Count && !settings.scale_by_value)
                    {
                        assert_eq!(&got, want, "{what}");
                        continue;
                    }
                    assert_eq!(got.first_bin, want.first_bin, "{what}");
                    assert_eq!(got.timestamps, want.timestamps, "{what}");
                    for (g, w) in got.values.rows().into_iter().zip(want.values.rows()) {
                        let top = w.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                        for (a, b) in g.iter().zip(w.iter()) {
                            assert!((a - b).abs() <= 2e-5 * top, "{what}: {a} vs {b}");
                        }
                    }
                }
            }
        }
    }
    // Sparse events: the same stream as events, saved and restored on each engine.
    let settings = BinningSettings {
        kernel: Kernel::Exponential { tau: 0.02 },
        aggregation: Aggregation::Sum,
        ..BinningSettings::default()
    };
    let events: Vec<Event> = x
        .indexed_iter()
        .filter(|(_, v)| **v != 0.0)
        .map(|((t, c), v)| Event {
            sample: t as u64,
            channel: c as u32,
            value: *v,
        })
        .collect();
    let at = 1500;
    let (head, tail): (Vec<Event>, Vec<Event>) = events.iter().partition(|e| e.sample < at as u64);
    for (name, e) in engines() {
        let mut whole = binner(&e, settings);
        whole.process_events(&head, at, 6).expect("head");
        let saved = whole.save_state().expect("save");
        let want = whole.process_events(&tail, 4000 - at, 6).expect("tail");
        let mut b = binner(&e, settings);
        b.restore_state(&saved).expect("restore");
        let got = b.process_events(&tail, 4000 - at, 6).expect("resumed");
        assert_eq!(got, want, "{name}: events");
    }
}

/// A state of other settings is refused; truncated, bit-flipped and random bytes are
/// refused; the operator's state is unchanged throughout.
#[test]
fn binning_refuses_other_settings_and_corrupt_bytes_state_unchanged() {
    let x = raster(900, 4, 12);
    let settings = binning_settings()[11];
    for (name, e) in engines() {
        let (_, st) = bin_split(&mut binner(&e, settings), &x, 500);
        let other = BinningSettings {
            bin_duration: 0.02,
            ..settings
        };
        assert!(
            matches!(binner(&e, other).restore_state(&st), Err(Error::State(_))),
            "{name}"
        );
        let mut b = binner(&e, settings);
        let restored = assert_refuses_corrupt(name, &mut b, &st, 13);
        assert_eq!(restored, st, "{name}: restore then save changes the bytes");
        assert_eq!(b.position(), settings.first_sample + 500);
    }
}

/// Restores `st` into `op`, then checks that every one of `bad` is refused with
/// [`Error::State`] and leaves `op` saving `st` again.
fn assert_refuses_forged(name: &str, op: &mut impl Saves, st: &[u8], bad: &[Vec<u8>]) {
    op.restore(st).expect("restore");
    for (i, b) in bad.iter().enumerate() {
        assert!(
            matches!(op.restore(b), Err(Error::State(_))),
            "{name}: forged state {i} accepted"
        );
    }
    assert_eq!(op.save(), st, "{name}: state changed");
}

/// Fields after the 18-byte header: threshold crossing (channels, position, then 7 per
/// channel: flags, run, peak offset, peak value, last event, mean, variance) and binning
/// (channels, samples consumed, bins emitted, then E of each channel...). Intact bytes whose
/// fields are inconsistent are refused with [`Error::State`], the operator unchanged.
#[test]
fn inconsistent_fields_are_refused_state_unchanged() {
    const F: usize = 18;
    let x = spiky(800, 5, 15, &[400]);
    let [settings, _] = threshold_settings();
    let raster = raster(900, 4, 16);
    let bin_settings = binning_settings()[11];
    for (name, e) in engines() {
        let (_, _, st) = detect_split(&mut detector(&e, settings), &x, 400);
        let ch0 = F + 16;
        let bad = [
            forged(&st, F, 4),                          // other channel count
            forged(&st, F + 8, 0),                      // before the stream's first sample
            forged(&st, ch0, 0xff),                     // unknown flag bits
            forged(&st, ch0, 2),                        // an open event without its run
            forged(&st, ch0 + 40, f64::NAN.to_bits()),  // NaN running mean
            forged(&st, ch0 + 48, (-1.0f64).to_bits()), // negative variance
        ];
        assert_refuses_forged(name, &mut detector(&e, settings), &st, &bad);

        let (_, st) = bin_split(&mut binner(&e, bin_settings), &raster, 500);
        let bad = [
            forged(&st, F + 8, 5000),                     // past the open bin
            forged(&st, F + 16, 0),                       // bins emitted disagree
            forged(&st, F + 32, f64::INFINITY.to_bits()), // infinite E
        ];
        assert_refuses_forged(name, &mut binner(&e, bin_settings), &st, &bad);
    }
}
