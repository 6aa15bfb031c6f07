//! The chain's saved state (`Chain::save_state`, `Chain::resume`, `Chain::restore_state`): a
//! stream saved mid-way and resumed on a new chain (without calibrating again) gives the
//! uninterrupted stream's events and bins — bit for bit on the same engine, and equal on the
//! other engine for data whose crossings are far from the thresholds (as two uninterrupted
//! chains on the two engines are, `tests/chain.rs`); a state of other settings, sample rate
//! or channel count, corrupted bytes and intact bytes with inconsistent fields are refused
//! with the chain unchanged.
//!
//! GPU tests never skip: without an adapter they fail.

mod support;

use ndarray::{concatenate, s, Array2, ArrayView2, Axis};
use neurokernels::chain::{Chain, ChainSettings, ReferenceMode, ThresholdRule};
use neurokernels::{Error, Event, LrrSettings};
use support::{corrupted_states, engines, forged, recording};

const FS: f64 = 30_000.0;
const C: usize = 9;

fn settings(reference: ReferenceMode) -> ChainSettings {
    ChainSettings {
        reference,
        lrr: LrrSettings {
            channel_clusters: Some(vec![(0..4).collect(), (4..C).collect()]),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Rows `from..to` of `x` through `chain` in chunks of `len`: events and bins.
fn run(chain: &mut Chain, x: ArrayView2<'_, f32>, len: usize) -> (Vec<Event>, Array2<f32>) {
    let (mut events, mut bins) = (Vec::new(), Array2::<f32>::zeros((0, x.ncols())));
    let mut at = 0;
    while at < x.nrows() {
        let n = len.min(x.nrows() - at);
        let out = chain.process(x.slice(s![at..at + n, ..])).expect("chunk");
        events.extend(out.events);
        bins = concatenate![Axis(0), bins, out.bins.values];
        at += n;
    }
    (events, bins)
}

fn keys(e: &[Event]) -> Vec<(u64, u32)> {
    e.iter().map(|e| (e.sample, e.channel)).collect()
}

#[test]
fn resume_matches_uninterrupted_stream() {
    let n = 12_000;
    let at = 5_300;
    let x = recording(7, n, C);
    let cal = x.slice(s![..5_000, ..]);
    for reference in [ReferenceMode::Lrr, ReferenceMode::Car, ReferenceMode::None] {
        let st = settings(reference);
        // Per engine: the uninterrupted tail, the state saved before any chunk, the state
        // saved at `at`, and the calibration.
        let runs: Vec<_> = engines()
            .into_iter()
            .map(|(name, e)| {
                let mut chain = Chain::calibrate(&e, st.clone(), FS, cal, 100).expect("calibrate");
                let fresh = chain.save_state().expect("save fresh");
                let head = run(&mut chain, x.slice(s![..at, ..]), 700);
                let saved = chain.save_state().expect("save");
                let tail = run(&mut chain, x.slice(s![at.., ..]), 700);
                let whole = (
                    [head.0, tail.0.clone()].concat(),
                    concatenate![Axis(0), head.1, tail.1],
                );
                (
                    name,
                    e,
                    fresh,
                    saved,
                    tail,
                    whole,
                    chain.calibration().clone(),
                )
            })
            .collect();
        assert!(runs[0].4 .0.len() > 20, "{reference:?}: too few events");
        for (from, _, fresh, saved, _, _, cal_from) in &runs {
            for (to, e, _, _, tail, whole, _) in &runs {
                let what = format!("{reference:?} {from} → {to}");
                let mut r = Chain::resume(e, st.clone(), FS, C, saved).expect("resume");
                assert_eq!(r.calibration().thresholds, cal_from.thresholds, "{what}");
                assert_eq!(r.calibration().dead_channels, cal_from.dead_channels);
                assert_eq!(r.stage_times().chunks, 8, "{what}: chunks counted");
                // Another chunking after the resume: chunk invariance holds across it.
                let (events, bins) = run(&mut r, x.slice(s![at.., ..]), 333);
                let mut f = Chain::resume(e, st.clone(), FS, C, fresh).expect("resume fresh");
                let (events0, bins0) = run(&mut f, x.view(), 1_000);
                if from == to {
                    assert_eq!(r.calibration(), cal_from, "{what}");
                    assert_eq!(events, tail.0, "{what}");
                    assert_eq!(events0, whole.0, "{what}: from the fresh state");
                } else {
                    assert_eq!(keys(&events), keys(&tail.0), "{what}");
                    assert_eq!(keys(&events0), keys(&whole.0), "{what}: fresh");
                }
                assert_eq!(bins, tail.1, "{what}");
                assert_eq!(bins0, whole.1, "{what}: fresh");
            }
        }
    }
}

#[test]
fn refuses_other_chains_and_corrupt_bytes_chain_unchanged() {
    let n = 9_000;
    let at = 4_000;
    let x = recording(8, n, C);
    let cal = x.slice(s![..4_000, ..]);
    let st = settings(ReferenceMode::Lrr);
    for (name, e) in engines() {
        let mut chain = Chain::calibrate(&e, st.clone(), FS, cal, 0).expect("calibrate");
        run(&mut chain, x.slice(s![..at, ..]), 1_000);
        let saved = chain.save_state().expect("save");
        let want = run(&mut chain, x.slice(s![at.., ..]), 1_000);

        let other = ChainSettings {
            threshold: ThresholdRule::NoiseMultiple(-4.0),
            ..st.clone()
        };
        let refused = |r: Result<Chain, Error>| matches!(r, Err(Error::State(_)));
        assert!(refused(Chain::resume(&e, other, FS, C, &saved)), "{name}");
        let car = settings(ReferenceMode::Car);
        assert!(refused(Chain::resume(&e, car, FS, C, &saved)), "{name}");
        assert!(
            refused(Chain::resume(&e, st.clone(), 2e4, C, &saved)),
            "{name}"
        );
        assert!(
            refused(Chain::resume(&e, st.clone(), FS, C - 1, &saved)),
            "{name}"
        );
        let profiled = ChainSettings {
            profile_stages: true,
            ..st.clone()
        };
        assert!(Chain::resume(&e, profiled, FS, C, &saved).is_ok(), "{name}");

        // Fields after the 18-byte header: first sample, chunks, window length, noise (a
        // length, then C values), thresholds (likewise), dead channels, the stages' states.
        let noise = 18 + 32;
        let thresholds = noise + 8 * C + 8;
        let mut bad = corrupted_states(&saved, 21);
        bad.extend([
            forged(&saved, 18, 5),                                // other first sample
            forged(&saved, 34, 0),                                // empty window
            forged(&saved, noise, f64::NAN.to_bits()),            // NaN noise
            forged(&saved, noise, (-1.0f64).to_bits()),           // negative noise
            forged(&saved, thresholds, 0),                        // zero threshold
            forged(&saved, thresholds, 0.1f64.to_bits()),         // not an f32
            forged(&saved, thresholds + 8 * C, C as u64 + 1),     // too many dead channels
            forged(&saved, thresholds + 8 * C + 8, u64::MAX / 2), // a stage state too long
        ]);
        let mut resumed = Chain::calibrate(&e, st.clone(), FS, cal, 0).expect("calibrate");
        resumed.restore_state(&saved).expect("restore");
        for (i, b) in bad.iter().enumerate() {
            assert!(
                matches!(resumed.restore_state(b), Err(Error::State(_))),
                "{name}: corrupted state {i} accepted"
            );
        }
        assert_eq!(resumed.save_state().expect("save"), saved, "{name}");
        assert_eq!(
            run(&mut resumed, x.slice(s![at.., ..]), 1_000),
            want,
            "{name}"
        );
    }
}
