//! Coupling filters and bases (SPEC §3, end): `difference_of_gammas` and `regress_filter` from
//! `nemos.simulation`, and the log-stretched raised-cosine basis nemos calls
//! `RaisedCosineLogEval`. Host-only, `f64`; the values match the seed's (see
//! `tests/glm.rs`, which checks them against the package's own outputs).

use nalgebra::DMatrix;
use ndarray::{Array1, Array2, Array3, ArrayViewD};
use statrs::distribution::{Continuous, ContinuousCDF, Gamma};

use crate::error::{Error, Result};

/// `numpy.linspace(start, stop, num)`: `start + k·step` with the last point set to `stop`.
/// [`Error::HostMemory`] when `num` points cannot be allocated.
pub(crate) fn linspace(start: f64, stop: f64, num: usize) -> Result<Array1<f64>> {
    let mut x = crate::validate::host_zeros("linspace", ndarray::Ix1(num))?;
    if num == 1 {
        x[0] = start;
    } else if num > 1 {
        let step = (stop - start) / (num - 1) as f64;
        for (k, v) in x.iter_mut().enumerate() {
            *v = start + k as f64 * step;
        }
        x[num - 1] = stop;
    }
    Ok(x)
}

/// The log-stretched raised-cosine basis (nemos `RaisedCosineLogEval`), for coupling filters
/// whose resolution is fine at short lags and coarse at long ones.
///
/// On samples `x ∈ [0, 1]`, with `u = ln(time_scaling·x + 1) / ln(time_scaling + 1)`, peaks
/// `c_i = linspace(0, last, n_basis_funcs)` (`last = 1 − width/(n_basis_funcs + width − 1)`
/// when `enforce_decay_to_zero`, else 1) and `Δ = c_1 − c_0`, basis function `i` is
/// `½·(cos(clip(π·(u − c_i)/(Δ·width), −π, π)) + 1)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RaisedCosineLogEval {
    /// Number of basis functions (at least 2).
    pub n_basis_funcs: usize,
    /// Width of each bump in units of the peak spacing: `> 1` with `2·width` an integer
    /// (default 2).
    pub width: f64,
    /// Strength of the log stretch, `> 0` (default 50).
    pub time_scaling: f64,
    /// Place the last peak so that every function decays to zero at `x = 1` (default true).
    pub enforce_decay_to_zero: bool,
}

impl RaisedCosineLogEval {
    /// The basis with `n_basis_funcs` functions and nemos' defaults (width 2, time scaling 50,
    /// decay to zero enforced). Settings are checked when it is evaluated.
    pub fn new(n_basis_funcs: usize) -> Self {
        RaisedCosineLogEval {
            n_basis_funcs,
            width: 2.0,
            time_scaling: 50.0,
            enforce_decay_to_zero: true,
        }
    }

    /// Checks the settings, with nemos' messages.
    ///
    /// # Errors
    /// [`Error::InvalidSetting`] for fewer than 2 functions, a width that is not `> 1` with
    /// `2·width` an integer, or a time scaling that is not strictly positive and finite.
    pub fn validate(&self) -> Result<()> {
        if self.n_basis_funcs < 2 {
            return Err(Error::setting(
                "n_basis_funcs",
                format!(
                    "Object class RaisedCosineLogEval requires >= 2 basis elements. {} basis elements specified instead",
                    self.n_basis_funcs
                ),
            ));
        }
        let w2 = 2.0 * self.width;
        if self.width.is_nan() || self.width <= 1.0 || !w2.is_finite() || w2.fract() != 0.0 {
            return Err(Error::setting(
                "width",
                format!(
                    "Invalid raised cosine width. Width must be strictly greater than 1 and 2*width must be a integer, but got width={:?} instead! At other values, basis sampling will lead to aliasing.",
                    self.width
                ),
            ));
        }
        if self.time_scaling.is_nan() || self.time_scaling <= 0.0 || !self.time_scaling.is_finite()
        {
            return Err(Error::setting(
                "time_scaling",
                format!(
                    "Only strictly positive time_scaling are allowed, {:?} provided instead.",
                    self.time_scaling
                ),
            ));
        }
        Ok(())
    }

    /// The basis at `samples` (each in `[0, 1]` for the usual use), shape
    /// `(samples, n_basis_funcs)`.
    ///
    /// # Errors
    /// The settings' errors ([`RaisedCosineLogEval::validate`]); [`Error::NonFinite`] for a
    /// non-finite sample.
    pub fn evaluate(&self, samples: &[f64]) -> Result<Array2<f64>> {
        self.validate()?;
        if let Some(k) = samples.iter().position(|x| !x.is_finite()) {
            return Err(Error::NonFinite {
                what: "samples",
                sample: k,
                channel: 0,
                value: samples[k],
            });
        }
        let n = self.n_basis_funcs;
        let last = if self.enforce_decay_to_zero {
            1.0 - self.width / (n as f64 + self.width - 1.0)
        } else {
            1.0
        };
        let peaks = linspace(0.0, last, n)?;
        let delta = peaks[1] - peaks[0];
        let denom = (self.time_scaling + 1.0).ln();
        let pi = std::f64::consts::PI;
        let mut out: Array2<f64> =
            crate::validate::host_zeros("basis", ndarray::Ix2(samples.len(), n))?;
        for ((s, i), v) in out.indexed_iter_mut() {
            let u = (self.time_scaling * samples[s] + 1.0).ln() / denom;
            let arg = (pi * (u - peaks[i]) / (delta * self.width)).clamp(-pi, pi);
            *v = 0.5 * (arg.cos() + 1.0);
        }
        Ok(out)
    }

    /// The basis on `window` equally spaced samples of `[0, 1]` (nemos `evaluate_on_grid`):
    /// the grid, and the basis of shape `(window, n_basis_funcs)`. Row 0 is lag 1 when the
    /// basis is used as `coupling_basis` (see [`super::simulate_recurrent`]).
    ///
    /// # Errors
    /// The settings' errors, and [`Error::InvalidSetting`] for `window == 0`.
    pub fn evaluate_on_grid(&self, window: usize) -> Result<(Array1<f64>, Array2<f64>)> {
        self.validate()?;
        if window == 0 {
            return Err(Error::setting(
                "window",
                "All sample counts provided must be greater than zero.",
            ));
        }
        let grid = linspace(0.0, 1.0, window)?;
        let basis = self.evaluate(grid.as_slice().unwrap_or(&grid.to_vec()))?;
        Ok((grid, basis))
    }
}

/// The gamma quantile, refined by Newton steps on `statrs`' regularised incomplete gamma.
fn gamma_ppf(g: &Gamma, p: f64) -> f64 {
    if p <= 0.0 {
        return 0.0;
    }
    let mut x = g.inverse_cdf(p);
    for _ in 0..20 {
        let f = g.pdf(x);
        if f.is_nan() || f <= 0.0 || !f.is_finite() {
            break;
        }
        let next = x - (g.cdf(x) - p) / f;
        if !next.is_finite() || next <= 0.0 {
            break;
        }
        let done = (next - x).abs() <= 1e-15 * x.abs();
        x = next;
        if done {
            break;
        }
    }
    x
}

/// A coupling filter as a difference of two gamma densities (nemos
/// `simulation.difference_of_gammas`), length `ws`, unit Euclidean norm.
///
/// With `G(a, b)` the gamma density of shape `a` and rate `b` (scipy's `gamma(a, scale=1/b)`),
/// `x = linspace(0, max(ppf_inhib(p), ppf_excit(p)), ws)` and
/// `f = G(excit_a, excit_b)(x) − G(inhib_a, inhib_b)(x)`, the result is `f / ‖f‖₂`. nemos'
/// defaults are `upper_percentile = 0.99`, `inhib_a = 1`, `excit_a = 2`, `inhib_b = 1`,
/// `excit_b = 2`. As in the seed, shapes below 1 make a density infinite at `x = 0`, and the
/// filter is then NaN (the seed's output, kept for fidelity); `ws = 0` gives an empty filter.
///
/// # Errors
/// [`Error::InvalidSetting`], with the seed's messages, for a gamma parameter that is not
/// `> 0` (checked in the order `excit_a`, `inhib_a`, `excit_b`, `inhib_b`) or an
/// `upper_percentile` outside `[0, 1)`; NaN counts as out of range.
pub fn difference_of_gammas(
    ws: usize,
    upper_percentile: f64,
    inhib_a: f64,
    excit_a: f64,
    inhib_b: f64,
    excit_b: f64,
) -> Result<Array1<f64>> {
    for (name, value) in [
        ("excit_a", excit_a),
        ("inhib_a", inhib_a),
        ("excit_b", excit_b),
        ("inhib_b", inhib_b),
    ] {
        if value.is_nan() || value <= 0.0 || !value.is_finite() {
            return Err(Error::setting(
                name,
                format!("Gamma parameter {name} must be >0."),
            ));
        }
    }
    if !(0.0..1.0).contains(&upper_percentile) {
        return Err(Error::setting(
            "upper_percentile",
            format!(
                "upper_percentile should lie in the [0, 1) interval. {upper_percentile:?} provided instead!"
            ),
        ));
    }
    let bad = |e: statrs::distribution::GammaError| Error::setting("gamma", e.to_string());
    let inhib = Gamma::new(inhib_a, inhib_b).map_err(bad)?;
    let excit = Gamma::new(excit_a, excit_b).map_err(bad)?;
    let xmax = gamma_ppf(&inhib, upper_percentile).max(gamma_ppf(&excit, upper_percentile));
    let x = linspace(0.0, xmax, ws)?;
    let f = x.mapv(|x| excit.pdf(x) - inhib.pdf(x));
    let norm = f.iter().map(|v| v * v).sum::<f64>().sqrt();
    Ok(f / norm)
}

/// Least-squares weights representing each coupling filter in a basis (nemos
/// `simulation.regress_filter`): for every (receiver, sender) pair, the `w` minimising
/// `‖basis·w − filters[:, receiver, sender]‖₂`, the minimum-norm one when the basis is rank
/// deficient (numpy `lstsq` with `rcond=None`: singular values below
/// `ε·max(ws, n_basis)·σ_max` are dropped).
///
/// `coupling_filters` has shape `(ws, n_receivers, n_senders)` and `eval_basis`
/// `(ws, n_basis)`; the result has shape `(n_receivers, n_senders, n_basis)`.
///
/// # Errors
/// [`Error::Shape`], with the seed's wording, when `eval_basis` is not 2-dimensional,
/// `coupling_filters` not 3-dimensional, or their window sizes differ;
/// [`Error::NonFinite`] for a NaN or infinity in either.
pub fn regress_filter(
    coupling_filters: ArrayViewD<'_, f64>,
    eval_basis: ArrayViewD<'_, f64>,
) -> Result<Array3<f64>> {
    if eval_basis.ndim() != 2 {
        return Err(Error::shape(
            "eval_basis",
            "a 2 dimensional array, shape (window_size, n_basis_funcs)",
            format!("{} dimensional array provided instead", eval_basis.ndim()),
        ));
    }
    if coupling_filters.ndim() != 3 {
        return Err(Error::shape(
            "coupling_filters",
            "a 3 dimensional array, shape (window_size, n_neurons, n_neurons)",
            format!(
                "{} dimensional array provided instead",
                coupling_filters.ndim()
            ),
        ));
    }
    let (ws, nr, ns) = (
        coupling_filters.shape()[0],
        coupling_filters.shape()[1],
        coupling_filters.shape()[2],
    );
    let nb = eval_basis.shape()[1];
    if eval_basis.shape()[0] != ws {
        return Err(Error::shape(
            "eval_basis",
            format!(
                "the window size of coupling_filters ({ws}): window_size mismatch, the window size of coupling_filters and eval_basis does not match"
            ),
            format!("eval_basis has a window size of {}", eval_basis.shape()[0]),
        ));
    }
    super::check_finite("coupling_filters", &coupling_filters)?;
    super::check_finite("eval_basis", &eval_basis)?;
    let mut out: Array3<f64> =
        crate::validate::host_zeros("filter weights", ndarray::Ix3(nr, ns, nb))?;
    if ws == 0 || nb == 0 || nr * ns == 0 {
        return Ok(out);
    }
    let a = DMatrix::from_fn(ws, nb, |r, c| eval_basis[[r, c]]);
    let b = DMatrix::from_fn(ws, nr * ns, |r, c| coupling_filters[[r, c / ns, c % ns]]);
    let svd = a.svd(true, true);
    let smax = svd.singular_values.iter().cloned().fold(0.0f64, f64::max);
    let eps = f64::EPSILON * ws.max(nb) as f64 * smax;
    let w = svd
        .solve(&b, eps)
        .map_err(|e| Error::setting("eval_basis", e.to_string()))?;
    for c in 0..nr * ns {
        for k in 0..nb {
            out[[c / ns, c % ns, k]] = w[(k, c)];
        }
    }
    Ok(out)
}
