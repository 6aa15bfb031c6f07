// Binned kernel activation (SPEC §1). Three entry points share one layout:
//   dense_local  — per (segment, channel): the segment's own contribution from a zero state;
//   dense_finish — per (segment, channel): incoming state composed from the carried state and
//                  earlier segments' contributions, then the segment walked sample by sample;
//   sparse       — per channel: jumps between events, O(events + bins).
// A segment is the part of one bin inside the chunk (a long bin is cut into pieces); the last
// segment is the bin left open. The host cuts the chunk's segments into windows, one dispatch
// (two for dense_local + dense_finish) each, run in order within one submission, the state
// passed from window to window through the state buffers. Windows bound the loop iterations
// of every invocation (at most 4 096 segments and 16 384 samples per window), since some
// drivers (Mesa llvmpipe) silently stop an invocation after 65 535 loop iterations.
// kind: 0 Count, 1 Exponential, 2 Alpha. agg: 0 Last, 1 Mean, 2 Sum, 3 Max.

struct Params {
    n_ch: u32,
    n_seg: u32,
    n_samples: u32,
    kind: u32,
    agg: u32,
    scale: u32,
    input_u8: u32,
    cap: u32,
    merged: u32,
    pad0: u32,
    pad1: u32,
    pad2: u32,
    wscale: f32,
    inv_tau: f32,
    d_hi: f32,
    d_lo: f32,
}

struct Seg {
    start: u32,
    end: u32,
    row: i32,
    cont: u32,
    out_scale: f32,
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

// The window of segments one dispatch covers.
struct Win {
    seg0: u32,
    seg1: u32,
    pad0: u32,
    pad1: u32,
}

// The operator's settings, fixed when its pipelines are built so that the per-sample loops
// carry no branches on them (the same values are in `Params` as `kind`, `agg`, `scale`).
override KIND: u32 = 0u;
override AGG: u32 = 0u;
override SCALE: bool = false;
// The dense input's element type (u8 when true, else f32; `Params.input_u8` holds the same).
override INPUT_U8: bool = false;

// No sample seen yet in the open bin (a finite sentinel: some compilers assume no infinities).
const NO_MAX: f32 = -3.4028235e38;

@group(0) @binding(0) var<uniform> P: Params;
// Jump table: row j = (d^(2^j), G(2^j), H(2^j), 0).
@group(0) @binding(1) var<uniform> J: array<vec4<f32>, 32>;
@group(0) @binding(2) var<storage, read> segs: array<Seg>;
// Dense: f32 bits or bytes packed 4 per word, (samples, channels) row-major.
// Sparse: per channel `cap` slots of (relative sample as i32 bits, value as f32 bits).
@group(0) @binding(3) var<storage, read> input: array<u32>;
@group(0) @binding(4) var<storage, read> counts: array<u32>;
// Carried state per channel: (E, A, partial sum, partial max); Count keeps its cumulative
// weight in E. Exact cumulative event count as (lo, hi).
@group(0) @binding(5) var<storage, read> state_in: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read> cum_in: array<vec2<u32>>;
@group(0) @binding(7) var<storage, read_write> state_out: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read_write> cum_out: array<vec2<u32>>;
@group(0) @binding(9) var<storage, read_write> out: array<f32>;
// Per (segment, channel) contribution from a zero state: (E, A, weight sum, 0) and count.
@group(0) @binding(10) var<storage, read_write> summ: array<vec4<f32>>;
@group(0) @binding(11) var<storage, read_write> summ_n: array<u32>;
// [0]: number of events outside their chunk (device events only).
@group(0) @binding(12) var<storage, read_write> flags: array<atomic<u32>>;
@group(0) @binding(13) var<uniform> W: Win;

fn thread_id(wid: vec3<u32>, nwg: vec3<u32>, lid: vec3<u32>) -> u32 {
    return (wid.x + wid.y * nwg.x) * 64u + lid.x;
}

fn sample_value(s: u32, c: u32) -> f32 {
    let i = s * P.n_ch + c;
    if (INPUT_U8) {
        let word = input[i >> 2u];
        return f32((word >> ((i & 3u) * 8u)) & 0xffu);
    }
    return bitcast<f32>(input[i]);
}

fn weight_of(x: f32) -> f32 {
    if (x == 0.0) {
        return 0.0;
    }
    if (SCALE) {
        return x * P.wscale;
    }
    return P.wscale;
}

// x·d with d carried as hi + lo, so that stepping many samples does not drift.
fn decay1(x: f32) -> f32 {
    return fma(x, P.d_hi, x * P.d_lo);
}

// One step of `jump`: composes the block of 2^j samples when bit j of l is set.
fn jump_bit(acc: vec4<f32>, l: u32, j: u32) -> vec4<f32> {
    if (((l >> j) & 1u) == 0u) {
        return acc;
    }
    let e = J[j];
    // acc = (d^done, G(done), H(done), done)
    let h = acc.z + acc.x * (e.z + acc.w * e.y);
    let g = acc.y + acc.x * e.y;
    return vec4<f32>(acc.x * e.x, g, h, acc.w + f32(1u << j));
}

// (d^L, G(L), H(L)) composed from the jump table; positive terms only. Written without a
// loop (32 straight-line steps) so it costs no loop iterations.
fn jump(l: u32) -> vec3<f32> {
    var a = vec4<f32>(1.0, 0.0, 0.0, 0.0);
    a = jump_bit(a, l, 0u); a = jump_bit(a, l, 1u); a = jump_bit(a, l, 2u); a = jump_bit(a, l, 3u);
    a = jump_bit(a, l, 4u); a = jump_bit(a, l, 5u); a = jump_bit(a, l, 6u); a = jump_bit(a, l, 7u);
    a = jump_bit(a, l, 8u); a = jump_bit(a, l, 9u); a = jump_bit(a, l, 10u); a = jump_bit(a, l, 11u);
    a = jump_bit(a, l, 12u); a = jump_bit(a, l, 13u); a = jump_bit(a, l, 14u); a = jump_bit(a, l, 15u);
    a = jump_bit(a, l, 16u); a = jump_bit(a, l, 17u); a = jump_bit(a, l, 18u); a = jump_bit(a, l, 19u);
    a = jump_bit(a, l, 20u); a = jump_bit(a, l, 21u); a = jump_bit(a, l, 22u); a = jump_bit(a, l, 23u);
    a = jump_bit(a, l, 24u); a = jump_bit(a, l, 25u); a = jump_bit(a, l, 26u); a = jump_bit(a, l, 27u);
    a = jump_bit(a, l, 28u); a = jump_bit(a, l, 29u); a = jump_bit(a, l, 30u); a = jump_bit(a, l, 31u);
    return a.xyz;
}

fn add_cum(c: vec2<u32>, n: u32) -> vec2<u32> {
    let lo = c.x + n;
    return vec2<u32>(lo, c.y + select(0u, 1u, lo < n));
}

// Running values of one channel while a segment is walked.
struct Run {
    e: f32,
    a: f32,
    sum: f32,
    mx: f32,
    cum: vec2<u32>,
}

fn bin_value(r: Run) -> f32 {
    if (AGG == 0u) {
        if (KIND == 0u) {
            if (SCALE) {
                return r.e;
            }
            return f32(r.cum.y) * 4294967296.0 + f32(r.cum.x);
        }
        if (KIND == 1u) {
            return r.e;
        }
        return r.a;
    }
    if (AGG == 3u) {
        return r.mx;
    }
    return r.sum;
}

// A run of l >= 1 samples without events (Exponential/Alpha; Count adds a zero sample).
fn stretch(r: ptr<function, Run>, l: u32) {
    if (l == 0u) {
        return;
    }
    if (KIND == 0u) {
        (*r).mx = max((*r).mx, 0.0);
        return;
    }
    let jl = jump(l);
    let e = (*r).e;
    let a = (*r).a;
    let it = P.inv_tau;
    let want_sum = AGG == 1u || AGG == 2u;
    let want_max = AGG == 3u;
    if (KIND == 1u) {
        if (want_sum) {
            (*r).sum = (*r).sum + e * jl.y;
        }
        if (want_max) {
            (*r).mx = max((*r).mx, max(e, e * jump(l - 1u).x));
        }
        (*r).e = e * jl.x;
        return;
    }
    if (want_sum) {
        (*r).sum = (*r).sum + a * jl.y + e * it * jl.z;
    }
    if (want_max) {
        var m = max(a, jump(l - 1u).x * (a + f32(l - 1u) * e * it));
        if (e != 0.0) {
            let star = (1.0 - a / e) / it;
            if (star > 0.0 && star < f32(l - 1u)) {
                let i0 = u32(floor(star));
                let i1 = min(i0 + 1u, l - 1u);
                m = max(m, jump(i0).x * (a + f32(i0) * e * it));
                m = max(m, jump(i1).x * (a + f32(i1) * e * it));
            }
        }
        (*r).mx = max((*r).mx, m);
    }
    (*r).a = jl.x * (a + f32(l) * e * it);
    (*r).e = e * jl.x;
}

// One dense sample of weight w.
fn step(r: ptr<function, Run>, w: f32) {
    var act: f32;
    if (KIND == 0u) {
        act = w;
        (*r).e = (*r).e + w;
        (*r).cum = add_cum((*r).cum, select(0u, 1u, w != 0.0));
    } else if (KIND == 1u) {
        act = (*r).e + w;
        (*r).e = decay1(act);
    } else {
        let ep = (*r).e + w;
        act = (*r).a;
        (*r).a = decay1((*r).a + ep * P.inv_tau);
        (*r).e = decay1(ep);
    }
    (*r).sum = (*r).sum + act;
    (*r).mx = max((*r).mx, act);
}

// Writes a finished segment: its bin (if it completes one), and, for the window's last
// segment, the state the next window or chunk starts from.
fn finish(c: u32, j: u32, sg: Seg, r: Run) {
    if (sg.row >= 0) {
        out[u32(sg.row) * P.n_ch + c] = bin_value(r) * sg.out_scale;
    }
    if (j + 1u == W.seg1) {
        if (sg.row >= 0) {
            state_out[c] = vec4<f32>(r.e, r.a, 0.0, NO_MAX);
        } else {
            state_out[c] = vec4<f32>(r.e, r.a, r.sum, r.mx);
        }
        cum_out[c] = r.cum;
    }
}

fn start_run(c: u32, sg: Seg, e: f32, a: f32, cum: vec2<u32>) -> Run {
    var r: Run;
    r.e = e;
    r.a = a;
    r.cum = cum;
    r.sum = 0.0;
    r.mx = NO_MAX;
    if (sg.cont == 1u) {
        let st = state_in[c];
        r.sum = st.z;
        r.mx = st.w;
    }
    return r;
}

@compute @workgroup_size(64)
fn dense_local(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_id) lid: vec3<u32>) {
    let id = thread_id(wid, nwg, lid);
    if (id >= (W.seg1 - W.seg0) * P.n_ch) {
        return;
    }
    let j = W.seg0 + id / P.n_ch;
    let c = id % P.n_ch;
    let sg = segs[j];
    var r: Run;
    r.e = 0.0;
    r.a = 0.0;
    r.sum = 0.0;
    r.mx = NO_MAX;
    r.cum = vec2<u32>(0u, 0u);
    for (var s = sg.start; s < sg.end; s = s + 1u) {
        step(&r, weight_of(sample_value(s, c)));
    }
    summ[j * P.n_ch + c] = vec4<f32>(r.e, r.a, 0.0, 0.0);
    summ_n[j * P.n_ch + c] = r.cum.x;
}

@compute @workgroup_size(64)
fn dense_finish(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_id) lid: vec3<u32>) {
    let id = thread_id(wid, nwg, lid);
    if (id >= (W.seg1 - W.seg0) * P.n_ch) {
        return;
    }
    let j = W.seg0 + id / P.n_ch;
    let c = id % P.n_ch;
    // Incoming state: the carried state pushed through the window's segments before this one.
    var e = state_in[c].x;
    var a = state_in[c].y;
    var cum = cum_in[c];
    for (var i = W.seg0; i < j; i = i + 1u) {
        let si = segs[i];
        let k = i * P.n_ch + c;
        let loc = summ[k];
        if (KIND == 0u) {
            e = e + loc.x;
            cum = add_cum(cum, summ_n[k]);
        } else {
            let l = si.end - si.start;
            let dl = jump(l).x;
            a = dl * (a + f32(l) * e * P.inv_tau) + loc.y;
            e = dl * e + loc.x;
        }
    }
    let sg = segs[j];
    var r = start_run(c, sg, e, a, cum);
    for (var s = sg.start; s < sg.end; s = s + 1u) {
        step(&r, weight_of(sample_value(s, c)));
    }
    finish(c, j, sg, r);
}

// Relative sample of channel c's k-th event.
fn ev_rel(base: u32, k: u32) -> i32 {
    return bitcast<i32>(input[2u * (base + k)]);
}

@compute @workgroup_size(64)
fn sparse(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_id) lid: vec3<u32>) {
    let c = thread_id(wid, nwg, lid);
    if (c >= P.n_ch) {
        return;
    }
    let n_ev = min(counts[c], P.cap);
    let base = c * P.cap;
    let first = W.seg0 == 0u;
    let last = W.seg1 == P.n_seg;
    if (first && counts[c] > P.cap) {
        atomicAdd(&flags[0], 1u);
    }
    // First event of the window: binary search over the channel's sorted events.
    let w_start = i32(segs[W.seg0].start);
    var lo = 0u;
    var hi = n_ev;
    loop {
        if (lo >= hi) {
            break;
        }
        let mid = (lo + hi) / 2u;
        if (ev_rel(base, mid) < w_start) {
            lo = mid + 1u;
        } else {
            hi = mid;
        }
    }
    var i = lo;
    // Events before the chunk (negative samples) are rejected: the chunk is not accepted.
    if (first && lo > 0u) {
        atomicAdd(&flags[0], 1u);
    }
    let st = state_in[c];
    var e = st.x;
    var a = st.y;
    var cum = cum_in[c];
    for (var j = W.seg0; j < W.seg1; j = j + 1u) {
        let sg = segs[j];
        var r = start_run(c, sg, e, a, cum);
        var cur = sg.start;
        loop {
            if (i >= n_ev) {
                break;
            }
            let t = u32(ev_rel(base, i));
            if (t >= sg.end) {
                break;
            }
            var w = 0.0;
            var n = 0u;
            loop {
                if (i >= n_ev) {
                    break;
                }
                if (u32(ev_rel(base, i)) != t) {
                    break;
                }
                let v = bitcast<f32>(input[2u * (base + i) + 1u]);
                w = w + select(1.0, v, SCALE || P.merged == 1u) * P.wscale;
                n = n + select(1u, u32(v), P.merged == 1u && !SCALE);
                i = i + 1u;
            }
            stretch(&r, t - min(cur, t));
            if (KIND == 0u) {
                r.sum = r.sum + w;
                r.mx = max(r.mx, w);
                r.e = r.e + w;
                r.cum = add_cum(r.cum, n);
                cur = t + 1u;
            } else {
                r.e = r.e + w;
                cur = t;
            }
        }
        stretch(&r, sg.end - min(cur, sg.end));
        finish(c, j, sg, r);
        e = r.e;
        a = r.a;
        cum = r.cum;
    }
    // Events at or past the chunk's end are rejected too.
    if (last && i < n_ev) {
        atomicAdd(&flags[0], 1u);
    }
}
