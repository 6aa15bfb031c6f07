//! Prints the GPU adapter the tests will run on, and exits non-zero when there is none.
//!
//! The adapter is the one `Engine::gpu(&GpuOptions::software_ok())` opens, so it honours
//! `WGPU_BACKEND` and `WGPU_ADAPTER_NAME` exactly as the test suite does. CI runs this once per
//! backend before the tests, so a run can never pass without a real adapter:
//!
//! ```text
//! WGPU_BACKEND=vulkan cargo run --example adapters
//! WGPU_BACKEND=gl cargo run --example adapters
//! ```

use neurokernels::{Engine, GpuOptions};

fn main() {
    for var in ["WGPU_BACKEND", "WGPU_ADAPTER_NAME"] {
        println!("{var}={}", std::env::var(var).unwrap_or_default());
    }
    match Engine::gpu(&GpuOptions::software_ok()) {
        Ok(Engine::Gpu(ctx)) => {
            let info = ctx.adapter_info();
            let limits = ctx.limits();
            println!("adapter: {}", info.name);
            println!("backend: {:?}", info.backend);
            println!("device type: {:?}", info.device_type);
            println!("driver: {} ({})", info.driver, info.driver_info);
            println!("max storage binding: {} B", ctx.max_binding());
            println!(
                "max workgroups per dimension: {}",
                limits.max_compute_workgroups_per_dimension
            );
        }
        Ok(Engine::Cpu) => {
            eprintln!("error: Engine::gpu returned the CPU engine");
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
