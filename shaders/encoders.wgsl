// Spike encoders (SPEC §4). `shaders/philox.wgsl` is prepended (philox4x32_10).
//
// Entry points share one layout. The byte-producing encoders (rate, latency, angle) run one
// thread per 32-bit output word: the four bytes of the word are computed from their own
// global positions, so any window of the output can be computed by any dispatch (the host
// splits outputs larger than one binding into windows, each a "job" with its own uniform
// block). The output byte at index `i` of a job is byte `o·M + m` of the whole output, where
// `(o, m)` is `(o0, m0)` advanced by `i` (M bytes per outer slice):
//   rate     batch-major: o = batch row b,           m = q·F + f with q = t (or byte of time j)
//            time-major:  o = t (or j),              m = b·F + f   (q = b)
//   latency  o = t (or j),  m = e (input element);   F = M, q = 0
//   angle    o = e (input element), m = neuron k;    F = M, q = 0
// Shift runs one thread per element (4-byte types) or per word (bytes).
//
// When a word never straddles two samples or steps (F, or the element count, a multiple of 4)
// and everything fits one binding, two passes run instead: pass A turns each input element
// into its threshold (rate) or spike-time byte (latency) in a scratch buffer; pass B runs one
// thread per output word (`_w`) or 16-byte chunk (`_w4`) on a 2-D grid (x: chunk within a
// step's row, y: step), so every SIMD group stores contiguously and each input is evaluated
// once. (On a software adapter, per-invocation work and scattered stores dominate.)
//
// Divisions by the (uniform) slice and feature sizes use multiply-high reciprocals: a
// software renderer scalarises integer division, which made it the kernels' main cost.
// Only f32/u32 arithmetic; no atomics on floats. Non-finite inputs are reported through
// `flags[0]` (smallest global input index, via atomicMin on u32). Subnormal inputs count as
// 0 on every backend (tested through bit patterns, so hardware that flushes or not agrees).

struct Job {
    n_bytes: u32,    // output bytes of this job (shift: elements or bytes)
    o0: u32,         // outer index of the job's first byte
    m0: u32,         // offset of that byte inside its outer slice
    big_m: u32,      // bytes per outer slice
    inner: u32,      // innermost extent F (rate); M otherwise. Shift: stride of dim 0
    q_len: u32,      // M / F
    in_shift: u32,   // global input element index at the start of the input binding
    steps: u32,      // T
    pos_lo: u32,     // absolute stream index of batch row 0 (rate), low word
    pos_hi: u32,     // high word
    key_lo: u32,
    key_hi: u32,
    flags: u32,      // bit 0: time-major, bit 1: packed, bit 2: per-sample shifts
    max_r: f32,
    x_cap: f32,
    threshold: f32,
    n_edges: u32,    // angle: edges reachable by finite f32
    rank: u32,       // shift: merged rank
    n_axes: u32,     // shift: shift slots per set
    m_magic: u32,    // reciprocal of big_m (see div_magic)
    m_shift: u32,
    f_magic: u32,    // reciprocal of inner
    f_shift: u32,
    n_cols: u32,     // pass A: threads; pass B: chunks per step row
    b_words: u32,    // pass B: output chunks between consecutive samples
    q_words: u32,    // pass B: output chunks between consecutive steps (or step bytes)
    t_out: u32,      // pass B: steps (or step bytes)
    pad0: u32,
    pad1: u32,
    pad2: u32,
    pad3: u32,
    pad4: u32,
}

const WG: u32 = 64u;
// Pass B kernels are specialised for packed output (a runtime branch there cost a software
// adapter a third of the rate kernel's time).
override PACKED: bool = false;
// Steps (or step bytes) written by one thread of the `_w` / `_w4` kernels.
const STEPS_PER_THREAD: u32 = 4u;
const MIN_NORMAL: f32 = 1.17549435e-38;
const EXP_MASK: u32 = 0x7f800000u;
const NO_SLOT: u32 = 0xffffffffu;

@group(0) @binding(0) var<uniform> J: Job;
// f32 bits (rate, latency, angle), or the elements to shift (u32 words / bytes); pass B: the
// scratch of pass A.
@group(0) @binding(1) var<storage, read> input: array<u32>;
// The same input as 16-byte words (pass B, `_w4`).
@group(0) @binding(1) var<storage, read> input4: array<vec4<u32>>;
// latency: U[0..=T] as f32 bits; angle: edges as f32 bits; shift: extents, strides, slots,
// shifts. Rate: unused.
@group(0) @binding(2) var<storage, read> table: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<u32>;
// The same output as 16-byte words (pass B, `_w4`).
@group(0) @binding(3) var<storage, read_write> out4: array<vec4<u32>>;
// [0]: smallest global input index holding a non-finite value (0xffffffff: none).
@group(0) @binding(4) var<storage, read_write> flags: array<atomic<u32>>;

fn word_id(wid: vec3<u32>, nwg: vec3<u32>, lid: vec3<u32>) -> u32 {
    return (wid.x + wid.y * nwg.x) * WG + lid.x;
}

// floor(n / d) for n < 2³¹, from d's reciprocal (m, s) = (⌈2^(31+l)/d⌉, l − 1) with
// l = ⌈log2 d⌉ (exact for every n < 2³¹; m = 0 stands for d = 1).
fn div_magic(n: u32, m: u32, s: u32) -> u32 {
    if (m == 0u) {
        return n;
    }
    return philox_mulhilo(n, m).x >> s;
}

// One output word of a byte kernel (an invocation per word of 4 bytes): `w` its index,
// `first` its first byte, `nb` how many of its bytes the job holds (0: past the job's end),
// and where its first byte lies: outer index `o`, offset `m` within that outer block.
struct ByteWord {
    w: u32,
    first: u32,
    nb: u32,
    o: u32,
    m: u32,
}

fn byte_word(wid: vec3<u32>, nwg: vec3<u32>, lid: vec3<u32>) -> ByteWord {
    let w = word_id(wid, nwg, lid);
    let first = w * 4u;
    if (first >= J.n_bytes) {
        return ByteWord(w, first, 0u, 0u, 0u);
    }
    let rel = J.m0 + first;
    let oq = div_magic(rel, J.m_magic, J.m_shift);
    return ByteWord(w, first, min(4u, J.n_bytes - first), J.o0 + oq, rel - oq * J.big_m);
}

// The input value at global element index `i`: non-finite values are reported (and read as
// 0), subnormals read as 0.
fn load_x(i: u32) -> f32 {
    let bits = input[i - J.in_shift];
    let e = bits & EXP_MASK;
    if (e == EXP_MASK) {
        atomicMin(&flags[0], i);
        return 0.0;
    }
    if (e == 0u) {
        return 0.0;
    }
    return bitcast<f32>(bits);
}

// ---------------------------------------------------------------------------------------
// Rate

// The spike threshold of an input value: a spike is `u < thr`, or always when `.y` is 1.
// thr = ceil(p·2³²) for p = clamp(x·max_r, 0, 1), exactly, from p's bits.
fn rate_threshold(x: f32) -> vec2<u32> {
    let xc = clamp(x, 0.0, J.x_cap);
    let p = xc * J.max_r;
    if (p >= 1.0) {
        return vec2<u32>(0u, 1u);
    }
    if (!(p >= MIN_NORMAL)) {
        return vec2<u32>(0u, 0u);
    }
    let bits = bitcast<u32>(p);
    let e = bits >> 23u;
    let mant = (bits & 0x7fffffu) | 0x800000u;
    if (e >= 118u) {
        return vec2<u32>(mant << (e - 118u), 0u);
    }
    let s = 118u - e;
    if (s >= 24u) {
        return vec2<u32>(1u, 0u);
    }
    let q = mant >> s;
    let r = mant & ((1u << s) - 1u);
    return vec2<u32>(q + select(0u, 1u, r != 0u), 0u);
}

// Spike bits (one per byte, 0/1) of a word's bytes at steps `tt`: byte i is sample `bb[i]`,
// feature `ff[i]`, threshold `(thr[i], all[i])`. Consecutive bytes of the same Philox counter
// share one draw.
fn rate_bits(
    bb: vec4<u32>,
    tt: vec4<u32>,
    ff: vec4<u32>,
    thr: vec4<u32>,
    all: vec4<u32>,
    nb: u32,
) -> vec4<u32> {
    let key = vec2<u32>(J.key_lo, J.key_hi);
    var have = false;
    var cb = 0u;
    var ct = 0u;
    var cg = 0u;
    var r = vec4<u32>();
    var bits = vec4<u32>();
    for (var i = 0u; i < 4u; i = i + 1u) {
        if (i < nb && tt[i] < J.steps) {
            let g = ff[i] >> 2u;
            if (!have || cb != bb[i] || ct != tt[i] || cg != g) {
                let lo = J.pos_lo + bb[i];
                let hi = J.pos_hi + select(0u, 1u, lo < J.pos_lo);
                r = philox4x32_10(vec4<u32>(g, tt[i], lo, hi), key);
                have = true;
                cb = bb[i];
                ct = tt[i];
                cg = g;
            }
            if (all[i] != 0u || r[ff[i] & 3u] < thr[i]) {
                bits[i] = 1u;
            }
        }
    }
    return bits;
}

@compute @workgroup_size(64)
fn rate(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let bw = byte_word(wid, nwg, lid);
    if (bw.nb == 0u) {
        return;
    }
    let w = bw.w;
    let nb = bw.nb;
    var o = bw.o;
    let m = bw.m;
    var q = div_magic(m, J.f_magic, J.f_shift);
    var f = m - q * J.inner;
    let time_major = (J.flags & 1u) != 0u;
    let packed = (J.flags & 2u) != 0u;

    var bb = vec4<u32>();
    var tj = vec4<u32>();
    var ff = vec4<u32>();
    var thr = vec4<u32>();
    var all = vec4<u32>();
    for (var i = 0u; i < 4u; i = i + 1u) {
        if (i < nb) {
            var b = o;
            var t = q;
            if (time_major) {
                b = q;
                t = o;
            }
            bb[i] = b;
            tj[i] = t;
            ff[i] = f;
            let th = rate_threshold(load_x(b * J.inner + f));
            thr[i] = th.x;
            all[i] = th.y;
            f = f + 1u;
            if (f == J.inner) {
                f = 0u;
                q = q + 1u;
                if (q == J.q_len) {
                    q = 0u;
                    o = o + 1u;
                }
            }
        }
    }

    var word = 0u;
    if (packed) {
        for (var k = 0u; k < 8u; k = k + 1u) {
            let bits = rate_bits(bb, tj * 8u + vec4<u32>(k), ff, thr, all, nb);
            word = word | (((bits.x | (bits.y << 8u)) | ((bits.z << 16u) | (bits.w << 24u))) << (7u - k));
        }
    } else {
        let bits = rate_bits(bb, tj, ff, thr, all, nb);
        word = (bits.x | (bits.y << 8u)) | ((bits.z << 16u) | (bits.w << 24u));
    }
    out[w] = word;
}

// ---------------------------------------------------------------------------------------
// Latency

fn table_f32(i: u32) -> f32 {
    return bitcast<f32>(table[i]);
}

@compute @workgroup_size(64)
fn latency(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let bw = byte_word(wid, nwg, lid);
    if (bw.nb == 0u) {
        return;
    }
    let w = bw.w;
    let nb = bw.nb;
    var o = bw.o;
    var e = bw.m;
    let packed = (J.flags & 2u) != 0u;
    var word = 0u;
    for (var i = 0u; i < 4u; i = i + 1u) {
        if (i < nb) {
            let xc = clamp(load_x(e), 0.0, 1.0);
            var byte = 0u;
            if (xc > J.threshold) {
                if (packed) {
                    // Bit k of byte o is step 8·o + k.
                    let t0 = o * 8u;
                    if (xc <= table_f32(t0) && xc > table_f32(min(t0 + 8u, J.steps))) {
                        for (var k = 0u; k < 8u; k = k + 1u) {
                            let t = t0 + k;
                            if (t < J.steps && xc <= table_f32(t) && xc > table_f32(t + 1u)) {
                                byte = 0x80u >> k;
                            }
                        }
                    }
                } else if (xc <= table_f32(o) && xc > table_f32(o + 1u)) {
                    byte = 1u;
                }
            }
            word = word | (byte << (8u * i));
            e = e + 1u;
            if (e == J.big_m) {
                e = 0u;
                o = o + 1u;
            }
        }
    }
    out[w] = word;
}

// ---------------------------------------------------------------------------------------
// Two-pass kernels (aligned layouts, one binding)

// Pass A of rate: thresholds of elements n_cols·… (one per thread); 2³² is stored as
// 0xffffffff (2³² − 1 never occurs: thresholds of p < 1 are below 2³² − 255).
@compute @workgroup_size(64)
fn rate_thr(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let e = word_id(wid, nwg, lid);
    if (e >= J.n_cols) {
        return;
    }
    let t = rate_threshold(load_x(e));
    out[e] = select(t.x, 0xffffffffu, t.y != 0u);
}

// Spike bits (0 or `bit`, per byte of a word) of 4 features with thresholds `thr` for draw `r`.
fn rate_bytes(r: vec4<u32>, thr: vec4<u32>, bit: u32) -> u32 {
    let fire = (r < thr) | (thr == vec4<u32>(0xffffffffu));
    return pack_bytes(select(vec4<u32>(0u), vec4<u32>(bit), fire));
}

// The rate word of feature group g (features 4g .. 4g + 3) of sample (lo, hi) at step or
// step byte q.
fn rate_word(g: u32, q: u32, lo: u32, hi: u32, thr: vec4<u32>) -> u32 {
    let key = vec2<u32>(J.key_lo, J.key_hi);
    if (!PACKED) {
        return rate_bytes(philox4x32_10(vec4<u32>(g, q, lo, hi), key), thr, 1u);
    }
    var word = 0u;
    let t0 = q * 8u;
    let n = min(8u, J.steps - t0);
    for (var k = 0u; k < n; k = k + 1u) {
        let r = philox4x32_10(vec4<u32>(g, t0 + k, lo, hi), key);
        word = word | rate_bytes(r, thr, 0x80u >> k);
    }
    return word;
}

// Pass B of rate, one word per thread and STEPS_PER_THREAD steps (or step bytes): x = chunk
// c = b·(F/4) + g, y = block of steps.
@compute @workgroup_size(64)
fn rate_w(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let c = wid.x * WG + lid.x;
    if (c >= J.n_cols) {
        return;
    }
    let b = div_magic(c, J.f_magic, J.f_shift);
    let g = c - b * J.inner;
    let e = c * 4u;
    let thr = vec4<u32>(input[e], input[e + 1u], input[e + 2u], input[e + 3u]);
    let lo = J.pos_lo + b;
    let hi = J.pos_hi + select(0u, 1u, lo < J.pos_lo);
    let q0 = wid.y * STEPS_PER_THREAD;
    let q1 = min(q0 + STEPS_PER_THREAD, J.t_out);
    for (var q = q0; q < q1; q = q + 1u) {
        out[b * J.b_words + q * J.q_words + g] = rate_word(g, q, lo, hi, thr);
    }
}

// Pass B of rate, 16 bytes per thread and STEPS_PER_THREAD steps (or step bytes): x = chunk
// c = b·(F/16) + g16, y = block of steps.
@compute @workgroup_size(64)
fn rate_w4(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let c = wid.x * WG + lid.x;
    if (c >= J.n_cols) {
        return;
    }
    let b = div_magic(c, J.f_magic, J.f_shift);
    let g16 = c - b * J.inner;
    let lo = J.pos_lo + b;
    let hi = J.pos_hi + select(0u, 1u, lo < J.pos_lo);
    let g = g16 * 4u;
    let e = c * 4u;
    let t0 = input4[e];
    let t1 = input4[e + 1u];
    let t2 = input4[e + 2u];
    let t3 = input4[e + 3u];
    let q0 = wid.y * STEPS_PER_THREAD;
    let q1 = min(q0 + STEPS_PER_THREAD, J.t_out);
    for (var q = q0; q < q1; q = q + 1u) {
        out4[b * J.b_words + q * J.q_words + g16] = vec4<u32>(
            rate_word(g, q, lo, hi, t0),
            rate_word(g + 1u, q, lo, hi, t1),
            rate_word(g + 2u, q, lo, hi, t2),
            rate_word(g + 3u, q, lo, hi, t3),
        );
    }
}

// Spike time of a clipped value from the bounds table (largest t with xc <= U[t]), or
// 255 when silent (pass A of latency runs for T <= 248 only, so 255 and 255 / 8 match no
// step or step byte).
fn latency_time(x: f32) -> u32 {
    let xc = clamp(x, 0.0, 1.0);
    if (!(xc > J.threshold)) {
        return 255u;
    }
    var lo = 0u;
    var hi = J.steps - 1u;
    loop {
        if (lo >= hi) {
            break;
        }
        let mid = (lo + hi + 1u) / 2u;
        if (xc <= table_f32(mid)) {
            lo = mid;
        } else {
            hi = mid - 1u;
        }
    }
    return lo;
}

// Pass A of latency: the spike-time bytes of elements 4c .. 4c + 3 (255: silent).
@compute @workgroup_size(64)
fn latency_ts(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let c = word_id(wid, nwg, lid);
    if (c >= J.n_cols) {
        return;
    }
    let e = c * 4u;
    out[c] = latency_time(load_x(e))
        | (latency_time(load_x(e + 1u)) << 8u)
        | (latency_time(load_x(e + 2u)) << 16u)
        | (latency_time(load_x(e + 3u)) << 24u);
}

// 0x01 in each byte of `w` that is zero, 0x00 in the others (exact: no borrow between bytes).
fn zero_bytes(w: u32) -> u32 {
    let y = (w & 0x7f7f7f7fu) + 0x7f7f7f7fu;
    return (~(y | w | 0x7f7f7f7fu)) >> 7u;
}

// Packs the low bytes of a vector into a word (x lowest).
fn pack_bytes(v: vec4<u32>) -> u32 {
    return (v.x | (v.y << 8u)) | ((v.z << 16u) | (v.w << 24u));
}

// The latency word of 4 spike-time bytes `tsw` at step (byte) q.
fn latency_word(tsw: u32, q: u32) -> u32 {
    if (!PACKED) {
        return zero_bytes(tsw ^ (q * 0x01010101u));
    }
    let ts = (vec4<u32>(tsw) >> vec4<u32>(0u, 8u, 16u, 24u)) & vec4<u32>(255u);
    let bit = vec4<u32>(0x80u) >> (ts & vec4<u32>(7u));
    return pack_bytes(select(vec4<u32>(0u), bit, (ts >> vec4<u32>(3u)) == vec4<u32>(q)));
}

// Pass B of latency, one word per thread and STEPS_PER_THREAD steps (or step bytes).
@compute @workgroup_size(64)
fn latency_w(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let c = wid.x * WG + lid.x;
    if (c >= J.n_cols) {
        return;
    }
    let ts = input[c];
    let q0 = wid.y * STEPS_PER_THREAD;
    let q1 = min(q0 + STEPS_PER_THREAD, J.t_out);
    for (var q = q0; q < q1; q = q + 1u) {
        out[q * J.q_words + c] = latency_word(ts, q);
    }
}

// Pass B of latency, 16 bytes per thread and STEPS_PER_THREAD steps (grid y = step blocks).
@compute @workgroup_size(64)
fn latency_w4(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let c = wid.x * WG + lid.x;
    if (c >= J.n_cols) {
        return;
    }
    let ts = input4[c];
    let q0 = wid.y * STEPS_PER_THREAD;
    let q1 = min(q0 + STEPS_PER_THREAD, J.t_out);
    for (var q = q0; q < q1; q = q + 1u) {
        out4[q * J.q_words + c] = vec4<u32>(
            latency_word(ts.x, q),
            latency_word(ts.y, q),
            latency_word(ts.z, q),
            latency_word(ts.w, q),
        );
    }
}

// ---------------------------------------------------------------------------------------
// Angle

// Number of edges <= x among the reachable ones (edges are sorted), i.e. numpy's
// digitize(x, bins) for increasing bins.
fn count_le(x: f32) -> u32 {
    var lo = 0u;
    var hi = J.n_edges;
    loop {
        if (lo >= hi) {
            break;
        }
        let mid = (lo + hi) / 2u;
        if (x >= table_f32(mid)) {
            lo = mid + 1u;
        } else {
            hi = mid;
        }
    }
    return lo;
}

@compute @workgroup_size(64)
fn angle(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let bw = byte_word(wid, nwg, lid);
    if (bw.nb == 0u) {
        return;
    }
    let w = bw.w;
    let nb = bw.nb;
    var o = bw.o;
    var k = bw.m;
    var cached = 0xffffffffu;
    var idx = 0u;
    var word = 0u;
    for (var i = 0u; i < 4u; i = i + 1u) {
        if (i >= nb) {
            break;
        }
        if (o != cached) {
            let c = count_le(load_x(o));
            idx = select(0u, c - 1u, c > 0u);
            cached = o;
        }
        if (k == idx) {
            word = word | (1u << (8u * i));
        }
        k = k + 1u;
        if (k == J.big_m) {
            k = 0u;
            o = o + 1u;
        }
    }
    out[w] = word;
}

// ---------------------------------------------------------------------------------------
// Shift (roll). table: extents[rank], strides[rank], slots[rank], reciprocals of the
// extents (magic[rank], shift[rank]), then shifts[sets × n_axes].

// Source element index of output element `i`.
fn shift_source(i: u32) -> u32 {
    let r = J.rank;
    var sel = 0u;
    if ((J.flags & 4u) != 0u) {
        sel = div_magic(i, J.f_magic, J.f_shift);
    }
    var rem = i;
    var src = 0u;
    for (var d = r; d > 0u; d = d - 1u) {
        let ext = table[d - 1u];
        let quot = div_magic(rem, table[3u * r + d - 1u], table[4u * r + d - 1u]);
        var c = rem - quot * ext;
        rem = quot;
        let slot = table[2u * r + d - 1u];
        if (slot != NO_SLOT) {
            let s = table[5u * r + sel * J.n_axes + slot];
            c = select(c + ext - s, c - s, c >= s);
        }
        src = src + c * table[r + d - 1u];
    }
    return src;
}

@compute @workgroup_size(64)
fn shift32(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let i = word_id(wid, nwg, lid);
    if (i >= J.n_bytes) {
        return;
    }
    out[i] = input[shift_source(i)];
}

@compute @workgroup_size(64)
fn shift8(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let bw = byte_word(wid, nwg, lid);
    if (bw.nb == 0u) {
        return;
    }
    let w = bw.w;
    let first = bw.first;
    let nb = bw.nb;
    var word = 0u;
    for (var i = 0u; i < 4u; i = i + 1u) {
        if (i >= nb) {
            break;
        }
        let s = shift_source(first + i);
        let byte = (input[s >> 2u] >> ((s & 3u) * 8u)) & 0xffu;
        word = word | (byte << (8u * i));
    }
    out[w] = word;
}
