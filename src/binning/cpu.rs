//! The CPU engine of binned kernel activation: `f64` state, one rounding at the output.

use ndarray::{Array2, ArrayView2, ArrayViewMut2, Axis};

use crate::engine::{par_rows, par_split, worker_threads, Rows, Split};

use super::{Aggregation, Buckets, ChannelStates, DenseSample, JumpTable, Params, Plan, Segment};

/// Per-channel streaming state.
#[derive(Debug, Clone, Default)]
pub(crate) struct CpuState {
    /// Exponential activation just before the next sample (Count: unused).
    e: Vec<f64>,
    /// Alpha activation just before the next sample.
    a: Vec<f64>,
    /// Partial Sum over the open bin.
    psum: Vec<f64>,
    /// Partial Max over the open bin (−∞ when the open bin has no sample yet).
    pmax: Vec<f64>,
    /// Cumulative weight since the stream began (Count + Last).
    cum: Vec<f64>,
    /// Cumulative event count since the stream began (Count + Last without scale_by_value).
    cum_n: Vec<u64>,
    /// What the dense path reuses from chunk to chunk (not stream state).
    scratch: ChunkScratch,
}

/// Buffers reused from chunk to chunk so a warm stream allocates nothing: the dense path's
/// snapshot of the state to roll back to and per-channel partials, and the sparse
/// Exponential + Last path's segment tables.
#[derive(Debug, Clone, Default)]
struct ChunkScratch {
    /// `e, a, psum, pmax, cum` of the snapshot, one after another.
    f: Vec<f64>,
    cum_n: Vec<u64>,
    sum: Vec<f64>,
    max: Vec<f64>,
    counts: Vec<u32>,
    /// Per-thread counts of a large chunk's runs of rows, per segment ([`count_chunk`]).
    part_counts: Vec<u32>,
    /// A large chunk's counts per segment ([`count_chunk`]).
    seg_counts: Vec<u32>,
    /// The sparse Exponential + Last path's segment of each sample of the chunk, and
    /// `d^len` of each segment.
    seg_of: Vec<u32>,
    seg_pow: Vec<f64>,
}

impl CpuState {
    fn ensure(&mut self, n: usize) {
        if self.e.len() != n {
            *self = CpuState {
                e: vec![0.0; n],
                a: vec![0.0; n],
                psum: vec![0.0; n],
                pmax: vec![f64::NEG_INFINITY; n],
                cum: vec![0.0; n],
                cum_n: vec![0; n],
                scratch: ChunkScratch {
                    f: vec![0.0; 5 * n],
                    cum_n: vec![0; n],
                    sum: vec![0.0; n],
                    max: vec![0.0; n],
                    counts: vec![0; n],
                    part_counts: Vec::new(),
                    seg_counts: Vec::new(),
                    seg_of: Vec::new(),
                    seg_pow: Vec::new(),
                },
            };
        }
    }

    /// The stream state of `nc` channels in the common form (the initial state when none
    /// was built yet).
    pub(crate) fn channel_states(&self, nc: usize) -> ChannelStates {
        if self.e.len() != nc {
            return ChannelStates::fresh(nc);
        }
        ChannelStates {
            e: self.e.clone(),
            a: self.a.clone(),
            psum: self.psum.clone(),
            pmax: self.pmax.clone(),
            cum: self.cum.clone(),
            cum_n: self.cum_n.clone(),
        }
    }

    /// Makes `st` (checked by the caller) the stream state.
    pub(crate) fn set_channel_states(&mut self, st: ChannelStates) {
        self.ensure(st.e.len());
        (self.e, self.a, self.psum, self.pmax, self.cum, self.cum_n) =
            (st.e, st.a, st.psum, st.pmax, st.cum, st.cum_n);
    }

    /// Copies the stream state into the scratch snapshot.
    fn snapshot(&mut self) {
        let n = self.e.len();
        let f = &mut self.scratch.f;
        for (k, v) in [&self.e, &self.a, &self.psum, &self.pmax, &self.cum]
            .into_iter()
            .enumerate()
        {
            f[k * n..(k + 1) * n].copy_from_slice(v);
        }
        self.scratch.cum_n.copy_from_slice(&self.cum_n);
    }

    /// Puts the stream state back as the last [`Self::snapshot`] left it.
    fn roll_back(&mut self) {
        let n = self.e.len();
        let f = &self.scratch.f;
        for (k, v) in [
            &mut self.e,
            &mut self.a,
            &mut self.psum,
            &mut self.pmax,
            &mut self.cum,
        ]
        .into_iter()
        .enumerate()
        {
            v.copy_from_slice(&f[k * n..(k + 1) * n]);
        }
        self.cum_n.copy_from_slice(&self.scratch.cum_n);
    }

    /// The bin output of channel `c` for a completed segment with running `sum`/`max`.
    fn output(&self, p: &Params, seg: &Segment, c: usize, sum: f64, max: f64) -> f32 {
        let state = (self.e[c], self.a[c], self.cum[c], self.cum_n[c]);
        bin_output(p, seg, sum, max, state)
    }
}

/// A completed segment's bin output from its running `sum`/`max` and the channel's state
/// `(e, a, cum, cum_n)` at the segment's end (what Last reads).
#[inline(always)]
fn bin_output(
    p: &Params,
    seg: &Segment,
    sum: f64,
    max: f64,
    (e, a, cum, cum_n): (f64, f64, f64, u64),
) -> f32 {
    let raw = match p.agg {
        Aggregation::Sum | Aggregation::Mean => sum,
        Aggregation::Max => max,
        Aggregation::Last => match p.kind {
            0 if p.scale_by_value => cum,
            0 => cum_n as f64,
            1 => e,
            _ => a,
        },
    };
    (raw * seg.out_scale) as f32
}

/// Dense input: the recurrence stepped sample by sample, vectorised across channels.
pub(crate) fn dense<T: DenseSample>(
    st: &mut CpuState,
    p: &Params,
    jt: &JumpTable,
    plan: &Plan,
    chunk: ArrayView2<'_, T>,
) -> Option<Array2<f32>> {
    let (_, nc) = chunk.dim();
    st.ensure(nc);
    // The hot path checks finiteness in its own pass over the data; on a non-finite value
    // the state is put back as it was and `None` tells the caller to report it.
    st.snapshot();
    let mut all_finite = true;
    let mut out = Array2::<f32>::zeros((plan.n_bins, nc));
    let data = chunk.as_standard_layout();
    let rows = data.as_slice().unwrap_or(&[]);
    let mut scratch = std::mem::take(&mut st.scratch);
    let ChunkScratch {
        sum,
        max,
        counts,
        part_counts,
        seg_counts,
        ..
    } = &mut scratch;
    let d = jt.d;
    let inv_tau = jt.inv_tau;
    let fast = p.kind == 0 && !p.scale_by_value && p.agg != Aggregation::Max;
    // A large chunk on the hot path: every segment's counts at once, on the worker pool.
    let counted = match T::as_f32(rows) {
        Some(words) if fast => count_chunk(words, nc, &plan.segments, seg_counts, part_counts),
        _ => None,
    };
    if let Some(ok) = counted {
        all_finite &= ok;
    }
    for (si, seg) in plan.segments.iter().enumerate() {
        if seg.continues {
            sum.copy_from_slice(&st.psum);
            max.copy_from_slice(&st.pmax);
        } else {
            sum.fill(0.0);
            max.fill(f64::NEG_INFINITY);
        }
        let range = seg.start as usize * nc..seg.end as usize * nc;
        let seg_rows = rows[range].chunks_exact(nc);
        let weight = |x: T| -> f64 {
            let v = x.to_f32();
            if v == 0.0 {
                0.0
            } else if p.scale_by_value {
                v as f64 * p.wscale
            } else {
                p.wscale
            }
        };
        let seg_data = &rows[seg.start as usize * nc..seg.end as usize * nc];
        if !fast && !T::IS_BYTE {
            all_finite &= seg_data.iter().all(|x| x.to_f32().is_finite());
        }
        match p.kind {
            0 if fast => {
                // Hot path: exact integer counts.
                if counted.is_some() {
                    counts.copy_from_slice(&seg_counts[si * nc..(si + 1) * nc]);
                } else {
                    counts.fill(0);
                    match T::as_f32(seg_data) {
                        Some(words) => all_finite &= count_rows(words, nc, counts),
                        None => {
                            for row in seg_rows {
                                for (n, x) in counts.iter_mut().zip(row) {
                                    *n += (x.to_f32() != 0.0) as u32;
                                }
                            }
                        }
                    }
                }
                for c in 0..nc {
                    sum[c] += counts[c] as f64;
                    st.cum_n[c] += counts[c] as u64;
                }
            }
            0 => {
                for row in seg_rows {
                    for c in 0..nc {
                        let w = weight(row[c]);
                        sum[c] += w;
                        max[c] = max[c].max(w);
                        st.cum[c] += w;
                        st.cum_n[c] += (w != 0.0) as u64;
                    }
                }
            }
            1 => {
                for row in seg_rows {
                    for c in 0..nc {
                        let act = st.e[c] + weight(row[c]);
                        st.e[c] = d * act;
                        sum[c] += act;
                        max[c] = max[c].max(act);
                    }
                }
            }
            _ => {
                for row in seg_rows {
                    for c in 0..nc {
                        let ep = st.e[c] + weight(row[c]);
                        let act = st.a[c];
                        st.a[c] = d * (act + ep * inv_tau);
                        st.e[c] = d * ep;
                        sum[c] += act;
                        max[c] = max[c].max(act);
                    }
                }
            }
        }
        finish_segment(st, p, seg, &mut out, sum, max);
    }
    st.scratch = scratch;
    if !all_finite {
        st.roll_back();
        return None;
    }
    Some(out)
}

/// Values per worker thread below which a chunk is counted on fewer threads (a 20 ms chunk
/// of 384 channels, 230 400 values, stays on the calling thread).
const PAR_COUNT: usize = 1 << 18;

/// Each segment's nonzero counts of a chunk of whole rows (`rows`, `nc` channels), into row
/// `i` of `seg_counts` for segment `i`, when the chunk has twice [`PAR_COUNT`] values or more
/// and the engine more than one thread: the chunk is cut into runs of whole rows, one per
/// thread, each counted per segment into its own rows of `part_counts`, and the runs' counts
/// then added in order (integers: the same counts as one pass). Returns `None` when the
/// chunk stays on the calling thread, else whether every value was finite.
fn count_chunk(
    rows: &[f32],
    nc: usize,
    segments: &[Segment],
    seg_counts: &mut Vec<u32>,
    part_counts: &mut Vec<u32>,
) -> Option<bool> {
    let n_rows = rows.len() / nc.max(1);
    let parts = worker_threads().min(rows.len() / PAR_COUNT).min(n_rows);
    if parts <= 1 {
        return None;
    }
    let per_part = segments.len() * nc;
    part_counts.clear();
    part_counts.resize(parts * per_part, 0);
    let per = n_rows.div_ceil(parts);
    let finite = std::sync::atomic::AtomicBool::new(true);
    let split = Split {
        row_len: per_part,
        parts,
        align: 1,
    };
    par_rows(0..parts, part_counts, split, &|range, piece| {
        for (p, part) in range.zip(piece.chunks_exact_mut(per_part)) {
            let (lo, hi) = ((p * per).min(n_rows), ((p + 1) * per).min(n_rows));
            for (seg, cnt) in segments.iter().zip(part.chunks_exact_mut(nc)) {
                let a = (seg.start as usize).clamp(lo, hi);
                let b = (seg.end as usize).clamp(lo, hi);
                if a < b && !count_rows(&rows[a * nc..b * nc], nc, cnt) {
                    finite.store(false, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
    });
    seg_counts.clear();
    seg_counts.resize(per_part, 0);
    for part in part_counts.chunks_exact(per_part) {
        for (n, &v) in seg_counts.iter_mut().zip(part) {
            *n += v;
        }
    }
    Some(finite.into_inner())
}

/// Adds each channel's nonzero count over whole rows of `nc` channels to `counts`; returns
/// whether every value was finite. Built for AVX-512F, else AVX2, where the CPU has them.
fn count_rows(data: &[f32], nc: usize, counts: &mut [u32]) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512F (checked just above).
            return unsafe { count_rows_avx512(data, nc, counts) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            return unsafe { count_rows_avx2(data, nc, counts) };
        }
    }
    count_rows_plain(data, nc, counts)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn count_rows_avx2(data: &[f32], nc: usize, counts: &mut [u32]) -> bool {
    count_rows_plain(data, nc, counts)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn count_rows_avx512(data: &[f32], nc: usize, counts: &mut [u32]) -> bool {
    count_rows_plain(data, nc, counts)
}

#[inline(always)]
fn count_rows_plain(data: &[f32], nc: usize, counts: &mut [u32]) -> bool {
    const EXP: u32 = 0x7f80_0000;
    let mut bad = 0u32;
    for row in data.chunks_exact(nc) {
        for (n, x) in counts.iter_mut().zip(row) {
            let b = x.to_bits();
            *n += (b & !0x8000_0000 != 0) as u32;
            bad |= ((b & EXP) == EXP) as u32;
        }
    }
    bad == 0
}

/// Writes a completed segment's outputs, or keeps an open one's partials.
fn finish_segment(
    st: &mut CpuState,
    p: &Params,
    seg: &Segment,
    out: &mut Array2<f32>,
    sum: &[f64],
    max: &[f64],
) {
    match seg.row {
        Some(r) => {
            for c in 0..sum.len() {
                out[[r, c]] = st.output(p, seg, c, sum[c], max[c]);
            }
            st.psum.fill(0.0);
            st.pmax.fill(f64::NEG_INFINITY);
        }
        None => {
            st.psum.copy_from_slice(sum);
            st.pmax.copy_from_slice(max);
        }
    }
}

/// A run of `l` samples without events from pre-state `(e, a)`: returns the run's activation
/// sum (when `SUM`) and max (when `MAX`), and advances the state. `KIND` is the kernel
/// (0 Count, 1 Exponential, 2 Alpha); only what the aggregation needs is computed (Last
/// needs just `d^L`).
#[inline(always)]
fn stretch<const KIND: u32, const SUM: bool, const MAX: bool>(
    jt: &JumpTable,
    e: &mut f64,
    a: &mut f64,
    l: u64,
) -> (f64, f64) {
    if KIND == 0 || l == 0 {
        return (0.0, if l == 0 { f64::NEG_INFINITY } else { 0.0 });
    }
    let it = jt.inv_tau;
    let [dl, g, h] = if SUM {
        jt.jump(l)
    } else {
        [jt.pow(l), 0.0, 0.0]
    };
    let (mut sum, mut max) = (0.0, f64::NEG_INFINITY);
    if KIND == 1 {
        if SUM {
            sum = *e * g;
        }
        if MAX {
            max = e.max(*e * jt.pow(l - 1));
        }
        *e *= dl;
    } else {
        if SUM {
            sum = *a * g + *e * it * h;
        }
        if MAX {
            let f = |i: u64| jt.pow(i) * (*a + i as f64 * *e * it);
            let mut m = f(0).max(f(l - 1));
            if *e != 0.0 {
                let star = (1.0 - *a / *e) / it;
                if star > 0.0 && star < (l - 1) as f64 {
                    m = m.max(f(star.floor() as u64)).max(f(star.ceil() as u64));
                }
            }
            max = m;
        }
        *a = dl * (*a + l as f64 * *e * it);
        *e *= dl;
    }
    (sum, max)
}

/// Sparse work below which a chunk stays on one thread (events plus bin outputs): waking a
/// second thread costs more than it saves on a 1 s × 384-channel chunk here.
const SPARSE_PAR_WORK: usize = 1 << 17;

/// A range of channels' stream state and output columns, for the channel-parallel sparse
/// path.
struct SparseLanes<'a> {
    e: &'a mut [f64],
    a: &'a mut [f64],
    psum: &'a mut [f64],
    pmax: &'a mut [f64],
    cum: &'a mut [f64],
    cum_n: &'a mut [u64],
    out: ArrayViewMut2<'a, f32>,
}

impl Rows for SparseLanes<'_> {
    fn rows(&self) -> usize {
        self.e.len()
    }
    fn split_rows(self, mid: usize) -> (Self, Self) {
        let (e0, e1) = self.e.split_at_mut(mid);
        let (a0, a1) = self.a.split_at_mut(mid);
        let (s0, s1) = self.psum.split_at_mut(mid);
        let (m0, m1) = self.pmax.split_at_mut(mid);
        let (c0, c1) = self.cum.split_at_mut(mid);
        let (n0, n1) = self.cum_n.split_at_mut(mid);
        let (o0, o1) = self.out.split_at(Axis(1), mid);
        (
            SparseLanes {
                e: e0,
                a: a0,
                psum: s0,
                pmax: m0,
                cum: c0,
                cum_n: n0,
                out: o0,
            },
            SparseLanes {
                e: e1,
                a: a1,
                psum: s1,
                pmax: m1,
                cum: c1,
                cum_n: n1,
                out: o1,
            },
        )
    }
}

/// Sparse input: per channel, jumps between events — `O(events + bins)`; channels split
/// over the worker threads when the chunk is large (each channel's arithmetic is the same
/// whatever the split).
pub(crate) fn sparse(
    st: &mut CpuState,
    p: &Params,
    jt: &JumpTable,
    plan: &Plan,
    b: &Buckets,
    out: &mut Array2<f32>,
) {
    let nc = out.ncols();
    st.ensure(nc);
    let work = b.rel.len() + plan.n_bins * nc;
    let parts = if work >= SPARSE_PAR_WORK {
        worker_threads()
    } else {
        1
    };
    let lanes = SparseLanes {
        e: &mut st.e,
        a: &mut st.a,
        psum: &mut st.psum,
        pmax: &mut st.pmax,
        cum: &mut st.cum,
        cum_n: &mut st.cum_n,
        out: out.view_mut(),
    };
    if p.kind == 1 && p.agg == Aggregation::Last && exp_last_table_pays(plan, b, nc) {
        return sparse_exp_last(&mut st.scratch, lanes, p, jt, plan, b, parts);
    }
    let run: fn(&Params, &JumpTable, &Plan, &Buckets, usize, SparseLanes<'_>) =
        match (p.kind, p.agg) {
            (0, Aggregation::Last) => sparse_lanes::<0, false, false>,
            (0, Aggregation::Max) => sparse_lanes::<0, false, true>,
            (0, _) => sparse_lanes::<0, true, false>,
            (1, Aggregation::Last) => sparse_lanes::<1, false, false>,
            (1, Aggregation::Max) => sparse_lanes::<1, false, true>,
            (1, _) => sparse_lanes::<1, true, false>,
            (_, Aggregation::Last) => sparse_lanes::<2, false, false>,
            (_, Aggregation::Max) => sparse_lanes::<2, false, true>,
            (_, _) => sparse_lanes::<2, true, false>,
        };
    par_split(lanes, parts, 8, &|range, l| {
        run(p, jt, plan, b, range.start, l)
    });
}

/// [`sparse`] for the channels `c0..` of `l`, the kernel and aggregation fixed at compile
/// time.
fn sparse_lanes<const KIND: u32, const SUM: bool, const MAX: bool>(
    p: &Params,
    jt: &JumpTable,
    plan: &Plan,
    b: &Buckets,
    c0: usize,
    mut l: SparseLanes<'_>,
) {
    for j in 0..l.e.len() {
        let c = c0 + j;
        let ev = b.offsets[c]..b.offsets[c + 1];
        let (rel, val) = (&b.rel[ev.clone()], &b.value[ev]);
        let (mut e, mut a) = (l.e[j], l.a[j]);
        let (mut cum, mut cum_n) = (l.cum[j], l.cum_n[j]);
        let mut i = 0;
        for seg in &plan.segments {
            let (mut sum, mut max) = if seg.continues {
                (l.psum[j], l.pmax[j])
            } else {
                (0.0, f64::NEG_INFINITY)
            };
            let mut cur = seg.start;
            while i < rel.len() && (rel[i] as u64) < seg.end {
                let t = rel[i] as u64;
                let mut w = 0.0;
                let mut n = 0u64;
                while i < rel.len() && rel[i] as u64 == t {
                    w += if p.scale_by_value { val[i] as f64 } else { 1.0 } * p.wscale;
                    n += 1;
                    i += 1;
                }
                let (s, m) = stretch::<KIND, SUM, MAX>(jt, &mut e, &mut a, t - cur);
                if SUM {
                    sum += s;
                }
                if MAX {
                    max = max.max(m);
                }
                if KIND == 0 {
                    sum += w;
                    max = max.max(w);
                    cum += w;
                    cum_n += n;
                    cur = t + 1;
                } else {
                    e += w;
                    cur = t;
                }
            }
            let (s, m) = stretch::<KIND, SUM, MAX>(jt, &mut e, &mut a, seg.end - cur);
            if SUM {
                sum += s;
            }
            if MAX {
                max = max.max(m);
            }
            match seg.row {
                Some(r) => {
                    l.out[[r, j]] = bin_output(p, seg, sum, max, (e, a, cum, cum_n));
                    l.psum[j] = 0.0;
                    l.pmax[j] = f64::NEG_INFINITY;
                }
                None => {
                    l.psum[j] = sum;
                    l.pmax[j] = max;
                }
            }
        }
        (l.e[j], l.a[j], l.cum[j], l.cum_n[j]) = (e, a, cum, cum_n);
    }
}

/// Whether a per-sample segment table (one entry per sample of the chunk) costs less than
/// the work it serves.
fn exp_last_table_pays(plan: &Plan, b: &Buckets, nc: usize) -> bool {
    let samples = plan.segments.last().map_or(0, |s| s.end) as usize;
    samples <= 4 * (b.rel.len() + plan.segments.len() * nc)
        && plan.segments.len() < u32::MAX as usize
}

/// Exponential + Last without branches on the data: with `d^len` of each segment shared by
/// all channels, a channel's activation at each segment's end is
/// `e_end = e_start·d^len + Σ_events w·d^(end − t)`. The events' sums are scattered into
/// their segments (found through a per-sample table), then one pass over the segments
/// carries the state. Each term is one rounding of a table power and a product, so the
/// result differs from the event-by-event recurrence by a few `f64` ulps.
fn sparse_exp_last(
    sc: &mut ChunkScratch,
    lanes: SparseLanes<'_>,
    p: &Params,
    jt: &JumpTable,
    plan: &Plan,
    b: &Buckets,
    parts: usize,
) {
    sc.seg_of.clear();
    sc.seg_pow.clear();
    for (k, seg) in plan.segments.iter().enumerate() {
        sc.seg_of.extend(std::iter::repeat_n(
            k as u32,
            (seg.end - seg.start) as usize,
        ));
        sc.seg_pow.push(jt.pow(seg.end - seg.start));
    }
    let (seg_of, seg_pow) = (&sc.seg_of, &sc.seg_pow);
    par_split(lanes, parts, 8, &|range, mut l| {
        SEGMENT_SUMS.with_borrow_mut(|acc| {
            for j in 0..l.e.len() {
                let c = range.start + j;
                let ev = b.offsets[c]..b.offsets[c + 1];
                acc.clear();
                acc.resize(plan.segments.len(), 0.0);
                for (&t, &v) in b.rel[ev.clone()].iter().zip(&b.value[ev]) {
                    let k = seg_of[t as usize] as usize;
                    let w = if p.scale_by_value { v as f64 } else { 1.0 } * p.wscale;
                    acc[k] += w * jt.pow(plan.segments[k].end - t as u64);
                }
                let mut e = l.e[j];
                for ((seg, &dl), &s) in plan.segments.iter().zip(seg_pow).zip(acc.iter()) {
                    e = e * dl + s;
                    if let Some(r) = seg.row {
                        l.out[[r, j]] = (e * seg.out_scale) as f32;
                    }
                }
                l.e[j] = e;
            }
        })
    });
}

thread_local! {
    /// Per-thread sums of a channel's events per segment (reused from chunk to chunk).
    static SEGMENT_SUMS: std::cell::RefCell<Vec<f64>> = const { std::cell::RefCell::new(Vec::new()) };
}
