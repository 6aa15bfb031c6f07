//! SpikeGLX `.bin` + `.meta` layout.
//!
//! The `.meta` file is text, one `key=value` per line; keys starting with `~` hold tables
//! (`~imroTbl`, `~snsChanMap`, `~snsShankMap`). The `.bin` file is int16, interleaved, with
//! `nSavedChans` values per sample. Fields read:
//!
//! - `imSampRate` (imec streams) or `niSampRate` (NI-DAQ streams): samples per second.
//! - `nSavedChans`: values per sample in the `.bin`.
//! - `fileSizeBytes`: must equal the `.bin` size.
//! - `firstSample`: absolute sample number of the file's first sample (0 when missing).
//! - `snsSaveChanSubset`: `all`, or a comma list of original channel indices and inclusive
//!   ranges `a:b`, one per saved channel, in file order.
//! - imec streams: `snsApLfSy` (saved AP, LF and SY counts; the file holds AP channels, then
//!   LF channels, then the SY word), `acqApLfSy` (acquired counts, which fix the original
//!   numbering: AP `0..A`, LF `A..A+L`, SY from `A+L`), `imAiRangeMax` (volts), `imMaxInt`
//!   (512 for Neuropixels 1.0, 8192 for 2.0; when missing, 8192 for 2.0 probes and 512
//!   otherwise), `imDatPrb_type`, and `~imroTbl`. Neuropixels 1.0 rows are
//!   `(chan bank refid apgain lfgain [hpfilt])`: per-channel AP and LF gains. Neuropixels 2.0
//!   (probe type 21, 24 or 2000 and above, or rows with fewer than six fields) has a fixed
//!   gain of 80.
//! - NI-DAQ streams: `snsMnMaXaDw` (saved MN, MA, XA and DW counts, in that file order),
//!   `niAiRangeMax`, `niMaxInt` (32768 when missing), `niMNGain`, `niMAGain` (1 when
//!   missing). MN, MA and XA channels are the data channels (XA with gain 1); the first DW
//!   word is the sync word.
//!
//! µV per bit of a channel is `rangeMax / maxInt / gain · 10⁶` (Neuropixels 1.0 at gain 500:
//! 0.6 / 512 / 500 · 10⁶ = 2.34375 µV). Not supported: Neuropixels UHD probes with
//! programmable column modes (type 1110) and OneBox streams (`obSampRate`).

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{json, Map, Value};

use super::npy::format_err;
use super::Layout;
use crate::error::{Error, Result};

/// A parsed `.meta` file.
pub(crate) struct Meta {
    map: BTreeMap<String, String>,
}

impl Meta {
    pub(crate) fn parse(path: &Path, text: &str) -> Result<Self> {
        let mut map = BTreeMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let Some((k, v)) = line.split_once('=') else {
                return Err(format_err(
                    path,
                    format!("line {}: expected key=value, got `{line}`", n + 1),
                ));
            };
            map.insert(k.trim().to_string(), v.trim().to_string());
        }
        Ok(Self { map })
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.map.get(key).map(String::as_str)
    }
}

struct Reader<'a> {
    path: &'a Path,
    meta: &'a Meta,
    used: Map<String, Value>,
}

impl Reader<'_> {
    fn raw(&mut self, key: &str) -> Option<String> {
        let v = self.meta.get(key)?.to_string();
        if !key.starts_with('~') {
            self.used.insert(key.to_string(), Value::String(v.clone()));
        }
        Some(v)
    }

    fn required(&mut self, key: &str) -> Result<String> {
        self.raw(key)
            .ok_or_else(|| format_err(self.path, format!("missing `{key}` in the metadata")))
    }

    fn parse<T: std::str::FromStr>(&self, key: &str, v: &str) -> Result<T> {
        v.trim().parse::<T>().map_err(|_| {
            format_err(
                self.path,
                format!("cannot parse `{key}={v}` in the metadata"),
            )
        })
    }

    fn num<T: std::str::FromStr>(&mut self, key: &str) -> Result<T> {
        let v = self.required(key)?;
        self.parse(key, &v)
    }

    fn num_opt<T: std::str::FromStr>(&mut self, key: &str) -> Result<Option<T>> {
        match self.raw(key) {
            Some(v) => self.parse(key, &v).map(Some),
            None => Ok(None),
        }
    }

    fn counts(&mut self, key: &str, n: usize) -> Result<Option<Vec<usize>>> {
        let Some(v) = self.raw(key) else {
            return Ok(None);
        };
        let parts = v
            .split(',')
            .map(|p| self.parse::<usize>(key, p))
            .collect::<Result<Vec<usize>>>()?;
        if parts.len() != n {
            return Err(format_err(
                self.path,
                format!("`{key}={v}` should hold {n} counts"),
            ));
        }
        // Bounded so that their sums and channel numbers cannot overflow.
        if let Some(&big) = parts.iter().find(|&&p| p > super::MAX_CHANNELS) {
            return Err(format_err(
                self.path,
                format!(
                    "`{key}={v}`: count {big} is more than the {} channels supported",
                    super::MAX_CHANNELS
                ),
            ));
        }
        Ok(Some(parts))
    }
}

/// Parses `snsSaveChanSubset` (not `all`) into original channel indices.
fn parse_subset(path: &Path, v: &str) -> Result<Vec<u32>> {
    let bad = || format_err(path, format!("cannot parse `snsSaveChanSubset={v}`"));
    let mut out = Vec::new();
    for item in v.split(',') {
        let item = item.trim();
        if let Some((a, b)) = item.split_once(':') {
            let a: u32 = a.trim().parse().map_err(|_| bad())?;
            let b: u32 = b.trim().parse().map_err(|_| bad())?;
            // In all at most MAX_CHANNELS (more cannot match `nSavedChans`): many long
            // ranges must not expand without bound.
            if b < a || out.len() + (b - a) as usize >= super::MAX_CHANNELS {
                return Err(bad());
            }
            out.extend(a..=b);
        } else {
            out.push(item.parse().map_err(|_| bad())?);
        }
    }
    Ok(out)
}

/// One `~imroTbl`: probe type from the header, and per-row (AP, LF) gains.
struct Imro {
    header_type: Option<i64>,
    rows: Vec<Vec<i64>>,
}

fn parse_imro(path: &Path, v: &str) -> Result<Imro> {
    let bad = |what: &str| format_err(path, format!("cannot parse `~imroTbl`: {what}"));
    let mut groups = Vec::new();
    let mut rest = v.trim();
    while !rest.is_empty() {
        let body = rest.strip_prefix('(').ok_or_else(|| bad("expected `(`"))?;
        let close = body.find(')').ok_or_else(|| bad("unclosed `(`"))?;
        groups.push(&body[..close]);
        rest = body[close + 1..].trim_start();
    }
    let (header, rows) = groups.split_first().ok_or_else(|| bad("empty table"))?;
    let header_type = header
        .split(',')
        .next()
        .and_then(|t| t.trim().parse::<i64>().ok());
    let rows = rows
        .iter()
        .map(|r| {
            r.split_whitespace()
                .map(|f| f.parse::<i64>().map_err(|_| bad(&format!("row `({r})`"))))
                .collect::<Result<Vec<i64>>>()
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Imro { header_type, rows })
}

fn is_np2(probe_type: Option<i64>) -> bool {
    matches!(probe_type, Some(t) if t == 21 || t == 24 || t >= 2000)
}

/// Reads the `.meta` next to `bin` and lays out the `.bin` (whose size is `bin_len` bytes).
pub(crate) fn layout(bin: &Path, meta_path: &Path, bin_len: u64) -> Result<Layout> {
    let text = std::fs::read_to_string(meta_path).map_err(|e| Error::Io {
        path: meta_path.display().to_string(),
        message: format!("cannot read SpikeGLX metadata: {e}"),
    })?;
    layout_from_text(bin, meta_path, &text, bin_len)
}

/// The layout of a `.bin` of `bin_len` bytes whose `.meta` file (at `meta_path`) holds `text`.
pub(crate) fn layout_from_text(
    bin: &Path,
    meta_path: &Path,
    text: &str,
    bin_len: u64,
) -> Result<Layout> {
    let meta = Meta::parse(meta_path, text)?;
    let mut r = Reader {
        path: meta_path,
        meta: &meta,
        used: Map::new(),
    };
    let nidq = r.meta.get("typeThis") == Some("nidq")
        || (r.meta.get("imSampRate").is_none() && r.meta.get("niSampRate").is_some());
    let fs: f64 = if nidq {
        r.num("niSampRate")?
    } else {
        r.num("imSampRate")?
    };
    if !(fs.is_finite() && fs > 0.0) {
        return Err(format_err(
            meta_path,
            format!("sample rate {fs} is not positive"),
        ));
    }
    let n_saved: usize = r.num("nSavedChans")?;
    if n_saved == 0 {
        return Err(format_err(meta_path, "`nSavedChans` is 0"));
    }
    super::check_channel_count(meta_path, "nSavedChans", n_saved as u64)?;
    let file_size: u64 = r.num("fileSizeBytes")?;
    if file_size != bin_len {
        return Err(format_err(
            bin,
            format!(
                "file is {bin_len} bytes but fileSizeBytes={file_size} in {}",
                meta_path.display()
            ),
        ));
    }
    let frame = n_saved as u64 * 2;
    if !bin_len.is_multiple_of(frame) {
        return Err(format_err(
            bin,
            format!(
                "truncated or wrong channel count: {bin_len} bytes is not a whole number of samples of nSavedChans={n_saved} int16 values"
            ),
        ));
    }
    let first_sample: u64 = r.num_opt("firstSample")?.unwrap_or(0);

    // Saved channels in file order, with their kind by position.
    let kinds: Vec<usize> = if nidq {
        r.counts("snsMnMaXaDw", 4)?
            .ok_or_else(|| format_err(meta_path, "missing `snsMnMaXaDw` in the metadata"))?
    } else {
        r.counts("snsApLfSy", 3)?
            .ok_or_else(|| format_err(meta_path, "missing `snsApLfSy` in the metadata"))?
    };
    let key = if nidq { "snsMnMaXaDw" } else { "snsApLfSy" };
    if kinds.iter().sum::<usize>() != n_saved {
        return Err(format_err(
            meta_path,
            format!(
                "`{key}` counts sum to {} but nSavedChans={n_saved}",
                kinds.iter().sum::<usize>()
            ),
        ));
    }
    let kind_of = |col: usize| -> usize {
        let mut acc = 0;
        for (k, &n) in kinds.iter().enumerate() {
            acc += n;
            if col < acc {
                return k;
            }
        }
        kinds.len()
    };

    let subset = r.required("snsSaveChanSubset")?;
    let acq: Option<Vec<usize>> = if nidq {
        r.counts("acqMnMaXaDw", 4)?
    } else {
        r.counts("acqApLfSy", 3)?
    };
    let originals: Vec<u32> = if subset.trim() == "all" {
        // Without a list, number each kind's channels from the start of its acquired block.
        let mut out = Vec::with_capacity(n_saved);
        let mut block_start = 0usize;
        for (k, &n) in kinds.iter().enumerate() {
            out.extend((0..n).map(|j| (block_start + j) as u32));
            block_start += acq.as_ref().map_or(n, |a| a[k].max(n));
        }
        out
    } else {
        parse_subset(meta_path, &subset)?
    };
    if originals.len() != n_saved {
        return Err(format_err(
            meta_path,
            format!(
                "snsSaveChanSubset lists {} channels but nSavedChans={n_saved}",
                originals.len()
            ),
        ));
    }
    if let Some(acq) = &acq {
        let total: usize = acq.iter().sum();
        if let Some(&bad) = originals.iter().find(|&&o| o as usize >= total) {
            return Err(format_err(
                meta_path,
                format!(
                    "snsSaveChanSubset index {bad} is out of range (the stream acquires {total} channels)"
                ),
            ));
        }
    }

    let mut neural_cols = Vec::new();
    let mut uv = Vec::new();
    let mut sync_col = None;
    let mut extra = Map::new();

    if nidq {
        let range: f64 = r.num("niAiRangeMax")?;
        let max_int: f64 = r.num_opt("niMaxInt")?.unwrap_or(32768.0);
        let mn_gain: f64 = r.num_opt("niMNGain")?.unwrap_or(1.0);
        let ma_gain: f64 = r.num_opt("niMAGain")?.unwrap_or(1.0);
        for (name, v) in [("niAiRangeMax", range), ("niMaxInt", max_int)] {
            if !(v.is_finite() && v > 0.0) {
                return Err(format_err(meta_path, format!("`{name}` must be positive")));
            }
        }
        for col in 0..n_saved {
            let gain = match kind_of(col) {
                0 => mn_gain,
                1 => ma_gain,
                2 => 1.0,
                _ => {
                    if sync_col.is_none() {
                        sync_col = Some(col);
                    }
                    continue;
                }
            };
            if !(gain.is_finite() && gain > 0.0) {
                return Err(format_err(meta_path, "NI gains must be positive"));
            }
            neural_cols.push(col);
            uv.push(range / max_int / gain * 1e6);
        }
    } else {
        let range: f64 = r.num("imAiRangeMax")?;
        let probe_type: Option<i64> = r.num_opt("imDatPrb_type")?;
        let imro = match r.raw("~imroTbl") {
            Some(v) => Some(parse_imro(meta_path, &v)?),
            None => None,
        };
        let header_type = imro.as_ref().and_then(|i| i.header_type);
        let np2 = is_np2(probe_type)
            || (probe_type.is_none() && is_np2(header_type))
            || imro
                .as_ref()
                .is_some_and(|i| !i.rows.is_empty() && i.rows.iter().all(|row| row.len() < 6));
        if matches!(probe_type.or(header_type), Some(1110)) {
            return Err(format_err(
                meta_path,
                "Neuropixels UHD probes (type 1110) are not supported",
            ));
        }
        let max_int: f64 = r
            .num_opt("imMaxInt")?
            .unwrap_or(if np2 { 8192.0 } else { 512.0 });
        for (name, v) in [("imAiRangeMax", range), ("imMaxInt", max_int)] {
            if !(v.is_finite() && v > 0.0) {
                return Err(format_err(meta_path, format!("`{name}` must be positive")));
            }
        }
        let n_rows = imro
            .as_ref()
            .map_or(kinds[0].max(kinds[1]), |i| i.rows.len());
        let acq_ap = acq.as_ref().map_or(n_rows, |a| a[0]);
        if !np2 && imro.is_none() {
            return Err(format_err(meta_path, "missing `~imroTbl` in the metadata"));
        }
        for (col, &orig) in originals.iter().enumerate() {
            let kind = kind_of(col);
            if kind >= 2 {
                if sync_col.is_none() {
                    sync_col = Some(col);
                }
                continue;
            }
            let row = if kind == 0 {
                orig as usize
            } else {
                (orig as usize).checked_sub(acq_ap).ok_or_else(|| {
                    format_err(
                        meta_path,
                        format!("snsSaveChanSubset index {orig} is not an LF channel"),
                    )
                })?
            };
            if row >= n_rows {
                return Err(format_err(
                    meta_path,
                    format!(
                        "snsSaveChanSubset index {orig} is out of range ({n_rows} probe channels)"
                    ),
                ));
            }
            let gain = if np2 {
                80.0
            } else {
                let fields = imro
                    .as_ref()
                    .and_then(|i| i.rows.get(row))
                    .ok_or_else(|| format_err(meta_path, "`~imroTbl` is too short"))?;
                // (chan bank refid apgain lfgain [hpfilt]); rows are listed by channel.
                let g = fields.get(3 + kind).copied().ok_or_else(|| {
                    format_err(meta_path, format!("`~imroTbl` row {row} has no gain field"))
                })?;
                g as f64
            };
            if gain <= 0.0 {
                return Err(format_err(
                    meta_path,
                    format!("gain {gain} of channel {orig} is not positive"),
                ));
            }
            neural_cols.push(col);
            uv.push(range / max_int / gain * 1e6);
        }
        extra.insert("imMaxInt_used".into(), json!(max_int));
        extra.insert("neuropixels_2".into(), json!(np2));
        if let Some(v) = r.raw("~imroTbl") {
            extra.insert("imroTbl".into(), Value::String(v));
        }
    }
    if neural_cols.is_empty() {
        return Err(format_err(meta_path, "no neural channels in the file"));
    }
    let channel_ids: Vec<u32> = neural_cols.iter().map(|&c| originals[c]).collect();
    let channel_names = channel_ids.iter().map(|c| c.to_string()).collect();
    let mut meta_json = r.used;
    meta_json.extend(extra);
    Ok(Layout {
        format: "spikeglx",
        data_offset: 0,
        dtype: super::Dtype::I16,
        stored_channels: n_saved,
        fs,
        neural_cols,
        sync_col,
        channel_ids,
        channel_names,
        uv_per_bit: uv,
        first_sample,
        metadata_path: Some(meta_path.to_path_buf()),
        meta: Value::Object(meta_json),
    })
}
