// Causal IIR filter in second-order sections (SPEC §7, "Filter"). The definition, and the CPU
// twin, are in src/filter/{mod.rs, cpu.rs}; the host half is src/filter/gpu.rs.
//
// Entry point `sosfilt`: one invocation per channel runs the cascade of transposed direct
// form II sections over the rows of one piece of the chunk, in order (input is time-major, so
// neighbouring invocations read neighbouring addresses), with the channel's section state in
// registers. The host splits a chunk into row pieces (state chained piece to piece through
// state_in/state_out) of at most 16 384 rows: the row loop is the kernel's only loop, and
// llvmpipe (lavapipe and GL) silently ends an invocation after 65 535 loop iterations.
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
// Sections of the cascade (1 ..= 32), fixed per pipeline: the kernel below spells out one
// state variable and one guarded call per section, and the guards on this constant drop
// the unused ones at pipeline creation, so every section's state lives in registers (an
// indexed array of states would live in memory: 2–3× slower on llvmpipe).
override NS: u32 = 1u;

struct Params {
    n_channels: u32, // channels of the chunk (row stride)
    rows: u32,       // rows in this piece
    row0: u32,       // first row of this piece within the chunk
    n_sections: u32, // sections of the cascade (= NS)
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

// Pair sum: the hi parts by two-sum, the lo parts added plainly. Its absolute error is
// about 2⁻²⁴·(|a.lo| + |b.lo|) ≈ 2⁻⁴⁸·(|a| + |b|) even when the hi parts cancel: what a
// recurrence needs (it is the absolute error that circulates), at half the cost of the
// relative-error-accurate sum.
fn dd_add(a: vec2<f32>, b: vec2<f32>) -> vec2<f32> {
    let s = two_sum(a.x, b.x);
    return fast_two_sum(s.x, s.y + (a.y + b.y));
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

// One transposed direct form II section `s` on the pair x, with its state in *z.
fn section(z: ptr<function, vec4<f32>>, s: u32, x: vec2<f32>) -> vec2<f32> {
    let b0 = coeffs[5u * s];
    let b1 = coeffs[5u * s + 1u];
    let b2 = coeffs[5u * s + 2u];
    let a1 = coeffs[5u * s + 3u];
    let a2 = coeffs[5u * s + 4u];
    let zs = *z;
    let xs = split(x.x);
    let y = dd_add(dd_mul(b0, x, xs), zs.xy);
    let ys = split(y.x);
    let z1 = dd_add(dd_add(dd_mul(b1, x, xs), neg(dd_mul(a1, y, ys))), zs.zw);
    let z2 = dd_add(dd_mul(b2, x, xs), neg(dd_mul(a2, y, ys)));
    *z = vec4<f32>(z1, z2);
    return y;
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
    var z0 = vec4<f32>();
    var z1 = vec4<f32>();
    var z2 = vec4<f32>();
    var z3 = vec4<f32>();
    var z4 = vec4<f32>();
    var z5 = vec4<f32>();
    var z6 = vec4<f32>();
    var z7 = vec4<f32>();
    var z8 = vec4<f32>();
    var z9 = vec4<f32>();
    var z10 = vec4<f32>();
    var z11 = vec4<f32>();
    var z12 = vec4<f32>();
    var z13 = vec4<f32>();
    var z14 = vec4<f32>();
    var z15 = vec4<f32>();
    var z16 = vec4<f32>();
    var z17 = vec4<f32>();
    var z18 = vec4<f32>();
    var z19 = vec4<f32>();
    var z20 = vec4<f32>();
    var z21 = vec4<f32>();
    var z22 = vec4<f32>();
    var z23 = vec4<f32>();
    var z24 = vec4<f32>();
    var z25 = vec4<f32>();
    var z26 = vec4<f32>();
    var z27 = vec4<f32>();
    var z28 = vec4<f32>();
    var z29 = vec4<f32>();
    var z30 = vec4<f32>();
    var z31 = vec4<f32>();
    if NS > 0u { z0 = state_in[0u * nc + c]; }
    if NS > 1u { z1 = state_in[1u * nc + c]; }
    if NS > 2u { z2 = state_in[2u * nc + c]; }
    if NS > 3u { z3 = state_in[3u * nc + c]; }
    if NS > 4u { z4 = state_in[4u * nc + c]; }
    if NS > 5u { z5 = state_in[5u * nc + c]; }
    if NS > 6u { z6 = state_in[6u * nc + c]; }
    if NS > 7u { z7 = state_in[7u * nc + c]; }
    if NS > 8u { z8 = state_in[8u * nc + c]; }
    if NS > 9u { z9 = state_in[9u * nc + c]; }
    if NS > 10u { z10 = state_in[10u * nc + c]; }
    if NS > 11u { z11 = state_in[11u * nc + c]; }
    if NS > 12u { z12 = state_in[12u * nc + c]; }
    if NS > 13u { z13 = state_in[13u * nc + c]; }
    if NS > 14u { z14 = state_in[14u * nc + c]; }
    if NS > 15u { z15 = state_in[15u * nc + c]; }
    if NS > 16u { z16 = state_in[16u * nc + c]; }
    if NS > 17u { z17 = state_in[17u * nc + c]; }
    if NS > 18u { z18 = state_in[18u * nc + c]; }
    if NS > 19u { z19 = state_in[19u * nc + c]; }
    if NS > 20u { z20 = state_in[20u * nc + c]; }
    if NS > 21u { z21 = state_in[21u * nc + c]; }
    if NS > 22u { z22 = state_in[22u * nc + c]; }
    if NS > 23u { z23 = state_in[23u * nc + c]; }
    if NS > 24u { z24 = state_in[24u * nc + c]; }
    if NS > 25u { z25 = state_in[25u * nc + c]; }
    if NS > 26u { z26 = state_in[26u * nc + c]; }
    if NS > 27u { z27 = state_in[27u * nc + c]; }
    if NS > 28u { z28 = state_in[28u * nc + c]; }
    if NS > 29u { z29 = state_in[29u * nc + c]; }
    if NS > 30u { z30 = state_in[30u * nc + c]; }
    if NS > 31u { z31 = state_in[31u * nc + c]; }
    var bad = false;
    for (var i = 0u; i < params.rows; i++) {
        let xin = samples[i * nc + c];
        if (bitcast<u32>(xin) & 0x7f800000u) == 0x7f800000u {
            atomicMax(&status[0], ~(params.row0 + i));
            bad = true;
            break;
        }
        var x = vec2<f32>(xin, 0.0);
        if NS > 0u { x = section(&z0, 0u, x); }
        if NS > 1u { x = section(&z1, 1u, x); }
        if NS > 2u { x = section(&z2, 2u, x); }
        if NS > 3u { x = section(&z3, 3u, x); }
        if NS > 4u { x = section(&z4, 4u, x); }
        if NS > 5u { x = section(&z5, 5u, x); }
        if NS > 6u { x = section(&z6, 6u, x); }
        if NS > 7u { x = section(&z7, 7u, x); }
        if NS > 8u { x = section(&z8, 8u, x); }
        if NS > 9u { x = section(&z9, 9u, x); }
        if NS > 10u { x = section(&z10, 10u, x); }
        if NS > 11u { x = section(&z11, 11u, x); }
        if NS > 12u { x = section(&z12, 12u, x); }
        if NS > 13u { x = section(&z13, 13u, x); }
        if NS > 14u { x = section(&z14, 14u, x); }
        if NS > 15u { x = section(&z15, 15u, x); }
        if NS > 16u { x = section(&z16, 16u, x); }
        if NS > 17u { x = section(&z17, 17u, x); }
        if NS > 18u { x = section(&z18, 18u, x); }
        if NS > 19u { x = section(&z19, 19u, x); }
        if NS > 20u { x = section(&z20, 20u, x); }
        if NS > 21u { x = section(&z21, 21u, x); }
        if NS > 22u { x = section(&z22, 22u, x); }
        if NS > 23u { x = section(&z23, 23u, x); }
        if NS > 24u { x = section(&z24, 24u, x); }
        if NS > 25u { x = section(&z25, 25u, x); }
        if NS > 26u { x = section(&z26, 26u, x); }
        if NS > 27u { x = section(&z27, 27u, x); }
        if NS > 28u { x = section(&z28, 28u, x); }
        if NS > 29u { x = section(&z29, 29u, x); }
        if NS > 30u { x = section(&z30, 30u, x); }
        if NS > 31u { x = section(&z31, 31u, x); }
        output[i * nc + c] = x.x + x.y;
    }
    if !bad {
        if NS > 0u { state_out[0u * nc + c] = z0; }
        if NS > 1u { state_out[1u * nc + c] = z1; }
        if NS > 2u { state_out[2u * nc + c] = z2; }
        if NS > 3u { state_out[3u * nc + c] = z3; }
        if NS > 4u { state_out[4u * nc + c] = z4; }
        if NS > 5u { state_out[5u * nc + c] = z5; }
        if NS > 6u { state_out[6u * nc + c] = z6; }
        if NS > 7u { state_out[7u * nc + c] = z7; }
        if NS > 8u { state_out[8u * nc + c] = z8; }
        if NS > 9u { state_out[9u * nc + c] = z9; }
        if NS > 10u { state_out[10u * nc + c] = z10; }
        if NS > 11u { state_out[11u * nc + c] = z11; }
        if NS > 12u { state_out[12u * nc + c] = z12; }
        if NS > 13u { state_out[13u * nc + c] = z13; }
        if NS > 14u { state_out[14u * nc + c] = z14; }
        if NS > 15u { state_out[15u * nc + c] = z15; }
        if NS > 16u { state_out[16u * nc + c] = z16; }
        if NS > 17u { state_out[17u * nc + c] = z17; }
        if NS > 18u { state_out[18u * nc + c] = z18; }
        if NS > 19u { state_out[19u * nc + c] = z19; }
        if NS > 20u { state_out[20u * nc + c] = z20; }
        if NS > 21u { state_out[21u * nc + c] = z21; }
        if NS > 22u { state_out[22u * nc + c] = z22; }
        if NS > 23u { state_out[23u * nc + c] = z23; }
        if NS > 24u { state_out[24u * nc + c] = z24; }
        if NS > 25u { state_out[25u * nc + c] = z25; }
        if NS > 26u { state_out[26u * nc + c] = z26; }
        if NS > 27u { state_out[27u * nc + c] = z27; }
        if NS > 28u { state_out[28u * nc + c] = z28; }
        if NS > 29u { state_out[29u * nc + c] = z29; }
        if NS > 30u { state_out[30u * nc + c] = z30; }
        if NS > 31u { state_out[31u * nc + c] = z31; }
    }
}
