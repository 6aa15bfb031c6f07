//! Recurrent Poisson GLM (SPEC §3): the simulation on both engines against a plain sequential
//! `f64` truth written from the seed's recurrence, against the nemos package's own outputs,
//! and GPU against CPU; the Philox and Poisson samplers; the seed's validation errors; the
//! helpers (`difference_of_gammas`, `regress_filter`, `RaisedCosineLogEval`).
//!
//! GPU tests open `Engine::gpu(&GpuOptions::software_ok())` (lavapipe / llvmpipe in CI, picked
//! with `WGPU_BACKEND`) and fail when there is no adapter: nothing skips. Run with
//! `WGPU_BACKEND=vulkan cargo test --test glm` and `WGPU_BACKEND=gl cargo test --test glm`.
//! The larger runs are `#[ignore]`d: `cargo test --release --test glm -- --ignored`.

mod support;

use support::{engines, gpu, rng};

use std::path::PathBuf;

use ndarray::{s, Array1, Array2, Array3, Array4, ArrayD, Axis};
use neurokernels::glm::{
    difference_of_gammas, poisson_samples, regress_filter, sampler, simulate_recurrent,
    simulate_recurrent_batch, GlmOutput, Link, RaisedCosineLogEval, RecurrentGlm, Sampling,
};
use neurokernels::rng::{key_of, philox4x32_10};
use neurokernels::{Engine, Error};
use rand::Rng;
use statrs::distribution::{ChiSquared, ContinuousCDF, Discrete, DiscreteCDF, Poisson};

// ---------------------------------------------------------------------------------------------
// Engines and data

fn reference(case: &str) -> PathBuf {
    support::reference("glm", case)
}

fn npy<D: ndarray::Dimension>(case: &str, file: &str) -> ndarray::Array<f64, D> {
    let p = reference(case).join(file);
    ndarray_npy::read_npy(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

/// A GLM's parameters and inputs.
#[derive(Clone)]
struct Net {
    cc: Array3<f64>,
    ffc: Array2<f64>,
    icp: Array1<f64>,
    basis: Array2<f64>,
    init: Array2<f64>,
    ff: Array3<f64>,
}

impl Net {
    /// A random network of `n` neurons, window `ws`, `nb` basis functions, `nf` features and
    /// `t` steps: coupling scaled by `gain`, baseline drive `base`.
    #[allow(clippy::too_many_arguments)]
    fn random(
        seed: u64,
        n: usize,
        ws: usize,
        nb: usize,
        nf: usize,
        t: usize,
        gain: f64,
        base: f64,
    ) -> Net {
        let mut r = rng(seed);
        let basis = if nb >= 2 {
            RaisedCosineLogEval::new(nb)
                .evaluate_on_grid(ws)
                .expect("basis")
                .1
        } else {
            Array2::from_shape_fn((ws, nb), |(w, _)| (-(w as f64) / 5.0).exp())
        };
        Net {
            cc: Array3::from_shape_fn((n, n, nb), |_| gain * r.random_range(-1.0..1.0)),
            ffc: Array2::from_shape_fn((n, nf), |_| r.random_range(-0.5..0.5)),
            icp: Array1::from_shape_fn(n, |_| base + r.random_range(-0.5..0.5)),
            basis,
            init: Array2::from_shape_fn((ws, n), |_| r.random_range(0..3) as f64),
            ff: Array3::from_shape_fn((t, n, nf), |_| r.random_range(-1.0..1.0)),
        }
    }

    /// Replaces the coupling by a stable one: each filter `i ← j` sums (over the window) to
    /// `g·u_ij` with `u_ij` uniform in [−1, 1], so the recurrence's gain is at most `n·g`.
    fn stabilise(&mut self, seed: u64, g: f64) {
        let mut r = rng(seed);
        let nb = self.basis.shape()[1];
        let colsum: Vec<f64> = (0..nb).map(|b| self.basis.column(b).sum()).collect();
        for v in self.cc.indexed_iter_mut() {
            let ((_, _, b), x) = v;
            *x = g * r.random_range(-1.0..1.0) / (colsum[b] * nb as f64);
        }
    }

    fn op(&self, e: &Engine, link: Link) -> RecurrentGlm {
        RecurrentGlm::new(
            e,
            self.cc.view().into_dyn(),
            self.ffc.view().into_dyn(),
            self.icp.view().into_dyn(),
            self.basis.view().into_dyn(),
            link,
        )
        .expect("new")
    }

    fn run(&self, e: &Engine, link: Link, seeds: &[u64], sampling: Sampling) -> GlmOutput {
        let mut op = self.op(e, link);
        op.start(self.init.view().into_dyn(), seeds, sampling)
            .expect("start");
        op.run(self.ff.view().into_dyn()).expect("run")
    }
}

fn link_f64(link: Link, x: f64) -> f64 {
    match link {
        Link::Softplus => {
            if x > 0.0 {
                x + (-x).exp().ln_1p()
            } else {
                x.exp().ln_1p()
            }
        }
        Link::Exp => x.exp(),
    }
}

/// The truth: the seed's recurrence, sequential, `f64`, with the window kept as rows
/// (`conv[j,b] = Σ_w window[w,j]·basis[ws−1−w,b]`). `Some(seed)` draws with the crate's
/// documented sampler (counter = (neuron, step, 0, tag|block)); `None` is the expected-value
/// rollout. With `forced`, row `t` of it enters the window.
fn truth(
    net: &Net,
    link: Link,
    seed: Option<u64>,
    forced: Option<&Array2<f64>>,
) -> (Array2<f64>, Array2<f64>) {
    let (n, nb) = (net.cc.shape()[0], net.cc.shape()[2]);
    let ws = net.basis.shape()[0];
    let t_len = net.ff.shape()[0];
    let mut window = net.init.clone();
    let mut spikes = Array2::zeros((t_len, n));
    let mut rates = Array2::zeros((t_len, n));
    for t in 0..t_len {
        let mut conv = Array2::<f64>::zeros((n, nb));
        for w in 0..ws {
            for j in 0..n {
                for b in 0..nb {
                    conv[[j, b]] += window[[w, j]] * net.basis[[ws - 1 - w, b]];
                }
            }
        }
        let mut row = Array1::zeros(n);
        for i in 0..n {
            let mut x = net.icp[i];
            for j in 0..n {
                for b in 0..nb {
                    x += net.cc[[i, j, b]] * conv[[j, b]];
                }
            }
            for k in 0..net.ffc.shape()[1] {
                x += net.ffc[[i, k]] * net.ff[[t, i, k]];
            }
            let r = link_f64(link, x);
            rates[[t, i]] = r;
            spikes[[t, i]] = match seed {
                Some(s) => sampler::poisson(r, key_of(s), t as u64, i as u32),
                None => r,
            };
            row[i] = match forced {
                Some(f) => f[[t, i]],
                None => spikes[[t, i]],
            };
        }
        if ws > 0 {
            for w in 0..ws - 1 {
                let next = window.row(w + 1).to_owned();
                window.row_mut(w).assign(&next);
            }
            window.row_mut(ws - 1).assign(&row);
        }
    }
    (spikes, rates)
}

/// Largest relative error `|a − b| / max(|b|, floor)`, with its index.
fn max_rel(a: &[f32], b: &[f64], floor: f64) -> (f64, usize) {
    assert_eq!(a.len(), b.len());
    let mut worst = (0.0, 0);
    for (k, (&x, &y)) in a.iter().zip(b).enumerate() {
        let e = (x as f64 - y).abs() / y.abs().max(floor);
        // NaN counts as the worst.
        if e.is_nan() || e > worst.0 {
            worst = (if e.is_nan() { f64::INFINITY } else { e }, k);
        }
    }
    worst
}

fn flat(a: &Array3<f32>) -> Vec<f32> {
    a.iter().cloned().collect()
}

// ---------------------------------------------------------------------------------------------
// The generator

/// WGSL Philox (`shaders/philox.wgsl`) and Rust Philox (`src/rng.rs`) give identical words for
/// 16 384 (key, counter) pairs: random ones plus every corner of 0 / all-ones words.
#[test]
fn philox_wgsl_matches_rust_for_many_keys_and_counters() {
    use wgpu::util::DeviceExt;
    let Engine::Gpu(ctx) = gpu() else {
        panic!("not a GPU engine")
    };
    let mut r = rng(7);
    let corners = [0u32, 1, 0x7fff_ffff, 0x8000_0000, u32::MAX];
    let mut counters: Vec<[u32; 4]> = Vec::new();
    let mut keys: Vec<[u32; 2]> = Vec::new();
    for &a in &corners {
        for &b in &corners {
            counters.push([a, b, a ^ b, b]);
            keys.push([b, a]);
        }
    }
    while counters.len() < 16_384 {
        counters.push([r.random(), r.random(), r.random(), r.random()]);
        keys.push([r.random(), r.random()]);
    }
    let src = format!(
        "{}\n@group(0) @binding(0) var<storage, read> ctr: array<vec4<u32>>;\n\
         @group(0) @binding(1) var<storage, read> keys: array<vec2<u32>>;\n\
         @group(0) @binding(2) var<storage, read_write> words: array<vec4<u32>>;\n\
         @compute @workgroup_size(64) fn main(@builtin(global_invocation_id) g: vec3<u32>) {{\n\
             if (g.x < arrayLength(&ctr)) {{ words[g.x] = philox4x32_10(ctr[g.x], keys[g.x]); }}\n\
         }}\n",
        neurokernels::shaders::PHILOX.source
    );
    let dev = ctx.device();
    let module = dev.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("philox-test"),
        source: wgpu::ShaderSource::Wgsl(src.into()),
    });
    let pipe = dev.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some("philox-test"),
        layout: None,
        module: &module,
        entry_point: Some("main"),
        compilation_options: Default::default(),
        cache: None,
    });
    let storage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC;
    let c_buf = dev.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: None,
        contents: bytemuck::cast_slice(&counters),
        usage: storage,
    });
    let k_buf = dev.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: None,
        contents: bytemuck::cast_slice(&keys),
        usage: storage,
    });
    let bytes = (counters.len() * 16) as u64;
    let out = dev.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: bytes,
        usage: storage,
        mapped_at_creation: false,
    });
    let stage = dev.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: bytes,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let bg = dev.create_bind_group(&wgpu::BindGroupDescriptor {
        label: None,
        layout: &pipe.get_bind_group_layout(0),
        entries: &[
            wgpu::BindGroupEntry {
                binding: 0,
                resource: c_buf.as_entire_binding(),
            },
            wgpu::BindGroupEntry {
                binding: 1,
                resource: k_buf.as_entire_binding(),
            },
            wgpu::BindGroupEntry {
                binding: 2,
                resource: out.as_entire_binding(),
            },
        ],
    });
    let mut enc = dev.create_command_encoder(&Default::default());
    {
        let mut pass = enc.begin_compute_pass(&Default::default());
        pass.set_pipeline(&pipe);
        pass.set_bind_group(0, &bg, &[]);
        pass.dispatch_workgroups((counters.len() as u32).div_ceil(64), 1, 1);
    }
    enc.copy_buffer_to_buffer(&out, 0, &stage, 0, bytes);
    let idx = ctx.queue().submit(Some(enc.finish()));
    stage
        .slice(..)
        .map_async(wgpu::MapMode::Read, |r| r.expect("map"));
    dev.poll(wgpu::PollType::Wait {
        submission_index: Some(idx),
        timeout: None,
    })
    .expect("poll");
    let words: Vec<[u32; 4]> = {
        let view = stage.slice(..).get_mapped_range().expect("mapped range");
        bytemuck::pod_collect_to_vec(&view)
    };
    let mut bad = 0;
    for (k, w) in words.iter().enumerate() {
        let want = philox4x32_10(counters[k], keys[k]);
        if *w != want {
            bad += 1;
            if bad < 5 {
                eprintln!(
                    "item {k}: counter {:x?} key {:x?}: wgsl {w:x?}, rust {want:x?}",
                    counters[k], keys[k]
                );
            }
        }
    }
    assert_eq!(bad, 0, "{bad} of {} Philox blocks differ", words.len());
    // And the known answer, through the shader.
    assert_eq!(
        philox4x32_10([0, 0, 0, 0], [0, 0]),
        [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]
    );
}

// ---------------------------------------------------------------------------------------------
// Against the seed (nemos 0.2.9, float64)

fn reference_net() -> Net {
    let c = "simulate_small_softplus_x64";
    Net {
        cc: npy(c, "coupling_coef.npy"),
        ffc: npy(c, "feedforward_coef.npy"),
        icp: npy(c, "intercepts.npy"),
        basis: npy(c, "coupling_basis_matrix.npy"),
        init: npy(c, "init_y.npy"),
        ff: npy(c, "feedforward_input.npy"),
    }
}

/// First-step rates equal the seed's (which depend only on `init_y`), on both engines, and
/// the direct formula evaluated here: `f32` output rounding on the CPU, `f32` arithmetic on
/// the GPU (drive of a few terms of size O(1): a few ulps).
#[test]
fn spec_first_step_rates_equal_the_seed_and_the_formula() {
    let net = reference_net();
    let seed_rates: Array1<f64> = npy("simulate_small_softplus_x64", "first_step_rates.npy");
    let (_, direct) = truth(&net, Link::Softplus, None, None);
    for (name, e) in engines() {
        let (spikes, rates) = simulate_recurrent(
            &e,
            net.cc.view().into_dyn(),
            net.ffc.view().into_dyn(),
            net.icp.view().into_dyn(),
            0,
            net.ff.view().into_dyn(),
            net.basis.view().into_dyn(),
            net.init.view().into_dyn(),
            Link::Softplus,
        )
        .expect("simulate");
        assert_eq!(spikes.dim(), (300, 4));
        let got: Vec<f32> = rates.row(0).to_vec();
        let tol = if name == "cpu" { 1e-7 } else { 2e-6 };
        let (e1, k1) = max_rel(&got, seed_rates.as_slice().expect("slice"), 1e-12);
        let (e2, _) = max_rel(&got, &direct.row(0).to_vec(), 1e-12);
        println!("{name}: first-step rates vs seed: max rel {e1:.2e}; vs formula {e2:.2e}");
        assert!(
            e1 <= tol && e2 <= tol,
            "{name}: neuron {k1}: {e1:e} / {e2:e}"
        );
        // Spikes are counts.
        assert!(spikes.iter().all(|&x| x >= 0.0 && x.fract() == 0.0));
    }
    // Exp link, random network: first step against the formula.
    let net = Net::random(3, 9, 11, 3, 2, 1, 0.3, -1.0);
    let (_, direct) = truth(&net, Link::Exp, None, None);
    for (name, e) in engines() {
        let out = net.run(&e, Link::Exp, &[1], Sampling::Poisson);
        let got: Vec<f32> = out.rates.iter().cloned().collect();
        let (err, _) = max_rel(&got, &direct.row(0).to_vec(), 1e-12);
        println!("{name}: exp link first step vs formula: max rel {err:.2e}");
        assert!(
            err <= if name == "cpu" { 1e-7 } else { 2e-6 },
            "{name}: {err:e}"
        );
    }
}

/// The expected-value rollout (the drawn row is the rate) matches the seed's over 300 steps.
/// CPU: `f64` recurrence, `f32` output (≤ 1e-7). GPU: `f32` recurrence; the errors are
/// rounding of a contracting recurrence, bounded by 1e-5 here.
#[test]
fn spec_deterministic_rollout_matches_the_seed() {
    let net = reference_net();
    let seed: Array2<f64> = npy("simulate_small_softplus_x64", "det_rates.npy");
    let seed_flat: Vec<f64> = seed.iter().cloned().collect();
    for (name, e) in engines() {
        let out = net.run(&e, Link::Softplus, &[0], Sampling::Expected);
        assert_eq!(
            out.rates, out.spikes,
            "{name}: expected mode draws the rate"
        );
        let (err, k) = max_rel(&flat(&out.rates), &seed_flat, 1e-12);
        println!("{name}: deterministic rollout vs nemos, 300 steps: max rel {err:.2e}");
        let tol = if name == "cpu" { 1e-7 } else { 1e-5 };
        assert!(
            err <= tol,
            "{name}: step {} neuron {}: {err:e}",
            k / 4,
            k % 4
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Against the f64 truth, and GPU against CPU

/// Both engines follow the truth on awkward sizes, both links and both modes: the CPU to
/// `f32` output rounding (it is an `f64` recurrence), the GPU to 1e-5 relative (its `f32`
/// drive), and in Poisson mode the CPU's draws are the truth's draws exactly.
#[test]
fn parity_both_engines_follow_the_truth() {
    for (case, &(n, ws, nb, nf, t)) in [
        (1, 1, 1, 1, 40),
        (7, 13, 3, 2, 120),
        (65, 9, 5, 1, 30),
        (4, 5, 0, 1, 20),
    ]
    .iter()
    .enumerate()
    {
        let net = Net::random(100 + case as u64, n, ws, nb, nf, t, 0.3 / n as f64, -1.0);
        for link in [Link::Softplus, Link::Exp] {
            let (_, det) = truth(&net, link, None, None);
            let (sp, ra) = truth(&net, link, Some(42), None);
            for (name, e) in engines() {
                let out = net.run(&e, link, &[42], Sampling::Expected);
                let (err, _) = max_rel(&flat(&out.rates), det.as_slice().expect("c"), 1e-9);
                let tol = if name == "cpu" { 1e-7 } else { 1e-5 };
                assert!(
                    err <= tol,
                    "{name} {n}/{ws}/{nb} {link:?} expected: {err:e}"
                );
                let out = net.run(&e, link, &[42], Sampling::Poisson);
                if name == "cpu" {
                    let want: Vec<f32> = sp.iter().map(|&x| x as f32).collect();
                    assert_eq!(flat(&out.spikes), want, "{n}/{ws}/{nb} {link:?} draws");
                    let (err, _) = max_rel(&flat(&out.rates), ra.as_slice().expect("c"), 1e-9);
                    assert!(err <= 1e-7, "{link:?} poisson rates: {err:e}");
                }
            }
        }
    }
}

/// A stable network (32 neurons, window 50, 6 basis functions; coupling gain below 1) in the
/// expected-value mode: GPU and CPU rates agree at every one of 10 000 steps.
/// Tolerance 1e-4 relative: each GPU step rounds its drive in `f32` (a sum of 500 products,
/// relative error ~1e-6 of the sum of magnitudes), and the contracting recurrence keeps the
/// accumulated error within a small multiple of one step's. The run is far past llvmpipe's
/// 65 535-iteration limit per invocation (about 220 loop iterations per step here, 2.2 million over
/// the run): it checks
/// that the dispatches bound it.
#[test]
fn parity_deterministic_10000_steps_gpu_vs_cpu() {
    let (n, ws, nb, t) = (32, 50, 6, 10_000);
    let mut net = Net::random(11, n, ws, nb, 1, t, 0.0, -0.5);
    net.stabilise(12, 0.5 / n as f64);
    net.ff = Array3::from_shape_fn((t, n, 1), |(s, i, _)| ((s as f64) * 0.01 + i as f64).sin());
    let cpu = net.run(&Engine::cpu(), Link::Softplus, &[5], Sampling::Expected);
    let g = gpu();
    let op = net.op(&g, Link::Softplus);
    let (k, wg) = op.steps_per_dispatch().expect("gpu");
    println!("steps per dispatch {k}, workgroup {wg}");
    assert!(k < t);
    let out = net.run(&g, Link::Softplus, &[5], Sampling::Expected);
    let a = flat(&out.rates);
    let b: Vec<f64> = cpu.rates.iter().map(|&x| x as f64).collect();
    let (err, at) = max_rel(&a, &b, 1e-6);
    let mean = a.iter().map(|&x| x as f64).sum::<f64>() / a.len() as f64;
    println!(
        "deterministic {t} steps × {n} neurons: max rel GPU−CPU {err:.2e} (step {}, neuron {}), mean rate {mean:.3}",
        at / n,
        at % n
    );
    assert!(err <= 1e-4, "step {} neuron {}: {err:e}", at / n, at % n);
    // The last steps are as close as the first: no drift.
    let (late, _) = max_rel(&a[(t - 100) * n..], &b[(t - 100) * n..], 1e-6);
    assert!(late <= 1e-4);
}

/// Teacher forcing: GPU and CPU take the same history (the CPU's own spikes) at every step,
/// so their draws can be compared one by one. A draw may differ only where the rate sits
/// within float error of a sampling threshold: every mismatch must flip the `f64` sampler
/// under a relative change of the rate of at most 1e-4, and the mismatch rate must be below
/// 1e-4. Rates span 0.001 to ~30 (inversion and PTRS).
#[test]
fn parity_stochastic_teacher_forced_draws_agree() {
    let (n, ws, nb, t, trials) = (24, 20, 4, 2500, 2);
    let mut net = Net::random(21, n, ws, nb, 1, t, 0.01, 0.0);
    // Baselines from softplus⁻¹(0.001) to softplus⁻¹(30).
    for i in 0..n {
        let target: f64 = 10f64.powf(-3.0 + 4.5 * i as f64 / (n - 1) as f64);
        net.icp[i] = if target > 30.0 {
            target
        } else {
            target.exp_m1().ln()
        };
    }
    let seeds = [77, 78];
    let cpu = net.run(&Engine::cpu(), Link::Softplus, &seeds, Sampling::Poisson);
    let g = gpu();
    let mut op = net.op(&g, Link::Softplus);
    op.start(net.init.view().into_dyn(), &seeds, Sampling::Poisson)
        .expect("start");
    let out = op
        .run_forced(
            net.ff.view().into_dyn(),
            cpu.spikes.mapv(|x| x as f64).view().into_dyn(),
        )
        .expect("forced");
    let mut mismatches = 0usize;
    let total = t * trials * n;
    let mut max_rate_err = 0.0f64;
    for ((st, tr, i), &gs) in out.spikes.indexed_iter() {
        let cs = cpu.spikes[[st, tr, i]];
        let (rg, rc) = (out.rates[[st, tr, i]] as f64, cpu.rates[[st, tr, i]] as f64);
        max_rate_err = max_rate_err.max((rg - rc).abs() / rc.max(1e-9));
        if gs == cs {
            continue;
        }
        mismatches += 1;
        let key = key_of(seeds[tr]);
        let near: Vec<f64> = (-8..=8)
            .map(|d| sampler::poisson(rc * (1.0 + d as f64 * 1.25e-5), key, st as u64, i as u32))
            .collect();
        println!(
            "mismatch at step {st} trial {tr} neuron {i}: rate {rc}, gpu {gs}, cpu {cs}; f64 draws near the rate: {near:?}"
        );
        assert!(
            near.contains(&(gs as f64)) && near.contains(&(cs as f64)),
            "a draw differs away from any sampling threshold"
        );
    }
    let rate = mismatches as f64 / total as f64;
    println!(
        "teacher-forced draws: {mismatches} of {total} differ (rate {rate:.1e}); max rel rate difference {max_rate_err:.1e}"
    );
    assert!(rate <= 1e-4, "mismatch rate {rate:e}");
    assert!(max_rate_err <= 1e-5);
}

/// Splitting the time axis into chunks, or a batch into single trials, changes nothing:
/// bit-identical spikes and rates on each engine (the counter is the absolute step, the
/// key the trial's seed, the state carried on the device).
#[test]
fn chunking_and_batch_split_are_bit_identical() {
    let (n, ws, nb, t) = (9, 17, 4, 160);
    let net = Net::random(5, n, ws, nb, 2, t, 0.2, -0.5);
    let seeds = [3, 1 << 40, 99];
    for (name, e) in engines() {
        let whole = net.run(&e, Link::Softplus, &seeds, Sampling::Poisson);
        let mut op = net.op(&e, Link::Softplus);
        op.start(net.init.view().into_dyn(), &seeds, Sampling::Poisson)
            .expect("start");
        let mut parts = Vec::new();
        let cuts = [0, 0, 1, 40, 57, 100, 160];
        for w in cuts.windows(2) {
            let chunk = net.ff.slice(s![w[0]..w[1], .., ..]);
            let o = op.run(chunk.into_dyn()).expect("chunk");
            assert_eq!(o.spikes.dim().0, w[1] - w[0]);
            parts.push(o);
        }
        assert_eq!(op.step(), t as u64);
        let sp: Vec<_> = parts.iter().map(|o| o.spikes.view()).collect();
        let ra: Vec<_> = parts.iter().map(|o| o.rates.view()).collect();
        assert_eq!(
            ndarray::concatenate(Axis(0), &sp).expect("cat"),
            whole.spikes,
            "{name}: chunked spikes"
        );
        assert_eq!(
            ndarray::concatenate(Axis(0), &ra).expect("cat"),
            whole.rates,
            "{name}: chunked rates"
        );
        // Trial 1 alone draws what it drew in the batch.
        let alone = net.run(&e, Link::Softplus, &[seeds[1]], Sampling::Poisson);
        assert_eq!(
            alone.spikes.index_axis(Axis(1), 0),
            whole.spikes.index_axis(Axis(1), 1),
            "{name}: batch split"
        );
        assert!(whole.spikes.iter().sum::<f32>() > 0.0);
    }
}

/// Per-trial inputs and initial windows `(T, B, n, nf)` / `(ws, B, n)`: each trial equals
/// the one-trial run with its own input, window and seed.
#[test]
fn batched_trials_with_their_own_inputs() {
    let (n, ws, nb, nf, t, b) = (6, 8, 3, 2, 50, 3);
    let base = Net::random(8, n, ws, nb, nf, t, 0.2, -0.3);
    let mut r = rng(9);
    let ff = Array4::from_shape_fn((t, b, n, nf), |_| r.random_range(-1.0..1.0));
    let init = Array3::from_shape_fn((ws, b, n), |_| r.random_range(0..2) as f64);
    let seeds = [10, 20, 30];
    for (name, e) in engines() {
        let out = simulate_recurrent_batch(
            &e,
            base.cc.view().into_dyn(),
            base.ffc.view().into_dyn(),
            base.icp.view().into_dyn(),
            &seeds,
            ff.view().into_dyn(),
            base.basis.view().into_dyn(),
            init.view().into_dyn(),
            Link::Softplus,
            Sampling::Poisson,
        )
        .expect("batch");
        for (k, &seed) in seeds.iter().enumerate() {
            let mut one = base.clone();
            one.ff = ff.index_axis(Axis(1), k).to_owned();
            one.init = init.index_axis(Axis(1), k).to_owned();
            let o = one.run(&e, Link::Softplus, &[seed], Sampling::Poisson);
            assert_eq!(
                o.spikes.index_axis(Axis(1), 0),
                out.spikes.index_axis(Axis(1), k),
                "{name} trial {k}"
            );
            assert_eq!(
                o.rates.index_axis(Axis(1), 0),
                out.rates.index_axis(Axis(1), k)
            );
        }
    }
}

/// A stable network's long-run mean rates lie within statistical bounds of the deterministic
/// fixed point (weak coupling, so the noise-induced (Jensen) shift of the mean is well below
/// the bound): 16 trials × 4 000 steps on the GPU, checked per neuron at 5 standard errors
/// (inflated by the network's gain for the autocorrelation), and the CPU run the same way.
#[test]
fn long_run_mean_rates_match_the_fixed_point() {
    let (n, ws, nb, t, trials) = (8, 30, 4, 4000, 16);
    let mut net = Net::random(31, n, ws, nb, 1, t, 0.0, 0.0);
    net.ff.fill(0.0);
    let g = 0.05;
    net.stabilise(32, g / n as f64);
    for i in 0..n {
        net.icp[i] = (0.2f64 + 0.05 * i as f64).exp_m1().ln();
    }
    net.init.fill(0.2);
    // Fixed point: the expected-value rollout after it settled.
    let det = net.run(&Engine::cpu(), Link::Softplus, &[0], Sampling::Expected);
    let fixed: Vec<f64> = (0..n).map(|i| det.rates[[t - 1, 0, i]] as f64).collect();
    let seeds: Vec<u64> = (0..trials as u64).map(|k| 1000 + k).collect();
    for (name, e) in engines() {
        let out = net.run(&e, Link::Softplus, &seeds, Sampling::Poisson);
        let burn = 200;
        for (i, &fp) in fixed.iter().enumerate() {
            let x = out.spikes.slice(s![burn.., .., i]);
            let mean = x.iter().map(|&v| v as f64).sum::<f64>() / x.len() as f64;
            let se = (fp / x.len() as f64).sqrt() / (1.0 - g);
            let z = (mean - fp) / se;
            println!(
                "{name}: neuron {i}: mean count {mean:.4}, fixed point {:.4}, z = {z:+.2}",
                fp
            );
            assert!(z.abs() < 5.0, "{name} neuron {i}: z = {z}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The Poisson sampler

/// Moments and a chi-square goodness of fit of 50 000 draws per rate from 1e-4 to 1e3, on
/// both engines; the two engines' draws are compared one by one too.
#[test]
fn sampler_moments_and_goodness_of_fit() {
    let rates = [
        1e-4, 1e-3, 0.01, 0.1, 0.5, 1.0, 2.5, 7.0, 9.99, 10.0, 10.5, 30.0, 100.0, 1000.0,
    ];
    let per = 50_000usize;
    let input = Array2::from_shape_fn((per, rates.len()), |(_, i)| rates[i] as f32);
    let mut draws = Vec::new();
    for (name, e) in engines() {
        let d = poisson_samples(&e, input.view(), 2024, 0).expect("draws");
        for (i, &lam) in rates.iter().enumerate() {
            let col = d.column(i);
            assert!(col.iter().all(|&x| x >= 0.0 && x.fract() == 0.0));
            let mean = col.iter().map(|&x| x as f64).sum::<f64>() / per as f64;
            let var =
                col.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / (per - 1) as f64;
            let z_mean = (mean - lam) / (lam / per as f64).sqrt();
            // Var of the sample variance ≈ (λ + 2λ²)/N.
            let z_var = (var - lam) / ((lam + 2.0 * lam * lam) / per as f64).sqrt();
            // Chi-square over cells of expected count ≥ 20, tails pooled.
            let pois = Poisson::new(lam).expect("poisson");
            let maxk = col.iter().fold(0.0f32, |a, &b| a.max(b)) as usize;
            let mut counts = vec![0u64; maxk + 2];
            for &x in col.iter() {
                counts[x as usize] += 1;
            }
            // Consecutive counts pooled into cells of at least 20 expected; the upper tail
            // pooled once less than 20 remain.
            let mut cells: Vec<(f64, f64)> = Vec::new();
            let (mut o, mut ex, mut k) = (0.0, 0.0, 0usize);
            loop {
                o += *counts.get(k).unwrap_or(&0) as f64;
                ex += pois.pmf(k as u64) * per as f64;
                let rest = (1.0 - pois.cdf(k as u64)) * per as f64;
                if rest < 20.0 {
                    o += counts.iter().skip(k + 1).map(|&c| c as f64).sum::<f64>();
                    cells.push((o, ex + rest));
                    break;
                }
                if ex >= 20.0 {
                    cells.push((o, ex));
                    (o, ex) = (0.0, 0.0);
                }
                k += 1;
            }
            let chi2: f64 = cells
                .iter()
                .filter(|c| c.1 > 0.0)
                .map(|(o, e)| (o - e) * (o - e) / e)
                .sum();
            let dof = (cells.len() - 1).max(1) as f64;
            let p = 1.0 - ChiSquared::new(dof).expect("chi2").cdf(chi2);
            println!(
                "{name} λ={lam}: mean {mean:.5} (z {z_mean:+.2}), var {var:.5} (z {z_var:+.2}), chi² {chi2:.1} on {dof} dof, p = {p:.3}"
            );
            assert!(z_mean.abs() < 5.0 && z_var.abs() < 5.0, "{name} λ={lam}");
            assert!(p > 1e-4, "{name} λ={lam}: goodness of fit p = {p:e}");
        }
        draws.push(d);
    }
    // Each differing draw must sit at a sampling threshold: a relative change of the rate
    // of at most 1e-5 moves the f64 draw onto the GPU's.
    let mut diff = 0;
    for ((t, i), &c) in draws[0].indexed_iter() {
        let g = draws[1][[t, i]];
        if g == c {
            continue;
        }
        diff += 1;
        let near: Vec<f64> = (-8..=8)
            .map(|d| {
                sampler::poisson(
                    rates[i] * (1.0 + d as f64 * 1.25e-6),
                    key_of(2024),
                    t as u64,
                    i as u32,
                )
            })
            .collect();
        println!(
            "draw ({t}, λ={}): cpu {c}, gpu {g}; f64 draws near λ: {near:?}",
            rates[i]
        );
        assert!(
            near.contains(&(g as f64)),
            "a draw differs away from a threshold"
        );
    }
    println!(
        "sampler: GPU and CPU draws differ at {diff} of {} elements",
        draws[0].len()
    );
    assert!(diff as f64 <= 1e-4 * draws[0].len() as f64);
}

/// The smallest rates are not rounded away: with λ = 1e-4 a spike has probability
/// 1 − e^(−λ) ≈ 1e-4 (2 000 000 draws: 200 expected), checked on the CPU sampler, whose
/// uniforms resolve 2⁻³² near 0.
#[test]
fn sampler_small_rates_are_exact() {
    let key = key_of(5);
    let n = 2_000_000u64;
    let ones = (0..n)
        .filter(|&t| sampler::poisson(1e-4, key, t, 0) >= 1.0)
        .count() as f64;
    let expect = n as f64 * -(-1e-4f64).exp_m1();
    let z = (ones - expect) / expect.sqrt();
    println!("λ = 1e-4: {ones} spikes in {n} draws, expected {expect:.1} (z {z:+.2})");
    assert!(z.abs() < 5.0);
}

// ---------------------------------------------------------------------------------------------
// Errors

fn sim(
    e: &Engine,
    cc: ArrayD<f64>,
    ffc: ArrayD<f64>,
    icp: ArrayD<f64>,
    ff: ArrayD<f64>,
    basis: ArrayD<f64>,
    init: ArrayD<f64>,
) -> Result<(Array2<f32>, Array2<f32>), Error> {
    simulate_recurrent(
        e,
        cc.view(),
        ffc.view(),
        icp.view(),
        1,
        ff.view(),
        basis.view(),
        init.view(),
        Link::Softplus,
    )
}

/// Every validation error of the seed, in its order, and non-finite inputs, on both engines.
#[test]
fn error_every_seed_validation_and_non_finite_inputs() {
    let net = Net::random(1, 4, 6, 3, 2, 10, 0.1, -1.0);
    let (cc, ffc, icp, ff, basis, init) = (
        net.cc.clone().into_dyn(),
        net.ffc.clone().into_dyn(),
        net.icp.clone().into_dyn(),
        net.ff.clone().into_dyn(),
        net.basis.clone().into_dyn(),
        net.init.clone().into_dyn(),
    );
    for (name, e) in engines() {
        let ok = sim(
            &e,
            cc.clone(),
            ffc.clone(),
            icp.clone(),
            ff.clone(),
            basis.clone(),
            init.clone(),
        );
        assert!(ok.is_ok(), "{name}: {ok:?}");
        let expect = |r: Result<(Array2<f32>, Array2<f32>), Error>, what: &str, needle: &str| {
            let err = r.expect_err(what);
            let msg = err.to_string();
            assert!(
                msg.to_lowercase().contains(&needle.to_lowercase()),
                "{name}: {what}: `{msg}` lacks `{needle}`"
            );
            err
        };
        // The inputs in `sim`'s order, one of them replaced.
        const CC: usize = 0;
        const FFC: usize = 1;
        const ICP: usize = 2;
        const FF: usize = 3;
        const BASIS: usize = 4;
        const INIT: usize = 5;
        let inputs = [&cc, &ffc, &icp, &ff, &basis, &init];
        let with = |slot: usize, a: ArrayD<f64>| {
            let mut v = inputs.map(|x| x.clone());
            v[slot] = a;
            let [cc, ffc, icp, ff, basis, init] = v;
            sim(&e, cc, ffc, icp, ff, basis, init)
        };
        // Input `slot` with the entry at `at` set to `v`.
        let set = |slot: usize, at: &[usize], v: f64| {
            let mut a = inputs[slot].clone();
            a[at] = v;
            a
        };
        for (slot, shape, what, needle) in [
            // Inconsistent neuron counts, in each input.
            (
                FF,
                vec![10, 5, 2],
                "ff neurons",
                "number of neurons provided in the inputs is inconsistent",
            ),
            (FFC, vec![5, 2], "ff coef neurons", "inconsistent"),
            (INIT, vec![6, 5], "init neurons", "inconsistent"),
            (CC, vec![4, 5, 3], "coupling senders", "inconsistent"),
            (ICP, vec![5], "intercepts", "inconsistent"),
            // feedforward_input must be three-dimensional.
            (FF, vec![10, 4], "ff rank", "three dimensions"),
            // Inconsistent number of features.
            (
                FF,
                vec![10, 4, 3],
                "features",
                "inconsistent number of features",
            ),
            // init_y must be two-dimensional.
            (INIT, vec![6], "init rank", "inconsistent"),
            (INIT, vec![6, 1, 1, 4], "init rank 4", "two dimensions"),
            // Basis functions of the basis vs the coefficients.
            (BASIS, vec![6, 4], "basis count", "basis functions"),
            // A window of no lags.
            (BASIS, vec![0, 3], "empty window", "one row per lag"),
        ] {
            expect(with(slot, ArrayD::zeros(shape)), what, needle);
        }
        // Invalid entries in the input (the seed's error_invalid_entry), NaN and inf.
        for bad in [f64::NAN, f64::INFINITY] {
            let err = expect(
                with(FF, set(FF, &[7, 2, 1], bad)),
                "non-finite input",
                "non-finite",
            );
            assert!(
                matches!(
                    err,
                    Error::NonFinite {
                        what: "feedforward_input",
                        sample: 7,
                        channel: 5,
                        ..
                    }
                ),
                "{err:?}"
            );
        }
        // Window of init_y vs the basis.
        let err = expect(
            with(INIT, ArrayD::zeros(vec![7, 4])),
            "window",
            "same window size",
        );
        assert!(err.to_string().contains("window size: 7"), "{err}");
        // Non-finite parameters and initial window.
        for (slot, at, v, what, needle) in [
            (CC, &[1, 2, 0][..], f64::NAN, "coef nan", "coupling_coef"),
            (
                BASIS,
                &[0, 0],
                f64::NEG_INFINITY,
                "basis inf",
                "coupling_basis_matrix",
            ),
            (INIT, &[3, 3], f64::NAN, "init nan", "init_y"),
            (ICP, &[0], f64::INFINITY, "intercept inf", "intercepts"),
        ] {
            expect(with(slot, set(slot, at, v)), what, needle);
        }
        // Wrong rank of a parameter.
        let cc2 = cc.clone().into_shape_with_order(vec![4, 12]).expect("r");
        expect(with(CC, cc2), "coef rank", "coupling_coef");
        // No seeds.
        let err = simulate_recurrent_batch(
            &e,
            cc.view(),
            ffc.view(),
            icp.view(),
            &[],
            ff.view(),
            basis.view(),
            init.view(),
            Link::Softplus,
            Sampling::Poisson,
        )
        .expect_err("no seeds");
        assert!(matches!(err, Error::InvalidSetting { name: "seeds", .. }));
        // run before start.
        let mut op = net.op(&e, Link::Softplus);
        assert!(op.run(ff.view()).is_err());
        // Empty input: empty output.
        op.start(init.view(), &[1, 2], Sampling::Poisson)
            .expect("start");
        let o = op.run(ArrayD::zeros(vec![0, 4, 2]).view()).expect("empty");
        assert_eq!(o.spikes.dim(), (0, 2, 4));
        assert_eq!(op.step(), 0);
    }
}

/// A rate that overflows is an error naming the step and the neuron (not a NaN spike), the
/// same on both engines; the operator is left as it was, so the next chunk gives what a run
/// that never saw the bad chunk gives.
#[test]
fn error_overflow_names_step_and_neuron_and_leaves_state_unchanged() {
    let (n, ws, nb, t) = (5, 4, 2, 12);
    let mut net = Net::random(2, n, ws, nb, 1, t, 0.05, -1.0);
    net.cc.fill(0.0);
    net.ffc.fill(1.0);
    net.ff.fill(0.0);
    let mut bad = net.ff.clone();
    for s in 0..t {
        bad[[s, 3, 0]] = 10.0 * s as f64; // exp(90) overflows f32 at step 9
    }
    for (name, e) in engines() {
        for sampling in [Sampling::Expected, Sampling::Poisson] {
            let mut op = net.op(&e, Link::Exp);
            op.start(net.init.view().into_dyn(), &[4, 5], sampling)
                .expect("start");
            let a = op
                .run(net.ff.slice(s![..3, .., ..]).into_dyn())
                .expect("first chunk");
            let err = op.run(bad.view().into_dyn()).expect_err("overflow");
            println!("{name} {sampling:?}: {err}");
            assert!(
                matches!(
                    err,
                    Error::NonFinite {
                        what: "rate",
                        sample: 12,
                        channel: 3,
                        ..
                    }
                ),
                "{name}: {err:?}"
            );
            assert_eq!(op.step(), 3);
            let c = op
                .run(net.ff.slice(s![3.., .., ..]).into_dyn())
                .expect("after the error");
            let mut fresh = net.op(&e, Link::Exp);
            fresh
                .start(net.init.view().into_dyn(), &[4, 5], sampling)
                .expect("start");
            let a2 = fresh
                .run(net.ff.slice(s![..3, .., ..]).into_dyn())
                .expect("a");
            let c2 = fresh
                .run(net.ff.slice(s![3.., .., ..]).into_dyn())
                .expect("c");
            assert_eq!(a, a2);
            assert_eq!(c, c2, "{name}: state after a rejected chunk");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// `difference_of_gammas` against the seed's outputs (scipy's gamma), including its NaN case,
/// and its errors with the seed's messages.
#[test]
fn helpers_difference_of_gammas_matches_the_seed() {
    let p = reference("difference_of_gammas").join("params.json");
    let params: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).expect("params")).expect("json");
    let get =
        |kw: &serde_json::Value, k: &str, d: f64| kw.get(k).and_then(|v| v.as_f64()).unwrap_or(d);
    for case in params["cases"].as_array().expect("cases") {
        let kw = &case["kwargs"];
        let ws = kw["ws"].as_u64().expect("ws") as usize;
        let got = difference_of_gammas(
            ws,
            get(kw, "upper_percentile", 0.99),
            get(kw, "inhib_a", 1.0),
            get(kw, "excit_a", 2.0),
            get(kw, "inhib_b", 1.0),
            get(kw, "excit_b", 2.0),
        )
        .expect("dog");
        let want: Array1<f64> = npy("difference_of_gammas", case["file"].as_str().expect("f"));
        assert_eq!(got.len(), want.len());
        let mut worst = 0.0f64;
        for (a, b) in got.iter().zip(want.iter()) {
            if b.is_nan() {
                assert!(a.is_nan(), "{kw}: NaN expected");
                continue;
            }
            worst = worst.max((a - b).abs());
        }
        println!("difference_of_gammas {kw}: max abs error {worst:.1e}");
        assert!(worst <= 1e-12, "{kw}: {worst:e}");
    }
    for err in params["errors"].as_array().expect("errors") {
        let kw = &err["kwargs"];
        let r = difference_of_gammas(
            kw["ws"].as_u64().expect("ws") as usize,
            get(kw, "upper_percentile", 0.99),
            get(kw, "inhib_a", 1.0),
            get(kw, "excit_a", 2.0),
            get(kw, "inhib_b", 1.0),
            get(kw, "excit_b", 2.0),
        );
        let msg = r.expect_err("error").to_string();
        let want = err["message"].as_str().expect("message");
        assert!(msg.contains(want), "`{msg}` lacks `{want}`");
    }
    // Hand-computed: ws = 3, defaults. Gamma(1, 1): ppf(0.99) = ln 100; Gamma(2, rate 2):
    // cdf(x) = 1 − e^(−2x)(1 + 2x), whose 0.99 quantile is smaller, so xmax = ln 100.
    let f = difference_of_gammas(3, 0.99, 1.0, 2.0, 1.0, 2.0).expect("dog");
    let xmax = 100f64.ln();
    let raw: Vec<f64> = [0.0, xmax / 2.0, xmax]
        .iter()
        .map(|&x| 4.0 * x * (-2.0 * x).exp() - (-x).exp())
        .collect();
    let norm = raw.iter().map(|v| v * v).sum::<f64>().sqrt();
    for k in 0..3 {
        assert!(
            (f[k] - raw[k] / norm).abs() < 1e-13,
            "{k}: {} vs {}",
            f[k],
            raw[k] / norm
        );
    }
    // The gamma quantile at a known point: Gamma(2, rate 2) at p = 1 − 3e^(−2) is x = 1.
    let g = difference_of_gammas(2, 1.0 - 3.0 * (-2.0f64).exp(), 50.0, 2.0, 50.0, 2.0);
    assert!(g.is_ok());
}

/// `RaisedCosineLogEval` against nemos' bases and grids, its errors with nemos' messages,
/// and its properties: values in [0, 1], each function peaking at 1 where `u` meets its peak,
/// neighbours overlapping, a partition of unity between the first and last peak (width 2),
/// and decay to zero at the end of the window.
#[test]
fn helpers_raised_cosine_log_matches_nemos() {
    let p = reference("raised_cosine_log").join("params.json");
    let params: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).expect("params")).expect("json");
    for (k, case) in params["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .enumerate()
    {
        let kw = &case["kwargs"];
        let mut b = RaisedCosineLogEval::new(case["n_basis_funcs"].as_u64().expect("n") as usize);
        if let Some(w) = kw.get("width").and_then(|v| v.as_f64()) {
            b.width = w;
        }
        if let Some(w) = kw.get("time_scaling").and_then(|v| v.as_f64()) {
            b.time_scaling = w;
        }
        if let Some(w) = kw.get("enforce_decay_to_zero").and_then(|v| v.as_bool()) {
            b.enforce_decay_to_zero = w;
        }
        let ws = case["window"].as_u64().expect("window") as usize;
        let (grid, basis) = b.evaluate_on_grid(ws).expect("basis");
        let want_grid: Array1<f64> = npy("raised_cosine_log", &format!("grid{k}.npy"));
        let want: Array2<f32> = {
            let p = reference("raised_cosine_log").join(format!("basis{k}.npy"));
            ndarray_npy::read_npy(&p).expect("basis npy")
        };
        assert_eq!(grid, want_grid, "case {k}");
        assert_eq!(basis.dim(), want.dim());
        let worst = basis
            .iter()
            .zip(want.iter())
            .map(|(a, &b)| (a - b as f64).abs())
            .fold(0.0, f64::max);
        assert!(worst <= 1e-6, "case {k}: {worst:e} (float32 reference)");
        assert!(basis.iter().all(|&v| (0.0..=1.0).contains(&v)));
    }
    for err in params["errors"].as_array().expect("errors") {
        let cfg = &err["cfg"];
        let mut b = RaisedCosineLogEval::new(cfg["n"].as_u64().expect("n") as usize);
        if let Some(w) = cfg.get("width").and_then(|v| v.as_f64()) {
            b.width = w;
        }
        if let Some(w) = cfg.get("time_scaling").and_then(|v| v.as_f64()) {
            b.time_scaling = w;
        }
        let msg = b
            .evaluate_on_grid(cfg["ws"].as_u64().expect("ws") as usize)
            .expect_err("error")
            .to_string();
        let want = err["message"].as_str().expect("message");
        assert!(msg.contains(want), "`{msg}` lacks `{want}`");
    }
    // Properties, on a fine grid in the warped coordinate.
    let b = RaisedCosineLogEval::new(6);
    let ts: f64 = 50.0;
    let last = 1.0 - 2.0 / (6.0 + 2.0 - 1.0);
    let peaks: Vec<f64> = (0..6).map(|i| last * i as f64 / 5.0).collect();
    // x with u(x) = c: x = ((ts+1)^c − 1)/ts.
    let x_of = |u: f64| ((ts + 1.0).powf(u) - 1.0) / ts;
    let at_peaks = b
        .evaluate(&peaks.iter().map(|&c| x_of(c)).collect::<Vec<_>>())
        .expect("eval");
    for i in 0..6usize {
        assert!(
            (at_peaks[[i, i]] - 1.0).abs() < 1e-12,
            "function {i} peaks at 1"
        );
        for j in 0..6usize {
            if j.abs_diff(i) >= 2 {
                assert!(at_peaks[[i, j]].abs() < 1e-12, "({i}, {j}) compact support");
            }
        }
    }
    // Width 2: every point between the second and the second-to-last peak lies under
    // exactly two full overlaps, and the functions sum to the width.
    let xs: Vec<f64> = (0..=200)
        .map(|k| x_of(peaks[1] + (peaks[4] - peaks[1]) * k as f64 / 200.0))
        .collect();
    let v = b.evaluate(&xs).expect("eval");
    for (k, row) in v.rows().into_iter().enumerate() {
        assert!(
            (row.sum() - 2.0).abs() < 1e-12,
            "sum of the functions at {k}: {}",
            row.sum()
        );
    }
    // Neighbours overlap symmetrically: halfway between two peaks both are (1 + cos(π/4))/2.
    let mid = b
        .evaluate(&[x_of((peaks[2] + peaks[3]) / 2.0)])
        .expect("mid");
    let half = 0.5 * (1.0 + std::f64::consts::FRAC_PI_4.cos());
    assert!((mid[[0, 2]] - half).abs() < 1e-12 && (mid[[0, 3]] - half).abs() < 1e-12);
    // Decay to zero at the window's end.
    let end = b.evaluate(&[1.0]).expect("end");
    assert!(end.iter().all(|&x| x.abs() < 1e-12));
}

/// `regress_filter` recovers known weights exactly (filters built from the basis), handles a
/// rank-deficient basis with the minimum-norm solution, and raises the seed's errors.
#[test]
fn helpers_regress_filter_recovers_known_weights() {
    let (ws, nb, nr, ns) = (40, 7, 3, 4);
    let (_, basis) = RaisedCosineLogEval::new(nb)
        .evaluate_on_grid(ws)
        .expect("basis");
    let mut r = rng(4);
    let w = Array3::from_shape_fn((nr, ns, nb), |_| r.random_range(-2.0..2.0));
    let filters = Array3::from_shape_fn((ws, nr, ns), |(t, i, j)| {
        (0..nb).map(|b| basis[[t, b]] * w[[i, j, b]]).sum::<f64>()
    });
    let got = regress_filter(filters.view().into_dyn(), basis.view().into_dyn()).expect("lstsq");
    assert_eq!(got.dim(), (nr, ns, nb));
    let worst = got
        .iter()
        .zip(w.iter())
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    println!("regress_filter: max weight error {worst:.1e}");
    assert!(worst < 1e-10);
    // The seed's example: a difference of gammas in 10 functions over 100 samples fits well.
    let dog = difference_of_gammas(100, 0.99, 1.0, 2.0, 1.0, 2.0).expect("dog");
    let (_, b10) = RaisedCosineLogEval::new(10)
        .evaluate_on_grid(100)
        .expect("b");
    let bank = dog.clone().into_shape_with_order((100, 1, 1)).expect("r");
    let wt = regress_filter(bank.view().into_dyn(), b10.view().into_dyn()).expect("fit");
    let approx: Array1<f64> = b10.dot(&wt.slice(s![0, 0, ..]));
    let resid = (&approx - &dog).mapv(|x| x * x).sum().sqrt();
    assert!(resid < 0.1, "residual {resid}");
    // Duplicate column: minimum-norm split of the weight.
    let mut dup = Array2::zeros((ws, 2));
    dup.column_mut(0).assign(&basis.column(2));
    dup.column_mut(1).assign(&basis.column(2));
    let f = basis
        .column(2)
        .mapv(|x| 3.0 * x)
        .into_shape_with_order((ws, 1, 1))
        .expect("r");
    let wd = regress_filter(f.view().into_dyn(), dup.view().into_dyn()).expect("fit");
    assert!((wd[[0, 0, 0]] - 1.5).abs() < 1e-9 && (wd[[0, 0, 1]] - 1.5).abs() < 1e-9);
    // Errors.
    let e = regress_filter(filters.view().into_dyn(), w.view().into_dyn()).expect_err("basis 3d");
    assert!(e.to_string().contains("2 dimensional"), "{e}");
    let e = regress_filter(basis.view().into_dyn(), basis.view().into_dyn()).expect_err("2d");
    assert!(e.to_string().contains("3 dimensional"), "{e}");
    let e = regress_filter(
        filters.slice(s![..30, .., ..]).into_dyn(),
        basis.view().into_dyn(),
    )
    .expect_err("window");
    assert!(e.to_string().contains("window size"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Larger runs (ignored by default)

/// 200 neurons × 4 trials × 5 000 steps, Poisson mode, GPU against CPU with teacher forcing.
/// `cargo test --release --test glm -- --ignored`.
#[test]
#[ignore]
fn large_teacher_forced_200_neurons() {
    let (n, ws, nb, t, trials) = (200, 100, 10, 5000, 4);
    let net = Net::random(41, n, ws, nb, 1, t, 0.002, -2.0);
    let seeds: Vec<u64> = (0..trials).collect();
    let cpu = net.run(&Engine::cpu(), Link::Softplus, &seeds, Sampling::Poisson);
    let mut op = net.op(&gpu(), Link::Softplus);
    op.start(net.init.view().into_dyn(), &seeds, Sampling::Poisson)
        .expect("start");
    let out = op
        .run_forced(
            net.ff.view().into_dyn(),
            cpu.spikes.mapv(|x| x as f64).view().into_dyn(),
        )
        .expect("forced");
    let diff = out
        .spikes
        .iter()
        .zip(cpu.spikes.iter())
        .filter(|(a, b)| a != b)
        .count();
    println!("{diff} of {} draws differ", out.spikes.len());
    assert!(diff as f64 <= 1e-4 * out.spikes.len() as f64);
}
