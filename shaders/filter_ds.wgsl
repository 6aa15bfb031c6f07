// Double-single arithmetic for shaders/filter.wgsl (prepended to it): f32 only, portable to
// GL. Every coefficient is an unevaluated pair hi + lo of f32, every state value and every
// section output a pair too. Sums use the two-sum error-free transform, products Dekker's
// exact product of the hi parts (Veltkamp splitting: software adapters lower `fma` to a
// multiply and an add, so it gives no rounding error). The intermediates of these transforms
// pass through `opaque`, a bit-level identity the compiler cannot see through (`zero_bits` is
// 0, derived from `params.one` = 1.0): otherwise Mesa's algebraic simplification folds
// `(a + b) − a` to `b` and the error terms to 0 (multiplying by an unknown 1.0 is not enough:
// products get reassociated). Were a compiler to fold them anyway, the hi parts alone are the
// plain f32 recurrence.
//
// coeffs: per coefficient vec4(hi, lo, split hi, split lo) with hi = split hi + split lo
// (Veltkamp halves of 12 significant bits).

@group(0) @binding(1) var<storage, read> coeffs: array<vec4<f32>>;
// (z1 hi, z1 lo, z2 hi, z2 lo)
@group(0) @binding(3) var<storage, read> state_in: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> state_out: array<vec4<f32>>;

alias St = vec4<f32>;
alias Val = vec2<f32>;

fn input_value(x: f32) -> Val {
    return Val(x, 0.0);
}

fn output_value(v: Val) -> f32 {
    return v.x + v.y;
}

fn load_state(i: u32) -> St {
    return state_in[i];
}

fn store_state(i: u32, z: St) {
    state_out[i] = z;
}

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

// One section's coefficients, loaded once per dispatch (kept in registers across the rows).
struct Coef {
    b0: vec4<f32>,
    b1: vec4<f32>,
    b2: vec4<f32>,
    a1: vec4<f32>,
    a2: vec4<f32>,
}

fn load_coef(s: u32) -> Coef {
    return Coef(coeffs[5u * s], coeffs[5u * s + 1u], coeffs[5u * s + 2u], coeffs[5u * s + 3u], coeffs[5u * s + 4u]);
}

// One transposed direct form II section with coefficients `k` on the pair x, with its state
// in *z.
fn section(z: ptr<function, vec4<f32>>, k: Coef, x: vec2<f32>) -> vec2<f32> {
    let zs = *z;
    let xs = split(x.x);
    let y = dd_add(dd_mul(k.b0, x, xs), zs.xy);
    let ys = split(y.x);
    let z1 = dd_add(dd_add(dd_mul(k.b1, x, xs), neg(dd_mul(k.a1, y, ys))), zs.zw);
    let z2 = dd_add(dd_mul(k.b2, x, xs), neg(dd_mul(k.a2, y, ys)));
    *z = vec4<f32>(z1, z2);
    return y;
}

