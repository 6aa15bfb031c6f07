//! CPU micro-kernels of LRR: blocked `f32` products on zero-padded panels, with AVX-512 (for
//! [`syrk_block`]) or AVX2 + FMA when the processor has them (detected at run time) and a
//! portable version otherwise. Every path sums each entry's products in the same order with
//! fused multiply-adds, so AVX-512 and AVX2 give bit-identical results.
//!
//! * [`syrk_block`]: the upper block tiles of `PᵀP` for a panel `P` of [`BLOCK`] rows, summed
//!   in `f32` registers over those rows only and then folded into an `f64` matrix. Bounding
//!   the `f32` run to [`BLOCK`] products is what bounds the error (see `super` docs).
//! * [`gemm_rows`]: `Y = X·M` for a panel of rows, `f32` with `f32` accumulation over the
//!   (short) cluster dimension.
//!
//! Panels are row-major with a row stride `kp`, a multiple of [`TC`], and zero padding past
//! the `k` live columns; the `f64` matrix is `kp × kp`, row-major.

/// Rows of a panel summed in `f32` before folding into `f64`.
pub(crate) const BLOCK: usize = 32;
/// Rows of a register tile.
pub(crate) const TR: usize = 6;
/// Columns of a register tile (two AVX vectors).
pub(crate) const TC: usize = 16;

/// Rows of an AVX-512 register tile (its columns are up to three 16-lane vectors).
const TR512: usize = 8;

/// Whether the AVX-512 kernels can run here (checked once).
fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static OK: OnceLock<bool> = OnceLock::new();
        *OK.get_or_init(|| std::arch::is_x86_feature_detected!("avx512f"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the AVX2 + FMA kernels can run here (checked once).
fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static OK: OnceLock<bool> = OnceLock::new();
        *OK.get_or_init(|| {
            std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Adds `PᵀP` over the [`BLOCK`] rows of `panel` (row stride `ps`, `kp` columns read, `k`
/// live) to the upper block tiles of `c` (`kp × kp`): every `c[i][j]` with `j ≥ 8·⌊i/8⌋`
/// is updated (the AVX2 and portable paths also those with `j ≥ 16·⌊i/16⌋`), in particular
/// every `j ≥ i`, the only entries read. Each entry's [`BLOCK`] products are summed in
/// `f32`, then added to the `f64` entry. Does nothing if a slice is too short.
pub(crate) fn syrk_block(panel: &[f32], ps: usize, kp: usize, k: usize, c: &mut [f64]) {
    if !kp.is_multiple_of(TC)
        || k > kp
        || ps < kp
        || panel.len() < (BLOCK - 1) * ps + kp
        || c.len() < kp * kp
    {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        // SAFETY: AVX-512F is present; the bounds were checked above.
        unsafe { syrk_block_avx512(panel, ps, kp, k, c) };
        return;
    }
    syrk_block_narrow(panel, ps, kp, k, c, has_avx2_fma());
}

/// [`syrk_block`] in 6 × 16 tiles, AVX2 + FMA when `avx` (which must then be present),
/// portable otherwise; bounds as checked by [`syrk_block`].
fn syrk_block_narrow(panel: &[f32], ps: usize, kp: usize, k: usize, c: &mut [f64], avx: bool) {
    let mut i0 = 0;
    while i0 < k {
        let r = TR.min(k - i0);
        let mut j0 = i0 / TC * TC;
        while j0 < kp {
            #[cfg(target_arch = "x86_64")]
            if avx {
                // SAFETY: AVX2 and FMA are present; the bounds were checked above:
                // rows `i0 + r ≤ k ≤ kp`, columns `j0 + 16 ≤ kp`, `BLOCK` rows of `kp`.
                unsafe {
                    match r {
                        6 => syrk_tile_avx2::<6>(panel, ps, kp, i0, j0, c),
                        5 => syrk_tile_avx2::<5>(panel, ps, kp, i0, j0, c),
                        4 => syrk_tile_avx2::<4>(panel, ps, kp, i0, j0, c),
                        3 => syrk_tile_avx2::<3>(panel, ps, kp, i0, j0, c),
                        2 => syrk_tile_avx2::<2>(panel, ps, kp, i0, j0, c),
                        _ => syrk_tile_avx2::<1>(panel, ps, kp, i0, j0, c),
                    }
                }
                j0 += TC;
                continue;
            }
            let _ = avx;
            syrk_tile_portable(panel, ps, kp, i0, r, j0, c);
            j0 += TC;
        }
        i0 += TR;
    }
}

fn syrk_tile_portable(
    panel: &[f32],
    ps: usize,
    kp: usize,
    i0: usize,
    r: usize,
    j0: usize,
    c: &mut [f64],
) {
    let mut acc = [[0f32; TC]; TR];
    for s in 0..BLOCK {
        let row = &panel[s * ps..s * ps + kp];
        let v = &row[j0..j0 + TC];
        for (q, a) in acc.iter_mut().enumerate().take(r) {
            let b = row[i0 + q];
            for t in 0..TC {
                a[t] += b * v[t];
            }
        }
    }
    for (q, a) in acc.iter().enumerate().take(r) {
        let crow = &mut c[(i0 + q) * kp + j0..(i0 + q) * kp + j0 + TC];
        for t in 0..TC {
            crow[t] += a[t] as f64;
        }
    }
}

/// [`syrk_block`] on AVX-512: tiles of [`TR512`] rows by up to 48 columns (three vectors), so
/// a 48-wide cluster's row tile is one pass over the panel. A row tile starting at an odd
/// multiple of 8 begins with an 8-column (256-bit) vector at its own diagonal, then full
/// vectors: the 8 columns left of it, below the diagonal, are not computed (12.5 % fewer
/// lane products for 48 or 64 columns; on cores that run a 512-bit multiply-add as two
/// 256-bit halves, fewer cycles). So it updates every `c[i][j]` with `j ≥ 8·⌊i/8⌋`, a subset
/// of the other paths' entries that holds every `j ≥ i`.
///
/// # Safety
/// AVX-512F must be present and the bounds of [`syrk_block`] hold.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn syrk_block_avx512(panel: &[f32], ps: usize, kp: usize, k: usize, c: &mut [f64]) {
    // Calls `syrk_tile_avx512::<R, V, $head>` for run-time `r` (1..=8 rows) and `nv`
    // vectors, `V` being `$hi`, `$mid`, or `$lo` for any other `nv`.
    macro_rules! by_shape {
        ($head:literal, $r:expr, $nv:expr, $hi:literal, $mid:literal, $lo:literal, $args:tt) => {
            by_shape!(@rows $head, $r, $nv, $hi, $mid, $lo, $args, 8, 7, 6, 5, 4, 3, 2, 1)
        };
        (@rows $head:literal, $r:expr, $nv:expr, $hi:literal, $mid:literal, $lo:literal,
         $args:tt, $($rr:literal),*) => {
            match ($r, $nv) {
                $(
                    ($rr, $hi) => syrk_tile_avx512::<$rr, $hi, $head> $args,
                    ($rr, $mid) => syrk_tile_avx512::<$rr, $mid, $head> $args,
                    ($rr, _) => syrk_tile_avx512::<$rr, $lo, $head> $args,
                )*
                _ => {}
            }
        };
    }
    let mut i0 = 0;
    while i0 < k {
        let r = TR512.min(k - i0);
        let mut j0 = i0 / TC * TC;
        if i0 % TC == TR512 {
            j0 = i0;
            let nv = ((kp - j0 - TR512) / TC).min(2);
            by_shape!(true, r, nv, 2, 1, 0, (panel, ps, kp, i0, j0, c));
            j0 += TR512 + nv * TC;
        }
        while j0 < kp {
            let nv = ((kp - j0) / TC).min(3);
            by_shape!(false, r, nv, 3, 2, 1, (panel, ps, kp, i0, j0, c));
            j0 += nv * TC;
        }
        i0 += TR512;
    }
}

/// One AVX-512 tile: rows `i0..i0 + R`, columns `j0..j0 + w + 16·V`, summed over [`BLOCK`]
/// panel rows in `f32`, then added to `c` in `f64`. With `HEAD`, the first `w = 8` columns
/// are one 256-bit vector (`w = 0` without); every entry is summed in the same order with the
/// same fused multiply-adds as the other paths.
///
/// # Safety
/// AVX-512F must be present; `i0 + R ≤ kp`, `j0 + w + 16·V ≤ kp`, and `panel`, `c` as
/// checked by [`syrk_block`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn syrk_tile_avx512<const R: usize, const V: usize, const HEAD: bool>(
    panel: &[f32],
    ps: usize,
    kp: usize,
    i0: usize,
    j0: usize,
    c: &mut [f64],
) {
    use std::arch::x86_64::*;
    let w = if HEAD { TR512 } else { 0 };
    let p = panel.as_ptr();
    let mut head = [_mm256_setzero_ps(); R];
    let mut acc = [[_mm512_setzero_ps(); V]; R];
    for s in 0..BLOCK {
        let row = p.add(s * ps);
        let u = if HEAD {
            _mm256_loadu_ps(row.add(j0))
        } else {
            _mm256_setzero_ps()
        };
        let mut v = [_mm512_setzero_ps(); V];
        for (h, x) in v.iter_mut().enumerate() {
            *x = _mm512_loadu_ps(row.add(j0 + w + TC * h));
        }
        for q in 0..R {
            let b = _mm512_set1_ps(*row.add(i0 + q));
            if HEAD {
                head[q] = _mm256_fmadd_ps(_mm512_castps512_ps256(b), u, head[q]);
            }
            for h in 0..V {
                acc[q][h] = _mm512_fmadd_ps(b, v[h], acc[q][h]);
            }
        }
    }
    let cp = c.as_mut_ptr();
    for q in 0..R {
        let d = cp.add((i0 + q) * kp + j0);
        if HEAD {
            _mm512_storeu_pd(
                d,
                _mm512_add_pd(_mm512_loadu_pd(d), _mm512_cvtps_pd(head[q])),
            );
        }
        for (h, v) in acc[q].iter().enumerate() {
            let lo = _mm512_cvtps_pd(_mm512_castps512_ps256(*v));
            let hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(
                _mm512_castps_pd(*v),
            )));
            let e = d.add(w + TC * h);
            _mm512_storeu_pd(e, _mm512_add_pd(_mm512_loadu_pd(e), lo));
            _mm512_storeu_pd(e.add(8), _mm512_add_pd(_mm512_loadu_pd(e.add(8)), hi));
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn syrk_tile_avx2<const R: usize>(
    panel: &[f32],
    ps: usize,
    kp: usize,
    i0: usize,
    j0: usize,
    c: &mut [f64],
) {
    use std::arch::x86_64::*;
    let p = panel.as_ptr();
    let mut acc = [[_mm256_setzero_ps(); 2]; R];
    for s in 0..BLOCK {
        let row = p.add(s * ps);
        let v0 = _mm256_loadu_ps(row.add(j0));
        let v1 = _mm256_loadu_ps(row.add(j0 + 8));
        for (q, a) in acc.iter_mut().enumerate() {
            let b = _mm256_broadcast_ss(&*row.add(i0 + q));
            a[0] = _mm256_fmadd_ps(b, v0, a[0]);
            a[1] = _mm256_fmadd_ps(b, v1, a[1]);
        }
    }
    let cp = c.as_mut_ptr();
    for (q, a) in acc.iter().enumerate() {
        let crow = cp.add((i0 + q) * kp + j0);
        for (h, v) in a.iter().enumerate() {
            let lo = _mm256_cvtps_pd(_mm256_castps256_ps128(*v));
            let hi = _mm256_cvtps_pd(_mm256_extractf128_ps(*v, 1));
            let d = crow.add(8 * h);
            _mm256_storeu_pd(d, _mm256_add_pd(_mm256_loadu_pd(d), lo));
            _mm256_storeu_pd(d.add(4), _mm256_add_pd(_mm256_loadu_pd(d.add(4)), hi));
        }
    }
}

/// Reads one value of every cache line of `data`, in order, so a block about to be read
/// column group by column group comes from memory as one sequential stream (what the
/// hardware prefetchers follow best). Measured on an AMD EPYC (Zen 4) VM, 8 clusters of 48
/// in 384 channels, one core, data from memory: the covariance 16.2 → 11.3–12.0 ms per
/// 30 000 rows (prefetch instructions over the same lines: 13.5 ms; reading the next block
/// instead of this one: 14.5 ms), the transform 133–158 → 105–120 ms per 10 such chunks.
pub(crate) fn touch_lines(data: &[f32]) {
    let mut acc = [0u32; 4];
    for (i, line) in data.chunks(16).enumerate() {
        acc[i % 4] ^= line[0].to_bits();
    }
    std::hint::black_box(acc);
}

/// `y[r][j] = Σ_{a<k} x[r][a]·m[a][j]` for `j < kp` and the `rows` rows of `x` (row stride
/// `xs`) and `y` (row stride `ys`); `m` is `kp × kp` (rows past `k` unused, padded columns
/// zero). Does nothing if a slice is too short.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_rows(
    x: &[f32],
    xs: usize,
    m: &[f32],
    y: &mut [f32],
    ys: usize,
    rows: usize,
    kp: usize,
    k: usize,
) {
    let short = |len: usize, stride: usize, width: usize| {
        rows > 0 && (stride < width || len < (rows - 1) * stride + width)
    };
    if !kp.is_multiple_of(TC)
        || k > kp
        || short(x.len(), xs, k)
        || short(y.len(), ys, kp)
        || m.len() < kp * kp
    {
        return;
    }
    let avx = has_avx2_fma();
    let mut r0 = 0;
    while r0 < rows {
        let r = TR.min(rows - r0);
        let mut j0 = 0;
        while j0 < kp {
            #[cfg(target_arch = "x86_64")]
            if avx {
                // SAFETY: AVX2 and FMA are present; rows `r0 + r ≤ rows`, columns
                // `j0 + 16 ≤ kp`, contraction `a < k ≤ kp`: all inside the checked slices.
                unsafe {
                    match r {
                        6 => gemm_tile_avx2::<6>(x, xs, m, y, ys, kp, k, r0, j0),
                        5 => gemm_tile_avx2::<5>(x, xs, m, y, ys, kp, k, r0, j0),
                        4 => gemm_tile_avx2::<4>(x, xs, m, y, ys, kp, k, r0, j0),
                        3 => gemm_tile_avx2::<3>(x, xs, m, y, ys, kp, k, r0, j0),
                        2 => gemm_tile_avx2::<2>(x, xs, m, y, ys, kp, k, r0, j0),
                        _ => gemm_tile_avx2::<1>(x, xs, m, y, ys, kp, k, r0, j0),
                    }
                }
                j0 += TC;
                continue;
            }
            let _ = avx;
            gemm_tile_portable(x, xs, m, y, ys, kp, k, r0, r, j0);
            j0 += TC;
        }
        r0 += TR;
    }
}

#[allow(clippy::too_many_arguments)]
fn gemm_tile_portable(
    x: &[f32],
    xs: usize,
    m: &[f32],
    y: &mut [f32],
    ys: usize,
    kp: usize,
    k: usize,
    r0: usize,
    r: usize,
    j0: usize,
) {
    let mut acc = [[0f32; TC]; TR];
    for a in 0..k {
        let mv = &m[a * kp + j0..a * kp + j0 + TC];
        for (q, acc_q) in acc.iter_mut().enumerate().take(r) {
            let b = x[(r0 + q) * xs + a];
            for t in 0..TC {
                acc_q[t] += b * mv[t];
            }
        }
    }
    for (q, acc_q) in acc.iter().enumerate().take(r) {
        y[(r0 + q) * ys + j0..(r0 + q) * ys + j0 + TC].copy_from_slice(acc_q);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_tile_avx2<const R: usize>(
    x: &[f32],
    xs: usize,
    m: &[f32],
    y: &mut [f32],
    ys: usize,
    kp: usize,
    k: usize,
    r0: usize,
    j0: usize,
) {
    use std::arch::x86_64::*;
    let xp = x.as_ptr().add(r0 * xs);
    let mp = m.as_ptr().add(j0);
    let mut acc = [[_mm256_setzero_ps(); 2]; R];
    for a in 0..k {
        let mrow = mp.add(a * kp);
        let v0 = _mm256_loadu_ps(mrow);
        let v1 = _mm256_loadu_ps(mrow.add(8));
        for (q, acc_q) in acc.iter_mut().enumerate() {
            let b = _mm256_broadcast_ss(&*xp.add(q * xs + a));
            acc_q[0] = _mm256_fmadd_ps(b, v0, acc_q[0]);
            acc_q[1] = _mm256_fmadd_ps(b, v1, acc_q[1]);
        }
    }
    let yp = y.as_mut_ptr().add(r0 * ys + j0);
    for (q, acc_q) in acc.iter().enumerate() {
        _mm256_storeu_ps(yp.add(q * ys), acc_q[0]);
        _mm256_storeu_ps(yp.add(q * ys + 8), acc_q[1]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn panel(rows: usize, kp: usize, k: usize, seed: u32) -> Vec<f32> {
        let mut s = seed;
        let mut p = vec![0f32; rows * kp];
        for r in 0..rows {
            for a in 0..k {
                s = s.wrapping_mul(1664525).wrapping_add(1013904223);
                p[r * kp + a] = (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5;
            }
        }
        p
    }

    #[test]
    fn syrk_paths_agree_bit_for_bit() {
        for k in [1usize, 5, 8, 9, 16, 17, 33, 48, 50, 64] {
            let kp = k.div_ceil(TC) * TC;
            let ps = kp + 16;
            let p = panel(BLOCK, ps, k, 7 + k as u32);
            // Only the entries right of each 8-row tile's start are defined on every path
            // (row tiles of 6 and 16-aligned tiles also write some left of it).
            let tiles = |c: &[f64]| -> Vec<f64> {
                (0..kp)
                    .flat_map(|i| (i / 8 * 8..kp).map(move |j| (i, j)))
                    .map(|(i, j)| c[i * kp + j])
                    .collect()
            };
            // Fused multiply-adds in the same order: AVX-512 and AVX2 agree exactly.
            let mut want = vec![0.25f64; kp * kp];
            syrk_block_narrow(&p, ps, kp, k, &mut want, has_avx2_fma());
            let mut got = vec![0.25f64; kp * kp];
            syrk_block(&p, ps, kp, k, &mut got);
            assert_eq!(tiles(&got), tiles(&want), "dispatched path, k {k}");
            // The portable path rounds each product, so it agrees within the block bound.
            let mut port = vec![0.25f64; kp * kp];
            syrk_block_narrow(&p, ps, kp, k, &mut port, false);
            for (a, b) in tiles(&port).iter().zip(tiles(&want)) {
                assert!((a - b).abs() <= 1e-5, "portable path, k {k}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn syrk_matches_f64_on_every_upper_entry() {
        for k in [1usize, 5, 6, 7, 16, 17, 48, 50] {
            let kp = k.div_ceil(TC) * TC;
            let p = panel(BLOCK, kp, k, k as u32);
            let mut c = vec![0f64; kp * kp];
            syrk_block(&p, kp, kp, k, &mut c);
            for i in 0..k {
                for j in i..k {
                    let want: f64 = (0..BLOCK)
                        .map(|s| p[s * kp + i] as f64 * p[s * kp + j] as f64)
                        .sum();
                    let scale: f64 = (0..BLOCK)
                        .map(|s| (p[s * kp + i] as f64 * p[s * kp + j] as f64).abs())
                        .sum();
                    assert!(
                        (c[i * kp + j] - want).abs() <= 1e-6 * scale + 1e-30,
                        "k {k} ({i},{j}): {} vs {want}",
                        c[i * kp + j]
                    );
                }
            }
        }
    }

    #[test]
    fn gemm_matches_f64() {
        for (rows, k) in [(1usize, 1usize), (7, 5), (13, 48), (6, 16)] {
            let kp = k.div_ceil(TC) * TC;
            let x = panel(rows, kp, k, 3);
            let m = panel(kp, kp, k, 9);
            let mut y = vec![0f32; rows * kp];
            gemm_rows(&x, kp, &m, &mut y, kp, rows, kp, k);
            for r in 0..rows {
                for j in 0..k {
                    let want: f64 = (0..k)
                        .map(|a| x[r * kp + a] as f64 * m[a * kp + j] as f64)
                        .sum();
                    assert!((y[r * kp + j] as f64 - want).abs() < 1e-5, "({r},{j})");
                }
            }
        }
    }
}

#[cfg(test)]
mod perf {
    use super::*;
    use crate::engine::prefetch_rows;
    use std::time::Instant;

    /// Minimum wall time of `reps` runs of `f`, in seconds (the least disturbed run on a
    /// shared machine).
    fn best(reps: usize, mut f: impl FnMut()) -> f64 {
        (0..reps)
            .map(|_| {
                let t0 = Instant::now();
                f();
                t0.elapsed().as_secs_f64()
            })
            .fold(f64::MAX, f64::min)
    }

    /// `cargo test --release --lib lrr::kernels::perf -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn perf_kernels() {
        let kp = 48;
        let rows = 30_000;
        let panel: Vec<f32> = (0..rows * kp).map(|i| (i % 97) as f32 * 0.01).collect();
        let mut c = vec![0f64; kp * kp];
        let dt = best(7, || {
            for b in 0..rows / BLOCK {
                syrk_block(&panel[b * BLOCK * kp..], kp, kp, 48, &mut c);
            }
            std::hint::black_box(&mut c);
        });
        let fma = (rows * 48 * 49 / 2) as f64;
        println!(
            "syrk 48, packed: {:.2} ms per cluster-chunk, {:.1} GFMA/s (useful)",
            dt * 1e3,
            fma / dt / 1e9
        );
        let nc = 384;
        let big: Vec<f32> = (0..rows * nc).map(|i| (i % 89) as f32 * 0.01).collect();
        let mut cs = vec![vec![0f64; kp * kp]; 8];
        let dt = best(7, || {
            for b in 0..rows / BLOCK {
                for (g, c) in cs.iter_mut().enumerate() {
                    prefetch_rows(&big, (b + 1) * BLOCK * nc + 48 * g, nc, BLOCK, 48, false);
                    syrk_block(&big[b * BLOCK * nc + 48 * g..], nc, kp, 48, c);
                }
            }
            std::hint::black_box(&mut cs);
        });
        println!(
            "syrk in place, 8 clusters of 48 in 384 channels: {:.2} ms per chunk, {:.1} GFMA/s",
            dt * 1e3,
            8.0 * fma / dt / 1e9
        );
        let dt = best(7, || {
            for b in 0..rows / BLOCK {
                touch_lines(&big[b * BLOCK * nc..(b + 1) * BLOCK * nc]);
                for (g, c) in cs.iter_mut().enumerate() {
                    syrk_block(&big[b * BLOCK * nc + 48 * g..], nc, kp, 48, c);
                }
            }
            std::hint::black_box(&mut cs);
        });
        println!(
            "syrk in place, each block's lines read first (as `accumulate_rows`): {:.2} ms per chunk",
            dt * 1e3
        );
        let small = 2000;
        let dt = best(7, || {
            for _ in 0..15 {
                for b in 0..small / BLOCK {
                    for (g, c) in cs.iter_mut().enumerate() {
                        syrk_block(&big[b * BLOCK * nc + 48 * g..], nc, kp, 48, c);
                    }
                }
            }
            std::hint::black_box(&mut cs);
        });
        println!(
            "syrk in place, cache-resident 2000 rows × 15: {:.2} ms per chunk-equivalent",
            dt * 1e3 * 30_000.0 / (15.0 * (small / BLOCK * BLOCK) as f64)
        );
        let m: Vec<f32> = (0..kp * kp).map(|i| (i % 13) as f32 * 0.01).collect();
        let mut y = vec![0f32; rows * nc];
        let dt = best(7, || {
            for b in 0..rows / 96 {
                touch_lines(&big[b * 96 * nc..(b + 1) * 96 * nc]);
                for g in 0..8 {
                    prefetch_rows(&y, (b + 1) * 96 * nc + 48 * g, nc, 96, 48, true);
                    gemm_rows(
                        &big[b * 96 * nc + 48 * g..],
                        nc,
                        &m,
                        &mut y[b * 96 * nc + 48 * g..],
                        nc,
                        96,
                        kp,
                        48,
                    );
                }
            }
            std::hint::black_box(&mut y);
        });
        let fma = (rows / 96 * 96 * 8 * 48 * 48) as f64;
        println!(
            "gemm in place, 8 clusters of 48 (as `transform_rows`): {:.2} ms per chunk, {:.1} GFMA/s",
            dt * 1e3,
            fma / dt / 1e9
        );
    }
}
