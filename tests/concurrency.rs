//! Threads: which public types may cross or be shared between threads (checked at compile
//! time); two streams running at the same time on one shared GPU context, and two streams each
//! on its own engine in its own thread, give exactly what they give one after the other.

mod support;

use std::sync::{Arc, Barrier};
use std::thread;

use ndarray::{s, Array2, ArrayView2};
use neurokernels::chain::{Chain, ChainOutput, ChainSettings, ReferenceMode};
use neurokernels::glm::RecurrentGlm;
use neurokernels::simulate::Synthesizer;
use neurokernels::{
    AngleEncoder, BandpassFilter, BinnedActivation, BinningSettings, CommonAverage, DeviceArray,
    DeviceBinned, DeviceEvents, Engine, Event, GpuContext, LatencyEncoder, Lrr, MaxRateClassifier,
    NpyWriter, RateEncoder, Recording, ShiftAugment, ThresholdCrossing, ThresholdSettings,
};
use rand::Rng;
use support::{ctx, rng};

fn assert_send_sync<T: Send + Sync>() {}

/// Every operator, the engine, the device context and arrays, the chain and the recording
/// reader are `Send + Sync`: an operator can move to a worker thread, and `&` references
/// (read-only accessors) can be shared. Operators take `&mut self` to process, so one
/// operator serves one thread at a time; the `GpuContext` (behind the `Arc` in
/// [`Engine::Gpu`]) is the thing shared between streams.
#[test]
fn public_types_are_send_and_sync() {
    assert_send_sync::<Engine>();
    assert_send_sync::<GpuContext>();
    assert_send_sync::<Arc<GpuContext>>();
    assert_send_sync::<DeviceArray>();
    assert_send_sync::<DeviceEvents>();
    assert_send_sync::<DeviceBinned>();
    assert_send_sync::<Chain>();
    assert_send_sync::<ChainOutput>();
    assert_send_sync::<Recording>();
    assert_send_sync::<NpyWriter<f32>>();
    assert_send_sync::<BandpassFilter>();
    assert_send_sync::<CommonAverage>();
    assert_send_sync::<Lrr>();
    assert_send_sync::<ThresholdCrossing>();
    assert_send_sync::<BinnedActivation>();
    assert_send_sync::<RecurrentGlm>();
    assert_send_sync::<RateEncoder>();
    assert_send_sync::<LatencyEncoder>();
    assert_send_sync::<AngleEncoder>();
    assert_send_sync::<ShiftAugment>();
    assert_send_sync::<MaxRateClassifier>();
    assert_send_sync::<Synthesizer>();
    assert_send_sync::<neurokernels::Error>();
}

const FS: f64 = 30_000.0;

/// `(n, c)` µV: white noise (σ ≈ 5) with negative 1 ms spikes of 40–80 µV.
fn recording(seed: u64, n: usize, c: usize) -> Array2<f32> {
    let mut r = rng(seed);
    let mut x = Array2::<f32>::from_shape_fn((n, c), |_| {
        let u: f32 = (0..4).map(|_| r.random::<f32>()).sum();
        5.0 * (u - 2.0) * 1.732
    });
    for ch in 0..c {
        let amp = 40.0 + 40.0 * r.random::<f32>();
        let mut t = r.random_range(0..500usize);
        while t + 30 < n {
            for k in 0..30 {
                let tk = k as f32 / 30.0;
                x[[t + k, ch]] -= amp * (-((tk - 0.25) / 0.08).powi(2)).exp();
            }
            t += r.random_range(300..1500usize);
        }
    }
    x
}

/// What a stream returns: its chain's events and bins, and a detector + binner pair's.
type Streamed = (Vec<Event>, Vec<f32>, Vec<Event>, Vec<f32>);

/// One stream on `engine`: a calibrated [`Chain`] and a [`ThresholdCrossing`] +
/// [`BinnedActivation`] pair fed device chunks, over `x` in chunks of `len`.
/// `start` (when given) makes the streams begin together.
fn stream(
    engine: &Engine,
    x: ArrayView2<'_, f32>,
    len: usize,
    start: Option<&Barrier>,
) -> Streamed {
    let Engine::Gpu(gpu) = engine else {
        unreachable!("GPU engine")
    };
    let settings = ChainSettings {
        reference: ReferenceMode::Car,
        ..Default::default()
    };
    let mut chain =
        Chain::calibrate(engine, settings, FS, x.slice(s![..3000, ..]), 0).expect("calibrate");
    let detect_settings = ThresholdSettings {
        threshold: -30.0,
        refrac_dur: 0.001,
        ..Default::default()
    };
    let mut detect = ThresholdCrossing::new(engine, detect_settings, FS).expect("detector");
    let mut bin = BinnedActivation::new(engine, BinningSettings::default(), FS).expect("binner");
    if let Some(b) = start {
        b.wait();
    }
    let mut out: Streamed = Default::default();
    for at in (0..x.nrows()).step_by(len) {
        let chunk = x.slice(s![at..(at + len).min(x.nrows()), ..]);
        let o = chain.process(chunk).expect("chain chunk");
        out.0.extend(o.events);
        out.1.extend(o.bins.values.iter());
        let d = DeviceArray::upload(gpu, chunk.into_dyn()).expect("upload");
        let ev = detect.process_device(&d).expect("detect");
        let b = bin.process_device_events(&ev).expect("bin");
        let (ev, values) = detect
            .events_and_array_to_host(&ev, &b.values)
            .expect("read back");
        out.2.extend(ev);
        out.3.extend(values.iter().take(b.n_bins * chunk.ncols()));
    }
    out
}

/// Two threads, each with its own chain and detector + binner pair on ONE shared GPU
/// context, at the same time: each gets bit for bit what it gets alone, one after the other.
#[test]
fn two_streams_on_one_device_equal_running_them_in_turn() {
    let engine = Engine::Gpu(ctx());
    let (n, c) = (24_000, 8);
    let xa = recording(1, n, c);
    let xb = recording(2, n, c + 4);
    let alone_a = stream(&engine, xa.view(), 1000, None);
    let alone_b = stream(&engine, xb.view(), 700, None);
    assert!(!alone_a.0.is_empty() && !alone_a.2.is_empty(), "no events");
    assert!(!alone_b.0.is_empty() && !alone_b.2.is_empty(), "no events");

    let start = Barrier::new(2);
    let (together_a, together_b) = thread::scope(|s| {
        let a = s.spawn(|| stream(&engine, xa.view(), 1000, Some(&start)));
        let b = s.spawn(|| stream(&engine, xb.view(), 700, Some(&start)));
        (a.join().expect("thread a"), b.join().expect("thread b"))
    });
    assert_eq!(together_a, alone_a);
    assert_eq!(together_b, alone_b);
}

/// Two threads, each with its own GPU engine (its own context and device), at the same time:
/// each gets bit for bit what the stream gets alone on the shared context.
#[test]
fn one_engine_per_thread_equals_running_in_turn() {
    let shared = Engine::Gpu(ctx());
    let (n, c) = (12_000, 8);
    let xa = recording(3, n, c);
    let xb = recording(4, n, c + 3);
    let alone_a = stream(&shared, xa.view(), 900, None);
    let alone_b = stream(&shared, xb.view(), 650, None);
    assert!(!alone_a.0.is_empty() && !alone_b.0.is_empty(), "no events");
    let start = Barrier::new(2);
    let (own_a, own_b) = thread::scope(|s| {
        let a = s.spawn(|| stream(&support::gpu_per_thread(), xa.view(), 900, Some(&start)));
        let b = s.spawn(|| stream(&support::gpu_per_thread(), xb.view(), 650, Some(&start)));
        (a.join().expect("thread a"), b.join().expect("thread b"))
    });
    assert_eq!(own_a, alone_a);
    assert_eq!(own_b, alone_b);
}
