//! `.npy` files: a streaming writer, and the header reader used to open `.npy` recordings.
//!
//! Only numpy format versions 1.0 (written and read) and 2.0/3.0 (read) are handled, with
//! little-endian element types. The writer produces format 1.0 files that `numpy.load` and
//! `ndarray_npy::read_npy` read back as written.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

const MAGIC: &[u8; 6] = b"\x93NUMPY";

/// An element type that [`NpyWriter`] can write: `f32`, `u32`, `i64` and `u64`, little-endian.
pub trait NpyElement: Copy + sealed::Sealed {
    /// The numpy `descr` string (e.g. `<f4`).
    const DESCR: &'static str;
    /// Size of one element in bytes.
    const SIZE: usize;
    /// Appends the element's little-endian bytes to `out`.
    fn put_le(self, out: &mut Vec<u8>);
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for u32 {}
    impl Sealed for i64 {}
    impl Sealed for u64 {}
}

macro_rules! npy_element {
    ($t:ty, $descr:expr) => {
        impl NpyElement for $t {
            const DESCR: &'static str = $descr;
            const SIZE: usize = std::mem::size_of::<$t>();
            fn put_le(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
        }
    };
}
npy_element!(f32, "<f4");
npy_element!(u32, "<u4");
npy_element!(i64, "<i8");
npy_element!(u64, "<u8");

pub(crate) fn io_err(path: &Path, what: &str, e: impl std::fmt::Display) -> Error {
    Error::Io {
        path: path.display().to_string(),
        message: format!("{what}: {e}"),
    }
}

pub(crate) fn format_err(path: &Path, message: impl Into<String>) -> Error {
    Error::Format {
        path: path.display().to_string(),
        message: message.into(),
    }
}

/// Streaming writer of a 1-D (`row_width == 0`, shape `(N,)`) or 2-D (shape `(N, W)`) `.npy`
/// file whose row count is not known in advance.
///
/// Rows are written to `path` + `.partial` as they come. [`NpyWriter::finish`] rewrites the
/// header with the final shape and renames the file to `path`. The header is numpy format 1.0,
/// padded to a multiple of 64 bytes, with room reserved for any `u64` row count so the
/// rewrite always fits. A writer dropped without `finish` deletes its partial file and leaves
/// nothing at `path`.
pub struct NpyWriter<T: NpyElement> {
    path: PathBuf,
    partial: PathBuf,
    file: Option<BufWriter<File>>,
    row_width: usize,
    rows: u64,
    header_len: usize,
    buf: Vec<u8>,
    _t: PhantomData<T>,
}

/// The header text (`{...}` dict, padded with spaces, ending in `\n`) for `rows` rows, padded
/// so that magic + version + length + text is `total` bytes (or the smallest multiple of 64
/// when `total` is 0).
fn header_bytes(descr: &str, rows: u64, row_width: usize, total: usize) -> Vec<u8> {
    let shape = if row_width == 0 {
        format!("({rows},)")
    } else {
        format!("({rows}, {row_width})")
    };
    let dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    let prefix = MAGIC.len() + 2 + 2;
    let total = if total == 0 {
        // Reserve the width of the largest row count so any final shape fits.
        let widest = format!("{}", u64::MAX).len() - format!("{rows}").len();
        (prefix + dict.len() + widest + 1).div_ceil(64) * 64
    } else {
        total
    };
    let text_len = total - prefix;
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(text_len as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out.resize(total - 1, b' ');
    out.push(b'\n');
    out
}

impl<T: NpyElement> NpyWriter<T> {
    /// Starts a file at `path` (written as `path.partial` until [`finish`](Self::finish)).
    /// `row_width` is the number of columns; 0 writes a 1-D array.
    pub fn create(path: impl AsRef<Path>, row_width: usize) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let mut partial = path.clone().into_os_string();
        partial.push(".partial");
        let partial = PathBuf::from(partial);
        let file = File::create(&partial).map_err(|e| io_err(&partial, "cannot create", e))?;
        let header = header_bytes(T::DESCR, 0, row_width, 0);
        let header_len = header.len();
        let mut file = BufWriter::new(file);
        file.write_all(&header)
            .map_err(|e| io_err(&partial, "cannot write", e))?;
        Ok(Self {
            path,
            partial,
            file: Some(file),
            row_width,
            rows: 0,
            header_len,
            buf: Vec::new(),
            _t: PhantomData,
        })
    }

    /// Appends whole rows (`values.len()` a multiple of the row width; any length for 1-D).
    pub fn append_rows(&mut self, values: &[T]) -> Result<()> {
        let width = self.row_width.max(1);
        if !values.len().is_multiple_of(width) {
            return Err(Error::shape(
                "NpyWriter::append_rows",
                format!("a multiple of {width} values"),
                values.len(),
            ));
        }
        let Some(file) = self.file.as_mut() else {
            return Err(io_err(
                &self.partial,
                "cannot write",
                "writer already closed",
            ));
        };
        self.buf.clear();
        self.buf.reserve(values.len() * T::SIZE);
        for &v in values {
            v.put_le(&mut self.buf);
        }
        file.write_all(&self.buf)
            .map_err(|e| io_err(&self.partial, "cannot write", e))?;
        self.rows += (values.len() / width) as u64;
        Ok(())
    }

    /// Rows written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// The final path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes the final shape into the header, flushes and renames the file to its final path.
    /// On failure the partial file is removed.
    pub fn finish(mut self) -> Result<PathBuf> {
        let Some(file) = self.file.take() else {
            return Err(io_err(
                &self.partial,
                "cannot finish",
                "writer already closed",
            ));
        };
        let result = self.close(file);
        if result.is_err() {
            let _ = std::fs::remove_file(&self.partial);
        }
        result
    }

    fn close(&self, file: BufWriter<File>) -> Result<PathBuf> {
        let partial = &self.partial;
        let mut file = file
            .into_inner()
            .map_err(|e| io_err(partial, "cannot flush", e.error()))?;
        let header = header_bytes(T::DESCR, self.rows, self.row_width, self.header_len);
        file.seek(SeekFrom::Start(0))
            .and_then(|_| file.write_all(&header))
            .and_then(|_| file.flush())
            .map_err(|e| io_err(partial, "cannot rewrite header", e))?;
        drop(file);
        std::fs::rename(partial, &self.path).map_err(|e| {
            io_err(
                partial,
                &format!("cannot rename to {}", self.path.display()),
                e,
            )
        })?;
        Ok(self.path.clone())
    }
}

impl<T: NpyElement> Drop for NpyWriter<T> {
    fn drop(&mut self) {
        if let Some(file) = self.file.take() {
            drop(file);
            let _ = std::fs::remove_file(&self.partial);
        }
    }
}

/// What an `.npy` header says.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct NpyHeader {
    /// The `descr` string.
    pub descr: String,
    /// `fortran_order`.
    pub fortran_order: bool,
    /// The shape.
    pub shape: Vec<u64>,
    /// Byte offset of the data.
    pub data_offset: usize,
}

/// Parses an `.npy` header from the start of `bytes` (the file's contents or a prefix of it).
pub(crate) fn parse_header(path: &Path, bytes: &[u8]) -> Result<NpyHeader> {
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err(format_err(path, "not an .npy file (bad magic string)"));
    }
    let major = bytes[6];
    let (len, start) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err(format_err(path, "truncated .npy header"));
            }
            (
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                12,
            )
        }
        v => return Err(format_err(path, format!("unsupported .npy version {v}"))),
    };
    let end = start + len;
    let text = bytes
        .get(start..end)
        .ok_or_else(|| format_err(path, "truncated .npy header"))?;
    let text =
        std::str::from_utf8(text).map_err(|_| format_err(path, "the .npy header is not text"))?;
    let value_of = |key: &str| -> Result<&str> {
        let pat = format!("'{key}'");
        let at = text
            .find(&pat)
            .ok_or_else(|| format_err(path, format!("the .npy header has no '{key}'")))?;
        let rest = text[at + pat.len()..].trim_start();
        let rest = rest
            .strip_prefix(':')
            .ok_or_else(|| format_err(path, format!("bad '{key}' in the .npy header")))?;
        Ok(rest.trim_start())
    };
    let descr = {
        let v = value_of("descr")?;
        let q = v.chars().next().unwrap_or(' ');
        if q != '\'' && q != '"' {
            return Err(format_err(path, "bad 'descr' in the .npy header"));
        }
        let inner = &v[1..];
        let close = inner
            .find(q)
            .ok_or_else(|| format_err(path, "bad 'descr' in the .npy header"))?;
        inner[..close].to_string()
    };
    let fortran_order = {
        let v = value_of("fortran_order")?;
        if v.starts_with("True") {
            true
        } else if v.starts_with("False") {
            false
        } else {
            return Err(format_err(path, "bad 'fortran_order' in the .npy header"));
        }
    };
    let shape = {
        let v = value_of("shape")?;
        let inner = v
            .strip_prefix('(')
            .and_then(|r| r.find(')').map(|c| &r[..c]))
            .ok_or_else(|| format_err(path, "bad 'shape' in the .npy header"))?;
        inner
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.trim_end_matches('L').parse::<u64>().map_err(|_| {
                    format_err(path, format!("bad shape entry `{s}` in the .npy header"))
                })
            })
            .collect::<Result<Vec<u64>>>()?
    };
    Ok(NpyHeader {
        descr,
        fortran_order,
        shape,
        data_offset: end,
    })
}
