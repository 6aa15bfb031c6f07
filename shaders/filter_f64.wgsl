// Native f64 arithmetic for shaders/filter.wgsl (prepended to it), for devices with
// SHADER_F64. The recurrence is the CPU engine's, operation for operation
// (src/filter/cpu.rs): y = b0·x + z1, z1 = b1·x − a1·y + z2, z2 = b2·x − a2·y, in f64 (a
// compiler may fuse a product and a sum). The state is f64 in registers and in the state
// buffers, so splitting a chunk into dispatches changes nothing.
//
// coeffs: per section b0, b1, b2, a1, a2 as f64.

@group(0) @binding(1) var<storage, read> coeffs: array<f64>;
@group(0) @binding(3) var<storage, read> state_in: array<vec2<f64>>;
@group(0) @binding(4) var<storage, read_write> state_out: array<vec2<f64>>;

alias St = vec2<f64>;
alias Val = f64;

fn input_value(x: f32) -> Val {
    return f64(x);
}

// v rounded to f32 as the CPU engine rounds it: ±inf from 2¹²⁸ − 2¹⁰³ (half an ulp past
// f32's largest value) on, where WGSL leaves the conversion undefined.
fn output_value(v: Val) -> f32 {
    if abs(v) >= 3.4028235677973366e38lf {
        return select(bitcast<f32>(0x7f800000u), bitcast<f32>(0xff800000u), v < 0.0lf);
    }
    return f32(v);
}

fn load_state(i: u32) -> St {
    return state_in[i];
}

fn store_state(i: u32, z: St) {
    state_out[i] = z;
}

// One section's coefficients, loaded once per dispatch (kept in registers across the rows).
struct Coef {
    b0: f64,
    b1: f64,
    b2: f64,
    a1: f64,
    a2: f64,
}

fn load_coef(s: u32) -> Coef {
    return Coef(coeffs[5u * s], coeffs[5u * s + 1u], coeffs[5u * s + 2u], coeffs[5u * s + 3u], coeffs[5u * s + 4u]);
}

// One transposed direct form II section with coefficients `k` on x, with its state in *z.
fn section(z: ptr<function, St>, k: Coef, x: Val) -> Val {
    let zs = *z;
    let y = k.b0 * x + zs.x;
    *z = St(k.b1 * x - k.a1 * y + zs.y, k.b2 * x - k.a2 * y);
    return y;
}
