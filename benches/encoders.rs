//! Spike encoders at the SPEC §6 size: batch 256 × 784 features × 100 steps, GPU and CPU in
//! the same run.
//!
//! Criterion groups report spikes (output elements, `B·F·T`) per second. A plain timing loop
//! at the end prints a table with the median and best time per call, the spike rate, and the
//! bytes written (unpacked `u8` rasters are `B·F·T` bytes, packed ones `B·F·⌈T/8⌉`).
//!
//! Variants: `cpu` writes into a reused output (`encode_into`, no allocation per call),
//! `cpu_alloc` returns a fresh array (`encode`), `gpu_host` uploads, encodes and reads back,
//! `gpu_device` encodes a device-resident input into a device-resident output (`encode_device`,
//! which waits for the GPU). Set `WGPU_BACKEND` to choose the adapter.

mod support;

use support::engines;

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ndarray::{Array2, ArrayD, IxDyn};
use neurokernels::encoders::{LatencyEncoder, LatencySettings, RateEncoder, RateSettings};
use neurokernels::{DeviceArray, Engine};
use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64;

const B: usize = 256;
const F: usize = 784;
const T: usize = 100;

/// MNIST-like intensities in [0, 1]: ~80 % zeros (background) and the rest uniform.
fn input() -> Array2<f32> {
    let mut r = Pcg64::seed_from_u64(1);
    Array2::from_shape_fn((B, F), |_| {
        if r.random::<f32>() < 0.8 {
            0.0
        } else {
            r.random::<f32>()
        }
    })
}

/// One encoder kind under test.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Rate,
    Latency,
}

/// Either encoder behind one interface.
enum Enc {
    Rate(RateEncoder),
    Latency(LatencyEncoder),
}

impl Enc {
    fn new(kind: Kind, engine: &Engine, packed: bool) -> Enc {
        match kind {
            Kind::Rate => Enc::Rate(
                RateEncoder::new(
                    engine,
                    RateSettings {
                        packed,
                        ..RateSettings::new(T)
                    },
                )
                .expect("rate encoder"),
            ),
            Kind::Latency => Enc::Latency(
                LatencyEncoder::new(
                    engine,
                    LatencySettings {
                        packed,
                        ..LatencySettings::new(T)
                    },
                )
                .expect("latency encoder"),
            ),
        }
    }

    fn out_shape(&self, x: &Array2<f32>) -> Vec<usize> {
        match self {
            Enc::Rate(e) => e.output_shape(x.shape()),
            Enc::Latency(e) => e.output_shape(x.shape()),
        }
        .expect("shape")
    }

    fn encode_into(&mut self, x: &Array2<f32>, out: &mut ArrayD<u8>) {
        match self {
            Enc::Rate(e) => e.encode_into(x.view(), out.view_mut()),
            Enc::Latency(e) => e.encode_into(x.view(), out.view_mut()),
        }
        .expect("encode_into")
    }

    fn alloc(&mut self, x: &Array2<f32>) -> ArrayD<u8> {
        match self {
            Enc::Rate(e) => e.encode(x.view()),
            Enc::Latency(e) => e.encode(x.view()),
        }
        .expect("encode")
    }

    fn device(&mut self, x: &DeviceArray) -> DeviceArray {
        match self {
            Enc::Rate(e) => e.encode_device(x),
            Enc::Latency(e) => e.encode_device(x),
        }
        .expect("encode_device")
    }
}

/// The variants to run: (label, engine index, packed, how).
#[derive(Clone, Copy)]
enum How {
    Into,
    Alloc,
    Device,
}

fn variants() -> Vec<(&'static str, usize, bool, How)> {
    vec![
        ("cpu", 0, false, How::Into),
        ("cpu_packed", 0, true, How::Into),
        ("cpu_alloc", 0, false, How::Alloc),
        ("gpu_host", 1, false, How::Alloc),
        ("gpu_host_packed", 1, true, How::Alloc),
        ("gpu_device", 1, false, How::Device),
        ("gpu_device_packed", 1, true, How::Device),
    ]
}

/// A closure that runs one call of the variant.
fn runner<'a>(
    kind: Kind,
    engines: &'a [(&'static str, Engine)],
    x: &'a Array2<f32>,
    (_, e, packed, how): (&'static str, usize, bool, How),
) -> Box<dyn FnMut() + 'a> {
    let engine = &engines[e].1;
    let mut enc = Enc::new(kind, engine, packed);
    match how {
        How::Into => {
            let mut out = ArrayD::<u8>::zeros(IxDyn(&enc.out_shape(x)));
            Box::new(move || {
                enc.encode_into(x, &mut out);
                black_box(&out);
            })
        }
        How::Alloc => Box::new(move || {
            black_box(enc.alloc(x));
        }),
        How::Device => {
            let Engine::Gpu(ctx) = engine else {
                unreachable!("device variants run on the GPU engine")
            };
            let up = DeviceArray::upload(ctx, x.view().into_dyn()).expect("upload");
            Box::new(move || {
                black_box(enc.device(&up));
            })
        }
    }
}

fn spikes() -> u64 {
    (B * F * T) as u64
}

fn bench_kind(c: &mut Criterion, kind: Kind, name: &str) {
    let engines = engines();
    let x = input();
    let mut g = c.benchmark_group(name);
    g.throughput(Throughput::Elements(spikes()));
    g.sample_size(10)
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(300));
    for v in variants() {
        let mut run = runner(kind, &engines, &x, v);
        g.bench_function(BenchmarkId::from_parameter(v.0), |b| b.iter(&mut run));
    }
    g.finish();
}

fn rate(c: &mut Criterion) {
    bench_kind(c, Kind::Rate, "rate_256x784x100");
}

fn latency(c: &mut Criterion) {
    bench_kind(c, Kind::Latency, "latency_256x784x100");
}

/// Median and best of `n` timed calls (after one warm-up call).
fn time(run: &mut dyn FnMut(), n: usize) -> (Duration, Duration) {
    run();
    let mut d: Vec<Duration> = (0..n)
        .map(|_| {
            let t0 = Instant::now();
            run();
            t0.elapsed()
        })
        .collect();
    d.sort();
    (d[n / 2], d[0])
}

fn table(_c: &mut Criterion) {
    let engines = engines();
    let x = input();
    println!();
    println!(
        "encoders, batch {B} × {F} features × {T} steps ({} spikes per call)",
        spikes()
    );
    println!(
        "{:<8} {:<18} {:>10} {:>10} {:>12} {:>12} {:>10}",
        "encoder", "variant", "median ms", "best ms", "Gspikes/s", "bytes out", "GB/s out"
    );
    for (kind, kname) in [(Kind::Rate, "rate"), (Kind::Latency, "latency")] {
        for v in variants() {
            let mut run = runner(kind, &engines, &x, v);
            let (med, best) = time(&mut run, 15);
            let packed = v.2;
            let bytes = if packed {
                B * F * T.div_ceil(8)
            } else {
                B * F * T
            };
            let s = med.as_secs_f64();
            println!(
                "{:<8} {:<18} {:>10.2} {:>10.2} {:>12.3} {:>12} {:>10.2}",
                kname,
                v.0,
                s * 1e3,
                best.as_secs_f64() * 1e3,
                spikes() as f64 / s / 1e9,
                bytes,
                bytes as f64 / s / 1e9
            );
        }
    }
}

criterion_group!(benches, rate, latency, table);
criterion_main!(benches);
