//! Which engine runs an operator: the GPU (a [`GpuContext`]) or the CPU.

use std::sync::Arc;

use crate::error::Result;
use crate::gpu::{GpuContext, GpuOptions};

/// The engine an operator runs on. Both engines have the same API, settings, outputs and
/// errors; the CPU engine needs no adapter.
#[derive(Debug, Clone)]
pub enum Engine {
    /// Plain Rust on the host.
    Cpu,
    /// WGSL compute shaders on a wgpu device.
    Gpu(Arc<GpuContext>),
}

impl Engine {
    /// The CPU engine.
    pub fn cpu() -> Self {
        Engine::Cpu
    }

    /// A GPU engine on the adapter chosen by `options` (and `WGPU_BACKEND` /
    /// `WGPU_ADAPTER_NAME`); [`crate::Error::NoAdapter`] when none matches.
    pub fn gpu(options: &GpuOptions) -> Result<Self> {
        Ok(Engine::Gpu(Arc::new(GpuContext::new(options)?)))
    }

    /// The default engine (SPEC §0): a hardware adapter when there is one, otherwise the CPU.
    ///
    /// A software adapter is used only when asked for through `WGPU_BACKEND` or
    /// `WGPU_ADAPTER_NAME`; then a missing adapter is an error rather than a silent fall-back.
    pub fn auto() -> Result<Self> {
        let asked = ["WGPU_BACKEND", "WGPU_ADAPTER_NAME"]
            .iter()
            .any(|v| std::env::var(v).is_ok_and(|s| !s.is_empty()));
        match Engine::gpu(&GpuOptions::default()) {
            Ok(e) => Ok(e),
            Err(e) if asked => Err(e),
            Err(_) => Ok(Engine::Cpu),
        }
    }

    /// Whether this is the GPU engine.
    pub fn is_gpu(&self) -> bool {
        matches!(self, Engine::Gpu(_))
    }

    /// A one-line description (adapter name and backend, or "cpu").
    pub fn describe(&self) -> String {
        match self {
            Engine::Cpu => "cpu".to_string(),
            Engine::Gpu(ctx) => {
                let i = ctx.adapter_info();
                format!("{} ({:?}, {:?})", i.name, i.backend, i.device_type)
            }
        }
    }
}

/// Worker threads the CPU engine uses for large chunks: `NEUROKERNELS_THREADS` when set to a
/// positive integer, else the available parallelism (at most 16).
pub(crate) fn worker_threads() -> usize {
    static N: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *N.get_or_init(|| {
        std::env::var("NEUROKERNELS_THREADS")
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .filter(|&n| n > 0)
            .unwrap_or_else(|| {
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(1)
            })
            .clamp(1, 16)
    })
}

/// The CPU engine's worker pool ([`worker_threads`] threads, started on first use), or
/// `None` when the threads could not be started (work then runs on the calling thread).
fn pool() -> Option<&'static rayon::ThreadPool> {
    static POOL: std::sync::OnceLock<Option<rayon::ThreadPool>> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(worker_threads())
            .thread_name(|i| format!("neurokernels-{i}"))
            .build()
            .ok()
    })
    .as_ref()
}

/// How [`par_rows`] splits its rows: `row_len` elements of the output per row, at most
/// `parts` pieces, piece starts at multiples of `align` rows.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Split {
    pub row_len: usize,
    pub parts: usize,
    pub align: usize,
}

/// Work that can be cut in two at a row boundary, for [`par_split`].
pub(crate) trait Rows: Send + Sized {
    /// Rows this piece holds.
    fn rows(&self) -> usize;
    /// The first `mid` rows and the rest.
    fn split_rows(self, mid: usize) -> (Self, Self);
}

/// A mutable slice seen as rows of `row_len` elements (the last row may be short).
struct SliceRows<'a, T> {
    data: &'a mut [T],
    row_len: usize,
    rows: usize,
}

impl<T: Send> Rows for SliceRows<'_, T> {
    fn rows(&self) -> usize {
        self.rows
    }
    fn split_rows(self, mid: usize) -> (Self, Self) {
        let (lo, hi) = self
            .data
            .split_at_mut((mid * self.row_len).min(self.data.len()));
        let row_len = self.row_len;
        (
            SliceRows {
                data: lo,
                row_len,
                rows: mid,
            },
            SliceRows {
                data: hi,
                row_len,
                rows: self.rows - mid,
            },
        )
    }
}

/// Runs `f(range, rows)` over `rows` split as `split` says, each call getting its own rows
/// of `out`. The pieces run on the worker pool by recursive halving (`rayon::join`): the
/// pool's threads persist, and a warm call allocates nothing.
pub(crate) fn par_rows<T: Send>(
    rows: std::ops::Range<usize>,
    out: &mut [T],
    split: Split,
    f: &(dyn Fn(std::ops::Range<usize>, &mut [T]) + Sync),
) {
    let work = SliceRows {
        data: out,
        row_len: split.row_len,
        rows: rows.len(),
    };
    let first = rows.start;
    par_split(work, split.parts, split.align, &|r, w| {
        f(first + r.start..first + r.end, w.data)
    });
}

/// Runs `f(range, piece)` over at most `parts` pieces of `work` (piece starts at multiples
/// of `align` rows; `range` is the piece's rows within `work`), on the worker pool by
/// recursive halving: the pool's threads persist, and a warm call allocates nothing.
pub(crate) fn par_split<W: Rows>(
    work: W,
    parts: usize,
    align: usize,
    f: &(dyn Fn(std::ops::Range<usize>, W) + Sync),
) {
    let align = align.max(1);
    let n = work.rows();
    let parts = parts.min(n.div_ceil(align));
    if parts <= 1 {
        return f(0..n, work);
    }
    let Some(pool) = pool() else {
        return f(0..n, work);
    };
    pool.install(|| halve(0, work, parts, align, f));
}

/// [`par_split`] inside the pool: `work` starts at row `first` of the whole.
fn halve<W: Rows>(
    first: usize,
    work: W,
    parts: usize,
    align: usize,
    f: &(dyn Fn(std::ops::Range<usize>, W) + Sync),
) {
    let n = work.rows();
    if parts <= 1 {
        return f(first..first + n, work);
    }
    let left = parts / 2;
    let mid = ((n.div_ceil(align) * left / parts) * align).min(n);
    let (lo, hi) = work.split_rows(mid);
    rayon::join(
        || halve(first, lo, left, align, f),
        || halve(first + mid, hi, parts - left, align, f),
    );
}

/// `f(0), …, f(n − 1)` in order, computed on the worker pool when `n > 1`.
pub(crate) fn par_map<R: Send>(n: usize, f: impl Fn(usize) -> R + Sync + Send) -> Vec<R> {
    use rayon::prelude::*;
    match pool() {
        Some(pool) if n > 1 && worker_threads() > 1 => {
            pool.install(|| (0..n).into_par_iter().map(f).collect())
        }
        _ => (0..n).map(f).collect(),
    }
}

/// `f(i, piece)` for the `i`-th piece of `out` cut into pieces of `len` elements (the last may
/// be shorter), the results in piece order; on the worker pool when there is more than one
/// piece. The pool's threads persist: starting two scoped threads instead measured 160 µs
/// (p50) on the benches' machine, a sixth of a 1 ms call.
pub(crate) fn par_pieces<T: Send, R: Send>(
    out: &mut [T],
    len: usize,
    f: impl Fn(usize, &mut [T]) -> R + Sync + Send,
) -> Vec<R> {
    use rayon::prelude::*;
    let len = len.max(1);
    match pool() {
        Some(pool) if out.len() > len && worker_threads() > 1 => pool.install(|| {
            out.par_chunks_mut(len)
                .enumerate()
                .map(|(i, piece)| f(i, piece))
                .collect()
        }),
        _ => out
            .chunks_mut(len)
            .enumerate()
            .map(|(i, piece)| f(i, piece))
            .collect(),
    }
}

/// Hints the processor to fetch `rows` rows of `width` elements starting at `data[start]`
/// (row stride `stride`) into the cache; `write` asks for them in a writable state. Only
/// addresses inside `data` are touched; does nothing off x86-64.
#[inline]
pub(crate) fn prefetch_rows(
    data: &[f32],
    start: usize,
    stride: usize,
    rows: usize,
    width: usize,
    write: bool,
) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_ET0, _MM_HINT_T0};
        let p = data.as_ptr() as *const i8;
        for r in 0..rows {
            let a = start + r * stride;
            if a + width > data.len() {
                break;
            }
            let mut off = 0;
            while off < width {
                // SAFETY: a prefetch never faults; the address lies inside `data`.
                unsafe {
                    let q = p.add(4 * (a + off));
                    if write {
                        _mm_prefetch::<_MM_HINT_ET0>(q);
                    } else {
                        _mm_prefetch::<_MM_HINT_T0>(q);
                    }
                }
                off += 16;
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (data, start, stride, rows, width, write);
    }
}
