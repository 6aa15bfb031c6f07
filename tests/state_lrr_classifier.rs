//! Saved LRR state (`Lrr::save_state` / `Lrr::restore_state`): a stream of `partial_fit` +
//! `transform` chunks, saved in the middle and restored into a new operator, gives the
//! uninterrupted stream's output — bit-for-bit on the same engine, within the module's
//! engine-parity bound (1e-4 relative, Frobenius) on the other; a state of other settings,
//! truncated, bit-flipped or random bytes are refused with the operator unchanged.
//!
//! GPU tests never skip: without an adapter they fail.

mod support;

use support::{corrupted_states, engines, rng};

use ndarray::{s, Array2};
use neurokernels::{Engine, Error, Lrr, LrrSettings};
use rand::Rng;

/// Engine parity of the LRR output (relative, Frobenius), as in `tests/lrr.rs`.
const LRR_BOUND: f64 = 1e-4;

/// Chunk length of the streams.
const CHUNK: usize = 100;

/// Channels sharing a common component plus independent noise.
fn signal(n: usize, nc: usize, seed: u64) -> Array2<f32> {
    let mut r = rng(seed);
    let mut x = Array2::zeros((n, nc));
    for mut row in x.rows_mut() {
        let common: f32 = r.random_range(-1.0..1.0);
        for v in row.iter_mut() {
            *v = common + 0.5 * r.random_range(-1.0f32..1.0);
        }
    }
    x
}

fn settings() -> LrrSettings {
    LrrSettings {
        channel_clusters: Some(vec![vec![2, 0, 1], vec![3, 4, 5, 6]]),
        ridge_lambda: 0.01,
        update_every: 250,
        ..LrrSettings::default()
    }
}

fn lrr(engine: &Engine, st: LrrSettings) -> Lrr {
    match Lrr::new(engine, st) {
        Ok(l) => l,
        Err(e) => panic!("lrr: {e}"),
    }
}

/// Fits then transforms each chunk of rows `from..to` of `x`; returns the outputs.
fn stream(op: &mut Lrr, x: &Array2<f32>, from: usize, to: usize) -> Array2<f32> {
    let mut out = Vec::new();
    for a in (from..to).step_by(CHUNK) {
        let c = x.slice(s![a..(a + CHUNK).min(to), ..]);
        op.partial_fit(c).expect("partial_fit");
        out.push(op.transform(c).expect("transform"));
    }
    let views: Vec<_> = out.iter().map(|a| a.view()).collect();
    ndarray::concatenate(ndarray::Axis(0), &views).expect("concatenate")
}

fn rel_err(a: &Array2<f32>, b: &Array2<f32>) -> f64 {
    let d: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - *y as f64).powi(2))
        .sum();
    let n: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (d / n.max(1e-300)).sqrt()
}

#[test]
fn lrr_resume_matches_uninterrupted_stream() {
    let x = signal(1200, 8, 1);
    // Saved after 500 samples: 100 since the last solve, the next due at 750.
    let at = 500;
    let runs: Vec<(&str, Engine, Array2<f32>, Vec<u8>)> = engines()
        .into_iter()
        .map(|(name, e)| {
            let mut op = lrr(&e, settings());
            let a = stream(&mut op, &x, 0, at);
            let saved = op.save_state().expect("save");
            let b = stream(&mut op, &x, at, x.nrows());
            let whole = ndarray::concatenate![ndarray::Axis(0), a, b];
            (name, e, whole, saved)
        })
        .collect();
    for (from_name, from_engine, _, st) in &runs {
        for (to_name, to_engine, whole, _) in &runs {
            let mut g = lrr(to_engine, settings());
            g.restore_state(st).expect("restore");
            assert_eq!(g.n_samples(), at as u64, "{from_name} → {to_name}");
            let tail = stream(&mut g, &x, at, x.nrows());
            let want = whole.slice(s![at.., ..]).to_owned();
            if from_engine.is_gpu() == to_engine.is_gpu() {
                assert_eq!(
                    tail, want,
                    "{from_name} → {to_name}: resumed output differs"
                );
            } else {
                let e = rel_err(&tail, &want);
                assert!(e < LRR_BOUND, "{from_name} → {to_name}: {e:e}");
            }
        }
    }
}

/// A saved state of a fresh operator and of one that saw only a NaN chunk restore too.
#[test]
fn lrr_unfitted_state_round_trips() {
    for (name, e) in engines() {
        let mut op = lrr(&e, settings());
        let mut nan = Array2::<f32>::zeros((10, 8));
        nan[[3, 3]] = f32::NAN;
        assert!(!op.partial_fit(nan.view()).expect("nan chunk"));
        let st = op.save_state().expect("save");
        let mut g = lrr(&e, settings());
        g.restore_state(&st).expect("restore");
        assert_eq!(g.skipped_chunks(), 1, "{name}");
        assert!(!g.is_fitted(), "{name}");
        assert_eq!(g.save_state().expect("save"), st, "{name}");
    }
}

#[test]
fn lrr_refuses_other_settings_and_corrupt_bytes_state_unchanged() {
    let x = signal(600, 8, 2);
    for (name, e) in engines() {
        let mut op = lrr(&e, settings());
        stream(&mut op, &x, 0, 300);
        let st = op.save_state().expect("save");
        for other in [
            LrrSettings {
                ridge_lambda: 0.02,
                ..settings()
            },
            LrrSettings {
                update_every: 0,
                ..settings()
            },
            LrrSettings::default(),
        ] {
            let mut o = lrr(&e, other);
            assert!(
                matches!(o.restore_state(&st), Err(Error::State(_))),
                "{name}"
            );
        }
        let mut g = lrr(&e, settings());
        stream(&mut g, &x, 300, 500);
        let before = g.save_state().expect("save");
        for (i, bad) in corrupted_states(&st, 3).iter().enumerate() {
            assert!(
                matches!(g.restore_state(bad), Err(Error::State(_))),
                "{name}: corrupted state {i} accepted"
            );
        }
        assert_eq!(g.save_state().expect("save"), before, "{name}: changed");
    }
}
