//! Jumps across runs of samples without events, for the exponential and alpha recurrences.
//!
//! With `d = exp(−1/τs)`, crossing `L` samples needs `d^L`, `G(L) = Σ_{i<L} dⁱ` and
//! `H(L) = Σ_{i<L} i·dⁱ`. Closed forms for `G` and `H` cancel badly when `L ≪ τs`; instead
//! they are composed from a table over powers of two, where
//! `G(L₁+L₂) = G(L₁) + d^{L₁}·G(L₂)` and `H(L₁+L₂) = H(L₁) + d^{L₁}·(H(L₂) + L₁·G(L₂))`
//! add positive terms only: the relative error is a few ulps per bit of `L`.

/// Bits of `L` covered by the table (jumps up to 2⁴⁰ − 1 samples).
pub(crate) const JUMP_BITS: usize = 40;

/// Bits covered by the GPU's `f32` table (a chunk is at most 2³² samples long).
pub(crate) const GPU_JUMP_BITS: usize = 32;

/// `(d^(2^j), G(2^j), H(2^j))` for `j < JUMP_BITS`, in `f64`.
#[derive(Debug, Clone)]
pub(crate) struct JumpTable {
    pub d: f64,
    pub inv_tau: f64,
    pub pow2: Vec<[f64; 3]>,
    /// `d^l` for `l < SMALL` (most gaps between events and most bins), each from `exp`.
    small: Vec<f64>,
}

/// Size of the table of small powers.
const SMALL: usize = 4096;

impl JumpTable {
    /// The table for time constant `tau_s` samples.
    pub fn new(tau_s: f64) -> Self {
        let inv_tau = 1.0 / tau_s;
        let d = (-inv_tau).exp();
        let mut pow2 = Vec::with_capacity(JUMP_BITS);
        // Length 1: d¹, G = 1, H = 0. Doubling: compose the entry with itself.
        let mut e = [d, 1.0, 0.0];
        let mut len = 1.0f64;
        for j in 0..JUMP_BITS {
            // d^(2^j) straight from exp keeps its relative error at one ulp.
            e[0] = (-(len * inv_tau)).exp();
            pow2.push(e);
            let [p, g, h] = e;
            e = [p * p, g + p * g, h + p * (h + len * g)];
            len *= 2.0;
            let _ = j;
        }
        let small = (0..SMALL).map(|l| (-(l as f64) * inv_tau).exp()).collect();
        JumpTable {
            d,
            inv_tau,
            pow2,
            small,
        }
    }

    /// `d^l`, to one rounding of `exp`.
    pub fn pow(&self, l: u64) -> f64 {
        match self.small.get(l as usize) {
            Some(&v) => v,
            None => (-(l as f64) * self.inv_tau).exp(),
        }
    }

    /// `(d^L, G(L), H(L))`.
    pub fn jump(&self, l: u64) -> [f64; 3] {
        let (mut p, mut g, mut h) = (1.0f64, 0.0f64, 0.0f64);
        let mut done = 0.0f64;
        let mut bits = l;
        let mut j = 0;
        while bits != 0 && j < JUMP_BITS {
            if bits & 1 == 1 {
                let [p2, g2, h2] = self.pow2[j];
                h += p * (h2 + done * g2);
                g += p * g2;
                p *= p2;
                done += (1u64 << j) as f64;
            }
            bits >>= 1;
            j += 1;
        }
        [p, g, h]
    }

    /// The table as `f32` rows `(d^(2^j), G, H, 0)` for the GPU.
    pub fn gpu_rows(&self) -> Vec<[f32; 4]> {
        self.pow2[..GPU_JUMP_BITS]
            .iter()
            .map(|r| [r[0] as f32, r[1] as f32, r[2] as f32, 0.0])
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn brute(d: f64, l: u64) -> [f64; 3] {
        let (mut p, mut g, mut h) = (1.0, 0.0, 0.0);
        for i in 0..l {
            g += p;
            h += i as f64 * p;
            p *= d;
        }
        [p, g, h]
    }

    #[test]
    fn jumps_match_sums() {
        for tau in [0.7, 3.0, 1500.0, 1e6] {
            let t = JumpTable::new(tau);
            for l in [0u64, 1, 2, 3, 7, 64, 599, 600, 1000] {
                let a = t.jump(l);
                let b = brute(t.d, l);
                for k in 0..3 {
                    let err = (a[k] - b[k]).abs();
                    assert!(
                        err <= 1e-12 * b[k].abs().max(1e-300),
                        "tau {tau} l {l} k {k}: {a:?} vs {b:?}"
                    );
                }
            }
        }
    }
}
