//! A device destroyed mid-stream (`wgpu::Device::destroy`): the chain's next calls return
//! [`Error::DeviceLost`] (no panic, no hang), on Vulkan and on GL, and a chain on a new engine
//! streams the recording again with the CPU engine's output.

mod support;

use ndarray::{s, Array2};
use neurokernels::chain::{Chain, ChainSettings};
use neurokernels::{Engine, Error, GpuOptions, LrrSettings};
use rand::Rng;
use support::rng;

const FS: f64 = 30_000.0;

/// Noise with clear negative spikes every 500 samples on every channel.
fn data(n: usize, c: usize) -> Array2<f32> {
    let mut r = rng(9);
    let mut x = Array2::from_shape_fn((n, c), |_| 10.0 * (r.random::<f32>() - 0.5));
    for ch in 0..c {
        let mut t = 40 + 11 * ch;
        while t + 30 < n {
            for k in 0..30 {
                x[[t + k, ch]] -= 90.0 * (-((k as f32 / 30.0 - 0.25) / 0.08).powi(2)).exp();
            }
            t += 500;
        }
    }
    x
}

fn settings(c: usize) -> ChainSettings {
    ChainSettings {
        lrr: LrrSettings {
            channel_clusters: Some(neurokernels::lrr::consecutive_clusters(c, 8)),
            ..Default::default()
        },
        ..Default::default()
    }
}

#[test]
fn a_destroyed_device_gives_typed_errors_and_a_new_engine_starts_over() {
    let x = data(12_000, 16);
    let gpu = Engine::gpu(&GpuOptions::software_ok()).expect("a GPU adapter (set WGPU_BACKEND)");
    let Engine::Gpu(ctx) = &gpu else {
        unreachable!("Engine::gpu returns the GPU engine")
    };
    let mut chain =
        Chain::calibrate(&gpu, settings(16), FS, x.slice(s![..6_000, ..]), 0).expect("calibrate");
    chain
        .process(x.slice(s![..600, ..]))
        .expect("a chunk before the loss");
    ctx.device().destroy();
    for k in 0..3 {
        let err = chain
            .process(x.slice(s![600 * (k + 1)..600 * (k + 2), ..]))
            .expect_err("a destroyed device must fail the chunk");
        println!("after destroy, chunk {k}: {err}");
        assert!(
            matches!(
                err,
                Error::Validation(_)
                    | Error::DeviceLost(_)
                    | Error::Readback(_)
                    | Error::OutOfMemory(_)
            ),
            "not a device error: {err:?}"
        );
    }
    // A new engine on a new device streams again.
    let fresh = Engine::gpu(&GpuOptions::software_ok()).expect("a new GPU engine");
    let mut again =
        Chain::calibrate(&fresh, settings(16), FS, x.slice(s![..6_000, ..]), 0).expect("calibrate");
    let mut cpu = Chain::calibrate(
        &Engine::cpu(),
        settings(16),
        FS,
        x.slice(s![..6_000, ..]),
        0,
    )
    .unwrap();
    let mut events = 0;
    for k in 0..20 {
        let chunk = x.slice(s![600 * k..600 * (k + 1), ..]);
        let a = again.process(chunk).expect("fresh device");
        let b = cpu.process(chunk).expect("cpu");
        assert_eq!(a.events, b.events, "chunk {k}");
        assert_eq!(a.bins.values, b.bins.values, "chunk {k}");
        events += a.events.len();
    }
    assert!(events > 300, "{events} events");
}
