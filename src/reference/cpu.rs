//! The CPU engine of the common-average reference: per row, the mean over channels in `f64`
//! (or the median, by selection on a copy of the row), subtracted in `f64` and rounded once
//! to `f32`.

use ndarray::{ArrayView2, ArrayViewMut2};

/// Scratch for the median (one row); the operator itself is stateless.
#[derive(Debug, Clone, Default)]
pub(crate) struct CpuScratch {
    row: Vec<f32>,
}

/// The median of `v` (numpy's convention: the mean of the two middle values for an even
/// count), in `f64`. `v` is reordered. `v` is non-empty and holds no NaN.
pub(crate) fn median(v: &mut [f32]) -> f64 {
    let n = v.len();
    let (lo_part, hi, _) = v.select_nth_unstable_by(n / 2, |a, b| a.total_cmp(b));
    let hi = *hi as f64;
    if n % 2 == 1 {
        return hi;
    }
    let lo = lo_part.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    (lo + hi) / 2.0
}

impl CpuScratch {
    /// Writes `chunk` minus each row's mean (or median) into `out` (same shape, finite
    /// samples, at least one channel: checked by the caller).
    pub(crate) fn run(
        &mut self,
        median_mode: bool,
        chunk: ArrayView2<'_, f32>,
        mut out: ArrayViewMut2<'_, f32>,
    ) {
        let nc = chunk.ncols();
        for (row_in, mut row_out) in chunk.outer_iter().zip(out.outer_iter_mut()) {
            let centre = if median_mode {
                self.row.clear();
                self.row.extend(row_in.iter().copied());
                median(&mut self.row)
            } else {
                let sum: f64 = match row_in.as_slice() {
                    Some(r) => {
                        // Four partial sums: the additions vectorise.
                        let mut acc = [0.0f64; 4];
                        let mut it = r.chunks_exact(4);
                        for q in &mut it {
                            for (a, &x) in acc.iter_mut().zip(q) {
                                *a += x as f64;
                            }
                        }
                        let tail: f64 = it.remainder().iter().map(|&x| x as f64).sum();
                        (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail
                    }
                    None => row_in.iter().map(|&x| x as f64).sum(),
                };
                sum / nc as f64
            };
            match (row_in.as_slice(), row_out.as_slice_mut()) {
                (Some(r), Some(o)) => {
                    for (o, &x) in o.iter_mut().zip(r) {
                        *o = (x as f64 - centre) as f32;
                    }
                }
                _ => {
                    for (o, &x) in row_out.iter_mut().zip(row_in.iter()) {
                        *o = (x as f64 - centre) as f32;
                    }
                }
            }
        }
    }
}
