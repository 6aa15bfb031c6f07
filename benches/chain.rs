//! The chain (SPEC §7) at TARGETS.md's size: an int16 recording of 384 channels at 30 kHz
//! read from a memory-mapped file → band-pass (300–6000 Hz, order 3) → LRR (8 clusters of 48)
//! → threshold (−5 × noise) → 20 ms Count+Sum bins, GPU and CPU engines in the same run.
//!
//! Data: 2 s of noise (independent, plus a part shared by each cluster of 48 channels) with
//! 1 ms spikes at about 20 Hz per channel, quantised to int16 at 0.195 µV per bit and written
//! to a temporary raw file; calibration uses its first second.
//!
//! Criterion reports the time to stream the 2 s in 20 ms chunks (reading included) as
//! throughput; a plain loop then prints, per engine and chunk length (1 ms, 20 ms), the
//! per-chunk compute time p50/p99, the end-to-end real-time factor, and each stage's share
//! (`profile_stages`: the GPU engine waits for the device after each stage for that table).

mod support;

use support::engines;

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ndarray::Array2;
use neurokernels::chain::{percentiles, Chain, ChainOutput, ChainSettings};
use neurokernels::recording::{Dtype, OpenOptions, RawFormat, Recording};
use neurokernels::{Engine, LrrSettings};
use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64;

#[path = "../tests/support/counting_alloc.rs"]
mod counting_alloc;

const FS: f64 = 30_000.0;
const NC: usize = 384;
const UV: f64 = 0.195;
const SECONDS: f64 = 2.0;

/// Writes the int16 recording and opens it.
fn recording(dir: &Path) -> Recording {
    let n = (SECONDS * FS) as usize;
    let mut r = Pcg64::seed_from_u64(7);
    let mut gauss = move || {
        let u: f32 = (0..4).map(|_| r.random::<f32>()).sum();
        (u - 2.0) * 1.732
    };
    let mut x = Array2::<f32>::zeros((n, NC));
    for mut row in x.rows_mut() {
        let shared: Vec<f32> = (0..NC / 48).map(|_| 15.0 * gauss()).collect();
        for (c, v) in row.iter_mut().enumerate() {
            *v = 6.0 * gauss() + shared[c / 48];
        }
    }
    let mut r = Pcg64::seed_from_u64(8);
    for c in 0..NC {
        let mut t = r.random_range(0..1500usize);
        while t + 30 < n {
            for k in 0..30 {
                let tk = k as f32 / 30.0;
                x[[t + k, c]] -= 90.0 * (-((tk - 0.25) / 0.08).powi(2)).exp();
            }
            t += r.random_range(500..2500usize);
        }
    }
    let bytes: Vec<u8> = x
        .iter()
        .flat_map(|&v| ((v as f64 / UV).round() as i16).to_le_bytes())
        .collect();
    let path = dir.join("chain_bench.raw");
    std::fs::write(&path, bytes).expect("write the recording");
    Recording::open(
        &path,
        &OpenOptions {
            raw: Some(RawFormat {
                dtype: Dtype::I16,
                channels: NC,
                fs: FS,
                uv_per_bit: UV,
            }),
            ..Default::default()
        },
    )
    .expect("open the recording")
}

fn settings(profile: bool) -> ChainSettings {
    ChainSettings {
        lrr: LrrSettings {
            channel_clusters: Some(neurokernels::lrr::consecutive_clusters(NC, 48)),
            ..Default::default()
        },
        profile_stages: profile,
        ..Default::default()
    }
}

fn calibrate(e: &Engine, rec: &Recording, profile: bool) -> Chain {
    let mut w = Array2::<f32>::zeros((FS as usize, NC));
    rec.read_chunk(0, &mut w).expect("read");
    Chain::calibrate(e, settings(profile), FS, w.view(), 0).expect("calibrate")
}

/// Streams the whole recording in chunks of `chunk` rows into `out` (reused); returns
/// per-chunk compute times (into `times`, reused) and the heap allocations made inside the
/// chain's calls.
fn stream(
    chain: &mut Chain,
    rec: &Recording,
    chunk: usize,
    buf: &mut Array2<f32>,
    out: &mut ChainOutput,
    times: &mut Vec<f64>,
) -> u64 {
    times.clear();
    let mut allocs = 0;
    let mut at = 0;
    while at + chunk <= rec.n_samples() {
        rec.read_chunk(at, buf).expect("read");
        let a0 = counting_alloc::allocations();
        let t = Instant::now();
        chain.process_into(buf.view(), out).expect("chunk");
        times.push(t.elapsed().as_secs_f64());
        allocs += counting_alloc::allocations() - a0;
        black_box(&*out);
        at += chunk;
    }
    allocs
}

fn throughput(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let rec = recording(dir.path());
    let mut g = c.benchmark_group(format!("chain_{NC}ch_int16_{SECONDS}s_20ms_chunks"));
    g.throughput(Throughput::Elements((SECONDS * FS) as u64 * NC as u64));
    g.sample_size(10)
        .measurement_time(Duration::from_secs(8))
        .warm_up_time(Duration::from_millis(500));
    for (name, e) in engines() {
        let mut chain = calibrate(&e, &rec, false);
        let mut buf = Array2::<f32>::zeros((600, NC));
        let (mut out, mut times) = (ChainOutput::default(), Vec::new());
        g.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| stream(&mut chain, &rec, 600, &mut buf, &mut out, &mut times))
        });
    }
    g.finish();
}

fn latency(_c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let rec = recording(dir.path());
    println!("\nthe chain, {NC} channels at 30 kHz, int16 input, {SECONDS} s streamed");
    println!(
        "| engine | chunk | p50 | p99 | end-to-end real-time factor (reading included) | heap allocations per chunk (warm) |"
    );
    println!("| --- | --- | ---: | ---: | ---: | ---: |");
    let engines = engines();
    for (name, e) in &engines {
        for chunk in [30usize, 600] {
            let mut chain = calibrate(e, &rec, false);
            let mut buf = Array2::<f32>::zeros((chunk, NC));
            let (mut out, mut times) = (ChainOutput::default(), Vec::new());
            stream(&mut chain, &rec, chunk, &mut buf, &mut out, &mut times); // warm-up pass
            let t = Instant::now();
            let allocs = stream(&mut chain, &rec, chunk, &mut buf, &mut out, &mut times);
            let wall = t.elapsed().as_secs_f64();
            let per_chunk = allocs as f64 / times.len() as f64;
            support::record_count(&format!("chain/{name}/{chunk}/allocs_per_chunk"), per_chunk);
            let (p50, p99) = percentiles(times.clone());
            support::record_secs(&format!("chain/{name}/{chunk}/p50"), p50);
            support::record_secs(&format!("chain/{name}/{chunk}/p99"), p99);
            support::record_secs(&format!("chain/{name}/{chunk}/wall"), wall);
            println!(
                "| {name} | {} ms | {:.0} µs | {:.0} µs | {:.1}× | {per_chunk:.1} |",
                chunk as f64 / 30.0,
                p50 * 1e6,
                p99 * 1e6,
                SECONDS / wall
            );
        }
    }
    println!("\nper stage, 20 ms chunks (GPU: device synchronised after each stage)");
    for (name, e) in &engines {
        let mut chain = calibrate(e, &rec, true);
        let mut buf = Array2::<f32>::zeros((600, NC));
        let (mut out, mut times) = (ChainOutput::default(), Vec::new());
        stream(&mut chain, &rec, 600, &mut buf, &mut out, &mut times);
        println!("{name}:\n{}", chain.stage_times().table(SECONDS));
        let d = chain.algorithmic_delay();
        println!(
            "algorithmic delay: filter {:.2} ms, peak hold {:.2} ms, bin up to {:.0} ms",
            d.filter * 1e3,
            d.peak_hold * 1e3,
            d.bin * 1e3
        );
    }
}

criterion_group!(benches, throughput, latency);
criterion_main!(benches);
