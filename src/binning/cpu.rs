//! The CPU engine of binned kernel activation: `f64` state, one rounding at the output.

use ndarray::{Array2, ArrayView2};

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
    scratch: DenseScratch,
}

/// The dense path's buffers: a snapshot of the state to roll back to, and per-channel
/// partials; kept so a warm stream allocates nothing per chunk.
#[derive(Debug, Clone, Default)]
struct DenseScratch {
    /// `e, a, psum, pmax, cum` of the snapshot, one after another.
    f: Vec<f64>,
    cum_n: Vec<u64>,
    sum: Vec<f64>,
    max: Vec<f64>,
    counts: Vec<u32>,
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
                scratch: DenseScratch {
                    f: vec![0.0; 5 * n],
                    cum_n: vec![0; n],
                    sum: vec![0.0; n],
                    max: vec![0.0; n],
                    counts: vec![0; n],
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
        let raw = match p.agg {
            Aggregation::Sum | Aggregation::Mean => sum,
            Aggregation::Max => max,
            Aggregation::Last => match p.kind {
                0 if p.scale_by_value => self.cum[c],
                0 => self.cum_n[c] as f64,
                1 => self.e[c],
                _ => self.a[c],
            },
        };
        (raw * seg.out_scale) as f32
    }
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
    let DenseScratch {
        sum, max, counts, ..
    } = &mut scratch;
    let d = jt.d;
    let inv_tau = jt.inv_tau;
    for seg in &plan.segments {
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
        let fast = p.kind == 0 && !p.scale_by_value && p.agg != Aggregation::Max;
        if !fast && !T::IS_BYTE {
            all_finite &= seg_data.iter().all(|x| x.to_f32().is_finite());
        }
        match p.kind {
            0 if fast => {
                // Hot path: exact integer counts.
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

/// Adds each channel's nonzero count over whole rows of `nc` channels to `counts`; returns
/// whether every value was finite. Uses AVX2 when the CPU has it.
fn count_rows(data: &[f32], nc: usize, counts: &mut [u32]) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
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

/// A run of `l ≥ 1` samples without events from pre-state `(e, a)`: returns the run's
/// activation sum and max, and advances the state.
pub(crate) fn stretch(p: &Params, jt: &JumpTable, e: &mut f64, a: &mut f64, l: u64) -> (f64, f64) {
    if p.kind == 0 || l == 0 {
        return (0.0, if l == 0 { f64::NEG_INFINITY } else { 0.0 });
    }
    let it = jt.inv_tau;
    let (need_sum, need_max) = match p.agg {
        Aggregation::Sum | Aggregation::Mean => (true, false),
        Aggregation::Max => (false, true),
        Aggregation::Last => (false, false),
    };
    // Only the aggregation asked for is computed: Last needs just `d^L`.
    let [dl, g, h] = if need_sum {
        jt.jump(l)
    } else {
        [jt.pow(l), 0.0, 0.0]
    };
    let (mut sum, mut max) = (0.0, f64::NEG_INFINITY);
    if p.kind == 1 {
        if need_sum {
            sum = *e * g;
        }
        if need_max {
            max = e.max(*e * jt.pow(l - 1));
        }
        *e *= dl;
    } else {
        if need_sum {
            sum = *a * g + *e * it * h;
        }
        if need_max {
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

/// Sparse input: per channel, jumps between events — `O(events + bins)`.
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
    for c in 0..nc {
        let ev = b.offsets[c]..b.offsets[c + 1];
        let (rel, val) = (&b.rel[ev.clone()], &b.value[ev]);
        let mut i = 0;
        for seg in &plan.segments {
            let (mut sum, mut max) = if seg.continues {
                (st.psum[c], st.pmax[c])
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
                let (s, m) = stretch(p, jt, &mut st.e[c], &mut st.a[c], t - cur);
                sum += s;
                max = max.max(m);
                if p.kind == 0 {
                    sum += w;
                    max = max.max(w);
                    st.cum[c] += w;
                    st.cum_n[c] += n;
                    cur = t + 1;
                } else {
                    st.e[c] += w;
                    cur = t;
                }
            }
            let (s, m) = stretch(p, jt, &mut st.e[c], &mut st.a[c], seg.end - cur);
            sum += s;
            max = max.max(m);
            match seg.row {
                Some(r) => {
                    out[[r, c]] = st.output(p, seg, c, sum, max);
                    st.psum[c] = 0.0;
                    st.pmax[c] = f64::NEG_INFINITY;
                }
                None => {
                    st.psum[c] = sum;
                    st.pmax[c] = max;
                }
            }
        }
    }
}
