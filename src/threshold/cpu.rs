//! The CPU engine of threshold crossing: a sequential scan per channel, running statistics in
//! `f64`.
//!
//! The chunk is walked row by row (time-major, memory in order). Each row takes two passes
//! over the channels: the first decides "over threshold" for every channel (branch-free, so
//! the compiler vectorises it; with auto-scaling it also steps the running statistics); the
//! second visits only channels with something to do — a new crossing, or an open peak.

use ndarray::ArrayView2;

use super::{comparison_value, Params};
use crate::events::Event;

/// An event whose peak window is still open.
#[derive(Debug, Clone, Copy, Default)]
struct Open {
    /// Absolute sample of the crossing.
    cross: u64,
    /// Over-threshold samples in the window so far (≥ 1).
    run: u64,
    /// Absolute sample of the most extreme raw value so far.
    peak: u64,
    /// That value.
    peak_val: f32,
}

/// Per-channel streaming state, one vector per field.
#[derive(Debug, Clone, Default)]
pub(crate) struct CpuState {
    /// Whether the stream has had a sample (every channel gets every sample).
    started: bool,
    /// Previous sample over threshold (0/1).
    prev: Vec<u8>,
    /// An event is open (0/1); its details are in `open`.
    is_open: Vec<u8>,
    open: Vec<Open>,
    /// Reported sample of the last accepted event.
    last: Vec<Option<u64>>,
    /// Running mean and variance (auto-scaling).
    mean: Vec<f64>,
    var: Vec<f64>,
    /// Scratch: this row's over-threshold flags, the channels to visit, and the comparison
    /// constants.
    over: Vec<u8>,
    trig: Vec<u8>,
    flip32: Vec<f32>,
    cmp32: Vec<f32>,
    flip64: Vec<f64>,
    cmp64: Vec<f64>,
}

impl CpuState {
    fn ensure(&mut self, nc: usize) {
        if self.prev.len() != nc {
            *self = CpuState {
                started: false,
                prev: vec![0; nc],
                is_open: vec![0; nc],
                open: vec![Open::default(); nc],
                last: vec![None; nc],
                mean: vec![0.0; nc],
                var: vec![0.0; nc],
                over: vec![0; nc],
                trig: vec![0; nc],
                ..Default::default()
            };
        }
    }
}

/// Runs one non-empty, validated chunk starting at absolute sample `start`; returns its
/// events sorted by `(sample, channel)`.
pub(crate) fn process(
    st: &mut CpuState,
    p: &Params,
    thr: &[f64],
    chunk: ArrayView2<'_, f32>,
    start: u64,
) -> Vec<Event> {
    let (_, nc) = chunk.dim();
    st.ensure(nc);
    // Comparisons as `value·flip ≥ cmp·flip` (negation is exact): the raw f32 sample against
    // the threshold rounded outward to f32 (exactly equivalent), or the f64 z-score against
    // the f64 threshold.
    st.flip32.clear();
    st.cmp32.clear();
    st.flip64.clear();
    st.cmp64.clear();
    for &t in thr {
        let (v, dir) = comparison_value(t);
        st.flip32.push(dir);
        st.cmp32.push(v * dir);
        st.flip64.push(dir as f64);
        st.cmp64.push(t * dir as f64);
    }
    let data = chunk.as_standard_layout();
    let Some(flat) = data.as_slice() else {
        return Vec::new();
    };
    let mut events = Vec::new();
    let auto = p.alpha > 0.0;
    for (i, row) in flat.chunks_exact(nc).enumerate() {
        let s = start + i as u64;
        if auto {
            over_z(st, p, row);
        } else {
            for (((o, &x), &f), &t) in st.over.iter_mut().zip(row).zip(&st.flip32).zip(&st.cmp32) {
                *o = (x * f >= t) as u8;
            }
        }
        if st.started {
            // Channels with something to do: an open peak, or a new crossing. Found eight at
            // a time; most rows have none.
            for (t, ((&o, &pv), &op)) in st
                .trig
                .iter_mut()
                .zip(st.over.iter().zip(&st.prev).zip(&st.is_open))
            {
                *t = op | (o & (pv ^ 1));
            }
            for k in 0..nc.div_ceil(8) {
                let lanes = &st.trig[8 * k..(8 * k + 8).min(nc)];
                let none = match <[u8; 8]>::try_from(lanes) {
                    Ok(w) => u64::from_ne_bytes(w) == 0,
                    Err(_) => lanes.iter().all(|&b| b == 0),
                };
                if none {
                    continue;
                }
                let base = 8 * k;
                for (j, &x) in row[base..base + lanes.len()].iter().enumerate() {
                    let c = base + j;
                    if st.trig[c] != 0 {
                        let over = st.over[c] != 0;
                        step(st, p, c, s, x, over, &mut events);
                    }
                }
            }
        }
        std::mem::swap(&mut st.prev, &mut st.over);
        st.started = true;
    }
    events.sort_unstable_by_key(|e| (e.sample, e.channel));
    events
}

/// Steps the running statistics of every channel by `row` and sets `over` from the z-scores.
fn over_z(st: &mut CpuState, p: &Params, row: &[f32]) {
    let (a, oma) = (p.alpha, p.one_minus_alpha);
    if !st.started {
        for (m, &x) in st.mean.iter_mut().zip(row) {
            *m = x as f64;
        }
        st.var.fill(0.0);
    }
    let started = st.started;
    let it = st
        .over
        .iter_mut()
        .zip(row)
        .zip(st.mean.iter_mut().zip(st.var.iter_mut()))
        .zip(st.flip64.iter().zip(&st.cmp64));
    for (((o, &x), (m, v)), (&f, &t)) in it {
        let x = x as f64;
        if started {
            let delta = x - *m;
            *m += a * delta;
            *v = oma * (*v + a * delta * delta);
        }
        let z = if *v > 0.0 { (x - *m) / v.sqrt() } else { 0.0 };
        *o = (z * f >= t) as u8;
    }
}

/// The slow path of channel `c` at absolute sample `s`: a crossing, or an open peak.
fn step(st: &mut CpuState, p: &Params, c: usize, s: u64, x: f32, over: bool, out: &mut Vec<Event>) {
    let positive = st.flip32[c] > 0.0;
    let mut accept = |last: &mut Option<u64>, sample: u64, value: f32| {
        out.push(Event {
            sample,
            channel: c as u32,
            value,
        });
        *last = Some(sample);
    };
    if st.is_open[c] != 0 {
        let o = &mut st.open[c];
        // Resolved by the return across threshold, or by the window's last sample.
        let resolved = if over {
            o.run += 1;
            let better = if positive {
                x > o.peak_val
            } else {
                x < o.peak_val
            };
            if better {
                o.peak = s;
                o.peak_val = x;
            }
            o.run >= p.max_width
        } else {
            true
        };
        if resolved {
            st.is_open[c] = 0;
            if over || o.run >= p.min_width {
                let sample = if p.align { o.peak } else { o.cross };
                let value = if p.return_val { o.peak_val } else { 1.0 };
                accept(&mut st.last[c], sample, value);
            }
        }
        return;
    }
    // A crossing (`over` and the previous sample was not).
    if st.last[c].is_some_and(|l| s - l <= p.refrac) {
        return;
    }
    if !p.peak_mode || p.max_width <= 1 {
        let value = if p.return_val { x } else { 1.0 };
        accept(&mut st.last[c], s, value);
    } else {
        st.is_open[c] = 1;
        st.open[c] = Open {
            cross: s,
            run: 1,
            peak: s,
            peak_val: x,
        };
    }
}
