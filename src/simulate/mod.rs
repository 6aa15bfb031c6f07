//! The closed-loop simulation with ground truth (SPEC §7), the chain's embedded default that
//! needs no data.
//!
//! `K` stimulus classes, each a fixed random pattern over `features` inputs, are shown in
//! trials of `trial_seconds` in a shuffled order with equal shares. Each trial's pattern is
//! rate-encoded per 1 ms step ([`crate::encoders::RateEncoder`], `p = x·input_rate_hz/1000`),
//! and the encoded spikes drive a recurrent Poisson GLM ([`crate::glm`], one neuron per
//! channel, random feedforward weights so that neurons prefer different classes, weak random
//! coupling and a self-inhibiting refractory filter) as its feedforward input. Each GLM spike
//! of a step is written onto its neuron's channel as a 1 ms extracellular waveform starting at
//! a uniformly drawn sample of that millisecond (spikes of one step at least 0.3 ms apart),
//! on top of noise shared within each cluster of `cluster_size` channels (the common
//! reference LRR removes), LFP-like low-frequency noise and independent noise. The recording
//! then goes through the [`Chain`] (band-pass → LRR → threshold → bins), and a
//! [`MaxRateClassifier`] is trained on the first `train_fraction` of the trials (a trial's
//! feature is its binned counts summed over the trial) and tested on the rest.
//!
//! Scores: detection precision and recall against the GLM's spikes (a detection counts if it
//! lies within 1 ms after a true spike's onset on its channel, matched one to one), and
//! classification accuracy against chance `1/K`.
//!
//! Engines: the encoder, the GLM, the synthesis of the recording, the chain and the
//! classifier run on the chosen engine. On the GPU engine each chunk is synthesised on the
//! device ([`Synthesizer::fill_device`]) and fed to [`Chain::process_device`] with no host
//! round trip; the calibration window is synthesised on the host (the CPU twin,
//! [`Synthesizer::chunk`]) on either engine. The GPU
//! and CPU engines draw the same encoder spikes (bit-identical Philox); the GLM's Poisson
//! draws agree except where a rate lies within float error of a sampling threshold, after
//! which the two trajectories differ — so scores, not spikes, are compared across engines.

mod gpu;
mod score;
mod synth;
mod truth;

use std::time::Instant;

use ndarray::{s, Array2};

pub use score::{score_detections, DetectionScore};
pub use synth::Synthesizer;
pub use truth::GroundTruth;

use crate::chain::{percentiles, time_row, Chain, ChainSettings, StageTimes};
use crate::classifier::{ClassifierSettings, MaxRateClassifier};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::events::Event;

/// Settings of the simulation. Defaults are SPEC §7's.
#[derive(Debug, Clone, PartialEq)]
pub struct SimSettings {
    /// Channels, one neuron each (default 384; at most [`crate::recording::MAX_CHANNELS`]).
    pub channels: usize,
    /// Sample rate in Hz (default 30 000).
    pub fs: f64,
    /// Number of trials (default 50).
    pub trials: usize,
    /// Trial length in seconds (default 0.2: 10 bins of 20 ms).
    pub trial_seconds: f64,
    /// Stimulus classes `K` (default 4).
    pub classes: usize,
    /// Input features per pattern (default 16).
    pub features: usize,
    /// Share of trials, from the start, used to train the classifier (default 0.6).
    pub train_fraction: f64,
    /// Seed of every draw.
    pub seed: u64,
    /// Channels per noise cluster (default 48; also the LRR clusters).
    pub cluster_size: usize,
    /// Peak input rate of a feature at intensity 1, Hz (default 200).
    pub input_rate_hz: f64,
    /// Largest feedforward weight magnitude (default 2.5).
    pub input_gain: f64,
    /// Baseline firing rate, Hz (default 5).
    pub baseline_hz: f64,
    /// Spike trough depth range in µV, drawn per channel (default 60–120).
    pub spike_uv: (f64, f64),
    /// Independent noise σ, µV (default 6).
    pub noise_uv: f64,
    /// Cluster-shared noise σ, µV (default 25).
    pub shared_noise_uv: f64,
    /// LFP-like noise amplitude, µV (default 80).
    pub lfp_uv: f64,
    /// Chunk length of the stream, seconds (default 0.02).
    pub chunk_seconds: f64,
    /// Calibration window, seconds (default 2, at most the recording).
    pub fit_seconds: f64,
}

impl Default for SimSettings {
    fn default() -> Self {
        SimSettings {
            channels: 384,
            fs: 30_000.0,
            trials: 50,
            trial_seconds: 0.2,
            classes: 4,
            features: 16,
            train_fraction: 0.6,
            seed: 1,
            cluster_size: 48,
            input_rate_hz: 200.0,
            input_gain: 2.5,
            baseline_hz: 5.0,
            spike_uv: (60.0, 120.0),
            noise_uv: 6.0,
            shared_noise_uv: 25.0,
            lfp_uv: 80.0,
            chunk_seconds: 0.02,
            fit_seconds: 2.0,
        }
    }
}

impl SimSettings {
    /// 1 ms GLM steps per trial.
    pub fn trial_steps(&self) -> usize {
        (self.trial_seconds * 1000.0).round() as usize
    }

    /// Length of the recording in seconds.
    pub fn seconds(&self) -> f64 {
        self.trials as f64 * self.trial_steps() as f64 / 1000.0
    }

    /// The LRR clusters: consecutive runs of `cluster_size` channels.
    pub fn clusters(&self) -> Vec<Vec<usize>> {
        crate::lrr::consecutive_clusters(self.channels, self.cluster_size)
    }

    /// Checks every setting: [`Error::InvalidSetting`] naming the first one out of range.
    pub fn validate(&self) -> Result<()> {
        let pos = |name: &'static str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(Error::setting(
                    name,
                    format!("must be finite and > 0, got {v}"),
                ))
            }
        };
        let nonneg = |name: &'static str, v: f64| {
            if v.is_finite() && v >= 0.0 {
                Ok(())
            } else {
                Err(Error::setting(
                    name,
                    format!("must be finite and ≥ 0, got {v}"),
                ))
            }
        };
        for (name, v) in [
            ("channels", self.channels),
            ("trials", self.trials),
            ("classes", self.classes),
            ("features", self.features),
            ("cluster_size", self.cluster_size),
        ] {
            if v == 0 {
                return Err(Error::setting(name, "must be at least 1"));
            }
        }
        if self.channels > crate::recording::MAX_CHANNELS {
            return Err(Error::setting(
                "channels",
                format!(
                    "at most {} (a recording's channel limit), got {}",
                    crate::recording::MAX_CHANNELS,
                    self.channels
                ),
            ));
        }
        pos("fs", self.fs)?;
        if self.fs < 2000.0 {
            return Err(Error::setting(
                "fs",
                format!("must be at least 2000 Hz (1 ms waveforms), got {}", self.fs),
            ));
        }
        pos("trial_seconds", self.trial_seconds)?;
        if self.trial_steps() == 0 {
            return Err(Error::setting("trial_seconds", "must be at least 1 ms"));
        }
        pos("chunk_seconds", self.chunk_seconds)?;
        pos("fit_seconds", self.fit_seconds)?;
        pos("baseline_hz", self.baseline_hz)?;
        for (name, v) in [
            ("input_rate_hz", self.input_rate_hz),
            ("input_gain", self.input_gain),
            ("noise_uv", self.noise_uv),
            ("shared_noise_uv", self.shared_noise_uv),
            ("lfp_uv", self.lfp_uv),
            ("spike_uv", self.spike_uv.0),
            ("spike_uv", self.spike_uv.1),
        ] {
            nonneg(name, v)?;
        }
        if self.input_rate_hz > 1000.0 {
            return Err(Error::setting(
                "input_rate_hz",
                "at most 1000 (one spike per 1 ms step)",
            ));
        }
        if !(self.train_fraction > 0.0 && self.train_fraction < 1.0) {
            return Err(Error::setting(
                "train_fraction",
                format!("must lie in (0, 1), got {}", self.train_fraction),
            ));
        }
        // The ground truth is held whole: (trial steps, channels) GLM spikes, (trial steps,
        // features) encoder spikes, (classes, features) patterns.
        let steps = (self.trials as u64).saturating_mul(self.trial_steps() as u64);
        for (name, rows, cols) in [
            ("channels", steps, self.channels as u64),
            ("features", steps, self.features as u64),
            ("features", self.classes as u64, self.features as u64),
        ] {
            if rows.saturating_mul(cols) > MAX_TRUTH_VALUES {
                return Err(Error::setting(
                    name,
                    format!(
                        "the ground truth of {rows} × {cols} values passes the limit of {MAX_TRUTH_VALUES}: fewer trials, shorter trials or fewer {name}"
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// The most values one table of the ground truth may hold (2³⁰: 4 GiB of `f32`).
pub const MAX_TRUTH_VALUES: u64 = 1 << 30;

/// Wall time of each part of a simulation, seconds.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct SimTimes {
    /// Rate encoder.
    pub encoder: f64,
    /// Recurrent GLM.
    pub glm: f64,
    /// Waveform and noise synthesis: the host synthesis of the calibration window, plus per
    /// chunk the host synthesis (CPU engine) or the building and submission of the
    /// synthesis kernel (GPU engine, whose device time then counts in the chain's first
    /// stage, which waits for it).
    pub synthesis: f64,
    /// Calibration pass (filter, LRR fit, noise levels).
    pub calibration: f64,
    /// Classifier training and testing.
    pub classifier: f64,
}

/// Everything a simulation produced and measured.
#[derive(Debug, Clone)]
pub struct SimReport {
    /// The settings it ran with.
    pub settings: SimSettings,
    /// Engine description.
    pub engine: String,
    /// The ground truth.
    pub truth: GroundTruth,
    /// Detected events.
    pub events: Vec<Event>,
    /// `(bins, channels)` binned activation.
    pub bins: Array2<f32>,
    /// Detection scores.
    pub detection: DetectionScore,
    /// Predicted class of each test trial.
    pub predicted: Vec<usize>,
    /// Index of the first test trial.
    pub first_test_trial: usize,
    /// Classification accuracy on the test trials.
    pub accuracy: f64,
    /// Chance level `1/K`.
    pub chance: f64,
    /// Per-stage times of the chain.
    pub chain_times: StageTimes,
    /// Times of the other parts.
    pub times: SimTimes,
    /// The chain's calibration: noise levels and thresholds.
    pub noise: Vec<f32>,
    /// Per-chunk compute times of the chain, seconds.
    pub chunk_seconds: Vec<f64>,
    /// The chain's algorithmic delay, seconds (filter, peak hold, bin).
    pub delay: crate::chain::AlgorithmicDelay,
}

/// Runs the simulation on `engine` with the chain settings `chain` (its LRR clusters are
/// replaced by the simulation's when `None`).
///
/// # Errors
/// [`Error::InvalidSetting`] for a bad setting (naming it); any stage's error.
pub fn run(engine: &Engine, settings: &SimSettings, chain: ChainSettings) -> Result<SimReport> {
    settings.validate()?;
    let s = settings;
    let truth = truth::ground_truth(engine, s)?;
    let synth = Synthesizer::new(engine, s, truth.onsets.clone())?;
    let total = synth.n_samples();
    let mut times = SimTimes {
        encoder: truth.encode_seconds,
        glm: truth.glm_seconds,
        ..Default::default()
    };

    let mut chain_settings = chain;
    if chain_settings.lrr.channel_clusters.is_none() {
        chain_settings.lrr.channel_clusters = Some(s.clusters());
    }
    let fit = ((s.fit_seconds * s.fs).round() as u64).clamp(1, total.max(1)) as usize;
    let t = Instant::now();
    let window = synth.chunk(0, fit);
    times.synthesis += t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut chain = Chain::calibrate(engine, chain_settings, s.fs, window.view(), 0)?;
    times.calibration = t.elapsed().as_secs_f64();
    drop(window);

    let chunk = ((s.chunk_seconds * s.fs).round() as u64).max(1);
    let mut events = Vec::new();
    let mut bins = Vec::new();
    let mut chunk_seconds = Vec::new();
    let mut buf = Array2::<f32>::zeros((chunk as usize, s.channels));
    let mut at = 0u64;
    while at < total {
        let n = chunk.min(total - at) as usize;
        let t = Instant::now();
        let out = if matches!(engine, Engine::Gpu(_)) {
            let x = synth.fill_device(at, n)?;
            times.synthesis += t.elapsed().as_secs_f64();
            let t = Instant::now();
            let out = chain.process_device(&x)?;
            chunk_seconds.push(t.elapsed().as_secs_f64());
            out
        } else {
            synth.fill(at, buf.slice_mut(s![..n, ..]));
            times.synthesis += t.elapsed().as_secs_f64();
            let t = Instant::now();
            let out = chain.process(buf.slice(s![..n, ..]))?;
            chunk_seconds.push(t.elapsed().as_secs_f64());
            out
        };
        events.extend(out.events);
        bins.extend(out.bins.values.iter().copied());
        at += n as u64;
    }
    let n_bins = bins.len() / s.channels;
    let bins = Array2::from_shape_vec((n_bins, s.channels), bins)
        .map_err(|e| Error::Readback(e.to_string()))?;
    let window = (0.001 * s.fs).round() as u64;
    let detection = score_detections(&truth.onsets, &events, s.channels, window);

    // The classifier: a trial's feature is its binned activation summed over its bins.
    let t = Instant::now();
    let bin_duration = chain.settings().binning.bin_duration;
    let per_trial = (s.trial_seconds / bin_duration).round().max(1.0) as usize;
    let features = Array2::from_shape_fn((s.trials, s.channels), |(trial, c)| {
        (trial * per_trial..((trial + 1) * per_trial).min(n_bins))
            .map(|b| bins[[b, c]])
            .sum::<f32>()
    });
    let n_train = ((s.trials as f64 * s.train_fraction).round() as usize).clamp(1, s.trials - 1);
    let mut clf = MaxRateClassifier::new(engine, ClassifierSettings::new(s.channels, s.classes))?;
    clf.update(features.slice(s![..n_train, ..]), &truth.labels[..n_train])?;
    let predicted = clf.classify(features.slice(s![n_train.., ..]))?;
    times.classifier = t.elapsed().as_secs_f64();
    let correct = predicted
        .iter()
        .zip(&truth.labels[n_train..])
        .filter(|(p, l)| p == l)
        .count();
    let accuracy = correct as f64 / predicted.len().max(1) as f64;
    Ok(SimReport {
        settings: s.clone(),
        engine: engine.describe(),
        events,
        bins,
        detection,
        predicted,
        first_test_trial: n_train,
        accuracy,
        chance: 1.0 / s.classes as f64,
        chain_times: *chain.stage_times(),
        times,
        noise: chain.calibration().noise.clone(),
        chunk_seconds,
        delay: chain.algorithmic_delay(),
        truth,
    })
}

impl std::fmt::Display for SimReport {
    /// The scores, the time of each part with its real-time factor, per-chunk latency and
    /// the algorithmic delay.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.settings.seconds();
        let d = &self.detection;
        writeln!(
            f,
            "ground truth: {} spikes ({:.1} Hz per neuron)",
            d.true_spikes,
            d.true_spikes as f64 / secs / self.settings.channels as f64
        )?;
        writeln!(
            f,
            "detection: {} events, precision {:.3}, recall {:.3} (within 1 ms after a true onset)",
            d.detections,
            d.precision(),
            d.recall()
        )?;
        writeln!(
            f,
            "classification: accuracy {:.3} on {} test trials (chance {:.3})",
            self.accuracy,
            self.predicted.len(),
            self.chance
        )?;
        writeln!(f, "time ({secs:.1} s of data):")?;
        let t = &self.times;
        for (name, s) in [
            ("rate encoder", t.encoder),
            ("recurrent GLM", t.glm),
            ("synthesis", t.synthesis),
            ("calibration", t.calibration),
            ("classifier", t.classifier),
        ] {
            f.write_str(&time_row(name, s, secs))?;
        }
        f.write_str(&self.chain_times.table(secs))?;
        let (p50, p99) = percentiles(self.chunk_seconds.clone());
        write!(
            f,
            "per chunk ({} ms): p50 {:.0} µs, p99 {:.0} µs compute; algorithmic delay: filter {:.2} ms, peak hold {:.2} ms, bin up to {:.0} ms",
            self.settings.chunk_seconds * 1000.0,
            p50 * 1e6,
            p99 * 1e6,
            self.delay.filter * 1000.0,
            self.delay.peak_hold * 1000.0,
            self.delay.bin * 1000.0
        )
    }
}
