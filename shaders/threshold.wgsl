// Threshold-crossing event detection (SPEC §1, end). The definition, and the CPU twin, are in
// src/threshold/{mod.rs, cpu.rs}; the host half is src/threshold/gpu.rs.
//
// Entry point `detect`: one invocation per channel walks the rows of one piece of the chunk in
// order (input is time-major, so neighbouring invocations read neighbouring addresses), keeps
// the channel's streaming state in registers, and appends its events to its own slots. The host
// splits a chunk into row pieces (state chained piece to piece through state_in/state_out) of
// at most 16 384 rows, and into channel groups only when a binding would exceed the device's
// limit; a chunk of up to 16 384 rows is one dispatch.
//
// Loop bound: the row loop below is the kernel's only loop (no search or copy loops), one
// iteration per row of the piece, so an invocation runs at most 16 384 loop iterations.
// llvmpipe (lavapipe and GL) silently ends an invocation after 65 535 iterations in total;
// keep any loop added here inside that budget together with the row loop
// (MAX_ROWS_PER_DISPATCH in src/threshold/gpu.rs).
//
// Bindings (group 0):
//   0 params      uniform     Params of this dispatch
//   1 samples     storage r   f32 (rows, n_channels), rows of this piece only
//   2 thresholds  storage r   per channel (comparison value, direction +1 / −1)
//   3 state_in    storage r   State per channel (committed, or the previous piece's output)
//   4 state_out   storage rw  State per channel
//   5 slots       storage rw  events of this channel group: `capacity` vec2<u32> per channel,
//                             (sample − chunk start as bitcast i32, value as bitcast f32)
//   6 counts      storage rw  events per channel in this chunk (may exceed `capacity`: the host
//                             then re-runs the chunk from the committed state with more slots)
//   7 status      storage rw  atomicMax of ~row over rows holding a non-finite sample (0: none)
//
// Invariants the host guarantees: `capacity ≥ 1`; `rows` ≤ 16 384; rows·n_channels, group·capacity < 2³²; the
// chunk is shorter than 2³¹ samples and `max_width` < 2³¹, so relative samples fit an i32;
// `refrac` ≤ 2³² − 2, so the saturated `since` (2³² − 1: no event yet, or very long ago) is
// never refractory. Threshold comparison values are pre-rounded on the host (up for ≥, down
// for ≤) so that comparing in f32 equals comparing against the exact f64 threshold.

override WG_SIZE: u32 = 64u;
// MODE_* bits, fixed per operator and compiled in: llvmpipe runs both sides of a branch on a
// uniform value (the running statistics' square root and division every row, in every mode).
override MODE: u32 = 0u;

const MODE_PEAK: u32 = 1u;
const MODE_ALIGN: u32 = 2u;
const MODE_VALUE: u32 = 4u;
const MODE_AUTOSCALE: u32 = 8u;

const FLAG_STARTED: u32 = 1u;
const FLAG_PREV_OVER: u32 = 2u;
const FLAG_OPEN: u32 = 4u;

const SINCE_NEVER: u32 = 0xffffffffu;

struct Params {
    n_channels: u32,      // channels of the chunk (row stride)
    c0: u32,              // first channel of this dispatch's group
    group_channels: u32,  // channels in the group
    rows: u32,            // rows in this piece
    row0: u32,            // first row of this piece within the chunk
    capacity: u32,        // slots per channel
    pad: u32,
    refrac: u32,          // refractory width in samples
    max_width: u32,       // peak window in samples (≥ 1)
    min_width: u32,       // minimum run in samples (≤ max_width)
    alpha: f32,           // running-statistics weight of the new sample
    one_minus_alpha: f32, // 1 − alpha, rounded from f64
}

struct State {
    flags: u32,     // FLAG_* bits
    since: u32,     // current sample − reported sample of the last accepted event (saturating)
    run: u32,       // open event: over-threshold samples so far
    peak_off: u32,  // open event: peak sample − crossing sample
    peak_val: f32,  // open event: raw peak value
    mean: f32,      // running mean
    variance: f32,  // running variance
    pad: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> samples: array<f32>;
@group(0) @binding(2) var<storage, read> thresholds: array<vec2<f32>>;
@group(0) @binding(3) var<storage, read> state_in: array<State>;
@group(0) @binding(4) var<storage, read_write> state_out: array<State>;
@group(0) @binding(5) var<storage, read_write> slots: array<vec2<u32>>;
@group(0) @binding(6) var<storage, read_write> counts: array<u32>;
@group(0) @binding(7) var<storage, read_write> status: array<atomic<u32>>;

@compute @workgroup_size(WG_SIZE)
fn detect(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let g = (wid.x + wid.y * nwg.x) * WG_SIZE + lid;
    if g >= params.group_channels {
        return;
    }
    let c = params.c0 + g;
    let stride = params.n_channels;
    let cap = params.capacity;
    let thr = thresholds[c];
    let positive = thr.y > 0.0;
    let peak_mode = (MODE & MODE_PEAK) != 0u;
    let align = (MODE & MODE_ALIGN) != 0u;
    let ret_val = (MODE & MODE_VALUE) != 0u;
    let autoscale = (MODE & MODE_AUTOSCALE) != 0u;

    var st = state_in[c];
    var started = (st.flags & FLAG_STARTED) != 0u;
    var prev_over = (st.flags & FLAG_PREV_OVER) != 0u;
    var open = (st.flags & FLAG_OPEN) != 0u;
    var count = 0u;
    if params.row0 != 0u {
        count = counts[c];
    }
    // Every parameter the row loop reads, loaded once: llvmpipe reloads (and bounds-checks) a
    // buffer read inside a loop that also stores to a buffer.
    let rows = params.rows;
    let row0 = params.row0;
    let alpha = params.alpha;
    let one_minus_alpha = params.one_minus_alpha;
    let max_width = params.max_width;
    let min_width = params.min_width;
    let refrac = params.refrac;
    var bad = SINCE_NEVER; // the first row holding a non-finite sample, if any

    for (var i = 0u; i < rows; i++) {
        let x = samples[i * stride + c];
        let t = row0 + i;
        // Non-finite by its bits (NaN comparisons may be optimised away).
        // The atomic comes after the loop: llvmpipe runs an atomic as a loop over its lanes,
        // which inside the row loop costs every row that loop even when no lane takes it.
        if (bitcast<u32>(x) & 0x7f800000u) == 0x7f800000u {
            bad = t;
            break;
        }
        var d = x;
        if autoscale {
            if started {
                let delta = x - st.mean;
                st.mean = st.mean + alpha * delta;
                st.variance = one_minus_alpha * (st.variance + alpha * delta * delta);
            } else {
                st.mean = x;
                st.variance = 0.0;
            }
            d = select(0.0, (x - st.mean) / sqrt(st.variance), st.variance > 0.0);
        }
        let over = select(d <= thr.x, d >= thr.x, positive);
        st.since = select(st.since + 1u, SINCE_NEVER, st.since == SINCE_NEVER);

        var emit = false;
        var value = 1.0;
        if open {
            // Resolved by the return across threshold, or by the window's last sample.
            var resolved = true;
            var back = st.run; // resolving sample − crossing sample
            if over {
                st.run += 1u;
                let better = select((x < st.peak_val), (x > st.peak_val), positive);
                if better {
                    st.peak_val = x;
                    st.peak_off = st.run - 1u;
                }
                resolved = st.run >= max_width;
                back = st.run - 1u;
            }
            if resolved {
                open = false;
                if over || st.run >= min_width {
                    emit = true;
                    st.since = back - select(0u, st.peak_off, align);
                    value = select(1.0, st.peak_val, ret_val);
                }
            }
        } else if over && !prev_over && started && st.since > refrac {
            if !peak_mode || max_width <= 1u {
                emit = true;
                st.since = 0u;
                value = select(1.0, x, ret_val);
            } else {
                open = true;
                st.run = 1u;
                st.peak_off = 0u;
                st.peak_val = x;
            }
        }
        if emit {
            if count < cap {
                let rel = i32(t) - i32(st.since);
                slots[g * cap + count] = vec2<u32>(bitcast<u32>(rel), bitcast<u32>(value));
            }
            count += 1u;
        }
        prev_over = over;
        started = true;
    }

    if bad != SINCE_NEVER {
        atomicMax(&status[0], ~bad);
    }
    st.flags = select(0u, FLAG_STARTED, started) | select(0u, FLAG_PREV_OVER, prev_over)
        | select(0u, FLAG_OPEN, open);
    state_out[c] = st;
    counts[c] = count;
}
