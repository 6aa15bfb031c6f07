//! The CPU engine of the band-pass filter: transposed direct form II, `f64` state and
//! arithmetic, time-major rows processed in lockstep across channels.
//!
//! Per row, the samples are widened to `f64` into a work row, then each section runs over
//! the whole row (a branch-free loop across channels that the compiler vectorises), and
//! the row is narrowed back to `f32` into the output. The state is two arrays per section
//! (`z₁`, `z₂`, one entry per channel), so every inner loop reads and writes contiguous
//! memory. Nothing is allocated per chunk.

use ndarray::{ArrayView2, ArrayViewMut2};

/// One section's coefficients `(b₀, b₁, b₂, a₁, a₂)` (normalised so that `a₀ = 1`).
pub(crate) type Coeffs = [f64; 5];

/// Per-channel section state.
#[derive(Debug, Clone, Default)]
pub(crate) struct CpuState {
    /// Channels the state is sized for (0: not yet).
    nc: usize,
    /// `z₁` of section `s`, channel `c` at `s·nc + c`.
    z1: Vec<f64>,
    /// `z₂`, same layout.
    z2: Vec<f64>,
    /// Work row (`nc` entries).
    w: Vec<f64>,
}

impl CpuState {
    /// Zero state for `nc` channels and `ns` sections.
    pub(crate) fn init(&mut self, ns: usize, nc: usize) {
        self.nc = nc;
        self.z1.clear();
        self.z1.resize(ns * nc, 0.0);
        self.z2.clear();
        self.z2.resize(ns * nc, 0.0);
        self.w.clear();
        self.w.resize(nc, 0.0);
    }

    /// The state as `(z₁ hi, z₁ lo, z₂ hi, z₂ lo)` per (section, channel), section-major:
    /// the `lo` halves are `−0.0` (adding it is the identity, signed zeros included).
    pub(crate) fn pairs(&self) -> Vec<f64> {
        self.z1
            .iter()
            .zip(&self.z2)
            .flat_map(|(&a, &b)| [a, -0.0, b, -0.0])
            .collect()
    }

    /// Sets the state of `ns` sections × `nc` channels from [`CpuState::pairs`]'s layout
    /// (`pairs.len() == 4·ns·nc`, checked by the caller): each value is `hi + lo`.
    pub(crate) fn set_pairs(&mut self, ns: usize, nc: usize, pairs: &[f64]) {
        self.init(ns, nc);
        for (i, p) in pairs.chunks_exact(4).enumerate() {
            self.z1[i] = p[0] + p[1];
            self.z2[i] = p[2] + p[3];
        }
    }

    /// Channels the state is sized for (0 when not yet initialised).
    pub(crate) fn channels(&self) -> usize {
        self.nc
    }

    /// Filters `chunk` into `out` (same shape, checked by the caller; samples checked
    /// finite by the caller). Dispatches at run time to a build of the same loop for
    /// AVX-512F or AVX2 when the CPU has them: the same IEEE operations in the same order
    /// (no FMA contraction), so the output is bit-identical whichever build runs.
    pub(crate) fn run(
        &mut self,
        sos: &[Coeffs],
        chunk: ArrayView2<'_, f32>,
        out: ArrayViewMut2<'_, f32>,
    ) {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU has AVX-512F (checked just above).
                return unsafe { self.run_avx512(sos, chunk, out) };
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU has AVX2 (checked just above).
                return unsafe { self.run_avx2(sos, chunk, out) };
            }
        }
        self.run_rows(sos, chunk, out)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn run_avx512(
        &mut self,
        sos: &[Coeffs],
        chunk: ArrayView2<'_, f32>,
        out: ArrayViewMut2<'_, f32>,
    ) {
        self.run_rows(sos, chunk, out)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn run_avx2(
        &mut self,
        sos: &[Coeffs],
        chunk: ArrayView2<'_, f32>,
        out: ArrayViewMut2<'_, f32>,
    ) {
        self.run_rows(sos, chunk, out)
    }

    /// The loop itself: rows in order, every section across all channels in lockstep.
    #[inline(always)]
    fn run_rows(
        &mut self,
        sos: &[Coeffs],
        chunk: ArrayView2<'_, f32>,
        mut out: ArrayViewMut2<'_, f32>,
    ) {
        let nc = self.nc;
        for (row_in, mut row_out) in chunk.outer_iter().zip(out.outer_iter_mut()) {
            let w = &mut self.w[..nc];
            match row_in.as_slice() {
                Some(r) => {
                    for (wi, &x) in w.iter_mut().zip(r) {
                        *wi = x as f64;
                    }
                }
                None => {
                    for (wi, &x) in w.iter_mut().zip(row_in.iter()) {
                        *wi = x as f64;
                    }
                }
            }
            for (s, &[b0, b1, b2, a1, a2]) in sos.iter().enumerate() {
                let z1 = &mut self.z1[s * nc..(s + 1) * nc];
                let z2 = &mut self.z2[s * nc..(s + 1) * nc];
                for ((x, z1), z2) in w.iter_mut().zip(z1.iter_mut()).zip(z2.iter_mut()) {
                    let xi = *x;
                    let y = b0 * xi + *z1;
                    *z1 = b1 * xi - a1 * y + *z2;
                    *z2 = b2 * xi - a2 * y;
                    *x = y;
                }
            }
            match row_out.as_slice_mut() {
                Some(r) => {
                    for (o, &y) in r.iter_mut().zip(w.iter()) {
                        *o = y as f32;
                    }
                }
                None => {
                    for (o, &y) in row_out.iter_mut().zip(w.iter()) {
                        *o = y as f32;
                    }
                }
            }
        }
    }
}
