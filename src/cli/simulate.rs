//! `neurokernels simulate`.

use std::path::PathBuf;

use clap::Args;
use neurokernels::recording::NpyWriter;
use neurokernels::simulate::{self, SimReport, SimSettings};

use super::{out_dir, ChainArgs, CliError};

/// Flags of `simulate` (every default is SPEC §7's).
#[derive(Debug, Clone, Args)]
pub struct SimulateArgs {
    /// Channels (one neuron each).
    #[arg(long, default_value_t = 384)]
    channels: usize,
    /// Sample rate, Hz.
    #[arg(long, default_value_t = 30_000.0)]
    fs: f64,
    /// Trials.
    #[arg(long, default_value_t = 50)]
    trials: usize,
    /// Trial length, seconds.
    #[arg(long, default_value_t = 0.2)]
    trial_seconds: f64,
    /// Stimulus classes.
    #[arg(long, default_value_t = 4)]
    classes: usize,
    /// Input features per stimulus pattern.
    #[arg(long, default_value_t = 16)]
    features: usize,
    /// Share of trials used for training (the first ones).
    #[arg(long, default_value_t = 0.6)]
    train_fraction: f64,
    /// Seed of every draw.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Channels per noise cluster (also the LRR clusters unless --clusters is given).
    #[arg(long, default_value_t = 48)]
    cluster_size: usize,
    /// Independent noise σ, µV.
    #[arg(long, default_value_t = 6.0)]
    noise_uv: f64,
    /// Cluster-shared noise σ, µV.
    #[arg(long, default_value_t = 25.0)]
    shared_noise_uv: f64,
    /// LFP-like noise amplitude, µV.
    #[arg(long, default_value_t = 80.0)]
    lfp_uv: f64,
    /// Write every intermediate array as .npy into this directory.
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    chain: ChainArgs,
}

fn write<T: neurokernels::recording::NpyElement>(
    dir: &std::path::Path,
    name: &str,
    width: usize,
    data: &[T],
) -> Result<(), CliError> {
    let path = dir.join(name);
    let mut w = NpyWriter::<T>::create(&path, width).map_err(|e| format!("--out: {e}"))?;
    w.append_rows(data).map_err(|e| format!("--out: {e}"))?;
    w.finish().map_err(|e| format!("--out: {e}"))?;
    Ok(())
}

fn write_all(dir: &std::path::Path, r: &SimReport) -> Result<(), CliError> {
    out_dir(&dir.to_path_buf())?;
    let n = r.settings.channels;
    let onsets: Vec<u64> = r
        .truth
        .onsets
        .iter()
        .flat_map(|&(s, c)| [s, c as u64])
        .collect();
    write(dir, "true_spikes.npy", 2, &onsets)?;
    write(
        dir,
        "glm_spikes.npy",
        n,
        r.truth.glm_spikes.as_slice().unwrap_or(&[]),
    )?;
    let events: Vec<u64> = r
        .events
        .iter()
        .flat_map(|e| [e.sample, e.channel as u64])
        .collect();
    write(dir, "events.npy", 2, &events)?;
    write(dir, "bins.npy", n, r.bins.as_slice().unwrap_or(&[]))?;
    let labels: Vec<u64> = r.truth.labels.iter().map(|&l| l as u64).collect();
    write(dir, "trial_labels.npy", 0, &labels)?;
    let predicted: Vec<u64> = r.predicted.iter().map(|&l| l as u64).collect();
    write(dir, "predicted_labels.npy", 0, &predicted)?;
    write(dir, "noise_uv.npy", 0, &r.noise)?;
    Ok(())
}

fn sim_settings(a: &SimulateArgs) -> SimSettings {
    SimSettings {
        channels: a.channels,
        fs: a.fs,
        trials: a.trials,
        trial_seconds: a.trial_seconds,
        classes: a.classes,
        features: a.features,
        train_fraction: a.train_fraction,
        seed: a.seed,
        cluster_size: a.cluster_size,
        noise_uv: a.noise_uv,
        shared_noise_uv: a.shared_noise_uv,
        lfp_uv: a.lfp_uv,
        chunk_seconds: a.chain.chunk_ms / 1000.0,
        fit_seconds: a.chain.fit_seconds,
        ..Default::default()
    }
}

/// Checks the flags (the simulation's settings and the chain's) without running anything.
pub fn check(a: &SimulateArgs) -> Result<(), CliError> {
    sim_settings(a).validate().map_err(|e| e.to_string())?;
    a.chain.settings(a.channels, a.fs).map(drop)
}

/// Runs the simulation and prints its scores.
pub fn run(a: SimulateArgs) -> Result<(), CliError> {
    check(&a)?;
    let settings = sim_settings(&a);
    let engine = a.chain.backend.engine()?;
    let chain = a.chain.settings(a.channels, a.fs)?;
    println!("engine: {}", engine.describe());
    println!(
        "simulating {} channels at {} Hz: {} trials of {} s ({} classes, {} features), seed {}",
        a.channels, a.fs, a.trials, a.trial_seconds, a.classes, a.features, a.seed
    );
    let r = simulate::run(&engine, &settings, chain).map_err(|e| e.to_string())?;
    println!("{r}");
    if let Some(dir) = &a.out {
        write_all(dir, &r)?;
        println!("arrays written to {}", dir.display());
    }
    Ok(())
}
