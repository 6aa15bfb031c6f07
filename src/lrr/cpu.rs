//! The CPU engine of LRR: `C` accumulated from 16-sample `f32` register blocks folded into
//! `f64`, the `f64` solver of `solve.rs`, and an `f32` block-diagonal product for the
//! transform. Large chunks use every core (the engine's worker pool, rows split in aligned
//! ranges); small ones stay on the calling thread.

use std::cmp::Ordering;
use std::ops::Range;

use ndarray::{Array2, ArrayView2};

use super::kernels::{gemm_rows, syrk_block, touch_lines, BLOCK, TC};
use super::solve::solve_block;
use super::{scan_chunk, sym, Layout, Scan, MAX_ABS_VALUE};
use crate::engine::prefetch_rows;
use crate::engine::worker_threads;
use crate::error::Result;
use std::sync::Mutex;

/// Multiply-adds below which a `partial_fit` stays on one thread (spawning costs ~20–50 µs).
const PARALLEL_WORK: usize = 4_000_000;
/// Multiply-adds below which a transform runs on the calling thread and the crew (blocks of
/// rows from a shared counter, [`crate::crew`]) instead of the worker pool: a 20 ms chunk of
/// 384 channels in 8 clusters of 48 (11 M) measured slower on two threads of the pool than
/// on one (chain p50 587 against 497 µs: the caller parks while a pool thread wakes), and
/// handing work to the pool from outside it allocates a queue block every 63 calls; a 1 s
/// chunk (550 M) splits on the pool.
const PARALLEL_TRANSFORM_WORK: usize = 32_000_000;
/// Most row blocks a crew transform is cut into.
const MAX_PIECES: usize = 16;
/// Rows per transform block (a multiple of the register tile's 6 rows).
const T_ROWS: usize = 96;
/// A chunk whose `C` has a diagonal entry above this (or not finite) is scanned exactly:
/// any `|x| > 1e15` puts `x² > 1e30` on the diagonal.
const SUSPICIOUS_DIAGONAL: f64 = 1e30;

thread_local! {
    /// Each thread's transform panels, kept between chunks.
    static PANELS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Splits `0..n` into at most `parts` ranges whose starts are multiples of `align`.
fn split_rows(n: usize, parts: usize, align: usize) -> Vec<Range<usize>> {
    let blocks = n.div_ceil(align);
    let parts = parts.clamp(1, blocks.max(1));
    let mut out = Vec::with_capacity(parts);
    let mut start = 0;
    for p in 0..parts {
        let end = if p + 1 == parts {
            n
        } else {
            ((blocks * (p + 1) / parts) * align).min(n)
        };
        if end > start {
            out.push(start..end);
        }
        start = end;
    }
    out
}

fn pad(k: usize) -> usize {
    k.div_ceil(TC).max(1) * TC
}

/// CPU state: `C` per accumulation group, `W` and `I − W` per cluster.
#[derive(Debug, Clone)]
pub(crate) struct CpuLrr {
    /// Per group: `kp × kp` `f64`, upper block tiles valid (see [`syrk_block`]).
    c: Vec<Vec<f64>>,
    /// Padded width of each group.
    kp: Vec<usize>,
    /// Per cluster: `W`, `k × k`.
    w: Vec<Vec<f64>>,
    /// Per cluster: `I − W` as `f32`, `kp × kp`, zero-padded.
    m: Vec<Vec<f32>>,
}

impl CpuLrr {
    pub fn new(layout: &Layout) -> Self {
        let kp: Vec<usize> = layout.groups.iter().map(|g| pad(g.len())).collect();
        CpuLrr {
            c: kp.iter().map(|&p| vec![0.0; p * p]).collect(),
            kp,
            w: layout
                .clusters
                .iter()
                .map(|c| vec![0.0; c.len() * c.len()])
                .collect(),
            m: layout
                .clusters
                .iter()
                .map(|c| {
                    let kp = pad(c.len());
                    let mut m = vec![0f32; kp * kp];
                    for a in 0..c.len() {
                        m[a * kp + a] = 1.0;
                    }
                    m
                })
                .collect(),
        }
    }

    /// Accumulates (or, with `replace`, replaces `C` by) `XᵀX` of `chunk`. `Ok(false)`: a NaN
    /// was found and nothing changed; ±inf or a too-large value is an error, nothing changed.
    ///
    /// Small chunks are scanned first and accumulated in place. Large ones are accumulated
    /// by every core into private `f64` blocks with no separate scan: a NaN, ±inf or
    /// `|x| > 1e15` in a cluster channel makes a diagonal entry of the chunk's `C` non-finite
    /// or above `1e30`, which triggers the exact scan (channels in no cluster are scanned
    /// directly); the state is only touched once the chunk is known to be clean.
    pub fn accumulate(
        &mut self,
        layout: &Layout,
        chunk: ArrayView2<'_, f32>,
        replace: bool,
    ) -> Result<bool> {
        let std = chunk.as_standard_layout();
        let (rows, nc) = std.dim();
        let data = std.as_slice().unwrap_or(&[]);
        let work: usize = rows * layout.groups.iter().map(|g| g.len().pow(2)).sum::<usize>() / 2;
        if work < PARALLEL_WORK || worker_threads() == 1 {
            match scan_chunk(std.view()) {
                Scan::Ok => {}
                Scan::Nan => return Ok(false),
                bad => return Err(bad.error()),
            }
            if replace {
                for c in &mut self.c {
                    c.iter_mut().for_each(|v| *v = 0.0);
                }
            }
            let mut acc = std::mem::take(&mut self.c);
            accumulate_rows(layout, &self.kp, data, nc, 0..rows, &mut acc);
            self.c = acc;
            return Ok(true);
        }
        let ranges = split_rows(rows, worker_threads(), BLOCK);
        let kp = &self.kp;
        let run = |r: Range<usize>| {
            let mut acc: Vec<Vec<f64>> = kp.iter().map(|&p| vec![0.0; p * p]).collect();
            accumulate_rows(layout, kp, data, nc, r.clone(), &mut acc);
            let pass_ok = data[r.start * nc..r.end * nc].chunks_exact(nc).all(|row| {
                layout
                    .passthrough
                    .iter()
                    .all(|&ch| row[ch].abs() <= MAX_ABS_VALUE)
            });
            (acc, pass_ok)
        };
        let results: Vec<(Vec<Vec<f64>>, bool)> =
            crate::engine::par_map(ranges.len(), |i| run(ranges[i].clone()));
        let suspicious = results.len() != ranges.len()
            || results.iter().any(|(acc, pass_ok)| {
                !pass_ok
                    || acc.iter().zip(kp).any(|(c, &p)| {
                        (0..p).any(|i| {
                            !matches!(
                                c[i * p + i].partial_cmp(&SUSPICIOUS_DIAGONAL),
                                Some(Ordering::Less | Ordering::Equal)
                            )
                        })
                    })
            });
        if suspicious {
            match scan_chunk(std.view()) {
                Scan::Ok => {}
                Scan::Nan => return Ok(false),
                bad => return Err(bad.error()),
            }
            if results.len() != ranges.len() {
                return Err(crate::error::Error::Validation(
                    "an accumulation worker thread failed".into(),
                ));
            }
        }
        if replace {
            for c in &mut self.c {
                c.iter_mut().for_each(|v| *v = 0.0);
            }
        }
        for (part, _) in results {
            for (c, p) in self.c.iter_mut().zip(part) {
                for (a, b) in c.iter_mut().zip(p) {
                    *a += b;
                }
            }
        }
        Ok(true)
    }

    /// Each group's `C` block as `k × k` (symmetric, row-major, group order).
    pub fn group_blocks(&self, layout: &Layout) -> Vec<Vec<f64>> {
        layout
            .groups
            .iter()
            .zip(self.c.iter().zip(&self.kp))
            .map(|(g, (c, &kp))| {
                let k = g.len();
                let mut b = vec![0.0; k * k];
                for i in 0..k {
                    for j in 0..k {
                        b[i * k + j] = sym(c, kp, i, j);
                    }
                }
                b
            })
            .collect()
    }

    /// Sets each group's `C` from `k × k` symmetric blocks ([`CpuLrr::group_blocks`]'s
    /// layout, checked by the caller).
    pub fn set_group_blocks(&mut self, layout: &Layout, blocks: &[Vec<f64>]) {
        for ((g, (c, &kp)), b) in layout
            .groups
            .iter()
            .zip(self.c.iter_mut().zip(&self.kp))
            .zip(blocks)
        {
            let k = g.len();
            c.iter_mut().for_each(|v| *v = 0.0);
            for i in 0..k {
                for j in 0..k {
                    c[i * kp + j] = b[i * k + j];
                }
            }
        }
    }

    /// Solves every cluster's weights from the current `C`; returns the clusters that used
    /// the pseudo-inverse.
    pub fn solve(&mut self, layout: &Layout, lambda: f64) -> Vec<usize> {
        // Clusters are independent: solved on this thread and the crew's helpers.
        let solved = crate::crew::crew_map(layout.clusters.len(), |ci| {
            let g = layout.cluster_group[ci];
            let (c, kp, pos) = (&self.c[g], self.kp[g], &layout.cluster_pos[ci]);
            let p0 = pos.first().copied().unwrap_or(0);
            if pos.iter().enumerate().all(|(a, &p)| p == p0 + a) {
                // Consecutive channels (the usual layout): the upper triangle row by row.
                solve_block(pos.len(), lambda, |i, j| c[(p0 + i) * kp + p0 + j])
            } else {
                solve_block(pos.len(), lambda, |i, j| sym(c, kp, pos[i], pos[j]))
            }
        });
        let singular = (0..solved.len()).filter(|&ci| solved[ci].pinv).collect();
        self.set_weights(layout, solved.into_iter().map(|s| s.w).collect());
        singular
    }

    /// Installs per-cluster `W` blocks (`k × k`, cluster order).
    pub fn set_weights(&mut self, layout: &Layout, blocks: Vec<Vec<f64>>) {
        for (ci, w) in blocks.iter().enumerate() {
            let k = layout.clusters[ci].len();
            let kp = pad(k);
            let m = &mut self.m[ci];
            m.iter_mut().for_each(|v| *v = 0.0);
            for (a, (m_row, w_row)) in m.chunks_exact_mut(kp).zip(w.chunks_exact(k)).enumerate() {
                for (x, &v) in m_row.iter_mut().zip(w_row) {
                    *x = (-v) as f32;
                }
                m_row[a] = (1.0 - w_row[a]) as f32;
            }
        }
        self.w = blocks;
    }

    /// Per-cluster `W` blocks.
    pub fn weight_blocks(&self) -> Vec<Vec<f64>> {
        self.w.clone()
    }

    /// `Y = X·(I − W)`, block-diagonal; channels in no cluster pass through.
    pub fn transform(&self, layout: &Layout, chunk: ArrayView2<'_, f32>) -> Result<Array2<f32>> {
        let mut out = crate::validate::host_zeros::<f32, _>("LRR output", chunk.raw_dim())?;
        if let Some(o) = out.as_slice_mut() {
            self.transform_slice(layout, chunk, o);
        }
        Ok(out)
    }

    /// [`CpuLrr::transform`] into `out` (`rows × nc`, row-major).
    pub fn transform_slice(&self, layout: &Layout, chunk: ArrayView2<'_, f32>, out: &mut [f32]) {
        let std = chunk.as_standard_layout();
        let (rows, nc) = std.dim();
        let x = std.as_slice().unwrap_or(&[]);
        if out.len() != rows * nc {
            return;
        }
        let work: usize = rows
            * layout
                .clusters
                .iter()
                .map(|c| c.len().pow(2))
                .sum::<usize>();
        if work < PARALLEL_TRANSFORM_WORK {
            // Blocks of rows shared by this thread and the crew's helpers.
            let per = rows.div_ceil(MAX_PIECES).div_ceil(T_ROWS).max(1) * T_ROWS;
            let mut pieces = out.chunks_mut(per * nc);
            let slots: [Mutex<Option<&mut [f32]>>; MAX_PIECES] =
                std::array::from_fn(|_| Mutex::new(pieces.next()));
            crate::crew::crew_for(rows.div_ceil(per), |i| {
                let piece = slots[i].lock().ok().and_then(|mut p| p.take());
                if let Some(o) = piece {
                    let r0 = i * per;
                    self.transform_rows(layout, x, nc, r0..r0 + o.len() / nc, o);
                }
            });
            return;
        }
        let split = crate::engine::Split {
            row_len: nc,
            parts: worker_threads(),
            align: T_ROWS,
        };
        crate::engine::par_rows(0..rows, out, split, &|r, o| {
            self.transform_rows(layout, x, nc, r, o)
        });
    }

    /// Transforms rows `range` of `x` into `out` (which holds exactly those rows).
    /// Clusters of contiguous channels whose size is a multiple of 16 are read and written
    /// in place; others go through zero-padded panels.
    fn transform_rows(
        &self,
        layout: &Layout,
        x: &[f32],
        nc: usize,
        range: Range<usize>,
        out: &mut [f32],
    ) {
        let kmax = layout
            .clusters
            .iter()
            .map(|c| pad(c.len()))
            .max()
            .unwrap_or(TC);
        PANELS.with_borrow_mut(|panels| {
            if panels.len() < 2 * T_ROWS * kmax {
                panels.resize(2 * T_ROWS * kmax, 0.0);
            }
            let (xp, yp) = panels.split_at_mut(T_ROWS * kmax);
            let mut r0 = range.start;
            while r0 < range.end {
                let rows = T_ROWS.min(range.end - r0);
                let o0 = r0 - range.start;
                touch_lines(&x[r0 * nc..(r0 + rows) * nc]);
                for (ci, members) in layout.clusters.iter().enumerate() {
                    let k = members.len();
                    let kp = pad(k);
                    let m0 = members[0];
                    let contiguous = members[k - 1] - m0 == k - 1;
                    if contiguous && kp == k {
                        prefetch_rows(out, (o0 + T_ROWS) * nc + m0, nc, T_ROWS, k, true);
                        gemm_rows(
                            &x[r0 * nc + m0..],
                            nc,
                            &self.m[ci],
                            &mut out[o0 * nc + m0..],
                            nc,
                            rows,
                            kp,
                            k,
                        );
                        continue;
                    }
                    for r in 0..rows {
                        let src = &x[(r0 + r) * nc..(r0 + r + 1) * nc];
                        let dst = &mut xp[r * kp..r * kp + k];
                        if contiguous {
                            dst.copy_from_slice(&src[m0..m0 + k]);
                        } else {
                            for (d, &m) in dst.iter_mut().zip(members) {
                                *d = src[m];
                            }
                        }
                    }
                    gemm_rows(xp, kp, &self.m[ci], yp, kp, rows, kp, k);
                    for r in 0..rows {
                        let dst = &mut out[(o0 + r) * nc..(o0 + r + 1) * nc];
                        let src = &yp[r * kp..r * kp + k];
                        if contiguous {
                            dst[m0..m0 + k].copy_from_slice(src);
                        } else {
                            for (&v, &m) in src.iter().zip(members) {
                                dst[m] = v;
                            }
                        }
                    }
                }
                if !layout.passthrough.is_empty() {
                    for r in 0..rows {
                        let src = &x[(r0 + r) * nc..(r0 + r + 1) * nc];
                        let dst = &mut out[(o0 + r) * nc..(o0 + r + 1) * nc];
                        for &ch in &layout.passthrough {
                            dst[ch] = src[ch];
                        }
                    }
                }
                r0 += rows;
            }
        });
    }
}

/// Accumulates rows `range` of `data` (`nc` columns) into `acc` (per group, `kp × kp`),
/// 32-row block by 32-row block (one block of 384 channels is 48 KB: L1 and L2). Full blocks of
/// groups of contiguous channels whose size is a multiple of 16 are read in place; others
/// are packed into a zero-padded panel first.
fn accumulate_rows(
    layout: &Layout,
    kps: &[usize],
    data: &[f32],
    nc: usize,
    range: Range<usize>,
    acc: &mut [Vec<f64>],
) {
    let kmax = kps.iter().copied().max().unwrap_or(TC);
    let mut panel = vec![0f32; BLOCK * kmax];
    let mut s0 = range.start;
    while s0 < range.end {
        let rows = BLOCK.min(range.end - s0);
        touch_lines(&data[s0 * nc..(s0 + rows) * nc]);
        for (g, members) in layout.groups.iter().enumerate() {
            let k = members.len();
            let kp = kps[g];
            let m0 = members[0];
            let contiguous = members[k - 1] - m0 == k - 1;
            if contiguous && kp == k && rows == BLOCK {
                syrk_block(&data[s0 * nc + m0..], nc, kp, k, &mut acc[g]);
                continue;
            }
            for r in 0..BLOCK {
                let dst = &mut panel[r * kp..(r + 1) * kp];
                if r >= rows {
                    dst.iter_mut().for_each(|v| *v = 0.0);
                    continue;
                }
                let src = &data[(s0 + r) * nc..(s0 + r + 1) * nc];
                if contiguous {
                    dst[..k].copy_from_slice(&src[m0..m0 + k]);
                } else {
                    for (d, &m) in dst.iter_mut().zip(members) {
                        *d = src[m];
                    }
                }
                dst[k..].iter_mut().for_each(|v| *v = 0.0);
            }
            syrk_block(&panel, kp, kp, k, &mut acc[g]);
        }
        s0 += rows;
    }
}

#[cfg(test)]
mod tests {
    use super::split_rows;

    #[test]
    fn row_splits_are_aligned_and_cover() {
        for (n, parts, align) in [
            (0usize, 2usize, 16usize),
            (5, 2, 16),
            (100, 2, 16),
            (30_000, 3, 96),
        ] {
            let r = split_rows(n, parts, align);
            let mut at = 0;
            for x in &r {
                assert_eq!(x.start, at);
                assert!(x.start % align == 0);
                at = x.end;
            }
            assert_eq!(at, n);
        }
    }
}
