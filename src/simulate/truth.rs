//! The ground truth of the closed-loop simulation: stimulus classes → rate encoder → recurrent
//! Poisson GLM → spike onsets in samples.

use ndarray::{Array2, Array3, Array4, Axis};

use super::SimSettings;
use crate::encoders::{RateEncoder, RateSettings};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::glm::{simulate_recurrent_batch, Link, RaisedCosineLogEval, Sampling};
use crate::rng::{key_of, philox4x32_10, unit_f32};

/// Philox streams (the counter's last word) of the simulation's draws.
pub(crate) mod stream {
    /// Class order shuffle.
    pub const SHUFFLE: u32 = 0x51_0001;
    /// Class patterns.
    pub const PATTERN: u32 = 0x51_0002;
    /// GLM weights.
    pub const WEIGHTS: u32 = 0x51_0003;
    /// Spike offsets inside their millisecond.
    pub const OFFSETS: u32 = 0x51_0004;
    /// Waveform amplitudes and LFP gains.
    pub const CHANNELS: u32 = 0x51_0005;
    /// Independent noise.
    pub const NOISE: u32 = 0x51_0006;
    /// Cluster-shared noise.
    pub const SHARED: u32 = 0x51_0007;
}

/// A uniform in `[0, 1)` for element `(a, b)` of stream `s`.
pub(crate) fn uniform(seed: u64, s: u32, a: u64, b: u32) -> f32 {
    unit_f32(philox4x32_10([a as u32, (a >> 32) as u32, b, s], key_of(seed))[0])
}

/// What the simulated population did.
#[derive(Debug, Clone)]
pub struct GroundTruth {
    /// Class of each trial, in time order.
    pub labels: Vec<usize>,
    /// `(classes, features)` stimulus patterns in `[0, 1]`.
    pub patterns: Array2<f32>,
    /// `(steps, neurons)` GLM spike counts per 1 ms step.
    pub glm_spikes: Array2<f32>,
    /// Spike onsets `(sample, channel)`, sorted by sample then channel.
    pub onsets: Vec<(u64, u32)>,
    /// Time spent in the encoder and the GLM.
    pub encode_seconds: f64,
    /// Time spent in the GLM.
    pub glm_seconds: f64,
}

/// Fisher–Yates shuffle of equal class shares.
fn class_order(s: &SimSettings) -> Vec<usize> {
    let mut labels: Vec<usize> = (0..s.trials).map(|i| i % s.classes).collect();
    for i in (1..labels.len()).rev() {
        let j = (uniform(s.seed, stream::SHUFFLE, i as u64, 0) as f64 * (i + 1) as f64) as usize;
        labels.swap(i, j.min(i));
    }
    labels
}

/// First sample of 1 ms step `t`.
pub(crate) fn step_start(t: u64, fs: f64) -> u64 {
    (t as f64 * fs / 1000.0).floor() as u64
}

/// Runs the encoder and the GLM and places every spike in samples.
pub(crate) fn ground_truth(engine: &Engine, s: &SimSettings) -> Result<GroundTruth> {
    let (n, f, k) = (s.channels, s.features, s.classes);
    let steps = s.trial_steps();
    let labels = class_order(s);
    let patterns = Array2::from_shape_fn((k, f), |(c, j)| {
        uniform(s.seed, stream::PATTERN, c as u64, j as u32)
    });
    let t0 = std::time::Instant::now();
    let mut encoder = RateEncoder::new(
        engine,
        RateSettings {
            steps,
            max_r: (s.input_rate_hz / 1000.0) as f32,
            seed: s.seed ^ 0xE4C0_DE00,
            time_major: true,
            packed: false,
        },
    )?;
    let inputs = Array2::from_shape_fn((s.trials, f), |(b, j)| patterns[[labels[b], j]]);
    let encoded = encoder.encode(inputs.view())?; // (steps, trials, f)
    let encode_seconds = t0.elapsed().as_secs_f64();

    // The GLM: weak random coupling, self-inhibition over the first milliseconds (a
    // refractory period), baseline rate from the intercept, random feedforward weights.
    let ws = 10;
    let (_, basis) = RaisedCosineLogEval::new(3).evaluate_on_grid(ws)?;
    let w = |a: u64, b: u32| uniform(s.seed, stream::WEIGHTS, a, b) as f64;
    let coupling = Array3::from_shape_fn((n, n, 3), |(i, j, q)| {
        if i == j {
            [-4.0, -1.5, 0.0][q]
        } else {
            (w((i * n + j) as u64, q as u32) - 0.5) * 0.04
        }
    });
    let ff = Array2::from_shape_fn((n, f), |(i, j)| {
        (w(i as u64, 1000 + j as u32) - 0.5) * 2.0 * s.input_gain
    });
    let baseline = s.baseline_hz / 1000.0;
    let intercept = (baseline.exp_m1()).ln(); // softplus⁻¹
    let intercepts = ndarray::Array1::from_elem(n, intercept);
    let mut history = Array2::<f64>::zeros((ws, n));
    let mut glm_spikes = Array2::<f32>::zeros((s.trials * steps, n));
    let t1 = std::time::Instant::now();
    for trial in 0..s.trials {
        let enc = encoded.index_axis(Axis(1), trial); // (steps, f)
        let input = Array4::from_shape_fn((steps, 1, n, f), |(t, _, _, j)| enc[[t, j]] as f64);
        let out = simulate_recurrent_batch(
            engine,
            coupling.view().into_dyn(),
            ff.view().into_dyn(),
            intercepts.view().into_dyn(),
            &[s.seed.wrapping_add(trial as u64)],
            input.view().into_dyn(),
            basis.view().into_dyn(),
            history.view().into_dyn(),
            Link::Softplus,
            Sampling::Poisson,
        )?;
        let sp = out.spikes.index_axis(Axis(1), 0); // (steps, n)
        glm_spikes
            .slice_mut(ndarray::s![trial * steps..(trial + 1) * steps, ..])
            .assign(&sp);
        for r in 0..ws {
            let src = steps as isize - ws as isize + r as isize;
            let row = if src >= 0 {
                sp.row(src as usize).mapv(|v| v as f64)
            } else {
                history.row((ws as isize + src) as usize).to_owned()
            };
            history.row_mut(r).assign(&row);
        }
    }
    let glm_seconds = t1.elapsed().as_secs_f64();
    let onsets = place_spikes(s, &glm_spikes)?;
    Ok(GroundTruth {
        labels,
        patterns,
        glm_spikes,
        onsets,
        encode_seconds,
        glm_seconds,
    })
}

/// Each spike of step `t` starts at a uniformly drawn sample of that millisecond; several
/// spikes of one step are spread at least 0.3 ms apart (at most as many as fit).
fn place_spikes(s: &SimSettings, spikes: &Array2<f32>) -> Result<Vec<(u64, u32)>> {
    let gap = (0.0003 * s.fs).round().max(1.0) as u64;
    let mut onsets = Vec::new();
    for ((t, c), &m) in spikes.indexed_iter() {
        if m <= 0.0 {
            continue;
        }
        if !m.is_finite() {
            return Err(Error::NonFinite {
                what: "GLM spikes",
                sample: t,
                channel: c,
                value: m as f64,
            });
        }
        let (a, b) = (step_start(t as u64, s.fs), step_start(t as u64 + 1, s.fs));
        let span = b - a;
        let fit = (span.saturating_sub(1) / gap + 1).max(1);
        let m = (m as u64).min(fit);
        let free = span - gap * (m - 1);
        let u = uniform(s.seed, stream::OFFSETS, t as u64, c as u32) as f64;
        let first = ((u * free as f64) as u64).min(free - 1);
        for i in 0..m {
            onsets.push((a + first + i * gap, c as u32));
        }
    }
    onsets.sort_unstable();
    Ok(onsets)
}
