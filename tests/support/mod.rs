//! What every test file shares: the engines (GPU tests fail — never skip — without an
//! adapter), seeded generators, and the reference vectors.
#![allow(dead_code)]

use std::sync::{Arc, OnceLock};

use neurokernels::{Engine, GpuContext, GpuOptions};
use rand::SeedableRng;
use rand_pcg::Pcg64;

fn open_gpu() -> Result<Engine, String> {
    Engine::gpu(&GpuOptions::software_ok()).map_err(|e| e.to_string())
}

fn expect_gpu(made: &Result<Engine, String>) -> Engine {
    match made {
        Ok(e) => e.clone(),
        Err(e) => panic!(
            "no GPU adapter (WGPU_BACKEND={:?}): {e}. GPU tests fail rather than skip; \
             install lavapipe/llvmpipe or run on a machine with a GPU",
            std::env::var("WGPU_BACKEND").ok()
        ),
    }
}

/// The GPU engine: one context shared by every test of the binary.
pub fn gpu() -> Engine {
    static GPU: OnceLock<Result<Engine, String>> = OnceLock::new();
    expect_gpu(GPU.get_or_init(open_gpu))
}

/// The GPU engine: one context per test thread, for tests with long device work (wgpu's GL
/// backend serialises a context behind one lock that gives up after 6 s). Each context is
/// leaked on purpose: one dropped by a thread-local destructor at thread exit runs into
/// wgpu-core's own thread-locals already destroyed (a panic in a destructor: an abort).
pub fn gpu_per_thread() -> Engine {
    thread_local! {
        static GPU: &'static Result<Engine, String> = Box::leak(Box::new(open_gpu()));
    }
    GPU.with(|g| expect_gpu(g))
}

/// A GPU engine of its own (a new context) opened with `options` (software adapters allowed);
/// fails, never skips, without an adapter.
pub fn gpu_with(options: GpuOptions) -> Engine {
    let made = Engine::gpu(&GpuOptions {
        allow_software: true,
        ..options
    })
    .map_err(|e| e.to_string());
    expect_gpu(&made)
}

/// The shared GPU engine's context.
pub fn ctx() -> Arc<GpuContext> {
    match gpu() {
        Engine::Gpu(c) => c,
        Engine::Cpu => unreachable!("gpu() returns the GPU engine"),
    }
}

/// Both engines, named.
pub fn engines() -> [(&'static str, Engine); 2] {
    [("cpu", Engine::cpu()), ("gpu", gpu())]
}

/// Both engines, named, the GPU one this thread's own ([`gpu_per_thread`]).
pub fn engines_per_thread() -> [(&'static str, Engine); 2] {
    [("cpu", Engine::cpu()), ("gpu", gpu_per_thread())]
}

/// A seeded generator.
pub fn rng(seed: u64) -> Pcg64 {
    Pcg64::seed_from_u64(seed)
}

/// The directory of a reference case: outputs of the Python packages (and scipy) the crate
/// replaces, kept in `tests/reference/<family>/<case>` (see its README).
pub fn reference(family: &str, case: &str) -> std::path::PathBuf {
    let d = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/reference")
        .join(family)
        .join(case);
    assert!(d.is_dir(), "reference case {} is missing", d.display());
    d
}

/// Corrupted copies of a saved state `st` (prefixes, 200 single-bit flips, 100 random byte
/// strings), none of which a restore may accept.
pub fn corrupted_states(st: &[u8], seed: u64) -> Vec<Vec<u8>> {
    use rand::Rng;
    let mut r = rng(seed);
    let mut out: Vec<Vec<u8>> = [0, 1, 4, st.len() / 2, st.len() - 1]
        .iter()
        .map(|&cut| st[..cut.min(st.len())].to_vec())
        .collect();
    for _ in 0..200 {
        let mut bad = st.to_vec();
        let i = r.random_range(0..bad.len());
        bad[i] ^= 1 << r.random_range(0..8);
        out.push(bad);
    }
    for _ in 0..100 {
        let len = r.random_range(0..256);
        out.push((0..len).map(|_| r.random()).collect());
    }
    out
}

/// A test recording, `(n, c)` µV: white noise (σ 5), noise shared by all channels (σ 10),
/// and negative 1 ms spikes of 40–80 µV at about 30 Hz per channel.
pub fn recording(seed: u64, n: usize, c: usize) -> ndarray::Array2<f32> {
    use rand::Rng;
    let mut r = rng(seed);
    let mut gauss = move || {
        let u: f32 = (0..4).map(|_| r.random::<f32>()).sum();
        (u - 2.0) * 1.732
    };
    let mut x = ndarray::Array2::<f32>::zeros((n, c));
    for mut row in x.rows_mut() {
        let shared = 10.0 * gauss();
        for v in row.iter_mut() {
            *v = 5.0 * gauss() + shared;
        }
    }
    let mut r = rng(seed ^ 0x5eed);
    for ch in 0..c {
        let amp = 40.0 + 40.0 * r.random::<f32>();
        let mut t = r.random_range(0..1000usize);
        while t + 30 < n {
            for k in 0..30 {
                let tk = k as f32 / 30.0;
                x[[t + k, ch]] -= amp * (-((tk - 0.25) / 0.08).powi(2)).exp();
            }
            t += r.random_range(300..2000usize);
        }
    }
    x
}

/// `st` with the u64 field at byte `at` replaced by `v` and the checksum recomputed: a state
/// whose bytes are intact but whose fields disagree.
pub fn forged(st: &[u8], at: usize, v: u64) -> Vec<u8> {
    let mut b = st[..st.len() - 8].to_vec();
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
    let sum = neurokernels::state::fnv1a64(&b);
    b.extend_from_slice(&sum.to_le_bytes());
    b
}
