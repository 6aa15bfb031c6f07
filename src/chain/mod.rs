//! The chain (SPEC §7): raw signal → band-pass filter → reference (LRR, common average, or
//! none) → threshold crossing → binned activation, as one type that owns every stage's
//! streaming state.
//!
//! # Calibration, then the stream
//! [`Chain::calibrate`] takes the first `fit_seconds` of a recording (the caller reads them),
//! filters them with a fresh filter, fits the LRR weights on the filtered window (when the
//! reference is LRR), re-references it, and measures each channel's noise as
//! `median(|x|)/0.6745`. Per-channel thresholds are then `k·noise` (`ThresholdRule::NoiseMultiple`,
//! the sign of `k` giving the direction) or one absolute value in µV. A channel whose noise is
//! 0 (dead or constant: a filtered noise, before the reference, at or below 1e-5 of the
//! channel's raw RMS — the filter's rounding level — counts as 0) detects nothing and is
//! listed in [`Calibration::dead_channels`]. The
//! stream then starts again from the recording's first sample with fresh filter state.
//!
//! # Engines
//! On the GPU engine a chunk is uploaded once; the filter, the reference, threshold crossing
//! and binning run on the device one after the other, each reading the previous stage's
//! device output. The stages are recorded one after the other and submitted together, and
//! one read-back brings their status words, the events and the bins: one round trip per
//! chunk. When that read-back shows a stage with something to report (a non-finite value) or
//! to redo (a channel with more events than the slots it was given), every stage is rewound
//! and the chunk runs again stage by stage, each stage submitted and checked on its own,
//! which reports the error or grows the slots. With `profile_stages` (which times each stage)
//! every chunk goes stage by stage.
//! [`Chain::process_device`] starts from a chunk already on the device (the simulation's
//! synthesised recording, or any operator's output) and skips the upload.
//! On the CPU engine the same operators run in plain Rust. Either way the output equals the
//! composition of the operators called one by one (tested), for any chunking.
//!
//! # Errors
//! [`Chain::process`] validates the chunk (shape, finiteness) on the host before any stage
//! sees it, so a chunk one stage would reject is rejected whole and every stage keeps its
//! state. [`Chain::process_device`] checks shape and element type on the host and leaves
//! non-finite values to the first stage that reads them on the device (see its docs). On the
//! GPU engine a device error in the middle of a chunk ([`Error::DeviceMemory`] or
//! [`Error::DeviceLimit`] for a chunk too large for the memory budget or the device, a
//! validation error, a read-back failure) rewinds the stages that had already run, so the
//! chain goes on from where it was before the chunk (tested); only a lost device needs a new
//! chain.

use std::time::{Duration, Instant};

use ndarray::{Array2, ArrayView2, ArrayViewMut2};

use crate::binning::{Binned, BinnedActivation, BinningSettings};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::events::Event;
use crate::filter::{BandpassFilter, FilterSettings};
use crate::gpu::{
    reusable_output, upload_checked, DType, DeviceArray, GpuContext, Staged, TrackedBuffer,
};
use crate::lrr::{Lrr, LrrSettings};
use crate::reference::{CarSettings, CommonAverage};
use crate::threshold::{GpuThreshold, ThresholdCrossing, ThresholdSettings};
use crate::validate::check_finite;

mod state;
pub(crate) use state::fuzz_chain;

/// Which reference the chain subtracts after filtering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReferenceMode {
    /// Linear regression rereferencing (SPEC §2) with weights fitted on the calibration window.
    Lrr,
    /// Common average reference: each sample's mean over channels.
    Car,
    /// Common median reference: each sample's median over channels.
    CarMedian,
    /// No reference.
    None,
}

/// How each channel's threshold is set.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ThresholdRule {
    /// `k` times the channel's noise `median(|x|)/0.6745` (negative `k`: negative-going).
    NoiseMultiple(f64),
    /// One absolute threshold for every channel, in the signal's units (µV for recordings).
    Absolute(f64),
}

/// Settings of [`Chain`].
#[derive(Debug, Clone, PartialEq)]
pub struct ChainSettings {
    /// The band-pass filter (`None`: no filter, for data filtered in hardware).
    pub filter: Option<FilterSettings>,
    /// The reference.
    pub reference: ReferenceMode,
    /// LRR settings (clusters, ridge), used when `reference` is [`ReferenceMode::Lrr`].
    pub lrr: LrrSettings,
    /// Per-channel threshold rule.
    pub threshold: ThresholdRule,
    /// Detection settings (refractory period, peak window, …); its `threshold` field is
    /// replaced by the per-channel thresholds and its `first_sample` by the chain's.
    pub detection: ThresholdSettings,
    /// Binned activation settings; its `first_sample` is replaced by the chain's.
    pub binning: BinningSettings,
    /// Wait for the device after each stage so that per-stage times are real (GPU engine;
    /// costs one device synchronisation per stage and chunk). The CPU engine always times
    /// its stages.
    pub profile_stages: bool,
}

impl Default for ChainSettings {
    fn default() -> Self {
        ChainSettings {
            filter: Some(FilterSettings::default()),
            reference: ReferenceMode::Lrr,
            lrr: LrrSettings::default(),
            threshold: ThresholdRule::NoiseMultiple(-5.0),
            detection: ThresholdSettings {
                refrac_dur: 0.001,
                ..Default::default()
            },
            binning: BinningSettings {
                kernel: crate::binning::Kernel::Count,
                aggregation: crate::binning::Aggregation::Sum,
                ..Default::default()
            },
            profile_stages: false,
        }
    }
}

/// What calibration measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Calibration {
    /// Samples in the calibration window.
    pub n_samples: usize,
    /// Each channel's noise `median(|x|)/0.6745` on the filtered, re-referenced window.
    pub noise: Vec<f32>,
    /// Each channel's threshold (a dead channel's is an unreachable value).
    pub thresholds: Vec<f32>,
    /// Channels whose noise is 0 under [`ThresholdRule::NoiseMultiple`]: they detect nothing.
    pub dead_channels: Vec<usize>,
    /// The fitted LRR weights `W` (LRR reference only).
    pub weights: Option<Array2<f64>>,
}

/// Cumulative wall time per stage.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StageTimes {
    /// Validation and upload (GPU) of each chunk.
    pub upload: Duration,
    /// Band-pass filter.
    pub filter: Duration,
    /// Reference.
    pub reference: Duration,
    /// Threshold crossing.
    pub threshold: Duration,
    /// Binned activation, including the read-back of events and bins on the GPU engine.
    pub binning: Duration,
    /// Chunks processed.
    pub chunks: u64,
}

impl StageTimes {
    /// The sum of all stages.
    pub fn total(&self) -> Duration {
        self.upload + self.filter + self.reference + self.threshold + self.binning
    }

    /// One line per stage: its time and real-time factor for `seconds` of data.
    pub fn table(&self, seconds: f64) -> String {
        let rows = [
            ("upload/validate", self.upload),
            ("band-pass", self.filter),
            ("reference", self.reference),
            ("threshold", self.threshold),
            ("binning+read-back", self.binning),
            ("chain total", self.total()),
        ];
        rows.iter()
            .map(|(name, d)| time_row(name, d.as_secs_f64(), seconds))
            .collect()
    }
}

/// `"  name   1.234 s   56.7× real time\n"`.
pub fn time_row(name: &str, spent: f64, seconds: f64) -> String {
    format!(
        "  {name:<18} {spent:>9.3} s  {:>9.1}× real time\n",
        seconds / spent.max(1e-12)
    )
}

/// p50 and p99 of `v`, in the units of `v`.
pub fn percentiles(mut v: Vec<f64>) -> (f64, f64) {
    if v.is_empty() {
        return (0.0, 0.0);
    }
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99))
}

/// The chain's algorithmic delays, in seconds: how long after a spike its outputs can exist,
/// whatever the compute speed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AlgorithmicDelay {
    /// The filter's group delay at the passband's centre.
    pub filter: f64,
    /// The peak window a detection may be held open for (0 unless peak tracking is on).
    pub peak_hold: f64,
    /// The longest wait of a bin for its last sample (one bin).
    pub bin: f64,
}

/// One chunk's outputs. The default holds nothing (for [`Chain::process_into`], which
/// reuses its buffers).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ChainOutput {
    /// Events resolved by this chunk (absolute samples, sorted by sample then channel).
    pub events: Vec<Event>,
    /// Bins completed by this chunk.
    pub bins: Binned,
}

/// The reference stage.
#[derive(Debug)]
enum Reference {
    Lrr(Box<Lrr>),
    Car(CommonAverage),
    None,
}

impl Reference {
    fn new(engine: &Engine, settings: &ChainSettings) -> Result<Self> {
        Ok(match settings.reference {
            ReferenceMode::Lrr => Reference::Lrr(Box::new(Lrr::new(engine, settings.lrr.clone())?)),
            ReferenceMode::Car => {
                Reference::Car(CommonAverage::new(engine, CarSettings { median: false })?)
            }
            ReferenceMode::CarMedian => {
                Reference::Car(CommonAverage::new(engine, CarSettings { median: true })?)
            }
            ReferenceMode::None => Reference::None,
        })
    }

    fn host(&mut self, x: Array2<f32>) -> Result<Array2<f32>> {
        match self {
            Reference::Lrr(l) => l.transform(x.view()),
            Reference::Car(c) => c.process(x.view()),
            Reference::None => Ok(x),
        }
    }

    /// Writes the re-referenced `x` into `out` and returns `true`, or returns `false` (and
    /// leaves `out` alone) when there is no reference.
    fn host_into(&mut self, x: ArrayView2<'_, f32>, out: ArrayViewMut2<'_, f32>) -> Result<bool> {
        match self {
            Reference::Lrr(l) => l.transform_into(x, out)?,
            Reference::Car(c) => c.process_into(x, out)?,
            Reference::None => return Ok(false),
        }
        Ok(true)
    }

    fn device(&mut self, x: DeviceArray) -> Result<DeviceArray> {
        match self {
            Reference::Lrr(l) => l.transform_device(&x),
            Reference::Car(c) => c.process_device(&x),
            Reference::None => Ok(x),
        }
    }
}

/// The whole chain on one engine; see the [module docs](self).
#[derive(Debug)]
pub struct Chain {
    engine: Engine,
    fs: f64,
    settings: ChainSettings,
    n_channels: usize,
    filter: Option<BandpassFilter>,
    reference: Reference,
    detect: ThresholdCrossing,
    bin: BinnedActivation,
    calibration: Calibration,
    times: StageTimes,
    /// CPU engine: the filter's and the reference's outputs, reused across chunks.
    scratch: [Vec<f32>; 2],
    /// GPU engine: the buffer host chunks are uploaded to, reused while no device array of a
    /// caller holds it.
    upload: Option<std::sync::Arc<TrackedBuffer>>,
}

/// A channel's noise at or below this fraction of its raw window's RMS is taken as 0 (the
/// channel constant): the filters' rounding errors are ~1e-7 of the RMS, real noise on a
/// channel with a large offset ~1e-3 or more.
const NOISE_FLOOR: f64 = 1e-5;

/// `median(|x|)/0.6745` of one channel (NaN-free input).
fn noise_of(column: impl Iterator<Item = f32>) -> f32 {
    let mut a: Vec<f32> = column.map(f32::abs).collect();
    if a.is_empty() {
        return 0.0;
    }
    let mid = a.len() / 2;
    let (_, m, _) = a.select_nth_unstable_by(mid, f32::total_cmp);
    let upper = *m;
    let med = if a.len() % 2 == 1 {
        upper
    } else {
        let lower = a[..mid].iter().copied().fold(f32::MIN, f32::max);
        (lower as f64 * 0.5 + upper as f64 * 0.5) as f32
    };
    (med as f64 / 0.6745) as f32
}

impl Chain {
    /// Calibrates on `window` (the recording's first `fit_seconds`, `(samples, channels)`,
    /// in µV) and returns a chain ready to stream the recording from `first_sample` (the
    /// absolute sample number of its first row).
    ///
    /// # Errors
    /// [`Error::InvalidSetting`] for a non-positive `fs` or any stage's bad setting;
    /// [`Error::Shape`] for a window without channels or samples; [`Error::NonFinite`] for
    /// a NaN or ±inf in it; device errors.
    pub fn calibrate(
        engine: &Engine,
        settings: ChainSettings,
        fs: f64,
        window: ArrayView2<'_, f32>,
        first_sample: u64,
    ) -> Result<Self> {
        if !(fs.is_finite() && fs > 0.0) {
            return Err(Error::setting(
                "fs",
                format!("must be finite and > 0, got {fs}"),
            ));
        }
        let (n, c) = window.dim();
        if n == 0 || c == 0 {
            return Err(Error::shape(
                "calibration window",
                "at least one sample and one channel",
                format!("({n}, {c})"),
            ));
        }
        check_finite(window)?;
        let (ThresholdRule::Absolute(t) | ThresholdRule::NoiseMultiple(t)) = settings.threshold;
        {
            if !t.is_finite() || t == 0.0 {
                return Err(Error::setting(
                    "threshold",
                    format!("must be finite and nonzero, got {t}"),
                ));
            }
        }
        // The calibration pass runs on the chain's engine, host in and host out; the device
        // buffers sized for the window are dropped afterwards.
        // The stream's filter filters the window, then restarts from zero state.
        let mut filter = match settings.filter {
            Some(f) => Some(BandpassFilter::new(engine, f, fs)?),
            None => None,
        };
        let mut filtered = match &mut filter {
            Some(f) => {
                let y = f.process(window)?;
                f.reset();
                y
            }
            None => window.to_owned(),
        };
        // A channel whose filtered noise is at the filter's own rounding level (a constant
        // channel, whose filtered window is a decaying step response) counts as constant,
        // whatever the reference later mixes into it: otherwise its threshold would sit at
        // the rounding level (or at the level of what LRR leaks in from its neighbours).
        let constant: Vec<bool> = (0..c)
            .map(|j| {
                let s = noise_of(filtered.column(j).iter().copied());
                let raw = window.column(j);
                let ms = raw.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / raw.len() as f64;
                (s as f64) <= NOISE_FLOOR * ms.sqrt()
            })
            .collect();
        let mut reference = Reference::new(engine, &settings)?;
        if let Reference::Lrr(l) = &mut reference {
            l.fit(filtered.view())?;
        }
        filtered = reference.host(filtered)?;
        let weights = match &mut reference {
            Reference::Lrr(l) => Some(l.weights()?),
            _ => None,
        };
        // The window is much longer than a chunk: give its device buffers back.
        if let Some(f) = &mut filter {
            f.release_scratch();
        }
        if let Reference::Lrr(l) = &mut reference {
            l.release_scratch();
        }
        if let Engine::Gpu(ctx) = engine {
            ctx.release_staging();
        }
        let noise: Vec<f32> = (0..c)
            .map(|j| {
                if constant[j] {
                    0.0
                } else {
                    noise_of(filtered.column(j).iter().copied())
                }
            })
            .collect();
        let mut dead = Vec::new();
        let thresholds: Vec<f32> = match settings.threshold {
            ThresholdRule::Absolute(t) => vec![t as f32; c],
            ThresholdRule::NoiseMultiple(k) => noise
                .iter()
                .enumerate()
                .map(|(j, &s)| {
                    let t = (k * s as f64) as f32;
                    if s > 0.0 && t.is_finite() && t != 0.0 {
                        t
                    } else {
                        dead.push(j);
                        // Unreachable by any finite sample in the threshold's direction.
                        if k < 0.0 {
                            f32::MIN
                        } else {
                            f32::MAX
                        }
                    }
                })
                .collect(),
        };
        let calibration = Calibration {
            n_samples: n,
            noise,
            thresholds,
            dead_channels: dead,
            weights,
        };
        Chain::assemble(
            engine,
            settings,
            fs,
            (filter, reference),
            calibration,
            first_sample,
        )
    }

    /// A chain of the given filter, reference and calibration whose detector and binner
    /// start fresh at `first_sample`.
    fn assemble(
        engine: &Engine,
        settings: ChainSettings,
        fs: f64,
        (filter, reference): (Option<BandpassFilter>, Reference),
        calibration: Calibration,
        first_sample: u64,
    ) -> Result<Self> {
        let detect = ThresholdCrossing::with_thresholds(
            engine,
            ThresholdSettings {
                first_sample,
                ..settings.detection
            },
            fs,
            calibration.thresholds.clone(),
        )?;
        let bin = BinnedActivation::new(
            engine,
            BinningSettings {
                first_sample,
                ..settings.binning
            },
            fs,
        )?;
        Ok(Chain {
            engine: engine.clone(),
            fs,
            n_channels: calibration.noise.len(),
            settings,
            filter,
            reference,
            detect,
            bin,
            calibration,
            times: StageTimes::default(),
            scratch: [Vec::new(), Vec::new()],
            upload: None,
        })
    }

    /// What calibration measured.
    pub fn calibration(&self) -> &Calibration {
        &self.calibration
    }

    /// The settings.
    pub fn settings(&self) -> &ChainSettings {
        &self.settings
    }

    /// Sample rate in Hz.
    pub fn fs(&self) -> f64 {
        self.fs
    }

    /// Number of channels.
    pub fn n_channels(&self) -> usize {
        self.n_channels
    }

    /// The engine the chain runs on.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Cumulative time per stage so far.
    pub fn stage_times(&self) -> &StageTimes {
        &self.times
    }

    /// The chain's algorithmic delays.
    pub fn algorithmic_delay(&self) -> AlgorithmicDelay {
        let d = &self.settings.detection;
        AlgorithmicDelay {
            filter: self
                .filter
                .as_ref()
                .map_or(0.0, |f| f.group_delay_samples() / self.fs),
            peak_hold: if d.align_on_peak || d.return_peak_val || d.min_peak_dur > 0.0 {
                self.detect.max_peak_samples() as f64 / self.fs
            } else {
                0.0
            },
            bin: self.settings.binning.bin_duration,
        }
    }

    /// Processes one `(samples, channels)` chunk (µV) of the stream.
    ///
    /// # Errors
    /// Before any state changes: [`Error::Shape`] for another channel count,
    /// [`Error::NonFinite`] naming the first NaN or ±inf; device errors (see the module docs).
    pub fn process(&mut self, chunk: ArrayView2<'_, f32>) -> Result<ChainOutput> {
        let mut out = ChainOutput::default();
        self.process_into(chunk, &mut out)?;
        Ok(out)
    }

    /// [`Chain::process`] writing into `out`, whose buffers are reused from chunk to chunk:
    /// on the CPU engine a warm stream allocates nothing per chunk (`tests/alloc.rs` counts).
    /// On an error every stage's state is unchanged and `out` holds nothing of this chunk.
    ///
    /// # Errors
    /// As [`Chain::process`].
    pub fn process_into(
        &mut self,
        chunk: ArrayView2<'_, f32>,
        out: &mut ChainOutput,
    ) -> Result<()> {
        let t0 = Instant::now();
        out.events.clear();
        out.bins.timestamps.clear();
        let (n, c) = chunk.dim();
        if c != self.n_channels {
            return Err(Error::shape(
                "chunk",
                format!("{} channels", self.n_channels),
                format!("{c} channels"),
            ));
        }
        match self.engine.clone() {
            // The upload checks the values as it copies them.
            Engine::Gpu(ctx) => *out = self.process_gpu(&ctx, chunk, t0)?,
            Engine::Cpu => {
                check_finite(chunk)?;
                self.process_cpu(chunk, n, t0, out)?
            }
        };
        self.times.chunks += 1;
        Ok(())
    }

    /// Processes one `f32` `(samples, channels)` chunk (µV) already on the device (GPU engine
    /// only): the stages of [`Chain::process`] on the GPU engine, without the upload and the
    /// host scan. The chunk's shape and element type are checked on the host; its values
    /// are not. A NaN or ±inf in the chunk is found on the device by the first stage that
    /// reads it — the filter, or threshold crossing when there is no filter; the reference
    /// in between keeps no state — which rejects the chunk with [`Error::NonFinite`] before
    /// its own state changes, so every stage keeps its state, as with [`Chain::process`].
    /// A finite chunk whose filtered values overflow to ±inf is rejected by threshold
    /// crossing; the filter is then rewound to where it was before the chunk.
    ///
    /// # Errors
    /// [`Error::DeviceArray`] on the CPU engine or for another element type;
    /// [`Error::Shape`] for another rank or channel count; [`Error::NonFinite`] as above;
    /// device errors (see the module docs).
    pub fn process_device(&mut self, chunk: &DeviceArray) -> Result<ChainOutput> {
        let t0 = Instant::now();
        let Engine::Gpu(ctx) = self.engine.clone() else {
            return Err(Error::DeviceArray(
                "process_device needs the GPU engine".into(),
            ));
        };
        let shape = chunk.shape();
        if shape.len() != 2 {
            return Err(Error::shape(
                "chunk",
                "(samples, channels)",
                format!("{shape:?}"),
            ));
        }
        if chunk.dtype() != DType::F32 {
            return Err(Error::DeviceArray(format!(
                "the chain takes f32 samples, got {:?}",
                chunk.dtype()
            )));
        }
        if shape[1] != self.n_channels {
            return Err(Error::shape(
                "chunk",
                format!("{} channels", self.n_channels),
                format!("{} channels", shape[1]),
            ));
        }
        let out = self.stages_gpu(&ctx, chunk.clone(), t0)?;
        self.times.chunks += 1;
        Ok(out)
    }

    fn process_cpu(
        &mut self,
        chunk: ArrayView2<'_, f32>,
        n: usize,
        t0: Instant,
        out: &mut ChainOutput,
    ) -> Result<()> {
        let mut t = Instant::now();
        self.times.upload += t - t0;
        let mut lap = |slot: &mut Duration| {
            let now = Instant::now();
            *slot += now - t;
            t = now;
        };
        // Two scratch buffers reused from chunk to chunk: no allocation (and no first-touch
        // page faults) per chunk for the filter and LRR outputs.
        let c = self.n_channels;
        let len = n * c;
        for b in &mut self.scratch {
            if b.len() < len {
                b.resize(len, 0.0);
            }
        }
        let [a, b] = &mut self.scratch;
        let shape_err = |e: ndarray::ShapeError| Error::shape("chunk", "(samples, channels)", e);
        let filtered = match &mut self.filter {
            Some(f) => {
                let mut fa = ArrayViewMut2::from_shape((n, c), &mut a[..len]).map_err(shape_err)?;
                // `Chain::process_into` checked the chunk finite.
                f.process_finite_into(chunk, fa.view_mut())?;
                ArrayView2::from_shape((n, c), &a[..len]).map_err(shape_err)?
            }
            None => chunk.view(),
        };
        lap(&mut self.times.filter);
        let fb = ArrayViewMut2::from_shape((n, c), &mut b[..len]).map_err(shape_err)?;
        let referenced = if self.reference.host_into(filtered, fb)? {
            ArrayView2::from_shape((n, c), &b[..len]).map_err(shape_err)?
        } else {
            filtered
        };
        lap(&mut self.times.reference);
        self.detect.process_into(referenced, &mut out.events)?;
        lap(&mut self.times.threshold);
        self.bin
            .process_events_into(&out.events, n, self.n_channels, &mut out.bins)?;
        lap(&mut self.times.binning);
        Ok(())
    }

    fn process_gpu(
        &mut self,
        ctx: &std::sync::Arc<GpuContext>,
        chunk: ArrayView2<'_, f32>,
        t0: Instant,
    ) -> Result<ChainOutput> {
        let profile = self.settings.profile_stages;
        let sync = |ctx: &GpuContext| if profile { ctx.wait_idle() } else { Ok(()) };
        // One upload buffer for the stream: no buffer to make, and no fresh pages for the
        // driver to fault in, per chunk. The copy into it checks the values too (one read of
        // the chunk); after a non-finite value it holds a part of the rejected chunk, which
        // the next chunk overwrites.
        let bytes = (chunk.len() * 4) as u64;
        let buffer = ctx.scoped(|| {
            let buffer = reusable_output(ctx, &mut self.upload, bytes, "chain-upload")?;
            upload_checked(ctx, &buffer, chunk)?;
            Ok(buffer)
        })?;
        let up = DeviceArray::from_buffer(ctx, buffer, chunk.shape().to_vec(), DType::F32);
        sync(ctx)?;
        self.stages_gpu(ctx, up, t0)
    }

    /// The device stages on `up`, timing from `t0` (the upload's start); after an error every
    /// stage is back where it was before the chunk.
    fn stages_gpu(
        &mut self,
        ctx: &std::sync::Arc<GpuContext>,
        up: DeviceArray,
        t0: Instant,
    ) -> Result<ChainOutput> {
        let marks = (
            self.filter.as_ref().map(BandpassFilter::mark),
            self.detect.mark(),
            self.bin.mark(),
        );
        let rewind = |chain: &mut Self| {
            let (filter, detect, bin) = marks;
            if let (Some(f), Some(m)) = (&mut chain.filter, filter) {
                f.rewind(m);
            }
            chain.detect.rewind(detect);
            chain.bin.rewind(bin);
        };
        let one_submission = !self.settings.profile_stages && up.shape()[0] > 0;
        if one_submission {
            match self.run_stages_gpu_at_once(ctx, &up, t0) {
                Ok(Some(out)) => return Ok(out),
                // A stage found something to report or to redo (a non-finite value, more
                // events than slots): the stage-by-stage path below says what, or redoes it.
                Ok(None) => rewind(self),
                Err(e) => {
                    rewind(self);
                    return Err(e);
                }
            }
        }
        let out = self.run_stages_gpu(ctx, up, t0);
        if out.is_err() {
            rewind(self);
        }
        out
    }

    /// The device stages on the non-empty chunk `up` recorded one after the other and
    /// submitted together, with one read-back of their status words, the events and the bins:
    /// one round trip per chunk. `None` when a status word is set or a channel found more
    /// events than it had slots; then the stages have moved on and the caller rewinds them.
    fn run_stages_gpu_at_once(
        &mut self,
        ctx: &std::sync::Arc<GpuContext>,
        up: &DeviceArray,
        t0: Instant,
    ) -> Result<Option<ChainOutput>> {
        let mut t = Instant::now();
        self.times.upload += t - t0;
        let mut lap = |slot: &mut Duration| {
            let now = Instant::now();
            *slot += now - t;
            t = now;
        };
        let mut commands = Vec::with_capacity(4);
        let mut checks = Vec::with_capacity(3);
        let mut take = |staged: Staged, commands: &mut Vec<wgpu::CommandBuffer>| {
            commands.push(staged.commands);
            checks.extend(staged.checks);
        };
        let filtered = match &mut self.filter {
            Some(f) => {
                let (out, staged) = f.stage_device(up)?;
                take(staged, &mut commands);
                out
            }
            None => up.clone(),
        };
        lap(&mut self.times.filter);
        let referenced = match &mut self.reference {
            Reference::Lrr(l) => {
                let (out, staged) = l.stage_transform_device(&filtered)?;
                commands.extend(staged);
                out
            }
            Reference::Car(c) => {
                let (out, staged) = c.stage_device(&filtered)?;
                take(staged, &mut commands);
                out
            }
            Reference::None => filtered,
        };
        lap(&mut self.times.reference);
        let (dev_events, staged) = self.detect.stage_device(&referenced)?;
        take(staged, &mut commands);
        lap(&mut self.times.threshold);
        let (dev_bins, staged) = self.bin.stage_device_events(&dev_events)?;
        if let Some(staged) = staged {
            take(staged, &mut commands);
        }
        let mut reads: Vec<(&wgpu::Buffer, u64, u64)> = checks.iter().map(|b| (b, 0, 4)).collect();
        reads.extend(GpuThreshold::event_reads(&dev_events));
        let bins_bytes = (dev_bins.n_bins * self.n_channels * 4) as u64;
        if bins_bytes > 0 {
            reads.push((dev_bins.values.buffer(), 0, bins_bytes));
        }
        let bytes = ctx.scoped(|| ctx.submit_all_and_read(commands, ctx.encoder(), &reads))?;
        let words = 4 * checks.len();
        if bytes.len() < words || bytes[..words].iter().any(|&b| b != 0) {
            return Ok(None);
        }
        let [counts, slots] = GpuThreshold::event_reads(&dev_events);
        let events_end = words + (counts.2 + slots.2) as usize;
        let Some(events) = GpuThreshold::decode_read(&dev_events, &bytes[words..events_end]) else {
            return Ok(None);
        };
        let vals: Vec<f32> = bytemuck::pod_collect_to_vec(&bytes[events_end..]);
        let values = Array2::from_shape_vec((dev_bins.n_bins, self.n_channels), vals)
            .map_err(|e| Error::Readback(e.to_string()))?;
        lap(&mut self.times.binning);
        Ok(Some(ChainOutput {
            events,
            bins: self.binned(dev_bins.first_bin, values),
        }))
    }

    /// Bins `values` (the rows of bins `first_bin..`) with their timestamps.
    fn binned(&self, first_bin: u64, values: Array2<f32>) -> Binned {
        let b = &self.settings.binning;
        let timestamps = (0..values.nrows() as u64)
            .map(|i| b.t0 + (first_bin + i) as f64 * b.bin_duration)
            .collect();
        Binned {
            first_bin,
            values,
            timestamps,
        }
    }

    /// [`Chain::stages_gpu`] without the rewind.
    fn run_stages_gpu(
        &mut self,
        ctx: &std::sync::Arc<GpuContext>,
        up: DeviceArray,
        t0: Instant,
    ) -> Result<ChainOutput> {
        let profile = self.settings.profile_stages;
        let sync = |ctx: &GpuContext| if profile { ctx.wait_idle() } else { Ok(()) };
        let mut t = Instant::now();
        self.times.upload += t - t0;
        let mut lap = |slot: &mut Duration| {
            let now = Instant::now();
            *slot += now - t;
            t = now;
        };
        let filtered = match &mut self.filter {
            Some(f) => f.process_device(&up)?,
            None => up,
        };
        sync(ctx)?;
        lap(&mut self.times.filter);
        let referenced = self.reference.device(filtered)?;
        sync(ctx)?;
        lap(&mut self.times.reference);
        let dev_events = self.detect.process_device(&referenced)?;
        sync(ctx)?;
        lap(&mut self.times.threshold);
        let dev_bins = self.bin.process_device_events(&dev_events)?;
        // Events and bins come down in one read-back.
        let (events, values) = if dev_bins.n_bins == 0 {
            let events = self.detect.events_to_host(&dev_events)?;
            (events, Array2::zeros((0, self.n_channels)))
        } else {
            let (events, values) = self
                .detect
                .events_and_array_to_host(&dev_events, &dev_bins.values)?;
            let values = values
                .into_dimensionality()
                .map_err(|e| Error::Readback(e.to_string()))?;
            (events, values)
        };
        lap(&mut self.times.binning);
        Ok(ChainOutput {
            events,
            bins: self.binned(dev_bins.first_bin, values),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::noise_of;

    #[test]
    fn noise_is_median_abs_over_0_6745() {
        let n = noise_of([1.0f32, -3.0, 2.0].into_iter());
        assert!((n - (2.0 / 0.6745) as f32).abs() < 1e-6);
        let n = noise_of([1.0f32, -3.0, 2.0, -4.0].into_iter());
        assert!((n - (2.5 / 0.6745) as f32).abs() < 1e-6);
        assert_eq!(noise_of(std::iter::empty()), 0.0);
    }
}
