// Causal IIR filter in second-order sections (SPEC §7, "Filter"). The definition, and the CPU
// twin, are in src/filter/{mod.rs, cpu.rs}; the host half is src/filter/gpu.rs.
//
// Entry point `sosfilt`: one invocation per channel runs the cascade of transposed direct
// form II sections over the rows of one piece of the chunk, in order (input is time-major, so
// neighbouring invocations read neighbouring addresses), with the channel's section state in
// registers. The host splits a chunk into row pieces (state chained piece to piece through
// state_in/state_out) so that no invocation runs more than 16 384 loop iterations in total
// (rows·(sections + 1)); llvmpipe (lavapipe and GL) silently ends an invocation after 65 535.
//
// Arithmetic is f32 only (portable to GL), in double-single form: every coefficient is an
// unevaluated pair hi + lo of f32, every state value and every section output a pair too.
// Sums use the two-sum error-free transform, products Dekker's exact product of the hi
// parts (Veltkamp splitting: software adapters lower `fma` to a multiply and an add, so it
// gives no rounding error). The intermediates of these transforms pass through `opaque`, a
// bit-level identity the compiler cannot see through (`zero_bits` is 0, derived from
// `params.one` = 1.0): otherwise Mesa's algebraic simplification folds `(a + b) − a` to `b`
// and the error terms to 0 (multiplying by an unknown 1.0 is not enough: products get
// reassociated). Were a compiler to fold them anyway, the hi parts alone are the plain f32
// recurrence.
//
// Bindings (group 0):
//   0 params     uniform     Params of this dispatch
//   1 coeffs     storage r   per section 5 coefficients (b0, b1, b2, a1, a2), each as
//                            vec4(hi, lo, split hi, split lo) with hi = split hi + split lo
//                            (Veltkamp halves of 12 significant bits)
//   2 samples    storage r   f32 (rows, n_channels), rows of this piece only
//   3 state_in   storage r   per (section, channel): vec4(z1 hi, z1 lo, z2 hi, z2 lo),
//                            at section · n_channels + channel
//   4 state_out  storage rw  same layout
//   5 output     storage rw  f32 (rows, n_channels), rows of this piece only
//   6 status     storage rw  atomicMax of ~row over rows holding a non-finite sample (0: none)

override WG_SIZE: u32 = 64u;
const MAX_SECTIONS: u32 = 32u;

struct Params {
    n_channels: u32, // channels of the chunk (row stride)
    rows: u32,       // rows in this piece
    row0: u32,       // first row of this piece within the chunk
    n_sections: u32, // sections of the cascade (≤ MAX_SECTIONS)
    one: f32,        // 1.0 (its bits give `zero_bits`)
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> coeffs: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> samples: array<f32>;
@group(0) @binding(3) var<storage, read> state_in: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> state_out: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> output: array<f32>;
@group(0) @binding(6) var<storage, read_write> status: array<atomic<u32>>;

var<private> zero_bits: u32;

// x, hidden from the compiler's floating-point simplification (an integer xor with a 0 it
// cannot know).
fn opaque(x: f32) -> f32 {
    return bitcast<f32>(bitcast<u32>(x) ^ zero_bits);
}

// a + b = s + e exactly (Knuth's two-sum).
fn two_sum(a: f32, b: f32) -> vec2<f32> {
    let s = opaque(a + b);
    let bb = opaque(s - a);
    let e = (a - (s - bb)) + (b - bb);
    return vec2<f32>(s, e);
}

// a + b = s + e exactly when |a| ≥ |b| (or a = 0).
fn fast_two_sum(a: f32, b: f32) -> vec2<f32> {
    let s = opaque(a + b);
    let e = b - opaque(s - a);
    return vec2<f32>(s, e);
}

// Veltkamp split: a = hi + lo, each with at most 12 significant bits.
fn split(a: f32) -> vec2<f32> {
    let t = opaque(4097.0 * a);
    let hi = opaque(t - opaque(t - a));
    return vec2<f32>(hi, a - hi);
}

// Pair sum, accurate also under cancellation of the hi parts (the terms of a section's
// state update nearly cancel when its poles are close to the unit circle).
fn dd_add(a: vec2<f32>, b: vec2<f32>) -> vec2<f32> {
    let s = two_sum(a.x, b.x);
    let t = two_sum(a.y, b.y);
    let u = fast_two_sum(s.x, s.y + t.x);
    return fast_two_sum(u.x, u.y + t.y);
}

// Coefficient c (vec4 as in binding 1) times the pair y whose hi part splits as ys:
// Dekker's exact product of the hi parts plus the cross terms.
fn dd_mul(c: vec4<f32>, y: vec2<f32>, ys: vec2<f32>) -> vec2<f32> {
    let p = opaque(c.x * y.x);
    let e = (((c.z * ys.x - p) + c.z * ys.y) + c.w * ys.x) + c.w * ys.y;
    return fast_two_sum(p, e + (c.x * y.y + c.y * y.x));
}

fn neg(a: vec2<f32>) -> vec2<f32> {
    return vec2<f32>(-a.x, -a.y);
}

@compute @workgroup_size(WG_SIZE)
fn sosfilt(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let c = (wid.x + wid.y * nwg.x) * WG_SIZE + lid;
    let nc = params.n_channels;
    if c >= nc {
        return;
    }
    zero_bits = bitcast<u32>(params.one) ^ 0x3f800000u;
    let ns = min(params.n_sections, MAX_SECTIONS);
    var z: array<vec4<f32>, MAX_SECTIONS>;
    for (var s = 0u; s < ns; s++) {
        z[s] = state_in[s * nc + c];
    }
    var bad = false;
    for (var i = 0u; i < params.rows; i++) {
        let xin = samples[i * nc + c];
        if (bitcast<u32>(xin) & 0x7f800000u) == 0x7f800000u {
            atomicMax(&status[0], ~(params.row0 + i));
            bad = true;
            break;
        }
        var x = vec2<f32>(xin, 0.0);
        for (var s = 0u; s < ns; s++) {
            let b0 = coeffs[5u * s];
            let b1 = coeffs[5u * s + 1u];
            let b2 = coeffs[5u * s + 2u];
            let a1 = coeffs[5u * s + 3u];
            let a2 = coeffs[5u * s + 4u];
            let zs = z[s];
            let xs = split(x.x);
            let y = dd_add(dd_mul(b0, x, xs), zs.xy);
            let ys = split(y.x);
            let z1 = dd_add(dd_add(dd_mul(b1, x, xs), neg(dd_mul(a1, y, ys))), zs.zw);
            let z2 = dd_add(dd_mul(b2, x, xs), neg(dd_mul(a2, y, ys)));
            z[s] = vec4<f32>(z1, z2);
            x = y;
        }
        output[i * nc + c] = x.x + x.y;
    }
    if !bad {
        for (var s = 0u; s < ns; s++) {
            state_out[s * nc + c] = z[s];
        }
    }
}
