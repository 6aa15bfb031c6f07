//! Max-rate classifier (SPEC §5; seed: inferno `MaxRateClassifier`).
//!
//! A population of `N` neurons (any neuron shape, flattened) votes for one of `K` classes.
//! The state is a table of per-class firing rates; each neuron is assigned the class it fires
//! for most (relative to its other classes), and a sample is classified by the mean activity
//! of each class's neurons.
//!
//! # Definition
//! State: `rates (N, K)`, initially zero, and derived from it after every change (update,
//! load, reset):
//! * `proportions[n, k] = rates[n, k] / max(Σ_j |rates[n, j]|, 1e-12)` (rows L1-normalised);
//! * `assignments[n] = argmax_k proportions[n, k]`, the first index on ties (a neuron that
//!   never fired has an all-zero row and is assigned class 0, as in the seed);
//! * `occurrences[k] = #{n : assignments[n] = k}`.
//!
//! [`MaxRateClassifier::update`]`(inputs (B, N), labels (B))`, with `c_k` the number of
//! samples of class `k` in the batch and `S[n, k] = Σ_{b : labels[b] = k} inputs[b, n]`:
//! `rates[n, k] ← exp(−decay·c_k)·rates[n, k] + S[n, k] / c_k` for the classes present
//! (`c_k > 0`); the rates of classes absent from the batch are left as they are (their decay
//! factor is `exp(0) = 1` and their mean is taken as 0). Decay is thus per sample seen of the
//! class, not per call.
//!
//! [`MaxRateClassifier::regress`]`(inputs (B, N))` gives the `(B, K)` logits
//! `logits[b, k] = Σ_{n : assignments[n] = k} inputs[b, n]·w[n] / occurrences[k]`, with
//! `w[n] = proportions[n, assignments[n]]` when `proportional` (the default) and 1 otherwise;
//! a class with no neuron, or a non-finite quotient, gives 0.
//! [`MaxRateClassifier::classify`] is its argmax (first index on ties).
//! [`MaxRateClassifier::forward`] takes `(B, N)` rates or `(T, B, N)` spikes (averaged over
//! the leading time axis first), or spikes bit-packed along time
//! ([`MaxRateClassifier::forward_packed`]); it classifies with the current state, then
//! updates with the labels if given — the seed's order.
//!
//! Packed spikes use `numpy.packbits(inputs, axis=0)`'s layout: shape `(⌈T/8⌉, B, N)` bytes,
//! time step `t` in bit `7 − t mod 8` (big-endian) of plane `⌊t/8⌋`, bits past `T` ignored.
//! On the device the bytes are four to a little-endian `u32` word, as
//! [`DeviceArray`]s of [`crate::gpu::DType::U8`] hold them.
//!
//! # Engines and error bounds
//! Let `u = 2⁻²⁴` (half an `f32` ulp).
//! * **CPU** (`cpu.rs`): rates, proportions, class sums and logit sums in `f64`; time means
//!   in `f64`. Each update adds at most a few `f64` roundings (`≤ (c_k + 3)·2⁻⁵³` relative to
//!   `|decayed rate| + Σ|inputs|/c_k`); logits are exact to `f64` before their one rounding
//!   to `f32`. Rates are read back and saved as `f64`.
//! * **GPU** (`gpu.rs`, `shaders/classifier.wgsl`): everything in `f32`. One update's error
//!   is at most `(c_k + 4)·u·(|exp(−decay·c_k)·rates| + Σ_b |inputs[b, n]| / c_k)`, a
//!   sequential sum over the class's rows; over a sequence of updates these add up, each
//!   earlier one damped by the later decays. Logits: `|error| ≤ (L + 64 + tiles + 2)·u ·
//!   Σ_n |inputs[b, n]·w[n]| / occurrences[k]` given the state, where each thread sums
//!   `L = tile_len` (64 for `N ≤ 2²¹·…`, see [`MaxRateClassifier::regress_depth`]) neurons,
//!   a workgroup folds 64 threads, and `tiles = ⌈N / (64·L)⌉` partials are summed per row —
//!   for `N = 10⁶` the factor is 374·u ≈ 2.2·10⁻⁵.
//! * Assignments are an argmax of proportions: the two engines (and the seed's `f32`) may
//!   assign a neuron differently only where two of its proportions lie within that rounding
//!   of each other; exact ties (equal rates) go to the first class on every engine.
//! * Time means: the CPU sums in `f64`; the GPU sums device inputs in `f32` in time order
//!   (exact for spike counts below `2²⁴`) and averages host inputs on the host in `f64`
//!   before rounding to `f32`. Spikes averaged from a dense `(T, B, N)` raster and from their
//!   packed form are bit-identical on each engine.
//!
//! # Errors
//! Checked before any state changes: input shapes (`(B, N)`, `(T, B, N)` with `T ≥ 1`,
//! packed planes `= ⌈T/8⌉`), `labels.len() = B`, labels `< K`
//! ([`Error::IndexOutOfRange`]), non-finite inputs ([`Error::NonFinite`] naming the row and
//! neuron; on the GPU these are found on the device and the update is rejected before the
//! state is swapped), rates that would overflow `f32`. A rejected call leaves the state
//! exactly as it was. An empty batch (`B = 0`) is valid: no change, empty outputs.
//!
//! # Where this differs from the seed
//! * The derived state is always that of the rates. The seed refreshes it only when rates are
//!   assigned, so before its first update it reports all occurrences 0 (its non-proportional
//!   logits then divide by zero, giving 0); here the zero rates assign every neuron to
//!   class 0 from the start (proportional logits are 0 either way).
//! * Non-finite logits become 0, including `−inf` (the seed's `nan_to_num(nan=0, posinf=0)`
//!   turns `−inf` into `−3.4·10³⁸`). Non-finite inputs are an error rather than a NaN that
//!   would poison the rates for good.
//! * `proportional` is a setting ([`ClassifierSettings::proportional`],
//!   [`MaxRateClassifier::set_proportional`]) rather than an argument of every call.
//! * Neuron shapes are flattened: `N` is the product of the seed's `shape`. Saved rates are
//!   `(N, K)`; a saved `(*shape, K)` array loads too.

mod cpu;
mod gpu;

use std::path::Path;

use ndarray::{Array2, ArrayView2, ArrayView3, ArrayViewD, Ix2, Ix3};

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::gpu::{DType, DeviceArray};
use crate::state::{Fingerprint, StateReader, StateWriter};

/// Operator tag of a saved classifier state.
const STATE_TAG: [u8; 4] = *b"MRC ";

/// Settings of [`MaxRateClassifier`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClassifierSettings {
    /// Number of neurons `N` (the seed's `shape`, flattened). At least 1.
    pub n_neurons: usize,
    /// Number of classes `K`. At least 1.
    pub n_classes: usize,
    /// Decay rate `λ ≥ 0`: each update scales a class's rates by `exp(−λ·c_k)`, `c_k` the
    /// number of the batch's samples of that class. Default 0 (a running sum of class means).
    pub decay: f64,
    /// Weight each neuron's vote by its proportion for its assigned class (default true).
    pub proportional: bool,
}

impl ClassifierSettings {
    /// Settings for `n_neurons` neurons and `n_classes` classes, no decay, proportional.
    pub fn new(n_neurons: usize, n_classes: usize) -> Self {
        ClassifierSettings {
            n_neurons,
            n_classes,
            decay: 0.0,
            proportional: true,
        }
    }
}

/// What [`MaxRateClassifier::forward`] returns: the predicted labels and the logits they are
/// the argmax of, computed before the update.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// Predicted class of each sample (`B`).
    pub labels: Vec<usize>,
    /// `(B, K)` logits.
    pub logits: Array2<f32>,
}

/// An input batch after validation and any time averaging, in the form the engines take.
#[derive(Debug)]
pub(crate) enum Batch<'a> {
    /// `(B, N)` `f32`, row-major.
    F32(&'a [f32]),
    /// `(B, N)` `f64` means (CPU engine), row-major.
    F64(Vec<f64>),
}

/// A validated update request: per-class counts and decay factors, and the rows by class.
#[derive(Debug, Clone)]
pub(crate) struct UpdatePlan {
    /// `c_k`.
    pub counts: Vec<u64>,
    /// `exp(−decay·c_k)` in `f64`.
    pub decay: Vec<f64>,
    /// Rows sorted by class (stable: ascending within a class).
    pub order: Vec<u32>,
    /// `order[offs[k]..offs[k+1]]` are the rows of class `k`.
    pub offs: Vec<usize>,
}

/// How a device input holds its values (see [`MaxRateClassifier::forward_device`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DeviceKind {
    /// `(B, N)` `f32`, used as is.
    Plain,
    /// `(T, B, N)` `f32`, averaged over `T`.
    TimeF32,
    /// `(T, B, N)` `u8` values, averaged over `T`.
    TimeU8,
    /// `(⌈T/8⌉, B, N)` bits packed along time, averaged over `T`.
    Packed,
}

/// A validated device input.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DeviceInput<'a> {
    pub array: &'a DeviceArray,
    pub kind: DeviceKind,
    /// Planes along the leading axis (1 for `Plain`).
    pub planes: usize,
    /// `T` (1 for `Plain`).
    pub n_steps: usize,
    /// `B`.
    pub batch: usize,
}

/// The max-rate classifier on either engine.
///
/// ```no_run
/// use neurokernels::{Engine, classifier::{ClassifierSettings, MaxRateClassifier}};
/// let mut clf = MaxRateClassifier::new(&Engine::auto()?, ClassifierSettings {
///     decay: 0.1, ..ClassifierSettings::new(1000, 10) })?;
/// let rates = ndarray::Array2::<f32>::zeros((32, 1000)); // (batch, neurons)
/// let labels = vec![3usize; 32];
/// clf.update(rates.view(), &labels)?;
/// let predicted = clf.classify(rates.view())?;
/// # Ok::<(), neurokernels::Error>(())
/// ```
#[derive(Debug)]
pub struct MaxRateClassifier {
    settings: ClassifierSettings,
    engine: EngineState,
}

#[derive(Debug)]
enum EngineState {
    Cpu(Box<cpu::CpuClassifier>),
    Gpu(Box<gpu::GpuClassifier>),
}

/// Whether `x` is finite (on the bits; the compiler vectorises the fold).
fn all_finite(x: &[f32]) -> bool {
    x.iter().fold(true, |ok, v| ok & v.is_finite())
}

/// The first non-finite value of a row-major `(rows, cols)` slice as an error.
pub(crate) fn locate_non_finite<T: Copy + Into<f64>>(
    what: &'static str,
    x: &[T],
    cols: usize,
) -> Option<Error> {
    x.iter().position(|v| !(*v).into().is_finite()).map(|i| {
        let v: f64 = x[i].into();
        Error::NonFinite {
            what,
            sample: i / cols.max(1),
            channel: i % cols.max(1),
            value: v,
        }
    })
}

impl MaxRateClassifier {
    /// A classifier with all rates zero. Errors name an invalid setting; on the GPU, also
    /// a model too large for the device (`N·K·4` bytes must fit one storage binding, `K`
    /// at most 4096).
    pub fn new(engine: &Engine, settings: ClassifierSettings) -> Result<Self> {
        if settings.n_neurons == 0 {
            return Err(Error::setting("n_neurons", "must be at least 1"));
        }
        if settings.n_classes == 0 {
            return Err(Error::setting("n_classes", "must be at least 1"));
        }
        if !(settings.decay.is_finite() && settings.decay >= 0.0) {
            return Err(Error::setting(
                "decay",
                format!("must be finite and ≥ 0, got {}", settings.decay),
            ));
        }
        let (n, k) = (settings.n_neurons, settings.n_classes);
        n.checked_mul(k)
            .ok_or_else(|| Error::setting("n_neurons", "N·K overflows"))?;
        let engine = match engine {
            Engine::Cpu => EngineState::Cpu(Box::new(cpu::CpuClassifier::new(n, k))),
            Engine::Gpu(ctx) => EngineState::Gpu(Box::new(gpu::GpuClassifier::new(ctx, n, k)?)),
        };
        Ok(MaxRateClassifier { settings, engine })
    }

    /// The settings.
    pub fn settings(&self) -> &ClassifierSettings {
        &self.settings
    }

    /// Number of neurons `N`.
    pub fn n_neurons(&self) -> usize {
        self.settings.n_neurons
    }

    /// Number of classes `K`.
    pub fn n_classes(&self) -> usize {
        self.settings.n_classes
    }

    /// Switches proportional weighting of the logits on or off (the seed's per-call
    /// `proportional` argument). Changes no state.
    pub fn set_proportional(&mut self, proportional: bool) {
        self.settings.proportional = proportional;
    }

    /// The largest number of additions on the path of one GPU logit sum (`L + 64 + tiles`,
    /// see the module's error bound); 0 on the CPU engine, whose sums are `f64`.
    pub fn regress_depth(&self) -> usize {
        match &self.engine {
            EngineState::Cpu(_) => 0,
            EngineState::Gpu(g) => g.regress_depth(),
        }
    }

    /// Sets all rates to zero (derived state recomputed).
    pub fn reset(&mut self) -> Result<()> {
        let zeros = vec![0.0f64; self.settings.n_neurons * self.settings.n_classes];
        self.set_rates_unchecked(&zeros)
    }

    // ------------------------------------------------------------------------------------
    // Validation

    fn check_rows(&self, what: &'static str, batch: usize, n: usize) -> Result<()> {
        if n != self.settings.n_neurons {
            return Err(Error::shape(
                what,
                format!("(B, {}) (B samples × N neurons)", self.settings.n_neurons),
                format!("(B = {batch}, {n})"),
            ));
        }
        Ok(())
    }

    fn plan(&self, labels: &[usize], batch: usize) -> Result<UpdatePlan> {
        let k = self.settings.n_classes;
        if labels.len() != batch {
            return Err(Error::shape(
                "labels",
                format!("{batch} labels (one per sample)"),
                format!("{} labels", labels.len()),
            ));
        }
        if let Some(&bad) = labels.iter().find(|&&l| l >= k) {
            return Err(Error::IndexOutOfRange {
                what: "label",
                index: bad as u64,
                bound: k as u64,
            });
        }
        if batch > u32::MAX as usize {
            return Err(Error::shape(
                "inputs",
                "at most 2³² − 1 samples",
                format!("{batch}"),
            ));
        }
        let mut counts = vec![0u64; k];
        for &l in labels {
            counts[l] += 1;
        }
        let mut offs = vec![0usize; k + 1];
        for c in 0..k {
            offs[c + 1] = offs[c] + counts[c] as usize;
        }
        let mut fill = offs.clone();
        let mut order = vec![0u32; batch];
        for (b, &l) in labels.iter().enumerate() {
            order[fill[l]] = b as u32;
            fill[l] += 1;
        }
        let decay = counts
            .iter()
            .map(|&c| (-self.settings.decay * c as f64).exp())
            .collect();
        Ok(UpdatePlan {
            counts,
            decay,
            order,
            offs,
        })
    }

    /// The host batch as a contiguous slice (copied only when the view is not).
    fn host_rows<'a>(
        &self,
        inputs: &'a ArrayView2<'_, f32>,
    ) -> Result<std::borrow::Cow<'a, [f32]>> {
        let (b, n) = inputs.dim();
        self.check_rows("inputs", b, n)?;
        Ok(match inputs.as_slice() {
            Some(s) => std::borrow::Cow::Borrowed(s),
            None => std::borrow::Cow::Owned(inputs.iter().copied().collect()),
        })
    }

    fn device_input<'a>(&self, a: &'a DeviceArray, time_axis: bool) -> Result<DeviceInput<'a>> {
        let shape = a.shape();
        let n = self.settings.n_neurons;
        let (kind, planes, batch, nn) = match (shape.len(), a.dtype()) {
            (2, DType::F32) => (DeviceKind::Plain, 1, shape[0], shape[1]),
            (3, DType::F32) if time_axis => (DeviceKind::TimeF32, shape[0], shape[1], shape[2]),
            (3, DType::U8) if time_axis => (DeviceKind::TimeU8, shape[0], shape[1], shape[2]),
            _ => {
                return Err(Error::DeviceArray(format!(
                    "inputs must be f32 (B, {n}){}; got {:?} {:?}",
                    if time_axis {
                        format!(", or f32/u8 (T, B, {n})")
                    } else {
                        String::new()
                    },
                    a.dtype(),
                    shape
                )))
            }
        };
        self.check_rows("inputs", batch, nn)?;
        if planes == 0 {
            return Err(Error::shape("inputs", "at least one time step", "T = 0"));
        }
        Ok(DeviceInput {
            array: a,
            kind,
            planes,
            n_steps: planes,
            batch,
        })
    }

    // ------------------------------------------------------------------------------------
    // Host inputs

    /// Updates the rates with a batch of `(B, N)` inputs (spike rates or counts) and their
    /// labels (`B`, each `< K`). See the module docs for the formula.
    pub fn update(&mut self, inputs: ArrayView2<'_, f32>, labels: &[usize]) -> Result<()> {
        let rows = self.host_rows(&inputs)?;
        let batch = inputs.nrows();
        let plan = self.plan(labels, batch)?;
        if batch == 0 {
            return Ok(());
        }
        self.run_host(&Batch::F32(&rows), batch, false, Some(&plan))
            .map(|_| ())
    }

    /// The `(B, K)` logits of a `(B, N)` batch.
    pub fn regress(&mut self, inputs: ArrayView2<'_, f32>) -> Result<Array2<f32>> {
        let rows = self.host_rows(&inputs)?;
        let batch = inputs.nrows();
        self.run_host(&Batch::F32(&rows), batch, true, None)
            .map(|p| p.logits)
    }

    /// The predicted class of each sample of a `(B, N)` batch (argmax of the logits, first
    /// index on ties).
    pub fn classify(&mut self, inputs: ArrayView2<'_, f32>) -> Result<Vec<usize>> {
        let rows = self.host_rows(&inputs)?;
        let batch = inputs.nrows();
        self.run_host(&Batch::F32(&rows), batch, true, None)
            .map(|p| p.labels)
    }

    /// Classifies a batch with the current state, then updates with `labels` when given.
    ///
    /// `inputs` is `(B, N)` rates or `(T, B, N)` values (spikes) averaged over `T` first.
    /// Nothing changes when an error is returned.
    pub fn forward(
        &mut self,
        inputs: ArrayViewD<'_, f32>,
        labels: Option<&[usize]>,
    ) -> Result<Prediction> {
        match inputs.ndim() {
            2 => {
                let x = inputs
                    .into_dimensionality::<Ix2>()
                    .map_err(|e| Error::shape("inputs", "(B, N)", e.to_string()))?;
                let rows = self.host_rows(&x)?;
                let batch = x.nrows();
                let plan = labels.map(|l| self.plan(l, batch)).transpose()?;
                self.run_host(&Batch::F32(&rows), batch, true, plan.as_ref())
            }
            3 => {
                let x = inputs
                    .into_dimensionality::<Ix3>()
                    .map_err(|e| Error::shape("inputs", "(T, B, N)", e.to_string()))?;
                let (t, batch, n) = x.dim();
                self.check_rows("inputs", batch, n)?;
                if t == 0 {
                    return Err(Error::shape("inputs", "at least one time step", "T = 0"));
                }
                let plan = labels.map(|l| self.plan(l, batch)).transpose()?;
                let mean = time_mean_f32(x)?;
                self.run_means(mean, batch, plan.as_ref())
            }
            d => Err(Error::shape(
                "inputs",
                "(B, N) or (T, B, N)",
                format!("{d} dimensions {:?}", inputs.shape()),
            )),
        }
    }

    /// [`MaxRateClassifier::forward`] on spikes bit-packed along time: `packed` is
    /// `(⌈T/8⌉, B, N)` bytes in `numpy.packbits(axis=0)`'s layout, `n_steps = T`.
    pub fn forward_packed(
        &mut self,
        packed: ArrayView3<'_, u8>,
        n_steps: usize,
        labels: Option<&[usize]>,
    ) -> Result<Prediction> {
        let (planes, batch, n) = packed.dim();
        self.check_rows("packed spikes", batch, n)?;
        check_planes(planes, n_steps)?;
        let plan = labels.map(|l| self.plan(l, batch)).transpose()?;
        let mean = time_mean_packed(packed, n_steps);
        self.run_means(mean, batch, plan.as_ref())
    }

    /// Runs host means `(B, N)` in `f64` through the engine.
    fn run_means(
        &mut self,
        mean: Vec<f64>,
        batch: usize,
        plan: Option<&UpdatePlan>,
    ) -> Result<Prediction> {
        match &self.engine {
            EngineState::Cpu(_) => self.run_host(&Batch::F64(mean), batch, true, plan),
            EngineState::Gpu(_) => {
                let m32: Vec<f32> = mean.iter().map(|&v| v as f32).collect();
                self.run_host(&Batch::F32(&m32), batch, true, plan)
            }
        }
    }

    fn run_host(
        &mut self,
        x: &Batch<'_>,
        batch: usize,
        regress: bool,
        plan: Option<&UpdatePlan>,
    ) -> Result<Prediction> {
        let k = self.settings.n_classes;
        if batch == 0 {
            return Ok(Prediction {
                labels: Vec::new(),
                logits: Array2::zeros((0, k)),
            });
        }
        let prop = self.settings.proportional;
        let (logits, labels) = match &mut self.engine {
            EngineState::Cpu(c) => c.run(x, batch, regress, prop, plan)?,
            EngineState::Gpu(g) => {
                let Batch::F32(rows) = x else {
                    return Err(Error::Validation("GPU input must be f32".into()));
                };
                g.run_host(rows, batch, regress, prop, plan)?
            }
        };
        prediction(batch, k, regress, logits, labels)
    }

    // ------------------------------------------------------------------------------------
    // Device inputs

    fn gpu_run(
        &mut self,
        input: DeviceInput<'_>,
        regress: bool,
        labels: Option<&[usize]>,
        what: &str,
    ) -> Result<Prediction> {
        let plan = labels.map(|l| self.plan(l, input.batch)).transpose()?;
        let k = self.settings.n_classes;
        let prop = self.settings.proportional;
        let EngineState::Gpu(g) = &mut self.engine else {
            return Err(Error::DeviceArray(format!("{what} needs the GPU engine")));
        };
        if input.batch == 0 {
            return Ok(Prediction {
                labels: Vec::new(),
                logits: Array2::zeros((0, k)),
            });
        }
        let (logits, labels) = g.run_device(input, regress, prop, plan.as_ref())?;
        prediction(input.batch, k, regress, logits, labels)
    }

    /// [`MaxRateClassifier::update`] on a `(B, N)` `f32` array already on the device
    /// (GPU engine only). Non-finite values are found on the device and reject the update.
    pub fn update_device(&mut self, inputs: &DeviceArray, labels: &[usize]) -> Result<()> {
        let input = self.device_input(inputs, false)?;
        self.gpu_run(input, false, Some(labels), "update_device")
            .map(|_| ())
    }

    /// [`MaxRateClassifier::regress`] on a `(B, N)` `f32` array on the device (GPU engine
    /// only); the `(B, K)` logits are read back.
    pub fn regress_device(&mut self, inputs: &DeviceArray) -> Result<Array2<f32>> {
        let input = self.device_input(inputs, false)?;
        self.gpu_run(input, true, None, "regress_device")
            .map(|p| p.logits)
    }

    /// [`MaxRateClassifier::classify`] on a `(B, N)` `f32` array on the device (GPU engine
    /// only).
    pub fn classify_device(&mut self, inputs: &DeviceArray) -> Result<Vec<usize>> {
        let input = self.device_input(inputs, false)?;
        self.gpu_run(input, true, None, "classify_device")
            .map(|p| p.labels)
    }

    /// [`MaxRateClassifier::forward`] on a device array (GPU engine only): `f32` `(B, N)`,
    /// or `f32` / `u8` `(T, B, N)` averaged over `T` on the device.
    pub fn forward_device(
        &mut self,
        inputs: &DeviceArray,
        labels: Option<&[usize]>,
    ) -> Result<Prediction> {
        let input = self.device_input(inputs, true)?;
        self.gpu_run(input, true, labels, "forward_device")
    }

    /// [`MaxRateClassifier::forward_packed`] on packed spikes on the device (GPU engine
    /// only): a `u8` array of shape `(⌈T/8⌉, B, N)`, `n_steps = T`.
    pub fn forward_packed_device(
        &mut self,
        packed: &DeviceArray,
        n_steps: usize,
        labels: Option<&[usize]>,
    ) -> Result<Prediction> {
        let shape = packed.shape();
        if shape.len() != 3 || packed.dtype() != DType::U8 {
            return Err(Error::DeviceArray(format!(
                "packed spikes must be u8 (⌈T/8⌉, B, N); got {:?} {:?}",
                packed.dtype(),
                shape
            )));
        }
        self.check_rows("packed spikes", shape[1], shape[2])?;
        check_planes(shape[0], n_steps)?;
        let input = DeviceInput {
            array: packed,
            kind: DeviceKind::Packed,
            planes: shape[0],
            n_steps,
            batch: shape[1],
        };
        self.gpu_run(input, true, labels, "forward_packed_device")
    }

    // ------------------------------------------------------------------------------------
    // State

    /// The rates `(N, K)`, read back (exact: the GPU's `f32` widened, the CPU's own `f64`).
    pub fn rates(&self) -> Result<Array2<f64>> {
        let v = match &self.engine {
            EngineState::Cpu(c) => c.rates().to_vec(),
            EngineState::Gpu(g) => g.rates()?,
        };
        self.table(v)
    }

    /// The proportions `(N, K)` (rows of the rates L1-normalised).
    pub fn proportions(&self) -> Result<Array2<f64>> {
        let v = match &self.engine {
            EngineState::Cpu(c) => c.proportions().to_vec(),
            EngineState::Gpu(g) => g.proportions()?,
        };
        self.table(v)
    }

    /// The class assigned to each neuron (`N`).
    pub fn assignments(&self) -> Result<Vec<usize>> {
        match &self.engine {
            EngineState::Cpu(c) => Ok(c.assignments().iter().map(|&a| a as usize).collect()),
            EngineState::Gpu(g) => g.assignments(),
        }
    }

    /// The number of neurons assigned to each class (`K`).
    pub fn occurrences(&self) -> Result<Vec<u64>> {
        match &self.engine {
            EngineState::Cpu(c) => Ok(c.occurrences().to_vec()),
            EngineState::Gpu(g) => g.occurrences(),
        }
    }

    fn table(&self, v: Vec<f64>) -> Result<Array2<f64>> {
        Array2::from_shape_vec((self.settings.n_neurons, self.settings.n_classes), v)
            .map_err(|e| Error::Readback(e.to_string()))
    }

    /// Replaces the rates (`(N, K)`, finite; `f32` or `f64`) and recomputes the derived
    /// state. The GPU engine rounds them to `f32`.
    pub fn set_rates<T: Copy + Into<f64>>(&mut self, rates: ArrayView2<'_, T>) -> Result<()> {
        let (n, k) = rates.dim();
        if (n, k) != (self.settings.n_neurons, self.settings.n_classes) {
            return Err(Error::shape(
                "rates",
                format!("({}, {})", self.settings.n_neurons, self.settings.n_classes),
                format!("({n}, {k})"),
            ));
        }
        let v: Vec<f64> = rates.iter().map(|&x| x.into()).collect();
        self.set_rates_unchecked(&v)
    }

    fn set_rates_unchecked(&mut self, v: &[f64]) -> Result<()> {
        let k = self.settings.n_classes;
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            return Err(Error::NonFinite {
                what: "rates (sample = neuron, channel = class)",
                sample: i / k,
                channel: i % k,
                value: v[i],
            });
        }
        match &mut self.engine {
            EngineState::Cpu(c) => {
                if let Some(i) = v.iter().position(|x| x.abs() > f32::MAX as f64) {
                    return Err(Error::NonFinite {
                        what: "rates beyond f32 (sample = neuron, channel = class)",
                        sample: i / k,
                        channel: i % k,
                        value: v[i],
                    });
                }
                c.set_rates(v);
                Ok(())
            }
            EngineState::Gpu(g) => {
                let r: Vec<f32> = v.iter().map(|&x| x as f32).collect();
                if let Some(i) = r.iter().position(|x| !x.is_finite()) {
                    return Err(Error::NonFinite {
                        what: "rates beyond f32 (sample = neuron, channel = class)",
                        sample: i / k,
                        channel: i % k,
                        value: v[i],
                    });
                }
                g.set_rates(&r)
            }
        }
    }

    /// The fingerprint a saved state must carry: `N`, `K` and the decay (`proportional` is
    /// a per-call choice, not state, and is not part of it).
    fn fingerprint(&self) -> u64 {
        Fingerprint::new()
            .u64(self.settings.n_neurons as u64)
            .u64(self.settings.n_classes as u64)
            .f64(self.settings.decay)
            .finish()
    }

    /// Saves the stream state (the rates; everything else is derived from them) in the
    /// format of [`crate::state`], for [`MaxRateClassifier::restore_state`] on a classifier
    /// of the same `N`, `K` and decay, on either engine. The rates are written as `f64`
    /// (the GPU's `f32` widened, exactly): a state restored on the engine that saved it
    /// resumes bit for bit; the GPU engine rounds a CPU state to `f32`, one rounding within
    /// the update bound of the [module docs](self).
    ///
    /// # Errors
    /// GPU errors of the read-back (device lost).
    pub fn save_state(&self) -> Result<Vec<u8>> {
        let mut w = StateWriter::new(STATE_TAG, self.fingerprint());
        let v = match &self.engine {
            EngineState::Cpu(c) => c.rates().to_vec(),
            EngineState::Gpu(g) => g.rates()?,
        };
        w.f64s(v.into_iter());
        Ok(w.finish())
    }

    /// Restores a state saved by [`MaxRateClassifier::save_state`] (on either engine); the
    /// derived state (proportions, assignments, occurrences) is recomputed.
    ///
    /// # Errors
    /// [`Error::State`] for bytes that are not a valid classifier state of this `N`, `K`
    /// and decay (truncated, corrupted, other settings, a rate that is not finite or leaves
    /// `f32` range), with the classifier unchanged. A GPU failure while uploading (device
    /// lost) is returned as is.
    pub fn restore_state(&mut self, bytes: &[u8]) -> Result<()> {
        let mut r = StateReader::open(bytes, STATE_TAG, self.fingerprint())?;
        let v = r.f64s("rates", self.settings.n_neurons * self.settings.n_classes)?;
        r.finish()?;
        if let Some(x) = v
            .iter()
            .find(|x| !x.is_finite() || x.abs() > f32::MAX as f64)
        {
            return Err(Error::State(format!(
                "rate {x} is not finite or leaves f32 range"
            )));
        }
        self.set_rates_unchecked(&v)
    }

    /// The rates as a `.npy` file image (`<f8`, shape `(N, K)`, C order), what
    /// `numpy.load` reads.
    pub fn to_npy_bytes(&self) -> Result<Vec<u8>> {
        let r = self.rates()?;
        Ok(npy::write_f64(r.shape(), r.as_slice().unwrap_or(&[])))
    }

    /// Loads rates from a `.npy` file image (`<f8` or `<f4`, C or Fortran order) of shape
    /// `(N, K)` or `(*shape, K)` with `N` the product of `shape`; derived state recomputed.
    pub fn load_npy_bytes(&mut self, bytes: &[u8]) -> Result<()> {
        let (shape, data) = npy::read(bytes)?;
        let (n, k) = (self.settings.n_neurons, self.settings.n_classes);
        let rows: usize = shape[..shape.len().saturating_sub(1)].iter().product();
        if shape.len() < 2 || shape[shape.len() - 1] != k || rows != n {
            return Err(Error::shape(
                "saved rates",
                format!("({n}, {k}) or (*shape, {k}) with N = {n} neurons"),
                format!("{shape:?}"),
            ));
        }
        self.set_rates_unchecked(&data)
    }

    /// Saves the rates to `path` as `.npy` (`<f8`, `(N, K)`; lossless on both engines).
    /// I/O failures are reported as [`Error::InvalidSetting`] on `path`.
    pub fn save_npy(&self, path: impl AsRef<Path>) -> Result<()> {
        let bytes = self.to_npy_bytes()?;
        std::fs::write(path.as_ref(), bytes).map_err(|e| {
            Error::setting(
                "path",
                format!("cannot write {}: {e}", path.as_ref().display()),
            )
        })
    }

    /// Loads rates saved by [`MaxRateClassifier::save_npy`] (or by numpy, see
    /// [`MaxRateClassifier::load_npy_bytes`]); the derived state is recomputed. I/O failures
    /// are reported as [`Error::InvalidSetting`] on `path`; the state is unchanged on error.
    pub fn load_npy(&mut self, path: impl AsRef<Path>) -> Result<()> {
        let bytes = std::fs::read(path.as_ref()).map_err(|e| {
            Error::setting(
                "path",
                format!("cannot read {}: {e}", path.as_ref().display()),
            )
        })?;
        self.load_npy_bytes(&bytes)
    }
}

/// The engines' outputs as a [`Prediction`] (empty when the call only updated).
fn prediction(
    batch: usize,
    k: usize,
    regress: bool,
    logits: Vec<f32>,
    labels: Vec<usize>,
) -> Result<Prediction> {
    if !regress {
        return Ok(Prediction {
            labels: Vec::new(),
            logits: Array2::zeros((0, k)),
        });
    }
    let logits =
        Array2::from_shape_vec((batch, k), logits).map_err(|e| Error::Readback(e.to_string()))?;
    Ok(Prediction { labels, logits })
}

fn check_planes(planes: usize, n_steps: usize) -> Result<()> {
    if n_steps == 0 {
        return Err(Error::setting("n_steps", "must be at least 1"));
    }
    if planes != n_steps.div_ceil(8) {
        return Err(Error::shape(
            "packed spikes",
            format!("⌈T/8⌉ = {} planes for T = {n_steps}", n_steps.div_ceil(8)),
            format!("{planes} planes"),
        ));
    }
    Ok(())
}

/// Mean over the leading axis of `(T, B, N)` in `f64`; errors on a non-finite value.
fn time_mean_f32(x: ArrayView3<'_, f32>) -> Result<Vec<f64>> {
    let (t, b, n) = x.dim();
    let m = b * n;
    let mut acc = vec![0.0f64; m];
    for plane in x.outer_iter() {
        let std = plane.as_standard_layout();
        let s = std.as_slice().unwrap_or(&[]);
        if !all_finite(s) {
            if let Some(Error::NonFinite {
                sample,
                channel,
                value,
                ..
            }) = locate_non_finite("inputs", s, n)
            {
                return Err(Error::NonFinite {
                    what: "inputs (T, B, N): sample = row b, channel = neuron",
                    sample,
                    channel,
                    value,
                });
            }
        }
        cpu::add_widened(&mut acc, s);
    }
    let inv = t as f64;
    acc.iter_mut().for_each(|v| *v /= inv);
    Ok(acc)
}

/// Mean over time of packed spikes: set bits (of the first `n_steps`) / `n_steps`, in `f64`.
fn time_mean_packed(packed: ArrayView3<'_, u8>, n_steps: usize) -> Vec<f64> {
    let (_, b, n) = packed.dim();
    let mut count = vec![0u32; b * n];
    for (p, plane) in packed.outer_iter().enumerate() {
        let valid = (n_steps - 8 * p).min(8) as u32;
        let mask = ((0xff00u32 >> valid) & 0xff) as u8;
        let std = plane.as_standard_layout();
        let s = std.as_slice().unwrap_or(&[]);
        for (c, &byte) in count.iter_mut().zip(s) {
            *c += (byte & mask).count_ones();
        }
    }
    let t = n_steps as f64;
    count.iter().map(|&c| c as f64 / t).collect()
}

/// A minimal `.npy` reader/writer for the rates (format versions 1–3; `<f8` / `<f4`).
mod npy {
    use crate::error::{Error, Result};

    const MAGIC: &[u8] = b"\x93NUMPY";

    fn bad(reason: impl Into<String>) -> Error {
        Error::setting("saved rates", reason)
    }

    /// A version-1.0 `.npy` image of `data` (`<f8`, C order).
    pub fn write_f64(shape: &[usize], data: &[f64]) -> Vec<u8> {
        let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
        let shape_txt = if dims.len() == 1 {
            format!("({},)", dims[0])
        } else {
            format!("({})", dims.join(", "))
        };
        let mut header =
            format!("{{'descr': '<f8', 'fortran_order': False, 'shape': {shape_txt}, }}");
        // Magic (6) + version (2) + length (2) + header + '\n', padded to 64 bytes.
        let total = (10 + header.len() + 1).next_multiple_of(64);
        while 10 + header.len() + 1 < total {
            header.push(' ');
        }
        header.push('\n');
        let mut out = Vec::with_capacity(total + data.len() * 8);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&[1, 0]);
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        for v in data {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out
    }

    /// The value of `key` in the header dictionary (text up to the next top-level comma).
    fn field<'a>(header: &'a str, key: &str) -> Result<&'a str> {
        let at = header
            .find(&format!("'{key}'"))
            .ok_or_else(|| bad(format!("header has no '{key}'")))?;
        let rest = header[at + key.len() + 2..].trim_start();
        let rest = rest
            .strip_prefix(':')
            .ok_or_else(|| bad("malformed header"))?
            .trim_start();
        let end = if rest.starts_with('(') {
            rest.find(')').map(|i| i + 1)
        } else {
            rest.find([',', '}'])
        }
        .ok_or_else(|| bad("malformed header"))?;
        Ok(rest[..end].trim())
    }

    /// Shape and values (C order) of a `.npy` image of `<f8` or `<f4` data.
    pub fn read(bytes: &[u8]) -> Result<(Vec<usize>, Vec<f64>)> {
        if bytes.len() < 10 || &bytes[..6] != MAGIC {
            return Err(bad("not a .npy file (bad magic)"));
        }
        let (hlen, start): (usize, usize) = match bytes[6] {
            1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
            2 | 3 if bytes.len() >= 12 => (
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                12,
            ),
            v => return Err(bad(format!("unsupported .npy version {v}"))),
        };
        let end = start
            .checked_add(hlen)
            .filter(|&e| e <= bytes.len())
            .ok_or_else(|| bad("truncated header"))?;
        let header =
            std::str::from_utf8(&bytes[start..end]).map_err(|_| bad("header is not text"))?;
        let descr = field(header, "descr")?.trim_matches(['\'', '"']);
        let width = match descr {
            "<f8" => 8,
            "<f4" => 4,
            d => {
                return Err(bad(format!(
                    "dtype {d} not supported (need little-endian f8 or f4)"
                )))
            }
        };
        let fortran = match field(header, "fortran_order")? {
            "False" => false,
            "True" => true,
            f => return Err(bad(format!("bad fortran_order {f}"))),
        };
        let shape_txt = field(header, "shape")?;
        let shape: Vec<usize> = shape_txt
            .trim_matches(['(', ')'])
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<usize>()
                    .map_err(|_| bad(format!("bad shape {shape_txt}")))
            })
            .collect::<Result<_>>()?;
        let count = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| bad("shape overflows"))?;
        let body = &bytes[end..];
        if body.len() != count * width {
            return Err(bad(format!(
                "data holds {} bytes, the shape needs {}",
                body.len(),
                count * width
            )));
        }
        let mut data: Vec<f64> = if width == 8 {
            body.chunks_exact(8)
                .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect()
        } else {
            body.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
                .collect()
        };
        if fortran && shape.len() > 1 {
            // Column-major to row-major.
            use ndarray::ShapeBuilder;
            let f = ndarray::ArrayD::from_shape_vec(
                ndarray::IxDyn(&shape).f(),
                std::mem::take(&mut data),
            )
            .map_err(|e| bad(e.to_string()))?;
            data = f.as_standard_layout().iter().copied().collect();
        }
        Ok((shape, data))
    }
}
