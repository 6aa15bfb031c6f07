//! The recurrent GLM's saved state (resume after a crash).
//!
//! # Layout
//! One state of [`crate::state`]'s format, tag `b"GLM "`, whose fingerprint covers the model
//! (neurons, window, basis functions, features, link, and every coefficient and basis value by
//! its bits). Fields: started (0 or 1), the sampling mode, the next step, the trial count and
//! one seed per trial, then each trial's ring of future contributions, `ws × n × nb` values
//! laid out `[slot][sender][function]`, slot `s mod ws` holding step `s`'s contributions (the
//! CPU engine's `f64` as they are, the GPU engine's `f32` widened exactly).

use super::{Backend, InitRings, RecurrentGlm, Sampling};
use crate::error::{Error, Result};
use crate::state::{Fingerprint, StateReader, StateWriter};

/// The GLM's tag in saved states.
const STATE_TAG: [u8; 4] = *b"GLM ";

/// The most steps a stream may reach (as the encoders' positions).
pub(crate) const MAX_STEP: u64 = 1 << 63;

fn bad(what: impl Into<String>) -> Error {
    Error::State(what.into())
}

impl RecurrentGlm {
    fn fingerprint(&self) -> u64 {
        let m = &self.model;
        let fp = [m.n, m.ws, m.nb, m.nf]
            .iter()
            .fold(Fingerprint::new(), |fp, &v| fp.u64(v as u64))
            .u64(m.link.code() as u64);
        [&m.coef, &m.ff_coef, &m.intercepts, &m.basis]
            .iter()
            .fold(fp, |fp, v| {
                v.iter().fold(fp.u64(v.len() as u64), |fp, &x| fp.f64(x))
            })
            .finish()
    }

    /// Saves the run's state (started or not, sampling mode, the next step, the seeds and
    /// every trial's window, kept as its ring of future contributions) in the format of
    /// [`crate::state`], for [`RecurrentGlm::restore_state`] on a GLM of the same model, on
    /// either engine.
    ///
    /// A state restored on the engine that saved it resumes bit for bit (spikes and rates).
    /// The GPU engine's `f32` ring is saved exactly as `f64`; the CPU engine's `f64` ring is
    /// rounded to `f32` on the GPU. Across engines the resumed rates stay within the
    /// GPU-against-CPU bound of the [module docs](super) (`tests/glm.rs`: 1e-5 relative over
    /// short rollouts, 1e-4 over 10 000 steps); Poisson draws agree except where a rate's
    /// difference crosses a draw's boundary, as between two uninterrupted runs.
    ///
    /// # Errors
    /// GPU errors of the read-back (device lost).
    pub fn save_state(&self) -> Result<Vec<u8>> {
        let mut w = StateWriter::new(STATE_TAG, self.fingerprint());
        w.u64(self.started as u64);
        w.u64(match self.sampling {
            Sampling::Poisson => 0,
            Sampling::Expected => 1,
        });
        w.u64(self.step);
        w.u64(self.seeds.len() as u64);
        for &s in &self.seeds {
            w.u64(s);
        }
        if self.started {
            let rings = match &self.backend {
                Backend::Cpu(c) => c.rings(),
                Backend::Gpu(g) => g.read_rings()?,
            };
            for r in &rings {
                w.f64s(r.iter().copied());
            }
        }
        Ok(w.finish())
    }

    /// Restores a state saved by [`RecurrentGlm::save_state`] (on either engine): the next
    /// [`run`](RecurrentGlm::run) continues every trial from where it was saved.
    ///
    /// # Errors
    /// [`Error::State`] for bytes that are not a valid state of this model (truncated,
    /// corrupted, another model, a non-finite window value, a step past 2⁶³, a ring value
    /// the GPU's `f32` cannot hold), with the GLM unchanged; on the GPU engine
    /// [`Error::InvalidSetting`] when one trial's state does not fit a storage binding, and
    /// device errors while uploading, also with the GLM unchanged.
    pub fn restore_state(&mut self, bytes: &[u8]) -> Result<()> {
        let m = self.model.clone();
        let mut r = StateReader::open(bytes, STATE_TAG, self.fingerprint())?;
        let started = r.count("started flag", 1)? == 1;
        let sampling = match r.count("sampling mode", 1)? {
            0 => Sampling::Poisson,
            _ => Sampling::Expected,
        };
        let step = r.u64()?;
        let n_trials = r.count("trial count", u32::MAX as u64)?;
        // No preallocation by the count: every field is read (bounds-checked) first.
        let mut seeds = Vec::new();
        for _ in 0..n_trials {
            seeds.push(r.u64()?);
        }
        let len = m.ws * m.n * m.nb;
        let mut rings = Vec::new();
        if started {
            for t in 0..n_trials {
                let ring = r.f64s("ring", len)?;
                if let Some(k) = ring.iter().position(|v| !v.is_finite()) {
                    return Err(bad(format!("trial {t}: non-finite ring value {}", ring[k])));
                }
                if matches!(self.backend, Backend::Gpu(_))
                    && ring.iter().any(|v| !(*v as f32).is_finite())
                {
                    return Err(bad(format!("trial {t}: a ring value overflows f32")));
                }
                rings.push(ring);
            }
        }
        r.finish()?;
        if step > MAX_STEP
            || (started && n_trials == 0)
            || (!started && (step != 0 || n_trials != 0))
        {
            return Err(bad(format!(
                "inconsistent run: started {started}, step {step}, {n_trials} trials"
            )));
        }
        if started {
            let init = InitRings {
                shared: Vec::new(),
                per_trial: rings,
            };
            match &mut self.backend {
                Backend::Cpu(c) => c.start(&init, n_trials),
                Backend::Gpu(g) => g.start(&init, &seeds)?,
            }
        }
        self.seeds = seeds;
        self.sampling = sampling;
        self.step = step;
        self.started = started;
        Ok(())
    }
}
