//! Spike encoders (SPEC §4; seed: `spyx.data`): rate, latency and angle codes, shift
//! augmentation, and `numpy.packbits`-compatible bit packing along time.
//!
//! Every encoder runs on both engines with the same constructor, settings, outputs and
//! errors, and takes host views ([`ndarray`], any strides) or device-resident `f32`
//! [`DeviceArray`]s, returning host arrays or `u8` [`DeviceArray`]s. Spikes are `u8` (0 or 1)
//! or, with `packed`, bits packed along the time axis exactly as `numpy.packbits(axis=time)`
//! lays them out: time step `t` is bit `7 − t % 8` (the most significant bit first) of byte
//! `t / 8`, the last byte zero-padded at its low end. A packed device array holds those bytes
//! four to a 32-bit word (little-endian), so [`DeviceArray::to_host`] returns numpy's bytes
//! unchanged and Python can `numpy.unpackbits(a, axis=time, count=T)` them.
//!
//! # Definitions
//!
//! * **Rate** ([`RateEncoder`]): input `(B, F…)` → `(B, T, F…)`, or `(T, B, F…)` with
//!   `time_major` (packed: `(B, ⌈T/8⌉, F…)` / `(⌈T/8⌉, B, F…)`). Element `(b, f)` spikes at step
//!   `t` iff `u < ⌈p·2³²⌉` with `p = clamp(x·max_r, 0, 1)` computed in `f32` and `u` a 32-bit
//!   Philox4x32-10 word: key = the seed, counter `(⌊f/4⌋, t, s mod 2³², ⌊s/2³²⌋)` with
//!   `s = first_sample + b` the sample's position in the encoder's stream, word `f mod 4`
//!   ([`crate::rng`]). The threshold is an exact integer in `[0, 2³²]`, so `P(spike) = p`
//!   up to the `f32` rounding of `x·max_r` (p = 1 always fires, p = 0 never does), and the
//!   spike of an element depends only on `(seed, s, t, f)`: both engines, any batch split and
//!   any output layout give the same spikes.
//! * **Latency** ([`LatencyEncoder`]): input `(…, C)` → `(T, …, C)` (packed `(⌈T/8⌉, …, C)`),
//!   one spike at `t = round_half_even((1 − clip(x, 0, 1))·(T − 1))` evaluated in `f32`
//!   (as the seed does), none where `clip(x, 0, 1) ≤ threshold` (compared in `f32`).
//! * **Angle** ([`AngleEncoder`]): input of any shape `(…)` → `(…, n)`, one-hot at
//!   `clip(digitize(x, linspace(min, max, n)) − 1, 0, n − 1)`, with `linspace` evaluated in
//!   `f64` exactly as numpy does and bins left-closed (`bins[i] ≤ x < bins[i+1]`); `x` is
//!   compared with the `f64` bins exactly (as numpy promotes `f32` input).
//! * **Shift** ([`ShiftAugment`]): `numpy.roll` along the chosen axes by an integer drawn
//!   uniformly in `[−max_shift, max_shift)`, one draw per axis per call (the seed) or per axis
//!   per sample (`per_sample`, axis 0 being the sample axis).
//!
//! # Exactness and engines
//! All outputs are exact and bit-identical between the engines (tested), including every
//! packed byte.
//! * CPU: rate draws eight Philox counters per AVX2 vector (a portable loop otherwise, tested
//!   to give the same bytes) against thresholds prepared once per call, writes a 32-feature
//!   block of spikes (or of packed bits) per vector, and splits calls above ~1M spikes over
//!   the cores by contiguous ranges of the output. Latency computes each element's spike time
//!   once and writes the output in blocks of elements, one sequential row segment per step.
//!   Scratch buffers live in the encoder, so steady-state calls allocate only their output
//!   (nothing with the `encode_into` methods).
//! * GPU: when a 32-bit output word never straddles two samples or steps (feature count — or
//!   element count, for latency — a multiple of 4; latency with `T ≤ 248`) and the call fits
//!   one storage binding, two dispatches run: one evaluates each input element once
//!   (threshold, or spike-time byte), the other writes one word or 16-byte chunk per thread
//!   and step block, specialised for packed output. Otherwise a general kernel computes one
//!   output word per thread from its bytes' positions, over binding-sized windows of the
//!   output. Both give the same bytes; the first is about ten times faster on a software
//!   adapter.
//!
//! Subnormal `f32` values (below 2⁻¹²⁶ in magnitude) count as 0 — in the input, in
//! `x·max_r`, and in the latency threshold — on both engines, because GPUs may flush them:
//! the seed would give such an element a spike probability below 2⁻¹²⁶·max_r.
//!
//! # Errors
//! Settings are checked by the constructors ([`Error::InvalidSetting`]: zero steps, a
//! negative or non-finite `max_r`, `min ≥ max`, …). Each call checks the input's shape
//! ([`Error::Shape`]) and values before any work: NaN and ±inf are errors
//! ([`Error::NonFinite`], naming the first offending element — `sample` is the batch row and
//! `channel` the flattened feature for rate; for latency and angle `sample` is the flattened
//! index over all axes but the last and `channel` the index along the last). Device input is
//! checked inside the kernel and reported the same way. A failed call changes nothing (the
//! stream position of rate and shift included). Shift moves values without reading them, so
//! it accepts any values (NaN included) and any element type.
//!
//! GPU-engine limits: the input of one call holds fewer than 2³² elements and, except for
//! batch-major rate, fits one storage binding; one outer slice of the output (one sample's
//! raster in batch-major rate, one time step otherwise) is at most 2³⁰ bytes; device outputs
//! fit one buffer. Host calls on the GPU engine split larger inputs into pieces
//! automatically; [`Error::DeviceArray`] says when a device call must be split by the caller
//! (with the `_at` methods, a split batch encodes identically).
//!
//! # Where this differs from the seed
//! * Rate: the seed casts `x` to `float16` before drawing (every probability rounded to a
//!   multiple of 1/1024 near 1) and draws with JAX's generator; here `p` is exact `f32` and
//!   the draws come from the crate's Philox stream, so individual spikes differ from JAX's
//!   while their law is exact. The seed's `repeat(data, T, axis=1)` layout becomes an
//!   explicit `(B, T, F…)` or `(T, B, F…)`.
//! * NaN is an error (the seed's latency code fires NaN at t = 0; its rate code draws with a
//!   NaN probability); so is ±inf.
//! * Angle follows the grain `AngleCode` class (numpy, `f64` bins, `u8` one-hot); the JAX
//!   `angle_code` builds its bins in `f32` and returns `f32`.
//! * Shift: `max_shift` must be ≥ 1 (numpy's `randint(−m, m)` rejects the empty range);
//!   repeated axes are rejected (numpy would add their shifts); per-sample draws are new.

mod cpu;
mod gpu;

use ndarray::{ArrayD, ArrayView, ArrayViewD, ArrayViewMutD, Axis, Dimension, IxDyn};

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::gpu::{DType, DeviceArray, DeviceElement};
use crate::rng::{key_of, philox4x32_10};

/// `2³²`, the threshold of a certain spike.
const ALWAYS: u64 = 1 << 32;
/// Largest stream position a rate or shift call may reach (the top counter bit tells shift
/// draws from rate draws).
const MAX_POSITION: u64 = 1 << 63;

// ---------------------------------------------------------------------------------------------
// Shared exact arithmetic (both engines use these; the GPU tables are built from them)

/// `x` with subnormals (and −0) read as +0.
#[inline(always)]
pub(crate) fn flush(x: f32) -> f32 {
    if x.abs() < f32::MIN_POSITIVE {
        0.0
    } else {
        x
    }
}

/// `v.round_ties_even()` for `v ≥ 0` (or NaN), in two additions: below 2²³ the sum `v + 2²³`
/// has a spacing of 1, so the addition itself rounds half to even, and the subtraction is exact;
/// from 2²³ on every `f32` is an integer. Baseline x86-64 has no rounding instruction, so
/// `round_ties_even` is a libm call per element there; this form vectorizes.
#[inline(always)]
pub(crate) fn round_even_nonneg(v: f32) -> f32 {
    const BIG: f32 = 8_388_608.0;
    if v < BIG {
        (v + BIG) - BIG
    } else {
        v
    }
}

/// The validated rate parameters.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RateParams {
    pub steps: u32,
    pub max_r: f32,
    /// Smallest power of two with `x_cap·max_r ≥ 1`: inputs above it surely fire, and
    /// clamping to it keeps `x·max_r` finite.
    pub x_cap: f32,
    pub key: [u32; 2],
    pub time_major: bool,
    pub packed: bool,
}

impl RateParams {
    /// `⌈p·2³²⌉` for `p = clamp(x·max_r, 0, 1)` (`x` finite), in `[0, 2³²]`.
    #[inline(always)]
    pub fn threshold(&self, x: f32) -> u64 {
        let xc = flush(x.max(0.0).min(self.x_cap));
        let p = xc * self.max_r;
        if p >= 1.0 {
            ALWAYS
        } else if p < f32::MIN_POSITIVE {
            0
        } else {
            (p as f64 * 4_294_967_296.0).ceil() as u64
        }
    }
}

/// The validated latency parameters.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LatencyParams {
    pub steps: u32,
    /// The threshold, flushed.
    pub threshold: f32,
    /// `T − 1` as `f32` (as numpy/JAX convert it).
    pub tm1: f32,
    pub packed: bool,
}

/// "No spike" in a latency time.
pub(crate) const SILENT: u32 = u32::MAX;

impl LatencyParams {
    /// Spike time of a clipped, flushed value.
    #[inline(always)]
    fn time_of_clipped(&self, xc: f32) -> u32 {
        (round_even_nonneg((1.0 - xc) * self.tm1) as u32).min(self.steps - 1)
    }

    /// The spike time of `x` (finite), or [`SILENT`].
    #[inline(always)]
    pub fn time(&self, x: f32) -> u32 {
        let xc = flush(x).clamp(0.0, 1.0);
        if xc <= self.threshold {
            SILENT
        } else {
            self.time_of_clipped(xc)
        }
    }

    /// `U[0..=T]` for the GPU: `time(xc) ≥ t ⟺ xc ≤ U[t]` for clipped, flushed `xc`
    /// (the time is non-increasing in `xc`); `U[0] = 2`, `U[T] = −1`.
    pub fn gpu_table(&self) -> Vec<f32> {
        let t_n = self.steps as usize;
        let mut u = vec![0f32; t_n + 1];
        u[0] = 2.0;
        u[t_n] = -1.0;
        let one = 1f32.to_bits();
        let mut hi_bound = one;
        for (t, slot) in u.iter_mut().enumerate().take(t_n).skip(1) {
            // Largest bit pattern in [0, 1] whose value has time ≥ t (time(0) = T − 1 ≥ t).
            let pred = |b: u32| self.time_of_clipped(flush(f32::from_bits(b))) >= t as u32;
            let (mut lo, mut hi) = (0u32, hi_bound);
            if pred(hi) {
                lo = hi;
            } else {
                while hi - lo > 1 {
                    let mid = lo + (hi - lo) / 2;
                    if pred(mid) {
                        lo = mid;
                    } else {
                        hi = mid;
                    }
                }
            }
            hi_bound = lo;
            *slot = flush(f32::from_bits(lo));
        }
        u
    }
}

/// `numpy.linspace(start, stop, num)` in `f64`, operation for operation.
pub fn linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 0 {
        return Vec::new();
    }
    let div = num - 1;
    let delta = stop - start;
    let mut y: Vec<f64> = (0..num).map(|i| i as f64).collect();
    if div > 0 {
        let step = delta / div as f64;
        if step == 0.0 {
            for v in &mut y {
                *v = (*v / div as f64) * delta;
            }
        } else {
            for v in &mut y {
                *v *= step;
            }
        }
    } else {
        for v in &mut y {
            *v *= delta;
        }
    }
    for v in &mut y {
        *v += start;
    }
    if num > 1 {
        y[num - 1] = stop;
    }
    y
}

/// The validated angle parameters: the `f64` bins as `f32` edges with `x ≥ bin ⟺ x ≥ edge`
/// for every finite, flushed `f32` `x`.
#[derive(Debug, Clone)]
pub(crate) struct AngleParams {
    pub n: usize,
    /// Edges reachable by a finite `f32` (bins above `f32::MAX` are dropped).
    pub edges: Vec<f32>,
}

impl AngleParams {
    fn new(bins: &[f64]) -> Self {
        let mut edges = Vec::with_capacity(bins.len());
        for &b in bins {
            if b > f32::MAX as f64 {
                break;
            }
            // Smallest f32 ≥ b.
            let mut e = if b < f32::MIN as f64 {
                f32::MIN
            } else {
                b as f32
            };
            if (e as f64) < b {
                e = e.next_up();
            }
            // Flushed inputs are 0 or normal: a subnormal edge acts as the next normal or 0.
            if e != 0.0 && e.abs() < f32::MIN_POSITIVE {
                e = if e > 0.0 { f32::MIN_POSITIVE } else { 0.0 };
            }
            edges.push(e);
        }
        AngleParams {
            n: bins.len(),
            edges,
        }
    }

    /// The one-hot index of `x` (finite).
    #[inline(always)]
    pub fn index(&self, x: f32) -> usize {
        let x = flush(x);
        let c = self.edges.partition_point(|&e| x >= e);
        c.saturating_sub(1)
    }
}

// ---------------------------------------------------------------------------------------------
// Shared validation helpers

/// The first non-finite value of `x` (row-major), as `(flat index, value)`.
fn first_non_finite(x: &[f32]) -> Option<(usize, f32)> {
    const EXP: u32 = 0x7f80_0000;
    let bad = x
        .iter()
        .fold(false, |b, v| b | ((v.to_bits() & EXP) == EXP));
    if !bad {
        return None;
    }
    x.iter()
        .enumerate()
        .find(|(_, v)| !v.is_finite())
        .map(|(i, v)| (i, *v))
}

/// A [`Error::NonFinite`] for flat index `i` of an input whose rows have `row` elements.
fn non_finite(i: usize, row: usize, value: f32) -> Error {
    let row = row.max(1);
    Error::NonFinite {
        what: "input",
        sample: i / row,
        channel: i % row,
        value: value as f64,
    }
}

/// `∏ dims`, or a shape error when it overflows.
fn product(dims: &[usize], what: &'static str) -> Result<usize> {
    dims.iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| Error::shape(what, "a size that fits in memory", format!("{dims:?}")))
}

fn check_steps(steps: usize) -> Result<u32> {
    if steps == 0 || steps > u32::MAX as usize {
        return Err(Error::setting(
            "steps",
            format!("must be in 1..=2³²−1, got {steps}"),
        ));
    }
    Ok(steps as u32)
}

/// The output view's slice, checked against the expected shape.
fn out_slice<'a>(out: &'a mut ArrayViewMutD<'_, u8>, shape: &[usize]) -> Result<&'a mut [u8]> {
    if out.shape() != shape {
        return Err(Error::shape(
            "output",
            format!("{shape:?}"),
            format!("{:?}", out.shape()),
        ));
    }
    out.as_slice_mut().ok_or_else(|| {
        Error::shape(
            "output",
            "a contiguous, standard-layout array",
            "a strided view",
        )
    })
}

/// Checks that `x` is an `f32` array on the engine's device.
fn check_device_input(ctx: &std::sync::Arc<crate::GpuContext>, x: &DeviceArray) -> Result<()> {
    if !std::sync::Arc::ptr_eq(x.context(), ctx) {
        return Err(Error::DeviceArray("input lives on another device".into()));
    }
    if x.dtype() != DType::F32 {
        return Err(Error::DeviceArray(format!(
            "encoders take f32 input, got {:?}",
            x.dtype()
        )));
    }
    Ok(())
}

fn gpu_only(what: &str) -> Error {
    Error::DeviceArray(format!(
        "{what} needs the GPU engine (device-resident input)"
    ))
}

/// The engine half of an encoder.
#[derive(Debug)]
enum EngineState {
    Cpu(cpu::Scratch),
    Gpu(Box<gpu::GpuEncoder>),
}

impl EngineState {
    fn new(engine: &Engine) -> Result<Self> {
        Ok(match engine {
            Engine::Cpu => EngineState::Cpu(cpu::Scratch::default()),
            Engine::Gpu(ctx) => EngineState::Gpu(Box::new(gpu::GpuEncoder::new(ctx)?)),
        })
    }

    /// Whether this is the GPU engine.
    fn is_gpu(&self) -> bool {
        matches!(self, EngineState::Gpu(_))
    }

    /// Caps the byte size the GPU engine puts in one binding (`None`: the adapter's limit);
    /// nothing on the CPU engine.
    fn set_binding_limit(&mut self, bytes: Option<u64>) {
        if let EngineState::Gpu(g) = self {
            g.binding_limit = bytes;
        }
    }
}

/// Time-axis length of an output of `steps` steps: `steps`, or `⌈steps/8⌉` packed.
fn time_len(steps: u32, packed: bool) -> usize {
    let t = steps as usize;
    if packed {
        t.div_ceil(8)
    } else {
        t
    }
}

/// How a host call on the GPU engine is cut into pieces: the output is `(P, U, Q)` bytes with
/// the split axis `U` (batch rows or input elements), each unit `in_per_unit` input elements.
struct Pieces {
    p: usize,
    u: usize,
    q: usize,
    in_per_unit: usize,
}

impl Pieces {
    /// Runs `run(u0, u1)` (which returns the `(P, u1 − u0, Q)` bytes of units `u0..u1`) over
    /// pieces of at most `max_units` units and scatters them into `out`.
    fn run(
        &self,
        max_units: usize,
        out: &mut [u8],
        mut run: impl FnMut(usize, usize) -> Result<Vec<u8>>,
    ) -> Result<()> {
        let step = max_units.max(1);
        let mut u0 = 0;
        while u0 < self.u {
            let u1 = (u0 + step).min(self.u);
            let bytes = run(u0, u1)?;
            let n = (u1 - u0) * self.q;
            if self.p == 1 {
                out[u0 * self.q..u1 * self.q].copy_from_slice(&bytes[..n]);
            } else {
                for pi in 0..self.p {
                    let dst = (pi * self.u + u0) * self.q;
                    out[dst..dst + n].copy_from_slice(&bytes[pi * n..(pi + 1) * n]);
                }
            }
            u0 = u1;
        }
        Ok(())
    }

    /// Units per piece so that the piece's input fits `in_limit` bytes and its output
    /// `out_limit` bytes.
    fn max_units(&self, in_limit: u64, out_limit: u64) -> usize {
        let by_in = in_limit / (4 * self.in_per_unit.max(1) as u64);
        let by_out = out_limit / ((self.p * self.q).max(1) as u64);
        by_in.min(by_out).max(1) as usize
    }
}

// ---------------------------------------------------------------------------------------------
// Rate

/// Settings of [`RateEncoder`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateSettings {
    /// Number of time steps `T` (≥ 1).
    pub steps: usize,
    /// Rate multiplier: `p = clamp(x·max_r, 0, 1)`. Finite and ≥ 0 (the seed's default 0.75).
    pub max_r: f32,
    /// Seed of the Philox stream.
    pub seed: u64,
    /// Time axis first: `(T, B, F…)` instead of `(B, T, F…)`.
    pub time_major: bool,
    /// Bit-pack the time axis (`numpy.packbits` layout): `⌈T/8⌉` bytes instead of `T`.
    pub packed: bool,
}

impl RateSettings {
    /// `steps` time steps with the seed's defaults: `max_r = 0.75`, seed 0, `(B, T, F…)`,
    /// unpacked.
    pub fn new(steps: usize) -> Self {
        RateSettings {
            steps,
            max_r: 0.75,
            seed: 0,
            time_major: false,
            packed: false,
        }
    }
}

/// Rate (Bernoulli) spike encoder: `(B, F…)` intensities → `(B, T, F…)` spikes (see the
/// [module docs](self) for the exact definition).
///
/// The encoder keeps a stream position: each [`encode`](Self::encode) call encodes its batch
/// as samples `position() .. position() + B` and advances the position by `B`, so successive
/// batches get fresh spikes and a batch encoded whole or in parts gives the same spikes.
/// The `_at` methods encode at an explicit position and leave the position alone.
///
/// ```
/// use neurokernels::encoders::{RateEncoder, RateSettings};
/// let mut enc = RateEncoder::new(&neurokernels::Engine::cpu(), RateSettings::new(100))?;
/// let x = ndarray::Array2::<f32>::from_elem((4, 784), 0.5);
/// let spikes = enc.encode(x.view())?; // (4, 100, 784) u8, P(spike) = 0.375
/// assert_eq!(spikes.shape(), &[4, 100, 784]);
/// # Ok::<(), neurokernels::Error>(())
/// ```
#[derive(Debug)]
pub struct RateEncoder {
    settings: RateSettings,
    params: RateParams,
    position: u64,
    engine: EngineState,
}

impl RateEncoder {
    /// A new encoder at stream position 0. Errors name any invalid setting.
    pub fn new(engine: &Engine, settings: RateSettings) -> Result<Self> {
        let steps = check_steps(settings.steps)?;
        let m = settings.max_r;
        if !(m.is_finite() && m >= 0.0) {
            return Err(Error::setting(
                "max_r",
                format!("must be finite and ≥ 0, got {m}"),
            ));
        }
        let max_r = flush(m);
        let mut x_cap = 1.0f32;
        if max_r > 0.0 {
            x_cap = f32::MIN_POSITIVE;
            while x_cap * max_r < 1.0 {
                x_cap *= 2.0;
            }
        }
        let params = RateParams {
            steps,
            max_r,
            x_cap,
            key: key_of(settings.seed),
            time_major: settings.time_major,
            packed: settings.packed,
        };
        Ok(RateEncoder {
            settings,
            params,
            position: 0,
            engine: EngineState::new(engine)?,
        })
    }

    /// The settings.
    pub fn settings(&self) -> &RateSettings {
        &self.settings
    }

    /// Stream position of the next sample [`encode`](Self::encode) will encode.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Moves the stream position (e.g. back to 0 to replay a stream).
    pub fn set_position(&mut self, position: u64) {
        self.position = position;
    }

    /// Whether the encoder runs on the GPU engine.
    pub fn is_gpu(&self) -> bool {
        self.engine.is_gpu()
    }

    /// Caps the byte size the GPU engine puts in one binding, to exercise the splitting of
    /// large calls on small inputs (tests only; `None` restores the adapter's limit).
    #[doc(hidden)]
    pub fn debug_set_binding_limit(&mut self, bytes: Option<u64>) {
        self.engine.set_binding_limit(bytes);
    }

    /// Time-axis length of the output: `T`, or `⌈T/8⌉` packed.
    fn t_out(&self) -> usize {
        time_len(self.params.steps, self.params.packed)
    }

    /// The output shape for an input of shape `input`.
    pub fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        if input.is_empty() {
            return Err(Error::shape(
                "input",
                "(batch, features…): at least one axis",
                "a 0-d array",
            ));
        }
        let mut s = Vec::with_capacity(input.len() + 1);
        if self.params.time_major {
            s.push(self.t_out());
            s.extend_from_slice(input);
        } else {
            s.push(input[0]);
            s.push(self.t_out());
            s.extend_from_slice(&input[1..]);
        }
        product(&s, "output")?;
        Ok(s)
    }

    /// Validates a call of `b` samples at `first`.
    fn check_position(&self, first: u64, b: usize) -> Result<()> {
        match first.checked_add(b as u64) {
            Some(end) if end <= MAX_POSITION => Ok(()),
            _ => Err(Error::PositionOverflow(format!(
                "rate stream position {first} + {b} samples passes 2⁶³"
            ))),
        }
    }

    /// Encodes a batch `(B, F…)` at the stream position and advances it by `B`.
    pub fn encode<D: Dimension>(&mut self, x: ArrayView<'_, f32, D>) -> Result<ArrayD<u8>> {
        let first = self.position;
        let out = self.encode_at(x, first)?;
        self.position = first + out.shape()[usize::from(self.params.time_major)] as u64;
        Ok(out)
    }

    /// Encodes a batch as samples `first_sample ..` of the stream; the position is unchanged.
    pub fn encode_at<D: Dimension>(
        &mut self,
        x: ArrayView<'_, f32, D>,
        first_sample: u64,
    ) -> Result<ArrayD<u8>> {
        let x = x.into_dyn();
        let shape = self.output_shape(x.shape())?;
        let mut out = crate::validate::host_zeros::<u8, _>("encoder output", IxDyn(&shape))?;
        self.encode_into_at(x, out.view_mut(), first_sample)?;
        Ok(out)
    }

    /// [`encode`](Self::encode) into a caller-owned, standard-layout output of
    /// [`output_shape`](Self::output_shape) (every byte is overwritten; nothing is allocated
    /// per call on the CPU engine).
    pub fn encode_into<D: Dimension>(
        &mut self,
        x: ArrayView<'_, f32, D>,
        out: ArrayViewMutD<'_, u8>,
    ) -> Result<()> {
        let x = x.into_dyn();
        let b = x.shape().first().copied().unwrap_or(0);
        let first = self.position;
        self.encode_into_at(x, out, first)?;
        self.position = first + b as u64;
        Ok(())
    }

    fn encode_into_at(
        &mut self,
        x: ArrayViewD<'_, f32>,
        mut out: ArrayViewMutD<'_, u8>,
        first: u64,
    ) -> Result<()> {
        let shape = self.output_shape(x.shape())?;
        let out = out_slice(&mut out, &shape)?;
        let b = x.shape()[0];
        let f = product(&x.shape()[1..], "input")?;
        self.check_position(first, b)?;
        let std = x.as_standard_layout();
        let data = std.as_slice().unwrap_or(&[]);
        if let Some((i, v)) = first_non_finite(data) {
            return Err(non_finite(i, f, v));
        }
        let p = self.params;
        let t_out = self.t_out();
        match &mut self.engine {
            EngineState::Cpu(s) => {
                cpu::rate(&p, data, b, f, first, out, s);
                Ok(())
            }
            EngineState::Gpu(g) => {
                let pieces = if p.time_major {
                    Pieces {
                        p: t_out,
                        u: b,
                        q: f,
                        in_per_unit: f,
                    }
                } else {
                    Pieces {
                        p: 1,
                        u: b,
                        q: t_out * f,
                        in_per_unit: f,
                    }
                };
                // Batch-major input is windowed by rows; time-major input is bound whole.
                let in_limit = if p.time_major {
                    g.max_binding()
                } else {
                    g.max_buffer() / 2
                };
                let max_units = pieces.max_units(in_limit, g.host_out_limit());
                pieces.run(max_units, out, |u0, u1| {
                    let sub = &data[u0 * f..u1 * f];
                    g.rate_host(&p, sub, u1 - u0, f, first + u0 as u64)
                })
            }
        }
    }

    /// Encodes a device-resident `f32` batch `(B, F…)` at the stream position, leaving the
    /// spikes on the device (`u8`), and advances the position by `B`. GPU engine only.
    pub fn encode_device(&mut self, x: &DeviceArray) -> Result<DeviceArray> {
        let first = self.position;
        let out = self.encode_device_at(x, first)?;
        self.position = first + x.shape().first().copied().unwrap_or(0) as u64;
        Ok(out)
    }

    /// [`encode_device`](Self::encode_device) at an explicit stream position; the position is
    /// unchanged.
    pub fn encode_device_at(&mut self, x: &DeviceArray, first_sample: u64) -> Result<DeviceArray> {
        if !self.is_gpu() {
            return Err(gpu_only("encode_device"));
        }
        let shape = self.output_shape(x.shape())?;
        let b = x.shape()[0];
        let f = product(&x.shape()[1..], "input")?;
        self.check_position(first_sample, b)?;
        let p = self.params;
        let EngineState::Gpu(g) = &mut self.engine else {
            return Err(gpu_only("encode_device"));
        };
        check_device_input(g.context(), x)?;
        g.rate_device(&p, x, b, f, first_sample, shape)
    }
}

// ---------------------------------------------------------------------------------------------
// Latency

/// Settings of [`LatencyEncoder`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LatencySettings {
    /// Number of time steps `T` (≥ 1).
    pub steps: usize,
    /// Values with `clip(x, 0, 1) ≤ threshold` (compared in `f32`) stay silent (seed: 0.01).
    pub threshold: f32,
    /// Bit-pack the time axis (`numpy.packbits` layout).
    pub packed: bool,
}

impl LatencySettings {
    /// `steps` time steps, threshold 0.01 (the seed's default), unpacked.
    pub fn new(steps: usize) -> Self {
        LatencySettings {
            steps,
            threshold: 0.01,
            packed: false,
        }
    }
}

/// Latency (time-to-first-spike) encoder: `(…, C)` → `(T, …, C)`, one spike per element at
/// `round_half_even((1 − clip(x, 0, 1))·(T − 1))`, silent at or below the threshold
/// (see the [module docs](self)).
///
/// ```
/// use neurokernels::encoders::{LatencyEncoder, LatencySettings};
/// let mut enc = LatencyEncoder::new(&neurokernels::Engine::cpu(), LatencySettings::new(5))?;
/// let x = ndarray::arr1(&[1.0f32, 0.5, 0.0]);
/// let s = enc.encode(x.view())?; // fires at t = 0, t = 2, and never (0 ≤ 0.01)
/// assert_eq!(s.index_axis(ndarray::Axis(1), 0).iter().copied().collect::<Vec<u8>>(), vec![1, 0, 0, 0, 0]);
/// assert_eq!(s.index_axis(ndarray::Axis(1), 1).iter().copied().collect::<Vec<u8>>(), vec![0, 0, 1, 0, 0]);
/// assert_eq!(s.index_axis(ndarray::Axis(1), 2).sum(), 0);
/// # Ok::<(), neurokernels::Error>(())
/// ```
#[derive(Debug)]
pub struct LatencyEncoder {
    settings: LatencySettings,
    params: LatencyParams,
    engine: EngineState,
}

impl LatencyEncoder {
    /// A new encoder. Errors name any invalid setting.
    pub fn new(engine: &Engine, settings: LatencySettings) -> Result<Self> {
        let steps = check_steps(settings.steps)?;
        if !settings.threshold.is_finite() {
            return Err(Error::setting(
                "threshold",
                format!("must be finite, got {}", settings.threshold),
            ));
        }
        let params = LatencyParams {
            steps,
            threshold: flush(settings.threshold),
            tm1: (steps - 1) as f32,
            packed: settings.packed,
        };
        let mut state = EngineState::new(engine)?;
        if let EngineState::Gpu(g) = &mut state {
            g.set_table(bytemuck::cast_slice(&params.gpu_table()))?;
        }
        Ok(LatencyEncoder {
            settings,
            params,
            engine: state,
        })
    }

    /// The settings.
    pub fn settings(&self) -> &LatencySettings {
        &self.settings
    }

    /// Whether the encoder runs on the GPU engine.
    pub fn is_gpu(&self) -> bool {
        self.engine.is_gpu()
    }

    /// Caps the byte size the GPU engine puts in one binding (tests only).
    #[doc(hidden)]
    pub fn debug_set_binding_limit(&mut self, bytes: Option<u64>) {
        self.engine.set_binding_limit(bytes);
    }

    /// Time-axis length of the output: `T`, or `⌈T/8⌉` packed.
    fn t_out(&self) -> usize {
        time_len(self.params.steps, self.params.packed)
    }

    /// The output shape for an input of shape `input`: `(T, …)` (or `(⌈T/8⌉, …)`).
    pub fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        if input.is_empty() {
            return Err(Error::shape(
                "input",
                "(…, channels): at least one axis",
                "a 0-d array",
            ));
        }
        let mut s = vec![self.t_out()];
        s.extend_from_slice(input);
        product(&s, "output")?;
        Ok(s)
    }

    /// Encodes `x` (`(…, C)`, any strides).
    pub fn encode<D: Dimension>(&mut self, x: ArrayView<'_, f32, D>) -> Result<ArrayD<u8>> {
        let x = x.into_dyn();
        let shape = self.output_shape(x.shape())?;
        let mut out = crate::validate::host_zeros::<u8, _>("encoder output", IxDyn(&shape))?;
        self.encode_into(x, out.view_mut())?;
        Ok(out)
    }

    /// [`encode`](Self::encode) into a caller-owned, standard-layout output of
    /// [`output_shape`](Self::output_shape) (every byte is overwritten).
    pub fn encode_into<D: Dimension>(
        &mut self,
        x: ArrayView<'_, f32, D>,
        mut out: ArrayViewMutD<'_, u8>,
    ) -> Result<()> {
        let x = x.into_dyn();
        let shape = self.output_shape(x.shape())?;
        let out = out_slice(&mut out, &shape)?;
        let c = *x.shape().last().unwrap_or(&1);
        let std = x.as_standard_layout();
        let data = std.as_slice().unwrap_or(&[]);
        let p = self.params;
        let t_out = self.t_out();
        match &mut self.engine {
            EngineState::Cpu(s) => {
                if let Err(i) = cpu::latency_times(&p, data, &mut s.times) {
                    return Err(non_finite(i, c, data[i]));
                }
                cpu::latency_fill(&s.times, t_out, p.packed, out);
                Ok(())
            }
            EngineState::Gpu(g) => {
                if let Some((i, v)) = first_non_finite(data) {
                    return Err(non_finite(i, c, v));
                }
                let pieces = Pieces {
                    p: t_out,
                    u: data.len(),
                    q: 1,
                    in_per_unit: 1,
                };
                let max_units = pieces.max_units(g.max_binding(), g.host_out_limit());
                pieces.run(max_units, out, |u0, u1| {
                    g.latency_host(&p, &data[u0..u1], t_out)
                })
            }
        }
    }

    /// Encodes a device-resident `f32` array, leaving the spikes on the device (`u8`).
    /// GPU engine only.
    pub fn encode_device(&mut self, x: &DeviceArray) -> Result<DeviceArray> {
        if !self.is_gpu() {
            return Err(gpu_only("encode_device"));
        }
        let shape = self.output_shape(x.shape())?;
        let c = *x.shape().last().unwrap_or(&1);
        let p = self.params;
        let t_out = self.t_out();
        let EngineState::Gpu(g) = &mut self.engine else {
            return Err(gpu_only("encode_device"));
        };
        check_device_input(g.context(), x)?;
        g.latency_device(&p, x, t_out, c, shape)
    }
}

// ---------------------------------------------------------------------------------------------
// Angle

/// Settings of [`AngleEncoder`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AngleSettings {
    /// Number of output neurons `n` (≥ 1).
    pub neuron_count: usize,
    /// Lower end of the bins (finite).
    pub min_val: f64,
    /// Upper end of the bins (finite, > `min_val`).
    pub max_val: f64,
}

/// Angle (population one-hot) encoder: any shape `(…)` → `(…, n)`, one-hot at
/// `clip(digitize(x, linspace(min, max, n)) − 1, 0, n − 1)` (see the [module docs](self)).
///
/// ```
/// use neurokernels::encoders::{AngleEncoder, AngleSettings};
/// let s = AngleSettings { neuron_count: 5, min_val: 0.0, max_val: 1.0 };
/// let mut enc = AngleEncoder::new(&neurokernels::Engine::cpu(), s)?;
/// let y = enc.encode(ndarray::arr1(&[-1.0f32, 0.25, 0.3, 1.0]).view())?;
/// assert_eq!(y.index_axis(ndarray::Axis(0), 1).iter().copied().collect::<Vec<u8>>(), vec![0, 1, 0, 0, 0]); // bins are [0, .25), [.25, .5), …
/// assert_eq!(y.index_axis(ndarray::Axis(0), 3).iter().copied().collect::<Vec<u8>>(), vec![0, 0, 0, 0, 1]);
/// # Ok::<(), neurokernels::Error>(())
/// ```
#[derive(Debug)]
pub struct AngleEncoder {
    settings: AngleSettings,
    bins: Vec<f64>,
    params: AngleParams,
    engine: EngineState,
}

impl AngleEncoder {
    /// A new encoder. Errors name any invalid setting.
    pub fn new(engine: &Engine, settings: AngleSettings) -> Result<Self> {
        let n = settings.neuron_count;
        if n == 0 || n > (1 << 30) {
            return Err(Error::setting(
                "neuron_count",
                format!("must be in 1..=2³⁰, got {n}"),
            ));
        }
        let (lo, hi) = (settings.min_val, settings.max_val);
        if !lo.is_finite() {
            return Err(Error::setting(
                "min_val",
                format!("must be finite, got {lo}"),
            ));
        }
        if !hi.is_finite() || hi <= lo {
            return Err(Error::setting(
                "max_val",
                format!("must be finite and > min_val ({lo}), got {hi}"),
            ));
        }
        let bins = linspace(lo, hi, n);
        if bins.windows(2).any(|w| w[1] < w[0]) || bins.iter().any(|b| !b.is_finite()) {
            return Err(Error::setting(
                "max_val",
                format!("linspace({lo}, {hi}, {n}) is not finite and increasing"),
            ));
        }
        let params = AngleParams::new(&bins);
        let mut state = EngineState::new(engine)?;
        if let EngineState::Gpu(g) = &mut state {
            g.set_table(bytemuck::cast_slice(&params.edges))?;
        }
        Ok(AngleEncoder {
            settings,
            bins,
            params,
            engine: state,
        })
    }

    /// The settings.
    pub fn settings(&self) -> &AngleSettings {
        &self.settings
    }

    /// The bins, `numpy.linspace(min_val, max_val, neuron_count)`.
    pub fn bins(&self) -> &[f64] {
        &self.bins
    }

    /// Whether the encoder runs on the GPU engine.
    pub fn is_gpu(&self) -> bool {
        self.engine.is_gpu()
    }

    /// Caps the byte size the GPU engine puts in one binding (tests only).
    #[doc(hidden)]
    pub fn debug_set_binding_limit(&mut self, bytes: Option<u64>) {
        self.engine.set_binding_limit(bytes);
    }

    /// The output shape for an input of shape `input`: `(…, n)`.
    pub fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        let mut s = input.to_vec();
        s.push(self.params.n);
        product(&s, "output")?;
        Ok(s)
    }

    /// Encodes `x` (any shape, any strides).
    pub fn encode<D: Dimension>(&mut self, x: ArrayView<'_, f32, D>) -> Result<ArrayD<u8>> {
        let x = x.into_dyn();
        let shape = self.output_shape(x.shape())?;
        let mut out = crate::validate::host_zeros::<u8, _>("encoder output", IxDyn(&shape))?;
        self.encode_into(x, out.view_mut())?;
        Ok(out)
    }

    /// [`encode`](Self::encode) into a caller-owned, standard-layout output of
    /// [`output_shape`](Self::output_shape) (every byte is overwritten).
    pub fn encode_into<D: Dimension>(
        &mut self,
        x: ArrayView<'_, f32, D>,
        mut out: ArrayViewMutD<'_, u8>,
    ) -> Result<()> {
        let x = x.into_dyn();
        let shape = self.output_shape(x.shape())?;
        let out = out_slice(&mut out, &shape)?;
        let c = *x.shape().last().unwrap_or(&1);
        let std = x.as_standard_layout();
        let data = std.as_slice().unwrap_or(&[]);
        if let Some((i, v)) = first_non_finite(data) {
            return Err(non_finite(i, c, v));
        }
        let n = self.params.n;
        match &mut self.engine {
            EngineState::Cpu(_) => {
                cpu::angle(&self.params, data, out);
                Ok(())
            }
            EngineState::Gpu(g) => {
                let pieces = Pieces {
                    p: 1,
                    u: data.len(),
                    q: n,
                    in_per_unit: 1,
                };
                let max_units = pieces.max_units(g.max_binding(), g.host_out_limit());
                let ne = self.params.edges.len();
                pieces.run(max_units, out, |u0, u1| g.angle_host(&data[u0..u1], n, ne))
            }
        }
    }

    /// Encodes a device-resident `f32` array, leaving the one-hot code on the device (`u8`).
    /// GPU engine only.
    pub fn encode_device(&mut self, x: &DeviceArray) -> Result<DeviceArray> {
        if !self.is_gpu() {
            return Err(gpu_only("encode_device"));
        }
        let shape = self.output_shape(x.shape())?;
        let c = *x.shape().last().unwrap_or(&1);
        let n = self.params.n;
        let ne = self.params.edges.len();
        let EngineState::Gpu(g) = &mut self.engine else {
            return Err(gpu_only("encode_device"));
        };
        check_device_input(g.context(), x)?;
        g.angle_device(x, n, ne, c, shape)
    }
}

// ---------------------------------------------------------------------------------------------
// Shift

/// Settings of [`ShiftAugment`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShiftSettings {
    /// Shifts are drawn uniformly in `[−max_shift, max_shift)` (≥ 1; the seed's default 10).
    pub max_shift: u32,
    /// Axes to roll (negative counts from the end, as numpy; the seed's default `[-1]`).
    /// At most 8, no axis twice.
    pub axes: Vec<isize>,
    /// One draw per sample (axis 0 is the sample axis and may not be rolled) instead of one
    /// per call (the seed).
    pub per_sample: bool,
    /// Seed of the Philox stream.
    pub seed: u64,
}

impl Default for ShiftSettings {
    fn default() -> Self {
        ShiftSettings {
            max_shift: 10,
            axes: vec![-1],
            per_sample: false,
            seed: 0,
        }
    }
}

/// The shifts of one call, reduced to the array: merged dimensions and per-set shifts.
#[derive(Debug, Clone)]
pub(crate) struct ShiftPlan {
    /// Extents of the merged dimensions (runs of unshifted axes merged).
    pub dims: Vec<usize>,
    /// The shift slot of each merged dimension, if it is rolled.
    pub slots: Vec<Option<usize>>,
    /// `shifts[set * n_axes + slot]`, reduced to `[0, extent)`.
    pub shifts: Vec<usize>,
    pub n_axes: usize,
    /// Sets are per sample (dimension 0 selects the set).
    pub per_sample: bool,
}

impl ShiftPlan {
    /// Row-major strides of the merged dimensions.
    pub fn strides(&self) -> Vec<usize> {
        let mut s = vec![1usize; self.dims.len()];
        for d in (0..self.dims.len().saturating_sub(1)).rev() {
            s[d] = s[d + 1] * self.dims[d + 1];
        }
        s
    }
}

/// Shift (roll) augmentation: rolls the chosen axes by integers drawn in
/// `[−max_shift, max_shift)` from the Philox stream, one draw per axis per call (the seed's
/// behaviour) or per axis per sample.
///
/// Like [`RateEncoder`] it keeps a stream position — calls (per call) or samples
/// (per sample) so far — so each call draws fresh shifts, and per-sample shifts do not depend
/// on how a batch is split. Draw `a` (the `a`-th listed axis) of position `s` is
/// `⌊w·2m / 2⁶⁴⌋ − m` for the 64-bit word `w` of Philox counter
/// `(a, per_sample, s mod 2³², ⌊s/2³²⌋ + 2³¹)`, and an axis of length `n` is rolled by
/// that draw modulo `n` (`numpy.roll`: `out[i] = x[(i − shift) mod n]`).
#[derive(Debug)]
pub struct ShiftAugment {
    settings: ShiftSettings,
    key: [u32; 2],
    position: u64,
    engine: EngineState,
}

impl ShiftAugment {
    /// A new augmentation at position 0. Errors name any invalid setting.
    pub fn new(engine: &Engine, settings: ShiftSettings) -> Result<Self> {
        if settings.max_shift == 0 {
            return Err(Error::setting(
                "max_shift",
                "must be ≥ 1 (shifts are drawn in [−max_shift, max_shift))",
            ));
        }
        if settings.axes.len() > 8 {
            return Err(Error::setting(
                "axes",
                format!("at most 8 axes, got {}", settings.axes.len()),
            ));
        }
        Ok(ShiftAugment {
            key: key_of(settings.seed),
            settings,
            position: 0,
            engine: EngineState::new(engine)?,
        })
    }

    /// The settings.
    pub fn settings(&self) -> &ShiftSettings {
        &self.settings
    }

    /// Stream position of the next call (per call) or sample (per sample).
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Moves the stream position.
    pub fn set_position(&mut self, position: u64) {
        self.position = position;
    }

    /// Whether the augmentation runs on the GPU engine.
    pub fn is_gpu(&self) -> bool {
        self.engine.is_gpu()
    }

    /// One draw in `[−m, m)` for axis slot `a` at position `s`.
    fn draw(&self, a: usize, s: u64) -> i64 {
        let m = self.settings.max_shift as u64;
        let c = [
            a as u32,
            self.settings.per_sample as u32,
            s as u32,
            ((s >> 32) as u32) | 0x8000_0000,
        ];
        let r = philox4x32_10(c, self.key);
        let w = (r[1] as u64) << 32 | r[0] as u64;
        (((w as u128 * (2 * m) as u128) >> 64) as i64) - m as i64
    }

    /// The axes, normalized against rank `rank`.
    fn axes(&self, rank: usize) -> Result<Vec<usize>> {
        let mut out = Vec::with_capacity(self.settings.axes.len());
        for &a in &self.settings.axes {
            let n = if a < 0 { a + rank as isize } else { a };
            if n < 0 || n >= rank as isize {
                return Err(Error::IndexOutOfRange {
                    what: "shift axis",
                    index: a.unsigned_abs() as u64,
                    bound: rank as u64,
                });
            }
            let n = n as usize;
            if out.contains(&n) {
                return Err(Error::setting(
                    "axes",
                    format!("axis {a} is listed twice (for an array of rank {rank})"),
                ));
            }
            if self.settings.per_sample && n == 0 {
                return Err(Error::setting(
                    "axes",
                    "per_sample shifts cannot roll axis 0 (the sample axis)",
                ));
            }
            out.push(n);
        }
        Ok(out)
    }

    /// The shifts a call on an array of shape `shape` at `position` draws: one row per sample
    /// (per sample) or a single row (per call), one entry per listed axis, in
    /// `[−max_shift, max_shift)` (before reduction modulo the axis length).
    pub fn draws(&self, shape: &[usize], position: u64) -> Result<Vec<Vec<i64>>> {
        self.axes(shape.len())?;
        let sets = self.n_sets(shape)?;
        self.check_position(position, sets)?;
        Ok((0..sets as u64)
            .map(|s| {
                (0..self.settings.axes.len())
                    .map(|a| self.draw(a, position + s))
                    .collect()
            })
            .collect())
    }

    fn n_sets(&self, shape: &[usize]) -> Result<usize> {
        if self.settings.per_sample {
            shape.first().copied().ok_or_else(|| {
                Error::shape("input", "(samples, …) for per-sample shifts", "a 0-d array")
            })
        } else {
            Ok(1)
        }
    }

    fn check_position(&self, first: u64, n: usize) -> Result<()> {
        match first.checked_add(n as u64) {
            Some(end) if end <= MAX_POSITION => Ok(()),
            _ => Err(Error::PositionOverflow(format!(
                "shift stream position {first} + {n} passes 2⁶³"
            ))),
        }
    }

    /// The plan of a call on `shape` at `position`.
    fn plan(&self, shape: &[usize], position: u64) -> Result<ShiftPlan> {
        let axes = self.axes(shape.len())?;
        product(shape, "input")?;
        let draws = self.draws(shape, position)?;
        let mut dims = Vec::new();
        let mut slots = Vec::new();
        let mut merging = false;
        for (d, &ext) in shape.iter().enumerate() {
            let slot = axes.iter().position(|&a| a == d);
            let keep_alone = slot.is_some() || (self.settings.per_sample && d == 0);
            if keep_alone {
                dims.push(ext);
                slots.push(slot);
                merging = false;
            } else if merging {
                if let Some(last) = dims.last_mut() {
                    *last *= ext;
                }
            } else {
                dims.push(ext);
                slots.push(None);
                merging = true;
            }
        }
        let n_axes = axes.len();
        let mut shifts = vec![0usize; draws.len() * n_axes];
        for (s, row) in draws.iter().enumerate() {
            for (a, &v) in row.iter().enumerate() {
                let n = shape[axes[a]] as i64;
                shifts[s * n_axes + a] = if n == 0 { 0 } else { v.rem_euclid(n) as usize };
            }
        }
        Ok(ShiftPlan {
            dims,
            slots,
            shifts,
            n_axes,
            per_sample: self.settings.per_sample,
        })
    }

    /// Amount the position advances for a call on `shape`.
    fn advance(&self, shape: &[usize]) -> u64 {
        if self.settings.per_sample {
            shape.first().copied().unwrap_or(0) as u64
        } else {
            1
        }
    }

    /// Rolls `x` (any element type the device supports, any strides) with fresh draws and
    /// advances the position.
    pub fn apply<T: DeviceElement, D: Dimension>(
        &mut self,
        x: ArrayView<'_, T, D>,
    ) -> Result<ArrayD<T>> {
        let x = x.into_dyn();
        let first = self.position;
        let out = self.apply_at(x.view(), first)?;
        self.position = first + self.advance(x.shape());
        Ok(out)
    }

    /// Rolls `x` with the draws of stream position `position`; the position is unchanged.
    pub fn apply_at<T: DeviceElement, D: Dimension>(
        &mut self,
        x: ArrayView<'_, T, D>,
        position: u64,
    ) -> Result<ArrayD<T>> {
        let x = x.into_dyn();
        let plan = self.plan(x.shape(), position)?;
        let std = x.as_standard_layout();
        let data = std.as_slice().unwrap_or(&[]);
        let out: Vec<T> = match &mut self.engine {
            EngineState::Cpu(_) => cpu::shift(&plan, data),
            EngineState::Gpu(g) => {
                let bytes = g.shift_host(&plan, bytemuck::cast_slice(data), T::DTYPE)?;
                bytemuck::pod_collect_to_vec(&bytes[..std::mem::size_of_val(data)])
            }
        };
        ArrayD::from_shape_vec(IxDyn(x.shape()), out)
            .map_err(|e| Error::shape("output", format!("{:?}", x.shape()), e.to_string()))
    }

    /// Rolls a device-resident array (any dtype) with fresh draws, leaving the result on the
    /// device, and advances the position. GPU engine only.
    pub fn apply_device(&mut self, x: &DeviceArray) -> Result<DeviceArray> {
        let first = self.position;
        let out = self.apply_device_at(x, first)?;
        self.position = first + self.advance(x.shape());
        Ok(out)
    }

    /// [`apply_device`](Self::apply_device) with the draws of `position`; the position is
    /// unchanged.
    pub fn apply_device_at(&mut self, x: &DeviceArray, position: u64) -> Result<DeviceArray> {
        if !self.is_gpu() {
            return Err(gpu_only("apply_device"));
        }
        let plan = self.plan(x.shape(), position)?;
        let EngineState::Gpu(g) = &mut self.engine else {
            return Err(gpu_only("apply_device"));
        };
        if !std::sync::Arc::ptr_eq(x.context(), g.context()) {
            return Err(Error::DeviceArray("input lives on another device".into()));
        }
        g.shift_device(&plan, x)
    }
}

// ---------------------------------------------------------------------------------------------
// Bit packing

/// `numpy.packbits(x, axis=axis)`: groups of 8 along `axis` become one byte, the first
/// element in the most significant bit; any nonzero element is a 1; the last byte is
/// zero-padded at its low end. The output has `⌈n/8⌉` along `axis`.
pub fn packbits<D: Dimension>(x: ArrayView<'_, u8, D>, axis: usize) -> Result<ArrayD<u8>> {
    let x = x.into_dyn();
    if axis >= x.ndim() {
        return Err(Error::IndexOutOfRange {
            what: "packbits axis",
            index: axis as u64,
            bound: x.ndim() as u64,
        });
    }
    let n = x.shape()[axis];
    let mut shape = x.shape().to_vec();
    shape[axis] = n.div_ceil(8);
    let mut out = crate::validate::host_zeros::<u8, _>("encoder output", IxDyn(&shape))?;
    for (t, lane) in x.axis_iter(Axis(axis)).enumerate() {
        let mut dst = out.index_axis_mut(Axis(axis), t / 8);
        let bit = 0x80u8 >> (t % 8);
        ndarray::Zip::from(&mut dst).and(&lane).for_each(|d, &s| {
            if s != 0 {
                *d |= bit;
            }
        });
    }
    Ok(out)
}

/// `numpy.unpackbits(x, axis=axis, count=count)`: each byte along `axis` becomes 8 elements
/// (0 or 1, most significant bit first), and the first `count` are kept (zeros are appended
/// when `count` exceeds the bits available, as numpy does).
pub fn unpackbits<D: Dimension>(
    x: ArrayView<'_, u8, D>,
    axis: usize,
    count: usize,
) -> Result<ArrayD<u8>> {
    let x = x.into_dyn();
    if axis >= x.ndim() {
        return Err(Error::IndexOutOfRange {
            what: "unpackbits axis",
            index: axis as u64,
            bound: x.ndim() as u64,
        });
    }
    let mut shape = x.shape().to_vec();
    shape[axis] = count;
    product(&shape, "output")?;
    let mut out = crate::validate::host_zeros::<u8, _>("encoder output", IxDyn(&shape))?;
    let n_bytes = x.shape()[axis];
    for t in 0..count.min(8 * n_bytes) {
        let src = x.index_axis(Axis(axis), t / 8);
        let mut dst = out.index_axis_mut(Axis(axis), t);
        let sh = 7 - (t % 8) as u32;
        ndarray::Zip::from(&mut dst)
            .and(&src)
            .for_each(|d, &s| *d = (s >> sh) & 1);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate_params(max_r: f32) -> RateParams {
        let enc = RateEncoder::new(
            &Engine::cpu(),
            RateSettings {
                max_r,
                ..RateSettings::new(1)
            },
        )
        .expect("settings");
        enc.params
    }

    #[test]
    fn thresholds_are_exact() {
        let p = rate_params(1.0);
        assert_eq!(p.threshold(0.0), 0);
        assert_eq!(p.threshold(-3.0), 0);
        assert_eq!(p.threshold(1.0), ALWAYS);
        assert_eq!(p.threshold(7.0), ALWAYS);
        assert_eq!(p.threshold(0.5), 1 << 31);
        assert_eq!(p.threshold(1e-30), 1);
        assert_eq!(p.threshold(1e-40), 0); // subnormal reads as 0
        let below_one = 1f32.next_down();
        assert_eq!(p.threshold(below_one), ALWAYS - 256);
        let big = rate_params(f32::MAX);
        assert_eq!(big.threshold(f32::MAX), ALWAYS);
        assert_eq!(big.threshold(1e-30), ALWAYS);
        let tiny = rate_params(f32::MIN_POSITIVE);
        assert!(tiny.x_cap.is_finite());
        assert_eq!(tiny.threshold(f32::MAX), ALWAYS);
        assert_eq!(rate_params(0.0).threshold(f32::MAX), 0);
    }

    #[test]
    fn linspace_matches_numpy() {
        assert_eq!(linspace(0.0, 1.0, 5), vec![0.0, 0.25, 0.5, 0.75, 1.0]);
        assert_eq!(linspace(2.0, 3.0, 1), vec![2.0]);
        // numpy.linspace(0, 1, 10)[3] == 0.3333333333333333 (3 * (1/9))
        assert_eq!(linspace(0.0, 1.0, 10)[3], 3.0 * (1.0 / 9.0));
        assert_eq!(linspace(-1.0, 1.0, 3), vec![-1.0, 0.0, 1.0]);
    }

    #[test]
    fn latency_table_brackets_every_time() {
        for steps in [1u32, 2, 5, 13, 100] {
            let p = LatencyParams {
                steps,
                threshold: -1.0,
                tm1: (steps - 1) as f32,
                packed: false,
            };
            let u = p.gpu_table();
            let mut x = 0f32;
            while x <= 1.0 {
                let t = p.time(x) as usize;
                assert!(x <= u[t] && x > u[t + 1], "steps {steps}, x {x}, t {t}");
                x = if x == 0.0 {
                    f32::MIN_POSITIVE
                } else {
                    x * 1.013 + 1e-7
                };
            }
        }
    }

    #[test]
    fn angle_edges_compare_like_f64() {
        let bins = linspace(0.0, 1.0, 10);
        let p = AngleParams::new(&bins);
        for &b in &bins {
            let f = b as f32;
            for x in [f.next_down(), f, f.next_up()] {
                let want = bins.iter().filter(|&&v| x as f64 >= v).count();
                assert_eq!(p.index(x), want.saturating_sub(1), "x {x}");
            }
        }
    }
}
