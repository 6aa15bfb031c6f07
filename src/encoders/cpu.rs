//! The CPU engine of the spike encoders.
//!
//! Rate draws Philox for eight counters at once (32 features per batch of lanes; the lane
//! loops vectorise, with AVX2 when the CPU has it) and splits large calls over the cores by
//! contiguous ranges of the output. Latency writes the output in blocks of elements so each
//! time step's row segment is written once, sequentially.

use super::{AngleParams, LatencyParams, RateParams, ShiftPlan};

/// Per-encoder scratch, reused across calls so steady-state calls allocate nothing but
/// their output.
#[derive(Debug, Default)]
pub(crate) struct Scratch {
    /// Rate thresholds, one per input element.
    pub thresholds: Vec<u64>,
    /// Latency spike times, one per input element.
    pub times: Vec<u32>,
    /// Rate thresholds in the AVX2 kernel's block layout.
    #[cfg(target_arch = "x86_64")]
    pub blocks: Vec<x86::Block>,
}

const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

/// Counters per Philox batch (each gives 4 words: 4 features).
const LANES: usize = 8;
/// Features per Philox batch.
const FEAT: usize = 4 * LANES;

/// Philox4x32-10 on `LANES` counters `(c0[l], c1, c2, c3)` (bit-identical to
/// [`crate::rng::philox4x32_10`] lane by lane).
#[inline(always)]
fn philox_lanes(c0: &[u32; LANES], c1: u32, c2: u32, c3: u32, key: [u32; 2]) -> [[u32; LANES]; 4] {
    let mut x0 = *c0;
    let mut x1 = [c1; LANES];
    let mut x2 = [c2; LANES];
    let mut x3 = [c3; LANES];
    let (mut k0, mut k1) = (key[0], key[1]);
    for round in 0..10 {
        if round > 0 {
            k0 = k0.wrapping_add(W0);
            k1 = k1.wrapping_add(W1);
        }
        for l in 0..LANES {
            let p0 = M0 as u64 * x0[l] as u64;
            let p1 = M1 as u64 * x2[l] as u64;
            let n0 = ((p1 >> 32) as u32) ^ x1[l] ^ k0;
            let n2 = ((p0 >> 32) as u32) ^ x3[l] ^ k1;
            x1[l] = p1 as u32;
            x3[l] = p0 as u32;
            x0[l] = n0;
            x2[l] = n2;
        }
    }
    [x0, x1, x2, x3]
}

/// 1 when `word < thr` (both below 2³³), else 0.
#[inline(always)]
fn below(word: u32, thr: u64) -> u8 {
    ((word as u64).wrapping_sub(thr) >> 63) as u8
}

/// The spikes of one (sample `s`, step `t`) row of features with thresholds `thr`: writes
/// `out[f] = spike` (`PACK = false`) or `out[f] |= spike << sh`.
#[inline(always)]
fn rate_row<const PACK: bool>(key: [u32; 2], s: u64, t: u32, thr: &[u64], out: &mut [u8], sh: u32) {
    let (c2, c3) = (s as u32, (s >> 32) as u32);
    let mut g0 = 0u32;
    let mut th_chunks = thr.chunks_exact(FEAT);
    let mut out_chunks = out.chunks_exact_mut(FEAT);
    for (th, o) in (&mut th_chunks).zip(&mut out_chunks) {
        let c0: [u32; LANES] = std::array::from_fn(|l| g0 + l as u32);
        let r = philox_lanes(&c0, t, c2, c3, key);
        for l in 0..LANES {
            for i in 0..4 {
                let bit = below(r[i][l], th[4 * l + i]);
                if PACK {
                    o[4 * l + i] |= bit << sh;
                } else {
                    o[4 * l + i] = bit;
                }
            }
        }
        g0 += LANES as u32;
    }
    let th = th_chunks.remainder();
    let o = out_chunks.into_remainder();
    if !th.is_empty() {
        let c0: [u32; LANES] = std::array::from_fn(|l| g0 + l as u32);
        let r = philox_lanes(&c0, t, c2, c3, key);
        for (f, (o, &th)) in o.iter_mut().zip(th).enumerate() {
            let bit = below(r[f % 4][f / 4], th);
            if PACK {
                *o |= bit << sh;
            } else {
                *o = bit;
            }
        }
    }
}

/// Rate spikes of outer slices `o0 ..` (each `slice` bytes of `out`): the portable kernel.
#[allow(clippy::too_many_arguments)]
fn rate_part(
    p: &RateParams,
    thr: &[u64],
    b: usize,
    f: usize,
    first: u64,
    o0: usize,
    out: &mut [u8],
    slice: usize,
) {
    let t_n = p.steps as usize;
    let t_out = if p.packed { t_n.div_ceil(8) } else { t_n };
    for (k, sl) in out.chunks_exact_mut(slice).enumerate() {
        let o = o0 + k;
        // (sample, time-or-byte) of each row of this slice.
        let rows = if p.time_major { b } else { t_out };
        for r in 0..rows {
            let (bi, q) = if p.time_major { (r, o) } else { (o, r) };
            let th = &thr[bi * f..(bi + 1) * f];
            let row = &mut sl[r * f..(r + 1) * f];
            let s = first + bi as u64;
            if p.packed {
                row.fill(0);
                for k in 0..8 {
                    let t = 8 * q + k;
                    if t < t_n {
                        rate_row::<true>(p.key, s, t as u32, th, row, 7 - k as u32);
                    }
                }
            } else {
                rate_row::<false>(p.key, s, q as u32, th, row, 0);
            }
        }
    }
}

/// Worker threads for `work` units of roughly equal cost (1 below ~1M units).
fn threads_for(work: usize, outer: usize) -> usize {
    let cores = crate::engine::worker_threads();
    (work / (1 << 20)).clamp(1, cores).min(outer.max(1))
}

/// Runs `f(o0, part)` over contiguous parts of `out` made of whole `slice`-byte slices, on
/// up to `n` threads of the engine's worker pool.
fn split_slices(out: &mut [u8], slice: usize, n: usize, f: impl Fn(usize, &mut [u8]) + Sync) {
    let outer = out.len().checked_div(slice).unwrap_or(0);
    if n <= 1 || outer <= 1 {
        f(0, out);
        return;
    }
    let per = outer.div_ceil(n);
    crate::engine::par_pieces(out, per * slice, |i, part| f(i * per, part));
}

/// Rate-encodes `x` (`b` rows of `f` features, finite) as samples `first ..` into `out`
/// (the full output layout of `p`).
pub(crate) fn rate(
    p: &RateParams,
    x: &[f32],
    b: usize,
    f: usize,
    first: u64,
    out: &mut [u8],
    s: &mut Scratch,
) {
    if out.is_empty() {
        return;
    }
    let t_n = p.steps as usize;
    let t_out = if p.packed { t_n.div_ceil(8) } else { t_n };
    let (outer, slice) = if p.time_major {
        (t_out, b * f)
    } else {
        (b, t_out * f)
    };
    let n = threads_for(b * f * t_n, outer);
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            x86::prepare(p, x, f, &mut s.blocks);
            let blocks = &s.blocks;
            split_slices(out, slice, n, |o0, part| {
                // SAFETY: the CPU supports AVX2 (checked just above).
                unsafe { x86::rate_part(p, blocks, b, f, first, o0, part, slice) }
            });
            return;
        }
    }
    s.thresholds.clear();
    s.thresholds.extend(x.iter().map(|&v| p.threshold(v)));
    let thr = &s.thresholds;
    split_slices(out, slice, n, |o0, part| {
        rate_part(p, thr, b, f, first, o0, part, slice)
    });
}

/// The AVX2 rate kernel: eight Philox counters per vector.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{RateParams, M0, M1, W0, W1};

    /// Features per block (8 counters × 4 words).
    pub const BLOCK: usize = 32;

    /// Thresholds of one 32-feature block, transposed to the Philox output layout: vector `i`
    /// (of 8 lanes) holds word `i` of each lane's counter, i.e. features `4l + i`. The first
    /// four vectors hold `thr ^ 2³¹` (for a signed compare; 0 never fires), the last four
    /// the "always fires" masks (`thr = 2³²`).
    pub type Block = [i32; 64];

    /// The blocks of every row of `x` (rows of `f` features), into `out`.
    pub fn prepare(p: &RateParams, x: &[f32], f: usize, out: &mut Vec<Block>) {
        let nblk = f.div_ceil(BLOCK);
        out.clear();
        if f == 0 {
            return;
        }
        for row in x.chunks_exact(f) {
            for k in 0..nblk {
                let mut blk = [0i32; 64];
                for l in 0..8 {
                    for i in 0..4 {
                        let fi = k * BLOCK + 4 * l + i;
                        let thr = if fi < f { p.threshold(row[fi]) } else { 0 };
                        if thr >= 1 << 32 {
                            blk[32 + 8 * i + l] = -1;
                        } else {
                            blk[8 * i + l] = (thr as u32 ^ 0x8000_0000) as i32;
                        }
                    }
                }
                out.push(blk);
            }
        }
    }

    /// `(hi, lo)` of the 32×32 products of `m` (a broadcast constant) with each lane of `b`.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn mulhilo(m: __m256i, b: __m256i) -> (__m256i, __m256i) {
        let even = _mm256_mul_epu32(m, b);
        let odd = _mm256_mul_epu32(m, _mm256_srli_epi64::<32>(b));
        let hi = _mm256_blend_epi32::<0xAA>(_mm256_srli_epi64::<32>(even), odd);
        let lo = _mm256_blend_epi32::<0xAA>(even, _mm256_slli_epi64::<32>(odd));
        (hi, lo)
    }

    /// Philox4x32-10 of the 8 counters `(c0 + lane, c1, c2, c3)`.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn philox(
        c0: __m256i,
        c1: u32,
        c2: u32,
        c3: u32,
        keys: &[[i32; 2]; 10],
    ) -> [__m256i; 4] {
        let m0 = _mm256_set1_epi32(M0 as i32);
        let m1 = _mm256_set1_epi32(M1 as i32);
        let mut x0 = c0;
        let mut x1 = _mm256_set1_epi32(c1 as i32);
        let mut x2 = _mm256_set1_epi32(c2 as i32);
        let mut x3 = _mm256_set1_epi32(c3 as i32);
        for k in keys {
            let (hi0, lo0) = mulhilo(m0, x0);
            let (hi1, lo1) = mulhilo(m1, x2);
            let k0 = _mm256_set1_epi32(k[0]);
            let k1 = _mm256_set1_epi32(k[1]);
            x0 = _mm256_xor_si256(_mm256_xor_si256(hi1, x1), k0);
            x2 = _mm256_xor_si256(_mm256_xor_si256(hi0, x3), k1);
            x1 = lo1;
            x3 = lo0;
        }
        [x0, x1, x2, x3]
    }

    /// The spike bytes (0/1) of a block for draw `r`, in output order (feature 4l + i is
    /// byte i of lane l).
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn spikes(r: &[__m256i; 4], blk: &Block) -> __m256i {
        let sign = _mm256_set1_epi32(i32::MIN);
        let p = blk.as_ptr() as *const __m256i;
        let mut v = _mm256_setzero_si256();
        for (i, ri) in r.iter().enumerate() {
            let tb = _mm256_loadu_si256(p.add(i));
            let al = _mm256_loadu_si256(p.add(4 + i));
            let m = _mm256_or_si256(_mm256_cmpgt_epi32(tb, _mm256_xor_si256(*ri, sign)), al);
            v = _mm256_or_si256(v, _mm256_and_si256(m, _mm256_set1_epi32(1 << (8 * i))));
        }
        v
    }

    /// Rate spikes of outer slices `o0 ..` (each `slice` bytes of `out`), from the blocks of
    /// [`prepare`]. Rows are visited sample by sample so a sample's blocks stay in L1.
    #[target_feature(enable = "avx2")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn rate_part(
        p: &RateParams,
        blocks: &[Block],
        b_n: usize,
        f: usize,
        first: u64,
        o0: usize,
        out: &mut [u8],
        slice: usize,
    ) {
        let t_n = p.steps as usize;
        let t_out = if p.packed { t_n.div_ceil(8) } else { t_n };
        let nblk = f.div_ceil(BLOCK);
        let n_outer = out.len() / slice;
        let mut keys = [[0i32; 2]; 10];
        let (mut k0, mut k1) = (p.key[0], p.key[1]);
        for (r, k) in keys.iter_mut().enumerate() {
            if r > 0 {
                k0 = k0.wrapping_add(W0);
                k1 = k1.wrapping_add(W1);
            }
            *k = [k0 as i32, k1 as i32];
        }
        let (bs, qs) = if p.time_major {
            (0..b_n, o0..o0 + n_outer)
        } else {
            (o0..o0 + n_outer, 0..t_out)
        };
        let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        for b in bs {
            let s = first + b as u64;
            let (c2, c3) = (s as u32, (s >> 32) as u32);
            let row_blocks = &blocks[b * nblk..(b + 1) * nblk];
            for q in qs.clone() {
                let at = if p.time_major {
                    ((q - o0) * b_n + b) * f
                } else {
                    ((b - o0) * t_out + q) * f
                };
                let row = &mut out[at..at + f];
                for (k, blk) in row_blocks.iter().enumerate() {
                    let c0 = _mm256_add_epi32(lanes, _mm256_set1_epi32((8 * k) as i32));
                    let v = if p.packed {
                        let mut acc = _mm256_setzero_si256();
                        let t0 = 8 * q;
                        for j in 0..(t_n - t0).min(8) {
                            let r = philox(c0, (t0 + j) as u32, c2, c3, &keys);
                            let bits = spikes(&r, blk);
                            let sh = _mm_cvtsi32_si128(7 - j as i32);
                            acc = _mm256_or_si256(acc, _mm256_sll_epi32(bits, sh));
                        }
                        acc
                    } else {
                        let r = philox(c0, q as u32, c2, c3, &keys);
                        spikes(&r, blk)
                    };
                    let f0 = k * BLOCK;
                    if f0 + BLOCK <= f {
                        _mm256_storeu_si256(row.as_mut_ptr().add(f0) as *mut __m256i, v);
                    } else {
                        let mut tmp = [0u8; BLOCK];
                        _mm256_storeu_si256(tmp.as_mut_ptr() as *mut __m256i, v);
                        row[f0..].copy_from_slice(&tmp[..f - f0]);
                    }
                }
            }
        }
    }
}

/// Spike times of `x` (or [`SILENT`]); `Err(i)` names the first non-finite element.
pub(crate) fn latency_times(
    p: &LatencyParams,
    x: &[f32],
    times: &mut Vec<u32>,
) -> std::result::Result<(), usize> {
    const EXP: u32 = 0x7f80_0000;
    times.clear();
    let mut bad = false;
    times.extend(x.iter().map(|&v| {
        bad |= (v.to_bits() & EXP) == EXP;
        p.time(v)
    }));
    if bad {
        return Err(x.iter().position(|v| !v.is_finite()).unwrap_or(0));
    }
    Ok(())
}

/// Elements per block of the latency fill.
const BLOCK: usize = 4096;

#[inline(always)]
fn latency_part(times: &[u32], q0: usize, packed: bool, out: &mut [u8]) {
    let e_n = times.len();
    let rows = out.len() / e_n;
    for e0 in (0..e_n).step_by(BLOCK) {
        let e1 = (e0 + BLOCK).min(e_n);
        let ts = &times[e0..e1];
        for r in 0..rows {
            let q = (q0 + r) as u32;
            let row = &mut out[r * e_n + e0..r * e_n + e1];
            if packed {
                for (o, &t) in row.iter_mut().zip(ts) {
                    *o = if t >> 3 == q { 0x80u8 >> (t & 7) } else { 0 };
                }
            } else {
                for (o, &t) in row.iter_mut().zip(ts) {
                    *o = (t == q) as u8;
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn latency_part_avx2(times: &[u32], q0: usize, packed: bool, out: &mut [u8]) {
    latency_part(times, q0, packed, out)
}

fn latency_part_best(times: &[u32], q0: usize, packed: bool, out: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            return unsafe { latency_part_avx2(times, q0, packed, out) };
        }
    }
    latency_part(times, q0, packed, out)
}

/// Writes the `(t_out, E)` latency output of spike times `times`.
pub(crate) fn latency_fill(times: &[u32], t_out: usize, packed: bool, out: &mut [u8]) {
    let e_n = times.len();
    if e_n == 0 || t_out == 0 {
        return;
    }
    let n = threads_for(out.len() / 2, t_out);
    split_slices(out, e_n, n, |q0, part| {
        latency_part_best(times, q0, packed, part)
    });
}

/// One-hot angle codes of `x` (finite) into `out` (`(len, n)`).
pub(crate) fn angle(p: &AngleParams, x: &[f32], out: &mut [u8]) {
    for (row, &v) in out.chunks_exact_mut(p.n).zip(x) {
        row.fill(0);
        row[p.index(v)] = 1;
    }
}

/// Rolls `x` (standard layout) by the plan's shifts.
pub(crate) fn shift<T: bytemuck::Pod>(plan: &ShiftPlan, x: &[T]) -> Vec<T> {
    if x.is_empty() || plan.dims.is_empty() {
        return x.to_vec();
    }
    let mut out = vec![T::zeroed(); x.len()];
    let dims = &plan.dims;
    let r = dims.len();
    let strides = plan.strides();
    let last = dims[r - 1];
    let rows = x.len() / last;
    let mut idx = vec![0usize; r - 1];
    for row in 0..rows {
        let set = if plan.per_sample {
            idx.first().copied().unwrap_or(row)
        } else {
            0
        };
        let sh = |d: usize, c: usize| -> usize {
            match plan.slots[d] {
                Some(slot) => {
                    let s = plan.shifts[set * plan.n_axes + slot];
                    if c >= s {
                        c - s
                    } else {
                        c + dims[d] - s
                    }
                }
                None => c,
            }
        };
        let mut src = 0;
        for (d, &c) in idx.iter().enumerate() {
            src += sh(d, c) * strides[d];
        }
        let dst = &mut out[row * last..(row + 1) * last];
        let s_row = &x[src..src + last];
        match plan.slots[r - 1] {
            Some(slot) => {
                let s = plan.shifts[set * plan.n_axes + slot];
                dst[..s].copy_from_slice(&s_row[last - s..]);
                dst[s..].copy_from_slice(&s_row[..last - s]);
            }
            None => dst.copy_from_slice(s_row),
        }
        // Next row's multi-index.
        for d in (0..r - 1).rev() {
            idx[d] += 1;
            if idx[d] < dims[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encoders::round_even_nonneg;
    use crate::rng::philox4x32_10;

    /// The two-addition rounding is `round_ties_even` on non-negative `f32`: every half
    /// `k + ½` below 2²³ with both neighbours, one bit pattern in 61 up to 2²⁵, and 0.
    #[test]
    fn round_even_nonneg_is_round_ties_even() {
        let halves = (0..1u32 << 23).flat_map(|k| {
            let b = (k as f32 + 0.5).to_bits();
            [b - 1, b, b + 1]
        });
        let spread = (0..=33_554_432f32.to_bits()).step_by(61);
        for b in halves.chain(spread).chain([0, 8_388_608f32.to_bits()]) {
            let v = f32::from_bits(b);
            assert_eq!(
                round_even_nonneg(v).to_bits(),
                v.round_ties_even().to_bits(),
                "{v:e}"
            );
        }
    }

    #[test]
    fn lanes_match_the_scalar_generator() {
        let key = [0x1234_5678, 0x9abc_def0];
        let c0: [u32; LANES] = std::array::from_fn(|l| 1000 + 7 * l as u32);
        let r = philox_lanes(&c0, 5, 0xdead_beef, 0x7fff_ffff, key);
        for l in 0..LANES {
            let s = philox4x32_10([c0[l], 5, 0xdead_beef, 0x7fff_ffff], key);
            for i in 0..4 {
                assert_eq!(r[i][l], s[i]);
            }
        }
    }

    /// The portable kernel and the AVX2 kernel write the same bytes (the machine running the
    /// suite may only ever take one of them).
    #[test]
    fn portable_and_avx2_rate_kernels_agree() {
        let mut seed = 0x1234_5678u32;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed
        };
        for (b, f, steps) in [(3usize, 37usize, 11u32), (2, 64, 9), (5, 3, 17), (1, 1, 1)] {
            let x: Vec<f32> = (0..b * f)
                .map(|i| match i % 7 {
                    0 => 0.0,
                    1 => 1.5,
                    _ => (next() >> 8) as f32 / 16_777_216.0,
                })
                .collect();
            for time_major in [false, true] {
                for packed in [false, true] {
                    let p = RateParams {
                        steps,
                        max_r: 0.8,
                        x_cap: 2.0,
                        key: [7, 9],
                        time_major,
                        packed,
                    };
                    let t_out = if packed { steps.div_ceil(8) } else { steps } as usize;
                    let slice = if time_major { b * f } else { t_out * f };
                    let thr: Vec<u64> = x.iter().map(|&v| p.threshold(v)).collect();
                    let mut want = vec![0u8; b * f * t_out];
                    rate_part(&p, &thr, b, f, 1 << 33, 0, &mut want, slice);
                    let mut s = Scratch::default();
                    let mut got = vec![0xAAu8; b * f * t_out];
                    rate(&p, &x, b, f, 1 << 33, &mut got, &mut s);
                    assert_eq!(got, want, "b {b} f {f} tm {time_major} packed {packed}");
                }
            }
        }
    }

    #[test]
    fn below_is_a_strict_compare() {
        assert_eq!(below(0, 0), 0);
        assert_eq!(below(0, 1), 1);
        assert_eq!(below(u32::MAX, 1 << 32), 1);
        assert_eq!(below(u32::MAX, (1 << 32) - 1), 0);
        assert_eq!(below(5, 5), 0);
    }
}
