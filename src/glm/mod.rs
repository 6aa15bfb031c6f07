//! Recurrent Poisson GLM simulation (SPEC §3; seed: `nemos.simulation`), with its coupling
//! filter and basis helpers.
//!
//! # The recurrence
//!
//! For `n` neurons, a coupling basis `basis (ws, nb)`, coefficients `coupling_coef (n, n, nb)`,
//! `feedforward_coef (n, nf)` and `intercepts (n)`, step `t` of a trial computes, exactly as
//! the seed's `simulate_recurrent`:
//!
//! ```text
//! conv[j, b]  = Σ_{w<ws} window[w, j] · basis[ws − 1 − w, b]     (window: last ws rows, oldest first)
//! rate[i]     = link(Σ_{j,b} coupling_coef[i, j, b]·conv[j, b] + Σ_k feedforward_coef[i, k]·input[t, i, k] + intercepts[i])
//! row[i]      = Poisson(rate[i])        (or rate[i] itself in the expected-value mode)
//! ```
//!
//! and the window shifts by one row. Row 0 of the basis multiplies the most recent row (lag
//! 1), row `ws − 1` the oldest. The window starts as `init_y`. Links: softplus (default) and
//! exp. Spikes and rates come back as `f32` arrays `(T, n)` for one trial ([`simulate_recurrent`])
//! or `(T, B, n)`, time-major, for `B` trials ([`RecurrentGlm`]).
//!
//! # Engines
//!
//! - CPU (`cpu.rs`): `f64` throughout. The window is kept as its future contributions: a ring
//!   of `ws` slots of `conv` (one per coming step); a drawn row adds `row[j]·basis[l−1, :]` to
//!   the slot of step `t + l` for each non-zero `row[j]` (spike rasters are sparse), and the
//!   coupling is one dense `n × n·nb` product per step. Trials run on all cores.
//! - GPU (`gpu.rs`, `shaders/glm.wgsl`): the same ring in `f32`, on the device, for every trial
//!   at once: one workgroup per trial, one invocation per receiving neuron, the time scan
//!   inside the kernel with barriers between steps. A dispatch runs at most
//!   [`RecurrentGlm::steps_per_dispatch`] steps; all dispatches of a call are recorded in one
//!   submission (more only when the outputs pass one storage binding), so there is no host
//!   round trip per step. The bound exists because Mesa's llvmpipe (lavapipe, and the GL
//!   backend on it) silently stops an invocation after 65 535 loop iterations in total: the
//!   host counts every loop iteration an invocation can run in one step (the coupling loop,
//!   the Poisson sampler's worst case including Philox's ten rounds, the ring updates for a
//!   dense row) and fits [`GPU_LOOP_BUDGET`] (half that limit) per dispatch
//!   ([`RecurrentGlm::steps_per_dispatch`]: 66 steps for 50 neurons, window 100, 10 basis
//!   functions). `tests/glm.rs` runs 10 000 expected-value steps (millions of loop iterations
//!   per invocation in all) against the CPU, step by step.
//! - Why this layout: on the software adapters a dispatch costs about 50 µs
//!   (`MACHINE_LIMITS.md`), so a dispatch per step would spend 0.5 s of every 10 000 steps on
//!   launches alone; a workgroup per trial that keeps stepping inside the kernel needs 152
//!   dispatches for 10 000 steps of the 50-neuron network. One workgroup per trial (not per
//!   neuron block) is what lets the steps synchronise with barriers; batches of trials fill
//!   the device. The ring of future contributions (rather than the window itself) makes a
//!   step cost `O(nnz·ws·nb)` for the window instead of `O(n·ws·nb)`.
//! - Speed on llvmpipe: its storage-buffer loads run lane by lane, so the coupling product
//!   (`n²·nb` coefficients read per step) sets the pace: about 1.5–1.8 s for 10 000 steps of
//!   50 neurons (window 100, 10 functions) on lavapipe, against about 70 ms on the CPU
//!   engine. Batch trials to use every core.
//! - Limits (GPU engine): the coupling matrix (`n²·⌈nb/4⌉·16` bytes) and one trial's ring
//!   (`ws·n·⌈nb/4⌉·16` bytes) must each fit one storage binding, and one step must fit the
//!   loop budget (about 2 000 neurons with 10 functions); beyond, [`RecurrentGlm::new`] or
//!   [`RecurrentGlm::start`] return [`Error::InvalidSetting`] naming the limit. Use the CPU
//!   engine there.
//!
//! # Randomness
//!
//! Poisson draws come from Philox4x32-10 keyed by the trial's seed and indexed by
//! (absolute step, neuron): see [`sampler`] for the counter mapping and the method (inversion
//! below rate 10, PTRS above). GPU and CPU draw the same count except where the uniform lies
//! within float error of a sampling threshold (the GPU computes the thresholds in `f32`).
//! Chunking the time axis or splitting a batch changes no draw.
//!
//! # Errors
//!
//! Inputs are validated as the seed validates them, in the seed's order and with its wording,
//! plus finiteness of every input. A rate that overflows (`f32` infinity, or NaN from an
//! infinite drive) is [`Error::NonFinite`] with `what = "rate"`, `sample` = the absolute step
//! and `channel` = the neuron: the earliest step over all trials, then the lowest trial, then
//! the lowest neuron. A failed call leaves the operator as it was.

mod basis;
mod cpu;
mod gpu;
pub mod sampler;
mod state;

use std::sync::Arc;

use ndarray::{Array2, Array3, ArrayView2, ArrayViewD};

pub use basis::{difference_of_gammas, regress_filter, RaisedCosineLogEval};

use crate::engine::Engine;
use crate::error::{Error, Result};

/// Most loop iterations the GPU kernel lets one invocation run in one dispatch: half of the
/// 65 535 after which llvmpipe silently stops an invocation.
pub const GPU_LOOP_BUDGET: u64 = 32_768;

/// The inverse link function: rate = link(drive).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Link {
    /// `ln(1 + eˣ)` (the seed's default, `jax.nn.softplus`).
    #[default]
    Softplus,
    /// `eˣ`.
    Exp,
}

impl Link {
    /// The link in `f64`, cancellation-free.
    pub fn eval(self, x: f64) -> f64 {
        self.eval_with_s0(x).0
    }

    /// [`Link::eval`] and, where the link gives it in closed form, the Poisson draw's first
    /// threshold `S_0 = 1 − e^(−rate)`: for the softplus, `e^(−rate) = 1/(1 + eˣ)`, so
    /// `S_0` is the logistic function of `x`, from the same `e^(−|x|)` as the rate (relative
    /// error a few ulp, like `−expm1(−rate)`'s, without a third transcendental). `None` for
    /// the exponential link.
    pub fn eval_with_s0(self, x: f64) -> (f64, Option<f64>) {
        match self {
            Link::Softplus => {
                let e = (-x.abs()).exp();
                let rate = x.max(0.0) + e.ln_1p();
                let s0 = if x >= 0.0 {
                    1.0 / (1.0 + e)
                } else {
                    e / (1.0 + e)
                };
                (rate, Some(s0))
            }
            Link::Exp => (x.exp(), None),
        }
    }

    fn code(self) -> u32 {
        match self {
            Link::Softplus => 0,
            Link::Exp => 1,
        }
    }
}

/// What the new activity row is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sampling {
    /// A Poisson draw of each rate (the seed's behaviour).
    #[default]
    Poisson,
    /// The rate itself: the expected-value rollout, deterministic.
    Expected,
}

/// Spikes and rates of a batch of trials, time-major: shape `(T, B, n)`.
#[derive(Debug, Clone, PartialEq)]
pub struct GlmOutput {
    /// The drawn rows (spike counts; the rates themselves in [`Sampling::Expected`]).
    pub spikes: Array3<f32>,
    /// The rates.
    pub rates: Array3<f32>,
}

/// The validated model, `f64`, flattened.
#[derive(Debug, Clone)]
pub(crate) struct Model {
    pub n: usize,
    pub nb: usize,
    pub nf: usize,
    pub ws: usize,
    /// `(n, n·nb)`: row `i` is receiver `i`, column `j·nb + b`.
    pub coef: Vec<f64>,
    /// `(n, nf)`.
    pub ff_coef: Vec<f64>,
    pub intercepts: Vec<f64>,
    /// `(ws, nb)`: row `l − 1` is lag `l`.
    pub basis: Vec<f64>,
    pub link: Link,
}

impl Model {
    /// The ring of future contributions of an initial window `init (ws, n)` (oldest row
    /// first): slot `t` (for `t < ws`) holds the `conv` of step `t` from the rows before step 0.
    pub fn ring_of_window(&self, init: &[f64]) -> Vec<f64> {
        let (n, nb, ws) = (self.n, self.nb, self.ws);
        let mut ring = vec![0.0; ws * n * nb];
        for w in 0..ws {
            // Row w is step w − ws; it reaches step t at lag l = t − (w − ws), for l ≤ ws.
            let row = &init[w * n..(w + 1) * n];
            for (j, &v) in row.iter().enumerate() {
                if v == 0.0 {
                    continue;
                }
                for t in 0..w + 1 {
                    let l = t + ws - w;
                    let dst = &mut ring[(t * n + j) * nb..(t * n + j + 1) * nb];
                    for (d, &bv) in dst.iter_mut().zip(&self.basis[(l - 1) * nb..l * nb]) {
                        *d += v * bv;
                    }
                }
            }
        }
        ring
    }
}

/// The initial rings of a batch: one shared, or one per trial.
pub(crate) struct InitRings {
    shared: Vec<f64>,
    per_trial: Vec<Vec<f64>>,
}

impl InitRings {
    /// Trial `t`'s ring.
    pub fn get(&self, t: usize) -> &[f64] {
        if self.per_trial.is_empty() {
            &self.shared
        } else {
            &self.per_trial[t]
        }
    }
}

/// The error for an overflowing rate.
pub(crate) fn overflow(step: u64, neuron: usize, value: f64) -> Error {
    Error::NonFinite {
        what: "rate",
        sample: step as usize,
        channel: neuron,
        value,
    }
}

/// First non-finite entry of `a`, as [`Error::NonFinite`] (sample = first index, channel =
/// the flat index of the rest).
pub(crate) fn check_finite(what: &'static str, a: &ArrayViewD<'_, f64>) -> Result<()> {
    let inner: usize = a.shape().iter().skip(1).product();
    for (k, &v) in a.iter().enumerate() {
        if !v.is_finite() {
            let (s, c) = match k.checked_div(inner) {
                Some(q) => (q, k % inner),
                None => (k, 0),
            };
            return Err(Error::NonFinite {
                what,
                sample: s,
                channel: c,
                value: v,
            });
        }
    }
    Ok(())
}

fn dims(a: &ArrayViewD<'_, f64>) -> String {
    format!("{:?}", a.shape())
}

/// The seed's checks on the parameters alone (ranks, neuron counts among them, basis count).
fn validate_params(
    coupling_coef: &ArrayViewD<'_, f64>,
    feedforward_coef: &ArrayViewD<'_, f64>,
    intercepts: &ArrayViewD<'_, f64>,
    coupling_basis: &ArrayViewD<'_, f64>,
) -> Result<()> {
    let rank = |what: &'static str, a: &ArrayViewD<'_, f64>, r: usize, shape: &str| {
        if a.ndim() != r {
            Err(Error::shape(
                what,
                format!("{r} dimensions, shape {shape}"),
                format!("{} dimensions {}", a.ndim(), dims(a)),
            ))
        } else {
            Ok(())
        }
    };
    rank("intercepts", intercepts, 1, "(n_neurons,)")?;
    rank(
        "coupling_coef",
        coupling_coef,
        3,
        "(n_neurons, n_neurons, n_basis_coupling)",
    )?;
    rank(
        "feedforward_coef",
        feedforward_coef,
        2,
        "(n_neurons, n_features)",
    )?;
    rank(
        "coupling_basis_matrix",
        coupling_basis,
        2,
        "(window_size, n_basis_coupling)",
    )?;
    Ok(())
}

/// The seed's neuron-count check over whatever inputs are at hand.
fn check_neurons(n: usize, others: &[(&'static str, Option<usize>)]) -> Result<()> {
    if others.iter().all(|(_, m)| *m == Some(n)) {
        return Ok(());
    }
    let got: Vec<String> = others
        .iter()
        .map(|(w, m)| match m {
            Some(m) => format!("{w}: {m}"),
            None => format!("{w}: missing axis"),
        })
        .collect();
    Err(Error::shape(
        "n_neurons",
        format!(
            "{n} neurons (the length of `intercepts`) in every input; the number of neurons provided in the inputs is inconsistent"
        ),
        got.join(", "),
    ))
}

fn feature_error(nf: usize, got: usize) -> Error {
    Error::shape(
        "feedforward_input",
        format!("{nf} features, as feedforward_coef has (inconsistent number of features)"),
        format!("feedforward_input has {got} features instead"),
    )
}

/// The coupling basis `(ws, nbm)` against the coefficients' `nb` basis functions: the counts
/// agree, and the window has at least one lag (the ring holds one slot per lag; a model
/// without lags is a feedforward GLM).
fn check_basis(ws: usize, nbm: usize, nb: usize) -> Result<()> {
    if nbm != nb {
        return Err(Error::shape(
            "coupling_basis_matrix",
            format!(
                "{nb} basis functions, as `coupling_coef` assumes (inconsistent number of features)"
            ),
            format!(
                "`coupling_basis_matrix` assumes {nbm} basis functions for the coupling filters"
            ),
        ));
    }
    if ws == 0 {
        return Err(Error::shape(
            "coupling_basis_matrix",
            "a window of at least one step (one row per lag)",
            "0 rows",
        ));
    }
    Ok(())
}

fn window_error(init_ws: usize, ws: usize) -> Error {
    Error::shape(
        "init_y",
        format!(
            "a window size of {ws}, as `coupling_basis_matrix` has (`init_y` and `coupling_basis_matrix` should have the same window size)"
        ),
        format!("`init_y` window size: {init_ws}"),
    )
}

/// Builds the model after [`validate_params`], the basis-count check and finiteness.
fn build_model(
    coupling_coef: &ArrayViewD<'_, f64>,
    feedforward_coef: &ArrayViewD<'_, f64>,
    intercepts: &ArrayViewD<'_, f64>,
    coupling_basis: &ArrayViewD<'_, f64>,
    link: Link,
) -> Result<Model> {
    let n = intercepts.len();
    let nb = coupling_coef.shape()[2];
    let (ws, nbm) = (coupling_basis.shape()[0], coupling_basis.shape()[1]);
    check_basis(ws, nbm, nb)?;
    check_finite("coupling_coef", coupling_coef)?;
    check_finite("feedforward_coef", feedforward_coef)?;
    check_finite("intercepts", intercepts)?;
    check_finite("coupling_basis_matrix", coupling_basis)?;
    Ok(Model {
        n,
        nb,
        nf: feedforward_coef.shape()[1],
        ws,
        coef: coupling_coef.iter().cloned().collect(),
        ff_coef: feedforward_coef.iter().cloned().collect(),
        intercepts: intercepts.iter().cloned().collect(),
        basis: coupling_basis.iter().cloned().collect(),
        link,
    })
}

/// Engine half of a [`RecurrentGlm`].
#[derive(Debug)]
enum Backend {
    Cpu(cpu::CpuGlm),
    Gpu(Box<gpu::GpuGlm>),
}

/// A recurrent Poisson GLM run as `B` independent trials, streamed along time.
///
/// Build it with the model ([`RecurrentGlm::new`]), [`start`](RecurrentGlm::start) the trials
/// (initial windows, one seed per trial, sampling mode), then [`run`](RecurrentGlm::run) chunks
/// of feedforward input in order: the windows (on the device for the GPU engine) and the step
/// counter carry over, so any split of the time axis gives the same outputs (bit-identical on
/// each engine). [`run_forced`](RecurrentGlm::run_forced) feeds given rows back instead of
/// the drawn ones (teacher forcing: rates and draws given an observed history).
#[derive(Debug)]
pub struct RecurrentGlm {
    model: Arc<Model>,
    backend: Backend,
    seeds: Vec<u64>,
    sampling: Sampling,
    step: u64,
    started: bool,
}

impl RecurrentGlm {
    /// The model on `engine`. Shapes: `coupling_coef (n, n, nb)`, `feedforward_coef (n, nf)`,
    /// `intercepts (n)`, `coupling_basis (ws, nb)` (row 0 is lag 1; the seed's
    /// `coupling_basis_matrix`).
    ///
    /// # Errors
    /// [`Error::Shape`] for a wrong rank, inconsistent neuron counts or basis counts (the
    /// seed's checks) or a basis of no rows (no lags), [`Error::NonFinite`] for a NaN or
    /// infinity; on the GPU, an [`Error::InvalidSetting`] when one trial's step does not fit
    /// the loop budget or the coupling matrix does not fit one storage binding, and device
    /// errors.
    pub fn new(
        engine: &Engine,
        coupling_coef: ArrayViewD<'_, f64>,
        feedforward_coef: ArrayViewD<'_, f64>,
        intercepts: ArrayViewD<'_, f64>,
        coupling_basis: ArrayViewD<'_, f64>,
        link: Link,
    ) -> Result<Self> {
        validate_params(
            &coupling_coef,
            &feedforward_coef,
            &intercepts,
            &coupling_basis,
        )?;
        let n = intercepts.len();
        check_neurons(
            n,
            &[
                ("feedforward_coef", Some(feedforward_coef.shape()[0])),
                ("coupling_coef axis 0", Some(coupling_coef.shape()[0])),
                ("coupling_coef axis 1", Some(coupling_coef.shape()[1])),
            ],
        )?;
        let model = Arc::new(build_model(
            &coupling_coef,
            &feedforward_coef,
            &intercepts,
            &coupling_basis,
            link,
        )?);
        let backend = match engine {
            Engine::Cpu => Backend::Cpu(cpu::CpuGlm::new(model.clone())),
            Engine::Gpu(ctx) => Backend::Gpu(Box::new(gpu::GpuGlm::new(ctx, model.clone())?)),
        };
        Ok(RecurrentGlm {
            model,
            backend,
            seeds: Vec::new(),
            sampling: Sampling::Poisson,
            step: 0,
            started: false,
        })
    }

    /// Starts `seeds.len()` trials at step 0: trial `b` draws with key `seeds[b]` and starts
    /// from `init_y`, shape `(ws, n)` (shared) or `(ws, B, n)` (per trial), oldest row first.
    ///
    /// # Errors
    /// [`Error::InvalidSetting`] for no seeds; [`Error::Shape`] for a wrong rank, neuron count
    /// or window size; [`Error::NonFinite`]. The operator is unchanged on error.
    pub fn start(
        &mut self,
        init_y: ArrayViewD<'_, f64>,
        seeds: &[u64],
        sampling: Sampling,
    ) -> Result<()> {
        let m = &self.model;
        let b = seeds.len();
        if b == 0 {
            return Err(Error::setting(
                "seeds",
                "at least one trial (one seed) is needed",
            ));
        }
        let per_trial = match init_y.ndim() {
            2 => false,
            3 => true,
            d => {
                return Err(Error::shape(
                    "init_y",
                    "two dimensions (window_size, n_neurons), or three (window_size, n_trials, n_neurons)",
                    format!("{d} dimensions {}", dims(&init_y)),
                ))
            }
        };
        let sh = init_y.shape();
        check_neurons(m.n, &[("init_y", sh.last().copied())])?;
        if per_trial && sh[1] != b {
            return Err(Error::shape(
                "init_y",
                format!("{b} trials on axis 1 (one per seed)"),
                format!("{} {}", sh[1], dims(&init_y)),
            ));
        }
        if sh[0] != m.ws {
            return Err(window_error(sh[0], m.ws));
        }
        check_finite("init_y", &init_y)?;
        let std = init_y.as_standard_layout();
        let flat: Vec<f64> = std.iter().cloned().collect();
        let (n, ws) = (m.n, m.ws);
        let rings = if per_trial {
            InitRings {
                shared: Vec::new(),
                per_trial: (0..b)
                    .map(|t| {
                        let mut w = vec![0.0; ws * n];
                        for r in 0..ws {
                            w[r * n..(r + 1) * n]
                                .copy_from_slice(&flat[(r * b + t) * n..(r * b + t + 1) * n]);
                        }
                        m.ring_of_window(&w)
                    })
                    .collect(),
            }
        } else {
            InitRings {
                shared: m.ring_of_window(&flat),
                per_trial: Vec::new(),
            }
        };
        match &mut self.backend {
            Backend::Cpu(c) => c.start(&rings, b),
            Backend::Gpu(g) => g.start(&rings, seeds)?,
        }
        self.seeds = seeds.to_vec();
        self.sampling = sampling;
        self.step = 0;
        self.started = true;
        Ok(())
    }

    /// Runs the next `T` steps of every trial with `feedforward_input` of shape `(T, n, nf)`
    /// (shared by the trials) or `(T, B, n, nf)`. Returns spikes and rates `(T, B, n)`.
    ///
    /// # Errors
    /// [`Error::InvalidSetting`] before [`start`](RecurrentGlm::start); [`Error::Shape`] for
    /// a wrong rank, neuron, trial or feature count; [`Error::NonFinite`] for a NaN or
    /// infinity in the input, or for a rate that overflows (see the module doc);
    /// [`Error::PositionOverflow`] when the step counter would pass 2⁶³; device errors. The
    /// operator is unchanged on error.
    pub fn run(&mut self, feedforward_input: ArrayViewD<'_, f64>) -> Result<GlmOutput> {
        self.run_inner(feedforward_input, None)
    }

    /// Like [`run`](RecurrentGlm::run), but row `t` of `history` (shape `(T, B, n)`, or
    /// `(T, n)` for one trial) enters the window after step `t` instead of the drawn row:
    /// the rates are those given the history, and the spikes are draws from them (teacher
    /// forcing).
    ///
    /// # Errors
    /// As [`run`](RecurrentGlm::run), plus [`Error::Shape`] / [`Error::NonFinite`] for
    /// `history`.
    pub fn run_forced(
        &mut self,
        feedforward_input: ArrayViewD<'_, f64>,
        history: ArrayViewD<'_, f64>,
    ) -> Result<GlmOutput> {
        self.run_inner(feedforward_input, Some(history))
    }

    /// The next step to run (steps run since [`start`](RecurrentGlm::start)).
    pub fn step(&self) -> u64 {
        self.step
    }

    /// Number of neurons.
    pub fn n_neurons(&self) -> usize {
        self.model.n
    }

    /// Number of trials started (0 before [`start`](RecurrentGlm::start)).
    pub fn n_trials(&self) -> usize {
        self.seeds.len()
    }

    /// Window size (rows of the coupling basis).
    pub fn window_size(&self) -> usize {
        self.model.ws
    }

    /// On the GPU engine, the most steps one dispatch runs (the loop bound, see the module
    /// doc) and the workgroup size; `None` on the CPU.
    pub fn steps_per_dispatch(&self) -> Option<(usize, usize)> {
        match &self.backend {
            Backend::Cpu(_) => None,
            Backend::Gpu(g) => Some(g.steps_per_dispatch()),
        }
    }

    fn run_inner(
        &mut self,
        ff: ArrayViewD<'_, f64>,
        history: Option<ArrayViewD<'_, f64>>,
    ) -> Result<GlmOutput> {
        if !self.started {
            return Err(Error::setting(
                "start",
                "call `start` (initial window and seeds) before `run`",
            ));
        }
        let m = self.model.clone();
        let b = self.seeds.len();
        let (n, nf) = (m.n, m.nf);
        let ff_trials = match ff.ndim() {
            3 => 1,
            4 => b,
            d => {
                return Err(Error::shape(
                    "feedforward_input",
                    "three dimensions (n_timebins, n_neurons, n_features), or four (n_timebins, n_trials, n_neurons, n_features)",
                    format!("{d} dimensions {}", dims(&ff)),
                ))
            }
        };
        let sh = ff.shape().to_vec();
        check_neurons(n, &[("feedforward_input", Some(sh[sh.len() - 2]))])?;
        if ff.ndim() == 4 && sh[1] != b {
            return Err(Error::shape(
                "feedforward_input",
                format!("{b} trials on axis 1 (one per seed)"),
                format!("{} {}", sh[1], dims(&ff)),
            ));
        }
        if sh[sh.len() - 1] != nf {
            return Err(feature_error(nf, sh[sh.len() - 1]));
        }
        check_finite("feedforward_input", &ff)?;
        let t_len = sh[0];
        if self
            .step
            .checked_add(t_len as u64)
            .is_none_or(|end| end > state::MAX_STEP)
        {
            return Err(Error::PositionOverflow(format!(
                "GLM step {} + {t_len} steps passes 2⁶³",
                self.step
            )));
        }
        let forced: Option<Vec<f64>> = match &history {
            None => None,
            Some(h) => {
                let ok = match h.ndim() {
                    3 => h.shape() == [t_len, b, n],
                    2 => b == 1 && h.shape() == [t_len, n],
                    _ => false,
                };
                if !ok {
                    return Err(Error::shape(
                        "history",
                        format!("({t_len}, {b}, {n}) (n_timebins, n_trials, n_neurons)"),
                        dims(h),
                    ));
                }
                check_finite("history", h)?;
                Some(h.as_standard_layout().iter().cloned().collect())
            }
        };
        if t_len == 0 {
            return Ok(GlmOutput {
                spikes: Array3::zeros((0, b, n)),
                rates: Array3::zeros((0, b, n)),
            });
        }
        // Feedforward drive plus intercept, (T, ff_trials, n), f64.
        let std = ff.as_standard_layout();
        let x = std
            .as_slice()
            .ok_or_else(|| Error::shape("feedforward_input", "contiguous", "strided"))?;
        let mut ffc = vec![0.0f64; t_len * ff_trials * n];
        for (r, out) in ffc.iter_mut().enumerate() {
            let i = r % n;
            let inp = &x[r * nf..(r + 1) * nf];
            let coef = &m.ff_coef[i * nf..(i + 1) * nf];
            *out = m.intercepts[i] + inp.iter().zip(coef).map(|(a, c)| a * c).sum::<f64>();
        }
        let mode = match (self.sampling, forced.is_some()) {
            (_, true) => Mode::Forced,
            (Sampling::Poisson, false) => Mode::Poisson,
            (Sampling::Expected, false) => Mode::Expected,
        };
        let job = Job {
            t_len,
            ffc: &ffc,
            ff_trials,
            forced: forced.as_deref(),
            mode,
            seeds: &self.seeds,
            step0: self.step,
        };
        let (spikes, rates) = match &mut self.backend {
            Backend::Cpu(c) => c.run(&job)?,
            Backend::Gpu(g) => g.run(&job)?,
        };
        self.step += t_len as u64;
        let to3 = |v: Vec<f32>| {
            Array3::from_shape_vec((t_len, b, n), v).map_err(|e| Error::Readback(e.to_string()))
        };
        Ok(GlmOutput {
            spikes: to3(spikes)?,
            rates: to3(rates)?,
        })
    }
}

/// How a step's new row is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Poisson,
    Expected,
    /// Poisson draws are output, the forced row enters the window.
    Forced,
}

impl Mode {
    fn code(self) -> u32 {
        match self {
            Mode::Poisson => 0,
            Mode::Expected => 1,
            Mode::Forced => 2,
        }
    }
}

/// One call's work, shared by the engines.
pub(crate) struct Job<'a> {
    pub t_len: usize,
    /// `(T, ff_trials, n)`: feedforward drive plus intercept.
    pub ffc: &'a [f64],
    pub ff_trials: usize,
    /// `(T, B, n)`.
    pub forced: Option<&'a [f64]>,
    pub mode: Mode,
    pub seeds: &'a [u64],
    pub step0: u64,
}

/// Simulates one trial of the recurrent GLM, with the seed's (`nemos.simulation.simulate_recurrent`)
/// arguments, checks and order of checks: `coupling_coef (n, n, nb)`, `feedforward_coef (n, nf)`,
/// `intercepts (n)`, a seed for the Poisson draws, `feedforward_input (T, n, nf)`,
/// `coupling_basis_matrix (ws, nb)` (row 0 is lag 1), `init_y (ws, n)`, and the link.
/// Returns `(spikes (T, n), rates (T, n))`. [`simulate_recurrent_batch`] runs `B` trials and
/// takes the sampling mode.
///
/// # Errors
/// [`Error::Shape`] for a wrong rank, inconsistent neuron counts, features, basis functions
/// or window sizes (the seed's checks, in its order); [`Error::NonFinite`] for a NaN or
/// infinity in any input, or for a rate that overflows (naming the step and neuron); device
/// errors.
#[allow(clippy::too_many_arguments)]
pub fn simulate_recurrent(
    engine: &Engine,
    coupling_coef: ArrayViewD<'_, f64>,
    feedforward_coef: ArrayViewD<'_, f64>,
    intercepts: ArrayViewD<'_, f64>,
    seed: u64,
    feedforward_input: ArrayViewD<'_, f64>,
    coupling_basis_matrix: ArrayViewD<'_, f64>,
    init_y: ArrayViewD<'_, f64>,
    link: Link,
) -> Result<(Array2<f32>, Array2<f32>)> {
    let out = simulate_recurrent_batch(
        engine,
        coupling_coef,
        feedforward_coef,
        intercepts,
        &[seed],
        feedforward_input,
        coupling_basis_matrix,
        init_y,
        link,
        Sampling::Poisson,
    )?;
    let (t, _, n) = out.spikes.dim();
    let flat = |a: Array3<f32>| {
        a.into_shape_with_order((t, n))
            .map_err(|e| Error::Readback(e.to_string()))
    };
    Ok((flat(out.spikes)?, flat(out.rates)?))
}

/// [`simulate_recurrent`] for `B = seeds.len()` trials and a sampling mode, with the seed's
/// checks in its order. `feedforward_input` is `(T, n, nf)` (shared) or `(T, B, n, nf)`,
/// `init_y` is `(ws, n)` or `(ws, B, n)`; spikes and rates are `(T, B, n)`.
///
/// # Errors
/// As [`simulate_recurrent`], plus [`Error::InvalidSetting`] for no seeds.
#[allow(clippy::too_many_arguments)]
pub fn simulate_recurrent_batch(
    engine: &Engine,
    coupling_coef: ArrayViewD<'_, f64>,
    feedforward_coef: ArrayViewD<'_, f64>,
    intercepts: ArrayViewD<'_, f64>,
    seeds: &[u64],
    feedforward_input: ArrayViewD<'_, f64>,
    coupling_basis_matrix: ArrayViewD<'_, f64>,
    init_y: ArrayViewD<'_, f64>,
    link: Link,
    sampling: Sampling,
) -> Result<GlmOutput> {
    // The seed's order: neuron counts, input rank, features, input finiteness, init_y rank,
    // basis functions, window size.
    validate_params(
        &coupling_coef,
        &feedforward_coef,
        &intercepts,
        &coupling_basis_matrix,
    )?;
    let n = intercepts.len();
    let axis = |a: &ArrayViewD<'_, f64>, k: usize| a.shape().get(k).copied();
    let ff_neuron_axis = if feedforward_input.ndim() == 4 { 2 } else { 1 };
    let init_neuron_axis = init_y.ndim().saturating_sub(1).max(1);
    check_neurons(
        n,
        &[
            (
                "feedforward_input",
                axis(&feedforward_input, ff_neuron_axis),
            ),
            ("feedforward_coef", axis(&feedforward_coef, 0)),
            ("init_y", axis(&init_y, init_neuron_axis)),
            ("coupling_coef axis 0", axis(&coupling_coef, 0)),
            ("coupling_coef axis 1", axis(&coupling_coef, 1)),
        ],
    )?;
    if !(3..=4).contains(&feedforward_input.ndim()) {
        return Err(Error::shape(
            "feedforward_input",
            "three dimensions, shape (n_timebins, n_neurons, n_features) (or four with a trial axis)",
            format!(
                "{} dimensions {}",
                feedforward_input.ndim(),
                dims(&feedforward_input)
            ),
        ));
    }
    let nf = feedforward_coef.shape()[1];
    let x_nf = feedforward_input.shape()[feedforward_input.ndim() - 1];
    if x_nf != nf {
        return Err(feature_error(nf, x_nf));
    }
    check_finite("feedforward_input", &feedforward_input)?;
    if !(2..=3).contains(&init_y.ndim()) {
        return Err(Error::shape(
            "init_y",
            "two dimensions, shape (window_size, n_neurons) (or three with a trial axis)",
            format!("{} dimensions {}", init_y.ndim(), dims(&init_y)),
        ));
    }
    let nb = coupling_coef.shape()[2];
    let (ws, nbm) = (
        coupling_basis_matrix.shape()[0],
        coupling_basis_matrix.shape()[1],
    );
    check_basis(ws, nbm, nb)?;
    if init_y.shape()[0] != ws {
        return Err(window_error(init_y.shape()[0], ws));
    }
    let mut glm = RecurrentGlm::new(
        engine,
        coupling_coef,
        feedforward_coef,
        intercepts,
        coupling_basis_matrix,
        link,
    )?;
    glm.start(init_y, seeds, sampling)?;
    glm.run(feedforward_input)
}

/// Poisson draws of `rates (steps, neurons)` from the shared generator, exactly as the
/// simulation draws them: element `(t, i)` is the draw of trial key `seed` at step
/// `first_step + t` for neuron `i` (see [`sampler`]). Useful to test the sampler, and as a
/// batched Poisson generator.
///
/// # Errors
/// [`Error::NonFinite`] for a NaN, infinite or negative rate (negative rates report their
/// value); device errors.
pub fn poisson_samples(
    engine: &Engine,
    rates: ArrayView2<'_, f32>,
    seed: u64,
    first_step: u64,
) -> Result<Array2<f32>> {
    for ((t, i), &r) in rates.indexed_iter() {
        if !r.is_finite() || r < 0.0 {
            return Err(Error::NonFinite {
                what: "rates",
                sample: t,
                channel: i,
                value: r as f64,
            });
        }
    }
    match engine {
        Engine::Cpu => {
            let key = crate::rng::key_of(seed);
            Ok(Array2::from_shape_fn(rates.dim(), |(t, i)| {
                sampler::poisson(rates[[t, i]] as f64, key, first_step + t as u64, i as u32) as f32
            }))
        }
        Engine::Gpu(ctx) => gpu::poisson_samples(ctx, rates, seed, first_step),
    }
}
