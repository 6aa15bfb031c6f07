//! The CPU engine of the max-rate classifier: `f64` state and accumulators, neuron-parallel
//! updates and row-parallel logits on the engine's worker pool (deterministic: each output is summed in
//! the same order whatever the thread count).
//!
//! * Update: for each block of [`UBLK`] neurons and each class, the class's rows (contiguous
//!   runs of the block) are summed into `f64` accumulators that stay in L1, four rows per
//!   pass (`(x₀ + x₁) + (x₂ + x₃)` added to the accumulator: as many additions as one row at
//!   a time, a quarter of the accumulators' loads and stores), so the inputs stream once;
//!   built for AVX-512F, else AVX2, where the CPU has them.
//! * Derived state: proportions, assignment and, per block of [`BLK`] neurons, the block's
//!   neurons sorted by class (a counting sort) with their weights — the regress index.
//! * Regress: [`ROWS`] rows at a time, each block of their inputs is first transposed into an
//!   L1-resident neuron-major tile; then, per class, a gather of the class's neurons loads
//!   each neuron's [`ROWS`] values as one vector (one index load, one widening, one
//!   multiply-add for all the rows, four chains); built for AVX-512F, else AVX2.

use std::cmp::Ordering;

use super::{locate_non_finite, Batch, UpdatePlan};
use crate::error::{Error, Result};

/// Neurons per regress block (local indices fit `u16`; a block's tile of [`ROWS`] rows is
/// 16 KiB of `f32`, in L1 with room to spare: 1024 and 4096 measured slower).
pub(crate) const BLK: usize = 512;
/// Rows per regress tile: a tile holds a block of [`ROWS`] rows neuron-major, so the class
/// gather loads one neuron's values of all its rows as one vector.
const ROWS: usize = 8;
/// Neurons per block in the update (its class sums stay in L1).
const UBLK: usize = 512;
/// Work (input elements) below which a call stays on one thread.
const MIN_PAR_WORK: usize = 1 << 17;

/// Input elements the engine reads: `f32` rows, or `f64` time means.
pub(crate) trait Input: Copy + Send + Sync + Into<f64> {
    /// Zero.
    const ZERO: Self;
    /// The value widened to `f64`.
    fn wide(self) -> f64;
}
impl Input for f32 {
    const ZERO: Self = 0.0;
    #[inline(always)]
    fn wide(self) -> f64 {
        self as f64
    }
}
impl Input for f64 {
    const ZERO: Self = 0.0;
    #[inline(always)]
    fn wide(self) -> f64 {
        self
    }
}

/// Splits `out` into at most `parts` pieces at multiples of `unit` elements and runs `f(first
/// unit index, piece)` on each, on the engine's worker pool when there is more than one.
fn par_chunks<T: Send, R: Send>(
    out: &mut [T],
    unit: usize,
    parts: usize,
    f: impl Fn(usize, &mut [T]) -> R + Sync + Send,
) -> Vec<R> {
    let unit = unit.max(1);
    let units = out.len() / unit;
    let parts = parts.clamp(1, units.max(1));
    if parts == 1 {
        return vec![f(0, out)];
    }
    let per = units.div_ceil(parts);
    crate::engine::par_pieces(out, per * unit, |i, piece| f(i * per, piece))
}

fn parts_for(work: usize) -> usize {
    crate::engine::worker_threads()
        .min(work / MIN_PAR_WORK)
        .max(1)
}

/// `acc[i] += x[i]` widened to `f64` (time means).
pub(crate) fn add_widened(acc: &mut [f64], x: &[f32]) {
    for (a, &v) in acc.iter_mut().zip(x) {
        *a += v as f64;
    }
}

/// The classifier's state on the host.
#[derive(Debug)]
pub(crate) struct CpuClassifier {
    n: usize,
    k: usize,
    rates: Vec<f64>,
    /// The next rates while an update is checked.
    spare: Vec<f64>,
    props: Vec<f64>,
    assign: Vec<u32>,
    occ: Vec<u64>,
    /// Regress index: block `b`'s neurons `[b·BLK, …)` sorted by class (local indices),
    /// their weights (proportion of the assigned class), and `(K + 1)` class offsets per
    /// block (absolute positions in `idx`).
    idx: Vec<u16>,
    widx: Vec<f64>,
    boffs: Vec<u32>,
}

impl CpuClassifier {
    pub fn new(n: usize, k: usize) -> Self {
        let mut c = CpuClassifier {
            n,
            k,
            rates: vec![0.0; n * k],
            spare: Vec::new(),
            props: vec![0.0; n * k],
            assign: vec![0; n],
            occ: vec![0; k],
            idx: vec![0; n],
            widx: vec![0.0; n],
            boffs: vec![0; n.div_ceil(BLK) * (k + 1)],
        };
        c.derive();
        c
    }

    pub fn rates(&self) -> &[f64] {
        &self.rates
    }
    pub fn proportions(&self) -> &[f64] {
        &self.props
    }
    pub fn assignments(&self) -> &[u32] {
        &self.assign
    }
    pub fn occurrences(&self) -> &[u64] {
        &self.occ
    }

    /// Replaces the (validated) rates and recomputes the derived state.
    pub fn set_rates(&mut self, v: &[f64]) {
        self.rates.copy_from_slice(v);
        self.derive();
    }

    /// Regress (with the current state) and/or update, as one call that changes nothing
    /// when it fails.
    pub fn run(
        &mut self,
        x: &Batch<'_>,
        batch: usize,
        regress: bool,
        prop: bool,
        plan: Option<&UpdatePlan>,
    ) -> Result<(Vec<f32>, Vec<usize>)> {
        let out = if regress {
            match x {
                Batch::F32(v) => self.regress(v, batch, prop)?,
                Batch::F64(v) => self.regress(v, batch, prop)?,
            }
        } else {
            (Vec::new(), Vec::new())
        };
        if let Some(plan) = plan {
            match x {
                Batch::F32(v) => self.update(v, plan)?,
                Batch::F64(v) => self.update(v, plan)?,
            }
        }
        Ok(out)
    }

    // ------------------------------------------------------------------------------------
    // Update

    fn update<T: Input>(&mut self, x: &[T], plan: &UpdatePlan) -> Result<()> {
        let (n, k) = (self.n, self.k);
        let mut spare = std::mem::take(&mut self.spare);
        spare.resize(n * k, 0.0);
        let rates = &self.rates;
        let parts = parts_for(x.len());
        let ok = par_chunks(&mut spare, k * UBLK, parts, |g0, out| {
            let u = Update { x, n, k, plan };
            update_range(&u, &rates[g0 * UBLK * k..], out, g0 * UBLK)
        })
        .into_iter()
        .all(|ok| ok);
        if !ok {
            self.spare = spare;
            if let Some(e) = locate_non_finite("inputs", x, n) {
                return Err(e);
            }
            let i = self
                .spare
                .iter()
                .position(|v| !(v.is_finite() && v.abs() <= f32::MAX as f64))
                .unwrap_or(0);
            return Err(Error::NonFinite {
                what: "updated rates overflow f32 (sample = neuron, channel = class)",
                sample: i / k,
                channel: i % k,
                value: self.spare[i],
            });
        }
        self.spare = std::mem::replace(&mut self.rates, spare);
        self.derive();
        Ok(())
    }

    // ------------------------------------------------------------------------------------
    // Derived state

    fn derive(&mut self) {
        let (n, k) = (self.n, self.k);
        let rates = &self.rates;
        let parts = parts_for(n * k * 8);
        // One pass per block of BLK neurons: proportions, assignments, then the block's
        // counting sort by class (the regress index).
        let mut pieces: Vec<Piece<'_>> = self
            .props
            .chunks_mut(BLK * k)
            .zip(self.assign.chunks_mut(BLK))
            .zip(self.idx.chunks_mut(BLK))
            .zip(self.widx.chunks_mut(BLK))
            .zip(self.boffs.chunks_mut(k + 1))
            .map(|((((p, a), i), w), o)| Piece {
                props: p,
                assign: a,
                idx: i,
                widx: w,
                offs: o,
            })
            .collect();
        let per_part = pieces.len().div_ceil(parts);
        let build = |first: usize, chunk: &mut [Piece<'_>]| {
            for (j, piece) in chunk.iter_mut().enumerate() {
                derive_block(rates, k, (first + j) * BLK, piece);
            }
        };
        if parts == 1 {
            build(0, &mut pieces);
        } else {
            crate::engine::par_pieces(&mut pieces, per_part, |p, chunk| build(p * per_part, chunk));
        }
        let mut occ = vec![0u64; k];
        for off in self.boffs.chunks_exact(k + 1) {
            for c in 0..k {
                occ[c] += (off[c + 1] - off[c]) as u64;
            }
        }
        self.occ = occ;
    }

    // ------------------------------------------------------------------------------------
    // Regress

    fn regress<T: Input>(
        &self,
        x: &[T],
        batch: usize,
        prop: bool,
    ) -> Result<(Vec<f32>, Vec<usize>)> {
        let (n, k) = (self.n, self.k);
        let mut acc = vec![0.0f64; batch * k];
        let parts = parts_for(x.len()).min(batch.div_ceil(ROWS));
        par_chunks(&mut acc, k * ROWS, parts, |r0, out| {
            let rows = out.len() / k;
            let b0 = r0 * ROWS;
            let ix = Index {
                n,
                k,
                idx: &self.idx,
                widx: &self.widx,
                boffs: &self.boffs,
            };
            regress_rows(&ix, &x[b0 * n..(b0 + rows) * n], rows, out, prop);
        });
        if !acc.iter().all(|v| v.is_finite()) {
            return Err(locate_non_finite("inputs", x, n)
                .unwrap_or_else(|| Error::Validation("non-finite logit not located".into())));
        }
        let mut logits = Vec::with_capacity(batch * k);
        let mut labels = Vec::with_capacity(batch);
        for row in acc.chunks_exact(k) {
            let mut best = 0.0f32;
            let mut bi = 0usize;
            for (c, &s) in row.iter().enumerate() {
                let o = self.occ[c];
                let mut lg = if o > 0 { (s / o as f64) as f32 } else { 0.0 };
                if !lg.is_finite() {
                    lg = 0.0;
                }
                if c == 0 || lg > best {
                    best = lg;
                    bi = c;
                }
                logits.push(lg);
            }
            labels.push(bi);
        }
        Ok((logits, labels))
    }
}

/// The regress index, borrowed.
struct Index<'a> {
    n: usize,
    k: usize,
    idx: &'a [u16],
    widx: &'a [f64],
    boffs: &'a [u32],
}

/// Adds the class sums of `rows` rows of `x` (`rows × N`) into `acc` (`rows × K`); built for
/// AVX-512F, else AVX2, where the CPU has them (the same arithmetic, in the same order).
fn regress_rows<T: Input>(ix: &Index<'_>, x: &[T], rows: usize, acc: &mut [f64], prop: bool) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512F (checked just above).
            unsafe { regress_rows_avx512(ix, x, rows, acc, prop) };
            return;
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            unsafe { regress_rows_avx2(ix, x, rows, acc, prop) };
            return;
        }
    }
    regress_rows_plain(ix, x, rows, acc, prop)
}

/// Defines `$name`, [`regress_rows_plain`] built for the target feature `$feat`.
macro_rules! regress_rows_for {
    ($name:ident, $feat:literal) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $feat)]
        fn $name<T: Input>(ix: &Index<'_>, x: &[T], rows: usize, acc: &mut [f64], prop: bool) {
            regress_rows_plain(ix, x, rows, acc, prop)
        }
    };
}
regress_rows_for!(regress_rows_avx2, "avx2");
regress_rows_for!(regress_rows_avx512, "avx512f");

#[inline(always)]
fn regress_rows_plain<T: Input>(ix: &Index<'_>, x: &[T], rows: usize, acc: &mut [f64], prop: bool) {
    let (n, k) = (ix.n, ix.k);
    let mut tile = vec![[T::ZERO; ROWS]; BLK.min(n)];
    let mut r0 = 0;
    while r0 < rows {
        let nr = ROWS.min(rows - r0);
        for (blk, off) in ix.boffs.chunks_exact(k + 1).enumerate() {
            let lo = blk * BLK;
            let hi = (lo + BLK).min(n);
            let tile = &mut tile[..hi - lo];
            transpose(&x[r0 * n..(r0 + nr) * n], n, lo, tile);
            for c in 0..k {
                let (a, b) = (off[c] as usize, off[c + 1] as usize);
                if a == b {
                    continue;
                }
                let s = if prop {
                    gather_tile::<T, true>(tile, &ix.idx[a..b], &ix.widx[a..b])
                } else {
                    gather_tile::<T, false>(tile, &ix.idx[a..b], &ix.widx[a..b])
                };
                for (q, v) in s.iter().take(nr).enumerate() {
                    acc[(r0 + q) * k + c] += v;
                }
            }
        }
        r0 += ROWS;
    }
}

/// Neurons `[lo, lo + tile.len())` of the (at most [`ROWS`]) rows of `x` (`rows × n`),
/// neuron-major; rows past the last are zero.
#[inline(always)]
fn transpose<T: Input>(x: &[T], n: usize, lo: usize, tile: &mut [[T; ROWS]]) {
    let len = tile.len();
    let nr = x.len() / n;
    if nr == ROWS {
        let rows: [&[T]; ROWS] = std::array::from_fn(|q| &x[q * n + lo..q * n + lo + len]);
        for (j, t) in tile.iter_mut().enumerate() {
            for q in 0..ROWS {
                t[q] = rows[q][j];
            }
        }
    } else {
        for (j, t) in tile.iter_mut().enumerate() {
            for (q, v) in t.iter_mut().enumerate() {
                *v = if q < nr { x[q * n + lo + j] } else { T::ZERO };
            }
        }
    }
}

/// `Σ_j tile[idx[j]][r]·w[j]` for each of the tile's rows `r` (four chains, one vector of
/// [`ROWS`] sums each).
#[inline(always)]
fn gather_tile<T: Input, const PROP: bool>(
    tile: &[[T; ROWS]],
    idx: &[u16],
    w: &[f64],
) -> [f64; ROWS] {
    let mut s = [[0.0f64; ROWS]; 4];
    let mut ic = idx.chunks_exact(4);
    let mut wc = w.chunks_exact(4);
    for (i4, w4) in (&mut ic).zip(&mut wc) {
        for q in 0..4 {
            let v = &tile[i4[q] as usize];
            for r in 0..ROWS {
                let x = v[r].wide();
                s[q][r] += if PROP { x * w4[q] } else { x };
            }
        }
    }
    for (&i, &wj) in ic.remainder().iter().zip(wc.remainder()) {
        let v = &tile[i as usize];
        for r in 0..ROWS {
            let x = v[r].wide();
            s[0][r] += if PROP { x * wj } else { x };
        }
    }
    std::array::from_fn(|r| (s[0][r] + s[1][r]) + (s[2][r] + s[3][r]))
}

/// One block's share of the derived state.
struct Piece<'a> {
    props: &'a mut [f64],
    assign: &'a mut [u32],
    idx: &'a mut [u16],
    widx: &'a mut [f64],
    offs: &'a mut [u32],
}

/// Proportions, assignments (first maximum) and the class-sorted index of the block of
/// neurons starting at `lo`.
fn derive_block(rates: &[f64], k: usize, lo: usize, p: &mut Piece<'_>) {
    let len = p.assign.len();
    let r = &rates[lo * k..(lo + len) * k];
    for ((row, pr), a) in r
        .chunks_exact(k)
        .zip(p.props.chunks_exact_mut(k))
        .zip(p.assign.iter_mut())
    {
        let l1: f64 = row.iter().map(|v| v.abs()).sum();
        let inv = 1.0 / l1.max(1e-12);
        let mut best = 0.0;
        let mut bi = 0;
        for (j, (q, &v)) in pr.iter_mut().zip(row).enumerate() {
            let x = v * inv;
            *q = x;
            if j == 0 || x > best {
                best = x;
                bi = j;
            }
        }
        *a = bi as u32;
    }
    let off = &mut *p.offs;
    off.iter_mut().for_each(|o| *o = 0);
    for &c in p.assign.iter() {
        off[c as usize + 1] += 1;
    }
    for c in 0..k {
        off[c + 1] += off[c];
    }
    let mut fill: Vec<u32> = off[..k].to_vec();
    for (i, &c) in p.assign.iter().enumerate() {
        let at = fill[c as usize] as usize;
        p.idx[at] = i as u16;
        p.widx[at] = p.props[i * k + c as usize];
        fill[c as usize] += 1;
    }
    for o in off.iter_mut() {
        *o += lo as u32;
    }
}

/// An update's inputs: the batch `x` (`B × N`), its sizes and the plan of class members.
struct Update<'a, T> {
    x: &'a [T],
    n: usize,
    k: usize,
    plan: &'a UpdatePlan,
}

/// New rates of neurons `[lo, lo + out.len()/K)`: per class, the class's rows summed in
/// `f64`, then `decay·rate + sum / count`. Returns whether every new rate is finite in `f32`.
/// Built for AVX-512F, else AVX2, where the CPU has them (the same arithmetic, in the same
/// order).
fn update_range<T: Input>(u: &Update<'_, T>, rates: &[f64], out: &mut [f64], lo: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512F (checked just above).
            return unsafe { update_range_avx512(u, rates, out, lo) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            return unsafe { update_range_avx2(u, rates, out, lo) };
        }
    }
    update_range_plain(u, rates, out, lo)
}

/// Defines `$name`, [`update_range_plain`] built for the target feature `$feat`.
macro_rules! update_range_for {
    ($name:ident, $feat:literal) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $feat)]
        fn $name<T: Input>(u: &Update<'_, T>, rates: &[f64], out: &mut [f64], lo: usize) -> bool {
            update_range_plain(u, rates, out, lo)
        }
    };
}
update_range_for!(update_range_avx2, "avx2");
update_range_for!(update_range_avx512, "avx512f");

#[inline(always)]
fn update_range_plain<T: Input>(
    u: &Update<'_, T>,
    rates: &[f64],
    out: &mut [f64],
    lo: usize,
) -> bool {
    let Update { x, n, k, plan } = *u;
    let len = out.len() / k;
    let lim = f32::MAX as f64;
    let mut bad = false;
    let mut acc = [0.0f64; UBLK];
    let mut g = 0;
    while g < len {
        let w = UBLK.min(len - g);
        for c in 0..k {
            let members = &plan.order[plan.offs[c]..plan.offs[c + 1]];
            let at = |j: usize| (g + j) * k + c;
            if members.is_empty() {
                for j in 0..w {
                    out[at(j)] = rates[at(j)];
                }
                continue;
            }
            // The class's rows, each a contiguous run of `w` inputs, summed in f64.
            let a = &mut acc[..w];
            a.iter_mut().for_each(|v| *v = 0.0);
            // Four rows per pass over the accumulators (a quarter of their loads and stores).
            let row = |b: u32| {
                let start = b as usize * n + lo + g;
                &x[start..start + w]
            };
            let mut quads = members.chunks_exact(4);
            for q in &mut quads {
                let (r0, r1, r2, r3) = (row(q[0]), row(q[1]), row(q[2]), row(q[3]));
                for ((((v, &x0), &x1), &x2), &x3) in a.iter_mut().zip(r0).zip(r1).zip(r2).zip(r3) {
                    *v += (x0.wide() + x1.wide()) + (x2.wide() + x3.wide());
                }
            }
            for &b in quads.remainder() {
                for (v, &xi) in a.iter_mut().zip(row(b)) {
                    *v += xi.wide();
                }
            }
            let (d, cnt) = (plan.decay[c], plan.counts[c] as f64);
            for (j, &s) in a.iter().enumerate() {
                let v = d * rates[at(j)] + s / cnt;
                bad |= !matches!(
                    v.abs().partial_cmp(&lim),
                    Some(Ordering::Less | Ordering::Equal)
                );
                out[at(j)] = v;
            }
        }
        g += UBLK;
    }
    !bad
}
