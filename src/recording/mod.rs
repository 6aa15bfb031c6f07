//! Raw multichannel recordings as acquisition systems write them, memory-mapped and read in
//! chunks of µV.
//!
//! One type, [`Recording`], opens every supported format; [`Recording::open`] picks the format
//! from the path:
//!
//! | Path | Format |
//! |---|---|
//! | a directory holding `structure.oebin`, a `*.oebin` file, or a `continuous.dat` with a `structure.oebin` up to four directories above | Open Ephys binary |
//! | `*.npy` | numpy, time × channels (`<i2` or `<f4`, C order; 1-D is one channel) |
//! | `*.bin` with a sibling `.meta` of the same stem (`x.ap.bin` + `x.ap.meta`) | SpikeGLX |
//! | anything else, or a `.bin` without `.meta` | plain interleaved binary, described by [`OpenOptions::raw`] |
//!
//! A `.bin` without its `.meta` and without [`OpenOptions::raw`] is an error naming the missing
//! `.meta`. Data are memory-mapped with `memmap2` and never loaded whole; [`Recording::read_chunk`]
//! converts the requested rows to µV (`value · uv_per_bit` of the channel, in `f32`).
//!
//! # SpikeGLX
//!
//! The `.meta` fields read, and their meaning: `imSampRate`/`niSampRate` (Hz), `nSavedChans` (values per
//! sample), `fileSizeBytes` (must equal the `.bin` size), `firstSample` (absolute sample of
//! row 0), `snsSaveChanSubset` (original index of each saved channel: `all` or a list such as
//! `0:10,12,380:383,768`), `snsApLfSy` (saved AP, LF and SY counts, stored in that order),
//! `acqApLfSy` (acquired counts: original AP indices are `0..A`, LF `A..A+L`, SY after; when
//! missing, indices are checked only against the `~imroTbl` rows),
//! `imAiRangeMax` (V), `imMaxInt` (512 for Neuropixels 1.0, 8192 for 2.0; when missing 8192
//! for 2.0 probes and 512 otherwise), `imDatPrb_type`, and `~imroTbl`: Neuropixels 1.0 rows
//! `(chan bank refid apgain lfgain [hpfilt])` give each channel's AP gain (and LF gain for
//! `.lf.bin` files); Neuropixels 2.0 (probe type 21, 24 or ≥ 2000, or rows of fewer than six
//! fields) has a fixed gain of 80. µV per bit is `imAiRangeMax / imMaxInt / gain · 10⁶`. The SY
//! channel (the saved channels after the AP and LF ones) is the sync word: it is not a neural
//! channel, is left out of [`Recording::read_chunk`], and is read with
//! [`Recording::read_sync`]. NI-DAQ streams (`niSampRate`, `snsMnMaXaDw`, `niAiRangeMax`,
//! `niMaxInt`, `niMNGain`, `niMAGain`) are read with MN, MA and XA channels as data (XA at
//! gain 1) and the first DW word as the sync word. Not supported: Neuropixels UHD probes with
//! programmable column modes (type 1110) and OneBox streams.
//!
//! # Open Ephys binary
//!
//! `structure.oebin` is JSON; its `continuous[i]` entries give `folder_name` (the folder under
//! `continuous/` holding that stream's `continuous.dat`), `sample_rate`, `num_channels` and per
//! channel `bit_volts` (µV per bit) and `channel_name`. The stream is the one whose folder
//! holds the opened `continuous.dat`, else the first whose `folder_name` contains
//! [`OpenOptions::stream`], else the first. Data are int16, interleaved. The first sample is
//! the first value of `sample_numbers.npy` next to `continuous.dat` (or of an integer
//! `timestamps.npy`, as older GUIs wrote), else 0; that file must hold one entry per sample
//! (which catches a `num_channels` that does not match the data). There is no sync word.
//!
//! # Plain binary and `.npy`
//!
//! Plain binary is interleaved little-endian `int16` or `float32` with the channel count,
//! rate and µV per bit given in [`RawFormat`]. `.npy` files carry no rate: it comes from
//! [`OpenOptions::fs`] (or [`OpenOptions::raw`]); their µV per bit is
//! [`RawFormat::uv_per_bit`] when given, else 1 (`<f4` data already in µV). Fortran-order
//! `.npy` files are rejected. Neither has a sync word or a first sample other than 0.
//!
//! # Validation
//!
//! Opening checks everything that would make a later read wrong and returns
//! [`Error::Format`] (or [`Error::Io`] when a file cannot be read), naming the file and the
//! problem: missing `.meta`, a data size that is not a whole number of samples, a metadata
//! channel count or file size that does not match the data, 0 channels or more than
//! [`MAX_CHANNELS`], a missing or
//! non-positive sample rate, unparsable metadata values, `snsSaveChanSubset` indices out of
//! range. An unknown dtype name given to [`Dtype::from_str`](std::str::FromStr) is an
//! [`Error::InvalidSetting`].

mod npy;
mod openephys;
mod spikeglx;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use memmap2::Mmap;
use ndarray::Array2;
use serde_json::{json, Value};

pub use npy::{NpyElement, NpyWriter};

use crate::error::{Error, Result};
use npy::{format_err, io_err};

/// The most values per sample a recording may store: far above any acquisition system's
/// channel count, and a bound on the per-channel tables built when a file is opened (a
/// header claiming more is an [`Error::Format`], even when the file holds no samples).
pub const MAX_CHANNELS: usize = 1 << 20;

/// [`Error::Format`] naming `field` when `n` exceeds [`MAX_CHANNELS`].
fn check_channel_count(path: &Path, field: &str, n: u64) -> Result<()> {
    if n > MAX_CHANNELS as u64 {
        return Err(format_err(
            path,
            format!("{field}={n} is more than the {MAX_CHANNELS} channels supported"),
        ));
    }
    Ok(())
}

/// Element type of plain binary and `.npy` data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    /// Little-endian signed 16-bit integers (`int16`, `<i2`).
    I16,
    /// Little-endian 32-bit floats (`float32`, `<f4`).
    F32,
}

impl Dtype {
    /// Bytes per value.
    pub fn size(self) -> usize {
        match self {
            Dtype::I16 => 2,
            Dtype::F32 => 4,
        }
    }

    /// The name `from_str` accepts first (`int16` or `float32`).
    pub fn name(self) -> &'static str {
        match self {
            Dtype::I16 => "int16",
            Dtype::F32 => "float32",
        }
    }
}

impl FromStr for Dtype {
    type Err = Error;

    /// Accepts `int16`, `i16`, `<i2` and `float32`, `f32`, `<f4` (case-insensitive); any other
    /// name is an [`Error::InvalidSetting`] for `dtype`.
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "int16" | "i16" | "<i2" => Ok(Dtype::I16),
            "float32" | "f32" | "<f4" => Ok(Dtype::F32),
            other => Err(Error::setting(
                "dtype",
                format!("unknown dtype `{other}` (expected int16 or float32)"),
            )),
        }
    }
}

impl std::fmt::Display for Dtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How to read a plain interleaved binary file (which carries no metadata of its own).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RawFormat {
    /// Element type.
    pub dtype: Dtype,
    /// Values per sample (all of them neural channels).
    pub channels: usize,
    /// Sample rate in Hz.
    pub fs: f64,
    /// µV per bit, the same for every channel (1.0 for data already in µV).
    pub uv_per_bit: f64,
}

impl RawFormat {
    /// A format with `uv_per_bit` 1.0.
    pub fn new(dtype: Dtype, channels: usize, fs: f64) -> Self {
        Self {
            dtype,
            channels,
            fs,
            uv_per_bit: 1.0,
        }
    }
}

/// Options of [`Recording::open`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OpenOptions {
    /// Layout of a plain binary file; for `.npy` files, its `fs` and `uv_per_bit` are used.
    /// Ignored for SpikeGLX and Open Ephys files, whose metadata says the same.
    pub raw: Option<RawFormat>,
    /// Open Ephys: a substring of the wanted stream's `folder_name` (e.g. `"ProbeA-AP"`);
    /// `None` takes the stream holding the opened `continuous.dat`, or the first.
    pub stream: Option<String>,
    /// Sample rate of a `.npy` file (which does not store one), in Hz.
    pub fs: Option<f64>,
}

/// What a format reader found: how to read the data file.
pub(crate) struct Layout {
    pub format: &'static str,
    pub data_offset: usize,
    pub dtype: Dtype,
    pub stored_channels: usize,
    pub fs: f64,
    pub neural_cols: Vec<usize>,
    pub sync_col: Option<usize>,
    pub channel_ids: Vec<u32>,
    pub channel_names: Vec<String>,
    pub uv_per_bit: Vec<f64>,
    pub first_sample: u64,
    pub metadata_path: Option<PathBuf>,
    pub meta: Value,
}

/// A memory-mapped recording in any supported format (see the [module docs](self)).
pub struct Recording {
    path: PathBuf,
    layout: Layout,
    gains: Vec<f32>,
    data: Data,
    n_samples: usize,
}

/// Where a recording's bytes live: a memory-mapped file (`None` when it is empty) or a buffer
/// handed over by the caller.
enum Data {
    Mapped(Option<Mmap>),
    Owned(Vec<u8>),
}

/// The first column when `cols` are consecutive stored columns (`cols[i] == cols[0] + i`).
fn contiguous_run(cols: &[usize]) -> Option<usize> {
    let first = *cols.first()?;
    cols.iter()
        .enumerate()
        .all(|(i, &c)| c == first + i)
        .then_some(first)
}

/// One stored sample (`b.len()` is the dtype's size) as `f32`, before its gain.
#[inline(always)]
fn decode(dtype: Dtype, b: &[u8]) -> f32 {
    match dtype {
        Dtype::I16 => i16::from_le_bytes([b[0], b[1]]) as f32,
        Dtype::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
    }
}

/// Converts one contiguous run of stored samples into `out`, times each channel's gain.
#[inline(always)]
fn convert_run<'a>(
    dtype: Dtype,
    src: &[u8],
    gains: &[f32],
    out: impl Iterator<Item = &'a mut f32>,
) {
    match dtype {
        Dtype::I16 => {
            for ((o, b), &g) in out.zip(src.chunks_exact(2)).zip(gains) {
                *o = i16::from_le_bytes([b[0], b[1]]) as f32 * g;
            }
        }
        Dtype::F32 => {
            for ((o, b), &g) in out.zip(src.chunks_exact(4)).zip(gains) {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]) * g;
            }
        }
    }
}

/// The stand-in file name of in-memory recordings in error messages.
const IN_MEMORY: &str = "<memory>";

impl std::fmt::Debug for Recording {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recording")
            .field("format", &self.layout.format)
            .field("path", &self.path)
            .field("fs", &self.layout.fs)
            .field("n_samples", &self.n_samples)
            .field("n_channels", &self.layout.neural_cols.len())
            .finish()
    }
}

fn sibling_meta(path: &Path) -> PathBuf {
    path.with_extension("meta")
}

fn ext_is(path: &Path, ext: &str) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case(ext))
}

impl Recording {
    /// Opens `path`, detecting its format (see the [module docs](self)), and validates it.
    pub fn open(path: impl AsRef<Path>, options: &OpenOptions) -> Result<Self> {
        let path = path.as_ref();
        if path.is_dir() {
            let oebin = path.join("structure.oebin");
            if oebin.is_file() {
                return Self::open_openephys(&oebin, None, options);
            }
            return Err(format_err(
                path,
                "directory without structure.oebin is not a recording",
            ));
        }
        if !path.exists() {
            return Err(io_err(path, "cannot open", "no such file"));
        }
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name == "structure.oebin" || ext_is(path, "oebin") {
            return Self::open_openephys(path, None, options);
        }
        if name == "continuous.dat" {
            if let Some(oebin) = openephys::find_oebin(path) {
                return Self::open_openephys(&oebin, Some(path), options);
            }
            if options.raw.is_none() {
                return Err(format_err(
                    path,
                    "no structure.oebin found above continuous.dat (give a raw format to read it as plain binary)",
                ));
            }
        }
        if ext_is(path, "npy") {
            return Self::open_npy(path, options);
        }
        if ext_is(path, "bin") {
            let meta = sibling_meta(path);
            if meta.is_file() {
                let len = file_len(path)?;
                let layout = spikeglx::layout(path, &meta, len)?;
                return Self::from_layout(path, layout);
            }
            if options.raw.is_none() {
                return Err(format_err(
                    &meta,
                    format!(
                        "missing SpikeGLX metadata file for {} (give a raw format to read it as plain binary)",
                        path.display()
                    ),
                ));
            }
        }
        match options.raw {
            Some(raw) => Self::open_raw(path, raw),
            None => Err(format_err(
                path,
                "unknown recording format (give a raw format: dtype, channels, fs)",
            )),
        }
    }

    fn open_openephys(oebin: &Path, dat: Option<&Path>, options: &OpenOptions) -> Result<Self> {
        let (layout, data, counted) = openephys::layout(oebin, dat, options.stream.as_deref())?;
        let rec = Self::from_layout(&data, layout)?;
        if let Some((count, numbers)) = counted {
            if count != rec.n_samples as u64 {
                return Err(format_err(
                    &numbers,
                    format!(
                        "{count} sample numbers but {} has {} samples of num_channels={}",
                        data.display(),
                        rec.n_samples,
                        rec.layout.stored_channels
                    ),
                ));
            }
        }
        Ok(rec)
    }

    fn open_raw(path: &Path, raw: RawFormat) -> Result<Self> {
        if raw.channels == 0 {
            return Err(format_err(path, "raw format with 0 channels"));
        }
        check_channel_count(path, "raw channels", raw.channels as u64)?;
        if !(raw.fs.is_finite() && raw.fs > 0.0) {
            return Err(format_err(
                path,
                format!("sample rate {} is not positive", raw.fs),
            ));
        }
        if !(raw.uv_per_bit.is_finite() && raw.uv_per_bit > 0.0) {
            return Err(format_err(
                path,
                format!("uv_per_bit {} is not positive", raw.uv_per_bit),
            ));
        }
        let n = raw.channels;
        let layout = Layout {
            format: "raw",
            data_offset: 0,
            dtype: raw.dtype,
            stored_channels: n,
            fs: raw.fs,
            neural_cols: (0..n).collect(),
            sync_col: None,
            channel_ids: (0..n as u32).collect(),
            channel_names: (0..n).map(|c| c.to_string()).collect(),
            uv_per_bit: vec![raw.uv_per_bit; n],
            first_sample: 0,
            metadata_path: None,
            meta: json!({ "dtype": raw.dtype.name(), "channels": n }),
        };
        Self::from_layout(path, layout)
    }

    fn open_npy(path: &Path, options: &OpenOptions) -> Result<Self> {
        let file = File::open(path).map_err(|e| io_err(path, "cannot open", e))?;
        let map = map_file(path, &file)?;
        let (layout, n_samples) = npy_layout(path, map.as_deref().unwrap_or(&[]), options)?;
        Ok(Self::assemble(path, layout, Data::Mapped(map), n_samples))
    }

    /// Reads an `.npy` recording held in memory (the whole file's bytes), with the same
    /// checks and the same options as [`Recording::open`] of an `.npy` file; errors name the
    /// file `<memory>`.
    pub fn from_npy_bytes(bytes: Vec<u8>, options: &OpenOptions) -> Result<Self> {
        let path = Path::new(IN_MEMORY);
        let (layout, n_samples) = npy_layout(path, &bytes, options)?;
        Ok(Self::assemble(path, layout, Data::Owned(bytes), n_samples))
    }

    /// Reads a SpikeGLX recording held in memory: the `.meta` file's text and the `.bin`
    /// file's bytes, with the same checks as [`Recording::open`] of a `.bin` next to its
    /// `.meta`; errors name the files `<memory>.meta` and `<memory>.bin`.
    pub fn from_spikeglx_bytes(meta: &str, bin: Vec<u8>) -> Result<Self> {
        let bin_path = Path::new("<memory>.bin");
        let layout = spikeglx::layout_from_text(
            bin_path,
            Path::new("<memory>.meta"),
            meta,
            bin.len() as u64,
        )?;
        Self::with_data(bin_path, layout, Data::Owned(bin))
    }

    /// Reads an Open Ephys stream held in memory: the `structure.oebin` text and the
    /// stream's `continuous.dat` bytes. The stream is the first whose `folder_name` contains
    /// `stream`, else the first; the first sample is 0 (there is no `sample_numbers.npy`).
    /// The checks are those of [`Recording::open`]; errors name the files
    /// `<memory>/structure.oebin` and `<memory>/continuous/<folder>/continuous.dat`.
    pub fn from_openephys_bytes(oebin: &str, dat: Vec<u8>, stream: Option<&str>) -> Result<Self> {
        let oebin_path = Path::new("<memory>/structure.oebin");
        let (layout, data_path) = openephys::stream_layout(oebin_path, oebin, None, stream)?;
        Self::with_data(&data_path, layout, Data::Owned(dat))
    }
}

/// The layout and the sample count of an `.npy` file whose bytes (or a prefix holding at
/// least the header) are `bytes`.
fn npy_layout(path: &Path, bytes: &[u8], options: &OpenOptions) -> Result<(Layout, usize)> {
    let h = npy::parse_header(path, bytes)?;
    if h.fortran_order {
        return Err(format_err(
            path,
            "Fortran-order .npy is not supported (save it C-ordered, time × channels)",
        ));
    }
    let dtype = match h.descr.as_str() {
        "<i2" => Dtype::I16,
        "<f4" => Dtype::F32,
        d => {
            return Err(format_err(
                path,
                format!(".npy dtype `{d}` is not supported (want <i2 or <f4)"),
            ))
        }
    };
    let (rows, cols) = match h.shape.as_slice() {
        [t] => (*t, 1),
        [t, c] => (*t, *c),
        s => {
            return Err(format_err(
                path,
                format!(".npy shape {s:?} is not time × channels"),
            ))
        }
    };
    if cols == 0 {
        return Err(format_err(path, ".npy with 0 channels"));
    }
    check_channel_count(path, ".npy channels", cols)?;
    let fs = options.fs.or(options.raw.map(|r| r.fs)).ok_or_else(|| {
        format_err(
            path,
            "missing sample rate (an .npy file does not store one)",
        )
    })?;
    if !(fs.is_finite() && fs > 0.0) {
        return Err(format_err(
            path,
            format!("sample rate {fs} is not positive"),
        ));
    }
    let uv = options.raw.map_or(1.0, |r| r.uv_per_bit);
    if !(uv.is_finite() && uv > 0.0) {
        return Err(format_err(path, format!("uv_per_bit {uv} is not positive")));
    }
    let expect = rows
        .checked_mul(cols)
        .and_then(|v| v.checked_mul(dtype.size() as u64))
        .ok_or_else(|| format_err(path, ".npy shape overflows"))?;
    let have = (bytes.len() - h.data_offset.min(bytes.len())) as u64;
    if have != expect {
        return Err(format_err(
            path,
            format!("truncated: shape {rows}×{cols} needs {expect} data bytes, file has {have}"),
        ));
    }
    let n = cols as usize;
    let layout = Layout {
        format: "npy",
        data_offset: h.data_offset,
        dtype,
        stored_channels: n,
        fs,
        neural_cols: (0..n).collect(),
        sync_col: None,
        channel_ids: (0..n as u32).collect(),
        channel_names: (0..n).map(|c| c.to_string()).collect(),
        uv_per_bit: vec![uv; n],
        first_sample: 0,
        metadata_path: None,
        meta: json!({ "descr": h.descr, "shape": h.shape }),
    };
    let n_samples = usize::try_from(rows).map_err(|_| format_err(path, "too many rows"))?;
    Ok((layout, n_samples))
}

impl Recording {
    fn from_layout(path: &Path, layout: Layout) -> Result<Self> {
        let file = File::open(path).map_err(|e| io_err(path, "cannot open", e))?;
        let map = map_file(path, &file)?;
        Self::with_data(path, layout, Data::Mapped(map))
    }

    fn with_data(path: &Path, layout: Layout, data: Data) -> Result<Self> {
        let len = match &data {
            Data::Mapped(map) => map.as_ref().map_or(0, |m| m.len()),
            Data::Owned(bytes) => bytes.len(),
        };
        let frame = layout.stored_channels * layout.dtype.size();
        if frame == 0 {
            return Err(format_err(path, "0 channels"));
        }
        let bytes = len.saturating_sub(layout.data_offset);
        if !bytes.is_multiple_of(frame) {
            return Err(format_err(
                path,
                format!(
                    "truncated: {bytes} data bytes is not a whole number of {}-channel {} samples",
                    layout.stored_channels, layout.dtype
                ),
            ));
        }
        let n_samples = bytes / frame;
        Ok(Self::assemble(path, layout, data, n_samples))
    }

    fn assemble(path: &Path, layout: Layout, data: Data, n_samples: usize) -> Self {
        let gains = layout.uv_per_bit.iter().map(|&g| g as f32).collect();
        Self {
            path: path.to_path_buf(),
            layout,
            gains,
            data,
            n_samples,
        }
    }

    /// Sample rate in Hz.
    pub fn fs(&self) -> f64 {
        self.layout.fs
    }

    /// Number of samples (rows).
    pub fn n_samples(&self) -> usize {
        self.n_samples
    }

    /// Number of neural channels (the columns of [`read_chunk`](Self::read_chunk); the sync
    /// word is not one of them).
    pub fn n_channels(&self) -> usize {
        self.layout.neural_cols.len()
    }

    /// Absolute sample number of row 0 (SpikeGLX `firstSample`; Open Ephys the first value of
    /// `sample_numbers.npy`; otherwise 0).
    pub fn first_sample(&self) -> u64 {
        self.layout.first_sample
    }

    /// Original index of each neural channel: SpikeGLX the acquisition channel index from
    /// `snsSaveChanSubset`; otherwise the channel's position in the stream.
    pub fn channel_ids(&self) -> &[u32] {
        &self.layout.channel_ids
    }

    /// Name of each neural channel: Open Ephys `channel_name`, otherwise the original index.
    pub fn channel_names(&self) -> &[String] {
        &self.layout.channel_names
    }

    /// µV per bit of each neural channel.
    pub fn uv_per_bit(&self) -> &[f64] {
        &self.layout.uv_per_bit
    }

    /// `"spikeglx"`, `"openephys"`, `"npy"` or `"raw"`.
    pub fn format_name(&self) -> &'static str {
        self.layout.format
    }

    /// The data file (`.bin`, `continuous.dat`, `.npy` or raw file).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The metadata file (`.meta` or `structure.oebin`), if the format has one.
    pub fn metadata_path(&self) -> Option<&Path> {
        self.layout.metadata_path.as_deref()
    }

    /// Whether the file holds a sync word ([`read_sync`](Self::read_sync)).
    pub fn has_sync(&self) -> bool {
        self.layout.sync_col.is_some()
    }

    /// Element type of the stored data.
    pub fn dtype(&self) -> Dtype {
        self.layout.dtype
    }

    fn bytes(&self) -> &[u8] {
        match &self.data {
            Data::Mapped(map) => map.as_deref().unwrap_or(&[]),
            Data::Owned(bytes) => bytes,
        }
    }

    fn check_range(&self, what: &'static str, start: usize, len: usize) -> Result<()> {
        let end = start.checked_add(len);
        match end {
            Some(e) if e <= self.n_samples => Ok(()),
            _ => Err(Error::IndexOutOfRange {
                what,
                index: if len == 0 {
                    start as u64
                } else {
                    start as u64 + len as u64 - 1
                },
                bound: self.n_samples as u64,
            }),
        }
    }

    /// Fills `out` (rows: chunk length, columns: [`n_channels`](Self::n_channels)) with
    /// samples `start..start + out.nrows()` in µV, the sync word left out.
    ///
    /// A wrong column count is an [`Error::Shape`]; rows past the end are an
    /// [`Error::IndexOutOfRange`]. An empty `out` is valid for `start <= n_samples`.
    pub fn read_chunk(&self, start: usize, out: &mut Array2<f32>) -> Result<()> {
        if out.ncols() != self.n_channels() {
            return Err(Error::shape(
                "Recording::read_chunk out",
                format!("{} columns", self.n_channels()),
                format!("{} columns", out.ncols()),
            ));
        }
        let rows = out.nrows();
        self.check_range("Recording::read_chunk", start, rows)?;
        let size = self.layout.dtype.size();
        let frame = self.layout.stored_channels * size;
        let base = self.layout.data_offset + start * frame;
        let data = self
            .bytes()
            .get(base..base + rows * frame)
            .ok_or_else(|| format_err(&self.path, "file shorter than when opened"))?;
        let cols = &self.layout.neural_cols;
        let dtype = self.layout.dtype;
        match contiguous_run(cols) {
            // The neural channels are one run of stored columns (every raw file, most
            // probes): each row converts one contiguous byte run, a loop the compiler
            // vectorises (the gather below costs ~2 ns per sample).
            Some(first) => {
                let run = first * size..(first + cols.len()) * size;
                for (frame_bytes, mut row) in data.chunks_exact(frame).zip(out.rows_mut()) {
                    let src = &frame_bytes[run.clone()];
                    match row.as_slice_mut() {
                        Some(r) => convert_run(dtype, src, &self.gains, r.iter_mut()),
                        None => convert_run(dtype, src, &self.gains, row.iter_mut()),
                    }
                }
            }
            None => {
                for (frame_bytes, mut row) in data.chunks_exact(frame).zip(out.rows_mut()) {
                    for ((o, &c), &g) in row.iter_mut().zip(cols).zip(&self.gains) {
                        let b = &frame_bytes[c * size..(c + 1) * size];
                        *o = decode(dtype, b) * g;
                    }
                }
            }
        }
        Ok(())
    }

    /// The sync word of samples `start..start + len` (SpikeGLX SY or NI-DAQ DW channel, as
    /// its 16 raw bits); empty when the file has none. Past the end is an
    /// [`Error::IndexOutOfRange`].
    pub fn read_sync(&self, start: usize, len: usize) -> Result<Vec<u16>> {
        self.check_range("Recording::read_sync", start, len)?;
        let Some(col) = self.layout.sync_col else {
            return Ok(Vec::new());
        };
        let frame = self.layout.stored_channels * 2;
        let base = self.layout.data_offset + start * frame;
        let data = self
            .bytes()
            .get(base..base + len * frame)
            .ok_or_else(|| format_err(&self.path, "file shorter than when opened"))?;
        Ok(data
            .chunks_exact(frame)
            .map(|f| u16::from_le_bytes([f[2 * col], f[2 * col + 1]]))
            .collect())
    }

    /// A JSON description for provenance files: format, data and metadata paths, rate,
    /// sample and channel counts, channel map (original indices and names), µV per bit per
    /// channel, first sample, the sync column and the metadata fields that were used.
    pub fn provenance(&self) -> Value {
        json!({
            "format": self.layout.format,
            "path": self.path.display().to_string(),
            "metadata_path": self.layout.metadata_path.as_ref().map(|p| p.display().to_string()),
            "fs": self.layout.fs,
            "n_samples": self.n_samples,
            "n_channels": self.n_channels(),
            "stored_channels": self.layout.stored_channels,
            "dtype": self.layout.dtype.name(),
            "first_sample": self.layout.first_sample,
            "channel_ids": self.layout.channel_ids,
            "channel_names": self.layout.channel_names,
            "uv_per_bit": self.layout.uv_per_bit,
            "sync_column": self.layout.sync_col,
            "meta": self.layout.meta,
        })
    }
}

fn file_len(path: &Path) -> Result<u64> {
    std::fs::metadata(path)
        .map(|m| m.len())
        .map_err(|e| io_err(path, "cannot stat", e))
}

fn map_file(path: &Path, file: &File) -> Result<Option<Mmap>> {
    let len = file
        .metadata()
        .map_err(|e| io_err(path, "cannot stat", e))?
        .len();
    if len == 0 {
        return Ok(None);
    }
    // SAFETY: the map is read-only; the file is not modified by this crate while mapped.
    // Another process truncating it would fault, as with any memory-mapped reader.
    let map = unsafe { Mmap::map(file) }.map_err(|e| io_err(path, "cannot memory-map", e))?;
    Ok(Some(map))
}

/// One change of one bit of the sync word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SyncEdge {
    /// Absolute sample of the first word with the new value.
    pub sample: u64,
    /// Bit index, 0 (least significant) to 15.
    pub bit: u8,
    /// `true` for 0 → 1, `false` for 1 → 0.
    pub rising: bool,
}

/// Every bit change in `words`, whose first word is at absolute sample `first_sample`, in
/// sample order (and bit order within a sample). `previous` is the last word before `words`
/// (from the previous chunk); with it, splitting a stream into chunks does not change the
/// concatenated edges. `None` (the stream's start) reports no edge at the first word.
pub fn sync_edges(words: &[u16], first_sample: u64, previous: Option<u16>) -> Vec<SyncEdge> {
    let mut out = Vec::new();
    let mut prev = previous;
    for (i, &w) in words.iter().enumerate() {
        if let Some(p) = prev {
            let mut diff = p ^ w;
            while diff != 0 {
                let bit = diff.trailing_zeros() as u8;
                diff &= diff - 1;
                out.push(SyncEdge {
                    sample: first_sample + i as u64,
                    bit,
                    rising: (w >> bit) & 1 == 1,
                });
            }
        }
        prev = Some(w);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 3-column in-memory recording whose neural channels are `cols`.
    fn recording(dtype: Dtype, cols: Vec<usize>, values: &[f32]) -> Recording {
        let bytes: Vec<u8> = match dtype {
            Dtype::I16 => values
                .iter()
                .flat_map(|&v| (v as i16).to_le_bytes())
                .collect(),
            Dtype::F32 => values.iter().flat_map(|&v| v.to_le_bytes()).collect(),
        };
        let n = cols.len();
        let layout = Layout {
            format: "raw",
            data_offset: 0,
            dtype,
            stored_channels: 3,
            fs: 1.0,
            neural_cols: cols,
            sync_col: None,
            channel_ids: (0..n as u32).collect(),
            channel_names: (0..n).map(|c| c.to_string()).collect(),
            uv_per_bit: (0..n).map(|c| 0.5 + c as f64).collect(),
            first_sample: 0,
            metadata_path: None,
            meta: json!({}),
        };
        let n_samples = values.len() / 3;
        Recording::assemble(Path::new(IN_MEMORY), layout, Data::Owned(bytes), n_samples)
    }

    /// The contiguous fast path and the gather path read the same values: each channel's
    /// stored column times its gain, for runs at any offset and for scattered columns.
    #[test]
    fn read_chunk_runs_and_gathers() {
        let stored = [1.0, -2.0, 3.0, 40.0, 50.0, -60.0];
        for dtype in [Dtype::I16, Dtype::F32] {
            for cols in [vec![0, 1, 2], vec![1, 2], vec![2], vec![2, 0], vec![0, 2]] {
                assert_eq!(
                    contiguous_run(&cols).is_some(),
                    cols.windows(2).all(|w| w[1] == w[0] + 1)
                );
                let rec = recording(dtype, cols.clone(), &stored);
                let mut out = Array2::<f32>::zeros((2, cols.len()));
                rec.read_chunk(0, &mut out).unwrap();
                for t in 0..2 {
                    for (i, &c) in cols.iter().enumerate() {
                        let want = stored[3 * t + c] * (0.5 + i as f32);
                        assert_eq!(out[[t, i]], want, "{dtype:?} cols {cols:?} row {t}");
                    }
                }
                // A column-major output takes the same path through its rows' iterators.
                let mut out_f = Array2::<f32>::zeros((cols.len(), 2)).reversed_axes();
                rec.read_chunk(0, &mut out_f).unwrap();
                assert_eq!(out_f, out);
            }
        }
    }
}
