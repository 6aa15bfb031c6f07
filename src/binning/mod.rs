//! Binned kernel activation (SPEC §1; seed: `ezmsg.event.kernel_activation`).
//!
//! Events — the nonzero samples of a dense chunk, or sparse [`Event`]s — are convolved with a
//! causal kernel and aggregated into bins of `bin_duration` seconds:
//!
//! * kernels, in samples with `τs = tau·fs`: Count (`k(d) = [d = 0]`),
//!   Exponential `k(d) = exp(−d/τs)`, Alpha `k(d) = (d/τs)·exp(−d/τs)`; with `normalize`
//!   (default) Exponential and Alpha weights are divided by `τs` so the kernel integrates to 1;
//! * activation `a[s] = Σ_{t_j ≤ s} w_j·k(s − t_j)`, `w = value` if `scale_by_value`, else 1;
//! * aggregations: Sum (`Σ_{s∈bin} a[s]`), Mean (Sum / bin length in samples), Max
//!   (`max_{s∈bin} a[s]`), Last (for Count the cumulative `Σ w` of every event before the bin's
//!   end since the stream began; for Exponential/Alpha `Σ_{t_j < b_(k+1)} w_j·k(b_(k+1) − t_j)`,
//!   the activation at the bin's end boundary);
//! * `rate_normalize` divides every output by `bin_duration`.
//!
//! Bin `k` covers stream samples `[b_k, b_(k+1))`, `b_k = floor(k·bin_duration·fs)` computed
//! exactly on the decimal values written (see [`crate::exact`]); sample 0 is the stream's first
//! sample. Bin `k` is emitted by the chunk that delivers sample `b_(k+1) − 1`, with timestamp
//! `t0 + k·bin_duration`. Any chunking of a stream gives the same concatenated output
//! (bit-identical for integer counts).
//!
//! # Engines and error bounds
//! Both engines share the algorithm: the exponential and alpha kernels are linear
//! recurrences, carried across bins and chunks as a state `(E, A)` (the exponential and alpha
//! activations just before the next sample). Runs of samples without events are crossed in one
//! jump whose factors `d^L`, `Σ_{i<L} d^i` and `Σ_{i<L} i·d^i` (with `d = exp(−1/τs)`) are
//! composed from a table of powers of two computed in `f64`, adding positive terms only
//! — so sparse input costs `O(events + bins)` and no cancellation occurs.
//!
//! * CPU: `f64` state and accumulators, one rounding to `f32` at the output. Error ≤ 1e-12
//!   relative to the largest activation of the bin (in practice a few `f64` ulps).
//! * GPU: `f32`, with `d` carried as a two-term (`hi + lo`) constant so that stepping the
//!   recurrence sample by sample does not drift. Integer counts (Count without
//!   `scale_by_value`) are exact (carried in `u32`, the cumulative Last count in 64 bits),
//!   up to the `f32` output's `2²⁴`. Exponential/Alpha: error ≤ `2·10⁻⁵ × max activation`
//!   of the bin for bins up to 10⁵ samples; Count with `scale_by_value`: ≤ `n·2⁻²⁴·Σ|w|`
//!   for `n` events summed.
//!
//! # Where this differs from the seed
//! Following SPEC §1: exact decimal bin edges (the seed truncates an accumulated float, so
//! `0.0157 s × 30 kHz` edges land one sample early and can move with the chunking); Alpha is
//! the exact kernel (the seed's update depends on how time is stepped); Mean is the mean of
//! `a[s]` over the bin (the seed reads one midpoint sample); Max is computed (the seed returns
//! zeros); Exponential/Alpha + Sum sum the activation (the seed sums raw event weights); a
//! chunk that completes no bin still advances the decay clock; Count ignores `normalize`
//! (the seed's sparse Count carries partial-bin events at weight `1/τs`).
//! Sparse events carry absolute stream samples ([`Event`]), so threshold crossing's output
//! feeds binning unchanged; an event may lie anywhere in the open bin or the chunk.

mod cpu;
mod gpu;
mod jump;

use ndarray::{Array2, ArrayView2};

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::events::{DeviceEvents, Event};
use crate::exact::BinEdges;
use crate::gpu::{DeviceArray, Staged, StreamMark};
use crate::state::{Fingerprint, StateReader, StateWriter};
use crate::validate::{device_chunk_dims, needs_gpu};

pub(crate) use jump::JumpTable;

/// The activation kernel.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kernel {
    /// Event counting: `k(d) = [d = 0]`.
    Count,
    /// `k(d) = exp(−d/τs)`, `tau` in seconds.
    Exponential {
        /// Time constant in seconds.
        tau: f64,
    },
    /// `k(d) = (d/τs)·exp(−d/τs)`, peaking at `d = τs`; `tau` in seconds.
    Alpha {
        /// Time constant (time to peak) in seconds.
        tau: f64,
    },
}

/// How the activation is aggregated within a bin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aggregation {
    /// The activation at the bin's end boundary (Count: cumulative count since the start).
    Last,
    /// Sum over the bin divided by its length in samples.
    Mean,
    /// Sum of the activation over the bin's samples.
    Sum,
    /// Maximum of the activation over the bin's samples.
    Max,
}

/// Settings of [`BinnedActivation`]. Defaults are the seed's (Exponential, τ 50 ms, 20 ms
/// bins, Last, `normalize`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BinningSettings {
    /// The kernel.
    pub kernel: Kernel,
    /// Bin duration in seconds.
    pub bin_duration: f64,
    /// Aggregation within a bin.
    pub aggregation: Aggregation,
    /// Weight each event by its value (else by 1).
    pub scale_by_value: bool,
    /// Divide Exponential/Alpha weights by `τs` so the kernel integrates to 1 (Count ignores it).
    pub normalize: bool,
    /// Divide every output by `bin_duration` (events per second for Count).
    pub rate_normalize: bool,
    /// Time of the stream's first sample, in seconds (bin `k`'s timestamp is
    /// `t0 + k·bin_duration`).
    pub t0: f64,
    /// Absolute sample index of the stream's first sample (default 0). Bins are aligned to
    /// the stream's start; event samples are absolute and count from 0, so events from a
    /// [`crate::ThresholdCrossing`] with the same `first_sample` feed in unchanged.
    pub first_sample: u64,
}

impl Default for BinningSettings {
    fn default() -> Self {
        BinningSettings {
            kernel: Kernel::Exponential { tau: 0.050 },
            bin_duration: 0.020,
            aggregation: Aggregation::Last,
            scale_by_value: false,
            normalize: true,
            rate_normalize: false,
            t0: 0.0,
            first_sample: 0,
        }
    }
}

/// Bins emitted by one chunk, on the host. The default holds no bins (for the `_into`
/// calls, which reuse its buffers).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Binned {
    /// Index of the first bin in `values` (bins since the stream began).
    pub first_bin: u64,
    /// `(bins, channels)` outputs.
    pub values: Array2<f32>,
    /// Timestamp of each bin, `t0 + k·bin_duration`, in seconds.
    pub timestamps: Vec<f64>,
}

/// Bins emitted by one chunk, left on the device (`values` has shape `(bins, channels)`;
/// for an empty result it may hold no buffer data).
#[derive(Debug, Clone)]
pub struct DeviceBinned {
    /// Index of the first bin.
    pub first_bin: u64,
    /// Number of bins.
    pub n_bins: usize,
    /// `(bins, channels)` `f32` values.
    pub values: DeviceArray,
}

/// Element types accepted as dense input: every nonzero sample is an event whose value is
/// the sample's value.
pub trait DenseSample: Copy + Send + Sync + 'static {
    /// The sample as `f32` (`true` → 1).
    fn to_f32(self) -> f32;
    /// Whether the type is a byte raster (`u8`, `bool`).
    const IS_BYTE: bool;
    /// The sample as a byte (byte rasters only).
    fn to_u8(self) -> u8;
    /// The slice itself when the type is `f32` (lets uploads and scans skip a conversion).
    fn as_f32(s: &[Self]) -> Option<&[f32]> {
        let _ = s;
        None
    }
}
impl DenseSample for f32 {
    fn to_f32(self) -> f32 {
        self
    }
    fn as_f32(s: &[Self]) -> Option<&[f32]> {
        Some(s)
    }
    const IS_BYTE: bool = false;
    fn to_u8(self) -> u8 {
        0
    }
}
impl DenseSample for u8 {
    fn to_f32(self) -> f32 {
        self as f32
    }
    const IS_BYTE: bool = true;
    fn to_u8(self) -> u8 {
        self
    }
}
impl DenseSample for bool {
    fn to_f32(self) -> f32 {
        self as u8 as f32
    }
    const IS_BYTE: bool = true;
    fn to_u8(self) -> u8 {
        self as u8
    }
}

/// Operator tag of a saved binning state.
const STATE_TAG: [u8; 4] = *b"BIN ";

/// Every channel's stream state in the engines' common form (saved states): the carried
/// recurrences, the open bin's partial sum and max (−∞ before its first sample), and the
/// cumulative weight and event count (Count). Fields a kernel does not use are 0.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct ChannelStates {
    pub e: Vec<f64>,
    pub a: Vec<f64>,
    pub psum: Vec<f64>,
    pub pmax: Vec<f64>,
    pub cum: Vec<f64>,
    pub cum_n: Vec<u64>,
}

impl ChannelStates {
    /// The initial state of `nc` channels.
    pub(crate) fn fresh(nc: usize) -> Self {
        ChannelStates {
            e: vec![0.0; nc],
            a: vec![0.0; nc],
            psum: vec![0.0; nc],
            pmax: vec![f64::NEG_INFINITY; nc],
            cum: vec![0.0; nc],
            cum_n: vec![0; nc],
        }
    }

    /// The float fields, in their saved order.
    fn floats(&self) -> [&Vec<f64>; 5] {
        [&self.e, &self.a, &self.psum, &self.pmax, &self.cum]
    }
}

/// Longest sparse chunk processed in one piece (relative samples stay below 2³¹ on the GPU).
const SPARSE_SUBCHUNK: u64 = 1 << 30;

/// The validated settings in the form both engines use.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Params {
    pub kind: u32,        // 0 count, 1 exponential, 2 alpha
    pub agg: Aggregation, // aggregation
    pub scale_by_value: bool,
    pub wscale: f64, // weight multiplier: 1/τs with normalize (not Count), else 1
    pub rate: f64,   // output multiplier from rate_normalize
}

/// One piece of a bin inside the current chunk: samples `[start, end)` relative to the chunk
/// (`start` is 0 for the open bin continued from earlier chunks).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Segment {
    pub start: u64,
    pub end: u64,
    /// Output row, or `None` for the bin left open at the chunk's end.
    pub row: Option<usize>,
    /// Output multiplier (1/bin length for Mean, times the rate factor).
    pub out_scale: f64,
    /// Whether the segment continues the open bin carried from earlier chunks.
    pub continues: bool,
}

/// The chunk's bins: which complete, and the segments they make.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub first_bin: u64,
    pub n_bins: usize,
    pub segments: Vec<Segment>,
}

/// Streaming binned kernel activation on either engine.
///
/// ```no_run
/// use neurokernels::{Engine, BinnedActivation, BinningSettings, Kernel, Aggregation};
/// let mut op = BinnedActivation::new(&Engine::auto()?, BinningSettings {
///     kernel: Kernel::Count, aggregation: Aggregation::Sum, ..Default::default() }, 30_000.0)?;
/// let chunk = ndarray::Array2::<f32>::zeros((600, 384));
/// let bins = op.process_dense(chunk.view())?; // one 20 ms bin of counts
/// # Ok::<(), neurokernels::Error>(())
/// ```
#[derive(Debug)]
pub struct BinnedActivation {
    settings: BinningSettings,
    fs: f64,
    edges: BinEdges,
    params: Params,
    jumps: JumpTable,
    n_channels: Option<usize>,
    /// Samples consumed since the stream began.
    pos: u64,
    /// First bin not yet emitted.
    next_bin: u64,
    engine: EngineState,
    /// Buffers the event path reuses from chunk to chunk.
    scratch: Scratch,
}

/// What the event path reuses from chunk to chunk, so a warm stream allocates nothing.
#[derive(Debug, Default)]
struct Scratch {
    segments: Vec<Segment>,
    buckets: Buckets,
    fill: Vec<usize>,
    pairs: Vec<(u32, f32)>,
}

#[derive(Debug)]
enum EngineState {
    Cpu(Box<cpu::CpuState>),
    Gpu(Box<gpu::GpuBinning>),
}

impl BinnedActivation {
    /// Where the stream stands (see [`StreamMark`]).
    pub(crate) fn mark(&self) -> StreamMark {
        let gpu = match &self.engine {
            EngineState::Gpu(g) => Some(g.mark()),
            EngineState::Cpu(_) => None,
        };
        StreamMark {
            n_channels: self.n_channels,
            pos: self.pos,
            next_bin: self.next_bin,
            gpu,
        }
    }

    /// Back to `mark`, taken on the GPU engine before the one chunk processed since.
    pub(crate) fn rewind(&mut self, mark: StreamMark) {
        if let (EngineState::Gpu(g), Some(m)) = (&mut self.engine, mark.gpu) {
            g.rewind(m);
            (self.n_channels, self.pos, self.next_bin) = (mark.n_channels, mark.pos, mark.next_bin);
        }
    }

    /// A new stream at sample rate `fs` (Hz). Errors name any invalid setting.
    pub fn new(engine: &Engine, settings: BinningSettings, fs: f64) -> Result<Self> {
        let edges = BinEdges::new(settings.bin_duration, fs)?;
        if !settings.t0.is_finite() {
            return Err(Error::setting(
                "t0",
                format!("must be finite, got {}", settings.t0),
            ));
        }
        let (kind, tau) = match settings.kernel {
            Kernel::Count => (0, None),
            Kernel::Exponential { tau } => (1, Some(tau)),
            Kernel::Alpha { tau } => (2, Some(tau)),
        };
        let tau_s = match tau {
            None => 1.0,
            Some(t) if t > 0.0 && t.is_finite() => {
                let ts = t * fs;
                if !(ts.is_finite() && ts > 0.0) {
                    return Err(Error::setting(
                        "tau",
                        format!("tau·fs = {ts} is not usable"),
                    ));
                }
                ts
            }
            Some(t) => {
                return Err(Error::setting(
                    "tau",
                    format!("must be finite and > 0, got {t}"),
                ))
            }
        };
        let params = Params {
            kind,
            agg: settings.aggregation,
            scale_by_value: settings.scale_by_value,
            wscale: if kind != 0 && settings.normalize {
                1.0 / tau_s
            } else {
                1.0
            },
            rate: if settings.rate_normalize {
                1.0 / settings.bin_duration
            } else {
                1.0
            },
        };
        let jumps = JumpTable::new(tau_s);
        let state = match engine {
            Engine::Cpu => EngineState::Cpu(Box::default()),
            Engine::Gpu(ctx) => {
                EngineState::Gpu(Box::new(gpu::GpuBinning::new(ctx, &params, &jumps)?))
            }
        };
        Ok(BinnedActivation {
            settings,
            fs,
            edges,
            params,
            jumps,
            n_channels: None,
            pos: 0,
            next_bin: 0,
            engine: state,
            scratch: Scratch::default(),
        })
    }

    /// The settings.
    pub fn settings(&self) -> &BinningSettings {
        &self.settings
    }
    /// The sample rate.
    pub fn fs(&self) -> f64 {
        self.fs
    }
    /// Absolute sample index of the next sample (`first_sample` + samples consumed).
    pub fn position(&self) -> u64 {
        self.settings.first_sample + self.pos
    }
    /// Bins emitted so far.
    pub fn bins_emitted(&self) -> u64 {
        self.next_bin
    }
    /// Channel count (fixed by the first chunk).
    pub fn n_channels(&self) -> Option<usize> {
        self.n_channels
    }
    /// Exact bin edges of this stream.
    pub fn edges(&self) -> &BinEdges {
        &self.edges
    }

    /// Starts a new stream: zero state, position 0, channel count unset.
    pub fn reset(&mut self) {
        self.pos = 0;
        self.next_bin = 0;
        self.n_channels = None;
        match &mut self.engine {
            EngineState::Cpu(s) => **s = cpu::CpuState::default(),
            EngineState::Gpu(g) => g.reset(),
        }
    }

    /// The fingerprint a saved state must carry: the sample rate and every setting.
    fn fingerprint(&self) -> u64 {
        let st = &self.settings;
        let (kind, tau) = match st.kernel {
            Kernel::Count => (0, 0.0),
            Kernel::Exponential { tau } => (1, tau),
            Kernel::Alpha { tau } => (2, tau),
        };
        Fingerprint::new()
            .f64(self.fs)
            .u64(kind)
            .f64(tau)
            .f64(st.bin_duration)
            .u64(st.aggregation as u64)
            .u64(st.scale_by_value as u64)
            .u64(st.normalize as u64)
            .u64(st.rate_normalize as u64)
            .f64(st.t0)
            .u64(st.first_sample)
            .finish()
    }

    /// Saves the stream state (channel count, samples consumed, bins emitted and, per
    /// channel, the carried recurrences, the open bin's partial sum and max and the
    /// cumulative weight and count) in the format of [`crate::state`], for
    /// [`BinnedActivation::restore_state`] on an operator of the same settings and sample
    /// rate, on either engine.
    ///
    /// The GPU engine's `f32` state is saved widened to `f64`; the CPU engine's `f64` state
    /// is rounded to `f32` on the GPU (integer counts are carried exactly on both). On the
    /// engine that saved it the stream resumes bit for bit; on the other, within the bounds
    /// of the [module docs](self).
    ///
    /// # Errors
    /// GPU errors of the read-back (device lost).
    pub fn save_state(&self) -> Result<Vec<u8>> {
        let (mut w, nc) =
            StateWriter::stream(STATE_TAG, self.fingerprint(), self.n_channels, self.pos);
        w.u64(self.next_bin);
        if nc > 0 {
            let st = match &self.engine {
                EngineState::Cpu(s) => s.channel_states(nc),
                EngineState::Gpu(g) => g.read_state(nc)?,
            };
            for v in st.floats() {
                w.f64s(v.iter().copied());
            }
            for &n in &st.cum_n {
                w.u64(n);
            }
        }
        Ok(w.finish())
    }

    /// Reads and checks the fields of a saved state: channel count, samples consumed, bins
    /// emitted, channel states.
    fn read_state(&self, bytes: &[u8]) -> Result<(usize, u64, u64, ChannelStates)> {
        let bad = |what: String| Error::State(what);
        let mut r = StateReader::open(bytes, STATE_TAG, self.fingerprint())?;
        let nc = r.count("channel count", u32::MAX as u64)?;
        let pos = r.u64()?;
        let next_bin = r.u64()?;
        // The open bin holds the next sample; the position stays addressable.
        let edges_ok = match (self.edges.edge(next_bin), self.edges.edge(next_bin + 1)) {
            (Ok(b0), Ok(b1)) => b0 <= pos && pos < b1,
            _ => false,
        };
        if !edges_ok
            || (nc == 0 && pos != 0)
            || pos.checked_add(self.settings.first_sample).is_none()
        {
            return Err(bad(format!(
                "position {pos} and {next_bin} bins emitted do not agree with the bin edges"
            )));
        }
        if nc == 0 {
            r.finish()?;
            return Ok((0, 0, 0, ChannelStates::default()));
        }
        let e = r.f64s("E", nc)?;
        let a = r.f64s("A", nc)?;
        let psum = r.f64s("partial sum", nc)?;
        let pmax = r.f64s("partial max", nc)?;
        let cum = r.f64s("cumulative weight", nc)?;
        let mut cum_n = Vec::with_capacity(nc);
        for _ in 0..nc {
            cum_n.push(r.u64()?);
        }
        r.finish()?;
        let st = ChannelStates {
            e,
            a,
            psum,
            pmax,
            cum,
            cum_n,
        };
        let finite = st.e.iter().chain(&st.a).chain(&st.psum).chain(&st.cum);
        if finite.clone().any(|v| !v.is_finite())
            || st.pmax.iter().any(|&v| v.is_nan() || v == f64::INFINITY)
        {
            return Err(bad("non-finite binning state value".into()));
        }
        Ok((nc, pos, next_bin, st))
    }

    /// Restores a state saved by [`BinnedActivation::save_state`] (on either engine): the
    /// stream continues from where it was saved, its position, bins emitted and channel
    /// count included.
    ///
    /// # Errors
    /// [`Error::State`] for bytes that are not a valid state of these settings and sample
    /// rate (truncated, corrupted, other settings, a position that disagrees with the bin
    /// edges, a non-finite value, one beyond the GPU's `f32`), with the operator unchanged.
    /// A GPU failure while uploading (out of memory, device lost) leaves the operator reset.
    pub fn restore_state(&mut self, bytes: &[u8]) -> Result<()> {
        let (nc, pos, next_bin, st) = self.read_state(bytes)?;
        if nc == 0 {
            self.reset();
            return Ok(());
        }
        match &mut self.engine {
            EngineState::Cpu(s) => s.set_channel_states(st),
            EngineState::Gpu(g) => {
                if let Err(e) = g.write_state(&st) {
                    if !matches!(e, Error::State(_)) {
                        self.reset();
                    }
                    return Err(e);
                }
            }
        }
        (self.pos, self.next_bin, self.n_channels) = (pos, next_bin, Some(nc));
        Ok(())
    }

    fn engine_is_gpu(&self) -> bool {
        matches!(self.engine, EngineState::Gpu(_))
    }

    fn check_channels(&self, n: usize) -> Result<()> {
        if n == 0 {
            return Err(Error::shape("chunk", "at least one channel", "0 channels"));
        }
        match self.n_channels {
            Some(c) if c != n => Err(Error::shape(
                "chunk",
                format!("{c} channels (fixed by the first chunk)"),
                format!("{n} channels"),
            )),
            _ => Ok(()),
        }
    }

    /// The bins completed by a chunk of `n` samples, and its segments.
    fn plan(&self, n: u64) -> Result<Plan> {
        self.plan_in(n, Vec::new())
    }

    /// [`Self::plan`] with its segments written into `segments` (cleared first).
    fn plan_in(&self, n: u64, mut segments: Vec<Segment>) -> Result<Plan> {
        segments.clear();
        if n > u32::MAX as u64 {
            return Err(Error::shape(
                "chunk",
                "at most 2³² − 1 samples",
                format!("{n} samples"),
            ));
        }
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| e.checked_add(self.settings.first_sample).is_some())
            .ok_or_else(|| Error::PositionOverflow("stream position".into()))?;
        let mut k = self.next_bin;
        loop {
            let b0 = self.edges.edge(k)?;
            let b1 = self.edges.edge(k + 1)?;
            let start = b0.max(self.pos) - self.pos;
            let continues = k == self.next_bin;
            let len = (b1 - b0) as f64;
            let mean = if self.params.agg == Aggregation::Mean {
                1.0 / len
            } else {
                1.0
            };
            if b1 <= end {
                segments.push(Segment {
                    start,
                    end: b1 - self.pos,
                    row: Some((k - self.next_bin) as usize),
                    out_scale: mean * self.params.rate,
                    continues,
                });
                k += 1;
            } else {
                segments.push(Segment {
                    start,
                    end: n,
                    row: None,
                    out_scale: mean * self.params.rate,
                    continues,
                });
                break;
            }
        }
        Ok(Plan {
            first_bin: self.next_bin,
            n_bins: (k - self.next_bin) as usize,
            segments,
        })
    }

    fn timestamps(&self, plan: &Plan) -> Vec<f64> {
        let mut ts = Vec::new();
        self.timestamps_into(plan, &mut ts);
        ts
    }

    /// [`Self::timestamps`] into `ts` (cleared first).
    fn timestamps_into(&self, plan: &Plan, ts: &mut Vec<f64>) {
        ts.clear();
        ts.extend(
            (0..plan.n_bins as u64).map(|i| {
                self.settings.t0 + (plan.first_bin + i) as f64 * self.settings.bin_duration
            }),
        );
    }

    fn commit(&mut self, n: u64, plan: &Plan, n_channels: usize) {
        self.pos += n;
        self.next_bin += plan.n_bins as u64;
        self.n_channels = Some(n_channels);
    }

    /// Processes a dense `(samples, channels)` chunk (`f32`, `u8` or `bool`; any strides).
    /// Non-finite values are an error naming the sample and channel.
    pub fn process_dense<T: DenseSample>(&mut self, chunk: ArrayView2<'_, T>) -> Result<Binned> {
        let (n, c) = chunk.dim();
        self.check_channels(c)?;
        // A chunk larger than one GPU binding runs as consecutive sub-chunks: streaming is
        // chunk-invariant, so the output is the same.
        let rows = match &self.engine {
            EngineState::Gpu(g) => g.max_rows(c, T::IS_BYTE),
            EngineState::Cpu(_) => usize::MAX,
        };
        // The CPU engine scans for non-finite values within its own pass over the data, the
        // GPU engine within its upload of a chunk that fits one binding; a longer chunk is
        // scanned whole first, so that no sub-chunk is taken before a bad one is found.
        if !T::IS_BYTE && self.engine_is_gpu() && n > rows {
            check_finite(chunk)?;
        }
        if n <= rows {
            return self.dense_unchecked(chunk);
        }
        let first_bin = self.next_bin;
        let mut values = Vec::new();
        let mut timestamps = Vec::new();
        for start in (0..n).step_by(rows) {
            let sub = chunk.slice(ndarray::s![start..(start + rows).min(n), ..]);
            let b = self.dense_unchecked(sub)?;
            values.extend(b.values.iter().copied());
            timestamps.extend(b.timestamps);
        }
        let values = Array2::from_shape_vec((timestamps.len(), c), values)
            .map_err(|e| Error::shape("bins", "rows × channels", e.to_string()))?;
        Ok(Binned {
            first_bin,
            values,
            timestamps,
        })
    }

    /// [`Self::process_dense`] after validation, for a chunk that fits one dispatch.
    fn dense_unchecked<T: DenseSample>(&mut self, chunk: ArrayView2<'_, T>) -> Result<Binned> {
        let (n, c) = chunk.dim();
        let segments = std::mem::take(&mut self.scratch.segments);
        let plan = self.plan_in(n as u64, segments)?;
        let values = match &mut self.engine {
            EngineState::Cpu(s) => match cpu::dense(s, &self.params, &self.jumps, &plan, chunk) {
                Some(v) => v,
                None => {
                    check_finite(chunk)?;
                    return Err(Error::Validation("non-finite value not located".into()));
                }
            },
            EngineState::Gpu(g) => g.dense_host(&plan, chunk)?,
        };
        let ts = self.timestamps(&plan);
        self.commit(n as u64, &plan, c);
        let first_bin = plan.first_bin;
        self.scratch.segments = plan.segments;
        Ok(Binned {
            first_bin,
            values,
            timestamps: ts,
        })
    }

    /// Processes a dense chunk already on the device (`f32` or `u8` of shape
    /// `(samples, channels)`), leaving the bins on the device. GPU engine only.
    ///
    /// The chunk is not scanned for non-finite values here (that would cost a read-back);
    /// a chain validates its input once on the host before upload (SPEC §0).
    pub fn process_device(&mut self, chunk: &DeviceArray) -> Result<DeviceBinned> {
        let (n, c) = device_chunk_dims(chunk)?;
        self.check_channels(c)?;
        let plan = self.plan(n as u64)?;
        let EngineState::Gpu(g) = &mut self.engine else {
            return Err(needs_gpu("process_device"));
        };
        let values = g.dense_device(&plan, chunk)?;
        self.commit(n as u64, &plan, c);
        Ok(DeviceBinned {
            first_bin: plan.first_bin,
            n_bins: plan.n_bins,
            values,
        })
    }

    /// Processes a chunk of `n_samples` samples on `n_channels` channels whose events are
    /// `events` (absolute stream samples, any order; duplicates add).
    ///
    /// Each event must lie in the chunk: `position() ≤ sample < position() + n_samples`; its
    /// channel must be below `n_channels`, its value finite.
    pub fn process_events(
        &mut self,
        events: &[Event],
        n_samples: usize,
        n_channels: usize,
    ) -> Result<Binned> {
        let mut out = Binned::default();
        self.process_events_into(events, n_samples, n_channels, &mut out)?;
        Ok(out)
    }

    /// [`Self::process_events`] writing the bins into `out`, whose buffers are reused: a warm
    /// stream of chunks of at most 2²⁰ samples allocates nothing. On an error the stream's
    /// state is unchanged and `out` holds no bins of this chunk.
    pub fn process_events_into(
        &mut self,
        events: &[Event],
        n_samples: usize,
        n_channels: usize,
        out: &mut Binned,
    ) -> Result<()> {
        self.check_channels(n_channels)?;
        let start = self.position();
        let end = start
            .checked_add(n_samples as u64)
            .ok_or_else(|| Error::PositionOverflow("stream position".into()))?;
        for (i, e) in events.iter().enumerate() {
            if (e.channel as usize) >= n_channels {
                return Err(Error::IndexOutOfRange {
                    what: "event channel",
                    index: e.channel as u64,
                    bound: n_channels as u64,
                });
            }
            if e.sample >= end {
                return Err(Error::IndexOutOfRange {
                    what: "event sample (past the chunk's end)",
                    index: e.sample,
                    bound: end,
                });
            }
            if e.sample < start {
                return Err(Error::IndexOutOfRange {
                    what: "event sample (before the chunk's first sample, position())",
                    index: e.sample,
                    bound: end,
                });
            }
            if !e.value.is_finite() {
                return Err(Error::NonFinite {
                    what: "event value",
                    sample: i,
                    channel: e.channel as usize,
                    value: e.value as f64,
                });
            }
        }
        // The chunk's length only bounds the work through its bins: a very long sparse chunk
        // runs as consecutive sub-chunks (the output does not depend on the chunking).
        if n_samples as u64 <= SPARSE_SUBCHUNK {
            return self.events_unchecked(events, n_samples, n_channels, out);
        }
        self.plan(0)?; // position checks
        let mut sorted: Vec<Event> = events.to_vec();
        sorted.sort_by_key(|e| e.sample);
        let first_bin = self.next_bin;
        let (mut values, mut timestamps) = (Vec::new(), Vec::new());
        let mut at = 0usize;
        let mut done = 0u64;
        let mut b = Binned::default();
        while done < n_samples as u64 {
            let len = (n_samples as u64 - done).min(SPARSE_SUBCHUNK);
            let sub_end = start + done + len;
            let k = at + sorted[at..].partition_point(|e| e.sample < sub_end);
            self.events_unchecked(&sorted[at..k], len as usize, n_channels, &mut b)?;
            values.extend(b.values.iter().copied());
            timestamps.extend_from_slice(&b.timestamps);
            at = k;
            done += len;
        }
        out.values = Array2::from_shape_vec((timestamps.len(), n_channels), values)
            .map_err(|e| Error::shape("bins", "rows × channels", e.to_string()))?;
        out.first_bin = first_bin;
        out.timestamps = timestamps;
        Ok(())
    }

    /// [`Self::process_events`] after validation, for a chunk of at most
    /// [`SPARSE_SUBCHUNK`] samples.
    fn events_unchecked(
        &mut self,
        events: &[Event],
        n_samples: usize,
        n_channels: usize,
        out: &mut Binned,
    ) -> Result<()> {
        let segments = std::mem::take(&mut self.scratch.segments);
        let plan = self.plan_in(n_samples as u64, segments)?;
        let start = self.position();
        let sc = &mut self.scratch;
        bucket_events(
            events,
            n_channels,
            start,
            &mut sc.buckets,
            &mut sc.fill,
            &mut sc.pairs,
        );
        match &mut self.engine {
            EngineState::Cpu(s) => {
                zeroed(&mut out.values, (plan.n_bins, n_channels))?;
                cpu::sparse(
                    s,
                    &self.params,
                    &self.jumps,
                    &plan,
                    &sc.buckets,
                    &mut out.values,
                );
            }
            EngineState::Gpu(g) => {
                out.values =
                    g.sparse_host(&plan, &sc.buckets, n_channels, self.params.scale_by_value)?
            }
        };
        self.timestamps_into(&plan, &mut out.timestamps);
        out.first_bin = plan.first_bin;
        self.commit(n_samples as u64, &plan, n_channels);
        self.scratch.segments = plan.segments;
        Ok(())
    }

    /// Processes events already on the device (e.g. threshold crossing's output), leaving
    /// the bins on the device. The events' chunk must start at this stream's position.
    pub fn process_device_events(&mut self, events: &DeviceEvents) -> Result<DeviceBinned> {
        let n = events.n_samples as u64;
        let plan = self.device_events_plan(events)?;
        let EngineState::Gpu(g) = &mut self.engine else {
            return Err(needs_gpu("process_device_events"));
        };
        let values = g.sparse_device(&plan, events)?;
        self.commit(n, &plan, events.n_channels);
        Ok(DeviceBinned {
            first_bin: plan.first_bin,
            n_bins: plan.n_bins,
            values,
        })
    }

    /// The plan of `events`' chunk, after checking that they continue this stream.
    fn device_events_plan(&self, events: &DeviceEvents) -> Result<Plan> {
        self.check_channels(events.n_channels)?;
        if events.chunk_start != self.position() {
            return Err(Error::shape(
                "device events",
                format!("a chunk starting at sample {}", self.position()),
                format!("a chunk starting at sample {}", events.chunk_start),
            ));
        }
        self.plan(events.n_samples as u64)
    }

    /// [`BinnedActivation::process_device_events`] recorded for a submission shared with the
    /// stages before it (the chain's); see [`Staged`]. No commands for an empty chunk.
    pub(crate) fn stage_device_events(
        &mut self,
        events: &DeviceEvents,
    ) -> Result<(DeviceBinned, Option<Staged>)> {
        let n = events.n_samples as u64;
        let plan = self.device_events_plan(events)?;
        let EngineState::Gpu(g) = &mut self.engine else {
            return Err(needs_gpu("process_device_events"));
        };
        let (values, staged) = g.stage_sparse(&plan, events)?;
        self.commit(n, &plan, events.n_channels);
        let binned = DeviceBinned {
            first_bin: plan.first_bin,
            n_bins: plan.n_bins,
            values,
        };
        Ok((binned, staged))
    }
}

/// Errors with the first non-finite value of a dense chunk (row-wise, vectorised scan).
fn check_finite<T: DenseSample>(chunk: ArrayView2<'_, T>) -> Result<()> {
    for (s, row) in chunk.outer_iter().enumerate() {
        let ok = match row.as_slice().and_then(T::as_f32) {
            Some(r) => r.iter().fold(true, |ok, x| ok & x.is_finite()),
            None => row.iter().all(|x| x.to_f32().is_finite()),
        };
        if !ok {
            if let Some((ch, v)) = row
                .iter()
                .enumerate()
                .find(|(_, x)| !x.to_f32().is_finite())
            {
                return Err(Error::NonFinite {
                    what: "chunk",
                    sample: s,
                    channel: ch,
                    value: v.to_f32() as f64,
                });
            }
        }
    }
    Ok(())
}

/// Events bucketed by channel, sorted by sample within each; samples relative to the chunk.
#[derive(Debug, Clone, Default)]
pub(crate) struct Buckets {
    /// `offsets[c]..offsets[c+1]` index channel `c`'s events.
    pub offsets: Vec<usize>,
    pub rel: Vec<u32>,
    pub value: Vec<f32>,
}

pub(crate) fn bucket_events(
    events: &[Event],
    n_channels: usize,
    chunk_start: u64,
    out: &mut Buckets,
    fill: &mut Vec<usize>,
    pairs: &mut Vec<(u32, f32)>,
) {
    let offsets = &mut out.offsets;
    offsets.clear();
    offsets.resize(n_channels + 1, 0);
    for e in events {
        offsets[e.channel as usize + 1] += 1;
    }
    for c in 0..n_channels {
        offsets[c + 1] += offsets[c];
    }
    fill.clear();
    fill.extend_from_slice(offsets);
    out.rel.clear();
    out.rel.resize(events.len(), 0);
    out.value.clear();
    out.value.resize(events.len(), 0.0);
    for e in events {
        let k = &mut fill[e.channel as usize];
        out.rel[*k] = (e.sample - chunk_start) as u32;
        out.value[*k] = e.value;
        *k += 1;
    }
    // Events usually arrive in time order; then every channel's run already is. Otherwise
    // the run is sorted stably (equal samples keep their order).
    for c in 0..n_channels {
        let run = offsets[c]..offsets[c + 1];
        if !out.rel[run.clone()].is_sorted() {
            pairs.clear();
            pairs.extend(
                out.rel[run.clone()]
                    .iter()
                    .zip(&out.value[run.clone()])
                    .map(|(&t, &v)| (t, v)),
            );
            pairs.sort_by_key(|&(t, _)| t);
            for ((t, v), &(pt, pv)) in out.rel[run.clone()]
                .iter_mut()
                .zip(&mut out.value[run])
                .zip(pairs.iter())
            {
                (*t, *v) = (pt, pv);
            }
        }
    }
}

/// Makes `a` a zeroed `shape` array, reusing its allocation where it is large enough.
fn zeroed(a: &mut Array2<f32>, shape: (usize, usize)) -> Result<()> {
    let (mut v, _) = std::mem::take(a).into_raw_vec_and_offset();
    v.clear();
    v.resize(shape.0 * shape.1, 0.0);
    *a = Array2::from_shape_vec(shape, v)
        .map_err(|e| Error::shape("bins", "rows × channels", e.to_string()))?;
    Ok(())
}
