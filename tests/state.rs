//! Resume after a crash: an operator's state saved mid-stream and restored into a new
//! operator continues the stream bit for bit on the same engine and within the module's
//! bound on the other; states of other settings and damaged bytes are rejected, never a
//! panic, with the operator unchanged.
//!
//! GPU tests never skip: without an adapter they fail.

mod support;

use support::{engines, rng};

use ndarray::{concatenate, s, Array2, Axis};
use neurokernels::{BandpassFilter, Engine, Error, FilterSettings};
use rand::Rng;

const FS: f64 = 30_000.0;

fn noise(n: usize, nc: usize, seed: u64) -> Array2<f32> {
    let mut r = rng(seed);
    Array2::from_shape_fn((n, nc), |_| r.random_range(-100.0f32..100.0))
}

fn filter(e: &Engine) -> BandpassFilter {
    BandpassFilter::new(e, FilterSettings::default(), FS).unwrap()
}

/// The whole stream in chunks of 97 rows with the state saved after `cut` rows and
/// restored into a new filter on `resume` (`None`: never interrupted).
fn run(first: &Engine, resume: Option<&Engine>, x: &Array2<f32>, cut: usize) -> Array2<f32> {
    let mut f = filter(first);
    let mut out = Vec::new();
    let mut at = 0;
    while at < x.nrows() {
        if at == cut {
            if let Some(e) = resume {
                let bytes = f.save_state().unwrap();
                f = filter(e);
                f.restore_state(&bytes).unwrap();
            }
        }
        let end = (at + 97)
            .min(x.nrows())
            .min(if at < cut { cut } else { usize::MAX });
        out.push(f.process(x.slice(s![at..end, ..])).unwrap());
        at = end;
    }
    let views: Vec<_> = out.iter().map(|a| a.view()).collect();
    concatenate(Axis(0), &views).unwrap()
}

#[test]
fn filter_resumes_bit_for_bit_on_the_same_engine_and_within_bound_on_the_other() {
    let x = noise(1000, 5, 1);
    let rms = (x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / x.len() as f64).sqrt();
    let [(_, cpu), (_, gpu)] = engines();
    for (a, b) in [(&cpu, &gpu), (&gpu, &cpu)] {
        let whole = run(a, None, &x, 400);
        let same = run(a, Some(a), &x, 400);
        assert!(whole
            .iter()
            .zip(&same)
            .all(|(p, q)| p.to_bits() == q.to_bits()));
        let other = run(a, Some(b), &x, 400);
        let err = whole
            .iter()
            .zip(&other)
            .map(|(p, q)| (*p as f64 - *q as f64).abs())
            .fold(0.0, f64::max);
        eprintln!("cross-engine resume: max error {:.3e} × rms", err / rms);
        assert!(err <= 1e-6 * rms, "{err:e}");
    }
}

#[test]
fn filter_rejects_other_settings_and_damaged_states_unchanged() {
    let x = noise(300, 3, 2);
    for (name, e) in engines() {
        let mut f = filter(&e);
        f.process(x.slice(s![..200, ..])).unwrap();
        let good = f.save_state().unwrap();
        let other = BandpassFilter::new(
            &e,
            FilterSettings {
                order: 4,
                ..Default::default()
            },
            FS,
        )
        .unwrap()
        .save_state()
        .unwrap();
        let mut bad = vec![other, good[..good.len() - 1].to_vec(), good[..10].to_vec()];
        for i in (0..good.len() * 8).step_by(37) {
            let mut c = good.clone();
            c[i / 8] ^= 1 << (i % 8);
            bad.push(c);
        }
        let mut r = rng(3);
        for n in [0, 7, 26, 64, good.len()] {
            bad.push((0..n).map(|_| r.random::<u8>()).collect());
        }
        let mut g = filter(&e);
        g.process(x.slice(s![..200, ..])).unwrap();
        for b in &bad {
            assert!(matches!(g.restore_state(b), Err(Error::State(_))), "{name}");
        }
        assert_eq!(g.save_state().unwrap(), good, "{name}: state changed");
        let want = f.process(x.slice(s![200.., ..])).unwrap();
        assert_eq!(g.process(x.slice(s![200.., ..])).unwrap(), want, "{name}");
    }
}
