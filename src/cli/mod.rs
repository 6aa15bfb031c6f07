//! Arguments of the `neurokernels` command line and what each command does.

mod process;
mod simulate;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use neurokernels::chain::{ChainSettings, ReferenceMode, ThresholdRule};
use neurokernels::filter::FilterSettings;
use neurokernels::ThresholdSettings;
use neurokernels::{Aggregation, BinningSettings, Engine, GpuOptions, Kernel, LrrSettings};

/// A failure of the command line: one line, naming the file or flag.
pub type CliError = String;

/// The command line.
#[derive(Debug, Parser)]
#[command(
    name = "neurokernels",
    version,
    about = "Neural-data kernels on any GPU, from the command line"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Closed-loop simulation with ground truth: stimulus → rate encoder → recurrent GLM →
    /// waveforms and noise → band-pass → LRR → threshold → bins → max-rate classifier.
    Simulate(simulate::SimulateArgs),
    /// Stream a recording (SpikeGLX, Open Ephys, raw binary or .npy) through band-pass →
    /// reference → threshold → bins, writing events, bins and provenance.
    Process(process::ProcessArgs),
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Simulate(a) => simulate::run(a),
        Command::Process(a) => process::run(a),
    }
}

/// Checks a parsed command line without running it: every flag's value and the chain
/// settings they give. `process` is checked as for a recording of `n_channels` channels at
/// `fs` (the recording itself is not opened), `simulate` with its own channel count and rate.
#[allow(dead_code)] // the binary validates as it runs; the fuzz targets call this alone
pub fn check(cli: &Cli, n_channels: usize, fs: f64) -> Result<(), CliError> {
    match &cli.command {
        Command::Simulate(a) => simulate::check(a),
        Command::Process(a) => process::check(a, n_channels, fs),
    }
}

/// Which engine runs the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    /// A hardware GPU when there is one, else the CPU engine (a software GPU when
    /// `WGPU_BACKEND` or `WGPU_ADAPTER_NAME` asks for one).
    Auto,
    /// The GPU engine (software adapters accepted).
    Gpu,
    /// The CPU engine.
    Cpu,
}

impl Backend {
    /// Opens the engine.
    pub fn engine(self) -> Result<Engine, CliError> {
        match self {
            Backend::Auto => Engine::auto(),
            Backend::Gpu => Engine::gpu(&GpuOptions::software_ok()),
            Backend::Cpu => Ok(Engine::cpu()),
        }
        .map_err(|e| format!("--backend: {e}"))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum KernelArg {
    Count,
    Exponential,
    Alpha,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum AggregationArg {
    Last,
    Mean,
    Sum,
    Max,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ReferenceArg {
    Lrr,
    Car,
    CarMedian,
    None,
}

/// The chain's settings, shared by both commands (the seeds' names).
#[derive(Debug, Clone, Args)]
pub struct ChainArgs {
    /// Engine.
    #[arg(long, value_enum, default_value = "auto")]
    pub backend: Backend,
    /// Chunk length in milliseconds.
    #[arg(long, default_value_t = 20.0)]
    pub chunk_ms: f64,
    /// Band-pass edges in Hz (high-pass only when HIGH ≥ Nyquist).
    #[arg(long, num_args = 2, value_names = ["LOW", "HIGH"], default_values_t = [300.0, 6000.0])]
    band: Vec<f64>,
    /// Butterworth order.
    #[arg(long, default_value_t = 3)]
    order: usize,
    /// Skip the band-pass filter (data filtered in hardware).
    #[arg(long)]
    no_filter: bool,
    /// Reference subtracted after the filter.
    #[arg(long, value_enum, default_value = "lrr")]
    reference: ReferenceArg,
    /// LRR clusters: `N` (consecutive runs of N channels) or explicit lists such as
    /// `0-47;48-95,100`. Default: one cluster of all channels.
    #[arg(long)]
    clusters: Option<String>,
    /// LRR ridge λ ≥ 0.
    #[arg(long, default_value_t = 0.0)]
    ridge: f64,
    /// Threshold as a multiple of each channel's noise median(|x|)/0.6745 (sign = direction).
    #[arg(long, default_value_t = -5.0, allow_hyphen_values = true)]
    threshold_k: f64,
    /// Absolute threshold in µV for every channel (replaces --threshold-k).
    #[arg(long, allow_hyphen_values = true)]
    threshold: Option<f64>,
    /// Refractory period in seconds.
    #[arg(long, default_value_t = 0.001)]
    refractory: f64,
    /// Seconds at the start used to fit LRR and measure noise.
    #[arg(long, default_value_t = 2.0)]
    pub fit_seconds: f64,
    /// Bin duration in seconds.
    #[arg(long, default_value_t = 0.02)]
    bin_duration: f64,
    /// Activation kernel.
    #[arg(long, value_enum, default_value = "count")]
    kernel: KernelArg,
    /// Kernel time constant in seconds (exponential, alpha).
    #[arg(long, default_value_t = 0.05)]
    tau: f64,
    /// Aggregation within a bin.
    #[arg(long, value_enum, default_value = "sum")]
    aggregation: AggregationArg,
    /// Weight each event by its value.
    #[arg(long)]
    scale_by_value: bool,
    /// Normalise exponential/alpha kernels to unit integral (`--normalize false` to turn off).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    normalize: bool,
    /// Divide bins by the bin duration (rates).
    #[arg(long)]
    rate_normalize: bool,
    /// Synchronise the device after each stage so per-stage times are exact (GPU).
    #[arg(long)]
    pub profile_stages: bool,
}

/// Parses `--clusters`.
fn parse_clusters(text: &str, n_channels: usize) -> Result<Vec<Vec<usize>>, CliError> {
    let bad = |why: String| format!("--clusters {text:?}: {why}");
    if let Ok(k) = text.trim().parse::<usize>() {
        if k == 0 {
            return Err(bad("cluster size must be at least 1".into()));
        }
        return Ok(neurokernels::lrr::consecutive_clusters(n_channels, k));
    }
    // First every item, as an inclusive range checked against the channel count; then the
    // members, each checked once against those already seen, so that no range is expanded
    // past the first repeated channel and nothing is sized by the channel count.
    let mut groups: Vec<Vec<(usize, usize)>> = Vec::new();
    for group in text.split(';').filter(|g| !g.trim().is_empty()) {
        let mut ranges = Vec::new();
        for item in group.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let num = |s: &str| {
                s.trim()
                    .parse::<usize>()
                    .map_err(|_| bad(format!("{s:?} is not a channel index")))
            };
            let (a, b) = match item.split_once('-') {
                Some((a, b)) => (num(a)?, num(b)?),
                None => {
                    let c = num(item)?;
                    (c, c)
                }
            };
            if b < a {
                return Err(bad(format!("range {item:?} is reversed")));
            }
            if b >= n_channels {
                return Err(bad(format!(
                    "channel {b} is out of range ({n_channels} channels)"
                )));
            }
            ranges.push((a, b));
        }
        groups.push(ranges);
    }
    if groups.is_empty() {
        return Err(bad("no clusters given".into()));
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::with_capacity(groups.len());
    for ranges in groups {
        let mut members = Vec::new();
        for (a, b) in ranges {
            for c in a..=b {
                if !seen.insert(c) {
                    return Err(bad(format!("channel {c} is listed twice")));
                }
                members.push(c);
            }
        }
        out.push(members);
    }
    Ok(out)
}

impl ChainArgs {
    /// The chain settings for a recording of `n_channels` channels at `fs`.
    pub fn settings(&self, n_channels: usize, fs: f64) -> Result<ChainSettings, CliError> {
        let positive = |flag: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(format!("{flag}: must be finite and > 0, got {v}"))
            }
        };
        positive("--chunk-ms", self.chunk_ms)?;
        positive("--fit-seconds", self.fit_seconds)?;
        positive("--bin-duration", self.bin_duration)?;
        if !(self.refractory.is_finite() && self.refractory >= 0.0) {
            return Err(format!(
                "--refractory: must be finite and ≥ 0, got {}",
                self.refractory
            ));
        }
        if !(self.ridge.is_finite() && self.ridge >= 0.0) {
            return Err(format!(
                "--ridge: must be finite and ≥ 0, got {}",
                self.ridge
            ));
        }
        let kernel = match self.kernel {
            KernelArg::Count => Kernel::Count,
            KernelArg::Exponential => Kernel::Exponential { tau: self.tau },
            KernelArg::Alpha => Kernel::Alpha { tau: self.tau },
        };
        if self.kernel != KernelArg::Count {
            positive("--tau", self.tau)?;
        }
        let threshold = match self.threshold {
            Some(t) => ThresholdRule::Absolute(t),
            None => ThresholdRule::NoiseMultiple(self.threshold_k),
        };
        let (ThresholdRule::Absolute(t) | ThresholdRule::NoiseMultiple(t)) = threshold;
        {
            if !t.is_finite() || t == 0.0 {
                let flag = if self.threshold.is_some() {
                    "--threshold"
                } else {
                    "--threshold-k"
                };
                return Err(format!("{flag}: must be finite and nonzero, got {t}"));
            }
        }
        let filter = if self.no_filter {
            None
        } else {
            let (low, high) = (self.band[0], self.band[1]);
            neurokernels::filter::butter_sos(self.order, low, high, fs)
                .map_err(|e| format!("--band/--order: {e}"))?;
            Some(FilterSettings {
                low_hz: low,
                high_hz: high,
                order: self.order,
            })
        };
        let channel_clusters = match &self.clusters {
            Some(text) => Some(parse_clusters(text, n_channels)?),
            None => None,
        };
        Ok(ChainSettings {
            filter,
            reference: match self.reference {
                ReferenceArg::Lrr => ReferenceMode::Lrr,
                ReferenceArg::Car => ReferenceMode::Car,
                ReferenceArg::CarMedian => ReferenceMode::CarMedian,
                ReferenceArg::None => ReferenceMode::None,
            },
            lrr: LrrSettings {
                channel_clusters,
                ridge_lambda: self.ridge,
                ..Default::default()
            },
            threshold,
            detection: ThresholdSettings {
                refrac_dur: self.refractory,
                ..Default::default()
            },
            binning: BinningSettings {
                kernel,
                bin_duration: self.bin_duration,
                aggregation: match self.aggregation {
                    AggregationArg::Last => Aggregation::Last,
                    AggregationArg::Mean => Aggregation::Mean,
                    AggregationArg::Sum => Aggregation::Sum,
                    AggregationArg::Max => Aggregation::Max,
                },
                scale_by_value: self.scale_by_value,
                normalize: self.normalize,
                rate_normalize: self.rate_normalize,
                ..Default::default()
            },
            profile_stages: self.profile_stages,
        })
    }
}

/// The output directory, created.
pub fn out_dir(dir: &PathBuf) -> Result<(), CliError> {
    std::fs::create_dir_all(dir).map_err(|e| format!("--out {}: {e}", dir.display()))
}
