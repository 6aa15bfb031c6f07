// Synthesis of the simulated recording (SPEC §7, "Closed-loop simulation"). The definition,
// and the CPU twin, are in src/simulate/synth.rs; the host half is src/simulate/gpu.rs.
//
// Entry point `synth`: one invocation per (row, channel) of one piece of a chunk writes
//   normal(NOISE)·noise_uv + normal(SHARED)·shared_uv + Σ_i gain[c][i]·sin(2π·phase_i(t))
//   + Σ amplitude[c]·wave[t − onset]   (the channel's onsets covering t, in onset order)
// with t = start + row the absolute sample. The normals are Box–Muller in f32 from the
// Philox words of counter (t_lo, t_hi, c, NOISE) and (t_lo, t_hi, c / cluster, SHARED).
// The LFP phase of component i at t, in cycles, is phases[t / 64 − block0][i] (the phase at
// the start of t's absolute 64-sample block, reduced mod 1 on the host in f64) plus
// (t mod 64)·dphase[i], reduced to [−0.5, 0.5) before scaling by 2π: every term depends on t
// alone, so any chunking gives the same values, and the phase stays exact to ~1e-7 cycles at
// any t. f32 / i32 / u32 only.
//
// Bindings (group 0):
//   0 params     uniform     Params of this dispatch (piece)
//   1 amplitude  storage r   f32 per channel: spike trough depth, µV
//   2 gains      storage r   vec4<f32> per channel: the four LFP gains, µV
//   3 wave       storage r   f32 per sample of the 1 ms waveform
//   4 offsets    storage r   u32 (channels + 1): channel c's onsets are onsets[offsets[c] ..
//                            offsets[c + 1]]
//   5 onsets     storage r   i32 onset sample relative to the chunk's first sample, sorted
//                            within each channel
//   6 phases     storage r   vec4<f32> per 64-sample block overlapping the chunk
//   7 output     storage rw  f32 (rows, n_channels), rows of this piece only

const NOISE: u32 = 0x510006u;
const SHARED: u32 = 0x510007u;
const TAU: f32 = 6.283185307179586;

struct Params {
    n_channels: u32, // channels (row stride)
    rows: u32,       // rows in this piece
    t_lo: u32,       // absolute sample of the piece's first row, low word
    t_hi: u32,       // high word
    row0: u32,       // the piece's first row within the chunk
    shift: u32,      // chunk start mod 64
    cluster: u32,    // channels per shared-noise cluster (≥ 1)
    n_wave: u32,     // waveform samples
    key0: u32,
    key1: u32,
    noise_uv: f32,
    shared_uv: f32,
    dphase: vec4<f32>, // cycles per sample of each LFP component
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> amplitude: array<f32>;
@group(0) @binding(2) var<storage, read> gains: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> wave: array<f32>;
@group(0) @binding(4) var<storage, read> offsets: array<u32>;
@group(0) @binding(5) var<storage, read> onsets: array<i32>;
@group(0) @binding(6) var<storage, read> phases: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read_write> output: array<f32>;

// A standard normal from two words (Box–Muller), as the CPU twin computes it. The clamp only
// guards against an approximate `log` returning a tiny positive value for u1 near 1.
fn normal(w0: u32, w1: u32) -> f32 {
    let u1 = (f32(w0 >> 8u) + 1.0) * (1.0 / 16777216.0);
    let u2 = f32(w1 >> 8u) * (1.0 / 16777216.0);
    return sqrt(max(-2.0 * log(u1), 0.0)) * cos(TAU * u2);
}

// sin(2π·p) for p in cycles, reduced to [−0.5, 0.5).
fn sin_cycles(p: f32) -> f32 {
    return sin(TAU * (p - floor(p + 0.5)));
}

@compute @workgroup_size(64)
fn synth(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let nc = params.n_channels;
    let idx = (wid.x + wid.y * nwg.x) * 64u + lid;
    if (idx >= params.rows * nc) {
        return;
    }
    let r = idx / nc;
    let c = idx - r * nc;
    let t_lo = params.t_lo + r;
    let t_hi = params.t_hi + select(0u, 1u, t_lo < params.t_lo);
    let key = vec2<u32>(params.key0, params.key1);

    let w = philox4x32_10(vec4<u32>(t_lo, t_hi, c, NOISE), key);
    let ws = philox4x32_10(vec4<u32>(t_lo, t_hi, c / params.cluster, SHARED), key);
    let cluster_noise = normal(ws.x, ws.y) * params.shared_uv;

    let rc = params.row0 + r;
    let base = phases[(rc + params.shift) >> 6u];
    let off = f32(t_lo & 63u) * params.dphase;
    let g = gains[c];
    let l = g.x * sin_cycles(base.x + off.x) + g.y * sin_cycles(base.y + off.y)
        + g.z * sin_cycles(base.z + off.z) + g.w * sin_cycles(base.w + off.w);

    var x = normal(w.x, w.y) * params.noise_uv + cluster_noise + l;

    // The channel's onsets in [rc − n_wave + 1, rc]: binary search for the first, then in order.
    let first = i32(rc) - i32(params.n_wave) + 1;
    var lo = offsets[c];
    var hi = offsets[c + 1u];
    let end = hi;
    for (var step = 0u; step < 32u && lo < hi; step = step + 1u) {
        let mid = lo + (hi - lo) / 2u;
        if (onsets[mid] < first) {
            lo = mid + 1u;
        } else {
            hi = mid;
        }
    }
    let a = amplitude[c];
    for (var j = lo; j < end; j = j + 1u) {
        let s = onsets[j];
        if (s > i32(rc)) {
            break;
        }
        x = x + a * wave[u32(i32(rc) - s)];
    }
    output[r * nc + c] = x;
}
