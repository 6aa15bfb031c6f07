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

/// Runs `f(range, rows)` over `rows` split as `split` says, each call getting its own rows
/// of `out`. The pieces run on the worker pool by recursive halving (`rayon::join`): the
/// pool's threads persist, and a warm call allocates nothing.
pub(crate) fn par_rows<T: Send>(
    rows: std::ops::Range<usize>,
    out: &mut [T],
    split: Split,
    f: &(dyn Fn(std::ops::Range<usize>, &mut [T]) + Sync),
) {
    let align = split.align.max(1);
    let parts = split.parts.min(rows.len().div_ceil(align));
    if parts <= 1 {
        return f(rows, out);
    }
    let Some(pool) = pool() else {
        return f(rows, out);
    };
    let split = Split {
        parts,
        align,
        ..split
    };
    pool.install(|| halve(rows, out, split, f));
}

/// [`par_rows`] inside the pool.
fn halve<T: Send>(
    rows: std::ops::Range<usize>,
    out: &mut [T],
    split: Split,
    f: &(dyn Fn(std::ops::Range<usize>, &mut [T]) + Sync),
) {
    if split.parts <= 1 {
        return f(rows, out);
    }
    let blocks = rows.len().div_ceil(split.align);
    let left = split.parts / 2;
    let mid = (rows.start + (blocks * left / split.parts) * split.align).min(rows.end);
    let (lo, hi) = out.split_at_mut(((mid - rows.start) * split.row_len).min(out.len()));
    let (l, r) = (
        Split {
            parts: left,
            ..split
        },
        Split {
            parts: split.parts - left,
            ..split
        },
    );
    rayon::join(
        || halve(rows.start..mid, lo, l, f),
        || halve(mid..rows.end, hi, r, f),
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
