//! `neurokernels process RECORDING`.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Instant;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use ndarray::Array2;
use neurokernels::chain::{percentiles, Chain, ThresholdRule};
use neurokernels::recording::{sync_edges, Dtype, NpyWriter, OpenOptions, RawFormat, Recording};
use serde_json::json;

use super::{out_dir, ChainArgs, CliError};

/// Flags of `process`.
#[derive(Debug, Clone, Args)]
pub struct ProcessArgs {
    /// The recording: a SpikeGLX `.bin` (next to its `.meta`), an Open Ephys `continuous.dat`
    /// or `structure.oebin`, a `.npy` (time × channels), or a plain interleaved binary
    /// (with --dtype, --channels, --fs).
    recording: PathBuf,
    /// Output directory (default: `<recording>.neurokernels` next to the recording).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Plain binary: element type (int16 or float32).
    #[arg(long)]
    dtype: Option<String>,
    /// Plain binary: number of interleaved channels.
    #[arg(long)]
    channels: Option<usize>,
    /// Plain binary and .npy: sample rate in Hz.
    #[arg(long)]
    fs: Option<f64>,
    /// Plain binary and .npy: µV per bit (1 for data already in µV).
    #[arg(long, default_value_t = 1.0)]
    uv_per_bit: f64,
    /// Open Ephys: part of the stream's folder name (e.g. ProbeA-AP).
    #[arg(long)]
    stream: Option<String>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    #[command(flatten)]
    chain: ChainArgs,
}

/// Output files written while streaming, renamed into place at the end.
struct Outputs {
    events: NpyWriter<u64>,
    values: NpyWriter<f32>,
    bins: NpyWriter<f32>,
    sync: NpyWriter<u64>,
}

fn open_options(a: &ProcessArgs) -> Result<OpenOptions, CliError> {
    // Each flag is checked on its own first, so a bad value is named even when others are
    // missing.
    let dtype = match &a.dtype {
        Some(d) => Some(Dtype::from_str(d).map_err(|e| format!("--dtype: {e}"))?),
        None => None,
    };
    if a.channels == Some(0) {
        return Err("--channels: must be at least 1, got 0".into());
    }
    if let Some(fs) = a.fs.filter(|fs| !(fs.is_finite() && *fs > 0.0)) {
        return Err(format!("--fs: must be finite and > 0, got {fs}"));
    }
    let raw = match (dtype, a.channels, a.fs) {
        (Some(dtype), Some(channels), Some(fs)) => Some(RawFormat {
            dtype,
            channels,
            fs,
            uv_per_bit: a.uv_per_bit,
        }),
        (None, None, _) => None,
        _ => return Err("a plain binary needs all of --dtype, --channels and --fs".into()),
    };
    Ok(OpenOptions {
        raw,
        stream: a.stream.clone(),
        fs: a.fs,
    })
}

fn create<T: neurokernels::recording::NpyElement>(
    dir: &Path,
    name: &str,
    width: usize,
) -> Result<NpyWriter<T>, CliError> {
    NpyWriter::create(dir.join(name), width).map_err(|e| format!("--out: {e}"))
}

/// Checks the flags as [`run`] does, for a recording of `n_channels` channels at `fs`.
pub fn check(a: &ProcessArgs, n_channels: usize, fs: f64) -> Result<(), CliError> {
    open_options(a)?;
    a.chain.settings(n_channels, fs).map(drop)
}

/// Streams the recording through the chain.
pub fn run(a: ProcessArgs) -> Result<(), CliError> {
    let options = open_options(&a)?;
    let rec = Recording::open(&a.recording, &options).map_err(|e| e.to_string())?;
    let (fs, nc, total) = (rec.fs(), rec.n_channels(), rec.n_samples());
    let settings = a.chain.settings(nc, fs)?;
    let engine = a.chain.backend.engine()?;
    let dir = a.out.clone().unwrap_or_else(|| {
        let mut p = a.recording.clone().into_os_string();
        p.push(".neurokernels");
        PathBuf::from(p)
    });
    out_dir(&dir)?;
    println!("engine: {}", engine.describe());
    println!(
        "{}: {} ({} channels at {} Hz, {:.2} s, first sample {})",
        rec.format_name(),
        a.recording.display(),
        nc,
        fs,
        total as f64 / fs,
        rec.first_sample()
    );

    // Calibration pass: the first fit_seconds (or the whole recording if shorter).
    let t = Instant::now();
    let fit = ((a.chain.fit_seconds * fs).round() as usize).clamp(1, total.max(1));
    if total == 0 {
        return Err(format!(
            "{}: the recording holds no samples",
            a.recording.display()
        ));
    }
    let mut window = Array2::<f32>::zeros((fit, nc));
    rec.read_chunk(0, &mut window).map_err(|e| e.to_string())?;
    let mut chain = Chain::calibrate(
        &engine,
        settings.clone(),
        fs,
        window.view(),
        rec.first_sample(),
    )
    .map_err(|e| e.to_string())?;
    drop(window);
    let calibration_s = t.elapsed().as_secs_f64();
    let cal = chain.calibration().clone();
    if !cal.dead_channels.is_empty() {
        println!(
            "{} channel(s) with zero noise detect nothing: {:?}",
            cal.dead_channels.len(),
            cal.dead_channels
        );
    }

    let mut out = Outputs {
        events: create(&dir, "events.npy", 2)?,
        values: create(&dir, "event_values.npy", 0)?,
        bins: create(&dir, "bins.npy", nc)?,
        sync: create(&dir, "sync_edges.npy", 3)?,
    };
    let chunk = ((a.chain.chunk_ms / 1000.0 * fs).round() as usize).max(1);
    let bar = if a.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(total as u64)
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} samples ({percent}%) {msg} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut buf = Array2::<f32>::zeros((chunk, nc));
    let mut chunk_times = Vec::new();
    let (mut n_events, mut n_bins, mut read_s) = (0usize, 0usize, 0.0f64);
    let mut last_sync: Option<u16> = None;
    let started = Instant::now();
    let mut at = 0usize;
    while at < total {
        let n = chunk.min(total - at);
        let t = Instant::now();
        if n != buf.nrows() {
            buf = Array2::zeros((n, nc));
        }
        rec.read_chunk(at, &mut buf).map_err(|e| e.to_string())?;
        if rec.has_sync() {
            let words = rec.read_sync(at, n).map_err(|e| e.to_string())?;
            let edges = sync_edges(&words, rec.first_sample() + at as u64, last_sync);
            last_sync = words.last().copied().or(last_sync);
            let flat: Vec<u64> = edges
                .iter()
                .flat_map(|e| [e.sample, e.bit as u64, e.rising as u64])
                .collect();
            out.sync.append_rows(&flat).map_err(|e| e.to_string())?;
        }
        read_s += t.elapsed().as_secs_f64();
        let t = Instant::now();
        let o = chain
            .process(buf.view())
            .map_err(|e| format!("{} at sample {}: {e}", a.recording.display(), at))?;
        chunk_times.push(t.elapsed().as_secs_f64());
        let ev: Vec<u64> = o
            .events
            .iter()
            .flat_map(|e| [e.sample, e.channel as u64])
            .collect();
        let vals: Vec<f32> = o.events.iter().map(|e| e.value).collect();
        out.events.append_rows(&ev).map_err(|e| e.to_string())?;
        out.values.append_rows(&vals).map_err(|e| e.to_string())?;
        let bins = o.bins.values.as_standard_layout();
        out.bins
            .append_rows(bins.as_slice().unwrap_or(&[]))
            .map_err(|e| e.to_string())?;
        n_events += o.events.len();
        n_bins += o.bins.values.nrows();
        at += n;
        bar.set_position(at as u64);
        let el = started.elapsed().as_secs_f64();
        bar.set_message(format!(
            "{:.1} M samples·ch/s, {:.1}× real time",
            (at * nc) as f64 / el / 1e6,
            at as f64 / fs / el
        ));
    }
    bar.finish_and_clear();
    let wall = started.elapsed().as_secs_f64();
    for w in [out.events.finish(), out.bins.finish(), out.sync.finish()] {
        w.map_err(|e| e.to_string())?;
    }
    out.values.finish().map_err(|e| e.to_string())?;

    let delay = chain.algorithmic_delay();
    let provenance = json!({
        "neurokernels_version": env!("CARGO_PKG_VERSION"),
        "engine": engine.describe(),
        "source": rec.provenance(),
        "settings": {
            "chunk_ms": a.chain.chunk_ms,
            "filter": settings.filter.map(|f| json!({"low_hz": f.low_hz, "high_hz": f.high_hz, "order": f.order})),
            "reference": format!("{:?}", settings.reference),
            "clusters": settings.lrr.channel_clusters,
            "ridge": settings.lrr.ridge_lambda,
            "threshold": match settings.threshold {
                ThresholdRule::NoiseMultiple(k) => json!({"noise_multiple": k}),
                ThresholdRule::Absolute(t) => json!({"absolute_uv": t}),
            },
            "refractory_s": settings.detection.refrac_dur,
            "fit_seconds": a.chain.fit_seconds,
            "binning": {
                "kernel": format!("{:?}", settings.binning.kernel),
                "aggregation": format!("{:?}", settings.binning.aggregation),
                "bin_duration_s": settings.binning.bin_duration,
                "scale_by_value": settings.binning.scale_by_value,
                "normalize": settings.binning.normalize,
                "rate_normalize": settings.binning.rate_normalize,
            },
        },
        "calibration": {
            "samples": cal.n_samples,
            "noise_uv": cal.noise,
            "thresholds_uv": cal.thresholds,
            "dead_channels": cal.dead_channels,
        },
        "outputs": {
            "events.npy": "(N, 2) uint64: absolute sample, channel",
            "event_values.npy": "(N,) float32: event value",
            "bins.npy": "(bins, channels) float32; bin k starts at first_sample + floor(k·bin_duration·fs)",
            "sync_edges.npy": "(E, 3) uint64: absolute sample, bit, rising (1) or falling (0)",
        },
        "events": n_events,
        "bins": n_bins,
        "algorithmic_delay_s": {"filter": delay.filter, "peak_hold": delay.peak_hold, "bin": delay.bin},
    });
    let text = serde_json::to_string_pretty(&provenance).map_err(|e| e.to_string())?;
    let prov = dir.join("provenance.json");
    let tmp = dir.join("provenance.json.partial");
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, &prov))
        .map_err(|e| format!("--out {}: {e}", prov.display()))?;

    let secs = total as f64 / fs;
    println!(
        "events: {n_events}, bins: {n_bins}; outputs in {}",
        dir.display()
    );
    println!(
        "wall {wall:.3} s for {secs:.2} s of data: {:.1}× real time (calibration {calibration_s:.3} s, reading {read_s:.3} s)",
        secs / wall.max(1e-12)
    );
    print!("{}", chain.stage_times().table(secs));
    let (p50, p99) = percentiles(chunk_times);
    println!(
        "per chunk ({} ms): p50 {:.0} µs, p99 {:.0} µs compute; algorithmic delay: filter {:.2} ms, peak hold {:.2} ms, bin up to {:.0} ms",
        a.chain.chunk_ms,
        p50 * 1e6,
        p99 * 1e6,
        delay.filter * 1000.0,
        delay.peak_hold * 1000.0,
        delay.bin * 1000.0
    );
    Ok(())
}
