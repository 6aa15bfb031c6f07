//! Poisson draws from the shared Philox4x32-10 generator, the CPU half (`f64` arithmetic).
//! `shaders/glm.wgsl` (`poisson_draw`) is its twin in `f32`: both read the same 32-bit words
//! and turn them into the same exactly-representable uniforms, so they draw the same count
//! except where a uniform lies within float error of a sampling threshold.
//!
//! # Counter mapping
//!
//! The draw for trial `b`, absolute step `t` (a `u64`) and neuron `i` uses
//! key `(seed_b as u32, seed_b >> 32)` and the counters
//! `(i, t as u32, t >> 32, STREAM_TAG | block)` for `block = 0, 1, …` (each block gives
//! four words). The trial enters only through its seed, so a trial draws the same whatever
//! the batch it runs in, and the step is absolute, so any chunking of the time axis draws the
//! same.
//!
//! # Method
//!
//! - `rate < 10`: inversion by sequential search on the survival function. With
//!   `v ∈ [0, 1)` from one word (its 24 leading significant bits, times `2⁻³²`: exact in
//!   `f32`, resolution `2⁻³²` near 0), the draw is the least `k` with `v ≥ S_k`, where
//!   `S_k = P(X > k)` (`S_0 = −expm1(−λ)`, or the link's closed form of it: the logistic
//!   function of the drive for the softplus; `S_k = S_(k−1) − p_k`). Each outcome thus gets
//!   probability `S_(k−1) − S_k = p_k` to within `2⁻³²` absolute (`2⁻²⁴` relative) plus the
//!   thresholds' rounding. At most [`INVERSION_MAX`] steps; the search also stops once
//!   `S_k < 2⁻³⁴`, which only the word `v = 0` (probability `2⁻³²`) can reach.
//! - `rate ≥ 10`: PTRS, Hörmann's transformed rejection with squeeze (1993), as numpy has
//!   it, with the log-probability of the acceptance test computed without cancellation
//!   (Loader's `stirlerr` and `bd0`). Proposal `m` uses words `2(m mod 2), 2(m mod 2) + 1` of
//!   block `m / 2`. At most [`PTRS_MAX_PROPOSALS`] proposals (each accepted with probability
//!   above 0.85, so a draw runs out with probability below `10⁻¹³`); one that does returns
//!   `floor(λ)`.

use crate::rng::philox4x32_10;

/// Tag in the fourth counter word that keeps the GLM's draws apart from other operators'.
pub const STREAM_TAG: u32 = 0x474C_4D00;
/// Rates below this are drawn by inversion, at or above it by PTRS.
pub const PTRS_FROM: f64 = 10.0;
/// Most search steps of the inversion.
pub const INVERSION_MAX: u32 = 64;
/// Most proposals of PTRS.
pub const PTRS_MAX_PROPOSALS: u32 = 16;
/// The inversion stops once the survival function is below this (`2⁻³⁴`).
const TINY: f64 = 1.0 / 17_179_869_184.0;

/// The Philox counter of block `block` of the draw for `(step, neuron)`.
#[inline]
pub fn counter(step: u64, neuron: u32, block: u32) -> [u32; 4] {
    [neuron, step as u32, (step >> 32) as u32, STREAM_TAG | block]
}

/// The inversion's uniform in `[0, 1)`: the word's 24 leading significant bits times `2⁻³²`
/// (exact in `f32`).
#[inline]
pub(crate) fn v_inversion(w: u32) -> f64 {
    let lz = w.leading_zeros();
    let t = if lz >= 8 {
        w
    } else {
        let s = 8 - lz;
        (w >> s) << s
    };
    t as f64 * (1.0 / 4_294_967_296.0)
}

/// A uniform in `[0, 1)` from the top 24 bits.
#[inline]
fn unit_u(w: u32) -> f64 {
    (w >> 8) as f64 * (1.0 / 16_777_216.0)
}

/// A uniform in `(0, 1)`: an odd multiple of `2⁻²⁴`.
#[inline]
fn unit_v(w: u32) -> f64 {
    (((w >> 9) << 1) | 1) as f64 * (1.0 / 16_777_216.0)
}

/// `lgamma(n + 1) − (n + ½)·ln n + n − ln √(2π)` for integers `n = 0 … 15` (Loader).
#[allow(clippy::excessive_precision)]
pub(crate) const STIRLERR: [f64; 16] = [
    0.0,
    0.081_061_466_795_327_26,
    0.041_340_695_955_409_29,
    0.027_677_925_684_998_34,
    0.020_790_672_103_765_09,
    0.016_644_691_189_821_19,
    0.013_876_128_823_070_75,
    0.011_896_709_945_891_77,
    0.010_411_265_261_972_09,
    0.009_255_462_182_712_733,
    0.008_330_563_433_362_871,
    0.007_573_675_487_951_841,
    0.006_942_840_107_209_53,
    0.006_408_994_188_004_207,
    0.005_951_370_112_758_848,
    0.005_554_733_551_962_801,
];

/// Loader's `stirlerr(n)` for an integer-valued `n ≥ 0`.
fn stirlerr(n: f64) -> f64 {
    const S0: f64 = 1.0 / 12.0;
    const S1: f64 = 1.0 / 360.0;
    const S2: f64 = 1.0 / 1260.0;
    const S3: f64 = 1.0 / 1680.0;
    const S4: f64 = 1.0 / 1188.0;
    if n <= 15.0 {
        return STIRLERR[n as usize];
    }
    let nn = n * n;
    if n > 500.0 {
        (S0 - S1 / nn) / n
    } else if n > 80.0 {
        (S0 - (S1 - S2 / nn) / nn) / n
    } else if n > 35.0 {
        (S0 - (S1 - (S2 - S3 / nn) / nn) / nn) / n
    } else {
        (S0 - (S1 - (S2 - (S3 - S4 / nn) / nn) / nn) / nn) / n
    }
}

/// Loader's deviance term `bd0(x, m) = x·ln(x/m) + m − x`, without cancellation near `x = m`.
fn bd0(x: f64, m: f64) -> f64 {
    let d = x - m;
    if d.abs() < 0.1 * (x + m) {
        let v = d / (x + m);
        let v2 = v * v;
        // 2x·Σ_{j≥1} v^(2j+1)/(2j+1), eight terms (|v| < 0.1).
        let series = 1.0 / 3.0
            + v2 * (1.0 / 5.0
                + v2 * (1.0 / 7.0
                    + v2 * (1.0 / 9.0
                        + v2 * (1.0 / 11.0
                            + v2 * (1.0 / 13.0 + v2 * (1.0 / 15.0 + v2 * (1.0 / 17.0)))))));
        d * v + 2.0 * x * v * v2 * series
    } else {
        x * (x / m).ln() + m - x
    }
}

/// `ln P(X = k)` for `X ~ Poisson(λ)`, `k ≥ 0` integer-valued.
pub(crate) fn ln_pmf(k: f64, lam: f64) -> f64 {
    if k < 1.0 {
        return -lam;
    }
    -stirlerr(k) - bd0(k, lam) - 0.5 * (std::f64::consts::TAU * k).ln()
}

/// One Poisson draw of `rate` for `(step, neuron)` under `key` (see the module doc).
/// A rate `≤ 0` draws 0; the caller rejects non-finite rates.
pub fn poisson(rate: f64, key: [u32; 2], step: u64, neuron: u32) -> f64 {
    poisson_with_s0(rate, s0_of_rate, key, step, neuron)
}

/// The inversion's first threshold from the rate alone, `S_0 = −expm1(−rate)`.
#[inline]
pub(crate) fn s0_of_rate(rate: f64) -> f64 {
    -(-rate).exp_m1()
}

/// [`poisson`] with the first threshold of the inversion, `S_0 = P(X > 0) = 1 − e^(−rate)`,
/// from `s0(rate)`, called only where the inversion runs (`0 < rate < 10`). A link that
/// knows `e^(−rate)` in closed form gives it without a third transcendental: for the
/// softplus, `S_0` is the logistic function of the drive ([`super::Link::eval_with_s0`]).
#[inline]
pub fn poisson_with_s0(
    rate: f64,
    s0: impl FnOnce(f64) -> f64,
    key: [u32; 2],
    step: u64,
    neuron: u32,
) -> f64 {
    poisson_with_words(
        rate,
        s0,
        || philox4x32_10(counter(step, neuron, 0), key)[0],
        key,
        step,
        neuron,
    )
}

/// [`poisson_with_s0`] with the inversion's word (word 0 of block 0) from `w0()`, for a
/// caller that computed a whole step's words at once
/// ([`crate::rng::philox4x32_10_word0_run`]).
#[inline]
pub(crate) fn poisson_with_words(
    rate: f64,
    s0: impl FnOnce(f64) -> f64,
    w0: impl FnOnce() -> u32,
    key: [u32; 2],
    step: u64,
    neuron: u32,
) -> f64 {
    if rate.is_nan() || rate <= 0.0 {
        return 0.0;
    }
    if rate < PTRS_FROM {
        let w = w0();
        let v = v_inversion(w);
        let mut s = s0(rate);
        if v >= s {
            return 0.0;
        }
        let mut p = 1.0 - s;
        let mut k = 0u32;
        while k < INVERSION_MAX {
            if v >= s || s < TINY {
                break;
            }
            k += 1;
            p *= rate / k as f64;
            s -= p;
        }
        return k as f64;
    }
    let lam = rate;
    let slam = lam.sqrt();
    let b = 0.931 + 2.53 * slam;
    let a = -0.059 + 0.02483 * b;
    let invalpha = 1.1239 + 1.1328 / (b - 3.4);
    let vr = 0.9277 - 3.6224 / (b - 2.0);
    let log_invalpha = invalpha.ln();
    let mut words = [0u32; 4];
    for m in 0..PTRS_MAX_PROPOSALS {
        if m % 2 == 0 {
            words = philox4x32_10(counter(step, neuron, m / 2), key);
        }
        let o = 2 * (m % 2) as usize;
        let u = unit_u(words[o]) - 0.5;
        let v = unit_v(words[o + 1]);
        let us = 0.5 - u.abs();
        if us < 0.013 && v > us {
            continue;
        }
        let k = ((2.0 * a / us + b) * u + lam + 0.43).floor();
        if us >= 0.07 && v <= vr {
            return k;
        }
        if k < 0.0 {
            continue;
        }
        let lhs = v.ln() + log_invalpha - (a / (us * us) + b).ln();
        // −λ + k·ln λ − lgamma(k + 1), written without cancellation.
        if lhs <= ln_pmf(k, lam) {
            return k;
        }
    }
    lam.floor()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `ln_pmf` against a direct `f64` evaluation with a summed `ln k!`.
    #[test]
    fn ln_pmf_matches_the_direct_formula() {
        for &lam in &[10.0f64, 37.5, 100.0, 1000.0, 12345.0] {
            let mut lnfact = 0.0f64;
            for k in 0..20_000u32 {
                if k > 0 {
                    lnfact += (k as f64).ln();
                }
                let direct = -lam + k as f64 * lam.ln() - lnfact;
                if direct < -700.0 {
                    continue;
                }
                let got = ln_pmf(k as f64, lam);
                assert!(
                    (got - direct).abs() <= 1e-9 * direct.abs().max(1.0),
                    "λ = {lam}, k = {k}: {got} vs {direct}"
                );
            }
        }
    }

    #[test]
    fn uniforms_are_in_range_and_exact_in_f32() {
        for &w in &[
            0u32,
            1,
            255,
            256,
            0x00ff_ffff,
            0x0100_0000,
            0x8000_0001,
            u32::MAX,
        ] {
            let v = v_inversion(w);
            assert!((0.0..1.0).contains(&v));
            assert_eq!(v, v as f32 as f64);
            let u = unit_u(w);
            assert!((0.0..1.0).contains(&u));
            let vv = unit_v(w);
            assert!(vv > 0.0 && vv < 1.0 && vv == vv as f32 as f64);
        }
        assert_eq!(v_inversion(1), 1.0 / 4_294_967_296.0);
    }

    /// The softplus link's closed-form `S_0` (the logistic function of the drive) is
    /// `1 − e^(−rate)` to a few ulp over drives from −700 to 40, and a draw with it is the draw
    /// with `−expm1(−rate)` (the thresholds differ by less than the uniforms' spacing).
    #[test]
    fn softplus_s0_is_one_minus_exp_of_minus_rate() {
        let key = [7, 9];
        for k in 0..=7400 {
            let x = -700.0 + k as f64 * 0.1;
            let (rate, s0) = super::super::Link::Softplus.eval_with_s0(x);
            let s0 = s0.expect("the softplus gives S_0");
            let want = s0_of_rate(rate);
            assert!(
                (s0 - want).abs() <= 4.0 * f64::EPSILON * want,
                "x = {x}: {s0:e} vs {want:e}"
            );
            for step in 0..4 {
                assert_eq!(
                    poisson_with_s0(rate, |_| s0, key, step, k),
                    poisson(rate, key, step, k),
                    "x = {x}, step {step}"
                );
            }
        }
        assert_eq!(super::super::Link::Exp.eval_with_s0(0.5).1, None);
    }

    #[test]
    fn zero_and_tiny_rates() {
        let key = [1, 2];
        assert_eq!(poisson(0.0, key, 0, 0), 0.0);
        assert_eq!(poisson(-1.0, key, 0, 0), 0.0);
        let n: f64 = (0..10_000).map(|t| poisson(1e-9, key, t, 3)).sum();
        assert!(n <= 1.0);
    }
}
