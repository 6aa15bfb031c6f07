//! The recurrent GLM's saved state (`RecurrentGlm::save_state` / `restore_state`): a run
//! saved mid-way and restored into a new GLM of the same model gives the uninterrupted run's
//! spikes and rates — bit for bit on the same engine (Poisson, expected-value and
//! teacher-forced runs, several trials, a window of 13 steps), and rates within the module's
//! GPU-against-CPU bound on the other engine; an unstarted state round-trips; a state of
//! another model, corrupted bytes and intact bytes with inconsistent fields are refused with
//! the GLM unchanged (every truncation among them); a ring value beyond `f32` is refused by
//! the GPU engine only; a step counter cannot pass 2⁶³.
//!
//! GPU tests never skip: without an adapter they fail.

mod support;

use ndarray::{s, Array1, Array2, Array3, ArrayD};
use neurokernels::glm::{GlmOutput, Link, RecurrentGlm, Sampling};
use neurokernels::{Engine, Error};
use rand::Rng;
use support::{corrupted_states, engines, forged, rng};

const N: usize = 7;
const WS: usize = 13;
const NB: usize = 3;
const NF: usize = 2;
const T: usize = 300;
const AT: usize = 121;
const SEEDS: [u64; 3] = [11, 12, 13];
/// The module's GPU-against-CPU bound for short rollouts (relative; measured 3.4e-7 here).
const BOUND: f64 = 1e-5;

/// A weakly coupled network (rates stay near their drive), its initial window and input.
struct Net {
    coef: Array3<f64>,
    ff_coef: Array2<f64>,
    intercepts: Array1<f64>,
    basis: Array2<f64>,
    init: Array2<f64>,
    ff: Array3<f64>,
    history: Array3<f64>,
}

fn net(seed: u64) -> Net {
    let mut r = rng(seed);
    Net {
        coef: Array3::from_shape_fn((N, N, NB), |_| 0.05 * r.random_range(-1.0..1.0)),
        ff_coef: Array2::from_shape_fn((N, NF), |_| r.random_range(-0.5..0.5)),
        intercepts: Array1::from_shape_fn(N, |_| r.random_range(-1.0..0.5)),
        basis: Array2::from_shape_fn((WS, NB), |(w, b)| {
            (-(w as f64) / (2.0 + 3.0 * b as f64)).exp()
        }),
        init: Array2::from_shape_fn((WS, N), |_| r.random_range(0..3) as f64),
        ff: Array3::from_shape_fn((T, N, NF), |_| r.random_range(-1.0..1.0)),
        history: Array3::from_shape_fn((T, SEEDS.len(), N), |_| r.random_range(0..2) as f64),
    }
}

fn glm(e: &Engine, n: &Net) -> RecurrentGlm {
    RecurrentGlm::new(
        e,
        n.coef.view().into_dyn(),
        n.ff_coef.view().into_dyn(),
        n.intercepts.view().into_dyn(),
        n.basis.view().into_dyn(),
        Link::Softplus,
    )
    .expect("new")
}

/// Steps `from..to`, forced by the history or not.
fn steps(g: &mut RecurrentGlm, n: &Net, from: usize, to: usize, forced: bool) -> GlmOutput {
    let ff = n.ff.slice(s![from..to, .., ..]).into_dyn();
    if forced {
        let h = n.history.slice(s![from..to, .., ..]).into_dyn();
        g.run_forced(ff, h).expect("run forced")
    } else {
        g.run(ff).expect("run")
    }
}

fn started(e: &Engine, n: &Net, sampling: Sampling) -> RecurrentGlm {
    let mut g = glm(e, n);
    g.start(n.init.view().into_dyn(), &SEEDS, sampling)
        .expect("start");
    g
}

/// Largest relative difference, with `floor` under small values.
fn max_rel(a: &ArrayD<f32>, b: &ArrayD<f32>, floor: f64) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y as f64).abs() / (y as f64).abs().max(floor))
        .fold(0.0, f64::max)
}

#[test]
fn resume_matches_uninterrupted_run() {
    let n = net(1);
    for (sampling, forced) in [
        (Sampling::Poisson, false),
        (Sampling::Expected, false),
        (Sampling::Poisson, true),
    ] {
        let runs: Vec<_> = engines()
            .into_iter()
            .map(|(name, e)| {
                let mut g = started(&e, &n, sampling);
                steps(&mut g, &n, 0, AT, forced);
                let st = g.save_state().expect("save");
                let tail = steps(&mut g, &n, AT, T, forced);
                (name, e, st, tail)
            })
            .collect();
        for (from, _, st, from_tail) in &runs {
            for (to, e, _, _) in &runs {
                let what = format!("{sampling:?} forced {forced}: {from} → {to}");
                let mut g = glm(e, &n);
                g.restore_state(st).expect("restore");
                assert_eq!(g.step(), AT as u64, "{what}");
                assert_eq!(g.n_trials(), SEEDS.len(), "{what}");
                // The tail in two calls: chunking across the resume changes nothing.
                let a = steps(&mut g, &n, AT, AT + 50, forced);
                let b = steps(&mut g, &n, AT + 50, T, forced);
                let rates = ndarray::concatenate![ndarray::Axis(0), a.rates, b.rates].into_dyn();
                let spikes = ndarray::concatenate![ndarray::Axis(0), a.spikes, b.spikes].into_dyn();
                if from == to {
                    assert_eq!(rates, from_tail.rates.clone().into_dyn(), "{what}");
                    assert_eq!(spikes, from_tail.spikes.clone().into_dyn(), "{what}");
                } else {
                    // Rates given the same history (forced) or the same expected rollout
                    // agree within the GPU bound; free Poisson runs diverge once one draw
                    // differs, so only their first resumed step is compared.
                    let want = from_tail.rates.clone().into_dyn();
                    let err = match (sampling, forced) {
                        (Sampling::Poisson, false) => max_rel(
                            &rates.slice(s![..1, .., ..]).to_owned().into_dyn(),
                            &want.slice(s![..1, .., ..]).to_owned().into_dyn(),
                            1e-6,
                        ),
                        _ => max_rel(&rates, &want, 1e-6),
                    };
                    assert!(err <= BOUND, "{what}: rates differ by {err:e}");
                }
            }
        }
    }
}

#[test]
fn unstarted_state_round_trips() {
    let n = net(2);
    for (name, e) in engines() {
        let st = glm(&e, &n).save_state().expect("save");
        let mut g = started(&e, &n, Sampling::Expected);
        steps(&mut g, &n, 0, 10, false);
        g.restore_state(&st).expect("restore");
        assert_eq!(g.save_state().expect("save"), st, "{name}");
        assert_eq!((g.step(), g.n_trials()), (0, 0), "{name}");
        assert!(
            matches!(
                g.run(n.ff.slice(s![..3, .., ..]).into_dyn()),
                Err(Error::InvalidSetting { .. })
            ),
            "{name}: an unstarted GLM runs"
        );
    }
}

#[test]
fn refuses_other_models_and_corrupt_bytes_glm_unchanged() {
    let n = net(3);
    for (name, e) in engines() {
        let mut g = started(&e, &n, Sampling::Poisson);
        steps(&mut g, &n, 0, AT, false);
        let st = g.save_state().expect("save");
        let want = steps(&mut g, &n, AT, T, false);

        let mut other = net(3);
        other.coef[[0, 1, 2]] += 1e-12;
        assert!(
            matches!(glm(&e, &other).restore_state(&st), Err(Error::State(_))),
            "{name}: another model's state restored"
        );
        // Fields after the 18-byte header: started, sampling, step, trials, seeds, rings.
        let mut bad = corrupted_states(&st, 31);
        bad.extend((0..st.len()).map(|k| st[..k].to_vec())); // every truncation
        bad.extend([
            forged(&st, 18, 2),                           // started flag out of range
            forged(&st, 26, 2),                           // unknown sampling mode
            forged(&st, 34, (1 << 63) + 1),               // step past 2⁶³
            forged(&st, 42, 0),                           // started with no trials
            forged(&st, 42, 4),                           // more trials than saved
            forged(&st, 50 + 24 + 8, f64::NAN.to_bits()), // NaN ring value
        ]);
        let mut r = glm(&e, &n);
        r.restore_state(&st).expect("restore");
        for (i, b) in bad.iter().enumerate() {
            assert!(
                matches!(r.restore_state(b), Err(Error::State(_))),
                "{name}: corrupted state {i} accepted"
            );
        }
        assert_eq!(r.save_state().expect("save"), st, "{name}: state changed");
        let got = steps(&mut r, &n, AT, T, false);
        assert_eq!(got.spikes, want.spikes, "{name}");
        assert_eq!(got.rates, want.rates, "{name}");
    }
}

#[test]
fn a_step_counter_past_two_to_the_63_is_an_error() {
    let n = net(4);
    for (name, e) in engines() {
        let mut g = started(&e, &n, Sampling::Expected);
        let st = g.save_state().expect("save");
        let near = forged(&st, 34, (1 << 63) - 2);
        g.restore_state(&near).expect("restore near the end");
        steps(&mut g, &n, 0, 2, false);
        assert!(
            matches!(
                g.run(n.ff.slice(s![..1, .., ..]).into_dyn()),
                Err(Error::PositionOverflow(_))
            ),
            "{name}"
        );
        assert_eq!(g.step(), 1 << 63, "{name}");
    }
}

#[test]
fn a_ring_value_beyond_f32_is_refused_by_the_gpu_only() {
    let n = net(5);
    let mut c = started(&Engine::cpu(), &n, Sampling::Expected);
    steps(&mut c, &n, 0, AT, false);
    let huge = forged(
        &c.save_state().expect("save"),
        50 + 24 + 8,
        1e300f64.to_bits(),
    );
    let mut g = started(&support::gpu(), &n, Sampling::Expected);
    steps(&mut g, &n, 0, 20, false);
    let before = g.save_state().expect("save");
    assert!(matches!(g.restore_state(&huge), Err(Error::State(_))));
    assert_eq!(g.save_state().expect("save"), before, "gpu: state changed");
    let mut cpu = glm(&Engine::cpu(), &n);
    cpu.restore_state(&huge)
        .expect("the CPU's f64 ring holds 1e300");
}
