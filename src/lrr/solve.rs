//! The `f64` weight solver of one cluster, shared by the CPU engine and by the GPU engine's
//! host fall-back (singular or oversized clusters).
//!
//! `A = C_cluster + λI` is equilibrated by exact powers of two (`A_s = S·A·S`, diagonal in
//! `[1, 4)`), inverted in place by Gauss–Jordan elimination without pivoting (`A` is symmetric
//! positive semi-definite, so the pivots are Schur complements and need no search), and
//! `W[a][b] = −(s_a/s_b)·A_s⁻¹[a][b] / A_s⁻¹[b][b]`, `W[b][b] = 0`. The GPU kernel
//! (`shaders/lrr.wgsl`, `solve`) runs the very same steps in double-`f32` arithmetic.
//!
//! * A **dead** channel (`A[p][p] = 0`: all its samples were zero and `λ = 0`) is skipped:
//!   its row and column stay zero, so its column and row of `W` are zero.
//! * A pivot at or below [`SINGULAR_TOL`] times its (equilibrated) diagonal marks the
//!   cluster singular; then `A_s⁻¹` is replaced by the Moore–Penrose pseudo-inverse of the
//!   live channels' block (SVD, singular values below [`PINV_RCOND`]·σ_max dropped), as the
//!   seed does when `inv` fails. A column whose pseudo-inverse diagonal is zero gets zero
//!   weights. No division ever yields NaN.

use nalgebra::DMatrix;
use std::cmp::Ordering;

/// Relative pivot size below which a cluster is treated as singular.
pub(crate) const SINGULAR_TOL: f64 = 1e-10;
/// Relative cut-off of singular values in the pseudo-inverse fall-back.
pub(crate) const PINV_RCOND: f64 = 1e-10;

/// Power-of-two scale `s` with `s²·d ∈ [1, 4)` for `d > 0` (1 for `d ≤ 0` or non-finite).
pub(crate) fn pow2_scale(d: f64) -> f64 {
    if !(d > 0.0 && d.is_finite()) {
        return 1.0;
    }
    let e = d.log2().floor() as i32;
    2f64.powi(-(e.div_euclid(2)))
}

/// The outcome of one cluster's solve.
#[derive(Debug, Clone)]
pub(crate) struct Solved {
    /// `W` of the cluster, `k × k`, row-major, cluster-local order.
    pub w: Vec<f64>,
    /// Whether the pseudo-inverse fall-back was used.
    pub pinv: bool,
}

/// Solves one cluster: `c` is its `k × k` block of `C` (row-major, symmetric), `lambda` the
/// ridge. See the module docs.
pub(crate) fn solve_cluster(c: &[f64], k: usize, lambda: f64) -> Solved {
    let mut a: Vec<f64> = c[..k * k].to_vec();
    for p in 0..k {
        a[p * k + p] += lambda;
    }
    let s: Vec<f64> = (0..k).map(|p| pow2_scale(a[p * k + p])).collect();
    // `(a·s_i)·s_j`, not `a·(s_i·s_j)`: for a subnormal diagonal (a subnormal ridge on a dead
    // channel) `s_i²` overflows to infinity while the scaled entry is about 1. Both are exact
    // products by powers of two otherwise.
    for i in 0..k {
        for j in 0..k {
            a[i * k + j] = a[i * k + j] * s[i] * s[j];
        }
    }
    let diag: Vec<f64> = (0..k).map(|p| a[p * k + p]).collect();
    let scaled = a.clone();
    let singular = !eliminate(&mut a, &diag, k);
    let inv = if singular {
        pseudo_inverse(&scaled, &diag, k)
    } else {
        a
    };
    Solved {
        w: weights_from_inverse(&inv, &s, k),
        pinv: singular,
    }
}

/// Gauss–Jordan inversion of the equilibrated `a` (`k × k`) in place, skipping dead channels
/// (`diag[p] = 0`); `false` (and `a` partly eliminated) at a pivot at or below
/// [`SINGULAR_TOL`] times its diagonal. Built for AVX2 where the CPU has it (checked at run
/// time): the same element-wise operations, four lanes wide, so the result is bit-identical.
fn eliminate(a: &mut [f64], diag: &[f64], k: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            return unsafe { eliminate_avx2(a, diag, k) };
        }
    }
    eliminate_impl(a, diag, k)
}

/// [`eliminate_impl`] compiled for AVX2.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn eliminate_avx2(a: &mut [f64], diag: &[f64], k: usize) -> bool {
    eliminate_impl(a, diag, k)
}

#[inline(always)]
fn eliminate_impl(a: &mut [f64], diag: &[f64], k: usize) -> bool {
    let mut col = vec![0f64; k];
    let mut row_p = vec![0f64; k];
    for p in 0..k {
        if diag[p] == 0.0 {
            continue; // dead channel
        }
        let piv = a[p * k + p];
        if piv.partial_cmp(&(SINGULAR_TOL * diag[p])) != Some(Ordering::Greater) {
            return false;
        }
        let d = 1.0 / piv;
        // New row p, with a zero in column p so that the branch-free update below leaves
        // column p alone; column p is written afterwards.
        for j in 0..k {
            a[p * k + j] *= d;
        }
        a[p * k + p] = 0.0;
        for i in 0..k {
            col[i] = if i == p { 0.0 } else { a[i * k + p] };
        }
        row_p.copy_from_slice(&a[p * k..p * k + k]);
        for (i, row_i) in a.chunks_exact_mut(k).enumerate() {
            let f = col[i];
            if f != 0.0 {
                for (x, r) in row_i.iter_mut().zip(&row_p) {
                    *x -= f * r;
                }
            }
        }
        for i in 0..k {
            if i != p {
                a[i * k + p] = -col[i] * d;
            }
        }
        a[p * k + p] = d;
    }
    true
}

/// `W[a][b] = −(s_a/s_b)·inv[a][b]/inv[b][b]` (0 on the diagonal and where `inv[b][b]` is 0).
fn weights_from_inverse(inv: &[f64], s: &[f64], k: usize) -> Vec<f64> {
    let mut w = vec![0f64; k * k];
    for b in 0..k {
        let dbb = inv[b * k + b];
        if !(dbb.abs() > 0.0 && dbb.is_finite()) {
            continue;
        }
        for a in 0..k {
            if a != b {
                let v = -(s[a] / s[b]) * inv[a * k + b] / dbb;
                w[a * k + b] = if v.is_finite() { v } else { 0.0 };
            }
        }
    }
    w
}

/// Pseudo-inverse of the live (nonzero-diagonal) channels' block of `a` (`k × k`), scattered
/// back into `k × k` with zeros for dead channels.
fn pseudo_inverse(a: &[f64], diag: &[f64], k: usize) -> Vec<f64> {
    let live: Vec<usize> = (0..k).filter(|&p| diag[p] != 0.0).collect();
    let m = live.len();
    let mut out = vec![0f64; k * k];
    if m == 0 {
        return out;
    }
    let b = DMatrix::from_fn(m, m, |i, j| a[live[i] * k + live[j]]);
    if b.iter().any(|v| !v.is_finite()) {
        // nalgebra's SVD panics on a NaN; an unusable block gets zero weights.
        return out;
    }
    let svd = b.svd(true, true);
    let smax = svd.singular_values.iter().cloned().fold(0.0, f64::max);
    let Ok(p) = svd.pseudo_inverse(PINV_RCOND * smax) else {
        return out;
    };
    for (i, &li) in live.iter().enumerate() {
        for (j, &lj) in live.iter().enumerate() {
            out[li * k + lj] = p[(i, j)];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A well-conditioned symmetric positive definite `k × k` matrix for timing.
    pub(super) fn spd_for_perf(k: usize) -> Vec<f64> {
        spd(k, 1)
    }

    fn spd(k: usize, seed: u64) -> Vec<f64> {
        let mut s = seed;
        let mut x = vec![0f64; 3 * k * k];
        for v in x.iter_mut() {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            *v = (s >> 11) as f64 / (1u64 << 53) as f64 - 0.5;
        }
        let n = 3 * k;
        let mut c = vec![0f64; k * k];
        for i in 0..k {
            for j in 0..k {
                c[i * k + j] = (0..n).map(|r| x[r * k + i] * x[r * k + j]).sum();
            }
        }
        c
    }

    #[test]
    fn gauss_jordan_matches_nalgebra_inverse() {
        let k = 9;
        let c = spd(k, 7);
        let m = DMatrix::from_row_slice(k, k, &c);
        let inv = m.try_inverse().expect("invertible");
        let got = solve_cluster(&c, k, 0.0);
        assert!(!got.pinv);
        for a in 0..k {
            for b in 0..k {
                let want = if a == b {
                    0.0
                } else {
                    -inv[(a, b)] / inv[(b, b)]
                };
                assert!((got.w[a * k + b] - want).abs() < 1e-10, "({a},{b})");
            }
        }
    }

    #[test]
    fn dead_and_duplicate_channels() {
        let k = 5;
        let mut c = spd(k, 3);
        // channel 2 dead
        for j in 0..k {
            c[2 * k + j] = 0.0;
            c[j * k + 2] = 0.0;
        }
        let got = solve_cluster(&c, k, 0.0);
        assert!(!got.pinv);
        for j in 0..k {
            assert_eq!(got.w[2 * k + j], 0.0);
            assert_eq!(got.w[j * k + 2], 0.0);
        }
        // channel 4 duplicates channel 0: singular → pseudo-inverse, finite
        let mut d = spd(k, 4);
        for j in 0..k {
            d[4 * k + j] = d[j];
        }
        for j in 0..k {
            d[j * k + 4] = d[j * k];
        }
        d[4 * k + 4] = d[0];
        let got = solve_cluster(&d, k, 0.0);
        assert!(got.pinv);
        assert!(got.w.iter().all(|v| v.is_finite()));
    }
}

#[cfg(test)]
mod perf {
    use super::*;
    use std::time::Instant;

    /// `cargo test --release --lib lrr::solve::perf -- --ignored --nocapture`: one 64 × 64
    /// cluster's solve (Gauss–Jordan is 64³ = 262 144 multiply-adds of it), best of 200.
    #[test]
    #[ignore]
    fn perf_solve_64() {
        let k = 64;
        let c = tests::spd_for_perf(k);
        let diag: Vec<f64> = (0..k).map(|p| c[p * k + p]).collect();
        let best = |f: &mut dyn FnMut()| {
            (0..200)
                .map(|_| {
                    let t0 = Instant::now();
                    f();
                    t0.elapsed().as_secs_f64()
                })
                .fold(f64::MAX, f64::min)
        };
        let solve = best(&mut || {
            std::hint::black_box(solve_cluster(&c, k, 1e-3));
        });
        let elim = best(&mut || {
            let mut a = c.clone();
            std::hint::black_box(eliminate(&mut a, &diag, k));
        });
        println!(
            "k 64: solve_cluster {:.1} µs, eliminate {:.1} µs ({:.1} G multiply-adds/s)",
            solve * 1e6,
            elim * 1e6,
            (k * k * k) as f64 / elim / 1e9
        );
    }
}
