//! Covariance accumulation and linear regression rereferencing, LRR (SPEC §2; seed:
//! `ezmsg.learn.process.ssr`).
//!
//! # Definition
//! For chunks `X` of shape `(samples, channels)`:
//!
//! * **Statistics.** `partial_fit(X)`: `C += XᵀX` (or `C = XᵀX` with `incremental = false`)
//!   and `n_samples += rows`. A chunk holding any NaN is skipped whole and counted
//!   ([`Lrr::skipped_chunks`]; the seed's convention for dropped samples); ±inf is an error.
//!   [`Lrr::fit`] replaces the statistics with one batch.
//! * **Weights**, per cluster `c` (a list of channels; none = one cluster of all channels):
//!   `Cinv = (C[c,c] + λI)⁻¹`, `W[:,j] = −Cinv[:,j] / Cinv[j,j]`, `diag(W) = 0`; entries
//!   outside every cluster are 0. For each channel `j`, column `j` of `W` holds the ridge
//!   regression of `j` on the other channels of its cluster, so `X·(I − W)` is each channel
//!   minus its prediction from its neighbours (with `λ = 0`: the ordinary least-squares
//!   residual).
//! * **Transform**: `Y = X·(I − W)`, applied block-diagonally: only each cluster's block is
//!   multiplied; channels in no cluster (and singleton clusters) pass through unchanged.
//!
//! Special cases: a **dead** channel (all its samples zero so far, `λ = 0`) gets zero
//! weights in both directions and passes through (never NaN). A **singular** cluster (a
//! pivot below `1e-10` of its equilibrated diagonal: duplicated channels, fewer samples than
//! channels) falls back to the pseudo-inverse of its live channels (SVD, singular values
//! below `1e-10·σ_max` dropped), as the seed does when `inv` fails; on the GPU engine this
//! rare case is solved on the host in `f64` from the device's `C` (read back), documented
//! and tested. The order of channels inside a cluster and the order of clusters do not
//! matter: members are sorted, so any listing gives bit-identical results.
//!
//! Weights are re-solved lazily: only when they are needed (a [`Lrr::transform`], a
//! read-back, or [`Lrr::solve`]) after the statistics changed. With
//! [`LrrSettings::update_every`] `= N > 0`, `transform` re-solves only once at least `N`
//! samples arrived since the last solve (streaming adaptation without a solve per chunk);
//! read-backs and `solve()` always bring the weights up to date.
//!
//! # Engines and error bounds
//! Both engines accumulate `C` the same way: per entry, the `f32` products of at most a
//! bounded run of samples are summed in `f32`, then folded into a wider accumulator.
//!
//! * **CPU**: runs of 32 samples summed in `f32` registers (AVX2 + FMA when present), folded
//!   into `f64`. Bound per entry: `|ΔC_ij| ≤ 32·2⁻²⁴·Σ_s|x_si·x_sj| ≤ 1.9e-6·√(C_ii·C_jj)`
//!   (Cauchy–Schwarz), whatever the number of samples (the `f64` fold adds ~1e-16 per chunk).
//!   Weights: `f64` symmetric sweep on the equilibrated block (error ≈ κ·1e-16).
//! * **GPU**: each workgroup sums a tile's products over runs of 8 samples in `f32`, adds
//!   8 such runs in `f32`, and folds every 64-sample partial into a **double-`f32` `(hi, lo)`
//!   accumulator** (an unevaluated sum of two `f32`, ≈ 48 significant bits); the partials of
//!   a chunk's sample splits are then summed, and added to the device-resident `C`, in
//!   double-`f32` too. Bound per entry: `(1 + 7 + 7)·2⁻²⁴·Σ|x_si·x_sj| ≤ 9.0e-7·√(C_ii·C_jj)`
//!   plus `O(2⁻⁴⁴)` from the folds, for any number of samples. WGSL lets compilers
//!   reassociate, fuse and simplify float expressions (Mesa's NIR rewrites `(a + b) − a` to
//!   `b`, which turns a naive two-sum into zero), so every intermediate of a two-sum or
//!   two-product passes through an *opacity barrier*: `bitcast<f32>(bitcast<u32>(v) | zero)`,
//!   where `zero` is a uniform that is 0 at run time but unknown to the compiler. No
//!   algebraic identity can be applied across it, and it costs one integer OR. Tested on
//!   Vulkan (lavapipe) and GL (llvmpipe): `tests/lrr.rs`, `*_accumulation_*`.
//!   Weights: Gauss–Jordan in **emulated double precision** (double-`f32` add, Dekker
//!   two-product with a bit-mask split, all behind the same barriers), on the equilibrated
//!   block, every cluster (of any size) in one batched dispatch (one workgroup per cluster).
//!   Measured `W` error against an `f64` solve of the same `C`: ≤ 1e-7 relative (Frobenius)
//!   at condition numbers up to 1e6 (the bound tested is 1e-5). `W` is stored in `f32`.
//! * **Transform**: `f32` products with `f32` accumulation over the cluster (both engines),
//!   error ≤ `k·2⁻²⁴·Σ_a|x_a·M_ab|` for a cluster of `k`.
//!
//! Values must be finite with `|x| ≤ 1e15` in `partial_fit`/`fit` (the square of a larger
//! value leaves `f32` range on the GPU engine; both engines reject it alike). On the GPU
//! engine, entries of `C` below ~1e-30 (data below ~1e-15) lose relative precision to `f32`
//! underflow.
//!
//! # Storage of `C`
//! With clusters given, only the cluster blocks of `C` are accumulated (8 clusters of 48 in
//! 384 channels: 1/8 of `XᵀX`; and only blocks on or above the diagonal: symmetry). The full
//! `C` is accumulated when [`LrrSettings::full_covariance`] asks for it or when one cluster
//! covers every channel. [`Lrr::covariance`] then returns the cluster blocks, zero elsewhere
//! (or the full matrix when it was accumulated).
//!
//! # Where this differs from the seed
//! The seed re-solves the weights on every `partial_fit`; here they are solved lazily when
//! needed (same values). A dead channel gets zero weights (the seed divides 0 by 0: NaN). A
//! permuted cluster covering every channel gets the right `W` (the seed's `k == n` shortcut
//! skips the permutation). Duplicated cluster indices are an error (the seed accepts them).
//! Input is `f32` (the seed computes in the input's dtype, usually `float64`); `C` is still
//! accumulated to ~1e-6 relative. A singular cluster is detected by a relative pivot
//! threshold, not only by an exactly zero LAPACK pivot. An empty chunk leaves the
//! statistics unchanged in `partial_fit` (also when not incremental).

mod cpu;
mod gpu;
mod kernels;
mod solve;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use ndarray::{Array2, ArrayView2, ArrayViewMut2};

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::gpu::DeviceArray;
use crate::state::{Fingerprint, StateReader, StateWriter};
use crate::validate::{check_out_shape, needs_gpu};

/// Largest magnitude accepted in `partial_fit`/`fit` (its square stays far inside `f32`).
pub const MAX_ABS_VALUE: f32 = 1e15;

/// Operator tag of a saved LRR state.
const STATE_TAG: [u8; 4] = *b"LRR ";

/// Largest channel count a saved state may name.
const MAX_STATE_CHANNELS: u64 = 1 << 20;

/// Where preloaded weights come from.
#[derive(Debug, Clone, PartialEq)]
pub enum WeightsSource {
    /// An `n × n` weight matrix `W` (not `I − W`).
    Array(Array2<f64>),
    /// A CSV file of `W` (comma-separated numbers, one row per line, `numpy.savetxt(...,
    /// delimiter=",")` / `numpy.loadtxt(..., delimiter=",")` compatible; blank lines and
    /// lines starting with `#` are ignored).
    Csv(PathBuf),
}

/// Settings of [`Lrr`]. Defaults are the seed's: one cluster of all channels, no ridge,
/// incremental.
#[derive(Debug, Clone, PartialEq)]
pub struct LrrSettings {
    /// Lists of channel indices; `None` = one cluster of all channels. Each channel may
    /// appear at most once overall; empty lists are ignored. Member order does not matter.
    pub channel_clusters: Option<Vec<Vec<usize>>>,
    /// Ridge (L2) regularisation `λ ≥ 0`, added to each cluster block's diagonal.
    pub ridge_lambda: f64,
    /// `true`: `partial_fit` adds to the statistics; `false`: each call replaces them.
    pub incremental: bool,
    /// Preloaded weights: the operator can transform at once. The first solve after new
    /// statistics replaces them.
    pub weights: Option<WeightsSource>,
    /// Accumulate the full `C` even when clusters leave parts of it unused (costs
    /// `n²/Σk²` times the work; `C` of all channels can then be read back).
    pub full_covariance: bool,
    /// `0` (default): `transform` re-solves the weights whenever the statistics changed since
    /// the last solve. `N > 0`: only once `N` samples have been accumulated since then.
    pub update_every: u64,
}

impl Default for LrrSettings {
    fn default() -> Self {
        LrrSettings {
            channel_clusters: None,
            ridge_lambda: 0.0,
            incremental: true,
            weights: None,
            full_covariance: false,
            update_every: 0,
        }
    }
}

/// What can be read back and saved: the fitted weights and statistics.
#[derive(Debug, Clone, PartialEq)]
pub struct LrrSnapshot {
    /// `W` (`n × n`), zero outside the cluster blocks.
    pub weights: Array2<f64>,
    /// `I − W`, the matrix `transform` applies.
    pub effective_weights: Array2<f64>,
    /// `C` (`n × n`): cluster blocks, zero elsewhere (unless the full `C` was accumulated);
    /// `None` when the weights were preloaded and no statistics exist.
    pub covariance: Option<Array2<f64>>,
    /// Samples accumulated into `C`.
    pub n_samples: u64,
}

impl LrrSnapshot {
    /// Writes `weights.csv`, `effective_weights.csv`, `covariance.csv` (when present) and
    /// `n_samples.txt` into directory `dir` (created if missing). `weights.csv` loads back
    /// with [`WeightsSource::Csv`].
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
        write_csv(dir.join("weights.csv"), self.weights.view())?;
        write_csv(
            dir.join("effective_weights.csv"),
            self.effective_weights.view(),
        )?;
        if let Some(c) = &self.covariance {
            write_csv(dir.join("covariance.csv"), c.view())?;
        }
        let p = dir.join("n_samples.txt");
        std::fs::write(&p, format!("{}\n", self.n_samples)).map_err(|e| io_error(&p, e))
    }
}

fn io_error(path: &Path, e: std::io::Error) -> Error {
    Error::setting("path", format!("{}: {e}", path.display()))
}

/// Writes a matrix as CSV (shortest round-trip decimals, `numpy.loadtxt(...,
/// delimiter=",")` compatible).
pub fn write_csv(path: impl AsRef<Path>, m: ArrayView2<'_, f64>) -> Result<()> {
    let path = path.as_ref();
    let mut s = String::with_capacity(m.len() * 24);
    for row in m.outer_iter() {
        for (j, v) in row.iter().enumerate() {
            if j > 0 {
                s.push(',');
            }
            let _ = write!(s, "{v:e}");
        }
        s.push('\n');
    }
    std::fs::write(path, s).map_err(|e| io_error(path, e))
}

/// Clusters of `size` consecutive channels covering `0..n_channels` (the last one shorter
/// when `size` does not divide `n_channels`): the layout of probes whose common noise is
/// shared by neighbouring sites. `size` 0 is treated as 1.
pub fn consecutive_clusters(n_channels: usize, size: usize) -> Vec<Vec<usize>> {
    let k = size.max(1);
    (0..n_channels.div_ceil(k))
        .map(|c| (c * k..((c + 1) * k).min(n_channels)).collect())
        .collect()
}

/// Reads a CSV matrix (see [`WeightsSource::Csv`]). Errors name the file, line and field:
/// [`Error::InvalidSetting`] `weights` for an unreadable file, a non-numeric or non-finite
/// field; [`Error::Shape`] for ragged rows.
pub fn read_csv(path: impl AsRef<Path>) -> Result<Array2<f64>> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::setting("weights", format!("cannot read {}: {e}", path.display())))?;
    csv_matrix(path, &text)
}

/// Parses the text of a CSV matrix, as [`read_csv`] reads a file; errors name the file
/// `<memory>`.
pub fn parse_csv(text: &str) -> Result<Array2<f64>> {
    csv_matrix(Path::new("<memory>"), text)
}

fn csv_matrix(path: &Path, text: &str) -> Result<Array2<f64>> {
    let mut rows: Vec<Vec<f64>> = Vec::new();
    for (ln, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let mut row = Vec::new();
        for (f, field) in t.split(',').enumerate() {
            let v: f64 = field.trim().parse().map_err(|_| {
                Error::setting(
                    "weights",
                    format!(
                        "{} line {}, field {}: `{}` is not a number",
                        path.display(),
                        ln + 1,
                        f + 1,
                        field.trim()
                    ),
                )
            })?;
            if !v.is_finite() {
                return Err(Error::setting(
                    "weights",
                    format!(
                        "{} line {}, field {}: {v} is not finite",
                        path.display(),
                        ln + 1,
                        f + 1
                    ),
                ));
            }
            row.push(v);
        }
        if let Some(first) = rows.first() {
            if first.len() != row.len() {
                return Err(Error::shape(
                    "weights CSV rows",
                    format!("{} fields per line", first.len()),
                    format!("{} fields on line {}", row.len(), ln + 1),
                ));
            }
        }
        rows.push(row);
    }
    let ncols = rows.first().map_or(0, |r| r.len());
    let flat: Vec<f64> = rows.iter().flatten().copied().collect();
    Array2::from_shape_vec((rows.len(), ncols), flat)
        .map_err(|e| Error::shape("weights CSV", "a matrix", e.to_string()))
}

/// The channel layout both engines share: clusters (members sorted), the accumulation groups
/// of `C`, where each cluster's members sit in its group, and the pass-through channels.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    /// Channel count.
    pub n: usize,
    /// Non-empty clusters, members ascending.
    pub clusters: Vec<Vec<usize>>,
    /// Whether `C` is accumulated in full (one group of all channels in order).
    pub full: bool,
    /// Accumulation groups: channel lists whose `XᵀX` block is accumulated.
    pub groups: Vec<Vec<usize>>,
    /// Group of each cluster.
    pub cluster_group: Vec<usize>,
    /// Position of each cluster member in its group.
    pub cluster_pos: Vec<Vec<usize>>,
    /// Channels in no cluster.
    pub passthrough: Vec<usize>,
}

/// Checks that no channel appears twice (needs no channel count).
fn check_duplicates(clusters: &[Vec<usize>]) -> Result<()> {
    let mut seen: std::collections::HashMap<usize, usize> = std::collections::HashMap::new();
    for (ci, c) in clusters.iter().enumerate() {
        for &ch in c {
            if let Some(prev) = seen.insert(ch, ci) {
                return Err(Error::setting(
                    "channel_clusters",
                    if prev == ci {
                        format!("channel {ch} appears twice in cluster {ci}")
                    } else {
                        format!("channel {ch} appears in clusters {prev} and {ci}")
                    },
                ));
            }
        }
    }
    Ok(())
}

impl Layout {
    fn new(n: usize, clusters: Option<&Vec<Vec<usize>>>, full_requested: bool) -> Result<Self> {
        let clusters: Vec<Vec<usize>> = match clusters {
            None => vec![(0..n).collect()],
            Some(cs) => {
                check_duplicates(cs)?;
                for c in cs {
                    for &ch in c {
                        if ch >= n {
                            return Err(Error::IndexOutOfRange {
                                what: "channel_clusters",
                                index: ch as u64,
                                bound: n as u64,
                            });
                        }
                    }
                }
                cs.iter()
                    .filter(|c| !c.is_empty())
                    .map(|c| {
                        let mut c = c.clone();
                        c.sort_unstable();
                        c
                    })
                    .collect()
            }
        };
        let full = full_requested || clusters.iter().any(|c| c.len() == n);
        let mut in_cluster = vec![false; n];
        for c in &clusters {
            for &ch in c {
                in_cluster[ch] = true;
            }
        }
        let passthrough = (0..n).filter(|&ch| !in_cluster[ch]).collect();
        let (groups, cluster_group, cluster_pos) = if full {
            (
                vec![(0..n).collect::<Vec<_>>()],
                vec![0; clusters.len()],
                clusters.clone(),
            )
        } else {
            (
                clusters.clone(),
                (0..clusters.len()).collect(),
                clusters.iter().map(|c| (0..c.len()).collect()).collect(),
            )
        };
        Ok(Layout {
            n,
            clusters,
            full,
            groups,
            cluster_group,
            cluster_pos,
            passthrough,
        })
    }

    /// Scatters per-cluster `k × k` blocks into an `n × n` matrix.
    fn scatter(&self, blocks: &[Vec<f64>]) -> Array2<f64> {
        let mut out = Array2::zeros((self.n, self.n));
        for (c, b) in self.clusters.iter().zip(blocks) {
            let k = c.len();
            for (a, &i) in c.iter().enumerate() {
                for (bb, &j) in c.iter().enumerate() {
                    out[[i, j]] = b[a * k + bb];
                }
            }
        }
        out
    }

    /// Per-cluster blocks of an `n × n` matrix.
    fn gather(&self, w: &Array2<f64>) -> Vec<Vec<f64>> {
        self.clusters
            .iter()
            .map(|c| {
                let mut b = Vec::with_capacity(c.len() * c.len());
                for &i in c {
                    for &j in c {
                        b.push(w[[i, j]]);
                    }
                }
                b
            })
            .collect()
    }
}

/// The result of scanning a chunk's values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Scan {
    /// Every value finite and within [`MAX_ABS_VALUE`].
    Ok,
    /// At least one NaN: the chunk is skipped.
    Nan,
    /// The first ±inf (or, with no ±inf, the first too-large value), row-major.
    Bad {
        sample: usize,
        channel: usize,
        value: f32,
    },
}

impl Scan {
    fn error(self) -> Error {
        match self {
            Scan::Bad {
                sample,
                channel,
                value,
            } => Error::NonFinite {
                what: if value.is_finite() {
                    "chunk (|value| above 1e15, whose square leaves f32 range)"
                } else {
                    "chunk"
                },
                sample,
                channel,
                value: value as f64,
            },
            _ => Error::Validation("scan: not an error".into()),
        }
    }
}

/// Full scan of a chunk: any NaN wins; else the first ±inf; else the first `|x| > 1e15`.
pub(crate) fn scan_chunk(chunk: ArrayView2<'_, f32>) -> Scan {
    let mut first_inf = None;
    let mut first_big = None;
    for (s, row) in chunk.outer_iter().enumerate() {
        let clean = match row.as_slice() {
            Some(r) => r.iter().fold(true, |ok, x| ok & (x.abs() <= MAX_ABS_VALUE)),
            None => row.iter().all(|x| x.abs() <= MAX_ABS_VALUE),
        };
        if clean {
            continue;
        }
        for (c, &v) in row.iter().enumerate() {
            if v.is_nan() {
                return Scan::Nan;
            }
            if v.is_infinite() && first_inf.is_none() {
                first_inf = Some((s, c, v));
            }
            if v.abs() > MAX_ABS_VALUE && first_big.is_none() {
                first_big = Some((s, c, v));
            }
        }
    }
    match first_inf.or(first_big) {
        Some((sample, channel, value)) => Scan::Bad {
            sample,
            channel,
            value,
        },
        None => Scan::Ok,
    }
}

#[derive(Debug)]
enum EngineState {
    Cpu(cpu::CpuLrr),
    Gpu(Box<gpu::GpuLrr>),
}

/// Linear regression rereferencing with streaming covariance accumulation, on either
/// engine. See the [module docs](self) for the definition and error bounds.
///
/// ```no_run
/// use neurokernels::{Engine, Lrr, LrrSettings};
/// let clusters = (0..8).map(|c| (c * 48..(c + 1) * 48).collect()).collect();
/// let mut lrr = Lrr::new(&Engine::auto()?, LrrSettings {
///     channel_clusters: Some(clusters), ..Default::default() })?;
/// let chunk = ndarray::Array2::<f32>::zeros((30_000, 384));
/// lrr.partial_fit(chunk.view())?;
/// let y = lrr.transform(chunk.view())?; // X·(I − W)
/// # Ok::<(), neurokernels::Error>(())
/// ```
#[derive(Debug)]
pub struct Lrr {
    settings: LrrSettings,
    engine: Engine,
    /// Validated preloaded weights.
    preloaded: Option<Array2<f64>>,
    layout: Option<Layout>,
    state: Option<EngineState>,
    n_samples: u64,
    skipped: u64,
    solves: u64,
    /// Statistics exist (a chunk was accepted, or `fit` ran).
    has_stats: bool,
    /// The statistics changed since the weights were last solved.
    stale: bool,
    /// Samples accumulated since the last solve.
    since_solve: u64,
    /// Weights are available (solved or preloaded).
    has_weights: bool,
    /// Clusters that fell back to the pseudo-inverse at the last solve.
    singular: Vec<usize>,
}

impl Lrr {
    /// GPU engine: drops the buffers sized for the largest chunk so far (after fitting on a
    /// large calibration window, before a stream of small chunks).
    pub(crate) fn release_scratch(&mut self) {
        if let Some(EngineState::Gpu(g)) = &mut self.state {
            g.release_scratch();
        }
    }

    /// A new operator. Errors name the invalid setting: `ridge_lambda` negative or not
    /// finite, duplicated cluster members, preloaded weights that are not square, not
    /// finite, unreadable, or whose size puts a cluster index out of range.
    pub fn new(engine: &Engine, settings: LrrSettings) -> Result<Self> {
        if !(settings.ridge_lambda >= 0.0 && settings.ridge_lambda.is_finite()) {
            return Err(Error::setting(
                "ridge_lambda",
                format!("must be finite and ≥ 0, got {}", settings.ridge_lambda),
            ));
        }
        if let Some(cs) = &settings.channel_clusters {
            check_duplicates(cs)?;
        }
        let preloaded = match &settings.weights {
            None => None,
            Some(WeightsSource::Array(w)) => Some(w.clone()),
            Some(WeightsSource::Csv(p)) => Some(read_csv(p)?),
        };
        let mut op = Lrr {
            settings,
            engine: engine.clone(),
            preloaded: None,
            layout: None,
            state: None,
            n_samples: 0,
            skipped: 0,
            solves: 0,
            has_stats: false,
            stale: false,
            since_solve: 0,
            has_weights: false,
            singular: Vec::new(),
        };
        if let Some(w) = preloaded {
            let (r, c) = w.dim();
            if r != c || r == 0 {
                return Err(Error::shape(
                    "weights",
                    "a square n × n matrix with n ≥ 1",
                    format!("{r} × {c}"),
                ));
            }
            if let Some(((i, j), v)) = w.indexed_iter().find(|(_, v)| !v.is_finite()) {
                return Err(Error::NonFinite {
                    what: "weights",
                    sample: i,
                    channel: j,
                    value: *v,
                });
            }
            op.init(r)?;
            op.load_weights(&w)?;
            op.preloaded = Some(w);
        }
        Ok(op)
    }

    /// The settings.
    pub fn settings(&self) -> &LrrSettings {
        &self.settings
    }

    /// Channel count (fixed by the first chunk or by preloaded weights).
    pub fn n_channels(&self) -> Option<usize> {
        self.layout.as_ref().map(|l| l.n)
    }

    /// Samples accumulated into `C` (rows of accepted chunks; after a non-incremental
    /// `partial_fit` or `fit`, the rows of that call).
    pub fn n_samples(&self) -> u64 {
        self.n_samples
    }

    /// Chunks skipped because they held a NaN.
    pub fn skipped_chunks(&self) -> u64 {
        self.skipped
    }

    /// How many times the weights were solved (for checking the lazy-solve policy).
    pub fn solve_count(&self) -> u64 {
        self.solves
    }

    /// Clusters (indices into [`Lrr::clusters`]) whose last solve fell back to the
    /// pseudo-inverse because they were singular.
    pub fn singular_clusters(&self) -> &[usize] {
        &self.singular
    }

    /// Whether `transform` can run (weights were fitted or preloaded).
    pub fn is_fitted(&self) -> bool {
        self.has_weights || self.has_stats
    }

    /// The clusters in use (members ascending, empty clusters dropped), once the channel
    /// count is known.
    pub fn clusters(&self) -> Option<&[Vec<usize>]> {
        self.layout.as_ref().map(|l| l.clusters.as_slice())
    }

    /// Whether the full `C` is accumulated (asked for, or one cluster covers every channel).
    pub fn accumulates_full_covariance(&self) -> Option<bool> {
        self.layout.as_ref().map(|l| l.full)
    }

    /// Whether the GPU engine reads and writes this layout's channels four at a time
    /// (`shaders/lrr_quad.wgsl`): the channel count a multiple of 4, and every cluster made of
    /// runs of 4 consecutive channels that start at a multiple of 4 (as in the chain's
    /// clusters of 48). The results are the same bits either way; the quad kernels load half
    /// as often. `None` on the CPU engine or before the channel count is known.
    pub fn quad_kernels(&self) -> Option<bool> {
        match &self.state {
            Some(EngineState::Gpu(g)) => Some(g.quad()),
            _ => None,
        }
    }

    /// Forgets the statistics and fitted weights (preloaded weights come back; the channel
    /// count is kept only when weights were preloaded).
    pub fn reset(&mut self) -> Result<()> {
        self.n_samples = 0;
        self.skipped = 0;
        self.has_stats = false;
        self.stale = false;
        self.since_solve = 0;
        self.has_weights = false;
        self.layout = None;
        self.state = None;
        if let Some(w) = self.preloaded.clone() {
            self.init(w.nrows())?;
            self.load_weights(&w)?;
        }
        Ok(())
    }

    /// Builds the layout and the engine state for `n` channels.
    fn init(&mut self, n: usize) -> Result<()> {
        let layout = Layout::new(
            n,
            self.settings.channel_clusters.as_ref(),
            self.settings.full_covariance,
        )?;
        let state = match &self.engine {
            Engine::Cpu => EngineState::Cpu(cpu::CpuLrr::new(&layout)),
            Engine::Gpu(ctx) => EngineState::Gpu(Box::new(gpu::GpuLrr::new(ctx, &layout)?)),
        };
        self.layout = Some(layout);
        self.state = Some(state);
        Ok(())
    }

    /// Installs a validated `n × n` weight matrix.
    fn load_weights(&mut self, w: &Array2<f64>) -> Result<()> {
        let (Some(layout), Some(state)) = (&self.layout, &mut self.state) else {
            return Err(Error::Validation("weights loaded before init".into()));
        };
        let blocks = layout.gather(w);
        match state {
            EngineState::Cpu(c) => c.set_weights(layout, blocks),
            EngineState::Gpu(g) => g.set_weights(layout, &blocks)?,
        }
        self.has_weights = true;
        Ok(())
    }

    /// Checks the channel count of a chunk (and fixes it on first use).
    fn check_channels(&mut self, n: usize) -> Result<()> {
        if n == 0 {
            return Err(Error::shape("chunk", "at least one channel", "0 channels"));
        }
        match &self.layout {
            Some(l) if l.n != n => Err(Error::shape(
                "chunk",
                format!("{} channels (fixed by the first chunk or the weights)", l.n),
                format!("{n} channels"),
            )),
            Some(_) => Ok(()),
            None => self.init(n),
        }
    }

    /// Adds `XᵀX` of `chunk` (`(samples, channels)`, any strides) to the statistics, or
    /// replaces them when not incremental. Returns `false` when the chunk held a NaN and was
    /// skipped (counted in [`Lrr::skipped_chunks`]). ±inf, or `|x| > 1e15`, is an error
    /// naming the sample and channel; the statistics are then unchanged. An empty chunk
    /// changes nothing.
    pub fn partial_fit(&mut self, chunk: ArrayView2<'_, f32>) -> Result<bool> {
        let replace = !self.settings.incremental;
        self.accumulate(chunk, replace, false)
    }

    /// Replaces the statistics with `XᵀX` of one batch (`n_samples` = its rows; an empty
    /// batch gives `C = 0`). NaN, ±inf and size are handled as in [`Lrr::partial_fit`].
    pub fn fit(&mut self, x: ArrayView2<'_, f32>) -> Result<bool> {
        self.accumulate(x, true, true)
    }

    fn accumulate(
        &mut self,
        chunk: ArrayView2<'_, f32>,
        replace: bool,
        empty_replaces: bool,
    ) -> Result<bool> {
        let fresh = self.layout.is_none();
        let out = self.accumulate_inner(chunk, replace, empty_replaces);
        if fresh && (out.is_err() || !self.has_stats) {
            // The chunk that would have fixed the channel count was not taken.
            self.layout = None;
            self.state = None;
        }
        out
    }

    fn accumulate_inner(
        &mut self,
        chunk: ArrayView2<'_, f32>,
        replace: bool,
        empty_replaces: bool,
    ) -> Result<bool> {
        let (rows, nc) = chunk.dim();
        self.check_channels(nc)?;
        if rows == 0 && !empty_replaces {
            return Ok(true);
        }
        let (Some(layout), Some(state)) = (&self.layout, &mut self.state) else {
            return Err(Error::Validation("no engine state".into()));
        };
        let accepted = match state {
            EngineState::Cpu(c) => c.accumulate(layout, chunk, replace)?,
            EngineState::Gpu(g) => match scan_chunk(chunk) {
                Scan::Ok => {
                    g.accumulate(layout, chunk, replace)?;
                    true
                }
                Scan::Nan => false,
                bad => return Err(bad.error()),
            },
        };
        if !accepted {
            self.skipped += 1;
            return Ok(false);
        }
        if replace {
            self.n_samples = rows as u64;
            self.since_solve = rows as u64;
        } else {
            self.n_samples += rows as u64;
            self.since_solve += rows as u64;
        }
        self.has_stats = true;
        self.stale = true;
        Ok(true)
    }

    /// Solves the weights now if the statistics changed since the last solve.
    pub fn solve(&mut self) -> Result<()> {
        self.refresh(true)
    }

    /// Re-solves when needed: always when forced, else following `update_every`.
    fn refresh(&mut self, force: bool) -> Result<()> {
        let due = self.stale
            && (force
                || !self.has_weights
                || self.settings.update_every == 0
                || self.since_solve >= self.settings.update_every);
        if due {
            let (Some(layout), Some(state)) = (&self.layout, &mut self.state) else {
                return Err(Error::Validation("no engine state".into()));
            };
            let lambda = self.settings.ridge_lambda;
            self.singular = match state {
                EngineState::Cpu(c) => c.solve(layout, lambda),
                EngineState::Gpu(g) => g.solve(layout, lambda)?,
            };
            self.solves += 1;
            self.stale = false;
            self.since_solve = 0;
            self.has_weights = true;
        }
        if !self.has_weights {
            return Err(Error::setting(
                "weights",
                "the operator is not fitted: call fit or partial_fit with a NaN-free chunk, \
                 or preload weights",
            ));
        }
        Ok(())
    }

    fn check_transform_channels(&self, nc: usize) -> Result<()> {
        match &self.layout {
            Some(l) if l.n != nc => Err(Error::shape(
                "chunk",
                format!("{} channels (fixed by the first chunk or the weights)", l.n),
                format!("{nc} channels"),
            )),
            _ => Ok(()),
        }
    }

    /// `Y = X·(I − W)` for a host chunk (`(samples, channels)`, any strides), block-diagonal
    /// over the clusters. Errors if the operator was never fitted. Non-finite inputs are not
    /// rejected here: they propagate to their cluster's outputs of that sample.
    pub fn transform(&mut self, chunk: ArrayView2<'_, f32>) -> Result<Array2<f32>> {
        let (rows, nc) = chunk.dim();
        self.check_transform_channels(nc)?;
        self.refresh(false)?;
        let (Some(layout), Some(state)) = (&self.layout, &mut self.state) else {
            return Err(Error::Validation("no engine state".into()));
        };
        if rows == 0 {
            return Ok(Array2::zeros((0, nc)));
        }
        match state {
            EngineState::Cpu(c) => c.transform(layout, chunk),
            EngineState::Gpu(g) => g.transform_host(layout, chunk),
        }
    }

    /// [`Lrr::transform`] into a caller-owned `out` of the chunk's shape (no allocation on
    /// the CPU engine when `out` is in standard layout).
    pub fn transform_into(
        &mut self,
        chunk: ArrayView2<'_, f32>,
        mut out: ArrayViewMut2<'_, f32>,
    ) -> Result<()> {
        check_out_shape(chunk.dim(), out.dim())?;
        let nc = chunk.ncols();
        self.check_transform_channels(nc)?;
        self.refresh(false)?;
        let (Some(layout), Some(state)) = (&self.layout, &mut self.state) else {
            return Err(Error::Validation("no engine state".into()));
        };
        if chunk.nrows() == 0 {
            return Ok(());
        }
        match state {
            EngineState::Cpu(c) => match out.as_slice_mut() {
                Some(o) => c.transform_slice(layout, chunk, o),
                None => out.assign(&c.transform(layout, chunk)?),
            },
            EngineState::Gpu(g) => out.assign(&g.transform_host(layout, chunk)?),
        }
        Ok(())
    }

    /// `Y = X·(I − W)` for a chunk already on the device (`f32`, `(samples, channels)`),
    /// leaving `Y` on the device for the next stage. GPU engine only.
    pub fn transform_device(&mut self, chunk: &DeviceArray) -> Result<DeviceArray> {
        let (out, commands) = self.stage_transform_device(chunk)?;
        if let (Some(commands), Some(EngineState::Gpu(g))) = (commands, &mut self.state) {
            g.submit(commands);
        }
        Ok(out)
    }

    /// [`Lrr::transform_device`] recorded for a submission shared with the stages after it
    /// (the chain's): the commands (none for an empty chunk) are the caller's to submit.
    pub(crate) fn stage_transform_device(
        &mut self,
        chunk: &DeviceArray,
    ) -> Result<(DeviceArray, Option<wgpu::CommandBuffer>)> {
        let shape = chunk.shape().to_vec();
        if shape.len() != 2 || chunk.dtype() != crate::gpu::DType::F32 {
            return Err(Error::shape(
                "chunk",
                "f32 (samples, channels)",
                format!("{:?} {shape:?}", chunk.dtype()),
            ));
        }
        self.check_transform_channels(shape[1])?;
        if !matches!(self.engine, Engine::Gpu(_)) {
            return Err(needs_gpu("transform_device"));
        }
        self.refresh(false)?;
        let Some(EngineState::Gpu(g)) = &mut self.state else {
            return Err(Error::Validation("no engine state".into()));
        };
        g.stage_transform_device(chunk)
    }

    /// The current weights `W` (`n × n`, zero outside the cluster blocks), solving first if
    /// the statistics changed.
    pub fn weights(&mut self) -> Result<Array2<f64>> {
        self.refresh(true)?;
        let (Some(layout), Some(state)) = (&self.layout, &mut self.state) else {
            return Err(Error::Validation("no engine state".into()));
        };
        let blocks = match state {
            EngineState::Cpu(c) => c.weight_blocks(),
            EngineState::Gpu(g) => g.weight_blocks(layout)?,
        };
        Ok(layout.scatter(&blocks))
    }

    /// `I − W`, the matrix `transform` applies (see [`Lrr::weights`]).
    pub fn effective_weights(&mut self) -> Result<Array2<f64>> {
        let w = self.weights()?;
        Ok(Array2::eye(w.nrows()) - w)
    }

    /// The accumulated `C` (`n × n`, `f64`): the cluster blocks, zero elsewhere — or every
    /// entry when the full `C` is accumulated ([`Lrr::accumulates_full_covariance`]).
    /// Errors if no statistics exist.
    pub fn covariance(&mut self) -> Result<Array2<f64>> {
        if !self.has_stats {
            return Err(Error::setting(
                "weights",
                "no statistics: call fit or partial_fit first",
            ));
        }
        let (Some(layout), Some(state)) = (&self.layout, &mut self.state) else {
            return Err(Error::Validation("no engine state".into()));
        };
        let groups = match state {
            EngineState::Cpu(c) => c.group_blocks(layout),
            EngineState::Gpu(g) => g.group_blocks(layout)?,
        };
        let mut out = Array2::zeros((layout.n, layout.n));
        for (g, b) in layout.groups.iter().zip(&groups) {
            let k = g.len();
            for (a, &i) in g.iter().enumerate() {
                for (bb, &j) in g.iter().enumerate() {
                    out[[i, j]] = b[a * k + bb];
                }
            }
        }
        Ok(out)
    }

    /// Weights, `I − W`, `C` (when statistics exist) and `n_samples`, for saving.
    pub fn snapshot(&mut self) -> Result<LrrSnapshot> {
        let weights = self.weights()?;
        let effective_weights = Array2::eye(weights.nrows()) - &weights;
        let covariance = if self.has_stats {
            Some(self.covariance()?)
        } else {
            None
        };
        Ok(LrrSnapshot {
            weights,
            effective_weights,
            covariance,
            n_samples: self.n_samples,
        })
    }
}

/// Symmetric lookup in a `kp × kp` upper-block matrix (entries `j ≥ i` valid).
impl Lrr {
    /// The fingerprint a saved state must carry: every setting (clusters as sorted member
    /// lists) and the preloaded weights.
    fn fingerprint(&self) -> u64 {
        let st = &self.settings;
        let mut fp = Fingerprint::new()
            .f64(st.ridge_lambda)
            .u64(st.incremental as u64)
            .u64(st.full_covariance as u64)
            .u64(st.update_every);
        match &st.channel_clusters {
            None => fp = fp.u64(u64::MAX),
            Some(cs) => {
                fp = fp.u64(cs.len() as u64);
                for c in cs {
                    let mut c = c.clone();
                    c.sort_unstable();
                    fp = c
                        .iter()
                        .fold(fp.u64(c.len() as u64), |fp, &m| fp.u64(m as u64));
                }
            }
        }
        match &self.preloaded {
            None => fp.u64(u64::MAX).finish(),
            Some(w) => w
                .iter()
                .fold(fp.u64(w.nrows() as u64), |fp, &v| fp.f64(v))
                .finish(),
        }
    }

    /// Saves the stream state in the format of [`crate::state`], for [`Lrr::restore_state`]
    /// on an operator of the same settings, on either engine: the counters (samples, skipped
    /// chunks, solves, samples since the last solve), whether statistics and weights exist
    /// and are stale, the singular clusters, every group's `C` (upper and lower halves) and
    /// every cluster's `W`.
    ///
    /// `C` is written as unevaluated pairs `hi + lo`: the GPU engine's double-`f32` pairs as
    /// they are, the CPU engine's `f64` with `lo = −0`. On the engine that saved it a state
    /// resumes bit for bit; on the other engine the CPU takes `hi + lo` in `f64` and the GPU
    /// rounds `C` to a pair (≈ 48 bits, far below the accumulation bound of the
    /// [module docs](self)) and `W` to `f32` (as its own solve stores it).
    ///
    /// # Errors
    /// GPU errors of the read-back (device lost).
    pub fn save_state(&mut self) -> Result<Vec<u8>> {
        let mut w = StateWriter::new(STATE_TAG, self.fingerprint());
        for v in [
            self.n_samples,
            self.skipped,
            self.solves,
            self.has_stats as u64,
            self.stale as u64,
            self.since_solve,
            self.has_weights as u64,
        ] {
            w.u64(v);
        }
        w.u64(self.singular.len() as u64);
        for &c in &self.singular {
            w.u64(c as u64);
        }
        let (Some(layout), Some(state)) = (&self.layout, &mut self.state) else {
            w.u64(0);
            return Ok(w.finish());
        };
        w.u64(layout.n as u64);
        let (pairs, weights): (Vec<Vec<[f64; 2]>>, _) = match state {
            EngineState::Cpu(c) => (
                c.group_blocks(layout)
                    .into_iter()
                    .map(|b| b.into_iter().map(|v| [v, -0.0]).collect())
                    .collect(),
                c.weight_blocks(),
            ),
            EngineState::Gpu(g) => (
                g.group_pairs(layout)?
                    .into_iter()
                    .map(|b| b.into_iter().map(|v| [v[0] as f64, v[1] as f64]).collect())
                    .collect(),
                g.weight_blocks(layout)?,
            ),
        };
        for b in &pairs {
            w.f64s(b.iter().flatten().copied().collect::<Vec<_>>().into_iter());
        }
        for b in &weights {
            w.f64s(b.iter().copied());
        }
        Ok(w.finish())
    }

    /// Restores a state saved by [`Lrr::save_state`] (on either engine): statistics,
    /// weights, counters and the schedule of the next re-solve continue from where they
    /// were saved.
    ///
    /// # Errors
    /// [`Error::State`] for bytes that are not a valid LRR state of these settings
    /// (truncated, corrupted, other settings, a channel count the clusters do not fit, a
    /// non-finite value), with the operator unchanged. GPU errors (out of memory, device
    /// lost) while building the new device state also leave the operator unchanged.
    pub fn restore_state(&mut self, bytes: &[u8]) -> Result<()> {
        let mut r = StateReader::open(bytes, STATE_TAG, self.fingerprint())?;
        let n_samples = r.u64()?;
        let skipped = r.u64()?;
        let solves = r.u64()?;
        let has_stats = r.count("statistics flag", 1)? == 1;
        let stale = r.count("stale flag", 1)? == 1;
        let since_solve = r.u64()?;
        let has_weights = r.count("weights flag", 1)? == 1;
        let n_singular = r.count("singular cluster count", MAX_STATE_CHANNELS)?;
        let mut singular = Vec::new();
        for _ in 0..n_singular {
            singular.push(r.count("singular cluster", MAX_STATE_CHANNELS)?);
        }
        let n = r.count("channel count", MAX_STATE_CHANNELS)?;
        if n == 0 {
            r.finish()?;
            if self.preloaded.is_some() || has_stats || has_weights || n_singular > 0 {
                return Err(Error::State(
                    "no channel count for a fitted operator".into(),
                ));
            }
            self.layout = None;
            self.state = None;
        } else {
            if let Some(p) = &self.preloaded {
                if p.nrows() != n {
                    return Err(Error::State(format!(
                        "{n} channels, the preloaded weights have {}",
                        p.nrows()
                    )));
                }
            }
            let layout = Layout::new(
                n,
                self.settings.channel_clusters.as_ref(),
                self.settings.full_covariance,
            )
            .map_err(|e| Error::State(format!("channel count {n}: {e}")))?;
            if let Some(&c) = singular.iter().find(|&&c| c >= layout.clusters.len()) {
                return Err(Error::State(format!("singular cluster {c} out of range")));
            }
            let mut c = Vec::with_capacity(layout.groups.len());
            for g in &layout.groups {
                c.push(r.f64s("covariance", 2 * g.len() * g.len())?);
            }
            let mut wts = Vec::with_capacity(layout.clusters.len());
            for cl in &layout.clusters {
                wts.push(r.f64s("weights", cl.len() * cl.len())?);
            }
            r.finish()?;
            if c.iter().chain(&wts).flatten().any(|v| !v.is_finite()) {
                return Err(Error::State("non-finite covariance or weight".into()));
            }
            let state = match &self.engine {
                Engine::Cpu => {
                    let mut st = cpu::CpuLrr::new(&layout);
                    let blocks: Vec<Vec<f64>> = c
                        .iter()
                        .map(|b| b.chunks_exact(2).map(|p| p[0] + p[1]).collect())
                        .collect();
                    st.set_group_blocks(&layout, &blocks);
                    st.set_weights(&layout, wts);
                    EngineState::Cpu(st)
                }
                Engine::Gpu(ctx) => {
                    let mut blocks = Vec::with_capacity(c.len());
                    for b in &c {
                        let pairs: Option<Vec<[f32; 2]>> = b
                            .chunks_exact(2)
                            .map(|p| crate::state::f32_pair(p[0], p[1]))
                            .collect();
                        blocks.push(pairs.ok_or_else(|| {
                            Error::State("covariance does not fit the GPU's f32 pairs".into())
                        })?);
                    }
                    let mut g = gpu::GpuLrr::new(ctx, &layout)?;
                    g.set_group_pairs(&layout, &blocks)?;
                    g.set_weights(&layout, &wts)?;
                    EngineState::Gpu(Box::new(g))
                }
            };
            self.layout = Some(layout);
            self.state = Some(state);
        }
        self.n_samples = n_samples;
        self.skipped = skipped;
        self.solves = solves;
        self.has_stats = has_stats;
        self.stale = stale;
        self.since_solve = since_solve;
        self.has_weights = has_weights;
        self.singular = singular;
        Ok(())
    }
}

#[inline]
pub(crate) fn sym(c: &[f64], kp: usize, i: usize, j: usize) -> f64 {
    if i <= j {
        c[i * kp + j]
    } else {
        c[j * kp + i]
    }
}
