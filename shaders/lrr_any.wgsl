// LRR kernels over any channel layout (SPEC §2): `x`, `m` and `y` as arrays of f32, every
// channel read and written on its own. Appended to `lrr.wgsl`, which holds the shared
// kernels; `lrr_quad.wgsl` is the twin for layouts of aligned 4-channel runs.

@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(9) var<storage, read_write> m: array<f32>;
@group(0) @binding(11) var<storage, read_write> y: array<f32>;

// The 4 samples of row `base` at channels `base + r` (any four channels).
fn row4(base: u32, r: vec4<u32>) -> vec4<f32> {
    return vec4<f32>(x[base + r.x], x[base + r.y], x[base + r.z], x[base + r.w]);
}

fn set_m(at: u32, v: f32) {
    m[at] = v;
}

fn copy_x(at: u32) {
    y[at] = x[at];
}

// ---------------------------------------------------------------------------------------------
// Y = X·(I − W) for 16 outputs c0 .. c0 + 15 of cluster `cl`, samples s0 .. s0 + 15: block
// (I, J) of the tile holds samples 4I.. (components) × outputs 4J.. (columns); 32 loads per
// step of the contraction feed 256 multiply-adds.

fn mcol(at: u32, c: u32, n_c: u32) -> f32 {
    return select(0.0, m[at + min(c, n_c - 1u)], c < n_c);
}

fn m4(at: u32, c: u32, n_c: u32) -> vec4<f32> {
    return vec4<f32>(mcol(at, c, n_c), mcol(at, c + 1u, n_c), mcol(at, c + 2u, n_c), mcol(at, c + 3u, n_c));
}

fn x4(rows: vec4<u32>, ch: u32) -> vec4<f32> {
    return vec4<f32>(x[rows.x + ch], x[rows.y + ch], x[rows.z + ch], x[rows.w + ch]);
}

// Writes column c (tile-local) of block (I, J), i.e. output channel c0 + c, samples
// s0 + 4I ..: `v` holds the 4 samples.
fn store_col(cl: Cluster, s0: u32, i: u32, c0: u32, c: u32, v: vec4<f32>) {
    if (c0 + c >= cl.k) {
        return;
    }
    let ch = idx[cl.mem_off + c0 + c];
    let s = s0 + 4u * i;
    let nc = P.n_ch;
    if (s < P.n_rows) {
        y[s * nc + ch] = v.x;
    }
    if (s + 1u < P.n_rows) {
        y[(s + 1u) * nc + ch] = v.y;
    }
    if (s + 2u < P.n_rows) {
        y[(s + 2u) * nc + ch] = v.z;
    }
    if (s + 3u < P.n_rows) {
        y[(s + 3u) * nc + ch] = v.w;
    }
}

fn store_block(cl: Cluster, s0: u32, c0: u32, i: u32, j: u32, a: mat4x4<f32>) {
    store_col(cl, s0, i, c0, 4u * j, a[0]);
    store_col(cl, s0, i, c0, 4u * j + 1u, a[1]);
    store_col(cl, s0, i, c0, 4u * j + 2u, a[2]);
    store_col(cl, s0, i, c0, 4u * j + 3u, a[3]);
}

fn transform_cluster(cl: Cluster, c0: u32, s0: u32) {
    let k = cl.k;
    let n_c = min(16u, k - c0);
    let w = rows16(s0, P.n_ch);
    var a0 = zero_band();
    var a1 = a0;
    var a2 = a0;
    var a3 = a0;
    for (var a = 0u; a < k; a++) {
        let ch = idx[cl.mem_off + a];
        let mr = cl.m_off + a * k + c0;
        let m0 = m4(mr, 0u, n_c);
        let m1 = m4(mr, 4u, n_c);
        let m2 = m4(mr, 8u, n_c);
        let m3 = m4(mr, 12u, n_c);
        a0 = band_outer(a0, x4(w.w0, ch), m0, m1, m2, m3);
        a1 = band_outer(a1, x4(w.w1, ch), m0, m1, m2, m3);
        a2 = band_outer(a2, x4(w.w2, ch), m0, m1, m2, m3);
        a3 = band_outer(a3, x4(w.w3, ch), m0, m1, m2, m3);
    }
    store_tile(cl, s0, c0, a0, a1, a2, a3);
}
