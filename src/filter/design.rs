//! Butterworth design in second-order sections, step for step as
//! `scipy.signal.butter(..., output='sos')`: analog prototype (`buttap`), prewarping,
//! `lp2bp_zpk` / `lp2hp_zpk`, `bilinear_zpk`, and `zpk2sos` with its `'nearest'` pairing,
//! its section order (the poles closest to the unit circle last) and the gain in the first
//! section.

use std::f64::consts::PI;

use crate::error::{Error, Result};

/// A complex number (the few operations the design needs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct C64 {
    pub(crate) re: f64,
    pub(crate) im: f64,
}

impl C64 {
    pub(crate) const fn new(re: f64, im: f64) -> Self {
        C64 { re, im }
    }
    fn real(re: f64) -> Self {
        C64 { re, im: 0.0 }
    }
    pub(crate) fn add(self, o: C64) -> C64 {
        C64::new(self.re + o.re, self.im + o.im)
    }
    pub(crate) fn sub(self, o: C64) -> C64 {
        C64::new(self.re - o.re, self.im - o.im)
    }
    pub(crate) fn mul(self, o: C64) -> C64 {
        C64::new(
            self.re * o.re - self.im * o.im,
            self.re * o.im + self.im * o.re,
        )
    }
    fn scale(self, s: f64) -> C64 {
        C64::new(self.re * s, self.im * s)
    }
    pub(crate) fn div(self, o: C64) -> C64 {
        // Smith's algorithm.
        if o.re.abs() >= o.im.abs() {
            let r = o.im / o.re;
            let d = o.re + o.im * r;
            C64::new((self.re + self.im * r) / d, (self.im - self.re * r) / d)
        } else {
            let r = o.re / o.im;
            let d = o.re * r + o.im;
            C64::new((self.re * r + self.im) / d, (self.im * r - self.re) / d)
        }
    }
    fn neg(self) -> C64 {
        C64::new(-self.re, -self.im)
    }
    fn conj(self) -> C64 {
        C64::new(self.re, -self.im)
    }
    pub(crate) fn abs(self) -> f64 {
        self.re.hypot(self.im)
    }
    fn is_real(self) -> bool {
        self.im == 0.0
    }
    /// Principal square root (the branch numpy's `sqrt` takes).
    fn sqrt(self) -> C64 {
        if self.re == 0.0 && self.im == 0.0 {
            return C64::new(0.0, self.im);
        }
        let t = ((self.re.abs() + self.abs()) / 2.0).sqrt();
        if self.re >= 0.0 {
            C64::new(t, self.im / (2.0 * t))
        } else {
            C64::new(self.im.abs() / (2.0 * t), t.copysign(self.im))
        }
    }
}

/// Which response to design.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Band {
    /// `btype='bandpass'` with `[low, high]`.
    Pass,
    /// `btype='highpass'` with `low`.
    High,
}

/// Checks the settings and returns the response to design.
pub(crate) fn check(order: usize, low: f64, high: f64, fs: f64) -> Result<Band> {
    if order == 0 {
        return Err(Error::setting("order", "must be at least 1"));
    }
    if order > 64 {
        return Err(Error::setting(
            "order",
            format!("at most 64 supported, got {order}"),
        ));
    }
    if !(fs.is_finite() && fs > 0.0) {
        return Err(Error::setting(
            "fs",
            format!("must be finite and > 0, got {fs}"),
        ));
    }
    if !(low.is_finite() && low > 0.0) {
        return Err(Error::setting(
            "low_hz",
            format!("must be finite and > 0, got {low}"),
        ));
    }
    if high.is_nan() || high <= 0.0 {
        return Err(Error::setting(
            "high_hz",
            format!("must be > 0 (or ≥ fs/2 for a high-pass), got {high}"),
        ));
    }
    if low >= high {
        return Err(Error::setting(
            "low_hz",
            format!("must be below high_hz ({high}), got {low}"),
        ));
    }
    let nyq = fs / 2.0;
    if low >= nyq {
        return Err(Error::setting(
            "low_hz",
            format!("must be below the Nyquist frequency fs/2 = {nyq}, got {low}"),
        ));
    }
    Ok(if high >= nyq { Band::High } else { Band::Pass })
}

/// `np.poly` of up to two roots, real part: `[1, −(r₀+r₁), r₀·r₁]` by numpy's convolution.
fn poly(roots: &[C64]) -> Vec<f64> {
    let mut a = vec![C64::real(1.0)];
    for &r in roots {
        let mut next = vec![C64::real(0.0); a.len() + 1];
        for (i, &ai) in a.iter().enumerate() {
            next[i] = next[i].add(ai);
            next[i + 1] = next[i + 1].add(ai.mul(r.neg()));
        }
        a = next;
    }
    a.iter().map(|c| c.re).collect()
}

/// `_single_zpksos(z, p, 1)`.
fn single_sos(z: &[C64], p: &[C64]) -> [f64; 6] {
    let mut s = [0.0; 6];
    let b = poly(z);
    let a = poly(p);
    s[3 - b.len()..3].copy_from_slice(&b);
    s[6 - a.len()..6].copy_from_slice(&a);
    s
}

/// `_cplxreal`: the conjugate pairs (one element each, positive imaginary part, averaged
/// with their partners) followed by the real values.
fn cplxreal(z: &[C64]) -> Result<Vec<C64>> {
    let tol = 100.0 * f64::EPSILON;
    let mut z = z.to_vec();
    // lexsort((abs(imag), real)): by real part, then by |imag|.
    z.sort_by(|a, b| {
        a.re.total_cmp(&b.re)
            .then(a.im.abs().total_cmp(&b.im.abs()))
    });
    let (reals, cplx): (Vec<C64>, Vec<C64>) =
        z.into_iter().partition(|c| c.im.abs() <= tol * c.abs());
    let mut zp: Vec<C64> = cplx.iter().copied().filter(|c| c.im > 0.0).collect();
    let mut zn: Vec<C64> = cplx.iter().copied().filter(|c| c.im < 0.0).collect();
    if zp.len() != zn.len() {
        return Err(Error::setting(
            "sos",
            "complex values without complex conjugates",
        ));
    }
    // Runs of (approximately) the same real part, sorted by |imag|.
    let mut start = 0;
    while start < zp.len() {
        let mut stop = start;
        while stop + 1 < zp.len() && zp[stop + 1].re - zp[stop].re <= tol * zp[stop].abs() {
            stop += 1;
        }
        if stop > start {
            zp[start..=stop].sort_by(|a, b| a.im.abs().total_cmp(&b.im.abs()));
            zn[start..=stop].sort_by(|a, b| a.im.abs().total_cmp(&b.im.abs()));
        }
        start = stop + 1;
    }
    let mut out: Vec<C64> = zp
        .iter()
        .zip(&zn)
        .map(|(p, n)| p.add(n.conj()).scale(0.5))
        .collect();
    out.extend(reals.iter().map(|c| C64::real(c.re)));
    Ok(out)
}

/// Index of the value in `p` closest to the unit circle (the first on ties).
fn idx_worst(p: &[C64], among: impl Fn(&C64) -> bool) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    for (i, c) in p.iter().enumerate() {
        if !among(c) {
            continue;
        }
        let d = (1.0 - c.abs()).abs();
        if best.is_none_or(|(_, b)| d < b) {
            best = Some((i, d));
        }
    }
    best.map(|(i, _)| i)
}

#[derive(Clone, Copy)]
enum Which {
    Real,
    Complex,
    Any,
}

/// `_nearest_real_complex_idx(fro, to, which)`.
fn nearest(fro: &[C64], to: C64, which: Which) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    for (i, c) in fro.iter().enumerate() {
        let ok = match which {
            Which::Real => c.is_real(),
            Which::Complex => !c.is_real(),
            Which::Any => true,
        };
        if !ok {
            continue;
        }
        let d = c.sub(to).abs();
        if best.is_none_or(|(_, b)| d < b) {
            best = Some((i, d));
        }
    }
    best.map(|(i, _)| i)
}

fn missing() -> Error {
    Error::Validation("zpk2sos: unpaired pole or zero".into())
}

/// `zpk2sos(z, p, k, pairing='nearest')` for a digital filter.
pub(crate) fn zpk2sos(z: &[C64], p: &[C64], k: f64) -> Result<Vec<[f64; 6]>> {
    if z.is_empty() && p.is_empty() {
        return Ok(vec![[k, 0.0, 0.0, 1.0, 0.0, 0.0]]);
    }
    let mut p = p.to_vec();
    let mut z = z.to_vec();
    while p.len() < z.len() {
        p.push(C64::real(0.0));
    }
    while z.len() < p.len() {
        z.push(C64::real(0.0));
    }
    let n_sections = p.len().div_ceil(2);
    if p.len() % 2 == 1 {
        p.push(C64::real(0.0));
        z.push(C64::real(0.0));
    }
    let mut z = cplxreal(&z)?;
    let mut p = cplxreal(&p)?;
    let mut sos = vec![[0.0; 6]; n_sections];
    for si in (0..n_sections).rev() {
        let i1 = idx_worst(&p, |_| true).ok_or_else(missing)?;
        let p1 = p.remove(i1);
        let n_real_p = p.iter().filter(|c| c.is_real()).count();
        let n_real_z = z.iter().filter(|c| c.is_real()).count();
        if p1.is_real() && n_real_p == 0 {
            // Last remaining real pole.
            let iz = nearest(&z, p1, Which::Real).ok_or_else(missing)?;
            let z1 = z.remove(iz);
            sos[si] = single_sos(&[z1, C64::real(0.0)], &[p1, C64::real(0.0)]);
        } else if p.len() + 1 == z.len() && !p1.is_real() && n_real_p == 1 && n_real_z == 1 {
            // One real pole and one real zero left: pair with a complex zero.
            let iz = nearest(&z, p1, Which::Complex).ok_or_else(missing)?;
            let z1 = z.remove(iz);
            sos[si] = single_sos(&[z1, z1.conj()], &[p1, p1.conj()]);
        } else {
            let p2 = if p1.is_real() {
                let i2 = idx_worst(&p, |c| c.is_real()).ok_or_else(missing)?;
                p.remove(i2)
            } else {
                p1.conj()
            };
            if z.is_empty() {
                sos[si] = single_sos(&[], &[p1, p2]);
            } else {
                let iz = nearest(&z, p1, Which::Any).ok_or_else(missing)?;
                let z1 = z.remove(iz);
                if !z1.is_real() {
                    sos[si] = single_sos(&[z1, z1.conj()], &[p1, p2]);
                } else if z.is_empty() {
                    sos[si] = single_sos(&[z1], &[p1, p2]);
                } else {
                    let iz2 = nearest(&z, p1, Which::Real).ok_or_else(missing)?;
                    let z2 = z.remove(iz2);
                    sos[si] = single_sos(&[z1, z2], &[p1, p2]);
                }
            }
        }
    }
    if !(p.is_empty() && z.is_empty()) {
        return Err(missing());
    }
    for v in &mut sos[0][..3] {
        *v *= k;
    }
    Ok(sos)
}

/// `scipy.signal.butter(order, [low, high], 'bandpass', fs=fs, output='sos')`, or
/// `butter(order, low, 'highpass', fs=fs, output='sos')` when `band` is [`Band::High`].
pub(crate) fn butter(
    order: usize,
    low: f64,
    high: f64,
    fs: f64,
    band: Band,
) -> Result<Vec<[f64; 6]>> {
    let n = order as i64;
    // buttap: p = −exp(iπm/(2N)), m = −N+1, −N+3, …, N−1; no zeros; k = 1.
    let proto: Vec<C64> = (0..n)
        .map(|j| {
            let m = (-n + 1 + 2 * j) as f64;
            let th = PI * m / (2.0 * n as f64);
            C64::new(-th.cos(), -th.sin())
        })
        .collect();
    // Normalised to fs = 2, prewarped: 4·tan(π·Wn/2), Wn = 2·f/fs.
    let warp = |f: f64| 2.0 * 2.0 * (PI * (2.0 * f / fs) / 2.0).tan();
    let (z, p, k) = match band {
        Band::Pass => {
            let (w0, w1) = (warp(low), warp(high));
            let bw = w1 - w0;
            let wo = (w0 * w1).sqrt();
            let p_lp: Vec<C64> = proto.iter().map(|c| c.scale(bw / 2.0)).collect();
            let wo2 = C64::real(wo * wo);
            let mut p_bp: Vec<C64> = p_lp
                .iter()
                .map(|&q| q.add(q.mul(q).sub(wo2).sqrt()))
                .collect();
            p_bp.extend(p_lp.iter().map(|&q| q.sub(q.mul(q).sub(wo2).sqrt())));
            let z_bp = vec![C64::real(0.0); order];
            (z_bp, p_bp, bw.powi(order as i32))
        }
        Band::High => {
            let wo = warp(low);
            let p_hp: Vec<C64> = proto.iter().map(|&q| C64::real(wo).div(q)).collect();
            // k · real(prod(−z) / prod(−p)) over the prototype, which has no zeros.
            let mut den = C64::real(1.0);
            for &q in &proto {
                den = den.mul(q.neg());
            }
            let k = C64::real(1.0).div(den).re;
            (vec![C64::real(0.0); order], p_hp, k)
        }
    };
    // bilinear_zpk with fs = 2: (4 + x)/(4 − x); zeros at −1 for the relative degree.
    let fs2 = C64::real(4.0);
    let degree = p.len() - z.len();
    let mut z_z: Vec<C64> = z.iter().map(|&q| fs2.add(q).div(fs2.sub(q))).collect();
    let p_z: Vec<C64> = p.iter().map(|&q| fs2.add(q).div(fs2.sub(q))).collect();
    z_z.extend(std::iter::repeat_n(C64::real(-1.0), degree));
    let mut num = C64::real(1.0);
    for &q in &z {
        num = num.mul(fs2.sub(q));
    }
    let mut den = C64::real(1.0);
    for &q in &p {
        den = den.mul(fs2.sub(q));
    }
    let k_z = k * num.div(den).re;
    zpk2sos(&z_z, &p_z, k_z)
}
