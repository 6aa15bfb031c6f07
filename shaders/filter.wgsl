// Causal IIR filter in second-order sections (SPEC §7, "Filter"): the kernel common to both
// arithmetics. The definition, and the CPU twin, are in src/filter/{mod.rs, cpu.rs}; the host
// half is src/filter/gpu.rs. The module is this file after one of
//   filter_ds.wgsl   f32 only (portable to GL), in double-single form;
//   filter_f64.wgsl  native f64 (devices with SHADER_F64: Vulkan, Metal, DX12 on most GPUs);
// each defines the bindings `coeffs`, `state_in` and `state_out`, the types `St` (one
// section's state), `Val` (a sample inside the cascade) and `Coef` (one section's
// coefficients), and `load_coef`, `section`, `input_value`,
// `output_value`, `load_state`, `store_state`.
//
// Entry point `sosfilt`: one invocation per channel runs the cascade of transposed direct
// form II sections over the rows of one piece of the chunk, in order (input is time-major, so
// neighbouring invocations read neighbouring addresses), with the channel's section state in
// registers. The host splits a chunk into row pieces (state chained piece to piece through
// state_in/state_out) of at most 16 384 rows: the row loop is the kernel's only loop, and
// llvmpipe (lavapipe and GL) silently ends an invocation after 65 535 loop iterations.
//
// Bindings (group 0):
//   0 params     uniform     Params of this dispatch
//   1 coeffs     storage r   per section 5 coefficients (b0, b1, b2, a1, a2), as the variant
//                            file says
//   2 samples    storage r   f32 (rows, n_channels), rows of this piece only
//   3 state_in   storage r   per (section, channel), 16 bytes at section · n_channels +
//                            channel: (z1, z2) as the variant file says
//   4 state_out  storage rw  same layout
//   5 output     storage rw  f32 (rows, n_channels), rows of this piece only
//   6 status     storage rw  atomicMax of ~row over rows holding a non-finite sample (0: none)

override WG_SIZE: u32 = 64u;
// Sections of the cascade (1 ..= 32), fixed per pipeline: the kernel below spells out one
// state variable and one guarded call per section, and the guards on this constant drop
// the unused ones at pipeline creation, so every section's state lives in registers (an
// indexed array of states would live in memory: 2–3× slower on llvmpipe). Each section's
// coefficients are loaded the same way once, before the row loop (`load_coef`): read inside
// the loop they were five bounds-checked storage loads per section and row, half the
// kernel's time on llvmpipe.
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
@group(0) @binding(2) var<storage, read> samples: array<f32>;
@group(0) @binding(5) var<storage, read_write> output: array<f32>;
@group(0) @binding(6) var<storage, read_write> status: array<atomic<u32>>;

var<private> zero_bits: u32;

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
    var z0 = St();
    var z1 = St();
    var z2 = St();
    var z3 = St();
    var z4 = St();
    var z5 = St();
    var z6 = St();
    var z7 = St();
    var z8 = St();
    var z9 = St();
    var z10 = St();
    var z11 = St();
    var z12 = St();
    var z13 = St();
    var z14 = St();
    var z15 = St();
    var z16 = St();
    var z17 = St();
    var z18 = St();
    var z19 = St();
    var z20 = St();
    var z21 = St();
    var z22 = St();
    var z23 = St();
    var z24 = St();
    var z25 = St();
    var z26 = St();
    var z27 = St();
    var z28 = St();
    var z29 = St();
    var z30 = St();
    var z31 = St();
    if NS > 0u { z0 = load_state(0u * nc + c); }
    if NS > 1u { z1 = load_state(1u * nc + c); }
    if NS > 2u { z2 = load_state(2u * nc + c); }
    if NS > 3u { z3 = load_state(3u * nc + c); }
    if NS > 4u { z4 = load_state(4u * nc + c); }
    if NS > 5u { z5 = load_state(5u * nc + c); }
    if NS > 6u { z6 = load_state(6u * nc + c); }
    if NS > 7u { z7 = load_state(7u * nc + c); }
    if NS > 8u { z8 = load_state(8u * nc + c); }
    if NS > 9u { z9 = load_state(9u * nc + c); }
    if NS > 10u { z10 = load_state(10u * nc + c); }
    if NS > 11u { z11 = load_state(11u * nc + c); }
    if NS > 12u { z12 = load_state(12u * nc + c); }
    if NS > 13u { z13 = load_state(13u * nc + c); }
    if NS > 14u { z14 = load_state(14u * nc + c); }
    if NS > 15u { z15 = load_state(15u * nc + c); }
    if NS > 16u { z16 = load_state(16u * nc + c); }
    if NS > 17u { z17 = load_state(17u * nc + c); }
    if NS > 18u { z18 = load_state(18u * nc + c); }
    if NS > 19u { z19 = load_state(19u * nc + c); }
    if NS > 20u { z20 = load_state(20u * nc + c); }
    if NS > 21u { z21 = load_state(21u * nc + c); }
    if NS > 22u { z22 = load_state(22u * nc + c); }
    if NS > 23u { z23 = load_state(23u * nc + c); }
    if NS > 24u { z24 = load_state(24u * nc + c); }
    if NS > 25u { z25 = load_state(25u * nc + c); }
    if NS > 26u { z26 = load_state(26u * nc + c); }
    if NS > 27u { z27 = load_state(27u * nc + c); }
    if NS > 28u { z28 = load_state(28u * nc + c); }
    if NS > 29u { z29 = load_state(29u * nc + c); }
    if NS > 30u { z30 = load_state(30u * nc + c); }
    if NS > 31u { z31 = load_state(31u * nc + c); }
    var k0 = Coef();
    var k1 = Coef();
    var k2 = Coef();
    var k3 = Coef();
    var k4 = Coef();
    var k5 = Coef();
    var k6 = Coef();
    var k7 = Coef();
    var k8 = Coef();
    var k9 = Coef();
    var k10 = Coef();
    var k11 = Coef();
    var k12 = Coef();
    var k13 = Coef();
    var k14 = Coef();
    var k15 = Coef();
    var k16 = Coef();
    var k17 = Coef();
    var k18 = Coef();
    var k19 = Coef();
    var k20 = Coef();
    var k21 = Coef();
    var k22 = Coef();
    var k23 = Coef();
    var k24 = Coef();
    var k25 = Coef();
    var k26 = Coef();
    var k27 = Coef();
    var k28 = Coef();
    var k29 = Coef();
    var k30 = Coef();
    var k31 = Coef();
    if NS > 0u { k0 = load_coef(0u); }
    if NS > 1u { k1 = load_coef(1u); }
    if NS > 2u { k2 = load_coef(2u); }
    if NS > 3u { k3 = load_coef(3u); }
    if NS > 4u { k4 = load_coef(4u); }
    if NS > 5u { k5 = load_coef(5u); }
    if NS > 6u { k6 = load_coef(6u); }
    if NS > 7u { k7 = load_coef(7u); }
    if NS > 8u { k8 = load_coef(8u); }
    if NS > 9u { k9 = load_coef(9u); }
    if NS > 10u { k10 = load_coef(10u); }
    if NS > 11u { k11 = load_coef(11u); }
    if NS > 12u { k12 = load_coef(12u); }
    if NS > 13u { k13 = load_coef(13u); }
    if NS > 14u { k14 = load_coef(14u); }
    if NS > 15u { k15 = load_coef(15u); }
    if NS > 16u { k16 = load_coef(16u); }
    if NS > 17u { k17 = load_coef(17u); }
    if NS > 18u { k18 = load_coef(18u); }
    if NS > 19u { k19 = load_coef(19u); }
    if NS > 20u { k20 = load_coef(20u); }
    if NS > 21u { k21 = load_coef(21u); }
    if NS > 22u { k22 = load_coef(22u); }
    if NS > 23u { k23 = load_coef(23u); }
    if NS > 24u { k24 = load_coef(24u); }
    if NS > 25u { k25 = load_coef(25u); }
    if NS > 26u { k26 = load_coef(26u); }
    if NS > 27u { k27 = load_coef(27u); }
    if NS > 28u { k28 = load_coef(28u); }
    if NS > 29u { k29 = load_coef(29u); }
    if NS > 30u { k30 = load_coef(30u); }
    if NS > 31u { k31 = load_coef(31u); }
    var bad = false;
    for (var i = 0u; i < params.rows; i++) {
        let xin = samples[i * nc + c];
        if (bitcast<u32>(xin) & 0x7f800000u) == 0x7f800000u {
            atomicMax(&status[0], ~(params.row0 + i));
            bad = true;
            break;
        }
        var x = input_value(xin);
        if NS > 0u { x = section(&z0, k0, x); }
        if NS > 1u { x = section(&z1, k1, x); }
        if NS > 2u { x = section(&z2, k2, x); }
        if NS > 3u { x = section(&z3, k3, x); }
        if NS > 4u { x = section(&z4, k4, x); }
        if NS > 5u { x = section(&z5, k5, x); }
        if NS > 6u { x = section(&z6, k6, x); }
        if NS > 7u { x = section(&z7, k7, x); }
        if NS > 8u { x = section(&z8, k8, x); }
        if NS > 9u { x = section(&z9, k9, x); }
        if NS > 10u { x = section(&z10, k10, x); }
        if NS > 11u { x = section(&z11, k11, x); }
        if NS > 12u { x = section(&z12, k12, x); }
        if NS > 13u { x = section(&z13, k13, x); }
        if NS > 14u { x = section(&z14, k14, x); }
        if NS > 15u { x = section(&z15, k15, x); }
        if NS > 16u { x = section(&z16, k16, x); }
        if NS > 17u { x = section(&z17, k17, x); }
        if NS > 18u { x = section(&z18, k18, x); }
        if NS > 19u { x = section(&z19, k19, x); }
        if NS > 20u { x = section(&z20, k20, x); }
        if NS > 21u { x = section(&z21, k21, x); }
        if NS > 22u { x = section(&z22, k22, x); }
        if NS > 23u { x = section(&z23, k23, x); }
        if NS > 24u { x = section(&z24, k24, x); }
        if NS > 25u { x = section(&z25, k25, x); }
        if NS > 26u { x = section(&z26, k26, x); }
        if NS > 27u { x = section(&z27, k27, x); }
        if NS > 28u { x = section(&z28, k28, x); }
        if NS > 29u { x = section(&z29, k29, x); }
        if NS > 30u { x = section(&z30, k30, x); }
        if NS > 31u { x = section(&z31, k31, x); }
        output[i * nc + c] = output_value(x);
    }
    if !bad {
        if NS > 0u { store_state(0u * nc + c, z0); }
        if NS > 1u { store_state(1u * nc + c, z1); }
        if NS > 2u { store_state(2u * nc + c, z2); }
        if NS > 3u { store_state(3u * nc + c, z3); }
        if NS > 4u { store_state(4u * nc + c, z4); }
        if NS > 5u { store_state(5u * nc + c, z5); }
        if NS > 6u { store_state(6u * nc + c, z6); }
        if NS > 7u { store_state(7u * nc + c, z7); }
        if NS > 8u { store_state(8u * nc + c, z8); }
        if NS > 9u { store_state(9u * nc + c, z9); }
        if NS > 10u { store_state(10u * nc + c, z10); }
        if NS > 11u { store_state(11u * nc + c, z11); }
        if NS > 12u { store_state(12u * nc + c, z12); }
        if NS > 13u { store_state(13u * nc + c, z13); }
        if NS > 14u { store_state(14u * nc + c, z14); }
        if NS > 15u { store_state(15u * nc + c, z15); }
        if NS > 16u { store_state(16u * nc + c, z16); }
        if NS > 17u { store_state(17u * nc + c, z17); }
        if NS > 18u { store_state(18u * nc + c, z18); }
        if NS > 19u { store_state(19u * nc + c, z19); }
        if NS > 20u { store_state(20u * nc + c, z20); }
        if NS > 21u { store_state(21u * nc + c, z21); }
        if NS > 22u { store_state(22u * nc + c, z22); }
        if NS > 23u { store_state(23u * nc + c, z23); }
        if NS > 24u { store_state(24u * nc + c, z24); }
        if NS > 25u { store_state(25u * nc + c, z25); }
        if NS > 26u { store_state(26u * nc + c, z26); }
        if NS > 27u { store_state(27u * nc + c, z27); }
        if NS > 28u { store_state(28u * nc + c, z28); }
        if NS > 29u { store_state(29u * nc + c, z29); }
        if NS > 30u { store_state(30u * nc + c, z30); }
        if NS > 31u { store_state(31u * nc + c, z31); }
    }
}
