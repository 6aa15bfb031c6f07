//! Checks shared by the streaming operators' chunk inputs: non-finite samples in host chunks,
//! and the rank, element type and engine of device chunks.

use ndarray::ArrayView2;

use crate::error::{Error, Result};
use crate::gpu::{DType, DeviceArray};

/// The first non-finite value of `chunk`, in (sample, channel) order, as an error.
pub(crate) fn check_finite(chunk: ArrayView2<'_, f32>) -> Result<()> {
    // A contiguous chunk: one branch-free scan of the exponent bits (vectorises); the slow
    // path below only runs to name the offending sample.
    if let Some(all) = chunk.as_slice() {
        if all_finite(all) {
            return Ok(());
        }
    }
    // Rows are contiguous in the usual layout: test whole rows (vectorised) first.
    for (s, row) in chunk.outer_iter().enumerate() {
        let ok = match row.as_slice() {
            Some(r) => r.iter().fold(true, |ok, v| ok & v.is_finite()),
            None => row.iter().all(|v| v.is_finite()),
        };
        if !ok {
            return Err(non_finite_in_row(chunk, s));
        }
    }
    Ok(())
}

/// Whether every value of `v` is finite: a scan of the exponent bits, built for AVX-512F or
/// AVX2 when the CPU has them (a 20 ms chunk of 384 channels, 0.9 MB from L2: ~45 µs with
/// SSE2's four lanes on the benches' machine).
pub(crate) fn all_finite(v: &[f32]) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F (checked just above).
            return unsafe { all_finite_avx512(v) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked just above).
            return unsafe { all_finite_avx2(v) };
        }
    }
    all_finite_scan(v)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn all_finite_avx512(v: &[f32]) -> bool {
    all_finite_scan(v)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn all_finite_avx2(v: &[f32]) -> bool {
    all_finite_scan(v)
}

/// The scan itself: per block of 1024 values, the largest magnitude's bits against the
/// exponent of ±inf (NaNs have larger bits), branch-free within a block.
#[inline(always)]
fn all_finite_scan(v: &[f32]) -> bool {
    v.chunks(1024)
        .all(|c| c.iter().fold(0u32, |m, x| m.max(x.to_bits() & 0x7fff_ffff)) < 0x7f80_0000)
}

/// The error for the first non-finite value of row `row` of `chunk` (which holds one).
pub(crate) fn non_finite_in_row(chunk: ArrayView2<'_, f32>, row: usize) -> Error {
    let (channel, value) = chunk
        .row(row)
        .iter()
        .enumerate()
        .find(|(_, v)| !v.is_finite())
        .map_or((0, f64::NAN), |(c, &v)| (c, v as f64));
    Error::NonFinite {
        what: "chunk",
        sample: row,
        channel,
        value,
    }
}

/// [`Error::Shape`] unless an `_into` call's `out` has the chunk's shape.
pub(crate) fn check_out_shape(chunk: (usize, usize), out: (usize, usize)) -> Result<()> {
    if out == chunk {
        Ok(())
    } else {
        Err(Error::shape(
            "out",
            format!("{chunk:?} (the chunk's shape)"),
            format!("{out:?}"),
        ))
    }
}

/// The `(samples, channels)` of a device chunk: [`Error::Shape`] unless it has rank 2.
pub(crate) fn device_chunk_dims(chunk: &DeviceArray) -> Result<(usize, usize)> {
    match *chunk.shape() {
        [n, c] => Ok((n, c)),
        ref shape => Err(Error::shape(
            "chunk",
            "(samples, channels)",
            format!("{shape:?}"),
        )),
    }
}

/// The `(samples, channels)` of an `f32` device chunk: [`Error::Shape`] unless it has rank 2,
/// then [`Error::DeviceArray`] ("`{op}` takes f32 samples, got …") for another element type.
pub(crate) fn f32_device_chunk(chunk: &DeviceArray, op: &str) -> Result<(usize, usize)> {
    let dims = device_chunk_dims(chunk)?;
    if chunk.dtype() != DType::F32 {
        return Err(Error::DeviceArray(format!(
            "{op} takes f32 samples, got {:?}",
            chunk.dtype()
        )));
    }
    Ok(dims)
}

/// The error for a device-resident call `what` on an operator built on the CPU engine.
pub(crate) fn needs_gpu(what: &str) -> Error {
    Error::DeviceArray(format!("{what} needs the GPU engine"))
}

/// A zero-filled buffer of `len` values for an output whose size the caller's settings
/// chose: [`Error::HostMemory`] naming `what`, not an abort, when the host cannot allocate
/// it (the pages are zeroed by the allocator, so a large buffer costs no writes here).
///
/// The allocator hands a large buffer out as new pages that the kernel faults in one 4 KiB
/// page at a time on first touch. On Linux a buffer of at least 4 MiB is advised for
/// transparent huge pages (`madvise(MADV_HUGEPAGE)`) before anything touches it, so it is
/// faulted in 2 MiB at a time: 46 MB of fresh output took 20.6 ms of page faults with 4 KiB
/// pages and 2.5 ms with huge pages on the benches' machine. The advice is a hint; where the
/// kernel declines it the buffer is the same.
pub(crate) fn host_zeroed<T: bytemuck::Zeroable>(what: &str, len: usize) -> Result<Vec<T>> {
    let v = bytemuck::allocation::try_zeroed_vec(len).map_err(|()| {
        Error::HostMemory(format!(
            "{what}: {len} values of {} bytes",
            std::mem::size_of::<T>()
        ))
    })?;
    advise_huge_pages(&v);
    Ok(v)
}

/// `madvise(MADV_HUGEPAGE)` on the whole pages inside `v` when it holds at least 4 MiB; see
/// [`host_zeroed`].
#[cfg(target_os = "linux")]
fn advise_huge_pages<T>(v: &[T]) {
    const PAGE: usize = 4096;
    const HUGE_OUTPUT_BYTES: usize = 4 << 20;
    let bytes = std::mem::size_of_val(v);
    if bytes < HUGE_OUTPUT_BYTES {
        return;
    }
    let start = v.as_ptr() as usize;
    let first = start.div_ceil(PAGE) * PAGE;
    let end = (start + bytes) / PAGE * PAGE;
    if end > first {
        // SAFETY: `[first, end)` is page-aligned and lies inside `v`'s allocation; the advice
        // changes how the kernel backs those pages, never their contents (zero until written).
        // Its result is ignored: refused advice leaves ordinary pages.
        unsafe {
            libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_HUGEPAGE);
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_huge_pages<T>(_v: &[T]) {}

/// [`host_zeroed`] shaped as an array of `shape`.
pub(crate) fn host_zeros<T: bytemuck::Zeroable, D: ndarray::Dimension>(
    what: &str,
    shape: D,
) -> Result<ndarray::Array<T, D>> {
    let len = shape
        .slice()
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .filter(|&n| {
            n.checked_mul(std::mem::size_of::<T>().max(1))
                .is_some_and(|b| b <= isize::MAX as usize)
        })
        .ok_or_else(|| Error::HostMemory(format!("{what}: shape {:?} overflows", shape.slice())))?;
    let v = host_zeroed(what, len)?;
    ndarray::Array::from_shape_vec(shape, v).map_err(|e| Error::HostMemory(format!("{what}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every non-finite value is found wherever it sits (block edges included), and the
    /// finite extremes pass; the AVX builds and the plain scan agree.
    #[test]
    fn all_finite_finds_every_non_finite_value() {
        let edge = [f32::MAX, -f32::MAX, f32::MIN_POSITIVE, 1e-45, -0.0, 0.0];
        let mut v: Vec<f32> = (0..2100).map(|i| edge[i % edge.len()]).collect();
        assert!(all_finite(&v) && all_finite_scan(&v));
        assert!(all_finite(&[]));
        for &bad in &[f32::NAN, -f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            for at in [0, 1, 1023, 1024, 1025, 2047, 2099] {
                let keep = v[at];
                v[at] = bad;
                assert!(!all_finite(&v), "{bad} at {at} missed");
                assert!(
                    !all_finite_scan(&v),
                    "{bad} at {at} missed by the plain scan"
                );
                v[at] = keep;
            }
        }
    }
}
