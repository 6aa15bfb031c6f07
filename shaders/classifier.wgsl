// Max-rate classifier (SPEC §5). Five entry points share one layout:
//   time_mean       — per (row, 4 neurons) of a sub-batch: the mean over a leading time axis
//                     of f32 values, u8 values, or bits packed along time (numpy.packbits
//                     layout); also repacks (B, N) rows whose N is not a multiple of 4;
//   update          — per 16 neurons: per-class sums over the sub-batch's rows (sorted by
//                     class on the host), then on the last sub-batch the decayed rates, the
//                     derived proportions / assignments and the class histogram;
//   derive          — per 16 neurons: derived state of rates written by the host (load);
//   regress_partial — per (row, chunk of neurons, group of ≤ 16 classes): per-class sums of
//                     x·w over the chunk (the class index is the same for every row, so it
//                     indexes a private accumulator array uniformly);
//   regress_finish  — per (row, class): the chunks' sums, divided by the occupancy (NaN/±inf
//                     → 0). The argmax is taken on the host from the read-back logits.
// Inputs of update / regress are rows of N4 = ⌈N/4⌉·4 floats (zero padded), read as vec4.
// Each invocation walks its own contiguous run of memory, the access pattern Mesa's
// llvmpipe streams fastest; no kernel in the hot path has a barrier except the histogram at
// the end of `update` / `derive`.
// State is double-buffered: `*_cur` is the committed state (read only), `*_next` the state
// being built; the host swaps them only when the flags report nothing wrong.
// Every invocation runs well under 65 535 loop iterations in total (llvmpipe silently ends
// an invocation past that): the host bounds rows per sub-batch (8 192), classes (512),
// planes per time-mean group (16 384) and sizes the regress chunks.

struct Params {
    n: u32,            // neurons N
    k: u32,            // classes K
    n4q: u32,          // vec4 per input row (N4 / 4)
    rows: u32,         // rows of this sub-batch
    x_shift4: u32,     // vec4 offset of the sub-batch's first row in the x4 window
    chunk_q: u32,      // regress: vec4 per invocation chunk
    n_chunks: u32,     // regress: chunks per row
    n_cg: u32,         // regress: class groups of 16
    mode: u32,         // bit 0: first sub-batch / plane group, bit 1: last
    proportional: u32, // weight by the assigned class's proportion
    row0: u32,         // the sub-batch's first row in the batch (error positions)
    planes: u32,       // time_mean: planes in this group
    plane_stride: u32, // time_mean: elements (f32) or bytes (u8) from one plane to the next
    kind: u32,         // time_mean: 0 f32, 1 u8 values, 2 packed bits
    t0: u32,           // time_mean: first time step of the group (packed: 8 × first plane)
    n_steps: u32,      // time_mean: T, the divisor
    raw_shift: u32,    // time_mean: element / byte offset of the group in the xraw window
    meta_perm: u32,    // update: index in `cmeta` of the sub-batch's rows sorted by class
    lg_off: u32,       // regress: index in `partials` where the logits go
    pad: u32,
}

const WG: u32 = 64u;
const NONE: u32 = 0xffffffffu;

@group(0) @binding(0) var<uniform> P: Params;
// [0, K): exp(−decay·c_k) as f32 bits; [K, 2K): c_k in the whole batch; [2K, 3K+1): start of
// each class in the sorted rows; [3K+1, …): this sub-batch's rows sorted by class.
@group(0) @binding(1) var<storage, read> cmeta: array<u32>;
// time_mean's input: f32 bits or bytes packed four to a word (little-endian).
@group(0) @binding(2) var<storage, read> xraw: array<u32>;
// update / regress input: rows of N4 floats.
@group(0) @binding(3) var<storage, read> x4: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> rates_cur: array<f32>;
@group(0) @binding(5) var<storage, read_write> rates_next: array<f32>;
@group(0) @binding(6) var<storage, read_write> props_next: array<f32>;
// Per neuron (N4 entries; padding neurons NONE / 0): assigned class and its proportion.
@group(0) @binding(7) var<storage, read> asg_cur: array<vec4<u32>>;
@group(0) @binding(8) var<storage, read> wts_cur: array<vec4<f32>>;
@group(0) @binding(9) var<storage, read_write> asg_next: array<u32>;
@group(0) @binding(10) var<storage, read_write> wts_next: array<f32>;
@group(0) @binding(11) var<storage, read> occ_cur: array<u32>;
@group(0) @binding(12) var<storage, read_write> occ_next: array<atomic<u32>>;
// Regress partial sums, (row, class, chunk); the logits (row, class) from `lg_off`.
@group(0) @binding(13) var<storage, read_write> partials: array<f32>;
// [0]: smallest row whose logit sums are not finite; [1]: smallest neuron·K + class whose
// new rate is not finite; [2]: smallest neuron with a non-finite class sum; [3]: smallest
// row·N + neuron with a non-finite time mean. 0xFFFFFFFF when none.
@group(0) @binding(14) var<storage, read_write> flags: array<atomic<u32>>;
// time_mean's output: rows of N4 floats.
@group(0) @binding(15) var<storage, read_write> xmean: array<vec4<f32>>;

var<workgroup> hist: array<atomic<u32>, 64>;

fn group_index(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.x + wid.y * nwg.x;
}

// Finite test on the bits (robust against compilers that assume no NaN or infinity).
fn finite(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7f800000u) != 0x7f800000u;
}

fn byte_at(at: u32) -> u32 {
    return (xraw[at >> 2u] >> ((at & 3u) * 8u)) & 0xffu;
}

// Sum over this group's planes of the raw input at element / byte `e` of a plane.
fn plane_sum(e: u32) -> f32 {
    var acc = 0.0;
    for (var p = 0u; p < P.planes; p++) {
        let at = P.raw_shift + p * P.plane_stride + e;
        if P.kind == 0u {
            acc += bitcast<f32>(xraw[at]);
        } else if P.kind == 1u {
            acc += f32(byte_at(at));
        } else {
            // Big-endian bits: time step 8·plane + j is bit 7 − j; bits past T are ignored.
            let valid = min(8u, P.n_steps - (P.t0 + p * 8u));
            let mask = (0xff00u >> valid) & 0xffu;
            acc += f32(countOneBits(byte_at(at) & mask));
        }
    }
    return acc;
}

@compute @workgroup_size(64)
fn time_mean(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let t = group_index(wid, nwg) * WG + lid;
    if t >= P.rows * P.n4q {
        return;
    }
    let r = t / P.n4q;
    let q = t % P.n4q;
    var acc = vec4<f32>(0.0);
    if (P.mode & 1u) == 0u {
        acc = xmean[t];
    }
    for (var c = 0u; c < 4u; c++) {
        let n = 4u * q + c;
        if n < P.n {
            var v = acc[c] + plane_sum(r * P.n + n);
            if (P.mode & 2u) != 0u {
                v = v / f32(P.n_steps);
                if !finite(v) {
                    atomicMin(&flags[3], (P.row0 + r) * P.n + n);
                }
            }
            acc[c] = v;
        }
    }
    xmean[t] = acc;
}

// Proportions and assignment of neuron `n` from rates_next; returns the assigned class.
fn derive_neuron(n: u32) -> u32 {
    let base = n * P.k;
    var l1 = 0.0;
    for (var k = 0u; k < P.k; k++) {
        let r = rates_next[base + k];
        if !finite(r) {
            atomicMin(&flags[1], base + k);
        }
        l1 += abs(r);
    }
    let den = max(l1, 1e-12);
    var best = 0.0;
    var bi = 0u;
    for (var k = 0u; k < P.k; k++) {
        let p = rates_next[base + k] / den;
        props_next[base + k] = p;
        if k == 0u || p > best {
            best = p;
            bi = k;
        }
    }
    asg_next[n] = bi;
    wts_next[n] = best;
    return bi;
}

// Derived state of the 16 neurons from `n0`, added to the class histogram (workgroup-uniform
// call: it has barriers).
fn derive_and_count(n0: u32, lid: u32) {
    atomicStore(&hist[lid], 0u);
    workgroupBarrier();
    for (var j = 0u; j < 16u; j++) {
        let n = n0 + j;
        if n < P.n {
            let a = derive_neuron(n);
            if a < WG {
                atomicAdd(&hist[a], 1u);
            } else {
                atomicAdd(&occ_next[a], 1u);
            }
        } else if n < 4u * P.n4q {
            asg_next[n] = NONE;
            wts_next[n] = 0.0;
        }
    }
    workgroupBarrier();
    let h = atomicLoad(&hist[lid]);
    if h > 0u {
        atomicAdd(&occ_next[lid], h);
    }
}

@compute @workgroup_size(64)
fn update(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let q0 = (group_index(wid, nwg) * WG + lid) * 4u;
    let nk = P.k;
    if q0 < P.n4q {
        let nq = min(4u, P.n4q - q0);
        for (var k = 0u; k < nk; k++) {
            var s: array<vec4<f32>, 4>;
            // The class sums continue from the previous sub-batch (same order as one pass).
            if (P.mode & 1u) == 0u {
                for (var j = 0u; j < 16u; j++) {
                    let n = 4u * q0 + j;
                    if n < P.n {
                        s[j / 4u][j % 4u] = rates_next[n * nk + k];
                    }
                }
            }
            let j1 = cmeta[2u * nk + k + 1u];
            for (var j = cmeta[2u * nk + k]; j < j1; j++) {
                let base = P.x_shift4 + cmeta[P.meta_perm + j] * P.n4q + q0;
                s[0] += x4[base];
                if nq > 1u {
                    s[1] += x4[base + 1u];
                }
                if nq > 2u {
                    s[2] += x4[base + 2u];
                }
                if nq > 3u {
                    s[3] += x4[base + 3u];
                }
            }
            let last = (P.mode & 2u) != 0u;
            let c = cmeta[nk + k];
            let d = bitcast<f32>(cmeta[k]);
            for (var j = 0u; j < 16u; j++) {
                let n = 4u * q0 + j;
                if n < P.n {
                    let v = s[j / 4u][j % 4u];
                    if !finite(v) {
                        atomicMin(&flags[2], n);
                    }
                    let i = n * nk + k;
                    if last {
                        var r = rates_cur[i];
                        if c > 0u {
                            r = d * r + v / f32(c);
                        }
                        rates_next[i] = r;
                    } else {
                        rates_next[i] = v;
                    }
                }
            }
        }
    }
    if (P.mode & 2u) != 0u {
        derive_and_count(4u * q0, lid);
    }
}

@compute @workgroup_size(64)
fn derive(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    derive_and_count((group_index(wid, nwg) * WG + lid) * 16u, lid);
}

@compute @workgroup_size(64)
fn regress_partial(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let g = group_index(wid, nwg);
    let row_groups = (P.rows + WG - 1u) / WG;
    let rg = g % row_groups;
    let rest = g / row_groups;
    let chunk = rest % P.n_chunks;
    let cg = rest / P.n_chunks;
    let row = rg * WG + lid;
    if row >= P.rows || cg >= P.n_cg {
        return;
    }
    let k0 = cg * 16u;
    var acc: array<f32, 16>;
    let xrow = P.x_shift4 + row * P.n4q;
    let q0 = chunk * P.chunk_q;
    let q1 = min(q0 + P.chunk_q, P.n4q);
    for (var q = q0; q < q1; q++) {
        var p = x4[xrow + q];
        if P.proportional != 0u {
            p = p * wts_cur[q];
        }
        // The same neurons for every row: these indices and branches are uniform.
        let rel = asg_cur[q] - vec4<u32>(k0);
        if rel.x < 16u {
            acc[rel.x] += p.x;
        }
        if rel.y < 16u {
            acc[rel.y] += p.y;
        }
        if rel.z < 16u {
            acc[rel.z] += p.z;
        }
        if rel.w < 16u {
            acc[rel.w] += p.w;
        }
    }
    let kn = min(16u, P.k - k0);
    for (var j = 0u; j < kn; j++) {
        partials[(row * P.k + k0 + j) * P.n_chunks + chunk] = acc[j];
    }
}

@compute @workgroup_size(64)
fn regress_finish(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let t = group_index(wid, nwg) * WG + lid;
    if t >= P.rows * P.k {
        return;
    }
    let r = t / P.k;
    let k = t % P.k;
    // Chunks summed in groups of 64, then the groups: depth 64 + ⌈chunks/64⌉.
    let base = t * P.n_chunks;
    var s = 0.0;
    for (var c0 = 0u; c0 < P.n_chunks; c0 += 64u) {
        var g = 0.0;
        let c1 = min(c0 + 64u, P.n_chunks);
        for (var c = c0; c < c1; c++) {
            g += partials[base + c];
        }
        s += g;
    }
    if !finite(s) {
        atomicMin(&flags[0], P.row0 + r);
    }
    let o = occ_cur[k];
    var lg = 0.0;
    if o > 0u {
        lg = s / f32(o);
        if !finite(lg) {
            lg = 0.0;
        }
    }
    partials[P.lg_off + t] = lg;
}
