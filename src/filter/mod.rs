//! Causal Butterworth band-pass filter in second-order sections (SPEC §7, "Filter").
//!
//! # Definition
//! The filter is a cascade of second-order sections (biquads) `(b₀, b₁, b₂, 1, a₁, a₂)`,
//! designed by [`butter_sos`] exactly like
//! `scipy.signal.butter(order, [low_hz, high_hz], btype='bandpass', fs=fs, output='sos')`
//! (a high-pass `butter(order, low_hz, btype='highpass', fs=fs, output='sos')` when
//! `high_hz ≥ fs/2`), and applied causally to every channel like `scipy.signal.sosfilt(sos,
//! x, axis=0)`: each section is the transposed direct form II recurrence
//!
//! ```text
//! y[t]  = b₀·x[t] + z₁[t−1]
//! z₁[t] = b₁·x[t] − a₁·y[t] + z₂[t−1]
//! z₂[t] = b₂·x[t] − a₂·y[t]
//! ```
//!
//! with zero initial state (`zi = 0`, not `sosfilt_zi`), the output of one section being the
//! input of the next. A band-pass of order `N` has `N` sections (a high-pass `⌈N/2⌉`). The
//! state of every section of every channel is carried from one chunk to the next, so the
//! concatenated output of a chunked stream is the output of the whole stream.
//!
//! The design follows scipy step for step: the analog prototype poles
//! `−exp(iπm/(2N))`, prewarping `4·tan(π·f/fs)` (normalised to `fs = 2`), `lp2bp_zpk`
//! (`lp2hp_zpk`), `bilinear_zpk`, and `zpk2sos` with its default `'nearest'` pairing and
//! section order (poles closest to the unit circle last) and the overall gain folded into
//! the first section. The coefficients agree with scipy's to about 1e-13 relative.
//!
//! # Streaming and errors
//! The channel count is fixed by the first non-empty chunk. An empty chunk is valid and
//! yields an empty output. A channel count that changes mid-stream is [`Error::Shape`]; a NaN
//! or ±inf sample is [`Error::NonFinite`] naming the first one (by sample, then channel).
//! After any error the state is exactly as before the call: the CPU engine checks the chunk
//! before touching the state; the GPU engine reads the committed state buffer, writes
//! another, and only moves the committed index once the chunk is accepted.
//!
//! # Engines and accuracy
//! * CPU (`cpu.rs`): transposed direct form II in `f64` (state and arithmetic), rows in
//!   lockstep across channels. Its output is a sequential `f64` `sosfilt` rounded once to
//!   `f32`, and is bit-identical across chunkings.
//! * GPU (`gpu.rs`, `shaders/filter.wgsl`): one invocation per channel runs the cascade over
//!   the chunk's rows in one of two arithmetics. Where the device has `SHADER_F64` and
//!   [`crate::GpuOptions::f64_kernels`] asks for it (by default on CPU adapters such as
//!   lavapipe, where it halves the cost), in native `f64` (`shaders/filter_f64.wgsl`): the
//!   CPU engine's recurrence, state kept in `f64`. Otherwise with `f32` arithmetic only
//!   (portable to GL and Metal; `shaders/filter_ds.wgsl`), in double-single form:
//!   each coefficient, each section's state and each section's output is an unevaluated sum
//!   of two `f32` (`hi + lo`, about 48 significant bits), with error-free sums (two-sum) and
//!   products (Dekker's product with Veltkamp splitting), so the recurrence carries about
//!   `2⁻⁴⁴` relative error instead of `2⁻²⁴`, and the output is rounded once to `f32`.
//!   Chunks are split into dispatches of at most 16 384 rows (the loop bound of software
//!   adapters); the state chains between them. The double-single form needs samples and
//!   values below `f32::MAX / 4097` ≈ 8.3e34 (the Veltkamp split's range; far above any
//!   recording): past it its output and state become non-finite (the chain's threshold
//!   refuses such a chunk and rolls the filter back), where the `f64` form and the CPU round
//!   a finite result past `f32::MAX` to ±inf and go on.
//!
//! Bounds: the specification asks for an error within 1e-4 of the signal's RMS against an
//! `f64` `sosfilt`, over long streams (10⁷ samples). Both engines are documented, and tested,
//! to 1e-6 of the RMS: the error is the `f32` rounding of the output. Measured
//! (`tests/filter.rs`, lavapipe and llvmpipe-GL): on the shared scipy reference (order 5,
//! 500–3000 Hz at 20 kHz, five chunkings) 2.1e-7 × RMS on both engines (the output's largest
//! values are 7× the RMS); on 10⁶ samples × 4 channels of noise with a large slow component
//! and offsets, 2.7e-8 × RMS on both (4.5e-8 over 10⁷ samples, the ignored test); with a 5 Hz lower edge at 30 kHz (poles within 1e-3 of
//! the unit circle) 5.6e-8 × RMS; GPU against CPU 9e-10 × RMS (an ulp of the output here
//! and there). The double-single rounding (about 2⁻⁴⁴) is amplified by roughly the square of
//! `1/(1 − |pole|)`, so only edges below about 0.1 Hz at these rates approach the bound.
//!
//! Cost (`benches/filter.rs`, 384 channels, 20 ms chunks of 600 rows, default settings, on
//! a noisy 2-core VM): CPU engine about 0.25–0.43 ms per chunk (≈ 45–80× real time); GPU
//! engine on lavapipe 2.2 ms per chunk (criterion median, host path, upload and read-back
//! included) in `f64`, 4.7 ms in double-single: the double-single arithmetic costs about 2×
//! a plain `f32` recurrence, which would not meet the bound for low band edges.
//!
//! # Delay
//! [`BandpassFilter::group_delay_samples`] is the group delay at the geometric centre of the
//! passband (`√(low·high)`; for a high-pass `√(low·fs/2)`; for sections given by
//! [`BandpassFilter::from_sos`], the centre of the band where the gain is within 3 dB of its
//! peak), computed from the sections: the algorithmic delay a chain reports.

mod cpu;
mod design;
mod gpu;

use ndarray::{Array2, ArrayView2, ArrayViewMut2};

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::gpu::{DeviceArray, SameShapeKernel, Staged, StreamMark};
use crate::state::{Fingerprint, StateReader, StateWriter};
use crate::validate::{check_finite, check_out_shape, f32_device_chunk, needs_gpu};
use design::C64;

/// Operator tag of a saved filter state.
const STATE_TAG: [u8; 4] = *b"BPF ";

/// Most sections a filter may have (a band-pass up to order 32).
pub const MAX_SECTIONS: usize = 32;

/// Settings of [`BandpassFilter::new`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FilterSettings {
    /// Lower band edge in Hz (−3 dB). Default 300.
    pub low_hz: f64,
    /// Upper band edge in Hz (−3 dB); at or above `fs/2` the filter is a high-pass at
    /// `low_hz`. Default 6000.
    pub high_hz: f64,
    /// Butterworth order (a band-pass has `order` sections). Default 3.
    pub order: usize,
}

impl Default for FilterSettings {
    fn default() -> Self {
        FilterSettings {
            low_hz: 300.0,
            high_hz: 6000.0,
            order: 3,
        }
    }
}

/// Butterworth second-order sections `[b₀, b₁, b₂, a₀, a₁, a₂]`, as
/// `scipy.signal.butter(order, [low_hz, high_hz], btype='bandpass', fs=fs, output='sos')`;
/// a high-pass at `low_hz` (`btype='highpass'`) when `high_hz ≥ fs/2`.
///
/// # Errors
/// [`Error::InvalidSetting`] naming the setting: `order` 0 (or above 32), `fs` not finite
/// and positive, an edge that is NaN or not positive, `low_hz ≥ high_hz`, `low_hz ≥ fs/2`.
pub fn butter_sos(order: usize, low_hz: f64, high_hz: f64, fs: f64) -> Result<Vec<[f64; 6]>> {
    let band = design::check(order, low_hz, high_hz, fs)?;
    if band == design::Band::Pass && order > MAX_SECTIONS {
        return Err(Error::setting(
            "order",
            format!("at most {MAX_SECTIONS} for a band-pass, got {order}"),
        ));
    }
    design::butter(order, low_hz, high_hz, fs, band)
}

/// The frequency response of `sos` at `w` radians per sample.
fn response(sos: &[[f64; 6]], w: f64) -> C64 {
    let e1 = C64::new(w.cos(), -w.sin());
    let e2 = e1.mul(e1);
    let mut h = C64::new(1.0, 0.0);
    for s in sos {
        let num = C64::new(s[0], 0.0)
            .add(e1.mul(C64::new(s[1], 0.0)))
            .add(e2.mul(C64::new(s[2], 0.0)));
        let den = C64::new(s[3], 0.0)
            .add(e1.mul(C64::new(s[4], 0.0)))
            .add(e2.mul(C64::new(s[5], 0.0)));
        h = h.mul(num.div(den));
    }
    h
}

/// Group delay in samples of `sos` at `w` radians per sample:
/// `Σ_sections Re(Σk·b_k·e^{−iwk} / Σb_k·e^{−iwk}) − Re(Σk·a_k·e^{−iwk} / Σa_k·e^{−iwk})`.
fn group_delay(sos: &[[f64; 6]], w: f64) -> f64 {
    let e1 = C64::new(w.cos(), -w.sin());
    let e2 = e1.mul(e1);
    let gd = |c: &[f64]| {
        let p = C64::new(c[0], 0.0)
            .add(e1.mul(C64::new(c[1], 0.0)))
            .add(e2.mul(C64::new(c[2], 0.0)));
        let dp = e1
            .mul(C64::new(c[1], 0.0))
            .add(e2.mul(C64::new(2.0 * c[2], 0.0)));
        dp.div(p).re
    };
    sos.iter().map(|s| gd(&s[..3]) - gd(&s[3..])).sum()
}

/// The geometric centre (Hz) of the band where `|H|` is within 3 dB of its peak, on a
/// logarithmic grid.
fn centre_from_response(sos: &[[f64; 6]], fs: f64) -> f64 {
    const N: usize = 4096;
    let f_lo = fs * 1e-5;
    let f_hi = fs / 2.0 * (1.0 - 1e-9);
    let freq = |i: usize| f_lo * (f_hi / f_lo).powf(i as f64 / (N - 1) as f64);
    let mag: Vec<f64> = (0..N)
        .map(|i| response(sos, std::f64::consts::TAU * freq(i) / fs).abs())
        .collect();
    let (peak_i, peak) = mag
        .iter()
        .enumerate()
        .fold((0, 0.0f64), |b, (i, &m)| if m > b.1 { (i, m) } else { b });
    let edge = peak / std::f64::consts::SQRT_2;
    let mut lo = peak_i;
    while lo > 0 && mag[lo - 1] >= edge {
        lo -= 1;
    }
    let mut hi = peak_i;
    while hi + 1 < N && mag[hi + 1] >= edge {
        hi += 1;
    }
    (freq(lo) * freq(hi)).sqrt()
}

#[derive(Debug)]
enum EngineState {
    Cpu(Box<cpu::CpuState>),
    Gpu(Box<gpu::GpuFilter>),
}

/// Streaming causal band-pass (or high-pass) filter on either engine. See the
/// [module docs](self) for the definition and the error bounds.
///
/// ```no_run
/// use neurokernels::{BandpassFilter, Engine, FilterSettings};
/// let mut f = BandpassFilter::new(&Engine::auto()?, FilterSettings::default(), 30_000.0)?;
/// let chunk = ndarray::Array2::<f32>::zeros((600, 384));
/// let filtered = f.process(chunk.view())?;
/// assert_eq!(filtered.dim(), (600, 384));
/// # Ok::<(), neurokernels::Error>(())
/// ```
#[derive(Debug)]
pub struct BandpassFilter {
    sos: Vec<[f64; 6]>,
    /// `(b₀, b₁, b₂, a₁, a₂)` divided by `a₀`.
    coeffs: Vec<cpu::Coeffs>,
    fs: f64,
    centre_hz: f64,
    n_channels: Option<usize>,
    engine: EngineState,
}

impl BandpassFilter {
    /// Where the stream stands (see [`StreamMark`]).
    pub(crate) fn mark(&self) -> StreamMark {
        let gpu = match &self.engine {
            EngineState::Gpu(g) => Some(g.mark()),
            EngineState::Cpu(_) => None,
        };
        StreamMark {
            n_channels: self.n_channels,
            pos: 0,
            next_bin: 0,
            gpu,
        }
    }

    /// Back to `mark`, taken on the GPU engine before the one chunk processed since.
    pub(crate) fn rewind(&mut self, mark: StreamMark) {
        if let (EngineState::Gpu(g), Some(m)) = (&mut self.engine, mark.gpu) {
            g.rewind(m);
            self.n_channels = mark.n_channels;
        }
    }

    /// A Butterworth filter designed by [`butter_sos`] from `settings` at sample rate `fs`
    /// (Hz). The channel count is fixed by the first non-empty chunk.
    ///
    /// # Errors
    /// As [`butter_sos`]; GPU errors when the shader cannot be compiled.
    pub fn new(engine: &Engine, settings: FilterSettings, fs: f64) -> Result<Self> {
        let sos = butter_sos(settings.order, settings.low_hz, settings.high_hz, fs)?;
        let top = if settings.high_hz >= fs / 2.0 {
            fs / 2.0
        } else {
            settings.high_hz
        };
        Self::build(engine, sos, fs, Some((settings.low_hz * top).sqrt()))
    }

    /// A filter running the given sections `[b₀, b₁, b₂, a₀, a₁, a₂]` (each normalised by
    /// its `a₀`) at sample rate `fs` (Hz).
    ///
    /// # Errors
    /// [`Error::InvalidSetting`]: `fs` not finite and positive; `sos` empty, longer than
    /// [`MAX_SECTIONS`], with a non-finite coefficient or an `a₀` of 0.
    pub fn from_sos(engine: &Engine, sos: &[[f64; 6]], fs: f64) -> Result<Self> {
        if !(fs.is_finite() && fs > 0.0) {
            return Err(Error::setting(
                "fs",
                format!("must be finite and > 0, got {fs}"),
            ));
        }
        if sos.is_empty() || sos.len() > MAX_SECTIONS {
            return Err(Error::setting(
                "sos",
                format!("need 1 to {MAX_SECTIONS} sections, got {}", sos.len()),
            ));
        }
        for (i, s) in sos.iter().enumerate() {
            if s.iter().any(|v| !v.is_finite()) || s[3] == 0.0 {
                return Err(Error::setting(
                    "sos",
                    format!("section {i} has a non-finite coefficient or a₀ = 0: {s:?}"),
                ));
            }
        }
        Self::build(engine, sos.to_vec(), fs, None)
    }

    fn build(engine: &Engine, sos: Vec<[f64; 6]>, fs: f64, centre_hz: Option<f64>) -> Result<Self> {
        let coeffs: Vec<cpu::Coeffs> = sos
            .iter()
            .map(|s| {
                [
                    s[0] / s[3],
                    s[1] / s[3],
                    s[2] / s[3],
                    s[4] / s[3],
                    s[5] / s[3],
                ]
            })
            .collect();
        let centre_hz = centre_hz.unwrap_or_else(|| centre_from_response(&sos, fs));
        let state = match engine {
            Engine::Cpu => EngineState::Cpu(Box::default()),
            Engine::Gpu(ctx) => EngineState::Gpu(Box::new(gpu::GpuFilter::new(ctx, &coeffs)?)),
        };
        Ok(BandpassFilter {
            sos,
            coeffs,
            fs,
            centre_hz,
            n_channels: None,
            engine: state,
        })
    }

    /// The second-order sections `[b₀, b₁, b₂, a₀, a₁, a₂]`.
    pub fn sos(&self) -> &[[f64; 6]] {
        &self.sos
    }

    /// The sample rate in Hz.
    pub fn fs(&self) -> f64 {
        self.fs
    }

    /// The channel count, fixed by the first non-empty chunk (`None` before it).
    pub fn n_channels(&self) -> Option<usize> {
        self.n_channels
    }

    /// Whether the engine is the GPU.
    pub fn is_gpu(&self) -> bool {
        matches!(self.engine, EngineState::Gpu(_))
    }

    /// Group delay in samples at the geometric centre of the passband (see the
    /// [module docs](self#delay)), from the sections.
    pub fn group_delay_samples(&self) -> f64 {
        group_delay(&self.sos, std::f64::consts::TAU * self.centre_hz / self.fs)
    }

    /// The frequency (Hz) at which [`BandpassFilter::group_delay_samples`] is taken.
    pub fn centre_hz(&self) -> f64 {
        self.centre_hz
    }

    /// GPU engine: drops the buffers sized for the largest chunk so far (after a large
    /// calibration window, before a stream of small chunks).
    pub(crate) fn release_scratch(&mut self) {
        if let EngineState::Gpu(g) = &mut self.engine {
            g.release_scratch();
        }
    }

    /// Starts the stream again: zero state, and the channel count is free again.
    pub fn reset(&mut self) {
        self.n_channels = None;
        match &mut self.engine {
            EngineState::Cpu(s) => **s = cpu::CpuState::default(),
            EngineState::Gpu(g) => g.reset(),
        }
    }

    /// The fingerprint a saved state must carry: the sections and the sample rate.
    fn fingerprint(&self) -> u64 {
        let fp = Fingerprint::new().u64(self.sos.len() as u64).f64(self.fs);
        self.sos
            .iter()
            .flatten()
            .fold(fp, |fp, &c| fp.f64(c))
            .finish()
    }

    /// Saves the stream state (channel count and every section's state of every channel)
    /// in the format of [`crate::state`], for [`BandpassFilter::restore_state`] on a filter
    /// of the same sections and sample rate, on either engine.
    ///
    /// Each state value is written as an unevaluated pair `hi + lo`: the GPU engine's
    /// double-single pairs as they are, its `f64` state (and the CPU engine's) with
    /// `lo = −0`. A state restored on the engine and arithmetic that saved it resumes bit for
    /// bit; elsewhere `f64` takes `hi + lo` and double-single rounds it to a pair, so the
    /// resumed output stays within the bound of the [module docs](self) (1e-6 of the RMS).
    ///
    /// # Errors
    /// GPU errors of the read-back (device lost).
    pub fn save_state(&self) -> Result<Vec<u8>> {
        let mut w = StateWriter::new(STATE_TAG, self.fingerprint());
        match self.n_channels {
            None => w.u64(0),
            Some(nc) => {
                w.u64(nc as u64);
                match &self.engine {
                    EngineState::Cpu(st) if st.channels() == nc => w.f64s(st.pairs().into_iter()),
                    EngineState::Cpu(_) => {
                        w.f64s(std::iter::repeat_n(0.0, 4 * nc * self.sos.len()))
                    }
                    EngineState::Gpu(g) => w.f64s(g.read_state(nc)?.into_iter()),
                }
            }
        }
        Ok(w.finish())
    }

    /// Restores a state saved by [`BandpassFilter::save_state`] (on either engine): the
    /// stream continues from where it was saved, its channel count included.
    ///
    /// # Errors
    /// [`Error::State`] for bytes that are not a valid filter state of these sections and
    /// sample rate (truncated, corrupted, other settings, a non-finite value), with the
    /// filter unchanged; [`Error::Shape`] when the GPU adapter cannot hold that many
    /// channels, also with the filter unchanged. A GPU failure while uploading (out of
    /// memory, device lost) leaves the filter reset.
    pub fn restore_state(&mut self, bytes: &[u8]) -> Result<()> {
        let ns = self.sos.len();
        let mut r = StateReader::open(bytes, STATE_TAG, self.fingerprint())?;
        let nc = r.count("channel count", u32::MAX as u64)?;
        let pairs = match nc {
            0 => Vec::new(),
            _ => {
                let len = nc
                    .checked_mul(4 * ns)
                    .ok_or_else(|| Error::State(format!("{nc} channels overflow")))?;
                r.f64s("filter state", len)?
            }
        };
        r.finish()?;
        if let Some(i) = pairs.iter().position(|v| !v.is_finite()) {
            return Err(Error::State(format!(
                "non-finite filter state value {} at {i}",
                pairs[i]
            )));
        }
        if nc == 0 {
            self.reset();
            return Ok(());
        }
        match &mut self.engine {
            EngineState::Cpu(st) => st.set_pairs(ns, nc, &pairs),
            EngineState::Gpu(g) => {
                if let Err(e) = g.write_state(nc, &pairs) {
                    if !matches!(e, Error::Shape { .. } | Error::State(_)) {
                        self.reset();
                    }
                    return Err(e);
                }
            }
        }
        self.n_channels = Some(nc);
        Ok(())
    }

    /// Caps the rows one GPU dispatch walks, to exercise the splitting of long chunks on
    /// small inputs (tests only; `None` restores the default).
    #[doc(hidden)]
    pub fn debug_set_rows_per_dispatch(&mut self, rows: Option<usize>) {
        if let EngineState::Gpu(g) = &mut self.engine {
            g.set_rows_limit(rows);
        }
    }

    /// Validates the channel count of an `(n, c)` chunk.
    fn check_shape(&self, c: usize) -> Result<()> {
        if c == 0 {
            return Err(Error::shape("chunk", "at least one channel", "0 channels"));
        }
        if let Some(expected) = self.n_channels {
            if expected != c {
                return Err(Error::shape(
                    "chunk",
                    format!("{expected} channels (fixed by the first chunk)"),
                    format!("{c} channels"),
                ));
            }
        }
        Ok(())
    }

    /// Filters a `(samples, channels)` chunk (any strides) and returns the filtered chunk,
    /// same shape.
    ///
    /// # Errors
    /// Before any state change: [`Error::Shape`] for no channels or a channel count other
    /// than the stream's; [`Error::NonFinite`] naming the first NaN or ±inf. GPU errors (out
    /// of memory, device lost) leave the state as it was.
    pub fn process(&mut self, chunk: ArrayView2<'_, f32>) -> Result<Array2<f32>> {
        let (n, c) = chunk.dim();
        self.check_shape(c)?;
        if n == 0 {
            return Ok(Array2::zeros((0, c)));
        }
        check_finite(chunk)?;
        let out = match &mut self.engine {
            EngineState::Cpu(st) => {
                let mut out =
                    crate::validate::host_zeros::<f32, _>("filter output", chunk.raw_dim())?;
                if st.channels() != c {
                    st.init(self.coeffs.len(), c);
                }
                st.run(&self.coeffs, chunk, out.view_mut());
                out
            }
            EngineState::Gpu(g) => g.process_host(chunk)?,
        };
        self.n_channels = Some(c);
        Ok(out)
    }

    /// Filters `chunk` into `out` (same shape; any strides for both).
    ///
    /// # Errors
    /// As [`BandpassFilter::process`], plus [`Error::Shape`] when `out`'s shape differs
    /// from `chunk`'s. On error `out` is left untouched.
    pub fn process_into(
        &mut self,
        chunk: ArrayView2<'_, f32>,
        out: ArrayViewMut2<'_, f32>,
    ) -> Result<()> {
        self.filter_into(chunk, out, true)
    }

    /// [`BandpassFilter::process_into`] for a chunk its caller has checked finite (the
    /// chain's: one scan of the chunk, not two).
    pub(crate) fn process_finite_into(
        &mut self,
        chunk: ArrayView2<'_, f32>,
        out: ArrayViewMut2<'_, f32>,
    ) -> Result<()> {
        self.filter_into(chunk, out, false)
    }

    fn filter_into(
        &mut self,
        chunk: ArrayView2<'_, f32>,
        mut out: ArrayViewMut2<'_, f32>,
        scan: bool,
    ) -> Result<()> {
        let (n, c) = chunk.dim();
        check_out_shape((n, c), out.dim())?;
        self.check_shape(c)?;
        if n == 0 {
            return Ok(());
        }
        if scan {
            check_finite(chunk)?;
        }
        match &mut self.engine {
            EngineState::Cpu(st) => {
                if st.channels() != c {
                    st.init(self.coeffs.len(), c);
                }
                st.run(&self.coeffs, chunk, out);
            }
            EngineState::Gpu(g) => {
                let y = g.process_host(chunk)?;
                out.assign(&y);
            }
        }
        self.n_channels = Some(c);
        Ok(())
    }

    /// Filters an `f32` `(samples, channels)` chunk already on the device into a new device
    /// array of the same shape (GPU engine only). The output buffer is reused from chunk to
    /// chunk once the previous output has been dropped, so a steady stream allocates nothing
    /// new on the device. Non-finite samples are found on the device and reported like
    /// [`BandpassFilter::process`] does.
    ///
    /// # Errors
    /// As [`BandpassFilter::process`], plus [`Error::DeviceArray`] for the CPU engine, an
    /// array of another element type or context; [`Error::Shape`] for a rank other than 2.
    pub fn process_device(&mut self, chunk: &DeviceArray) -> Result<DeviceArray> {
        let (n, c) = f32_device_chunk(chunk, "the filter")?;
        let out = self.gpu_for(c)?.process_device(chunk)?;
        if n > 0 {
            self.n_channels = Some(c);
        }
        Ok(out)
    }

    /// [`BandpassFilter::process_device`] of a non-empty chunk, recorded for a submission
    /// shared with the stages after it (the chain's); see [`Staged`].
    pub(crate) fn stage_device(&mut self, chunk: &DeviceArray) -> Result<(DeviceArray, Staged)> {
        let (_, c) = f32_device_chunk(chunk, "the filter")?;
        let out = self.gpu_for(c)?.stage_device(chunk)?;
        self.n_channels = Some(c);
        Ok(out)
    }

    /// The GPU half, after checking that it can take chunks of `c` channels.
    fn gpu_for(&mut self, c: usize) -> Result<&mut gpu::GpuFilter> {
        self.check_shape(c)?;
        match &mut self.engine {
            EngineState::Gpu(g) => Ok(g),
            EngineState::Cpu(_) => Err(needs_gpu("process_device")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_delay_of_a_pure_delay() {
        // z⁻² as one section: group delay 2 at every frequency.
        let sos = [[0.0, 0.0, 1.0, 1.0, 0.0, 0.0]];
        assert!((group_delay(&sos, 0.3) - 2.0).abs() < 1e-12);
    }

    #[test]
    fn centre_of_a_designed_band() {
        let sos = butter_sos(4, 300.0, 6000.0, 30_000.0).unwrap();
        let c = centre_from_response(&sos, 30_000.0);
        assert!((c / (300.0f64 * 6000.0).sqrt() - 1.0).abs() < 0.01, "{c}");
    }
}
