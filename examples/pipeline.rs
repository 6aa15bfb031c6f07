//! The main job, for now: a synthetic 384-channel 30 kHz recording streamed through
//! threshold crossing and binned activation, printing throughput and real-time factor.
//!
//! On the GPU engine the stages chain on the device: a chunk goes up once, threshold
//! crossing writes its events into device slots, binning reads them there, and only the bins
//! come back. On the CPU engine the same stages run in plain Rust.
//!
//! `cargo run --release --example pipeline -- --help` lists the flags.

use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use ndarray::Array2;
use neurokernels::{
    Aggregation, BinnedActivation, BinningSettings, DeviceArray, Engine, GpuOptions, Kernel,
    ThresholdCrossing, ThresholdSettings,
};
use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Which {
    /// A hardware GPU if there is one, else the CPU (a software GPU when WGPU_BACKEND is set).
    Auto,
    /// The CPU engine.
    Cpu,
    /// A GPU adapter, software ones accepted.
    Gpu,
}

#[derive(Debug, Parser)]
#[command(about = "Stream a synthetic recording through threshold crossing and binning")]
struct Args {
    /// Engine.
    #[arg(long, value_enum, default_value = "auto")]
    engine: Which,
    /// Seconds of recording.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Chunk length in milliseconds.
    #[arg(long, default_value_t = 20.0)]
    chunk_ms: f64,
    /// Channels.
    #[arg(long, default_value_t = 384)]
    channels: usize,
    /// Sample rate in Hz.
    #[arg(long, default_value_t = 30_000.0)]
    fs: f64,
    /// Threshold in units of the noise's standard deviation (negative: troughs).
    #[arg(long, default_value_t = -4.5)]
    threshold: f64,
    /// Bin duration in seconds.
    #[arg(long, default_value_t = 0.02)]
    bin: f64,
    /// Firing rate of the synthetic units, spikes per second per channel.
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
}

/// One chunk of unit-variance noise with negative-going 1 ms spikes at Poisson times.
fn synth(
    rng: &mut Pcg64,
    n: usize,
    nc: usize,
    p_spike: f64,
    tail: &mut Array2<f32>,
) -> Array2<f32> {
    let w = tail.nrows();
    let mut x = Array2::from_shape_fn((n, nc), |_| {
        // Sum of four uniforms: close enough to Gaussian for a detector benchmark.
        let u: f32 = (0..4).map(|_| rng.random::<f32>()).sum();
        (u - 2.0) * 1.732
    });
    // Spikes that began in the previous chunk.
    for s in 0..w.min(n) {
        for c in 0..nc {
            x[[s, c]] += tail[[s, c]];
        }
    }
    tail.fill(0.0);
    for s in 0..n {
        for c in 0..nc {
            if rng.random::<f64>() < p_spike {
                for k in 0..w {
                    let amp = -12.0 * (-(k as f32) / 6.0).exp() * (k as f32 / 3.0).min(1.0);
                    if s + k < n {
                        x[[s + k, c]] += amp;
                    } else {
                        tail[[s + k - n, c]] += amp;
                    }
                }
            }
        }
    }
    x
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let engine = match args.engine {
        Which::Auto => Engine::auto()?,
        Which::Cpu => Engine::cpu(),
        Which::Gpu => Engine::gpu(&GpuOptions::software_ok())?,
    };
    let nc = args.channels;
    let chunk = ((args.chunk_ms / 1000.0) * args.fs).round().max(1.0) as usize;
    let total = (args.seconds * args.fs).round() as usize;
    println!("engine: {}", engine.describe());
    println!(
        "stream: {nc} channels at {} Hz, {} s in chunks of {chunk} samples ({} ms)",
        args.fs, args.seconds, args.chunk_ms
    );

    let mut detector = ThresholdCrossing::new(
        &engine,
        ThresholdSettings {
            threshold: args.threshold,
            ..Default::default()
        },
        args.fs,
    )?;
    let mut binner = BinnedActivation::new(
        &engine,
        BinningSettings {
            kernel: Kernel::Count,
            aggregation: Aggregation::Sum,
            bin_duration: args.bin,
            rate_normalize: true,
            ..Default::default()
        },
        args.fs,
    )?;

    let mut rng = Pcg64::seed_from_u64(7);
    let mut tail = Array2::<f32>::zeros((30, nc));
    let p_spike = args.rate / args.fs;
    let (mut n_events, mut n_bins, mut rate_sum) = (0usize, 0usize, 0.0f64);
    let mut per_chunk = Vec::new();
    let mut done = 0;
    while done < total {
        let n = chunk.min(total - done);
        let x = synth(&mut rng, n, nc, p_spike, &mut tail);
        let t0 = Instant::now();
        let bins = match &engine {
            Engine::Gpu(ctx) => {
                let up = DeviceArray::upload(ctx, x.view().into_dyn())?;
                let events = detector.process_device(&up)?;
                n_events += detector.events_to_host(&events)?.len();
                binner
                    .process_device_events(&events)?
                    .values
                    .to_host::<f32>()?
            }
            Engine::Cpu => {
                let events = detector.process(x.view())?;
                n_events += events.len();
                binner.process_events(&events, n, nc)?.values.into_dyn()
            }
        };
        per_chunk.push(t0.elapsed());
        n_bins += bins.shape()[0];
        rate_sum += bins.iter().map(|&v| v as f64).sum::<f64>();
        done += n;
    }
    let busy: Duration = per_chunk.iter().sum();
    per_chunk.sort();
    let pct = |q: f64| per_chunk[((per_chunk.len() - 1) as f64 * q) as usize];
    let secs = total as f64 / args.fs;
    println!(
        "events: {n_events}, bins: {n_bins}, mean rate {:.2} Hz per channel",
        rate_sum / (n_bins.max(1) * nc) as f64
    );
    println!(
        "processing: {:.3} s for {secs:.1} s of data: {:.1}× real time, {:.1} M samples·channels/s",
        busy.as_secs_f64(),
        secs / busy.as_secs_f64(),
        (total * nc) as f64 / busy.as_secs_f64() / 1e6
    );
    println!(
        "per chunk: p50 {:.0} µs, p99 {:.0} µs (compute time; the algorithmic delay is up to one bin, {} ms)",
        pct(0.5).as_secs_f64() * 1e6,
        pct(0.99).as_secs_f64() * 1e6,
        args.bin * 1000.0
    );
    Ok(())
}
