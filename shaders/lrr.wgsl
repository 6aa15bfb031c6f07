// Covariance accumulation and linear regression rereferencing (SPEC §2).
//
// Entry points, sharing one group-0 layout (src/lrr/gpu.rs):
//   cov_tiles  one invocation per (16×16 tile of a cluster block of XᵀX, sample split):
//              f32 runs of 16 products, each folded into a double-f32 (hi, lo)
//              accumulator; written to `partials`.
//   cov_fold   one thread per entry of C: the partials of every split summed in double-f32
//              and added to the previous C (`c_src`) unless replacing; written to `c_dst`.
//   solve      one workgroup per cluster: Gauss–Jordan inverse of the equilibrated
//              C block + λI in double-f32, then I − W into `m`; flags[cluster] = 1 if singular.
//   transform  one workgroup per (16 samples, job): Y = X·(I − W) for 16 output channels of a
//              cluster, or a copy of 16 pass-through channels.
//
// This file is the shared part. The bindings of the chunk `x`, of `I − W` (`m`) and of the
// output `y`, the accessors `row4` and `set_m` and the `transform` entry point come from one
// of two layout files appended to it: `lrr_any.wgsl` (f32 arrays, any channel layout) or
// `lrr_quad.wgsl` (vec4 arrays, for layouts of aligned runs of 4 consecutive channels, where
// one vector load replaces four scalar ones; src/lrr/gpu.rs picks the module).
//
// Double-f32 ("dd") arithmetic needs its roundings to happen exactly as written. WGSL lets
// the compiler reassociate and simplify float expressions (Mesa rewrites (a + b) − a to b,
// which turns a two-sum into 0), so every intermediate of a two-sum, two-product or
// renormalisation goes through `opq`: an OR with `P.zero`, a uniform that is 0 at run time
// but unknown to the compiler. No algebraic identity can cross it. Only f32/u32 are used.

struct Params {
    n_ch: u32,
    n_rows: u32,
    n_tiles: u32,
    n_splits: u32,
    split_len: u32,
    incremental: u32,
    zero: u32,
    n_clusters: u32,
    lam_hi: f32,
    lam_lo: f32,
    tol: f32,
    n_jobs: u32,
    direct: u32, // cov_tiles with one split: add into C directly (no cov_fold pass)
    pad1: u32,
    pad2: u32,
    pad3: u32,
}

struct Cluster {
    k: u32,       // members
    mem_off: u32, // their channels (ascending) in `idx`
    pos_off: u32, // their positions in the accumulation group, in `idx`
    g_tile: u32,  // first tile of the group in C
    g_nb: u32,    // 16-blocks of the group
    m_off: u32,   // the cluster's k×k block of I − W in `m`
    s_off: u32,   // its solver scratch in `scratch` (k² + 2k entries)
    pad: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(2) var<storage, read> tiles: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read> idx: array<u32>;
@group(0) @binding(4) var<storage, read_write> partials: array<vec2<f32>>;
@group(0) @binding(5) var<storage, read> c_src: array<vec2<f32>>;
@group(0) @binding(6) var<storage, read_write> c_dst: array<vec2<f32>>;
@group(0) @binding(7) var<storage, read> clusters: array<Cluster>;
@group(0) @binding(8) var<storage, read_write> scratch: array<vec2<f32>>;
@group(0) @binding(10) var<storage, read_write> flags: array<u32>;
@group(0) @binding(12) var<storage, read> jobs: array<vec4<u32>>;

const SENT: u32 = 0xffffffffu;

// ---------------------------------------------------------------------------------------------
// Double-f32 arithmetic behind opacity barriers

fn opq(v: f32) -> f32 {
    return bitcast<f32>(bitcast<u32>(v) | P.zero);
}

// s + e = a + b exactly (Knuth).
fn two_sum(a: f32, b: f32) -> vec2<f32> {
    let s = opq(a + b);
    let bb = opq(s - a);
    return vec2<f32>(s, opq(a - opq(s - bb)) + opq(b - bb));
}

// s + e = a + b exactly when |a| ≥ |b| (Dekker).
fn quick_two_sum(a: f32, b: f32) -> vec2<f32> {
    let s = opq(a + b);
    return vec2<f32>(s, opq(b - opq(s - a)));
}

// The top 12 significant bits of a (a bit mask: no float operation to rewrite).
fn split_hi(a: f32) -> f32 {
    return bitcast<f32>(bitcast<u32>(a) & 0xfffff000u);
}

// p + e = a·b exactly (Dekker, without relying on a fused multiply-add).
fn two_prod(a: f32, b: f32) -> vec2<f32> {
    let p = opq(a * b);
    let ah = split_hi(a);
    let al = opq(a - ah);
    let bh = split_hi(b);
    let bl = opq(b - bh);
    let e = opq(opq(opq(opq(ah * bh) - p) + opq(ah * bl)) + opq(al * bh)) + opq(al * bl);
    return vec2<f32>(p, e);
}

// Sum of two dd numbers (the accurate variant: both parts two-summed).
fn dd_add(a: vec2<f32>, b: vec2<f32>) -> vec2<f32> {
    let s = two_sum(a.x, b.x);
    let t = two_sum(a.y, b.y);
    let u = quick_two_sum(s.x, opq(s.y + t.x));
    return quick_two_sum(u.x, opq(u.y + t.y));
}

fn dd_sub(a: vec2<f32>, b: vec2<f32>) -> vec2<f32> {
    return dd_add(a, -b);
}

fn dd_mul(a: vec2<f32>, b: vec2<f32>) -> vec2<f32> {
    let p = two_prod(a.x, b.x);
    let c = opq(p.y + opq(opq(a.x * b.y) + opq(a.y * b.x)));
    return quick_two_sum(p.x, c);
}

fn dd_div(a: vec2<f32>, b: vec2<f32>) -> vec2<f32> {
    let q1 = a.x / b.x;
    let r = dd_sub(a, dd_mul(b, vec2<f32>(q1, 0.0)));
    let q2 = r.x / b.x;
    let r2 = dd_sub(r, dd_mul(b, vec2<f32>(q2, 0.0)));
    let q3 = r2.x / b.x;
    return dd_add(quick_two_sum(q1, q2), vec2<f32>(q3, 0.0));
}

// ---------------------------------------------------------------------------------------------
// XᵀX tiles
//
// One invocation = one 16×16 tile × one sample split, held in 16 mat4x4 registers (block
// (I, J) holds rows 4I..4I+3 × columns 4J..4J+3, column-major): 32 loads per sample feed 256
// multiply-adds. Software adapters turn every storage load into a per-lane scalar loop, so
// loads, not arithmetic, set the pace there; and all indexing is static (Mesa's GL path
// lowers dynamically indexed private arrays to select ladders). Every 16 samples the f32
// tile is folded into the double-f32 (hi, lo) accumulator.

struct DD4 {
    hi: vec4<f32>,
    lo: vec4<f32>,
}

struct DDM {
    hi: mat4x4<f32>,
    lo: mat4x4<f32>,
}

// a + r·cᵀ (column j gains r·c[j]).
fn outer(a: mat4x4<f32>, r: vec4<f32>, c: vec4<f32>) -> mat4x4<f32> {
    return mat4x4<f32>(
        fma(r, vec4<f32>(c.x), a[0]),
        fma(r, vec4<f32>(c.y), a[1]),
        fma(r, vec4<f32>(c.z), a[2]),
        fma(r, vec4<f32>(c.w), a[3]),
    );
}

// Four 4×4 blocks side by side: block row I of a 16×16 register tile.
struct Band {
    b0: mat4x4<f32>,
    b1: mat4x4<f32>,
    b2: mat4x4<f32>,
    b3: mat4x4<f32>,
}

fn zero_band() -> Band {
    let z = mat4x4<f32>();
    return Band(z, z, z, z);
}

// Block J of the band gains r·c_Jᵀ.
fn band_outer(a: Band, r: vec4<f32>, c0: vec4<f32>, c1: vec4<f32>, c2: vec4<f32>, c3: vec4<f32>) -> Band {
    return Band(outer(a.b0, r, c0), outer(a.b1, r, c1), outer(a.b2, r, c2), outer(a.b3, r, c3));
}

fn opq4(v: vec4<f32>) -> vec4<f32> {
    return bitcast<vec4<f32>>(bitcast<vec4<u32>>(v) | vec4<u32>(P.zero));
}

// (hi, lo) += v: hi two-summed with v behind opacity barriers, the rounding error into lo.
fn fold4(hi: vec4<f32>, lo: vec4<f32>, v: vec4<f32>) -> DD4 {
    let s = opq4(hi + v);
    let bb = opq4(s - hi);
    return DD4(s, lo + (opq4(hi - opq4(s - bb)) + opq4(v - bb)));
}

fn fold_m(d: DDM, v: mat4x4<f32>) -> DDM {
    let c0 = fold4(d.hi[0], d.lo[0], v[0]);
    let c1 = fold4(d.hi[1], d.lo[1], v[1]);
    let c2 = fold4(d.hi[2], d.lo[2], v[2]);
    let c3 = fold4(d.hi[3], d.lo[3], v[3]);
    return DDM(mat4x4<f32>(c0.hi, c1.hi, c2.hi, c3.hi), mat4x4<f32>(c0.lo, c1.lo, c2.lo, c3.lo));
}

// Element `at` (= invocation·256 + e) of the tile: to `partials`, or with one split straight
// into C (invocation = tile), added to the previous C unless replacing.
fn put1(at: u32, ok: bool, hi: f32, lo: f32) {
    let v = select(vec2<f32>(0.0), quick_two_sum(hi, lo), ok);
    if (P.direct != 0u) {
        if (P.incremental != 0u) {
            c_dst[at] = dd_add(c_src[at], v);
        } else {
            c_dst[at] = v;
        }
    } else {
        partials[at] = v;
    }
}

// Column `col` (0..15) of the tile from block column (hi, lo), rows row0..row0+3.
fn put_col(out: u32, row0: u32, col: u32, valid: u32, hi: vec4<f32>, lo: vec4<f32>) {
    let cv = ((valid >> (col + 16u)) & 1u) != 0u;
    put1(out + row0 * 16u + col, cv && ((valid >> row0) & 1u) != 0u, hi.x, lo.x);
    put1(out + (row0 + 1u) * 16u + col, cv && ((valid >> (row0 + 1u)) & 1u) != 0u, hi.y, lo.y);
    put1(out + (row0 + 2u) * 16u + col, cv && ((valid >> (row0 + 2u)) & 1u) != 0u, hi.z, lo.z);
    put1(out + (row0 + 3u) * 16u + col, cv && ((valid >> (row0 + 3u)) & 1u) != 0u, hi.w, lo.w);
}

fn put_block(out: u32, bi: u32, bj: u32, valid: u32, d: DDM) {
    put_col(out, 4u * bi, 4u * bj, valid, d.hi[0], d.lo[0]);
    put_col(out, 4u * bi, 4u * bj + 1u, valid, d.hi[1], d.lo[1]);
    put_col(out, 4u * bi, 4u * bj + 2u, valid, d.hi[2], d.lo[2]);
    put_col(out, 4u * bi, 4u * bj + 3u, valid, d.hi[3], d.lo[3]);
}

fn sent_mask(v: vec4<u32>, shift: u32) -> u32 {
    let ok = v != vec4<u32>(SENT);
    return (select(0u, 1u, ok.x) | select(0u, 2u, ok.y) | select(0u, 4u, ok.z)
        | select(0u, 8u, ok.w)) << shift;
}

fn members4(at: u32) -> vec4<u32> {
    return vec4<u32>(idx[at], idx[at + 1u], idx[at + 2u], idx[at + 3u]);
}

@compute @workgroup_size(64)
fn cov_tiles(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let lane = (wid.x + wid.y * nwg.x) * 64u + lid;
    if (lane >= P.n_tiles * P.n_splits) {
        return;
    }
    let tile = tiles[lane % P.n_tiles];
    let split = lane / P.n_tiles;
    let s_begin = split * P.split_len;
    let s_end = min(s_begin + P.split_len, P.n_rows);
    let diag = tile.x == tile.y;
    let z4 = vec4<u32>(0u);
    let q0 = members4(tile.x);
    let q1 = members4(tile.x + 4u);
    let q2 = members4(tile.x + 8u);
    let q3 = members4(tile.x + 12u);
    let p0 = members4(tile.y);
    let p1 = members4(tile.y + 4u);
    let p2 = members4(tile.y + 8u);
    let p3 = members4(tile.y + 12u);
    let valid = sent_mask(q0, 0u) | sent_mask(q1, 4u) | sent_mask(q2, 8u) | sent_mask(q3, 12u)
        | sent_mask(p0, 16u) | sent_mask(p1, 20u) | sent_mask(p2, 24u) | sent_mask(p3, 28u);
    let rm0 = select(z4, q0, q0 != vec4<u32>(SENT));
    let rm1 = select(z4, q1, q1 != vec4<u32>(SENT));
    let rm2 = select(z4, q2, q2 != vec4<u32>(SENT));
    let rm3 = select(z4, q3, q3 != vec4<u32>(SENT));
    let cm0 = select(z4, p0, p0 != vec4<u32>(SENT));
    let cm1 = select(z4, p1, p1 != vec4<u32>(SENT));
    let cm2 = select(z4, p2, p2 != vec4<u32>(SENT));
    let cm3 = select(z4, p3, p3 != vec4<u32>(SENT));
    let zm = mat4x4<f32>();

    var d00 = DDM(zm, zm);
    var d01 = DDM(zm, zm);
    var d02 = DDM(zm, zm);
    var d03 = DDM(zm, zm);
    var d10 = DDM(zm, zm);
    var d11 = DDM(zm, zm);
    var d12 = DDM(zm, zm);
    var d13 = DDM(zm, zm);
    var d20 = DDM(zm, zm);
    var d21 = DDM(zm, zm);
    var d22 = DDM(zm, zm);
    var d23 = DDM(zm, zm);
    var d30 = DDM(zm, zm);
    var d31 = DDM(zm, zm);
    var d32 = DDM(zm, zm);
    var d33 = DDM(zm, zm);
    for (var b = s_begin; b < s_end; b += 16u) {
        var a00 = zm;
        var a01 = zm;
        var a02 = zm;
        var a03 = zm;
        var a10 = zm;
        var a11 = zm;
        var a12 = zm;
        var a13 = zm;
        var a20 = zm;
        var a21 = zm;
        var a22 = zm;
        var a23 = zm;
        var a30 = zm;
        var a31 = zm;
        var a32 = zm;
        var a33 = zm;
        let b_end = min(b + 16u, s_end);
        for (var s = b; s < b_end; s++) {
            let base = s * P.n_ch;
            let r0 = row4(base, rm0);
            let r1 = row4(base, rm1);
            let r2 = row4(base, rm2);
            let r3 = row4(base, rm3);
            var c0 = r0;
            var c1 = r1;
            var c2 = r2;
            var c3 = r3;
            if (!diag) {
                c0 = row4(base, cm0);
                c1 = row4(base, cm1);
                c2 = row4(base, cm2);
                c3 = row4(base, cm3);
            }
            a00 = outer(a00, r0, c0);
            a01 = outer(a01, r0, c1);
            a02 = outer(a02, r0, c2);
            a03 = outer(a03, r0, c3);
            a10 = outer(a10, r1, c0);
            a11 = outer(a11, r1, c1);
            a12 = outer(a12, r1, c2);
            a13 = outer(a13, r1, c3);
            a20 = outer(a20, r2, c0);
            a21 = outer(a21, r2, c1);
            a22 = outer(a22, r2, c2);
            a23 = outer(a23, r2, c3);
            a30 = outer(a30, r3, c0);
            a31 = outer(a31, r3, c1);
            a32 = outer(a32, r3, c2);
            a33 = outer(a33, r3, c3);
        }
        d00 = fold_m(d00, a00);
        d01 = fold_m(d01, a01);
        d02 = fold_m(d02, a02);
        d03 = fold_m(d03, a03);
        d10 = fold_m(d10, a10);
        d11 = fold_m(d11, a11);
        d12 = fold_m(d12, a12);
        d13 = fold_m(d13, a13);
        d20 = fold_m(d20, a20);
        d21 = fold_m(d21, a21);
        d22 = fold_m(d22, a22);
        d23 = fold_m(d23, a23);
        d30 = fold_m(d30, a30);
        d31 = fold_m(d31, a31);
        d32 = fold_m(d32, a32);
        d33 = fold_m(d33, a33);
    }
    let out = lane * 256u;
    put_block(out, 0u, 0u, valid, d00);
    put_block(out, 0u, 1u, valid, d01);
    put_block(out, 0u, 2u, valid, d02);
    put_block(out, 0u, 3u, valid, d03);
    put_block(out, 1u, 0u, valid, d10);
    put_block(out, 1u, 1u, valid, d11);
    put_block(out, 1u, 2u, valid, d12);
    put_block(out, 1u, 3u, valid, d13);
    put_block(out, 2u, 0u, valid, d20);
    put_block(out, 2u, 1u, valid, d21);
    put_block(out, 2u, 2u, valid, d22);
    put_block(out, 2u, 3u, valid, d23);
    put_block(out, 3u, 0u, valid, d30);
    put_block(out, 3u, 1u, valid, d31);
    put_block(out, 3u, 2u, valid, d32);
    put_block(out, 3u, 3u, valid, d33);
}

@compute @workgroup_size(64)
fn cov_fold(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let e = (wid.x + wid.y * nwg.x) * 64u + lid;
    let n = P.n_tiles * 256u;
    if (e >= n) {
        return;
    }
    var acc = vec2<f32>(0.0);
    for (var sp = 0u; sp < P.n_splits; sp++) {
        acc = dd_add(acc, partials[sp * n + e]);
    }
    if (P.incremental != 0u) {
        acc = dd_add(c_src[e], acc);
    }
    c_dst[e] = acc;
}

// ---------------------------------------------------------------------------------------------
// Batched weight solve

var<workgroup> wg_status: u32;
var<workgroup> wg_d: vec2<f32>;

// C entry (a, b) of a cluster (cluster-local indices), from the upper tiles of its group.
fn c_at(cl: Cluster, a: u32, b: u32) -> vec2<f32> {
    var pa = idx[cl.pos_off + a];
    var pb = idx[cl.pos_off + b];
    if (pa > pb) {
        let t = pa;
        pa = pb;
        pb = t;
    }
    let ba = pa / 16u;
    let bb = pb / 16u;
    let tile = cl.g_tile + ba * (2u * cl.g_nb - ba + 1u) / 2u + (bb - ba);
    return c_src[tile * 256u + (pa % 16u) * 16u + (pb % 16u)];
}

// 2^(−⌊e/2⌋) for d = f·2^e (so that s²·d ∈ [1, 4)); 1 for d ≤ 0.
fn pow2_scale(d: f32) -> f32 {
    if (!(d > 0.0)) {
        return 1.0;
    }
    let e = i32((bitcast<u32>(d) >> 23u) & 0xffu) - 127;
    let h = select((e - 1) / 2, e / 2, e >= 0);
    return bitcast<f32>(u32(127 - h) << 23u);
}

@compute @workgroup_size(64)
fn solve(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let ci = wid.x;
    if (ci >= P.n_clusters) {
        return;
    }
    let cl = clusters[ci];
    let k = cl.k;
    let A = cl.s_off;
    let COL = A + k * k;
    let AUX = COL + k;
    let lam = vec2<f32>(P.lam_hi, P.lam_lo);

    // Scales (exact powers of two) and equilibrated diagonal.
    for (var a = lid; a < k; a += 64u) {
        let d = dd_add(c_at(cl, a, a), lam);
        let s = pow2_scale(d.x);
        scratch[AUX + a] = vec2<f32>(s, select(0.0, d.x * s * s, d.x > 0.0));
    }
    storageBarrier();
    for (var j = lid; j < k; j += 64u) {
        let sj = scratch[AUX + j].x;
        for (var i = 0u; i < k; i++) {
            var v = c_at(cl, i, j);
            if (i == j) {
                v = dd_add(v, lam);
            }
            scratch[A + i * k + j] = v * (scratch[AUX + i].x * sj);
        }
    }
    storageBarrier();

    var singular = 0u;
    for (var p = 0u; p < k; p++) {
        if (lid == 0u) {
            let dg = scratch[AUX + p].y;
            let piv = scratch[A + p * k + p];
            var st = 0u;
            if (dg == 0.0) {
                st = 1u; // dead channel: skipped
            } else if (!(piv.x > P.tol * dg)) {
                st = 2u; // singular
            } else {
                wg_d = dd_div(vec2<f32>(1.0, 0.0), piv);
            }
            wg_status = st;
        }
        let st = workgroupUniformLoad(&wg_status);
        if (st == 2u) {
            singular = 1u;
            break;
        }
        if (st == 1u) {
            continue;
        }
        let d = wg_d;
        // New row p and the column multipliers.
        for (var t = lid; t < k; t += 64u) {
            if (t == p) {
                scratch[A + p * k + p] = d;
                scratch[COL + p] = vec2<f32>(0.0);
            } else {
                scratch[A + p * k + t] = dd_mul(scratch[A + p * k + t], d);
                let c = scratch[A + t * k + p];
                scratch[COL + t] = c;
                scratch[A + t * k + p] = -dd_mul(c, d);
            }
        }
        storageBarrier();
        // Rank-1 update of everything outside row and column p.
        for (var j = lid; j < k; j += 64u) {
            if (j != p) {
                let rp = scratch[A + p * k + j];
                for (var i = 0u; i < k; i++) {
                    let f = scratch[COL + i];
                    if (i != p && f.x != 0.0) {
                        scratch[A + i * k + j] = dd_sub(scratch[A + i * k + j], dd_mul(f, rp));
                    }
                }
            }
        }
        storageBarrier();
    }

    if (singular == 0u) {
        for (var b = lid; b < k; b += 64u) {
            let dbb = scratch[A + b * k + b].x;
            let sb = scratch[AUX + b].x;
            for (var a = 0u; a < k; a++) {
                var w = 0.0;
                if (a != b && dbb != 0.0) {
                    w = -(scratch[AUX + a].x / sb) * (scratch[A + a * k + b].x / dbb);
                    if (!(abs(w) <= 3.0e38)) {
                        w = 0.0;
                    }
                }
                set_m(cl.m_off + a * k + b, select(0.0, 1.0, a == b) - w);
            }
        }
    }
    if (lid == 0u) {
        flags[ci] = singular;
    }
}

// ---------------------------------------------------------------------------------------------
// Block-diagonal application Y = X·(I − W)
//
// One invocation = 16 samples × one job: 16 output channels of a cluster (a 16×16 register
// tile, `transform_cluster` of the layout file) or a copy of up to 16 pass-through channels.

// Row offsets (in elements of `x`, `stride` per row) of samples s0 .. s0 + 15, clamped to the
// last row: samples 4I .. 4I + 3 in wI.
struct Rows16 {
    w0: vec4<u32>,
    w1: vec4<u32>,
    w2: vec4<u32>,
    w3: vec4<u32>,
}

fn rows16(s0: u32, stride: u32) -> Rows16 {
    let last = vec4<u32>(P.n_rows - 1u);
    let i4 = vec4<u32>(0u, 1u, 2u, 3u);
    return Rows16(
        min(vec4<u32>(s0) + i4, last) * stride,
        min(vec4<u32>(s0 + 4u) + i4, last) * stride,
        min(vec4<u32>(s0 + 8u) + i4, last) * stride,
        min(vec4<u32>(s0 + 12u) + i4, last) * stride,
    );
}

// Writes the tile of bands a0 .. a3 (block rows I = 0 .. 3) with the layout file's
// `store_block` (outputs past the cluster and samples past the chunk are skipped).
fn store_tile(cl: Cluster, s0: u32, c0: u32, a0: Band, a1: Band, a2: Band, a3: Band) {
    store_band(cl, s0, c0, 0u, a0);
    store_band(cl, s0, c0, 1u, a1);
    store_band(cl, s0, c0, 2u, a2);
    store_band(cl, s0, c0, 3u, a3);
}

fn store_band(cl: Cluster, s0: u32, c0: u32, i: u32, a: Band) {
    store_block(cl, s0, c0, i, 0u, a.b0);
    store_block(cl, s0, c0, i, 1u, a.b1);
    store_block(cl, s0, c0, i, 2u, a.b2);
    store_block(cl, s0, c0, i, 3u, a.b3);
}

@compute @workgroup_size(64)
fn transform(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let lane = (wid.x + wid.y * nwg.x) * 64u + lid;
    let job_i = lane % P.n_jobs;
    let s0 = (lane / P.n_jobs) * 16u;
    if (s0 >= P.n_rows) {
        return;
    }
    let job = jobs[job_i];
    if (job.x == 1u) {
        // Pass-through channels idx[job.y ..][..job.w].
        let nc = P.n_ch;
        let s_end = min(s0 + 16u, P.n_rows);
        for (var c = 0u; c < job.w; c++) {
            let ch = idx[job.y + c];
            for (var s = s0; s < s_end; s++) {
                copy_x(s * nc + ch);
            }
        }
        return;
    }
    transform_cluster(clusters[job.y], job.z, s0);
}
