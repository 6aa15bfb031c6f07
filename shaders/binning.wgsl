// Binned kernel activation (SPEC §1). Three entry points share one layout:
//   dense_local  — per (segment, channel): the segment's own contribution from a zero state;
//   dense_finish — per (segment, channel): incoming state composed from the carried state and
//                  earlier segments' contributions, then the segment walked sample by sample;
//   sparse       — per channel: jumps between events, O(events + bins).
// A segment is the part of one bin inside the chunk; the last segment is the bin left open.
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

fn thread_id(wid: vec3<u32>, nwg: vec3<u32>, lid: vec3<u32>) -> u32 {
    return (wid.x + wid.y * nwg.x) * 64u + lid.x;
}

fn sample_value(s: u32, c: u32) -> f32 {
    let i = s * P.n_ch + c;
    if (P.input_u8 == 1u) {
        let word = input[i >> 2u];
        return f32((word >> ((i & 3u) * 8u)) & 0xffu);
    }
    return bitcast<f32>(input[i]);
}

fn weight_of(x: f32) -> f32 {
    if (x == 0.0) {
        return 0.0;
    }
    if (P.scale == 1u) {
        return x * P.wscale;
    }
    return P.wscale;
}

// x·d with d carried as hi + lo, so that stepping many samples does not drift.
fn decay1(x: f32) -> f32 {
    return fma(x, P.d_hi, x * P.d_lo);
}

// (d^L, G(L), H(L)) composed from the jump table; positive terms only.
fn jump(l: u32) -> vec3<f32> {
    var p = 1.0;
    var g = 0.0;
    var h = 0.0;
    var done = 0.0;
    var bits = l;
    var j = 0u;
    loop {
        if (bits == 0u) {
            break;
        }
        if ((bits & 1u) == 1u) {
            let e = J[j];
            h = h + p * (e.z + done * e.y);
            g = g + p * e.y;
            p = p * e.x;
            done = done + f32(1u << j);
        }
        bits = bits >> 1u;
        j = j + 1u;
    }
    return vec3<f32>(p, g, h);
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
    if (P.agg == 0u) {
        if (P.kind == 0u) {
            if (P.scale == 1u) {
                return r.e;
            }
            return f32(r.cum.y) * 4294967296.0 + f32(r.cum.x);
        }
        if (P.kind == 1u) {
            return r.e;
        }
        return r.a;
    }
    if (P.agg == 3u) {
        return r.mx;
    }
    return r.sum;
}

// A run of l >= 1 samples without events (Exponential/Alpha; Count adds a zero sample).
fn stretch(r: ptr<function, Run>, l: u32) {
    if (l == 0u) {
        return;
    }
    if (P.kind == 0u) {
        (*r).mx = max((*r).mx, 0.0);
        return;
    }
    let jl = jump(l);
    let e = (*r).e;
    let a = (*r).a;
    let it = P.inv_tau;
    if (P.kind == 1u) {
        (*r).sum = (*r).sum + e * jl.y;
        (*r).mx = max((*r).mx, max(e, e * jump(l - 1u).x));
        (*r).e = e * jl.x;
        return;
    }
    (*r).sum = (*r).sum + a * jl.y + e * it * jl.z;
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
    (*r).a = jl.x * (a + f32(l) * e * it);
    (*r).e = e * jl.x;
}

// One dense sample of weight w.
fn step(r: ptr<function, Run>, w: f32) {
    var act: f32;
    if (P.kind == 0u) {
        act = w;
        (*r).e = (*r).e + w;
        (*r).cum = add_cum((*r).cum, select(0u, 1u, w != 0.0));
    } else if (P.kind == 1u) {
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

// Writes a finished segment: its bin, or the carried state for the open bin.
fn finish(c: u32, sg: Seg, r: Run) {
    if (sg.row >= 0) {
        out[u32(sg.row) * P.n_ch + c] = bin_value(r) * sg.out_scale;
    } else {
        state_out[c] = vec4<f32>(r.e, r.a, r.sum, r.mx);
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
    if (id >= P.n_seg * P.n_ch) {
        return;
    }
    let j = id / P.n_ch;
    let c = id - j * P.n_ch;
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
    summ[id] = vec4<f32>(r.e, r.a, 0.0, 0.0);
    summ_n[id] = r.cum.x;
}

@compute @workgroup_size(64)
fn dense_finish(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_id) lid: vec3<u32>) {
    let id = thread_id(wid, nwg, lid);
    if (id >= P.n_seg * P.n_ch) {
        return;
    }
    let j = id / P.n_ch;
    let c = id - j * P.n_ch;
    // Incoming state: the carried state pushed through the segments before this one.
    var e = state_in[c].x;
    var a = state_in[c].y;
    var cum = cum_in[c];
    for (var i = 0u; i < j; i = i + 1u) {
        let si = segs[i];
        let k = i * P.n_ch + c;
        let loc = summ[k];
        if (P.kind == 0u) {
            e = e + loc.x;
            cum = add_cum(cum, summ_n[k]);
        } else {
            let l = si.end - si.start;
            let jl = jump(l);
            a = jl.x * (a + f32(l) * e * P.inv_tau) + loc.y;
            e = jl.x * e + loc.x;
        }
    }
    let sg = segs[j];
    var r = start_run(c, sg, e, a, cum);
    for (var s = sg.start; s < sg.end; s = s + 1u) {
        step(&r, weight_of(sample_value(s, c)));
    }
    finish(c, sg, r);
}

@compute @workgroup_size(64)
fn sparse(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_id) lid: vec3<u32>) {
    let c = thread_id(wid, nwg, lid);
    if (c >= P.n_ch) {
        return;
    }
    let n_ev = min(counts[c], P.cap);
    if (counts[c] > P.cap) {
        atomicAdd(&flags[0], 1u);
    }
    let base = c * P.cap;
    var i = 0u;
    var st = state_in[c];
    var e = st.x;
    var a = st.y;
    var cum = cum_in[c];
    // Events before the chunk or past its end are rejected (the chunk is then not accepted).
    for (var k = 0u; k < n_ev; k = k + 1u) {
        let rel = bitcast<i32>(input[2u * (base + k)]);
        if (rel < 0 || u32(rel) >= P.n_samples) {
            atomicAdd(&flags[0], 1u);
        }
    }
    for (var j = 0u; j < P.n_seg; j = j + 1u) {
        let sg = segs[j];
        var r = start_run(c, sg, e, a, cum);
        var cur = sg.start;
        loop {
            if (i >= n_ev) {
                break;
            }
            let t_i = bitcast<i32>(input[2u * (base + i)]);
            let t = u32(max(t_i, 0));
            if (t >= sg.end) {
                break;
            }
            var w = 0.0;
            var n = 0u;
            loop {
                if (i >= n_ev) {
                    break;
                }
                if (u32(max(bitcast<i32>(input[2u * (base + i)]), 0)) != t) {
                    break;
                }
                let v = bitcast<f32>(input[2u * (base + i) + 1u]);
                w = w + select(1.0, v, P.scale == 1u) * P.wscale;
                n = n + 1u;
                i = i + 1u;
            }
            stretch(&r, t - min(cur, t));
            if (P.kind == 0u) {
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
        finish(c, sg, r);
        e = r.e;
        a = r.a;
        cum = r.cum;
    }
}
