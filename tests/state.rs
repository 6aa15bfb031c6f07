//! Saved operator state (`neurokernels::state`): a stream processed in chunks, saved in the
//! middle and restored into a new operator, gives the uninterrupted stream's output —
//! bit-for-bit on the same engine, within the module's bound on the other engine; a state of
//! other settings, truncated, bit-flipped or random bytes are refused with the state unchanged.
//!
//! GPU tests never skip: without an adapter they fail.

mod support;

use support::{engines, rng};

use ndarray::{s, Array2};
use neurokernels::{BandpassFilter, Engine, Error, FilterSettings};
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
        let mut g = filter(&e);
        g.restore_state(&st).expect("restore");
        let before = g.save_state().expect("save");
        let mut r = rng(3);
        for cut in [0, 1, 4, st.len() / 2, st.len() - 1] {
            assert!(
                matches!(g.restore_state(&st[..cut]), Err(Error::State(_))),
                "{name} {cut}"
            );
        }
        for _ in 0..200 {
            let mut bad = st.clone();
            let i = r.random_range(0..bad.len());
            bad[i] ^= 1 << r.random_range(0..8);
            assert!(
                g.restore_state(&bad).is_err(),
                "{name}: flipped byte {i} accepted"
            );
        }
        for _ in 0..200 {
            let len = r.random_range(0..256);
            let junk: Vec<u8> = (0..len).map(|_| r.random()).collect();
            assert!(
                g.restore_state(&junk).is_err(),
                "{name}: random bytes accepted"
            );
        }
        assert_eq!(
            g.save_state().expect("save"),
            before,
            "{name}: state changed"
        );
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
    let (_, st) = run_split(&mut f, &x, 100);
    assert!(neurokernels::state::fuzz_restore(&st).is_ok());
    let mut r = rng(6);
    for cut in 0..st.len() {
        assert!(neurokernels::state::fuzz_restore(&st[..cut]).is_err());
    }
    for _ in 0..2000 {
        let mut bad = st.clone();
        let i = r.random_range(0..bad.len());
        bad[i] = r.random();
        let _ = neurokernels::state::fuzz_restore(&bad);
        let len = r.random_range(0..64);
        let junk: Vec<u8> = (0..len).map(|_| r.random()).collect();
        assert!(neurokernels::state::fuzz_restore(&junk).is_err());
    }
}
