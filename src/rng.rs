//! The crate's one random number generator: Philox4x32-10 (Salmon et al., SC'11), written
//! once here and once in `shaders/philox.wgsl`, bit-identical.
//!
//! Counter-based: the four 32-bit words drawn for counter `(c0, c1, c2, c3)` under key
//! `(k0, k1)` depend on nothing else, so the CPU and the GPU draw the same uniforms for the
//! same element whatever the chunking, batch split or thread layout. Operators key it by
//! `(seed low, seed high)` and put the stream id and the element's position in the counter.

/// Philox's multipliers and key increments (Random123).
const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

#[inline(always)]
fn mulhilo(a: u32, b: u32) -> (u32, u32) {
    let p = a as u64 * b as u64;
    ((p >> 32) as u32, p as u32)
}

/// Philox4x32 with 10 rounds: four uniform 32-bit words for `counter` under `key`.
#[inline]
pub fn philox4x32_10(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let mut c = counter;
    let mut k = key;
    for round in 0..10 {
        if round > 0 {
            k = [k[0].wrapping_add(W0), k[1].wrapping_add(W1)];
        }
        c = philox_round(c, k);
    }
    c
}

/// One Philox4x32 round of `c` under the round key `k`.
#[inline(always)]
fn philox_round(c: [u32; 4], k: [u32; 2]) -> [u32; 4] {
    let (hi0, lo0) = mulhilo(M0, c[0]);
    let (hi1, lo1) = mulhilo(M1, c[2]);
    [hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0]
}

/// Word 0 of [`philox4x32_10`]`([first + k, c1, c2, c3], key)` into `out[k]`, for a run of
/// consecutive first counter words (one per neuron), computed eight lanes at a time so the
/// rounds' multiplies vectorise across the run.
#[inline(always)]
pub(crate) fn philox4x32_10_word0_run(
    [c1, c2, c3]: [u32; 3],
    key: [u32; 2],
    first: u32,
    out: &mut [u32],
) {
    const L: usize = 8;
    for (g, chunk) in out.chunks_mut(L).enumerate() {
        let base = first.wrapping_add((g * L) as u32);
        let mut c = [[0u32; L]; 4];
        for (l, x) in c[0].iter_mut().enumerate() {
            *x = base.wrapping_add(l as u32);
        }
        c[1] = [c1; L];
        c[2] = [c2; L];
        c[3] = [c3; L];
        let mut k = key;
        for round in 0..10 {
            if round > 0 {
                k = [k[0].wrapping_add(W0), k[1].wrapping_add(W1)];
            }
            let mut next = [[0u32; L]; 4];
            for l in 0..L {
                let r = philox_round([c[0][l], c[1][l], c[2][l], c[3][l]], k);
                for (w, v) in r.into_iter().enumerate() {
                    next[w][l] = v;
                }
            }
            c = next;
        }
        chunk.copy_from_slice(&c[0][..chunk.len()]);
    }
}

/// The key for a 64-bit seed.
pub fn key_of(seed: u64) -> [u32; 2] {
    [seed as u32, (seed >> 32) as u32]
}

/// A uniform in `[0, 1)` from a 32-bit word, exactly as the shaders compute it:
/// the top 24 bits scaled by `2⁻²⁴` (every value exact in `f32`).
#[inline]
pub fn unit_f32(word: u32) -> f32 {
    (word >> 8) as f32 * (1.0 / 16_777_216.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word0_run_is_philox_word0() {
        let key = [0x1234_5678, 0x9abc_def0];
        for len in [0usize, 1, 7, 8, 9, 50, 65] {
            for first in [0u32, 5, u32::MAX - 3] {
                let mut out = vec![0u32; len];
                philox4x32_10_word0_run([11, 22, 33], key, first, &mut out);
                for (k, &w) in out.iter().enumerate() {
                    let c = [first.wrapping_add(k as u32), 11, 22, 33];
                    assert_eq!(w, philox4x32_10(c, key)[0], "len {len} first {first} k {k}");
                }
            }
        }
    }

    /// Known-answer vectors from Random123's `kat_vectors`.
    #[test]
    fn random123_known_answers() {
        assert_eq!(
            philox4x32_10([0, 0, 0, 0], [0, 0]),
            [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]
        );
        assert_eq!(
            philox4x32_10([u32::MAX; 4], [u32::MAX; 2]),
            [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]
        );
        assert_eq!(
            philox4x32_10(
                [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
                [0xa4093822, 0x299f31d0]
            ),
            [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]
        );
    }

    #[test]
    fn unit_is_in_range() {
        assert_eq!(unit_f32(0), 0.0);
        assert!(unit_f32(u32::MAX) < 1.0);
    }
}
