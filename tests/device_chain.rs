//! Threshold crossing → binning chained on the device: the events never leave the GPU, and
//! the bins equal those of the same stages run one by one on the host (and on the CPU
//! engine), for any chunking. Also: device events the binning cannot take (an event held
//! open into a later chunk) are rejected with the stream left as it was.

mod common;
mod support;

use ndarray::{s, Array2};
use neurokernels::{
    Aggregation, BinnedActivation, BinningSettings, DeviceArray, Engine, Error, Kernel,
    ThresholdCrossing, ThresholdSettings,
};
use rand::Rng;

const FS: f64 = 30_000.0;

/// Noise with negative-going spikes on every channel.
fn signal(n: usize, nc: usize, seed: u64) -> Array2<f32> {
    let mut r = common::rng(seed);
    let mut x = Array2::from_shape_fn((n, nc), |_| r.random_range(-1.0f32..1.0));
    for c in 0..nc {
        let mut s = r.random_range(0..40);
        while s + 10 < n {
            for k in 0..6 {
                x[[s + k, c]] -= 8.0 * (1.0 - k as f32 / 6.0);
            }
            s += r.random_range(15..200);
        }
    }
    x
}

fn detector(e: &Engine, settings: ThresholdSettings) -> ThresholdCrossing {
    ThresholdCrossing::new(e, settings, FS).expect("detector")
}

fn binner(e: &Engine, kernel: Kernel, aggregation: Aggregation) -> BinnedActivation {
    let set = BinningSettings {
        kernel,
        aggregation,
        bin_duration: 0.00203, // 60.9 samples: fractional bins
        ..Default::default()
    };
    BinnedActivation::new(e, set, FS).expect("binner")
}

/// Runs the chain over `bounds` on the device; returns the concatenated bins.
fn device_chain(
    x: &Array2<f32>,
    bounds: &[usize],
    kernel: Kernel,
    agg: Aggregation,
) -> Array2<f32> {
    let e = common::gpu();
    let Engine::Gpu(ctx) = &e else { unreachable!() };
    let mut det = detector(
        &e,
        ThresholdSettings {
            threshold: -4.0,
            ..Default::default()
        },
    );
    let mut bin = binner(&e, kernel, agg);
    let mut rows = Vec::new();
    let nc = x.ncols();
    for w in bounds.windows(2) {
        let chunk = x.slice(s![w[0]..w[1], ..]);
        let up = DeviceArray::upload(ctx, chunk.into_dyn()).expect("upload");
        let ev = det.process_device(&up).expect("threshold");
        let out = bin.process_device_events(&ev).expect("binning");
        let host = out.values.to_host::<f32>().expect("read back");
        assert_eq!(host.shape(), &[out.n_bins, nc]);
        rows.extend(host.iter().copied());
    }
    Array2::from_shape_vec((rows.len() / nc, nc), rows).expect("shape")
}

/// The same stages called one by one with host data.
fn host_chain(
    e: &Engine,
    x: &Array2<f32>,
    bounds: &[usize],
    kernel: Kernel,
    agg: Aggregation,
) -> Array2<f32> {
    let mut det = detector(
        e,
        ThresholdSettings {
            threshold: -4.0,
            ..Default::default()
        },
    );
    let mut bin = binner(e, kernel, agg);
    let mut rows = Vec::new();
    let nc = x.ncols();
    for w in bounds.windows(2) {
        let ev = det.process(x.slice(s![w[0]..w[1], ..])).expect("threshold");
        let b = bin.process_events(&ev, w[1] - w[0], nc).expect("binning");
        rows.extend(b.values.iter().copied());
    }
    Array2::from_shape_vec((rows.len() / nc, nc), rows).expect("shape")
}

fn assert_close(a: &Array2<f32>, b: &Array2<f32>, tol: f32, what: &str) {
    assert_eq!(a.dim(), b.dim(), "{what}: shapes");
    let scale = b.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-30);
    for ((i, x), y) in a.indexed_iter().zip(b.iter()) {
        assert!(
            (x - y).abs() <= tol * scale,
            "{what}: {i:?}: {x} vs {y} (scale {scale})"
        );
    }
}

#[test]
fn device_chain_equals_host_stages_for_any_chunking() {
    let (n, nc) = (3_000usize, 67usize);
    let x = signal(n, nc, 11);
    let chunkings: Vec<Vec<usize>> = vec![
        vec![0, n],
        (0..=n).step_by(600).collect(),
        common::random_bounds(&mut common::rng(5), n, 257),
        vec![0, 1, 2, 61, 61, 999, 1000, n],
    ];
    for (kernel, agg) in [
        (Kernel::Count, Aggregation::Sum),
        (Kernel::Count, Aggregation::Last),
        (Kernel::Exponential { tau: 0.002 }, Aggregation::Last),
        (Kernel::Alpha { tau: 0.001 }, Aggregation::Mean),
        (Kernel::Exponential { tau: 0.003 }, Aggregation::Max),
    ] {
        let reference = host_chain(&Engine::cpu(), &x, &[0, n], kernel, agg);
        assert!(
            reference.iter().any(|&v| v != 0.0),
            "the data must produce events"
        );
        for bounds in &chunkings {
            let dev = device_chain(&x, bounds, kernel, agg);
            let host_gpu = host_chain(&common::gpu(), &x, bounds, kernel, agg);
            let exact = kernel == Kernel::Count;
            let tol = if exact { 0.0 } else { 2e-5 };
            assert_close(
                &dev,
                &reference,
                tol,
                &format!("{kernel:?} {agg:?} device vs cpu"),
            );
            assert_close(
                &host_gpu,
                &reference,
                tol,
                &format!("{kernel:?} {agg:?} host gpu vs cpu"),
            );
        }
    }
}

#[test]
fn held_events_are_rejected_and_the_stream_is_unchanged() {
    // With align_on_peak an event whose peak window is still open at a chunk's end is emitted
    // by the next chunk at a sample of the previous one: binning cannot take it.
    let e = common::gpu();
    let Engine::Gpu(ctx) = &e else { unreachable!() };
    let settings = ThresholdSettings {
        threshold: -4.0,
        align_on_peak: true,
        ..Default::default()
    };
    let nc = 2;
    let mut x = Array2::<f32>::zeros((200, nc));
    for k in 0..10 {
        x[[95 + k, 0]] = -14.0 + k as f32; // crossing and peak at 95, still over at 99
    }
    let mut det = detector(&e, settings);
    let mut bin = binner(&e, Kernel::Count, Aggregation::Sum);
    let mut twin = binner(&e, Kernel::Count, Aggregation::Sum);
    let first = DeviceArray::upload(ctx, x.slice(s![0..100, ..]).into_dyn()).expect("upload");
    let ev = det.process_device(&first).expect("threshold");
    bin.process_device_events(&ev).expect("first chunk");
    twin.process_events(&[], 100, nc).expect("twin");
    let second = DeviceArray::upload(ctx, x.slice(s![100..200, ..]).into_dyn()).expect("upload");
    let ev = det.process_device(&second).expect("threshold");
    let held = det.events_to_host(&ev).expect("events");
    assert!(
        held.iter().any(|e| e.sample < 100),
        "the held event comes with chunk two: {held:?}"
    );
    let err = bin
        .process_device_events(&ev)
        .expect_err("a held event must be rejected");
    assert!(matches!(err, Error::IndexOutOfRange { .. }), "{err:?}");
    assert_eq!(bin.position(), 100, "position unchanged");
    // The stream continues exactly as if the rejected chunk had never been sent.
    let events: Vec<_> = held.into_iter().filter(|e| e.sample >= 100).collect();
    let a = bin.process_events(&events, 100, nc).expect("next chunk");
    let b = twin.process_events(&events, 100, nc).expect("twin chunk");
    assert_eq!(a, b);
}
