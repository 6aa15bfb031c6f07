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
