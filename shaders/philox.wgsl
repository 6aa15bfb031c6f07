// Philox4x32-10, bit-identical to `src/rng.rs`. Shared by the kernels that draw random
// numbers (it is prepended to their source). 32-bit arithmetic only: the high half of each
// 32×32 product is assembled from 16-bit pieces, so it runs where WGSL has no 64-bit integers.

fn philox_mulhilo(a: u32, b: u32) -> vec2<u32> {
    let a_lo = a & 0xffffu;
    let a_hi = a >> 16u;
    let b_lo = b & 0xffffu;
    let b_hi = b >> 16u;
    let ll = a_lo * b_lo;
    let lh = a_lo * b_hi;
    let hl = a_hi * b_lo;
    let hh = a_hi * b_hi;
    let mid = (ll >> 16u) + (lh & 0xffffu) + (hl & 0xffffu);
    let hi = hh + (lh >> 16u) + (hl >> 16u) + (mid >> 16u);
    return vec2<u32>(hi, a * b);
}

fn philox4x32_10(counter: vec4<u32>, key: vec2<u32>) -> vec4<u32> {
    var c = counter;
    var k = key;
    for (var round = 0u; round < 10u; round = round + 1u) {
        if (round > 0u) {
            k = k + vec2<u32>(0x9E3779B9u, 0xBB67AE85u);
        }
        let p0 = philox_mulhilo(0xD2511F53u, c.x);
        let p1 = philox_mulhilo(0xCD9E8D57u, c.z);
        c = vec4<u32>(p1.x ^ c.y ^ k.x, p1.y, p0.x ^ c.w ^ k.y, p0.y);
    }
    return c;
}

// A uniform in [0, 1): the top 24 bits scaled by 2^-24 (exact in f32).
fn philox_unit(word: u32) -> f32 {
    return f32(word >> 8u) * (1.0 / 16777216.0);
}
