// Common-average reference (SPEC §7, "Reference"). The definition, and the CPU twin, are in
// src/reference/{mod.rs, cpu.rs}; the host half is src/reference/gpu.rs.
//
// Per piece of rows (the host splits a chunk only where a binding would pass the device's
// limit), two dispatches:
//   * `row_mean` (one invocation per row) or `row_median_rank` (one per sample) writes each
//     row's two middle values into `mid` (for the mean, the mean twice);
//   * `subtract` (one invocation per sample) writes x − (mid.x/2 + mid.y/2) and flags
//     non-finite samples in `status`.
// The mean is a pairwise (binary-counter cascade) f32 sum: error O(log₂(channels)·ε). The
// median ranks every sample of a row against the others (ties broken by channel index), so
// exactly one sample has each rank; the samples of rank ⌊(n−1)/2⌋ and ⌊n/2⌋ are the middle
// values. Every loop runs at most 2·n_channels iterations; the host keeps n_channels ≤ 16 384
// (llvmpipe silently ends an invocation after 65 535 loop iterations).
//
// Bindings (group 0):
//   0 params   uniform     Params of this piece
//   1 samples  storage r   f32 (rows, n_channels), rows of this piece only
//   2 mid      storage rw  vec2<f32> per row of the piece
//   3 output   storage rw  f32 (rows, n_channels), rows of this piece only
//   4 status   storage rw  atomicMax of ~row over rows holding a non-finite sample (0: none)

override WG_SIZE: u32 = 64u;

struct Params {
    n_channels: u32, // channels (row stride)
    rows: u32,       // rows in this piece
    row0: u32,       // first row of this piece within the chunk
    pad: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> samples: array<f32>;
@group(0) @binding(2) var<storage, read_write> mid: array<vec2<f32>>;
@group(0) @binding(3) var<storage, read_write> output: array<f32>;
@group(0) @binding(4) var<storage, read_write> status: array<atomic<u32>>;

fn linear_id(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * WG_SIZE + lid;
}

@compute @workgroup_size(WG_SIZE)
fn row_mean(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let r = linear_id(wid, nwg, lid);
    if r >= params.rows {
        return;
    }
    let nc = params.n_channels;
    let base = r * nc;
    // Pairwise sum: level l of the stack holds the sum of a block of 2^l samples.
    var stack: array<f32, 32>;
    for (var i = 0u; i < nc; i++) {
        var s = samples[base + i];
        var k = i + 1u;
        var l = 0u;
        while (k & 1u) == 0u {
            s = stack[l] + s;
            k = k >> 1u;
            l += 1u;
        }
        stack[l] = s;
    }
    var total = 0.0;
    var started = false;
    for (var l = 31u; l < 32u; l--) {
        if ((nc >> l) & 1u) != 0u {
            total = select(stack[l], total + stack[l], started);
            started = true;
        }
    }
    let m = total / f32(nc);
    mid[r] = vec2<f32>(m, m);
}

@compute @workgroup_size(WG_SIZE)
fn row_median_rank(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let g = linear_id(wid, nwg, lid);
    let nc = params.n_channels;
    if g >= params.rows * nc {
        return;
    }
    let r = g / nc;
    let c = g - r * nc;
    let base = r * nc;
    let x = samples[g];
    var rank = 0u;
    for (var j = 0u; j < nc; j++) {
        let v = samples[base + j];
        rank += select(0u, 1u, v < x || (v == x && j < c));
    }
    if rank == (nc - 1u) / 2u {
        mid[r].x = x;
    }
    if rank == nc / 2u {
        mid[r].y = x;
    }
}

@compute @workgroup_size(WG_SIZE)
fn subtract(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let g = linear_id(wid, nwg, lid);
    let nc = params.n_channels;
    if g >= params.rows * nc {
        return;
    }
    let r = g / nc;
    let x = samples[g];
    if (bitcast<u32>(x) & 0x7f800000u) == 0x7f800000u {
        atomicMax(&status[0], ~(params.row0 + r));
    }
    let m = mid[r];
    output[g] = x - (m.x * 0.5 + m.y * 0.5);
}
