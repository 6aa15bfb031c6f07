//! Settings at the edge of their types (`usize::MAX` sizes, `u32::MAX` shifts, bins far
//! shorter than a sample, peak windows of 10³⁰ s, huge filter orders, outputs larger than
//! the address space): each public entry point returns a typed error (or a correct result)
//! and neither panics nor aborts on an allocation it cannot have. Run on the CPU engine and
//! the GPU engine.
//!
//! GPU tests never skip: without an adapter they fail.

mod support;

use ndarray::Array2;
use neurokernels::encoders::{
    AngleEncoder, AngleSettings, LatencyEncoder, LatencySettings, RateEncoder, RateSettings,
    ShiftAugment, ShiftSettings,
};
use neurokernels::glm::{difference_of_gammas, RaisedCosineLogEval};
use neurokernels::simulate::SimSettings;
use neurokernels::{
    butter_sos, BandpassFilter, BinnedActivation, BinningSettings, ClassifierSettings, Engine,
    Error, FilterSettings, Kernel, Lrr, LrrSettings, MaxRateClassifier, ThresholdCrossing,
    ThresholdSettings,
};
use support::engines;

/// `r` is an error of a typed kind (any kind but a panic, which would have failed already).
fn typed<T>(what: &str, r: Result<T, Error>) {
    match r {
        Err(e) => eprintln!("{what}: {e}"),
        Ok(_) => panic!("{what}: accepted"),
    }
}

#[test]
fn huge_sizes_in_glm_helpers_are_errors() {
    typed(
        "difference_of_gammas ws",
        difference_of_gammas(usize::MAX, 0.99, 1.0, 2.0, 1.0, 2.0),
    );
    let mut b = RaisedCosineLogEval::new(usize::MAX);
    typed("raised cosine functions", b.evaluate(&[0.5]));
    b.n_basis_funcs = 5;
    typed("raised cosine window", b.evaluate_on_grid(usize::MAX));
    b.n_basis_funcs = usize::MAX;
    // 2⁴⁵ grid points: 2⁴⁸ bytes, past the 47-bit address space.
    typed("raised cosine window of 2⁴⁵", b.evaluate_on_grid(1 << 45));
}

#[test]
fn huge_encoder_settings_are_errors() {
    let x = Array2::<f32>::from_elem((2, 3), 0.5);
    for (name, e) in engines() {
        let r = RateEncoder::new(&e, RateSettings::new(usize::MAX));
        typed(&format!("{name} rate steps"), r);
        let r = LatencyEncoder::new(&e, LatencySettings::new(usize::MAX));
        typed(&format!("{name} latency steps"), r);
        // 2³² steps × 2¹⁶ features: 2⁴⁸ bytes, past the 47-bit address space whatever the
        // host's overcommit policy.
        let wide = Array2::<f32>::from_elem((256, 256), 0.5);
        let r = RateEncoder::new(&e, RateSettings::new(u32::MAX as usize))
            .and_then(|mut enc| enc.encode(wide.view()));
        typed(&format!("{name} rate output of 2⁴⁸ bytes"), r);
        let angle = AngleSettings {
            neuron_count: usize::MAX,
            min_val: 0.0,
            max_val: 1.0,
        };
        let r = AngleEncoder::new(&e, angle).and_then(|mut enc| enc.encode(x.view()));
        typed(&format!("{name} angle neurons"), r);
        let shift = ShiftSettings {
            max_shift: u32::MAX,
            axes: vec![-1],
            per_sample: true,
            seed: 1,
        };
        match ShiftAugment::new(&e, shift) {
            Ok(mut s) => {
                let y = s
                    .apply(x.view())
                    .expect("a shift beyond the axis is a valid shift");
                assert_eq!(y.shape(), x.shape(), "{name}");
            }
            Err(err) => eprintln!("{name} shift: {err}"),
        }
    }
}

#[test]
fn huge_classifier_and_lrr_settings_are_errors() {
    for (name, e) in engines() {
        for (n, k) in [(usize::MAX, 2), (2, usize::MAX), (1 << 33, 1 << 33)] {
            let r = MaxRateClassifier::new(&e, ClassifierSettings::new(n, k));
            typed(&format!("{name} classifier {n}×{k}"), r);
        }
        let x = Array2::<f32>::from_elem((4, 3), 1.0);
        let lrr = LrrSettings {
            channel_clusters: Some(vec![vec![0, usize::MAX]]),
            ..Default::default()
        };
        let r = Lrr::new(&e, lrr).and_then(|mut l| l.partial_fit(x.view()));
        typed(&format!("{name} LRR cluster index"), r);
    }
}

#[test]
fn bins_shorter_than_a_sample_and_endless_peaks_are_handled() {
    let x = Array2::<f32>::from_elem((10, 2), 1.0);
    for (name, e) in engines() {
        for bin_duration in [1e-300, f64::MIN_POSITIVE, 1e-12] {
            let st = BinningSettings {
                kernel: Kernel::Count,
                bin_duration,
                ..Default::default()
            };
            let r =
                BinnedActivation::new(&e, st, 30_000.0).and_then(|mut b| b.process_dense(x.view()));
            typed(&format!("{name} bin of {bin_duration} s"), r);
        }
        for fs in [1e300, f64::MAX] {
            let r = BinnedActivation::new(&e, BinningSettings::default(), fs)
                .and_then(|mut b| b.process_dense(x.view()));
            typed(&format!("{name} binning at {fs} Hz"), r);
        }
        for (refrac, peak) in [(1e30, 0.0), (0.0, 1e30), (f64::MAX, f64::MAX)] {
            let st = ThresholdSettings {
                threshold: 0.5,
                refrac_dur: refrac,
                max_peak_dur: peak,
                align_on_peak: peak > 0.0,
                ..Default::default()
            };
            match ThresholdCrossing::new(&e, st, 30_000.0) {
                Ok(mut d) => {
                    let ev = d
                        .process(x.view())
                        .expect("a long window is a valid setting");
                    eprintln!(
                        "{name} refractory {refrac} peak {peak}: {} events",
                        ev.len()
                    );
                }
                Err(err) => eprintln!("{name} refractory {refrac} peak {peak}: {err}"),
            }
        }
    }
}

#[test]
fn huge_filter_orders_are_errors() {
    typed(
        "butter_sos order",
        butter_sos(usize::MAX, 300.0, 3000.0, 30_000.0),
    );
    typed(
        "butter_sos order 2³²",
        butter_sos(1 << 32, 300.0, 3000.0, 30_000.0),
    );
    for (name, e) in engines() {
        let st = FilterSettings {
            order: usize::MAX,
            ..Default::default()
        };
        typed(
            &format!("{name} filter order"),
            BandpassFilter::new(&e, st, 30_000.0),
        );
    }
}

#[test]
fn huge_simulations_are_errors() {
    let chain = neurokernels::chain::ChainSettings::default();
    for (what, st) in [
        (
            "channels",
            SimSettings {
                channels: usize::MAX,
                ..Default::default()
            },
        ),
        (
            "trials",
            SimSettings {
                trials: usize::MAX,
                ..Default::default()
            },
        ),
        (
            "seconds",
            SimSettings {
                trial_seconds: 1e30,
                ..Default::default()
            },
        ),
        (
            "features",
            SimSettings {
                features: usize::MAX,
                ..Default::default()
            },
        ),
    ] {
        typed(
            what,
            neurokernels::simulate::run(&Engine::cpu(), &st, chain.clone()),
        );
    }
}
