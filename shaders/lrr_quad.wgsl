// LRR kernels for layouts of aligned channel quads (SPEC §2): `x`, `m` and `y` as arrays of
// vec4, so that four consecutive channels are one load or store. Appended to `lrr.wgsl`;
// `lrr_any.wgsl` is the twin for any layout. src/lrr/gpu.rs uses this module only when the
// channel count is a multiple of 4, every accumulation group and every cluster is made of
// runs of 4 consecutive channels starting at a multiple of 4 (a group's last run may be
// shorter), and every cluster's size is a multiple of 4; then every cluster's block of
// `I − W` starts at a multiple of 4 entries and its rows are whole quads.
//
// Software adapters turn every storage load into a per-lane loop, and a vec4 load costs
// about as much as two scalar ones there: quads halve the load time of `cov_tiles` and
// `transform`. The products and their order are those of `lrr_any.wgsl` (fma in ascending
// contraction order), so both modules give the same bits.

@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(9) var<storage, read_write> m: array<vec4<f32>>;
@group(0) @binding(11) var<storage, read_write> y: array<vec4<f32>>;

// The 4 samples of row `base` (a multiple of 4) at channels `base + r`: r.x is a multiple of
// 4 and r.y, r.z, r.w follow it (or are padding whose values are never used).
fn row4(base: u32, r: vec4<u32>) -> vec4<f32> {
    return x[(base + r.x) >> 2u];
}

fn set_m(at: u32, v: f32) {
    m[at >> 2u][at & 3u] = v;
}

// a + M·X, column by column: a[i] += Σₜ M[t]·X[i][t] with one fma per t in ascending order
// (column i of `a` and of `xs` is sample i; `mm[t]` is row t of the contraction).
fn mad4(a: mat4x4<f32>, mm: mat4x4<f32>, xs: mat4x4<f32>) -> mat4x4<f32> {
    return mat4x4<f32>(
        fma(mm[3], vec4<f32>(xs[0].w), fma(mm[2], vec4<f32>(xs[0].z),
            fma(mm[1], vec4<f32>(xs[0].y), fma(mm[0], vec4<f32>(xs[0].x), a[0])))),
        fma(mm[3], vec4<f32>(xs[1].w), fma(mm[2], vec4<f32>(xs[1].z),
            fma(mm[1], vec4<f32>(xs[1].y), fma(mm[0], vec4<f32>(xs[1].x), a[1])))),
        fma(mm[3], vec4<f32>(xs[2].w), fma(mm[2], vec4<f32>(xs[2].z),
            fma(mm[1], vec4<f32>(xs[2].y), fma(mm[0], vec4<f32>(xs[2].x), a[2])))),
        fma(mm[3], vec4<f32>(xs[3].w), fma(mm[2], vec4<f32>(xs[3].z),
            fma(mm[1], vec4<f32>(xs[3].y), fma(mm[0], vec4<f32>(xs[3].x), a[3])))),
    );
}

fn copy_x(at: u32) {
    y[at >> 2u][at & 3u] = x[at >> 2u][at & 3u];
}

fn band_mad(a: Band, xs: mat4x4<f32>, m0: mat4x4<f32>, m1: mat4x4<f32>, m2: mat4x4<f32>, m3: mat4x4<f32>) -> Band {
    return Band(mad4(a.b0, m0, xs), mad4(a.b1, m1, xs), mad4(a.b2, m2, xs), mad4(a.b3, m3, xs));
}

// Four samples (quad-row offsets `w`) of channel quad `cq`, one column per sample.
fn xq(w: vec4<u32>, cq: u32) -> mat4x4<f32> {
    return mat4x4<f32>(x[w.x + cq], x[w.y + cq], x[w.z + cq], x[w.w + cq]);
}

// Rows at, at + kq, at + 2kq, at + 3kq (quads) of `m`: four contraction rows, 4 outputs.
fn mq(at: u32, kq: u32) -> mat4x4<f32> {
    return mat4x4<f32>(m[at], m[at + kq], m[at + 2u * kq], m[at + 3u * kq]);
}

// Writes block (I, J): samples s0 + 4I + i (column i), output quad J of the job.
fn store_block(cl: Cluster, s0: u32, c0: u32, i: u32, j: u32, a: mat4x4<f32>) {
    if (c0 + 4u * j >= cl.k) {
        return;
    }
    let cq = idx[cl.mem_off + c0 + 4u * j] >> 2u;
    let q = P.n_ch >> 2u;
    let s = s0 + 4u * i;
    if (s < P.n_rows) {
        y[s * q + cq] = a[0];
    }
    if (s + 1u < P.n_rows) {
        y[(s + 1u) * q + cq] = a[1];
    }
    if (s + 2u < P.n_rows) {
        y[(s + 2u) * q + cq] = a[2];
    }
    if (s + 3u < P.n_rows) {
        y[(s + 3u) * q + cq] = a[3];
    }
}

// Y = X·(I − W) for 16 outputs c0 .. c0 + 15 of cluster `cl`, samples s0 .. s0 + 15, as in
// `lrr_any.wgsl` but with the contraction 4 channels at a time: per step 16 vec4 loads of
// `x` and 16 of `m` feed 1024 multiply-adds. Block (I, J) holds samples 4I.. (columns) ×
// outputs 4J.. (components). Rows of `m` past the cluster's last output feed only blocks
// that are never stored; the `m` buffers have 16 entries of padding for the last cluster's.
fn transform_cluster(cl: Cluster, c0: u32, s0: u32) {
    let k = cl.k;
    let kq = k >> 2u;
    let w = rows16(s0, P.n_ch >> 2u);
    var a0 = zero_band();
    var a1 = a0;
    var a2 = a0;
    var a3 = a0;
    for (var a = 0u; a < k; a += 4u) {
        let cq = idx[cl.mem_off + a] >> 2u;
        let mr = (cl.m_off + a * k + c0) >> 2u;
        let m0 = mq(mr, kq);
        let m1 = mq(mr + 1u, kq);
        let m2 = mq(mr + 2u, kq);
        let m3 = mq(mr + 3u, kq);
        a0 = band_mad(a0, xq(w.w0, cq), m0, m1, m2, m3);
        a1 = band_mad(a1, xq(w.w1, cq), m0, m1, m2, m3);
        a2 = band_mad(a2, xq(w.w2, cq), m0, m1, m2, m3);
        a3 = band_mad(a3, xq(w.w3, cq), m0, m1, m2, m3);
    }
    store_tile(cl, s0, c0, a0, a1, a2, a3);
}
