//! The main job's embedded default: the closed-loop simulation of SPEC §7 (stimulus classes →
//! rate encoder → recurrent Poisson GLM → waveforms and noise → band-pass → LRR → threshold →
//! bins → max-rate classifier), printing the ground-truth scores and the real-time factor of
//! each stage. The same code runs behind `neurokernels simulate`, which has every flag.
//!
//! `cargo run --release --example pipeline [-- cpu|gpu]`

use neurokernels::chain::ChainSettings;
use neurokernels::simulate::{self, SimSettings};
use neurokernels::{Engine, GpuOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let engine = match std::env::args().nth(1).as_deref() {
        Some("cpu") => Engine::cpu(),
        Some("gpu") => Engine::gpu(&GpuOptions::software_ok())?,
        _ => Engine::auto()?,
    };
    println!("engine: {}", engine.describe());
    let report = simulate::run(&engine, &SimSettings::default(), ChainSettings::default())?;
    println!("{report}");
    Ok(())
}
