//! Device-resident arrays: the currency that lets one operator's output feed the next.

use std::sync::Arc;

use bytemuck::Pod;
use ndarray::{ArrayD, ArrayViewD, IxDyn};

use super::{GpuContext, TrackedBuffer};
use crate::error::{Error, Result};

/// Element type of a [`DeviceArray`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    /// 32-bit float.
    F32,
    /// 32-bit unsigned integer.
    U32,
    /// Bytes (`u8` or `bool` rasters), packed four to a 32-bit word, little-endian.
    U8,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F32 | DType::U32 => 4,
            DType::U8 => 1,
        }
    }
}

/// Element types that can live in a [`DeviceArray`].
pub trait DeviceElement: Pod {
    /// The matching [`DType`].
    const DTYPE: DType;
}
impl DeviceElement for f32 {
    const DTYPE: DType = DType::F32;
}
impl DeviceElement for u32 {
    const DTYPE: DType = DType::U32;
}
impl DeviceElement for u8 {
    const DTYPE: DType = DType::U8;
}

/// An n-dimensional, row-major array in a GPU storage buffer.
///
/// Upload from any `ndarray` view (any strides: it is copied to standard layout when
/// needed); read back explicitly with [`DeviceArray::to_host`]. Operators take and return it
/// so stages chain with no host round trip.
#[derive(Clone)]
pub struct DeviceArray {
    pub(crate) ctx: Arc<GpuContext>,
    pub(crate) buffer: Arc<TrackedBuffer>,
    shape: Vec<usize>,
    dtype: DType,
}

impl std::fmt::Debug for DeviceArray {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceArray")
            .field("shape", &self.shape)
            .field("dtype", &self.dtype)
            .finish()
    }
}

impl DeviceArray {
    /// Uploads `view` to the device of `ctx`.
    pub fn upload<T: DeviceElement>(
        ctx: &Arc<GpuContext>,
        view: ArrayViewD<'_, T>,
    ) -> Result<Self> {
        let shape = view.shape().to_vec();
        let std = view.as_standard_layout();
        let data = std
            .as_slice()
            .ok_or_else(|| Error::DeviceArray("view not contiguous after copy".into()))?;
        let bytes: &[u8] = bytemuck::cast_slice(data);
        let buffer = ctx.scoped(|| {
            let buf = ctx.storage(bytes.len() as u64, "device-array")?;
            write_padded(ctx, &buf, 0, bytes);
            Ok(buf)
        })?;
        Ok(DeviceArray {
            ctx: ctx.clone(),
            buffer: Arc::new(buffer),
            shape,
            dtype: T::DTYPE,
        })
    }

    /// Wraps an existing buffer (crate-internal: operator outputs).
    pub(crate) fn from_buffer(
        ctx: &Arc<GpuContext>,
        buffer: Arc<TrackedBuffer>,
        shape: Vec<usize>,
        dtype: DType,
    ) -> Self {
        DeviceArray {
            ctx: ctx.clone(),
            buffer,
            shape,
            dtype,
        }
    }

    /// The array's shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether the array holds no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Size of the data in bytes.
    pub fn byte_len(&self) -> u64 {
        (self.len() * self.dtype.size()) as u64
    }

    /// The context the array lives on.
    pub fn context(&self) -> &Arc<GpuContext> {
        &self.ctx
    }

    /// The storage buffer holding the data, for binding in your own kernels.
    ///
    /// Row-major, standard layout, starting at offset 0; `u8` elements are packed four to a
    /// 32-bit word, little-endian. The buffer may be longer than [`DeviceArray::byte_len`]
    /// (at least 16 bytes, a multiple of 4); the bytes past the data are unspecified. Clones
    /// of the array share the buffer.
    pub fn buffer(&self) -> &wgpu::Buffer {
        &self.buffer
    }

    /// Reads the array back to the host. `T` must match [`DeviceArray::dtype`].
    pub fn to_host<T: DeviceElement>(&self) -> Result<ArrayD<T>> {
        if T::DTYPE != self.dtype {
            return Err(Error::DeviceArray(format!(
                "read back as {:?}, but the array holds {:?}",
                T::DTYPE,
                self.dtype
            )));
        }
        let bytes = self.ctx.scoped(|| {
            let enc = self.ctx.encoder();
            self.ctx
                .submit_and_read(enc, &[(&self.buffer, 0, self.byte_len())])
        })?;
        let data: Vec<T> = bytemuck::pod_collect_to_vec(&bytes);
        ArrayD::from_shape_vec(IxDyn(&self.shape), data)
            .map_err(|e| Error::DeviceArray(e.to_string()))
    }
}

/// `queue.write_buffer` for a byte slice of any length (padded to a multiple of 4).
pub(crate) fn write_padded(ctx: &GpuContext, buf: &wgpu::Buffer, offset: u64, bytes: &[u8]) {
    let whole = bytes.len() / 4 * 4;
    if whole > 0 {
        ctx.queue.write_buffer(buf, offset, &bytes[..whole]);
    }
    if whole < bytes.len() {
        let mut tail = [0u8; 4];
        tail[..bytes.len() - whole].copy_from_slice(&bytes[whole..]);
        ctx.queue.write_buffer(buf, offset + whole as u64, &tail);
    }
}
