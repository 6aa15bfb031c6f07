//! Exact sample arithmetic on the decimal values users write (SPEC §1).
//!
//! `0.0157 s × 30 000 Hz` is 471 samples, even though the `f64` product is
//! `470.99999999999994`. Each setting is taken at its shortest round-trip decimal (what
//! `format!("{}", x)` prints), turned into an exact fraction, and every bin edge is computed
//! from its index in `u128` integer arithmetic — never by adding up bin lengths.

use crate::error::{Error, Result};

/// A non-negative exact fraction `num / den` (reduced).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ratio {
    /// Numerator.
    pub num: u128,
    /// Denominator (never zero).
    pub den: u128,
}

fn gcd(mut a: u128, mut b: u128) -> u128 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

impl Ratio {
    /// The exact value of `x`'s shortest round-trip decimal. `name` labels errors.
    ///
    /// Errors when `x` is not finite, negative, or needs more than 38 decimal digits.
    pub fn from_decimal(name: &'static str, x: f64) -> Result<Self> {
        if !x.is_finite() || x < 0.0 {
            return Err(Error::setting(
                name,
                format!("must be finite and ≥ 0, got {x}"),
            ));
        }
        let s = format!("{x:e}"); // e.g. "1.57e-2": shortest round-trip digits.
        let (mant, exp) = s
            .split_once('e')
            .ok_or_else(|| Error::setting(name, format!("cannot parse {s}")))?;
        let exp: i32 = exp
            .parse()
            .map_err(|_| Error::setting(name, format!("cannot parse {s}")))?;
        let (int, frac) = mant.split_once('.').unwrap_or((mant, ""));
        let digits: u128 = format!("{int}{frac}")
            .parse()
            .map_err(|_| Error::setting(name, format!("cannot parse {s}")))?;
        let scale = exp - frac.len() as i32;
        let too_big = || Error::setting(name, format!("{x} is out of the exact range"));
        let (num, den) = if scale >= 0 {
            let m = 10u128.checked_pow(scale as u32).ok_or_else(too_big)?;
            (digits.checked_mul(m).ok_or_else(too_big)?, 1)
        } else {
            (
                digits,
                10u128.checked_pow((-scale) as u32).ok_or_else(too_big)?,
            )
        };
        Ok(Ratio::new(num, den))
    }

    /// `num / den`, reduced. `den` must be nonzero.
    pub fn new(num: u128, den: u128) -> Self {
        let g = gcd(num, den).max(1);
        Ratio {
            num: num / g,
            den: den / g,
        }
    }

    /// Exact product, or `None` on overflow.
    pub fn checked_mul(self, o: Ratio) -> Option<Ratio> {
        let g1 = gcd(self.num, o.den).max(1);
        let g2 = gcd(o.num, self.den).max(1);
        Some(Ratio::new(
            (self.num / g1).checked_mul(o.num / g2)?,
            (self.den / g2).checked_mul(o.den / g1)?,
        ))
    }

    /// `floor(k · self)`, or `None` on overflow.
    pub fn floor_mul(self, k: u64) -> Option<u64> {
        let p = (k as u128).checked_mul(self.num)? / self.den;
        u64::try_from(p).ok()
    }

    /// The value as `f64` (rounded).
    pub fn to_f64(self) -> f64 {
        self.num as f64 / self.den as f64
    }
}

/// `floor(duration · fs)` in samples, exactly (refractory and peak widths).
pub fn duration_samples(name: &'static str, duration: f64, fs: f64) -> Result<u64> {
    let d = Ratio::from_decimal(name, duration)?;
    let f = Ratio::from_decimal("fs", fs)?;
    d.checked_mul(f)
        .and_then(|r| r.floor_mul(1))
        .ok_or_else(|| Error::setting(name, "duration × fs overflows"))
}

/// Bin edges `b_k = floor(k · bin_duration · fs)`, exact (SPEC §1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BinEdges {
    spb: Ratio,
}

impl BinEdges {
    /// Edges for `bin_duration` seconds at `fs` Hz. Errors unless both are positive and the
    /// bins are at least one sample long.
    pub fn new(bin_duration: f64, fs: f64) -> Result<Self> {
        if !(fs > 0.0 && fs.is_finite()) {
            return Err(Error::setting(
                "fs",
                format!("must be finite and > 0, got {fs}"),
            ));
        }
        if !(bin_duration > 0.0 && bin_duration.is_finite()) {
            return Err(Error::setting(
                "bin_duration",
                format!("must be finite and > 0, got {bin_duration}"),
            ));
        }
        let spb = Ratio::from_decimal("bin_duration", bin_duration)?
            .checked_mul(Ratio::from_decimal("fs", fs)?)
            .ok_or_else(|| Error::setting("bin_duration", "bin_duration × fs overflows"))?;
        if spb.num < spb.den {
            return Err(Error::setting(
                "bin_duration",
                format!(
                    "a bin must span at least one sample: {bin_duration} s × {fs} Hz = {} samples",
                    spb.to_f64()
                ),
            ));
        }
        Ok(BinEdges { spb })
    }

    /// Samples per bin, exact.
    pub fn samples_per_bin(&self) -> Ratio {
        self.spb
    }

    /// `b_k`, the first sample of bin `k`.
    pub fn edge(&self, k: u64) -> Result<u64> {
        self.spb
            .floor_mul(k)
            .ok_or_else(|| Error::PositionOverflow(format!("edge of bin {k}")))
    }

    /// The bin holding absolute sample `s`: the largest `k` with `b_k ≤ s`.
    pub fn bin_of(&self, s: u64) -> u64 {
        // b_k ≤ s  ⇔  floor(k·num/den) ≤ s  ⇔  k·num < (s+1)·den  ⇔  k ≤ ((s+1)·den − 1)/num.
        (((s as u128 + 1) * self.spb.den - 1) / self.spb.num) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_not_binary() {
        let e = BinEdges::new(0.0157, 30_000.0).unwrap();
        assert_eq!(e.edge(1).unwrap(), 471);
        assert_eq!(e.samples_per_bin(), Ratio::new(471, 1));
        let e = BinEdges::new(0.02033, 30_000.0).unwrap();
        assert_eq!(e.samples_per_bin(), Ratio::new(6099, 10));
        assert_eq!(e.edge(10).unwrap(), 6099);
        assert_eq!(e.edge(3).unwrap(), 1829);
        assert_eq!(
            BinEdges::new(0.0203, 30_000.0).unwrap().edge(1).unwrap(),
            609
        );
    }

    #[test]
    fn far_edges_are_exact() {
        // spb = 244.140625 = 15625/64 (e.g. 7.8125 ms at 31 250 Hz).
        let e = BinEdges::new(0.0078125, 31_250.0).unwrap();
        assert_eq!(e.samples_per_bin(), Ratio::new(15625, 64));
        assert_eq!(e.edge(77_767).unwrap(), (77_767u128 * 15625 / 64) as u64);
    }

    #[test]
    fn bin_of_inverts_edges() {
        let e = BinEdges::new(0.02033, 30_000.0).unwrap();
        for s in [
            0u64,
            1,
            608,
            609,
            610,
            1219,
            1220,
            4_294_967_196,
            4_294_967_396,
        ] {
            let k = e.bin_of(s);
            assert!(
                e.edge(k).unwrap() <= s && s < e.edge(k + 1).unwrap(),
                "s={s}"
            );
        }
    }

    #[test]
    fn bad_settings_are_errors() {
        assert!(BinEdges::new(0.0, 30_000.0).is_err());
        assert!(BinEdges::new(0.02, -1.0).is_err());
        assert!(BinEdges::new(f64::NAN, 1.0).is_err());
        assert!(BinEdges::new(0.5, 1.0).is_err());
        assert_eq!(duration_samples("refrac_dur", 0.001, 30_000.0).unwrap(), 30);
        assert_eq!(
            duration_samples("refrac_dur", 0.0157, 30_000.0).unwrap(),
            471
        );
    }
}
