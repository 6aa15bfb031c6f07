//! Integration tests of the GPU host layer on a real adapter: device arrays, engine
//! selection, adapter-selection errors, and dispatches past the per-dimension workgroup limit.
//!
//! Every GPU test opens an adapter with `GpuOptions::software_ok()` (lavapipe / llvmpipe in CI;
//! pick the backend with `WGPU_BACKEND`). A missing adapter fails the test: nothing here skips.
//!
//! Tests whose outcome depends on `WGPU_BACKEND` / `WGPU_ADAPTER_NAME` run their body in a
//! child process (this test binary, re-run on that one test) with those variables set or
//! removed, so they do not depend on the environment the suite was started in.

use std::process::Command;
use std::sync::Arc;

use ndarray::{s, Array, ArrayD, ArrayViewD, Dimension, IxDyn};
use neurokernels::gpu::{grid, DType, DeviceElement, MAX_GROUPS_PER_DIM};
use neurokernels::{DeviceArray, Engine, Error, GpuContext, GpuOptions};
use wgpu::util::DeviceExt;

/// Environment variable that marks a child process and names the test it runs.
const CHILD: &str = "NEUROKERNELS_HOST_TEST_CHILD";
/// The variables that steer adapter selection.
const ENV_VARS: [&str; 2] = ["WGPU_BACKEND", "WGPU_ADAPTER_NAME"];
/// An adapter name no machine has.
const NO_SUCH: &str = "no-such-adapter-xyz";

/// A context on the adapter the suite runs on; panics (fails the test) when there is none.
fn ctx() -> Arc<GpuContext> {
    match GpuContext::new(&GpuOptions::software_ok()) {
        Ok(c) => Arc::new(c),
        Err(e) => panic!(
            "no GPU adapter: {e}. These tests need one; on Debian install \
             mesa-vulkan-drivers (WGPU_BACKEND=vulkan) or libegl-mesa0 (WGPU_BACKEND=gl)"
        ),
    }
}

/// Whether this process is the child run of test `name` (see [`in_child`]).
fn is_child(name: &str) -> bool {
    std::env::var(CHILD).is_ok_and(|v| v == name)
}

/// Runs `body` in a child process: this test binary, re-run on test `name` alone, with the
/// variables in `set` set and those in `remove` removed. In the parent, waits for the child and
/// fails unless exactly that one test ran and passed. In the child, runs `body`.
fn in_child(name: &str, set: &[(&str, &str)], remove: &[&str], body: impl FnOnce()) {
    if is_child(name) {
        body();
        return;
    }
    let exe = std::env::current_exe().expect("path of the test binary");
    let mut cmd = Command::new(exe);
    cmd.args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, name);
    for v in remove {
        cmd.env_remove(v);
    }
    for (k, v) in set {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run the test binary as a child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("test result: ok. 1 passed"),
        "child run of `{name}` (set {set:?}, removed {remove:?}) failed: {}\n\
         --- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
        out.status
    );
}

/// Uploads `view`, reads it back, and checks shape, dtype, length and every element's bits.
fn round_trip<T>(ctx: &Arc<GpuContext>, view: ArrayViewD<'_, T>)
where
    T: DeviceElement + PartialEq + std::fmt::Debug,
{
    let dev = DeviceArray::upload(ctx, view.clone()).expect("upload");
    assert_eq!(dev.shape(), view.shape());
    assert_eq!(dev.dtype(), T::DTYPE);
    assert_eq!(dev.len(), view.len());
    assert_eq!(dev.is_empty(), view.is_empty());
    assert_eq!(dev.byte_len(), (view.len() * T::DTYPE.size()) as u64);
    let back: ArrayD<T> = dev.to_host().expect("read back");
    assert_eq!(back.shape(), view.shape());
    assert!(back.is_standard_layout());
    // Compare bytes, so NaN payloads and -0.0 count too.
    let want: Vec<T> = view.iter().copied().collect();
    let got: Vec<T> = back.iter().copied().collect();
    assert_eq!(
        bytemuck::cast_slice::<T, u8>(&got),
        bytemuck::cast_slice::<T, u8>(&want),
        "round trip of a {:?} array of shape {:?}",
        T::DTYPE,
        view.shape()
    );
}

/// `n` f32 values covering the awkward cases (signed zeros, subnormals, ±inf, NaN, extremes).
fn f32_values(n: usize) -> Vec<f32> {
    let special = [
        0.0,
        -0.0,
        1.0,
        -1.5,
        f32::MIN_POSITIVE / 2.0,
        f32::MAX,
        f32::MIN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        f32::from_bits(0x7fc0_1234),
        std::f32::consts::PI,
    ];
    (0..n)
        .map(|i| special.get(i).copied().unwrap_or(i as f32 * 0.37 - 1000.0))
        .collect()
}

#[test]
fn f32_round_trip() {
    let ctx = ctx();
    let scalar = ndarray::arr0(2.5f32).into_dyn();
    round_trip(&ctx, scalar.view());
    for shape in [
        vec![1],
        vec![5],
        vec![12],
        vec![3, 4],
        vec![2, 3, 5],
        vec![1000, 7],
    ] {
        let n = shape.iter().product();
        let a = Array::from_shape_vec(IxDyn(&shape), f32_values(n)).unwrap();
        round_trip(&ctx, a.view());
    }
}

#[test]
fn u32_round_trip() {
    let ctx = ctx();
    for shape in [vec![1], vec![3], vec![4, 4], vec![1_000_003]] {
        let n: usize = shape.iter().product();
        let v: Vec<u32> = (0..n as u32)
            .map(|i| match i {
                0 => u32::MAX,
                1 => 0x8000_0000,
                _ => i.wrapping_mul(2_654_435_761),
            })
            .collect();
        let a = Array::from_shape_vec(IxDyn(&shape), v).unwrap();
        round_trip(&ctx, a.view());
    }
}

#[test]
fn u8_round_trip_packs_four_per_word() {
    let ctx = ctx();
    // Every length modulo 4, with the tail word partly filled, plus large odd lengths.
    for n in (1..=13).chain([4095, 4097, 1_000_003]) {
        let a = Array::from_shape_fn(IxDyn(&[n]), |i| (i[0] * 37 + 255) as u8);
        round_trip(&ctx, a.view());
    }
    let seven = Array::from_shape_vec(IxDyn(&[7]), vec![1u8, 2, 3, 4, 5, 6, 255]).unwrap();
    round_trip(&ctx, seven.view());
    for shape in [vec![3, 7], vec![7, 3], vec![1, 1, 5], vec![600, 7]] {
        let a = Array::from_shape_fn(IxDyn(&shape), |i| (i.as_array_view().sum() % 251) as u8);
        round_trip(&ctx, a.view());
    }
}

#[test]
fn strided_views_upload_in_logical_order() {
    let ctx = ctx();
    let a = Array::from_shape_fn((6, 9), |(r, c)| (r * 100 + c) as f32);
    // Transposed.
    round_trip(&ctx, a.t().into_dyn());
    // Sliced with steps, and with negative steps.
    round_trip(&ctx, a.slice(s![1..;2, ..;3]).into_dyn());
    round_trip(&ctx, a.slice(s![..;-1, 1..8;-2]).into_dyn());
    // One column (stride 9 along the only axis).
    round_trip(&ctx, a.column(4).into_dyn());
    // Broadcast (zero strides).
    let row = a.row(2);
    round_trip(&ctx, row.broadcast((3, 9)).unwrap().into_dyn());
    // Permuted 3-D.
    let b = Array::from_shape_fn((2, 3, 4), |(i, j, k)| (i * 12 + j * 4 + k) as u32);
    round_trip(&ctx, b.view().permuted_axes([2, 0, 1]).into_dyn());
    // u8: transposed with an odd element count, and a stepped slice.
    let c = Array::from_shape_fn((3, 5), |(r, c)| (r * 16 + c) as u8);
    round_trip(&ctx, c.t().into_dyn());
    round_trip(&ctx, c.slice(s![.., ..;2]).into_dyn());
    // The logical order is what comes back, not the memory order.
    let dev = DeviceArray::upload(&ctx, a.t().into_dyn()).unwrap();
    let back = dev.to_host::<f32>().unwrap();
    assert_eq!(back.shape(), &[9, 6]);
    assert_eq!(back[[4, 2]], 204.0);
}

#[test]
fn empty_arrays_round_trip() {
    let ctx = ctx();
    for shape in [vec![0], vec![0, 5], vec![5, 0], vec![0, 0, 3]] {
        let f = ArrayD::<f32>::zeros(IxDyn(&shape));
        let u = ArrayD::<u32>::zeros(IxDyn(&shape));
        let b = ArrayD::<u8>::zeros(IxDyn(&shape));
        round_trip(&ctx, f.view());
        round_trip(&ctx, u.view());
        round_trip(&ctx, b.view());
        let dev = DeviceArray::upload(&ctx, b.view()).unwrap();
        assert!(dev.is_empty());
        assert_eq!(dev.byte_len(), 0);
    }
    // An empty slice of a non-empty array.
    let a = Array::from_shape_fn((4, 4), |(r, c)| (r + c) as f32);
    round_trip(&ctx, a.slice(s![2..2, ..]).into_dyn());
}

#[test]
fn wrong_dtype_read_back_is_a_device_array_error() {
    let ctx = ctx();
    let f = Array::from_shape_vec(IxDyn(&[2, 2]), vec![1.0f32, 2.0, 3.0, 4.0]).unwrap();
    let dev = DeviceArray::upload(&ctx, f.view()).unwrap();
    assert_eq!(dev.dtype(), DType::F32);
    for err in [
        dev.to_host::<u32>().unwrap_err(),
        dev.to_host::<u8>().unwrap_err(),
    ] {
        match err {
            Error::DeviceArray(msg) => assert!(msg.contains("F32"), "message: {msg}"),
            other => panic!("expected Error::DeviceArray, got {other:?}"),
        }
    }
    let bytes = Array::from_shape_vec(IxDyn(&[4]), vec![1u8, 2, 3, 4]).unwrap();
    let dev8 = DeviceArray::upload(&ctx, bytes.view()).unwrap();
    match dev8.to_host::<f32>() {
        Err(Error::DeviceArray(msg)) => assert!(msg.contains("U8"), "message: {msg}"),
        other => panic!("expected Error::DeviceArray, got {other:?}"),
    }
    // A rejected read-back leaves the arrays usable.
    assert_eq!(dev.to_host::<f32>().unwrap(), f);
    assert_eq!(dev8.to_host::<u8>().unwrap(), bytes);
}

#[test]
fn engine_describe_names_the_adapter() {
    assert_eq!(Engine::cpu().describe(), "cpu");
    assert!(!Engine::cpu().is_gpu());
    let engine = Engine::gpu(&GpuOptions::software_ok())
        .unwrap_or_else(|e| panic!("no GPU adapter for the GPU engine: {e}"));
    assert!(engine.is_gpu());
    let Engine::Gpu(ctx) = &engine else {
        panic!("Engine::gpu gave {engine:?}")
    };
    let info = ctx.adapter_info();
    let d = engine.describe();
    assert!(!info.name.is_empty());
    assert!(d.contains(&info.name), "{d}");
    assert!(d.contains(&format!("{:?}", info.backend)), "{d}");
    assert!(d.contains(&format!("{:?}", info.device_type)), "{d}");
    assert!(!d.contains('\n'), "{d}");
    println!("GPU engine: {d}");

    // WGPU_BACKEND, when set, is the backend that was opened.
    if let Ok(b) = std::env::var("WGPU_BACKEND") {
        if !b.is_empty() {
            let want = wgpu::Backends::from_comma_list(&b);
            assert!(
                want.contains(info.backend.into()),
                "WGPU_BACKEND={b} but the adapter is on {:?}",
                info.backend
            );
        }
    }
    // With either variable set, Engine::auto uses the (software) adapter asked for.
    if ENV_VARS
        .iter()
        .any(|v| std::env::var(v).is_ok_and(|s| !s.is_empty()))
    {
        let auto = Engine::auto().expect("Engine::auto with an adapter asked for");
        assert!(auto.is_gpu(), "{auto:?}");
    }
}

#[test]
fn limits_and_accessors_are_consistent() {
    let ctx = ctx();
    let limits = ctx.limits();
    assert!(limits.max_compute_workgroups_per_dimension >= MAX_GROUPS_PER_DIM);
    assert!(ctx.max_binding() >= 128 << 20, "{}", ctx.max_binding());
    assert!(ctx.max_binding() <= limits.max_buffer_size);
    assert_eq!(ctx.device().limits(), *limits);
    assert!(format!("{ctx:?}").contains(&ctx.adapter_info().name));
    let a = Array::from_shape_vec(IxDyn(&[5]), vec![1u8; 5]).unwrap();
    let dev = DeviceArray::upload(&ctx, a.view()).unwrap();
    assert!(dev.buffer().size() >= dev.byte_len());
    assert_eq!(dev.buffer().size() % 4, 0);
    assert!(Arc::ptr_eq(dev.context(), &ctx));
}

#[test]
fn unknown_adapter_name_is_no_adapter() {
    in_child(
        "unknown_adapter_name_is_no_adapter",
        &[],
        &["WGPU_ADAPTER_NAME"],
        || {
            let opts = GpuOptions {
                adapter_name: Some(NO_SUCH.into()),
                allow_software: true,
                ..Default::default()
            };
            match GpuContext::new(&opts) {
                Err(Error::NoAdapter(msg)) => assert!(msg.contains(NO_SUCH), "{msg}"),
                other => panic!("expected Error::NoAdapter, got {other:?}"),
            }
            assert!(matches!(Engine::gpu(&opts), Err(Error::NoAdapter(_))));
        },
    );
}

#[test]
fn adapter_name_env_var_overrides_the_option() {
    // An unknown name in the variable: no adapter, even for Engine::auto, which must not fall
    // back to the CPU when an adapter was asked for.
    in_child(
        "adapter_name_env_var_overrides_the_option",
        &[("WGPU_ADAPTER_NAME", NO_SUCH)],
        &[],
        || {
            match GpuContext::new(&GpuOptions::software_ok()) {
                Err(Error::NoAdapter(msg)) => assert!(msg.contains(NO_SUCH), "{msg}"),
                other => panic!("expected Error::NoAdapter, got {other:?}"),
            }
            match Engine::auto() {
                Err(Error::NoAdapter(_)) => {}
                other => panic!("Engine::auto with WGPU_ADAPTER_NAME={NO_SUCH}: {other:?}"),
            }
        },
    );
}

#[test]
fn adapter_name_env_var_selects_the_named_adapter() {
    // The real adapter's name in the variable wins over an unknown name in the options.
    const NAME_VAR: &str = "NEUROKERNELS_HOST_TEST_ADAPTER";
    let name = if is_child("adapter_name_env_var_selects_the_named_adapter") {
        std::env::var(NAME_VAR).unwrap_or_default()
    } else {
        ctx().adapter_info().name.clone()
    };
    let upper = name.to_uppercase();
    in_child(
        "adapter_name_env_var_selects_the_named_adapter",
        &[("WGPU_ADAPTER_NAME", &upper), (NAME_VAR, &name)],
        &[],
        || {
            let opts = GpuOptions {
                adapter_name: Some(NO_SUCH.into()),
                allow_software: false,
                ..Default::default()
            };
            // Software is implied by the variable, and the match is case-insensitive.
            let ctx = GpuContext::new(&opts).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(ctx.adapter_info().name, name);
        },
    );
}

#[test]
fn backends_option_is_honoured() {
    in_child("backends_option_is_honoured", &[], &ENV_VARS, || {
        // Whatever backend the first software-allowed adapter is on, asking for just that
        // backend opens an adapter on it.
        let any = GpuContext::new(&GpuOptions::software_ok()).unwrap_or_else(|e| panic!("{e}"));
        let backend = any.adapter_info().backend;
        let opts = GpuOptions {
            backends: Some(backend.into()),
            allow_software: true,
            ..Default::default()
        };
        let ctx = GpuContext::new(&opts).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ctx.adapter_info().backend, backend);
        // No backend allowed: no adapter.
        let none = GpuOptions {
            backends: Some(wgpu::Backends::empty()),
            allow_software: true,
            ..Default::default()
        };
        match GpuContext::new(&none) {
            Err(Error::NoAdapter(_)) => {}
            other => panic!("expected Error::NoAdapter, got {other:?}"),
        }
    });
}

#[test]
fn backend_env_var_overrides_the_option() {
    // WGPU_BACKEND names the suite's backend; the options exclude it and refuse software
    // adapters: the variable wins on both counts.
    let backend = if is_child("backend_env_var_overrides_the_option") {
        std::env::var("WGPU_BACKEND").unwrap_or_default()
    } else {
        ctx().adapter_info().backend.to_str().to_string()
    };
    in_child(
        "backend_env_var_overrides_the_option",
        &[("WGPU_BACKEND", &backend)],
        &["WGPU_ADAPTER_NAME"],
        || {
            let want = wgpu::Backends::from_comma_list(&backend);
            assert!(!want.is_empty(), "WGPU_BACKEND={backend}");
            let opts = GpuOptions {
                backends: Some(wgpu::Backends::all() - want),
                allow_software: false,
                ..Default::default()
            };
            let ctx = GpuContext::new(&opts).unwrap_or_else(|e| panic!("{e}"));
            assert!(want.contains(ctx.adapter_info().backend.into()));
        },
    );
}

#[test]
fn default_options_refuse_software_adapters() {
    in_child(
        "default_options_refuse_software_adapters",
        &[],
        &ENV_VARS,
        || {
            let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
                backends: wgpu::Backends::all(),
                ..wgpu::InstanceDescriptor::new_without_display_handle()
            });
            let seen: Vec<wgpu::AdapterInfo> =
                pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()))
                    .iter()
                    .map(|a| a.get_info())
                    .collect();
            let hardware = seen.iter().any(|i| i.device_type != wgpu::DeviceType::Cpu);
            match GpuContext::new(&GpuOptions::default()) {
                Ok(ctx) => {
                    let t = ctx.adapter_info().device_type;
                    assert_ne!(t, wgpu::DeviceType::Cpu, "{ctx:?}");
                    println!("hardware adapter: {ctx:?}");
                }
                Err(Error::NoAdapter(msg)) => {
                    assert!(!hardware, "NoAdapter ({msg}) but saw {seen:?}");
                    println!("no hardware adapter: {msg}");
                }
                Err(e) => panic!("expected Ok or Error::NoAdapter, got {e:?}"),
            }
        },
    );
}

#[test]
fn auto_never_fails_without_env_vars() {
    in_child("auto_never_fails_without_env_vars", &[], &ENV_VARS, || {
        let auto = Engine::auto().unwrap_or_else(|e| panic!("Engine::auto failed: {e}"));
        match &auto {
            Engine::Gpu(ctx) => {
                assert_ne!(ctx.adapter_info().device_type, wgpu::DeviceType::Cpu)
            }
            Engine::Cpu => assert!(GpuContext::new(&GpuOptions::default()).is_err()),
        }
        println!("Engine::auto: {}", auto.describe());
    });
}

#[test]
fn dispatch_past_the_workgroup_limit_through_grid() {
    let ctx = ctx();
    let groups: u32 = MAX_GROUPS_PER_DIM + 4_465; // 70 000 workgroups of 64
    let n = groups * 64 - 13;
    let pad = 100usize;
    let (x, y, z) = grid(groups);
    assert!(x <= ctx.limits().max_compute_workgroups_per_dimension);
    assert!(y <= ctx.limits().max_compute_workgroups_per_dimension);
    assert!(y > 1 && z == 1);
    assert!(x as u64 * y as u64 >= groups as u64);

    // Output: a device array filled with a sentinel, with `pad` elements past `n`.
    let sentinel = ArrayD::from_elem(IxDyn(&[n as usize + pad]), u32::MAX);
    let out = DeviceArray::upload(&ctx, sentinel.view()).unwrap();

    let device = ctx.device();
    let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("fill"),
        source: wgpu::ShaderSource::Wgsl(include_str!("shaders/fill.wgsl").into()),
    });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some("fill"),
        layout: None,
        module: &module,
        entry_point: Some("fill"),
        compilation_options: Default::default(),
        cache: None,
    });
    let params = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some("fill params"),
        contents: bytemuck::cast_slice(&[n, 0, 0, 0]),
        usage: wgpu::BufferUsages::UNIFORM,
    });
    let bind = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some("fill"),
        layout: &pipeline.get_bind_group_layout(0),
        entries: &[
            wgpu::BindGroupEntry {
                binding: 0,
                resource: params.as_entire_binding(),
            },
            wgpu::BindGroupEntry {
                binding: 1,
                resource: out.buffer().as_entire_binding(),
            },
        ],
    });
    let mut encoder = device.create_command_encoder(&Default::default());
    {
        let mut pass = encoder.begin_compute_pass(&Default::default());
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &bind, &[]);
        pass.dispatch_workgroups(x, y, z);
    }
    ctx.queue().submit(Some(encoder.finish()));
    if let Some(e) = pollster::block_on(scope.pop()) {
        panic!("validation error: {e}");
    }

    // The crate's read-back is ordered after the dispatch on the same queue.
    let back = out.to_host::<u32>().unwrap();
    let back = back.as_slice().unwrap();
    let wrong: Vec<(usize, u32)> = back[..n as usize]
        .iter()
        .enumerate()
        .filter(|&(i, &v)| v != i as u32 + 1)
        .map(|(i, &v)| (i, v))
        .take(5)
        .collect();
    assert!(wrong.is_empty(), "first wrong (index, value): {wrong:?}");
    assert!(
        back[n as usize..].iter().all(|&v| v == u32::MAX),
        "the kernel wrote past n"
    );
    // The last workgroup is in the second row of the grid: it ran.
    assert_eq!(back[n as usize - 1], n);
}

#[test]
fn a_failed_read_back_does_not_break_later_ones() {
    // Work done directly on the device (another thread here) that fails validation outside
    // any error scope surfaces as an error of the crate's next call on the context; a
    // read-back failed that way used to leave the staging buffer mapped, and every later
    // read-back failed with "still mapped". Race the two, then check read-backs recover.
    let ctx = ctx();
    let a = Array::from_shape_fn(IxDyn(&[1000]), |i| i[0] as f32);
    let dev = DeviceArray::upload(&ctx, a.view()).unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (ctx2, stop2) = (ctx.clone(), stop.clone());
    let spammer = std::thread::spawn(move || {
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            // Larger than any adapter's max_buffer_size: a validation error.
            let _ = ctx2.device().create_buffer(&wgpu::BufferDescriptor {
                label: Some("too big"),
                size: 1 << 60,
                usage: wgpu::BufferUsages::STORAGE,
                mapped_at_creation: false,
            });
            std::thread::sleep(std::time::Duration::from_micros(100));
        }
    });
    let mut failed = 0;
    for _ in 0..300 {
        match dev.to_host::<f32>() {
            Ok(back) => assert_eq!(back, a),
            Err(Error::Validation(_)) => failed += 1,
            Err(e) => panic!("unexpected error {e:?}"),
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    spammer.join().unwrap();
    println!("{failed} of 300 read-backs took a foreign validation error");
    // At most one error can still be pending; it is reported once, then reads succeed.
    let _ = dev.to_host::<f32>();
    for _ in 0..5 {
        assert_eq!(dev.to_host::<f32>().expect("read-back after the race"), a);
    }
}

#[test]
fn read_back_of_more_than_half_the_largest_buffer() {
    // The read-back staging buffer grows to a power of two; for an array just over half of
    // `max_buffer_size` (1 GiB + a few bytes on lavapipe / llvmpipe) that power of two used to
    // be larger than any buffer the device can make, so the read-back failed.
    let ctx = ctx();
    let n = (ctx.limits().max_buffer_size / 2 + 5).min((1 << 30) + 5) as usize;
    let mut a = ArrayD::<u8>::from_elem(IxDyn(&[n]), 7);
    a[[0]] = 1;
    a[[n / 2]] = 2;
    a[[n - 1]] = 3;
    let dev = DeviceArray::upload(&ctx, a.view()).expect("upload");
    let back = dev.to_host::<u8>().expect("read-back");
    assert_eq!(back.len(), n);
    assert!(back == a, "large round trip differs");
    drop((a, back));
    // A small read-back on the same context afterwards still works.
    let small = Array::from_shape_vec(IxDyn(&[3]), vec![1.0f32, 2.0, 3.0]).unwrap();
    round_trip(&ctx, small.view());
}
