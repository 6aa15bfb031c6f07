//! The CPU chain allocates nothing per chunk once warm: a counting global allocator (this test
//! binary only) counts heap allocations while 1 ms and 20 ms chunks of 384 channels stream
//! through band-pass → LRR (8 × 48) → threshold → bins with `Chain::process_into` and a
//! reused output.

mod support;

use ndarray::{s, Array2};
use neurokernels::chain::{Chain, ChainOutput, ChainSettings};
use neurokernels::{Engine, LrrSettings};
use rand::Rng;
use support::rng;

#[path = "support/counting_alloc.rs"]
mod counting_alloc;

const FS: f64 = 30_000.0;
const NC: usize = 384;

/// Noise with spikes on every channel, so events and bins flow in most chunks.
fn recording(n: usize) -> Array2<f32> {
    let mut r = rng(11);
    let mut x = Array2::from_shape_fn((n, NC), |_| 5.0 * (r.random::<f32>() - 0.5));
    for c in 0..NC {
        let mut t = 17 * c % 300;
        while t + 30 < n {
            for k in 0..30 {
                x[[t + k, c]] -= 80.0 * (-((k as f32 / 30.0 - 0.25) / 0.08).powi(2)).exp();
            }
            t += 450 + 7 * c;
        }
    }
    x
}

/// Allocations counted over `chunks` chunks of `len` samples after two warm-up passes.
fn allocations_per_stream(len: usize) -> (u64, usize, usize) {
    let x = recording(48_000);
    let settings = ChainSettings {
        lrr: LrrSettings {
            channel_clusters: Some(neurokernels::lrr::consecutive_clusters(NC, 48)),
            ..Default::default()
        },
        ..Default::default()
    };
    let mut chain =
        Chain::calibrate(&Engine::cpu(), settings, FS, x.slice(s![..30_000, ..]), 0).unwrap();
    let mut out = ChainOutput::default();
    let mut run = |from: usize, to: usize, out: &mut ChainOutput, events: &mut usize| {
        let mut at = from;
        while at + len <= to {
            chain
                .process_into(x.slice(s![at..at + len, ..]), out)
                .unwrap();
            *events += out.events.len();
            at += len;
        }
    };
    let mut warm = 0;
    run(30_000, 36_000, &mut out, &mut warm);
    let before = counting_alloc::allocations();
    let mut events = 0;
    run(36_000, 48_000, &mut out, &mut events);
    let after = counting_alloc::allocations();
    (after - before, 12_000 / len, events)
}

#[test]
fn cpu_chain_allocates_nothing_per_chunk_once_warm() {
    for len in [30usize, 600] {
        let (allocs, chunks, events) = allocations_per_stream(len);
        println!("{len}-sample chunks: {allocs} allocations over {chunks} chunks, {events} events");
        assert!(events > 100, "the stream must carry events ({events})");
        assert_eq!(allocs, 0, "{len}-sample chunks allocated {allocs} times");
    }
}
