//! The simulated extracellular recording: spike waveforms, cluster-shared noise, LFP-like
//! low-frequency noise and independent noise, synthesised chunk by chunk.
//!
//! Every noise sample is a function of its absolute `(sample, channel)` position (Philox
//! counters), so any chunking synthesises the same recording.

use std::sync::Arc;

use ndarray::{Array2, ArrayViewMut2, Axis};

use super::gpu::{GpuSynth, SynthConsts};
use super::truth::{stream, uniform};
use super::SimSettings;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::gpu::DeviceArray;
use crate::rng::{key_of, philox4x32_10};

/// LFP components: frequency (Hz) and amplitude share of `lfp_uv`.
pub(crate) const LFP: [(f64, f64); 4] = [(2.0, 0.5), (6.5, 0.3), (11.0, 0.15), (23.0, 0.05)];

/// A standard normal from two 32-bit words (Box–Muller, `f32`).
#[inline]
fn normal(w0: u32, w1: u32) -> f32 {
    let u1 = ((w0 >> 8) as f32 + 1.0) * (1.0 / 16_777_216.0); // (0, 1]
    let u2 = (w1 >> 8) as f32 * (1.0 / 16_777_216.0);
    (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
}

/// The spike waveform, one value per sample of its 1 ms: a trough at 0.25 ms and a smaller
/// positive rebound, unit trough depth.
pub(crate) fn waveform(fs: f64) -> Vec<f32> {
    let len = (0.001 * fs).round().max(1.0) as usize;
    (0..len)
        .map(|k| {
            let t = k as f64 / fs * 1000.0; // ms
            let trough = (-((t - 0.25) / 0.08).powi(2)).exp();
            let rebound = 0.35 * (-((t - 0.55) / 0.15).powi(2)).exp();
            (rebound - trough) as f32
        })
        .collect()
}

/// Synthesises chunks of the recording of one simulation.
///
/// # Engines
/// [`Synthesizer::chunk`] and [`Synthesizer::fill`] compute on the host (multi-threaded) on
/// either engine: they are the CPU twin. [`Synthesizer::fill_device`] runs the same formula
/// as one WGSL kernel (`shaders/synth.wgsl`) and leaves the chunk on the device, for a chain
/// to consume with no host round trip. The two agree to a few `f32` ulps of each term: the
/// Philox words are bit-identical, `ln`, `cos` and `sin` are the platform's `f32` functions on
/// each side, and the GPU reduces the LFP phase per 64-sample block on the host in `f64`
/// (exact to ~1e-7 cycles at any sample) where the CPU evaluates `sin(2π f t / fs)` in `f64`.
/// The difference is a few µV·1e-5 on software adapters (at most 7e-5 µV at the default
/// noise levels); the tests allow `1e-4·(noise_uv + shared_noise_uv + lfp_uv) + 1e-5·|x|`,
/// room for a hardware GPU's approximate `log`/`cos`/`sin`. On each engine the output does
/// not depend on the chunking (bit-identical).
#[derive(Debug, Clone)]
pub struct Synthesizer {
    settings: SimSettings,
    onsets: Vec<(u64, u32)>,
    wave: Vec<f32>,
    amplitude: Vec<f32>,
    lfp_gain: Array2<f32>,
    gpu: Option<Arc<GpuSynth>>,
}

impl Synthesizer {
    /// The simulation's recording generator on `engine`: the recording of `settings` (its
    /// channels, sample rate, seed and noise levels) with a waveform starting at each of
    /// `onsets` (`(sample, channel)`, sorted by sample then channel), as
    /// [`super::run`] synthesises it.
    ///
    /// # Errors
    /// [`Error::InvalidSetting`] for a bad setting; [`Error::IndexOutOfRange`] for an onset
    /// channel not below `channels`; [`Error::Shape`] for unsorted onsets; device errors.
    pub fn for_settings(
        engine: &Engine,
        settings: &SimSettings,
        onsets: Vec<(u64, u32)>,
    ) -> Result<Self> {
        settings.validate()?;
        if let Some(&(_, c)) = onsets.iter().find(|o| o.1 as usize >= settings.channels) {
            return Err(Error::IndexOutOfRange {
                what: "onset channel",
                index: c as u64,
                bound: settings.channels as u64,
            });
        }
        if let Some(i) = onsets.windows(2).position(|w| w[0] > w[1]) {
            return Err(Error::shape(
                "onsets",
                "sorted by sample, then channel",
                format!("{:?} before {:?}", onsets[i], onsets[i + 1]),
            ));
        }
        Self::new(engine, settings, onsets)
    }

    /// The synthesiser for `onsets` (sorted `(sample, channel)`, channels in range).
    pub(crate) fn new(
        engine: &Engine,
        settings: &SimSettings,
        onsets: Vec<(u64, u32)>,
    ) -> Result<Self> {
        let s = settings;
        let amplitude: Vec<f32> = (0..s.channels)
            .map(|c| {
                let u = uniform(s.seed, stream::CHANNELS, c as u64, 0);
                (s.spike_uv.0 + (s.spike_uv.1 - s.spike_uv.0) * u as f64) as f32
            })
            .collect();
        let lfp_gain = Array2::from_shape_fn((s.channels, LFP.len()), |(c, i)| {
            let u = uniform(s.seed, stream::CHANNELS, c as u64, 1 + i as u32);
            ((0.7 + 0.3 * u as f64) * LFP[i].1 * s.lfp_uv) as f32
        });
        let wave = waveform(s.fs);
        let gpu = match engine {
            Engine::Gpu(ctx) => {
                let consts = SynthConsts {
                    channels: s.channels,
                    cluster: s.cluster_size.max(1),
                    key: key_of(s.seed),
                    noise_uv: s.noise_uv as f32,
                    shared_uv: s.shared_noise_uv as f32,
                    fs: s.fs,
                };
                let gains: Vec<f32> = lfp_gain.iter().copied().collect();
                Some(Arc::new(GpuSynth::new(
                    ctx, consts, &amplitude, &gains, &wave,
                )?))
            }
            Engine::Cpu => None,
        };
        Ok(Synthesizer {
            settings: s.clone(),
            onsets,
            wave,
            amplitude,
            lfp_gain,
            gpu,
        })
    }

    /// The `(n, channels)` chunk starting at sample `start`, in µV, synthesised on the
    /// device and left there (GPU engine only). Equal to [`Synthesizer::chunk`] to the
    /// tolerance stated on [`Synthesizer`]; an empty chunk is a `(0, channels)` array.
    ///
    /// # Errors
    /// [`Error::DeviceArray`] on the CPU engine; [`Error::PositionOverflow`] for a chunk
    /// past sample `u64::MAX`; device errors.
    pub fn fill_device(&self, start: u64, n: usize) -> Result<DeviceArray> {
        let Some(g) = &self.gpu else {
            return Err(Error::DeviceArray(
                "fill_device needs the GPU engine".into(),
            ));
        };
        let len = self.wave.len() as u64;
        let from = start.saturating_sub(len - 1);
        let end = start.saturating_add(n as u64);
        let i0 = self.onsets.partition_point(|&(s, _)| s < from);
        let i1 = self.onsets.partition_point(|&(s, _)| s < end);
        let onsets = if n == 0 {
            &[][..]
        } else {
            &self.onsets[i0..i1.max(i0)]
        };
        g.fill(start, n, onsets)
    }

    /// Samples in the recording.
    pub fn n_samples(&self) -> u64 {
        (self.settings.seconds() * self.settings.fs).round() as u64
    }

    /// The `(n, channels)` chunk starting at sample `start`, in µV.
    pub fn chunk(&self, start: u64, n: usize) -> Array2<f32> {
        let mut x = Array2::<f32>::zeros((n, self.settings.channels));
        self.fill(start, x.view_mut());
        x
    }

    /// Writes the chunk starting at `start` into `out` (`(samples, channels)`). Rows past
    /// sample `u64::MAX` get the noise of the samples counted from 0 again, and no spikes.
    pub fn fill(&self, start: u64, mut out: ArrayViewMut2<'_, f32>) {
        let n = out.nrows();
        let per = n.div_ceil(crate::engine::worker_threads()).max(1024);
        if n <= per {
            // One piece (every streaming chunk): no thread to start.
            self.noise(start, out.view_mut());
        } else {
            std::thread::scope(|scope| {
                let mut rest = out.view_mut();
                let mut at = 0usize;
                while at < n {
                    let len = per.min(n - at);
                    let (head, tail) = rest.split_at(Axis(0), len);
                    rest = tail;
                    let first = start.wrapping_add(at as u64);
                    scope.spawn(move || self.noise(first, head));
                    at += len;
                }
            });
        }
        self.spikes(start, out);
    }

    /// Independent, shared and LFP noise of rows starting at `start`.
    fn noise(&self, start: u64, mut out: ArrayViewMut2<'_, f32>) {
        let s = &self.settings;
        let key = key_of(s.seed);
        let cluster = s.cluster_size.max(1);
        let n_clusters = s.channels.div_ceil(cluster);
        let mut shared = vec![0f32; n_clusters];
        let mut lfp = [0f32; LFP.len()];
        for (r, mut row) in out.axis_iter_mut(Axis(0)).enumerate() {
            let t = start.wrapping_add(r as u64);
            let (lo, hi) = (t as u32, (t >> 32) as u32);
            for (k, v) in shared.iter_mut().enumerate() {
                let w = philox4x32_10([lo, hi, k as u32, stream::SHARED], key);
                *v = normal(w[0], w[1]) * s.shared_noise_uv as f32;
            }
            let secs = t as f64 / s.fs;
            for (v, &(f, _)) in lfp.iter_mut().zip(LFP.iter()) {
                *v = (std::f64::consts::TAU * f * secs).sin() as f32;
            }
            let indep = s.noise_uv as f32;
            for (c, x) in row.iter_mut().enumerate() {
                let w = philox4x32_10([lo, hi, c as u32, stream::NOISE], key);
                let g = self.lfp_gain.row(c);
                let l: f32 = (0..LFP.len()).map(|i| g[i] * lfp[i]).sum();
                *x = normal(w[0], w[1]) * indep + shared[c / cluster] + l;
            }
        }
    }

    /// Adds every waveform overlapping rows `[start, start + n)`.
    fn spikes(&self, start: u64, mut out: ArrayViewMut2<'_, f32>) {
        let n = out.nrows() as u64;
        let end = start.saturating_add(n);
        let len = self.wave.len() as u64;
        let from = start.saturating_sub(len - 1);
        let i0 = self.onsets.partition_point(|&(s, _)| s < from);
        for &(onset, c) in &self.onsets[i0..] {
            if onset >= end {
                break;
            }
            let a = self.amplitude[c as usize];
            for k in 0..len {
                let Some(s) = onset.checked_add(k) else {
                    break;
                };
                if s >= start && s < end {
                    out[[(s - start) as usize, c as usize]] += a * self.wave[k as usize];
                }
            }
        }
    }
}
