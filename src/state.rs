//! The binary format of an operator's saved stream state (resume after a crash).
//!
//! # Layout
//! Little-endian throughout:
//!
//! ```text
//! offset  size  field
//! 0       4     magic  b"NKST"
//! 4       2     format version (currently 1)
//! 6       4     operator tag (four ASCII bytes, e.g. b"BPF " for the band-pass filter)
//! 10      8     fingerprint: FNV-1a 64 of the operator's shape and settings
//! 18      …     fields (u64 / f64 scalars; arrays as a u64 length then the elements)
//! end−8   8     FNV-1a 64 checksum of every byte before it
//! ```
//!
//! A state restores only into an operator of the same tag and fingerprint (the same settings:
//! a filter of other sections or sample rate, say, rejects it). The reader never panics and
//! never allocates more than the input's size: every read is bounds-checked and an array's
//! length is checked against the bytes that remain before anything is allocated. Any defect
//! (short, wrong magic or version, bad checksum, other tag or fingerprint, a length that
//! overruns, bytes left over) is [`Error::State`].

use crate::error::{Error, Result};

/// The first four bytes of every saved state.
pub const MAGIC: [u8; 4] = *b"NKST";

/// The format version this build writes and reads.
pub const VERSION: u16 = 1;

/// Bytes before the fields: magic, version, tag, fingerprint.
const HEADER: usize = 4 + 2 + 4 + 8;

/// Bytes of the trailing checksum.
const CHECKSUM: usize = 8;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a 64 of `bytes`.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(FNV_OFFSET, |h, &b| (h ^ b as u64).wrapping_mul(FNV_PRIME))
}

/// Builds an operator's fingerprint from its shape and settings (FNV-1a 64 of their bytes).
#[derive(Debug, Clone)]
pub(crate) struct Fingerprint(u64);

impl Fingerprint {
    /// An empty fingerprint.
    pub(crate) fn new() -> Self {
        Fingerprint(FNV_OFFSET)
    }

    fn bytes(mut self, bytes: &[u8]) -> Self {
        for &b in bytes {
            self.0 = (self.0 ^ b as u64).wrapping_mul(FNV_PRIME);
        }
        self
    }

    /// Adds an integer.
    pub(crate) fn u64(self, v: u64) -> Self {
        self.bytes(&v.to_le_bytes())
    }

    /// Adds a float, by its bits.
    pub(crate) fn f64(self, v: f64) -> Self {
        self.bytes(&v.to_bits().to_le_bytes())
    }

    /// The fingerprint.
    pub(crate) fn finish(&self) -> u64 {
        self.0
    }
}

/// Writes one saved state: header, fields, checksum.
#[derive(Debug)]
pub(crate) struct StateWriter {
    buf: Vec<u8>,
}

impl StateWriter {
    /// A state of operator `tag` with settings `fingerprint`.
    pub(crate) fn new(tag: [u8; 4], fingerprint: u64) -> Self {
        let mut buf = Vec::with_capacity(64);
        buf.extend_from_slice(&MAGIC);
        buf.extend_from_slice(&VERSION.to_le_bytes());
        buf.extend_from_slice(&tag);
        buf.extend_from_slice(&fingerprint.to_le_bytes());
        StateWriter { buf }
    }

    /// A state of operator `tag` with settings `fingerprint` whose first fields are the
    /// stream's channel count (0 before the first chunk) and `pos`; returns the count too.
    pub(crate) fn stream(
        tag: [u8; 4],
        fingerprint: u64,
        n_channels: Option<usize>,
        pos: u64,
    ) -> (Self, usize) {
        let mut w = StateWriter::new(tag, fingerprint);
        let nc = n_channels.unwrap_or(0);
        w.u64(nc as u64);
        w.u64(pos);
        (w, nc)
    }

    /// Appends an integer.
    pub(crate) fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    /// Appends a float (its bits: NaN payloads and signed zeros survive).
    pub(crate) fn f64(&mut self, v: f64) {
        self.u64(v.to_bits());
    }

    /// Appends an array of floats: its length, then the elements.
    pub(crate) fn f64s(&mut self, v: impl ExactSizeIterator<Item = f64>) {
        self.u64(v.len() as u64);
        self.buf.reserve(v.len() * 8);
        for x in v {
            self.f64(x);
        }
    }

    /// Appends a byte string (another operator's whole saved state): its length, then the
    /// bytes.
    pub(crate) fn bytes(&mut self, v: &[u8]) {
        self.u64(v.len() as u64);
        self.buf.extend_from_slice(v);
    }

    /// The finished state, checksum appended.
    pub(crate) fn finish(mut self) -> Vec<u8> {
        let sum = fnv1a64(&self.buf);
        self.buf.extend_from_slice(&sum.to_le_bytes());
        self.buf
    }
}

/// Reads one saved state, checking it field by field.
#[derive(Debug)]
pub(crate) struct StateReader<'a> {
    /// The fields (header and checksum stripped).
    rest: &'a [u8],
}

fn bad(reason: impl Into<String>) -> Error {
    Error::State(reason.into())
}

impl<'a> StateReader<'a> {
    /// Checks the header and the checksum of `bytes` against operator `tag` and settings
    /// `fingerprint`, and positions the reader on the first field.
    ///
    /// # Errors
    /// [`Error::State`]: too short, other magic or version, bad checksum, other tag or
    /// fingerprint.
    pub(crate) fn open(bytes: &'a [u8], tag: [u8; 4], fingerprint: u64) -> Result<Self> {
        if bytes.len() < HEADER + CHECKSUM {
            return Err(bad(format!(
                "{} bytes is shorter than the {} of an empty state",
                bytes.len(),
                HEADER + CHECKSUM
            )));
        }
        if bytes[..4] != MAGIC {
            return Err(bad("not a saved state (wrong magic bytes)"));
        }
        let version = u16::from_le_bytes([bytes[4], bytes[5]]);
        if version != VERSION {
            return Err(bad(format!(
                "format version {version}, this build reads {VERSION}"
            )));
        }
        let (body, sum) = bytes.split_at(bytes.len() - CHECKSUM);
        let mut s = [0u8; 8];
        s.copy_from_slice(sum);
        if fnv1a64(body) != u64::from_le_bytes(s) {
            return Err(bad("checksum mismatch (corrupted or truncated)"));
        }
        let got_tag = &body[6..10];
        if got_tag != tag {
            return Err(bad(format!(
                "state of operator {:?}, expected {:?}",
                String::from_utf8_lossy(got_tag),
                String::from_utf8_lossy(&tag)
            )));
        }
        let mut r = StateReader { rest: &body[10..] };
        let got = r.u64()?;
        if got != fingerprint {
            return Err(bad(
                "state of an operator with other settings or shape (fingerprint mismatch)",
            ));
        }
        Ok(r)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.rest.len() {
            return Err(bad(format!(
                "field of {n} bytes overruns the {} that remain",
                self.rest.len()
            )));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    /// Reads an integer.
    pub(crate) fn u64(&mut self) -> Result<u64> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(b))
    }

    /// Reads an integer that must fit a `usize` and be at most `max`.
    pub(crate) fn count(&mut self, what: &str, max: u64) -> Result<usize> {
        let v = self.u64()?;
        if v > max {
            return Err(bad(format!("{what} {v} is above {max}")));
        }
        usize::try_from(v).map_err(|_| bad(format!("{what} {v} does not fit this machine")))
    }

    /// Reads an array of floats of exactly `len` elements.
    pub(crate) fn f64s(&mut self, what: &str, len: usize) -> Result<Vec<f64>> {
        let got = self.u64()?;
        if got != len as u64 {
            return Err(bad(format!("{what}: {got} values, expected {len}")));
        }
        let raw = self.take(
            len.checked_mul(8)
                .ok_or_else(|| bad(format!("{what}: length {len} overflows")))?,
        )?;
        Ok(raw
            .chunks_exact(8)
            .map(|c| {
                let mut b = [0u8; 8];
                b.copy_from_slice(c);
                f64::from_bits(u64::from_le_bytes(b))
            })
            .collect())
    }

    /// Reads a byte string written by `StateWriter::bytes` (its length is checked against
    /// the bytes that remain before anything is taken).
    pub(crate) fn bytes(&mut self, what: &str) -> Result<&'a [u8]> {
        let len = self.u64()?;
        let len = usize::try_from(len)
            .map_err(|_| bad(format!("{what}: length {len} does not fit this machine")))?;
        self.take(len)
    }

    /// Checks that every field was read.
    pub(crate) fn finish(self) -> Result<()> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(bad(format!(
                "{} unread bytes after the fields",
                self.rest.len()
            )))
        }
    }
}

/// Rounds the unevaluated sum `hi + lo` of two `f64` to a double-`f32` pair: exact when `hi`
/// is already an `f32` (a pair saved by a GPU engine), else `hi`'s rounding error plus `lo`
/// goes into the low part. `None` when either part leaves `f32` range.
pub(crate) fn f32_pair(hi: f64, lo: f64) -> Option<[f32; 2]> {
    let h = hi as f32;
    let l = if h as f64 == hi {
        lo as f32
    } else {
        ((hi - h as f64) + lo) as f32
    };
    (h.is_finite() && l.is_finite()).then_some([h, l])
}

/// One operator of each kind that saves its state, with the settings [`fuzz_restore`] uses.
struct FuzzOperators {
    filter: crate::filter::BandpassFilter,
    threshold: crate::threshold::ThresholdCrossing,
    binning: crate::binning::BinnedActivation,
    lrr: crate::lrr::Lrr,
    classifier: crate::classifier::MaxRateClassifier,
    chain: crate::chain::Chain,
    glm: crate::glm::RecurrentGlm,
}

impl FuzzOperators {
    fn new() -> Result<Self> {
        let engine = crate::engine::Engine::cpu();
        Ok(FuzzOperators {
            filter: crate::filter::BandpassFilter::new(
                &engine,
                crate::filter::FilterSettings::default(),
                2e4,
            )?,
            threshold: crate::threshold::ThresholdCrossing::new(
                &engine,
                crate::threshold::ThresholdSettings::default(),
                2e4,
            )?,
            binning: crate::binning::BinnedActivation::new(
                &engine,
                crate::binning::BinningSettings::default(),
                2e4,
            )?,
            lrr: crate::lrr::Lrr::new(&engine, crate::lrr::LrrSettings::default())?,
            classifier: crate::classifier::MaxRateClassifier::new(
                &engine,
                crate::classifier::ClassifierSettings::new(16, 4),
            )?,
            chain: crate::chain::fuzz_chain()?,
            glm: fuzz_glm(&engine)?,
        })
    }
}

/// The fuzz entry's GLM: 2 neurons, window 3, 2 basis functions, 1 feature.
fn fuzz_glm(engine: &crate::engine::Engine) -> Result<crate::glm::RecurrentGlm> {
    let coef = ndarray::Array3::from_shape_fn((2, 2, 2), |(i, j, b)| {
        0.1 * (i as f64 - j as f64) + 0.05 * b as f64
    });
    let ff = ndarray::Array2::from_elem((2, 1), 0.5);
    let icp = ndarray::Array1::from_vec(vec![-0.5, 0.25]);
    let basis = ndarray::Array2::from_shape_fn((3, 2), |(w, b)| 1.0 / (1 + w + b) as f64);
    crate::glm::RecurrentGlm::new(
        engine,
        coef.view().into_dyn(),
        ff.view().into_dyn(),
        icp.view().into_dyn(),
        basis.view().into_dyn(),
        crate::glm::Link::Softplus,
    )
}

/// A fuzz entry: restores arbitrary `bytes` into a fresh operator of each kind that saves its
/// state (on the CPU engine: the band-pass filter, threshold crossing and binned activation,
/// default settings at 20 kHz; LRR, default settings; the max-rate classifier of 16 neurons
/// and 4 classes; a chain of default settings over 4 channels; a recurrent GLM of 2
/// neurons, window 3). Returns `Ok` when one of
/// them takes the bytes, else the last [`Error::State`]; it never panics, whatever the bytes.
pub fn fuzz_restore(bytes: &[u8]) -> Result<()> {
    let mut op = FuzzOperators::new()?;
    let f = op.filter.restore_state(bytes);
    let t = op.threshold.restore_state(bytes);
    let b = op.binning.restore_state(bytes);
    let l = op.lrr.restore_state(bytes);
    let c = op.classifier.restore_state(bytes);
    let chain = op.chain.restore_state(bytes);
    let glm = op.glm.restore_state(bytes);
    f.or(t).or(b).or(l).or(c).or(chain).or(glm)
}

/// Valid states that [`fuzz_restore`] takes, one per operator kind, saved mid-stream (the
/// seeds of the `state` fuzz target's corpus).
///
/// # Errors
/// Only if an operator fails on its small deterministic input (it does not).
pub fn fuzz_seeds() -> Result<Vec<Vec<u8>>> {
    let mut op = FuzzOperators::new()?;
    let x = ndarray::Array2::from_shape_fn((300, 4), |(i, j)| {
        (((i * 31 + j * 17) % 23) as f32 - 11.0) * if i % 97 == 5 { 9.0 } else { 1.0 }
    });
    op.filter.process(x.view())?;
    op.threshold.process(x.view())?;
    op.binning
        .process_dense(x.mapv(|v| (v > 40.0) as u8 as f32).view())?;
    op.lrr.partial_fit(x.view())?;
    let rates = ndarray::Array2::from_shape_fn((6, 16), |(i, j)| ((i * 5 + j) % 7) as f32);
    op.classifier.update(rates.view(), &[0, 1, 2, 3, 0, 1])?;
    op.chain.process(x.view())?;
    let init = ndarray::Array2::from_elem((3, 2), 1.0);
    op.glm.start(
        init.view().into_dyn(),
        &[7, 8],
        crate::glm::Sampling::Poisson,
    )?;
    op.glm
        .run(ndarray::Array3::from_elem((5, 2, 1), 0.3).view().into_dyn())?;
    Ok(vec![
        op.filter.save_state()?,
        op.threshold.save_state()?,
        op.binning.save_state()?,
        op.lrr.save_state()?,
        op.classifier.save_state()?,
        op.chain.save_state()?,
        op.glm.save_state()?,
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    const TAG: [u8; 4] = *b"TEST";

    fn sample() -> Vec<u8> {
        let mut w = StateWriter::new(TAG, 42);
        w.u64(3);
        w.f64s([1.0, -0.0, 2.5].into_iter());
        w.finish()
    }

    #[test]
    fn round_trip() {
        let b = sample();
        let mut r = StateReader::open(&b, TAG, 42).unwrap();
        assert_eq!(r.count("n", 10).unwrap(), 3);
        let v = r.f64s("v", 3).unwrap();
        assert_eq!(v[1].to_bits(), (-0.0f64).to_bits());
        r.finish().unwrap();
    }

    #[test]
    fn fnv_known_value() {
        // The published FNV-1a 64 of "a".
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn every_truncation_and_bit_flip_is_rejected() {
        let b = sample();
        for n in 0..b.len() {
            assert!(StateReader::open(&b[..n], TAG, 42).is_err(), "prefix {n}");
        }
        for i in 0..b.len() * 8 {
            let mut c = b.clone();
            c[i / 8] ^= 1 << (i % 8);
            assert!(StateReader::open(&c, TAG, 42).is_err(), "bit {i}");
        }
        assert!(StateReader::open(&b, *b"OTHR", 42).is_err());
        assert!(StateReader::open(&b, TAG, 43).is_err());
    }

    #[test]
    fn huge_lengths_do_not_allocate() {
        let mut w = StateWriter::new(TAG, 1);
        w.u64(u64::MAX);
        let b = w.finish();
        let mut r = StateReader::open(&b, TAG, 1).unwrap();
        assert!(r.f64s("v", usize::MAX / 4).is_err());
    }
}
