//! Device memory and limits: the context counts its live buffers and bytes (back to where they
//! were once an operator or array is dropped); a chunk that would pass the memory budget or the
//! device's `max_buffer_size` is refused with a typed error before anything is allocated, and
//! the operator then goes on exactly as one that never saw that chunk; a wgpu validation error
//! caused outside the crate comes back as [`Error::Validation`] from the crate's next call,
//! not as a panic. Each test opens a context of its own, so its counts are its own.

mod support;

use ndarray::{s, Array2, ArrayD, IxDyn};
use neurokernels::chain::{Chain, ChainOutput, ChainSettings};
use neurokernels::filter::{BandpassFilter, FilterSettings};
use neurokernels::{DeviceArray, Engine, Error, GpuContext, GpuOptions, LrrSettings};
use rand::Rng;
use std::sync::Arc;
use support::{gpu_with, rng};

const FS: f64 = 30_000.0;

fn context(e: &Engine) -> Arc<GpuContext> {
    match e {
        Engine::Gpu(c) => c.clone(),
        Engine::Cpu => unreachable!("gpu_with returns the GPU engine"),
    }
}

/// `(n, c)` µV: noise, shared noise per 16 channels, and spikes.
fn recording(seed: u64, n: usize, c: usize) -> Array2<f32> {
    let mut r = rng(seed);
    let mut x = Array2::<f32>::zeros((n, c));
    for mut row in x.rows_mut() {
        let shared: Vec<f32> = (0..c.div_ceil(16))
            .map(|_| 15.0 * (r.random::<f32>() - 0.5))
            .collect();
        for (ch, v) in row.iter_mut().enumerate() {
            *v = 20.0 * (r.random::<f32>() - 0.5) + shared[ch / 16];
        }
    }
    for ch in 0..c {
        let mut t = r.random_range(0..600usize);
        while t + 30 < n {
            for k in 0..30 {
                let tk = k as f32 / 30.0;
                x[[t + k, ch]] -= 80.0 * (-((tk - 0.25) / 0.08).powi(2)).exp();
            }
            t += r.random_range(400..1500usize);
        }
    }
    x
}

fn live(ctx: &GpuContext) -> (u64, u64) {
    (ctx.live_buffers(), ctx.live_bytes())
}

#[test]
fn live_buffers_and_bytes_follow_what_is_alive() {
    let e = gpu_with(GpuOptions::default());
    let ctx = context(&e);
    assert_eq!(live(&ctx), (0, 0), "a new context holds no buffer");
    let a = DeviceArray::upload(&ctx, ArrayD::<f32>::zeros(IxDyn(&[1000])).view()).expect("up");
    assert_eq!(live(&ctx), (1, 4000));
    let b = a.clone();
    assert_eq!(live(&ctx), (1, 4000), "clones share the buffer");
    drop((a, b));
    assert_eq!(live(&ctx), (0, 0));
    let x = recording(1, 600, 32);
    let stream = || {
        let mut f = BandpassFilter::new(&e, FilterSettings::default(), FS).expect("filter");
        f.process(x.view()).expect("chunk");
        f
    };
    drop(stream()); // leaves the context's staging buffer, sized for this chunk
    let base = live(&ctx);
    assert_eq!(base.0, 1, "the staging buffer stays");
    let mut f = stream();
    let busy = live(&ctx);
    assert!(busy.0 > base.0 && busy.1 > base.1, "{busy:?} vs {base:?}");
    for _ in 0..20 {
        f.process(x.view()).expect("chunk");
    }
    assert_eq!(live(&ctx), busy, "equal chunks allocate nothing more");
    drop(f);
    assert_eq!(
        live(&ctx),
        base,
        "a dropped operator gives its buffers back"
    );
}

/// `chain` in chunks of 600 of `x`, events as (sample, channel) and bins.
fn run(chain: &mut Chain, x: &Array2<f32>) -> (Vec<(u64, u32)>, Vec<f32>) {
    let (mut ev, mut bins) = (Vec::new(), Vec::new());
    for k in 0..x.nrows() / 600 {
        let out: ChainOutput = chain
            .process(x.slice(s![k * 600..(k + 1) * 600, ..]))
            .expect("normal chunk");
        ev.extend(out.events.iter().map(|e| (e.sample, e.channel)));
        bins.extend(out.bins.values.iter().copied());
    }
    (ev, bins)
}

fn chain_settings(c: usize) -> ChainSettings {
    ChainSettings {
        lrr: LrrSettings {
            channel_clusters: Some(neurokernels::lrr::consecutive_clusters(c, 16)),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Two chains of `c` channels calibrated alike on `e` (on a recording of seed `seed`).
fn two_chains(e: &Engine, c: usize, seed: u64) -> (Chain, Chain) {
    let cal = recording(seed, 6_000, c);
    let make = || Chain::calibrate(e, chain_settings(c), FS, cal.view(), 0).expect("calibrate");
    (make(), make())
}

#[test]
fn a_chunk_past_the_memory_budget_is_refused_and_the_chain_goes_on() {
    let c = 64;
    let e = gpu_with(GpuOptions::default());
    let ctx = context(&e);
    let (mut clean, mut tested) = two_chains(&e, c, 2);
    let x = recording(3, 12_000, c);
    let (half, rest) = (
        x.slice(s![..6_000, ..]).to_owned(),
        x.slice(s![6_000.., ..]).to_owned(),
    );
    let big = recording(4, 12_000, c);
    let mut want = run(&mut clean, &half);
    let r = run(&mut clean, &rest);
    want.0.extend(r.0);
    want.1.extend(r.1);
    assert!(want.0.len() > 100, "{} events", want.0.len());

    // The large chunk with room under the budget for less than its upload, then for the
    // upload but not the filter's output, then for both but not LRR's output (the filter has
    // run): each refusal leaves (rewinds) every stage where it was.
    let mut got = run(&mut tested, &half);
    let bytes = (big.len() * 4) as u64;
    for room in [bytes / 2, bytes + bytes / 2, 2 * bytes] {
        let before = live(&ctx);
        ctx.set_memory_budget(Some(before.1 + room));
        let res = tested.process(big.view());
        assert!(ctx.live_bytes() <= before.1 + room);
        ctx.set_memory_budget(None);
        match res {
            Err(Error::DeviceMemory {
                requested,
                live,
                budget,
            }) => assert!(
                live + requested > budget,
                "{requested} + {live} vs {budget}"
            ),
            other => panic!("room {room}: expected a budget error, got {other:?}"),
        }
    }
    let r = run(&mut tested, &rest);
    got.0.extend(r.0);
    got.1.extend(r.1);
    assert_eq!(got.0, want.0, "events");
    assert_eq!(got.1, want.1, "bins");
}

#[test]
fn a_chunk_past_the_device_buffer_limit_is_refused_and_the_chain_goes_on() {
    let c = 64;
    let probe = gpu_with(GpuOptions::default());
    let limits = wgpu::Limits {
        max_buffer_size: 2 << 20,
        max_storage_buffer_binding_size: 1 << 20,
        ..context(&probe).limits().clone()
    };
    drop(probe);
    let e = gpu_with(GpuOptions {
        limits: Some(limits),
        ..Default::default()
    });
    let ctx = context(&e);
    assert_eq!(ctx.limits().max_buffer_size, 2 << 20);
    let (mut clean, mut tested) = two_chains(&e, c, 5);
    let x = recording(6, 9_000, c);
    let want = run(&mut clean, &x);
    let mut got = run(&mut tested, &x.slice(s![..4_800, ..]).to_owned());
    let big = recording(7, 9_000, c); // 2.3 MB: more than one buffer may hold
    match tested.process(big.view()) {
        Err(Error::DeviceLimit {
            limit: "max_buffer_size",
            requested,
            max,
        }) => assert!(requested > max && max == 2 << 20),
        other => panic!("expected a device-limit error, got {other:?}"),
    }
    let (ev, bins) = run(&mut tested, &x.slice(s![4_800.., ..]).to_owned());
    got.0.extend(ev);
    got.1.extend(bins);
    assert_eq!(got, want);
}

#[test]
fn a_budget_from_the_options_refuses_a_large_upload() {
    let e = gpu_with(GpuOptions::default().with_memory_budget(1 << 20));
    let ctx = context(&e);
    assert_eq!(ctx.memory_budget(), Some(1 << 20));
    let small = ArrayD::<f32>::zeros(IxDyn(&[1 << 16]));
    let kept = DeviceArray::upload(&ctx, small.view()).expect("256 KiB fit");
    let big = ArrayD::<f32>::zeros(IxDyn(&[1 << 18]));
    let err = DeviceArray::upload(&ctx, big.view()).expect_err("1 MiB more does not");
    assert_eq!(
        err,
        Error::DeviceMemory {
            requested: 1 << 20,
            live: 1 << 18,
            budget: 1 << 20
        }
    );
    assert_eq!(
        live(&ctx),
        (1, 1 << 18),
        "nothing allocated for the refused upload"
    );
    drop(kept);
    DeviceArray::upload(&ctx, big.view()).expect("fits once the other is gone");
}

#[test]
fn a_validation_error_made_outside_the_crate_comes_back_typed() {
    let e = gpu_with(GpuOptions::default());
    let ctx = context(&e);
    // Invalid: a buffer both mappable for reading and for writing.
    let _bad = ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("invalid"),
        size: 16,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::MAP_WRITE,
        mapped_at_creation: false,
    });
    let x = ArrayD::<f32>::ones(IxDyn(&[8]));
    match DeviceArray::upload(&ctx, x.view()) {
        Err(Error::Validation(m)) => assert!(!m.is_empty()),
        other => panic!("expected a validation error, got {other:?}"),
    }
    let a = DeviceArray::upload(&ctx, x.view()).expect("the next call works");
    assert_eq!(a.to_host::<f32>().expect("read back"), x);
}

#[test]
fn a_filter_refused_a_chunk_past_the_budget_goes_on_as_one_that_never_saw_it() {
    let e = gpu_with(GpuOptions::default());
    let ctx = context(&e);
    let x = recording(8, 6_000, 32);
    let make = || BandpassFilter::new(&e, FilterSettings::default(), FS).expect("filter");
    let (mut clean, mut tested) = (make(), make());
    let want = clean.process(x.view()).expect("clean");
    let mut got = tested
        .process(x.slice(s![..3_000, ..]))
        .expect("first half");
    ctx.set_memory_budget(Some(ctx.live_bytes() + (1 << 20)));
    let big = recording(9, 30_000, 32); // 3.8 MB
    match tested.process(big.view()) {
        Err(Error::DeviceMemory { .. }) => {}
        other => panic!("expected a budget error, got {other:?}"),
    }
    ctx.set_memory_budget(None);
    let rest = tested
        .process(x.slice(s![3_000.., ..]))
        .expect("second half");
    got.append(ndarray::Axis(0), rest.view()).expect("append");
    assert_eq!(got, want);
}

#[test]
fn a_device_chunk_whose_filtered_values_overflow_is_refused_and_the_chain_goes_on() {
    let c = 32;
    // The filter's double-single f32 arithmetic, which overflows on the samples below (the
    // f64 form filters them to finite values).
    let e = gpu_with(GpuOptions {
        f64_kernels: Some(false),
        ..GpuOptions::default()
    });
    let ctx = context(&e);
    let (mut clean, mut tested) = two_chains(&e, c, 10);
    let x = recording(11, 6_000, c);
    let want = run(&mut clean, &x);
    let mut got = run(&mut tested, &x.slice(s![..3_000, ..]).to_owned());
    // Finite samples the band-pass turns into ±inf: threshold crossing rejects the chunk
    // after the filter has run on it.
    let huge =
        Array2::<f32>::from_shape_fn(
            (600, c),
            |(i, _)| {
                if i % 2 == 0 {
                    f32::MAX
                } else {
                    -f32::MAX
                }
            },
        );
    let dev = DeviceArray::upload(&ctx, huge.into_dyn().view()).expect("upload");
    match tested.process_device(&dev) {
        Err(Error::NonFinite { .. }) => {}
        other => panic!("expected a non-finite error, got {other:?}"),
    }
    let (ev, bins) = run(&mut tested, &x.slice(s![3_000.., ..]).to_owned());
    got.0.extend(ev);
    got.1.extend(bins);
    assert_eq!(got, want);
}
