//! The CPU half of the recurrent GLM: `f64` throughout, trials spread over the cores.
//!
//! Per trial the window is kept as its future contributions to `conv` (a ring of `ws` slots
//! per sender, slot `s mod ws` for step `s`, laid out `[sender][slot][function]`): step `t`
//! gathers and clears its slot, computes every rate with one dense `n × n·nb` product, draws,
//! and adds `row[j]·basis[l−1, :]` for each non-zero `row[j]` to the slot of step `t + l`
//! (`l = 1 … ws`: two contiguous runs per sender). The sum is the seed's `conv`
//! reassociated, `O(nnz·ws·nb)` per step instead of `O(n·ws·nb)`.
//!
//! Per step the draws' first Philox words are computed for all neurons at once (eight lanes
//! at a time, vectorised), and the softplus gives each draw's first threshold as the logistic
//! function of the drive ([`super::Link::eval_with_s0`]): two transcendentals per neuron
//! instead of three. perf on an Intel Xeon (50 neurons, 10 functions, window 100): the step's
//! `50 × 500` product is about two thirds of the time, its coefficients streamed from L2
//! (an AVX-512 product measured no faster than the AVX2 one), `log1p` a tenth.

use std::sync::Arc;

use super::sampler::{counter, poisson_with_words, s0_of_rate};
use super::{overflow, InitRings, Job, Mode, Model};
use crate::error::Result;
use crate::rng::{key_of, philox4x32_10_word0_run};

/// The CPU state: one ring per trial.
#[derive(Debug)]
pub(crate) struct CpuGlm {
    model: Arc<Model>,
    rings: Vec<Vec<f64>>,
}

/// `Σ a[k]·b[k]` with two four-wide accumulators (vectorises).
#[inline(always)]
fn dot(a: &[f64], b: &[f64]) -> f64 {
    let mut acc = [[0.0f64; 4]; 2];
    let ca = a.chunks_exact(8);
    let cb = b.chunks_exact(8);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..4 {
            acc[0][k] += x[k] * y[k];
            acc[1][k] += x[k + 4] * y[k + 4];
        }
    }
    let mut s = (acc[0][0] + acc[1][0])
        + (acc[0][1] + acc[1][1])
        + ((acc[0][2] + acc[1][2]) + (acc[0][3] + acc[1][3]));
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// [`dot`] with AVX2 + FMA: four four-wide accumulators.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(a: &[f64], b: &[f64]) -> f64 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc = [_mm256_setzero_pd(); 4];
    let mut k = 0;
    // SAFETY: every load reads 4 elements at k + 4·r + 3 < n.
    unsafe {
        while k + 16 <= n {
            for (r, a) in acc.iter_mut().enumerate() {
                let o = k + 4 * r;
                *a = _mm256_fmadd_pd(_mm256_loadu_pd(pa.add(o)), _mm256_loadu_pd(pb.add(o)), *a);
            }
            k += 16;
        }
        while k + 4 <= n {
            acc[0] = _mm256_fmadd_pd(
                _mm256_loadu_pd(pa.add(k)),
                _mm256_loadu_pd(pb.add(k)),
                acc[0],
            );
            k += 4;
        }
    }
    let sum = _mm256_add_pd(_mm256_add_pd(acc[0], acc[1]), _mm256_add_pd(acc[2], acc[3]));
    let mut lanes = [0.0f64; 4];
    // SAFETY: `lanes` holds 4 f64.
    unsafe { _mm256_storeu_pd(lanes.as_mut_ptr(), sum) };
    let mut s = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
    while k < n {
        s += a[k] * b[k];
        k += 1;
    }
    s
}

/// `out[i] = coef_i · conv` for the `n = out.len()` rows of `coef` (each `conv.len()` long),
/// four rows at a time: one load of `conv` feeds four rows and eight independent FMA chains
/// (the one-row dot is bound by its two loads per FMA and its four chains' latency).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn mat_vec_avx2(coef: &[f64], conv: &[f64], out: &mut [f64]) {
    use std::arch::x86_64::*;
    let len = conv.len();
    let n = out.len().min(coef.len() / len.max(1));
    let pc = conv.as_ptr();
    let mut i = 0;
    while i + 4 <= n {
        let rows = &coef[i * len..(i + 4) * len];
        let pa = rows.as_ptr();
        let mut acc = [[_mm256_setzero_pd(); 2]; 4];
        let mut k = 0;
        // SAFETY: k + 8 <= len, and row q's k-th element is at q·len + k < 4·len = rows.len().
        unsafe {
            while k + 8 <= len {
                let c0 = _mm256_loadu_pd(pc.add(k));
                let c1 = _mm256_loadu_pd(pc.add(k + 4));
                for (q, a) in acc.iter_mut().enumerate() {
                    let pr = pa.add(q * len + k);
                    a[0] = _mm256_fmadd_pd(_mm256_loadu_pd(pr), c0, a[0]);
                    a[1] = _mm256_fmadd_pd(_mm256_loadu_pd(pr.add(4)), c1, a[1]);
                }
                k += 8;
            }
        }
        for (q, a) in acc.iter().enumerate() {
            let sum = _mm256_add_pd(a[0], a[1]);
            let mut lanes = [0.0f64; 4];
            // SAFETY: `lanes` holds four f64.
            unsafe { _mm256_storeu_pd(lanes.as_mut_ptr(), sum) };
            let mut v = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
            let row = &rows[q * len..(q + 1) * len];
            for (x, y) in row[k..].iter().zip(&conv[k..]) {
                v += x * y;
            }
            out[i + q] = v;
        }
        i += 4;
    }
    for (r, o) in out.iter_mut().enumerate().take(n).skip(i) {
        // SAFETY: the caller's CPU has AVX2 and FMA (this function's own requirement).
        *o = unsafe { dot_avx2(&coef[r * len..(r + 1) * len], conv) };
    }
}

/// `out[i] = coef_i · conv` with the portable [`dot`].
fn mat_vec(coef: &[f64], conv: &[f64], out: &mut [f64]) {
    let len = conv.len();
    for (i, o) in out.iter_mut().enumerate() {
        *o = dot(&coef[i * len..(i + 1) * len], conv);
    }
}

/// `y += v·x`.
#[inline(always)]
fn axpy(y: &mut [f64], v: f64, x: &[f64]) {
    for (o, &b) in y.iter_mut().zip(x) {
        *o += v * b;
    }
}

/// The first overflow of a trial: (step, neuron, value).
type Bad = Option<(u64, usize, f64)>;

/// Runs trial `b` of `job` on `ring`, writing its `(T, n)` spikes and rates: with AVX2 and
/// FMA where the CPU has them (detected at run time), else the baseline build.
fn run_trial(
    m: &Model,
    ring: &mut [f64],
    job: &Job<'_>,
    b: usize,
    spikes: &mut [f32],
    rates: &mut [f32],
) -> Bad {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU supports AVX2 and FMA (checked just above).
            return unsafe { run_trial_avx2(m, ring, job, b, spikes, rates) };
        }
    }
    run_trial_impl(m, ring, job, b, spikes, rates, mat_vec)
}

/// [`run_trial_impl`] compiled for AVX2 + FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn run_trial_avx2(
    m: &Model,
    ring: &mut [f64],
    job: &Job<'_>,
    b: usize,
    spikes: &mut [f32],
    rates: &mut [f32],
) -> Bad {
    // SAFETY: this function only runs where AVX2 and FMA are available.
    run_trial_impl(m, ring, job, b, spikes, rates, |a, c, o| unsafe {
        mat_vec_avx2(a, c, o)
    })
}

#[inline(always)]
fn run_trial_impl(
    m: &Model,
    ring: &mut [f64],
    job: &Job<'_>,
    b: usize,
    spikes: &mut [f32],
    rates: &mut [f32],
    mat_vec: impl Fn(&[f64], &[f64], &mut [f64]),
) -> Bad {
    let (n, nb, ws) = (m.n, m.nb, m.ws);
    let nnb = n * nb;
    let n_trials = job.seeds.len();
    let key = key_of(job.seeds[b]);
    let fb = if job.ff_trials == 1 { 0 } else { b };
    let mut row = vec![0.0f64; n];
    let mut conv = vec![0.0f64; nnb];
    let mut drive = vec![0.0f64; n];
    let mut words = vec![0u32; n];
    let span = ws * nb;
    for t in 0..job.t_len {
        let step = job.step0 + t as u64;
        let slot = (step % ws as u64) as usize;
        let ff = &job.ffc[(t * job.ff_trials + fb) * n..(t * job.ff_trials + fb + 1) * n];
        // This step's slot, gathered from every sender and cleared (it becomes step + ws).
        for j in 0..n {
            let at = j * span + slot * nb;
            for (c, r) in conv[j * nb..(j + 1) * nb]
                .iter_mut()
                .zip(&mut ring[at..at + nb])
            {
                *c = std::mem::take(r);
            }
        }
        mat_vec(&m.coef, &conv, &mut drive);
        if job.mode != Mode::Expected {
            let c = counter(step, 0, 0);
            philox4x32_10_word0_run([c[1], c[2], c[3]], key, 0, &mut words);
        }
        for i in 0..n {
            let x = ff[i] + drive[i];
            let (r, s0) = m.link.eval_with_s0(x);
            if !(r as f32).is_finite() {
                return Some((step, i, r));
            }
            rates[t * n + i] = r as f32;
            let y = match job.mode {
                Mode::Expected => r,
                _ => poisson_with_words(
                    r,
                    |r| s0.unwrap_or_else(|| s0_of_rate(r)),
                    || words[i],
                    key,
                    step,
                    i as u32,
                ),
            };
            spikes[t * n + i] = y as f32;
            row[i] = match (job.mode, job.forced) {
                (Mode::Forced, Some(f)) => f[(t * n_trials + b) * n + i],
                _ => y,
            };
        }
        // Lag l lands in slot (slot + l) mod ws: two contiguous runs per sender.
        let head = (ws - slot - 1) * nb;
        for (j, &v) in row.iter().enumerate() {
            if v == 0.0 {
                continue;
            }
            let r = &mut ring[j * span..(j + 1) * span];
            let (lo, hi) = r.split_at_mut((slot + 1) * nb);
            axpy(hi, v, &m.basis[..head]);
            axpy(lo, v, &m.basis[head..]);
        }
    }
    None
}

impl CpuGlm {
    pub fn new(model: Arc<Model>) -> Self {
        CpuGlm {
            model,
            rings: Vec::new(),
        }
    }

    /// Takes the initial rings (`[slot][sender][function]`) as this engine's layout,
    /// `[sender][slot][function]`, so a sender's future contributions are contiguous.
    pub fn start(&mut self, rings: &InitRings, b: usize) {
        let (n, nb, ws) = (self.model.n, self.model.nb, self.model.ws);
        self.rings = (0..b)
            .map(|t| {
                let src = rings.get(t);
                let mut r = vec![0.0; src.len()];
                for s in 0..ws {
                    for j in 0..n {
                        r[(j * ws + s) * nb..(j * ws + s + 1) * nb]
                            .copy_from_slice(&src[(s * n + j) * nb..(s * n + j + 1) * nb]);
                    }
                }
                r
            })
            .collect();
    }

    /// Every trial's ring in the layout [`CpuGlm::start`] takes, `[slot][sender][function]`.
    pub fn rings(&self) -> Vec<Vec<f64>> {
        let (n, nb, ws) = (self.model.n, self.model.nb, self.model.ws);
        self.rings
            .iter()
            .map(|src| {
                let mut r = vec![0.0; src.len()];
                for s in 0..ws {
                    for j in 0..n {
                        r[(s * n + j) * nb..(s * n + j + 1) * nb]
                            .copy_from_slice(&src[(j * ws + s) * nb..(j * ws + s + 1) * nb]);
                    }
                }
                r
            })
            .collect()
    }

    /// Runs `job` on every trial; returns `(spikes, rates)`, `(T, B, n)`. The rings are
    /// replaced only when every trial succeeded.
    pub fn run(&mut self, job: &Job<'_>) -> Result<(Vec<f32>, Vec<f32>)> {
        let m = &*self.model;
        let (n, t_len) = (m.n, job.t_len);
        let b = self.rings.len();
        let mut rings = self.rings.clone();
        if b == 1 {
            // One trial: its `(T, n)` outputs are the `(T, 1, n)` result as they stand.
            let (mut spikes, mut rates) = (vec![0.0f32; t_len * n], vec![0.0f32; t_len * n]);
            if let Some((step, i, v)) = run_trial(m, &mut rings[0], job, 0, &mut spikes, &mut rates)
            {
                return Err(overflow(step, i, v));
            }
            self.rings = rings;
            return Ok((spikes, rates));
        }
        let mut per_trial: Vec<(Vec<f32>, Vec<f32>, Bad)> = (0..b)
            .map(|_| (vec![0.0; t_len * n], vec![0.0; t_len * n], None))
            .collect();
        let workers = crate::engine::worker_threads().min(b).max(1);
        if workers == 1 {
            for (k, (ring, out)) in rings.iter_mut().zip(per_trial.iter_mut()).enumerate() {
                out.2 = run_trial(m, ring, job, k, &mut out.0, &mut out.1);
            }
        } else {
            let per = b.div_ceil(workers);
            std::thread::scope(|s| {
                for (c, (rs, outs)) in rings
                    .chunks_mut(per)
                    .zip(per_trial.chunks_mut(per))
                    .enumerate()
                {
                    s.spawn(move || {
                        for (k, (ring, out)) in rs.iter_mut().zip(outs.iter_mut()).enumerate() {
                            out.2 = run_trial(m, ring, job, c * per + k, &mut out.0, &mut out.1);
                        }
                    });
                }
            });
        }
        // Earliest step, then lowest trial (the order of `per_trial`), then lowest neuron.
        if let Some((step, i, v)) = per_trial
            .iter()
            .filter_map(|o| o.2)
            .min_by_key(|&(step, _, _)| step)
        {
            return Err(overflow(step, i, v));
        }
        let mut spikes = vec![0.0f32; t_len * b * n];
        let mut rates = vec![0.0f32; t_len * b * n];
        for (k, (sp, ra, _)) in per_trial.iter().enumerate() {
            for t in 0..t_len {
                let o = (t * b + k) * n;
                spikes[o..o + n].copy_from_slice(&sp[t * n..(t + 1) * n]);
                rates[o..o + n].copy_from_slice(&ra[t * n..(t + 1) * n]);
            }
        }
        self.rings = rings;
        Ok((spikes, rates))
    }
}
