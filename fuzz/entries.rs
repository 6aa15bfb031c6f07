//! The bodies of the fuzz targets, one function per target. The targets under
//! `fuzz/fuzz_targets/` call them under libFuzzer; `tests/fuzz_corpus.rs` replays the committed
//! corpus `fuzz/corpus/<target>/` through the same functions on stable Rust.
//!
//! Each entry feeds its bytes to one public entry point and asserts what must hold for any
//! input: no panic, no abort, no allocation out of proportion to the input, and a typed
//! error (never a crash) for whatever is rejected.

#![allow(dead_code)]

use ndarray::{Array2, ArrayD, IxDyn};
use neurokernels::chain::{Chain, ChainSettings, ReferenceMode, ThresholdRule};
use neurokernels::encoders::{
    AngleEncoder, AngleSettings, LatencyEncoder, LatencySettings, RateEncoder, RateSettings,
    ShiftAugment, ShiftSettings,
};
use neurokernels::filter::FilterSettings;
use neurokernels::glm::{Link, RecurrentGlm, Sampling};
use neurokernels::recording::{OpenOptions, Recording};
use neurokernels::{
    Aggregation, BandpassFilter, BinnedActivation, BinningSettings, CarSettings,
    ClassifierSettings, CommonAverage, Engine, Event, Kernel, Lrr, LrrSettings, MaxRateClassifier,
    ThresholdCrossing, ThresholdSettings, WeightsSource,
};

/// The command line's own module (the binary's `src/cli`), compiled in here.
#[allow(dead_code, unused_imports)]
#[path = "../src/cli/mod.rs"]
pub mod cli;

/// The names of the targets, in the order of [`run`].
pub const TARGETS: [&str; 7] = [
    "npy",
    "spikeglx_meta",
    "oebin",
    "lrr_csv",
    "cli",
    "operators",
    "state",
];

/// Runs target `name` on `data`.
pub fn run(name: &str, data: &[u8]) {
    match name {
        "npy" => npy(data),
        "spikeglx_meta" => spikeglx_meta(data),
        "oebin" => oebin(data),
        "lrr_csv" => lrr_csv(data),
        "cli" => cli_args(data),
        "operators" => operators(data),
        "state" => saved_state(data),
        other => panic!("no fuzz target `{other}`"),
    }
}

/// Arbitrary bytes restored into every operator that saves its state (and the chain): an
/// error or a restore, never a panic.
pub fn saved_state(data: &[u8]) {
    let _ = neurokernels::state::fuzz_restore(data);
}

/// Reads every sample of an opened recording (and its sync word): a recording that opened
/// must read back whole.
fn read_all(rec: &Recording) {
    let n = rec.n_samples().min(4096);
    let mut out = Array2::<f32>::zeros((n, rec.n_channels()));
    rec.read_chunk(0, &mut out)
        .expect("a recording that opened reads back");
    rec.read_sync(0, n).expect("the sync word reads back");
    assert_eq!(rec.channel_ids().len(), rec.n_channels());
    assert_eq!(rec.uv_per_bit().len(), rec.n_channels());
    // One row past the end is an error, not a panic.
    let mut one = Array2::<f32>::zeros((1, rec.n_channels()));
    assert!(rec.read_chunk(rec.n_samples(), &mut one).is_err());
    let _ = rec.provenance();
}

/// An `.npy` file's bytes, opened as a recording (rate 30 kHz).
pub fn npy(data: &[u8]) {
    let options = OpenOptions {
        fs: Some(30_000.0),
        ..Default::default()
    };
    if let Ok(rec) = Recording::from_npy_bytes(data.to_vec(), &options) {
        read_all(&rec);
    }
}

/// A SpikeGLX `.meta` text; its `.bin` holds `fileSizeBytes` zero bytes when that is small
/// (else the text's own length, which the size check then rejects).
pub fn spikeglx_meta(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let claimed = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("fileSizeBytes="))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n <= 1 << 16)
        .unwrap_or(data.len());
    if let Ok(rec) = Recording::from_spikeglx_bytes(text, vec![0u8; claimed]) {
        read_all(&rec);
    }
}

/// A `structure.oebin` text; the stream's `continuous.dat` holds 27 720 zero int16 values (a
/// whole number of samples for 1 to 12 channels).
pub fn oebin(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for stream in [None, Some("A")] {
        if let Ok(rec) = Recording::from_openephys_bytes(text, vec![0u8; 2 * 27_720], stream) {
            read_all(&rec);
        }
    }
}

/// An LRR weights CSV; when it parses to a small square matrix, the operator loads it and
/// transforms one chunk.
pub fn lrr_csv(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(w) = neurokernels::lrr::parse_csv(text) else {
        return;
    };
    assert!(w.iter().all(|v| v.is_finite()), "parsed weights are finite");
    let n = w.nrows();
    if n == 0 || n > 64 {
        return;
    }
    let settings = LrrSettings {
        weights: Some(WeightsSource::Array(w)),
        ..Default::default()
    };
    if let Ok(mut lrr) = Lrr::new(&Engine::cpu(), settings) {
        let x = Array2::<f32>::from_shape_fn((5, n), |(s, c)| (s * 7 + c) as f32 - 3.0);
        let _ = lrr.transform(x.view());
    }
}

/// A command line: NUL-separated arguments after the program name, parsed with the CLI's
/// own clap types and checked (settings validated, nothing run) for `process` as for a
/// 384-channel recording at 30 kHz.
pub fn cli_args(data: &[u8]) {
    use clap::Parser;
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let args = std::iter::once("neurokernels").chain(text.split('\0'));
    let Ok(parsed) = cli::Cli::try_parse_from(args) else {
        return;
    };
    let _ = cli::check(&parsed, 384, 30_000.0);
}

/// Reads the fuzzer's bytes as operator settings and sample values.
struct Input<'a> {
    data: &'a [u8],
}

impl Input<'_> {
    fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    /// One of `options` (not empty).
    fn pick<T: Copy>(&mut self, options: &[T]) -> T {
        options[self.u8() as usize % options.len()]
    }

    fn bool(&mut self) -> bool {
        self.u8() & 1 == 1
    }

    /// A sample: usually ordinary, sometimes NaN, ±inf, a denormal, ±0, ±1e30 or an int16
    /// extreme.
    fn sample(&mut self) -> f32 {
        let tag = self.u8();
        match tag {
            0 => f32::NAN,
            1 => f32::INFINITY,
            2 => f32::NEG_INFINITY,
            3 => f32::MIN_POSITIVE / 8.0,
            4 => -0.0,
            5 => 1e30,
            6 => -1e30,
            7 => 32767.0,
            8 => -32768.0,
            9 => f32::MAX,
            _ => (self.u16() as i16) as f32 / 64.0,
        }
    }

    /// A finite sample (the same draws, non-finite ones replaced by 0).
    fn finite_sample(&mut self) -> f32 {
        let v = self.sample();
        if v.is_finite() {
            v
        } else {
            0.0
        }
    }

    /// A setting: usually a plausible value, sometimes one out of range.
    fn setting(&mut self, plausible: f64) -> f64 {
        match self.u8() {
            0 => f64::NAN,
            1 => f64::INFINITY,
            2 => f64::NEG_INFINITY,
            3 => 0.0,
            4 => -0.0,
            5 => -plausible,
            6 => 1e30,
            7 => 1e-300,
            8 => f64::MIN_POSITIVE / 8.0,
            b => plausible * (b as f64 / 128.0),
        }
    }

    /// A chunk of `rows` × `cols` samples.
    fn chunk(&mut self, rows: usize, cols: usize) -> Array2<f32> {
        Array2::from_shape_simple_fn((rows, cols), || self.sample())
    }

    /// Chunks (shaped as by `dims`) handed to `f` until the bytes run out; `f` may read
    /// more bytes.
    fn each_chunk(&mut self, width: usize, mut f: impl FnMut(&mut Self, Array2<f32>)) {
        while !self.is_empty() {
            let (rows, cols) = self.dims(width);
            let x = self.chunk(rows, cols);
            f(self, x);
        }
    }

    /// Chunk dimensions: up to 48 rows, and the stream's width or (rarely) another one.
    fn dims(&mut self, width: usize) -> (usize, usize) {
        let rows = (self.u8() % 49) as usize;
        let cols = match self.u8() {
            0 => 0,
            1 => width + 1,
            _ => width,
        };
        (rows, cols)
    }
}

/// Operators on the CPU engine fed arbitrary settings, chunk shapes and values (NaN, ±inf,
/// denormals, ±0, 1e30, int16 extremes): each call returns a result (the error, if any,
/// typed) and never panics.
pub fn operators(data: &[u8]) {
    let mut inp = Input { data };
    let engine = Engine::cpu();
    let op = inp.u8() % 12;
    let width = 1 + (inp.u8() % 9) as usize;
    let fs = inp.setting(30_000.0);
    match op {
        0 | 1 => {
            let kernel = match inp.u8() % 3 {
                0 => Kernel::Count,
                1 => Kernel::Exponential {
                    tau: inp.setting(0.01),
                },
                _ => Kernel::Alpha {
                    tau: inp.setting(0.01),
                },
            };
            let aggregation = inp.pick(&[
                Aggregation::Last,
                Aggregation::Mean,
                Aggregation::Sum,
                Aggregation::Max,
            ]);
            let settings = BinningSettings {
                kernel,
                bin_duration: inp.setting(0.001),
                aggregation,
                scale_by_value: inp.bool(),
                normalize: inp.bool(),
                rate_normalize: inp.bool(),
                t0: inp.setting(1.0),
                first_sample: if inp.bool() { u64::MAX - 64 } else { 0 },
            };
            let Ok(mut b) = BinnedActivation::new(&engine, settings, fs) else {
                return;
            };
            while !inp.is_empty() {
                let (rows, cols) = inp.dims(width);
                if op == 0 {
                    let x = inp.chunk(rows, cols);
                    let _ = b.process_dense(x.view());
                } else {
                    let n = (inp.u8() % 8) as usize;
                    let start = b.position();
                    let events: Vec<Event> = (0..n)
                        .map(|_| Event {
                            sample: start.wrapping_add(inp.u8() as u64 % (rows as u64 + 2)),
                            channel: (inp.u8() % (cols as u8 + 2)) as u32,
                            value: inp.sample(),
                        })
                        .collect();
                    let _ = b.process_events(&events, rows, cols);
                }
            }
        }
        2 => {
            let settings = ThresholdSettings {
                threshold: inp.setting(-3.0),
                refrac_dur: inp.setting(0.001),
                max_peak_dur: inp.setting(0.002),
                min_peak_dur: inp.setting(0.0005),
                align_on_peak: inp.bool(),
                return_peak_val: inp.bool(),
                auto_scale_tau: inp.setting(0.01),
                first_sample: if inp.bool() { u64::MAX - 64 } else { 0 },
            };
            let Ok(mut t) = ThresholdCrossing::new(&engine, settings, fs) else {
                return;
            };
            inp.each_chunk(width, |_, x| {
                let _ = t.process(x.view());
            });
        }
        3 => {
            let settings = FilterSettings {
                low_hz: inp.setting(300.0),
                high_hz: inp.setting(6000.0),
                order: (inp.u8() % 12) as usize,
            };
            let Ok(mut f) = BandpassFilter::new(&engine, settings, fs) else {
                return;
            };
            inp.each_chunk(width, |_, x| {
                let _ = f.process(x.view());
            });
        }
        4 => {
            let settings = CarSettings { median: inp.bool() };
            let Ok(mut car) = CommonAverage::new(&engine, settings) else {
                return;
            };
            inp.each_chunk(width, |_, x| {
                let _ = car.process(x.view());
            });
        }
        5 => {
            let clusters = match inp.u8() % 3 {
                0 => None,
                1 => Some(neurokernels::lrr::consecutive_clusters(
                    width,
                    1 + (inp.u8() % 4) as usize,
                )),
                _ => Some(vec![(0..width)
                    .filter(|_| inp.bool())
                    .collect::<Vec<usize>>()]),
            };
            let settings = LrrSettings {
                channel_clusters: clusters,
                ridge_lambda: inp.setting(0.1),
                incremental: inp.bool(),
                weights: None,
                full_covariance: inp.bool(),
                update_every: (inp.u8() % 4) as u64,
            };
            let Ok(mut lrr) = Lrr::new(&engine, settings) else {
                return;
            };
            inp.each_chunk(width, |inp, x| {
                let _ = match inp.u8() % 3 {
                    0 => lrr.partial_fit(x.view()).map(drop),
                    1 => lrr.transform(x.view()).map(drop),
                    _ => lrr.solve(),
                };
            });
        }
        6 => {
            let steps = (inp.u8() % 20) as usize;
            let mut rate = RateEncoder::new(
                &engine,
                RateSettings {
                    steps,
                    max_r: inp.setting(0.75) as f32,
                    seed: inp.u8() as u64,
                    time_major: inp.bool(),
                    packed: inp.bool(),
                },
            );
            let mut latency = LatencyEncoder::new(
                &engine,
                LatencySettings {
                    steps,
                    threshold: inp.setting(0.01) as f32,
                    packed: inp.bool(),
                },
            );
            let mut angle = AngleEncoder::new(
                &engine,
                AngleSettings {
                    neuron_count: (inp.u8() % 20) as usize,
                    min_val: inp.setting(-1.0),
                    max_val: inp.setting(1.0),
                },
            );
            inp.each_chunk(width, |inp, x| {
                let _ = match (inp.u8() % 3, &mut rate, &mut latency, &mut angle) {
                    (0, Ok(e), _, _) => e.encode(x.view()),
                    (1, _, Ok(e), _) => e.encode(x.view()),
                    (2, _, _, Ok(e)) => e.encode(x.view()),
                    _ => return,
                };
            });
        }
        7 => {
            let axes = (0..inp.u8() % 4)
                .map(|_| (inp.u8() % 7) as isize - 3)
                .collect();
            let settings = ShiftSettings {
                max_shift: (inp.u8() % 40) as u32,
                axes,
                per_sample: inp.bool(),
                seed: inp.u8() as u64,
            };
            let Ok(mut shift) = ShiftAugment::new(&engine, settings) else {
                return;
            };
            while !inp.is_empty() {
                let rank = 1 + (inp.u8() % 3) as usize;
                let shape: Vec<usize> = (0..rank).map(|_| (inp.u8() % 6) as usize).collect();
                let x = ArrayD::from_shape_simple_fn(IxDyn(&shape), || inp.sample());
                let _ = shift.apply(x.view());
            }
        }
        8 => {
            let n_classes = (inp.u8() % 5) as usize;
            let settings = ClassifierSettings {
                n_neurons: width,
                n_classes,
                decay: inp.setting(0.1),
                proportional: inp.bool(),
            };
            let Ok(mut clf) = MaxRateClassifier::new(&engine, settings) else {
                return;
            };
            inp.each_chunk(width, |inp, x| {
                let labels: Vec<usize> = (0..x.nrows())
                    .map(|_| (inp.u8() % (n_classes as u8 + 2)) as usize)
                    .collect();
                let _ = match inp.u8() % 3 {
                    0 => clf.update(x.view(), &labels),
                    1 => clf.classify(x.view()).map(drop),
                    _ => clf.forward(x.view().into_dyn(), Some(&labels)).map(drop),
                };
            });
        }
        9 => {
            let n = width.min(4);
            let nb = 1 + (inp.u8() % 3) as usize;
            let ws = 1 + (inp.u8() % 4) as usize;
            let nf = 1 + (inp.u8() % 2) as usize;
            let coupling =
                ArrayD::from_shape_simple_fn(IxDyn(&[n, n, nb]), || inp.sample() as f64 / 1e3);
            let ff = ArrayD::from_shape_simple_fn(IxDyn(&[n, nf]), || inp.sample() as f64 / 1e3);
            let intercepts = ArrayD::from_shape_simple_fn(IxDyn(&[n]), || inp.setting(-2.0));
            let basis = ArrayD::from_shape_simple_fn(IxDyn(&[ws, nb]), || inp.sample() as f64);
            let link = if inp.bool() {
                Link::Exp
            } else {
                Link::Softplus
            };
            let Ok(mut glm) = RecurrentGlm::new(
                &engine,
                coupling.view(),
                ff.view(),
                intercepts.view(),
                basis.view(),
                link,
            ) else {
                return;
            };
            let init = ArrayD::from_shape_simple_fn(IxDyn(&[ws, n]), || (inp.u8() % 3) as f64);
            let sampling = if inp.bool() {
                Sampling::Poisson
            } else {
                Sampling::Expected
            };
            if glm
                .start(init.view(), &[inp.u8() as u64], sampling)
                .is_err()
            {
                return;
            }
            while !inp.is_empty() {
                let t = (inp.u8() % 8) as usize;
                let input =
                    ArrayD::from_shape_simple_fn(IxDyn(&[t, n, nf]), || inp.sample() as f64);
                let _ = glm.run(input.view());
            }
        }
        _ => {
            let reference = inp.pick(&[
                ReferenceMode::Lrr,
                ReferenceMode::Car,
                ReferenceMode::CarMedian,
                ReferenceMode::None,
            ]);
            let settings = ChainSettings {
                filter: if inp.bool() {
                    Some(FilterSettings {
                        low_hz: inp.setting(300.0),
                        high_hz: inp.setting(6000.0),
                        order: (inp.u8() % 5) as usize,
                    })
                } else {
                    None
                },
                reference,
                threshold: if inp.bool() {
                    ThresholdRule::Absolute(inp.setting(-50.0))
                } else {
                    ThresholdRule::NoiseMultiple(inp.setting(-4.0))
                },
                binning: BinningSettings {
                    kernel: Kernel::Count,
                    aggregation: Aggregation::Sum,
                    bin_duration: inp.setting(0.001),
                    ..Default::default()
                },
                ..Default::default()
            };
            let fit_rows = 1 + (inp.u8() % 64) as usize;
            let window = Array2::from_shape_simple_fn((fit_rows, width), || inp.finite_sample());
            let Ok(mut chain) = Chain::calibrate(&engine, settings, fs, window.view(), 0) else {
                return;
            };
            inp.each_chunk(width, |_, x| {
                let _ = chain.process(x.view());
            });
        }
    }
}
