//! Soak: a long stream of 1 ms chunks (30 samples at 30 kHz) × 384 channels through the whole
//! chain (band-pass → LRR, 8 clusters of 48 → threshold → 20 ms bins), on the GPU engine and
//! on the CPU engine. Asserted: the GPU context's live device buffers and bytes stay flat after
//! warm-up (and hold nothing sized for the 1 s calibration window), and the events and bins
//! equal those of the same stream processed in 100 ms chunks.
//! Printed (not asserted): p50/p99 of the per-chunk time in windows of the stream.
//!
//! CI runs 2 000 chunks per engine. The full run, 10⁵ chunks (100 s of recording), is ignored:
//!
//! ```text
//! WGPU_BACKEND=vulkan cargo test --release --test soak -- --ignored --nocapture
//! ```
//!
//! `SOAK_CHUNKS=N` sets its length (a multiple of 100).

mod support;

use std::collections::VecDeque;
use std::time::Instant;

use ndarray::{s, Array2};
use neurokernels::chain::{percentiles, Chain, ChainOutput, ChainSettings};
use neurokernels::{Engine, LrrSettings};
use support::engines;

const FS: f64 = 30_000.0;
const NC: usize = 384;
/// Samples per small chunk (1 ms).
const CHUNK: usize = 30;
/// Samples per large chunk (100 ms): the reference stream.
const BLOCK: usize = 3_000;

/// A seeded synthetic recording, made one block at a time: independent noise (σ ≈ 6 µV),
/// noise shared by each cluster of 48 channels (σ ≈ 15 µV), and negative 1 ms spikes of
/// 90 µV at about 20 Hz per channel.
struct Source {
    state: u64,
    /// Next spike start per channel (absolute sample).
    next_spike: Vec<u64>,
    at: u64,
    wave: [f32; 30],
}

impl Source {
    fn new(seed: u64) -> Self {
        let mut s = Source {
            state: seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1,
            next_spike: Vec::new(),
            at: 0,
            wave: [0.0; 30],
        };
        for (k, w) in s.wave.iter_mut().enumerate() {
            let t = k as f32 / 30.0;
            *w = -90.0 * (-((t - 0.25) / 0.08).powi(2)).exp();
        }
        s.next_spike = (0..NC).map(|_| s.below(1_500)).collect();
        s
    }

    /// xorshift64*.
    fn next(&mut self) -> u64 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// About N(0, 1): the sum of four 16-bit uniforms of one draw, centred and scaled.
    fn gauss(&mut self) -> f32 {
        let r = self.next();
        let sum: u64 = (0..4).map(|k| (r >> (16 * k)) & 0xffff).sum();
        (sum as f32 / 65_536.0 - 2.0) * 1.732
    }

    /// The next `n` samples.
    fn block(&mut self, n: usize) -> Array2<f32> {
        let mut x = Array2::<f32>::zeros((n, NC));
        for mut row in x.rows_mut() {
            let shared: Vec<f32> = (0..NC / 48).map(|_| 15.0 * self.gauss()).collect();
            for (c, v) in row.iter_mut().enumerate() {
                *v = 6.0 * self.gauss() + shared[c / 48];
            }
        }
        let end = self.at + n as u64;
        for c in 0..NC {
            // A spike that would cross the block's end starts at the next block instead.
            while self.next_spike[c] + 30 <= end {
                let t0 = (self.next_spike[c].max(self.at) - self.at) as usize;
                for (k, w) in self.wave.iter().enumerate() {
                    x[[t0 + k, c]] += w;
                }
                self.next_spike[c] = (t0 as u64 + self.at) + 500 + self.below(2_000);
            }
            self.next_spike[c] = self.next_spike[c].max(end);
        }
        self.at = end;
        x
    }
}

fn settings() -> ChainSettings {
    ChainSettings {
        lrr: LrrSettings {
            channel_clusters: Some(neurokernels::lrr::consecutive_clusters(NC, 48)),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// What two streams of the same recording have produced and not yet matched.
#[derive(Default)]
struct Pending {
    events: [VecDeque<(u64, u32)>; 2],
    bins: [VecDeque<Vec<f32>>; 2],
    events_matched: usize,
    bins_matched: usize,
}

impl Pending {
    fn push(&mut self, side: usize, out: ChainOutput) {
        self.events[side].extend(out.events.iter().map(|e| (e.sample, e.channel)));
        self.bins[side].extend(out.bins.values.rows().into_iter().map(|r| r.to_vec()));
    }

    /// Asserts that what both streams have produced so far agrees, and forgets it.
    fn check(&mut self, name: &str) {
        let [ea, eb] = &mut self.events;
        drain_equal(ea, eb, &mut self.events_matched, name, "event");
        let [ba, bb] = &mut self.bins;
        drain_equal(ba, bb, &mut self.bins_matched, name, "bin");
    }
}

/// Pops the items both queues hold, asserting them equal and counting them in `matched`.
fn drain_equal<T: PartialEq + std::fmt::Debug>(
    a: &mut VecDeque<T>,
    b: &mut VecDeque<T>,
    matched: &mut usize,
    name: &str,
    what: &str,
) {
    while let (Some(x), Some(y)) = (a.front(), b.front()) {
        assert_eq!(x, y, "{name}: {what} {matched}");
        a.pop_front();
        b.pop_front();
        *matched += 1;
    }
}

/// Streams `chunks` 1 ms chunks through one chain and the same samples in 100 ms chunks through
/// another, on `engine`, asserting equal outputs and (GPU) flat device memory after the first
/// `warm` chunks; prints the per-chunk time in windows of `window` chunks.
fn soak(name: &str, engine: &Engine, chunks: usize, window: usize, warm: usize) {
    assert_eq!(chunks % (BLOCK / CHUNK), 0);
    let calibration = Source::new(1).block(FS as usize);
    let make =
        || Chain::calibrate(engine, settings(), FS, calibration.view(), 0).expect("calibrate");
    let (mut small, mut large) = (make(), make());
    let ctx = match engine {
        Engine::Gpu(c) => Some(c.clone()),
        Engine::Cpu => None,
    };
    let live = || ctx.as_ref().map(|c| (c.live_buffers(), c.live_bytes()));
    let mut source = Source::new(2);
    let mut pending = Pending::default();
    let (mut times, mut windows) = (Vec::with_capacity(window), Vec::new());
    let mut after_warm = None;
    let t_start = Instant::now();
    let mut done = 0;
    println!("\n{name}: {chunks} chunks of {CHUNK} samples x {NC} channels");
    println!("| chunks | p50 | p99 | max | live buffers | live bytes |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    while done < chunks {
        let x = source.block(BLOCK);
        pending.push(1, large.process(x.view()).expect("100 ms chunk"));
        for k in 0..BLOCK / CHUNK {
            let t = Instant::now();
            let out = small
                .process(x.slice(s![k * CHUNK..(k + 1) * CHUNK, ..]))
                .expect("1 ms chunk");
            times.push(t.elapsed().as_secs_f64());
            pending.push(0, out);
            done += 1;
            if done == warm {
                after_warm = live();
            }
            if let (Some(want), Some(now)) = (after_warm, live()) {
                assert_eq!(
                    now, want,
                    "{name}: live (buffers, bytes) after chunk {done}"
                );
            }
            if times.len() == window || done == chunks {
                let n = times.len();
                let max = times.iter().copied().fold(0.0, f64::max);
                let (p50, p99) = percentiles(std::mem::take(&mut times));
                let (b, bytes) = live().unwrap_or((0, 0));
                println!(
                    "| {}–{done} | {:.0} µs | {:.0} µs | {:.0} µs | {b} | {bytes} |",
                    done + 1 - n,
                    p50 * 1e6,
                    p99 * 1e6,
                    max * 1e6
                );
                windows.push((p50, p99));
            }
        }
        pending.check(name);
    }
    let wall = t_start.elapsed().as_secs_f64();
    println!(
        "{name}: {} events and {} bins equal in both chunkings; {:.1} s wall for {:.1} s of \
         recording (both chains, generation included); live (buffers, bytes) after warm-up: {:?}",
        pending.events_matched,
        pending.bins_matched,
        wall,
        chunks as f64 * CHUNK as f64 / FS,
        after_warm
    );
    if let Some((_, bytes)) = after_warm {
        // Two chains' buffers for 100 ms and 1 ms chunks, none sized for the 1 s calibration.
        assert!(bytes < 32 << 20, "{name}: {bytes} live bytes");
    }
    assert!(pending.events_matched > chunks, "{name}: too few events");
    assert!(pending.bins_matched >= chunks / 20, "{name}: too few bins");
    assert!(
        pending.events.iter().all(|q| q.is_empty()),
        "{name}: unmatched events"
    );
    assert!(
        pending.bins.iter().all(|q| q.is_empty()),
        "{name}: unmatched bins"
    );
    assert!(!windows.is_empty());
}

#[test]
fn soak_short() {
    for (name, engine) in engines() {
        soak(name, &engine, 2_000, 500, 300);
    }
}

#[test]
#[ignore = "10^5 chunks per engine; see the file header"]
fn soak_full() {
    let chunks = std::env::var("SOAK_CHUNKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    for (name, engine) in engines() {
        soak(name, &engine, chunks, 10_000, 1_000);
    }
}
