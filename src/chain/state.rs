//! The chain's saved state: calibration plus each stage's own saved state (resume after a
//! crash without calibrating again).
//!
//! # Layout
//! One state of [`crate::state`]'s format, tag `b"CHN "`, whose fingerprint covers the
//! chain's settings, sample rate and channel count. Its fields: the stream's first sample,
//! chunks processed, the calibration (window length, per-channel noise and thresholds, dead
//! channels), then the saved states of the filter (when there is one), the LRR reference
//! (LRR only: its weights are the calibration's), threshold crossing and binned activation,
//! each nested whole with its own header, fingerprint and checksum.

use ndarray::ArrayView2;

use super::{Calibration, Chain, ChainSettings, Reference};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::filter::BandpassFilter;
use crate::state::{Fingerprint, StateReader, StateWriter};

/// The chain's tag in saved states.
const STATE_TAG: [u8; 4] = *b"CHN ";

/// The most channels a saved chain may hold (as the recording readers allow).
const MAX_STATE_CHANNELS: u64 = crate::recording::MAX_CHANNELS as u64;

fn bad(what: impl Into<String>) -> Error {
    Error::State(what.into())
}

/// The fingerprint of a chain of `settings` at `fs` Hz over `c` channels. The settings enter
/// through their `Debug` text, which writes every float in its shortest exact form; stage
/// timing (`profile_stages`) does not change the stream and is left out.
fn fingerprint(settings: &ChainSettings, fs: f64, c: usize) -> u64 {
    let text = format!(
        "{:?}",
        ChainSettings {
            profile_stages: false,
            ..settings.clone()
        }
    );
    text.bytes()
        .fold(Fingerprint::new().f64(fs).u64(c as u64), |fp, b| {
            fp.u64(b as u64)
        })
        .finish()
}

/// The f32 values of `what`, saved as f64, back to f32: each must be one exactly.
fn f32s(r: &mut StateReader<'_>, what: &str, len: usize) -> Result<Vec<f32>> {
    r.f64s(what, len)?
        .into_iter()
        .map(|v| {
            let f = v as f32;
            (f as f64 == v || v.is_nan() && f.is_nan())
                .then_some(f)
                .ok_or_else(|| bad(format!("{what}: {v} is not an f32")))
        })
        .collect()
}

impl Chain {
    /// Saves the chain's stream state: its calibration and every stage's state (see
    /// [`Chain::resume`]). The state restores on either engine.
    ///
    /// # Errors
    /// GPU errors of the read-backs (device lost).
    pub fn save_state(&mut self) -> Result<Vec<u8>> {
        let c = self.n_channels;
        let mut w = StateWriter::new(STATE_TAG, fingerprint(&self.settings, self.fs, c));
        w.u64(self.detect.settings().first_sample);
        w.u64(self.times.chunks);
        let cal = &self.calibration;
        w.u64(cal.n_samples as u64);
        w.f64s(cal.noise.iter().map(|&v| v as f64));
        w.f64s(cal.thresholds.iter().map(|&v| v as f64));
        w.u64(cal.dead_channels.len() as u64);
        for &j in &cal.dead_channels {
            w.u64(j as u64);
        }
        if let Some(f) = &self.filter {
            w.bytes(&f.save_state()?);
        }
        if let Reference::Lrr(l) = &mut self.reference {
            w.bytes(&l.save_state()?);
        }
        w.bytes(&self.detect.save_state()?);
        w.bytes(&self.bin.save_state()?);
        Ok(w.finish())
    }

    /// A chain on `engine` that continues the stream saved by [`Chain::save_state`] (on
    /// either engine), without calibrating again: the same calibration, and every stage
    /// where it was. On the engine that saved it the stream resumes bit for bit; on the
    /// other, each stage within its module's bound (an event whose margin to the threshold
    /// is within the filter's bound may differ, as between two uninterrupted chains on the
    /// two engines).
    ///
    /// # Errors
    /// [`Error::State`] for bytes that are not a valid chain state of these settings,
    /// sample rate and channel count (truncated, corrupted, other settings, inconsistent
    /// calibration, a stage's state refused), [`Error::InvalidSetting`] for bad settings,
    /// device errors.
    pub fn resume(
        engine: &Engine,
        settings: ChainSettings,
        fs: f64,
        n_channels: usize,
        bytes: &[u8],
    ) -> Result<Self> {
        let c = n_channels;
        let mut r = StateReader::open(bytes, STATE_TAG, fingerprint(&settings, fs, c))?;
        if c == 0 || c as u64 > MAX_STATE_CHANNELS {
            return Err(bad(format!("{c} channels")));
        }
        let first_sample = r.u64()?;
        let chunks = r.u64()?;
        let n_samples = r.count("calibration window", u64::MAX)?;
        let noise = f32s(&mut r, "noise", c)?;
        let thresholds = f32s(&mut r, "thresholds", c)?;
        let n_dead = r.count("dead channel count", c as u64)?;
        let mut dead_channels = Vec::new();
        for _ in 0..n_dead {
            let j = r.count("dead channel", c as u64 - 1)?;
            if dead_channels.last().is_some_and(|&p| p >= j) {
                return Err(bad("dead channels not strictly increasing"));
            }
            dead_channels.push(j);
        }
        if n_samples == 0
            || noise.iter().any(|&s| !(s.is_finite() && s >= 0.0))
            || thresholds.iter().any(|t| !t.is_finite() || *t == 0.0)
        {
            return Err(bad("inconsistent calibration"));
        }
        let filter = match settings.filter {
            Some(f) => {
                let mut filt = BandpassFilter::new(engine, f, fs)?;
                filt.restore_state(r.bytes("filter state")?)?;
                Some(filt)
            }
            None => None,
        };
        let mut reference = Reference::new(engine, &settings)?;
        let weights = match &mut reference {
            Reference::Lrr(l) => {
                l.restore_state(r.bytes("LRR state")?)?;
                let w = l
                    .weights()
                    .map_err(|e| bad(format!("LRR state without weights: {e}")))?;
                if w.dim() != (c, c) {
                    return Err(bad(format!("LRR weights of shape {:?}", w.dim())));
                }
                Some(w)
            }
            _ => None,
        };
        let mut chain = Chain::assemble(
            engine,
            settings,
            fs,
            (filter, reference),
            Calibration {
                n_samples,
                noise,
                thresholds,
                dead_channels,
                weights,
            },
            first_sample,
        )?;
        chain.detect.restore_state(r.bytes("threshold state")?)?;
        chain.bin.restore_state(r.bytes("binning state")?)?;
        r.finish()?;
        // A stage that has seen a chunk knows its channel count: it must be the chain's.
        let counts = [
            (
                "filter",
                chain.filter.as_ref().and_then(BandpassFilter::n_channels),
            ),
            ("threshold", chain.detect.n_channels()),
            ("binning", chain.bin.n_channels()),
        ];
        if let Some((stage, n)) = counts.iter().find(|(_, n)| n.is_some_and(|n| n != c)) {
            return Err(bad(format!(
                "{stage} state of {n:?} channels, the chain has {c}"
            )));
        }
        chain.times.chunks = chunks;
        Ok(chain)
    }

    /// Restores a state saved by [`Chain::save_state`] into this chain (its engine,
    /// settings, sample rate and channel count): [`Chain::resume`] in place.
    ///
    /// # Errors
    /// As [`Chain::resume`]; the chain is unchanged on error.
    pub fn restore_state(&mut self, bytes: &[u8]) -> Result<()> {
        let resumed = Chain::resume(
            &self.engine,
            self.settings.clone(),
            self.fs,
            self.n_channels,
            bytes,
        )?;
        *self = resumed;
        Ok(())
    }
}

/// The fuzz entry's chain: CPU engine, default settings without LRR clustering beyond one
/// cluster, 4 channels at 20 kHz, calibrated on a small window.
pub(crate) fn fuzz_chain() -> Result<Chain> {
    let window =
        ndarray::Array2::from_shape_fn((400, 4), |(i, j)| ((i * 7 + j * 13) % 17) as f32 - 8.0);
    Chain::calibrate(
        &Engine::cpu(),
        ChainSettings::default(),
        2e4,
        ArrayView2::from(&window),
        0,
    )
}
