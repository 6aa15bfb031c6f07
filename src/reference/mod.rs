//! Common-average reference (SPEC §7, "Reference"): the cheap alternative to LRR.
//!
//! # Definition
//! For a `(samples, channels)` chunk `x`, every sample row `t` has its centre subtracted:
//! `y[t, c] = x[t, c] − m[t]`, where `m[t]` is the mean of the row over its channels, or with
//! [`CarSettings::median`] its median (numpy's convention: for an even channel count, the
//! mean of the two middle values). One channel gives zeros. The operator is stateless: each
//! row is independent, so any chunking gives the same output, bit for bit.
//!
//! # Errors
//! [`Error::Shape`] for a chunk with no channels (or, on the GPU engine, more than 16 384);
//! [`Error::NonFinite`] naming the first NaN or ±inf (by sample, then channel). An empty
//! chunk gives an empty output.
//!
//! # Engines and accuracy
//! * CPU (`cpu.rs`): mean in `f64`, median by selection, subtraction in `f64`, one rounding
//!   to `f32`: within half an `f32` ulp of the exact value.
//! * GPU (`gpu.rs`, `shaders/reference.wgsl`): `f32` only. The mean is a pairwise sum (error
//!   about `log₂(channels)·2⁻²⁴·Σ|x|`), then one division and one subtraction; the median
//!   ranks each sample against its row (`channels²` comparisons per row: the median costs
//!   far more than the mean on the GPU), picks the exact middle values and averages them as
//!   `a/2 + b/2`. The tests bound the difference from an `f64` truth by `1e-6 · max|x|` of the
//!   row (measured on lavapipe and llvmpipe-GL, values around 1000 ± 200: mean 1.5e-7,
//!   median 6e-8 × max|x|; the CPU engine 6e-9, and 0 for the median).
//!
//! Cost (`benches/filter.rs`, mean, 384 channels, 600-row chunks, noisy 2-core VM): CPU about
//! 0.14 ms per chunk; GPU on lavapipe about 1.5–2.4 ms (min–p50, host path).

mod cpu;
mod gpu;

use ndarray::{Array2, ArrayView2, ArrayViewMut2};

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::gpu::{DeviceArray, SameShapeKernel, Staged};
use crate::validate::{check_finite, check_out_shape, f32_device_chunk, needs_gpu};

/// Settings of [`CommonAverage`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CarSettings {
    /// Subtract the median over channels instead of the mean. Default `false`.
    pub median: bool,
}

#[derive(Debug)]
enum EngineState {
    Cpu(cpu::CpuScratch),
    Gpu(Box<gpu::GpuCar>),
}

/// Common-average (or common-median) reference on either engine. See the
/// [module docs](self) for the definition.
///
/// ```no_run
/// use neurokernels::{CarSettings, CommonAverage, Engine};
/// let mut car = CommonAverage::new(&Engine::auto()?, CarSettings::default())?;
/// let chunk = ndarray::Array2::<f32>::zeros((600, 384));
/// let y = car.process(chunk.view())?;
/// assert_eq!(y.dim(), (600, 384));
/// # Ok::<(), neurokernels::Error>(())
/// ```
#[derive(Debug)]
pub struct CommonAverage {
    settings: CarSettings,
    engine: EngineState,
}

impl CommonAverage {
    /// A new operator on `engine`.
    ///
    /// # Errors
    /// GPU errors when the shader cannot be compiled.
    pub fn new(engine: &Engine, settings: CarSettings) -> Result<Self> {
        let engine = match engine {
            Engine::Cpu => EngineState::Cpu(cpu::CpuScratch::default()),
            Engine::Gpu(ctx) => EngineState::Gpu(Box::new(gpu::GpuCar::new(ctx, settings.median)?)),
        };
        Ok(CommonAverage { settings, engine })
    }

    /// The settings.
    pub fn settings(&self) -> &CarSettings {
        &self.settings
    }

    /// Whether the engine is the GPU.
    pub fn is_gpu(&self) -> bool {
        matches!(self.engine, EngineState::Gpu(_))
    }

    fn check_channels(&self, c: usize) -> Result<()> {
        if c == 0 {
            return Err(Error::shape("chunk", "at least one channel", "0 channels"));
        }
        if self.is_gpu() && c > gpu::MAX_CHANNELS {
            return Err(Error::shape(
                "chunk",
                format!("at most {} channels on the GPU engine", gpu::MAX_CHANNELS),
                format!("{c} channels"),
            ));
        }
        Ok(())
    }

    /// Re-references a `(samples, channels)` chunk (any strides).
    ///
    /// # Errors
    /// [`Error::Shape`] for no channels (or too many on the GPU), [`Error::NonFinite`]
    /// naming the first NaN or ±inf; GPU errors.
    pub fn process(&mut self, chunk: ArrayView2<'_, f32>) -> Result<Array2<f32>> {
        let (n, c) = chunk.dim();
        self.check_channels(c)?;
        if n == 0 {
            return Ok(Array2::zeros((0, c)));
        }
        check_finite(chunk)?;
        match &mut self.engine {
            EngineState::Cpu(s) => {
                let mut out =
                    crate::validate::host_zeros::<f32, _>("reference output", chunk.raw_dim())?;
                s.run(self.settings.median, chunk, out.view_mut());
                Ok(out)
            }
            EngineState::Gpu(g) => g.process_host(chunk),
        }
    }

    /// [`CommonAverage::process`] into `out` (the chunk's shape): the CPU engine writes it
    /// directly, allocating nothing.
    ///
    /// # Errors
    /// As [`CommonAverage::process`], plus [`Error::Shape`] for an `out` of another shape.
    pub fn process_into(
        &mut self,
        chunk: ArrayView2<'_, f32>,
        mut out: ArrayViewMut2<'_, f32>,
    ) -> Result<()> {
        let (n, c) = chunk.dim();
        check_out_shape((n, c), out.dim())?;
        self.check_channels(c)?;
        if n == 0 {
            return Ok(());
        }
        check_finite(chunk)?;
        match &mut self.engine {
            EngineState::Cpu(s) => s.run(self.settings.median, chunk, out),
            EngineState::Gpu(g) => out.assign(&g.process_host(chunk)?),
        }
        Ok(())
    }

    /// Re-references an `f32` `(samples, channels)` chunk already on the device into a new
    /// device array of the same shape (GPU engine only; the output buffer is reused once the
    /// previous output has been dropped). Non-finite samples are found on the device.
    ///
    /// # Errors
    /// As [`CommonAverage::process`], plus [`Error::DeviceArray`] for the CPU engine or an
    /// array of another element type or context; [`Error::Shape`] for a rank other than 2.
    pub fn process_device(&mut self, chunk: &DeviceArray) -> Result<DeviceArray> {
        self.gpu_for(chunk)?.process_device(chunk)
    }

    /// [`CommonAverage::process_device`] of a non-empty chunk, recorded for a submission
    /// shared with the stages after it (the chain's); see [`Staged`].
    pub(crate) fn stage_device(&mut self, chunk: &DeviceArray) -> Result<(DeviceArray, Staged)> {
        self.gpu_for(chunk)?.stage_device(chunk)
    }

    /// The GPU half, after checking that `chunk` is an f32 device chunk it can take.
    fn gpu_for(&mut self, chunk: &DeviceArray) -> Result<&mut gpu::GpuCar> {
        let (_, c) = f32_device_chunk(chunk, "the common-average reference")?;
        self.check_channels(c)?;
        match &mut self.engine {
            EngineState::Gpu(g) => Ok(g),
            EngineState::Cpu(_) => Err(needs_gpu("process_device")),
        }
    }
}
