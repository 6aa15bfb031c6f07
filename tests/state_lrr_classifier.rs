//! Saved LRR and max-rate classifier state (`save_state` / `restore_state`): a stream of
//! fit + transform (LRR) or regress + update (classifier) chunks, saved in the middle and
//! restored into a new operator, gives the uninterrupted stream's output — bit-for-bit on the
//! same engine, within the engine-parity bound (relative, Frobenius: 1e-4 for LRR as in
//! `tests/lrr.rs`, 1e-5 for the classifier's logits) on the other; a state of other settings,
//! truncated, bit-flipped or random bytes are refused with the operator unchanged.
//!
//! GPU tests never skip: without an adapter they fail.

mod support;

use support::{corrupted_states, engines, rng};

use ndarray::{s, Array2};
use neurokernels::{ClassifierSettings, Engine, Error, Lrr, LrrSettings, MaxRateClassifier};
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

/// One engine's run: its name, the engine, the uninterrupted output and the state saved at
/// the split.
type Run = (&'static str, Engine, Array2<f32>, Vec<u8>);

/// Restores every run's state on every engine (`resume` restores and streams the rest):
/// bit-for-bit the uninterrupted output from row `from` on on the same engine, within
/// `bound` (relative, Frobenius) across engines.
fn check_resumed(
    runs: &[Run],
    from: usize,
    bound: f64,
    resume: impl Fn(&Engine, &[u8]) -> Array2<f32>,
) {
    for (from_name, from_engine, _, st) in runs {
        for (to_name, to_engine, whole, _) in runs {
            let tail = resume(to_engine, st);
            let want = whole.slice(s![from.., ..]).to_owned();
            if from_engine.is_gpu() == to_engine.is_gpu() {
                assert_eq!(
                    tail, want,
                    "{from_name} → {to_name}: resumed output differs"
                );
            } else {
                let e = rel_err(&tail, &want);
                eprintln!("{from_name} → {to_name}: relative error {e:e}");
                assert!(e < bound, "{from_name} → {to_name}: {e:e}");
            }
        }
    }
}

#[test]
fn lrr_resume_matches_uninterrupted_stream() {
    let x = signal(1200, 8, 1);
    // Saved after 500 samples: 100 since the last solve, the next due at 750.
    let at = 500;
    let runs: Vec<Run> = engines()
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
    check_resumed(&runs, at, LRR_BOUND, |e, st| {
        let mut g = lrr(e, settings());
        g.restore_state(st).expect("restore");
        assert_eq!(g.n_samples(), at as u64);
        stream(&mut g, &x, at, x.nrows())
    });
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

/// Engine parity of the classifier's logits over a short stream (relative, Frobenius).
const CLASSIFIER_BOUND: f64 = 1e-5;

fn classifier(engine: &Engine, decay: f64) -> MaxRateClassifier {
    let st = ClassifierSettings {
        decay,
        ..ClassifierSettings::new(40, 4)
    };
    match MaxRateClassifier::new(engine, st) {
        Ok(c) => c,
        Err(e) => panic!("classifier: {e}"),
    }
}

/// Batches of 16 samples: rates with a class-dependent boost, and their labels.
fn batches(n: usize, seed: u64) -> Vec<(Array2<f32>, Vec<usize>)> {
    let mut r = rng(seed);
    (0..n)
        .map(|_| {
            let labels: Vec<usize> = (0..16).map(|_| r.random_range(0..4)).collect();
            let x = Array2::from_shape_fn((16, 40), |(b, i)| {
                r.random_range(0.0f32..1.0) + if i % 4 == labels[b] { 1.0 } else { 0.0 }
            });
            (x, labels)
        })
        .collect()
}

/// Regresses then updates each batch; returns the logits.
fn classify_stream(c: &mut MaxRateClassifier, bs: &[(Array2<f32>, Vec<usize>)]) -> Array2<f32> {
    let out: Vec<Array2<f32>> = bs
        .iter()
        .map(|(x, l)| {
            let y = c.regress(x.view()).expect("regress");
            c.update(x.view(), l).expect("update");
            y
        })
        .collect();
    let views: Vec<_> = out.iter().map(|a| a.view()).collect();
    ndarray::concatenate(ndarray::Axis(0), &views).expect("concatenate")
}

#[test]
fn classifier_resume_matches_uninterrupted_stream() {
    let bs = batches(12, 4);
    let at = 5;
    let runs: Vec<Run> = engines()
        .into_iter()
        .map(|(name, e)| {
            let mut c = classifier(&e, 0.05);
            let a = classify_stream(&mut c, &bs[..at]);
            let saved = c.save_state().expect("save");
            let b = classify_stream(&mut c, &bs[at..]);
            (
                name,
                e,
                ndarray::concatenate![ndarray::Axis(0), a, b],
                saved,
            )
        })
        .collect();
    check_resumed(&runs, at * 16, CLASSIFIER_BOUND, |e, st| {
        let mut g = classifier(e, 0.05);
        g.restore_state(st).expect("restore");
        classify_stream(&mut g, &bs[at..])
    });
}

#[test]
fn classifier_refuses_other_settings_and_corrupt_bytes_state_unchanged() {
    let bs = batches(4, 5);
    for (name, e) in engines() {
        let mut c = classifier(&e, 0.05);
        classify_stream(&mut c, &bs[..2]);
        let st = c.save_state().expect("save");
        let others = [
            classifier(&e, 0.1),
            MaxRateClassifier::new(&e, ClassifierSettings::new(40, 5)).expect("c"),
            MaxRateClassifier::new(&e, ClassifierSettings::new(41, 4)).expect("c"),
        ];
        for mut o in others {
            assert!(
                matches!(o.restore_state(&st), Err(Error::State(_))),
                "{name}"
            );
        }
        let mut g = classifier(&e, 0.05);
        classify_stream(&mut g, &bs[2..]);
        let before = g.save_state().expect("save");
        for (i, bad) in corrupted_states(&st, 6).iter().enumerate() {
            assert!(
                matches!(g.restore_state(bad), Err(Error::State(_))),
                "{name}: corrupted state {i} accepted"
            );
        }
        assert_eq!(g.save_state().expect("save"), before, "{name}: changed");
    }
}

/// The fuzz entry takes LRR and classifier states (of its default shapes) and their
/// corruptions without panicking; only the valid states restore.
#[test]
fn fuzz_entry_takes_lrr_and_classifier_states() {
    let e = Engine::cpu();
    let mut op = lrr(&e, LrrSettings::default());
    stream(&mut op, &signal(200, 3, 7), 0, 200);
    let mut c = MaxRateClassifier::new(&e, ClassifierSettings::new(16, 4)).expect("c");
    c.update(Array2::<f32>::ones((2, 16)).view(), &[1, 3])
        .expect("update");
    for st in [
        op.save_state().expect("save"),
        c.save_state().expect("save"),
    ] {
        assert!(neurokernels::state::fuzz_restore(&st).is_ok());
        for bad in corrupted_states(&st, 8) {
            assert!(neurokernels::state::fuzz_restore(&bad).is_err());
        }
    }
}
