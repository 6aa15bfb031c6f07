//! What the benches share: the two engines, measured in the same run.

use neurokernels::{Engine, GpuOptions};

/// The CPU engine and the GPU engine (`Engine::gpu` with software adapters accepted: set
/// `WGPU_BACKEND` to pick one). Panics without an adapter: a bench never silently measures
/// the CPU alone.
pub fn engines() -> Vec<(&'static str, Engine)> {
    let gpu = Engine::gpu(&GpuOptions::software_ok())
        .expect("benches need a GPU adapter (set WGPU_BACKEND)");
    eprintln!("GPU engine: {}", gpu.describe());
    vec![("cpu", Engine::cpu()), ("gpu", gpu)]
}
