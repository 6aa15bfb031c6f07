//! Writes the summary table at the top of `BENCHMARKS.md` from the last bench run: one row per
//! `TARGETS.md` workload and engine, with the measured figure, the target, whether it is met
//! and, where it is not, why and what would close it.
//!
//! ```text
//! WGPU_BACKEND=vulkan cargo bench            # every bench; or --bench <name> for one
//! cargo run --release --example bench_report # rewrites BENCHMARKS.md's summary
//! ```
//!
//! Sources: criterion's medians (`target/criterion/<group>/<id>/new/estimates.json`) and the
//! figures the benches record (`target/bench-records.jsonl`, written by
//! `benches/support/mod.rs`, and the Python peers' medians that `benches/python_peers.sh`
//! appends as `python/...`; the last record of a key wins). A figure that no run produced is
//! printed as "not measured". The table goes between the `bench-report` markers in
//! `BENCHMARKS.md` (added after the title when missing); the rest of the file is kept.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Where a figure comes from.
#[derive(Clone, Copy)]
enum Src {
    /// A criterion benchmark's median time per iteration, in seconds.
    Criterion(&'static str),
    /// A recorded figure (`benches/support::record*`).
    Record(&'static str),
}

/// How a figure is shown and checked.
#[derive(Clone, Copy)]
enum Goal {
    /// A time per call or per chunk, at most this many seconds.
    AtMost(f64),
    /// A stream of this many seconds, at least this real-time factor.
    RealTime { seconds: f64, factor: f64 },
    /// A count (e.g. allocations), at most this.
    CountAtMost(f64),
    /// A time shown for comparison only.
    Info,
    /// A count shown for comparison only.
    CountInfo,
}

/// One measured cell: an engine's figure for a workload.
struct Cell {
    engine: &'static str,
    src: Src,
    goal: Goal,
    target: &'static str,
    /// Why the figure misses, and what would close the gap (shown only when it misses).
    why: &'static str,
}

/// One `TARGETS.md` workload.
struct Row {
    workload: &'static str,
    python: &'static str,
    /// Record keys of the peers timed in this run by `benches/python_peers.sh`, the first
    /// being the one the speed-up column compares with.
    peers: &'static [&'static str],
    cells: Vec<Cell>,
}

fn cell(
    engine: &'static str,
    src: Src,
    goal: Goal,
    target: &'static str,
    why: &'static str,
) -> Cell {
    Cell {
        engine,
        src,
        goal,
        target,
        why,
    }
}

use Goal::*;
use Src::*;

/// The probe's bandwidth floor for the binned channel sum on lavapipe (`MACHINE_LIMITS.md`
/// §3: 2.6 GB/s) over 1 s × 384 channels of `f32`.
const DENSE_FLOOR_S: f64 = 30_000.0 * 384.0 * 4.0 / 2.6e9;
/// The probe's round trip of one small step on lavapipe (`MACHINE_LIMITS.md` §1: 99 µs).
const SMALL_STEP_FLOOR_S: f64 = 99e-6;

fn rows() -> Vec<Row> {
    const LAVAPIPE_FLOOR: &str = "llvmpipe pays ~50 µs per dispatch and ~0.1–0.4 ms per \
        submit + read-back (MACHINE_LIMITS.md) and runs each invocation's loads lane by lane; \
        the figure is the adapter's floor times the passes per call. Fewer passes (fusing \
        the stages into one kernel) would close part of it; a hardware GPU removes it.";
    vec![
        Row {
            workload: "dense Count+Sum, 1 s × 384 ch @ 30 kHz f32, 20 ms bins, 10 chunks of 100 ms",
            python: "5.6 ms (ezmsg-event)",
            peers: &["python/binning/dense_100ms"],
            cells: vec![
                cell(
                    "CPU",
                    Criterion("dense_count_sum_1s_384ch/cpu/chunks_of_3000"),
                    AtMost(2.5e-3),
                    "≤ 2.5 ms",
                    "memory-bound: one fused pass reads the 46 MB once (1.5–2 ms at this \
                     machine's bandwidth) and the bin sums add ~20 %; only a quieter machine \
                     or a second core's bandwidth would close it.",
                ),
                cell(
                    "lavapipe",
                    Criterion("dense_count_sum_1s_384ch/gpu/chunks_of_3000"),
                    AtMost(2.0 * DENSE_FLOOR_S),
                    "≤ 2× the probe's floor (35 ms)",
                    "perf: 83 % of the time was llvmpipe's JIT code branching on the kernel, \
                     aggregation and scaling per element; with the three compiled in as \
                     pipeline overrides the 10 chunks take 20–23 ms at minimum (35–38 ms \
                     before, 40-run A/B). What is left is the kernel's lane-by-lane loads at \
                     about the probe's 2.6 GB/s plus each chunk's upload, which since \
                     2026-12-07 also does the finiteness check (one read of the chunk, not \
                     two: medians 37–39 → 35–36 ms in an interleaved A/B). A figure above the \
                     target is the machine's load: in the summary's run of 2026-12-07 the \
                     unchanged LRR and GLM lavapipe rows ran 9–17 % slower than a run hours before.",
                ),
            ],
        },
        Row {
            workload: "same, 200 chunks of 1 ms (30 samples), per chunk",
            python: "40 µs",
            peers: &["python/binning/dense_1ms/p50"],
            cells: vec![
                cell(
                    "CPU (p50)",
                    Record("binning/dense/cpu/30/p50"),
                    AtMost(4e-6),
                    "≤ 4 µs",
                    "perf (2026-12-06): two thirds of a chunk is the counting pass itself \
                     (AVX2, four vectors per step), stalled on its loads: the bench streams a \
                     92 MB raster, so each chunk's 46 KB comes from memory at ~13 GB/s; the \
                     fixed cost per call (validation, plan, state snapshot) is under a sixth, \
                     and snapshotting only the state the path writes measured no faster (4.5 \
                     vs 4.6 µs). It follows the CPU and its memory: 3.8 µs on the AMD EPYC of \
                     2026-12-03, 4.5–6.2 µs on the Intel Xeon (same code). In a rig the chunk \
                     was just written by the acquisition and is read from cache.",
                ),
                cell(
                    "lavapipe (p99)",
                    Record("binning/dense/gpu/30/p99"),
                    AtMost(300e-6),
                    "p99 ≤ 300 µs",
                    "a 1 ms chunk is one upload, one dispatch and one read-back (the probe's \
                     round trip is 99 µs on a quiet machine, 0.1–0.4 ms under load: \
                     MACHINE_LIMITS.md); the kernel's work is a few µs. The tail is llvmpipe's \
                     fence and thread wake-ups on a shared two-core machine, not the kernel; \
                     a hardware GPU's round trip is tens of µs.",
                ),
            ],
        },
        Row {
            workload: "sparse Exponential+Last, 384 ch, 10 s, 191 466 events, 20 ms bins, 1 s chunks",
            python: "1.1 s (ezmsg-event); plain counting 6.5 ms (pynapple)",
            peers: &["python/binning/sparse_exp_last", "python/binning/sparse_count"],
            cells: vec![
                cell(
                    "CPU",
                    Criterion("sparse_exp_last_10s_384ch/cpu"),
                    AtMost(3e-3),
                    "≤ 3 ms",
                    "profile (one thread, quiet machine: 1.7–1.9 ms): the branch-free scan \
                     ~0.65 ms, bucketing the events by channel ~0.3 ms, validation ~0.1 ms; a \
                     miss is the machine's load (two threads measured slower at 1 s chunks).",
                ),
                cell(
                    "lavapipe",
                    Criterion("sparse_exp_last_10s_384ch/gpu"),
                    AtMost(50e-3),
                    "≤ 50 ms",
                    "the kernel, aggregation and scaling are compiled into the pipelines \
                     (54–57 → 27–36 ms minimum); a miss is the machine's load.",
                ),
            ],
        },
        Row {
            workload: "LRR `partial_fit`, 10 chunks of 30 000 × 384 f32, 8 clusters × 48",
            python: "380 ms (ezmsg-learn)",
            peers: &["python/lrr/partial_fit"],
            cells: vec![
                cell(
                    "CPU",
                    Criterion("lrr_384ch_8x48_10x30000/partial_fit/cpu"),
                    AtMost(75e-3),
                    "≤ 75 ms",
                    "5.6 GFLOP of f32 products folded into f64 every 32 samples; the AVX-512 \
                     8-row tile measured 44–53 ms (AMD Zen 5) and 65 ms (Intel Xeon) on quiet \
                     machines, and 57–59 ms on AMD Zen 4 since each 32-row block's cache lines \
                     are read in order before its column groups (79–82 ms before: the groups' \
                     strided reads left the prefetchers behind), so a miss is the machine's \
                     load.",
                ),
                cell(
                    "lavapipe",
                    Criterion("lrr_384ch_8x48_10x30000/partial_fit/gpu"),
                    AtMost(400e-3),
                    "≤ 400 ms",
                    "perf and the JIT code (gdb): the covariance kernel's time was its loads, \
                     each a loop over llvmpipe's 8 lanes with a bounds check per element (a \
                     load probe: a uniform-address or workgroup-memory load costs as much as a \
                     per-lane one, a vec4 load twice a scalar one). Clusters of consecutive, \
                     4-aligned channels (this workload) now run quad kernels that load vec4s \
                     (2026-12-06: 633 → 460–500 ms). What is left: the 256 accumulators of \
                     each 16 × 16 tile spill to the stack, and the exact f64 fold of the f32 \
                     partials is ~40 % of the arithmetic; folding less often was rejected for \
                     the precision bound. A hardware GPU coalesces the loads and keeps the \
                     tile in registers.",
                ),
            ],
        },
        Row {
            workload: "LRR `transform`, same data",
            python: "186 ms (ezmsg-learn, block kernel)",
            peers: &["python/lrr/transform"],
            cells: vec![
                cell(
                    "CPU (new output per chunk)",
                    Criterion("lrr_384ch_8x48_10x30000/transform/cpu"),
                    AtMost(120e-3),
                    "≤ 120 ms",
                    "each chunk's fresh 46 MB output is new memory that the kernel faults in on \
                     first touch: 20.6 ms per chunk in 4 KiB pages (a C probe), 2.5 ms since \
                     outputs of 4 MiB or more are advised for transparent huge pages (the \
                     figure was 205 ms before). What is left over `transform_into` (next cell) \
                     is that zeroing and the machine's load; a reused buffer avoids both. \
                     Since 2026-12-07 each 96-row block of the input is read in order before \
                     its clusters' products (interleaved runs on AMD Zen 4: 153–183 → \
                     114–144 ms).",
                ),
                cell(
                    "CPU (into a reused buffer)",
                    Criterion("lrr_384ch_8x48_10x30000/transform_into/cpu"),
                    AtMost(120e-3),
                    "≤ 120 ms",
                    "",
                ),
                cell(
                    "lavapipe (device in and out)",
                    Criterion("lrr_384ch_8x48_10x30000/transform_device/gpu"),
                    AtMost(190e-3),
                    "≤ 190 ms",
                    "the same lane-by-lane loads as the covariance. The quad kernel (x, I − W \
                     and Y as vec4 arrays, 4 channels per step of the contraction) took it \
                     from 867 to 520–550 ms (2026-12-06); measured and not kept before it: a \
                     4 × 16 tile (2.0 s) and lanes sharing one job (1.2 s). What is left is \
                     the multiply-adds of llvmpipe's 8-lane code with the tile's accumulators \
                     spilled, and the vec4 loads at twice a scalar's cost. On llvmpipe the CPU \
                     path is the one to run; a hardware GPU coalesces the loads.",
                ),
            ],
        },
        Row {
            workload: "LRR streaming `partial_fit` + `transform`, 512 ch (8 × 64), 20-sample chunks, per chunk",
            python: "2.1 ms (ezmsg-learn, re-solving every chunk)",
            peers: &["python/lrr/stream/p50"],
            cells: vec![
                cell(
                    "CPU, weights re-solved every chunk (p50)",
                    Record("lrr/stream/cpu/0/p50"),
                    AtMost(50e-6),
                    "≤ 50 µs",
                    "re-solving eight 64 × 64 ridge inverses in f64 every chunk. Since 2026-12-07 \
                     the solve is a symmetric sweep (each row updated from its own 8-wide vector \
                     on: ~1.1 M multiply-adds for the eight, half of Gauss–Jordan's), one \
                     cluster's solve 16.7–20.4 µs on the Zen 4 VM (25.6 µs before; its \
                     elimination 14.4–17.0 µs, 7.7–9.1 G multiply-adds/s, ~40 % of a core's \
                     f64 peak of 20.8 G/s: 2.6 GHz, two multiply and two add pipes of four \
                     lanes; perf: 75 % of the solve is the row updates' loads, multiplies and \
                     stores; eight pivots per pass instead of four measured slower, 15.6–20.8 \
                     µs), and the calling \
                     thread shares the clusters with a helper thread through a counter (handing \
                     the call to the pool and parking the caller was slower than one thread); \
                     the chunk's p50 went from 269–283 to 191–236 µs in an alternated A/B. On \
                     2026-12-08 the helper became the crew's (it spins 200 µs after a job before \
                     it sleeps, so it is awake for the next chunk, and nothing is spawned per \
                     call): p50 198–212 → 174–184 µs, p99 343–423 → 241–320 µs on the Intel \
                     Xeon VM (alternated A/B, three rounds). What is left is ~75 µs of solves \
                     per core plus the chunk's `partial_fit` and product. At that peak the eight solves alone would \
                     take 50 µs of one core, so meeting 50 µs per chunk needs a cheaper method \
                     than re-inverting: a rank-20 update of the inverse (Woodbury) costs \
                     about what re-inverting a 64 × 64 block does. `update_every` (the next \
                     cell) amortises the solve and meets the target.",
                ),
                cell(
                    "CPU, weights re-solved every 30 000 samples (p50)",
                    Record("lrr/stream/cpu/30000/p50"),
                    AtMost(50e-6),
                    "≤ 50 µs",
                    "",
                ),
                cell(
                    "lavapipe, every 30 000 samples (p50)",
                    Record("lrr/stream/gpu/30000/p50"),
                    AtMost(2.0 * SMALL_STEP_FLOOR_S),
                    "≤ 2× the probe's round trip (0.2 ms)",
                    "a chunk is two submissions: `partial_fit` (upload, covariance pass) and \
                     `transform` (upload, product, read-back), each paying llvmpipe's submit \
                     and fence (0.1–0.4 ms under load) for 20 samples of work; the quad \
                     kernels took it from 951 to ~700 µs (2026-12-06). perf (2026-12-07): \
                     53 % of the chunk is llvmpipe's JIT code, 19 % the driver, 13 % the \
                     kernel's thread wake-ups; the covariance pass reads the committed `f64` \
                     blocks and writes the next copy whole (8 × 64 × 64 × 8 bytes each way) \
                     for 20 rows of data. A fused fit-and-transform call (one upload, one \
                     submission) would take off one submit and fence, still above 0.2 ms; a \
                     hardware GPU's round trip is tens of µs.",
                ),
            ],
        },
        Row {
            workload: "recurrent Poisson GLM, 50 neurons, window 100, 10 basis functions, 10 000 steps",
            python: "180 ms (nemos, jitted)",
            peers: &["python/glm"],
            cells: vec![
                cell(
                    "CPU",
                    Criterion("glm_50n_w100_b10_10000steps/cpu"),
                    AtMost(60e-3),
                    "≤ 60 ms",
                    "one trial is a sequential scan: per step a 50 × 500 f64 product, 50 \
                     softplus links and 50 Poisson draws. perf: the product is two thirds of \
                     the time, its 200 KB of coefficients streamed from L2 every step (an \
                     AVX-512 product measured no faster than AVX2); the draws' Philox words \
                     run eight neurons at a time and the softplus gives the first threshold \
                     without a third transcendental (57.3 → 52.5 ms on the Intel Xeon VM, \
                     2026-12-07). Only batching trials spreads it over cores.",
                ),
                cell(
                    "plain dense f64 Rust loop (baseline)",
                    Criterion("glm_50n_w100_b10_10000steps/baseline_dense_f64"),
                    Info,
                    "—",
                    "",
                ),
                cell(
                    "lavapipe",
                    Criterion("glm_50n_w100_b10_10000steps/gpu"),
                    AtMost(180e-3),
                    "≤ 180 ms",
                    "perf: 82 % in llvmpipe's JIT code. With the neuron count, window and \
                     basis width compiled in (pipeline overrides: the ring's divisions became \
                     constant multiplies) it went from 1.24–1.36 s to 0.85–0.89 s; what is \
                     left is the coupling loop's ring and coefficient loads, run lane by lane \
                     with a bounds check each, over 10 000 dependent steps (a workgroup-uniform \
                     neuron loop measured no better). A hardware GPU runs the same scan at \
                     full width.",
                ),
            ],
        },
        Row {
            workload: "rate encoder, 256 × 784 features × 100 steps",
            python: "100 ms (`torch.rand < p`); spyx 300 ms",
            peers: &["python/encoders/rate_numpy", "python/encoders/rate_spyx"],
            cells: vec![
                cell(
                    "CPU (u8 into a buffer)",
                    Criterion("rate_256x784x100/cpu"),
                    AtMost(20e-3),
                    "≤ 20 ms",
                    "one Philox draw per spike (20 M per call) dominates.",
                ),
                cell(
                    "lavapipe (device, packed)",
                    Criterion("rate_256x784x100/gpu_device_packed"),
                    AtMost(50e-3),
                    "≤ 50 ms",
                    LAVAPIPE_FLOOR,
                ),
            ],
        },
        Row {
            workload: "latency encoder, same sizes",
            python: "4.4 ms (spyx)",
            peers: &["python/encoders/latency_spyx"],
            cells: vec![
                cell(
                    "CPU (bit-packed)",
                    Criterion("latency_256x784x100/cpu_packed"),
                    AtMost(2e-3),
                    "≤ 2 ms",
                    "writing the 2.5 MB packed output dominates.",
                ),
                cell(
                    "CPU (u8 into a buffer)",
                    Criterion("latency_256x784x100/cpu"),
                    AtMost(2e-3),
                    "≤ 2 ms",
                    "the unpacked output is 20 MB (one byte per spike slot), written at about \
                     20 GB/s on two cores: 0.97 ms minimum, 1.3–1.4 ms median on a quiet \
                     machine (non-temporal stores measured 0.70 vs 0.79 ms in a probe). A miss \
                     is the machine's load; the packed output is 8× smaller.",
                ),
                cell(
                    "lavapipe (device, packed)",
                    Criterion("latency_256x784x100/gpu_device_packed"),
                    AtMost(9e-3),
                    "≤ 9 ms",
                    LAVAPIPE_FLOOR,
                ),
            ],
        },
        Row {
            workload: "max-rate classifier update + classify, 10⁴ neurons, 10 classes, batch 256",
            python: "4.3 ms (numpy)",
            peers: &["python/classifier"],
            cells: vec![
                cell(
                    "CPU, two calls",
                    Criterion("classifier_10000_neurons_10_classes_batch_256/update+classify/cpu"),
                    AtMost(1e-3),
                    "≤ 1 ms",
                    "meets it narrowly: 0.91 ms criterion mean on the Intel Xeon VM (1.44 ms before \
                     2026-12-07). The update sums four rows per pass (0.74 → 0.55 ms); \
                     classify transposes eight rows' 512-neuron blocks into an L1 tile, so each \
                     gathered neuron is one vector load for all eight rows (0.65 → 0.41 ms: \
                     perf had put the four-row scalar gather on the shuffles that assembled \
                     the rows' values). Reading the 10 MB batch twice is ~0.4 ms of the rest \
                     on two cores (a C probe).",
                ),
                cell(
                    "CPU, `forward` (one call)",
                    Criterion("classifier_10000_neurons_10_classes_batch_256/forward/cpu"),
                    AtMost(1e-3),
                    "≤ 1 ms",
                    "meets it narrowly (0.90 ms criterion mean on the Intel Xeon VM): `forward` \
                     saves the second call's checks, not the second read; a single fused pass \
                     (logits and update per 256-neuron sub-block of every row) measured no \
                     faster.",
                ),
                cell(
                    "lavapipe, device inputs",
                    Record("classifier/gpu/10000/device/update+classify"),
                    AtMost(4e-3),
                    "≤ 4 ms",
                    "perf and the JIT code (gdb): a quarter to a third of the time is one \
                     load, the classify kernel's row reads (each lane one row of 10⁴ neurons, \
                     40 KB from the next) run as a loop over llvmpipe's 8 lanes with a bounds \
                     check per element; `update` reads the batch the same way. Each call is \
                     ~4–5 ms at minimum with one read-back; a hardware GPU coalesces the \
                     loads.",
                ),
            ],
        },
        Row {
            workload: "the chain: int16 384 ch @ 30 kHz → band-pass → LRR 8×48 → threshold → 20 ms bins, 20 ms chunks",
            python: "5.5× real time (scipy + numpy); ezmsg 5.0×, 3.6 ms median / 5.3 ms p99 per chunk",
            peers: &["python/chain"],
            cells: vec![
                cell(
                    "CPU",
                    Criterion("chain_384ch_int16_2s_20ms_chunks/cpu"),
                    RealTime {
                        seconds: 2.0,
                        factor: 20.0,
                    },
                    "≥ 20× required (≥ 80× aimed)",
                    "",
                ),
                cell(
                    "CPU, p99 per 20 ms chunk",
                    Record("chain/cpu/600/p99"),
                    AtMost(1e-3),
                    "≤ 1 ms",
                    "the f64 band-pass and the LRR product each take ~40 % of a chunk; a \
                     quiet machine is needed for p99.",
                ),
                cell(
                    "CPU, p99 per 1 ms chunk",
                    Record("chain/cpu/30/p99"),
                    Info,
                    "—",
                    "",
                ),
                cell(
                    "CPU, heap allocations per 20 ms chunk (warm)",
                    Record("chain/cpu/600/allocs_per_chunk"),
                    CountAtMost(0.0),
                    "0",
                    "",
                ),
                cell(
                    "CPU, heap allocations per 1 ms chunk (warm)",
                    Record("chain/cpu/30/allocs_per_chunk"),
                    CountAtMost(0.0),
                    "0",
                    "",
                ),
                cell(
                    "lavapipe",
                    Criterion("chain_384ch_int16_2s_20ms_chunks/gpu"),
                    RealTime {
                        seconds: 2.0,
                        factor: 1.0,
                    },
                    "record it (≥ 1× shown)",
                    LAVAPIPE_FLOOR,
                ),
                cell(
                    "lavapipe, p99 per 20 ms chunk",
                    Record("chain/gpu/600/p99"),
                    AtMost(5e-3),
                    "≤ 5 ms",
                    "each stage's kernel costs a millisecond or so per chunk on llvmpipe (the \
                     filter 0.9–1.2 ms, LRR's transform 1.4–1.7 ms, threshold 0.7 ms, binning \
                     0.3 ms), and the p99 follows the machine's load. Since 2026-12-07 the \
                     stages go in one submission with one read-back per chunk (four round \
                     trips before: p50 4.8 → 4.5 ms, 1 ms chunks 1.06 → 0.75 ms, interleaved \
                     A/B); what is left is the kernels' lane-by-lane work. On llvmpipe the CPU \
                     path is the one to run.",
                ),
                cell(
                    "lavapipe, heap allocations per 20 ms chunk",
                    Record("chain/gpu/600/allocs_per_chunk"),
                    CountInfo,
                    "— (wgpu allocates command buffers per submit)",
                    "",
                ),
            ],
        },
    ]
}

/// A criterion median, in seconds.
fn criterion_median(root: &Path, id: &str) -> Option<f64> {
    let path = root.join("criterion").join(id).join("new/estimates.json");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    Some(v["median"]["point_estimate"].as_f64()? * 1e-9)
}

/// A recorded figure and the load average when it was taken.
#[derive(Clone)]
struct Rec {
    value: Option<f64>,
    text: Option<String>,
    load: Option<f64>,
}

fn records(root: &Path) -> HashMap<String, Rec> {
    let mut out = HashMap::new();
    let text = std::fs::read_to_string(root.join("bench-records.jsonl")).unwrap_or_default();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let Some(key) = v["key"].as_str() else {
            continue;
        };
        out.insert(
            key.to_string(),
            Rec {
                value: v["value"].as_f64(),
                text: v["text"].as_str().map(str::to_string),
                load: v["load"].as_f64(),
            },
        );
    }
    out
}

fn time(s: f64) -> String {
    if s >= 1.0 {
        format!("{s:.2} s")
    } else if s >= 1e-3 {
        format!("{:.2} ms", s * 1e3)
    } else {
        format!("{:.1} µs", s * 1e6)
    }
}

/// The shown figure and whether it meets its goal (`None`: no goal).
fn judge(goal: Goal, v: f64) -> (String, Option<bool>) {
    match goal {
        AtMost(t) => (time(v), Some(v <= t)),
        RealTime { seconds, factor } => {
            let rtf = seconds / v;
            (
                format!("{rtf:.1}× real time ({} per {seconds} s)", time(v)),
                Some(rtf >= factor),
            )
        }
        CountAtMost(t) => (format!("{v:.1}"), Some(v <= t)),
        Info => (time(v), None),
        CountInfo => (format!("{v:.1}"), None),
    }
}

/// The Python peer cell: TARGETS.md's figure, then each peer timed in this run (when
/// `benches/python_peers.sh` ran) with its package and version.
fn peer_text(row: &Row, recs: &HashMap<String, Rec>) -> String {
    let stream = row.cells.iter().find_map(|c| match c.goal {
        RealTime { seconds, .. } => Some(seconds),
        _ => None,
    });
    let timed: Vec<String> = row
        .peers
        .iter()
        .filter_map(|k| {
            let r = recs.get(*k)?;
            let v = r.value?;
            let what = r.text.clone().unwrap_or_default();
            Some(match stream {
                Some(sec) => format!("{:.1}× real time ({what})", sec / v),
                None => format!("{} ({what})", time(v)),
            })
        })
        .collect();
    if timed.is_empty() {
        row.python.to_string()
    } else {
        format!("{}; here: {}", row.python, timed.join(", "))
    }
}

/// How many times faster than the first peer timed in this run a cell's figure is: only for
/// times and real-time factors, and not for p99 cells (the peers are timed as medians).
fn speed_up(c: &Cell, value: Option<f64>, peer: Option<f64>) -> String {
    match (c.goal, value, peer) {
        (AtMost(_) | RealTime { .. }, Some(v), Some(p)) if v > 0.0 && !c.engine.contains("p99") => {
            format!("{:.1}×", p / v)
        }
        _ => String::new(),
    }
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

fn report(root: &Path) -> String {
    let recs = records(root);
    let mut s = String::new();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let adapter = recs
        .get("adapter")
        .and_then(|r| r.text.clone())
        .unwrap_or_else(|| "not recorded".into());
    let _ = writeln!(
        s,
        "## Summary against TARGETS.md\n\nGenerated by `cargo run --release --example bench_report` \
         from the last `cargo bench` run (criterion medians and the benches' recorded \
         percentiles; the Python peers timed by `benches/python_peers.sh` on the same \
         machine, where it ran). CPU: {} ({cores} cores). GPU engine: {adapter}. The real-GPU column of \
         TARGETS.md is not measured here: no hardware GPU was available for these runs. \
         Load is the 1-minute load average when a recorded figure was taken (criterion rows: \
         see the per-bench sections).\n",
        cpu_model()
    );
    let _ = writeln!(
        s,
        "| workload | Python peer: TARGETS.md; timed in this run | engine | measured | speed-up over the peer | target | met | load | why it misses, what would close it |"
    );
    let _ = writeln!(
        s,
        "| --- | --- | --- | ---: | ---: | --- | :---: | ---: | --- |"
    );
    let (mut met, mut missed, mut absent) = (0, 0, 0);
    for row in rows() {
        let peer = row
            .peers
            .first()
            .and_then(|k| recs.get(*k))
            .and_then(|r| r.value);
        let python = peer_text(&row, &recs);
        for (i, c) in row.cells.iter().enumerate() {
            let (value, load) = match c.src {
                Criterion(id) => (criterion_median(root, id), None),
                Record(key) => recs.get(key).map_or((None, None), |r| (r.value, r.load)),
            };
            let (shown, ok) = match value {
                Some(v) => judge(c.goal, v),
                None => ("not measured".to_string(), None),
            };
            let verdict = match (value, ok) {
                (None, _) => {
                    absent += 1;
                    "–"
                }
                (_, Some(true)) => {
                    met += 1;
                    "yes"
                }
                (_, Some(false)) => {
                    missed += 1;
                    "**no**"
                }
                (_, None) => "",
            };
            let why = if ok == Some(false) { c.why } else { "" };
            let (w, p) = if i == 0 {
                (row.workload, python.as_str())
            } else {
                ("", "")
            };
            let load = load.map_or(String::new(), |l| format!("{l:.1}"));
            let ratio = speed_up(c, value, peer);
            let _ = writeln!(
                s,
                "| {w} | {p} | {} | {shown} | {ratio} | {} | {verdict} | {load} | {why} |",
                c.engine, c.target
            );
        }
    }
    let _ = writeln!(
        s,
        "\n{met} figures meet their target, {missed} miss, {absent} were not measured in this run."
    );
    s
}

const BEGIN: &str = "<!-- bench-report:begin -->";
const END: &str = "<!-- bench-report:end -->";

fn main() -> std::io::Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let table = report(&target);
    print!("{table}");
    // The file to update: the first argument, else the crate's BENCHMARKS.md.
    let path = std::env::args_os()
        .nth(1)
        .map_or_else(|| root.join("BENCHMARKS.md"), PathBuf::from);
    let old = std::fs::read_to_string(&path).unwrap_or_else(|_| "# Benchmarks\n".into());
    let block = format!("{BEGIN}\n{table}{END}");
    let new = match (old.find(BEGIN), old.find(END)) {
        (Some(a), Some(b)) if b > a => format!("{}{block}{}", &old[..a], &old[b + END.len()..]),
        _ => match old.find('\n') {
            Some(n) => format!("{}\n\n{block}\n{}", &old[..n], &old[n + 1..]),
            None => format!("{old}\n\n{block}\n"),
        },
    };
    std::fs::write(&path, new)
}
