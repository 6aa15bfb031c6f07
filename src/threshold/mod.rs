//! Threshold-crossing event detection (SPEC §1, end; seed: ezmsg-event's
//! `ThresholdCrossingTransformer`, whose settings are kept).
//!
//! A `(samples, channels)` stream goes in; sparse [`Event`]s `(sample, channel, value)` come
//! out, with absolute 64-bit stream samples, in the form [`crate::BinnedActivation`] takes.
//!
//! # Definition
//! Per channel `c`, with threshold `θ_c` (the scalar `threshold`, or one entry of the vector
//! given to [`ThresholdCrossing::with_thresholds`]), in absolute stream samples `s`:
//!
//! * **Detection signal.** `d[s] = x[s]`, or with `auto_scale_tau > 0` the running z-score
//!   `d[s] = (x[s] − m[s]) / √v[s]` (0 where `v[s] = 0`), with `α = 1 − exp(−1/(auto_scale_tau·fs))`
//!   and, at the stream's first sample `m = x`, `v = 0`, then for every later sample
//!   `δ = x[s] − m[s−1]`, `m[s] = m[s−1] + α·δ`, `v[s] = (1 − α)·(v[s−1] + α·δ²)`. The statistics
//!   include the current sample; this is the exponentially weighted mean and variance of the
//!   seed's `AdaptiveStandardScaler` (`EWMA(x²) − EWMA(x)²`, initialised at the first
//!   sample), written in its cancellation-free incremental form.
//! * **Over threshold.** `d[s] ≥ θ` when `θ ≥ 0`, `d[s] ≤ θ` when `θ < 0`, compared exactly
//!   (the `f32` sample against the `f64` threshold, with no rounding of either).
//! * **Crossing.** `s` is a crossing when it is over threshold and `s − 1` is not. The stream's
//!   first sample never is.
//! * **Refractory.** With `refrac_width = floor(refrac_dur·fs)` (exact on the decimal values,
//!   see [`crate::exact`]), a crossing at most `refrac_width` samples after the *sample of the
//!   last accepted event* on its channel is dropped, for any width ≥ 1. The last accepted
//!   event's sample is the sample the event is reported at: its peak with `align_on_peak`,
//!   else its crossing. So consecutive events of one channel are always more than
//!   `refrac_width` samples apart in the output. Dropped crossings (refractory, or too short
//!   for `min_peak_dur`) never start a refractory period.
//! * **Peak.** Needed when `align_on_peak`, `return_peak_val` or `floor(min_peak_dur·fs) ≥ 2`
//!   (otherwise an event is accepted and emitted at its crossing, with no delay). The peak
//!   window of a crossing at `k` is the run of over-threshold samples `k, k+1, …`, cut after
//!   `W = max(1, floor(max_peak_dur·fs))` samples. The peak is the window's most extreme raw
//!   sample `x` (largest for `θ ≥ 0`, smallest for `θ < 0`; the first one on ties; by raw
//!   value even with auto-scaling, so the value returned is the raw peak). The event is
//!   resolved at the first sample not over threshold (the return across threshold) or at the
//!   window's `W`-th sample, whichever comes first.
//! * **Minimum duration.** With `min_width = floor(min_peak_dur·fs)`, an event whose signal
//!   returns across threshold fewer than `min_width` samples after its crossing (the run of
//!   over-threshold samples is shorter than `min_width`) is dropped. `min_width` may not
//!   exceed `W`, so a run that fills the window always passes.
//! * **Output.** The event's sample is the crossing, or the peak with `align_on_peak`; its
//!   value is the raw peak value with `return_peak_val`, else 1.
//!
//! # Streaming
//! Chunks arrive in order; each chunk's events are those *resolved* by its samples, sorted
//! by `(sample, channel)`. An event whose peak window is still open at the chunk's end is held
//! in the state and emitted by the chunk that resolves it, so its sample may lie in an earlier
//! chunk. The events of a stream — sorted by `(sample, channel)`, or channel by channel in
//! emission order — do not depend on the chunking (bit-identical, including values); the
//! chunk an event is emitted by is the one holding its resolving sample. An empty chunk is
//! valid and changes nothing.
//!
//! State per channel (previous sample over threshold, samples since the last accepted event,
//! the open peak, the running mean and variance) lives on the device between chunks for the
//! GPU engine, in three buffers: the committed state is read, the new state written to
//! another, and the committed index moves only when the chunk is accepted — so any error
//! leaves the operator exactly as before the call.
//!
//! # Engines and accuracy
//! * CPU (`cpu.rs`): one pass over the rows in order. Per row, a contiguous vectorised pass
//!   over the channels builds the over-threshold bit mask (and checks finiteness: a chunk is
//!   read once); only channels whose mask shows a new crossing, or that hold an open peak,
//!   take the per-channel path. Running statistics in `f64`.
//! * GPU (`gpu.rs`, `shaders/threshold.wgsl`, entry `detect`): one invocation per channel walks
//!   the chunk's rows (time-major, so neighbouring invocations read neighbouring addresses);
//!   events go straight into per-channel slots ([`DeviceEvents`]), one dispatch per chunk of
//!   up to 16 384 samples (longer chunks: see *Limits*).
//!   A channel with more events than slots is re-run from the saved state with a larger
//!   capacity (never truncated). Only `f32`/`i32`/`u32` arithmetic (portable to GL).
//!
//! Without auto-scaling both engines compute the same thing exactly: events are identical,
//! bit for bit, and equal to a sequential `f64` evaluation of the definition (the `f32`
//! sample is compared with the `f64` threshold exactly on both; the GPU compares against the
//! threshold rounded outward to `f32`, which is equivalent). With auto-scaling the CPU's
//! statistics are `f64` and the GPU's `f32`: a decision can differ only at a sample whose
//! z-score lies within the GPU's error of the threshold. That error grows with `τ·fs` and
//! with `|mean|/σ` of the signal (the `f32` running mean carries roughly
//! `2⁻²⁴·|mean|·√(τ·fs)` of rounding noise). The tests compare both engines with the `f64`
//! truth on zero-mean spiking data at `τ·fs = 300`, allow a channel to differ only if some
//! sample's z-score is within 10⁻³ of the threshold, and find no differing channel.
//! Peak values are raw samples, never rounded, on both engines.
//!
//! # Limits
//! A chunk is shorter than 2³¹ samples. The GPU engine walks one row piece of the chunk per
//! dispatch and splits longer chunks and larger event buffers into several dispatches in
//! the same submission, chaining each channel's state from piece to piece through the state
//! buffers (the result does not depend on the split). A piece is at most
//! `max_storage_buffer_binding_size` bytes (128 MiB on the software adapters) and at most
//! **16 384 rows**. The row bound is a loop bound: the kernel has exactly one loop, one
//! iteration per row, so no invocation runs more than 16 384 loop iterations. Mesa's
//! llvmpipe (lavapipe, and llvmpipe-GL) silently stops an invocation after 65 535 loop
//! iterations in total — no error, just missing events past that row — so an unbounded walk
//! over a 3 s chunk at 30 kHz would be wrong there; the bound stays 4× below it, at one extra
//! dispatch per 16 384 rows (≈ 50 µs on those adapters, next to ≈ 1 ms of work). The only
//! other limits are one row (`4·channels` bytes) and one channel's slots fitting one binding.
//!
//! # Where this differs from the seed
//! The seed applies the refractory period only above 2 samples, measures it from crossings
//! within a chunk but from aligned peaks across chunks, holds an event forever when its
//! signal stays over threshold past `max_peak_dur`, and picks the peak on the z-scored
//! signal. Here: any width ≥ 1; always from the reported sample of the last accepted event;
//! the window closes after `W` samples; the peak is the raw extreme.

mod cpu;
mod gpu;
pub(crate) use gpu::GpuThreshold;

use std::borrow::Cow;

use ndarray::ArrayView2;

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::events::{DeviceEvents, Event};
use crate::exact::duration_samples;
use crate::gpu::{DType, DeviceArray, Staged, StreamMark};
use crate::state::{Fingerprint, StateReader, StateWriter};
use crate::validate::{check_finite, f32_device_chunk, needs_gpu, non_finite_in_row};

/// Settings of [`ThresholdCrossing`]. Defaults are ezmsg-event's `ThresholdSettings`:
/// threshold −3.5, `max_peak_dur` 2 ms, `min_peak_dur` 0, `refrac_dur` 1 ms, no alignment, no
/// peak value, no auto-scaling; the stream starts at sample 0.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ThresholdSettings {
    /// Threshold, in the signal's units (z-score units with `auto_scale_tau > 0`). Its sign
    /// sets the direction: `≥ 0` detects samples `≥ threshold`, `< 0` samples `≤ threshold`.
    /// Ignored by [`ThresholdCrossing::with_thresholds`].
    pub threshold: f64,
    /// Refractory period in seconds (`≥ 0`; 0 = none).
    pub refrac_dur: f64,
    /// Longest peak window in seconds (`≥ 0`; at least one sample is always used).
    pub max_peak_dur: f64,
    /// Events whose signal returns across threshold sooner than this (seconds) are dropped
    /// (`≥ 0`, at most `max_peak_dur` in samples; 0 = keep all).
    pub min_peak_dur: f64,
    /// Report each event at its peak sample instead of its crossing.
    pub align_on_peak: bool,
    /// Make each event's value the raw peak value (else 1).
    pub return_peak_val: bool,
    /// Time constant in seconds of the running z-score applied before thresholding
    /// (`≥ 0`; 0 = off).
    pub auto_scale_tau: f64,
    /// Absolute stream sample of the stream's first sample (default 0): event samples and
    /// [`ThresholdCrossing::position`] count from here.
    pub first_sample: u64,
}

impl Default for ThresholdSettings {
    fn default() -> Self {
        ThresholdSettings {
            threshold: -3.5,
            refrac_dur: 0.001,
            max_peak_dur: 0.002,
            min_peak_dur: 0.0,
            align_on_peak: false,
            return_peak_val: false,
            auto_scale_tau: 0.0,
            first_sample: 0,
        }
    }
}

/// The validated settings in the form both engines use.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Params {
    /// Refractory width in samples (≤ `u32::MAX − 1`).
    pub refrac: u64,
    /// Peak window in samples (≥ 1, < 2³¹).
    pub max_width: u64,
    /// Minimum run in samples (≤ `max_width`).
    pub min_width: u64,
    /// Whether the peak is tracked (events are then resolved at the window's end).
    pub peak_mode: bool,
    /// Report events at their peak.
    pub align: bool,
    /// Event value is the raw peak value.
    pub return_val: bool,
    /// `α` of the running statistics (0: auto-scaling off).
    pub alpha: f64,
    /// `1 − α`, computed without cancellation.
    pub one_minus_alpha: f64,
}

/// The `f32` comparison value equivalent to comparing an `f32` against `t` exactly:
/// `x ≥ t ⇔ x ≥ up(t)` and `x ≤ t ⇔ x ≤ down(t)`.
pub(crate) fn comparison_value(t: f64) -> (f32, f32) {
    let r = t as f32;
    if t >= 0.0 {
        let v = if (r as f64) < t { r.next_up() } else { r };
        (v, 1.0)
    } else {
        let v = if (r as f64) > t { r.next_down() } else { r };
        (v, -1.0)
    }
}

/// Where the thresholds come from.
#[derive(Debug, Clone)]
enum Thresholds {
    Scalar(f64),
    PerChannel(Vec<f64>),
}

impl Thresholds {
    /// The threshold of each of `n` channels (a vector's own length is `n`, checked before).
    fn for_channels(&self, n: usize) -> Cow<'_, [f64]> {
        match self {
            Thresholds::Scalar(t) => Cow::Owned(vec![*t; n]),
            Thresholds::PerChannel(t) => Cow::Borrowed(t),
        }
    }
}

/// Operator tag of a saved threshold-crossing state.
const STATE_TAG: [u8; 4] = *b"THR ";

/// Flag bits of one channel in a saved state.
const SAVED_PREV_OVER: u64 = 1;
const SAVED_OPEN: u64 = 2;
const SAVED_HAS_LAST: u64 = 4;

/// One channel's stream state in the engines' common form (saved states).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct ChannelState {
    /// The previous sample was over threshold.
    pub prev_over: bool,
    /// An event is open (its peak window is still running).
    pub open: bool,
    /// Open event: over-threshold samples so far (its crossing is `position − run`).
    pub run: u64,
    /// Open event: peak sample − crossing sample.
    pub peak_off: u64,
    /// Open event: the raw peak value.
    pub peak_val: f32,
    /// Reported sample of the last accepted event.
    pub last: Option<u64>,
    /// Running mean and variance (auto-scaling; 0 otherwise).
    pub mean: f64,
    pub var: f64,
}

impl ChannelState {
    /// The state with the fields of a closed event zeroed (both engines save this form).
    pub(crate) fn normalized(mut self) -> Self {
        if !self.open {
            (self.run, self.peak_off, self.peak_val) = (0, 0, 0.0);
        }
        self
    }
}

/// Largest chunk length in samples: event samples relative to a chunk are `i32` on the device.
const MAX_CHUNK_SAMPLES: usize = i32::MAX as usize;

/// Streaming threshold-crossing detection on either engine. See the [module docs](self) for
/// the exact definition.
///
/// ```no_run
/// use neurokernels::{Engine, ThresholdCrossing, ThresholdSettings};
/// let settings = ThresholdSettings { threshold: -60.0, align_on_peak: true, ..Default::default() };
/// let mut op = ThresholdCrossing::new(&Engine::auto()?, settings, 30_000.0)?;
/// let chunk = ndarray::Array2::<f32>::zeros((600, 384));
/// for e in op.process(chunk.view())? {
///     println!("{} {} {}", e.sample, e.channel, e.value);
/// }
/// # Ok::<(), neurokernels::Error>(())
/// ```
#[derive(Debug)]
pub struct ThresholdCrossing {
    settings: ThresholdSettings,
    fs: f64,
    params: Params,
    thresholds: Thresholds,
    n_channels: Option<usize>,
    /// Absolute sample of the next sample.
    pos: u64,
    engine: EngineState,
}

#[derive(Debug)]
enum EngineState {
    Cpu(Box<cpu::CpuState>),
    Gpu(Box<gpu::GpuThreshold>),
}

fn check_finite_nonneg(name: &'static str, v: f64) -> Result<()> {
    if !(v.is_finite() && v >= 0.0) {
        return Err(Error::setting(
            name,
            format!("must be finite and ≥ 0, got {v}"),
        ));
    }
    Ok(())
}

impl ThresholdCrossing {
    /// Where the stream stands (see [`StreamMark`]).
    pub(crate) fn mark(&self) -> StreamMark {
        let gpu = match &self.engine {
            EngineState::Gpu(g) => Some(g.mark()),
            EngineState::Cpu(_) => None,
        };
        StreamMark {
            n_channels: self.n_channels,
            pos: self.pos,
            next_bin: 0,
            gpu,
        }
    }

    /// Back to `mark`, taken on the GPU engine before the one chunk processed since.
    pub(crate) fn rewind(&mut self, mark: StreamMark) {
        if let (EngineState::Gpu(g), Some(m)) = (&mut self.engine, mark.gpu) {
            g.rewind(m);
            (self.n_channels, self.pos) = (mark.n_channels, mark.pos);
        }
    }

    /// A new stream at sample rate `fs` (Hz) with the scalar `settings.threshold` on every
    /// channel; the channel count is fixed by the first chunk.
    ///
    /// # Errors
    /// [`Error::InvalidSetting`] naming the setting: `fs` not finite and positive, a duration
    /// or `auto_scale_tau` negative or not finite, a non-finite threshold, widths out of range
    /// (`refrac_dur·fs` ≥ 2³² − 1 samples, `max_peak_dur·fs` ≥ 2³¹, `min_peak_dur` longer than
    /// the peak window). GPU errors when the shader cannot be compiled.
    pub fn new(engine: &Engine, settings: ThresholdSettings, fs: f64) -> Result<Self> {
        if !settings.threshold.is_finite() {
            return Err(Error::setting(
                "threshold",
                format!("must be finite, got {}", settings.threshold),
            ));
        }
        Self::build(engine, settings, fs, Thresholds::Scalar(settings.threshold))
    }

    /// A new stream whose channel `c` uses threshold `per_channel[c]` (its sign sets that
    /// channel's direction); `settings.threshold` is ignored and the channel count is
    /// `per_channel.len()`.
    ///
    /// # Errors
    /// As [`ThresholdCrossing::new`], plus [`Error::InvalidSetting`] (`thresholds`) for an
    /// empty vector or a non-finite entry.
    pub fn with_thresholds(
        engine: &Engine,
        settings: ThresholdSettings,
        fs: f64,
        per_channel: Vec<f32>,
    ) -> Result<Self> {
        if per_channel.is_empty() {
            return Err(Error::setting("thresholds", "need at least one channel"));
        }
        if let Some((c, t)) = per_channel.iter().enumerate().find(|(_, t)| !t.is_finite()) {
            return Err(Error::setting(
                "thresholds",
                format!("must be finite, got {t} for channel {c}"),
            ));
        }
        let thr = per_channel.iter().map(|&t| t as f64).collect();
        Self::build(engine, settings, fs, Thresholds::PerChannel(thr))
    }

    fn build(
        engine: &Engine,
        settings: ThresholdSettings,
        fs: f64,
        thresholds: Thresholds,
    ) -> Result<Self> {
        if !(fs.is_finite() && fs > 0.0) {
            return Err(Error::setting(
                "fs",
                format!("must be finite and > 0, got {fs}"),
            ));
        }
        check_finite_nonneg("refrac_dur", settings.refrac_dur)?;
        check_finite_nonneg("max_peak_dur", settings.max_peak_dur)?;
        check_finite_nonneg("min_peak_dur", settings.min_peak_dur)?;
        check_finite_nonneg("auto_scale_tau", settings.auto_scale_tau)?;
        let refrac = duration_samples("refrac_dur", settings.refrac_dur, fs)?;
        if refrac >= u32::MAX as u64 {
            return Err(Error::setting(
                "refrac_dur",
                format!("{refrac} samples; at most {} supported", u32::MAX - 1),
            ));
        }
        let max_width = duration_samples("max_peak_dur", settings.max_peak_dur, fs)?.max(1);
        if max_width >= 1 << 31 {
            return Err(Error::setting(
                "max_peak_dur",
                format!("{max_width} samples; at most 2³¹ − 1 supported"),
            ));
        }
        let min_width = duration_samples("min_peak_dur", settings.min_peak_dur, fs)?;
        if min_width > max_width {
            return Err(Error::setting(
                "min_peak_dur",
                format!(
                    "{min_width} samples is longer than the peak window of {max_width} samples \
                     (max_peak_dur)"
                ),
            ));
        }
        let (alpha, one_minus_alpha) = if settings.auto_scale_tau > 0.0 {
            let ts = settings.auto_scale_tau * fs;
            if !(ts.is_finite() && ts > 0.0) {
                return Err(Error::setting(
                    "auto_scale_tau",
                    format!("auto_scale_tau·fs = {ts} is not usable"),
                ));
            }
            (-(-1.0 / ts).exp_m1(), (-1.0 / ts).exp())
        } else {
            (0.0, 1.0)
        };
        let params = Params {
            refrac,
            max_width,
            min_width,
            peak_mode: settings.align_on_peak || settings.return_peak_val || min_width >= 2,
            align: settings.align_on_peak,
            return_val: settings.return_peak_val,
            alpha,
            one_minus_alpha,
        };
        let state = match engine {
            Engine::Cpu => EngineState::Cpu(Box::default()),
            Engine::Gpu(ctx) => EngineState::Gpu(Box::new(gpu::GpuThreshold::new(ctx, &params)?)),
        };
        Ok(ThresholdCrossing {
            settings,
            fs,
            params,
            thresholds,
            n_channels: None,
            pos: settings.first_sample,
            engine: state,
        })
    }

    /// The settings.
    pub fn settings(&self) -> &ThresholdSettings {
        &self.settings
    }

    /// The sample rate in Hz.
    pub fn fs(&self) -> f64 {
        self.fs
    }

    /// Absolute stream sample of the next sample to be processed
    /// (`first_sample` + samples consumed).
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Channel count: fixed by the threshold vector, or by the first chunk.
    pub fn n_channels(&self) -> Option<usize> {
        match &self.thresholds {
            Thresholds::PerChannel(t) => Some(t.len()),
            Thresholds::Scalar(_) => self.n_channels,
        }
    }

    /// Refractory width `floor(refrac_dur·fs)` in samples.
    pub fn refrac_samples(&self) -> u64 {
        self.params.refrac
    }

    /// Peak window `max(1, floor(max_peak_dur·fs))` in samples.
    pub fn max_peak_samples(&self) -> u64 {
        self.params.max_width
    }

    /// Minimum run `floor(min_peak_dur·fs)` in samples.
    pub fn min_peak_samples(&self) -> u64 {
        self.params.min_width
    }

    /// Whether the engine is the GPU.
    pub fn is_gpu(&self) -> bool {
        matches!(self.engine, EngineState::Gpu(_))
    }

    /// Starts the stream again at `first_sample`: no previous sample, no open peak, fresh
    /// statistics; the channel count is free again (unless set by a threshold vector).
    pub fn reset(&mut self) {
        self.pos = self.settings.first_sample;
        self.n_channels = None;
        match &mut self.engine {
            EngineState::Cpu(s) => **s = cpu::CpuState::default(),
            EngineState::Gpu(g) => g.reset(),
        }
    }

    /// The fingerprint a saved state must carry: the sample rate, every setting and the
    /// thresholds.
    fn fingerprint(&self) -> u64 {
        let st = &self.settings;
        let fp = Fingerprint::new()
            .f64(self.fs)
            .f64(st.refrac_dur)
            .f64(st.max_peak_dur)
            .f64(st.min_peak_dur)
            .u64(st.align_on_peak as u64)
            .u64(st.return_peak_val as u64)
            .f64(st.auto_scale_tau)
            .u64(st.first_sample);
        match &self.thresholds {
            Thresholds::Scalar(t) => fp.u64(0).f64(*t),
            Thresholds::PerChannel(t) => t
                .iter()
                .fold(fp.u64(1).u64(t.len() as u64), |fp, &v| fp.f64(v)),
        }
        .finish()
    }

    /// Saves the stream state (channel count, position and, per channel, the previous
    /// sample's side of the threshold, the open event, the last accepted event and the
    /// running statistics) in the format of [`crate::state`], for
    /// [`ThresholdCrossing::restore_state`] on an operator of the same settings, thresholds
    /// and sample rate, on either engine.
    ///
    /// Without auto-scaling both engines save the same bytes for the same stream, and a state
    /// restored on either engine resumes with exactly the uninterrupted stream's events. With
    /// auto-scaling the GPU's `f32` statistics are saved widened to `f64` and the CPU's `f64`
    /// are rounded to `f32` on the GPU: on the engine that saved it the stream resumes bit for
    /// bit; on the other, within the bound of the [module docs](self) on auto-scaling.
    ///
    /// # Errors
    /// GPU errors of the read-back (device lost).
    pub fn save_state(&self) -> Result<Vec<u8>> {
        let (mut w, nc) =
            StateWriter::stream(STATE_TAG, self.fingerprint(), self.n_channels, self.pos);
        if nc > 0 {
            let channels = match &self.engine {
                EngineState::Cpu(st) if st.channels() == nc => st.channel_states(),
                EngineState::Cpu(_) => vec![ChannelState::default(); nc],
                EngineState::Gpu(g) => g.read_state(nc, self.pos)?,
            };
            for ch in channels.iter().map(|c| c.normalized()) {
                let flags = [
                    (ch.prev_over, SAVED_PREV_OVER),
                    (ch.open, SAVED_OPEN),
                    (ch.last.is_some(), SAVED_HAS_LAST),
                ]
                .iter()
                .filter(|(on, _)| *on)
                .fold(0, |f, (_, bit)| f | bit);
                w.u64(flags);
                w.u64(ch.run);
                w.u64(ch.peak_off);
                w.u64(ch.peak_val.to_bits() as u64);
                w.u64(ch.last.unwrap_or(0));
                w.f64(ch.mean);
                w.f64(ch.var);
            }
        }
        Ok(w.finish())
    }

    /// Reads and checks the fields of a saved state: the channel count, the position and the
    /// channels' states (empty for no channels).
    fn read_state(&self, bytes: &[u8]) -> Result<(usize, u64, Vec<ChannelState>)> {
        let bad = |what: String| Error::State(what);
        let mut r = StateReader::open(bytes, STATE_TAG, self.fingerprint())?;
        let nc = r.count("channel count", u32::MAX as u64)?;
        let pos = r.u64()?;
        let first = self.settings.first_sample;
        if pos < first || (nc == 0 && pos != first) {
            return Err(bad(format!(
                "position {pos} with {nc} channels (stream starts at {first})"
            )));
        }
        if let Thresholds::PerChannel(t) = &self.thresholds {
            if nc != 0 && nc != t.len() {
                return Err(bad(format!(
                    "{nc} channels, the threshold vector has {}",
                    t.len()
                )));
            }
        }
        let started = pos > first;
        let p = &self.params;
        // No preallocation by `nc`: every channel's fields are read (bounds-checked) first.
        let mut channels = Vec::new();
        for c in 0..nc {
            let flags = r.u64()?;
            let run = r.u64()?;
            let peak_off = r.u64()?;
            let peak_bits = r.u64()?;
            let last = r.u64()?;
            let mean = f64::from_bits(r.u64()?);
            let var = f64::from_bits(r.u64()?);
            let peak_val = u32::try_from(peak_bits)
                .map(f32::from_bits)
                .unwrap_or(f32::NAN);
            let ch = ChannelState {
                prev_over: flags & SAVED_PREV_OVER != 0,
                open: flags & SAVED_OPEN != 0,
                run,
                peak_off,
                peak_val,
                last: (flags & SAVED_HAS_LAST != 0).then_some(last),
                mean,
                var,
            };
            let closed_zero = ch.open || (run == 0 && peak_off == 0 && peak_bits == 0);
            let open_ok = !ch.open
                || (p.peak_mode
                    && ch.prev_over
                    && run >= 1
                    && run < p.max_width
                    && run <= pos - first
                    && peak_off < run
                    && peak_val.is_finite());
            let last_ok =
                ch.last.is_none_or(|l| l >= first && l < pos) && (ch.last.is_some() || last == 0);
            let stats_ok = mean.is_finite() && var.is_finite() && var >= 0.0;
            let fresh_ok = started || (flags == 0 && mean == 0.0 && var == 0.0);
            if flags > 7 || !(closed_zero && open_ok && last_ok && stats_ok && fresh_ok) {
                return Err(bad(format!("inconsistent state of channel {c}")));
            }
            channels.push(ch);
        }
        r.finish()?;
        Ok((nc, pos, channels))
    }

    /// Restores a state saved by [`ThresholdCrossing::save_state`] (on either engine): the
    /// stream continues from where it was saved, its position and channel count included.
    ///
    /// # Errors
    /// [`Error::State`] for bytes that are not a valid state of these settings, thresholds
    /// and sample rate (truncated, corrupted, other settings, inconsistent fields), with the
    /// operator unchanged; [`Error::Shape`] when the GPU adapter cannot hold that many
    /// channels, also with the operator unchanged. A GPU failure while uploading (out of
    /// memory, device lost) leaves the operator reset.
    pub fn restore_state(&mut self, bytes: &[u8]) -> Result<()> {
        let (nc, pos, channels) = self.read_state(bytes)?;
        if nc == 0 {
            self.reset();
            return Ok(());
        }
        let thr = self.thresholds.for_channels(nc);
        match &mut self.engine {
            EngineState::Cpu(st) => {
                st.set_channel_states(&thr, pos, pos > self.settings.first_sample, &channels)
            }
            EngineState::Gpu(g) => {
                if let Err(e) =
                    g.write_state(&thr, pos, pos > self.settings.first_sample, &channels)
                {
                    if !matches!(e, Error::Shape { .. }) {
                        self.reset();
                    }
                    return Err(e);
                }
            }
        }
        self.pos = pos;
        self.n_channels = Some(nc);
        Ok(())
    }

    /// Caps the byte size the GPU engine puts in one binding, to exercise the splitting of
    /// large chunks on small inputs (tests only; `None` restores the adapter's limit).
    #[doc(hidden)]
    pub fn debug_set_binding_limit(&mut self, bytes: Option<u64>) {
        if let EngineState::Gpu(g) = &mut self.engine {
            g.set_binding_limit(bytes);
        }
    }

    /// Validates a chunk's shape against the stream; returns the stream end after it.
    fn check_shape(&self, n: usize, c: usize) -> Result<u64> {
        if c == 0 {
            return Err(Error::shape("chunk", "at least one channel", "0 channels"));
        }
        if let Some(expected) = self.n_channels() {
            if expected != c {
                let why = match self.thresholds {
                    Thresholds::PerChannel(_) => "set by the threshold vector",
                    Thresholds::Scalar(_) => "fixed by the first chunk",
                };
                return Err(Error::shape(
                    "chunk",
                    format!("{expected} channels ({why})"),
                    format!("{c} channels"),
                ));
            }
        }
        if n > MAX_CHUNK_SAMPLES {
            return Err(Error::shape(
                "chunk",
                format!("at most {MAX_CHUNK_SAMPLES} samples per chunk"),
                format!("{n} samples"),
            ));
        }
        self.pos
            .checked_add(n as u64)
            .ok_or_else(|| Error::PositionOverflow(format!("{} + {n} samples", self.pos)))
    }

    /// Detects the events of a `(samples, channels)` chunk (any strides), returning those
    /// resolved by it, sorted by `(sample, channel)`, with absolute stream samples.
    ///
    /// # Errors
    /// Before any state change: [`Error::Shape`] for no channels or a channel count other
    /// than the stream's, [`Error::NonFinite`] naming the first (in sample, then channel
    /// order) NaN or ±inf, [`Error::PositionOverflow`] past sample `u64::MAX`. GPU errors
    /// (out of memory, device lost) leave the state as it was.
    pub fn process(&mut self, chunk: ArrayView2<'_, f32>) -> Result<Vec<Event>> {
        let mut events = Vec::new();
        self.process_into(chunk, &mut events)?;
        Ok(events)
    }

    /// [`ThresholdCrossing::process`] writing the events into `events` (cleared first),
    /// whose capacity is reused: on the CPU engine a warm stream allocates nothing. On an
    /// error the state is unchanged and `events` is empty.
    ///
    /// # Errors
    /// As [`ThresholdCrossing::process`].
    pub fn process_into(
        &mut self,
        chunk: ArrayView2<'_, f32>,
        events: &mut Vec<Event>,
    ) -> Result<()> {
        events.clear();
        let (n, c) = chunk.dim();
        self.check_shape(n, c)?;
        if n == 0 {
            check_finite(chunk)?;
        } else {
            match &mut self.engine {
                // The CPU engine checks finiteness in its own pass over the chunk and rolls
                // its state back when it finds a non-finite sample.
                EngineState::Cpu(st) => {
                    let thresholds = &self.thresholds;
                    cpu::process(
                        st,
                        &self.params,
                        || thresholds.for_channels(c),
                        chunk,
                        self.pos,
                        events,
                    )
                    .map_err(|row| non_finite_in_row(chunk, row))?
                }
                EngineState::Gpu(g) => {
                    check_finite(chunk)?;
                    let thr = self.thresholds.for_channels(c);
                    *events = g.process_host(&self.params, &thr, chunk, self.pos)?;
                }
            }
        }
        self.pos += n as u64;
        self.n_channels = Some(c);
        Ok(())
    }

    /// Detects the events of an `f32` `(samples, channels)` chunk already on the device,
    /// leaving them on the device in the [`DeviceEvents`] layout (GPU engine only). Never
    /// truncates: a channel with more events than the slot capacity is re-run from the saved
    /// state with a larger capacity.
    ///
    /// Non-finite samples are found on the device (no host scan) and reported like
    /// [`ThresholdCrossing::process`] does.
    ///
    /// # Errors
    /// As [`ThresholdCrossing::process`], plus [`Error::DeviceArray`] for the CPU engine, an
    /// array of another element type, rank or device.
    pub fn process_device(&mut self, chunk: &DeviceArray) -> Result<DeviceEvents> {
        self.on_device(chunk, gpu::GpuThreshold::process_device)
    }

    /// [`ThresholdCrossing::process_device`] recorded for a submission shared with the stages
    /// after it (the chain's); see [`gpu::GpuThreshold::stage_device`].
    pub(crate) fn stage_device(&mut self, chunk: &DeviceArray) -> Result<(DeviceEvents, Staged)> {
        self.on_device(chunk, gpu::GpuThreshold::stage_device)
    }

    /// Checks the device `chunk`, hands it to `run` on the GPU half with this stream's
    /// params, thresholds and position, and moves the stream past it.
    fn on_device<T>(
        &mut self,
        chunk: &DeviceArray,
        run: impl FnOnce(&mut gpu::GpuThreshold, &Params, &[f64], &DeviceArray, u64) -> Result<T>,
    ) -> Result<T> {
        let (n, c) = f32_device_chunk(chunk, "threshold crossing")?;
        self.check_shape(n, c)?;
        let thr = self.thresholds.for_channels(c);
        let EngineState::Gpu(g) = &mut self.engine else {
            return Err(needs_gpu("process_device"));
        };
        let out = run(g, &self.params, &thr, chunk, self.pos)?;
        self.pos += n as u64;
        self.n_channels = Some(c);
        Ok(out)
    }

    /// Reads device events back to the host, with absolute samples, sorted by
    /// `(sample, channel)`. The events must live on this operator's device.
    ///
    /// # Errors
    /// [`Error::DeviceArray`] for the CPU engine; GPU read-back errors.
    pub fn events_to_host(&self, events: &DeviceEvents) -> Result<Vec<Event>> {
        let EngineState::Gpu(g) = &self.engine else {
            return Err(Error::DeviceArray(
                "device events need the GPU engine".into(),
            ));
        };
        g.events_to_host(events)
    }

    /// [`ThresholdCrossing::events_to_host`] and the read-back of an `f32` device array (e.g.
    /// the bins computed from these events) in one device round trip.
    ///
    /// # Errors
    /// As [`ThresholdCrossing::events_to_host`], plus [`Error::DeviceArray`] for an array of
    /// another element type or device.
    pub fn events_and_array_to_host(
        &self,
        events: &DeviceEvents,
        array: &DeviceArray,
    ) -> Result<(Vec<Event>, ndarray::ArrayD<f32>)> {
        let EngineState::Gpu(g) = &self.engine else {
            return Err(Error::DeviceArray(
                "device events need the GPU engine".into(),
            ));
        };
        if array.dtype() != DType::F32 || !g.same_device(array.context()) {
            return Err(Error::DeviceArray(format!(
                "expected an f32 array of this operator's device, got {:?}",
                array.dtype()
            )));
        }
        let (ev, bytes) =
            g.events_and_bytes_to_host(events, Some((array.buffer(), array.byte_len())))?;
        let data: Vec<f32> = bytemuck::pod_collect_to_vec(&bytes);
        let values = ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(array.shape()), data)
            .map_err(|e| Error::DeviceArray(e.to_string()))?;
        Ok((ev, values))
    }
}
