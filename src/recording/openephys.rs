//! Open Ephys binary layout: `<rec>/structure.oebin` (JSON) and
//! `<rec>/continuous/<folder_name>/continuous.dat` (int16, interleaved).
//!
//! Fields read from each `continuous[i]` entry of `structure.oebin`: `folder_name` (the
//! stream's folder under `continuous/`, often with a trailing `/`), `sample_rate` (Hz),
//! `num_channels` (values per sample in `continuous.dat`), and per channel
//! `channels[j].bit_volts` (µV per bit; the name notwithstanding, Open Ephys writes µV) and
//! `channels[j].channel_name`. The first sample number comes from the first value of
//! `sample_numbers.npy` next to `continuous.dat` (int64, GUI 0.6 and later), or, when that
//! file is missing, of an integer `timestamps.npy` (older GUIs stored sample numbers there);
//! otherwise 0. Every channel of the stream is a data channel (Open Ephys keeps TTL events
//! apart from the continuous data, so there is no sync word).

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::npy::{format_err, io_err, parse_header};
use super::{Dtype, Layout};
use crate::error::{Error, Result};

/// Walks up from `start` (at most four levels) looking for `structure.oebin`.
pub(crate) fn find_oebin(start: &Path) -> Option<PathBuf> {
    let mut dir = start.parent();
    for _ in 0..4 {
        let d = dir?;
        let cand = d.join("structure.oebin");
        if cand.is_file() {
            return Some(cand);
        }
        dir = d.parent();
    }
    None
}

/// The first sample number and the entry count of the sample-number file in `dir`, and that
/// file's path.
fn first_sample_number(dir: &Path) -> Result<Option<(u64, u64, PathBuf)>> {
    for (name, need_int) in [("sample_numbers.npy", false), ("timestamps.npy", true)] {
        let p = dir.join(name);
        if !p.is_file() {
            continue;
        }
        let bytes = std::fs::read(&p).map_err(|e| io_err(&p, "cannot read", e))?;
        let h = parse_header(&p, &bytes)?;
        let n: u64 = h.shape.iter().product();
        if n == 0 {
            return Ok(Some((0, 0, p)));
        }
        let word = bytes
            .get(h.data_offset..h.data_offset + 8)
            .ok_or_else(|| format_err(&p, "truncated data"))?;
        let mut b = [0u8; 8];
        b.copy_from_slice(word);
        let v = match h.descr.as_str() {
            "<i8" => {
                let v = i64::from_le_bytes(b);
                u64::try_from(v)
                    .map_err(|_| format_err(&p, format!("negative first sample number {v}")))?
            }
            "<u8" => u64::from_le_bytes(b),
            _ if need_int => continue,
            d => {
                return Err(format_err(
                    &p,
                    format!("sample numbers of type `{d}` are not supported (want <i8)"),
                ))
            }
        };
        return Ok(Some((v, n, p)));
    }
    Ok(None)
}

/// Lays out a stream of `oebin`. `dat` is the `continuous.dat` that was opened, if any (it
/// picks the stream); otherwise `stream` (a substring of `folder_name`) or the first stream.
/// Entry count of a sample-number file, and its path.
pub(crate) type SampleCount = (u64, PathBuf);

/// Returns the layout, the data file, and the sample count of the sample-number file with its
/// path, when there is one.
pub(crate) fn layout(
    oebin: &Path,
    dat: Option<&Path>,
    stream: Option<&str>,
) -> Result<(Layout, PathBuf, Option<SampleCount>)> {
    let text = std::fs::read_to_string(oebin).map_err(|e| io_err(oebin, "cannot read", e))?;
    let (mut layout, data) = stream_layout(oebin, &text, dat, stream)?;
    let numbers = first_sample_number(data.parent().unwrap_or(Path::new(".")))?;
    layout.first_sample = numbers.as_ref().map_or(0, |n| n.0);
    let counted = numbers.map(|(_, count, p)| (count, p));
    Ok((layout, data, counted))
}

/// The layout (first sample 0) and the data file of the stream picked (as for [`layout`])
/// from `text`, the contents of `oebin`.
pub(crate) fn stream_layout(
    oebin: &Path,
    text: &str,
    dat: Option<&Path>,
    stream: Option<&str>,
) -> Result<(Layout, PathBuf)> {
    let root: Value =
        serde_json::from_str(text).map_err(|e| format_err(oebin, format!("invalid JSON: {e}")))?;
    let streams = root
        .get("continuous")
        .and_then(Value::as_array)
        .ok_or_else(|| format_err(oebin, "no `continuous` list"))?;
    if streams.is_empty() {
        return Err(format_err(oebin, "the `continuous` list is empty"));
    }
    let rec_dir = oebin.parent().unwrap_or(Path::new("."));
    let folder = |s: &Value| -> String {
        s.get("folder_name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .trim_end_matches(['/', '\\'])
            .to_string()
    };
    let index = if let Some(dat) = dat {
        let dat_dir = dat.parent().unwrap_or(Path::new("."));
        let pos = streams.iter().position(|s| {
            let f = folder(s);
            !f.is_empty()
                && (rec_dir.join("continuous").join(&f) == dat_dir
                    || same_file(&rec_dir.join("continuous").join(&f), dat_dir))
        });
        match (pos, stream) {
            (Some(p), _) => p,
            (None, Some(sub)) => pick(oebin, streams, sub, &folder)?,
            (None, None) => {
                return Err(format_err(
                    oebin,
                    format!("no stream's folder_name matches {}", dat.display()),
                ))
            }
        }
    } else if let Some(sub) = stream {
        pick(oebin, streams, sub, &folder)?
    } else {
        0
    };
    let s = &streams[index];
    let folder_name = folder(s);
    if folder_name.is_empty() {
        return Err(format_err(
            oebin,
            format!("continuous[{index}] has no folder_name"),
        ));
    }
    let fs = s
        .get("sample_rate")
        .and_then(Value::as_f64)
        .ok_or_else(|| format_err(oebin, format!("continuous[{index}] has no sample_rate")))?;
    if !(fs.is_finite() && fs > 0.0) {
        return Err(format_err(
            oebin,
            format!("continuous[{index}] sample_rate {fs} is not positive"),
        ));
    }
    let n = s
        .get("num_channels")
        .and_then(Value::as_u64)
        .ok_or_else(|| format_err(oebin, format!("continuous[{index}] has no num_channels")))?
        as usize;
    if n == 0 {
        return Err(format_err(
            oebin,
            format!("continuous[{index}] has 0 channels"),
        ));
    }
    super::check_channel_count(oebin, "num_channels", n as u64)?;
    let channels = s
        .get("channels")
        .and_then(Value::as_array)
        .ok_or_else(|| format_err(oebin, format!("continuous[{index}] has no channels list")))?;
    if channels.len() != n {
        return Err(format_err(
            oebin,
            format!(
                "continuous[{index}] num_channels={n} but lists {} channels",
                channels.len()
            ),
        ));
    }
    let mut uv = Vec::with_capacity(n);
    let mut names = Vec::with_capacity(n);
    for (j, c) in channels.iter().enumerate() {
        let b = c.get("bit_volts").and_then(Value::as_f64).ok_or_else(|| {
            format_err(
                oebin,
                format!("continuous[{index}].channels[{j}] has no bit_volts"),
            )
        })?;
        if !(b.is_finite() && b > 0.0) {
            return Err(format_err(
                oebin,
                format!("continuous[{index}].channels[{j}] bit_volts {b} is not positive"),
            ));
        }
        uv.push(b);
        names.push(
            c.get("channel_name")
                .and_then(Value::as_str)
                .map_or_else(|| format!("CH{}", j + 1), str::to_string),
        );
    }
    let data_dir = rec_dir.join("continuous").join(&folder_name);
    let data = match dat {
        Some(d) => d.to_path_buf(),
        None => data_dir.join("continuous.dat"),
    };
    let meta = json!({
        "oebin": oebin.display().to_string(),
        "stream_index": index,
        "folder_name": folder_name,
        "sample_rate": fs,
        "num_channels": n,
        "GUI version": root.get("GUI version").cloned().unwrap_or(Value::Null),
    });
    Ok((
        Layout {
            format: "openephys",
            data_offset: 0,
            dtype: Dtype::I16,
            stored_channels: n,
            fs,
            neural_cols: (0..n).collect(),
            sync_col: None,
            channel_ids: (0..n as u32).collect(),
            channel_names: names,
            uv_per_bit: uv,
            first_sample: 0,
            metadata_path: Some(oebin.to_path_buf()),
            meta,
        },
        data,
    ))
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

fn pick(
    oebin: &Path,
    streams: &[Value],
    sub: &str,
    folder: &dyn Fn(&Value) -> String,
) -> Result<usize> {
    streams
        .iter()
        .position(|s| folder(s).contains(sub))
        .ok_or_else(|| Error::Format {
            path: oebin.display().to_string(),
            message: format!(
                "no stream's folder_name contains `{sub}` (streams: {})",
                streams.iter().map(folder).collect::<Vec<_>>().join(", ")
            ),
        })
}
