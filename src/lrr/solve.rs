//! The `f64` weight solver of one cluster, shared by the CPU engine and by the GPU engine's
//! host fall-back (singular or oversized clusters).
//!
//! `A = C_cluster + λI` is equilibrated by exact powers of two (`A_s = S·A·S`, diagonal in
//! `[1, 4)`) and swept in place on every pivot without pivoting (`A` is symmetric positive
//! semi-definite, so the pivots are Schur complements and need no search), which leaves
//! `−A_s⁻¹`; `W[a][b] = −(s_a/s_b)·A_s⁻¹[a][b] / A_s⁻¹[b][b]` (the sign cancels),
//! `W[b][b] = 0`. The GPU kernel (`shaders/lrr.wgsl`, `solve`) runs Gauss–Jordan elimination
//! one pivot at a time in double-`f32` arithmetic.
//!
//! The sweep on pivot `p` (`ã_pp = −1/a_pp`, `ã_ip = a_ip/a_pp`,
//! `ã_ij = a_ij − a_ip·a_pj/a_pp`) keeps the matrix symmetric, so the CPU keeps each row
//! only from its own 8-wide vector on (the upper triangle, rounded down to a vector): half
//! the multiply-adds of Gauss–Jordan elimination (`k³/2`). The pivots are taken [`PIVOTS`]
//! at a time: the block's rows (gathered whole from the upper triangle) are swept among
//! themselves, then every other row gets one rank-4 update (`A_OO − A_OB·A_BB⁻¹·A_BO`,
//! `A_OB·A_BB⁻¹`), which reads and writes each row once per block instead of once per
//! pivot. Rows are padded to a multiple of 8 `f64` so the updates run whole vectors
//! (AVX-512 or AVX2 where the CPU has them, checked at run time: separate multiplies and
//! subtractions in the same order in every build, so the result is bit-identical). Exact
//! arithmetic gives the one-pivot result; in `f64` the two differ by rounding, far inside
//! the solve's bound.
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
/// Pivots eliminated per pass over the rows. (Eight measured slower on a 64 × 64 cluster:
/// 15.6–20.8 µs against 14.4–17.0 µs for the elimination, Zen 4 VM, `lrr::solve::perf`.)
pub(crate) const PIVOTS: usize = 4;
/// `f64` lanes the working rows are padded to.
const LANES: usize = 8;

/// [`LANES`] `f64` on a 64-byte boundary: the working matrix is a `Vec` of these, so that
/// every row starts on a cache line. (A 16-byte-aligned buffer, what the allocator gives a
/// `Vec<f64>`, splits every 64-byte load and store over two lines: the row update measured
/// 4.8× slower that way.)
#[repr(C, align(64))]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Line([f64; LANES]);

/// `n` zeroed `f64` (a multiple of [`LANES`]) starting on a cache line.
fn aligned_zeros(n: usize) -> Vec<Line> {
    vec![Line([0.0; LANES]); n.div_ceil(LANES)]
}

/// Power-of-two scale `s` with `s²·d ∈ [1, 4)` for `d > 0` (1 for `d ≤ 0` or non-finite).
pub(crate) fn pow2_scale(d: f64) -> f64 {
    if !(d > 0.0 && d.is_finite()) {
        return 1.0;
    }
    let e = if d >= f64::MIN_POSITIVE {
        // The exponent of a normal number, read from its bits: exact, no `log2` rounding.
        ((d.to_bits() >> 52) & 0x7ff) as i32 - 1023
    } else {
        d.log2().floor() as i32
    };
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
    solve_block(k, lambda, |i, j| c[i * k + j])
}

/// [`solve_cluster`] with the cluster's block of `C` read through `entry(i, j)`, called for
/// `i ≤ j` only (the upper triangle).
pub(crate) fn solve_block(k: usize, lambda: f64, entry: impl Fn(usize, usize) -> f64) -> Solved {
    let kq = k.div_ceil(LANES) * LANES;
    let mut s = vec![1f64; k];
    for (p, sp) in s.iter_mut().enumerate() {
        *sp = pow2_scale(entry(p, p) + lambda);
    }
    let mut lines = aligned_zeros(kq * kq);
    let a: &mut [f64] = bytemuck::cast_slice_mut(&mut lines);
    fill_scaled(a, kq, k, lambda, &s, &entry);
    let diag: Vec<f64> = (0..k).map(|p| a[p * kq + p]).collect();
    let singular = !eliminate(a, &diag, kq);
    let w = if singular {
        // The elimination changed `a`: the equilibrated matrix is built again.
        a.iter_mut().for_each(|v| *v = 0.0);
        fill_scaled(a, kq, k, lambda, &s, &entry);
        weights_from_inverse(&pseudo_inverse(a, &diag, kq), kq, &s, k)
    } else {
        weights_from_inverse(a, kq, &s, k)
    };
    Solved { w, pinv: singular }
}

/// `a[i][j] = (A[i][j]·s_i)·s_j` for `i, j < k` in row `i`'s range (row stride `kq`; the
/// rest of the lower triangle is left alone), `A = C + λI` read from the upper triangle.
fn fill_scaled(
    a: &mut [f64],
    kq: usize,
    k: usize,
    lambda: f64,
    s: &[f64],
    entry: &impl Fn(usize, usize) -> f64,
) {
    // `(a·s_i)·s_j`, not `a·(s_i·s_j)`: for a subnormal diagonal (a subnormal ridge on a dead
    // channel) `s_i²` overflows to infinity while the scaled entry is about 1. Both are exact
    // products by powers of two otherwise.
    for i in 0..k {
        for j in range_start(i)..i {
            a[i * kq + j] = entry(j, i) * s[j] * s[i];
        }
        a[i * kq + i] = (entry(i, i) + lambda) * s[i] * s[i];
        for j in i + 1..k {
            a[i * kq + j] = entry(i, j) * s[i] * s[j];
        }
    }
}

/// `a ← −a⁻¹` for the equilibrated, symmetric `a` (`kq × kq`, `kq` a multiple of
/// [`LANES`], zero outside the cluster's `k × k`) in place by the blocked sweep, skipping dead channels
/// (`diag[p] = 0`); `false` (and `a` partly eliminated) at a pivot at or below
/// [`SINGULAR_TOL`] times its diagonal.
fn eliminate(a: &mut [f64], diag: &[f64], kq: usize) -> bool {
    if !kq.is_multiple_of(LANES) || a.len() < kq * kq || diag.len() > kq {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512F (checked just above); the shapes were checked.
            return unsafe { eliminate_avx512(a, diag, kq) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above); the shapes were checked.
            return unsafe { eliminate_avx2(a, diag, kq) };
        }
    }
    // SAFETY: the shapes were checked above.
    unsafe { eliminate_impl::<[f64; LANES]>(a, diag, kq) }
}

/// [`eliminate_impl`] on AVX-512 vectors.
///
/// # Safety
/// The CPU must support AVX-512F; shapes as [`eliminate_impl`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn eliminate_avx512(a: &mut [f64], diag: &[f64], kq: usize) -> bool {
    eliminate_impl::<std::arch::x86_64::__m512d>(a, diag, kq)
}

/// [`eliminate_impl`] on pairs of AVX vectors.
///
/// # Safety
/// The CPU must support AVX2; shapes as [`eliminate_impl`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn eliminate_avx2(a: &mut [f64], diag: &[f64], kq: usize) -> bool {
    eliminate_impl::<[std::arch::x86_64::__m256d; 2]>(a, diag, kq)
}

/// The blocked symmetric sweep (module docs) on [`Lanes`] vectors.
///
/// Row `i` is kept from column `⌊i/8⌋·8` on (its *range*); `a[i][j]` is read as
/// `a[min(i, j)][max(i, j)]`, always inside a range. At the end `a` holds `−A⁻¹` in full.
///
/// # Safety
/// `kq` a multiple of [`LANES`], `a.len() ≥ kq²`, `diag.len() ≤ kq`; the CPU must support
/// `V`'s instructions.
#[inline(always)]
unsafe fn eliminate_impl<V: Lanes>(a: &mut [f64], diag: &[f64], kq: usize) -> bool {
    let live: Vec<usize> = (0..diag.len()).filter(|&p| diag[p] != 0.0).collect();
    let mut panel_lines = aligned_zeros(PIVOTS * kq);
    let panel: &mut [f64] = bytemuck::cast_slice_mut(&mut panel_lines);
    let mut before = vec![0f64; PIVOTS * kq];
    for block in live.chunks(PIVOTS) {
        // The block's rows in full, read from the upper triangle.
        for (q, &p) in block.iter().enumerate() {
            let row = &mut panel[q * kq..(q + 1) * kq];
            for (x, &v) in row[..p].iter_mut().zip(a[p..].iter().step_by(kq)) {
                *x = v;
            }
            row[p..].copy_from_slice(&a[p * kq + p..(p + 1) * kq]);
        }
        // The other rows' coefficients `a[i][b]` come from the rows before the sweep.
        before[..block.len() * kq].copy_from_slice(&panel[..block.len() * kq]);
        // The block's rows among themselves, one pivot at a time.
        let pp = panel.as_mut_ptr();
        for (t, &p) in block.iter().enumerate() {
            let piv = panel[t * kq + p];
            if piv.partial_cmp(&(SINGULAR_TOL * diag[p])) != Some(Ordering::Greater) {
                return false;
            }
            let d = 1.0 / piv;
            // Row p scaled, with a zero in column p so that the update below leaves column
            // p alone; column p is written afterwards.
            panel[t * kq + p] = 0.0;
            panel[t * kq..(t + 1) * kq].iter_mut().for_each(|x| *x *= d);
            for r in (0..block.len()).filter(|&r| r != t) {
                let f = panel[r * kq + p];
                sub_rows::<V, 1>(pp.add(r * kq), [f], pp.add(t * kq), kq, kq);
                panel[r * kq + p] = f * d;
            }
            panel[t * kq + p] = -d;
        }
        match *block {
            [b0, b1, b2, b3] => {
                update_others::<V, 4>(a, kq, [b0, b1, b2, b3], &live, panel, &before)
            }
            [b0, b1, b2] => update_others::<V, 3>(a, kq, [b0, b1, b2], &live, panel, &before),
            [b0, b1] => update_others::<V, 2>(a, kq, [b0, b1], &live, panel, &before),
            [b0] => update_others::<V, 1>(a, kq, [b0], &live, panel, &before),
            _ => {}
        }
        // The block's final rows, each over its range.
        for (q, &p) in block.iter().enumerate() {
            let s = range_start(p);
            a[p * kq + s..(p + 1) * kq].copy_from_slice(&panel[q * kq + s..(q + 1) * kq]);
        }
    }
    // The lower triangle outside the ranges, mirrored.
    for i in LANES..kq {
        let (above, rest) = a.split_at_mut(i * kq);
        let column = above[i..].iter().step_by(kq);
        for (x, &v) in rest[..range_start(i)].iter_mut().zip(column) {
            *x = v;
        }
    }
    true
}

/// First column of row `i`'s range: its vector's start.
#[inline(always)]
fn range_start(i: usize) -> usize {
    i / LANES * LANES
}

/// The rank-`M` update of every live row outside `block` (module docs), each over its
/// range: `panel` holds the block's final rows in full, `before` the same rows before the
/// block's sweep (row `i`'s coefficients are `before[q][i] = a[i][b_q]`).
///
/// # Safety
/// As [`eliminate_impl`]; `block` and `live` indices below `kq`, `panel` and `before` `M`
/// rows of `kq`.
#[inline(always)]
unsafe fn update_others<V: Lanes, const M: usize>(
    a: &mut [f64],
    kq: usize,
    block: [usize; M],
    live: &[usize],
    panel: &[f64],
    before: &[f64],
) {
    let ap = a.as_mut_ptr();
    let coefficients = |i: usize| -> [f64; M] { std::array::from_fn(|q| before[q * kq + i]) };
    // The block's columns of row `i` are the block's final rows at column `i` (the sweep
    // keeps the matrix symmetric): `a[i][b_t] = (A_iB·A_BB⁻¹)_t = (A_BB⁻¹·A_Bi)_t`, copied
    // after the wide stores (a narrow store that a wider load overlaps stalls the load until
    // the store retires).
    let block_columns = |i: usize| {
        for (t, &pt) in block.iter().enumerate() {
            *ap.add(i * kq + pt) = panel[t * kq + i];
        }
    };
    // Rows two at a time where they share a range start: each panel vector loaded once
    // serves both.
    let mut others = live.iter().filter(|i| !block.contains(i)).peekable();
    while let Some(&i) = others.next() {
        let s = range_start(i);
        let r0 = ap.add(i * kq);
        let f0 = coefficients(i);
        let pair = others.next_if(|&&i1| range_start(i1) == s);
        if let Some(&i1) = pair {
            let r1 = ap.add(i1 * kq);
            let f1 = coefficients(i1);
            sub_rows2::<V, M>(
                [r0.add(s), r1.add(s)],
                [f0, f1],
                panel.as_ptr().add(s),
                kq,
                kq - s,
            );
            block_columns(i1);
        } else {
            sub_rows::<V, M>(r0.add(s), f0, panel.as_ptr().add(s), kq, kq - s);
        }
        block_columns(i);
    }
}

/// [`sub_rows`] on two rows at once, each element's operations in the same order, so the
/// results are those of two calls.
///
/// # Safety
/// As [`sub_rows`], for both rows; the rows distinct.
#[inline(always)]
unsafe fn sub_rows2<V: Lanes, const M: usize>(
    rows: [*mut f64; 2],
    f: [[f64; M]; 2],
    panel: *const f64,
    stride: usize,
    n: usize,
) {
    let g0 = f[0].map(|x| V::splat(x));
    let g1 = f[1].map(|x| V::splat(x));
    let mut j = 0;
    while j < n {
        let mut x0 = V::load(rows[0].add(j));
        let mut x1 = V::load(rows[1].add(j));
        for q in 0..M {
            let p = V::load(panel.add(q * stride + j));
            x0 = x0.sub_mul(g0[q], p);
            x1 = x1.sub_mul(g1[q], p);
        }
        x0.store(rows[0].add(j));
        x1.store(rows[1].add(j));
        j += LANES;
    }
}

/// `row[j] = (…(row[j] − f[0]·p_0[j]) − …) − f[M−1]·p_{M−1}[j]` for `j < n`, `p_q` at
/// `panel + q·stride`; whole [`LANES`]-wide vectors.
///
/// # Safety
/// `n` a multiple of [`LANES`]; `row` and the `M` panel rows valid for `n` values, `row`
/// distinct from every panel row; the CPU must support `V`.
#[inline(always)]
unsafe fn sub_rows<V: Lanes, const M: usize>(
    row: *mut f64,
    f: [f64; M],
    panel: *const f64,
    stride: usize,
    n: usize,
) {
    let fv = f.map(|x| V::splat(x));
    let mut j = 0;
    while j < n {
        let mut x = V::load(row.add(j));
        for (q, &fq) in fv.iter().enumerate() {
            x = x.sub_mul(fq, V::load(panel.add(q * stride + j)));
        }
        x.store(row.add(j));
        j += LANES;
    }
}

/// [`LANES`] `f64` values as one vector: the elimination's only arithmetic, a multiply then
/// a subtraction (not fused), so every implementation rounds the same.
trait Lanes: Copy {
    /// # Safety
    /// `p` valid for [`LANES`] reads; the CPU must support the vector type.
    unsafe fn load(p: *const f64) -> Self;
    /// # Safety
    /// `p` valid for [`LANES`] writes; the CPU must support the vector type.
    unsafe fn store(self, p: *mut f64);
    /// # Safety
    /// The CPU must support the vector type.
    unsafe fn splat(x: f64) -> Self;
    /// `self − f·p`, element-wise.
    ///
    /// # Safety
    /// The CPU must support the vector type.
    unsafe fn sub_mul(self, f: Self, p: Self) -> Self;
}

impl Lanes for [f64; LANES] {
    #[inline(always)]
    unsafe fn load(p: *const f64) -> Self {
        std::ptr::read_unaligned(p as *const [f64; LANES])
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f64) {
        std::ptr::write_unaligned(p as *mut [f64; LANES], self)
    }
    #[inline(always)]
    unsafe fn splat(x: f64) -> Self {
        [x; LANES]
    }
    #[inline(always)]
    unsafe fn sub_mul(self, f: Self, p: Self) -> Self {
        std::array::from_fn(|l| self[l] - f[l] * p[l])
    }
}

#[cfg(target_arch = "x86_64")]
impl Lanes for std::arch::x86_64::__m512d {
    #[inline(always)]
    unsafe fn load(p: *const f64) -> Self {
        std::arch::x86_64::_mm512_loadu_pd(p)
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f64) {
        std::arch::x86_64::_mm512_storeu_pd(p, self)
    }
    #[inline(always)]
    unsafe fn splat(x: f64) -> Self {
        std::arch::x86_64::_mm512_set1_pd(x)
    }
    #[inline(always)]
    unsafe fn sub_mul(self, f: Self, p: Self) -> Self {
        use std::arch::x86_64::*;
        _mm512_sub_pd(self, _mm512_mul_pd(f, p))
    }
}

#[cfg(target_arch = "x86_64")]
impl Lanes for [std::arch::x86_64::__m256d; 2] {
    #[inline(always)]
    unsafe fn load(p: *const f64) -> Self {
        use std::arch::x86_64::*;
        [_mm256_loadu_pd(p), _mm256_loadu_pd(p.add(4))]
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f64) {
        use std::arch::x86_64::*;
        _mm256_storeu_pd(p, self[0]);
        _mm256_storeu_pd(p.add(4), self[1]);
    }
    #[inline(always)]
    unsafe fn splat(x: f64) -> Self {
        use std::arch::x86_64::*;
        [_mm256_set1_pd(x); 2]
    }
    #[inline(always)]
    unsafe fn sub_mul(self, f: Self, p: Self) -> Self {
        use std::arch::x86_64::*;
        [
            _mm256_sub_pd(self[0], _mm256_mul_pd(f[0], p[0])),
            _mm256_sub_pd(self[1], _mm256_mul_pd(f[1], p[1])),
        ]
    }
}

/// `W[a][b] = −(s_a/s_b)·inv[a][b]/inv[b][b]` (0 on the diagonal and where `inv[b][b]` is 0);
/// `inv` has row stride `kq`, `W` is `k × k`.
fn weights_from_inverse(inv: &[f64], kq: usize, s: &[f64], k: usize) -> Vec<f64> {
    // Per column: `u_b = 1/(s_b·inv[b][b])`, 0 where unusable; `s_a/s_b` is a power of two.
    let u: Vec<f64> = (0..k)
        .map(|b| {
            let dbb = inv[b * kq + b];
            let u = 1.0 / (s[b] * dbb);
            if dbb.abs() > 0.0 && dbb.is_finite() && u.is_finite() {
                u
            } else {
                0.0
            }
        })
        .collect();
    let mut w = vec![0f64; k * k];
    for (a, (w_row, inv_row)) in w.chunks_exact_mut(k).zip(inv.chunks_exact(kq)).enumerate() {
        let sa = s[a];
        for ((x, &v), &ub) in w_row.iter_mut().zip(&inv_row[..k]).zip(&u) {
            let y = -(sa * v) * ub;
            *x = if y.is_finite() { y } else { 0.0 };
        }
        w_row[a] = 0.0;
    }
    w
}

/// Pseudo-inverse of the live (nonzero-diagonal) channels' block of `a` (`kq × kq`, the
/// cluster's `diag.len()` channels first), scattered back into `kq × kq` with zeros for dead
/// channels.
fn pseudo_inverse(a: &[f64], diag: &[f64], kq: usize) -> Vec<f64> {
    let live: Vec<usize> = (0..diag.len()).filter(|&p| diag[p] != 0.0).collect();
    let m = live.len();
    let mut out = vec![0f64; kq * kq];
    if m == 0 {
        return out;
    }
    // The upper triangle (what `fill_scaled` writes in full).
    let b = DMatrix::from_fn(m, m, |i, j| {
        let (r, c) = (live[i].min(live[j]), live[i].max(live[j]));
        a[r * kq + c]
    });
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
            out[li * kq + lj] = p[(i, j)];
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

    /// `W` from nalgebra's inverse of `C + λI` (the formula, no equilibration).
    fn w_nalgebra(c: &[f64], k: usize, lambda: f64) -> Vec<f64> {
        let m = DMatrix::from_fn(k, k, |i, j| {
            c[i * k + j] + if i == j { lambda } else { 0.0 }
        });
        let inv = m.try_inverse().expect("invertible");
        let mut w = vec![0.0; k * k];
        for a in 0..k {
            for b in 0..k {
                if a != b {
                    w[a * k + b] = -inv[(a, b)] / inv[(b, b)];
                }
            }
        }
        w
    }

    /// The blocked elimination at sizes that leave partial blocks and partial vectors, and
    /// with dead channels that split the pivot blocks (non-consecutive pivots in a block).
    #[test]
    fn blocked_elimination_matches_nalgebra_at_awkward_sizes() {
        for k in [1usize, 2, 3, 4, 5, 7, 8, 9, 13, 31, 48, 64, 65] {
            let c = spd(k, 11 + k as u64);
            let got = solve_cluster(&c, k, 1e-3);
            assert!(!got.pinv, "k {k}");
            let want = w_nalgebra(&c, k, 1e-3);
            let err = got
                .w
                .iter()
                .zip(&want)
                .map(|(g, w)| (g - w).abs())
                .fold(0.0, f64::max);
            assert!(err < 1e-9, "k {k}: max |ΔW| {err:e}");
        }
        let k = 23;
        let dead = [0usize, 3, 4, 9, 22];
        let mut c = spd(k, 5);
        for &d in &dead {
            for j in 0..k {
                c[d * k + j] = 0.0;
                c[j * k + d] = 0.0;
            }
        }
        let got = solve_cluster(&c, k, 0.0);
        assert!(!got.pinv);
        let live: Vec<usize> = (0..k).filter(|p| !dead.contains(p)).collect();
        let m = live.len();
        let sub: Vec<f64> = live
            .iter()
            .flat_map(|&i| live.iter().map(move |&j| (i, j)))
            .map(|(i, j)| c[i * k + j])
            .collect();
        let want = w_nalgebra(&sub, m, 0.0);
        for a in 0..k {
            for b in 0..k {
                let g = got.w[a * k + b];
                match (
                    live.iter().position(|&p| p == a),
                    live.iter().position(|&p| p == b),
                ) {
                    (Some(la), Some(lb)) => {
                        assert!((g - want[la * m + lb]).abs() < 1e-9, "({a},{b})")
                    }
                    _ => assert_eq!(g, 0.0, "dead ({a},{b})"),
                }
            }
        }
    }

    /// Every vector implementation of the elimination rounds the same: bit-identical.
    #[test]
    fn elimination_is_bit_identical_across_vector_widths() {
        let k = 29;
        let kq = 32;
        let c = spd(k, 9);
        let mut base = aligned_zeros(kq * kq);
        let s: Vec<f64> = (0..k).map(|p| pow2_scale(c[p * k + p])).collect();
        fill_scaled(
            bytemuck::cast_slice_mut(&mut base),
            kq,
            k,
            0.0,
            &s,
            &|i, j| c[i * k + j],
        );
        let a0: &[f64] = bytemuck::cast_slice(&base);
        let diag: Vec<f64> = (0..k).map(|p| a0[p * kq + p]).collect();
        let run = |f: &dyn Fn(&mut [f64]) -> bool| {
            let mut lines = base.clone();
            let a: &mut [f64] = bytemuck::cast_slice_mut(&mut lines);
            assert!(f(a));
            a.to_vec()
        };
        // SAFETY: shapes as required (kq a multiple of 8, a kq × kq, diag k ≤ kq).
        let scalar = run(&|a| unsafe { eliminate_impl::<[f64; LANES]>(a, &diag, kq) });
        assert_eq!(run(&|a| eliminate(a, &diag, kq)), scalar, "dispatched");
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: AVX2 checked.
                assert_eq!(
                    run(&|a| unsafe { eliminate_avx2(a, &diag, kq) }),
                    scalar,
                    "AVX2"
                );
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: AVX-512F checked.
                let v = run(&|a| unsafe { eliminate_avx512(a, &diag, kq) });
                assert_eq!(v, scalar, "AVX-512");
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
    /// cluster's solve (the sweep is about 64³/2 = 131 072 multiply-adds of it), best of 3000.
    #[test]
    #[ignore]
    fn perf_solve_64() {
        let k = 64;
        let c = tests::spd_for_perf(k);
        let diag: Vec<f64> = (0..k).map(|p| c[p * k + p]).collect();
        let best = |f: &mut dyn FnMut()| {
            (0..3000)
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
            let mut lines = aligned_zeros(k * k);
            let a: &mut [f64] = bytemuck::cast_slice_mut(&mut lines);
            a.copy_from_slice(&c);
            std::hint::black_box(eliminate(a, &diag, k));
        });
        println!(
            "k 64: solve_cluster {:.1} µs, eliminate {:.1} µs ({:.1} G multiply-adds/s)",
            solve * 1e6,
            elim * 1e6,
            (k * k * k) as f64 / 2.0 / elim / 1e9
        );
    }
}
